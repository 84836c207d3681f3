//! Tensor-core fragment order for 4-bit weights (GPU targets): a
//! contraction whose `b` dequantizes 4-bit integer codes of a weight
//! stored `[K, N]` reads them instead from a copy in the order the
//! dequantizing tensor-core kernel consumes them
//! (`compiler/src/codegen/ptx/qmma.rs`), made by one more bind-time launch.
//!
//! The kernel gives each warp 64 columns and walks `k` 32 at a time; lane
//! `l` of the warp needs, per 32-deep step, the 64 codes of its `mma.sync
//! .m16n8k16` `b` fragments over the 8 column blocks of 8 and the step's
//! two 16-deep halves: 16 bytes per half. The copy stores a step's codes
//! as two 512-byte halves, lane `l`'s 16 bytes of a half at `16 l`, so a
//! warp's step is one contiguous 1 KiB read and each of the lanes' two
//! 16-byte copies reads 512 contiguous bytes (coalesced: a lane's 32
//! bytes side by side made each copy touch every 32-byte sector half
//! used). The 16 bytes of a lane's half are ordered so that shifting a
//! 32-bit word right by 0, 4, 8 or 12 and masking `0x000f000f` leaves one
//! fragment register's two codes, one per 16-bit half.
//!
//! Copy layout `[N / 64, K / 32, 2 halves, 32 lanes, 32 codes]`. Within a
//! step, `k` follows the PTX ISA's `m16n8k16` fragment layout: lane `l =
//! 4 g + t` (`g`, `t` as in the ISA) holds `k = 16 h + 8 r + 2 t + e` of
//! the step in element `e` of its `b` fragment register `r` of half `h`
//! (so `ldmatrix` gives its `a` fragments from rows of `x` as they are
//! stored). Column `n = 8 j + g` of the warp's 64 lies
//! in column block `j`. The code for `(h, r, e, j)` is code `(j / 2) * 8 +
//! 4 e + 2 (j % 2) + r` of the lane's 32 in half `h`: 32-bit word `j / 2`,
//! bits `16 e + 4 (2 (j % 2) + r)`.
//!
//! The rewrite is exact: the rewritten load reads the element the plain
//! one did, so the reference evaluator checks the program unchanged.

use kiln_dialect::kernel::{Binary, Body, Buffer, Expr, Kernel, Launch, Program, Ty, Var};
use kiln_dialect::{DType, Dim, Shape};

use super::pack::{sanitize, through_bind_time_copies};

/// Columns of a warp's tile (a column block of the copy).
pub const FRAGMENT_COLS: u64 = 64;
/// Depth of a step (a row block of the copy).
pub const FRAGMENT_DEPTH: u64 = 32;

/// Rewrites every contraction whose `b` dequantizes a bind-time 4-bit
/// weight stored `[K, N]` (see [`fragment_operand`]) to read the weight's
/// fragment-ordered copy; returns how many were rewritten. The copy is
/// shared by the contractions that read the same weight.
pub fn order_int4_fragments(p: &mut Program) -> usize {
    through_bind_time_copies(p, fragment_operand, fragment_launch, |index| {
        let (k, n) = (index[0].clone(), index[1].clone());
        *index = fragment_index(k, n);
    })
}

/// The index into the fragment-ordered copy of the element at `(k, n)` of
/// the weight.
pub fn fragment_index(k: Expr, n: Expr) -> Vec<Expr> {
    let int = Expr::Int;
    let div = |a: Expr, b: i64| Expr::bin(Binary::Div, a, int(b));
    let rem = |a: Expr, b: i64| Expr::bin(Binary::Rem, a, int(b));
    let mul = |a: Expr, b: i64| Expr::bin(Binary::Mul, a, int(b));
    let add = |a: Expr, b: Expr| Expr::bin(Binary::Add, a, b);
    let kk = rem(k.clone(), FRAGMENT_DEPTH as i64);
    let nn = rem(n.clone(), FRAGMENT_COLS as i64);
    let t = rem(div(kk.clone(), 2), 4);
    let h = div(kk.clone(), 16);
    let r = rem(div(kk.clone(), 8), 2);
    let e = rem(kk, 2);
    let j = div(nn.clone(), 8);
    let g = rem(nn, 8);
    let lane = add(mul(g, 4), t);
    // (j / 2) * 8 + 4 e + 2 (j % 2) + r, in half h
    let word = div(j.clone(), 2);
    let code = add(add(mul(word, 8), mul(e, 4)), add(mul(rem(j, 2), 2), r));
    vec![
        div(n, FRAGMENT_COLS as i64),
        div(k, FRAGMENT_DEPTH as i64),
        h,
        lane,
        code,
    ]
}

