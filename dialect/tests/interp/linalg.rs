//! Contractions: matmul, conv2d, conv_transpose2d, attention; and rope.

use super::*;
use DType::*;

/// A fixed pattern of quarter-integers, the same in the NumPy snippets:
/// `[((i*a + b) % m - m//2) / 4 for i in range(n)]`.
fn pat(n: usize, a: usize, b: usize, m: usize) -> Vec<f64> {
    (0..n)
        .map(|i| (((i * a + b) % m) as f64 - (m / 2) as f64) / 4.0)
        .collect()
}

// ---------------------------------------------------------------------------
// matmul
// ---------------------------------------------------------------------------

/// Naive batched matmul over already-2-D-or-more operands, batch dims
/// broadcast by NumPy rules: an independent oracle.
fn naive_matmul(a: &Tensor, b: &Tensor) -> (Vec<usize>, Vec<f64>) {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
    let (k2, n) = (b.shape[rb - 2], b.shape[rb - 1]);
    assert_eq!(k, k2);
    let rank = (ra - 2).max(rb - 2);
    let pad = |s: &[usize]| -> Vec<usize> {
        let mut v = vec![1; rank - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (ba, bb) = (pad(&a.shape[..ra - 2]), pad(&b.shape[..rb - 2]));
    let batch: Vec<usize> = ba.iter().zip(&bb).map(|(&x, &y)| x.max(y)).collect();
    let nb: usize = batch.iter().product();
    let mut out = Vec::with_capacity(nb * m * n);
    for f in 0..nb {
        // multi-index of the batch element, then each operand's own flat batch index
        let mut rem = f;
        let mut idx = vec![0; rank];
        for d in (0..rank).rev() {
            idx[d] = rem % batch[d];
            rem /= batch[d];
        }
        let flat = |dims: &[usize]| {
            idx.iter()
                .zip(dims)
                .fold(0, |acc, (&i, &d)| acc * d + if d == 1 { 0 } else { i })
        };
        let (fa, fb) = (flat(&ba), flat(&bb));
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    s += a.data[fa * m * k + i * k + p] * b.data[fb * k * n + p * n + j];
                }
                out.push(s);
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    (shape, out)
}

#[test]
fn matmul_2d_and_transposes() {
    // numpy: A = pat(6, 7, 1, 11).reshape(2, 3); B = pat(12, 5, 2, 13).reshape(3, 4); A @ B
    let a = f64t(&[2, 3], &pat(6, 7, 1, 11));
    let b = f64t(&[3, 4], &pat(12, 5, 2, 13));
    let ab = [1.75, -1.3125, -1.125, 1.5, 2.0, -1.1875, -1.125, 1.375];
    let y = op("matmul(%a, %b)", "f64[2, 4]", &[("a", &a), ("b", &b)]);
    assert_exact(&y, F64, &[2, 4], &ab);
    // the same product from transposed storage: A.T is [3, 2], B.T is [4, 3]
    let at = f64t(&[3, 2], &[-1.0, -1.25, 0.75, 0.5, -0.25, -0.5]);
    let bt = f64t(
        &[4, 3],
        &[
            -1.0, 0.75, -0.75, 0.25, -1.25, 0.5, 1.5, 0.0, -1.5, -0.5, 1.25, -0.25,
        ],
    );
    let y = op(
        "matmul(%at, %b) {transpose_a = true}",
        "f64[2, 4]",
        &[("at", &at), ("b", &b)],
    );
    assert_exact(&y, F64, &[2, 4], &ab);
    let y = op(
        "matmul(%a, %bt) {transpose_b = true}",
        "f64[2, 4]",
        &[("a", &a), ("bt", &bt)],
    );
    assert_exact(&y, F64, &[2, 4], &ab);
    let y = op(
        "matmul(%at, %bt) {transpose_a = true, transpose_b = true}",
        "f64[2, 4]",
        &[("at", &at), ("bt", &bt)],
    );
    assert_exact(&y, F64, &[2, 4], &ab);
    // (A B)^T = B^T A^T
    let y = op("matmul(%bt, %at)", "f64[4, 2]", &[("at", &at), ("bt", &bt)]);
    let abt: Vec<f64> = (0..8).map(|i| ab[(i % 2) * 4 + i / 2]).collect();
    assert_exact(&y, F64, &[4, 2], &abt);
}

#[test]
fn matmul_vectors() {
    let a = f64t(&[2, 3], &pat(6, 7, 1, 11));
    let b = f64t(&[3, 4], &pat(12, 5, 2, 13));
    let v = f64t(&[3], &[1.5, -2.0, 0.25]);
    // numpy: v @ B, A @ v, v @ v
    let y = op("matmul(%v, %b)", "f64[4]", &[("v", &v), ("b", &b)]);
    assert_exact(&y, F64, &[4], &[-3.1875, 3.0, 1.875, -3.3125]);
    let y = op("matmul(%a, %v)", "f64[2]", &[("a", &a), ("v", &v)]);
    assert_exact(&y, F64, &[2], &[-3.0625, -3.0]);
    let y = op("matmul(%v, %v)", "f64[]", &[("v", &v)]);
    assert_exact(&y, F64, &[], &[6.3125]);
    // 1-D with a batched 3-D operand: [3] @ [2, 3, 4] -> [2, 4]
    let bb = f64t(&[2, 3, 4], &pat(24, 5, 2, 13));
    let y = op("matmul(%v, %bb)", "f64[2, 4]", &[("v", &v), ("bb", &bb)]);
    let vm = f64t(&[1, 3], &[1.5, -2.0, 0.25]);
    let (_, exp) = naive_matmul(&vm, &bb);
    assert_exact(&y, F64, &[2, 4], &exp);
    // [2, 4, 3] @ [3] -> [2, 4]
    let ba = f64t(&[2, 4, 3], &pat(24, 7, 3, 17));
    let y = op("matmul(%ba, %v)", "f64[2, 4]", &[("ba", &ba), ("v", &v)]);
    let vc = f64t(&[3, 1], &[1.5, -2.0, 0.25]);
    let (_, exp) = naive_matmul(&ba, &vc);
    assert_exact(&y, F64, &[2, 4], &exp);
}

#[test]
fn matmul_odd_and_size1_shapes() {
    // 1x3 @ 3x1
    let a = f32t(&[1, 3], &[1.0, 2.0, 3.0]);
    let b = f32t(&[3, 1], &[4.0, -5.0, 6.0]);
    let y = op("matmul(%a, %b)", "f32[1, 1]", &[("a", &a), ("b", &b)]);
    assert_exact(&y, F32, &[1, 1], &[12.0]);
    // 3x1 @ 1x3: outer product
    let y = op("matmul(%b, %a)", "f32[3, 3]", &[("a", &a), ("b", &b)]);
    assert_exact(
        &y,
        F32,
        &[3, 3],
        &[4.0, 8.0, 12.0, -5.0, -10.0, -15.0, 6.0, 12.0, 18.0],
    );
    // f32: the sum is exact in f64 and rounded once: 1 + 2^-24 + 2^-24 = 1 + 2^-23
    let c = f32t(&[1, 3], &[1.0, 2f64.powi(-24), 2f64.powi(-24)]);
    let ones = f32t(&[3], &[1.0; 3]);
    let y = op("matmul(%c, %o)", "f32[1]", &[("c", &c), ("o", &ones)]);
    assert_exact(&y, F32, &[1], &[1.0 + 2f64.powi(-23)]);
    // integers wrap: i8 100*100 + 100*100 = 20000 -> 32
    let i = t(I8, &[1, 2], &[100.0, 100.0]);
    let j = t(I8, &[2, 1], &[100.0, 100.0]);
    let y = op("matmul(%i, %j)", "i8[1, 1]", &[("i", &i), ("j", &j)]);
    assert_exact(&y, I8, &[1, 1], &[32.0]);
}

#[test]
fn integer_matmul_is_exact_before_wrapping() {
    // numpy (int32 matmul wraps): [[2^31 - 1]] @ [[2^31 - 1]] = 1, and
    // [[46341, 46341, 3]] @ [[46341], [46341], [5]] = 9281
    let a = t(I32, &[1, 1], &[2147483647.0]);
    let y = op("matmul(%a, %a)", "i32[1, 1]", &[("a", &a)]);
    assert_exact(&y, I32, &[1, 1], &[1.0]);
    let a = t(I32, &[1, 3], &[46341.0, 46341.0, 3.0]);
    let b = t(I32, &[3, 1], &[46341.0, 46341.0, 5.0]);
    let y = op("matmul(%a, %b)", "i32[1, 1]", &[("a", &a), ("b", &b)]);
    assert_exact(&y, I32, &[1, 1], &[9281.0]);
    // i64 stays exact below 2^53: 100003 * 100019 * ... as a dot product of one term
    let c = t(I64, &[1], &[100003.0 * 100019.0]);
    let d = t(I64, &[1], &[100043.0 * 7.0]);
    let y = op("matmul(%c, %d)", "i64[]", &[("c", &c), ("d", &d)]);
    assert_exact(&y, I64, &[], &[7004550702117157.0]);
}

#[test]
fn matmul_batched_broadcast() {
    let mut r = rng("matmul_batched_broadcast");
    // [2, 1, 3, 4] @ [5, 4, 2] -> [2, 5, 3, 2]
    let a = random(&mut r, F64, &[2, 1, 3, 4], -1.0, 1.0);
    let b = random(&mut r, F64, &[5, 4, 2], -1.0, 1.0);
    let y = op("matmul(%a, %b)", "f64[2, 5, 3, 2]", &[("a", &a), ("b", &b)]);
    let (shape, exp) = naive_matmul(&a, &b);
    assert_eq!(shape, [2, 5, 3, 2]);
    assert_close(&y, F64, &[2, 5, 3, 2], &exp, 1e-12, 1e-14);
    // [3, 1, 2, 5] @ [1, 4, 5, 3] with transposes of stored [3,1,5,2] and [1,4,3,5]
    let at = random(&mut r, F64, &[3, 1, 5, 2], -1.0, 1.0);
    let bt = random(&mut r, F64, &[1, 4, 3, 5], -1.0, 1.0);
    let y = op(
        "matmul(%at, %bt) {transpose_a = true, transpose_b = true}",
        "f64[3, 4, 2, 3]",
        &[("at", &at), ("bt", &bt)],
    );
    let tr = |x: &Tensor| {
        let r = x.shape.len();
        let (p, q) = (x.shape[r - 2], x.shape[r - 1]);
        let mut shape = x.shape.clone();
        shape.swap(r - 2, r - 1);
        let mut d = vec![0.0; x.data.len()];
        for bi in 0..x.data.len() / (p * q) {
            for i in 0..p {
                for j in 0..q {
                    d[bi * p * q + j * p + i] = x.data[bi * p * q + i * q + j];
                }
            }
        }
        f64t(&shape, &d)
    };
    let (shape, exp) = naive_matmul(&tr(&at), &tr(&bt));
    assert_eq!(shape, [3, 4, 2, 3]);
    assert_close(&y, F64, &[3, 4, 2, 3], &exp, 1e-12, 1e-14);
}

#[test]
fn matmul_3x50_by_50x7() {
    let mut r = rng("matmul_3x50_by_50x7");
    let a = random(&mut r, F32, &[3, 50], -2.0, 2.0);
    let b = random(&mut r, F32, &[50, 7], -2.0, 2.0);
    let y = op("matmul(%a, %b)", "f32[3, 7]", &[("a", &a), ("b", &b)]);
    // the exact f64 sum (products of f32 values are exact in f64), rounded once to f32
    let mut exp = vec![];
    for i in 0..3 {
        for j in 0..7 {
            let s: f64 = (0..50)
                .map(|p| a.data[i * 50 + p] * b.data[p * 7 + j])
                .sum();
            exp.push(s as f32 as f64);
        }
    }
    assert_ulps(&y, F32, &[3, 7], &exp, 1.0);
    // bf16 inputs: one rounding at the end
    let a = random(&mut r, BF16, &[3, 50], -2.0, 2.0);
    let b = random(&mut r, BF16, &[50, 7], -2.0, 2.0);
    let y = op("matmul(%a, %b)", "bf16[3, 7]", &[("a", &a), ("b", &b)]);
    let (_, exact) = naive_matmul(&a, &b);
    assert_ulps(&y, BF16, &[3, 7], &exact, 0.5);
}

// ---------------------------------------------------------------------------
// conv2d
// ---------------------------------------------------------------------------

struct ConvP {
    stride: [usize; 2],
    pad: [usize; 4],
    dil: [usize; 2],
    groups: usize,
}

/// Naive conv2d: pads the input explicitly, then sums windows. An oracle
/// written from the definition (PyTorch's cross-correlation).
fn naive_conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: &ConvP,
) -> (Vec<usize>, Vec<f64>) {
    let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (o, cg, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    assert_eq!(cg * p.groups, c);
    let (ph, pw) = (h + p.pad[0] + p.pad[2], wd + p.pad[1] + p.pad[3]);
    let mut xp = vec![0.0; n * c * ph * pw];
    for b in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..wd {
                    xp[((b * c + ch) * ph + y + p.pad[0]) * pw + xx + p.pad[1]] =
                        x.data[((b * c + ch) * h + y) * wd + xx];
                }
            }
        }
    }
    let oh = (ph - (p.dil[0] * (kh - 1) + 1)) / p.stride[0] + 1;
    let ow = (pw - (p.dil[1] * (kw - 1) + 1)) / p.stride[1] + 1;
    let per_group = o / p.groups;
    let mut out = vec![];
    for b in 0..n {
        for oc in 0..o {
            let g = oc / per_group;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = bias.map(|t| t.data[oc]).unwrap_or(0.0);
                    for ic in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = oy * p.stride[0] + ky * p.dil[0];
                                let ix = ox * p.stride[1] + kx * p.dil[1];
                                s += xp[((b * c + g * cg + ic) * ph + iy) * pw + ix]
                                    * w.data[((oc * cg + ic) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    out.push(s);
                }
            }
        }
    }
    (vec![n, o, oh, ow], out)
}

