//! A convolution with a window larger than one pixel (or strided, padded,
//! dilated, grouped) in NCHW as an implicit GEMM: with the output pixels
//! flattened and the window taps and input channels of a group flattened
//! into `k = (ic, ky, kx)`,
//!
//! ```text
//! out[b, g, m, p] = epilogue(sum over k < Cg*KH*KW of
//!     w[g, m, k] * x[b, g*Cg + k / (KH*KW), oy*sy + ky*dy - pt, ox*sx + kx*dx - pl])
//! ```
//!
//! with `oy = p / OW`, `ox = p % OW`, `ky = k / KW % KH`, `kx = k % KW`,
//! the `x` load guarded by the window position being inside the image
//! (padding reads 0): the `b` operand is the im2col gather, expressed in
//! the kernel IR, never materialized in memory. The output is declared
//! through the view `[N, G, Cout/G, OH*OW]` and a weight read from memory
//! through `[G, Cout/G, Cg*KH*KW]` (the same row-major elements), so the
//! backends run it as a batched contraction (`m` = output channel of the
//! group, `n` = output pixel). The epilogue reads other tensors at `[b,
//! g*Cout/G + m, p / OW, p % OW]`.
//!
//! Taken for convolutions whose weight type is in the target's
//! `implicit_gemm_conv` list (the CPU's f32; the GPU targets' bf16 and
//! f16, with an input of the same type, for the tensor-core contraction
//! path: the weight's rows are its `a`, copied where `Cg*KH*KW` is a
//! multiple of 8, and the gather its `b`, evaluated by the threads into
//! shared memory), with at least 4 output channels per group (a depthwise
//! convolution stays a map kernel: one row per group is no GEMM), whose
//! weight the kernel reads from memory as it is (else the map form).

use std::collections::HashSet;

use kiln_dialect::graph::{Graph, NodeId, Value};
use kiln_dialect::kernel::{Body, Expr, Ty, Var};
use kiln_dialect::{DType, Dim, Shape};

use super::pointwise::{Lowered, View, reads};
use super::{LowerError, Work, cx, ex, nn};

/// The fewest output channels per group taken as a GEMM.
const MIN_ROWS: u64 = 4;

