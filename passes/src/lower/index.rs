//! Index arithmetic: broadcasting, row-major flattening and unflattening.

use kiln_dialect::kernel::Expr;
use kiln_dialect::shape::Dim;

use super::cx::Cx;
use super::ex;

/// The index into an operand of shape `from` that NumPy broadcasting reads
/// at index `idx` of the (larger or equal rank) result: trailing axes
/// aligned, size-1 axes read at 0.
pub fn broadcast(idx: &[Expr], from: &[Dim]) -> Vec<Expr> {
    let off = idx.len().saturating_sub(from.len());
    from.iter()
        .enumerate()
        .map(|(i, d)| {
            if *d == Dim::Static(1) {
                ex::int(0)
            } else {
                idx[off + i].clone()
            }
        })
        .collect()
}

/// The row-major flat offset of `idx` in a tensor with axis sizes `dims`.
pub fn flatten(idx: &[Expr], dims: &[Expr]) -> Expr {
    idx.iter().zip(dims).fold(ex::int(0), |acc, (i, n)| {
        ex::add(ex::mul(acc, n.clone()), i.clone())
    })
}

/// The multi-index of a row-major flat offset in a tensor with axis sizes
/// `dims`.
pub fn unflatten(flat: Expr, dims: &[Expr]) -> Vec<Expr> {
    let mut out = vec![ex::int(0); dims.len()];
    let mut rest = flat;
    for a in (0..dims.len()).rev() {
        if a == 0 {
            out[a] = rest.clone();
        } else {
            out[a] = ex::rem(rest.clone(), dims[a].clone());
            rest = ex::div(rest, dims[a].clone());
        }
    }
    out
}

/// Maps an index of a result with sizes `to` onto a tensor of the same
/// elements with sizes `from` (a reshape): through the flat offset, or
/// directly when the shapes are equal.
pub fn reshape(cx: &mut Cx, idx: &[Expr], to: &[Dim], from: &[Dim]) -> Vec<Expr> {
    if to == from {
        return idx.to_vec();
    }
    let to_sizes: Vec<Expr> = to.iter().map(|d| cx.dim(d)).collect();
    let from_sizes: Vec<Expr> = from.iter().map(|d| cx.dim(d)).collect();
    // Axes of size 1 carry no information: drop them on both sides first, so
    // an unsqueeze-like reshape maps axes directly.
    let keep_to: Vec<usize> = (0..to.len()).filter(|&i| to[i] != Dim::Static(1)).collect();
    let keep_from: Vec<usize> = (0..from.len())
        .filter(|&i| from[i] != Dim::Static(1))
        .collect();
    let same = keep_to.len() == keep_from.len()
        && keep_to
            .iter()
            .zip(&keep_from)
            .all(|(&a, &b)| to[a] == from[b]);
    if same {
        let mut out = vec![ex::int(0); from.len()];
        for (&a, &b) in keep_to.iter().zip(&keep_from) {
            out[b] = idx[a].clone();
        }
        return out;
    }
    let flat = flatten(idx, &to_sizes);
    unflatten(flat, &from_sizes)
}
