//! Collapsed views of inputs: a rewrite of the kernel before code
//! generation.
//!
//! The lowering writes a read of a tensor `[.., H, W]` at a flattened
//! position `p` (a residual added to the `[.., H * W]` output of a
//! pointwise convolution run as a GEMM) as `x[.., p / W, p % W]`. Since
//! `(p / W) * W + p % W == p` for every `p` (the kernel dialect's `div`
//! truncates and `rem` takes the dividend's sign, a pair that always
//! satisfies it), that load reads element `p` of the same bytes viewed as
//! `[.., H * W]`. Rewritten so, the index is the plain variable the
//! vector paths recognize (`vmap.rs`, the contraction epilogues) and no
//! division is left per element.
//!
//! An input is collapsed at axes `(j, j + 1)` when both sizes are static
//! and every load of it has `div(e, W)` and `rem(e, W)` there, `W` its size
//! on axis `j + 1`, with the same `e` in both (compared structurally).
//! Inputs read any other way are left as they are. The executor is not
//! concerned: it checks the rank of the program's kernel, not of this
//! copy, and the bytes are the same.

use kiln_dialect::kernel::{Binary, Body, Expr, Kernel};
use kiln_dialect::{Dim, Shape};

/// `k` with the inputs read only through `p / W, p % W` pairs viewed with
/// those two axes merged, or `None` when no input is.
pub(super) fn collapse_split_reads(k: &Kernel) -> Option<Kernel> {
    let mut out: Option<Kernel> = None;
    for input in 0..k.inputs.len() {
        let cur = out.as_ref().unwrap_or(k);
        let Some(axis) = collapsible_axis(cur, input) else {
            continue;
        };
        let mut next = cur.clone();
        let dims = &cur.inputs[input].shape.0;
        let (Some(h), Some(w)) = (dims[axis].as_static(), dims[axis + 1].as_static()) else {
            continue;
        };
        let Some(hw) = h.checked_mul(w) else {
            continue;
        };
        let mut shape = dims.clone();
        shape.splice(axis..axis + 2, std::iter::once(Dim::Static(hw)));
        next.inputs[input].shape = Shape(shape);
        let rewrite = |e: &Expr| rewrite_loads(e, input, axis);
        next.body = match &cur.body {
            Body::Map { expr } => Body::Map {
                expr: rewrite(expr),
            },
            Body::Contract {
                k: kv,
                extent,
                a,
                b,
                epilogue,
            } => Body::Contract {
                k: *kv,
                extent: rewrite(extent),
                a: rewrite(a),
                b: rewrite(b),
                epilogue: rewrite(epilogue),
            },
            Body::Attention(t) => {
                let mut t = (**t).clone();
                for e in t.exprs_mut() {
                    *e = rewrite(e);
                }
                Body::Attention(Box::new(t))
            }
        };
        out = Some(next);
    }
    out
}

/// The axis `j` at which every load of `input` in `k` is a split pair,
/// when there is one load at least and all agree.
fn collapsible_axis(k: &Kernel, input: usize) -> Option<usize> {
    let dims = &k.inputs.get(input)?.shape.0;
    let mut found: Option<Option<usize>> = None;
    let mut visit = |e: &Expr| {
        for_each_load(e, input, &mut |index: &[Expr]| {
            let here = split_axis(index, dims);
            found = Some(match found {
                None => here,
                Some(prev) if prev == here => prev,
                Some(_) => None,
            });
        });
    };
    match &k.body {
        Body::Map { expr } => visit(expr),
        Body::Contract {
            extent,
            a,
            b,
            epilogue,
            ..
        } => {
            visit(extent);
            visit(a);
            visit(b);
            visit(epilogue);
        }
        Body::Attention(t) => t.exprs().into_iter().for_each(visit),
    }
    found.flatten()
}

/// The first axis `j` with `index[j] = div(e, W)`, `index[j + 1] = rem(e,
/// W)`, `W` the static size of axis `j + 1` and axis `j` static too.
fn split_axis(index: &[Expr], dims: &[Dim]) -> Option<usize> {
    if index.len() != dims.len() {
        return None;
    }
    (0..index.len().saturating_sub(1)).find(|&j| {
        let (Some(_), Some(w)) = (dims[j].as_static(), dims[j + 1].as_static()) else {
            return false;
        };
        split_pair(&index[j], &index[j + 1], w).is_some()
    })
}

