//! The example, given an artifact of `examples/mlp.kiln` and an input
//! file, prints what the source model gives when the compiler's JIT runs
//! it on the same weights and input: the same line, bits included.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use kiln::artifact::{ArtifactOptions, build};
use kiln::data::{self, WeightSource};
use kiln::jit::{Device, JitOptions, compile_file};
use kiln_dialect::DType;
use kiln_runtime::HostTensor;
use kiln_runtime::artifact::Target;

#[test]
fn printed_output_is_the_source_models() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("examples/mlp.kiln");
    let dir = std::env::temp_dir().join(format!("kiln-run-artifact-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");

    let dims = [("batch".to_string(), 3usize)];
    let opts = ArtifactOptions {
        target: Target::Cpu,
        dims: dims.iter().cloned().collect(),
        weights: Some(WeightSource::Random(5)),
        ptxas: None,
        specialize: false,
        autotune: None,
    };
    let kart = dir.join("mlp.kart");
    build(&model, &opts)
        .expect("compile")
        .write(&kart)
        .expect("write");

    let values: Vec<f64> = (0..3 * 64).map(|k| (0.37 * k as f64 + 0.1).sin()).collect();
    let x = HostTensor::from_values(DType::F32, &[3, 64], &values);
    let x_file = dir.join("x.npy");
    kiln_runtime::npy::write(&x_file, &x).expect("write x");

    let out = Command::new(env!("CARGO_BIN_EXE_run-artifact"))
        .arg(&kart)
        .arg("--input")
        .arg(format!("x={}", x_file.display()))
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("loaded in ") && stderr.contains("first run "),
        "{stderr}"
    );

    // The source model through the JIT, planned at the same dims.
    let jit = JitOptions {
        device: Device::Cpu,
        dims: dims.iter().map(|(k, v)| (k.clone(), *v as u64)).collect(),
        ..JitOptions::default()
    };
    let mut m = compile_file(&model, &jit).expect("jit");
    m.bind_random_weights(5).expect("weights");
    let outputs = m.run(&HashMap::from([("x".to_string(), x)])).expect("run");
    let want: Vec<String> = outputs
        .iter()
        .map(|(n, t)| data::summary(n, &data::to_interp(t)))
        .collect();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), want);

    // Bad input: exit code 1 and a message.
    let out = Command::new(env!("CARGO_BIN_EXE_run-artifact"))
        .arg(dir.join("x.npy"))
        .output()
        .expect("run the example");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(stderr.contains("not a kiln artifact"), "{stderr}");
}
