//! A pointwise convolution (1x1 kernel, stride 1, no padding, one group) in
//! NCHW as a contraction template: with the pixels of each image flattened,
//! `out[b, co, p] = epilogue(sum over ci of w[co, ci, 0, 0] * x[b, ci, p])`,
//! so the backend's tiled GEMM runs it (`m` = output channel, `n` = pixel,
//! contiguous in `x` and in the output).
//!
//! The kernel sees its output, and `x` when it is read from memory, through
//! a row-major view of rank 3 (`[b, c, h * w]`, the same bytes);
//! [`View`]s tell the caller which buffers to declare so. Everything else
//! (the epilogue, an `x` computed in the kernel) reads at
//! `[b, c, p / w, p % w]`.

use std::collections::HashSet;

use kiln_dialect::graph::{Graph, NodeId, Value};
use kiln_dialect::kernel::{Body, Expr, Ty, Var};
use kiln_dialect::ops::Op;
use kiln_dialect::{Dim, Shape};

use super::{LowerError, Work, cx, ex};

/// A kernel buffer declared with another shape of the same elements: the
/// output (`input: None`) or input slot `input`.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub input: Option<usize>,
    pub shape: Shape,
}

/// The kernel's one contraction when it is a conv2d: the node, its
/// stride, padding, dilation and groups. `None` for no contraction, several,
/// or a matmul.
#[allow(clippy::type_complexity)]
pub(super) fn single_conv<'g>(
    g: &'g Graph,
    w: &Work,
) -> Option<(NodeId, &'g [i64], &'g [i64], &'g [i64], &'g i64)> {
    let contractions: Vec<NodeId> = w
        .nodes
        .iter()
        .copied()
        .filter(|&n| matches!(g.node(n).op, Op::Conv2d { .. } | Op::Matmul { .. }))
        .collect();
    let [c] = contractions.as_slice() else {
        return None;
    };
    let Op::Conv2d {
        stride,
        padding,
        dilation,
        groups,
    } = &g.node(*c).op
    else {
        return None;
    };
    Some((*c, stride, padding, dilation, groups))
}

/// The lowered body, its inputs and dims, and the views it needs.
pub type Lowered = (Body, Vec<Value>, Vec<String>, Vec<View>);

/// `epilogue(conv2d(x, w))` as a contraction, when the kernel has one
/// conv2d, pointwise, of 4-D operands with static height and width, whose
/// result the epilogue reads only at the output's own index.
pub fn lower(
    g: &Graph,
    w: &Work,
    inside: &HashSet<NodeId>,
    in_memory: &HashSet<Value>,
    float: Ty,
) -> Result<Option<Lowered>, LowerError> {
    let Some((c, stride, padding, dilation, groups)) = single_conv(g, w) else {
        return Ok(None);
    };
    let c = &c;
    let cv = Value::of(*c);
    let ops = g.operands(*c);
    let (x, wt) = (ops[0], ops[1]);
    let out_shape = &g.value_type(w.output).shape;
    let ws = g.value_type(wt).shape.as_static();
    let pointwise = stride.iter().all(|&s| s == 1)
        && padding.iter().all(|&p| p == 0)
        && dilation.iter().all(|&d| d == 1)
        && *groups == 1
        && matches!(ws.as_deref(), Some([_, _, 1, 1]));
    if !pointwise || g.value_type(cv).shape != *out_shape || out_shape.rank() != 4 {
        return Ok(None);
    }
    let (Some(h), Some(wd)) = (out_shape.0[2].as_static(), out_shape.0[3].as_static()) else {
        return Ok(None);
    };
    let ci = ws.as_ref().map_or(0, |s| s[1]);
    let flat = |s: &Shape| Shape(vec![s.0[0].clone(), s.0[1].clone(), Dim::Static(h * wd)]);
    let (b, m, n) = (Var(0), Var(1), Var(2));
    let pixel = |cx_n: &Expr| {
        [
            ex::div(cx_n.clone(), Expr::Int(wd as i64)),
            ex::rem(cx_n.clone(), Expr::Int(wd as i64)),
        ]
    };
    let [py, px] = pixel(&Expr::Var(n));
    let idx4 = [Expr::Var(b), Expr::Var(m), py.clone(), px.clone()];
    let mut cx = cx::Cx::new(g, inside, in_memory, float, 3);
    cx.acc = Some((cv, idx4.to_vec()));
    let epilogue = cx.at(w.output, &idx4)?;
    if cx.acc_escaped {
        return Ok(None);
    }
    cx.acc = None;
    // The accumulator is the sum; the conv's value adds its bias.
    let biased = super::nn::add_bias(&mut cx, cv, Expr::Acc, ops.get(2).copied(), &Expr::Var(m))?;
    let epilogue = epilogue.substitute(&|e| matches!(e, Expr::Acc).then(|| biased.clone()));
    let k = cx.fresh();
    let a = cx.at(
        wt,
        &[Expr::Var(m), Expr::Var(k), Expr::Int(0), Expr::Int(0)],
    )?;
    let bx = cx.at(x, &[Expr::Var(b), Expr::Var(k), py, px])?;
    let mut views = vec![View {
        input: None,
        shape: flat(out_shape),
    }];
    // `x` read from memory, and nowhere else in the kernel: through its
    // flat view, a plain load.
    let bx = match bx {
        Expr::Load {
            input,
            index,
            guard: None,
        } if index[0] == Expr::Var(b)
            && index[1] == Expr::Var(k)
            && !reads(&epilogue, input)
            && !reads(&a, input) =>
        {
            views.push(View {
                input: Some(input),
                shape: flat(&g.value_type(x).shape),
            });
            Expr::load(input, vec![Expr::Var(b), Expr::Var(k), Expr::Var(n)])
        }
        other => other,
    };
    let (ta, tb) = (cx.ty_of(wt), cx.ty_of(x));
    let (a, bx) = if ta == tb {
        (a, bx)
    } else {
        (cx.to_float(a, ta), cx.to_float(bx, tb))
    };
    let body = Body::Contract {
        k,
        extent: Expr::Int(ci as i64),
        a,
        b: bx,
        epilogue,
    };
    Ok(Some((body, cx.inputs, cx.dims, views)))
}

/// Whether `e` loads from input `input`.
pub(super) fn reads(e: &Expr, input: usize) -> bool {
    let mut found = matches!(e, Expr::Load { input: i, .. } if *i == input);
    e.for_each_child(|c| found |= reads(c, input));
    found
}
