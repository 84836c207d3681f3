//! Reductions, softmax, normalizations and pooling.

use super::tensor::{Tensor, strides, unravel, wrap_i128};
use crate::shape::normalize_axis;

/// A reduction.
#[derive(Clone, Copy, Debug)]
pub enum Reduce {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
}

fn reduce_values(kind: Reduce, vals: impl Iterator<Item = f64>) -> f64 {
    let mut n = 0usize;
    let mut acc = match kind {
        Reduce::Sum | Reduce::Mean => 0.0,
        Reduce::Prod => 1.0,
        Reduce::Max => f64::NEG_INFINITY,
        Reduce::Min => f64::INFINITY,
    };
    for v in vals {
        n += 1;
        acc = match kind {
            Reduce::Sum | Reduce::Mean => acc + v,
            Reduce::Prod => acc * v,
            Reduce::Max => {
                if v.is_nan() || acc.is_nan() {
                    f64::NAN
                } else {
                    acc.max(v)
                }
            }
            Reduce::Min => {
                if v.is_nan() || acc.is_nan() {
                    f64::NAN
                } else {
                    acc.min(v)
                }
            }
        };
    }
    match kind {
        Reduce::Mean => acc / n as f64,
        Reduce::Sum | Reduce::Prod | Reduce::Max | Reduce::Min => acc,
    }
}

/// Groups the elements of `x` by their index outside `axes`: returns the
/// kept shape (reduced axes as 1) and, per output element, the flat input
/// indices in row-major order.
fn groups(x: &Tensor, axes: &[usize]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let kept: Vec<usize> = x
        .shape
        .iter()
        .enumerate()
        .map(|(i, &n)| if axes.contains(&i) { 1 } else { n })
        .collect();
    let ks = strides(&kept);
    let mut out = vec![Vec::new(); kept.iter().product()];
    let mut idx = vec![0; x.shape.len()];
    for flat in 0..x.numel() {
        unravel(flat, &x.shape, &mut idx);
        let o: usize = idx
            .iter()
            .enumerate()
            .map(|(i, &v)| if axes.contains(&i) { 0 } else { v * ks[i] })
            .sum();
        out[o].push(flat);
    }
    (kept, out)
}

fn norm_axes(axes: &[i64], rank: usize) -> Vec<usize> {
    axes.iter()
        .map(|&a| normalize_axis(a, rank).expect("axes are verified"))
        .collect()
}

fn drop_axes(kept: &[usize], axes: &[usize], keepdim: bool) -> Vec<usize> {
    kept.iter()
        .enumerate()
        .filter(|(i, _)| keepdim || !axes.contains(i))
        .map(|(_, &n)| n)
        .collect()
}

pub fn reduce(x: &Tensor, axes: &[i64], keepdim: bool, kind: Reduce) -> Tensor {
    let axes = norm_axes(axes, x.shape.len());
    let (kept, gs) = groups(x, &axes);
    let shape = drop_axes(&kept, &axes, keepdim);
    if x.dtype.is_int() && matches!(kind, Reduce::Sum | Reduce::Prod) {
        // Integer sums and products are exact (an `f64` accumulator loses
        // the low bits past 2^53 before the wrap): wrapping i128 arithmetic
        // agrees with the final wrap to the type's width.
        let data = gs
            .iter()
            .map(|g| {
                let vals = g.iter().map(|&i| x.data[i] as i128);
                let acc = if matches!(kind, Reduce::Prod) {
                    vals.fold(1i128, i128::wrapping_mul)
                } else {
                    vals.fold(0i128, i128::wrapping_add)
                };
                wrap_i128(x.dtype, acc)
            })
            .collect();
        return Tensor::new(x.dtype, &shape, data);
    }
    let data = gs
        .iter()
        .map(|g| reduce_values(kind, g.iter().map(|&i| x.data[i])))
        .collect();
    Tensor::new(x.dtype, &shape, data)
}

pub fn arg_max(x: &Tensor, axis: i64, keepdim: bool) -> Tensor {
    let axes = norm_axes(&[axis], x.shape.len());
    let (kept, gs) = groups(x, &axes);
    let data = gs
        .iter()
        .map(|g| {
            let mut best = 0;
            for (k, &i) in g.iter().enumerate() {
                let (v, b) = (x.data[i], x.data[g[best]]);
                if v > b || (v.is_nan() && !b.is_nan()) {
                    best = k;
                }
            }
            best as f64
        })
        .collect();
    Tensor::new(crate::DType::I64, &drop_axes(&kept, &axes, keepdim), data)
}

/// Softmax (or log-softmax) along an axis, computed with the row maximum
/// subtracted first.
pub fn softmax(x: &Tensor, axis: i64, log: bool) -> Tensor {
    let axes = norm_axes(&[axis], x.shape.len());
    let (_, gs) = groups(x, &axes);
    let mut out = vec![0.0; x.numel()];
    for g in gs {
        let m = g
            .iter()
            .map(|&i| x.data[i])
            .fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = g.iter().map(|&i| (x.data[i] - m).exp()).sum();
        for &i in &g {
            out[i] = if log {
                x.data[i] - m - sum.ln()
            } else {
                (x.data[i] - m).exp() / sum
            };
        }
    }
    Tensor::new(x.dtype, &x.shape, out)
}

