#!/usr/bin/env bash
# Runs on the GPU machine (binaries from scripts/gpu-build.sh in gpu-bin/):
# one device call of "The next GPU run" (docs/gpu.md), each step under its
# own time limit so that the call returns within the device's 600 s, every
# log and figure written under $OUT/<step>/.
#
# Usage: scripts/gpu-session.sh pieceend|balance|chunks|1|2|bars|exp|w1|issue6|issue7|w6|w4ncu|w4split|next|tuned|epilogue|diag|staged|last|short|attn|ws|heavy|lanes|w3fast|logistic|loads8|grouped|walk|counters|final|tests
#   1: every PTX test on the card; W5 (int8, fp8), GEMM, W4 (M 1 and 16),
#      W6 and ATTN beside bench/gpu/torch_quick.py (the W4/W5 torch kernels,
#      no torch.compile); then the variants: KILN_MMA_TILING=medium for W5;
#      W4 at static m = 1 and 16 (--specialize) through the fragment-order
#      tensor-core kernel and through the dequantizing GEMV.
#   w1: W1's row tuning variants and W1b; W4 and W5 beside
#      bench/gpu/torch_quick.py (int8 with a column-major B); W1 and W1b
#      beside torch_baselines.py.
#   issue6: the w1 variants, W1 and W1b beside torch_baselines.py, the
#      launch overhead and every GPU test binary (issue 6's bars in one call).
#   issue7: W3d (split decode attention over the cache, its concatenations
#      fused) with every kernel's ncu time; W3d, W3, ATTN and W2 beside
#      torch_baselines.py; every GPU test binary on the card.
#   w6: W6 (the fused inverted bottleneck) and W4 beside
#      torch_baselines.py, the block kernel under ncu, its PTX test and the
#      int4 kernels' on the card.
#   w4ncu: W4 at m = 1 and 16 beside torch_quick.py, then ncu's warp
#      states and per-instruction stall samples of its int4 kernel (SASS
#      as csv), and the int4 kernels' PTX tests on the card.
#   w4split: W4 at m = 1 and 16 with the int4 kernel's k dealt to 1, 2
#      and 4 blocks per tile (KILN_QMMA_SPLITS), W4 beside torch_quick.py,
#      the PTX and quantize tests on the card.
#   next: the ptx, cuda_exec and gpu_backend tests on the card (build with
#      scripts/gpu-build.sh ptx cuda_exec gpu_backend); the skinny GEMM with split-K
#      off, auto, 4, 8 and 16 beside torch.matmul; GEMM, W2 and W3 with and
#      without tensor copies (KILN_MMA_TMA=1).
#   tuned: W1, W2, GEMM, W3 and W6 compiled with --autotune and
#      benchmarked from their artifacts beside the default; every workload
#      beside torch_baselines.py.
#   epilogue: the ptx and gpu_backend tests on the card; W2, W3, GEMM
#      and W5's int8 with their default tilings and with narrow-wg2; W3's
#      and W2's kernels under ncu; the contraction workloads beside
#      torch_baselines.py.
#   attn: the warpgroup attention's tests on the card; ATTN and W3 with
#      KILN_ATTN_WGMMA 0, 1 and 128; W2 with the grouped tile order;
#      COUNTERS=1 adds `counters`.
#   ws: the warp-specialized and tensor-core contractions' tests on the card; GEMM, W2
#      and W3 with KILN_MMA_WS 0 and 1 (kiln bench and ncu per kernel);
#      ATTN, W2, W3 and GEMM beside torch_baselines.py with it.
#   heavy: the tensor-core and heavy-epilogue tests on the card; W2 and
#      W3 with KILN_MMA_HEAVY 1/0 and KILN_MMA_WS 0/1; W3's and W2's
#      kernels under ncu; ATTN, W2, W3 and GEMM beside torch_baselines.py.
#   lanes: the tensor-core, heavy-epilogue, W8A8 and weight-only tests and
#      every example on the card; W3's and W2's kernels under ncu; a W8A8
#      block and a W8A16 linear at prefill sizes; every workload beside
#      torch_baselines.py.
#   w3fast: every example and the tensor-core tests on the card; W3's
#      and W2's kernels under ncu; W3 with KILN_MMA_HEAVY 1 and 0 (kiln
#      bench, ncu per kernel); W3, W3d, W2, GEMM and ATTN beside
#      torch_baselines.py.
#   logistic: the tensor-core, heavy-epilogue and large-block tests on
#      the card; W3 with KILN_MMA_GROUP=8, KILN_MMA_TMA=1, KILN_MMA_WS=1;
#      W3's and W2's kernels under ncu; every workload beside
#      torch_baselines.py.
#   loads8: W3 and W3d on the card against the interpreter; W3, W2 and
#      GEMM with KILN_MMA_GROUP 0 and 8; W3's and W2's kernels under ncu;
#      every workload beside torch_baselines.py.
#   grouped: the grouped-order and large-block tests on the card; every
#      workload beside torch_baselines.py; W3's and W2's kernels under ncu.
#   walk: the walk-order test and W3 on the card; W3 with KILN_PTX_WALK
#      0 and 1; W3's and W2's kernels under ncu with it; every workload
#      beside torch_baselines.py.
#   counters: ncu's sections and stall reasons of W3's and GEMM's
#      tensor-core contractions, SASS stall samples of W3's gate projection
#      and W2's first layer (scripts/ncu_details.py).
#   2: the switches not yet the default on the card (PTX tests, every
#      example, large blocks); W3d with the GEMV tilings; then every
#      workload beside shared/bench/torch_baselines.py (torch.compile).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${OUT:-/tmp/gpu-session}"
mkdir -p "$out"
export KILN="$root/gpu-bin/kiln"
# Every compilation fresh: variants below differ by environment switches.
export KILN_CACHE=off
export TEST_THREADS="${TEST_THREADS:-16}"
start=$(date +%s)
step() { # step NAME SECONDS COMMAND... : runs COMMAND with its output in $OUT/NAME/log
    local name="$1" secs="$2"
    shift 2
    mkdir -p "$out/$name"
    echo "== $name (limit ${secs} s, at $(($(date +%s) - start)) s)"
    if declare -F "$1" > /dev/null; then # a function of this script: run it in a child shell
        set -- bash -c "$(declare -f "$1"); $1"
    fi
    OUT="$out/$name" timeout "$secs" "$@" > "$out/$name/log" 2>&1
    echo "   exit $? after $(($(date +%s) - start)) s"
    tail -n "${TAIL:-25}" "$out/$name/log"
}
w4_variants() {
    # m static (--specialize): the fragment-order tensor-core kernel (the
    # default), and the dequantizing GEMV on the weight as stored.
    for m in 1 16; do
        echo "W4 m=$m specialized, fragments"
        "$KILN" bench bench/w4.kiln --device cuda --dim m=$m --specialize \
            --iters 200 --warmup 10 --json || echo failed
        echo "W4 m=$m specialized, dequantizing GEMV (KILN_INT4_FRAGMENTS=0 KILN_GEMV_DEQUANT=1)"
        KILN_INT4_FRAGMENTS=0 KILN_GEMV_DEQUANT=1 "$KILN" bench bench/w4.kiln --device cuda \
            --dim m=$m --specialize --iters 200 --warmup 10 --json || echo failed
    done
}
row_variants() {
    for v in "" 4 "0,reload" "4,reload" "3,reload"; do
        for w in w1 w1b; do
            echo "$w KILN_ROW_TUNING=$v"
            KILN_ROW_TUNING="$v" "$KILN" bench "bench/$w.kiln" --device cuda --dim m=8192 \
                --iters 200 --warmup 10 --json || echo failed
        done
    done
    for t in "" narrow-wg; do
        echo "w6 KILN_MMA_TILING=$t"
        KILN_MMA_TILING="$t" "$KILN" bench bench/w6.kiln --device cuda --dim n=64 \
            --iters 50 --warmup 3 --json || echo failed
    done
}
w1_variants() {
    # W1's row kernel with the row tuning variants (weights decoded before
    # the row loop at 128 registers; 3 blocks per multiprocessor at 80 with
    # spills; weights reloaded per row at 87), and W1b.
    # W1_VARIANTS, W1B_VARIANTS: KILN_ROW_TUNING values ("default": unset).
    for v in ${W1_VARIANTS:-default 3 2,reload 3,reload}; do
        [ "$v" = default ] && v=""
        echo "w1 KILN_ROW_TUNING=$v"
        KILN_ROW_TUNING="$v" "$KILN" bench bench/w1.kiln --device cuda --dim m=8192 \
            --iters 200 --warmup 10 --json || echo failed
    done
    for v in ${W1B_VARIANTS:-default}; do
        [ "$v" = default ] && v=""
        echo "w1b KILN_ROW_TUNING=$v"
        KILN_ROW_TUNING="$v" "$KILN" bench bench/w1b.kiln --device cuda --dim m=8192 \
            --iters 200 --warmup 10 --json || echo failed
    done
}
w1_ncu() {
    # Where W1's row kernel spends its time: ncu's throughput, warp-state,
    # scheduler and occupancy sections.
    ncu --graph-profiling node -k regex:row -c 1 --section SpeedOfLight --section WarpStateStats \
        --section SchedulerStats --section Occupancy --section LaunchStats \
        "$KILN" bench bench/w1.kiln --device cuda --dim m=8192 --iters 1 --warmup 0 2>&1 |
        grep -vE "^==PROF==|^\s*$|----" | head -120
}
w4_stalls() {
    # Why the fragment kernel waits: ncu's warp-state, occupancy and memory
    # sections for W4's qmma kernel at m = 1.
    ncu --graph-profiling node -k regex:qmma -c 1 --section SpeedOfLight --section WarpStateStats \
        --section Occupancy --section MemoryWorkloadAnalysis --section LaunchStats \
        "$KILN" bench bench/w4.kiln --device cuda --dim m=1 --specialize --iters 1 --warmup 0 2>&1 |
        grep -vE "^==PROF==|^\s*$|----" | head -120
}
w4_quick() {
    # W4 beside torch_quick.py: the table's W4 rows and the ceilings.
    OUT='' BENCH_TMP=/tmp/w4-quick TORCH=quick KILN_TIMEOUT=60 bench/gpu.sh W4-M1 W4-M16 2>&1 |
        grep -E "W4|copy|Ceilings"
}
w6_bench() {
    # W6 (the fused inverted-bottleneck kernel) and W4 beside
    # torch_baselines.py (torch.compile's W6, the bf16 linear and tinygemm):
    # the table's rows and the ceilings.
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$PWD/gpu-bin/torch_baselines.py"
    OUT='' BENCH_TMP=/tmp/w6-bench KILN_TIMEOUT=60 bench/gpu.sh W6 W4-M1 W4-M16 2>&1 |
        grep -E "^\| (W|id|-)|copy|Ceilings|W4 M|failed"
}
w6_ncu() {
    # The block kernel under ncu: throughput, warp states, instruction mix,
    # and its SASS with stall samples (sass-w6.csv).
    ncu --graph-profiling node -k regex:block -c 1 --section SpeedOfLight \
        --section WarpStateStats --section InstructionStats --section SourceCounters \
        --section Occupancy --section LaunchStats -o "$OUT/w6" -f \
        "$KILN" bench bench/w6.kiln --device cuda --dim n=64 --iters 1 --warmup 0 > /dev/null 2>&1
    ncu -i "$OUT/w6.ncu-rep" --page details 2>&1 | grep -vE "^\s*$|----" | head -150
    ncu -i "$OUT/w6.ncu-rep" --page source --print-source sass --csv > "$OUT/sass-w6.csv" 2>&1
    rm -f "$OUT/w6.ncu-rep"
}
w4_splits() {
    for m in 1 16; do
        for s in 1 2 4; do
            echo "W4 m=$m KILN_QMMA_SPLITS=$s"
            KILN_QMMA_SPLITS=$s "$KILN" bench bench/w4.kiln --device cuda --dim m=$m \
                --iters 200 --warmup 10 --json || echo failed
        done
    done
}
w4_sass() {
    # Where W4's fragment kernel spends its cycles: ncu's warp states and
    # instruction mix, and its SASS with the stall samples per instruction
    # (sass-m*.csv), at m = 1 and 16.
    for m in ${W4_ROWS:-1 16}; do
        echo "## W4 m=$m"
        ncu --graph-profiling node -k regex:qmma -c 1 --section SpeedOfLight \
            --section WarpStateStats --section InstructionStats --section SourceCounters \
            --section Occupancy --section LaunchStats -o "$OUT/w4-m$m" -f \
            "$KILN" bench bench/w4.kiln --device cuda --dim m=$m --iters 1 --warmup 0 \
            > /dev/null 2>&1
        ncu -i "$OUT/w4-m$m.ncu-rep" --page details 2>&1 | grep -vE "^\s*$|----" | head -150
        ncu -i "$OUT/w4-m$m.ncu-rep" --page source --print-source sass --csv \
            > "$OUT/sass-m$m.csv" 2>&1
        rm -f "$OUT/w4-m$m.ncu-rep"
    done
}
kernel_times() {
    # Device time of each kernel of one replay (ncu), for W4 and W6.
    local metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size,launch__registers_per_thread
    run_ncu() {
        echo "## $*"
        ncu --graph-profiling node --metrics "$metrics" "$KILN" bench "$@" --device cuda \
            --iters 1 --warmup 0 2>&1 | grep -E "^  [a-z_]+_[0-9a-f]{16}|gpu__time|dram__|sm__thr|launch__"
    }
    run_ncu bench/w4.kiln --dim m=16
    run_ncu bench/w4.kiln --dim m=1 --specialize
    KILN_INT4_FRAGMENTS=0 KILN_GEMV_DEQUANT=1 run_ncu bench/w4.kiln --dim m=1 --specialize
    run_ncu bench/w6.kiln --dim n=64
}
splitk() {
    # The skinny GEMM (bench/gemm_skinny.kiln, 256 x 8192 x 1024, 8 tiles)
    # with split-K off (1), auto (the default) and fixed, then torch.matmul.
    for s in 1 auto 4 8 16; do
        echo "gemm_skinny KILN_MMA_SPLITS=$s"
        KILN_MMA_SPLITS="$s" "$KILN" bench bench/gemm_skinny.kiln --device cuda --dim m=256 \
            --specialize --iters 200 --warmup 10 --json || echo failed
    done
    python3 - <<'PY'
import torch
a = torch.randn(256, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 1024, device="cuda", dtype=torch.bfloat16)
ts = []
for i in range(60):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); a @ b; e.record(); torch.cuda.synchronize()
    if i >= 10:
        ts.append(s.elapsed_time(e))
