//! Fused attention on tensor cores ([`Body::Attention`] kernels):
//! `mma.sync.m16n8k16` with f32 accumulation and an online softmax, so the
//! scores never leave the multiprocessor.
//!
//! A block of four warps computes 64 queries of one batch entry (a head):
//! each warp 16 queries, all of the value's features (up to 128). The block
//! copies its query rows to shared memory once, then walks the keys in
//! steps of 64:
//!
//! * each step's rows of `k` and `v` are copied with 16-byte `cp.async`
//!   into one of two stages, the next step's copies in flight while a step
//!   computes; rows past the keys are zero-filled;
//! * `s = q k^T` per warp (16x64, f32 in registers), query fragments held in
//!   registers for the whole walk, key fragments read with `ldmatrix`;
//! * the scores are scaled (by `scale * log2(e)`, so that `ex2` computes the
//!   exponentials), a bias term (a mask) added where there is one, masked
//!   where the step reaches past the keys or the
//!   causal diagonal (a branch the whole block takes or skips), and folded
//!   into the running row maximum and sum: the output rows so far are
//!   rescaled by `2^(old max - new max)`;
//! * the probabilities, rounded to the operands' type, are the `a`
//!   fragments of `o += p v` as they lie in the registers (the accumulator
//!   layout of `m16n8` is the operand layout of `m16n8k16`); value
//!   fragments are read with `ldmatrix.trans`.
//!
//! Causal blocks stop at the last step that reaches their diagonal; the
//! blocks with the most steps run first. After
//! the walk, the rows are divided by their sums (a row with every key
//! masked gives 0) and go through the epilogue like a contraction's
//! accumulators ([`store_tile`]).
//!
//! The path applies when the kernel computes in f32; `q`, `k` and `v` are
//! unguarded loads of bf16 (or all f16) tensors indexed `[batch.., m, d]`,
//! `[batch.., j, d]` and `[batch.., j, n]` whose batch indices read only
//! batch variables and whose rows are static multiples of 8 elements, or
//! such a load for the rows below a constant and any expression for the
//! others (a KV cache concatenated with the step's new keys), or any
//! expression without reductions (rotated queries; at least one operand
//! is copied): computed rows are evaluated by the threads and stored,
//! rounded to the tile's type, where the copies would have put them; the
//! head dim and the value width are 16, 32, 64 or 128, a bias term reads
//! only the batch variables, the query and the key, and the scale, the key count and the causal offset depend on dims
//! only. Other attention kernels run as map kernels
//! ([`Attention::as_map`]).
//!
//! On sm_90a (the default; `KILN_ATTN_WGMMA=0` keeps `mma.sync`;
//! [`Plan::use_warpgroups`]: no split, no bias, head dim and value width 64
//! or 128), a block is two warp groups over 128 queries instead
//! ([`Engine::Warpgroup`]): the tiles lie in the 128-byte swizzle (each 64
//! columns a block of 128-byte rows), `s = q k^T` is a
//! `wgmma.mma_async.m64nKk16` (K keys a step, 128 or 64) per 16 of the head dim reading the
//! queries and the keys from shared memory, and `o += p v` a
//! `m64nWk16` per 16 keys with the probabilities as register operands
//! (the `a` fragment of a warp group is `mma.sync`'s per warp, so the
//! scores, the softmax and the epilogue are the same code); each product is
//! waited for before its results are read or its stage is refilled.
//!
//! Decode attention (at most 16 queries of a head over a long static key
//! range) splits each tile's keys over several blocks
//! ([`Grid::SplitTiles`]): each walks its part, stores its partial result
//! (unnormalized rows, maxima, sums) to the scratch memory and counts its
//! arrival; the last block merges the parts in split order
//! ([`combine_splits`]).

use kiln_dialect::DType;
use kiln_dialect::kernel::{Attention, Body, Expr, Kernel, Ty, Var, max_var, simplify};

use super::asm::Class;
use super::elements::unravel;
use super::expr::{Em, free_vars};
use super::mma::{
    Storage, TileLoop, TileStore, copy16, descriptor, is_index_of, lane_offset, ldmatrix_lane,
    lead_offset, plain_load, store_rounded16, store_tile, swizzle_fields,
};
use super::{Grid, PtxArch, PtxError};

/// Keys per step of the `mma.sync` engine (and of warp groups unless
/// asked for 128).
const BLOCK_N: u32 = 64;
const STAGES: u32 = 2;
/// The 1024-byte alignment of the 128-byte swizzle's pattern: warpgroup
/// blocks align their shared memory up to it.
const SWIZZLE_ALIGN: u32 = 1024;

/// How a block multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Engine {
    /// Four warps of `mma.sync.m16n8k16`, 64 queries a block, operand
    /// fragments through `ldmatrix` from rows padded by 16 bytes (sm_80 and
    /// later).
    Sync,
    /// Two warp groups of `wgmma.mma_async` (sm_90a), 128 queries a block,
    /// tiles in the 128-byte swizzle: the scores' product reads the queries
    /// and the keys from shared memory, the values' product the
    /// probabilities from registers.
    Warpgroup,
}
/// log2(e): `exp(x) = 2^(x log2 e)`.
const LOG2E: f64 = std::f64::consts::LOG2_E;

/// An operand's rows: copied from memory (an unguarded load of a bf16/f16
/// input indexed `[batch.., row, col]`), computed by the block's threads,
/// or both: the rows below `until` copied and the others computed (a
/// concatenation along the rows, as a KV cache and the step's new keys).
#[derive(Clone, Debug)]
struct Operand {
    /// The input, its batch indices and the row's first column (an
    /// expression of the batch variables, a multiple of 8; `None`: 0).
    plain: Option<(usize, Vec<Expr>, Option<Expr>)>,
    /// Rows at or past this are computed (`None`: none are).
    until: Option<i64>,
    /// The element of a computed row, in the batch variables, `row` and
    /// `col`.
    computed: Option<Expr>,
    row: Var,
    col: Var,
}

/// A fused attention kernel's plan.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    elem: DType,
    /// The head dim (`q . k`) and the value width (output columns).
    depth: u32,
    width: u32,
    q: Operand,
    k: Operand,
    v: Operand,
    /// Whether the scores have a bias term.
    biased: bool,
    /// Blocks each query tile's keys are split over (a power of two; 1: no
    /// split). Decode attention (at most 16 queries of a head over a long
    /// key range) splits, so that more than one block per head streams the
    /// keys; the blocks of a tile combine through scratch memory.
    pub splits: u32,
    pub engine: Engine,
    /// Keys per step: 64, or (warp groups) 128.
    block_n: u32,
}

/// Splits beyond one block per tile need at least this many key steps per
/// split.
const STEPS_PER_SPLIT: i64 = 2;
/// The most blocks a tile's keys are split over.
const MAX_SPLITS: i64 = 16;

impl Plan {
    /// A shared row of `cols` elements, padded by 16 bytes so that the
    /// eight rows an `ldmatrix` reads fall in distinct bank groups
    /// ([`Engine::Sync`]).
    fn pitch(cols: u32) -> u32 {
        cols * 2 + 16
    }

    /// Queries per block (16 per warp).
    fn block_m(&self) -> u32 {
        match self.engine {
            Engine::Sync => 64,
            Engine::Warpgroup => 128,
        }
    }

    /// Bytes between consecutive rows of a tile of `cols` columns: padded
    /// rows, or (warp groups) the 128-byte rows of a 64-column block.
    fn row_bytes(&self, cols: u32) -> u32 {
        match self.engine {
            Engine::Sync => Self::pitch(cols),
            Engine::Warpgroup => 128,
        }
    }

    /// A tile of `rows` rows of `cols` columns: padded rows, or (warp
    /// groups) `cols / 64` blocks of `rows` rows of 128 bytes, each 1024
    /// bytes aligned.
    fn tile_bytes(&self, rows: u32, cols: u32) -> u32 {
        match self.engine {
            Engine::Sync => rows * Self::pitch(cols),
            Engine::Warpgroup => rows * cols * 2,
        }
    }

    fn q_bytes(&self) -> u32 {
        self.tile_bytes(self.block_m(), self.depth)
    }

    fn k_bytes(&self) -> u32 {
        self.tile_bytes(self.block_n, self.depth)
    }

