//! The CUDA backend end to end: every example and benchmark model, compiled
//! for the `sm_90` target, lowered to kernels, emitted as PTX and run by the
//! runtime's CUDA executor, against the reference interpreter on the
//! unoptimized graph (`common::check`; tolerances per dtype there), with
//! fresh random inputs and weights each run.
//!
//! Without a CUDA driver every test prints a notice and passes, unless
//! `KILN_REQUIRE_GPU=1` (scripts/gpu-check.sh sets it on the GPU machine).
//! The `simulated` tests run the same kernels (written for `sm_80`) on the
//! PTX interpreter ([`Device::CudaSim`]) everywhere, CI included.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{LARGE, files, root};
use kiln::jit::{self, Device, JitOptions};
use kiln_dialect::DType;

fn opts() -> JitOptions {
    JitOptions {
        device: Device::Cuda,
        ..JitOptions::default()
    }
}

fn check(paths: &[PathBuf], sizes: &[usize]) {
    if common::gpu_available() {
        common::check(paths, sizes, &opts());
    }
}

#[test]
fn every_example_runs_on_the_gpu_as_in_the_interpreter() {
    let mut paths = files("examples", "kiln");
    paths.extend(files("examples/ir", "kir"));
    paths.extend(files("tests/filetests/graphs", "kir"));
    check(&paths, &[1, 3]);
}

/// Every example, graph and small benchmark through the GPU path on the
/// PTX interpreter, which also fails any out-of-bounds or misaligned
/// access, shared-memory race or unmatched barrier.
#[test]
fn every_example_runs_on_the_simulated_gpu_as_in_the_interpreter() {
    let mut paths = files("examples", "kiln");
    paths.extend(files("examples/ir", "kir"));
    paths.extend(files("tests/filetests/graphs", "kir"));
    paths.extend(files("bench", "kiln").into_iter().filter(|p| {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        !LARGE.contains(&stem)
    }));
    let opts = JitOptions {
        device: Device::CudaSim,
        ..JitOptions::default()
    };
    common::check(&paths, &[2], &opts);
}

#[test]
fn small_benchmarks_run_on_the_gpu_as_in_the_interpreter() {
    let paths: Vec<PathBuf> = files("bench", "kiln")
        .into_iter()
        .filter(|p| {
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            !LARGE.contains(&stem)
        })
        .collect();
    check(&paths, &[1, 3]);
}

/// Awkward sizes: 50, 783 and 4096 rows of the MLP and of W1 and W1b.
#[test]
fn awkward_row_counts_on_the_gpu() {
    check(
        &["examples/mlp.kiln", "bench/w1.kiln", "bench/w1b.kiln"].map(|p| root().join(p)),
        &[50, 783, 4096],
    );
}

#[test]
fn large_blocks_on_the_gpu() {
    check(&[root().join("bench/w3.kiln")], &[2]);
    check(&[root().join("bench/w3d.kiln")], &[1]);
}

#[test]
fn large_quantized_linears_on_the_gpu() {
    check(
        &["w4", "w5_int8", "w5_fp8"].map(|f| root().join(format!("bench/{f}.kiln"))),
        &[2],
    );
}

/// Bad inputs are errors naming the input, not panics, on the GPU too.
#[test]
fn bad_inputs_are_errors_on_the_gpu() {
    if !common::gpu_available() {
        return;
    }
    let mut model = jit::compile_file(&root().join("examples/mlp.kiln"), &opts()).expect("compile");
    model.bind_random_weights(1).expect("weights");
    let wrong = kiln_runtime::HostTensor::from_values(DType::F32, &[2, 63], &[0.5; 126]);
    let e = model
        .run(&HashMap::from([("x".to_string(), wrong)]))
        .unwrap_err()
        .to_string();
    assert!(e.contains('x') && e.contains("63"), "{e}");
    let e = model.run(&HashMap::new()).unwrap_err().to_string();
    assert!(e.contains("missing input `x`"), "{e}");
}

/// Where there is no driver, asking for the GPU is a clear error.
#[test]
fn no_driver_is_a_clear_error() {
    if kiln_runtime::cuda::driver_present() {
        return;
    }
    let e = jit::compile_file(&root().join("examples/mlp.kiln"), &opts())
        .err()
        .expect("no driver: an error")
        .to_string();
    assert!(e.contains("CUDA driver"), "{e}");
}

