//! Loop construction and the loop nest of a [`Body::Map`] kernel.
//!
//! [`Body::Map`]: kiln_dialect::kernel::Body::Map

use std::collections::BTreeSet;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value, types};
use kiln_dialect::kernel::{Expr, Var};

use super::CodegenError;
use super::expr::{Emitter, args};

impl Emitter<'_, '_> {
    /// Emits `for (i = lo; i + step <= hi; i += step)` with loop-carried
    /// values `init`; `body` gets `i` and the carried values and returns
    /// their next values. Returns the first `i` that failed the test and
    /// the final carried values; the current block is then the exit.
    pub fn for_loop<F>(
        &mut self,
        lo: Value,
        hi: Value,
        step: i64,
        init: &[Value],
        mut body: F,
    ) -> Result<(Value, Vec<Value>), CodegenError>
    where
        F: FnMut(&mut Self, Value, &[Value]) -> Result<Vec<Value>, CodegenError>,
    {
        let header = self.b.create_block();
        let bodyb = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(header, types::I64);
        self.b.append_block_param(exit, types::I64);
        for &v in init {
            let t = self.b.func.dfg.value_type(v);
            self.b.append_block_param(header, t);
            self.b.append_block_param(exit, t);
        }
        let mut start = vec![lo];
        start.extend_from_slice(init);
        self.b.ins().jump(header, &args(&start));
        self.b.switch_to_block(header);
        let params = self.b.block_params(header).to_vec();
        let i = params[0];
        let cond = if step == 1 {
            self.b.ins().icmp(IntCC::SignedLessThan, i, hi)
        } else {
            let last = self.b.ins().iadd_imm_s(i, step);
            self.b.ins().icmp(IntCC::SignedLessThanOrEqual, last, hi)
        };
        self.b.ins().brif(cond, bodyb, &[], exit, &args(&params));
        self.b.switch_to_block(bodyb);
        self.push_scope();
        let next = body(self, i, &params[1..]);
        self.pop_scope();
        let mut next = next?;
        let i2 = self.b.ins().iadd_imm_s(i, step);
        next.insert(0, i2);
        self.b.ins().jump(header, &args(&next));
        self.b.switch_to_block(exit);
        let out = self.b.block_params(exit).to_vec();
        Ok((out[0], out[1..].to_vec()))
    }

    /// Returns from the function unless `cond` holds.
    pub fn return_unless(&mut self, cond: Value) {
        let cont = self.b.create_block();
        self.b.ins().brif(cond, cont, &[], self.ret, &[]);
        self.b.switch_to_block(cont);
    }

    /// The output range on axis 0: `[max(begin, 0), min(end, size0))`;
    /// returns from the function when it is empty, or when the output has
    /// no elements.
    pub fn axis0_range(&mut self) -> (Value, Value) {
        let out = self.k.inputs.len();
        let shape = self.shapes[out].clone();
        let zero = self.iconst(0);
        let lo = self.b.ins().smax(self.begin, zero);
        let hi = self.b.ins().smin(self.end, shape[0]);
        let mut numel = self.iconst(1);
        for &d in &shape {
            numel = self.b.ins().imul(numel, d);
        }
        let some = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, numel, 0);
        let nonempty = self.b.ins().icmp(IntCC::SignedLessThan, lo, hi);
        let go = self.b.ins().band(some, nonempty);
        self.return_unless(go);
        self.range0 = (lo, hi);
        (lo, hi)
    }

    /// The output's flat element index at the bound output variables.
    pub fn out_flat(&mut self) -> Value {
        let out = self.k.inputs.len();
        let rank = self.shapes[out].len();
        let mut flat = self.iconst(0);
        for a in 0..rank {
            let v = self.vars[&Var(a as u32)];
            let t = self.b.ins().imul(v, self.strides[out][a]);
            flat = self.b.ins().iadd(flat, t);
        }
        flat
    }

    /// The output variables `v0 .. v(n-1)`.
    pub fn out_vars(n: usize) -> BTreeSet<Var> {
        (0..n as u32).map(Var).collect()
    }
}

/// The loop nest of a map kernel: one loop per output axis (axis 0 over
/// `[begin, end)`), each preheader computing what does not depend on the
/// inner axes, and the element's expression stored in the innermost. A
/// kernel that qualifies runs its innermost axis four lanes at a time
/// ([`super::vmap`]).
pub(super) fn emit_map(em: &mut Emitter, expr: &Expr) -> Result<(), CodegenError> {
    if super::vmap::map_qualifies(em, expr) {
        return super::vmap::emit_map(em, expr);
    }
    let rank = em.k.output.shape.rank();
    emit_nest(em, &[expr], rank, &mut |em| {
        let v = em.emit(expr)?;
        let flat = em.out_flat();
        em.store_out(expr, flat, v)
    })
}

/// Loops over the first `depth` output axes (axis 0 over `[begin, end)`),
/// hoisting the parts of `hoists` that do not depend on inner axes into
/// each preheader, and calls `element` with those axes bound. A rank-0
/// output runs `element` once when the range holds index 0. Returns early
/// when the range or the output is empty.
pub(super) fn emit_nest<'a, 'f>(
    em: &mut Emitter<'a, 'f>,
    hoists: &[&Expr],
    depth: usize,
    element: &mut dyn FnMut(&mut Emitter<'a, 'f>) -> Result<(), CodegenError>,
) -> Result<(), CodegenError> {
    let rank = em.k.output.shape.rank();
    if rank == 0 {
        let zero = em.iconst(0);
        let a =
            em.b.ins()
                .icmp(IntCC::SignedLessThanOrEqual, em.begin, zero);
        let b = em.b.ins().icmp(IntCC::SignedGreaterThan, em.end, zero);
        let go = em.b.ins().band(a, b);
        em.return_unless(go);
        return element(em);
    }
    let (lo, hi) = em.axis0_range();
    for e in hoists {
        em.hoist(e, &BTreeSet::new())?;
    }
    if depth == 0 {
        return element(em);
    }
    nest(em, hoists, 0, depth, lo, hi, element)
}

fn nest<'a, 'f>(
    em: &mut Emitter<'a, 'f>,
    hoists: &[&Expr],
    axis: usize,
    depth: usize,
    lo: Value,
    hi: Value,
    element: &mut dyn FnMut(&mut Emitter<'a, 'f>) -> Result<(), CodegenError>,
) -> Result<(), CodegenError> {
    em.for_loop(lo, hi, 1, &[], |em, i, _| {
        em.vars.insert(Var(axis as u32), i);
        if axis + 1 < depth {
            for e in hoists {
                em.hoist(e, &Emitter::out_vars(axis + 1))?;
            }
            let zero = em.iconst(0);
            let n = em.shapes[em.k.inputs.len()][axis + 1];
            nest(em, hoists, axis + 1, depth, zero, n, element)?;
        } else {
            for e in hoists {
                if depth < em.k.output.shape.rank() {
                    em.hoist(e, &Emitter::out_vars(axis + 1))?;
                }
            }
            element(em)?;
        }
        em.vars.remove(&Var(axis as u32));
        Ok(vec![])
    })?;
    Ok(())
}
