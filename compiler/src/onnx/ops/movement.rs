//! Shapes, constants and data movement: `Constant`, `ConstantOfShape`,
//! `Shape`, `Size`, `Range` (known at compile time), and `Reshape`,
//! `Flatten`, `Transpose`, `Squeeze`, `Unsqueeze`, `Concat`, `Split`,
//! `Slice`, `Gather`, `Expand`, `Tile`, `Pad` onto the dialect's movement ops.

use std::rc::Rc;

use kiln_dialect::interp::Tensor;
use kiln_dialect::ops::{Literal, Op, PadMode};
use kiln_dialect::shape::{Dim, Shape};
use kiln_dialect::{DType, Value};

use super::super::error::OnnxError;
use super::super::importer::{Cx, Dims, SymInt, Val};
use super::super::node::NodeCx;
use super::super::tensor;

/// ConstantOfShape results up to this many elements are kept known (for
/// shape computations); larger ones become a `constant` op of one number.
const KNOWN_LIMIT: usize = 4096;

fn known(t: Tensor) -> Vec<Val> {
    vec![Val::Const(Rc::new(t))]
}

fn ints_tensor(v: &[i64]) -> Tensor {
    Tensor::new(
        DType::I64,
        &[v.len()],
        v.iter().map(|&x| x as f64).collect(),
    )
}

/// Input `i` when it is a shape with symbolic dims.
fn dims_input(cx: &Cx, n: &NodeCx, i: usize) -> Result<Option<Rc<Dims>>, OnnxError> {
    match cx.get(n, i)? {
        Some(Val::Dims(d)) => Ok(Some(d)),
        _ => Ok(None),
    }
}

/// A dim of a target shape: a size or a symbol.
fn dim_of(n: &NodeCx, cx: &Cx, e: &SymInt) -> Result<Dim, OnnxError> {
    match e {
        SymInt::Int(d) if *d >= 0 => Ok(Dim::Static(*d as u64)),
        SymInt::Int(d) => Err(n.error(format!("negative dimension {d} in a shape"), cx.shapes(n))),
        SymInt::Sym(s) => Ok(Dim::Sym(s.clone())),
    }
}