/// GPU artifacts with cubins (`kiln::cubin`, when `ptxas` is found) load
/// every module from its cubin on this GPU and give what the same artifact
/// without cubins gives (its PTX compiled by the driver), within the f32
/// tolerance; the PTX-only artifact loads no cubin.
#[test]
fn gpu_artifacts_run_from_their_cubins() {
    use kiln::artifact::{ArtifactOptions, build};
    use kiln::data::WeightSource;
    use kiln_dialect::Dim;
    use kiln_runtime::artifact::Target;
    if !common::gpu_available() {
        return;
    }
    let Some(ptxas) = kiln::cubin::find_ptxas() else {
        assert!(
            std::env::var("KILN_REQUIRE_PTXAS").as_deref() != Ok("1"),
            "KILN_REQUIRE_PTXAS=1 but no ptxas (set KILN_PTXAS)"
        );
        eprintln!("notice: no ptxas found: cubins are not checked");
        return;
    };
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(common::seed());
    for (file, dims) in [
        ("examples/mlp.kiln", vec![("batch", 5)]),
        ("examples/llama_block.kiln", vec![("seq", 19)]),
    ] {
        let dims: std::collections::BTreeMap<String, usize> =
            dims.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let artifact = |ptxas: Option<PathBuf>| {
            build(
                &root().join(file),
                &ArtifactOptions {
                    target: Target::Sm90,
                    dims: dims.clone(),
                    weights: Some(WeightSource::Random(1)),
                    ptxas,
                    specialize: false,
                    autotune: None,
                },
            )
            .expect("compiles")
        };
        let with = artifact(Some(ptxas.clone()));
        let without = artifact(None);
        assert!(with.cubins.is_some() && without.cubins.is_none());
        let p = &with.program;
        let mut inputs = HashMap::new();
        for &b in &p.inputs {
            let buf = &p.buffers[b];
            let shape: Vec<usize> = buf
                .shape
                .0
                .iter()
                .map(|d| match d {
                    Dim::Static(n) => *n as usize,
                    Dim::Sym(s) => dims[s.as_str()],
                })
                .collect();
            let n = shape.iter().product();
            let values = common::values(&mut rng, buf.dtype, n);
            inputs.insert(
                buf.name.clone(),
                kiln_runtime::HostTensor::from_values(buf.dtype, &shape, &values),
            );
        }
        let exe = with.cuda_executable().expect("loads with cubins");
        let s = exe.stats();
        assert!(
            s.modules > 0 && s.cubin_modules == s.modules,
            "{file}: {s:?}"
        );
        let got = exe.run(&inputs).expect("runs");
        let plain = without.cuda_executable().expect("loads");
        assert_eq!(plain.stats().cubin_modules, 0);
        let want = plain.run(&inputs).expect("runs");
        for ((name, g), (_, w)) in got.iter().zip(&want) {
            let (g, w) = (g.to_values(), w.to_values());
            let scale = w.iter().fold(1e-30f64, |a, v| a.max(v.abs()));
            let err = g
                .iter()
                .zip(&w)
                .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
            assert!(
                err <= common::tolerance(DType::F32) * scale,
                "{file} output {name}: {err} of {scale}"
            );
        }
    }
}

/// Models compiled with `specialize` (their dims static, so a small `seq`
/// or batch takes the GEMV path) against the interpreter: on the CPU
/// always, on the GPU where there is one.
#[test]
fn specialized_models_run_as_the_interpreter_says() {
    let mut devices = vec![Device::Cpu];
    if common::gpu_available() {
        devices.push(Device::Cuda);
    }
    for device in devices {
        for (file, dim, size) in [
            ("examples/llama_block.kiln", "seq", 4),
            ("examples/llama_decode.kiln", "batch", 2),
            ("examples/mlp.kiln", "batch", 3),
        ] {
            let opts = JitOptions {
                device,
                dims: HashMap::from([(dim.to_string(), size as u64)]),
                specialize: true,
                ..JitOptions::default()
            };
            let seed = common::seed();
            common::compare(&root().join(file), size, seed, &opts)
                .unwrap_or_else(|e| panic!("{file} on {device:?} (seed {seed}): {e}"));
        }
    }
}

