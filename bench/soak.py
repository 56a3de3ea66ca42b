"""Soak: mixed load against ONE ortserve subprocess; fail when its memory, fds or tasks grow.

    .venv/bin/python bench/soak.py [--minutes 10] [--warmup-minutes 2] [--leak-control] [--png PATH]
    make soak                                   # the same, 10 minutes

Load, from this process over grpc.aio, each loop paced (`--rate` inference requests/s in all):
- unary Predict on `soak` (its production alias) and on `tiny` version 1, 1..32 rows;
- PredictStream on `soak`: open a stream, 16 messages, close it, again;
- OIP ModelInfer on `tiny`;
- a connection churn loop: a new channel, one Predict, close it (about one a second);
- a rollout loop, one cycle every `--rollout-every-s`: RegisterModel a new version of `soak`
  (new weights), SetAlias production to it (a promotion), RetireModelVersion the previous one.

Every `--interval-s` (10) s the server process is sampled: RSS (/proc/PID/status VmRSS), open file
descriptors (/proc/PID/fd), threads, and its asyncio task count (the `ortserve_event_loop_tasks`
gauge on the metrics port, counted at scrape time). At the end of the warm-up and at the end of
the run the load pauses: every loop finishes its iteration (no RPC in flight, no stream open), the
task count settles, and a *quiet* sample is taken; then the load resumes / the run stops.

Warm-up: the first `--warmup-minutes` (default 2, at most a third of the run). It absorbs what
grows once and then stays: ONNX Runtime arenas and thread pools, gRPC buffers, glibc arenas of
new threads, SQLite page cache, SQLAlchemy pool connections, lazily imported modules.

Bounds after the warm-up (`Bounds`), and why:
- RSS slope below 2 MiB/min (least squares over the load samples after warm-up). The server keeps
  a few kB per registered version for good (registry snapshot rows, audit, per-version metric
  series): at one version per 5 s that is well under 1 MiB/min; allocator noise is a few MiB in
  total, not per minute. A leak of one request's input (~1 kB) at the default 300 requests/s is
  ~18 MiB/min, and one ONNX Runtime session per retired version (a few MiB each, 12 a minute)
  tens of MiB/min: both an order of magnitude above the bound. The positive control
  (`--leak-control`: the server keeps every unary request message, see
  src/ortserve/server/soak_leak.py) must exceed it.
- RSS growth below 32 MiB between the first and last load samples after warm-up (a step that
  the slope would average away).
- Open fds: the quiet sample at the end at most 8 above the one at the end of warm-up, and no
  load sample after warm-up more than 16 above the warm-up's largest. Between quiet points the
  client holds the same channels, so the server's sockets are the same; the slack covers the
  registry's SQLAlchemy pool opening more SQLite connections on demand (up to 5 kept, 2 fds each:
  the database and its WAL; seen: one more, +2, after a few minutes), and under load a churned
  connection's socket and a registration's temp file. A leaked socket per churned connection
  (~60 a minute) or a file per upload (12 a minute) exceeds it within a minute. The quiet samples
  record what the fds are (`fd_kinds_at_rest` in the JSON).
- asyncio tasks: the quiet sample at the end at most 2 above the one at the end of warm-up (a
  timer or poller caught mid-cycle), and no load sample after warm-up more than 16 above the
  warm-up's largest (in-flight RPCs are bounded by the load's loops). A task leaked per stream,
  cancelled call or registration exceeds it within minutes.
- No failed request (`--max-errors`, default 0): rollouts promise zero failures.

Writes a PNG of RSS, fds and tasks over time and a JSON of every figure to bench/results/
(gitignored) or `--png`; exits 1 when a bound is exceeded (the leak control must exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import random
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MiB = 1 << 20
LEAK_ENV = "ORTSERVE_SOAK_LEAK"  # read by src/ortserve/server/soak_leak.py (test-only)
CALL_TIMEOUT_S = 30.0
STREAM_MESSAGES = 16
MAX_ROWS = 32


# --------------------------------------------------------------------------- the growth check


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the server: `t_s` seconds into the run; phase warmup, load or quiet."""

    t_s: float
    phase: str
    rss_bytes: int
    fds: int
    tasks: int
    threads: int


