//! f32 transcendental functions from PTX's approximate instructions, with
//! range reduction and short polynomials where the bare instruction is not
//! accurate enough (no libdevice).
//!
//! * `exp`: `n = rint(x log2 e)`, `r = x log2 e - n` with a two-part
//!   `log2 e` (fma), `ex2.approx.f32(r)` scaled by `2^n` as two factors (so
//!   overflow gives infinity and subnormal results are reached): about
//!   2 ulp.
//! * `log`: `lg2.approx.f32(x) ln 2` (relative error about 2^-22), and a
//!   degree-7 series in `u = x - 1` for `|u| < 1/16`, where the bare
//!   instruction's absolute error would dominate.
//! * `tanh`: `x + x^3 P(x^2)` (Taylor, degree 9) for `|x| < 1/4`, else
//!   `1 - 2 / (exp(2|x|) + 1)` with the sign of `x`: about 1e-6 relative.
//!   (`tanh.approx.f32` alone has a relative error of 2^-11, too coarse.)
//! * `erf`: the Taylor series to `x^11` for `|x| < 1/2`; above, Abramowitz
//!   and Stegun 7.1.26 (`1 - t P(t) e^(-x^2)`, absolute error 1.5e-7) with
//!   `rcp.approx` and `ex2.approx`: about 25 instructions, both sides
//!   computed (a warp's lanes would take both anyway). Inside `1 + erf(x)`
//!   or `1 - erf(x)` (GELU), where only absolute accuracy survives the
//!   addition, the A&S form alone (about 15).
//! * `x / c` for a constant `c`: a multiply by `1/c` and one fma-exact
//!   correction, correctly rounded (Markstein) away from overflow and
//!   underflow.
//! * `sin`, `cos`: reduction by `2 pi` in three parts (fma), then
//!   `sin.approx.f32` / `cos.approx.f32` (absolute error about 2^-20.9);
//!   accurate for moderate arguments (|x| up to about 1e4).
//! * `pow`: `ex2.approx(y lg2.approx|x|)` with the sign and NaN rules for a
//!   negative base; `x^2` and `x^1` exactly. Relative error about
//!   `2^-22 (1 + |y log2 x|)`.

use std::f64::consts::{LN_2, LOG2_E, PI};

use kiln_dialect::kernel::{Binary, Expr, Ty};

use super::PtxError;
use super::asm::{Class, f32_imm};
use super::expr::{Em, Val, sfx};

