//! The op table: every op of the graph dialect, declared once.
//!
//! Each line of [`define_ops!`] below declares an op: its Rust variant, its
//! text mnemonic, its operands (`name`, `name opt` optional, `name many`
//! variadic), its attributes with their types and defaults, and its doc line.
//! The `Op` enum, the attribute printer and parser, and the op reference
//! ([`OP_TABLE`]) are generated from it. Type rules ([`crate::infer`]) and the
//! interpreter ([`crate::interp`]) match on `Op` exhaustively, so a new op
//! makes the compiler list every place still to write; docs/adding-an-op.md
//! is the checklist.

pub mod attr;

pub use attr::{AttrValue, Attribute, GeluApprox, Literal, PadMode};

use crate::DType;
use crate::layout::Layout;
use crate::quant::QuantScheme;
use crate::shape::Dim;

/// How many values an operand slot takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperandKind {
    /// Exactly one value.
    Required,
    /// Zero or one value (trailing optional operands).
    Optional,
    /// One or more values (the last slot only).
    Variadic,
}

/// An operand slot of an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperandSpec {
    pub name: &'static str,
    pub kind: OperandKind,
}

/// An attribute of an op, for documentation and error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttrSpec {
    pub name: &'static str,
    /// The Rust type, as written in the table.
    pub ty: &'static str,
    /// The default, as written in the table (`None` when the attribute is required).
    pub default: Option<&'static str>,
    /// What the text must look like.
    pub expected: &'static str,
}

/// One row of the op table.
#[derive(Clone, Copy, Debug)]
pub struct OpSpec {
    pub mnemonic: &'static str,
    pub doc: &'static str,
    pub operands: &'static [OperandSpec],
    pub attrs: &'static [AttrSpec],
}

impl OpSpec {
    /// The number of operands this op accepts, as `(min, max)`; `max` is
    /// `usize::MAX` for variadic ops.
    pub fn arity(&self) -> (usize, usize) {
        let mut min = 0;
        let mut max = 0usize;
        for o in self.operands {
            match o.kind {
                OperandKind::Required => {
                    min += 1;
                    max += 1;
                }
                OperandKind::Optional => max += 1,
                OperandKind::Variadic => {
                    min += 1;
                    max = usize::MAX;
                }
            }
        }
        (min, max)
    }

    /// The signature as written in docs: `layer_norm(x, gamma?, beta?)`.
    pub fn signature(&self) -> String {
        let ops: Vec<String> = self
            .operands
            .iter()
            .map(|o| match o.kind {
                OperandKind::Required => o.name.to_string(),
                OperandKind::Optional => format!("{}?", o.name),
                OperandKind::Variadic => format!("{}...", o.name),
            })
            .collect();
        format!("{}({})", self.mnemonic, ops.join(", "))
    }
}

/// Why an op could not be built from a mnemonic and attributes.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum OpBuildError {
    #[error("unknown op `{name}`{}", suggestion_note(.suggestion))]
    UnknownOp {
        name: String,
        suggestion: Option<&'static str>,
    },
    #[error("`{op}` has no attribute `{attr}`{}", expected_attrs(.known))]
    UnknownAttr {
        op: &'static str,
        attr: String,
        known: Vec<&'static str>,
    },
    #[error("`{op}` is missing attribute `{attr}` ({expected})")]
    MissingAttr {
        op: &'static str,
        attr: &'static str,
        expected: &'static str,
    },
    #[error("`{op}` attribute `{attr}` must be {expected}, found `{found}`")]
    AttrType {
        op: &'static str,
        attr: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("`{op}` attribute `{attr}` is given twice")]
    DuplicateAttr { op: &'static str, attr: String },
}

fn suggestion_note(s: &Option<&'static str>) -> String {
    s.map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default()
}

