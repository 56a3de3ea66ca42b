#!/usr/bin/env bash
# Validates docker/compose.yaml with `docker-compose config -q` (schema, service references, depends_on
# conditions), without a container engine. Installs Debian's docker-compose package when it is
# missing, the way scripts/install_client_toolchains.sh installs its packages; where there is no
# apt-get and no docker-compose, it says so and skips.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! command -v docker-compose >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "compose_check: SKIPPED: docker-compose is not installed and apt-get is unavailable to install it" >&2
    exit 0
  fi
  if [ "$(id -u)" -eq 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo -n)
  else
    sudo=()
  fi
  echo "compose_check: installing docker-compose"
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends docker-compose
fi

docker-compose --project-directory "$repo_root/docker" -f "$repo_root/docker/compose.yaml" config -q
echo "compose_check: docker/compose.yaml is valid ($(docker-compose version --short))"
