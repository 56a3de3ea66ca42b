"""`ortserve models export-torch`: a module from path.py:factory to a checked, registered ONNX file."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ortserve import dtypes
from ortserve.cli.export import InputArg, built_module, load_factory, parse_input
from ortserve.client import AsyncClient
from ortserve.errors import InvalidInput
from ortserve.server.app import OrtServer
from tests.sdk.conftest import make_server

SOURCE = """
import torch


def make():
    torch.manual_seed(7)
    return torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Softmax(dim=-1)).train()


def with_inputs():
    return make(), (torch.zeros(3, 16),)


def not_a_module():
    return 42


def failing():
    raise RuntimeError("inside the factory")
"""


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "mymodel.py"
    path.write_text(SOURCE)
    return path


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[OrtServer]:
    srv = make_server(tmp_path / "data", {})
    await srv.start()
    yield srv
    await srv.stop(0)


async def test_export_writes_a_checked_model_and_registers_it(
    source: Path, server: OrtServer, tmp_path: Path
) -> None:
    out = tmp_path / "mlp.onnx"
    address = f"127.0.0.1:{server.port}"
    args = ["models", "export-torch", f"{source}:make", "--input", "x=2,16:float32", "--output", "probs"]
    args += ["-o", str(out), "--register", "mlp", "--server", address, "--json"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ortserve",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()
    result = json.loads(stdout)
    assert result["path"] == str(out) and result["size_bytes"] == out.stat().st_size
    assert result["registered"]["version"] == 1 and result["registered"]["state"] == "ready"

    onnx.checker.check_model(onnx.load(out), full_check=True)
    module, _ = built_module(load_factory(f"{source}:make"), [parse_input("x=1,16")])
    assert not module.training  # the command exports in eval mode
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-4, atol=1e-5)
    async with AsyncClient(address) as client:
        served = await client.predict("mlp", {"x": x})
    np.testing.assert_allclose(served.outputs["probs"], expected, rtol=1e-4, atol=1e-5)


def test_parse_input() -> None:
    assert parse_input("x") == InputArg("x", None, dtypes.BY_NAME["FP32"])
    assert parse_input("ids=2,7:int64") == InputArg("ids", (2, 7), dtypes.BY_NAME["INT64"])
    assert parse_input("m=1:FP16") == InputArg("m", (1,), dtypes.BY_NAME["FP16"])
    for text, expected in (
        ("=2,3", "--input takes NAME[=SHAPE[:DTYPE]]"),
        ("x=2,a", "shape '2,a' is not comma-separated sizes"),
        ("x=2,-1", "shape '2,-1' has a negative size"),
        ("x=2:str", "unsupported dtype 'str'"),
        ("x=2:BYTES", "unsupported dtype 'BYTES'"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(expected)):
            parse_input(text)


def test_factories_give_a_module_and_inputs(source: Path) -> None:
    module, inputs = built_module(load_factory(f"{source}:make"), [parse_input("x=2,16")])
    assert isinstance(module, torch.nn.Module) and [tuple(t.shape) for t in inputs] == [(2, 16)]
    again = built_module(load_factory(f"{source}:make"), [parse_input("x=2,16")])[1]
    assert torch.equal(inputs[0], again[0])  # seeded
    _, given = built_module(load_factory(f"{source}:with_inputs"), [parse_input("x")])
    assert torch.equal(given[0], torch.zeros(3, 16))


@pytest.mark.parametrize(
    ("spec", "inputs", "expected"),
    [
        ("{source}", ["x=2,16"], "given as PATH.py:FACTORY"),
        ("{source}.txt:make", ["x=2,16"], "given as PATH.py:FACTORY"),
        ("{dir}/missing.py:make", ["x=2,16"], "missing.py: no such file"),
        ("{dir}/broken.py:make", ["x=2,16"], "broken.py failed: ZeroDivisionError: division by zero"),
        ("{source}:nope", ["x=2,16"], "has no callable 'nope'"),
        ("{source}:not_a_module", ["x=2,16"], "the factory returned a int; expected a torch.nn.Module"),
        ("{source}:failing", ["x=2,16"], "the factory failed: RuntimeError: inside the factory"),
        ("{source}:make", ["x"], "--input x needs a shape"),
        ("{source}:with_inputs", ["x=3,16"], "the factory returned example inputs: give --input NAME only"),
    ],
)
def test_bad_sources_are_named(source: Path, spec: str, inputs: list[str], expected: str) -> None:
    (source.parent / "broken.py").write_text("1 / 0\n")
    with pytest.raises(InvalidInput) as info:
        built_module(
            load_factory(spec.format(source=source, dir=source.parent)), [parse_input(i) for i in inputs]
        )
    assert expected in str(info.value)
