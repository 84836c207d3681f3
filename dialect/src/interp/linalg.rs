//! Contractions: matmul, convolutions, attention; and rotary embedding.

use super::tensor::{Tensor, broadcast_strides, for_each_broadcast, wrap_i128};

/// Batched matmul with NumPy's rules (1-D operands promoted and the added
/// axis dropped; batch axes broadcast) and optional transposes of the last
/// two axes. Sums in `f64`.
pub fn matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Tensor {
    let mut ash = a.shape.clone();
    let mut bsh = b.shape.clone();
    let (a1, b1) = (ash.len() == 1, bsh.len() == 1);
    if a1 {
        ash.insert(0, 1);
    }
    if b1 {
        bsh.push(1);
    }
    let (ra, rb) = (ash.len(), bsh.len());
    // stored dims of the last two axes
    let (ar, ac) = (ash[ra - 2], ash[ra - 1]);
    let (br, bc) = (bsh[rb - 2], bsh[rb - 1]);
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let n = if tb { br } else { bc };
    let (abatch, bbatch) = (&ash[..ra - 2], &bsh[..rb - 2]);
    let rank = abatch.len().max(bbatch.len());
    let batch: Vec<usize> = (0..rank)
        .map(|i| {
            let get = |s: &[usize]| {
                let off = rank - s.len();
                if i >= off { s[i - off] } else { 1 }
            };
            get(abatch).max(get(bbatch))
        })
        .collect();
    let sa = broadcast_strides(abatch, &batch);
    let sb = broadcast_strides(bbatch, &batch);
    let nb: usize = batch.iter().product();
    let mut out = vec![0.0; nb * m * n];
    let (amat, bmat) = (ar * ac, br * bc);
    // Integers accumulate exactly (wrapping i128, then wrapped to the width):
    // an `f64` accumulator would lose low bits past 2^53 before the wrap.
    let int = a.dtype.is_int();
    // Every output element sums its products in order of `p`; the loops run
    // over a whole output row at a time so that B is read along its rows.
    let mut facc = vec![0.0f64; n];
    let mut iacc = vec![0i128; n];
    for_each_broadcast(&batch, &[sa, sb], |bi, offs| {
        let (ao, bo) = (offs[0] * amat, offs[1] * bmat);
        let a_at = |i: usize, p: usize| {
            if ta {
                a.data[ao + p * ac + i]
            } else {
                a.data[ao + i * ac + p]
            }
        };
        for i in 0..m {
            let row = &mut out[(bi * m + i) * n..][..n];
            if int {
                iacc.fill(0);
                for p in 0..k {
                    let av = a_at(i, p) as i128;
                    for (j, acc) in iacc.iter_mut().enumerate() {
                        let bv = if tb {
                            b.data[bo + j * bc + p]
                        } else {
                            b.data[bo + p * bc + j]
                        };
                        *acc = acc.wrapping_add(av.wrapping_mul(bv as i128));
                    }
                }
                for (o, &acc) in row.iter_mut().zip(&iacc) {
                    *o = wrap_i128(a.dtype, acc);
                }
            } else if tb {
                // B stored as [n, k]: each output is a dot product of two rows.
                for (j, o) in row.iter_mut().enumerate() {
                    let brow = &b.data[bo + j * bc..][..k];
                    let mut acc = 0.0;
                    for (p, &bv) in brow.iter().enumerate() {
                        acc += a_at(i, p) * bv;
                    }
                    *o = acc;
                }
            } else {
                facc.fill(0.0);
                for p in 0..k {
                    let av = a_at(i, p);
                    let brow = &b.data[bo + p * bc..][..n];
                    for (acc, &bv) in facc.iter_mut().zip(brow) {
                        *acc += av * bv;
                    }
                }
                row.copy_from_slice(&facc);
            }
        }
    });
    let mut shape = batch;
    if !a1 {
        shape.push(m);
    }
    if !b1 {
        shape.push(n);
    }
    Tensor::new(a.dtype, &shape, out)
}

/// Convolution parameters.
pub struct Conv {
    stride: [usize; 2],
    pad: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
}

impl Conv {
    pub fn new(stride: &[i64], padding: &[i64], dilation: &[i64], groups: i64) -> Conv {
        Conv {
            stride: [stride[0] as usize, stride[1] as usize],
            pad: [
                padding[0] as usize,
                padding[1] as usize,
                padding[2] as usize,
                padding[3] as usize,
            ],
            dilation: [dilation[0] as usize, dilation[1] as usize],
            groups: groups as usize,
        }
    }
}

