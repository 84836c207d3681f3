//! Contractions with few output rows ([`Grid::Tiles`](kiln_runtime::cuda::kernel::Grid)
//! with `tile_m` the whole `m` axis): a decode step's projections, where
//! the weights are read once and the arithmetic is negligible, so the
//! kernel is a stream of the weight matrix at the memory's bandwidth.
//!
//! The path applies when the kernel computes in f32, the output's `m` axis
//! is static and at most [`MAX_ROWS`] long, its `n` axis is static, and
//! `b` is an unguarded load of a bf16 (or f16) tensor indexed
//! `[batch.., k, n]` whose rows are a static multiple of 8 elements (the
//! layout of `x @ w` for a weight `w: [k, n]`). `a` may be any expression
//! of the batch variables, `m` and `k` (a fused prologue such as
//! `silu(gate) * up`): it is evaluated once per `(m, k)` by the threads
//! that need it, not once per output element as the generic path does.
//!
//! A block of [`THREADS`] threads owns `tile_n` (16, 32 or 64) columns of
//! every row of one output matrix:
//!
//! * each thread owns `cols` (8, or 4 for more than 8 rows) consecutive
//!   columns and reads them with one 16-byte (8-byte) non-caching load per
//!   row of `b`; `tile_n / cols` lanes cover a row's slice, so a warp reads
//!   `32 / (tile_n / cols)` rows of `k` at once and the eight warps split
//!   `k` between them;
//! * the `k` loop is unrolled (8 steps for up to four rows, 4 for more,
//!   whose accumulators need the registers) with every load of an
//!   iteration issued before any arithmetic, so enough bytes are in flight to
//!   cover the memory's latency;
//! * with [`GemvTiling::stage_a`] (not yet the default: it has not run on
//!   a GPU), where `k`'s extent is static and `rows * k` values fit 64 KiB,
//!   `a` is computed once per tile into shared memory (each thread a share
//!   of `k`), so the loop reads it with one shared load per row and step
//!   instead of evaluating the prologue in every lane that needs it;
//! * the partial sums are combined within a warp with `shfl.sync.bfly`,
//!   then across warps through shared memory, and each output element goes
//!   through the epilogue once.
//!
//! `tile_n` is the widest whose blocks (for one matrix of the batch) still
//! fill [`FILL_BLOCKS`] multiprocessors, so narrow outputs trade longer
//! rows of contiguous bytes for more blocks in flight.

use kiln_dialect::DType;
use kiln_dialect::kernel::{Body, Expr, Kernel, Ty, Var};

use super::asm::Class;
use super::dtype_io::Code;
use super::elements::unravel;
use super::expr::{Em, Val};
use super::mma::{TileLoop, lead_offset, plain_load};
use super::{GemvTiling, PtxError};

/// The most output rows (`m`) the path takes.
pub const MAX_ROWS: u64 = 16;
/// Threads per block.
pub const THREADS: u32 = 256;
const WARPS: u32 = THREADS / 32;
/// Blocks the column tiles of one matrix should reach before a tile is
/// made wider: about the multiprocessors of an H100 or A100.
pub const FILL_BLOCKS: u64 = 128;
/// The most shared memory the staged values of `a` take.
pub const STAGE_BYTES: u64 = 64 * 1024;

/// A contraction the GEMV path compiles.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct GemvPlan {
    /// The output's rows (`m`) and columns (`n`).
    pub rows: u32,
    n: u64,
    /// Columns per thread and per block.
    cols: u32,
    pub tile_n: u32,
    /// Steps of the `k` loop whose loads are issued together.
    unroll: u32,
    /// `k`'s extent when `a` is computed once per tile into shared memory
    /// (a static extent whose values fit [`STAGE_BYTES`]).
    staged_k: Option<u32>,
    /// `b`'s streamed load: its input, batch indices and element type.
    b_input: usize,
    b_lead: Vec<Expr>,
    elem: DType,
    /// When `b` is not the streamed load itself (a dequantization).
    dequant: Option<Dequant>,
}

