#!/usr/bin/env bash
# Create the benchmark peers' virtualenvs beside the repository's own venv (bench/run_all.py
# --targets): .venv-kserve (KServe's Python ModelServer) and .venv-mlserver (Seldon MLServer), each
# with ONNX Runtime, pinned. Their dependencies (protobuf, grpcio, fastapi) cannot share .venv.
# Usage: scripts/peer_venvs.sh kserve|mlserver. Idempotent: reuses a venv that already imports the
# peer at the pinned version. Prints the venv's python path on success; non-zero exit on failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEER="${1:?usage: peer_venvs.sh kserve|mlserver}"
ORT="onnxruntime==1.32.0"
case "$PEER" in
    kserve)
        VENV="${KSERVE_VENV:-$ROOT/.venv-kserve}"
        SPECS=("kserve==0.21.0" "$ORT" numpy)
        CHECK='import importlib.metadata as m, kserve, onnxruntime, numpy; assert m.version("kserve") == "0.21.0"'
        ;;
    mlserver)
        VENV="${MLSERVER_VENV:-$ROOT/.venv-mlserver}"
        SPECS=("mlserver==1.7.1" "$ORT" numpy)
        CHECK='import importlib.metadata as m, mlserver, onnxruntime, numpy; assert m.version("mlserver") == "1.7.1"'
        ;;
    *)
        echo "unknown peer: $PEER (kserve or mlserver)" >&2
        exit 2
        ;;
esac
PY="$VENV/bin/python"

if [ -x "$PY" ] && "$PY" -c "$CHECK" >/dev/null 2>&1; then
    echo "$PY"
    exit 0
fi

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV" >&2
fi
"$PY" -m pip install --quiet --disable-pip-version-check "${SPECS[@]}" >&2
"$PY" -c "$CHECK" >&2
echo "$PY"
