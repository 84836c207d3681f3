//! Tensor-core contractions ([`Grid::Tiles`](kiln_runtime::cuda::kernel::Grid)):
//! `mma.sync.m16n8k16` with f32 accumulation for contractions whose
//! operands are plain loads of bf16 (or f16) matrices.
//!
//! A block of 256 threads computes one 128x128 or 128x256 tile of the
//! output ([`Tiling`]: eight warps, two along `m` by four along `n`, each a
//! 64x32 or 64x64 sub-tile held as 64 or 128 f32 accumulators per thread),
//! walking `k` in steps of 32:
//!
//! * each step's slices of `a` (128x32) and `b` (32x128) are copied to
//!   shared memory with 16-byte `cp.async` copies, four stages deep, so the
//!   copies of the next three steps are in flight while a step computes;
//!   copies past the matrix's end are zero-filled (their source clamped to
//!   the matrix's start);
//! * shared rows are padded by 16 bytes, which makes every `ldmatrix`
//!   (eight rows of 16 bytes) hit eight distinct groups of four banks;
//! * fragments are read with `ldmatrix` (`.trans` for an operand stored
//!   with its `m`/`n` axis contiguous, so both orientations of either
//!   operand use the same tiles);
//! * after the last step, each accumulator goes through the epilogue
//!   (bias, activation, residual, cast: any expression of the kernel
//!   dialect over `Acc` and the output's index) and is stored.
//!
//! The path applies when the kernel computes in f32, both operands are
//! unguarded loads of bf16 (or both of f16) tensors indexed
//! `[batch.., m, k]` or `[batch.., k, m]` (and `[batch.., k, n]` or
//! `[batch.., n, k]`), the batch indices read only batch variables, each
//! operand's contiguous axis is static and a multiple of 8 (so every
//! 16-byte copy is aligned and wholly inside or outside a row), and a `k`
//! that is contiguous has a static extent that is a multiple of 8. Other
//! contractions take the generic path.

use kiln_dialect::DType;
use kiln_dialect::kernel::{Binary, Body, Expr, Kernel, Ty, Unary, Var};

use super::asm::Class;
use super::dtype_io::{Code, code_class, code_width};
use super::elements::{scalar_ty, unravel};
use super::expr::{Em, Val, free_vars, reads_acc};
use super::{PtxArch, PtxError};

/// The tile shapes of one tensor-core kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    /// Output rows (`m`) and columns (`n`) of one block's tile.
    pub tile_m: u32,
    pub tile_n: u32,
    /// The `k` step: the depth of one stage's slices.
    pub tile_k: u32,
    /// Each warp's sub-tile.
    pub warp_m: u32,
    pub warp_n: u32,
    /// Stages of the copy pipeline.
    pub stages: u32,
    /// Blocks each multiprocessor should hold (`.minnctapersm`: it bounds
    /// the registers per thread).
    pub blocks_per_sm: u32,
    /// Whether the warpgroup instructions of sm_90a (`wgmma.mma_async`,
    /// operands read from 128-byte-swizzled shared memory) compute the
    /// tile, each warp group of four warps a 64-row slab (`warp_m` is 16:
    /// each warp's rows of it); else `mma.sync` per warp.
    pub wgmma: bool,
}

impl Tiling {
    /// 128x256 tiles, `k` steps of 32, warps of 64x64, four stages, one
    /// block per multiprocessor.
    pub const LARGE: Tiling = Tiling {
        tile_m: 128,
        tile_n: 256,
        tile_k: 32,
        warp_m: 64,
        warp_n: 64,
        stages: 4,
        blocks_per_sm: 1,
        wgmma: false,
    };
    /// 128x128 tiles, `k` steps of 32, warps of 64x32, four stages, two
    /// blocks per multiprocessor (at most 128 registers a thread).
    pub const MEDIUM: Tiling = Tiling {
        tile_m: 128,
        tile_n: 128,
        tile_k: 32,
        warp_m: 64,
        warp_n: 32,
        stages: 4,
        blocks_per_sm: 2,
        wgmma: false,
    };
    /// Warpgroup tiles for sm_90a: 128x256, `k` steps of 64 (one 128-byte
    /// swizzled row per operand row), two warp groups of `m64n256k16`
    /// instructions, four stages (192 KiB), one block per multiprocessor.
    pub const WIDE_WG: Tiling = Tiling {
        tile_m: 128,
        tile_n: 256,
        tile_k: 64,
        warp_m: 16,
        warp_n: 256,
        stages: 4,
        blocks_per_sm: 1,
        wgmma: true,
    };
    /// Warpgroup tiles of 128x128 (`m64n128k16`), three stages (97 KiB)
    /// and two blocks per multiprocessor, so that one block's epilogue
    /// runs while the other's tensor cores work.
    pub const NARROW_WG2: Tiling = Tiling {
        tile_m: 128,
        tile_n: 128,
        tile_k: 64,
        warp_m: 16,
        warp_n: 128,
        stages: 3,
        blocks_per_sm: 2,
        wgmma: true,
    };
    /// Warpgroup tiles of 128x128 (`m64n128k16`), four stages.
    pub const NARROW_WG: Tiling = Tiling {
        tile_m: 128,
        tile_n: 128,
        tile_k: 64,
        warp_m: 16,
        warp_n: 128,
        stages: 4,
        blocks_per_sm: 1,
        wgmma: true,
    };

    /// Warpgroup `mma` groups left in flight at the end of a step: one
    /// with four stages or more (copies then run a step less ahead), none
    /// with fewer.
    fn wgmma_in_flight(&self) -> u32 {
        u32::from(self.wgmma && self.stages >= 4)
    }

    fn warps_n(&self) -> u32 {
        self.tile_n / self.warp_n
    }

    /// Threads per block.
    pub fn threads(&self) -> u32 {
        32 * (self.tile_m / self.warp_m) * self.warps_n()
    }

    /// Accumulators per thread.
    fn accs(&self) -> u32 {
        self.warp_m * self.warp_n / 32
    }

    /// The row pitch, in 4-byte words, of the output tile staged in
    /// shared memory ([`store_staged`]): 8 words more than a row, so that
    /// the four rows a half-warp's 8-byte stores reach lie in distinct
    /// banks.
    fn out_pitch(&self) -> u32 {
        self.tile_n + 8
    }

    /// Bytes of the staged output tile.
    fn out_tile_bytes(&self) -> u32 {
        self.tile_m * self.out_pitch() * 4
    }

    /// The row pitch in bytes of a slice: its rows' elements plus 16 bytes,
    /// which puts the eight 16-byte rows of an `ldmatrix` in distinct
    /// groups of banks.
    fn pitch(&self, s: Storage, outer: u32) -> u32 {
        if self.wgmma {
            return 128;
        }
        match s {
            Storage::OuterK => self.tile_k * 2 + 16,
            Storage::KOuter => outer * 2 + 16,
        }
    }

    /// Bytes of one stage's slice of an operand with `outer` rows or
    /// columns.
    fn slice_bytes(&self, s: Storage, outer: u32) -> u32 {
        if self.wgmma {
            // Rows of 128 bytes: 64 `k` (k contiguous) or 64 of the outer
            // axis per row, `outer / 64` column blocks of `tile_k` rows.
            return outer * self.tile_k * 2;
        }
        match s {
            Storage::OuterK => outer * self.pitch(s, outer),
            Storage::KOuter => self.tile_k * self.pitch(s, outer),
        }
    }
}

/// How an operand's tile is laid out, from which axis is contiguous in
/// memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Storage {
    /// `k` contiguous: rows of the outer axis (`m` for `a`, `n` for `b`).
    OuterK,
    /// The outer axis contiguous: rows of `k`.
    KOuter,
}

/// One operand: the input it loads, the indices of its batch axes, and
/// its storage.
#[derive(Clone, Debug)]
struct Operand {
    input: usize,
    lead: Vec<Expr>,
    storage: Storage,
    /// A load the threads evaluate themselves (any index expression, a
    /// guard) and store to shared memory, instead of copying a plain row:
    /// the expression and the variables of its outer axis and of `k`.
    staged: Option<(Expr, Var, Var)>,
    /// For a staged load whose runs of 8 consecutive `k` are 16 aligned
    /// bytes in memory: the index of a run's first element in terms of the
    /// run's number (the variable), copied with one 16-byte `cp.async`.
    chunk: Option<(Vec<Expr>, Var)>,
}

/// A contraction the tensor-core path compiles.
#[derive(Clone, Debug)]
pub(super) struct MmaPlan {
    elem: DType,
    a: Operand,
    b: Operand,
    pub tiling: Tiling,
    /// The kernel is the bf16 view of a contraction of 8-bit elements
    /// ([`byte_view`]): `mma.sync.m16n8k32` on pairs of them (s32
    /// accumulators for s8, f32 for fp8).
    pub bytes: Option<Bytes>,
    /// Blocks each output tile's `k` steps are dealt to (a power of two;
    /// 1: none). Each block sums its part of `k`, stores its accumulators
    /// to the scratch memory and counts its arrival; the last adds every
    /// split's accumulators in split order and runs the epilogue
    /// ([`Grid::SplitTiles`](kiln_runtime::cuda::kernel::Grid)). Chosen
    /// by [`auto_splits`] or `KILN_MMA_SPLITS`.
    pub splits: u32,
    /// Whether the slices come by tensor copies (`cp.async.bulk.tensor`
    /// issued by one thread, completing on an mbarrier per stage) instead
    /// of every thread's `cp.async` ([`MmaPlan::can_tma`]).
    pub tma: bool,
    /// Whether the epilogue runs on the tile staged in shared memory
    /// ([`store_staged`]): where it reads memory and the staged tile fits.
    pub stage_out: bool,
    /// Warp specialization (with [`MmaPlan::tma`]; `KILN_MMA_WS=1`): a
    /// ninth warp issues the tensor copies, waiting for each stage to be
    /// released, while the two warp groups only wait for their stages'
    /// bytes, compute and release them (an mbarrier per stage each way, no
    /// block barrier in the main loop), so the copies of a tile's steps
    /// (and of the next tile's, past a register epilogue) run ahead of the
    /// products ([`MmaPlan::can_specialize`]).
    pub specialized: bool,
    /// Row tiles per group of the tile order (`PtxOptions::mma_group`;
    /// 0 or 1: column tile fastest).
    pub group: u32,
    /// A register epilogue into a 16-bit output writes a tile that lies
    /// wholly inside the output through shared memory, then stores it in
    /// 16-byte chunks, a warp's row contiguous ([`store_tile_coalesced`];
    /// `PtxOptions::mma_coalesced_stores`, [`MmaPlan::can_coalesce`]).
    pub coalesce_out: bool,
    /// A staged epilogue with one load at the element's own place writes
    /// whole tiles in 16-byte chunks ([`store_staged_chunks`];
    /// `PtxOptions::mma_staged_chunks`).
    pub chunk_staged: bool,
}

/// Split-K: how many blocks a skinny contraction's tiles are dealt to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Splits {
    /// [`auto_splits`]: enough splits to occupy the multiprocessors when
    /// the output has too few tiles, each split at least
    /// [`MIN_SPLIT_STEPS`] steps of `k`.
    Auto,
    /// This many (a power of two, at most 64) for every tensor-core
    /// contraction (splits past `k`'s steps add zeros).
    Fixed(u32),
}

impl Splits {
    /// `auto` or a power of two up to 64.
    pub fn parse(s: &str) -> Option<Splits> {
        match s.trim() {
            "auto" => Some(Splits::Auto),
            x => x
                .parse::<u32>()
                .ok()
                .filter(|n| n.is_power_of_two() && *n <= 64)
                .map(Splits::Fixed),
        }
    }
}

/// The multiprocessors [`auto_splits`] fills: the H100 SXM's 132 (an
/// A100's 108 are fewer: its tiles then run in a little more than one
/// wave).
const MULTIPROCESSORS: u64 = 132;
/// The fewest `k` steps a split of [`auto_splits`] takes (the copy
/// pipeline fills three steps ahead).
pub const MIN_SPLIT_STEPS: u64 = 4;
/// The most splits of a tile.
const MAX_SPLITS: u64 = 16;

/// The splits of a contraction whose output tiles fill fewer than half of
/// the block slots of [`MULTIPROCESSORS`]: the largest power of two that
/// keeps the units within half the slots and gives each split at least
/// [`MIN_SPLIT_STEPS`] steps, at most [`MAX_SPLITS`]. Shapes that are not
/// static (the tile count is unknown at compile time) get 1.
pub(super) fn auto_splits(k: &Kernel, t: &Tiling, extent: &Expr) -> u32 {
    let dims: Option<Vec<u64>> = k.output.shape.0.iter().map(|d| d.as_static()).collect();
    let (Some(dims), Expr::Int(depth)) = (dims, extent) else {
        return 1;
    };
    let r = dims.len();
    let batch: u64 = dims[..r - 2].iter().product();
    let tiles = batch
        * dims[r - 2].div_ceil(u64::from(t.tile_m))
        * dims[r - 1].div_ceil(u64::from(t.tile_n));
    let slots = MULTIPROCESSORS * u64::from(t.blocks_per_sm);
    let steps = (*depth).max(0) as u64 / u64::from(t.tile_k);
    if tiles == 0 || tiles * 2 > slots {
        return 1;
    }
    let mut s = 1u64;
    // Units fill at most half the slots: each split writes and reads back
    // its tile's f32 accumulators (128 KiB for 128x256), and on the H100
    // 256x8192x1024 (8 tiles) ran 0.0340 ms at 8 splits, 0.0429 at 16.
    while s * 2 <= MAX_SPLITS && tiles * s * 4 <= slots && steps / (s * 2) >= MIN_SPLIT_STEPS {
        s *= 2;
    }
    s as u32
}

impl MmaPlan {
    fn a_bytes(&self) -> u32 {
        self.tiling.slice_bytes(self.a.storage, self.tiling.tile_m)
    }

    fn stage_bytes(&self) -> u32 {
        self.a_bytes() + self.tiling.slice_bytes(self.b.storage, self.tiling.tile_n)
    }

    /// The shared memory the stages take, or the staged output tile
    /// where it is larger ([`MmaPlan::stage_out`]); a split grid's flag
    /// and the mbarriers lie past it.
    fn stages_end(&self) -> u32 {
        let stages = self.tiling.stages * self.stage_bytes();
        if self.stage_out {
            stages.max(self.tiling.out_tile_bytes())
        } else {
            stages
        }
    }

    /// Dynamic shared memory per block (warpgroup tiles: 1 KiB more, to
    /// align the stages to the 1024 bytes of the swizzle pattern).
    pub fn shared_bytes(&self) -> u32 {
        let align = if self.tiling.wgmma { 1024 } else { 0 };
        self.bars_at() + self.bar_count() * 8 + align
    }

    /// The mbarriers: with tensor copies one per stage (its bytes have
    /// landed); warp-specialized also one per stage the other way (the
    /// warp groups are done with it) and one for a staged epilogue's end.
    fn bar_count(&self) -> u32 {
        match (self.tma, self.specialized) {
            (false, _) => 0,
            (true, false) => self.tiling.stages,
            (true, true) => 2 * self.tiling.stages + 1,
        }
    }

    /// Threads per block: the tiling's, and the copying warp of a
    /// warp-specialized plan.
    pub fn threads(&self) -> u32 {
        self.tiling.threads() + if self.specialized { 32 } else { 0 }
    }

    /// The barrier the computing threads pass together: the whole block,
    /// or (warp-specialized) barrier 1 counting the warp groups' threads
    /// only, since the copying warp runs on its own.
    fn sync(&self) -> String {
        if self.specialized {
            format!("bar.sync 1, {}", self.tiling.threads())
        } else {
            "bar.sync 0".to_string()
        }
    }

    /// Row pitch in bytes of the 16-bit tile [`store_tile_coalesced`]
    /// stages: its elements plus 16 bytes (a warp's pair stores, eight
    /// rows of four lanes, then fall in distinct banks).
    fn coalesce_pitch(&self) -> u32 {
        self.tiling.tile_n * 2 + 16
    }

    /// Whether [`store_tile_coalesced`] can end this plan's tiles: a
    /// register epilogue ([`MmaPlan::stage_out`] off) into a 16-bit output,
    /// no copying warp (it refills the stages during the epilogue), the
    /// staged tile within the stages, and whole 16-byte rows of chunks
    /// shared evenly by the threads.
    pub fn can_coalesce(&self, out: DType) -> bool {
        let t = &self.tiling;
        let per_row = t.tile_n / 8;
        out.bits() == 16
            && !self.stage_out
            && !self.specialized
            && t.tile_m * self.coalesce_pitch() <= t.stages * self.stage_bytes()
            && t.threads().is_multiple_of(per_row)
            && t.tile_m.is_multiple_of(t.threads() / per_row)
    }

    /// Whether a copying warp can feed this plan: tensor copies and one
    /// block per multiprocessor (the ninth warp's registers come out of
    /// the others': 65536 / 288 threads leave 224 a thread).
    pub fn can_specialize(&self) -> bool {
        self.can_tma() && self.tiling.blocks_per_sm == 1
    }

    /// Where the stages' mbarriers lie (tensor copies): past the stages
    /// and a split grid's 16-byte flag.
    fn bars_at(&self) -> u32 {
        let flag = if self.splits > 1 { 16 } else { 0 };
        self.stages_end() + flag
    }

    /// Whether tensor copies can feed this plan: warpgroup tiles (the
    /// 128-byte swizzled slices a tensor map's box lands as), both
    /// operands plain 16-bit loads (not staged, not an 8-bit view).
    pub fn can_tma(&self) -> bool {
        self.tiling.wgmma
            && self.tiling.tile_k * 2 == 128
            && self.a.staged.is_none()
            && self.b.staged.is_none()
            && self.bytes.is_none()
    }

    /// The tensor maps the kernel reads (`a`'s, then `b`'s), when
    /// [`MmaPlan::tma`]: boxes of 64 elements (128 bytes) by the tile's
    /// rows (`k`-contiguous operands) or by `tile_k` rows of `k`
    /// (outer-contiguous ones, one box per 64 columns).
    pub fn tensor_maps(&self) -> Vec<kiln_runtime::cuda::TensorMapSpec> {
        if !self.tma {
            return Vec::new();
        }
        let t = self.tiling;
        let spec = |o: &Operand, outer: u32| kiln_runtime::cuda::TensorMapSpec {
            arg: o.input as u32,
            box_inner: 64,
            box_rows: match o.storage {
                Storage::OuterK => outer,
                Storage::KOuter => t.tile_k,
            },
            elem_bytes: 2,
        };
        vec![spec(&self.a, t.tile_m), spec(&self.b, t.tile_n)]
    }

    /// A split block's accumulators in the scratch memory: every thread's
    /// 4-byte accumulators, accumulator `c` of thread `t` at `(c *
    /// threads + t) * 4`.
    fn partial_bytes(&self) -> u32 {
        self.tiling.accs() * self.tiling.threads() * 4
    }