    fn stage_bytes(&self) -> u32 {
        self.k_bytes() + self.tile_bytes(self.block_n, self.width)
    }

    pub fn shared_bytes(&self) -> u32 {
        let flag = if self.splits > 1 { 16 } else { 0 };
        let align = match self.engine {
            Engine::Sync => 0,
            Engine::Warpgroup => SWIZZLE_ALIGN,
        };
        self.q_bytes() + STAGES * self.stage_bytes() + flag + align
    }

    /// Takes the warpgroup engine where it applies, `keys` (64 or 128) a
    /// step: on sm_90a, one block per tile (no split), no bias term, and a
    /// head dim and value width of 64 or 128 (rows of whole 128-byte
    /// swizzle rows).
    pub fn use_warpgroups(&mut self, arch: PtxArch, keys: u32) {
        let wide = |x: u32| matches!(x, 64 | 128);
        if arch == PtxArch::Sm90a
            && self.splits == 1
            && !self.biased
            && wide(self.depth)
            && wide(self.width)
        {
            self.engine = Engine::Warpgroup;
            self.block_n = if keys == 128 { 128 } else { BLOCK_N };
        }
    }

    /// Whether each warp holds its query fragments in registers for the
    /// whole walk. A bias's evaluation at every score (its indices and
    /// loads) does not fit beside a head dim of 128's fragments (ptxas
    /// spilled at 255 registers): such kernels read them from shared
    /// memory every step (a quarter more `ldmatrix` traffic than the keys').
    fn hold_queries(&self) -> bool {
        !(self.biased && self.depth > 64)
    }

    /// A split block's partial result: per lane of warp 0, its output
    /// accumulators, its two rows' maxima and sums (f32), as 16-byte
    /// chunks, chunk `c` of lane `l` at `(c * 32 + l) * 16`.
    fn partial_chunks(&self) -> u32 {
        (self.width / 8 * 4 + 4) / 4
    }

    fn partial_bytes(&self) -> u32 {
        self.partial_chunks() * 32 * 16
    }

    pub fn threads(&self) -> u32 {
        match self.engine {
            Engine::Sync => 128,
            Engine::Warpgroup => 256,
        }
    }

    /// One block per 64 (warp groups: 128) queries of each batch entry
    /// (the value's columns in one tile), times the splits: per unit, its
    /// partial result and (for the first `units / splits` units) a tile's
    /// arrival counter.
    pub fn grid(&self) -> Grid {
        if self.splits > 1 {
            Grid::SplitTiles {
                tile_m: self.block_m(),
                tile_n: self.width,
                splits: self.splits,
                scratch: self.partial_bytes() + 4,
            }
        } else {
            Grid::Tiles {
                tile_m: self.block_m(),
                tile_n: self.width,
            }
        }
    }
}

/// The fused plan of `k`, when the path applies (see the module's
/// documentation).
pub(super) fn plan(k: &Kernel, _arch: PtxArch) -> Option<Plan> {
    if k.float != Ty::F32 {
        return None;
    }
    let Body::Attention(t) = &k.body else {
        return None;
    };
    let r = k.output.shape.rank();
    if r < 3 || k.output.dtype.bits() < 8 {
        return None;
    }
    let (mv, nv) = (Var(r as u32 - 2), Var(r as u32 - 1));
    // A bias reads the batch variables, the query and the key (the
    // template's contract; anything else runs the map form).
    if let Some(b) = &t.bias
        && free_vars(b)
            .iter()
            .any(|x| x.0 >= mv.0 && *x != mv && *x != t.j)
    {
        return None;
    }
    let fits = |x: i64| matches!(x, 16 | 32 | 64 | 128);
    let depth = match t.depth {
        Expr::Int(d) if fits(d) => d as u32,
        _ => return None,
    };
    let width = k.output.shape.0[r - 1].as_static()? as i64;
    if !fits(width) {
        return None;
    }
    let dims_only = |e: &Expr| free_vars(e).is_empty();
    if !dims_only(&t.scale) || !dims_only(&t.keys) || !t.causal.as_ref().is_none_or(dims_only) {
        return None;
    }
    let q = operand(k, &t.q, mv, t.d, r)?;
    let kk = operand(k, &t.k, t.j, t.d, r)?;
    let v = operand(k, &t.v, t.j, nv, r)?;
    // The tiles' type: the copied operands' (all alike); computed rows are
    // rounded to it.
    let types: Vec<DType> = [&q, &kk, &v]
        .iter()
        .filter_map(|o| o.plain.as_ref().map(|(i, _, _)| k.inputs[*i].dtype))
        .collect();
    let elem = *types.first()?;
    if types.iter().any(|t| *t != elem) {
        return None;
    }
    Some(Plan {
        elem,
        depth,
        width: width as u32,
        q,
        k: kk,
        v,
        biased: t.bias.is_some(),
        splits: splits(k.output.shape.0[r - 2].as_static(), &t.keys),
        engine: Engine::Sync,
        block_n: BLOCK_N,
    })
}

/// The splits of a tile's keys: at most 16 queries (all in the first
/// warp's rows) over a static key count of at least `2 * STEPS_PER_SPLIT`
/// steps: the largest power of two that leaves each split
/// `STEPS_PER_SPLIT` steps, at most `MAX_SPLITS`.
fn splits(queries: Option<u64>, keys: &Expr) -> u32 {
    let (Some(m), Expr::Int(keys)) = (queries, keys) else {
        return 1;
    };
    let steps = (keys + i64::from(BLOCK_N) - 1) / i64::from(BLOCK_N);
    if m > 16 || steps < 2 * STEPS_PER_SPLIT {
        return 1;
    }
    let most = (steps / STEPS_PER_SPLIT).min(MAX_SPLITS);
    1 << (63 - most.leading_zeros())
}

/// `e` as an operand: a plain load (see [`plain`]), `select(row < c,
/// plain, other)` (the rows from `c` on computed), or computed, an
/// expression of the batch variables, `row` and `col` without reductions.
fn operand(k: &Kernel, e: &Expr, row: Var, col: Var, r: usize) -> Option<Operand> {
    let op = |plain, until, computed| Operand {
        plain,
        until,
        computed,
        row,
        col,
    };
    if let Some(p) = plain(k, e, row, col, r, None) {
        return Some(op(Some(p), None, None));
    }
    let computable = |x: &Expr| {
        !super::has_reduce(x)
            && free_vars(x)
                .iter()
                .all(|v| (v.0 as usize) < r - 2 || *v == row || *v == col)
    };
    if let Expr::Select(c, a, b) = e
        && let Expr::Binary(kiln_dialect::kernel::Binary::Lt, x, until) = c.as_ref()
        && **x == Expr::Var(row)
        && let Expr::Int(until) = until.as_ref()
        && *until > 0
        && let Some(p) = plain(k, a, row, col, r, Some(*until))
        && computable(b)
    {
        return Some(op(Some(p), Some(*until), Some(b.as_ref().clone())));
    }
    computable(e).then(|| op(None, Some(0), Some(e.clone())))
}

/// `e` as a plain operand: an unguarded load of a bf16/f16 tensor at
/// `[batch.., row, off + col]` (`min(row, until - 1)` for the rows below
/// `until`), rows a static multiple of 8 elements, `off` an expression of
/// the batch variables that is a multiple of 8 (a view's columns, as W3's
/// values are each head's columns of the QKV projection's output; checked
/// by `simplify::chunk_index` over runs of 8 columns): the input, the batch
/// indices and `off` (`None` for 0).
fn plain(
    k: &Kernel,
    e: &Expr,
    row: Var,
    col: Var,
    r: usize,
    until: Option<i64>,
) -> Option<(usize, Vec<Expr>, Option<Expr>)> {
    let (input, index) = plain_load(k, e, r)?;
    let n = index.len();
    let clamped = until.is_some_and(|u| {
        index[n - 2]
            == Expr::bin(
                kiln_dialect::kernel::Binary::Min,
                Expr::Var(row),
                Expr::Int(u - 1),
            )
    });
    if !(is_index_of(k, &index[n - 2], row) || clamped) {
        return None;
    }
    let last = &index[n - 1];
    if *last == Expr::Var(col) {
        return Some((input, index[..n - 2].to_vec(), None));
    }
    // `off + col`: runs of 8 columns are 8 consecutive, aligned elements,
    // and the rest reads only batch variables.
    let cols = match &k.body {
        Body::Attention(t) if col == t.d => match t.depth {
            Expr::Int(d) => d,
            _ => return None,
        },
        _ => k.output.shape.0[r - 1].as_static()? as i64,
    };
    let chunk = Var(k.body.max_var() + 1);
    kiln_dialect::kernel::simplify::chunk_index(k, index, col, cols, 8, chunk)?;
    let off = last.substitute(&|x| (*x == Expr::Var(col)).then_some(Expr::Int(0)));
    free_vars(&off)
        .iter()
        .all(|v| (v.0 as usize) < r - 2)
        .then(|| (input, index[..n - 2].to_vec(), Some(off)))
}