/// A `b` that computes each element from the streamed load of codes and
/// other loads at the same column (scales, zero points).
#[derive(Clone, Debug, PartialEq)]
struct Dequant {
    b: Expr,
    /// The streamed load's expression.
    stream: Expr,
    /// Loads whose last index is the column: read a thread's columns with
    /// one vector load per row of `k`: the expression, its input, index
    /// and element type.
    columns: Vec<(Expr, usize, Vec<Expr>, DType)>,
}

impl GemvPlan {
    /// Lanes that share one row of `b`'s slice.
    fn lanes_per_row(&self) -> u32 {
        self.tile_n / self.cols
    }

    /// Rows of `b` a warp reads at once.
    fn rows_per_warp(&self) -> u32 {
        32 / self.lanes_per_row()
    }

    /// Rows of `b` the block reads per step.
    fn k_per_step(&self) -> u32 {
        WARPS * self.rows_per_warp()
    }

    /// Shared memory for the warps' partial sums.
    fn partial_bytes(&self) -> u32 {
        WARPS * self.rows * self.tile_n * 4
    }

    /// Shared memory: the partial sums, then the staged values of `a`.
    pub fn shared_bytes(&self) -> u32 {
        self.partial_bytes() + self.staged_k.map_or(0, |k| self.rows * k * 4)
    }
}

/// The GEMV plan of `k`, when the path applies; `tiling` overrides the
/// choice of tile and unrolling (see [`GemvTiling`]); `dequant` lets `b`
/// be a dequantization (see [`super::PtxOptions::gemv_dequant`]). The same
/// on every architecture.
pub(super) fn plan(k: &Kernel, tiling: Option<GemvTiling>, dequant: bool) -> Option<GemvPlan> {
    if k.float != Ty::F32 {
        return None;
    }
    let Body::Contract {
        k: kv,
        extent,
        a,
        b,
        ..
    } = &k.body
    else {
        return None;
    };
    let r = k.output.shape.rank();
    if r < 2 || k.output.dtype.bits() < 8 {
        return None;
    }
    let rows = k.output.shape.0[r - 2].as_static()?;
    let n = k.output.shape.0[r - 1].as_static()?;
    if rows == 0 || rows > MAX_ROWS || n == 0 {
        return None;
    }
    let nv = Var(r as u32 - 1);
    let (b_input, index, deq) = match plain_load(k, b, r) {
        Some((input, index)) => (input, index.to_vec(), None),
        None if dequant && rows <= 8 => {
            let (d, input, index) = dequant_plan(k, b, *kv, nv, r)?;
            (input, index, Some(d))
        }
        None => return None,
    };
    let len = index.len();
    if index[len - 2] != Expr::Var(*kv) || index[len - 1] != Expr::Var(nv) {
        return None;
    }
    if Em::new(k).ty_of(a) != Ty::F32 {
        return None;
    }
    // The batch axes that are static: the tiles of one launch at least.
    let batch: u64 = k.output.shape.0[..r - 2]
        .iter()
        .map(|d| d.as_static().unwrap_or(1))
        .product();
    let cols = if rows <= 8 { 8 } else { 4 };
    let mut tile_n = [64u32, 32]
        .into_iter()
        .find(|&t| n.div_ceil(u64::from(t)) * batch >= FILL_BLOCKS)
        .unwrap_or(16);
    let mut unroll = if rows <= 4 { 8 } else { 4 };
    let mut stage_a = false;
    if let Some(t) = tiling {
        (tile_n, unroll, stage_a) = (t.tile_n, t.unroll, t.stage_a);
    }
    let staged_k = match extent {
        Expr::Int(x) if stage_a && *x > 0 && rows * (*x as u64) * 4 <= STAGE_BYTES => {
            Some(*x as u32)
        }
        _ => None,
    };
    Some(GemvPlan {
        rows: rows as u32,
        n,
        cols,
        tile_n,
        unroll,
        staged_k,
        b_input,
        b_lead: index[..len - 2].to_vec(),
        elem: k.inputs[b_input].dtype,
        dequant: deq,
    })
}

/// The loads of `e`.
fn loads(e: &Expr, out: &mut Vec<Expr>) {
    if matches!(e, Expr::Load { .. }) {
        out.push(e.clone());
        return;
    }
    e.for_each_child(|c| loads(c, out));
}

