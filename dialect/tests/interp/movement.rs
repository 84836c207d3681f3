//! Data movement: reshape, transpose, expand, slice, concat, split, gather,
//! embedding, pad, squeeze, unsqueeze.

use super::*;
use DType::*;

fn arange(dt: DType, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    t(dt, shape, &(0..n).map(|i| i as f64).collect::<Vec<_>>())
}

#[test]
fn reshape_static_and_symbolic() {
    let x = arange(F32, &[2, 3, 4]);
    let y = unary_to("reshape(%x) {shape = [4, 6]}", &x, "f32[4, 6]");
    assert_exact(&y, F32, &[4, 6], &x.data);
    let v = arange(I32, &[6]);
    let y = unary_to("reshape(%x) {shape = [1, 2, 3]}", &v, "i32[1, 2, 3]");
    assert_exact(&y, I32, &[1, 2, 3], &v.data);
    let s = t(F64, &[], &[7.0]);
    let y = unary_to("reshape(%x) {shape = [1, 1]}", &s, "f64[1, 1]");
    assert_exact(&y, F64, &[1, 1], &[7.0]);
    // a symbolic batch, bound to 3 by the input
    let src = "graph t {
  input %x: f32[batch, 6]
  %r: f32[batch, 2, 3] = reshape(%x) {shape = [batch, 2, 3]}
  %f: f32[6, batch] = reshape(%x) {shape = [6, batch]}
  %s: f32[batch, 3] = reduce_sum(%r) {axes = [1]}
  output r = %r
  output f = %f
  output s = %s
}";
    let x = arange(F32, &[3, 6]);
    let o = run_all(src, &[("x", x.clone())]);
    assert_exact(&o[0], F32, &[3, 2, 3], &x.data);
    assert_exact(&o[1], F32, &[6, 3], &x.data);
    // by hand: row b of x is 6b..6b+5; sums of (6b + j) + (6b + 3 + j)
    let exp: Vec<f64> = (0..3)
        .flat_map(|b| (0..3).map(move |j| (12 * b + 2 * j + 3) as f64))
        .collect();
    assert_exact(&o[2], F32, &[3, 3], &exp);
}

/// One-op graph with an explicit result type.
fn unary_to(call: &str, x: &Tensor, result: &str) -> Tensor {
    op(call, result, &[("x", x)])
}

#[test]
fn transpose_permutes_axes() {
    let x = arange(F64, &[2, 3, 4]);
    // out[a][b][c] = x[b][c][a] = 12 b + 4 c + a
    let y = unary_to("transpose(%x) {perm = [2, 0, 1]}", &x, "f64[4, 2, 3]");
    let mut exp = vec![];
    for a in 0..4 {
        for b in 0..2 {
            for c in 0..3 {
                exp.push((12 * b + 4 * c + a) as f64);
            }
        }
    }
    assert_exact(&y, F64, &[4, 2, 3], &exp);
    // negative entries in perm; [1, 0, 2] swaps the first two axes
    let y = unary_to("transpose(%x) {perm = [-2, 0, -1]}", &x, "f64[3, 2, 4]");
    let mut exp = vec![];
    for b in 0..3 {
        for a in 0..2 {
            for c in 0..4 {
                exp.push((12 * a + 4 * b + c) as f64);
            }
        }
    }
    assert_exact(&y, F64, &[3, 2, 4], &exp);
    // size-1 and odd axes
    let z = arange(I8, &[1, 5, 1]);
    let y = unary_to("transpose(%x) {perm = [2, 1, 0]}", &z, "i8[1, 5, 1]");
    assert_exact(&y, I8, &[1, 5, 1], &z.data);
    let m = arange(F32, &[3, 5]);
    let y = unary_to("transpose(%x) {perm = [1, 0]}", &m, "f32[5, 3]");
    let exp: Vec<f64> = (0..15).map(|i| ((i % 3) * 5 + i / 3) as f64).collect();
    assert_exact(&y, F32, &[5, 3], &exp);
}

#[test]
fn expand_broadcasts() {
    let x = f32t(&[3, 1], &[1.0, 2.0, 3.0]);
    let y = unary_to("expand(%x) {shape = [2, 3, 4]}", &x, "f32[2, 3, 4]");
    let exp: Vec<f64> = (0..24).map(|i| ((i / 4) % 3 + 1) as f64).collect();
    assert_exact(&y, F32, &[2, 3, 4], &exp);
    let s = t(I32, &[], &[-4.0]);
    let y = unary_to("expand(%x) {shape = [2, 2]}", &s, "i32[2, 2]");
    assert_exact(&y, I32, &[2, 2], &[-4.0; 4]);
    let one = f32t(&[1], &[0.5]);
    let y = unary_to("expand(%x) {shape = [5]}", &one, "f32[5]");
    assert_exact(&y, F32, &[5], &[0.5; 5]);
    // to the same shape: identity
    let y = unary_to("expand(%x) {shape = [3, 1]}", &x, "f32[3, 1]");
    assert_exact(&y, F32, &[3, 1], &x.data);
}

