//! Fusion: offering to compute an operand inside its consumer's kernel.
//!
//! The e-graph starts with every use of an op's result through `mat` (one
//! kernel per op). Each rule here adds, beside a consumer, the same consumer
//! reading the producer's expression directly — `mat` is the identity on
//! values, so every rule is `f(.., mat(p), ..) = f(.., p, ..)`. Which of the
//! alternatives run is decided by extraction, which knows the kernel
//! templates and prices recompute against a store and a load. The rules
//! only offer pairs some template can use.

use egg::Id;
use kiln_dialect::ops::{Op, OpClass};

use super::{Rhs, Rule};
use crate::egraph::analysis::KGraph;
use crate::egraph::lang::{Head, KNode};

/// The fusion family.
pub static RULES: &[Rule] = &[
    // f(.., mat(p), ..) = f(.., p, ..) for elementwise f and an elementwise or data-movement p: chains of any length
    Rule {
        name: "fuse-elementwise",
        identity: "f(mat(p)) = f(p), f and p elementwise",
        apply: fuse_elementwise,
    },
    // f(.., mat(r), ..) = f(.., r, ..) for elementwise f over a reduction, contraction, attention or pooling r: epilogues
    Rule {
        name: "fuse-epilogue",
        identity: "f(mat(k)) = f(k), f elementwise, k a kernel root",
        apply: fuse_epilogue,
    },
    // r(.., mat(p), ..) = r(.., p, ..) for a reduction, contraction, attention or pooling r over an elementwise p: prologues
    Rule {
        name: "fuse-prologue",
        identity: "k(mat(p)) = k(p), p elementwise (dequantize, cast, scale, rope, ...)",
        apply: fuse_prologue,
    },
    // matmul(mat(norm(x)), w) = matmul(norm(x), w) for a norm over the contraction axis
    Rule {
        name: "fuse-norm-prologue",
        identity: "matmul(mat(norm(x)), w) = matmul(norm(x), w)",
        apply: fuse_norm_prologue,
    },
    // attention(q, mat(view(x)), ..) = attention(q, view(x), ..) for keys or values that are views: read where they lie
    Rule {
        name: "fuse-attention-view",
        identity: "attention(q, mat(view(x)), v) = attention(q, view(x), v), view a reshape/transpose/slice",
        apply: fuse_attention_view,
    },
    // conv(mat(conv(x))) = conv(conv(x)): the inverted bottleneck's 1x1 -> depthwise -> 1x1 chain kept on chip
    Rule {
        name: "fuse-conv-chain",
        identity: "conv(mat(conv(x))) = conv(conv(x))",
        apply: fuse_conv_chain,
    },
];

fn op<'a>(eg: &'a KGraph, n: &KNode) -> Option<&'a Op> {
    match n.head {
        Head::Op(id) => Some(&eg.analysis.ops.get(id).op),
        Head::Mat => None,
    }
}

/// The value inside a `mat` operand class, if the class is one.
fn unmat(eg: &KGraph, c: Id) -> Option<Id> {
    eg[c].nodes.iter().find_map(|n| {
        if let Head::Mat = n.head {
            Some(eg.find(n.args[0]))
        } else {
            None
        }
    })
}

fn class_has(eg: &KGraph, c: Id, pred: impl Fn(&Op) -> bool) -> bool {
    eg[c].nodes.iter().any(|n| op(eg, n).is_some_and(&pred))
}

fn elementwise_like(o: &Op) -> bool {
    match o.class() {
        OpClass::Elementwise | OpClass::Movement | OpClass::Quant => true,
        OpClass::ChannelNorm => matches!(o, Op::BatchNorm { .. }),
        OpClass::Source
        | OpClass::Reduce
        | OpClass::RowNorm
        | OpClass::Matmul
        | OpClass::Conv
        | OpClass::Attention
        | OpClass::Pool => false,
    }
}