/// A dequantizing `b`: exactly one unguarded load of 4- or 8-bit codes at
/// `[batch.., k, n]` (rows a static multiple of 8), no reduction, an f32
/// value; the other loads at column `n` with 16-bit or narrower elements
/// become column loads.
fn dequant_plan(
    k: &Kernel,
    b: &Expr,
    kv: Var,
    nv: Var,
    r: usize,
) -> Option<(Dequant, usize, Vec<Expr>)> {
    if super::has_reduce(b) || Em::new(k).ty_of(b) != Ty::F32 {
        return None;
    }
    let mut all = Vec::new();
    loads(b, &mut all);
    let batch = |e: &Expr| {
        super::expr::free_vars(e)
            .iter()
            .all(|v| (v.0 as usize) < r.saturating_sub(2))
    };
    let row_of_8 = |input: usize| {
        k.inputs[input]
            .shape
            .0
            .last()
            .and_then(|d| d.as_static())
            .is_some_and(|n| n % 8 == 0)
    };
    let mut stream = None;
    let mut columns = Vec::new();
    for l in &all {
        let Expr::Load {
            input,
            index,
            guard: None,
        } = l
        else {
            continue;
        };
        let (input, n) = (*input, index.len());
        let d = k.inputs.get(input)?.dtype;
        if n < 2 && index.last() != Some(&Expr::Var(nv)) {
            continue;
        }
        let streamed = n >= 2
            && index[n - 2] == Expr::Var(kv)
            && index[n - 1] == Expr::Var(nv)
            && index[..n - 2].iter().all(batch)
            && matches!(d.bits(), 4 | 8)
            && row_of_8(input);
        if streamed {
            if stream.is_some() {
                return None;
            }
            stream = Some((l.clone(), input, index.clone()));
        } else if index.last() == Some(&Expr::Var(nv))
            && matches!(d.bits(), 8 | 16)
            && row_of_8(input)
            && !columns
                .iter()
                .any(|c: &(Expr, usize, Vec<Expr>, DType)| c.0 == *l)
        {
            columns.push((l.clone(), input, index.clone(), d));
        }
    }
    let (s, input, index) = stream?;
    Some((
        Dequant {
            b: b.clone(),
            stream: s,
            columns,
        },
        input,
        index,
    ))
}

