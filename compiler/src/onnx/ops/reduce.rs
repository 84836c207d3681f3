//! Reductions: `Reduce*` (axes as an attribute or, from opset 13 for
//! `ReduceSum` and 18 for the others, as an input) and `ArgMax`/`ArgMin`.

use kiln_dialect::Value;
use kiln_dialect::ops::Op;

use super::super::error::OnnxError;
use super::super::importer::Cx;
use super::super::node::NodeCx;
use super::movement::axis;

/// `ReduceSum`, `ReduceMean`, `ReduceMax`, `ReduceMin`, `ReduceProd`,
/// `ReduceL2` (`sqrt(sum(x^2))`), `ReduceSumSquare` (`sum(x^2)`).
pub fn reduce(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    let axes_input_from = if n.op == "ReduceSum" { 13 } else { 18 };
    let axes = if n.opset < axes_input_from {
        n.only(&["axes", "keepdims"])?;
        n.ints("axes")?
    } else {
        n.only(&["keepdims", "noop_with_empty_axes"])?;
        cx.known_ints(n, 1, "axes")?
    };
    let keepdim = n.int("keepdims", 1)? != 0;
    let noop = n.int("noop_with_empty_axes", 0)? != 0;
    let mut x = cx.value(n, 0)?;
    let rank = cx.ty(x).rank();
    let axes: Vec<i64> = match axes {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|&a| axis(n, cx, a, rank).map(|a| a as i64))
            .collect::<Result<_, _>>()?,
        _ if noop => return Ok(x),
        _ => (0..rank as i64).collect(),
    };
    if matches!(n.op, "ReduceL2" | "ReduceSumSquare") {
        x = cx.add(n, Op::Mul, &[x, x])?;
    }
    let op = match n.op {
        "ReduceSum" | "ReduceL2" | "ReduceSumSquare" => Op::ReduceSum { axes, keepdim },
        "ReduceMean" => Op::ReduceMean { axes, keepdim },
        "ReduceMax" => Op::ReduceMax { axes, keepdim },
        "ReduceMin" => Op::ReduceMin { axes, keepdim },
        "ReduceProd" => Op::ReduceProd { axes, keepdim },
        other => unreachable!("reduce() called for {other}"),
    };
    let r = cx.add(n, op, &[x])?;
    if n.op == "ReduceL2" {
        return cx.add(n, Op::Sqrt, &[r]);
    }
    Ok(r)
}

/// `ArgMax`/`ArgMin {axis = 0, keepdims = 1}`; `ArgMin` is the first
/// maximum of `-x`.
pub fn arg(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&["axis", "keepdims", "select_last_index"])?;
    if n.int("select_last_index", 0)? != 0 {
        return Err(n.unsupported("select_last_index = 1"));
    }
    let mut x = cx.value(n, 0)?;
    let a = axis(n, cx, n.int("axis", 0)?, cx.ty(x).rank())? as i64;
    let keepdim = n.int("keepdims", 1)? != 0;
    if n.op == "ArgMin" {
        x = cx.add(n, Op::Neg, &[x])?;
    }
    cx.add(n, Op::ArgMax { axis: a, keepdim }, &[x])
}