#[track_caller]
fn slice(x: &Tensor, attrs: &str, shape: &[usize], exp: &[f64]) {
    let y = unary_to(&format!("slice(%x) {{{attrs}}}"), x, &ty(x.dtype, shape));
    assert_exact(&y, x.dtype, shape, exp);
}

#[test]
fn slice_steps_negative_indices_clamping() {
    let x = arange(F32, &[5, 7]);
    // numpy: x[:, 1:6:2]
    slice(
        &x,
        "axes = [1], starts = [1], ends = [6], steps = [2]",
        &[5, 3],
        &[
            1.0, 3.0, 5.0, 8.0, 10.0, 12.0, 15.0, 17.0, 19.0, 22.0, 24.0, 26.0, 29.0, 31.0, 33.0,
        ],
    );
    // numpy: x[-1:-6:-2, 6:-100:-3]
    slice(
        &x,
        "axes = [0, 1], starts = [-1, 6], ends = [-6, -100], steps = [-2, -3]",
        &[3, 3],
        &[34.0, 31.0, 28.0, 20.0, 17.0, 14.0, 6.0, 3.0, 0.0],
    );
    // numpy: x[:, 5:1000] (end clamped)
    slice(
        &x,
        "axes = [1], starts = [5], ends = [1000]",
        &[5, 2],
        &[5.0, 6.0, 12.0, 13.0, 19.0, 20.0, 26.0, 27.0, 33.0, 34.0],
    );
    // numpy: x[:, -3:-1]
    slice(
        &x,
        "axes = [-1], starts = [-3], ends = [-1]",
        &[5, 2],
        &[4.0, 5.0, 11.0, 12.0, 18.0, 19.0, 25.0, 26.0, 32.0, 33.0],
    );
    // numpy: x[10:-1000:-1, :] (start clamped to the last row, end before the first)
    let rev: Vec<f64> = (0..35).map(|i| ((4 - i / 7) * 7 + i % 7) as f64).collect();
    slice(
        &x,
        "axes = [0], starts = [10], ends = [-1000], steps = [-1]",
        &[5, 7],
        &rev,
    );
    // numpy: x[3:0:-1, ::3] (i64::MAX as the open end)
    slice(
        &x,
        "axes = [0, 1], starts = [3, 0], ends = [0, 9223372036854775807], steps = [-1, 3]",
        &[3, 3],
        &[21.0, 24.0, 27.0, 14.0, 17.0, 20.0, 7.0, 10.0, 13.0],
    );
    // numpy: x[-100:2, -1:-8:-1]
    slice(
        &x,
        "axes = [0, 1], starts = [-100, -1], ends = [2, -8], steps = [1, -1]",
        &[2, 7],
        &[
            6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 13.0, 12.0, 11.0, 10.0, 9.0, 8.0, 7.0,
        ],
    );
    // empty results
    slice(&x, "axes = [1], starts = [4], ends = [2]", &[5, 0], &[]);
    slice(
        &x,
        "axes = [0], starts = [2], ends = [4], steps = [-1]",
        &[0, 7],
        &[],
    );
    slice(&x, "axes = [0], starts = [7], ends = [9]", &[0, 7], &[]);
    // size-1 axis, 3-D
    let z = arange(I32, &[1, 3, 5]);
    slice(
        &z,
        "axes = [0, 2], starts = [0, 4], ends = [1, 0], steps = [1, -2]",
        &[1, 3, 2],
        &[4.0, 2.0, 9.0, 7.0, 14.0, 12.0],
    );
}

