//! [`Body::Contract`]: a register-blocked f32x4 loop nest where the
//! operands are plain f32 loads with `n` contiguous in `b`, or `b` packed in
//! column panels (`b[.., n / 8, k, n % 8]`, see
//! `kiln_passes::lower::pack_contraction_weights`), else a scalar loop per
//! element; the epilogue per element in every case.
//!
//! The blocked path keeps a 4 x 8 tile of the output in eight f32x4
//! accumulators over the whole `k` range (one splat of `a` per row, two
//! vector loads of `b` per step, fused multiply-adds where the ISA has
//! them), then evaluates the epilogue on each lane. Rows and columns that
//! do not fill a tile, batch axes and transposed `a` are handled; the sums
//! run in `k` order, so without FMA they equal the evaluator's exactly; with
//! FMA the rows and columns outside full tiles use it too, so results do not
//! depend on how axis 0 is split.
//!
//! [`Body::Contract`]: kiln_dialect::kernel::Body::Contract

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    InstBuilder, InstructionData, Opcode, StackSlotData, StackSlotKind, Value, types,
};
use kiln_dialect::DType;
use kiln_dialect::kernel::{Binary, Expr, Var};

use super::CodegenError;
use super::expr::{Emitter, T, input_mem, mem};
use super::loops::emit_nest;
use super::vmap;

/// The rows and columns of a register tile.
const MR: usize = 4;
const NR: usize = 8;
/// The `k` block of the panel path (for long static `k`).
const KC: u64 = 512;

pub(super) fn emit_contract(
    em: &mut Emitter,
    kv: Var,
    extent: &Expr,
    a: &Expr,
    b: &Expr,
    epilogue: &Expr,
) -> Result<(), CodegenError> {
    let rank = em.k.output.shape.rank();
    if em.fty == types::F32
        && rank >= 2
        && let Some((oa, pb)) = operand(em, a, kv, rank, false).zip(packed(em, b, kv, rank))
    {
        return emit_nest(em, &[extent, epilogue], rank - 2, &mut |em| {
            panels(em, kv, extent, epilogue, &oa, &pb)
        });
    }
    if em.fty == types::F32
        && rank >= 2
        && operand(em, b, kv, rank, true).is_none()
        && em.type_of(b).ok() == Some(T::F)
        && let Some(kc) = gather_k(extent)
        && let Some(oa) = operand(em, a, kv, rank, false)
    {
        return emit_nest(em, &[extent, epilogue], rank - 2, &mut |em| {
            gathered(em, kv, kc, b, epilogue, &oa, None)
        });
    }
    let fast = if em.fty == types::F32 && rank >= 2 {
        operand(em, a, kv, rank, false).zip(operand(em, b, kv, rank, true))
    } else {
        None
    };
    match fast {
        Some((oa, ob)) if column_order(em, extent) && gather_k(extent).is_some() => {
            let kc = gather_k(extent).unwrap_or(1);
            emit_nest(em, &[extent, epilogue], rank - 2, &mut |em| {
                gathered(em, kv, kc, b, epilogue, &oa, Some(&ob))
            })
        }
        Some((oa, ob)) => emit_nest(em, &[extent, epilogue], rank - 2, &mut |em| {
            tiles(em, kv, extent, a, b, epilogue, &oa, &ob)
        }),
        None => emit_nest(em, &[extent, epilogue], rank, &mut |em| {
            element(em, kv, extent, a, b, epilogue, false)
        }),
    }
}

/// A plain load operand of the blocked path: its input and, per output or
/// contracted variable, the sum of the strides of the axes it indexes,
/// plus a constant element offset.
struct Operand {
    input: usize,
    /// `(var, axis)` for every axis indexed by a variable.
    var_axes: Vec<(Var, usize)>,
    /// `(constant, axis)` for every axis indexed by a constant.
    const_axes: Vec<(i64, usize)>,
}

/// `e` as an [`Operand`] when it is an unguarded f32 load whose indices are
/// variables or constants; `a` may not use `n`, `b` may not use `m`, and
/// `b` must have `n` as its last index (contiguous columns) and nowhere
/// else.
fn operand(em: &Emitter, e: &Expr, kv: Var, rank: usize, is_b: bool) -> Option<Operand> {
    let Expr::Load {
        input,
        index,
        guard: None,
    } = e
    else {
        return None;
    };
    if em.k.inputs.get(*input)?.dtype != DType::F32 || index.len() != em.shapes[*input].len() {
        return None;
    }
    let (m, n) = (Var(rank as u32 - 2), Var(rank as u32 - 1));
    let mut op = Operand {
        input: *input,
        var_axes: Vec::new(),
        const_axes: Vec::new(),
    };
    for (axis, ie) in index.iter().enumerate() {
        match ie {
            Expr::Var(v) => {
                let ok = *v == kv || v.0 < rank as u32 - 2 || *v == if is_b { n } else { m };
                if !ok {
                    return None;
                }
                op.var_axes.push((*v, axis));
            }
            Expr::Int(c) => op.const_axes.push((*c, axis)),
            _ => return None,
        }
    }
    if is_b {
        let last = index.len().checked_sub(1)?;
        let n_axes: Vec<usize> = op
            .var_axes
            .iter()
            .filter(|(v, _)| *v == n)
            .map(|&(_, a)| a)
            .collect();
        if n_axes != [last] {
            return None;
        }
    }
    Some(op)
}

