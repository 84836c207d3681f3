//! Tests of `kiln_dialect::numeric` against oracles built here from the
//! format definitions (field layouts and literal value lists), never from the
//! library itself.

use kiln_dialect::DType;
use kiln_dialect::numeric::{
    BitOrder, PackError, decode, encode, max_finite, pack, round_half_even, round_to, unpack,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ---------------------------------------------------------------------------
// Reference tables
// ---------------------------------------------------------------------------

/// Special-value layout of a minifloat format, as its definition states it.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Exponent all ones: infinity (mantissa 0) or NaN.
    Ieee,
    /// OCP E4M3FN: only S.1111.111 is NaN, no infinities.
    FiniteNan,
    /// OCP E2M1: no special values at all.
    AllFinite,
}

/// A minifloat format's parameters, written out from its definition.
#[derive(Clone, Copy, Debug)]
struct Format {
    dtype: DType,
    exp_bits: u32,
    man_bits: u32,
    bias: i32,
    kind: Kind,
}

const F16: Format = Format {
    dtype: DType::F16,
    exp_bits: 5,
    man_bits: 10,
    bias: 15,
    kind: Kind::Ieee,
};
const BF16: Format = Format {
    dtype: DType::BF16,
    exp_bits: 8,
    man_bits: 7,
    bias: 127,
    kind: Kind::Ieee,
};
const E4M3: Format = Format {
    dtype: DType::F8E4M3,
    exp_bits: 4,
    man_bits: 3,
    bias: 7,
    kind: Kind::FiniteNan,
};
const E5M2: Format = Format {
    dtype: DType::F8E5M2,
    exp_bits: 5,
    man_bits: 2,
    bias: 15,
    kind: Kind::Ieee,
};
const E2M1: Format = Format {
    dtype: DType::F4E2M1,
    exp_bits: 2,
    man_bits: 1,
    bias: 1,
    kind: Kind::AllFinite,
};

const MINIFLOATS: [Format; 5] = [F16, BF16, E4M3, E5M2, E2M1];

/// The value of a minifloat code from its sign, exponent and mantissa fields:
/// `(-1)^s * 2^(1-bias) * 0.m` for exponent 0, else `(-1)^s * 2^(e-bias) * 1.m`.
fn minifloat_value(f: Format, code: u64) -> f64 {
    let width = f.exp_bits + f.man_bits;
    let sign = if (code >> width) & 1 == 1 { -1.0 } else { 1.0 };
    let e = ((code >> f.man_bits) & ((1 << f.exp_bits) - 1)) as i32;
    let m = code & ((1 << f.man_bits) - 1);
    let e_max = (1 << f.exp_bits) - 1;
    let m_max = (1 << f.man_bits) - 1;
    match f.kind {
        Kind::Ieee if e == e_max => {
            return if m == 0 {
                sign * f64::INFINITY
            } else {
                f64::NAN
            };
        }
        Kind::FiniteNan if e == e_max && m == m_max => return f64::NAN,
        _ => {}
    }
    let fraction = m as f64 / 2f64.powi(f.man_bits as i32);
    if e == 0 {
        sign * fraction * 2f64.powi(1 - f.bias)
    } else {
        sign * (1.0 + fraction) * 2f64.powi(e - f.bias)
    }
}

