#!/usr/bin/env python3
"""Writes the per-operator ONNX fixtures of tests/fixtures/onnx/ops/.

Each case is a small graph built with onnx.helper at a stated opset (several
opsets where an attribute's default or an input/attribute form changed),
run by onnxruntime on random inputs (seeded, never zeros); the script writes
  <case>.onnx, <case>.in<i>.npy (graph input i), <case>.out<i>.npy (output i)
and cases.txt, one line per case: `<case> <input names...> -> <output names...>`.
tests/onnx_ops.rs runs every case through kiln (the reference interpreter and
the CPU backend) and compares with the stored outputs.

Needs onnx and onnxruntime (for example `python3 -m pip install --target DIR
onnx onnxruntime` and PYTHONPATH=DIR). Run from the repository root:
    python3 scripts/make_onnx_op_fixtures.py
"""

import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

OUT = os.path.join("tests", "fixtures", "onnx", "ops")
RNG = np.random.default_rng(20261204)
F = TensorProto.FLOAT
I64 = TensorProto.INT64
BOOL = TensorProto.BOOL
CASES = []


def rand(*shape, positive=False):
    x = RNG.standard_normal(shape).astype(np.float32)
    x[x == 0] = 0.5
    return np.abs(x) + 0.1 if positive else x


def case(name, opset, nodes, inputs, outputs, inits=(), dims=None, reference=False):
    """inputs: list of (name, array); outputs: list of (name, elem_type);
    dims: declared input shapes where they differ from the arrays' (symbols);
    reference: run onnx's reference evaluator instead of onnxruntime (for
    forms onnxruntime does not implement)."""
    dims = dims or {}
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), dims.get(n, a.shape)) for n, a in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
        initializer=[numpy_helper.from_array(a, n) for n, a in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 21 else 10
    save_case(name, model, inputs, [n for n, _ in outputs], reference)


def save_case(name, model, inputs, outputs, reference=False):
    """Runs `model` (onnxruntime, or onnx's reference evaluator) on `inputs`
    and writes the case's files; `outputs` are the output names."""
    if reference:
        results = ReferenceEvaluator(model).run(None, {n: a for n, a in inputs})
    else:
        # onnxruntime checks the model when it loads it
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        results = sess.run(None, {n: a for n, a in inputs})
    onnx.save(model, os.path.join(OUT, f"{name}.onnx"))
    for i, (_, a) in enumerate(inputs):
        np.save(os.path.join(OUT, f"{name}.in{i}.npy"), a)
    for i, r in enumerate(results):
        np.save(os.path.join(OUT, f"{name}.out{i}.npy"), r)
    CASES.append(f"{name} {' '.join(n for n, _ in inputs)} -> {' '.join(outputs)}")


def node(op, ins, outs, **attrs):
    return helper.make_node(op, ins, outs, **attrs)


def unary_cases():
    for op, opset, attrs, positive in [
        ("Relu", 14, {}, False), ("Sigmoid", 13, {}, False), ("Tanh", 13, {}, False),
        ("Exp", 13, {}, False), ("Log", 13, {}, True), ("Sqrt", 13, {}, True),
        ("Abs", 13, {}, False), ("Neg", 13, {}, False), ("Reciprocal", 13, {}, True),
        ("Erf", 13, {}, False), ("Floor", 13, {}, False), ("Ceil", 13, {}, False),
        ("Round", 11, {}, False), ("Sign", 13, {}, False), ("Sin", 7, {}, False),
        ("Cos", 7, {}, False), ("Softplus", 7, {}, False), ("Softsign", 7, {}, False),
        ("HardSwish", 14, {}, False), ("LeakyRelu", 16, {}, False),
        ("LeakyRelu", 16, {"alpha": 0.3}, False), ("HardSigmoid", 7, {}, False),
        ("HardSigmoid", 7, {"alpha": 0.4, "beta": 0.25}, False), ("Elu", 7, {"alpha": 0.7}, False),
        ("Gelu", 20, {}, False), ("Gelu", 20, {"approximate": "tanh"}, False),
    ]:
        suffix = "_".join(f"{k}{v}" for k, v in attrs.items())
        x = rand(2, 3, 5, positive=positive) * (3 if op in ("Round", "Floor", "Ceil") else 1)
        case(f"{op.lower()}{'_' + suffix if suffix else ''}_op{opset}", opset,
             [node(op, ["x"], ["y"], **attrs)], [("x", x)], [("y", F)])


def binary_cases():
    shapes = [((2, 3, 4), (4,)), ((3, 1), (1, 4)), ((2, 1, 4), (3, 1))]
    for op in ["Add", "Sub", "Mul", "Div", "Max", "Min"]:
        for k, (sa, sb) in enumerate(shapes):
            b = rand(*sb, positive=op == "Div")
            case(f"{op.lower()}_bcast{k}", 13, [node(op, ["a", "b"], ["y"])],
                 [("a", rand(*sa)), ("b", b)], [("y", F)])
    case("pow_op15", 15, [node("Pow", ["a", "b"], ["y"])],
         [("a", rand(3, 4, positive=True)), ("b", rand(4))], [("y", F)])
    for op in ["Sum", "Mean", "Max", "Min"]:
        case(f"{op.lower()}_variadic", 13, [node(op, ["a", "b", "c"], ["y"])],
             [("a", rand(2, 3, 4)), ("b", rand(3, 1)), ("c", rand(4))], [("y", F)])
    for op in ["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"]:
        a = np.round(rand(3, 4) * 2)
        b = np.round(rand(4) * 2)
        a[a == 0] = 1
        case(f"{op.lower()}_where", 16,
             [node(op, ["a", "b"], ["c"]), node("Where", ["c", "a", "b"], ["y"])],
             [("a", a), ("b", b)], [("y", F)])


def nn_cases():
    case("softmax_op11_default_axis", 11, [node("Softmax", ["x"], ["y"])], [("x", rand(2, 3, 4))], [("y", F)])
    case("softmax_op13_default_axis", 13, [node("Softmax", ["x"], ["y"])], [("x", rand(2, 3, 4))], [("y", F)])
    case("logsoftmax_op11_axis0", 11, [node("LogSoftmax", ["x"], ["y"], axis=0)], [("x", rand(2, 3, 4))], [("y", F)])
    case("logsoftmax_op13_axis1", 13, [node("LogSoftmax", ["x"], ["y"], axis=1)], [("x", rand(2, 3, 4))], [("y", F)])
    case("matmul_batched", 13, [node("MatMul", ["a", "b"], ["y"])], [("a", rand(2, 3, 4, 5)), ("b", rand(5, 6))], [("y", F)])
    case("matmul_vec", 13, [node("MatMul", ["a", "b"], ["y"])], [("a", rand(5)), ("b", rand(3, 5, 2))], [("y", F)])
    case("gemm_attrs", 13, [node("Gemm", ["a", "b", "c"], ["y"], transB=1, alpha=0.5, beta=2.0)],
         [("a", rand(3, 5)), ("b", rand(4, 5)), ("c", rand(4))], [("y", F)])
    case("gemm_transa_no_c", 11, [node("Gemm", ["a", "b"], ["y"], transA=1)],
         [("a", rand(5, 3)), ("b", rand(5, 4))], [("y", F)])
    case("conv_group_stride_pad", 11,
         [node("Conv", ["x", "w", "b"], ["y"], group=2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2])],
         [("x", rand(1, 4, 9, 8)), ("w", rand(6, 2, 3, 3)), ("b", rand(6))], [("y", F)])
    case("conv_same_upper", 11, [node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])],
         [("x", rand(2, 3, 7, 6)), ("w", rand(4, 3, 2, 3))], [("y", F)])
    case("conv_1d", 11, [node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1], strides=[2])],
         [("x", rand(2, 3, 11)), ("w", rand(5, 3, 3)), ("b", rand(5))], [("y", F)])
    case("conv_weight_initializer", 13, [node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
         [("x", rand(1, 3, 6, 6))], [("y", F)], inits=[("w", rand(4, 3, 3, 3))])
    case("convtranspose_stride_pad", 11,
         [node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 0, 1, 1], output_padding=[1, 0])],
         [("x", rand(1, 4, 5, 4)), ("w", rand(4, 3, 3, 3)), ("b", rand(3))], [("y", F)])
    case("convtranspose_group_dilation", 11,
         [node("ConvTranspose", ["x", "w"], ["y"], group=2, dilations=[2, 1])],
         [("x", rand(2, 4, 3, 5)), ("w", rand(4, 2, 2, 3))], [("y", F)])
    case("maxpool_op10_ceil", 10, [node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)],
         [("x", rand(1, 2, 8, 7))], [("y", F)])
    case("maxpool_pads_dilation", 12,
         [node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 1, 1], dilations=[2, 1])],
         [("x", rand(1, 2, 7, 7))], [("y", F)])
    case("avgpool_exclude_pad", 11, [node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
         [("x", rand(1, 2, 6, 5))], [("y", F)])
    case("avgpool_include_pad", 11,
         [node("AveragePool", ["x"], ["y"], kernel_shape=[3, 2], pads=[1, 0, 1, 1], count_include_pad=1, strides=[2, 2])],
         [("x", rand(1, 2, 6, 5))], [("y", F)])
    case("global_pools", 13, [node("GlobalAveragePool", ["x"], ["a"]), node("GlobalMaxPool", ["x"], ["m"])],
         [("x", rand(2, 3, 4, 5))], [("a", F), ("m", F)])
    bn = [("s", rand(3)), ("b", rand(3)), ("mean", rand(3)), ("var", rand(3, positive=True))]
    case("batchnorm_op9", 9, [node("BatchNormalization", ["x", "s", "b", "mean", "var"], ["y"])],
         [("x", rand(2, 3, 4, 4))], [("y", F)], inits=bn)
    case("batchnorm_op15_eps", 15, [node("BatchNormalization", ["x", "s", "b", "mean", "var"], ["y"], epsilon=0.1)],
         [("x", rand(2, 3, 5))], [("y", F)], inits=bn)
    case("instancenorm", 6 + 7, [node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-3)],
         [("x", rand(2, 3, 4, 5)), ("s", rand(3)), ("b", rand(3))], [("y", F)])
    case("layernorm_op17", 17, [node("LayerNormalization", ["x", "g", "b"], ["y"])],
         [("x", rand(2, 3, 8)), ("g", rand(8)), ("b", rand(8))], [("y", F)])
    case("layernorm_op17_axis1", 17, [node("LayerNormalization", ["x", "g"], ["y"], axis=1, epsilon=1e-3)],
         [("x", rand(2, 3, 4)), ("g", rand(3, 4))], [("y", F)])
    case("lrn_size5", 13, [node("LRN", ["x"], ["y"], size=5)], [("x", rand(1, 7, 3, 4))], [("y", F)])
    case("lrn_size3_attrs", 13, [node("LRN", ["x"], ["y"], size=3, alpha=0.01, beta=0.5, bias=2.0)],
         [("x", rand(2, 6, 3, 3))], [("y", F)])