impl Operand {
    /// The byte address of the element at `k = 0`, `m = 0` / `n = 0` and
    /// the bound batch variables, and the byte strides along `skip` (the
    /// row or column variable) and `kv`.
    fn addressing(&self, em: &mut Emitter, skip: Var, kv: Var) -> (Value, Value, Value) {
        let mut off = em.iconst(0);
        let mut s_skip = em.iconst(0);
        let mut s_k = em.iconst(0);
        for &(c, axis) in &self.const_axes {
            let t = em.b.ins().imul_imm_s(em.strides[self.input][axis], c);
            off = em.b.ins().iadd(off, t);
        }
        for &(v, axis) in &self.var_axes {
            let st = em.strides[self.input][axis];
            if v == skip {
                s_skip = em.b.ins().iadd(s_skip, st);
            } else if v == kv {
                s_k = em.b.ins().iadd(s_k, st);
            } else {
                // An unbound variable reads as 0, as in the evaluator.
                let Some(&x) = em.vars.get(&v) else { continue };
                let t = em.b.ins().imul(x, st);
                off = em.b.ins().iadd(off, t);
            }
        }
        let off = em.b.ins().ishl_imm_s(off, 2);
        let base = em.b.ins().iadd(em.bases[self.input], off);
        let s_skip = em.b.ins().ishl_imm_s(s_skip, 2);
        let s_k = em.b.ins().ishl_imm_s(s_k, 2);
        (base, s_skip, s_k)
    }
}

/// The `m`, `n` loops of one batch index: full tiles, then the columns
/// and rows left over.
#[allow(clippy::too_many_arguments)]
fn tiles(
    em: &mut Emitter,
    kv: Var,
    extent: &Expr,
    a: &Expr,
    b: &Expr,
    epilogue: &Expr,
    oa: &Operand,
    ob: &Operand,
) -> Result<(), CodegenError> {
    let TileSpace {
        m,
        n,
        mlo,
        mhi,
        ncols,
        kn,
    } = tile_space(em, extent)?;
    let (pa, am, ak) = oa.addressing(em, m, kv);
    let (pb, bn, bk) = ob.addressing(em, n, kv);
    let _ = bn; // 4 bytes: `n` is the last axis of `b`
    let row_off = row_offsets(em, oa, m, am);
    let zero = em.iconst(0);
    if column_order(em, extent) {
        return tiles_by_column(
            em,
            (kv, extent, a, b, epilogue),
            (pa, am, ak, pb, bk),
            &row_off,
        );
    }
    let (mb_end, _) = em.for_loop(mlo, mhi, MR as i64, &[], |em, mb, _| {
        let (nb_end, _) = em.for_loop(zero, ncols, NR as i64, &[], |em, nb, _| {
            let t = em.b.ins().imul(mb, am);
            let pa0 = em.b.ins().iadd(pa, t);
            let t = em.b.ins().ishl_imm_s(nb, 2);
            let pb0 = em.b.ins().iadd(pb, t);
            let acc = tile_sums(em, MR, pa0, ak, pb0, bk, kn, &row_off, None)?;
            if plain_store(em, epilogue) || vmap::epilogue_vectorizable(em, epilogue, n) {
                whole_stores(em, mb, nb, &acc, epilogue)?;
                return Ok(vec![]);
            }
            for r in 0..MR {
                let mv = em.b.ins().iadd_imm_s(mb, r as i64);
                em.vars.insert(m, mv);
                for col in 0..NR {
                    let nv = em.b.ins().iadd_imm_s(nb, col as i64);
                    em.vars.insert(n, nv);
                    let v = acc[r * (NR / 4) + col / 4];
                    let lane = em.b.ins().extractlane(v, (col % 4) as u8);
                    epilogue_at(em, lane, T::F, epilogue)?;
                }
            }
            em.vars.remove(&n);
            em.vars.remove(&m);
            Ok(vec![])
        })?;
        em.for_loop(nb_end, ncols, 1, &[], |em, nv, _| {
            em.vars.insert(n, nv);
            for r in 0..MR {
                let mv = em.b.ins().iadd_imm_s(mb, r as i64);
                em.vars.insert(m, mv);
                element(em, kv, extent, a, b, epilogue, em.fma)?;
            }
            em.vars.remove(&n);
            em.vars.remove(&m);
            Ok(vec![])
        })?;
        Ok(vec![])
    })?;
    em.for_loop(mb_end, mhi, 1, &[], |em, mv, _| {
        em.vars.insert(m, mv);
        em.for_loop(zero, ncols, 1, &[], |em, nv, _| {
            em.vars.insert(n, nv);
            element(em, kv, extent, a, b, epilogue, em.fma)?;
            em.vars.remove(&n);
            Ok(vec![])
        })?;
        em.vars.remove(&m);
        Ok(vec![])
    })?;
    Ok(())
}

/// The most bytes of `a` (all rows, all of `k`) for which the tiles run
/// column panel by column panel (see [`column_order`]).
const A_RESIDENT: u64 = 32 * 1024;

/// Whether a contraction's tiles run column panel by column panel, all
/// rows against one panel of `b` before the next: when the output's rows
/// and `k` are static and all of `a` fits in [`A_RESIDENT`] bytes (the
/// pointwise convolutions of C3: 24 x 144 and 144 x 24), so `a` and the
/// panel stay in L1 while `b` is read once, instead of once per row tile.
fn column_order(em: &Emitter, extent: &Expr) -> bool {
    let rank = em.k.output.shape.rank();
    let rows = if rank == 2 {
        // Rows are split over threads: the whole extent bounds a range.
        em.k.output.shape.0[0].as_static()
    } else {
        em.k.output.shape.0[rank - 2].as_static()
    };
    match (rows, extent) {
        (Some(r), Expr::Int(k)) if *k > 0 => r * (*k as u64) * 4 <= A_RESIDENT,
        _ => false,
    }
}

