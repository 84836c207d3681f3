//! Unit tests of the subtle lowerings: each graph is lowered as one fused
//! kernel per output and as one kernel per op, run launch by launch with
//! the kernel evaluator, and compared with the reference interpreter on
//! fresh random inputs (normal floats, never all zeros; small integers).
//! Tolerance: 1e-5 of the output's largest magnitude for f32, exact for
//! integers and bools.

use std::collections::{HashMap, HashSet};

use kiln_dialect::graph::{Graph, NodeId, Value};
use kiln_dialect::interp::{self, Tensor};
use kiln_dialect::ops::{Op, PadMode};
use kiln_dialect::shape::Dim;
use kiln_dialect::{DType, Shape, TensorType};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::{lower_plan, run_program};
use crate::extract::Kind;
use crate::plan::{Kernel, Plan};

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
}

fn kind_of(op: &Op) -> Kind {
    match op {
        Op::Matmul { .. } | Op::Conv2d { .. } | Op::ConvTranspose2d { .. } => Kind::Contract,
        _ => Kind::Elem,
    }
}

fn is_source(op: &Op) -> bool {
    matches!(op, Op::Input | Op::Weight | Op::Constant { .. })
}

fn plan(g: &Graph, kernels: Vec<Kernel>) -> Plan {
    Plan {
        graph: g.clone(),
        made_from: HashMap::new(),
        kernels,
        target: "test",
        seconds: 0.0,
    }
}

fn kernel(kind: Kind, output: Value, nodes: Vec<NodeId>) -> Kernel {
    Kernel {
        kind,
        output,
        nodes,
        reads: Vec::new(),
        bind_time: false,
        seconds: 0.0,
    }
}

/// One kernel per op result.
fn per_op(g: &Graph) -> Plan {
    let mut ks = Vec::new();
    for id in g.topo_order().unwrap() {
        let n = g.node(id);
        if is_source(&n.op) {
            continue;
        }
        for port in 0..n.results.len() {
            ks.push(kernel(
                kind_of(&n.op),
                Value {
                    node: id,
                    port: port as u32,
                },
                vec![id],
            ));
        }
    }
    plan(g, ks)
}

/// One kernel per graph output, every op it needs fused in.
fn fused(g: &Graph) -> Plan {
    let order = g.topo_order().unwrap();
    let mut ks = Vec::new();
    for o in g.outputs() {
        let mut need: HashSet<NodeId> = HashSet::new();
        let mut stack = vec![o.value.node];
        while let Some(n) = stack.pop() {
            if is_source(&g.node(n).op) || !need.insert(n) {
                continue;
            }
            stack.extend(g.operands(n).iter().map(|v| v.node));
        }
        if need.is_empty() {
            continue;
        }
        let nodes: Vec<NodeId> = order.iter().copied().filter(|n| need.contains(n)).collect();
        // A contraction kernel when the tree holds one, as the planner says.
        let kind = if nodes
            .iter()
            .any(|&n| kind_of(&g.node(n).op) == Kind::Contract)
        {
            Kind::Contract
        } else {
            Kind::Elem
        };
        ks.push(kernel(kind, o.value, nodes));
    }
    plan(g, ks)
}

fn random(rng: &mut ChaCha8Rng, ty: &TensorType, dims: &HashMap<String, usize>) -> Tensor {
    let shape = ty.shape.resolve(dims).unwrap();
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            if ty.dtype.has_integer_values() {
                rng.random_range(0..3) as f64
            } else {
                rng.sample::<f64, _>(StandardNormal)
            }
        })
        .collect();
    Tensor::new(ty.dtype, &shape, data)
}

/// Lowers `g` both ways, runs, compares every output with the interpreter.
fn check(g: &Graph, dims: &[(&str, usize)]) {
    check_for(g, dims, "test");
}

