//! Compute definitions of the contractions, windows and attention:
//! matmul, conv2d, conv_transpose2d, pooling, attention, rope. Padding is a
//! guarded load ([`Cx::at_guarded`]); no index leaves its tensor.

use kiln_dialect::graph::Value;
use kiln_dialect::kernel::{Attention, Binary, Expr, Reduction, Ty, Unary};
use kiln_dialect::ops::Op;

use super::LowerError;
use super::compute::from_float;
use super::cx::Cx;
use super::ex::{self, float, int};
use super::index;

type R<T> = Result<T, LowerError>;

/// `matmul` as a sum over `k`: NumPy's rules (1-D operands promoted, batch
/// axes broadcast), optional transposes of the last two axes.
pub fn matmul(
    cx: &mut Cx,
    v: Value,
    idx: &[Expr],
    a: Value,
    b: Value,
    ta: bool,
    tb: bool,
) -> R<Expr> {
    let k = cx.fresh();
    let (ai, bi, extent) = matmul_operands(cx, v, idx, a, b, ta, tb, ex::var(k))?;
    let x = cx.at(a, &ai)?;
    let y = cx.at(b, &bi)?;
    let (tx, ty) = (cx.ty_of(a), cx.ty_of(b));
    let body = if tx == ty {
        ex::mul(x, y)
    } else {
        ex::mul(cx.to_float(x, tx), cx.to_float(y, ty))
    };
    Ok(ex::reduce(Reduction::Sum, k, extent, body))
}

/// The indices of a matmul's operands for result index `idx` and
/// contracted index `k`, and the contracted extent.
#[allow(clippy::too_many_arguments)]
pub fn matmul_operands(
    cx: &mut Cx,
    v: Value,
    idx: &[Expr],
    a: Value,
    b: Value,
    ta: bool,
    tb: bool,
    k: Expr,
) -> R<(Vec<Expr>, Vec<Expr>, Expr)> {
    let (ash, bsh) = (cx.shape(a).dims().to_vec(), cx.shape(b).dims().to_vec());
    let (a1, b1) = (ash.len() == 1, bsh.len() == 1);
    if (a1 && ta) || (b1 && tb) || ash.is_empty() || bsh.is_empty() {
        return Err(LowerError::unsupported(
            cx,
            v,
            "a transposed 1-D or a 0-D matmul operand",
        ));
    }
    let r = idx.len();
    // result axes: batch..., [m], [n]
    let nb = r - usize::from(!a1) - usize::from(!b1);
    let batch = &idx[..nb];
    let m = (!a1).then(|| idx[nb].clone());
    let n = (!b1).then(|| idx[r - 1].clone());
    let ai = if a1 {
        vec![k.clone()]
    } else {
        let mut i = index::broadcast(batch, &ash[..ash.len() - 2]);
        let m = m.clone().expect("2-D a has m");
        if ta {
            i.extend([k.clone(), m]);
        } else {
            i.extend([m, k.clone()]);
        }
        i
    };
    let bi = if b1 {
        vec![k.clone()]
    } else {
        let mut i = index::broadcast(batch, &bsh[..bsh.len() - 2]);
        let n = n.clone().expect("2-D b has n");
        if tb {
            i.extend([n, k.clone()]);
        } else {
            i.extend([k.clone(), n]);
        }
        i
    };
    let kd = if a1 {
        &ash[0]
    } else if ta {
        &ash[ash.len() - 2]
    } else {
        &ash[ash.len() - 1]
    };
    let extent = cx.dim(kd);
    Ok((ai, bi, extent))
}

/// Convolution parameters, checked.
pub struct ConvParams {
    stride: [i64; 2],
    pad: [i64; 4],
    dilation: [i64; 2],
    groups: i64,
}

impl ConvParams {
    pub fn new(
        cx: &Cx,
        v: Value,
        stride: &[i64],
        padding: &[i64],
        dilation: &[i64],
        groups: i64,
    ) -> R<ConvParams> {
        if stride.len() != 2 || padding.len() != 4 || dilation.len() != 2 || groups <= 0 {
            return Err(LowerError::unsupported(
                cx,
                v,
                "conv parameters of the wrong length",
            ));
        }
        Ok(ConvParams {
            stride: [stride[0], stride[1]],
            pad: [padding[0], padding[1], padding[2], padding[3]],
            dilation: [dilation[0], dilation[1]],
            groups,
        })
    }
}