@dataclass(frozen=True, slots=True)
class Bounds:
    """What may still grow after the warm-up; the module docstring says why."""

    rss_slope_mib_per_min: float = 2.0
    rss_growth_mib: float = 32.0
    quiet_fd_slack: int = 8
    load_fd_slack: int = 16
    quiet_task_slack: int = 2
    load_task_slack: int = 16


def slope_per_min(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute; 0 with fewer than two times."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n if n else 0.0
    mean_v = sum(v for _, v in points) / n if n else 0.0
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60.0


def check_growth(samples: Sequence[Sample], warmup_s: float, bounds: Bounds) -> list[str]:
    """Every bound exceeded, as sentences naming the figure and the bound; empty when within."""
    warm = [s for s in samples if s.phase == "warmup"]
    load = [s for s in samples if s.phase == "load" and s.t_s >= warmup_s]
    quiet = [s for s in samples if s.phase == "quiet"]
    if len(load) < 3 or len(quiet) < 2 or not warm:
        return [
            f"too few samples to judge: {len(warm)} in warm-up, {len(load)} after it "
            f"(need 3), {len(quiet)} quiet (need 2)"
        ]
    return [
        *_rss_violations(load, bounds),
        *_count_violations(
            "open fds",
            "fds",
            warm,
            load,
            quiet,
            load_slack=bounds.load_fd_slack,
            quiet_slack=bounds.quiet_fd_slack,
        ),
        *_count_violations(
            "asyncio tasks",
            "tasks",
            warm,
            load,
            quiet,
            load_slack=bounds.load_task_slack,
            quiet_slack=bounds.quiet_task_slack,
        ),
    ]


def _rss_violations(load: Sequence[Sample], bounds: Bounds) -> list[str]:
    out = []
    slope = slope_per_min([(s.t_s, s.rss_bytes / MiB) for s in load])
    if slope > bounds.rss_slope_mib_per_min:
        bound = bounds.rss_slope_mib_per_min
        out.append(f"RSS grows {slope:.2f} MiB/min after warm-up; the bound is {bound} MiB/min")
    growth = (load[-1].rss_bytes - load[0].rss_bytes) / MiB
    if growth > bounds.rss_growth_mib:
        out.append(f"RSS grew {growth:.1f} MiB after warm-up; the bound is {bounds.rss_growth_mib} MiB")
    return out


def _count_violations(
    what: str,
    key: str,
    warm: Sequence[Sample],
    load: Sequence[Sample],
    quiet: Sequence[Sample],
    *,
    load_slack: int,
    quiet_slack: int,
) -> list[str]:
    out = []
    start, end = getattr(quiet[0], key), getattr(quiet[-1], key)
    if end > start + quiet_slack:
        out.append(f"{what} at rest: {start} after warm-up, {end} at the end (slack {quiet_slack})")
    warm_max = max(getattr(s, key) for s in warm)
    load_max = max(getattr(s, key) for s in load)
    if load_max > warm_max + load_slack:
        out.append(f"{what} under load: at most {warm_max} in warm-up, {load_max} after (slack {load_slack})")
    return out


# --------------------------------------------------------------------------- sampling the server


def proc_sample(pid: int) -> tuple[int, int, int]:
    """RSS bytes, open fds and threads of a live process (Linux /proc)."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    rss = int(status["VmRSS"].split()[0]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"])


def fd_kinds(pid: int) -> dict[str, int]:
    """Open fds of a process by what they point at: socket, pipe, anon_inode, or the file's path."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        kinds[
            target.split(":", 1)[0] if target.startswith(("socket:", "pipe:", "anon_inode:")) else target
        ] += 1
    return dict(sorted(kinds.items()))


