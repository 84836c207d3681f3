//! Type rules: the result types of every op from its operand types and
//! attributes. One exhaustive match; docs/ir.md states each rule in words.

use crate::DType;
use crate::layout::Layout;
use crate::ops::{GeluApprox, Literal, Op, OperandKind, PadMode};
use crate::quant::{QuantError, QuantScheme};
use crate::shape::{BroadcastError, Dim, Shape, normalize_axis};
use crate::types::{TensorType, TypeFormError};

/// Why an op's operands or attributes do not fit its type rule.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TypeError {
    #[error("`{op}` takes {expected} operands, found {found}")]
    Arity {
        op: &'static str,
        expected: String,
        found: usize,
    },
    #[error("`{op}` operand `{operand}` must be {expected}, found {found}")]
    DType {
        op: &'static str,
        operand: String,
        expected: &'static str,
        found: DType,
    },
    #[error("`{op}` operands `{a}` and `{b}` must have the same element type, found {ta} and {tb}")]
    DTypeMismatch {
        op: &'static str,
        a: String,
        ta: DType,
        b: String,
        tb: DType,
    },
    #[error("`{op}` operands do not broadcast: {a} and {b}: {err}")]
    Broadcast {
        op: &'static str,
        a: Shape,
        b: Shape,
        err: BroadcastError,
    },
    #[error("`{op}` operand `{operand}` must be {expected}, found {found}")]
    Shape {
        op: &'static str,
        operand: String,
        expected: String,
        found: Shape,
    },
    #[error("`{op}` attribute `{attr}` {message}")]
    Attr {
        op: &'static str,
        attr: &'static str,
        message: String,
    },
    #[error("`{op}`: {message}")]
    Rule { op: &'static str, message: String },
    #[error("`{op}`: {err}")]
    Quant { op: &'static str, err: QuantError },
    #[error("`{op}`: malformed type: {err}")]
    Form {
        op: &'static str,
        err: TypeFormError,
    },
    #[error("`{op}` takes its type from the declaration, and none was given")]
    NeedsDeclaredType { op: &'static str },
}

/// What a type rule sees: the op, its operand types and, for source ops
/// (`input`, `weight`, `constant`, `iota`), the declared result type.
struct Ctx<'a> {
    op: &'a Op,
    name: &'static str,
    operands: &'a [&'a TensorType],
}

type R<T> = Result<T, TypeError>;

