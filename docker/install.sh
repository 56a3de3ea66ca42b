#!/usr/bin/env bash
# The one install recipe of the ortserve images. docker/Dockerfile and docker/Dockerfile.gpu run it,
# and tests/integration/test_image_recipe.py follows it on the host, so the image and its test cannot
# drift apart:
#
#   install.sh wheel SOURCE_DIR WHEEL_DIR       build the ortserve wheel (alone, no dependencies)
#                                               from a checkout into WHEEL_DIR
#   install.sh venv WHEEL_DIR VENV_DIR EXTRAS   create the virtualenv VENV_DIR and install
#                                               ortserve[EXTRAS] from the wheel in WHEEL_DIR; EXTRAS is
#                                               a comma-separated list with exactly one of cpu and gpu
#                                               (their two ONNX Runtime packages exclude each other)
#
# PYTHON names the interpreter (default: python3). pip's own settings apply: the images set
# PIP_NO_CACHE_DIR; the test installs offline from a wheelhouse it keeps (PIP_NO_INDEX, PIP_FIND_LINKS).
set -euo pipefail

python="${PYTHON:-python3}"

usage() {
  echo "usage: $0 wheel SOURCE_DIR WHEEL_DIR | venv WHEEL_DIR VENV_DIR cpu|gpu[,EXTRA...]" >&2
  exit 2
}

build_wheel() {
  local source="$1" out="$2"
  mkdir -p "$out"
  "$python" -m pip wheel --no-deps --wheel-dir "$out" "$source"
}

install_venv() {
  local wheels="$1" venv="$2" extras="$3"
  local names name runtimes=0
  IFS=, read -ra names <<<"$extras"
  for name in "${names[@]}"; do
    case "$name" in cpu | gpu) runtimes=$((runtimes + 1)) ;; esac
  done
  if [ "$runtimes" -ne 1 ]; then
    echo "install.sh: EXTRAS must name exactly one of cpu and gpu, got '$extras'" >&2
    exit 2
  fi
  local found=("$wheels"/ortserve-*.whl)
  if [ "${#found[@]}" -ne 1 ] || [ ! -f "${found[0]}" ]; then
    echo "install.sh: expected exactly one ortserve wheel in $wheels, found: ${found[*]}" >&2
    exit 1
  fi
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install "${found[0]}[$extras]"
  # Fail the build, not the first request: the entry point, the server and ONNX Runtime import.
  "$venv/bin/python" -c "import onnxruntime, ortserve.server.app"
  "$venv/bin/ortserve" --help >/dev/null
}

case "${1:-}" in
  wheel) [ "$#" -eq 3 ] || usage; build_wheel "$2" "$3" ;;
  venv) [ "$#" -eq 4 ] || usage; install_venv "$2" "$3" "$4" ;;
  *) usage ;;
esac
