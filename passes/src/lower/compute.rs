//! Compute definitions: for every op of the dialect, the expression of one
//! result element at given indices, in terms of its operands' elements
//! (read through [`Cx::at`], which loads or inlines). One `match` over
//! [`Op`] with no catch-all arm: a new op does not compile until it has a
//! lowering here. The semantics are the reference interpreter's
//! (`kiln_dialect::interp`), op by op.

use kiln_dialect::DType;
use kiln_dialect::graph::Value;
use kiln_dialect::infer::gelu_is_tanh;
use kiln_dialect::kernel::{Binary, Expr, Reduction, Ty, Unary};
use kiln_dialect::ops::{Literal, Op};
use kiln_dialect::shape::normalize_axis;

use super::cx::{Cx, ty_of};
use super::ex::{self, float, int};
use super::{LowerError, index, movement, nn, quant};

type R<T> = Result<T, LowerError>;

/// The element of `v` (computed inside the kernel) at `idx`.
pub fn define(cx: &mut Cx, v: Value, idx: &[Expr]) -> R<Expr> {
    let g = cx.g;
    let node = g.node(v.node);
    let ops = cx.operands(v.node);
    let out_dt = cx.dtype(v);
    let x = ops.first().copied();
    match &node.op {
        Op::Input | Op::Weight => {
            let input = cx.input(v);
            Ok(Expr::load(input, idx.to_vec()))
        }
        Op::Constant { value } => match value {
            Literal::Splat(x) => Ok(cx.number(out_dt, *x)),
            Literal::Dense(_) => Err(LowerError::unsupported(
                cx,
                v,
                "a dense constant computed inside a kernel",
            )),
        },
        Op::Iota { axis, start, step } => {
            let r = idx.len();
            let a = axis_of(cx, v, *axis, r)?;
            let i = idx[a].clone();
            let integral = start.fract() == 0.0 && step.fract() == 0.0;
            if out_dt.has_integer_values() && integral {
                Ok(ex::add(int(*start as i64), ex::mul(i, int(*step as i64))))
            } else {
                let e = ex::add(float(*start), ex::mul(ex::cast(cx.float, i), float(*step)));
                Ok(from_float(cx, e, out_dt))
            }
        }

        Op::Neg => unary_num(cx, v, idx, |_, x| ex::un(Unary::Neg, x)),
        Op::Abs => unary_num(cx, v, idx, |_, x| ex::un(Unary::Abs, x)),
        Op::Floor => unary_num(cx, v, idx, |_, x| ex::un(Unary::Floor, x)),
        Op::Ceil => unary_num(cx, v, idx, |_, x| ex::un(Unary::Ceil, x)),
        Op::Round => unary_num(cx, v, idx, |_, x| ex::un(Unary::Round, x)),
        Op::Relu => unary_num(cx, v, idx, |k, x| {
            let z = k.zero(out_dt);
            ex::select(ex::lt(x.clone(), z.clone()), z, x)
        }),
        Op::Relu6 => unary_num(cx, v, idx, |k, x| {
            let (lo, hi) = (k.number(out_dt, 0.0), k.number(out_dt, 6.0));
            ex::clamp(x, Some(lo), Some(hi))
        }),
        Op::Sign => unary_num(cx, v, idx, |k, x| {
            let (z, one, neg) = (
                k.zero(out_dt),
                k.number(out_dt, 1.0),
                k.number(out_dt, -1.0),
            );
            ex::select(
                ex::gt(x.clone(), z.clone()),
                one,
                ex::select(ex::lt(x.clone(), z), neg, x),
            )
        }),
        Op::Clamp { min, max } => {
            if out_dt.has_integer_values() {
                unary_float(cx, v, idx, |_, x| {
                    ex::clamp(x, min.map(float), max.map(float))
                })
            } else {
                unary_num(cx, v, idx, |_, x| {
                    ex::clamp(x, min.map(float), max.map(float))
                })
            }
        }
        Op::Not => {
            let x = arg(cx, v, &ops, 0, idx)?;
            let x = as_bool(cx, x, ops[0]);
            Ok(ex::un(Unary::Not, x))
        }
        Op::Exp => unary_float(cx, v, idx, |_, x| ex::un(Unary::Exp, x)),
        Op::Log => unary_float(cx, v, idx, |_, x| ex::un(Unary::Log, x)),
        Op::Sqrt => unary_float(cx, v, idx, |_, x| ex::un(Unary::Sqrt, x)),
        Op::Rsqrt => unary_float(cx, v, idx, |_, x| {
            ex::div(float(1.0), ex::un(Unary::Sqrt, x))
        }),
        Op::Reciprocal => unary_float(cx, v, idx, |_, x| ex::div(float(1.0), x)),
        Op::Tanh => unary_float(cx, v, idx, |_, x| ex::un(Unary::Tanh, x)),
        Op::Erf => unary_float(cx, v, idx, |_, x| ex::un(Unary::Erf, x)),
        Op::Sin => unary_float(cx, v, idx, |_, x| ex::un(Unary::Sin, x)),
        Op::Cos => unary_float(cx, v, idx, |_, x| ex::un(Unary::Cos, x)),
        Op::Sigmoid => unary_float(cx, v, idx, |_, x| sigmoid(x)),
        Op::Silu => unary_float(cx, v, idx, |_, x| ex::mul(x.clone(), sigmoid(x))),
        Op::LeakyRelu { alpha } => unary_float(cx, v, idx, |_, x| {
            ex::select(
                ex::ge(x.clone(), float(0.0)),
                x.clone(),
                ex::mul(float(*alpha), x),
            )
        }),
        Op::Gelu { approximate } => {
            let tanh = gelu_is_tanh(*approximate);
            unary_float(cx, v, idx, |_, x| gelu(x, tanh))
        }
        Op::Hardswish => unary_float(cx, v, idx, |_, x| {
            let r6 = ex::clamp(
                ex::add(x.clone(), float(3.0)),
                Some(float(0.0)),
                Some(float(6.0)),
            );
            ex::div(ex::mul(x, r6), float(6.0))
        }),
        Op::Hardsigmoid { alpha, beta } => unary_float(cx, v, idx, |_, x| {
            ex::clamp(
                ex::add(ex::mul(float(*alpha), x), float(*beta)),
                Some(float(0.0)),
                Some(float(1.0)),
            )
        }),
        Op::Softplus => unary_float(cx, v, idx, |_, x| {
            let log1p = |e: Expr| ex::un(Unary::Log, ex::add(float(1.0), e));
            ex::select(
                ex::gt(x.clone(), float(0.0)),
                ex::add(
                    x.clone(),
                    log1p(ex::un(Unary::Exp, ex::un(Unary::Neg, x.clone()))),
                ),
                log1p(ex::un(Unary::Exp, x)),
            )
        }),

        Op::Add => arith(cx, v, idx, &ops, Binary::Add),
        Op::Sub => arith(cx, v, idx, &ops, Binary::Sub),
        Op::Mul => arith(cx, v, idx, &ops, Binary::Mul),
        Op::Div => arith(cx, v, idx, &ops, Binary::Div),
        Op::Pow => arith(cx, v, idx, &ops, Binary::Pow),
        Op::Max => arith(cx, v, idx, &ops, Binary::Max),
        Op::Min => arith(cx, v, idx, &ops, Binary::Min),
        Op::Eq => compare(cx, v, idx, &ops, Binary::Eq),
        Op::Ne => compare(cx, v, idx, &ops, Binary::Ne),
        Op::Lt => compare(cx, v, idx, &ops, Binary::Lt),
        Op::Le => compare(cx, v, idx, &ops, Binary::Le),
        Op::Gt => compare(cx, v, idx, &ops, Binary::Gt),
        Op::Ge => compare(cx, v, idx, &ops, Binary::Ge),
        Op::And | Op::Or => {
            let a = arg(cx, v, &ops, 0, idx)?;
            let b = arg(cx, v, &ops, 1, idx)?;
            let (a, b) = (as_bool(cx, a, ops[0]), as_bool(cx, b, ops[1]));
            let op = if matches!(node.op, Op::And) {
                Binary::And
            } else {
                Binary::Or
            };
            Ok(Expr::bin(op, a, b))
        }
        Op::Where => {
            let c = arg(cx, v, &ops, 0, idx)?;
            let c = as_bool(cx, c, ops[0]);
            let a = arg(cx, v, &ops, 1, idx)?;
            let b = arg(cx, v, &ops, 2, idx)?;
            Ok(ex::select(c, a, b))
        }
        Op::Cast { dtype } => {
            let x = x.expect("cast has an operand");
            let e = cx.at(x, idx)?;
            Ok(cast(cx, e, cx.dtype(x), *dtype))
        }

        Op::ReduceSum { axes, keepdim } => reduce(cx, v, idx, axes, *keepdim, Fold::Sum),
        Op::ReduceMean { axes, keepdim } => reduce(cx, v, idx, axes, *keepdim, Fold::Mean),
        Op::ReduceMax { axes, keepdim } => reduce(cx, v, idx, axes, *keepdim, Fold::Max),
        Op::ReduceMin { axes, keepdim } => reduce(cx, v, idx, axes, *keepdim, Fold::Min),
        Op::ReduceProd { axes, keepdim } => reduce(cx, v, idx, axes, *keepdim, Fold::Prod),
        Op::GlobalAvgPool | Op::GlobalMaxPool => {
            let r = cx.shape(ops[0]).rank() as i64;
            let axes: Vec<i64> = (2..r).collect();
            let fold = if matches!(node.op, Op::GlobalAvgPool) {
                Fold::Mean
            } else {
                Fold::Max
            };
            reduce(cx, v, idx, &axes, true, fold)
        }
        Op::ArgMax { axis, keepdim } => arg_max(cx, v, idx, ops[0], *axis, *keepdim),

        Op::Softmax { axis } => softmax(cx, v, idx, ops[0], *axis, false),
        Op::LogSoftmax { axis } => softmax(cx, v, idx, ops[0], *axis, true),
        Op::LayerNorm { axis, eps } => layer_norm(cx, v, idx, &ops, *axis, *eps, false),
        Op::RmsNorm { axis, eps } => layer_norm(cx, v, idx, &ops, *axis, *eps, true),
        Op::BatchNorm { eps } => {
            let ch = vec![idx[1].clone()];
            let x = cx.at_float(ops[0], idx)?;
            let scale = cx.at_float(ops[1], &ch)?;
            let bias = cx.at_float(ops[2], &ch)?;
            let mean = cx.at_float(ops[3], &ch)?;
            let var = cx.at_float(ops[4], &ch)?;
            let den = ex::un(Unary::Sqrt, ex::add(var, float(*eps)));
            let y = ex::add(ex::mul(ex::div(ex::sub(x, mean), den), scale), bias);
            Ok(from_float(cx, y, out_dt))
        }
        Op::GroupNorm { groups, eps } => group_norm(cx, v, idx, &ops, *groups, *eps),

        Op::Matmul {
            transpose_a,
            transpose_b,
        } => nn::matmul(cx, v, idx, ops[0], ops[1], *transpose_a, *transpose_b),
        Op::Conv2d {
            stride,
            padding,
            dilation,
            groups,
        } => {
            let p = nn::ConvParams::new(cx, v, stride, padding, dilation, *groups)?;
            nn::conv2d(cx, v, idx, &ops, &p)
        }
        Op::ConvTranspose2d {
            stride,
            padding,
            output_padding: _,
            dilation,
            groups,
        } => {
            let p = nn::ConvParams::new(cx, v, stride, padding, dilation, *groups)?;
            nn::conv_transpose2d(cx, v, idx, &ops, &p)
        }
        Op::Attention { causal, scale } => nn::attention(cx, v, idx, &ops, *causal, *scale),
        Op::MaxPool2d {
            kernel,
            stride,
            padding,
            dilation,
            ceil_mode: _,
        } => {
            let w = nn::Window::new(cx, v, kernel, stride, padding, dilation)?;
            nn::max_pool(cx, v, idx, ops[0], &w)
        }
        Op::AvgPool2d {
            kernel,
            stride,
            padding,
            ceil_mode: _,
            count_include_pad,
        } => {
            let w = nn::Window::new(cx, v, kernel, stride, padding, &[1, 1])?;
            nn::avg_pool(cx, v, idx, ops[0], &w, *count_include_pad)
        }

        Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
            let to = cx.shape(v).dims();
            let from = cx.shape(ops[0]).dims();
            let i = index::reshape(cx, idx, to, from);
            cx.at(ops[0], &i)
        }
        Op::Relayout { .. } => cx.at(ops[0], idx),
        Op::Transpose { perm } => movement::transpose(cx, v, idx, ops[0], perm),
        Op::Expand { .. } => {
            let i = index::broadcast(idx, cx.shape(ops[0]).dims());
            cx.at(ops[0], &i)
        }
        Op::Slice {
            axes,
            starts,
            ends,
            steps,
        } => movement::slice(cx, v, idx, ops[0], axes, starts, ends, steps),
        Op::Split { axis, sizes } => {
            let start: i64 = sizes[..v.port as usize].iter().sum();
            let end = start + sizes[v.port as usize];
            movement::slice(cx, v, idx, ops[0], &[*axis], &[start], &[end], &[1])
        }
        Op::Concat { axis } => movement::concat(cx, v, idx, &ops, *axis),
        Op::Gather { axis } => movement::gather(cx, v, idx, ops[0], ops[1], *axis),
        Op::Embedding => movement::gather(cx, v, idx, ops[0], ops[1], 0),
        Op::Pad { pads, mode, value } => movement::pad(cx, v, idx, ops[0], pads, *mode, *value),

        Op::Rope { interleaved } => nn::rope(cx, v, idx, &ops, *interleaved),

        Op::Quantize { dtype, scheme } => quant::quantize(cx, v, idx, &ops, *dtype, scheme),
        Op::Dequantize { dtype } => quant::dequantize(cx, v, idx, &ops, *dtype),
    }
}

