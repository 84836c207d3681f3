//! Algebra: cancellation and sinking of data movement, broadcast folding,
//! identities, scale folding into contractions, conv + batch-norm folding.
//!
//! Each rule is exact on real numbers; where floating-point rounding can
//! differ (reassociating a scale), the rule's test states the tolerance.

use egg::Id;
use kiln_dialect::ops::{Op, OpClass};
use kiln_dialect::{Dim, TensorType};

use super::{Rhs, Rule};
use crate::egraph::analysis::KGraph;
use crate::egraph::lang::{Head, KNode};

/// The algebra family.
pub static RULES: &[Rule] = &[
    // transpose(transpose(x, p), q) = transpose(x, p∘q), or x when that is the identity
    Rule {
        name: "transpose-transpose",
        identity: "transpose(transpose(x, p), q) = transpose(x, [p[q[i]]])",
        apply: transpose_transpose,
    },
    // transpose(x, [0, 1, ..., n-1]) = x
    Rule {
        name: "transpose-identity",
        identity: "transpose(x, identity) = x",
        apply: transpose_identity,
    },
    // reshape(reshape(x, s1), s2) = reshape(x, s2)
    Rule {
        name: "reshape-reshape",
        identity: "reshape(reshape(x, s1), s2) = reshape(x, s2)",
        apply: reshape_reshape,
    },
    // reshape, squeeze, unsqueeze or expand to x's own shape = x
    Rule {
        name: "view-identity",
        identity: "reshape/squeeze/unsqueeze/expand(x) = x when the shape is unchanged",
        apply: view_identity,
    },
    // f(transpose(x, p)) = transpose(f(x), p) for elementwise unary f: transposes sink toward the outputs, where they meet and cancel
    Rule {
        name: "unary-transpose-sink",
        identity: "f(transpose(x, p)) = transpose(f(x), p)",
        apply: unary_transpose_sink,
    },
    // f(transpose(a, p), transpose(b, p)) = transpose(f(a, b), p) for elementwise binary f
    Rule {
        name: "binary-transpose-sink",
        identity: "f(transpose(a, p), transpose(b, p)) = transpose(f(a, b), p)",
        apply: binary_transpose_sink,
    },
    // f(expand(a), b) = f(a, b) when f broadcasts to the same result
    Rule {
        name: "broadcast-fold",
        identity: "f(expand(a, s), b) = f(a, b) when the result type is unchanged",
        apply: broadcast_fold,
    },
    // x * 1 = x, 1 * x = x
    Rule {
        name: "mul-one",
        identity: "x * 1 = x",
        apply: mul_one,
    },
    // x / 1 = x
    Rule {
        name: "div-one",
        identity: "x / 1 = x",
        apply: div_one,
    },
    // x + 0 = x, 0 + x = x, x - 0 = x (values equal; the sign of a zero result may differ)
    Rule {
        name: "add-zero",
        identity: "x + 0 = x, x - 0 = x",
        apply: add_zero,
    },
    // x - x = 0 for integers (not floats: inf - inf is NaN)
    Rule {
        name: "sub-self-int",
        identity: "x - x = 0 (integers)",
        apply: sub_self_int,
    },
    // -(-x) = x
    Rule {
        name: "neg-neg",
        identity: "-(-x) = x",
        apply: neg_neg,
    },
    // (a * s) @ b = (a @ b) * s for a scalar s: the scale is applied M*N times instead of M*K
    Rule {
        name: "matmul-scale-out",
        identity: "(a * s) @ b = (a @ b) * s, a @ (b * s) = (a @ b) * s (s scalar)",
        apply: matmul_scale_out,
    },
    // (x @ w) * s = x @ (w * s) when w and s are weights and s scales output columns: folded when weights are bound
    Rule {
        name: "scale-into-weight",
        identity: "(x @ w) * s = x @ (w * s) (w, s weights; s per column)",
        apply: scale_into_weight,
    },
    // batch_norm(conv2d(x, w, b)) = conv2d(x, w * f, (b - mean) * f + bias), f = scale / sqrt(var + eps)
    Rule {
        name: "conv-batchnorm-fold",
        identity: "bn(conv(x, w, b)) = conv(x, w*f, (b-mean)*f + beta), f = gamma/sqrt(var+eps)",
        apply: conv_batchnorm_fold,
    },
    // softmax(q @ k^T * s [+ mask]) @ v = attention(q, k, v [, mask]) {scale = s}: decomposed attention (an imported graph) as the one fused op
    Rule {
        name: "attention-pattern",
        identity: "softmax(q @ kT * s + mask) @ v = attention(q, k, v, mask) {scale = s}",
        apply: attention_pattern,
    },
];

