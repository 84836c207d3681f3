//! The differential check shared by the backend tests: a model compiled by
//! the JIT API for one device, against the reference interpreter on the
//! unoptimized graph, with fresh random inputs and weights each run.
//!
//! Tolerances, relative to each output's largest magnitude: f32 and f64
//! 1e-4 (kernels keep fused values in f32 and contract with FMA; the
//! interpreter rounds every op); f16 2^-6 and bf16 2^-5 (the interpreter
//! rounds every intermediate value to the 16-bit type, kernels only at
//! stores and casts, so the two drift apart with depth: bf16 keeps 8
//! significant bits, and through the two layers of tiny_llama, attention
//! and softmax included, the gap reaches 1.9e-2 for some seeds, while its
//! f32 version agrees to 1e-6); integers and bools exact.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use kiln::data::{self, InputSpec, WeightSource};
use kiln::jit::{self, JitOptions};
use kiln_dialect::DType;
use kiln_dialect::interp::{self, Tensor};

pub fn root() -> PathBuf {
    match std::env::var_os("KILN_ROOT") {
        // A test binary carried to another machine (scripts/gpu-check.sh)
        // finds the checkout there.
        Some(r) => PathBuf::from(r),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf(),
    }
}

pub fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Benchmarks with tens of millions of weights: each has a test of its own.
pub const LARGE: &[&str] = &["w3", "w3d", "w4", "w5_int8", "w5_fp8"];

/// A fresh seed per run; `KILN_SEED=N` repeats a failing one.
pub fn seed() -> u64 {
    if let Some(s) = std::env::var("KILN_SEED").ok().and_then(|s| s.parse().ok()) {
        return s;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(5)
}

pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 | DType::F64 => 1e-4,
        DType::F16 => 1.0 / 64.0,
        DType::BF16 => 1.0 / 32.0,
        _ => 0.0,
    }
}

/// The tolerance of a model that quantizes activations at run time (`act`
/// declarations: a `quantize` of a value that is not a weight), or `None`.
/// Rounding to codes is a step function: last-bit differences of the
/// compiled model's intermediates (fused kernels round where the
/// interpreter does not) move some activations to the neighbouring code, a
/// step of 1/127 of the row's largest magnitude for `i8` and up to 1/8 of
/// the value for `f8e4m3` (1/4 for `f8e5m2`), which the output carries. The
/// tolerances are about twice the largest difference measured over 16 seeds
/// of `examples/llama_w8a8.kiln` on the CPU (4.2% with its fp8 MLP).
pub fn activation_code_tolerance(g: &kiln_dialect::Graph) -> Option<f64> {
    use kiln_dialect::ops::Op;
    g.node_ids()
        .filter_map(|n| {
            let Op::Quantize { dtype, .. } = g.node(n).op else {
                return None;
            };
            let x = g.operands(n)[0];
            if matches!(g.node(x.node).op, Op::Weight) {
                return None;
            }
            Some(match dtype {
                DType::I8 | DType::U8 => 0.05,
                DType::F8E4M3 => 0.1,
                _ => 0.2,
            })
        })
        .reduce(f64::max)
}

/// Runs `path` on the CPU and in the interpreter with every symbolic dim
/// bound to `size` (`n` of w6 to 1); returns the worst relative difference.
pub fn compare(path: &Path, size: usize, seed: u64, opts: &JitOptions) -> Result<f64, String> {
    let m = kiln::model::load(path).map_err(|e| e.to_string())?;
    let g = &m.graph;
    let act_tol = activation_code_tolerance(g);
    let mut dims = BTreeMap::new();
    for v in g.inputs().into_iter().chain(g.weights()) {
        for s in g.value_type(v).shape.symbols() {
            let n = if path.ends_with("w6.kiln") { 1 } else { size };
            dims.insert(s.to_string(), n);
        }
    }
    let spec = InputSpec {
        files: &[],
        random_seed: Some(seed),
        dims: &dims,
    };
    let bindings =
        data::bind(g, &spec, &WeightSource::Random(seed ^ 3)).map_err(|e| e.to_string())?;
    let want = interp::run(g, &bindings).map_err(|e| format!("interpreter: {e}"))?;
    let input_names: Vec<String> = g
        .inputs()
        .into_iter()
        .map(|v| g.value_name(v).to_string())
        .collect();
    let (mut inputs, mut weights) = (HashMap::new(), HashMap::new());
    for (name, t) in &bindings {
        let host = data::from_interp(t);
        if input_names.contains(name) {
            inputs.insert(name.clone(), host);
        } else {
            weights.insert(name.clone(), host);
        }
    }
    let mut model = jit::compile_loaded(m, opts).map_err(|e| e.to_string())?;
    model.bind_weights(&weights).map_err(|e| e.to_string())?;
    let got = model
        .run(&inputs)
        .map_err(|e| format!("compiled model: {e}"))?;
    if got.len() != want.len() {
        return Err(format!(
            "{} outputs, the interpreter gives {}",
            got.len(),
            want.len()
        ));
    }
    let mut worst = 0.0f64;
    for ((gn, gt), (wn, wt)) in got.iter().zip(&want) {
        let gt: Tensor = data::to_interp(gt);
        if gn != wn || gt.shape != wt.shape || gt.dtype != wt.dtype {
            return Err(format!(
                "output {gn}: {}{:?}, the interpreter gives {wn}: {}{:?}",
                gt.dtype, gt.shape, wt.dtype, wt.shape
            ));
        }
        let scale = wt
            .data
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs()))
            .max(1e-30);
        let d = gt.max_abs_diff(wt) / scale;
        let tol = act_tol.map_or(tolerance(wt.dtype), |t| t.max(tolerance(wt.dtype)));
        if d.is_nan() || d > tol {
            return Err(format!(
                "output {gn} ({}{:?}) differs by {d:.3e} of its largest magnitude (tolerance {tol:.1e})",
                wt.dtype, wt.shape
            ));
        }
        worst = worst.max(d);
    }
    Ok(worst)
}