/// A normalized axis of `v`'s operand or result of rank `r`.
pub fn axis_of(cx: &Cx, v: Value, axis: i64, r: usize) -> R<usize> {
    normalize_axis(axis, r)
        .ok_or_else(|| LowerError::unsupported(cx, v, &format!("axis {axis} of rank {r}")))
}

/// Operand `i` of `v` at the result index `idx`, broadcast.
fn arg(cx: &mut Cx, _v: Value, ops: &[Value], i: usize, idx: &[Expr]) -> R<Expr> {
    let b = index::broadcast(idx, cx.shape(ops[i]).dims());
    cx.at(ops[i], &b)
}

fn as_bool(cx: &Cx, e: Expr, of: Value) -> Expr {
    if cx.ty_of(of) == Ty::Bool {
        e
    } else {
        ex::cast(Ty::Bool, e)
    }
}

/// A float result converted to the expression type of `dtype` (integers
/// truncate, as the interpreter's rounding to an integer type does).
pub fn from_float(cx: &Cx, e: Expr, dtype: DType) -> Expr {
    match ty_of(dtype, cx.float) {
        Ty::F32 | Ty::F64 => e,
        t => ex::cast(t, e),
    }
}

/// A unary op computed in the operand's own type (integers stay integers).
fn unary_num(cx: &mut Cx, v: Value, idx: &[Expr], f: impl FnOnce(&Cx, Expr) -> Expr) -> R<Expr> {
    let ops = cx.operands(v.node);
    let x = cx.at(ops[0], idx)?;
    Ok(f(cx, x))
}

