//! The row grid ([`Grid::Rows`](kiln_runtime::cuda::kernel::Grid) with one
//! inner axis): one block per row of the output. Every reduction that does
//! not depend on the output's last variable (softmax's max and sum, a
//! norm's mean) is computed once per row by the whole block: each thread
//! folds a strided part, the warp combines with `shfl.sync.bfly`, the warps
//! through shared memory, and every thread reads the total. Then the
//! threads compute and store the row's elements, strided.

use std::collections::BTreeSet;

use kiln_dialect::kernel::{Binary, Expr, Reduction, Ty, Unary, Var};

use super::asm::Class;
use super::dtype_io::{Code, code_class, code_width};
use super::elements::{mov_ty, unravel, vector_load, vector_store, vectorizable};
use super::expr::{Em, Val, class_of, free_vars, mov_sfx, reads_acc};
use super::{PtxError, RowTuning};

/// Threads per block of row kernels.
pub(super) const ROW_BLOCK: u32 = 256;
/// Bytes of the static shared array combining the warps' partial results.
pub(super) const RED_BYTES: u32 = 2 * WARP_SLOTS;
/// Bytes of one set of the warps' partial results (8 bytes per warp);
/// the shared array holds two (see [`combine`]).
const WARP_SLOTS: u32 = 8 * (ROW_BLOCK / 32);

/// The reductions of `e` computable once per row of an output of rank
/// `rank`: free variables among `v0 .. v(rank-2)`, none rebound by an
/// enclosing reduction, no accumulator. Inner ones first, no duplicates.
pub(super) fn row_reductions(e: &Expr, rank: usize) -> Vec<Expr> {
    let mut out = Vec::new();
    collect(e, rank, &BTreeSet::new(), &mut out);
    out
}

fn collect(e: &Expr, rank: usize, bound: &BTreeSet<Var>, out: &mut Vec<Expr>) {
    if let Expr::Reduce {
        var, extent, body, ..
    } = e
    {
        collect(extent, rank, bound, out);
        let mut inner = bound.clone();
        inner.insert(*var);
        collect(body, rank, &inner, out);
        let fv = free_vars(e);
        let ok = fv
            .iter()
            .all(|v| (v.0 as usize) + 1 < rank && !bound.contains(v));
        if ok && !reads_acc(e) && !out.contains(e) {
            out.push(e.clone());
        }
        return;
    }
    e.for_each_child(|c| collect(c, rank, bound, out));
}

/// One value of type `t` exchanged with the lane `off` away (butterfly).
fn shfl(em: &mut Em, v: &Val, off: u32) -> Val {
    let out = Val {
        r: em.reg(class_of(v.t)),
        t: v.t,
    };
    match v.t {
        Ty::F32 => {
            let (a, b) = (em.reg(Class::R), em.reg(Class::R));
            em.ins(format!("mov.b32 {a}, {}", v.r));
            em.ins(format!("shfl.sync.bfly.b32 {b}, {a}, {off}, 31, -1"));
            em.ins(format!("mov.b32 {}, {b}", out.r));
        }
        Ty::F64 | Ty::I64 | Ty::Bool => {
            let (lo, hi, lo2, hi2) = (
                em.reg(Class::R),
                em.reg(Class::R),
                em.reg(Class::R),
                em.reg(Class::R),
            );
            em.ins(format!("mov.b64 {{{lo}, {hi}}}, {}", v.r));
            em.ins(format!("shfl.sync.bfly.b32 {lo2}, {lo}, {off}, 31, -1"));
            em.ins(format!("shfl.sync.bfly.b32 {hi2}, {hi}, {off}, 31, -1"));
            em.ins(format!("mov.b64 {}, {{{lo2}, {hi2}}}", out.r));
        }
    }
    out
}

/// Computes reduction `e` cooperatively by the block; every thread gets
/// the result.
fn block_reduce(em: &mut Em, e: &Expr, tid: &str, ntid: &str, smem: &str) -> Result<Val, PtxError> {
    let Expr::Reduce {
        op,
        var,
        extent,
        body,
    } = e
    else {
        return Err(em.type_err(e, "not a reduction"));
    };
    let (op2, acc, ms) = fold_start(em, e, *op, body)?;
    strided_columns(em, e, *var, extent, body, tid, ntid, |em, b| {
        let s = em.binary(e, op2, acc.clone(), b)?;
        em.ins(format!("mov.{ms} {}, {}", acc.r, s.r));
        Ok(())
    })?;
    combine(em, e, *op, acc, tid, smem)
}

/// The loop of reduction `e` (variable `var` over `extent`) with the
/// thread's strided share of the columns, `tid, tid + B, ..` (B threads):
/// `each` gets the body's value at each.
#[allow(clippy::too_many_arguments)]
fn strided_columns(
    em: &mut Em,
    e: &Expr,
    var: Var,
    extent: &Expr,
    body: &Expr,
    tid: &str,
    ntid: &str,
    mut each: impl FnMut(&mut Em, Val) -> Result<(), PtxError>,
) -> Result<(), PtxError> {
    let n = em.emit(extent)?;
    if n.t != Ty::I64 {
        return Err(em.type_err(e, "the extent is not an integer"));
    }
    let i = em.reg(Class::D);
    em.ins(format!("mov.b64 {i}, {tid}"));
    let (top, end) = (em.a.label("bred"), em.a.label("bred_end"));
    let p = em.reg(Class::P);
    em.a.place(&top);
    em.ins(format!("setp.ge.s64 {p}, {i}, {}", n.r));
    em.ins(format!("@{p} bra {end}"));
    let shadow = em.is_out_var(var);
    em.shadowed += u32::from(shadow);
    let prev = em.bind(var, i.clone());
    let b = em.emit(body);
    em.unbind(var, prev);
    em.shadowed -= u32::from(shadow);
    each(em, b?)?;
    em.ins(format!("add.s64 {i}, {i}, {ntid}"));
    em.ins(format!("bra.uni {top}"));
    em.a.place(&end);
    Ok(())
}

