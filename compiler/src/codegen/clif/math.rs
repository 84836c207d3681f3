//! Inline f32 approximations of `exp`, `erf` and `tanh`, emitted as CLIF
//! on `f32` scalars or `f32x4` vectors (no helper calls, no branches).
//!
//! * `exp(x)`: `x` clamped to `[-104, 89]` (below, the result is 0; above,
//!   infinite), `n = round(x / ln 2)` by the `1.5 * 2^23` shifter,
//!   `r = x - n ln 2` in two parts (Cody-Waite: `ln2_hi` has 9 significant
//!   bits, so `n * ln2_hi` is exact), `e^r` by a degree-6 polynomial
//!   (weighted-minimax fit on `|r| <= ln 2 / 2`, relative error 2e-9), and
//!   the scaling by `2^n` as two factors `2^(n >> 1) * 2^(n - (n >> 1))`, so
//!   that overflow gives infinity and the subnormal range is reached.
//! * `erf(x)`: `x N(x^2) / D(x^2)` with `N` of degree 5 and `D` of degree
//!   6 (a rational fit on `|x| <= 4`, relative error 3e-9; all
//!   coefficients positive, so the f32 evaluation is well-conditioned),
//!   and ±1 beyond 4, where `erf` rounds to 1 in f32.
//! * `tanh(x)`: for `|x| < 0.625`, `x + x^3 P(x^2)` (degree 4, relative
//!   error 4e-9); above, `1 - 2 / (exp(2|x|) + 1)` with the sign of `x`
//!   (saturates to ±1 when the exponential overflows).
//!
//! Polynomials are evaluated by Estrin's scheme (short dependency chains:
//! these kernels are latency-bound). The coefficients were fitted for this
//! module (weighted least squares iterated toward minimax, linearized for
//! the rational, `mpmath` references); with f32 rounding the functions are
//! within a few ulp (tests/clif.rs prints the worst relative error seen
//! against Rust's f64 functions and checks 1e-6). NaN gives NaN; the
//! clamps and branch selections are written so that a NaN input falls
//! through every comparison to the NaN-propagating arithmetic.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value, types};

use super::expr::Emitter;

/// `exp(r)` on `|r| <= ln 2 / 2`, lowest degree first.
const EXP_P: [f64; 7] = [
    1.0000000005542,
    1.000000036323724,
    0.4999999207939098,
    0.1666642016734034,
    0.04166822565081084,
    0.008374816021913985,
    0.001383684224368159,
];

/// `erf(x) = x N(x^2) / D(x^2)` on `|x| <= 4`: the numerator's and the
/// denominator's coefficients, lowest degree first (`D(0) = 1`).
const ERF_NUM: [f64; 6] = [
    1.1283791699451817,
    0.19288503944630309,
    0.055749584762299846,
    0.004226640301592427,
    0.00041124639759948425,
    6.79000075388958e-06,
];

const ERF_DEN: [f64; 7] = [
    1.0,
    0.5042733485482168,
    0.1174972545343803,
    0.016295340863490843,
    0.0014211966043001048,
    7.255375299017319e-05,
    2.6041648429342423e-07,
];

/// `(tanh(x) / x - 1) / x^2` as a polynomial in `x^2`, `|x| < TANH_SPLIT`.
const TANH_SMALL: [f64; 5] = [
    -0.33333283923207435,
    0.13331491237288168,
    -0.05374349426260551,
    0.020650575562029164,
    -0.005717032527907156,
];

const TANH_SPLIT: f64 = 0.625;

impl Emitter<'_, '_> {
    /// An f32 constant of `x`'s type (`f32` or `f32x4`).
    pub(super) fn fc(&mut self, like: Value, c: f64) -> Value {
        let ty = self.b.func.dfg.value_type(like);
        if ty.is_vector() {
            // A constant-pool vector: one load where it is used (as a
            // splat of a scalar constant becomes too).
            let bytes: Vec<u8> = (0..4).flat_map(|_| (c as f32).to_le_bytes()).collect();
            let h = self.b.func.dfg.constants.insert(bytes.into());
            self.b.ins().vconst(ty, h)
        } else {
            self.b.ins().f32const(c as f32)
        }
    }

