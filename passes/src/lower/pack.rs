//! Weight packing for the CPU contraction kernels: a contraction whose `b`
//! operand is a plain f32 load of a tensor known when weights are bound (a
//! weight, a constant or a bind-time result) reads it instead from a copy
//! laid out in column panels, `packed[.., n / P, k, n % P]`, the order in
//! which a register tile of `P` columns walks `k`. The copy is one more
//! bind-time launch, so packing costs nothing per run; columns past `N` in
//! the last panel are zeros.
//!
//! The rewrite keeps the program exact: the packed load reads the element
//! the plain one did, so the reference evaluator gives the same results and
//! checks it. The Cranelift backend recognizes the packed index form and
//! streams each panel contiguously (compiler/src/codegen/clif/contract.rs).

use std::collections::HashMap;

use kiln_dialect::kernel::{Binary, Body, Buffer, Expr, Kernel, Launch, Program, Ty, Var};
use kiln_dialect::{DType, Dim, Shape};

/// Lays out the weights of `p`'s contractions as `target`'s kernels read
/// them (after dropping bind-time copies that change nothing,
/// [`super::forward_identity_copies`]), with bind-time launches: column panels for the CPU
/// ([`pack_contraction_weights`]), `k`-major int8 weights and 4-bit
/// weights in tensor-core fragment order for the GPU
/// ([`transpose_8bit_weights`], [`super::order_int4_fragments`]).
/// `KILN_INT4_FRAGMENTS=0` in the environment leaves 4-bit weights as
/// stored (for measuring the dequantizing GEMV against the fragment path).
pub fn lay_out_weights(p: &mut Program, target: &crate::cost::Target) {
    super::forward_identity_copies(p);
    if let Some(panel) = target.weight_panel {
        pack_contraction_weights(p, panel);
    }
    if target.k_major_8bit {
        transpose_8bit_weights(p);
    }
    let off = std::env::var("KILN_INT4_FRAGMENTS").is_ok_and(|v| v == "0");
    if target.int4_fragments && !off {
        super::order_int4_fragments(p);
    }
}

/// Rewrites every contraction of `p` whose `b` operand can be packed in
/// panels of `panel` columns; returns how many were rewritten. A packed
/// copy is shared by the contractions that read the same tensor (it keeps
/// every leading axis, so any batch index reads it as it read the tensor).
pub fn pack_contraction_weights(p: &mut Program, panel: usize) -> usize {
    through_bind_time_copies(
        p,
        packable,
        |p, src| pack_launch(p, src, panel),
        |index| {
            let (k, n) = (
                index[index.len() - 2].clone(),
                index[index.len() - 1].clone(),
            );
            index.truncate(index.len() - 2);
            let p_int = Expr::Int(panel as i64);
            index.push(Expr::bin(Binary::Div, n.clone(), p_int.clone()));
            index.push(k);
            index.push(Expr::bin(Binary::Rem, n, p_int));
        },
    )
}

/// Points the `b` operand of every contraction `select` picks (its slot,
/// given which buffers are known at bind time) at a copy of its tensor
/// made by the bind-time launch `copy` gives (one per tensor, inserted
/// before its first reader), and lets `rewrite` turn each load index of
/// the operand in `b` into the copy's; returns how many contractions were
/// rewritten. `select` picks only slots that no expression but `b` reads.
pub(super) fn through_bind_time_copies(
    p: &mut Program,
    select: impl Fn(&Launch, &[bool]) -> Option<usize>,
    copy: impl Fn(&Program, usize) -> (Launch, Buffer),
    rewrite: impl Fn(&mut Vec<Expr>),
) -> usize {
    let known = bind_time_buffers(p);
    let mut copies: HashMap<usize, usize> = HashMap::new();
    let mut rewritten = 0;
    let mut i = 0;
    while i < p.launches.len() {
        let Some(slot) =
            select(&p.launches[i], &known).filter(|&s| only_b_reads(&p.launches[i], s))
        else {
            i += 1;
            continue;
        };
        let src = p.launches[i].args[slot];
        let buf = match copies.get(&src) {
            Some(&b) => b,
            None => {
                let (launch, buffer) = copy(p, src);
                p.buffers.push(buffer);
                let b = p.buffers.len() - 1;
                p.launches.insert(i, Launch { out: b, ..launch });
                i += 1;
                copies.insert(src, b);
                b
            }
        };
        let l = &mut p.launches[i];
        l.args[slot] = buf;
        l.kernel.inputs[slot] = p.buffers[buf].clone();
        let Body::Contract { b, .. } = &mut l.kernel.body else {
            unreachable!("`select` checked the body")
        };
        // `select` checked that `b` is the operand's only reader.
        *b = b.substitute(&|e| match e {
            Expr::Load {
                input,
                index,
                guard,
            } if *input == slot => {
                let mut index = index.clone();
                rewrite(&mut index);
                Some(Expr::Load {
                    input: slot,
                    index,
                    guard: guard.clone(),
                })
            }
            _ => None,
        });
        rewritten += 1;
        i += 1;
    }
    rewritten
}