#[test]
fn concat_three_operands() {
    let a = f32t(&[2, 1], &[1.0, 2.0]);
    let b = f32t(&[2, 3], &[10.0, 11.0, 12.0, 20.0, 21.0, 22.0]);
    let c = f32t(&[2, 2], &[-1.0, -2.0, -3.0, -4.0]);
    let ins = [("a", &a), ("b", &b), ("c", &c)];
    let y = op("concat(%a, %b, %c) {axis = 1}", "f32[2, 6]", &ins);
    assert_exact(
        &y,
        F32,
        &[2, 6],
        &[
            1.0, 10.0, 11.0, 12.0, -1.0, -2.0, 2.0, 20.0, 21.0, 22.0, -3.0, -4.0,
        ],
    );
    let y = op("concat(%a, %b, %c) {axis = -1}", "f32[2, 6]", &ins);
    assert_eq!(y.data[4], -1.0);
    // axis 0 with the same operand twice, and a single operand
    let y = op("concat(%c, %b, %c) {axis = 1}", "f32[2, 7]", &ins);
    assert_exact(
        &y,
        F32,
        &[2, 7],
        &[
            -1.0, -2.0, 10.0, 11.0, 12.0, -1.0, -2.0, -3.0, -4.0, 20.0, 21.0, 22.0, -3.0, -4.0,
        ],
    );
    let y = op("concat(%b, %b) {axis = 0}", "f32[4, 3]", &ins);
    let mut exp = b.data.clone();
    exp.extend(&b.data);
    assert_exact(&y, F32, &[4, 3], &exp);
    let y = op("concat(%b) {axis = 0}", "f32[2, 3]", &ins);
    assert_exact(&y, F32, &[2, 3], &b.data);
    // 3-D, middle axis, integer
    let p = arange(I64, &[2, 1, 2]);
    let q = t(I64, &[2, 2, 2], &[-1.0; 8]);
    let y = op(
        "concat(%p, %q) {axis = 1}",
        "i64[2, 3, 2]",
        &[("p", &p), ("q", &q)],
    );
    assert_exact(
        &y,
        I64,
        &[2, 3, 2],
        &[
            0.0, 1.0, -1.0, -1.0, -1.0, -1.0, 2.0, 3.0, -1.0, -1.0, -1.0, -1.0,
        ],
    );
}

#[test]
fn split_into_three() {
    let src = "graph t {
  input %x: f32[2, 7]
  %a: f32[2, 3], %b: f32[2, 1], %c: f32[2, 3] = split(%x) {axis = 1, sizes = [3, 1, 3]}
  %p: f32[2, 0], %q: f32[2, 7], %r: f32[2, 0] = split(%x) {axis = -1, sizes = [0, 7, 0]}
  %u: f32[1, 7], %v: f32[1, 7] = split(%x) {axis = 0, sizes = [1, 1]}
  output a = %a
  output b = %b
  output c = %c
  output p = %p
  output q = %q
  output r = %r
  output u = %u
  output v = %v
}";
    let x = arange(F32, &[2, 7]);
    let o = run_all(src, &[("x", x.clone())]);
    assert_exact(&o[0], F32, &[2, 3], &[0.0, 1.0, 2.0, 7.0, 8.0, 9.0]);
    assert_exact(&o[1], F32, &[2, 1], &[3.0, 10.0]);
    assert_exact(&o[2], F32, &[2, 3], &[4.0, 5.0, 6.0, 11.0, 12.0, 13.0]);
    assert_exact(&o[3], F32, &[2, 0], &[]);
    assert_exact(&o[4], F32, &[2, 7], &x.data);
    assert_exact(&o[5], F32, &[2, 0], &[]);
    assert_exact(&o[6], F32, &[1, 7], &x.data[..7]);
    assert_exact(&o[7], F32, &[1, 7], &x.data[7..]);
}

#[test]
fn gather_axes_negative_and_2d_indices() {
    let x = arange(F32, &[3, 4]);
    // numpy: np.take(x, [[0, -1], [2, 1]], axis=1) -> [3, 2, 2]
    let idx = t(I64, &[2, 2], &[0.0, -1.0, 2.0, 1.0]);
    let y = op(
        "gather(%x, %i) {axis = 1}",
        "f32[3, 2, 2]",
        &[("x", &x), ("i", &idx)],
    );
    assert_exact(
        &y,
        F32,
        &[3, 2, 2],
        &[0.0, 3.0, 2.0, 1.0, 4.0, 7.0, 6.0, 5.0, 8.0, 11.0, 10.0, 9.0],
    );
    // numpy: np.take(x, [-1, 0, 0], axis=0), i32 indices
    let idx = t(I32, &[3], &[-1.0, 0.0, 0.0]);
    let y = op("gather(%x, %i)", "f32[3, 4]", &[("x", &x), ("i", &idx)]);
    assert_exact(
        &y,
        F32,
        &[3, 4],
        &[8.0, 9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0],
    );
    // scalar index drops the axis: np.take(x, 2, axis=-1)
    let idx = t(I64, &[], &[2.0]);
    let y = op(
        "gather(%x, %i) {axis = -1}",
        "f32[3]",
        &[("x", &x), ("i", &idx)],
    );
    assert_exact(&y, F32, &[3], &[2.0, 6.0, 10.0]);
    // 3-D middle axis
    let z = arange(I8, &[2, 3, 2]);
    let idx = t(I32, &[1], &[-2.0]);
    let y = op(
        "gather(%x, %i) {axis = 1}",
        "i8[2, 1, 2]",
        &[("x", &z), ("i", &idx)],
    );
    assert_exact(&y, I8, &[2, 1, 2], &[2.0, 3.0, 8.0, 9.0]);
}

