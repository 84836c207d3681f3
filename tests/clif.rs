//! The Cranelift backend against the kernel dialect's reference evaluator:
//! hand-built kernels covering every expression form, operation, storage
//! type, guards, reductions, softmax and layer_norm rows and contractions,
//! compiled, JIT-linked, run over several `[begin, end)` splits of axis 0
//! and compared with `kernel::eval::run` on fresh random inputs.
//!
//! Tolerances: exact (bit-equal values, NaN matching NaN) for f32, f64,
//! integer and bool results, transcendental helpers included (they compute
//! in f64 and round, as the evaluator does), four-lane element-wise f32
//! kernels and `max`/`min` reductions included (the vector operations round
//! as the scalar ones); relative to the output's largest magnitude: 2e-6
//! where an f32 kernel computes `exp`, `erf` or `tanh` (inline polynomial
//! approximations, within about 1e-6 relative of the f64 functions), 1e-5
//! for f32 sums run four lanes at a time (added in another order than the
//! evaluator's sequential loop; a row of n terms of size s is off by about
//! sqrt(n) * s * 2^-24), and 1e-5 for contractions through the blocked path
//! with FMA (the products are not rounded before the add). The seed is
//! printed on failure; `KILN_SEED` reruns one.

mod common;

use std::collections::HashMap;

use kiln::codegen::{clif_text, compile_kernel};
use kiln_dialect::interp::Tensor;
use kiln_dialect::kernel::{Binary, Body, Buffer, Expr, Kernel, Reduction, Ty, Unary, Var};
use kiln_dialect::{DType, Dim, Shape, numeric};
use kiln_runtime::HostTensor;
use kiln_runtime::cpu::jit::{JitModule, host_isa};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use common::{bin, ld, un, v, values};

const ALL: [DType; 17] = DType::ALL;

fn rng() -> (ChaCha8Rng, u64) {
    let seed = common::seed();
    (ChaCha8Rng::seed_from_u64(seed), seed)
}

fn fl(x: f64) -> Expr {
    Expr::Float(x)
}

fn buf(name: &str, dtype: DType, shape: &[usize]) -> Buffer {
    Buffer {
        name: name.into(),
        dtype,
        shape: Shape(shape.iter().map(|&n| Dim::Static(n as u64)).collect()),
    }
}

fn map(name: &str, float: Ty, inputs: Vec<Buffer>, output: Buffer, expr: Expr) -> Kernel {
    Kernel {
        name: name.into(),
        inputs,
        output,
        dims: vec![],
        float,
        body: Body::Map { expr },
    }
}