/// Whether the contraction of `l` reads input `slot` in its `b` operand
/// only (a copy laid out for `b` must not be read by `a` or the epilogue).
fn only_b_reads(l: &Launch, slot: usize) -> bool {
    use super::pointwise::reads;
    match &l.kernel.body {
        Body::Contract {
            extent,
            a,
            epilogue,
            ..
        } => !reads(extent, slot) && !reads(a, slot) && !reads(epilogue, slot),
        Body::Map { .. } | Body::Attention(_) => false,
    }
}

/// Which buffers hold values known at bind time.
pub(super) fn bind_time_buffers(p: &Program) -> Vec<bool> {
    let mut known = vec![false; p.buffers.len()];
    for &b in &p.weights {
        known[b] = true;
    }
    for (b, _) in &p.constants {
        known[*b] = true;
    }
    for l in &p.launches {
        if l.bind_time {
            known[l.out] = true;
        }
    }
    known
}

/// The slot of a contraction's packable `b` operand, when there is one: an
/// unguarded
/// load of a bind-time f32 buffer of static shape whose last two indices
/// are the contracted variable and the output's last variable, and whose
/// other indices are constants or batch variables.
fn packable(l: &Launch, known: &[bool]) -> Option<usize> {
    let k = &l.kernel;
    let Body::Contract { k: kv, b, .. } = &k.body else {
        return None;
    };
    let Expr::Load {
        input,
        index,
        guard: None,
    } = b
    else {
        return None;
    };
    let rank = k.output.shape.rank() as u32;
    let buf = k.inputs.get(*input)?;
    let arg = *l.args.get(*input)?;
    if rank < 2 || !known.get(arg).copied().unwrap_or(false) || buf.dtype != DType::F32 {
        return None;
    }
    buf.shape.as_static()?;
    let r = index.len();
    if r < 2 || r != buf.shape.rank() {
        return None;
    }
    if index[r - 2] != Expr::Var(*kv) || index[r - 1] != Expr::Var(Var(rank - 1)) {
        return None;
    }
    let plain = |e: &Expr| match e {
        Expr::Int(_) => true,
        Expr::Var(v) => v.0 < rank - 2,
        _ => false,
    };
    index[..r - 2].iter().all(plain).then_some(*input)
}

/// The bind-time launch that packs buffer `src` (shape `[.., K, N]`) into
/// `[.., ceil(N / panel), K, panel]`, and the packed buffer (its `out` is
/// filled in by the caller).
fn pack_launch(p: &Program, src: usize, panel: usize) -> (Launch, Buffer) {
    let s = &p.buffers[src];
    let dims = s
        .shape
        .as_static()
        .expect("packable checked a static shape");
    let r = dims.len();
    let (kk, nn) = (dims[r - 2], dims[r - 1]);
    let panels = nn.div_ceil(panel as u64);
    let mut shape: Vec<u64> = dims[..r - 2].to_vec();
    shape.extend([panels, kk, panel as u64]);
    let name = format!("{}.panels{panel}", s.name);
    let packed = Buffer {
        name: name.clone(),
        dtype: DType::F32,
        shape: Shape(shape.iter().map(|&d| Dim::Static(d)).collect()),
    };
    // out[.., q, k, j] = src[.., k, q * panel + j] where that column exists.
    let v = |i: usize| Expr::Var(Var(i as u32));
    let col = Expr::bin(
        Binary::Add,
        Expr::bin(Binary::Mul, v(r - 2), Expr::Int(panel as i64)),
        v(r),
    );
    let mut index: Vec<Expr> = (0..r - 2).map(v).collect();
    index.extend([v(r - 1), col.clone()]);
    let expr = Expr::Load {
        input: 0,
        index,
        guard: Some(Box::new(Expr::bin(Binary::Lt, col, Expr::Int(nn as i64)))),
    };
    let kernel = Kernel {
        name: format!("pack{src}_{}", sanitize(&s.name)),
        inputs: vec![s.clone()],
        output: packed.clone(),
        dims: Vec::new(),
        float: Ty::F32,
        body: Body::Map { expr },
    };
    (
        Launch {
            kernel,
            args: vec![src],
            out: usize::MAX,
            bind_time: true,
        },
        packed,
    )
}