/// Infers the result types of `op` applied to `operands`.
///
/// `declared` is the written result type, used by the source ops only.
pub fn infer(
    op: &Op,
    operands: &[&TensorType],
    declared: Option<&TensorType>,
) -> R<Vec<TensorType>> {
    let cx = Ctx {
        op,
        name: op.mnemonic(),
        operands,
    };
    cx.check_arity()?;
    let one = |t: TensorType| Ok(vec![t]);
    match op {
        Op::Input | Op::Weight => {
            let t = cx.declared(declared)?;
            one(t)
        }
        Op::Constant { value } => {
            let t = cx.declared(declared)?;
            if let Literal::Dense(v) = value {
                match t.shape.numel() {
                    Some(n) if n as usize == v.len() => {}
                    Some(n) => {
                        return Err(cx.attr(
                            "value",
                            format!("has {} elements, the type {t} has {n}", v.len()),
                        ));
                    }
                    None => {
                        return Err(cx.attr(
                            "value",
                            format!("lists elements, so the type must be static, found {t}"),
                        ));
                    }
                }
            }
            one(t)
        }
        Op::Iota { axis, .. } => {
            let t = cx.declared(declared)?;
            if !t.dtype.is_numeric() {
                return Err(cx.rule(format!("result must be a numeric type, found {}", t.dtype)));
            }
            cx.axis("axis", *axis, t.rank())?;
            one(t)
        }

        Op::Exp
        | Op::Log
        | Op::Sqrt
        | Op::Rsqrt
        | Op::Reciprocal
        | Op::Tanh
        | Op::Sigmoid
        | Op::LeakyRelu { .. }
        | Op::Gelu { .. }
        | Op::Silu
        | Op::Hardswish
        | Op::Hardsigmoid { .. }
        | Op::Softplus
        | Op::Erf
        | Op::Sin
        | Op::Cos
        | Op::Floor
        | Op::Ceil
        | Op::Round => one(cx.float(0)?.plain()),
        Op::Neg | Op::Abs | Op::Relu | Op::Relu6 | Op::Sign => one(cx.numeric(0)?.plain()),
        Op::Clamp { min, max } => {
            if let (Some(lo), Some(hi)) = (min, max)
                && lo > hi
            {
                return Err(cx.attr("min", format!("({lo}) is above `max` ({hi})")));
            }
            let x = cx.numeric(0)?;
            if x.dtype.is_int() {
                for (name, b) in [("min", min), ("max", max)] {
                    if let Some(v) = b
                        && v.fract() != 0.0
                        && v.is_finite()
                    {
                        return Err(cx.attr(
                            name,
                            format!("({v}) must be a whole number to clamp {}", x.dtype),
                        ));
                    }
                }
            }
            one(x.plain())
        }
        Op::Not => one(cx.bool(0)?.plain()),

        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Max | Op::Min => {
            cx.numeric(0)?;
            cx.numeric(1)?;
            let dt = cx.same_dtype(0, 1)?;
            one(cx.broadcast_result(&[0, 1], dt)?)
        }
        Op::Pow => {
            cx.float(0)?;
            cx.float(1)?;
            let dt = cx.same_dtype(0, 1)?;
            one(cx.broadcast_result(&[0, 1], dt)?)
        }
        Op::Eq | Op::Ne => {
            for i in 0..2 {
                if !(cx.ty(i).dtype.is_numeric() || cx.ty(i).dtype == DType::Bool) {
                    return Err(cx.dtype_err(i, "a numeric or bool type"));
                }
            }
            cx.same_dtype(0, 1)?;
            one(cx.broadcast_result(&[0, 1], DType::Bool)?)
        }
        Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            cx.numeric(0)?;
            cx.numeric(1)?;
            cx.same_dtype(0, 1)?;
            one(cx.broadcast_result(&[0, 1], DType::Bool)?)
        }
        Op::And | Op::Or => {
            cx.bool(0)?;
            cx.bool(1)?;
            one(cx.broadcast_result(&[0, 1], DType::Bool)?)
        }
        Op::Where => {
            cx.bool(0)?;
            let dt = cx.same_dtype(1, 2)?;
            one(cx.broadcast_result(&[0, 1, 2], dt)?)
        }
        Op::Cast { dtype } => one(cx.ty(0).with_dtype(*dtype)),

        Op::ReduceSum { axes, keepdim }
        | Op::ReduceMax { axes, keepdim }
        | Op::ReduceMin { axes, keepdim }
        | Op::ReduceProd { axes, keepdim } => {
            let x = cx.numeric(0)?;
            one(TensorType::new(
                x.dtype,
                cx.reduced_shape("axes", axes, *keepdim)?,
            ))
        }
        Op::ReduceMean { axes, keepdim } => {
            let x = cx.float(0)?;
            one(TensorType::new(
                x.dtype,
                cx.reduced_shape("axes", axes, *keepdim)?,
            ))
        }
        Op::ArgMax { axis, keepdim } => {
            cx.numeric(0)?;
            one(TensorType::new(
                DType::I64,
                cx.reduced_shape("axis", &[*axis], *keepdim)?,
            ))
        }

        Op::Softmax { axis } | Op::LogSoftmax { axis } => {
            let x = cx.float(0)?;
            cx.axis("axis", *axis, x.rank())?;
            one(x.plain())
        }
        Op::LayerNorm { axis, eps } | Op::RmsNorm { axis, eps } => {
            let x = cx.float(0)?;
            let a = cx.axis("axis", *axis, x.rank())?;
            cx.non_negative_f("eps", *eps)?;
            let norm = Shape(x.shape.dims()[a..].to_vec());
            for i in 1..cx.operands.len() {
                cx.same_dtype(0, i)?;
                cx.expect_shape(i, &norm, "the normalized axes of `x`")?;
            }
            one(x.plain())
        }
        Op::BatchNorm { eps } => {
            let x = cx.float(0)?;
            cx.min_rank(0, 2)?;
            cx.non_negative_f("eps", *eps)?;
            let c = Shape(vec![x.shape.dims()[1].clone()]);
            for i in 1..5 {
                cx.same_dtype(0, i)?;
                cx.expect_shape(i, &c, "the channel axis (1) of `x`")?;
            }
            one(x.plain())
        }
        Op::GroupNorm { groups, eps } => {
            let x = cx.float(0)?;
            cx.min_rank(0, 2)?;
            cx.non_negative_f("eps", *eps)?;
            let c = cx.static_dim(0, 1)?;
            if *groups <= 0 || c % *groups as u64 != 0 {
                return Err(cx.attr(
                    "groups",
                    format!("({groups}) must be positive and divide the {c} channels"),
                ));
            }
            for i in 1..3 {
                cx.same_dtype(0, i)?;
                cx.expect_shape(i, &Shape::of(&[c]), "the channel axis (1) of `x`")?;
            }
            one(x.plain())
        }

        Op::Matmul {
            transpose_a,
            transpose_b,
        } => one(cx.matmul(*transpose_a, *transpose_b)?),
        Op::Conv2d {
            stride,
            padding,
            dilation,
            groups,
        } => one(cx.conv2d(stride, padding, dilation, *groups, None)?),
        Op::ConvTranspose2d {
            stride,
            padding,
            output_padding,
            dilation,
            groups,
        } => one(cx.conv2d(stride, padding, dilation, *groups, Some(output_padding))?),
        Op::Attention { causal: _, scale } => {
            if let Some(s) = scale
                && !s.is_finite()
            {
                return Err(cx.attr("scale", format!("must be finite, found {s}")));
            }
            one(cx.attention()?)
        }

        Op::MaxPool2d {
            kernel,
            stride,
            padding,
            dilation,
            ceil_mode,
        } => {
            cx.numeric(0)?;
            one(cx.pool2d(kernel, stride, padding, dilation, *ceil_mode)?)
        }
        Op::AvgPool2d {
            kernel,
            stride,
            padding,
            ceil_mode,
            count_include_pad: _,
        } => {
            cx.float(0)?;
            one(cx.pool2d(kernel, stride, padding, &[1, 1], *ceil_mode)?)
        }
        Op::GlobalAvgPool => {
            cx.float(0)?;
            one(cx.global_pool()?)
        }
        Op::GlobalMaxPool => {
            cx.numeric(0)?;
            one(cx.global_pool()?)
        }

        Op::Reshape { shape } => one(cx.reshape(shape)?),
        Op::Transpose { perm } => {
            let x = cx.ty(0);
            let perm = cx.permutation("perm", perm, x.rank())?;
            let dims = perm.iter().map(|&p| x.shape.dims()[p].clone()).collect();
            one(TensorType::new(x.dtype, Shape(dims)))
        }
        Op::Expand { shape } => {
            let x = cx.ty(0);
            let target = Shape(shape.clone());
            if !x.shape.broadcasts_to(&target) {
                return Err(cx.shape_err(0, format!("broadcastable to {target}")));
            }
            one(TensorType::new(x.dtype, target))
        }
        Op::Slice {
            axes,
            starts,
            ends,
            steps,
        } => one(cx.slice(axes, starts, ends, steps)?),
        Op::Concat { axis } => one(cx.concat(*axis)?),
        Op::Split { axis, sizes } => {
            let x = cx.ty(0);
            let a = cx.axis("axis", *axis, x.rank())?;
            let n = cx.static_dim(0, a)?;
            if sizes.iter().any(|&s| s < 0) || sizes.iter().sum::<i64>() as u64 != n {
                return Err(cx.attr(
                    "sizes",
                    format!(
                        "{sizes:?} must be non-negative and add up to {n}, the size of axis {a}"
                    ),
                ));
            }
            Ok(sizes
                .iter()
                .map(|&s| {
                    let mut dims = x.shape.dims().to_vec();
                    dims[a] = Dim::Static(s as u64);
                    TensorType::new(x.dtype, Shape(dims))
                })
                .collect())
        }
        Op::Gather { axis } => {
            let x = cx.ty(0);
            let a = cx.axis("axis", *axis, x.rank())?;
            let idx = cx.index(1)?;
            let mut dims = x.shape.dims()[..a].to_vec();
            dims.extend_from_slice(idx.shape.dims());
            dims.extend_from_slice(&x.shape.dims()[a + 1..]);
            one(TensorType::new(x.dtype, Shape(dims)))
        }
        Op::Embedding => {
            let t = cx.ty(0);
            cx.exact_rank(0, 2)?;
            let ids = cx.index(1)?;
            let mut dims = ids.shape.dims().to_vec();
            dims.push(t.shape.dims()[1].clone());
            one(TensorType::new(t.dtype, Shape(dims)))
        }
        Op::Pad { pads, mode, value } => {
            let x = cx.ty(0);
            let r = x.rank();
            if pads.len() != 2 * r || pads.iter().any(|&p| p < 0) {
                return Err(cx.attr(
                    "pads",
                    format!(
                        "must list {} non-negative sizes (begin and end per axis), found {pads:?}",
                        2 * r
                    ),
                ));
            }
            if let PadMode::Constant = mode
                && !value.is_finite()
                && !x.dtype.is_float()
            {
                return Err(cx.attr("value", format!("{value} does not fit {}", x.dtype)));
            }
            let mut dims = x.shape.dims().to_vec();
            for a in 0..r {
                let (b, e) = (pads[a] as u64, pads[a + r] as u64);
                if b == 0 && e == 0 {
                    continue;
                }
                let n = cx.static_dim(0, a)?;
                if let PadMode::Reflect = mode
                    && (b >= n || e >= n)
                {
                    return Err(cx.attr(
                        "pads",
                        format!("reflect padding on axis {a} must be smaller than its size {n}"),
                    ));
                }
                if let PadMode::Edge = mode
                    && n == 0
                {
                    return Err(cx.attr("pads", format!("edge padding needs a non-empty axis {a}")));
                }
                dims[a] = Dim::Static(n + b + e);
            }
            one(TensorType::new(x.dtype, Shape(dims)))
        }
        Op::Squeeze { axes } => {
            let x = cx.ty(0);
            let axes = cx.axes("axes", axes, x.rank())?;
            for &a in &axes {
                if x.shape.dims()[a] != Dim::Static(1) {
                    return Err(cx.attr(
                        "axes",
                        format!(
                            "names axis {a}, which has size {}, not 1, in {}",
                            x.shape.dims()[a],
                            x.shape
                        ),
                    ));
                }
            }
            let dims = (0..x.rank())
                .filter(|a| !axes.contains(a))
                .map(|a| x.shape.dims()[a].clone())
                .collect();
            one(TensorType::new(x.dtype, Shape(dims)))
        }
        Op::Unsqueeze { axes } => {
            let x = cx.ty(0);
            let r = x.rank() + axes.len();
            let axes = cx.axes("axes", axes, r)?;
            let mut src = x.shape.dims().iter();
            let dims = (0..r)
                .map(|a| {
                    if axes.contains(&a) {
                        Dim::Static(1)
                    } else {
                        src.next().cloned().unwrap_or(Dim::Static(1))
                    }
                })
                .collect();
            one(TensorType::new(x.dtype, Shape(dims)))
        }
        Op::Rope { interleaved: _ } => {
            let x = cx.float(0)?;
            cx.min_rank(0, 2)?;
            let r = x.rank();
            let d = cx.static_dim(0, r - 1)?;
            if d % 2 != 0 {
                return Err(cx.shape_err(0, "a last axis of even size".into()));
            }
            let cs = Shape(vec![x.shape.dims()[r - 2].clone(), Dim::Static(d / 2)]);
            for i in 1..3 {
                cx.same_dtype(0, i)?;
                cx.expect_shape(i, &cs, "[S, D/2] for `x` of [..., S, D]")?;
            }
            one(x.plain())
        }

        Op::Relayout { layout } => {
            let x = cx.ty(0);
            layout
                .check_rank(x.rank())
                .map_err(|m| cx.attr("layout", m))?;
            one(TensorType {
                layout: layout.clone(),
                ..x.clone()
            })
        }
        Op::Quantize { dtype, scheme } => {
            let x = cx.float(0)?;
            scheme
                .check(*dtype, &x.shape)
                .map_err(|err| TypeError::Quant { op: cx.name, err })?;
            cx.scale_operands(scheme, &x.shape)?;
            one(TensorType {
                dtype: *dtype,
                shape: x.shape.clone(),
                layout: x.layout.clone(),
                quant: Some(scheme.clone()),
            })
        }
        Op::Dequantize { dtype } => {
            let q = cx.ty(0);
            let Some(scheme) = &q.quant else {
                return Err(TypeError::Rule {
                    op: cx.name,
                    message: format!(
                        "operand `q` must be a quantized tensor (a type with quant<...>), found {q}"
                    ),
                });
            };
            if !dtype.is_float() {
                return Err(cx.attr("dtype", format!("must be a float type, found {dtype}")));
            }
            scheme
                .check(q.dtype, &q.shape)
                .map_err(|err| TypeError::Quant { op: cx.name, err })?;
            cx.scale_operands(scheme, &q.shape)?;
            one(TensorType {
                dtype: *dtype,
                shape: q.shape.clone(),
                layout: q.layout.clone(),
                quant: None,
            })
        }
    }
}