def scrape_tasks(metrics_port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith("ortserve_event_loop_tasks "):
            return int(float(line.split()[1]))
    raise RuntimeError("the server's metrics have no ortserve_event_loop_tasks gauge")


@dataclass(slots=True)
class Sampler:
    pid: int
    metrics_port: int
    t0: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    fd_kinds_at_rest: list[dict[str, int]] = field(default_factory=list)

    async def take(self, phase: str) -> Sample:
        tasks = await asyncio.to_thread(scrape_tasks, self.metrics_port)
        rss, fds, threads = proc_sample(self.pid)
        sample = Sample(round(time.monotonic() - self.t0, 1), phase, rss, fds, tasks, threads)
        self.samples.append(sample)
        if phase == "quiet":
            self.fd_kinds_at_rest.append(fd_kinds(self.pid))
        print(
            f"[{sample.t_s:6.0f} s] {phase:6} rss {rss / MiB:7.1f} MiB  fds {fds:4}  tasks {tasks:4}  "
            f"threads {threads:3}",
            file=sys.stderr,
        )
        return sample

    async def settled_tasks(self, timeout_s: float = 20.0) -> None:
        """Wait (bounded) until two scrapes half a second apart count the same tasks."""
        deadline = time.monotonic() + timeout_s
        last = await asyncio.to_thread(scrape_tasks, self.metrics_port)
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            now = await asyncio.to_thread(scrape_tasks, self.metrics_port)
            if now == last:
                return
            last = now


# --------------------------------------------------------------------------- the load


def _requests(seed: int) -> dict[int, Any]:
    """One Predict-ready input per row count (made once; each call picks one)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((n, 16)).astype(np.float32) for n in range(1, MAX_ROWS + 1)}


@dataclass(slots=True)
class Tally:
    served: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    rollout: Counter[str] = field(default_factory=Counter)

    def failed(self, kind: str, exc: BaseException) -> None:
        from grpc import aio

        code = exc.code().name if isinstance(exc, aio.AioRpcError) else type(exc).__name__
        self.errors[f"{kind}:{code}"] += 1
        if sum(self.errors.values()) <= 20:
            detail = exc.details() if isinstance(exc, aio.AioRpcError) else str(exc)
            print(f"error in {kind}: {code}: {detail}", file=sys.stderr)


class Load:
    """The mixed load's loops; `pause` waits until none is inside an iteration."""

    def __init__(self, address: str, rate: float, rollout_every_s: float) -> None:
        from grpc import aio

        from ortserve.api.inference import grpc_service_pb2_grpc as oip_grpc
        from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
        from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc

        self.address = address
        self.rate = rate
        self.rollout_every_s = rollout_every_s
        options = [("grpc.max_send_message_length", 64 * MiB), ("grpc.max_receive_message_length", 64 * MiB)]
        self.channel = aio.insecure_channel(address, options=options)
        self.inference = ipb_grpc.InferenceServiceStub(self.channel)
        self.oip = oip_grpc.GRPCInferenceServiceStub(self.channel)
        self.registry = rpb_grpc.RegistryServiceStub(self.channel)
        self.tally = Tally()
        self.inputs = _requests(7)
        self.gate = asyncio.Event()
        self.gate.set()
        self.busy = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.stopping = False
        self.production = 1
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        per_loop = self.rate / 8  # 4 Predict loops, 2 OIP loops, 1 stream loop (16 per stream), 1 pinned
        loops: list[tuple[Callable[[], Awaitable[None]], float]] = [
            *[(lambda: self._predict("soak", ""), per_loop)] * 3,
            (lambda: self._predict("tiny", "1"), per_loop),
            *[(self._model_infer, per_loop)] * 2,
            (self._stream, per_loop * 2 / STREAM_MESSAGES),
            (self._churn, 1.0),
            (self._rollout, 1 / self.rollout_every_s),
        ]
        self.tasks = [asyncio.create_task(self._loop(step, per_s)) for step, per_s in loops]

    async def _loop(self, step: Callable[[], Awaitable[None]], per_s: float) -> None:
        period = 1 / per_s
        next_at = time.monotonic() + random.random() * period
        while not self.stopping:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await self.gate.wait()
            if self.stopping:
                return
            self.busy += 1
            self.idle.clear()
            try:
                await step()
            finally:
                self.busy -= 1
                if not self.busy:
                    self.idle.set()
            next_at = max(next_at + period, time.monotonic() - period)

    async def pause(self, timeout_s: float = 2 * CALL_TIMEOUT_S) -> None:
        self.gate.clear()
        try:
            await asyncio.wait_for(self.idle.wait(), timeout_s)
        except TimeoutError:
            raise RuntimeError(
                f"{self.busy} load loops still busy {timeout_s} s after a pause began"
            ) from None

    def resume(self) -> None:
        self.gate.set()

    async def stop(self) -> None:
        self.stopping = True
        self.gate.set()
        await asyncio.gather(*self.tasks)
        await self.channel.close()

    def _predict_request(self, model: str, version: str) -> Any:
        from ortserve.api.v1 import inference_service_pb2 as ipb
        from ortserve.client.client import to_tensor

        x = self.inputs[random.randint(1, MAX_ROWS)]
        return ipb.PredictRequest(model=model, version=version, inputs=[to_tensor("x", x)])

    async def _predict(self, model: str, version: str) -> None:
        try:
            await self.inference.Predict(self._predict_request(model, version), timeout=CALL_TIMEOUT_S)
            self.tally.served["Predict"] += 1
        except Exception as exc:
            self.tally.failed("Predict", exc)

    async def _model_infer(self) -> None:
        from ortserve.api.inference import grpc_service_pb2 as oip

        x = self.inputs[random.randint(1, MAX_ROWS)]
        request = oip.ModelInferRequest(model_name="tiny")
        request.inputs.add(name="x", datatype="FP32", shape=x.shape)
        request.raw_input_contents.append(x.tobytes())
        try:
            await self.oip.ModelInfer(request, timeout=CALL_TIMEOUT_S)
            self.tally.served["ModelInfer"] += 1
        except Exception as exc:
            self.tally.failed("ModelInfer", exc)

    async def _stream(self) -> None:
        from ortserve.api.v1 import inference_service_pb2 as ipb

        messages = [
            ipb.PredictStreamRequest(id=str(i), request=self._predict_request("soak", ""))
            for i in range(STREAM_MESSAGES)
        ]
        try:
            async for answer in self.inference.PredictStream(iter(messages), timeout=CALL_TIMEOUT_S):
                if answer.HasField("error"):
                    self.tally.errors[f"PredictStream:code {answer.error.code}"] += 1
                else:
                    self.tally.served["PredictStream"] += 1
        except Exception as exc:
            self.tally.failed("PredictStream", exc)

    async def _churn(self) -> None:
        from grpc import aio

        from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc

        try:
            async with aio.insecure_channel(self.address) as channel:
                request = self._predict_request("tiny", "1")
                await ipb_grpc.InferenceServiceStub(channel).Predict(request, timeout=CALL_TIMEOUT_S)
            self.tally.served["Predict (new connection)"] += 1
        except Exception as exc:
            self.tally.failed("Predict (new connection)", exc)

    async def _rollout(self) -> None:
        """Register a new version of `soak`, promote it, retire the one it replaced."""
        from ortserve.api.v1 import registry_service_pb2 as rpb
        from ortserve.examples import linear_model

        old = self.production
        data = linear_model(seed=old + 1, producer="ortserve-soak")
        try:
            registered = await self.registry.RegisterModel(
                iter(_upload("soak", data)), timeout=CALL_TIMEOUT_S
            )
            self.tally.rollout["registered"] += 1
            new = registered.version.version
            await self.registry.SetAlias(
                rpb.SetAliasRequest(name="soak", alias="production", version=new), timeout=CALL_TIMEOUT_S
            )
            self.production = new
            self.tally.rollout["promoted"] += 1
            await self.registry.RetireModelVersion(
                rpb.RetireModelVersionRequest(name="soak", version=old), timeout=CALL_TIMEOUT_S
            )
            self.tally.rollout["retired"] += 1
        except Exception as exc:
            self.tally.failed("rollout", exc)


def _upload(name: str, data: bytes) -> list[Any]:
    from ortserve.api.v1 import registry_service_pb2 as rpb

    manifest = rpb.RegisterManifest(
        name=name, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), load=True
    )
    return [rpb.RegisterModelRequest(manifest=manifest), rpb.RegisterModelRequest(chunk=data)]