/// Emits the tile loop of a GEMV.
pub(super) fn emit(
    em: &mut Em,
    plan: &GemvPlan,
    kv: Var,
    extent: &Expr,
    a: &Expr,
    epilogue: &Expr,
    units: &str,
) -> Result<(), PtxError> {
    let r = em.k.output.shape.rank();
    let (mv, nv) = (Var(r as u32 - 2), Var(r as u32 - 1));
    let kext = em.emit(extent)?;
    if kext.t != Ty::I64 {
        return Err(em.type_err(extent, "the extent is not an integer"));
    }
    let kext = em.in_reg(&kext.r);
    let (cols, lanes, tile_n) = (plan.cols, plan.lanes_per_row(), plan.tile_n);
    let bits = plan.elem.bits();
    // `b`'s row stride in bytes, and its last column a load may start at
    // (rows of 4-bit codes: a multiple of 8 codes, so whole bytes).
    let b = plan.b_input;
    let bn = em.in_shape[b].last().cloned().unwrap_or_default();
    let row_bytes = if bits >= 8 {
        let r = em.mul_op(&bn, &(bits / 8).to_string());
        em.in_reg(&r)
    } else {
        let row_bits = em.mul_op(&bn, &bits.to_string());
        let row_bits = em.in_reg(&row_bits);
        let r = em.reg(Class::D);
        em.ins(format!("shr.u64 {r}, {row_bits}, 3"));
        r
    };
    let bn = em.in_reg(&bn);
    let last_col = em.reg(Class::D);
    em.ins(format!("sub.s64 {last_col}, {bn}, {cols}"));

    // Thread coordinates: lane `l` of warp `w` owns columns
    // `(l % lanes) * cols ..` of the tile and reads rows `k` with
    // `k % k_per_step == w * rows_per_warp + l / lanes`.
    let (tid, lane, warp) = (em.reg(Class::R), em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("mov.u32 {tid}, %tid.x"));
    em.ins(format!("and.b32 {lane}, {tid}, 31"));
    em.ins(format!("shr.u32 {warp}, {tid}, 5"));
    let (cg, kr) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("and.b32 {cg}, {lane}, {}", lanes - 1));
    em.ins(format!("shr.u32 {kr}, {lane}, {}", lanes.trailing_zeros()));
    em.ins(format!(
        "mad.lo.u32 {kr}, {warp}, {}, {kr}",
        plan.rows_per_warp()
    ));
    let (col_off, k_first) = (em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("mul.wide.u32 {col_off}, {cg}, {cols}"));
    em.ins(format!("cvt.u64.u32 {k_first}, {kr}"));
    // The shared slot of this thread's partial sums: `[warp][m][col]`.
    let smem = em.reg(Class::R);
    em.ins(format!("mov.u32 {smem}, kiln_smem"));
    let slot = em.reg(Class::R);
    em.ins(format!("mul.lo.u32 {slot}, {cg}, {}", cols * 4));
    let wbase = em.reg(Class::R);
    em.ins(format!(
        "mul.lo.u32 {wbase}, {warp}, {}",
        plan.rows * tile_n * 4
    ));
    em.ins(format!("add.u32 {slot}, {slot}, {wbase}"));
    em.ins(format!("add.u32 {slot}, {slot}, {smem}"));
    // The rows, as registers to bind `m` to.
    let m_regs: Vec<String> = (0..plan.rows).map(|m| em.iconst(i64::from(m))).collect();
    let acc: Vec<Vec<String>> = (0..plan.rows)
        .map(|_| (0..cols).map(|_| em.reg(Class::F)).collect())
        .collect();

    let lp = TileLoop::start(em, units);
    let tile = lp.tile.clone();
    let tiles_n = plan.n.div_ceil(u64::from(tile_n));
    let (tn, bflat) = (em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("rem.u64 {tn}, {tile}, {tiles_n}"));
    em.ins(format!("div.u64 {bflat}, {tile}, {tiles_n}"));
    unravel(em, &bflat, r - 2);
    let n0 = em.reg(Class::D);
    em.ins(format!("mul.lo.s64 {n0}, {tn}, {tile_n}"));
    // The thread's first column, clamped so its load stays inside `b`'s
    // row (columns past the output are computed and not stored).
    let col = em.reg(Class::D);
    em.ins(format!("add.s64 {col}, {n0}, {col_off}"));
    em.ins(format!("min.s64 {col}, {col}, {last_col}"));
    let lead = lead_offset(em, b, &plan.b_lead)?;
    let bptr = em.reg(Class::D);
    em.ins(format!("add.s64 {bptr}, {lead}, {col}"));
    let base = em.in_ptr[b].clone();
    if bits >= 8 {
        em.ins(format!("mad.lo.s64 {bptr}, {bptr}, {}, {base}", bits / 8));
    } else {
        // element offsets are multiples of 8, so whole bytes
        em.ins(format!("mul.lo.s64 {bptr}, {bptr}, {bits}"));
        em.ins(format!("shr.u64 {bptr}, {bptr}, 3"));
        em.ins(format!("add.s64 {bptr}, {bptr}, {base}"));
    }
    for row in &acc {
        for x in row {
            em.ins(format!("mov.f32 {x}, 0f00000000"));
        }
    }
    // `a` once per tile: each thread computes every row at `k = tid, tid +
    // THREADS, ..` into `abuf[m][k]`.
    let mut abuf = String::new();
    if let Some(kn) = plan.staged_k {
        abuf = em.reg(Class::R);
        em.ins(format!("add.u32 {abuf}, {smem}, {}", plan.partial_bytes()));
        let (ks, top, end, p) = (
            em.reg(Class::D),
            em.a.label("stage"),
            em.a.label("stage_end"),
            em.reg(Class::P),
        );
        em.ins(format!("cvt.u64.u32 {ks}, {tid}"));
        em.a.place(&top);
        em.ins(format!("setp.ge.s64 {p}, {ks}, {kn}"));
        em.ins(format!("@{p} bra {end}"));
        let prev_k = em.bind(kv, ks.clone());
        let (k32, at) = (em.reg(Class::R), em.reg(Class::R));
        em.ins(format!("cvt.u32.u64 {k32}, {ks}"));
        em.ins(format!("mad.lo.u32 {at}, {k32}, 4, {abuf}"));
        for (m, mreg) in m_regs.iter().enumerate() {
            let prev_m = em.bind(mv, mreg.clone());
            em.memo = Some(Vec::new());
            let x = em.emit(a);
            em.memo = None;
            em.unbind(mv, prev_m);
            let x = x?;
            em.ins(format!(
                "st.shared.f32 [{at}+{}], {}",
                m as u32 * kn * 4,
                x.r
            ));
        }
        em.unbind(kv, prev_k);
        em.ins(format!("add.s64 {ks}, {ks}, {THREADS}"));
        em.ins(format!("bra.uni {top}"));
        em.a.place(&end);
        em.ins("bar.sync 0");
    }
    let kk = em.reg(Class::D);
    em.ins(format!("mov.b64 {kk}, {k_first}"));
    let kstep = u64::from(plan.k_per_step());

    // The unrolled loop: `unroll` steps while the last of them is inside
    // `k`, then single steps.
    for unroll in [plan.unroll, 1] {
        let (top, end) = (em.a.label("k"), em.a.label("k_end"));
        let (last, p) = (em.reg(Class::D), em.reg(Class::P));
        em.a.place(&top);
        em.ins(format!(
            "add.s64 {last}, {kk}, {}",
            u64::from(unroll - 1) * kstep
        ));
        em.ins(format!("setp.ge.s64 {p}, {last}, {kext}"));
        em.ins(format!("@{p} bra {end}"));
        let mut words = Vec::new();
        for u in 0..unroll {
            let (krow, addr) = (em.reg(Class::D), em.reg(Class::D));
            em.ins(format!("add.s64 {krow}, {kk}, {}", u64::from(u) * kstep));
            em.ins(format!("mad.lo.s64 {addr}, {krow}, {row_bytes}, {bptr}"));
            words.push(load_b(em, plan, &addr));
        }
        for (u, w) in words.iter().enumerate() {
            let krow = em.reg(Class::D);
            em.ins(format!("add.s64 {krow}, {kk}, {}", u as u64 * kstep));
            let bvals = match &plan.dequant {
                None => decode_b(em, plan.elem, w),
                Some(d) => {
                    let krow = em.reg(Class::D);
                    em.ins(format!("add.s64 {krow}, {kk}, {}", u as u64 * kstep));
                    dequantize_b(em, plan, d, kv, nv, &krow, &col, w)?
                }
            };
            // The staged values' address at this `k`.
            let at = plan.staged_k.map(|_| {
                let (k32, at) = (em.reg(Class::R), em.reg(Class::R));
                em.ins(format!("cvt.u32.u64 {k32}, {krow}"));
                em.ins(format!("mad.lo.u32 {at}, {k32}, 4, {abuf}"));
                at
            });
            let prev_k = em.bind(kv, krow);
            for (m, row) in acc.iter().enumerate() {
                let x = match (&at, plan.staged_k) {
                    (Some(at), Some(kn)) => {
                        let x = em.reg(Class::F);
                        em.ins(format!("ld.shared.f32 {x}, [{at}+{}]", m as u32 * kn * 4));
                        x
                    }
                    _ => {
                        let prev_m = em.bind(mv, m_regs[m].clone());
                        em.memo = Some(Vec::new());
                        let x = em.emit(a);
                        em.memo = None;
                        em.unbind(mv, prev_m);
                        x?.r
                    }
                };
                for (c, bv) in row.iter().zip(&bvals) {
                    em.ins(format!("fma.rn.f32 {c}, {x}, {bv}, {c}"));
                }
            }
            em.unbind(kv, prev_k);
        }
        em.ins(format!("add.s64 {kk}, {kk}, {}", u64::from(unroll) * kstep));
        em.ins(format!("bra.uni {top}"));
        em.a.place(&end);
    }

    // Within a warp: the lanes of one column group hold the sums of
    // different rows of `k`.
    let mut off = lanes;
    while off < 32 {
        for x in acc.iter().flatten() {
            let t = em.reg(Class::F);
            em.ins(format!("shfl.sync.bfly.b32 {t}, {x}, {off}, 31, -1"));
            em.ins(format!("add.f32 {x}, {x}, {t}"));
        }
        off *= 2;
    }
    // Lanes of the first row group write the warp's sums.
    let (pw, skip) = (em.reg(Class::P), em.a.label("partial"));
    em.ins(format!("setp.ge.u32 {pw}, {lane}, {lanes}"));
    em.ins(format!("@{pw} bra {skip}"));
    for (m, row) in acc.iter().enumerate() {
        for (c, x) in row.iter().enumerate() {
            let at = (m as u32 * tile_n + c as u32) * 4;
            em.ins(format!("st.shared.f32 [{slot}+{at}], {x}"));
        }
    }
    em.a.place(&skip);
    em.ins("bar.sync 0");

    // Each output element: the warps' sums, the epilogue, the store.
    let elems = plan.rows * tile_n;
    let n_dim = plan.n;
    for j in 0..elems.div_ceil(THREADS) {
        let next = em.a.label("out");
        let e = em.reg(Class::R);
        em.ins(format!("add.u32 {e}, {tid}, {}", j * THREADS));
        if (j + 1) * THREADS > elems {
            let p = em.reg(Class::P);
            em.ins(format!("setp.ge.u32 {p}, {e}, {elems}"));
            em.ins(format!("@{p} bra {next}"));
        }
        let (m32, c32) = (em.reg(Class::R), em.reg(Class::R));
        em.ins(format!("shr.u32 {m32}, {e}, {}", tile_n.trailing_zeros()));
        em.ins(format!("and.b32 {c32}, {e}, {}", tile_n - 1));
        let (m, n) = (em.reg(Class::D), em.reg(Class::D));
        em.ins(format!("cvt.u64.u32 {m}, {m32}"));
        em.ins(format!("cvt.u64.u32 {n}, {c32}"));
        em.ins(format!("add.s64 {n}, {n}, {n0}"));
        let p = em.reg(Class::P);
        em.ins(format!("setp.ge.s64 {p}, {n}, {n_dim}"));
        em.ins(format!("@{p} bra {next}"));
        let at = em.reg(Class::R);
        em.ins(format!("mad.lo.u32 {at}, {e}, 4, {smem}"));
        let sum = em.reg(Class::F);
        em.ins(format!("ld.shared.f32 {sum}, [{at}]"));
        for w in 1..WARPS {
            let t = em.reg(Class::F);
            em.ins(format!(
                "ld.shared.f32 {t}, [{at}+{}]",
                w * plan.rows * tile_n * 4
            ));
            em.ins(format!("add.f32 {sum}, {sum}, {t}"));
        }
        let prev_m = em.bind(mv, m.clone());
        let prev_n = em.bind(nv, n.clone());
        em.acc = Some(Val { r: sum, t: Ty::F32 });
        let v = em.emit(epilogue);
        em.acc = None;
        em.unbind(nv, prev_n);
        em.unbind(mv, prev_m);
        let out = em.k.output.dtype;
        let code = em.encode(&v?, out);
        let flat = em.reg(Class::D);
        em.ins(format!("mad.lo.s64 {flat}, {bflat}, {}, {m}", plan.rows));
        em.ins(format!("mad.lo.s64 {flat}, {flat}, {n_dim}, {n}"));
        em.store_code(out, &flat, &code);
        em.a.place(&next);
    }
    // The next tile's partial sums reuse the shared memory.
    em.ins("bar.sync 0");
    lp.end(em);
    Ok(())
}

