"""Callers that send Predict continuously through one SDK client, counting what each phase got."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType

import grpc
import numpy as np

from ortserve.client import Client

X = np.ones((1, 16), np.float32)
JOIN_S = 60.0


@dataclass
class Tally:
    """Calls answered and failed during one phase, and which versions answered."""

    answered: int = 0
    failures: list[str] = field(default_factory=list)
    versions: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self, name: str, **figures: object) -> str:
        extra = "".join(f" {key}={value}" for key, value in figures.items())
        calls = self.answered + len(self.failures)
        rate = calls / self.seconds if self.seconds else 0.0
        return (
            f"fleet phase {name}: calls={calls} failures={len(self.failures)} "
            f"seconds={self.seconds:.1f} calls_per_s={rate:.0f} versions={dict(self.versions)}{extra}"
        )


class Load:
    """`callers` threads, each sending Predict (selector `version`) in a loop until the block ends.

    Use as `with Load(client, "model") as load: ...`; `load.tally` holds the phase's counts.
    """

    def __init__(self, client: Client, model: str, *, version: str = "production", callers: int = 32) -> None:
        self.tally = Tally()
        self._client = client
        self._model = model
        self._version = version
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._call, name=f"caller-{i}", daemon=True) for i in range(callers)
        ]
        self._started = 0.0

    def __enter__(self) -> Load:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(JOIN_S)
        self.tally.seconds = time.monotonic() - self._started
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck and kind is None:
            raise AssertionError(f"callers still in a call {JOIN_S} s after the phase ended: {stuck}")

    def _call(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._client.predict(self._model, {"x": X}, version=self._version).version
            except grpc.RpcError as exc:
                failure = f"{exc.code()}: {exc.details()}"  # type: ignore[attr-defined]
                with self._lock:
                    self.tally.failures.append(failure)
            else:
                with self._lock:
                    self.tally.answered += 1
                    self.tally.versions[version] += 1

    def wait_for_calls(self, count: int, limit_s: float = 30.0) -> None:
        """Until `count` more calls have been answered: the load is flowing."""
        target = self.tally.answered + count
        deadline = time.monotonic() + limit_s
        while self.tally.answered < target:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.tally.answered} of {target} calls answered within {limit_s} s; "
                    f"failures: {self.tally.failures[:5]}"
                )
            self._stop.wait(0.01)

    def keep_going(self, seconds: float) -> None:
        """Let the load run for `seconds` more (the length of a phase, not a synchronisation)."""
        self._stop.wait(max(seconds, 0.0))

    def steady(self, seconds: float, calls: int) -> None:
        """At least `calls` more answered calls and `seconds` more of load: before and after each
        disturbance, so that every phase runs under load for a few seconds."""
        began = time.monotonic()
        self.wait_for_calls(calls)
        self.keep_going(seconds - (time.monotonic() - began))
