"""The limited subprocess: results, errors that keep their class, hidden library text, limits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ortserve.errors import FailedPrecondition, InvalidInput
from ortserve.toolkit.sandbox import SandboxLimits, run_job

JOBS = "tests.toolkit.sandbox_jobs"
SMALL = SandboxLimits(memory_bytes=1 << 30, timeout_s=30)


def test_result_comes_back() -> None:
    assert run_job(f"{JOBS}:double", {"n": 21}, SMALL, "test job") == {"twice": 42}


def test_own_errors_keep_class_and_message() -> None:
    with pytest.raises(FailedPrecondition, match=r"^refused 7$"):
        run_job(f"{JOBS}:refuse", {"n": 7}, SMALL, "test job")
    with pytest.raises(FailedPrecondition, match="is loading"):
        run_job(f"{JOBS}:not_ready", {}, SMALL, "test job")


def test_library_text_stays_in_the_log() -> None:
    for job, message in (("detailed", "the model is broken"), ("crash", "test job failed")):
        with pytest.raises(InvalidInput) as caught:
            run_job(f"{JOBS}:{job}", {}, SMALL, "test job")
        assert str(caught.value).startswith(message)
        assert "correlation id" in str(caught.value)
        assert "/secret" not in str(caught.value)


def test_memory_limit_is_named() -> None:
    with pytest.raises(InvalidInput, match=r"test job exceeded its memory limit of 1073741824 bytes"):
        run_job(f"{JOBS}:allocate", {"n": 3 << 30}, SMALL, "test job")


def test_killed_child_is_a_crash() -> None:
    with pytest.raises(InvalidInput, match=r"test job crashed \(exit code -9\)"):
        run_job(f"{JOBS}:die", {}, SMALL, "test job")


def test_timeout() -> None:
    with pytest.raises(InvalidInput, match=r"test job timed out after 1 s"):
        run_job(f"{JOBS}:spin", {}, SandboxLimits(memory_bytes=1 << 30, timeout_s=1), "test job")


def test_cpu_limit_lets_every_core_work_for_the_whole_timeout() -> None:
    # With (timeout + 1) CPU seconds, ONNX Runtime's threads on all cores were killed after a
    # fraction of the timeout, reported as a crash that "may need more memory".
    seconds = run_job(f"{JOBS}:cpu_limit", {}, SMALL, "test job")["seconds"]
    assert seconds >= SMALL.timeout_s * (os.cpu_count() or 1)
    with pytest.raises(InvalidInput, match=r"^test job exceeded its CPU time limit of \d+ s$"):
        run_job(f"{JOBS}:spin_past_a_cpu_second", {}, SMALL, "test job")


PARENT = """
import os, sys, threading, time
from ortserve.toolkit.sandbox import SandboxLimits, run_job

pid_file = sys.argv[1]
limits = SandboxLimits(memory_bytes=1 << 30, timeout_s=120)
work = threading.Thread(
    target=run_job, args=("tests.toolkit.sandbox_jobs:spin_with_pid", {"pid_file": pid_file}, limits, "t"),
    daemon=True,
)
work.start()
for _ in range(600):
    if os.path.exists(pid_file) and open(pid_file).read():
        os._exit(0)  # the server dies mid-job
    time.sleep(0.05)
os._exit(3)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_dies_with_its_parent(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    parent = subprocess.run([sys.executable, "-c", PARENT, str(pid_file)], timeout=60, check=False)
    assert parent.returncode == 0
    child = int(pid_file.read_text())
    try:
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the sandbox child outlived its parent"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
