//! f64 `exp`, `log` and `pow` by range reduction and polynomials (PTX has
//! no f64 transcendental instructions).
//!
//! * `exp`: `n = rint(x / ln 2)`, `r = x - n ln 2` with a two-part `ln 2`
//!   (fma), `e^r` by its Taylor series to degree 13 (`|r| <= 0.35`,
//!   truncation below 1e-17), scaled by `2^n` in two factors: about 1 ulp.
//! * `log`: `x = 2^e m` with `m` in `[sqrt(1/2), sqrt(2))` (subnormals
//!   scaled by 2^54 first), `log m = 2 atanh(s)`, `s = (m-1)/(m+1)`, by the
//!   odd series to `s^23` (`|s| <= 0.172`), plus `e ln 2` in two parts:
//!   about 1 ulp.
//! * `tanh`: its Taylor series to `x^23` for `|x| < 1/4` (truncation below
//!   1e-17 relative), else `1 - 2 / (exp(2|x|) + 1)` with the sign of `x`:
//!   a few ulp.
//! * `sin`, `cos`: `k = rint(x 2/pi)`, `r = x - k pi/2` with a three-part
//!   `pi/2` (fma; exact products for `|k| < 2^20`), the Taylor series of
//!   `sin r` to `r^17` and `cos r` to `r^18` (`|r| <= pi/4`), chosen and
//!   negated by the quadrant `k mod 4`: a few ulp for `|x|` up to about
//!   1e5, degrading beyond.
//! * `erf`: its Taylor series to `x^69` for `|x| < 2` (relative error about
//!   6e-16), else `1 - erfc(|x|)` with the sign of `x`, `erfc` by 60 terms of
//!   its continued fraction (relative error about 4e-15 in `erfc`, below
//!   1e-17 in `erf`).
//! * `pow(x, y)`: `exp(y log|x|)` with the sign and NaN rules for a negative
//!   base; relative error about `1e-16 (1 + |y log x|)`.

use std::f64::consts::{LOG2_E, SQRT_2};

use kiln_dialect::kernel::Ty;

use super::asm::{Class, f64_imm};
use super::expr::{Em, Val};

/// `ln 2 - ln2_hi` to full precision (`ln2_hi` = 0x3FE62E42FEE00000 has 32
/// significant bits, so `n ln2_hi` is exact for the `n` used here).
const LN2_LO: u64 = 0x3DEA_39EF_3579_3C76;

