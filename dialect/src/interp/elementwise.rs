//! Elementwise ops: unary functions, broadcasting binary arithmetic and
//! comparisons, `where`, `cast`.

use super::EvalError;
use super::tensor::{
    Tensor, broadcast_strides, for_each_broadcast, round_value, saturate_int, wrap_i128, wrap_int,
};
use crate::DType;

/// Applies a float function; the result keeps the operand's element type.
pub fn unary(x: &Tensor, f: impl Fn(f64) -> f64) -> Tensor {
    Tensor::new(x.dtype, &x.shape, x.data.iter().map(|&v| f(v)).collect())
}

/// Applies a function to a numeric tensor; integer results wrap to the width.
pub fn unary_num(x: &Tensor, f: impl Fn(f64) -> f64) -> Tensor {
    unary(x, f)
}

pub fn sigmoid(v: f64) -> f64 {
    if v >= 0.0 {
        1.0 / (1.0 + (-v).exp())
    } else {
        let e = v.exp();
        e / (1.0 + e)
    }
}

pub fn softplus(v: f64) -> f64 {
    if v > 0.0 {
        v + (-v).exp().ln_1p()
    } else {
        v.exp().ln_1p()
    }
}

pub fn gelu(v: f64, tanh_form: bool) -> f64 {
    if tanh_form {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
    } else {
        0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2))
    }
}

/// `lo <= v <= hi`, NaN passing through.
pub fn clamp(v: f64, lo: f64, hi: f64) -> f64 {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

pub fn sign(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        v // 0, -0 and NaN stay
    }
}

/// The broadcast shape of operands already checked by the type rules.
fn out_shape(args: &[&Tensor]) -> Vec<usize> {
    let rank = args.iter().map(|t| t.shape.len()).max().unwrap_or(0);
    (0..rank)
        .map(|i| {
            args.iter()
                .filter_map(|t| {
                    let off = rank - t.shape.len();
                    (i >= off).then(|| t.shape[i - off])
                })
                .find(|&d| d != 1)
                .unwrap_or(1)
        })
        .collect()
}

fn broadcast_map(
    args: &[&Tensor],
    dtype: DType,
    mut f: impl FnMut(&[f64]) -> Result<f64, EvalError>,
) -> Result<Tensor, EvalError> {
    let shape = out_shape(args);
    let strides: Vec<Vec<usize>> = args
        .iter()
        .map(|t| broadcast_strides(&t.shape, &shape))
        .collect();
    let mut data = vec![0.0; shape.iter().product()];
    let mut vals = vec![0.0; args.len()];
    let mut err = None;
    for_each_broadcast(&shape, &strides, |flat, offs| {
        if err.is_some() {
            return;
        }
        for (k, t) in args.iter().enumerate() {
            vals[k] = t.data[offs[k]];
        }
        match f(&vals) {
            Ok(v) => data[flat] = v,
            Err(e) => err = Some(e),
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok(Tensor::new(dtype, &shape, data)),
    }
}

/// Binary arithmetic.
#[derive(Clone, Copy, Debug)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
}

/// Broadcasting arithmetic. Floats compute in `f64` and round once; integers
/// compute exactly (`i128`) and wrap to their width; integer division
/// truncates toward zero and fails on a zero divisor.
pub fn arith(op: &'static str, kind: Arith, args: &[&Tensor]) -> Result<Tensor, EvalError> {
    let dtype = args[0].dtype;
    if dtype.is_int() {
        broadcast_map(args, dtype, |v| {
            let (a, b) = (v[0] as i128, v[1] as i128);
            let r = match kind {
                Arith::Add => a + b,
                Arith::Sub => a - b,
                Arith::Mul => a * b,
                Arith::Div => {
                    if b == 0 {
                        return Err(EvalError::DivisionByZero { op });
                    }
                    a / b
                }
                Arith::Pow => (v[0].powf(v[1])) as i128,
                Arith::Max => a.max(b),
                Arith::Min => a.min(b),
            };
            Ok(wrap_i128(dtype, r))
        })
    } else {
        broadcast_map(args, dtype, |v| {
            let (a, b) = (v[0], v[1]);
            Ok(match kind {
                Arith::Add => a + b,
                Arith::Sub => a - b,
                Arith::Mul => a * b,
                Arith::Div => a / b,
                Arith::Pow => a.powf(b),
                Arith::Max => {
                    if a.is_nan() || b.is_nan() {
                        f64::NAN
                    } else {
                        a.max(b)
                    }
                }
                Arith::Min => {
                    if a.is_nan() || b.is_nan() {
                        f64::NAN
                    } else {
                        a.min(b)
                    }
                }
            })
        })
    }
}

/// Broadcasting comparison (or logic on bools), giving bool.
pub fn compare(args: &[&Tensor], f: impl Fn(f64, f64) -> bool) -> Tensor {
    broadcast_map(args, DType::Bool, |v| Ok(f(v[0], v[1]) as u8 as f64))
        .expect("comparisons do not fail")
}

/// `where(cond, a, b)` with broadcasting.
pub fn select(args: &[&Tensor]) -> Tensor {
    broadcast_map(args, args[1].dtype, |v| {
        Ok(if v[0] != 0.0 { v[1] } else { v[2] })
    })
    .expect("where does not fail")
}

/// `cast`: to floats round to nearest even (saturating for f8/f4, per
/// docs/ir.md); from floats to integers truncate toward zero and saturate
/// (NaN gives 0); integers to integers wrap; to bool is `x != 0`.
pub fn cast(x: &Tensor, to: DType) -> Tensor {
    let from_int = x.dtype.has_integer_values();
    let f = |v: f64| -> f64 {
        match to {
            DType::Bool => (v != 0.0) as u8 as f64,
            DType::I64
            | DType::I32
            | DType::I8
            | DType::U8
            | DType::I4
            | DType::U4
            | DType::I3
            | DType::I6 => {
                if from_int {
                    wrap_int(to, v)
                } else {
                    saturate_int(to, v)
                }
            }
            DType::F64 | DType::F32 | DType::F16 | DType::BF16 => round_value(to, v),
            DType::F8E4M3 | DType::F8E5M2 | DType::F4E2M1 | DType::E8M0 => round_value(to, v),
        }
    };
    Tensor::new(to, &x.shape, x.data.iter().map(|&v| f(v)).collect())
}
