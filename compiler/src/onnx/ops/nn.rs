//! Neural-network ops: `Softmax`/`LogSoftmax` (with the 2-D coercion of
//! opsets before 13), `MatMul`, `Gemm`, `Conv` (1-D and 2-D), pooling,
//! `BatchNormalization`, `InstanceNormalization`, `LayerNormalization`
//! and `LRN` (decomposed: an average pool of squares over channels).

use kiln_dialect::ops::Op;
use kiln_dialect::shape::Dim;
use kiln_dialect::{TensorType, Value};

use super::super::error::OnnxError;
use super::super::importer::{Cx, Val};
use super::super::node::NodeCx;
use super::movement::axis;

/// `Softmax`/`LogSoftmax {axis}`: before opset 13 the input is seen as 2-D
/// `[prod(dims[..axis]), prod(dims[axis..])]` (axis default 1); from 13 on,
/// one axis (default -1).
pub fn softmax(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&["axis"])?;
    let x = cx.value(n, 0)?;
    let ty = cx.ty(x);
    let rank = ty.rank();
    let make = |a: i64| {
        if n.op == "Softmax" {
            Op::Softmax { axis: a }
        } else {
            Op::LogSoftmax { axis: a }
        }
    };
    if n.opset >= 13 {
        let a = axis(n, cx, n.int("axis", -1)?, rank)? as i64;
        return cx.add(n, make(a), &[x]);
    }
    let a = axis(n, cx, n.int("axis", 1)?, rank)?;
    if a == rank - 1 {
        return cx.add(n, make(-1), &[x]);
    }
    let dims = cx.static_dims(n, x)?;
    let product = |ds: &[u64]| {
        ds.iter()
            .try_fold(1u64, |p, &d| p.checked_mul(d))
            .ok_or_else(|| n.error("the input is too large", cx.shapes(n)))
    };
    let rows = product(&dims[..a])?;
    let cols = product(&dims[a..])?;
    let flat = cx.add(
        n,
        Op::Reshape {
            shape: vec![Dim::Static(rows), Dim::Static(cols)],
        },
        &[x],
    )?;
    let s = cx.add(n, make(-1), &[flat])?;
    cx.add(
        n,
        Op::Reshape {
            shape: ty.shape.dims().to_vec(),
        },
        &[s],
    )
}

/// `MatMul(a, b)`: NumPy semantics, as the dialect's `matmul`.
pub fn matmul(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&[])?;
    let a = cx.value(n, 0)?;
    let b = cx.value(n, 1)?;
    cx.add(
        n,
        Op::Matmul {
            transpose_a: false,
            transpose_b: false,
        },
        &[a, b],
    )
}

/// `Gemm(a, b, c?) {alpha = 1, beta = 1, transA = 0, transB = 0}`:
/// `alpha * op(a) @ op(b) + beta * c`.
pub fn gemm(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&["alpha", "beta", "transA", "transB"])?;
    let a = cx.value(n, 0)?;
    let b = cx.value(n, 1)?;
    let alpha = n.float("alpha", 1.0)? as f64;
    let beta = n.float("beta", 1.0)? as f64;
    let mut y = cx.add(
        n,
        Op::Matmul {
            transpose_a: n.int("transA", 0)? != 0,
            transpose_b: n.int("transB", 0)? != 0,
        },
        &[a, b],
    )?;
    let dt = cx.ty(y).dtype;
    if alpha != 1.0 {
        let s = cx.scalar(dt, alpha);
        y = cx.add(n, Op::Mul, &[y, s])?;
    }
    if let Some(c) = cx.opt_value(n, 2)?
        && beta != 0.0
    {
        let c = if beta != 1.0 {
            let s = cx.scalar(dt, beta);
            cx.add(n, Op::Mul, &[c, s])?
        } else {
            c
        };
        y = cx.add(n, Op::Add, &[y, c])?;
    }
    Ok(y)
}

/// The pads of one spatial axis under `auto_pad`: `[begin, end]`.
fn auto_pad(mode: &str, size: u64, k: i64, stride: i64, dil: i64) -> Option<[i64; 2]> {
    // in i128, so that absurd attribute values cannot overflow
    let (k, stride, dil, size) = (
        k as i128,
        (stride as i128).max(1),
        dil as i128,
        size as i128,
    );
    let eff = (k - 1) * dil + 1;
    let out = (size + stride - 1) / stride;
    let total = ((out - 1) * stride + eff - size).clamp(0, i64::MAX as i128) as i64;
    match mode {
        "SAME_UPPER" => Some([total / 2, total - total / 2]),
        "SAME_LOWER" => Some([total - total / 2, total / 2]),
        "VALID" => Some([0, 0]),
        _ => None,
    }
}

