//! Tests of the reference interpreter (`kiln_dialect::interp`) against values
//! computed independently of it: by hand, with NumPy (pasted as literals, the
//! snippet named in a comment), or with naive loops written here.
//!
//! Tolerances, unless a test says otherwise:
//! * `f64` results: relative 1e-12 ([`REL64`]);
//! * `f32` results: relative 1e-6 ([`REL32`]), or exact where the expected
//!   value is the f32-rounded one;
//! * `bf16` / `f16` / `f8` results: the exactly rounded value (computed with
//!   `ml_dtypes` or by hand), compared exactly, or within one ulp of the
//!   type where a test says so ([`assert_ulps`]);
//! * integer and bool results: exact.
//!
//! Property-style tests draw their seed from the clock and print it.

// Expected values are pasted from NumPy; some happen to be close to named constants.
#![allow(clippy::approx_constant)]

mod e2e;
mod elementwise;
mod linalg;
mod movement;
mod nn;
mod quant;

use std::collections::HashMap;

use kiln_dialect::DType;
use kiln_dialect::interp::{self, InterpError, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Relative tolerance for f64 results.
pub const REL64: f64 = 1e-12;
/// Relative tolerance for f32 results.
pub const REL32: f64 = 1e-6;

/// A tensor; each value is rounded to `dt`.
pub fn t(dt: DType, shape: &[usize], data: &[f64]) -> Tensor {
    Tensor::new(dt, shape, data.to_vec())
}

pub fn f64t(shape: &[usize], data: &[f64]) -> Tensor {
    t(DType::F64, shape, data)
}

pub fn f32t(shape: &[usize], data: &[f64]) -> Tensor {
    t(DType::F32, shape, data)
}

/// The text of a tensor type: `f32[2, 3]`.
pub fn ty(dt: DType, shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("{}[{}]", dt.name(), dims.join(", "))
}

/// Parses and runs a graph; all outputs in order.
pub fn try_run(src: &str, inputs: &[(&str, Tensor)]) -> Result<Vec<Tensor>, InterpError> {
    let g =
        kiln_dialect::text::parse(src).unwrap_or_else(|e| panic!("parse error: {e:?}\nin:\n{src}"));
    let bindings: HashMap<String, Tensor> = inputs
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    interp::run(&g, &bindings).map(|outs| outs.into_iter().map(|(_, t)| t).collect())
}

/// Parses and runs a graph, panicking on errors; all outputs in order.
pub fn run_all(src: &str, inputs: &[(&str, Tensor)]) -> Vec<Tensor> {
    try_run(src, inputs).unwrap_or_else(|e| panic!("run failed: {e}\nin:\n{src}"))
}

/// Parses and runs a graph with one output.
pub fn eval1(src: &str, inputs: &[(&str, Tensor)]) -> Tensor {
    let mut outs = run_all(src, inputs);
    assert_eq!(outs.len(), 1);
    outs.remove(0)
}

/// The text of a graph applying one op to inputs declared with their
/// tensors' types: `call` like `add(%a, %b) {..}`, `result` the result type.
pub fn graph1(call: &str, result: &str, inputs: &[(&str, &Tensor)]) -> String {
    let mut s = String::from("graph t {\n");
    for (name, t) in inputs {
        s += &format!("  input %{name}: {}\n", ty(t.dtype, &t.shape));
    }
    s += &format!("  %y: {result} = {call}\n  output y = %y\n}}\n");
    s
}

/// Runs one op on inputs named after the operands used in `call`.
pub fn op(call: &str, result: &str, inputs: &[(&str, &Tensor)]) -> Tensor {
    let src = graph1(call, result, inputs);
    let owned: Vec<(&str, Tensor)> = inputs.iter().map(|(n, t)| (*n, (*t).clone())).collect();
    eval1(&src, &owned)
}

/// Like [`op`], returning the error.
pub fn try_op(call: &str, result: &str, inputs: &[(&str, &Tensor)]) -> Result<Tensor, InterpError> {
    let src = graph1(call, result, inputs);
    let owned: Vec<(&str, Tensor)> = inputs.iter().map(|(n, t)| (*n, (*t).clone())).collect();
    try_run(&src, &owned).map(|mut v| v.remove(0))
}

/// Runs a unary op on `x`, the result of the same type.
pub fn unary(call: &str, x: &Tensor) -> Tensor {
    op(call, &ty(x.dtype, &x.shape), &[("x", x)])
}

/// Checks dtype, shape and every value: equal (NaN matches NaN, infinities
/// match themselves) or within `atol + rtol * |expected|`.
#[track_caller]
pub fn assert_close(got: &Tensor, dt: DType, shape: &[usize], exp: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.dtype, dt, "dtype");
    assert_eq!(got.shape, shape, "shape");
    assert_eq!(got.data.len(), exp.len(), "element count");
    for (i, (&g, &e)) in got.data.iter().zip(exp).enumerate() {
        let ok = (g.is_nan() && e.is_nan()) || g == e || (g - e).abs() <= atol + rtol * e.abs();
        assert!(
            ok,
            "element {i}: got {g:e}, expected {e:e} (rtol {rtol:e}, atol {atol:e})\n got {:?}\n exp {exp:?}",
            got.data
        );
    }
}