ts.sort()
print(f"torch.matmul 256x8192x1024 bf16: {ts[len(ts) // 2]:.4f} ms (median of 50)")
PY
}
tma_variants() {
    # Tensor copies (KILN_MMA_TMA=1) against the threads' cp.async on the
    # warpgroup contractions: GEMM, W2, W3 and W5's fp8 (not taken: 8-bit).
    local spec id file dim v
    for spec in GEMM:gemm:m=4096 W2:w2:m=8192 W3:w3:seq=2048; do
        IFS=: read -r id file dim <<< "$spec"
        for v in 0 1; do
            echo "$id KILN_MMA_TMA=$v"
            KILN_MMA_TMA=$v "$KILN" bench "bench/$file.kiln" --device cuda --dim "$dim" \
                --iters 50 --warmup 5 --json || echo failed
        done
    done
}
epilogue_variants() {
    # The contractions whose epilogues read memory (W2's bias, W3's gate
    # and residuals, W5's scales) with their default tilings and with
    # narrow-wg2 (two blocks per multiprocessor) everywhere.
    local spec id file dim t
    for spec in W2:w2:m=8192 W3:w3:seq=2048 GEMM:gemm:m=4096 W5-int8:w5_int8:m=4096; do
        IFS=: read -r id file dim <<< "$spec"
        for t in "" narrow-wg2; do
            echo "$id KILN_MMA_TILING=$t"
            KILN_MMA_TILING="$t" "$KILN" bench "bench/$file.kiln" --device cuda --dim "$dim" \
                --iters 50 --warmup 5 --json || echo failed
        done
    done
}
w3_kernel_times() {
    # Device time of each of W3's and W2's kernels in one replay (ncu).
    local metrics=gpu__time_duration.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size,launch__registers_per_thread
    for spec in w3:seq=2048 w2:m=8192; do
        IFS=: read -r file dim <<< "$spec"
        echo "## $file"
        ncu --graph-profiling node --metrics "$metrics" "$KILN" bench "bench/$file.kiln" \
            --device cuda --dim "$dim" --iters 1 --warmup 0 2>&1 |
            grep -E "^  [a-z_]+_[0-9a-f]{16}|gpu__time|dram__|sm__thr|launch__"
    done
}
raster_variants() {
    # The grouped tile order (KILN_MMA_GROUP: groups of G row tiles, row
    # tile fastest) against the default (column tile fastest).
    local spec id file dim g
    for spec in ${RASTER_SPECS:-W3:w3:seq=2048 W2:w2:m=8192 GEMM:gemm:m=4096}; do
        IFS=: read -r id file dim <<< "$spec"
        for g in ${RASTER_GROUPS:-0 4 8 16}; do
            echo "$id KILN_MMA_GROUP=$g"
            KILN_MMA_GROUP=$g "$KILN" bench "bench/$file.kiln" --device cuda --dim "$dim" \
                --iters 50 --warmup 5 --json || echo failed
        done
    done
}
attn_variants() {
    # Fused attention with mma.sync (the default) and with warp groups
    # (KILN_ATTN_WGMMA=1: 64 keys a step, 128: 128), alone (ATTN) and in
    # W3; W2 with the grouped tile order.
    local spec id file dim v
    for spec in ATTN:attention:seq=2048 W3:w3:seq=2048; do
        IFS=: read -r id file dim <<< "$spec"
        for v in 0 1 128; do
            echo "$id KILN_ATTN_WGMMA=$v"
            KILN_ATTN_WGMMA=$v "$KILN" bench "bench/$file.kiln" --device cuda --dim "$dim" \
                --iters 50 --warmup 5 --json || echo failed
        done
    done
    for g in 0 8; do
        echo "W2 KILN_MMA_GROUP=$g"
        KILN_MMA_GROUP=$g "$KILN" bench bench/w2.kiln --device cuda --dim m=8192 \
            --iters 50 --warmup 5 --json || echo failed
    done
}
ws_variants() {
    # The tensor-core contractions with and without a copying warp
    # (KILN_MMA_WS): GEMM, W2 and W3.
    local spec id file dim v
    for spec in GEMM:gemm:m=4096 W2:w2:m=8192 W3:w3:seq=2048; do
        IFS=: read -r id file dim <<< "$spec"
        for v in 0 1; do
            echo "$id KILN_MMA_WS=$v"
            KILN_MMA_WS=$v "$KILN" bench "bench/$file.kiln" --device cuda --dim "$dim" \
                --iters 50 --warmup 5 --json || echo failed
        done
    done
}
heavy_variants() {
    # W2 and W3 with the heavy-epilogue tiling rule (the default) and
    # without it (KILN_MMA_HEAVY=0), each also with the copying warp.
    local spec id file dim h w
    for spec in W2:w2:m=8192 W3:w3:seq=2048; do
        IFS=: read -r id file dim <<< "$spec"
        for h in 1 0; do
            for w in 0 1; do
                echo "$id KILN_MMA_HEAVY=$h KILN_MMA_WS=$w"
                KILN_MMA_HEAVY=$h KILN_MMA_WS=$w "$KILN" bench "bench/$file.kiln" --device cuda \
                    --dim "$dim" --iters 50 --warmup 5 --json || echo failed
            done
        done
    done
}
ws_kernels() {
    # Each kernel of one replay of W3 and W2 without and with the copying
    # warp: its name, device time (us) and grid (ncu, csv).
    local spec file dim v
    for spec in w3:seq=2048 w2:m=8192; do
        IFS=: read -r file dim <<< "$spec"
        for v in 0 1; do
            echo "## $file KILN_MMA_WS=$v"
            KILN_MMA_WS=$v ncu --graph-profiling node --csv --print-units base \
                --metrics gpu__time_duration.sum,launch__grid_size "$KILN" bench \
                "bench/$file.kiln" --device cuda --dim "$dim" --iters 1 --warmup 0 2>/dev/null |
                python3 scripts/ncu_kernel_table.py
        done
    done
}
quantized_models() {
    # A W8A8 block (8-bit tensor-core projections) and a W8A16 linear (its
    # weight dequantized at bind time) at prefill sizes.
    printf 'model w8a16 {\n    input x: bf16[m, 4096]\n    weight w: i8[4096, 4096] per_channel scale bf16 to bf16\n    output y = x @ w\n}\n' \
        > /tmp/w8a16.kiln
    "$KILN" bench examples/llama_w8a8.kiln --device cuda --dim seq=2048 --random-weights 1 \
        --iters 50 --warmup 5 --json || echo failed
    "$KILN" bench /tmp/w8a16.kiln --device cuda --dim m=2048 --random-weights 1 \
        --iters 50 --warmup 5 --json || echo failed
}
w3_heavy_variants() {
    # W3 with the gated (SwiGLU) product on two-block 128x128 tiles (the
    # default) and on the default tiles (KILN_MMA_HEAVY=0): kiln bench,
    # then each kernel under ncu.
    local h
    for h in 1 0; do
        echo "## w3 KILN_MMA_HEAVY=$h"
        KILN_MMA_HEAVY=$h "$KILN" bench bench/w3.kiln --device cuda --dim seq=2048 --json || echo failed
    done
    echo "## w3 kernels, KILN_MMA_HEAVY=0"
    KILN_MMA_HEAVY=0 ncu --graph-profiling node --csv --print-units base \
        --metrics gpu__time_duration.sum,launch__grid_size "$KILN" bench \
        bench/w3.kiln --device cuda --dim seq=2048 --iters 1 --warmup 0 2>/dev/null |
        python3 scripts/ncu_kernel_table.py
}
w3_switch_variants() {
    # W3 as compiled by default, with the grouped tile order, with tensor
    # copies and warp-specialized: kiln bench medians of 50 each.
    local v
    for v in "" KILN_MMA_GROUP=8 KILN_MMA_TMA=1 KILN_MMA_WS=1; do
        echo "## w3 ${v:-default}"
        env $v "$KILN" bench bench/w3.kiln --device cuda --dim seq=2048 --json || echo failed
    done
}
group_variants() {
    # W3, W2 and GEMM in the default tile order and in groups of 8 row
    # tiles (KILN_MMA_GROUP=8): kiln bench medians of 50 each.
    local spec file dim g
    for spec in w3:seq=2048 w2:m=8192 gemm:m=4096; do
        IFS=: read -r file dim <<< "$spec"
        for g in 0 8; do
            echo "## $file KILN_MMA_GROUP=$g"
            KILN_MMA_GROUP=$g "$KILN" bench "bench/$file.kiln" --device cuda --dim "$dim" --json ||
                echo failed
        done
    done
}
kernel_table_default() {
    # Each kernel of one replay of W3 and W2 as compiled by default.
    local spec file dim
    for spec in w3:seq=2048 w2:m=8192; do
        IFS=: read -r file dim <<< "$spec"
        echo "## $file"
        ncu --graph-profiling node --csv --print-units base \
            --metrics gpu__time_duration.sum,launch__grid_size "$KILN" bench \
            "bench/$file.kiln" --device cuda --dim "$dim" --iters 1 --warmup 0 2>/dev/null |
            python3 scripts/ncu_kernel_table.py
    done
}
kernel_table() {
    # Each kernel of one replay of W3 (default, then narrow-wg2 tiles) and
    # W2: its name, device time (us) and grid (ncu, csv).
    local spec file dim t
    for spec in w3:seq=2048 w2:m=8192; do
        IFS=: read -r file dim <<< "$spec"
        for t in "" narrow-wg2; do
            echo "## $file KILN_MMA_TILING=$t"
            KILN_MMA_TILING="$t" ncu --graph-profiling node --csv --print-units base \
                --metrics gpu__time_duration.sum,launch__grid_size "$KILN" bench \
                "bench/$file.kiln" --device cuda --dim "$dim" --iters 1 --warmup 0 2>/dev/null |
                python3 scripts/ncu_kernel_table.py
        done
    done
}
mma_counters() {
    # ncu's sections (speed of light, memory, warp states, scheduler) and
    # the stall reasons per issued instruction for the tensor-core
    # contractions of W3 and of the 4096^3 GEMM; raw csv under $OUT.
    local spec file dim count
    for spec in w3:seq=2048:5 gemm:m=4096:1; do
        IFS=: read -r file dim count <<< "$spec"
        echo "## $file sections"
        ncu --graph-profiling node --csv --page details -k regex:mma_ -c "$count" \
            --section SpeedOfLight --section MemoryWorkloadAnalysis \
            --section WarpStateStats --section SchedulerStats --section LaunchStats \
            "$KILN" bench "bench/$file.kiln" --device cuda --dim "$dim" --iters 1 --warmup 0 \
            > "$OUT/$file-sections.csv" 2>&1
        python3 scripts/ncu_details.py duration throughput "hit rate" "mem busy" \
            "max bandwidth" "cycles per issued" "issue slot" "eligible" "registers" \
            < "$OUT/$file-sections.csv"
        echo "## $file stalls"
        ncu --graph-profiling node --csv -k regex:mma_ -c "$count" \
            --metrics "regex:^smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$" \
            "$KILN" bench "bench/$file.kiln" --device cuda --dim "$dim" --iters 1 --warmup 0 \
            > "$OUT/$file-stalls.csv" 2>&1
        python3 scripts/ncu_details.py < "$OUT/$file-stalls.csv" | awk '$2 + 0 >= 0.05 || /^##/'
        tail -3 "$OUT/$file-stalls.csv"
        rm -f "$OUT/$file-sections.csv" "$OUT/$file-stalls.csv"
    done
    # The SASS with stall samples per instruction of W3's gate projection
    # (plain epilogue, k = 2048) and W2's first layer (bias + GELU, k = 1024).
    local spec2 name
    for spec2 in w3:seq=2048:mma_bf16_d797d1c82d7dbe82 w2:m=8192:mma_bf16_7805c1fbc8421e2e; do
        IFS=: read -r file dim name <<< "$spec2"
        ncu --graph-profiling node -k "$name" -c 1 --section SourceCounters \
            --section WarpStateStats -o "$OUT/$file-src" -f \
            "$KILN" bench "bench/$file.kiln" --device cuda --dim "$dim" --iters 1 --warmup 0 \
            > /dev/null 2>&1
        ncu -i "$OUT/$file-src.ncu-rep" --page source --print-source sass --csv \
            > "$OUT/sass-$file.csv" 2>&1
        rm -f "$OUT/$file-src.ncu-rep"
        echo "## $file sass: $(wc -l < "$OUT/sass-$file.csv") lines"
    done
}
autotuned() {
    # Each workload compiled with --autotune (candidates timed on this
    # card), then benchmarked from its artifact; the default for comparison.
    local spec id file dim
    for spec in W1:w1:m=8192 W2:w2:m=8192 GEMM:gemm:m=4096 W3:w3:seq=2048 W6:w6:n=64; do
        IFS=: read -r id file dim <<< "$spec"
        echo "## $id"
        "$KILN" compile "bench/$file.kiln" --target sm_90 --dim "$dim" --random-weights 1 \
            -o "/tmp/$file-tuned.kart" --autotune || { echo "autotune failed"; continue; }
        "$KILN" bench "/tmp/$file-tuned.kart" --device cuda --dim "$dim" --iters 50 --warmup 5 \
            --json || echo failed
        "$KILN" bench "bench/$file.kiln" --device cuda --dim "$dim" --random-weights 1 \
            --iters 50 --warmup 5 --json || echo failed
    done
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
case "${1:-}" in
1)
    step check-ptx 210 scripts/gpu-check.sh ptx
    TORCH=quick KILN_TIMEOUT=60 step bench 170 bench/gpu.sh W5-int8 W5-fp8 GEMM W4-M1 W4-M16 W6 ATTN
    KILN_MMA_TILING=medium TORCH=0 KILN_TIMEOUT=40 step bench-mma-sync 60 bench/gpu.sh W5-int8 W5-fp8 GEMM
    TAIL=40 step w4-variants 80 w4_variants
    ;;
