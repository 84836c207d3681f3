//! The element grid ([`Grid::Elements`](kiln_runtime::cuda::kernel::Grid)):
//! each thread computes `per_thread` consecutive output elements (one run),
//! walking runs with a grid-stride loop. A full run of a byte-sized or wider
//! output is stored with vector stores; inputs read at the output's own
//! index (same shape) are loaded with vector loads for a full run. The
//! last, partial run of the output uses scalar accesses.

use kiln_dialect::kernel::simplify::{self, at_lane};
use kiln_dialect::kernel::{Binary, Expr, Var, max_var};

use super::PtxError;
use super::asm::Class;
use super::dtype_io::{Code, code_class, code_width};
use super::expr::{Em, Preload, Val, free_vars, imm, is_identity};

/// Elements per thread for an output of `bits` per element: 16 bytes (at
/// most 8 elements) for byte-sized and wider types, 8 for sub-byte types
/// (whole bytes: 8 elements of 3, 4 or 6 bits are 3, 4 or 6 bytes).
pub(super) fn per_thread(bits: u32) -> u32 {
    if bits >= 8 { (128 / bits).min(8) } else { 8 }
}

/// The fewest elements per thread for an output of `bits` per element:
/// one, or whole bytes of a sub-byte type. Kernels whose elements loop
/// (reductions, contractions) use it: unrolling their runs buys nothing
/// and costs registers.
pub(super) fn min_per_thread(bits: u32) -> u32 {
    if bits >= 8 { 1 } else { 8 }
}

/// The inputs that `e` reads at exactly the output's index, unguarded and
/// not under a reduction that rebinds an output variable.
pub(super) fn identity_inputs(em: &Em, e: &Expr, shadow: bool, out: &mut Vec<usize>) {
    match e {
        Expr::Load {
            input,
            index,
            guard: None,
        } if !shadow && is_identity(index) => {
            if !out.contains(input) {
                out.push(*input);
            }
        }
        Expr::Reduce {
            var, extent, body, ..
        } => {
            identity_inputs(em, extent, shadow, out);
            let s = shadow || em.is_out_var(*var);
            identity_inputs(em, body, s, out);
            return;
        }
        Expr::Float(_)
        | Expr::Int(_)
        | Expr::Bool(_)
        | Expr::Var(_)
        | Expr::Dim(_)
        | Expr::Acc
        | Expr::Load { .. }
        | Expr::Unary(..)
        | Expr::Binary(..)
        | Expr::Select(..)
        | Expr::Cast(..)
        | Expr::Round(..) => {}
    }
    e.for_each_child(|c| identity_inputs(em, c, shadow, out));
}

/// The loads of `e` (unguarded, not under a reduction that rebinds an
/// output variable, not at the output's own index) whose `p` lanes of a run
/// read `p` consecutive elements starting at a multiple of `p`: the
/// output's last axis is a static multiple of `p` (a run stays in one row,
/// its first lane at a multiple of `p`), the load's last index is that
/// axis's variable plus terms that do not use it and are multiples of `p`,
/// its other indices do not use it, and the input's last axis is a static
/// multiple of `p` (its rows start at multiples of `p`). Such a load is
/// read with vector loads once per run (a concatenation's sources, a
/// slice of a row).
pub(super) fn run_loads(em: &Em, e: &Expr, p: u32, shadow: bool, out: &mut Vec<Expr>) {
    let rank = em.out_shape.len();
    let row_ok = rank > 0
        && p > 1
        && imm(&em.out_shape[rank - 1]).is_some_and(|d| d > 0 && d % i64::from(p) == 0);
    if !row_ok {
        return;
    }
    let last = Var(rank as u32 - 1);
    match e {
        Expr::Load {
            input,
            index,
            guard: None,
        } if !shadow && !is_identity(index) && !out.contains(e) => {
            let buf = &em.k.inputs[*input];
            let n = index.len();
            let w = code_width(buf.dtype);
            let ok = n > 0
                && buf.dtype.bits() >= 8
                && vectorizable(p, w)
                && imm(&em.in_shape[*input][n - 1]).is_some_and(|d| d > 0 && d % i64::from(p) == 0)
                && index[..n - 1].iter().all(|i| !free_vars(i).contains(&last))
                && runs_along(&index[n - 1], last, i64::from(p));
            if ok {
                out.push(e.clone());
            }
            return;
        }
        Expr::Reduce {
            var, extent, body, ..
        } => {
            run_loads(em, extent, p, shadow, out);
            let s = shadow || em.is_out_var(*var);
            run_loads(em, body, p, s, out);
            return;
        }
        Expr::Float(_)
        | Expr::Int(_)
        | Expr::Bool(_)
        | Expr::Var(_)
        | Expr::Dim(_)
        | Expr::Acc
        | Expr::Load { .. }
        | Expr::Unary(..)
        | Expr::Binary(..)
        | Expr::Select(..)
        | Expr::Cast(..)
        | Expr::Round(..) => {}
    }
    e.for_each_child(|c| run_loads(em, c, p, shadow, out));
}

