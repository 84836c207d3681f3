#!/usr/bin/env bash
# Compile time against depth: a Llama-style model (examples/tiny_llama.kiln
# at d = 4096, 32 heads over 8 key/value heads, ffn 11008, vocab 32000) with
# 4, 8, 16 and 32 layers, planned for sm_90 with no weights:
#
#   kiln compile MODEL --target sm_90 --emit plan
#
# Each size is compiled RUNS times (release build); the median wall time is
# written to bench/results/<date>-compile-scale.md.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-7}
cargo build --release -q -p kiln
kiln=target/release/kiln
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out="bench/results/$(date +%F)-compile-scale.md"
{
  echo "# Compile time against depth ($(date +%F))"
  echo
  echo "\`kiln compile MODEL --target sm_90 --emit plan\`, no weights, release build,"
  echo "median of $RUNS runs on $(nproc) cores ($(uname -m)). The model is"
  echo "\`examples/tiny_llama.kiln\` at d = 4096, 32 heads over 8 key/value heads,"
  echo "ffn 11008, vocab 32000. Produced by \`scripts/compile-scale.sh\`."
  echo
  echo "| layers | kernels | median ms | ms per layer |"
  echo "|---|---|---|---|"
} > "$out"
for n in 4 8 16 32; do
  sed -e "s/^const vocab = .*/const vocab = 32000/" \
      -e "s/^const d = .*/const d = 4096/" \
      -e "s/^const n_layers = .*/const n_layers = $n/" \
      -e "s/^const heads = .*/const heads = 32/" \
      -e "s/^const kv_heads = .*/const kv_heads = 8/" \
      -e "s/^const ffn = .*/const ffn = 11008/" \
      examples/tiny_llama.kiln > "$tmp/llama$n.kiln"
  times=()
  for _ in $(seq "$RUNS"); do
    s=$(date +%s%N)
    "$kiln" compile "$tmp/llama$n.kiln" --target sm_90 --emit plan > "$tmp/plan$n.txt"
    e=$(date +%s%N)
    times+=($(( (e - s) / 1000 )))
  done
  median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  kernels=$(grep -c '^kernel ' "$tmp/plan$n.txt")
  awk -v n="$n" -v k="$kernels" -v us="$median" 'BEGIN { printf "| %d | %d | %.1f | %.2f |\n", n, k, us / 1000, us / 1000 / n }' >> "$out"
done
cat "$out"
