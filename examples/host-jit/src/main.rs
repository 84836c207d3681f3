//! JIT-compiles `examples/mlp.kiln` from a host program, binds seeded
//! random weights, runs it on a fixed input, and prints the output.
//!
//! ```sh
//! cargo run -p kiln-host-jit-example            # from the repository root
//! ```
//!
//! Every step returns errors as values; the program prints them and exits
//! with status 1.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use kiln::jit::{self, JitOptions};
use kiln_dialect::DType;
use kiln_runtime::HostTensor;

/// The input: `x[i, j] = sin(0.37 * (64 i + j) + 0.1)`, rows 0..2.
pub fn input() -> HostTensor {
    let values: Vec<f64> = (0..2 * 64).map(|k| (0.37 * k as f64 + 0.1).sin()).collect();
    HostTensor::from_values(DType::F32, &[2, 64], &values)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), kiln::KilnError> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let src_path = root.join("examples/mlp.kiln");
    let src = std::fs::read_to_string(&src_path).map_err(|source| kiln::KilnError::Io {
        path: src_path.display().to_string(),
        source,
    })?;
    let mut model = jit::compile_source("mlp.kiln", &src, &JitOptions::default())?;
    model.bind_random_weights(7)?;
    let outputs = model.run(&HashMap::from([("x".to_string(), input())]))?;
    for (name, t) in &outputs {
        let v = t.to_values();
        println!("{name}: {}{:?}", t.dtype, t.shape);
        for row in v.chunks(t.shape.last().copied().unwrap_or(1).max(1)) {
            let cells: Vec<String> = row.iter().map(|x| format!("{x:.6}")).collect();
            println!("{}", cells.join(" "));
        }
    }
    println!(
        "compiled in {:.1} ms, {} kernel(s)",
        model.compile_time().as_secs_f64() * 1e3,
        model.program().launches.len()
    );
    Ok(())
}