/// Normalizes a possibly negative axis against `rank`.
pub fn axis(n: &NodeCx, cx: &Cx, a: i64, rank: usize) -> Result<usize, OnnxError> {
    let r = rank as i64;
    if a < -r || a >= r {
        return Err(n.error(
            format!("axis {a} is out of range for rank {rank}"),
            cx.shapes(n),
        ));
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

/// `Constant`: the tensor of whichever `value*` attribute is given.
pub fn constant(cx: &mut Cx, n: &NodeCx) -> Result<Vec<Val>, OnnxError> {
    let _ = cx;
    if let Some(t) = n.tensor("value")? {
        return Ok(known(tensor::read(t, std::path::Path::new("."))?));
    }
    if let Some(x) = n.float_opt("value_float")? {
        return Ok(known(Tensor::scalar(DType::F32, x as f64)));
    }
    if let Some(x) = n.int_opt("value_int")? {
        return Ok(known(Tensor::scalar(DType::I64, x as f64)));
    }
    if let Some(v) = n.floats("value_floats")? {
        return Ok(known(Tensor::new(
            DType::F32,
            &[v.len()],
            v.iter().map(|&x| x as f64).collect(),
        )));
    }
    if let Some(v) = n.ints("value_ints")? {
        return Ok(known(ints_tensor(&v)));
    }
    Err(n.unsupported("only the value, value_float(s) and value_int(s) forms are supported"))
}

/// `ConstantOfShape(shape) {value}`.
pub fn constant_of_shape(cx: &mut Cx, n: &NodeCx) -> Result<Vec<Val>, OnnxError> {
    n.only(&["value"])?;
    let entries = cx
        .known_shape(n, 0, "shape")?
        .ok_or_else(|| n.error("input `shape` is required", cx.shapes(n)))?;
    let (dtype, x) = match n.tensor("value")? {
        None => (DType::F32, 0.0),
        Some(t) => {
            let t = tensor::read(t, std::path::Path::new("."))?;
            if t.numel() != 1 {
                return Err(n.error("attribute `value` must hold one element", cx.shapes(n)));
            }
            (t.dtype, t.data[0])
        }
    };
    let shape_dims = entries
        .iter()
        .map(|e| dim_of(n, cx, e))
        .collect::<Result<Vec<_>, _>>()?;
    let ty = kiln_dialect::TensorType::new(dtype, Shape(shape_dims));
    match ty.shape.as_static() {
        Some(dims)
            if dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .is_some_and(|c| c <= KNOWN_LIMIT as u64) =>
        {
            let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
            let count = shape.iter().product();
            Ok(known(Tensor::new(dtype, &shape, vec![x; count])))
        }
        _ => Ok(vec![Val::Graph(cx.constant(Literal::Splat(x), ty))]),
    }
}

/// `Shape(x) {start, end}`: known when the dims are static, else a shape
/// with symbolic dims.
pub fn shape(cx: &mut Cx, n: &NodeCx) -> Result<Vec<Val>, OnnxError> {
    n.only(&["start", "end"])?;
    let ty = cx
        .input_type(n, 0)?
        .ok_or_else(|| n.error("input 0 is required", cx.shapes(n)))?;
    let rank = ty.rank() as i64;
    let clampi = |a: i64| {
        if a < 0 {
            (a + rank).clamp(0, rank)
        } else {
            a.clamp(0, rank)
        }
    };
    let start = clampi(n.int("start", 0)?) as usize;
    let end = clampi(n.int("end", rank)?) as usize;
    let items = ty
        .shape
        .dims()
        .get(start..end.max(start))
        .unwrap_or(&[])
        .iter()
        .map(|d| match d {
            Dim::Static(s) => SymInt::Int(*s as i64),
            Dim::Sym(s) => SymInt::Sym(s.clone()),
        })
        .collect();
    Ok(vec![
        Dims {
            items,
            scalar: false,
        }
        .into_val(),
    ])
}

/// `Size(x)`: the element count, known when the dims are static.
pub fn size(cx: &mut Cx, n: &NodeCx) -> Result<Vec<Val>, OnnxError> {
    n.only(&[])?;
    let ty = cx
        .input_type(n, 0)?
        .ok_or_else(|| n.error("input 0 is required", cx.shapes(n)))?;
    let count = ty
        .shape
        .numel()
        .ok_or_else(|| n.unsupported(format!("the size of {ty} is not known at compile time")))?;
    Ok(known(Tensor::scalar(DType::I64, count as f64)))
}

/// `Range(start, limit, delta)` of known scalars.
pub fn range(cx: &mut Cx, n: &NodeCx) -> Result<Vec<Val>, OnnxError> {
    n.only(&[])?;
    let mut s = Vec::new();
    let mut dtype = DType::I64;
    for (i, what) in ["start", "limit", "delta"].iter().enumerate() {
        let t = cx
            .known(n, i, what)?
            .ok_or_else(|| n.error(format!("input `{what}` is required"), cx.shapes(n)))?;
        if t.numel() != 1 {
            return Err(n.error(format!("input `{what}` must be a scalar"), cx.shapes(n)));
        }
        dtype = t.dtype;
        s.push(t.data[0]);
    }
    let (start, limit, delta) = (s[0], s[1], s[2]);
    if delta == 0.0 {
        return Err(n.error("delta must not be 0", cx.shapes(n)));
    }
    let count = ((limit - start) / delta).ceil().max(0.0);
    if count > 1e7 {
        return Err(n.error(format!("{count} elements are too many"), cx.shapes(n)));
    }
    let count = count as usize;
    let data = (0..count).map(|i| start + i as f64 * delta).collect();
    Ok(known(Tensor::new(dtype, &[count], data)))
}

/// `Reshape(x, shape) {allowzero}`: 0 copies the input dim (unless
/// `allowzero`), -1 is inferred.
pub fn reshape(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    let x = cx.value(n, 0)?;
    let target: Vec<SymInt> = if n.opset < 5 {
        n.ints("shape")?
            .map(|v| v.into_iter().map(SymInt::Int).collect())
    } else {
        n.only(&["allowzero"])?;
        cx.known_shape(n, 1, "shape")?
    }
    .ok_or_else(|| n.error("the target shape is required", cx.shapes(n)))?;
    let allowzero = n.int("allowzero", 0)? != 0;
    let ty = cx.ty(x);
    let in_dims = ty.shape.dims().to_vec();
    let mut dims: Vec<Option<Dim>> = Vec::new();
    let mut infer = None;
    for (i, d) in target.iter().enumerate() {
        match d {
            SymInt::Sym(s) => dims.push(Some(Dim::Sym(s.clone()))),
            SymInt::Int(-1) if infer.is_none() => {
                infer = Some(i);
                dims.push(None);
            }
            SymInt::Int(0) if !allowzero => {
                dims.push(Some(in_dims.get(i).cloned().ok_or_else(|| {
                    n.error(
                        format!("shape {target:?} copies dim {i}, which the input does not have"),
                        cx.shapes(n),
                    )
                })?))
            }
            SymInt::Int(d) if *d >= 0 => dims.push(Some(Dim::Static(*d as u64))),
            SymInt::Int(_) => {
                return Err(n.error(format!("invalid target shape {target:?}"), cx.shapes(n)));
            }
        }
    }
    if let Some(i) = infer {
        // the symbols on both sides must cancel; the static parts divide
        let mut in_syms: Vec<&str> = in_dims
            .iter()
            .filter_map(|d| match d {
                Dim::Sym(s) => Some(s.as_str()),
                Dim::Static(_) => None,
            })
            .collect();
        let mut out_syms: Vec<&str> = dims
            .iter()
            .flatten()
            .filter_map(|d| match d {
                Dim::Sym(s) => Some(s.as_str()),
                Dim::Static(_) => None,
            })
            .collect();
        in_syms.sort_unstable();
        out_syms.sort_unstable();
        if in_syms != out_syms {
            return Err(n.unsupported(format!(
                "inferring a dim (-1) of a reshape of {ty} to {target:?}: the symbolic dims do not cancel"
            )));
        }
        let product = |ds: &mut dyn Iterator<Item = &Dim>| {
            ds.filter_map(Dim::as_static)
                .try_fold(1u64, |a, d| a.checked_mul(d))
        };
        let too_large = || n.error(format!("cannot reshape {ty} to {target:?}"), cx.shapes(n));
        let total = product(&mut in_dims.iter()).ok_or_else(too_large)?;
        let known = product(&mut dims.iter().flatten()).ok_or_else(too_large)?;
        if known == 0 || total % known != 0 {
            return Err(too_large());
        }
        dims[i] = Some(Dim::Static(total / known));
    }
    let shape: Vec<Dim> = dims
        .into_iter()
        .map(|d| d.expect("every dim is set"))
        .collect();
    if shape.as_slice() == in_dims.as_slice() {
        return Ok(x);
    }
    cx.add(n, Op::Reshape { shape }, &[x])
}

/// The product of a group of dims: static, or the one dim of a group of one.
fn group(n: &NodeCx, dims: &[Dim]) -> Result<Dim, OnnxError> {
    if dims.len() == 1 {
        return Ok(dims[0].clone());
    }
    let mut p = 1u64;
    for d in dims {
        match d {
            Dim::Static(s) => {
                p = p
                    .checked_mul(*s)
                    .ok_or_else(|| n.unsupported("a flattened size past 2^64"))?
            }
            Dim::Sym(s) => {
                return Err(n.unsupported(format!("flattening symbolic dim `{s}` with others")));
            }
        }
    }
    Ok(Dim::Static(p))
}

/// `Flatten(x) {axis = 1}`: `[prod(dims[..axis]), prod(dims[axis..])]`.
pub fn flatten(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&["axis"])?;
    let x = cx.value(n, 0)?;
    let ty = cx.ty(x);
    let rank = ty.rank();
    let a = n.int("axis", 1)?;
    let a = if a == rank as i64 {
        rank
    } else {
        axis(n, cx, a, rank.max(1))?
    };
    let dims = ty.shape.dims();
    let shape = vec![group(n, &dims[..a])?, group(n, &dims[a..])?];
    if shape.as_slice() == dims {
        return Ok(x);
    }
    cx.add(n, Op::Reshape { shape }, &[x])
}

/// `Transpose(x) {perm}`; the default reverses the axes.
pub fn transpose(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&["perm"])?;
    let x = cx.value(n, 0)?;
    let rank = cx.ty(x).rank() as i64;
    let perm = n.ints("perm")?.unwrap_or_else(|| (0..rank).rev().collect());
    if perm.iter().enumerate().all(|(i, &p)| p == i as i64) {
        return Ok(x);
    }
    cx.add(n, Op::Transpose { perm }, &[x])
}