/// The sixteen f4e2m1 values, by code, written out by hand.
const E2M1_VALUES: [f64; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, //
    -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// The eight i3 values, by code, written out by hand.
const I3_VALUES: [f64; 8] = [0.0, 1.0, 2.0, 3.0, -4.0, -3.0, -2.0, -1.0];

/// Integer storage and compute types that are small enough to enumerate,
/// with their width and signedness.
const SMALL_INTS: [(DType, u32, bool); 6] = [
    (DType::I3, 3, true),
    (DType::I4, 4, true),
    (DType::U4, 4, false),
    (DType::I6, 6, true),
    (DType::I8, 8, true),
    (DType::U8, 8, false),
];

/// Two's complement (or unsigned) value of a `bits`-bit code.
fn int_value(bits: u32, signed: bool, code: u64) -> f64 {
    let c = code as i64;
    if signed && c >= 1 << (bits - 1) {
        (c - (1 << bits)) as f64
    } else {
        c as f64
    }
}

/// `(code, value)` for every code of a type, from the definitions above.
fn reference_table(dtype: DType) -> Vec<(u64, f64)> {
    if let Some(f) = MINIFLOATS.iter().find(|f| f.dtype == dtype) {
        let n = 1u64 << (1 + f.exp_bits + f.man_bits);
        return (0..n).map(|c| (c, minifloat_value(*f, c))).collect();
    }
    if dtype == DType::E8M0 {
        return (0..256u64)
            .map(|c| {
                (
                    c,
                    if c == 255 {
                        f64::NAN
                    } else {
                        2f64.powi(c as i32 - 127)
                    },
                )
            })
            .collect();
    }
    let &(_, bits, signed) = SMALL_INTS
        .iter()
        .find(|t| t.0 == dtype)
        .expect("an enumerable type");
    (0..1u64 << bits)
        .map(|c| (c, int_value(bits, signed, c)))
        .collect()
}

/// The types whose every code the tests enumerate.
const ENUMERATED: [DType; 12] = [
    DType::F16,
    DType::BF16,
    DType::F8E4M3,
    DType::F8E5M2,
    DType::F4E2M1,
    DType::E8M0,
    DType::I3,
    DType::I4,
    DType::U4,
    DType::I6,
    DType::I8,
    DType::U8,
];

/// Same value, sign of zero included; any NaN matches any NaN.
fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

#[test]
fn reference_tables_match_the_written_down_constants() {
    // Checks the test's own tables before they are used as oracles.
    let table = |d| reference_table(d);
    let max_of = |d| {
        table(d)
            .iter()
            .map(|p| p.1)
            .filter(|v| v.is_finite())
            .fold(f64::MIN, f64::max)
    };
    let min_pos = |d| {
        table(d)
            .iter()
            .map(|p| p.1)
            .filter(|v| *v > 0.0)
            .fold(f64::MAX, f64::min)
    };
    let nans = |d| table(d).iter().filter(|p| p.1.is_nan()).count();
    let infs = |d| table(d).iter().filter(|p| p.1.is_infinite()).count();

    assert_eq!(max_of(DType::F16), 65504.0);
    assert_eq!(min_pos(DType::F16), 2f64.powi(-24));
    assert_eq!((nans(DType::F16), infs(DType::F16)), (2 * 1023, 2));
    assert_eq!(max_of(DType::BF16), 3.3895313892515355e38);
    assert_eq!(min_pos(DType::BF16), 2f64.powi(-133));
    assert_eq!((nans(DType::BF16), infs(DType::BF16)), (2 * 127, 2));
    assert_eq!(max_of(DType::F8E4M3), 448.0);
    assert_eq!(min_pos(DType::F8E4M3), 2f64.powi(-9));
    assert_eq!((nans(DType::F8E4M3), infs(DType::F8E4M3)), (2, 0));
    assert_eq!(max_of(DType::F8E5M2), 57344.0);
    assert_eq!(min_pos(DType::F8E5M2), 2f64.powi(-16));
    assert_eq!((nans(DType::F8E5M2), infs(DType::F8E5M2)), (6, 2));
    assert_eq!(max_of(DType::F4E2M1), 6.0);
    assert_eq!(min_pos(DType::F4E2M1), 0.5);
    assert_eq!((nans(DType::F4E2M1), infs(DType::F4E2M1)), (0, 0));
    assert_eq!(max_of(DType::E8M0), 2f64.powi(127));
    assert_eq!(min_pos(DType::E8M0), 2f64.powi(-127));
    assert_eq!((nans(DType::E8M0), infs(DType::E8M0)), (1, 0));

    // The field formula agrees with the hand-written lists.
    for (c, v) in E2M1_VALUES.iter().enumerate() {
        assert!(same(minifloat_value(E2M1, c as u64), *v), "e2m1 code {c}");
    }
    for (c, v) in I3_VALUES.iter().enumerate() {
        assert_eq!(int_value(3, true, c as u64), *v, "i3 code {c}");
    }
    assert_eq!(int_value(8, true, 0x80), -128.0);
    assert_eq!(int_value(8, false, 0xFF), 255.0);
    assert_eq!(int_value(6, true, 0x20), -32.0);
    assert_eq!(int_value(6, true, 0x1F), 31.0);
}

#[test]
fn decode_matches_reference_table_for_every_code() {
    for dtype in ENUMERATED {
        let table = reference_table(dtype);
        assert_eq!(table.len(), 1 << dtype.bits());
        for (code, want) in table {
            let got = decode(dtype, code);
            assert!(
                same(got, want),
                "{dtype} code {code:#x}: got {got:e}, want {want:e}"
            );
        }
    }
}

#[test]
fn decode_hand_written_lists() {
    for (c, v) in E2M1_VALUES.iter().enumerate() {
        assert!(same(decode(DType::F4E2M1, c as u64), *v), "f4e2m1 code {c}");
    }
    for (c, v) in I3_VALUES.iter().enumerate() {
        assert_eq!(decode(DType::I3, c as u64), *v, "i3 code {c}");
    }
    let i4 = [
        0., 1., 2., 3., 4., 5., 6., 7., -8., -7., -6., -5., -4., -3., -2., -1.,
    ];
    for (c, v) in i4.iter().enumerate() {
        assert_eq!(decode(DType::I4, c as u64), *v);
        assert_eq!(decode(DType::U4, c as u64), c as f64);
    }
}

#[test]
fn bf16_decode_matches_f32_high_half() {
    // bf16 is the high half of an f32: an oracle independent of any formula.
    for code in 0..=0xFFFFu64 {
        let want = f64::from(f32::from_bits((code as u32) << 16));
        assert!(same(decode(DType::BF16, code), want), "bf16 {code:#06x}");
    }
}

#[test]
fn decode_well_known_code_points() {
    let cases: &[(DType, u64, f64)] = &[
        (DType::F16, 0x3C00, 1.0),
        (DType::F16, 0xBC00, -1.0),
        (DType::F16, 0x7BFF, 65504.0),
        (DType::F16, 0x0001, 5.960464477539063e-8),
        (DType::F16, 0x0400, 6.103515625e-5),
        (DType::F16, 0x3555, 0.333251953125),
        (DType::F16, 0x7C00, f64::INFINITY),
        (DType::F16, 0xFC00, f64::NEG_INFINITY),
        (DType::F16, 0x8000, -0.0),
        (DType::BF16, 0x3F80, 1.0),
        (DType::BF16, 0x7F7F, 3.3895313892515355e38),
        (DType::BF16, 0x0080, 1.1754943508222875e-38),
        (DType::BF16, 0x4049, 3.140625),
        (DType::BF16, 0xFF80, f64::NEG_INFINITY),
        (DType::F8E4M3, 0x7E, 448.0),
        (DType::F8E4M3, 0xFE, -448.0),
        (DType::F8E4M3, 0x08, 0.015625),
        (DType::F8E4M3, 0x01, 0.001953125),
        (DType::F8E4M3, 0x38, 1.0),
        (DType::F8E4M3, 0x78, 256.0),
        (DType::F8E4M3, 0x80, -0.0),
        (DType::F8E5M2, 0x7B, 57344.0),
        (DType::F8E5M2, 0x3C, 1.0),
        (DType::F8E5M2, 0x01, 1.52587890625e-5),
        (DType::F8E5M2, 0x7C, f64::INFINITY),
        (DType::F8E5M2, 0xFC, f64::NEG_INFINITY),
        (DType::F4E2M1, 0x7, 6.0),
        (DType::F4E2M1, 0x1, 0.5),
        (DType::F4E2M1, 0xF, -6.0),
        (DType::E8M0, 127, 1.0),
        (DType::E8M0, 0, 5.877471754111438e-39),
        (DType::E8M0, 0xFE, 1.7014118346046923e38),
        (DType::I4, 0xF, -1.0),
        (DType::I4, 0x8, -8.0),
        (DType::I6, 0x3F, -1.0),
        (DType::I8, 0x80, -128.0),
        (DType::U8, 0xFF, 255.0),
        (DType::I32, 0x8000_0000, -2147483648.0),
        (DType::I32, 0xFFFF_FFFF, -1.0),
        (DType::I64, u64::MAX, -1.0),
        (DType::I64, 1 << 63, -9_223_372_036_854_775_808.0),
        (DType::I64, i64::MAX as u64, 9_223_372_036_854_775_808.0),
        (DType::F32, 0x3F80_0000, 1.0),
        (DType::F32, 0x0000_0001, 1.401298464324817e-45),
        (DType::F64, 0x3FF0_0000_0000_0000, 1.0),
        (DType::Bool, 1, 1.0),
        (DType::Bool, 0, 0.0),
        (DType::Bool, 2, 0.0),
        (DType::Bool, 3, 1.0),
    ];
    for &(dtype, code, want) in cases {
        let got = decode(dtype, code);
        assert!(
            same(got, want),
            "{dtype} code {code:#x}: got {got:e}, want {want:e}"
        );
    }
    for (dtype, code) in [
        (DType::F16, 0x7E00),
        (DType::F16, 0x7C01),
        (DType::F16, 0xFFFF),
        (DType::BF16, 0x7FC0),
        (DType::BF16, 0xFF81),
        (DType::F8E4M3, 0x7F),
        (DType::F8E4M3, 0xFF),
        (DType::F8E5M2, 0x7D),
        (DType::F8E5M2, 0x7E),
        (DType::F8E5M2, 0xFF),
        (DType::E8M0, 0xFF),
        (DType::F32, 0x7FC0_0000),
    ] {
        assert!(decode(dtype, code).is_nan(), "{dtype} {code:#x} is NaN");
    }
}

#[test]
fn decode_ignores_bits_above_the_type() {
    assert_eq!(decode(DType::F16, 0xABCD_0000_3C00), 1.0);
    assert_eq!(decode(DType::I4, 0xF1), 1.0);
    assert_eq!(decode(DType::I3, 0b1111_1011), 3.0);
    assert_eq!(decode(DType::I6, 0xFF_C0), 0.0);
    assert_eq!(decode(DType::F8E4M3, 0x1_7E), 448.0);
    assert_eq!(decode(DType::F4E2M1, 0x17), 6.0);
    assert_eq!(decode(DType::E8M0, 0x1_7F), 1.0);
    assert_eq!(decode(DType::U8, 0x1_FF), 255.0);
    assert_eq!(decode(DType::I32, 0x1_0000_0005), 5.0);
    assert_eq!(decode(DType::F32, 0xFFFF_FFFF_3F80_0000), 1.0);
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

#[test]
fn encode_decode_round_trips_every_non_nan_code() {
    for dtype in ENUMERATED {
        let mut checked = 0;
        for (code, value) in reference_table(dtype) {
            if value.is_nan() {
                continue;
            }
            if dtype == DType::F8E5M2 && value.is_infinite() {
                // The only non-canonical codes: encoding saturates infinities.
                let max = if value > 0.0 { 0x7B } else { 0xFB };
                assert_eq!(
                    encode(dtype, decode(dtype, code)),
                    max,
                    "{dtype} code {code:#x}"
                );
                continue;
            }
            assert_eq!(
                encode(dtype, decode(dtype, code)),
                code,
                "{dtype} code {code:#x}"
            );
            assert_eq!(encode(dtype, value), code, "{dtype} value {value:e}");
            checked += 1;
        }
        assert!(checked >= 8, "{dtype}");
    }
    assert_eq!(encode(DType::Bool, decode(DType::Bool, 1)), 1);
    assert_eq!(encode(DType::Bool, decode(DType::Bool, 0)), 0);
}

/// Brute-force nearest-value oracle over a table of finite values.
struct Oracle {
    /// Distinct finite values, ascending, each with its code (`+0` for zero).
    points: Vec<(f64, u64)>,
    /// The code of `-0`, where the type has one.
    neg_zero: Option<u64>,
}

impl Oracle {
    /// Builds the oracle from a reference table; `overflow` adds virtual
    /// neighbours beyond the largest finite value (for IEEE overflow to
    /// infinity: the next power of two, carrying the infinity codes).
    fn new(table: &[(u64, f64)], overflow: Option<(f64, u64, u64)>) -> Oracle {
        let mut points: Vec<(f64, u64)> = table
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(c, v)| (v, c))
            .collect();
        if let Some((limit, pos, neg)) = overflow {
            points.push((limit, pos));
            points.push((-limit, neg));
        }
        let neg_zero = points
            .iter()
            .find(|p| p.0 == 0.0 && p.0.is_sign_negative())
            .map(|p| p.1);
        points.retain(|p| !(p.0 == 0.0 && p.0.is_sign_negative()));
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            points.windows(2).all(|w| w[0].0 < w[1].0),
            "distinct values"
        );
        Oracle { points, neg_zero }
    }

    /// The exact midpoint between neighbours `i` and `i + 1`.
    fn midpoint(&self, i: usize) -> f64 {
        let (a, b) = (self.points[i].0, self.points[i + 1].0);
        let mid = (a + b) / 2.0;
        assert_eq!(mid - a, b - mid, "midpoint of {a:e} and {b:e} is exact");
        mid
    }

    /// The code of the value nearest `x` (finite), ties to the even code,
    /// clamped at both ends of the table.
    fn nearest(&self, x: f64) -> u64 {
        let p = &self.points;
        let (value, code) = if x <= p[0].0 {
            p[0]
        } else if x >= p[p.len() - 1].0 {
            p[p.len() - 1]
        } else {
            let i = p.partition_point(|q| q.0 <= x) - 1;
            let mid = self.midpoint(i);
            if x < mid {
                p[i]
            } else if x > mid {
                p[i + 1]
            } else if p[i].1.is_multiple_of(2) {
                p[i]
            } else {
                p[i + 1]
            }
        };
        match self.neg_zero {
            Some(neg) if value == 0.0 && x.is_sign_negative() => neg,
            _ => code,
        }
    }
}

