//! The lowering to the kernel dialect end to end: every example and
//! benchmark compiles (for sm_90 and for the CPU cost table), lowers to a
//! kernel program, and that program, run launch by launch with the kernel
//! evaluator, computes what the reference interpreter computes on the
//! unoptimized source graph (fresh random inputs and weights each run).
//!
//! Tolerances, relative to each output's largest magnitude: f32 and f64
//! 1e-4 (kernels compute in f32 with intermediate values unrounded; the
//! interpreter in f64 rounding after every op), bf16 and f16 2^-6,
//! integers, bools and quantized codes exact.
//!
//! Golden text of a few lowered programs lives in
//! `tests/filetests/kernel/*.kernel`; `KILN_BLESS=1` rewrites them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln::data::{self, InputSpec, WeightSource};
use kiln::pipeline::{self, Options};
use kiln_dialect::DType;
use kiln_dialect::interp;
use kiln_passes::cost;
use kiln_passes::lower::{lower_plan, run_program};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(5)
}

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 | DType::F64 => 1e-4,
        DType::F16 | DType::BF16 => 1.0 / 64.0,
        _ => 0.0,
    }
}

/// Compiles `file` for both targets, lowers, runs, compares; panics with
/// every failure.
fn check(file: &str) {
    let path = root().join(file);
    let s = seed();
    let started = Instant::now();
    let source = kiln::model::load(&path).expect("loads").graph;
    let size = if file.ends_with("w6.kiln") { 1 } else { 2 };
    let mut dims = BTreeMap::new();
    for v in source.inputs().into_iter().chain(source.weights()) {
        for sym in source.value_type(v).shape.symbols() {
            dims.insert(sym.to_string(), size);
        }
    }
    let spec = InputSpec {
        files: &[],
        random_seed: Some(s),
        dims: &dims,
    };
    let bindings = data::bind(&source, &spec, &WeightSource::Random(s ^ 9)).expect("binds");
    let want = interp::run(&source, &bindings).expect("the interpreter runs the source");
    let mut failures = Vec::new();
    for target in [&cost::SM90, &cost::CPU] {
        let opts = Options {
            target,
            dims: dims.iter().map(|(k, v)| (k.clone(), *v as u64)).collect(),
            ..Options::default()
        };
        let c = pipeline::compile(&path, &[], &opts).expect("compiles");
        let program = match lower_plan(&c.plan) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{}: lowering: {e}", target.name));
                continue;
            }
        };
        let got = match run_program(&program, &bindings) {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{}: running: {e}", target.name));
                continue;
            }
        };
        for ((na, a), (nb, b)) in want.iter().zip(&got) {
            if na != nb || a.shape != b.shape || a.dtype != b.dtype {
                failures.push(format!(
                    "{}: output {na}: {}{:?} vs {nb}: {}{:?}",
                    target.name, a.dtype, a.shape, b.dtype, b.shape
                ));
                continue;
            }
            let scale = a.data.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
            let d = a.max_abs_diff(b) / scale;
            let nan = a
                .data
                .iter()
                .zip(&b.data)
                .any(|(x, y)| x.is_nan() != y.is_nan());
            let tol = tolerance(a.dtype);
            if d > tol || nan {
                failures.push(format!(
                    "{}: output {na} ({}) differs by {d} of its range (tolerance {tol}{})",
                    target.name,
                    a.dtype,
                    if nan { ", NaN mismatch" } else { "" }
                ));
            }
        }
    }
    eprintln!("{file}: {:.2} s", started.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "{file} (seed {s}):\n{}",
        failures.join("\n")
    );
}

macro_rules! lowered {
    ($($name:ident => $file:literal),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check($file);
            }
        )*
    };
}

macro_rules! lowered_large {
    ($($name:ident => $file:literal),* $(,)?) => {
        $(
            /// Ten seconds to minutes in the kernel evaluator: wide layers
            /// (the Llama examples, mlp.kir, w2), tens of millions of
            /// weights (w3, w3d, w4, w5), or a fused inverted bottleneck
            /// whose every output element recomputes the expansion and the
            /// depthwise convolution (mobilenet_v2_block,
            /// inverted_bottleneck, w6). tests/cpu_backend.rs runs every
            /// one of them, lowered and compiled, against the interpreter.
            #[test]
            #[ignore]
            fn $name() {
                check($file);
            }
        )*
    };
}

