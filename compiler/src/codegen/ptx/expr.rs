//! Scalar expressions to PTX: the emitter's state (variables, dims, shapes,
//! the row reductions already computed) and one instruction sequence per
//! expression node.

use std::collections::{BTreeSet, HashMap};

use kiln_dialect::kernel::{Binary, Expr, Kernel, Reduction, Ty, Unary, Var};
use kiln_dialect::{DType, Dim};

use super::PtxError;
use super::asm::{Asm, Class, f32_imm, f64_imm};
use super::dtype_io::Code;

/// A computed scalar: its register and compute type.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Val {
    pub r: String,
    pub t: Ty,
}

/// The register class of a compute type.
pub(super) fn class_of(t: Ty) -> Class {
    match t {
        Ty::F32 => Class::F,
        Ty::F64 => Class::Fd,
        Ty::I64 => Class::D,
        Ty::Bool => Class::P,
    }
}

/// The PTX type suffix of a compute type for arithmetic.
pub(super) fn sfx(t: Ty) -> &'static str {
    match t {
        Ty::F32 => "f32",
        Ty::F64 => "f64",
        Ty::I64 => "s64",
        Ty::Bool => "pred",
    }
}

/// Lanes of loads already read for the current run of output elements
/// (vectorized loads): an input read at the output's own index, or one
/// load whose lanes read consecutive elements (`load`, see
/// `elements::run_loads`).
pub(super) struct Preload {
    pub input: usize,
    pub load: Option<Expr>,
    pub lanes: Vec<Code>,
}

/// The state of one entry being emitted.
pub(super) struct Em<'k> {
    pub k: &'k Kernel,
    pub a: Asm,
    /// The kernel's float type.
    pub fty: Ty,
    /// The register of each bound variable.
    pub vars: HashMap<Var, String>,
    /// The registers of [`Kernel::dims`].
    pub dims: Vec<String>,
    /// Global base address of each input.
    pub in_ptr: Vec<String>,
    pub out_ptr: String,
    /// Per input, per axis: its size and row-major stride (register or
    /// immediate).
    pub in_shape: Vec<Vec<String>>,
    pub in_strides: Vec<Vec<String>>,
    pub out_shape: Vec<String>,
    /// Reductions computed once per row (row kernels), by structure.
    pub cache: Vec<(Expr, Val)>,
    /// The accumulator of a contraction's epilogue.
    pub acc: Option<Val>,
    pub preload: Vec<Preload>,
    /// The lane of the current run whose preloaded values loads use.
    pub lane: usize,
    /// Nesting depth of reductions that rebind an output variable: inside
    /// one, identity loads are not the preloaded ones.
    pub shadowed: u32,
    /// Values already computed in the current straight-line region, by
    /// structure (the row-resident path keeps one per owned column): an
    /// expression met again is not emitted again. Off (`None`) by default;
    /// taken away inside loops and branches, whose values do not reach
    /// the code after them.
    pub memo: Option<Vec<(Expr, Val)>>,
    /// Codes already loaded for the current column of the row-resident
    /// path (group loads), by the load expression: a load met here is
    /// decoded from its code, not read again.
    pub col_codes: Vec<(Expr, Code)>,
    /// The column variable of the row-resident path while it evaluates a
    /// column: values that do not read it (`1 / sqrt(var + eps)`) go to
    /// [`Em::row_memo`], shared by the row's columns, and a division by
    /// one becomes a multiply by its reciprocal, computed once per row.
    pub col_var: Option<Var>,
    /// Values of the current row shared by all its columns (see
    /// [`Em::col_var`]).
    pub row_memo: Vec<(Expr, Val)>,
    /// Per divisor of the current row: its reciprocal and whether the
    /// reciprocal path holds (see `div_by_row_value`).
    pub row_recips: Vec<(Expr, String, String)>,
    /// Selects whose sides read memory become branches
    /// ([`super::PtxOptions::branch_selects`]).
    pub branch_selects: bool,
    /// Element maps walk their largest strided input's order
    /// ([`super::PtxOptions::walk_inputs`]).
    pub walk_inputs: bool,
}

/// `(u, minus)` when `e` is `1 + erf(u)`, `erf(u) + 1` (`minus` false) or
/// `1 - erf(u)` (true).
fn one_plus_erf_parts(e: &Expr) -> Option<(&Expr, bool)> {
    let one = |x: &Expr| matches!(x, Expr::Float(v) if *v == 1.0);
    fn erf_arg(x: &Expr) -> Option<&Expr> {
        match x {
            Expr::Unary(Unary::Erf, u) => Some(u),
            _ => None,
        }
    }
    let Expr::Binary(op, a, b) = e else {
        return None;
    };
    match op {
        Binary::Add if one(a) => erf_arg(b).map(|u| (u, false)),
        Binary::Add if one(b) => erf_arg(a).map(|u| (u, false)),
        Binary::Sub if one(a) => erf_arg(b).map(|u| (u, true)),
        _ => None,
    }
}

/// `y` when `d` is `1 + exp(y)` or `exp(y) + 1`: the denominator of the
/// logistic function of `-y` (the sigmoid's, and SiLU's `x / (1 +
/// exp(-x))`).
pub(super) fn logistic_arg(d: &Expr) -> Option<&Expr> {
    let one = |x: &Expr| matches!(x, Expr::Float(v) if *v == 1.0);
    let Expr::Binary(Binary::Add, p, q) = d else {
        return None;
    };
    let other = match () {
        _ if one(p) => q,
        _ if one(q) => p,
        _ => return None,
    };
    match &**other {
        Expr::Unary(Unary::Exp, y) => Some(y),
        _ => None,
    }
}

