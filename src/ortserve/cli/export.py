"""`ortserve models export-torch`: a PyTorch module from `path.py:factory` to a checked ONNX file.

The factory returns a `torch.nn.Module`, or `(module, example_inputs)`; otherwise the example inputs
are random (seeded) tensors of the shapes and types given with --input. The module is put in eval
mode, exported with `ortserve.export.from_torch`, written to -o, and with --register uploaded as a
new version of a model through the server.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ortserve import dtypes
from ortserve.errors import InvalidInput
from ortserve.signature import Signature, TensorSpec
from ortserve.toolkit.samples import generate_samples


@dataclass(frozen=True, slots=True)
class InputArg:
    """One --input: a name, and a shape and type when the factory gives no example inputs."""

    name: str
    shape: tuple[int, ...] | None
    dtype: dtypes.DType


def add_export_command(msub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = msub.add_parser(
        "export-torch",
        help="export a PyTorch module (path.py:factory) to ONNX, check it against torch, optionally register",
    )
    p.add_argument("source", metavar="PATH.py:FACTORY", help="factory() returns a module or (module, inputs)")
    p.add_argument(
        "--input",
        action="append",
        required=True,
        type=parse_input,
        metavar="NAME[=SHAPE[:DTYPE]]",
        help="an input, in order; SHAPE like 2,3,32,32 and DTYPE like float32 (the default) or int64; "
        "random seeded values of that shape are the example input unless the factory gives inputs",
    )
    p.add_argument("--output", action="append", required=True, metavar="NAME", help="an output, in order")
    p.add_argument("--opset", type=int, help="ONNX opset (default: torch's)")
    p.add_argument("--no-dynamic-batch", action="store_true", help="keep axis 0 at the example size")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance against torch")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance against torch")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="MODEL.onnx")
    p.add_argument("--register", metavar="NAME", help="also register the file as a new version of NAME")
    common(p)
    p.set_defaults(run=_export_torch)


def parse_input(text: str) -> InputArg:
    name, sep, rest = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"--input takes NAME[=SHAPE[:DTYPE]], got {text!r}")
    if not sep:
        return InputArg(name, None, dtypes.BY_NAME["FP32"])
    shape_text, _, dtype_text = rest.partition(":")
    try:
        shape = tuple(int(d) for d in shape_text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--input {name}: shape {shape_text!r} is not comma-separated sizes like 2,3,32,32"
        ) from None
    if any(d < 0 for d in shape):
        raise argparse.ArgumentTypeError(f"--input {name}: shape {shape_text!r} has a negative size")
    return InputArg(name, shape, _dtype(name, dtype_text or "float32"))


def _dtype(name: str, text: str) -> dtypes.DType:
    try:
        found = dtypes.BY_NUMPY.get(np.dtype(text))
    except TypeError:
        found = dtypes.BY_NAME.get(text.upper())
    if found is None or found is dtypes.BYTES:
        known = "bool, uint8, int8, int16, int32, int64, float16, float32, float64"
        raise argparse.ArgumentTypeError(f"--input {name}: unsupported dtype {text!r}; expected {known}")
    return found


def load_factory(source: str) -> Callable[[], Any]:
    """The callable named by `path.py:factory`, importing the file as a module of its own."""
    path_text, sep, attr = source.rpartition(":")
    path = Path(path_text)
    if not sep or not attr or path.suffix != ".py":
        raise InvalidInput(f"the module to export is given as PATH.py:FACTORY, got {source!r}")
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    module_name = f"ortserve_export_source_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InvalidInput(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise InvalidInput(f"importing {path} failed: {_own(exc)}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InvalidInput(f"{path} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]


def _own(exc: Exception) -> str:
    """The error of the user's own code, shown to them (this runs on their machine, not a server)."""
    return f"{type(exc).__name__}: {exc}"


def built_module(factory: Callable[[], Any], inputs: Sequence[InputArg]) -> tuple[Any, tuple[Any, ...]]:
    """Call the factory: the module in eval mode and its example inputs (given or random)."""
    import torch

    try:
        made = factory()
    except Exception as exc:
        raise InvalidInput(f"the factory failed: {_own(exc)}") from exc
    given = isinstance(made, tuple) and len(made) == 2
    module, examples = made if given else (made, None)
    if not isinstance(module, torch.nn.Module):
        raise InvalidInput(
            f"the factory returned a {type(module).__name__}; expected a torch.nn.Module or (module, inputs)"
        )
    if examples is None:
        examples = _random_inputs(torch, inputs)
    elif any(i.shape is not None for i in inputs):
        raise InvalidInput("the factory returned example inputs: give --input NAME only, without a shape")
    examples = (examples,) if isinstance(examples, torch.Tensor) else tuple(examples)
    return module.eval(), examples


def _random_inputs(torch: Any, inputs: Sequence[InputArg]) -> tuple[Any, ...]:
    missing = [i.name for i in inputs if i.shape is None]
    if missing:
        raise InvalidInput(
            f"--input {missing[0]} needs a shape (NAME=SHAPE[:DTYPE]): the factory gives no inputs"
        )
    specs = tuple(TensorSpec(i.name, i.dtype, i.shape or ()) for i in inputs)
    arrays = generate_samples(Signature(specs, (), batch_axis=False), rows=0)
    return tuple(torch.from_numpy(arrays[i.name]) for i in inputs)


def _export_torch(args: argparse.Namespace) -> int:
    from ortserve.export import from_torch
    from ortserve.logging import configure_logging

    configure_logging("warning", "console")
    module, examples = built_module(load_factory(args.source), args.input)
    data = from_torch(
        module,
        examples,
        input_names=[i.name for i in args.input],
        output_names=args.output,
        dynamic_batch=not args.no_dynamic_batch,
        opset=args.opset,
        rtol=args.rtol,
        atol=args.atol,
    )
    args.out.write_bytes(data)
    result: dict[str, Any] = {"path": str(args.out), "size_bytes": len(data)}
    text = f"wrote {args.out} ({len(data)} bytes); ONNX Runtime matches torch"
    if args.register:
        result["registered"] = _register(args)
        text += f"\nregistered {args.register} version {result['registered']['version']}"
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


def _register(args: argparse.Namespace) -> dict[str, Any]:
    from ortserve.cli.tables import version_json
    from ortserve.client import Client

    with Client(args.server, token=args.token) as client:
        info = client.register(args.out, args.register)
    return version_json(info)
