"""Jobs for tests/toolkit/test_sandbox.py, imported by the sandbox's child by module name."""

from __future__ import annotations

from typing import Any

from ortserve.errors import FailedPrecondition, ModelNotReady
from ortserve.toolkit.sandbox import Detailed


def double(request: dict[str, Any]) -> dict[str, Any]:
    return {"twice": request["n"] * 2}


def refuse(request: dict[str, Any]) -> dict[str, Any]:
    raise FailedPrecondition(f"refused {request['n']}")


def not_ready(request: dict[str, Any]) -> dict[str, Any]:
    raise ModelNotReady("model 'm' version 1 is loading")


def detailed(request: dict[str, Any]) -> dict[str, Any]:
    raise Detailed("the model is broken", RuntimeError("/secret/path/model.onnx: bad node"))


def crash(request: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("/secret/path failed")


def allocate(request: dict[str, Any]) -> dict[str, Any]:
    return {"bytes": len(bytearray(request["n"]))}


def die(request: dict[str, Any]) -> dict[str, Any]:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def spin(request: dict[str, Any]) -> dict[str, Any]:
    while True:
        pass


def cpu_limit(request: dict[str, Any]) -> dict[str, Any]:
    import resource

    return {"seconds": resource.getrlimit(resource.RLIMIT_CPU)[0]}


def spin_past_a_cpu_second(request: dict[str, Any]) -> dict[str, Any]:
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (1, resource.getrlimit(resource.RLIMIT_CPU)[1]))
    while True:
        pass


def spin_with_pid(request: dict[str, Any]) -> dict[str, Any]:
    import os
    from pathlib import Path

    Path(request["pid_file"]).write_text(str(os.getpid()))
    while True:
        pass
