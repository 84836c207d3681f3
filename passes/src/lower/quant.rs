//! Compute definitions of `quantize` and `dequantize` for every
//! granularity: the scale (and zero point) of an element is read at the
//! index its scheme assigns; a global scale is a one-element tensor.

use kiln_dialect::DType;
use kiln_dialect::graph::Value;
use kiln_dialect::kernel::{Expr, Unary};
use kiln_dialect::quant::{Granularity, QuantScheme};

use super::LowerError;
use super::compute::from_float;
use super::cx::Cx;
use super::ex::{self, float, int};

type R<T> = Result<T, LowerError>;

/// The scale tensor index of element `idx` under `scheme`.
fn scale_index(cx: &Cx, scale: Value, scheme: &QuantScheme, idx: &[Expr]) -> Vec<Expr> {
    match &scheme.granularity {
        Granularity::PerTensor => vec![int(0); cx.shape(scale).rank()],
        Granularity::PerChannel { axis } => vec![idx[*axis].clone()],
        Granularity::Group { size, axis } | Granularity::Block { size, axis } => {
            let mut i = idx.to_vec();
            i[*axis] = ex::div(i[*axis].clone(), int(*size as i64));
            i
        }
    }
}

/// `(scale, zero, global)` of element `idx`, as floats.
fn params(
    cx: &mut Cx,
    ops: &[Value],
    scheme: &QuantScheme,
    idx: &[Expr],
) -> R<(Expr, Option<Expr>, Option<Expr>)> {
    let si = scale_index(cx, ops[1], scheme, idx);
    let scale = cx.at_float(ops[1], &si)?;
    let zero = match scheme.zero {
        Some(_) => Some(cx.at_float(ops[2], &si)?),
        None => None,
    };
    let gi = if scheme.zero.is_some() { 3 } else { 2 };
    let global = match (scheme.global, ops.get(gi)) {
        (Some(_), Some(&g)) => {
            let zeros = vec![int(0); cx.shape(g).rank()];
            Some(cx.at_float(g, &zeros)?)
        }
        _ => None,
    };
    Ok((scale, zero, global))
}

/// Integer codes: `saturate(round_half_even(x / (scale * global)) + zero)`;
/// float codes: `x / (scale * global)` rounded to the code type.
pub fn quantize(
    cx: &mut Cx,
    v: Value,
    idx: &[Expr],
    ops: &[Value],
    dtype: DType,
    scheme: &QuantScheme,
) -> R<Expr> {
    if ops.len() < 2 {
        return Err(LowerError::unsupported(cx, v, "quantize without a scale"));
    }
    let (scale, zero, global) = params(cx, ops, scheme, idx)?;
    let x = cx.at_float(ops[0], idx)?;
    let den = match global {
        Some(g) => ex::mul(scale, g),
        None => scale,
    };
    let q = ex::div(x, den);
    if dtype.has_integer_values() {
        let mut r = ex::un(Unary::Round, q);
        if let Some(z) = zero {
            r = ex::add(r, z);
        }
        let (lo, hi) = dtype.int_range().unwrap_or((i64::MIN, i64::MAX));
        let r = ex::clamp(r, Some(float(lo as f64)), Some(float(hi as f64)));
        Ok(ex::cast(kiln_dialect::kernel::Ty::I64, r))
    } else {
        Ok(Expr::Round(dtype, Box::new(q)))
    }
}

/// `(q - zero) * scale * global`, under the scheme of `q`'s type.
pub fn dequantize(cx: &mut Cx, v: Value, idx: &[Expr], ops: &[Value], dtype: DType) -> R<Expr> {
    let Some(scheme) = cx.ty(ops[0]).quant.clone() else {
        return Err(LowerError::unsupported(
            cx,
            v,
            "dequantize of an unquantized tensor",
        ));
    };
    if ops.len() < 2 {
        return Err(LowerError::unsupported(cx, v, "dequantize without a scale"));
    }
    let (scale, zero, global) = params(cx, ops, &scheme, idx)?;
    let mut q = cx.at_float(ops[0], idx)?;
    if let Some(z) = zero {
        q = ex::sub(q, z);
    }
    let mut y = ex::mul(q, scale);
    if let Some(g) = global {
        y = ex::mul(y, g);
    }
    Ok(from_float(cx, y, dtype))
}