/// The guard `0 <= i < n` (sides that cannot fail left out by the caller
/// passing `check_low` / `check_high`).
pub(super) fn in_range(i: &Expr, n: &Expr, check_low: bool, check_high: bool) -> Expr {
    let mut g = Expr::Bool(true);
    if check_low {
        g = ex::and(g, ex::ge(i.clone(), int(0)));
    }
    if check_high {
        g = ex::and(g, ex::lt(i.clone(), n.clone()));
    }
    g
}

/// `conv2d`: `bias[o] + sum over (ic, ky, kx) of x[n, g*Cg + ic, y, x] *
/// w[o, ic, ky, kx]`, `y = oy*stride + ky*dilation - pad_top` (guarded).
pub fn conv2d(cx: &mut Cx, v: Value, idx: &[Expr], ops: &[Value], p: &ConvParams) -> R<Expr> {
    let (x, w) = (ops[0], ops[1]);
    if idx.len() != 4 || cx.shape(x).rank() != 4 || cx.shape(w).rank() != 4 {
        return Err(LowerError::unsupported(cx, v, "conv2d needs 4-D operands"));
    }
    let xs = cx.dims_of(x);
    let ws = cx.dims_of(w);
    let og = ex::div(ws[0].clone(), int(p.groups));
    let g = ex::div(idx[1].clone(), og);
    let (ic, ky, kx) = (cx.fresh(), cx.fresh(), cx.fresh());
    let yy = ex::sub(
        ex::add(
            ex::mul(idx[2].clone(), int(p.stride[0])),
            ex::mul(ex::var(ky), int(p.dilation[0])),
        ),
        int(p.pad[0]),
    );
    let xx = ex::sub(
        ex::add(
            ex::mul(idx[3].clone(), int(p.stride[1])),
            ex::mul(ex::var(kx), int(p.dilation[1])),
        ),
        int(p.pad[1]),
    );
    let guard = ex::and(
        in_range(&yy, &xs[2], p.pad[0] > 0, p.pad[2] > 0),
        in_range(&xx, &xs[3], p.pad[1] > 0, p.pad[3] > 0),
    );
    let xc = ex::add(ex::mul(g, ws[1].clone()), ex::var(ic));
    let xv = cx.at_guarded(x, &[idx[0].clone(), xc, yy, xx], guard)?;
    let wv = cx.at(w, &[idx[1].clone(), ex::var(ic), ex::var(ky), ex::var(kx)])?;
    let body = product(cx, xv, x, wv, w);
    let sum = ex::reduce(
        Reduction::Sum,
        ic,
        ws[1].clone(),
        ex::reduce(
            Reduction::Sum,
            ky,
            ws[2].clone(),
            ex::reduce(Reduction::Sum, kx, ws[3].clone(), body),
        ),
    );
    add_bias(cx, v, sum, ops.get(2).copied(), &idx[1])
}

/// `a * b`, both converted to floats when their types differ.
fn product(cx: &Cx, a: Expr, av: Value, b: Expr, bv: Value) -> Expr {
    let (ta, tb) = (cx.ty_of(av), cx.ty_of(bv));
    if ta == tb {
        ex::mul(a, b)
    } else {
        ex::mul(cx.to_float(a, ta), cx.to_float(b, tb))
    }
}

pub(super) fn add_bias(
    cx: &mut Cx,
    v: Value,
    sum: Expr,
    bias: Option<Value>,
    ch: &Expr,
) -> R<Expr> {
    let Some(bias) = bias else {
        return Ok(sum);
    };
    let b = cx.at(bias, std::slice::from_ref(ch))?;
    if cx.ty_of(bias) == cx.ty_of(v) {
        Ok(ex::add(b, sum))
    } else {
        let b = cx.to_float(b, cx.ty_of(bias));
        Ok(ex::add(b, sum))
    }
}

