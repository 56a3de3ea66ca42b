"""`ortserve models optimize | quantize | fp16 | profile`, and the sample inputs of `models register`.

A derived version is built by the server in its limited subprocess, compared with its source on the
source's samples (or generated inputs) and registered with the report; `--max-abs-diff` and
`--min-agreement` refuse it (FAILED_PRECONDITION, nothing registered) when a figure misses them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ortserve.errors import OrtserveError
from ortserve.toolkit.recipes import (
    OPTIMIZE_LEVELS,
    QUANTIZE_MODES,
    Fp16,
    Gate,
    Optimize,
    Quantize,
    Recipe,
    describe,
)
from ortserve.toolkit.samples import from_npz

PERFETTO = "https://ui.perfetto.dev"


def add_toolkit_commands(msub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = _derive_parser(msub, common, "optimize", "a new version with ONNX Runtime's graph optimizations")
    p.add_argument("--level", choices=OPTIMIZE_LEVELS, default="extended")
    p.add_argument("--simplify", action="store_true", help="also simplify the graph with onnxslim")
    p.set_defaults(run=lambda args: _derive(args, Optimize(level=args.level, simplify=args.simplify)))
    p = _derive_parser(msub, common, "quantize", "a new version with int8 weights (and activations: static)")
    p.add_argument("--mode", choices=QUANTIZE_MODES, required=True)
    p.add_argument("--per-channel", action="store_true", help="one scale per output channel of weights")
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="FILE.npz",
        help="static mode: inputs to calibrate on, one array per input (default: the stored samples)",
    )
    p.set_defaults(run=_quantize)
    p = _derive_parser(msub, common, "fp16", "a new version with float16 weights and compute")
    p.add_argument("--fp16-io", action="store_true", help="make the inputs and outputs float16 too")
    p.set_defaults(run=lambda args: _derive(args, Fp16(fp16_io=args.fp16_io)))
    _add_profile(msub, common)


def _derive_parser(
    msub: Any, common: Callable[[argparse.ArgumentParser], None], name: str, help_text: str
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = msub.add_parser(
        name, help=help_text + ", compared with its source (an evaluation report)"
    )
    p.add_argument("name")
    p.add_argument("version", type=int, help="the source version")
    p.add_argument(
        "--max-abs-diff", type=float, metavar="X", help="refuse it when an output differs by more than X"
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        metavar="Y",
        help="refuse it when argmax agrees on less than this share (0..1) of rows",
    )
    p.add_argument("--description", default="")
    p.add_argument("--load", action="store_true", help="load and warm it up on the server")
    common(p)
    return p


def _quantize(args: argparse.Namespace) -> int:
    calibration = None
    if args.calibration is not None:
        if args.mode != "static":
            raise OrtserveError("--calibration is for --mode static (dynamic mode calibrates nothing)")
        calibration = from_npz(args.calibration, f"calibration file {args.calibration}")
    recipe = Quantize(mode=args.mode, per_channel=args.per_channel)
    return _derive(args, recipe, calibration)


def _derive(
    args: argparse.Namespace, recipe: Recipe, calibration: dict[str, np.ndarray] | None = None
) -> int:
    from ortserve.cli import tables
    from ortserve.client import Client

    gate = Gate(max_abs_diff=args.max_abs_diff, min_agreement=args.min_agreement)
    with Client(args.server, token=args.token) as client:
        info = client.derive(
            args.name,
            args.version,
            recipe,
            gate=gate if gate.is_set else None,
            calibration=calibration,
            description=args.description,
            load=args.load,
        )
    if args.json:
        tables.print_json(tables.version_json(info))
        return 0
    print(
        f"registered {info.model} version {info.version} ({info.state}), derived from version "
        f"{args.version}: {describe(recipe)}"
    )
    tables.emit(tables.derived_tables([info]))
    return 0


def _add_profile(msub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = msub.add_parser(
        "profile",
        help="run ONNX Runtime's profiler on a version: the operators that take the most time, "
        "and the Chrome trace (opens in Perfetto)",
    )
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--batch", type=int, default=1, metavar="N", help="rows per run (default: 1)")
    p.add_argument("--runs", type=int, default=10, metavar="K", help="profiled runs (default: 10)")
    p.add_argument(
        "--trace",
        type=Path,
        metavar="FILE.json",
        help="where to write the trace (default: NAME-VERSION-profile.json)",
    )
    p.add_argument("--top", type=int, default=20, metavar="N", help="operators to list (default: 20)")
    common(p)
    p.set_defaults(run=_profile)


def _profile(args: argparse.Namespace) -> int:
    from ortserve.cli import tables
    from ortserve.client import Client

    if args.top < 1:
        raise OrtserveError(f"--top must be >= 1, got {args.top}")
    trace = args.trace or Path(f"{args.name}-{args.version}-profile.json")
    if not trace.parent.is_dir():
        raise OrtserveError(f"--trace {trace}: directory {trace.parent} does not exist")
    with Client(args.server, token=args.token) as client:
        result = client.profile(args.name, args.version, batch_size=args.batch, runs=args.runs)
    trace.write_bytes(result.chrome_trace)
    if args.json:
        tables.print_json({**tables.profile_json(result), "trace": str(trace)})
        return 0
    title = (
        f"{args.name} version {args.version}: {min(args.top, len(result.operators))} of "
        f"{len(result.operators)} nodes by time over {args.runs} runs of batch {args.batch} "
        f"(mean run {result.mean_run_ms:.3f} ms on {tables.providers_text(result.providers)})"
    )
    tables.emit([tables.profile_table(title, result, args.top)])
    print(f"Chrome trace written to {trace}: open it in Perfetto ({PERFETTO})")
    return 0


def read_samples(items: list[str], archive: Path | None) -> dict[str, np.ndarray] | None:
    """`models register` samples: NAME=FILE.npy items, or one .npz archive (None when neither)."""
    if archive is not None:
        return from_npz(archive, f"samples file {archive}")
    if not items:
        return None
    samples: dict[str, np.ndarray] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise OrtserveError(f"--sample takes NAME=FILE.npy, got {item!r}")
        samples[name] = _read_npy(Path(path))
    return samples


def _read_npy(path: Path) -> np.ndarray:
    try:
        array: np.ndarray = np.load(path, allow_pickle=False)
    except ValueError:
        raise OrtserveError(f"sample file {path} is not a .npy file without pickled objects") from None
    if not isinstance(array, np.ndarray):
        raise OrtserveError(f"sample file {path} is an .npz archive; pass it as --samples {path}")
    # Text saved by numpy is a unicode array; the SDK sends STRING tensors from object arrays.
    return array.astype(object) if array.dtype.kind == "U" else array
