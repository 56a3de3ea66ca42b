"""atheris_decoders.py for a bounded number of runs, in a subprocess (libFuzzer owns its process)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.server import CASES, OUTCOMES, SCALE

HARNESS = Path(__file__).with_name("atheris_decoders.py")
RUNS = int(200_000 * SCALE)  # about 4 s here
SEED = 1  # the same inputs every run; change it locally to explore further

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (its wheels are for CPython 3.11 only; see the dev group)",
)


def test_tensor_decoders_raise_only_domain_errors(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            f"-atheris_runs={RUNS}",
            f"-seed={SEED}",
            f"-artifact_prefix={tmp_path}/",
            "-rss_limit_mb=2048",
            "-max_total_time=120",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).parents[2],
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"the decoder harness found a crash:\n{output[-8000:]}"
    runs = re.search(r"Done (\d+) in", output)
    assert runs is not None, output[-4000:]
    CASES["atheris decoders"] += int(runs.group(1))
    OUTCOMES["atheris decoders", "a domain error or a decoded array"] += int(runs.group(1))