/// `conv_transpose2d` as a gather: output `y` receives input `iy` through
/// tap `ky` when `y + pad_top - ky*dilation = iy*stride` with `iy` in range.
pub fn conv_transpose2d(
    cx: &mut Cx,
    v: Value,
    idx: &[Expr],
    ops: &[Value],
    p: &ConvParams,
) -> R<Expr> {
    let (x, w) = (ops[0], ops[1]);
    if idx.len() != 4 || cx.shape(x).rank() != 4 || cx.shape(w).rank() != 4 {
        return Err(LowerError::unsupported(
            cx,
            v,
            "conv_transpose2d needs 4-D operands",
        ));
    }
    let xs = cx.dims_of(x);
    let ws = cx.dims_of(w);
    let og = ws[1].clone();
    let g = ex::div(idx[1].clone(), og.clone());
    let ol = ex::rem(idx[1].clone(), og);
    let cg = ex::div(xs[1].clone(), int(p.groups));
    let (icl, ky, kx) = (cx.fresh(), cx.fresh(), cx.fresh());
    let ic = ex::add(ex::mul(g, cg.clone()), ex::var(icl));
    let tap = |o: &Expr, k: Var2, d: i64, pad: i64| {
        ex::sub(ex::add(o.clone(), int(pad)), ex::mul(ex::var(k), int(d)))
    };
    let ty = tap(&idx[2], ky, p.dilation[0], p.pad[0]);
    let tx = tap(&idx[3], kx, p.dilation[1], p.pad[1]);
    let hits = |t: &Expr, s: i64, n: &Expr| {
        let mut g = ex::ge(t.clone(), int(0));
        if s != 1 {
            g = ex::and(g, ex::eq(ex::rem(t.clone(), int(s)), int(0)));
        }
        ex::and(g, ex::lt(ex::div(t.clone(), int(s)), n.clone()))
    };
    let guard = ex::and(
        hits(&ty, p.stride[0], &xs[2]),
        hits(&tx, p.stride[1], &xs[3]),
    );
    let iy = ex::div(ty, int(p.stride[0]));
    let ix = ex::div(tx, int(p.stride[1]));
    let xv = cx.at_guarded(x, &[idx[0].clone(), ic.clone(), iy, ix], guard)?;
    let wv = cx.at(w, &[ic, ol, ex::var(ky), ex::var(kx)])?;
    let body = product(cx, xv, x, wv, w);
    let sum = ex::reduce(
        Reduction::Sum,
        icl,
        cg,
        ex::reduce(
            Reduction::Sum,
            ky,
            ws[2].clone(),
            ex::reduce(Reduction::Sum, kx, ws[3].clone(), body),
        ),
    );
    add_bias(cx, v, sum, ops.get(2).copied(), &idx[1])
}

type Var2 = kiln_dialect::kernel::Var;

/// A pooling window, checked.
pub struct Window {
    kernel: [i64; 2],
    stride: [i64; 2],
    pad: [i64; 4],
    dilation: [i64; 2],
}

impl Window {
    pub fn new(
        cx: &Cx,
        v: Value,
        kernel: &[i64],
        stride: &[i64],
        padding: &[i64],
        dilation: &[i64],
    ) -> R<Window> {
        if kernel.len() != 2 || stride.len() != 2 || padding.len() != 4 || dilation.len() != 2 {
            return Err(LowerError::unsupported(
                cx,
                v,
                "pool parameters of the wrong length",
            ));
        }
        Ok(Window {
            kernel: [kernel[0], kernel[1]],
            stride: [stride[0], stride[1]],
            pad: [padding[0], padding[1], padding[2], padding[3]],
            dilation: [dilation[0], dilation[1]],
        })
    }

    /// The input row (axis 0) or column (axis 1) of tap `k` at output `o`.
    fn pos(&self, axis: usize, o: &Expr, k: Var2) -> Expr {
        ex::sub(
            ex::add(
                ex::mul(o.clone(), int(self.stride[axis])),
                ex::mul(ex::var(k), int(self.dilation[axis])),
            ),
            int(self.pad[axis]),
        )
    }
}