def reduce_cases():
    x = rand(2, 3, 4)
    case("reducesum_op11_attr", 11, [node("ReduceSum", ["x"], ["y"], axes=[1])], [("x", x)], [("y", F)])
    case("reducesum_op13_input", 13, [node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)], [("x", x)], [("y", F)],
         inits=[("axes", np.array([0, -1], np.int64))])
    case("reducesum_op13_all", 13, [node("ReduceSum", ["x"], ["y"])], [("x", x)], [("y", F)])
    case("reducemean_op13_attr", 13, [node("ReduceMean", ["x"], ["y"], axes=[-1], keepdims=0)], [("x", x)], [("y", F)])
    case("reducemean_op18_input", 18, [node("ReduceMean", ["x", "axes"], ["y"])], [("x", x)], [("y", F)],
         inits=[("axes", np.array([1, 2], np.int64))])
    case("reducemax_all", 13, [node("ReduceMax", ["x"], ["y"])], [("x", x)], [("y", F)])
    case("reducemin_op18", 18, [node("ReduceMin", ["x", "axes"], ["y"])], [("x", x)], [("y", F)],
         inits=[("axes", np.array([0], np.int64))])
    case("reduceprod", 13, [node("ReduceProd", ["x"], ["y"], axes=[2])], [("x", x)], [("y", F)])
    case("reducel2", 13, [node("ReduceL2", ["x"], ["y"], axes=[1])], [("x", x)], [("y", F)])
    case("reducesumsquare", 13, [node("ReduceSumSquare", ["x"], ["y"], axes=[0, 2], keepdims=0)], [("x", x)], [("y", F)])
    case("argmax_default", 13, [node("ArgMax", ["x"], ["y"])], [("x", x)], [("y", I64)])
    case("argmin_axis1", 13, [node("ArgMin", ["x"], ["y"], axis=1, keepdims=0)], [("x", x)], [("y", I64)])