    /// Scratch bytes per unit of a split grid: its partial, then room for
    /// a tile's counter.
    pub fn scratch_per_unit(&self) -> u32 {
        self.partial_bytes() + 4
    }
}

/// The tiling for an output of `n` columns on `arch`: on sm_90a warpgroup
/// tiles (128x256 where `n` is at least 256, else 128x128); elsewhere
/// `mma.sync` tiles (128x256 where `n` fills them, else 128x128).
/// `chosen` (`PtxOptions::mma_tiling`: `KILN_MMA_TILING` or the
/// autotuner) overrides the choice where it applies (warpgroup tilings on
/// sm_90a only).
fn tiling_for(n: Option<u64>, arch: PtxArch, chosen: Option<Tiling>) -> Tiling {
    if let Some(t) = chosen
        && (!t.wgmma || arch == PtxArch::Sm90a)
    {
        return t;
    }
    match (arch, n) {
        (PtxArch::Sm90a, Some(n)) if n >= 256 => Tiling::WIDE_WG,
        (PtxArch::Sm90a, _) => Tiling::NARROW_WG,
        (PtxArch::Sm80, Some(n)) if n >= 1024 => Tiling::LARGE,
        (PtxArch::Sm80, _) => Tiling::MEDIUM,
    }
}

/// A tiling by name (`medium`, `large`, `wide-wg`, `narrow-wg`,
/// `narrow-wg2`) or as `MxNxK,WMxWN,STAGES,BLOCKS` (an `mma.sync` tiling:
/// tile, warp tile, stages, blocks per multiprocessor); `None` when it
/// does not parse or does not fit.
pub fn parse_tiling(s: &str) -> Option<Tiling> {
    match s {
        "medium" => return Some(Tiling::MEDIUM),
        "large" => return Some(Tiling::LARGE),
        "wide-wg" => return Some(Tiling::WIDE_WG),
        "narrow-wg" => return Some(Tiling::NARROW_WG),
        "narrow-wg2" => return Some(Tiling::NARROW_WG2),
        _ => {}
    }
    let parts: Vec<&str> = s.split(',').collect();
    let nums = |p: &str| -> Option<Vec<u32>> { p.split('x').map(|x| x.parse().ok()).collect() };
    let (tile, warp) = (nums(parts.first()?)?, nums(parts.get(1)?)?);
    let t = Tiling {
        tile_m: *tile.first()?,
        tile_n: *tile.get(1)?,
        tile_k: *tile.get(2)?,
        warp_m: *warp.first()?,
        warp_n: *warp.get(1)?,
        stages: parts.get(2)?.parse().ok()?,
        blocks_per_sm: parts.get(3)?.parse().ok()?,
        wgmma: false,
    };
    let pow2 = |x: u32| x.is_power_of_two();
    let ok = [t.tile_m, t.tile_n, t.tile_k, t.warp_m, t.warp_n].into_iter().all(pow2)
        && t.warp_m >= 16
        && t.warp_n >= 16
        && t.tile_k >= 16
        && t.tile_m.is_multiple_of(t.warp_m)
        && t.tile_n.is_multiple_of(t.warp_n)
        && (64..=1024).contains(&t.threads())
        && t.stages >= 2
        && t.blocks_per_sm >= 1
        // Every copy pass covers whole slice rows.
        && t.threads() * 8 <= t.tile_k * t.tile_m.min(t.tile_n);
    ok.then_some(t)
}

/// The tensor-core plan of `k`, when the path applies (see the module's
/// documentation).
pub(super) fn plan(k: &Kernel, arch: PtxArch, chosen: Option<Tiling>) -> Option<MmaPlan> {
    if k.float == Ty::F64 {
        return None;
    }
    let Body::Contract {
        k: kv,
        extent,
        a,
        b,
        epilogue,
    } = &k.body
    else {
        return None;
    };
    let r = k.output.shape.rank();
    // Whole-byte outputs: each element is stored on its own.
    if r < 2 || k.output.dtype.bits() < 8 {
        return None;
    }
    let (mv, nv) = (Var(r as u32 - 2), Var(r as u32 - 1));
    let a = operand(k, a, mv, *kv, extent, r)?;
    let b = operand(k, b, nv, *kv, extent, r)?;
    let elem = k.inputs[a.input].dtype;
    let mut tiling = tiling_for(k.output.shape.0[r - 1].as_static(), arch, chosen);
    // An operand computed by the threads (a prologue) needs more than the
    // 128 registers of two `mma.sync` blocks per multiprocessor (ptxas
    // 13.0 spilled at sm_80).
    let computed =
        |o: &Operand| matches!(&o.staged, Some((e, _, _)) if !matches!(e, Expr::Load { .. }));
    if !tiling.wgmma && (computed(&a) || computed(&b)) {
        tiling.blocks_per_sm = 1;
    }
    let stage_bytes =
        tiling.slice_bytes(a.storage, tiling.tile_m) + tiling.slice_bytes(b.storage, tiling.tile_n);
    let stage_out = !epilogue_loads(epilogue).is_empty() && stage_fits(&tiling, stage_bytes, arch);
    (elem == k.inputs[b.input].dtype).then_some(MmaPlan {
        elem,
        a,
        b,
        tiling,
        bytes: None,
        splits: 1,
        tma: false,
        stage_out,
        group: 0,
        specialized: false,
        coalesce_out: false,
        chunk_staged: false,
    })
}

/// Shared memory per multiprocessor a kernel's blocks may take: an
/// H100's 227 KiB, an A100's 163 KiB.
fn shared_per_sm(arch: PtxArch) -> u32 {
    match arch {
        PtxArch::Sm90a => 227 * 1024,
        PtxArch::Sm80 => 163 * 1024,
    }
}

/// Whether `t`'s blocks still fit a multiprocessor with their output
/// tiles staged in shared memory ([`store_staged`]; 2 KiB left for a
/// split grid's flag, the mbarriers and the alignment).
fn stage_fits(t: &Tiling, stage_bytes: u32, arch: PtxArch) -> bool {
    let per_block = t.out_tile_bytes().max(t.stages * stage_bytes) + 2048;
    t.threads().is_power_of_two() && per_block * t.blocks_per_sm <= shared_per_sm(arch)
}

/// The most `k` of an int8 contraction: `k * 127 * 128` stays within the
/// s32 accumulators.
const INT8_MAX_K: i64 = 131_072;

/// The 8-bit element types of the byte tensor-core path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Bytes {
    /// `s8` codes, integer accumulation (s32).
    S8,
    /// fp8 `e4m3` / `e5m2`, f32 accumulation (sm_89 and later: sm_90a
    /// modules only).
    E4m3,
    E5m2,
}

impl Bytes {
    /// The `mma.sync` shape and types.
    pub fn mma(self) -> &'static str {
        match self {
            Bytes::S8 => "m16n8k32.row.col.s32.s8.s8.s32",
            Bytes::E4m3 => "m16n8k32.row.col.f32.e4m3.e4m3.f32",
            Bytes::E5m2 => "m16n8k32.row.col.f32.e5m2.e5m2.f32",
        }
    }

    /// The kernel kind in entry names.
    pub fn kind(self) -> &'static str {
        match self {
            Bytes::S8 => "imma",
            Bytes::E4m3 | Bytes::E5m2 => "f8mma",
        }
    }
}

/// A contraction of 8-bit elements (`sum_k a[.., m, k] * b[.., n, k]`,
/// both operands loads of `i8` tensors with integer accumulation, or both
/// of the same fp8 type, widened exactly, with f32 accumulation; `k`
/// contiguous in both) as the kernel the tensor-core path compiles, and
/// its element type: each operand's bytes read as a bf16-typed tensor of
/// half the row length, `k`'s extent halved. Two consecutive 8-bit
/// elements are one 16-bit element, so the copies, shared layout and
/// `ldmatrix` fragments of the bf16 path are exactly those of
/// `mma.sync.m16n8k32` on 8-bit types (its A fragment's register j holds
/// row g (+8), `k` 4q..4q+3 (+16), which is the bf16 A fragment's 16-bit
/// pairs; the same for B); [`MmaPlan::bytes`] then selects that
/// instruction (and s32 accumulators for s8). `None` where the path does
/// not apply: a `k` that is not a static multiple of 16 (16-byte copies)
/// up to [`INT8_MAX_K`], an operand with `n` or `m` contiguous (a weight
/// stored `[k, n]` is transposed at bind time first:
/// `lower::transpose_8bit_weights`), an epilogue that reads an operand,
/// fp8 on sm_80 (no fp8 `mma` there) or in a kernel that does not
/// compute in f32.
pub(super) fn byte_view(k: &Kernel, arch: PtxArch) -> Option<(Kernel, Bytes)> {
    let Body::Contract {
        k: kv,
        extent,
        a,
        b,
        epilogue,
    } = &k.body
    else {
        return None;
    };
    let r = k.output.shape.rank();
    let Expr::Int(n) = extent else {
        return None;
    };
    // (The bf16 path, which the view takes, computes in f32.)
    let bad_k = *n <= 0 || n % 16 != 0 || *n > INT8_MAX_K;
    if r < 2 || k.output.dtype.bits() < 8 || bad_k || k.float == Ty::F64 {
        return None;
    }
    let (mv, nv) = (Var(r as u32 - 2), Var(r as u32 - 1));
    let (ia, xa) = byte_load(k, a, mv, *kv, r)?;
    let (ib, xb) = byte_load(k, b, nv, *kv, r)?;
    let bytes = match (k.inputs[ia].dtype, k.inputs[ib].dtype) {
        (DType::I8, DType::I8) => Bytes::S8,
        (DType::F8E4M3, DType::F8E4M3) => Bytes::E4m3,
        (DType::F8E5M2, DType::F8E5M2) => Bytes::E5m2,
        _ => return None,
    };
    // Integer codes accumulate as integers, fp8 values as f32.
    let int_operands = |e: &Expr| {
        !matches!(e, Expr::Round(d, _) if d.is_float()) && !matches!(e, Expr::Cast(Ty::F32, _))
    };
    let float_operands = |e: &Expr| {
        !matches!(e, Expr::Round(d, _) if d.is_int()) && !matches!(e, Expr::Cast(Ty::I64, _))
    };
    match bytes {
        Bytes::S8 if !(int_operands(a) && int_operands(b)) => return None,
        Bytes::E4m3 | Bytes::E5m2 if !(float_operands(a) && float_operands(b)) => return None,
        Bytes::E4m3 | Bytes::E5m2 if arch != PtxArch::Sm90a || k.float != Ty::F32 => {
            return None;
        }
        _ => {}
    }
    fn reads(e: &Expr, ins: [usize; 2]) -> bool {
        let mut any = matches!(e, Expr::Load { input, .. } if ins.contains(input));
        e.for_each_child(|c| any |= reads(c, ins));
        any
    }
    if ia == ib || reads(epilogue, [ia, ib]) {
        return None;
    }
    let mut view = k.clone();
    for i in [ia, ib] {
        let buf = &mut view.inputs[i];
        let last = buf.shape.0.last_mut()?;
        *last = kiln_dialect::Dim::Static(last.as_static()? / 2);
        buf.dtype = DType::BF16;
    }
    let load = |input: usize, index: &[Expr]| Expr::Load {
        input,
        index: index.to_vec(),
        guard: None,
    };
    view.body = Body::Contract {
        k: *kv,
        extent: Expr::Int(n / 2),
        a: load(ia, xa),
        b: load(ib, xb),
        epilogue: epilogue.clone(),
    };
    Some((view, bytes))
}

/// An unguarded load of an 8-bit tensor (`i8` plain, or rounded or cast to
/// an integer type; fp8 plain, or rounded to bf16, f16 or cast to f32:
/// each leaves its value unchanged) indexed `[.., outer, k]` with a last
/// axis that is a static multiple of 16 and batch indices that read only
/// batch variables: its input and index.
fn byte_load<'e>(
    k: &Kernel,
    e: &'e Expr,
    outer: Var,
    kv: Var,
    r: usize,
) -> Option<(usize, &'e [Expr])> {
    let inner = match e {
        // Integer types that hold every i8 (a narrower or unsigned one
        // would wrap).
        Expr::Round(DType::I8 | DType::I32 | DType::I64, x) => x.as_ref(),
        Expr::Round(DType::BF16 | DType::F16 | DType::F32, x) => x.as_ref(),
        Expr::Cast(Ty::I64 | Ty::F32, x) => x.as_ref(),
        e => e,
    };
    let Expr::Load {
        input,
        index,
        guard: None,
    } = inner
    else {
        return None;
    };
    let buf = k.inputs.get(*input)?;
    let n = index.len();
    let byte = matches!(buf.dtype, DType::I8 | DType::F8E4M3 | DType::F8E5M2);
    if !byte || n < 2 || buf.shape.rank() != n {
        return None;
    }
    if buf.shape.0[n - 1].as_static()? % 16 != 0 {
        return None;
    }
    if index[n - 1] != Expr::Var(kv) || !is_index_of(k, &index[n - 2], outer) {
        return None;
    }
    let batch = |v: &Var| (v.0 as usize) < r.saturating_sub(2);
    index[..n - 2]
        .iter()
        .all(|i| free_vars(i).iter().all(batch))
        .then_some((*input, index.as_slice()))
}

fn operand(k: &Kernel, e: &Expr, outer: Var, kv: Var, extent: &Expr, r: usize) -> Option<Operand> {
    plain_operand(k, e, outer, kv, extent, r).or_else(|| staged_operand(k, e, outer, kv, extent))
}

/// A load of a bf16/f16 tensor at any index (a transpose, a reshape, a
/// slice, a guarded pad), or an elementwise expression of such loads (a
/// scale and activation fused in as a prologue), without reductions: the
/// threads evaluate it element by element and store it `k`-contiguous,
/// rounded to the element type of its first bf16/f16 load (exact for a
/// load; for a computed prologue the rounding the graph's own bf16/f16
/// intermediate has).
fn staged_operand(k: &Kernel, e: &Expr, outer: Var, kv: Var, extent: &Expr) -> Option<Operand> {
    if super::has_reduce(e) || super::expr::Em::new(k).ty_of(e) != Ty::F32 {
        return None;
    }
    if !matches!(e, Expr::Load { .. }) && !float_loads_only(k, e) {
        return None;
    }
    let input = first_half_load(k, e)?;
    Some(Operand {
        input,
        lead: Vec::new(),
        storage: Storage::OuterK,
        staged: Some((e.clone(), outer, kv)),
        chunk: chunk_of(k, e, kv, extent),
    })
}

/// Whether every load in `e` reads bf16, f16 or f32 elements (a computed
/// prologue of float tensors; a dequantization of codes is not one: its
/// values rounded to 16 bits would differ from the f32 the evaluator
/// computes by more than f32 rounding, and it needs more registers than
/// the copy loop has).
pub(super) fn float_loads_only(k: &Kernel, e: &Expr) -> bool {
    if let Expr::Load { input, .. } = e {
        return k
            .inputs
            .get(*input)
            .is_some_and(|b| matches!(b.dtype, DType::BF16 | DType::F16 | DType::F32));
    }
    let mut ok = true;
    e.for_each_child(|c| ok &= float_loads_only(k, c));
    ok
}

/// The input of the first bf16 or f16 load in `e`.
pub(super) fn first_half_load(k: &Kernel, e: &Expr) -> Option<usize> {
    if let Expr::Load { input, .. } = e
        && matches!(k.inputs.get(*input)?.dtype, DType::BF16 | DType::F16)
    {
        return Some(*input);
    }
    let mut found = None;
    e.for_each_child(|c| {
        if found.is_none() {
            found = first_half_load(k, c);
        }
    });
    found
}

fn plain_operand(
    k: &Kernel,
    e: &Expr,
    outer: Var,
    kv: Var,
    extent: &Expr,
    r: usize,
) -> Option<Operand> {
    let (input, index) = plain_load(k, e, r)?;
    let n = index.len();
    let is_outer = |e: &Expr| is_index_of(k, e, outer);
    let storage = match (&index[n - 2], &index[n - 1]) {
        (o, Expr::Var(x)) if is_outer(o) && *x == kv => Storage::OuterK,
        (Expr::Var(x), o) if is_outer(o) && *x == kv => Storage::KOuter,
        _ => return None,
    };
    if storage == Storage::OuterK && !matches!(extent, Expr::Int(x) if *x > 0 && x % 8 == 0) {
        return None;
    }
    Some(Operand {
        input,
        lead: index[..n - 2].to_vec(),
        storage,
        staged: None,
        chunk: None,
    })
}

/// An unguarded load of a bf16/f16 tensor of rank 2 or more whose rows are
/// a static multiple of 8 elements (16-byte aligned) and whose leading
/// (batch) indices read only the output's batch variables (of `r` output
/// axes): its input and index, for the fused paths to check the last two.
pub(super) fn plain_load<'e>(k: &Kernel, e: &'e Expr, r: usize) -> Option<(usize, &'e [Expr])> {
    let Expr::Load {
        input,
        index,
        guard: None,
    } = e
    else {
        return None;
    };
    let buf = k.inputs.get(*input)?;
    if !matches!(buf.dtype, DType::BF16 | DType::F16) {
        return None;
    }
    let n = index.len();
    if n < 2 || buf.shape.rank() != n || buf.shape.0[n - 1].as_static()? % 8 != 0 {
        return None;
    }
    let batch = |v: &Var| (v.0 as usize) < r.saturating_sub(2);
    index[..n - 2]
        .iter()
        .all(|i| free_vars(i).iter().all(batch))
        .then_some((*input, index.as_slice()))
}

/// Whether `e` indexes by variable `v`: `v` itself, or 0 when `v` is an
/// output variable over an axis of size 1 (index simplification writes
/// it so).
pub(super) fn is_index_of(k: &Kernel, e: &Expr, v: Var) -> bool {
    let single = k.output.shape.0.get(v.0 as usize) == Some(&kiln_dialect::Dim::Static(1));
    *e == Expr::Var(v) || (single && *e == Expr::Int(0))
}

/// The running state of one thread's 16-byte copies of one operand.
struct Copies {
    /// Per copy: its shared offset within a slice, its global address (at
    /// the next step to copy), its `k` (row or column) at that step, and
    /// whether its outer index is inside the operand.
    shared: Vec<String>,
    global: Vec<String>,
    kidx: Vec<String>,
    outer_ok: Vec<String>,
    /// The operand's start (where a copy past the end reads from).
    base: String,
    /// Bytes the global address advances per step.
    step: String,
    /// The slice's offset within a stage.
    slice: u32,
    /// Per copy: its outer index (staged operands).
    outer: Vec<String>,
    /// The staged load, its outer variable and `k`'s (see
    /// [`Operand::staged`]).
    staged: Option<(Expr, Var, Var)>,
    chunk: Option<(Vec<Expr>, Var)>,
    /// The operand's element type in shared memory.
    elem: DType,
    /// Whether every copy reads the same `k` at each step (rows of an
    /// operand stored outer-major, one 16-byte column per thread).
    same_k: bool,
}

