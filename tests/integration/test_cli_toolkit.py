"""`ortserve models register --sample | optimize | quantize | fp16 | profile | show | promote` against a
real server: the report as a table, the gate, the Chrome trace, the promote warning, bad files."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from ortserve import cli
from ortserve.config import ServerConfig
from ortserve.server.app import OrtServer
from tests import onnx_models


@pytest.fixture
async def clf(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """A server with model `clf` (linear: x [N,16] -> y [N,4]) version 1, registered with 8 sample rows."""
    server = OrtServer(ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path / "data")))
    try:
        address = f"127.0.0.1:{await server.start()}"
        onnx_models.linear(tmp_path / "clf.onnx")
        np.save(tmp_path / "x.npy", np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32))
        yield address, tmp_path
    finally:
        await server.stop(0)


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with capture_logs():  # the in-process server logs to the same stdout
        code = await asyncio.to_thread(cli.main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _rows(out: str, title: str) -> list[dict[str, str]]:
    """The rows of the plain table titled `title` (a `# title` line, a header line, tab-separated cells)."""
    block = next(b for b in out.split("\n\n") if f"# {title}" in b)
    header, *lines = block.split(f"# {title}", 1)[1].strip("\n").splitlines()[1:]
    return [dict(zip(header.split("\t"), line.split("\t"), strict=True)) for line in lines]


async def test_derive_commands_print_the_report_and_promote_warns_without_a_gate(
    clf: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    address, tmp = clf
    server = ("--server", address)
    code, out, err = await _cli(
        capsys,
        "models",
        "register",
        str(tmp / "clf.onnx"),
        "--name",
        "clf",
        "--sample",
        f"x={tmp / 'x.npy'}",
        "--json",
        *server,
    )
    assert code == 0, err
    assert json.loads(out)["sample_rows"] == 8

    code, out, err = await _cli(capsys, "models", "quantize", "clf", "1", "--mode", "dynamic", *server)
    assert code == 0, err
    assert out.startswith("registered clf version 2 (registered), derived from version 1: quantize dynamic\n")
    (row,) = _rows(out, "derived versions (figures")
    assert (row["VERSION"], row["DERIVED FROM"], row["RECIPE"]) == ("2", "version 1", "quantize dynamic")
    assert (row["SAMPLES"], row["GATE"]) == ("given (8 rows)", "none")
    assert row["SIZE"].endswith("x") and "source" in row["LATENCY BATCH 1"]
    (y,) = _rows(out, "derived versions: outputs")
    assert y["OUTPUT"] == "y" and float(y["MAX ABS DIFF"]) > 0 and y["ARGMAX AGREEMENT"].endswith("%")

    gate = ("--max-abs-diff", "0.001", "--min-agreement", "1")
    code, out, err = await _cli(
        capsys, "models", "optimize", "clf", "1", "--level", "basic", *gate, "--load", *server
    )
    assert code == 0, err
    (row,) = _rows(out, "derived versions (figures")
    assert (row["VERSION"], row["RECIPE"], row["GATE"]) == (
        "3",
        "optimize basic",
        "max abs diff <= 0.001, argmax agreement >= 1",
    )

    code, out, err = await _cli(
        capsys, "models", "fp16", "clf", "1", "--fp16-io", "--description", "half", "--json", *server
    )
    assert code == 0, err
    fp16 = json.loads(out)
    assert (fp16["version"], fp16["derived_from"], fp16["description"]) == (4, 1, "half")
    assert fp16["recipe"] == {"kind": "fp16", "fp16_io": True}
    assert fp16["report"]["samples"] == "given" and fp16["report"]["gate"] is None

    code, out, err = await _cli(capsys, "models", "show", "clf", *server)
    assert code == 0, err
    assert [r["RECIPE"] for r in _rows(out, "derived versions (figures")] == [
        "quantize dynamic", "optimize basic", "fp16 (fp16 inputs and outputs)"
    ]  # fmt: skip
    code, out, err = await _cli(capsys, "models", "show", "clf", "--json", *server)
    versions = json.loads(out)["versions"]
    assert [(v["derived_from"], v["recipe"] and v["recipe"]["kind"]) for v in versions] == [
        (None, None), (1, "quantize"), (1, "optimize"), (1, "fp16")
    ]  # fmt: skip

    code, out, err = await _cli(capsys, "models", "promote", "clf", "2", *server)
    assert code == 0 and "production -> version 2" in out
    assert err.startswith(
        "warning: clf version 2 was derived (quantize dynamic) from version 1 without a gate; "
        "its report: y max abs diff "
    ), err
    assert "argmax agreement" in err and "of the source" in err
    for version in ("3", "1"):  # gated, then uploaded: no warning
        code, out, err = await _cli(capsys, "models", "promote", "clf", version, *server)
        assert (code, err) == (0, ""), err


async def test_gate_refusal_and_bad_calibration_files(
    clf: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    address, tmp = clf
    server = ("--server", address)
    code, _, err = await _cli(capsys, "models", "register", str(tmp / "clf.onnx"), "--name", "clf", *server)
    assert code == 0, err

    code, out, err = await _cli(
        capsys, "models", "quantize", "clf", "1", "--mode", "dynamic", "--max-abs-diff", "0", *server
    )
    assert (code, out) == (1, "")
    assert err.startswith("error: FAILED_PRECONDITION: derived version refused: output 'y' max abs diff "), (
        err
    )
    assert "exceeds --max-abs-diff 0" in err

    np.save(tmp / "calibration.npy", np.ones((4, 16), np.float32))
    code, out, err = await _cli(
        capsys,
        "models",
        "quantize",
        "clf",
        "1",
        "--mode",
        "static",
        "--calibration",
        str(tmp / "calibration.npy"),
        *server,
    )
    assert (code, out) == (2, "")
    assert err.strip() == (
        f"error: calibration file {tmp / 'calibration.npy'} holds one array (.npy), "
        "not an .npz archive of arrays by input name"
    )
    code, _, err = await _cli(
        capsys, "models", "quantize", "clf", "1", "--mode", "dynamic", "--calibration", "c.npz", *server
    )
    assert (code, err.strip()) == (
        2,
        "error: --calibration is for --mode static (dynamic mode calibrates nothing)",
    )
    code, _, err = await _cli(capsys, "models", "optimize", "clf", "1", "--min-agreement", "2", *server)
    assert (code, err.strip()) == (2, "error: gate min_agreement must be in 0..1, got 2.0")

    calibration = tmp / "calibration.npz"
    np.savez(calibration, x=np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32))
    code, out, err = await _cli(
        capsys,
        "models",
        "quantize",
        "clf",
        "1",
        "--mode",
        "static",
        "--per-channel",
        "--calibration",
        str(calibration),
        "--json",
        *server,
    )
    assert code == 0, err
    static = json.loads(out)
    assert (static["version"], static["derived_from"], static["report"]["samples"]) == (2, 1, "generated")
    assert static["recipe"]["mode"] == "static" and static["recipe"]["per_channel"] is True
    assert static["recipe"]["calibration_rows"] == 16 and len(static["recipe"]["calibration_sha256"]) == 64


async def test_profile_prints_the_operators_and_writes_the_trace(
    clf: tuple[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, tmp = clf
    server = ("--server", address)
    samples = tmp / "samples.npz"
    np.savez(samples, x=np.ones((2, 16), np.float32))
    code, _, err = await _cli(
        capsys,
        "models",
        "register",
        str(tmp / "clf.onnx"),
        "--name",
        "clf",
        "--samples",
        str(samples),
        *server,
    )
    assert code == 0, err

    monkeypatch.chdir(tmp)
    code, out, err = await _cli(
        capsys, "models", "profile", "clf", "1", "--batch", "4", "--runs", "3", "--top", "1", *server
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("# clf version 1: 1 of ") and "over 3 runs of batch 4" in lines[0]
    assert lines[1] == "OPERATOR\tNODE\tCALLS\tTOTAL (MS)\tSHARE"
    assert len(lines[2].split("\t")) == 5 and lines[2].split("\t")[2] == "3"
    assert (
        lines[3]
        == "Chrome trace written to clf-1-profile.json: open it in Perfetto (https://ui.perfetto.dev)"
    )
    assert isinstance(json.loads((tmp / "clf-1-profile.json").read_bytes()), list)

    trace = tmp / "traces" / "mine.json"
    trace.parent.mkdir()
    code, out, err = await _cli(
        capsys, "models", "profile", "clf", "1", "--trace", str(trace), "--json", *server
    )
    assert code == 0, err
    document = json.loads(out)
    assert document["trace"] == str(trace) and document["providers"] == ["CPUExecutionProvider"]
    assert document["operators"] and isinstance(json.loads(trace.read_bytes()), list)

    code, out, err = await _cli(capsys, "models", "profile", "clf", "1", "--top", "0", *server)
    assert (code, err.strip()) == (2, "error: --top must be >= 1, got 0")
    code, out, err = await _cli(capsys, "models", "profile", "clf", "7", *server)
    assert code == 1 and err.startswith("error: NOT_FOUND: "), err
    # Counts below 1 and a trace directory that does not exist are refused before any profiling.
    for flags, message in [
        (("--runs", "0"), "error: profile runs must be >= 1, got 0"),
        (("--batch", "0"), "error: profile batch_size must be >= 1, got 0"),
        (("--trace", str(tmp / "nowhere" / "t.json")), f"directory {tmp / 'nowhere'} does not exist"),
    ]:
        code, out, err = await _cli(capsys, "models", "profile", "clf", "1", *flags, *server)
        assert (code, out) == (2, "") and message in err, err
