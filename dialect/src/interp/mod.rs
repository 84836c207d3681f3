//! The reference interpreter: the oracle every other path is tested against.
//!
//! Slow and plain on purpose. Every value is held as `f64`; each op computes
//! its result in `f64` from its operands' exact values and rounds once to the
//! result's element type ([`tensor::round_value`]). Quantize and dequantize
//! follow docs/ir.md exactly. Layouts are ignored: they never change values.

mod elementwise;
mod linalg;
mod movement;
mod nn;
mod quantize;
pub mod tensor;

use std::collections::HashMap;

use crate::DType;
use crate::graph::{Graph, Value};
use crate::ops::Op;
use crate::quant::QuantScheme;
use crate::shape::fmt_concrete;
use crate::verify::{VerifyError, verify};

pub use tensor::Tensor;

/// Why a graph could not be evaluated.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InterpError {
    #[error("the graph does not verify:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Verify(Vec<VerifyError>),
    #[error("no value given for {kind} `{name}` ({ty})")]
    Missing {
        kind: &'static str,
        name: String,
        ty: String,
    },
    #[error("{kind} `{name}`: {message}")]
    Binding {
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error("value %{value}: its type {ty} uses symbol `{symbol}`, which no input or weight binds")]
    Unbound {
        value: String,
        ty: String,
        symbol: String,
    },
    #[error("value %{value}: {error}")]
    Eval { value: String, error: EvalError },
}

/// A run-time failure of one op.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("`{op}`: index {index} is out of range for axis {axis} of size {size}")]
    IndexOutOfRange {
        op: &'static str,
        index: i64,
        axis: usize,
        size: usize,
    },
    #[error("`{op}`: integer division by zero")]
    DivisionByZero { op: &'static str },
    #[error("`{op}` is bound to a given tensor, not evaluated")]
    Source { op: &'static str },
    #[error(
        "`{op}`: computed shape {found} differs from the declared {expected} (an inconsistency in kiln)"
    )]
    ShapeMismatch {
        op: &'static str,
        expected: String,
        found: String,
    },
}

/// What an op evaluation needs besides operand values: the quantization
/// scheme of each operand (from its type) and each result's element type
/// and concrete shape.
#[derive(Clone, Debug)]
pub struct EvalCtx<'a> {
    pub schemes: Vec<Option<&'a QuantScheme>>,
    pub outs: Vec<(DType, Vec<usize>)>,
}

type R<T> = Result<T, EvalError>;