/// A unary op computed in the float type.
fn unary_float(cx: &mut Cx, v: Value, idx: &[Expr], f: impl FnOnce(&Cx, Expr) -> Expr) -> R<Expr> {
    let ops = cx.operands(v.node);
    let x = cx.at_float(ops[0], idx)?;
    let y = f(cx, x);
    Ok(from_float(cx, y, cx.dtype(v)))
}

/// `1 / (1 + e^-x)`.
fn sigmoid(x: Expr) -> Expr {
    ex::div(
        float(1.0),
        ex::add(float(1.0), ex::un(Unary::Exp, ex::un(Unary::Neg, x))),
    )
}

fn gelu(x: Expr, tanh: bool) -> Expr {
    let half_x = ex::mul(float(0.5), x.clone());
    let inner = if tanh {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let cube = ex::mul(
            ex::mul(ex::mul(float(0.044715), x.clone()), x.clone()),
            x.clone(),
        );
        ex::un(Unary::Tanh, ex::mul(float(c), ex::add(x, cube)))
    } else {
        ex::un(Unary::Erf, ex::div(x, float(std::f64::consts::SQRT_2)))
    };
    ex::mul(half_x, ex::add(float(1.0), inner))
}

/// Broadcasting arithmetic in the operands' type.
fn arith(cx: &mut Cx, v: Value, idx: &[Expr], ops: &[Value], op: Binary) -> R<Expr> {
    let a = arg(cx, v, ops, 0, idx)?;
    let b = arg(cx, v, ops, 1, idx)?;
    let (ta, tb) = (cx.ty_of(ops[0]), cx.ty_of(ops[1]));
    if ta == Ty::Bool || tb == Ty::Bool || ta != tb {
        let (a, b) = (cx.to_float(a, ta), cx.to_float(b, tb));
        return Ok(from_float(cx, ex::bin(op, a, b), cx.dtype(v)));
    }
    if ta == Ty::I64 && op == Binary::Pow {
        // The interpreter raises integers in f64 and truncates.
        let p = ex::bin(op, cx.to_float(a, ta), cx.to_float(b, tb));
        return Ok(ex::cast(Ty::I64, p));
    }
    Ok(ex::bin(op, a, b))
}

