//! The CUDA backend end to end: every example and benchmark model, compiled
//! for the `sm_90` target, lowered to kernels, emitted as PTX and run by the
//! runtime's CUDA executor, against the reference interpreter on the
//! unoptimized graph (`common::check`; tolerances per dtype there), with
//! fresh random inputs and weights each run.
//!
//! Without a CUDA driver every test prints a notice and passes, unless
//! `KILN_REQUIRE_GPU=1` (scripts/gpu-check.sh sets it on the GPU machine).

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
