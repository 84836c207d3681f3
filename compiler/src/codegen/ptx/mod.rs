//! The PTX backend: each kernel of the kernel dialect becomes one PTX
//! module with one `.entry`, launched by the CUDA executor as
//! `kiln_runtime::cuda::kernel` specifies (parameter order, work units,
//! grid-stride loops, [`Grid`]).
//!
//! The kinds of kernels:
//!
//! * element maps ([`Grid::Elements`]): a thread computes a run of
//!   consecutive output elements; reductions inside run sequentially in the
//!   thread (`elements.rs`);
//! * row maps ([`Grid::Rows`] with one inner axis): a map with reductions
//!   that do not depend on the output's last variable (softmax, norms,
//!   keepdim reductions over the last axis): one block per row, the
//!   reductions computed cooperatively (`rows.rs`); byte-sized and wider
//!   outputs only (a sub-byte row may share bytes with the next row);
//! * contractions with at most 16 output rows over a bf16/f16 weight
//!   ([`Grid::Tiles`], `gemv.rs`): a stream of the weight at the memory's
//!   bandwidth, `k` split across the block's warps, any prologue on `a`;
//! * tensor-core contractions ([`Grid::Tiles`]): bf16/f16 operands loaded
//!   as they are, one 128x128 output tile per block on `mma.sync` with a
//!   `cp.async` pipeline and the epilogue fused (`mma.rs`);
//! * other contractions ([`Grid::Elements`]): one thread per output
//!   element (per run), an in-order loop over `k` and the epilogue;
//! * fused inverted bottlenecks ([`Grid::Images`], `block.rs`): a 1x1
//!   expansion, a depthwise convolution and a 1x1 projection per tile of
//!   pixels, the expanded tensor kept in shared memory, both 1x1 stages on
//!   tensor cores.
//!
//! Loads decode every storage type as the reference evaluator does and
//! stores encode with round-to-nearest-even (`dtype_io.rs`); transcendental
//! functions are inline approximations in f32 (`math.rs`); f64 kernels use
//! f64 arithmetic, with `exp`, `log`, `tanh`, `erf`, `sin`, `cos` and `pow`
//! by range reduction and series (`math64.rs`).

mod asm;
mod attention;
mod block;
mod dtype_io;
mod elements;
mod expr;
mod gemv;
mod math;
mod math64;
mod mma;
mod ops;
mod qmma;
mod rows;
mod splits;

use std::fmt::Write;

use kiln_dialect::kernel::{Body, Kernel, Program};
pub use kiln_runtime::cuda::kernel::{Grid, PtxKernel};
pub use mma::{Splits as MmaSplits, Tiling as MmaTiling, parse_tiling as parse_mma_tiling};
pub use qmma::Balance as QmmaBalance;
use thiserror::Error;

use asm::Class;
use expr::Em;

/// Threads per block of element-grid kernels.
pub const ELEMENT_BLOCK: u32 = 256;

/// The GPU architecture a module is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PtxArch {
    /// Hopper with its architecture-specific features (`sm_90a`).
    Sm90a,
    /// Ampere (`sm_80`).
    Sm80,
}

impl PtxArch {
    /// The `.target` name.
    pub fn target(self) -> &'static str {
        match self {
            PtxArch::Sm90a => "sm_90a",
            PtxArch::Sm80 => "sm_80",
        }
    }
}

/// The tile order's group of row tiles on by default (`KILN_MMA_GROUP`,
/// `0` turns it off): on the H100 (2026-12-06 11:53 UTC, kiln bench
/// medians of 50) W3 0.4932 -> 0.4869 ms, GEMM 4096^3 0.2153 -> 0.2133 ms,
/// W2 0.2566 -> 0.2579 ms (within the run-to-run spread).
pub const DEFAULT_MMA_GROUP: u32 = 8;