/// One thread's `cols` elements of a row of `b` at `addr`: a vector load
/// that does not allocate in L1 (each byte is read once), as 32-bit words.
fn load_b(em: &mut Em, plan: &GemvPlan, addr: &str) -> Vec<String> {
    let n = (plan.cols * plan.elem.bits() / 32) as usize;
    vector_words(em, n, addr, "ld.global.nc.L1::no_allocate")
}

/// `n` (1, 2 or 4) 32-bit words at `addr` with one load instruction `ld`.
fn vector_words(em: &mut Em, n: usize, addr: &str, ld: &str) -> Vec<String> {
    let words: Vec<String> = (0..n).map(|_| em.reg(Class::R)).collect();
    if n == 1 {
        em.ins(format!("{ld}.b32 {}, [{addr}]", words[0]));
    } else {
        em.ins(format!("{ld}.v{n}.b32 {{{}}}, [{addr}]", words.join(", ")));
    }
    words
}

/// Code `c` of `cols` consecutive `bits`-wide codes held in `words`
/// (least significant first).
fn code_in(em: &mut Em, words: &[String], bits: u32, c: u32) -> Code {
    let per = 32 / bits;
    let w = &words[(c / per) as usize];
    if bits == 16 {
        let (lo, hi) = (em.reg(Class::H), em.reg(Class::H));
        em.ins(format!("mov.b32 {{{lo}, {hi}}}, {w}"));
        return Code {
            r: if c.is_multiple_of(2) { lo } else { hi },
            w: 16,
        };
    }
    let r = em.reg(Class::R);
    em.ins(format!("shr.u32 {r}, {w}, {}", (c % per) * bits));
    em.ins(format!("and.b32 {r}, {r}, {}", (1u32 << bits) - 1));
    Code { r, w: 8 }
}