fn expected_attrs(known: &[&'static str]) -> String {
    if known.is_empty() {
        "; it takes no attributes".into()
    } else {
        format!("; expected one of: {}", known.join(", "))
    }
}

macro_rules! opt_expr {
    () => {
        None
    };
    ($e:expr) => {
        Some($e)
    };
}

macro_rules! opt_str {
    () => {
        None
    };
    ($e:expr) => {
        Some(stringify!($e))
    };
}

macro_rules! operand_kind {
    () => {
        OperandKind::Required
    };
    (opt) => {
        OperandKind::Optional
    };
    (many) => {
        OperandKind::Variadic
    };
}

macro_rules! define_ops {
    ($(
        $(#[doc = $doc:literal])+
        $variant:ident $mnemonic:literal [$($operand:ident $($okind:ident)?),*]
            $({ $($attr:ident : $aty:ty $(= $default:expr)?),* $(,)? })?;
    )*) => {
        /// A graph-dialect op with its attributes. See [`OP_TABLE`] and docs/ir.md.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Op {
            $(
                $(#[doc = $doc])+
                $variant $({ $($attr: $aty),* })?,
            )*
        }

        /// Every op's mnemonic, doc, operands and attributes, in table order.
        pub static OP_TABLE: &[OpSpec] = &[
            $(OpSpec {
                mnemonic: $mnemonic,
                doc: concat!($($doc, "\n"),+),
                operands: &[$(OperandSpec { name: stringify!($operand), kind: operand_kind!($($okind)?) }),*],
                attrs: &[$($(AttrSpec {
                    name: stringify!($attr),
                    ty: stringify!($aty),
                    default: opt_str!($($default)?),
                    expected: <$aty as Attribute>::EXPECTED,
                }),*)?],
            },)*
        ];

        impl Op {
            /// The text mnemonic (`matmul`).
            pub fn mnemonic(&self) -> &'static str {
                match self {
                    $(Op::$variant { .. } => $mnemonic,)*
                }
            }

            /// This op's row of the op table.
            pub fn spec(&self) -> &'static OpSpec {
                let mut i = 0usize;
                $(
                    if let Op::$variant { .. } = self {
                        return &OP_TABLE[i];
                    }
                    i += 1;
                )*
                unreachable!("op table row for {} ({i} rows)", self.mnemonic())
            }

            /// The attributes that differ from their defaults, in table
            /// order, as the printer writes them.
            pub fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
                #[allow(unused_mut)]
                let mut out = Vec::new();
                match self {
                    $(Op::$variant $({ $($attr),* })? => {
                        $($(
                            let default: Option<$aty> = opt_expr!($($default)?);
                            if default.as_ref() != Some($attr) {
                                out.push((stringify!($attr), $attr.to_attr()));
                            }
                        )*)?
                    })*
                }
                out
            }

            /// Builds an op from its mnemonic and named attribute values;
            /// absent attributes take their defaults.
            pub fn build(mnemonic: &str, attrs: &[(String, AttrValue)]) -> Result<Op, OpBuildError> {
                $(
                    if mnemonic == $mnemonic {
                        #[allow(unused_variables)]
                        let known: &[&'static str] = &[$($(stringify!($attr)),*)?];
                        for (i, (name, _)) in attrs.iter().enumerate() {
                            if !known.contains(&name.as_str()) {
                                return Err(OpBuildError::UnknownAttr {
                                    op: $mnemonic, attr: name.clone(), known: known.to_vec(),
                                });
                            }
                            if attrs[..i].iter().any(|(n, _)| n == name) {
                                return Err(OpBuildError::DuplicateAttr { op: $mnemonic, attr: name.clone() });
                            }
                        }
                        $($(
                            let $attr: $aty = match attrs.iter().find(|(n, _)| n == stringify!($attr)) {
                                Some((_, v)) => <$aty as Attribute>::from_attr(v).ok_or_else(|| OpBuildError::AttrType {
                                    op: $mnemonic,
                                    attr: stringify!($attr),
                                    expected: <$aty as Attribute>::EXPECTED,
                                    found: v.to_string(),
                                })?,
                                None => {
                                    let default: Option<$aty> = opt_expr!($($default)?);
                                    default.ok_or(OpBuildError::MissingAttr {
                                        op: $mnemonic,
                                        attr: stringify!($attr),
                                        expected: <$aty as Attribute>::EXPECTED,
                                    })?
                                }
                            };
                        )*)?
                        return Ok(Op::$variant $({ $($attr),* })?);
                    }
                )*
                Err(OpBuildError::UnknownOp {
                    name: mnemonic.to_string(),
                    suggestion: crate::suggest::closest(mnemonic, OP_TABLE.iter().map(|s| s.mnemonic)),
                })
            }
        }
    };
}

