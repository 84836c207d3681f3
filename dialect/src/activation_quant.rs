//! Dynamic per-token quantization of activations (the `a8` half of W8A8).
//!
//! A W8A8 linear layer quantizes its input at run time: each row of the
//! activations (a token: all elements along the last axis) gets one scale
//! from its largest magnitude, the row is rounded to 8-bit codes with that
//! scale, and the matmul reads the codes. In the graph that is plain ops:
//!
//! ```text
//! amax  = reduce_max(abs(x), axes = [r-1], keepdim = true)      [.., 1]
//! scale = max(cast(amax, f32) / QMAX, 1e-30)                     f32[.., 1]
//! codes = quantize(x, scale)  quant<group(K, axis = r-1), scale = f32>
//! y     = dequantize(codes, scale) {dtype = x's type}
//! ```
//!
//! with `QMAX` the codes' largest finite value (127 for `i8`, 448 for
//! `f8e4m3`, 57344 for `f8e5m2`) and the floor keeping an all-zero row's
//! scale positive (its codes are then 0). The group of `K` (the whole last
//! axis) is the per-token granularity for any rank; the quantization rules
//! (passes' `rules/quant.rs`) turn `y @ dequantize(w)` into an integer or
//! fp8 matmul of the codes with both scales applied to the result.

use crate::graph::{Graph, Value};
use crate::infer::TypeError;
use crate::ops::Op;
use crate::ops::attr::Literal;
use crate::quant::QuantScheme;
use crate::shape::Shape;
use crate::types::TensorType;
use crate::{DType, numeric};

/// The smallest scale [`insert`] gives a row, so that an all-zero row
/// divides by a positive number.
pub const SCALE_FLOOR: f64 = 1e-30;

/// Why activations cannot be quantized dynamically.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActivationQuantError {
    #[error("dynamic activation quantization needs i8, f8e4m3 or f8e5m2 codes, found {codes}")]
    Codes { codes: DType },
    #[error("dynamic activation quantization needs float activations, found {found}")]
    NotFloat { found: TensorType },
    #[error(
        "dynamic activation quantization needs the activations' last axis static (one scale per row), found {found}"
    )]
    RowLength { found: TensorType },
    #[error(transparent)]
    Type(#[from] TypeError),
}

/// The code types activations can be quantized to at run time.
pub fn codes_supported(codes: DType) -> bool {
    matches!(codes, DType::I8 | DType::F8E4M3 | DType::F8E5M2)
}

/// What [`insert`] added to the graph.
#[derive(Debug, Clone)]
pub struct Inserted {
    /// The activations' values after the round trip through the codes.
    pub dequantized: Value,
    /// The codes (`quantize`'s result).
    pub codes: Value,
    /// The per-token scales, `f32[.., 1]`.
    pub scale: Value,
    /// Every value added, these three included (for spans).
    pub added: Vec<Value>,
}