/// The loads of `e` (unguarded, outside reductions) whose `p` lanes of a
/// full run read `p / d` consecutive elements, each twice or more: the
/// last index is `v / d` plus terms that do not use `v` (the output's
/// last axis, a static multiple of `p`) and are multiples of `p / d`, the
/// other indices do not use `v`, and the input's last axis is a static
/// multiple of `p / d`. A rotary embedding's `cos[s, v / 2]`: one vector
/// load per run instead of a load per element pair, each with its own
/// address. With `d`.
pub(super) fn shared_run_loads(em: &Em, e: &Expr, p: u32, out: &mut Vec<(Expr, u32)>) {
    let rank = em.out_shape.len();
    if rank == 0
        || p < 2
        || !imm(&em.out_shape[rank - 1]).is_some_and(|d| d > 0 && d % i64::from(p) == 0)
    {
        return;
    }
    let last = Var(rank as u32 - 1);
    match e {
        Expr::Load {
            input,
            index,
            guard: None,
        } => {
            let buf = &em.k.inputs[*input];
            let n = index.len();
            let (w, found) = (code_width(buf.dtype), out.iter().any(|(l, _)| l == e));
            if n == 0 || buf.dtype.bits() < 8 || found {
                return;
            }
            let d = [2u32, 4, 8].into_iter().find(|&d| {
                let per = p / d;
                p.is_multiple_of(d)
                    && per >= 1
                    && vectorizable(per, w)
                    && imm(&em.in_shape[*input][n - 1])
                        .is_some_and(|x| x > 0 && x % i64::from(per) == 0)
                    && index[..n - 1].iter().all(|i| !free_vars(i).contains(&last))
                    && halves_along(&index[n - 1], last, i64::from(d), i64::from(per))
            });
            if let Some(d) = d {
                out.push((e.clone(), d));
            }
        }
        Expr::Reduce { .. } => {}
        Expr::Float(_)
        | Expr::Int(_)
        | Expr::Bool(_)
        | Expr::Var(_)
        | Expr::Dim(_)
        | Expr::Acc
        | Expr::Load { .. }
        | Expr::Unary(..)
        | Expr::Binary(..)
        | Expr::Select(..)
        | Expr::Cast(..)
        | Expr::Round(..) => e.for_each_child(|c| shared_run_loads(em, c, p, out)),
    }
}

/// Whether `i` is `v / d` plus terms that do not use `v`, each a multiple
/// of `per`.
fn halves_along(i: &Expr, v: Var, d: i64, per: i64) -> bool {
    let mut ts = Vec::new();
    add_terms(i, &mut ts);
    let quotient = |t: &Expr| {
        matches!(t, Expr::Binary(Binary::Div, a, b)
            if **a == Expr::Var(v) && **b == Expr::Int(d))
    };
    ts.iter().filter(|t| quotient(t)).count() == 1
        && ts
            .iter()
            .filter(|t| !quotient(t))
            .all(|t| !free_vars(t).contains(&v) && multiple_of(t, per))
}