/// Choices of the backend that are not yet the default: each was written
/// and assembled without a GPU at hand, and becomes the default once a GPU
/// run has checked it against the evaluator and measured it. The
/// environment sets them for the whole process ([`PtxOptions::from_env`]);
/// tests pass them explicitly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PtxOptions {
    /// A `select` whose sides read memory the condition does not becomes a
    /// branch, so only the chosen side runs (`KILN_PTX_BRANCH_SELECTS=1`).
    pub branch_selects: bool,
    /// Element maps walk their largest input read in runs in its own
    /// order when it is laid out otherwise than the output
    /// (`elements::walk_order`; `KILN_PTX_WALK=1`): written 2026-12-06
    /// for W3's key rotation, checked on the interpreter, not yet timed.
    pub walk_inputs: bool,
    /// The GEMV path's tiling (`KILN_GEMV_TILING=TILE_N,UNROLL[,stage]`).
    pub gemv: Option<GemvTiling>,
    /// The GEMV path also takes a `b` that dequantizes 4- or 8-bit codes
    /// stored `[k, n]`, reading the codes (and its scales) a thread's
    /// columns at a time (`KILN_GEMV_DEQUANT=1`).
    pub gemv_dequant: bool,
    /// How row kernels hold the row-invariant operands and how many blocks
    /// each multiprocessor should hold (`KILN_ROW_TUNING=BLOCKS[,reload]`);
    /// `None`: chosen per kernel (`rows::auto_tuning`).
    pub rows: Option<RowTuning>,
    /// How the int4 fragment kernel evens its tiles out over the
    /// multiprocessors ([`QmmaBalance`]; from the environment: `auto`
    /// unless `KILN_QMMA_SPLITS=S`; `1` or `None`, the `Default`, which
    /// tests use for the unbalanced kernels: one block per tile).
    pub qmma_splits: Option<QmmaBalance>,
    /// Split-K for the tensor-core contractions: `auto` from the
    /// environment unless `KILN_MMA_SPLITS` says `S` (1: off; checked and
    /// timed on the H100, 2026-12-05); `None` (the `Default`, which tests
    /// use for the unsplit kernels): one block per tile.
    pub mma_splits: Option<MmaSplits>,
    /// The tensor-core contractions' tiling (`KILN_MMA_TILING`: a name or
    /// `MxNxK,WMxWN,STAGES,BLOCKS`, see [`parse_mma_tiling`]), in place of
    /// the per-shape default.
    pub mma_tiling: Option<MmaTiling>,
    /// Warpgroup contractions of plain 16-bit operands take their slices
    /// by tensor copies (`cp.async.bulk.tensor` from a tensor map per
    /// operand, an mbarrier per stage) instead of every thread's
    /// `cp.async` (`KILN_MMA_TMA=1`).
    pub mma_tma: bool,
    /// Warpgroup contractions fed by tensor copies take a ninth warp
    /// that only copies (`MmaPlan::specialized`, `KILN_MMA_WS=1`; implies
    /// tensor copies where they apply).
    pub mma_specialize: bool,
    /// The order of the tensor-core contractions' tiles
    /// (`KILN_MMA_GROUP=G`): 0 or 1, column tile fastest (a wave of
    /// blocks reads a few row bands of `a` and all of `b`); `G`, groups of
    /// `G` row tiles taken row tile fastest, column by column (a wave
    /// reads `G` row bands and a few column bands of `b`). From the
    /// environment: [`DEFAULT_MMA_GROUP`] unless the variable says
    /// otherwise; the `Default` is 0.
    pub mma_group: u32,
    /// Contractions whose staged epilogue is a gated product (a matrix
    /// load and a transcendental function: SwiGLU) take 128x128
    /// warpgroup tiles, two blocks per multiprocessor, on sm_90a
    /// (`mma::gated_epilogue`; from the environment: on unless
    /// `KILN_MMA_HEAVY=0`; the `Default` is off).
    pub mma_heavy_tiling: bool,
    /// Fused attention on sm_90a with warp groups (`wgmma`, 128 queries a
    /// block) where it applies (see `attention::Plan::use_warpgroups`)
    /// instead of `mma.sync`: 0, off; otherwise the keys a step, 64 or 128
    /// (from the environment: 128 unless `KILN_ATTN_WGMMA` is `0` (off),
    /// `1` or `64` (64); the `Default` is off).
    pub attention_wgmma: u32,
    /// Register epilogues of tensor-core contractions into 16-bit outputs
    /// store whole tiles through shared memory in 16-byte chunks
    /// (`mma::store_tile_coalesced`; from the environment: on unless
    /// `KILN_MMA_COALESCED=0`; the `Default` is off).
    pub mma_coalesced_stores: bool,
    /// Staged epilogues with one load at the element's own place (a
    /// residual, a gate) store whole tiles of 16-bit outputs chunk by chunk
    /// (`mma::store_staged_chunks`; from the environment: on unless
    /// `KILN_MMA_CHUNKS=0`, checked and timed on the H100 2026-12-06
    /// 17:18; the `Default` is off).
    pub mma_staged_chunks: bool,
}

