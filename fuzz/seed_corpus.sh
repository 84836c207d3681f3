#!/bin/sh
# Fills fuzz/corpus/<target>/ with the repository's example files, the
# starting points for `cargo fuzz run`. Rerunnable; the corpus is not committed.
set -eu
cd "$(dirname "$0")/.."
mkdir -p fuzz/corpus/frontend fuzz/corpus/kir_parser
for f in examples/*.kiln tests/filetests/kiln/*.kiln; do
    cp "$f" "fuzz/corpus/frontend/seed-$(basename "$f")"
done
for f in examples/ir/*.kir tests/filetests/*/*.kir; do
    d=$(basename "$(dirname "$f")")
    cp "$f" "fuzz/corpus/kir_parser/seed-$d-$(basename "$f")"
done
echo "frontend: $(ls fuzz/corpus/frontend | wc -l) files, kir_parser: $(ls fuzz/corpus/kir_parser | wc -l) files"