/// A buffer name as a symbol fragment.
pub(super) fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Rewrites every contraction of 8-bit elements (int8 or fp8) whose `b`
/// operand is a tensor known at bind time stored `[.., K, N]` (`n`
/// contiguous) to read a copy stored `[.., N, K]`, made by one more
/// bind-time launch; returns how many were rewritten. The GPU's 8-bit
/// tensor-core fragments (`mma.sync.m16n8k32`) take `k` contiguous in
/// both operands, and unlike 16-bit elements, `ldmatrix` cannot transpose
/// bytes. The copy is shared by the
/// contractions that read the same tensor, and the rewrite is exact: the
/// transposed load reads the element the plain one did.
///
/// A contraction qualifies when `k`'s extent is a static multiple of 16,
/// its `a` is a load of an 8-bit type with `k` last, and its `b` an
/// unguarded load of the same type (plain, or widened exactly: rounded or
/// cast) of a static tensor indexed `[batch.., k, n]` over its whole `k`
/// axis.
pub fn transpose_8bit_weights(p: &mut Program) -> usize {
    through_bind_time_copies(p, byte_k_outer, transpose_launch, |index| {
        let r = index.len();
        index.swap(r - 2, r - 1);
    })
}

/// The load inside an exact widening (an integer rounding or cast, a
/// float rounding or cast; the operand itself otherwise).
fn byte_inner(e: &Expr) -> &Expr {
    match e {
        Expr::Round(_, x) | Expr::Cast(Ty::I64 | Ty::F32, x) => x,
        e => e,
    }
}

/// The slot of an int8 contraction's `b` operand stored `[.., K, N]` (see
/// [`transpose_8bit_weights`]).
fn byte_k_outer(l: &Launch, known: &[bool]) -> Option<usize> {
    let k = &l.kernel;
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
    let rank = k.output.shape.rank() as u32;
    if rank < 2 || *depth <= 0 || depth % 16 != 0 {
        return None;
    }
    // `a`: a load of an 8-bit type with `k` contiguous.
    let Expr::Load { input, index, .. } = byte_inner(a) else {
        return None;
    };
    let elem = k.inputs.get(*input)?.dtype;
    let byte = matches!(elem, DType::I8 | DType::F8E4M3 | DType::F8E5M2);
    if !byte || index.last() != Some(&Expr::Var(*kv)) {
        return None;
    }
    let Expr::Load {
        input,
        index,
        guard: None,
    } = byte_inner(b)
    else {
        return None;
    };
    let buf = k.inputs.get(*input)?;
    let arg = *l.args.get(*input)?;
    if buf.dtype != elem || !known.get(arg).copied().unwrap_or(false) {
        return None;
    }
    let dims = buf.shape.as_static()?;
    let r = index.len();
    if r < 2 || r != dims.len() || dims[r - 2] != *depth as u64 {
        return None;
    }
    if index[r - 2] != Expr::Var(*kv) || index[r - 1] != Expr::Var(Var(rank - 1)) {
        return None;
    }
    let plain = |e: &Expr| match e {
        Expr::Int(_) => true,
        Expr::Var(v) => v.0 < rank - 2,
        _ => false,
    };
    index[..r - 2].iter().all(plain).then_some(*input)
}

/// The bind-time launch that transposes buffer `src` (`[.., K, N]`) into
/// `[.., N, K]`, and the new buffer (its `out` is filled in by the caller).
fn transpose_launch(p: &Program, src: usize) -> (Launch, Buffer) {
    let s = &p.buffers[src];
    let mut shape = s.shape.clone();
    let r = shape.rank();
    shape.0.swap(r - 2, r - 1);
    let t = Buffer {
        name: format!("{}.k_major", s.name),
        dtype: s.dtype,
        shape,
    };
    // out[.., j, kk] = src[.., kk, j]
    let v = |i: usize| Expr::Var(Var(i as u32));
    let mut index: Vec<Expr> = (0..r - 2).map(v).collect();
    index.extend([v(r - 1), v(r - 2)]);
    let kernel = Kernel {
        name: format!("k_major{src}_{}", sanitize(&s.name)),
        inputs: vec![s.clone()],
        output: t.clone(),
        dims: Vec::new(),
        float: Ty::F32,
        body: Body::Map {
            expr: Expr::load(0, index),
        },
    };
    (
        Launch {
            kernel,
            args: vec![src],
            out: usize::MAX,
            bind_time: true,
        },
        t,
    )
}