fn attrs(p: &ConvP) -> String {
    format!(
        "stride = [{}, {}], padding = [{}, {}, {}, {}], dilation = [{}, {}], groups = {}",
        p.stride[0],
        p.stride[1],
        p.pad[0],
        p.pad[1],
        p.pad[2],
        p.pad[3],
        p.dil[0],
        p.dil[1],
        p.groups
    )
}

#[track_caller]
fn check_conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: &ConvP) {
    let (shape, exp) = naive_conv2d(x, w, bias, p);
    let result = ty(x.dtype, &shape);
    let y = match bias {
        Some(b) => op(
            &format!("conv2d(%x, %w, %b) {{{}}}", attrs(p)),
            &result,
            &[("x", x), ("w", w), ("b", b)],
        ),
        None => op(
            &format!("conv2d(%x, %w) {{{}}}", attrs(p)),
            &result,
            &[("x", x), ("w", w)],
        ),
    };
    assert_close(&y, x.dtype, &shape, &exp, 1e-12, 1e-13);
}

#[test]
fn conv2d_hand_values() {
    // x 3x3 = 1..9, w 2x2 = [[1, 0], [0, -1]]: y[i][j] = x[i][j] - x[i+1][j+1] = -4
    let x = f32t(
        &[1, 1, 3, 3],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    );
    let w = f32t(&[1, 1, 2, 2], &[1.0, 0.0, 0.0, -1.0]);
    let y = op("conv2d(%x, %w)", "f32[1, 1, 2, 2]", &[("x", &x), ("w", &w)]);
    assert_exact(&y, F32, &[1, 1, 2, 2], &[-4.0; 4]);
    // padding 1 all around, stride 2, bias 10: windows at (-1,-1), (-1,1), (1,-1), (1,1)
    // y = x[r][c] - x[r+1][c+1] for the window's top-left (r, c), plus 10:
    // (-1,-1): pad - x00 = -1;  (-1, 1): pad - x02 = -3
    // ( 1,-1): pad - x20 = -7;  ( 1, 1): x11 - x22 = 5 - 9 = -4
    let b = f32t(&[1], &[10.0]);
    let y = op(
        "conv2d(%x, %w, %b) {stride = [2, 2], padding = [1, 1, 1, 1]}",
        "f32[1, 1, 2, 2]",
        &[("x", &x), ("w", &w), ("b", &b)],
    );
    assert_exact(&y, F32, &[1, 1, 2, 2], &[9.0, 7.0, 3.0, 6.0]);
}