def movement_cases():
    x = rand(2, 3, 4)
    i64 = lambda *v: np.array(v, np.int64)
    case("reshape_zero_minus1", 13, [node("Reshape", ["x", "s"], ["y"])], [("x", x)], [("y", F)], inits=[("s", i64(0, -1))])
    case("flatten_default", 13, [node("Flatten", ["x"], ["y"])], [("x", x)], [("y", F)])
    case("flatten_axis0", 13, [node("Flatten", ["x"], ["y"], axis=0)], [("x", x)], [("y", F)])
    case("flatten_axis_neg1", 13, [node("Flatten", ["x"], ["y"], axis=-1)], [("x", x)], [("y", F)])
    case("transpose_default", 13, [node("Transpose", ["x"], ["y"])], [("x", x)], [("y", F)])
    case("transpose_perm", 13, [node("Transpose", ["x"], ["y"], perm=[1, 0, 2])], [("x", x)], [("y", F)])
    y = rand(3, 1, 4, 1)
    case("squeeze_op11_attr", 11, [node("Squeeze", ["x"], ["y"], axes=[1])], [("x", y)], [("y", F)])
    case("squeeze_op13_all", 13, [node("Squeeze", ["x"], ["y"])], [("x", y)], [("y", F)])
    case("unsqueeze_op11_attr", 11, [node("Unsqueeze", ["x"], ["y"], axes=[0, -1])], [("x", x)], [("y", F)])
    case("unsqueeze_op13_input", 13, [node("Unsqueeze", ["x", "a"], ["y"])], [("x", x)], [("y", F)], inits=[("a", i64(1, 3))])
    case("concat_neg_axis", 13, [node("Concat", ["a", "b"], ["y"], axis=-1)], [("a", x), ("b", rand(2, 3, 2))], [("y", F)])
    case("split_op11_attr", 11, [node("Split", ["x"], ["a", "b"], axis=2, split=[1, 3])], [("x", x)], [("a", F), ("b", F)])
    case("split_op13_equal", 13, [node("Split", ["x"], ["a", "b", "c"], axis=1)], [("x", x)], [("a", F), ("b", F), ("c", F)])
    case("split_op18_uneven", 18, [node("Split", ["x"], ["a", "b", "c"], axis=2, num_outputs=3)], [("x", rand(2, 3, 5))],
         [("a", F), ("b", F), ("c", F)])
    case("slice_op9_attrs", 9, [node("Slice", ["x"], ["y"], starts=[1, -3], ends=[100, -1], axes=[1, 2])], [("x", x)], [("y", F)])
    case("slice_op13_steps", 13, [node("Slice", ["x", "s", "e", "a", "st"], ["y"])], [("x", rand(5, 6))], [("y", F)],
         inits=[("s", i64(-1, 0)), ("e", i64(-6, 6)), ("a", i64(0, 1)), ("st", i64(-2, 2))])
    case("gather_axis1_negative", 13, [node("Gather", ["x", "i"], ["y"], axis=1)], [("x", x)], [("y", F)],
         inits=[("i", np.array([[0, -1], [1, 2]], np.int64))])
    case("gather_runtime_indices", 13, [node("Gather", ["x", "i"], ["y"])],
         [("x", rand(5, 3)), ("i", np.array([4, 0, 2, 2], np.int64))], [("y", F)])
    case("expand_bidirectional", 13, [node("Expand", ["x", "s"], ["y"])], [("x", rand(3, 1))], [("y", F)],
         inits=[("s", i64(2, 1, 4))])
    case("tile", 13, [node("Tile", ["x", "r"], ["y"])], [("x", rand(2, 3))], [("y", F)], inits=[("r", i64(2, 3))])
    case("pad_op10_attrs", 10, [node("Pad", ["x"], ["y"], pads=[0, 1, 2, 1, 0, 0], value=1.5)], [("x", x)], [("y", F)])
    case("pad_op13_reflect", 13, [node("Pad", ["x", "p"], ["y"], mode="reflect")], [("x", x)], [("y", F)],
         inits=[("p", i64(0, 1, 2, 0, 1, 1))])
    case("pad_op18_axes_edge", 18, [node("Pad", ["x", "p", "", "a"], ["y"], mode="edge")], [("x", x)], [("y", F)],
         inits=[("p", i64(2, 1)), ("a", i64(-1))])
    case("clip_op7_attrs", 7, [node("Clip", ["x"], ["y"], min=-0.5, max=0.7)], [("x", x)], [("y", F)])
    case("clip_op13_inputs", 13, [node("Clip", ["x", "lo", "hi"], ["y"])], [("x", x)], [("y", F)],
         inits=[("lo", np.array(-0.3, np.float32)), ("hi", np.array(0.2, np.float32))])
    case("clip_op13_min_only", 13, [node("Clip", ["x", "lo"], ["y"])], [("x", x)], [("y", F)],
         inits=[("lo", np.array(0.1, np.float32))])
    case("cast_to_int_and_back", 13, [node("Cast", ["x"], ["i"], to=I64), node("Cast", ["i"], ["y"], to=F)],
         [("x", x * 3)], [("y", F)])
    case("dropout_op7", 7, [node("Dropout", ["x"], ["y"], ratio=0.3)], [("x", x)], [("y", F)])
    case("dropout_op13", 13, [node("Dropout", ["x"], ["y"])], [("x", x)], [("y", F)])
    # a shape subgraph: Shape -> Gather -> Unsqueeze -> Concat -> Reshape, folded at compile time
    case("shape_subgraph", 13, [
        node("Shape", ["x"], ["s"]),
        node("Gather", ["s", "i0"], ["d0"], axis=0),
        node("Unsqueeze", ["d0", "ax"], ["d0u"]),
        node("Concat", ["d0u", "m1"], ["shape"], axis=0),
        node("Reshape", ["x", "shape"], ["y"]),
    ], [("x", x)], [("y", F)], inits=[("i0", np.array(0, np.int64)), ("ax", i64(0)), ("m1", i64(-1))])
    case("constant_of_shape_range", 13, [
        node("Constant", [], ["n"], value=numpy_helper.from_array(np.array(4, np.int64))),
        node("Range", ["zero", "n", "one"], ["r"]),
        node("Cast", ["r"], ["rf"], to=F),
        node("ConstantOfShape", ["s"], ["c"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
        node("Add", ["x", "rf"], ["t"]),
        node("Mul", ["t", "c"], ["y"]),
    ], [("x", x)], [("y", F)], inits=[("zero", np.array(0, np.int64)), ("one", np.array(1, np.int64)), ("s", i64(3, 4))])


def quant_cases():
    U8, I8, I32 = TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32
    x = rand(2, 3, 4) * 4
    case("quantize_u8_default_zp", 13, [node("QuantizeLinear", ["x", "s"], ["y"])], [("x", x)], [("y", U8)],
         inits=[("s", np.array(0.05, np.float32))])
    case("quantize_i8_per_axis", 13, [node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=1)], [("x", x)], [("y", I8)],
         inits=[("s", np.array([0.02, 0.05, 0.1], np.float32)), ("z", np.array([3, -2, 0], np.int8))])
    case("quantize_op10", 10, [node("QuantizeLinear", ["x", "s", "z"], ["y"])], [("x", x)], [("y", U8)],
         inits=[("s", np.array(0.03, np.float32)), ("z", np.array(128, np.uint8))])
    q = RNG.integers(-128, 128, (2, 3, 4)).astype(np.int8)
    case("dequantize_i8_per_axis", 13, [node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=-1)], [("q", q)], [("y", F)],
         inits=[("s", np.array([0.1, 0.2, 0.05, 1.5], np.float32)), ("z", np.array([1, 0, -3, 7], np.int8))])
    qu = RNG.integers(0, 256, (3, 5)).astype(np.uint8)
    case("dequantize_u8_op10", 10, [node("DequantizeLinear", ["q", "s", "z"], ["y"])], [("q", qu)], [("y", F)],
         inits=[("s", np.array(0.25, np.float32)), ("z", np.array(100, np.uint8))])
    case("quantize_dequantize_matmul", 13, [
        node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        node("DequantizeLinear", ["q", "s", "z"], ["xd"]),
        node("DequantizeLinear", ["wq", "ws"], ["w"], axis=1),
        node("MatMul", ["xd", "w"], ["y"]),
    ], [("x", rand(3, 8))], [("y", F)], inits=[
        ("s", np.array(0.02, np.float32)), ("z", np.array(0, np.int8)),
        ("wq", RNG.integers(-127, 128, (8, 4)).astype(np.int8)), ("ws", np.array([0.01, 0.02, 0.03, 0.04], np.float32)),
    ])
    a = RNG.integers(0, 256, (3, 5)).astype(np.uint8)
    b = RNG.integers(-128, 128, (5, 4)).astype(np.int8)
    case("matmulinteger_zero_points", 10, [node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])], [("a", a), ("b", b)],
         [("y", I32)], inits=[("az", np.array(7, np.uint8)), ("bz", np.array([1, -2, 0, 3], np.int8))])
    case("matmulinteger_plain", 10, [node("MatMulInteger", ["a", "b"], ["y"])],
         [("a", a), ("b", RNG.integers(0, 256, (5, 2)).astype(np.uint8))], [("y", I32)])


