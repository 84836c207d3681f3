#!/usr/bin/env bash
# Runs on the GPU machine (binaries from scripts/gpu-build.sh in gpu-bin/):
# W3d, one decode step, timed with the GEMV tiling the compiler picks and
# with each override of KILN_GEMV_TILING given as arguments (TILE_N,UNROLL),
# then every kernel of one replay under ncu. Writes to $OUT (default
# /tmp/gpu-w3d): w3d-<variant>.json and ncu.txt, and prints a table.
#
# Usage: scripts/gpu-w3d.sh [TILE_N,UNROLL ...]
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
kiln="${KILN:-$root/gpu-bin/kiln}"
out="${OUT:-/tmp/gpu-w3d}"
iters="${ITERS:-500}"
mkdir -p "$out"
for variant in default "$@"; do
    if [ "$variant" = default ]; then
        unset KILN_GEMV_TILING
    else
        export KILN_GEMV_TILING="$variant"
    fi
    "$kiln" bench bench/w3d.kiln --device cuda --dim batch=1 --iters "$iters" --json \
        > "$out/w3d-${variant/,/x}.json" 2> "$out/w3d-${variant/,/x}.err"
    python3 - "$out/w3d-${variant/,/x}.json" "$variant" <<'PY'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"| {sys.argv[2]} | failed: {e} |")
    sys.exit()
def find(d, *keys):
    for k in keys:
        if isinstance(d, dict) and k in d:
            return d[k]
    return None
print(f"| {sys.argv[2]} | median {find(j, 'median_ms')} ms | min {find(j, 'min_ms')} ms |")
PY
done
unset KILN_GEMV_TILING
if command -v ncu >/dev/null; then
    ncu --graph-profiling node --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size,launch__registers_per_thread \
        "$kiln" bench bench/w3d.kiln --device cuda --dim batch=1 --iters 1 --warmup 0 > "$out/ncu.txt" 2>&1
    python3 - "$out/ncu.txt" <<'PY'
import re, sys
name, rows, seen = None, [], set()
for line in open(sys.argv[1]):
    m = re.match(r"\s+([a-z]+_[a-z0-9]+_[0-9a-f]{16}) \((\d+), 1, 1\)", line)
    if m:
        name = (m.group(1), m.group(2))
        continue
    m = re.match(r"\s+(gpu__time_duration.sum|dram__bytes_read.sum|dram__throughput\S*)\s+(\S+)\s+([\d.,]+)", line)
    if m and name:
        rows.append((name, m.group(1), m.group(2), m.group(3)))
per = {}
order = []
for (n, g), metric, unit, val in rows:
    if (n, g) not in per:
        per[(n, g)] = {}
        order.append((n, g))
    per[(n, g)].setdefault(metric, f"{val} {unit}")
print("| kernel | blocks | time | DRAM read | DRAM % of peak |")
print("|---|---|---|---|---|")
for k in order:
    d = per[k]
    print(f"| {k[0]} | {k[1]} | {d.get('gpu__time_duration.sum')} | {d.get('dram__bytes_read.sum')} | {d.get('dram__throughput.avg.pct_of_peak_sustained_elapsed')} |")
PY
fi