/// The start of reduction `r` folding values of `body`: the binary
/// operation that folds, a fresh accumulator holding the identity, and the
/// accumulator's `mov` suffix. Bools do not reduce.
fn fold_start(
    em: &mut Em,
    r: &Expr,
    op: Reduction,
    body: &Expr,
) -> Result<(Binary, Val, &'static str), PtxError> {
    let t = em.ty_of(body);
    if t == Ty::Bool {
        return Err(em.type_err(r, "a reduction of bools"));
    }
    Ok((Em::fold_op(op), accumulator(em, op, t), mov_sfx(t)))
}

/// A fresh accumulator register of type `t` holding `op`'s identity.
fn accumulator(em: &mut Em, op: kiln_dialect::kernel::Reduction, t: Ty) -> Val {
    let init = em.identity(op, t);
    let acc = Val {
        r: em.reg(class_of(t)),
        t,
    };
    em.ins(format!("mov.{} {}, {}", mov_sfx(t), acc.r, init.r));
    acc
}

/// Combines each thread's partial result `acc` of reduction `e` across
/// the block: butterfly shuffles in each warp, then the warps' results
/// through shared memory. Every thread gets the total. A barrier before
/// the warps' results are read, and one after (the next combine may write
/// the same slots).
fn combine(
    em: &mut Em,
    e: &Expr,
    op: kiln_dialect::kernel::Reduction,
    acc: Val,
    tid: &str,
    smem: &str,
) -> Result<Val, PtxError> {
    let out = combine_once(em, e, op, acc, tid, smem)?;
    em.ins("bar.sync 0");
    Ok(out)
}

/// [`combine`] with one barrier, through the set of warp slots at `smem`:
/// the caller alternates between the shared array's two sets, so a set is
/// written again only after the next combine's barrier, which every thread
/// reaches after reading it.
fn combine_once(
    em: &mut Em,
    e: &Expr,
    op: kiln_dialect::kernel::Reduction,
    acc: Val,
    tid: &str,
    smem: &str,
) -> Result<Val, PtxError> {
    let t = acc.t;
    let op2 = Em::fold_op(op);
    let ms = mov_sfx(t);
    for off in [16, 8, 4, 2, 1] {
        let o = shfl(em, &acc, off);
        let s = em.binary(e, op2, acc.clone(), o)?;
        em.ins(format!("mov.{ms} {}, {}", acc.r, s.r));
    }
    let (lane, warp, addr) = (em.reg(Class::D), em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("and.b64 {lane}, {tid}, 31"));
    em.ins(format!("shr.u64 {warp}, {tid}, 5"));
    em.ins(format!("mad.lo.s64 {addr}, {warp}, 8, {smem}"));
    let pl = em.reg(Class::P);
    em.ins(format!("setp.eq.s64 {pl}, {lane}, 0"));
    let st = match t {
        Ty::F32 => "f32",
        Ty::F64 => "f64",
        Ty::I64 | Ty::Bool => "b64",
    };
    em.ins(format!("@{pl} st.shared.{st} [{addr}], {}", acc.r));
    em.ins("bar.sync 0");
    let res = em.identity(op, t);
    let out = Val {
        r: em.reg(class_of(t)),
        t,
    };
    em.ins(format!("mov.{ms} {}, {}", out.r, res.r));
    for w in 0..ROW_BLOCK / 32 {
        let x = Val {
            r: em.reg(class_of(t)),
            t,
        };
        em.ins(format!("ld.shared.{st} {}, [{smem}+{}]", x.r, 8 * w));
        let s = em.binary(e, op2, out.clone(), x)?;
        em.ins(format!("mov.{ms} {}, {}", out.r, s.r));
    }
    Ok(out)
}

/// The registers every row kernel starts with, as 64-bit values: the
/// thread's index in the block, the block size, the first row (the block's
/// index), the row stride (the grid size) and the shared array's address.
fn row_registers(em: &mut Em) -> (String, String, String, String, String) {
    let (tid32, ntid32, cta32, ncta32) = (
        em.reg(Class::R),
        em.reg(Class::R),
        em.reg(Class::R),
        em.reg(Class::R),
    );
    em.ins(format!("mov.u32 {tid32}, %tid.x"));
    em.ins(format!("mov.u32 {ntid32}, %ntid.x"));
    em.ins(format!("mov.u32 {cta32}, %ctaid.x"));
    em.ins(format!("mov.u32 {ncta32}, %nctaid.x"));
    let (tid, ntid, row, nrows, smem) = (
        em.reg(Class::D),
        em.reg(Class::D),
        em.reg(Class::D),
        em.reg(Class::D),
        em.reg(Class::D),
    );
    em.ins(format!("cvt.u64.u32 {tid}, {tid32}"));
    em.ins(format!("cvt.u64.u32 {ntid}, {ntid32}"));
    em.ins(format!("cvt.u64.u32 {row}, {cta32}"));
    em.ins(format!("cvt.u64.u32 {nrows}, {ncta32}"));
    em.ins(format!("mov.u64 {smem}, kiln_red"));
    (tid, ntid, row, nrows, smem)
}