/// The oracle for one enumerated type, per its overflow rule.
fn oracle_for(dtype: DType) -> Oracle {
    let table = reference_table(dtype);
    let overflow = match dtype {
        DType::F16 => Some((65536.0, 0x7C00, 0xFC00)),
        DType::BF16 => Some((2f64.powi(128), 0x7F80, 0xFF80)),
        _ => None,
    };
    Oracle::new(&table, overflow)
}

fn check_against_oracle(dtype: DType, oracle: &Oracle, x: f64, what: &str) {
    let want = oracle.nearest(x);
    let got = encode(dtype, x);
    assert_eq!(
        got, want,
        "{dtype} {what} x = {x:e} ({x:?}): got {got:#x}, want {want:#x}"
    );
    assert!(
        same(round_to(dtype, x), decode(dtype, want)),
        "{dtype} round_to({x:e})"
    );
}

#[test]
fn encode_rounds_midpoints_to_even_and_neighbours_to_nearest() {
    for dtype in ENUMERATED {
        let oracle = oracle_for(dtype);
        let mut ties_to_upper = 0;
        for i in 0..oracle.points.len() - 1 {
            let mid = oracle.midpoint(i);
            check_against_oracle(dtype, &oracle, mid, "midpoint");
            if encode(dtype, mid) == oracle.points[i + 1].1 {
                ties_to_upper += 1;
            }
            let nudge = mid.abs() * 2f64.powi(-30);
            for x in [mid.next_up(), mid.next_down(), mid + nudge, mid - nudge] {
                check_against_oracle(dtype, &oracle, x, "near midpoint");
            }
            // The nudged values really go to different neighbours.
            assert_ne!(
                encode(dtype, mid.next_up()),
                encode(dtype, mid.next_down()),
                "{dtype} {mid:e}"
            );
        }
        // Ties go both ways (to the even one), so neither direction is trivially right.
        assert!(
            ties_to_upper > 0 && ties_to_upper < oracle.points.len() - 1,
            "{dtype}"
        );
    }
}