/// [`tiles`] in column order: for each panel of [`NR`] columns, the row
/// tiles, then the rows left over as one-row tiles (the same fused sums in
/// `k` order as a full tile's rows); then the columns left over element by
/// element.
fn tiles_by_column(
    em: &mut Emitter,
    (kv, extent, a, b, epilogue): (Var, &Expr, &Expr, &Expr, &Expr),
    (pa, am, ak, pb, bk): (Value, Value, Value, Value, Value),
    row_off: &[Off],
) -> Result<(), CodegenError> {
    let TileSpace {
        m,
        n,
        mlo,
        mhi,
        ncols,
        kn,
    } = tile_space(em, extent)?;
    let zero = em.iconst(0);
    let (nb_end, _) = em.for_loop(zero, ncols, NR as i64, &[], |em, nb, _| {
        let t = em.b.ins().ishl_imm_s(nb, 2);
        let pb0 = em.b.ins().iadd(pb, t);
        let tile = |em: &mut Emitter, mb: Value, rows: usize| -> Result<(), CodegenError> {
            let t = em.b.ins().imul(mb, am);
            let pa0 = em.b.ins().iadd(pa, t);
            let acc = tile_sums(em, rows, pa0, ak, pb0, bk, kn, row_off, None)?;
            if plain_store(em, epilogue) || vmap::epilogue_vectorizable(em, epilogue, n) {
                return whole_stores(em, mb, nb, &acc, epilogue);
            }
            for r in 0..rows {
                let mv = em.b.ins().iadd_imm_s(mb, r as i64);
                em.vars.insert(m, mv);
                for col in 0..NR {
                    let nv = em.b.ins().iadd_imm_s(nb, col as i64);
                    em.vars.insert(n, nv);
                    let v = acc[r * (NR / 4) + col / 4];
                    let lane = em.b.ins().extractlane(v, (col % 4) as u8);
                    epilogue_at(em, lane, T::F, epilogue)?;
                }
            }
            em.vars.remove(&n);
            em.vars.remove(&m);
            Ok(())
        };
        let (mb_end, _) = em.for_loop(mlo, mhi, MR as i64, &[], |em, mb, _| {
            tile(em, mb, MR)?;
            Ok(vec![])
        })?;
        em.for_loop(mb_end, mhi, 1, &[], |em, mv, _| {
            tile(em, mv, 1)?;
            Ok(vec![])
        })?;
        Ok(vec![])
    })?;
    em.for_loop(mlo, mhi, 1, &[], |em, mv, _| {
        em.vars.insert(m, mv);
        em.for_loop(nb_end, ncols, 1, &[], |em, nv, _| {
            em.vars.insert(n, nv);
            element(em, kv, extent, a, b, epilogue, em.fma)?;
            em.vars.remove(&n);
            Ok(vec![])
        })?;
        em.vars.remove(&m);
        Ok(vec![])
    })?;
    Ok(())
}

/// The byte offset of a tile's row `r` of `a` from its first: an
/// immediate when `a`'s shape is static (folded into the load), else a
/// value.
#[derive(Clone, Copy, Debug)]
enum Off {
    Imm(i32),
    Dyn(Value),
}

/// The offsets of rows `0 .. MR` of `a` (`am` bytes apart).
fn row_offsets(em: &mut Emitter, oa: &Operand, m: Var, am: Value) -> Vec<Off> {
    let shape = &em.k.inputs[oa.input].shape;
    let stride = |axis: usize| -> Option<i64> {
        shape.0[axis + 1..]
            .iter()
            .try_fold(1i64, |p, d| p.checked_mul(d.as_static()? as i64))
    };
    let st = oa
        .var_axes
        .iter()
        .filter(|(v, _)| *v == m)
        .try_fold(0i64, |s, &(_, axis)| s.checked_add(stride(axis)?));
    (0..MR as i64)
        .map(|r| {
            match st
                .and_then(|st| st.checked_mul(4 * r))
                .and_then(|o| i32::try_from(o).ok())
            {
                Some(o) => Off::Imm(o),
                None => Off::Dyn(em.b.ins().imul_imm_s(am, r)),
            }
        })
        .collect()
}

/// One step of `k` on a register tile: `c` is the `a` and `b` pointers
/// and the accumulators; gives their next values.
fn step(em: &mut Emitter, c: &[Value], ak: Value, bk: Value, row_off: &[Off]) -> Vec<Value> {
    let (pa, pb) = (c[0], c[1]);
    let bv: Vec<Value> = (0..NR / 4)
        .map(|j| {
            em.b.ins()
                .load(types::F32X4, input_mem(), pb, 16 * j as i32)
        })
        .collect();
    let mut next = vec![em.b.ins().iadd(pa, ak), em.b.ins().iadd(pb, bk)];
    for (r, &ro) in row_off.iter().enumerate() {
        let x = match ro {
            Off::Imm(o) => em.b.ins().load(types::F32, input_mem(), pa, o),
            Off::Dyn(o) => {
                let addr = em.b.ins().iadd(pa, o);
                em.b.ins().load(types::F32, input_mem(), addr, 0)
            }
        };
        let xs = em.b.ins().splat(types::F32X4, x);
        for (j, &bj) in bv.iter().enumerate() {
            let acc = c[2 + r * (NR / 4) + j];
            // The splat first: x86-64's `fma` overwrites its first operand
            // (a copy where it is used again), and a row's splat is used
            // NR / 4 times where each `b` vector is used MR times.
            next.push(if em.fma {
                em.b.ins().fma(xs, bj, acc)
            } else {
                let p = em.b.ins().fmul(xs, bj);
                em.b.ins().fadd(acc, p)
            });
        }
    }
    next
}

/// Evaluates the epilogue with `acc` and stores it at the bound output
/// variables.
fn epilogue_at(em: &mut Emitter, acc: Value, t: T, epilogue: &Expr) -> Result<(), CodegenError> {
    em.acc = Some((acc, t));
    em.push_scope();
    let v = em.emit(epilogue);
    let r = v.and_then(|v| {
        let flat = em.out_flat();
        em.store_out(epilogue, flat, v)
    });
    em.pop_scope();
    em.acc = None;
    r
}