/// The run index of a staged load (see [`Operand::chunk`]): an unguarded
/// load of a tensor whose rows are whole 16-byte units, `k`'s extent a
/// static multiple of 8.
fn chunk_of(k: &Kernel, e: &Expr, kv: Var, extent: &Expr) -> Option<(Vec<Expr>, Var)> {
    let Expr::Load {
        input,
        index,
        guard: None,
    } = e
    else {
        return None;
    };
    let Expr::Int(n) = extent else {
        return None;
    };
    let buf = k.inputs.get(*input)?;
    if buf.shape.0.last()?.as_static()? % 8 != 0 {
        return None;
    }
    let fresh = Var(k.body.max_var().max(k.output.shape.rank() as u32) + 1);
    let index = kiln_dialect::kernel::simplify::chunk_index(k, index, kv, *n, 8, fresh)?;
    Some((index, fresh))
}

/// Emits the tile loop of a tensor-core contraction.
pub(super) fn emit(
    em: &mut Em,
    plan: &MmaPlan,
    extent: &Expr,
    epilogue: &Expr,
    units: &str,
) -> Result<(), PtxError> {
    let t = plan.tiling;
    let r = em.k.output.shape.rank();
    let kext = em.emit(extent)?;
    if kext.t != Ty::I64 {
        return Err(em.type_err(extent, "the extent is not an integer"));
    }
    let kext = em.in_reg(&kext.r);
    let m_dim = em.out_shape[r - 2].clone();
    let n_dim = em.out_shape[r - 1].clone();
    let m_dim = em.in_reg(&m_dim);
    let n_dim = em.in_reg(&n_dim);
    let (tiles_m, tiles_n) = (em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("add.s64 {tiles_m}, {m_dim}, {}", t.tile_m - 1));
    em.ins(format!(
        "shr.s64 {tiles_m}, {tiles_m}, {}",
        t.tile_m.trailing_zeros()
    ));
    em.ins(format!("add.s64 {tiles_n}, {n_dim}, {}", t.tile_n - 1));
    em.ins(format!(
        "shr.s64 {tiles_n}, {tiles_n}, {}",
        t.tile_n.trailing_zeros()
    ));

    // Thread coordinates.
    let (tid, lane, warp, wm, wn) = (
        em.reg(Class::R),
        em.reg(Class::R),
        em.reg(Class::R),
        em.reg(Class::R),
        em.reg(Class::R),
    );
    em.ins(format!("mov.u32 {tid}, %tid.x"));
    em.ins(format!("and.b32 {lane}, {tid}, 31"));
    em.ins(format!("shr.u32 {warp}, {tid}, 5"));
    em.ins(format!(
        "shr.u32 {wm}, {warp}, {}",
        t.warps_n().trailing_zeros()
    ));
    em.ins(format!("and.b32 {wn}, {warp}, {}", t.warps_n() - 1));
    let smem = em.reg(Class::R);
    em.ins(format!("mov.u32 {smem}, kiln_smem"));
    if t.wgmma {
        em.ins(format!("add.u32 {smem}, {smem}, 1023"));
        em.ins(format!("and.b32 {smem}, {smem}, -1024"));
    }

    let wm_base = em.reg(Class::R);
    em.ins(format!("mul.lo.u32 {wm_base}, {wm}, {}", t.warp_m));
    let wn_base = em.reg(Class::R);
    em.ins(format!("mul.lo.u32 {wn_base}, {wn}, {}", t.warp_n));
    // Warpgroup instructions read shared memory through descriptors
    // (`compute_wgmma`); only `mma.sync` needs per-lane row addresses.
    // Each lane's `ldmatrix` row address within a slice: lane `l` gives row
    // `l % 8` of matrix `l / 8`; `a`'s matrices are (m 0-7, k 0-7),
    // (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15) (its fragment's
    // registers in order), `b`'s (n 0-7, k 0-7), (n 0-7, k 8-15),
    // (n 8-15, k 0-7), (n 8-15, k 8-15) (two n8 fragments).
    let (a_lane, b_lane) = if t.wgmma {
        (String::new(), String::new())
    } else {
        let (lo, hi, row) = ldmatrix_lane(em, &lane);
        let pa = t.pitch(plan.a.storage, t.tile_m);
        let pb = t.pitch(plan.b.storage, t.tile_n);
        let a_lane = lane_offset(em, plan.a.storage, pa, &wm_base, &lo, &hi, &row);
        let b_lane = lane_offset(em, plan.b.storage, pb, &wn_base, &hi, &lo, &row);
        em.ins(format!("add.u32 {a_lane}, {a_lane}, {smem}"));
        em.ins(format!("add.u32 {b_lane}, {b_lane}, {smem}"));
        em.ins(format!("add.u32 {b_lane}, {b_lane}, {}", plan.a_bytes()));
        (a_lane, b_lane)
    };

    // The accumulators (s32 for int8).
    let int_acc = plan.bytes == Some(Bytes::S8);
    let class = if int_acc { Class::R } else { Class::F };
    let acc: Vec<String> = (0..t.accs()).map(|_| em.reg(class)).collect();

    // The tile loop: a split grid's unit is a tile (`unit / splits`) and
    // its part of `k` (`unit % splits`).
    let split = plan.splits > 1;
    let scratch = if split {
        super::splits::scratch(em)
    } else {
        String::new()
    };
    // Tensor copies: the maps' address, the stages' mbarriers (set up
    // once; the counts of steps issued and consumed run on across tiles,
    // so each barrier's phase parity is `(consumed / stages) & 1`).
    let tma = if plan.tma {
        Some(TmaState::start(em, plan, &tid, &smem))
    } else {
        None
    };
    // Warp-specialized: the copying warp's own walk over the same units,
    // then the warp groups'.
    if let (true, Some(tm)) = (plan.specialized, &tma) {
        let (pc, computing) = (em.reg(Class::P), em.a.label("computing"));
        em.ins(format!("setp.lt.u32 {pc}, {tid}, {}", t.threads()));
        em.ins(format!("@{pc} bra {computing}"));
        tm.produce(em, plan, units, (&tiles_m, &tiles_n), &kext)?;
        em.a.place(&computing);
    }
    let lp = TileLoop::start(em, units);
    let (tile, part, TileOrigin { m0, n0, bflat, .. }) =
        unit_origin(em, plan, &lp, (&tiles_m, &tiles_n));

    let copies_of = |em: &mut Em| -> Result<Option<(Copies, Copies)>, PtxError> {
        if plan.tma {
            return Ok(None);
        }
        let ca = copies(em, &t, &plan.a, t.tile_m, 0, &tid, &m0, &m_dim)?;
        let cb = copies(em, &t, &plan.b, t.tile_n, plan.a_bytes(), &tid, &n0, &n_dim)?;
        Ok(Some((ca, cb)))
    };
    let threads_copy = copies_of(em)?;
    for a in &acc {
        if int_acc {
            em.ins(format!("mov.b32 {a}, 0"));
        } else {
            em.ins(format!("mov.f32 {a}, 0f00000000"));
        }
    }
    let (first, ktiles) = step_range(em, plan, &kext, &part);
    if split && let Some((ca, cb)) = &threads_copy {
        skip_steps(em, &t, ca, &first);
        skip_steps(em, &t, cb, &first);
    }

    let sb = plan.stage_bytes();
    // Steps in flight ahead of the one computed: `mma.sync` reads a stage
    // synchronously, so the stage computed last is free at the next step's
    // barrier; a warpgroup `mma` may still read the previous step's stage
    // then (one group stays in flight), so copies run one step less ahead.
    let ahead = if t.wgmma_in_flight() > 0 {
        t.stages - 2
    } else {
        t.stages - 1
    };
    let end = TileEnd {
        tile: &tile,
        scratch: &scratch,
        units,
        acc: &acc,
        int_acc,
        lane: &lane,
        wm_base: &wm_base,
        wn_base: &wn_base,
        m0: &m0,
        n0: &n0,
        bflat: &bflat,
        m_dim: &m_dim,
        n_dim: &n_dim,
        tid: &tid,
        smem: &smem,
    };
    let (ca, cb) = match (threads_copy, &tma) {
        (Some(c), _) => c,
        (None, Some(tm)) => {
            let at = TileAt {
                m0: &m0,
                n0: &n0,
                first: &first,
                end: &ktiles,
            };
            if plan.specialized {
                tm.consume(em, plan, &at, &acc, (&warp, &smem));
            } else {
                tm.steps(em, plan, &at, ahead, &acc, &warp, &smem)?;
            }
            return finish_tile(em, plan, lp, &end, epilogue);
        }
        (None, None) => return Err(em.kerr("a tensor-core plan without copies")),
    };
    let (ld_stage, c_stage) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("mov.u32 {ld_stage}, 0"));
    em.ins(format!("mov.u32 {c_stage}, 0"));
    for _ in 0..ahead {
        issue(em, &t, &ca, &ld_stage, &smem, &kext)?;
        issue(em, &t, &cb, &ld_stage, &smem, &kext)?;
        em.ins("cp.async.commit_group");
        em.ins(format!("add.u32 {ld_stage}, {ld_stage}, {sb}"));
    }
    let kt = em.reg(Class::D);
    em.ins(format!("mov.b64 {kt}, {first}"));
    let (ktop, kend) = (em.a.label("k"), em.a.label("k_end"));
    let pk = em.reg(Class::P);
    em.a.place(&ktop);
    em.ins(format!("setp.ge.s64 {pk}, {kt}, {ktiles}"));
    em.ins(format!("@{pk} bra {kend}"));
    em.ins(format!("cp.async.wait_group {}", ahead - 1));
    if t.wgmma {
        // The copies are generic-proxy writes; the warpgroup `mma` reads
        // through the async proxy.
        em.ins("fence.proxy.async.shared::cta");
    }
    em.ins(plan.sync());
    issue(em, &t, &ca, &ld_stage, &smem, &kext)?;
    issue(em, &t, &cb, &ld_stage, &smem, &kext)?;
    em.ins("cp.async.commit_group");
    advance_stage(em, &t, &ld_stage, sb);
    if t.wgmma {
        compute_wgmma(em, plan, &acc, &warp, &smem, &c_stage);
    } else {
        compute(em, plan, &acc, &a_lane, &b_lane, &c_stage);
    }
    advance_stage(em, &t, &c_stage, sb);
    em.ins(format!("add.s64 {kt}, {kt}, 1"));
    em.ins(format!("bra.uni {ktop}"));
    em.a.place(&kend);
    if t.wgmma {
        em.ins("wgmma.wait_group.sync.aligned 0");
    }
    em.ins("cp.async.wait_group 0");
    em.ins(plan.sync());
    finish_tile(em, plan, lp, &end, epilogue)
}

/// The unit `lp` is at: its tile, its split part (u32; empty without
/// splits) and where the tile lies.
fn unit_origin(
    em: &mut Em,
    plan: &MmaPlan,
    lp: &TileLoop,
    (tiles_m, tiles_n): (&str, &str),
) -> (String, String, TileOrigin) {
    let t = plan.tiling;
    let r = em.k.output.shape.rank();
    let (tile, part) = if plan.splits > 1 {
        super::splits::unit_parts(em, &lp.tile, plan.splits)
    } else {
        (lp.tile.clone(), String::new())
    };
    let origin = if plan.group > 1 {
        grouped_origin(em, &tile, tiles_m, tiles_n, (t, plan.group), r - 2)
    } else {
        lp.origin_at(em, &tile, tiles_m, tiles_n, (t.tile_m, t.tile_n), r - 2)
    };
    (tile, part, origin)
}

/// A unit's steps of `k`, `[first, end)` (s64; `first` may be the
/// immediate 0): all of them, or a split's part `part` of them (`part *
/// steps / splits` on).
fn step_range(em: &mut Em, plan: &MmaPlan, kext: &str, part: &str) -> (String, String) {
    let t = plan.tiling;
    let ktiles = em.reg(Class::D);
    em.ins(format!("add.s64 {ktiles}, {kext}, {}", t.tile_k - 1));
    em.ins(format!(
        "shr.s64 {ktiles}, {ktiles}, {}",
        t.tile_k.trailing_zeros()
    ));
    if plan.splits <= 1 {
        return ("0".to_string(), ktiles);
    }
    let (first, p64, hi) = (em.reg(Class::D), em.reg(Class::D), em.reg(Class::D));
    let log = plan.splits.trailing_zeros();
    em.ins(format!("cvt.u64.u32 {p64}, {part}"));
    em.ins(format!("mul.lo.s64 {first}, {p64}, {ktiles}"));
    em.ins(format!("shr.s64 {first}, {first}, {log}"));
    em.ins(format!("add.s64 {hi}, {p64}, 1"));
    em.ins(format!("mul.lo.s64 {hi}, {hi}, {ktiles}"));
    em.ins(format!("shr.s64 {ktiles}, {hi}, {log}"));
    (first, ktiles)
}

/// What the end of a tile works with: the tile and the split grid's
/// scratch, the accumulators, the thread's and the tile's coordinates.
struct TileEnd<'s> {
    tile: &'s str,
    scratch: &'s str,
    units: &'s str,
    acc: &'s [String],
    int_acc: bool,
    lane: &'s str,
    wm_base: &'s str,
    wn_base: &'s str,
    m0: &'s str,
    n0: &'s str,
    bflat: &'s str,
    m_dim: &'s str,
    n_dim: &'s str,
    tid: &'s str,
    smem: &'s str,
}

/// A tile's end, after its steps: a split block's merge, the epilogue and
/// the stores, and the tile loop's end.
fn finish_tile(
    em: &mut Em,
    plan: &MmaPlan,
    lp: TileLoop,
    e: &TileEnd,
    epilogue: &Expr,
) -> Result<(), PtxError> {
    let t = plan.tiling;
    let unit_end = em.a.label("unit_end");
    if plan.splits > 1 {
        merge_splits(
            em,
            plan,
            &Merge {
                scratch: e.scratch,
                unit: &lp.tile,
                tile: e.tile,
                units: e.units,
                tid: e.tid,
                smem: e.smem,
                not_last: &unit_end,
                acc: e.acc,
                int_acc: e.int_acc,
            },
        );
    }
    if plan.stage_out {
        store_staged(em, plan, e, epilogue)?;
        em.a.place(&unit_end);
        if plan.specialized {
            // The copying warp may refill the stages.
            let (epi, state) = (em.reg(Class::R), em.reg(Class::D));
            em.ins(format!(
                "add.u32 {epi}, {}, {}",
                e.smem,
                plan.bars_at() + 8 * 2 * t.stages
            ));
            em.ins(format!("mbarrier.arrive.shared::cta.b64 {state}, [{epi}]"));
        }
        lp.end(em);
        return Ok(());
    }
    let store = TileStore {
        int_acc: e.int_acc,
        acc: e.acc,
        warp_m: t.warp_m,
        warp_n: t.warp_n,
        lane: e.lane,
        wm_base: e.wm_base,
        wn_base: e.wn_base,
        m0: e.m0,
        n0: e.n0,
        bflat: e.bflat,
        m_dim: e.m_dim,
        n_dim: e.n_dim,
    };
    if plan.coalesce_out {
        store_tile_coalesced(em, plan, &store, (e.tid, e.smem), epilogue)?;
    } else {
        store_tile(em, &store, epilogue, None)?;
    }
    em.a.place(&unit_end);
    lp.end(em);
    Ok(())
}

/// A tile's place for its tensor copies: its first row and column and
/// its steps `[first, end)` (s64; `first` may be an immediate).
struct TileAt<'s> {
    m0: &'s str,
    n0: &'s str,
    first: &'s str,
    end: &'s str,
}

/// The registers of a kernel fed by tensor copies ([`MmaPlan::tma`]).
#[derive(Clone)]
struct TmaState {
    /// The tensor maps (`a`'s, then `b`'s 128 bytes on; a generic
    /// address), the first mbarrier (shared), thread 0's predicate, and
    /// the steps issued and consumed so far (u32, across tiles).
    maps: String,
    bars: String,
    /// The (aligned) shared memory's start, where the stages lie.
    smem: String,
    first_thread: String,
    issued: String,
    consumed: String,
}

impl TmaState {
    /// Sets up the mbarriers (thread 0 initializes one per stage, for one
    /// arrival: its own, with the stage's bytes) before the tile loop.
    fn start(em: &mut Em, plan: &MmaPlan, tid: &str, smem: &str) -> TmaState {
        let maps = em.reg(Class::D);
        em.ins(format!("ld.param.u64 {maps}, [p_tmaps]"));
        let bars = em.reg(Class::R);
        em.ins(format!("add.u32 {bars}, {smem}, {}", plan.bars_at()));
        let first_thread = em.reg(Class::P);
        em.ins(format!("setp.eq.u32 {first_thread}, {tid}, 0"));
        for s in 0..plan.tiling.stages {
            em.ins(format!(
                "@{first_thread} mbarrier.init.shared::cta.b64 [{bars}+{}], 1",
                s * 8
            ));
        }
        // Warp-specialized: the stages' releases and the staged
        // epilogue's end, each passed when every computing thread has
        // arrived.
        if plan.specialized {
            for s in plan.tiling.stages..plan.bar_count() {
                em.ins(format!(
                    "@{first_thread} mbarrier.init.shared::cta.b64 [{bars}+{}], {}",
                    s * 8,
                    plan.tiling.threads()
                ));
            }
        }
        em.ins("fence.mbarrier_init.release.cluster");
        em.ins("bar.sync 0");
        let (issued, consumed) = (em.reg(Class::R), em.reg(Class::R));
        em.ins(format!("mov.u32 {issued}, 0"));
        em.ins(format!("mov.u32 {consumed}, 0"));
        TmaState {
            maps,
            bars,
            smem: smem.to_string(),
            first_thread,
            issued,
            consumed,
        }
    }

    /// `reg % stages` (u32).
    fn stage_of(em: &mut Em, plan: &MmaPlan, reg: &str) -> String {
        let s = em.reg(Class::R);
        let n = plan.tiling.stages;
        if n.is_power_of_two() {
            em.ins(format!("and.b32 {s}, {reg}, {}", n - 1));
        } else {
            em.ins(format!("rem.u32 {s}, {reg}, {n}"));
        }
        s
    }

