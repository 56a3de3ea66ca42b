"""What a stopped server leaves open: nothing of its registry database."""

from __future__ import annotations

import os
from pathlib import Path

from ortserve.config import ServerConfig
from ortserve.server.app import OrtServer


def _open_files_under(folder: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith(str(folder)):
            found.append(target)
    return found


async def test_stop_closes_the_registry_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = OrtServer(ServerConfig(port=0, metrics_port=0, data_dir=str(data)))
    await server.start()
    assert any(p.endswith("registry.db") for p in _open_files_under(data))  # the check can fail
    await server.stop(grace_s=0)
    assert _open_files_under(data) == []