fn kernel_root(o: &Op) -> bool {
    match o.class() {
        OpClass::Reduce
        | OpClass::RowNorm
        | OpClass::Matmul
        | OpClass::Conv
        | OpClass::Attention
        | OpClass::Pool => true,
        OpClass::ChannelNorm => matches!(o, Op::GroupNorm { .. }),
        OpClass::Source | OpClass::Elementwise | OpClass::Movement | OpClass::Quant => false,
    }
}

/// Replaces the first operand `i` that is a `mat` of a class satisfying
/// `producer` (and allowed by `slot`) by the value itself.
fn unmat_operand(
    eg: &KGraph,
    n: &KNode,
    slot: impl Fn(usize) -> bool,
    producer: impl Fn(&KGraph, Id) -> bool,
) -> Option<Rhs> {
    let o = op(eg, n)?.clone();
    for (i, a) in n.args.iter().enumerate() {
        if !slot(i) {
            continue;
        }
        let Some(v) = unmat(eg, *a) else { continue };
        if producer(eg, v) {
            let mut args: Vec<Rhs> = n.args.iter().map(|&x| Rhs::Class(x)).collect();
            args[i] = Rhs::Class(v);
            return Some(Rhs::Op(o, args));
        }
    }
    None
}

fn fuse_elementwise(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    if !elementwise_like(op(eg, n)?) {
        return None;
    }
    unmat_operand(eg, n, |_| true, |eg, v| class_has(eg, v, elementwise_like))
}

fn fuse_epilogue(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let o = op(eg, n)?;
    if !(elementwise_like(o) && !matches!(o.class(), OpClass::Movement)
        || matches!(
            o,
            Op::Reshape { .. } | Op::Transpose { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. }
        ))
    {
        return None;
    }
    unmat_operand(eg, n, |_| true, |eg, v| class_has(eg, v, kernel_root))
}

fn fuse_prologue(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    if !kernel_root(op(eg, n)?) {
        return None;
    }
    unmat_operand(eg, n, |_| true, |eg, v| class_has(eg, v, elementwise_like))
}

/// The keys' or values' operand of an attention (`fuse-prologue` unmats
/// only the first `mat` operand, so keys computed by a kernel of their own
/// would keep the values behind their `mat` too).
fn fuse_attention_view(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let Op::Attention { .. } = op(eg, n)? else {
        return None;
    };
    unmat_operand(
        eg,
        n,
        |i| i == 1 || i == 2,
        |eg, v| {
            class_has(eg, v, |o| {
                matches!(
                    o,
                    Op::Reshape { .. }
                        | Op::Transpose { .. }
                        | Op::Slice { .. }
                        | Op::Squeeze { .. }
                        | Op::Unsqueeze { .. }
                )
            })
        },
    )
}

fn fuse_norm_prologue(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let Op::Matmul {
        transpose_a: false, ..
    } = op(eg, n)?
    else {
        return None;
    };
    unmat_operand(
        eg,
        n,
        |i| i == 0,
        |eg, v| {
            let rank = eg[v].data.ty.rank() as i64;
            class_has(
                eg,
                v,
                |o| matches!(o, Op::LayerNorm { axis, .. } | Op::RmsNorm { axis, .. } if *axis == -1 || *axis == rank - 1),
            )
        },
    )
}

fn fuse_conv_chain(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let Op::Conv2d { .. } = op(eg, n)? else {
        return None;
    };
    unmat_operand(
        eg,
        n,
        |i| i == 0,
        |eg, v| {
            // the producer is a conv, possibly under an elementwise epilogue (relu6)
            class_has(eg, v, |o| matches!(o, Op::Conv2d { .. }))
                || eg[v].nodes.iter().any(|m| {
                    op(eg, m).is_some_and(elementwise_like)
                        && m.args
                            .iter()
                            .any(|a| class_has(eg, *a, |o| matches!(o, Op::Conv2d { .. })))
                })
        },
    )
}
