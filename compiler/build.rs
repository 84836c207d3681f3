use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

fn main() {
    // Generates the model-language parser from src/frontend/grammar.lalrpop.
    lalrpop::Configuration::new()
        .use_cargo_dir_conventions()
        .process()
        .expect("the grammar of the model language compiles");
    build_id();
}

/// `KILN_BUILD_ID`: a hash of the sources of kiln's workspace crates (and of
/// Cargo.lock), part of the JIT compile cache's key so that a changed
/// compiler never reuses what an older one compiled. Cargo reruns this
/// script when any of those files changes.
fn build_id() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let mut roots = vec![manifest.join("src"), manifest.join("build.rs")];
    if let Some(ws) = manifest.parent() {
        for c in ["dialect/src", "passes/src", "runtime/src", "Cargo.lock"] {
            roots.push(ws.join(c));
        }
    }
    let mut files = Vec::new();
    for r in &roots {
        if r.exists() {
            println!("cargo:rerun-if-changed={}", r.display());
            collect(r, &mut files);
        }
    }
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in &files {
        f.strip_prefix(&manifest).unwrap_or(f).hash(&mut h);
        std::fs::read(f).unwrap_or_default().hash(&mut h);
    }
    println!("cargo:rustc-env=KILN_BUILD_ID={:016x}", h.finish());
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        if let Ok(entries) = std::fs::read_dir(p) {
            for e in entries.flatten() {
                collect(&e.path(), out);
            }
        }
    } else {
        out.push(p.to_path_buf());
    }
}
