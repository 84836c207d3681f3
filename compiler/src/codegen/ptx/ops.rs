//! Unary and binary operations on computed values.

use kiln_dialect::DType;
use kiln_dialect::kernel::{Binary, Expr, Ty, Unary};

use super::PtxError;
use super::asm::Class;
use super::expr::{Em, Val, class_of, sfx};

impl Em<'_> {
    /// [`Expr::Unary`] on a computed operand.
    pub fn unary(&mut self, e: &Expr, op: Unary, x: Val) -> Result<Val, PtxError> {
        match x.t {
            Ty::Bool => match op {
                Unary::Not => {
                    let r = self.reg(Class::P);
                    self.ins(format!("not.pred {r}, {}", x.r));
                    Ok(Val { r, t: Ty::Bool })
                }
                Unary::Neg
                | Unary::Abs
                | Unary::Exp
                | Unary::Log
                | Unary::Sqrt
                | Unary::Tanh
                | Unary::Erf
                | Unary::Sin
                | Unary::Cos
                | Unary::Floor
                | Unary::Ceil
                | Unary::Round => Err(self.type_err(e, format!("{} of a bool", op.name()))),
            },
            Ty::I64 => match op {
                Unary::Neg | Unary::Abs => {
                    let r = self.reg(Class::D);
                    self.ins(format!("{}.s64 {r}, {}", op.name(), x.r));
                    Ok(Val { r, t: Ty::I64 })
                }
                Unary::Floor | Unary::Ceil | Unary::Round => Ok(x),
                Unary::Exp
                | Unary::Log
                | Unary::Sqrt
                | Unary::Tanh
                | Unary::Erf
                | Unary::Sin
                | Unary::Cos
                | Unary::Not => Err(self.type_err(e, format!("{} of an integer", op.name()))),
            },
            Ty::F32 | Ty::F64 => {
                let t = x.t;
                let s = sfx(t);
                let simple = |em: &mut Self, ins: &str| {
                    let r = em.reg(class_of(t));
                    em.ins(format!("{ins}.{s} {r}, {}", x.r));
                    Val { r, t }
                };
                Ok(match op {
                    Unary::Neg => simple(self, "neg"),
                    Unary::Abs => simple(self, "abs"),
                    Unary::Sqrt => simple(self, "sqrt.rn"),
                    Unary::Floor => simple(self, &format!("cvt.rmi.{s}")),
                    Unary::Ceil => simple(self, &format!("cvt.rpi.{s}")),
                    Unary::Round => simple(self, &format!("cvt.rni.{s}")),
                    Unary::Exp if t == Ty::F64 => self.exp_f64(&x.r),
                    Unary::Log if t == Ty::F64 => self.log_f64(&x.r),
                    Unary::Tanh if t == Ty::F64 => self.tanh_f64(&x.r),
                    Unary::Sin if t == Ty::F64 => self.sincos_f64(&x.r, true),
                    Unary::Cos if t == Ty::F64 => self.sincos_f64(&x.r, false),
                    Unary::Erf if t == Ty::F64 => self.erf_f64(&x.r),
                    Unary::Exp => self.exp_f32(&x.r),
                    Unary::Log => self.log_f32(&x.r),
                    Unary::Tanh => self.tanh_f32(&x.r),
                    Unary::Erf => self.erf_f32(&x.r, false),
                    Unary::Sin => self.sincos_f32(&x.r, true),
                    Unary::Cos => self.sincos_f32(&x.r, false),
                    Unary::Not => return Err(self.type_err(e, "not of a float")),
                })
            }
        }
    }

    /// [`Expr::Binary`] on computed operands of one type.
    pub fn binary(&mut self, e: &Expr, op: Binary, a: Val, b: Val) -> Result<Val, PtxError> {
        if a.t != b.t {
            return Err(self.type_err(e, format!("{} of mixed types", op.name())));
        }
        let t = a.t;
        let cmp = |em: &mut Self, cc: &str, ty: &str| {
            let r = em.reg(Class::P);
            em.ins(format!("setp.{cc}.{ty} {r}, {}, {}", a.r, b.r));
            Val { r, t: Ty::Bool }
        };
        let arith = |em: &mut Self, ins: &str| {
            let r = em.reg(class_of(t));
            em.ins(format!("{ins} {r}, {}, {}", a.r, b.r));
            Val { r, t }
        };
        match t {
            Ty::F32 | Ty::F64 => {
                let s = sfx(t);
                // f32 sums and products without a rounding modifier: the
                // assembler may contract a product and a sum into one fma
                // (nvcc's default), a rounding fewer than the evaluator's.
                // f64 keeps `.rn` (each rounding as the evaluator's).
                let rn = if t == Ty::F32 { "" } else { ".rn" };
                Ok(match op {
                    Binary::Add => arith(self, &format!("add{rn}.{s}")),
                    Binary::Sub => arith(self, &format!("sub{rn}.{s}")),
                    Binary::Mul => arith(self, &format!("mul{rn}.{s}")),
                    Binary::Div => match (t, e) {
                        // `1 / d` rounded to a 16-bit output: the
                        // reciprocal's 1 ulp (2^-23) vanishes in the
                        // output's 2^-9 (2^-12); a division is about 15
                        // instructions and a branch (SiLU's `x / (1 +
                        // exp(-x))` in a SwiGLU epilogue).
                        (Ty::F32, Expr::Binary(Binary::Div, n, _))
                            if matches!(**n, Expr::Float(v) if v == 1.0)
                                && matches!(self.k.output.dtype, DType::BF16 | DType::F16) =>
                        {
                            let r = self.reg(Class::F);
                            self.ins(format!("rcp.approx.f32 {r}, {}", b.r));
                            Val { r, t }
                        }
                        (Ty::F32, Expr::Binary(Binary::Div, _, c)) => match **c {
                            Expr::Float(c) => match self.div_by_const_f32(&a.r, c) {
                                Some(q) => q,
                                None => arith(self, "div.rn.f32"),
                            },
                            _ => arith(self, "div.rn.f32"),
                        },
                        _ => arith(self, &format!("div.rn.{s}")),
                    },
                    Binary::Max | Binary::Min if t == Ty::F32 => {
                        // NaN-propagating (sm_80 and later, every target).
                        arith(self, &format!("{}.NaN.f32", op.name()))
                    }
                    Binary::Max | Binary::Min => {
                        let m = arith(self, &format!("{}.{s}", op.name()));
                        let p = self.reg(Class::P);
                        self.ins(format!("setp.nan.{s} {p}, {}, {}", a.r, b.r));
                        self.ins(format!("@{p} add.rn.{s} {}, {}, {}", m.r, a.r, b.r));
                        m
                    }
                    Binary::Pow => self.pow(e, &a, &b)?,
                    Binary::Eq => cmp(self, "eq", s),
                    Binary::Ne => cmp(self, "neu", s),
                    Binary::Lt => cmp(self, "lt", s),
                    Binary::Le => cmp(self, "le", s),
                    Binary::Gt => cmp(self, "gt", s),
                    Binary::Ge => cmp(self, "ge", s),
                    Binary::Rem | Binary::And | Binary::Or => {
                        return Err(self.type_err(e, format!("{} of floats", op.name())));
                    }
                })
            }
            Ty::I64 => Ok(match op {
                Binary::Add => arith(self, "add.s64"),
                Binary::Sub => arith(self, "sub.s64"),
                Binary::Mul => arith(self, "mul.lo.s64"),
                Binary::Max => arith(self, "max.s64"),
                Binary::Min => arith(self, "min.s64"),
                Binary::Div | Binary::Rem if positive_const(e).is_some() => {
                    // A positive constant divisor (index arithmetic): a
                    // power of two shifts, with the bias that truncates a
                    // negative dividend toward zero; another constant is
                    // left to ptxas, which multiplies by its reciprocal.
                    let c = positive_const(e).unwrap_or(1);
                    let r = self.reg(Class::D);
                    if c.count_ones() == 1 {
                        let sh = c.trailing_zeros();
                        let (bias, q) = (self.reg(Class::D), self.reg(Class::D));
                        if sh == 0 {
                            self.ins(format!("mov.b64 {q}, {}", a.r));
                        } else {
                            self.ins(format!("shr.s64 {bias}, {}, 63", a.r));
                            self.ins(format!("shr.u64 {bias}, {bias}, {}", 64 - sh));
                            self.ins(format!("add.s64 {bias}, {bias}, {}", a.r));
                            self.ins(format!("shr.s64 {q}, {bias}, {sh}"));
                        }
                        if op == Binary::Div {
                            return Ok(Val { r: q, t });
                        }
                        self.ins(format!("shl.b64 {r}, {q}, {sh}"));
                        self.ins(format!("sub.s64 {r}, {}, {r}", a.r));
                    } else {
                        let ins = if op == Binary::Div { "div" } else { "rem" };
                        self.ins(format!("{ins}.s64 {r}, {}, {c}", a.r));
                    }
                    Val { r, t }
                }
                Binary::Div | Binary::Rem => {
                    // A zero divisor gives 0; magnitudes divide unsigned,
                    // the quotient truncates toward zero and the remainder
                    // takes the dividend's sign.
                    let (p, d) = (self.reg(Class::P), self.reg(Class::D));
                    self.ins(format!("setp.eq.s64 {p}, {}, 0", b.r));
                    self.ins(format!("selp.b64 {d}, 1, {}, {p}", b.r));
                    let (ua, ub) = (self.reg(Class::D), self.reg(Class::D));
                    self.ins(format!("abs.s64 {ua}, {}", a.r));
                    self.ins(format!("abs.s64 {ub}, {d}"));
                    let (q, rm) = self.divmod_u64(&ua, &ub);
                    let (na, nq, r) = (self.reg(Class::P), self.reg(Class::P), self.reg(Class::D));
                    self.ins(format!("setp.lt.s64 {na}, {}, 0", a.r));
                    let nb = self.reg(Class::P);
                    self.ins(format!("setp.lt.s64 {nb}, {d}, 0"));
                    self.ins(format!("xor.pred {nq}, {na}, {nb}"));
                    let (src, neg) = if op == Binary::Div { (q, nq) } else { (rm, na) };
                    self.ins(format!("neg.s64 {r}, {src}"));
                    self.ins(format!("selp.b64 {r}, {r}, {src}, {neg}"));
                    self.ins(format!("selp.b64 {r}, 0, {r}, {p}"));
                    Val { r, t }
                }
                Binary::Pow => self.int_pow(&a.r, &b.r),
                Binary::Eq => cmp(self, "eq", "s64"),
                Binary::Ne => cmp(self, "ne", "s64"),
                Binary::Lt => cmp(self, "lt", "s64"),
                Binary::Le => cmp(self, "le", "s64"),
                Binary::Gt => cmp(self, "gt", "s64"),
                Binary::Ge => cmp(self, "ge", "s64"),
                Binary::And | Binary::Or => {
                    return Err(self.type_err(e, format!("{} of integers", op.name())));
                }
            }),
            Ty::Bool => {
                let logic = |em: &mut Self, ins: &str| {
                    let r = em.reg(Class::P);
                    em.ins(format!("{ins}.pred {r}, {}, {}", a.r, b.r));
                    r
                };
                Ok(match op {
                    Binary::And => Val {
                        r: logic(self, "and"),
                        t,
                    },
                    Binary::Or => Val {
                        r: logic(self, "or"),
                        t,
                    },
                    Binary::Ne => Val {
                        r: logic(self, "xor"),
                        t,
                    },
                    Binary::Eq => {
                        let x = logic(self, "xor");
                        let r = self.reg(Class::P);
                        self.ins(format!("not.pred {r}, {x}"));
                        Val { r, t }
                    }
                    Binary::Add
                    | Binary::Sub
                    | Binary::Mul
                    | Binary::Div
                    | Binary::Rem
                    | Binary::Pow
                    | Binary::Max
                    | Binary::Min
                    | Binary::Lt
                    | Binary::Le
                    | Binary::Gt
                    | Binary::Ge => {
                        return Err(self.type_err(e, format!("{} of bools", op.name())));
                    }
                })
            }
        }
    }

    /// Unsigned 64-bit quotient and remainder of `a / b` (`b != 0`),
    /// without the division subroutine calls of `div.u64`: one 32-bit
    /// division when both fit in 32 bits, else 64 steps of shift and
    /// subtract.
    pub fn divmod_u64(&mut self, a: &str, b: &str) -> (String, String) {
        let (q, r, t) = (self.reg(Class::D), self.reg(Class::D), self.reg(Class::D));
        let p = self.reg(Class::P);
        let (slow, done) = (self.a.label("div_slow"), self.a.label("div_done"));
        self.ins(format!("or.b64 {t}, {a}, {b}"));
        self.ins(format!("shr.u64 {t}, {t}, 32"));
        self.ins(format!("setp.ne.s64 {p}, {t}, 0"));
        self.ins(format!("@{p} bra {slow}"));
        let (a32, b32, q32, r32) = (
            self.reg(Class::R),
            self.reg(Class::R),
            self.reg(Class::R),
            self.reg(Class::R),
        );
        self.ins(format!("cvt.u32.u64 {a32}, {a}"));
        self.ins(format!("cvt.u32.u64 {b32}, {b}"));
        self.ins(format!("div.u32 {q32}, {a32}, {b32}"));
        self.ins(format!("rem.u32 {r32}, {a32}, {b32}"));
        self.ins(format!("cvt.u64.u32 {q}, {q32}"));
        self.ins(format!("cvt.u64.u32 {r}, {r32}"));
        self.ins(format!("bra.uni {done}"));
        self.a.place(&slow);
        let (i, bit) = (self.reg(Class::R), self.reg(Class::D));
        let top = self.a.label("div_bit");
        self.ins(format!("mov.b64 {q}, 0"));
        self.ins(format!("mov.b64 {r}, 0"));
        self.ins(format!("mov.b32 {i}, 63"));
        self.a.place(&top);
        self.ins(format!("shr.u64 {bit}, {a}, {i}"));
        self.ins(format!("and.b64 {bit}, {bit}, 1"));
        self.ins(format!("shl.b64 {r}, {r}, 1"));
        self.ins(format!("or.b64 {r}, {r}, {bit}"));
        self.ins(format!("shl.b64 {q}, {q}, 1"));
        self.ins(format!("setp.ge.u64 {p}, {r}, {b}"));
        self.ins(format!("@{p} sub.s64 {r}, {r}, {b}"));
        self.ins(format!("@{p} or.b64 {q}, {q}, 1"));
        self.ins(format!("sub.s32 {i}, {i}, 1"));
        self.ins(format!("setp.ge.s32 {p}, {i}, 0"));
        self.ins(format!("@{p} bra {top}"));
        self.a.place(&done);
        (q, r)
    }

    /// Integer power, wrapping; a negative exponent gives 0 unless the base
    /// is 1 or -1 (square-and-multiply loop).
    fn int_pow(&mut self, x: &str, y: &str) -> Val {
        let (res, base, n) = (self.reg(Class::D), self.reg(Class::D), self.reg(Class::D));
        let (p, q, bit) = (self.reg(Class::P), self.reg(Class::P), self.reg(Class::D));
        self.ins(format!("mov.b64 {res}, 1"));
        self.ins(format!("mov.b64 {base}, {x}"));
        self.ins(format!("max.s64 {n}, {y}, 0"));
        let (top, done) = (self.a.label("ipow"), self.a.label("ipow_end"));
        self.a.place(&top);
        self.ins(format!("setp.eq.s64 {p}, {n}, 0"));
        self.ins(format!("@{p} bra {done}"));
        self.ins(format!("and.b64 {bit}, {n}, 1"));
        self.ins(format!("setp.ne.s64 {q}, {bit}, 0"));
        self.ins(format!("@{q} mul.lo.s64 {res}, {res}, {base}"));
        self.ins(format!("mul.lo.s64 {base}, {base}, {base}"));
        self.ins(format!("shr.u64 {n}, {n}, 1"));
        self.ins(format!("bra.uni {top}"));
        self.a.place(&done);
        // y < 0: 1 for x == 1, (-1)^y for x == -1, else 0.
        let (neg, odd, neg1, r) = (
            self.reg(Class::P),
            self.reg(Class::D),
            self.reg(Class::D),
            self.reg(Class::D),
        );
        let (p1, pm1, podd) = (self.reg(Class::P), self.reg(Class::P), self.reg(Class::P));
        self.ins(format!("setp.lt.s64 {neg}, {y}, 0"));
        self.ins(format!("and.b64 {odd}, {y}, 1"));
        self.ins(format!("setp.ne.s64 {podd}, {odd}, 0"));
        self.ins(format!("selp.b64 {neg1}, -1, 1, {podd}"));
        self.ins(format!("setp.eq.s64 {p1}, {x}, 1"));
        self.ins(format!("setp.eq.s64 {pm1}, {x}, -1"));
        self.ins(format!("selp.b64 {r}, 0, 0, {p1}"));
        self.ins(format!("selp.b64 {r}, 1, {r}, {p1}"));
        self.ins(format!("selp.b64 {r}, {neg1}, {r}, {pm1}"));
        self.ins(format!("selp.b64 {res}, {r}, {res}, {neg}"));
        Val { r: res, t: Ty::I64 }
    }
}

/// The divisor of a division or remainder by a positive integer constant.
fn positive_const(e: &Expr) -> Option<i64> {
    match e {
        Expr::Binary(Binary::Div | Binary::Rem, _, c) => match **c {
            Expr::Int(c) if c > 0 => Some(c),
            _ => None,
        },
        _ => None,
    }
}