fn check_pool(cx: &Cx, v: Value, idx: &[Expr], x: Value) -> R<()> {
    if idx.len() != 4 || cx.shape(x).rank() != 4 {
        return Err(LowerError::unsupported(cx, v, "pooling needs [N, C, H, W]"));
    }
    Ok(())
}

/// `max_pool2d`: padded and out-of-range taps never win (they read as
/// `-inf`); ceil-mode windows that pass the end are guarded the same way.
pub fn max_pool(cx: &mut Cx, v: Value, idx: &[Expr], x: Value, w: &Window) -> R<Expr> {
    check_pool(cx, v, idx, x)?;
    let xs = cx.dims_of(x);
    let (ky, kx) = (cx.fresh(), cx.fresh());
    let (y, xx) = (w.pos(0, &idx[2], ky), w.pos(1, &idx[3], kx));
    let valid = ex::and(
        in_range(&y, &xs[2], true, true),
        in_range(&xx, &xs[3], true, true),
    );
    let load = cx.at_guarded(x, &[idx[0].clone(), idx[1].clone(), y, xx], valid.clone())?;
    let lowest = match cx.ty_of(x) {
        Ty::I64 => int(i64::MIN),
        _ => float(f64::NEG_INFINITY),
    };
    let body = ex::select(valid, load, lowest);
    Ok(ex::reduce(
        Reduction::Max,
        ky,
        int(w.kernel[0]),
        ex::reduce(Reduction::Max, kx, int(w.kernel[1]), body),
    ))
}

/// `avg_pool2d`: the sum of the in-range taps over their count, or over the
/// count of taps inside the padded extent with `count_include_pad`.
pub fn avg_pool(
    cx: &mut Cx,
    v: Value,
    idx: &[Expr],
    x: Value,
    w: &Window,
    count_include_pad: bool,
) -> R<Expr> {
    check_pool(cx, v, idx, x)?;
    let xs = cx.dims_of(x);
    let (ky, kx) = (cx.fresh(), cx.fresh());
    let (y, xx) = (w.pos(0, &idx[2], ky), w.pos(1, &idx[3], kx));
    let valid = ex::and(
        in_range(&y, &xs[2], true, true),
        in_range(&xx, &xs[3], true, true),
    );
    let load = cx.at_guarded(x, &[idx[0].clone(), idx[1].clone(), y, xx], valid)?;
    let load = cx.to_float(load, cx.ty_of(x));
    let sum = ex::reduce(
        Reduction::Sum,
        ky,
        int(w.kernel[0]),
        ex::reduce(Reduction::Sum, kx, int(w.kernel[1]), load),
    );
    // taps counted per axis: the count of a window is their product
    let mut count = int(1);
    for axis in 0..2 {
        let t = cx.fresh();
        let p = w.pos(axis, &idx[2 + axis], t);
        let (lo, hi) = if count_include_pad {
            (
                int(-w.pad[axis]),
                ex::add(xs[2 + axis].clone(), int(w.pad[axis + 2])),
            )
        } else {
            (int(0), xs[2 + axis].clone())
        };
        let inside = ex::and(ex::ge(p.clone(), lo), ex::lt(p, hi));
        let c = ex::reduce(
            Reduction::Sum,
            t,
            int(w.kernel[axis]),
            ex::select(inside, int(1), int(0)),
        );
        count = ex::mul(count, c);
    }
    let count = ex::max(count, int(1));
    let y = ex::div(sum, ex::cast(cx.float, count));
    Ok(from_float(cx, y, cx.dtype(v)))
}

