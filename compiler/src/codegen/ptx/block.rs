//! The fused inverted bottleneck (MobileNetV2): a 1x1 expansion, an
//! elementwise stage, a `kh x kw` depthwise convolution (stride 1, "same"
//! padding), an elementwise stage and a 1x1 projection with its epilogue,
//! in one kernel whose expanded tensor never leaves the multiprocessor
//! (`Target::conv_block`; the extraction's `conv-block` kernels).
//!
//! **The kernel's form.** The extraction writes the block as one map over
//! the output `[n, c, h, w]` whose value holds three nested sums:
//!
//! * `S2 = sum_j P2(D_j) * w2[c, j]` (the projection, `j` over the hidden
//!   channels), inside the output's epilogue (scale, residual, bias);
//! * `D_j = sum_{kh, kw} M1(E_j at h + kh - ph, w + kw - pw) * wdw[j, kh,
//!   kw]` (the depthwise sum), inside `P2` (scale, ReLU6);
//! * `E_j = sum_ci x[n, ci, ..] * w1[j, ci]` (the expansion), inside `M1`
//!   (scale, ReLU6, and the padding's select: zero outside the image).
//!
//! [`plan`] finds the three sums and the weights' loads; the rest of each
//! stage (`M1`, `P2`, the epilogue, the depthwise weight) is evaluated as
//! written, with the sum it contains taken from a register (the emitter's
//! memo holds the sum's expression with the computed value).
//!
//! **The work of a block.** A block of [`THREADS`] threads computes the
//! `TILE_H x TILE_W` output pixels of one image ([`Grid::Images`]), every
//! output channel:
//!
//! 1. it copies the input at the tile's halo (`TILE_H + kh - 1` by
//!    `TILE_W + kw - 1` pixels, every input channel) into shared memory,
//!    pixel-major (`xs`);
//! 2. the warps compute the expansion of the halo on tensor cores
//!    (`mma.sync.m16n8k16`, the halo's pixels as rows, the input channels
//!    as `k`, padded to 16 with zeros), apply `M1` and keep the result in
//!    shared memory rounded to bf16/f16 (`es`, pixel-major);
//! 3. each thread computes the depthwise sums of a pair of hidden channels
//!    down one column of the tile (a sliding window over the halo rows, f32
//!    sums in the evaluator's tap order), applies `P2` and keeps the result
//!    rounded to bf16/f16 (`ps`, pixel-major: the projection's `a`);
//! 4. the warps compute the projection on tensor cores (pixels as rows,
//!    hidden channels as `k`) and run the epilogue into the output.
//!
//! The two intermediate tensors are rounded to the 16-bit type as the
//! tensor cores need them (as when each stage is a kernel of its own and
//! writes them to memory); the evaluator keeps them in f32, which is why
//! tests compare with a bf16 tolerance.

use kiln_dialect::DType;
use kiln_dialect::kernel::{Binary, Body, Expr, Kernel, Reduction, Ty, Var};

use super::asm::Class;
use super::expr::{Em, Val, free_vars};
use super::mma::{Lanes, TileLoop, lanes};
use super::{Grid, PtxError};

/// Threads per block.
pub(super) const THREADS: u32 = 256;
const WARPS: u32 = THREADS / 32;
/// Output pixels per block: rows and columns.
pub(super) const TILE_H: u32 = 8;
pub(super) const TILE_W: u32 = 8;
/// Shared memory a block may take (bytes).
const MAX_SHARED: u32 = 96 * 1024;

/// A sum over nested variables: the variables with their extents,
/// outermost first, and the innermost body.
struct Chain {
    vars: Vec<(Var, i64)>,
    body: Expr,
}

/// `e` as a chain of sums over constant extents.
fn chain(e: &Expr) -> Option<Chain> {
    let mut vars = Vec::new();
    let mut cur = e;
    while let Expr::Reduce {
        op: Reduction::Sum,
        var,
        extent,
        body,
    } = cur
    {
        let Expr::Int(n) = **extent else {
            return None;
        };
        vars.push((*var, n));
        cur = body;
    }
    (!vars.is_empty()).then(|| Chain {
        vars,
        body: cur.clone(),
    })
}

/// The outermost reductions of `e`.
fn outer_reduces(e: &Expr, out: &mut Vec<Expr>) {
    if matches!(e, Expr::Reduce { .. }) {
        out.push(e.clone());
        return;
    }
    e.for_each_child(|c| outer_reduces(c, out));
}

/// The one reduction `e` holds (as often as it appears: a ReLU6 repeats
/// its argument).
fn the_reduce(e: &Expr) -> Option<Expr> {
    let mut all = Vec::new();
    outer_reduces(e, &mut all);
    let first = all.first()?.clone();
    all.iter().all(|x| *x == first).then_some(first)
}

/// `a * b` as (the factor `pick` accepts, the other).
fn factors(e: &Expr, pick: &dyn Fn(&Expr) -> bool) -> Option<(Expr, Expr)> {
    let Expr::Binary(Binary::Mul, a, b) = e else {
        return None;
    };
    if pick(b) {
        Some(((**b).clone(), (**a).clone()))
    } else if pick(a) {
        Some(((**a).clone(), (**b).clone()))
    } else {
        None
    }
}

