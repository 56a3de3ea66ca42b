#!/usr/bin/env bash
# The tests again on every other Python that requires-python admits (3.12 and 3.13; 3.11 is .venv's).
# Each gets .venv-pyX.Y with the cpu extra and the `pythons-test` group (no torch: the CPU build of torch
# on these machines is a 3.11 wheel, and any other torch pulls gigabytes of CUDA), then runs the tests in
# PYTHONS_TESTS. An interpreter is found on PATH (pythonX.Y) or under pyenv; a missing one is reported
# and skipped, or fails the run when REQUIRE_PYTHONS=1 (CI sets it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VERSIONS="${PYTHONS:-3.12 3.13}"
TESTS="${PYTHONS_TESTS:-tests/unit tests/component tests/sdk tests/store}"

runs_as() {  # a pyenv shim is on PATH even where its version is not selected: try it
    "$1" -c "import sys; sys.exit(f'{sys.version_info[0]}.{sys.version_info[1]}' != '$2')" >/dev/null 2>&1
}

find_python() {
    local version="$1" candidate
    for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python"$version" \
        "$(command -v "python$version" || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] && runs_as "$candidate" "$version"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

for version in $VERSIONS; do
    if ! interpreter="$(find_python "$version")"; then
        if [ "${REQUIRE_PYTHONS:-0}" = 1 ]; then
            echo "python$version: not found (on PATH or under pyenv), and REQUIRE_PYTHONS=1" >&2
            exit 1
        fi
        echo "python$version: not found (on PATH or under pyenv); its tests are skipped" >&2
        continue
    fi
    venv=".venv-py$version"
    stamp="$venv/.installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$interpreter" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --upgrade "pip>=25.1"
        "$venv/bin/python" -m pip install -q -e ".[cpu]" --group pythons-test
        touch "$stamp"
    fi
    echo "== Python $version ($interpreter): $TESTS"
    # shellcheck disable=SC2086  # TESTS is a list of paths
    "$venv/bin/python" -m pytest -q -p no:cacheprovider $TESTS
done
