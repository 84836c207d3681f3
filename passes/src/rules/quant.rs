//! Quantization lowering: contractions of dequantized operands become
//! contractions of the codes, with the scales applied afterwards.
//!
//! Weight-only formats (int4, int8, int3, int6, MXFP4, NVFP4 with their
//! group, channel or block scales, symmetric or with zero points) need no
//! rule: the dequantization is an elementwise prologue that the fusion rules
//! place in the contraction's main loop, and the packing rule of
//! `layout.rs` gives the codes the layout the kernel reads. The rules here
//! change the arithmetic:
//!
//! - **W8A8 int8**: with per-row (per-token) scales on the activations and
//!   per-column scales on the weights, `(qa sa) @ (qb sb) = sa (qa @ qb) sb`
//!   (per-token scales: one per row of a 2-D operand, or one group spanning
//!   the whole last axis for any rank, as `act i8` declarations make)
//!   with the codes multiplied exactly in i32 (int8 tensor cores).
//! - **fp8 e4m3**: the same with per-tensor scales, or per-token and
//!   per-channel ones, the codes multiplied in the activation type (fp8
//!   tensor cores, f32 accumulation).
//! - **group scales after partial sums**: `x @ (q s)` with a scale per group
//!   of `G` rows of `q` equals `sum_g s_g (x_g @ q_g)`: the scale is applied
//!   once per group's partial sum instead of once per weight element.
//!
//! Each rule is exact on real numbers; the results differ from the
//! dequantize-then-multiply form only by rounding (the right-hand sides
//! round once where the left rounds every dequantized element), which the
//! rule tests bound.

use kiln_dialect::ops::Op;
use kiln_dialect::quant::{Granularity, QuantScheme};
use kiln_dialect::{DType, Dim, TensorType};

use super::{Rhs, Rule};
use crate::egraph::analysis::KGraph;
use crate::egraph::lang::{Head, KNode};

/// The quantization family.
pub static RULES: &[Rule] = &[
    // dq(qa, sa) @ dq(qb, sb) = cast(cast(qa, i32) @ cast(qb, i32)) * sa * sb for i8 codes, per-row (token) sa, per-column sb
    Rule {
        name: "w8a8-int8-matmul",
        identity: "dq(qa,sa) @ dq(qb,sb) = (qa @ qb in i32) * sa * sb",
        apply: w8a8_int8,
    },
    // dq(qa, sa) @ dq(qb, sb) = (cast(qa) @ cast(qb)) * sa * sb for fp8 codes, per-tensor or per-row sa and per-column sb
    Rule {
        name: "fp8-matmul",
        identity: "dq(qa,sa) @ dq(qb,sb) = (qa @ qb) * sa * sb (fp8)",
        apply: fp8,
    },
    // x @ dq(q, s) = sum_g s_g * (x_g @ q_g) for a symmetric group scheme along the contraction axis
    Rule {
        name: "group-scale-after-sums",
        identity: "x @ (q * s) = sum_g (x_g @ q_g) * s_g",
        apply: group_scale_after_sums,
    },
];

fn op<'a>(eg: &'a KGraph, n: &KNode) -> Option<&'a Op> {
    match n.head {
        Head::Op(id) => Some(&eg.analysis.ops.get(id).op),
        Head::Mat => None,
    }
}

/// A dequantize node of the class: (codes, scale, scheme, result dtype).
fn dequantized(eg: &KGraph, c: egg::Id) -> Option<(egg::Id, egg::Id, QuantScheme, DType)> {
    eg[c].nodes.iter().find_map(|n| {
        let Op::Dequantize { dtype } = op(eg, n)? else {
            return None;
        };
        let q = n.args[0];
        let scheme = eg[q].data.ty.quant.clone()?;
        (scheme.zero.is_none() && scheme.global.is_none() && n.args.len() == 2)
            .then(|| (q, n.args[1], scheme, *dtype))
    })
}

