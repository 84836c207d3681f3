#!/usr/bin/env bash
# GPU benchmarks W1-W6 (shared/bench/BENCHMARKS.md): `kiln bench --device cuda`
# and PyTorch (shared/bench/torch_baselines.py: eager, torch.compile and the
# card's ceilings) in one invocation on one card. Runs on the GPU machine,
# from the repository root, with binaries built elsewhere (docs/gpu.md).
#
# Usage: bench/gpu.sh [ID ...]     (IDs: W1 W1b W2 W3 W3d W4-M1 W4-M16
#                                   W5-int8 W5-fp8 W6 GEMM ATTN; default all)
# Environment: KILN (the binary; default target/release/kiln), ITERS (timed
# graph replays per workload, default 200; HEAVY_ITERS, default 5, for the
# workloads whose contractions are still generic), KILN_TIMEOUT (seconds per
# workload, default 120), TORCH=0 to skip PyTorch (TORCH=quick: only the
# ceilings, torch.matmul at 4096^3 and causal SDPA, bench/gpu/torch_quick.py),
# TORCH_BASELINES (path of torch_baselines.py), OUT (a folder that receives
# a copy of the report and the raw figures), BENCH_TMP (where the raw
# figures are written as they come; default bench/results/tmp/gpu).
# Writes bench/results/<date>-<card>.md.
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
kiln="${KILN:-$root/target/release/kiln}"
iters="${ITERS:-200}"
tmp="${BENCH_TMP:-$root/bench/results/tmp/gpu}"
mkdir -p "$tmp"
rm -f "$tmp"/kiln-*.json "$tmp"/kiln-*.err "$tmp/gpu_baselines.json"

# id:file:dim:heavy (heavy: the plan still has slow generic contractions,
# so fewer timed replays)
all="W1:w1:m=8192:0 W1b:w1b:m=8192:0 W2:w2:m=8192:1 W3:w3:seq=2048:1 W3d:w3d:batch=1:1 \
W4-M1:w4:m=1:0 W4-M16:w4:m=16:0 W5-int8:w5_int8:m=4096:0 W5-fp8:w5_fp8:m=4096:0 W6:w6:n=64:1 \
GEMM:gemm:m=4096:0 ATTN:attention:seq=2048:0"
want="${*:-}"
for spec in $all; do
    IFS=: read -r id file dim heavy <<< "$spec"
    if [ -n "$want" ] && ! [[ " $want " == *" $id "* ]]; then
        continue
    fi
    echo "kiln $id ($file, $dim)..."
    n="$iters"
    w=10
    if [ "$heavy" = 1 ]; then n="${HEAVY_ITERS:-5}"; w=1; fi
    if ! timeout "${KILN_TIMEOUT:-120}" "$kiln" bench "$root/bench/$file.kiln" --device cuda \
        --dim "$dim" --iters "$n" --warmup "$w" --json > "$tmp/kiln-$id.json" \
        2> "$tmp/kiln-$id.err"; then
        echo "  failed: $(tail -1 "$tmp/kiln-$id.err")"
        rm -f "$tmp/kiln-$id.json"
    else
        cat "$tmp/kiln-$id.json"
    fi
done

if [ "${TORCH:-1}" = quick ]; then
    echo "PyTorch (bench/gpu/torch_quick.py)..."
    OUT="$tmp" python3 "$root/bench/gpu/torch_quick.py" || echo "torch_quick.py failed"
elif [ "${TORCH:-1}" != 0 ]; then
    tb="${TORCH_BASELINES:-}"
    for c in "$root/shared/bench/torch_baselines.py" "$root/../shared/bench/torch_baselines.py"; do
        if [ -z "$tb" ] && [ -f "$c" ]; then tb="$c"; fi
    done
    if [ -n "$tb" ]; then
        echo "PyTorch ($tb)..."
        OUT="$tmp" python3 "$tb" || echo "torch_baselines.py failed"
    else
        echo "torch_baselines.py not found: set TORCH_BASELINES"
    fi
fi

card="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
python3 "$root/bench/gpu/report.py" --tmp "$tmp" --card "${card:-unknown}" \
    --commit "${KILN_COMMIT:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)}" \
    --out-dir "$root/bench/results" --iters "$iters"
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp "$tmp"/*.json "$OUT"/ 2>/dev/null || true
    cp "$root"/bench/results/"$(date -u +%F)"-*.md "$OUT"/ 2>/dev/null || true
fi
