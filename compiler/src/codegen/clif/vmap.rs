//! Four-lane (`f32x4`) vectorization of f32 map kernels and reductions.
//!
//! A *lane variable* is vectorized: the innermost output axis of a map
//! kernel, or the variable of a reduction. Four consecutive values of it
//! are computed at once. An expression qualifies ([`vectorizable`]) when
//! every sub-expression that depends on the lane variable is
//!
//! * an unguarded load of a float-valued input whose last index is the
//!   lane variable plus a lane-invariant integer (`v`, `v + c`, `c + v`,
//!   `v - c`, nested) and whose other indices do not depend on it: a
//!   contiguous `f32x4` load for f32 storage, four decoded scalars for the
//!   other float storage types;
//! * `neg abs sqrt exp erf tanh` of a float, `add sub mul div max min` and
//!   comparisons of floats, `and or not` of comparisons, and `select`
//!   (a bitwise select on the comparison's lane mask).
//!
//! Sub-expressions that do not depend on the lane variable are emitted by
//! the scalar [`Emitter`] (hoisted by the loop nest, reductions included)
//! and splatted.
//!
//! In the lane of a map kernel (not in a reduction's own variable) two
//! more forms qualify:
//!
//! * a guarded load with the index rule above. When the guard is an `and`
//!   tree of lane-invariant bools and `lt le gt ge` comparisons between
//!   integers that are unit-affine in the lane or lane-invariant
//!   ([`monotone_guard`]), it holds for all four lanes when it holds for
//!   the first and the last: a runtime branch takes one `f32x4` load then,
//!   else four scalar guarded loads (each lane emitted with the lane bound
//!   to its value and a memo of its own) put together with `insertlane`.
//!   Any other guard always takes the four-scalar form;
//! * a `sum`, `max` or `min` whose body qualifies and whose extent does not
//!   depend on the lane: a scalar loop over its variable carrying an
//!   `f32x4` accumulator, the body emitted four lanes at a time with the
//!   variable bound to the loop's scalar (unrolled for a static extent up
//!   to [`MAX_UNROLL`]). Each lane combines in the scalar
//!   loop's order, so the result is the scalar path's, bit for bit.
//!
//! Anything else (gathered loads, integer or bool arithmetic on the lane
//! variable, casts, rounds, `pow`, `log`, `sin`, `cos`, `floor`, `ceil`,
//! `round`, `prod` reductions of the lane) keeps the scalar path.
//!
//! A vectorized map kernel runs its innermost axis four elements at a time
//! with `f32x4` stores (f32 outputs only), then the remaining elements with
//! the scalar code. A vectorized `sum`, `max` or `min` keeps two vector
//! accumulators (eight elements per iteration), then one more vector step,
//! combines the lanes and folds the rest with the scalar body. Sums are
//! therefore added in a different order than the scalar loop's; `max` and
//! `min` are exact (NaN-propagating, as the scalar path).

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{InstBuilder, StackSlotData, StackSlotKind, Value, types};
use kiln_dialect::kernel::{Binary, Body, Expr, Reduction, Unary, Var};
use kiln_dialect::{DType, Dim};

use super::CodegenError;
use super::expr::{Emitter, T, input_mem, load_type, mem};
use super::hoist::{ACC, children, free_vars};
use super::interior;
use super::loops::emit_nest;

/// The vector form of an expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VT {
    /// Does not depend on the lane variable: a scalar of this type.
    Inv(T),
    /// Four floats.
    F,
    /// A four-lane comparison mask.
    M,
}

/// An emitted value.
#[derive(Clone, Copy, Debug)]
enum VVal {
    Scalar(Value),
    F(Value),
    M(Value),
}

/// Whether `e` varies along the lane. The accumulator of a contraction's
/// epilogue (the only place it appears) varies along its last axis, the
/// lane of an epilogue.
fn depends(e: &Expr, lane: Var) -> bool {
    let free = free_vars(e);
    free.contains(&lane) || free.contains(&ACC)
}

/// Whether `e` is the lane variable plus a lane-invariant integer.
fn unit_affine(em: &Emitter, e: &Expr, lane: Var) -> bool {
    let inv_int = |x: &Expr| !depends(x, lane) && em.type_of(x).ok() == Some(T::I);
    match e {
        Expr::Var(v) => *v == lane,
        Expr::Binary(Binary::Add, a, b) => {
            (unit_affine(em, a, lane) && inv_int(b)) || (inv_int(a) && unit_affine(em, b, lane))
        }
        Expr::Binary(Binary::Sub, a, b) => unit_affine(em, a, lane) && inv_int(b),
        _ => false,
    }
}

/// Whether the guard `g` of a load holds for four consecutive lanes when it
/// holds for the first and the last: an `and` tree of lane-invariant
/// bools and comparisons (`lt le gt ge`) of integers that are unit-affine
/// in `lane` or lane-invariant (each comparison is monotone in the lane).
fn monotone_guard(em: &Emitter, g: &Expr, lane: Var) -> bool {
    if !depends(g, lane) {
        return em.type_of(g).ok() == Some(T::B);
    }
    let side = |x: &Expr| {
        unit_affine(em, x, lane) || (!depends(x, lane) && em.type_of(x).ok() == Some(T::I))
    };
    match g {
        Expr::Binary(op, a, b) => match op {
            Binary::And => monotone_guard(em, a, lane) && monotone_guard(em, b, lane),
            Binary::Lt | Binary::Le | Binary::Gt | Binary::Ge => side(a) && side(b),
            Binary::Add
            | Binary::Sub
            | Binary::Mul
            | Binary::Div
            | Binary::Rem
            | Binary::Max
            | Binary::Min
            | Binary::Pow
            | Binary::Eq
            | Binary::Ne
            | Binary::Or => false,
        },
        Expr::Float(_)
        | Expr::Int(_)
        | Expr::Bool(_)
        | Expr::Var(_)
        | Expr::Dim(_)
        | Expr::Acc
        | Expr::Load { .. }
        | Expr::Unary(..)
        | Expr::Select(..)
        | Expr::Cast(..)
        | Expr::Round(..)
        | Expr::Reduce { .. } => false,
    }
}

