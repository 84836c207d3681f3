//! Element codes in memory: loading the code of an element, decoding it to
//! a compute value as the reference evaluator does, and encoding a result
//! to the output's type with round-to-nearest-even.
//!
//! A [`Code`] is an element's storage bits in a register: `.b64` for 64-bit
//! types, `.b32` for 32-bit ones, `.b16` for `f16`/`bf16`, and the low bits
//! of a `.b32` for the byte and sub-byte types. Narrow floats are encoded
//! from an f32; an f64 (or i64) value first goes to f32 rounded to odd,
//! which makes the second rounding exact (f32 keeps more than two extra
//! bits over every narrow type).

use kiln_dialect::DType;
use kiln_dialect::kernel::Ty;

use super::asm::Class;
use super::expr::{Em, Val};

/// An element's storage bits in a register.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Code {
    pub r: String,
    /// The register width: 8 (low bits of a `.b32`), 16, 32 or 64.
    pub w: u32,
}

/// The register width of `d`'s codes.
pub(super) fn code_width(d: DType) -> u32 {
    match d.bits() {
        64 => 64,
        32 => 32,
        16 => 16,
        _ => 8,
    }
}

/// The register class of codes of width `w`.
pub(super) fn code_class(w: u32) -> Class {
    match w {
        64 => Class::D,
        16 => Class::H,
        _ => Class::R,
    }
}

/// Field layout of the minifloat storage types.
struct Mini {
    exp: u32,
    man: u32,
    bias: i32,
    max_code: u32,
    nan_code: u32,
}

fn mini(d: DType) -> Option<Mini> {
    let m = |exp, man, bias, max_code, nan_code| {
        Some(Mini {
            exp,
            man,
            bias,
            max_code,
            nan_code,
        })
    };
    match d {
        DType::F8E4M3 => m(4, 3, 7, 0x7E, 0x7F),
        DType::F8E5M2 => m(5, 2, 15, 0x7B, 0x7E),
        DType::F4E2M1 => m(2, 1, 1, 0x7, 0x0),
        DType::F64
        | DType::F32
        | DType::F16
        | DType::BF16
        | DType::I64
        | DType::I32
        | DType::I8
        | DType::U8
        | DType::Bool
        | DType::I4
        | DType::U4
        | DType::I3
        | DType::I6
        | DType::E8M0 => None,
    }
}

