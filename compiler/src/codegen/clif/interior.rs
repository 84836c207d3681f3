//! Rewrites that make a vectorized map kernel's row cheaper: small
//! reductions unrolled into the expression, guards dropped inside the
//! interior of a row, and lane-invariant operands broadcast once per row.
//!
//! * [`unroll`]: a `sum`, `max` or `min` whose body depends on the lane and
//!   whose extents are static and small (nested ones flattened, at most
//!   [`MAX_TERMS`] terms in all) becomes a chain of its terms with the
//!   variables replaced by their values. The taps' weights of a depthwise
//!   convolution then no longer depend on any reduction variable, so the
//!   loop nest computes them once per channel, and each `add(chain,
//!   mul(x, w))` of a flattened sum is emitted as one fused multiply-add
//!   (the keys are returned). A sum then adds its terms in one chain, not
//!   nested per axis, starting from the first term (no `0 +`); a sum of
//!   products in up to four chains of consecutive terms (three chains of
//!   three taps for a 3x3 window) added by a balanced tree, so that the
//!   multiply-adds do not wait for each other: another order and rounding
//!   than the evaluator's, within f32 sum tolerances.
//! * [`interior`]: the guards of a row's vector loads that are `and` trees
//!   of row-invariant bools and comparisons monotone in the lane
//!   (`lane + c < bound`, ...). Each comparison holds on an interval of
//!   the lane computed once per row, so a row runs its border vectors with
//!   the guards and the vectors in between without them.
//! * [`splat_candidates`]: the lane-invariant float operands of the
//!   vector code, broadcast to `f32x4` once per row instead of at every
//!   use.

use std::collections::{BTreeSet, HashSet};

use kiln_dialect::kernel::{Binary, Expr, Reduction, Var};

use super::expr::{Emitter, T};
use super::hoist::{children, free_vars, key};

/// The most terms a reduction is unrolled into.
pub(super) const MAX_TERMS: usize = 32;
/// The fewest terms per chain of an unrolled sum of products, and the
/// most chains.
const CHAIN: usize = 3;
const MAX_CHAINS: usize = 4;

/// Whether `e` depends on `lane`.
fn depends(e: &Expr, lane: Var) -> bool {
    free_vars(e).contains(&lane)
}

/// `e` with `var` replaced by the integer `j` (not inside a reduction that
/// binds `var` again), integer arithmetic on constants folded.
fn bind(e: &Expr, var: Var, j: i64) -> Expr {
    let e = e.substitute(&|x| match x {
        Expr::Var(w) if *w == var => Some(Expr::Int(j)),
        Expr::Reduce { var: w, .. } if *w == var => Some(x.clone()),
        _ => None,
    });
    fold(&e)
}

/// Folds `add`, `sub` and `mul` of integer constants and drops `+ 0`,
/// `- 0` and `* 1` (i64 arithmetic wraps, as the evaluator's).
fn fold(e: &Expr) -> Expr {
    match e {
        Expr::Binary(op @ (Binary::Add | Binary::Sub | Binary::Mul), a, b) => {
            let (a, b) = (fold(a), fold(b));
            match (op, &a, &b) {
                (Binary::Add, Expr::Int(x), Expr::Int(y)) => Expr::Int(x.wrapping_add(*y)),
                (Binary::Sub, Expr::Int(x), Expr::Int(y)) => Expr::Int(x.wrapping_sub(*y)),
                (Binary::Mul, Expr::Int(x), Expr::Int(y)) => Expr::Int(x.wrapping_mul(*y)),
                (Binary::Add | Binary::Sub, _, Expr::Int(0)) => a,
                (Binary::Add, Expr::Int(0), _) => b,
                (Binary::Mul, _, Expr::Int(1)) => a,
                (Binary::Mul, Expr::Int(1), _) => b,
                _ => Expr::bin(*op, a, b),
            }
        }
        _ => map_children(e, &mut fold),
    }
}