/// Exact comparison (integers, bools, values exact in the type).
#[track_caller]
pub fn assert_exact(got: &Tensor, dt: DType, shape: &[usize], exp: &[f64]) {
    assert_close(got, dt, shape, exp, 0.0, 0.0);
}

/// The distance between two adjacent values of a float type near `x`.
pub fn ulp(dt: DType, x: f64) -> f64 {
    let (man, emin) = match dt {
        DType::F64 => (52, -1022),
        DType::F32 => (23, -126),
        DType::F16 => (10, -14),
        DType::BF16 => (7, -126),
        DType::F8E4M3 => (3, -6),
        DType::F8E5M2 => (2, -14),
        other => panic!("no ulp for {other}"),
    };
    let e = if x == 0.0 {
        emin
    } else {
        (x.abs().log2().floor() as i32).max(emin)
    };
    2f64.powi(e - man)
}

/// Every value within `ulps` units in the last place of the result type.
#[track_caller]
pub fn assert_ulps(got: &Tensor, dt: DType, shape: &[usize], exp: &[f64], ulps: f64) {
    assert_eq!(got.dtype, dt, "dtype");
    assert_eq!(got.shape, shape, "shape");
    assert_eq!(got.data.len(), exp.len(), "element count");
    for (i, (&g, &e)) in got.data.iter().zip(exp).enumerate() {
        let ok = (g.is_nan() && e.is_nan()) || g == e || (g - e).abs() <= ulps * ulp(dt, e);
        assert!(
            ok,
            "element {i}: got {g:e}, expected {e:e} (within {ulps} ulp)\n got {:?}\n exp {exp:?}",
            got.data
        );
    }
}