impl Em<'_> {
    fn d(&mut self) -> String {
        self.reg(Class::Fd)
    }

    fn fma64(&mut self, a: &str, b: &str, c: &str) -> String {
        let r = self.d();
        self.ins(format!("fma.rn.f64 {r}, {a}, {b}, {c}"));
        r
    }

    fn horner64(&mut self, x: &str, c: &[f64]) -> String {
        let mut acc = self.d();
        self.ins(format!("mov.f64 {acc}, {}", f64_imm(c[c.len() - 1])));
        for &ci in c.iter().rev().skip(1) {
            acc = self.fma64(&acc, x, &f64_imm(ci));
        }
        acc
    }

    pub(super) fn exp_f64(&mut self, x: &str) -> Val {
        let ln2_hi = f64::from_bits(0x3FE6_2E42_FEE0_0000);
        let ln2_lo = f64::from_bits(LN2_LO);
        let (t, n, nn) = (self.d(), self.d(), self.d());
        self.ins(format!("mul.rn.f64 {t}, {x}, {}", f64_imm(LOG2_E)));
        self.ins(format!("cvt.rni.f64.f64 {n}, {t}"));
        self.ins(format!("neg.f64 {nn}, {n}"));
        let r = self.fma64(&nn, &f64_imm(ln2_hi), x);
        let r = self.fma64(&nn, &f64_imm(ln2_lo), &r);
        let mut c = vec![1.0];
        for i in 1..=13 {
            let prev = c[i - 1];
            c.push(prev / i as f64);
        }
        let e = self.horner64(&r, &c);
        let (ni, n1, n2) = (self.reg(Class::R), self.reg(Class::R), self.reg(Class::R));
        self.ins(format!("cvt.rni.s32.f64 {ni}, {n}"));
        self.ins(format!("min.s32 {ni}, {ni}, 2046"));
        self.ins(format!("max.s32 {ni}, {ni}, -2044"));
        self.ins(format!("shr.s32 {n1}, {ni}, 1"));
        self.ins(format!("sub.s32 {n2}, {ni}, {n1}"));
        let mut out = e;
        for k in [n1, n2] {
            let (kb, s) = (self.reg(Class::D), self.d());
            self.ins(format!("add.s32 {k}, {k}, 1023"));
            self.ins(format!("cvt.u64.u32 {kb}, {k}"));
            self.ins(format!("shl.b64 {kb}, {kb}, 52"));
            self.ins(format!("mov.b64 {s}, {kb}"));
            let m = self.d();
            self.ins(format!("mul.rn.f64 {m}, {out}, {s}"));
            out = m;
        }
        let p = self.reg(Class::P);
        self.ins(format!("setp.eq.f64 {p}, {x}, 0d7FF0000000000000"));
        self.ins(format!("@{p} mov.f64 {out}, 0d7FF0000000000000"));
        self.ins(format!("setp.eq.f64 {p}, {x}, 0dFFF0000000000000"));
        self.ins(format!("@{p} mov.f64 {out}, 0d0000000000000000"));
        Val { r: out, t: Ty::F64 }
    }

    pub(super) fn log_f64(&mut self, x: &str) -> Val {
        // Subnormals: scale by 2^54.
        let (xs, p) = (self.d(), self.reg(Class::P));
        let (bias, bits, e, mb) = (
            self.reg(Class::D),
            self.reg(Class::D),
            self.reg(Class::D),
            self.reg(Class::D),
        );
        self.ins(format!("mov.f64 {xs}, {x}"));
        self.ins(format!("mov.b64 {bias}, 1023"));
        self.ins(format!("setp.lt.f64 {p}, {x}, 0d0010000000000000"));
        self.ins(format!("@{p} mul.rn.f64 {xs}, {x}, 0d4350000000000000"));
        self.ins(format!("@{p} mov.b64 {bias}, 1077"));
        self.ins(format!("mov.b64 {bits}, {xs}"));
        self.ins(format!("shr.u64 {e}, {bits}, 52"));
        self.ins(format!("and.b64 {e}, {e}, 2047"));
        self.ins(format!("sub.s64 {e}, {e}, {bias}"));
        self.ins(format!("and.b64 {mb}, {bits}, 4503599627370495"));
        self.ins(format!("or.b64 {mb}, {mb}, 4607182418800017408"));
        let m = self.d();
        self.ins(format!("mov.b64 {m}, {mb}"));
        let q = self.reg(Class::P);
        self.ins(format!("setp.gt.f64 {q}, {m}, {}", f64_imm(SQRT_2)));
        self.ins(format!("@{q} mul.rn.f64 {m}, {m}, 0d3FE0000000000000"));
        self.ins(format!("@{q} add.s64 {e}, {e}, 1"));
        let (f, den, s, s2) = (self.d(), self.d(), self.d(), self.d());
        self.ins(format!("sub.rn.f64 {f}, {m}, 0d3FF0000000000000"));
        self.ins(format!("add.rn.f64 {den}, {m}, 0d3FF0000000000000"));
        self.ins(format!("div.rn.f64 {s}, {f}, {den}"));
        self.ins(format!("mul.rn.f64 {s2}, {s}, {s}"));
        let c: Vec<f64> = (0..12).map(|k| 2.0 / (2 * k + 1) as f64).collect();
        let poly = self.horner64(&s2, &c);
        let lm = self.d();
        self.ins(format!("mul.rn.f64 {lm}, {poly}, {s}"));
        let ef = self.d();
        self.ins(format!("cvt.rn.f64.s64 {ef}, {e}"));
        let ln2_hi = f64::from_bits(0x3FE6_2E42_FEE0_0000);
        let ln2_lo = f64::from_bits(LN2_LO);
        let lo = self.fma64(&ef, &f64_imm(ln2_lo), &lm);
        let out = self.fma64(&ef, &f64_imm(ln2_hi), &lo);
        // log(0) = -inf, log(inf) = inf, negative or NaN: NaN.
        self.ins(format!("setp.eq.f64 {p}, {x}, 0d0000000000000000"));
        self.ins(format!("@{p} mov.f64 {out}, 0dFFF0000000000000"));
        self.ins(format!("setp.eq.f64 {p}, {x}, 0d7FF0000000000000"));
        self.ins(format!("@{p} mov.f64 {out}, 0d7FF0000000000000"));
        self.ins(format!("setp.ltu.f64 {p}, {x}, 0d0000000000000000"));
        self.ins(format!("@{p} mov.f64 {out}, 0d7FF8000000000000"));
        Val { r: out, t: Ty::F64 }
    }

    pub(super) fn tanh_f64(&mut self, x: &str) -> Val {
        // The Taylor coefficients 2^2n (2^2n - 1) B_2n / (2n)!, n = 1..12.
        const C: [f64; 12] = [
            1.0,
            -0.3333333333333333,
            0.13333333333333333,
            -0.05396825396825397,
            0.021869488536155203,
            -0.008863235529902197,
            0.003592128036572481,
            -0.0014558343870513183,
            0.000590027440945586,
            -0.00023912911424355248,
            9.691537956929451e-05,
            -3.927832388331683e-05,
        ];
        let (ax, x2) = (self.d(), self.d());
        self.ins(format!("abs.f64 {ax}, {x}"));
        self.ins(format!("mul.rn.f64 {x2}, {x}, {x}"));
        let p = self.horner64(&x2, &C);
        let small = self.d();
        self.ins(format!("mul.rn.f64 {small}, {p}, {x}"));
        let two = self.d();
        self.ins(format!("add.rn.f64 {two}, {ax}, {ax}"));
        let e = self.exp_f64(&two);
        let (den, q, big) = (self.d(), self.d(), self.d());
        self.ins(format!("add.rn.f64 {den}, {}, 0d3FF0000000000000", e.r));
        self.ins(format!("div.rn.f64 {q}, 0d4000000000000000, {den}"));
        self.ins(format!("sub.rn.f64 {big}, 0d3FF0000000000000, {q}"));
        self.ins(format!("copysign.f64 {big}, {x}, {big}"));
        let (r, ps) = (self.d(), self.reg(Class::P));
        self.ins(format!("setp.lt.f64 {ps}, {ax}, 0d3FD0000000000000"));
        self.ins(format!("selp.f64 {r}, {small}, {big}, {ps}"));
        Val { r, t: Ty::F64 }
    }

    pub(super) fn sincos_f64(&mut self, x: &str, sin: bool) -> Val {
        let p1 = f64::from_bits(0x3FF9_21FB_5440_0000);
        let p2 = f64::from_bits(0x3DD0_B461_1A60_0000);
        let p3 = f64::from_bits(0x3BA3_198A_2E03_7073);
        let (t, k, nk) = (self.d(), self.d(), self.d());
        self.ins(format!(
            "mul.rn.f64 {t}, {x}, {}",
            f64_imm(std::f64::consts::FRAC_2_PI)
        ));
        self.ins(format!("cvt.rni.f64.f64 {k}, {t}"));
        self.ins(format!("neg.f64 {nk}, {k}"));
        let r = self.fma64(&nk, &f64_imm(p1), x);
        let r = self.fma64(&nk, &f64_imm(p2), &r);
        let r = self.fma64(&nk, &f64_imm(p3), &r);
        let r2 = self.d();
        self.ins(format!("mul.rn.f64 {r2}, {r}, {r}"));
        // sin r = r (1 - r^2/3! + ..), cos r = 1 - r^2/2! + ..
        let mut sc = Vec::new();
        let mut cc = Vec::new();
        let mut f = 1.0;
        for n in 0..=9u32 {
            let sign = if n % 2 == 0 { 1.0 } else { -1.0 };
            if n > 0 {
                f *= (2 * n - 1) as f64 * (2 * n) as f64;
            }
            cc.push(sign / f);
            sc.push(sign / (f * (2 * n + 1) as f64));
        }
        sc.truncate(9);
        let sp = self.horner64(&r2, &sc);
        let sv = self.d();
        self.ins(format!("mul.rn.f64 {sv}, {sp}, {r}"));
        let cv = self.horner64(&r2, &cc);
        let (q, b1, b2) = (self.reg(Class::D), self.reg(Class::D), self.reg(Class::D));
        self.ins(format!("cvt.rni.s64.f64 {q}, {k}"));
        if !sin {
            self.ins(format!("add.s64 {q}, {q}, 1"));
        }
        self.ins(format!("and.b64 {b1}, {q}, 1"));
        self.ins(format!("and.b64 {b2}, {q}, 2"));
        let (podd, pneg, out, neg) = (self.reg(Class::P), self.reg(Class::P), self.d(), self.d());
        self.ins(format!("setp.ne.s64 {podd}, {b1}, 0"));
        self.ins(format!("setp.ne.s64 {pneg}, {b2}, 0"));
        self.ins(format!("selp.f64 {out}, {cv}, {sv}, {podd}"));
        self.ins(format!("neg.f64 {neg}, {out}"));
        self.ins(format!("selp.f64 {out}, {neg}, {out}, {pneg}"));
        Val { r: out, t: Ty::F64 }
    }

    pub(super) fn erf_f64(&mut self, x: &str) -> Val {
        let (ax, x2) = (self.d(), self.d());
        self.ins(format!("abs.f64 {ax}, {x}"));
        self.ins(format!("mul.rn.f64 {x2}, {x}, {x}"));
        let mut c = Vec::new();
        let mut fact = 1.0;
        for n in 0..=34 {
            if n > 0 {
                fact *= n as f64;
            }
            let sign = if n % 2 == 0 { 1.0 } else { -1.0 };
            c.push(2.0 / std::f64::consts::PI.sqrt() * sign / (fact * (2 * n + 1) as f64));
        }
        let p = self.horner64(&x2, &c);
        let small = self.d();
        self.ins(format!("mul.rn.f64 {small}, {p}, {x}"));
        // erfc(a) = e^(-a^2) / sqrt(pi) / (a + (1/2) / (a + 1 / (a + (3/2) / ..))).
        let (t, kf, q) = (self.d(), self.d(), self.d());
        let pl = self.reg(Class::P);
        self.ins(format!("mov.f64 {t}, {ax}"));
        self.ins(format!("mov.f64 {kf}, {}", f64_imm(30.0)));
        let top = self.a.label("erfc_cf");
        self.a.place(&top);
        self.ins(format!("div.rn.f64 {q}, {kf}, {t}"));
        self.ins(format!("add.rn.f64 {t}, {ax}, {q}"));
        self.ins(format!("sub.rn.f64 {kf}, {kf}, 0d3FE0000000000000"));
        self.ins(format!("setp.gt.f64 {pl}, {kf}, 0d0000000000000000"));
        self.ins(format!("@{pl} bra {top}"));
        let nx2 = self.d();
        self.ins(format!("neg.f64 {nx2}, {x2}"));
        let e = self.exp_f64(&nx2);
        let (m, erfc, big) = (self.d(), self.d(), self.d());
        self.ins(format!(
            "mul.rn.f64 {m}, {}, {}",
            e.r,
            f64_imm(1.0 / std::f64::consts::PI.sqrt())
        ));
        self.ins(format!("div.rn.f64 {erfc}, {m}, {t}"));
        self.ins(format!("sub.rn.f64 {big}, 0d3FF0000000000000, {erfc}"));
        self.ins(format!("copysign.f64 {big}, {x}, {big}"));
        let (r, ps) = (self.d(), self.reg(Class::P));
        self.ins(format!("setp.lt.f64 {ps}, {ax}, 0d4000000000000000"));
        self.ins(format!("selp.f64 {r}, {small}, {big}, {ps}"));
        Val { r, t: Ty::F64 }
    }

    /// `pow` in f64 for a non-constant exponent.
    pub(super) fn pow_f64(&mut self, x: &str, y: &str) -> Val {
        let ax = self.d();
        self.ins(format!("abs.f64 {ax}, {x}"));
        let l = self.log_f64(&ax);
        let m = self.d();
        self.ins(format!("mul.rn.f64 {m}, {}, {y}", l.r));
        let r = self.exp_f64(&m).r;
        let (yi, h, hi, neg) = (self.d(), self.d(), self.d(), self.d());
        let (pint, peven, pneg, p, q) = (
            self.reg(Class::P),
            self.reg(Class::P),
            self.reg(Class::P),
            self.reg(Class::P),
            self.reg(Class::P),
        );
        self.ins(format!("cvt.rzi.f64.f64 {yi}, {y}"));
        self.ins(format!("setp.eq.f64 {pint}, {yi}, {y}"));
        self.ins(format!("mul.rn.f64 {h}, {y}, 0d3FE0000000000000"));
        self.ins(format!("cvt.rzi.f64.f64 {hi}, {h}"));
        self.ins(format!("setp.eq.f64 {peven}, {hi}, {h}"));
        self.ins(format!("setp.lt.f64 {pneg}, {x}, 0d0000000000000000"));
        self.ins(format!("neg.f64 {neg}, {r}"));
        self.ins(format!("not.pred {q}, {peven}"));
        self.ins(format!("and.pred {p}, {pneg}, {pint}"));
        self.ins(format!("and.pred {p}, {p}, {q}"));
        self.ins(format!("selp.f64 {r}, {neg}, {r}, {p}"));
        self.ins(format!("not.pred {q}, {pint}"));
        self.ins(format!("and.pred {p}, {pneg}, {q}"));
        self.ins(format!("selp.f64 {r}, 0d7FF8000000000000, {r}, {p}"));
        self.ins(format!("setp.eq.f64 {p}, {y}, 0d0000000000000000"));
        self.ins(format!("selp.f64 {r}, 0d3FF0000000000000, {r}, {p}"));
        self.ins(format!("setp.eq.f64 {p}, {x}, 0d3FF0000000000000"));
        self.ins(format!("selp.f64 {r}, 0d3FF0000000000000, {r}, {p}"));
        Val { r, t: Ty::F64 }
    }
}
