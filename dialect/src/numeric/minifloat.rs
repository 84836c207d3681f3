//! One codec for the small binary float formats (`f16 bf16 f8e4m3 f8e5m2
//! f4e2m1`), parameterized by field widths, bias and special values, plus
//! the `e8m0` scale format.

use crate::DType;

/// Which codes are special (not finite numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Specials {
    /// IEEE style: exponent all ones is ±inf (mantissa 0) or NaN.
    Ieee,
    /// Only the all-ones magnitude is NaN; no infinities (E4M3FN).
    NanOnly,
    /// Every code is a finite number (E2M1).
    None,
}

/// What happens to finite values whose rounded magnitude exceeds the range,
/// and to infinite inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Overflow {
    /// IEEE: round to ±inf.
    Infinity,
    /// Clamp to ±max finite ("satfinite").
    Saturate,
}

/// A binary float format with a sign bit, `exp_bits` biased exponent bits and
/// `man_bits` stored mantissa bits, with subnormals.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Minifloat {
    exp_bits: u32,
    man_bits: u32,
    bias: i32,
    specials: Specials,
    overflow: Overflow,
    /// The magnitude code NaN encodes to.
    nan_code: u64,
    /// Whether an encoded NaN carries the input's sign bit.
    nan_signed: bool,
}

const F16: Minifloat = Minifloat {
    exp_bits: 5,
    man_bits: 10,
    bias: 15,
    specials: Specials::Ieee,
    overflow: Overflow::Infinity,
    nan_code: 0x7E00,
    nan_signed: true,
};
const BF16: Minifloat = Minifloat {
    exp_bits: 8,
    man_bits: 7,
    bias: 127,
    specials: Specials::Ieee,
    overflow: Overflow::Infinity,
    nan_code: 0x7FC0,
    nan_signed: true,
};
const F8E4M3: Minifloat = Minifloat {
    exp_bits: 4,
    man_bits: 3,
    bias: 7,
    specials: Specials::NanOnly,
    overflow: Overflow::Saturate,
    nan_code: 0x7F,
    nan_signed: false,
};
const F8E5M2: Minifloat = Minifloat {
    exp_bits: 5,
    man_bits: 2,
    bias: 15,
    specials: Specials::Ieee,
    overflow: Overflow::Saturate,
    nan_code: 0x7E,
    nan_signed: false,
};
const F4E2M1: Minifloat = Minifloat {
    exp_bits: 2,
    man_bits: 1,
    bias: 1,
    specials: Specials::None,
    overflow: Overflow::Saturate,
    nan_code: 0x0,
    nan_signed: false,
};

impl Minifloat {
    /// The format of a minifloat type; `None` for every other type.
    pub(crate) fn of(dtype: DType) -> Option<Minifloat> {
        match dtype {
            DType::F16 => Some(F16),
            DType::BF16 => Some(BF16),
            DType::F8E4M3 => Some(F8E4M3),
            DType::F8E5M2 => Some(F8E5M2),
            DType::F4E2M1 => Some(F4E2M1),
            _ => None,
        }
    }

    /// Bit position of the sign (= width of the magnitude).
    fn sign_shift(self) -> u32 {
        self.exp_bits + self.man_bits
    }

    /// Magnitude code with the exponent field all ones and mantissa zero.
    fn all_ones_exp(self) -> u64 {
        ((1u64 << self.exp_bits) - 1) << self.man_bits
    }

    /// The magnitude code of the largest finite value.
    fn max_code(self) -> u64 {
        let all = (1u64 << self.sign_shift()) - 1;
        match self.specials {
            Specials::Ieee => self.all_ones_exp() - 1,
            Specials::NanOnly => all - 1,
            Specials::None => all,
        }
    }

    /// Unbiased exponent of the normal binade with biased exponent 1.
    fn emin(self) -> i32 {
        1 - self.bias
    }

    /// The largest finite value.
    pub(crate) fn max_finite(self) -> f64 {
        self.decode(self.max_code())
    }

    /// Encodes `x`: round to nearest even, then overflow per the format.
    pub(crate) fn encode(self, x: f64) -> u64 {
        let sign = u64::from(x.is_sign_negative()) << self.sign_shift();
        if x.is_nan() {
            return if self.nan_signed {
                sign | self.nan_code
            } else {
                self.nan_code
            };
        }
        let rounded = if x.is_infinite() {
            u64::MAX
        } else {
            self.round_magnitude(x.abs())
        };
        let magnitude = if rounded <= self.max_code() {
            rounded
        } else {
            match self.overflow {
                Overflow::Infinity => self.all_ones_exp(),
                Overflow::Saturate => self.max_code(),
            }
        };
        sign | magnitude
    }