/// Axes given as an attribute before `attr_until`, as input 1 from then on.
fn axes_arg(cx: &Cx, n: &NodeCx, attr_until: i64) -> Result<Option<Vec<i64>>, OnnxError> {
    if n.opset < attr_until {
        n.ints("axes")
    } else {
        cx.known_ints(n, 1, "axes")
    }
}

/// `Squeeze(x, axes?)`: without axes, every static size-1 dim.
pub fn squeeze(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(if n.opset < 13 { &["axes"] } else { &[] })?;
    let x = cx.value(n, 0)?;
    let ty = cx.ty(x);
    let rank = ty.rank();
    let axes: Vec<i64> = match axes_arg(cx, n, 13)? {
        Some(a) => a
            .iter()
            .map(|&a| axis(n, cx, a, rank).map(|a| a as i64))
            .collect::<Result<_, _>>()?,
        None => ty
            .shape
            .dims()
            .iter()
            .enumerate()
            .filter(|(_, d)| **d == Dim::Static(1))
            .map(|(i, _)| i as i64)
            .collect(),
    };
    if axes.is_empty() {
        return Ok(x);
    }
    cx.add(n, Op::Squeeze { axes }, &[x])
}

/// `Unsqueeze(x, axes)`: axes are positions in the result.
pub fn unsqueeze(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(if n.opset < 13 { &["axes"] } else { &[] })?;
    let x = cx.value(n, 0)?;
    let a = axes_arg(cx, n, 13)?.ok_or_else(|| n.error("`axes` is required", cx.shapes(n)))?;
    let out_rank = cx.ty(x).rank() + a.len();
    let mut axes: Vec<i64> = a
        .iter()
        .map(|&a| axis(n, cx, a, out_rank).map(|a| a as i64))
        .collect::<Result<_, _>>()?;
    axes.sort_unstable();
    cx.add(n, Op::Unsqueeze { axes }, &[x])
}