/// The f32 values of `b` at the thread's `cols` columns of row `krow`: the
/// codes come from the streamed `words`, each column load's values from one
/// vector load at the row, and `b` is evaluated per column with those codes
/// in place of its loads.
#[allow(clippy::too_many_arguments)]
fn dequantize_b(
    em: &mut Em,
    plan: &GemvPlan,
    d: &Dequant,
    kv: Var,
    nv: Var,
    krow: &str,
    col: &str,
    words: &[String],
) -> Result<Vec<String>, PtxError> {
    let prev_k = em.bind(kv, krow.to_string());
    let prev_n = em.bind(nv, col.to_string());
    let mut column_words = Vec::new();
    for (e, input, index, dt) in &d.columns {
        let flat = em.flat_index(e, *input, index)?;
        let addr = em.reg(Class::D);
        let base = em.in_ptr[*input].clone();
        em.ins(format!(
            "mad.lo.s64 {addr}, {flat}, {}, {base}",
            dt.bits() / 8
        ));
        let n = (plan.cols * dt.bits() / 32) as usize;
        column_words.push(vector_words(em, n, &addr, "ld.global.nc"));
    }
    let mut out = Vec::new();
    for c in 0..plan.cols {
        let n = em.reg(Class::D);
        em.ins(format!("add.s64 {n}, {col}, {c}"));
        em.bind(nv, n);
        let mut table = vec![(d.stream.clone(), code_in(em, words, plan.elem.bits(), c))];
        for ((e, _, _, dt), w) in d.columns.iter().zip(&column_words) {
            table.push((e.clone(), code_in(em, w, dt.bits(), c)));
        }
        em.col_codes = table;
        em.memo = Some(Vec::new());
        let v = em.emit(&d.b);
        em.memo = None;
        em.col_codes.clear();
        out.push(v?.r);
    }
    em.unbind(nv, prev_n);
    em.unbind(kv, prev_k);
    Ok(out)
}

/// The f32 values of the bf16 or f16 pairs in `words`, in element order.
fn decode_b(em: &mut Em, elem: DType, words: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for w in words {
        let (lo, hi) = (em.reg(Class::F), em.reg(Class::F));
        if elem == DType::BF16 {
            let (l, h) = (em.reg(Class::R), em.reg(Class::R));
            em.ins(format!("shl.b32 {l}, {w}, 16"));
            em.ins(format!("and.b32 {h}, {w}, -65536"));
            em.ins(format!("mov.b32 {lo}, {l}"));
            em.ins(format!("mov.b32 {hi}, {h}"));
        } else {
            let (l, h) = (em.reg(Class::H), em.reg(Class::H));
            em.ins(format!("mov.b32 {{{l}, {h}}}, {w}"));
            em.ins(format!("cvt.f32.f16 {lo}, {l}"));
            em.ins(format!("cvt.f32.f16 {hi}, {h}"));
        }
        out.push(lo);
        out.push(hi);
    }
    out
}