/// Adds the per-token quantization of `x` to `codes` and its
/// dequantization back to `x`'s type.
pub fn insert(g: &mut Graph, x: Value, codes: DType) -> Result<Inserted, ActivationQuantError> {
    if !codes_supported(codes) {
        return Err(ActivationQuantError::Codes { codes });
    }
    let ty = g.value_type(x).clone();
    if !ty.dtype.is_float() || ty.quant.is_some() || ty.rank() == 0 {
        return Err(ActivationQuantError::NotFloat { found: ty });
    }
    let last = ty.rank() - 1;
    let Some(k) = ty.shape.dims()[last].as_static() else {
        return Err(ActivationQuantError::RowLength { found: ty });
    };
    if k == 0 {
        return Err(ActivationQuantError::RowLength { found: ty });
    }
    let mut added = Vec::new();
    let mut add = |g: &mut Graph, op: Op, args: &[Value]| -> Result<Value, TypeError> {
        let v = g.add1(op, args)?;
        added.push(v);
        Ok(v)
    };
    let scalar = |g: &mut Graph, x: f64, added: &mut Vec<Value>| {
        let name = g.fresh_name();
        let id = g.add_node(
            Op::Constant {
                value: Literal::Splat(x),
            },
            &[],
            vec![crate::graph::ValueInfo {
                name,
                ty: TensorType::new(DType::F32, Shape::scalar()),
            }],
        );
        added.push(Value::of(id));
        Value::of(id)
    };
    let abs = add(g, Op::Abs, &[x])?;
    let mut amax = add(
        g,
        Op::ReduceMax {
            axes: vec![last as i64],
            keepdim: true,
        },
        &[abs],
    )?;
    if ty.dtype != DType::F32 {
        amax = add(g, Op::Cast { dtype: DType::F32 }, &[amax])?;
    }
    let mut consts = Vec::new();
    let qmax = scalar(g, numeric::max_finite(codes), &mut consts);
    let floor = scalar(g, SCALE_FLOOR, &mut consts);
    let ratio = add(g, Op::Div, &[amax, qmax])?;
    let scale = add(g, Op::Max, &[ratio, floor])?;
    let scheme = QuantScheme::group(k, last, DType::F32);
    let q = add(
        g,
        Op::Quantize {
            dtype: codes,
            scheme,
        },
        &[x, scale],
    )?;
    let y = add(g, Op::Dequantize { dtype: ty.dtype }, &[q, scale])?;
    added.extend(consts);
    Ok(Inserted {
        dequantized: y,
        codes: q,
        scale,
        added,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::{Tensor, run};
    use crate::shape::Dim;
    use std::collections::HashMap;

    fn graph(dtype: DType, shape: &[u64], codes: DType) -> Graph {
        let mut g = Graph::new("aq");
        let x = g.add_input("x", TensorType::new(dtype, Shape::of(shape)));
        let y = insert(&mut g, x, codes).unwrap().dequantized;
        g.add_output("y", y);
        g
    }

    /// Rows of `x` quantized by hand: scale = max|row| / qmax, codes
    /// round(x / scale) (half to even) saturated to +-qmax for i8.
    #[test]
    fn int8_rows_match_hand_computed_codes() {
        let g = graph(DType::F32, &[3, 5], DType::I8);
        crate::verify::verify(&g).unwrap();
        let data = vec![
            0.5, -1.27, 0.3, 0.01, -0.2, // row 0: amax 1.27, scale 0.01
            0.0, 0.0, 0.0, 0.0, 0.0, // row 1: all zero
            3.0, -2.0, 1.0, 0.25, -0.75, // row 2: amax 3
        ];
        let x = Tensor::new(DType::F32, &[3, 5], data.clone());
        let out = run(&g, &HashMap::from([("x".to_string(), x)])).unwrap();
        let y = &out[0].1;
        for r in 0..3 {
            let row = &data[r * 5..r * 5 + 5];
            let amax = row.iter().fold(0.0f64, |m, v| m.max(f64::abs(*v)));
            let s = f64::from((amax as f32) / 127.0).max(SCALE_FLOOR) as f32 as f64;
            for (c, v) in row.iter().enumerate() {
                let q = (v / s).round_ties_even().clamp(-128.0, 127.0);
                let want = (q * s) as f32 as f64;
                assert_eq!(y.data[r * 5 + c], want, "row {r} col {c}");
            }
        }
        // the largest magnitude maps to the largest code exactly
        assert!((y.data[1] + 1.27).abs() < 1e-6);
        assert!(y.data[5..10].iter().all(|v| *v == 0.0));
    }

    #[test]
    fn fp8_rows_keep_their_largest_magnitude() {
        let g = graph(DType::BF16, &[2, 1, 4], DType::F8E4M3);
        let data = vec![1.0, -6.0, 0.375, 2.5, 100.0, 50.0, -25.0, 0.0];
        let x = Tensor::new(DType::BF16, &[2, 1, 4], data.clone());
        let out = run(&g, &HashMap::from([("x".to_string(), x)])).unwrap();
        let y = &out[0].1;
        // scale 6/448 and 100/448: the row maxima come back exactly (448 is a code)
        assert_eq!(y.data[1], -6.0);
        assert_eq!(y.data[4], 100.0);
        // 3 bits of mantissa: every value within 1/16 relative
        for (a, b) in data.iter().zip(&y.data) {
            assert!((a - b).abs() <= a.abs() / 16.0 + 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn errors_name_what_was_expected() {
        let mut g = Graph::new("aq");
        let x = g.add_input("x", TensorType::new(DType::F32, Shape::of(&[4, 8])));
        let e = insert(&mut g, x, DType::I4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "dynamic activation quantization needs i8, f8e4m3 or f8e5m2 codes, found i4"
        );
        let i = g.add_input("i", TensorType::new(DType::I32, Shape::of(&[4, 8])));
        let e = insert(&mut g, i, DType::I8).unwrap_err();
        assert!(
            e.to_string()
                .contains("needs float activations, found i32[4, 8]"),
            "{e}"
        );
        let s = g.add_input(
            "s",
            TensorType::new(
                DType::F32,
                Shape(vec![Dim::Static(4), Dim::Sym("k".into())]),
            ),
        );
        let e = insert(&mut g, s, DType::I8).unwrap_err();
        assert!(e.to_string().contains("last axis static"), "{e}");
    }
}