/// A row kernel's tuning: `.minnctapersm` (0: unstated, ptxas takes the
/// registers it wants) and whether the loads that do not depend on the row
/// (a norm's weights) are issued again for every row (L1 hits) instead of
/// being held in registers across the block's rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowTuning {
    pub min_blocks: u32,
    pub reload_fixed: bool,
}

impl RowTuning {
    /// `BLOCKS` or `BLOCKS,reload` (BLOCKS 0 to 8).
    pub fn parse(s: &str) -> Option<RowTuning> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let min_blocks: u32 = parts.first()?.parse().ok()?;
        let reload_fixed = match parts.get(1) {
            None => false,
            Some(&"reload") => true,
            Some(_) => return None,
        };
        (min_blocks <= 8 && parts.len() <= 2).then_some(RowTuning {
            min_blocks,
            reload_fixed,
        })
    }
}

/// A GEMV tiling: columns per block (16, 32 or 64), steps of `k` per
/// unrolled iteration (1 to 32), and whether `a` is computed once per tile
/// into shared memory where it fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvTiling {
    pub tile_n: u32,
    pub unroll: u32,
    pub stage_a: bool,
}

impl PtxOptions {
    /// The options the environment asks for (unset or unparsable: off).
    pub fn from_env() -> PtxOptions {
        let branch_selects = std::env::var("KILN_PTX_BRANCH_SELECTS").is_ok_and(|v| v == "1");
        let walk_inputs = std::env::var("KILN_PTX_WALK").is_ok_and(|v| v == "1");
        let gemv = std::env::var("KILN_GEMV_TILING")
            .ok()
            .and_then(|s| GemvTiling::parse(&s));
        let gemv_dequant = std::env::var("KILN_GEMV_DEQUANT").is_ok_and(|v| v == "1");
        let rows = std::env::var("KILN_ROW_TUNING")
            .ok()
            .and_then(|s| RowTuning::parse(&s));
        // Balanced int4 grids are on (`auto`, timed on the H100,
        // 2026-12-06 17:32: W4 at m = 1 0.0178 -> 0.0146 ms) unless
        // `KILN_QMMA_SPLITS` says `S` (1: off).
        let qmma_splits = match std::env::var("KILN_QMMA_SPLITS") {
            Ok(s) => QmmaBalance::parse(&s),
            Err(_) => Some(QmmaBalance::Auto),
        };
        // Split-K is on (`auto`) unless the environment says otherwise
        // (`KILN_MMA_SPLITS=1` turns it off).
        let mma_splits = match std::env::var("KILN_MMA_SPLITS") {
            Ok(s) => mma::Splits::parse(&s),
            Err(_) => Some(mma::Splits::Auto),
        };
        let mma_tiling = std::env::var("KILN_MMA_TILING")
            .ok()
            .and_then(|s| parse_mma_tiling(&s));
        let mma_tma = std::env::var("KILN_MMA_TMA").is_ok_and(|v| v == "1");
        let mma_specialize = std::env::var("KILN_MMA_WS").is_ok_and(|v| v == "1");
        let mma_heavy_tiling = std::env::var("KILN_MMA_HEAVY").map_or(true, |v| v.trim() != "0");
        let mma_group = std::env::var("KILN_MMA_GROUP")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|g| *g <= 64)
            .unwrap_or(DEFAULT_MMA_GROUP);
        // Warpgroup attention with 128 keys a step is the default (timed
        // on the H200, 2026-12-06: ATTN 0.0753 -> 0.0601 ms);
        // `KILN_ATTN_WGMMA=0` keeps `mma.sync`, `1` or `64` takes 64 keys.
        let attention_wgmma = match std::env::var("KILN_ATTN_WGMMA").as_deref().map(str::trim) {
            Ok("0") => 0,
            Ok("1" | "64") => 64,
            _ => 128,
        };
        let mma_coalesced_stores =
            std::env::var("KILN_MMA_COALESCED").map_or(true, |v| v.trim() != "0");
        let mma_staged_chunks = std::env::var("KILN_MMA_CHUNKS").map_or(true, |v| v.trim() != "0");
        PtxOptions {
            branch_selects,
            walk_inputs,
            gemv,
            gemv_dequant,
            rows,
            qmma_splits,
            mma_splits,
            mma_tiling,
            mma_tma,
            mma_specialize,
            mma_group,
            mma_heavy_tiling,
            attention_wgmma,
            mma_coalesced_stores,
            mma_staged_chunks,
        }
    }
}

