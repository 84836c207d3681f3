"""ONNX models of the CPU workloads C1-C3 (shared/bench/BENCHMARKS.md, bottom
table) in f32, built with onnx.helper, and an onnxruntime timing loop.

The formulas follow bench/w1.kiln, bench/w2.kiln and bench/w6.kiln exactly:

* C1 = W1 at 1024x4096: layer_norm(gelu(x*s + b), g, beta), exact (erf)
  GELU, eps 1e-5, normalized over the last axis.
* C2 = W2 at 512x1024x4096: layer_norm(x + gelu(x@W1 + b1)@W2 + b2), no
  affine parameters (gamma 1, beta 0), eps 1e-5.
* C3 = W6 at 8x24x56x56: MobileNetV2 inverted bottleneck, NCHW: 1x1 conv
  to 144 channels, per-channel scale, ReLU6, depthwise 3x3 (pad 1), scale,
  ReLU6, 1x1 conv back to 24, scale, residual. No biases.

Usage: python3 ort_models.py [--threads 2] [--json]
Prints one line per workload: name, median ms, runs, and the largest
relative difference of onnxruntime's output from a NumPy float64 reference
of the formula (the run fails above 1e-3).
"""

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
F32 = TensorProto.FLOAT


def const(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def gelu_nodes(x, out, prefix):
    """Exact GELU, 0.5 * x * (1 + erf(x / sqrt(2))); onnxruntime fuses it."""
    return [
        helper.make_node("Div", [x, "sqrt2"], [f"{prefix}_d"]),
        helper.make_node("Erf", [f"{prefix}_d"], [f"{prefix}_e"]),
        helper.make_node("Add", [f"{prefix}_e", "one"], [f"{prefix}_p"]),
        helper.make_node("Mul", [x, f"{prefix}_p"], [f"{prefix}_m"]),
        helper.make_node("Mul", [f"{prefix}_m", "half"], [out]),
    ]


def gelu_constants():
    return [const("sqrt2", math.sqrt(2.0)), const("one", 1.0), const("half", 0.5)]


def model_of(name, nodes, inputs, outputs, initializers):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def c1(rng, m=1024, n=4096):
    nodes = [
        helper.make_node("Mul", ["x", "s"], ["xs"]),
        helper.make_node("Add", ["xs", "b"], ["xsb"]),
        *gelu_nodes("xsb", "h", "g0"),
        helper.make_node("LayerNormalization", ["h", "g", "beta"], ["y"], axis=-1, epsilon=1e-5),
    ]
    inits = gelu_constants() + [
        const("s", rng.standard_normal(n)),
        const("b", rng.standard_normal(n)),
        const("g", rng.standard_normal(n)),
        const("beta", rng.standard_normal(n)),
    ]
    model = model_of(
        "c1",
        nodes,
        [helper.make_tensor_value_info("x", F32, [m, n])],
        [helper.make_tensor_value_info("y", F32, [m, n])],
        inits,
    )
    feeds = {"x": rng.standard_normal((m, n)).astype(np.float32)}
    return model, feeds


def c2(rng, m=512, d=1024, f=4096):
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["xw1"]),
        helper.make_node("Add", ["xw1", "b1"], ["pre"]),
        *gelu_nodes("pre", "h", "g0"),
        helper.make_node("MatMul", ["h", "w2"], ["hw2"]),
        helper.make_node("Add", ["x", "hw2"], ["r0"]),
        helper.make_node("Add", ["r0", "b2"], ["r"]),
        helper.make_node("LayerNormalization", ["r", "ones", "zeros"], ["y"], axis=-1, epsilon=1e-5),
    ]
    inits = gelu_constants() + [
        const("w1", rng.standard_normal((d, f)) / math.sqrt(d)),
        const("b1", rng.standard_normal(f)),
        const("w2", rng.standard_normal((f, d)) / math.sqrt(f)),
        const("b2", rng.standard_normal(d)),
        const("ones", np.ones(d)),
        const("zeros", np.zeros(d)),
    ]
    model = model_of(
        "c2",
        nodes,
        [helper.make_tensor_value_info("x", F32, [m, d])],
        [helper.make_tensor_value_info("y", F32, [m, d])],
        inits,
    )
    feeds = {"x": rng.standard_normal((m, d)).astype(np.float32)}
    return model, feeds