// ---- helpers ---------------------------------------------------------------

fn op<'a>(eg: &'a KGraph, n: &KNode) -> Option<&'a Op> {
    match n.head {
        Head::Op(id) => Some(&eg.analysis.ops.get(id).op),
        Head::Mat => None,
    }
}

/// The nodes of a class with their ops.
fn ops_in<'a>(eg: &'a KGraph, c: Id) -> impl Iterator<Item = (&'a Op, &'a KNode)> + 'a {
    eg[c]
        .nodes
        .iter()
        .filter_map(move |n| op(eg, n).map(|o| (o, n)))
}

fn ty(eg: &KGraph, c: Id) -> &TensorType {
    &eg[c].data.ty
}

fn splat(eg: &KGraph, c: Id) -> Option<f64> {
    eg[c].data.splat
}

fn is_unary_elementwise(o: &Op) -> bool {
    o.class() == OpClass::Elementwise && o.spec().arity() == (1, 1)
}

fn is_binary_elementwise(o: &Op) -> bool {
    o.class() == OpClass::Elementwise && o.spec().arity() == (2, 2)
}

fn perm_of(o: &Op) -> Option<&Vec<i64>> {
    if let Op::Transpose { perm } = o {
        Some(perm)
    } else {
        None
    }
}

fn normalized_perm(p: &[i64]) -> Vec<usize> {
    let r = p.len() as i64;
    p.iter()
        .map(|&a| if a < 0 { (a + r) as usize } else { a as usize })
        .collect()
}

// ---- data movement -----------------------------------------------------------

fn transpose_transpose(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let q = normalized_perm(perm_of(op(eg, n)?)?);
    let x = n.args[0];
    ops_in(eg, x).find_map(|(o, inner)| {
        let p = normalized_perm(perm_of(o)?);
        let composed: Vec<i64> = q.iter().map(|&i| p[i] as i64).collect();
        if composed.iter().enumerate().all(|(i, &a)| a == i as i64) {
            Some(Rhs::Class(inner.args[0]))
        } else {
            Some(Rhs::op(Op::Transpose { perm: composed }, &[inner.args[0]]))
        }
    })
}

fn transpose_identity(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let p = normalized_perm(perm_of(op(eg, n)?)?);
    p.iter()
        .enumerate()
        .all(|(i, &a)| a == i)
        .then(|| Rhs::Class(n.args[0]))
}

fn reshape_reshape(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let Op::Reshape { shape } = op(eg, n)? else {
        return None;
    };
    ops_in(eg, n.args[0]).find_map(|(o, inner)| {
        let Op::Reshape { .. } = o else { return None };
        Some(Rhs::op(
            Op::Reshape {
                shape: shape.clone(),
            },
            &[inner.args[0]],
        ))
    })
}

fn view_identity(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let o = op(eg, n)?;
    let is_view = matches!(
        o,
        Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } | Op::Expand { .. }
    );
    if !is_view {
        return None;
    }
    let (out, x) = (&eg[eg.lookup(n.clone())?].data.ty, ty(eg, n.args[0]));
    (out.shape == x.shape && out.dtype == x.dtype).then(|| Rhs::Class(n.args[0]))
}

