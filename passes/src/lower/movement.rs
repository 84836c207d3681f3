//! Compute definitions of data movement: transpose, slice (negative steps
//! included), concat, gather and embedding, pad in every mode. Each maps
//! the result index to an operand index; reads whose value a select
//! discards use indices clamped into the operand.

use kiln_dialect::graph::Value;
use kiln_dialect::infer::slice_range;
use kiln_dialect::kernel::Expr;
use kiln_dialect::ops::PadMode;
use kiln_dialect::shape::Dim;

use super::LowerError;
use super::compute::axis_of;
use super::cx::Cx;
use super::ex::{self, int};

type R<T> = Result<T, LowerError>;

/// Result axis `i` is operand axis `perm[i]`.
pub fn transpose(cx: &mut Cx, v: Value, idx: &[Expr], x: Value, perm: &[i64]) -> R<Expr> {
    let r = idx.len();
    let mut i = vec![int(0); r];
    for (o, &p) in perm.iter().enumerate() {
        let a = axis_of(cx, v, p, r)?;
        i[a] = idx[o].clone();
    }
    cx.at(x, &i)
}

/// `start + i * step` on each sliced axis; negative starts and ends count
/// from the end and are clamped, as `infer::slice_range` says (with run-time
/// arithmetic on symbolic axes).
#[allow(clippy::too_many_arguments)]
pub fn slice(
    cx: &mut Cx,
    v: Value,
    idx: &[Expr],
    x: Value,
    axes: &[i64],
    starts: &[i64],
    ends: &[i64],
    steps: &[i64],
) -> R<Expr> {
    let r = idx.len();
    let mut i = idx.to_vec();
    for (k, &a) in axes.iter().enumerate() {
        let a = axis_of(cx, v, a, r)?;
        let step = steps.get(k).copied().unwrap_or(1);
        let (Some(&start), Some(_)) = (starts.get(k), ends.get(k)) else {
            return Err(LowerError::unsupported(
                cx,
                v,
                "slice attribute lengths differ",
            ));
        };
        if step == 0 {
            return Err(LowerError::unsupported(cx, v, "slice step 0"));
        }
        let first = match &cx.shape(x).dims()[a] {
            Dim::Static(n) => int(slice_range(*n as i64, start, ends[k], step).0),
            d @ Dim::Sym(_) => {
                let n = cx.dim(d);
                let s = if start < 0 {
                    ex::add(n.clone(), int(start))
                } else {
                    int(start)
                };
                if step > 0 {
                    ex::min(ex::max(s, int(0)), n)
                } else {
                    ex::min(ex::max(s, int(-1)), ex::sub(n, int(1)))
                }
            }
        };
        i[a] = ex::add(first, ex::mul(idx[a].clone(), int(step)));
    }
    cx.at(x, &i)
}

/// Joins along `axis`: the piece whose range holds the index, read at the
/// index minus its offset (the other pieces read at a clamped index and are
/// discarded).
pub fn concat(cx: &mut Cx, v: Value, idx: &[Expr], xs: &[Value], axis: i64) -> R<Expr> {
    let r = idx.len();
    let a = axis_of(cx, v, axis, r)?;
    let mut offsets = Vec::with_capacity(xs.len());
    let mut off = int(0);
    for &x in xs {
        offsets.push(off.clone());
        let n = cx.dims_of(x)[a].clone();
        off = ex::add(off, n);
    }
    let ia = idx[a].clone();
    let mut e: Option<Expr> = None;
    for (k, &x) in xs.iter().enumerate().rev() {
        let n = cx.dims_of(x)[a].clone();
        let mut i = idx.to_vec();
        let local = ex::sub(ia.clone(), offsets[k].clone());
        i[a] = if xs.len() == 1 {
            local
        } else {
            ex::clamp_index(local, n)
        };
        let piece = cx.at(x, &i)?;
        e = Some(match e {
            None => piece,
            Some(rest) => {
                let end = offsets.get(k + 1).cloned().unwrap_or(off.clone());
                ex::select(ex::lt(ia.clone(), end), piece, rest)
            }
        });
    }
    e.ok_or_else(|| LowerError::unsupported(cx, v, "concat of nothing"))
}

/// NumPy `take` along `axis`: the index read from `indices` (negative ones
/// count from the end; out-of-range ones, an interpreter error, are clamped
/// so that no read leaves the tensor).
pub fn gather(cx: &mut Cx, v: Value, idx: &[Expr], x: Value, indices: Value, axis: i64) -> R<Expr> {
    let xr = cx.shape(x).rank();
    let a = axis_of(cx, v, axis, xr)?;
    let ir = cx.shape(indices).rank();
    let ii = &idx[a..a + ir];
    let j = cx.at(indices, ii)?;
    let j = if cx.ty_of(indices) == kiln_dialect::kernel::Ty::I64 {
        j
    } else {
        ex::cast(kiln_dialect::kernel::Ty::I64, j)
    };
    let n = cx.dims_of(x)[a].clone();
    let j = ex::select(ex::lt(j.clone(), int(0)), ex::add(j.clone(), n.clone()), j);
    let j = ex::clamp_index(j, n);
    let mut i: Vec<Expr> = idx[..a].to_vec();
    i.push(j);
    i.extend_from_slice(&idx[a + ir..]);
    cx.at(x, &i)
}

/// `pad`: constant mode reads inside and gives `value` outside (a guarded
/// load); edge clamps; reflect mirrors once about each edge.
pub fn pad(
    cx: &mut Cx,
    v: Value,
    idx: &[Expr],
    x: Value,
    pads: &[i64],
    mode: PadMode,
    value: f64,
) -> R<Expr> {
    let r = idx.len();
    if pads.len() != 2 * r {
        return Err(LowerError::unsupported(cx, v, "pads of the wrong length"));
    }
    let sizes = cx.dims_of(x);
    let mut i = Vec::with_capacity(r);
    let mut valid = Expr::Bool(true);
    for d in 0..r {
        let n = sizes[d].clone();
        let p = ex::sub(idx[d].clone(), int(pads[d]));
        if pads[d] == 0 && pads[d + r] == 0 {
            i.push(p);
            continue;
        }
        match mode {
            PadMode::Constant => {
                if pads[d] > 0 {
                    valid = ex::and(valid, ex::ge(p.clone(), int(0)));
                }
                if pads[d + r] > 0 {
                    valid = ex::and(valid, ex::lt(p.clone(), n));
                }
                i.push(p);
            }
            PadMode::Edge => i.push(ex::clamp_index(p, n)),
            PadMode::Reflect => {
                let below = ex::select(
                    ex::lt(p.clone(), int(0)),
                    ex::sub(int(0), p.clone()),
                    p.clone(),
                );
                let last = ex::sub(n.clone(), int(1));
                let m = ex::select(
                    ex::ge(p.clone(), n.clone()),
                    ex::sub(ex::mul(int(2), last), p),
                    below,
                );
                // keep degenerate mirrors (a pad wider than the axis) in range
                i.push(ex::clamp_index(m, n));
            }
        }
    }
    let dt = cx.dtype(v);
    match mode {
        PadMode::Constant if !matches!(valid, Expr::Bool(true)) => {
            let inside = cx.at_guarded(x, &i, valid.clone())?;
            if value == 0.0 {
                Ok(inside)
            } else {
                Ok(ex::select(valid, inside, cx.number(dt, value)))
            }
        }
        _ => cx.at(x, &i),
    }
}