async def _setup(load: Load) -> None:
    """`tiny` v1 and `soak` v1 with the production alias on it."""
    from ortserve.api.v1 import registry_service_pb2 as rpb
    from ortserve.examples import linear_model

    for name in ("tiny", "soak"):
        data = linear_model(seed=1, producer="ortserve-soak")
        await load.registry.RegisterModel(iter(_upload(name, data)), timeout=CALL_TIMEOUT_S)
    await load.registry.SetAlias(
        rpb.SetAliasRequest(name="soak", alias="production", version=1), timeout=CALL_TIMEOUT_S
    )


# --------------------------------------------------------------------------- the run


@dataclass(slots=True)
class Settings:
    minutes: float
    warmup_s: float
    interval_s: float
    rate: float
    rollout_every_s: float
    max_errors: int
    leak_control: bool


async def soak(settings: Settings, address: str, metrics_port: int, pid: int) -> dict[str, Any]:
    load = Load(address, settings.rate, settings.rollout_every_s)
    await _setup(load)
    sampler = Sampler(pid, metrics_port)
    load.start()
    duration = settings.minutes * 60
    warm_quiet = False
    tick = 0
    while time.monotonic() - sampler.t0 < duration:
        elapsed = time.monotonic() - sampler.t0
        if not warm_quiet and elapsed >= settings.warmup_s:
            await _quiet_sample(load, sampler)
            warm_quiet = True
        await sampler.take("warmup" if elapsed < settings.warmup_s else "load")
        tick += 1
        await asyncio.sleep(max(0.0, sampler.t0 + tick * settings.interval_s - time.monotonic()))
    await _quiet_sample(load, sampler, resume=False)
    await load.stop()
    report = _report(settings, sampler.samples, load.tally)
    report["fd_kinds_at_rest"] = sampler.fd_kinds_at_rest
    return report