    /// The integer type of the same shape as `ty` (`i32` or `i32x4`).
    fn int_of(ty: Type) -> Type {
        if ty.is_vector() {
            types::I32X4
        } else {
            types::I32
        }
    }

    /// An i32 constant shaped like `like` (an `i32` or `i32x4` value).
    fn ic(&mut self, like: Value, c: i64) -> Value {
        let ty = self.b.func.dfg.value_type(like);
        if ty.is_vector() {
            let bytes: Vec<u8> = (0..4).flat_map(|_| (c as i32).to_le_bytes()).collect();
            let h = self.b.func.dfg.constants.insert(bytes.into());
            self.b.ins().vconst(ty, h)
        } else {
            self.b.ins().iconst(types::I32, c)
        }
    }

    /// `a * b + c`, fused where the ISA has FMA.
    pub(super) fn mul_add(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fma {
            self.b.ins().fma(a, b, c)
        } else {
            let p = self.b.ins().fmul(a, b);
            self.b.ins().fadd(p, c)
        }
    }

    /// `p(t)`, coefficients lowest degree first, by Estrin's scheme (pairs
    /// `c[2i] + c[2i+1] t` combined with `t^2`, `t^4`, ...): a shorter
    /// dependency chain than Horner's rule, for the same accuracy here.
    fn poly(&mut self, t: Value, coef: &[f64]) -> Value {
        let mut terms: Vec<Value> = Vec::new();
        for pair in coef.chunks(2) {
            let c0 = self.fc(t, pair[0]);
            terms.push(match pair.get(1) {
                Some(&c1) => {
                    let c1 = self.fc(t, c1);
                    self.mul_add(c1, t, c0)
                }
                None => c0,
            });
        }
        let mut x = self.b.ins().fmul(t, t);
        while terms.len() > 1 {
            let mut next = Vec::new();
            for pair in terms.chunks(2) {
                next.push(match pair.get(1) {
                    Some(&hi) => self.mul_add(hi, x, pair[0]),
                    None => pair[0],
                });
            }
            terms = next;
            if terms.len() > 1 {
                x = self.b.ins().fmul(x, x);
            }
        }
        terms[0]
    }

    /// `cond ? a : b` where `cond` is an `fcmp` of the same shape as `a`.
    pub(super) fn fsel(&mut self, cond: Value, a: Value, b: Value) -> Value {
        let ty = self.b.func.dfg.value_type(a);
        if ty.is_vector() {
            let m = self.b.ins().bitcast(ty, MemFlagsData::new(), cond);
            self.b.ins().bitselect(m, a, b)
        } else {
            self.b.ins().select(cond, a, b)
        }
    }

    /// `x` with `lo` where `x < lo` and `hi` where `x > hi` (NaN stays).
    fn clamp(&mut self, x: Value, lo: f64, hi: f64) -> Value {
        let l = self.fc(x, lo);
        let below = self.b.ins().fcmp(FloatCC::LessThan, x, l);
        let x = self.fsel(below, l, x);
        let h = self.fc(x, hi);
        let above = self.b.ins().fcmp(FloatCC::GreaterThan, x, h);
        self.fsel(above, h, x)
    }

    /// The magnitude of `mag` with the sign bit of `sign`.
    fn copysign(&mut self, mag: Value, sign: Value) -> Value {
        let fty = self.b.func.dfg.value_type(mag);
        let ity = Self::int_of(fty);
        let m = self.b.ins().bitcast(ity, MemFlagsData::new(), mag);
        let s = self.b.ins().bitcast(ity, MemFlagsData::new(), sign);
        let sbit = self.ic(s, i64::from(i32::MIN));
        let rest = self.ic(s, i64::from(i32::MAX));
        let s = self.b.ins().band(s, sbit);
        let m = self.b.ins().band(m, rest);
        let r = self.b.ins().bor(m, s);
        self.b.ins().bitcast(fty, MemFlagsData::new(), r)
    }