/// [`check`] with plans for `target` (whose cost table picks lowerings).
fn check_for(g: &Graph, dims: &[(&str, usize)], target: &'static str) {
    kiln_dialect::verify::verify(g).expect("test graph verifies");
    let dims: HashMap<String, usize> = dims.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let s = seed();
    let mut rng = ChaCha8Rng::seed_from_u64(s);
    let mut bindings = HashMap::new();
    for v in g.inputs().into_iter().chain(g.weights()) {
        bindings.insert(
            g.value_name(v).to_string(),
            random(&mut rng, g.value_type(v), &dims),
        );
    }
    let want = interp::run(g, &bindings).expect("interpreter runs");
    for (how, mut p) in [("fused", fused(g)), ("per-op", per_op(g))] {
        p.target = target;
        let prog = lower_plan(&p).unwrap_or_else(|e| panic!("{how}: {e}"));
        let got = run_program(&prog, &bindings).unwrap_or_else(|e| {
            let text: Vec<String> = prog.launches.iter().map(|l| l.kernel.to_string()).collect();
            panic!("{how}: {e}\n{}", text.join(""))
        });
        for ((n, a), (_, b)) in want.iter().zip(&got) {
            assert_eq!(
                (a.dtype, &a.shape),
                (b.dtype, &b.shape),
                "{how}: output {n}"
            );
            let scale = a.data.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
            let tol = if a.dtype.has_integer_values() {
                0.0
            } else {
                1e-5
            };
            let d = a.max_abs_diff(b) / scale;
            if d > tol
                || a.data
                    .iter()
                    .zip(&b.data)
                    .any(|(x, y)| x.is_nan() != y.is_nan())
            {
                let text: Vec<String> =
                    prog.launches.iter().map(|l| l.kernel.to_string()).collect();
                panic!(
                    "{how}: output {n} differs by {d} (seed {s})\nwant {:?}\ngot  {:?}\n{}",
                    a.data,
                    b.data,
                    text.join("")
                );
            }
        }
    }
}

fn f32s(dims: &[u64]) -> TensorType {
    TensorType::of(DType::F32, dims)
}