/// The terms of a sum.
fn add_terms<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::Binary(Binary::Add, a, b) => {
            add_terms(a, out);
            add_terms(b, out);
        }
        _ => out.push(e),
    }
}

/// Whether `e` is a multiple of `p` by its form (an integer multiple, or
/// a product with one).
fn multiple_of(e: &Expr, p: i64) -> bool {
    match e {
        Expr::Int(c) => c % p == 0,
        Expr::Binary(Binary::Mul, a, b) => multiple_of(a, p) || multiple_of(b, p),
        Expr::Binary(Binary::Add | Binary::Sub, a, b) => multiple_of(a, p) && multiple_of(b, p),
        _ => false,
    }
}

/// Whether `i` is `v` plus terms that do not use `v`, each a multiple of
/// `p` (an integer multiple of `p`, or a product with one).
fn runs_along(i: &Expr, v: Var, p: i64) -> bool {
    let mut ts = Vec::new();
    add_terms(i, &mut ts);
    let at_v = ts.iter().filter(|t| ***t == Expr::Var(v)).count();
    at_v == 1
        && ts
            .iter()
            .filter(|t| ***t != Expr::Var(v))
            .all(|t| !free_vars(t).contains(&v) && multiple_of(t, p))
}

/// The thread's global index and the grid's thread count, as i64.
pub(super) fn thread_index(em: &mut Em) -> (String, String) {
    let (tid, ntid, cta, ncta) = (
        em.reg(Class::R),
        em.reg(Class::R),
        em.reg(Class::R),
        em.reg(Class::R),
    );
    em.ins(format!("mov.u32 {tid}, %tid.x"));
    em.ins(format!("mov.u32 {ntid}, %ntid.x"));
    em.ins(format!("mov.u32 {cta}, %ctaid.x"));
    em.ins(format!("mov.u32 {ncta}, %nctaid.x"));
    let (unit, t, stride) = (em.reg(Class::D), em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("mul.wide.u32 {unit}, {cta}, {ntid}"));
    em.ins(format!("cvt.u64.u32 {t}, {tid}"));
    em.ins(format!("add.s64 {unit}, {unit}, {t}"));
    em.ins(format!("mul.wide.u32 {stride}, {ncta}, {ntid}"));
    (unit, stride)
}

/// Binds `v0 .. v(n-1)` to the row-major index of `flat` over the first
/// `n` output axes; returns their registers.
pub(super) fn unravel(em: &mut Em, flat: &str, n: usize) -> Vec<String> {
    unravel_in(em, flat, &(0..n).collect::<Vec<_>>())
}

/// [`unravel`] over the output's axes taken in `order` (outermost first):
/// the registers of the output variables, in the output's order.
fn unravel_in(em: &mut Em, flat: &str, order: &[usize]) -> Vec<String> {
    let n = order.len();
    let mut regs = vec![String::new(); n];
    let mut t = flat.to_string();
    for (i, &a) in order.iter().enumerate().rev() {
        let d = em.out_shape[a].clone();
        let v = em.reg(Class::D);
        if i == 0 {
            em.ins(format!("mov.b64 {v}, {t}"));
        } else {
            let q = if let Some(c) = super::expr::imm(&d) {
                let q = em.reg(Class::D);
                em.ins(format!("rem.u64 {v}, {t}, {c}"));
                em.ins(format!("div.u64 {q}, {t}, {c}"));
                q
            } else {
                let (q, r) = em.divmod_u64(&t, &d);
                em.ins(format!("mov.b64 {v}, {r}"));
                q
            };
            t = q;
        }
        em.bind(Var(a as u32), v.clone());
        regs[a] = v;
    }
    regs
}

