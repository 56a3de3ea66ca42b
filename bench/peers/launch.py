"""Start the benchmark peers (KServe, MLServer) from ortserve's venv and wait until they serve.

Each peer runs in its own virtualenv (scripts/peer_venvs.sh prints its python) as a subprocess
on ports chosen here, serving the bench models under their own names over OIP gRPC; readiness is
OIP ModelReady of every model. Nothing here imports the peers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def install(peer: str) -> tuple[str | None, str]:
    """(python of the peer's venv, "") or (None, why it failed); installs on first use."""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "peer_venvs.sh"), peer],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        lines = [x for x in proc.stderr.splitlines() if not x.startswith("WARNING: Location")]
        return None, "\n".join(lines[-5:]) or f"exit {proc.returncode}"
    return proc.stdout.strip().splitlines()[-1], ""


def versions(python: str, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}), m.version('onnxruntime'))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False).stdout.split()
    return f"{package} {out[0]}, onnxruntime {out[1]}" if len(out) == 2 else "?"


def kserve_command(
    python: str, models: dict[str, Path], work: Path, grpc_port: int, http_port: int
) -> list[str]:
    """KServe ModelServer over a directory of links named <model>.onnx."""
    model_dir = work / "kserve-models"
    model_dir.mkdir(parents=True, exist_ok=True)
    for name, path in models.items():
        link = model_dir / f"{name}.onnx"
        if not link.exists():
            link.symlink_to(path)
    cmd = [python, str(HERE / "kserve_onnx.py"), "--model_dir", str(model_dir)]
    cmd += ["--grpc_port", str(grpc_port), "--http_port", str(http_port)]
    return [*cmd, "--enable_latency_logging", "False"]


def mlserver_repository(models: dict[str, Path], work: Path, ports: tuple[int, int, int]) -> Path:
    """An MLServer model repository: settings.json and one model-settings.json per model.

    One process (parallel_workers 0), as ortserve and KServe run here; debug (per-request logs) off.
    """
    repo = work / "mlserver-repo"
    repo.mkdir(parents=True, exist_ok=True)
    grpc_port, http_port, metrics_port = ports
    settings = {
        "debug": False,
        "parallel_workers": 0,
        "grpc_port": grpc_port,
        "http_port": http_port,
        "metrics_port": metrics_port,
        "host": "127.0.0.1",
    }
    (repo / "settings.json").write_text(json.dumps(settings, indent=2))
    for name, path in models.items():
        folder = repo / name
        folder.mkdir(exist_ok=True)
        model = {
            "name": name,
            "implementation": "mlserver_ort.OnnxRuntimeModel",
            "parameters": {"uri": str(path)},
        }
        (folder / "model-settings.json").write_text(json.dumps(model, indent=2))
    return repo


def mlserver_command(python: str, repo: Path) -> list[str]:
    return [str(Path(python).parent / "mlserver"), "start", str(repo)]


def peer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE)
    env["KSERVE_LOGLEVEL"] = "WARNING"
    env.pop("VIRTUAL_ENV", None)
    return env


def wait_ready(
    proc: subprocess.Popen[bytes], address: str, names: list[str], what: str, timeout: float = 120.0
) -> None:
    """Poll OIP ModelReady of every model until all are ready; fail if the process exits first."""
    import grpc

    from ortserve.api.inference import grpc_service_pb2 as oip
    from ortserve.api.inference import grpc_service_pb2_grpc as oip_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        pending = list(names)
        while pending:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode} before serving; see its log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {pending} not ready within {timeout:g} s")
            try:
                if stub.ModelReady(oip.ModelReadyRequest(name=pending[0]), timeout=2).ready:
                    pending.pop(0)
                    continue
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    print(f"{what} at {address}: {', '.join(names)} ready", file=sys.stderr)