/// Evaluates a graph. `bindings` maps every input and weight name to a
/// tensor; returns each output by name, in order.
pub fn run(
    g: &Graph,
    bindings: &HashMap<String, Tensor>,
) -> Result<Vec<(String, Tensor)>, InterpError> {
    verify(g).map_err(InterpError::Verify)?;
    let order = g.topo_order().map_err(|e| {
        InterpError::Verify(vec![VerifyError {
            node: None,
            span: None,
            kind: crate::verify::VerifyErrorKind::Cycle(e),
        }])
    })?;
    // Bind symbols from the inputs and weights, checking dtypes and shapes.
    let mut syms: HashMap<String, usize> = HashMap::new();
    for &id in &order {
        let node = g.node(id);
        let kind = if let Op::Input = node.op {
            "input"
        } else if let Op::Weight = node.op {
            "weight"
        } else {
            continue;
        };
        let r = &node.results[0];
        let t = bindings.get(&r.name).ok_or_else(|| InterpError::Missing {
            kind,
            name: r.name.clone(),
            ty: r.ty.to_string(),
        })?;
        if t.dtype != r.ty.dtype {
            return Err(InterpError::Binding {
                kind,
                name: r.name.clone(),
                message: format!("expected element type {}, found {}", r.ty.dtype, t.dtype),
            });
        }
        r.ty.shape
            .bind(&t.shape, &mut syms)
            .map_err(|message| InterpError::Binding {
                kind,
                name: r.name.clone(),
                message,
            })?;
    }
    let mut values: HashMap<Value, Tensor> = HashMap::new();
    for &id in &order {
        let node = g.node(id);
        let name = || {
            node.results
                .first()
                .map(|r| r.name.clone())
                .unwrap_or_default()
        };
        if let Op::Input | Op::Weight = node.op {
            values.insert(Value::of(id), bindings[&node.results[0].name].clone());
            continue;
        }
        let operands = g.operands(id);
        let args: Vec<&Tensor> = operands.iter().map(|v| &values[v]).collect();
        let schemes = operands
            .iter()
            .map(|v| g.value_type(*v).quant.as_ref())
            .collect();
        let mut outs = Vec::new();
        for r in &node.results {
            let shape =
                r.ty.shape
                    .resolve(&syms)
                    .map_err(|symbol| InterpError::Unbound {
                        value: r.name.clone(),
                        ty: r.ty.to_string(),
                        symbol,
                    })?;
            outs.push((r.ty.dtype, shape));
        }
        let ctx = EvalCtx { schemes, outs };
        let results = eval_op(&node.op, &args, &ctx).map_err(|error| InterpError::Eval {
            value: name(),
            error,
        })?;
        for (port, t) in results.into_iter().enumerate() {
            values.insert(
                Value {
                    node: id,
                    port: port as u32,
                },
                t,
            );
        }
    }
    Ok(g.outputs()
        .iter()
        .map(|o| (o.name.clone(), values[&o.value].clone()))
        .collect())
}

