//! Float formats and conversions.

use half::{bf16, f16};

use crate::inst::{Rnd, Ty};

/// The value of a float of type `t` held in the low bits of `v`.
pub(crate) fn to_f64(t: Ty, v: u64) -> f64 {
    match t {
        Ty::F16 => f16::from_bits(v as u16).to_f64(),
        Ty::BF16 => bf16::from_bits(v as u16).to_f64(),
        Ty::F32 => f64::from(f32::from_bits(v as u32)),
        Ty::F64 => f64::from_bits(v),
        _ => unreachable!("to_f64 of {t:?}"),
    }
}

/// The value of an fp8 code: `e4m3` (bias 7, no infinities, S.1111.111
/// NaN) or `e5m2` (bias 15, IEEE-like infinities and NaNs).
pub(crate) fn fp8_value(t: Ty, code: u8) -> f64 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let (ebits, mbits, bias) = match t {
        Ty::E4m3 => (4, 3, 7),
        _ => (5, 2, 15),
    };
    let e = i32::from((code >> mbits) & ((1 << ebits) - 1));
    let m = f64::from(code & ((1 << mbits) - 1));
    let scale = f64::from(1u32 << mbits);
    let emax = (1 << ebits) - 1;
    match t {
        Ty::E4m3 if e == emax && m == 7.0 => f64::NAN,
        Ty::E5m2 if e == emax && m == 0.0 => sign * f64::INFINITY,
        Ty::E5m2 if e == emax => f64::NAN,
        _ if e == 0 => sign * m / scale * 2f64.powi(1 - bias),
        _ => sign * (1.0 + m / scale) * 2f64.powi(e - bias),
    }
}

/// `x` rounded to the float type `t` as `rnd` says, as bits.
pub(crate) fn from_f64(t: Ty, x: f64, rnd: Rnd) -> Result<u64, String> {
    Ok(match (t, rnd) {
        (Ty::F64, _) => x.to_bits(),
        (Ty::F32, Rnd::Nearest) => u64::from((x as f32).to_bits()),
        (Ty::F32, Rnd::Zero | Rnd::Down | Rnd::Up) => u64::from(f32_directed(x, rnd).to_bits()),
        (Ty::F16, Rnd::Nearest) => u64::from(f16::from_f64(x).to_bits()),
        (Ty::BF16, Rnd::Nearest) => u64::from(bf16::from_f64(x).to_bits()),
        _ => return Err(format!("a conversion to {t:?} rounding {rnd:?}")),
    })
}

/// `x` rounded to f32 toward zero, down or up.
fn f32_directed(x: f64, rnd: Rnd) -> f32 {
    let r = x as f32;
    if x.is_nan() || f64::from(r) == x {
        return r;
    }
    // `r` is x's nearest f32 (possibly infinite): step one unit toward
    // where the rounding wants the result.
    let down = |v: f32| -> f32 {
        if v == f32::INFINITY {
            f32::MAX
        } else {
            v.next_down()
        }
    };
    let up = |v: f32| -> f32 {
        if v == f32::NEG_INFINITY {
            f32::MIN
        } else {
            v.next_up()
        }
    };
    let want_down = match rnd {
        Rnd::Down => true,
        Rnd::Up => false,
        _ => x > 0.0,
    };
    if want_down && f64::from(r) > x {
        down(r)
    } else if !want_down && f64::from(r) < x {
        up(r)
    } else {
        r
    }
}

/// `x` rounded to an integral value as `rnd` says (`rni` and friends).
pub(crate) fn round_int(x: f64, rnd: Rnd) -> f64 {
    match rnd {
        Rnd::IntNearest | Rnd::Nearest => x.round_ties_even(),
        Rnd::IntZero | Rnd::Zero => x.trunc(),
        Rnd::IntDown | Rnd::Down => x.floor(),
        Rnd::IntUp | Rnd::Up => x.ceil(),
    }
}

/// `cvt.rnd.D.S` of the bits `v`.
pub(crate) fn cvt(d: Ty, s: Ty, rnd: Rnd, sat: bool, v: u64) -> Result<u64, String> {
    match (d.is_float(), s.is_float()) {
        (true, true) => {
            let x = to_f64(s, v);
            if sat {
                return Err("a saturating float conversion".into());
            }
            match rnd {
                Rnd::IntNearest | Rnd::IntZero | Rnd::IntDown | Rnd::IntUp => {
                    // Integral values of the source type are exact in the
                    // destination type PTX allows with these modes.
                    from_f64(d, round_int(x, rnd), Rnd::Nearest)
                }
                _ => from_f64(d, x, rnd),
            }
        }
        (false, true) => {
            let x = to_f64(s, v);
            let r = round_int(x, rnd);
            Ok(saturate_int(d, r))
        }
        (true, false) => {
            let i = int_value(s, v);
            // i64 and u64 convert to f32 and f64 with one rounding.
            let bits = match d {
                Ty::F32 if rnd == Rnd::Nearest => {
                    if s.signed() {
                        u64::from((i as i64 as f32).to_bits())
                    } else {
                        u64::from((i as u64 as f32).to_bits())
                    }
                }
                Ty::F64 if rnd == Rnd::Nearest => {
                    if s.signed() {
                        (i as i64 as f64).to_bits()
                    } else {
                        (i as u64 as f64).to_bits()
                    }
                }
                _ => from_f64(d, i as f64, rnd)?,
            };
            Ok(bits)
        }
        (false, false) => {
            let i = int_value(s, v);
            if sat {
                let (lo, hi) = int_range(d);
                return Ok((i.clamp(lo, hi) as u64) & d.mask());
            }
            Ok((i as u64) & d.mask())
        }
    }
}