/// `Concat(xs...) {axis}`.
pub fn concat(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&["axis"])?;
    let a = n
        .int_opt("axis")?
        .ok_or_else(|| n.error("attribute `axis` is required", cx.shapes(n)))?;
    let mut xs = Vec::new();
    for i in 0..n.input_count() {
        if let Some(v) = cx.opt_value(n, i)? {
            // zero-size pieces add nothing
            if cx.ty(v).shape.numel() != Some(0) {
                xs.push(v);
            }
        }
    }
    if xs.is_empty() {
        return Err(n.error("needs at least one non-empty input", cx.shapes(n)));
    }
    if xs.len() == 1 {
        return Ok(xs[0]);
    }
    let rank = cx.ty(xs[0]).rank();
    let a = axis(n, cx, a, rank)? as i64;
    cx.add(n, Op::Concat { axis: a }, &xs)
}

/// `Split(x, split?) {axis, num_outputs}`.
pub fn split(cx: &mut Cx, n: &NodeCx) -> Result<Vec<Val>, OnnxError> {
    n.only(&["axis", "split", "num_outputs"])?;
    let x = cx.value(n, 0)?;
    let ty = cx.ty(x);
    let a = axis(n, cx, n.int("axis", 0)?, ty.rank())?;
    let outputs = n.proto.output.len();
    let sizes = if n.opset < 13 {
        n.ints("split")?
    } else {
        cx.known_ints(n, 1, "split")?
    };
    let sizes = match sizes {
        Some(s) => s,
        None => {
            let len = match ty.shape.dims()[a] {
                Dim::Static(s) => s as i64,
                Dim::Sym(_) => return Err(n.unsupported("splitting a symbolic axis")),
            };
            let k = n.int("num_outputs", outputs as i64)?;
            if k != outputs as i64 || k < 1 {
                return Err(n.error(
                    format!("num_outputs = {k}, but the node has {outputs} outputs"),
                    cx.shapes(n),
                ));
            }
            let chunk = (len + k - 1) / k;
            (0..k).map(|i| (len - i * chunk).clamp(0, chunk)).collect()
        }
    };
    let vs = cx.add_n(
        n,
        Op::Split {
            axis: a as i64,
            sizes,
        },
        &[x],
    )?;
    Ok(vs.into_iter().map(Val::Graph).collect())
}

