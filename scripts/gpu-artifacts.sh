#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with the binaries that
# scripts/gpu-build.sh put in gpu-bin/ (kiln, run-artifact): GPU artifacts
# end to end. For each model it compiles an sm_90 artifact with random
# weights twice, with cubins (ptxas from KILN_PTXAS or the PATH) and with
# PTX only, runs each through run-artifact in fresh processes (cold start:
# load, first run, modules from cubins), and times the cubin artifact with
# `kiln bench` beside the source model. The JIT cache is off throughout.
#
# Usage: scripts/gpu-artifacts.sh [RUNS]   (processes per artifact, default 5)
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bin="${BIN:-$root/gpu-bin}"
runs="${1:-5}"
tmp="$(mktemp -d)"
export KILN_PTXAS="${KILN_PTXAS:-$(command -v ptxas || true)}"
export KILN_CACHE=off
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
echo "ptxas: ${KILN_PTXAS:-none}"
ls -l "$bin/run-artifact" | awk '{print "run-artifact binary: " $5 " bytes"}'
now() { date +%s.%N; }
for spec in "mlp:examples/mlp.kiln:batch=4" "llama_block:examples/llama_block.kiln:seq=128" \
    "W3:bench/w3.kiln:seq=2048"; do
    IFS=: read -r id file dim <<< "$spec"
    for kind in cubins ptx; do
        flag=()
        [ "$kind" = ptx ] && flag=(--no-cubins)
        art="$tmp/$id-$kind.kart"
        t0=$(now)
        "$bin/kiln" compile "$file" -o "$art" --target sm_90 --random-weights 1 \
            --dim "$dim" "${flag[@]}" || { echo "$id $kind: compile failed"; continue; }
        echo "$id $kind: compiled in $(python3 -c "print(f'{$(now) - $t0:.2f}')") s"
        for _ in $(seq "$runs"); do
            t0=$(now)
            "$bin/run-artifact" "$art" --random-inputs 1 --dim "$dim" 2>&1 >/dev/null \
                | tr '\n' ' '
            echo "| process $(python3 -c "print(f'{($(now) - $t0) * 1e3:.1f}')") ms"
        done
    done
    "$bin/kiln" bench "$tmp/$id-cubins.kart" --dim "$dim" --iters 20 --json
    "$bin/kiln" bench "$file" --device cuda --dim "$dim" --iters 20 --json
done
rm -rf "$tmp"
