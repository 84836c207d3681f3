//! The optimizer end to end: every example and benchmark compiles to a
//! kernel plan whose graph computes the same outputs as the source graph
//! (reference interpreter, fresh random inputs), and the benchmark plans for
//! sm_90 are kept as golden files with upper bounds on their kernel counts.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use kiln::data::{self, InputSpec, WeightSource};
use kiln::pipeline::{self, Options};
use kiln_dialect::interp;
use kiln_passes::cost;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Benchmarks with tens of millions of weights (a few seconds per
/// interpreter run): each has a test of its own, so that they run side by
/// side, and is checked for the sm_90 plan only.
const LARGE: &[&str] = &[
    "w3.kiln",
    "w3d.kiln",
    "w4.kiln",
    "w5_int8.kiln",
    "w5_fp8.kiln",
];

/// Kernel-count bounds on sm_90 at the benchmark sizes. W6 is one fused
/// inverted-bottleneck kernel (`Target::conv_block`, the PTX backend's
/// `block.rs`).
const KERNEL_BOUNDS: &[(&str, usize)] = &[("w1", 1), ("w1b", 1), ("w2", 3), ("w3", 11), ("w6", 1)];

/// The `--dim` bindings a benchmark file states in its `// benchmark:` header
/// (the first value of each symbol).
fn bench_dims(path: &Path) -> HashMap<String, u64> {
    let src = std::fs::read_to_string(path).expect("read");
    let mut dims = HashMap::new();
    for line in src.lines().filter(|l| l.starts_with("// benchmark:")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for w in words.windows(2) {
            if w[0] == "--dim"
                && let Some((k, v)) = w[1].split_once('=')
                && let Ok(n) = v.trim_end_matches(',').parse::<u64>()
            {
                dims.entry(k.to_string()).or_insert(n);
            }
        }
    }
    dims
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(3)
}

/// Evaluates the source graph once, then each target's plan graph, on the
/// same random bindings; returns, per target, the worst difference relative
/// to each output's largest magnitude, failing when an output's difference
/// passes its dtype's tolerance (f32: 1e-5, 16-bit floats: 2^-6, integers
/// and bools: exact).
fn equivalence(
    path: &Path,
    targets: &[&'static cost::Target],
    seed: u64,
) -> Result<Vec<f64>, String> {
    let source = kiln::model::load(path).map_err(|e| e.to_string())?.graph;
    // runtime activation quantization turns rounding differences into code steps
    let act_tol = common::activation_code_tolerance(&source);
    let mut dims = BTreeMap::new();
    for v in source.inputs().into_iter().chain(source.weights()) {
        for s in source.value_type(v).shape.symbols() {
            dims.insert(s.to_string(), if path.ends_with("w6.kiln") { 1 } else { 3 });
        }
    }
    let spec = InputSpec {
        files: &[],
        random_seed: Some(seed),
        dims: &dims,
    };
    let bindings =
        data::bind(&source, &spec, &WeightSource::Random(seed ^ 9)).map_err(|e| e.to_string())?;
    let a = interp::run(&source, &bindings).map_err(|e| format!("source: {e}"))?;
    for (name, t) in &a {
        if t.data.is_empty() || t.data.iter().any(|v| v.is_nan()) {
            return Err(format!("source output {name} is empty or has NaN"));
        }
    }
    let mut out = Vec::new();
    for target in targets {
        let opts = Options {
            target,
            ..Options::default()
        };
        let c = pipeline::compile(path, &[], &opts).map_err(|e| e.to_string())?;
        let b = interp::run(&c.plan.graph, &bindings)
            .map_err(|e| format!("plan for {}: {e}", target.name))?;
        let mut worst = 0.0f64;
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            if na != nb || ta.shape != tb.shape || ta.dtype != tb.dtype {
                return Err(format!(
                    "output {na}: {}{:?} vs {nb}: {}{:?}",
                    ta.dtype, ta.shape, tb.dtype, tb.shape
                ));
            }
            let scale = ta
                .data
                .iter()
                .fold(0.0f64, |m, v| m.max(v.abs()))
                .max(1e-12);
            let tol = match ta.dtype {
                kiln_dialect::DType::F32 | kiln_dialect::DType::F64 => 1e-5,
                kiln_dialect::DType::F16 | kiln_dialect::DType::BF16 => 1.6e-2,
                _ => 0.0,
            };
            let tol = act_tol.map_or(tol, |t| t.max(tol));
            let d = ta.max_abs_diff(tb) / scale;
            if d > tol {
                return Err(format!(
                    "{}: output {na} differs by {d} of its range (tolerance {tol})",
                    target.name
                ));
            }
            worst = worst.max(d);
        }
        out.push(worst);
    }
    Ok(out)
}

/// Every example graph and model: the plan computes what the source does,
/// for the GPU and the CPU cost tables. The optimizer changes rounding only
/// through the algebra rules that reassociate a scale or fold a batch norm,
/// hence the tolerances of [`equivalence`].
#[test]
fn plans_compute_what_the_source_computes() {
    let s = seed();
    let mut paths = files("examples", "kiln");
    paths.extend(files("examples/ir", "kir"));
    paths.extend(files("tests/filetests/graphs", "kir"));
    paths.extend(
        files("bench", "kiln")
            .into_iter()
            .filter(|p| !LARGE.iter().any(|b| p.ends_with(b))),
    );
    let mut failures = Vec::new();
    for p in &paths {
        let targets = [&cost::SM90, &cost::CPU];
        match equivalence(p, &targets, s) {
            Ok(_) => {}
            Err(e) => failures.push(format!("{} (seed {s}): {e}", p.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn large_plan_computes_what_the_source_computes(file: &str) {
    let s = seed();
    let p = root().join("bench").join(file);
    if let Err(e) = equivalence(&p, &[&cost::SM90], s) {
        panic!("{} (seed {s}): {e}", p.display());
    }
}

#[test]
fn large_plan_w3_computes_what_the_source_computes() {
    large_plan_computes_what_the_source_computes(LARGE[0]);
}

#[test]
fn large_plan_w3d_computes_what_the_source_computes() {
    large_plan_computes_what_the_source_computes(LARGE[1]);
}

#[test]
fn large_plan_w4_computes_what_the_source_computes() {
    large_plan_computes_what_the_source_computes(LARGE[2]);
}

#[test]
fn large_plans_w5_compute_what_the_source_computes() {
    large_plan_computes_what_the_source_computes(LARGE[3]);
    large_plan_computes_what_the_source_computes(LARGE[4]);
}

/// The sm_90 plans of the benchmarks, at their benchmark sizes, as golden
/// files (`tests/filetests/plan/*.plan`; `KILN_BLESS=1` rewrites them), with
/// the kernel-count bounds the optimizer must meet.
#[test]
fn benchmark_plans_are_golden_and_within_bounds() {
    let mut failures = Vec::new();
    for p in files("bench", "kiln") {
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let opts = Options {
            target: &cost::SM90,
            dims: bench_dims(&p),
            ..Options::default()
        };
        let c = match pipeline::compile(&p, &[], &opts) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{stem}: {e}"));
                continue;
            }
        };
        let kernels = c.plan.run_kernels().count();
        if let Some((_, bound)) = KERNEL_BOUNDS.iter().find(|(n, _)| *n == stem)
            && kernels > *bound
        {
            failures.push(format!(
                "{stem}: {kernels} kernels, the bound is {bound}\n{}",
                c.plan.to_text()
            ));
        }
        let text = c.plan.to_text();
        let golden = root()
            .join("tests/filetests/plan")
            .join(format!("{stem}.plan"));
        if std::env::var("KILN_BLESS").is_ok_and(|v| v == "1") {
            std::fs::create_dir_all(golden.parent().expect("dir")).expect("mkdir");
            std::fs::write(&golden, &text).expect("write golden");
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(want) if want == text => {}
            Ok(want) => failures.push(format!(
                "{stem}: plan differs from {}\n--- expected\n{want}--- actual\n{text}",
                golden.display()
            )),
            Err(_) => failures.push(format!("{stem}: no golden plan; run with KILN_BLESS=1")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A repeated block is saturated once: the later layers of `tiny_llama`
/// are not searched by the rewrite rules but receive a copy of what the
/// first layer's saturation found (here, the packed layouts of its
/// weights), so every layer gets the same kernels.
#[test]
fn repeated_layers_get_the_first_layers_rewrites() {
    let path = root().join("examples/tiny_llama.kiln");
    let dims = HashMap::from([("seq".to_string(), 1)]);
    let c = pipeline::compile(
        &path,
        &[],
        &Options {
            target: &cost::SM90,
            dims,
            ..Options::default()
        },
    )
    .expect("compiles");
    let text = c.plan.to_text();
    let per_layer: Vec<(usize, usize)> = (0..4)
        .map(|i| {
            let tag = format!("%layers.{i}.");
            let kernels = text
                .lines()
                .filter(|l| l.starts_with("kernel ") && l.contains(&tag))
                .count();
            let packed = text
                .lines()
                .filter(|l| {
                    l.starts_with("transform ") && l.contains("packed(mma_b)") && l.contains(&tag)
                })
                .count();
            (kernels, packed)
        })
        .collect();
    assert!(
        per_layer[0].1 >= 7,
        "the first layer's projections are packed:\n{text}"
    );
    assert!(
        per_layer.iter().all(|p| *p == per_layer[0]),
        "every layer like the first: {per_layer:?}\n{text}"
    );
}

/// On the CPU, whose convolutions are direct loops, the depthwise
/// convolution of W6 reads its input from memory: fused into its input,
/// the expansion's scale and ReLU6 would be recomputed for each of the 9
/// taps (`Target::direct_conv`), so they go to the expansion's epilogue.
/// The plan is golden (tests/filetests/plan/cpu/w6.plan; `KILN_BLESS=1`).
#[test]
fn cpu_plan_of_w6_keeps_prologues_out_of_the_depthwise_conv() {
    let p = root().join("bench/w6.kiln");
    let opts = Options {
        target: &cost::CPU,
        dims: bench_dims(&p),
        ..Options::default()
    };
    let text = pipeline::compile(&p, &[], &opts)
        .expect("compiles")
        .plan
        .to_text();
    let dw = text
        .lines()
        .find(|l| l.contains("groups = 144"))
        .expect("a depthwise kernel");
    assert!(dw.contains("(%h, %w_dw)"), "the depthwise reads %h: {dw}");
    let golden = root().join("tests/filetests/plan/cpu/w6.plan");
    if std::env::var("KILN_BLESS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(golden.parent().expect("dir")).expect("mkdir");
        std::fs::write(&golden, &text).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&golden).expect("golden plan; run with KILN_BLESS=1");
    assert_eq!(want, text, "plan differs from {}", golden.display());
}