lowered! {
    example_mlp => "examples/mlp.kiln",
    ir_quantized_linear => "examples/ir/quantized_linear.kir",
    graph_movement_ops => "tests/filetests/graphs/movement_ops.kir",
    graph_quant_formats => "tests/filetests/graphs/quant_formats.kir",
    graph_vision_ops => "tests/filetests/graphs/vision_ops.kir",
    bench_w1 => "bench/w1.kiln",
    bench_w1b => "bench/w1b.kiln",
}

lowered_large! {
    example_llama_block => "examples/llama_block.kiln",
    example_llama_decode => "examples/llama_decode.kiln",
    example_llama_w4a16 => "examples/llama_w4a16.kiln",
    example_llama_w8a8 => "examples/llama_w8a8.kiln",
    example_resnet_block => "examples/resnet_block.kiln",
    example_tiny_llama => "examples/tiny_llama.kiln",
    ir_decoder_block => "examples/ir/decoder_block.kir",
    ir_mlp => "examples/ir/mlp.kir",
    bench_w2 => "bench/w2.kiln",
    example_mobilenet_v2_block => "examples/mobilenet_v2_block.kiln",
    ir_inverted_bottleneck => "examples/ir/inverted_bottleneck.kir",
    bench_w6 => "bench/w6.kiln",
    bench_w3 => "bench/w3.kiln",
    bench_w3d => "bench/w3d.kiln",
    bench_w4 => "bench/w4.kiln",
    bench_w5_int8 => "bench/w5_int8.kiln",
    bench_w5_fp8 => "bench/w5_fp8.kiln",
}

/// The lowered programs of a few small models, for sm_90 with every
/// symbolic dim at 2, as golden text (`tests/filetests/kernel/*.kernel`).
#[test]
fn lowered_kernels_are_golden() {
    let cases = [
        ("softmax", "tests/filetests/kernel/softmax.kir"),
        ("mlp", "examples/mlp.kiln"),
    ];
    let mut failures = Vec::new();
    for (stem, file) in cases {
        let path = root().join(file);
        let opts = Options {
            target: &cost::SM90,
            dims: HashMap::from([("batch".to_string(), 2)]),
            ..Options::default()
        };
        let c = pipeline::compile(&path, &[], &opts).expect("compiles");
        let text = lower_plan(&c.plan).expect("lowers").to_string();
        let golden = root()
            .join("tests/filetests/kernel")
            .join(format!("{stem}.kernel"));
        if std::env::var("KILN_BLESS").is_ok_and(|v| v == "1") {
            std::fs::write(&golden, &text).expect("write golden");
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(want) if want == text => {}
            Ok(want) => failures.push(format!(
                "{stem}: differs from {}\n--- expected\n{want}--- actual\n{text}",
                golden.display()
            )),
            Err(_) => failures.push(format!("{stem}: no golden file; run with KILN_BLESS=1")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The models too slow to run in the evaluator still lower, for both
/// targets, without an error.
#[test]
fn slow_models_lower() {
    let files = [
        "examples/mobilenet_v2_block.kiln",
        "examples/ir/inverted_bottleneck.kir",
        "bench/w3.kiln",
        "bench/w3d.kiln",
        "bench/w4.kiln",
        "bench/w5_int8.kiln",
        "bench/w5_fp8.kiln",
        "bench/w6.kiln",
    ];
    let mut failures = Vec::new();
    for file in files {
        for target in [&cost::SM90, &cost::CPU] {
            let opts = Options {
                target,
                ..Options::default()
            };
            let c = pipeline::compile(&root().join(file), &[], &opts).expect("compiles");
            match lower_plan(&c.plan) {
                Ok(p) => eprintln!("{file} for {}: {} launches", target.name, p.launches.len()),
                Err(e) => failures.push(format!("{file} for {}: {e}", target.name)),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
