//! Single-threaded throughput of Cranelift-compiled kernels: a
//! 512x1024x4096 f32 contraction (GFLOP/s) and 1024x4096 softmax,
//! layer_norm and gelu-then-layer_norm (benchmark C1's kernel) rows (GB/s
//! of input read plus output written). `KILN_BENCH=name` runs one only;
//! `KILN_DISASM=1` prints the machine code, `KILN_OPT_CLIF=1` the CLIF
//! after Cranelift's optimizations.
//!
//! `cargo run --release -p kiln --example clif_bench`

use std::time::Instant;

use kiln::codegen::compile_kernel;
use kiln_dialect::kernel::{Binary, Body, Buffer, Expr, Kernel, Reduction, Ty, Unary, Var};
use kiln_dialect::{DType, Dim, Shape};
use kiln_runtime::cpu::jit::{JitModule, host_isa};

fn buf(name: &str, shape: &[usize]) -> Buffer {
    Buffer {
        name: name.into(),
        dtype: DType::F32,
        shape: Shape(shape.iter().map(|&n| Dim::Static(n as u64)).collect()),
    }
}

fn v(i: u32) -> Expr {
    Expr::Var(Var(i))
}

fn bin(op: Binary, a: Expr, b: Expr) -> Expr {
    Expr::bin(op, a, b)
}

fn matmul(m: usize, n: usize, k: usize) -> Kernel {
    Kernel {
        name: "matmul".into(),
        inputs: vec![buf("a", &[m, k]), buf("b", &[k, n])],
        output: buf("c", &[m, n]),
        dims: vec![],
        float: Ty::F32,
        body: Body::Contract {
            k: Var(2),
            extent: Expr::Int(k as i64),
            a: Expr::load(0, vec![v(0), v(2)]),
            b: Expr::load(1, vec![v(2), v(1)]),
            epilogue: Expr::Acc,
        },
    }
}

fn softmax(r: usize, c: usize) -> Kernel {
    let x = |col: Expr| Expr::load(0, vec![v(0), col]);
    let m = Expr::reduce(Reduction::Max, Var(2), Expr::Int(c as i64), x(v(2)));
    let e = |col: Expr| Expr::un(Unary::Exp, bin(Binary::Sub, x(col), m.clone()));
    let s = Expr::reduce(Reduction::Sum, Var(2), Expr::Int(c as i64), e(v(2)));
    Kernel {
        name: "softmax".into(),
        inputs: vec![buf("x", &[r, c])],
        output: buf("y", &[r, c]),
        dims: vec![],
        float: Ty::F32,
        body: Body::Map {
            expr: bin(Binary::Div, e(v(1)), s),
        },
    }
}

fn layer_norm(r: usize, c: usize) -> Kernel {
    let n = Expr::Int(c as i64);
    let nf = Expr::Float(c as f64);
    let x = |col: Expr| Expr::load(0, vec![v(0), col]);
    let sum = |e: Expr| Expr::reduce(Reduction::Sum, Var(2), n.clone(), e);
    let mean = bin(
        Binary::Div,
        Expr::reduce(Reduction::Sum, Var(3), n.clone(), x(v(3))),
        nf.clone(),
    );
    let d = |col: Expr| bin(Binary::Sub, x(col), mean.clone());
    let var = bin(Binary::Div, sum(bin(Binary::Mul, d(v(2)), d(v(2)))), nf);
    let inv = bin(
        Binary::Div,
        Expr::Float(1.0),
        Expr::un(Unary::Sqrt, bin(Binary::Add, var, Expr::Float(1e-5))),
    );
    let y = bin(
        Binary::Add,
        bin(
            Binary::Mul,
            bin(Binary::Mul, d(v(1)), inv),
            Expr::load(1, vec![v(1)]),
        ),
        Expr::load(2, vec![v(1)]),
    );
    Kernel {
        name: "layer_norm".into(),
        inputs: vec![buf("x", &[r, c]), buf("g", &[c]), buf("b", &[c])],
        output: buf("y", &[r, c]),
        dims: vec![],
        float: Ty::F32,
        body: Body::Map { expr: y },
    }
}