#[test]
fn conv2d_against_naive_loops() {
    let mut r = rng("conv2d_against_naive_loops");
    let x = random(&mut r, F64, &[2, 4, 7, 6], -1.0, 1.0);
    // stride, no padding, bias
    let w = random(&mut r, F64, &[3, 4, 3, 3], -1.0, 1.0);
    let b = random(&mut r, F64, &[3], -1.0, 1.0);
    let p = ConvP {
        stride: [2, 1],
        pad: [0, 0, 0, 0],
        dil: [1, 1],
        groups: 1,
    };
    check_conv2d(&x, &w, Some(&b), &p);
    check_conv2d(&x, &w, None, &p);
    // asymmetric padding [1, 0, 2, 1]
    let p = ConvP {
        stride: [1, 1],
        pad: [1, 0, 2, 1],
        dil: [1, 1],
        groups: 1,
    };
    check_conv2d(&x, &w, Some(&b), &p);
    // dilation 2, stride 2, padding
    let p = ConvP {
        stride: [2, 2],
        pad: [2, 1, 1, 2],
        dil: [2, 2],
        groups: 1,
    };
    check_conv2d(&x, &w, None, &p);
    // groups 2: w [6, 2, 2, 3]
    let w2 = random(&mut r, F64, &[6, 2, 2, 3], -1.0, 1.0);
    let b6 = random(&mut r, F64, &[6], -1.0, 1.0);
    let p = ConvP {
        stride: [1, 2],
        pad: [1, 1, 0, 0],
        dil: [1, 1],
        groups: 2,
    };
    check_conv2d(&x, &w2, Some(&b6), &p);
    // depthwise: groups = channels = 4, w [4, 1, 3, 3]; and a multiplier of 2: w [8, 1, 1, 3]
    let wd = random(&mut r, F64, &[4, 1, 3, 3], -1.0, 1.0);
    let p = ConvP {
        stride: [1, 1],
        pad: [1, 1, 1, 1],
        dil: [1, 1],
        groups: 4,
    };
    check_conv2d(&x, &wd, None, &p);
    let wm = random(&mut r, F64, &[8, 1, 1, 3], -1.0, 1.0);
    let p = ConvP {
        stride: [3, 1],
        pad: [0, 2, 0, 0],
        dil: [1, 2],
        groups: 4,
    };
    check_conv2d(&x, &wm, None, &p);
    // size-1 everything: 1x1 kernel on [1, 1, 1, 5]
    let x1 = random(&mut r, F64, &[1, 1, 1, 5], -1.0, 1.0);
    let w1 = random(&mut r, F64, &[1, 1, 1, 1], -1.0, 1.0);
    check_conv2d(
        &x1,
        &w1,
        None,
        &ConvP {
            stride: [1, 1],
            pad: [0, 0, 0, 0],
            dil: [1, 1],
            groups: 1,
        },
    );
}