/// One thread's 16-byte copies of a 64-row tile of an operand.
struct Copies<'o> {
    op: &'o Operand,
    /// Rows per tile (the row advances by this per tile).
    tile_rows: u32,
    /// The first element of the thread's 16 bytes in a row (s64).
    col: String,
    /// Rows at or past this are not copied (computed or zero-filled).
    copied: String,
    /// Rows at or past this (and below `limit`) are computed.
    until: String,
    /// Bytes between rows in the tile (within a 64-column block of a
    /// swizzled one).
    pitch: u32,
    /// The thread's copies: `passes`, each `rows_per_pass` rows after the
    /// last; the first one's byte offset in the tile, global address and
    /// row (at the next tile to copy). The others' follow from them (a
    /// register or two per operand live across the walk, not one per copy).
    passes: u32,
    rows_per_pass: u32,
    shared: String,
    global: String,
    row: String,
    /// Bytes between the global addresses of consecutive passes.
    pass_bytes: String,
    /// Rows at or past this are zero-filled.
    limit: String,
    /// The operand's start (where a zero-filled copy points).
    base: String,
    /// Bytes the global address advances per tile (64 rows).
    step: String,
}

/// Sets up a thread's copies of `rows`-row tiles of `op` (`cols` elements
/// a row, the first tile at row `row0`, later tiles `rows` rows on),
/// rows below `limit` read, into the plan's tile layout: padded rows, or
/// the 128-byte swizzle (16-byte chunk `c` of a 64-column block's row `r`
/// at `c ^ r % 8`; a thread's rows are 8 apart, so its chunk's place in
/// the row is the same in every pass).
#[allow(clippy::too_many_arguments)]
fn copies<'o>(
    em: &mut Em,
    p: &Plan,
    op: &'o Operand,
    cols: u32,
    rows: u32,
    tid: &str,
    row0: &str,
    limit: &str,
) -> Result<Copies<'o>, PtxError> {
    let lim = em.reg(Class::D);
    em.ins(format!("mov.b64 {lim}, {limit}"));
    let copied = em.reg(Class::D);
    let until = em.reg(Class::D);
    em.ins(format!("mov.b64 {until}, {}", op.until.unwrap_or(i64::MAX)));
    let (base, lead, row_stride) = match &op.plain {
        Some((i, lead, off)) => {
            let i = *i;
            let rank = em.in_shape[i].len();
            let mut lead = lead_offset(em, i, lead)?;
            if let Some(off) = off {
                let o = em.emit(off)?;
                if o.t != Ty::I64 {
                    return Err(em.type_err(off, "a column offset is not an integer"));
                }
                let sum = em.reg(Class::D);
                em.ins(format!("add.s64 {sum}, {lead}, {}", o.r));
                lead = sum;
            }
            let row_stride = em.in_strides[i][rank - 2].clone();
            let rows_in = em.in_shape[i][rank - 2].clone();
            em.ins(format!("min.s64 {copied}, {lim}, {rows_in}"));
            em.ins(format!("min.s64 {copied}, {copied}, {until}"));
            (em.in_ptr[i].clone(), lead, row_stride)
        }
        None => {
            // nothing copied; zero-filling copies point at the output
            em.ins(format!("mov.b64 {copied}, 0"));
            (em.out_ptr.clone(), "0".to_string(), "0".to_string())
        }
    };
    let per_row = cols / 8;
    let rows_per_pass = p.threads() / per_row;
    let passes = rows / rows_per_pass;
    let pitch = p.row_bytes(cols);
    let (r0, c0) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("shr.u32 {r0}, {tid}, {}", per_row.trailing_zeros()));
    em.ins(format!("and.b32 {c0}, {tid}, {}", per_row - 1));
    let sh = em.reg(Class::R);
    if p.engine == Engine::Warpgroup {
        // block c0 / 8, row r0, chunk (c0 % 8) ^ (r0 % 8)
        let (blk, x) = (em.reg(Class::R), em.reg(Class::R));
        em.ins(format!("shr.u32 {blk}, {c0}, 3"));
        em.ins(format!("mul.lo.u32 {sh}, {blk}, {}", rows * 128));
        em.ins(format!("mad.lo.u32 {sh}, {r0}, 128, {sh}"));
        em.ins(format!("xor.b32 {x}, {c0}, {r0}"));
        em.ins(format!("and.b32 {x}, {x}, 7"));
        em.ins(format!("mad.lo.u32 {sh}, {x}, 16, {sh}"));
    }
    em.ins(format!("shl.b32 {c0}, {c0}, 3"));
    let c64 = em.reg(Class::D);
    em.ins(format!("cvt.u64.u32 {c64}, {c0}"));
    if p.engine == Engine::Sync {
        em.ins(format!("mul.lo.u32 {sh}, {r0}, {pitch}"));
        em.ins(format!("mad.lo.u32 {sh}, {c0}, 2, {sh}"));
    }
    let row = em.reg(Class::D);
    em.ins(format!("cvt.u64.u32 {row}, {r0}"));
    em.ins(format!("add.s64 {row}, {row}, {row0}"));
    let el = em.reg(Class::D);
    em.ins(format!("mad.lo.s64 {el}, {row}, {row_stride}, {c64}"));
    em.ins(format!("add.s64 {el}, {el}, {lead}"));
    let g = em.reg(Class::D);
    em.ins(format!("mad.lo.s64 {g}, {el}, 2, {base}"));
    let pass_bytes = em.mul_op(&row_stride, &(rows_per_pass * 2).to_string());
    let step = em.mul_op(&row_stride, &(rows * 2).to_string());
    Ok(Copies {
        op,
        tile_rows: rows,
        col: c64,
        copied,
        until,
        pitch,
        passes,
        rows_per_pass,
        shared: sh,
        global: g,
        row,
        pass_bytes,
        limit: lim,
        base,
        step: em.in_reg(&step),
    })
}

impl Copies<'_> {
    /// Copy `j`'s row and global address (fresh registers).
    fn at(&self, em: &mut Em, j: u32) -> (String, String) {
        if j == 0 {
            return (self.row.clone(), self.global.clone());
        }
        let (row, g) = (em.reg(Class::D), em.reg(Class::D));
        em.ins(format!(
            "add.s64 {row}, {}, {}",
            self.row,
            j * self.rows_per_pass
        ));
        match super::expr::imm(&self.pass_bytes) {
            Some(b) => em.ins(format!(
                "add.s64 {g}, {}, {}",
                self.global,
                b * i64::from(j)
            )),
            None => em.ins(format!(
                "mad.lo.s64 {g}, {}, {j}, {}",
                self.pass_bytes, self.global
            )),
        }
        (row, g)
    }
}