/// Benchmark C1's kernel, `layer_norm(gelu(x * s + b), g, beta)`, as the
/// planner emits it: the gelu recomputed in both statistics' bodies and in
/// the element.
fn gelu_layer_norm(r: usize, c: usize) -> Kernel {
    let n = Expr::Int(c as i64);
    let nf = Expr::Float(c as f64);
    let g = |col: u32| {
        let x = |col: u32| {
            bin(
                Binary::Add,
                bin(
                    Binary::Mul,
                    Expr::load(0, vec![v(0), v(col)]),
                    Expr::load(1, vec![v(col)]),
                ),
                Expr::load(2, vec![v(col)]),
            )
        };
        let erf = Expr::un(
            Unary::Erf,
            bin(Binary::Div, x(col), Expr::Float(std::f64::consts::SQRT_2)),
        );
        bin(
            Binary::Mul,
            bin(Binary::Mul, Expr::Float(0.5), x(col)),
            bin(Binary::Add, Expr::Float(1.0), erf),
        )
    };
    let mean = bin(
        Binary::Div,
        Expr::reduce(Reduction::Sum, Var(2), n.clone(), g(2)),
        nf.clone(),
    );
    let d = |col: u32| bin(Binary::Sub, g(col), mean.clone());
    let var = bin(
        Binary::Div,
        Expr::reduce(Reduction::Sum, Var(3), n, bin(Binary::Mul, d(3), d(3))),
        nf,
    );
    let inv = bin(
        Binary::Div,
        Expr::Float(1.0),
        Expr::un(Unary::Sqrt, bin(Binary::Add, var, Expr::Float(1e-5))),
    );
    let y = bin(
        Binary::Add,
        bin(
            Binary::Mul,
            bin(Binary::Mul, d(1), inv),
            Expr::load(3, vec![v(1)]),
        ),
        Expr::load(4, vec![v(1)]),
    );
    Kernel {
        name: "gelu_layer_norm".into(),
        inputs: vec![
            buf("x", &[r, c]),
            buf("s", &[c]),
            buf("b", &[c]),
            buf("g", &[c]),
            buf("beta", &[c]),
        ],
        output: buf("y", &[r, c]),
        dims: vec![],
        float: Ty::F32,
        body: Body::Map { expr: y },
    }
}

/// Runs `k` once over all rows; returns the best of `reps` times in seconds.
fn time(k: &Kernel, sizes: &[usize], out: usize, rows: i64, reps: usize) -> f64 {
    if std::env::var("KILN_BENCH").is_ok_and(|b| b != k.name) {
        return f64::NAN;
    }
    let isa = host_isa().expect("host ISA");
    let ck = compile_kernel(k, isa.as_ref()).expect("compile");
    if std::env::var_os("KILN_DISASM").is_some() {
        let mut ctx = cranelift_codegen::Context::for_function(ck.func.clone());
        ctx.set_disasm(true);
        let mut ctrl = cranelift_codegen::control::ControlPlane::default();
        if let Ok(code) = ctx.compile(isa.as_ref(), &mut ctrl) {
            println!("{}", code.vcode.clone().unwrap_or_default());
        }
        if std::env::var_os("KILN_OPT_CLIF").is_some() {
            println!("{}", ctx.func.display());
        }
    }
    let jit = JitModule::new(isa.clone(), vec![ck.into()]).expect("jit");
    let f = jit.get(&k.name).expect("kernel");
    let mut bufs: Vec<Vec<f32>> = sizes
        .iter()
        .map(|&n| (0..n).map(|i| ((i % 17) as f32 - 8.0) * 0.125).collect())
        .collect();
    bufs.push(vec![0.0; out]);
    let args: Vec<*mut u8> = bufs.iter_mut().map(|b| b.as_mut_ptr() as *mut u8).collect();
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        // SAFETY: the buffers have the kernel's shapes.
        unsafe { f(args.as_ptr(), [].as_ptr(), 0, rows) };
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let (m, n, k) = (512, 1024, 4096);
    let t = time(&matmul(m, n, k), &[m * k, k * n], m * n, m as i64, 3);
    println!(
        "matmul {m}x{n}x{k} f32: {:.3} s, {:.2} GFLOP/s",
        t,
        2.0 * (m * n * k) as f64 / t / 1e9
    );
    let (r, c) = (1024, 4096);
    let bytes = (2 * r * c * 4) as f64;
    let t = time(&softmax(r, c), &[r * c], r * c, r as i64, 5);
    println!(
        "softmax {r}x{c} f32: {:.4} s, {:.2} GB/s",
        t,
        bytes / t / 1e9
    );
    let t = time(&layer_norm(r, c), &[r * c, c, c], r * c, r as i64, 5);
    println!(
        "layer_norm {r}x{c} f32: {:.4} s, {:.2} GB/s",
        t,
        bytes / t / 1e9
    );
    let t = time(
        &gelu_layer_norm(r, c),
        &[r * c, c, c, c, c],
        r * c,
        r as i64,
        5,
    );
    println!(
        "gelu_layer_norm (C1) {r}x{c} f32: {:.4} s, {:.2} GB/s",
        t,
        bytes / t / 1e9
    );
}