/// The vector form of `e` in `lane`, or `None` when it does not qualify.
/// With `ext` (the lane of a map kernel), guarded loads and reductions
/// whose body depends on the lane qualify too; reductions along their own
/// variable ([`Emitter::vreduce`]) and row buffers keep to the rest.
fn vtype(em: &Emitter, e: &Expr, lane: Var, ext: bool) -> Option<VT> {
    if !depends(e, lane) {
        return em.type_of(e).ok().map(VT::Inv);
    }
    let is_f = |t: VT| matches!(t, VT::F | VT::Inv(T::F));
    let is_m = |t: VT| matches!(t, VT::M | VT::Inv(T::B));
    match e {
        Expr::Load {
            input,
            index,
            guard,
        } => {
            let buf = em.k.inputs.get(*input)?;
            if guard
                .as_ref()
                .is_some_and(|g| !ext || em.type_of(g).ok() != Some(T::B))
                || load_type(buf.dtype) != T::F
                || index.len() != em.shapes[*input].len()
            {
                return None;
            }
            let (last, rest) = index.split_last()?;
            if rest.iter().any(|i| depends(i, lane)) || !unit_affine(em, last, lane) {
                return None;
            }
            Some(VT::F)
        }
        Expr::Unary(op, x) => {
            let t = vtype(em, x, lane, ext)?;
            match op {
                Unary::Neg | Unary::Abs | Unary::Sqrt | Unary::Exp | Unary::Erf | Unary::Tanh => {
                    (t == VT::F).then_some(VT::F)
                }
                Unary::Not => (t == VT::M).then_some(VT::M),
                Unary::Log
                | Unary::Sin
                | Unary::Cos
                | Unary::Floor
                | Unary::Ceil
                | Unary::Round => None,
            }
        }
        Expr::Binary(op, a, b) => {
            let (ta, tb) = (vtype(em, a, lane, ext)?, vtype(em, b, lane, ext)?);
            match op {
                Binary::Add
                | Binary::Sub
                | Binary::Mul
                | Binary::Div
                | Binary::Max
                | Binary::Min => (is_f(ta) && is_f(tb)).then_some(VT::F),
                Binary::Eq | Binary::Ne | Binary::Lt | Binary::Le | Binary::Gt | Binary::Ge => {
                    (is_f(ta) && is_f(tb)).then_some(VT::M)
                }
                Binary::And | Binary::Or => (is_m(ta) && is_m(tb)).then_some(VT::M),
                Binary::Rem | Binary::Pow => None,
            }
        }
        Expr::Select(c, a, b) => {
            let (tc, ta, tb) = (
                vtype(em, c, lane, ext)?,
                vtype(em, a, lane, ext)?,
                vtype(em, b, lane, ext)?,
            );
            (is_m(tc) && is_f(ta) && is_f(tb)).then_some(VT::F)
        }
        Expr::Reduce {
            op,
            var,
            extent,
            body,
        } => {
            let ok = ext
                && matches!(op, Reduction::Sum | Reduction::Max | Reduction::Min)
                && *var != lane
                && !depends(extent, lane)
                && em.type_of(extent).ok() == Some(T::I)
                && vtype(em, body, lane, ext)? == VT::F;
            ok.then_some(VT::F)
        }
        // The accumulator of an f32 contraction: four lanes of its tile.
        Expr::Acc => matches!(em.k.body, Body::Contract { .. }).then_some(VT::F),
        Expr::Float(_)
        | Expr::Int(_)
        | Expr::Bool(_)
        | Expr::Var(_)
        | Expr::Dim(_)
        | Expr::Cast(..)
        | Expr::Round(..) => None,
    }
}

/// Whether a contraction's epilogue can run four columns at a time (f32
/// kernels and outputs): the tiles then store whole vectors.
pub(super) fn epilogue_vectorizable(em: &Emitter, epilogue: &Expr, lane: Var) -> bool {
    em.fty == types::F32
        && em.k.output.dtype == DType::F32
        && vtype(em, epilogue, lane, false) == Some(VT::F)
}

/// Whether `e` is a float expression that depends on `lane` and can be
/// computed four lanes at a time (f32 kernels only).
pub(super) fn vectorizable(em: &Emitter, e: &Expr, lane: Var) -> bool {
    em.fty == types::F32 && vtype(em, e, lane, false) == Some(VT::F)
}

impl Emitter<'_, '_> {
    fn vec_f(&mut self, v: VVal) -> Value {
        match v {
            VVal::F(x) => x,
            VVal::Scalar(x) => self.b.ins().splat(types::F32X4, x),
            VVal::M(m) => m,
        }
    }

    fn vec_m(&mut self, v: VVal) -> Value {
        match v {
            VVal::M(m) => m,
            VVal::Scalar(x) => {
                let w = self.b.ins().uextend(types::I32, x);
                let w = self.b.ins().ineg(w);
                self.b.ins().splat(types::I32X4, w)
            }
            VVal::F(x) => x,
        }
    }

