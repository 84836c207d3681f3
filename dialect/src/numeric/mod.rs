//! Exact encodings of every element type: value <-> code conversion and the
//! byte packing of codes.
//!
//! A *code* is the bit pattern of one element, held in the low
//! [`DType::bits`] bits of a `u64`: IEEE bits for the float types, two's
//! complement for the signed integers, the biased exponent for `e8m0`.
//!
//! * [`encode`] rounds a real number to the nearest value of a type (ties to
//!   even, computed exactly from the `f64` input) and returns its code,
//!   saturating or overflowing to infinity as each type's rules say.
//! * [`decode`] gives the exact value of a code.
//! * [`pack`] / [`unpack`] move codes to and from bytes; sub-byte types form
//!   a dense bitstream in either [`BitOrder`].
//!
//! `docs/numeric-formats.md` lists the layouts, ranges and rules of every
//! type. All functions are total: they never panic, whatever the input.

mod minifloat;
mod pack;

use crate::DType;
use minifloat::Minifloat;

pub use pack::{BitOrder, PackError, pack, unpack};

/// Encodes a real number as the code of `dtype`.
///
/// The code's bits are in the low `dtype.bits()` bits of the result (two's
/// complement for signed integers, IEEE bits for floats). Rounding is to
/// nearest, ties to even, computed exactly from `x` (never through an
/// intermediate `f32`).
///
/// * `f64`: the bits of `x`; `f32`: IEEE binary32 rounding, overflow to ±inf.
/// * `f16`, `bf16`: IEEE rules, overflow to ±inf, NaN as the canonical quiet
///   NaN (`0x7E00` / `0x7FC0`) with the sign of `x`.
/// * `f8e4m3`, `f8e5m2`, `f4e2m1`: saturate to ±max finite (±inf included);
///   NaN gives `0x7F`, `0x7E` and `0x0` respectively.
/// * `e8m0`: the nearest power of two in the linear domain, clamped to
///   `2^-127 ..= 2^127`; NaN and negative numbers give `0xFF`.
/// * integers: round half to even, then saturate to the range; NaN gives 0.
/// * `bool`: 1 if `x != 0` (NaN included, as NumPy's `astype(bool)`), else 0.
///
/// Negative zero and negative values that round to zero keep the sign bit
/// in the types that have one.
pub fn encode(dtype: DType, x: f64) -> u64 {
    match dtype {
        DType::F64 => x.to_bits(),
        DType::F32 => u64::from((x as f32).to_bits()),
        DType::Bool => u64::from(x != 0.0),
        DType::E8M0 => minifloat::encode_e8m0(x),
        DType::BF16 => encode_ieee_normal(x, 7, 127)
            .unwrap_or_else(|| Minifloat::of(dtype).expect("bf16").encode(x)),
        DType::F16 => encode_ieee_normal(x, 10, 15)
            .unwrap_or_else(|| Minifloat::of(dtype).expect("f16").encode(x)),
        _ => match Minifloat::of(dtype) {
            Some(f) => f.encode(x),
            None => encode_int(dtype, x),
        },
    }
}

/// The fast path of [`encode`] for an IEEE format with `mant` fraction bits
/// and exponent `bias` (`f16`, `bf16`): `x` whose exponent is in the
/// format's normal range rounds on its `f64` bits, ties to even. A rounding
/// carry runs into the exponent, up to the infinity code past the largest
/// finite value, as IEEE says. `None` for zeros, subnormals, values beyond
/// the range, infinities and NaN.
fn encode_ieee_normal(x: f64, mant: u32, bias: i64) -> Option<u64> {
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i64 - 1023;
    if !(1 - bias..=bias).contains(&exp) {
        return None;
    }
    let drop = 52 - mant;
    let frac = bits & ((1u64 << 52) - 1);
    let (mut m, rest, half) = (
        frac >> drop,
        frac & ((1u64 << drop) - 1),
        1u64 << (drop - 1),
    );
    if rest > half || (rest == half && m & 1 == 1) {
        m += 1;
    }
    let sign = (bits >> 63) << (mant + exp_bits(bias));
    Some(sign | ((((exp + bias) as u64) << mant) + m))
}