/// Evaluates one op on concrete operands.
pub fn eval_op(op: &Op, args: &[&Tensor], cx: &EvalCtx) -> R<Vec<Tensor>> {
    use elementwise as ew;
    let x = || args[0];
    let one = |t: Tensor| -> R<Vec<Tensor>> {
        check_shapes(op, std::slice::from_ref(&t), cx)?;
        Ok(vec![t])
    };
    match op {
        Op::Input | Op::Weight => Err(EvalError::Source { op: op.mnemonic() }),
        Op::Constant { value } => {
            let (dt, shape) = &cx.outs[0];
            let n = shape.iter().product();
            one(Tensor::new(
                *dt,
                shape,
                (0..n).map(|i| value.get(i)).collect(),
            ))
        }
        Op::Iota { axis, start, step } => one(movement::iota(&cx.outs[0], *axis, *start, *step)),

        Op::Neg => one(ew::unary_num(x(), |v| -v)),
        Op::Abs => one(ew::unary_num(x(), f64::abs)),
        Op::Exp => one(ew::unary(x(), f64::exp)),
        Op::Log => one(ew::unary(x(), f64::ln)),
        Op::Sqrt => one(ew::unary(x(), f64::sqrt)),
        Op::Rsqrt => one(ew::unary(x(), |v| 1.0 / v.sqrt())),
        Op::Reciprocal => one(ew::unary(x(), |v| 1.0 / v)),
        Op::Tanh => one(ew::unary(x(), f64::tanh)),
        Op::Sigmoid => one(ew::unary(x(), ew::sigmoid)),
        Op::Relu => one(ew::unary_num(x(), |v| if v < 0.0 { 0.0 } else { v })),
        Op::Relu6 => one(ew::unary_num(x(), |v| ew::clamp(v, 0.0, 6.0))),
        Op::LeakyRelu { alpha } => one(ew::unary(x(), |v| if v >= 0.0 { v } else { alpha * v })),
        Op::Gelu { approximate } => {
            let tanh = crate::infer::gelu_is_tanh(*approximate);
            one(ew::unary(x(), |v| ew::gelu(v, tanh)))
        }
        Op::Silu => one(ew::unary(x(), |v| v * ew::sigmoid(v))),
        Op::Hardswish => one(ew::unary(x(), |v| v * ew::clamp(v + 3.0, 0.0, 6.0) / 6.0)),
        Op::Hardsigmoid { alpha, beta } => {
            one(ew::unary(x(), |v| ew::clamp(alpha * v + beta, 0.0, 1.0)))
        }
        Op::Softplus => one(ew::unary(x(), ew::softplus)),
        Op::Erf => one(ew::unary(x(), libm::erf)),
        Op::Sin => one(ew::unary(x(), f64::sin)),
        Op::Cos => one(ew::unary(x(), f64::cos)),
        Op::Floor => one(ew::unary(x(), f64::floor)),
        Op::Ceil => one(ew::unary(x(), f64::ceil)),
        Op::Round => one(ew::unary(x(), crate::numeric::round_half_even)),
        Op::Sign => one(ew::unary_num(x(), ew::sign)),
        Op::Not => one(ew::unary_num(x(), |v| (v == 0.0) as u8 as f64)),

        Op::Add => one(ew::arith(op.mnemonic(), ew::Arith::Add, args)?),
        Op::Sub => one(ew::arith(op.mnemonic(), ew::Arith::Sub, args)?),
        Op::Mul => one(ew::arith(op.mnemonic(), ew::Arith::Mul, args)?),
        Op::Div => one(ew::arith(op.mnemonic(), ew::Arith::Div, args)?),
        Op::Pow => one(ew::arith(op.mnemonic(), ew::Arith::Pow, args)?),
        Op::Max => one(ew::arith(op.mnemonic(), ew::Arith::Max, args)?),
        Op::Min => one(ew::arith(op.mnemonic(), ew::Arith::Min, args)?),
        Op::Eq => one(ew::compare(args, |a, b| a == b)),
        Op::Ne => one(ew::compare(args, |a, b| a != b)),
        Op::Lt => one(ew::compare(args, |a, b| a < b)),
        Op::Le => one(ew::compare(args, |a, b| a <= b)),
        Op::Gt => one(ew::compare(args, |a, b| a > b)),
        Op::Ge => one(ew::compare(args, |a, b| a >= b)),
        Op::And => one(ew::compare(args, |a, b| a != 0.0 && b != 0.0)),
        Op::Or => one(ew::compare(args, |a, b| a != 0.0 || b != 0.0)),
        Op::Where => one(ew::select(args)),
        Op::Cast { dtype } => one(ew::cast(x(), *dtype)),
        Op::Clamp { min, max } => {
            let (lo, hi) = (
                min.unwrap_or(f64::NEG_INFINITY),
                max.unwrap_or(f64::INFINITY),
            );
            one(ew::unary_num(x(), |v| ew::clamp(v, lo, hi)))
        }

        Op::ReduceSum { axes, keepdim } => one(nn::reduce(x(), axes, *keepdim, nn::Reduce::Sum)),
        Op::ReduceMean { axes, keepdim } => one(nn::reduce(x(), axes, *keepdim, nn::Reduce::Mean)),
        Op::ReduceMax { axes, keepdim } => one(nn::reduce(x(), axes, *keepdim, nn::Reduce::Max)),
        Op::ReduceMin { axes, keepdim } => one(nn::reduce(x(), axes, *keepdim, nn::Reduce::Min)),
        Op::ReduceProd { axes, keepdim } => one(nn::reduce(x(), axes, *keepdim, nn::Reduce::Prod)),
        Op::ArgMax { axis, keepdim } => one(nn::arg_max(x(), *axis, *keepdim)),

        Op::Softmax { axis } => one(nn::softmax(x(), *axis, false)),
        Op::LogSoftmax { axis } => one(nn::softmax(x(), *axis, true)),
        Op::LayerNorm { axis, eps } => one(nn::layer_norm(args, *axis, *eps, false)),
        Op::RmsNorm { axis, eps } => one(nn::layer_norm(args, *axis, *eps, true)),
        Op::BatchNorm { eps } => one(nn::batch_norm(args, *eps)),
        Op::GroupNorm { groups, eps } => one(nn::group_norm(args, *groups as usize, *eps)),

        Op::Matmul {
            transpose_a,
            transpose_b,
        } => one(linalg::matmul(args[0], args[1], *transpose_a, *transpose_b)),
        Op::Conv2d {
            stride,
            padding,
            dilation,
            groups,
        } => one(linalg::conv2d(
            args,
            &linalg::Conv::new(stride, padding, dilation, *groups),
        )),
        Op::ConvTranspose2d {
            stride,
            padding,
            output_padding,
            dilation,
            groups,
        } => {
            let out = &cx.outs[0].1;
            one(linalg::conv_transpose2d(
                args,
                &linalg::Conv::new(stride, padding, dilation, *groups),
                output_padding,
                out,
            ))
        }
        Op::Attention { causal, scale } => one(linalg::attention(args, *causal, *scale)),

        Op::MaxPool2d {
            kernel,
            stride,
            padding,
            dilation,
            ceil_mode: _,
        } => one(nn::pool2d(
            x(),
            &cx.outs[0].1,
            nn::Pool::Max,
            kernel,
            stride,
            padding,
            dilation,
            false,
        )),
        Op::AvgPool2d {
            kernel,
            stride,
            padding,
            ceil_mode: _,
            count_include_pad,
        } => one(nn::pool2d(
            x(),
            &cx.outs[0].1,
            nn::Pool::Avg,
            kernel,
            stride,
            padding,
            &[1, 1],
            *count_include_pad,
        )),
        Op::GlobalAvgPool => one(nn::global_pool(x(), nn::Reduce::Mean)),
        Op::GlobalMaxPool => one(nn::global_pool(x(), nn::Reduce::Max)),

        Op::Reshape { .. } => one(Tensor {
            shape: cx.outs[0].1.clone(),
            ..x().clone()
        }),
        Op::Transpose { perm } => one(movement::transpose(x(), perm)),
        Op::Expand { .. } => one(movement::expand(x(), &cx.outs[0].1)),
        Op::Slice {
            axes,
            starts,
            ends,
            steps,
        } => one(movement::slice(x(), axes, starts, ends, steps)),
        Op::Concat { axis } => one(movement::concat(args, *axis)),
        Op::Split { axis, sizes } => {
            let parts = movement::split(x(), *axis, sizes);
            check_shapes(op, &parts, cx)?;
            Ok(parts)
        }
        Op::Gather { axis } => one(movement::gather(op.mnemonic(), x(), args[1], *axis)?),
        Op::Embedding => one(movement::gather(op.mnemonic(), x(), args[1], 0)?),
        Op::Pad { pads, mode, value } => one(movement::pad(x(), pads, *mode, *value)),
        Op::Squeeze { .. } | Op::Unsqueeze { .. } => one(Tensor {
            shape: cx.outs[0].1.clone(),
            ..x().clone()
        }),

        Op::Rope { interleaved } => one(linalg::rope(args, *interleaved)),

        Op::Relayout { .. } => one(x().clone()),
        Op::Quantize { dtype, scheme } => one(quantize::quantize(args, *dtype, scheme)),
        Op::Dequantize { dtype } => {
            let scheme = cx.schemes[0].expect("the verifier checks that `q` is quantized");
            one(quantize::dequantize(args, *dtype, scheme))
        }
    }
}

fn check_shapes(op: &Op, got: &[Tensor], cx: &EvalCtx) -> R<()> {
    for (t, (dt, shape)) in got.iter().zip(&cx.outs) {
        if &t.shape != shape || t.dtype != *dt {
            return Err(EvalError::ShapeMismatch {
                op: op.mnemonic(),
                expected: format!("{dt}{}", fmt_concrete(shape)),
                found: format!("{}{}", t.dtype, fmt_concrete(&t.shape)),
            });
        }
    }
    Ok(())
}
