//! Contractions with a dequantized 4-bit weight on tensor cores: `x @
//! dequantize(codes)` for `x` of bf16 or f16 and `i4` / `u4` codes laid out
//! in fragment order at bind time (`kiln_passes::lower::order_int4_fragments`,
//! whose module documents the layout). The weight is streamed once per
//! 16 rows of `x`, so at a decode step's few rows (W4) the kernel runs at
//! the speed of reading 4 bits per weight; the `mma` work, 16 rows however
//! many are real, is small beside it.
//!
//! **The value.** `b` is any expression that is affine in the code and
//! reads `k` only through `k / G` (a group's scale and zero point; or not
//! at all: per-channel scales): `b(k, n) = alpha(k / G, n) * code + beta(k /
//! G, n)`. Over a piece of `k` inside one group,
//!
//! `sum_k x[m, k] b(k, n) = alpha * sum_k x[m, k] code[k, n] + beta * sum_k x[m, k]`.
//!
//! The codes are exact in bf16 and f16, so `mma.sync.m16n8k16` (f32
//! accumulation) computes `sum x * code` exactly up to f32 sums, and one
//! more `mma` against a fragment of ones gives `sum x` where `beta` is not
//! structurally zero. `alpha` and `beta` are the kernel's own `b` evaluated
//! once per piece and column with the code replaced by 1 and 0. The result
//! equals the evaluator's `sum_k x * b` up to the order of f32 additions.
//!
//! **Decoding.** A lane's 32 bytes per 32-deep step (16 per 16-deep
//! half, each half's 512 bytes for the warp contiguous) hold its
//! fragments' codes (`order_int4_fragments`): shifting a word right by `4 q` and
//! masking `0x000f000f` leaves two codes, one per 16-bit half; or-ing
//! `0x43004300` (bf16 128.0) or `0x64006400` (f16 1024.0) makes each half
//! that float plus the code, and one `fma.rn.bf16x2` (`f16x2`) by 1.0
//! minus 128 (1024) leaves the code exactly. Signed codes are made
//! unsigned by flipping each nibble's top bit (`code + 8`) in the same
//! `lop3` (an exclusive or with the magic value, whose bit 3 of each half
//! is set), and 8 more is subtracted.
//!
//! **Work split.** A block of [`THREADS`] threads owns 16 rows and 64
//! columns of one output matrix; its 8 warps split `k` in pieces (a piece
//! lies inside one group: the largest multiple of 32 dividing `k` and
//! every group size, at most `k / 8` where that is possible) taken in
//! turn. Each warp computes all 64 columns (8 `n8` blocks) of its pieces.
//! Its steps' codes and rows of `x` stream through a ring of 5 stages in
//! shared memory with `cp.async`, issued that many steps ahead across
//! piece boundaries (the copies in flight cost no registers); each lane
//! reads back its own codes, and the `x` fragments of a 16-deep half come
//! from one `ldmatrix` over the 16 rows the warp copied, after a warp
//! barrier. Tiles past the whole waves over the multiprocessors may be
//! split over several blocks ([`QmmaPlan::splits`]). The scales of the warp's pieces are prefetched into L1
//! before its first step and loaded and applied at each piece's last. Each
//! column tile starts its warps at a different piece (blocks in step would
//! all read the same part of `x`), and rows past `m` are zero-filled, not
//! copied. The warps' sums accumulate in shared memory, and warp `w`
//! runs the epilogue of columns `8 w .. 8 w + 7` ([`super::mma::store_tile`]).

use kiln_dialect::DType;
use kiln_dialect::kernel::{Binary, Body, Expr, Kernel, Ty, Var};
use kiln_passes::lower::{FRAGMENT_COLS, FRAGMENT_DEPTH, fragment_index};

use super::PtxError;
use super::asm::Class;
use super::dtype_io::Code;
use super::expr::{Em, free_vars};
use super::mma::{
    Lanes, TileLoop, TileOrigin, TileStore, first_half_load, float_loads_only, is_index_of, lanes,
    plain_load, store_rounded16, store_tile,
};

/// Threads per block: 8 warps.
pub const THREADS: u32 = 256;
const WARPS: u32 = THREADS / 32;
/// Rows of `x` per block.
pub const TILE_M: u32 = 16;
/// Columns per block (one fragment-ordered column block of the codes).
pub const TILE_N: u32 = FRAGMENT_COLS as u32;
/// Bytes of shared memory for the warps' 16 x 64 f32 sums (then each
/// warp's ring of copy stages, [`QmmaPlan::shared_bytes`]).
const ACC_BYTES: u64 = (WARPS * TILE_M * TILE_N * 4) as u64;
/// Bytes of a copy stage: a step's codes (1 KiB), then its 16 rows of `x`
/// (64 bytes each).
const STAGE_BYTES: u64 = 2048;
/// Stages of a warp's copy ring: 5 (4 steps in flight), so that two
/// blocks fit a multiprocessor's 228 KiB.
const STAGES: u64 = 5;

/// A contraction the path compiles.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct QmmaPlan {
    /// `x`: rows read as they are stored, or computed.
    a: Activations,
    /// The element type of `x` in the `mma` (bf16 or f16).
    half: DType,
    /// The fragment-ordered codes' input, and whether they are signed.
    codes: usize,
    signed: bool,
    /// The codes' load in `b` (replaced by constants to get `alpha` and
    /// `beta`), and `b`.
    code_load: Expr,
    b: Expr,
    /// Whether `beta` can be nonzero (an addition in `b` besides the code's
    /// term).
    offset: bool,
    /// `k`'s extent and a piece of it.
    depth: u64,
    piece: u64,
    /// The output's columns, and its rows when static.
    n: u64,
    pub rows: Option<u64>,
    /// Blocks each tile past the whole waves over `sms` multiprocessors
    /// is dealt to ([`Grid::BalancedTiles`](kiln_runtime::cuda::kernel::Grid);
    /// 1: one block per tile): part `p` takes the tile's pieces `p,
    /// p + splits, ..`, stores its block sums to the scratch memory, and
    /// the last to arrive adds them all in part order before the
    /// epilogue. Splitting every tile (the `SplitTiles` grid) was measured
    /// slower on W4 (H100, 2026-12-06 17:18: m = 1 0.0178 / 0.0199 /
    /// 0.0228 ms at 1 / 2 / 4 splits): a second wave of blocks pays the
    /// blocks' fixed cost (the ring's first copies, the sums' reduction)
    /// twice. See [`Balance`].
    pub splits: u32,
    pub sms: u32,
}

/// How the int4 fragment kernel evens its tiles out over the
/// multiprocessors (`KILN_QMMA_SPLITS`; [`QmmaPlan::splits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// [`auto_splits`] for [`MULTIPROCESSORS`].
    Auto,
    /// `splits` ways (cut to [`QmmaPlan::max_splits`]) past the whole
    /// waves over `sms` multiprocessors.
    Fixed { splits: u32, sms: u32 },
}

