#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with the binaries that
# scripts/gpu-build.sh put in gpu-bin/: every GPU test (each kernel kind and
# each example against the reference interpreter, fresh random inputs; the
# CUDA executor's own tests; every emitted PTX kernel through ptxas), with
# GPU tests required to run (KILN_REQUIRE_GPU=1, no skipping), then a
# summary table. Exit status: 0 when every test binary passed.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bin="${BIN:-$root/gpu-bin}"
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
export KILN_REQUIRE_GPU=1
# Test binaries built elsewhere find the checkout here.
export KILN_ROOT="$root"
if [ -z "${KILN_PTXAS:-}" ] && command -v ptxas >/dev/null 2>&1; then
    export KILN_PTXAS="$(command -v ptxas)"
fi
[ -n "${KILN_PTXAS:-}" ] && export KILN_REQUIRE_PTXAS=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
status=0
rows=()
for t in "$bin"/*; do
    name="$(basename "$t")"
    case "$name" in kiln | cuda_launch_overhead) continue ;; esac
    echo "== $name"
    start=$(date +%s.%N)
    "$t" --test-threads="${TEST_THREADS:-8}" > "$out/$name.log" 2>&1
    rc=$?
    secs=$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')")
    grep -E "^test .* (ok|FAILED|ignored)$|GPU|ptxas|registers|skip" "$out/$name.log" | head -200
    summary="$(grep -E '^test result:' "$out/$name.log" | tail -1)"
    passed=$(sed -n 's/.* \([0-9]*\) passed.*/\1/p' <<< "$summary")
    failed=$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' <<< "$summary")
    [ "$rc" = 0 ] || status=1
    rows+=("| $name | ${passed:-?} | ${failed:-?} | $rc | $secs s |")
    if [ "$rc" != 0 ]; then
        grep -B2 -A25 -E "^---- .* stdout ----|panicked" "$out/$name.log" | head -120
    fi
done
if [ -x "$bin/cuda_launch_overhead" ]; then
    echo "== launch overhead (20 small kernels)"
    "$bin/cuda_launch_overhead" 2000 | tee "$out/launch_overhead.txt" || status=1
fi
echo
echo "| test binary | passed | failed | exit | time |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit $status