/// Broadcasting comparison, giving bool.
fn compare(cx: &mut Cx, v: Value, idx: &[Expr], ops: &[Value], op: Binary) -> R<Expr> {
    let a = arg(cx, v, ops, 0, idx)?;
    let b = arg(cx, v, ops, 1, idx)?;
    let (ta, tb) = (cx.ty_of(ops[0]), cx.ty_of(ops[1]));
    let ordered = !matches!(op, Binary::Eq | Binary::Ne);
    if ta != tb || (ta == Ty::Bool && ordered) {
        let (a, b) = (cx.to_float(a, ta), cx.to_float(b, tb));
        return Ok(Expr::bin(op, a, b));
    }
    Ok(Expr::bin(op, a, b))
}

/// `cast` from `from` to `to`, as the interpreter does it: to a float type
/// rounds to nearest even (a `Round` unless the compute type holds it
/// already), float to integer truncates toward zero and saturates (NaN
/// gives 0), integer to integer wraps, anything to bool is `!= 0`.
pub fn cast(cx: &Cx, e: Expr, from: DType, to: DType) -> Expr {
    let ft = ty_of(from, cx.float);
    if to == DType::Bool {
        return if ft == Ty::Bool {
            e
        } else {
            ex::cast(Ty::Bool, e)
        };
    }
    if to.has_integer_values() {
        return match ft {
            Ty::Bool => ex::cast(Ty::I64, e),
            Ty::I64 => {
                if to == DType::I64 {
                    e
                } else {
                    Expr::Round(to, Box::new(e))
                }
            }
            Ty::F32 | Ty::F64 => {
                let t = ex::cast(Ty::I64, e);
                match to.int_range() {
                    Some((lo, hi)) if to != DType::I64 => ex::min(ex::max(t, int(lo)), int(hi)),
                    _ => t,
                }
            }
        };
    }
    let x = cx.to_float(e, ft);
    let exact = to == DType::F64 || (to == DType::F32 && cx.float == Ty::F32);
    if exact {
        x
    } else {
        Expr::Round(to, Box::new(x))
    }
}