def gpt2_block_case():
    """A GPT-2-style decoder block (pre-norm, causal multi-head attention,
    tanh-GELU MLP written with Pow and Tanh as exporters write it), with
    head reshapes computed from Shape as exported models compute them."""
    S, D, H = 5, 16, 2
    hd = D // H
    i64 = lambda *v: np.array(v, np.int64)
    w = lambda *s: (rand(*s) / np.sqrt(s[0])).astype(np.float32)
    mask = np.triu(np.full((S, S), -1e9, np.float32), 1)
    inits = [
        ("ln1_g", rand(D)), ("ln1_b", rand(D)), ("w_qkv", w(D, 3 * D)), ("b_qkv", rand(3 * D)),
        ("w_o", w(D, D)), ("b_o", rand(D)), ("ln2_g", rand(D)), ("ln2_b", rand(D)),
        ("w_fc", w(D, 4 * D)), ("b_fc", rand(4 * D)), ("w_proj", w(4 * D, D)), ("b_proj", rand(D)),
        ("split", i64(D, D, D)), ("mask", mask), ("heads", i64(H, hd)), ("idx01", i64(0, 1)),
        ("merged", i64(D)), ("scale", np.array(1 / np.sqrt(hd), np.float32)),
        ("three", np.array(3.0, np.float32)), ("c0044", np.array(0.044715, np.float32)),
        ("c_s2pi", np.array(np.sqrt(2 / np.pi), np.float32)), ("half", np.array(0.5, np.float32)),
        ("one", np.array(1.0, np.float32)),
    ]
    nodes = [
        node("LayerNormalization", ["x", "ln1_g", "ln1_b"], ["ln1"], epsilon=1e-5),
        node("MatMul", ["ln1", "w_qkv"], ["qkv0"]),
        node("Add", ["qkv0", "b_qkv"], ["qkv"]),
        node("Split", ["qkv", "split"], ["q0", "k0", "v0"], axis=2),
        node("Shape", ["x"], ["xs"]),
        node("Gather", ["xs", "idx01"], ["bs"], axis=0),
        node("Concat", ["bs", "heads"], ["head_shape"], axis=0),
        node("Concat", ["bs", "merged"], ["merged_shape"], axis=0),
    ]
    for t in ["q", "k", "v"]:
        nodes += [
            node("Reshape", [f"{t}0", "head_shape"], [f"{t}1"]),
            node("Transpose", [f"{t}1"], [f"{t}h"], perm=[0, 2, 1, 3]),
        ]
    nodes += [
        node("Transpose", ["kh"], ["kt"], perm=[0, 1, 3, 2]),
        node("MatMul", ["qh", "kt"], ["s0"]),
        node("Mul", ["s0", "scale"], ["s1"]),
        node("Add", ["s1", "mask"], ["s2"]),
        node("Softmax", ["s2"], ["p"], axis=-1),
        node("MatMul", ["p", "vh"], ["a0"]),
        node("Transpose", ["a0"], ["a1"], perm=[0, 2, 1, 3]),
        node("Reshape", ["a1", "merged_shape"], ["a2"]),
        node("MatMul", ["a2", "w_o"], ["o0"]),
        node("Add", ["o0", "b_o"], ["o1"]),
        node("Add", ["x", "o1"], ["r1"]),
        node("LayerNormalization", ["r1", "ln2_g", "ln2_b"], ["ln2"], epsilon=1e-5),
        node("MatMul", ["ln2", "w_fc"], ["f0"]),
        node("Add", ["f0", "b_fc"], ["h"]),
        node("Pow", ["h", "three"], ["h3"]),
        node("Mul", ["h3", "c0044"], ["h3s"]),
        node("Add", ["h", "h3s"], ["inner0"]),
        node("Mul", ["inner0", "c_s2pi"], ["inner"]),
        node("Tanh", ["inner"], ["t"]),
        node("Add", ["t", "one"], ["t1"]),
        node("Mul", ["h", "t1"], ["g0"]),
        node("Mul", ["g0", "half"], ["g"]),
        node("MatMul", ["g", "w_proj"], ["m0"]),
        node("Add", ["m0", "b_proj"], ["m1"]),
        node("Add", ["r1", "m1"], ["y"]),
    ]
    case("gpt2_block", 17, nodes, [("x", rand(1, S, D))], [("y", F)], inits=inits)