/// The exponent field width of an IEEE format with this bias.
fn exp_bits(bias: i64) -> u32 {
    (bias as u64 + 1).trailing_zeros() + 1
}

/// The exact value of a code of `dtype`: NaN for NaN codes (with the code's
/// sign where there is one), ±inf for infinity codes.
///
/// Bits above `dtype.bits()` are ignored. Every value of every type is
/// exactly representable in `f64`, except `i64` values beyond 2^53, which
/// decode to the nearest `f64`.
pub fn decode(dtype: DType, code: u64) -> f64 {
    let code = code & mask(dtype.bits());
    match dtype {
        DType::F64 => f64::from_bits(code),
        DType::F32 => f64::from(f32::from_bits(code as u32)),
        DType::Bool => (code & 1) as f64,
        DType::E8M0 => minifloat::decode_e8m0(code),
        // bf16 is the high half of an f32.
        DType::BF16 => f64::from(f32::from_bits((code as u32) << 16)),
        DType::F16 => decode_f16(code as u16),
        _ => match Minifloat::of(dtype) {
            Some(f) => f.decode(code),
            None => decode_int(dtype, code),
        },
    }
}

/// The value of `dtype` that `x` encodes to: `decode(dtype, encode(dtype, x))`,
/// with fast paths for `f64` (identity) and `f32` (`x as f32`).
pub fn round_to(dtype: DType, x: f64) -> f64 {
    match dtype {
        DType::F64 => x,
        DType::F32 => f64::from(x as f32),
        _ => decode(dtype, encode(dtype, x)),
    }
}

/// Rounds to an integer, ties to even (`2.5 -> 2`, `3.5 -> 4`, `-0.5 -> -0`).
/// NaN and infinities are returned unchanged.
pub fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// The largest finite value of `dtype`: 448 for `f8e4m3`, 57344 for
/// `f8e5m2`, 6 for `f4e2m1`, 2^127 for `e8m0`, `f64::MAX` for `f64`; for the
/// integer types and `bool` the top of the range (`i64::MAX` as the nearest
/// `f64`, 2^63).
pub fn max_finite(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::MAX,
        DType::F32 => f64::from(f32::MAX),
        DType::E8M0 => decode(dtype, 0xFE),
        _ => match (Minifloat::of(dtype), dtype.int_range()) {
            (Some(f), _) => f.max_finite(),
            (None, Some((_, hi))) => hi as f64,
            (None, None) => f64::MAX,
        },
    }
}

/// The value of an IEEE binary16 code.
fn decode_f16(code: u16) -> f64 {
    let exp = i32::from((code >> 10) & 0x1f);
    let frac = f64::from(code & 0x3ff);
    let magnitude = match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1024.0 + frac) * 2f64.powi(exp - 25),
    };
    // negation, not a product, carries the sign onto NaN
    if code & 0x8000 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// A mask of the low `bits` bits.
fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// Integer types: round half to even, saturate, truncate to `bits` bits.
fn encode_int(dtype: DType, x: f64) -> u64 {
    let (lo, hi) = dtype.int_range().unwrap_or((i64::MIN, i64::MAX));
    // `as i64` truncates, saturates at the i64 range and maps NaN to 0; a
    // value it keeps exactly is an integer already and needs no rounding.
    let t = x as i64;
    let v = if t as f64 == x {
        t
    } else {
        x.round_ties_even() as i64
    };
    let v = v.clamp(lo, hi);
    (v as u64) & mask(dtype.bits())
}

/// Integer types: sign-extend signed codes, zero-extend unsigned ones.
fn decode_int(dtype: DType, code: u64) -> f64 {
    let bits = dtype.bits().clamp(1, 64);
    let signed = dtype.int_range().is_some_and(|(lo, _)| lo < 0);
    if signed {
        let shift = 64 - bits;
        (((code << shift) as i64) >> shift) as f64
    } else {
        code as f64
    }
}