#[test]
fn encode_matches_brute_force_on_random_values() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x6b69_6c6e);
    for dtype in ENUMERATED {
        let oracle = oracle_for(dtype);
        let p = &oracle.points;
        let lo = p[0].0;
        let hi = p[p.len() - 1].0;
        let (lo_exp, hi_exp) = {
            let min_pos = p.iter().map(|q| q.0).find(|v| *v > 0.0).unwrap_or(1.0);
            (
                min_pos.log2().floor() as i32 - 3,
                hi.abs().log2().ceil() as i32 + 2,
            )
        };
        let positive_only = dtype == DType::E8M0;
        for k in 0..20_000 {
            let x = match k % 4 {
                // Anywhere between two neighbours.
                0 => {
                    let i = rng.random_range(0..p.len() - 1);
                    let t: f64 = rng.random();
                    p[i].0 + t * (p[i + 1].0 - p[i].0)
                }
                // Log-uniform magnitude with a random sign.
                1 => {
                    let m: f64 = rng.random_range(1.0..2.0);
                    let e = rng.random_range(lo_exp..=hi_exp);
                    let s = if rng.random::<bool>() { -1.0 } else { 1.0 };
                    s * m * 2f64.powi(e)
                }
                // Uniform over a little more than the range.
                2 => rng.random_range(1.2 * lo.min(-1.0)..1.2 * hi.max(1.0)),
                // A random f64 with an exponent near the range.
                _ => {
                    let e = rng.random_range(lo_exp..=hi_exp);
                    let bits: u64 = rng.random::<u64>() & ((1 << 52) - 1);
                    let s = if rng.random::<bool>() { -1.0 } else { 1.0 };
                    s * f64::from_bits(bits | 1023 << 52) * 2f64.powi(e)
                }
            };
            let x = if positive_only { x.abs() } else { x };
            check_against_oracle(dtype, &oracle, x, "random");
        }
    }
}

#[test]
fn no_double_rounding_through_f32() {
    // Just above a tie of f16 by less than f32 can see: rounding through
    // f32 first would land exactly on the tie and go to even (down).
    let x = f64::from_bits((1.0f64 + 2f64.powi(-11)).to_bits() + 1);
    assert_eq!(x as f32, 1.0 + 2f32.powi(-11));
    assert_eq!(encode(DType::F16, x), 0x3C01);
    let y = (1.0f64 + 2f64.powi(-8)).next_up();
    assert_eq!(encode(DType::BF16, y), 0x3F81);
    let z = (1.0f64 + 2f64.powi(-4)).next_up();
    assert_eq!(encode(DType::F8E4M3, z), 0x39);
    assert_eq!(encode(DType::F8E4M3, 1.0 + 2f64.powi(-4)), 0x38);
}

#[test]
fn f16_and_bf16_specials_and_overflow() {
    let f = DType::F16;
    assert_eq!(encode(f, f64::INFINITY), 0x7C00);
    assert_eq!(encode(f, f64::NEG_INFINITY), 0xFC00);
    assert_eq!(encode(f, f64::NAN), 0x7E00);
    assert_eq!(encode(f, -f64::NAN), 0xFE00);
    assert_eq!(encode(f, 65504.0), 0x7BFF);
    assert_eq!(encode(f, 65519.99), 0x7BFF);
    assert_eq!(encode(f, 65520.0), 0x7C00);
    assert_eq!(encode(f, -65520.0), 0xFC00);
    assert_eq!(encode(f, 1e300), 0x7C00);
    assert_eq!(encode(f, f64::MAX), 0x7C00);
    assert_eq!(encode(f, -0.0), 0x8000);
    assert_eq!(encode(f, 0.0), 0x0000);
    assert_eq!(encode(f, 1e-300), 0x0000);
    assert_eq!(encode(f, -1e-300), 0x8000);
    assert_eq!(encode(f, -5e-324), 0x8000);
    assert_eq!(encode(f, 2f64.powi(-25)), 0x0000); // tie between 0 and 2^-24
    assert_eq!(encode(f, 2f64.powi(-25).next_up()), 0x0001);
    assert_eq!(encode(f, 3.0 * 2f64.powi(-25)), 0x0002); // tie between 1 and 2 ulps
    assert_eq!(encode(f, 2f64.powi(-14) - 2f64.powi(-25)), 0x0400); // rounds up into the normals
    assert_eq!(encode(f, 1.0 / 3.0), 0x3555);

    let b = DType::BF16;
    assert_eq!(encode(b, f64::INFINITY), 0x7F80);
    assert_eq!(encode(b, f64::NEG_INFINITY), 0xFF80);
    assert_eq!(encode(b, f64::NAN), 0x7FC0);
    assert_eq!(encode(b, -f64::NAN), 0xFFC0);
    let max = 3.3895313892515355e38;
    assert_eq!(encode(b, max), 0x7F7F);
    assert_eq!(encode(b, 2f64.powi(128) - 2f64.powi(119)), 0x7F80); // the tie overflows
    assert_eq!(
        encode(b, (2f64.powi(128) - 2f64.powi(119)).next_down()),
        0x7F7F
    );
    assert_eq!(encode(b, 1e39), 0x7F80);
    assert_eq!(encode(b, -1e39), 0xFF80);
    assert_eq!(encode(b, -0.0), 0x8000);
    assert_eq!(encode(b, -1e-45), 0x8000);
    assert_eq!(encode(b, 2f64.powi(-133)), 0x0001);
    assert_eq!(encode(b, 2f64.powi(-134)), 0x0000);
    assert_eq!(encode(b, std::f64::consts::PI), 0x4049);
}