// ---------------------------------------------------------------------------
// conv_transpose2d
// ---------------------------------------------------------------------------

#[test]
fn conv_transpose2d_hand_values() {
    // stride 2, 2x2 kernel: each input element stamps x * w into its own 2x2 block
    let x = f32t(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let w = f32t(&[1, 1, 2, 2], &[1.0, 10.0, 100.0, 1000.0]);
    let y = op(
        "conv_transpose2d(%x, %w) {stride = [2, 2]}",
        "f32[1, 1, 4, 4]",
        &[("x", &x), ("w", &w)],
    );
    #[rustfmt::skip]
    let full = [
        1.0, 10.0, 2.0, 20.0,
        100.0, 1000.0, 200.0, 2000.0,
        3.0, 30.0, 4.0, 40.0,
        300.0, 3000.0, 400.0, 4000.0,
    ];
    assert_exact(&y, F32, &[1, 1, 4, 4], &full);
    // padding 1 on every side crops one row/column from each edge; output
    // padding 1 adds back one row and column at the end (rows/cols 1..=3)
    let y = op(
        "conv_transpose2d(%x, %w) {stride = [2, 2], padding = [1, 1, 1, 1], output_padding = [1, 1]}",
        "f32[1, 1, 3, 3]",
        &[("x", &x), ("w", &w)],
    );
    let exp: Vec<f64> = (1..4)
        .flat_map(|i| (1..4).map(move |j| full[i * 4 + j]))
        .collect();
    assert_exact(&y, F32, &[1, 1, 3, 3], &exp);
    // stride 1, overlapping: 1-D like [1, 2] * [1, 1] -> [1, 3, 2]
    let x = f32t(&[1, 1, 1, 2], &[1.0, 2.0]);
    let w = f32t(&[1, 1, 1, 2], &[1.0, 1.0]);
    let y = op(
        "conv_transpose2d(%x, %w)",
        "f32[1, 1, 1, 3]",
        &[("x", &x), ("w", &w)],
    );
    assert_exact(&y, F32, &[1, 1, 1, 3], &[1.0, 3.0, 2.0]);
}

#[test]
fn conv_transpose2d_groups_bias_against_numpy() {
    // numpy scatter reference (out[n, g*Og+o, iy*s+ky*d, ix*s+kx*d] += x*w, then crop
    // the padding and add the bias): x = pat(48, 5, 3, 9) [2, 4, 2, 3],
    // w = pat(24, 7, 2, 10) [4, 1, 2, 3]
    let x = f64t(&[2, 4, 2, 3], &pat(48, 5, 3, 9));
    let w = f64t(&[4, 1, 2, 3], &pat(24, 7, 2, 10));
    let b = f64t(&[2], &[0.5, -1.0]);
    let y = op(
        "conv_transpose2d(%x, %w, %b) {stride = [2, 2], padding = [1, 0, 0, 1], output_padding = [1, 0], groups = 2}",
        "f64[2, 2, 4, 6]",
        &[("x", &x), ("w", &w), ("b", &b)],
    );
    assert_exact(
        &y,
        F64,
        &[2, 2, 4, 6],
        &[
            0.625, 0.4375, 0.375, -0.375, 0.5, -0.0625, 1.3125, -0.25, -0.375, -0.25, 1.875, -0.25,
            1.0, 1.9375, -0.375, -0.5625, 2.0, 1.4375, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, -1.75,
            -0.8125, 1.25, -0.8125, -2.125, -0.8125, -1.625, -1.25, -0.8125, -0.75, -0.9375,
            -1.375, -1.75, -1.375, -1.0, -0.8125, -1.0, -1.375, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0,
            0.25, 0.625, 0.0, 0.9375, 0.125, 0.125, 0.5625, -0.25, 0.1875, 2.0, 0.1875, -0.25,
            0.625, 0.4375, 0.375, -0.375, 0.5, -0.0625, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, -0.625,
            -0.8125, -1.0, -1.375, -1.0, -0.8125, -1.4375, -0.5, 1.25, -1.125, -2.25, -0.625,
            -1.75, -0.8125, 1.25, -0.8125, -2.125, -0.8125, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0,
        ],
    );
    // depthwise (groups 4), stride [1, 2], dilation [2, 1], padding [0, 1, 1, 0],
    // output_padding [0, 1], no bias
    let y = op(
        "conv_transpose2d(%x, %w) {stride = [1, 2], padding = [0, 1, 1, 0], output_padding = [0, 1], dilation = [2, 1], groups = 4}",
        "f64[2, 4, 3, 7]",
        &[("x", &x), ("w", &w)],
    );
    assert_exact(
        &y,
        F64,
        &[2, 4, 3, 7],
        &[
            -0.25, -0.8125, 1.0, 0.25, 0.0, 0.0, 0.0, -1.0, -0.4375, 0.25, 0.625, -0.75, -0.1875,
            0.0, 0.3125, -0.625, -1.25, 0.5, 0.0, 0.0, 0.0, -0.5, 0.5, 0.5, -0.5625, -0.75, 0.5625,
            0.0, 0.25, -0.4375, -1.0, 0.75, 0.0, 0.0, 0.0, -0.375, 0.5, 0.375, -0.5, -0.5625, 0.75,
            0.0, 0.5, 1.3125, -0.125, -0.5, 0.375, 0.9375, 0.0, -0.25, -0.75, 0.25, 0.8125, -0.375,
            -0.9375, 0.0, 0.25, 1.125, -0.0625, -0.625, 0.1875, 0.75, 0.0, 0.0, 0.9375, 0.0, -0.75,
            0.0, 0.0, 0.0, 0.0, 0.9375, 0.0, -0.75, 0.0, 0.5625, 0.0, -0.0625, 1.125, 0.25, -0.5,
            0.0, 0.0, 0.0, 0.5, 0.5, -0.5, -0.6875, 0.75, 0.1875, 0.0, -0.25, -0.8125, 1.0, 0.25,
            0.0, 0.0, 0.0, -0.625, 0.5, 0.625, -0.625, -0.9375, 0.375, 0.0, 1.0, -0.8125, -0.25,
            0.375, 0.75, -0.5625, 0.0, -0.5, 0.5, 0.5, -0.5625, -0.75, 0.5625, 0.0, 0.75, -1.0,
            -0.1875, 0.25, 0.5625, -0.75, 0.0, 0.125, 0.5625, -0.5, -1.25, 0.0, 0.0, 0.0, 0.5,
            1.3125, -0.125, -0.5, 0.375, 0.9375, 0.0, 0.0625, 0.75, -0.25, -1.0, 0.0, 0.0, 0.0,
            0.0, -0.75, 0.0, 0.9375, 0.0, -0.5625, 0.0, 0.0, 0.9375, 0.0, -0.75, 0.0, 0.0, 0.0,
            0.125, -0.75, -0.125, 1.0, 0.1875, -0.375, 0.0,
        ],
    );
}

#[test]
fn conv_transpose2d_is_the_adjoint_of_conv2d() {
    let mut r = rng("conv_transpose2d_is_the_adjoint_of_conv2d");
    // (x channels C, out channels O, groups, H, W, kernel, stride, pad, dilation, output_padding)
    type Case = (
        usize,
        usize,
        usize,
        [usize; 2],
        [usize; 2],
        [usize; 2],
        [usize; 4],
        [usize; 2],
        [usize; 2],
    );
    let cases: [Case; 5] = [
        (
            2,
            3,
            1,
            [3, 4],
            [3, 3],
            [2, 2],
            [1, 1, 1, 1],
            [1, 1],
            [1, 1],
        ),
        (
            4,
            6,
            2,
            [3, 3],
            [2, 3],
            [2, 1],
            [1, 0, 2, 1],
            [1, 1],
            [1, 0],
        ),
        (
            3,
            3,
            3,
            [4, 2],
            [3, 2],
            [1, 2],
            [0, 1, 1, 0],
            [2, 1],
            [0, 1],
        ),
        (
            2,
            2,
            1,
            [1, 5],
            [1, 3],
            [3, 3],
            [0, 0, 0, 2],
            [1, 1],
            [2, 0],
        ),
        (
            4,
            2,
            2,
            [2, 3],
            [3, 3],
            [2, 3],
            [2, 2, 0, 1],
            [1, 2],
            [0, 2],
        ),
    ];
    for (c, o, g, [h, w], [kh, kw], s, pad, d, opad) in cases {
        let x = random(&mut r, F64, &[2, c, h, w], -1.0, 1.0);
        let wt = random(&mut r, F64, &[c, o / g, kh, kw], -1.0, 1.0);
        let oh = (h - 1) * s[0] + d[0] * (kh - 1) + opad[0] + 1 - pad[0] - pad[2];
        let ow = (w - 1) * s[1] + d[1] * (kw - 1) + opad[1] + 1 - pad[1] - pad[3];
        let yv = random(&mut r, F64, &[2, o, oh, ow], -1.0, 1.0);
        let p = ConvP {
            stride: s,
            pad,
            dil: d,
            groups: g,
        };
        let ct = op(
            &format!(
                "conv_transpose2d(%x, %w) {{{}, output_padding = [{}, {}]}}",
                attrs(&p),
                opad[0],
                opad[1]
            ),
            &ty(F64, &[2, o, oh, ow]),
            &[("x", &x), ("w", &wt)],
        );
        // conv2d(y, w) maps [2, O, OH, OW] back to [2, C, H, W] with w read as [C, O/g, KH, KW]
        let (shape, fwd) = naive_conv2d(&yv, &wt, None, &p);
        assert_eq!(shape, [2, c, h, w]);
        let lhs: f64 = fwd.iter().zip(&x.data).map(|(a, b)| a * b).sum();
        let rhs: f64 = ct.data.iter().zip(&yv.data).map(|(a, b)| a * b).sum();
        assert!(
            (lhs - rhs).abs() <= 1e-10 * (1.0 + lhs.abs()),
            "case c={c} o={o} g={g}: <conv2d(y), x> = {lhs}, <y, conv_t(x)> = {rhs}"
        );
    }
}

// ---------------------------------------------------------------------------
// attention
// ---------------------------------------------------------------------------

/// softmax(q k^T * scale + mask, causal) v, written out: an oracle.
/// q [B, Hq, Sq, D], k [B, Hkv, Skv, D], v [B, Hkv, Skv, Dv], mask [B?, H?, Sq, Skv] broadcast.
fn naive_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
    scale: Option<f64>,
) -> Vec<f64> {
    let (b, hq, sq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let (hkv, skv, dv) = (k.shape[1], k.shape[2], v.shape[3]);
    let scale = scale.unwrap_or(1.0 / (d as f64).sqrt());
    let group = hq / hkv;
    let mut out = vec![];
    for bi in 0..b {
        for h in 0..hq {
            let kvh = h / group;
            for i in 0..sq {
                let mut s = vec![f64::NEG_INFINITY; skv];
                for (j, sj) in s.iter_mut().enumerate() {
                    if causal && j + sq > i + skv {
                        continue;
                    }
                    let mut dot = 0.0;
                    for t in 0..d {
                        dot += q.at(&[bi, h, i, t]) * k.at(&[bi, kvh, j, t]);
                    }
                    let mv = mask.map_or(0.0, |m| {
                        // right-align the mask's shape with [B, Hq, Sq, Skv]
                        let off = 4 - m.shape.len();
                        let full = [bi, h, i, j];
                        let idx: Vec<usize> = (off..4)
                            .map(|a| if m.shape[a - off] == 1 { 0 } else { full[a] })
                            .collect();
                        m.at(&idx)
                    });
                    *sj = dot * scale + mv;
                }
                let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s
                    .iter()
                    .map(|&x| {
                        if mx == f64::NEG_INFINITY {
                            0.0
                        } else {
                            (x - mx).exp()
                        }
                    })
                    .collect();
                let z: f64 = e.iter().sum();
                for t in 0..dv {
                    let mut acc = 0.0;
                    for (j, ej) in e.iter().enumerate() {
                        if z > 0.0 {
                            acc += ej / z * v.at(&[bi, kvh, j, t]);
                        }
                    }
                    out.push(acc);
                }
            }
        }
    }
    out
}

#[test]
fn attention_hand_values() {
    // one query, two keys, D = 1, scale 1: scores [0, ln 3] -> weights [1/4, 3/4]
    let q = f64t(&[1, 1, 1, 1], &[1.0]);
    let k = f64t(&[1, 1, 2, 1], &[0.0, 3f64.ln()]);
    let v = f64t(&[1, 1, 2, 2], &[4.0, -8.0, 8.0, 4.0]);
    let y = op(
        "attention(%q, %k, %v) {scale = 1.0}",
        "f64[1, 1, 1, 2]",
        &[("q", &q), ("k", &k), ("v", &v)],
    );
    // 0.25 * [4, -8] + 0.75 * [8, 4] = [7, 1]
    assert_close(&y, F64, &[1, 1, 1, 2], &[7.0, 1.0], REL64, 0.0);
    // default scale 1/sqrt(D) with D = 4: q.k = 2 ln 3 * 2 ... build q.k = 2 ln 3 so
    // the scaled score is ln 3
    let q = f64t(&[1, 1, 1, 4], &[1.0, 1.0, 1.0, 1.0]);
    let l = 3f64.ln() / 2.0;
    let k = f64t(&[1, 1, 2, 4], &[0.0, 0.0, 0.0, 0.0, l, l, l, l]);
    let y = op(
        "attention(%q, %k, %v)",
        "f64[1, 1, 1, 2]",
        &[("q", &q), ("k", &k), ("v", &v)],
    );
    assert_close(&y, F64, &[1, 1, 1, 2], &[7.0, 1.0], REL64, 0.0);
    // causal, Sq = Skv = 2: query 0 sees key 0 only; query 1 both (equal scores)
    let q = f64t(&[1, 1, 2, 1], &[0.0, 0.0]);
    let k = f64t(&[1, 1, 2, 1], &[0.0, 0.0]);
    let y = op(
        "attention(%q, %k, %v) {causal = true}",
        "f64[1, 1, 2, 2]",
        &[("q", &q), ("k", &k), ("v", &v)],
    );
    assert_close(&y, F64, &[1, 1, 2, 2], &[4.0, -8.0, 6.0, -2.0], REL64, 0.0);
    // causal decode: Sq = 1 sees every key
    let q1 = f64t(&[1, 1, 1, 1], &[0.0]);
    let y = op(
        "attention(%q, %k, %v) {causal = true}",
        "f64[1, 1, 1, 2]",
        &[("q", &q1), ("k", &k), ("v", &v)],
    );
    assert_close(&y, F64, &[1, 1, 1, 2], &[6.0, -2.0], REL64, 0.0);
    // a fully masked row gives zeros
    let m = f64t(
        &[1, 1, 2, 2],
        &[f64::NEG_INFINITY, f64::NEG_INFINITY, 0.0, 0.0],
    );
    let y = op(
        "attention(%q, %k, %v, %m)",
        "f64[1, 1, 2, 2]",
        &[("q", &q), ("k", &k), ("v", &v), ("m", &m)],
    );
    assert_close(&y, F64, &[1, 1, 2, 2], &[0.0, 0.0, 6.0, -2.0], REL64, 0.0);
}

#[test]
fn attention_grouped_query_head_mapping() {
    // Hq = 4, Hkv = 2: query heads 0, 1 read kv head 0, heads 2, 3 read kv head 1
    let q = f64t(&[1, 4, 1, 2], &[0.0; 8]);
    let k = f64t(&[1, 2, 3, 2], &[0.0; 12]);
    // kv head 0 values all 1, head 1 values all 2 (uniform weights -> the mean)
    let mut vv = vec![1.0; 6];
    vv.extend(vec![2.0; 6]);
    let v = f64t(&[1, 2, 3, 2], &vv);
    let y = op(
        "attention(%q, %k, %v)",
        "f64[1, 4, 1, 2]",
        &[("q", &q), ("k", &k), ("v", &v)],
    );
    assert_close(
        &y,
        F64,
        &[1, 4, 1, 2],
        &[1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0],
        REL64,
        0.0,
    );
}

#[test]
fn attention_against_naive_softmax() {
    let mut r = rng("attention_against_naive_softmax");
    // (B, Hq, Hkv, Sq, Skv, D, Dv, causal, mask shape, scale)
    type Case<'a> = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        bool,
        Option<&'a [usize]>,
        Option<f64>,
    );
    let cases: [Case; 10] = [
        (1, 2, 1, 3, 2, 3, 2, true, None, None),
        (2, 2, 2, 3, 4, 2, 3, true, Some(&[3, 4]), None),
        (2, 2, 2, 3, 3, 3, 3, false, None, None),
        (1, 2, 2, 4, 4, 3, 5, true, None, None),
        (2, 1, 1, 2, 5, 4, 2, true, None, Some(0.3)),
        (1, 3, 3, 1, 5, 2, 3, true, None, None),
        (2, 2, 2, 3, 4, 3, 3, false, Some(&[1, 1, 3, 4]), None),
        (1, 4, 2, 3, 3, 3, 2, true, Some(&[1, 4, 1, 3]), Some(1.5)),
        (2, 4, 2, 2, 5, 3, 4, true, Some(&[2, 1, 2, 5]), None),
        (1, 4, 1, 1, 1, 1, 1, false, None, None),
    ];
    for (b, hq, hkv, sq, skv, d, dv, causal, mshape, scale) in cases {
        let q = random(&mut r, F64, &[b, hq, sq, d], -2.0, 2.0);
        let k = random(&mut r, F64, &[b, hkv, skv, d], -2.0, 2.0);
        let v = random(&mut r, F64, &[b, hkv, skv, dv], -2.0, 2.0);
        let mask = mshape.map(|s| random(&mut r, F64, s, -3.0, 1.0));
        let mut attrs = vec![];
        if causal {
            attrs.push("causal = true".to_string());
        }
        if let Some(s) = scale {
            attrs.push(format!("scale = {s:?}"));
        }
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" {{{}}}", attrs.join(", "))
        };
        let out = [b, hq, sq, dv];
        let y = match &mask {
            Some(m) => op(
                &format!("attention(%q, %k, %v, %m){attrs}"),
                &ty(F64, &out),
                &[("q", &q), ("k", &k), ("v", &v), ("m", m)],
            ),
            None => op(
                &format!("attention(%q, %k, %v){attrs}"),
                &ty(F64, &out),
                &[("q", &q), ("k", &k), ("v", &v)],
            ),
        };
        let exp = naive_attention(&q, &k, &v, mask.as_ref(), causal, scale);
        assert_close(&y, F64, &out, &exp, 1e-11, 1e-13);
    }
}

