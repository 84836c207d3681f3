//! The interpreter's tensor: concrete shape, element type, values as `f64`.

use crate::DType;
use crate::numeric;

/// A dense tensor of concrete shape. Every element holds the exact value of
/// an element of `dtype` (for quantized storage types: the decoded code,
/// e.g. an integer in -8..=7 for `i4`). Row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Tensor {
    /// A tensor from values, each rounded to `dtype` (see [`round_value`]).
    ///
    /// Panics if the value count does not match the shape (a programming error).
    pub fn new(dtype: DType, shape: &[usize], data: Vec<f64>) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "values do not fill shape {shape:?}"
        );
        let data = data.into_iter().map(|x| round_value(dtype, x)).collect();
        Tensor {
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }

    /// A rank-0 tensor.
    pub fn scalar(dtype: DType, x: f64) -> Tensor {
        Tensor::new(dtype, &[], vec![x])
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Row-major strides of the shape.
    pub fn strides(&self) -> Vec<usize> {
        strides(&self.shape)
    }

    /// The element at a multi-index.
    pub fn at(&self, idx: &[usize]) -> f64 {
        let mut flat = 0;
        for (&i, &n) in idx.iter().zip(&self.shape) {
            flat = flat * n + i;
        }
        self.data[flat]
    }

    /// Largest absolute difference to another tensor of the same shape.
    pub fn max_abs_diff(&self, other: &Tensor) -> f64 {
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    }
}

/// Row-major strides.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The multi-index of a flat row-major index.
pub fn unravel(mut flat: usize, shape: &[usize], out: &mut [usize]) {
    for i in (0..shape.len()).rev() {
        let n = shape[i].max(1);
        out[i] = flat % n;
        flat /= n;
    }
}

/// Strides that read `from` (broadcast to `to` by NumPy rules) at the
/// multi-indices of `to`: 0 on broadcast axes.
pub fn broadcast_strides(from: &[usize], to: &[usize]) -> Vec<usize> {
    let st = strides(from);
    let off = to.len() - from.len();
    (0..to.len())
        .map(|i| {
            if i < off || from[i - off] == 1 {
                0
            } else {
                st[i - off]
            }
        })
        .collect()
}

/// Calls `f(out_flat, offsets)` for every element of `out_shape`, where
/// `offsets[k]` is the flat index into the k-th input (given by its
/// broadcast strides).
pub fn for_each_broadcast(
    out_shape: &[usize],
    in_strides: &[Vec<usize>],
    mut f: impl FnMut(usize, &[usize]),
) {
    let n: usize = out_shape.iter().product();
    let rank = out_shape.len();
    let mut idx = vec![0usize; rank];
    let mut offs = vec![0usize; in_strides.len()];
    for flat in 0..n {
        f(flat, &offs);
        // increment the multi-index, updating offsets incrementally
        for d in (0..rank).rev() {
            idx[d] += 1;
            for (o, s) in offs.iter_mut().zip(in_strides) {
                *o += s[d];
            }
            if idx[d] < out_shape[d] {
                break;
            }
            for (o, s) in offs.iter_mut().zip(in_strides) {
                *o -= s[d] * idx[d];
            }
            idx[d] = 0;
        }
    }
}

/// Rounds a computed value to the element type, as the IR's value semantics
/// say: floats and minifloats round to nearest even (saturating where the
/// type does), integers wrap to their width (two's complement), bool is
/// `x != 0`.
pub fn round_value(dtype: DType, x: f64) -> f64 {
    match dtype {
        DType::F64 | DType::F32 | DType::F16 | DType::BF16 => numeric::round_to(dtype, x),
        DType::F8E4M3 | DType::F8E5M2 | DType::F4E2M1 | DType::E8M0 => numeric::round_to(dtype, x),
        DType::Bool => (x != 0.0) as u8 as f64,
        DType::I64
        | DType::I32
        | DType::I8
        | DType::U8
        | DType::I4
        | DType::U4
        | DType::I3
        | DType::I6 => wrap_int(dtype, x),
    }
}

/// Wraps an integer value to the width of an integer type (two's
/// complement); a non-integral value is truncated toward zero first, NaN is 0.
pub fn wrap_int(dtype: DType, x: f64) -> f64 {
    if x.is_nan() {
        return 0.0;
    }
    wrap_i128(dtype, x.trunc().clamp(-1.7e38, 1.7e38) as i128)
}

/// Wraps an exact integer to the width of an integer type (two's complement).
pub fn wrap_i128(dtype: DType, v: i128) -> f64 {
    // An i64 is held as its nearest f64, so i64::MAX is held as 2^63 (as
    // `numeric::decode` gives it): keep that value instead of wrapping it
    // to i64::MIN, so that rounding a held i64 leaves it unchanged.
    if dtype == DType::I64 && v == 1i128 << 63 {
        return v as f64;
    }
    let bits = dtype.bits();
    let m = 1i128 << bits;
    let mut w = v.rem_euclid(m);
    if dtype.int_range().is_some_and(|(lo, _)| lo < 0) && w >= m / 2 {
        w -= m;
    }
    w as f64
}

/// Saturating conversion to an integer type: truncates toward zero, clamps
/// to the range; NaN is 0. The rule of `cast` from floats to integers.
pub fn saturate_int(dtype: DType, x: f64) -> f64 {
    if x.is_nan() {
        return 0.0;
    }
    let (lo, hi) = dtype.int_range().unwrap_or((i64::MIN, i64::MAX));
    x.trunc().clamp(lo as f64, hi as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_and_saturation() {
        assert_eq!(wrap_int(DType::I8, 130.0), -126.0);
        assert_eq!(wrap_int(DType::U8, -1.0), 255.0);
        assert_eq!(wrap_int(DType::I4, 9.0), -7.0);
        assert_eq!(wrap_int(DType::I32, 2147483648.0), -2147483648.0);
        assert_eq!(wrap_int(DType::I8, -3.7), -3.0);
        assert_eq!(saturate_int(DType::I8, 300.5), 127.0);
        assert_eq!(saturate_int(DType::U8, -2.5), 0.0);
        assert_eq!(saturate_int(DType::I32, f64::NAN), 0.0);
    }

    #[test]
    fn broadcast_iteration_offsets() {
        // a [2, 1] against b [3] -> out [2, 3]
        let out = [2, 3];
        let sa = broadcast_strides(&[2, 1], &out);
        let sb = broadcast_strides(&[3], &out);
        let mut seen = Vec::new();
        for_each_broadcast(&out, &[sa, sb], |f, o| seen.push((f, o[0], o[1])));
        assert_eq!(
            seen,
            vec![
                (0, 0, 0),
                (1, 0, 1),
                (2, 0, 2),
                (3, 1, 0),
                (4, 1, 1),
                (5, 1, 2)
            ]
        );
    }
}