#[test]
fn f8_and_f4_saturate() {
    let e4 = DType::F8E4M3;
    assert_eq!(encode(e4, f64::INFINITY), 0x7E);
    assert_eq!(encode(e4, f64::NEG_INFINITY), 0xFE);
    assert_eq!(encode(e4, f64::NAN), 0x7F);
    assert_eq!(encode(e4, -f64::NAN), 0x7F);
    assert_eq!(encode(e4, 448.0), 0x7E);
    assert_eq!(encode(e4, 449.0), 0x7E);
    assert_eq!(encode(e4, 464.0), 0x7E);
    assert_eq!(encode(e4, 1e10), 0x7E);
    assert_eq!(encode(e4, -1e10), 0xFE);
    assert_eq!(encode(e4, f64::MAX), 0x7E);
    assert_eq!(encode(e4, 432.0), 0x7E); // tie of 416 (0x7D) and 448 (0x7E)
    assert_eq!(encode(e4, -0.0), 0x80);
    assert_eq!(encode(e4, 2f64.powi(-10)), 0x00); // tie of 0 and 2^-9
    assert_eq!(encode(e4, -2f64.powi(-10)), 0x80);
    assert_eq!(encode(e4, 2f64.powi(-10).next_up()), 0x01);
    assert_eq!(max_finite(e4), 448.0);

    let e5 = DType::F8E5M2;
    assert_eq!(encode(e5, f64::INFINITY), 0x7B);
    assert_eq!(encode(e5, f64::NEG_INFINITY), 0xFB);
    assert_eq!(encode(e5, f64::NAN), 0x7E);
    assert_eq!(encode(e5, -f64::NAN), 0x7E);
    assert_eq!(encode(e5, 57344.0), 0x7B);
    assert_eq!(encode(e5, 61440.0), 0x7B);
    assert_eq!(encode(e5, 65536.0), 0x7B);
    assert_eq!(encode(e5, -1e9), 0xFB);
    assert_eq!(encode(e5, -0.0), 0x80);
    assert_eq!(encode(e5, -1e-30), 0x80);
    assert_eq!(max_finite(e5), 57344.0);

    let f4 = DType::F4E2M1;
    assert_eq!(encode(f4, f64::INFINITY), 0x7);
    assert_eq!(encode(f4, f64::NEG_INFINITY), 0xF);
    assert_eq!(encode(f4, f64::NAN), 0x0);
    assert_eq!(encode(f4, -f64::NAN), 0x0);
    assert_eq!(encode(f4, 100.0), 0x7);
    assert_eq!(encode(f4, -7.0), 0xF);
    assert_eq!(encode(f4, 5.0), 0x6); // tie of 4 (0x6) and 6 (0x7)
    assert_eq!(encode(f4, 5.0f64.next_up()), 0x7);
    assert_eq!(encode(f4, 2.5), 0x4); // tie of 2 (0x4) and 3 (0x5)
    assert_eq!(encode(f4, 1.25), 0x2); // tie of 1 (0x2) and 1.5 (0x3)
    assert_eq!(encode(f4, 1.75), 0x4); // tie of 1.5 (0x3) and 2 (0x4)
    assert_eq!(encode(f4, 0.25), 0x0);
    assert_eq!(encode(f4, -0.25), 0x8);
    assert_eq!(encode(f4, 0.26), 0x1);
    assert_eq!(encode(f4, -0.0), 0x8);
    assert_eq!(max_finite(f4), 6.0);
}

#[test]
fn e8m0_rules() {
    let e = DType::E8M0;
    assert_eq!(encode(e, f64::NAN), 0xFF);
    assert_eq!(encode(e, -1.0), 0xFF);
    assert_eq!(encode(e, -1e-300), 0xFF);
    assert_eq!(encode(e, f64::NEG_INFINITY), 0xFF);
    assert_eq!(encode(e, -0.0), 0x00);
    assert_eq!(encode(e, 0.0), 0x00);
    assert_eq!(encode(e, 5e-324), 0x00);
    assert_eq!(encode(e, 1e-300), 0x00);
    assert_eq!(encode(e, 2f64.powi(-130)), 0x00);
    assert_eq!(encode(e, 2f64.powi(-127)), 0x00);
    assert_eq!(encode(e, 2f64.powi(-126)), 0x01);
    assert_eq!(encode(e, f64::INFINITY), 0xFE);
    assert_eq!(encode(e, f64::MAX), 0xFE);
    assert_eq!(encode(e, 2f64.powi(127)), 0xFE);
    assert_eq!(encode(e, 2f64.powi(128)), 0xFE);
    assert_eq!(encode(e, 1.0), 127);
    assert_eq!(encode(e, 1.4), 127);
    assert_eq!(encode(e, 1.6), 128);
    assert_eq!(encode(e, 1.5), 128); // tie of 127 and 128: even
    assert_eq!(encode(e, 3.0), 128); // tie of 128 and 129: even
    assert_eq!(encode(e, 1.5f64.next_down()), 127);
    assert_eq!(encode(e, 3.0f64.next_up()), 129);
    assert_eq!(encode(e, 0.75), 126); // tie of 126 and 127
    assert_eq!(encode(e, 0.7), 126);
    assert_eq!(encode(e, 1.5 * 2f64.powi(127)), 0xFE);
    assert_eq!(max_finite(e), 2f64.powi(127));
}