2)
    KILN_PTX_BRANCH_SELECTS=1 KILN_GEMV_TILING=32,16,stage KILN_GEMV_DEQUANT=1 \
        step check-switches 170 scripts/gpu-check.sh ptx gpu_backend:every_example gpu_backend:large_blocks
    TAIL=60 step ncu 60 kernel_times
    step w3d 45 scripts/gpu-w3d.sh 32,16,stage
    # shared/bench/torch_baselines.py, carried in gpu-bin/ where the
    # device's checkout has no shared/ beside it.
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench-all/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 step bench-all 290 bench/gpu.sh
    ;;
bars)
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench-all/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 step bench-all 330 bench/gpu.sh
    step launch 30 gpu-bin/cuda_launch_overhead 2000
    TAIL=40 step w4-variants 80 w4_variants
    TAIL=60 step ncu 60 kernel_times
    ;;
exp)
    TAIL=30 step variants 80 row_variants
    TAIL=80 step ncu-w4 40 w4_stalls
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench-all/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 step bench-all 140 bench/gpu.sh
    step check 300 scripts/gpu-check.sh ptx cuda_exec gpu_backend:every_example
    ;;
w1)
    TAIL=30 step w1-variants 60 w1_variants
    [ -n "${W1_ONLY:-}" ] && { TAIL=100 step w1-ncu 60 w1_ncu; exit 0; }
    TORCH=quick KILN_TIMEOUT=60 step bench-quick 150 bench/gpu.sh W5-int8 W5-fp8 W4-M1 W4-M16
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench-w1/raw" KILN_TIMEOUT=40 step bench-w1 150 bench/gpu.sh W1 W1b
    ;;