    /// Issues step `j`'s copies (when `j < end`) into the next stage: thread
    /// 0 arrives expecting the stage's bytes and copies each box; every
    /// thread counts the step.
    fn issue(&self, em: &mut Em, plan: &MmaPlan, at: &TileAt, lead: &[String; 2], j: &str) {
        let t = plan.tiling;
        let (pj, skip) = (em.reg(Class::P), em.a.label("tma_skip"));
        em.ins(format!("setp.ge.s64 {pj}, {j}, {}", at.end));
        em.ins(format!("@{pj} bra.uni {skip}"));
        let s = Self::stage_of(em, plan, &self.issued);
        let (dst, bar) = (em.reg(Class::R), em.reg(Class::R));
        em.ins(format!("mad.lo.u32 {bar}, {s}, 8, {}", self.bars));
        em.ins(format!(
            "mad.lo.u32 {dst}, {s}, {}, {}",
            plan.stage_bytes(),
            self.smem
        ));
        let p0 = &self.first_thread;
        let state = em.reg(Class::D);
        em.ins(format!(
            "@{p0} mbarrier.arrive.expect_tx.shared::cta.b64 {state}, [{bar}], {}",
            plan.stage_bytes()
        ));
        let k0 = em.reg(Class::R);
        em.ins(format!("cvt.u32.u64 {k0}, {j}"));
        em.ins(format!("mul.lo.u32 {k0}, {k0}, {}", t.tile_k));
        let copy = |em: &mut Em,
                    o: &Operand,
                    map_off: u32,
                    o0: &str,
                    outer: u32,
                    slice: u32,
                    lead: &str| {
            let (map, base) = (em.reg(Class::D), em.reg(Class::R));
            em.ins(format!("add.s64 {map}, {}, {map_off}", self.maps));
            let o32 = em.reg(Class::R);
            em.ins(format!("cvt.u32.u64 {o32}, {o0}"));
            em.ins(format!("add.u32 {base}, {dst}, {slice}"));
            let boxes: Vec<(u32, String, String)> = match o.storage {
                Storage::OuterK => vec![(0, k0.clone(), o32.clone())],
                Storage::KOuter => (0..outer / 64)
                    .map(|b| {
                        let c = em.reg(Class::R);
                        em.ins(format!("add.u32 {c}, {o32}, {}", b * 64));
                        (b * t.tile_k * 128, c, k0.clone())
                    })
                    .collect(),
            };
            for (off, c0, c1) in boxes {
                em.ins(format!(
                    "@{p0} cp.async.bulk.tensor.3d.shared::cluster.global.tile.\
                     mbarrier::complete_tx::bytes [{base}+{off}], [{map}, {{{c0}, {c1}, {lead}}}], \
                     [{bar}]"
                ));
            }
        };
        copy(em, &plan.a, 0, at.m0, t.tile_m, 0, &lead[0]);
        copy(em, &plan.b, 128, at.n0, t.tile_n, plan.a_bytes(), &lead[1]);
        em.ins(format!("add.u32 {0}, {0}, 1", self.issued));
        em.a.place(&skip);
    }

    /// The lead (batch) index of each operand's tensor map for the tile
    /// whose batch variables are bound (u32).
    fn leads(em: &mut Em, plan: &MmaPlan) -> Result<[String; 2], PtxError> {
        let mut lead = [String::new(), String::new()];
        for (l, o) in lead.iter_mut().zip([&plan.a, &plan.b]) {
            let rank = em.in_shape[o.input].len();
            let r = em.reg(Class::R);
            if rank >= 3 {
                let off = lead_offset(em, o.input, &o.lead)?;
                let per = em.in_strides[o.input][rank - 3].clone();
                let q = em.reg(Class::D);
                em.ins(format!("div.u64 {q}, {off}, {per}"));
                em.ins(format!("cvt.u32.u64 {r}, {q}"));
            } else {
                em.ins(format!("mov.u32 {r}, 0"));
            }
            *l = r;
        }
        Ok(lead)
    }

    /// The address (u32) of stage `s`'s mbarrier of kind `kind`: 0, its
    /// bytes have landed; 1, the warp groups are done with it
    /// (warp-specialized).
    fn bar_of(&self, em: &mut Em, plan: &MmaPlan, kind: u32, s: &str) -> String {
        let bar = em.reg(Class::R);
        em.ins(format!("mad.lo.u32 {bar}, {s}, 8, {}", self.bars));
        if kind > 0 {
            em.ins(format!(
                "add.u32 {bar}, {bar}, {}",
                kind * 8 * plan.tiling.stages
            ));
        }
        bar
    }

    /// Spins until the phase of parity `(count / stages) & 1 ^ flip` of
    /// the mbarrier at `bar` has completed.
    fn wait(&self, em: &mut Em, plan: &MmaPlan, bar: &str, count: &str, flip: bool) {
        let parity = em.reg(Class::R);
        em.ins(format!("div.u32 {parity}, {count}, {}", plan.tiling.stages));
        em.ins(format!("and.b32 {parity}, {parity}, 1"));
        if flip {
            em.ins(format!("xor.b32 {parity}, {parity}, 1"));
        }
        let (done, wait) = (em.reg(Class::P), em.a.label("wait"));
        em.a.place(&wait);
        em.ins(format!(
            "mbarrier.try_wait.parity.shared::cta.b64 {done}, [{bar}], {parity}"
        ));
        em.ins(format!("@!{done} bra {wait}"));
    }

    /// The copying warp of a warp-specialized kernel: its first lane walks
    /// the units as the warp groups do and issues each step's copies once
    /// the warp groups have released the stage's previous contents (a
    /// fresh barrier's phase of parity 1 counts as completed, so the first
    /// pass over the stages does not wait); with a staged epilogue, which
    /// overwrites the stages, it waits for the epilogue's end before the
    /// next unit. The other lanes exit.
    fn produce(
        &self,
        em: &mut Em,
        plan: &MmaPlan,
        units: &str,
        tiles: (&str, &str),
        kext: &str,
    ) -> Result<(), PtxError> {
        let (tid, pn) = (em.reg(Class::R), em.reg(Class::P));
        em.ins(format!("mov.u32 {tid}, %tid.x"));
        em.ins(format!(
            "setp.ne.u32 {pn}, {tid}, {}",
            plan.tiling.threads()
        ));
        em.ins(format!("@{pn} ret"));
        // Only this thread is left: it issues unpredicated.
        let mut me = self.clone();
        me.first_thread = em.reg(Class::P);
        em.ins(format!("setp.eq.u32 {}, 0, 0", me.first_thread));
        let done_units = em.reg(Class::R);
        em.ins(format!("mov.u32 {done_units}, 0"));
        let lp = TileLoop::start(em, units);
        let (_, part, origin) = unit_origin(em, plan, &lp, tiles);
        let (first, end) = step_range(em, plan, kext, &part);
        let lead = Self::leads(em, plan)?;
        let at = TileAt {
            m0: &origin.m0,
            n0: &origin.n0,
            first: &first,
            end: &end,
        };
        let j = em.reg(Class::D);
        em.ins(format!("mov.b64 {j}, {first}"));
        let (top, steps_end) = (em.a.label("copy"), em.a.label("copy_end"));
        let pj = em.reg(Class::P);
        em.a.place(&top);
        em.ins(format!("setp.ge.s64 {pj}, {j}, {end}"));
        em.ins(format!("@{pj} bra {steps_end}"));
        let s = Self::stage_of(em, plan, &me.issued);
        let empty = me.bar_of(em, plan, 1, &s);
        me.wait(em, plan, &empty, &me.issued, true);
        me.issue(em, plan, &at, &lead, &j);
        em.ins(format!("add.s64 {j}, {j}, 1"));
        em.ins(format!("bra.uni {top}"));
        em.a.place(&steps_end);
        if plan.stage_out {
            // The epilogue's end: the phase of this unit's parity.
            let epi = em.reg(Class::R);
            em.ins(format!(
                "add.u32 {epi}, {}, {}",
                me.bars,
                8 * 2 * plan.tiling.stages
            ));
            let (parity, done, wait) = (em.reg(Class::R), em.reg(Class::P), em.a.label("epi"));
            em.ins(format!("and.b32 {parity}, {done_units}, 1"));
            em.a.place(&wait);
            em.ins(format!(
                "mbarrier.try_wait.parity.shared::cta.b64 {done}, [{epi}], {parity}"
            ));
            em.ins(format!("@!{done} bra {wait}"));
        }
        em.ins(format!("add.u32 {done_units}, {done_units}, 1"));
        lp.end(em);
        Ok(())
    }

    /// A warp-specialized unit's steps on the warp groups' side: per
    /// step, wait for its stage's bytes, issue its `mma`s, wait until only
    /// they are in flight and release the previous step's stage (whose
    /// `mma`s are then done); after the last step, wait for all and
    /// release its stage. With a staged epilogue, the warp groups then
    /// pass their barrier (both are done with the stages it overwrites).
    fn consume(
        &self,
        em: &mut Em,
        plan: &MmaPlan,
        at: &TileAt,
        acc: &[String],
        (warp, smem): (&str, &str),
    ) {
        let kt = em.reg(Class::D);
        em.ins(format!("mov.b64 {kt}, {}", at.first));
        let (top, end) = (em.a.label("k"), em.a.label("k_end"));
        let (pk, pf) = (em.reg(Class::P), em.reg(Class::P));
        em.a.place(&top);
        em.ins(format!("setp.ge.s64 {pk}, {kt}, {}", at.end));
        em.ins(format!("@{pk} bra {end}"));
        let s = Self::stage_of(em, plan, &self.consumed);
        let full = self.bar_of(em, plan, 0, &s);
        self.wait(em, plan, &full, &self.consumed, false);
        let stage = em.reg(Class::R);
        em.ins(format!("mul.lo.u32 {stage}, {s}, {}", plan.stage_bytes()));
        compute_wgmma_leaving(em, plan, acc, (warp, smem, &stage), 1);
        em.ins(format!("setp.gt.s64 {pf}, {kt}, {}", at.first));
        self.release(em, plan, &pf);
        em.ins(format!("add.u32 {0}, {0}, 1", self.consumed));
        em.ins(format!("add.s64 {kt}, {kt}, 1"));
        em.ins(format!("bra.uni {top}"));
        em.a.place(&end);
        em.ins("wgmma.wait_group.sync.aligned 0");
        let any = em.reg(Class::P);
        em.ins(format!("setp.gt.s64 {any}, {}, {}", at.end, at.first));
        self.release(em, plan, &any);
        if plan.stage_out {
            em.ins(plan.sync());
        }
    }

    /// Where `p` holds: every thread arrives at the release barrier of
    /// the stage before `consumed`'s.
    fn release(&self, em: &mut Em, plan: &MmaPlan, p: &str) {
        let n = plan.tiling.stages;
        let prev = em.reg(Class::R);
        em.ins(format!("add.u32 {prev}, {}, {}", self.consumed, n - 1));
        let s = Self::stage_of(em, plan, &prev);
        let empty = self.bar_of(em, plan, 1, &s);
        let state = em.reg(Class::D);
        em.ins(format!(
            "@{p} mbarrier.arrive.shared::cta.b64 {state}, [{empty}]"
        ));
    }

    /// A tile's steps: the lead (batch) index of each operand's tensor
    /// map, `ahead` steps issued, then per step: wait for its stage's
    /// barrier, a block barrier (every warp group is done with the stage
    /// the next copy overwrites), the copies `ahead` steps on, the `mma`s.
    #[allow(clippy::too_many_arguments)]
    fn steps(
        &self,
        em: &mut Em,
        plan: &MmaPlan,
        at: &TileAt,
        ahead: u32,
        acc: &[String],
        warp: &str,
        smem: &str,
    ) -> Result<(), PtxError> {
        let lead = Self::leads(em, plan)?;
        for x in 0..ahead {
            let j = em.reg(Class::D);
            em.ins(format!("add.s64 {j}, {}, {x}", at.first));
            self.issue(em, plan, at, &lead, &j);
        }
        let kt = em.reg(Class::D);
        em.ins(format!("mov.b64 {kt}, {}", at.first));
        let (top, end, wait) = (em.a.label("k"), em.a.label("k_end"), em.a.label("wait"));
        let pk = em.reg(Class::P);
        em.a.place(&top);
        em.ins(format!("setp.ge.s64 {pk}, {kt}, {}", at.end));
        em.ins(format!("@{pk} bra {end}"));
        let s = Self::stage_of(em, plan, &self.consumed);
        let (bar, parity) = (em.reg(Class::R), em.reg(Class::R));
        em.ins(format!("mad.lo.u32 {bar}, {s}, 8, {}", self.bars));
        em.ins(format!(
            "div.u32 {parity}, {}, {}",
            self.consumed, plan.tiling.stages
        ));
        em.ins(format!("and.b32 {parity}, {parity}, 1"));
        let done = em.reg(Class::P);
        em.a.place(&wait);
        em.ins(format!(
            "mbarrier.try_wait.parity.shared::cta.b64 {done}, [{bar}], {parity}"
        ));
        em.ins(format!("@!{done} bra {wait}"));
        em.ins(plan.sync());
        let j = em.reg(Class::D);
        em.ins(format!("add.s64 {j}, {kt}, {ahead}"));
        self.issue(em, plan, at, &lead, &j);
        let stage = em.reg(Class::R);
        em.ins(format!("mul.lo.u32 {stage}, {s}, {}", plan.stage_bytes()));
        compute_wgmma(em, plan, acc, warp, smem, &stage);
        em.ins(format!("add.u32 {0}, {0}, 1", self.consumed));
        em.ins(format!("add.s64 {kt}, {kt}, 1"));
        em.ins(format!("bra.uni {top}"));
        em.a.place(&end);
        em.ins("wgmma.wait_group.sync.aligned 0");
        em.ins(plan.sync());
        Ok(())
    }
}

/// Advances copies made for step 0 by `steps` steps of `k` (s64).
fn skip_steps(em: &mut Em, t: &Tiling, c: &Copies, steps: &str) {
    for j in 0..c.shared.len() {
        em.ins(format!(
            "mad.lo.s64 {0}, {steps}, {1}, {0}",
            c.kidx[j], t.tile_k
        ));
        em.ins(format!(
            "mad.lo.s64 {0}, {steps}, {1}, {0}",
            c.global[j], c.step
        ));
    }
}

/// What [`merge_splits`] works with.
struct Merge<'s> {
    /// The scratch memory (global address), the unit, its tile and the
    /// units' count (u64), the thread (u32), the shared memory's start
    /// (aligned, u32).
    scratch: &'s str,
    unit: &'s str,
    tile: &'s str,
    units: &'s str,
    tid: &'s str,
    smem: &'s str,
    /// Where a block that is not the last goes (past the epilogue).
    not_last: &'s str,
    /// The thread's accumulators, s32 or f32.
    acc: &'s [String],
    int_acc: bool,
}

/// A split block's accumulators: each thread stores them to the scratch
/// memory (see [`MmaPlan::partial_bytes`]), the block counts its arrival
/// on its tile's counter, and the block that arrives last sets its
/// accumulators to the sum of every split's, added in split order from
/// zero (the result does not depend on which block is last), sets the
/// counter back to zero and goes on to the epilogue; the others skip it.
fn merge_splits(em: &mut Em, plan: &MmaPlan, m: &Merge) {
    let t = plan.tiling;
    let pb = plan.partial_bytes();
    let stride = t.threads() * 4;
    let arrival = super::splits::Arrival {
        scratch: m.scratch,
        units: m.units,
        per_unit: pb,
        tile: m.tile,
        tid: m.tid,
        smem: m.smem,
        flag_at: plan.stages_end(),
        splits: plan.splits,
        not_last: m.not_last,
        sync: plan.sync(),
    };
    let off = em.reg(Class::D);
    em.ins(format!("mul.wide.u32 {off}, {}, 4", m.tid));
    let own = arrival.own_partial(em, m.unit, &off);
    for (c, a) in m.acc.iter().enumerate() {
        em.ins(format!("st.global.b32 [{own}+{}], {a}", c as u32 * stride));
    }
    em.ins("fence.acq_rel.gpu");
    let ctr = arrival.emit(em);
    let base = arrival.first_partial(em, &off);
    let (ty, zero, class) = if m.int_acc {
        ("s32", "0", Class::R)
    } else {
        ("f32", "0f00000000", Class::F)
    };
    for a in m.acc {
        em.ins(format!("mov.{ty} {a}, {zero}"));
    }
    // Split by split, in order (a loop: the accumulators' loads of one
    // split are unrolled).
    let (sp, top, pl) = (em.reg(Class::R), em.a.label("merge"), em.reg(Class::P));
    em.ins(format!("mov.u32 {sp}, 0"));
    em.a.place(&top);
    for (c, a) in m.acc.iter().enumerate() {
        let x = em.reg(class);
        em.ins(format!(
            "ld.global.cg.{ty} {x}, [{base}+{}]",
            c as u32 * stride
        ));
        em.ins(format!("add.{ty} {a}, {a}, {x}"));
    }
    em.ins(format!("add.s64 {base}, {base}, {pb}"));
    em.ins(format!("add.u32 {sp}, {sp}, 1"));
    em.ins(format!("setp.lt.u32 {pl}, {sp}, {}", plan.splits));
    em.ins(format!("@{pl} bra.uni {top}"));
    super::splits::Arrival::reset(em, &ctr, m.tid);
}

/// A thread's place in its block and in the `mma.sync` fragment layouts
/// (u32 registers): the thread, its lane, its warp, the lane's group `g =
/// lane / 4` and its index in the group `t = lane % 4`.
pub(super) struct Lanes {
    pub tid: String,
    pub lane: String,
    pub warp: String,
    pub g: String,
    pub t: String,
}

/// Computes [`Lanes`] from `%tid.x`.
pub(super) fn lanes(em: &mut Em) -> Lanes {
    let (tid, lane, warp, g, t) = (
        em.reg(Class::R),
        em.reg(Class::R),
        em.reg(Class::R),
        em.reg(Class::R),
        em.reg(Class::R),
    );
    em.ins(format!("mov.u32 {tid}, %tid.x"));
    em.ins(format!("and.b32 {lane}, {tid}, 31"));
    em.ins(format!("shr.u32 {warp}, {tid}, 5"));
    em.ins(format!("shr.u32 {g}, {lane}, 2"));
    em.ins(format!("and.b32 {t}, {lane}, 3"));
    Lanes {
        tid,
        lane,
        warp,
        g,
        t,
    }
}

/// A grid-stride loop over a kernel's tiles (or blocks): each block starts
/// at tile `%ctaid.x` and walks a grid further until `units`.
pub(super) struct TileLoop {
    /// The current tile (s64).
    pub tile: String,
    grid: String,
    top: String,
    done: String,
}