/// One output element the scalar way: `acc = sum over k of a * b` in `k`
/// order, then the epilogue.
/// With `fused`, products are added with fused multiply-adds, as the
/// tiles add them (so a split of the rows never changes a result).
fn element(
    em: &mut Emitter,
    kv: Var,
    extent: &Expr,
    a: &Expr,
    b: &Expr,
    epilogue: &Expr,
    fused: bool,
) -> Result<(), CodegenError> {
    if em.vars.contains_key(&kv) {
        return Err(em.unsupported(a, format!("the contracted variable {kv} is already bound")));
    }
    let (n, nt) = em.emit(extent)?;
    if nt != T::I {
        return Err(em.type_err(extent, "the extent is not an integer"));
    }
    let t = em.type_of(a)?;
    let init = match t {
        T::F => em.fconst(0.0),
        T::I => em.iconst(0),
        T::B => return Err(em.type_err(a, "a contraction of bools")),
    };
    let mut bound = em.bound();
    bound.remove(&kv);
    em.hoist(a, &bound)?;
    em.hoist(b, &bound)?;
    let zero = em.iconst(0);
    let prod = Expr::bin(Binary::Mul, a.clone(), b.clone());
    let (_, acc) = em.for_loop(zero, n, 1, &[init], |em, i, c| {
        em.vars.insert(kv, i);
        if fused && t == T::F {
            let (x, _) = em.emit(a)?;
            let (y, yt) = em.emit(b)?;
            if yt != T::F {
                return Err(em.type_err(&prod, "the operands' types differ"));
            }
            em.vars.remove(&kv);
            return Ok(vec![em.b.ins().fma(x, y, c[0])]);
        }
        let (p, pt) = em.emit(&prod)?;
        if pt != t {
            return Err(em.type_err(&prod, "the product's type is not the operands'"));
        }
        em.vars.remove(&kv);
        Ok(vec![match t {
            T::F => em.b.ins().fadd(c[0], p),
            _ => em.b.ins().iadd(c[0], p),
        }])
    })?;
    epilogue_at(em, acc[0], t, epilogue)
}

/// A `b` operand packed in column panels (`lower::pack_contraction_weights`):
/// `b[.., n / NR, k, n % NR]` of an f32 buffer whose last axis is `NR`.
struct Packed {
    /// The leading axes as an [`Operand`] (batch variables and constants).
    lead: Operand,
    /// The panel axis.
    panel_axis: usize,
}

/// `e` as a [`Packed`] operand.
fn packed(em: &Emitter, e: &Expr, kv: Var, rank: usize) -> Option<Packed> {
    let Expr::Load {
        input,
        index,
        guard: None,
    } = e
    else {
        return None;
    };
    let buf = em.k.inputs.get(*input)?;
    let r = index.len();
    if buf.dtype != DType::F32 || r < 3 || r != buf.shape.rank() {
        return None;
    }
    if buf.shape.0[r - 1].as_static() != Some(NR as u64) {
        return None;
    }
    let n = Expr::Var(Var(rank as u32 - 1));
    let nr = Expr::Int(NR as i64);
    let div = Expr::bin(Binary::Div, n.clone(), nr.clone());
    let rem = Expr::bin(Binary::Rem, n, nr);
    if index[r - 3] != div || index[r - 2] != Expr::Var(kv) || index[r - 1] != rem {
        return None;
    }
    let mut lead = Operand {
        input: *input,
        var_axes: Vec::new(),
        const_axes: Vec::new(),
    };
    for (axis, ie) in index[..r - 3].iter().enumerate() {
        match ie {
            Expr::Var(v) if v.0 < rank as u32 - 2 => lead.var_axes.push((*v, axis)),
            Expr::Int(c) => lead.const_axes.push((*c, axis)),
            _ => return None,
        }
    }
    Some(Packed {
        lead,
        panel_axis: r - 3,
    })
}

/// Columns per chunk of the packed path: enough panels that a chunk of `b`
/// (`k` rows of them) stays in a 512 KiB L2 with room for `a`'s rows.
fn chunk_columns(k: Option<u64>) -> i64 {
    let budget = 192 * 1024 / 4;
    let cols = match k {
        Some(k) if k > 0 => (budget / k as i64) / NR as i64 * NR as i64,
        _ => 64,
    };
    cols.clamp(NR as i64, 512)
}