/// `e` with each direct sub-expression replaced by `f` of it.
fn map_children(e: &Expr, f: &mut dyn FnMut(&Expr) -> Expr) -> Expr {
    let mut g = |x: &Expr| Box::new(f(x));
    match e {
        Expr::Float(_) | Expr::Int(_) | Expr::Bool(_) | Expr::Var(_) | Expr::Dim(_) | Expr::Acc => {
            e.clone()
        }
        Expr::Load {
            input,
            index,
            guard,
        } => Expr::Load {
            input: *input,
            index: index.iter().map(|i| *g(i)).collect(),
            guard: guard.as_deref().map(&mut g),
        },
        Expr::Unary(op, x) => Expr::Unary(*op, g(x)),
        Expr::Binary(op, a, b) => {
            let a = g(a);
            Expr::Binary(*op, a, g(b))
        }
        Expr::Select(c, a, b) => {
            let c = g(c);
            let a = g(a);
            Expr::Select(c, a, g(b))
        }
        Expr::Cast(t, x) => Expr::Cast(*t, g(x)),
        Expr::Round(d, x) => Expr::Round(*d, g(x)),
        Expr::Reduce {
            op,
            var,
            extent,
            body,
        } => {
            let extent = g(extent);
            Expr::Reduce {
                op: *op,
                var: *var,
                extent,
                body: g(body),
            }
        }
    }
}

/// The terms of the reduction `e` (of kind `op`, body depending on `lane`,
/// static extent of at least 1), nested reductions of the same kind
/// flattened, each term unrolled in turn; `None` past [`MAX_TERMS`].
fn terms(e: &Expr, op: Reduction, lane: Var, fused: &mut HashSet<String>) -> Option<Vec<Expr>> {
    let Expr::Reduce {
        op: o,
        var,
        extent,
        body,
    } = e
    else {
        return None;
    };
    let Expr::Int(m) = **extent else {
        return None;
    };
    if *o != op || !(1..=MAX_TERMS as i64).contains(&m) || !depends(body, lane) {
        return None;
    }
    let mut out = Vec::new();
    for j in 0..m {
        let b = bind(body, *var, j);
        match terms(&b, op, lane, fused) {
            Some(t) => out.extend(t),
            None => out.push(unroll_in(&b, lane, fused)),
        }
        if out.len() > MAX_TERMS {
            return None;
        }
    }
    Some(out)
}

fn unroll_in(e: &Expr, lane: Var, fused: &mut HashSet<String>) -> Expr {
    if let Expr::Reduce { op, .. } = e
        && matches!(op, Reduction::Sum | Reduction::Max | Reduction::Min)
        && let Some(ts) = terms(e, *op, lane, fused)
    {
        let bop = match op {
            Reduction::Sum => Binary::Add,
            Reduction::Prod => Binary::Mul,
            Reduction::Max => Binary::Max,
            Reduction::Min => Binary::Min,
        };
        // A sum of products (multiply-adds, rounded otherwise than the
        // evaluator's sum anyway) runs as independent chains of
        // consecutive terms added by a balanced tree, so the multiply-adds
        // overlap instead of each waiting for the previous one: a 3x3
        // window's nine taps are three chains of three. Other folds keep
        // one chain in the evaluator's order (exact for `max`, `min` and
        // sums of plain terms).
        let products = *op == Reduction::Sum
            && ts
                .iter()
                .all(|t| matches!(t, Expr::Binary(Binary::Mul, ..)));
        let chains = if products {
            ts.len().div_ceil(CHAIN).min(MAX_CHAINS)
        } else {
            1
        };
        let per = ts.len().div_ceil(chains);
        let mut partial: Vec<Expr> = Vec::new();
        for run in ts.chunks(per) {
            let mut it = run.iter().cloned();
            let mut acc = it.next().expect("at least one term");
            for t in it {
                let is_mul = matches!(t, Expr::Binary(Binary::Mul, ..));
                acc = Expr::bin(bop, acc, t);
                if *op == Reduction::Sum && is_mul {
                    fused.insert(key(&acc));
                }
            }
            partial.push(acc);
        }
        while partial.len() > 1 {
            let mut next = Vec::with_capacity(partial.len().div_ceil(2));
            let mut it = partial.into_iter();
            while let Some(x) = it.next() {
                next.push(match it.next() {
                    Some(y) => Expr::bin(bop, x, y),
                    None => x,
                });
            }
            partial = next;
        }
        return partial.pop().expect("at least one chain");
    }
    if let Expr::Load { .. } = e {
        return e.clone();
    }
    map_children(e, &mut |x| unroll_in(x, lane, fused))
}

