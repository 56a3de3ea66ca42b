#!/usr/bin/env bash
# Installs what the example clients under clients/ need, idempotently:
#   - C++: Debian's gRPC/protobuf dev packages, protoc + grpc_cpp_plugin, cmake, g++, pkg-config
#   - Go: Debian's Go 1.19, grpc-go and protobuf-go sources (GOPATH mode, offline), protoc plugins
#   - Java: a JDK, Debian's grpc-java jars and grpc_java_plugin (no Maven/Gradle)
#   - Node: the npm dependencies of clients/node (npm ci from the committed lock file)
#   - promtool (Debian's prometheus package), which checks deploy/monitoring's alert rules
#   - Chromium (Debian's), which the web console's browser tests drive headless
#   - PostgreSQL's server binaries (initdb, pg_ctl), which tests/faults starts a private cluster with
#   - Node.js and npm (Debian's) where no npm is installed
# Meant for Debian 12 (bookworm), run as root (or with sudo available), non-interactively.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

apt_packages=(
  libgrpc++-dev
  protobuf-compiler-grpc
  libprotobuf-dev
  protobuf-compiler
  cmake
  g++
  pkg-config
  # Go (clients/go/build.sh)
  golang-go
  golang-google-grpc-dev
  golang-google-protobuf-dev
  protoc-gen-go
  protoc-gen-go-grpc
  # Java (clients/java/build.sh)
  default-jdk-headless
  libgrpc-java
  protobuf-compiler-grpc-java-plugin
  libprotobuf-java
  libnetty-java
  libgoogle-gson-java
  libperfmark-java
  libguava-java
  # promtool for deploy/monitoring (tests/integration/test_monitoring.py); about 5 s to install
  prometheus
  # Chromium for the web console's browser tests (tests/console): Playwright drives it, downloads none
  chromium
  # initdb and pg_ctl under /usr/lib/postgresql for tests/faults/test_database_outage.py's own cluster
  postgresql
)
# Node.js >= 18 with npm for clients/node; Debian's where none is installed (NodeSource's, kept if present)
if ! command -v npm >/dev/null 2>&1; then
  apt_packages+=(nodejs npm)
fi

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo -n)
else
  sudo=()
fi

missing=()
for pkg in "${apt_packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_client_toolchains: apt-get not found; install these yourself: ${missing[*]}" >&2
    exit 1
  fi
  echo "install_client_toolchains: installing ${missing[*]}"
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "install_client_toolchains: apt packages already installed"
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "install_client_toolchains: npm not found; install Node.js >= 18 (with npm) first" >&2
  exit 1
fi

cd "$repo_root/clients/node"
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund
else
  npm install --no-audit --no-fund
fi

echo "install_client_toolchains: done"