#[test]
fn gather_out_of_range_is_an_error() {
    let x = arange(F32, &[3, 4]);
    for bad in [4.0, -5.0] {
        let idx = t(I64, &[2], &[0.0, bad]);
        let err = try_op(
            "gather(%x, %i) {axis = 1}",
            "f32[3, 2]",
            &[("x", &x), ("i", &idx)],
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                InterpError::Eval {
                    error: interp::EvalError::IndexOutOfRange { .. },
                    ..
                }
            ),
            "{err}"
        );
    }
    let table = arange(F32, &[5, 2]);
    let ids = t(I32, &[1], &[5.0]);
    let err = try_op(
        "embedding(%t, %i)",
        "f32[1, 2]",
        &[("t", &table), ("i", &ids)],
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            InterpError::Eval {
                error: interp::EvalError::IndexOutOfRange { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn embedding_rows() {
    let table = arange(F32, &[5, 3]);
    let ids = t(I32, &[2, 3], &[4.0, 0.0, 2.0, 2.0, 1.0, 3.0]);
    let y = op(
        "embedding(%t, %i)",
        "f32[2, 3, 3]",
        &[("t", &table), ("i", &ids)],
    );
    // row r of the table is [3r, 3r+1, 3r+2]
    let rows = [4, 0, 2, 2, 1, 3];
    let exp: Vec<f64> = rows
        .iter()
        .flat_map(|&r| (0..3).map(move |j| (3 * r + j) as f64))
        .collect();
    assert_exact(&y, F32, &[2, 3, 3], &exp);
    let ids = t(I64, &[1], &[3.0]);
    let y = op(
        "embedding(%t, %i)",
        "f32[1, 3]",
        &[("t", &table), ("i", &ids)],
    );
    assert_exact(&y, F32, &[1, 3], &[9.0, 10.0, 11.0]);
}

#[test]
fn pad_constant_reflect_edge() {
    let x = f32t(&[2, 3], &[0.0, 1.0, 2.0, 4.0, 5.0, 6.0]);
    // numpy: np.pad(x, ((1, 0), (0, 2)), constant_values=9.5)
    let y = unary_to(
        "pad(%x) {pads = [1, 0, 0, 2], value = 9.5}",
        &x,
        "f32[3, 5]",
    );
    assert_exact(
        &y,
        F32,
        &[3, 5],
        &[
            9.5, 9.5, 9.5, 9.5, 9.5, 0.0, 1.0, 2.0, 9.5, 9.5, 4.0, 5.0, 6.0, 9.5, 9.5,
        ],
    );
    // default value 0, explicit constant mode
    let y = unary_to(
        "pad(%x) {pads = [0, 1, 0, 0], mode = constant}",
        &x,
        "f32[2, 4]",
    );
    assert_exact(&y, F32, &[2, 4], &[0.0, 0.0, 1.0, 2.0, 0.0, 4.0, 5.0, 6.0]);
    let y12 = arange(F64, &[3, 4]);
    // numpy: np.pad(y, ((1, 2), (2, 3)), mode='reflect')
    let y = unary_to(
        "pad(%x) {pads = [1, 2, 2, 3], mode = reflect}",
        &y12,
        "f64[6, 9]",
    );
    assert_exact(
        &y,
        F64,
        &[6, 9],
        &[
            6.0, 5.0, 4.0, 5.0, 6.0, 7.0, 6.0, 5.0, 4.0, 2.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 1.0,
            0.0, 6.0, 5.0, 4.0, 5.0, 6.0, 7.0, 6.0, 5.0, 4.0, 10.0, 9.0, 8.0, 9.0, 10.0, 11.0,
            10.0, 9.0, 8.0, 6.0, 5.0, 4.0, 5.0, 6.0, 7.0, 6.0, 5.0, 4.0, 2.0, 1.0, 0.0, 1.0, 2.0,
            3.0, 2.0, 1.0, 0.0,
        ],
    );
    // numpy: np.pad(y, ((2, 0), (1, 3)), mode='edge')
    let y = unary_to(
        "pad(%x) {pads = [2, 1, 0, 3], mode = edge}",
        &y12,
        "f64[5, 8]",
    );
    assert_exact(
        &y,
        F64,
        &[5, 8],
        &[
            0.0, 0.0, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 0.0, 0.0, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 0.0,
            0.0, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 4.0, 4.0, 5.0, 6.0, 7.0, 7.0, 7.0, 7.0, 8.0, 8.0,
            9.0, 10.0, 11.0, 11.0, 11.0, 11.0,
        ],
    );
    // numpy: np.pad(np.arange(5), 4, mode='reflect'), odd size
    let z = arange(I32, &[5]);
    let y = unary_to("pad(%x) {pads = [4, 4], mode = reflect}", &z, "i32[13]");
    assert_exact(
        &y,
        I32,
        &[13],
        &[
            4.0, 3.0, 2.0, 1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0, 1.0, 0.0,
        ],
    );
    // edge on a size-1 axis repeats it
    let s = f32t(&[1, 2], &[3.0, -1.0]);
    let y = unary_to(
        "pad(%x) {pads = [2, 0, 0, 1], mode = edge}",
        &s,
        "f32[3, 3]",
    );
    assert_exact(
        &y,
        F32,
        &[3, 3],
        &[3.0, -1.0, -1.0, 3.0, -1.0, -1.0, 3.0, -1.0, -1.0],
    );
    // integer tensors take an integral pad value
    let i = t(I8, &[1], &[1.0]);
    let y = unary_to("pad(%x) {pads = [1, 0], value = -2}", &i, "i8[2]");
    assert_exact(&y, I8, &[2], &[-2.0, 1.0]);
}

#[test]
fn squeeze_unsqueeze() {
    let x = arange(F32, &[1, 3, 1, 2]);
    let y = unary_to("squeeze(%x) {axes = [0, -2]}", &x, "f32[3, 2]");
    assert_exact(&y, F32, &[3, 2], &x.data);
    let y = unary_to("squeeze(%x) {axes = [2]}", &x, "f32[1, 3, 2]");
    assert_exact(&y, F32, &[1, 3, 2], &x.data);
    let s = t(I64, &[1], &[5.0]);
    let y = unary_to("squeeze(%x) {axes = [0]}", &s, "i64[]");
    assert_exact(&y, I64, &[], &[5.0]);
    let m = arange(F32, &[3, 2]);
    let y = unary_to("unsqueeze(%x) {axes = [0, 3]}", &m, "f32[1, 3, 2, 1]");
    assert_exact(&y, F32, &[1, 3, 2, 1], &m.data);
    let y = unary_to("unsqueeze(%x) {axes = [-1]}", &m, "f32[3, 2, 1]");
    assert_exact(&y, F32, &[3, 2, 1], &m.data);
    let y = unary_to("unsqueeze(%x) {axes = [1]}", &m, "f32[3, 1, 2]");
    assert_exact(&y, F32, &[3, 1, 2], &m.data);
    let r0 = t(F64, &[], &[2.5]);
    let y = unary_to("unsqueeze(%x) {axes = [0, 1]}", &r0, "f64[1, 1]");
    assert_exact(&y, F64, &[1, 1], &[2.5]);
}

#[test]
fn relayout_keeps_every_value() {
    // layouts are physical only: relayout is the identity on values
    let src = "graph t {
  input %x: f32[1, 2, 3, 1]
  %y: f32[1, 2, 3, 1] nhwc = relayout(%x) {layout = nhwc}
  %z: f32[1, 2, 3, 1] = relayout(%y) {layout = row_major}
  output z = %z
}
";
    let g = kiln_dialect::text::parse(src).unwrap();
    let x = kiln_dialect::interp::Tensor::new(
        kiln_dialect::DType::F32,
        &[1, 2, 3, 1],
        vec![1.5, -2.0, 3.25, 0.5, 7.0, -1.0],
    );
    let out = kiln_dialect::interp::run(
        &g,
        &std::collections::HashMap::from([("x".to_string(), x.clone())]),
    )
    .unwrap();
    assert_eq!(out[0].1.data, vec![1.5, -2.0, 3.25, 0.5, 7.0, -1.0]);
    assert_eq!(out[0].1.shape, vec![1, 2, 3, 1]);
}