impl TensorType {
    /// The same dtype, shape and layout, unquantized (an elementwise result).
    fn plain(&self) -> TensorType {
        TensorType {
            quant: None,
            ..self.clone()
        }
    }
}

/// Output length and first index of a slice of an axis of size `n` (NumPy rules).
pub fn slice_range(n: i64, start: i64, end: i64, step: i64) -> (i64, i64) {
    let norm = |i: i64| if i < 0 { i.saturating_add(n) } else { i };
    let (s, e) = (norm(start), norm(end));
    if step > 0 {
        let s = s.clamp(0, n);
        let e = e.clamp(0, n);
        // e - s <= n, so the count is a ceiling division that cannot overflow.
        (
            s,
            if e > s {
                ((e - s) as u64).div_ceil(step as u64) as i64
            } else {
                0
            },
        )
    } else {
        let s = s.clamp(-1, n - 1);
        let e = e.clamp(-1, n - 1);
        (
            s,
            if s > e {
                // unsigned_abs also covers step == i64::MIN, which has no negation.
                ((s - e) as u64).div_ceil(step.unsigned_abs()) as i64
            } else {
                0
            },
        )
    }
}

/// Output size of a sliding window over an axis of size `n` with total
/// padding `pad`, dilated kernel extent, and stride.
fn window_out(
    n: u64,
    pad: u64,
    kernel: u64,
    dilation: u64,
    stride: u64,
    ceil: bool,
    begin_pad: u64,
) -> Option<u64> {
    let span = dilation * (kernel - 1) + 1;
    let avail = (n + pad).checked_sub(span)?;
    let mut out = if ceil {
        avail.div_ceil(stride) + 1
    } else {
        avail / stride + 1
    };
    // With ceil mode the last window must start inside the input or the begin padding.
    if ceil && (out - 1) * stride >= n + begin_pad {
        out -= 1;
    }
    Some(out)
}