/// Layer norm (or RMS norm) over the axes from `axis` to the last; the
/// optional gamma and beta have the normalized shape.
pub fn layer_norm(args: &[&Tensor], axis: i64, eps: f64, rms: bool) -> Tensor {
    let x = args[0];
    let a = normalize_axis(axis, x.shape.len()).expect("axis is verified");
    let inner: usize = x.shape[a..].iter().product();
    let mut out = vec![0.0; x.numel()];
    for (r, row) in x.data.chunks(inner.max(1)).enumerate() {
        let n = row.len() as f64;
        let mean = if rms {
            0.0
        } else {
            row.iter().sum::<f64>() / n
        };
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let inv = 1.0 / (var + eps).sqrt();
        for (j, v) in row.iter().enumerate() {
            let mut y = (v - mean) * inv;
            if let Some(g) = args.get(1) {
                y *= g.data[j];
            }
            if let Some(b) = args.get(2) {
                y += b.data[j];
            }
            out[r * inner + j] = y;
        }
    }
    Tensor::new(x.dtype, &x.shape, out)
}

/// Inference batch norm over channel axis 1.
pub fn batch_norm(args: &[&Tensor], eps: f64) -> Tensor {
    let x = args[0];
    let (scale, bias, mean, var) = (args[1], args[2], args[3], args[4]);
    let c = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    let data = (0..x.numel())
        .map(|i| {
            let ch = (i / inner.max(1)) % c;
            (x.data[i] - mean.data[ch]) / (var.data[ch] + eps).sqrt() * scale.data[ch]
                + bias.data[ch]
        })
        .collect();
    Tensor::new(x.dtype, &x.shape, data)
}

/// Group norm: channels (axis 1) in `groups` groups, each normalized over
/// its channels and all spatial positions, then scaled per channel.
pub fn group_norm(args: &[&Tensor], groups: usize, eps: f64) -> Tensor {
    let x = args[0];
    let (gamma, beta) = (args[1], args[2]);
    let c = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    let per_group = c / groups * inner;
    let mut out = vec![0.0; x.numel()];
    for (gi, chunk) in x.data.chunks(per_group.max(1)).enumerate() {
        let n = chunk.len() as f64;
        let mean = chunk.iter().sum::<f64>() / n;
        let var = chunk.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let inv = 1.0 / (var + eps).sqrt();
        for (j, v) in chunk.iter().enumerate() {
            let flat = gi * per_group + j;
            let ch = (flat / inner.max(1)) % c;
            out[flat] = (v - mean) * inv * gamma.data[ch] + beta.data[ch];
        }
    }
    Tensor::new(x.dtype, &x.shape, out)
}

/// A pooling reduction.
#[derive(Clone, Copy, Debug)]
pub enum Pool {
    Max,
    Avg,
}

/// 2-D pooling over `[N, C, H, W]`; `out` is the verified output shape
/// (which already accounts for `ceil_mode`). Padded positions never win a
/// max; for the average they count only with `count_include_pad`, and then
/// only inside the padded extent.
#[allow(clippy::too_many_arguments)]
pub fn pool2d(
    x: &Tensor,
    out: &[usize],
    kind: Pool,
    kernel: &[i64],
    stride: &[i64],
    padding: &[i64],
    dilation: &[i64],
    count_include_pad: bool,
) -> Tensor {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2] as i64, x.shape[3] as i64);
    let (oh, ow) = (out[2], out[3]);
    let (pt, pl, pb, pr) = (padding[0], padding[1], padding[2], padding[3]);
    let mut data = Vec::with_capacity(n * c * oh * ow);
    for b in 0..n {
        for ch in 0..c {
            let base = (b * c + ch) * (h * w) as usize;
            for oy in 0..oh as i64 {
                for ox in 0..ow as i64 {
                    let (y0, x0) = (oy * stride[0] - pt, ox * stride[1] - pl);
                    let mut acc = match kind {
                        Pool::Max => f64::NEG_INFINITY,
                        Pool::Avg => 0.0,
                    };
                    let mut count = 0usize;
                    let mut padded_count = 0usize;
                    for ky in 0..kernel[0] {
                        for kx in 0..kernel[1] {
                            let (y, xx) = (y0 + ky * dilation[0], x0 + kx * dilation[1]);
                            if y >= -pt && y < h + pb && xx >= -pl && xx < w + pr {
                                padded_count += 1;
                            }
                            if y < 0 || y >= h || xx < 0 || xx >= w {
                                continue;
                            }
                            let v = x.data[base + (y * w + xx) as usize];
                            count += 1;
                            acc = match kind {
                                Pool::Max => {
                                    if v.is_nan() || acc.is_nan() {
                                        f64::NAN
                                    } else {
                                        acc.max(v)
                                    }
                                }
                                Pool::Avg => acc + v,
                            };
                        }
                    }
                    data.push(match kind {
                        Pool::Max => acc,
                        Pool::Avg => {
                            acc / (if count_include_pad {
                                padded_count
                            } else {
                                count
                            })
                            .max(1) as f64
                        }
                    });
                }
            }
        }
    }
    Tensor::new(x.dtype, out, data)
}

/// Mean or max over all axes after the first two, kept as size 1.
pub fn global_pool(x: &Tensor, kind: Reduce) -> Tensor {
    let axes: Vec<i64> = (2..x.shape.len() as i64).collect();
    reduce(x, &axes, true, kind)
}