def dynamic_attention_case():
    """Multi-head self-attention over an input of symbolic shape [batch, seq,
    16], its head reshapes computed from Shape as exporters with dynamic
    axes write them (Shape, Gather, Unsqueeze, Slice, Concat, Reshape with 0
    and -1), and a ConstantOfShape of the input's shape."""
    D, H = 16, 2
    hd = D // H
    i64 = lambda *v: np.array(v, np.int64)
    w = lambda *s: (rand(*s) / np.sqrt(s[0])).astype(np.float32)
    inits = [
        ("w_qkv", w(D, 3 * D)), ("w_o", w(D, D)), ("split", i64(D, D, D)), ("heads", i64(H, hd)),
        ("i0", np.array(0, np.int64)), ("i1", np.array(1, np.int64)), ("ax0", i64(0)),
        ("s0", i64(0)), ("s2", i64(2)), ("minus1", i64(-1)),
        ("scale", np.array(1 / np.sqrt(hd), np.float32)), ("half", np.array(0.5, np.float32)),
    ]
    nodes = [
        node("MatMul", ["x", "w_qkv"], ["qkv"]),
        node("Split", ["qkv", "split"], ["q0", "k0", "v0"], axis=2),
        node("Shape", ["x"], ["xs"]),
        node("Slice", ["xs", "s0", "s2"], ["bs"]),
        node("Concat", ["bs", "heads"], ["head_shape"], axis=0),
        node("Gather", ["xs", "i0"], ["b"]),
        node("Gather", ["xs", "i1"], ["t"]),
        node("Unsqueeze", ["b", "ax0"], ["bu"]),
        node("Unsqueeze", ["t", "ax0"], ["tu"]),
        node("Concat", ["bu", "tu", "minus1"], ["merged_shape"], axis=0),
    ]
    for t in ["q", "k", "v"]:
        nodes += [
            node("Reshape", [f"{t}0", "head_shape"], [f"{t}1"]),
            node("Transpose", [f"{t}1"], [f"{t}h"], perm=[0, 2, 1, 3]),
        ]
    nodes += [
        node("Transpose", ["kh"], ["kt"], perm=[0, 1, 3, 2]),
        node("MatMul", ["qh", "kt"], ["s"]),
        node("Mul", ["s", "scale"], ["ss"]),
        node("Softmax", ["ss"], ["p"], axis=-1),
        node("MatMul", ["p", "vh"], ["a0"]),
        node("Transpose", ["a0"], ["a1"], perm=[0, 2, 1, 3]),
        node("Reshape", ["a1", "merged_shape"], ["a2"]),
        node("MatMul", ["a2", "w_o"], ["o"]),
        node("ConstantOfShape", ["xs"], ["ones"], value=numpy_helper.from_array(np.array([1.0], np.float32))),
        node("Mul", ["ones", "half"], ["halves"]),
        node("Add", ["o", "halves"], ["o2"]),
        node("Add", ["x", "o2"], ["y"]),
    ]
    case("dynamic_attention", 13, nodes, [("x", rand(2, 5, D))], [("y", F)], inits=inits,
         dims={"x": ["batch", "seq", D]})


