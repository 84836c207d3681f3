//! Elementwise ONNX ops: unary functions, NumPy-broadcast binary ops, the
//! variadic ones (`Sum`, `Max`, `Min`, `Mean`), `Where`, `Cast`, `Clip`
//! and `Dropout` (inference: the identity).

use kiln_dialect::ops::{GeluApprox, Literal, Op};
use kiln_dialect::{DType, Value};

use super::super::error::OnnxError;
use super::super::importer::{Cx, Val};
use super::super::node::NodeCx;
use super::super::tensor;

/// One-operand functions.
pub fn unary(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    let x = cx.value(n, 0)?;
    let dt = cx.ty(x).dtype;
    let op = match n.op {
        "Abs" => Op::Abs,
        "Neg" => Op::Neg,
        "Exp" => Op::Exp,
        "Log" => Op::Log,
        "Sqrt" => Op::Sqrt,
        "Reciprocal" => Op::Reciprocal,
        "Tanh" => Op::Tanh,
        "Sigmoid" => Op::Sigmoid,
        "Relu" => Op::Relu,
        "Erf" => Op::Erf,
        "Sin" => Op::Sin,
        "Cos" => Op::Cos,
        "Floor" => Op::Floor,
        "Ceil" => Op::Ceil,
        "Round" => Op::Round,
        "Sign" => Op::Sign,
        "Not" => Op::Not,
        "Softplus" => Op::Softplus,
        "HardSwish" => Op::Hardswish,
        "LeakyRelu" => {
            n.only(&["alpha"])?;
            Op::LeakyRelu {
                alpha: n.float("alpha", 0.01)? as f64,
            }
        }
        "HardSigmoid" => {
            n.only(&["alpha", "beta"])?;
            Op::Hardsigmoid {
                alpha: n.float("alpha", 0.2)? as f64,
                beta: n.float("beta", 0.5)? as f64,
            }
        }
        "Gelu" => {
            n.only(&["approximate"])?;
            let approximate = match n.string("approximate", "none")?.as_str() {
                "none" => GeluApprox::None,
                "tanh" => GeluApprox::Tanh,
                other => return Err(n.unsupported(format!("approximate = \"{other}\""))),
            };
            Op::Gelu { approximate }
        }
        "Softsign" => {
            // x / (1 + |x|)
            n.only(&[])?;
            let a = cx.add(n, Op::Abs, &[x])?;
            let one = cx.scalar(dt, 1.0);
            let d = cx.add(n, Op::Add, &[a, one])?;
            return cx.add(n, Op::Div, &[x, d]);
        }
        "Elu" => {
            // x > 0 ? x : alpha * (e^x - 1)
            n.only(&["alpha"])?;
            let alpha = n.float("alpha", 1.0)? as f64;
            let zero = cx.scalar(dt, 0.0);
            let pos = cx.add(n, Op::Gt, &[x, zero])?;
            let e = cx.add(n, Op::Exp, &[x])?;
            let one = cx.scalar(dt, 1.0);
            let em1 = cx.add(n, Op::Sub, &[e, one])?;
            let a = cx.scalar(dt, alpha);
            let neg = cx.add(n, Op::Mul, &[a, em1])?;
            return cx.add(n, Op::Where, &[pos, x, neg]);
        }
        other => unreachable!("unary() called for {other}"),
    };
    if !matches!(n.op, "LeakyRelu" | "HardSigmoid" | "Gelu") {
        n.only(&[])?;
    }
    cx.add(n, op, &[x])
}

/// Two-operand ops with NumPy broadcasting (opset 7 and later).
pub fn binary(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&[])?;
    let a = cx.value(n, 0)?;
    let mut b = cx.value(n, 1)?;
    let op = match n.op {
        "Add" => Op::Add,
        "Sub" => Op::Sub,
        "Mul" => Op::Mul,
        "Div" => Op::Div,
        "Pow" => {
            // the exponent may have another numeric type than the base
            let (ta, tb) = (cx.ty(a).dtype, cx.ty(b).dtype);
            if ta != tb {
                b = cx.add(n, Op::Cast { dtype: ta }, &[b])?;
            }
            Op::Pow
        }
        "Equal" => Op::Eq,
        "Less" => Op::Lt,
        "LessOrEqual" => Op::Le,
        "Greater" => Op::Gt,
        "GreaterOrEqual" => Op::Ge,
        "And" => Op::And,
        "Or" => Op::Or,
        other => unreachable!("binary() called for {other}"),
    };
    cx.add(n, op, &[a, b])
}