define_ops! {
    // ---- graph sources -------------------------------------------------
    /// A named graph input, bound when the model runs. Printed as `input %name: type`.
    Input "input" [];
    /// A named weight, bound from a weights file. Printed as `weight %name: type`.
    Weight "weight" [];
    /// A constant tensor of the declared type: one number repeated, or every element in row-major order.
    Constant "constant" [] { value: Literal };
    /// Counts along `axis`: element i has value `start + i * step` (the declared type gives shape and dtype).
    Iota "iota" [] { axis: i64 = 0, start: f64 = 0.0, step: f64 = 1.0 };

    // ---- elementwise unary ---------------------------------------------
    /// Negation, `-x`.
    Neg "neg" [x];
    /// Absolute value.
    Abs "abs" [x];
    /// `e^x`.
    Exp "exp" [x];
    /// Natural logarithm.
    Log "log" [x];
    /// Square root.
    Sqrt "sqrt" [x];
    /// `1 / sqrt(x)`.
    Rsqrt "rsqrt" [x];
    /// `1 / x`.
    Reciprocal "reciprocal" [x];
    /// Hyperbolic tangent.
    Tanh "tanh" [x];
    /// Logistic sigmoid, `1 / (1 + e^-x)`.
    Sigmoid "sigmoid" [x];
    /// `max(x, 0)`.
    Relu "relu" [x];
    /// `min(max(x, 0), 6)`.
    Relu6 "relu6" [x];
    /// `x` where `x >= 0`, else `alpha * x`.
    LeakyRelu "leaky_relu" [x] { alpha: f64 = 0.01 };
    /// Gaussian error linear unit, exact (`approximate = none`) or the tanh form.
    Gelu "gelu" [x] { approximate: GeluApprox = GeluApprox::None };
    /// `x * sigmoid(x)`.
    Silu "silu" [x];
    /// `x * relu6(x + 3) / 6`.
    Hardswish "hardswish" [x];
    /// `max(0, min(1, alpha * x + beta))`; the defaults are PyTorch's (ONNX uses alpha 0.2).
    Hardsigmoid "hardsigmoid" [x] { alpha: f64 = 0.16666666666666666, beta: f64 = 0.5 };
    /// `log(1 + e^x)`.
    Softplus "softplus" [x];
    /// The error function.
    Erf "erf" [x];
    /// Sine (radians).
    Sin "sin" [x];
    /// Cosine (radians).
    Cos "cos" [x];
    /// Largest integer not above `x`.
    Floor "floor" [x];
    /// Smallest integer not below `x`.
    Ceil "ceil" [x];
    /// Nearest integer, ties to even.
    Round "round" [x];
    /// -1, 0 or 1 by the sign of `x` (NaN stays NaN).
    Sign "sign" [x];
    /// Logical not of a bool tensor.
    Not "not" [x];

    // ---- elementwise binary (NumPy broadcasting) -----------------------
    /// `a + b`.
    Add "add" [a, b];
    /// `a - b`.
    Sub "sub" [a, b];
    /// `a * b`.
    Mul "mul" [a, b];
    /// `a / b` (integers: truncated toward zero).
    Div "div" [a, b];
    /// `a ^ b`.
    Pow "pow" [a, b];
    /// Elementwise maximum (NaN if either is NaN).
    Max "max" [a, b];
    /// Elementwise minimum (NaN if either is NaN).
    Min "min" [a, b];
    /// `a == b`, as bool.
    Eq "eq" [a, b];
    /// `a != b`, as bool.
    Ne "ne" [a, b];
    /// `a < b`, as bool.
    Lt "lt" [a, b];
    /// `a <= b`, as bool.
    Le "le" [a, b];
    /// `a > b`, as bool.
    Gt "gt" [a, b];
    /// `a >= b`, as bool.
    Ge "ge" [a, b];
    /// Logical and of bool tensors.
    And "and" [a, b];
    /// Logical or of bool tensors.
    Or "or" [a, b];
    /// `cond ? a : b`, all three broadcast together.
    Where "where" [cond, a, b];
    /// Converts the element type (rules in docs/ir.md: floats round to nearest even, to integers truncate and saturate).
    Cast "cast" [x] { dtype: DType };
    /// Limits `x` to `[min, max]`; an absent bound does not limit.
    Clamp "clamp" [x] { min: Option<f64> = None, max: Option<f64> = None };

    // ---- reductions ----------------------------------------------------
    /// Sum over `axes`.
    ReduceSum "reduce_sum" [x] { axes: Vec<i64>, keepdim: bool = false };
    /// Mean over `axes`.
    ReduceMean "reduce_mean" [x] { axes: Vec<i64>, keepdim: bool = false };
    /// Maximum over `axes`.
    ReduceMax "reduce_max" [x] { axes: Vec<i64>, keepdim: bool = false };
    /// Minimum over `axes`.
    ReduceMin "reduce_min" [x] { axes: Vec<i64>, keepdim: bool = false };
    /// Product over `axes`.
    ReduceProd "reduce_prod" [x] { axes: Vec<i64>, keepdim: bool = false };
    /// Index of the first maximum along `axis`, as i64.
    ArgMax "arg_max" [x] { axis: i64, keepdim: bool = false };

    // ---- normalizations ------------------------------------------------
    /// `e^x / sum(e^x)` along `axis`.
    Softmax "softmax" [x] { axis: i64 = -1 };
    /// `x - log(sum(e^x))` along `axis`.
    LogSoftmax "log_softmax" [x] { axis: i64 = -1 };
    /// Normalizes over the axes from `axis` to the last: `(x - mean) / sqrt(var + eps) * gamma + beta`.
    LayerNorm "layer_norm" [x, gamma opt, beta opt] { axis: i64 = -1, eps: f64 = 1e-5 };
    /// `x / sqrt(mean(x^2) + eps) * gamma` over the axes from `axis` to the last.
    RmsNorm "rms_norm" [x, gamma opt] { axis: i64 = -1, eps: f64 = 1e-6 };
    /// Inference batch norm over channel axis 1: `(x - mean) / sqrt(var + eps) * scale + bias`.
    BatchNorm "batch_norm" [x, scale, bias, mean, var] { eps: f64 = 1e-5 };
    /// Group norm: channels (axis 1) split into `groups`, each normalized over its channels and spatial dims, then `* gamma + beta` per channel.
    GroupNorm "group_norm" [x, gamma, beta] { groups: i64, eps: f64 = 1e-5 };

    // ---- contractions --------------------------------------------------
    /// Matrix product over the last two axes, batch axes broadcast; 1-D operands as in NumPy.
    Matmul "matmul" [a, b] { transpose_a: bool = false, transpose_b: bool = false };
    /// 2-D convolution, x `[N, C, H, W]`, w `[O, C/groups, KH, KW]`, bias `[O]`; padding is `[top, left, bottom, right]`.
    Conv2d "conv2d" [x, w, bias opt] {
        stride: Vec<i64> = vec![1, 1],
        padding: Vec<i64> = vec![0, 0, 0, 0],
        dilation: Vec<i64> = vec![1, 1],
        groups: i64 = 1,
    };
    /// Transposed 2-D convolution, x `[N, C, H, W]`, w `[C, O/groups, KH, KW]`, bias `[O]`.
    ConvTranspose2d "conv_transpose2d" [x, w, bias opt] {
        stride: Vec<i64> = vec![1, 1],
        padding: Vec<i64> = vec![0, 0, 0, 0],
        output_padding: Vec<i64> = vec![0, 0],
        dilation: Vec<i64> = vec![1, 1],
        groups: i64 = 1,
    };
    /// Scaled dot-product attention: q `[B, Hq, Sq, D]`, k `[B, Hkv, Skv, D]`, v `[B, Hkv, Skv, Dv]`, Hq a multiple of Hkv; optional additive mask; causal aligns the last query with the last key; scale defaults to `1/sqrt(D)`.
    Attention "attention" [q, k, v, mask opt] { causal: bool = false, scale: Option<f64> = None };

    // ---- pooling -------------------------------------------------------
    /// Max over `kernel` windows of `[N, C, H, W]`; padding `[top, left, bottom, right]` never wins.
    MaxPool2d "max_pool2d" [x] {
        kernel: Vec<i64>,
        stride: Vec<i64> = vec![1, 1],
        padding: Vec<i64> = vec![0, 0, 0, 0],
        dilation: Vec<i64> = vec![1, 1],
        ceil_mode: bool = false,
    };
    /// Mean over `kernel` windows of `[N, C, H, W]`; padded elements count only with `count_include_pad`.
    AvgPool2d "avg_pool2d" [x] {
        kernel: Vec<i64>,
        stride: Vec<i64> = vec![1, 1],
        padding: Vec<i64> = vec![0, 0, 0, 0],
        ceil_mode: bool = false,
        count_include_pad: bool = false,
    };
    /// Mean over all axes after the first two, kept as size 1.
    GlobalAvgPool "global_avg_pool" [x];
    /// Maximum over all axes after the first two, kept as size 1.
    GlobalMaxPool "global_max_pool" [x];

    // ---- data movement -------------------------------------------------
    /// Same elements in row-major order, new shape (same element count).
    Reshape "reshape" [x] { shape: Vec<Dim> };
    /// Permutes the axes: output axis i is input axis `perm[i]`.
    Transpose "transpose" [x] { perm: Vec<i64> };
    /// Broadcasts to `shape` (NumPy rules).
    Expand "expand" [x] { shape: Vec<Dim> };
    /// Takes `start, start + step, ...` up to `end` (exclusive) on each of `axes`; negative indices count from the end, out-of-range ones are clamped; `steps` empty means all 1.
    Slice "slice" [x] { axes: Vec<i64>, starts: Vec<i64>, ends: Vec<i64>, steps: Vec<i64> = vec![] };
    /// Joins tensors along `axis`.
    Concat "concat" [xs many] { axis: i64 };
    /// Cuts `x` along `axis` into pieces of `sizes`; one result per piece.
    Split "split" [x] { axis: i64, sizes: Vec<i64> };
    /// Picks slices of `x` along `axis` at integer `indices` (NumPy `take`); negative indices count from the end.
    Gather "gather" [x, indices] { axis: i64 = 0 };
    /// Rows of `table [V, D]` at integer `ids`: result `ids.shape + [D]`.
    Embedding "embedding" [table, ids];
    /// Pads with `pads = [begin_0, ..., begin_n-1, end_0, ..., end_n-1]` by `mode`.
    Pad "pad" [x] { pads: Vec<i64>, mode: PadMode = PadMode::Constant, value: f64 = 0.0 };
    /// Removes size-1 `axes`.
    Squeeze "squeeze" [x] { axes: Vec<i64> };
    /// Inserts size-1 axes at `axes` (positions in the result).
    Unsqueeze "unsqueeze" [x] { axes: Vec<i64> };

    /// Changes the physical layout, values unchanged: `nchw` <-> `nhwc` for activations, or a weight to a packed layout (a compile-time transform).
    Relayout "relayout" [x] { layout: Layout };

    // ---- transformer helpers -------------------------------------------
    /// Rotary embedding on the last axis of `x [..., S, D]` with `cos`, `sin` of `[S, D/2]`: rotates halves (`interleaved = false`) or adjacent pairs.
    Rope "rope" [x, cos, sin] { interleaved: bool = false };

    // ---- quantization --------------------------------------------------
    /// Quantizes to codes of `dtype` under `scheme`: `saturate(round(x / (scale * global)) + zero)` for integer codes, the type's saturating encoding for float codes (docs/ir.md).
    Quantize "quantize" [x, scale, zero opt, global opt] { dtype: DType, scheme: QuantScheme };
    /// Dequantizes codes to `dtype` under their type's scheme: `(q - zero) * scale * global`.
    Dequantize "dequantize" [q, scale, zero opt, global opt] { dtype: DType };
}

