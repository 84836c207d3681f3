#!/usr/bin/env python3
"""Writes the light-model fixtures of tests/fixtures/onnx/light/.

For each light model the `onnx` package ships (onnx/backend/test/data/light/),
this copies the model and writes, as .npy:
  * its input, made exactly as the package's backend test runner makes it
    (`Runner.generate_dummy_data(x, seed=0, random=False)`: arange(n) / n as
    float32, each dim without a value taken as 1); the models share one
    input shape, so the input is written once per shape:
    `input_<d0>x<d1>x....npy`;
  * its expected output, decoded from the `light_<model>_output_0.pb` the
    package stores beside the model (the runner compares with these, with
    the rtol/atol of onnx/backend/test/case/model/__init__.py, recorded in
    tolerances.txt).

Needs the onnx package (for example `python3 -m pip install --target DIR
onnx` and PYTHONPATH=DIR). Run from the repository root:
    python3 scripts/make_onnx_fixtures.py
"""

import os
import shutil

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.test.case import model as model_cases
from onnx.backend.test.runner import Runner

OUT = os.path.join("tests", "fixtures", "onnx", "light")


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    light = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    cases = [c for c in model_cases.collect_testcases() if c.url and "/light/" in c.url]
    lines = []
    for case in sorted(cases, key=lambda c: c.model_name):
        name = case.model_name
        src = os.path.join(light, f"light_{name}.onnx")
        shutil.copyfile(src, os.path.join(OUT, f"{name}.onnx"))
        m = onnx.load(src)
        inits = {i.name for i in m.graph.initializer}
        inputs = [x for x in m.graph.input if x.name not in inits]
        feeds = []
        for x in inputs:
            value = Runner.generate_dummy_data(x, seed=0, name=name, random=False)
            shape = "x".join(str(d) for d in value.shape)
            path = os.path.join(OUT, f"input_{shape}.npy")
            np.save(path, value)
            feeds.append(f"{x.name}=input_{shape}.npy")
        for i, o in enumerate(m.graph.output):
            pb = os.path.join(light, f"light_{name}_output_{i}.pb")
            t = onnx.TensorProto()
            with open(pb, "rb") as f:
                t.ParseFromString(f.read())
            np.save(os.path.join(OUT, f"{name}.expected_{i}.npy"), numpy_helper.to_array(t))
            feeds.append(f"output {o.name}={name}.expected_{i}.npy")
        lines.append(f"{name} rtol={case.rtol} atol={case.atol} " + " ".join(feeds))
    with open(os.path.join(OUT, "tolerances.txt"), "w") as f:
        f.write("# model rtol atol input=file ... output name=file (from the onnx package)\n")
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} models to {OUT}")


if __name__ == "__main__":
    main()