def qlinear_cases():
    """QLinearMatMul: per tensor (u8), per column of b (i8), batched; per row
    of a and y (`[M, 1]`; onnxruntime does not implement them) from onnx's
    reference."""
    U8, I8 = TensorProto.UINT8, TensorProto.INT8
    a = RNG.integers(0, 256, (3, 6)).astype(np.uint8)
    b = RNG.integers(0, 256, (6, 4)).astype(np.uint8)
    ins = ["a", "as", "az", "b", "bs", "bz", "ys", "yz"]
    case("qlinearmatmul_u8", 10, [node("QLinearMatMul", ins, ["y"])], [("a", a), ("b", b)], [("y", U8)], inits=[
        ("as", np.array(0.02, np.float32)), ("az", np.array(120, np.uint8)), ("bs", np.array(0.03, np.float32)),
        ("bz", np.array(130, np.uint8)), ("ys", np.array(0.05, np.float32)), ("yz", np.array(100, np.uint8))])
    a = RNG.integers(-128, 128, (2, 3, 6)).astype(np.int8)
    b = RNG.integers(-128, 128, (6, 5)).astype(np.int8)
    case("qlinearmatmul_i8_per_column_batched", 21, [node("QLinearMatMul", ins, ["y"])], [("a", a), ("b", b)],
         [("y", I8)], inits=[
        ("as", np.array(0.05, np.float32)), ("az", np.array(3, np.int8)),
        ("bs", np.array([0.01, 0.02, 0.03, 0.015, 0.025], np.float32)), ("bz", np.array([0, 1, -1, 2, 0], np.int8)),
        ("ys", np.array(0.4, np.float32)), ("yz", np.array(-5, np.int8))])
    a = RNG.integers(0, 256, (4, 6)).astype(np.uint8)
    case("qlinearmatmul_per_row_reference", 21, [node("QLinearMatMul", ins, ["y"])], [("a", a), ("b", b.astype(np.uint8))],
         [("y", U8)], reference=True, inits=[
        ("as", np.array([[0.01], [0.02], [0.03], [0.04]], np.float32)), ("az", np.array([[1], [2], [3], [4]], np.uint8)),
        ("bs", np.array([0.01, 0.02, 0.03, 0.015, 0.025], np.float32)), ("bz", np.array([5, 6, 7, 8, 9], np.uint8)),
        ("ys", np.array([[0.5], [0.6], [0.7], [0.8]], np.float32)), ("yz", np.array([[10], [20], [30], [40]], np.uint8))])