/// The order in which a map's runs walk the output's axes (outermost
/// first, the last axis innermost) when it differs from the output's own:
/// the order of the largest input read in runs (a strided view, as W3's
/// key rotation reads each head's 128 columns of a QKV row), its axes by
/// decreasing stride, so that consecutive runs read consecutive memory
/// and the stores scatter instead (into L2, which merges them). Only for
/// a last axis that is a static multiple of `p` (every run full, its
/// lanes in one row) and an input contiguous along it.
fn walk_order(em: &Em, runs: &[Expr], p: u32) -> Option<Vec<usize>> {
    let rank = em.out_shape.len();
    let last = imm(&em.out_shape[rank.checked_sub(1)?])?;
    if rank < 2 || p < 2 || last % i64::from(p) != 0 {
        return None;
    }
    // Symbolic extents count as this many elements.
    const SYM: i64 = 1024;
    let size = |i: usize| -> i64 {
        em.k.inputs[i]
            .shape
            .0
            .iter()
            .map(|d| d.as_static().map_or(SYM, |n| n as i64))
            .product::<i64>()
            * i64::from(em.k.inputs[i].dtype.bits())
    };
    let (input, index) = runs
        .iter()
        .filter_map(|l| match l {
            Expr::Load { input, index, .. } => Some((*input, index)),
            _ => None,
        })
        .max_by_key(|(i, _)| size(*i))?;
    let stride = |a: usize| simplify::stride_of(em.k, input, index, Var(a as u32), SYM);
    if stride(rank - 1)? != 1 {
        return None;
    }
    let strides: Vec<i64> = (0..rank - 1).map(stride).collect::<Option<_>>()?;
    let mut order: Vec<usize> = (0..rank - 1).collect();
    order.sort_by_key(|&a| std::cmp::Reverse(strides[a]));
    order.push(rank - 1);
    let identity = order.iter().enumerate().all(|(i, &a)| i == a);
    (!identity).then_some(order)
}

/// 32-bit words in accesses of 4, 2 or 1 words, in order: each access's
/// byte offset, word count and register list.
fn word_vectors(words: &[String]) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let (mut off, mut i) = (0, 0);
    while i < words.len() {
        let n = match words.len() - i {
            4.. => 4,
            2 | 3 => 2,
            _ => 1,
        };
        out.push((off, n, words[i..i + n].join(", ")));
        off += 4 * n;
        i += n;
    }
    out
}

/// Loads of `w`-bit codes of one full run at `addr`, `lanes` elements, in
/// 16-byte (or smaller) vectors into `dst`.
pub(super) fn vector_load(em: &mut Em, addr: &str, w: u32, dst: &[Code]) {
    if w == 64 {
        for (q, pair) in dst.chunks(2).enumerate() {
            em.ins(format!(
                "ld.global.v2.b64 {{{}, {}}}, [{addr}+{}]",
                pair[0].r,
                pair[1].r,
                16 * q
            ));
        }
        return;
    }
    let per_word = (32 / w) as usize;
    let words: Vec<String> = (0..dst.len() / per_word)
        .map(|_| em.reg(Class::R))
        .collect();
    for (off, n, regs) in word_vectors(&words) {
        match n {
            1 => em.ins(format!("ld.global.b32 {regs}, [{addr}+{off}]")),
            _ => em.ins(format!("ld.global.v{n}.b32 {{{regs}}}, [{addr}+{off}]")),
        }
    }
    for (j, c) in dst.iter().enumerate() {
        let word = &words[j / per_word];
        match w {
            32 => em.ins(format!("mov.b32 {}, {word}", c.r)),
            16 => {
                let tmp = em.reg(Class::H);
                let (lo, hi) = if j % 2 == 0 {
                    (c.r.clone(), tmp)
                } else {
                    (tmp, c.r.clone())
                };
                em.ins(format!("mov.b32 {{{lo}, {hi}}}, {word}"));
            }
            _ => em.ins(format!("bfe.u32 {}, {word}, {}, 8", c.r, 8 * (j % 4))),
        }
    }
}