/// The reductions of `reduce_*` and the global pools.
#[derive(Clone, Copy, PartialEq)]
enum Fold {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
}

/// Folds `body(index)` over the given axes (each replaced by a fresh
/// variable in `base`), nested with the first axis outermost (row-major
/// order, as the interpreter sums).
pub fn fold_axes(
    cx: &mut Cx,
    op: Reduction,
    base: &[Expr],
    axes: &[usize],
    extents: &[Expr],
    body: impl FnOnce(&mut Cx, &[Expr]) -> R<Expr>,
) -> R<Expr> {
    let mut i = base.to_vec();
    let mut vars = Vec::new();
    for &a in axes {
        let var = cx.fresh();
        i[a] = ex::var(var);
        vars.push(var);
    }
    let mut e = body(cx, &i)?;
    for (k, var) in vars.iter().enumerate().rev() {
        e = ex::reduce(op, *var, extents[k].clone(), e);
    }
    Ok(e)
}

fn reduce(cx: &mut Cx, v: Value, idx: &[Expr], axes: &[i64], keepdim: bool, f: Fold) -> R<Expr> {
    let ops = cx.operands(v.node);
    let x = ops[0];
    let r = cx.shape(x).rank();
    let mut ax = Vec::new();
    for &a in axes {
        let a = axis_of(cx, v, a, r)?;
        if !ax.contains(&a) {
            ax.push(a);
        }
    }
    ax.sort_unstable();
    // the input index with reduced axes at 0 (replaced by fold_axes)
    let mut base = Vec::with_capacity(r);
    let mut k = 0;
    for a in 0..r {
        if ax.contains(&a) {
            base.push(int(0));
            if keepdim {
                k += 1;
            }
        } else {
            base.push(idx[k].clone());
            k += 1;
        }
    }
    let sizes = cx.dims_of(x);
    let extents: Vec<Expr> = ax.iter().map(|&a| sizes[a].clone()).collect();
    let out_dt = cx.dtype(v);
    let op = match f {
        Fold::Sum | Fold::Mean => Reduction::Sum,
        Fold::Max => Reduction::Max,
        Fold::Min => Reduction::Min,
        Fold::Prod => Reduction::Prod,
    };
    if f == Fold::Mean {
        let s = fold_axes(cx, op, &base, &ax, &extents, |cx, i| cx.at_float(x, i))?;
        let n = extents.iter().cloned().fold(int(1), ex::mul);
        let mean = ex::div(s, ex::cast(cx.float, n));
        return Ok(from_float(cx, mean, out_dt));
    }
    fold_axes(cx, op, &base, &ax, &extents, |cx, i| cx.at(x, i))
}