    /// `exp(x)` of an `f32` or `f32x4`.
    pub(super) fn exp_f32(&mut self, x: Value) -> Value {
        let fty = self.b.func.dfg.value_type(x);
        let ity = Self::int_of(fty);
        let x = self.clamp(x, -104.0, 89.0);
        let log2e = self.fc(x, std::f64::consts::LOG2_E);
        let shifter = self.fc(x, 12582912.0); // 1.5 * 2^23
        let t = self.mul_add(x, log2e, shifter);
        let n = self.b.ins().fsub(t, shifter);
        let neg_hi = self.fc(x, -0.693359375);
        let neg_lo = self.fc(x, 2.121_944_400_546_905_7e-4);
        let r = self.mul_add(n, neg_hi, x);
        let r = self.mul_add(n, neg_lo, r);
        let p = self.poly(r, &EXP_P);
        // t's low mantissa bits hold n + 2^22.
        let ti = self.b.ins().bitcast(ity, MemFlagsData::new(), t);
        let sh = self.b.ins().iconst(types::I32, 23);
        let bias = self.ic(ti, 0x4B40_0000);
        let ni = self.b.ins().isub(ti, bias);
        let one = self.b.ins().iconst(types::I32, 1);
        let n1 = self.b.ins().sshr(ni, one);
        let n2 = self.b.ins().isub(ni, n1);
        let e127 = self.ic(ti, 127);
        let mut out = p;
        for k in [n1, n2] {
            let k = self.b.ins().iadd(k, e127);
            let k = self.b.ins().ishl(k, sh);
            let s = self.b.ins().bitcast(fty, MemFlagsData::new(), k);
            out = self.b.ins().fmul(out, s);
        }
        out
    }

    /// `erf(x)` of an `f32` or `f32x4`.
    pub(super) fn erf_f32(&mut self, x: Value) -> Value {
        let a = self.b.ins().fabs(x);
        let s = self.b.ins().fmul(x, x);
        let num = self.poly(s, &ERF_NUM);
        let den = self.poly(s, &ERF_DEN);
        let xn = self.b.ins().fmul(x, num);
        let r = self.b.ins().fdiv(xn, den);
        // Beyond 4 (where erf rounds to 1 in f32) the rational is not
        // used: there it may overflow to inf / inf.
        let one = self.fc(x, 1.0);
        let one = self.copysign(one, x);
        let four = self.fc(x, 4.0);
        let big = self.b.ins().fcmp(FloatCC::GreaterThan, a, four);
        self.fsel(big, one, r)
    }

    /// `tanh(x)` of an `f32` or `f32x4`.
    pub(super) fn tanh_f32(&mut self, x: Value) -> Value {
        let a = self.b.ins().fabs(x);
        let s = self.b.ins().fmul(x, x);
        let p = self.poly(s, &TANH_SMALL);
        let xs = self.b.ins().fmul(x, s);
        let small = self.mul_add(xs, p, x);
        let a2 = self.b.ins().fadd(a, a);
        let e = self.exp_f32(a2);
        let one = self.fc(x, 1.0);
        let two = self.fc(x, 2.0);
        let d = self.b.ins().fadd(e, one);
        let q = self.b.ins().fdiv(two, d);
        let large = self.b.ins().fsub(one, q);
        let large = self.copysign(large, x);
        let split = self.fc(x, TANH_SPLIT);
        let is_small = self.b.ins().fcmp(FloatCC::LessThan, a, split);
        self.fsel(is_small, small, large)
    }
}
