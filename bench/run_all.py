"""Run every benchmark scenario side by side in one run and write a table of figures and ratios.

Builds the models (bench/models.py) into a temp dir, starts ortserve (`--log-level warning`) and
the echo server (bench/echo_server.py) as subprocesses, registers the models, then runs each
scenario ONE AT A TIME with the load generator in its own process (`python -m ortserve bench
... --json`) or the in-process ONNX Runtime ceiling (bench/ort_ceiling.py). Prints a Markdown
report and writes it with a JSON of every result to bench/results/<date>.md / .json, and a chart of
throughput and p99 against concurrency (bench/plots.py) to <date>.png.

    .venv/bin/python bench/run_all.py [--duration 8] [--warmup 2] [--only tiny,wide]
        [--targets ortserve,kserve,mlserver]

Peers (`peers-*` scenarios): KServe's ModelServer and Seldon MLServer, each in its own venv
(scripts/peer_venvs.sh, installed on first use; a peer that fails to install or start is reported
and skipped), serve tiny, mlp and cnn over OIP gRPC; the same load generator runs them, ortserve
(OIP) and the in-process ceiling at 1, 16 and 64 in flight, and bench/peers/table.py puts them
side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import models  # noqa: E402
import plots  # noqa: E402
from peers import launch as peer_launch  # noqa: E402
from peers import table as peer_table  # noqa: E402

PY = sys.executable
RESULTS = HERE / "results"
TINY_INPUT = "x:FP32:-1,16"


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port_file(path: Path, proc: subprocess.Popen[bytes], what: str, timeout: float = 90.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return int(path.read_text())
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before serving; see its log")
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not write {path} within {timeout} s")


def _stop(proc: subprocess.Popen[bytes], what: str) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        print(f"{what} ignored SIGTERM for 30 s; killing it", file=sys.stderr)
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def started(cmd: list[str], port_file: Path, log: Path, what: str) -> Iterator[tuple[int, int]]:
    """Run a server subprocess; yield (its port, its pid); SIGTERM it on the way out."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield _wait_port_file(port_file, proc, what), proc.pid
        finally:
            _stop(proc, what)


