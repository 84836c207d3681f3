//! Linear quantization: `DequantizeLinear`, `QuantizeLinear` (per tensor
//! or per axis), `DynamicQuantizeLinear`, `MatMulInteger` and
//! `QLinearMatMul`, written with the dialect's reductions, elementwise
//! ops, casts and `matmul` (block quantization, opset 21's `block_size`, is
//! not imported yet).

use kiln_dialect::ops::Op;
use kiln_dialect::shape::Dim;
use kiln_dialect::{DType, Value};

use super::super::error::OnnxError;
use super::super::importer::Cx;
use super::super::node::NodeCx;
use super::super::tensor;
use super::movement::axis;

/// A per-axis parameter (`[C]`) reshaped to broadcast along `axis` of a
/// rank-`rank` tensor; scalars and one-element tensors pass unchanged.
fn along(cx: &mut Cx, n: &NodeCx, p: Value, axis_: usize, rank: usize) -> Result<Value, OnnxError> {
    let ty = cx.ty(p);
    if ty.rank() == 0 || rank == 0 || ty.shape.numel() == Some(1) && ty.rank() <= 1 {
        return Ok(p);
    }
    if ty.rank() != 1 {
        return Err(n.unsupported("block quantization (scales of rank 2 or more)"));
    }
    let mut shape = vec![Dim::Static(1); rank];
    shape[axis_] = ty.shape.dims()[0].clone();
    cx.add(n, Op::Reshape { shape }, &[p])
}

fn check_block(n: &NodeCx) -> Result<(), OnnxError> {
    if n.int("block_size", 0)? != 0 {
        return Err(n.unsupported("block_size other than 0"));
    }
    Ok(())
}

/// `DequantizeLinear(x, scale, zero_point?) {axis = 1}`: `(x - zero_point) * scale`.
pub fn dequantize(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&["axis", "block_size", "output_dtype"])?;
    check_block(n)?;
    let x = cx.value(n, 0)?;
    let scale = cx.value(n, 1)?;
    let zp = cx.opt_value(n, 2)?;
    let rank = cx.ty(x).rank();
    let a = if rank == 0 {
        0
    } else {
        axis(n, cx, n.int("axis", 1)?, rank)?
    };
    let dt = cx.ty(scale).dtype;
    let scale = along(cx, n, scale, a, rank)?;
    let mut v = cx.add(n, Op::Cast { dtype: dt }, &[x])?;
    if let Some(z) = zp {
        let z = along(cx, n, z, a, rank)?;
        let z = cx.add(n, Op::Cast { dtype: dt }, &[z])?;
        v = cx.add(n, Op::Sub, &[v, z])?;
    }
    cx.add(n, Op::Mul, &[v, scale])
}

/// `QuantizeLinear(x, scale, zero_point?) {axis = 1}`:
/// `saturate(round(x / scale) + zero_point)` in the zero point's type
/// (`uint8` without one), rounding half to even.
pub fn quantize(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&[
        "axis",
        "block_size",
        "output_dtype",
        "saturate",
        "precision",
    ])?;
    check_block(n)?;
    let x = cx.value(n, 0)?;
    let scale = cx.value(n, 1)?;
    let zp = cx.opt_value(n, 2)?;
    let rank = cx.ty(x).rank();
    let a = if rank == 0 {
        0
    } else {
        axis(n, cx, n.int("axis", 1)?, rank)?
    };
    let out = match (zp, n.int("output_dtype", 0)?) {
        (Some(z), _) => cx.ty(z).dtype,
        (None, 0) => DType::U8,
        (None, code) => tensor::dtype_of(code as i32).ok_or_else(|| {
            n.unsupported(format!(
                "output_dtype = {}",
                tensor::dtype_name(code as i32)
            ))
        })?,
    };
    let dt = cx.ty(x).dtype;
    let scale = along(cx, n, scale, a, rank)?;
    let scale = if cx.ty(scale).dtype != dt {
        cx.add(n, Op::Cast { dtype: dt }, &[scale])?
    } else {
        scale
    };
    let q = cx.add(n, Op::Div, &[x, scale])?;
    let zp = zp.map(|z| along(cx, n, z, a, rank)).transpose()?;
    requantize(cx, n, q, zp, out)
}