    /// Emits `e` with `lane` bound to the first of four consecutive values.
    fn vemit(
        &mut self,
        e: &Expr,
        lane: Var,
        memo: &mut HashMap<String, VVal>,
    ) -> Result<VVal, CodegenError> {
        if !depends(e, lane) {
            if !self.vsplat.is_empty()
                && let Some(&slot) = self.vsplat.get(&e.to_string())
            {
                let ptr = self.b.func.dfg.value_type(self.bases[0]);
                let v = self.b.ins().stack_load(ptr, types::F32X4, slot, 0);
                return Ok(VVal::F(v));
            }
            let (v, _) = self.emit(e)?;
            return Ok(VVal::Scalar(v));
        }
        let key = e.to_string();
        if let Some(&v) = memo.get(&key) {
            return Ok(v);
        }
        if self.fma
            && let Expr::Binary(Binary::Add, acc, prod) = e
            && let Expr::Binary(Binary::Mul, x, y) = &**prod
            && self.fused.contains(&key)
        {
            let acc = self.vemit(acc, lane, memo)?;
            let x = self.vemit(x, lane, memo)?;
            let y = self.vemit(y, lane, memo)?;
            let (acc, x, y) = (self.vec_f(acc), self.vec_f(x), self.vec_f(y));
            let v = VVal::F(self.b.ins().fma(x, y, acc));
            memo.insert(key, v);
            return Ok(v);
        }
        if let Some(&(var, addr)) = self.scratch.get(&key)
            && var == lane
        {
            let off = self.b.ins().ishl_imm_s(self.vars[&lane], 2);
            let a = self.b.ins().iadd(addr, off);
            let v = VVal::F(self.b.ins().load(types::F32X4, mem(), a, 0));
            memo.insert(key, v);
            return Ok(v);
        }
        let v = match e {
            Expr::Load {
                input,
                index,
                guard: None,
            } => VVal::F(self.vload(e, *input, index)?),
            Expr::Load {
                input,
                index,
                guard: Some(g),
            } => VVal::F(self.vload_guarded(e, *input, index, g, lane)?),
            Expr::Unary(op, x) => {
                let x = self.vemit(x, lane, memo)?;
                match op {
                    Unary::Not => {
                        let m = self.vec_m(x);
                        VVal::M(self.b.ins().bnot(m))
                    }
                    Unary::Neg
                    | Unary::Abs
                    | Unary::Sqrt
                    | Unary::Exp
                    | Unary::Erf
                    | Unary::Tanh
                    | Unary::Log
                    | Unary::Sin
                    | Unary::Cos
                    | Unary::Floor
                    | Unary::Ceil
                    | Unary::Round => {
                        let x = self.vec_f(x);
                        VVal::F(match op {
                            Unary::Neg => self.b.ins().fneg(x),
                            Unary::Abs => self.b.ins().fabs(x),
                            Unary::Sqrt => self.b.ins().sqrt(x),
                            Unary::Exp => self.exp_f32(x),
                            Unary::Erf => self.erf_f32(x),
                            Unary::Tanh => self.tanh_f32(x),
                            Unary::Not
                            | Unary::Log
                            | Unary::Sin
                            | Unary::Cos
                            | Unary::Floor
                            | Unary::Ceil
                            | Unary::Round => {
                                return Err(self.unsupported(e, "not vectorized"));
                            }
                        })
                    }
                }
            }
            Expr::Binary(op, a, b) => {
                let a = self.vemit(a, lane, memo)?;
                let b = self.vemit(b, lane, memo)?;
                match op {
                    Binary::And | Binary::Or => {
                        let (a, b) = (self.vec_m(a), self.vec_m(b));
                        VVal::M(if *op == Binary::And {
                            self.b.ins().band(a, b)
                        } else {
                            self.b.ins().bor(a, b)
                        })
                    }
                    Binary::Add
                    | Binary::Sub
                    | Binary::Mul
                    | Binary::Div
                    | Binary::Max
                    | Binary::Min
                    | Binary::Eq
                    | Binary::Ne
                    | Binary::Lt
                    | Binary::Le
                    | Binary::Gt
                    | Binary::Ge
                    | Binary::Rem
                    | Binary::Pow => {
                        let (a, b) = (self.vec_f(a), self.vec_f(b));
                        let cmp = |s: &mut Self, cc| VVal::M(s.b.ins().fcmp(cc, a, b));
                        match op {
                            Binary::Add => VVal::F(self.b.ins().fadd(a, b)),
                            Binary::Sub => VVal::F(self.b.ins().fsub(a, b)),
                            Binary::Mul => VVal::F(self.b.ins().fmul(a, b)),
                            Binary::Div => VVal::F(self.b.ins().fdiv(a, b)),
                            Binary::Max => VVal::F(self.b.ins().fmax(a, b)),
                            Binary::Min => VVal::F(self.b.ins().fmin(a, b)),
                            Binary::Eq => cmp(self, FloatCC::Equal),
                            Binary::Ne => cmp(self, FloatCC::NotEqual),
                            Binary::Lt => cmp(self, FloatCC::LessThan),
                            Binary::Le => cmp(self, FloatCC::LessThanOrEqual),
                            Binary::Gt => cmp(self, FloatCC::GreaterThan),
                            Binary::Ge => cmp(self, FloatCC::GreaterThanOrEqual),
                            Binary::And | Binary::Or | Binary::Rem | Binary::Pow => {
                                return Err(self.unsupported(e, "not vectorized"));
                            }
                        }
                    }
                }
            }
            Expr::Select(c, a, b) => {
                let c = self.vemit(c, lane, memo)?;
                let a = self.vemit(a, lane, memo)?;
                let b = self.vemit(b, lane, memo)?;
                let (c, a, b) = (self.vec_m(c), self.vec_f(a), self.vec_f(b));
                VVal::F(self.fsel(c, a, b))
            }
            Expr::Acc => match self.vacc {
                Some(v) => VVal::F(v),
                None => return Err(self.unsupported(e, "no vector accumulator here")),
            },
            Expr::Float(_)
            | Expr::Int(_)
            | Expr::Bool(_)
            | Expr::Var(_)
            | Expr::Dim(_)
            | Expr::Cast(..)
            | Expr::Round(..) => return Err(self.unsupported(e, "not vectorized")),
            Expr::Reduce {
                op,
                var,
                extent,
                body,
            } => VVal::F(self.vreduce_lanes(e, *op, *var, extent, body, lane)?),
        };
        memo.insert(key, v);
        Ok(v)
    }

