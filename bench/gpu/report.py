"""Writes bench/results/<date>-<card>.md from one run of bench/gpu.sh: kiln's
times (kiln-<ID>.json from `kiln bench --json`) beside PyTorch's figures and
the card's ceilings (gpu_baselines.json from torch_baselines.py), all from
the same invocation on the same card."""
import argparse
import datetime
import json
import os

# Workload id -> (bench file, dims, key in gpu_baselines.json)
WORKLOADS = [
    ("W1", "w1", "m=8192", "W1 gelu+layernorm 8192x4096"),
    ("W1b", "w1b", "m=8192", "W1b scaled softmax"),
    ("W2", "w2", "m=8192", "W2 MLP 8192x1024x4096"),
    ("W3", "w3", "seq=2048", "W3 llama block S=2048 d=2048"),
    ("W3d", "w3d", "batch=1", "W3d llama decode kv=2048"),
    ("W4-M1", "w4", "m=1", "W4 M=1"),
    ("W4-M16", "w4", "m=16", "W4 M=16"),
    ("W5-int8", "w5_int8", "m=4096", "W5"),
    ("W5-fp8", "w5_fp8", "m=4096", "W5"),
    ("W6", "w6", "n=64", "W6 inv-bottleneck NHWC"),
    ("GEMM", "gemm", "m=4096", "W5"),
    ("ATTN", "attention", "seq=2048", "ATTN"),
]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(x, unit=" ms"):
    return "n/a" if x is None else f"{x:.4f}{unit}"


def ratio(a, b):
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--card", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--iters", required=True)
    a = ap.parse_args()
    torch = load(os.path.join(a.tmp, "gpu_baselines.json")) or {}
    ceil = torch.get("ceil", {})
    peak = ceil.get("bf16_TFLOPs")
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        f"# GPU benchmarks, {now:%Y-%m-%d %H:%M} UTC, {a.card}",
        "",
        f"kiln commit {a.commit}; `bench/gpu.sh` ran `kiln bench --device cuda` (inputs "
        "uploaded once, the run's CUDA graph replayed in batches that fill about 1 ms, each "
        "batch timed on the host up to a stream sync; the median over "
        f"{a.iters} batches (fewer for workloads marked heavy in bench/gpu.sh) of the time per "
        "replay) and `torch_baselines.py` (CUDA-event medians of 50) in one invocation on "
        "this card.",
        "",
        f"Ceilings measured in this run: copy {fmt(ceil.get('copy_TBps'), ' TB/s')}, "
        f"bf16 matmul {fmt(peak, ' TFLOP/s')}. Floors are max(bytes / copy bandwidth, "
        "flops / peak) from those ceilings (int8 and fp8 at twice the bf16 peak).",
        "",
        "| id | dims | kiln median | kiln min | floor | kiln / floor | torch.compile | eager "
        "| torch.compile / kiln |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for wid, _file, dims, key in WORKLOADS:
        k = load(os.path.join(a.tmp, f"kiln-{wid}.json"))
        t = torch.get(key, {})
        kmed = k.get("median_ms") if k else None
        kmin = k.get("min_ms") if k else None
        floor = t.get("floor_ms")
        comp = min(
            (v for n, v in t.items() if n.startswith("compiled_") and n.endswith("_ms")),
            default=None,
        )
        eager = t.get("eager_ms")
        if wid.startswith("W4"):
            floor = t.get("floor4_ms")
            eager = t.get("bf16_ms")
            comp = t.get("int4_ms")
            notes.append(
                f"- {wid}: 'eager' is the bf16 linear and 'torch.compile' torch's int4 kernel "
                "(`_weight_int4pack_mm`)."
            )
        if wid.startswith("W5"):
            flops = 2 * 4096**3
            floor = flops / (2 * peak * 1e12) * 1e3 if peak else None
            eager = t.get("bf16_ms")
            if wid == "W5-int8":
                # The bar compares with torch._int_mm given a column-major B
                # (its fast layout); torch_baselines.py records row-major B only.
                col = t.get("int8_colB_ms")
                comp = col if col is not None else t.get("int8_ms")
                what = (
                    "`torch._int_mm` with a column-major B"
                    if col is not None
                    else "`torch._int_mm` (row-major B)"
                )
                if col is not None and t.get("int8_ms"):
                    what += f" (row-major B: {fmt(t.get('int8_ms'))})"
            else:
                comp = t.get("fp8_ms")
                what = "`torch._scaled_mm` (fp8 e4m3)"
            notes.append(f"- {wid}: 'eager' is the bf16 matmul and 'torch.compile' {what}.")
        if wid == "GEMM":
            flops = 2 * 4096**3
            floor = flops / (peak * 1e12) * 1e3 if peak else None
            eager = t.get("bf16_ms")
            comp = None
            if kmed and eager:
                notes.append(
                    f"- GEMM: 4096^3 bf16, 'eager' is torch.matmul; kiln reaches "
                    f"{eager / kmed * 100:.0f}% of its throughput "
                    f"({flops / kmed / 1e9:.0f} TFLOP/s)."
                )
        if wid == "ATTN":
            flops = 4 * 2048**2 * 128 * 16 / 2
            floor = flops / (peak * 1e12) * 1e3 if peak else None
            eager = t.get("sdpa_ms")
            comp = None
            if kmed and peak:
                notes.append(
                    f"- ATTN: causal attention B1 H16 S2048 D128 bf16, 'eager' is "
                    f"torch's scaled_dot_product_attention; kiln reaches "
                    f"{flops / kmed / 1e9:.0f} TFLOP/s, {flops / kmed / 1e9 / peak * 100:.0f}% "
                    f"of the measured bf16 peak"
                    + (f", torch {flops / eager / 1e9:.0f} TFLOP/s." if eager else ".")
                )
        if k is None:
            err = os.path.join(a.tmp, f"kiln-{wid}.err")
            why = ""
            if os.path.exists(err):
                with open(err) as f:
                    tail = f.read().strip().splitlines()
                why = tail[-1] if tail else ""
            notes.append(f"- {wid}: kiln did not run: {why or 'not requested'}")
        lines.append(
            f"| {wid} | {dims} | {fmt(kmed)} | {fmt(kmin)} | {fmt(floor)} | {ratio(kmed, floor)} "
            f"| {fmt(comp)} | {fmt(eager)} | {ratio(comp, kmed)} |"
        )
    lines += ["", *notes, ""]
    os.makedirs(a.out_dir, exist_ok=True)
    card = "".join(c if c.isalnum() else "-" for c in a.card).strip("-").lower() or "gpu"
    path = os.path.join(a.out_dir, f"{now:%Y-%m-%d}-{card}.md")
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