impl TileLoop {
    /// Opens the loop: the body that follows computes tile `tile`.
    pub(super) fn start(em: &mut Em, units: &str) -> TileLoop {
        let tile = em.reg(Class::D);
        let cta = em.reg(Class::R);
        em.ins(format!("mov.u32 {cta}, %ctaid.x"));
        em.ins(format!("cvt.u64.u32 {tile}, {cta}"));
        let (ncta, grid) = (em.reg(Class::R), em.reg(Class::D));
        em.ins(format!("mov.u32 {ncta}, %nctaid.x"));
        em.ins(format!("cvt.u64.u32 {grid}, {ncta}"));
        let (top, done) = (em.a.label("tile"), em.a.label("exit"));
        let pexit = em.reg(Class::P);
        em.a.place(&top);
        em.ins(format!("setp.ge.s64 {pexit}, {tile}, {units}"));
        em.ins(format!("@{pexit} bra {done}"));
        TileLoop {
            tile,
            grid,
            top,
            done,
        }
    }

    /// Where tile number `t` lies (a split grid's tile, not its unit):
    /// tiles are numbered column tile fastest, then row tile, then the
    /// `batch_axes` leading axes (bound to their variables here);
    /// `tiles_m` and `tiles_n` per matrix, `tile` the tile's rows and
    /// columns.
    pub(super) fn origin_at(
        &self,
        em: &mut Em,
        t: &str,
        tiles_m: &str,
        tiles_n: &str,
        tile: (u32, u32),
        batch_axes: usize,
    ) -> TileOrigin {
        let (tn, q, tm, bflat) = (
            em.reg(Class::D),
            em.reg(Class::D),
            em.reg(Class::D),
            em.reg(Class::D),
        );
        em.ins(format!("rem.u64 {tn}, {t}, {tiles_n}"));
        em.ins(format!("div.u64 {q}, {t}, {tiles_n}"));
        em.ins(format!("rem.u64 {tm}, {q}, {tiles_m}"));
        em.ins(format!("div.u64 {bflat}, {q}, {tiles_m}"));
        unravel(em, &bflat, batch_axes);
        let (m0, n0) = (em.reg(Class::D), em.reg(Class::D));
        em.ins(format!("mul.lo.s64 {m0}, {tm}, {}", tile.0));
        em.ins(format!("mul.lo.s64 {n0}, {tn}, {}", tile.1));
        TileOrigin { tn, m0, n0, bflat }
    }

    /// Closes the loop and the kernel.
    pub(super) fn end(self, em: &mut Em) {
        em.ins(format!("add.s64 {0}, {0}, {1}", self.tile, self.grid));
        em.ins(format!("bra.uni {}", self.top));
        em.a.place(&self.done);
        em.ins("ret");
    }
}

/// Where tile number `t` lies in the grouped order ([`MmaPlan::group`]):
/// per matrix of the batch, groups of `g` row tiles (the last group the
/// rest), each group's tiles row tile fastest, then column tile; the
/// batch's `batch_axes` leading axes bound as in [`TileLoop::origin_at`].
fn grouped_origin(
    em: &mut Em,
    t: &str,
    tiles_m: &str,
    tiles_n: &str,
    (tiling, g): (Tiling, u32),
    batch_axes: usize,
) -> TileOrigin {
    let r = |em: &mut Em| em.reg(Class::D);
    let (per, w, bflat) = (r(em), r(em), r(em));
    em.ins(format!("mul.lo.s64 {per}, {tiles_m}, {tiles_n}"));
    em.ins(format!("div.u64 {bflat}, {t}, {per}"));
    em.ins(format!("rem.u64 {w}, {t}, {per}"));
    unravel(em, &bflat, batch_axes);
    // The group, its first row tile and its row tiles.
    let (in_group, gid, first, size, left, rest) = (r(em), r(em), r(em), r(em), r(em), r(em));
    em.ins(format!("mul.lo.s64 {in_group}, {tiles_n}, {g}"));
    em.ins(format!("div.u64 {gid}, {w}, {in_group}"));
    em.ins(format!("mul.lo.s64 {first}, {gid}, {g}"));
    em.ins(format!("sub.s64 {left}, {tiles_m}, {first}"));
    em.ins(format!("min.s64 {size}, {left}, {g}"));
    em.ins(format!("rem.u64 {rest}, {w}, {in_group}"));
    let (tm, tn) = (r(em), r(em));
    em.ins(format!("rem.u64 {tm}, {rest}, {size}"));
    em.ins(format!("add.s64 {tm}, {tm}, {first}"));
    em.ins(format!("div.u64 {tn}, {rest}, {size}"));
    let (m0, n0) = (r(em), r(em));
    em.ins(format!("mul.lo.s64 {m0}, {tm}, {}", tiling.tile_m));
    em.ins(format!("mul.lo.s64 {n0}, {tn}, {}", tiling.tile_n));
    TileOrigin { tn, m0, n0, bflat }
}

/// A tile's place ([`TileLoop::origin`]): its column tile, first row and
/// column, and flattened batch index (s64 registers).
pub(super) struct TileOrigin {
    pub tn: String,
    pub m0: String,
    pub n0: String,
    pub bflat: String,
}

/// A warp's accumulators and where they lie in the output, for
/// [`store_tile`]: accumulator `((mi * warp_n / 8 + ni) * 4 + half * 2 + e)`
/// holds row `m0 + wm_base + mi * 16 + lane / 4 + 8 * half` and column
/// `n0 + wn_base + ni * 8 + 2 * (lane % 4) + e` of output matrix `bflat`
/// (the flattened batch index); the `mma` accumulator layout.
pub(super) struct TileStore<'s> {
    pub acc: &'s [String],
    /// The accumulators are s32 (int8), else f32.
    pub int_acc: bool,
    pub warp_m: u32,
    pub warp_n: u32,
    /// The lane (u32), the warp's first row and column in the tile (u32).
    pub lane: &'s str,
    pub wm_base: &'s str,
    pub wn_base: &'s str,
    /// The tile's first row and column, the batch index, the output's
    /// rows and columns (s64).
    pub m0: &'s str,
    pub n0: &'s str,
    pub bflat: &'s str,
    pub m_dim: &'s str,
    pub n_dim: &'s str,
}

/// `base + off` (s64), clamped to `last`, and whether it is below `dim`:
/// an output row or column the epilogue computes at and may store.
fn clamped(em: &mut Em, base: &str, off: u32, dim: &str, last: &str) -> (String, String) {
    let (x, xc, p) = (em.reg(Class::D), em.reg(Class::D), em.reg(Class::P));
    em.ins(format!("add.s64 {x}, {base}, {off}"));
    em.ins(format!("setp.lt.s64 {p}, {x}, {dim}"));
    em.ins(format!("min.s64 {xc}, {x}, {last}"));
    (xc, p)
}

/// An accumulator as the epilogue's `Acc`: s32 widened to i64 (int8), or
/// the f32 register.
fn acc_value(em: &mut Em, a: &str, int_acc: bool) -> Val {
    if int_acc {
        let wide = em.reg(Class::D);
        em.ins(format!("cvt.s64.s32 {wide}, {a}"));
        Val {
            r: wide,
            t: Ty::I64,
        }
    } else {
        Val {
            r: a.to_string(),
            t: Ty::F32,
        }
    }
}

/// The output's address of row `mc` (within matrix row `rowbase`) and
/// column `nc` of an output `n_dim` wide with `bytes`-byte elements.
fn out_address(em: &mut Em, rowbase: &str, mc: &str, n_dim: &str, nc: &str, bytes: u32) -> String {
    let addr = em.reg(Class::D);
    em.ins(format!("add.s64 {addr}, {rowbase}, {mc}"));
    em.ins(format!("mad.lo.s64 {addr}, {addr}, {n_dim}, {nc}"));
    let outp = em.out_ptr.clone();
    em.ins(format!("mad.lo.s64 {addr}, {addr}, {bytes}, {outp}"));
    addr
}

/// The input and type of an epilogue load that reads an input shaped as
/// the output at the element's own place (each index the output's
/// variable, or 0 on an axis of extent 1): its address is the output
/// element's offset in the input.
fn output_aligned(em: &Em, l: &Expr) -> Option<(usize, DType)> {
    let Expr::Load {
        input,
        index,
        guard: None,
    } = l
    else {
        return None;
    };
    let buf = em.k.inputs.get(*input)?;
    let out = &em.k.output.shape;
    let same = buf.shape == *out
        && buf.dtype.bits() >= 8
        && index.len() == out.rank()
        && index.iter().enumerate().all(|(a, i)| match i {
            Expr::Var(v) => v.0 as usize == a,
            Expr::Int(0) => out.0[a] == kiln_dialect::Dim::Static(1),
            _ => false,
        });
    same.then_some((*input, buf.dtype))
}

/// Runs the epilogue on a warp's accumulators and stores the results: to
/// the output, or (`to_shared`: the shared address of the thread's first
/// element and the row pitch in bytes; 16-bit outputs of a tile wholly
/// inside the output) as pairs to a tile in shared memory.
pub(super) fn store_tile(
    em: &mut Em,
    s: &TileStore,
    epilogue: &Expr,
    to_shared: Option<(&str, u32)>,
) -> Result<(), PtxError> {
    let r = em.k.output.shape.rank();
    let (mv, nv) = (Var(r as u32 - 2), Var(r as u32 - 1));
    let (lane, wm_base, wn_base) = (s.lane, s.wm_base, s.wn_base);
    let (m0, n0, bflat, m_dim, n_dim) = (s.m0, s.n0, s.bflat, s.m_dim, s.n_dim);
    let acc = s.acc;
    // The epilogue: accumulator (mi, ni, e) holds row
    // `wm * warp_m + mi * 16 + lane / 4 + 8 * (e / 2)` and column
    // `wn * warp_n + ni * 8 + 2 * (lane % 4) + e % 2` of the tile. Column by
    // column, the column's rows: what does not depend on the row (a bias,
    // a scale) is computed once per column. Rows and columns past the
    // output compute at the last row (every load in bounds) and are not
    // stored; columns past it are skipped.
    let (g, t4) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("shr.u32 {g}, {lane}, 2"));
    em.ins(format!("and.b32 {t4}, {lane}, 3"));
    let (mrow, ncol, t64) = (em.reg(Class::D), em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("add.u32 {g}, {g}, {wm_base}"));
    em.ins(format!("cvt.u64.u32 {t64}, {g}"));
    em.ins(format!("add.s64 {mrow}, {m0}, {t64}"));
    em.ins(format!("shl.b32 {t4}, {t4}, 1"));
    em.ins(format!("add.u32 {t4}, {t4}, {wn_base}"));
    let t64b = em.reg(Class::D);
    em.ins(format!("cvt.u64.u32 {t64b}, {t4}"));
    em.ins(format!("add.s64 {ncol}, {n0}, {t64b}"));
    let rowbase = em.reg(Class::D);
    em.ins(format!("mul.lo.s64 {rowbase}, {bflat}, {m_dim}"));
    let (m_last, n_last) = (em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("sub.s64 {m_last}, {m_dim}, 1"));
    em.ins(format!("sub.s64 {n_last}, {n_dim}, 1"));
    let out = em.k.output.dtype;
    let nb = s.warp_n / 8;
    // The thread's rows: (mi, half). Each element recomputes its row (a
    // few instructions) rather than keeping every row's registers live.
    let rows: Vec<(u32, u32)> = (0..s.warp_m / 16)
        .flat_map(|mi| (0..2u32).map(move |half| (mi, half)))
        .collect();
    let bytes = out.bits() / 8;
    let sty = match out.bits() {
        64 => "b64",
        32 => "b32",
        16 => "b16",
        _ => "u8",
    };
    if let Some((sbase, pitch)) = to_shared {
        for ni in 0..nb {
            let codes = pair_codes(em, s, epilogue, &rows, (&mrow, &ncol), ni)?;
            for (i, &(mi, half)) in rows.iter().enumerate() {
                let w = em.reg(Class::R);
                em.ins(format!("mov.b32 {w}, {{{}, {}}}", codes[0][i], codes[1][i]));
                let off = (mi * 16 + half * 8) * pitch + ni * 16;
                em.ins(format!("st.shared.b32 [{sbase}+{off}], {w}"));
            }
        }
        return Ok(());
    }
    let done = em.a.label("stored");
    if matches!(bytes, 2 | 4) {
        // A warp whose rows and columns all lie in the output, of an even
        // width (every column pair aligned), stores each pair with one
        // instruction at a fixed offset from its row's address, without
        // bounds: the column-by-column path below costs some twenty
        // instructions an element (on the H100, 41% of W3's gate
        // projection was its epilogue).
        let fast = em.a.label("fast_end");
        let (end, pf, q) = (em.reg(Class::D), em.reg(Class::P), em.reg(Class::P));
        em.ins(format!("add.s64 {end}, {m0}, {}", s.warp_m));
        em.ins(format!("cvt.u64.u32 {t64}, {wm_base}"));
        em.ins(format!("add.s64 {end}, {end}, {t64}"));
        em.ins(format!("setp.gt.s64 {pf}, {end}, {m_dim}"));
        em.ins(format!("add.s64 {end}, {n0}, {}", s.warp_n));
        em.ins(format!("cvt.u64.u32 {t64}, {wn_base}"));
        em.ins(format!("add.s64 {end}, {end}, {t64}"));
        em.ins(format!("setp.gt.s64 {q}, {end}, {n_dim}"));
        em.ins(format!("or.pred {pf}, {pf}, {q}"));
        em.ins(format!("and.b64 {end}, {n_dim}, 1"));
        em.ins(format!("setp.ne.s64 {q}, {end}, 0"));
        em.ins(format!("or.pred {pf}, {pf}, {q}"));
        em.ins(format!("@{pf} bra {fast}"));
        let ptr0 = out_address(em, &rowbase, &mrow, n_dim, &ncol, bytes);
        let step = em.reg(Class::D);
        em.ins(format!("mul.lo.s64 {step}, {n_dim}, {}", 8 * bytes));
        for ni in 0..nb {
            let codes = pair_codes(em, s, epilogue, &rows, (&mrow, &ncol), ni)?;
            for (i, &(mi, half)) in rows.iter().enumerate() {
                let ptr = em.reg(Class::D);
                em.ins(format!(
                    "mad.lo.s64 {ptr}, {step}, {}, {ptr0}",
                    mi * 2 + half
                ));
                let (lo, hi) = (&codes[0][i], &codes[1][i]);
                let off = ni * 8 * bytes;
                if bytes == 2 {
                    let w = em.reg(Class::R);
                    em.ins(format!("mov.b32 {w}, {{{lo}, {hi}}}"));
                    em.ins(format!("st.global.b32 [{ptr}+{off}], {w}"));
                } else {
                    em.ins(format!("st.global.v2.b32 [{ptr}+{off}], {{{lo}, {hi}}}"));
                }
            }
        }
        em.ins(format!("bra.uni {done}"));
        em.a.place(&fast);
    }
    for ni in 0..nb {
        for e in 0..2u32 {
            let (nc, pn) = clamped(em, &ncol, ni * 8 + e, n_dim, &n_last);
            // A column past the output is skipped (which also keeps each
            // column's code a region of its own for the scheduler).
            let skip = em.a.label("col");
            em.ins(format!("@!{pn} bra {skip}"));
            em.vars.insert(nv, nc.clone());
            em.forget_row();
            em.col_var = Some(mv);
            for &(mi, half) in &rows {
                let a = &acc[((mi * nb + ni) * 4 + half * 2 + e) as usize];
                let (mc, pm) = clamped(em, &mrow, mi * 16 + half * 8, m_dim, &m_last);
                em.vars.insert(mv, mc.clone());
                em.acc = Some(acc_value(em, a, s.int_acc));
                em.memo = Some(Vec::new());
                let v = em.emit(epilogue);
                em.memo = None;
                em.acc = None;
                let code = em.encode(&v?, out);
                let addr = out_address(em, &rowbase, &mc, n_dim, &nc, bytes);
                em.ins(format!("@{pm} st.global.{sty} [{addr}], {}", code.r));
            }
            em.col_var = None;
            em.forget_row();
            em.a.place(&skip);
        }
    }
    em.a.place(&done);
    Ok(())
}

/// The encoded epilogue values of column pair `ni` of a warp's
/// accumulators: both columns, each with the thread's `rows` (a column's
/// row-invariant terms computed once). `first` is the thread's first row
/// and column in the output (s64).
fn pair_codes(
    em: &mut Em,
    s: &TileStore,
    epilogue: &Expr,
    rows: &[(u32, u32)],
    (mrow, ncol): (&str, &str),
    ni: u32,
) -> Result<Vec<Vec<String>>, PtxError> {
    let r = em.k.output.shape.rank();
    let (mv, nv) = (Var(r as u32 - 2), Var(r as u32 - 1));
    let (nb, out) = (s.warp_n / 8, em.k.output.dtype);
    let mut codes: Vec<Vec<String>> = Vec::new();
    for e in 0..2u32 {
        let nc = em.reg(Class::D);
        em.ins(format!("add.s64 {nc}, {ncol}, {}", ni * 8 + e));
        em.vars.insert(nv, nc);
        em.forget_row();
        em.col_var = Some(mv);
        let mut col = Vec::new();
        for &(mi, half) in rows {
            let a = &s.acc[((mi * nb + ni) * 4 + half * 2 + e) as usize];
            let mc = em.reg(Class::D);
            em.ins(format!("add.s64 {mc}, {mrow}, {}", mi * 16 + half * 8));
            em.vars.insert(mv, mc);
            em.acc = Some(acc_value(em, a, s.int_acc));
            em.memo = Some(Vec::new());
            let v = em.emit(epilogue);
            em.memo = None;
            em.acc = None;
            col.push(em.encode(&v?, out).r);
        }
        em.col_var = None;
        em.forget_row();
        codes.push(col);
    }
    Ok(codes)
}