    /// Four consecutive elements of `input` from `index` (lane 0's).
    fn vload(&mut self, e: &Expr, input: usize, index: &[Expr]) -> Result<Value, CodegenError> {
        let dtype = self.k.inputs[input].dtype;
        let base = self.bases[input];
        if dtype == DType::F32 {
            // The constant parts of the indices on axes of static stride
            // go into the load's immediate offset: a window's taps then
            // share one address (`x[y + 1, x - 1]` and `x[y, x]` differ
            // only in the offset), not an address computation each.
            let (peeled, bytes) = peel_offsets(&self.k.inputs[input].shape.0, index);
            let flat = self.flat_index(e, input, &peeled)?;
            let off = self.b.ins().ishl_imm_s(flat, 2);
            let a = self.b.ins().iadd(base, off);
            return Ok(self.b.ins().load(types::F32X4, input_mem(), a, bytes));
        }
        let flat = self.flat_index(e, input, index)?;
        let mut v = None;
        for j in 0..4u8 {
            let f = self.b.ins().iadd_imm_s(flat, i64::from(j));
            let x = self.decode(dtype, base, f);
            v = Some(match v {
                None => self.b.ins().scalar_to_vector(types::F32X4, x),
                Some(v) => self.b.ins().insertlane(v, x, j),
            });
        }
        Ok(v.expect("four lanes"))
    }

    /// Runs `f` with `lane` bound to its value plus `j` and a memo of its
    /// own: nothing emitted for one lane is reused for another, or after.
    fn at_lane<R>(&mut self, lane: Var, j: i64, f: impl FnOnce(&mut Self) -> R) -> R {
        let base = self.vars[&lane];
        let i = self.b.ins().iadd_imm_s(base, j);
        let saved = self.take_memo();
        self.vars.insert(lane, i);
        let r = f(self);
        self.vars.insert(lane, base);
        self.restore_memo(saved);
        r
    }

    /// A guarded load four lanes at a time. With a guard that is monotone
    /// in the lane ([`monotone_guard`]): where it holds at the first and the
    /// last lane, one vector load; else, and for any other guard, each lane
    /// as the scalar code loads it (0 where the guard fails).
    fn vload_guarded(
        &mut self,
        e: &Expr,
        input: usize,
        index: &[Expr],
        g: &Expr,
        lane: Var,
    ) -> Result<Value, CodegenError> {
        if !monotone_guard(self, g, lane) {
            return self.vload_lanes(e, lane);
        }
        let g0 = self.at_lane(lane, 0, |s| s.emit(g))?.0;
        let g3 = self.at_lane(lane, 3, |s| s.emit(g))?.0;
        let both = self.b.ins().band(g0, g3);
        let fast = self.b.create_block();
        let slow = self.b.create_block();
        let merge = self.b.create_block();
        self.b.append_block_param(merge, types::F32X4);
        self.b.ins().brif(both, fast, &[], slow, &[]);
        self.b.switch_to_block(fast);
        self.push_scope();
        let v = self.vload(e, input, index);
        self.pop_scope();
        let v = v?;
        self.b.ins().jump(merge, &super::expr::args(&[v]));
        self.b.switch_to_block(slow);
        self.push_scope();
        let v = self.vload_lanes(e, lane);
        self.pop_scope();
        let v = v?;
        self.b.ins().jump(merge, &super::expr::args(&[v]));
        self.b.switch_to_block(merge);
        Ok(self.b.block_params(merge)[0])
    }

    /// The scalar load `e` (guard included) at each of the four lanes.
    fn vload_lanes(&mut self, e: &Expr, lane: Var) -> Result<Value, CodegenError> {
        let mut v = None;
        for j in 0..4u8 {
            let (x, t) = self.at_lane(lane, i64::from(j), |s| s.emit(e))?;
            if t != T::F {
                return Err(self.type_err(e, "not a float load"));
            }
            v = Some(match v {
                None => self.b.ins().scalar_to_vector(types::F32X4, x),
                Some(v) => self.b.ins().insertlane(v, x, j),
            });
        }
        Ok(v.expect("four lanes"))
    }

    /// A reduction whose body depends on `lane`: a scalar loop over its
    /// variable carrying a vector accumulator, the body four lanes at a
    /// time; each lane adds in the scalar loop's order.
    fn vreduce_lanes(
        &mut self,
        e: &Expr,
        op: Reduction,
        var: Var,
        extent: &Expr,
        body: &Expr,
        lane: Var,
    ) -> Result<Value, CodegenError> {
        if self.vars.contains_key(&var) {
            return Err(self.unsupported(e, format!("reduction variable {var} is already bound")));
        }
        let (n, nt) = self.emit(extent)?;
        if nt != T::I {
            return Err(self.type_err(e, "the extent is not an integer"));
        }
        let init = match op {
            Reduction::Sum => self.fconst(0.0),
            Reduction::Prod => self.fconst(1.0),
            Reduction::Max => self.fconst(f64::NEG_INFINITY),
            Reduction::Min => self.fconst(f64::INFINITY),
        };
        let initv = self.b.ins().splat(types::F32X4, init);
        let mut bound = self.bound();
        bound.remove(&var);
        bound.remove(&lane);
        self.hoist(body, &bound)?;
        if let Expr::Int(m) = extent
            && (0..=MAX_UNROLL).contains(m)
        {
            // Unrolled: the same order, no loop.
            let mut acc = initv;
            for j in 0..*m {
                let i = self.iconst(j);
                self.push_scope();
                self.vars.insert(var, i);
                let v = self.vemit(body, lane, &mut HashMap::new());
                self.vars.remove(&var);
                self.pop_scope();
                let v = self.vec_f(v?);
                acc = self.combine(op, acc, v);
            }
            return Ok(acc);
        }
        let zero = self.iconst(0);
        let (_, acc) = self.for_loop(zero, n, 1, &[initv], |s, i, acc| {
            s.vars.insert(var, i);
            let v = s.vemit(body, lane, &mut HashMap::new());
            s.vars.remove(&var);
            let v = v?;
            let v = s.vec_f(v);
            Ok(vec![s.combine(op, acc[0], v)])
        })?;
        Ok(acc[0])
    }