/// Issues one tile's copies into the tile at shared address `dst0`; then
/// advances them to the next tile. The rows past the limit are
/// zero-filled; computed rows are not copied (so that no zero-fill lands on
/// them later) but evaluated by a loop over the thread's rows after the
/// copies, which stores them.
fn issue(em: &mut Em, c: &Copies, dst0: &str, elem: DType) -> Result<(), PtxError> {
    for j in 0..c.passes {
        let (row, g) = c.at(em, j);
        let slice = j * c.rows_per_pass * c.pitch;
        let p = em.reg(Class::P);
        em.ins(format!("setp.lt.s64 {p}, {row}, {}", c.copied));
        match &c.op.computed {
            None => copy16(em, &p, &g, &c.base, dst0, &c.shared, slice),
            Some(_) => {
                let pc = computed_row(em, c, &row);
                let skip = em.a.label("no_copy");
                em.ins(format!("@{pc} bra {skip}"));
                copy16(em, &p, &g, &c.base, dst0, &c.shared, slice);
                em.a.place(&skip);
            }
        }
    }
    if let Some(e) = &c.op.computed {
        // the thread's rows are `row + i * rows_per_pass`
        let (row, dst, i) = (em.reg(Class::D), em.reg(Class::R), em.reg(Class::R));
        em.ins(format!("mov.b64 {row}, {}", c.row));
        em.ins(format!("add.u32 {dst}, {dst0}, {}", c.shared));
        em.ins(format!("mov.u32 {i}, 0"));
        let (top, next) = (em.a.label("rows"), em.a.label("rows_next"));
        em.a.place(&top);
        let pc = computed_row(em, c, &row);
        em.ins(format!("@!{pc} bra {next}"));
        compute_row(em, c, &row, &dst, e, elem)?;
        em.a.place(&next);
        em.ins(format!("add.s64 {row}, {row}, {}", c.rows_per_pass));
        em.ins(format!(
            "add.u32 {dst}, {dst}, {}",
            c.rows_per_pass * c.pitch
        ));
        em.ins(format!("add.u32 {i}, {i}, 1"));
        let pl = em.reg(Class::P);
        em.ins(format!("setp.lt.u32 {pl}, {i}, {}", c.passes));
        em.ins(format!("@{pl} bra {top}"));
    }
    em.ins(format!("add.s64 {0}, {0}, {1}", c.global, c.step));
    em.ins(format!("add.s64 {0}, {0}, {1}", c.row, c.tile_rows));
    Ok(())
}

/// Whether `row` is computed: at or past `until`, below the limit.
fn computed_row(em: &mut Em, c: &Copies, row: &str) -> String {
    let (pc, pl) = (em.reg(Class::P), em.reg(Class::P));
    em.ins(format!("setp.ge.s64 {pc}, {row}, {}", c.until));
    em.ins(format!("setp.lt.s64 {pl}, {row}, {}", c.limit));
    em.ins(format!("and.pred {pc}, {pc}, {pl}"));
    pc
}

/// A computed operand's expression at each of a run's 8 columns
/// ([`simplify::at_run_lane`]) and the variable numbering the runs: `None`
/// where the columns are not a static multiple of 8.
fn lane_exprs(k: &Kernel, e: &Expr, col: Var) -> Option<(Var, Vec<Expr>)> {
    let cols = match &k.body {
        Body::Attention(t) if col == t.d => match t.depth {
            Expr::Int(d) => d,
            _ => return None,
        },
        _ => k.output.shape.0.last()?.as_static()? as i64,
    };
    let chunk = Var(k.body.max_var().max(max_var(e)) + 1);
    let chunk = Var(chunk.0.max(k.output.shape.rank() as u32));
    (0..8)
        .map(|x| simplify::at_run_lane(k, e, col, cols, 8, chunk, x))
        .collect::<Option<Vec<_>>>()
        .map(|lanes| (chunk, lanes))
}

/// Evaluates the thread's 8 elements of computed row `row` and stores
/// them, rounded to `elem`, at shared address `dst`.
fn compute_row(
    em: &mut Em,
    c: &Copies,
    row: &str,
    dst: &str,
    e: &Expr,
    elem: DType,
) -> Result<(), PtxError> {
    em.bind(c.op.row, row.to_string());
    let mut vals = Vec::with_capacity(8);
    if let Some((chunk, lanes)) = lane_exprs(em.k, e, c.op.col) {
        // The 8 columns' own expressions (a rotary embedding's parity
        // decided, its partner shared), values shared across them.
        let ch = em.reg(Class::D);
        em.ins(format!("shr.s64 {ch}, {}, 3", c.col));
        let prev = em.bind(chunk, ch);
        em.memo = Some(Vec::new());
        let mut out = Ok(());
        for x in &lanes {
            match em.emit(x) {
                Ok(v) if v.t == Ty::F32 => vals.push(v.r),
                Ok(_) => {
                    out = Err(em.type_err(e, "a computed attention operand is not an f32"));
                    break;
                }
                Err(err) => {
                    out = Err(err);
                    break;
                }
            }
        }
        em.memo = None;
        em.unbind(chunk, prev);
        out?;
        store_rounded16(em, &vals, elem, dst);
        return Ok(());
    }
    for x in 0..8 {
        let col = em.reg(Class::D);
        em.ins(format!("add.s64 {col}, {}, {x}", c.col));
        em.bind(c.op.col, col);
        // one element's values shared within it (a select's two sides
        // read the same operands), none across elements or the branch
        em.memo = Some(Vec::new());
        let v = em.emit(e);
        em.memo = None;
        let v = v?;
        if v.t != Ty::F32 {
            return Err(em.type_err(e, "a computed attention operand is not an f32"));
        }
        vals.push(v.r);
    }
    store_rounded16(em, &vals, elem, dst);
    Ok(())
}