fn ty(eg: &KGraph, c: egg::Id) -> &TensorType {
    &eg[c].data.ty
}

/// The contraction size of a 2-D `a @ b`, if static.
fn k_of(eg: &KGraph, a: egg::Id) -> Option<u64> {
    ty(eg, a).shape.dims().last()?.as_static()
}

fn w8a8_int8(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let Op::Matmul {
        transpose_a: false,
        transpose_b: false,
    } = op(eg, n)?
    else {
        return None;
    };
    let (qa, sa, ska, da) = dequantized(eg, n.args[0])?;
    let (qb, sb, skb, db) = dequantized(eg, n.args[1])?;
    let (ta, tb) = (ty(eg, qa), ty(eg, qb));
    if ta.dtype != DType::I8 || tb.dtype != DType::I8 || da != db || tb.rank() != 2 {
        return None;
    }
    // |sum| <= K * 127 * 128 stays inside i32 for K up to 2^17
    if !row_scales(ta, &ska) || !column_scales(&skb) || k_of(eg, qa)? > 1 << 17 {
        return None;
    }
    let int = Rhs::Op(
        Op::Matmul {
            transpose_a: false,
            transpose_b: false,
        },
        vec![
            Rhs::op(Op::Cast { dtype: DType::I32 }, &[qa]),
            Rhs::op(Op::Cast { dtype: DType::I32 }, &[qb]),
        ],
    );
    let acc = Rhs::Op(Op::Cast { dtype: da }, vec![int]);
    Some(scale_result(eg, acc, (sa, &ska, ta), sb, da))
}

/// Whether activation scales of `scheme` over codes `t` (rank 2 or more,
/// contracted along the last axis) are one per row or one per tensor: the
/// scale factors out of each row's sums.
fn row_scales(t: &TensorType, scheme: &QuantScheme) -> bool {
    let r = t.rank();
    r >= 2
        && match scheme.granularity {
            Granularity::PerTensor => true,
            // a 2-D tensor's rows
            Granularity::PerChannel { axis } => r == 2 && axis == 0,
            // the whole last axis in one group: per token for any rank
            Granularity::Group { size, axis } => {
                axis == r - 1 && t.shape.dims()[axis].as_static() == Some(size)
            }
            Granularity::Block { .. } => false,
        }
}

/// Whether weight scales of `scheme` over 2-D codes `[k, n]` are one per
/// column (output channel) or one per tensor.
fn column_scales(scheme: &QuantScheme) -> bool {
    matches!(
        scheme.granularity,
        Granularity::PerTensor | Granularity::PerChannel { axis: 1 }
    )
}

/// `acc * sa * sb` in `da`: `sa` shaped to broadcast over the rows of the
/// result (per-channel row scales `[m]` become `[m, 1]`; group scales
/// already are `[.., m, 1]`), `sb` over its columns.
fn scale_result(
    eg: &KGraph,
    acc: Rhs,
    (sa, ska, ta): (egg::Id, &QuantScheme, &TensorType),
    sb: egg::Id,
    da: DType,
) -> Rhs {
    let sa_col = match ska.granularity {
        Granularity::PerChannel { .. } => Rhs::op(
            Op::Reshape {
                shape: vec![ta.shape.dims()[0].clone(), Dim::Static(1)],
            },
            &[sa],
        ),
        Granularity::PerTensor | Granularity::Group { .. } | Granularity::Block { .. } => {
            Rhs::Class(sa)
        }
    };
    let scaled = Rhs::Op(
        Op::Mul,
        vec![acc, cast_to(sa_col, eg[sa].data.ty.dtype, da)],
    );
    Rhs::Op(
        Op::Mul,
        vec![scaled, cast_to(Rhs::Class(sb), eg[sb].data.ty.dtype, da)],
    )
}