#[test]
fn integers_round_half_even_and_saturate() {
    let cases: &[(DType, f64, u64)] = &[
        (DType::I4, 2.5, 2),
        (DType::I4, 3.5, 4),
        (DType::I4, -2.5, 0xE),
        (DType::I4, -0.5, 0),
        (DType::I4, -0.0, 0),
        (DType::I4, 7.4, 7),
        (DType::I4, 7.5, 7),
        (DType::I4, -8.5, 0x8),
        (DType::I4, 100.0, 7),
        (DType::I4, -100.0, 0x8),
        (DType::I4, f64::INFINITY, 7),
        (DType::I4, f64::NEG_INFINITY, 0x8),
        (DType::I4, f64::NAN, 0),
        (DType::I4, -1.0, 0xF),
        (DType::U4, -1.0, 0),
        (DType::U4, 16.0, 15),
        (DType::U4, 15.5, 15),
        (DType::U4, 14.5, 14),
        (DType::U4, f64::NAN, 0),
        (DType::I3, 3.4, 3),
        (DType::I3, -4.6, 0x4),
        (DType::I3, -1.0, 0x7),
        (DType::I6, 31.9, 31),
        (DType::I6, -33.0, 0x20),
        (DType::I6, -1.0, 0x3F),
        (DType::I8, -128.5, 0x80),
        (DType::I8, 127.5, 0x7F),
        (DType::I8, -1.0, 0xFF),
        (DType::U8, 255.5, 0xFF),
        (DType::U8, 254.5, 0xFE),
        (DType::U8, -0.7, 0),
        (DType::U8, 1e300, 0xFF),
        (DType::I32, 2147483648.0, 0x7FFF_FFFF),
        (DType::I32, -2147483649.0, 0x8000_0000),
        (DType::I32, 1e20, 0x7FFF_FFFF),
        (DType::I32, f64::NAN, 0),
        (DType::I32, -1.0, 0xFFFF_FFFF),
        (DType::I32, 2.5, 2),
        (DType::I32, -1.5, 0xFFFF_FFFE),
        (DType::I32, f64::NEG_INFINITY, 0x8000_0000),
        (DType::I64, 1e19, i64::MAX as u64),
        (DType::I64, -1e19, i64::MIN as u64),
        (DType::I64, 9_223_372_036_854_775_808.0, i64::MAX as u64),
        (DType::I64, -9_223_372_036_854_775_808.0, i64::MIN as u64),
        (DType::I64, f64::INFINITY, i64::MAX as u64),
        (DType::I64, f64::NAN, 0),
        (DType::I64, -1.0, u64::MAX),
        (DType::I64, 9007199254740994.0, 9007199254740994),
        (DType::I64, 4503599627370497.0, 4503599627370497),
        (DType::I64, -3.5, (-4i64) as u64),
    ];
    for &(dtype, x, want) in cases {
        assert_eq!(encode(dtype, x), want, "{dtype} {x:e}");
    }
    assert_eq!(max_finite(DType::I4), 7.0);
    assert_eq!(max_finite(DType::U4), 15.0);
    assert_eq!(max_finite(DType::I3), 3.0);
    assert_eq!(max_finite(DType::I6), 31.0);
    assert_eq!(max_finite(DType::I8), 127.0);
    assert_eq!(max_finite(DType::U8), 255.0);
    assert_eq!(max_finite(DType::I32), 2147483647.0);
    assert_eq!(max_finite(DType::I64), 9_223_372_036_854_775_808.0);
}

#[test]
fn bool_rules() {
    for (x, want) in [
        (0.0, 0),
        (-0.0, 0),
        (f64::NAN, 1),
        (0.1, 1),
        (-3.0, 1),
        (5e-324, 1),
        (f64::INFINITY, 1),
        (f64::NEG_INFINITY, 1),
    ] {
        assert_eq!(encode(DType::Bool, x), want, "bool {x}");
    }
    assert_eq!(max_finite(DType::Bool), 1.0);
}

#[test]
fn f32_and_f64() {
    let mut rng = ChaCha8Rng::seed_from_u64(32);
    let mut specials = vec![
        0.0,
        -0.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e39,
        -1e39,
        f64::MAX,
        5e-324,
        1e-46,
        f64::from(f32::MAX) * (1.0 + 2f64.powi(-25)),
    ];
    specials.extend((0..20_000).map(|_| f64::from_bits(rng.random::<u64>())));
    specials.extend((0..20_000).map(|_| rng.random_range(-1e6..1e6)));
    for x in specials {
        let want = x as f32;
        assert_eq!(encode(DType::F32, x), u64::from(want.to_bits()), "{x:e}");
        assert!(same(round_to(DType::F32, x), f64::from(want)), "{x:e}");
        if !x.is_nan() {
            assert_eq!(decode(DType::F32, encode(DType::F32, x)), f64::from(want));
        }
        assert_eq!(encode(DType::F64, x), x.to_bits());
        assert_eq!(decode(DType::F64, x.to_bits()).to_bits(), x.to_bits());
        assert_eq!(round_to(DType::F64, x).to_bits(), x.to_bits());
    }
    assert_eq!(encode(DType::F32, 1e39), 0x7F80_0000);
    assert_eq!(encode(DType::F32, -1e39), 0xFF80_0000);
    assert_eq!(encode(DType::F32, -0.0), 0x8000_0000);
    assert_eq!(encode(DType::F32, 1.0), 0x3F80_0000);
    assert!(decode(DType::F32, encode(DType::F32, f64::NAN)).is_nan());
    assert_eq!(max_finite(DType::F32), 3.4028234663852886e38);
    assert_eq!(max_finite(DType::F64), f64::MAX);
    assert_eq!(max_finite(DType::F16), 65504.0);
    assert_eq!(max_finite(DType::BF16), 3.3895313892515355e38);
}

#[test]
fn round_to_agrees_with_decode_of_encode() {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    for dtype in DType::ALL {
        for _ in 0..5_000 {
            let x = match rng.random_range(0..3) {
                0 => rng.random_range(-70000.0..70000.0),
                1 => rng.random_range(-2.0..2.0) * 2f64.powi(rng.random_range(-140..140)),
                _ => f64::from_bits(rng.random::<u64>()),
            };
            let want = match dtype {
                DType::F32 => f64::from(x as f32),
                DType::F64 => x,
                _ => decode(dtype, encode(dtype, x)),
            };
            assert!(same(round_to(dtype, x), want), "{dtype} {x:e}");
        }
    }
    // round_to really rounds.
    assert_eq!(round_to(DType::F16, 1.0 + 2f64.powi(-12)), 1.0);
    assert_eq!(round_to(DType::F16, 70000.0), f64::INFINITY);
    assert_eq!(round_to(DType::F8E4M3, 1000.0), 448.0);
    assert_eq!(round_to(DType::F4E2M1, 2.4), 2.0);
    assert_eq!(round_to(DType::I4, -9.0), -8.0);
    assert_eq!(round_to(DType::E8M0, 5.0), 4.0);
    assert_eq!(round_to(DType::E8M0, 7.0), 8.0);
}

#[test]
fn round_half_even_cases() {
    for (x, want) in [
        (0.5, 0.0),
        (1.5, 2.0),
        (2.5, 2.0),
        (3.5, 4.0),
        (-0.5, -0.0),
        (-1.5, -2.0),
        (-2.5, -2.0),
        (2.4999999999999996, 2.0),
        (2.5000000000000004, 3.0),
        (4503599627370497.0, 4503599627370497.0),
        (1e300, 1e300),
        (f64::INFINITY, f64::INFINITY),
        (-0.0, -0.0),
    ] {
        assert!(same(round_half_even(x), want), "{x}");
    }
    assert!(round_half_even(f64::NAN).is_nan());
}