@contextlib.contextmanager
def started_peer(cmd: list[str], log: Path, address: str, names: list[str], what: str) -> Iterator[int]:
    """Run a peer server subprocess in its own venv; yield its pid once every model is ready."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=peer_launch.peer_env())
        try:
            peer_launch.wait_ready(proc, address, names, what)
            yield proc.pid
        finally:
            _stop(proc, what)


def _peer_command(peer: str, python: str, paths: dict[str, Path], work: Path) -> tuple[list[str], str]:
    grpc_port = _free_port()
    served = {m: paths[m] for m in peer_table.MODELS}
    if peer == "kserve":
        cmd = peer_launch.kserve_command(python, served, work, grpc_port, _free_port())
    else:
        repo = peer_launch.mlserver_repository(served, work, (grpc_port, _free_port(), _free_port()))
        cmd = peer_launch.mlserver_command(python, repo)
    return cmd, f"127.0.0.1:{grpc_port}"


def start_peers(
    chosen: list[Scenario],
    paths: dict[str, Path],
    work: Path,
    info: dict[str, Any],
    stack: contextlib.ExitStack,
) -> dict[str, tuple[str, CpuSampler]]:
    """Install and start each peer the chosen scenarios need; a failure is recorded in
    info["peers"] and that peer's scenarios are dropped from `chosen`, the run goes on."""
    out: dict[str, tuple[str, CpuSampler]] = {}
    info["peers"] = {}
    for peer in peer_table.PEERS:
        if not any(s.kind == peer for s in chosen):
            continue
        python, why = peer_launch.install(peer)
        try:
            if python is None:
                raise RuntimeError(f"install failed: {why}")
            cmd, address = _peer_command(peer, python, paths, work)
            log = work / f"{peer}.log"
            pid = stack.enter_context(started_peer(cmd, log, address, list(peer_table.MODELS), peer))
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"{peer}: skipped: {exc}", file=sys.stderr)
            info["peers"][peer_table.NAMES[peer]] = f"skipped: {exc}"
            chosen[:] = [s for s in chosen if s.kind != peer]
            continue
        sampler = CpuSampler(pid)
        stack.callback(sampler.close)
        out[peer] = (address, sampler)
        info["peers"][peer_table.NAMES[peer]] = peer_launch.versions(python, peer)
    return out


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuSampler:
    """Samples a process's CPU seconds every 0.2 s, to read its load over a later-known window."""

    def __init__(self, pid: int | None) -> None:
        """`pid` None samples the whole machine's busy CPU (all processes, /proc/stat)."""
        self._pid = pid
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            cpu = _machine_busy_seconds() if self._pid is None else _cpu_seconds(self._pid)
            self._samples.append((time.time(), cpu))

    def cores(self, start: float, end: float) -> float | None:
        """Mean cores busy between two Unix times (the samples closest inside the window)."""
        inside = [x for x in self._samples if start <= x[0] <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- registration


def register(
    address: str,
    path: Path,
    name: str,
    *,
    max_batch_size: int | None = None,
    delay_us: int = 0,
    intra_op: int = 0,
) -> None:
    """Upload through RegisterModel (manifest, then 1 MiB chunks) and check the version is ready."""
    import grpc

    from ortserve.api.v1 import model_pb2 as mpb
    from ortserve.api.v1 import registry_service_pb2 as rpb
    from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc

    data = path.read_bytes()
    batching = mpb.BatchingConfig(max_queue_delay_us=delay_us)
    if max_batch_size is not None:
        batching.max_batch_size = max_batch_size
    manifest = rpb.RegisterManifest(
        name=name,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        description=f"benchmark model {path.stem}",
        batching=batching,
        session=mpb.SessionConfig(intra_op_num_threads=intra_op),
        load=True,
    )

    def chunks() -> Iterator[rpb.RegisterModelRequest]:
        yield rpb.RegisterModelRequest(manifest=manifest)
        for start in range(0, len(data), 1 << 20):
            yield rpb.RegisterModelRequest(chunk=data[start : start + (1 << 20)])

    options = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
    with grpc.insecure_channel(address, options=options) as channel:
        version = rpb_grpc.RegistryServiceStub(channel).RegisterModel(chunks(), timeout=300).version
    if version.state != mpb.VERSION_STATE_READY:
        raise RuntimeError(
            f"{name} version {version.version} is {version.state} after registering: {version.error}"
        )
    print(f"registered {name} v{version.version} batching={dict(_fields(version.batching))}", file=sys.stderr)


def register_all(server: str, paths: dict[str, Path], needed: set[str], delay_us: int) -> None:
    """wide twice (batching on by default, and off); mlp with the given max_queue_delay_us."""
    settings: dict[str, dict[str, Any]] = {
        "tiny": {},
        "cnn": {},
        "mlp": {"delay_us": delay_us},
        "wide": {},
        "wide-nobatch": {"max_batch_size": 0},
        # the peers' comparison: 1 intra-op thread as the peers, default batching (no queue delay)
        **{f"peer-{m}": {"intra_op": 1} for m in peer_table.MODELS},
    }
    for name, kwargs in settings.items():
        if name in needed:
            register(server, paths[name.removesuffix("-nobatch").removeprefix("peer-")], name, **kwargs)


def _fields(message: Any) -> Iterator[tuple[str, Any]]:
    for descriptor, value in message.ListFields():
        yield descriptor.name, value


# --------------------------------------------------------------------------- metrics


def scrape(metrics_port: int, model: str) -> dict[str, float]:
    """Sums and counts of the compute-time and batch-size histograms of one model (all versions)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    out = {"compute_sum": 0.0, "compute_count": 0.0, "rows_sum": 0.0, "rows_count": 0.0}
    names = {
        "ortserve_compute_duration_seconds_sum": "compute_sum",
        "ortserve_compute_duration_seconds_count": "compute_count",
        "ortserve_batch_size_sum": "rows_sum",
        "ortserve_batch_size_count": "rows_count",
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = names.get(sample.name)
            if key and sample.labels.get("model") == model:
                out[key] += sample.value
    return out


def batch_stats(before: dict[str, float], after: dict[str, float]) -> dict[str, float] | None:
    batches = after["compute_count"] - before["compute_count"]
    if batches <= 0:
        return None
    return {
        "batches": batches,
        "batch_compute_ms_mean": (after["compute_sum"] - before["compute_sum"]) / batches * 1e3,
        "batch_rows_mean": (after["rows_sum"] - before["rows_sum"])
        / max(1.0, after["rows_count"] - before["rows_count"]),
    }


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    key: str
    model: str  # bench model file (tiny, mlp, cnn, wide)
    title: str
    kind: str  # "server", "echo", "ort", or a peer ("kserve", "mlserver")
    protocol: str = "ortserve"
    served_as: str = ""  # registered name when different from `model`
    concurrency: int = 1
    streams: int = 1
    batched_ceiling: bool = False
    intra_op: int = 0  # in-process ceiling: intra-op threads (0: its default)
    oip_input: str = ""  # the load generator's --input (peers' scenarios: the same request everywhere)
    result: dict[str, Any] = field(default_factory=dict)


SCENARIOS = [
    Scenario("tiny-ort-c1", "tiny", "tiny, in-process ORT, 1 caller", "ort"),
    Scenario("tiny-echo-c1", "tiny", "tiny, echo server unary, C=1", "echo", "echo"),
    Scenario("tiny-ortserve-c1", "tiny", "tiny, ortserve Predict, C=1", "server"),
    Scenario("tiny-echo-c64", "tiny", "tiny, echo server unary, C=64", "echo", "echo", concurrency=64),
    Scenario("tiny-ortserve-c64", "tiny", "tiny, ortserve Predict, C=64", "server", concurrency=64),
    Scenario("tiny-oip-c64", "tiny", "tiny, ortserve OIP ModelInfer, C=64", "server", "oip", concurrency=64),
    Scenario(
        "tiny-echo-stream-c64",
        "tiny",
        "tiny, echo server PredictStream, C=64 / 4 streams",
        "echo",
        "ortserve-stream",
        concurrency=64,
        streams=4,
    ),
    Scenario(
        "tiny-stream-c64",
        "tiny",
        "tiny, ortserve PredictStream, C=64 / 4 streams",
        "server",
        "ortserve-stream",
        concurrency=64,
        streams=4,
    ),
    Scenario(
        "wide-nobatch-c64",
        "wide",
        "wide, batching off, C=64",
        "server",
        served_as="wide-nobatch",
        concurrency=64,
    ),
    Scenario("wide-batch-c64", "wide", "wide, batching on (64), C=64", "server", concurrency=64),
    Scenario("cnn-ort-c16", "cnn", "cnn, in-process ORT, 16 threads x 1 row", "ort", concurrency=16),
    Scenario(
        "cnn-ort-batched16",
        "cnn",
        "cnn, in-process ORT, 1 caller x 16 rows",
        "ort",
        concurrency=16,
        batched_ceiling=True,
    ),
    Scenario("cnn-ortserve-c16", "cnn", "cnn, ortserve Predict, C=16", "server", concurrency=16),
    Scenario(
        "cnn-shm-c16",
        "cnn",
        "cnn, ortserve Predict, inputs in system shared memory, C=16",
        "server",
        "ortserve-shm",
        concurrency=16,
    ),
    Scenario(
        "mlp-ort-batched64",
        "mlp",
        "mlp, in-process ORT, 1 caller x 64 rows",
        "ort",
        concurrency=64,
        batched_ceiling=True,
    ),
    Scenario(
        "mlp-ortserve-c64",
        "mlp",
        "mlp (max_queue_delay_us 2000), ortserve Predict, C=64",
        "server",
        concurrency=64,
    ),
]


def _input_spec(model: str) -> str:
    name, shape, _, _ = models.SIGNATURES[model]
    return f"{name}:FP32:" + ",".join("-1" if d == "N" else str(d) for d in shape)


def peer_scenarios(targets: tuple[str, ...]) -> list[Scenario]:
    """tiny, mlp, cnn at 1, 16, 64 in flight: each target over OIP, then the in-process ceiling."""
    out: list[Scenario] = []
    for model in peer_table.MODELS:
        for c in peer_table.CONCURRENCY:
            for t in targets:
                kind, name = ("server", f"peer-{model}") if t == "ortserve" else (t, model)
                title = f"{model}, {peer_table.NAMES[t]} OIP ModelInfer, C={c}"
                out.append(
                    Scenario(
                        peer_table.key(model, c, t),
                        model,
                        title,
                        kind,
                        "oip",
                        served_as=name,
                        concurrency=c,
                        oip_input=_input_spec(model),
                    )
                )
            title = f"{model}, in-process ORT, {c} threads x 1 row, 1 intra-op thread each"
            out.append(
                Scenario(peer_table.key(model, c, "ort"), model, title, "ort", concurrency=c, intra_op=1)
            )
    return out


@dataclass
class Env:
    paths: dict[str, Path]
    server: str
    echo: str
    metrics_port: int
    server_cpu: CpuSampler
    echo_cpu: CpuSampler
    machine_cpu: CpuSampler
    duration: float
    warmup: float
    peers: dict[str, tuple[str, CpuSampler]] = field(default_factory=dict)  # peer -> (address, its CPU)


def run_scenario(s: Scenario, env: Env) -> dict[str, Any]:
    args, paths, metrics_port = env, env.paths, env.metrics_port
    timeout = args.duration + args.warmup + 120
    if s.kind == "ort":
        cmd = [PY, str(HERE / "ort_ceiling.py"), str(paths[s.model]), "--threads", str(s.concurrency)]
        cmd += ["--duration", str(args.duration), "--warmup", str(min(args.warmup, 1.0)), "--json"]
        if s.batched_ceiling:
            cmd.append("--batched")
        if s.intra_op:
            cmd += ["--intra-op-threads", str(s.intra_op)]
    else:
        target = {"echo": env.echo, "server": env.server}.get(s.kind) or env.peers[s.kind][0]
        name = s.served_as or s.model
        cmd = [PY, "-m", "ortserve", "bench", name, "--server", target, "--protocol", s.protocol]
        cmd += ["-c", str(s.concurrency), "--duration", str(args.duration), "--warmup", str(args.warmup)]
        cmd += ["--json", "--progress", "never"]
        if s.protocol == "ortserve-stream":
            cmd += ["--streams", str(s.streams)]
        if s.kind == "echo":
            cmd += ["--input", TINY_INPUT]
        if s.oip_input:
            cmd += ["--input", s.oip_input]
    print(f"== {s.key}: {' '.join(cmd[1:])}", file=sys.stderr)
    before = scrape(metrics_port, s.served_as or s.model) if s.kind == "server" else None
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise RuntimeError(f"{s.key} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if "window_unix" in result:
        if s.kind != "ort":
            samplers = {"echo": env.echo_cpu, "server": env.server_cpu}
            sampler = samplers.get(s.kind) or env.peers[s.kind][1]
            result["server_cpu_cores"] = sampler.cores(*result["window_unix"])
        busy = env.machine_cpu.cores(*result["window_unix"])
        ours = (result.get("server_cpu_cores") or 0.0) + (result.get("client_cpu_cores") or 0.0)
        # everything else on the machine: other users' processes, the idle server, this script
        result["other_cpu_cores"] = None if busy is None else max(0.0, busy - ours)
    if before is not None:
        result["metrics"] = batch_stats(before, scrape(metrics_port, s.served_as or s.model))
    lat = result["latency_ms"]
    print(
        f"   {result['throughput_rps']:.1f} req/s  p50 {lat['p50']} ms  p99 {lat['p99']} ms"
        f"  errors {result['errors']}",
        file=sys.stderr,
    )
    return result


# --------------------------------------------------------------------------- report


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def figures(res: dict[str, dict[str, Any]], delay_ms: float) -> list[dict[str, Any]]:
    def rps(key: str) -> float | None:
        return res[key]["throughput_rps"] if key in res else None

    def p(key: str, q: str) -> float | None:
        return res[key]["latency_ms"][q] if key in res else None

    out: list[dict[str, Any]] = []

    def add(label: str, detail: str, value: float | None, target: str, ok: bool | None) -> None:
        out.append({"figure": label, "detail": detail, "value": value, "target": target, "met": ok})

    r = _ratio(rps("wide-batch-c64"), rps("wide-nobatch-c64"))
    add("(a) wide, batching on / off, C=64", "throughput ratio", r, ">= 5x", None if r is None else r >= 5)
    r = _ratio(rps("tiny-ortserve-c64"), rps("tiny-echo-c64"))
    add("(b1) tiny, ortserve / echo, C=64", "throughput ratio", r, ">= 0.7x", None if r is None else r >= 0.7)
    r = _ratio(p("tiny-ortserve-c1", "p50"), p("tiny-echo-c1", "p50"))
    add("(b2) tiny, ortserve / echo, C=1", "p50 latency ratio", r, "<= 1.3x", None if r is None else r <= 1.3)
    r = _ratio(rps("cnn-ortserve-c16"), rps("cnn-ort-c16"))
    add(
        "(c) cnn, ortserve / in-process ORT (16 threads), C=16",
        "throughput ratio",
        r,
        ">= 0.7x",
        None if r is None else r >= 0.7,
    )
    r = _ratio(
        res["cnn-ortserve-c16"]["rows_per_s"] if "cnn-ortserve-c16" in res else None,
        res["cnn-ort-batched16"]["rows_per_s"] if "cnn-ort-batched16" in res else None,
    )
    add("(c') cnn, ortserve / in-process ORT batched (16 rows)", "rows/s ratio (info)", r, "-", None)
    r = _ratio(rps("cnn-shm-c16"), rps("cnn-ort-c16"))
    add(
        "(c2) cnn through shared memory, ortserve / in-process ORT (16 threads), C=16",
        "throughput ratio",
        r,
        ">= 0.7x",
        None if r is None else r >= 0.7,
    )
    r = _ratio(rps("cnn-shm-c16"), rps("cnn-ortserve-c16"))
    add("(c3) cnn, shared memory / plain gRPC Predict, C=16", "throughput ratio (info)", r, "-", None)
    r = _ratio(rps("tiny-stream-c64"), rps("tiny-echo-c64"))
    add(
        "(d) tiny, ortserve PredictStream (4 streams) / echo unary, C=64",
        "throughput ratio",
        r,
        ">= 2x",
        None if r is None else r >= 2,
    )
    if "mlp-ortserve-c64" in res:
        m = res["mlp-ortserve-c64"]
        compute_ms = (m.get("metrics") or {}).get("batch_compute_ms_mean")
        if compute_ms is None and m.get("server"):
            compute_ms = m["server"]["compute_us_mean"] / 1e3
        p99 = m["latency_ms"]["p99"]
        bound = None if compute_ms is None else delay_ms + 3 * compute_ms
        add(
            "(e) mlp, C=64, max_queue_delay 2 ms",
            f"p99 ms vs 2 ms + 3 x batch compute ({compute_ms or 0:.3f} ms)",
            p99,
            f"<= {bound:.3f} ms" if bound is not None else "?",
            None if bound is None else p99 <= bound,
        )
        if m.get("server"):
            in_server = m["server"]["in_server_us_p99"] / 1e3
            add(
                "(e') mlp, C=64, queue + compute p99 as the server timed it",
                "p99 ms (the batcher's share; the rest is transport queueing)",
                in_server,
                f"<= {bound:.3f} ms" if bound is not None else "?",
                None if bound is None else in_server <= bound,
            )
    return out


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import grpc
    import onnxruntime

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "arch": platform.machine(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "grpcio": grpc.__version__,
        "loadavg_at_start": _loadavg(),
    }


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def markdown(info: dict[str, Any], scenarios: list[Scenario], figs: list[dict[str, Any]], args: Any) -> str:
    lines = [
        f"# ortserve benchmark, {info['date']}",
        "",
        f"Machine: `{info['arch']}`, {info['cpu']}, {info['cores']} cores; Python {info['python']}, "
        f"onnxruntime {info['onnxruntime']}, grpcio {info['grpcio']}. Client, servers and ceilings share the "
        f"machine; one scenario at a time, {args.warmup:g} s warm-up + {args.duration:g} s measured each. "
        f"Load average before the run: {info['loadavg_at_start']}; after: {_loadavg()}.",
        "",
        "## Figures",
        "",
        "| figure | measure | value | target | met |",
        "|---|---|---:|---|---|",
    ]
    for f in figs:
        met = {True: "yes", False: "**NO**", None: "-"}[f["met"]]
        lines.append(
            f"| {f['figure']} | {f['detail']} | {_num(f['value'], '{:.3f}')} | {f['target']} | {met} |"
        )
    lines += peer_section(info, scenarios, args)
    lines += [
        "",
        "## Runs",
        "",
        "| scenario | C | req/s | rows/s | p50 ms | p90 ms | p99 ms | max ms | errors | batch rows (mean) "
        "| batch compute ms (mean) | server CPU (cores) | client CPU (cores) | other CPU (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scenarios:
        r = s.result
        if not r:
            continue
        lat = r["latency_ms"]
        m = r.get("metrics") or {}
        srv = r.get("server") or {}
        rows = m.get("batch_rows_mean", srv.get("batch_size_mean"))
        compute = m.get("batch_compute_ms_mean")
        errors = r["errors"] if not r.get("errors_by_code") else f"{r['errors']} {r['errors_by_code']}"
        conc = f"{s.concurrency}/{s.streams}s" if s.protocol == "ortserve-stream" else str(s.concurrency)
        if s.batched_ceiling:
            conc = f"1 x {s.concurrency} rows"
        ms = [_num(lat[q], "{:.3f}") for q in ("p50", "p90", "p99", "max")]
        cpu = [_num(r.get(k), "{:.2f}") for k in ("server_cpu_cores", "client_cpu_cores", "other_cpu_cores")]
        cells = [s.title, conc, f"{r['throughput_rps']:.1f}", f"{r['rows_per_s']:.1f}", *ms, str(errors)]
        cells += [_num(rows), _num(compute, "{:.3f}"), *cpu]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Batch rows and compute come from the server's Prometheus histograms (`ortserve_batch_size`, "
        "`ortserve_compute_duration_seconds`: stack + run + split per executed batch) over the scenario, "
        "warm-up included. CPU columns are CPU-seconds per wall-second over the measured window (server: "
        "the ortserve or echo process; client: the load generator, or the whole in-process ORT run; other: "
        "the rest of the machine's busy CPU, i.e. anything else running at the time; "
        "well above 0.1 means the run was disturbed); "
        f"the machine has {info['cores']} cores in all.",
    ]
    return "\n".join(lines) + "\n"


def peer_section(info: dict[str, Any], scenarios: list[Scenario], args: Any) -> list[str]:
    """The peers table (bench/peers/table.py) with what each peer was, or nothing when none ran."""
    results = {s.key: s.result for s in scenarios if s.result}
    table = peer_table.markdown(results, tuple(t for t in peer_table.TARGETS if t in args.targets))
    peers = info.get("peers") or {}
    if not table and not peers:
        return []
    lines = ["", "## Peers (OIP ModelInfer, batch 1 per request, 1 intra-op thread everywhere)", ""]
    lines += [f"- {name}: {what}" for name, what in peers.items()]
    lines += ["", *table, ""]
    lines.append(
        "Cells: req/s (p50 ms, server CPU ms per request). ortserve serves `peer-<model>` (intra-op 1, "
        "default batching); KServe: bench/peers/kserve_onnx.py (a kserve.Model, sync predict); MLServer: "
        "bench/peers/mlserver_ort.py (custom runtime, parallel_workers 0). In-process ORT: C threads "
        "calling run on one session, 1 intra-op thread each (bench/ort_ceiling.py)."
    )
    return lines


def write_report(info: dict[str, Any], chosen: list[Scenario], args: Any, delay_us: int) -> None:
    results = {s.key: s.result for s in chosen}
    figs = figures(results, delay_us / 1000)
    report = markdown(info, chosen, figs, args)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    (RESULTS / f"{stamp}.md").write_text(report)
    payload = {"machine": info, "settings": vars(args), "figures": figs, "runs": results}
    (RESULTS / f"{stamp}.json").write_text(json.dumps(payload, indent=2))
    title = f"ortserve bench {info['date']}, {info['cores']} cores, {args.duration:g} s per scenario"
    plots.plot(plots.lines(chosen), RESULTS / f"{stamp}.png", title)
    print(f"wrote {RESULTS / stamp}.md, .json and .png", file=sys.stderr)


# --------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per scenario")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per scenario")
    p.add_argument("--only", default="", help="comma-separated substrings of scenario keys to run")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (models, data, server logs)")
    p.add_argument(
        "--targets",
        default=",".join(peer_table.TARGETS),
        help="servers of the peers-* scenarios (ortserve,kserve,mlserver; a peer that fails to "
        "install or start is reported and skipped); empty: no peers-* scenarios",
    )
    args = p.parse_args()
    args.targets = tuple(t for t in args.targets.split(",") if t)
    unknown = set(args.targets) - set(peer_table.TARGETS)
    if unknown:
        p.error(f"unknown --targets {sorted(unknown)}; choose from {','.join(peer_table.TARGETS)}")
    every = SCENARIOS + (peer_scenarios(args.targets) if args.targets else [])
    chosen = [s for s in every if not args.only or any(k in s.key for k in args.only.split(","))]
    info = machine()
    tmp = Path(tempfile.mkdtemp(prefix="ortserve-bench-"))
    delay_us = 2000
    try:
        paths = models.build_all(tmp / "models")
        metrics_port = _free_port()
        server_cmd = [
            PY,
            "-m",
            "ortserve",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log-level",
            "warning",
        ]
        server_cmd += ["--port-file", str(tmp / "server.port"), "--metrics-port", str(metrics_port)]
        server_cmd += ["--data-dir", str(tmp / "data")]
        echo_cmd = [PY, str(HERE / "echo_server.py"), "--port", "0", "--port-file", str(tmp / "echo.port")]
        with (
            started(server_cmd, tmp / "server.port", tmp / "server.log", "ortserve") as (port, server_pid),
            started(echo_cmd, tmp / "echo.port", tmp / "echo.log", "echo server") as (echo_port, echo_pid),
        ):
            server, echo = f"127.0.0.1:{port}", f"127.0.0.1:{echo_port}"
            print(
                f"ortserve at {server} (metrics :{metrics_port}), echo at {echo}; work dir {tmp}",
                file=sys.stderr,
            )
            register_all(
                server, paths, {s.served_as or s.model for s in chosen if s.kind == "server"}, delay_us
            )
            peers_started = contextlib.ExitStack()
            env = Env(
                paths,
                server,
                echo,
                metrics_port,
                CpuSampler(server_pid),
                CpuSampler(echo_pid),
                CpuSampler(None),
                args.duration,
                args.warmup,
            )
            try:
                with peers_started:
                    env.peers = start_peers(chosen, paths, tmp, info, peers_started)
                    for s in chosen:
                        s.result = run_scenario(s, env)
            finally:
                env.server_cpu.close()
                env.echo_cpu.close()
                env.machine_cpu.close()
        write_report(info, chosen, args, delay_us)
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