/// `Slice`: attributes before opset 10, known inputs from then on.
pub fn slice(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    let x = cx.value(n, 0)?;
    let rank = cx.ty(x).rank();
    let (starts, ends, axes, steps) = if n.opset < 10 {
        n.only(&["starts", "ends", "axes"])?;
        (n.ints("starts")?, n.ints("ends")?, n.ints("axes")?, None)
    } else {
        n.only(&[])?;
        (
            cx.known_ints(n, 1, "starts")?,
            cx.known_ints(n, 2, "ends")?,
            cx.known_ints(n, 3, "axes")?,
            cx.known_ints(n, 4, "steps")?,
        )
    };
    let (Some(starts), Some(ends)) = (starts, ends) else {
        return Err(n.error("`starts` and `ends` are required", cx.shapes(n)));
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let axes = axes
        .iter()
        .map(|&a| axis(n, cx, a, rank).map(|a| a as i64))
        .collect::<Result<Vec<_>, _>>()?;
    let steps = steps.unwrap_or_default();
    if steps.iter().all(|&s| s == 1) && {
        let ty = cx.ty(x);
        axes.iter()
            .zip(starts.iter().zip(&ends))
            .all(|(&a, (&s, &e))| {
                s == 0 && matches!(ty.shape.dims()[a as usize], Dim::Static(d) if e >= d as i64)
            })
    } {
        return Ok(x);
    }
    cx.add(
        n,
        Op::Slice {
            axes,
            starts,
            ends,
            steps,
        },
        &[x],
    )
}

/// `Gather(x, indices) {axis = 0}`.
pub fn gather(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&["axis"])?;
    let x = cx.value(n, 0)?;
    let i = cx.value(n, 1)?;
    let a = axis(n, cx, n.int("axis", 0)?, cx.ty(x).rank())? as i64;
    cx.add(n, Op::Gather { axis: a }, &[x, i])
}

/// `Expand(x, shape)`: broadcasts both ways, as ONNX says.
pub fn expand(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&[])?;
    let x = cx.value(n, 0)?;
    let entries = cx
        .known_shape(n, 1, "shape")?
        .ok_or_else(|| n.error("input `shape` is required", cx.shapes(n)))?;
    let dims = entries
        .iter()
        .map(|e| dim_of(n, cx, e))
        .collect::<Result<Vec<_>, _>>()?;
    let ty = cx.ty(x);
    let target = Shape(dims.clone());
    let shape = ty.shape.broadcast(&target).map_err(|e| {
        n.error(
            format!("{} does not broadcast with {dims:?}: {e}", ty.shape),
            cx.shapes(n),
        )
    })?;
    if shape == ty.shape {
        return Ok(x);
    }
    cx.add(
        n,
        Op::Expand {
            shape: shape.dims().to_vec(),
        },
        &[x],
    )
}