/// Spatial attributes of a convolution or pool, as the dialect wants them
/// for 2-D: strides, `[top, left, bottom, right]` pads, dilations.
struct Window {
    kernel: Vec<i64>,
    strides: Vec<i64>,
    pads: Vec<i64>,
    dilations: Vec<i64>,
}

fn window(cx: &Cx, n: &NodeCx, x: Value, kernel: Vec<i64>) -> Result<Window, OnnxError> {
    let sp = kernel.len();
    let strides = n.ints("strides")?.unwrap_or_else(|| vec![1; sp]);
    let dilations = n.ints("dilations")?.unwrap_or_else(|| vec![1; sp]);
    if strides.len() != sp || dilations.len() != sp {
        return Err(n.error(
            "strides and dilations must have one entry per spatial axis",
            cx.shapes(n),
        ));
    }
    let mode = n.string("auto_pad", "NOTSET")?;
    let pads = match mode.as_str() {
        "NOTSET" => n.ints("pads")?.unwrap_or_else(|| vec![0; 2 * sp]),
        "SAME_UPPER" | "SAME_LOWER" | "VALID" => {
            let dims = cx.static_dims(n, x)?;
            let mut begin = Vec::new();
            let mut end = Vec::new();
            for i in 0..sp {
                let [b, e] = auto_pad(&mode, dims[2 + i], kernel[i], strides[i], dilations[i])
                    .expect("a known auto_pad mode");
                begin.push(b);
                end.push(e);
            }
            begin.extend(end);
            begin
        }
        other => return Err(n.unsupported(format!("auto_pad = \"{other}\""))),
    };
    if pads.len() != 2 * sp {
        return Err(n.error(
            format!("pads {pads:?} must have two entries per spatial axis"),
            cx.shapes(n),
        ));
    }
    Ok(Window {
        kernel,
        strides,
        pads,
        dilations,
    })
}

/// The spatial rank of a value of rank `rank` (N, C, spatial...), checked
/// to be 1 or 2.
fn spatial(cx: &Cx, n: &NodeCx, v: Value) -> Result<usize, OnnxError> {
    match cx.ty(v).rank() {
        3 => Ok(1),
        4 => Ok(2),
        r => Err(n.unsupported(format!(
            "{}-D inputs (kiln has 1-D and 2-D {} only)",
            r.saturating_sub(2),
            n.op
        ))),
    }
}

/// 1-D windows as 2-D ones with a height of 1.
fn to_2d(w: Window) -> Window {
    Window {
        kernel: vec![1, w.kernel[0]],
        strides: vec![1, w.strides[0]],
        pads: vec![0, w.pads[0], 0, w.pads[1]],
        dilations: vec![1, w.dilations[0]],
    }
}

/// `Conv(x, w, b?) {auto_pad, dilations, group, kernel_shape, pads, strides}`.
pub fn conv(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&[
        "auto_pad",
        "dilations",
        "group",
        "kernel_shape",
        "pads",
        "strides",
    ])?;
    let mut x = cx.value(n, 0)?;
    let mut w = cx.value(n, 1)?;
    let b = cx.opt_value(n, 2)?;
    let sp = spatial(cx, n, x)?;
    let wdims = cx.ty(w).shape.dims().to_vec();
    let kernel = match n.ints("kernel_shape")? {
        Some(k) => k,
        None => wdims
            .iter()
            .skip(2)
            .map(|d| match d {
                Dim::Static(s) => Ok(*s as i64),
                Dim::Sym(_) => Err(n.unsupported("a weight with symbolic kernel dims")),
            })
            .collect::<Result<_, _>>()?,
    };
    if kernel.len() != sp {
        return Err(n.error(
            format!("kernel_shape {kernel:?} does not fit a {sp}-D convolution"),
            cx.shapes(n),
        ));
    }
    let mut win = window(cx, n, x, kernel)?;
    if sp == 1 {
        win = to_2d(win);
        x = cx.add(n, Op::Unsqueeze { axes: vec![2] }, &[x])?;
        w = cx.add(n, Op::Unsqueeze { axes: vec![2] }, &[w])?;
    }
    let mut operands = vec![x, w];
    operands.extend(b);
    let y = cx.add(
        n,
        Op::Conv2d {
            stride: win.strides,
            padding: win.pads,
            dilation: win.dilations,
            groups: n.int("group", 1)?,
        },
        &operands,
    )?;
    if sp == 1 {
        return cx.add(n, Op::Squeeze { axes: vec![2] }, &[y]);
    }
    Ok(y)
}