    /// `e` four lanes at a time with `lane = i`, in fresh memo scopes.
    pub(super) fn vemit_at(
        &mut self,
        e: &Expr,
        lane: Var,
        i: Value,
    ) -> Result<Value, CodegenError> {
        self.push_scope();
        self.vars.insert(lane, i);
        let v = self.vemit(e, lane, &mut HashMap::new());
        self.vars.remove(&lane);
        self.pop_scope();
        let v = v?;
        Ok(self.vec_f(v))
    }

    fn combine(&mut self, op: Reduction, a: Value, b: Value) -> Value {
        match op {
            Reduction::Sum => self.b.ins().fadd(a, b),
            Reduction::Prod => self.b.ins().fmul(a, b),
            Reduction::Max => self.b.ins().fmax(a, b),
            Reduction::Min => self.b.ins().fmin(a, b),
        }
    }

    /// The vector part of a float reduction of `body` over `var` in
    /// `0 .. n` from `init`: returns the first index it did not fold and
    /// the partial result (a scalar); the caller folds the rest.
    pub(super) fn vreduce(
        &mut self,
        op: Reduction,
        var: Var,
        n: Value,
        body: &Expr,
        init: Value,
    ) -> Result<(Value, Value), CodegenError> {
        let initv = self.b.ins().splat(types::F32X4, init);
        let zero = self.iconst(0);
        let (i, accs) = self.for_loop(zero, n, 8, &[initv, initv], |s, i, acc| {
            let a = s.vemit_at(body, var, i)?;
            let i4 = s.b.ins().iadd_imm_s(i, 4);
            let b = s.vemit_at(body, var, i4)?;
            let a = s.combine(op, acc[0], a);
            let b = s.combine(op, acc[1], b);
            Ok(vec![a, b])
        })?;
        let acc = self.combine(op, accs[0], accs[1]);
        let (i, acc) = self.for_loop(i, n, 4, &[acc], |s, i, acc| {
            let a = s.vemit_at(body, var, i)?;
            Ok(vec![s.combine(op, acc[0], a)])
        })?;
        let l: Vec<Value> = (0..4u8)
            .map(|j| self.b.ins().extractlane(acc[0], j))
            .collect();
        let lo = self.combine(op, l[0], l[1]);
        let hi = self.combine(op, l[2], l[3]);
        Ok((i, self.combine(op, lo, hi)))
    }
}

/// The largest static extent of a lane-dependent reduction that is
/// unrolled ([`Emitter::vreduce_lanes`]).
const MAX_UNROLL: i64 = 4;

/// The longest row kept in a stack buffer (elements).
const MAX_ROW_BUFFER: u64 = 16384;

/// Whether `e` computes `exp`, `erf` or `tanh`: worth a row buffer.
fn heavy(e: &Expr) -> bool {
    let mut h = matches!(e, Expr::Unary(Unary::Exp | Unary::Erf | Unary::Tanh, _));
    e.for_each_child(|c| h = h || heavy(c));
    h
}

/// `e` with the free occurrences of `from` replaced by `to`; `None` where
/// a reduction inside binds `to` (it would capture them).
fn rename(e: &Expr, from: Var, to: Var) -> Option<Expr> {
    let r = |x: &Expr| rename(x, from, to).map(Box::new);
    Some(match e {
        Expr::Var(v) if *v == from => Expr::Var(to),
        Expr::Float(_) | Expr::Int(_) | Expr::Bool(_) | Expr::Var(_) | Expr::Dim(_) | Expr::Acc => {
            e.clone()
        }
        Expr::Load {
            input,
            index,
            guard,
        } => Expr::Load {
            input: *input,
            index: index
                .iter()
                .map(|i| rename(i, from, to))
                .collect::<Option<_>>()?,
            guard: match guard {
                Some(g) => Some(r(g)?),
                None => None,
            },
        },
        Expr::Unary(op, x) => Expr::Unary(*op, r(x)?),
        Expr::Binary(op, a, b) => Expr::Binary(*op, r(a)?, r(b)?),
        Expr::Select(c, a, b) => Expr::Select(r(c)?, r(a)?, r(b)?),
        Expr::Cast(t, x) => Expr::Cast(*t, r(x)?),
        Expr::Round(d, x) => Expr::Round(*d, r(x)?),
        Expr::Reduce {
            op,
            var,
            extent,
            body,
        } => {
            let inner = if *var == from || !depends(body, from) {
                body.clone()
            } else if *var == to {
                return None;
            } else {
                r(body)?
            };
            Expr::Reduce {
                op: *op,
                var: *var,
                extent: r(extent)?,
                body: inner,
            }
        }
    })
}

/// The heavy sub-expressions of `e` that depend on `lane` and are
/// vectorizable in it, written in `to` instead: their keys and forms.
fn candidates(em: &Emitter, e: &Expr, lane: Var, to: Var, out: &mut HashMap<String, Expr>) {
    if !depends(e, lane) {
        return;
    }
    if heavy(e)
        && vtype(em, e, lane, false) == Some(VT::F)
        && let Some(r) = rename(e, lane, to)
    {
        out.insert(r.to_string(), r);
    }
    if !matches!(e, Expr::Reduce { .. }) {
        e.for_each_child(|c| candidates(em, c, lane, to, out));
    }
}

/// Every reduction in `e`, nested ones included.
fn reductions<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    if matches!(e, Expr::Reduce { .. }) {
        out.push(e);
    }
    for c in children(e) {
        reductions(c, out);
    }
}

