//! Layout: channels-last convolutions, cancellation of back-to-back
//! conversions, and packed weight layouts for contractions.
//!
//! A layout never changes values (`relayout` is the identity), so every rule
//! is exact. Which layouts run is the cost model's choice: the targets price
//! a convolution reading NCHW activations and a contraction reading
//! row-major weights above their channels-last and packed counterparts, and
//! a conversion of a weight is free at run time (it happens when weights are
//! bound).

use kiln_dialect::Layout;
use kiln_dialect::ops::{Op, OpClass};

use super::{Rhs, Rule};
use crate::egraph::analysis::KGraph;
use crate::egraph::lang::{Head, KNode};

/// The packed layout of a contraction's weight operand: the tensor-core
/// fragment order of the B operand.
pub const PACKED_B: &str = "mma_b";

/// The layout family.
pub static RULES: &[Rule] = &[
    // conv2d(x, w, b) = relayout(conv2d(relayout(x, nhwc), w, b), layout(x)) for NCHW x
    Rule {
        name: "conv-channels-last",
        identity: "conv(x) = relayout(conv(relayout(x, nhwc)), layout(x))",
        apply: conv_channels_last,
    },
    // relayout(relayout(x, a), b) = relayout(x, b), or x when b is x's own layout
    Rule {
        name: "relayout-relayout",
        identity: "relayout(relayout(x, a), b) = relayout(x, b)",
        apply: relayout_relayout,
    },
    // relayout(x, layout(x)) = x
    Rule {
        name: "relayout-identity",
        identity: "relayout(x, layout(x)) = x",
        apply: relayout_identity,
    },
    // f(relayout(x, l)) = relayout(f(x), l) for elementwise unary f: conversions move outward and meet
    Rule {
        name: "unary-relayout-sink",
        identity: "f(relayout(x, l)) = relayout(f(x), l)",
        apply: unary_relayout_sink,
    },
    // f(relayout(a, l), b) = relayout(f(a, b), l) for elementwise binary f when b has a's layout or is broadcast
    Rule {
        name: "binary-relayout-sink",
        identity: "f(relayout(a, l), relayout(b, l)) = relayout(f(a, b), l)",
        apply: binary_relayout_sink,
    },
    // matmul(x, w) = matmul(x, relayout(w, packed(mma_b))) for a weight w (codes, for a dequantized weight)
    Rule {
        name: "weight-packed",
        identity: "matmul(x, w) = matmul(x, relayout(w, packed))",
        apply: weight_packed,
    },
];

fn op<'a>(eg: &'a KGraph, n: &KNode) -> Option<&'a Op> {
    match n.head {
        Head::Op(id) => Some(&eg.analysis.ops.get(id).op),
        Head::Mat => None,
    }
}

fn layout(eg: &KGraph, c: egg::Id) -> &Layout {
    &eg[c].data.ty.layout
}

fn relayout_of(eg: &KGraph, c: egg::Id) -> Option<(egg::Id, Layout)> {
    eg[c].nodes.iter().find_map(|n| {
        if let Some(Op::Relayout { layout }) = op(eg, n) {
            Some((n.args[0], layout.clone()))
        } else {
            None
        }
    })
}

fn conv_channels_last(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let conv @ Op::Conv2d { .. } = op(eg, n)? else {
        return None;
    };
    let x = n.args[0];
    let lx = layout(eg, x).clone();
    if !matches!(lx, Layout::RowMajor | Layout::Nchw) || eg[x].data.ty.rank() != 4 {
        return None;
    }
    let mut args: Vec<Rhs> = n.args.iter().map(|&a| Rhs::Class(a)).collect();
    args[0] = Rhs::op(
        Op::Relayout {
            layout: Layout::Nhwc,
        },
        &[x],
    );
    Some(Rhs::Op(
        Op::Relayout { layout: lx },
        vec![Rhs::Op(conv.clone(), args)],
    ))
}

fn relayout_relayout(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let Op::Relayout { layout: b } = op(eg, n)? else {
        return None;
    };
    let (x, _) = relayout_of(eg, n.args[0])?;
    if layout(eg, x) == b {
        Some(Rhs::Class(x))
    } else {
        Some(Rhs::op(Op::Relayout { layout: b.clone() }, &[x]))
    }
}

fn relayout_identity(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let Op::Relayout { layout: l } = op(eg, n)? else {
        return None;
    };
    (layout(eg, n.args[0]) == l).then(|| Rhs::Class(n.args[0]))
}

fn unary_relayout_sink(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let f = op(eg, n)?;
    if f.class() != OpClass::Elementwise
        || f.spec().arity() != (1, 1)
        || matches!(f, Op::Rope { .. })
    {
        return None;
    }
    let (x, l) = relayout_of(eg, n.args[0])?;
    Some(Rhs::Op(
        Op::Relayout { layout: l },
        vec![Rhs::op(f.clone(), &[x])],
    ))
}

fn binary_relayout_sink(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let f = op(eg, n)?;
    if f.class() != OpClass::Elementwise || f.spec().arity() != (2, 2) {
        return None;
    }
    let (a, b) = (n.args[0], n.args[1]);
    let (ia, la) = relayout_of(eg, a)?;
    // both converted the same way from the same layout, or b broadcast (lower rank)
    if let Some((ib, lb)) = relayout_of(eg, b)
        && lb == la
        && layout(eg, ia) == layout(eg, ib)
    {
        return Some(Rhs::Op(
            Op::Relayout { layout: la },
            vec![Rhs::op(f.clone(), &[ia, ib])],
        ));
    }
    if eg[b].data.ty.rank() < eg[a].data.ty.rank() {
        return Some(Rhs::Op(
            Op::Relayout { layout: la },
            vec![Rhs::op(f.clone(), &[ia, b])],
        ));
    }
    None
}

fn weight_packed(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let mm @ Op::Matmul {
        transpose_a: false,
        transpose_b: false,
    } = op(eg, n)?
    else {
        return None;
    };
    let w = n.args[1];
    let wt = &eg[w].data.ty;
    if !eg[w].data.weight_only || wt.rank() != 2 || wt.layout != Layout::RowMajor {
        return None;
    }
    let packed = Layout::Packed(PACKED_B.to_string());
    // a plain weight, or the codes of a dequantized one
    if let Some(Op::Weight) = eg[w].nodes.iter().find_map(|m| op(eg, m)) {
        let wp = Rhs::op(Op::Relayout { layout: packed }, &[w]);
        return Some(Rhs::Op(mm.clone(), vec![Rhs::Class(n.args[0]), wp]));
    }
    eg[w].nodes.iter().find_map(|d| {
        let dq @ Op::Dequantize { .. } = op(eg, d)? else {
            return None;
        };
        let q = d.args[0];
        if eg[q].data.ty.layout != Layout::RowMajor {
            return None;
        }
        let mut dargs: Vec<Rhs> = d.args.iter().map(|&a| Rhs::Class(a)).collect();
        dargs[0] = Rhs::op(
            Op::Relayout {
                layout: packed.clone(),
            },
            &[q],
        );
        // the dequantized weight keeps the packed layout; the matmul reads it as B
        Some(Rhs::Op(
            mm.clone(),
            vec![Rhs::Class(n.args[0]), Rhs::Op(dq.clone(), dargs)],
        ))
    })
}
