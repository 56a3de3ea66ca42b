"""Regenerate the checked-in Python stubs under src/ortserve/api from protos/.

Usage:
    python scripts/gen_protos.py           # rewrite the stubs
    python scripts/gen_protos.py --check   # exit 1 when the stubs are stale

Our API (protos/ortserve/api/v1) generates in place. The Open Inference Protocol
files (protos/inference, proto package `inference`) are generated into
`ortserve.api.inference` so that no top-level `inference` module is installed;
their imports are rewritten accordingly. The wire names stay `inference.*`.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
TARGET = ROOT / "src" / "ortserve" / "api"
INIT = '"""Generated gRPC stubs: regenerate with scripts/gen_protos.py, never edit."""\n'


def _generate(out: Path) -> None:
    # protoc finds the mypy plugins next to this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "--mypy_opt=quiet",
        "--mypy_grpc_opt=quiet",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    oip = out / "ortserve" / "api" / "inference"
    shutil.move(str(out / "inference"), oip)
    for path in oip.iterdir():
        text = path.read_text()
        text = re.sub(r"^from inference import", "from ortserve.api.inference import", text, flags=re.M)
        text = re.sub(r"^import inference\.", "import ortserve.api.inference.", text, flags=re.M)
        text = text.replace("inference.model_config_pb2", "ortserve.api.inference.model_config_pb2")
        text = text.replace("ortserve.api.ortserve.api.", "ortserve.api.")
        path.write_text(text)
    for pkg in (out / "ortserve" / "api", out / "ortserve" / "api" / "v1", oip):
        (pkg / "__init__.py").write_text(INIT)
        (pkg / "py.typed").write_text("")


def _differences(a: Path, b: Path) -> list[str]:
    names = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    names |= {p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    return sorted(
        str(n)
        for n in names
        if not ((a / n).exists() and (b / n).exists() and filecmp.cmp(a / n, b / n, False))
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when the stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _generate(out)
        fresh = out / "ortserve" / "api"
        if args.check:
            stale = _differences(fresh, TARGET)
            if stale:
                print("stale generated stubs (run: python scripts/gen_protos.py):", *stale, sep="\n  ")
                return 1
            print("generated stubs are up to date")
            return 0
        shutil.rmtree(TARGET, ignore_errors=True)
        shutil.copytree(fresh, TARGET)
    print(f"regenerated {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