/// The `m`, `n` loops of one batch index with a panel-packed `b`: for each
/// chunk of columns, every row tile of the range against every panel of
/// the chunk (the chunk stays in cache while the rows stream), then the
/// rows left over one at a time. Columns past `n` in the last panel are
/// computed on the zero padding and not stored.
fn panels(
    em: &mut Emitter,
    kv: Var,
    extent: &Expr,
    epilogue: &Expr,
    oa: &Operand,
    pb: &Packed,
) -> Result<(), CodegenError> {
    let rank = em.k.output.shape.rank();
    let TileSpace {
        m,
        n,
        mlo,
        mhi,
        ncols,
        kn,
    } = tile_space(em, extent)?;
    let (pa, am, ak) = oa.addressing(em, m, kv);
    // The packed operand's base at the bound batch variables; panels are
    // `strides[panel_axis]` elements apart, `k` rows NR elements apart.
    let (pb0, _, _) = pb.lead.addressing(em, m, kv);
    let panel_bytes =
        em.b.ins()
            .ishl_imm_s(em.strides[pb.lead.input][pb.panel_axis], 2);
    let bk = em.iconst(4 * NR as i64);
    let static_k = match extent {
        Expr::Int(k) => Some(*k as u64),
        _ => None,
    };
    // Blocks of `k`: with a long static `k`, an f32 output whose rows are
    // whole panels holds the partial sums between blocks, so a tile's rows
    // of `a` stay in L1 and a chunk of `b` spans more panels.
    let static_n = em.k.output.shape.0[rank - 1].as_static();
    let kc = match (static_k, static_n) {
        (Some(k), Some(n)) if k > KC && n % NR as u64 == 0 && em.k.output.dtype == DType::F32 => {
            Some(KC)
        }
        _ => None,
    };
    let blocks = kc.map_or(1, |kc| static_k.unwrap_or(0).div_ceil(kc));
    let chunk = chunk_columns(kc.or(static_k));
    let zero = em.iconst(0);
    let row_off = row_offsets(em, oa, m, am);
    let chunks = em.b.ins().iadd_imm_s(ncols, chunk - 1);
    let chunks = em.b.ins().sdiv_imm_s(chunks, chunk);
    let nblocks = em.iconst(blocks as i64);
    em.for_loop(zero, chunks, 1, &[], |em, ci, _| {
        let c0 = em.b.ins().imul_imm_s(ci, chunk);
        let c1 = em.b.ins().iadd_imm_s(c0, chunk);
        let c1 = em.b.ins().smin(c1, ncols);
        let q0 = em.b.ins().sshr_imm_s(c0, NR.trailing_zeros() as i64);
        let q1 = em.b.ins().iadd_imm_s(c1, NR as i64 - 1);
        let q1 = em.b.ins().sshr_imm_s(q1, NR.trailing_zeros() as i64);
        let rows =
            |em: &mut Emitter, mb: Value, count: usize, kb: Value| -> Result<(), CodegenError> {
                // This block's `k` range.
                let (k_lo, k_len) = match kc {
                    Some(kc) => {
                        let lo = em.b.ins().imul_imm_s(kb, kc as i64);
                        let hi = em.b.ins().iadd_imm_s(lo, kc as i64);
                        let hi = em.b.ins().smin(hi, kn);
                        (lo, em.b.ins().isub(hi, lo))
                    }
                    None => (zero, kn),
                };
                em.for_loop(q0, q1, 1, &[], |em, q, _| {
                    let t = em.b.ins().imul(mb, am);
                    let pa0 = em.b.ins().iadd(pa, t);
                    let t = em.b.ins().imul(k_lo, ak);
                    let pa0 = em.b.ins().iadd(pa0, t);
                    let t = em.b.ins().imul(q, panel_bytes);
                    let pbq = em.b.ins().iadd(pb0, t);
                    let t = em.b.ins().imul_imm_s(k_lo, 4 * NR as i64);
                    let pbq = em.b.ins().iadd(pbq, t);
                    let nb = em.b.ins().ishl_imm_s(q, NR.trailing_zeros() as i64);
                    let init = if kc.is_some() {
                        Some(partial_sums(em, mb, nb, count, kb))
                    } else {
                        None
                    };
                    let acc = tile_sums(em, count, pa0, ak, pbq, bk, k_len, &row_off, init)?;
                    if kc.is_some() {
                        // Not the last block: keep the partial sums in the output.
                        let last = em.b.ins().iadd_imm_s(kb, 1);
                        let last = em.b.ins().icmp(IntCC::Equal, last, nblocks);
                        let keep = em.b.create_block();
                        let finish = em.b.create_block();
                        let done = em.b.create_block();
                        em.b.ins().brif(last, finish, &[], keep, &[]);
                        em.b.switch_to_block(keep);
                        store_rows(em, mb, nb, &acc);
                        em.b.ins().jump(done, &[]);
                        em.b.switch_to_block(finish);
                        if plain_store(em, epilogue) || vmap::epilogue_vectorizable(em, epilogue, n)
                        {
                            whole_stores(em, mb, nb, &acc, epilogue)?;
                        } else {
                            lane_stores(em, mb, nb, &acc, ncols, epilogue)?;
                        }
                        em.b.ins().jump(done, &[]);
                        em.b.switch_to_block(done);
                        return Ok(vec![]);
                    }
                    tile_stores(em, mb, nb, &acc, ncols, epilogue, n)?;
                    Ok(vec![])
                })?;
                Ok(())
            };

        em.for_loop(zero, nblocks, 1, &[], |em, kb, _| {
            let (mb_end, _) = em.for_loop(mlo, mhi, MR as i64, &[], |em, mb, _| {
                rows(em, mb, MR, kb)?;
                Ok(vec![])
            })?;
            em.for_loop(mb_end, mhi, 1, &[], |em, mv, _| {
                rows(em, mv, 1, kb)?;
                Ok(vec![])
            })?;
            Ok(vec![])
        })?;
        Ok(vec![])
    })?;
    Ok(())
}

/// The starting accumulators of a tile in block `kb` of `k`: zeros in the
/// first block, else the partial sums the previous block stored in the
/// output (an f32 output whose rows are whole panels).
fn partial_sums(em: &mut Emitter, mb: Value, nb: Value, rows: usize, kb: Value) -> Vec<Value> {
    let zf = em.b.ins().f32const(0.0);
    let zv = em.b.ins().splat(types::F32X4, zf);
    let first = em.b.ins().icmp_imm_s(IntCC::Equal, kb, 0);
    let mut init = Vec::with_capacity(rows * NR / 4);
    for r in 0..rows {
        let mv = em.b.ins().iadd_imm_s(mb, r as i64);
        let addr = out_addr(em, mv, nb);
        for j in 0..NR / 4 {
            let v = em.b.ins().load(types::F32X4, mem(), addr, 16 * j as i32);
            init.push(em.b.ins().select(first, zv, v));
        }
    }
    init
}

/// The address of output element `[.., m, n]` (f32) at the bound batch
/// variables.
fn out_addr(em: &mut Emitter, m_at: Value, n_at: Value) -> Value {
    let rank = em.k.output.shape.rank();
    let (m, n) = (Var(rank as u32 - 2), Var(rank as u32 - 1));
    let saved = (em.vars.insert(m, m_at), em.vars.insert(n, n_at));
    let flat = em.out_flat();
    for (v, old) in [(m, saved.0), (n, saved.1)] {
        match old {
            Some(x) => em.vars.insert(v, x),
            None => em.vars.remove(&v),
        };
    }
    let off = em.b.ins().ishl_imm_s(flat, 2);
    em.b.ins().iadd(em.bases[em.k.inputs.len()], off)
}

