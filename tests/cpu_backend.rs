//! The CPU backend end to end: every example and benchmark model, compiled
//! for the `cpu` target, lowered to kernels, compiled with Cranelift and run
//! by the runtime's executor, against the reference interpreter on the
//! unoptimized graph (`common::check`; tolerances per dtype there), with
//! fresh random inputs and weights each run.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{LARGE, files, root};
use kiln::jit::{self, JitOptions};
use kiln_dialect::DType;

fn check(paths: &[PathBuf], sizes: &[usize]) {
    common::check(paths, sizes, &JitOptions::default());
}

#[test]
fn every_example_runs_on_the_cpu_as_in_the_interpreter() {
    let mut paths = files("examples", "kiln");
    paths.extend(files("examples/ir", "kir"));
    paths.extend(files("tests/filetests/graphs", "kir"));
    check(&paths, &[1, 3]);
}

#[test]
fn small_benchmarks_run_on_the_cpu_as_in_the_interpreter() {
    let paths: Vec<PathBuf> = files("bench", "kiln")
        .into_iter()
        .filter(|p| {
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            !LARGE.contains(&stem)
        })
        .collect();
    check(&paths, &[1, 3]);
}

/// Awkward sizes on the rows of the MLP and of W1: 50 and 783.
#[test]
fn awkward_row_counts() {
    check(
        &[
            root().join("examples/mlp.kiln"),
            root().join("bench/w1.kiln"),
        ],
        &[50, 783],
    );
}

#[test]
fn large_prefill_block_on_the_cpu() {
    check(&[root().join("bench/w3.kiln")], &[2]);
}

#[test]
fn large_decode_block_on_the_cpu() {
    check(&[root().join("bench/w3d.kiln")], &[1]);
}

#[test]
fn large_quantized_linears_on_the_cpu() {
    check(
        &["w4", "w5_int8", "w5_fp8"].map(|f| root().join(format!("bench/{f}.kiln"))),
        &[2],
    );
}

/// Bad inputs are errors naming the input, not panics.
#[test]
fn bad_inputs_are_errors() {
    let mut model = jit::compile_file(&root().join("examples/mlp.kiln"), &JitOptions::default())
        .expect("compile");
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