impl Em<'_> {
    /// The code of element `flat` (a register) of a buffer of `d` at `base`.
    pub fn load_code(&mut self, d: DType, base: &str, flat: &str) -> Code {
        let bits = d.bits();
        if bits < 8 {
            let (bo, byte, addr) = (self.reg(Class::D), self.reg(Class::D), self.reg(Class::D));
            self.ins(format!("mul.lo.s64 {bo}, {flat}, {bits}"));
            self.ins(format!("shr.u64 {byte}, {bo}, 3"));
            self.ins(format!("add.s64 {addr}, {base}, {byte}"));
            let (sh, lo, c) = (self.reg(Class::R), self.reg(Class::R), self.reg(Class::R));
            self.ins(format!("cvt.u32.u64 {sh}, {bo}"));
            self.ins(format!("and.b32 {sh}, {sh}, 7"));
            self.ins(format!("ld.global.u8 {lo}, [{addr}]"));
            if 8 % bits != 0 {
                let (p, hi) = (self.reg(Class::P), self.reg(Class::R));
                self.ins(format!("mov.b32 {hi}, 0"));
                self.ins(format!("setp.gt.u32 {p}, {sh}, {}", 8 - bits));
                self.ins(format!("@{p} ld.global.u8 {hi}, [{addr}+1]"));
                self.ins(format!("shl.b32 {hi}, {hi}, 8"));
                self.ins(format!("or.b32 {lo}, {lo}, {hi}"));
            }
            self.ins(format!("shr.u32 {c}, {lo}, {sh}"));
            self.ins(format!("and.b32 {c}, {c}, {}", (1u32 << bits) - 1));
            return Code { r: c, w: 8 };
        }
        let w = code_width(d);
        let addr = self.reg(Class::D);
        self.ins(format!("mad.lo.s64 {addr}, {flat}, {}, {base}", bits / 8));
        let r = self.reg(code_class(w));
        let ty = match w {
            64 => "b64",
            32 => "b32",
            16 => "b16",
            _ => "u8",
        };
        self.ins(format!("ld.global.{ty} {r}, [{addr}]"));
        Code { r, w }
    }

    /// Stores `code` as element `flat` of the output (byte-sized or wider
    /// types only).
    pub fn store_code(&mut self, d: DType, flat: &str, code: &Code) {
        let addr = self.reg(Class::D);
        let out = self.out_ptr.clone();
        self.ins(format!(
            "mad.lo.s64 {addr}, {flat}, {}, {out}",
            d.bits() / 8
        ));
        let ty = match code.w {
            64 => "b64",
            32 => "b32",
            16 => "b16",
            _ => "u8",
        };
        self.ins(format!("st.global.{ty} [{addr}], {}", code.r));
    }

    /// An f32 as the kernel's float type.
    fn widen(&mut self, f: String) -> Val {
        if self.fty == Ty::F64 {
            let r = self.reg(Class::Fd);
            self.ins(format!("cvt.f64.f32 {r}, {f}"));
            Val { r, t: Ty::F64 }
        } else {
            Val { r: f, t: Ty::F32 }
        }
    }

    /// The compute value of a code of `d`, as a load gives it.
    pub fn decode(&mut self, d: DType, c: &Code) -> Val {
        match d {
            DType::F64 => {
                let r = self.reg(Class::Fd);
                self.ins(format!("mov.b64 {r}, {}", c.r));
                self.narrow(Val { r, t: Ty::F64 })
            }
            DType::F32 => {
                let r = self.reg(Class::F);
                self.ins(format!("mov.b32 {r}, {}", c.r));
                self.widen(r)
            }
            DType::F16 => {
                let r = self.reg(Class::F);
                self.ins(format!("cvt.f32.f16 {r}, {}", c.r));
                self.widen(r)
            }
            DType::BF16 => {
                // The code as the high half of an f32 whose low half is
                // zero: one byte permute (or mask) once assembled, where
                // widening and shifting take two.
                let (z, r) = (self.reg(Class::H), self.reg(Class::F));
                self.ins(format!("mov.b16 {z}, 0"));
                self.ins(format!("mov.b32 {r}, {{{z}, {}}}", c.r));
                self.widen(r)
            }
            DType::I64 => Val {
                r: c.r.clone(),
                t: Ty::I64,
            },
            DType::I32 => {
                let r = self.reg(Class::D);
                self.ins(format!("cvt.s64.s32 {r}, {}", c.r));
                Val { r, t: Ty::I64 }
            }
            DType::I8 | DType::U8 | DType::I4 | DType::U4 | DType::I3 | DType::I6 => {
                let r = self.reg(Class::D);
                self.ins(format!("cvt.u64.u32 {r}, {}", c.r));
                Val {
                    r: self.wrap(&r, d),
                    t: Ty::I64,
                }
            }
            DType::Bool => {
                let (b, r) = (self.reg(Class::R), self.reg(Class::P));
                self.ins(format!("and.b32 {b}, {}, 1", c.r));
                self.ins(format!("setp.ne.u32 {r}, {b}, 0"));
                Val { r, t: Ty::Bool }
            }
            DType::E8M0 => {
                // 2^(code - 127): f32 bits code << 23, and 2^-127 (code 0)
                // as the subnormal 0x00400000; 0xFF is NaN.
                let (b, p, r) = (self.reg(Class::R), self.reg(Class::P), self.reg(Class::F));
                self.ins(format!("shl.b32 {b}, {}, 23", c.r));
                self.ins(format!("setp.eq.u32 {p}, {}, 0", c.r));
                self.ins(format!("@{p} mov.b32 {b}, 4194304"));
                self.ins(format!("setp.eq.u32 {p}, {}, 255", c.r));
                self.ins(format!("@{p} mov.b32 {b}, 2147483647"));
                self.ins(format!("mov.b32 {r}, {b}"));
                self.widen(r)
            }
            DType::F8E4M3 | DType::F8E5M2 | DType::F4E2M1 => {
                let m = mini(d).expect("a minifloat");
                let f = self.decode_mini(&m, d, &c.r);
                self.widen(f)
            }
        }
    }

    /// A minifloat code to f32: `sig * 2^k` with `sig` the significand
    /// (implicit bit for normal codes) and specials patched in.
    fn decode_mini(&mut self, m: &Mini, d: DType, c: &str) -> String {
        let r = |em: &mut Self| em.reg(Class::R);
        let (s, mag, ex, mn, sig, k) = (r(self), r(self), r(self), r(self), r(self), r(self));
        let width = m.exp + m.man;
        self.ins(format!("shr.u32 {s}, {c}, {width}"));
        self.ins(format!("and.b32 {s}, {s}, 1"));
        self.ins(format!("and.b32 {mag}, {c}, {}", (1u32 << width) - 1));
        self.ins(format!("shr.u32 {ex}, {mag}, {}", m.man));
        self.ins(format!("and.b32 {mn}, {mag}, {}", (1u32 << m.man) - 1));
        let pz = self.reg(Class::P);
        self.ins(format!("setp.eq.u32 {pz}, {ex}, 0"));
        self.ins(format!("or.b32 {sig}, {mn}, {}", 1u32 << m.man));
        self.ins(format!("selp.b32 {sig}, {mn}, {sig}, {pz}"));
        self.ins(format!("max.u32 {k}, {ex}, 1"));
        // 2^(k - bias - man) as f32 bits.
        let off = 127 - m.bias - m.man as i32;
        self.ins(format!("add.s32 {k}, {k}, {off}"));
        self.ins(format!("shl.b32 {k}, {k}, 23"));
        let (fs, scale, v) = (self.reg(Class::F), self.reg(Class::F), self.reg(Class::F));
        self.ins(format!("mov.b32 {scale}, {k}"));
        self.ins(format!("cvt.rn.f32.u32 {fs}, {sig}"));
        self.ins(format!("mul.rn.f32 {v}, {fs}, {scale}"));
        let p = self.reg(Class::P);
        match d {
            DType::F8E4M3 => {
                self.ins(format!("setp.eq.u32 {p}, {mag}, 127"));
                self.ins(format!("@{p} mov.f32 {v}, 0f7FFFFFFF"));
            }
            DType::F8E5M2 => {
                let q = self.reg(Class::P);
                self.ins(format!("setp.eq.u32 {p}, {ex}, 31"));
                self.ins(format!("@{p} mov.f32 {v}, 0f7F800000"));
                self.ins(format!("setp.ne.u32 {q}, {mn}, 0"));
                self.ins(format!("and.pred {q}, {q}, {p}"));
                self.ins(format!("@{q} mov.f32 {v}, 0f7FFFFFFF"));
            }
            DType::F4E2M1
            | DType::F64
            | DType::F32
            | DType::F16
            | DType::BF16
            | DType::I64
            | DType::I32
            | DType::I8
            | DType::U8
            | DType::Bool
            | DType::I4
            | DType::U4
            | DType::I3
            | DType::I6
            | DType::E8M0 => {}
        }
        let ps = self.reg(Class::P);
        self.ins(format!("setp.ne.u32 {ps}, {s}, 0"));
        self.ins(format!("@{ps} neg.f32 {v}, {v}"));
        v
    }

    /// An f64 rounded to f32 by rounding to odd (truncate, then set the
    /// last bit when inexact).
    fn f64_to_f32_odd(&mut self, x: &str) -> String {
        let (f, back, b) = (self.reg(Class::F), self.reg(Class::Fd), self.reg(Class::R));
        let p = self.reg(Class::P);
        self.ins(format!("cvt.rz.f32.f64 {f}, {x}"));
        self.ins(format!("cvt.f64.f32 {back}, {f}"));
        self.ins(format!("setp.neu.f64 {p}, {back}, {x}"));
        self.ins(format!("mov.b32 {b}, {f}"));
        self.ins(format!("@{p} or.b32 {b}, {b}, 1"));
        let o = self.reg(Class::F);
        self.ins(format!("mov.b32 {o}, {b}"));
        o
    }

    /// `v` as an f64 (`i as f64` for integers, 0/1 for bools).
    fn as_f64(&mut self, v: &Val) -> String {
        let r = self.reg(Class::Fd);
        match v.t {
            Ty::F64 => return v.r.clone(),
            Ty::F32 => self.ins(format!("cvt.f64.f32 {r}, {}", v.r)),
            Ty::I64 => self.ins(format!("cvt.rn.f64.s64 {r}, {}", v.r)),
            Ty::Bool => self.ins(format!(
                "selp.f64 {r}, 0d3FF0000000000000, 0d0000000000000000, {}",
                v.r
            )),
        }
        r
    }

    /// `v` as an f32 from which a narrow float type rounds exactly.
    fn as_f32_for_narrow(&mut self, v: &Val) -> String {
        match v.t {
            Ty::F32 => v.r.clone(),
            Ty::Bool => {
                let r = self.reg(Class::F);
                self.ins(format!("selp.f32 {r}, 0f3F800000, 0f00000000, {}", v.r));
                r
            }
            Ty::F64 | Ty::I64 => {
                let d = self.as_f64(v);
                self.f64_to_f32_odd(&d)
            }
        }
    }

    /// The code of `d` that storing `v` writes (as the evaluator's store:
    /// floats round to nearest even with the type's overflow rules,
    /// integers wrap, floats to integer types round and saturate).
    pub fn encode(&mut self, v: &Val, d: DType) -> Code {
        match d {
            DType::F64 => {
                let x = self.as_f64(v);
                let r = self.reg(Class::D);
                self.ins(format!("mov.b64 {r}, {x}"));
                Code { r, w: 64 }
            }
            DType::F32 => {
                let f = match v.t {
                    Ty::F32 => v.r.clone(),
                    Ty::F64 | Ty::I64 | Ty::Bool => {
                        let x = self.as_f64(v);
                        let f = self.reg(Class::F);
                        self.ins(format!("cvt.rn.f32.f64 {f}, {x}"));
                        f
                    }
                };
                let r = self.reg(Class::R);
                self.ins(format!("mov.b32 {r}, {f}"));
                Code { r, w: 32 }
            }
            DType::F16 | DType::BF16 => {
                let f = self.as_f32_for_narrow(v);
                let r = self.reg(Class::H);
                let t = if d == DType::F16 { "f16" } else { "bf16" };
                self.ins(format!("cvt.rn.{t}.f32 {r}, {f}"));
                Code { r, w: 16 }
            }
            DType::F8E4M3 | DType::F8E5M2 | DType::F4E2M1 => {
                let f = self.as_f32_for_narrow(v);
                let m = mini(d).expect("a minifloat");
                let r = self.encode_mini(&m, &f);
                Code { r, w: 8 }
            }
            DType::E8M0 => {
                let f = self.as_f32_for_narrow(v);
                let r = self.encode_e8m0(&f);
                Code { r, w: 8 }
            }
            DType::Bool => {
                let p = match v.t {
                    Ty::Bool => v.r.clone(),
                    Ty::F32 | Ty::F64 | Ty::I64 => self.cast(Ty::Bool, v.clone()).r,
                };
                let r = self.reg(Class::R);
                self.ins(format!("selp.b32 {r}, 1, 0, {p}"));
                Code { r, w: 8 }
            }
            DType::I64
            | DType::I32
            | DType::I8
            | DType::U8
            | DType::I4
            | DType::U4
            | DType::I3
            | DType::I6 => {
                let i = match v.t {
                    Ty::I64 => v.r.clone(),
                    Ty::Bool => {
                        let r = self.reg(Class::D);
                        self.ins(format!("selp.b64 {r}, 1, 0, {}", v.r));
                        r
                    }
                    Ty::F32 | Ty::F64 => {
                        // Round half to even, saturate (NaN gives 0).
                        let r = self.reg(Class::D);
                        let s = if v.t == Ty::F32 { "f32" } else { "f64" };
                        self.ins(format!("cvt.rni.s64.{s} {r}, {}", v.r));
                        // The GPU converts NaN to the most negative value.
                        let nan = self.reg(Class::P);
                        self.ins(format!("setp.nan.{s} {nan}, {0}, {0}", v.r));
                        self.ins(format!("@{nan} mov.b64 {r}, 0"));
                        if let Some((lo, hi)) = d.int_range() {
                            self.ins(format!("max.s64 {r}, {r}, {lo}"));
                            self.ins(format!("min.s64 {r}, {r}, {hi}"));
                        }
                        r
                    }
                };
                let w = code_width(d);
                if w == 64 {
                    return Code { r: i, w };
                }
                let r = self.reg(Class::R);
                self.ins(format!("cvt.u32.u64 {r}, {i}"));
                if d.bits() < 32 {
                    self.ins(format!("and.b32 {r}, {r}, {}", (1u64 << d.bits()) - 1));
                }
                Code { r, w }
            }
        }
    }

    /// f32 `x` to a minifloat code: round the magnitude to nearest even in
    /// the binade of `x` (or the subnormal range), saturate, NaN to the NaN
    /// code, sign on top.
    fn encode_mini(&mut self, m: &Mini, x: &str) -> String {
        let r = |em: &mut Self| em.reg(Class::R);
        let (xb, a, s, e, mant, bin, sh) = (
            r(self),
            r(self),
            r(self),
            r(self),
            r(self),
            r(self),
            r(self),
        );
        let emin = 1 - m.bias;
        self.ins(format!("mov.b32 {xb}, {x}"));
        self.ins(format!("and.b32 {a}, {xb}, 2147483647"));
        self.ins(format!("shr.u32 {s}, {xb}, 31"));
        let pnan = self.reg(Class::P);
        self.ins(format!("setp.gt.u32 {pnan}, {a}, 2139095040"));
        self.ins(format!("shr.u32 {e}, {a}, 23"));
        self.ins(format!("and.b32 {mant}, {a}, 8388607"));
        self.ins(format!("or.b32 {mant}, {mant}, 8388608"));
        // E = e - 127; binade = max(E, emin); shift = binade - E + 23 - man.
        self.ins(format!("sub.s32 {e}, {e}, 127"));
        self.ins(format!("max.s32 {bin}, {e}, {emin}"));
        self.ins(format!("sub.s32 {sh}, {bin}, {e}"));
        self.ins(format!("add.s32 {sh}, {sh}, {}", 23 - m.man));
        self.ins(format!("min.u32 {sh}, {sh}, 31"));
        let (q, one, mask, rem, half, odd) = (r(self), r(self), r(self), r(self), r(self), r(self));
        self.ins(format!("shr.u32 {q}, {mant}, {sh}"));
        self.ins(format!("mov.b32 {one}, 1"));
        self.ins(format!("shl.b32 {one}, {one}, {sh}"));
        self.ins(format!("sub.s32 {mask}, {one}, 1"));
        self.ins(format!("and.b32 {rem}, {mant}, {mask}"));
        self.ins(format!("shr.u32 {half}, {one}, 1"));
        self.ins(format!("and.b32 {odd}, {q}, 1"));
        let (p1, p2, p3) = (self.reg(Class::P), self.reg(Class::P), self.reg(Class::P));
        self.ins(format!("setp.gt.u32 {p1}, {rem}, {half}"));
        self.ins(format!("setp.eq.u32 {p2}, {rem}, {half}"));
        self.ins(format!("setp.ne.u32 {p3}, {odd}, 0"));
        self.ins(format!("and.pred {p2}, {p2}, {p3}"));
        self.ins(format!("or.pred {p1}, {p1}, {p2}"));
        self.ins(format!("@{p1} add.s32 {q}, {q}, 1"));
        let code = r(self);
        self.ins(format!("sub.s32 {code}, {bin}, {emin}"));
        self.ins(format!("shl.b32 {code}, {code}, {}", m.man));
        self.ins(format!("add.s32 {code}, {code}, {q}"));
        self.ins(format!("min.u32 {code}, {code}, {}", m.max_code));
        self.ins(format!("shl.b32 {s}, {s}, {}", m.exp + m.man));
        self.ins(format!("or.b32 {code}, {code}, {s}"));
        self.ins(format!("@{pnan} mov.b32 {code}, {}", m.nan_code));
        code
    }

    /// f32 `x` to an `e8m0` code: the nearest power of two (ties to the
    /// even code), clamped to `0 ..= 254`; NaN and negative numbers 255.
    fn encode_e8m0(&mut self, x: &str) -> String {
        let (xb, e, fr, code, t) = (
            self.reg(Class::R),
            self.reg(Class::R),
            self.reg(Class::R),
            self.reg(Class::R),
            self.reg(Class::R),
        );
        self.ins(format!("mov.b32 {xb}, {x}"));
        self.ins(format!("shr.u32 {e}, {xb}, 23"));
        self.ins(format!("and.b32 {e}, {e}, 255"));
        self.ins(format!("and.b32 {fr}, {xb}, 8388607"));
        let (p1, p2, p3) = (self.reg(Class::P), self.reg(Class::P), self.reg(Class::P));
        self.ins(format!("and.b32 {t}, {e}, 1"));
        self.ins(format!("setp.gt.u32 {p1}, {fr}, 4194304"));
        self.ins(format!("setp.eq.u32 {p2}, {fr}, 4194304"));
        self.ins(format!("setp.ne.u32 {p3}, {t}, 0"));
        self.ins(format!("and.pred {p2}, {p2}, {p3}"));
        self.ins(format!("or.pred {p1}, {p1}, {p2}"));
        self.ins(format!("selp.b32 {t}, 1, 0, {p1}"));
        self.ins(format!("add.s32 {code}, {e}, {t}"));
        self.ins(format!("min.u32 {code}, {code}, 254"));
        // f32 zero or subnormal: 1 above 1.5 * 2^-127, else 0.
        self.ins(format!("setp.eq.u32 {p1}, {e}, 0"));
        self.ins(format!("setp.gt.u32 {p2}, {fr}, 6291456"));
        self.ins(format!("selp.b32 {t}, 1, 0, {p2}"));
        self.ins(format!("@{p1} mov.b32 {code}, {t}"));
        self.ins(format!("setp.lt.f32 {p1}, {x}, 0f00000000"));
        self.ins(format!("setp.nan.f32 {p2}, {x}, {x}"));
        self.ins(format!("or.pred {p1}, {p1}, {p2}"));
        self.ins(format!("@{p1} mov.b32 {code}, 255"));
        code
    }
}