/// A register epilogue into a 16-bit output through shared memory
/// ([`MmaPlan::coalesce_out`]). A tile wholly inside an output whose width
/// is a multiple of 8 (every 16-byte chunk of a row aligned): each warp
/// runs the epilogue on its accumulators and stores the pairs to the
/// tile staged in the idle stages (rows [`MmaPlan::coalesce_pitch`]
/// apart); after a barrier, consecutive threads take consecutive 16-byte
/// chunks of a row, loaded 8 at a time, and store them (a warp's 512
/// bytes contiguous), and a second barrier keeps the next tile's copies
/// off the staged tile. Register pair stores reach 16 bytes of a row per
/// 4 lanes: on the H100 (2026-12-06) a fifth of W3's gate projection's
/// stall samples waited on the memory pipe's queue there (`lg_throttle`).
/// Other tiles take [`store_tile`].
fn store_tile_coalesced(
    em: &mut Em,
    plan: &MmaPlan,
    s: &TileStore,
    (tid, smem): (&str, &str),
    epilogue: &Expr,
) -> Result<(), PtxError> {
    let t = plan.tiling;
    let pitch = plan.coalesce_pitch();
    let (slow, done) = (em.a.label("tile_part"), em.a.label("tile_stored"));
    // Block-uniform: the tile's rows and columns lie in the output.
    let (end, pf, q) = (em.reg(Class::D), em.reg(Class::P), em.reg(Class::P));
    em.ins(format!("add.s64 {end}, {}, {}", s.m0, t.tile_m));
    em.ins(format!("setp.gt.s64 {pf}, {end}, {}", s.m_dim));
    em.ins(format!("add.s64 {end}, {}, {}", s.n0, t.tile_n));
    em.ins(format!("setp.gt.s64 {q}, {end}, {}", s.n_dim));
    em.ins(format!("or.pred {pf}, {pf}, {q}"));
    em.ins(format!("and.b64 {end}, {}, 7", s.n_dim));
    em.ins(format!("setp.ne.s64 {q}, {end}, 0"));
    em.ins(format!("or.pred {pf}, {pf}, {q}"));
    em.ins(format!("@{pf} bra.uni {slow}"));
    // The thread's first element in the staged tile: row `wm_base + lane
    // / 4`, column `wn_base + 2 (lane % 4)`.
    let (row, col, sbase) = (em.reg(Class::R), em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("shr.u32 {row}, {}, 2", s.lane));
    em.ins(format!("add.u32 {row}, {row}, {}", s.wm_base));
    em.ins(format!("and.b32 {col}, {}, 3", s.lane));
    em.ins(format!("shl.b32 {col}, {col}, 2"));
    em.ins(format!("mad.lo.u32 {sbase}, {row}, {pitch}, {col}"));
    em.ins(format!("mad.lo.u32 {sbase}, {}, 2, {sbase}", s.wn_base));
    em.ins(format!("add.u32 {sbase}, {sbase}, {smem}"));
    store_tile(em, s, epilogue, Some((&sbase, pitch)))?;
    em.ins(plan.sync());
    // Chunk `tid % per_row` of rows `tid / per_row + pass * rows_per_pass`.
    let per_row = t.tile_n / 8;
    let rows_per_pass = t.threads() / per_row;
    let passes = t.tile_m / rows_per_pass;
    let (chunk, r0) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("rem.u32 {chunk}, {tid}, {per_row}"));
    em.ins(format!("div.u32 {r0}, {tid}, {per_row}"));
    let src = em.reg(Class::R);
    em.ins(format!("mad.lo.u32 {src}, {r0}, {pitch}, {smem}"));
    em.ins(format!("mad.lo.u32 {src}, {chunk}, 16, {src}"));
    let (mc, nc) = (em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("cvt.u64.u32 {mc}, {r0}"));
    em.ins(format!("add.s64 {mc}, {mc}, {}", s.m0));
    em.ins(format!("cvt.u64.u32 {nc}, {chunk}"));
    em.ins(format!("mad.lo.s64 {nc}, {nc}, 8, {}", s.n0));
    let rowbase = em.reg(Class::D);
    em.ins(format!("mul.lo.s64 {rowbase}, {}, {}", s.bflat, s.m_dim));
    let dst = out_address(em, &rowbase, &mc, s.n_dim, &nc, 2);
    let step = em.reg(Class::D);
    em.ins(format!(
        "mul.lo.s64 {step}, {}, {}",
        s.n_dim,
        2 * rows_per_pass
    ));
    const IN_FLIGHT: u32 = 8;
    for first in (0..passes).step_by(IN_FLIGHT as usize) {
        let n = IN_FLIGHT.min(passes - first);
        let vals: Vec<[String; 4]> = (0..n)
            .map(|i| {
                let v = [0; 4].map(|_| em.reg(Class::R));
                em.ins(format!(
                    "ld.shared.v4.b32 {{{}, {}, {}, {}}}, [{src}+{}]",
                    v[0],
                    v[1],
                    v[2],
                    v[3],
                    (first + i) * rows_per_pass * pitch
                ));
                v
            })
            .collect();
        for v in vals {
            em.ins(format!(
                "st.global.v4.b32 [{dst}], {{{}, {}, {}, {}}}",
                v[0], v[1], v[2], v[3]
            ));
            em.ins(format!("add.s64 {dst}, {dst}, {step}"));
        }
    }
    // The next tile's copies overwrite the stages.
    em.ins(plan.sync());
    em.ins(format!("bra.uni {done}"));
    em.a.place(&slow);
    store_tile(em, s, epilogue, None)?;
    em.a.place(&done);
    Ok(())
}

/// Whether the epilogue of `k` is a gated product: it reads a matrix of
/// the output's rows and columns (the gate) and evaluates a
/// transcendental function ([`heavy_epilogue`]): SwiGLU, GeGLU. Staged,
/// such an epilogue keeps the tensor cores idle long enough that two
/// blocks per multiprocessor (one's epilogue beside the other's main
/// loop) pay. On the H100 (2026-12-06 06:33 UTC) W3's SwiGLU product on
/// 128x128 tiles of two blocks took W3 0.5891 -> 0.5429 ms, while W2's
/// bias + GELU layer (a per-column load) went 0.2978 -> 0.3132 ms, so a
/// transcendental alone does not qualify.
pub(super) fn gated_epilogue(k: &Kernel, e: &Expr) -> bool {
    reads_a_gate(k, e) && heavy_epilogue(e, Some(k.output.dtype))
}

/// Whether an epilogue loads a matrix of the output's rows and columns
/// (a gate, a residual).
fn reads_a_gate(k: &Kernel, e: &Expr) -> bool {
    let r = k.output.shape.rank();
    if r < 2 {
        return false;
    }
    let (mv, nv) = (Var(r as u32 - 2), Var(r as u32 - 1));
    epilogue_loads(e).iter().any(|l| {
        let vars = free_vars(l);
        vars.contains(&mv) && vars.contains(&nv)
    })
}

/// Whether an epilogue evaluates a transcendental function (an
/// exponential, logarithm, tanh, erf, sine or cosine, or a power) per
/// element: SiLU, GELU, a softplus. With the output's type, a logistic
/// that takes four approximate instructions into it (SiLU's `x / (1 +
/// exp(-x))` into bf16, see `Em::logistic`) is not: on the H100
/// (2026-12-06 11:28 UTC) W3's SwiGLU product took 140 us at ncu's clocks
/// on two-block 128x128 tiles and 118 us on the default 128x256 ones (W3
/// 0.5164 -> 0.5036 ms, kiln bench medians of 50).
pub(super) fn heavy_epilogue(e: &Expr, out: Option<DType>) -> bool {
    if let (Some(o), Expr::Binary(Binary::Div, n, d)) = (out, e)
        && super::expr::fast_logistic(o, d)
        && let Some(y) = super::expr::logistic_arg(d)
    {
        return heavy_epilogue(n, out) || heavy_epilogue(y, out);
    }
    let here = match e {
        Expr::Unary(u, _) => match u {
            Unary::Exp | Unary::Log | Unary::Tanh | Unary::Erf | Unary::Sin | Unary::Cos => true,
            Unary::Neg
            | Unary::Abs
            | Unary::Sqrt
            | Unary::Floor
            | Unary::Ceil
            | Unary::Round
            | Unary::Not => false,
        },
        Expr::Binary(op, _, _) => *op == Binary::Pow,
        Expr::Load { .. }
        | Expr::Cast(..)
        | Expr::Round(..)
        | Expr::Select(..)
        | Expr::Reduce { .. }
        | Expr::Float(_)
        | Expr::Int(_)
        | Expr::Bool(_)
        | Expr::Var(_)
        | Expr::Dim(_)
        | Expr::Acc => false,
    };
    let mut below = false;
    e.for_each_child(|c| below |= heavy_epilogue(c, out));
    here || below
}

/// Epilogue loads per thread that [`store_staged`] issues together,
/// before it computes and stores any of their elements (a group of
/// elements is at least 4).
const STAGED_LOADS: u32 = 16;
/// [`STAGED_LOADS`] for a split tile ([`MmaPlan::splits`]) or a block
/// with at most 128 registers a thread.
const FEW_STAGED_LOADS: u32 = 4;
/// [`STAGED_LOADS`] where the threads copy an operand themselves: W3's
/// output projection (its `a` the attention output through a transpose)
/// spilled 4 bytes at 16 and assembles without spills at 8 and 12 since a
/// staged run's index terms of `k` alone are computed once per step
/// (ptxas 13.0.88, 255 registers).
const OWN_COPIES_STAGED_LOADS: u32 = 8;

/// The loads of an epilogue that [`store_staged`] issues ahead of the
/// arithmetic: unguarded loads outside selects and reductions, without
/// repeats. Their indices are the output's variables, clamped into the
/// output, so each is in bounds wherever it is issued. An epilogue with
/// none (a plain product, a scale, a cast) stores from the registers.
fn epilogue_loads(e: &Expr) -> Vec<Expr> {
    fn walk(e: &Expr, out: &mut Vec<Expr>) {
        match e {
            Expr::Load { guard: None, .. } => {
                if !reads_acc(e) && !out.contains(e) {
                    out.push(e.clone());
                }
            }
            Expr::Unary(_, x) | Expr::Cast(_, x) | Expr::Round(_, x) => walk(x, out),
            Expr::Binary(_, a, b) => {
                walk(a, out);
                walk(b, out);
            }
            Expr::Load { guard: Some(_), .. }
            | Expr::Select(..)
            | Expr::Reduce { .. }
            | Expr::Float(_)
            | Expr::Int(_)
            | Expr::Bool(_)
            | Expr::Var(_)
            | Expr::Dim(_)
            | Expr::Acc => {}
        }
    }
    let mut out = Vec::new();
    walk(e, &mut out);
    out
}

/// The epilogue of a tile whose epilogue reads memory (a residual, the
/// other half of a gated product, a bias), through shared memory: every
/// thread writes its accumulators into the tile staged in the (now idle)
/// stages, then walks the tile by output columns: consecutive threads
/// take consecutive columns (a warp's loads and stores are contiguous),
/// each thread its column's rows, a group at a time ([`STAGED_LOADS`]) with the
/// group's loads issued before any of its arithmetic and stores. From
/// registers, each element's loads waited for the previous element's
/// store (ptxas cannot move a load above a store it may alias), so a tile
/// waited for memory once per accumulator. Rows and columns past the
/// output compute at the last ones and are not stored.
fn store_staged(em: &mut Em, plan: &MmaPlan, e: &TileEnd, epilogue: &Expr) -> Result<(), PtxError> {
    let t = plan.tiling;
    let r = em.k.output.shape.rank();
    let (mv, nv) = (Var(r as u32 - 2), Var(r as u32 - 1));
    let pitch = t.out_pitch();
    let (ty, class) = staged_acc_type(e.int_acc);
    // Each accumulator pair (columns `2 (lane % 4) + {0, 1}` of an `n8`
    // block) to its place: row `wm_base + mi * 16 + lane / 4 + 8 half`,
    // column `wn_base + ni * 8 + 2 (lane % 4)`.
    // The thread's coordinates are read again here rather than kept in
    // registers through the main loop.
    let (tid, warp, wm, wn) = (
        em.reg(Class::R),
        em.reg(Class::R),
        em.reg(Class::R),
        em.reg(Class::R),
    );
    em.ins(format!("mov.u32 {tid}, %tid.x"));
    em.ins(format!("shr.u32 {warp}, {tid}, 5"));
    em.ins(format!(
        "shr.u32 {wm}, {warp}, {}",
        t.warps_n().trailing_zeros()
    ));
    em.ins(format!("and.b32 {wn}, {warp}, {}", t.warps_n() - 1));
    let (g, t4, at) = (em.reg(Class::R), em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("bfe.u32 {g}, {tid}, 2, 3"));
    em.ins(format!("and.b32 {t4}, {tid}, 3"));
    em.ins(format!("mad.lo.u32 {g}, {wm}, {}, {g}", t.warp_m));
    em.ins(format!("shl.b32 {t4}, {t4}, 1"));
    em.ins(format!("mad.lo.u32 {t4}, {wn}, {}, {t4}", t.warp_n));
    em.ins(format!("mad.lo.u32 {at}, {g}, {pitch}, {t4}"));
    em.ins(format!("shl.b32 {at}, {at}, 2"));
    em.ins(format!("add.u32 {at}, {at}, {}", e.smem));
    let nb = t.warp_n / 8;
    for mi in 0..t.warp_m / 16 {
        for half in 0..2 {
            for ni in 0..nb {
                let c = ((mi * nb + ni) * 4 + half * 2) as usize;
                let off = ((mi * 16 + half * 8) * pitch + ni * 8) * 4;
                em.ins(format!(
                    "st.shared.v2.{ty} [{at}+{off}], {{{}, {}}}",
                    e.acc[c],
                    e.acc[c + 1]
                ));
            }
        }
    }
    em.ins(plan.sync());
    // The thread's columns `tid % min(threads, tile_n) + j threads` and
    // rows `tid / tile_n + i step`.
    let threads = t.threads();
    let lanes_n = threads.min(t.tile_n);
    let step = (threads / t.tile_n).max(1);
    let (col, row) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("and.b32 {col}, {tid}, {}", lanes_n - 1));
    em.ins(format!(
        "shr.u32 {row}, {tid}, {}",
        t.tile_n.trailing_zeros()
    ));
    if threads <= t.tile_n {
        em.ins(format!("mov.u32 {row}, 0"));
    }
    let from = em.reg(Class::R);
    em.ins(format!("mad.lo.u32 {from}, {row}, {pitch}, {col}"));
    em.ins(format!("shl.b32 {from}, {from}, 2"));
    em.ins(format!("add.u32 {from}, {from}, {}", e.smem));
    let (mrow, ncol, t64) = (em.reg(Class::D), em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("cvt.u64.u32 {t64}, {row}"));
    em.ins(format!("add.s64 {mrow}, {}, {t64}", e.m0));
    em.ins(format!("cvt.u64.u32 {t64}, {col}"));
    em.ins(format!("add.s64 {ncol}, {}, {t64}", e.n0));
    let rowbase = em.reg(Class::D);
    em.ins(format!("mul.lo.s64 {rowbase}, {}, {}", e.bflat, e.m_dim));
    let (m_last, n_last) = (em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("sub.s64 {m_last}, {}, 1", e.m_dim));
    em.ins(format!("sub.s64 {n_last}, {}, 1", e.n_dim));
    let out = em.k.output.dtype;
    let bytes = out.bits() / 8;
    let sty = match out.bits() {
        64 => "b64",
        32 => "b32",
        16 => "b16",
        _ => "u8",
    };
    let loads = epilogue_loads(epilogue);
    let rows_per_thread = t.tile_m / step;
    // A split tile's merge holds its accumulators and the loaded partials
    // just before, and blocks held to 128 registers a thread (two per
    // multiprocessor) have few to spare: fewer loads in flight there
    // (ptxas 13.0 spilled at 8 and 16 on the split-K tests' 128x128
    // tiles, 736 bytes at 32 on sm_80's).
    let regs = 65536 / (t.threads() * t.blocks_per_sm);
    // An operand the threads copy themselves holds its copies' addresses
    // across the tile loop: fewer there too (W3's output projection, its
    // `a` a transposed view, spilled at 16 beside the tile-inside path;
    // see [`OWN_COPIES_STAGED_LOADS`]).
    let own_copies = plan.a.staged.is_some() || plan.b.staged.is_some();
    // `mma.sync` tiles keep 128 accumulators a thread in registers through
    // the epilogue: a gated one (SwiGLU's up projection on sm_80, 128x256)
    // spilled 4 bytes at 16 once its logistic took four instructions.
    let gated_sync = !t.wgmma && reads_a_gate(em.k, epilogue) && heavy_epilogue(epilogue, None);
    let in_flight = if plan.splits > 1 || regs <= 128 || gated_sync {
        FEW_STAGED_LOADS
    } else if own_copies {
        OWN_COPIES_STAGED_LOADS
    } else {
        STAGED_LOADS
    };
    let group_rows = (in_flight / loads.len().max(1) as u32).max(4);
    // A tile wholly inside the output: no clamps or predicates, each
    // thread's output address a fixed step from its previous row's (the
    // column-by-column code below spends some ten integer instructions an
    // element on them). On the H100 (2026-12-06 06:43 UTC) W2 0.2983 ->
    // 0.2560 ms with it, W3 0.5433 -> 0.5282 ms; ptxas then gives the
    // staged kernels 250-255 registers (215-229 before; W3's output
    // projection spills 4 bytes).
    let done = em.a.label("staged_done");
    let slow = em.a.label("staged_edge");
    let chunked;
    {
        let (end, pf, q) = (em.reg(Class::D), em.reg(Class::P), em.reg(Class::P));
        em.ins(format!("add.s64 {end}, {}, {}", e.m0, t.tile_m));
        em.ins(format!("setp.gt.s64 {pf}, {end}, {}", e.m_dim));
        em.ins(format!("add.s64 {end}, {}, {}", e.n0, t.tile_n));
        em.ins(format!("setp.gt.s64 {q}, {end}, {}", e.n_dim));
        em.ins(format!("or.pred {pf}, {pf}, {q}"));
        em.ins(format!("@{pf} bra {slow}"));
        chunked = chunk_loads(em, plan, &loads);
        if let Some(aligned) = &chunked {
            // Widths that are not a multiple of 8 take the edge path
            // (with the element-by-element path below beside this one
            // ptxas 13.0 spilled 36 bytes on a 128x256 tile).
            em.ins(format!("and.b64 {end}, {}, 7", e.n_dim));
            em.ins(format!("setp.ne.s64 {q}, {end}, 0"));
            em.ins(format!("@{q} bra {slow}"));
            store_staged_chunks(em, plan, e, epilogue, aligned, in_flight)?;
            em.ins(format!("bra.uni {done}"));
        }
    }
    if chunked.is_none() {
        let ptr0 = out_address(em, &rowbase, &mrow, e.n_dim, &ncol, bytes);
        let rowstep = em.reg(Class::D);
        em.ins(format!(
            "mul.lo.s64 {rowstep}, {}, {}",
            e.n_dim,
            step * bytes
        ));
        // Loads of an input shaped as the output at the element's own
        // place (a residual, a gated product's other half) walk the rows
        // with running addresses too: their first row's address and step.
        let aligned: Vec<(Expr, DType, String, String)> = loads
            .iter()
            .filter_map(|l| output_aligned(em, l).map(|(i, d)| (l.clone(), i, d)))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|(l, input, d)| {
                let b = d.bits() / 8;
                let (first, stepb) = (em.reg(Class::D), em.reg(Class::D));
                em.ins(format!("add.s64 {first}, {rowbase}, {mrow}"));
                em.ins(format!("mad.lo.s64 {first}, {first}, {}, {ncol}", e.n_dim));
                let base = em.in_ptr[input].clone();
                em.ins(format!("mad.lo.s64 {first}, {first}, {b}, {base}"));
                em.ins(format!("mul.lo.s64 {stepb}, {}, {}", e.n_dim, step * b));
                (l, d, first, stepb)
            })
            .collect();
        for j in 0..(t.tile_n / lanes_n) {
            let ptr = em.reg(Class::D);
            em.ins(format!("mov.b64 {ptr}, {ptr0}"));
            let running: Vec<String> = aligned
                .iter()
                .map(|(_, _, first, _)| {
                    let r = em.reg(Class::D);
                    em.ins(format!("mov.b64 {r}, {first}"));
                    r
                })
                .collect();
            let nc = em.reg(Class::D);
            em.ins(format!("add.s64 {nc}, {ncol}, {}", j * lanes_n));
            em.vars.insert(nv, nc);
            em.forget_row();
            em.col_var = Some(mv);
            let mut i0 = 0;
            while i0 < rows_per_thread {
                let group: Vec<u32> = (i0..(i0 + group_rows).min(rows_per_thread)).collect();
                i0 += group_rows;
                let mut elems = Vec::new();
                for &i in &group {
                    let mc = em.reg(Class::D);
                    em.ins(format!("add.s64 {mc}, {mrow}, {}", i * step));
                    let a = em.reg(class);
                    let off = (i * step * pitch + j * lanes_n) * 4;
                    em.ins(format!("ld.shared.{ty} {a}, [{from}+{off}]"));
                    em.vars.insert(mv, mc.clone());
                    let mut codes = Vec::new();
                    for ((l, d, _, stepb), r) in aligned.iter().zip(&running) {
                        let w = code_width(*d);
                        let code = Code {
                            r: em.reg(code_class(w)),
                            w,
                        };
                        let off = j * lanes_n * (d.bits() / 8);
                        em.ins(format!(
                            "ld.global.{} {}, [{r}+{off}]",
                            scalar_ty(w),
                            code.r
                        ));
                        em.ins(format!("add.s64 {r}, {r}, {stepb}"));
                        codes.push((l.clone(), code));
                    }
                    let saved = std::mem::replace(&mut em.col_codes, codes);
                    em.memo = Some(Vec::new());
                    let loaded = loads.iter().try_for_each(|l| em.emit(l).map(|_| ()));
                    em.col_codes = saved;
                    loaded?;
                    elems.push((mc, a, em.memo.take().unwrap_or_default()));
                }
                for (mc, a, memo) in elems {
                    em.vars.insert(mv, mc);
                    em.acc = Some(acc_value(em, &a, e.int_acc));
                    em.memo = Some(memo);
                    let v = em.emit(epilogue);
                    em.memo = None;
                    em.acc = None;
                    let code = em.encode(&v?, out);
                    // Rows in order: one running address.
                    em.ins(format!(
                        "st.global.{sty} [{ptr}+{}], {}",
                        j * lanes_n * bytes,
                        code.r
                    ));
                    em.ins(format!("add.s64 {ptr}, {ptr}, {rowstep}"));
                }
            }
            em.col_var = None;
            em.forget_row();
        }
        em.ins(format!("bra.uni {done}"));
    }
    em.a.place(&slow);
    for j in 0..(t.tile_n / lanes_n) {
        let (nc, pn) = clamped(em, &ncol, j * lanes_n, e.n_dim, &n_last);
        em.vars.insert(nv, nc.clone());
        em.forget_row();
        em.col_var = Some(mv);
        let mut i0 = 0;
        while i0 < rows_per_thread {
            let group: Vec<u32> = (i0..(i0 + group_rows).min(rows_per_thread)).collect();
            i0 += group_rows;
            // The group's rows, accumulators and loads.
            let mut elems = Vec::new();
            for &i in &group {
                let (mc, pm) = clamped(em, &mrow, i * step, e.m_dim, &m_last);
                let a = em.reg(class);
                let off = (i * step * pitch + j * lanes_n) * 4;
                em.ins(format!("ld.shared.{ty} {a}, [{from}+{off}]"));
                em.vars.insert(mv, mc.clone());
                em.memo = Some(Vec::new());
                for l in &loads {
                    em.emit(l)?;
                }
                elems.push((mc, pm, a, em.memo.take().unwrap_or_default()));
            }
            for (mc, pm, a, memo) in elems {
                em.vars.insert(mv, mc.clone());
                em.acc = Some(acc_value(em, &a, e.int_acc));
                em.memo = Some(memo);
                let v = em.emit(epilogue);
                em.memo = None;
                em.acc = None;
                let code = em.encode(&v?, out);
                let addr = out_address(em, &rowbase, &mc, e.n_dim, &nc, bytes);
                let ok = em.reg(Class::P);
                em.ins(format!("and.pred {ok}, {pm}, {pn}"));
                em.ins(format!("@{ok} st.global.{sty} [{addr}], {}", code.r));
            }
        }
        em.col_var = None;
        em.forget_row();
    }
    em.a.place(&done);
    // The next tile's copies write where this one was staged: after
    // every thread has read it (through the async proxy, for tensor
    // copies and warpgroup reads, after this proxy's accesses).
    if t.wgmma {
        em.ins("fence.proxy.async.shared::cta");
    }
    em.ins(plan.sync());
    Ok(())
}