impl Em<'_> {
    fn f(&mut self) -> String {
        self.reg(Class::F)
    }

    /// `y = a * b + c` in f32 with immediates or registers.
    fn fma(&mut self, a: &str, b: &str, c: &str) -> String {
        let r = self.f();
        self.ins(format!("fma.rn.f32 {r}, {a}, {b}, {c}"));
        r
    }

    /// Horner evaluation of `sum c[i] x^i`.
    fn horner(&mut self, x: &str, c: &[f64]) -> String {
        let mut acc = self.f();
        self.ins(format!("mov.f32 {acc}, {}", f32_imm(c[c.len() - 1])));
        for &ci in c.iter().rev().skip(1) {
            acc = self.fma(&acc, x, &f32_imm(ci));
        }
        acc
    }

    pub(super) fn exp_f32(&mut self, x: &str) -> Val {
        // x log2 e = hi + lo: hi rounded, lo its error (fma-exact) plus x
        // times the tail of log2 e; 2^hi from ex2.approx (which reduces its
        // argument exactly and reaches subnormal results), then the factor
        // 2^lo = 1 + lo ln 2 by one fma. An infinite x has no error term.
        let l = LOG2_E as f32 as f64;
        let (hi, nhi, lo0, lo, e, s) = (self.f(), self.f(), self.f(), self.f(), self.f(), self.f());
        self.ins(format!("mul.rn.f32 {hi}, {x}, {}", f32_imm(l)));
        self.ins(format!("neg.f32 {nhi}, {hi}"));
        self.ins(format!("fma.rn.f32 {lo0}, {x}, {}, {nhi}", f32_imm(l)));
        self.ins(format!(
            "fma.rn.f32 {lo}, {x}, {}, {lo0}",
            f32_imm(LOG2_E - l)
        ));
        let p = self.reg(Class::P);
        self.ins(format!("testp.infinite.f32 {p}, {x}"));
        self.ins(format!("@{p} mov.f32 {lo}, 0f00000000"));
        self.ins(format!("ex2.approx.f32 {e}, {hi}"));
        self.ins(format!("mul.rn.f32 {s}, {lo}, {}", f32_imm(LN_2)));
        let out = self.fma(&e, &s, &e);
        // Past the f32 range 2^hi is infinite, and infinity times a
        // correction of either sign (or zero) must stay infinite, not NaN.
        let over = self.reg(Class::P);
        self.ins(format!("testp.infinite.f32 {over}, {e}"));
        self.ins(format!("selp.f32 {out}, {e}, {out}, {over}"));
        Val { r: out, t: Ty::F32 }
    }

    /// `1 / (1 + exp(y))` from the approximate instructions (see
    /// `Em::logistic` for where it is precise enough): `exp(y)` overflowing
    /// to infinity gives 0, underflowing gives 1.
    pub(super) fn logistic_f32(&mut self, y: &str) -> Val {
        let (t, e, d, r) = (self.f(), self.f(), self.f(), self.f());
        self.ins(format!("mul.f32 {t}, {y}, {}", f32_imm(LOG2_E)));
        self.ins(format!("ex2.approx.ftz.f32 {e}, {t}"));
        self.ins(format!("add.f32 {d}, {e}, 0f3F800000"));
        self.ins(format!("rcp.approx.ftz.f32 {r}, {d}"));
        Val { r, t: Ty::F32 }
    }

    pub(super) fn log_f32(&mut self, x: &str) -> Val {
        let (l, r) = (self.f(), self.f());
        self.ins(format!("lg2.approx.f32 {l}, {x}"));
        self.ins(format!("mul.rn.f32 {r}, {l}, {}", f32_imm(LN_2)));
        let (u, au) = (self.f(), self.f());
        self.ins(format!("sub.rn.f32 {u}, {x}, 0f3F800000"));
        self.ins(format!("abs.f32 {au}, {u}"));
        let c: Vec<f64> = (1..=7)
            .map(|i| if i % 2 == 1 { 1.0 } else { -1.0 } / i as f64)
            .collect();
        let q = self.horner(&u, &c);
        let s = self.f();
        self.ins(format!("mul.rn.f32 {s}, {q}, {u}"));
        let p = self.reg(Class::P);
        self.ins(format!("setp.lt.f32 {p}, {au}, 0f3D800000"));
        self.ins(format!("selp.f32 {r}, {s}, {r}, {p}"));
        Val { r, t: Ty::F32 }
    }

    pub(super) fn tanh_f32(&mut self, x: &str) -> Val {
        let (ax, x2, two) = (self.f(), self.f(), self.f());
        self.ins(format!("abs.f32 {ax}, {x}"));
        self.ins(format!("mul.rn.f32 {x2}, {x}, {x}"));
        let c = [-1.0 / 3.0, 2.0 / 15.0, -17.0 / 315.0, 62.0 / 2835.0];
        let p = self.horner(&x2, &c);
        let x3 = self.f();
        self.ins(format!("mul.rn.f32 {x3}, {x2}, {x}"));
        let small = self.fma(&x3, &p, x);
        self.ins(format!("add.rn.f32 {two}, {ax}, {ax}"));
        let e = self.exp_f32(&two);
        let (d, q, big) = (self.f(), self.f(), self.f());
        self.ins(format!("add.rn.f32 {d}, {}, 0f3F800000", e.r));
        self.ins(format!("div.rn.f32 {q}, 0f40000000, {d}"));
        self.ins(format!("sub.rn.f32 {big}, 0f3F800000, {q}"));
        self.ins(format!("copysign.f32 {big}, {x}, {big}"));
        let (r, ps) = (self.f(), self.reg(Class::P));
        self.ins(format!("setp.lt.f32 {ps}, {ax}, 0f3E800000"));
        self.ins(format!("selp.f32 {r}, {small}, {big}, {ps}"));
        Val { r, t: Ty::F32 }
    }

    /// `erf(x)`; with `absolute`, accurate in absolute terms only (about
    /// 2e-7, the A&S form everywhere), which is all `1 + erf(x)` or
    /// `1 - erf(x)` keep of it: adding to 1 rounds to 6e-8 anyway.
    pub(super) fn erf_f32(&mut self, x: &str, absolute: bool) -> Val {
        let (ax, x2) = (self.f(), self.f());
        self.ins(format!("abs.f32 {ax}, {x}"));
        self.ins(format!("mul.rn.f32 {x2}, {x}, {x}"));
        if absolute {
            let big = self.erf_big(x, &ax, &x2);
            return Val { r: big, t: Ty::F32 };
        }
        // Taylor: 2/sqrt(pi) sum (-1)^n x^(2n+1) / (n! (2n+1)), to x^11:
        // the first term left out is below 2e-8 for |x| < 1/2.
        let mut c = Vec::new();
        let mut fact = 1.0;
        for n in 0..=5 {
            if n > 0 {
                fact *= n as f64;
            }
            let sign = if n % 2 == 0 { 1.0 } else { -1.0 };
            c.push(2.0 / PI.sqrt() * sign / (fact * (2 * n + 1) as f64));
        }
        let p = self.horner(&x2, &c);
        let small = self.f();
        self.ins(format!("mul.rn.f32 {small}, {p}, {x}"));
        let big = self.erf_big(x, &ax, &x2);
        let (r, ps) = (self.f(), self.reg(Class::P));
        self.ins(format!("setp.lt.f32 {ps}, {ax}, 0f3F000000"));
        self.ins(format!("selp.f32 {r}, {small}, {big}, {ps}"));
        Val { r, t: Ty::F32 }
    }

    /// `erf(x)` by Abramowitz and Stegun 7.1.26 (`|x|` in `ax`, `x^2` in
    /// `x2`): about 1.5e-7 absolute everywhere.
    fn erf_big(&mut self, x: &str, ax: &str, x2: &str) -> String {
        // 1 - t (a1 + t (a2 + ..)) e^(-x^2), t = 1 / (1 + 0.3275911 |x|):
        // the reciprocal and the exponential from the approximate
        // instructions (1 ulp; 2^-22 relative), which the formula's own
        // 1.5e-7 absolute error dominates. ex2 flushes below 2^-126, where
        // the term no longer changes 1.
        let (d, t, ne) = (self.f(), self.f(), self.f());
        self.ins(format!(
            "fma.rn.f32 {d}, {ax}, {}, 0f3F800000",
            f32_imm(0.3275911)
        ));
        self.ins(format!("rcp.approx.ftz.f32 {t}, {d}"));
        let a = [
            0.254829592,
            -0.284496736,
            1.421413741,
            -1.453152027,
            1.061405429,
        ];
        let q = self.horner(&t, &a);
        let tq = self.f();
        self.ins(format!("mul.rn.f32 {tq}, {t}, {q}"));
        self.ins(format!("mul.rn.f32 {ne}, {x2}, {}", f32_imm(-LOG2_E)));
        let e = self.f();
        self.ins(format!("ex2.approx.ftz.f32 {e}, {ne}"));
        let (m, big) = (self.f(), self.f());
        self.ins(format!("mul.rn.f32 {m}, {tq}, {e}"));
        self.ins(format!("sub.rn.f32 {big}, 0f3F800000, {m}"));
        self.ins(format!("copysign.f32 {big}, {x}, {big}"));
        big
    }

    /// `x / c` for a constant `c` whose reciprocal `y` is a normal f32:
    /// `q = x y`, then one correction `q + (x - q c) y` with the remainder
    /// exact by fma, which gives the correctly rounded quotient (Markstein)
    /// away from overflow and underflow; three instructions instead of the
    /// division sequence. `None` when `c` does not qualify.
    pub(super) fn div_by_const_f32(&mut self, x: &str, c: f64) -> Option<Val> {
        // The constant as the kernel computes with it: rounded to f32.
        let cf = c as f32;
        if !cf.is_normal() {
            return None;
        }
        let y = 1.0 / cf;
        if !y.is_normal() || cf.abs() > 2f32.powi(100) || cf.abs() < 2f32.powi(-100) {
            return None;
        }
        let (q, nq, r) = (self.f(), self.f(), self.f());
        self.ins(format!("mul.rn.f32 {q}, {x}, {}", f32_imm(f64::from(y))));
        self.ins(format!("neg.f32 {nq}, {q}"));
        self.ins(format!(
            "fma.rn.f32 {r}, {nq}, {}, {x}",
            f32_imm(f64::from(cf))
        ));
        let out = self.fma(&r, &f32_imm(f64::from(y)), &q);
        Some(Val { r: out, t: Ty::F32 })
    }

    pub(super) fn sincos_f32(&mut self, x: &str, sin: bool) -> Val {
        let tau = 2.0 * PI;
        let c1 = tau as f32 as f64;
        let c2 = (tau - c1) as f32 as f64;
        let c3 = tau - c1 - c2;
        let (t, k, nk) = (self.f(), self.f(), self.f());
        self.ins(format!("mul.rn.f32 {t}, {x}, {}", f32_imm(1.0 / tau)));
        self.ins(format!("cvt.rni.f32.f32 {k}, {t}"));
        self.ins(format!("neg.f32 {nk}, {k}"));
        let r = self.fma(&nk, &f32_imm(c1), x);
        let r = self.fma(&nk, &f32_imm(c2), &r);
        let r = self.fma(&nk, &f32_imm(c3), &r);
        let out = self.f();
        let op = if sin { "sin" } else { "cos" };
        self.ins(format!("{op}.approx.f32 {out}, {r}"));
        Val { r: out, t: Ty::F32 }
    }

    /// `pow(a, b)`: exact for the constant exponents 1 and 2, else (f32)
    /// through `lg2` and `ex2`.
    pub(super) fn pow(&mut self, e: &Expr, a: &Val, b: &Val) -> Result<Val, PtxError> {
        let t = a.t;
        if let Expr::Binary(Binary::Pow, _, y) = e
            && let Expr::Float(c) = y.as_ref()
        {
            if *c == 1.0 {
                return Ok(a.clone());
            }
            if *c == 2.0 {
                let r = self.reg(super::expr::class_of(t));
                self.ins(format!("mul.rn.{} {r}, {}, {}", sfx(t), a.r, a.r));
                return Ok(Val { r, t });
            }
        }
        if t == Ty::F64 {
            return Ok(self.pow_f64(&a.r, &b.r));
        }
        let (x, y) = (&a.r, &b.r);
        let (ax, l, m, r) = (self.f(), self.f(), self.f(), self.f());
        self.ins(format!("abs.f32 {ax}, {x}"));
        self.ins(format!("lg2.approx.f32 {l}, {ax}"));
        self.ins(format!("mul.rn.f32 {m}, {l}, {y}"));
        self.ins(format!("ex2.approx.f32 {r}, {m}"));
        // A negative base: an odd integer exponent negates, a non-integer
        // exponent gives NaN.
        let (yi, h, hi) = (self.f(), self.f(), self.f());
        let (pint, peven, pneg, p) = (
            self.reg(Class::P),
            self.reg(Class::P),
            self.reg(Class::P),
            self.reg(Class::P),
        );
        self.ins(format!("cvt.rzi.f32.f32 {yi}, {y}"));
        self.ins(format!("setp.eq.f32 {pint}, {yi}, {y}"));
        self.ins(format!("mul.rn.f32 {h}, {y}, 0f3F000000"));
        self.ins(format!("cvt.rzi.f32.f32 {hi}, {h}"));
        self.ins(format!("setp.eq.f32 {peven}, {hi}, {h}"));
        self.ins(format!("setp.lt.f32 {pneg}, {x}, 0f00000000"));
        let neg = self.f();
        self.ins(format!("neg.f32 {neg}, {r}"));
        self.ins(format!("and.pred {p}, {pneg}, {pint}"));
        let q = self.reg(Class::P);
        self.ins(format!("not.pred {q}, {peven}"));
        self.ins(format!("and.pred {p}, {p}, {q}"));
        self.ins(format!("selp.f32 {r}, {neg}, {r}, {p}"));
        self.ins(format!("not.pred {q}, {pint}"));
        self.ins(format!("and.pred {p}, {pneg}, {q}"));
        self.ins(format!("selp.f32 {r}, 0f7FFFFFFF, {r}, {p}"));
        // pow(x, 0) = pow(1, y) = 1.
        self.ins(format!("setp.eq.f32 {p}, {y}, 0f00000000"));
        self.ins(format!("selp.f32 {r}, 0f3F800000, {r}, {p}"));
        self.ins(format!("setp.eq.f32 {p}, {x}, 0f3F800000"));
        self.ins(format!("selp.f32 {r}, 0f3F800000, {r}, {p}"));
        Ok(Val { r, t: Ty::F32 })
    }
}