/// The sums over `k < kn` of a tile of `rows` rows (1 to [`MR`]) by one
/// panel of [`NR`] columns, added to `start` (zeros when `None`):
/// `rows * NR / 4` f32x4 accumulators, row by row.
/// `pa0` points at the tile's first row of `a` at `k = 0` (rows
/// `row_off` bytes apart, `k` steps `ak` bytes), `pb` at the tile's NR
/// contiguous columns of `b` at `k = 0` (`k` steps `bk` bytes: a packed
/// panel's row, or a row of plain `b`).
#[allow(clippy::too_many_arguments)]
fn tile_sums(
    em: &mut Emitter,
    rows: usize,
    pa0: Value,
    ak: Value,
    pb: Value,
    bk: Value,
    kn: Value,
    row_off: &[Off],
    start: Option<Vec<Value>>,
) -> Result<Vec<Value>, CodegenError> {
    let zero = em.iconst(0);
    let mut init = vec![pa0, pb];
    match start {
        Some(s) => init.extend(s),
        None => {
            let zf = em.b.ins().f32const(0.0);
            let zv = em.b.ins().splat(types::F32X4, zf);
            init.extend(std::iter::repeat_n(zv, rows * NR / 4));
        }
    }
    let offs = &row_off[..rows];
    // Contractions are compiled without Cranelift's optimizer, so the
    // steps stay in the order emitted and one block may hold several: a
    // short static `k` is unrolled completely (no loop-carried block
    // parameters, whose moves the register allocator placed on every back
    // edge), a longer one [`K_UNROLL`] steps per iteration.
    if let Some(kc) = static_int(em, kn)
        && (0..=K_FULL_UNROLL).contains(&kc)
    {
        let mut c = init;
        for _ in 0..kc {
            c = step(em, &c, ak, bk, offs);
        }
        return Ok(c[2..].to_vec());
    }
    let (k_end, acc) = em.for_loop(zero, kn, K_UNROLL as i64, &init, |em, _, c| {
        let mut c = c.to_vec();
        for _ in 0..K_UNROLL {
            c = step(em, &c, ak, bk, offs);
        }
        Ok(c)
    })?;
    let (_, acc) = em.for_loop(k_end, kn, 1, &acc, |em, _, c| Ok(step(em, c, ak, bk, offs)))?;
    Ok(acc[2..].to_vec())
}

/// The longest static `k` whose steps [`tile_sums`] emits one after the
/// other without a loop, and the steps per iteration of a longer one.
const K_FULL_UNROLL: i64 = 48;
const K_UNROLL: usize = 4;

/// The value of `v` when it is an integer constant.
fn static_int(em: &Emitter, v: Value) -> Option<i64> {
    let inst = em.b.func.dfg.value_def(v).inst()?;
    match em.b.func.dfg.insts[inst] {
        InstructionData::UnaryImm {
            opcode: Opcode::Iconst,
            imm,
        } => Some(imm.bits()),
        _ => None,
    }
}

/// The most `b` elements a gathered contraction packs at once (128 KiB of
/// stack frame).
const GATHER_FLOATS: u64 = 32 * 1024;

/// The static `k` extent of a contraction whose `b` operand can be packed
/// into a stack buffer of at least one panel.
fn gather_k(extent: &Expr) -> Option<u64> {
    match extent {
        Expr::Int(k) if *k > 0 && (*k as u64) * (NR as u64) <= GATHER_FLOATS => Some(*k as u64),
        _ => None,
    }
}

/// The row and column of a flattened pixel in a gathered `b` operand,
/// bound while the panels are filled (see [`pixel_split`]).
const PIX_Y: Var = Var(u32::MAX - 1);
const PIX_X: Var = Var(u32::MAX - 2);

/// When `b` reads its column `n` only as `n / w` and `n % w` for one
/// static `w > 0` (an implicit GEMM's output row and column): `w` and `b`
/// with those written [`PIX_Y`] and [`PIX_X`], which the fill carries from
/// pixel to pixel.
fn pixel_split(b: &Expr, n: Var) -> Option<(i64, Expr)> {
    fn width(e: &Expr, n: Var, w: &mut Option<i64>) {
        if let Expr::Binary(Binary::Div | Binary::Rem, a, c) = e
            && **a == Expr::Var(n)
            && let Expr::Int(c) = **c
            && c > 0
            && w.is_none()
        {
            *w = Some(c);
        }
        e.for_each_child(|c| width(c, n, w));
    }
    let mut w = None;
    width(b, n, &mut w);
    let w = w?;
    let split = b.substitute(&|e| match e {
        Expr::Binary(op @ (Binary::Div | Binary::Rem), a, c)
            if **a == Expr::Var(n) && **c == Expr::Int(w) =>
        {
            Some(Expr::Var(if *op == Binary::Div { PIX_Y } else { PIX_X }))
        }
        _ => None,
    });
    Some((w, split))
}