/// The row-grid body for `expr` with the row reductions `reds`, tuned as
/// `tuning` says (`None`: [`auto_tuning`]); the blocks per multiprocessor
/// the kernel should state (`.minnctapersm`; 0: none).
pub(super) fn emit_rows(
    em: &mut Em,
    expr: &Expr,
    reds: &[Expr],
    units: &str,
    tuning: Option<RowTuning>,
) -> Result<u32, PtxError> {
    if let Some(len) = resident_len(em, expr, reds) {
        return emit_rows_resident(em, expr, reds, units, len, tuning);
    }
    let tuning = tuning.unwrap_or_default();
    let out = em.k.output.clone();
    let rank = out.shape.rank();
    let (tid, ntid, row, nrows, smem) = row_registers(em);
    let n_last = if rank > 0 {
        em.out_shape[rank - 1].clone()
    } else {
        "1".to_string()
    };
    let (top, done) = (em.a.label("row"), em.a.label("exit"));
    let pexit = em.reg(Class::P);
    em.a.place(&top);
    em.ins(format!("setp.ge.s64 {pexit}, {row}, {units}"));
    em.ins(format!("@{pexit} bra {done}"));
    unravel(em, &row, rank.saturating_sub(1));
    em.cache.clear();
    let pairs = softmax_pairs(em, reds);
    for r in reds {
        if em.cache.iter().any(|(c, _)| c == r) {
            continue;
        }
        if let Some((m, s)) = pairs.iter().find(|(m, _)| m == r) {
            let (mv, sv) = block_online_softmax(em, m, reds, &tid, &ntid, &smem)?;
            em.cache.push((m.clone(), mv));
            em.cache.push((s.clone(), sv));
            continue;
        }
        let v = match grouping(em, r, reds) {
            Some(grouped) => block_reduce_grouped(em, r, &grouped, &tid, &ntid, &smem)?,
            None => block_reduce(em, r, &tid, &ntid, &smem)?,
        };
        em.cache.push((r.clone(), v));
    }
    if rank > 0
        && let Some(n) = super::expr::imm(&n_last).and_then(|n| u64::try_from(n).ok())
    {
        let body = at_column(expr, Var(rank as u32 - 1), reds);
        let g = long_group_width(n);
        let mut loads = Vec::new();
        column_loads(em, &body, g, &mut loads);
        let w = code_width(out.dtype);
        if g > 1 && out.dtype.bits() >= 8 && vectorizable(g as u32, w) {
            let base = em.reg(Class::D);
            em.ins(format!("mul.lo.s64 {base}, {row}, {n}"));
            let grouped = Grouped { body, g, n, loads };
            let mut codes = Vec::new();
            group_loop(em, &grouped, &tid, &ntid, |em, start, j| {
                let v = em.emit(&grouped.body)?;
                codes.push(em.encode(&v, out.dtype));
                if j + 1 == g as usize {
                    let (flat, addr) = (em.reg(Class::D), em.reg(Class::D));
                    em.ins(format!("add.s64 {flat}, {base}, {start}"));
                    let outp = em.out_ptr.clone();
                    em.ins(format!(
                        "mad.lo.s64 {addr}, {flat}, {}, {outp}",
                        out.dtype.bits() / 8
                    ));
                    vector_store(em, &addr, w, &std::mem::take(&mut codes));
                }
                Ok(())
            })?;
            em.cache.clear();
            em.ins(format!("add.s64 {row}, {row}, {nrows}"));
            em.ins(format!("bra.uni {top}"));
            em.a.place(&done);
            em.ins("ret");
            return Ok(tuning.min_blocks);
        }
    }
    let (base, c) = (em.reg(Class::D), em.reg(Class::D));
    let nl = em.in_reg(&n_last);
    em.ins(format!("mul.lo.s64 {base}, {row}, {nl}"));
    em.ins(format!("mov.b64 {c}, {tid}"));
    let (ctop, cend) = (em.a.label("col"), em.a.label("col_end"));
    let pc = em.reg(Class::P);
    em.a.place(&ctop);
    em.ins(format!("setp.ge.s64 {pc}, {c}, {nl}"));
    em.ins(format!("@{pc} bra {cend}"));
    if rank > 0 {
        em.bind(Var(rank as u32 - 1), c.clone());
    }
    let v = em.emit(expr)?;
    let code = em.encode(&v, out.dtype);
    let flat = em.reg(Class::D);
    em.ins(format!("add.s64 {flat}, {base}, {c}"));
    em.store_code(out.dtype, &flat, &code);
    em.ins(format!("add.s64 {c}, {c}, {ntid}"));
    em.ins(format!("bra.uni {ctop}"));
    em.a.place(&cend);
    em.cache.clear();
    em.ins(format!("add.s64 {row}, {row}, {nrows}"));
    em.ins(format!("bra.uni {top}"));
    em.a.place(&done);
    em.ins("ret");
    Ok(tuning.min_blocks)
}

/// Columns per group of a long row of `n` columns (outside the
/// row-resident form): the widest of 8, 4, 2 that divides `n`, else 1.
fn long_group_width(n: u64) -> u64 {
    [8, 4, 2]
        .into_iter()
        .find(|&g| n.is_multiple_of(g))
        .unwrap_or(1)
}

/// A loop over a row's columns a group at a time: the body at the column
/// variable [`COL`], the group width, the row length and the body's
/// column loads (vector loads per group).
struct Grouped {
    body: Expr,
    g: u64,
    n: u64,
    loads: Vec<Expr>,
}

/// How reduction `r` (over a static extent) walks its columns in groups,
/// when its body reads at least one input at the column: `None` for the
/// scalar loop.
fn grouping(em: &Em, r: &Expr, reds: &[Expr]) -> Option<Grouped> {
    let Expr::Reduce {
        var, extent, body, ..
    } = r
    else {
        return None;
    };
    let Expr::Int(n) = **extent else {
        return None;
    };
    let n = u64::try_from(n).ok().filter(|&n| n > 0)?;
    let g = long_group_width(n);
    if g == 1 {
        return None;
    }
    let body = at_column(body, *var, reds);
    let mut loads = Vec::new();
    column_loads(em, &body, g, &mut loads);
    (!loads.is_empty()).then_some(Grouped { body, g, n, loads })
}

/// Emits the group loop of `grouped`: thread `t` takes groups `t, t + B,
/// ..` (B threads), loads each group's column loads with vector loads, then
/// calls `each(em, start, j)` for its columns `start + j` in order, with
/// [`COL`] bound and [`Em::col_codes`] holding the column's codes. No memo:
/// nothing computed in the loop outlives an iteration.
fn group_loop(
    em: &mut Em,
    grouped: &Grouped,
    tid: &str,
    ntid: &str,
    mut each: impl FnMut(&mut Em, &str, usize) -> Result<(), PtxError>,
) -> Result<(), PtxError> {
    let (start, step) = (em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("mul.lo.s64 {start}, {tid}, {}", grouped.g));
    em.ins(format!("mul.lo.s64 {step}, {ntid}, {}", grouped.g));
    let (top, end) = (em.a.label("grp"), em.a.label("grp_end"));
    let p = em.reg(Class::P);
    em.a.place(&top);
    em.ins(format!("setp.ge.s64 {p}, {start}, {}", grouped.n));
    em.ins(format!("@{p} bra {end}"));
    let memo = em.memo.take();
    let starts = [(start.clone(), None)];
    let mut tables = vec![Vec::new(); grouped.g as usize];
    let loaded = load_groups(em, &grouped.loads, &starts, grouped.g, &mut tables);
    let mut result = loaded;
    for (j, table) in tables.into_iter().enumerate() {
        if result.is_err() {
            break;
        }
        let col = em.reg(Class::D);
        em.ins(format!("add.s64 {col}, {start}, {j}"));
        em.col_codes = table;
        let prev = em.bind(COL, col);
        result = each(em, &start, j);
        em.unbind(COL, prev);
        em.col_codes.clear();
    }
    em.memo = memo;
    result?;
    em.ins(format!("add.s64 {start}, {start}, {step}"));
    em.ins(format!("bra.uni {top}"));
    em.a.place(&end);
    Ok(())
}