def opset23_cases():
    """Attention (4-D and 3-D, grouped-query, causal with and without a KV
    cache, boolean and additive masks, a scale) and RMSNormalization."""
    BOOL_ = TensorProto.BOOL
    q, k, v = rand(2, 4, 5, 8), rand(2, 2, 5, 8), rand(2, 2, 5, 8)
    case("attention23_gqa_causal", 23, [node("Attention", ["q", "k", "v"], ["y"], is_causal=1)],
         [("q", q), ("k", k), ("v", v)], [("y", F)])
    kl = rand(2, 2, 7, 8)
    case("attention23_causal_more_keys", 23, [node("Attention", ["q", "k", "v"], ["y"], is_causal=1)],
         [("q", q), ("k", kl), ("v", rand(2, 2, 7, 8))], [("y", F)])
    pk, pv = rand(2, 2, 3, 8), rand(2, 2, 3, 8)
    case("attention23_kv_cache", 23,
         [node("Attention", ["q", "k", "v", "", "pk", "pv"], ["y", "present_k", "present_v"], is_causal=1, scale=0.2)],
         [("q", q), ("k", k), ("v", v), ("pk", pk), ("pv", pv)], [("y", F), ("present_k", F), ("present_v", F)])
    bmask = RNG.random((2, 1, 5, 5)) > 0.3
    bmask[..., 0] = True
    case("attention23_bool_mask", 23, [node("Attention", ["q", "k", "v", "m"], ["y"])],
         [("q", q), ("k", k), ("v", v), ("m", bmask)], [("y", F)])
    q3, k3, v3 = rand(2, 5, 32), rand(2, 5, 16), rand(2, 5, 16)
    case("attention23_rank3_float_mask", 23,
         [node("Attention", ["q", "k", "v", "m"], ["y"], q_num_heads=4, kv_num_heads=2)],
         [("q", q3), ("k", k3), ("v", v3), ("m", rand(5, 5))], [("y", F)])
    case("rmsnormalization23", 23, [node("RMSNormalization", ["x", "g"], ["y"], axis=-1, epsilon=1e-4)],
         [("x", rand(2, 3, 8))], [("y", F)], inits=[("g", rand(8))])
    case("rmsnormalization23_two_axes", 23, [node("RMSNormalization", ["x", "g"], ["y"], axis=1)],
         [("x", rand(2, 3, 4))], [("y", F)], inits=[("g", rand(3, 4))])