/// Emits the block loop of a fused attention kernel.
pub(super) fn emit(em: &mut Em, p: &Plan, t: &Attention, units: &str) -> Result<(), PtxError> {
    let r = em.k.output.shape.rank();
    let ty = match p.elem {
        DType::BF16 => "bf16",
        _ => "f16",
    };
    let mma = format!("mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32");
    let m_dim = em.out_shape[r - 2].clone();
    let n_dim = em.out_shape[r - 1].clone();
    let m_dim = em.in_reg(&m_dim);
    let n_dim = em.in_reg(&n_dim);
    let keys = em.emit(&t.keys)?;
    if keys.t != Ty::I64 {
        return Err(em.type_err(&t.keys, "the key count is not an integer"));
    }
    let keys = em.in_reg(&keys.r);
    let scale = em.emit(&t.scale)?;
    if scale.t != Ty::F32 {
        return Err(em.type_err(&t.scale, "the scale is not an f32"));
    }
    let scale2 = em.reg(Class::F);
    let log2e = em.fconst(LOG2E);
    em.ins(format!("mul.f32 {scale2}, {}, {}", scale.r, log2e.r));
    let offset = match &t.causal {
        Some(c) => {
            let o = em.emit(c)?;
            if o.t != Ty::I64 {
                return Err(em.type_err(c, "the causal offset is not an integer"));
            }
            Some(em.in_reg(&o.r))
        }
        None => None,
    };
    let block_m = p.block_m();
    let bm_log = block_m.trailing_zeros();
    let wg = p.engine == Engine::Warpgroup;
    let tiles_m = em.reg(Class::D);
    em.ins(format!("add.s64 {tiles_m}, {m_dim}, {}", block_m - 1));
    em.ins(format!("shr.s64 {tiles_m}, {tiles_m}, {bm_log}"));
    let kblocks = em.reg(Class::D);
    let block_n = p.block_n;
    let bn_log = block_n.trailing_zeros();
    em.ins(format!("add.s64 {kblocks}, {keys}, {}", block_n - 1));
    em.ins(format!("shr.s64 {kblocks}, {kblocks}, {bn_log}"));
    em.ins(format!("max.s64 {kblocks}, {kblocks}, 0"));

    // Thread coordinates and the lanes' `ldmatrix` row addresses: lane `l`
    // gives row `l % 8` of matrix `l / 8` (see `mma::lane_offset`).
    let (tid, lane, warp) = (em.reg(Class::R), em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("mov.u32 {tid}, %tid.x"));
    em.ins(format!("and.b32 {lane}, {tid}, 31"));
    em.ins(format!("shr.u32 {warp}, {tid}, 5"));
    let smem = em.reg(Class::R);
    em.ins(format!("mov.u32 {smem}, kiln_smem"));
    if wg {
        em.ins(format!("add.u32 {smem}, {smem}, {}", SWIZZLE_ALIGN - 1));
        em.ins(format!("and.b32 {smem}, {smem}, -{SWIZZLE_ALIGN}"));
    }
    let (wm_base, zero) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("shl.b32 {wm_base}, {warp}, 4"));
    em.ins(format!("mov.u32 {zero}, 0"));
    // `mma.sync` reads its fragments with `ldmatrix` from per-lane row
    // addresses; warp groups read shared memory through descriptors.
    let (pd, pw) = (Plan::pitch(p.depth), Plan::pitch(p.width));
    let (q_lane, k_lane, v_lane) = if wg {
        (String::new(), String::new(), String::new())
    } else {
        let (lo, hi, row) = ldmatrix_lane(em, &lane);
        let q_lane = lane_offset(em, Storage::OuterK, pd, &wm_base, &lo, &hi, &row);
        em.ins(format!("add.u32 {q_lane}, {q_lane}, {smem}"));
        let k_lane = lane_offset(em, Storage::OuterK, pd, &zero, &hi, &lo, &row);
        em.ins(format!("add.u32 {k_lane}, {k_lane}, {smem}"));
        em.ins(format!("add.u32 {k_lane}, {k_lane}, {}", p.q_bytes()));
        let v_lane = lane_offset(em, Storage::KOuter, pw, &zero, &hi, &lo, &row);
        em.ins(format!("add.u32 {v_lane}, {v_lane}, {smem}"));
        em.ins(format!(
            "add.u32 {v_lane}, {v_lane}, {}",
            p.q_bytes() + p.k_bytes()
        ));
        (q_lane, k_lane, v_lane)
    };
    // This thread's accumulator rows and columns within a warp's tiles.
    let (g, t4) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("shr.u32 {g}, {lane}, 2"));
    em.ins(format!("and.b32 {t4}, {lane}, 3"));
    let (grow, tcol) = (em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("add.u32 {g}, {g}, {wm_base}"));
    em.ins(format!("cvt.u64.u32 {grow}, {g}"));
    em.ins(format!("shl.b32 {t4}, {t4}, 1"));
    em.ins(format!("cvt.u64.u32 {tcol}, {t4}"));

    let s_tiles = (block_n / 8) as usize;
    let o_tiles = (p.width / 8) as usize;
    let o: Vec<String> = (0..o_tiles * 4).map(|_| em.reg(Class::F)).collect();
    let qf: Vec<Vec<String>> = if wg {
        Vec::new()
    } else {
        (0..p.depth / 16)
            .map(|_| (0..4).map(|_| em.reg(Class::R)).collect())
            .collect()
    };
    let mrow: Vec<String> = (0..2).map(|_| em.reg(Class::F)).collect();
    let lsum: Vec<String> = (0..2).map(|_| em.reg(Class::F)).collect();

    // The block loop.
    let split = p.splits > 1;
    let s_log = p.splits.trailing_zeros();
    let scratch = if split {
        super::splits::scratch(em)
    } else {
        String::new()
    };
    let pwarp = em.reg(Class::P);
    em.ins(format!("setp.ne.u32 {pwarp}, {warp}, 0"));
    let lp = TileLoop::start(em, units);
    // A split block's unit: its tile (`tile / splits`) and its part of
    // the tile's keys (`tile % splits`).
    let (tile, units_t, part) = if split {
        let (t, s32) = super::splits::unit_parts(em, &lp.tile, p.splits);
        let (u, s) = (em.reg(Class::D), em.reg(Class::D));
        em.ins(format!("shr.u64 {u}, {units}, {s_log}"));
        em.ins(format!("cvt.u64.u32 {s}, {s32}"));
        (t, u, s)
    } else {
        (lp.tile.clone(), units.to_string(), String::new())
    };
    let units_all = units.to_string();
    let units = units_t.as_str();
    let (tm, bflat) = (em.reg(Class::D), em.reg(Class::D));
    if offset.is_some() {
        // Causal blocks take more steps the further down they start: the
        // query tile is the slow index, longest first (every batch entry's
        // last tile, then the ones before), so the last wave is the
        // shortest.
        let nbatch = em.reg(Class::D);
        em.ins(format!("div.u64 {nbatch}, {units}, {tiles_m}"));
        em.ins(format!("rem.u64 {bflat}, {tile}, {nbatch}"));
        em.ins(format!("div.u64 {tm}, {tile}, {nbatch}"));
        em.ins(format!("sub.s64 {tm}, {tiles_m}, {tm}"));
        em.ins(format!("sub.s64 {tm}, {tm}, 1"));
    } else {
        em.ins(format!("rem.u64 {tm}, {tile}, {tiles_m}"));
        em.ins(format!("div.u64 {bflat}, {tile}, {tiles_m}"));
    }
    unravel(em, &bflat, r - 2);
    let m0 = em.reg(Class::D);
    em.ins(format!("shl.b64 {m0}, {tm}, {bm_log}"));
    // The key steps this block takes: all of them, or (causal) up to the
    // one holding its last query's diagonal.
    let steps = em.reg(Class::D);
    em.ins(format!("mov.b64 {steps}, {kblocks}"));
    if let Some(off) = &offset {
        let (lim, pneg) = (em.reg(Class::D), em.reg(Class::P));
        em.ins(format!("add.s64 {lim}, {m0}, {}", block_m - 1));
        em.ins(format!("add.s64 {lim}, {lim}, {off}"));
        em.ins(format!("setp.lt.s64 {pneg}, {lim}, 0"));
        em.ins(format!("shr.s64 {lim}, {lim}, {bn_log}"));
        em.ins(format!("add.s64 {lim}, {lim}, 1"));
        em.ins(format!("@{pneg} mov.b64 {lim}, 0"));
        em.ins(format!("min.s64 {steps}, {steps}, {lim}"));
    }
    // This block's steps: [first, steps), its part of them when split.
    let first = em.reg(Class::D);
    if split {
        let hi = em.reg(Class::D);
        em.ins(format!("mul.lo.s64 {first}, {part}, {steps}"));
        em.ins(format!("shr.s64 {first}, {first}, {s_log}"));
        em.ins(format!("add.s64 {hi}, {part}, 1"));
        em.ins(format!("mul.lo.s64 {hi}, {hi}, {steps}"));
        em.ins(format!("shr.s64 {steps}, {hi}, {s_log}"));
    } else {
        em.ins(format!("mov.b64 {first}, 0"));
    }
    let row0 = em.reg(Class::D);
    em.ins(format!("shl.b64 {row0}, {first}, {bn_log}"));
    let cq = copies(em, p, &p.q, p.depth, block_m, &tid, &m0, &m_dim)?;
    let ck = copies(em, p, &p.k, p.depth, block_n, &tid, &row0, &keys)?;
    let cv = copies(em, p, &p.v, p.width, block_n, &tid, &row0, &keys)?;
    for a in &o {
        em.ins(format!("mov.f32 {a}, 0f00000000"));
    }
    for h in 0..2 {
        em.ins(format!("mov.f32 {}, 0fFF800000", mrow[h]));
        em.ins(format!("mov.f32 {}, 0f00000000", lsum[h]));
    }
    // The queries and the first step's keys and values.
    issue(em, &cq, &smem, p.elem)?;
    let (ld_stage, c_stage) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("add.u32 {c_stage}, {smem}, {}", p.q_bytes()));
    let vdst = em.reg(Class::R);
    em.ins(format!("add.u32 {vdst}, {c_stage}, {}", p.k_bytes()));
    issue(em, &ck, &c_stage, p.elem)?;
    issue(em, &cv, &vdst, p.elem)?;
    em.ins("cp.async.commit_group");
    em.ins(format!(
        "add.u32 {ld_stage}, {c_stage}, {}",
        p.stage_bytes()
    ));

    let jb = em.reg(Class::D);
    em.ins(format!("mov.b64 {jb}, {first}"));
    let (ktop, kend) = (em.a.label("keys"), em.a.label("keys_end"));
    let pk = em.reg(Class::P);
    em.a.place(&ktop);
    em.ins(format!("setp.ge.s64 {pk}, {jb}, {steps}"));
    em.ins(format!("@{pk} bra {kend}"));
    // This step's copies have landed, and every warp is done with the
    // stage the next step's copies go to.
    em.ins("cp.async.wait_group 0");
    if wg {
        // The copies and computed rows are generic-proxy writes; `wgmma`
        // reads through the async proxy.
        em.ins("fence.proxy.async.shared::cta");
    }
    em.ins("bar.sync 0");
    {
        let (nx, pl, skip) = (em.reg(Class::D), em.reg(Class::P), em.a.label("last"));
        em.ins(format!("add.s64 {nx}, {jb}, 1"));
        em.ins(format!("setp.ge.s64 {pl}, {nx}, {steps}"));
        em.ins(format!("@{pl} bra.uni {skip}"));
        let vdst = em.reg(Class::R);
        em.ins(format!("add.u32 {vdst}, {ld_stage}, {}", p.k_bytes()));
        issue(em, &ck, &ld_stage, p.elem)?;
        issue(em, &cv, &vdst, p.elem)?;
        em.a.place(&skip);
        em.ins("cp.async.commit_group");
    }
    // A split block's queries are all in the first warp's rows: the other
    // warps only copy.
    let computed = em.a.label("computed");
    if split {
        em.ins(format!("@{pwarp} bra.uni {computed}"));
    }
    // The query fragments, once per block (every step when they are not
    // held).
    if !wg {
        let (pf, skip) = (em.reg(Class::P), em.a.label("qf"));
        if p.hold_queries() {
            em.ins(format!("setp.ne.s64 {pf}, {jb}, {first}"));
            em.ins(format!("@{pf} bra.uni {skip}"));
        }
        for (kk, f) in qf.iter().enumerate() {
            em.ins(format!(
                "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{}}}, [{q_lane}+{}]",
                f.join(", "),
                kk * 32
            ));
        }
        em.a.place(&skip);
    }
    // s = q k^T.
    let s: Vec<String> = (0..s_tiles * 4).map(|_| em.reg(Class::F)).collect();
    for x in &s {
        em.ins(format!("mov.f32 {x}, 0f00000000"));
    }
    let wgd = if wg {
        let d = Descriptors::start(em, p, &warp, &smem, &c_stage);
        d.scores(em, p, &s, ty);
        Some(d)
    } else {
        None
    };
    let kbase = em.reg(Class::R);
    if !wg {
        em.ins(format!("sub.u32 {kbase}, {c_stage}, {smem}"));
        em.ins(format!("sub.u32 {kbase}, {kbase}, {}", p.q_bytes()));
        em.ins(format!("add.u32 {kbase}, {kbase}, {k_lane}"));
    }
    for (kk, f) in qf.iter().enumerate() {
        for nj in 0..s_tiles / 2 {
            let b: Vec<String> = (0..4).map(|_| em.reg(Class::R)).collect();
            em.ins(format!(
                "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{}}}, [{kbase}+{}]",
                b.join(", "),
                nj as u32 * 16 * pd + kk as u32 * 32
            ));
            for h in 0..2 {
                let ni = nj * 2 + h;
                let c = s[ni * 4..ni * 4 + 4].join(", ");
                em.ins(format!(
                    "{mma} {{{c}}}, {{{}}}, {{{}, {}}}, {{{c}}}",
                    f.join(", "),
                    b[h * 2],
                    b[h * 2 + 1]
                ));
            }
        }
    }
    for x in &s {
        em.ins(format!("mul.f32 {x}, {x}, {scale2}"));
    }
    if let Some(b) = &t.bias {
        add_bias(
            em,
            b,
            &Scores {
                s: &s,
                jb: &jb,
                tcol: &tcol,
                keys: &keys,
                m0: &m0,
                grow: &grow,
                m_dim: &m_dim,
                log2e: &log2e.r,
                j: t.j,
                m: Var(r as u32 - 2),
            },
        )?;
    }
    // Masking, on the steps that reach past the keys or the diagonal.
    {
        let (end, pm) = (em.reg(Class::D), em.reg(Class::P));
        let skip = em.a.label("nomask");
        let j0 = em.reg(Class::D);
        em.ins(format!("shl.b64 {j0}, {jb}, {bn_log}"));
        em.ins(format!("add.s64 {end}, {j0}, {block_n}"));
        em.ins(format!("setp.le.s64 {pm}, {end}, {keys}"));
        if let Some(off) = &offset {
            // The block's first query sees every key of the step.
            let (diag, pd2) = (em.reg(Class::D), em.reg(Class::P));
            em.ins(format!("add.s64 {diag}, {m0}, {off}"));
            em.ins(format!("sub.s64 {end}, {end}, 1"));
            em.ins(format!("setp.le.s64 {pd2}, {end}, {diag}"));
            em.ins(format!("and.pred {pm}, {pm}, {pd2}"));
        }
        em.ins(format!("@{pm} bra.uni {skip}"));
        let jt = em.reg(Class::D);
        em.ins(format!("add.s64 {jt}, {j0}, {tcol}"));
        let lims: Vec<String> = match &offset {
            Some(off) => (0..2)
                .map(|h| {
                    let l = em.reg(Class::D);
                    em.ins(format!("add.s64 {l}, {m0}, {grow}"));
                    em.ins(format!("add.s64 {l}, {l}, {}", h * 8));
                    em.ins(format!("add.s64 {l}, {l}, {off}"));
                    l
                })
                .collect(),
            None => Vec::new(),
        };
        for ni in 0..s_tiles {
            for e in 0..4 {
                let (j, pv) = (em.reg(Class::D), em.reg(Class::P));
                em.ins(format!("add.s64 {j}, {jt}, {}", ni * 8 + e % 2));
                em.ins(format!("setp.lt.s64 {pv}, {j}, {keys}"));
                if !lims.is_empty() {
                    let pc = em.reg(Class::P);
                    em.ins(format!("setp.le.s64 {pc}, {j}, {}", lims[e / 2]));
                    em.ins(format!("and.pred {pv}, {pv}, {pc}"));
                }
                let x = &s[ni * 4 + e];
                em.ins(format!("selp.f32 {x}, {x}, 0fFF800000, {pv}"));
            }
        }
        em.a.place(&skip);
    }
    // The online softmax, per row half (rows `g` and `g + 8`).
    for h in 0..2 {
        let mx = em.reg(Class::F);
        em.ins(format!("mov.f32 {mx}, 0fFF800000"));
        for ni in 0..s_tiles {
            for e in [2 * h, 2 * h + 1] {
                em.ins(format!("max.f32 {mx}, {mx}, {}", s[ni * 4 + e]));
            }
        }
        for sh in [1, 2] {
            let o2 = em.reg(Class::F);
            em.ins(format!("shfl.sync.bfly.b32 {o2}, {mx}, {sh}, 31, -1"));
            em.ins(format!("max.f32 {mx}, {mx}, {o2}"));
        }
        em.ins(format!("max.f32 {mx}, {mx}, {}", mrow[h]));
        // A row with every score so far masked subtracts 0 (its
        // exponentials are 0 either way).
        let (base, pinf) = (em.reg(Class::F), em.reg(Class::P));
        em.ins(format!("setp.eq.f32 {pinf}, {mx}, 0fFF800000"));
        em.ins(format!("selp.f32 {base}, 0f00000000, {mx}, {pinf}"));
        let alpha = em.reg(Class::F);
        em.ins(format!("sub.f32 {alpha}, {}, {base}", mrow[h]));
        em.ins(format!("ex2.approx.ftz.f32 {alpha}, {alpha}"));
        em.ins(format!("mov.f32 {}, {mx}", mrow[h]));
        let sum = em.reg(Class::F);
        em.ins(format!("mov.f32 {sum}, 0f00000000"));
        for ni in 0..s_tiles {
            for e in [2 * h, 2 * h + 1] {
                let x = &s[ni * 4 + e];
                em.ins(format!("sub.f32 {x}, {x}, {base}"));
                em.ins(format!("ex2.approx.ftz.f32 {x}, {x}"));
                em.ins(format!("add.f32 {sum}, {sum}, {x}"));
            }
        }
        em.ins(format!("fma.rn.f32 {0}, {0}, {alpha}, {sum}", lsum[h]));
        for ni in 0..o_tiles {
            for e in [2 * h, 2 * h + 1] {
                let x = &o[ni * 4 + e];
                em.ins(format!("mul.f32 {x}, {x}, {alpha}"));
            }
        }
    }
    // o += p v: the probabilities of 16 keys are one `a` fragment.
    let vbase = em.reg(Class::R);
    if !wg {
        em.ins(format!("sub.u32 {vbase}, {c_stage}, {smem}"));
        em.ins(format!("sub.u32 {vbase}, {vbase}, {}", p.q_bytes()));
        em.ins(format!("add.u32 {vbase}, {vbase}, {v_lane}"));
    }
    let a_frags: Vec<Vec<String>> = (0..s_tiles / 2)
        .map(|kc| {
            (0..4)
                .map(|i| {
                    let (ni, half) = (kc * 2 + i / 2, i % 2);
                    let w = em.reg(Class::R);
                    let (x0, x1) = (&s[ni * 4 + half * 2], &s[ni * 4 + half * 2 + 1]);
                    em.ins(format!("cvt.rn.{ty}x2.f32 {w}, {x1}, {x0}"));
                    w
                })
                .collect()
        })
        .collect();
    if let Some(d) = &wgd {
        d.values(em, p, &o, &a_frags, ty);
    }
    for (kc, a) in a_frags.iter().enumerate().filter(|_| !wg) {
        for nj in 0..o_tiles / 2 {
            let b: Vec<String> = (0..4).map(|_| em.reg(Class::R)).collect();
            em.ins(format!(
                "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {{{}}}, [{vbase}+{}]",
                b.join(", "),
                kc as u32 * 16 * pw + nj as u32 * 32
            ));
            for h in 0..2 {
                let ni = nj * 2 + h;
                let c = o[ni * 4..ni * 4 + 4].join(", ");
                em.ins(format!(
                    "{mma} {{{c}}}, {{{}}}, {{{}, {}}}, {{{c}}}",
                    a.join(", "),
                    b[h * 2],
                    b[h * 2 + 1]
                ));
            }
        }
    }
    em.a.place(&computed);
    // The next step computes the stage just filled.
    let tmp = em.reg(Class::R);
    em.ins(format!("mov.u32 {tmp}, {c_stage}"));
    em.ins(format!("mov.u32 {c_stage}, {ld_stage}"));
    em.ins(format!("mov.u32 {ld_stage}, {tmp}"));
    em.ins(format!("add.s64 {jb}, {jb}, 1"));
    em.ins(format!("bra.uni {ktop}"));
    em.a.place(&kend);
    // Every copy (the queries' when no step ran) has landed and every warp
    // is done with shared memory before the next block's copies.
    em.ins("cp.async.wait_group 0");
    em.ins("bar.sync 0");
    let unit_end = em.a.label("unit_end");
    if split {
        combine_splits(
            em,
            p,
            &Split {
                scratch: &scratch,
                tile: &lp.tile,
                group: &tile,
                units: &units_all,
                tid: &tid,
                lane: &lane,
                pwarp: &pwarp,
                smem: &smem,
                unit_end: &unit_end,
                o: &o,
                mrow: &mrow,
                lsum: &lsum,
            },
        );
    }

    // Divide each row by its sum (the quad's four partial sums).
    for (h, l) in lsum.iter().enumerate() {
        for sh in [1, 2] {
            let o2 = em.reg(Class::F);
            em.ins(format!("shfl.sync.bfly.b32 {o2}, {l}, {sh}, 31, -1"));
            em.ins(format!("add.f32 {l}, {l}, {o2}"));
        }
        let (inv, pz) = (em.reg(Class::F), em.reg(Class::P));
        em.ins(format!("rcp.rn.f32 {inv}, {l}"));
        em.ins(format!("setp.gt.f32 {pz}, {l}, 0f00000000"));
        em.ins(format!("selp.f32 {inv}, {inv}, 0f00000000, {pz}"));
        for ni in 0..o_tiles {
            for e in [2 * h, 2 * h + 1] {
                let x = &o[ni * 4 + e];
                em.ins(format!("mul.f32 {x}, {x}, {inv}"));
            }
        }
    }
    let n0 = em.reg(Class::D);
    em.ins(format!("mov.b64 {n0}, 0"));
    store_tile(
        em,
        &TileStore {
            int_acc: false,
            acc: &o,
            warp_m: 16,
            warp_n: p.width,
            lane: &lane,
            wm_base: &wm_base,
            wn_base: &zero,
            m0: &m0,
            n0: &n0,
            bflat: &bflat,
            m_dim: &m_dim,
            n_dim: &n_dim,
        },
        &t.epilogue,
        None,
    )?;
    em.a.place(&unit_end);
    lp.end(em);
    Ok(())
}