/// [`block_reduce`] walking the columns in groups with vector loads.
fn block_reduce_grouped(
    em: &mut Em,
    r: &Expr,
    grouped: &Grouped,
    tid: &str,
    ntid: &str,
    smem: &str,
) -> Result<Val, PtxError> {
    let Expr::Reduce { op, .. } = r else {
        return Err(em.type_err(r, "not a reduction"));
    };
    let (op2, acc, ms) = fold_start(em, r, *op, &grouped.body)?;
    group_loop(em, grouped, tid, ntid, |em, _, _| {
        let v = em.emit(&grouped.body)?;
        let s = em.binary(r, op2, acc.clone(), v)?;
        em.ins(format!("mov.{ms} {}, {}", acc.r, s.r));
        Ok(())
    })?;
    combine(em, r, *op, acc, tid, smem)
}

/// Pairs of row reductions `m = max(v < n: f(v))`, `s = sum(w < n:
/// exp(f(w) - m))` in f32: softmax's two statistics, which one pass over
/// the row computes together (online softmax).
fn softmax_pairs(em: &Em, reds: &[Expr]) -> Vec<(Expr, Expr)> {
    let mut out = Vec::new();
    for m in reds {
        let Expr::Reduce {
            op: Reduction::Max,
            var: mv,
            extent: me,
            body: mb,
        } = m
        else {
            continue;
        };
        if em.ty_of(mb) != Ty::F32 {
            continue;
        }
        for s in reds {
            let Expr::Reduce {
                op: Reduction::Sum,
                var: sv,
                extent: se,
                body: sb,
            } = s
            else {
                continue;
            };
            let Expr::Unary(Unary::Exp, arg) = &**sb else {
                continue;
            };
            let Expr::Binary(Binary::Sub, h, mm) = &**arg else {
                continue;
            };
            let renamed = mb.substitute(&|x| (*x == Expr::Var(*mv)).then_some(Expr::Var(*sv)));
            if me == se && **mm == *m && **h == renamed {
                out.push((m.clone(), s.clone()));
                break;
            }
        }
    }
    out
}

/// Folds one element `x` into the running maximum `m` and sum `s` of
/// `exp(. - m)`, with one exponential: `e = exp(min(m, x) - max(m, x))`,
/// then `s = s e + 1` when `x` is the new maximum, else `s = s + e`. While
/// the maximum is -inf the sum stays 0.
fn online_push(em: &mut Em, m: &str, s: &str, x: &str) {
    let (mn, lo, d) = (em.reg(Class::F), em.reg(Class::F), em.reg(Class::F));
    em.ins(format!("max.NaN.f32 {mn}, {m}, {x}"));
    em.ins(format!("min.NaN.f32 {lo}, {m}, {x}"));
    em.ins(format!("sub.rn.f32 {d}, {lo}, {mn}"));
    let e = em.exp_f32(&d).r;
    let (a, b, t) = (em.reg(Class::F), em.reg(Class::F), em.reg(Class::F));
    let (big, p) = (em.reg(Class::P), em.reg(Class::P));
    em.ins(format!("setp.gt.f32 {big}, {x}, {m}"));
    em.ins(format!("selp.f32 {a}, {e}, 0f3F800000, {big}"));
    em.ins(format!("selp.f32 {b}, 0f3F800000, {e}, {big}"));
    em.ins(format!("mul.rn.f32 {t}, {s}, {a}"));
    em.ins(format!("add.rn.f32 {s}, {t}, {b}"));
    em.ins(format!("setp.eq.f32 {p}, {mn}, 0fFF800000"));
    em.ins(format!("@{p} mov.f32 {s}, 0f00000000"));
    em.ins(format!("mov.f32 {m}, {mn}"));
}

/// Folds `(m, s)` with another thread's `(mx, sx)`: the larger maximum,
/// and the sums rescaled to it. A maximum of -inf contributes nothing (no
/// `exp(-inf - -inf)`).
fn online_merge(em: &mut Em, m: &str, s: &str, mx: &str, sx: &str) {
    let (mn, d1, d2) = (em.reg(Class::F), em.reg(Class::F), em.reg(Class::F));
    em.ins(format!("max.NaN.f32 {mn}, {m}, {mx}"));
    em.ins(format!("sub.rn.f32 {d1}, {m}, {mn}"));
    em.ins(format!("sub.rn.f32 {d2}, {mx}, {mn}"));
    let e1 = em.exp_f32(&d1).r;
    let e2 = em.exp_f32(&d2).r;
    let (a, b, p) = (em.reg(Class::F), em.reg(Class::F), em.reg(Class::P));
    em.ins(format!("setp.eq.f32 {p}, {mn}, 0fFF800000"));
    em.ins(format!("mul.rn.f32 {a}, {s}, {e1}"));
    em.ins(format!("mul.rn.f32 {b}, {sx}, {e2}"));
    em.ins(format!("add.rn.f32 {s}, {a}, {b}"));
    em.ins(format!("@{p} mov.f32 {s}, 0f00000000"));
    em.ins(format!("mov.f32 {m}, {mn}"));
}