#[test]
fn every_function_is_total() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut inputs = vec![
        0.0,
        -0.0,
        f64::NAN,
        -f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        5e-324,
        -5e-324,
        f64::from_bits(0x7FF0_0000_0000_0001),
    ];
    inputs.extend((0..3_000).map(|_| f64::from_bits(rng.random::<u64>())));
    for dtype in DType::ALL {
        let bits = dtype.bits();
        for &x in &inputs {
            let code = encode(dtype, x);
            if bits < 64 {
                assert_eq!(
                    code >> bits,
                    0,
                    "{dtype} {x:e}: code {code:#x} fits in {bits} bits"
                );
            }
            let _ = round_to(dtype, x);
            let _ = decode(dtype, x.to_bits());
        }
        let _ = decode(dtype, u64::MAX);
        assert!(max_finite(dtype).is_finite(), "{dtype}");
        let codes: Vec<u64> = (0..17).map(|_| rng.random()).collect();
        for order in [BitOrder::LsbFirst, BitOrder::MsbFirst] {
            let bytes = pack(dtype, &codes, order);
            assert_eq!(bytes.len(), dtype.storage_bytes(codes.len()));
            assert!(unpack(dtype, &bytes, usize::MAX, order).is_err());
            assert!(unpack(dtype, &bytes, usize::MAX / 2, order).is_err());
            assert!(unpack(dtype, &[], 1, order).is_err());
            assert_eq!(unpack(dtype, &[], 0, order), Ok(vec![]));
        }
    }
}

// ---------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------

/// A bit-at-a-time packer written straight from the stream definition.
fn reference_pack(bits: u32, codes: &[u64], order: BitOrder) -> Vec<u8> {
    let total = codes.len() * bits as usize;
    let mut out = vec![0u8; total.div_ceil(8)];
    for (k, &code) in codes.iter().enumerate() {
        for j in 0..bits {
            // j-th stream bit of element k.
            let bit = match order {
                BitOrder::LsbFirst => (code >> j) & 1,
                BitOrder::MsbFirst => (code >> (bits - 1 - j)) & 1,
            };
            let i = k * bits as usize + j as usize;
            let pos = match order {
                BitOrder::LsbFirst => i % 8,
                BitOrder::MsbFirst => 7 - i % 8,
            };
            out[i / 8] |= (bit as u8) << pos;
        }
    }
    out
}

#[test]
fn pack_round_trips_every_code() {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    for dtype in DType::ALL {
        let bits = dtype.bits();
        let code_mask = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        for order in [BitOrder::LsbFirst, BitOrder::MsbFirst] {
            for n in [1usize, 3, 7, 50, 783] {
                let codes: Vec<u64> = if dtype == DType::Bool {
                    (0..n).map(|i| (i as u64 * 5 / 3) & 1).collect()
                } else if bits <= 8 {
                    // Every code appears once n >= 2^bits; the offset varies the start.
                    (0..n as u64)
                        .map(|i| (i * 37 + n as u64) & code_mask)
                        .collect()
                } else {
                    (0..n).map(|_| rng.random::<u64>() & code_mask).collect()
                };
                let bytes = pack(dtype, &codes, order);
                assert_eq!(
                    bytes.len(),
                    dtype.storage_bytes(n),
                    "{dtype} {order:?} n={n}"
                );
                assert_eq!(
                    unpack(dtype, &bytes, n, order),
                    Ok(codes.clone()),
                    "{dtype} {order:?} n={n}"
                );
                if bits < 8 {
                    assert_eq!(
                        bytes,
                        reference_pack(bits, &codes, order),
                        "{dtype} {order:?} n={n}"
                    );
                    let used = (n * bits as usize) % 8;
                    if used != 0 {
                        let last = bytes[bytes.len() - 1];
                        let padding = match order {
                            BitOrder::LsbFirst => last >> used,
                            BitOrder::MsbFirst => last & ((1u8 << (8 - used)) - 1),
                        };
                        assert_eq!(padding, 0, "{dtype} {order:?} n={n}: zero padding");
                    }
                } else {
                    let width = if dtype == DType::Bool {
                        1
                    } else {
                        bits as usize / 8
                    };
                    for (k, &code) in codes.iter().enumerate() {
                        let le = &bytes[k * width..(k + 1) * width];
                        let back = le.iter().rev().fold(0u64, |a, &b| (a << 8) | u64::from(b));
                        assert_eq!(back, code, "{dtype} element {k} little-endian");
                    }
                    assert_eq!(
                        bytes,
                        pack(dtype, &codes, BitOrder::MsbFirst),
                        "order ignored"
                    );
                }
            }
        }
    }
    // Every code of the enumerated sub-byte and byte types was covered.
    for dtype in ENUMERATED.into_iter().filter(|d| d.bits() <= 8) {
        let seen: std::collections::BTreeSet<u64> = (0..783u64)
            .map(|i| (i * 37 + 783) & ((1 << dtype.bits()) - 1))
            .collect();
        assert_eq!(seen.len(), 1 << dtype.bits(), "{dtype}");
    }
}

