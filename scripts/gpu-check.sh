#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with the binaries that
# scripts/gpu-build.sh put in gpu-bin/: every GPU test (each kernel kind and
# each example against the reference interpreter, fresh random inputs; the
# CUDA executor's own tests; every emitted PTX kernel through ptxas), with
# GPU tests required to run (KILN_REQUIRE_GPU=1, no skipping), then a
# summary table. Exit status: 0 when every test binary passed.
#
# Usage: scripts/gpu-check.sh [BINARY[:FILTER] ...]   (default: every test
# binary in gpu-bin/, every test). The interpreter-heavy tests of
# gpu_backend take about ten minutes together, more than one device call
# allows: split them over calls, e.g. `gpu_backend:every_example` in one and
# `ptx cuda_exec gpu_backend:large` in another.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bin="${BIN:-$root/gpu-bin}"
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
export KILN_REQUIRE_GPU=1
# Test binaries built elsewhere find the checkout here, and the `kiln`
# binary their command-line tests run (not at the build machine's path).
export KILN_ROOT="$root"
[ -x "$bin/kiln" ] && export KILN_BIN="$bin/kiln"
if [ -z "${KILN_PTXAS:-}" ] && command -v ptxas >/dev/null 2>&1; then
    export KILN_PTXAS="$(command -v ptxas)"
fi
[ -n "${KILN_PTXAS:-}" ] && export KILN_REQUIRE_PTXAS=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
status=0
rows=()
specs=("$@")
if [ ${#specs[@]} = 0 ]; then
    for t in "$bin"/*; do specs+=("$(basename "$t")"); done
fi
for spec in "${specs[@]}"; do
    name="${spec%%:*}"
    filter=""
    [[ "$spec" == *:* ]] && filter="${spec#*:}"
    t="$bin/$name"
    case "$name" in kiln | cuda_launch_overhead | run-artifact) continue ;; esac
    [ -x "$t" ] || { echo "no test binary $t"; status=1; continue; }
    echo "== $spec"
    start=$(date +%s.%N)
    "$t" ${filter:+"$filter"} --test-threads="${TEST_THREADS:-8}" > "$out/$name.log" 2>&1
    rc=$?
    secs=$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')")
    grep -E "^test .* (ok|FAILED|ignored)$|GPU|ptxas|registers|skip" "$out/$name.log" | head -200
    summary="$(grep -E '^test result:' "$out/$name.log" | tail -1)"
    passed=$(sed -n 's/.* \([0-9]*\) passed.*/\1/p' <<< "$summary")
    failed=$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' <<< "$summary")
    [ "$rc" = 0 ] || status=1
    rows+=("| $spec | ${passed:-?} | ${failed:-?} | $rc | $secs s |")
    if [ "$rc" != 0 ]; then
        grep -B2 -A25 -E "^---- .* stdout ----|panicked" "$out/$name.log" | head -120
    fi
done
if [ $# = 0 ] && [ -x "$bin/cuda_launch_overhead" ]; then
    echo "== launch overhead (20 small kernels)"
    "$bin/cuda_launch_overhead" 2000 | tee "$out/launch_overhead.txt" || status=1
fi
echo
echo "| test binary | passed | failed | exit | time |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit $status