/// Softmax's maximum `m` and sum `s` (a pair of [`softmax_pairs`]) in one
/// pass over the row: each thread keeps a running maximum and a sum
/// rescaled whenever the maximum grows, then the pairs combine across the
/// warp (shuffles) and the warps (shared memory) the same way. Every
/// thread gets both totals.
fn block_online_softmax(
    em: &mut Em,
    m: &Expr,
    reds: &[Expr],
    tid: &str,
    ntid: &str,
    smem: &str,
) -> Result<(Val, Val), PtxError> {
    let Expr::Reduce {
        var, extent, body, ..
    } = m
    else {
        return Err(em.type_err(m, "not a reduction"));
    };
    let (rm, rs) = (em.reg(Class::F), em.reg(Class::F));
    em.ins(format!("mov.f32 {rm}, 0fFF800000"));
    em.ins(format!("mov.f32 {rs}, 0f00000000"));
    if let Some(grouped) = grouping(em, m, reds) {
        group_loop(em, &grouped, tid, ntid, |em, _, _| {
            let x = em.emit(&grouped.body)?;
            online_push(em, &rm, &rs, &x.r);
            Ok(())
        })?;
        return online_combine(em, rm, rs, tid, smem);
    }
    strided_columns(em, m, *var, extent, body, tid, ntid, |em, x| {
        online_push(em, &rm, &rs, &x.r);
        Ok(())
    })?;
    online_combine(em, rm, rs, tid, smem)
}

/// Combines each thread's running maximum `rm` and sum `rs` across the
/// warp (shuffles) and the block (shared memory); every thread gets both.
fn online_combine(
    em: &mut Em,
    rm: String,
    rs: String,
    tid: &str,
    smem: &str,
) -> Result<(Val, Val), PtxError> {
    for off in [16, 8, 4, 2, 1] {
        let (a, b, c, d) = (
            em.reg(Class::R),
            em.reg(Class::R),
            em.reg(Class::F),
            em.reg(Class::F),
        );
        em.ins(format!("mov.b32 {a}, {rm}"));
        em.ins(format!("shfl.sync.bfly.b32 {a}, {a}, {off}, 31, -1"));
        em.ins(format!("mov.b32 {c}, {a}"));
        em.ins(format!("mov.b32 {b}, {rs}"));
        em.ins(format!("shfl.sync.bfly.b32 {b}, {b}, {off}, 31, -1"));
        em.ins(format!("mov.b32 {d}, {b}"));
        online_merge(em, &rm, &rs, &c, &d);
    }
    let (lane, warp, addr) = (em.reg(Class::D), em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("and.b64 {lane}, {tid}, 31"));
    em.ins(format!("shr.u64 {warp}, {tid}, 5"));
    em.ins(format!("mad.lo.s64 {addr}, {warp}, 8, {smem}"));
    let pl = em.reg(Class::P);
    em.ins(format!("setp.eq.s64 {pl}, {lane}, 0"));
    em.ins(format!("@{pl} st.shared.v2.f32 [{addr}], {{{rm}, {rs}}}"));
    em.ins("bar.sync 0");
    let (tm, ts) = (em.reg(Class::F), em.reg(Class::F));
    em.ins(format!("mov.f32 {tm}, 0fFF800000"));
    em.ins(format!("mov.f32 {ts}, 0f00000000"));
    for w in 0..ROW_BLOCK / 32 {
        let (c, d) = (em.reg(Class::F), em.reg(Class::F));
        em.ins(format!("ld.shared.v2.f32 {{{c}, {d}}}, [{smem}+{}]", 8 * w));
        online_merge(em, &tm, &ts, &c, &d);
    }
    em.ins("bar.sync 0");
    Ok((Val { r: tm, t: Ty::F32 }, Val { r: ts, t: Ty::F32 }))
}

/// The value of one output element of a contraction: the sum over `k` of
/// `a * b` in order (each product and sum rounded, as the evaluator does),
/// then the epilogue.
pub(super) fn contract_value(
    em: &mut Em,
    kv: Var,
    extent: &Expr,
    a: &Expr,
    b: &Expr,
    epilogue: &Expr,
) -> Result<Val, PtxError> {
    let n = em.emit(extent)?;
    if n.t != Ty::I64 {
        return Err(em.type_err(extent, "the extent is not an integer"));
    }
    let t = em.ty_of(a);
    if t == Ty::Bool {
        return Err(em.type_err(a, "a contraction of bools"));
    }
    let acc = accumulator(em, kiln_dialect::kernel::Reduction::Sum, t);
    let ms = mov_sfx(t);
    let i = em.reg(Class::D);
    em.ins(format!("mov.b64 {i}, 0"));
    let (top, end) = (em.a.label("k"), em.a.label("k_end"));
    let p = em.reg(Class::P);
    em.a.place(&top);
    em.ins(format!("setp.ge.s64 {p}, {i}, {}", n.r));
    em.ins(format!("@{p} bra {end}"));
    let prev = em.bind(kv, i.clone());
    let x = em.emit(a);
    let y = x.and_then(|x| em.emit(b).map(|y| (x, y)));
    em.unbind(kv, prev);
    let (x, y) = y?;
    let mul = Expr::bin(kiln_dialect::kernel::Binary::Mul, a.clone(), b.clone());
    let prod = em.binary(&mul, kiln_dialect::kernel::Binary::Mul, x, y)?;
    let s = em.binary(&mul, kiln_dialect::kernel::Binary::Add, acc.clone(), prod)?;
    em.ins(format!("mov.{ms} {}, {}", acc.r, s.r));
    em.ins(format!("add.s64 {i}, {i}, 1"));
    em.ins(format!("bra.uni {top}"));
    em.a.place(&end);
    em.acc = Some(acc);
    let v = em.emit(epilogue);
    em.acc = None;
    v
}

/// Most columns one thread keeps in registers on the row-resident path.
const MAX_SLOTS: u64 = 16;
/// Larger expressions take the re-reading path: the memo's lookups grow
/// with the square of the expression's size.
const MAX_NODES: usize = 3000;
/// The column variable of the row-resident path (no kernel numbers its
/// variables this high).
const COL: Var = Var(u32::MAX);

/// Bytes per thread of row-invariant operands the row-resident path holds
/// in registers across its rows by default ([`auto_tuning`]).
const HELD_FIXED_BYTES: u64 = 64;