/// The single variable of a chain with an extent above 1, the extent, and
/// the others (extent 1, bound to 0).
fn one_axis(c: &Chain) -> Option<(Var, i64, Vec<Var>)> {
    let big: Vec<&(Var, i64)> = c.vars.iter().filter(|(_, n)| *n > 1).collect();
    let &[&(v, n)] = big.as_slice() else {
        return None;
    };
    let rest = c.vars.iter().filter(|(_, n)| *n == 1).map(|(v, _)| *v);
    Some((v, n, rest.collect()))
}

/// Whether `e` is an unguarded load of a 16-bit float input of type
/// `half` at `[first, second, 0, ..]`.
fn weight_load(k: &Kernel, e: &Expr, first: Var, second: Var) -> bool {
    let Expr::Load {
        input,
        index,
        guard: None,
    } = e
    else {
        return false;
    };
    let half = matches!(k.inputs[*input].dtype, DType::BF16 | DType::F16);
    half && index.len() >= 2
        && index[0] == Expr::Var(first)
        && index[1] == Expr::Var(second)
        && index[2..].iter().all(|i| *i == Expr::Int(0))
}

/// `out + tap - pad` (clamps around it allowed): `pad`.
fn spatial_pad(e: &Expr, out: Var, tap: Var) -> Option<i64> {
    match e {
        Expr::Binary(Binary::Min | Binary::Max, a, b) => match (&**a, &**b) {
            (x, Expr::Int(_)) | (Expr::Int(_), x) => spatial_pad(x, out, tap),
            _ => None,
        },
        Expr::Binary(Binary::Sub, a, b) => match **b {
            Expr::Int(p) => (spatial_pad(a, out, tap)? == 0).then_some(p),
            _ => None,
        },
        Expr::Binary(Binary::Add, a, b) => {
            let pair = (&**a, &**b);
            let ok = pair == (&Expr::Var(out), &Expr::Var(tap))
                || pair == (&Expr::Var(tap), &Expr::Var(out));
            ok.then_some(0)
        }
        _ => None,
    }
}

/// How a kernel is a fused inverted bottleneck ([`plan`]).
pub(super) struct BlockPlan {
    /// The type of the input, the expansion and projection weights, and
    /// of the two intermediate tensors in shared memory.
    half: DType,
    /// Input channels, hidden channels, output channels; the image's rows
    /// and columns; the depthwise window and its padding (rows, columns).
    c_in: u32,
    hidden: u32,
    c_out: u32,
    height: u32,
    width: u32,
    window: (u32, u32),
    /// The output's expression and the projection sum inside it.
    out: Expr,
    s2: Expr,
    /// The hidden channel's variable and the variables bound to 0 (the
    /// sums of extent 1 and the window's taps where a stage is evaluated
    /// at a pixel).
    j: Var,
    zeros: Vec<Var>,
    /// The projection's other factor (`P2` of the depthwise sum) and the
    /// depthwise sum inside it.
    p2: Expr,
    d: Expr,
    /// The window's variables (rows, columns).
    taps: (Var, Var),
    /// The depthwise sum's data factor (`M1` of the expansion), its
    /// weight factor, and the expansion sum inside `M1`.
    m1: Expr,
    wdw: Expr,
    e: Expr,
    /// The expansion's input-channel variable, and the loads of the input
    /// and of the two tensor-core weights.
    ci: Var,
    x: Expr,
    w1: Expr,
    w2: Expr,
}