/// `DynamicQuantizeLinear(x)` (opset 11): uint8 codes of `x` with a scale
/// and zero point computed from `x` itself, per tensor, as onnxruntime's
/// dynamic quantization emits before `MatMulInteger`:
///
/// ```text
/// lo = min(0, min(x)), hi = max(0, max(x))
/// scale = (hi - lo) / 255            (1 / 255 when hi = lo)
/// zero = round(clamp(-lo / scale, 0, 255))
/// y = saturate(round(x / scale) + zero)
/// ```
///
/// in f32, rounding half to even. Outputs `y`, `scale`, `zero`.
pub fn dynamic_quantize(cx: &mut Cx, n: &NodeCx) -> Result<Vec<Value>, OnnxError> {
    n.only(&[])?;
    let x = cx.value(n, 0)?;
    let ty = cx.ty(x).clone();
    if ty.dtype != DType::F32 {
        return Err(n.error(
            format!("input 0 must be float32, found {}", ty.dtype),
            cx.shapes(n),
        ));
    }
    let axes: Vec<i64> = (0..ty.rank() as i64).collect();
    let f = DType::F32;
    let (zero, one, qmax) = (cx.scalar(f, 0.0), cx.scalar(f, 1.0), cx.scalar(f, 255.0));
    let (lo, hi) = if axes.is_empty() {
        (x, x)
    } else {
        let keepdim = false;
        (
            cx.add(
                n,
                Op::ReduceMin {
                    axes: axes.clone(),
                    keepdim,
                },
                &[x],
            )?,
            cx.add(n, Op::ReduceMax { axes, keepdim }, &[x])?,
        )
    };
    let lo = cx.add(n, Op::Min, &[lo, zero])?;
    let hi = cx.add(n, Op::Max, &[hi, zero])?;
    let range = cx.add(n, Op::Sub, &[hi, lo])?;
    let empty = cx.add(n, Op::Eq, &[range, zero])?;
    let range = cx.add(n, Op::Where, &[empty, one, range])?;
    let scale = cx.add(n, Op::Div, &[range, qmax])?;
    let shifted = cx.add(n, Op::Div, &[lo, scale])?;
    let zp = cx.add(n, Op::Sub, &[zero, shifted])?;
    let zp = cx.add(
        n,
        Op::Clamp {
            min: Some(0.0),
            max: Some(255.0),
        },
        &[zp],
    )?;
    let zp = cx.add(n, Op::Round, &[zp])?;
    let zp = cx.add(n, Op::Cast { dtype: DType::U8 }, &[zp])?;
    let y = cx.add(n, Op::Div, &[x, scale])?;
    let y = requantize(cx, n, y, Some(zp), DType::U8)?;
    Ok(vec![y, scale, zp])
}

/// `saturate(round(y) + zero)` as `out` (`uint8` or `int8`), rounding half
/// to even; `zero` already shaped to broadcast against `y`.
fn requantize(
    cx: &mut Cx,
    n: &NodeCx,
    y: Value,
    zero: Option<Value>,
    out: DType,
) -> Result<Value, OnnxError> {
    let (lo, hi) = match out {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        other => return Err(n.unsupported(format!("quantizing to {other}"))),
    };
    let dt = cx.ty(y).dtype;
    let mut q = cx.add(n, Op::Round, &[y])?;
    if let Some(z) = zero {
        let z = cx.add(n, Op::Cast { dtype: dt }, &[z])?;
        q = cx.add(n, Op::Add, &[q, z])?;
    }
    let q = cx.add(
        n,
        Op::Clamp {
            min: Some(lo),
            max: Some(hi),
        },
        &[q],
    )?;
    cx.add(n, Op::Cast { dtype: out }, &[q])
}