/// `e` with its small static lane-dependent reductions unrolled (see the
/// module doc), and the keys of the `add` nodes to emit as fused
/// multiply-adds.
pub(super) fn unroll(e: &Expr, lane: Var) -> (Expr, HashSet<String>) {
    let mut fused = HashSet::new();
    let r = unroll_in(e, lane, &mut fused);
    (r, fused)
}

/// A condition on a row's lane, bounds computed once per row.
#[derive(Clone, Debug)]
pub(super) enum Cond {
    /// A row-invariant bool.
    Inv(Expr),
    /// `x < bound + k`, `x` the lane plus a row invariant.
    Below(Expr, Expr, i64),
    /// `x >= bound + k`, `x` the lane plus a row invariant.
    AtLeast(Expr, Expr, i64),
}

/// The interior form of a map expression: the expression with the
/// analyzed guards dropped, and the conditions under which four lanes
/// may run it.
#[derive(Clone, Debug)]
pub(super) struct Interior {
    pub fast: Expr,
    pub conds: Vec<Cond>,
}

/// Adds to `fused` the keys in `fast` of the nodes whose keys in `slow`
/// are there: `fast` is `slow` with some guards dropped (same tree
/// otherwise).
pub(super) fn fused_keys(slow: &Expr, fast: &Expr, fused: &mut HashSet<String>) {
    if fused.contains(&key(slow)) {
        fused.insert(key(fast));
    }
    let (a, b) = (children(slow), children(fast));
    if a.len() == b.len() {
        for (x, y) in a.into_iter().zip(b) {
            fused_keys(x, y, fused);
        }
    }
}

/// Whether `x` is an integer expression of the `outer` variables only.
fn row_int(em: &Emitter, x: &Expr, outer: &BTreeSet<Var>) -> bool {
    free_vars(x).is_subset(outer) && em.type_of(x).ok() == Some(T::I)
}

/// `x op y` as `x < y + k` (`true`, `k`) or `x >= y + k` (`false`, `k`),
/// for the order comparisons.
fn bound_form(op: Binary) -> Option<(bool, i64)> {
    match op {
        Binary::Lt => Some((true, 0)),
        Binary::Le => Some((true, 1)),
        Binary::Gt => Some((false, 1)),
        Binary::Ge => Some((false, 0)),
        Binary::Add
        | Binary::Sub
        | Binary::Mul
        | Binary::Div
        | Binary::Rem
        | Binary::Pow
        | Binary::Max
        | Binary::Min
        | Binary::Eq
        | Binary::Ne
        | Binary::And
        | Binary::Or => None,
    }
}

/// The comparison `op'` with `y op x` equivalent to `x op' y`.
fn mirror(op: Binary) -> Option<Binary> {
    match op {
        Binary::Lt => Some(Binary::Gt),
        Binary::Le => Some(Binary::Ge),
        Binary::Gt => Some(Binary::Lt),
        Binary::Ge => Some(Binary::Le),
        Binary::Add
        | Binary::Sub
        | Binary::Mul
        | Binary::Div
        | Binary::Rem
        | Binary::Pow
        | Binary::Max
        | Binary::Min
        | Binary::Eq
        | Binary::Ne
        | Binary::And
        | Binary::Or => None,
    }
}