#[test]
fn attention_f32_rounds_once() {
    let mut r = rng("attention_f32_rounds_once");
    let q = random(&mut r, F32, &[1, 2, 3, 4], -1.0, 1.0);
    let k = random(&mut r, F32, &[1, 2, 3, 4], -1.0, 1.0);
    let v = random(&mut r, F32, &[1, 2, 3, 4], -1.0, 1.0);
    let y = op(
        "attention(%q, %k, %v) {causal = true}",
        "f32[1, 2, 3, 4]",
        &[("q", &q), ("k", &k), ("v", &v)],
    );
    let exp: Vec<f64> = naive_attention(&q, &k, &v, None, true, None)
        .iter()
        .map(|&x| x as f32 as f64)
        .collect();
    assert_ulps(&y, F32, &[1, 2, 3, 4], &exp, 1.0);
}

// ---------------------------------------------------------------------------
// rope
// ---------------------------------------------------------------------------

#[test]
fn rope_half_split_and_interleaved_by_hand() {
    // S = 2, D = 4; position 0 is the identity, position 1 has
    // (cos, sin) = (0, 1) for pair 0 and (0.6, 0.8) for pair 1.
    let x = f64t(&[1, 2, 4], &[5.0, 6.0, 7.0, 8.0, 1.0, 2.0, 3.0, 4.0]);
    let cos = f64t(&[2, 2], &[1.0, 1.0, 0.0, 0.6]);
    let sin = f64t(&[2, 2], &[0.0, 0.0, 1.0, 0.8]);
    let ins = [("x", &x), ("c", &cos), ("s", &sin)];
    // half split: pairs (x0, x2), (x1, x3); (a, b) -> (a c - b s, b c + a s)
    // (1, 3) with (0, 1) -> (-3, 1); (2, 4) with (0.6, 0.8) -> (-2, 4)
    let y = op("rope(%x, %c, %s)", "f64[1, 2, 4]", &ins);
    assert_close(
        &y,
        F64,
        &[1, 2, 4],
        &[5.0, 6.0, 7.0, 8.0, -3.0, -2.0, 1.0, 4.0],
        REL64,
        1e-15,
    );
    // interleaved: pairs (x0, x1), (x2, x3)
    // (1, 2) with (0, 1) -> (-2, 1); (3, 4) with (0.6, 0.8) -> (-1.4, 4.8)
    let y = op(
        "rope(%x, %c, %s) {interleaved = true}",
        "f64[1, 2, 4]",
        &ins,
    );
    assert_close(
        &y,
        F64,
        &[1, 2, 4],
        &[5.0, 6.0, 7.0, 8.0, -2.0, 1.0, -1.4, 4.8],
        REL64,
        1e-15,
    );
}

