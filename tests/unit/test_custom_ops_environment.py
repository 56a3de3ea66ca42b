"""Loading onnxruntime-extensions leaves the process as it was: the package sets
PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python when imported, which every subprocess started later
(sandbox jobs, the fuzz harness under pytest) would inherit, and imports torch when installed. Its
library is found without importing it. A fresh interpreter, since the package edits the environment
only on its first import."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

PROTOBUF_VARIABLE = "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"
SCRIPT = """
import json, os, sys
before = dict(os.environ)
from ortserve.runtime.custom_ops import load_custom_ops
ops = load_custom_ops([], [], extensions=True)
changed = sorted(k for k in os.environ.keys() | before.keys() if os.environ.get(k) != before.get(k))
imported = sorted(m for m in ("onnxruntime_extensions", "torch") if m in sys.modules)
import onnxruntime_extensions
same = list(ops.libraries) == [onnxruntime_extensions.get_library_path()]
print(json.dumps({"domains": list(ops.domains), "changed": changed, "imported": imported, "same": same}))
"""


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime_extensions") is None,
    reason="onnxruntime-extensions is not installed",
)
def test_loading_the_extensions_library_leaves_the_environment_as_it_was() -> None:
    env = {name: value for name, value in os.environ.items() if name != PROTOBUF_VARIABLE}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {"domains": ["ai.onnx.contrib"], "changed": [], "imported": [], "same": True}