impl Balance {
    /// `auto`, or a number of splits from 1 to 8 (on [`MULTIPROCESSORS`]).
    pub fn parse(s: &str) -> Option<Balance> {
        match s.trim() {
            "auto" => Some(Balance::Auto),
            x => x
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=8).contains(n))
                .map(|splits| Balance::Fixed {
                    splits,
                    sms: MULTIPROCESSORS,
                }),
        }
    }
}

/// The multiprocessors a balanced grid is laid out for: the H100 SXM's
/// (and H200's) 132. On a card with other counts the kernel is as correct
/// and its tiles less even.
pub const MULTIPROCESSORS: u32 = 132;

/// The splits that even out a launch of one row tile (a decode step's
/// rows; the output's other axes static): the tiles past the whole waves
/// over [`MULTIPROCESSORS`], `rest` of them, are split as many ways as
/// fit in one wave (`MULTIPROCESSORS / rest`), at most
/// [`QmmaPlan::max_splits`]; 1 when there is no such rest or it would
/// not split. W4 (172 column tiles): 40 tiles past 132, in thirds.
pub(super) fn auto_splits(k: &Kernel, plan: &QmmaPlan) -> u32 {
    let r = k.output.shape.rank();
    let batch: Option<u64> = k.output.shape.0[..r - 2]
        .iter()
        .map(|d| d.as_static())
        .product();
    let Some(batch) = batch else {
        return 1;
    };
    let tiles = batch * (plan.n / FRAGMENT_COLS);
    let rest = tiles % u64::from(MULTIPROCESSORS);
    if rest == 0 {
        return 1;
    }
    (u64::from(MULTIPROCESSORS) / rest).min(u64::from(plan.max_splits())) as u32
}

/// How the kernel gets its rows of `x`.
#[derive(Clone, Debug, PartialEq)]
enum Activations {
    /// A plain bf16/f16 load `[batch.., m, k]`, `k` contiguous: copied with
    /// `cp.async`, 16 bytes per lane, row half and step.
    Rows { input: usize, index: Vec<Expr> },
    /// An elementwise expression of float loads (a fused `silu(gate) *
    /// up`): each lane evaluates its 8 values per row half and step when it
    /// issues the step's copies, rounded to `half` (the graph's own
    /// intermediate is of that type), and stores them to its chunk.
    Computed(Expr),
}

/// The plan of `k`, when the path applies: a contraction computing in f32
/// over a static `k` whose `a` is a plain bf16 or f16 load `[batch.., m,
/// k]` or an elementwise expression of float loads ([`Activations`]), and
/// whose `b` reads fragment-ordered 4-bit codes once and is affine in them
/// (see the module documentation).
pub(super) fn plan(k: &Kernel) -> Option<QmmaPlan> {
    if k.float != Ty::F32 {
        return None;
    }
    let Body::Contract {
        k: kv,
        extent: Expr::Int(depth),
        a,
        b,
        ..
    } = &k.body
    else {
        return None;
    };
    let (kv, depth) = (*kv, u64::try_from(*depth).ok()?);
    let r = k.output.shape.rank();
    if r < 2 || k.output.dtype.bits() < 8 || depth == 0 || depth % FRAGMENT_DEPTH != 0 {
        return None;
    }
    let (mv, nv) = (Var(r as u32 - 2), Var(r as u32 - 1));
    let n = k.output.shape.0[r - 1].as_static()?;
    if n == 0 || n % FRAGMENT_COLS != 0 {
        return None;
    }
    // `a`: `[batch.., m, k]`, `k` contiguous and covered; or computed.
    let rows = plain_load(k, a, r).filter(|(input, index)| {
        let len = index.len();
        let last = k.inputs[*input].shape.0[len - 1].as_static();
        index[len - 1] == Expr::Var(kv)
            && is_index_of(k, &index[len - 2], mv)
            && last.is_some_and(|l| l >= depth)
    });
    let (acts, half) = match rows {
        Some((input, index)) => (
            Activations::Rows {
                input,
                index: index.to_vec(),
            },
            k.inputs[input].dtype,
        ),
        None => {
            let batch_or_mk = free_vars(a)
                .iter()
                .all(|v| v.0 < r as u32 - 2 || *v == mv || *v == kv);
            let ok = !super::has_reduce(a)
                && Em::new(k).ty_of(a) == Ty::F32
                && float_loads_only(k, a)
                && batch_or_mk;
            let input = first_half_load(k, a).filter(|_| ok)?;
            (Activations::Computed(a.clone()), k.inputs[input].dtype)
        }
    };
    // `b`: one load of fragment-ordered codes.
    if super::has_reduce(b) || Em::new(k).ty_of(b) != Ty::F32 {
        return None;
    }
    let want = fragment_index(Expr::Var(kv), Expr::Var(nv));
    let mut code_loads = Vec::new();
    loads_where(b, &mut code_loads, &|e| match e {
        Expr::Load { input, index, .. } => {
            *index == want
                && k.inputs
                    .get(*input)
                    .is_some_and(|i| matches!(i.dtype, DType::I4 | DType::U4))
        }
        _ => false,
    });
    let [code_load] = code_loads.as_slice() else {
        return None;
    };
    let Expr::Load {
        input: codes,
        guard: None,
        ..
    } = code_load
    else {
        return None;
    };
    let shape = [n / FRAGMENT_COLS, depth / FRAGMENT_DEPTH, 2, 32, 32];
    let mut of_codes = Vec::new();
    loads_where(
        b,
        &mut of_codes,
        &|e| matches!(e, Expr::Load { input, .. } if input == codes),
    );
    if k.inputs[*codes].shape.as_static()? != shape || of_codes.len() != 1 {
        return None;
    }
    // `b` reads `k` only as `k / G`, never `m`.
    let mut groups = Vec::new();
    if !k_through_groups(b, kv, code_load, &mut groups) || free_vars(b).contains(&mv) {
        return None;
    }
    let offset = match affine(b, code_load)? {
        Lin::Const => return None,
        Lin::Affine { offset } => offset,
    };
    let whole = groups.iter().fold(depth, |g, &x| gcd(g, x));
    if whole % FRAGMENT_DEPTH != 0 {
        return None;
    }
    let limit = (depth / u64::from(WARPS)).max(FRAGMENT_DEPTH);
    let piece = (1..=whole / FRAGMENT_DEPTH)
        .map(|i| i * FRAGMENT_DEPTH)
        .filter(|p| whole % p == 0 && *p <= limit)
        .max()?;
    Some(QmmaPlan {
        a: acts,
        half,
        codes: *codes,
        signed: k.inputs[*codes].dtype == DType::I4,
        code_load: code_load.clone(),
        b: b.clone(),
        offset,
        depth,
        piece,
        n,
        rows: k.output.shape.0[r - 2].as_static(),
        splits: 1,
        sms: MULTIPROCESSORS,
    })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The sub-expressions of `e` that `pick` selects (not searched inside).
fn loads_where(e: &Expr, out: &mut Vec<Expr>, pick: &dyn Fn(&Expr) -> bool) {
    if pick(e) {
        out.push(e.clone());
        return;
    }
    e.for_each_child(|c| loads_where(c, out, pick));
}

/// Whether `e` reads `kv` only as `kv / G` for constants `G` (collected in
/// `groups`), outside the codes' load `skip`.
fn k_through_groups(e: &Expr, kv: Var, skip: &Expr, groups: &mut Vec<u64>) -> bool {
    if e == skip {
        return true;
    }
    match e {
        Expr::Var(v) => *v != kv,
        Expr::Binary(Binary::Div, x, g) if **x == Expr::Var(kv) => match **g {
            Expr::Int(g) if g > 0 => {
                groups.push(g as u64);
                true
            }
            _ => false,
        },
        _ => {
            let mut ok = true;
            e.for_each_child(|c| ok &= k_through_groups(c, kv, skip, groups));
            ok
        }
    }
}

/// How an expression depends on the code.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Lin {
    /// Not at all.
    Const,
    /// `alpha * code + beta`; `offset`: `beta` may be nonzero.
    Affine { offset: bool },
}

