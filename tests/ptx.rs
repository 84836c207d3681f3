//! The PTX backend: kernels of every kind, dtype and expression form, from
//! hand-built kernels and from the examples and benchmarks lowered to the
//! kernel dialect, compiled to PTX and assembled by `ptxas` for `sm_90a`
//! (and `sm_80` for Sm80 modules), failing on any ptxas error or any
//! register spill. A table of registers and spills per kernel is printed.
//!
//! `ptxas` is `KILN_PTXAS`, else `ptxas` on the PATH; without one the
//! assembly checks print a notice and pass, unless `KILN_REQUIRE_PTXAS=1`.
//! Golden PTX of a few small kernels lives in `tests/filetests/ptx/`;
//! `KILN_BLESS=1` rewrites it.
//!
//! The kernels run against the kernel evaluator on the CPU executor, on
//! the PTX interpreter (`kiln-ptx-sim`, as sm_90a and sm_80 modules) on
//! every machine, and on the GPU where there is one.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::codegen::ptx::{
    GemvTiling, Grid, MmaSplits, PtxArch, PtxKernel, PtxOptions, QmmaBalance, RowTuning,
    compile_kernel, compile_kernel_with, compile_program,
};
use kiln::pipeline::{self, Options};
use kiln_dialect::kernel::{
    Attention, Binary, Body, Buffer, Expr, Kernel, Reduction, Ty, Unary, Var,
};
use kiln_dialect::{DType, Dim, Shape};
use kiln_passes::cost;
use kiln_passes::lower::lower_plan;

use common::{bin, ld, root, un, v};

fn buf(name: &str, dtype: DType, shape: Vec<Dim>) -> Buffer {
    Buffer {
        name: name.into(),
        dtype,
        shape: Shape(shape),
    }
}

fn st(n: u64) -> Dim {
    Dim::Static(n)
}

fn map(name: &str, float: Ty, inputs: Vec<Buffer>, output: Buffer, expr: Expr) -> Kernel {
    let mut dims = Vec::new();
    for b in inputs.iter().chain([&output]) {
        for d in &b.shape.0 {
            if let Dim::Sym(s) = d
                && !dims.contains(s)
            {
                dims.push(s.clone());
            }
        }
    }
    Kernel {
        name: name.into(),
        inputs,
        output,
        dims,
        float,
        body: Body::Map { expr },
    }
}

/// The ptxas to use, or `None` (after a notice) when there is none.
fn ptxas() -> Option<PathBuf> {
    let path = std::env::var_os("KILN_PTXAS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("ptxas"))
                    .find(|f| f.is_file())
            })
        });
    match path {
        Some(p) if p.is_file() => Some(p),
        _ => {
            assert!(
                std::env::var("KILN_REQUIRE_PTXAS").as_deref() != Ok("1"),
                "KILN_REQUIRE_PTXAS=1 but no ptxas (set KILN_PTXAS)"
            );
            eprintln!("notice: no ptxas found (KILN_PTXAS, PATH): PTX is not assembled");
            None
        }
    }
}

/// Registers and spill bytes of one assembled kernel.
#[derive(Debug, Clone, Copy)]
struct Usage {
    regs: u32,
    spill: u32,
}

/// The largest number before `key` on any line of `text` (0 if none).
fn num_before(text: &str, key: &str) -> u32 {
    text.lines()
        .filter_map(|l| {
            let i = l.find(key)?;
            l[..i].split_whitespace().last()?.parse::<u32>().ok()
        })
        .max()
        .unwrap_or(0)
}

fn usage_of(text: &str) -> Usage {
    Usage {
        regs: num_before(text, " registers"),
        spill: num_before(text, " bytes spill stores").max(num_before(text, " bytes spill loads")),
    }
}

/// Runs ptxas on one module text for `arch`; its `-v` output, or its errors.
fn run_ptxas(ptxas: &Path, arch: &str, name: &str, ptx: &str) -> Result<String, String> {
    // one folder per call: calls run on several threads at once, and
    // tests running side by side assemble the same entries (the same
    // kernel under other options)
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = common::scratch(&format!("ptx-{name}-{arch}-{call}"));
    let file = dir.join(format!("{name}_{arch}.ptx"));
    let cubin = dir.join(format!("{name}_{arch}.cubin"));
    std::fs::write(&file, ptx).map_err(|e| e.to_string())?;
    let out = Command::new(ptxas)
        .arg(format!("-arch={arch}"))
        .arg("-v")
        .arg(&file)
        .arg("-o")
        .arg(&cubin)
        .output()
        .map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&cubin);
    let out = out?;
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Assembles `k` alone for its own arch; the usage ptxas reports, or its
/// errors.
fn assemble(ptxas: &Path, k: &PtxKernel) -> Result<Usage, String> {
    run_ptxas(ptxas, &k.arch, &k.entry, &k.ptx).map(|t| usage_of(&t))
}

/// The body of a module of one entry: everything after `.address_size`.
fn module_body(ptx: &str) -> &str {
    let i = ptx.find(".address_size 64").expect("a kiln PTX module");
    &ptx[i + ".address_size 64".len()..]
}

/// Assembles kernels of one arch (distinct entry names) as one module
/// and splits the `-v` report per entry; on any error, falls back to one
/// ptxas run per kernel, so that the failing kernel is named.
fn assemble_batch(ptxas: &Path, ks: &[&PtxKernel]) -> Vec<Result<Usage, String>> {
    if ks.len() == 1 {
        return vec![assemble(ptxas, ks[0])];
    }
    let arch = &ks[0].arch;
    // The newest ISA version any of them asks for (fp8 `mma` needs 8.4).
    let version = ks
        .iter()
        .filter_map(|k| k.ptx.lines().find_map(|l| l.strip_prefix(".version ")))
        .max_by(|a, b| {
            a.parse::<f64>()
                .unwrap_or(0.0)
                .total_cmp(&b.parse().unwrap_or(0.0))
        })
        .unwrap_or("8.0");
    let mut ptx = format!(".version {version}\n.target {arch}\n.address_size 64\n");
    for k in ks {
        assert_eq!(&k.arch, arch);
        assert!(k.ptx.contains(&format!(".target {arch}\n")));
        ptx.push_str(module_body(&k.ptx));
    }
    let name = format!("batch_{}", ks[0].entry);
    let per_entry = run_ptxas(ptxas, arch, &name, &ptx).ok().and_then(|text| {
        // `Function properties for E` starts the report of entry E.
        let mut reports: BTreeMap<&str, String> = BTreeMap::new();
        let mut cur: Option<&str> = None;
        for l in text.lines() {
            if let Some(i) = l.find("Function properties for ") {
                cur = Some(l[i + "Function properties for ".len()..].trim());
            } else if l.contains("Compiling entry function") {
                cur = None;
            }
            if let Some(e) = cur {
                let r = reports.entry(e).or_default();
                r.push_str(l);
                r.push('\n');
            }
        }
        ks.iter()
            .map(|k| {
                let r = reports.get(k.entry.as_str())?;
                r.contains(" registers").then(|| Ok(usage_of(r)))
            })
            .collect::<Option<Vec<_>>>()
    });
    per_entry.unwrap_or_else(|| ks.iter().map(|k| assemble(ptxas, k)).collect())
}

/// PTX of at most this many bytes is batched with other kernels.
const BATCH_SMALL: usize = 16 << 10;
/// The most PTX bytes in one batched module.
const BATCH_BYTES: usize = 64 << 10;

/// Assembles every kernel (distinct entries per arch), batching small ones
/// per arch and running the ptxas processes on every core, largest first;
/// the results in the order of `ks`.
fn assemble_all(ptxas: &Path, ks: &[PtxKernel]) -> Vec<Result<Usage, String>> {
    let mut order: Vec<usize> = (0..ks.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ks[i].ptx.len()));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut open: BTreeMap<&str, (Vec<usize>, usize)> = BTreeMap::new();
    for i in order {
        let len = ks[i].ptx.len();
        if len > BATCH_SMALL {
            batches.push(vec![i]);
            continue;
        }
        let (b, bytes) = open.entry(ks[i].arch.as_str()).or_default();
        if *bytes + len > BATCH_BYTES && !b.is_empty() {
            batches.push(std::mem::take(b));
            *bytes = 0;
        }
        b.push(i);
        *bytes += len;
    }
    batches.extend(open.into_values().map(|(b, _)| b).filter(|b| !b.is_empty()));
    // Largest work first, so that the last ptxas runs are short ones.
    batches.sort_by_key(|b| std::cmp::Reverse(b.iter().map(|&i| ks[i].ptx.len()).sum::<usize>()));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new(vec![None; ks.len()]);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads.min(batches.len()) {
            s.spawn(|| {
                loop {
                    let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(batch) = batches.get(b) else { break };
                    let refs: Vec<&PtxKernel> = batch.iter().map(|&i| &ks[i]).collect();
                    let results = assemble_batch(ptxas, &refs);
                    let mut done = done.lock().unwrap();
                    for (&i, r) in batch.iter().zip(results) {
                        done[i] = Some(r);
                    }
                }
            });
        }
    });
    done.into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every kernel assembled"))
        .collect()
}

fn grid_kind(pk: &PtxKernel) -> String {
    match pk.grid {
        Grid::Elements { per_thread } => format!("elements/{per_thread}"),
        Grid::Rows { inner_axes } => format!("rows/{inner_axes}"),
        Grid::Tiles { tile_m, tile_n } => format!("tiles/{tile_m}x{tile_n}"),
        Grid::SplitTiles {
            tile_m,
            tile_n,
            splits,
            scratch,
        } => format!("tiles/{tile_m}x{tile_n}/split{splits}/{scratch}"),
        Grid::BalancedTiles {
            tile_m,
            tile_n,
            splits,
            scratch,
            sms,
        } => format!("tiles/{tile_m}x{tile_n}/balanced{splits}on{sms}/{scratch}"),
        Grid::Images { tile_h, tile_w } => format!("images/{tile_h}x{tile_w}"),
    }
}

/// Compiles and assembles every kernel for both architectures; returns the
/// table rows; panics listing every failure.
fn check_all(label: &str, kernels: &[Kernel]) -> Vec<(String, String, Usage)> {
    let tool = ptxas();
    let mut failures = Vec::new();
    let mut compiled = Vec::new();
    for k in kernels {
        for arch in [PtxArch::Sm90a, PtxArch::Sm80] {
            let pk = match compile_kernel(k, arch) {
                Ok(pk) => pk,
                Err(e) => {
                    failures.push(format!("{label}: {e}"));
                    break;
                }
            };
            assert!(pk.ptx.contains(&format!(".target {}", arch.target())));
            assert!(pk.block % 32 == 0 && pk.block <= 1024);
            compiled.push((k.name.clone(), pk));
        }
    }
    let mut rows = Vec::new();
    if let Some(tool) = &tool {
        // Kernels of the same form share an entry name: assemble each once.
        let mut seen = std::collections::BTreeSet::new();
        compiled.retain(|(_, pk)| seen.insert((pk.entry.clone(), pk.arch.clone())));
        let pks: Vec<PtxKernel> = compiled.iter().map(|(_, pk)| pk.clone()).collect();
        for ((name, pk), r) in compiled.iter().zip(assemble_all(tool, &pks)) {
            match r {
                Ok(u) => {
                    if u.spill > 0 {
                        failures.push(format!(
                            "{label}: {name} ({}) spills {} bytes",
                            pk.arch, u.spill
                        ));
                    }
                    rows.push((format!("{name} {}", pk.arch), grid_kind(pk), u));
                }
                Err(e) => failures.push(format!(
                    "{label}: ptxas rejects {name} ({}):\n{e}\n{}",
                    pk.arch, pk.ptx
                )),
            }
        }
    }
    print_table(label, &rows);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    rows
}

fn print_table(label: &str, rows: &[(String, String, Usage)]) {
    if rows.is_empty() {
        return;
    }
    println!("{label}: {} kernels assembled", rows.len());
    println!(
        "{:<60} {:<12} {:>5} {:>6}",
        "kernel", "grid", "regs", "spill"
    );
    for (name, kind, u) in rows {
        println!("{name:<60} {kind:<12} {:>5} {:>6}", u.regs, u.spill);
    }
    let max = rows.iter().map(|r| r.2.regs).max().unwrap_or(0);
    println!("{label}: max registers {max}");
}

/// Every element type loaded into f32 and stored from f32, and copied to
/// itself (vector paths), with static and symbolic shapes.
fn dtype_kernels() -> Vec<Kernel> {
    let mut ks = Vec::new();
    for d in DType::ALL {
        let shape = vec![Dim::sym("n"), st(6)];
        let id = || ld(0, vec![v(0), v(1)]);
        ks.push(map(
            &format!("copy_{d}"),
            Ty::F32,
            vec![buf("x", d, shape.clone())],
            buf("y", d, shape.clone()),
            id(),
        ));
        let to_float = if d.has_integer_values() {
            Expr::Cast(Ty::F32, Box::new(id()))
        } else {
            id()
        };
        ks.push(map(
            &format!("{d}_to_f32"),
            Ty::F32,
            vec![buf("x", d, shape.clone())],
            buf("y", DType::F32, shape.clone()),
            bin(Binary::Mul, to_float, Expr::Float(0.5)),
        ));
        ks.push(map(
            &format!("f32_to_{d}"),
            Ty::F32,
            vec![buf("x", DType::F32, shape.clone())],
            buf("y", d, shape.clone()),
            bin(Binary::Add, id(), Expr::Float(0.25)),
        ));
        ks.push(map(
            &format!("f64_to_{d}"),
            Ty::F64,
            vec![buf("x", DType::F64, vec![st(5)])],
            buf("y", d, vec![st(5)]),
            Expr::Round(d, Box::new(ld(0, vec![v(0)]))),
        ));
        ks.push(map(
            &format!("i64_round_{d}"),
            Ty::F32,
            vec![buf("x", DType::I64, vec![st(7)])],
            buf("y", DType::I64, vec![st(7)]),
            Expr::Round(d, Box::new(ld(0, vec![v(0)]))),
        ));
    }
    ks
}

/// Every unary and binary operation in f32 and f64, on integers and bools;
/// casts, selects, guarded loads and sequential reductions.
fn op_kernels() -> Vec<Kernel> {
    let mut ks = Vec::new();
    let x = || ld(0, vec![v(0)]);
    let y = || ld(1, vec![v(0)]);
    let shape = vec![st(37)];
    let unaries = [
        Unary::Neg,
        Unary::Abs,
        Unary::Exp,
        Unary::Log,
        Unary::Sqrt,
        Unary::Tanh,
        Unary::Erf,
        Unary::Sin,
        Unary::Cos,
        Unary::Floor,
        Unary::Ceil,
        Unary::Round,
    ];
    let binaries = [
        Binary::Add,
        Binary::Sub,
        Binary::Mul,
        Binary::Div,
        Binary::Pow,
        Binary::Max,
        Binary::Min,
    ];
    for (float, d) in [(Ty::F32, DType::F32), (Ty::F64, DType::F64)] {
        let ins = || vec![buf("x", d, shape.clone()), buf("y", d, shape.clone())];
        for op in unaries {
            let k = map(
                &format!("{}_{d}", op.name()),
                float,
                ins(),
                buf("o", d, shape.clone()),
                un(op, x()),
            );
            ks.push(k);
        }
        // Arguments far outside the range where exp is finite: exp
        // overflows to infinity (never NaN), tanh saturates at +-1.
        for op in [Unary::Exp, Unary::Tanh] {
            ks.push(map(
                &format!("{}_wide_{d}", op.name()),
                float,
                ins(),
                buf("o", d, shape.clone()),
                un(op, bin(Binary::Mul, x(), Expr::Float(300.0))),
            ));
        }
        for op in binaries {
            ks.push(map(
                &format!("{}_{d}", op.name()),
                float,
                ins(),
                buf("o", d, shape.clone()),
                bin(op, x(), y()),
            ));
        }
        ks.push(map(
            &format!("square_{d}"),
            float,
            ins(),
            buf("o", d, shape.clone()),
            bin(Binary::Pow, x(), Expr::Float(2.0)),
        ));
        // Division by constants: a multiply by the reciprocal and one
        // correction in f32 (1/sqrt(2) is not exact in either type).
        for (name, c) in [
            ("sqrt2", std::f64::consts::SQRT_2),
            ("3", 3.0),
            ("tiny", 1e-30),
        ] {
            ks.push(map(
                &format!("div_by_{name}_{d}"),
                float,
                ins(),
                buf("o", d, shape.clone()),
                bin(Binary::Div, x(), Expr::Float(c)),
            ));
        }
        for op in [
            Binary::Eq,
            Binary::Ne,
            Binary::Lt,
            Binary::Le,
            Binary::Gt,
            Binary::Ge,
        ] {
            ks.push(map(
                &format!("{}_{d}", op.name()),
                float,
                ins(),
                buf("o", DType::Bool, shape.clone()),
                bin(op, x(), y()),
            ));
        }
        ks.push(map(
            &format!("select_cast_{d}"),
            float,
            ins(),
            buf("o", DType::I32, shape.clone()),
            Expr::select(
                bin(Binary::Lt, x(), y()),
                Expr::Cast(Ty::I64, Box::new(x())),
                Expr::Cast(
                    Ty::I64,
                    Box::new(Expr::Cast(
                        Ty::Bool,
                        Box::new(Expr::Cast(Ty::F64, Box::new(y()))),
                    )),
                ),
            ),
        ));
    }
    let ints = || {
        vec![
            buf("a", DType::I32, shape.clone()),
            buf("b", DType::I8, shape.clone()),
        ]
    };
    for op in [
        Binary::Add,
        Binary::Sub,
        Binary::Mul,
        Binary::Div,
        Binary::Rem,
        Binary::Pow,
        Binary::Max,
        Binary::Min,
    ] {
        ks.push(map(
            &format!("{}_int", op.name()),
            Ty::F32,
            ints(),
            buf("o", DType::I32, shape.clone()),
            bin(op, x(), y()),
        ));
    }
    for op in [
        Unary::Neg,
        Unary::Abs,
        Unary::Floor,
        Unary::Ceil,
        Unary::Round,
    ] {
        ks.push(map(
            &format!("{}_int", op.name()),
            Ty::F32,
            ints(),
            buf("o", DType::I64, shape.clone()),
            un(op, x()),
        ));
    }
    let bools = || {
        vec![
            buf("a", DType::Bool, shape.clone()),
            buf("b", DType::Bool, shape.clone()),
        ]
    };
    for op in [Binary::And, Binary::Or, Binary::Eq, Binary::Ne] {
        ks.push(map(
            &format!("{}_bool", op.name()),
            Ty::F32,
            bools(),
            buf("o", DType::Bool, shape.clone()),
            bin(op, x(), un(Unary::Not, y())),
        ));
    }
    ks.push(map(
        "select_bool",
        Ty::F32,
        bools(),
        buf("o", DType::Bool, shape.clone()),
        Expr::select(x(), y(), Expr::Bool(true)),
    ));
    // Padding: out[i] = x[i - 1] where 1 <= i, with a dim and an int.
    let i = bin(Binary::Sub, v(0), Expr::Int(1));
    ks.push(map(
        "pad_guarded",
        Ty::F32,
        vec![buf("x", DType::BF16, vec![Dim::sym("n")])],
        buf("y", DType::BF16, vec![Dim::sym("m")]),
        Expr::Load {
            input: 0,
            index: vec![bin(
                Binary::Min,
                i.clone(),
                bin(Binary::Sub, Expr::Dim(0), Expr::Int(1)),
            )],
            guard: Some(Box::new(bin(Binary::Ge, i, Expr::Int(0)))),
        },
    ));
    // A gather: the index is loaded.
    ks.push(map(
        "gather_i4",
        Ty::F32,
        vec![
            buf("t", DType::F16, vec![st(100), st(8)]),
            buf("ids", DType::I32, vec![Dim::sym("n")]),
        ],
        buf("y", DType::F16, vec![Dim::sym("n"), st(8)]),
        ld(0, vec![ld(1, vec![v(0)]), v(1)]),
    ));
    // Sequential reductions of each kind, over the last axis, no keepdim.
    for op in [
        Reduction::Sum,
        Reduction::Prod,
        Reduction::Max,
        Reduction::Min,
    ] {
        ks.push(map(
            &format!("reduce_{}", op.name()),
            Ty::F32,
            vec![buf("x", DType::F32, vec![Dim::sym("n"), st(33)])],
            buf("y", DType::F32, vec![Dim::sym("n")]),
            Expr::reduce(op, Var(1), Expr::Int(33), ld(0, vec![v(0), v(1)])),
        ));
    }
    ks.push(map(
        "reduce_int_sum",
        Ty::F32,
        vec![buf("x", DType::I8, vec![st(3), st(33)])],
        buf("y", DType::I64, vec![st(3)]),
        Expr::reduce(
            Reduction::Sum,
            Var(1),
            Expr::Int(33),
            ld(0, vec![v(0), v(1)]),
        ),
    ));
    // NaN to integers (square roots of negative values): 0, as the
    // evaluator says; the GPU's own conversion gives the most negative
    // value (a stored code, a cast).
    let sqrt_x = un(Unary::Sqrt, ld(0, vec![v(0), v(1)]));
    ks.push(map(
        "nan_store_i3",
        Ty::F32,
        vec![buf("x", DType::F32, vec![Dim::sym("n"), st(13)])],
        buf("q", DType::I3, vec![Dim::sym("n"), st(13)]),
        sqrt_x.clone(),
    ));
    ks.push(map(
        "nan_cast_i64",
        Ty::F32,
        vec![buf("x", DType::F32, vec![Dim::sym("n"), st(13)])],
        buf("q", DType::I64, vec![Dim::sym("n"), st(13)]),
        Expr::Cast(Ty::I64, Box::new(sqrt_x)),
    ));
    // A quantizing store of a sub-byte output from a scale.
    for d in [DType::I4, DType::U4, DType::I3, DType::I6, DType::F4E2M1] {
        ks.push(map(
            &format!("quant_{d}"),
            Ty::F32,
            vec![
                buf("x", DType::BF16, vec![Dim::sym("n"), st(13)]),
                buf("s", DType::E8M0, vec![Dim::sym("n")]),
            ],
            buf("q", d, vec![Dim::sym("n"), st(13)]),
            bin(Binary::Div, ld(0, vec![v(0), v(1)]), ld(1, vec![v(0)])),
        ));
    }
    ks
}