/// A generator seeded from the clock; the seed is printed (shown on failure).
pub fn rng(test: &str) -> ChaCha8Rng {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
        | 1;
    eprintln!("{test}: seed {seed}");
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` values uniform in `[lo, hi)`, rounded to `dt` (never all zeros).
pub fn random(r: &mut ChaCha8Rng, dt: DType, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n).map(|_| r.random_range(lo..hi)).collect();
    Tensor::new(dt, shape, data)
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

// ---------------------------------------------------------------------------
// Graph sources and error plumbing
// ---------------------------------------------------------------------------

#[test]
fn inputs_and_weights_pass_through() {
    let src = "graph t {
  input %x: f32[2, 3]
  weight %w: f32[3]
  %y: f32[2, 3] = mul(%x, %w)
  output x = %x
  output w = %w
  output y = %y
}";
    let x = f32t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let w = f32t(&[3], &[0.5, -1.0, 2.0]);
    let outs = run_all(src, &[("x", x.clone()), ("w", w.clone())]);
    assert_eq!(outs[0], x);
    assert_eq!(outs[1], w);
    // by hand: [1*0.5, 2*-1, 3*2, 4*0.5, 5*-1, 6*2]
    assert_exact(
        &outs[2],
        DType::F32,
        &[2, 3],
        &[0.5, -2.0, 6.0, 2.0, -5.0, 12.0],
    );
}

#[test]
fn missing_or_mistyped_bindings_are_errors() {
    let src = "graph t {
  input %x: f32[2]
  %y: f32[2] = neg(%x)
  output y = %y
}";
    assert!(matches!(
        try_run(src, &[]),
        Err(InterpError::Missing { .. })
    ));
    assert!(matches!(
        try_run(src, &[("x", f64t(&[2], &[1.0, 2.0]))]),
        Err(InterpError::Binding { .. })
    ));
    assert!(matches!(
        try_run(src, &[("x", f32t(&[3], &[1.0, 2.0, 3.0]))]),
        Err(InterpError::Binding { .. })
    ));
}

#[test]
fn constant_splat_and_dense() {
    let src = "graph t {
  %a: f32[2, 3] = constant() {value = 1.5}
  %b: i32[2, 2] = constant() {value = [1, -2, 3, 2147483647]}
  %c: f64[3] = constant() {value = [0.1, -inf, 2.5]}
  %d: i8[1, 3] = constant() {value = [-128, 0, 127]}
  %e: bf16[3] = constant() {value = [1.00390625, 3.0, 0.1]}
  %f: bool[2] = constant() {value = [0, 1]}
  %g: f16[] = constant() {value = -2}
  output a = %a
  output b = %b
  output c = %c
  output d = %d
  output e = %e
  output f = %f
  output g = %g
}";
    let o = run_all(src, &[]);
    assert_exact(&o[0], DType::F32, &[2, 3], &[1.5; 6]);
    assert_exact(&o[1], DType::I32, &[2, 2], &[1.0, -2.0, 3.0, 2147483647.0]);
    assert_exact(&o[2], DType::F64, &[3], &[0.1, f64::NEG_INFINITY, 2.5]);
    assert_exact(&o[3], DType::I8, &[1, 3], &[-128.0, 0.0, 127.0]);
    // bf16: 1 + 2^-8 is the tie between 1 and 1 + 2^-7 -> even mantissa: 1.
    // 0.1 in bf16: ml_dtypes.bfloat16(0.1) = 0.10009765625
    assert_exact(&o[4], DType::BF16, &[3], &[1.0, 3.0, 0.10009765625]);
    assert_exact(&o[5], DType::Bool, &[2], &[0.0, 1.0]);
    assert_exact(&o[6], DType::F16, &[], &[-2.0]);
}

#[test]
fn iota_start_step_axis() {
    let src = "graph t {
  %a: f32[2, 3] = iota() {axis = 1}
  %b: f32[2, 3] = iota() {axis = 0, start = 1.5, step = -0.5}
  %c: i32[3, 1, 2] = iota() {axis = -1, start = 10, step = 3}
  %d: i64[5] = iota()
  output a = %a
  output b = %b
  output c = %c
  output d = %d
}";
    let o = run_all(src, &[]);
    // by hand: start + index_along_axis * step
    assert_exact(&o[0], DType::F32, &[2, 3], &[0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
    assert_exact(&o[1], DType::F32, &[2, 3], &[1.5, 1.5, 1.5, 1.0, 1.0, 1.0]);
    assert_exact(
        &o[2],
        DType::I32,
        &[3, 1, 2],
        &[10.0, 13.0, 10.0, 13.0, 10.0, 13.0],
    );
    assert_exact(&o[3], DType::I64, &[5], &[0.0, 1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn symbolic_dims_bind_from_inputs() {
    let src = "graph t {
  input %x: f32[batch, 3]
  %y: f32[batch, 3] = mul(%x, %x)
  %z: f32[3, batch] = transpose(%y) {perm = [1, 0]}
  output z = %z
}";
    let x = f32t(&[2, 3], &[1.0, 2.0, 3.0, -1.0, -2.0, 0.5]);
    let z = eval1(src, &[("x", x)]);
    // by hand: squares, transposed
    assert_exact(&z, DType::F32, &[3, 2], &[1.0, 1.0, 4.0, 4.0, 9.0, 0.25]);
}

#[test]
fn unbound_and_inconsistent_symbols() {
    let src = "graph t {
  input %x: f32[n]
  %c: f32[m] = constant() {value = 1}
  output c = %c
  output x = %x
}";
    let err = try_run(src, &[("x", f32t(&[2], &[1.0, 2.0]))]).unwrap_err();
    assert!(matches!(err, InterpError::Unbound { .. }), "{err}");
    let src = "graph t {
  input %x: f32[n, 2]
  input %y: f32[n, 2]
  %z: f32[n, 2] = add(%x, %y)
  output z = %z
}";
    let err = try_run(
        src,
        &[
            ("x", f32t(&[1, 2], &[1.0, 2.0])),
            ("y", f32t(&[2, 2], &[1.0, 2.0, 3.0, 4.0])),
        ],
    )
    .unwrap_err();
    assert!(matches!(err, InterpError::Binding { .. }), "{err}");
    // a constant and an iota of symbolic shape take the bound size
    let src = "graph t {
  input %x: f32[n]
  %c: f32[n] = constant() {value = 0.5}
  %i: f32[n] = iota() {start = 1}
  %y: f32[n] = mul(%x, %c)
  %z: f32[n] = add(%y, %i)
  output z = %z
}";
    let z = eval1(src, &[("x", f32t(&[3], &[2.0, 4.0, 6.0]))]);
    // x / 2 + (1, 2, 3)
    assert_exact(&z, DType::F32, &[3], &[2.0, 4.0, 6.0]);
}

// ---------------------------------------------------------------------------
// eval_op directly
// ---------------------------------------------------------------------------

mod eval_op_api {
    use super::*;
    use kiln_dialect::Op;
    use kiln_dialect::interp::{EvalCtx, EvalError, eval_op};
    use kiln_dialect::ops::{AttrValue, GeluApprox};
    use kiln_dialect::quant::QuantScheme;

    fn ctx(n_operands: usize, outs: &[(DType, &[usize])]) -> EvalCtx<'static> {
        EvalCtx {
            schemes: vec![None; n_operands],
            outs: outs.iter().map(|(d, s)| (*d, s.to_vec())).collect(),
        }
    }

    #[test]
    fn binary_and_unary_ops() {
        let a = f32t(&[2, 1], &[1.0, -2.0]);
        let b = f32t(&[3], &[0.5, 1.0, 2.0]);
        let out = eval_op(&Op::Mul, &[&a, &b], &ctx(2, &[(DType::F32, &[2, 3])])).unwrap();
        assert_eq!(out.len(), 1);
        // by hand: a[i] * b[j]
        assert_exact(
            &out[0],
            DType::F32,
            &[2, 3],
            &[0.5, 1.0, 2.0, -1.0, -2.0, -4.0],
        );
        let g = Op::Gelu {
            approximate: GeluApprox::Tanh,
        };
        let x = f64t(&[1], &[1.0]);
        let out = eval_op(&g, &[&x], &ctx(1, &[(DType::F64, &[1])])).unwrap();
        // numpy: 0.5*(1+np.tanh(np.sqrt(2/np.pi)*(1+0.044715)))
        assert_close(&out[0], DType::F64, &[1], &[0.8411919906082768], REL64, 0.0);
        let sm = Op::build("softmax", &[("axis".into(), AttrValue::Int(0))]).unwrap();
        let x = f64t(&[2], &[0.0, 2f64.ln()]);
        let out = eval_op(&sm, &[&x], &ctx(1, &[(DType::F64, &[2])])).unwrap();
        assert_close(
            &out[0],
            DType::F64,
            &[2],
            &[1.0 / 3.0, 2.0 / 3.0],
            REL64,
            0.0,
        );
    }

    #[test]
    fn split_gives_one_tensor_per_piece() {
        let x = f32t(&[5], &[1.0, 2.0, 3.0, 4.0, 5.0]);
        let op = Op::Split {
            axis: 0,
            sizes: vec![2, 0, 3],
        };
        let outs = ctx(
            1,
            &[(DType::F32, &[2]), (DType::F32, &[0]), (DType::F32, &[3])],
        );
        let r = eval_op(&op, &[&x], &outs).unwrap();
        assert_eq!(r.len(), 3);
        assert_exact(&r[0], DType::F32, &[2], &[1.0, 2.0]);
        assert_exact(&r[1], DType::F32, &[0], &[]);
        assert_exact(&r[2], DType::F32, &[3], &[3.0, 4.0, 5.0]);
    }

    #[test]
    fn errors() {
        let x = f32t(&[2], &[1.0, 2.0]);
        // sources are bound, not evaluated
        let e = eval_op(&Op::Input, &[], &ctx(0, &[(DType::F32, &[2])])).unwrap_err();
        assert!(matches!(e, EvalError::Source { .. }), "{e}");
        // a declared shape the op does not produce
        let e = eval_op(&Op::Neg, &[&x], &ctx(1, &[(DType::F32, &[3])])).unwrap_err();
        assert!(matches!(e, EvalError::ShapeMismatch { .. }), "{e}");
        let e = eval_op(&Op::Neg, &[&x], &ctx(1, &[(DType::F64, &[2])])).unwrap_err();
        assert!(matches!(e, EvalError::ShapeMismatch { .. }), "{e}");
        // integer division by zero
        let i = t(DType::I32, &[2], &[1.0, 2.0]);
        let z = t(DType::I32, &[], &[0.0]);
        let e = eval_op(&Op::Div, &[&i, &z], &ctx(2, &[(DType::I32, &[2])])).unwrap_err();
        assert!(matches!(e, EvalError::DivisionByZero { .. }), "{e}");
    }

    #[test]
    fn quantize_and_dequantize_with_schemes() {
        let scheme = QuantScheme::group(2, 0, DType::F32);
        let x = f32t(&[4], &[0.5, -1.5, 3.0, 100.0]);
        let s = f32t(&[2], &[0.5, 2.0]);
        let q = eval_op(
            &Op::Quantize {
                dtype: DType::I4,
                scheme: scheme.clone(),
            },
            &[&x, &s],
            &ctx(2, &[(DType::I4, &[4])]),
        )
        .unwrap();
        // by hand: 1, -3, 1.5 -> 2, 50 -> 7
        assert_exact(&q[0], DType::I4, &[4], &[1.0, -3.0, 2.0, 7.0]);
        let cx = EvalCtx {
            schemes: vec![Some(&scheme), None],
            outs: vec![(DType::F32, vec![4])],
        };
        let d = eval_op(&Op::Dequantize { dtype: DType::F32 }, &[&q[0], &s], &cx).unwrap();
        assert_exact(&d[0], DType::F32, &[4], &[0.5, -1.5, 4.0, 14.0]);
    }
}