/// The slot of a contraction's `b` weight that [`order_int4_fragments`]
/// rewrites: `k`'s extent is static, the output's `n` axis a static
/// multiple of 64, `a` reads bf16 or f16 elements, and `b` reads
/// exactly one element of a bind-time `i4` or `u4` tensor of shape `[K,
/// N]` (`K` a multiple of 32, the contraction's whole depth), at `[k, n]`,
/// unguarded.
fn fragment_operand(l: &Launch, known: &[bool]) -> Option<usize> {
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
    let r = k.output.shape.rank();
    let n = k.output.shape.0.get(r.checked_sub(1)?)?.as_static()?;
    if r < 2
        || n % FRAGMENT_COLS != 0
        || *depth <= 0
        || !(*depth as u64).is_multiple_of(FRAGMENT_DEPTH)
    {
        return None;
    }
    if !reads_16bit_floats(k, a) {
        return None;
    }
    let mut codes = Vec::new();
    four_bit_loads(k, b, &mut codes);
    let [(slot, index, guarded)] = codes.as_slice() else {
        return None;
    };
    let buf = &k.inputs[*slot];
    let dims = buf.shape.as_static()?;
    let plain = *index == [Expr::Var(*kv), Expr::Var(Var(r as u32 - 1))];
    let whole = dims == [*depth as u64, n];
    (plain && whole && !guarded && known.get(*l.args.get(*slot)?).copied()?).then_some(*slot)
}

/// Whether `e` loads bf16 or f16 elements (the kernel's `mma` type).
fn reads_16bit_floats(k: &Kernel, e: &Expr) -> bool {
    if let Expr::Load { input, .. } = e
        && k.inputs
            .get(*input)
            .is_some_and(|b| matches!(b.dtype, DType::BF16 | DType::F16))
    {
        return true;
    }
    let mut any = false;
    e.for_each_child(|c| any |= reads_16bit_floats(k, c));
    any
}

/// The loads of `i4` or `u4` elements in `e`: input, index, guarded.
fn four_bit_loads(k: &Kernel, e: &Expr, out: &mut Vec<(usize, Vec<Expr>, bool)>) {
    if let Expr::Load {
        input,
        index,
        guard,
    } = e
        && k.inputs
            .get(*input)
            .is_some_and(|b| matches!(b.dtype, DType::I4 | DType::U4))
    {
        out.push((*input, index.clone(), guard.is_some()));
    }
    e.for_each_child(|c| four_bit_loads(k, c, out));
}