/// The plan of `k` if it is a fused inverted bottleneck this kernel
/// computes: a map over a static `[n, C, H, W]` output (f32 arithmetic) in
/// the form the module describes, the input and the two 1x1 weights bf16
/// or f16 alike, input channels and output channels multiples of 8 (at
/// most 64 and 256), hidden channels a multiple of 16 (at most 512), an
/// odd window at most 7 wide with "same" padding, stride 1.
pub(super) fn plan(k: &Kernel) -> Option<BlockPlan> {
    let Body::Map { expr } = &k.body else {
        return None;
    };
    let shape = &k.output.shape;
    if shape.rank() != 4 || k.float != Ty::F32 || k.output.dtype.bits() < 8 {
        return None;
    }
    let c_out = shape.0[1].as_static()?;
    let height = shape.0[2].as_static()?;
    let width = shape.0[3].as_static()?;
    let (vn, vc, vh, vw) = (Var(0), Var(1), Var(2), Var(3));
    // The projection.
    let s2 = the_reduce(expr)?;
    let proj = chain(&s2)?;
    let (j, hidden, mut zeros) = one_axis(&proj)?;
    let (w2, p2) = factors(&proj.body, &|e| weight_load(k, e, vc, j))?;
    // The depthwise sum.
    let d = the_reduce(&p2)?;
    let dw = chain(&d)?;
    let (m1, wdw) = factors(&dw.body, &|e| !super::has_reduce(e)).map(|(w, m)| (m, w))?;
    let taps: Vec<(Var, i64)> = dw.vars.iter().filter(|(_, n)| *n > 1).copied().collect();
    zeros.extend(dw.vars.iter().filter(|(_, n)| *n == 1).map(|(v, _)| *v));
    // The expansion.
    let e = the_reduce(&m1)?;
    let ex = chain(&e)?;
    let (ci, c_in, more) = one_axis(&ex)?;
    zeros.extend(more);
    let (w1, x) = factors(&ex.body, &|e| weight_load(k, e, j, ci))?;
    let Expr::Load {
        input: xi,
        index: xix,
        guard: None,
    } = &x
    else {
        return None;
    };
    if xix.len() != 4 || xix[1] != Expr::Var(ci) {
        return None;
    }
    let xdims = k.inputs[*xi].shape.as_static();
    // The window: the taps the input's row and column indices add.
    let find = |at: usize, out: Var| {
        taps.iter()
            .find_map(|&(t, n)| spatial_pad(&xix[at], out, t).map(|p| (t, n, p)))
    };
    let (th, kh, ph) = find(2, vh)?;
    let (tw, kw, pw) = find(3, vw)?;
    if taps.len() != 2 || th == tw {
        return None;
    }
    let same = kh % 2 == 1 && kw % 2 == 1 && ph == kh / 2 && pw == kw / 2 && kh <= 7 && kw <= 7;
    let half = k.inputs[*xi].dtype;
    let Expr::Load { input: i1, .. } = &w1 else {
        return None;
    };
    let Expr::Load { input: i2, .. } = &w2 else {
        return None;
    };
    let types = matches!(half, DType::BF16 | DType::F16)
        && k.inputs[*i1].dtype == half
        && k.inputs[*i2].dtype == half;
    let image = xdims.is_none_or(|d| d.len() == 4 && d[2] == height && d[3] == width)
        && k.inputs[*xi].shape.0[2].as_static() == Some(height)
        && k.inputs[*xi].shape.0[3].as_static() == Some(width);
    let sizes = c_in % 8 == 0
        && c_in <= 64
        && hidden % 16 == 0
        && hidden <= 512
        && c_out % 8 == 0
        && c_out <= 256;
    if !(same && types && image && sizes) {
        return None;
    }
    // Each stage reads only the variables it is evaluated with.
    let mut outer = vec![vn, vh, vw, j, th, tw];
    outer.extend(zeros.iter().copied());
    let only = |e: &Expr, inner: &Expr, allowed: &[Var]| {
        let outside = e.substitute(&|x| (x == inner).then_some(Expr::Float(0.0)));
        free_vars(&outside).iter().all(|v| allowed.contains(v)) && !super::has_reduce(&outside)
    };
    let ok = only(expr, &s2, &[vn, vc, vh, vw])
        && only(&p2, &d, &outer)
        && only(&m1, &e, &outer)
        && free_vars(&wdw)
            .iter()
            .all(|v| [j, th, tw].contains(v) || zeros.contains(v))
        && k.float == Ty::F32;
    if !ok {
        return None;
    }
    let plan = BlockPlan {
        half,
        c_in: c_in as u32,
        hidden: hidden as u32,
        c_out: c_out as u32,
        height: height as u32,
        width: width as u32,
        window: (kh as u32, kw as u32),
        out: expr.clone(),
        s2,
        j,
        zeros,
        p2,
        d,
        taps: (th, tw),
        m1,
        wdw,
        e,
        ci,
        x,
        w1,
        w2,
    };
    (plan.shared_bytes() <= MAX_SHARED).then_some(plan)
}

impl BlockPlan {
    /// Halo rows and columns, its pixels, and its pixels rounded up to
    /// tensor-core rows (16).
    fn halo(&self) -> (u32, u32, u32, u32) {
        let (hh, hw) = (TILE_H + self.window.0 - 1, TILE_W + self.window.1 - 1);
        (hh, hw, hh * hw, (hh * hw).div_ceil(16) * 16)
    }

    /// Input channels rounded up to a tensor-core `k` step (16).
    fn c_pad(&self) -> u32 {
        self.c_in.div_ceil(16) * 16
    }

    /// Row pitches (bytes) of the input copy and of the two intermediate
    /// tensors: 16 bytes past a multiple of 32, so that the rows of a
    /// fragment fall in different banks.
    fn pitches(&self) -> (u32, u32) {
        (self.c_pad() * 2 + 16, self.hidden * 2 + 16)
    }

    /// Offsets of `es` and `ps` in shared memory (`xs` at 0), and its size.
    fn layout(&self) -> (u32, u32, u32) {
        let (_, _, _, pm) = self.halo();
        let (xp, ep) = self.pitches();
        let es = pm * xp;
        let ps = es + pm * ep;
        (
            es,
            ps,
            self.weights_at() + self.hidden * self.window.0 * self.window.1 * 4,
        )
    }

    /// Offset of the depthwise weights in shared memory (f32, `[tap][j]`,
    /// computed once per block).
    fn weights_at(&self) -> u32 {
        let (_, _, _, pm) = self.halo();
        let (xp, ep) = self.pitches();
        pm * xp + pm * ep + TILE_H * TILE_W * ep
    }

    /// Dynamic shared memory per block (bytes).
    pub fn shared_bytes(&self) -> u32 {
        self.layout().2
    }

    /// Blocks per multiprocessor the kernel asks registers for: as many
    /// as the shared memory allows, at most 3 (80 registers a thread).
    pub fn blocks_per_sm(&self) -> u32 {
        (200 * 1024 / self.shared_bytes().max(1)).clamp(1, 3)
    }

    /// The launch grid: one block per tile of one image.
    pub fn grid(&self) -> Grid {
        Grid::Images {
            tile_h: TILE_H,
            tile_w: TILE_W,
        }
    }

    fn mma(&self) -> &'static str {
        if self.half == DType::BF16 {
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"
        } else {
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"
        }
    }

    fn pack(&self) -> &'static str {
        if self.half == DType::BF16 {
            "bf16x2"
        } else {
            "f16x2"
        }
    }
}