impl GemvTiling {
    /// `TILE_N,UNROLL` or `TILE_N,UNROLL,stage`.
    pub fn parse(s: &str) -> Option<GemvTiling> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let (tile_n, unroll) = (parts.first()?.parse().ok()?, parts.get(1)?.parse().ok()?);
        let stage_a = match parts.get(2) {
            None => false,
            Some(&"stage") => true,
            Some(_) => return None,
        };
        let ok = [16, 32, 64].contains(&tile_n) && (1..=32).contains(&unroll) && parts.len() <= 3;
        ok.then_some(GemvTiling {
            tile_n,
            unroll,
            stage_a,
        })
    }
}

/// Why a kernel could not be compiled to PTX.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PtxError {
    /// An ill-typed expression (which the evaluator would reject too).
    #[error("kernel `{kernel}`: type error in `{expr}`: {message}")]
    Type {
        kernel: String,
        expr: String,
        message: String,
    },
    /// A form this backend does not compile (every form of the dialect
    /// compiles today; kept for targets and forms to come).
    #[error("kernel `{kernel}`: unsupported `{expr}`: {message}")]
    Unsupported {
        kernel: String,
        expr: String,
        message: String,
    },
    /// A shape or dim the kernel does not declare.
    #[error("kernel `{kernel}`: {message}")]
    Kernel { kernel: String, message: String },
}

/// 64-bit FNV-1a of `s`.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The kind of kernel `k` compiles to, with the row reductions of a row
/// kernel.
fn classify(k: &Kernel, opts: &PtxOptions) -> (&'static str, Vec<kiln_dialect::kernel::Expr>) {
    match &k.body {
        Body::Contract { .. } if qmma::plan(k).is_some() => ("qmma", Vec::new()),
        Body::Contract { .. } if gemv::plan(k, None, opts.gemv_dequant).is_some() => {
            ("gemv", Vec::new())
        }
        Body::Contract { .. } if mma::plan(k, PtxArch::Sm80, None).is_some() => ("mma", Vec::new()),
        Body::Contract { .. } => ("contract", Vec::new()),
        Body::Attention(_) if attention::plan(k, PtxArch::Sm80).is_some() => {
            ("attention", Vec::new())
        }
        Body::Attention(_) => classify(&k.attention_as_map(), opts),
        Body::Map { .. } if block::plan(k).is_some() => ("block", Vec::new()),
        Body::Map { expr } => {
            if k.output.dtype.bits() < 8 {
                return ("map", Vec::new());
            }
            let reds = rows::row_reductions(expr, k.output.shape.rank());
            if reds.is_empty() {
                ("map", Vec::new())
            } else {
                ("row", reds)
            }
        }
    }
}

/// Whether `e` contains a reduction.
pub(super) fn has_reduce(e: &kiln_dialect::kernel::Expr) -> bool {
    if matches!(e, kiln_dialect::kernel::Expr::Reduce { .. }) {
        return true;
    }
    let mut any = false;
    e.for_each_child(|c| any |= has_reduce(c));
    any
}