    /// The magnitude code nearest to the finite `a >= 0` (ties to even),
    /// with an unbounded exponent range: the result may exceed
    /// [`Self::max_code`], and then the value overflowed.
    ///
    /// Within a binade of exponent `E` (or the subnormal range, where `E` is
    /// taken as `emin`) the values are `q * 2^(E - man_bits)`, and the code
    /// is `((E - emin) << man_bits) + q`; a `q` that rounds up to
    /// `2^(man_bits + 1)` carries into the next binade's code by itself.
    fn round_magnitude(self, a: f64) -> u64 {
        let bits = a.to_bits() & !(1u64 << 63);
        let biased = (bits >> 52) as i32;
        let fraction = bits & ((1u64 << 52) - 1);
        // a = m * 2^e exactly.
        let (m, e) = if biased == 0 {
            (fraction, -1074)
        } else {
            (fraction | (1u64 << 52), biased - 1075)
        };
        if m == 0 {
            return 0;
        }
        let top = e + 63 - m.leading_zeros() as i32;
        let binade = top.max(self.emin());
        // a / quantum = m * 2^-shift, with shift >= 0 for every format here.
        let shift = u32::try_from(binade - self.man_bits as i32 - e).unwrap_or(0);
        let q = shift_right_even(m, shift);
        let binade_offset = u64::try_from(binade - self.emin()).unwrap_or(0);
        (binade_offset << self.man_bits) + q
    }

    /// The exact value of a code (bits above the format are ignored).
    pub(crate) fn decode(self, code: u64) -> f64 {
        let negative = (code >> self.sign_shift()) & 1 == 1;
        let magnitude = code & ((1u64 << self.sign_shift()) - 1);
        let exp = (magnitude >> self.man_bits) as i32;
        let man = magnitude & ((1u64 << self.man_bits) - 1);
        let all_ones = (1i32 << self.exp_bits) - 1;
        let value = match self.specials {
            Specials::Ieee if exp == all_ones && man == 0 => f64::INFINITY,
            Specials::Ieee if exp == all_ones => f64::NAN,
            Specials::NanOnly if magnitude == (1u64 << self.sign_shift()) - 1 => f64::NAN,
            _ if exp == 0 => libm::ldexp(man as f64, self.emin() - self.man_bits as i32),
            _ => libm::ldexp(
                (man | (1u64 << self.man_bits)) as f64,
                exp - self.bias - self.man_bits as i32,
            ),
        };
        if negative { -value } else { value }
    }
}

/// `m / 2^s` rounded to the nearest integer, ties to even.
fn shift_right_even(m: u64, s: u32) -> u64 {
    match s {
        0 => m,
        // m < 2^64 <= 2^(s-1): below one half.
        65.. => 0,
        _ => {
            let q = m.checked_shr(s).unwrap_or(0);
            let rem = m & (u64::MAX >> (64 - s));
            let half = 1u64 << (s - 1);
            if rem > half || (rem == half && q & 1 == 1) {
                q + 1
            } else {
                q
            }
        }
    }
}

/// `e8m0`: the nearest power of two in the linear domain (ties to the even
/// code), clamped to codes `0 ..= 254`; NaN and negative numbers give `0xFF`.
pub(crate) fn encode_e8m0(x: f64) -> u64 {
    if x.is_nan() || x < 0.0 {
        return 0xFF;
    }
    if x.is_infinite() {
        return 0xFE;
    }
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7FF) as i64;
    if biased == 0 {
        // Zero or an f64 subnormal: far below 2^-127.
        return 0x00;
    }
    // x = 2^k * 1.f; the midpoint to 2^(k+1) is 1.5 * 2^k.
    let code = biased - 1023 + 127;
    let fraction = bits & ((1u64 << 52) - 1);
    let half = 1u64 << 51;
    let code = if fraction > half || (fraction == half && code & 1 == 1) {
        code + 1
    } else {
        code
    };
    code.clamp(0, 254) as u64
}

/// `e8m0`: `2^(code - 127)`, NaN for `0xFF`.
pub(crate) fn decode_e8m0(code: u64) -> f64 {
    let code = code & 0xFF;
    if code == 0xFF {
        f64::NAN
    } else {
        libm::ldexp(1.0, code as i32 - 127)
    }
}