/// A loop over `start, start + step, ..` below `total` (u32): a thread's
/// or a warp's share of a phase's items.
struct Strided {
    top: String,
    done: String,
    step: u32,
    /// The current item (u32).
    i: String,
}

impl Strided {
    /// Opens the loop: the body that follows handles item `i`.
    fn open(em: &mut Em, name: &str, start: &str, total: u32, step: u32) -> Strided {
        let (top, done, i) = (
            em.a.label(name),
            em.a.label(&format!("{name}_done")),
            em.reg(Class::R),
        );
        em.ins(format!("mov.u32 {i}, {start}"));
        em.a.place(&top);
        let p = em.reg(Class::P);
        em.ins(format!("setp.ge.u32 {p}, {i}, {total}"));
        em.ins(format!("@{p} bra {done}"));
        Strided { top, done, step, i }
    }

    /// Closes the loop.
    fn close(self, em: &mut Em) {
        em.ins(format!("add.u32 {0}, {0}, {1}", self.i, self.step));
        em.ins(format!("bra.uni {}", self.top));
        em.a.place(&self.done);
    }
}

/// `acc += a * b` on the tensor cores (`mma.sync.m16n8k16`, f32 sums).
fn mma(em: &mut Em, p: &BlockPlan, acc: &[String], a: &[String], b: &[String]) {
    em.ins(format!(
        "{} {{{acc}}}, {{{a}}}, {{{b}}}, {{{acc}}}",
        p.mma(),
        acc = acc.join(", "),
        a = a.join(", "),
        b = b.join(", ")
    ));
}

/// Two f32 values rounded to the plan's 16-bit type, packed (`lo` in the
/// low half) into a new register.
fn pack2(em: &mut Em, p: &BlockPlan, lo: &str, hi: &str) -> String {
    let word = em.reg(Class::R);
    em.ins(format!("cvt.rn.{}.f32 {word}, {hi}, {lo}", p.pack()));
    word
}

/// A u32 register holding `x / d` and one holding `x % d` (`d` constant).
fn divmod(em: &mut Em, x: &str, d: u32) -> (String, String) {
    let (q, r) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("div.u32 {q}, {x}, {d}"));
    em.ins(format!("rem.u32 {r}, {x}, {d}"));
    (q, r)
}

/// `a + b` as an s64 register (`a` s64, `b` u32).
fn add64(em: &mut Em, a: &str, b: &str) -> String {
    let (w, s) = (em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("cvt.u64.u32 {w}, {b}"));
    em.ins(format!("add.s64 {s}, {a}, {w}"));
    s
}

/// The u32 register of `x` (u32).
fn wide(em: &mut Em, x: &str) -> String {
    let w = em.reg(Class::D);
    em.ins(format!("cvt.u64.u32 {w}, {x}"));
    w
}

/// The two f32 values of a packed pair of 16-bit floats (low half first).
fn unpack(em: &mut Em, half: DType, w: &str) -> [String; 2] {
    let (lo, hi) = (em.reg(Class::F), em.reg(Class::F));
    if half == DType::BF16 {
        em.ins(format!("shl.b32 {lo}, {w}, 16"));
        em.ins(format!("and.b32 {hi}, {w}, -65536"));
    } else {
        let (a, b) = (em.reg(Class::H), em.reg(Class::H));
        em.ins(format!("mov.b32 {{{a}, {b}}}, {w}"));
        em.ins(format!("cvt.f32.f16 {lo}, {a}"));
        em.ins(format!("cvt.f32.f16 {hi}, {b}"));
    }
    [lo, hi]
}

/// Evaluates `e` with `inner` (a sum `e` contains) taken from `value`.
fn eval_with(em: &mut Em, e: &Expr, inner: &Expr, value: &str) -> Result<String, PtxError> {
    em.memo = Some(vec![(
        inner.clone(),
        Val {
            r: value.to_string(),
            t: Ty::F32,
        },
    )]);
    let v = em.emit(e);
    em.memo = None;
    let v = v?;
    if v.t != Ty::F32 {
        return Err(em.kerr("a stage of the inverted bottleneck is not f32"));
    }
    Ok(v.r)
}

/// The address (u64) of element `load` of its input at the bound
/// variables.
fn address(em: &mut Em, load: &Expr) -> Result<String, PtxError> {
    let Expr::Load { input, index, .. } = load else {
        return Err(em.kerr("a weight of the inverted bottleneck is not a load"));
    };
    let flat = em.flat_index(load, *input, index)?;
    let addr = em.reg(Class::D);
    let base = em.in_ptr[*input].clone();
    let bytes = em.k.inputs[*input].dtype.bits() / 8;
    em.ins(format!("mad.lo.s64 {addr}, {flat}, {bytes}, {base}"));
    Ok(addr)
}