/// `ConvTranspose(x, w, b?) {dilations, group, kernel_shape,
/// output_padding, pads, strides}` in 2-D; `w` is `[C, O/group, KH, KW]`
/// as in the dialect. `auto_pad` and `output_shape` are not imported.
pub fn conv_transpose(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&[
        "auto_pad",
        "dilations",
        "group",
        "kernel_shape",
        "output_padding",
        "pads",
        "strides",
    ])?;
    if n.string("auto_pad", "NOTSET")? != "NOTSET" {
        return Err(n.unsupported("auto_pad other than NOTSET"));
    }
    let x = cx.value(n, 0)?;
    let w = cx.value(n, 1)?;
    let b = cx.opt_value(n, 2)?;
    if spatial(cx, n, x)? != 2 {
        return Err(n.unsupported("1-D transposed convolutions"));
    }
    let strides = n.ints("strides")?.unwrap_or_else(|| vec![1, 1]);
    let dilations = n.ints("dilations")?.unwrap_or_else(|| vec![1, 1]);
    let pads = n.ints("pads")?.unwrap_or_else(|| vec![0; 4]);
    let output_padding = n.ints("output_padding")?.unwrap_or_else(|| vec![0, 0]);
    let mut operands = vec![x, w];
    operands.extend(b);
    cx.add(
        n,
        Op::ConvTranspose2d {
            stride: strides,
            padding: pads,
            output_padding,
            dilation: dilations,
            groups: n.int("group", 1)?,
        },
        &operands,
    )
}

/// `MaxPool`, `AveragePool` over 2-D windows.
pub fn pool(cx: &mut Cx, n: &NodeCx) -> Result<Vec<Val>, OnnxError> {
    let max = n.op == "MaxPool";
    if max {
        n.only(&[
            "auto_pad",
            "ceil_mode",
            "dilations",
            "kernel_shape",
            "pads",
            "storage_order",
            "strides",
        ])?;
        if n.output(1).is_some() {
            return Err(n.unsupported("the Indices output"));
        }
    } else {
        n.only(&[
            "auto_pad",
            "ceil_mode",
            "count_include_pad",
            "dilations",
            "kernel_shape",
            "pads",
            "strides",
        ])?;
    }
    let x = cx.value(n, 0)?;
    if spatial(cx, n, x)? != 2 {
        return Err(n.unsupported("1-D pooling"));
    }
    let kernel = n
        .ints("kernel_shape")?
        .ok_or_else(|| n.error("attribute `kernel_shape` is required", cx.shapes(n)))?;
    if kernel.len() != 2 {
        return Err(n.error(
            format!("kernel_shape {kernel:?} must have 2 entries"),
            cx.shapes(n),
        ));
    }
    let win = window(cx, n, x, kernel)?;
    let ceil_mode = n.int("ceil_mode", 0)? != 0;
    let op = if max {
        Op::MaxPool2d {
            kernel: win.kernel,
            stride: win.strides,
            padding: win.pads,
            dilation: win.dilations,
            ceil_mode,
        }
    } else {
        if win.dilations.iter().any(|&d| d != 1) {
            return Err(n.unsupported("dilations other than 1 in AveragePool"));
        }
        Op::AvgPool2d {
            kernel: win.kernel,
            stride: win.strides,
            padding: win.pads,
            ceil_mode,
            count_include_pad: n.int("count_include_pad", 0)? != 0,
        }
    };
    Ok(vec![Val::Graph(cx.add(n, op, &[x])?)])
}

/// `GlobalAveragePool`, `GlobalMaxPool`.
pub fn global_pool(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&[])?;
    let x = cx.value(n, 0)?;
    let op = if n.op == "GlobalAveragePool" {
        Op::GlobalAvgPool
    } else {
        Op::GlobalMaxPool
    };
    cx.add(n, op, &[x])
}