fn op(g: &mut Graph, op: Op, args: &[Value]) -> Value {
    g.add1(op, args).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn reshape_index_math() {
    let mut g = Graph::new("reshape");
    let x = g.add_input("x", f32s(&[2, 3, 4]));
    let shape = |d: &[u64]| d.iter().map(|&n| Dim::Static(n)).collect::<Vec<_>>();
    let a = op(
        &mut g,
        Op::Reshape {
            shape: shape(&[4, 6]),
        },
        &[x],
    );
    let t = op(&mut g, Op::Transpose { perm: vec![1, 0] }, &[a]);
    let b = op(
        &mut g,
        Op::Reshape {
            shape: shape(&[3, 8]),
        },
        &[t],
    );
    let e = op(&mut g, Op::Exp, &[b]);
    let c = op(
        &mut g,
        Op::Reshape {
            shape: shape(&[2, 1, 12]),
        },
        &[e],
    );
    g.add_output("c", c);
    let y = g.add_input(
        "y",
        TensorType::new(DType::F32, Shape(vec![Dim::sym("n"), 6.into()])),
    );
    let r = op(
        &mut g,
        Op::Reshape {
            shape: vec![Dim::sym("n"), 3.into(), 2.into()],
        },
        &[y],
    );
    let rt = op(
        &mut g,
        Op::Transpose {
            perm: vec![2, 0, 1],
        },
        &[r],
    );
    g.add_output("rt", rt);
    check(&g, &[("n", 3)]);
}

#[test]
fn negative_step_slices() {
    let mut g = Graph::new("slices");
    let x = g.add_input("x", f32s(&[7, 6]));
    type Case<'a> = (&'a [i64], &'a [i64], &'a [i64], &'a [i64]);
    let cases: [Case; 5] = [
        (&[0], &[-1], &[-8], &[-2]),
        (&[0, 1], &[5, 4], &[1, 0], &[-1, -3]),
        (&[1], &[10], &[-10], &[-1]),
        (&[1], &[-2], &[100], &[1]),
        (&[0], &[2], &[7], &[]),
    ];
    for (i, (axes, starts, ends, steps)) in cases.iter().enumerate() {
        let s = op(
            &mut g,
            Op::Slice {
                axes: axes.to_vec(),
                starts: starts.to_vec(),
                ends: ends.to_vec(),
                steps: steps.to_vec(),
            },
            &[x],
        );
        let n = op(&mut g, Op::Neg, &[s]);
        g.add_output(&format!("s{i}"), n);
    }
    let y = g.add_input(
        "y",
        TensorType::new(DType::F32, Shape(vec![Dim::sym("n"), 4.into()])),
    );
    let s = op(
        &mut g,
        Op::Slice {
            axes: vec![0, 1],
            starts: vec![0, -1],
            ends: vec![i64::MAX, -100],
            steps: vec![1, -1],
        },
        &[y],
    );
    g.add_output("sym", s);
    check(&g, &[("n", 5)]);
}

#[test]
fn pad_modes() {
    let mut g = Graph::new("pads");
    let x = g.add_input("x", f32s(&[3, 4]));
    for (i, (mode, value)) in [
        (PadMode::Constant, 0.0),
        (PadMode::Constant, 1.5),
        (PadMode::Reflect, 0.0),
        (PadMode::Edge, 0.0),
    ]
    .into_iter()
    .enumerate()
    {
        let e = op(&mut g, Op::Tanh, &[x]);
        let p = op(
            &mut g,
            Op::Pad {
                pads: vec![2, 0, 1, 3],
                mode,
                value,
            },
            &[e],
        );
        g.add_output(&format!("p{i}"), p);
    }
    check(&g, &[]);
}

#[test]
fn conv_groups_dilation_and_transposed() {
    let mut g = Graph::new("convs");
    let x = g.add_input("x", f32s(&[2, 4, 7, 6]));
    let w = g.add_weight("w", f32s(&[6, 2, 3, 2]));
    let b = g.add_weight("b", f32s(&[6]));
    let c = op(
        &mut g,
        Op::Conv2d {
            stride: vec![2, 1],
            padding: vec![1, 2, 0, 1],
            dilation: vec![2, 1],
            groups: 2,
        },
        &[x, w, b],
    );
    let r = op(&mut g, Op::Relu, &[c]);
    g.add_output("conv", r);
    let wt = g.add_weight("wt", f32s(&[4, 3, 3, 3]));
    let ct = op(
        &mut g,
        Op::ConvTranspose2d {
            stride: vec![2, 2],
            padding: vec![1, 0, 1, 0],
            output_padding: vec![1, 0],
            dilation: vec![1, 2],
            groups: 2,
        },
        &[x, wt, b],
    );
    g.add_output("convt", ct);
    check(&g, &[]);
}

/// Pointwise convolutions become contractions over flat pixel views: with
/// and without bias, with an epilogue that reads the input again (so `x`
/// keeps its 4-D shape) and one that reads another tensor at the pixel.
#[test]
fn pointwise_conv_as_contraction() {
    let pointwise = || Op::Conv2d {
        stride: vec![1, 1],
        padding: vec![0, 0, 0, 0],
        dilation: vec![1, 1],
        groups: 1,
    };
    let mut g = Graph::new("pointwise");
    let x = g.add_input("x", f32s(&[2, 5, 3, 7]));
    let w = g.add_weight("w", f32s(&[6, 5, 1, 1]));
    let b = g.add_weight("b", f32s(&[6]));
    let c = op(&mut g, pointwise(), &[x, w, b]);
    let r = op(&mut g, Op::Relu, &[c]);
    g.add_output("biased", r);
    let w2 = g.add_weight("w2", f32s(&[5, 5, 1, 1]));
    let c2 = op(&mut g, pointwise(), &[x, w2]);
    let s = op(&mut g, Op::Add, &[c2, x]);
    g.add_output("residual", s);
    check(&g, &[]);
    let fused = lower_plan(&fused(&g)).unwrap();
    let text = fused.to_string();
    assert_eq!(
        text.matches("contract").count(),
        2,
        "both convs are contractions:\n{text}"
    );
    assert!(
        text.contains("f32[2, 6, 21]"),
        "a flat output view:\n{text}"
    );
}

#[test]
fn pooling_ceil_mode_and_padding() {
    let mut g = Graph::new("pools");
    let x = g.add_input("x", f32s(&[1, 2, 7, 8]));
    let m = op(
        &mut g,
        Op::MaxPool2d {
            kernel: vec![3, 2],
            stride: vec![2, 3],
            padding: vec![1, 0, 1, 1],
            dilation: vec![1, 2],
            ceil_mode: true,
        },
        &[x],
    );
    g.add_output("max", m);
    for (i, include) in [false, true].into_iter().enumerate() {
        let a = op(
            &mut g,
            Op::AvgPool2d {
                kernel: vec![3, 3],
                stride: vec![2, 2],
                padding: vec![1, 1, 1, 1],
                ceil_mode: true,
                count_include_pad: include,
            },
            &[x],
        );
        g.add_output(&format!("avg{i}"), a);
    }
    let gp = op(&mut g, Op::GlobalAvgPool, &[x]);
    g.add_output("gap", gp);
    check(&g, &[]);
}

/// A padded, grouped convolution reads its input through a guarded load,
/// never at an index outside it; printed for docs/kernels.md.
#[test]
fn padded_conv_is_a_guarded_load() {
    let mut g = Graph::new("conv");
    let x = g.add_input("x", f32s(&[1, 4, 5, 5]));
    let w = g.add_weight("w", f32s(&[4, 2, 3, 3]));
    let b = g.add_weight("b", f32s(&[4]));
    let c = op(
        &mut g,
        Op::Conv2d {
            stride: vec![1, 1],
            padding: vec![1, 1, 1, 1],
            dilation: vec![1, 1],
            groups: 2,
        },
        &[x, w, b],
    );
    g.add_output("y", c);
    let p = lower_plan(&fused(&g)).unwrap();
    let text = p.launches[0].kernel.to_string();
    println!("{text}");
    assert!(text.contains(" if and("), "{text}");
    check(&g, &[]);
}

/// Convolutions other than pointwise and depthwise ones become implicit
/// GEMMs for the `cpu` target (contractions over an im2col gather, output
/// and weight through views): odd sizes, strides, asymmetric padding,
/// dilation, groups, bias and epilogues (relu, a residual read at the
/// pixel), a strided 1x1 convolution, a symbolic batch; a depthwise
/// convolution and a conv with 2 output channels per group stay maps.
/// Against the interpreter through the evaluator (1e-5).
#[test]
fn implicit_gemm_convs() {
    let conv = |stride: [i64; 2], padding: [i64; 4], dilation: [i64; 2], groups: i64| Op::Conv2d {
        stride: stride.to_vec(),
        padding: padding.to_vec(),
        dilation: dilation.to_vec(),
        groups,
    };
    let mut g = Graph::new("igemm");
    let x = g.add_input(
        "x",
        TensorType {
            dtype: DType::F32,
            shape: Shape(vec![
                Dim::Sym("n".into()),
                Dim::Static(6),
                Dim::Static(9),
                Dim::Static(10),
            ]),
            layout: Default::default(),
            quant: None,
        },
    );
    let w1 = g.add_weight("w1", f32s(&[8, 6, 3, 3]));
    let b1 = g.add_weight("b1", f32s(&[8]));
    let c1 = op(&mut g, conv([1, 1], [1, 1, 1, 1], [1, 1], 1), &[x, w1, b1]);
    let r1 = op(&mut g, Op::Relu, &[c1]);
    g.add_output("relu", r1);
    let w2 = g.add_weight("w2", f32s(&[10, 3, 3, 5]));
    let c2 = op(&mut g, conv([2, 1], [0, 2, 1, 2], [2, 1], 2), &[x, w2]);
    g.add_output("grouped", c2);
    let w3 = g.add_weight("w3", f32s(&[6, 6, 3, 3]));
    let c3 = op(&mut g, conv([1, 1], [1, 1, 1, 1], [1, 1], 1), &[x, w3]);
    let s3 = op(&mut g, Op::Add, &[c3, x]);
    g.add_output("residual", s3);
    let w4 = g.add_weight("w4", f32s(&[5, 6, 1, 1]));
    let c4 = op(&mut g, conv([2, 2], [0, 0, 0, 0], [1, 1], 1), &[x, w4]);
    g.add_output("strided_1x1", c4);
    let w5 = g.add_weight("w5", f32s(&[6, 1, 3, 3]));
    let c5 = op(&mut g, conv([1, 1], [1, 1, 1, 1], [1, 1], 6), &[x, w5]);
    g.add_output("depthwise", c5);
    let w6 = g.add_weight("w6", f32s(&[6, 2, 3, 3]));
    let c6 = op(&mut g, conv([1, 1], [1, 1, 1, 1], [1, 1], 3), &[x, w6]);
    g.add_output("narrow_groups", c6);
    for n in [1, 3] {
        check_for(&g, &[("n", n)], "cpu");
    }
    let mut p = fused(&g);
    p.target = "cpu";
    let text = lower_plan(&p).unwrap().to_string();
    assert_eq!(
        text.matches(" contract ").count(),
        4,
        "four implicit GEMMs:\n{text}"
    );
    assert!(
        text.contains("f32[n, 2, 5, 30]") && text.contains("f32[2, 5, 45]"),
        "grouped output and weight views:\n{text}"
    );
}
