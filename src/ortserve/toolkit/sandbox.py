"""Run a job in a fresh interpreter with an address-space and CPU-time limit: JSON in, JSON out.

The serving process never imports a model's graph into itself for preparation work: the child
(`python -m ortserve.toolkit.sandbox MODULE:FUNCTION MEMORY TIMEOUT`) reads the request as JSON on
stdin, calls the function, and prints one result line. A crash, an out-of-memory kill or a timeout
of the child takes nothing else down. Errors the job raises on purpose (ortserve's own) keep their
class and message; anything else is logged in the parent with a correlation id, never shown.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ortserve import errors
from ortserve.errors import InvalidInput, OrtserveError, logged

GiB = 1 << 30
_RESULT = b"ortserve-sandbox-result "
_OOM_SIGNS = ("bad_alloc", "alloc failed", "Failed to allocate", "MemoryError", "out of memory")
# Error classes a job may raise across the boundary, by name.
_PASSED = ("InvalidInput", "FailedPrecondition", "ResourceExhausted", "NotFound")
_PR_SET_PDEATHSIG = 1  # prctl(2)

Job = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxLimits:
    memory_bytes: int = 4 * GiB
    timeout_s: float = 120.0


def run_job(job: str, request: Mapping[str, Any], limits: SandboxLimits, what: str) -> dict[str, Any]:
    """Run `job` ("module:function") on `request` in a limited child; its JSON result.

    `what` names the work in messages ("model validation", "quantization"). Raises the job's own
    InvalidInput / FailedPrecondition / ResourceExhausted / NotFound, or InvalidInput for a crash,
    a memory limit or a timeout.
    """
    command = [sys.executable, "-m", __name__, job, str(limits.memory_bytes), str(limits.timeout_s)]
    command.append(str(os.getpid()))
    try:
        done = subprocess.run(
            command,
            input=json.dumps(dict(request)).encode(),
            capture_output=True,
            timeout=limits.timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise InvalidInput(f"{what} timed out after {limits.timeout_s:g} s") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith(_RESULT)]
    if done.returncode == -signal.SIGXCPU:
        raise InvalidInput(f"{what} exceeded its CPU time limit of {cpu_seconds(limits.timeout_s)} s")
    if done.returncode != 0 or not lines:
        stderr = done.stderr.decode(errors="replace")[-2000:]
        message = (
            f"{what} crashed (exit code {done.returncode}); the model may need more memory than the "
            f"limit of {limits.memory_bytes} bytes or crash ONNX Runtime"
        )
        raise InvalidInput(logged(message, stderr) if stderr else message)
    outcome: dict[str, Any] = json.loads(lines[-1].removeprefix(_RESULT))
    if outcome["ok"]:
        result: dict[str, Any] = outcome["result"]
        return result
    raise _error(outcome, what)


def cpu_seconds(timeout_s: float) -> int:
    """The child's CPU time limit: a backstop should the parent not kill it at `timeout_s`, with
    every core busy for the whole time (ONNX Runtime's sessions use them all)."""
    return (int(timeout_s) + 1) * (os.cpu_count() or 1)


def _error(outcome: Mapping[str, Any], what: str) -> OrtserveError:
    kind = getattr(errors, outcome.get("kind", ""), InvalidInput)
    message = outcome.get("error") or f"{what} failed"
    if outcome.get("oom"):
        cause = f": {outcome['error']}" if outcome.get("error") else ""
        message = f"{what} exceeded its memory limit of {outcome['oom']} bytes{cause}"
    detail = outcome.get("detail")
    text = logged(message, detail) if detail else message
    return kind(text) if isinstance(kind, type) and issubclass(kind, OrtserveError) else InvalidInput(text)


class Detailed(InvalidInput):
    """A rejection whose library text (onnx, ONNX Runtime) goes to the parent's log, not the caller."""

    def __init__(self, message: str, detail: BaseException | str) -> None:
        super().__init__(message)
        self.detail = detail if isinstance(detail, str) else f"{type(detail).__name__}: {detail}"


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this child when the thread that started it ends, so that a server
    killed (or exiting) mid-job leaves no orphan working on for up to its CPU limit."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the parent's timeout is the only bound
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent ended before the line above
        os._exit(1)


def _child_main(job: str, memory_bytes: int, timeout_s: float, parent: int) -> None:
    import resource

    _die_with_parent(parent)
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    cpu = cpu_seconds(timeout_s)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    try:
        request = json.loads(sys.stdin.buffer.read())
        module, _, name = job.partition(":")
        function: Job = getattr(importlib.import_module(module), name)
        outcome: dict[str, Any] = {"ok": True, "result": function(request)}
    except BaseException as exc:
        outcome = _failure(exc, memory_bytes)
    sys.stdout.buffer.write(_RESULT + json.dumps(outcome).encode() + b"\n")
    sys.stdout.flush()


def _failure(exc: BaseException, memory_bytes: int) -> dict[str, Any]:
    outcome: dict[str, Any]
    if isinstance(exc, Detailed):
        outcome = {"kind": "InvalidInput", "error": str(exc), "detail": exc.detail}
    elif isinstance(exc, OrtserveError):
        outcome = {"kind": _base(exc), "error": str(exc)}
    elif isinstance(exc, MemoryError):
        outcome = {"kind": "InvalidInput", "error": "", "detail": "MemoryError"}
    else:
        outcome = {"kind": "InvalidInput", "error": "", "detail": f"{type(exc).__name__}: {exc}"}
    if out_of_memory(str(outcome.get("detail", ""))):
        outcome["oom"] = memory_bytes
    return {"ok": False, **outcome}


def out_of_memory(text: str) -> bool:
    """Whether a library's error text says an allocation failed."""
    return any(sign in text for sign in _OOM_SIGNS)


def _base(exc: OrtserveError) -> str:
    """The nearest passable class of a subclass (ModelNotReady -> FailedPrecondition)."""
    return next((c.__name__ for c in type(exc).__mro__ if c.__name__ in _PASSED), "InvalidInput")


if __name__ == "__main__":
    # Through the importable module, so that its classes (Detailed) are the ones jobs raise.
    importlib.import_module("ortserve.toolkit.sandbox")._child_main(
        sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    )