/// The most registers of row-invariant values the row-resident path keeps
/// decoded across its row loop (four bf16 weights over 16 columns).
const DECODED_FIXED: usize = 64;

fn nodes(e: &Expr) -> usize {
    let mut n = 1;
    e.for_each_child(|c| n += nodes(c));
    n
}

/// The row length when the row-resident path applies: a static last axis
/// of at most [`MAX_SLOTS`] columns per thread, every row reduction over
/// exactly that axis's length, and expressions of moderate size.
fn resident_len(em: &Em, expr: &Expr, reds: &[Expr]) -> Option<u64> {
    let rank = em.k.output.shape.rank();
    if rank == 0 {
        return None;
    }
    let len = u64::try_from(super::expr::imm(&em.out_shape[rank - 1])?).ok()?;
    if len == 0 || len > MAX_SLOTS * ROW_BLOCK as u64 {
        return None;
    }
    let same = reds
        .iter()
        .all(|r| matches!(r, Expr::Reduce { extent, .. } if **extent == Expr::Int(len as i64)));
    let size = nodes(expr) + reds.iter().map(nodes).sum::<usize>();
    let only_rows = only_row_reductions(expr, reds);
    (same && only_rows && size <= MAX_NODES).then_some(len)
}

/// Whether every reduction in `e` is one of the row reductions: a body
/// with a reduction of its own per column (a dot product inside a softmax)
/// has work enough per column that re-reading the row costs little, and
/// unrolling it per owned column would make the kernel large.
fn only_row_reductions(e: &Expr, reds: &[Expr]) -> bool {
    if let Expr::Reduce { extent, body, .. } = e {
        return reds.contains(e)
            && only_row_reductions(extent, reds)
            && only_row_reductions(body, reds);
    }
    let mut ok = true;
    e.for_each_child(|c| ok &= only_row_reductions(c, reds));
    ok
}

/// Columns per group on the row-resident path: the widest of 8, 4, 2 that
/// splits the row into whole groups, one or more for every thread of the
/// block; else 1.
fn group_width(len: u64) -> u64 {
    [8, 4, 2]
        .into_iter()
        .find(|&g| len.is_multiple_of(g) && len / g >= ROW_BLOCK as u64)
        .unwrap_or(1)
}

/// The loads of `e` the row-resident path reads a group of `g` columns at
/// a time, with vector loads: unguarded, the last index exactly the column
/// variable and no other index reading it, an input of whole-byte elements
/// whose static last axis splits into whole groups (so a group never
/// straddles a row and its address is aligned to the group's bytes, up to
/// 16). Reductions are not searched (row reductions are computed before;
/// a load under another one may index by its variable).
fn column_loads(em: &Em, e: &Expr, g: u64, out: &mut Vec<Expr>) {
    // Row reductions are computed before; a load under another reduction
    // may index by that reduction's variable.
    if matches!(e, Expr::Reduce { .. }) {
        return;
    }
    if let Expr::Load {
        input,
        index,
        guard: None,
    } = e
        && let Some((last, rest)) = index.split_last()
        && *last == Expr::Var(COL)
        && rest.iter().all(|i| !free_vars(i).contains(&COL))
        && let Some(buf) = em.k.inputs.get(*input)
        && buf.dtype.bits() >= 8
        && vectorizable(g as u32, code_width(buf.dtype))
        && let Some(n) = em.in_shape[*input].last().and_then(|d| super::expr::imm(d))
        && n > 0
        && (n as u64).is_multiple_of(g)
        && !out.contains(e)
    {
        out.push(e.clone());
    }
    e.for_each_child(|c| column_loads(em, c, g, out));
}

/// The `g` codes of column load `l` (see [`column_loads`]) for the group
/// of columns starting at `start`, by vector loads.
fn group_load(em: &mut Em, l: &Expr, start: &str, g: u64) -> Result<Vec<Code>, PtxError> {
    let Expr::Load { input, index, .. } = l else {
        return Err(em.type_err(l, "not a load"));
    };
    let mut flat = start.to_string();
    for (a, ie) in index[..index.len() - 1].iter().enumerate() {
        let v = em.emit(ie)?;
        if v.t != Ty::I64 {
            return Err(em.type_err(l, "an index is not an integer"));
        }
        let stride = em.in_strides[*input][a].clone();
        let term = em.mul_op(&v.r, &stride);
        let term = em.in_reg(&term);
        let r = em.reg(Class::D);
        em.ins(format!("add.s64 {r}, {flat}, {term}"));
        flat = r;
    }
    let dtype = em.k.inputs[*input].dtype;
    let w = code_width(dtype);
    let codes: Vec<Code> = (0..g)
        .map(|_| Code {
            r: em.reg(code_class(w)),
            w,
        })
        .collect();
    let addr = em.reg(Class::D);
    let base = em.in_ptr[*input].clone();
    em.ins(format!(
        "mad.lo.s64 {addr}, {flat}, {}, {base}",
        dtype.bits() / 8
    ));
    vector_load(em, &addr, w, &codes);
    Ok(codes)
}

/// The group loads of `loads` for every group of the thread (their first
/// columns `starts`), into the per-column tables `tables`.
fn load_groups(
    em: &mut Em,
    loads: &[Expr],
    starts: &[(String, Option<String>)],
    g: u64,
    tables: &mut [Vec<(Expr, Code)>],
) -> Result<(), PtxError> {
    for l in loads {
        for (k, (start, _)) in starts.iter().enumerate() {
            let codes = group_load(em, l, start, g)?;
            for (j, c) in codes.into_iter().enumerate() {
                tables[k * g as usize + j].push((l.clone(), c));
            }
        }
    }
    Ok(())
}

/// `e` with the column variable [`COL`] for `var`, except inside the row
/// reductions (computed before, looked up whole; one of them may bind
/// `var` itself).
fn at_column(e: &Expr, var: Var, reds: &[Expr]) -> Expr {
    e.substitute(&|x| match x {
        _ if reds.contains(x) => Some(x.clone()),
        Expr::Var(v) if *v == var => Some(Expr::Var(COL)),
        // Another reduction binding `var`: its body means its own.
        Expr::Reduce {
            op,
            var: v,
            extent,
            body,
        } if *v == var => Some(Expr::Reduce {
            op: *op,
            var: *v,
            extent: Box::new(at_column(extent, var, reds)),
            body: body.clone(),
        }),
        _ => None,
    })
}

