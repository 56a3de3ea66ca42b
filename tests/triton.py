"""tritonclient lives in its own venv (.venv-triton): it pins protobuf<7 and registers `inference.*`
protobuf symbols that would clash with ours in one process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
SETUP = ROOT / "scripts" / "triton_venv.sh"


def triton_python() -> Path:
    """The tritonclient venv's python, made or repaired by scripts/triton_venv.sh (idempotent, fast).

    Skips only when .venv-triton is missing and cannot be created.
    """
    try:
        done = subprocess.run(["bash", str(SETUP)], check=True, capture_output=True, text=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        if TRITON_PYTHON.exists():
            raise
        detail = getattr(exc, "stderr", "") or str(exc)
        pytest.skip(
            f".venv-triton is missing and scripts/triton_venv.sh could not create it: {detail[-500:]}"
        )
    return Path(done.stdout.strip().splitlines()[-1])