impl<'a> Ctx<'a> {
    fn ty(&self, i: usize) -> &'a TensorType {
        self.operands[i]
    }

    fn operand_name(&self, i: usize) -> String {
        let specs = self.op.spec().operands;
        match specs.get(i).or(specs.last()) {
            Some(s) if s.kind == OperandKind::Variadic => {
                format!("{}[{}]", s.name, i + 1 - specs.len())
            }
            Some(s) => s.name.to_string(),
            None => format!("#{i}"),
        }
    }

    fn check_arity(&self) -> R<()> {
        let (min, max) = self.op.spec().arity();
        let n = self.operands.len();
        if n < min || n > max {
            let expected = match (min, max) {
                (a, b) if a == b => a.to_string(),
                (a, usize::MAX) => format!("at least {a}"),
                (a, b) => format!("{a} to {b}"),
            };
            return Err(TypeError::Arity {
                op: self.name,
                expected,
                found: n,
            });
        }
        Ok(())
    }

    fn declared(&self, declared: Option<&TensorType>) -> R<TensorType> {
        let t = declared.ok_or(TypeError::NeedsDeclaredType { op: self.name })?;
        t.check_well_formed()
            .map_err(|err| TypeError::Form { op: self.name, err })?;
        Ok(t.clone())
    }

    fn rule(&self, message: String) -> TypeError {
        TypeError::Rule {
            op: self.name,
            message,
        }
    }

    fn attr(&self, attr: &'static str, message: String) -> TypeError {
        TypeError::Attr {
            op: self.name,
            attr,
            message,
        }
    }

    fn dtype_err(&self, i: usize, expected: &'static str) -> TypeError {
        TypeError::DType {
            op: self.name,
            operand: self.operand_name(i),
            expected,
            found: self.ty(i).dtype,
        }
    }

    fn shape_err(&self, i: usize, expected: String) -> TypeError {
        TypeError::Shape {
            op: self.name,
            operand: self.operand_name(i),
            expected,
            found: self.ty(i).shape.clone(),
        }
    }

    fn float(&self, i: usize) -> R<&'a TensorType> {
        let t = self.ty(i);
        if t.dtype.is_float() {
            Ok(t)
        } else {
            Err(self.dtype_err(i, "a float type (f64, f32, f16, bf16)"))
        }
    }

    fn numeric(&self, i: usize) -> R<&'a TensorType> {
        let t = self.ty(i);
        if t.dtype.is_numeric() {
            Ok(t)
        } else {
            Err(self.dtype_err(i, "a numeric type (f64, f32, f16, bf16, i64, i32, i8, u8)"))
        }
    }

    fn bool(&self, i: usize) -> R<&'a TensorType> {
        let t = self.ty(i);
        if t.dtype == DType::Bool {
            Ok(t)
        } else {
            Err(self.dtype_err(i, "bool"))
        }
    }

    fn index(&self, i: usize) -> R<&'a TensorType> {
        let t = self.ty(i);
        if matches!(t.dtype, DType::I64 | DType::I32) {
            Ok(t)
        } else {
            Err(self.dtype_err(i, "an index type (i64 or i32)"))
        }
    }

    fn same_dtype(&self, i: usize, j: usize) -> R<DType> {
        let (a, b) = (self.ty(i).dtype, self.ty(j).dtype);
        if a == b {
            Ok(a)
        } else {
            Err(TypeError::DTypeMismatch {
                op: self.name,
                a: self.operand_name(i),
                ta: a,
                b: self.operand_name(j),
                tb: b,
            })
        }
    }

    fn min_rank(&self, i: usize, rank: usize) -> R<()> {
        if self.ty(i).rank() >= rank {
            Ok(())
        } else {
            Err(self.shape_err(i, format!("of rank {rank} or more")))
        }
    }

    fn exact_rank(&self, i: usize, rank: usize) -> R<()> {
        if self.ty(i).rank() == rank {
            Ok(())
        } else {
            Err(self.shape_err(i, format!("of rank {rank}")))
        }
    }

    fn expect_shape(&self, i: usize, shape: &Shape, what: &str) -> R<()> {
        if &self.ty(i).shape == shape {
            Ok(())
        } else {
            Err(self.shape_err(i, format!("{shape} ({what})")))
        }
    }

    fn static_dim(&self, i: usize, axis: usize) -> R<u64> {
        let t = self.ty(i);
        t.shape.dims()[axis].as_static().ok_or_else(|| {
            self.shape_err(
                i,
                format!("static on axis {axis} (this rule needs the size)"),
            )
        })
    }

    fn non_negative_f(&self, attr: &'static str, v: f64) -> R<()> {
        if v >= 0.0 && v.is_finite() {
            Ok(())
        } else {
            Err(self.attr(
                attr,
                format!("must be a finite non-negative number, found {v}"),
            ))
        }
    }

    fn axis(&self, attr: &'static str, axis: i64, rank: usize) -> R<usize> {
        normalize_axis(axis, rank)
            .ok_or_else(|| self.attr(attr, format!("{axis} is out of range for rank {rank}")))
    }

    fn axes(&self, attr: &'static str, axes: &[i64], rank: usize) -> R<Vec<usize>> {
        let mut out = Vec::new();
        for &a in axes {
            let n = self.axis(attr, a, rank)?;
            if out.contains(&n) {
                return Err(self.attr(attr, format!("repeats axis {n}")));
            }
            out.push(n);
        }
        Ok(out)
    }

    fn permutation(&self, attr: &'static str, perm: &[i64], rank: usize) -> R<Vec<usize>> {
        let p = self.axes(attr, perm, rank)?;
        if p.len() != rank {
            return Err(self.attr(
                attr,
                format!("{perm:?} must be a permutation of the {rank} axes"),
            ));
        }
        Ok(p)
    }

    /// The broadcast of the listed operands' shapes; the layout is that of an
    /// operand whose shape is the result's.
    fn broadcast_result(&self, ids: &[usize], dtype: DType) -> R<TensorType> {
        let mut shape = self.ty(ids[0]).shape.clone();
        for &i in &ids[1..] {
            shape = shape
                .broadcast(&self.ty(i).shape)
                .map_err(|err| TypeError::Broadcast {
                    op: self.name,
                    a: shape.clone(),
                    b: self.ty(i).shape.clone(),
                    err,
                })?;
        }
        let layout = ids
            .iter()
            .map(|&i| self.ty(i))
            .find(|t| t.shape == shape)
            .map(|t| t.layout.clone())
            .unwrap_or(Layout::RowMajor);
        Ok(TensorType {
            layout,
            ..TensorType::new(dtype, shape)
        })
    }

    fn global_pool(&self) -> R<TensorType> {
        let x = self.ty(0);
        self.min_rank(0, 3)?;
        let mut dims = x.shape.dims()[..2].to_vec();
        dims.extend(std::iter::repeat_n(Dim::Static(1), x.rank() - 2));
        Ok(TensorType {
            layout: x.layout.clone(),
            ..TensorType::new(x.dtype, Shape(dims))
        })
    }

    fn reduced_shape(&self, attr: &'static str, axes: &[i64], keepdim: bool) -> R<Shape> {
        let x = self.ty(0);
        let axes = self.axes(attr, axes, x.rank())?;
        let dims = (0..x.rank())
            .filter_map(|a| match (axes.contains(&a), keepdim) {
                (false, _) => Some(x.shape.dims()[a].clone()),
                (true, true) => Some(Dim::Static(1)),
                (true, false) => None,
            })
            .collect();
        Ok(Shape(dims))
    }

    fn same_dim(&self, what: &str, a: &Dim, b: &Dim) -> R<()> {
        if a == b {
            Ok(())
        } else {
            Err(self.rule(format!("{what} differ: {a} vs {b}")))
        }
    }

    fn matmul(&self, ta: bool, tb: bool) -> R<TensorType> {
        let (a, b) = (self.numeric(0)?, self.numeric(1)?);
        let dt = self.same_dtype(0, 1)?;
        for (i, t, flag) in [(0, a, ta), (1, b, tb)] {
            if t.rank() == 0 {
                return Err(self.shape_err(i, "of rank 1 or more".into()));
            }
            if flag && t.rank() < 2 {
                return Err(self.attr(
                    if i == 0 { "transpose_a" } else { "transpose_b" },
                    format!("needs rank 2 or more, found {}", t.shape),
                ));
            }
        }
        let mut ad = a.shape.dims().to_vec();
        let mut bd = b.shape.dims().to_vec();
        let (a1, b1) = (ad.len() == 1, bd.len() == 1);
        if a1 {
            ad.insert(0, Dim::Static(1));
        }
        if b1 {
            bd.push(Dim::Static(1));
        }
        let (ra, rb) = (ad.len(), bd.len());
        if ta {
            ad.swap(ra - 1, ra - 2);
        }
        if tb {
            bd.swap(rb - 1, rb - 2);
        }
        let (m, ka) = (ad[ra - 2].clone(), ad[ra - 1].clone());
        let (kb, n) = (bd[rb - 2].clone(), bd[rb - 1].clone());
        if ka != kb {
            return Err(self.rule(format!(
                "contraction sizes differ: `a` {} gives k = {ka}, `b` {} gives k = {kb}",
                a.shape, b.shape
            )));
        }
        let batch_a = Shape(ad[..ra - 2].to_vec());
        let batch_b = Shape(bd[..rb - 2].to_vec());
        let batch = batch_a
            .broadcast(&batch_b)
            .map_err(|err| TypeError::Broadcast {
                op: self.name,
                a: batch_a.clone(),
                b: batch_b.clone(),
                err,
            })?;
        let mut dims = batch.0;
        if !a1 {
            dims.push(m);
        }
        if !b1 {
            dims.push(n);
        }
        Ok(TensorType::new(dt, Shape(dims)))
    }

    fn pair(&self, attr: &'static str, v: &[i64], min: i64) -> R<[u64; 2]> {
        match v {
            [a, b] if *a >= min && *b >= min => Ok([*a as u64, *b as u64]),
            _ => Err(self.attr(
                attr,
                format!("must be 2 integers of at least {min}, found {v:?}"),
            )),
        }
    }

    fn quad(&self, attr: &'static str, v: &[i64]) -> R<[u64; 4]> {
        match v {
            [a, b, c, d] if v.iter().all(|&p| p >= 0) => {
                Ok([*a as u64, *b as u64, *c as u64, *d as u64])
            }
            _ => Err(self.attr(
                attr,
                format!("must be 4 non-negative integers [top, left, bottom, right], found {v:?}"),
            )),
        }
    }

    /// One spatial output dim of a window op; a symbolic input passes through
    /// only when the window leaves the size unchanged.
    fn spatial(&self, d: &Dim, f: impl Fn(u64) -> Option<u64>, axis: usize) -> R<Dim> {
        match d {
            Dim::Static(n) => f(*n).map(Dim::Static).ok_or_else(|| {
                self.shape_err(0, format!("large enough on axis {axis} for the window"))
            }),
            Dim::Sym(_) => match (f(1000), f(1001)) {
                (Some(1000), Some(1001)) => Ok(d.clone()),
                _ => Err(self.shape_err(
                    0,
                    format!("static on axis {axis}: this window changes its size"),
                )),
            },
        }
    }

    fn conv2d(
        &self,
        stride: &[i64],
        padding: &[i64],
        dilation: &[i64],
        groups: i64,
        output_padding: Option<&Vec<i64>>,
    ) -> R<TensorType> {
        let x = self.float(0)?;
        self.float(1)?;
        let dt = self.same_dtype(0, 1)?;
        self.exact_rank(0, 4)?;
        self.exact_rank(1, 4)?;
        let s = self.pair("stride", stride, 1)?;
        let p = self.quad("padding", padding)?;
        let d = self.pair("dilation", dilation, 1)?;
        if groups < 1 {
            return Err(self.attr("groups", format!("must be at least 1, found {groups}")));
        }
        let g = groups as u64;
        let c = self.static_dim(0, 1)?;
        let wd: Vec<u64> = (0..4).map(|a| self.static_dim(1, a)).collect::<R<_>>()?;
        let (kh, kw) = (wd[2], wd[3]);
        if c % g != 0 {
            return Err(self.attr(
                "groups",
                format!("({g}) must divide the {c} input channels"),
            ));
        }
        let transposed = output_padding.is_some();
        let out_c = if transposed {
            if wd[0] != c {
                return Err(self.shape_err(
                    1,
                    format!("[{c}, O/groups, KH, KW] (the input has {c} channels)"),
                ));
            }
            wd[1] * g
        } else {
            if wd[1] * g != c || !wd[0].is_multiple_of(g) {
                return Err(self.shape_err(
                    1,
                    format!(
                        "[O, {}, KH, KW] with O divisible by {g} (input channels {c} / groups {g})",
                        c / g
                    ),
                ));
            }
            wd[0]
        };
        if self.operands.len() == 3 {
            self.same_dtype(0, 2)?;
            self.expect_shape(2, &Shape::of(&[out_c]), "one per output channel")?;
        }
        let mut dims = vec![x.shape.dims()[0].clone(), Dim::Static(out_c)];
        for (ax, (k, pb, pe)) in [(kh, p[0], p[2]), (kw, p[1], p[3])].into_iter().enumerate() {
            let (st, dl) = (s[ax], d[ax]);
            let out = match output_padding {
                None => self.spatial(
                    &x.shape.dims()[2 + ax],
                    |n| window_out(n, pb + pe, k, dl, st, false, pb),
                    2 + ax,
                )?,
                Some(op) => {
                    let op = self.pair("output_padding", op, 0)?;
                    if op[ax] >= st.max(dl) {
                        return Err(self.attr(
                            "output_padding",
                            format!(
                                "must be smaller than the stride or the dilation, found {}",
                                op[ax]
                            ),
                        ));
                    }
                    let f = |n: u64| {
                        ((n.max(1) - 1) * st + dl * (k - 1) + op[ax] + 1)
                            .checked_sub(pb + pe)
                            .filter(|_| n > 0)
                    };
                    self.spatial(&x.shape.dims()[2 + ax], f, 2 + ax)?
                }
            };
            dims.push(out);
        }
        Ok(TensorType {
            layout: x.layout.clone(),
            ..TensorType::new(dt, Shape(dims))
        })
    }

    fn pool2d(
        &self,
        kernel: &[i64],
        stride: &[i64],
        padding: &[i64],
        dilation: &[i64],
        ceil: bool,
    ) -> R<TensorType> {
        let x = self.ty(0);
        self.exact_rank(0, 4)?;
        let k = self.pair("kernel", kernel, 1)?;
        let s = self.pair("stride", stride, 1)?;
        let p = self.quad("padding", padding)?;
        let d = self.pair("dilation", dilation, 1)?;
        for (ax, (pb, pe)) in [(p[0], p[2]), (p[1], p[3])].into_iter().enumerate() {
            if pb.max(pe) * 2 > k[ax] {
                return Err(self.attr(
                    "padding",
                    format!("must be at most half the kernel ({}) on each side", k[ax]),
                ));
            }
        }
        let mut dims = x.shape.dims()[..2].to_vec();
        for (ax, (pb, pe)) in [(p[0], p[2]), (p[1], p[3])].into_iter().enumerate() {
            let f = |n| window_out(n, pb + pe, k[ax], d[ax], s[ax], ceil, pb);
            dims.push(self.spatial(&x.shape.dims()[2 + ax], f, 2 + ax)?);
        }
        Ok(TensorType {
            layout: x.layout.clone(),
            ..TensorType::new(x.dtype, Shape(dims))
        })
    }

    fn attention(&self) -> R<TensorType> {
        let q = self.float(0)?;
        for i in 1..3 {
            self.same_dtype(0, i)?;
        }
        for i in 0..3 {
            self.exact_rank(i, 4)?;
        }
        let (k, v) = (self.ty(1), self.ty(2));
        let (qd, kd, vd) = (q.shape.dims(), k.shape.dims(), v.shape.dims());
        self.same_dim("batch sizes of `q` and `k`", &qd[0], &kd[0])?;
        self.same_dim("batch sizes of `k` and `v`", &kd[0], &vd[0])?;
        self.same_dim("head sizes of `q` and `k`", &qd[3], &kd[3])?;
        self.same_dim("key lengths of `k` and `v`", &kd[2], &vd[2])?;
        self.same_dim("head counts of `k` and `v`", &kd[1], &vd[1])?;
        let hq = self.static_dim(0, 1)?;
        let hkv = self.static_dim(1, 1)?;
        if hkv == 0 || hq % hkv != 0 {
            return Err(self.rule(format!(
                "query heads ({hq}) must be a multiple of key/value heads ({hkv})"
            )));
        }
        let out = Shape(vec![
            qd[0].clone(),
            qd[1].clone(),
            qd[2].clone(),
            vd[3].clone(),
        ]);
        if self.operands.len() == 4 {
            self.same_dtype(0, 3)?;
            let scores = Shape(vec![
                qd[0].clone(),
                qd[1].clone(),
                qd[2].clone(),
                kd[2].clone(),
            ]);
            if !self.ty(3).shape.broadcasts_to(&scores) {
                return Err(self.shape_err(3, format!("broadcastable to the scores {scores}")));
            }
        }
        Ok(TensorType::new(q.dtype, out))
    }

    fn reshape(&self, target: &[Dim]) -> R<TensorType> {
        let x = self.ty(0);
        fn count(dims: &[Dim]) -> (u128, Vec<&str>) {
            let mut n = 1u128;
            let mut syms: Vec<&str> = Vec::new();
            for d in dims {
                match d {
                    Dim::Static(s) => n = n.saturating_mul(*s as u128),
                    Dim::Sym(s) => syms.push(s),
                }
            }
            syms.sort();
            (n, syms)
        }
        let (na, sa) = count(x.shape.dims());
        let (nb, sb) = count(target);
        let zero = na == 0 && nb == 0;
        if !(zero || (na == nb && sa == sb)) {
            return Err(self.attr(
                "shape",
                format!(
                    "{} has a different element count from the operand {}",
                    Shape(target.to_vec()),
                    x.shape
                ),
            ));
        }
        Ok(TensorType::new(x.dtype, Shape(target.to_vec())))
    }

    fn slice(&self, axes: &[i64], starts: &[i64], ends: &[i64], steps: &[i64]) -> R<TensorType> {
        let x = self.ty(0);
        let ax = self.axes("axes", axes, x.rank())?;
        if starts.len() != ax.len()
            || ends.len() != ax.len()
            || !(steps.is_empty() || steps.len() == ax.len())
        {
            return Err(self.attr("starts", format!(
                "`axes`, `starts`, `ends` (and `steps` when given) must have the same length, found {}, {}, {}, {}",
                ax.len(), starts.len(), ends.len(), steps.len()
            )));
        }
        let mut dims = x.shape.dims().to_vec();
        for (i, &a) in ax.iter().enumerate() {
            let step = steps.get(i).copied().unwrap_or(1);
            if step == 0 {
                return Err(self.attr("steps", "must not contain 0".into()));
            }
            match &dims[a] {
                Dim::Static(n) => {
                    let (_, len) = slice_range(*n as i64, starts[i], ends[i], step);
                    dims[a] = Dim::Static(len as u64);
                }
                Dim::Sym(_) if starts[i] == 0 && ends[i] >= i64::MAX / 2 && step == 1 => {}
                Dim::Sym(s) => {
                    return Err(self.shape_err(0, format!("static on axis {a} to slice it (`{s}` is symbolic; only a full slice keeps it)")));
                }
            }
        }
        Ok(TensorType::new(x.dtype, Shape(dims)))
    }

    fn concat(&self, axis: i64) -> R<TensorType> {
        let first = self.ty(0);
        let a = self.axis("axis", axis, first.rank())?;
        let mut total = Some(0u64);
        for i in 0..self.operands.len() {
            let t = self.ty(i);
            self.same_dtype(0, i)?;
            let ok = t.rank() == first.rank()
                && (0..t.rank()).all(|d| d == a || t.shape.dims()[d] == first.shape.dims()[d]);
            if !ok {
                return Err(self.shape_err(
                    i,
                    format!("{} except on axis {a} (the shape of `xs[0]`)", first.shape),
                ));
            }
            total = total.zip(t.shape.dims()[a].as_static()).map(|(x, y)| x + y);
        }
        let mut dims = first.shape.dims().to_vec();
        dims[a] = match (total, self.operands.len()) {
            (Some(n), _) => Dim::Static(n),
            (None, 1) => first.shape.dims()[a].clone(),
            (None, _) => {
                return Err(self.rule(format!(
                    "concatenated axis {a} must be static in every operand"
                )));
            }
        };
        Ok(TensorType::new(first.dtype, Shape(dims)))
    }

    /// Checks the scale, zero and global operands that follow the codes.
    fn scale_operands(&self, scheme: &QuantScheme, shape: &Shape) -> R<()> {
        let expected = 2 + scheme.zero.is_some() as usize + scheme.global.is_some() as usize;
        if self.operands.len() != expected {
            return Err(TypeError::Arity {
                op: self.name,
                expected: format!(
                    "{expected} (codes, scale{}{}) for {scheme}",
                    if scheme.zero.is_some() { ", zero" } else { "" },
                    if scheme.global.is_some() {
                        ", global"
                    } else {
                        ""
                    }
                ),
                found: self.operands.len(),
            });
        }
        let ss = scheme.scale_shape(shape);
        let mut slots = vec![(scheme.scale, ss.clone(), "scale")];
        if let Some(z) = scheme.zero {
            slots.push((z, ss, "zero"));
        }
        if let Some(g) = scheme.global {
            slots.push((g, Shape::scalar(), "global"));
        }
        for (i, (dt, shape, what)) in slots.into_iter().enumerate() {
            let t = self.ty(i + 1);
            if t.dtype != dt {
                return Err(TypeError::Rule {
                    op: self.name,
                    message: format!("{what} must be {dt} as the scheme says, found {}", t.dtype),
                });
            }
            if t.shape != shape {
                return Err(TypeError::Rule {
                    op: self.name,
                    message: format!(
                        "{what} must have shape {shape} for {scheme} on {}, found {}",
                        self.ty(0).shape,
                        t.shape
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Whether the tanh form of gelu is meant (kept here so the interpreter and
/// the docs use one definition).
pub fn gelu_is_tanh(a: GeluApprox) -> bool {
    match a {
        GeluApprox::None => false,
        GeluApprox::Tanh => true,
    }
}