/// The row grid with the row in registers. Thread `t` owns groups of `g`
/// consecutive columns ([`group_width`]): groups `t, t + B, t + 2B, ..`
/// (B threads per block; a warp's groups are contiguous, so its accesses
/// coalesce). The inputs read at the column ([`column_loads`]) are loaded a
/// group at a time with vector loads: once before the row loop when their
/// other indices do not depend on the row (weights: kept in registers while
/// the block walks its rows), else a row ahead (the block's next row's
/// loads are issued before the current row's work, so a block walking
/// several rows, as the executor launches row grids, keeps loads in flight
/// through its reductions).
/// The thread evaluates each reduction's body at its columns, folds, and
/// combines across the block, then evaluates the output at the same
/// columns and stores each group with vector stores. A value computed for
/// a column (a load, `gelu(x * s + b)`) is kept and reused by the later
/// reductions and the output ([`Em::memo`]), so each input element is
/// read from global memory once and each shared sub-expression computed
/// once. A thread's last group past the row's end (when the groups do not
/// fill the block's slots evenly) evaluates at the last group (in
/// bounds), folds as the identity and is not stored.
fn emit_rows_resident(
    em: &mut Em,
    expr: &Expr,
    reds: &[Expr],
    units: &str,
    len: u64,
    tuning: Option<RowTuning>,
) -> Result<u32, PtxError> {
    let out = em.k.output.clone();
    let rank = out.shape.rank();
    let (tid, _, row, nrows, smem) = row_registers(em);
    let (slots_off, slots_at) = (em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("mov.b64 {slots_off}, 0"));
    em.ins(format!("mov.b64 {slots_at}, {smem}"));
    let block = ROW_BLOCK as u64;
    let g = group_width(len);
    let groups = len / g;
    // Per group of the thread: its first column and whether it exists.
    let mut starts = Vec::new();
    for k in 0..groups.div_ceil(block) {
        let (gi, start) = (em.reg(Class::D), em.reg(Class::D));
        em.ins(format!("add.s64 {gi}, {tid}, {}", k * block));
        if (k + 1) * block > groups {
            let (p, gc) = (em.reg(Class::P), em.reg(Class::D));
            em.ins(format!("setp.lt.s64 {p}, {gi}, {groups}"));
            em.ins(format!("min.s64 {gc}, {gi}, {}", groups - 1));
            em.ins(format!("mul.lo.s64 {start}, {gc}, {g}"));
            starts.push((start, Some(p)));
        } else if g == 1 {
            starts.push((gi, None));
        } else {
            em.ins(format!("mul.lo.s64 {start}, {gi}, {g}"));
            starts.push((start, None));
        }
    }
    // Per column slot: its column and whether it exists.
    let mut cols = Vec::new();
    for (start, valid) in &starts {
        for j in 0..g {
            let c = if j == 0 {
                start.clone()
            } else {
                let c = em.reg(Class::D);
                em.ins(format!("add.s64 {c}, {start}, {j}"));
                c
            };
            cols.push((c, valid.clone()));
        }
    }
    let slots = cols.len();
    let mut bodies = Vec::with_capacity(reds.len());
    for r in reds {
        let Expr::Reduce { var, body, .. } = r else {
            return Err(em.type_err(r, "not a reduction"));
        };
        bodies.push(at_column(body, *var, reds));
    }
    let expr = at_column(expr, Var(rank as u32 - 1), reds);
    let mut loads = Vec::new();
    for b in bodies.iter().chain(std::iter::once(&expr)) {
        column_loads(em, b, g, &mut loads);
    }
    let (fixed, per_row): (Vec<Expr>, Vec<Expr>) = loads.into_iter().partition(|l| match l {
        Expr::Load { index, .. } => index[..index.len() - 1]
            .iter()
            .all(|i| free_vars(i).is_empty()),
        _ => false,
    });
    let tuning = tuning.unwrap_or_else(|| auto_tuning(em, &fixed, slots));
    let reload_fixed = tuning.reload_fixed;
    let mut fixed_codes = vec![Vec::new(); slots];
    // Row-invariant float loads decoded once, before the loop, when their
    // values fit [`DECODED_FIXED`] registers: each row then finds them in
    // its columns' memos instead of decoding per row.
    let mut fixed_vals: Vec<Vec<(Expr, Val)>> = vec![Vec::new(); slots];
    if !reload_fixed {
        load_groups(em, &fixed, &starts, g, &mut fixed_codes)?;
        let float_fixed = fixed
            .iter()
            .filter(
                |l| matches!(l, Expr::Load { input, .. } if em.k.inputs[*input].dtype.is_float()),
            )
            .count();
        if float_fixed * slots <= DECODED_FIXED {
            for (vals, codes) in fixed_vals.iter_mut().zip(&mut fixed_codes) {
                codes.retain(|(l, c)| {
                    let Expr::Load { input, .. } = l else {
                        return true;
                    };
                    let d = em.k.inputs[*input].dtype;
                    if !d.is_float() {
                        return true;
                    }
                    vals.push((l.clone(), em.decode(d, c)));
                    false
                });
            }
        }
    }
    // The per-row loads are pipelined: the block's first row is loaded
    // before the loop, and each iteration issues the loads of the block's
    // next row (its own row again when it has none: cache hits) before
    // working on the current one, so their latency hides behind that work.
    let mut current = vec![Vec::new(); slots];
    if !per_row.is_empty() {
        let first = em.reg(Class::D);
        em.ins(format!("sub.s64 {first}, {units}, 1"));
        em.ins(format!("min.s64 {first}, {first}, {row}"));
        em.ins(format!("max.s64 {first}, {first}, 0"));
        unravel(em, &first, rank - 1);
        load_groups(em, &per_row, &starts, g, &mut current)?;
    }

    let (top, done) = (em.a.label("row"), em.a.label("exit"));
    let pexit = em.reg(Class::P);
    em.a.place(&top);
    em.ins(format!("setp.ge.s64 {pexit}, {row}, {units}"));
    em.ins(format!("@{pexit} bra {done}"));
    let mut next_codes = vec![Vec::new(); slots];
    if !per_row.is_empty() {
        let (next, pn, which) = (em.reg(Class::D), em.reg(Class::P), em.reg(Class::D));
        em.ins(format!("add.s64 {next}, {row}, {nrows}"));
        em.ins(format!("setp.lt.s64 {pn}, {next}, {units}"));
        em.ins(format!("selp.b64 {which}, {next}, {row}, {pn}"));
        unravel(em, &which, rank - 1);
        load_groups(em, &per_row, &starts, g, &mut next_codes)?;
    }
    unravel(em, &row, rank - 1);
    em.cache.clear();
    if reload_fixed {
        fixed_codes = vec![Vec::new(); slots];
        load_groups(em, &fixed, &starts, g, &mut fixed_codes)?;
    }
    let mut codes = fixed_codes.clone();
    for (c, cur) in codes.iter_mut().zip(&current) {
        c.extend(cur.iter().cloned());
    }
    let mut memos = fixed_vals.clone();
    em.forget_row();
    // Evaluates `e` at column slot `i` with its memo and loaded codes.
    let at = |em: &mut Em,
              e: &Expr,
              i: usize,
              memos: &mut [Vec<(Expr, Val)>],
              codes: &mut [Vec<(Expr, Code)>]| {
        em.memo = Some(std::mem::take(&mut memos[i]));
        em.col_codes = std::mem::take(&mut codes[i]);
        let prev = em.bind(COL, cols[i].0.clone());
        em.col_var = Some(COL);
        let v = em.emit(e);
        em.col_var = None;
        em.unbind(COL, prev);
        memos[i] = em.memo.take().unwrap_or_default();
        codes[i] = std::mem::take(&mut em.col_codes);
        v
    };
    for (r, body) in reds.iter().zip(&bodies) {
        let Expr::Reduce { op, .. } = r else {
            return Err(em.type_err(r, "not a reduction"));
        };
        let (op2, acc, ms) = fold_start(em, r, *op, body)?;
        let t = acc.t;
        for (i, (_, valid)) in cols.iter().enumerate() {
            let mut v = at(em, body, i, &mut memos, &mut codes)?;
            if let Some(p) = valid {
                let id = em.identity(*op, t);
                v = em.select(p, v, id);
            }
            let s = em.binary(r, op2, acc.clone(), v)?;
            em.ins(format!("mov.{ms} {}, {}", acc.r, s.r));
        }
        // The two sets of warp slots in turn (one barrier per combine).
        let total = combine_once(em, r, *op, acc, &tid, &slots_at)?;
        em.ins(format!("xor.b64 {slots_off}, {slots_off}, {WARP_SLOTS}"));
        em.ins(format!("add.s64 {slots_at}, {smem}, {slots_off}"));
        em.cache.push((r.clone(), total));
    }
    let base = em.reg(Class::D);
    em.ins(format!("mul.lo.s64 {base}, {row}, {len}"));
    let w = code_width(out.dtype);
    let vector = out.dtype.bits() >= 8 && vectorizable(g as u32, w);
    for (k, (start, valid)) in starts.iter().enumerate() {
        let mut group = Vec::with_capacity(g as usize);
        for i in k * g as usize..(k + 1) * g as usize {
            let v = at(em, &expr, i, &mut memos, &mut codes)?;
            group.push(em.encode(&v, out.dtype));
        }
        let skip = em.a.label("tail");
        if let Some(p) = valid {
            em.ins(format!("@!{p} bra {skip}"));
        }
        if vector {
            let (flat, addr) = (em.reg(Class::D), em.reg(Class::D));
            em.ins(format!("add.s64 {flat}, {base}, {start}"));
            let outp = em.out_ptr.clone();
            em.ins(format!(
                "mad.lo.s64 {addr}, {flat}, {}, {outp}",
                out.dtype.bits() / 8
            ));
            vector_store(em, &addr, w, &group);
        } else {
            for (j, code) in group.iter().enumerate() {
                let flat = em.reg(Class::D);
                em.ins(format!(
                    "add.s64 {flat}, {base}, {}",
                    cols[k * g as usize + j].0
                ));
                em.store_code(out.dtype, &flat, code);
            }
        }
        em.a.place(&skip);
    }
    em.memo = None;
    em.col_codes.clear();
    em.forget_row();
    em.cache.clear();
    for (cur, next) in current.iter().zip(&next_codes) {
        for ((_, c), (_, n)) in cur.iter().zip(next) {
            em.ins(format!("mov.{} {}, {}", mov_ty(c.w), c.r, n.r));
        }
    }
    em.ins(format!("add.s64 {row}, {row}, {nrows}"));
    em.ins(format!("bra.uni {top}"));
    em.a.place(&done);
    em.ins("ret");
    Ok(tuning.min_blocks)
}

/// The row-resident path's tuning where none is asked for: a kernel whose
/// row-invariant operands (`fixed`, over `slots` columns per thread) take
/// more than [`HELD_FIXED_BYTES`] per thread reloads them every row (L1
/// hits) and states three blocks per multiprocessor; held in registers
/// (W1's four bf16 weights over 16 columns: 128 registers, two blocks)
/// they cost the warps that hide the row loads' latency. Measured on an
/// H100 (2026-12-05, W1): 0.0588 ms held, 0.0573 ms reloaded at three
/// blocks (72 registers). Other kernels hold them, decoded while few.
fn auto_tuning(em: &Em, fixed: &[Expr], slots: usize) -> RowTuning {
    let bytes: u64 = fixed
        .iter()
        .map(|l| match l {
            Expr::Load { input, .. } => u64::from(em.k.inputs[*input].dtype.bits() / 8),
            _ => 0,
        })
        .sum::<u64>()
        * slots as u64;
    if bytes > HELD_FIXED_BYTES {
        RowTuning {
            min_blocks: 3,
            reload_fixed: true,
        }
    } else {
        RowTuning::default()
    }
}
