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
NOISE = re.compile(r"#\d+\s+(INITED|NEW|REDUCE|pulse|RELOAD|DONE)\b|INFO: Instrumenting ")  # per-run lines

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
    assert done.returncode == 0, f"the decoder harness found a crash:\n{_crash_report(done)}"
    runs = re.search(r"Done (\d+) in", done.stderr)
    assert runs is not None, _crash_report(done)
    CASES["atheris decoders"] += int(runs.group(1))
    OUTCOMES["atheris decoders", "a domain error or a decoded array"] += int(runs.group(1))


def _crash_report(done: subprocess.CompletedProcess[str]) -> str:
    """What a failure needs: atheris prints the Python traceback on stdout, libFuzzer its verdict and
    the crashing input on stderr; libFuzzer's progress lines (#N NEW, REDUCE, pulse...) and atheris's
    "Instrumenting" lines are left out."""
    verdict = [line for line in done.stderr.splitlines() if not NOISE.match(line)]
    return (
        f"exit code {done.returncode}\n--- stdout\n{done.stdout[-6000:]}\n--- stderr\n"
        + "\n".join(verdict)[-4000:]
    )