fn unary_transpose_sink(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let f = op(eg, n)?;
    if !is_unary_elementwise(f) || matches!(f, Op::Rope { .. }) {
        return None;
    }
    ops_in(eg, n.args[0]).find_map(|(o, inner)| {
        let p = perm_of(o)?;
        Some(Rhs::Op(
            Op::Transpose { perm: p.clone() },
            vec![Rhs::op(f.clone(), &[inner.args[0]])],
        ))
    })
}

fn binary_transpose_sink(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let f = op(eg, n)?;
    if !is_binary_elementwise(f) {
        return None;
    }
    let (a, b) = (n.args[0], n.args[1]);
    if ty(eg, a).shape != ty(eg, b).shape {
        return None;
    }
    ops_in(eg, a).find_map(|(oa, na)| {
        let pa = perm_of(oa)?;
        ops_in(eg, b).find_map(|(ob, nb)| {
            let pb = perm_of(ob)?;
            (normalized_perm(pa) == normalized_perm(pb)).then(|| {
                Rhs::Op(
                    Op::Transpose { perm: pa.clone() },
                    vec![Rhs::op(f.clone(), &[na.args[0], nb.args[0]])],
                )
            })
        })
    })
}

fn broadcast_fold(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let f = op(eg, n)?;
    if !is_binary_elementwise(f) {
        return None;
    }
    let out = &eg[eg.lookup(n.clone())?].data.ty;
    for side in 0..2 {
        let other = n.args[1 - side];
        let found = ops_in(eg, n.args[side]).find_map(|(o, inner)| {
            let Op::Expand { .. } = o else { return None };
            let a = inner.args[0];
            let shape = if side == 0 {
                ty(eg, a).shape.broadcast(&ty(eg, other).shape)
            } else {
                ty(eg, other).shape.broadcast(&ty(eg, a).shape)
            };
            (shape.ok()? == out.shape).then_some(a)
        });
        if let Some(a) = found {
            let args = if side == 0 { [a, other] } else { [other, a] };
            return Some(Rhs::op(f.clone(), &args));
        }
    }
    None
}

// ---- identities ----------------------------------------------------------------

/// `x` when the result of `n` has exactly `x`'s type (no broadcasting up).
fn same_type_as(eg: &KGraph, n: &KNode, x: Id) -> bool {
    eg.lookup(n.clone())
        .is_some_and(|c| eg[c].data.ty == *ty(eg, x))
}

fn mul_one(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let Op::Mul = op(eg, n)? else { return None };
    for (x, c) in [(n.args[0], n.args[1]), (n.args[1], n.args[0])] {
        if splat(eg, c) == Some(1.0) && same_type_as(eg, n, x) {
            return Some(Rhs::Class(x));
        }
    }
    None
}

fn div_one(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let Op::Div = op(eg, n)? else { return None };
    (splat(eg, n.args[1]) == Some(1.0) && same_type_as(eg, n, n.args[0]))
        .then(|| Rhs::Class(n.args[0]))
}

fn add_zero(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let o = op(eg, n)?;
    let candidates: &[(usize, usize)] = if let Op::Add = o {
        &[(0, 1), (1, 0)]
    } else if let Op::Sub = o {
        &[(0, 1)]
    } else {
        return None;
    };
    candidates
        .iter()
        .find(|&&(x, z)| splat(eg, n.args[z]) == Some(0.0) && same_type_as(eg, n, n.args[x]))
        .map(|&(x, _)| Rhs::Class(n.args[x]))
}

fn sub_self_int(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let Op::Sub = op(eg, n)? else { return None };
    let t = ty(eg, n.args[0]);
    (eg.find(n.args[0]) == eg.find(n.args[1]) && t.dtype.is_int()).then(|| {
        Rhs::Op(
            Op::Expand {
                shape: t.shape.dims().to_vec(),
            },
            vec![Rhs::Scalar(0.0, t.dtype)],
        )
    })
}

fn neg_neg(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let Op::Neg = op(eg, n)? else { return None };
    ops_in(eg, n.args[0]).find_map(|(o, inner)| {
        if let Op::Neg = o {
            Some(Rhs::Class(inner.args[0]))
        } else {
            None
        }
    })
}

