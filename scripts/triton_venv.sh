#!/usr/bin/env bash
# Create .venv-triton beside the repository's own venv: tritonclient[grpc] 2.73 pins protobuf<7,
# which cannot share .venv (protobuf 7) nor its process (both define the `inference.*` messages).
# Idempotent: reuses an existing venv that already imports tritonclient. Prints its python path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TRITON_VENV:-$ROOT/.venv-triton}"
PY="$VENV/bin/python"
SPEC="tritonclient[grpc]==2.73.0"

if [ -x "$PY" ] && "$PY" -c 'import tritonclient.grpc, numpy' >/dev/null 2>&1; then
    echo "$PY"
    exit 0
fi

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV" >&2
fi
"$PY" -m pip install --quiet --disable-pip-version-check "$SPEC" numpy >&2
"$PY" -c 'import tritonclient.grpc, numpy' >&2
echo "$PY"