/// The deterministic entry name of `k`: `{kind}_{dtype}_{hash}`, the hash
/// an FNV-1a of the kernel's printed form.
pub fn entry_name(k: &Kernel) -> String {
    if matches!(k.body, Body::Attention(_)) && attention::plan(k, PtxArch::Sm80).is_none() {
        return entry_name(&k.attention_as_map());
    }
    if let Some((view, bytes)) = mma::byte_view(k, PtxArch::Sm90a) {
        return format!(
            "{}_{}_{:016x}",
            bytes.kind(),
            view.output.dtype.name(),
            fnv1a(&view.to_string())
        );
    }
    let (kind, _) = classify(k, &PtxOptions::from_env());
    format!(
        "{kind}_{}_{:016x}",
        k.output.dtype.name(),
        fnv1a(&k.to_string())
    )
}

/// Compiles one kernel to a PTX module, with the options the environment
/// sets ([`PtxOptions::from_env`]).
pub fn compile_kernel(k: &Kernel, arch: PtxArch) -> Result<PtxKernel, PtxError> {
    compile_kernel_with(k, arch, &PtxOptions::from_env())
}

/// Compiles one kernel to a PTX module with the given options.
pub fn compile_kernel_with(
    k: &Kernel,
    arch: PtxArch,
    opts: &PtxOptions,
) -> Result<PtxKernel, PtxError> {
    if matches!(k.body, Body::Attention(_)) && attention::plan(k, arch).is_none() {
        return compile_kernel_with(&k.attention_as_map(), arch, opts);
    }
    // A contraction of 8-bit elements compiles as its bf16 view
    // (`mma::byte_view`).
    let view = mma::byte_view(k, arch);
    let bytes = view.as_ref().map(|v| v.1);
    let k = view.as_ref().map_or(k, |v| &v.0);
    let (kind, reds) = match bytes {
        Some(b) => (b.kind(), Vec::new()),
        None => classify(k, opts),
    };
    let entry = format!(
        "{kind}_{}_{:016x}",
        k.output.dtype.name(),
        fnv1a(&k.to_string())
    );
    let mut em = Em::new(k);
    em.branch_selects = opts.branch_selects;
    em.walk_inputs = opts.walk_inputs;
    // Parameters.
    for i in 0..k.inputs.len() {
        let (p, g) = (em.reg(Class::D), em.reg(Class::D));
        em.ins(format!("ld.param.u64 {p}, [p_in{i}]"));
        em.ins(format!("cvta.to.global.u64 {g}, {p}"));
        em.in_ptr.push(g);
    }
    let (p, g) = (em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("ld.param.u64 {p}, [p_out]"));
    em.ins(format!("cvta.to.global.u64 {g}, {p}"));
    em.out_ptr = g;
    for i in 0..k.dims.len() {
        let d = em.reg(Class::D);
        em.ins(format!("ld.param.s64 {d}, [p_dim{i}]"));
        em.dims.push(d);
    }
    let units = em.reg(Class::D);
    em.ins(format!("ld.param.s64 {units}, [p_units]"));
    for b in &k.inputs {
        let shape = b
            .shape
            .0
            .iter()
            .map(|d| em.dim_operand(d))
            .collect::<Result<Vec<_>, _>>()?;
        let strides = em.strides_of(&shape);
        em.in_shape.push(shape);
        em.in_strides.push(strides);
    }
    em.out_shape = k
        .output
        .shape
        .0
        .iter()
        .map(|d| em.dim_operand(d))
        .collect::<Result<Vec<_>, _>>()?;

    let mut shared_bytes = 0;
    let mut tensor_maps = Vec::new();
    // `.maxntid` and `.minnctapersm` for the kernels that state them.
    let mut blocks_per_sm = None;
    let (block, grid, shared) = match &k.body {
        Body::Map { .. } if kind == "block" => {
            let plan = block::plan(k).ok_or_else(|| em.kerr("the block plan vanished"))?;
            block::emit(&mut em, &plan, &units)?;
            shared_bytes = plan.shared_bytes();
            blocks_per_sm = Some(plan.blocks_per_sm());
            (block::THREADS, plan.grid(), false)
        }
        Body::Map { expr } if kind == "row" => {
            let min_blocks = rows::emit_rows(&mut em, expr, &reds, &units, opts.rows)?;
            if min_blocks > 0 {
                blocks_per_sm = Some(min_blocks);
            }
            (rows::ROW_BLOCK, Grid::Rows { inner_axes: 1 }, true)
        }
        Body::Map { expr } => {
            let p = if has_reduce(expr) {
                elements::min_per_thread(k.output.dtype.bits())
            } else {
                elements::per_thread(k.output.dtype.bits())
            };
            let mut ids = Vec::new();
            elements::identity_inputs(&em, expr, false, &mut ids);
            let mut runs = Vec::new();
            elements::run_loads(&em, expr, p, false, &mut runs);
            elements::emit_elements(&mut em, p, &units, &ids, &runs, Some(expr), |em| {
                em.emit(expr)
            })?;
            (ELEMENT_BLOCK, Grid::Elements { per_thread: p }, false)
        }
        Body::Contract {
            k: kv, epilogue, ..
        } if kind == "qmma" => {
            let mut plan =
                qmma::plan(k).ok_or_else(|| em.kerr("the dequantizing plan vanished"))?;
            // the tiles past the whole waves split (`QmmaPlan::splits`)
            match opts.qmma_splits {
                None => {}
                Some(QmmaBalance::Auto) => plan.splits = qmma::auto_splits(k, &plan),
                Some(QmmaBalance::Fixed { splits, sms }) => {
                    plan.splits = splits.clamp(1, plan.max_splits());
                    plan.sms = sms.max(1);
                }
            }
            qmma::emit(&mut em, &plan, *kv, epilogue, &units)?;
            shared_bytes = plan.shared_bytes();
            blocks_per_sm = Some(plan.blocks_per_sm());
            let grid = if plan.splits > 1 {
                Grid::BalancedTiles {
                    tile_m: qmma::TILE_M,
                    tile_n: qmma::TILE_N,
                    splits: plan.splits,
                    scratch: plan.scratch_per_unit(),
                    sms: plan.sms,
                }
            } else {
                Grid::Tiles {
                    tile_m: qmma::TILE_M,
                    tile_n: qmma::TILE_N,
                }
            };
            (qmma::THREADS, grid, false)
        }
        Body::Contract {
            k: kv,
            extent,
            a,
            epilogue,
            ..
        } if kind == "gemv" => {
            let plan = gemv::plan(k, opts.gemv, opts.gemv_dequant)
                .ok_or_else(|| em.kerr("the GEMV plan vanished"))?;
            gemv::emit(&mut em, &plan, *kv, extent, a, epilogue, &units)?;
            shared_bytes = plan.shared_bytes();
            let grid = Grid::Tiles {
                tile_m: plan.rows,
                tile_n: plan.tile_n,
            };
            (gemv::THREADS, grid, false)
        }
        Body::Contract {
            extent, epilogue, ..
        } if kind == "mma" || bytes.is_some() => {
            let mut plan = mma::plan(k, arch, opts.mma_tiling)
                .ok_or_else(|| em.kerr("the tensor-core plan vanished"))?;
            // A gated product's staged epilogue (SwiGLU) takes 128x128
            // warpgroup tiles, two blocks per multiprocessor.
            if opts.mma_heavy_tiling
                && opts.mma_tiling.is_none()
                && plan.stage_out
                && arch == PtxArch::Sm90a
                && mma::gated_epilogue(k, epilogue)
                && let Some(p) = mma::plan(k, arch, Some(mma::Tiling::NARROW_WG2))
            {
                plan = p;
            }
            plan.bytes = bytes;
            // fp8 `mma.sync` tiles (`KILN_MMA_TILING`) need more registers
            // than the 128 of two blocks per multiprocessor (ptxas 13.0
            // spilled 60 bytes there).
            let fp8 = matches!(bytes, Some(mma::Bytes::E4m3 | mma::Bytes::E5m2));
            if fp8 && !plan.tiling.wgmma {
                plan.tiling.blocks_per_sm = 1;
            }
            plan.splits = match opts.mma_splits {
                None => 1,
                Some(mma::Splits::Auto) => mma::auto_splits(k, &plan.tiling, extent),
                Some(mma::Splits::Fixed(s)) => s,
            };
            plan.specialized = opts.mma_specialize && plan.can_specialize();
            plan.tma = (opts.mma_tma || plan.specialized) && plan.can_tma();
            plan.group = opts.mma_group;
            plan.coalesce_out = opts.mma_coalesced_stores && plan.can_coalesce(k.output.dtype);
            plan.chunk_staged = opts.mma_staged_chunks;
            tensor_maps = plan.tensor_maps();
            mma::emit(&mut em, &plan, extent, epilogue, &units)?;
            shared_bytes = plan.shared_bytes();
            blocks_per_sm = Some(plan.tiling.blocks_per_sm);
            let grid = if plan.splits > 1 {
                Grid::SplitTiles {
                    tile_m: plan.tiling.tile_m,
                    tile_n: plan.tiling.tile_n,
                    splits: plan.splits,
                    scratch: plan.scratch_per_unit(),
                }
            } else {
                Grid::Tiles {
                    tile_m: plan.tiling.tile_m,
                    tile_n: plan.tiling.tile_n,
                }
            };
            (plan.threads(), grid, false)
        }
        Body::Attention(t) => {
            let mut plan =
                attention::plan(k, arch).ok_or_else(|| em.kerr("the attention plan vanished"))?;
            if opts.attention_wgmma > 0 {
                plan.use_warpgroups(arch, opts.attention_wgmma);
            }
            attention::emit(&mut em, &plan, t, &units)?;
            shared_bytes = plan.shared_bytes();
            blocks_per_sm = Some(1);
            (plan.threads(), plan.grid(), false)
        }
        Body::Contract {
            k: kv,
            extent,
            a,
            b,
            epilogue,
        } => {
            let p = elements::min_per_thread(k.output.dtype.bits());
            elements::emit_elements(&mut em, p, &units, &[], &[], None, |em| {
                rows::contract_value(em, *kv, extent, a, b, epilogue)
            })?;
            (ELEMENT_BLOCK, Grid::Elements { per_thread: p }, false)
        }
    };

    let mut ptx = String::new();
    let _ = writeln!(ptx, "// kiln kernel `{}`", k.name);
    // fp8 `mma` needs PTX ISA 8.4; everything else 8.0.
    let fp8 = matches!(bytes, Some(mma::Bytes::E4m3 | mma::Bytes::E5m2));
    let _ = writeln!(ptx, ".version {}", if fp8 { "8.4" } else { "8.0" });
    let _ = writeln!(ptx, ".target {}", arch.target());
    let _ = writeln!(ptx, ".address_size 64\n");
    if shared_bytes > 0 {
        let _ = writeln!(ptx, ".extern .shared .align 128 .b8 kiln_smem[];\n");
    }
    let _ = writeln!(ptx, ".visible .entry {entry}(");
    let mut params: Vec<String> = (0..k.inputs.len())
        .map(|i| format!("\t.param .u64 p_in{i}"))
        .collect();
    params.push("\t.param .u64 p_out".into());
    params.extend((0..k.dims.len()).map(|i| format!("\t.param .s64 p_dim{i}")));
    params.push("\t.param .s64 p_units".into());
    if matches!(grid, Grid::SplitTiles { .. } | Grid::BalancedTiles { .. }) {
        params.push("\t.param .u64 p_scratch".into());
    }
    if !tensor_maps.is_empty() {
        params.push("\t.param .u64 p_tmaps".into());
    }
    let _ = writeln!(ptx, "{}\n)", params.join(",\n"));
    if let Some(b) = blocks_per_sm {
        let _ = writeln!(ptx, ".maxntid {block}, 1, 1\n.minnctapersm {b}");
    }
    // No `.maxntid`: with it ptxas caps registers at 64 and spills
    // (row kernels assume exactly `block` threads, as the executor launches).
    let _ = writeln!(ptx, "{{");
    if shared {
        let _ = writeln!(ptx, "\t.shared .align 8 .b8 kiln_red[{}];", rows::RED_BYTES);
    }
    ptx.push_str(&em.a.finish());
    ptx.push_str("}\n");
    Ok(PtxKernel {
        entry,
        ptx,
        arch: arch.target().to_string(),
        block,
        grid,
        shared_bytes,
        tensor_maps,
    })
}

/// Compiles every launch of `p`, in launch order (one module per launch).
pub fn compile_program(p: &Program, arch: PtxArch) -> Result<Vec<PtxKernel>, PtxError> {
    let opts = PtxOptions::from_env();
    p.launches
        .iter()
        .map(|l| compile_kernel_with(&l.kernel, arch, &opts))
        .collect()
}
