//! Reference fixtures computed outside kiln: the `kiln` binary runs a model
//! on committed inputs and weights, and its output must match the committed
//! expected output.
//!
//! `tests/fixtures/mlp/` comes from `scripts/make_mlp_fixture.py` (NumPy, in
//! float64 from the float32 values): `examples/mlp.kiln` with batch 3.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-fixtures-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Reads a little-endian f32 C-order `.npy` (format 1.x or 2.x): returns
/// the shape and the data.
fn read_f32_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..6], b"\x93NUMPY", "{}", path.display());
    let hlen = match b[6] {
        1 => u16::from_le_bytes([b[8], b[9]]) as usize + 10,
        _ => u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize + 12,
    };
    let header = text(&b[..hlen]);
    assert!(header.contains("'<f4'"), "{}: {header}", path.display());
    assert!(
        header.contains("'fortran_order': False"),
        "{}: {header}",
        path.display()
    );
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("{}: no shape in {header}", path.display()));
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("a dimension"))
        .collect();
    let data: Vec<f32> = b[hlen..]
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "{}: data does not match the shape",
        path.display()
    );
    (shape, data)
}

#[test]
fn mlp_matches_the_numpy_reference() {
    let out_dir = scratch("mlp");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "run",
            "examples/mlp.kiln",
            "--weights",
            "tests/fixtures/mlp/weights.safetensors",
            "--input",
            "x=tests/fixtures/mlp/x.npy",
            "--output-dir",
        ])
        .arg(&out_dir)
        .current_dir(root())
        .output()
        .expect("run kiln");
    assert!(
        out.status.success(),
        "kiln run failed ({:?}):\n{}",
        out.status.code(),
        text(&out.stderr)
    );
    let (shape, got) = read_f32_npy(&out_dir.join("y.npy"));
    let (want_shape, want) = read_f32_npy(&root().join("tests/fixtures/mlp/y.npy"));
    assert_eq!(shape, want_shape);
    assert_eq!(shape, [3, 64]);
    let mut worst = (0usize, 0f32);
    let bad: Vec<String> = got
        .iter()
        .zip(&want)
        .enumerate()
        .filter_map(|(i, (&a, &b))| {
            let err = (a - b).abs();
            let tol = 1e-5 * b.abs().max(1e-3);
            if err / tol > worst.1 {
                worst = (i, err / tol);
            }
            (err.is_nan() || err > tol)
                .then(|| format!("y[{}, {}] = {a}, expected {b}", i / 64, i % 64))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} elements differ by more than 1e-5 relative:\n{}",
        bad.len(),
        got.len(),
        bad.join("\n")
    );
    let _ = std::fs::remove_dir_all(&out_dir);
    eprintln!(
        "worst element: y[{}, {}] at {:.3} of the tolerance",
        worst.0 / 64,
        worst.0 % 64,
        worst.1
    );
}