/// The `p` codes of `dtype` at element `flat` of the buffer at `base`: with
/// vector loads for a full run (`partial` false), else with a predicated
/// scalar load per lane below `rem`.
fn load_run(
    em: &mut Em,
    base: &str,
    flat: &str,
    dtype: kiln_dialect::DType,
    p: u32,
    partial: &str,
    rem: &str,
) -> Vec<Code> {
    let (w, bytes) = (code_width(dtype), dtype.bits() / 8);
    let lanes: Vec<Code> = (0..p)
        .map(|_| Code {
            r: em.reg(code_class(w)),
            w,
        })
        .collect();
    let addr = em.reg(Class::D);
    em.ins(format!("mad.lo.s64 {addr}, {flat}, {bytes}, {base}"));
    let (scalar, loaded) = (em.a.label("ld_part"), em.a.label("ld_done"));
    em.ins(format!("@{partial} bra {scalar}"));
    vector_load(em, &addr, w, &lanes);
    em.ins(format!("bra.uni {loaded}"));
    em.a.place(&scalar);
    let pv = em.reg(Class::P);
    for (j, c) in lanes.iter().enumerate() {
        em.ins(format!("setp.gt.s64 {pv}, {rem}, {j}"));
        em.ins(format!(
            "@{pv} ld.global.{} {}, [{addr}+{}]",
            scalar_ty(w),
            c.r,
            j as u32 * bytes
        ));
    }
    em.a.place(&loaded);
    lanes
}

/// Vector stores of one full run of `w`-bit codes at `addr`.
pub(super) fn vector_store(em: &mut Em, addr: &str, w: u32, src: &[Code]) {
    if w == 64 {
        for (q, pair) in src.chunks(2).enumerate() {
            em.ins(format!(
                "st.global.v2.b64 [{addr}+{}], {{{}, {}}}",
                16 * q,
                pair[0].r,
                pair[1].r
            ));
        }
        return;
    }
    let per_word = (32 / w) as usize;
    let mut words = Vec::new();
    for chunk in src.chunks(per_word) {
        let word = em.reg(Class::R);
        match w {
            32 => em.ins(format!("mov.b32 {word}, {}", chunk[0].r)),
            16 => em.ins(format!(
                "mov.b32 {word}, {{{}, {}}}",
                chunk[0].r, chunk[1].r
            )),
            _ => {
                em.ins(format!("mov.b32 {word}, {}", chunk[0].r));
                for (j, c) in chunk.iter().enumerate().skip(1) {
                    let t = em.reg(Class::R);
                    em.ins(format!("shl.b32 {t}, {}, {}", c.r, 8 * j));
                    em.ins(format!("or.b32 {word}, {word}, {t}"));
                }
            }
        }
        words.push(word);
    }
    for (off, n, regs) in word_vectors(&words) {
        match n {
            1 => em.ins(format!("st.global.b32 [{addr}+{off}], {regs}")),
            _ => em.ins(format!("st.global.v{n}.b32 [{addr}+{off}], {{{regs}}}")),
        }
    }
}

/// The memory type of a scalar access to a `w`-bit code.
pub(super) fn scalar_ty(w: u32) -> &'static str {
    match w {
        64 => "b64",
        32 => "b32",
        16 => "b16",
        _ => "u8",
    }
}

/// The `mov` type of a `w`-bit code's register.
pub(super) fn mov_ty(w: u32) -> &'static str {
    match w {
        64 => "b64",
        16 => "b16",
        _ => "b32",
    }
}

/// Whether a run of `p` codes of `w` bits moves as whole 32-bit words or
/// 16-byte pairs of 64-bit ones.
pub(super) fn vectorizable(p: u32, w: u32) -> bool {
    let bytes = p * w / 8;
    if w == 64 {
        p >= 2 && p.is_multiple_of(2)
    } else {
        bytes >= 4 && bytes.is_multiple_of(4)
    }
}