issue6)
    TAIL=30 step w1-variants 60 w1_variants
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench-w1/raw" KILN_TIMEOUT=40 step bench-w1 150 bench/gpu.sh W1 W1b W4-M1 W4-M16
    step launch 30 gpu-bin/cuda_launch_overhead 2000
    step check 330 scripts/gpu-check.sh ptx cuda_exec gpu_backend quantize onnx
    ;;
issue7)
    step w3d 60 scripts/gpu-w3d.sh
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 step bench 200 bench/gpu.sh W3d W3 ATTN W2
    step check 420 scripts/gpu-check.sh ptx cuda_exec gpu_backend quantize onnx
    ;;
w6)
    TAIL=30 step bench 150 w6_bench
    TAIL=60 step w6-ncu 90 w6_ncu
    step check 200 scripts/gpu-check.sh ptx:fused_inverted ptx:dequantizing
    ;;
w4ncu)
    step bench-quick 120 w4_quick
    TAIL=300 step w4-sass 120 w4_sass
    step check 150 scripts/gpu-check.sh ptx:dequantizing
    ;;
w4split)
    TAIL=40 step w4-splits 90 w4_splits
    TORCH=quick KILN_TIMEOUT=60 step bench-quick 120 bench/gpu.sh W4-M1 W4-M16
    step check 300 scripts/gpu-check.sh ptx quantize
    ;;