/// The integer in the low bits of `v`, sign- or zero-extended by `t`.
#[inline]
pub(crate) fn int_value(t: Ty, v: u64) -> i128 {
    let w = t.bits();
    if t.signed() {
        i128::from(sx(v, w))
    } else {
        i128::from(v & t.mask())
    }
}

/// The range of an integer type.
fn int_range(t: Ty) -> (i128, i128) {
    let w = t.bits();
    if t.signed() {
        (-(1i128 << (w - 1)), (1i128 << (w - 1)) - 1)
    } else {
        (0, (1i128 << w) - 1)
    }
}

/// A float already rounded to an integral value, saturated to `t`, as
/// bits. NaN converts to 0, except to a signed 64-bit integer, where it
/// gives the most negative value: so the H200 converts it (measured: a
/// quantizing store that clamped `cvt.rni.s64.f32` of a NaN wrote the
/// clamp's lower bound).
fn saturate_int(t: Ty, x: f64) -> u64 {
    if x.is_nan() {
        return if t == Ty::S64 { i64::MIN as u64 } else { 0 };
    }
    let (lo, hi) = int_range(t);
    let i = if x <= lo as f64 {
        lo
    } else if x >= hi as f64 {
        hi
    } else {
        x as i128
    };
    (i as u64) & t.mask()
}

/// Sign-extends the low `w` bits of `v`.
pub(crate) fn sx(v: u64, w: u32) -> i64 {
    if w >= 64 {
        v as i64
    } else {
        ((v << (64 - w)) as i64) >> (64 - w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_codes_by_hand() {
        assert_eq!(fp8_value(Ty::E4m3, 0x38), 1.0);
        assert_eq!(fp8_value(Ty::E4m3, 0x7e), 448.0);
        assert_eq!(fp8_value(Ty::E4m3, 0x01), 2f64.powi(-9));
        assert_eq!(fp8_value(Ty::E4m3, 0xc4), -3.0);
        assert!(fp8_value(Ty::E4m3, 0x7f).is_nan());
        assert_eq!(fp8_value(Ty::E5m2, 0x3c), 1.0);
        assert_eq!(fp8_value(Ty::E5m2, 0x7b), 57344.0);
        assert_eq!(fp8_value(Ty::E5m2, 0x7c), f64::INFINITY);
        assert!(fp8_value(Ty::E5m2, 0x7d).is_nan());
        assert_eq!(fp8_value(Ty::E5m2, 0x01), 2f64.powi(-16));
    }

    #[test]
    fn conversions_by_hand() {
        // f32 -> bf16 rounds to nearest even: 1 + 2^-8 is a tie between
        // 1 and 1 + 2^-7, and goes to 1.
        let one_and_tie = u64::from((1.0f32 + 1.0 / 256.0).to_bits());
        assert_eq!(
            cvt(Ty::BF16, Ty::F32, Rnd::Nearest, false, one_and_tie),
            Ok(0x3f80)
        );
        // Float to integer saturates, NaN is 0 (the most negative value
        // for s64, as the H200 gives), rni ties to even.
        let f = |x: f32| u64::from(x.to_bits());
        assert_eq!(cvt(Ty::S32, Ty::F32, Rnd::IntNearest, false, f(2.5)), Ok(2));
        assert_eq!(
            cvt(Ty::S32, Ty::F32, Rnd::IntNearest, false, f(-3.5)),
            Ok(0xffff_fffc)
        );
        assert_eq!(
            cvt(Ty::S32, Ty::F32, Rnd::IntZero, false, f(1e20)),
            Ok(0x7fff_ffff)
        );
        assert_eq!(
            cvt(Ty::S64, Ty::F32, Rnd::IntZero, false, f(f32::NAN)),
            Ok(i64::MIN as u64)
        );
        assert_eq!(
            cvt(Ty::S32, Ty::F32, Rnd::IntZero, false, f(f32::NAN)),
            Ok(0)
        );
        // Integer to integer: sign extension, truncation, saturation.
        assert_eq!(
            cvt(Ty::S64, Ty::S32, Rnd::Nearest, false, 0xffff_fffe),
            Ok(u64::MAX - 1)
        );
        assert_eq!(
            cvt(Ty::U32, Ty::U64, Rnd::Nearest, false, 0x1_0000_0005),
            Ok(5)
        );
        assert_eq!(cvt(Ty::U8, Ty::S32, Rnd::Nearest, true, 0xffff_ffff), Ok(0));
        // f64 -> f32 toward zero and down.
        let third = (1.0f64 / 3.0).to_bits();
        let rz = cvt(Ty::F32, Ty::F64, Rnd::Zero, false, third).unwrap() as u32;
        let rn = cvt(Ty::F32, Ty::F64, Rnd::Nearest, false, third).unwrap() as u32;
        assert!(f64::from(f32::from_bits(rz)) < 1.0 / 3.0);
        assert!(f32::from_bits(rz) <= f32::from_bits(rn));
        let neg = (-1.0f64 / 3.0).to_bits();
        let rm = f32::from_bits(cvt(Ty::F32, Ty::F64, Rnd::Down, false, neg).unwrap() as u32);
        assert!(f64::from(rm) < -1.0 / 3.0);
    }
}