/// How `e` depends on the load `code`, when it is affine in it (sums,
/// differences, products and quotients by code-free values, negation,
/// casts to i64 or f32; `None` otherwise).
fn affine(e: &Expr, code: &Expr) -> Option<Lin> {
    use kiln_dialect::kernel::Unary;
    if e == code {
        return Some(Lin::Affine { offset: false });
    }
    let mut uses = false;
    e.for_each_child(|c| uses |= contains(c, code));
    if !uses {
        return Some(Lin::Const);
    }
    match e {
        Expr::Cast(Ty::F32 | Ty::I64, x) => affine(x, code),
        Expr::Unary(Unary::Neg, x) => affine(x, code),
        Expr::Binary(Binary::Add | Binary::Sub, x, y) => {
            match (affine(x, code)?, affine(y, code)?) {
                (Lin::Affine { offset: a }, Lin::Affine { offset: b }) => {
                    Some(Lin::Affine { offset: a || b })
                }
                (Lin::Affine { .. }, Lin::Const) | (Lin::Const, Lin::Affine { .. }) => {
                    Some(Lin::Affine { offset: true })
                }
                (Lin::Const, Lin::Const) => Some(Lin::Const),
            }
        }
        Expr::Binary(Binary::Mul, x, y) => match (affine(x, code)?, affine(y, code)?) {
            (l @ Lin::Affine { .. }, Lin::Const) | (Lin::Const, l @ Lin::Affine { .. }) => Some(l),
            (Lin::Const, Lin::Const) => Some(Lin::Const),
            (Lin::Affine { .. }, Lin::Affine { .. }) => None,
        },
        Expr::Binary(Binary::Div, x, y) => match (affine(x, code)?, affine(y, code)?) {
            (l @ Lin::Affine { .. }, Lin::Const) => Some(l),
            (Lin::Const, Lin::Const) => Some(Lin::Const),
            _ => None,
        },
        _ => None,
    }
}

/// `b` with its code's float value replaced by 1.0 and products by 1.0
/// folded: `cast<f32>(code) * s` becomes `s`, exactly the value `b` has
/// at the code 1 (`x * 1.0 == x` for every float but a signaling NaN,
/// which no load of a bf16/f16 scale yields quieted differently).
fn at_code_one(b: &Expr, code: &Expr) -> Expr {
    let one = b.substitute(&|e| match e {
        Expr::Cast(Ty::F32, x) if **x == *code => Some(Expr::Float(1.0)),
        _ => None,
    });
    fold_ones(&one)
}

/// `e` with `1.0 * x` and `x * 1.0` replaced by `x`, innermost first.
fn fold_ones(e: &Expr) -> Expr {
    match e {
        Expr::Binary(Binary::Mul, x, y) => {
            let (x, y) = (fold_ones(x), fold_ones(y));
            match (&x, &y) {
                (Expr::Float(f), _) if *f == 1.0 => y,
                (_, Expr::Float(f)) if *f == 1.0 => x,
                _ => Expr::Binary(Binary::Mul, Box::new(x), Box::new(y)),
            }
        }
        _ => e.substitute(&|c| match c {
            Expr::Binary(Binary::Mul, ..) if c != e => Some(fold_ones(c)),
            _ => None,
        }),
    }
}

/// Whether `e` contains `x`.
fn contains(e: &Expr, x: &Expr) -> bool {
    if e == x {
        return true;
    }
    let mut any = false;
    e.for_each_child(|c| any |= contains(c, x));
    any
}

impl QmmaPlan {
    /// The most splits of a tile: every warp of a part has a piece.
    pub fn max_splits(&self) -> u32 {
        ((self.depth / self.piece) / u64::from(WARPS)).clamp(1, 8) as u32
    }

    /// Scratch bytes per unit of a split grid: the block's sums (16 bytes
    /// per thread), then room for a tile's counter.
    pub fn scratch_per_unit(&self) -> u32 {
        THREADS * 16 + 4
    }

    /// Steps of 32 per piece.
    fn steps(&self) -> u64 {
        self.piece / FRAGMENT_DEPTH
    }

    /// Rows of the 16 the kernel reads: the second eight only where the
    /// output may have more than 8 rows.
    fn halves(&self) -> usize {
        if self.rows.is_some_and(|m| m <= 8) {
            1
        } else {
            2
        }
    }

    /// Dynamic shared memory: the sums, then the warps' rings (a stage:
    /// the codes' two halves, then the 16 rows of `x`, 2 KiB).
    pub fn shared_bytes(&self) -> u32 {
        let stage = STAGE_BYTES;
        let flag = if self.splits > 1 { 16 } else { 0 };
        (ACC_BYTES + u64::from(WARPS) * STAGES * stage + flag) as u32
    }

    /// Blocks per multiprocessor the registers are limited for: two (128
    /// registers each; W4's 172 column tiles are then all resident on an
    /// H100's 132), one where `b` has an offset (zero points: ptxas 13.0
    /// spilled 20 bytes at 128).
    pub fn blocks_per_sm(&self) -> u32 {
        if self.offset { 1 } else { 2 }
    }

    /// The `mma` instruction.
    fn mma(&self) -> &'static str {
        if self.half == DType::BF16 {
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"
        } else {
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"
        }
    }
}