// ---- contractions ---------------------------------------------------------------

/// A scalar (rank 0, or every dim 1 and not raising the rank) factor of a
/// `mul` class: (the other operand, the scalar).
fn scalar_factor(eg: &KGraph, c: Id) -> Option<(Id, Id)> {
    ops_in(eg, c).find_map(|(o, m)| {
        let Op::Mul = o else { return None };
        let (a, b) = (m.args[0], m.args[1]);
        let scalar = |s: Id, x: Id| ty(eg, s).rank() == 0 && ty(eg, x) == &eg[c].data.ty;
        if scalar(b, a) {
            Some((a, b))
        } else if scalar(a, b) {
            Some((b, a))
        } else {
            None
        }
    })
}

fn matmul_scale_out(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let mm @ Op::Matmul { .. } = op(eg, n)? else {
        return None;
    };
    if !ty(eg, n.args[0]).dtype.is_float() {
        return None;
    }
    for side in 0..2 {
        if let Some((x, s)) = scalar_factor(eg, n.args[side]) {
            let args = if side == 0 {
                [x, n.args[1]]
            } else {
                [n.args[0], x]
            };
            return Some(Rhs::Op(
                Op::Mul,
                vec![Rhs::op(mm.clone(), &args), Rhs::Class(s)],
            ));
        }
    }
    None
}

fn scale_into_weight(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let Op::Mul = op(eg, n)? else { return None };
    for (p, s) in [(n.args[0], n.args[1]), (n.args[1], n.args[0])] {
        let st = ty(eg, s);
        if !eg[s].data.weight_only || eg[p].data.weight_only || !st.dtype.is_float() {
            continue;
        }
        let found = ops_in(eg, p).find_map(|(o, m)| {
            let Op::Matmul {
                transpose_a: false,
                transpose_b: false,
            } = o
            else {
                return None;
            };
            let (x, w) = (m.args[0], m.args[1]);
            let wt = ty(eg, w);
            if !eg[w].data.weight_only || wt.rank() != 2 {
                return None;
            }
            // s must broadcast along the output columns only: [], [N] or [1, N]
            let n_dim = wt.shape.dims()[1].clone();
            let per_col = match st.shape.dims() {
                [] => true,
                [d] => *d == n_dim || *d == Dim::Static(1),
                [one, d] => *one == Dim::Static(1) && (*d == n_dim || *d == Dim::Static(1)),
                _ => false,
            };
            (per_col && same_type_as(eg, n, p)).then_some((x, w))
        });
        if let Some((x, w)) = found {
            return Some(Rhs::Op(
                Op::Matmul {
                    transpose_a: false,
                    transpose_b: false,
                },
                vec![Rhs::Class(x), Rhs::op(Op::Mul, &[w, s])],
            ));
        }
    }
    None
}

fn conv_batchnorm_fold(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let Op::BatchNorm { eps } = op(eg, n)? else {
        return None;
    };
    let (scale, bias, mean, var) = (n.args[1], n.args[2], n.args[3], n.args[4]);
    if ![scale, bias, mean, var]
        .iter()
        .all(|&c| eg[c].data.weight_only)
    {
        return None;
    }
    ops_in(eg, n.args[0]).find_map(|(o, conv)| {
        let conv_op @ Op::Conv2d { .. } = o else {
            return None;
        };
        let (x, w) = (conv.args[0], conv.args[1]);
        if !eg[w].data.weight_only || conv.args.get(2).is_some_and(|b| !eg[*b].data.weight_only) {
            return None;
        }
        let dt = ty(eg, x).dtype;
        let o_dim = ty(eg, w).shape.dims()[0].clone();
        // f = scale / sqrt(var + eps), per output channel
        let f = Rhs::Op(
            Op::Mul,
            vec![
                Rhs::Class(scale),
                Rhs::Op(
                    Op::Rsqrt,
                    vec![Rhs::Op(
                        Op::Add,
                        vec![Rhs::Class(var), Rhs::Scalar(*eps, dt)],
                    )],
                ),
            ],
        );
        let f4 = Rhs::Op(
            Op::Reshape {
                shape: vec![o_dim, Dim::Static(1), Dim::Static(1), Dim::Static(1)],
            },
            vec![f.clone()],
        );
        let w2 = Rhs::Op(Op::Mul, vec![Rhs::Class(w), f4]);
        let shifted = match conv.args.get(2) {
            Some(&b) => Rhs::Op(Op::Sub, vec![Rhs::Class(b), Rhs::Class(mean)]),
            None => Rhs::Op(Op::Neg, vec![Rhs::Class(mean)]),
        };
        let b2 = Rhs::Op(
            Op::Add,
            vec![Rhs::Op(Op::Mul, vec![shifted, f]), Rhs::Class(bias)],
        );
        Some(Rhs::Op(conv_op.clone(), vec![Rhs::Class(x), w2, b2]))
    })
}