fn cast_to(x: Rhs, from: DType, to: DType) -> Rhs {
    if from == to {
        x
    } else {
        Rhs::Op(Op::Cast { dtype: to }, vec![x])
    }
}

fn fp8(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let mm @ Op::Matmul { .. } = op(eg, n)? else {
        return None;
    };
    let (qa, sa, ska, da) = dequantized(eg, n.args[0])?;
    let (qb, sb, skb, db) = dequantized(eg, n.args[1])?;
    let fp8 = |d: DType| matches!(d, DType::F8E4M3 | DType::F8E5M2);
    if !fp8(ty(eg, qa).dtype) || !fp8(ty(eg, qb).dtype) || da != db || !da.is_float() {
        return None;
    }
    let prod = Rhs::Op(
        mm.clone(),
        vec![
            Rhs::op(Op::Cast { dtype: da }, &[qa]),
            Rhs::op(Op::Cast { dtype: da }, &[qb]),
        ],
    );
    if ska.granularity == Granularity::PerTensor && skb.granularity == Granularity::PerTensor {
        let s = Rhs::Op(
            Op::Mul,
            vec![
                cast_to(Rhs::Class(sa), eg[sa].data.ty.dtype, da),
                cast_to(Rhs::Class(sb), eg[sb].data.ty.dtype, da),
            ],
        );
        return Some(Rhs::Op(Op::Mul, vec![prod, s]));
    }
    // per-token activation and per-channel weight scales (fp8 W8A8)
    let Op::Matmul {
        transpose_a: false,
        transpose_b: false,
    } = mm
    else {
        return None;
    };
    let ta = ty(eg, qa);
    if ty(eg, qb).rank() != 2 || !row_scales(ta, &ska) || !column_scales(&skb) {
        return None;
    }
    Some(scale_result(eg, prod, (sa, &ska, ta), sb, da))
}

fn group_scale_after_sums(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let Op::Matmul {
        transpose_a: false,
        transpose_b: false,
    } = op(eg, n)?
    else {
        return None;
    };
    let x = n.args[0];
    let (q, s, scheme, dt) = dequantized(eg, n.args[1])?;
    let Granularity::Group { size, axis: 0 } = scheme.granularity else {
        return None;
    };
    let (tx, tq) = (ty(eg, x), ty(eg, q));
    if tx.rank() != 2 || tq.rank() != 2 || tx.dtype != dt {
        return None;
    }
    let k = tq.shape.dims()[0].as_static()?;
    let groups = k / size;
    let (m, nn) = (tx.shape.dims()[0].clone(), tq.shape.dims()[1].clone());
    let g = Dim::Static(groups);
    let gs = Dim::Static(size);
    // x [M, K] -> [M, K/G, G] -> [K/G, M, G]
    let xg = Rhs::Op(
        Op::Transpose {
            perm: vec![1, 0, 2],
        },
        vec![Rhs::op(
            Op::Reshape {
                shape: vec![m, g.clone(), gs.clone()],
            },
            &[x],
        )],
    );
    // q [K, N] -> codes as values -> [K/G, G, N]
    let qg = Rhs::Op(
        Op::Reshape {
            shape: vec![g.clone(), gs, nn.clone()],
        },
        vec![Rhs::op(Op::Cast { dtype: dt }, &[q])],
    );
    // partial sums [K/G, M, N], scaled per group, summed over the groups
    let partial = Rhs::Op(
        Op::Matmul {
            transpose_a: false,
            transpose_b: false,
        },
        vec![xg, qg],
    );
    let sg = Rhs::Op(
        Op::Reshape {
            shape: vec![g, Dim::Static(1), nn],
        },
        vec![cast_to(Rhs::Class(s), eg[s].data.ty.dtype, dt)],
    );
    let scaled = Rhs::Op(Op::Mul, vec![partial, sg]);
    Some(Rhs::Op(
        Op::ReduceSum {
            axes: vec![0],
            keepdim: false,
        },
        vec![scaled],
    ))
}