/// Writes the kernel (see the module documentation).
pub(super) fn emit(em: &mut Em, p: &BlockPlan, units: &str) -> Result<(), PtxError> {
    let (hh, hw, halo_px, halo_pm) = p.halo();
    let (xp, ep) = p.pitches();
    let (es_at, ps_at, _) = p.layout();
    let (kh, kw) = p.window;
    let (vn, vc, vh, vw) = (Var(0), Var(1), Var(2), Var(3));
    let Lanes {
        tid,
        lane,
        warp,
        g,
        t,
    } = lanes(em);
    let smem = em.reg(Class::R);
    em.ins(format!("mov.u32 {smem}, kiln_smem"));
    let (es, ps) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("add.u32 {es}, {smem}, {es_at}"));
    em.ins(format!("add.u32 {ps}, {smem}, {ps_at}"));
    // A lane's `ldmatrix.x4` row and column (elements) in a 16x16 tile.
    let (lrow, lcol) = (em.reg(Class::R), em.reg(Class::R));
    em.ins(format!("and.b32 {lrow}, {lane}, 15"));
    em.ins(format!("shr.u32 {lcol}, {lane}, 4"));
    em.ins(format!("shl.b32 {lcol}, {lcol}, 3"));
    let zero = em.reg(Class::D);
    em.ins(format!("mov.b64 {zero}, 0"));
    for v in &p.zeros {
        em.vars.insert(*v, zero.clone());
    }
    let (tiles_h, tiles_w) = (p.height.div_ceil(TILE_H), p.width.div_ceil(TILE_W));

    // The depthwise weights, evaluated once per block as f32 into shared
    // memory, `[tap][j]` (read after the first tile's barriers).
    let ws = em.reg(Class::R);
    em.ins(format!("add.u32 {ws}, {smem}, {}", p.weights_at()));
    {
        let items = Strided::open(em, "weights", &tid, p.hidden * kh * kw, THREADS);
        let item = items.i.clone();
        let (tap, jj) = divmod(em, &item, p.hidden);
        let (a, b) = divmod(em, &tap, kw);
        for (v, r) in [(p.j, &jj), (p.taps.0, &a), (p.taps.1, &b)] {
            let w = wide(em, r);
            em.vars.insert(v, w);
        }
        em.memo = Some(Vec::new());
        let v = em.emit(&p.wdw);
        em.memo = None;
        let v = v?;
        if v.t != Ty::F32 {
            return Err(em.kerr("a depthwise weight is not f32"));
        }
        let at = em.reg(Class::R);
        em.ins(format!("mad.lo.u32 {at}, {item}, 4, {ws}"));
        em.ins(format!("st.shared.f32 [{at}], {}", v.r));
        items.close(em);
    }

    let lp = TileLoop::start(em, units);
    // The tile: image `n`, rows `h0 ..`, columns `w0 ..`.
    let tile32 = em.reg(Class::R);
    em.ins(format!("cvt.u32.u64 {tile32}, {}", lp.tile));
    let (q, tx) = divmod(em, &tile32, tiles_w);
    let (n32, ty) = divmod(em, &q, tiles_h);
    let n = wide(em, &n32);
    let (h0, w0) = (em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("mul.wide.u32 {h0}, {ty}, {TILE_H}"));
    em.ins(format!("mul.wide.u32 {w0}, {tx}, {TILE_W}"));
    em.vars.insert(vn, n.clone());
    em.vars.insert(p.taps.0, zero.clone());
    em.vars.insert(p.taps.1, zero.clone());

    // 1. The input at the halo, pixel-major; channels past the input's
    // are zeros. Halo pixel (r, c) is image pixel (h0 - ph + r, w0 - pw +
    // c): the input's load at output pixel (h0 + r, w0 + c), taps 0.
    // Thread `t` copies pixel `t % PM` (the first `PM * groups` threads),
    // every `groups`-th channel from `t / PM`: its loads are issued
    // together, then stored.
    {
        let groups = THREADS / halo_pm;
        let (skip, pt) = (em.a.label("staged"), em.reg(Class::P));
        em.ins(format!("setp.ge.u32 {pt}, {tid}, {}", halo_pm * groups));
        em.ins(format!("@{pt} bra {skip}"));
        let (cg, px) = divmod(em, &tid, halo_pm);
        let pxc = em.reg(Class::R);
        em.ins(format!("min.u32 {pxc}, {px}, {}", halo_px - 1));
        let (r, col) = divmod(em, &pxc, hw);
        let hr = add64(em, &h0, &r);
        let wc = add64(em, &w0, &col);
        em.vars.insert(vh, hr);
        em.vars.insert(vw, wc);
        let cw = wide(em, &cg);
        em.vars.insert(p.ci, cw);
        let addr = address(em, &p.x)?;
        // The channel stride (elements) of the input.
        let Expr::Load { input: xi, .. } = &p.x else {
            return Err(em.kerr("the block's input is not a load"));
        };
        let stride = em.in_strides[*xi][1].clone();
        let step = em.reg(Class::D);
        em.ins(format!("mul.lo.s64 {step}, {stride}, {}", 2 * groups));
        let at = em.reg(Class::R);
        em.ins(format!("mad.lo.u32 {at}, {px}, {xp}, {smem}"));
        em.ins(format!("mad.lo.u32 {at}, {cg}, 2, {at}"));
        let mut codes = Vec::new();
        let mut ptr = addr;
        for k in 0..p.c_pad().div_ceil(groups) {
            // Channel cg + groups k: past the input for every thread, for
            // some (the last group), or for none.
            let (lo, hi) = (k * groups, k * groups + groups - 1);
            let code = em.reg(Class::H);
            if lo >= p.c_in {
                em.ins(format!("mov.b16 {code}, 0"));
            } else if hi >= p.c_in {
                let pc = em.reg(Class::P);
                em.ins(format!("mov.b16 {code}, 0"));
                em.ins(format!("setp.lt.u32 {pc}, {cg}, {}", p.c_in - lo));
                em.ins(format!("@{pc} ld.global.nc.b16 {code}, [{ptr}]"));
            } else {
                em.ins(format!("ld.global.nc.b16 {code}, [{ptr}]"));
            }
            if lo < p.c_in {
                let next = em.reg(Class::D);
                em.ins(format!("add.s64 {next}, {ptr}, {step}"));
                ptr = next;
            }
            codes.push(code);
        }
        for (k, code) in codes.iter().enumerate() {
            let pc = em.reg(Class::P);
            em.ins(format!(
                "setp.lt.u32 {pc}, {cg}, {}",
                p.c_pad() - k as u32 * groups
            ));
            em.ins(format!(
                "@{pc} st.shared.b16 [{at}+{}], {code}",
                k as u32 * groups * 2
            ));
        }
        em.a.place(&skip);
        em.ins("bar.sync 0");
    }

    // 2. The expansion on tensor cores, `M1` applied: units of one 16-row
    // block of halo pixels and a group of 8-column blocks of hidden
    // channels, dealt to the warps in turn; a unit's blocks unrolled (the
    // weight's addresses constant offsets from the lane's).
    {
        let blocks_n = p.hidden / 8;
        let per_unit = (1..=6)
            .rev()
            .find(|d| blocks_n.is_multiple_of(*d))
            .unwrap_or(1);
        let groups_n = blocks_n / per_unit;
        // The lane's `b` address at j = g, ci = 2 t.
        let (gw, tw2) = (wide(em, &g), em.reg(Class::R));
        em.ins(format!("shl.b32 {tw2}, {t}, 1"));
        let tw2w = wide(em, &tw2);
        em.vars.insert(p.j, gw);
        em.vars.insert(p.ci, tw2w);
        let wlane = address(em, &p.w1)?;
        let items = Strided::open(em, "expand", &warp, (halo_pm / 16) * groups_n, WARPS);
        let (mt, ng) = divmod(em, &items.i, groups_n);
        // `a`: the halo rows of the block from `xs`, every `k` step.
        let arow = em.reg(Class::R);
        em.ins(format!("mad.lo.u32 {arow}, {mt}, 16, {lrow}"));
        let abase = em.reg(Class::R);
        em.ins(format!("mad.lo.u32 {abase}, {arow}, {xp}, {smem}"));
        em.ins(format!("mad.lo.u32 {abase}, {lcol}, 2, {abase}"));
        let steps = p.c_pad() / 16;
        let afr: Vec<Vec<String>> = (0..steps)
            .map(|kk| {
                let a: Vec<String> = (0..4).map(|_| em.reg(Class::R)).collect();
                em.ins(format!(
                    "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{}}}, [{abase}+{}]",
                    a.join(", "),
                    kk * 32
                ));
                a
            })
            .collect();
        // The group's first hidden channel, and the weight's rows there.
        let (jg, wg) = (em.reg(Class::R), em.reg(Class::D));
        em.ins(format!("mul.lo.u32 {jg}, {ng}, {}", per_unit * 8));
        em.ins(format!("mad.wide.u32 {wg}, {jg}, {}, {wlane}", p.c_in * 2));
        // The halo pixels of the lane's two rows.
        let mut rows = Vec::new();
        for half in 0..2u32 {
            let px = em.reg(Class::R);
            em.ins(format!("mad.lo.u32 {px}, {mt}, 16, {g}"));
            if half == 1 {
                em.ins(format!("add.u32 {px}, {px}, 8"));
            }
            let pxc = em.reg(Class::R);
            em.ins(format!("min.u32 {pxc}, {px}, {}", halo_px - 1));
            let (r, col) = divmod(em, &pxc, hw);
            let hr = add64(em, &h0, &r);
            let wc = add64(em, &w0, &col);
            let (at, pin) = (em.reg(Class::R), em.reg(Class::P));
            em.ins(format!("setp.lt.u32 {pin}, {px}, {halo_px}"));
            em.ins(format!("mad.lo.u32 {at}, {px}, {ep}, {es}"));
            em.ins(format!("mad.lo.u32 {at}, {jg}, 2, {at}"));
            em.ins(format!("mad.lo.u32 {at}, {t}, 4, {at}"));
            rows.push((hr, wc, at, pin));
        }
        let mut accs = Vec::new();
        for nb in 0..per_unit {
            let acc: Vec<String> = (0..4).map(|_| em.reg(Class::F)).collect();
            for a in &acc {
                em.ins(format!("mov.f32 {a}, 0f00000000"));
            }
            for (kk, a) in afr.iter().enumerate() {
                let mut b = Vec::new();
                for h in 0..2u32 {
                    let ci0 = kk as u32 * 16 + h * 8;
                    let word = em.reg(Class::R);
                    if ci0 < p.c_in {
                        em.ins(format!(
                            "ld.global.nc.b32 {word}, [{wg}+{}]",
                            (nb * 8 * p.c_in + ci0) * 2
                        ));
                    } else {
                        em.ins(format!("mov.b32 {word}, 0"));
                    }
                    b.push(word);
                }
                mma(em, p, &acc, a, &b);
            }
            accs.push(acc);
        }
        // `M1` of each accumulator: halo pixel 16 mt + g (+ 8), hidden
        // channel jg + 8 nb + 2 t (+ 1); what does not read the channel
        // (the padding's select) once per pixel; a pair of channels per
        // store.
        let j0 = em.reg(Class::R);
        em.ins(format!("mad.lo.u32 {j0}, {t}, 2, {jg}"));
        em.col_var = Some(p.j);
        for (half, (hr, wc, at, pin)) in rows.iter().enumerate() {
            em.vars.insert(vh, hr.clone());
            em.vars.insert(vw, wc.clone());
            em.forget_row();
            for (nb, acc) in accs.iter().enumerate() {
                let mut vals = Vec::new();
                for e in 0..2u32 {
                    let jj = em.reg(Class::R);
                    em.ins(format!("add.u32 {jj}, {j0}, {}", nb as u32 * 8 + e));
                    let jw = wide(em, &jj);
                    em.vars.insert(p.j, jw);
                    vals.push(eval_with(em, &p.m1, &p.e, &acc[half * 2 + e as usize])?);
                }
                let word = pack2(em, p, &vals[0], &vals[1]);
                em.ins(format!("@{pin} st.shared.b32 [{at}+{}], {word}", nb * 16));
            }
        }
        em.col_var = None;
        em.forget_row();
        items.close(em);
        em.ins("bar.sync 0");
    }

    // 3. The depthwise sums, `P2` applied: a thread takes a pair of hidden
    // channels down one column of the tile (consecutive threads, adjacent
    // pairs of the same pixels).
    {
        let pairs = p.hidden / 2;
        let items = Strided::open(em, "depthwise", &tid, pairs * TILE_W, THREADS);
        let (ox, cp) = divmod(em, &items.i, pairs);
        let j0 = em.reg(Class::R);
        em.ins(format!("shl.b32 {j0}, {cp}, 1"));
        // The window's weights of both channels, from shared memory.
        let mut wts = vec![vec![String::new(); (kh * kw) as usize]; 2];
        let wat = em.reg(Class::R);
        em.ins(format!("mad.lo.u32 {wat}, {j0}, 4, {ws}"));
        for tap in 0..kh * kw {
            let (w0r, w1r) = (em.reg(Class::F), em.reg(Class::F));
            em.ins(format!(
                "ld.shared.v2.f32 {{{w0r}, {w1r}}}, [{wat}+{}]",
                tap * p.hidden * 4
            ));
            wts[0][tap as usize] = w0r;
            wts[1][tap as usize] = w1r;
        }
        em.vars.insert(p.taps.0, zero.clone());
        em.vars.insert(p.taps.1, zero.clone());
        // The column's sums, halo row by halo row (taps in the
        // evaluator's order for each output row).
        let acc: Vec<Vec<String>> = (0..TILE_H)
            .map(|_| (0..2).map(|_| em.reg(Class::F)).collect())
            .collect();
        let mut started = vec![false; TILE_H as usize];
        let col = em.reg(Class::R);
        em.ins(format!("mad.lo.u32 {col}, {ox}, {ep}, {es}"));
        em.ins(format!("mad.lo.u32 {col}, {cp}, 4, {col}"));
        for r in 0..hh {
            for b in 0..kw {
                let word = em.reg(Class::R);
                em.ins(format!(
                    "ld.shared.b32 {word}, [{col}+{}]",
                    (r * hw + b) * ep
                ));
                let v = unpack(em, p.half, &word);
                for o in r.saturating_sub(kh - 1)..=r.min(TILE_H - 1) {
                    let a = r - o;
                    for e in 0..2 {
                        let s = &acc[o as usize][e];
                        let w = &wts[e][(a * kw + b) as usize];
                        if started[o as usize] {
                            em.ins(format!("fma.rn.f32 {s}, {}, {w}, {s}", v[e]));
                        } else {
                            em.ins(format!("mul.rn.f32 {s}, {}, {w}", v[e]));
                        }
                    }
                    started[o as usize] = true;
                }
            }
        }
        // `P2` of each sum, channel by channel: what does not read the row
        // (the channel's scale) once per channel.
        let wc = add64(em, &w0, &ox);
        em.vars.insert(vw, wc);
        let rows: Vec<String> = (0..TILE_H)
            .map(|o| {
                let hr = em.reg(Class::D);
                em.ins(format!("add.s64 {hr}, {h0}, {o}"));
                hr
            })
            .collect();
        let mut vals = vec![vec![String::new(); 2]; TILE_H as usize];
        em.col_var = Some(vh);
        for e in 0..2 {
            let jj = em.reg(Class::R);
            em.ins(format!("add.u32 {jj}, {j0}, {e}"));
            let jw = wide(em, &jj);
            em.vars.insert(p.j, jw);
            em.forget_row();
            for (o, hr) in rows.iter().enumerate() {
                em.vars.insert(vh, hr.clone());
                vals[o][e] = eval_with(em, &p.p2, &p.d, &acc[o][e])?;
            }
        }
        em.col_var = None;
        em.forget_row();
        let at = em.reg(Class::R);
        em.ins(format!("mad.lo.u32 {at}, {ox}, {ep}, {ps}"));
        em.ins(format!("mad.lo.u32 {at}, {cp}, 4, {at}"));
        for (o, v) in vals.iter().enumerate() {
            let word = pack2(em, p, &v[0], &v[1]);
            em.ins(format!(
                "st.shared.b32 [{at}+{}], {word}",
                o as u32 * TILE_W * ep
            ));
        }
        items.close(em);
        em.ins("bar.sync 0");
    }

    // 4. The projection on tensor cores and the epilogue: units of one
    // 16-row block of the tile's pixels and one 8-column block of output
    // channels, dealt to the warps in turn.
    {
        let blocks_n = p.c_out / 8;
        let total = (TILE_H * TILE_W / 16) * blocks_n;
        let items = Strided::open(em, "project", &warp, total, WARPS);
        let (mt, nb) = divmod(em, &items.i, blocks_n);
        let acc: Vec<String> = (0..4).map(|_| em.reg(Class::F)).collect();
        for a in &acc {
            em.ins(format!("mov.f32 {a}, 0f00000000"));
        }
        let arow = em.reg(Class::R);
        em.ins(format!("mad.lo.u32 {arow}, {mt}, 16, {lrow}"));
        let abase = em.reg(Class::R);
        em.ins(format!("mad.lo.u32 {abase}, {arow}, {ep}, {ps}"));
        em.ins(format!("mad.lo.u32 {abase}, {lcol}, 2, {abase}"));
        // `b`: w2[c, j] at c = 8 nb + g, j = 16 kk + 2 t (+ 8).
        let cb = em.reg(Class::R);
        em.ins(format!("mad.lo.u32 {cb}, {nb}, 8, {g}"));
        let cw = wide(em, &cb);
        em.vars.insert(vc, cw);
        let jt = em.reg(Class::R);
        em.ins(format!("shl.b32 {jt}, {t}, 1"));
        let jw = wide(em, &jt);
        em.vars.insert(p.j, jw);
        let bbase = address(em, &p.w2)?;
        for kk in 0..p.hidden / 16 {
            let a: Vec<String> = (0..4).map(|_| em.reg(Class::R)).collect();
            em.ins(format!(
                "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{}}}, [{abase}+{}]",
                a.join(", "),
                kk * 32
            ));
            let b: Vec<String> = (0..2).map(|_| em.reg(Class::R)).collect();
            for (h, w) in b.iter().enumerate() {
                em.ins(format!(
                    "ld.global.nc.b32 {w}, [{bbase}+{}]",
                    (kk * 16 + h as u32 * 8) * 2
                ));
            }
            mma(em, p, &acc, &a, &b);
        }
        // The epilogue: pixel 16 mt + g (+ 8) of the tile, output channel
        // 8 nb + 2 t (+ 1); pixels past the image are not stored.
        let c0 = em.reg(Class::R);
        em.ins(format!("mad.lo.u32 {c0}, {nb}, 8, {jt}"));
        let out = em.k.output.dtype;
        let sty = match out.bits() {
            64 => "b64",
            32 => "b32",
            16 => "b16",
            _ => "u8",
        };
        for half in 0..2u32 {
            let px = em.reg(Class::R);
            em.ins(format!("mad.lo.u32 {px}, {mt}, 16, {g}"));
            if half == 1 {
                em.ins(format!("add.u32 {px}, {px}, 8"));
            }
            let (oy, ox) = divmod(em, &px, TILE_W);
            let (hr, wc) = (add64(em, &h0, &oy), add64(em, &w0, &ox));
            let (pin, pw) = (em.reg(Class::P), em.reg(Class::P));
            em.ins(format!("setp.lt.s64 {pin}, {hr}, {}", p.height));
            em.ins(format!("setp.lt.s64 {pw}, {wc}, {}", p.width));
            em.ins(format!("and.pred {pin}, {pin}, {pw}"));
            em.ins(format!("min.s64 {hr}, {hr}, {}", p.height - 1));
            em.ins(format!("min.s64 {wc}, {wc}, {}", p.width - 1));
            em.vars.insert(vh, hr.clone());
            em.vars.insert(vw, wc.clone());
            for e in 0..2u32 {
                let cc = em.reg(Class::R);
                em.ins(format!("add.u32 {cc}, {c0}, {e}"));
                let cw = wide(em, &cc);
                em.vars.insert(vc, cw.clone());
                let v = eval_with(em, &p.out, &p.s2, &acc[(half * 2 + e) as usize])?;
                let code = em.encode(&Val { r: v, t: Ty::F32 }, out);
                // ((n * C + c) * H + h) * W + w
                let flat = em.reg(Class::D);
                em.ins(format!("mad.lo.s64 {flat}, {n}, {}, {cw}", p.c_out));
                em.ins(format!("mad.lo.s64 {flat}, {flat}, {}, {hr}", p.height));
                em.ins(format!("mad.lo.s64 {flat}, {flat}, {}, {wc}", p.width));
                let addr = em.reg(Class::D);
                let outp = em.out_ptr.clone();
                em.ins(format!(
                    "mad.lo.s64 {addr}, {flat}, {}, {outp}",
                    out.bits() / 8
                ));
                em.ins(format!("@{pin} st.global.{sty} [{addr}], {}", code.r));
            }
        }
        items.close(em);
        // The next tile reuses the shared memory.
        em.ins("bar.sync 0");
    }
    for v in [vn, vc, vh, vw, p.j, p.ci, p.taps.0, p.taps.1]
        .into_iter()
        .chain(p.zeros.iter().copied())
    {
        em.vars.remove(&v);
    }
    lp.end(em);
    Ok(())
}