#[test]
fn rope_leading_axes_and_real_angles() {
    // x [2, 3, 3, 4] (batch, heads, S = 3, D = 4); angles pos * inv_freq,
    // inv_freq = 10000^(-2i/D) = [1, 0.01]
    let mut r = rng("rope_leading_axes_and_real_angles");
    let x = random(&mut r, F64, &[2, 3, 3, 4], -1.0, 1.0);
    let inv = [1.0, 0.01];
    let ang: Vec<f64> = (0..3)
        .flat_map(|p| inv.iter().map(move |f| p as f64 * f))
        .collect();
    let cos = f64t(&[3, 2], &ang.iter().map(|a| a.cos()).collect::<Vec<_>>());
    let sin = f64t(&[3, 2], &ang.iter().map(|a| a.sin()).collect::<Vec<_>>());
    let ins = [("x", &x), ("c", &cos), ("s", &sin)];
    let half = op("rope(%x, %c, %s)", "f64[2, 3, 3, 4]", &ins);
    let inter = op(
        "rope(%x, %c, %s) {interleaved = true}",
        "f64[2, 3, 3, 4]",
        &ins,
    );
    // reference: HF rotate_half form x * [c, c] + [-x2, x1] * [s, s]; GPT-J form on pairs
    let mut eh = vec![];
    let mut ei = vec![];
    for row in 0..18 {
        let p = row % 3;
        let xr = &x.data[row * 4..row * 4 + 4];
        let (c, s) = (&cos.data[p * 2..p * 2 + 2], &sin.data[p * 2..p * 2 + 2]);
        let cc = [c[0], c[1], c[0], c[1]];
        let ss = [s[0], s[1], s[0], s[1]];
        let rot = [-xr[2], -xr[3], xr[0], xr[1]];
        eh.extend((0..4).map(|i| xr[i] * cc[i] + rot[i] * ss[i]));
        let c2 = [c[0], c[0], c[1], c[1]];
        let s2 = [s[0], s[0], s[1], s[1]];
        let rot2 = [-xr[1], xr[0], -xr[3], xr[2]];
        ei.extend((0..4).map(|i| xr[i] * c2[i] + rot2[i] * s2[i]));
    }
    assert_close(&half, F64, &[2, 3, 3, 4], &eh, 1e-12, 1e-15);
    assert_close(&inter, F64, &[2, 3, 3, 4], &ei, 1e-12, 1e-15);
    // f32 version of the hand case, S = 1 (size-1 axis)
    let x = f32t(&[1, 2], &[1.0, 2.0]);
    let c = f32t(&[1, 1], &[0.6]);
    let s = f32t(&[1, 1], &[0.8]);
    let y = op(
        "rope(%x, %c, %s)",
        "f32[1, 2]",
        &[("x", &x), ("c", &c), ("s", &s)],
    );
    // (1, 2) -> (0.6 - 1.6, 1.2 + 0.8) on the f32 values of 0.6, 0.8
    let (c32, s32) = (0.6f32 as f64, 0.8f32 as f64);
    assert_exact(
        &y,
        F32,
        &[1, 2],
        &[
            (c32 - 2.0 * s32) as f32 as f64,
            (2.0 * c32 + s32) as f32 as f64,
        ],
    );
}