/// The warp group's shared-memory descriptors of a step (the 128-byte
/// swizzle, mode 1 in bits 62-63; byte offsets in 16-byte units): the
/// queries and keys `k`-major (rows of 128 bytes of the head dim, 8-row
/// groups 1024 bytes apart, each 64 columns a block of its own), the
/// values `n`-major (rows of 128 bytes of the value's columns per key,
/// 8-key groups 1024 bytes apart, 64-column blocks 64 keys of 128 bytes
/// apart), as `mma::compute_wgmma` reads a contraction's operands.
struct Descriptors {
    q: String,
    k: String,
    v: String,
    /// The `scale-d` predicate (true: accumulate).
    acc: String,
}

impl Descriptors {
    /// The descriptors of the warp group's 64 queries and of the stage at
    /// `stage` (an absolute shared address).
    fn start(em: &mut Em, p: &Plan, warp: &str, smem: &str, stage: &str) -> Descriptors {
        let k_major = swizzle_fields(1);
        let n_major = swizzle_fields(u64::from(p.block_n * 128 / 16));
        let desc = descriptor;
        // The warp group's 64 queries start 64 rows of 128 bytes into each
        // block of the queries' tile.
        let (g, qa, va) = (em.reg(Class::R), em.reg(Class::R), em.reg(Class::R));
        em.ins(format!("shr.u32 {g}, {warp}, 2"));
        em.ins(format!("mad.lo.u32 {qa}, {g}, {}, {smem}", 64 * 128));
        em.ins(format!("add.u32 {va}, {stage}, {}", p.k_bytes()));
        let q = desc(em, &qa, k_major);
        let k = desc(em, stage, k_major);
        let v = desc(em, &va, n_major);
        let acc = em.reg(Class::P);
        em.ins(format!("setp.eq.u32 {acc}, 0, 0"));
        Descriptors { q, k, v, acc }
    }