def c3(rng, n=8, c=24, size=56):
    hidden = c * 6
    nodes = [
        helper.make_node("Conv", ["x", "w_expand"], ["e"]),
        helper.make_node("Mul", ["e", "s_expand"], ["es"]),
        helper.make_node("Clip", ["es", "zero", "six"], ["h1"]),
        helper.make_node("Conv", ["h1", "w_dw"], ["dw"], pads=[1, 1, 1, 1], group=hidden),
        helper.make_node("Mul", ["dw", "s_dw"], ["dws"]),
        helper.make_node("Clip", ["dws", "zero", "six"], ["h2"]),
        helper.make_node("Conv", ["h2", "w_project"], ["p"]),
        helper.make_node("Mul", ["p", "s_project"], ["ps"]),
        helper.make_node("Add", ["x", "ps"], ["y"]),
    ]
    inits = [
        const("zero", 0.0),
        const("six", 6.0),
        const("w_expand", rng.standard_normal((hidden, c, 1, 1)) / math.sqrt(c)),
        const("s_expand", rng.uniform(0.5, 1.5, (hidden, 1, 1))),
        const("w_dw", rng.standard_normal((hidden, 1, 3, 3)) / 3.0),
        const("s_dw", rng.uniform(0.5, 1.5, (hidden, 1, 1))),
        const("w_project", rng.standard_normal((c, hidden, 1, 1)) / math.sqrt(hidden)),
        const("s_project", rng.uniform(0.5, 1.5, (c, 1, 1))),
    ]
    model = model_of(
        "c3",
        nodes,
        [helper.make_tensor_value_info("x", F32, [n, c, size, size])],
        [helper.make_tensor_value_info("y", F32, [n, c, size, size])],
        inits,
    )
    feeds = {"x": rng.standard_normal((n, c, size, size)).astype(np.float32)}
    return model, feeds


def g1(rng, m=512, k=1024, n=4096):
    """C2's first matmul alone, for GFLOP/s: y = x @ w."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    inits = [const("w", rng.standard_normal((k, n)) / math.sqrt(k))]
    model = model_of(
        "g1",
        nodes,
        [helper.make_tensor_value_info("x", F32, [m, k])],
        [helper.make_tensor_value_info("y", F32, [m, n])],
        inits,
    )
    feeds = {"x": rng.standard_normal((m, k)).astype(np.float32)}
    return model, feeds


# NumPy float64 references of the formulas, to check the ONNX graphs.

_erf = np.frompyfunc(math.erf, 1, 1)


def np_gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def np_layer_norm(x, g=1.0, beta=0.0, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * g + beta


def weights_of(model):
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}


def reference(key, model, feeds):
    w = weights_of(model)
    x = feeds["x"].astype(np.float64)
    if key == "C1":
        return np_layer_norm(np_gelu(x * w["s"] + w["b"]), w["g"], w["beta"])
    if key == "C2":
        h = np_gelu(x @ w["w1"] + w["b1"])
        return np_layer_norm(x + h @ w["w2"] + w["b2"])
    if key == "G1":
        return x @ w["w"]
    # C3: 1x1 convolutions as channel contractions, the depthwise 3x3 as a
    # sum of nine shifted windows of the zero-padded input.
    relu6 = lambda v: np.clip(v, 0.0, 6.0)  # noqa: E731
    e = np.einsum("oc,nchw->nohw", w["w_expand"][:, :, 0, 0], x) * w["s_expand"]
    h = relu6(e)
    size = h.shape[-1]
    padded = np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))
    dw = np.zeros_like(h)
    for dy in range(3):
        for dx in range(3):
            k = w["w_dw"][:, 0, dy, dx][None, :, None, None]
            dw += k * padded[:, :, dy : dy + size, dx : dx + size]
    h = relu6(dw * w["s_dw"])
    p = np.einsum("oc,nchw->nohw", w["w_project"][:, :, 0, 0], h) * w["s_project"]
    return x + p


WORKLOADS = {
    "C1": ("W1 at 1024x4096", c1, 200),
    "C2": ("W2 at 512x1024x4096", c2, 40),
    "C3": ("W6 at 8x24x56x56", c3, 200),
    "G1": ("C2's first matmul alone, 512x1024 @ 1024x4096", g1, 40),
}

# Floating-point work of each workload, for GFLOP/s (the matmuls only).
FLOPS = {"C2": 2 * 2 * 512 * 1024 * 4096, "G1": 2 * 512 * 1024 * 4096}


def time_session(model, feeds, threads, runs, warmup=10):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    for _ in range(warmup):
        out = sess.run(None, feeds)
    assert all(np.isfinite(o).all() for o in out), "non-finite output"
    result = out[0]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times), runs, result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", nargs="*", default=list(WORKLOADS))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    results = []
    for key in args.only:
        desc, build, runs = WORKLOADS[key]
        model, feeds = build(rng)
        median, best, n, out = time_session(model, feeds, args.threads, runs)
        ref = reference(key, model, feeds)
        err = float(np.max(np.abs(out - ref) / (1.0 + np.abs(ref))))
        assert err < 1e-3, f"{key}: onnxruntime differs from the NumPy reference by {err}"
        results.append(
            {
                "id": key,
                "workload": desc,
                "median_ms": median,
                "min_ms": best,
                "runs": n,
                "max_rel_err_vs_numpy": err,
                "flops": FLOPS.get(key),
            }
        )
        if not args.json:
            print(
                f"{key} {desc}: median {median:.3f} ms (min {best:.3f} ms, {n} runs; "
                f"max rel. error vs NumPy {err:.1e})",
                flush=True,
            )
    if args.json:
        json.dump(
            {"onnxruntime": ort.__version__, "threads": args.threads, "results": results},
            sys.stdout,
            indent=1,
        )
        print()


if __name__ == "__main__":
    main()