/// Compiles and runs `k` through the JIT over several ranges of axis 0 and
/// compares with the evaluator. `tol` is relative to the largest finite
/// expected magnitude (at least 1); 0 asks for equal values.
fn check_with(k: &Kernel, dims: &[(&str, usize)], tol: f64, inputs: Option<Vec<Vec<f64>>>) {
    let (mut rng, seed) = rng();
    let dmap: HashMap<String, usize> = dims.iter().map(|&(s, n)| (s.to_string(), n)).collect();
    let shapes: Vec<Vec<usize>> = k
        .inputs
        .iter()
        .map(|b| b.shape.resolve(&dmap).unwrap())
        .collect();
    let vals = inputs.unwrap_or_else(|| {
        k.inputs
            .iter()
            .zip(&shapes)
            .map(|(b, s)| values(&mut rng, b.dtype, s.iter().product()))
            .collect()
    });
    let tensors: Vec<Tensor> = k
        .inputs
        .iter()
        .zip(&shapes)
        .zip(&vals)
        .map(|((b, s), x)| Tensor::new(b.dtype, s, x.clone()))
        .collect();
    let refs: Vec<&Tensor> = tensors.iter().collect();
    let want = kiln_dialect::kernel::eval::run(k, &refs, &dmap)
        .unwrap_or_else(|e| panic!("evaluator: {e}"));

    let isa = host_isa().unwrap();
    let ck = compile_kernel(k, isa.as_ref()).unwrap_or_else(|e| panic!("{e}"));
    let text = clif_text(&ck);
    let jit =
        JitModule::new(isa.clone(), vec![ck.into()]).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let f = jit.get(&k.name).unwrap();
    let hosts: Vec<HostTensor> = k
        .inputs
        .iter()
        .zip(&shapes)
        .zip(&vals)
        .map(|((b, s), x)| HostTensor::from_values(b.dtype, s, x))
        .collect();
    let oshape = k.output.shape.resolve(&dmap).unwrap();
    let n: usize = oshape.iter().product();
    let mut out = HostTensor {
        dtype: k.output.dtype,
        shape: oshape.clone(),
        data: vec![0u8; k.output.dtype.storage_bytes(n)],
    };
    let dimv: Vec<i64> = k.dims.iter().map(|d| dmap[d] as i64).collect();
    let n0 = oshape.first().copied().unwrap_or(1) as i64;
    // Ranges: out-of-range ends are clamped; sub-byte outputs run in order.
    let s1 = rng.random_range(0..=n0);
    let s2 = rng.random_range(s1..=n0);
    let ranges = [(-3, s1), (s1, s2), (s2, n0 + 5)];
    for (lo, hi) in ranges {
        let mut args: Vec<*mut u8> = hosts.iter().map(|h| h.data.as_ptr() as *mut u8).collect();
        args.push(out.data.as_mut_ptr());
        // SAFETY: the buffers have the kernel's shapes and types.
        unsafe { f(args.as_ptr(), dimv.as_ptr(), lo, hi) };
    }
    let got = out.to_values();
    let scale = want
        .data
        .iter()
        .filter(|x| x.is_finite())
        .fold(1.0f64, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(&want.data).enumerate() {
        let ok =
            (g.is_nan() && w.is_nan()) || g == w || (tol > 0.0 && (g - w).abs() <= tol * scale);
        assert!(
            ok,
            "kernel `{}` (seed {seed}): element {i} of {oshape:?}: got {g}, want {w} \
             (ranges {ranges:?})\n{k}",
            k.name
        );
    }
}

fn check(k: &Kernel, tol: f64) {
    check_with(k, &[], tol, None)
}

const SIZES: [(usize, usize); 5] = [(1, 783), (3, 50), (50, 3), (783, 1), (1, 1)];

#[test]
fn unary_ops_f32_and_f64() {
    use Unary::*;
    for float in [Ty::F32, Ty::F64] {
        let d = if float == Ty::F32 {
            DType::F32
        } else {
            DType::F64
        };
        for op in [
            Neg, Abs, Exp, Log, Sqrt, Tanh, Erf, Sin, Cos, Floor, Ceil, Round,
        ] {
            for (r, c) in SIZES {
                let x = bin(Binary::Mul, ld(0, vec![v(0), v(1)]), fl(1.75));
                let k = map(
                    &format!("u_{}", op.name()),
                    float,
                    vec![buf("x", d, &[r, c])],
                    buf("y", d, &[r, c]),
                    un(op, x),
                );
                // f32 exp, erf and tanh are inline approximations (about
                // 1e-6 relative), the rest exact.
                let approx = float == Ty::F32 && matches!(op, Exp | Tanh | Erf);
                check(&k, if approx { 2e-6 } else { 0.0 });
            }
        }
    }
}

#[test]
fn unary_ops_on_integers_and_bools() {
    use Unary::*;
    for op in [Neg, Abs, Floor, Ceil, Round] {
        let k = map(
            "ui",
            Ty::F32,
            vec![buf("x", DType::I64, &[3, 50])],
            buf("y", DType::I64, &[3, 50]),
            un(op, ld(0, vec![v(0), v(1)])),
        );
        check(&k, 0.0);
    }
    let k = map(
        "not",
        Ty::F32,
        vec![buf("x", DType::Bool, &[50, 3])],
        buf("y", DType::Bool, &[50, 3]),
        un(Not, ld(0, vec![v(0), v(1)])),
    );
    check(&k, 0.0);
}

#[test]
fn binary_ops_every_type() {
    use Binary::*;
    let arith = [Add, Sub, Mul, Div, Pow, Max, Min];
    let cmp = [Eq, Ne, Lt, Le, Gt, Ge];
    for float in [Ty::F32, Ty::F64] {
        let d = if float == Ty::F32 {
            DType::F32
        } else {
            DType::F64
        };
        for op in arith.iter().chain(&cmp) {
            for (r, c) in [(3, 50), (783, 1)] {
                let out = if cmp.contains(op) { DType::Bool } else { d };
                // rounded inputs make equal operands common
                let a = un(Unary::Round, ld(0, vec![v(0), v(1)]));
                let b = un(Unary::Round, ld(1, vec![v(0), v(1)]));
                let k = map(
                    &format!("b_{}", op.name()),
                    float,
                    vec![buf("a", d, &[r, c]), buf("b", d, &[r, c])],
                    buf("y", out, &[r, c]),
                    bin(*op, a, b),
                );
                check(&k, 0.0);
            }
        }
    }
    for op in [Add, Sub, Mul, Div, Rem, Pow, Max, Min].iter().chain(&cmp) {
        for dt in [DType::I8, DType::I64] {
            let out = if cmp.contains(op) {
                DType::Bool
            } else {
                DType::I64
            };
            let k = map(
                &format!("i_{}", op.name()),
                Ty::F32,
                vec![buf("a", dt, &[50, 3]), buf("b", DType::I4, &[50, 3])],
                buf("y", out, &[50, 3]),
                bin(*op, ld(0, vec![v(0), v(1)]), ld(1, vec![v(0), v(1)])),
            );
            check(&k, 0.0);
        }
    }
    for op in [And, Or, Eq, Ne] {
        let k = map(
            "bools",
            Ty::F32,
            vec![
                buf("a", DType::Bool, &[3, 50]),
                buf("b", DType::Bool, &[3, 50]),
            ],
            buf("y", DType::Bool, &[3, 50]),
            bin(op, ld(0, vec![v(0), v(1)]), ld(1, vec![v(0), v(1)])),
        );
        check(&k, 0.0);
    }
}

#[test]
fn loads_of_every_storage_type() {
    for dt in ALL {
        for float in [Ty::F32, Ty::F64] {
            let fd = if float == Ty::F32 {
                DType::F32
            } else {
                DType::F64
            };
            let out = if dt == DType::Bool {
                DType::Bool
            } else if dt.has_integer_values() {
                DType::I64
            } else {
                fd
            };
            for (r, c) in [(3, 50), (1, 783), (783, 1)] {
                let k = map(
                    &format!("load_{dt}"),
                    float,
                    vec![buf("x", dt, &[r, c])],
                    buf("y", out, &[r, c]),
                    ld(0, vec![v(0), v(1)]),
                );
                check(&k, 0.0);
            }
        }
    }
}

#[test]
fn stores_of_common_types() {
    use DType::*;
    for out in [
        F32, F64, BF16, F16, I64, I32, I8, U8, Bool, I4, I3, I6, U4, F8E4M3, F4E2M1, E8M0,
    ] {
        for float in [Ty::F32, Ty::F64] {
            let fd = if float == Ty::F32 { F32 } else { F64 };
            // floats: scaled to reach the integer and f16 ranges
            let x = bin(Binary::Mul, ld(0, vec![v(0), v(1)]), fl(23.7));
            for (r, c) in [(3, 50), (783, 1), (1, 3)] {
                let k = map(
                    &format!("store_{out}"),
                    float,
                    vec![buf("x", fd, &[r, c])],
                    buf("y", out, &[r, c]),
                    x.clone(),
                );
                check(&k, 0.0);
                let k = map(
                    &format!("store_int_{out}"),
                    float,
                    vec![buf("x", I32, &[r, c])],
                    buf("y", out, &[r, c]),
                    ld(0, vec![v(0), v(1)]),
                );
                check(&k, 0.0);
            }
        }
    }
    // f16 and bf16 edges: overflow, subnormals, ties
    let edges = vec![
        65504.0,
        65519.0,
        65520.0,
        1e6,
        -1e6,
        6.0e-8,
        3.0e-8,
        2.9e-8,
        1e-5,
        -1e-7,
        0.0,
        -0.0,
        1.0,
        f64::INFINITY,
        f64::NAN,
        3.4e38,
        1.00390625,
        1.01171875,
        1e-40,
        -2.5e-39,
    ];
    let n = edges.len();
    for out in [BF16, F16] {
        let k = map(
            "edges",
            Ty::F32,
            vec![buf("x", F32, &[n])],
            buf("y", out, &[n]),
            ld(0, vec![v(0)]),
        );
        let xs = edges.iter().map(|&x| numeric::round_to(F32, x)).collect();
        check_with(&k, &[], 0.0, Some(vec![xs]));
    }
}

#[test]
fn rounds_and_casts() {
    use DType::*;
    for d in [
        BF16, F16, F8E4M3, F8E5M2, F4E2M1, E8M0, F32, F64, I8, I4, U8, I32, Bool,
    ] {
        for float in [Ty::F32, Ty::F64] {
            let fd = if float == Ty::F32 { F32 } else { F64 };
            let x = bin(Binary::Mul, ld(0, vec![v(0), v(1)]), fl(7.3));
            let k = map(
                &format!("round_{d}"),
                float,
                vec![buf("x", fd, &[50, 3])],
                buf("y", F64, &[50, 3]),
                Expr::Round(d, Box::new(x)),
            );
            check(&k, 0.0);
        }
        let k = map(
            &format!("wrap_{d}"),
            Ty::F32,
            vec![buf("x", I64, &[3, 50])],
            buf("y", I64, &[3, 50]),
            Expr::Round(d, Box::new(ld(0, vec![v(0), v(1)]))),
        );
        check(&k, 0.0);
    }
    for (src, scale) in [(F32, Some(1e10)), (I32, None), (Bool, None)] {
        for to in [Ty::F32, Ty::F64, Ty::I64, Ty::Bool] {
            for float in [Ty::F32, Ty::F64] {
                let mut x = ld(0, vec![v(0), v(1)]);
                if let Some(s) = scale {
                    x = bin(
                        Binary::Mul,
                        un(Unary::Exp, bin(Binary::Mul, x, fl(8.0))),
                        fl(s),
                    );
                }
                let out = match to {
                    Ty::Bool => Bool,
                    Ty::I64 => I64,
                    _ => F64,
                };
                let k = map(
                    "cast",
                    float,
                    vec![buf("x", src, &[50, 3])],
                    buf("y", out, &[50, 3]),
                    Expr::Cast(to, Box::new(x)),
                );
                // f32 exp is an inline approximation (about 1e-6 relative).
                let approx = scale.is_some() && float == Ty::F32;
                check(&k, if approx { 2e-6 } else { 0.0 });
            }
        }
    }
}

#[test]
fn select_dims_guards_and_rank0() {
    // y[i, j] = x[i, j - 1] padded, where x > 0 else -x; n is symbolic
    let (r, c) = (Dim::Static(3), Dim::sym("n"));
    let j1 = bin(Binary::Sub, v(1), Expr::Int(1));
    let guard = bin(
        Binary::And,
        bin(Binary::Ge, j1.clone(), Expr::Int(0)),
        bin(Binary::Lt, j1.clone(), Expr::Dim(0)),
    );
    let x = Expr::Load {
        input: 0,
        index: vec![v(0), j1],
        guard: Some(Box::new(guard)),
    };
    let sel = Expr::select(
        bin(Binary::Gt, x.clone(), fl(0.0)),
        x.clone(),
        un(Unary::Neg, x),
    );
    let k = Kernel {
        name: "pad_select".into(),
        inputs: vec![Buffer {
            name: "x".into(),
            dtype: DType::BF16,
            shape: Shape(vec![r.clone(), c.clone()]),
        }],
        output: Buffer {
            name: "y".into(),
            dtype: DType::F32,
            shape: Shape(vec![r, Dim::sym("m")]),
        },
        dims: vec!["n".into(), "m".into()],
        float: Ty::F32,
        body: Body::Map {
            expr: bin(
                Binary::Add,
                sel,
                Expr::Cast(Ty::F32, Box::new(Expr::Dim(1))),
            ),
        },
    };
    for n in [1, 3, 50, 783] {
        check_with(&k, &[("n", n), ("m", n + 2)], 0.0, None);
    }
    // rank 0: a full sum of a tensor, and a constant
    let k = map(
        "rank0",
        Ty::F64,
        vec![buf("x", DType::F64, &[50, 3])],
        buf("y", DType::F64, &[]),
        Expr::reduce(
            Reduction::Sum,
            Var(0),
            Expr::Int(50),
            Expr::reduce(
                Reduction::Sum,
                Var(1),
                Expr::Int(3),
                ld(0, vec![v(0), v(1)]),
            ),
        ),
    );
    check(&k, 0.0);
}

#[test]
fn reductions_every_op() {
    for op in [
        Reduction::Sum,
        Reduction::Prod,
        Reduction::Max,
        Reduction::Min,
    ] {
        for (dt, float) in [
            (DType::F32, Ty::F32),
            (DType::F64, Ty::F64),
            (DType::I8, Ty::F32),
        ] {
            for (r, c) in SIZES {
                let body = ld(0, vec![v(0), v(2)]);
                let k = map(
                    &format!("red_{}", op.name()),
                    float,
                    vec![buf("x", dt, &[r, c])],
                    buf("y", if dt == DType::I8 { DType::I64 } else { dt }, &[r, 1]),
                    Expr::reduce(op, Var(2), Expr::Int(c as i64), body),
                );
                // f32 sums run four lanes at a time: another order.
                let vec_sum = op == Reduction::Sum && float == Ty::F32;
                check(&k, if vec_sum { 1e-5 } else { 0.0 });
            }
        }
    }
}

fn softmax(r: usize, c: usize) -> Kernel {
    let x = |col: Expr| ld(0, vec![v(0), col]);
    let m = Expr::reduce(Reduction::Max, Var(2), Expr::Int(c as i64), x(v(2)));
    let e = |col: Expr| un(Unary::Exp, bin(Binary::Sub, x(col), m.clone()));
    let s = Expr::reduce(Reduction::Sum, Var(2), Expr::Int(c as i64), e(v(2)));
    map(
        "softmax",
        Ty::F32,
        vec![buf("x", DType::F32, &[r, c])],
        buf("y", DType::F32, &[r, c]),
        bin(Binary::Div, e(v(1)), s),
    )
}

fn layer_norm(r: usize, c: usize) -> Kernel {
    let n = Expr::Int(c as i64);
    let nf = fl(c as f64);
    let x = |col: Expr| ld(0, vec![v(0), col]);
    // The mean's reduction has a variable of its own: the evaluator does
    // not restore a reduction variable, so a nested reduction over the same
    // one would clobber the outer's.
    let mean = bin(
        Binary::Div,
        Expr::reduce(Reduction::Sum, Var(3), n.clone(), x(v(3))),
        nf.clone(),
    );
    let d = |col: Expr| bin(Binary::Sub, x(col), mean.clone());
    let var = bin(
        Binary::Div,
        Expr::reduce(
            Reduction::Sum,
            Var(2),
            n,
            bin(Binary::Mul, d(v(2)), d(v(2))),
        ),
        nf,
    );
    let inv = bin(
        Binary::Div,
        fl(1.0),
        un(Unary::Sqrt, bin(Binary::Add, var, fl(1e-5))),
    );
    let y = bin(
        Binary::Add,
        bin(
            Binary::Mul,
            bin(Binary::Mul, d(v(1)), inv),
            ld(1, vec![v(1)]),
        ),
        ld(2, vec![v(1)]),
    );
    map(
        "layer_norm",
        Ty::F32,
        vec![
            buf("x", DType::F32, &[r, c]),
            buf("g", DType::F32, &[c]),
            buf("b", DType::BF16, &[c]),
        ],
        buf("y", DType::F32, &[r, c]),
        y,
    )
}

#[test]
fn softmax_and_layer_norm_rows() {
    // The evaluator recomputes a row's statistics per element (layer_norm
    // cubically): rows stay short enough for it.
    // Vectorized: inline exp and sums in another order.
    for (r, c) in SIZES {
        check(&softmax(r, c), 1e-5);
    }
    for (r, c) in [(3, 50), (50, 3), (783, 1), (1, 1), (2, 150)] {
        check(&layer_norm(r, c), 1e-5);
    }
}

fn gelu(x: Expr) -> Expr {
    let t = un(
        Unary::Erf,
        bin(Binary::Mul, x.clone(), fl(std::f64::consts::FRAC_1_SQRT_2)),
    );
    bin(
        Binary::Mul,
        bin(Binary::Mul, x, fl(0.5)),
        bin(Binary::Add, t, fl(1.0)),
    )
}

/// `out[b.., m, n] = gelu(sum_k a * b + bias[n])`, with `a` transposed
/// (stored `[k, m]`) or `b` transposed (stored `[n, k]`) on request.
fn matmul(
    batch: Option<usize>,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    dt: DType,
) -> Kernel {
    let float = if dt == DType::F64 { Ty::F64 } else { Ty::F32 };
    let bv: Vec<Expr> = batch.map(|_| vec![v(0)]).unwrap_or_default();
    let bs: Vec<usize> = batch.into_iter().collect();
    let r = bs.len() as u32;
    let (mv, nv, kv) = (v(r), v(r + 1), Var(r + 2));
    let cat = |a: Vec<Expr>, b: Vec<Expr>| [bv.clone(), a, b].concat();
    let shape = |a: usize, b: usize| [bs.clone(), vec![a, b]].concat();
    let (ai, ash) = if ta {
        (cat(vec![Expr::Var(kv)], vec![mv.clone()]), shape(k, m))
    } else {
        (cat(vec![mv.clone()], vec![Expr::Var(kv)]), shape(m, k))
    };
    let (bi, bsh) = if tb {
        (cat(vec![nv.clone()], vec![Expr::Var(kv)]), shape(n, k))
    } else {
        (cat(vec![Expr::Var(kv)], vec![nv.clone()]), shape(k, n))
    };
    let epi = if dt.has_integer_values() {
        bin(Binary::Add, Expr::Acc, ld(2, vec![nv]))
    } else {
        gelu(bin(Binary::Add, Expr::Acc, ld(2, vec![nv])))
    };
    Kernel {
        name: "matmul".into(),
        inputs: vec![
            buf("a", dt, &ash),
            buf("b", dt, &bsh),
            buf("bias", dt, &[n]),
        ],
        output: buf("c", dt, &shape(m, n)),
        dims: vec![],
        float,
        body: Body::Contract {
            k: kv,
            extent: Expr::Int(k as i64),
            a: ld(0, ai),
            b: ld(1, bi),
            epilogue: epi,
        },
    }
}

/// Matrix products through the register tiles (`b` copied into panels
/// where all of `a` is at most 32 KiB, column order without the copy for
/// `k` = 5000, row tiles first at 64 x 200), partial tiles, transposes and
/// batches, against the evaluator (1e-5; 2e-3 at `k` = 5000).
#[test]
fn contractions() {
    let f = DType::F32;
    for (m, n, k) in [
        (1, 1, 1),
        (3, 50, 783),
        (50, 3, 3),
        (783, 3, 1),
        (9, 17, 5),
        (64, 96, 200),
        (1, 9, 5000),
    ] {
        // The evaluator's f32 sums and the tiles' differ in order; at
        // k = 5000 (products of values in (-3, 3), partial sums of some
        // hundreds) the difference reaches 1e-4 while an output that
        // cancels can be near 1, the scale tolerances are taken against.
        let tol = if k > 1000 { 2e-3 } else { 1e-5 };
        for (ta, tb) in [(false, false), (true, false), (false, true)] {
            check(&matmul(None, m, n, k, ta, tb, f), tol);
        }
    }
    for batch in [1, 3] {
        check(&matmul(Some(batch), 13, 20, 31, false, false, f), 1e-5);
        check(&matmul(Some(batch), 5, 9, 7, true, true, f), 1e-5);
        check(
            &matmul(Some(batch), 6, 16, 4, false, false, DType::F64),
            1e-12,
        );
        check(
            &matmul(Some(batch), 6, 16, 4, false, false, DType::I32),
            0.0,
        );
    }
}

#[test]
fn conv_like_guarded_reduction() {
    // y[b, p] = sum_{r < 3} x[b, p + r - 1] * w[r], zero padded
    for (bsz, len) in [(1, 783), (3, 50), (50, 3), (783, 1)] {
        let pos = bin(Binary::Sub, bin(Binary::Add, v(1), v(2)), Expr::Int(1));
        let guard = bin(
            Binary::And,
            bin(Binary::Ge, pos.clone(), Expr::Int(0)),
            bin(Binary::Lt, pos.clone(), Expr::Int(len as i64)),
        );
        let x = Expr::Load {
            input: 0,
            index: vec![v(0), pos],
            guard: Some(Box::new(guard)),
        };
        let k = map(
            "conv1d",
            Ty::F32,
            vec![
                buf("x", DType::F32, &[bsz, len]),
                buf("w", DType::F32, &[3]),
            ],
            buf("y", DType::F32, &[bsz, len]),
            Expr::reduce(
                Reduction::Sum,
                Var(2),
                Expr::Int(3),
                bin(Binary::Mul, x, ld(1, vec![v(2)])),
            ),
        );
        // The vector path unrolls the sum into fused multiply-adds.
        check(&k, 1e-5);
    }
}

#[test]
fn errors_not_panics() {
    let isa = host_isa().unwrap();
    let bad = [
        bin(Binary::Add, fl(1.0), Expr::Int(1)),
        un(Unary::Exp, Expr::Int(1)),
        Expr::Acc,
        ld(3, vec![]),
        ld(0, vec![v(0)]),
        Expr::Dim(4),
        Expr::select(Expr::Int(1), fl(1.0), fl(2.0)),
        Expr::reduce(Reduction::Max, Var(5), Expr::Int(2), Expr::Bool(true)),
    ];
    for e in bad {
        let k = map(
            "bad",
            Ty::F32,
            vec![buf("x", DType::F32, &[2, 2])],
            buf("y", DType::F32, &[2]),
            e,
        );
        assert!(compile_kernel(&k, isa.as_ref()).is_err(), "{k}");
    }
}

/// Ranges of axis 0 run on threads at the same time write disjoint
/// elements: the result equals one sequential run's.
#[test]
fn concurrent_ranges() {
    let (mut rng, seed) = rng();
    for k in [
        softmax(50, 37),
        matmul(None, 50, 37, 29, false, false, DType::F32),
    ] {
        let isa = host_isa().unwrap();
        let ck = compile_kernel(&k, isa.as_ref()).unwrap();
        let jit = JitModule::new(isa.clone(), vec![ck.into()]).unwrap();
        let f = jit.get(&k.name).unwrap();
        let ins: Vec<Vec<f32>> = k
            .inputs
            .iter()
            .map(|b| {
                let n: usize = b
                    .shape
                    .0
                    .iter()
                    .map(|d| d.as_static().unwrap() as usize)
                    .product();
                (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect()
            })
            .collect();
        let run = |ranges: &[(i64, i64)]| {
            let mut out = vec![0f32; 50 * 37];
            let mut args: Vec<usize> = ins.iter().map(|v| v.as_ptr() as usize).collect();
            args.push(out.as_mut_ptr() as usize);
            std::thread::scope(|s| {
                for &(lo, hi) in ranges {
                    let args = &args;
                    s.spawn(move || {
                        let p: Vec<*mut u8> = args.iter().map(|&a| a as *mut u8).collect();
                        // SAFETY: disjoint ranges of an f32 output; inputs are read only.
                        unsafe { f(p.as_ptr(), [].as_ptr(), lo, hi) };
                    });
                }
            });
            out
        };
        let whole = run(&[(0, 50)]);
        let split = run(&[(0, 7), (7, 8), (8, 31), (31, 50)]);
        let bad = whole
            .iter()
            .zip(&split)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(
            bad.is_none(),
            "kernel `{}` (seed {seed}): element {bad:?} differs between a whole run and a split one",
            k.name
        );
    }
}

/// The CLIF text of `k`: which path it takes.
fn clif_of(k: &Kernel) -> String {
    let isa = host_isa().unwrap();
    clif_text(&compile_kernel(k, isa.as_ref()).unwrap_or_else(|e| panic!("{e}")))
}

/// Runs `k` once over its whole output on `inputs`; the output's values.
fn run_all(k: &Kernel, inputs: &[Vec<f64>]) -> Vec<f64> {
    let isa = host_isa().unwrap();
    let ck = compile_kernel(k, isa.as_ref()).unwrap_or_else(|e| panic!("{e}"));
    let jit = JitModule::new(isa.clone(), vec![ck.into()]).unwrap();
    let f = jit.get(&k.name).unwrap();
    let dmap = HashMap::new();
    let hosts: Vec<HostTensor> = k
        .inputs
        .iter()
        .zip(inputs)
        .map(|(b, x)| HostTensor::from_values(b.dtype, &b.shape.resolve(&dmap).unwrap(), x))
        .collect();
    let oshape = k.output.shape.resolve(&dmap).unwrap();
    let n: usize = oshape.iter().product();
    let mut out = HostTensor {
        dtype: k.output.dtype,
        shape: oshape.clone(),
        data: vec![0u8; k.output.dtype.storage_bytes(n)],
    };
    let mut args: Vec<*mut u8> = hosts.iter().map(|h| h.data.as_ptr() as *mut u8).collect();
    args.push(out.data.as_mut_ptr());
    // SAFETY: the buffers have the kernel's shapes and types.
    unsafe { f(args.as_ptr(), [].as_ptr(), 0, oshape[0] as i64) };
    out.to_values()
}

/// The inline f32 `exp`, `erf` and `tanh` (vector path: f32 output; scalar
/// path: f64 output) against f64 references on dense grids and extremes:
/// within 1e-6 relative (plus 2e-45 absolute, the subnormal results of
/// `exp`; the worst seen, printed, is about 3e-7); infinities, ±1
/// saturation and NaN exactly.
#[test]
fn inline_f32_math_against_f64() {
    let mut xs: Vec<f32> = vec![
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        1e-40,
        -1e-40,
        f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        f32::MIN,
        88.7,
        88.72,
        88.73,
        89.0,
        -87.3,
        -87.4,
        -103.0,
        -103.97,
        -104.5,
        -200.0,
        0.921875,
        -0.921875,
        0.9218749,
        0.625,
        0.6249999,
        3.9,
        4.0,
        4.1,
        9.0,
        44.0,
        45.0,
    ];
    for i in 0..=40_000 {
        xs.push(-110.0 + 210.0 * i as f32 / 40_000.0);
        xs.push(-6.0 + 12.0 * i as f32 / 40_000.0);
        xs.push((i as f32 - 20_000.0) * 1e-5);
    }
    let n = xs.len();
    let vals: Vec<f64> = xs.iter().map(|&x| f64::from(x)).collect();
    for op in [Unary::Exp, Unary::Erf, Unary::Tanh] {
        // The f64 reference: Rust's exp and tanh, the evaluator's erf (libm).
        let want: Vec<f64> = match op {
            Unary::Exp => vals.iter().map(|x| x.exp()).collect(),
            Unary::Tanh => vals.iter().map(|x| x.tanh()).collect(),
            _ => {
                let k = map(
                    "ref",
                    Ty::F64,
                    vec![buf("x", DType::F64, &[n])],
                    buf("y", DType::F64, &[n]),
                    un(op, ld(0, vec![v(0)])),
                );
                let x = Tensor::new(DType::F64, &[n], vals.clone());
                kiln_dialect::kernel::eval::run(&k, &[&x], &HashMap::new())
                    .unwrap()
                    .data
            }
        };
        for out in [DType::F32, DType::F64] {
            let k = map(
                &format!("m_{}", op.name()),
                Ty::F32,
                vec![buf("x", DType::F32, &[n])],
                buf("y", out, &[n]),
                un(op, ld(0, vec![v(0)])),
            );
            let got = run_all(&k, std::slice::from_ref(&vals));
            let worst = (0..n)
                .filter(|&i| {
                    (want[i] as f32).is_finite() && want[i].abs() >= f64::from(f32::MIN_POSITIVE)
                })
                .map(|i| (got[i] - want[i]).abs() / want[i].abs())
                .fold(0.0f64, f64::max);
            eprintln!("{} -> {out}: worst relative error {worst:e}", op.name());
            for i in 0..n {
                let (g, w) = (got[i], want[i]);
                let w32 = w as f32;
                let ok = if w.is_nan() {
                    g.is_nan()
                } else if w32.is_infinite() || w.abs() == 1.0 {
                    g == f64::from(w32)
                } else {
                    (g - w).abs() <= 1e-6 * w.abs() + 2e-45
                };
                assert!(
                    ok,
                    "{}({:e}) -> {out}: got {g:e}, want {w:e} (rel {:e})",
                    op.name(),
                    vals[i],
                    (g - w).abs() / w.abs()
                );
            }
        }
    }
}

/// Element-wise kernels that take the four-lane path: every vectorized
/// operation, row-invariant loads (splats), offset loads, an invariant
/// condition, rank 1 (lanes along axis 0, split ranges), rank 3, and float
/// storage types loaded as four scalars. Exact without transcendentals
/// (the vector operations round as the scalar ones); 2e-6 with them.
#[test]
fn vectorized_maps() {
    let x = || ld(0, vec![v(0), v(1)]);
    let xs = || ld(0, vec![v(0), bin(Binary::Add, v(1), Expr::Int(1))]);
    let w = || ld(1, vec![v(1)]);
    let row = || ld(2, vec![v(0)]);
    let arith = Expr::select(
        bin(
            Binary::Or,
            bin(Binary::Lt, x(), w()),
            Expr::un(
                Unary::Not,
                bin(
                    Binary::And,
                    bin(Binary::Ge, xs(), fl(0.5)),
                    bin(Binary::Ne, x(), row()),
                ),
            ),
        ),
        bin(
            Binary::Max,
            bin(Binary::Mul, x(), w()),
            bin(Binary::Sub, un(Unary::Neg, xs()), row()),
        ),
        bin(
            Binary::Add,
            bin(
                Binary::Div,
                un(Unary::Sqrt, un(Unary::Abs, x())),
                bin(Binary::Min, xs(), fl(1.5)),
            ),
            Expr::select(bin(Binary::Gt, row(), fl(0.0)), w(), xs()),
        ),
    );
    let trans = bin(
        Binary::Add,
        un(Unary::Exp, x()),
        bin(
            Binary::Mul,
            un(Unary::Erf, bin(Binary::Mul, xs(), w())),
            un(Unary::Tanh, bin(Binary::Add, x(), row())),
        ),
    );
    for (r, c) in SIZES {
        for (name, e, tol) in [("v_arith", &arith, 0.0), ("v_trans", &trans, 2e-6)] {
            for dt in [DType::F32, DType::BF16, DType::F16] {
                let k = map(
                    name,
                    Ty::F32,
                    vec![
                        buf("x", dt, &[r, c + 1]),
                        buf("w", DType::F32, &[c]),
                        buf("row", DType::F32, &[r]),
                    ],
                    buf("y", DType::F32, &[r, c]),
                    e.clone(),
                );
                assert!(clif_of(&k).contains("f32x4"), "{name} is not vectorized");
                check(&k, tol);
            }
        }
    }
    // rank 1: the lanes run along axis 0, over split ranges
    for n in [1, 3, 50, 783] {
        let k = map(
            "v_rank1",
            Ty::F32,
            vec![buf("x", DType::F32, &[n + 3])],
            buf("y", DType::F32, &[n]),
            bin(
                Binary::Mul,
                un(
                    Unary::Tanh,
                    ld(0, vec![bin(Binary::Add, Expr::Int(3), v(0))]),
                ),
                ld(0, vec![v(0)]),
            ),
        );
        check(&k, 2e-6);
    }
    // rank 3 with a middle-axis load
    for (a, b, c) in [(2, 3, 50), (3, 1, 783), (1, 5, 3), (4, 2, 1)] {
        let k = map(
            "v_rank3",
            Ty::F32,
            vec![
                buf("x", DType::F32, &[a, b, c]),
                buf("z", DType::F32, &[b, c]),
            ],
            buf("y", DType::F32, &[a, b, c]),
            bin(
                Binary::Sub,
                ld(0, vec![v(0), v(1), v(2)]),
                bin(Binary::Mul, ld(1, vec![v(1), v(2)]), fl(0.25)),
            ),
        );
        check(&k, 0.0);
    }
}

/// Reductions whose body runs four lanes at a time (two accumulators, a
/// vector step, a scalar tail): extents 1, 3, 50, 783, inside a scalar map
/// (`out[v0] = ...`) and inside a vectorized one (a row statistic). `max`
/// and `min` are exact, NaN included; sums within 1e-5 of the output's
/// largest magnitude (another association order than the evaluator's).
#[test]
fn vectorized_reductions() {
    for (r, c) in SIZES {
        for op in [Reduction::Sum, Reduction::Max, Reduction::Min] {
            let body = un(
                Unary::Exp,
                bin(Binary::Mul, ld(0, vec![v(0), v(2)]), ld(1, vec![v(2)])),
            );
            let red = Expr::reduce(op, Var(2), Expr::Int(c as i64), body);
            let tol = if op == Reduction::Sum { 1e-5 } else { 2e-6 };
            let k = map(
                &format!("vr_{}", op.name()),
                Ty::F32,
                vec![buf("x", DType::F32, &[r, c]), buf("w", DType::F32, &[c])],
                buf("y", DType::F32, &[r]),
                red.clone(),
            );
            assert!(
                clif_of(&k).contains("f32x4"),
                "the reduction is not vectorized"
            );
            check(&k, tol);
            // exact max/min with NaNs among the inputs
            if op != Reduction::Sum {
                let (mut rng, _) = rng();
                let mut xv = values(&mut rng, DType::F32, r * c);
                for _ in 0..(r * c / 40) {
                    let i = rng.random_range(0..r * c);
                    xv[i] = f64::NAN;
                }
                let k = map(
                    &format!("vr_nan_{}", op.name()),
                    Ty::F32,
                    vec![buf("x", DType::F32, &[r, c])],
                    buf("y", DType::F32, &[r]),
                    Expr::reduce(op, Var(2), Expr::Int(c as i64), ld(0, vec![v(0), v(2)])),
                );
                check_with(&k, &[], 0.0, Some(vec![xv]));
            }
            // the statistic of a row, subtracted in a vectorized map
            let k = map(
                &format!("vr_row_{}", op.name()),
                Ty::F32,
                vec![buf("x", DType::F32, &[r, c]), buf("w", DType::F32, &[c])],
                buf("y", DType::F32, &[r, c]),
                bin(Binary::Sub, ld(0, vec![v(0), v(1)]), red),
            );
            check(&k, tol);
        }
    }
}

/// Row buffers: a heavy sub-expression shared by the element and row
/// reductions over the whole row is computed once per row into a stack
/// buffer (softmax, the gelu in C1 below); a reduction over part of the row
/// (`v3`) recomputes it. Static extents 1, 3, 50, 783.
#[test]
fn row_buffers() {
    for (r, c) in SIZES {
        let e = |col: u32| un(Unary::Exp, ld(0, vec![v(0), v(col)]));
        let whole = Expr::reduce(Reduction::Sum, Var(2), Expr::Int(c as i64), e(2));
        let half = Expr::reduce(Reduction::Max, Var(3), Expr::Int(c as i64 / 2), e(3));
        let k = map(
            "row_buf",
            Ty::F32,
            vec![buf("x", DType::F32, &[r, c])],
            buf("y", DType::F32, &[r, c]),
            bin(Binary::Div, e(1), bin(Binary::Add, whole, half)),
        );
        assert!(clif_of(&k).contains("stack_addr"), "no row buffer");
        check(&k, 1e-5);
    }
}

/// The C1 benchmark's kernel, `layer_norm(gelu(x * s + b), g, beta)` as
/// `kiln compile --emit kernels` prints it (the statistics over the gelu
/// recomputed per reduction), on short rows.
#[test]
fn gelu_layer_norm_rows() {
    for (r, c) in [(3, 50), (50, 3), (2, 151), (1, 1), (4, 4)] {
        let xv = |col: Expr| {
            bin(
                Binary::Add,
                bin(
                    Binary::Mul,
                    ld(0, vec![v(0), col.clone()]),
                    ld(1, vec![col.clone()]),
                ),
                ld(2, vec![col]),
            )
        };
        let g = |col: u32| gelu(xv(v(col)));
        let n = Expr::Int(c as i64);
        let nf = fl(c as f64);
        let mean = bin(
            Binary::Div,
            Expr::reduce(Reduction::Sum, Var(2), n.clone(), g(2)),
            nf.clone(),
        );
        let d = |col: u32| bin(Binary::Sub, g(col), mean.clone());
        let var = bin(
            Binary::Div,
            Expr::reduce(
                Reduction::Sum,
                Var(3),
                n.clone(),
                bin(Binary::Mul, d(3), d(3)),
            ),
            nf,
        );
        let inv = bin(
            Binary::Div,
            fl(1.0),
            un(Unary::Sqrt, bin(Binary::Add, var, fl(1e-5))),
        );
        let y = bin(
            Binary::Add,
            bin(Binary::Mul, bin(Binary::Mul, d(1), inv), ld(3, vec![v(1)])),
            ld(4, vec![v(1)]),
        );
        let k = map(
            "gelu_ln",
            Ty::F32,
            vec![
                buf("x", DType::F32, &[r, c]),
                buf("s", DType::F32, &[c]),
                buf("b", DType::F32, &[c]),
                buf("g", DType::F32, &[c]),
                buf("beta", DType::F32, &[c]),
            ],
            buf("y", DType::F32, &[r, c]),
            y,
        );
        assert!(clif_of(&k).contains("stack_addr"), "no row buffer");
        check(&k, 1e-4);
    }
}

/// `lo <= i < hi` for an index expression `i`.
fn in_range(i: &Expr, hi: usize) -> Expr {
    bin(
        Binary::And,
        bin(Binary::Ge, i.clone(), Expr::Int(0)),
        bin(Binary::Lt, i.clone(), Expr::Int(hi as i64)),
    )
}

/// `relu6(e * s)` written as the cpu target writes it (`s` loaded twice).
fn relu6_scaled(e: &Expr, s: &Expr) -> Expr {
    let x = bin(Binary::Mul, e.clone(), s.clone());
    Expr::select(
        bin(Binary::Lt, x.clone(), fl(0.0)),
        fl(0.0),
        Expr::select(bin(Binary::Gt, x.clone(), fl(6.0)), fl(6.0), x),
    )
}

/// A depthwise 3x3 convolution with padding 1 (rows strided by `sy`), the
/// form of the MobileNetV2 block's kernel: `out[n, c, y, x] = relu6(sum(
/// v4 < 1: sum(v5 < 3: sum(v6 < 3: in0[n, c + v4, sy*y + v5 - 1, x + v6 -
/// 1] if <in range> * in1[c, v4, v5, v6]))) * in2[c, 0, 0])`.
fn depthwise(n: usize, c: usize, h: usize, w: usize, sy: usize) -> Kernel {
    let ho = (h - 1) / sy + 1;
    let iy = bin(
        Binary::Sub,
        bin(
            Binary::Add,
            bin(Binary::Mul, v(2), Expr::Int(sy as i64)),
            v(5),
        ),
        Expr::Int(1),
    );
    let ix = bin(Binary::Sub, bin(Binary::Add, v(3), v(6)), Expr::Int(1));
    let x = Expr::Load {
        input: 0,
        index: vec![v(0), bin(Binary::Add, v(1), v(4)), iy.clone(), ix.clone()],
        guard: Some(Box::new(bin(
            Binary::And,
            in_range(&iy, h),
            in_range(&ix, w),
        ))),
    };
    let body = bin(Binary::Mul, x, ld(1, vec![v(1), v(4), v(5), v(6)]));
    let s = Expr::reduce(
        Reduction::Sum,
        Var(4),
        Expr::Int(1),
        Expr::reduce(
            Reduction::Sum,
            Var(5),
            Expr::Int(3),
            Expr::reduce(Reduction::Sum, Var(6), Expr::Int(3), body),
        ),
    );
    map(
        "dw3x3",
        Ty::F32,
        vec![
            buf("x", DType::F32, &[n, c, h, w]),
            buf("w", DType::F32, &[c, 1, 3, 3]),
            buf("s", DType::F32, &[c, 1, 1]),
        ],
        buf("y", DType::F32, &[n, c, ho, w]),
        relu6_scaled(&s, &ld(2, vec![v(1), Expr::Int(0), Expr::Int(0)])),
    )
}

/// Depthwise 3x3 convolutions (padding 1, row stride 1 and 2) take the
/// vector path: the nine taps unrolled into fused multiply-adds, guarded
/// loads (unguarded vector loads inside the row's interior, one vector
/// load where the guard holds at both ends of a border vector, four scalar
/// loads else). Within 1e-5 of the largest magnitude: another order and
/// one rounding per fma instead of the evaluator's two per term, so the two
/// sums of nine products differ by up to about 9 x 2^-24 of the sum of the
/// terms' magnitudes (a seed gave 2.6e-6 of the largest output).
#[test]
fn vectorized_depthwise() {
    for w in [1, 3, 50, 783] {
        for (n, c, h, sy) in [(3, 2, 5, 1), (2, 3, 4, 2), (1, 1, 1, 1)] {
            let k = depthwise(n, c, h, w, sy);
            assert!(clif_of(&k).contains("f32x4"), "dw3x3 is not vectorized");
            check(&k, 1e-5);
        }
    }
}

/// A guard of a window tap from its row and column indices and the width.
type GuardFn<'a> = dyn Fn(&Expr, &Expr, usize) -> Expr + 'a;

/// A 2-D window over `x[n, h, w]` with a `kh x kw` kernel, dilation `d`
/// and padding `p`: `op` over the taps of `body(x_tap, w[ky, kx])`, the
/// tap's load guarded by `guard(iy, ix)`.
fn window(
    name: &str,
    (n, h, w): (usize, usize, usize),
    (kh, kw, d, p): (usize, usize, i64, i64),
    op: Reduction,
    guard: &dyn Fn(&Expr, &Expr) -> Expr,
    body: &dyn Fn(Expr, Expr) -> Expr,
) -> Kernel {
    let iy = bin(
        Binary::Sub,
        bin(Binary::Add, v(1), bin(Binary::Mul, v(3), Expr::Int(d))),
        Expr::Int(p),
    );
    let ix = bin(
        Binary::Sub,
        bin(Binary::Add, v(2), bin(Binary::Mul, v(4), Expr::Int(d))),
        Expr::Int(p),
    );
    let x = Expr::Load {
        input: 0,
        index: vec![v(0), iy.clone(), ix.clone()],
        guard: Some(Box::new(guard(&iy, &ix))),
    };
    let e = Expr::reduce(
        op,
        Var(3),
        Expr::Int(kh as i64),
        Expr::reduce(
            op,
            Var(4),
            Expr::Int(kw as i64),
            body(x, ld(1, vec![v(3), v(4)])),
        ),
    );
    map(
        name,
        Ty::F32,
        vec![
            buf("x", DType::F32, &[n, h, w]),
            buf("w", DType::F32, &[kh, kw]),
        ],
        buf("y", DType::F32, &[n, h, w]),
        e,
    )
}

/// Small windows unrolled into the expression and run without guards in
/// the interior of each row, against the evaluator: every way of writing
/// a bound (`lt le gt ge`, the lane on either side), a row-invariant
/// guard, dilation 2, 5x5 kernels (25 unrolled terms), 7x7 ones (49: kept
/// as loops), max windows (exact) and sums (1e-5 of the largest
/// magnitude: fused multiply-adds in one chain, up to 49 terms). Widths 1, 3, 8, 13, 50
/// and 783 put the interior anywhere from empty to most of the row, and
/// its ends on and off vector boundaries.
#[test]
fn unrolled_windows_and_interior_rows() {
    let int = |i: i64| Expr::Int(i);
    let h = 5usize;
    let guards: Vec<(&str, Box<GuardFn<'_>>)> = vec![
        (
            "lt_ge",
            Box::new(|iy, ix, w| bin(Binary::And, in_range(iy, h), in_range(ix, w))),
        ),
        (
            "le_gt_mirrored",
            Box::new(|iy, ix, w| {
                bin(
                    Binary::And,
                    in_range(iy, h),
                    bin(
                        Binary::And,
                        bin(Binary::Gt, ix.clone(), int(-1)),
                        bin(Binary::Ge, int(w as i64 - 1), ix.clone()),
                    ),
                )
            }),
        ),
        (
            "mirrored",
            Box::new(|iy, ix, w| {
                bin(
                    Binary::And,
                    bin(
                        Binary::And,
                        bin(Binary::Le, int(0), iy.clone()),
                        bin(Binary::Lt, iy.clone(), int(h as i64)),
                    ),
                    bin(
                        Binary::And,
                        bin(Binary::Lt, int(-1), ix.clone()),
                        bin(Binary::Gt, int(w as i64), ix.clone()),
                    ),
                )
            }),
        ),
    ];
    let mul = |x: Expr, w: Expr| bin(Binary::Mul, x, w);
    let add = |x: Expr, w: Expr| bin(Binary::Add, x, w);
    for w in [1usize, 3, 8, 13, 50, 783] {
        for (gname, g) in &guards {
            let guard = |iy: &Expr, ix: &Expr| g(iy, ix, w);
            for (kh, kw, d, p) in [(3, 3, 1, 1), (3, 3, 2, 2), (5, 5, 1, 2), (7, 7, 1, 3)] {
                let k = window(
                    gname,
                    (2, h, w),
                    (kh, kw, d, p),
                    Reduction::Sum,
                    &guard,
                    &mul,
                );
                let text = clif_of(&k);
                assert!(text.contains("f32x4"), "{gname} is not vectorized");
                if kh * kw <= 32 {
                    assert!(text.contains("fma"), "{gname} {kh}x{kw} is not unrolled");
                }
                check(&k, 1e-5);
                let k = window(
                    gname,
                    (2, h, w),
                    (kh, kw, d, p),
                    Reduction::Max,
                    &guard,
                    &add,
                );
                check(&k, 0.0);
            }
        }
        // A guard that does not depend on the lane (the rows are padded,
        // the columns read from a wider input).
        let iy = bin(Binary::Sub, bin(Binary::Add, v(1), v(3)), int(1));
        let x = Expr::Load {
            input: 0,
            index: vec![v(0), iy.clone(), bin(Binary::Add, v(2), v(4))],
            guard: Some(Box::new(in_range(&iy, h))),
        };
        let e = Expr::reduce(
            Reduction::Sum,
            Var(3),
            int(3),
            Expr::reduce(
                Reduction::Sum,
                Var(4),
                int(3),
                bin(Binary::Mul, x, ld(1, vec![v(3), v(4)])),
            ),
        );
        let k = map(
            "row_guard",
            Ty::F32,
            vec![
                buf("x", DType::F32, &[2, h, w + 2]),
                buf("w", DType::F32, &[3, 3]),
            ],
            buf("y", DType::F32, &[2, h, w]),
            e,
        );
        assert!(clif_of(&k).contains("fma"), "row_guard is not unrolled");
        check(&k, 1e-6);
    }
}

/// An implicit-GEMM convolution as `lower::igemm` writes it: output view
/// `[n, g, cog, oh*ow]`, weight view `[g, cog, cig*kh*kw]`, `b` the
/// guarded im2col gather of `x[n, g*cig, h, w]`, epilogue `relu(acc +
/// bias[g*cog + m])`.
#[allow(clippy::too_many_arguments)]
fn igemm(
    n: usize,
    g: usize,
    (cig, cog): (usize, usize),
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    (sy, sx): (i64, i64),
    (pt, pl, pb, pr): (i64, i64, i64, i64),
    (dy, dx): (i64, i64),
) -> Kernel {
    let int = |i: i64| Expr::Int(i);
    let oh = ((h as i64 + pt + pb - dy * (kh as i64 - 1) - 1) / sy + 1) as usize;
    let ow = ((w as i64 + pl + pr - dx * (kw as i64 - 1) - 1) / sx + 1) as usize;
    let k = v(4);
    let (oy, ox) = (
        bin(Binary::Div, v(3), int(ow as i64)),
        bin(Binary::Rem, v(3), int(ow as i64)),
    );
    let ic = bin(Binary::Div, k.clone(), int((kh * kw) as i64));
    let ky = bin(
        Binary::Rem,
        bin(Binary::Div, k.clone(), int(kw as i64)),
        int(kh as i64),
    );
    let kx = bin(Binary::Rem, k.clone(), int(kw as i64));
    let at = |o: Expr, s: i64, t: Expr, d: i64, p: i64| {
        bin(
            Binary::Sub,
            bin(
                Binary::Add,
                bin(Binary::Mul, o, int(s)),
                bin(Binary::Mul, t, int(d)),
            ),
            int(p),
        )
    };
    let iy = at(oy, sy, ky, dy, pt);
    let ix = at(ox, sx, kx, dx, pl);
    let x = Expr::Load {
        input: 1,
        index: vec![
            v(0),
            bin(Binary::Add, bin(Binary::Mul, v(1), int(cig as i64)), ic),
            iy.clone(),
            ix.clone(),
        ],
        guard: Some(Box::new(bin(
            Binary::And,
            in_range(&iy, h),
            in_range(&ix, w),
        ))),
    };
    let co = bin(Binary::Add, bin(Binary::Mul, v(1), int(cog as i64)), v(2));
    let pre = bin(Binary::Add, Expr::Acc, ld(2, vec![co]));
    let epilogue = Expr::select(bin(Binary::Lt, pre.clone(), fl(0.0)), fl(0.0), pre);
    Kernel {
        name: "igemm".into(),
        inputs: vec![
            buf("w", DType::F32, &[g, cog, cig * kh * kw]),
            buf("x", DType::F32, &[n, g * cig, h, w]),
            buf("bias", DType::F32, &[g * cog]),
        ],
        output: buf("y", DType::F32, &[n, g, cog, oh * ow]),
        dims: vec![],
        float: Ty::F32,
        body: Body::Contract {
            k: Var(4),
            extent: int((cig * kh * kw) as i64),
            a: ld(0, vec![v(1), v(2), v(4)]),
            b: x,
            epilogue,
        },
    }
}

/// Implicit-GEMM convolutions take the gathered tile path (the im2col
/// operand packed into panels on the stack, 4 x 8 register tiles): odd
/// sizes, partial row tiles and panels, several column chunks (k = 576),
/// strides, asymmetric padding, dilation and groups, and a computed `b`
/// without pixels, against the evaluator within 1e-5 of the largest
/// magnitude (fused multiply-adds).
#[test]
fn implicit_gemm_convolutions() {
    let cases = [
        (2, 1, (3, 8), (11, 13), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
        (1, 2, (3, 5), (9, 10), (3, 5), (2, 1), (0, 2, 1, 2), (2, 1)),
        (1, 1, (5, 13), (7, 7), (7, 7), (1, 1), (3, 3, 3, 3), (1, 1)),
        (
            1,
            1,
            (64, 4),
            (15, 15),
            (3, 3),
            (1, 1),
            (1, 1, 1, 1),
            (1, 1),
        ),
        (3, 3, (3, 4), (6, 6), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
        (2, 1, (16, 6), (8, 8), (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
        (1, 1, (2, 4), (1, 1), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ];
    for (n, g, c, hw, kk, s, p, d) in cases {
        let k = igemm(n, g, c, hw, kk, s, p, d);
        let text = clif_of(&k);
        assert!(
            text.contains("f32x4") && text.contains("stack_addr"),
            "the implicit GEMM does not take the gathered tile path:\n{k}"
        );
        check(&k, 1e-5);
    }
    // A `b` computed per element without a pixel split (`2 * x[k, n]`),
    // rows split over threads (rank 2): the gathered path's plain fill.
    for (m, kk, n) in [(5, 7, 11), (9, 64, 3), (4, 1, 17)] {
        let k = Kernel {
            name: "gathered".into(),
            inputs: vec![
                buf("a", DType::F32, &[m, kk]),
                buf("x", DType::F32, &[kk, n]),
            ],
            output: buf("y", DType::F32, &[m, n]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Contract {
                k: Var(2),
                extent: Expr::Int(kk as i64),
                a: ld(0, vec![v(0), v(2)]),
                b: bin(Binary::Mul, ld(1, vec![v(2), v(1)]), fl(2.0)),
                epilogue: Expr::Acc,
            },
        };
        assert!(clif_of(&k).contains("stack_addr"), "not gathered:\n{k}");
        check(&k, 1e-5);
    }
}

/// Lane-dependent reductions without guards (a sliding-window sum and
/// max), with a non-monotone guard (each lane loaded as the scalar code
/// does), and a guard that does not depend on the lane. Exact, but for
/// the unguarded sum: the scalar remainder reduces it four elements of
/// `v2` at a time ([`vectorized_reductions`]), in another order.
#[test]
fn vectorized_lane_reductions() {
    for (b, len) in [(2, 1), (3, 3), (4, 50), (2, 783)] {
        let pos = bin(Binary::Add, v(1), v(2));
        let x = ld(0, vec![v(0), pos.clone()]);
        let xw = bin(Binary::Mul, x.clone(), ld(1, vec![v(2)]));
        let odd = Expr::Load {
            input: 0,
            index: vec![v(0), pos.clone()],
            guard: Some(Box::new(bin(
                Binary::Or,
                bin(Binary::Ne, pos.clone(), Expr::Int(4)),
                bin(Binary::Eq, v(0), Expr::Int(1)),
            ))),
        };
        let rowg = Expr::Load {
            input: 0,
            index: vec![v(0), pos.clone()],
            guard: Some(Box::new(bin(Binary::Gt, v(0), v(2)))),
        };
        let cases = [
            (
                "win_sum",
                Expr::reduce(Reduction::Sum, Var(2), Expr::Int(5), xw),
            ),
            (
                "win_max",
                bin(
                    Binary::Add,
                    Expr::reduce(Reduction::Max, Var(2), Expr::Int(5), x.clone()),
                    Expr::reduce(Reduction::Min, Var(2), Expr::Int(3), x),
                ),
            ),
            (
                "win_odd",
                Expr::reduce(Reduction::Sum, Var(2), Expr::Int(5), odd),
            ),
            (
                "win_row",
                Expr::reduce(Reduction::Sum, Var(2), Expr::Int(5), rowg),
            ),
        ];
        for (name, e) in cases {
            let tol = if name == "win_sum" { 1e-6 } else { 0.0 };
            let k = map(
                name,
                Ty::F32,
                vec![
                    buf("x", DType::F32, &[b, len + 4]),
                    buf("w", DType::F32, &[5]),
                ],
                buf("y", DType::F32, &[b, len]),
                e,
            );
            assert!(clif_of(&k).contains("f32x4"), "{name} is not vectorized");
            check(&k, tol);
        }
    }
}