/// Emits the tile loop.
pub(super) fn emit(
    em: &mut Em,
    plan: &QmmaPlan,
    kv: Var,
    epilogue: &Expr,
    units: &str,
) -> Result<(), PtxError> {
    let r = em.k.output.shape.rank();
    let (mv, nv) = (Var(r as u32 - 2), Var(r as u32 - 1));
    let m_dim = em.out_shape[r - 2].clone();
    let m_dim = em.in_reg(&m_dim);
    let n_dim = em.iconst(plan.n as i64);
    let tiles_n = plan.n / FRAGMENT_COLS;
    let tiles_m = em.reg(Class::D);
    em.ins(format!("add.s64 {tiles_m}, {m_dim}, {}", TILE_M - 1));
    em.ins(format!("shr.s64 {tiles_m}, {tiles_m}, 4"));
    let m_last = em.reg(Class::D);
    em.ins(format!("sub.s64 {m_last}, {m_dim}, 1"));

    let Lanes {
        tid,
        lane,
        warp,
        g,
        t,
    } = lanes(em);
    let smem = em.reg(Class::R);
    em.ins(format!("mov.u32 {smem}, kiln_smem"));
    let b32 = |em: &mut Em, x: u32| {
        let r = em.reg(Class::R);
        em.ins(format!("mov.b32 {r}, {x:#010x}"));
        r
    };
    // The decoding constants: the magic exponent, 1.0 and minus the
    // magic value (and the signed codes' 8) in both halves. A signed
    // code's top bit is flipped by the same `lop3` that masks the pair
    // and puts in the exponent (`(w & 0x000f000f) ^ c`, `c` the magic with
    // bit 3 of each half set: table 0x6A), which makes it `code + 8`.
    let (magic, one, minus) = match (plan.half, plan.signed) {
        (DType::BF16, false) => (0x4300_4300, 0x3f80_3f80, 0xc300_c300),
        (DType::BF16, true) => (0x4308_4308, 0x3f80_3f80, 0xc308_c308),
        (_, false) => (0x6400_6400, 0x3c00_3c00, 0xe400_e400),
        (_, true) => (0x6408_6408, 0x3c00_3c00, 0xe408_e408),
    };
    let table = if plan.signed { "0x6A" } else { "0xEA" };
    let (magic, one, minus) = (b32(em, magic), b32(em, one), b32(em, minus));
    let zero = b32(em, 0);
    let (c1, c0) = (b32(em, 1), b32(em, 0));
    let halves = plan.halves();

    let part: Vec<Vec<String>> = (0..8)
        .map(|_| (0..4).map(|_| em.reg(Class::F)).collect())
        .collect();
    let sums: Vec<String> = (0..4).map(|_| em.reg(Class::F)).collect();

    // A balanced grid ([`Grid::BalancedTiles`]): its whole tiles come
    // first, `whole = (tiles * splits - units) / (splits - 1)` of them.
    let split = plan.splits > 1;
    let (scratch, whole) = if split {
        let scratch = super::splits::scratch(em);
        let count = em.reg(Class::D);
        em.ins(format!("mul.lo.s64 {count}, {tiles_m}, {tiles_n}"));
        let batch = em.out_shape[..r - 2].to_vec();
        for d in &batch {
            let d = em.in_reg(d);
            em.ins(format!("mul.lo.s64 {count}, {count}, {d}"));
        }
        let whole = em.reg(Class::D);
        em.ins(format!("mul.lo.s64 {whole}, {count}, {}", plan.splits));
        em.ins(format!("sub.s64 {whole}, {whole}, {units}"));
        em.ins(format!("div.u64 {whole}, {whole}, {}", plan.splits - 1));
        (scratch, whole)
    } else {
        (String::new(), String::new())
    };
    let lp = TileLoop::start(em, units);
    // A unit's tile, its part of the tile's pieces and the parts of its
    // tile (`ways`: 1 for a whole tile).
    let (tile, my_part, ways) = if split {
        let (past, v, q) = (em.reg(Class::P), em.reg(Class::D), em.reg(Class::D));
        em.ins(format!("setp.ge.s64 {past}, {}, {whole}", lp.tile));
        em.ins(format!("sub.s64 {v}, {}, {whole}", lp.tile));
        em.ins(format!("div.u64 {q}, {v}, {}", plan.splits));
        let (tile, part, ways) = (em.reg(Class::D), em.reg(Class::R), em.reg(Class::R));
        em.ins(format!("add.s64 {tile}, {whole}, {q}"));
        em.ins(format!("selp.b64 {tile}, {tile}, {}, {past}", lp.tile));
        em.ins(format!("mul.lo.s64 {q}, {q}, {}", plan.splits));
        em.ins(format!("sub.s64 {v}, {v}, {q}"));
        em.ins(format!("cvt.u32.u64 {part}, {v}"));
        em.ins(format!("selp.u32 {part}, {part}, 0, {past}"));
        em.ins(format!("selp.u32 {ways}, {}, 1, {past}", plan.splits));
        (tile, part, ways)
    } else {
        (lp.tile.clone(), String::new(), String::new())
    };
    let TileOrigin { tn, m0, n0, bflat } = lp.origin_at(
        em,
        &tile,
        &tiles_m,
        &tiles_n.to_string(),
        (TILE_M, TILE_N),
        r - 2,
    );
    // The warp's first piece, and the pieces between its pieces (part
    // `p` of `ways` takes the tile's pieces `p + ways * i`, dealt to the
    // warps in turn: `p + ways * warp + 8 ways * j`).
    let first = em.reg(Class::R);
    let stride = if split {
        em.ins(format!("mad.lo.u32 {first}, {ways}, {warp}, {my_part}"));
        let s = em.reg(Class::R);
        em.ins(format!("shl.b32 {s}, {ways}, {}", WARPS.trailing_zeros()));
        s
    } else {
        em.ins(format!("mov.b32 {first}, {warp}"));
        WARPS.to_string()
    };

    // Each row's address at the lane's first `k` (8 t): rows past the
    // output read the last row, whose results are not stored.
    let k0 = em.iconst(0);
    let (g64, t64) = (em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("cvt.u64.u32 {g64}, {g}"));
    em.ins(format!("cvt.u64.u32 {t64}, {t}"));
    // Per row half: the row (clamped), for rows read as stored the
    // address of the lane's first `k`, and the bytes the copy reads: 16,
    // or 0 past the rows (zeros filled in; every block reading the same
    // last row at a decode step's few rows made that row's cache lines a
    // hot spot of the L2).
    let mut a_rows = Vec::new();
    let mut a_bytes = Vec::new();
    for half in 0..halves {
        let row = em.reg(Class::D);
        em.ins(format!("add.s64 {row}, {m0}, {g64}"));
        if half == 1 {
            em.ins(format!("add.s64 {row}, {row}, 8"));
        }
        let (inside, bytes) = (em.reg(Class::P), em.reg(Class::R));
        em.ins(format!("setp.lt.s64 {inside}, {row}, {m_dim}"));
        em.ins(format!("selp.u32 {bytes}, 16, 0, {inside}"));
        a_bytes.push(bytes);
        em.ins(format!("min.s64 {row}, {row}, {m_last}"));
        let Activations::Rows { input, index } = &plan.a else {
            a_rows.push((row, String::new()));
            continue;
        };
        let a_expr = Expr::Load {
            input: *input,
            index: index.clone(),
            guard: None,
        };
        let prev_m = em.bind(mv, row.clone());
        let prev_k = em.bind(kv, k0.clone());
        let flat = em.flat_index(&a_expr, *input, index);
        em.unbind(kv, prev_k);
        em.unbind(mv, prev_m);
        let flat = flat?;
        let addr = em.reg(Class::D);
        let base = em.in_ptr[*input].clone();
        em.ins(format!("mad.lo.s64 {addr}, {flat}, 2, {base}"));
        em.ins(format!("mad.lo.s64 {addr}, {t64}, 16, {addr}"));
        a_rows.push((row, addr));
    }
    // The lane's codes: 16 bytes per half step at `16 lane` of the half's
    // 512, 1 KiB per step of the warp.
    let steps_k = plan.depth / FRAGMENT_DEPTH;
    let cptr = em.reg(Class::D);
    let lane64 = em.reg(Class::D);
    em.ins(format!("cvt.u64.u32 {lane64}, {lane}"));
    em.ins(format!("mul.lo.s64 {cptr}, {tn}, {}", steps_k * 1024));
    em.ins(format!("mad.lo.s64 {cptr}, {lane64}, 16, {cptr}"));
    let cbase = em.in_ptr[plan.codes].clone();
    em.ins(format!("add.s64 {cptr}, {cptr}, {cbase}"));

    // The warp's sums live in shared memory, `[warp][j][lane]` as 16-byte
    // groups (each lane its own), where the block's reduction reads them.
    let slot = em.reg(Class::R);
    em.ins(format!("mul.lo.u32 {slot}, {warp}, 256"));
    em.ins(format!("add.u32 {slot}, {slot}, {lane}"));
    em.ins(format!("mad.lo.u32 {slot}, {slot}, 16, {smem}"));
    let z = em.reg(Class::F);
    em.ins(format!("mov.f32 {z}, 0f00000000"));
    for j in 0..8 {
        em.ins(format!(
            "st.shared.v4.f32 [{slot}+{}], {{{z}, {z}, {z}, {z}}}",
            j * 32 * 16
        ));
    }

    // The warp's steps: its pieces `warp, warp + 8, ..`, each `steps`
    // steps of 32; `total` of them.
    let steps = plan.steps();
    let pieces = plan.depth / plan.piece;
    // Counters of steps are 32-bit (a step is 32 of `k`).
    let total = em.reg(Class::R);
    // ceil((pieces - first) / stride) * steps, 0 past the pieces
    if split {
        em.ins(format!("add.s32 {total}, {stride}, {}", pieces - 1));
        em.ins(format!("sub.s32 {total}, {total}, {first}"));
        em.ins(format!("div.u32 {total}, {total}, {stride}"));
    } else {
        em.ins(format!(
            "sub.s32 {total}, {}, {first}",
            pieces + u64::from(WARPS) - 1
        ));
        em.ins(format!(
            "shr.s32 {total}, {total}, {}",
            WARPS.trailing_zeros()
        ));
    }
    // The warp takes its pieces from the `tn % count`-th on, wrapping
    // around: blocks side by side start at different pieces, so that at
    // any time they read different parts of `a` (the same rows for every
    // block: at a decode step's few rows, blocks in step made a hot spot
    // of the L2 slices holding them).
    let (count, start) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("max.s32 {count}, {total}, 1"));
    em.ins(format!("cvt.u32.u64 {start}, {tn}"));
    em.ins(format!("rem.u32 {start}, {start}, {count}"));
    em.ins(format!("mad.lo.u32 {start}, {start}, {stride}, {first}"));
    let first_k = em.reg(Class::R);
    em.ins(format!("mul.lo.u32 {first_k}, {first}, {steps}"));
    em.ins(format!("mul.lo.s32 {total}, {total}, {steps}"));
    // The copies run `STAGES - 1` steps ahead into the warp's ring of
    // stages in shared memory. A stage: the codes' two halves (the lane's
    // 16 bytes of each at `o` and `512 + o`), then the 16 rows of `x`, 64
    // bytes each, its 16-byte chunk `c` of row `r` at `64 r + 16 (c ^ (r
    // / 2 % 4))` (the 8 rows an `ldmatrix` reads at once fall in distinct
    // banks). Lane `4 g + t` copies chunk `t` of rows `g` and `g + 8`, at
    // `1024 + o` and `1536 + o`, `o = 64 g + 16 (t ^ (g / 2 % 4))`; its
    // codes sit at the same `o`.
    let stages = STAGES;
    let stage_bytes = STAGE_BYTES;
    let ring = em.reg(Class::R);
    em.ins(format!(
        "mad.lo.u32 {ring}, {warp}, {}, {}",
        stages * stage_bytes,
        ACC_BYTES
    ));
    em.ins(format!("add.u32 {ring}, {ring}, {smem}"));
    let swz = |em: &mut Em, row: &str, chunk: &str| -> String {
        // 64 row + 16 (chunk ^ (row / 2 % 4))
        let (s, o) = (em.reg(Class::R), em.reg(Class::R));
        em.ins(format!("shr.u32 {s}, {row}, 1"));
        em.ins(format!("and.b32 {s}, {s}, 3"));
        em.ins(format!("xor.b32 {s}, {s}, {chunk}"));
        em.ins(format!("shl.b32 {s}, {s}, 4"));
        em.ins(format!("mad.lo.u32 {o}, {row}, 64, {s}"));
        o
    };
    let own = swz(em, &g, &t);
    em.ins(format!("add.u32 {ring}, {ring}, {own}"));
    // What lane `l` gives `ldmatrix` for the step's first half: row `l %
    // 8 + 8 (l / 8 % 2)` of `x`, chunk `l / 16` (the second half's chunks
    // are those plus 2: the address's bit 5 flipped); as an offset from
    // the lane's own `o`.
    let lm = em.reg(Class::R);
    {
        let (row, chunk, t8) = (em.reg(Class::R), em.reg(Class::R), em.reg(Class::R));
        em.ins(format!("and.b32 {row}, {lane}, 7"));
        em.ins(format!("and.b32 {t8}, {lane}, 8"));
        em.ins(format!("or.b32 {row}, {row}, {t8}"));
        em.ins(format!("shr.u32 {chunk}, {lane}, 4"));
        let at = swz(em, &row, &chunk);
        em.ins(format!("add.u32 {lm}, {at}, 1024"));
        em.ins(format!("sub.u32 {lm}, {lm}, {own}"));
    }
    if halves == 1 {
        // Rows 8 .. 15 are never copied: zeros, once.
        for st in 0..stages {
            em.ins(format!(
                "st.shared.v4.b32 [{ring}+{}], {{{zero}, {zero}, {zero}, {zero}}}",
                st * stage_bytes + 1536
            ));
        }
    }
    // Issue state: steps issued, the next step's global step of `k`, its
    // place in its piece, and its stage's offset.
    let (issued, iss_k, iss_in, iss_stage) = (
        em.reg(Class::R),
        em.reg(Class::R),
        em.reg(Class::R),
        em.reg(Class::R),
    );
    em.ins(format!("mov.b32 {issued}, 0"));
    em.ins(format!("mul.lo.u32 {iss_k}, {start}, {steps}"));
    em.ins(format!("mov.b32 {iss_in}, 0"));
    em.ins(format!("mov.u32 {iss_stage}, 0"));
    // Steps from a piece's end to the warp's next piece's start.
    let jump = if split {
        let j = em.reg(Class::R);
        em.ins(format!("sub.s32 {j}, {stride}, 1"));
        em.ins(format!("mul.lo.s32 {j}, {j}, {steps}"));
        j
    } else {
        ((u64::from(WARPS) - 1) * steps).to_string()
    };
    let issue = |em: &mut Em| -> Result<(), PtxError> {
        let (skip, p) = (em.a.label("issue"), em.reg(Class::P));
        em.ins(format!("setp.ge.s32 {p}, {issued}, {total}"));
        em.ins(format!("@{p} bra {skip}"));
        let dst = em.reg(Class::R);
        em.ins(format!("add.u32 {dst}, {ring}, {iss_stage}"));
        let src = em.reg(Class::D);
        em.ins(format!("mad.wide.u32 {src}, {iss_k}, 1024, {cptr}"));
        em.ins(format!("cp.async.cg.shared.global [{dst}], [{src}], 16"));
        em.ins(format!(
            "cp.async.cg.shared.global [{dst}+512], [{src}+512], 16"
        ));
        for (h, (row, base)) in a_rows.iter().enumerate() {
            let Activations::Computed(expr) = &plan.a else {
                let src = em.reg(Class::D);
                em.ins(format!("mad.wide.u32 {src}, {iss_k}, 64, {base}"));
                em.ins(format!(
                    "cp.async.cg.shared.global [{dst}+{}], [{src}], 16, {}",
                    1024 + 512 * h,
                    a_bytes[h]
                ));
                continue;
            };
            // The lane's 8 values at `k = 32 step + 8 t + e`.
            let k8 = em.reg(Class::D);
            em.ins(format!("cvt.u64.u32 {k8}, {iss_k}"));
            em.ins(format!("shl.b64 {k8}, {k8}, 5"));
            em.ins(format!("mad.lo.s64 {k8}, {t64}, 8, {k8}"));
            let prev_m = em.bind(mv, row.clone());
            let mut vals = Vec::new();
            for e in 0..8 {
                let kk = em.reg(Class::D);
                em.ins(format!("add.s64 {kk}, {k8}, {e}"));
                let prev_k = em.bind(kv, kk);
                em.memo = Some(Vec::new());
                let v = em.emit(expr);
                em.memo = None;
                em.unbind(kv, prev_k);
                vals.push(v?.r);
            }
            em.unbind(mv, prev_m);
            store_rounded16(em, &vals, plan.half, &format!("{dst}+{}", 1024 + 512 * h));
        }
        // The next step: the piece's next, or the warp's next piece.
        let (pn, pw) = (em.reg(Class::P), em.reg(Class::P));
        em.ins(format!("add.s32 {issued}, {issued}, 1"));
        em.ins(format!("add.s32 {iss_in}, {iss_in}, 1"));
        em.ins(format!("add.s32 {iss_k}, {iss_k}, 1"));
        em.ins(format!("setp.eq.s32 {pn}, {iss_in}, {steps}"));
        em.ins(format!("@{pn} mov.b32 {iss_in}, 0"));
        em.ins(format!("@{pn} add.s32 {iss_k}, {iss_k}, {jump}"));
        let past = em.reg(Class::P);
        em.ins(format!("setp.ge.u32 {past}, {iss_k}, {}", pieces * steps));
        em.ins(format!("@{past} mov.b32 {iss_k}, {first_k}"));
        em.ins(format!("add.u32 {iss_stage}, {iss_stage}, {stage_bytes}"));
        em.ins(format!(
            "setp.eq.u32 {pw}, {iss_stage}, {}",
            stages * stage_bytes
        ));
        em.ins(format!("@{pw} mov.u32 {iss_stage}, 0"));
        em.a.place(&skip);
        em.ins("cp.async.commit_group");
        Ok(())
    };
    for _ in 0..stages - 1 {
        issue(em)?;
    }
    prefetch_coefficients(em, plan, (kv, nv), (&first, &stride), (&n0, &lane))?;

    // The steps, in order.
    let (step, in_piece, piece, use_stage) = (
        em.reg(Class::R),
        em.reg(Class::R),
        em.reg(Class::R),
        em.reg(Class::R),
    );
    em.ins(format!("mov.b32 {step}, 0"));
    em.ins(format!("mov.b32 {in_piece}, 0"));
    em.ins(format!("mov.b32 {piece}, {start}"));
    em.ins(format!("mov.u32 {use_stage}, 0"));
    let (stop, send, ps) = (em.a.label("step"), em.a.label("step_end"), em.reg(Class::P));
    em.a.place(&stop);
    em.ins(format!("setp.ge.s32 {ps}, {step}, {total}"));
    em.ins(format!("@{ps} bra {send}"));
    issue(em)?;

    // At a piece's first step its sums start at zero; its `alpha` (and
    // `beta`) per column are `b` at the piece's first `k` with the code 1
    // (and 0), computed at its last step.
    let coef: Vec<(String, Option<String>)> = (0..16)
        .map(|_| {
            let a = em.reg(Class::F);
            let b = plan.offset.then(|| em.reg(Class::F));
            (a, b)
        })
        .collect();
    // The coefficients of the current piece (`piece`) for column blocks
    // `js`, into `coef`.
    let eval_coef = |em: &mut Em, js: std::ops::Range<usize>| -> Result<(), PtxError> {
        let kstart = em.reg(Class::D);
        em.ins(format!("mul.wide.u32 {kstart}, {piece}, {}", plan.piece));
        let prev_k = em.bind(kv, kstart);
        let col0 = em.reg(Class::D);
        em.ins(format!("mad.lo.s64 {col0}, {t64}, 2, {n0}"));
        // `b` at the code 1 with `cast(1) * s` folded to `s` (ptxas kept
        // W4's 16 multiplications by 1.0 a piece).
        let b_at_one = at_code_one(&plan.b, &plan.code_load);
        let eval_at = |em: &mut Em, code: &str| -> Result<String, PtxError> {
            em.col_codes = vec![(
                plan.code_load.clone(),
                Code {
                    r: code.to_string(),
                    w: 8,
                },
            )];
            em.memo = Some(Vec::new());
            let b = if code == c1 { &b_at_one } else { &plan.b };
            let v = em.emit(b);
            em.memo = None;
            em.col_codes.clear();
            Ok(v?.r)
        };
        let prev_n = em.vars.get(&nv).cloned();
        // What does not read the column (a group's row of scales, `k / G`
        // times the row stride) once for all the lane's columns; the
        // code's load reads the column, so values of the code never are.
        // Both row caches start and end empty here: what they hold is
        // computed in this call's region only.
        em.col_var = Some(nv);
        em.forget_row();
        for j in js {
            for e in 0..2 {
                let col = em.reg(Class::D);
                em.ins(format!("add.s64 {col}, {col0}, {}", 8 * j + e));
                em.bind(nv, col);
                let at1 = eval_at(em, &c1)?;
                let (alpha, beta) = &coef[2 * j + e];
                match beta {
                    Some(beta) => {
                        let b0 = eval_at(em, &c0)?;
                        em.ins(format!("mov.f32 {beta}, {b0}"));
                        em.ins(format!("sub.f32 {alpha}, {at1}, {b0}"));
                    }
                    None => em.ins(format!("mov.f32 {alpha}, {at1}")),
                }
            }
        }
        em.col_var = None;
        em.forget_row();
        em.unbind(nv, prev_n);
        em.unbind(kv, prev_k);
        Ok(())
    };
    {
        let (skip, p) = (em.a.label("piece_start"), em.reg(Class::P));
        em.ins(format!("setp.ne.s32 {p}, {in_piece}, 0"));
        em.ins(format!("@{p} bra {skip}"));
        for x in part.iter().flatten().chain(&sums) {
            em.ins(format!("mov.f32 {x}, 0f00000000"));
        }
        em.a.place(&skip);
    }

    // This step's copies have landed: the lane's own, and after the
    // warp's barrier every lane's (`ldmatrix` reads rows other lanes
    // copied).
    em.ins(format!("cp.async.wait_group {}", stages - 1));
    em.ins("bar.warp.sync -1");
    let at = em.reg(Class::R);
    em.ins(format!("add.u32 {at}, {ring}, {use_stage}"));
    let words: Vec<String> = (0..8).map(|_| em.reg(Class::R)).collect();
    for h in 0..2 {
        em.ins(format!(
            "ld.shared.v4.b32 {{{}}}, [{at}+{}]",
            words[h * 4..h * 4 + 4].join(", "),
            512 * h
        ));
    }
    // `a` of each half in fragment order: rows g and g + 8 at `k = 16 h
    // + 2 t` and `16 h + 8 + 2 t` (`lower::fragment_index`).
    let lm0 = em.reg(Class::R);
    em.ins(format!("add.u32 {lm0}, {at}, {lm}"));
    let quads: Vec<Vec<String>> = (0..2)
        .map(|h| {
            let addr = if h == 0 {
                lm0.clone()
            } else {
                let x = em.reg(Class::R);
                em.ins(format!("xor.b32 {x}, {lm0}, 32"));
                x
            };
            let q: Vec<String> = (0..4).map(|_| em.reg(Class::R)).collect();
            em.ins(format!(
                "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{}}}, [{addr}]",
                q.join(", ")
            ));
            q
        })
        .collect();
    for h in 0..2 {
        let a = &quads[h];
        for (j, p) in part.iter().enumerate() {
            let w = &words[h * 4 + j / 2];
            let b: Vec<String> = (0..2)
                .map(|reg| {
                    let q = (j % 2) * 2 + reg;
                    let v = em.reg(Class::R);
                    let src = if q == 0 {
                        w.clone()
                    } else {
                        let sh = em.reg(Class::R);
                        em.ins(format!("shr.u32 {sh}, {w}, {}", 4 * q));
                        sh
                    };
                    // `(src & 0x000f000f) | magic` in one instruction
                    // (table 0xEA: a & b | c; signed, 0x6A: a & b ^ c),
                    // which ptxas does not always merge from an `and`
                    // and an `or`.
                    em.ins(format!("lop3.b32 {v}, {src}, 983055, {magic}, {table}"));
                    let mn = if plan.half == DType::BF16 {
                        "bf16x2"
                    } else {
                        "f16x2"
                    };
                    em.ins(format!("fma.rn.{mn} {v}, {v}, {one}, {minus}"));
                    v
                })
                .collect();
            em.ins(format!(
                "{} {{{p}}}, {{{a}}}, {{{b}}}, {{{p}}}",
                plan.mma(),
                p = p.join(", "),
                a = a.join(", "),
                b = b.join(", ")
            ));
        }
        if plan.offset {
            em.ins(format!(
                "{} {{{s}}}, {{{a}}}, {{{one}, {one}}}, {{{s}}}",
                plan.mma(),
                s = sums.join(", "),
                a = a.join(", ")
            ));
        }
    }
    {
        let p = em.reg(Class::P);
        em.ins(format!("add.u32 {use_stage}, {use_stage}, {stage_bytes}"));
        em.ins(format!(
            "setp.eq.u32 {p}, {use_stage}, {}",
            stages * stage_bytes
        ));
        em.ins(format!("@{p} mov.u32 {use_stage}, 0"));
    }

    // At a piece's last step: its sums, scaled, into the warp's sums.
    em.ins(format!("add.s32 {step}, {step}, 1"));
    em.ins(format!("add.s32 {in_piece}, {in_piece}, 1"));
    let (next, pl) = (em.a.label("piece_end"), em.reg(Class::P));
    em.ins(format!("setp.ne.s32 {pl}, {in_piece}, {steps}"));
    em.ins(format!("@{pl} bra {next}"));
    // The coefficients are computed here, all the lane's columns at once
    // (what does not read the column, a group's row of scales, once; a
    // column block at a time, W4's SASS computed each block's 64-bit row
    // address anew, 8 instructions a block), from what
    // `prefetch_coefficients` brought into L1 before the first step
    // (computed at the piece's first step, the first piece waited there
    // for memory; `alpha` and `beta` held across a piece also cost 32
    // registers).
    eval_coef(em, 0..part.len())?;
    for (j, p) in part.iter().enumerate() {
        let x: Vec<String> = (0..4).map(|_| em.reg(Class::F)).collect();
        let at = j * 32 * 16;
        em.ins(format!(
            "ld.shared.v4.f32 {{{}}}, [{slot}+{at}]",
            x.join(", ")
        ));
        for e in 0..2 {
            let (alpha, beta) = &coef[2 * j + e];
            for half in 0..halves {
                let i = 2 * half + e;
                let x = &x[i];
                em.ins(format!("fma.rn.f32 {x}, {alpha}, {}, {x}", p[i]));
                if let Some(beta) = beta {
                    em.ins(format!("fma.rn.f32 {x}, {beta}, {}, {x}", sums[2 * half]));
                }
            }
        }
        em.ins(format!(
            "st.shared.v4.f32 [{slot}+{at}], {{{}}}",
            x.join(", ")
        ));
    }
    em.ins(format!("mov.b32 {in_piece}, 0"));
    em.ins(format!("add.s32 {piece}, {piece}, {stride}"));
    {
        let past = em.reg(Class::P);
        em.ins(format!("setp.ge.u32 {past}, {piece}, {pieces}"));
        em.ins(format!("@{past} mov.b32 {piece}, {first}"));
    }
    em.a.place(&next);
    em.ins(format!("bra.uni {stop}"));
    em.a.place(&send);
    em.ins("cp.async.wait_group 0");

    // Warp `w` sums column block `w` of every warp and runs its epilogue.
    em.ins("bar.sync 0");
    let mine = em.reg(Class::R);
    em.ins(format!("mad.lo.u32 {mine}, {warp}, 32, {lane}"));
    em.ins(format!("mad.lo.u32 {mine}, {mine}, 16, {smem}"));
    let total: Vec<String> = (0..4).map(|_| em.reg(Class::F)).collect();
    for w in 0..WARPS {
        let v: Vec<String> = (0..4).map(|_| em.reg(Class::F)).collect();
        em.ins(format!(
            "ld.shared.v4.f32 {{{}}}, [{mine}+{}]",
            v.join(", "),
            w * 8 * 32 * 16
        ));
        for (s, x) in total.iter().zip(&v) {
            if w == 0 {
                em.ins(format!("mov.f32 {s}, {x}"));
            } else {
                em.ins(format!("add.f32 {s}, {s}, {x}"));
            }
        }
    }
    let stored = em.a.label("stored");
    if split {
        merge_splits(
            em,
            plan,
            &Merge {
                scratch: &scratch,
                unit: &lp.tile,
                tile: &tile,
                whole: &whole,
                units,
                tid: &tid,
                smem: &smem,
                stored: &stored,
                total: &total,
            },
        );
    }
    let (wm_base, wn_base) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("mov.u32 {wm_base}, 0"));
    em.ins(format!("shl.b32 {wn_base}, {warp}, 3"));
    store_tile(
        em,
        &TileStore {
            acc: &total,
            int_acc: false,
            warp_m: TILE_M,
            warp_n: 8,
            lane: &lane,
            wm_base: &wm_base,
            wn_base: &wn_base,
            m0: &m0,
            n0: &n0,
            bflat: &bflat,
            m_dim: &m_dim,
            n_dim: &n_dim,
        },
        epilogue,
        None,
    )?;
    em.a.place(&stored);
    // The next tile's sums reuse the shared memory.
    em.ins("bar.sync 0");
    lp.end(em);
    Ok(())
}