/// A row buffer for a map kernel of rank >= 2 whose static innermost
/// extent `n` is at most [`MAX_ROW_BUFFER`]: the heavy sub-expression `s`
/// (written in the innermost variable) that appears in the most (two or
/// more) of the element expression and the bodies of its vectorizable row
/// reductions (over `n` elements, variable renamed), the largest of those.
/// Returns `s`, `n` and the variables `s` appears under.
fn row_buffer_plan(em: &Emitter, expr: &Expr) -> Option<(Expr, u64, Vec<Var>)> {
    let rank = em.k.output.shape.rank();
    if rank < 2 {
        return None;
    }
    let Dim::Static(n) = em.k.output.shape.0[rank - 1] else {
        return None;
    };
    if n == 0 || n > MAX_ROW_BUFFER {
        return None;
    }
    let lane = Var(rank as u32 - 1);
    let mut reds = Vec::new();
    reductions(expr, &mut reds);
    // Variables every reduction binding them runs over the whole row.
    let mut vars: Vec<Var> = Vec::new();
    let mut bad: Vec<Var> = vec![lane];
    for r in &reds {
        let Expr::Reduce {
            op, var, extent, ..
        } = r
        else {
            continue;
        };
        let whole = matches!(**extent, Expr::Int(m) if m == n as i64)
            && matches!(op, Reduction::Sum | Reduction::Max | Reduction::Min)
            && !depends(r, lane)
            && var.0 >= rank as u32;
        if whole {
            vars.push(*var);
        } else {
            bad.push(*var);
        }
    }
    vars.retain(|v| !bad.contains(v));
    vars.sort();
    vars.dedup();
    let mut contexts = Vec::new();
    let mut c = HashMap::new();
    candidates(em, expr, lane, lane, &mut c);
    contexts.push(c);
    for r in &reds {
        if let Expr::Reduce { var, body, .. } = r
            && vars.contains(var)
            && vectorizable(em, body, *var)
        {
            let mut c = HashMap::new();
            candidates(em, body, *var, lane, &mut c);
            contexts.push(c);
        }
    }
    let outer = Emitter::out_vars(rank);
    // The most shared, then the largest.
    let mut best: Option<((usize, usize), &Expr)> = None;
    for (key, s) in contexts.iter().flat_map(|c| c.iter()) {
        let score = (
            contexts.iter().filter(|c| c.contains_key(key)).count(),
            key.len(),
        );
        if score.0 >= 2
            && free_vars(s).is_subset(&outer)
            && vectorizable(em, s, lane)
            && best.is_none_or(|(b, _)| b < score)
        {
            best = Some((score, s));
        }
    }
    let s = best?.1.clone();
    vars.insert(0, lane);
    Some((s, n, vars))
}

impl Emitter<'_, '_> {
    /// Fills a stack buffer of `n` f32 with `s` at `lane = 0 .. n` (four
    /// lanes at a time, the rest scalar); returns its address.
    fn fill_row(&mut self, s: &Expr, lane: Var, n: u64) -> Result<Value, CodegenError> {
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (4 * n) as u32,
            4,
        ));
        let ptr = self.b.func.dfg.value_type(self.bases[0]);
        let addr = self.b.ins().stack_addr(ptr, slot, 0);
        self.hoist(s, &Emitter::out_vars(lane.0 as usize))?;
        let zero = self.iconst(0);
        let hi = self.iconst(n as i64);
        let (i, _) = self.for_loop(zero, hi, 4, &[], |em, i, _| {
            let v = em.vemit_at(s, lane, i)?;
            let off = em.b.ins().ishl_imm_s(i, 2);
            let a = em.b.ins().iadd(addr, off);
            em.b.ins().store(mem(), v, a, 0);
            Ok(vec![])
        })?;
        self.for_loop(i, hi, 1, &[], |em, j, _| {
            em.vars.insert(lane, j);
            let v = em.emit(s);
            em.vars.remove(&lane);
            let (v, _) = v?;
            let off = em.b.ins().ishl_imm_s(j, 2);
            let a = em.b.ins().iadd(addr, off);
            em.b.ins().store(mem(), v, a, 0);
            Ok(vec![])
        })?;
        Ok(addr)
    }
}

