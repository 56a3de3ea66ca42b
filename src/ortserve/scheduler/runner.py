"""Runs requests on a version's shared session in the executor's threads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor

import numpy as np
import onnxruntime as ort

from ortserve.errors import DeadlineExceeded, InvalidInput
from ortserve.runtime.session import OrtSession
from ortserve.scheduler.calls import Timing
from ortserve.scheduler.stats import VersionStats


class DirectRunner:
    """One ORT run per request, at most `max_concurrent` at once on the shared session.

    The batcher (scheduler/batcher.py) offers the same `submit`, so servicers never change.
    """

    def __init__(self, session: OrtSession, executor: Executor, stats: VersionStats, max_concurrent: int) -> None:
        self._session = session
        self._executor = executor
        self._stats = stats
        self._slots = asyncio.Semaphore(max_concurrent)

    async def submit(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str], rows: int, deadline: float | None
    ) -> tuple[list[np.ndarray], Timing]:
        start = time.perf_counter_ns()
        async with self._slots:
            queued = time.perf_counter_ns()
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded("the request's deadline passed while it waited for a free session")
            arrays = await self._run(feeds, outputs)
            done = time.perf_counter_ns()
        self._stats.record_batch(rows, 0, done - queued, 0)
        return arrays, Timing(queued - start, done - queued, rows, self._session.provider)

    async def _run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        options = ort.RunOptions()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._session.run, feeds, outputs, options)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The caller went away: stop the computation instead of finishing it for nobody.
            options.terminate = True
            raise
        except ort.capi.onnxruntime_pybind11_state.Fail as exc:
            raise InvalidInput(f"the model failed on this input: {exc}") from exc

    async def aclose(self) -> None:
        """Nothing is queued in a direct runner; in-flight runs finish in the executor."""
