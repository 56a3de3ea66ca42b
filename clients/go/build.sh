#!/usr/bin/env bash
# Builds the Go example offline with Debian's packages (golang-go, golang-google-grpc-dev,
# golang-google-protobuf-dev, protoc-gen-go, protoc-gen-go-grpc, protobuf-compiler) in GOPATH
# mode: the stubs are generated from ../../protos into build/src/ortserve/api/v1 (import path
# "ortserve/api/v1"), the libraries come from /usr/share/gocode. Output: build/ortserve_example.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
protos="$here/../../protos"
build="$here/build"
pkg="ortserve/api/v1"
files=(tensor model inference_service registry_service)

rm -rf "$build/src"
mkdir -p "$build/src/$pkg"
maps=()
for f in "${files[@]}"; do
  maps+=("--go_opt=M$pkg/$f.proto=$pkg;apiv1" "--go-grpc_opt=M$pkg/$f.proto=$pkg;apiv1")
done
protoc -I "$protos" --go_out="$build/src" --go-grpc_out="$build/src" "${maps[@]}" \
  $(printf "$protos/$pkg/%s.proto " "${files[@]}")

export GO111MODULE=off GOFLAGS= GOPROXY=off
export GOPATH="$build:/usr/share/gocode"
export GOCACHE="${GOCACHE:-$build/cache}"
cd "$here/example"
go build -o "$build/ortserve_example" .
echo "built $build/ortserve_example"
