#!/bin/sh
# Fills fuzz/corpus/<target>/ with the repository's example files, the
# starting points for `cargo fuzz run`. Rerunnable; the corpus is not committed.
set -eu
cd "$(dirname "$0")/.."
mkdir -p fuzz/corpus/frontend fuzz/corpus/kir_parser fuzz/corpus/artifact_reader
for f in examples/*.kiln tests/filetests/kiln/*.kiln; do
    cp "$f" "fuzz/corpus/frontend/seed-$(basename "$f")"
done
for f in examples/ir/*.kir tests/filetests/*/*.kir; do
    d=$(basename "$(dirname "$f")")
    cp "$f" "fuzz/corpus/kir_parser/seed-$d-$(basename "$f")"
done
# Artifacts: a CPU one with weights, one without, and a GPU one (PTX).
kiln="cargo run --quiet -p kiln --"
$kiln compile examples/mlp.kiln -o fuzz/corpus/artifact_reader/seed-mlp-cpu.kart \
    --target cpu --random-weights 1 --dim batch=2 >/dev/null
$kiln compile examples/mlp.kiln -o fuzz/corpus/artifact_reader/seed-mlp-bare.kart \
    --target cpu >/dev/null
$kiln compile examples/mlp.kiln -o fuzz/corpus/artifact_reader/seed-mlp-sm90.kart \
    --target sm_90 --random-weights 1 >/dev/null
echo "artifact_reader: $(ls fuzz/corpus/artifact_reader | wc -l) files"
echo "frontend: $(ls fuzz/corpus/frontend | wc -l) files, kir_parser: $(ls fuzz/corpus/kir_parser | wc -l) files"