/// Scaled dot-product attention, as the interpreter computes it: scores
/// `q.k * scale + mask` (causal: `-inf` where `j > i + Skv - Sq`), the row
/// maximum subtracted, `sum_j exp(s_j - max) / sum * v[j]`; a row whose
/// every score is masked gives 0. Query head `h` reads key/value head
/// `h / (Hq / Hkv)`.
pub fn attention(
    cx: &mut Cx,
    v: Value,
    idx: &[Expr],
    ops: &[Value],
    causal: bool,
    scale: Option<f64>,
) -> R<Expr> {
    let parts = attention_parts(cx, v, ops, causal, scale)?;
    let (q, k, val) = (ops[0], ops[1], ops[2]);
    let kh = ex::div(idx[1].clone(), parts.kv_group.clone());
    // the score of key `j` for this query
    let score = |cx: &mut Cx, j: Expr| -> R<Expr> {
        let t = cx.fresh();
        let qv = cx.at_float(
            q,
            &[idx[0].clone(), idx[1].clone(), idx[2].clone(), ex::var(t)],
        )?;
        let kv = cx.at_float(k, &[idx[0].clone(), kh.clone(), j.clone(), ex::var(t)])?;
        let dot = ex::reduce(Reduction::Sum, t, parts.depth.clone(), ex::mul(qv, kv));
        let mut s = ex::mul(dot, parts.scale.clone());
        if let Some(&mask) = ops.get(3) {
            let full = [idx[0].clone(), idx[1].clone(), idx[2].clone(), j.clone()];
            let mi = index::broadcast(&full, cx.shape(mask).dims());
            s = ex::add(s, cx.at_float(mask, &mi)?);
        }
        if let Some(off) = &parts.causal {
            let limit = ex::add(idx[2].clone(), off.clone());
            s = ex::select(ex::gt(j, limit), float(f64::NEG_INFINITY), s);
        }
        Ok(s)
    };
    let skv = parts.keys.clone();
    let jm = cx.fresh();
    let sm = score(cx, ex::var(jm))?;
    let m = ex::reduce(Reduction::Max, jm, skv.clone(), sm);
    let js = cx.fresh();
    let ss = score(cx, ex::var(js))?;
    let den = ex::reduce(
        Reduction::Sum,
        js,
        skv.clone(),
        ex::un(Unary::Exp, ex::sub(ss, m.clone())),
    );
    let j = cx.fresh();
    let sj = score(cx, ex::var(j))?;
    let vj = cx.at_float(
        val,
        &[idx[0].clone(), kh.clone(), ex::var(j), idx[3].clone()],
    )?;
    let wj = ex::div(ex::un(Unary::Exp, ex::sub(sj, m.clone())), den);
    let out = ex::reduce(Reduction::Sum, j, skv, ex::mul(wj, vj));
    let all_masked = Expr::bin(Binary::Eq, m, float(f64::NEG_INFINITY));
    let y = ex::select(all_masked, float(0.0), out);
    Ok(from_float(cx, y, cx.dtype(v)))
}

/// What every form of attention shares: the sizes, the scale, the
/// grouped-query factor and the causal offset.
struct AttentionParts {
    /// Query heads per key/value head.
    kv_group: Expr,
    depth: Expr,
    keys: Expr,
    scale: Expr,
    /// `keys - queries` when causal: key `j` is seen by query `i` when
    /// `j <= i + offset`.
    causal: Option<Expr>,
}

fn attention_parts(
    cx: &mut Cx,
    v: Value,
    ops: &[Value],
    causal: bool,
    scale: Option<f64>,
) -> R<AttentionParts> {
    let (q, k, val) = (ops[0], ops[1], ops[2]);
    if [q, k, val].iter().any(|&t| cx.shape(t).rank() != 4) || cx.shape(v).rank() != 4 {
        return Err(LowerError::unsupported(
            cx,
            v,
            "attention needs 4-D q, k, v",
        ));
    }
    let qs = cx.dims_of(q);
    let ks = cx.dims_of(k);
    let kv_group = ex::div(qs[1].clone(), ks[1].clone());
    let (depth, keys, queries) = (qs[3].clone(), ks[2].clone(), qs[2].clone());
    let scale = match (scale, cx.shape(q).dims()[3].as_static()) {
        (Some(s), _) => float(s),
        (None, Some(d)) => float(1.0 / (d as f64).sqrt()),
        (None, None) => ex::div(
            float(1.0),
            ex::un(Unary::Sqrt, ex::cast(cx.float, depth.clone())),
        ),
    };
    let causal = causal.then(|| ex::sub(keys.clone(), queries));
    Ok(AttentionParts {
        kv_group,
        depth,
        keys,
        scale,
        causal,
    })
}

