//! The example's printed output matches the reference interpreter on the
//! same model, weights and input (f32 kernels against the interpreter's
//! f64-then-rounded ops: 1e-4 relative to the output's largest magnitude).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use kiln::data;
use kiln_dialect::DType;
use kiln_dialect::interp;

#[test]
fn printed_output_matches_the_interpreter() {
    let out = Command::new(env!("CARGO_BIN_EXE_host-jit"))
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("y: f32[2, 64]"), "{stdout}");
    let got: Vec<f64> = lines
        .by_ref()
        .take(2)
        .flat_map(|l| {
            l.split_whitespace()
                .map(|c| c.parse::<f64>().expect("a number"))
        })
        .collect();
    assert_eq!(got.len(), 128, "{stdout}");
    assert!(
        lines.next().is_some_and(|l| l.starts_with("compiled in ")),
        "{stdout}"
    );

    // The same computation in the interpreter.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let g = kiln::model::load(&root.join("examples/mlp.kiln"))
        .expect("load")
        .graph;
    let mut bindings = HashMap::new();
    for v in g.weights() {
        let ty = g.value_type(v);
        let shape: Vec<usize> = ty
            .shape
            .as_static()
            .expect("static")
            .iter()
            .map(|&d| d as usize)
            .collect();
        let name = g.value_name(v).to_string();
        let t = data::random_weight(7, &name, ty.dtype, &shape, |n| {
            g.weights()
                .into_iter()
                .find(|&w| g.value_name(w) == n)
                .map(|w| g.value_type(w).clone())
        });
        bindings.insert(name, data::to_interp(&t));
    }
    let x: Vec<f64> = (0..128)
        .map(|k| (0.37 * k as f64 + 0.1).sin() as f32 as f64)
        .collect();
    bindings.insert(
        "x".to_string(),
        interp::Tensor::new(DType::F32, &[2, 64], x),
    );
    let want = &interp::run(&g, &bindings).expect("interpret")[0].1;
    let scale = want.data.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(&want.data).enumerate() {
        // printed with 6 decimals: 5e-7 of rounding, plus the kernels' f32 error
        assert!(
            (g - w).abs() <= 1e-4 * scale + 5e-7,
            "y[{}, {}] = {g}, the interpreter gives {w}",
            i / 64,
            i % 64
        );
    }
}