/// The loop nest of a vectorizable f32 map kernel with an f32 output: the
/// scalar nest over the outer axes, then the innermost axis four elements
/// at a time and its remainder with the scalar code. Small lane-dependent
/// reductions are unrolled first ([`interior::unroll`]). With a row buffer
/// ([`row_buffer_plan`]), each row first fills it, then computes its
/// statistics and elements reading it. Otherwise, when guards of vector
/// loads are analyzable ([`interior::interior`]), each row computes the
/// lane interval where they all hold and runs the vectors inside it
/// without them. Lane-invariant float operands are splatted once per row.
pub(super) fn emit_map(em: &mut Emitter, expr: &Expr) -> Result<(), CodegenError> {
    let rank = em.k.output.shape.rank();
    let lane = Var(rank as u32 - 1);
    let out = em.k.inputs.len();
    let (unrolled, fused) = interior::unroll(expr, lane);
    let expr = &unrolled;
    em.fused = fused;
    let plan = row_buffer_plan(em, expr);
    let outer = Emitter::out_vars(rank - 1);
    let inner = match plan {
        Some(_) => None,
        None => interior::interior(em, expr, lane, &outer, &|x| unit_affine(em, x, lane)),
    };
    if let Some(i) = &inner {
        let mut fused = std::mem::take(&mut em.fused);
        interior::fused_keys(expr, &i.fast, &mut fused);
        em.fused = fused;
    }
    let hoists: Vec<&Expr> = match (&plan, &inner) {
        (Some(_), _) => vec![],
        (None, Some(i)) => vec![expr, &i.fast],
        (None, None) => vec![expr],
    };
    emit_nest(em, &hoists, rank - 1, &mut |em| {
        if let Some((s, n, vars)) = &plan {
            let addr = em.fill_row(s, lane, *n)?;
            for &v in vars {
                if let Some(r) = rename(s, lane, v) {
                    em.scratch.insert(r.to_string(), (v, addr));
                }
            }
            em.hoist(expr, &Emitter::out_vars(rank - 1))?;
        }
        let (lo, hi) = if rank == 1 {
            em.range0
        } else {
            let zero = em.iconst(0);
            (zero, em.shapes[out][rank - 1])
        };
        let mut cands = Vec::new();
        interior::splat_candidates(em, expr, lane, &outer, &mut cands);
        if let Some(i) = &inner {
            interior::splat_candidates(em, &i.fast, lane, &outer, &mut cands);
        }
        for c in cands {
            let key = c.to_string();
            if !em.vsplat.contains_key(&key) {
                let (v, _) = em.emit(c)?;
                let v = em.b.ins().splat(types::F32X4, v);
                // Read back from a slot at each use: a splat value used
                // inside the loops was broadcast again at every use by
                // Cranelift's optimizer (from a spilled scalar), where a
                // load from the stack can be an operand of the use.
                let slot = em.b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    16,
                    4,
                ));
                let ptr = em.b.func.dfg.value_type(em.bases[0]);
                em.b.ins().stack_store(ptr, v, slot, 0);
                em.vsplat.insert(key, slot);
            }
        }
        let i = match &inner {
            None => vector_loop(em, expr, lane, lo, hi)?,
            Some(int) => {
                let (ok, l, h) = em.interior_bounds(&int.conds, lane, lo, hi)?;
                // Where the row's invariant conditions hold and the lanes
                // `[a, b)` where the others do hold a vector at least: the
                // lanes below `a` one by one, `[a, b)` by guard-free
                // vectors (the last one overlapping the one before where
                // `b - a` is not a multiple of 4: it stores the same
                // values again), the lanes from `b` one by one. Else
                // (padding rows, short rows) vectors with the guards.
                let a = em.b.ins().smax(l, lo);
                let a = em.b.ins().smin(a, hi);
                let b = em.b.ins().smin(h, hi);
                let b = em.b.ins().smax(b, a);
                let width = em.b.ins().isub(b, a);
                let wide =
                    em.b.ins()
                        .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, width, 4);
                let inside = em.b.ins().band(ok, wide);
                let inner_b = em.b.create_block();
                let border_b = em.b.create_block();
                let merge = em.b.create_block();
                em.b.append_block_param(merge, types::I64);
                em.b.ins().brif(inside, inner_b, &[], border_b, &[]);
                em.b.switch_to_block(inner_b);
                em.push_scope();
                let r = (|| {
                    scalar_loop(em, expr, lane, lo, a)?;
                    let i = vector_loop2(em, &int.fast, lane, a, b)?;
                    let i = vector_loop(em, &int.fast, lane, i, b)?;
                    let left = em.b.ins().icmp(IntCC::SignedLessThan, i, b);
                    let last = em.b.create_block();
                    let done = em.b.create_block();
                    em.b.ins().brif(left, last, &[], done, &[]);
                    em.b.switch_to_block(last);
                    let at = em.b.ins().iadd_imm_s(b, -4);
                    vector_loop(em, &int.fast, lane, at, b)?;
                    em.b.ins().jump(done, &[]);
                    em.b.switch_to_block(done);
                    Ok::<(), CodegenError>(())
                })();
                em.pop_scope();
                r?;
                em.b.ins().jump(merge, &super::expr::args(&[b]));
                em.b.switch_to_block(border_b);
                em.push_scope();
                let i = vector_loop(em, expr, lane, lo, hi);
                em.pop_scope();
                let i = i?;
                em.b.ins().jump(merge, &super::expr::args(&[i]));
                em.b.switch_to_block(merge);
                em.b.block_params(merge)[0]
            }
        };
        scalar_loop(em, expr, lane, i, hi)?;
        em.scratch.clear();
        em.vsplat.clear();
        Ok(())
    })
}

/// Stores `e` four lanes at a time for `lane` from `lo` while four more
/// fit below `hi`; returns the first lane not stored.
fn vector_loop(
    em: &mut Emitter,
    e: &Expr,
    lane: Var,
    lo: Value,
    hi: Value,
) -> Result<Value, CodegenError> {
    let out = em.k.inputs.len();
    let (i, _) = em.for_loop(lo, hi, 4, &[], |em, i, _| {
        let v = em.vemit_at(e, lane, i)?;
        em.vars.insert(lane, i);
        let flat = em.out_flat();
        em.vars.remove(&lane);
        let off = em.b.ins().ishl_imm_s(flat, 2);
        let a = em.b.ins().iadd(em.bases[out], off);
        em.b.ins().store(mem(), v, a, 0);
        Ok(vec![])
    })?;
    Ok(i)
}

/// `e` as `base + c` (`c` an integer constant, 0 when there is none):
/// `add` and `sub` of constants peeled off, `None` on overflow.
fn split_const(e: &Expr) -> Option<(Expr, i64)> {
    match e {
        Expr::Int(c) => Some((Expr::Int(0), *c)),
        Expr::Binary(Binary::Add, a, b) => match (&**a, &**b) {
            (x, Expr::Int(c)) | (Expr::Int(c), x) => {
                let (base, d) = split_const(x)?;
                Some((base, d.checked_add(*c)?))
            }
            _ => Some((e.clone(), 0)),
        },
        Expr::Binary(Binary::Sub, a, b) => match &**b {
            Expr::Int(c) => {
                let (base, d) = split_const(a)?;
                Some((base, d.checked_sub(*c)?))
            }
            _ => Some((e.clone(), 0)),
        },
        _ => Some((e.clone(), 0)),
    }
}

