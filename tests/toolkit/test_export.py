"""ortserve.export.from_torch: PyTorch modules exported, checked, and served end to end by a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ortserve.client import AsyncClient
from ortserve.errors import FailedPrecondition, InvalidInput
from ortserve.export import from_torch
from ortserve.server.app import OrtServer
from tests.sdk.conftest import make_server


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.body(x), dim=-1)


class Cnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.head = torch.nn.Linear(6, 5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.conv(image))).flatten(1))


class TwoWay(torch.nn.Module):
    """Two inputs, two outputs."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b, (a * b).sum(dim=1, keepdim=True)


class Noisy(torch.nn.Module):
    """Random on every call: ONNX Runtime's draw cannot match torch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


class FixedBatch(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(2, -1)


class Broken(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("secret internals")


@dataclass(frozen=True)
class Exported:
    module: torch.nn.Module
    data: bytes
    input_name: str
    row_shape: tuple[int, ...]


def _rows(exported: Exported, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *exported.row_shape)).astype(np.float32)


@pytest.fixture(scope="module")
def exported() -> dict[str, Exported]:
    """The MLP and the CNN exported once for the whole module (torch's export is the slow part)."""
    torch.manual_seed(0)
    out = {}
    for name, module, input_name, row_shape in (
        ("mlp", Mlp(), "x", (16,)),
        ("cnn", Cnn(), "image", (3, 8, 8)),
    ):
        module.eval()
        example = torch.randn(2, *row_shape)
        data = from_torch(module, (example,), input_names=[input_name], output_names=["y"])
        out[name] = Exported(module, data, input_name, row_shape)
    return out


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[OrtServer]:
    srv = make_server(tmp_path / "data", {})
    await srv.start()
    yield srv
    await srv.stop(0)


def _torch(exported: Exported, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(exported.module(torch.from_numpy(x)).numpy())


async def test_exported_modules_serve_batch_1_and_4_like_torch(
    exported: dict[str, Exported], server: OrtServer, tmp_path: Path
) -> None:
    async with AsyncClient(f"127.0.0.1:{server.port}") as client:
        for name, item in exported.items():
            path = tmp_path / f"{name}.onnx"
            path.write_bytes(item.data)
            info = await client.register(path, name)
            assert (info.state, info.batch_axis) == ("ready", True), info
            for rows in (1, 4):
                x = _rows(item, rows, seed=rows)
                result = await client.predict(name, {item.input_name: x})
                assert result.outputs["y"].shape[0] == rows
                np.testing.assert_allclose(result.outputs["y"], _torch(item, x), rtol=1e-4, atol=1e-5)


def test_the_batch_axis_is_dynamic_and_the_model_passes_the_checker(exported: dict[str, Exported]) -> None:
    for item in exported.values():
        model = onnx.load_from_string(item.data)
        onnx.checker.check_model(model, full_check=True)
        for value in (*model.graph.input, *model.graph.output):
            assert value.type.tensor_type.shape.dim[0].dim_param, value


def test_two_inputs_two_outputs_a_fixed_batch_and_an_opset() -> None:
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    data = from_torch(
        TwoWay().eval(),
        (a, b),
        input_names=["a", "b"],
        output_names=["sum", "dot"],
        dynamic_batch=False,
        opset=18,
    )
    model = onnx.load_from_string(data)
    assert [i.name for i in model.graph.input] == ["a", "b"]
    assert [o.name for o in model.graph.output] == ["sum", "dot"]
    assert [d.dim_value for d in model.graph.output[1].type.tensor_type.shape.dim] == [3, 1]
    assert {o.domain: o.version for o in model.opset_import}[""] == 18


def test_an_opset_torch_cannot_reach_is_refused() -> None:
    with pytest.raises(InvalidInput, match="opset 99 was asked for, but the exported model has opset "):
        from_torch(
            TwoWay().eval(),
            (torch.ones(1, 2),) * 2,
            input_names=["a", "b"],
            output_names=["s", "d"],
            opset=99,
        )


def test_outputs_that_differ_from_torch_name_the_output_and_the_difference() -> None:
    with pytest.raises(InvalidInput) as info:
        from_torch(Noisy().eval(), torch.zeros(2, 4), input_names=["x"], output_names=["noise"])
    message = str(info.value)
    assert "output 'noise' of ONNX Runtime differs from torch on the example inputs (batch 2)" in message
    assert "max abs diff" in message and "atol 0.0001 + rtol 0.001" in message


def test_a_module_that_fixes_the_batch_size_is_refused() -> None:
    with pytest.raises(InvalidInput) as info:
        from_torch(FixedBatch().eval(), torch.randn(2, 6), input_names=["x"], output_names=["y"])
    assert "output 'y' of the exported model has a fixed axis 0 of size 2, not a dynamic batch" in str(
        info.value
    )
    # The same module without a dynamic batch is fine.
    assert from_torch(
        FixedBatch().eval(), torch.randn(2, 6), input_names=["x"], output_names=["y"], dynamic_batch=False
    )


def test_an_export_failure_names_the_step_and_keeps_the_detail_in_the_log() -> None:
    with pytest.raises(InvalidInput) as info:
        from_torch(Broken().eval(), torch.randn(2, 3), input_names=["x"], output_names=["y"])
    message = str(info.value)
    assert message.startswith("torch.onnx.export failed to export the module (correlation id ")
    assert "secret internals" not in message


@pytest.mark.parametrize(
    ("inputs", "input_names", "output_names", "expected"),
    [
        ((torch.zeros(2, 3),), ["x", "y"], ["z"], "1 example input(s) for 2 input name(s) ['x', 'y']"),
        ((torch.zeros(2, 3), torch.zeros(3, 3)), ["a", "b"], ["z"], "disagree on the batch size"),
        ((torch.tensor(1.0),), ["x"], ["z"], "example input 'x' is a scalar"),
        ((np.zeros((2, 3)),), ["x"], ["z"], "example input 'x' is a ndarray, not a torch.Tensor"),
        ((torch.zeros(0, 3),), ["x"], ["z"], "example inputs have 0 rows"),
        ((torch.zeros(2, 3),), ["x"], ["z", "z"], "output_names has a repeated name"),
        ((torch.zeros(2, 3),), "x", ["z"], "input_names must be a non-empty list"),
    ],
)
def test_bad_arguments_are_named(
    inputs: tuple[object, ...], input_names: list[str], output_names: list[str], expected: str
) -> None:
    with pytest.raises(InvalidInput, match=re.escape(expected)):
        from_torch(Mlp(), inputs, input_names=input_names, output_names=output_names)


def test_without_torch_it_imports_and_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = "import sys, ortserve.export; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(FailedPrecondition, match=r"needs ONNX Runtime: install ortserve\[cpu\]"):
        from_torch(object(), (), input_names=["x"], output_names=["y"])
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(FailedPrecondition, match=r"needs torch and onnxscript: install ortserve\[torch\]"):
        from_torch(object(), (), input_names=["x"], output_names=["y"])