async def _quiet_sample(load: Load, sampler: Sampler, *, resume: bool = True) -> None:
    await load.pause()
    await sampler.settled_tasks()
    await sampler.take("quiet")
    if resume:
        load.resume()


def _report(settings: Settings, samples: list[Sample], tally: Tally) -> dict[str, Any]:
    bounds = Bounds()
    violations = check_growth(samples, settings.warmup_s, bounds)
    failed = sum(tally.errors.values())
    if failed > settings.max_errors:
        violations.append(f"{failed} requests failed; at most {settings.max_errors} may")
    after = [s for s in samples if s.phase == "load" and s.t_s >= settings.warmup_s]
    quiet = [s for s in samples if s.phase == "quiet"]
    return {
        "settings": asdict(settings),
        "bounds": asdict(bounds),
        "rss_mib": {
            "first": round(samples[0].rss_bytes / MiB, 1),
            "after_warmup": round(after[0].rss_bytes / MiB, 1) if after else None,
            "end": round(after[-1].rss_bytes / MiB, 1) if after else None,
            "max": round(max(s.rss_bytes for s in samples) / MiB, 1),
            "slope_mib_per_min": round(slope_per_min([(s.t_s, s.rss_bytes / MiB) for s in after]), 3),
        },
        "fds": {
            "quiet": [s.fds for s in quiet],
            "min": min(s.fds for s in samples),
            "max": max(s.fds for s in samples),
        },
        "tasks": {
            "quiet": [s.tasks for s in quiet],
            "min": min(s.tasks for s in samples),
            "max": max(s.tasks for s in samples),
        },
        "threads": {"quiet": [s.threads for s in quiet], "max": max(s.threads for s in samples)},
        "served": dict(tally.served),
        "served_total": sum(tally.served.values()),
        "errors": dict(tally.errors),
        "rollout": dict(tally.rollout),
        "violations": violations,
        "samples": [asdict(s) for s in samples],
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [Sample(**s) for s in report["samples"]]
    warmup_min = report["settings"]["warmup_s"] / 60
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    series = (
        ("RSS (MiB)", lambda s: s.rss_bytes / MiB),
        ("open fds", lambda s: s.fds),
        ("asyncio tasks", lambda s: s.tasks),
    )
    for ax, (label, value) in zip(axes, series, strict=True):
        ax.plot([s.t_s / 60 for s in samples], [value(s) for s in samples], marker=".", linewidth=1)
        quiet = [s for s in samples if s.phase == "quiet"]
        ax.scatter(
            [s.t_s / 60 for s in quiet], [value(s) for s in quiet], color="red", zorder=3, label="at rest"
        )
        ax.axvspan(0, warmup_min, color="0.9", label="warm-up")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    axes[-1].set_xlabel("minutes")
    verdict = "FAIL: " + "; ".join(report["violations"]) if report["violations"] else "within bounds"
    kind = "leak control" if report["settings"]["leak_control"] else "soak"
    fig.suptitle(f"ortserve {kind}, {report['settings']['minutes']} min: {verdict}"[:110], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _server_command(workdir: Path, metrics_port: int, port_file: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ortserve",
        "serve",
        "--port",
        "0",
        "--metrics-port",
        str(metrics_port),
        "--port-file",
        str(port_file),
        "--data-dir",
        str(workdir / "data"),
        "--log-level",
        "warning",
    ]


def run(settings: Settings, png: Path) -> dict[str, Any]:
    import run_all

    if settings.leak_control:
        os.environ[LEAK_ENV] = "1"  # inherited by the server subprocess only; this process serves nothing
    with tempfile.TemporaryDirectory(prefix="ortserve-soak-") as tmp:
        workdir = Path(tmp)
        metrics_port = run_all._free_port()
        port_file = workdir / "port"
        log = png.with_suffix(".server.log")
        command = _server_command(workdir, metrics_port, port_file)
        with run_all.started(command, port_file, log, "ortserve") as (port, pid):
            return asyncio.run(soak(settings, f"127.0.0.1:{port}", metrics_port, pid))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    p.add_argument("--warmup-minutes", type=float, help="not judged (default 2, at most a third of the run)")
    p.add_argument("--interval-s", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--rate", type=float, default=300.0, help="inference requests per second (default 300)")
    p.add_argument("--rollout-every-s", type=float, default=5.0, help="seconds between rollouts (default 5)")
    p.add_argument("--max-errors", type=int, default=0, help="failed requests allowed (default 0)")
    p.add_argument("--leak-control", action="store_true", help=f"run the server with {LEAK_ENV}=1: must fail")
    p.add_argument("--png", type=Path, help="plot here (default bench/results/soak-<time>.png); JSON beside")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    warmup_min = args.warmup_minutes if args.warmup_minutes is not None else min(2.0, args.minutes / 3)
    settings = Settings(
        minutes=args.minutes,
        warmup_s=warmup_min * 60,
        interval_s=args.interval_s,
        rate=args.rate,
        rollout_every_s=args.rollout_every_s,
        max_errors=args.max_errors,
        leak_control=args.leak_control,
    )
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    png = args.png or HERE / "results" / f"soak-{stamp}{'-leak' if args.leak_control else ''}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    report = run(settings, png)
    report["png"] = str(png)
    png.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot(report, png)
    summary = {k: v for k, v in report.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    return _verdict(report, args.leak_control)


def _verdict(report: dict[str, Any], leak_control: bool) -> int:
    if not report["violations"]:
        note = " (the leak control was NOT detected: the check is blind)" if leak_control else ""
        print(f"soak: within bounds{note}", file=sys.stderr)
        return 0
    for violation in report["violations"]:
        print(f"soak: {violation}", file=sys.stderr)
    if leak_control:
        print("soak: the deliberate leak was detected, as it must be", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
