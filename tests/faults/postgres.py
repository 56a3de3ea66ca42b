"""A private PostgreSQL cluster for one test module, from the distribution's own binaries.

initdb and pg_ctl from /usr/lib/postgresql/<major>/bin, a data folder in a fresh temp folder, a
free port on 127.0.0.1, trust authentication. PostgreSQL refuses to run as root: as root the
cluster runs as the `postgres` user (created when missing) through runuser.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_ROOT = Path("/usr/lib/postgresql")
SERVICE_USER = "postgres"
COMMAND_S = 60


def find_binaries() -> Path | None:
    """The bin folder of the newest PostgreSQL with initdb and pg_ctl, None when there is none."""
    found = [d for d in PG_ROOT.glob("*/bin") if (d / "initdb").is_file() and (d / "pg_ctl").is_file()]
    found.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    return found[-1] if found else None


def missing() -> str:
    """Why a cluster cannot be started here, or "" when it can."""
    if find_binaries() is None:
        return f"no PostgreSQL server binaries (initdb, pg_ctl) under {PG_ROOT}/*/bin"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser, and PostgreSQL refuses to run as root"
    return ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _service_user() -> pwd.struct_passwd:
    """The `postgres` account, created as a system user when the machine has none."""
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
            timeout=COMMAND_S,
        )
        return pwd.getpwnam(SERVICE_USER)


class Cluster:
    """`start`, `stop` (immediate: like a crash or a pulled cable), `start` again, `destroy`."""

    def __init__(self) -> None:
        bin_dir = find_binaries()
        assert bin_dir is not None, missing()
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="ortserve-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = _free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            user = _service_user()
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", user.pw_name, "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            "-c fsync=off -c max_connections=50"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as_user, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=COMMAND_S,
            check=False,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise AssertionError(f"{tool} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{log}")
