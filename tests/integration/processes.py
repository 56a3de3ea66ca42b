"""ortserve servers as separate processes, the way users and replicas run them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STARTUP_S = 60.0


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    address: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait; kill if it does not stop in time. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(
                    f"server did not stop within {timeout_s} s of SIGTERM:\n{self.output()}"
                ) from None
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def start_server(workdir: Path, name: str, *args: str) -> ServerProcess:
    """`ortserve serve` on a free port; returns once it serves (the port file is written)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / f"{name}.port"
    port_file.unlink(missing_ok=True)
    log = workdir / f"{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ortserve",
                "serve",
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--port-file",
                str(port_file),
                "--log-level",
                "warning",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    deadline = time.monotonic() + STARTUP_S
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server {name} did not start:\n{log.read_text(errors='replace')[-6000:]}")
        time.sleep(0.05)
    return ServerProcess(proc, f"127.0.0.1:{port_file.read_text()}", log)