/// `epilogue(conv2d(x, w))` as an implicit GEMM, when the kernel has one
/// conv2d of 4-D operands with a static weight, static output height and
/// width and at least [`MIN_ROWS`] output channels per group, whose result
/// the epilogue reads only at the output's own index.
pub fn lower(
    g: &Graph,
    w: &Work,
    inside: &HashSet<NodeId>,
    in_memory: &HashSet<Value>,
    float: Ty,
    weights: &[DType],
) -> Result<Option<Lowered>, LowerError> {
    let Some((c, stride, padding, dilation, groups)) = super::pointwise::single_conv(g, w) else {
        return Ok(None);
    };
    let c = &c;
    let cv = Value::of(*c);
    let ops = g.operands(*c);
    let (x, wt) = (ops[0], ops[1]);
    let out_shape = &g.value_type(w.output).shape;
    let Some(ws) = g.value_type(wt).shape.as_static() else {
        return Ok(None);
    };
    // The target's tiled types: f32 weights whose rows the CPU reads
    // directly; bf16/f16 ones (and an input of the same type) for tensor
    // cores.
    let wdt = g.value_type(wt).dtype;
    if !weights.contains(&wdt) || (wdt != DType::F32 && g.value_type(x).dtype != wdt) {
        return Ok(None);
    }
    if g.value_type(cv).shape != *out_shape
        || out_shape.rank() != 4
        || g.value_type(x).shape.rank() != 4
        || ws.len() != 4
        || *groups <= 0
        || stride.len() != 2
        || padding.len() != 4
        || dilation.len() != 2
    {
        return Ok(None);
    }
    let gr = *groups as u64;
    let (cout, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    if cout % gr != 0 || cout / gr < MIN_ROWS || cg * kh * kw == 0 {
        return Ok(None);
    }
    let (Some(oh), Some(ow)) = (out_shape.0[2].as_static(), out_shape.0[3].as_static()) else {
        return Ok(None);
    };
    let og = (cout / gr) as i64;
    let int = |i: u64| Expr::Int(i as i64);
    let (b, gv, m, n) = (Var(0), Var(1), Var(2), Var(3));
    let co = ex::add(ex::mul(Expr::Var(gv), Expr::Int(og)), Expr::Var(m));
    let oy = ex::div(Expr::Var(n), int(ow));
    let ox = ex::rem(Expr::Var(n), int(ow));
    let idx4 = [Expr::Var(b), co.clone(), oy.clone(), ox.clone()];
    let mut cx = cx::Cx::new(g, inside, in_memory, float, 4);
    cx.acc = Some((cv, idx4.to_vec()));
    let epilogue = cx.at(w.output, &idx4)?;
    if cx.acc_escaped {
        return Ok(None);
    }
    cx.acc = None;
    let biased = nn::add_bias(&mut cx, cv, Expr::Acc, ops.get(2).copied(), &co)?;
    let epilogue = epilogue.substitute(&|e| matches!(e, Expr::Acc).then(|| biased.clone()));
    let k = cx.fresh();
    let kv = Expr::Var(k);
    let ic = ex::div(kv.clone(), int(kh * kw));
    let ky = ex::rem(ex::div(kv.clone(), int(kw)), int(kh));
    let kx = ex::rem(kv.clone(), int(kw));
    let widx = [co, ic.clone(), ky.clone(), kx.clone()];
    let a = cx.at(wt, &widx)?;
    let xs = cx.dims_of(x);
    let (s, p, d) = (stride, padding, dilation);
    let iy = ex::sub(
        ex::add(ex::mul(oy, Expr::Int(s[0])), ex::mul(ky, Expr::Int(d[0]))),
        Expr::Int(p[0]),
    );
    let ix = ex::sub(
        ex::add(ex::mul(ox, Expr::Int(s[1])), ex::mul(kx, Expr::Int(d[1]))),
        Expr::Int(p[1]),
    );
    let guard = ex::and(
        nn::in_range(&iy, &xs[2], p[0] > 0, p[2] > 0),
        nn::in_range(&ix, &xs[3], p[1] > 0, p[3] > 0),
    );
    let xc = ex::add(ex::mul(Expr::Var(gv), int(cg)), ic);
    let bx = cx.at_guarded(x, &[Expr::Var(b), xc, iy, ix], guard)?;
    let mut views = vec![View {
        input: None,
        shape: Shape(vec![
            out_shape.0[0].clone(),
            Dim::Static(gr),
            Dim::Static(cout / gr),
            Dim::Static(oh * ow),
        ]),
    }];
    // The weight read from memory, and nowhere else in the kernel: through
    // its `[G, Cout/G, Cg*KH*KW]` view, a plain load.
    let a = match a {
        Expr::Load {
            input,
            index,
            guard: None,
        } if cx.inputs.get(input) == Some(&wt)
            && index == widx
            && !reads(&epilogue, input)
            && !reads(&bx, input) =>
        {
            views.push(View {
                input: Some(input),
                shape: Shape(vec![
                    Dim::Static(gr),
                    Dim::Static(cout / gr),
                    Dim::Static(cg * kh * kw),
                ]),
            });
            Expr::load(input, vec![Expr::Var(gv), Expr::Var(m), kv])
        }
        // A weight computed in the kernel, or read through a view of
        // another tensor: the map form serves it better.
        _ => return Ok(None),
    };
    let (ta, tb) = (cx.ty_of(wt), cx.ty_of(x));
    let (a, bx) = if ta == tb {
        (a, bx)
    } else {
        (cx.to_float(a, ta), cx.to_float(bx, tb))
    };
    let body = Body::Contract {
        k,
        extent: int(cg * kh * kw),
        a,
        b: bx,
        epilogue,
    };
    Ok(Some((body, cx.inputs, cx.dims, views)))
}