balance)
    # The int4 kernel's balanced grid (KILN_QMMA_SPLITS=auto): its PTX
    # test (the balanced cases on the card against the interpreter) and
    # every example on the card with it; W4 at m = 1 and 16 with 1, 2, 3
    # and auto; W4's kernel under ncu with 1 and auto; every workload
    # beside torch_baselines.py with it.
    KILN_QMMA_SPLITS=auto TEST_THREADS=16 TAIL=20 step check 260 scripts/gpu-check.sh \
        ptx:dequantizing_tensor_core_contractions gpu_backend:every_example ${BALANCE_EXTRA:-}
    TAIL=40 step w4splits 60 bash -c 'for s in 1 2 3 auto; do for m in 1 16; do
        echo "## W4 m=$m KILN_QMMA_SPLITS=$s"; KILN_QMMA_SPLITS=$s "$KILN" bench bench/w4.kiln \
        --device cuda --dim m=$m --iters 200 --json; done; done'
    TAIL=40 step w4ncu 60 bash -c 'for s in 1 auto; do echo "## W4 m=1 KILN_QMMA_SPLITS=$s";
        KILN_QMMA_SPLITS=$s ncu --graph-profiling node --csv --print-units base --metrics \
        gpu__time_duration.sum,launch__grid_size,sm__cycles_active.avg,sm__cycles_active.max,sm__cycles_elapsed.max \
        "$KILN" bench bench/w4.kiln --device cuda --dim m=1 --iters 1 --warmup 0 2>/dev/null |
        python3 -c "import csv,sys