/// Whether a kernel writing `out` evaluates `n / d` with
/// [`Em::logistic`]'s approximate instructions.
pub(super) fn fast_logistic(out: DType, d: &Expr) -> bool {
    matches!(out, DType::BF16 | DType::F16) && logistic_arg(d).is_some()
}

/// An immediate integer operand, if `s` is one.
pub(super) fn imm(s: &str) -> Option<i64> {
    s.parse().ok()
}

impl<'k> Em<'k> {
    pub fn new(k: &'k Kernel) -> Em<'k> {
        let fty = match k.float {
            Ty::F64 => Ty::F64,
            Ty::F32 | Ty::I64 | Ty::Bool => Ty::F32,
        };
        Em {
            k,
            a: Asm::default(),
            fty,
            vars: HashMap::new(),
            dims: Vec::new(),
            in_ptr: Vec::new(),
            out_ptr: String::new(),
            in_shape: Vec::new(),
            in_strides: Vec::new(),
            out_shape: Vec::new(),
            cache: Vec::new(),
            acc: None,
            preload: Vec::new(),
            lane: 0,
            shadowed: 0,
            memo: None,
            col_codes: Vec::new(),
            col_var: None,
            row_memo: Vec::new(),
            row_recips: Vec::new(),
            branch_selects: false,
            walk_inputs: false,
        }
    }

    pub fn kerr(&self, message: impl Into<String>) -> PtxError {
        PtxError::Kernel {
            kernel: self.k.name.clone(),
            message: message.into(),
        }
    }

    pub fn type_err(&self, e: &Expr, message: impl Into<String>) -> PtxError {
        PtxError::Type {
            kernel: self.k.name.clone(),
            expr: e.to_string(),
            message: message.into(),
        }
    }

    pub fn reg(&mut self, c: Class) -> String {
        self.a.reg(c)
    }

    /// Forgets the values shared along the current row or column
    /// ([`Em::row_memo`], [`Em::row_recips`]): the next element starts
    /// another.
    pub fn forget_row(&mut self) {
        self.row_memo.clear();
        self.row_recips.clear();
    }

    pub fn ins(&mut self, s: impl AsRef<str>) {
        self.a.ins(s)
    }

    /// A register holding `x` (an i64).
    pub fn iconst(&mut self, x: i64) -> String {
        let r = self.reg(Class::D);
        self.ins(format!("mov.b64 {r}, {x}"));
        r
    }

    /// A float constant in the kernel's float type.
    pub fn fconst(&mut self, x: f64) -> Val {
        self.fconst_as(self.fty, x)
    }

    pub fn fconst_as(&mut self, t: Ty, x: f64) -> Val {
        let r = self.reg(class_of(t));
        match t {
            Ty::F64 => self.ins(format!("mov.f64 {r}, {}", f64_imm(x))),
            Ty::F32 | Ty::I64 | Ty::Bool => self.ins(format!("mov.f32 {r}, {}", f32_imm(x))),
        }
        Val { r, t }
    }

    /// The operand for an axis size of a buffer.
    pub fn dim_operand(&self, d: &Dim) -> Result<String, PtxError> {
        match d {
            Dim::Static(n) => Ok(n.to_string()),
            Dim::Sym(s) => match self.k.dims.iter().position(|x| x == s) {
                Some(i) => Ok(self.dims[i].clone()),
                None => {
                    Err(self.kerr(format!("symbolic dim `{s}` is not among the kernel's dims")))
                }
            },
        }
    }

    /// `a * b` on i64 operands (immediates folded).
    pub fn mul_op(&mut self, a: &str, b: &str) -> String {
        match (imm(a), imm(b)) {
            (Some(x), Some(y)) => x.wrapping_mul(y).to_string(),
            (Some(1), None) => b.to_string(),
            (None, Some(1)) => a.to_string(),
            (Some(_), None) => {
                let r = self.reg(Class::D);
                self.ins(format!("mul.lo.s64 {r}, {b}, {a}"));
                r
            }
            (None, Some(_)) | (None, None) => {
                let r = self.reg(Class::D);
                self.ins(format!("mul.lo.s64 {r}, {a}, {b}"));
                r
            }
        }
    }

    /// Row-major strides of a shape given as operands.
    pub fn strides_of(&mut self, shape: &[String]) -> Vec<String> {
        let mut s = vec!["1".to_string(); shape.len()];
        for a in (0..shape.len().saturating_sub(1)).rev() {
            s[a] = self.mul_op(&s[a + 1], &shape[a + 1]);
        }
        s
    }

    /// The product of operands.
    pub fn product(&mut self, shape: &[String]) -> String {
        let mut p = "1".to_string();
        for d in shape {
            p = self.mul_op(&p, d);
        }
        p
    }

    /// A register (never an immediate) holding operand `s`.
    pub fn in_reg(&mut self, s: &str) -> String {
        if imm(s).is_some() {
            self.iconst(imm(s).unwrap_or(0))
        } else {
            s.to_string()
        }
    }

    /// Emits `e`; its value's register and type.
    pub fn emit(&mut self, e: &Expr) -> Result<Val, PtxError> {
        let leaf = matches!(
            e,
            Expr::Float(_) | Expr::Int(_) | Expr::Bool(_) | Expr::Var(_) | Expr::Dim(_) | Expr::Acc
        );
        let Some(memo) = self.memo.as_ref().filter(|_| !leaf) else {
            return self.emit_new(e);
        };
        if let Some((_, v)) = memo.iter().rev().find(|(x, _)| x == e) {
            return Ok(v.clone());
        }
        if let Some((_, v)) = self.row_memo.iter().rev().find(|(x, _)| x == e) {
            return Ok(v.clone());
        }
        let v = self.emit_new(e)?;
        // `Acc` differs per element: a value reading it is never shared.
        let shared = self.col_var.is_some_and(|c| !free_vars(e).contains(&c)) && !reads_acc(e);
        if shared {
            self.row_memo.push((e.clone(), v.clone()));
        } else if let Some(m) = self.memo.as_mut() {
            m.push((e.clone(), v.clone()));
        }
        Ok(v)
    }

    /// `n / (1 + exp(y))` in f32 for a 16-bit output: `exp` from one
    /// `ex2.approx` of `y log2 e` (relative error below 2^-17 where the
    /// result is finite and not zero) and the reciprocal from `rcp.approx`;
    /// `1 + exp(y)` cannot cancel, so the quotient keeps that error, far
    /// below a bf16 (2^-9) or f16 (2^-12) half-ulp. Four instructions and
    /// a product instead of about 25. `None` for other expressions or
    /// outputs.
    fn logistic(&mut self, n: &Expr, d: &Expr) -> Result<Option<Val>, PtxError> {
        if self.fty != Ty::F32 || !fast_logistic(self.k.output.dtype, d) {
            return Ok(None);
        }
        let Some(y) = logistic_arg(d) else {
            return Ok(None);
        };
        let num = match n {
            Expr::Float(v) if *v == 1.0 => None,
            _ => Some(self.emit(n)?),
        };
        let y = self.emit(y)?;
        if y.t != Ty::F32 || num.as_ref().is_some_and(|x| x.t != Ty::F32) {
            return Err(self.type_err(d, "a logistic of a non-float"));
        }
        let r = self.logistic_f32(&y.r);
        Ok(Some(match num {
            None => r,
            Some(x) => {
                let q = self.reg(Class::F);
                self.ins(format!("mul.f32 {q}, {}, {}", x.r, r.r));
                Val { r: q, t: Ty::F32 }
            }
        }))
    }

    /// `1 + erf(u)`, `erf(u) + 1` or `1 - erf(u)` in f32 with the erf
    /// accurate in absolute terms only (see `erf_f32`), and a product of
    /// one of them with `h` (either side; the exact GELU's
    /// `0.5 x (1 + erf(x / sqrt(2)))`) as `h ± h erf(u)`, one fma; `None`
    /// for other expressions.
    fn one_plus_erf(
        &mut self,
        e: &Expr,
        op: Binary,
        a: &Expr,
        b: &Expr,
    ) -> Result<Option<Val>, PtxError> {
        if self.fty != Ty::F32 {
            return Ok(None);
        }
        if op == Binary::Mul {
            let (h, sum) = match (one_plus_erf_parts(a), one_plus_erf_parts(b)) {
                (_, Some(p)) => (a, p),
                (Some(p), _) => (b, p),
                (None, None) => return Ok(None),
            };
            let (u, minus) = sum;
            if self.ty_of(h) != Ty::F32 || self.ty_of(u) != Ty::F32 {
                return Ok(None);
            }
            let hv = self.emit(h)?;
            let erf = self.erf_absolute(u)?;
            let m = if minus {
                let r = self.reg(Class::F);
                self.ins(format!("neg.f32 {r}, {}", hv.r));
                r
            } else {
                hv.r.clone()
            };
            let out = self.reg(Class::F);
            self.ins(format!("fma.rn.f32 {out}, {m}, {}, {}", erf.r, hv.r));
            return Ok(Some(Val { r: out, t: Ty::F32 }));
        }
        let Some((u, minus)) = one_plus_erf_parts(e) else {
            return Ok(None);
        };
        if self.ty_of(u) != Ty::F32 {
            return Ok(None);
        }
        let erf = self.erf_absolute(u)?;
        let onev = self.fconst_as(Ty::F32, 1.0);
        let (op, x, y) = match (minus, a) {
            (true, _) => (Binary::Sub, onev, erf),
            (false, Expr::Float(_)) => (Binary::Add, onev, erf),
            (false, _) => (Binary::Add, erf, onev),
        };
        self.binary(e, op, x, y).map(Some)
    }

    /// `erf(u)` in f32, accurate in absolute terms only (see `erf_f32`),
    /// for `1 ± erf(u)`: its argument `a / c` for a constant `c` is `a`
    /// times `1 / c` (one rounding more, below the erf's own error)
    /// rather than a correctly rounded quotient (the exact GELU's
    /// `erf(x / sqrt(2))`).
    fn erf_absolute(&mut self, u: &Expr) -> Result<Val, PtxError> {
        let by_recip = match u {
            Expr::Binary(Binary::Div, a, c) => match **c {
                Expr::Float(c) if (1.0 / c as f32).is_normal() => Some((a, 1.0 / c as f32)),
                _ => None,
            },
            _ => None,
        };
        let uv = match by_recip {
            Some((a, y)) => {
                let av = self.emit(a)?;
                let r = self.reg(Class::F);
                self.ins(format!("mul.f32 {r}, {}, {}", av.r, f32_imm(f64::from(y))));
                Val { r, t: Ty::F32 }
            }
            None => self.emit(u)?,
        };
        Ok(self.erf_f32(&uv.r, true))
    }

    /// `a / b` in f32 for a divisor `b` the same for every column of the
    /// row-resident path: `y = 1 / b` once per row (correctly rounded),
    /// then per column `q = a y` and one fma-exact correction
    /// `q + (a - q b) y`, the correctly rounded quotient (Markstein) while
    /// `2^-125 < |b| < 2^125`; other divisors give `q` itself: exact for a
    /// zero, infinite or NaN `b` (infinities and NaNs as division gives
    /// them), less accurate for subnormal and huge ones (a row's sum or
    /// norm out there is not met in practice). `None` off that path.
    fn div_by_row_value(&mut self, a: &Expr, b: &Expr) -> Result<Option<Val>, PtxError> {
        let Some(col) = self.col_var else {
            return Ok(None);
        };
        // A divisor that reads the accumulator differs per element.
        if self.fty != Ty::F32 || self.memo.is_none() || free_vars(b).contains(&col) || reads_acc(b)
        {
            return Ok(None);
        }
        if matches!(b, Expr::Float(_)) || self.ty_of(b) != Ty::F32 {
            return Ok(None);
        }
        let av = self.emit(a)?;
        let bv = self.emit(b)?;
        if av.t != Ty::F32 {
            return Ok(None);
        }
        // The reciprocal, and whether the fast path holds for this row
        // (2^-125 < |b| < 2^125), once per row and divisor.
        let (y, p) = match self.row_recips.iter().find(|(x, _, _)| x == b) {
            Some((_, y, p)) => (y.clone(), p.clone()),
            None => {
                let (y, ab) = (self.reg(Class::F), self.reg(Class::F));
                let (p1, p) = (self.reg(Class::P), self.reg(Class::P));
                self.ins(format!("div.rn.f32 {y}, 0f3F800000, {}", bv.r));
                self.ins(format!("abs.f32 {ab}, {}", bv.r));
                self.ins(format!("setp.gt.f32 {p1}, {ab}, 0f01000000"));
                self.ins(format!("setp.lt.and.f32 {p}, {ab}, 0f7E000000, {p1}"));
                self.row_recips.push((b.clone(), y.clone(), p.clone()));
                (y, p)
            }
        };
        let (q, nq, r, c, out) = (
            self.reg(Class::F),
            self.reg(Class::F),
            self.reg(Class::F),
            self.reg(Class::F),
            self.reg(Class::F),
        );
        self.ins(format!("mul.rn.f32 {q}, {}, {y}", av.r));
        self.ins(format!("neg.f32 {nq}, {q}"));
        self.ins(format!("fma.rn.f32 {r}, {nq}, {}, {}", bv.r, av.r));
        self.ins(format!("fma.rn.f32 {c}, {r}, {y}, {q}"));
        self.ins(format!("selp.f32 {out}, {c}, {q}, {p}"));
        Ok(Some(Val { r: out, t: Ty::F32 }))
    }

    /// [`Em::emit`] without the memo lookup.
    fn emit_new(&mut self, e: &Expr) -> Result<Val, PtxError> {
        match e {
            Expr::Float(x) => Ok(self.fconst(*x)),
            Expr::Int(i) => Ok(Val {
                r: self.iconst(*i),
                t: Ty::I64,
            }),
            Expr::Bool(b) => {
                let r = self.reg(Class::P);
                self.ins(format!("setp.ne.u32 {r}, {}, 0", u32::from(*b)));
                Ok(Val { r, t: Ty::Bool })
            }
            Expr::Var(v) => match self.vars.get(v) {
                Some(r) => Ok(Val {
                    r: r.clone(),
                    t: Ty::I64,
                }),
                None => Err(self.type_err(e, format!("variable {v} is not bound"))),
            },
            Expr::Dim(i) => match self.dims.get(*i as usize) {
                Some(r) => Ok(Val {
                    r: r.clone(),
                    t: Ty::I64,
                }),
                None => Err(self.type_err(e, format!("dim{i} is not declared"))),
            },
            Expr::Acc => match &self.acc {
                Some(v) => Ok(v.clone()),
                None => Err(self.type_err(e, "`acc` outside a contraction epilogue")),
            },
            Expr::Load {
                input,
                index,
                guard,
            } => self.load(e, *input, index, guard.as_deref()),
            Expr::Unary(op, x) => {
                let x = self.emit(x)?;
                self.unary(e, *op, x)
            }
            Expr::Binary(op, a, b) => {
                if let Some(v) = self.one_plus_erf(e, *op, a, b)? {
                    return Ok(v);
                }
                if *op == Binary::Div
                    && let Some(v) = self.logistic(a, b)?
                {
                    return Ok(v);
                }
                if *op == Binary::Div
                    && let Some(q) = self.div_by_row_value(a, b)?
                {
                    return Ok(q);
                }
                let a = self.emit(a)?;
                let b = self.emit(b)?;
                self.binary(e, *op, a, b)
            }
            Expr::Select(cond, a, b)
                if self.branch_selects && self.col_var.is_none() && worth_a_branch(cond, a, b) =>
            {
                let c = self.emit(cond)?;
                if c.t != Ty::Bool {
                    return Err(self.type_err(e, "select of mismatched types"));
                }
                self.select_branch(e, &c.r, a, b)
            }
            Expr::Select(c, a, b) => {
                let c = self.emit(c)?;
                let a = self.emit(a)?;
                let b = self.emit(b)?;
                if c.t != Ty::Bool || a.t != b.t {
                    return Err(self.type_err(e, "select of mismatched types"));
                }
                Ok(self.select(&c.r, a, b))
            }
            Expr::Cast(t, x) => {
                let x = self.emit(x)?;
                Ok(self.cast(*t, x))
            }
            Expr::Round(d, x) => {
                let x = self.emit(x)?;
                self.round(e, *d, x)
            }
            Expr::Reduce {
                op,
                var,
                extent,
                body,
            } => {
                if let Some((_, v)) = self.cache.iter().find(|(c, _)| c == e) {
                    return Ok(v.clone());
                }
                let memo = self.memo.take();
                let v = self.reduce_seq(e, *op, *var, extent, body);
                self.memo = memo;
                v
            }
        }
    }

    /// `c ? a : b` for two values of one type.
    /// `select(c, a, b)` as a branch: only the chosen side runs. Values
    /// either side computes stay inside it (the memo is restored after
    /// each side).
    fn select_branch(&mut self, e: &Expr, c: &str, a: &Expr, b: &Expr) -> Result<Val, PtxError> {
        let t = self.ty_of(a);
        let r = self.reg(class_of(t));
        let (other, done) = (self.a.label("sel_else"), self.a.label("sel_end"));
        let saved = self.memo.clone();
        self.ins(format!("@!{c} bra {other}"));
        let va = self.emit(a);
        self.memo = saved.clone();
        let va = va?;
        if va.t != t {
            return Err(self.type_err(e, "select of mismatched types"));
        }
        self.ins(format!("mov.{} {r}, {}", mov_sfx(t), va.r));
        self.ins(format!("bra {done}"));
        self.a.place(&other);
        let vb = self.emit(b);
        self.memo = saved;
        let vb = vb?;
        if vb.t != t {
            return Err(self.type_err(e, "select of mismatched types"));
        }
        self.ins(format!("mov.{} {r}, {}", mov_sfx(t), vb.r));
        self.a.place(&done);
        Ok(Val { r, t })
    }

    pub fn select(&mut self, c: &str, a: Val, b: Val) -> Val {
        let r = self.reg(class_of(a.t));
        match a.t {
            Ty::Bool => {
                let (t1, t2, n) = (self.reg(Class::P), self.reg(Class::P), self.reg(Class::P));
                self.ins(format!("and.pred {t1}, {c}, {}", a.r));
                self.ins(format!("not.pred {n}, {c}"));
                self.ins(format!("and.pred {t2}, {n}, {}", b.r));
                self.ins(format!("or.pred {r}, {t1}, {t2}"));
            }
            Ty::F32 | Ty::F64 | Ty::I64 => {
                let s = match a.t {
                    Ty::F32 => "f32",
                    Ty::F64 => "f64",
                    Ty::I64 | Ty::Bool => "b64",
                };
                self.ins(format!("selp.{s} {r}, {}, {}, {c}", a.r, b.r));
            }
        }
        Val { r, t: a.t }
    }

    /// A bool as 0 or 1 of type `t` (a number type).
    fn bool_to(&mut self, p: &str, t: Ty) -> Val {
        let r = self.reg(class_of(t));
        match t {
            Ty::F32 => self.ins(format!("selp.f32 {r}, 0f3F800000, 0f00000000, {p}")),
            Ty::F64 => self.ins(format!(
                "selp.f64 {r}, 0d3FF0000000000000, 0d0000000000000000, {p}"
            )),
            Ty::I64 | Ty::Bool => self.ins(format!("selp.b64 {r}, 1, 0, {p}")),
        }
        Val { r, t }
    }

    /// An i64 as a float of the kernel's type, rounded as `i as f64` and
    /// then to the float type.
    pub fn int_to_float(&mut self, r: &str) -> Val {
        let d = self.reg(Class::Fd);
        self.ins(format!("cvt.rn.f64.s64 {d}, {r}"));
        self.narrow(Val { r: d, t: Ty::F64 })
    }

    /// A float value rounded to the kernel's float type.
    pub fn narrow(&mut self, v: Val) -> Val {
        if v.t == Ty::F64 && self.fty == Ty::F32 {
            let r = self.reg(Class::F);
            self.ins(format!("cvt.rn.f32.f64 {r}, {}", v.r));
            Val { r, t: Ty::F32 }
        } else {
            v
        }
    }

    /// [`Expr::Cast`].
    pub fn cast(&mut self, t: Ty, x: Val) -> Val {
        let fty = self.fty;
        match (t, x.t) {
            (Ty::F32 | Ty::F64, Ty::F32 | Ty::F64) => self.narrow(x),
            (Ty::F32 | Ty::F64, Ty::I64) => self.int_to_float(&x.r),
            (Ty::F32 | Ty::F64, Ty::Bool) => self.bool_to(&x.r, fty),
            (Ty::I64, Ty::F32 | Ty::F64) => {
                let r = self.reg(Class::D);
                self.ins(format!("cvt.rzi.s64.{} {r}, {}", sfx(x.t), x.r));
                // NaN gives 0 (the GPU gives the most negative value).
                let nan = self.reg(Class::P);
                self.ins(format!("setp.nan.{0} {nan}, {1}, {1}", sfx(x.t), x.r));
                self.ins(format!("@{nan} mov.b64 {r}, 0"));
                Val { r, t: Ty::I64 }
            }
            (Ty::I64, Ty::I64) | (Ty::Bool, Ty::Bool) => x,
            (Ty::I64, Ty::Bool) => self.bool_to(&x.r, Ty::I64),
            (Ty::Bool, Ty::F32 | Ty::F64) => {
                let r = self.reg(Class::P);
                let z = if x.t == Ty::F32 {
                    "0f00000000"
                } else {
                    "0d0000000000000000"
                };
                self.ins(format!("setp.neu.{} {r}, {}, {z}", sfx(x.t), x.r));
                Val { r, t: Ty::Bool }
            }
            (Ty::Bool, Ty::I64) => {
                let r = self.reg(Class::P);
                self.ins(format!("setp.ne.s64 {r}, {}, 0", x.r));
                Val { r, t: Ty::Bool }
            }
        }
    }

    /// [`Expr::Round`]: a float rounded to `d`'s values (encode, then
    /// decode), or an integer wrapped to `d`'s width.
    fn round(&mut self, e: &Expr, d: DType, x: Val) -> Result<Val, PtxError> {
        match x.t {
            Ty::F32 | Ty::F64 => {
                if d == DType::F64 || (d == DType::F32 && x.t == Ty::F32) {
                    return Ok(x);
                }
                let code = self.encode(&x, d);
                let v = self.decode(d, &code);
                Ok(match v.t {
                    Ty::F32 | Ty::F64 => v,
                    Ty::I64 => self.int_to_float(&v.r),
                    Ty::Bool => {
                        let fty = self.fty;
                        self.bool_to(&v.r, fty)
                    }
                })
            }
            Ty::I64 => Ok(Val {
                r: self.wrap(&x.r, d),
                t: Ty::I64,
            }),
            Ty::Bool => Err(self.type_err(e, "round of a bool")),
        }
    }

    /// An i64 wrapped to the width of `d` (two's complement; bool: `!= 0`).
    pub fn wrap(&mut self, r: &str, d: DType) -> String {
        let bits = d.bits();
        let out = self.reg(Class::D);
        if d == DType::Bool {
            let p = self.reg(Class::P);
            self.ins(format!("setp.ne.s64 {p}, {r}, 0"));
            self.ins(format!("selp.b64 {out}, 1, 0, {p}"));
        } else if bits >= 64 {
            return r.to_string();
        } else {
            let signed = d.int_range().is_some_and(|(lo, _)| lo < 0);
            let sh = 64 - bits;
            let t = self.reg(Class::D);
            self.ins(format!("shl.b64 {t}, {r}, {sh}"));
            let s = if signed { "s64" } else { "u64" };
            self.ins(format!("shr.{s} {out}, {t}, {sh}"));
        }
        out
    }

    /// The type `e` computes to (without emitting anything).
    pub fn ty_of(&self, e: &Expr) -> Ty {
        match e {
            Expr::Float(_) => self.fty,
            Expr::Int(_) | Expr::Var(_) | Expr::Dim(_) => Ty::I64,
            Expr::Bool(_) => Ty::Bool,
            Expr::Acc => self.acc.as_ref().map_or(self.fty, |v| v.t),
            Expr::Load { input, .. } => {
                let d = self.k.inputs.get(*input).map_or(DType::F32, |b| b.dtype);
                self.load_ty(d)
            }
            Expr::Unary(op, x) => match op {
                Unary::Not => Ty::Bool,
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
                | Unary::Round => self.ty_of(x),
            },
            Expr::Binary(op, a, _) => match op {
                Binary::Eq
                | Binary::Ne
                | Binary::Lt
                | Binary::Le
                | Binary::Gt
                | Binary::Ge
                | Binary::And
                | Binary::Or => Ty::Bool,
                Binary::Add
                | Binary::Sub
                | Binary::Mul
                | Binary::Div
                | Binary::Rem
                | Binary::Pow
                | Binary::Max
                | Binary::Min => self.ty_of(a),
            },
            Expr::Select(_, a, _) => self.ty_of(a),
            Expr::Cast(t, _) => match t {
                Ty::F32 | Ty::F64 => self.fty,
                Ty::I64 | Ty::Bool => *t,
            },
            Expr::Round(_, x) => self.ty_of(x),
            Expr::Reduce { body, .. } => self.ty_of(body),
        }
    }

    /// The compute type a load of `d` gives.
    pub fn load_ty(&self, d: DType) -> Ty {
        if d == DType::Bool {
            Ty::Bool
        } else if d.has_integer_values() {
            Ty::I64
        } else {
            self.fty
        }
    }

    /// The identity of a reduction in type `t`.
    pub fn identity(&mut self, op: Reduction, t: Ty) -> Val {
        match t {
            Ty::F32 | Ty::F64 => {
                let x = match op {
                    Reduction::Sum => 0.0,
                    Reduction::Prod => 1.0,
                    Reduction::Max => f64::NEG_INFINITY,
                    Reduction::Min => f64::INFINITY,
                };
                self.fconst_as(t, x)
            }
            Ty::I64 | Ty::Bool => {
                let x = match op {
                    Reduction::Sum => 0,
                    Reduction::Prod => 1,
                    Reduction::Max => i64::MIN,
                    Reduction::Min => i64::MAX,
                };
                Val {
                    r: self.iconst(x),
                    t: Ty::I64,
                }
            }
        }
    }

    /// The binary operation that folds a reduction.
    pub fn fold_op(op: Reduction) -> Binary {
        match op {
            Reduction::Sum => Binary::Add,
            Reduction::Prod => Binary::Mul,
            Reduction::Max => Binary::Max,
            Reduction::Min => Binary::Min,
        }
    }

    /// Binds `var` to `reg`; returns the previous binding.
    pub fn bind(&mut self, var: Var, reg: String) -> Option<String> {
        self.vars.insert(var, reg)
    }

    pub fn unbind(&mut self, var: Var, prev: Option<String>) {
        match prev {
            Some(r) => {
                self.vars.insert(var, r);
            }
            None => {
                self.vars.remove(&var);
            }
        }
    }

    /// Whether `var` is one of the output's loop variables.
    pub fn is_out_var(&self, var: Var) -> bool {
        (var.0 as usize) < self.k.output.shape.rank()
    }

    /// A reduction folded by this thread alone, in order.
    fn reduce_seq(
        &mut self,
        e: &Expr,
        op: Reduction,
        var: Var,
        extent: &Expr,
        body: &Expr,
    ) -> Result<Val, PtxError> {
        let n = self.emit(extent)?;
        if n.t != Ty::I64 {
            return Err(self.type_err(e, "the extent is not an integer"));
        }
        let t = self.ty_of(body);
        if t == Ty::Bool {
            return Err(self.type_err(e, "a reduction of bools"));
        }
        let init = self.identity(op, t);
        let acc = Val {
            r: self.reg(class_of(t)),
            t,
        };
        self.ins(format!("mov.{} {}, {}", mov_sfx(t), acc.r, init.r));
        if let Expr::Int(n) = *extent
            && (0..=UNROLL_MAX).contains(&n)
            && (n as u64).saturating_mul(unrolled_size(body)) <= UNROLL_BUDGET
        {
            // A short constant loop (a convolution's taps) unrolled: its
            // index arithmetic folds and its loads are in flight together.
            let shadow = self.is_out_var(var);
            for c in 0..n {
                let i = self.reg(Class::D);
                self.ins(format!("mov.b64 {i}, {c}"));
                self.shadowed += u32::from(shadow);
                let prev = self.bind(var, i);
                // Each step's shared sub-expressions computed once (not in
                // a row kernel: its memo would keep them across columns).
                let memo = self.memo.take();
                if self.col_var.is_none() {
                    self.memo = Some(Vec::new());
                }
                let b = self.emit(body);
                self.memo = memo;
                self.unbind(var, prev);
                self.shadowed -= u32::from(shadow);
                let r = self.binary(e, Self::fold_op(op), acc.clone(), b?)?;
                self.ins(format!("mov.{} {}, {}", mov_sfx(t), acc.r, r.r));
            }
            return Ok(acc);
        }
        let i = self.reg(Class::D);
        self.ins(format!("mov.b64 {i}, 0"));
        let (top, done) = (self.a.label("red"), self.a.label("red_end"));
        let p = self.reg(Class::P);
        self.a.place(&top);
        self.ins(format!("setp.ge.s64 {p}, {i}, {}", n.r));
        self.ins(format!("@{p} bra {done}"));
        let shadow = self.is_out_var(var);
        self.shadowed += u32::from(shadow);
        let prev = self.bind(var, i.clone());
        let b = self.emit(body);
        self.unbind(var, prev);
        self.shadowed -= u32::from(shadow);
        let b = b?;
        let r = self.binary(e, Self::fold_op(op), acc.clone(), b)?;
        self.ins(format!("mov.{} {}, {}", mov_sfx(t), acc.r, r.r));
        self.ins(format!("add.s64 {i}, {i}, 1"));
        self.ins(format!("bra.uni {top}"));
        self.a.place(&done);
        Ok(acc)
    }

    /// A load of `input` at `index`, with its guard.
    fn load(
        &mut self,
        e: &Expr,
        input: usize,
        index: &[Expr],
        guard: Option<&Expr>,
    ) -> Result<Val, PtxError> {
        let Some(buf) = self.k.inputs.get(input) else {
            return Err(self.type_err(e, format!("no input {input}")));
        };
        let dtype = buf.dtype;
        if index.len() != buf.shape.rank() {
            return Err(self.type_err(e, "the index's rank is not the input's"));
        }
        if guard.is_none()
            && self.shadowed == 0
            && let Some((_, code)) = self.col_codes.iter().find(|(l, _)| l == e)
        {
            let code = code.clone();
            return Ok(self.decode(dtype, &code));
        }
        if guard.is_none()
            && self.shadowed == 0
            && let Some(p) = self.preload.iter().find(|p| p.load.as_ref() == Some(e))
        {
            let code = p.lanes[self.lane].clone();
            return Ok(self.decode(dtype, &code));
        }
        if guard.is_none() && self.shadowed == 0 && is_identity(index) {
            let lane = self.lane;
            if let Some(p) = self
                .preload
                .iter()
                .find(|p| p.input == input && p.load.is_none())
            {
                let code = p.lanes[lane].clone();
                return Ok(self.decode(dtype, &code));
            }
        }
        let Some(g) = guard else {
            return self.load_at(e, input, index);
        };
        let g = self.emit(g)?;
        if g.t != Ty::Bool {
            return Err(self.type_err(e, "the guard is not a bool"));
        }
        let t = self.load_ty(dtype);
        let out = Val {
            r: self.reg(class_of(t)),
            t,
        };
        match t {
            Ty::Bool => self.ins(format!("setp.ne.u32 {}, 0, 0", out.r)),
            Ty::I64 => self.ins(format!("mov.b64 {}, 0", out.r)),
            Ty::F32 | Ty::F64 => {
                let z = self.fconst_as(t, 0.0);
                self.ins(format!("mov.{} {}, {}", sfx(t), out.r, z.r));
            }
        }
        let skip = self.a.label("guard");
        self.ins(format!("@!{} bra {skip}", g.r));
        let memo = self.memo.take();
        let v = self.load_at(e, input, index);
        self.memo = memo;
        let v = v?;
        self.ins(format!("mov.{} {}, {}", mov_sfx(t), out.r, v.r));
        self.a.place(&skip);
        Ok(out)
    }

    fn load_at(&mut self, e: &Expr, input: usize, index: &[Expr]) -> Result<Val, PtxError> {
        let flat = self.flat_index(e, input, index)?;
        let dtype = self.k.inputs[input].dtype;
        let base = self.in_ptr[input].clone();
        let code = self.load_code(dtype, &base, &flat);
        Ok(self.decode(dtype, &code))
    }

    /// The row-major element offset of `index` in `input`, in a register.
    pub fn flat_index(
        &mut self,
        e: &Expr,
        input: usize,
        index: &[Expr],
    ) -> Result<String, PtxError> {
        let mut flat = "0".to_string();
        let mut a = 0;
        while a < index.len() {
            // `x / c` and `x % c` on adjacent axes whose strides differ by
            // `c` (a flattened axis read back as two) add up to `x` times
            // the inner stride: no division.
            let strides = &self.in_strides[input];
            let fused = index.get(a + 1).and_then(|next| {
                let (x, c) = div_rem_pair(&index[a], next)?;
                let (outer, inner) = (imm(&strides[a])?, imm(&strides[a + 1])?);
                (outer == c.checked_mul(inner)?).then(|| (x.clone(), strides[a + 1].clone()))
            });
            let (ie, stride) = match fused {
                Some((x, inner)) => {
                    a += 2;
                    (x, inner)
                }
                None => {
                    a += 1;
                    (index[a - 1].clone(), strides[a - 1].clone())
                }
            };
            let v = self.emit(&ie)?;
            if v.t != Ty::I64 {
                return Err(self.type_err(e, "an index is not an integer"));
            }
            let term = self.mul_op(&v.r, &stride);
            flat = if flat == "0" {
                term
            } else {
                let r = self.reg(Class::D);
                self.ins(format!("add.s64 {r}, {flat}, {term}"));
                r
            };
        }
        Ok(self.in_reg(&flat))
    }
}

/// Constant reductions of at most this many steps are unrolled
/// ([`Em::reduce_seq`]) ...
const UNROLL_MAX: i64 = 8;
/// ... when the unrolled body has at most this many nodes.
const UNROLL_BUDGET: u64 = 4096;

/// The nodes of `e` with its short constant reductions unrolled (see
/// [`UNROLL_MAX`]).
fn unrolled_size(e: &Expr) -> u64 {
    match e {
        Expr::Reduce { extent, body, .. } => {
            let steps = match extent.as_ref() {
                Expr::Int(n) if (0..=UNROLL_MAX).contains(n) => *n as u64,
                _ => 1,
            };
            1 + unrolled_size(extent) + steps.saturating_mul(unrolled_size(body))
        }
        _ => {
            let mut n = 1u64;
            e.for_each_child(|c| n = n.saturating_add(unrolled_size(c)));
            n
        }
    }
}

/// `(x, c)` when `a` is `x / c` and `b` is `x % c` for a nonzero constant
/// `c` (truncating division: `(x / c) * c + x % c == x` for every `x`).
fn div_rem_pair<'e>(a: &'e Expr, b: &'e Expr) -> Option<(&'e Expr, i64)> {
    match (a, b) {
        (Expr::Binary(Binary::Div, x, c), Expr::Binary(Binary::Rem, y, d)) if x == y && c == d => {
            match c.as_ref() {
                Expr::Int(c) if *c != 0 => Some((x.as_ref(), *c)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The `mov` suffix for a compute type.
pub(super) fn mov_sfx(t: Ty) -> &'static str {
    match t {
        Ty::F32 => "f32",
        Ty::F64 => "f64",
        Ty::I64 => "b64",
        Ty::Bool => "pred",
    }
}

/// Whether `select(c, a, b)` is better as a branch than as both sides
/// computed and one kept: when each side reads memory the condition does
/// not (a concatenation's two sources, a padded read), or one side reads
/// memory and computes much (a rotary embedding of a few rows). Sides that
/// only reuse the condition's loads (`x > 0 ? x : 0.1 x`) stay branch-free.
fn worth_a_branch(c: &Expr, a: &Expr, b: &Expr) -> bool {
    fn loads(e: &Expr, out: &mut Vec<Expr>) {
        if matches!(e, Expr::Load { .. }) {
            out.push(e.clone());
            return;
        }
        e.for_each_child(|x| loads(x, out));
    }
    fn size(e: &Expr) -> usize {
        let mut n = 1;
        e.for_each_child(|x| n += size(x));
        n
    }
    let mut seen = Vec::new();
    loads(c, &mut seen);
    let new_loads = |e: &Expr| {
        let mut ls = Vec::new();
        loads(e, &mut ls);
        ls.iter().filter(|l| !seen.contains(l)).count()
    };
    let (la, lb) = (new_loads(a), new_loads(b));
    (la > 0 && lb > 0) || (la + lb > 0 && size(a) + size(b) > 24)
}

/// Whether `index` is `[v0, v1, .., v(r-1)]`.
pub(super) fn is_identity(index: &[Expr]) -> bool {
    index
        .iter()
        .enumerate()
        .all(|(a, e)| matches!(e, Expr::Var(v) if v.0 as usize == a))
}

/// The variables `e` uses freely (bound by no reduction inside it).
pub(super) fn free_vars(e: &Expr) -> BTreeSet<Var> {
    let mut out = BTreeSet::new();
    match e {
        Expr::Var(v) => {
            out.insert(*v);
        }
        Expr::Reduce {
            var, extent, body, ..
        } => {
            out.extend(free_vars(extent));
            let mut b = free_vars(body);
            b.remove(var);
            out.extend(b);
            return out;
        }
        Expr::Float(_)
        | Expr::Int(_)
        | Expr::Bool(_)
        | Expr::Dim(_)
        | Expr::Acc
        | Expr::Load { .. }
        | Expr::Unary(..)
        | Expr::Binary(..)
        | Expr::Select(..)
        | Expr::Cast(..)
        | Expr::Round(..) => {}
    }
    e.for_each_child(|c| out.extend(free_vars(c)));
    out
}

/// Whether `e` reads the contraction accumulator.
pub(super) fn reads_acc(e: &Expr) -> bool {
    if matches!(e, Expr::Acc) {
        return true;
    }
    let mut any = false;
    e.for_each_child(|c| any |= reads_acc(c));
    any
}
