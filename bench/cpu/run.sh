#!/usr/bin/env bash
# CPU benchmarks C1-C3 (shared/bench/BENCHMARKS.md, bottom table): onnxruntime
# beside `kiln bench --device cpu`, f32, 2 threads by default.
#
# Usage: bench/cpu/run.sh            (THREADS=N to change the thread count,
#                                      KILN=path/to/kiln to pick the binary)
# Writes bench/results/<date>-cpu.md. The Python packages live in a venv in
# bench/cpu/.venv (ignored by git), created on the first run.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
threads="${THREADS:-2}"
export KILN_THREADS="$threads"
tmp="$root/bench/results/tmp/cpu"
mkdir -p "$tmp"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q onnx onnxruntime numpy

echo "onnxruntime, $threads threads..."
"$venv/bin/python" "$here/ort_models.py" --threads "$threads" --json > "$tmp/ort.json"

# The kiln side: the f32 versions of the bench files, through `kiln bench
# --device cpu`, when the binary has a CPU device.
kiln="${KILN:-}"
if [ -z "$kiln" ]; then
    for candidate in "$root/target/release/kiln" "$root/target/debug/kiln" "$(command -v kiln || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            kiln="$candidate"
            break
        fi
    done
fi
kiln_ok=0
if [ -n "$kiln" ] && "$kiln" bench --help > "$tmp/bench-help.txt" 2>&1 \
    && grep -q -- "--device" "$tmp/bench-help.txt" && grep -qw "cpu" "$tmp/bench-help.txt"; then
    kiln_ok=1
fi
rm -f "$tmp"/kiln-*.json
if [ "$kiln_ok" = 1 ]; then
    for spec in "C1 w1 m=1024" "C2 w2 m=512" "C3 w6 n=8" "G1 gemm m=512"; do
        read -r id file dim <<< "$spec"
        # bench/cpu's own file first: bench/gemm.kiln is the GPU's 4096^3
        # GEMM, not G1's 512x1024x4096.
        src="$here/$file.kiln"
        [ -f "$src" ] || src="$root/bench/$file.kiln"
        sed 's/bf16/f32/g' "$src" > "$tmp/${file}_f32.kiln"
        echo "kiln $id..."
        if ! "$kiln" bench "$tmp/${file}_f32.kiln" --device cpu --dim "$dim" --json \
            --iters "${KILN_ITERS:-20}" --warmup 2 \
            > "$tmp/kiln-$id.json" 2> "$tmp/kiln-$id.err"; then
            echo "kiln $id failed: $(tail -1 "$tmp/kiln-$id.err")"
            rm -f "$tmp/kiln-$id.json"
        fi
    done
else
    echo "kiln: CPU device not available yet"
fi

# The FMA ceilings of this CPU per vector width (Cranelift emits 128-bit
# vectors; onnxruntime uses the widest the CPU has).
rm -f "$tmp/fma.txt"
if cc -O3 -funroll-loops -mavx512f -mfma -pthread "$here/fma_peak.c" -o "$tmp/fma_peak" 2> "$tmp/fma.err"; then
    echo "FMA peaks..."
    "$tmp/fma_peak" "$threads" > "$tmp/fma.txt" || rm -f "$tmp/fma.txt"
fi

out="$root/bench/results/$(date -u +%F)-cpu.md"
"$venv/bin/python" - "$tmp" "$out" "$threads" <<'PY'
import glob, json, os, platform, subprocess, sys, datetime

tmp, out, threads = sys.argv[1], sys.argv[2], sys.argv[3]
ort = json.load(open(os.path.join(tmp, "ort.json")))
# The figures of shared/bench/BENCHMARKS.md (a quiet 2-core machine), for scale.
REFERENCE = {"C1": "5.26 ms", "C2": "45.7 ms", "C3": "4.26 ms", "G1": "n/a"}


def kiln_median(doc):
    """The first number under a key containing 'median' (ms), anywhere."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            if "median" in k and isinstance(v, (int, float)):
                return float(v) * (1e3 if k.endswith("_s") else 1.0)
        for v in doc.values():
            m = kiln_median(v)
            if m is not None:
                return m
    if isinstance(doc, list):
        for v in doc:
            m = kiln_median(v)
            if m is not None:
                return m
    return None


cpu = platform.processor() or platform.machine()
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
lines = [
    f"# CPU benchmarks, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
    "",
    f"Machine: {cpu}, {os.cpu_count()} logical CPUs ({platform.system()} {platform.release()}).",
    f"onnxruntime {ort['onnxruntime']}, CPUExecutionProvider, ORT_ENABLE_ALL, "
    f"{ort['threads']} intra-op threads, sequential execution; f32, random normal "
    "inputs; median of the runs listed after 10 warm-up runs (bench/cpu/ort_models.py); "
    "each output checked against a NumPy float64 reference of the formula.",
    f"Load average when the table was written: {os.getloadavg()[0]:.2f} (1 min); the "
    "machine may be shared, so compare figures from one run only.",
    "",
    "| id | workload | onnxruntime median (min) | BENCHMARKS.md onnxruntime | kiln median "
    "| kiln / onnxruntime | onnxruntime vs NumPy (max rel. error) |",
    "|---|---|---|---|---|---|---|",
]
missing = False
gflops = []
for r in ort["results"]:
    path = os.path.join(tmp, f"kiln-{r['id']}.json")
    kiln = None
    if os.path.exists(path):
        try:
            kiln = kiln_median(json.load(open(path)))
        except ValueError:
            kiln = None
    missing |= kiln is None
    k = f"{kiln:.3f} ms" if kiln is not None else "n/a"
    ratio = f"{kiln / r['median_ms']:.2f}x" if kiln is not None else "n/a"
    lines.append(
        f"| {r['id']} | {r['workload']} | {r['median_ms']:.3f} ms ({r['min_ms']:.3f} ms, "
        f"{r['runs']} runs) | {REFERENCE.get(r['id'], 'n/a')} | {k} | {ratio} | "
        f"{r['max_rel_err_vs_numpy']:.1e} |"
    )
    if r.get("flops") and kiln is not None:
        gflops.append(
            f"- {r['id']}: kiln {r['flops'] / kiln / 1e6:.1f} GFLOP/s, onnxruntime "
            f"{r['flops'] / r['median_ms'] / 1e6:.1f} GFLOP/s (matmul work over the median)."
        )
if gflops:
    lines += ["", "Throughput of the matmul workloads:", ""] + gflops
fma = os.path.join(tmp, "fma.txt")
if os.path.exists(fma):
    lines += ["", "FMA ceilings of this CPU in the same run (bench/cpu/fma_peak.c: 12 "
              "independent accumulators per thread, best of 3):", ""]
    lines += [f"- {l.strip()}" for l in open(fma) if l.strip()]
load = os.getloadavg()[0]
if load > 0.75 * (os.cpu_count() or 1):
    lines += [
        "",
        f"The machine was busy (load average {load:.1f} on {os.cpu_count()} CPUs): these "
        "figures include contention from other processes and are not comparable with "
        "those of a quiet machine (BENCHMARKS.md column).",
    ]
if missing:
    lines += ["", "kiln: CPU device not available yet (or its run failed), no kiln figures."]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"\nwrote {out}")
PY