for r in csv.reader(l for l in sys.stdin if not l.startswith(\"==\")):
    print(r[4][:32], r[-3], r[-1]) if len(r) > 5 else None"; done'
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    KILN_QMMA_SPLITS=auto BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 TAIL=30 \
        step bench 150 bench/gpu.sh
    ;;
pieceend)
    # The int4 kernel's piece end with its scales' row computed once
    # (gpu-bin/kiln) against the build before it (gpu-bin/kiln-before,
    # when carried): its PTX test and every example on the card; W4 at m
    # = 1 and 16 with each binary, three rounds; every workload beside
    # torch_baselines.py.
    TEST_THREADS=16 TAIL=20 step check 200 scripts/gpu-check.sh \
        ptx:dequantizing_tensor_core_contractions gpu_backend:every_example ${PIECE_EXTRA:-}
    TAIL=60 step w4 90 bash -c 'for r in 1 2 3; do for b in kiln-before kiln; do
        [ -x gpu-bin/$b ] || continue; for m in 1 16; do echo "## W4 m=$m $b round $r";
        KILN_QMMA_SPLITS=auto gpu-bin/$b bench bench/w4.kiln --device cuda --dim m=$m \
        --iters 200 --json; done; done; done'
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 TAIL=30 step bench 150 bench/gpu.sh
    ;;
final)
    step check 400 scripts/gpu-check.sh gpu_backend quantize onnx
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench-all/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 step bench-all 150 bench/gpu.sh
    ;;
next)
    # This session's work (2026-12-05 night): every GPU test (the masked
    # attention, split-K and the half-precision implicit GEMMs among them),
    # split-K on the skinny GEMM, the autotuned workloads, then every
    # workload beside torch_baselines.py.
    # split-K on the skinny GEMM (two calls: each must end within 600 s).
    # (the test binaries this session changed: with quantize and onnx the
    # carried binaries pass the 64 MiB a call takes)
    step check 330 scripts/gpu-check.sh ptx cuda_exec gpu_backend
    TAIL=40 step splitk 60 splitk
    TAIL=40 step tma 90 tma_variants
    ;;
tuned)
    # The autotuned workloads, then every workload beside torch_baselines.py.
    TAIL=80 step autotune 240 autotuned
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench-all/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 step bench-all 150 bench/gpu.sh
    ;;
epilogue)
    # Epilogues that read memory, staged in shared memory (2026-12-06):
    # the tensor-core tests on the card, W2/W3/GEMM/W5-int8 with and
    # without narrow-wg2, W3's and W2's kernels under ncu, then the
    # contraction workloads beside torch_baselines.py.
    step check 200 scripts/gpu-check.sh ptx gpu_backend
    TAIL=40 step variants 100 epilogue_variants
    TAIL=80 step ncu 80 w3_kernel_times
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 step bench 150 bench/gpu.sh W2 W3 GEMM ATTN W5-int8 W3d
    ;;
staged)
    # The staged epilogues' second form (16 loads in flight, rcp for 1/d
    # at 16-bit outputs): the ptx and gpu_backend tests on the card, the
    # grouped tile order against the default, W3's and W2's kernels under
    # ncu, the contraction workloads beside
    # torch_baselines.py.
    step check 220 scripts/gpu-check.sh ptx gpu_backend
    TAIL=40 step raster 100 raster_variants
    TAIL=60 step kernels 100 kernel_table
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 step bench 150 bench/gpu.sh W2 W3 GEMM ATTN W5-int8 W3d
    ;;
last)
    # The session's last call (little device time left): the PTX tests on
    # the card, W3 and GEMM with the grouped tile order (8) against the
    # default, then W2, W3, GEMM and ATTN beside torch_baselines.py.
    step check 150 scripts/gpu-check.sh ptx
    RASTER_SPECS="W3:w3:seq=2048 GEMM:gemm:m=4096" RASTER_GROUPS="0 8" TAIL=20 step raster 50 raster_variants
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 step bench 110 bench/gpu.sh W2 W3 GEMM ATTN
    ;;