/// The conjuncts of `g` as [`Cond`]s, or `None` when one is not of the
/// analyzable forms.
fn conds_of(
    em: &Emitter,
    g: &Expr,
    lane: Var,
    outer: &BTreeSet<Var>,
    unit_affine: &dyn Fn(&Expr) -> bool,
    out: &mut Vec<Cond>,
) -> Option<()> {
    if free_vars(g).is_subset(outer) {
        if em.type_of(g).ok() != Some(T::B) {
            return None;
        }
        out.push(Cond::Inv(g.clone()));
        return Some(());
    }
    let Expr::Binary(op, a, b) = g else {
        return None;
    };
    let lane_side =
        |x: &Expr| unit_affine(x) && free_vars(x).iter().all(|v| *v == lane || outer.contains(v));
    match op {
        Binary::And => {
            conds_of(em, a, lane, outer, unit_affine, out)?;
            conds_of(em, b, lane, outer, unit_affine, out)
        }
        Binary::Lt | Binary::Le | Binary::Gt | Binary::Ge => {
            let (x, y, op) = if lane_side(a) && row_int(em, b, outer) {
                (a, b, *op)
            } else if lane_side(b) && row_int(em, a, outer) {
                // `y cmp x` with the lane on the right: `x cmp' y`.
                (b, a, mirror(*op)?)
            } else {
                return None;
            };
            let (below, k) = bound_form(op)?;
            let (x, y) = ((**x).clone(), (**y).clone());
            let c = if below {
                Cond::Below(x, y, k)
            } else {
                Cond::AtLeast(x, y, k)
            };
            out.push(c);
            Some(())
        }
        Binary::Add
        | Binary::Sub
        | Binary::Mul
        | Binary::Div
        | Binary::Rem
        | Binary::Pow
        | Binary::Max
        | Binary::Min
        | Binary::Eq
        | Binary::Ne
        | Binary::Or => None,
    }
}

/// The interior form of `e` in `lane` with the `outer` variables bound
/// per row, or `None` when no guard of a lane-dependent load is
/// analyzable. `unit_affine` tells an integer that is the lane plus an
/// invariant.
pub(super) fn interior(
    em: &Emitter,
    e: &Expr,
    lane: Var,
    outer: &BTreeSet<Var>,
    unit_affine: &dyn Fn(&Expr) -> bool,
) -> Option<Interior> {
    let mut conds: Vec<Cond> = Vec::new();
    let mut seen = HashSet::new();
    let fast = e.substitute(&|x| {
        let Expr::Load {
            input,
            index,
            guard: Some(g),
        } = x
        else {
            return None;
        };
        if !depends(x, lane) {
            return None;
        }
        let mut cs = Vec::new();
        conds_of(em, g, lane, outer, unit_affine, &mut cs)?;
        Some(Expr::Load {
            input: *input,
            index: index.clone(),
            guard: None,
        })
    });
    if fast == *e {
        return None;
    }
    // The conditions of every dropped guard (walked again: `substitute`
    // takes a `Fn`).
    collect_conds(em, e, lane, outer, unit_affine, &mut conds, &mut seen);
    Some(Interior { fast, conds })
}

fn collect_conds(
    em: &Emitter,
    e: &Expr,
    lane: Var,
    outer: &BTreeSet<Var>,
    unit_affine: &dyn Fn(&Expr) -> bool,
    conds: &mut Vec<Cond>,
    seen: &mut HashSet<String>,
) {
    if let Expr::Load { guard: Some(g), .. } = e
        && depends(e, lane)
    {
        let mut cs = Vec::new();
        if conds_of(em, g, lane, outer, unit_affine, &mut cs).is_some() {
            for c in cs {
                let k = match &c {
                    Cond::Inv(x) => key(x),
                    Cond::Below(a, b, k) => format!("{a} < {b} + {k}"),
                    Cond::AtLeast(a, b, k) => format!("{a} >= {b} + {k}"),
                };
                if seen.insert(k) {
                    conds.push(c);
                }
            }
        }
        return;
    }
    e.for_each_child(|c| collect_conds(em, c, lane, outer, unit_affine, conds, seen));
}

/// The maximal sub-expressions of `e` that do not depend on `lane`, read
/// only `outer` variables and are floats, outside load indices and
/// guards: what the vector code splats.
pub(super) fn splat_candidates<'e>(
    em: &Emitter,
    e: &'e Expr,
    lane: Var,
    outer: &BTreeSet<Var>,
    out: &mut Vec<&'e Expr>,
) {
    if !depends(e, lane) {
        if free_vars(e).is_subset(outer) && em.type_of(e).ok() == Some(T::F) {
            out.push(e);
        }
        return;
    }
    match e {
        Expr::Load { .. } => {}
        _ => {
            for c in children(e) {
                splat_candidates(em, c, lane, outer, out);
            }
        }
    }
}