/// int8 and fp8 linear layers with their weights stored `[k, n]` take
/// the 8-bit tensor-core paths: the weight is transposed once at bind time
/// (`lower::transpose_8bit_weights`), the contraction is an `imma_` (s8)
/// or `f8mma_` (e4m3) kernel, and the result is the interpreter's on the
/// PTX interpreter (exactly for int8).
#[test]
fn eight_bit_linears_run_on_tensor_cores_on_the_simulated_gpu() {
    let dir = common::scratch("8bit-linear");
    let opts = JitOptions {
        device: Device::CudaSim,
        ..JitOptions::default()
    };
    let seed = common::seed();
    for (name, elem, wide, entry) in [
        ("int8_linear", "int8", "i32", "imma_"),
        ("fp8_linear", "fp8", "bf16", "f8mma_"),
    ] {
        let path = dir.join(format!("{name}.kiln"));
        std::fs::write(
            &path,
            format!(
                "model {name} {{\n    input a: {elem}[m, 96]\n    weight b: {elem}[96, 40]\n    \
                 output c = cast(a, dtype = {wide}) @ cast(b, dtype = {wide})\n}}\n"
            ),
        )
        .unwrap();
        let model = jit::compile_file(&path, &opts).expect("compiles");
        let p = model.program();
        assert!(
            p.launches
                .iter()
                .any(|l| l.bind_time && l.kernel.name.starts_with("k_major")),
            "{name}: the weight is transposed at bind time"
        );
        let fast = p
            .launches
            .iter()
            .filter(|l| kiln::codegen::ptx::entry_name(&l.kernel).starts_with(entry))
            .count();
        assert_eq!(fast, 1, "{name}: one 8-bit tensor-core contraction");
        for m in [1, 130] {
            common::compare(&path, m, seed, &opts)
                .unwrap_or_else(|e| panic!("{name}, m {m} (seed {seed}): {e}"));
        }
    }
}

/// A W8A8 model's projections run on the 8-bit tensor cores:
/// `examples/llama_w8a8.kiln` (int8 attention projections, fp8 MLP)
/// compiles to at least four `imma_` and three `f8mma_` contractions (the
/// plan may compute the gate product twice, once for the row scale of the
/// down projection's activations) that read activation codes written by
/// a kernel of their own (a quantization fused into the contraction would
/// make it the generic path), none to the generic path, and runs on the
/// PTX interpreter as the reference interpreter says.
#[test]
fn w8a8_projections_run_on_tensor_cores_on_the_simulated_gpu() {
    let opts = JitOptions {
        device: Device::CudaSim,
        ..JitOptions::default()
    };
    let path = root().join("examples/llama_w8a8.kiln");
    let model = jit::compile_file(&path, &opts).expect("compiles");
    let count = |entry: &str| {
        model
            .program()
            .launches
            .iter()
            .filter(|l| kiln::codegen::ptx::entry_name(&l.kernel).starts_with(entry))
            .count()
    };
    assert!(count("imma_") >= 4 && count("f8mma_") >= 3);
    assert_eq!(count("contract_"), 0, "no generic contraction");
    let seed = common::seed();
    common::compare(&path, 19, seed, &opts)
        .unwrap_or_else(|e| panic!("llama_w8a8 (seed {seed}): {e}"));
}

/// Weight-only formats without a dequantizing main loop on the GPU (int8,
/// int3, int6, fp8, MXFP4, NVFP4) are dequantized once when the weights
/// are bound (a bind-time launch), and their products run on the bf16
/// tensor cores instead of the generic path (one thread per output
/// element); int4 keeps its fragment-order kernel. On the PTX interpreter
/// every output is the reference interpreter's.
#[test]
fn weight_only_formats_dequantize_at_bind_time_on_the_gpu() {
    let dir = common::scratch("weight-only");
    let path = dir.join("weight_only.kiln");
    std::fs::write(
        &path,
        "model weight_only {
    input x: bf16[m, 256]
    weight w8: i8[256, 64] per_channel scale f32 to bf16
    weight w3: i3[256, 64] group 32 scale bf16
    weight w6: i6[256, 64] group 64 scale bf16
    weight wf: fp8[256, 64] per_tensor scale bf16
    weight wmx: f4e2m1[256, 64] mx
    weight wnv: f4e2m1[256, 64] nv
    weight w4: int4[256, 64] group 128 scale bf16
    output a = x @ w8
    output b = x @ w3
    output c = x @ w6
    output d = x @ wf
    output e = x @ wmx
    output f = x @ wnv
    output g = x @ w4
}
",
    )
    .unwrap();
    let opts = JitOptions {
        device: Device::CudaSim,
        ..JitOptions::default()
    };
    let model = jit::compile_file(&path, &opts).expect("compiles");
    let p = model.program();
    let entries: Vec<String> = p
        .launches
        .iter()
        .filter(|l| !l.bind_time)
        .map(|l| kiln::codegen::ptx::entry_name(&l.kernel))
        .collect();
    let count = |prefix: &str| entries.iter().filter(|e| e.starts_with(prefix)).count();
    assert_eq!(count("contract_"), 0, "{entries:?}");
    assert_eq!((count("mma_"), count("qmma_")), (6, 1), "{entries:?}");
    let bind = p.launches.iter().filter(|l| l.bind_time).count();
    assert!(bind >= 6, "{bind} bind-time launches");
    let seed = common::seed();
    for m in [3, 70] {
        common::compare(&path, m, seed, &opts)
            .unwrap_or_else(|e| panic!("m {m} (seed {seed}): {e}"));
    }
}