/// `e` when `hi = div(e, W)` and `lo = rem(e, W)` with `W == w`.
fn split_pair<'e>(hi: &'e Expr, lo: &Expr, w: u64) -> Option<&'e Expr> {
    let (Expr::Binary(Binary::Div, e, d), Expr::Binary(Binary::Rem, e2, d2)) = (hi, lo) else {
        return None;
    };
    let is_w = |x: &Expr| matches!(x, Expr::Int(v) if *v > 0 && *v as u64 == w);
    (is_w(d) && is_w(d2) && e == e2).then_some(&**e)
}

/// Calls `f` with the index of every load of `input` in `e` (also those in
/// other loads' indices and guards).
fn for_each_load(e: &Expr, input: usize, f: &mut dyn FnMut(&[Expr])) {
    if let Expr::Load {
        input: i, index, ..
    } = e
        && *i == input
    {
        f(index);
    }
    e.for_each_child(|c| for_each_load(c, input, f));
}

/// `e` with every load of `input` reading through the collapsed view.
fn rewrite_loads(e: &Expr, input: usize, axis: usize) -> Expr {
    e.substitute(&|x: &Expr| {
        let Expr::Load {
            input: i,
            index,
            guard,
        } = x
        else {
            return None;
        };
        if *i != input {
            return None;
        }
        let Expr::Binary(Binary::Div, p, _) = &index[axis] else {
            return None;
        };
        let mut new: Vec<Expr> = index
            .iter()
            .map(|ie| rewrite_loads(ie, input, axis))
            .collect();
        new.splice(
            axis..axis + 2,
            std::iter::once(rewrite_loads(p, input, axis)),
        );
        Some(Expr::Load {
            input,
            index: new,
            guard: guard
                .as_deref()
                .map(|g| Box::new(rewrite_loads(g, input, axis))),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_dialect::DType;
    use kiln_dialect::kernel::{Buffer, Ty, Var};

    fn buf(name: &str, dims: &[u64]) -> Buffer {
        Buffer {
            name: name.into(),
            dtype: DType::F32,
            shape: Shape::of(dims),
        }
    }

    fn split(p: Expr, w: i64) -> [Expr; 2] {
        [
            Expr::bin(Binary::Div, p.clone(), Expr::Int(w)),
            Expr::bin(Binary::Rem, p, Expr::Int(w)),
        ]
    }

    fn kernel(index: Vec<Expr>, other: Option<Vec<Expr>>) -> Kernel {
        let mut expr = Expr::load(0, index);
        if let Some(o) = other {
            expr = Expr::bin(Binary::Add, expr, Expr::load(0, o));
        }
        Kernel {
            name: "k".into(),
            inputs: vec![buf("x", &[2, 3, 5])],
            output: buf("y", &[2, 15]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Map { expr },
        }
    }

    #[test]
    fn collapses_split_pairs_only_when_every_load_agrees() {
        let v = |i| Expr::Var(Var(i));
        let [h, w] = split(v(1), 5);
        let k = kernel(vec![v(0), h.clone(), w.clone()], None);
        let c = collapse_split_reads(&k).expect("collapsed");
        assert_eq!(c.inputs[0].shape, Shape::of(&[2, 15]));
        assert_eq!(
            c.body,
            Body::Map {
                expr: Expr::load(0, vec![v(0), v(1)])
            }
        );
        // A second load that indexes the axes directly keeps the view.
        let k = kernel(
            vec![v(0), h.clone(), w.clone()],
            Some(vec![v(0), v(1), v(1)]),
        );
        assert!(collapse_split_reads(&k).is_none());
        // A divisor other than the axis size, or two different positions.
        let [h3, w3] = split(v(1), 3);
        assert!(collapse_split_reads(&kernel(vec![v(0), h3, w3], None)).is_none());
        let [_, w0] = split(v(0), 5);
        assert!(collapse_split_reads(&kernel(vec![v(0), h, w0], None)).is_none());
    }
}
