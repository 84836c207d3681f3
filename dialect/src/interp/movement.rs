//! Data movement: transpose, expand, slice, concat, split, gather, pad, iota.

use super::EvalError;
use super::tensor::{Tensor, broadcast_strides, for_each_broadcast, strides, unravel};
use crate::DType;
use crate::infer::slice_range;
use crate::ops::PadMode;
use crate::shape::normalize_axis;

fn axis(a: i64, rank: usize) -> usize {
    normalize_axis(a, rank).expect("axes are verified")
}

pub fn iota(out: &(DType, Vec<usize>), ax: i64, start: f64, step: f64) -> Tensor {
    let (dt, shape) = out;
    let a = axis(ax, shape.len());
    let mut idx = vec![0; shape.len()];
    let data = (0..shape.iter().product())
        .map(|f| {
            unravel(f, shape, &mut idx);
            start + idx[a] as f64 * step
        })
        .collect();
    Tensor::new(*dt, shape, data)
}

pub fn transpose(x: &Tensor, perm: &[i64]) -> Tensor {
    let r = x.shape.len();
    let perm: Vec<usize> = perm.iter().map(|&p| axis(p, r)).collect();
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let xs = x.strides();
    let src: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
    let mut data = vec![0.0; x.numel()];
    for_each_broadcast(&shape, &[src], |f, o| data[f] = x.data[o[0]]);
    Tensor {
        dtype: x.dtype,
        shape,
        data,
    }
}

pub fn expand(x: &Tensor, to: &[usize]) -> Tensor {
    let st = broadcast_strides(&x.shape, to);
    let mut data = vec![0.0; to.iter().product()];
    for_each_broadcast(to, &[st], |f, o| data[f] = x.data[o[0]]);
    Tensor {
        dtype: x.dtype,
        shape: to.to_vec(),
        data,
    }
}

pub fn slice(x: &Tensor, axes: &[i64], starts: &[i64], ends: &[i64], steps: &[i64]) -> Tensor {
    let r = x.shape.len();
    let mut first = vec![0i64; r];
    let mut step = vec![1i64; r];
    let mut shape = x.shape.clone();
    for (i, &a) in axes.iter().enumerate() {
        let a = axis(a, r);
        let st = steps.get(i).copied().unwrap_or(1);
        let (s, len) = slice_range(x.shape[a] as i64, starts[i], ends[i], st);
        first[a] = s;
        step[a] = st;
        shape[a] = len as usize;
    }
    let xs = x.strides();
    let mut idx = vec![0; r];
    let data = (0..shape.iter().product())
        .map(|f| {
            unravel(f, &shape, &mut idx);
            let off: i64 = (0..r)
                .map(|d| (first[d] + idx[d] as i64 * step[d]) * xs[d] as i64)
                .sum();
            x.data[off as usize]
        })
        .collect();
    Tensor {
        dtype: x.dtype,
        shape,
        data,
    }
}

pub fn concat(args: &[&Tensor], ax: i64) -> Tensor {
    let r = args[0].shape.len();
    let a = axis(ax, r);
    let outer: usize = args[0].shape[..a].iter().product();
    let mut shape = args[0].shape.clone();
    shape[a] = args.iter().map(|t| t.shape[a]).sum();
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for t in args {
            let chunk: usize = t.shape[a..].iter().product();
            data.extend_from_slice(&t.data[o * chunk..(o + 1) * chunk]);
        }
    }
    Tensor {
        dtype: args[0].dtype,
        shape,
        data,
    }
}

pub fn split(x: &Tensor, ax: i64, sizes: &[i64]) -> Vec<Tensor> {
    let a = axis(ax, x.shape.len());
    let mut start = 0;
    sizes
        .iter()
        .map(|&s| {
            let part = slice(x, &[a as i64], &[start], &[start + s], &[1]);
            start += s;
            part
        })
        .collect()
}

/// NumPy `take` along an axis; negative indices count from the end.
pub fn gather(
    op: &'static str,
    x: &Tensor,
    indices: &Tensor,
    ax: i64,
) -> Result<Tensor, EvalError> {
    let a = axis(ax, x.shape.len());
    let n = x.shape[a];
    let outer: usize = x.shape[..a].iter().product();
    let inner: usize = x.shape[a + 1..].iter().product();
    let mut data = Vec::with_capacity(outer * indices.numel() * inner);
    for o in 0..outer {
        for &iv in &indices.data {
            let i = iv as i64;
            let j = if i < 0 { i + n as i64 } else { i };
            if j < 0 || j >= n as i64 {
                return Err(EvalError::IndexOutOfRange {
                    op,
                    index: i,
                    axis: a,
                    size: n,
                });
            }
            let base = (o * n + j as usize) * inner;
            data.extend_from_slice(&x.data[base..base + inner]);
        }
    }
    let mut shape = x.shape[..a].to_vec();
    shape.extend_from_slice(&indices.shape);
    shape.extend_from_slice(&x.shape[a + 1..]);
    Ok(Tensor {
        dtype: x.dtype,
        shape,
        data,
    })
}

pub fn pad(x: &Tensor, pads: &[i64], mode: PadMode, value: f64) -> Tensor {
    let r = x.shape.len();
    let shape: Vec<usize> = (0..r)
        .map(|a| x.shape[a] + pads[a] as usize + pads[a + r] as usize)
        .collect();
    let xs = strides(&x.shape);
    let mut idx = vec![0; r];
    let data = (0..shape.iter().product())
        .map(|f| {
            unravel(f, &shape, &mut idx);
            let mut off = 0usize;
            for d in 0..r {
                let n = x.shape[d] as i64;
                let mut i = idx[d] as i64 - pads[d];
                if i < 0 || i >= n {
                    match mode {
                        PadMode::Constant => return value,
                        PadMode::Edge => i = i.clamp(0, n - 1),
                        PadMode::Reflect => {
                            i = if i < 0 { -i } else { 2 * (n - 1) - i };
                        }
                    }
                }
                off += i as usize * xs[d];
            }
            x.data[off]
        })
        .collect();
    Tensor::new(x.dtype, &shape, data)
}