/// `Sum`, `Max`, `Min`, `Mean` of one or more operands, broadcast together.
pub fn variadic(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&[])?;
    let count = n.input_count();
    if count == 0 {
        return Err(n.error("needs at least one input", cx.shapes(n)));
    }
    let mut acc = cx.value(n, 0)?;
    for i in 1..count {
        let x = cx.value(n, i)?;
        let op = match n.op {
            "Sum" | "Mean" => Op::Add,
            "Max" => Op::Max,
            "Min" => Op::Min,
            other => unreachable!("variadic() called for {other}"),
        };
        acc = cx.add(n, op, &[acc, x])?;
    }
    if n.op == "Mean" && count > 1 {
        let dt = cx.ty(acc).dtype;
        let c = cx.scalar(dt, count as f64);
        acc = cx.add(n, Op::Div, &[acc, c])?;
    }
    Ok(acc)
}

/// `Where(cond, a, b)`.
pub fn where_(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&[])?;
    let c = cx.value(n, 0)?;
    let a = cx.value(n, 1)?;
    let b = cx.value(n, 2)?;
    cx.add(n, Op::Where, &[c, a, b])
}

/// `Cast(x) {to}`.
pub fn cast(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&["to", "saturate", "round_mode"])?;
    let code = n
        .int_opt("to")?
        .ok_or_else(|| n.error("attribute `to` is required", cx.shapes(n)))?;
    let dtype = tensor::dtype_of(code as i32)
        .ok_or_else(|| n.unsupported(format!("to = {}", tensor::dtype_name(code as i32))))?;
    let x = cx.value(n, 0)?;
    if cx.ty(x).dtype == dtype {
        return Ok(x);
    }
    cx.add(n, Op::Cast { dtype }, &[x])
}

/// `Clip`: bounds as attributes before opset 11, as known inputs after.
pub fn clip(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    let x = cx.value(n, 0)?;
    let (min, max) = if n.opset < 11 {
        n.only(&["min", "max"])?;
        (
            n.float_opt("min")?.map(|v| v as f64),
            n.float_opt("max")?.map(|v| v as f64),
        )
    } else {
        n.only(&[])?;
        let scalar = |i: usize, what: &str| -> Result<Option<f64>, OnnxError> {
            match cx.known(n, i, what)? {
                None => Ok(None),
                Some(t) if t.numel() == 1 => Ok(Some(t.data[0])),
                Some(t) => Err(n.error(
                    format!("input `{what}` must be a scalar, found shape {:?}", t.shape),
                    cx.shapes(n),
                )),
            }
        };
        (scalar(1, "min")?, scalar(2, "max")?)
    };
    cx.add(n, Op::Clamp { min, max }, &[x])
}

/// `Dropout` at inference: output 0 is the input; the mask, when asked
/// for, is all true.
pub fn dropout(cx: &mut Cx, n: &NodeCx) -> Result<Vec<Val>, OnnxError> {
    if n.opset < 12 {
        n.only(&["ratio", "is_test"])?;
    } else {
        n.only(&["seed"])?;
        if let Some(t) = cx.known(n, 2, "training_mode")?
            && t.data.first().is_some_and(|&m| m != 0.0)
        {
            return Err(n.unsupported("training_mode = true"));
        }
    }
    let x = cx
        .get(n, 0)?
        .ok_or_else(|| n.error("input 0 is required", cx.shapes(n)))?;
    let mut out = vec![x.clone()];
    if n.output(1).is_some() {
        let ty = cx.val_type(&x).with_dtype(DType::Bool);
        out.push(Val::Graph(cx.constant(Literal::Splat(1.0), ty)));
    }
    Ok(out)
}