pub fn check(paths: &[PathBuf], sizes: &[usize], opts: &JitOptions) {
    let s = seed();
    let mut failures = Vec::new();
    for p in paths {
        for &size in sizes {
            if let Err(e) = compare(p, size, s, opts) {
                failures.push(format!("{} (dims {size}, seed {s}): {e}", p.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Random values of `dtype`: every code of the small types (NaN and
/// infinities included), floats in [-3, 3) rounded to the type, integers
/// over their range (i64 within 2^40), never all zeros.
pub fn values(rng: &mut impl rand::Rng, dtype: DType, n: usize) -> Vec<f64> {
    use kiln_dialect::numeric;
    (0..n)
        .map(|_| match dtype {
            DType::F64 | DType::F32 | DType::F16 | DType::BF16 => {
                numeric::round_to(dtype, rng.random_range(-3.0..3.0))
            }
            DType::I64 => rng.random_range(-(1i64 << 40)..(1i64 << 40)) as f64,
            _ if dtype.has_integer_values() => {
                let (lo, hi) = dtype.int_range().unwrap_or((0, 1));
                rng.random_range(lo..=hi) as f64
            }
            _ => numeric::decode(dtype, rng.random_range(0..(1u64 << dtype.bits()))),
        })
        .collect()
}

/// Builders of kernel expressions for the backend tests.
pub fn v(i: u32) -> kiln_dialect::kernel::Expr {
    kiln_dialect::kernel::Expr::Var(kiln_dialect::kernel::Var(i))
}

pub fn ld(input: usize, index: Vec<kiln_dialect::kernel::Expr>) -> kiln_dialect::kernel::Expr {
    kiln_dialect::kernel::Expr::load(input, index)
}

pub fn bin(
    op: kiln_dialect::kernel::Binary,
    a: kiln_dialect::kernel::Expr,
    b: kiln_dialect::kernel::Expr,
) -> kiln_dialect::kernel::Expr {
    kiln_dialect::kernel::Expr::bin(op, a, b)
}

pub fn un(
    op: kiln_dialect::kernel::Unary,
    a: kiln_dialect::kernel::Expr,
) -> kiln_dialect::kernel::Expr {
    kiln_dialect::kernel::Expr::un(op, a)
}

/// Whether the GPU half of a test can run here: a CUDA driver is present.
/// Without one it prints a notice, and fails when `KILN_REQUIRE_GPU=1`
/// (scripts/gpu-check.sh sets it on the GPU machine).
pub fn gpu_available() -> bool {
    let present = kiln_runtime::cuda::driver_present();
    if !present {
        assert!(
            std::env::var("KILN_REQUIRE_GPU").map_or(true, |v| v != "1"),
            "KILN_REQUIRE_GPU=1 but no CUDA driver was found"
        );
        eprintln!("no CUDA driver: GPU test skipped");
    }
    present
}

/// A little-endian `.npy` file written byte by byte from the format's
/// definition (version 1.0 header padded to 64 bytes).
pub fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Runs the `kiln` command in the workspace root.
pub fn kiln(args: &[&str]) -> std::process::Output {
    std::process::Command::new(kiln_bin())
        .args(args)
        .current_dir(root())
        .output()
        .expect("run kiln")
}

/// The `kiln` binary: `KILN_BIN` where the test binaries run away from
/// their build (scripts/gpu-check.sh on the GPU machine), else Cargo's.
pub fn kiln_bin() -> PathBuf {
    std::env::var_os("KILN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kiln")))
}

/// Bytes (a command's output) as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A scratch folder, `kiln-TAG-PID` in the temporary directory, removed
/// when dropped (so a test leaves nothing behind, also when it fails).
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh [`Scratch`] folder for `tag`.
pub fn scratch(tag: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("kiln-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    Scratch(d)
}
