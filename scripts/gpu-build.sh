#!/usr/bin/env bash
# Runs here (no GPU needed): builds the release `kiln` binary and the release
# test binaries that the GPU machine runs, and puts them, stripped, in
# gpu-bin/ (ignored by git) for the device call to carry. See docs/gpu.md.
#
# Usage: scripts/gpu-build.sh [TEST ...]   (default: the GPU test targets)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tests="${*:-gpu_backend ptx cuda_exec onnx quantize}"
out="$root/gpu-bin"
rm -rf "$out"
mkdir -p "$out"
cargo build --release -p kiln --bin kiln
cp target/release/kiln "$out/kiln"
cargo build --release -p kiln-runtime --example cuda_launch_overhead
cp target/release/examples/cuda_launch_overhead "$out/"
cargo build --release -p kiln-run-artifact-example --bin run-artifact
cp target/release/run-artifact "$out/"
args=()
for t in $tests; do args+=(--test "$t"); done
cargo test --release --workspace --no-run --message-format=json "${args[@]}" 2>/dev/null \
    | python3 -c '
import json, sys, shutil
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], sys.argv[1] + "/" + m["target"]["name"])
        print("test binary", m["target"]["name"])
' "$out"
strip "$out"/* 2>/dev/null || true
du -sh "$out"
ls -la "$out"