/// What kind of computation an op is: the families that fusion, the cost
/// model and the kernel templates reason about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// `input`, `weight`, `constant`, `iota`: values that exist before any kernel.
    Source,
    /// One output element from the same element of each operand (with broadcasting).
    Elementwise,
    /// Reduces whole axes (`reduce_*`, `arg_max`, global pools).
    Reduce,
    /// A reduction over trailing axes broadcast back over them (`softmax`, `log_softmax`, `layer_norm`, `rms_norm`).
    RowNorm,
    /// Per-channel statistics on axis 1 (`batch_norm` uses given ones, `group_norm` computes them).
    ChannelNorm,
    /// `matmul`.
    Matmul,
    /// `conv2d`, `conv_transpose2d`.
    Conv,
    /// `attention`.
    Attention,
    /// `max_pool2d`, `avg_pool2d`.
    Pool,
    /// Moves or selects elements without arithmetic (reshape, transpose, slice, concat, gather, pad, ...).
    Movement,
    /// `quantize`, `dequantize`: elementwise with per-group parameters.
    Quant,
}

impl Op {
    /// The family this op belongs to.
    pub fn class(&self) -> OpClass {
        match self {
            Op::Input | Op::Weight | Op::Constant { .. } | Op::Iota { .. } => OpClass::Source,
            Op::Neg
            | Op::Abs
            | Op::Exp
            | Op::Log
            | Op::Sqrt
            | Op::Rsqrt
            | Op::Reciprocal
            | Op::Tanh
            | Op::Sigmoid
            | Op::Relu
            | Op::Relu6
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
            | Op::Round
            | Op::Sign
            | Op::Not
            | Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Div
            | Op::Pow
            | Op::Max
            | Op::Min
            | Op::Eq
            | Op::Ne
            | Op::Lt
            | Op::Le
            | Op::Gt
            | Op::Ge
            | Op::And
            | Op::Or
            | Op::Where
            | Op::Cast { .. }
            | Op::Clamp { .. }
            | Op::Rope { .. } => OpClass::Elementwise,
            Op::ReduceSum { .. }
            | Op::ReduceMean { .. }
            | Op::ReduceMax { .. }
            | Op::ReduceMin { .. }
            | Op::ReduceProd { .. }
            | Op::ArgMax { .. }
            | Op::GlobalAvgPool
            | Op::GlobalMaxPool => OpClass::Reduce,
            Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::LayerNorm { .. }
            | Op::RmsNorm { .. } => OpClass::RowNorm,
            Op::BatchNorm { .. } | Op::GroupNorm { .. } => OpClass::ChannelNorm,
            Op::Matmul { .. } => OpClass::Matmul,
            Op::Conv2d { .. } | Op::ConvTranspose2d { .. } => OpClass::Conv,
            Op::Attention { .. } => OpClass::Attention,
            Op::MaxPool2d { .. } | Op::AvgPool2d { .. } => OpClass::Pool,
            Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Expand { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Split { .. }
            | Op::Gather { .. }
            | Op::Embedding
            | Op::Pad { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Relayout { .. } => OpClass::Movement,
            Op::Quantize { .. } | Op::Dequantize { .. } => OpClass::Quant,
        }
    }

    /// Whether this op is a graph source printed as a declaration
    /// (`input` or `weight`) rather than as `%v = op(...)`.
    pub fn is_declaration(&self) -> bool {
        matches!(self, Op::Input | Op::Weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let mut names: Vec<_> = OP_TABLE.iter().map(|s| s.mnemonic).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate mnemonic");
        for spec in OP_TABLE {
            // operands: optional ones trail, a variadic one is alone at the end
            let kinds: Vec<_> = spec.operands.iter().map(|o| o.kind).collect();
            if let Some(p) = kinds.iter().position(|k| *k != OperandKind::Required) {
                assert!(
                    kinds[p..].iter().all(|k| *k == kinds[p]),
                    "{}: mixed operand kinds after the first non-required one",
                    spec.mnemonic
                );
            }
            assert!(!spec.doc.trim().is_empty());
        }
    }

    #[test]
    fn build_with_defaults_and_print_non_defaults() {
        let op = Op::build("matmul", &[("transpose_b".into(), AttrValue::Bool(true))]).unwrap();
        assert_eq!(
            op,
            Op::Matmul {
                transpose_a: false,
                transpose_b: true
            }
        );
        assert_eq!(op.attrs(), vec![("transpose_b", AttrValue::Bool(true))]);
        assert_eq!(op.spec().mnemonic, "matmul");
        assert_eq!(op.spec().signature(), "matmul(a, b)");
        let ln = Op::build("layer_norm", &[]).unwrap();
        assert_eq!(
            ln,
            Op::LayerNorm {
                axis: -1,
                eps: 1e-5
            }
        );
        assert!(ln.attrs().is_empty());
        assert_eq!(ln.spec().arity(), (1, 3));
        assert_eq!(
            Op::build("concat", &[("axis".into(), AttrValue::Int(0))])
                .unwrap()
                .spec()
                .arity(),
            (1, usize::MAX)
        );
    }

    #[test]
    fn build_errors_name_the_problem() {
        let e = Op::build("matmull", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown op `matmull`; did you mean `matmul`?"
        );
        let e = Op::build("softmax", &[("axes".into(), AttrValue::Int(1))]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`softmax` has no attribute `axes`; expected one of: axis"
        );
        let e = Op::build("reduce_sum", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`reduce_sum` is missing attribute `axes` (a list of integers)"
        );
        let e = Op::build(
            "cast",
            &[("dtype".into(), AttrValue::Ident("float".into()))],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "`cast` attribute `dtype` must be an element type, like f32, found `float`"
        );
        let e = Op::build("relu", &[("alpha".into(), AttrValue::Int(1))]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`relu` has no attribute `alpha`; it takes no attributes"
        );
    }
}