/// Index of the first maximum (the first NaN, if any) along `axis`.
fn arg_max(cx: &mut Cx, v: Value, idx: &[Expr], x: Value, axis: i64, keepdim: bool) -> R<Expr> {
    let r = cx.shape(x).rank();
    let a = axis_of(cx, v, axis, r)?;
    let mut base: Vec<Expr> = Vec::with_capacity(r);
    let mut k = 0;
    for ax in 0..r {
        if ax == a {
            base.push(int(0));
            if keepdim {
                k += 1;
            }
        } else {
            base.push(idx[k].clone());
            k += 1;
        }
    }
    let n = cx.dims_of(x)[a].clone();
    let m = fold_axes(
        cx,
        Reduction::Max,
        &base,
        &[a],
        std::slice::from_ref(&n),
        |cx, i| cx.at(x, i),
    )?;
    let j = cx.fresh();
    let mut i = base.clone();
    i[a] = ex::var(j);
    let xj = cx.at(x, &i)?;
    let hit = if cx.ty_of(x) == Ty::I64 {
        ex::eq(xj, m)
    } else {
        ex::or(ex::eq(xj.clone(), m), Expr::bin(Binary::Ne, xj.clone(), xj))
    };
    let body = ex::select(hit, ex::var(j), n.clone());
    Ok(ex::reduce(Reduction::Min, j, n, body))
}

/// `softmax` or `log_softmax` along `axis`, the row maximum subtracted
/// first: `exp(x - max) / sum(exp(x - max))`, `x - max - log(sum(...))`.
fn softmax(cx: &mut Cx, v: Value, idx: &[Expr], x: Value, axis: i64, log: bool) -> R<Expr> {
    let r = idx.len();
    let a = axis_of(cx, v, axis, r)?;
    let n = cx.dims_of(x)[a].clone();
    let ext = std::slice::from_ref(&n);
    let m = fold_axes(cx, Reduction::Max, idx, &[a], ext, |cx, i| {
        cx.at_float(x, i)
    })?;
    let mc = m.clone();
    let s = fold_axes(cx, Reduction::Sum, idx, &[a], ext, |cx, i| {
        let xi = cx.at_float(x, i)?;
        Ok(ex::un(Unary::Exp, ex::sub(xi, mc)))
    })?;
    let xv = cx.at_float(x, idx)?;
    let y = if log {
        ex::sub(ex::sub(xv, m), ex::un(Unary::Log, s))
    } else {
        ex::div(ex::un(Unary::Exp, ex::sub(xv, m)), s)
    };
    Ok(from_float(cx, y, cx.dtype(v)))
}