/// The most pieces per warp whose coefficients are prefetched.
const PREFETCH_PIECES: u64 = 16;

/// Prefetches into L1 what the warp's pieces' coefficients read (every
/// load of `b` but the codes': a group's row of scales, zero points),
/// before the first step. A piece's `alpha` is computed at its first step;
/// loaded only then, each piece waited there for memory (on the H100, a
/// sixth of W4's stall samples). The lanes cover the tile's 64 columns,
/// two each. Only unguarded loads of whole bytes outside any `select` are
/// prefetched, so every address prefetched is one the piece loads.
fn prefetch_coefficients(
    em: &mut Em,
    plan: &QmmaPlan,
    (kv, nv): (Var, Var),
    (first, stride): (&str, &str),
    (n0, lane): (&str, &str),
) -> Result<(), PtxError> {
    // `stride` is the warps' count or a multiple of it held in a register.
    let fixed = stride.parse::<u32>().ok();
    let mut selects = Vec::new();
    loads_where(&plan.b, &mut selects, &|e| matches!(e, Expr::Select(..)));
    let mut loads = Vec::new();
    loads_where(&plan.b, &mut loads, &|e| {
        matches!(e, Expr::Load { guard: None, .. }) && *e != plan.code_load
    });
    loads.dedup();
    let inputs = &em.k.inputs;
    loads.retain(
        |l| matches!(l, Expr::Load { input, .. } if inputs[*input].dtype.bits().is_multiple_of(8)),
    );
    let per_warp = (plan.depth / plan.piece).div_ceil(u64::from(fixed.unwrap_or(WARPS)));
    if !selects.is_empty() || loads.is_empty() || per_warp > PREFETCH_PIECES {
        return Ok(());
    }
    let col = em.reg(Class::D);
    em.ins(format!("cvt.u64.u32 {col}, {lane}"));
    em.ins(format!("mad.lo.s64 {col}, {col}, 2, {n0}"));
    let prev_n = em.bind(nv, col);
    for i in 0..per_warp {
        let (skip, p, piece) = (em.a.label("prefetch"), em.reg(Class::P), em.reg(Class::R));
        match fixed {
            Some(f) => em.ins(format!("add.u32 {piece}, {first}, {}", i * u64::from(f))),
            None => em.ins(format!("mad.lo.u32 {piece}, {stride}, {i}, {first}")),
        }
        em.ins(format!(
            "setp.ge.u32 {p}, {piece}, {}",
            plan.depth / plan.piece
        ));
        em.ins(format!("@{p} bra {skip}"));
        let kstart = em.reg(Class::D);
        em.ins(format!("mul.wide.u32 {kstart}, {piece}, {}", plan.piece));
        let prev_k = em.bind(kv, kstart);
        for l in &loads {
            let Expr::Load { input, index, .. } = l else {
                continue;
            };
            let flat = em.flat_index(l, *input, index)?;
            let addr = em.reg(Class::D);
            let bytes = em.k.inputs[*input].dtype.bits() / 8;
            let base = em.in_ptr[*input].clone();
            em.ins(format!("mad.lo.s64 {addr}, {flat}, {bytes}, {base}"));
            em.ins(format!("prefetch.global.L1 [{addr}]"));
        }
        em.unbind(kv, prev_k);
        em.a.place(&skip);
    }
    em.unbind(nv, prev_n);
    Ok(())
}