#[test]
fn pack_hand_written_bytes() {
    use BitOrder::{LsbFirst, MsbFirst};
    // i4 [1, 2, 3]: LsbFirst puts element 0 in the low nibble.
    assert_eq!(pack(DType::I4, &[1, 2, 3], LsbFirst), vec![0x21, 0x03]);
    assert_eq!(pack(DType::I4, &[1, 2, 3], MsbFirst), vec![0x12, 0x30]);
    // i4 -1 and -8 in two's complement.
    assert_eq!(
        pack(
            DType::I4,
            &[encode(DType::I4, -1.0), encode(DType::I4, -8.0)],
            LsbFirst
        ),
        vec![0x8F]
    );
    // f4e2m1 [1.0 (0x2), -6.0 (0xF)].
    assert_eq!(pack(DType::F4E2M1, &[0x2, 0xF], LsbFirst), vec![0xF2]);
    assert_eq!(pack(DType::F4E2M1, &[0x2, 0xF], MsbFirst), vec![0x2F]);

    // i3 [1, 2, 3, 4, 5, 6, 7, 0], LsbFirst: element k is bits 3k..3k+3 of the
    // little-endian 24-bit number
    //   1 | 2<<3 | 3<<6 | 4<<9 | 5<<12 | 6<<15 | 7<<18 | 0<<21
    //   = 0x000001 + 0x000010 + 0x0000C0 + 0x000800 + 0x005000 + 0x030000 + 0x1C0000
    //   = 0x1F58D1  ->  bytes [0xD1, 0x58, 0x1F].
    let i3 = [1, 2, 3, 4, 5, 6, 7, 0];
    assert_eq!(pack(DType::I3, &i3, LsbFirst), vec![0xD1, 0x58, 0x1F]);
    // MsbFirst: the 3-bit codes written left to right,
    //   001 010 01|1 100 101 1|10 111 000  ->  00101001 11001011 10111000
    //   = [0x29, 0xCB, 0xB8].
    assert_eq!(pack(DType::I3, &i3, MsbFirst), vec![0x29, 0xCB, 0xB8]);
    // One i3 (5 = 101): low bits of byte 0, or the top three bits (1010_0000).
    assert_eq!(pack(DType::I3, &[5], LsbFirst), vec![0x05]);
    assert_eq!(pack(DType::I3, &[5], MsbFirst), vec![0xA0]);
    // Three i3 [7, 0, 7] = 9 bits: LsbFirst 0b1_1100_0111 -> [0xC7, 0x01];
    // MsbFirst 111 000 11|1 -> [0xE3, 0x80].
    assert_eq!(pack(DType::I3, &[7, 0, 7], LsbFirst), vec![0xC7, 0x01]);
    assert_eq!(pack(DType::I3, &[7, 0, 7], MsbFirst), vec![0xE3, 0x80]);

    // i6 [1, 2, 3, 63], LsbFirst: 1 | 2<<6 | 3<<12 | 63<<18
    //   = 0x000001 + 0x000080 + 0x003000 + 0xFC0000 = 0xFC3081 -> [0x81, 0x30, 0xFC].
    let i6 = [1, 2, 3, 63];
    assert_eq!(pack(DType::I6, &i6, LsbFirst), vec![0x81, 0x30, 0xFC]);
    // MsbFirst: 000001 00|0010 0000|11 111111 -> [0x04, 0x20, 0xFF].
    assert_eq!(pack(DType::I6, &i6, MsbFirst), vec![0x04, 0x20, 0xFF]);
    // One i6 (42 = 101010): [0x2A], or 1010_1000 = [0xA8].
    assert_eq!(pack(DType::I6, &[42], LsbFirst), vec![0x2A]);
    assert_eq!(pack(DType::I6, &[42], MsbFirst), vec![0xA8]);
    // Two i6 [63, 1] = 12 bits: LsbFirst 0b0000_0111_1111 -> [0x7F, 0x00];
    // MsbFirst 111111 00|0001 -> [0xFC, 0x10].
    assert_eq!(pack(DType::I6, &[63, 1], LsbFirst), vec![0x7F, 0x00]);
    assert_eq!(pack(DType::I6, &[63, 1], MsbFirst), vec![0xFC, 0x10]);

    // Bits above the type are dropped.
    assert_eq!(pack(DType::I4, &[0x1F, 0xF0], LsbFirst), vec![0x0F]);
    assert_eq!(pack(DType::I3, &[0xFF], MsbFirst), vec![0xE0]);

    // Byte and wider types: little-endian, order ignored.
    for order in [LsbFirst, MsbFirst] {
        assert_eq!(
            pack(DType::F16, &[0x3C00, 0xABCD], order),
            vec![0x00, 0x3C, 0xCD, 0xAB]
        );
        assert_eq!(pack(DType::BF16, &[0x3F80], order), vec![0x80, 0x3F]);
        assert_eq!(
            pack(DType::I32, &[0xFFFF_FFFF, 1], order),
            vec![0xFF, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0]
        );
        assert_eq!(
            pack(DType::F32, &[0x3F80_0000], order),
            vec![0, 0, 0x80, 0x3F]
        );
        assert_eq!(
            pack(DType::F64, &[1.0f64.to_bits()], order),
            1.0f64.to_le_bytes().to_vec()
        );
        assert_eq!(
            pack(DType::I64, &[(-2i64) as u64], order),
            (-2i64).to_le_bytes().to_vec()
        );
        assert_eq!(pack(DType::I8, &[0x80, 0x17F], order), vec![0x80, 0x7F]);
        assert_eq!(pack(DType::F8E4M3, &[0x7E, 0x38], order), vec![0x7E, 0x38]);
        assert_eq!(
            pack(DType::Bool, &[1, 0, 1, 3, 2], order),
            vec![1, 0, 1, 1, 0]
        );
        assert_eq!(
            unpack(DType::F16, &[0x00, 0x3C, 0xCD, 0xAB], 2, order),
            Ok(vec![0x3C00, 0xABCD])
        );
        assert_eq!(
            unpack(DType::Bool, &[0, 1, 3, 2], 4, order),
            Ok(vec![0, 1, 1, 0])
        );
    }

    // Unpacking the hand-written bytes.
    assert_eq!(
        unpack(DType::I4, &[0x21, 0x03], 3, LsbFirst),
        Ok(vec![1, 2, 3])
    );
    assert_eq!(
        unpack(DType::I4, &[0x12, 0x30], 3, MsbFirst),
        Ok(vec![1, 2, 3])
    );
    assert_eq!(
        unpack(DType::I3, &[0xD1, 0x58, 0x1F], 8, LsbFirst),
        Ok(i3.to_vec())
    );
    assert_eq!(
        unpack(DType::I3, &[0x29, 0xCB, 0xB8], 8, MsbFirst),
        Ok(i3.to_vec())
    );
    assert_eq!(
        unpack(DType::I6, &[0x81, 0x30, 0xFC], 4, LsbFirst),
        Ok(i6.to_vec())
    );
    assert_eq!(
        unpack(DType::I6, &[0x04, 0x20, 0xFF], 4, MsbFirst),
        Ok(i6.to_vec())
    );
}

#[test]
fn unpack_rejects_wrong_lengths() {
    let err = unpack(DType::I4, &[0x21, 0x03, 0x00], 3, BitOrder::LsbFirst);
    assert_eq!(
        err,
        Err(PackError::Length {
            dtype: DType::I4,
            n: 3,
            expected: 2,
            found: 3
        })
    );
    let err = unpack(DType::I3, &[0xD1, 0x58], 8, BitOrder::MsbFirst).unwrap_err();
    assert_eq!(
        err,
        PackError::Length {
            dtype: DType::I3,
            n: 8,
            expected: 3,
            found: 2
        }
    );
    assert_eq!(
        err.to_string(),
        "expected 3 bytes for 8 elements of i3, found 2"
    );
    assert!(matches!(
        unpack(DType::F16, &[0, 0, 0], 1, BitOrder::LsbFirst),
        Err(PackError::Length {
            expected: 2,
            found: 3,
            ..
        })
    ));
    assert!(matches!(
        unpack(DType::Bool, &[1], 2, BitOrder::LsbFirst),
        Err(PackError::Length {
            expected: 2,
            found: 1,
            ..
        })
    ));
    assert!(matches!(
        unpack(DType::I64, &[0; 8], usize::MAX, BitOrder::LsbFirst),
        Err(PackError::Length {
            expected: usize::MAX,
            found: 8,
            ..
        })
    ));
}
