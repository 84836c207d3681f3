//! Quantize and dequantize, exactly as docs/ir.md defines them.

use super::tensor::{Tensor, unravel};
use crate::DType;
use crate::numeric;
use crate::quant::QuantScheme;

/// Per element: (scale, zero, global) under the scheme.
fn params<'a>(
    args: &'a [&Tensor],
    scheme: &'a QuantScheme,
    shape: &'a [usize],
) -> impl Fn(&[usize]) -> (f64, f64, f64) + 'a {
    let scale = args[1];
    let zero = scheme.zero.map(|_| args[2]);
    let global = scheme
        .global
        .map(|_| args[if scheme.zero.is_some() { 3 } else { 2 }]);
    move |idx: &[usize]| {
        let si = scheme.scale_index(idx, shape);
        (
            scale.data[si],
            zero.map(|z| z.data[si]).unwrap_or(0.0),
            global.map(|g| g.data[0]).unwrap_or(1.0),
        )
    }
}

/// Integer codes: `q = saturate(round_half_even(x / (scale * global)) + zero)`
/// (ONNX `QuantizeLinear`'s order: round, then add the zero point). Float
/// codes: `q = encode(x / (scale * global))` (round to nearest even,
/// saturating); they have no zero point.
pub fn quantize(args: &[&Tensor], dtype: DType, scheme: &QuantScheme) -> Tensor {
    let x = args[0];
    let p = params(args, scheme, &x.shape);
    let mut idx = vec![0; x.shape.len()];
    let data = (0..x.numel())
        .map(|f| {
            unravel(f, &x.shape, &mut idx);
            let (s, z, g) = p(&idx);
            let v = x.data[f] / (s * g);
            let v = if dtype.has_integer_values() {
                numeric::round_half_even(v) + z
            } else {
                v
            };
            numeric::decode(dtype, numeric::encode(dtype, v))
        })
        .collect();
    Tensor {
        dtype,
        shape: x.shape.clone(),
        data,
    }
}

/// `x = (q - zero) * scale * global`, rounded to `dtype`.
pub fn dequantize(args: &[&Tensor], dtype: DType, scheme: &QuantScheme) -> Tensor {
    let q = args[0];
    let p = params(args, scheme, &q.shape);
    let mut idx = vec![0; q.shape.len()];
    let data = (0..q.numel())
        .map(|f| {
            unravel(f, &q.shape, &mut idx);
            let (s, z, g) = p(&idx);
            (q.data[f] - z) * s * g
        })
        .collect();
    Tensor::new(dtype, &q.shape, data)
}
