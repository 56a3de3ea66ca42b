"""The checks the fuzz tests apply to every answer catch what they are meant to (positive controls)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.server import leak_pattern, leaked

PRIVATE = Path("/srv/ortserve-run/fuzz0")

LEAKING = [
    "model 'm' failed on this input: [ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Unexpected input",
    "GatherElements: void onnxruntime::core_impl(const Tensor*) Out of range value in index tensor",
    "cannot open /tmp/pytest-of-root/pytest-3/fuzz0/data/store/ab/abcdef",
    "model file '/srv/ortserve-run/fuzz0/data/uploads/x' cannot be read",
    'Traceback (most recent call last):\n  File "/srv/app/src/ortserve/control.py", line 3',
    "Unexpected <class 'google.protobuf.message.DecodeError'>: Error parsing message",
    "sqlite3.OperationalError: unable to open database file ./ortserve-data/registry.db",
    "ModuleNotFoundError in site-packages",
    "external data file=/mnt/models/weights.bin is outside the model directory",
    "what(): std::bad_alloc",
    "internal error (correlation id 0123456789abcdef; details in the server log)",
]
CLEAN = [
    "model 'linear' input 'x': shape [-2, 16] has a negative dimension",
    "model 'gather' version 1 failed on this input in ONNX Runtime (Fail) (correlation id 445d6c0bb2b7)",
    "the request message is not a valid PredictRequest",
    "model 'linear' has no version or alias '1e3'",
    "model 'strings' input 'x': BYTES element 0 is not valid UTF-8 (invalid start byte at byte 0)",
    "SERVER: Received message larger than max (5243109 vs. 4194304)",
]


@pytest.mark.parametrize("text", LEAKING)
def test_a_leak_is_caught(text: str) -> None:
    assert leaked(text, leak_pattern(PRIVATE)) is not None


@pytest.mark.parametrize("text", CLEAN)
def test_a_domain_message_passes(text: str) -> None:
    assert leaked(text, leak_pattern(PRIVATE)) is None