/// `Tile(x, repeats)`: reshape to `[1, d0, 1, d1, ...]`, expand to
/// `[r0, d0, r1, d1, ...]`, reshape to `[r0 * d0, ...]`.
pub fn tile(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&[])?;
    let x = cx.value(n, 0)?;
    let reps = cx
        .known_ints(n, 1, "repeats")?
        .ok_or_else(|| n.error("input `repeats` is required", cx.shapes(n)))?;
    let dims = cx.static_dims(n, x)?;
    if reps.len() != dims.len() || reps.iter().any(|&r| r < 0) {
        return Err(n.error(
            format!("repeats {reps:?} do not fit rank {}", dims.len()),
            cx.shapes(n),
        ));
    }
    if reps.iter().all(|&r| r == 1) {
        return Ok(x);
    }
    let mut split = Vec::new();
    let mut wide = Vec::new();
    let mut out = Vec::new();
    for (&d, &r) in dims.iter().zip(&reps) {
        split.extend([Dim::Static(1), Dim::Static(d)]);
        wide.extend([Dim::Static(r as u64), Dim::Static(d)]);
        let size = (r as u64).checked_mul(d).ok_or_else(|| {
            n.error(
                format!("repeats {reps:?} make the result too large"),
                cx.shapes(n),
            )
        })?;
        out.push(Dim::Static(size));
    }
    let a = cx.add(n, Op::Reshape { shape: split }, &[x])?;
    let b = cx.add(n, Op::Expand { shape: wide }, &[a])?;
    cx.add(n, Op::Reshape { shape: out }, &[b])
}

/// `Pad`: attributes before opset 11, known inputs from then on.
pub fn pad(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    let x = cx.value(n, 0)?;
    let rank = cx.ty(x).rank();
    let mode = n.string("mode", "constant")?;
    let (pads, value) = if n.opset < 11 {
        n.only(&["pads", "mode", "value"])?;
        (n.ints("pads")?, n.float("value", 0.0)? as f64)
    } else {
        n.only(&["mode"])?;
        let value = cx
            .known(n, 2, "constant_value")?
            .map_or(0.0, |t| t.data.first().copied().unwrap_or(0.0));
        let pads = cx.known_ints(n, 1, "pads")?;
        let axes = cx.known_ints(n, 3, "axes")?;
        let pads = match (pads, axes) {
            (Some(p), Some(axes)) => {
                let mut full = vec![0; 2 * rank];
                let k = axes.len();
                if p.len() != 2 * k {
                    return Err(
                        n.error(format!("pads {p:?} do not fit axes {axes:?}"), cx.shapes(n))
                    );
                }
                for (j, &a) in axes.iter().enumerate() {
                    let a = axis(n, cx, a, rank)?;
                    full[a] = p[j];
                    full[rank + a] = p[k + j];
                }
                Some(full)
            }
            (p, None) => p,
            (None, Some(_)) => None,
        };
        (pads, value)
    };
    let pads = pads.ok_or_else(|| n.error("`pads` is required", cx.shapes(n)))?;
    let mode = match mode.as_str() {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        other => return Err(n.unsupported(format!("mode = \"{other}\""))),
    };
    if pads.iter().all(|&p| p == 0) {
        return Ok(x);
    }
    cx.add(n, Op::Pad { pads, mode, value }, &[x])
}

