#!/usr/bin/env bash
# Regenerates the gRPC code from proto/ with the venv's grpcio-tools and mypy-protobuf.
#
#     ./generate_proto.sh [OUT]     OUT defaults to engine/api
#
# Paths under proto/ mirror the Python destination (proto/engine/api/x.proto -> engine.api.x_pb2),
# so protoc runs with `-I proto` and the generated imports read `from engine.api import ...`.
# Writes x_pb2.py and x_pb2.pyi (protoc --pyi_out), x_pb2_grpc.py and x_pb2_grpc.pyi (typed
# stubs from mypy-protobuf, which protoc's own output lacks). Hand-written files in OUT, such as
# __init__.py, are left alone. .ci/test regenerates into a temporary folder and fails on drift.
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$root/engine/api}")
bin=${VENV:-$root/.venv}/bin

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cd "$root/proto"
mapfile -t protos < <(find engine/api -name '*.proto' | sort)
"$bin/python" -m grpc_tools.protoc -I . \
  --plugin=protoc-gen-mypy_grpc="$bin/protoc-gen-mypy_grpc" \
  --python_out="$tmp" --pyi_out="$tmp" \
  --grpc_python_out="$tmp" --mypy_grpc_out="$tmp" \
  "${protos[@]}" 2> >(grep -v '^Writing mypy to' >&2)

mkdir -p "$out"
rm -f "$out"/*_pb2.py "$out"/*_pb2.pyi "$out"/*_pb2_grpc.py "$out"/*_pb2_grpc.pyi
cp "$tmp"/engine/api/* "$out"/
