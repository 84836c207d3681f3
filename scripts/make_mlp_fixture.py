#!/usr/bin/env python3
"""Writes the reference fixture for examples/mlp.kiln under tests/fixtures/mlp/.

Run from anywhere (Python 3 and NumPy; no other packages):

    python3 scripts/make_mlp_fixture.py

It draws seeded random inputs and weights, computes the model's output with
NumPy in float64 from the float32 values, and writes

    tests/fixtures/mlp/x.npy                 input x: f32[3, 64]
    tests/fixtures/mlp/weights.safetensors   w1 [64,256], b1 [256], w2 [256,64], b2 [64]
    tests/fixtures/mlp/y.npy                 expected output y: f32[3, 64]

The model is

    y = layer_norm(x + gelu(x @ w1 + b1) @ w2 + b2)

with gelu in its exact erf form and layer_norm over the last axis with
eps = 1e-5 and no affine parameters. The output is deterministic: rerunning
the script rewrites the same bytes. `cargo test --test fixtures` runs the
`kiln` binary on these files and compares its output with y.npy.
"""

import json
import math
import os
import struct

import numpy as np

SEED = 20240611
BATCH = 3
D_MODEL = 64
D_HIDDEN = 256
EPS = 1e-5

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "mlp")


def gelu(v):
    """Exact gelu: v * (1 + erf(v / sqrt(2))) / 2, in float64."""
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * v * (1.0 + erf(v / math.sqrt(2.0)))


def layer_norm(v, eps):
    """Normalizes over the last axis (biased variance), no scale or shift."""
    mean = v.mean(axis=-1, keepdims=True)
    var = ((v - mean) ** 2).mean(axis=-1, keepdims=True)
    return (v - mean) / np.sqrt(var + eps)


def write_npy(path, array):
    """Writes a little-endian float32 C-order .npy (format version 1.0)."""
    array = np.ascontiguousarray(array, dtype="<f4")
    np.save(path, array, allow_pickle=False)


def write_safetensors(path, tensors):
    """Writes float32 tensors in the safetensors format, by hand.

    Layout: an 8-byte little-endian header length, a JSON header padded with
    spaces to a multiple of 8, then the raw little-endian data of each
    tensor in header order.
    """
    header = {}
    blobs = []
    offset = 0
    for name, array in tensors:
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in blobs:
            f.write(data)


def main():
    rng = np.random.default_rng(SEED)

    def draw(shape, fan_in=None):
        v = rng.standard_normal(shape)
        if fan_in is not None:
            v = v / math.sqrt(fan_in)
        return v.astype(np.float32)

    x = draw((BATCH, D_MODEL))
    w1 = draw((D_MODEL, D_HIDDEN), fan_in=D_MODEL)
    b1 = draw((D_HIDDEN,), fan_in=D_MODEL)
    w2 = draw((D_HIDDEN, D_MODEL), fan_in=D_HIDDEN)
    b2 = draw((D_MODEL,), fan_in=D_HIDDEN)

    x64, w1_64, b1_64, w2_64, b2_64 = (
        a.astype(np.float64) for a in (x, w1, b1, w2, b2)
    )
    h = gelu(x64 @ w1_64 + b1_64)
    y = layer_norm(x64 + h @ w2_64 + b2_64, EPS).astype(np.float32)

    os.makedirs(OUT_DIR, exist_ok=True)
    write_npy(os.path.join(OUT_DIR, "x.npy"), x)
    write_safetensors(
        os.path.join(OUT_DIR, "weights.safetensors"),
        [("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)],
    )
    write_npy(os.path.join(OUT_DIR, "y.npy"), y)
    for name in ("x.npy", "weights.safetensors", "y.npy"):
        p = os.path.join(OUT_DIR, name)
        print(f"wrote {os.path.relpath(p, ROOT)} ({os.path.getsize(p)} bytes)")


if __name__ == "__main__":
    main()