/// softmax, layer_norm, rms_norm, keepdim reductions: row kernels.
fn row_kernels() -> Vec<Kernel> {
    let mut ks = Vec::new();
    for (d, float) in [
        (DType::F32, Ty::F32),
        (DType::BF16, Ty::F32),
        (DType::F16, Ty::F32),
        (DType::F64, Ty::F64),
    ] {
        let shape = vec![Dim::sym("b"), Dim::sym("n")];
        let x = |c: Expr| ld(0, vec![v(0), c]);
        let r = Var(2);
        let n = Expr::Dim(1);
        let m = Expr::reduce(Reduction::Max, r, n.clone(), x(v(2)));
        let e = |c: Expr| un(Unary::Exp, bin(Binary::Sub, x(c), m.clone()));
        let s = Expr::reduce(Reduction::Sum, r, n.clone(), e(v(2)));
        ks.push(map(
            &format!("softmax_{d}"),
            float,
            vec![buf("x", d, shape.clone())],
            buf("y", d, shape.clone()),
            bin(Binary::Div, e(v(1)), s),
        ));
        // layer norm with a weight: (x - mean) * rsqrt(var + eps) * w
        let nf = Expr::Cast(Ty::F32, Box::new(n.clone()));
        let mean = bin(
            Binary::Div,
            Expr::reduce(Reduction::Sum, r, n.clone(), x(v(2))),
            nf.clone(),
        );
        let dev = |c: Expr| bin(Binary::Sub, x(c), mean.clone());
        let var = bin(
            Binary::Div,
            Expr::reduce(
                Reduction::Sum,
                r,
                n.clone(),
                bin(Binary::Mul, dev(v(2)), dev(v(2))),
            ),
            nf.clone(),
        );
        let inv = bin(
            Binary::Div,
            Expr::Float(1.0),
            un(Unary::Sqrt, bin(Binary::Add, var, Expr::Float(1e-5))),
        );
        ks.push(map(
            &format!("layer_norm_{d}"),
            float,
            vec![buf("x", d, shape.clone()), buf("w", d, vec![Dim::sym("n")])],
            buf("y", d, shape.clone()),
            bin(
                Binary::Mul,
                bin(Binary::Mul, dev(v(1)), inv),
                ld(1, vec![v(1)]),
            ),
        ));
        let ms = Expr::reduce(
            Reduction::Sum,
            r,
            n.clone(),
            bin(Binary::Pow, x(v(2)), Expr::Float(2.0)),
        );
        ks.push(map(
            &format!("rms_norm_{d}"),
            float,
            vec![buf("x", d, shape.clone())],
            buf("y", d, shape.clone()),
            bin(
                Binary::Div,
                x(v(1)),
                un(Unary::Sqrt, bin(Binary::Div, ms, nf)),
            ),
        ));
        for op in [
            Reduction::Sum,
            Reduction::Max,
            Reduction::Min,
            Reduction::Prod,
        ] {
            // A product of hundreds of values in (-3, 3) lands near the
            // f32 range's end, where the order of the multiplications
            // decides between a finite value and infinity: products run
            // over values near 1.
            let term = match op {
                Reduction::Prod => bin(
                    Binary::Add,
                    Expr::Float(1.0),
                    bin(Binary::Mul, x(v(2)), Expr::Float(0.01)),
                ),
                _ => x(v(2)),
            };
            ks.push(map(
                &format!("keepdim_{}_{d}", op.name()),
                float,
                vec![buf("x", d, shape.clone())],
                buf("y", d, vec![Dim::sym("b"), st(1)]),
                Expr::reduce(op, r, n.clone(), term),
            ));
        }
    }
    ks.extend(resident_row_kernels());
    ks.push(map(
        "long_row_sum_keepdim",
        Ty::F32,
        vec![buf("x", DType::BF16, vec![Dim::sym("b"), st(6000)])],
        buf("y", DType::F32, vec![Dim::sym("b"), st(1)]),
        Expr::reduce(
            Reduction::Sum,
            Var(2),
            Expr::Int(6000),
            ld(0, vec![v(0), v(2)]),
        ),
    ));
    ks.push(map(
        "row_int_max_to_i8",
        Ty::F32,
        vec![buf("x", DType::I8, vec![st(4), st(300)])],
        buf("y", DType::I8, vec![st(4), st(300)]),
        bin(
            Binary::Sub,
            ld(0, vec![v(0), v(1)]),
            Expr::reduce(
                Reduction::Max,
                Var(2),
                Expr::Int(300),
                ld(0, vec![v(0), v(2)]),
            ),
        ),
    ));
    ks.push(map(
        "total_sum_scalar",
        Ty::F32,
        vec![buf("x", DType::F32, vec![Dim::sym("n")])],
        buf("y", DType::F32, vec![]),
        Expr::reduce(Reduction::Sum, Var(0), Expr::Dim(0), ld(0, vec![v(0)])),
    ));
    ks
}

/// Rows of static lengths: the row-resident path (and, past 4096 columns,
/// the row-reading path), with groups of 8, 4, 2 and 1 columns per vector
/// access (4096, 1024 and 1000 split evenly over
/// the block; 300 does not, so a thread's second column may be past the
/// end), weights read at the column (loaded once per block), divisions by
/// a row value (softmax's sum) and by a constant.
fn resident_row_kernels() -> Vec<Kernel> {
    let mut ks = Vec::new();
    // Rows: `b` (3 at run time) or, for the last two, more rows than a
    // grid of resident blocks has, so that blocks walk several rows with
    // the next row's loads in flight.
    for (rows, n, d) in [
        (None, 4096, DType::BF16),
        (None, 1024, DType::BF16),
        (None, 300, DType::BF16),
        (None, 1000, DType::F32),
        (None, 4096, DType::F32),
        (Some(2500), 256, DType::BF16),
        (Some(1900), 512, DType::F32),
        // Longer than the row-resident form takes: the row read once per
        // reduction (softmax's two at once) and for the output, in groups
        // of 8, 8 and 2 columns.
        (None, 8192, DType::BF16),
        (None, 5000, DType::F32),
        (None, 4098, DType::BF16),
    ] {
        let (nn, r) = (Expr::Int(n), Var(2));
        let b = rows.map_or(Dim::sym("b"), |m: u64| st(m));
        let shape = vec![b, st(n as u64)];
        let wshape = vec![st(n as u64)];
        let x = |c: Expr| ld(0, vec![v(0), c.clone()]);
        let w = |i: usize, c: Expr| ld(i, vec![c]);
        // gelu(x * s + b), exact (erf) form.
        let h = |c: Expr| {
            let y = bin(
                Binary::Add,
                bin(Binary::Mul, x(c.clone()), w(1, c.clone())),
                w(2, c),
            );
            bin(
                Binary::Mul,
                bin(Binary::Mul, Expr::Float(0.5), y.clone()),
                bin(
                    Binary::Add,
                    Expr::Float(1.0),
                    un(
                        Unary::Erf,
                        bin(Binary::Div, y, Expr::Float(std::f64::consts::SQRT_2)),
                    ),
                ),
            )
        };
        let nf = Expr::Float(n as f64);
        let mean = bin(
            Binary::Div,
            Expr::reduce(Reduction::Sum, r, nn.clone(), h(v(2))),
            nf.clone(),
        );
        let dev = |c: Expr| bin(Binary::Sub, h(c), mean.clone());
        let var = bin(
            Binary::Div,
            Expr::reduce(
                Reduction::Sum,
                r,
                nn.clone(),
                bin(Binary::Mul, dev(v(2)), dev(v(2))),
            ),
            nf,
        );
        let inv = bin(
            Binary::Div,
            Expr::Float(1.0),
            un(Unary::Sqrt, bin(Binary::Add, var, Expr::Float(1e-5))),
        );
        let ln = bin(
            Binary::Add,
            bin(Binary::Mul, bin(Binary::Mul, dev(v(1)), inv), w(3, v(1))),
            w(4, v(1)),
        );
        let mut ins = vec![buf("x", d, shape.clone())];
        for name in ["s", "b", "g", "beta"] {
            ins.push(buf(name, d, wshape.clone()));
        }
        ks.push(map(
            &format!("resident_gelu_layer_norm_{}x{n}_{d}", rows.unwrap_or(3)),
            Ty::F32,
            ins,
            buf("y", d, shape.clone()),
            ln,
        ));
        let z = |c: Expr| bin(Binary::Mul, x(c), Expr::Float(0.125));
        let m = Expr::reduce(Reduction::Max, r, nn.clone(), z(v(2)));
        let e = |c: Expr| un(Unary::Exp, bin(Binary::Sub, z(c), m.clone()));
        let sum = Expr::reduce(Reduction::Sum, r, nn.clone(), e(v(2)));
        ks.push(map(
            &format!("resident_softmax_{}x{n}_{d}", rows.unwrap_or(3)),
            Ty::F32,
            vec![buf("x", d, shape.clone())],
            buf("y", d, shape.clone()),
            bin(Binary::Div, e(v(1)), sum),
        ));
    }
    ks
}

/// Contractions: plain, batched with an epilogue, integer, quantized.
fn contract_kernels() -> Vec<Kernel> {
    let mut ks = Vec::new();
    let (m, n, k) = (Var(0), Var(1), Var(2));
    for (da, db, dout, float) in [
        (DType::F32, DType::F32, DType::F32, Ty::F32),
        (DType::BF16, DType::BF16, DType::BF16, Ty::F32),
        (DType::F16, DType::I4, DType::F16, Ty::F32),
        (DType::F64, DType::F64, DType::F64, Ty::F64),
        (DType::F8E4M3, DType::F8E5M2, DType::F32, Ty::F32),
    ] {
        ks.push(Kernel {
            name: format!("mm_{da}_{db}_{dout}"),
            inputs: vec![
                buf("a", da, vec![Dim::sym("m"), st(64)]),
                buf("b", db, vec![st(64), st(96)]),
            ],
            output: buf("c", dout, vec![Dim::sym("m"), st(96)]),
            dims: vec!["m".into()],
            float,
            body: Body::Contract {
                k,
                extent: Expr::Int(64),
                a: ld(0, vec![Expr::Var(m), Expr::Var(k)]),
                b: if db.has_integer_values() {
                    Expr::Cast(Ty::F32, Box::new(ld(1, vec![Expr::Var(k), Expr::Var(n)])))
                } else {
                    ld(1, vec![Expr::Var(k), Expr::Var(n)])
                },
                epilogue: bin(Binary::Max, Expr::Acc, Expr::Float(0.0)),
            },
        });
    }
    ks.push(Kernel {
        name: "bmm_int8".into(),
        inputs: vec![
            buf("a", DType::I8, vec![st(2), Dim::sym("m"), Dim::sym("k")]),
            buf("b", DType::I8, vec![st(2), Dim::sym("k"), st(16)]),
        ],
        output: buf("c", DType::I32, vec![st(2), Dim::sym("m"), st(16)]),
        dims: vec!["m".into(), "k".into()],
        float: Ty::F32,
        body: Body::Contract {
            k: Var(3),
            extent: Expr::Dim(1),
            a: ld(0, vec![v(0), v(1), v(3)]),
            b: ld(1, vec![v(0), v(3), v(2)]),
            epilogue: Expr::Acc,
        },
    });
    ks
}