/// The `m`, `n` loops of one batch index when `b` is any f32 expression
/// (an implicit GEMM's im2col gather): for each chunk of columns, `b` is
/// evaluated once per element into panels on the stack (`[panel][k][NR]`,
/// columns past `n` zero), then every row tile runs against each panel
/// as in [`panels`], and rows left over run as one-row tiles.
fn gathered(
    em: &mut Emitter,
    kv: Var,
    kc: u64,
    b: &Expr,
    epilogue: &Expr,
    oa: &Operand,
    plain_b: Option<&Operand>,
) -> Result<(), CodegenError> {
    let extent = Expr::Int(kc as i64);
    let TileSpace {
        m,
        n,
        mlo,
        mhi,
        ncols,
        kn,
    } = tile_space(em, &extent)?;
    let (pa, am, ak) = oa.addressing(em, m, kv);
    let chunk = ((GATHER_FLOATS / kc) / NR as u64 * NR as u64).max(NR as u64) as i64;
    let split = pixel_split(b, n);
    // A plain `b` (contiguous columns): its address at `k = 0`, `n = 0`
    // and its `k` step, for a fill by vectors.
    let plain = plain_b.map(|ob| {
        let (p, _, s) = ob.addressing(em, n, kv);
        (p, s)
    });
    let slot = em.b.create_sized_stack_slot(StackSlotData::new(
        StackSlotKind::ExplicitSlot,
        (4 * chunk as u64 * kc) as u32,
        4,
    ));
    let ptr = em.b.func.dfg.value_type(em.bases[0]);
    let buf = em.b.ins().stack_addr(ptr, slot, 0);
    let panel_bytes = em.iconst(4 * NR as i64 * kc as i64);
    let bk = em.iconst(4 * NR as i64);
    let zero = em.iconst(0);
    let row_off = row_offsets(em, oa, m, am);
    let chunks = em.b.ins().iadd_imm_s(ncols, chunk - 1);
    let chunks = em.b.ins().sdiv_imm_s(chunks, chunk);
    let zf = em.fconst(0.0);
    em.for_loop(zero, chunks, 1, &[], |em, ci, _| {
        let c0 = em.b.ins().imul_imm_s(ci, chunk);
        let c1 = em.b.ins().iadd_imm_s(c0, chunk);
        let c1 = em.b.ins().smin(c1, ncols);
        let cols = em.b.ins().isub(c1, c0);
        let padded = em.b.ins().iadd_imm_s(cols, NR as i64 - 1);
        let padded = em.b.ins().band_imm_s(padded, -(NR as i64));
        // The chunk's first pixel as `(n / w, n % w)`, carried by the fill
        // instead of a division per element.
        let pix0 = split.as_ref().map(|(wd, _)| {
            let y = em.b.ins().sdiv_imm_s(c0, *wd);
            let x = em.b.ins().srem_imm_s(c0, *wd);
            (y, x)
        });
        // Fill: for each k, the chunk's columns (then the zero padding).
        em.for_loop(zero, kn, 1, &[], |em, k, _| {
            em.vars.insert(kv, k);
            let r = (|| {
                em.hoist(b, &em.bound())?;
                let row = em.b.ins().imul_imm_s(k, 4 * NR as i64);
                let row = em.b.ins().iadd(buf, row);
                let at = |em: &mut Emitter, j: Value| {
                    let q = em.b.ins().sshr_imm_s(j, NR.trailing_zeros() as i64);
                    let q = em.b.ins().imul(q, panel_bytes);
                    let l = em.b.ins().band_imm_s(j, NR as i64 - 1);
                    let l = em.b.ins().ishl_imm_s(l, 2);
                    let a = em.b.ins().iadd(row, q);
                    em.b.ins().iadd(a, l)
                };
                let (j_end, _) = match (plain, &split, pix0) {
                    (Some((pb, bks)), _, _) => {
                        // Whole panel rows as two vectors each, then the
                        // rest of the chunk's columns one by one.
                        let t = em.b.ins().imul(k, bks);
                        let src = em.b.ins().iadd(pb, t);
                        let t = em.b.ins().ishl_imm_s(c0, 2);
                        let src = em.b.ins().iadd(src, t);
                        // The source and destination pointers carried
                        // (a panel row per NR columns): no index
                        // arithmetic per vector.
                        let (j, _) =
                            em.for_loop(zero, cols, NR as i64, &[src, row], |em, _, p| {
                                let (s0, d) = (p[0], p[1]);
                                for h in 0..(NR / 4) as i32 {
                                    let v = em.b.ins().load(types::F32X4, input_mem(), s0, 16 * h);
                                    em.b.ins().store(mem(), v, d, 16 * h);
                                }
                                let s1 = em.b.ins().iadd_imm_s(s0, 4 * NR as i64);
                                let d1 = em.b.ins().iadd(d, panel_bytes);
                                Ok(vec![s1, d1])
                            })?;
                        em.for_loop(j, cols, 1, &[], |em, j, _| {
                            let t = em.b.ins().ishl_imm_s(j, 2);
                            let s0 = em.b.ins().iadd(src, t);
                            let v = em.b.ins().load(types::F32, input_mem(), s0, 0);
                            let d = at(em, j);
                            em.b.ins().store(mem(), v, d, 0);
                            Ok(vec![])
                        })?
                    }
                    (None, _, _) => match (&split, pix0) {
                        (Some((wd, bs)), Some((y0, x0))) => {
                            em.for_loop(zero, cols, 1, &[y0, x0], |em, j, yx| {
                                let nv = em.b.ins().iadd(c0, j);
                                em.vars.insert(n, nv);
                                em.vars.insert(PIX_Y, yx[0]);
                                em.vars.insert(PIX_X, yx[1]);
                                let v = em.emit(bs);
                                em.vars.remove(&n);
                                em.vars.remove(&PIX_Y);
                                em.vars.remove(&PIX_X);
                                let (v, _) = v?;
                                let a = at(em, j);
                                em.b.ins().store(mem(), v, a, 0);
                                let x1 = em.b.ins().iadd_imm_s(yx[1], 1);
                                let wrap = em.b.ins().icmp_imm_s(IntCC::Equal, x1, *wd);
                                let y1 = em.b.ins().iadd_imm_s(yx[0], 1);
                                let y = em.b.ins().select(wrap, y1, yx[0]);
                                let x = em.b.ins().select(wrap, zero, x1);
                                Ok(vec![y, x])
                            })?
                        }
                        _ => em.for_loop(zero, cols, 1, &[], |em, j, _| {
                            let nv = em.b.ins().iadd(c0, j);
                            em.vars.insert(n, nv);
                            let v = em.emit(b);
                            em.vars.remove(&n);
                            let (v, _) = v?;
                            let a = at(em, j);
                            em.b.ins().store(mem(), v, a, 0);
                            Ok(vec![])
                        })?,
                    },
                };
                em.for_loop(j_end, padded, 1, &[], |em, j, _| {
                    let a = at(em, j);
                    em.b.ins().store(mem(), zf, a, 0);
                    Ok(vec![])
                })?;
                Ok::<(), CodegenError>(())
            })();
            em.vars.remove(&kv);
            r.map(|()| vec![])
        })?;
        let npanels = em.b.ins().sshr_imm_s(padded, NR.trailing_zeros() as i64);
        let rows = |em: &mut Emitter, mb: Value, count: usize| -> Result<(), CodegenError> {
            em.for_loop(zero, npanels, 1, &[], |em, q, _| {
                let t = em.b.ins().imul(mb, am);
                let pa0 = em.b.ins().iadd(pa, t);
                let t = em.b.ins().imul(q, panel_bytes);
                let pbq = em.b.ins().iadd(buf, t);
                let nb = em.b.ins().ishl_imm_s(q, NR.trailing_zeros() as i64);
                let nb = em.b.ins().iadd(c0, nb);
                let acc = tile_sums(em, count, pa0, ak, pbq, bk, kn, &row_off, None)?;
                tile_stores(em, mb, nb, &acc, ncols, epilogue, n)?;
                Ok(vec![])
            })?;
            Ok(())
        };
        let (mb_end, _) = em.for_loop(mlo, mhi, MR as i64, &[], |em, mb, _| {
            rows(em, mb, MR)?;
            Ok(vec![])
        })?;
        em.for_loop(mb_end, mhi, 1, &[], |em, mv, _| {
            rows(em, mv, 1)?;
            Ok(vec![])
        })?;
        Ok(vec![])
    })?;
    Ok(())
}

