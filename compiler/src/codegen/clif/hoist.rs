//! Loop-invariance analysis: the variables an expression depends on, and the
//! keys under which equal sub-expressions are emitted once.

use std::collections::BTreeSet;

use kiln_dialect::kernel::{Expr, Var};

/// A pseudo-variable for [`Expr::Acc`]: the accumulator changes with every
/// output element, so nothing that reads it is hoisted.
pub(super) const ACC: Var = Var(u32::MAX);

/// The variables `e` reads that it does not bind itself (a reduction binds
/// its own variable in its body).
pub(super) fn free_vars(e: &Expr) -> BTreeSet<Var> {
    let mut out = BTreeSet::new();
    collect(e, &mut out);
    out
}

fn collect(e: &Expr, out: &mut BTreeSet<Var>) {
    match e {
        Expr::Var(v) => {
            out.insert(*v);
        }
        Expr::Acc => {
            out.insert(ACC);
        }
        Expr::Reduce {
            var, extent, body, ..
        } => {
            collect(extent, out);
            let mut inner = BTreeSet::new();
            collect(body, &mut inner);
            inner.remove(var);
            out.extend(inner);
        }
        _ => e.for_each_child(|c| collect(c, out)),
    }
}

/// Whether `e` is a leaf: never worth hoisting on its own.
pub(super) fn is_leaf(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Float(_) | Expr::Int(_) | Expr::Bool(_) | Expr::Var(_) | Expr::Dim(_) | Expr::Acc
    )
}

/// The maximal sub-expressions of `e` that depend only on `bound` and are
/// safe to evaluate unconditionally: what a loop's preheader computes once.
/// Inside the index of a guarded load (evaluated only where its guard
/// holds) only load-free integer arithmetic qualifies, which cannot fault
/// (integer division never traps), never a load (it could read outside its
/// tensor where the guard fails).
pub(super) fn invariants<'e>(e: &'e Expr, bound: &BTreeSet<Var>, out: &mut Vec<&'e Expr>) {
    if is_leaf(e) {
        return;
    }
    if free_vars(e).is_subset(bound) {
        out.push(e);
        return;
    }
    match e {
        Expr::Load {
            index,
            guard: Some(g),
            ..
        } => {
            invariants(g, bound, out);
            for i in index {
                load_free_invariants(i, bound, out);
            }
        }
        _ => {
            for c in children(e) {
                invariants(c, bound, out);
            }
        }
    }
}

/// [`invariants`] restricted to sub-expressions that read no tensor.
fn load_free_invariants<'e>(e: &'e Expr, bound: &BTreeSet<Var>, out: &mut Vec<&'e Expr>) {
    if is_leaf(e) {
        return;
    }
    if free_vars(e).is_subset(bound) && !has_load(e) {
        out.push(e);
        return;
    }
    for c in children(e) {
        load_free_invariants(c, bound, out);
    }
}

/// Whether `e` reads a tensor.
fn has_load(e: &Expr) -> bool {
    let mut found = matches!(e, Expr::Load { .. });
    e.for_each_child(|c| found = found || has_load(c));
    found
}

/// The direct sub-expressions of `e`.
pub(super) fn children(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::Float(_) | Expr::Int(_) | Expr::Bool(_) | Expr::Var(_) | Expr::Dim(_) | Expr::Acc => {
            vec![]
        }
        Expr::Load { index, guard, .. } => index.iter().chain(guard.as_deref()).collect(),
        Expr::Unary(_, x) | Expr::Cast(_, x) | Expr::Round(_, x) => vec![x],
        Expr::Binary(_, a, b) => vec![a, b],
        Expr::Select(c, a, b) => vec![c, a, b],
        Expr::Reduce { extent, body, .. } => vec![extent, body],
    }
}

/// The key equal sub-expressions share (the text form is exact: floats
/// print in full).
pub(super) fn key(e: &Expr) -> String {
    e.to_string()
}