short)
    # The least device time: the tensor-core and every-operation PTX
    # tests on the card, W3 and GEMM with the grouped tile order (8),
    # W2, W3 and GEMM beside torch_baselines.py.
    TAIL=12 step check 70 scripts/gpu-check.sh ptx:tensor_core_contractions_run ptx:grouped ptx:every_operation
    RASTER_SPECS="W3:w3:seq=2048 GEMM:gemm:m=4096" RASTER_GROUPS="0 8" TAIL=20 step raster 40 raster_variants
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 step bench 90 bench/gpu.sh W2 W3 GEMM
    ;;
attn)
    # The warpgroup attention's tests on the card, then ATTN and W3 with
    # and without it, W2 with the grouped order; with COUNTERS=1 then ncu
    # on the contractions (mma_counters).
    TAIL=40 step check 130 scripts/gpu-check.sh ptx:warpgroup_attention ptx:fused_attention_runs
    TAIL=40 step attn 100 attn_variants
    [ -n "${COUNTERS:-}" ] && TAIL=400 step counters 150 mma_counters
    ;;
ws)
    # Warp specialization: its tests (and the tensor copies') on the card,
    # GEMM, W2 and W3 with KILN_MMA_WS 0 and 1, their kernels under ncu,
    # then ATTN, W2, W3 and GEMM beside torch_baselines.py with the copying
    # warp (WS_BENCH, default 1; 0 where its tests failed).
    TAIL=20 step check 170 scripts/gpu-check.sh ptx:warp_specialized ptx:tensor_core_contractions_run
    ws_bench="${WS_BENCH:-1}"
    grep -qE "^\| ptx:warp_specialized \| [1-9][0-9]* \| 0 \| 0 \|" "$out/check/log" || ws_bench=0
    TAIL=30 step ws 110 ws_variants
    TAIL=60 step kernels 70 ws_kernels
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    KILN_MMA_WS=$ws_bench BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 \
        step bench 130 bench/gpu.sh ATTN W2 W3 GEMM
    ;;
heavy)
    # The tensor-core and heavy-epilogue tests on the card; W2 and W3 with
    # and without the heavy-epilogue rule and the copying warp; the
    # defaults' kernels under ncu; ATTN, W2, W3 and GEMM beside
    # torch_baselines.py.
    TEST_THREADS=16 TAIL=20 step check 210 scripts/gpu-check.sh ptx:tensor_core_contractions_run ptx:heavy_epilogues
    TAIL=30 step heavy 90 heavy_variants
    TAIL=40 step kernels 50 kernel_table_default
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 TAIL=30 \
        step bench 130 bench/gpu.sh ATTN W2 W3 GEMM
    ;;
lanes)
    # Element kernels whose lanes are written apart (W3's key rotation)
    # and staged epilogues with running input addresses (2026-12-06
    # evening): the tensor-core tests and every example on the card; W3's
    # and W2's kernels under ncu; every workload beside torch_baselines.py.
    TEST_THREADS=16 TAIL=20 step check 200 scripts/gpu-check.sh ptx:tensor_core_contractions_run \
        ptx:heavy_epilogues gpu_backend:every_example gpu_backend:small_benchmarks \
        gpu_backend:w8a8 gpu_backend:weight_only
    TAIL=40 step kernels 50 kernel_table_default
    TAIL=20 step quantized 40 quantized_models
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 TAIL=30 step bench 190 bench/gpu.sh
    ;;
w3fast)
    # Staged operands' run-only index terms once per step (W3's output
    # projection reading the attention output through its transpose) and
    # the approximate logistic in 16-bit outputs (SwiGLU's SiLU): the
    # tensor-core tests and every example on the card; W3's and W2's
    # kernels under ncu; the contraction workloads beside torch_baselines.py.
    TEST_THREADS=16 TAIL=20 step check 150 scripts/gpu-check.sh \
        gpu_backend:every_example_runs_on_the_gpu ptx:tensor_core_contractions_run \
        ptx:heavy_epilogues
    TAIL=40 step kernels 50 kernel_table_default
    TAIL=30 step heavy 40 w3_heavy_variants
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 TAIL=30 step bench 150 \
        bench/gpu.sh W3 W3d W2 GEMM ATTN
    ;;
logistic)
    # The logistic's approximate instructions and SwiGLU on the default
    # tiles: the tensor-core, heavy-epilogue and large-block tests on the
    # card; W3 with the tile-order and copy switches; W3's and W2's kernels
    # under ncu; every workload beside torch_baselines.py.
    TEST_THREADS=16 TAIL=20 step check 150 scripts/gpu-check.sh \
        ptx:heavy_epilogues ptx:tensor_core_contractions_run gpu_backend:large_blocks
    TAIL=30 step variants 60 w3_switch_variants
    TAIL=40 step kernels 50 kernel_table_default
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 TAIL=30 step bench 190 bench/gpu.sh
    ;;
loads8)
    # Staged epilogues of self-copied operands with 8 loads in flight (W3's
    # output projection): W3 and W3d on the card against the interpreter;
    # W3, W2 and GEMM in both tile orders; W3's kernels under ncu; every
    # workload beside torch_baselines.py.
    TEST_THREADS=16 TAIL=20 step check 120 scripts/gpu-check.sh gpu_backend:large_blocks
    TAIL=30 step variants 90 group_variants
    TAIL=40 step kernels 50 kernel_table_default
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 TAIL=30 step bench 190 bench/gpu.sh
    ;;
grouped)
    # The grouped tile order as the default (KILN_MMA_GROUP=8): the
    # grouped-order, tensor-core and large-block tests on the card; every
    # workload beside torch_baselines.py; W3's kernels under ncu.
    TEST_THREADS=16 TAIL=20 step check 100 scripts/gpu-check.sh \
        gpu_backend:large_blocks ptx:grouped_tile_orders
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 TAIL=30 step bench 190 bench/gpu.sh
    TAIL=40 step kernels 50 kernel_table_default
    ;;
walk)
    # Maps walking their largest input's order (KILN_PTX_WALK=1, W3's key
    # rotation): that test and W3 on the card against the interpreter
    # (with it); W3 with KILN_PTX_WALK 0 and 1, its kernels under ncu with
    # it; every workload beside torch_baselines.py.
    KILN_PTX_WALK=1 TEST_THREADS=16 TAIL=20 step check 60 scripts/gpu-check.sh \
        ptx:maps_walk gpu_backend:large_blocks
    TAIL=20 step variants 30 bash -c 'for w in 0 1; do echo "## w3 KILN_PTX_WALK=$w";
        KILN_PTX_WALK=$w "$KILN" bench bench/w3.kiln --device cuda --dim seq=2048 --json; done'
    KILN_PTX_WALK=1 TAIL=40 step kernels 40 kernel_table_default
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 TAIL=30 step bench 150 bench/gpu.sh
    ;;