/// A map's expression at each lane of a full run ([`at_lane`]), and the
/// variable numbering the runs along the last axis: `None` where the
/// lanes cannot be written apart (one lane, or a last axis that is not a
/// static multiple of `p`).
fn lane_exprs(em: &Em, e: &Expr, p: u32) -> Option<(Var, Vec<Expr>)> {
    let rank = em.out_shape.len();
    if p < 2 || rank == 0 {
        return None;
    }
    let last = Var(rank as u32 - 1);
    let chunk = Var(max_var(e).max(last.0) + 1);
    let exprs = (0..p)
        .map(|j| at_lane(em.k, e, last, i64::from(p), chunk, i64::from(j)))
        .collect::<Option<Vec<_>>>()?;
    Some((chunk, exprs))
}

/// The element-grid body: `lane_value` computes the current element (its
/// output variables bound). With `body` (a map's expression), a full run
/// whose last axis is a static multiple of `p` evaluates each lane's own
/// expression ([`at_lane`]) in straight-line code with shared values
/// (the memo): index arithmetic that only the lane changes is done once,
/// selects on a lane's parity are decided at compile time, and a load of
/// another lane's element of a preloaded run (a rotary embedding's
/// partner) takes that lane's register. Partial runs step the variables
/// lane by lane.
pub(super) fn emit_elements<'k>(
    em: &mut Em<'k>,
    p: u32,
    units: &str,
    identity: &[usize],
    runs: &[Expr],
    body: Option<&Expr>,
    mut lane_value: impl FnMut(&mut Em<'k>) -> Result<Val, PtxError>,
) -> Result<(), PtxError> {
    let out = em.k.output.clone();
    let rank = out.shape.rank();
    let bits = out.dtype.bits();
    let n = em.product(&em.out_shape.clone());
    let n = em.in_reg(&n);
    let (unit, stride) = thread_index(em);
    let (top, done) = (em.a.label("unit"), em.a.label("exit"));
    let pexit = em.reg(Class::P);
    em.a.place(&top);
    em.ins(format!("setp.ge.s64 {pexit}, {unit}, {units}"));
    em.ins(format!("@{pexit} bra {done}"));
    let (start, rem) = (em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("mul.lo.s64 {start}, {unit}, {p}"));
    let walk = body
        .filter(|_| em.walk_inputs)
        .and_then(|_| walk_order(em, runs, p));
    let (vars, start) = match walk {
        // The run's place in the walk, then its first element's offset
        // in the output.
        Some(order) => {
            let vars = unravel_in(em, &start, &order);
            let flat = em.reg(Class::D);
            em.ins(format!("mov.b64 {flat}, {}", vars[0]));
            for (v, d) in vars.iter().zip(em.out_shape.clone()).skip(1) {
                em.ins(format!("mul.lo.s64 {flat}, {flat}, {d}"));
                em.ins(format!("add.s64 {flat}, {flat}, {v}"));
            }
            (vars, flat)
        }
        None => (unravel(em, &start, rank), start),
    };
    em.ins(format!("sub.s64 {rem}, {n}, {start}"));
    let ppart = em.reg(Class::P);
    em.ins(format!("setp.lt.s64 {ppart}, {rem}, {p}"));

    // Preloads.
    em.preload.clear();
    for &i in identity {
        let b = &em.k.inputs[i];
        if b.shape != out.shape || b.dtype.bits() < 8 {
            continue;
        }
        let w = code_width(b.dtype);
        if !vectorizable(p, w) {
            continue;
        }
        let base = em.in_ptr[i].clone();
        let lanes = load_run(em, &base, &start, b.dtype, p, &ppart, &rem);
        em.preload.push(Preload {
            input: i,
            load: None,
            lanes,
        });
    }
    // Loads whose lanes are consecutive elements ([`run_loads`]): read at
    // the run's first element, its variables bound by `unravel`.
    for l in runs {
        let Expr::Load { input, index, .. } = l else {
            continue;
        };
        let dtype = em.k.inputs[*input].dtype;
        let flat = em.flat_index(l, *input, index)?;
        let base = em.in_ptr[*input].clone();
        let lanes = load_run(em, &base, &flat, dtype, p, &ppart, &rem);
        em.preload.push(Preload {
            input: *input,
            load: Some(l.clone()),
            lanes,
        });
    }

    // The run's elements.
    let w = code_width(out.dtype);
    let codes: Vec<Code> = (0..p)
        .map(|_| Code {
            r: em.reg(code_class(w)),
            w,
        })
        .collect();
    let fast = body.and_then(|e| lane_exprs(em, e, p));
    let mut joined = None;
    if let Some((chunk, exprs)) = &fast {
        let (slow, join) = (em.a.label("lanes_part"), em.a.label("lanes_done"));
        em.ins(format!("@{ppart} bra {slow}"));
        let last = Var(rank as u32 - 1);
        let c = em.reg(Class::D);
        em.ins(format!("div.u64 {c}, {}, {p}", vars[rank - 1]));
        let prev = em.bind(*chunk, c);
        // Each preloaded lane under the expression its lane reads it by.
        let mut codes_of = Vec::new();
        for pre in &em.preload {
            let load = pre.load.clone().unwrap_or_else(|| Expr::Load {
                input: pre.input,
                index: (0..rank as u32).map(|a| Expr::Var(Var(a))).collect(),
                guard: None,
            });
            for (j, code) in pre.lanes.iter().enumerate() {
                if let Some(at) = at_lane(em.k, &load, last, i64::from(p), *chunk, j as i64) {
                    codes_of.push((at, code.clone()));
                }
            }
        }
        // Loads whose lanes share elements ([`shared_run_loads`]): one
        // vector load of the run's `p / d` elements, in bounds for a full
        // run; lane `j` reads element `j / d`.
        if let Some(e) = body {
            let mut shared = Vec::new();
            shared_run_loads(em, e, p, &mut shared);
            for (l, d) in shared {
                let Some(at0) = at_lane(em.k, &l, last, i64::from(p), *chunk, 0) else {
                    continue;
                };
                let Expr::Load { input, index, .. } = &at0 else {
                    continue;
                };
                let (input, dtype) = (*input, em.k.inputs[*input].dtype);
                let flat = em.flat_index(&at0, input, index)?;
                let w = code_width(dtype);
                let elems: Vec<Code> = (0..p / d)
                    .map(|_| Code {
                        r: em.reg(code_class(w)),
                        w,
                    })
                    .collect();
                let addr = em.reg(Class::D);
                let base = em.in_ptr[input].clone();
                em.ins(format!(
                    "mad.lo.s64 {addr}, {flat}, {}, {base}",
                    dtype.bits() / 8
                ));
                vector_load(em, &addr, w, &elems);
                for j in 0..p {
                    if let Some(at) = at_lane(em.k, &l, last, i64::from(p), *chunk, i64::from(j)) {
                        codes_of.push((at, elems[(j / d) as usize].clone()));
                    }
                }
            }
        }
        let saved = std::mem::replace(&mut em.col_codes, codes_of);
        em.memo = Some(Vec::new());
        let mut lanes = Ok(());
        for (j, (c, e)) in codes.iter().zip(exprs).enumerate() {
            em.lane = j;
            match em.emit(e) {
                Ok(v) => {
                    let code = em.encode(&v, out.dtype);
                    em.ins(format!("mov.{} {}, {}", mov_ty(w), c.r, code.r));
                }
                Err(err) => {
                    lanes = Err(err);
                    break;
                }
            }
        }
        em.memo = None;
        em.col_codes = saved;
        em.unbind(*chunk, prev);
        lanes?;
        em.ins(format!("bra.uni {join}"));
        em.a.place(&slow);
        joined = Some(join);
    }
    let pinv = em.reg(Class::P);
    for (j, c) in codes.iter().enumerate() {
        if j > 0 && rank > 0 {
            let last = rank - 1;
            em.ins(format!("add.s64 {}, {}, 1", vars[last], vars[last]));
            let pc = em.reg(Class::P);
            for a in (1..rank).rev() {
                let d = em.out_shape[a].clone();
                em.ins(format!("setp.ge.s64 {pc}, {}, {d}", vars[a]));
                em.ins(format!("@{pc} mov.b64 {}, 0", vars[a]));
                em.ins(format!("@{pc} add.s64 {}, {}, 1", vars[a - 1], vars[a - 1]));
            }
        }
        em.ins(format!("mov.{} {}, 0", mov_ty(w), c.r));
        let skip = em.a.label("lane");
        if j > 0 {
            em.ins(format!("setp.le.s64 {pinv}, {rem}, {j}"));
            em.ins(format!("@{pinv} bra {skip}"));
        }
        em.lane = j;
        let v = lane_value(em)?;
        let code = em.encode(&v, out.dtype);
        em.ins(format!("mov.{} {}, {}", mov_ty(w), c.r, code.r));
        em.a.place(&skip);
    }
    if let Some(join) = &joined {
        em.a.place(join);
    }
    em.preload.clear();

    // Stores.
    if bits < 8 {
        let run_bytes = p * bits / 8;
        let (acc, t) = (em.reg(Class::D), em.reg(Class::D));
        em.ins(format!("mov.b64 {acc}, 0"));
        for (j, c) in codes.iter().enumerate() {
            em.ins(format!("cvt.u64.u32 {t}, {}", c.r));
            em.ins(format!("shl.b64 {t}, {t}, {}", j as u32 * bits));
            em.ins(format!("or.b64 {acc}, {acc}, {t}"));
        }
        let (total, sb, addr) = (em.reg(Class::D), em.reg(Class::D), em.reg(Class::D));
        em.ins(format!("mul.lo.s64 {total}, {n}, {bits}"));
        em.ins(format!("add.s64 {total}, {total}, 7"));
        em.ins(format!("shr.u64 {total}, {total}, 3"));
        em.ins(format!("mul.lo.s64 {sb}, {unit}, {run_bytes}"));
        let outp = em.out_ptr.clone();
        em.ins(format!("add.s64 {addr}, {outp}, {sb}"));
        let (pb, byte, bt) = (em.reg(Class::P), em.reg(Class::R), em.reg(Class::D));
        for b in 0..run_bytes {
            em.ins(format!("add.s64 {bt}, {sb}, {b}"));
            em.ins(format!("setp.lt.s64 {pb}, {bt}, {total}"));
            em.ins(format!("shr.u64 {t}, {acc}, {}", 8 * b));
            em.ins(format!("cvt.u32.u64 {byte}, {t}"));
            em.ins(format!("@{pb} st.global.u8 [{addr}+{b}], {byte}"));
        }
    } else {
        let bytes = bits / 8;
        let addr = em.reg(Class::D);
        let outp = em.out_ptr.clone();
        em.ins(format!("mad.lo.s64 {addr}, {start}, {bytes}, {outp}"));
        let (partial, stored) = (em.a.label("st_part"), em.a.label("st_done"));
        if vectorizable(p, w) {
            em.ins(format!("@{ppart} bra {partial}"));
            vector_store(em, &addr, w, &codes);
            em.ins(format!("bra.uni {stored}"));
        }
        em.a.place(&partial);
        let pv = em.reg(Class::P);
        for (j, c) in codes.iter().enumerate() {
            em.ins(format!("setp.gt.s64 {pv}, {rem}, {j}"));
            em.ins(format!(
                "@{pv} st.global.{} [{addr}+{}], {}",
                scalar_ty(w),
                j as u32 * bytes,
                c.r
            ));
        }
        em.a.place(&stored);
    }
    em.ins(format!("add.s64 {unit}, {unit}, {stride}"));
    em.ins(format!("bra.uni {top}"));
    em.a.place(&done);
    em.ins("ret");
    Ok(())
}