/// The type and register class of the staged tile's accumulators: s32
/// (int8), else f32.
fn staged_acc_type(int_acc: bool) -> (&'static str, Class) {
    if int_acc {
        ("b32", Class::R)
    } else {
        ("f32", Class::F)
    }
}

/// The epilogue's load when [`store_staged_chunks`] can end a tile: a
/// 16-bit output, one load, of a 16-bit input shaped as the output at the
/// element's own place ([`output_aligned`]: a residual, a gate), and
/// rows of 16-byte chunks the threads share evenly. With the load's input
/// and type.
fn chunk_loads(em: &Em, plan: &MmaPlan, loads: &[Expr]) -> Option<Vec<(Expr, usize, DType)>> {
    let t = plan.tiling;
    let per_row = t.tile_n / 8;
    let shape_ok = plan.chunk_staged
        && em.k.output.dtype.bits() == 16
        && t.threads().is_multiple_of(per_row)
        && t.tile_m.is_multiple_of(t.threads() / per_row);
    if !shape_ok {
        return None;
    }
    // One load (a residual, a gate): what W3 and W2 need.
    if loads.len() != 1 {
        return None;
    }
    loads
        .iter()
        .map(|l| {
            output_aligned(em, l)
                .filter(|(_, d)| d.bits() == 16)
                .map(|(i, d)| (l.clone(), i, d))
        })
        .collect()
}

/// A staged tile wholly inside a 16-bit output whose width is a multiple
/// of 8, its epilogue's loads output-aligned ([`chunk_loads`]): consecutive
/// threads take consecutive 8-column chunks of a row (a warp's 512 bytes
/// contiguous), each chunk's accumulators two 16-byte shared loads, the
/// load one 16-byte vector load, its 8 values one 16-byte store;
/// the loads of `in_flight` elements (at least one chunk's) are issued
/// before their stores. The
/// element-by-element path stores 2 bytes at a time and loads each gate
/// or residual element by itself.
fn store_staged_chunks(
    em: &mut Em,
    plan: &MmaPlan,
    e: &TileEnd,
    epilogue: &Expr,
    aligned: &[(Expr, usize, DType)],
    in_flight: u32,
) -> Result<(), PtxError> {
    use super::elements::{vector_load, vector_store};
    let t = plan.tiling;
    let r = em.k.output.shape.rank();
    let (mv, nv) = (Var(r as u32 - 2), Var(r as u32 - 1));
    let pitch = t.out_pitch();
    let (ty, class) = staged_acc_type(e.int_acc);
    let per_row = t.tile_n / 8;
    let rows_per_pass = t.threads() / per_row;
    let passes = t.tile_m / rows_per_pass;
    let group = (in_flight / (8 * aligned.len().max(1) as u32)).max(1);
    let (chunk, r0) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("rem.u32 {chunk}, {}, {per_row}", e.tid));
    em.ins(format!("div.u32 {r0}, {}, {per_row}", e.tid));
    let from = em.reg(Class::R);
    em.ins(format!("mad.lo.u32 {from}, {r0}, {pitch}, 0"));
    em.ins(format!("mad.lo.u32 {from}, {chunk}, 8, {from}"));
    em.ins(format!("shl.b32 {from}, {from}, 2"));
    em.ins(format!("add.u32 {from}, {from}, {}", e.smem));
    let (mrow, ncol) = (em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("cvt.u64.u32 {mrow}, {r0}"));
    em.ins(format!("add.s64 {mrow}, {mrow}, {}", e.m0));
    em.ins(format!("cvt.u64.u32 {ncol}, {chunk}"));
    em.ins(format!("mad.lo.s64 {ncol}, {ncol}, 8, {}", e.n0));
    // The chunk's element offset in the output and in every aligned
    // input (shaped as the output), and the step of a pass.
    let at = em.reg(Class::D);
    em.ins(format!("mul.lo.s64 {at}, {}, {}", e.bflat, e.m_dim));
    em.ins(format!("add.s64 {at}, {at}, {mrow}"));
    em.ins(format!("mad.lo.s64 {at}, {at}, {}, {ncol}", e.n_dim));
    let step = em.reg(Class::D);
    em.ins(format!("mul.lo.s64 {step}, {}, {rows_per_pass}", e.n_dim));
    let running = |em: &mut Em, base: &str, bytes: u32| {
        let p = em.reg(Class::D);
        em.ins(format!("mad.lo.s64 {p}, {at}, {bytes}, {base}"));
        let s = em.reg(Class::D);
        em.ins(format!("mul.lo.s64 {s}, {step}, {bytes}"));
        (p, s)
    };
    let outp = em.out_ptr.clone();
    let (dst, dstep) = running(em, &outp, 2);
    let srcs: Vec<(String, String)> = aligned
        .iter()
        .map(|(_, input, d)| {
            let base = em.in_ptr[*input].clone();
            running(em, &base, d.bits() / 8)
        })
        .collect();
    let out = em.k.output.dtype;
    let mut i0 = 0;
    while i0 < passes {
        let batch: Vec<u32> = (i0..(i0 + group).min(passes)).collect();
        i0 += group;
        // The batch's accumulators and loads.
        let mut loaded = Vec::new();
        for &i in &batch {
            let acc: Vec<String> = (0..8).map(|_| em.reg(class)).collect();
            for h in 0..2 {
                em.ins(format!(
                    "ld.shared.v4.{ty} {{{}}}, [{from}+{}]",
                    acc[4 * h..4 * h + 4].join(", "),
                    (i * rows_per_pass * pitch + 4 * h as u32) * 4
                ));
            }
            let mut pre = Vec::new();
            for ((l, input, d), (src, sstep)) in aligned.iter().zip(&srcs) {
                let w = code_width(*d);
                let lanes: Vec<Code> = (0..8)
                    .map(|_| Code {
                        r: em.reg(code_class(w)),
                        w,
                    })
                    .collect();
                vector_load(em, src, w, &lanes);
                em.ins(format!("add.s64 {src}, {src}, {sstep}"));
                pre.push(super::expr::Preload {
                    input: *input,
                    load: Some(l.clone()),
                    lanes,
                });
            }
            loaded.push((i, acc, pre));
        }
        for (i, acc, pre) in loaded {
            let mc = em.reg(Class::D);
            em.ins(format!("add.s64 {mc}, {mrow}, {}", i * rows_per_pass));
            em.vars.insert(mv, mc);
            let saved = std::mem::replace(&mut em.preload, pre);
            let mut codes = Vec::new();
            for (j, a) in acc.iter().enumerate() {
                let nc = em.reg(Class::D);
                em.ins(format!("add.s64 {nc}, {ncol}, {j}"));
                em.vars.insert(nv, nc);
                em.lane = j;
                em.acc = Some(acc_value(em, a, e.int_acc));
                em.memo = Some(Vec::new());
                let v = em.emit(epilogue);
                em.memo = None;
                em.acc = None;
                match v {
                    Ok(v) => codes.push(em.encode(&v, out)),
                    Err(err) => {
                        em.preload = saved;
                        em.lane = 0;
                        return Err(err);
                    }
                }
            }
            em.preload = saved;
            em.lane = 0;
            vector_store(em, &dst, 16, &codes);
            em.ins(format!("add.s64 {dst}, {dst}, {dstep}"));
        }
    }
    Ok(())
}

/// A lane's part in an `ldmatrix.x4`: lane `l` gives row `l % 8` of
/// matrix `l / 8`; the matrix's low bit, its high bit and the row (u32).
pub(super) fn ldmatrix_lane(em: &mut Em, lane: &str) -> (String, String, String) {
    let (mat, row) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("shr.u32 {mat}, {lane}, 3"));
    em.ins(format!("and.b32 {row}, {lane}, 7"));
    let (lo, hi) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("and.b32 {lo}, {mat}, 1"));
    em.ins(format!("shr.u32 {hi}, {mat}, 1"));
    (lo, hi, row)
}

/// A lane's `ldmatrix` row address within a slice (before the stage's and
/// the fragment's offsets): row `row` of the matrix at outer half `oh` and
/// `k` half `kh`, the warp's sub-tile starting at outer index `base`.
pub(super) fn lane_offset(
    em: &mut Em,
    s: Storage,
    pitch: u32,
    base: &str,
    oh: &str,
    kh: &str,
    row: &str,
) -> String {
    let o = em.reg(Class::R);
    let off = em.reg(Class::R);
    match s {
        Storage::OuterK => {
            // (base + oh * 8 + row) * pitch + kh * 16
            em.ins(format!("mad.lo.u32 {o}, {oh}, 8, {base}"));
            em.ins(format!("add.u32 {o}, {o}, {row}"));
            em.ins(format!("mul.lo.u32 {off}, {o}, {pitch}"));
            em.ins(format!("mad.lo.u32 {off}, {kh}, 16, {off}"));
        }
        Storage::KOuter => {
            // (kh * 8 + row) * pitch + (base + oh * 8) * 2
            let k = em.reg(Class::R);
            em.ins(format!("mad.lo.u32 {k}, {kh}, 8, {row}"));
            em.ins(format!("mul.lo.u32 {off}, {k}, {pitch}"));
            em.ins(format!("mad.lo.u32 {o}, {oh}, 8, {base}"));
            em.ins(format!("mad.lo.u32 {off}, {o}, 2, {off}"));
        }
    }
    off
}

/// The byte offset, within a slice of row pitch `pitch`, of the fragment
/// at outer block `blk` (16 rows or columns) and `k` half-step `kk` (16
/// deep).
fn fragment_offset(s: Storage, pitch: u32, blk: u32, kk: u32) -> u32 {
    match s {
        Storage::OuterK => blk * 16 * pitch + kk * 32,
        Storage::KOuter => kk * 16 * pitch + blk * 32,
    }
}

/// Sets up a thread's copies of one operand (`outer` rows or columns per
/// slice, the slice `slice` bytes into a stage) for the tile whose outer
/// index starts at `o0`: each copy moves 16 bytes (8 elements along the
/// contiguous axis), consecutive threads taking consecutive 16 bytes of a
/// row.
#[allow(clippy::too_many_arguments)]
fn copies(
    em: &mut Em,
    t: &Tiling,
    op: &Operand,
    outer: u32,
    slice: u32,
    tid: &str,
    o0: &str,
    out_outer: &str,
) -> Result<Copies, PtxError> {
    let i = op.input;
    let rank = em.in_shape[i].len();
    // The element offset of the batch indices.
    let lead = lead_offset(em, i, &op.lead)?;
    let row_stride = if rank >= 2 {
        em.in_strides[i][rank - 2].clone()
    } else {
        "0".to_string()
    };
    // A staged operand's outer extent is the output's (its own index may
    // be anything); a copied one's is its own axis (reads stay inside it).
    let outer_size = match op.storage {
        _ if op.staged.is_some() || rank < 2 => out_outer.to_string(),
        Storage::OuterK => em.in_shape[i][rank - 2].clone(),
        Storage::KOuter => em.in_shape[i][rank - 1].clone(),
    };
    let pitch = t.pitch(op.storage, outer);
    let base = em.in_ptr[i].clone();
    let bytes = 2;
    // Copies per slice row, rows per pass of the block's threads, passes.
    let row_elems = match op.storage {
        Storage::OuterK => t.tile_k,
        Storage::KOuter => outer,
    };
    let per_row = row_elems / 8;
    let rows = match op.storage {
        Storage::OuterK => outer,
        Storage::KOuter => t.tile_k,
    };
    let rows_per_pass = t.threads() / per_row;
    let passes = rows / rows_per_pass;
    let mut c = Copies {
        shared: Vec::new(),
        global: Vec::new(),
        kidx: Vec::new(),
        outer_ok: Vec::new(),
        base: base.clone(),
        step: String::new(),
        slice,
        outer: Vec::new(),
        staged: op.staged.clone(),
        chunk: op.chunk.clone(),
        elem: em.k.inputs[i].dtype,
        same_k: op.storage == Storage::OuterK,
    };
    let (r0, c0) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("shr.u32 {r0}, {tid}, {}", per_row.trailing_zeros()));
    em.ins(format!("and.b32 {c0}, {tid}, {}", per_row - 1));
    em.ins(format!("shl.b32 {c0}, {c0}, 3"));
    for j in 0..passes {
        let (rw, sh) = (em.reg(Class::R), em.reg(Class::R));
        em.ins(format!("add.u32 {rw}, {r0}, {}", j * rows_per_pass));
        if t.wgmma {
            // 128-byte rows, the 16-byte chunk `c` of row `r` at chunk
            // `c ^ (r % 8)`; an outer axis wider than 64 (k rows) continues
            // in column blocks of `tile_k` rows.
            let (ch, x) = (em.reg(Class::R), em.reg(Class::R));
            em.ins(format!("shr.u32 {ch}, {c0}, 3"));
            em.ins(format!("and.b32 {x}, {rw}, 7"));
            em.ins(format!("and.b32 {sh}, {ch}, 7"));
            em.ins(format!("xor.b32 {sh}, {sh}, {x}"));
            em.ins(format!("shl.b32 {sh}, {sh}, 4"));
            em.ins(format!("mad.lo.u32 {sh}, {rw}, 128, {sh}"));
            if op.storage == Storage::KOuter {
                em.ins(format!("shr.u32 {ch}, {ch}, 3"));
                em.ins(format!("mad.lo.u32 {sh}, {ch}, {}, {sh}", t.tile_k * 128));
            }
        } else {
            em.ins(format!("mul.lo.u32 {sh}, {rw}, {pitch}"));
            em.ins(format!("mad.lo.u32 {sh}, {c0}, 2, {sh}"));
        }
        // The slice row is the outer index (k contiguous) or k.
        let (o, kx) = match op.storage {
            Storage::OuterK => (rw, c0.clone()),
            Storage::KOuter => (c0.clone(), rw),
        };
        let (og, kg) = (em.reg(Class::D), em.reg(Class::D));
        em.ins(format!("cvt.u64.u32 {og}, {o}"));
        em.ins(format!("add.s64 {og}, {og}, {o0}"));
        em.ins(format!("cvt.u64.u32 {kg}, {kx}"));
        let po = em.reg(Class::P);
        em.ins(format!("setp.lt.s64 {po}, {og}, {outer_size}"));
        // Element offset: lead + row * row_stride + column.
        let (rowi, col) = match op.storage {
            Storage::OuterK => (og.clone(), kg.clone()),
            Storage::KOuter => (kg.clone(), og.clone()),
        };
        let el = em.reg(Class::D);
        em.ins(format!("mad.lo.s64 {el}, {rowi}, {row_stride}, {col}"));
        em.ins(format!("add.s64 {el}, {el}, {lead}"));
        let g = em.reg(Class::D);
        em.ins(format!("mad.lo.s64 {g}, {el}, {bytes}, {base}"));
        c.shared.push(sh);
        c.global.push(g);
        c.kidx.push(kg);
        c.outer_ok.push(po);
        c.outer.push(og);
    }
    c.step = match op.storage {
        Storage::OuterK => (t.tile_k * bytes).to_string(),
        Storage::KOuter => {
            let s = em.mul_op(&row_stride, &(t.tile_k * bytes).to_string());
            em.in_reg(&s)
        }
    };
    Ok(c)
}