/// Whether the epilogue is the accumulator stored as it is into an f32
/// output: the tiles then store whole vectors.
/// Stores a tile's accumulators at rows `mb ..` and columns `nb ..`: whole
/// panels (inside `ncols`) with vectors where the epilogue allows (`n` the
/// output's last variable), the last, partial one lane by lane.
fn tile_stores(
    em: &mut Emitter,
    mb: Value,
    nb: Value,
    acc: &[Value],
    ncols: Value,
    epilogue: &Expr,
    n: Var,
) -> Result<(), CodegenError> {
    if !(plain_store(em, epilogue) || vmap::epilogue_vectorizable(em, epilogue, n)) {
        return lane_stores(em, mb, nb, acc, ncols, epilogue);
    }
    let end = em.b.ins().iadd_imm_s(nb, NR as i64);
    let full = em.b.ins().icmp(IntCC::SignedLessThanOrEqual, end, ncols);
    let vec_block = em.b.create_block();
    let lanes = em.b.create_block();
    let done = em.b.create_block();
    em.b.ins().brif(full, vec_block, &[], lanes, &[]);
    em.b.switch_to_block(vec_block);
    whole_stores(em, mb, nb, acc, epilogue)?;
    em.b.ins().jump(done, &[]);
    em.b.switch_to_block(lanes);
    lane_stores(em, mb, nb, acc, ncols, epilogue)?;
    em.b.ins().jump(done, &[]);
    em.b.switch_to_block(done);
    Ok(())
}

fn plain_store(em: &Emitter, epilogue: &Expr) -> bool {
    matches!(epilogue, Expr::Acc) && em.k.output.dtype == DType::F32
}

/// Stores a tile's accumulators (`NR / 4` vectors per row) at rows
/// `mb ..` and columns `nb .. nb + NR`, all inside the output.
fn store_rows(em: &mut Emitter, mb: Value, nb: Value, acc: &[Value]) {
    for (r, row) in acc.chunks(NR / 4).enumerate() {
        let mv = em.b.ins().iadd_imm_s(mb, r as i64);
        let addr = out_addr(em, mv, nb);
        for (j, &v) in row.iter().enumerate() {
            em.b.ins().store(mem(), v, addr, 16 * j as i32);
        }
    }
}

/// The epilogue of each lane of a tile at rows `mb ..` and columns
/// `nb .. nb + NR`, for the columns below `ncols`.
fn lane_stores(
    em: &mut Emitter,
    mb: Value,
    nb: Value,
    acc: &[Value],
    ncols: Value,
    epilogue: &Expr,
) -> Result<(), CodegenError> {
    let rank = em.k.output.shape.rank();
    let (m, n) = (Var(rank as u32 - 2), Var(rank as u32 - 1));
    for (r, row) in acc.chunks(NR / 4).enumerate() {
        let mv = em.b.ins().iadd_imm_s(mb, r as i64);
        em.vars.insert(m, mv);
        for col in 0..NR {
            let nv = em.b.ins().iadd_imm_s(nb, col as i64);
            em.vars.insert(n, nv);
            let inside = em.b.ins().icmp(IntCC::SignedLessThan, nv, ncols);
            let store = em.b.create_block();
            let next = em.b.create_block();
            em.b.ins().brif(inside, store, &[], next, &[]);
            em.b.switch_to_block(store);
            let lane = em.b.ins().extractlane(row[col / 4], (col % 4) as u8);
            epilogue_at(em, lane, T::F, epilogue)?;
            em.b.ins().jump(next, &[]);
            em.b.switch_to_block(next);
        }
    }
    em.vars.remove(&n);
    em.vars.remove(&m);
    Ok(())
}

/// The row and column variables of a tiled contraction, its rows (the
/// range of axis 0 for a matrix, all of them under batch axes), its
/// columns and its `k` extent.
struct TileSpace {
    m: Var,
    n: Var,
    mlo: Value,
    mhi: Value,
    ncols: Value,
    kn: Value,
}

fn tile_space(em: &mut Emitter, extent: &Expr) -> Result<TileSpace, CodegenError> {
    let rank = em.k.output.shape.rank();
    let out = em.k.inputs.len();
    let (mlo, mhi) = if rank == 2 {
        em.range0
    } else {
        let zero = em.iconst(0);
        (zero, em.shapes[out][rank - 2])
    };
    let (kn, kt) = em.emit(extent)?;
    if kt != T::I {
        return Err(em.type_err(extent, "the extent is not an integer"));
    }
    Ok(TileSpace {
        m: Var(rank as u32 - 2),
        n: Var(rank as u32 - 1),
        mlo,
        mhi,
        ncols: em.shapes[out][rank - 1],
        kn,
    })
}

/// Stores a tile (rows `mb ..`, columns `nb .. nb + NR`, all inside the
/// output) a vector at a time: the accumulators themselves when the
/// epilogue is the bare accumulator, else the epilogue computed four
/// columns at a time on the vector path.
fn whole_stores(
    em: &mut Emitter,
    mb: Value,
    nb: Value,
    acc: &[Value],
    epilogue: &Expr,
) -> Result<(), CodegenError> {
    if plain_store(em, epilogue) {
        store_rows(em, mb, nb, acc);
        return Ok(());
    }
    let rank = em.k.output.shape.rank();
    let (m, n) = (Var(rank as u32 - 2), Var(rank as u32 - 1));
    for (r, row) in acc.chunks(NR / 4).enumerate() {
        let mv = em.b.ins().iadd_imm_s(mb, r as i64);
        em.vars.insert(m, mv);
        for (j, &a) in row.iter().enumerate() {
            let nv = em.b.ins().iadd_imm_s(nb, 4 * j as i64);
            em.vacc = Some(a);
            let v = em.vemit_at(epilogue, n, nv);
            em.vacc = None;
            let v = v?;
            let addr = out_addr(em, mv, nv);
            em.b.ins().store(mem(), v, addr, 0);
        }
    }
    em.vars.remove(&m);
    Ok(())
}