/// `index` (into a tensor of `dims`, f32) with the constant parts of the
/// indices on axes of static stride removed, and those parts as a byte
/// offset (the same address: index arithmetic is exact i64, and the
/// offset fits an `i32` or nothing is peeled).
fn peel_offsets(dims: &[Dim], index: &[Expr]) -> (Vec<Expr>, i32) {
    let mut out = Vec::with_capacity(index.len());
    let mut total: Option<i64> = Some(0);
    for (a, ie) in index.iter().enumerate() {
        let stride = dims
            .get(a + 1..)
            .unwrap_or(&[])
            .iter()
            .try_fold(1i64, |p, d| {
                p.checked_mul(i64::try_from(d.as_static()?).ok()?)
            });
        match (stride, split_const(ie)) {
            (Some(st), Some((b, c))) if c != 0 => {
                total = total.and_then(|t| t.checked_add(c.checked_mul(st)?));
                out.push(b);
            }
            _ => out.push(ie.clone()),
        }
    }
    match total
        .and_then(|t| t.checked_mul(4))
        .and_then(|t| i32::try_from(t).ok())
    {
        Some(bytes) => (out, bytes),
        None => (index.to_vec(), 0),
    }
}

/// Stores `e` one lane at a time for `lane` in `[lo, hi)`.
fn scalar_loop(
    em: &mut Emitter,
    e: &Expr,
    lane: Var,
    lo: Value,
    hi: Value,
) -> Result<(), CodegenError> {
    em.for_loop(lo, hi, 1, &[], |em, j, _| {
        em.vars.insert(lane, j);
        let v = em.emit(e);
        let r = v.and_then(|v| {
            let flat = em.out_flat();
            em.store_out(e, flat, v)
        });
        em.vars.remove(&lane);
        r.map(|()| vec![])
    })?;
    Ok(())
}

/// [`vector_loop`] eight lanes (two vectors) a time: the interior of a
/// row, whose expression has no branches, so the two vectors' work can
/// overlap and the lane-invariant operands are read once for both.
fn vector_loop2(
    em: &mut Emitter,
    e: &Expr,
    lane: Var,
    lo: Value,
    hi: Value,
) -> Result<Value, CodegenError> {
    let out = em.k.inputs.len();
    let (i, _) = em.for_loop(lo, hi, 8, &[], |em, i, _| {
        let i4 = em.b.ins().iadd_imm_s(i, 4);
        let mut vs = Vec::new();
        for at in [i, i4] {
            vs.push(em.vemit_at(e, lane, at)?);
        }
        em.vars.insert(lane, i);
        let flat = em.out_flat();
        em.vars.remove(&lane);
        let off = em.b.ins().ishl_imm_s(flat, 2);
        let a = em.b.ins().iadd(em.bases[out], off);
        em.b.ins().store(mem(), vs[0], a, 0);
        em.b.ins().store(mem(), vs[1], a, 16);
        Ok(vec![])
    })?;
    Ok(i)
}

impl Emitter<'_, '_> {
    /// For the conditions of [`interior::interior`] in the current row:
    /// whether the row-invariant ones hold, and the lane interval
    /// `[l, h)` (within `[lo, hi)`) where the others do.
    fn interior_bounds(
        &mut self,
        conds: &[interior::Cond],
        lane: Var,
        lo: Value,
        hi: Value,
    ) -> Result<(Value, Value, Value), CodegenError> {
        let mut ok = self.b.ins().iconst(types::I8, 1);
        let (mut l, mut h) = (lo, hi);
        for c in conds {
            match c {
                interior::Cond::Inv(g) => {
                    let (v, _) = self.emit(g)?;
                    ok = self.b.ins().band(ok, v);
                }
                interior::Cond::Below(x, y, k) | interior::Cond::AtLeast(x, y, k) => {
                    // `x` is `lane + x(0)`: the bound on the lane is
                    // `y + k - x(0)`.
                    let zero = self.iconst(0);
                    let saved = self.take_memo();
                    self.vars.insert(lane, zero);
                    let x0 = self.emit(x);
                    self.vars.remove(&lane);
                    self.restore_memo(saved);
                    let (x0, _) = x0?;
                    let (y, _) = self.emit(y)?;
                    let d = self.b.ins().isub(y, x0);
                    let d = self.b.ins().iadd_imm_s(d, *k);
                    if matches!(c, interior::Cond::Below(..)) {
                        h = self.b.ins().smin(h, d);
                    } else {
                        l = self.b.ins().smax(l, d);
                    }
                }
            }
        }
        Ok((ok, l, h))
    }
}

/// Whether a map kernel takes the vector path: an f32 kernel with an f32
/// output of rank at least 1 whose expression is [`vectorizable`] in the
/// innermost output variable.
pub(super) fn map_qualifies(em: &Emitter, expr: &Expr) -> bool {
    let rank = em.k.output.shape.rank();
    rank >= 1
        && em.k.output.dtype == DType::F32
        && em.fty == types::F32
        && vtype(em, expr, Var(rank as u32 - 1), true) == Some(VT::F)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_index_parts_become_byte_offsets() {
        let v = |i| Expr::Var(Var(i));
        let dims = [Dim::Static(2), Dim::Sym("h".into()), Dim::Static(5)];
        // x[b + 1, 1 + y, (x + 2) - 1]: 1 * 5 + 1 elements, 24 bytes.
        let index = [
            Expr::bin(Binary::Add, v(0), Expr::Int(1)),
            Expr::bin(Binary::Add, Expr::Int(1), v(1)),
            Expr::bin(
                Binary::Sub,
                Expr::bin(Binary::Add, v(2), Expr::Int(2)),
                Expr::Int(1),
            ),
        ];
        let (peeled, bytes) = peel_offsets(&dims, &index);
        // Axis 0's stride (h * 5) is symbolic: its constant stays.
        assert_eq!(peeled, vec![index[0].clone(), v(1), v(2)]);
        assert_eq!(bytes, 24);
        // An offset past i32 peels nothing.
        let far = [v(0), v(1), Expr::bin(Binary::Add, v(2), Expr::Int(1 << 40))];
        assert_eq!(peel_offsets(&dims, &far), (far.to_vec(), 0));
    }
}