/// The bind-time launch that writes weight `src` (`[K, N]`) in fragment
/// order, and the new buffer (its `out` is filled in by the caller).
fn fragment_launch(p: &Program, src: usize) -> (Launch, Buffer) {
    let s = &p.buffers[src];
    let dims = s.shape.as_static().expect("checked a static shape");
    let (kk, nn) = (dims[0], dims[1]);
    let shape = [nn / FRAGMENT_COLS, kk / FRAGMENT_DEPTH, 2, 32, 32];
    let copy = Buffer {
        name: format!("{}.fragments", s.name),
        dtype: s.dtype,
        shape: Shape(shape.iter().map(|&d| Dim::Static(d)).collect()),
    };
    // out[nb, ks, h, lane, c] = src[k, n], inverting `fragment_index`.
    let int = Expr::Int;
    let v = |i: u32| Expr::Var(Var(i));
    let div = |a: Expr, b: i64| Expr::bin(Binary::Div, a, int(b));
    let rem = |a: Expr, b: i64| Expr::bin(Binary::Rem, a, int(b));
    let mul = |a: Expr, b: i64| Expr::bin(Binary::Mul, a, int(b));
    let add = |a: Expr, b: Expr| Expr::bin(Binary::Add, a, b);
    let h = v(2);
    let (g, t) = (div(v(3), 4), rem(v(3), 4));
    let word = div(v(4), 8);
    let within = rem(v(4), 8);
    let (e, q) = (div(within.clone(), 4), rem(within, 4));
    let j = add(mul(word, 2), div(q.clone(), 2));
    let r = rem(q, 2);
    let k = add(
        add(mul(v(1), FRAGMENT_DEPTH as i64), mul(h, 16)),
        add(add(mul(r, 8), mul(t, 2)), e),
    );
    let n = add(add(mul(v(0), FRAGMENT_COLS as i64), mul(j, 8)), g);
    let kernel = Kernel {
        name: format!("fragments{src}_{}", sanitize(&s.name)),
        inputs: vec![s.clone()],
        output: copy.clone(),
        dims: Vec::new(),
        float: Ty::F32,
        body: Body::Map {
            expr: Expr::load(0, vec![k, n]),
        },
    };
    (
        Launch {
            kernel,
            args: vec![src],
            out: usize::MAX,
            bind_time: true,
        },
        copy,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// The value of an index expression of constants, variables (`vars`),
    /// sums, products, quotients and remainders.
    fn value(e: &Expr, vars: &[i64]) -> i64 {
        match e {
            Expr::Int(x) => *x,
            Expr::Var(v) => vars[v.0 as usize],
            Expr::Binary(op, a, b) => {
                let (a, b) = (value(a, vars), value(b, vars));
                match op {
                    Binary::Add => a + b,
                    Binary::Mul => a * b,
                    Binary::Div => a / b,
                    Binary::Rem => a % b,
                    op => panic!("{op:?} in an index"),
                }
            }
            e => panic!("{e} in an index"),
        }
    }

    /// `fragment_index` and the copy's kernel are inverse maps: every
    /// element of a 64 x 128 weight lands at a distinct position inside
    /// the copy, and the copy reads it back from there; and the positions
    /// are those the module documents (half `h`, lane `4 g + t`, code `(j /
    /// 2) * 8 + 4 e + 2 (j % 2) + r`).
    #[test]
    fn the_copy_inverts_the_fragment_index() {
        let (kk, nn) = (64i64, 128i64);
        let src = Buffer {
            name: "w".into(),
            dtype: DType::I4,
            shape: Shape(vec![Dim::Static(kk as u64), Dim::Static(nn as u64)]),
        };
        let p = Program {
            name: "p".into(),
            buffers: vec![src],
            inputs: vec![],
            weights: vec![0],
            constants: vec![],
            outputs: vec![],
            dims: vec![],
            launches: vec![],
        };
        let (launch, copy) = fragment_launch(&p, 0);
        assert_eq!(copy.shape.as_static().unwrap(), vec![2, 2, 2, 32, 32]);
        let Body::Map {
            expr: Expr::Load { index: back, .. },
        } = &launch.kernel.body
        else {
            panic!("the copy is a map of one load")
        };
        let mut seen = HashMap::new();
        for k in 0..kk {
            for n in 0..nn {
                let at: Vec<i64> = fragment_index(Expr::Int(k), Expr::Int(n))
                    .iter()
                    .map(|e| value(e, &[]))
                    .collect();
                assert!(
                    at[0] < 2 && at[1] < 2 && at[2] < 2 && at[3] < 32 && at[4] < 32,
                    "{at:?}"
                );
                assert!(seen.insert(at.clone(), (k, n)).is_none(), "{at:?} twice");
                let from: Vec<i64> = back.iter().map(|e| value(e, &at)).collect();
                assert_eq!(from, vec![k, n], "position {at:?}");
                // The documented layout, computed directly.
                let (ks, nc) = (k % 32, n % 64);
                let (t, h, r, e) = ((ks / 2) % 4, ks / 16, (ks / 8) % 2, ks % 2);
                let (j, g) = (nc / 8, nc % 8);
                let want = vec![
                    n / 64,
                    k / 32,
                    h,
                    4 * g + t,
                    (j / 2) * 8 + 4 * e + 2 * (j % 2) + r,
                ];
                assert_eq!(at, want, "k {k}, n {n}");
            }
        }
        assert_eq!(seen.len(), (kk * nn) as usize);
    }
}