/// `matmul(softmax(scores, axis = -1), v)` where the scores are
/// `q @ k^T` (a transposed operand or `transpose_b`), times or divided by a
/// scalar constant, plus an optional additive mask: the attention op, on
/// rank-4 `[B, H, S, D]` operands.
fn attention_pattern(eg: &KGraph, n: &KNode) -> Option<Rhs> {
    let Op::Matmul {
        transpose_a: false,
        transpose_b: false,
    } = op(eg, n)?
    else {
        return None;
    };
    let (p, v) = (n.args[0], n.args[1]);
    if ty(eg, v).rank() != 4 {
        return None;
    }
    ops_in(eg, p).find_map(|(o, sm)| {
        let Op::Softmax { axis } = o else { return None };
        if *axis != -1 && *axis != 3 {
            return None;
        }
        let scores = sm.args[0];
        // an additive mask, or none
        let mut candidates: Vec<(Id, Option<Id>)> = vec![(scores, None)];
        for (o, a) in ops_in(eg, scores) {
            if let Op::Add = o {
                candidates.push((a.args[0], Some(a.args[1])));
                candidates.push((a.args[1], Some(a.args[0])));
            }
        }
        candidates.into_iter().find_map(|(scaled, mask)| {
            if mask.is_some_and(|m| ty(eg, m).dtype != ty(eg, v).dtype) {
                return None;
            }
            // the scale: `* s` or `/ s` with a scalar constant s
            ops_in(eg, scaled).find_map(|(o, m)| {
                let scalar = |c: Id| splat(eg, c).filter(|_| ty(eg, c).rank() == 0);
                let (qk, s) = if let Op::Mul = o {
                    let (a, b) = (m.args[0], m.args[1]);
                    match scalar(b) {
                        Some(s) => (a, s),
                        None => (b, scalar(a)?),
                    }
                } else if let Op::Div = o {
                    (m.args[0], 1.0 / scalar(m.args[1])?)
                } else {
                    return None;
                };
                ops_in(eg, qk).find_map(|(o, mm)| {
                    let Op::Matmul {
                        transpose_a: false,
                        transpose_b,
                    } = o
                    else {
                        return None;
                    };
                    let (q, k) = if *transpose_b {
                        (mm.args[0], mm.args[1])
                    } else {
                        let k = ops_in(eg, mm.args[1]).find_map(|(o, t)| {
                            let Op::Transpose { perm } = o else {
                                return None;
                            };
                            (normalized_perm(perm) == [0, 1, 3, 2]).then_some(t.args[0])
                        })?;
                        (mm.args[0], k)
                    };
                    if ty(eg, q).rank() != 4 || ty(eg, k).rank() != 4 {
                        return None;
                    }
                    let mut args = vec![Rhs::Class(q), Rhs::Class(k), Rhs::Class(v)];
                    if let Some(m) = mask {
                        args.push(Rhs::Class(m));
                    }
                    Some(Rhs::Op(
                        Op::Attention {
                            causal: false,
                            scale: Some(s),
                        },
                        args,
                    ))
                })
            })
        })
    })
}