/// `MatMulInteger(a, b, a_zero_point?, b_zero_point?)`: `(a - za) @ (b - zb)`
/// in i32 (`za` per row of `a` when it is a vector).
pub fn matmul_integer(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&[])?;
    let a = cx.value(n, 0)?;
    let b = cx.value(n, 1)?;
    let za = cx.opt_value(n, 2)?;
    let zb = cx.opt_value(n, 3)?;
    integer_product(cx, n, (a, za), (b, zb))
}

/// `QLinearMatMul(a, a_scale, a_zero_point, b, b_scale, b_zero_point,
/// y_scale, y_zero_point)`: the i32 product of [`matmul_integer`],
/// multiplied by `a_scale * b_scale / y_scale` in f32, rounded half to even,
/// plus `y_zero_point`, saturated to its type. Scales and zero points are
/// per tensor, per row of `a` (and of `y`), or per column of `b`.
pub fn qlinear_matmul(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&[])?;
    let a = cx.value(n, 0)?;
    let a_scale = cx.value(n, 1)?;
    let za = cx.opt_value(n, 2)?;
    let b = cx.value(n, 3)?;
    let b_scale = cx.value(n, 4)?;
    let zb = cx.opt_value(n, 5)?;
    let y_scale = cx.value(n, 6)?;
    let zy = cx.opt_value(n, 7)?;
    let out = match zy {
        Some(z) => cx.ty(z).dtype,
        None => cx.ty(a).dtype,
    };
    let product = integer_product(cx, n, (a, za), (b, zb))?;
    let f = DType::F32;
    // the multiplier first, as the reference computes it
    let a_scale = per_row(cx, n, a_scale)?;
    let y_scale = per_row(cx, n, y_scale)?;
    let mut scales = Vec::new();
    for s in [a_scale, b_scale, y_scale] {
        scales.push(if cx.ty(s).dtype == f {
            s
        } else {
            cx.add(n, Op::Cast { dtype: f }, &[s])?
        });
    }
    let m = cx.add(n, Op::Mul, &[scales[0], scales[1]])?;
    let m = cx.add(n, Op::Div, &[m, scales[2]])?;
    let y = cx.add(n, Op::Cast { dtype: f }, &[product])?;
    let y = cx.add(n, Op::Mul, &[y, m])?;
    let zy = zy.map(|z| per_row(cx, n, z)).transpose()?;
    requantize(cx, n, y, zy, out)
}

/// A per-row vector (`[M]`, more than one element) as a column `[M, 1]`
/// that broadcasts along the rows of a matrix; other shapes pass unchanged.
fn per_row(cx: &mut Cx, n: &NodeCx, v: Value) -> Result<Value, OnnxError> {
    let ty = cx.ty(v);
    if ty.rank() == 1 && ty.shape.numel() != Some(1) {
        cx.add(n, Op::Unsqueeze { axes: vec![1] }, &[v])
    } else {
        Ok(v)
    }
}

/// `(a - za) @ (b - zb)` in i32, each zero point optional.
fn integer_product(
    cx: &mut Cx,
    n: &NodeCx,
    (a, za): (Value, Option<Value>),
    (b, zb): (Value, Option<Value>),
) -> Result<Value, OnnxError> {
    let mut a = cx.add(n, Op::Cast { dtype: DType::I32 }, &[a])?;
    let mut b = cx.add(n, Op::Cast { dtype: DType::I32 }, &[b])?;
    if let Some(z) = za {
        let z = cx.add(n, Op::Cast { dtype: DType::I32 }, &[z])?;
        let z = per_row(cx, n, z)?;
        a = cx.add(n, Op::Sub, &[a, z])?;
    }
    if let Some(z) = zb {
        let z = cx.add(n, Op::Cast { dtype: DType::I32 }, &[z])?;
        b = cx.add(n, Op::Sub, &[b, z])?;
    }
    cx.add(
        n,
        Op::Matmul {
            transpose_a: false,
            transpose_b: false,
        },
        &[a, b],
    )
}