/// Shape arithmetic on shapes with symbolic dims: `Gather` with known
/// indices, `Unsqueeze` of a scalar, `Squeeze` of one element, `Slice`
/// with step 1, `Concat` with known integers, `Cast` to an integer type.
/// `None` when no input of the node is such a shape, or the op uses it as
/// a shape itself (`Reshape`, `Expand`, `ConstantOfShape`).
pub fn on_dims(cx: &Cx, n: &NodeCx) -> Result<Option<Val>, OnnxError> {
    let any = (0..n.input_count()).any(|i| matches!(cx.get(n, i), Ok(Some(Val::Dims(_)))));
    if !any {
        return Ok(None);
    }
    let Some(d) = dims_input(cx, n, 0)? else {
        if n.op == "Concat" {
            return concat_dims(cx, n).map(Some);
        }
        return Ok(None);
    };
    let items = &d.items;
    let out = match n.op {
        "Cast" => {
            let to = n.int("to", 0)? as i32;
            match tensor::dtype_of(to) {
                Some(DType::I64 | DType::I32) => (*d).clone(),
                _ => {
                    return Err(
                        n.unsupported("casting a shape with symbolic dims to a non-integer type")
                    );
                }
            }
        }
        "Gather" => {
            n.only(&["axis"])?;
            let idx = cx
                .known(n, 1, "indices")?
                .ok_or_else(|| n.error("input `indices` is required", cx.shapes(n)))?;
            if d.scalar || idx.shape.len() > 1 {
                return Err(n.unsupported(
                    "gathering from a shape with symbolic dims other than by a scalar or a vector",
                ));
            }
            let len = items.len() as i64;
            let mut picked = Vec::new();
            for &i in &idx.data {
                let i = i as i64;
                let j = if i < 0 { i + len } else { i };
                if !(0..len).contains(&j) {
                    return Err(n.error(
                        format!("index {i} is out of range for a shape of {len} dims"),
                        cx.shapes(n),
                    ));
                }
                picked.push(items[j as usize].clone());
            }
            Dims {
                items: picked,
                scalar: idx.shape.is_empty(),
            }
        }
        "Unsqueeze" if d.scalar => {
            let axes = if n.opset < 13 {
                n.ints("axes")?
            } else {
                cx.known_ints(n, 1, "axes")?
            };
            if !matches!(axes.as_deref(), Some([0]) | Some([-1])) {
                return Err(n.unsupported("unsqueezing a symbolic dim other than to a vector"));
            }
            Dims {
                items: items.clone(),
                scalar: false,
            }
        }
        "Squeeze" if !d.scalar && items.len() == 1 => Dims {
            items: items.clone(),
            scalar: true,
        },
        "Slice" if !d.scalar => {
            let (starts, ends, axes, steps) = if n.opset < 10 {
                (n.ints("starts")?, n.ints("ends")?, n.ints("axes")?, None)
            } else {
                (
                    cx.known_ints(n, 1, "starts")?,
                    cx.known_ints(n, 2, "ends")?,
                    cx.known_ints(n, 3, "axes")?,
                    cx.known_ints(n, 4, "steps")?,
                )
            };
            let (Some([start]), Some([end])) = (starts.as_deref(), ends.as_deref()) else {
                return Err(
                    n.unsupported("slicing a shape with symbolic dims other than on one axis")
                );
            };
            if !matches!(axes.as_deref(), None | Some([0]) | Some([-1]))
                || !matches!(steps.as_deref(), None | Some([1]))
            {
                return Err(
                    n.unsupported("slicing a shape with symbolic dims other than with step 1")
                );
            }
            let len = items.len() as i64;
            let clampi = |v: i64| {
                if v < 0 {
                    (v.saturating_add(len)).clamp(0, len)
                } else {
                    v.clamp(0, len)
                }
            };
            let (a, b) = (clampi(*start) as usize, clampi(*end) as usize);
            Dims {
                items: items.get(a..b.max(a)).unwrap_or(&[]).to_vec(),
                scalar: false,
            }
        }
        "Concat" => return concat_dims(cx, n).map(Some),
        _ => return Ok(None),
    };
    Ok(Some(out.into_val()))
}

fn concat_dims(cx: &Cx, n: &NodeCx) -> Result<Val, OnnxError> {
    let mut items = Vec::new();
    for i in 0..n.input_count() {
        match cx.get(n, i)? {
            None => {}
            Some(Val::Dims(d)) if !d.scalar => items.extend(d.items.iter().cloned()),
            Some(Val::Const(t)) if t.shape.len() == 1 && t.dtype.is_int() => {
                items.extend(t.data.iter().map(|&v| SymInt::Int(v as i64)))
            }
            Some(_) => {
                return Err(n.unsupported(
                    "concatenating a shape with symbolic dims with a value computed at run time",
                ));
            }
        }
    }
    Ok(Dims {
        items,
        scalar: false,
    }
    .into_val())
}
