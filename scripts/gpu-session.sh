#!/usr/bin/env bash
# Runs on the GPU machine (binaries from scripts/gpu-build.sh in gpu-bin/):
# one device call of "The next GPU run" (docs/gpu.md), each step under its
# own time limit so that the call returns within the device's 600 s, every
# log and figure written under $OUT/<step>/.
#
# Usage: scripts/gpu-session.sh 1|2
#   1: every PTX test on the card; W5 (int8, fp8), GEMM, W4 (M 1 and 16),
#      W6 and ATTN beside bench/gpu/torch_quick.py (the W4/W5 torch kernels,
#      no torch.compile); then the variants: KILN_MMA_TILING=medium for W5,
#      KILN_GEMV_DEQUANT=1 for W4, W4 M=1 with --specialize.
#   2: the switches not yet the default on the card (PTX tests, every
#      example, large blocks); W3d with the GEMV tilings; then every
#      workload beside shared/bench/torch_baselines.py (torch.compile).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${OUT:-/tmp/gpu-session}"
mkdir -p "$out"
export KILN="$root/gpu-bin/kiln"
export TEST_THREADS="${TEST_THREADS:-16}"
start=$(date +%s)
step() { # step NAME SECONDS COMMAND... : runs COMMAND with its output in $OUT/NAME/log
    local name="$1" secs="$2"
    shift 2
    mkdir -p "$out/$name"
    echo "== $name (limit ${secs} s, at $(($(date +%s) - start)) s)"
    OUT="$out/$name" timeout "$secs" "$@" > "$out/$name/log" 2>&1
    echo "   exit $? after $(($(date +%s) - start)) s"
    tail -n "${TAIL:-25}" "$out/$name/log"
}
w4_specialized() {
    for dq in 0 1; do
        KILN_GEMV_DEQUANT=$dq "$KILN" bench bench/w4.kiln --device cuda --dim m=1 --specialize \
            --iters 200 --warmup 10 --json || echo "W4 M=1 specialized (dequant $dq) failed"
    done
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
case "${1:-}" in
1)
    step check-ptx 210 scripts/gpu-check.sh ptx
    TORCH=quick KILN_TIMEOUT=60 step bench 170 bench/gpu.sh W5-int8 W5-fp8 GEMM W4-M1 W4-M16 W6 ATTN
    KILN_MMA_TILING=medium TORCH=0 KILN_TIMEOUT=40 step bench-mma-sync 60 bench/gpu.sh W5-int8 W5-fp8 GEMM
    KILN_GEMV_DEQUANT=1 TORCH=0 KILN_TIMEOUT=40 step bench-gemv-dequant 50 bench/gpu.sh W4-M1 W4-M16
    step w4-specialized 40 w4_specialized
    ;;
2)
    KILN_PTX_BRANCH_SELECTS=1 KILN_GEMV_TILING=32,16,stage KILN_GEMV_DEQUANT=1 \
        step check-switches 200 scripts/gpu-check.sh ptx gpu_backend:every_example gpu_backend:large_blocks
    step w3d 60 scripts/gpu-w3d.sh 32,16,stage
    KILN_TIMEOUT=40 HEAVY_ITERS=20 step bench-all 300 bench/gpu.sh
    ;;
*)
    echo "usage: scripts/gpu-session.sh 1|2" >&2
    exit 2
    ;;
esac
echo "done after $(($(date +%s) - start)) s"
