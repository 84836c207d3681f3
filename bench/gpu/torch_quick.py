"""A quick PyTorch reference for iterating on contractions (no torch.compile):
the card's ceilings (copy bandwidth, bf16 matmul at 8192^3), torch.matmul at
4096^3 bf16, causal scaled_dot_product_attention (B1 H16 S2048 D128), and the
quantized kernels of W4 and W5 exactly as shared/bench/torch_baselines.py
measures them (the bf16 linear and tinygemm's int4 kernel at M 1 and 16;
torch._int_mm with row-major and column-major B; torch._scaled_mm fp8 e4m3).
CUDA-event medians of 50, written as gpu_baselines.json under $OUT with the
keys torch_baselines.py uses ("ceil", "W4 M=1", "W5", "ATTN"), plus
"int8_colB_ms" in "W5". bench/gpu.sh runs it instead of torch_baselines.py
when TORCH=quick."""
import json
import os

import torch


def bench(fn, reps=50, warm=10):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s = torch.cuda.Event(enable_timing=True)
        e = torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


dev, dt = "cuda", torch.bfloat16
x = torch.randn((1 << 30) // 2, device=dev, dtype=torch.float16)
y = torch.empty_like(x)
t = bench(lambda: y.copy_(x), reps=20)
bw = 2 * x.numel() * 2 / (t / 1e3)
del x, y
a = torch.randn(8192, 8192, device=dev, dtype=dt)
b = torch.randn(8192, 8192, device=dev, dtype=dt)
t = bench(lambda: a @ b, reps=20)
peak = 2 * 8192**3 / (t / 1e3)
del a, b
a = torch.randn(4096, 4096, device=dev, dtype=dt)
b = torch.randn(4096, 4096, device=dev, dtype=dt)
t16 = bench(lambda: a @ b)
q, k, v = (torch.randn(1, 16, 2048, 128, device=dev, dtype=dt) for _ in range(3))
tattn = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
res = {
    "ceil": {"copy_TBps": bw / 1e12, "bf16_TFLOPs": peak / 1e12,
             "device": torch.cuda.get_device_name()},
    "W5": {"bf16_ms": t16},
    "ATTN": {"sdpa_ms": tattn},
}
del a, b, q, k, v


def floor_ms(bytes_, flops):
    return max(bytes_ / bw, flops / peak) * 1e3


# W4: the bf16 linear and tinygemm's int4 kernel, K 4096, N 11008, group 128.
K, N, G = 4096, 11008, 128
wf = torch.randn(N, K, device=dev, dtype=dt) / 64
for m in (1, 16):
    x = torch.randn(m, K, device=dev, dtype=dt)
    te = bench(lambda: x @ wf.t())
    entry = {"bf16_ms": te,
             "floor4_ms": floor_ms(K * N / 2 + 2 * 2 * (K // G) * N, 2 * m * K * N),
             "floor16_ms": floor_ms(2 * K * N, 2 * m * K * N)}
    try:
        w = wf.float().view(N, K // G, G)
        mn, mx = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = (mx - mn).clamp(min=1e-6) / 15
        qc = ((w - mn) / scale).round().clamp(0, 15).to(torch.int32).view(N, K)
        zero = mn + 8 * scale
        sz = torch.cat([scale.view(N, K // G, 1), zero.view(N, K // G, 1)], -1)
        sz = sz.transpose(0, 1).contiguous().to(dt)
        packed = torch.ops.aten._convert_weight_to_int4pack((qc[:, ::2] << 4 | qc[:, 1::2]).to(torch.uint8), 8)
        entry["int4_ms"] = bench(lambda: torch.ops.aten._weight_int4pack_mm(x, packed, G, sz))
    except Exception as ex:  # the int4 kernel's signature changes between releases
        print(f"W4 M={m} int4 kernel failed: {type(ex).__name__}: {str(ex)[:200]}", flush=True)
    res[f"W4 M={m}"] = entry
    print(f"W4 M={m}: " + ", ".join(f"{k} {v:.4f}" for k, v in entry.items()), flush=True)

# W5: int8 (int32 result) and fp8 e4m3 (bf16 result) at 4096^3.
n = 4096
ai = torch.randint(-127, 127, (n, n), device=dev, dtype=torch.int8)
bi = torch.randint(-127, 127, (n, n), device=dev, dtype=torch.int8)
res["W5"]["int8_ms"] = bench(lambda: torch._int_mm(ai, bi))
bcol = bi.t().contiguous().t()
res["W5"]["int8_colB_ms"] = bench(lambda: torch._int_mm(ai, bcol))
try:
    a8 = torch.randn(n, n, device=dev, dtype=dt).to(torch.float8_e4m3fn)
    b8 = torch.randn(n, n, device=dev, dtype=dt).t().contiguous().to(torch.float8_e4m3fn).t()
    one = torch.tensor(1.0, device=dev)
    res["W5"]["fp8_ms"] = bench(lambda: torch._scaled_mm(a8, b8, one, one, out_dtype=dt))
except Exception as ex:
    print(f"fp8 failed: {type(ex).__name__}: {str(ex)[:200]}", flush=True)
print("W5: " + ", ".join(f"{k} {v:.4f}" for k, v in res["W5"].items()), flush=True)
print(f"copy {bw / 1e12:.2f} TB/s, bf16 8192^3 {peak / 1e12:.0f} TFLOP/s, "
      f"4096^3 {t16:.4f} ms ({2 * 4096**3 / t16 / 1e9:.0f} TFLOP/s), "
      f"causal SDPA {tattn:.4f} ms", flush=True)
out = os.environ.get("OUT", "/tmp/out")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "gpu_baselines.json"), "w") as f:
    json.dump(res, f, indent=1)