/// Issues one step's copies of one operand into the stage at `stage`
/// (bytes from the shared base); then advances the copies to the next
/// step.
fn issue(
    em: &mut Em,
    t: &Tiling,
    c: &Copies,
    stage: &str,
    smem: &str,
    kext: &str,
) -> Result<(), PtxError> {
    let dst0 = em.reg(Class::R);
    em.ins(format!("add.u32 {dst0}, {smem}, {stage}"));
    if let (Some((_, ov, _)), Some((index, run))) = (&c.staged, &c.chunk) {
        // Runs of 8 consecutive `k`, 16 aligned bytes each: one copy per
        // run, from the address of its first element (zero-filled past
        // the operand).
        let input = match &c.staged {
            Some((Expr::Load { input, .. }, _, _)) => *input,
            _ => return Err(em.kerr("a staged run that is not a load")),
        };
        // Axes indexed by the run alone (a head's `k / 128`, `k % 128` of
        // a transposed attention output) are the same for every copy when
        // the copies share `k`: computed once per step.
        let by_outer: Vec<bool> = index
            .iter()
            .map(|ie| super::expr::free_vars(ie).contains(ov))
            .collect();
        let mut run_part = None;
        if c.same_k && by_outer.iter().any(|o| !o) {
            let rn = em.reg(Class::D);
            em.ins(format!("shr.s64 {rn}, {}, 3", c.kidx[0]));
            em.vars.insert(*run, rn);
            let zero = em.iconst(0);
            run_part = Some(index_terms(em, index, input, zero, |a| !by_outer[a])?);
        }
        for j in 0..c.shared.len() {
            let (pk, p) = (em.reg(Class::P), em.reg(Class::P));
            em.ins(format!("setp.lt.s64 {pk}, {}, {kext}", c.kidx[j]));
            em.ins(format!("and.pred {p}, {pk}, {}", c.outer_ok[j]));
            let rn = em.reg(Class::D);
            em.ins(format!("shr.s64 {rn}, {}, 3", c.kidx[j]));
            em.vars.insert(*ov, c.outer[j].clone());
            em.vars.insert(*run, rn);
            let start = run_part.clone().unwrap_or_else(|| em.iconst(0));
            let flat = index_terms(em, index, input, start, |a| {
                run_part.is_none() || by_outer[a]
            })?;
            let src = em.reg(Class::D);
            em.ins(format!("mad.lo.s64 {src}, {flat}, 2, {}", c.base));
            copy16(em, &p, &src, &c.base, &dst0, &c.shared[j], c.slice);
            em.ins(format!("add.s64 {0}, {0}, {1}", c.kidx[j], t.tile_k));
        }
        return Ok(());
    }
    if let Some((expr, ov, kv)) = &c.staged {
        // Eight consecutive `k` of one outer row per copy, each element
        // evaluated where it lies inside the operand (0 elsewhere), packed
        // in pairs and stored with one 16-byte store.
        let pack = match c.elem {
            DType::F16 => "f16x2",
            _ => "bf16x2",
        };
        // A copy whose outer index is inside the operand evaluates its
        // eight elements without branches (`k` clamped into the operand,
        // 0 past its end), so that their loads are in flight together; one
        // branch per copy bounds what is in flight (and the registers).
        let klast = minus_one(em, kext);
        for j in 0..c.shared.len() {
            let words: Vec<String> = (0..4).map(|_| em.reg(Class::R)).collect();
            for w in &words {
                em.ins(format!("mov.b32 {w}, 0"));
            }
            let skip = em.a.label("stage");
            em.ins(format!("@!{} bra {skip}", c.outer_ok[j]));
            let mut vals = Vec::new();
            for e in 0..8u32 {
                let (kk, pk) = (em.reg(Class::D), em.reg(Class::P));
                em.ins(format!("add.s64 {kk}, {}, {e}", c.kidx[j]));
                em.ins(format!("setp.lt.s64 {pk}, {kk}, {kext}"));
                let ki = em.reg(Class::D);
                em.ins(format!("min.s64 {ki}, {kk}, {klast}"));
                em.vars.insert(*ov, c.outer[j].clone());
                em.vars.insert(*kv, ki);
                // One element's shared sub-expressions (`x * s` of a
                // ReLU6) computed once.
                let outer_memo = em.memo.replace(Vec::new());
                let x = em.emit(expr);
                em.memo = outer_memo;
                let x = x?;
                let v = em.reg(Class::F);
                em.ins(format!("selp.f32 {v}, {}, 0f00000000, {pk}", x.r));
                vals.push(v);
            }
            for (w, p) in words.iter().zip(vals.chunks(2)) {
                em.ins(format!("cvt.rn.{pack}.f32 {w}, {}, {}", p[1], p[0]));
            }
            em.a.place(&skip);
            let dst = em.reg(Class::R);
            em.ins(format!("add.u32 {dst}, {dst0}, {}", c.shared[j]));
            em.ins(format!(
                "st.shared.v4.b32 [{dst}+{}], {{{}}}",
                c.slice,
                words.join(", ")
            ));
            em.ins(format!("add.s64 {0}, {0}, {1}", c.kidx[j], t.tile_k));
        }
        return Ok(());
    }
    for j in 0..c.shared.len() {
        let (pk, p) = (em.reg(Class::P), em.reg(Class::P));
        em.ins(format!("setp.lt.s64 {pk}, {}, {kext}", c.kidx[j]));
        em.ins(format!("and.pred {p}, {pk}, {}", c.outer_ok[j]));
        copy16(em, &p, &c.global[j], &c.base, &dst0, &c.shared[j], c.slice);
        em.ins(format!("add.s64 {0}, {0}, {1}", c.global[j], c.step));
        em.ins(format!("add.s64 {0}, {0}, {1}", c.kidx[j], t.tile_k));
    }
    Ok(())
}

/// `start` plus `index[a]` times input `input`'s stride of axis `a`, for
/// the axes `a` that `axes` selects: an element offset.
fn index_terms(
    em: &mut Em,
    index: &[Expr],
    input: usize,
    start: String,
    axes: impl Fn(usize) -> bool,
) -> Result<String, PtxError> {
    let mut flat = start;
    for (a, ie) in index.iter().enumerate() {
        if !axes(a) {
            continue;
        }
        let v = em.emit(ie)?;
        let stride = em.in_strides[input][a].clone();
        let term = em.mul_op(&v.r, &stride);
        let f = em.reg(Class::D);
        em.ins(format!("add.s64 {f}, {flat}, {term}"));
        flat = f;
    }
    Ok(flat)
}

/// `n - 1` for an extent `n` (an immediate or a register).
fn minus_one(em: &mut Em, n: &str) -> String {
    match super::expr::imm(n) {
        Some(v) => (v - 1).to_string(),
        None => {
            let r = em.reg(Class::D);
            em.ins(format!("add.s64 {r}, {n}, -1"));
            r
        }
    }
}

/// One 16-byte `cp.async` from global address `src` to shared address
/// `dst0 + offset + slice` where `p` holds; where it does not, the copy
/// reads nothing (its source pointed at `base`, in bounds) and zero-fills.
pub(super) fn copy16(
    em: &mut Em,
    p: &str,
    src: &str,
    base: &str,
    dst0: &str,
    offset: &str,
    slice: u32,
) {
    let (size, dst, from) = (em.reg(Class::R), em.reg(Class::R), em.reg(Class::D));
    em.ins(format!("selp.u32 {size}, 16, 0, {p}"));
    em.ins(format!("selp.b64 {from}, {src}, {base}, {p}"));
    em.ins(format!("add.u32 {dst}, {dst0}, {offset}"));
    em.ins(format!(
        "cp.async.cg.shared.global [{dst}+{slice}], [{from}], 16, {size}"
    ));
}

/// Stores 8 f32 values, rounded to `half` (bf16, else f16) in pairs, as
/// 16 bytes at shared address `addr` (`[reg]` or `[reg+offset]` text
/// inside the brackets): a thread's chunk of a computed operand tile.
pub(super) fn store_rounded16(em: &mut Em, vals: &[String], half: DType, addr: &str) {
    let pack = if half == DType::BF16 {
        "bf16x2"
    } else {
        "f16x2"
    };
    let words: Vec<String> = vals
        .chunks(2)
        .map(|p| {
            let w = em.reg(Class::R);
            em.ins(format!("cvt.rn.{pack}.f32 {w}, {}, {}", p[1], p[0]));
            w
        })
        .collect();
    em.ins(format!(
        "st.shared.v4.b32 [{addr}], {{{}}}",
        words.join(", ")
    ));
}

/// The element offset of an operand's batch indices `lead` in input
/// `input` (an immediate when they are constants).
pub(super) fn lead_offset(em: &mut Em, input: usize, lead: &[Expr]) -> Result<String, PtxError> {
    let mut off = "0".to_string();
    for (a, ix) in lead.iter().enumerate() {
        let v = em.emit(ix)?;
        let stride = em.in_strides[input][a].clone();
        let term = em.mul_op(&v.r, &stride);
        if let (Some(x), Some(y)) = (super::expr::imm(&off), super::expr::imm(&term)) {
            off = (x + y).to_string();
            continue;
        }
        let s = em.reg(Class::D);
        em.ins(format!("add.s64 {s}, {term}, {off}"));
        off = s;
    }
    Ok(off)
}

/// Moves a stage offset to the next stage, wrapping after the last.
fn advance_stage(em: &mut Em, t: &Tiling, stage: &str, sb: u32) {
    let p = em.reg(Class::P);
    em.ins(format!("add.u32 {stage}, {stage}, {sb}"));
    em.ins(format!("setp.ge.u32 {p}, {stage}, {}", t.stages * sb));
    em.ins(format!("@{p} mov.u32 {stage}, 0"));
}

/// One step's `mma`s on the stage at `stage`: per 16-deep half-step, the
/// warp's `b` fragments (its n8 blocks), then per m16 block its `a`
/// fragment and one `mma` per n8 block.
fn compute(em: &mut Em, plan: &MmaPlan, acc: &[String], a_lane: &str, b_lane: &str, stage: &str) {
    let t = plan.tiling;
    let ty = match plan.elem {
        DType::BF16 => "bf16",
        _ => "f16",
    };
    let trans = |s: Storage| match s {
        Storage::OuterK => "",
        Storage::KOuter => ".trans",
    };
    let pa = t.pitch(plan.a.storage, t.tile_m);
    let pb = t.pitch(plan.b.storage, t.tile_n);
    let (abase, bbase) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("add.u32 {abase}, {a_lane}, {stage}"));
    em.ins(format!("add.u32 {bbase}, {b_lane}, {stage}"));
    let nb = t.warp_n / 8;
    for kk in 0..t.tile_k / 16 {
        let mut bf = Vec::new();
        for nj in 0..t.warp_n / 16 {
            let regs: Vec<String> = (0..4).map(|_| em.reg(Class::R)).collect();
            em.ins(format!(
                "ldmatrix.sync.aligned.m8n8.x4{}.shared.b16 {{{}}}, [{bbase}+{}]",
                trans(plan.b.storage),
                regs.join(", "),
                fragment_offset(plan.b.storage, pb, nj, kk)
            ));
            bf.push(regs);
        }
        for mi in 0..t.warp_m / 16 {
            let af: Vec<String> = (0..4).map(|_| em.reg(Class::R)).collect();
            em.ins(format!(
                "ldmatrix.sync.aligned.m8n8.x4{}.shared.b16 {{{}}}, [{abase}+{}]",
                trans(plan.a.storage),
                af.join(", "),
                fragment_offset(plan.a.storage, pa, mi, kk)
            ));
            for ni in 0..nb {
                let b = &bf[(ni / 2) as usize];
                let (b0, b1) = (&b[(ni % 2 * 2) as usize], &b[(ni % 2 * 2 + 1) as usize]);
                let i = ((mi * nb + ni) * 4) as usize;
                let c = acc[i..i + 4].join(", ");
                let shape = if let Some(b) = plan.bytes {
                    b.mma().to_string()
                } else {
                    format!("m16n8k16.row.col.f32.{ty}.{ty}.f32")
                };
                em.ins(format!(
                    "mma.sync.aligned.{shape} {{{c}}}, {{{}}}, {{{b0}, {b1}}}, {{{c}}}",
                    af.join(", ")
                ));
            }
        }
    }
}

/// One step's warpgroup `mma`s on the stage at `stage`: each warp group
/// (warps `4g .. 4g+3`) multiplies its 64 rows of `a` by all of `b`, one
/// `wgmma.mma_async` per 16 of `k`, through shared-memory descriptors of
/// the 128-byte-swizzled slices; then commits them and waits until at most
/// `Tiling::wgmma_in_flight` groups are in flight.
/// The fields above the address of a `wgmma` shared-memory descriptor in
/// the 128-byte swizzle (mode 1, bits 62-63): 8-row groups 1024 bytes apart
/// (the stride byte offset, bits 32-45) and the leading byte offset `lbo`
/// (bits 16-29), both in 16-byte units.
pub(super) fn swizzle_fields(lbo: u64) -> u64 {
    (1u64 << 62) | ((1024 / 16) << 32) | (lbo << 16)
}

/// The descriptor of the matrix at shared address `addr` (a u32) with the
/// fields `hi` ([`swizzle_fields`]): the address in 16-byte units below.
pub(super) fn descriptor(em: &mut Em, addr: &str, hi: u64) -> String {
    let d = em.reg(Class::D);
    em.ins(format!("cvt.u64.u32 {d}, {addr}"));
    em.ins(format!("shr.u64 {d}, {d}, 4"));
    em.ins(format!("or.b64 {d}, {d}, {hi}"));
    d
}

fn compute_wgmma(em: &mut Em, plan: &MmaPlan, acc: &[String], warp: &str, smem: &str, stage: &str) {
    compute_wgmma_leaving(
        em,
        plan,
        acc,
        (warp, smem, stage),
        plan.tiling.wgmma_in_flight(),
    );
}

/// [`compute_wgmma`], leaving `in_flight` groups in flight.
fn compute_wgmma_leaving(
    em: &mut Em,
    plan: &MmaPlan,
    acc: &[String],
    (warp, smem, stage): (&str, &str, &str),
    in_flight: u32,
) {
    let t = plan.tiling;
    let ty = match plan.elem {
        DType::BF16 => "bf16",
        _ => "f16",
    };
    // Descriptor fields above the address: leading and stride byte offsets
    // (in 16-byte units) and the 128-byte swizzle mode. A k-contiguous
    // slice has 8-row groups 1024 bytes apart (its leading offset unused,
    // 1); an outer-contiguous one has its 64-wide column blocks `tile_k`
    // rows of 128 bytes apart and 8-row groups of `k` 1024 bytes apart.
    let fields = |s: Storage| -> (u64, u32) {
        let (lbo, step) = match s {
            Storage::OuterK => (1u64, 32),
            Storage::KOuter => (u64::from(t.tile_k) * 128 / 16, 16 * 128),
        };
        (swizzle_fields(lbo), step)
    };
    let (a_hi, a_step) = fields(plan.a.storage);
    let (b_hi, b_step) = fields(plan.b.storage);
    let desc = descriptor;
    // The warp group's 64 rows start 8 KiB into `a`'s slice in either
    // storage (64 rows of 128 bytes, or one 64-wide column block of 64
    // rows of `k`).
    let (wg, a_addr, b_addr) = (em.reg(Class::R), em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("shr.u32 {wg}, {warp}, 2"));
    em.ins(format!("add.u32 {a_addr}, {smem}, {stage}"));
    em.ins(format!("mad.lo.u32 {a_addr}, {wg}, 8192, {a_addr}"));
    em.ins(format!("add.u32 {b_addr}, {smem}, {stage}"));
    em.ins(format!("add.u32 {b_addr}, {b_addr}, {}", plan.a_bytes()));
    let da = desc(em, &a_addr, a_hi);
    let db = desc(em, &b_addr, b_hi);
    let trans = |s: Storage| match s {
        Storage::OuterK => 0,
        Storage::KOuter => 1,
    };
    let (ta, tb) = (trans(plan.a.storage), trans(plan.b.storage));
    let p = em.reg(Class::P);
    em.ins(format!("setp.eq.u32 {p}, 0, 0"));
    em.ins("wgmma.fence.sync.aligned");
    let regs = acc.join(", ");
    for kk in 0..t.tile_k / 16 {
        let (a, b) = (em.reg(Class::D), em.reg(Class::D));
        em.ins(format!("add.s64 {a}, {da}, {}", kk * a_step / 16));
        em.ins(format!("add.s64 {b}, {db}, {}", kk * b_step / 16));
        // 8-bit types: `k` 32 per instruction (the 16-bit view's 16), both
        // operands `k`-major, no transpose operands (no scales for s8).
        let n = t.tile_n;
        em.ins(match plan.bytes {
            None => format!(
                "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ty}.{ty} {{{regs}}}, {a}, {b}, {p}, \
                 1, 1, {ta}, {tb}"
            ),
            Some(Bytes::S8) => format!(
                "wgmma.mma_async.sync.aligned.m64n{n}k32.s32.s8.s8 {{{regs}}}, {a}, {b}, {p}"
            ),
            Some(Bytes::E4m3) => format!(
                "wgmma.mma_async.sync.aligned.m64n{n}k32.f32.e4m3.e4m3 {{{regs}}}, {a}, {b}, {p}, \
                 1, 1"
            ),
            Some(Bytes::E5m2) => format!(
                "wgmma.mma_async.sync.aligned.m64n{n}k32.f32.e5m2.e5m2 {{{regs}}}, {a}, {b}, {p}, \
                 1, 1"
            ),
        });
    }
    em.ins("wgmma.commit_group.sync.aligned");
    em.ins(format!("wgmma.wait_group.sync.aligned {in_flight}"));
}