/// What [`merge_splits`] works with.
struct Merge<'s> {
    /// The scratch memory (global address), the unit, its tile, the
    /// whole tiles' count and the units' count (u64), the thread (u32),
    /// the shared memory's start.
    scratch: &'s str,
    unit: &'s str,
    tile: &'s str,
    whole: &'s str,
    units: &'s str,
    tid: &'s str,
    smem: &'s str,
    /// Where a block that is not the last goes (past the epilogue).
    stored: &'s str,
    /// The thread's four block sums.
    total: &'s [String],
}

/// A split unit's sums (a unit past the whole tiles; a whole tile's go
/// on to the epilogue): each thread stores its four to the scratch
/// memory (unit `u`'s at `u * THREADS * 16`, the thread's 16 bytes at
/// `tid * 16`), the block counts its arrival on its tile's counter (after
/// every unit's sums), and the block that arrives last adds every part's
/// sums in part order (the result does not depend on which block is
/// last), sets the counter back to zero and goes on to the epilogue; the
/// others skip it.
fn merge_splits(em: &mut Em, plan: &QmmaPlan, m: &Merge) {
    let pb = THREADS * 16;
    let (whole_tile, merged) = (em.reg(Class::P), em.a.label("merged"));
    em.ins(format!("setp.lt.s64 {whole_tile}, {}, {}", m.unit, m.whole));
    em.ins(format!("@{whole_tile} bra.uni {merged}"));
    let arrival = super::splits::Arrival {
        scratch: m.scratch,
        units: m.units,
        per_unit: pb,
        tile: m.tile,
        tid: m.tid,
        smem: m.smem,
        flag_at: plan.shared_bytes() - 16,
        splits: plan.splits,
        not_last: m.stored,
        sync: "bar.sync 0".to_string(),
    };
    let off = em.reg(Class::D);
    em.ins(format!("mul.wide.u32 {off}, {}, 16", m.tid));
    let own = arrival.own_partial(em, m.unit, &off);
    em.ins(format!(
        "st.global.v4.f32 [{own}], {{{}}}",
        m.total.join(", ")
    ));
    em.ins("fence.acq_rel.gpu");
    let ctr = arrival.emit(em);
    // The tile's first unit: `whole + (tile - whole) * splits`.
    let base = em.reg(Class::D);
    em.ins(format!("sub.s64 {base}, {}, {}", m.tile, m.whole));
    em.ins(format!(
        "mad.lo.s64 {base}, {base}, {}, {}",
        plan.splits, m.whole
    ));
    let base = arrival.own_partial(em, &base, &off);
    for sp in 0..plan.splits {
        let v: Vec<String> = (0..4).map(|_| em.reg(Class::F)).collect();
        em.ins(format!(
            "ld.global.cg.v4.f32 {{{}}}, [{base}+{}]",
            v.join(", "),
            sp * pb
        ));
        for (s, x) in m.total.iter().zip(&v) {
            if sp == 0 {
                em.ins(format!("mov.f32 {s}, {x}"));
            } else {
                em.ins(format!("add.f32 {s}, {s}, {x}"));
            }
        }
    }
    super::splits::Arrival::reset(em, &ctr, m.tid);
    em.a.place(&merged);
}
