//! Regenerates `compiler/src/onnx/proto/onnx.rs` from the vendored
//! `compiler/src/onnx/proto/onnx.proto`, with no `protoc` binary: `protox`
//! parses the schema and `prost-build` writes the Rust types. The output
//! starts with a header that records the schema's FNV-1a hash, which a test
//! of the `kiln` crate checks, so a schema edited without regenerating fails
//! the tests.
//!
//! Run from the repository root: `cargo run --manifest-path tools/onnx-proto/Cargo.toml`
//! (or `scripts/gen-onnx-proto.sh`). With `--check` it writes nothing and
//! exits 1 when the committed file differs from what it would write.

use std::path::Path;

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn main() {
    let check = std::env::args().any(|a| a == "--check");
    let dir = Path::new("compiler/src/onnx/proto");
    let proto = dir.join("onnx.proto");
    let schema = std::fs::read(&proto)
        .expect("run from the repository root: compiler/src/onnx/proto/onnx.proto not found");
    let fds = protox::compile([&proto], [dir]).expect("onnx.proto does not parse");
    let out = tempdir();
    prost_build::Config::new()
        .out_dir(&out)
        .compile_fds(fds)
        .expect("prost-build failed");
    let code = std::fs::read_to_string(out.join("onnx.rs")).expect("prost-build wrote no onnx.rs");
    let text = format!(
        "// Generated from onnx.proto by tools/onnx-proto (protox + prost-build); do not edit.\n\
         // Regenerate with scripts/gen-onnx-proto.sh.\n\
         // schema-fnv1a: {:016x}\n\n{code}",
        fnv1a(&schema)
    );
    let target = dir.join("onnx.rs");
    if check {
        let old = std::fs::read_to_string(&target).unwrap_or_default();
        if old != text {
            eprintln!(
                "{} is not current: run scripts/gen-onnx-proto.sh",
                target.display()
            );
            std::process::exit(1);
        }
        println!("{} is current", target.display());
    } else {
        std::fs::write(&target, text).expect("cannot write onnx.rs");
        println!("wrote {}", target.display());
    }
    let _ = std::fs::remove_dir_all(&out);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-onnx-proto-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("cannot create a temporary directory");
    d
}