    /// `s += q k^T` (the scores, zeroed before): a `m64n64k16` per 16 of
    /// the head dim, waited for.
    fn scores(&self, em: &mut Em, p: &Plan, s: &[String], ty: &str) {
        let regs = s.join(", ");
        let q_block = p.block_m() * 128 / 16;
        let k_block = p.block_n * 128 / 16;
        em.ins("wgmma.fence.sync.aligned");
        for kk in 0..p.depth / 16 {
            let (a, b) = (em.reg(Class::D), em.reg(Class::D));
            let within = (kk % 4) * 2;
            em.ins(format!(
                "add.s64 {a}, {}, {}",
                self.q,
                (kk / 4) * q_block + within
            ));
            em.ins(format!(
                "add.s64 {b}, {}, {}",
                self.k,
                (kk / 4) * k_block + within
            ));
            em.ins(format!(
                "wgmma.mma_async.sync.aligned.m64n{}k16.f32.{ty}.{ty} {{{regs}}}, {a}, {b}, \
                 {}, 1, 1, 0, 0",
                p.block_n, self.acc
            ));
        }
        em.ins("wgmma.commit_group.sync.aligned");
        em.ins("wgmma.wait_group.sync.aligned 0");
    }

    /// `o += p v`: a `m64nWk16` per 16 keys, the probabilities' fragments
    /// `a` (four registers each) from registers, waited for (the next
    /// step's copies overwrite this stage).
    fn values(&self, em: &mut Em, p: &Plan, o: &[String], a: &[Vec<String>], ty: &str) {
        let regs = o.join(", ");
        em.ins("wgmma.fence.sync.aligned");
        for (kc, f) in a.iter().enumerate() {
            let b = em.reg(Class::D);
            em.ins(format!("add.s64 {b}, {}, {}", self.v, kc * 16 * 128 / 16));
            em.ins(format!(
                "wgmma.mma_async.sync.aligned.m64n{}k16.f32.{ty}.{ty} {{{regs}}}, {{{}}}, {b}, \
                 {}, 1, 1, 1",
                p.width,
                f.join(", "),
                self.acc
            ));
        }
        em.ins("wgmma.commit_group.sync.aligned");
        em.ins("wgmma.wait_group.sync.aligned 0");
    }
}

/// A step's scores in a lane's registers and where they lie.
struct Scores<'s> {
    /// 8 column blocks of 4 (rows `g` and `g + 8`, two keys each).
    s: &'s [String],
    /// The step, the lane's first column in a block (`2 (lane % 4)`), the
    /// key count, the block's first query, the lane's row in the block
    /// (`g`) and the query count (all s64).
    jb: &'s str,
    tcol: &'s str,
    keys: &'s str,
    m0: &'s str,
    grow: &'s str,
    m_dim: &'s str,
    log2e: &'s str,
    /// The template's key and query variables.
    j: Var,
    m: Var,
}

