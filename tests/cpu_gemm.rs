//! The CPU contraction path with weights packed in column panels: programs
//! of one contraction over a weight, rewritten by
//! `lower::pack_contraction_weights`, against the reference evaluator on the
//! unpacked program (the rewrite is checked exactly there), and through the
//! Cranelift executor (the panel-tiled loop nest) with fresh random inputs
//! at sizes that leave partial tiles, panels and chunks, on 1 and 2
//! threads.
//!
//! Tolerance of the compiled results: 1e-5 relative to the output's largest
//! magnitude (fused multiply-adds skip the product's rounding; sums run in
//! `k` order as in the evaluator). `KILN_SEED` repeats a seed.

use std::collections::HashMap;

use kiln_dialect::interp::Tensor;
use kiln_dialect::kernel::{Binary, Body, Buffer, Expr, Kernel, Launch, Program, Ty, Var};
use kiln_dialect::{DType, Dim, Shape};
use kiln_passes::lower::{pack_contraction_weights, run_program};
use kiln_runtime::HostTensor;
use kiln_runtime::cpu::pool::ThreadPool;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn seed() -> u64 {
    std::env::var("KILN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

fn buf(name: &str, shape: Vec<Dim>) -> Buffer {
    Buffer {
        name: name.into(),
        dtype: DType::F32,
        shape: Shape(shape),
    }
}

fn v(i: u32) -> Expr {
    Expr::Var(Var(i))
}

/// `y[m, n] = relu(x[m, k] @ w[k, n] + bias[n])` with `m` symbolic, or with
/// a batch axis `y[b, m, n] = x[b, m, k] @ w[k, n]` (no epilogue).
fn linear(k: usize, n: usize, batched: bool) -> Program {
    let s = |d: usize| Dim::Static(d as u64);
    let m = Dim::Sym("m".into());
    let (xs, ys, rank) = if batched {
        (vec![s(2), m.clone(), s(k)], vec![s(2), m, s(n)], 3)
    } else {
        (vec![m.clone(), s(k)], vec![m, s(n)], 2)
    };
    let (mv, nv, kv) = (Var(rank - 2), Var(rank - 1), Var(rank));
    let mut xi: Vec<Expr> = (0..rank - 2).map(v).collect();
    xi.extend([Expr::Var(mv), Expr::Var(kv)]);
    let epilogue = if batched {
        Expr::Acc
    } else {
        let sum = Expr::bin(Binary::Add, Expr::Acc, Expr::load(2, vec![Expr::Var(nv)]));
        Expr::bin(Binary::Max, sum, Expr::Float(0.0))
    };
    let mut inputs = vec![buf("x", xs.clone()), buf("w", vec![s(k), s(n)])];
    if !batched {
        inputs.push(buf("bias", vec![s(n)]));
    }
    let kernel = Kernel {
        name: "k0".into(),
        inputs: inputs.clone(),
        output: buf("y", ys.clone()),
        dims: vec!["m".into()],
        float: Ty::F32,
        body: Body::Contract {
            k: kv,
            extent: Expr::Int(k as i64),
            a: Expr::load(0, xi),
            b: Expr::load(1, vec![Expr::Var(kv), Expr::Var(nv)]),
            epilogue,
        },
    };
    let mut buffers = inputs;
    buffers.push(buf("y", ys));
    let out = buffers.len() - 1;
    Program {
        name: "linear".into(),
        inputs: vec![0],
        weights: (1..out).collect(),
        constants: vec![],
        outputs: vec![("y".into(), out)],
        dims: vec!["m".into()],
        buffers,
        launches: vec![Launch {
            kernel,
            args: (0..out).collect(),
            out,
            bind_time: false,
        }],
    }
}

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) as f64)
        .collect()
}

/// Packs `p`, checks the packed program against the plain one in the
/// evaluator (equal), and the compiled packed program against the
/// evaluator on 1 and 2 threads.
fn check(p: Program, m: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dims = HashMap::from([("m".to_string(), m)]);
    let mut bindings = HashMap::new();
    for &b in p.inputs.iter().chain(&p.weights) {
        let shape = p.buffers[b].shape.resolve(&dims).unwrap();
        let vals = random(&mut rng, shape.iter().product());
        bindings.insert(
            p.buffers[b].name.clone(),
            Tensor::new(DType::F32, &shape, vals),
        );
    }
    let want = run_program(&p, &bindings).unwrap();
    let mut packed = p.clone();
    assert_eq!(
        pack_contraction_weights(&mut packed, 8),
        1,
        "one contraction packed"
    );
    let Body::Contract { b, .. } = &packed.launches[1].kernel.body else {
        panic!("the contraction follows its packing launch")
    };
    assert!(b.to_string().contains("div(v"), "b reads panels: {b}");
    let isa = kiln_runtime::cpu::jit::host_isa().unwrap();
    let clif = kiln::codegen::compile_kernel(&packed.launches[1].kernel, &*isa).unwrap();
    let text = kiln::codegen::clif_text(&clif);
    assert!(
        text.contains("f32x4"),
        "the panel path is vectorized:\n{text}"
    );
    assert!(packed.launches[0].bind_time);
    let same = run_program(&packed, &bindings).unwrap();
    assert_eq!(same, want, "packing changes no value (seed {seed})");

    let hosts: HashMap<String, HostTensor> = bindings
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                HostTensor::from_values(t.dtype, &t.shape, &t.data),
            )
        })
        .collect();
    let want = &want[0].1;
    let scale = want.data.iter().fold(1e-30f64, |a, x| a.max(x.abs()));
    for threads in [1, 2] {
        let mut exe = kiln::jit::native_on(packed.clone(), ThreadPool::new(threads)).unwrap();
        let (inputs, weights): (HashMap<_, _>, HashMap<_, _>) =
            hosts.clone().into_iter().partition(|(n, _)| n == "x");
        exe.bind_weights(&weights).unwrap();
        let got = exe.run(&inputs).unwrap();
        let got = got[0].1.to_values();
        let worst = got
            .iter()
            .zip(&want.data)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f64, f64::max);
        assert!(
            worst <= 1e-5 * scale,
            "m {m}, {threads} threads: off by {worst:e} of {scale:e} (seed {seed})"
        );
    }
}

#[test]
fn packed_linear_matches_the_evaluator_at_odd_sizes() {
    let s = seed();
    for (m, k, n) in [
        (1, 1, 1),
        (3, 3, 3),
        (4, 5, 8),
        (7, 2, 9),
        (50, 37, 50),
        (9, 131, 783),
        (13, 1100, 20),
        // k in blocks (k > 1024, n whole panels), rows left over
        (6, 1500, 24),
    ] {
        check(linear(k, n, false), m, s);
    }
}

#[test]
fn packed_batched_contraction_matches_the_evaluator() {
    let s = seed();
    for (m, k, n) in [(1, 3, 5), (6, 16, 17), (5, 33, 64), (7, 1030, 16)] {
        check(linear(k, n, true), m, s);
    }
}

#[test]
fn activations_and_symbolic_weights_are_not_packed() {
    let mut p = linear(4, 4, false);
    // `w` an input: known only at run time.
    p.weights.retain(|&b| b != 1);
    p.inputs.push(1);
    assert_eq!(pack_contraction_weights(&mut p, 8), 0);
}
