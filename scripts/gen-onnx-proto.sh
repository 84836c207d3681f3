#!/usr/bin/env bash
# Regenerates compiler/src/onnx/proto/onnx.rs from the vendored onnx.proto
# with a pure-Rust toolchain (protox + prost-build; no protoc). Pass --check
# to verify that the committed file is current instead of writing it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --manifest-path tools/onnx-proto/Cargo.toml -- "$@"