/// Adds the bias term, evaluated as written at each of the lane's scores
/// (each element with its own memo) and scaled by `log2 e` as the scores
/// are. Queries and keys past the end are evaluated at the last one, so
/// that the bias's loads stay in bounds (their scores are not used: the
/// keys are masked after this, the rows not stored).
fn add_bias(em: &mut Em, b: &Expr, sc: &Scores) -> Result<(), PtxError> {
    let (last_key, last_row, jt) = (em.reg(Class::D), em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("sub.s64 {last_key}, {}, 1", sc.keys));
    em.ins(format!("sub.s64 {last_row}, {}, 1", sc.m_dim));
    // (a bias runs on the `mma.sync` engine only: 64 keys a step)
    em.ins(format!("shl.b64 {jt}, {}, 6", sc.jb));
    em.ins(format!("add.s64 {jt}, {jt}, {}", sc.tcol));
    let prev_m = em.vars.get(&sc.m).cloned();
    let prev_j = em.vars.get(&sc.j).cloned();
    for h in 0..2usize {
        let row = em.reg(Class::D);
        em.ins(format!("add.s64 {row}, {}, {}", sc.m0, sc.grow));
        em.ins(format!("add.s64 {row}, {row}, {}", h * 8));
        em.ins(format!("min.s64 {row}, {row}, {last_row}"));
        em.bind(sc.m, row);
        for ni in 0..sc.s.len() / 4 {
            for e in [2 * h, 2 * h + 1] {
                let j = em.reg(Class::D);
                em.ins(format!("add.s64 {j}, {jt}, {}", ni * 8 + e % 2));
                em.ins(format!("min.s64 {j}, {j}, {last_key}"));
                em.bind(sc.j, j);
                em.memo = Some(Vec::new());
                let v = em.emit(b);
                em.memo = None;
                let v = v?;
                if v.t != Ty::F32 {
                    return Err(em.type_err(b, "the attention bias is not an f32"));
                }
                let x = &sc.s[ni * 4 + e];
                em.ins(format!("fma.rn.f32 {x}, {}, {}, {x}", v.r, sc.log2e));
            }
        }
    }
    em.unbind(sc.m, prev_m);
    em.unbind(sc.j, prev_j);
    Ok(())
}

/// What [`combine_splits`] works with.
struct Split<'s> {
    /// The scratch memory (global address), the unit, its tile (the group
    /// of `splits` units) and the units' count (u64).
    scratch: &'s str,
    tile: &'s str,
    group: &'s str,
    units: &'s str,
    tid: &'s str,
    lane: &'s str,
    /// Set in warps other than the first.
    pwarp: &'s str,
    smem: &'s str,
    unit_end: &'s str,
    o: &'s [String],
    mrow: &'s [String],
    lsum: &'s [String],
}

/// The end of a split block's walk: the first warp stores its partial
/// result (unnormalized output rows, row maxima, partial sums), the block
/// counts its arrival on the tile's counter, and the block that arrives
/// last merges every split's partial, in split order (the result does not
/// depend on which block is last), into the first warp's registers, sets
/// the counter back to zero and goes on to the division and the
/// epilogue; the other blocks end their unit.
fn combine_splits(em: &mut Em, p: &Plan, s: &Split) {
    let chunks = p.partial_chunks();
    let pb = p.partial_bytes();
    // The lane's values in chunk order: the accumulators, then the maxima
    // and the sums of its two rows.
    let values: Vec<&String> = s.o.iter().chain(s.mrow).chain(s.lsum).collect();
    let arrival = super::splits::Arrival {
        scratch: s.scratch,
        units: s.units,
        per_unit: pb,
        tile: s.group,
        tid: s.tid,
        smem: s.smem,
        flag_at: p.shared_bytes() - 16,
        splits: p.splits,
        not_last: s.unit_end,
        sync: "bar.sync 0".to_string(),
    };
    let lane_off = em.reg(Class::D);
    em.ins(format!("mul.wide.u32 {lane_off}, {}, 16", s.lane));
    let wrote = em.a.label("wrote");
    em.ins(format!("@{} bra.uni {wrote}", s.pwarp));
    let own = arrival.own_partial(em, s.tile, &lane_off);
    for c in 0..chunks as usize {
        em.ins(format!(
            "st.global.v4.f32 [{own}+{}], {{{}}}",
            c * 512,
            values[c * 4..c * 4 + 4]
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    em.ins("fence.acq_rel.gpu");
    em.a.place(&wrote);
    let ctr = arrival.emit(em);
    // The last block's first warp: every split's partial, in order.
    em.ins(format!("@{} bra.uni {}", s.pwarp, s.unit_end));
    let base = arrival.first_partial(em, &lane_off);
    let tail = (chunks as usize - 1) * 512;
    // Loops over the splits (not unrolled: the accumulators stay the only
    // large live set). First the largest maximum per row half (0 where
    // every split's is -inf).
    let top: Vec<String> = (0..2).map(|_| em.reg(Class::F)).collect();
    for t in &top {
        em.ins(format!("mov.f32 {t}, 0fFF800000"));
    }
    let (at, sp) = (em.reg(Class::D), em.reg(Class::R));
    let splits_loop = |em: &mut Em, body: &mut dyn FnMut(&mut Em)| {
        em.ins(format!("mov.b64 {at}, {base}"));
        em.ins(format!("mov.u32 {sp}, 0"));
        let top = em.a.label("splits");
        em.a.place(&top);
        body(em);
        em.ins(format!("add.s64 {at}, {at}, {pb}"));
        em.ins(format!("add.u32 {sp}, {sp}, 1"));
        let pl = em.reg(Class::P);
        em.ins(format!("setp.lt.u32 {pl}, {sp}, {}", p.splits));
        em.ins(format!("@{pl} bra {top}"));
    };
    splits_loop(em, &mut |em: &mut Em| {
        let (m0, m1) = (em.reg(Class::F), em.reg(Class::F));
        em.ins(format!("ld.global.cg.v2.f32 {{{m0}, {m1}}}, [{at}+{tail}]"));
        em.ins(format!("max.f32 {0}, {0}, {m0}", top[0]));
        em.ins(format!("max.f32 {0}, {0}, {m1}", top[1]));
    });
    for t in &top {
        let pinf = em.reg(Class::P);
        em.ins(format!("setp.eq.f32 {pinf}, {t}, 0fFF800000"));
        em.ins(format!("selp.f32 {t}, 0f00000000, {t}, {pinf}"));
    }
    for h in 0..2 {
        em.ins(format!("mov.f32 {}, 0f00000000", s.lsum[h]));
    }
    for a in s.o {
        em.ins(format!("mov.f32 {a}, 0f00000000"));
    }
    // Each split weighted by 2^(its maximum - the largest).
    splits_loop(em, &mut |em: &mut Em| {
        let st: Vec<String> = (0..4).map(|_| em.reg(Class::F)).collect();
        em.ins(format!(
            "ld.global.cg.v4.f32 {{{}}}, [{at}+{tail}]",
            st.join(", ")
        ));
        let w: Vec<String> = (0..2)
            .map(|h| {
                let w = em.reg(Class::F);
                em.ins(format!("sub.f32 {w}, {}, {}", st[h], top[h]));
                em.ins(format!("ex2.approx.ftz.f32 {w}, {w}"));
                em.ins(format!(
                    "fma.rn.f32 {0}, {w}, {1}, {0}",
                    s.lsum[h],
                    st[2 + h]
                ));
                w
            })
            .collect();
        for c in 0..chunks as usize - 1 {
            let r: Vec<String> = (0..4).map(|_| em.reg(Class::F)).collect();
            em.ins(format!(
                "ld.global.cg.v4.f32 {{{}}}, [{at}+{}]",
                r.join(", "),
                c * 512
            ));
            for (e, x) in r.iter().enumerate() {
                let i = c * 4 + e;
                // accumulator `i` is row half `(i % 4) / 2`
                em.ins(format!(
                    "fma.rn.f32 {0}, {1}, {x}, {0}",
                    s.o[i],
                    w[(i % 4) / 2]
                ));
            }
        }
    });
    // The counter back at zero for the next launch (lane 0 of the first
    // warp is thread 0).
    super::splits::Arrival::reset(em, &ctr, s.lane);
}