/// 2-D convolution (cross-correlation), x `[N, C, H, W]`, w `[O, C/g, KH, KW]`.
pub fn conv2d(args: &[&Tensor], p: &Conv) -> Tensor {
    let (x, w) = (args[0], args[1]);
    let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (o, cg, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    let og = o / p.groups;
    let span = |k: usize, d: usize| d * (k - 1) + 1;
    let oh = (h + p.pad[0] + p.pad[2] - span(kh, p.dilation[0])) / p.stride[0] + 1;
    let ow = (wd + p.pad[1] + p.pad[3] - span(kw, p.dilation[1])) / p.stride[1] + 1;
    let mut out = vec![0.0; n * o * oh * ow];
    for b in 0..n {
        for oc in 0..o {
            let g = oc / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = args.get(2).map(|bias| bias.data[oc]).unwrap_or(0.0);
                    for ic in 0..cg {
                        let xc = g * cg + ic;
                        for ky in 0..kh {
                            let y = (oy * p.stride[0] + ky * p.dilation[0]) as isize
                                - p.pad[0] as isize;
                            if y < 0 || y >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let xx = (ox * p.stride[1] + kx * p.dilation[1]) as isize
                                    - p.pad[1] as isize;
                                if xx < 0 || xx >= wd as isize {
                                    continue;
                                }
                                let xv = x.data[((b * c + xc) * h + y as usize) * wd + xx as usize];
                                let wv = w.data[((oc * cg + ic) * kh + ky) * kw + kx];
                                acc += xv * wv;
                            }
                        }
                    }
                    out[((b * o + oc) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    Tensor::new(x.dtype, &[n, o, oh, ow], out)
}

/// Transposed convolution: every input element scatters `x * w` into the
/// output at `i * stride - pad_begin + k * dilation`. x `[N, C, H, W]`,
/// w `[C, O/g, KH, KW]`; `out` is the verified output shape.
pub fn conv_transpose2d(
    args: &[&Tensor],
    p: &Conv,
    _output_padding: &[i64],
    out_shape: &[usize],
) -> Tensor {
    let (x, w) = (args[0], args[1]);
    let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (og, kh, kw) = (w.shape[1], w.shape[2], w.shape[3]);
    let (o, oh, ow) = (out_shape[1], out_shape[2], out_shape[3]);
    let cg = c / p.groups;
    let mut out = vec![0.0; n * o * oh * ow];
    for b in 0..n {
        for oc in 0..o {
            if let Some(bias) = args.get(2) {
                for i in 0..oh * ow {
                    out[(b * o + oc) * oh * ow + i] = bias.data[oc];
                }
            }
        }
        for ic in 0..c {
            let g = ic / cg;
            for iy in 0..h {
                for ix in 0..wd {
                    let xv = x.data[((b * c + ic) * h + iy) * wd + ix];
                    for ol in 0..og {
                        let oc = g * og + ol;
                        for ky in 0..kh {
                            let y = (iy * p.stride[0] + ky * p.dilation[0]) as isize
                                - p.pad[0] as isize;
                            if y < 0 || y >= oh as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let xx = (ix * p.stride[1] + kx * p.dilation[1]) as isize
                                    - p.pad[1] as isize;
                                if xx < 0 || xx >= ow as isize {
                                    continue;
                                }
                                let wv = w.data[((ic * og + ol) * kh + ky) * kw + kx];
                                out[((b * o + oc) * oh + y as usize) * ow + xx as usize] += xv * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    Tensor::new(x.dtype, out_shape, out)
}

/// Scaled dot-product attention with grouped-query heads: query head `h`
/// reads key/value head `h / (Hq / Hkv)`. Causal masking hides key `j` from
/// query `i` when `j > i + (Skv - Sq)`. A row with every score masked gives
/// zeros.
pub fn attention(args: &[&Tensor], causal: bool, scale: Option<f64>) -> Tensor {
    let (q, k, v) = (args[0], args[1], args[2]);
    let (b, hq, sq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let (hkv, skv, dv) = (k.shape[1], k.shape[2], v.shape[3]);
    let scale = scale.unwrap_or(1.0 / (d as f64).sqrt());
    let rep = hq / hkv;
    let mask = args
        .get(3)
        .map(|m| (m, broadcast_strides(&m.shape, &[b, hq, sq, skv])));
    let mut out = vec![0.0; b * hq * sq * dv];
    let mut scores = vec![0.0; skv];
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / rep;
            for i in 0..sq {
                let qo = ((bi * hq + h) * sq + i) * d;
                for (j, s) in scores.iter_mut().enumerate() {
                    let ko = ((bi * hkv + kh) * skv + j) * d;
                    let mut acc = 0.0;
                    for t in 0..d {
                        acc += q.data[qo + t] * k.data[ko + t];
                    }
                    let mut val = acc * scale;
                    if let Some((m, st)) = &mask {
                        val += m.data[bi * st[0] + h * st[1] + i * st[2] + j * st[3]];
                    }
                    if causal && j as isize > i as isize + skv as isize - sq as isize {
                        val = f64::NEG_INFINITY;
                    }
                    *s = val;
                }
                let mx = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if mx == f64::NEG_INFINITY {
                    continue;
                }
                let weights: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let sum: f64 = weights.iter().sum();
                let oo = ((bi * hq + h) * sq + i) * dv;
                for (j, wgt) in weights.iter().enumerate() {
                    let vo = ((bi * hkv + kh) * skv + j) * dv;
                    for t in 0..dv {
                        out[oo + t] += wgt / sum * v.data[vo + t];
                    }
                }
            }
        }
    }
    Tensor::new(q.dtype, &[b, hq, sq, dv], out)
}

/// Rotary embedding on the last axis of `x [..., S, D]` with `cos`, `sin`
/// of `[S, D/2]`. Pairs are (i, i + D/2) by default, (2i, 2i + 1) when
/// interleaved; each pair (a, b) becomes (a cos - b sin, b cos + a sin).
pub fn rope(args: &[&Tensor], interleaved: bool) -> Tensor {
    let (x, cos, sin) = (args[0], args[1], args[2]);
    let r = x.shape.len();
    let (s, d) = (x.shape[r - 2], x.shape[r - 1]);
    let half = d / 2;
    let mut out = x.data.clone();
    for (row, chunk) in x.data.chunks(d).enumerate() {
        let pos = row % s;
        for i in 0..half {
            let (ia, ib) = if interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half)
            };
            let (a, bv) = (chunk[ia], chunk[ib]);
            let (c, sn) = (cos.data[pos * half + i], sin.data[pos * half + i]);
            out[row * d + ia] = a * c - bv * sn;
            out[row * d + ib] = bv * c + a * sn;
        }
    }
    Tensor::new(x.dtype, &x.shape, out)
}