/// Layer norm (or RMS norm) over the axes from `axis` on:
/// `(x - mean) * (1 / sqrt(var + eps)) * gamma + beta`.
fn layer_norm(
    cx: &mut Cx,
    v: Value,
    idx: &[Expr],
    ops: &[Value],
    axis: i64,
    eps: f64,
    rms: bool,
) -> R<Expr> {
    let x = ops[0];
    let r = idx.len();
    let a = axis_of(cx, v, axis, r)?;
    let axes: Vec<usize> = (a..r).collect();
    let sizes = cx.dims_of(x);
    let ext = sizes[a..].to_vec();
    let n = ex::cast(cx.float, ext.iter().cloned().fold(int(1), ex::mul));
    let mean = if rms {
        None
    } else {
        let s = fold_axes(cx, Reduction::Sum, idx, &axes, &ext, |cx, i| {
            cx.at_float(x, i)
        })?;
        Some(ex::div(s, n.clone()))
    };
    let centered = |e: Expr, mean: &Option<Expr>| match mean {
        Some(m) => ex::sub(e, m.clone()),
        None => e,
    };
    let var = fold_axes(cx, Reduction::Sum, idx, &axes, &ext, |cx, i| {
        let d = centered(cx.at_float(x, i)?, &mean);
        Ok(ex::mul(d.clone(), d))
    })?;
    let var = ex::div(var, n);
    let inv = ex::div(float(1.0), ex::un(Unary::Sqrt, ex::add(var, float(eps))));
    let xv = cx.at_float(x, idx)?;
    let mut y = ex::mul(centered(xv, &mean), inv);
    let inner = &idx[a..];
    if let Some(&gamma) = ops.get(1) {
        let i = index::broadcast(inner, cx.shape(gamma).dims());
        y = ex::mul(y, cx.at_float(gamma, &i)?);
    }
    if let Some(&beta) = ops.get(2) {
        let i = index::broadcast(inner, cx.shape(beta).dims());
        y = ex::add(y, cx.at_float(beta, &i)?);
    }
    Ok(from_float(cx, y, cx.dtype(v)))
}

/// Group norm: channel `c` of group `c / (C / groups)`, normalized over
/// that group's channels and every spatial position.
fn group_norm(
    cx: &mut Cx,
    v: Value,
    idx: &[Expr],
    ops: &[Value],
    groups: i64,
    eps: f64,
) -> R<Expr> {
    let x = ops[0];
    let r = idx.len();
    if r < 2 || groups <= 0 {
        return Err(LowerError::unsupported(
            cx,
            v,
            "group_norm needs [N, C, ...] and groups > 0",
        ));
    }
    let sizes = cx.dims_of(x);
    let cg = ex::div(sizes[1].clone(), int(groups));
    let group_start = ex::mul(ex::div(idx[1].clone(), cg.clone()), cg.clone());
    let mut ext = vec![cg.clone()];
    ext.extend(sizes[2..].iter().cloned());
    let axes: Vec<usize> = (1..r).collect();
    let n = ex::cast(cx.float, ext.iter().cloned().fold(int(1), ex::mul));
    let shift = |i: &[Expr]| {
        let mut i = i.to_vec();
        i[1] = ex::add(group_start.clone(), i[1].clone());
        i
    };
    let s = fold_axes(cx, Reduction::Sum, idx, &axes, &ext, |cx, i| {
        cx.at_float(x, &shift(i))
    })?;
    let mean = ex::div(s, n.clone());
    let mc = mean.clone();
    let var = fold_axes(cx, Reduction::Sum, idx, &axes, &ext, |cx, i| {
        let d = ex::sub(cx.at_float(x, &shift(i))?, mc);
        Ok(ex::mul(d.clone(), d))
    })?;
    let inv = ex::div(
        float(1.0),
        ex::un(Unary::Sqrt, ex::add(ex::div(var, n), float(eps))),
    );
    let ch = vec![idx[1].clone()];
    let gamma = cx.at_float(ops[1], &ch)?;
    let beta = cx.at_float(ops[2], &ch)?;
    let xv = cx.at_float(x, idx)?;
    let y = ex::add(ex::mul(ex::mul(ex::sub(xv, mean), inv), gamma), beta);
    Ok(from_float(cx, y, cx.dtype(v)))
}
