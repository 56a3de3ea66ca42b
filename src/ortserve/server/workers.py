"""`ortserve serve --workers N`: N server processes sharing the gRPC port under one supervisor.

The supervisor binds nothing but a placeholder socket that holds the port (SO_REUSEPORT, never
listening) and the public metrics port. Each worker is a full server (its own sessions and control
plane, converging on the registry as replicas do) listening on the same port with SO_REUSEPORT, so
the kernel spreads connections over them. A worker that dies is restarted after a backoff; SIGTERM
and SIGINT are forwarded to every worker for a graceful drain. Each worker serves its own HTTP port
on a free port and names it in a file; the supervisor's /metrics concatenates every worker's
metrics, each sample labelled `worker="<i>"`, with its own worker gauges.

Workers are started as `python -m ortserve.server.workers`, reading their settings (a pickled
ServerConfig, tokens included) from stdin, so no secret touches the disk or the command line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ortserve.config import ServerConfig
from ortserve.errors import Unavailable
from ortserve.files import write_atomically

log = structlog.get_logger(__name__)

STARTUP_TIMEOUT_S = 300.0  # loading every model at start may take a while
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
# A worker that ran this long before dying is restarted after the first backoff again.
STABLE_AFTER_S = 60.0
# Past the drain grace period, workers still running are killed.
KILL_AFTER_GRACE_S = 30.0
SCRAPE_TIMEOUT_S = 5.0
TICK_S = 0.1


@dataclasses.dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # deaths in a row, for the backoff
    restart_at: float | None = None


class Supervisor:
    """Starts, watches, restarts and stops the workers; see the module docstring."""

    def __init__(self, config: ServerConfig, port: int, run_dir: Path) -> None:
        self.config = dataclasses.replace(config, port=port, metrics_port=0)
        self.run_dir = run_dir
        self.workers = [Worker(i) for i in range(config.workers)]
        self.stopping = threading.Event()
        self.registry = CollectorRegistry()
        self.restarts = Counter(
            "ortserve_worker_restarts", "Worker processes restarted", ["worker"], registry=self.registry
        )
        self.up = Gauge(
            "ortserve_worker_up", "1 while the worker process runs", ["worker"], registry=self.registry
        )
        self.pids = Gauge(
            "ortserve_worker_pid", "The worker's process id", ["worker"], registry=self.registry
        )

    def info_file(self, index: int) -> Path:
        return self.run_dir / f"worker-{index}.json"

    def spawn(self, worker: Worker) -> None:
        self.info_file(worker.index).unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", "ortserve.server.workers"], stdin=subprocess.PIPE)
        assert proc.stdin is not None  # kept open: the worker stops when it closes (_stop_when_orphaned)
        pickle.dump((self.config, worker.index, str(self.info_file(worker.index))), proc.stdin)
        proc.stdin.flush()
        worker.proc, worker.started_at, worker.restart_at = proc, time.monotonic(), None
        label = str(worker.index)
        self.up.labels(label).set(1)
        self.pids.labels(label).set(proc.pid)

    def wait_until_serving(self) -> None:
        """Every worker has written its info file; a worker that exits first fails the start."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        pending = list(self.workers)
        while pending:
            for worker in list(pending):
                assert worker.proc is not None
                if self.info_file(worker.index).exists():
                    pending.remove(worker)
                elif worker.proc.poll() is not None:
                    raise Unavailable(
                        f"worker {worker.index} exited with code {worker.proc.returncode} at start"
                    )
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"workers {[w.index for w in pending]} did not serve within {STARTUP_TIMEOUT_S} s"
                )
            if self.stopping.wait(TICK_S):
                return

    def watch(self) -> None:
        """Restart workers that die, with a backoff, until asked to stop."""
        while not self.stopping.wait(TICK_S):
            now = time.monotonic()
            for worker in self.workers:
                self._check(worker, now)

    def _check(self, worker: Worker, now: float) -> None:
        assert worker.proc is not None
        if worker.restart_at is not None:
            if now >= worker.restart_at:
                self.restarts.labels(str(worker.index)).inc()
                self.spawn(worker)
            return
        code = worker.proc.poll()
        if code is None:
            return
        if worker.proc.stdin is not None:
            worker.proc.stdin.close()  # its end of the pipe; the next worker gets a new one
        lived = now - worker.started_at
        worker.failures = 1 if lived >= STABLE_AFTER_S else worker.failures + 1
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (worker.failures - 1))
        worker.restart_at = now + delay
        self.up.labels(str(worker.index)).set(0)
        self.info_file(worker.index).unlink(missing_ok=True)
        log.warning(
            "worker_exited", worker=worker.index, pid=worker.proc.pid, exit_code=code, restart_in_s=delay
        )

    def stop(self) -> int:
        """SIGTERM every worker and wait for their drain, killing those past the grace period.
        The exit code: 0 when every worker stopped by itself (SIGTERM before it served counts)."""
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.grace_period_s + KILL_AFTER_GRACE_S
        clean = True
        for proc in running:
            try:
                code = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker_killed", pid=proc.pid, reason="still running past the drain deadline")
                proc.kill()
                code = proc.wait()
            if code not in (0, -signal.SIGTERM):
                log.error("worker_failed_to_stop", pid=proc.pid, exit_code=code)
                clean = False
        return 0 if clean else 1

    def scrape(self) -> bytes:
        """Every serving worker's metrics with a worker label, and the supervisor's own."""
        families: dict[str, Metric] = {}
        for worker in self.workers:
            try:
                info = json.loads(self.info_file(worker.index).read_text())
                url = f"http://127.0.0.1:{info['metrics_port']}/metrics"
                with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as answer:
                    text = answer.read().decode()
            except (OSError, ValueError, KeyError):
                continue  # not serving now (starting, restarting); ortserve_worker_up says so
            _merge(families, text, str(worker.index))
        merged = CollectorRegistry()
        merged.register(_Families(list(families.values())))
        return generate_latest(merged) + generate_latest(self.registry)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def _merge(families: dict[str, Metric], text: str, worker: str) -> None:
    """Add the samples of `text` (Prometheus text format) to `families`, each labelled `worker`."""
    for family in text_string_to_metric_families(text):
        merged = families.get(family.name)
        if merged is None:
            merged = families[family.name] = Metric(
                family.name, family.documentation, family.type, family.unit
            )
        for sample in family.samples:
            merged.samples.append(sample._replace(labels={**sample.labels, "worker": worker}))