start)
    # The walk (above), then W4's fragment kernel at m = 1 under ncu
    # (warp states, instruction mix, SASS with stall samples: sass-m1.csv).
    KILN_PTX_WALK=1 TEST_THREADS=16 TAIL=20 step check 60 scripts/gpu-check.sh \
        ptx:maps_walk gpu_backend:large_blocks
    TAIL=40 step variants 150 bash -c 'for v in KILN_PTX_WALK=0 KILN_PTX_WALK=1 \
        KILN_TILE_BLOCKS=resident KILN_MMA_WS=1 "KILN_MMA_WS=1 KILN_TILE_BLOCKS=resident"; do
        for f in w3:seq=2048 gemm:m=4096 w2:m=8192; do echo "## $f $v";
        env $v "$KILN" bench bench/${f%%:*}.kiln --device cuda --dim ${f#*:} --json; done; done'
    KILN_PTX_WALK=1 TAIL=40 step kernels 40 kernel_table_default
    KILN_MMA_WS=1 KILN_TILE_BLOCKS=resident TAIL=40 step kernels-ws 40 kernel_table_default
    KILN_MMA_WS=1 KILN_TILE_BLOCKS=resident TEST_THREADS=16 TAIL=20 step check-ws 60 \
        scripts/gpu-check.sh gpu_backend:large_blocks
    W4_ROWS=1 TAIL=200 step w4-sass 60 w4_sass
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 TAIL=30 step bench 150 bench/gpu.sh
    ;;
coalesced)
    # Register epilogues' whole tiles stored through shared memory in
    # 16-byte chunks (KILN_MMA_COALESCED, on by default): the tensor-core
    # tests and W3/W3d on the card against the interpreter, W3, GEMM and
    # W2 with it off and on, W3's kernels, every workload beside
    # torch_baselines.py.
    TEST_THREADS=16 TAIL=20 step check 150 scripts/gpu-check.sh \
        ptx:tensor_core_contractions_run gpu_backend:large_blocks
    TAIL=40 step variants 120 bash -c 'for v in 0 1; do
        for f in w3:seq=2048 gemm:m=4096 w2:m=8192; do echo "## $f KILN_MMA_COALESCED=$v";
        KILN_MMA_COALESCED=$v "$KILN" bench bench/${f%%:*}.kiln --device cuda --dim ${f#*:} --json; done; done'
    TAIL=40 step kernels 40 kernel_table_default
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 TAIL=30 step bench 150 bench/gpu.sh
    ;;
chunks)
    # Staged epilogues with one load at the element's own place in 16-byte
    # chunks (KILN_MMA_CHUNKS=1): the tensor-core tests, W3/W3d (and
    # CHUNKS_EXTRA) on the card against the interpreter with it; W3, GEMM
    # and W2 with it off and on; W3's kernels with it; every workload
    # beside torch_baselines.py.
    KILN_MMA_CHUNKS=1 TEST_THREADS=16 TAIL=20 step check 260 scripts/gpu-check.sh \
        ${CHUNKS_CHECK-ptx:tensor_core_contractions_run} gpu_backend:large_blocks ${CHUNKS_EXTRA:-}
    TAIL=40 step variants 120 bash -c 'for v in 0 1; do
        for f in w3:seq=2048 gemm:m=4096 w2:m=8192; do echo "## $f KILN_MMA_CHUNKS=$v";
        KILN_MMA_CHUNKS=$v "$KILN" bench bench/${f%%:*}.kiln --device cuda --dim ${f#*:} --json; done; done'
    KILN_MMA_CHUNKS=1 TAIL=40 step kernels 40 kernel_table_default
    TAIL=30 step w4splits 60 bash -c 'for s in 1 2 3 4 auto; do for m in 1 16; do
        echo "## W4 m=$m KILN_QMMA_SPLITS=$s"; KILN_QMMA_SPLITS=$s "$KILN" bench bench/w4.kiln \
        --device cuda --dim m=$m --iters 200 --json; done; done'
    [ -f gpu-bin/torch_baselines.py ] && export TORCH_BASELINES="$root/gpu-bin/torch_baselines.py"
    KILN_MMA_CHUNKS=1 BENCH_TMP="$out/bench/raw" KILN_TIMEOUT=40 HEAVY_ITERS=20 TAIL=30 \
        step bench 150 bench/gpu.sh
    ;;
counters)
    # ncu on the tensor-core contractions of W3 and GEMM (mma_counters).
    TAIL=400 step counters 200 mma_counters
    ;;
diag)
    # The split-K and tensor-copy PTX tests on the card with their
    # failures in full; W3's and W2's kernels under ncu.
    TAIL=150 step check 150 scripts/gpu-check.sh ptx:split_k ptx:tensor_copies
    TAIL=60 step kernels 120 kernel_table
    ;;
tests)
    step check-ptx 200 scripts/gpu-check.sh ptx
    step check-examples 170 scripts/gpu-check.sh gpu_backend:every_example gpu_backend:large_blocks
    KILN_PTX_BRANCH_SELECTS=1 KILN_GEMV_TILING=32,16,stage KILN_GEMV_DEQUANT=1 \
        step check-switches 100 scripts/gpu-check.sh gpu_backend:every_example
    step w3d 45 scripts/gpu-w3d.sh 32,16,stage
    KILN_MMA_TILING=medium TORCH=0 KILN_TIMEOUT=40 step bench-mma-sync 60 bench/gpu.sh W5-int8 W5-fp8 GEMM
    ;;
*)
    echo "usage: scripts/gpu-session.sh 1|2|bars|exp|w1|issue6|issue7|w6|w4ncu|w4split|next|tuned|epilogue|diag|staged|last|short|attn|ws|heavy|lanes|w3fast|logistic|loads8|grouped|walk|counters|final|tests" >&2
    exit 2
    ;;
esac
echo "done after $(($(date +%s) - start)) s"