/// Attention as the kernel dialect's template ([`Attention`]), for a kernel
/// whose tree is an epilogue over one attention node `a` read at the
/// output's own index `idx` (the output variables): the operands' element
/// expressions at the template's variables, the epilogue given.
pub fn attention_template(cx: &mut Cx, a: Value, idx: &[Expr], epilogue: Expr) -> R<Attention> {
    let ops = cx.operands(a.node);
    let Op::Attention { causal, scale } = cx.g.node(a.node).op else {
        return Err(LowerError::unsupported(cx, a, "not an attention node"));
    };
    let parts = attention_parts(cx, a, &ops, causal, scale)?;
    let (j, d) = (cx.fresh(), cx.fresh());
    let kh = ex::div(idx[1].clone(), parts.kv_group.clone());
    let q = cx.at_float(
        ops[0],
        &[idx[0].clone(), idx[1].clone(), idx[2].clone(), ex::var(d)],
    )?;
    let k = cx.at_float(
        ops[1],
        &[idx[0].clone(), kh.clone(), ex::var(j), ex::var(d)],
    )?;
    let v = cx.at_float(ops[2], &[idx[0].clone(), kh, ex::var(j), idx[3].clone()])?;
    let bias = match ops.get(3) {
        Some(&mask) => {
            let full = [idx[0].clone(), idx[1].clone(), idx[2].clone(), ex::var(j)];
            let mi = index::broadcast(&full, cx.shape(mask).dims());
            Some(cx.at_float(mask, &mi)?)
        }
        None => None,
    };
    Ok(Attention {
        j,
        keys: parts.keys,
        d,
        depth: parts.depth,
        q,
        k,
        v,
        scale: parts.scale,
        bias,
        causal: parts.causal,
        epilogue,
    })
}

/// Rotary embedding on the last axis: element `d` pairs with `d + D/2` (or
/// `d ^ 1` when interleaved); the first of a pair becomes `a cos - b sin`,
/// the second `b cos + a sin`, with `cos`, `sin` at `[s, i]` (`s` the
/// second-to-last index, `i` the pair's index).
pub fn rope(cx: &mut Cx, v: Value, idx: &[Expr], ops: &[Value], interleaved: bool) -> R<Expr> {
    let (x, cos, sin) = (ops[0], ops[1], ops[2]);
    let r = idx.len();
    if r < 2 {
        return Err(LowerError::unsupported(cx, v, "rope needs [..., S, D]"));
    }
    let xs = cx.dims_of(x);
    let d = idx[r - 1].clone();
    let half = ex::div(xs[r - 1].clone(), int(2));
    // The partner index in forms whose range index simplification can
    // bound (a select of `d + 1` and `d - 1` may look negative):
    // `2 (d / 2) + 1 - d % 2` (interleaved), `(d + D/2) % D` (halves).
    let (first, pair, partner) = if interleaved {
        let first = ex::eq(ex::rem(d.clone(), int(2)), int(0));
        let partner = ex::sub(
            ex::add(ex::mul(ex::div(d.clone(), int(2)), int(2)), int(1)),
            ex::rem(d.clone(), int(2)),
        );
        (first, ex::div(d.clone(), int(2)), partner)
    } else {
        let first = ex::lt(d.clone(), half.clone());
        let partner = ex::rem(ex::add(d.clone(), half.clone()), xs[r - 1].clone());
        (first, ex::rem(d.clone(), half.clone()), partner)
    };
    let flat = ex::add(ex::mul(idx[r - 2].clone(), half.clone()), pair);
    let cos_dims = cx.dims_of(cos);
    let sin_dims = cx.dims_of(sin);
    let ci = index::unflatten(flat.clone(), &cos_dims);
    let si = index::unflatten(flat, &sin_dims);
    let c = cx.at_float(cos, &ci)?;
    let s = cx.at_float(sin, &si)?;
    let xv = cx.at_float(x, idx)?;
    let mut pi = idx.to_vec();
    pi[r - 1] = partner;
    let pv = cx.at_float(x, &pi)?;
    let xc = ex::mul(xv, c);
    let ps = ex::mul(pv, s);
    let y = ex::select(first, ex::sub(xc.clone(), ps.clone()), ex::add(xc, ps));
    Ok(from_float(cx, y, cx.dtype(v)))
}