def dynamic_quant_cases():
    """DynamicQuantizeLinear alone (mixed signs; all positive, so the zero
    point is 0), and a linear layer as onnxruntime's dynamic quantization
    (`quantize_dynamic`, int8 weights) rewrites it: DynamicQuantizeLinear,
    MatMulInteger, Cast and the scales' Mul."""
    U8 = TensorProto.UINT8
    outs = [("y", U8), ("y_scale", F), ("y_zero_point", U8)]
    case("dynamicquantizelinear", 11, [node("DynamicQuantizeLinear", ["x"], ["y", "y_scale", "y_zero_point"])],
         [("x", rand(3, 7) * 2)], outs)
    case("dynamicquantizelinear_positive", 11,
         [node("DynamicQuantizeLinear", ["x"], ["y", "y_scale", "y_zero_point"])],
         [("x", rand(2, 3, 2, 4, positive=True))], outs)
    import tempfile
    from onnxruntime.quantization import QuantType, quantize_dynamic
    w = (rand(16, 8) / 4).astype(np.float32)
    b = rand(8)
    graph = helper.make_graph(
        [node("MatMul", ["x", "w"], ["xw"]), node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", F, ["batch", 16])],
        [helper.make_tensor_value_info("y", F, None)],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "f.onnx"), os.path.join(tmp, "q.onnx")
        onnx.save(model, src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        quantized = onnx.load(dst)
    ops = [n.op_type for n in quantized.graph.node]
    assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops, ops
    save_case("ort_dynamic_quantized_linear", quantized, [("x", rand(5, 16))], ["y"])


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    unary_cases()
    binary_cases()
    nn_cases()
    reduce_cases()
    movement_cases()
    quant_cases()
    gpt2_block_case()
    dynamic_attention_case()
    qlinear_cases()
    opset23_cases()
    dynamic_quant_cases()
    with open(os.path.join(OUT, "cases.txt"), "w") as f:
        f.write("# case inputs... -> outputs... (written by scripts/make_onnx_op_fixtures.py)\n")
        f.write("\n".join(CASES) + "\n")
    print(f"wrote {len(CASES)} cases to {OUT}")


if __name__ == "__main__":
    main()
