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

/// Rewrites every contraction of `p` whose `b` operand can be packed in
/// panels of `panel` columns; returns how many were rewritten. A packed
/// copy is shared by the contractions that read the same tensor (it keeps
/// every leading axis, so any batch index reads it as it read the tensor).
pub fn pack_contraction_weights(p: &mut Program, panel: usize) -> usize {
    let known = bind_time_buffers(p);
    let mut packed: HashMap<usize, usize> = HashMap::new();
    let mut rewritten = 0;
    let mut i = 0;
    while i < p.launches.len() {
        let Some(slot) = packable(&p.launches[i], &known) else {
            i += 1;
            continue;
        };
        let src = p.launches[i].args[slot];
        let buf = match packed.get(&src) {
            Some(&b) => b,
            None => {
                let (launch, buffer) = pack_launch(p, src, panel);
                p.buffers.push(buffer);
                let b = p.buffers.len() - 1;
                p.launches.insert(i, Launch { out: b, ..launch });
                i += 1;
                packed.insert(src, b);
                b
            }
        };
        let l = &mut p.launches[i];
        l.args[slot] = buf;
        l.kernel.inputs[slot] = p.buffers[buf].clone();
        let Body::Contract { b, .. } = &mut l.kernel.body else {
            unreachable!("packable checked the body")
        };
        let Expr::Load { index, .. } = b else {
            unreachable!("packable checked the operand")
        };
        let (k, n) = (
            index[index.len() - 2].clone(),
            index[index.len() - 1].clone(),
        );
        index.truncate(index.len() - 2);
        let p_int = Expr::Int(panel as i64);
        index.push(Expr::bin(Binary::Div, n.clone(), p_int.clone()));
        index.push(k);
        index.push(Expr::bin(Binary::Rem, n, p_int));
        rewritten += 1;
        i += 1;
    }
    rewritten
}

/// Which buffers hold values known at bind time.
fn bind_time_buffers(p: &Program) -> Vec<bool> {
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
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
