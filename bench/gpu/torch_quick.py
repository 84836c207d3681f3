"""A quick PyTorch reference for iterating on contractions: the card's
ceilings (copy bandwidth, bf16 matmul at 8192^3), torch.matmul at
4096^3 bf16 and causal scaled_dot_product_attention (B1 H16 S2048 D128), CUDA-event medians of 50, written as gpu_baselines.json under
$OUT with the keys torch_baselines.py uses ("ceil", "W5": {"bf16_ms"}, "ATTN": {"sdpa_ms"}).
bench/gpu.sh runs it instead of torch_baselines.py when TORCH=quick."""
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
print(f"copy {bw / 1e12:.2f} TB/s, bf16 8192^3 {peak / 1e12:.0f} TFLOP/s, "
      f"4096^3 {t16:.4f} ms ({2 * 4096**3 / t16 / 1e9:.0f} TFLOP/s), "
      f"causal SDPA {tattn:.4f} ms", flush=True)
out = os.environ.get("OUT", "/tmp/out")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "gpu_baselines.json"), "w") as f:
    json.dump(res, f, indent=1)