def _metrics_handler(supervisor: Supervisor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served here with --workers")
                return
            body = supervisor.scrape()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def hold_port(host: str, port: int) -> socket.socket:
    """A bound, never listening SO_REUSEPORT socket on `port` (0: a free one) that the workers join.

    A fixed port must be free: a probe without SO_REUSEPORT fails when anything listens there, so a
    second supervisor (whose workers would join the same port) refuses to start like a single server."""
    family, address = _address(host, port)
    if port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise Unavailable(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind(address)
    except OSError as exc:
        holder.close()
        raise Unavailable(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return holder


def _address(host: str, port: int) -> tuple[socket.AddressFamily, Any]:
    bare = host.strip("[]")
    info = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = info[0]
    return family, address


def supervise(config: ServerConfig, port_file: str | None = None) -> int:
    """Run `config.workers` workers until SIGTERM or SIGINT; write the port to `port_file` once
    every worker serves. Returns the exit code."""
    with (
        hold_port(config.host, config.port) as holder,
        tempfile.TemporaryDirectory(prefix="ortserve-workers-") as run_dir,
    ):
        supervisor = Supervisor(config, int(holder.getsockname()[1]), Path(run_dir))
        metrics = _metrics_server(config, supervisor)
        threading.Thread(target=metrics.serve_forever, name="metrics", daemon=True).start()
        try:
            return _run(supervisor, port_file, int(metrics.server_address[1]))
        finally:
            metrics.shutdown()
            metrics.server_close()


def _run(supervisor: Supervisor, port_file: str | None, metrics_port: int) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: supervisor.stopping.set())
    config = supervisor.config
    try:
        for worker in supervisor.workers:
            supervisor.spawn(worker)
        supervisor.wait_until_serving()
        if port_file and not supervisor.stopping.is_set():
            write_atomically(port_file, str(config.port))
        log.info("workers_started", address=f"{config.host}:{config.port}", metrics_port=metrics_port)
        supervisor.watch()
        log.info("shutdown_requested")
    finally:
        code = supervisor.stop()
    log.info("workers_stopped", exit_code=code)
    return code


def _metrics_server(config: ServerConfig, supervisor: Supervisor) -> ThreadingHTTPServer:
    family, _ = _address(config.host, config.metrics_port)

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

    try:
        return Server((config.host.strip("[]"), config.metrics_port), _metrics_handler(supervisor))
    except OSError as exc:
        raise Unavailable(
            f"cannot listen on {config.host}:{config.metrics_port} for metrics: {exc.strerror}"
        ) from exc


# The worker side: one full server that names its HTTP port in a file once serving.


async def _run_worker(config: ServerConfig, info_file: str) -> None:
    from ortserve.server.app import OrtServer

    server = OrtServer(config, http_host="127.0.0.1")  # reached by the supervisor only
    await server.start()
    info = {"pid": os.getpid(), "port": server.port, "metrics_port": server.metrics_port}
    await asyncio.to_thread(write_atomically, info_file, json.dumps(info))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    threading.Thread(target=_stop_when_orphaned, args=(loop, stop), name="orphan", daemon=True).start()
    await stop.wait()
    await server.stop()


def _stop_when_orphaned(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """The supervisor keeps the worker's stdin open: end of file means it is gone (even killed with
    SIGKILL, when it cannot forward anything), so the worker drains and exits."""
    while os.read(0, 4096):  # unbuffered: a daemon thread must hold no Python lock at exit
        pass
    log.warning("supervisor_gone")
    loop.call_soon_threadsafe(stop.set)


def _worker_main() -> None:
    from ortserve.logging import configure_logging

    config, index, info_file = pickle.load(sys.stdin.buffer)
    configure_logging(config.log_level, config.log_format)
    structlog.contextvars.bind_contextvars(worker=index, pid=os.getpid())
    asyncio.run(_run_worker(config, info_file))


if __name__ == "__main__":
    _worker_main()