/// Contractions for the tensor-core path: both orientations of each
/// operand, bf16 and f16, partial tiles on every axis (`m`, `n` not
/// multiples of 128 nor, where the layout allows, of 8; `k` = 136, four
/// steps of 32 and a partial one), a batch with a broadcast operand, and
/// epilogues reading other inputs at the output's index.
fn mma_kernels() -> Vec<Kernel> {
    let mut ks = Vec::new();
    let (m, n, k) = (v(0), v(1), Var(2));
    let kk = Expr::Var(k);
    for (elem, out) in [(DType::BF16, DType::BF16), (DType::F16, DType::F32)] {
        for a_km in [false, true] {
            for b_nk in [false, true] {
                // A contiguous m or n must be a multiple of 8.
                let rows = if a_km { 200 } else { 203 };
                let cols = if b_nk { 261 } else { 264 };
                let (a_shape, a_ix) = if a_km {
                    (vec![st(136), st(rows)], vec![kk.clone(), m.clone()])
                } else {
                    (vec![st(rows), st(136)], vec![m.clone(), kk.clone()])
                };
                let (b_shape, b_ix) = if b_nk {
                    (vec![st(cols), st(136)], vec![n.clone(), kk.clone()])
                } else {
                    (vec![st(136), st(cols)], vec![kk.clone(), n.clone()])
                };
                ks.push(Kernel {
                    name: format!(
                        "mma_{elem}_{}_{}",
                        if a_km { "km" } else { "mk" },
                        if b_nk { "nk" } else { "kn" }
                    ),
                    inputs: vec![
                        buf("a", elem, a_shape),
                        buf("b", elem, b_shape),
                        buf("bias", DType::F32, vec![st(cols)]),
                    ],
                    output: buf("c", out, vec![st(rows), st(cols)]),
                    dims: vec![],
                    float: Ty::F32,
                    body: Body::Contract {
                        k,
                        extent: Expr::Int(136),
                        a: ld(0, a_ix),
                        b: ld(1, b_ix),
                        epilogue: bin(Binary::Add, Expr::Acc, ld(2, vec![n.clone()])),
                    },
                });
            }
        }
    }
    // Batched, `b` shared by the batch, a symbolic `m`, a residual and a
    // tanh in the epilogue.
    let (b0, m3, n3, k3) = (v(0), v(1), v(2), Var(3));
    ks.push(Kernel {
        name: "mma_bf16_batched".into(),
        inputs: vec![
            buf("a", DType::BF16, vec![st(3), Dim::sym("m"), st(64)]),
            buf("b", DType::BF16, vec![st(64), st(72)]),
            buf("r", DType::BF16, vec![st(3), Dim::sym("m"), st(72)]),
        ],
        output: buf("c", DType::BF16, vec![st(3), Dim::sym("m"), st(72)]),
        dims: vec!["m".into()],
        float: Ty::F32,
        body: Body::Contract {
            k: k3,
            extent: Expr::Int(64),
            a: ld(0, vec![b0.clone(), m3.clone(), Expr::Var(k3)]),
            b: ld(1, vec![Expr::Var(k3), n3.clone()]),
            epilogue: bin(
                Binary::Add,
                ld(2, vec![b0, m3, n3]),
                un(Unary::Tanh, Expr::Acc),
            ),
        },
    });
    // Wide outputs take 128x256 tiles: both orientations of `b`, a partial
    // last tile of 8 columns.
    for b_nk in [false, true] {
        let (b_shape, b_ix) = if b_nk {
            (vec![st(1032), st(64)], vec![n.clone(), kk.clone()])
        } else {
            (vec![st(64), st(1032)], vec![kk.clone(), n.clone()])
        };
        ks.push(Kernel {
            name: format!("mma_bf16_wide_{}", if b_nk { "nk" } else { "kn" }),
            inputs: vec![
                buf("a", DType::BF16, vec![st(40), st(64)]),
                buf("b", DType::BF16, b_shape),
            ],
            output: buf("c", DType::BF16, vec![st(40), st(1032)]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Contract {
                k,
                extent: Expr::Int(64),
                a: ld(0, vec![m.clone(), kk.clone()]),
                b: ld(1, b_ix),
                epilogue: Expr::Acc,
            },
        });
    }
    // A register epilogue into bf16 over a batch: whole tiles store
    // through shared memory in 16-byte chunks, the last row tile and the
    // last 8 columns (a partial tile) from registers.
    let (b0, m3, n3, k3) = (v(0), v(1), v(2), Var(3));
    ks.push(Kernel {
        name: "mma_bf16_whole_tiles".into(),
        inputs: vec![
            buf("a", DType::BF16, vec![st(2), st(136), st(64)]),
            buf("b", DType::BF16, vec![st(64), st(520)]),
        ],
        output: buf("c", DType::BF16, vec![st(2), st(136), st(520)]),
        dims: vec![],
        float: Ty::F32,
        body: Body::Contract {
            k: k3,
            extent: Expr::Int(64),
            a: ld(0, vec![b0, m3, Expr::Var(k3)]),
            b: ld(1, vec![Expr::Var(k3), n3]),
            epilogue: un(Unary::Tanh, Expr::Acc),
        },
    });
    // A staged epilogue reading a bf16 residual at each element: whole
    // tiles go out in 16-byte chunks, the residual one vector load a chunk
    // (`mma::store_staged_chunks`), the edges element by element.
    ks.push(Kernel {
        name: "mma_bf16_whole_tiles_residual".into(),
        inputs: vec![
            buf("a", DType::BF16, vec![st(136), st(64)]),
            buf("b", DType::BF16, vec![st(64), st(520)]),
            buf("r", DType::BF16, vec![st(136), st(520)]),
        ],
        output: buf("c", DType::BF16, vec![st(136), st(520)]),
        dims: vec![],
        float: Ty::F32,
        body: Body::Contract {
            k,
            extent: Expr::Int(64),
            a: ld(0, vec![m.clone(), kk.clone()]),
            b: ld(1, vec![kk.clone(), n.clone()]),
            epilogue: bin(
                Binary::Add,
                ld(2, vec![m.clone(), n.clone()]),
                bin(Binary::Mul, Expr::Acc, Expr::Float(0.5)),
            ),
        },
    });
    // Operands the threads evaluate themselves: `a` read through a reshape
    // (`k` split into 17 x 8 around `m`), `b` through a transpose with a
    // guard (`k` past 130 reads as padding), in bf16 and in f16.
    for elem in [DType::BF16, DType::F16] {
        let kdiv = bin(Binary::Div, kk.clone(), Expr::Int(8));
        let krem = bin(Binary::Rem, kk.clone(), Expr::Int(8));
        ks.push(Kernel {
            name: format!("mma_{elem}_staged"),
            inputs: vec![
                buf("a", elem, vec![st(17), st(203), st(8)]),
                buf("b", elem, vec![st(261), st(136)]),
            ],
            output: buf("c", DType::F32, vec![st(203), st(261)]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Contract {
                k,
                extent: Expr::Int(136),
                a: ld(0, vec![kdiv, m.clone(), krem]),
                b: Expr::Load {
                    input: 1,
                    index: vec![n.clone(), kk.clone()],
                    guard: Some(Box::new(bin(Binary::Lt, kk.clone(), Expr::Int(130)))),
                },
                epilogue: Expr::Acc,
            },
        });
    }
    // A symbolic `k` (rows of `b` contiguous in `n`, `a` stored [k, m]).
    ks.push(Kernel {
        name: "mma_f16_symbolic_k".into(),
        inputs: vec![
            buf("a", DType::F16, vec![Dim::sym("k"), st(136)]),
            buf("b", DType::F16, vec![Dim::sym("k"), st(16)]),
        ],
        output: buf("c", DType::F32, vec![st(136), st(16)]),
        dims: vec!["k".into()],
        float: Ty::F32,
        body: Body::Contract {
            k,
            extent: Expr::Dim(0),
            a: ld(0, vec![kk.clone(), m.clone()]),
            b: ld(1, vec![kk.clone(), n.clone()]),
            epilogue: Expr::Acc,
        },
    });
    ks
}

/// Contractions with at most 16 output rows over a bf16/f16 `b` stored
/// `[k, n]`: the GEMV path. One row (index simplification writes its index
/// as 0), rows that need the 4-column lanes, a `k` that is not a multiple
/// of a block's step (the single-step tail) and a symbolic one, a fused
/// SwiGLU prologue and a residual epilogue, a batch sharing `b` and one
/// indexing it, an output narrower than `b`'s rows, f16 and f32 outputs.
fn gemv_kernels() -> Vec<Kernel> {
    let mut ks = Vec::new();
    let (m, n, k) = (v(0), v(1), Var(2));
    let kk = Expr::Var(k);
    ks.push(Kernel {
        name: "gemv_bf16_one_row".into(),
        inputs: vec![
            buf("a", DType::BF16, vec![st(1), st(64)]),
            buf("b", DType::BF16, vec![st(64), st(72)]),
        ],
        output: buf("c", DType::BF16, vec![st(1), st(72)]),
        dims: vec![],
        float: Ty::F32,
        body: Body::Contract {
            k,
            extent: Expr::Int(64),
            a: ld(0, vec![Expr::Int(0), kk.clone()]),
            b: ld(1, vec![kk.clone(), n.clone()]),
            epilogue: Expr::Acc,
        },
    });
    for (rows, kext, cols, elem, out) in [
        (3u64, 1000i64, 200u64, DType::F16, DType::F32),
        (12, 333, 136, DType::BF16, DType::BF16),
        (16, 64, 2056, DType::BF16, DType::F32),
        (5, 4099, 8, DType::F16, DType::F16),
    ] {
        ks.push(Kernel {
            name: format!("gemv_{elem}_{rows}x{cols}_k{kext}"),
            inputs: vec![
                buf("a", DType::F32, vec![st(rows), st(kext as u64)]),
                buf("b", elem, vec![st(kext as u64), st(cols)]),
                buf("bias", DType::F32, vec![st(cols)]),
            ],
            output: buf("c", out, vec![st(rows), st(cols)]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Contract {
                k,
                extent: Expr::Int(kext),
                a: ld(0, vec![m.clone(), kk.clone()]),
                b: ld(1, vec![kk.clone(), n.clone()]),
                epilogue: bin(Binary::Add, Expr::Acc, ld(2, vec![n.clone()])),
            },
        });
    }
    // A decode step's down projection: `silu(gate) * up` as `a`'s
    // prologue, a symbolic batch sharing `b`, the residual in the
    // epilogue, an output 8 columns narrower than `b`'s rows.
    let (b0, m3, n3, k3) = (v(0), v(1), v(2), Var(3));
    let (g, u) = (
        ld(0, vec![b0.clone(), Expr::Int(0), Expr::Var(k3)]),
        ld(1, vec![b0.clone(), Expr::Int(0), Expr::Var(k3)]),
    );
    let silu = bin(
        Binary::Mul,
        g.clone(),
        bin(
            Binary::Div,
            Expr::Float(1.0),
            bin(
                Binary::Add,
                Expr::Float(1.0),
                un(Unary::Exp, un(Unary::Neg, g)),
            ),
        ),
    );
    ks.push(Kernel {
        name: "gemv_bf16_swiglu_down".into(),
        inputs: vec![
            buf("gate", DType::BF16, vec![Dim::sym("batch"), st(1), st(520)]),
            buf("up", DType::BF16, vec![Dim::sym("batch"), st(1), st(520)]),
            buf("w", DType::BF16, vec![st(520), st(272)]),
            buf("x", DType::BF16, vec![Dim::sym("batch"), st(1), st(264)]),
        ],
        output: buf("y", DType::BF16, vec![Dim::sym("batch"), st(1), st(264)]),
        dims: vec!["batch".into()],
        float: Ty::F32,
        body: Body::Contract {
            k: k3,
            extent: Expr::Int(520),
            a: bin(Binary::Mul, silu, u),
            b: ld(2, vec![Expr::Var(k3), n3.clone()]),
            epilogue: bin(
                Binary::Add,
                ld(3, vec![b0.clone(), m3.clone(), n3.clone()]),
                Expr::Acc,
            ),
        },
    });
    // A batch of matrices (`b` indexed by the batch), a symbolic `k`.
    ks.push(Kernel {
        name: "gemv_f16_batched_symbolic_k".into(),
        inputs: vec![
            buf("a", DType::F16, vec![st(3), st(2), Dim::sym("k")]),
            buf("b", DType::F16, vec![st(3), Dim::sym("k"), st(96)]),
        ],
        output: buf("c", DType::F16, vec![st(3), st(2), st(96)]),
        dims: vec!["k".into()],
        float: Ty::F32,
        body: Body::Contract {
            k: k3,
            extent: Expr::Dim(0),
            a: ld(0, vec![b0.clone(), m3.clone(), Expr::Var(k3)]),
            b: ld(1, vec![b0, Expr::Var(k3), n3]),
            epilogue: un(Unary::Tanh, Expr::Acc),
        },
    });
    ks
}

/// GEMVs over dequantized weights (`PtxOptions::gemv_dequant`): int4
/// codes with bf16 group scales (W4's form), uint4 codes with zero points
/// and f16 scales, int8 codes with f32 per-channel scales (a 32-bit scale
/// is evaluated per element, not read as a column vector).
/// Contractions of bf16 or f16 activations with a dequantized 4-bit
/// weight read in fragment order (`lower::order_int4_fragments`): int4
/// with bf16 group scales at a symbolic `m` (three rows at run time),
/// uint4 with uint4 zero points and f16 scales (f16 activations, three
/// static rows, an f32 output), int4 with per-channel f32 scales under a
/// batch axis with a relu epilogue, exactly 16 rows, and 20 rows (two row
/// tiles).
fn qmma_kernels() -> Vec<Kernel> {
    use kiln_passes::lower::fragment_index;
    let cast = |e: Expr| Expr::Cast(Ty::F32, Box::new(e));
    let codes = |kk: u64, nn: u64| vec![st(nn / 64), st(kk / 32), st(2), st(32), st(32)];
    // x[.., m, k] @ b over k = Var(r), for an output of rank r.
    let kernel = |name: &str,
                  x: Buffer,
                  others: Vec<Buffer>,
                  out: Buffer,
                  depth: u64,
                  b: &dyn Fn(Expr, Expr) -> Expr,
                  epilogue: Expr| {
        let r = out.shape.rank() as u32;
        let kv = Var(r);
        let mut a_index: Vec<Expr> = (0..r - 1).map(v).collect();
        a_index.push(Expr::Var(kv));
        let mut inputs = vec![x];
        inputs.extend(others);
        let dims = out
            .shape
            .symbols()
            .into_iter()
            .map(str::to_string)
            .collect();
        Kernel {
            name: name.into(),
            inputs,
            output: out,
            dims,
            float: Ty::F32,
            body: Body::Contract {
                k: kv,
                extent: Expr::Int(depth as i64),
                a: ld(0, a_index),
                b: b(Expr::Var(kv), v(r - 1)),
                epilogue,
            },
        }
    };
    let group = |kk: &Expr, g: i64| bin(Binary::Div, kk.clone(), Expr::Int(g));
    // `x @ dequantize(w)` over k = 1024 in groups of 32 (bf16 scales),
    // `nn` columns, under the batch axes `lead`, plus 0.5.
    let g32 = |lead: &[u64], nn: u64| {
        let name = if lead.is_empty() {
            "qmma_i4_g32_split"
        } else {
            "qmma_i4_g32_split_batched"
        };
        let rows = |last: u64| {
            let mut d: Vec<Dim> = lead.iter().map(|&b| st(b)).collect();
            d.extend([Dim::sym("m"), st(last)]);
            d
        };
        kernel(
            name,
            buf("x", DType::BF16, rows(1024)),
            vec![
                buf("scale", DType::BF16, vec![st(32), st(nn)]),
                buf("w", DType::I4, codes(1024, nn)),
            ],
            buf("y", DType::BF16, rows(nn)),
            1024,
            &|kk: Expr, n: Expr| {
                bin(
                    Binary::Mul,
                    cast(ld(2, fragment_index(kk.clone(), n.clone()))),
                    ld(1, vec![group(&kk, 32), n]),
                )
            },
            bin(Binary::Add, Expr::Acc, Expr::Float(0.5)),
        )
    };
    let grouped = |kk: Expr, n: Expr| {
        bin(
            Binary::Mul,
            cast(ld(2, fragment_index(kk.clone(), n.clone()))),
            ld(1, vec![group(&kk, 128), n]),
        )
    };
    vec![
        kernel(
            "qmma_i4_g128",
            buf("x", DType::BF16, vec![Dim::sym("m"), st(256)]),
            vec![
                buf("scale", DType::BF16, vec![st(2), st(128)]),
                buf("w", DType::I4, codes(256, 128)),
            ],
            buf("y", DType::BF16, vec![Dim::sym("m"), st(128)]),
            256,
            &grouped,
            Expr::Acc,
        ),
        kernel(
            "qmma_u4_zero_f16",
            buf("x", DType::F16, vec![st(3), st(96)]),
            vec![
                buf("scale", DType::F16, vec![st(3), st(64)]),
                buf("zero", DType::U4, vec![st(3), st(64)]),
                buf("w", DType::U4, codes(96, 64)),
            ],
            buf("y", DType::F32, vec![st(3), st(64)]),
            96,
            &|kk, n| {
                bin(
                    Binary::Mul,
                    bin(
                        Binary::Sub,
                        cast(ld(3, fragment_index(kk.clone(), n.clone()))),
                        cast(ld(2, vec![group(&kk, 32), n.clone()])),
                    ),
                    ld(1, vec![group(&kk, 32), n]),
                )
            },
            Expr::Acc,
        ),
        kernel(
            "qmma_i4_channel_batched",
            buf("x", DType::BF16, vec![st(2), st(5), st(512)]),
            vec![
                buf("scale", DType::F32, vec![st(128)]),
                buf("w", DType::I4, codes(512, 128)),
            ],
            buf("y", DType::F32, vec![st(2), st(5), st(128)]),
            512,
            &|kk, n| {
                bin(
                    Binary::Mul,
                    cast(ld(2, fragment_index(kk, n.clone()))),
                    ld(1, vec![n]),
                )
            },
            bin(Binary::Max, Expr::Acc, Expr::Float(0.0)),
        ),
        kernel(
            "qmma_i4_rows16",
            buf("x", DType::BF16, vec![st(16), st(1024)]),
            vec![
                buf("scale", DType::BF16, vec![st(8), st(64)]),
                buf("w", DType::I4, codes(1024, 64)),
            ],
            buf("y", DType::F32, vec![st(16), st(64)]),
            1024,
            &grouped,
            Expr::Acc,
        ),
        // groups of 32 over k = 1024: 32 pieces, four rounds of the eight
        // warps, five column tiles (what a balanced grid splits; see
        // below)
        g32(&[], 320),
        // the same under a batch of 2 (three column tiles each: a
        // balanced grid's split tiles in the second matrix; see below)
        g32(&[2], 192),
        kernel(
            "qmma_i4_rows20",
            buf("x", DType::BF16, vec![st(20), st(128)]),
            vec![
                buf("scale", DType::BF16, vec![st(1), st(192)]),
                buf("w", DType::I4, codes(128, 192)),
            ],
            buf("y", DType::F32, vec![st(20), st(192)]),
            128,
            &grouped,
            Expr::Acc,
        ),
    ]
}

/// Dequantizing tensor-core contractions whose activations are computed:
/// a SwiGLU of two bf16 loads (the down projection's operand) at a
/// symbolic `m`, and a transposed read of `x` at 5 static rows. The
/// kernel evaluates them into shared memory rounded to bf16, so they match
/// the evaluator (which keeps them in f32) to bf16 rounding.
fn qmma_computed_kernels() -> Vec<Kernel> {
    use kiln_passes::lower::fragment_index;
    let cast = |e: Expr| Expr::Cast(Ty::F32, Box::new(e));
    let (kv, kk) = (Var(2), Expr::Var(Var(2)));
    let b = |codes: usize, scale: usize| {
        bin(
            Binary::Mul,
            cast(ld(codes, fragment_index(kk.clone(), v(1)))),
            ld(
                scale,
                vec![bin(Binary::Div, kk.clone(), Expr::Int(64)), v(1)],
            ),
        )
    };
    let gate = ld(0, vec![v(0), kk.clone()]);
    let sig = bin(
        Binary::Div,
        Expr::Float(1.0),
        bin(
            Binary::Add,
            Expr::Float(1.0),
            un(Unary::Exp, un(Unary::Neg, gate.clone())),
        ),
    );
    let swiglu = bin(
        Binary::Mul,
        bin(Binary::Mul, gate, sig),
        ld(1, vec![v(0), kk.clone()]),
    );
    vec![
        Kernel {
            name: "qmma_i4_swiglu".into(),
            inputs: vec![
                buf("gate", DType::BF16, vec![Dim::sym("m"), st(256)]),
                buf("up", DType::BF16, vec![Dim::sym("m"), st(256)]),
                buf("scale", DType::BF16, vec![st(4), st(128)]),
                buf("w", DType::I4, vec![st(2), st(8), st(2), st(32), st(32)]),
            ],
            output: buf("y", DType::F32, vec![Dim::sym("m"), st(128)]),
            dims: vec!["m".into()],
            float: Ty::F32,
            body: Body::Contract {
                k: kv,
                extent: Expr::Int(256),
                a: swiglu,
                b: b(3, 2),
                epilogue: Expr::Acc,
            },
        },
        Kernel {
            name: "qmma_i4_transposed_x".into(),
            inputs: vec![
                buf("x", DType::BF16, vec![st(128), st(5)]),
                buf("scale", DType::BF16, vec![st(2), st(64)]),
                buf("w", DType::I4, vec![st(1), st(4), st(2), st(32), st(32)]),
            ],
            output: buf("y", DType::F32, vec![st(5), st(64)]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Contract {
                k: kv,
                extent: Expr::Int(128),
                a: ld(0, vec![kk.clone(), v(0)]),
                b: b(2, 1),
                epilogue: Expr::Acc,
            },
        },
    ]
}

fn dequant_gemv_kernels() -> Vec<Kernel> {
    let (m, n, k) = (v(0), v(1), Var(2));
    let kk = Expr::Var(k);
    let cast = |e: Expr| Expr::Cast(Ty::F32, Box::new(e));
    let group = |g: i64| bin(Binary::Div, kk.clone(), Expr::Int(g));
    vec![
        Kernel {
            name: "gemv_dq_i4_g128".into(),
            inputs: vec![
                buf("x", DType::BF16, vec![st(1), st(256)]),
                buf("scale", DType::BF16, vec![st(2), st(200)]),
                buf("w", DType::I4, vec![st(256), st(200)]),
            ],
            output: buf("y", DType::BF16, vec![st(1), st(200)]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Contract {
                k,
                extent: Expr::Int(256),
                a: ld(0, vec![Expr::Int(0), kk.clone()]),
                b: bin(
                    Binary::Mul,
                    cast(ld(2, vec![kk.clone(), n.clone()])),
                    ld(1, vec![group(128), n.clone()]),
                ),
                epilogue: Expr::Acc,
            },
        },
        Kernel {
            name: "gemv_dq_u4_zero".into(),
            inputs: vec![
                buf("x", DType::F32, vec![st(3), st(96)]),
                buf("scale", DType::F16, vec![st(3), st(72)]),
                buf("zero", DType::U4, vec![st(3), st(72)]),
                buf("w", DType::U4, vec![st(96), st(72)]),
            ],
            output: buf("y", DType::F32, vec![st(3), st(72)]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Contract {
                k,
                extent: Expr::Int(96),
                a: ld(0, vec![m.clone(), kk.clone()]),
                b: bin(
                    Binary::Mul,
                    bin(
                        Binary::Sub,
                        cast(ld(3, vec![kk.clone(), n.clone()])),
                        cast(ld(2, vec![group(32), n.clone()])),
                    ),
                    ld(1, vec![group(32), n.clone()]),
                ),
                epilogue: Expr::Acc,
            },
        },
        Kernel {
            name: "gemv_dq_i8_channel".into(),
            inputs: vec![
                buf("x", DType::BF16, vec![st(2), st(40)]),
                buf("scale", DType::F32, vec![st(48)]),
                buf("w", DType::I8, vec![st(40), st(48)]),
            ],
            output: buf("y", DType::BF16, vec![st(2), st(48)]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Contract {
                k,
                extent: Expr::Int(40),
                a: ld(0, vec![m.clone(), kk.clone()]),
                b: bin(
                    Binary::Mul,
                    cast(ld(2, vec![kk.clone(), n.clone()])),
                    ld(1, vec![n.clone()]),
                ),
                epilogue: bin(Binary::Max, Expr::Acc, Expr::Float(0.0)),
            },
        },
    ]
}

/// Attention kernels for the fused path: bf16 and f16, head dims 16 to
/// 128, a value width other than the head dim, grouped-query heads, causal
/// with and without a KV-cache offset, query and key counts that are not
/// multiples of 64 (symbolic ones among them), and epilogues.
#[allow(clippy::type_complexity)]
fn attention_kernels() -> Vec<Kernel> {
    let (j, d) = (Var(4), Var(5));
    let (jj, dd) = (Expr::Var(j), Expr::Var(d));
    let mut ks = Vec::new();
    // (name, elem, out, heads, kv heads, queries, keys, depth, width, causal)
    let cases: [(&str, DType, DType, u64, u64, Dim, Dim, u64, u64, bool); 9] = [
        (
            "attn_bf16_causal_gqa",
            DType::BF16,
            DType::BF16,
            4,
            2,
            st(77),
            st(77),
            64,
            64,
            true,
        ),
        (
            "attn_f16_d128",
            DType::F16,
            DType::F32,
            2,
            2,
            st(130),
            st(131),
            128,
            128,
            false,
        ),
        // a KV cache: 50 queries, `kv` keys, the diagonal offset by kv - 50
        (
            "attn_bf16_cache",
            DType::BF16,
            DType::BF16,
            2,
            1,
            st(50),
            Dim::sym("kv"),
            32,
            16,
            true,
        ),
        // a symbolic query count (3 at run time) over 200 keys
        (
            "attn_bf16_decode",
            DType::BF16,
            DType::BF16,
            3,
            3,
            Dim::sym("q"),
            st(200),
            16,
            32,
            false,
        ),
        // more queries than keys: the first rows see no key at all
        (
            "attn_bf16_no_keys",
            DType::BF16,
            DType::BF16,
            1,
            1,
            st(70),
            st(8),
            16,
            16,
            true,
        ),
        // decode steps whose keys are split over blocks: one query over
        // 600 keys (4 splits, grouped heads, causal: every key seen), three
        // over 1100 (8 splits, a residual epilogue), and 16 causal queries
        // over 300 keys (2 splits; the first queries see fewer keys)
        (
            "attn_bf16_split_one",
            DType::BF16,
            DType::BF16,
            4,
            2,
            st(1),
            st(600),
            128,
            128,
            true,
        ),
        (
            "attn_f16_split_three",
            DType::F16,
            DType::F32,
            2,
            2,
            st(3),
            st(1100),
            64,
            64,
            false,
        ),
        (
            "attn_bf16_split_sixteen",
            DType::BF16,
            DType::BF16,
            3,
            1,
            st(16),
            st(300),
            32,
            64,
            true,
        ),
        // causal prefill at a head dim of 128 over two query tiles of the
        // warpgroup kernel (128 queries each, the second partial)
        (
            "attn_bf16_causal_d128",
            DType::BF16,
            DType::BF16,
            2,
            1,
            st(200),
            st(200),
            128,
            128,
            true,
        ),
    ];
    for (name, elem, out, h, hkv, sq, skv, depth, width, causal) in cases {
        let group = Expr::Int((h / hkv) as i64);
        let kh = bin(Binary::Div, v(1), group);
        let dim_expr = |x: &Dim, dims: &mut Vec<String>| match x {
            Dim::Static(n) => Expr::Int(*n as i64),
            Dim::Sym(s) => {
                if !dims.contains(s) {
                    dims.push(s.clone());
                }
                Expr::Dim(dims.iter().position(|y| y == s).unwrap() as u32)
            }
        };
        let mut dims = Vec::new();
        let keys = dim_expr(&skv, &mut dims);
        let queries = dim_expr(&sq, &mut dims);
        let epilogue = if out == DType::F32 {
            // a residual read at the output's index
            bin(Binary::Add, Expr::Acc, ld(3, vec![v(0), v(1), v(2), v(3)]))
        } else {
            Expr::Acc
        };
        let mut inputs = vec![
            buf("q", elem, vec![st(2), st(h), sq.clone(), st(depth)]),
            buf("k", elem, vec![st(2), st(hkv), skv.clone(), st(depth)]),
            buf("v", elem, vec![st(2), st(hkv), skv.clone(), st(width)]),
        ];
        if out == DType::F32 {
            inputs.push(buf(
                "r",
                DType::F32,
                vec![st(2), st(h), sq.clone(), st(width)],
            ));
        }
        ks.push(Kernel {
            name: name.into(),
            inputs,
            output: buf("o", out, vec![st(2), st(h), sq.clone(), st(width)]),
            dims,
            float: Ty::F32,
            body: Body::Attention(Box::new(Attention {
                j,
                keys: keys.clone(),
                d,
                depth: Expr::Int(depth as i64),
                q: ld(0, vec![v(0), v(1), v(2), dd.clone()]),
                k: ld(1, vec![v(0), kh.clone(), jj.clone(), dd.clone()]),
                v: ld(2, vec![v(0), kh, jj.clone(), v(3)]),
                scale: Expr::Float(1.0 / (depth as f64).sqrt()),
                bias: None,
                causal: causal.then(|| bin(Binary::Sub, keys, queries)),
                epilogue,
            })),
        });
    }
    // One query (a decode step), its row index written as 0, over a KV
    // cache of 130 keys.
    let mut one = ks[3].clone();
    one.name = "attn_bf16_one_query".into();
    one.dims.clear();
    for b in one.inputs.iter_mut().chain([&mut one.output]) {
        b.shape.0[2] = if b.name == "q" || b.name == "o" {
            st(1)
        } else {
            st(130)
        };
    }
    if let Body::Attention(t) = &mut one.body {
        t.keys = Expr::Int(130);
        t.q = ld(0, vec![v(0), v(1), Expr::Int(0), dd.clone()]);
    }
    ks.push(one);
    // Computed operands: the queries mixed across the head dim (as a rotary
    // embedding is, see `mix`), and (the decode steps) keys and values that
    // concatenate a cache with the step's new rows, computed from another
    // input: copied and computed rows in one tile (the new values weigh 32
    // times the cached ones, so that a wrong new row shows through the
    // tolerance; scaled by powers of two, so that their rounding to bf16 in
    // the tile, where the evaluator keeps f32, is exact).
    // q'[d] = 2 * (-q[d + 1] for even d, q[d - 1] for odd d; a head dim of
    // 64): a rotary
    // embedding's pairs at an angle of 90 degrees, exact in bf16 (the tile
    // holds computed rows rounded to bf16, the evaluator keeps f32).
    let mix = |q: Expr| {
        let at = |d: Expr| {
            let mut x = q.clone();
            if let Expr::Load { index, .. } = &mut x {
                *index.last_mut().unwrap() = d;
            }
            x
        };
        let even = bin(
            Binary::Eq,
            bin(Binary::Rem, dd.clone(), Expr::Int(2)),
            Expr::Int(0),
        );
        // (clamped: the evaluator reads both sides of a select)
        let up = un(
            Unary::Neg,
            at(bin(
                Binary::Min,
                bin(Binary::Add, dd.clone(), Expr::Int(1)),
                Expr::Int(63),
            )),
        );
        let down = at(bin(
            Binary::Max,
            bin(Binary::Sub, dd.clone(), Expr::Int(1)),
            Expr::Int(0),
        ));
        bin(Binary::Mul, Expr::select(even, up, down), Expr::Float(2.0))
    };
    let mut rope = ks[0].clone();
    rope.name = "attn_bf16_computed_q".into();
    if let Body::Attention(t) = &mut rope.body {
        t.q = mix(t.q.clone());
    }
    ks.push(rope);
    // Values read where they lie in a wider tensor: each key/value head's
    // 64 columns at 128 + 64 h of a [2, 77, 256] tensor (as W3's values
    // are each head's columns of the fused QKV projection's output).
    let mut strided = ks[0].clone();
    strided.name = "attn_bf16_strided_v".into();
    strided.inputs[2] = buf("kv", DType::BF16, vec![st(2), st(77), st(256)]);
    if let Body::Attention(t) = &mut strided.body {
        let head = bin(Binary::Div, v(1), Expr::Int(2));
        let col = bin(
            Binary::Add,
            bin(
                Binary::Add,
                Expr::Int(128),
                bin(Binary::Mul, head, Expr::Int(64)),
            ),
            v(3),
        );
        t.v = ld(2, vec![v(0), jj.clone(), col]);
    }
    ks.push(strided);
    for (base, name, cached) in [
        (5, "attn_bf16_split_cache", 599),
        (7, "attn_bf16_split_cache_sixteen", 290),
    ] {
        let mut c = ks[base].clone();
        c.name = name.into();
        let n = c.inputs.len();
        let (depth, width) = (
            c.inputs[1].shape.0[3].clone(),
            c.inputs[2].shape.0[3].clone(),
        );
        let (b, hkv) = (
            c.inputs[1].shape.0[0].clone(),
            c.inputs[1].shape.0[1].clone(),
        );
        let keys = c.inputs[1].shape.0[2].as_static().unwrap();
        for i in [1, 2] {
            c.inputs[i].shape.0[2] = st(cached);
        }
        c.inputs.push(buf(
            "k_new",
            DType::BF16,
            vec![b.clone(), hkv.clone(), st(keys - cached), depth],
        ));
        c.inputs.push(buf(
            "v_new",
            DType::BF16,
            vec![b, hkv, st(keys - cached), width],
        ));
        if let Body::Attention(t) = &mut c.body {
            let piece = |e: &Expr, new: usize, col: Expr, weight: f64| {
                let Expr::Load { index, .. } = e else {
                    unreachable!()
                };
                let lead = index[1].clone();
                let clamp = bin(Binary::Min, jj.clone(), Expr::Int(cached as i64 - 1));
                let old = match e {
                    Expr::Load { input, .. } => {
                        ld(*input, vec![v(0), lead.clone(), clamp, col.clone()])
                    }
                    _ => unreachable!(),
                };
                // (clamped: the evaluator reads both sides of a select)
                let row = bin(
                    Binary::Max,
                    bin(Binary::Sub, jj.clone(), Expr::Int(cached as i64)),
                    Expr::Int(0),
                );
                let fresh = bin(
                    Binary::Mul,
                    ld(new, vec![v(0), lead, row, col]),
                    Expr::Float(weight),
                );
                Expr::select(
                    bin(Binary::Lt, jj.clone(), Expr::Int(cached as i64)),
                    old,
                    fresh,
                )
            };
            t.k = piece(&t.k, n, dd.clone(), 2.0);
            t.v = piece(&t.v, n + 1, v(3), 32.0);
        }
        ks.push(c);
    }
    // Additive score terms (`bias`): a float bias read per query and key
    // (the grouped causal heads), a mask of 0 and -inf per batch entry and
    // key over a split decode step, and (d128, f16) a mask that hides
    // every key from the first three queries and about one in six from
    // the others, where the others see a bias.
    let neg_inf = Expr::Float(f64::NEG_INFINITY);
    let biased = [
        (0, "attn_bf16_bias_causal_gqa", vec![st(77), st(77)]),
        (5, "attn_bf16_mask_split_one", vec![st(2), st(600)]),
        (1, "attn_f16_mask_rows", vec![st(2), st(130), st(131)]),
    ];
    for (base, name, shape) in biased {
        let mut c = ks[base].clone();
        c.name = name.into();
        let n = c.inputs.len();
        c.inputs.push(buf("bias", DType::BF16, shape));
        if let Body::Attention(t) = &mut c.body {
            let x = |index: Vec<Expr>| ld(n, index);
            t.bias = Some(match base {
                0 => bin(Binary::Mul, x(vec![v(2), jj.clone()]), Expr::Float(2.0)),
                5 => Expr::select(
                    bin(Binary::Gt, x(vec![v(0), jj.clone()]), Expr::Float(0.8)),
                    neg_inf.clone(),
                    Expr::Float(0.0),
                ),
                _ => {
                    let b = x(vec![v(0), v(2), jj.clone()]);
                    let hidden = bin(
                        Binary::Or,
                        bin(Binary::Lt, v(2), Expr::Int(3)),
                        bin(Binary::Gt, b.clone(), Expr::Float(1.0)),
                    );
                    Expr::select(hidden, neg_inf.clone(), b)
                }
            });
        }
        ks.push(c);
    }
    ks
}

#[test]
fn fused_attention() {
    let ks = attention_kernels();
    for k in &ks {
        let width = k.output.shape.0[3].as_static().unwrap() as u32;
        // (splits, scratch bytes per unit: 32 lanes' accumulators, maxima
        // and sums, and a counter)
        let split = match k.name.as_str() {
            "attn_bf16_split_one" => Some((4, 32 * (64 + 4) * 4 + 4)),
            "attn_f16_split_three" => Some((8, 32 * (32 + 4) * 4 + 4)),
            "attn_bf16_split_sixteen" => Some((2, 32 * (32 + 4) * 4 + 4)),
            "attn_bf16_split_cache" => Some((4, 32 * (64 + 4) * 4 + 4)),
            "attn_bf16_split_cache_sixteen" => Some((2, 32 * (32 + 4) * 4 + 4)),
            "attn_bf16_mask_split_one" => Some((4, 32 * (64 + 4) * 4 + 4)),
            _ => None,
        };
        // The `mma.sync` engine (on sm_90a the warpgroup one is the
        // default where it applies; `warpgroup_attention_*` checks it).
        let sync = PtxOptions {
            attention_wgmma: 0,
            ..PtxOptions::from_env()
        };
        for arch in [PtxArch::Sm90a, PtxArch::Sm80] {
            let pk = compile_kernel_with(k, arch, &sync).unwrap();
            let grid = match split {
                Some((splits, scratch)) => Grid::SplitTiles {
                    tile_m: 64,
                    tile_n: width,
                    splits,
                    scratch,
                },
                None => Grid::Tiles {
                    tile_m: 64,
                    tile_n: width,
                },
            };
            assert_eq!(pk.grid, grid, "{}", k.name);
            assert_eq!(
                pk.ptx.contains("atom.acq_rel.gpu.global.add.u32"),
                split.is_some(),
                "{}",
                k.name
            );
            for needle in [
                "mma.sync.aligned.m16n8k16",
                "ldmatrix",
                "ex2.approx",
                "cp.async",
            ] {
                assert!(pk.ptx.contains(needle), "{}: no {needle}", k.name);
            }
        }
    }
    // Values at a column offset in a wider tensor are copied, not
    // computed row by row (no computed-row loop), as plain values are.
    for arch in [PtxArch::Sm90a, PtxArch::Sm80] {
        let strided = ks.iter().find(|k| k.name == "attn_bf16_strided_v").unwrap();
        let pk = compile_kernel(strided, arch).unwrap();
        assert!(!pk.ptx.contains("$L_rows"), "strided values computed");
        let computed = ks
            .iter()
            .find(|k| k.name == "attn_bf16_computed_q")
            .unwrap();
        assert!(
            compile_kernel(computed, arch)
                .unwrap()
                .ptx
                .contains("$L_rows")
        );
    }
    // A bias that reads the value's column (outside the template) takes
    // the map path.
    let mut odd = ks[0].clone();
    if let Body::Attention(t) = &mut odd.body {
        t.bias = Some(ld(0, vec![v(0), v(1), v(2), v(3)]));
    }
    let pk = compile_kernel(&odd, PtxArch::Sm90a).unwrap();
    assert!(
        !pk.ptx.contains("mma.sync"),
        "a bias reading the value's column took the fused path"
    );
    check_all("attention", &ks);
}

/// The fused attention kernels against the evaluator, on the GPU where
/// there is one (sm_90a and sm_80 modules), and on the CPU executor (the
/// map form, [`Attention::as_map`]). The probabilities enter the second
/// product rounded to the operands' type, so the GPU side is held to
/// 1/128 of the output's largest magnitude.
#[test]
fn fused_attention_runs_as_the_evaluator_says() {
    // The map form recomputes every row's scores per element: the CPU side
    // skips the largest kernel.
    let skip = |k: &Kernel, on_gpu: bool| {
        !on_gpu && ["attn_f16_d128", "attn_bf16_causal_d128"].contains(&k.name.as_str())
    };
    let tol = |on_gpu: bool| if on_gpu { 1.0 / 128.0 } else { 1e-4 };
    run_on_every_side(&attention_kernels(), skip, tol);
}

/// Fused attention with warp groups (`KILN_ATTN_WGMMA=1` and `=128`,
/// sm_90a: 128 queries a block, 64 or 128 keys a step, `wgmma` for both
/// products, the probabilities as register operands) against the evaluator on the PTX interpreter (also
/// with three blocks walking every tile) and on the GPU where there is
/// one: the kernels it applies to (head dims and widths of 64 and 128, no
/// split, no bias; grouped heads, causal, a partial query tile, computed
/// queries, an f32 output with a residual). The others keep `mma.sync`.
#[test]
fn warpgroup_attention_runs_as_the_evaluator_says() {
    for keys in [64, 128] {
        warpgroup_attention_with(keys);
    }
}

fn warpgroup_attention_with(keys: u32) {
    use rand::SeedableRng;
    let seed = common::seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let wg = PtxOptions {
        attention_wgmma: keys,
        ..PtxOptions::default()
    };
    let expected = [
        "attn_bf16_causal_gqa",
        "attn_f16_d128",
        "attn_bf16_causal_d128",
        "attn_bf16_computed_q",
        "attn_bf16_strided_v",
    ];
    let gpu = common::gpu_available();
    let mut failures = Vec::new();
    let mut taken = Vec::new();
    for k in &attention_kernels() {
        let pk = compile_kernel_with(k, PtxArch::Sm90a, &wg).unwrap();
        let sm80 = compile_kernel_with(k, PtxArch::Sm80, &wg).unwrap();
        assert!(!sm80.ptx.contains("wgmma"), "{}: wgmma on sm_80", k.name);
        if !pk.ptx.contains("wgmma.mma_async") {
            assert!(pk.ptx.contains("mma.sync"), "{}: no tensor cores", k.name);
            continue;
        }
        taken.push(k.name.clone());
        assert_eq!(pk.block, 256, "{}", k.name);
        assert!(
            matches!(pk.grid, Grid::Tiles { tile_m: 128, .. }),
            "{}: {:?}",
            k.name,
            pk.grid
        );
        let mut sides = vec![
            Side::SimWith(PtxArch::Sm90a, wg),
            Side::SimCapped(PtxArch::Sm90a, wg, 3),
        ];
        if gpu {
            sides.push(Side::GpuWith(PtxArch::Sm90a, wg));
        }
        for side in sides {
            match run_against_eval_tol(k, &mut rng, side, 1.0 / 128.0) {
                Ok(true) => {}
                r => failures.push(format!(
                    "{} ({} keys a step, {}, seed {seed}): {r:?}",
                    k.name,
                    keys,
                    side.name()
                )),
            }
        }
    }
    assert_eq!(taken, expected, "the kernels the warpgroup engine takes");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Runs `kernels` against the evaluator on the CPU executor, as sm_90a
/// and sm_80 modules on the PTX interpreter and, where there is a GPU, on
/// the GPU, with the float tolerance `tol(ptx)`; `skip(kernel, ptx)`
/// leaves the PTX sides (`ptx`) or the CPU out. Fails listing every
/// mismatch.
fn run_on_every_side(
    kernels: &[Kernel],
    skip: impl Fn(&Kernel, bool) -> bool,
    tol: impl Fn(bool) -> f64,
) {
    use rand::SeedableRng;
    let seed = common::seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let gpu = common::gpu_available();
    let mut failures = Vec::new();
    for k in kernels {
        let sides = [
            Side::Cpu,
            Side::Gpu(PtxArch::Sm90a),
            Side::Gpu(PtxArch::Sm80),
            Side::Sim(PtxArch::Sm90a),
            Side::Sim(PtxArch::Sm80),
        ];
        for side in sides {
            let ptx = side != Side::Cpu;
            if (matches!(side, Side::Gpu(_)) && !gpu) || skip(k, ptx) {
                continue;
            }
            match run_against_eval_tol(k, &mut rng, side, tol(ptx)) {
                Ok(true) => {}
                Ok(false) => failures.push(format!(
                    "{} ({}): the evaluator rejects the kernel, nothing was compared",
                    k.name,
                    side.name()
                )),
                Err(e) => failures.push(format!("{} ({}, seed {seed}): {e}", k.name, side.name())),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An epilogue that reads memory (here a gated product: `silu(gate) *
/// acc`, W3's up projection) runs on the tile staged in shared memory:
/// the accumulators are written there with 8-byte stores, then each
/// thread issues a group of 16 loads (one per element of its column; 4
/// in blocks of 128 registers) before the first of their stores. From registers, each element's load
/// waited for the previous element's store (ptxas keeps a load below a
/// store it may alias): on the H100 W3's up projection took 0.2547 ms,
/// its gate alone about 0.09. A plain product keeps the register path.
/// (`k` is one or two steps: no split-K, whose tiles issue 4 at a time.)
/// Values: the tensor-core tests' bias and residual epilogues against the
/// evaluator.
#[test]
fn epilogues_that_read_memory_issue_their_loads_together() {
    let (m, n, k) = (v(0), v(1), Var(2));
    let kk = Expr::Var(k);
    let gated = |epilogue: Expr| Kernel {
        name: "mma_gated".into(),
        inputs: vec![
            buf("a", DType::BF16, vec![st(512), st(64)]),
            buf("b", DType::BF16, vec![st(64), st(512)]),
            buf("gate", DType::BF16, vec![st(512), st(512)]),
        ],
        output: buf("c", DType::BF16, vec![st(512), st(512)]),
        dims: vec![],
        float: Ty::F32,
        body: Body::Contract {
            k,
            extent: Expr::Int(64),
            a: ld(0, vec![m.clone(), kk.clone()]),
            b: ld(1, vec![kk.clone(), n.clone()]),
            epilogue,
        },
    };
    let g = ld(2, vec![m.clone(), n.clone()]);
    let silu = bin(
        Binary::Div,
        g.clone(),
        bin(
            Binary::Add,
            Expr::Float(1.0),
            un(Unary::Exp, un(Unary::Neg, g)),
        ),
    );
    // The wide tiles (the heavy-epilogue rule would take two blocks of
    // 128 registers, 4 loads a group: `heavy_epilogues_*` runs those).
    let wide = PtxOptions {
        mma_heavy_tiling: false,
        mma_staged_chunks: true,
        ..PtxOptions::from_env()
    };
    for arch in [PtxArch::Sm90a, PtxArch::Sm80] {
        let epilogue = bin(Binary::Mul, silu.clone(), Expr::Acc);
        let pk = compile_kernel_with(&gated(epilogue), arch, &wide).unwrap();
        let ptx = &pk.ptx;
        assert!(
            ptx.contains("st.shared.v2.f32"),
            "{arch:?}: the tile is not staged"
        );
        // Whole tiles of an output whose width is a multiple of 8 take
        // 16-byte chunks: the gate's vector loads of 16 elements (two
        // chunks) before the first store.
        let chunks = &ptx[ptx.rfind("st.shared.v2.f32").unwrap()..];
        let first_store = chunks.find("st.global").expect("stores");
        // sm_80's 128x128 tiles run two blocks of 128 registers a thread:
        // 4 loads a group there (one chunk).
        let want = if arch == PtxArch::Sm90a { 2 } else { 1 };
        let loads = chunks[..first_store].matches("ld.global.v4.b32").count();
        assert_eq!(loads, want, "{arch:?}: chunk loads before the first store");
        // At the edges, element by element: 16 loads (4 on sm_80) before
        // the first store.
        let at = ptx
            .match_indices("$L_staged_edge")
            .map(|(i, _)| i)
            .find(|&i| {
                ptx[i..]
                    .split_whitespace()
                    .next()
                    .is_some_and(|l| l.ends_with(':'))
            })
            .expect("edge path");
        let epilogue = &ptx[at..];
        let first_store = epilogue.find("st.global").expect("stores");
        let want = if arch == PtxArch::Sm90a { 16 } else { 4 };
        let loads = epilogue[..first_store].matches("ld.global").count();
        assert_eq!(loads, want, "{arch:?}: loads before the first store");
        let plain = compile_kernel(&gated(Expr::Acc), arch).unwrap();
        assert!(
            !plain.ptx.contains("st.shared.v2.f32"),
            "{arch:?}: a plain product staged"
        );
    }
}

#[test]
fn tensor_core_contractions() {
    let ks = mma_kernels();
    for k in &ks {
        let Body::Contract { .. } = &k.body else {
            unreachable!()
        };
        let n = k.output.shape.0.last().and_then(|d| d.as_static()).unwrap();
        // sm_90a: warpgroup tiles, 128x256 for outputs at least 256 wide.
        let pk = compile_kernel(k, PtxArch::Sm90a).unwrap();
        let tile_n = if n >= 256 { 256 } else { 128 };
        assert_eq!(
            pk.grid,
            Grid::Tiles {
                tile_m: 128,
                tile_n
            },
            "{}",
            k.name
        );
        assert!(
            pk.ptx
                .contains(&format!("wgmma.mma_async.sync.aligned.m64n{tile_n}k16"))
        );
        assert!(
            pk.ptx.contains("fence.proxy.async.shared::cta"),
            "{}",
            k.name
        );
        // sm_80: mma.sync, 128x256 tiles from 1024 columns.
        let pk = compile_kernel(k, PtxArch::Sm80).unwrap();
        let tile_n = if n >= 1024 { 256 } else { 128 };
        assert_eq!(
            pk.grid,
            Grid::Tiles {
                tile_m: 128,
                tile_n
            },
            "{}",
            k.name
        );
        assert!(pk.ptx.contains("mma.sync.aligned.m16n8k16"), "{}", k.name);
        // Plain operands are copied with cp.async, the others evaluated and
        // stored by the threads, except runs of 8 consecutive `k` that are
        // 16 aligned bytes (the staged `a`, `k` split 17 x 8), copied too.
        let staged = k.name.contains("staged");
        assert!(pk.ptx.contains("cp.async.cg.shared.global"), "{}", k.name);
        assert_eq!(pk.ptx.contains("st.shared.v4.b32"), staged, "{}", k.name);
        assert!(pk.shared_bytes > 48 * 1024, "{}", k.name);
    }
    // Whole tiles of a register epilogue into bf16 go out in 16-byte
    // chunks through shared memory (`PtxOptions::mma_coalesced_stores`);
    // so do staged tiles whose load reads at the element's own place
    // (`PtxOptions::mma_staged_chunks`), the load one 16-byte load a chunk.
    let coalesced = PtxOptions {
        mma_coalesced_stores: true,
        ..PtxOptions::default()
    };
    let chunks = PtxOptions {
        mma_staged_chunks: true,
        ..PtxOptions::default()
    };
    for (name, on, load) in [
        ("mma_bf16_whole_tiles", coalesced, false),
        ("mma_bf16_whole_tiles_residual", chunks, true),
    ] {
        let k = ks.iter().find(|k| k.name == name).unwrap();
        for arch in [PtxArch::Sm90a, PtxArch::Sm80] {
            let pk = compile_kernel_with(k, arch, &on).unwrap();
            assert!(pk.ptx.contains("st.global.v4.b32"), "{name} {arch:?}");
            assert_eq!(pk.ptx.contains("ld.global.v4.b32"), load, "{name} {arch:?}");
            let pk = compile_kernel_with(k, arch, &PtxOptions::default()).unwrap();
            assert!(!pk.ptx.contains("st.global.v4.b32"), "{name} {arch:?}");
        }
    }
    // A contiguous `k` whose extent is not a multiple of 8 is not aligned
    // for 16-byte copies: its operand is evaluated by the threads.
    let mut odd = ks[0].clone();
    if let Body::Contract { extent, .. } = &mut odd.body {
        *extent = Expr::Int(130);
    }
    let pk = compile_kernel(&odd, PtxArch::Sm90a).unwrap();
    assert!(matches!(pk.grid, Grid::Tiles { .. }));
    assert!(pk.ptx.contains("st.shared.v4.b32"));
    // f32 operands: the generic path.
    let f32_mm = contract_kernels().into_iter().next().unwrap();
    let pk = compile_kernel(&f32_mm, PtxArch::Sm90a).unwrap();
    assert_eq!(pk.grid, Grid::Elements { per_thread: 1 });
    check_all("tensor cores", &ks);
}

/// The tensor-core contractions against the evaluator, on the GPU where
/// there is one, both as sm_90a (warpgroup) and sm_80 (`mma.sync`) modules
/// (and on the CPU executor, a check of the kernels).
#[test]
fn tensor_core_contractions_run_as_the_evaluator_says() {
    run_on_every_side(&mma_kernels(), |_, _| false, |_| 1e-4);
    // The staged epilogues' 16-byte chunks (`KILN_MMA_CHUNKS`, on unless
    // 0; the `Default` is off) on the staged kernels.
    use rand::SeedableRng;
    let seed = common::seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let chunks = PtxOptions {
        mma_staged_chunks: true,
        ..PtxOptions::from_env()
    };
    let mut sides = vec![
        Side::SimWith(PtxArch::Sm90a, chunks),
        Side::SimWith(PtxArch::Sm80, chunks),
    ];
    if common::gpu_available() {
        sides.push(Side::GpuWith(PtxArch::Sm90a, chunks));
        sides.push(Side::GpuWith(PtxArch::Sm80, chunks));
    }
    for k in mma_kernels().iter().filter(|k| {
        matches!(
            &*k.name,
            "mma_bf16_whole_tiles_residual" | "mma_bf16_batched"
        )
    }) {
        for side in sides.clone() {
            match run_against_eval_tol(k, &mut rng, side, 1e-4) {
                Ok(true) => {}
                r => panic!("{} ({}, seed {seed}): {r:?}", k.name, side.name()),
            }
        }
    }
}

/// Skinny contractions for split-K: few output tiles over a long `k`.
/// A bf16 `[96, 2048] x [2048, 72]` with a bias (one tile), an f16 batch
/// of two `[k, m] x [n, k]` over 1000 (a partial last step; two column
/// tiles, an f32 output with a residual) and an int8 `[40, 8192] x [72,
/// 8192]` (s32 accumulators).
fn skinny_mma_kernels() -> Vec<Kernel> {
    let (m, n, k) = (v(0), v(1), Var(2));
    let kk = Expr::Var(k);
    let i32_of = |e: Expr| Expr::Round(DType::I32, Box::new(e));
    let (b0, m3, n3, k3) = (v(0), v(1), v(2), Var(3));
    vec![
        Kernel {
            name: "mma_bf16_skinny".into(),
            inputs: vec![
                buf("a", DType::BF16, vec![st(96), st(2048)]),
                buf("b", DType::BF16, vec![st(2048), st(72)]),
                buf("bias", DType::F32, vec![st(72)]),
            ],
            output: buf("c", DType::BF16, vec![st(96), st(72)]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Contract {
                k,
                extent: Expr::Int(2048),
                a: ld(0, vec![m.clone(), kk.clone()]),
                b: ld(1, vec![kk.clone(), n.clone()]),
                epilogue: bin(Binary::Add, Expr::Acc, ld(2, vec![n.clone()])),
            },
        },
        Kernel {
            name: "mma_f16_skinny_batched".into(),
            inputs: vec![
                buf("a", DType::F16, vec![st(2), st(1000), st(40)]),
                buf("b", DType::F16, vec![st(136), st(1000)]),
                buf("r", DType::F32, vec![st(2), st(40), st(136)]),
            ],
            output: buf("c", DType::F32, vec![st(2), st(40), st(136)]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Contract {
                k: k3,
                extent: Expr::Int(1000),
                a: ld(0, vec![b0.clone(), Expr::Var(k3), m3.clone()]),
                b: ld(1, vec![n3.clone(), Expr::Var(k3)]),
                epilogue: bin(Binary::Add, Expr::Acc, ld(2, vec![b0, m3, n3])),
            },
        },
        Kernel {
            name: "imma_skinny".into(),
            inputs: vec![
                buf("a", DType::I8, vec![st(40), st(8192)]),
                buf("b", DType::I8, vec![st(72), st(8192)]),
            ],
            output: buf("c", DType::I32, vec![st(40), st(72)]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Contract {
                k,
                extent: Expr::Int(8192),
                a: i32_of(ld(0, vec![m, kk.clone()])),
                b: i32_of(ld(1, vec![n, kk])),
                epilogue: Expr::Acc,
            },
        },
    ]
}

/// Split-K (`KILN_MMA_SPLITS`): with `auto`, skinny contractions deal
/// each tile's `k` to several blocks (as many as the steps and the
/// multiprocessors allow; the expected counts are worked out in the
/// comments), store their accumulators and the last block adds them in
/// split order; large outputs and symbolic shapes stay one block per
/// tile. With a fixed count every contraction splits, even into splits
/// without a step (the batched kernel's one step of 64 over four blocks).
/// Against the evaluator on the PTX interpreter (both arches) and the GPU
/// where there is one; assembled without spills.
#[test]
fn split_k_contractions() {
    use rand::SeedableRng;
    let seed = common::seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let auto = PtxOptions {
        mma_splits: Some(MmaSplits::Auto),
        ..PtxOptions::default()
    };
    let tool = ptxas();
    let gpu = common::gpu_available();
    let mut failures = Vec::new();
    // (kernel, splits on sm_90a, on sm_80): sm_90a tiles take 64 of `k` a
    // step and fill 132 blocks, sm_80's 32 and 264 (two per SM); each
    // split keeps at least 4 steps.
    let expect = [
        // one tile: 2048 / 64 = 32 steps (8 splits), 64 (16, the most)
        ("mma_bf16_skinny", 8, 16),
        // four tiles: 15 whole steps (2 splits), 31 (4)
        ("mma_f16_skinny_batched", 2, 4),
        // the bf16 view's `k` is 4096: 64 and 128 steps (16 each)
        ("imma_skinny", 16, 16),
    ];
    for k in &skinny_mma_kernels() {
        let (_, s90, s80) = expect.iter().find(|e| e.0 == k.name).unwrap();
        for (arch, want) in [(PtxArch::Sm90a, *s90), (PtxArch::Sm80, *s80)] {
            let off = compile_kernel_with(k, arch, &PtxOptions::default()).unwrap();
            assert!(matches!(off.grid, Grid::Tiles { .. }), "{}", k.name);
            let pk = compile_kernel_with(k, arch, &auto).unwrap();
            match pk.grid {
                Grid::SplitTiles { splits, .. } => {
                    assert_eq!(splits, want, "{} ({arch:?})", k.name)
                }
                g => panic!("{} ({arch:?}) not split: {g:?}", k.name),
            }
            if let Some(tool) = &tool {
                let u = assemble(tool, &pk).unwrap_or_else(|e| panic!("{}: {e}", k.name));
                assert_eq!(u.spill, 0, "{} ({arch:?})", k.name);
            }
            // Also with three blocks walking every unit (the splits of a
            // tile then meet in one block's loop too).
            let mut sides = vec![Side::SimWith(arch, auto), Side::SimCapped(arch, auto, 3)];
            if gpu {
                sides.push(Side::GpuWith(arch, auto));
            }
            for side in sides {
                match run_against_eval_tol(k, &mut rng, side, 1e-4) {
                    Ok(true) => {}
                    r => failures.push(format!("{} ({}, seed {seed}): {r:?}", k.name, side.name())),
                }
            }
        }
    }
    // Enough tiles (or a symbolic `m`): no split.
    for k in mma_kernels() {
        let pk = compile_kernel_with(&k, PtxArch::Sm90a, &auto).unwrap();
        let many = k.name.contains("wide") || k.name.contains("batched");
        if many {
            assert!(matches!(pk.grid, Grid::Tiles { .. }), "{}", k.name);
        }
    }
    // Four splits of one step: three blocks add nothing.
    let fixed = PtxOptions {
        mma_splits: Some(MmaSplits::Fixed(4)),
        ..PtxOptions::default()
    };
    let batched = mma_kernels()
        .into_iter()
        .find(|k| k.name == "mma_bf16_batched")
        .unwrap();
    for arch in [PtxArch::Sm90a, PtxArch::Sm80] {
        let pk = compile_kernel_with(&batched, arch, &fixed).unwrap();
        assert!(matches!(pk.grid, Grid::SplitTiles { splits: 4, .. }));
        let side = Side::SimWith(arch, fixed);
        match run_against_eval_tol(&batched, &mut rng, side, 1e-4) {
            Ok(true) => {}
            r => failures.push(format!(
                "{} ({}, seed {seed}): {r:?}",
                batched.name,
                side.name()
            )),
        }
    }
    assert_eq!(MmaSplits::parse(" auto"), Some(MmaSplits::Auto));
    assert_eq!(MmaSplits::parse("8"), Some(MmaSplits::Fixed(8)));
    assert_eq!(MmaSplits::parse("6"), None);
    assert_eq!(MmaSplits::parse("128"), None);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Tensor copies (`KILN_MMA_TMA`): the warpgroup contractions of plain
/// bf16/f16 operands (every orientation, partial tiles on every axis, a
/// batch with a shared `b`, wide tiles, and split-K's skinny ones) take
/// their slices by `cp.async.bulk.tensor` from two tensor maps, one
/// thread issuing per stage and an mbarrier per stage; against the
/// evaluator on the PTX interpreter (sm_90a; sm_80 keeps `cp.async`; also
/// with two blocks walking all the tiles) and the GPU where there is one,
/// assembled without spills. Staged operands
/// keep the threads' copies.
#[test]
fn tensor_copies_feed_warpgroup_contractions() {
    use rand::SeedableRng;
    let seed = common::seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let tma = PtxOptions {
        mma_tma: true,
        ..PtxOptions::default()
    };
    let split = PtxOptions {
        mma_splits: Some(MmaSplits::Auto),
        ..tma
    };
    let tool = ptxas();
    let gpu = common::gpu_available();
    let mut failures = Vec::new();
    let mut fed = 0;
    let skinny: Vec<(Kernel, PtxOptions)> = skinny_mma_kernels()
        .into_iter()
        .filter(|k| !k.name.starts_with("imma"))
        .map(|k| (k, split))
        .collect();
    let all = mma_kernels().into_iter().map(|k| (k, tma)).chain(skinny);
    for (k, opts) in all {
        let pk = compile_kernel_with(&k, PtxArch::Sm90a, &opts).unwrap();
        let staged = k.name.contains("staged");
        assert_eq!(pk.tensor_maps.is_empty(), staged, "{}", k.name);
        assert_eq!(
            pk.ptx.contains("cp.async.bulk.tensor.3d"),
            !staged,
            "{}",
            k.name
        );
        if staged {
            continue;
        }
        fed += 1;
        let sm80 = compile_kernel_with(&k, PtxArch::Sm80, &opts).unwrap();
        assert!(sm80.tensor_maps.is_empty(), "{}", k.name);
        if let Some(tool) = &tool {
            let u = assemble(tool, &pk).unwrap_or_else(|e| panic!("{}: {e}", k.name));
            assert_eq!(u.spill, 0, "{}", k.name);
        }
        // Also with two blocks walking every tile: the steps issued and
        // consumed (and so each barrier's phase) carry across tiles.
        let mut sides = vec![
            Side::SimWith(PtxArch::Sm90a, opts),
            Side::SimCapped(PtxArch::Sm90a, opts, 2),
        ];
        if gpu {
            sides.push(Side::GpuWith(PtxArch::Sm90a, opts));
        }
        for side in sides {
            match run_against_eval_tol(&k, &mut rng, side, 1e-4) {
                Ok(true) => {}
                r => failures.push(format!("{} ({}, seed {seed}): {r:?}", k.name, side.name())),
            }
        }
    }
    assert!(fed >= 10, "{fed} kernels took tensor copies");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Warp specialization (`KILN_MMA_WS`): the warpgroup contractions fed
/// by tensor copies take a ninth warp whose first lane issues every
/// step's copies once the stage is released, while the two warp groups
/// wait for each stage's bytes, compute and release it (an mbarrier each
/// way per stage, a named barrier among the 256 computing threads only);
/// with a staged epilogue (bias, residual) the copies of the next tile
/// wait for it. Against the evaluator on the PTX interpreter (whose
/// copying thread runs as far ahead as the barriers let it: a missing
/// wait overwrites a stage before its `mma`s read it), also with two
/// blocks walking every tile (the phases carry across tiles) and split-K,
/// and on the GPU where there is one; assembled without spills at the
/// 224 registers 288 threads leave.
#[test]
fn warp_specialized_contractions_run_as_the_evaluator_says() {
    use rand::SeedableRng;
    let seed = common::seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let ws = PtxOptions {
        mma_specialize: true,
        ..PtxOptions::default()
    };
    let split = PtxOptions {
        mma_splits: Some(MmaSplits::Auto),
        ..ws
    };
    let tool = ptxas();
    let gpu = common::gpu_available();
    let mut failures = Vec::new();
    let (mut fed, mut staged_out) = (0, 0);
    let skinny: Vec<(Kernel, PtxOptions)> = skinny_mma_kernels()
        .into_iter()
        .filter(|k| !k.name.starts_with("imma"))
        .map(|k| (k, split))
        .collect();
    let all = mma_kernels().into_iter().map(|k| (k, ws)).chain(skinny);
    for (k, opts) in all {
        let pk = compile_kernel_with(&k, PtxArch::Sm90a, &opts).unwrap();
        if k.name.contains("staged") {
            assert_eq!(pk.block, 256, "{}", k.name);
            continue;
        }
        assert_eq!(pk.block, 288, "{}", k.name);
        assert!(
            pk.ptx.contains("mbarrier.arrive.shared::cta.b64"),
            "{}",
            k.name
        );
        fed += 1;
        if pk.ptx.contains("bar.sync 1, 256") {
            staged_out += 1;
        }
        if let Some(tool) = &tool {
            let u = assemble(tool, &pk).unwrap_or_else(|e| panic!("{}: {e}", k.name));
            assert_eq!(u.spill, 0, "{}", k.name);
            assert!(u.regs <= 224, "{}: {} registers", k.name, u.regs);
        }
        let mut sides = vec![
            Side::SimWith(PtxArch::Sm90a, opts),
            Side::SimCapped(PtxArch::Sm90a, opts, 2),
        ];
        if gpu {
            sides.push(Side::GpuWith(PtxArch::Sm90a, opts));
        }
        for side in sides {
            match run_against_eval_tol(&k, &mut rng, side, 1e-4) {
                Ok(true) => {}
                r => failures.push(format!("{} ({}, seed {seed}): {r:?}", k.name, side.name())),
            }
        }
    }
    assert!(fed >= 10, "{fed} kernels were warp-specialized");
    assert!(staged_out >= 1, "no staged epilogue among them");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The tiling rule for gated staged epilogues (`KILN_MMA_HEAVY`): a GeGLU
/// product (`gelu(acc) * gate[m, n]`) and a softplus-gated one take
/// 128x128 warpgroup tiles of two blocks per multiprocessor on sm_90a; a
/// SwiGLU or sigmoid-gated product into bf16 (the logistic's four
/// approximate instructions), a bias with GELU (no matrix read), a
/// residual sum (no transcendental) and register epilogues keep 128x256;
/// without the rule all keep 128x256. Every kernel against the
/// evaluator on the interpreter (and the GPU where there is one), the
/// heavy ones assembled at two blocks' 128 registers without spills;
/// among them divisors that read the accumulator or the column, whose
/// reciprocal must not be shared along a row or column.
#[test]
fn heavy_epilogues_take_two_blocks_per_multiprocessor() {
    use rand::SeedableRng;
    let seed = common::seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (m, n, k) = (v(0), v(1), Var(2));
    let kk = Expr::Var(k);
    let silu = |x: Expr| {
        let e = un(Unary::Exp, un(Unary::Neg, x.clone()));
        bin(Binary::Div, x, bin(Binary::Add, Expr::Float(1.0), e))
    };
    let gelu = |x: Expr| {
        let half = bin(Binary::Mul, Expr::Float(0.5), x.clone());
        let erf = un(
            Unary::Erf,
            bin(Binary::Mul, x, Expr::Float(std::f64::consts::FRAC_1_SQRT_2)),
        );
        bin(Binary::Mul, half, bin(Binary::Add, Expr::Float(1.0), erf))
    };
    let (rows, cols, depth) = (200u64, 520u64, 192i64);
    let sigmoid = |x: Expr| {
        let e = un(Unary::Exp, un(Unary::Neg, x));
        bin(
            Binary::Div,
            Expr::Float(1.0),
            bin(Binary::Add, e, Expr::Float(1.0)),
        )
    };
    let cases: Vec<(&str, Expr, bool)> = vec![
        // SiLU into bf16 takes four approximate instructions (the
        // logistic): light enough for the default tiles.
        (
            "swiglu",
            bin(
                Binary::Mul,
                silu(Expr::Acc),
                ld(2, vec![m.clone(), n.clone()]),
            ),
            false,
        ),
        (
            "sigmoid_gated",
            bin(
                Binary::Mul,
                sigmoid(Expr::Acc),
                ld(2, vec![m.clone(), n.clone()]),
            ),
            false,
        ),
        // softplus(acc) * g: a logarithm stays heavy.
        (
            "softplus_gated",
            bin(
                Binary::Mul,
                un(
                    Unary::Log,
                    bin(Binary::Add, Expr::Float(1.0), un(Unary::Exp, Expr::Acc)),
                ),
                ld(2, vec![m.clone(), n.clone()]),
            ),
            true,
        ),
        (
            "bias_gelu",
            gelu(bin(Binary::Add, Expr::Acc, ld(3, vec![n.clone()]))),
            false,
        ),
        (
            "geglu",
            bin(
                Binary::Mul,
                gelu(Expr::Acc),
                ld(2, vec![m.clone(), n.clone()]),
            ),
            true,
        ),
        (
            "residual",
            bin(Binary::Add, Expr::Acc, ld(2, vec![m.clone(), n.clone()])),
            false,
        ),
        ("plain_silu", silu(Expr::Acc), false),
        // Divisors that read the accumulator, or the column: each
        // element's own (a reciprocal shared along a row or column
        // would be wrong).
        // `1 / (1 + acc^2)`: the divisor reads the accumulator but stays
        // at least 1, so rounding in a different summation order cannot
        // blow up (a bare `1 / acc` near zero is ill-conditioned).
        (
            "recip",
            bin(
                Binary::Div,
                Expr::Float(1.0),
                bin(
                    Binary::Add,
                    Expr::Float(1.0),
                    bin(Binary::Mul, Expr::Acc, Expr::Acc),
                ),
            ),
            false,
        ),
        (
            "per_column",
            bin(Binary::Div, Expr::Acc, ld(3, vec![n.clone()])),
            false,
        ),
    ];
    let gpu = common::gpu_available();
    let tool = ptxas();
    let mut failures = Vec::new();
    for (name, epilogue, heavy) in cases {
        let kernel = Kernel {
            name: format!("mma_heavy_{name}"),
            inputs: vec![
                buf("a", DType::BF16, vec![st(rows), st(depth as u64)]),
                buf("b", DType::BF16, vec![st(depth as u64), st(cols)]),
                buf("g", DType::BF16, vec![st(rows), st(cols)]),
                buf("bias", DType::F32, vec![st(cols)]),
            ],
            output: buf("c", DType::BF16, vec![st(rows), st(cols)]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Contract {
                k,
                extent: Expr::Int(depth),
                a: ld(0, vec![m.clone(), kk.clone()]),
                b: ld(1, vec![kk.clone(), n.clone()]),
                epilogue,
            },
        };
        let rule = PtxOptions {
            mma_heavy_tiling: true,
            ..PtxOptions::default()
        };
        let tiles = |o: &PtxOptions| compile_kernel_with(&kernel, PtxArch::Sm90a, o).unwrap();
        let (with, without) = (tiles(&rule), tiles(&PtxOptions::default()));
        let wide = Grid::Tiles {
            tile_m: 128,
            tile_n: 256,
        };
        let narrow = Grid::Tiles {
            tile_m: 128,
            tile_n: 128,
        };
        assert_eq!(without.grid, wide, "{name}");
        assert_eq!(with.grid, if heavy { narrow } else { wide }, "{name}");
        assert_eq!(with.ptx.contains(".minnctapersm 2"), heavy, "{name}");
        // The logistic's approximate reciprocal (the precise `exp` tests
        // for infinities; the fast one does not).
        if matches!(name, "swiglu" | "sigmoid_gated" | "plain_silu") {
            assert!(with.ptx.contains("rcp.approx.ftz.f32"), "{name}");
            assert!(!with.ptx.contains("testp.infinite"), "{name}");
        }
        // sm_80 keeps its own tiles.
        let sm80 = compile_kernel_with(&kernel, PtxArch::Sm80, &rule).unwrap();
        assert!(!sm80.ptx.contains("wgmma"), "{name}");
        if let Some(tool) = &tool
            && heavy
        {
            let u = assemble(tool, &with).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(u.spill, 0, "{name}");
            assert!(u.regs <= 128, "{name}: {} registers", u.regs);
        }
        let mut sides = vec![Side::SimWith(PtxArch::Sm90a, rule)];
        if gpu {
            sides.push(Side::GpuWith(PtxArch::Sm90a, rule));
        }
        for side in sides {
            match run_against_eval_tol(&kernel, &mut rng, side, 1e-3) {
                Ok(true) => {}
                r => failures.push(format!("{name} ({}, seed {seed}): {r:?}", side.name())),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// int8 contractions (`a[m, k] . b[n, k]`, both `k`-contiguous i8, integer
/// accumulation) that take `mma.sync.m16n8k32` on s8: an i32 output at
/// awkward sizes, a `k` tail that is not a whole step (48), a batched one
/// with a symbolic `m` and a float epilogue scaling by row and column.
fn int8_mma_kernels() -> Vec<Kernel> {
    let (m, n, k) = (v(0), v(1), Var(2));
    let kk = Expr::Var(k);
    let i32_of = |e: Expr| Expr::Round(DType::I32, Box::new(e));
    let mut ks = Vec::new();
    for (rows, cols, depth) in [(203, 261, 96), (70, 40, 48)] {
        ks.push(Kernel {
            name: format!("imma_{rows}x{cols}_k{depth}"),
            inputs: vec![
                buf("a", DType::I8, vec![st(rows), st(depth)]),
                buf("b", DType::I8, vec![st(cols), st(depth)]),
            ],
            output: buf("c", DType::I32, vec![st(rows), st(cols)]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Contract {
                k,
                extent: Expr::Int(depth as i64),
                a: i32_of(ld(0, vec![m.clone(), kk.clone()])),
                b: i32_of(ld(1, vec![n.clone(), kk.clone()])),
                epilogue: Expr::Acc,
            },
        });
    }
    let (b0, m3, n3, k3) = (v(0), v(1), v(2), Var(3));
    let kk3 = Expr::Var(k3);
    ks.push(Kernel {
        name: "imma_batched_scaled".into(),
        inputs: vec![
            buf("a", DType::I8, vec![st(2), Dim::sym("m"), st(272)]),
            buf("b", DType::I8, vec![st(136), st(272)]),
            buf("sa", DType::F32, vec![st(2), Dim::sym("m")]),
            buf("sb", DType::F32, vec![st(136)]),
        ],
        output: buf("c", DType::BF16, vec![st(2), Dim::sym("m"), st(136)]),
        dims: vec!["m".into()],
        float: Ty::F32,
        body: Body::Contract {
            k: k3,
            extent: Expr::Int(272),
            a: i32_of(ld(0, vec![b0.clone(), m3.clone(), kk3.clone()])),
            b: i32_of(ld(1, vec![n3.clone(), kk3])),
            epilogue: bin(
                Binary::Mul,
                bin(
                    Binary::Mul,
                    Expr::Cast(Ty::F32, Box::new(Expr::Acc)),
                    ld(2, vec![b0, m3]),
                ),
                ld(3, vec![n3]),
            ),
        },
    });
    ks
}

/// fp8 contractions (`e4m3` and `e5m2` operands widened to bf16 or f32,
/// f32 accumulation, `k`-contiguous) that take `mma.sync.m16n8k32` on fp8
/// in sm_90a modules.
fn fp8_mma_kernels() -> Vec<Kernel> {
    let (m, n, k) = (v(0), v(1), Var(2));
    let kk = Expr::Var(k);
    let mut ks = Vec::new();
    for (elem, wide, out, rows, cols, depth) in [
        (DType::F8E4M3, DType::BF16, DType::BF16, 203, 261, 96),
        (DType::F8E5M2, DType::F32, DType::F32, 70, 40, 48),
    ] {
        let widen = |e: Expr| Expr::Round(wide, Box::new(e));
        ks.push(Kernel {
            name: format!("f8mma_{}_{rows}x{cols}_k{depth}", elem.name()),
            inputs: vec![
                buf("a", elem, vec![st(rows), st(depth)]),
                buf("b", elem, vec![st(cols), st(depth)]),
                buf("s", DType::F32, vec![st(cols)]),
            ],
            output: buf("c", out, vec![st(rows), st(cols)]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Contract {
                k,
                extent: Expr::Int(depth as i64),
                a: widen(ld(0, vec![m.clone(), kk.clone()])),
                b: widen(ld(1, vec![n.clone(), kk.clone()])),
                epilogue: bin(Binary::Mul, Expr::Acc, ld(2, vec![n.clone()])),
            },
        });
    }
    ks
}

/// The fp8 contractions take the fp8 tensor-core path in sm_90a modules
/// (`f8mma_` entries, warpgroup `wgmma ... k32.f32.e4m3.e4m3`, PTX ISA
/// 8.4) and the generic one in sm_80 modules, and give the evaluator's
/// results on every side.
#[test]
fn fp8_tensor_core_contractions_run_as_the_evaluator_says() {
    let ks = fp8_mma_kernels();
    for k in &ks {
        let pk = compile_kernel(k, PtxArch::Sm90a).unwrap();
        assert!(pk.entry.starts_with("f8mma_"), "{}: {}", k.name, pk.entry);
        assert_eq!(pk.entry, kiln::codegen::ptx::entry_name(k));
        let fp8 = if k.inputs[0].dtype == DType::F8E4M3 {
            "e4m3"
        } else {
            "e5m2"
        };
        let want = format!("k32.f32.{fp8}.{fp8} {{");
        assert!(pk.ptx.contains(&want), "{}: warpgroup fp8", k.name);
        assert!(pk.ptx.contains(".version 8.4"), "{}", k.name);
        let old = compile_kernel(k, PtxArch::Sm80).unwrap();
        assert!(!old.entry.starts_with("f8mma_"), "{}", k.name);
    }
    check_all("fp8 mma", &ks);
    // On the GPU, 1e-3 of the largest output: Hopper's fp8 tensor cores add
    // into their f32 accumulators with fewer mantissa bits kept than an f32
    // addition (a 70x40 product over k 48 was 1.1e-4 of its value off on an
    // H100, 2026-12-05); the interpreter's f32 sums meet the same bound.
    run_on_every_side(&ks, |_, _| false, |ptx| if ptx { 1e-3 } else { 1e-4 });
}

/// The int8 contractions take the s8 tensor-core path on both arches
/// (`imma_` entries; warpgroup `wgmma ... k32.s32.s8.s8` on sm_90a,
/// `mma.sync.m16n8k32` on sm_80; s32 accumulators), assemble, and give the
/// evaluator's results exactly (i32) on the CPU executor, the PTX
/// interpreter and the GPU where there is one.
/// A `b` stored `[k, n]` or a `k` that is not a multiple of 16 does not.
#[test]
fn int8_tensor_core_contractions_run_as_the_evaluator_says() {
    let ks = int8_mma_kernels();
    for k in &ks {
        let pk = compile_kernel(k, PtxArch::Sm90a).unwrap();
        assert!(pk.entry.starts_with("imma_"), "{}: {}", k.name, pk.entry);
        assert_eq!(pk.entry, kiln::codegen::ptx::entry_name(k));
        assert!(
            pk.ptx.contains("k32.s32.s8.s8 {"),
            "{}: warpgroup s8",
            k.name
        );
        let pk = compile_kernel(k, PtxArch::Sm80).unwrap();
        assert!(pk.entry.starts_with("imma_"), "{}: {}", k.name, pk.entry);
        assert!(
            pk.ptx
                .contains("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32")
        );
        assert!(!pk.ptx.contains("wgmma"), "{}", k.name);
    }
    let mut kn = ks[0].clone();
    kn.inputs[1].shape = Shape(vec![st(96), st(261)]);
    if let Body::Contract { b, .. } = &mut kn.body {
        *b = Expr::Round(DType::I32, Box::new(ld(1, vec![Expr::Var(Var(2)), v(1)])));
    }
    let mut odd = ks[1].clone();
    odd.inputs[0].shape = Shape(vec![st(70), st(40)]);
    odd.inputs[1].shape = Shape(vec![st(40), st(40)]);
    if let Body::Contract { extent, .. } = &mut odd.body {
        *extent = Expr::Int(40);
    }
    // Codes rounded to u8 (which wraps negative ones) and f64 arithmetic
    // take other paths too.
    let mut wrap = ks[1].clone();
    if let Body::Contract { a, .. } = &mut wrap.body {
        *a = Expr::Round(DType::U8, Box::new(ld(0, vec![v(0), Expr::Var(Var(2))])));
    }
    let mut wide = ks[1].clone();
    wide.float = Ty::F64;
    for k in [&kn, &odd, &wrap, &wide] {
        let pk = compile_kernel(k, PtxArch::Sm80).unwrap();
        assert!(!pk.entry.starts_with("imma_"), "{}", k.name);
    }
    check_all("int8 mma", &ks);
    run_on_every_side(&ks, |_, _| false, |_| 1e-4);
}

#[test]
fn gemv_contractions() {
    let ks = gemv_kernels();
    for k in &ks {
        let r = k.output.shape.rank();
        let rows = k.output.shape.0[r - 2].as_static().unwrap() as u32;
        for arch in [PtxArch::Sm90a, PtxArch::Sm80] {
            let pk = compile_kernel_with(k, arch, &PtxOptions::default()).unwrap();
            assert!(pk.entry.starts_with("gemv_"), "{}", k.name);
            assert!(
                matches!(pk.grid, Grid::Tiles { tile_m, tile_n }
                    if tile_m == rows && [16, 32, 64].contains(&tile_n)),
                "{}: {:?}",
                k.name,
                pk.grid
            );
            // 16-byte loads of 8 columns, 8-byte ones of 4 past 8 rows.
            let width = if rows <= 8 { "v4" } else { "v2" };
            let load = format!("ld.global.nc.L1::no_allocate.{width}.b32");
            assert!(pk.ptx.contains(&load), "{}", k.name);
            assert!(!pk.ptx.contains("mma"), "{}", k.name);
        }
    }
    // Narrow outputs take narrow tiles (more blocks), wide ones 64 columns.
    let tile = |k: &Kernel| match compile_kernel_with(k, PtxArch::Sm90a, &PtxOptions::default())
        .unwrap()
        .grid
    {
        Grid::Tiles { tile_n, .. } => tile_n,
        g => panic!("{g:?}"),
    };
    assert_eq!(tile(&ks[0]), 16);
    assert_eq!(tile(&ks[3]), 16);
    let mut wide = ks[0].clone();
    wide.inputs[1].shape = Shape(vec![st(64), st(8192)]);
    wide.output.shape = Shape(vec![st(1), st(8192)]);
    assert_eq!(tile(&wide), 64);
    // More than 16 rows, a `b` stored `[n, k]`, or f32 operands: other paths.
    let mut tall = ks[1].clone();
    tall.inputs[0].shape = Shape(vec![st(17), st(1000)]);
    tall.output.shape = Shape(vec![st(17), st(200)]);
    let mut nk = ks[0].clone();
    if let Body::Contract { b, .. } = &mut nk.body {
        *b = ld(1, vec![v(1), Expr::Var(Var(2))]);
    }
    nk.inputs[1].shape = Shape(vec![st(72), st(64)]);
    let f32_mm = contract_kernels().into_iter().next().unwrap();
    for k in [&tall, &nk, &f32_mm] {
        let pk = compile_kernel(k, PtxArch::Sm90a).unwrap();
        assert!(!pk.entry.starts_with("gemv_"), "{}", k.name);
    }
    check_all("gemv", &ks);
    // The tilings not yet the default: every tile width, long unrolls, `a`
    // staged in shared memory (where `k` is static and fits: not the
    // symbolic `k`, nor 5 x 4099 values), assembled without spills.
    let tool = ptxas();
    for (tile_n, unroll) in [(16, 16), (32, 32), (64, 4)] {
        let tiling = GemvTiling {
            tile_n,
            unroll,
            stage_a: true,
        };
        let opts = PtxOptions {
            gemv: Some(tiling),
            ..PtxOptions::default()
        };
        for k in &ks {
            let pk = compile_kernel_with(k, PtxArch::Sm90a, &opts).unwrap();
            let r = k.output.shape.rank();
            let rows = k.output.shape.0[r - 2].as_static().unwrap() as u32;
            assert_eq!(
                pk.grid,
                Grid::Tiles {
                    tile_m: rows,
                    tile_n
                },
                "{}",
                k.name
            );
            let staged = !k.name.contains("symbolic_k") && !k.name.contains("k4099");
            assert_eq!(pk.ptx.contains("stage_end"), staged, "{}", k.name);
            if let Some(tool) = &tool {
                let u = assemble(tool, &pk).unwrap_or_else(|e| panic!("{}: {e}", k.name));
                assert_eq!(u.spill, 0, "{} spills at {tile_n},{unroll}", k.name);
            }
        }
    }
    assert_eq!(
        GemvTiling::parse("32, 16 ,stage"),
        Some(GemvTiling {
            tile_n: 32,
            unroll: 16,
            stage_a: true
        })
    );
    for bad in ["", "24,8", "32,0", "32,8,x", "32,8,stage,1"] {
        assert_eq!(GemvTiling::parse(bad), None, "{bad}");
    }
    assert_eq!(
        RowTuning::parse("4, reload"),
        Some(RowTuning {
            min_blocks: 4,
            reload_fixed: true
        })
    );
    assert_eq!(RowTuning::parse("0"), Some(RowTuning::default()));
    for bad in ["", "9", "4,x", "4,reload,1", "reload"] {
        assert_eq!(RowTuning::parse(bad), None, "{bad}");
    }
}

/// The GEMV kernels against the evaluator, on the GPU where there is one
/// (both architectures' modules), and on the CPU executor.
#[test]
fn gemv_contractions_run_as_the_evaluator_says() {
    run_on_every_side(&gemv_kernels(), |_, _| false, |_| 1e-4);
}

/// A concatenation whose select's sides read different inputs (one a
/// rotary-style computation), and a leaky ReLU whose sides reuse the
/// condition's load.
fn select_kernels() -> [Kernel; 2] {
    let (r, c) = (v(0), v(1));
    let first = ld(
        0,
        vec![bin(Binary::Min, r.clone(), Expr::Int(4)), c.clone()],
    );
    let row = bin(
        Binary::Max,
        bin(Binary::Sub, r.clone(), Expr::Int(5)),
        Expr::Int(0),
    );
    let second = bin(
        Binary::Add,
        bin(
            Binary::Mul,
            ld(1, vec![row.clone(), c.clone()]),
            un(Unary::Cos, ld(2, vec![c.clone()])),
        ),
        bin(
            Binary::Mul,
            ld(
                1,
                vec![
                    row,
                    bin(
                        Binary::Rem,
                        bin(Binary::Add, c.clone(), Expr::Int(1)),
                        Expr::Int(7),
                    ),
                ],
            ),
            un(Unary::Sin, ld(2, vec![c.clone()])),
        ),
    );
    let concat = map(
        "concat_branch",
        Ty::F32,
        vec![
            buf("a", DType::BF16, vec![st(5), st(7)]),
            buf("b", DType::BF16, vec![st(3), st(7)]),
            buf("t", DType::F32, vec![st(7)]),
        ],
        buf("y", DType::BF16, vec![st(8), st(7)]),
        Expr::select(bin(Binary::Lt, r.clone(), Expr::Int(5)), first, second),
    );
    let x = ld(0, vec![r, c]);
    let leaky = map(
        "leaky_relu_selp",
        Ty::F32,
        vec![buf("x", DType::F32, vec![st(8), st(7)])],
        buf("y", DType::F32, vec![st(8), st(7)]),
        Expr::select(
            bin(Binary::Gt, x.clone(), Expr::Float(0.0)),
            x.clone(),
            bin(Binary::Mul, x, Expr::Float(0.1)),
        ),
    );
    [concat, leaky]
}

/// With `branch_selects`, a concatenation's select, whose sides read
/// different inputs (one a rotary-style computation), branches so that
/// only the chosen side runs; a select whose sides reuse the condition's
/// load stays branch-free. Both kinds against the evaluator, on the GPU
/// where there is one (with the process's options).
#[test]
fn selects_branch_where_the_sides_read_memory() {
    let [concat, leaky] = select_kernels();
    let on = PtxOptions {
        branch_selects: true,
        ..PtxOptions::default()
    };
    let tool = ptxas();
    let pk = compile_kernel_with(&concat, PtxArch::Sm90a, &on).unwrap();
    assert!(pk.ptx.contains("sel_else"), "{}", pk.ptx);
    if let Some(tool) = &tool {
        assemble(tool, &pk).unwrap();
    }
    let pk = compile_kernel_with(&leaky, PtxArch::Sm90a, &on).unwrap();
    assert!(!pk.ptx.contains("sel_else"), "{}", pk.ptx);
    assert!(pk.ptx.contains("selp.f32"), "{}", pk.ptx);
    // Off by default (not yet run on a GPU): both sides computed.
    let pk = compile_kernel_with(&concat, PtxArch::Sm90a, &PtxOptions::default()).unwrap();
    assert!(!pk.ptx.contains("sel_else"), "{}", pk.ptx);
    let ks = [concat, leaky];
    check_all("selects", &ks);
    run_on_every_side(&ks, |_, _| false, |_| 1e-4);
}

/// The grouped tile order (`KILN_MMA_GROUP`, not yet the default): groups
/// of 3 row tiles (so the last group of a 7-tile-tall output is short) on
/// the tensor-core tests' batched, partial and wide kernels, also with
/// three blocks walking every tile, against the evaluator. A tile visited
/// twice or left out fails it.
#[test]
fn grouped_tile_orders_run_as_the_evaluator_says() {
    use rand::SeedableRng;
    let seed = common::seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let grouped = PtxOptions {
        mma_group: 3,
        ..PtxOptions::default()
    };
    let (m, n, k) = (v(0), v(1), Var(2));
    let kk = Expr::Var(k);
    // 7 x 3 tiles of 128 x 128 (sm_90a: 7 x 2 of 128 x 256).
    let tall = Kernel {
        name: "mma_bf16_tall".into(),
        inputs: vec![
            buf("a", DType::BF16, vec![st(840), st(64)]),
            buf("b", DType::BF16, vec![st(64), st(300)]),
            buf("r", DType::BF16, vec![st(840), st(300)]),
        ],
        output: buf("c", DType::BF16, vec![st(840), st(300)]),
        dims: vec![],
        float: Ty::F32,
        body: Body::Contract {
            k,
            extent: Expr::Int(64),
            a: ld(0, vec![m.clone(), kk.clone()]),
            b: ld(1, vec![kk, n.clone()]),
            epilogue: bin(Binary::Add, Expr::Acc, ld(2, vec![m, n])),
        },
    };
    let mut ks = vec![tall];
    ks.extend(mma_kernels().into_iter().filter(|k| {
        ["mma_bf16_batched", "mma_bf16_mk_kn", "mma_bf16_wide_nk"].contains(&&*k.name)
    }));
    assert_eq!(ks.len(), 4);
    let gpu = common::gpu_available();
    let mut failures = Vec::new();
    for k in &ks {
        for arch in [PtxArch::Sm90a, PtxArch::Sm80] {
            let pk = compile_kernel_with(k, arch, &grouped).unwrap();
            let plain = compile_kernel_with(k, arch, &PtxOptions::default()).unwrap();
            assert_ne!(pk.ptx, plain.ptx, "{}: not grouped", k.name);
            let mut sides = vec![
                Side::SimWith(arch, grouped),
                Side::SimCapped(arch, grouped, 3),
            ];
            if gpu {
                sides.push(Side::GpuWith(arch, grouped));
            }
            for side in sides {
                match run_against_eval_tol(k, &mut rng, side, 1e-4) {
                    Ok(true) => {}
                    r => failures.push(format!("{} ({}, seed {seed}): {r:?}", k.name, side.name())),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The code paths not yet the default ([`PtxOptions`]: branching selects,
/// every GEMV tiling with `a` staged in shared memory, the dequantizing
/// GEMV) against the evaluator on the PTX interpreter, as sm_90a and sm_80
/// modules: what is left for a GPU is to measure them.
#[test]
fn options_not_yet_the_default_run_as_the_evaluator_says() {
    let mut ks: Vec<Kernel> = select_kernels().into();
    ks.extend(gemv_kernels());
    ks.extend(dequant_gemv_kernels());
    ks.extend(resident_row_kernels());
    let tilings = [(16, 16, true), (32, 16, true), (64, 4, false)];
    let (mut failures, mut compared) = (Vec::new(), 0);
    use rand::SeedableRng;
    let seed = common::seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (j, (tile_n, unroll, stage_a)) in tilings.into_iter().enumerate() {
        let opts = PtxOptions {
            branch_selects: true,
            walk_inputs: true,
            gemv: Some(GemvTiling {
                tile_n,
                unroll,
                stage_a,
            }),
            gemv_dequant: true,
            // Row kernels reload their weights every row, two ways of
            // stating the blocks per multiprocessor.
            rows: Some(RowTuning {
                min_blocks: [4, 0, 3][j],
                reload_fixed: true,
            }),
            qmma_splits: None,
            mma_splits: None,
            mma_tiling: None,
            mma_tma: false,
            mma_specialize: false,
            mma_group: 0,
            mma_heavy_tiling: false,
            attention_wgmma: 0,
            mma_coalesced_stores: false,
            mma_staged_chunks: true,
        };
        let arch = if j % 2 == 0 {
            PtxArch::Sm90a
        } else {
            PtxArch::Sm80
        };
        for k in &ks {
            // Each kernel takes the path under test.
            let pk = compile_kernel_with(k, arch, &opts).unwrap();
            if k.name.starts_with("gemv_") {
                assert!(pk.entry.starts_with("gemv_"), "{}: {}", k.name, pk.entry);
                assert_eq!(
                    pk.ptx.contains("stage_end"),
                    stage_a && !k.name.contains("symbolic_k") && !k.name.contains("k4099"),
                    "{}",
                    k.name
                );
            }
            if k.name == "concat_branch" {
                assert!(pk.ptx.contains("sel_else"), "{}", k.name);
            }
            if pk.entry.starts_with("row_") {
                let stated = pk.ptx.contains(".minnctapersm");
                assert_eq!(
                    stated,
                    opts.rows.is_some_and(|r| r.min_blocks > 0),
                    "{}",
                    k.name
                );
            }
            let side = Side::SimWith(arch, opts);
            match run_against_eval_tol(k, &mut rng, side, 1e-4) {
                Ok(true) => compared += 1,
                Ok(false) => {}
                Err(e) => failures.push(format!("{} ({}, seed {seed}): {e}", k.name, side.name())),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(compared, 3 * ks.len(), "every kernel compared");
}

/// With `gemv_dequant`, contractions over dequantized 4- and 8-bit codes at
/// up to 8 rows take the GEMV path (codes read a thread's 8 columns per
/// load, bf16/f16 scales as column vectors); without it they do not.
/// Assembled by ptxas; against the evaluator on the GPU where there is one
/// (with `KILN_GEMV_DEQUANT=1` in the environment, the GPU side runs the
/// new path).
#[test]
fn dequantizing_gemvs() {
    let on = PtxOptions {
        gemv_dequant: true,
        ..PtxOptions::default()
    };
    let tool = ptxas();
    for k in &dequant_gemv_kernels() {
        let off = compile_kernel_with(k, PtxArch::Sm90a, &PtxOptions::default()).unwrap();
        assert!(!off.entry.starts_with("gemv_"), "{}", k.name);
        for arch in [PtxArch::Sm90a, PtxArch::Sm80] {
            let pk = compile_kernel_with(k, arch, &on).unwrap();
            assert!(pk.entry.starts_with("gemv_"), "{}", k.name);
            let codes = if k.name.contains("i8") {
                ".v2.b32"
            } else {
                ".b32"
            };
            assert!(
                pk.ptx
                    .contains(&format!("ld.global.nc.L1::no_allocate{codes}")),
                "{}",
                k.name
            );
            if let Some(tool) = &tool {
                let u = assemble(tool, &pk).unwrap_or_else(|e| panic!("{}: {e}", k.name));
                assert_eq!(u.spill, 0, "{}", k.name);
            }
        }
        // 16-bit scales: one vector load per row; f32 ones per element
        let pk = compile_kernel_with(k, PtxArch::Sm90a, &on).unwrap();
        let vector_scales = pk.ptx.contains("ld.global.nc.v4.b32");
        assert_eq!(vector_scales, !k.name.contains("i8"), "{}", k.name);
    }
    run_on_every_side(&dequant_gemv_kernels(), |_, _| false, |_| 1e-4);
}

/// Contractions with a 4-bit weight in fragment order compile to the
/// dequantizing tensor-core kernel (`qmma_`, `mma.sync` on codes decoded
/// with the magic-exponent trick) on both architectures, with or without
/// the dequantizing GEMV switched on, assemble without spills, and match
/// the evaluator within f32 rounding of the largest output (the kernel
/// sums `x * code` per group and scales the group's sum: the same sum in
/// another order).
#[test]
fn dequantizing_tensor_core_contractions() {
    let tool = ptxas();
    let gemv = PtxOptions {
        gemv_dequant: true,
        ..PtxOptions::default()
    };
    for k in &qmma_kernels() {
        for arch in [PtxArch::Sm90a, PtxArch::Sm80] {
            for opts in [PtxOptions::default(), gemv] {
                let pk = compile_kernel_with(k, arch, &opts).unwrap();
                assert!(pk.entry.starts_with("qmma_"), "{}: {}", k.name, pk.entry);
                assert!(pk.ptx.contains("mma.sync.aligned.m16n8k16"), "{}", k.name);
                // no split unless asked for (`QmmaPlan::splits`)
                let want = Grid::Tiles {
                    tile_m: 16,
                    tile_n: 64,
                };
                assert_eq!(pk.grid, want, "{}", k.name);
            }
            if let Some(tool) = &tool {
                let pk = compile_kernel(k, arch).unwrap();
                let u = assemble(tool, &pk).unwrap_or_else(|e| panic!("{}: {e}", k.name));
                assert_eq!(u.spill, 0, "{}", k.name);
            }
        }
    }
    run_on_every_side(&qmma_kernels(), |_, _| false, |_| 2e-5);
    // Tiles past the whole waves dealt to several blocks
    // (`Grid::BalancedTiles`): five column tiles (three rows) with four
    // rounds of pieces, on 4 multiprocessors four whole tiles and the
    // fifth in 3, 2 or 4 parts (each part's block storing 256 threads'
    // four sums); on 8 none split (10 blocks do not fit), on 32 all five
    // in fourths; 1 is no balanced grid, and a request beyond the rounds
    // is cut to them. Every one also with three blocks walking the units
    // (whole and split units then meet in one block's loop).
    {
        use rand::SeedableRng;
        let seed = common::seed();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let k = qmma_kernels()
            .into_iter()
            .find(|k| k.name == "qmma_i4_g32_split")
            .unwrap();
        assert_eq!(k.output.shape.0[1].as_static(), Some(320));
        let cases = [
            ((3, 4), Some(3), 7),
            ((2, 4), Some(2), 6),
            ((4, 4), Some(4), 8),
            ((2, 8), Some(2), 5),
            ((4, 32), Some(4), 20),
            ((1, 4), None, 5),
            ((8, 4), Some(4), 8),
        ];
        for ((splits, sms), grid_splits, units) in cases {
            let opts = PtxOptions {
                qmma_splits: Some(QmmaBalance::Fixed { splits, sms }),
                ..PtxOptions::default()
            };
            let pk = compile_kernel_with(&k, PtxArch::Sm90a, &opts).unwrap();
            let got = match pk.grid {
                Grid::BalancedTiles {
                    splits,
                    scratch,
                    sms: on,
                    ..
                } => {
                    assert_eq!((scratch, on), (256 * 16 + 4, sms));
                    Some(splits)
                }
                _ => None,
            };
            assert_eq!(got, grid_splits, "{splits} on {sms}");
            assert_eq!(pk.units(&[3, 320]), units, "{splits} on {sms}");
            let mut sides = vec![
                Side::SimWith(PtxArch::Sm90a, opts),
                Side::SimWith(PtxArch::Sm80, opts),
                Side::SimCapped(PtxArch::Sm90a, opts, 3),
            ];
            if common::gpu_available() {
                sides.push(Side::GpuWith(PtxArch::Sm90a, opts));
            }
            for side in sides {
                let r = run_against_eval_tol(&k, &mut rng, side, 2e-5);
                assert_eq!(
                    r,
                    Ok(true),
                    "{} at {splits} splits on {sms} ({}, seed {seed})",
                    k.name,
                    side.name()
                );
            }
        }
        // Under a batch: six tiles (two matrices of three) on 4
        // multiprocessors in halves: four whole tiles, the second
        // matrix's last two split (the kernel counts the batch's tiles).
        let batched = qmma_kernels()
            .into_iter()
            .find(|k| k.name == "qmma_i4_g32_split_batched")
            .unwrap();
        let opts = PtxOptions {
            qmma_splits: Some(QmmaBalance::Fixed { splits: 2, sms: 4 }),
            ..PtxOptions::default()
        };
        let pk = compile_kernel_with(&batched, PtxArch::Sm90a, &opts).unwrap();
        assert_eq!(pk.units(&[2, 3, 192]), 4 + 2 * 2);
        for side in [
            Side::SimWith(PtxArch::Sm90a, opts),
            Side::SimCapped(PtxArch::Sm80, opts, 3),
        ] {
            let r = run_against_eval_tol(&batched, &mut rng, side, 2e-5);
            assert_eq!(
                r,
                Ok(true),
                "{} ({}, seed {seed})",
                batched.name,
                side.name()
            );
        }
        // `auto`: the tiles past 132 multiprocessors' whole waves, in as
        // many parts as fit (5 tiles: 4, the rounds' most).
        let auto = PtxOptions {
            qmma_splits: Some(QmmaBalance::Auto),
            ..PtxOptions::default()
        };
        let pk = compile_kernel_with(&k, PtxArch::Sm90a, &auto).unwrap();
        assert!(
            matches!(
                pk.grid,
                Grid::BalancedTiles {
                    splits: 4,
                    sms: 132,
                    ..
                }
            ),
            "{:?}",
            pk.grid
        );
        assert_eq!(QmmaBalance::parse(" auto"), Some(QmmaBalance::Auto));
        assert_eq!(
            QmmaBalance::parse("3"),
            Some(QmmaBalance::Fixed {
                splits: 3,
                sms: 132
            })
        );
        assert_eq!(QmmaBalance::parse("9"), None);
        assert_eq!(QmmaBalance::parse("0"), None);
    }
    // Computed activations: the same kernel, `x` evaluated into shared
    // memory and rounded to bf16 (2^-9 of each value).
    for k in &qmma_computed_kernels() {
        for arch in [PtxArch::Sm90a, PtxArch::Sm80] {
            let pk = compile_kernel(k, arch).unwrap();
            assert!(pk.entry.starts_with("qmma_"), "{}: {}", k.name, pk.entry);
            if let Some(tool) = &tool {
                let u = assemble(tool, &pk).unwrap_or_else(|e| panic!("{}: {e}", k.name));
                assert_eq!(u.spill, 0, "{}", k.name);
            }
        }
    }
    run_on_every_side(
        &qmma_computed_kernels(),
        |_, _| false,
        |ptx| if ptx { 1e-2 } else { 2e-5 },
    );
}

#[test]
fn every_dtype_loads_and_stores() {
    check_all("dtypes", &dtype_kernels());
}

#[test]
fn every_operation() {
    check_all("ops", &op_kernels());
}

#[test]
fn row_kernels_use_the_row_grid() {
    let ks = row_kernels();
    for k in &ks {
        let pk = compile_kernel(k, PtxArch::Sm90a).unwrap();
        assert_eq!(pk.grid, Grid::Rows { inner_axes: 1 }, "{}", k.name);
        assert!(pk.ptx.contains("shfl.sync.bfly"), "{}", k.name);
    }
    check_all("rows", &ks);
}

#[test]
fn contractions() {
    check_all("contractions", &contract_kernels());
}

#[test]
fn vector_accesses_where_the_run_is_contiguous() {
    let shape = vec![Dim::sym("n"), st(6)];
    let k = map(
        "add_f32",
        Ty::F32,
        vec![
            buf("x", DType::F32, shape.clone()),
            buf("y", DType::BF16, shape.clone()),
        ],
        buf("z", DType::F32, shape.clone()),
        bin(
            Binary::Add,
            ld(0, vec![v(0), v(1)]),
            ld(1, vec![v(0), v(1)]),
        ),
    );
    let pk = compile_kernel(&k, PtxArch::Sm90a).unwrap();
    assert_eq!(pk.grid, Grid::Elements { per_thread: 4 });
    assert!(pk.ptx.contains("ld.global.v4.b32"), "{}", pk.ptx);
    assert!(pk.ptx.contains("ld.global.v2.b32"), "{}", pk.ptx);
    assert!(pk.ptx.contains("st.global.v4.b32"), "{}", pk.ptx);
    // Entry names are deterministic and follow {kind}_{dtype}_{hash}.
    let again = compile_kernel(&k, PtxArch::Sm90a).unwrap();
    assert_eq!(pk.entry, again.entry);
    assert!(pk.entry.starts_with("map_f32_"), "{}", pk.entry);
}

/// A concatenation along an outer axis (a KV cache and its new rows): each
/// source's lanes are consecutive elements of its rows, so both are read
/// with 16-byte vector loads per run of 8 bf16 outputs (the scalar loads
/// left are the partial-run path's), and the values are the evaluator's
/// (on the PTX interpreter, both targets, fresh inputs).
#[test]
fn concatenations_read_their_sources_a_run_at_a_time() {
    let cat = |new_at: i64| {
        map(
            "cat_rows",
            Ty::F32,
            vec![
                buf("cache", DType::BF16, vec![Dim::sym("n"), st(3), st(16)]),
                buf("fresh", DType::BF16, vec![Dim::sym("n"), st(48)]),
            ],
            buf("out", DType::BF16, vec![Dim::sym("n"), st(4), st(16)]),
            Expr::Select(
                Box::new(bin(Binary::Lt, v(1), Expr::Int(3))),
                Box::new(ld(
                    0,
                    vec![v(0), bin(Binary::Min, v(1), Expr::Int(2)), v(2)],
                )),
                Box::new(ld(1, vec![v(0), bin(Binary::Add, v(2), Expr::Int(new_at))])),
            ),
        )
    };
    let vectors = |ptx: &str| ptx.matches("ld.global.v4.b32").count();
    // Rows of `fresh` read from 32 (a multiple of 8): both sources by runs.
    let aligned = cat(32);
    let pk = compile_kernel(&aligned, PtxArch::Sm90a).unwrap();
    assert_eq!(pk.grid, Grid::Elements { per_thread: 8 });
    assert_eq!(vectors(&pk.ptx), 2, "{}", pk.ptx);
    // From 4: a run would start mid-vector; that source stays scalar.
    let unaligned = cat(4);
    let pk = compile_kernel(&unaligned, PtxArch::Sm90a).unwrap();
    assert_eq!(vectors(&pk.ptx), 1, "{}", pk.ptx);
    use rand::SeedableRng;
    let seed = common::seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for k in [&aligned, &unaligned] {
        for arch in [PtxArch::Sm90a, PtxArch::Sm80] {
            let r = run_against_eval_tol(k, &mut rng, Side::Sim(arch), 0.0);
            assert_eq!(r, Ok(true), "seed {seed}");
        }
    }
}

/// Golden PTX of small kernels: `tests/filetests/ptx/<name>.ptx`.
#[test]
fn golden_ptx() {
    let shape = vec![Dim::sym("n")];
    let add = map(
        "add",
        Ty::F32,
        vec![
            buf("x", DType::F32, shape.clone()),
            buf("y", DType::F32, shape.clone()),
        ],
        buf("z", DType::F32, shape.clone()),
        bin(Binary::Add, ld(0, vec![v(0)]), ld(1, vec![v(0)])),
    );
    let x = |c: Expr| ld(0, vec![v(0), c]);
    let sum_rows = map(
        "row_sum",
        Ty::F32,
        vec![buf("x", DType::BF16, vec![Dim::sym("b"), st(64)])],
        buf("y", DType::BF16, vec![Dim::sym("b"), st(1)]),
        Expr::reduce(Reduction::Sum, Var(2), Expr::Int(64), x(v(2))),
    );
    let mm = Kernel {
        name: "mm".into(),
        inputs: vec![
            buf("a", DType::F32, vec![st(4), st(8)]),
            buf("b", DType::F32, vec![st(8), st(4)]),
        ],
        output: buf("c", DType::F32, vec![st(4), st(4)]),
        dims: vec![],
        float: Ty::F32,
        body: Body::Contract {
            k: Var(2),
            extent: Expr::Int(8),
            a: ld(0, vec![v(0), v(2)]),
            b: ld(1, vec![v(2), v(1)]),
            epilogue: Expr::Acc,
        },
    };
    // Rows of 300 with a static length: the row-resident path, two columns
    // per thread (the second past the end for threads 44..255).
    let y = |c: Expr| ld(0, vec![v(0), c]);
    let centered = map(
        "row_centered",
        Ty::F32,
        vec![buf("x", DType::F32, vec![Dim::sym("b"), st(300)])],
        buf("y", DType::F32, vec![Dim::sym("b"), st(300)]),
        bin(
            Binary::Sub,
            y(v(1)),
            Expr::reduce(Reduction::Max, Var(2), Expr::Int(300), y(v(2))),
        ),
    );
    // Each element is loaded once: the reduction's value at a column is
    // reused by the output at that column. The two loads of a thread's two
    // columns appear twice in the text: the block's first row before the
    // row loop, the next row's inside it (pipelined).
    let pk = compile_kernel(&centered, PtxArch::Sm90a).unwrap();
    assert_eq!(pk.ptx.matches("ld.global").count(), 4, "{}", pk.ptx);
    let dir = root().join("tests/filetests/ptx");
    let bless = std::env::var("KILN_BLESS").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    // The tensor-core path: a batched bf16 contraction with a residual.
    let mma = mma_kernels()
        .into_iter()
        .find(|k| k.name == "mma_bf16_batched")
        .unwrap();
    for k in [add, sum_rows, mm, centered, mma] {
        let text = compile_kernel(&k, PtxArch::Sm90a).unwrap().ptx;
        let path = dir.join(format!("{}.ptx", k.name));
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(want) if want == text => {}
            Ok(_) => failures.push(format!(
                "{}: differs; KILN_BLESS=1 rewrites it",
                path.display()
            )),
            Err(_) => failures.push(format!(
                "{}: missing; KILN_BLESS=1 writes it",
                path.display()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The kernels of a model lowered for sm_90 (symbolic dims kept where the
/// pipeline allows, else every dim bound to 2).
fn model_kernels(file: &str) -> Vec<Kernel> {
    let path = root().join(file);
    let compile = |dims: BTreeMap<String, u64>| {
        let opts = Options {
            target: &cost::SM90,
            dims: dims.into_iter().collect(),
            ..Options::default()
        };
        let c = pipeline::compile(&path, &[], &opts).map_err(|e| e.to_string())?;
        lower_plan(&c.plan).map_err(|e| e.to_string())
    };
    let program = compile(BTreeMap::new()).or_else(|_| {
        let source = kiln::model::load(&path).expect("loads").graph;
        let mut dims = BTreeMap::new();
        for val in source.inputs().into_iter().chain(source.weights()) {
            for s in source.value_type(val).shape.symbols() {
                dims.insert(s.to_string(), 2);
            }
        }
        compile(dims)
    });
    let program = program.unwrap_or_else(|e| panic!("{file}: {e}"));
    // The whole-program entry point gives one module per launch.
    let all = compile_program(&program, PtxArch::Sm90a).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(all.len(), program.launches.len());
    program.launches.into_iter().map(|l| l.kernel).collect()
}

fn models(dir: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "kiln"))
        .map(|p| format!("{dir}/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    out.sort();
    out
}

/// The kernels of every example and benchmark, compiled for sm_90a; each
/// distinct kernel (the same PTX up to its entry name) is assembled once,
/// all of them in one pool. A model's sm_80 PTX differs from its sm_90a
/// PTX only in the `.target` line (checked here), except for tensor-core
/// contractions (warpgroup instructions on sm_90a, `mma.sync` on sm_80),
/// which are assembled for both.
#[test]
fn every_example_and_benchmark_assembles() {
    let tool = ptxas();
    // Per model: (kernel name, index of its distinct PTX).
    let mut per_model: Vec<(String, Vec<(String, usize)>)> = Vec::new();
    let mut distinct: Vec<PtxKernel> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for file in models("examples").into_iter().chain(models("bench")) {
        let mut ks = Vec::new();
        for k in model_kernels(&file) {
            let pk = compile_kernel(&k, PtxArch::Sm90a).unwrap_or_else(|e| panic!("{file}: {e}"));
            let pk80 = compile_kernel(&k, PtxArch::Sm80).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(pk.block.is_multiple_of(32) && pk.block <= 1024);
            if pk.entry.starts_with("gemv_") {
                assert!(pk.ptx.contains("ld.global.nc.L1::no_allocate"));
            }
            if matches!(pk.grid, Grid::Tiles { .. }) && !pk.entry.starts_with("gemv_") {
                // Tensor-core contractions: warpgroup instructions on
                // sm_90a, `mma.sync` on sm_80 (fused attention: warp
                // groups where its engine applies, else `mma.sync`); both
                // are assembled.
                let attention = matches!(k.body, Body::Attention(_));
                assert!(
                    pk.ptx.contains("wgmma.mma_async")
                        || (attention && pk.ptx.contains("mma.sync.aligned")),
                    "{file}: {}",
                    k.name
                );
                assert!(pk80.ptx.contains("mma.sync.aligned"), "{file}: {}", k.name);
                let body = module_body(&pk80.ptx).replace(&pk80.entry, "ENTRY");
                let i = *index.entry(body).or_insert_with(|| {
                    distinct.push(pk80);
                    distinct.len() - 1
                });
                ks.push((k.name.clone(), i));
            } else {
                assert_eq!(
                    pk80.ptx,
                    pk.ptx.replace(".target sm_90a\n", ".target sm_80\n"),
                    "{file}: {}: sm_80 PTX differs beyond .target",
                    k.name
                );
            }
            let body = module_body(&pk.ptx).replace(&pk.entry, "ENTRY");
            let i = *index.entry(body).or_insert_with(|| {
                distinct.push(pk);
                distinct.len() - 1
            });
            ks.push((k.name.clone(), i));
        }
        per_model.push((file, ks));
    }
    let Some(tool) = tool else { return };
    let results = assemble_all(&tool, &distinct);
    let mut failures = Vec::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (file, ks) in &per_model {
        let mut rows = Vec::new();
        for (name, i) in ks {
            let pk = &distinct[*i];
            match &results[*i] {
                Ok(u) => {
                    if u.spill > 0 {
                        failures.push(format!(
                            "{file}: {name} ({}) spills {} bytes",
                            pk.arch, u.spill
                        ));
                    }
                    rows.push((format!("{name} {}", pk.arch), grid_kind(pk), *u));
                }
                Err(e) => failures.push(format!(
                    "{file}: ptxas rejects {name} ({}):\n{e}\n{}",
                    pk.arch, pk.ptx
                )),
            }
        }
        print_table(file, &rows);
        for (_, kind, _) in rows {
            *kinds.entry(kind).or_default() += 1;
        }
    }
    println!(
        "{} distinct kernels assembled for sm_90a over all models",
        distinct.len()
    );
    println!("grids over all models: {kinds:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The sizes symbolic dims take in the device runs: awkward ones.
const RUN_SIZES: [usize; 4] = [3, 783, 50, 1];

/// Runs the hand-built kernel `k` as a one-launch program on `backend`
/// (the CPU executor, or the CUDA executor on the kernel's PTX) with fresh
/// random inputs and compares with the kernel evaluator: exact for integer
/// and bool outputs, else within `tol` of the largest finite expected
/// magnitude (at least 1) plus one unit in the last place of the output
/// type (the two sides may round a value at a tie differently after
/// different approximations). `Ok(false)`: the evaluator refused the inputs
/// (a gather with an index out of range) or a dim only the output names,
/// nothing to compare.
fn run_against_eval(k: &Kernel, rng: &mut impl rand::Rng, side: Side) -> Result<bool, String> {
    run_against_eval_tol(k, rng, side, 1e-4)
}

/// Where a kernel runs: the CPU executor, the GPU, or the PTX interpreter
/// ([`kiln::jit::simulated_gpu_for`]), with modules written for an arch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Cpu,
    Gpu(PtxArch),
    Sim(PtxArch),
    /// The PTX interpreter, the kernel compiled with these options.
    SimWith(PtxArch, PtxOptions),
    /// The GPU, the kernel compiled with these options.
    GpuWith(PtxArch, PtxOptions),
    /// The PTX interpreter with these options, tile grids launched with
    /// at most this many blocks (each block walks several tiles).
    SimCapped(PtxArch, PtxOptions, u32),
}

impl Side {
    fn name(self) -> String {
        match self {
            Side::Cpu => "cpu".into(),
            Side::Gpu(a) => a.target().into(),
            Side::Sim(a) => format!("{} on the PTX interpreter", a.target()),
            Side::SimWith(a, o) => format!("{} on the PTX interpreter with {o:?}", a.target()),
            Side::GpuWith(a, o) => format!("{} with {o:?}", a.target()),
            Side::SimCapped(a, o, b) => format!(
                "{} on the PTX interpreter with {o:?}, at most {b} blocks",
                a.target()
            ),
        }
    }
}

/// [`run_against_eval`] with a float tolerance of `tol` times the
/// output's largest magnitude (plus one unit of the output type).
fn run_against_eval_tol(
    k: &Kernel,
    rng: &mut impl rand::Rng,
    side: Side,
    tol: f64,
) -> Result<bool, String> {
    use kiln_dialect::interp::Tensor;
    use kiln_dialect::kernel::Program;
    use kiln_runtime::HostTensor;
    let dims: HashMap<String, usize> = k
        .dims
        .iter()
        .enumerate()
        .map(|(j, d)| (d.clone(), RUN_SIZES[j % RUN_SIZES.len()]))
        .collect();
    let shapes: Vec<Vec<usize>> = k
        .inputs
        .iter()
        .map(|b| b.shape.resolve(&dims).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let vals: Vec<Vec<f64>> = k
        .inputs
        .iter()
        .zip(&shapes)
        .map(|(b, s)| {
            let n = s.iter().product();
            // Every fp8 code (NaNs, infinities, 57344) makes most sums of
            // a contraction NaN or huge, which compares nothing: its fp8
            // operands take finite values in (-3, 3).
            let fp8 = matches!(b.dtype, DType::F8E4M3 | DType::F8E5M2);
            if fp8 && matches!(k.body, Body::Contract { .. }) {
                (0..n)
                    .map(|_| kiln_dialect::numeric::round_to(b.dtype, rng.random_range(-3.0..3.0)))
                    .collect()
            } else {
                common::values(rng, b.dtype, n)
            }
        })
        .collect();
    let tensors: Vec<Tensor> = k
        .inputs
        .iter()
        .zip(&shapes)
        .zip(&vals)
        .map(|((b, s), x)| Tensor::new(b.dtype, s, x.clone()))
        .collect();
    let refs: Vec<&Tensor> = tensors.iter().collect();
    let Ok(want) = kiln_dialect::kernel::eval::run(k, &refs, &dims) else {
        return Ok(false);
    };
    // Executors bind dims from the inputs' shapes: a dim only the output
    // names cannot run as a program of its own.
    let bound = |d: &String| {
        k.inputs
            .iter()
            .any(|b| b.shape.symbols().contains(&d.as_str()))
    };
    if !k.dims.iter().all(bound) {
        return Ok(false);
    }
    // The kernel's inputs (renamed apart), then its output.
    let program = Program::of_kernel(k);
    let inputs: HashMap<String, HostTensor> = vals
        .iter()
        .zip(&shapes)
        .zip(&k.inputs)
        .enumerate()
        .map(|(i, ((x, s), b))| (format!("in{i}"), HostTensor::from_values(b.dtype, s, x)))
        .collect();
    let got = match side {
        Side::Gpu(arch) => {
            let exe = kiln::jit::gpu_for(program, arch).map_err(|e| e.to_string())?;
            exe.run(&inputs).map_err(|e| e.to_string())?
        }
        Side::GpuWith(arch, opts) => {
            let pk = compile_kernel_with(k, arch, &opts).map_err(|e| e.to_string())?;
            let exe = kiln_runtime::cuda::CudaExecutable::new(program, vec![pk])
                .map_err(|e| e.to_string())?;
            exe.run(&inputs).map_err(|e| e.to_string())?
        }
        Side::Sim(arch) | Side::SimWith(arch, _) | Side::SimCapped(arch, _, _) => {
            let opts = match side {
                Side::SimWith(_, o) | Side::SimCapped(_, o, _) => o,
                _ => PtxOptions::from_env(),
            };
            let pk = compile_kernel_with(k, arch, &opts).map_err(|e| e.to_string())?;
            let mut exe = kiln_runtime::cuda::SimExecutable::new(program, vec![pk])
                .map_err(|e| e.to_string())?;
            if let Side::SimCapped(_, _, blocks) = side {
                exe.cap_tile_blocks(blocks);
            }
            exe.run(&inputs).map_err(|e| e.to_string())?
        }
        Side::Cpu => {
            let exe = kiln::jit::native(program).map_err(|e| e.to_string())?;
            exe.run(&inputs).map_err(|e| e.to_string())?
        }
    };
    let got = got[0].1.to_values();
    let d = k.output.dtype;
    let scale = want
        .data
        .iter()
        .filter(|x| x.is_finite())
        .fold(1.0f64, |m, x| m.max(x.abs()));
    let ulp = |w: f64| match d {
        DType::F32 | DType::F64 => 0.0,
        DType::F16 => w.abs() * (1.0 / 1024.0),
        DType::BF16 => w.abs() * (1.0 / 128.0),
        _ if d.is_float() => w.abs() * 0.25,
        _ => 0.0,
    };
    let tol = if d.is_float() { tol } else { 0.0 };
    for (i, (g, w)) in got.iter().zip(&want.data).enumerate() {
        let ok = (g.is_nan() && w.is_nan())
            || g == w
            || (tol > 0.0 && (g - w).abs() <= tol * scale + ulp(*w));
        if !ok {
            return Err(format!(
                "element {i} of {:?}: got {g}, want {w}",
                want.shape
            ));
        }
    }
    Ok(true)
}

/// Every hand-built kernel of the tests above (each dtype, each operation,
/// row kernels, contractions) run against the kernel evaluator on fresh
/// random inputs at awkward sizes: on the CPU executor (a check of the
/// harness and of the Cranelift backend), on the PTX interpreter, and on
/// the GPU through the PTX backend and the CUDA executor where a driver is
/// present (without one the GPU side prints a notice, unless
/// `KILN_REQUIRE_GPU=1`, which makes it fail).
#[test]
fn hand_built_kernels_run_as_the_evaluator_says() {
    use rand::SeedableRng;
    let seed = common::seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let gpu = common::gpu_available();
    let mut kernels = dtype_kernels();
    kernels.extend(op_kernels());
    kernels.extend(row_kernels());
    kernels.extend(contract_kernels());
    let (mut failures, mut compared, mut refused) = (Vec::new(), 0, 0);
    for k in &kernels {
        for side in [
            Side::Cpu,
            Side::Gpu(PtxArch::Sm90a),
            Side::Sim(PtxArch::Sm90a),
        ] {
            if matches!(side, Side::Gpu(_)) && !gpu {
                continue;
            }
            match run_against_eval(k, &mut rng, side) {
                Ok(true) => compared += 1,
                Ok(false) => refused += 1,
                Err(e) => failures.push(format!(
                    "{} on the {} (seed {seed}): {e}",
                    k.name,
                    side.name()
                )),
            }
        }
    }
    eprintln!(
        "{compared} runs compared with the evaluator, {refused} skipped (inputs the evaluator \
         refuses, or dims only an output names)"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(compared > kernels.len() / 2, "too few kernels compared");
}

/// Two inverted bottlenecks as models, each compiled for sm_90 to one
/// fused block kernel (`block.rs`): W6's form at a small size (bf16, a 3x3
/// window, scales, ReLU6, the residual; one image of 5 x 11 pixels, so
/// that the tiles are partial at the bottom and the right), and a linear
/// one (f16, a 5x5 window, biases, no activation, 8 channels in and 24
/// out, 32 hidden: values no clamp hides; 4 x 9 pixels, `n` images). Small: the evaluator recomputes the expansion
/// for every tap of every output (and a ReLU6 three times).
const BLOCK_MODELS: [(&str, &str); 2] = [
    (
        "block_a.kiln",
        "model block_a {
    input x: bf16[1, 8, 5, 11] nhwc
    weight w_expand: bf16[32, 8, 1, 1]
    weight s_expand: bf16[32, 1, 1]
    weight w_dw: bf16[32, 1, 3, 3]
    weight s_dw: bf16[32, 1, 1]
    weight w_project: bf16[8, 32, 1, 1]
    weight s_project: bf16[8, 1, 1]
    let h = relu6(conv2d(x, w_expand) * s_expand)
    h = relu6(conv2d(h, w_dw, padding = [1, 1, 1, 1], groups = 32) * s_dw)
    output y = x + conv2d(h, w_project) * s_project
}",
    ),
    (
        "block_b.kiln",
        "model block_b {
    input x: f16[n, 8, 4, 9] nhwc
    weight w_expand: f16[32, 8, 1, 1]
    weight b_expand: f16[32]
    weight w_dw: f16[32, 1, 5, 5]
    weight s_dw: f16[32, 1, 1]
    weight w_project: f16[24, 32, 1, 1]
    weight b_project: f16[24]
    let h = conv2d(x, w_expand, b_expand) * 0.25
    h = conv2d(h, w_dw, padding = [2, 2, 2, 2], groups = 32) * s_dw
    output y = conv2d(h, w_project, b_project)
}",
    ),
];

/// The fused inverted bottlenecks of [`BLOCK_MODELS`] run as the evaluator
/// says (n = 3 images for the second) on the PTX interpreter and the GPU
/// where there is one (the CPU side, the map form on Cranelift, is left
/// out: the evaluator's run per side is most of the test's time, and
/// `cpu_conv.rs` checks the CPU's blocks). The kernel keeps the expanded and the
/// depthwise tensors in bf16/f16 (the tensor cores' `a`), the evaluator
/// in f32: the PTX sides compare within 1/32 of the largest output (a
/// value rounded to 8 bits twice, then summed over the hidden channels).
#[test]
fn fused_inverted_bottlenecks_run_as_the_evaluator_says() {
    let dir = common::scratch("blocks");
    let mut ks = Vec::new();
    for (name, text) in BLOCK_MODELS {
        let path = dir.as_ref().join(name);
        std::fs::write(&path, text).unwrap();
        let model = model_kernels(path.to_str().unwrap());
        assert_eq!(model.len(), 1, "{name}: one fused kernel");
        let pk = compile_kernel(&model[0], PtxArch::Sm90a).unwrap();
        assert!(pk.entry.starts_with("block_"), "{name}: {}", pk.entry);
        assert!(matches!(pk.grid, Grid::Images { .. }), "{name}");
        ks.extend(model);
    }
    run_on_every_side(&ks, |_, ptx| !ptx, |_| 1.0 / 32.0);
}

/// bf16/f16 convolutions (`tests/filetests/graphs/half_convs.kir`: 3x3
/// with a bias, a strided grouped 3x3 with a ReLU prologue, a dilated 5x5
/// on three channels whose `k` of 75 is no multiple of 8) lower as
/// implicit GEMMs (`lower::igemm`: weight rows as `a`, the im2col gather
/// of the input as `b`, evaluated by the threads into shared memory) and
/// take the tensor-core path on both arches; against the evaluator on
/// every side.
#[test]
fn implicit_gemm_convolutions_run_on_tensor_cores() {
    let ks = model_kernels("tests/filetests/graphs/half_convs.kir");
    assert_eq!(ks.len(), 3);
    for k in &ks {
        assert!(
            matches!(k.body, Body::Contract { .. }),
            "{}: not an implicit GEMM",
            k.name
        );
        for arch in [PtxArch::Sm90a, PtxArch::Sm80] {
            let pk = compile_kernel(k, arch).unwrap();
            assert!(
                pk.entry.starts_with("mma_"),
                "{} ({arch:?}): {}",
                k.name,
                pk.entry
            );
        }
    }
    run_on_every_side(&ks, |_, _| false, |_| 1e-4);
}

/// W6 (the inverted bottleneck at n = 64, bf16) compiles to one fused
/// block kernel (`block.rs`: the extraction's `conv-block`) that keeps no
/// index arithmetic the shapes make unnecessary: no 64-bit division (the
/// tile's and the halo's coordinates are 32-bit divisions by constants)
/// and no reduction loop (the depthwise window is unrolled), 3 blocks per
/// multiprocessor. Its values: `fused_inverted_bottlenecks_run_as_the_
/// evaluator_says` on the same form at small sizes.
#[test]
fn w6_is_one_block_kernel_without_needless_index_arithmetic() {
    let ks = model_kernels("bench/w6.kiln");
    assert_eq!(ks.len(), 1, "one kernel");
    let pk = compile_kernel(&ks[0], PtxArch::Sm90a).unwrap();
    assert!(pk.entry.starts_with("block_bf16_"), "{}", pk.entry);
    assert_eq!(
        pk.grid,
        Grid::Images {
            tile_h: 8,
            tile_w: 8
        }
    );
    assert!(pk.ptx.contains(".minnctapersm 3"), "three blocks");
    let divisions: usize = ["div.u64", "rem.u64", "div.s64", "rem.s64"]
        .iter()
        .map(|d| pk.ptx.matches(d).count())
        .sum();
    assert_eq!(divisions, 0, "64-bit divisions");
    assert!(!pk.ptx.contains("$L_red"), "a loop is left");
    // Both 1x1 stages on tensor cores: the expansion's 6 column blocks of
    // a unit times 2 steps of 16 input channels, the projection's 9 steps
    // of 16 hidden channels.
    assert_eq!(pk.ptx.matches("mma.sync").count(), 6 * 2 + 9);
}

/// W1's row kernel (`layer_norm(gelu(x * s + b), g, beta)`, bf16). By
/// default its four weights (16 columns each per thread, 128 bytes) are
/// reloaded every row at three blocks per multiprocessor. Held across rows
/// (`KILN_ROW_TUNING=0`), they are decoded once, before the row loop (64
/// values), and each row decodes only its 16 `x` values, one instruction
/// each; either way the GELU's `erf(v / sqrt(2))` multiplies by
/// `1 / sqrt(2)` (the erf is accurate in absolute terms only) and the
/// product `0.5 v (1 + erf(..))` is one fma. Values: the every-example
/// and row tests against the evaluator.
#[test]
fn w1_row_kernel_decodes_weights_once_and_evaluates_gelu_in_few_instructions() {
    let ks = model_kernels("bench/w1.kiln");
    assert_eq!(ks.len(), 1);
    let auto = compile_kernel(&ks[0], PtxArch::Sm90a).unwrap();
    assert!(
        auto.ptx.contains(".minnctapersm 3"),
        "three blocks by default"
    );
    let held = PtxOptions {
        rows: Some(RowTuning::default()),
        ..PtxOptions::default()
    };
    let pk = compile_kernel_with(&ks[0], PtxArch::Sm90a, &held).unwrap();
    assert!(!pk.ptx.contains(".minnctapersm"));
    let ptx = &pk.ptx;
    let top = ptx.find("$L_row_").expect("a row loop");
    let end = ptx
        .rfind("bra.uni $L_row_")
        .expect("the row loop's back edge");
    let (before, body) = (&ptx[..top], &ptx[top..end]);
    let decodes = |s: &str| {
        s.lines()
            .filter(|l| l.contains("mov.b32 %f") && l.contains("{%h"))
            .count()
    };
    assert_eq!(decodes(before), 64, "weights decoded before the loop");
    assert_eq!(decodes(body), 16, "x decoded once per column in the loop");
    assert!(
        !body.contains("cvt.u32.u16"),
        "a bf16 decode by widening and shifting"
    );
    // The correctly rounded quotient by sqrt(2) (mul, neg, two fmas) is
    // not needed under the erf.
    assert!(
        !body.contains("0f3FB504F3"),
        "a correction step of x / sqrt(2)"
    );
    // `0.5 v + 0.5 v erf(..)` as one fma: no `1 + erf` per column (its
    // 1.0 in a register, then an add).
    let ones = body
        .lines()
        .filter(|l| l.contains("mov.f32") && l.ends_with(", 0f3F800000;"))
        .count();
    assert!(ones <= 1, "{ones} registers of 1.0 in the loop");
}

/// With `PtxOptions::walk_inputs`, a map whose largest input is read
/// through a strided view (W3's key rotation: each head's 128 columns of
/// a QKV row) walks that input's order, the output's last axis innermost: the symbolic sequence axis is
/// then the outermost and no run divides by it. Against the evaluator on
/// the interpreter (and the GPU where there is one) at awkward sizes, a
/// rotation partner and a half-index load among the reads.
#[test]
fn maps_walk_their_largest_input_in_its_order() {
    use rand::SeedableRng;
    let seed = common::seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (h, s, d) = (v(1), v(2), v(3));
    let col = |off: Expr| {
        ld(
            0,
            vec![
                Expr::Int(0),
                s.clone(),
                bin(Binary::Add, bin(Binary::Mul, h.clone(), Expr::Int(64)), off),
            ],
        )
    };
    let half = bin(Binary::Div, d.clone(), Expr::Int(2));
    let parity = bin(Binary::Rem, d.clone(), Expr::Int(2));
    // x[d] * c[s, d / 2] + x[d ^ 1] * (d odd ? 1 : -1) (a rotation's shape)
    let partner = col(bin(
        Binary::Sub,
        bin(
            Binary::Add,
            bin(Binary::Mul, half.clone(), Expr::Int(2)),
            Expr::Int(1),
        ),
        parity.clone(),
    ));
    let sign = Expr::Select(
        Box::new(bin(Binary::Eq, parity, Expr::Int(0))),
        Box::new(Expr::Float(-1.0)),
        Box::new(Expr::Float(1.0)),
    );
    let expr = bin(
        Binary::Add,
        bin(Binary::Mul, col(d.clone()), ld(1, vec![s.clone(), half])),
        bin(Binary::Mul, partner, sign),
    );
    let k = map(
        "walk_heads",
        Ty::F32,
        vec![
            buf("x", DType::BF16, vec![st(1), Dim::sym("seq"), st(4 * 64)]),
            buf("c", DType::BF16, vec![Dim::sym("seq"), st(32)]),
        ],
        buf(
            "y",
            DType::BF16,
            vec![st(1), st(4), Dim::sym("seq"), st(64)],
        ),
        expr,
    );
    let walk = PtxOptions {
        walk_inputs: true,
        ..PtxOptions::default()
    };
    let with = |k: &Kernel, o: &PtxOptions| compile_kernel_with(k, PtxArch::Sm90a, o).unwrap();
    let pk = with(&k, &walk);
    assert!(
        !pk.ptx.contains("div.u32"),
        "a run divides by seq:\n{}",
        pk.ptx
    );
    // Without the option the output's order, which divides by seq; so
    // does the same map with the sequence axis read contiguously.
    assert!(with(&k, &PtxOptions::default()).ptx.contains("div.u32"));
    let plain = map(
        "walk_plain",
        Ty::F32,
        vec![buf("x", DType::BF16, vec![st(4), Dim::sym("seq"), st(64)])],
        buf("y", DType::BF16, vec![st(4), Dim::sym("seq"), st(64)]),
        bin(Binary::Mul, ld(0, vec![v(0), v(1), v(2)]), Expr::Float(2.0)),
    );
    assert!(with(&plain, &walk).ptx.contains("div.u32"));
    // The half-index load `c[s, d / 2]` is one 8-byte load per run of 8
    // (`elements::shared_run_loads`), in either order.
    for o in [&walk, &PtxOptions::default()] {
        assert!(with(&k, o).ptx.contains("ld.global.v2.b32"), "{o:?}");
    }
    let mut sides = vec![
        Side::SimWith(PtxArch::Sm90a, walk),
        Side::SimWith(PtxArch::Sm80, walk),
        Side::SimWith(PtxArch::Sm90a, PtxOptions::default()),
    ];
    if common::gpu_available() {
        sides.push(Side::GpuWith(PtxArch::Sm90a, walk));
        sides.push(Side::GpuWith(PtxArch::Sm90a, PtxOptions::default()));
    }
    for side in sides {
        for _ in 0..2 {
            match run_against_eval_tol(&k, &mut rng, side, 1e-6) {
                Ok(true) => {}
                r => panic!("{} (seed {seed}): {r:?}", side.name()),
            }
        }
    }
}