/// `BatchNormalization(x, scale, b, mean, var) {epsilon = 1e-5}` at inference.
pub fn batch_norm(cx: &mut Cx, n: &NodeCx) -> Result<Vec<Val>, OnnxError> {
    n.only(&["epsilon", "momentum", "spatial", "training_mode"])?;
    if n.int("spatial", 1)? != 1 {
        return Err(n.unsupported("spatial = 0"));
    }
    if n.int("training_mode", 0)? != 0 || (1..5).any(|i| n.output(i).is_some()) {
        return Err(n.unsupported("training mode (running statistics outputs)"));
    }
    let mut vs = Vec::new();
    for i in 0..5 {
        vs.push(cx.value(n, i)?);
    }
    let eps = n.float("epsilon", 1e-5)? as f64;
    Ok(vec![Val::Graph(cx.add(n, Op::BatchNorm { eps }, &vs)?)])
}

/// `InstanceNormalization(x, scale, b) {epsilon = 1e-5}`: a group norm with
/// one group per channel.
pub fn instance_norm(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&["epsilon"])?;
    let x = cx.value(n, 0)?;
    let s = cx.value(n, 1)?;
    let b = cx.value(n, 2)?;
    let c = match cx.ty(x).shape.dims().get(1) {
        Some(Dim::Static(c)) => *c as i64,
        _ => return Err(n.unsupported("a symbolic or missing channel axis")),
    };
    let eps = n.float("epsilon", 1e-5)? as f64;
    cx.add(n, Op::GroupNorm { groups: c, eps }, &[x, s, b])
}

/// `LayerNormalization(x, scale, b?) {axis = -1, epsilon = 1e-5}` (opset 17).
pub fn layer_norm(cx: &mut Cx, n: &NodeCx) -> Result<Vec<Val>, OnnxError> {
    n.only(&["axis", "epsilon", "stash_type"])?;
    if n.output(1).is_some() || n.output(2).is_some() {
        return Err(n.unsupported("the Mean and InvStdDev outputs"));
    }
    let x = cx.value(n, 0)?;
    let mut vs = vec![x, cx.value(n, 1)?];
    vs.extend(cx.opt_value(n, 2)?);
    let rank = cx.ty(x).rank();
    let a = axis(n, cx, n.int("axis", -1)?, rank)? as i64;
    let eps = n.float("epsilon", 1e-5)? as f64;
    Ok(vec![Val::Graph(cx.add(
        n,
        Op::LayerNorm { axis: a, eps },
        &vs,
    )?)])
}

/// `LRN(x) {size, alpha = 1e-4, beta = 0.75, bias = 1}`:
/// `x / (bias + alpha * mean of x^2 over size channels)^beta`, the mean as
/// an average pool (padding counted) over `[N, 1, C, H*W]`.
pub fn lrn(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    n.only(&["size", "alpha", "beta", "bias"])?;
    let x = cx.value(n, 0)?;
    let size = n
        .int_opt("size")?
        .filter(|&s| s > 0)
        .ok_or_else(|| n.error("attribute `size` must be a positive integer", cx.shapes(n)))?;
    let alpha = n.float("alpha", 1e-4)? as f64;
    let beta = n.float("beta", 0.75)? as f64;
    let bias = n.float("bias", 1.0)? as f64;
    let ty: TensorType = cx.ty(x);
    let dims = cx.static_dims(n, x)?;
    if dims.len() < 3 {
        return Err(n.error("LRN needs an input of rank 3 or more", cx.shapes(n)));
    }
    let rest = dims[2..]
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| n.error("the input is too large", cx.shapes(n)))?;
    let dt = ty.dtype;
    let sq = cx.add(n, Op::Mul, &[x, x])?;
    let r = cx.add(
        n,
        Op::Reshape {
            shape: vec![
                Dim::Static(dims[0]),
                Dim::Static(1),
                Dim::Static(dims[1]),
                Dim::Static(rest),
            ],
        },
        &[sq],
    )?;
    let before = (size - 1) / 2;
    let avg = cx.add(
        n,
        Op::AvgPool2d {
            kernel: vec![size, 1],
            stride: vec![1, 1],
            padding: vec![before, 0, size - 1 - before, 0],
            ceil_mode: false,
            count_include_pad: true,
        },
        &[r],
    )?;
    let avg = cx.add(
        n,
        Op::Reshape {
            shape: ty.shape.dims().to_vec(),
        },
        &[avg],
    )?;
    let a = cx.scalar(dt, alpha);
    let scaled = cx.add(n, Op::Mul, &[avg, a])?;
    let k = cx.scalar(dt, bias);
    let base = cx.add(n, Op::Add, &[scaled, k])?;
    let bt = cx.scalar(dt, beta);
    let den = cx.add(n, Op::Pow, &[base, bt])?;
    cx.add(n, Op::Div, &[x, den])
}
