//! Cubins for GPU artifacts: each distinct PTX module assembled by `ptxas`
//! for the artifact's architecture, so that loading the artifact on a
//! matching GPU skips the driver's PTX compilation (`docs/artifact.md`).
//! `ptxas` is `KILN_PTXAS`, else `ptxas` on the `PATH`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_runtime::cuda::{Cubins, PtxKernel};

/// Why kernels could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("ptxas ({ptxas}) could not be run: {message}")]
    Run { ptxas: String, message: String },
    #[error("ptxas rejected kernel `{entry}` for {arch}:\n{message}")]
    Rejected {
        entry: String,
        arch: String,
        message: String,
    },
}

/// The `ptxas` to use, if there is one.
pub fn find_ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_PTXAS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("ptxas"))
        .find(|f| f.is_file())
}

/// Assembles every kernel for `arch` (each distinct PTX text once, several
/// at a time).
pub fn assemble(ptxas: &Path, arch: &str, kernels: &[PtxKernel]) -> Result<Cubins, AssembleError> {
    let run_error = |message: String| AssembleError::Run {
        ptxas: ptxas.display().to_string(),
        message,
    };
    let version = Command::new(ptxas)
        .arg("--version")
        .output()
        .map_err(|e| run_error(e.to_string()))?;
    // `Cuda compilation tools, release 13.0, V13.0.88`
    let text = String::from_utf8_lossy(&version.stdout);
    let assembler = text
        .lines()
        .find(|l| l.contains("release"))
        .or_else(|| text.lines().rfind(|l| !l.trim().is_empty()))
        .unwrap_or("ptxas")
        .trim()
        .to_string();
    let mut distinct: Vec<&PtxKernel> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for k in kernels {
        index.entry(k.ptx.as_str()).or_insert_with(|| {
            distinct.push(k);
            distinct.len() - 1
        });
    }
    let dir = std::env::temp_dir().join(format!(
        "kiln-ptxas-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).map_err(|e| run_error(format!("{}: {e}", dir.display())))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = distinct.len().div_ceil(threads).max(1);
    let assembled: Result<Vec<Vec<u8>>, AssembleError> = std::thread::scope(|s| {
        let handles: Vec<_> = distinct
            .chunks(chunk)
            .enumerate()
            .map(|(c, ks)| {
                let dir = &dir;
                s.spawn(move || {
                    ks.iter()
                        .enumerate()
                        .map(|(i, k)| one(ptxas, arch, dir, c * chunk + i, k))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(distinct.len());
        for h in handles {
            match h.join() {
                Ok(r) => all.extend(r?),
                Err(_) => return Err(run_error("an assembling thread panicked".into())),
            }
        }
        Ok(all)
    });
    let _ = std::fs::remove_dir_all(&dir);
    let assembled = assembled?;
    Ok(Cubins {
        arch: arch.to_string(),
        assembler,
        modules: kernels
            .iter()
            .map(|k| assembled[index[k.ptx.as_str()]].clone())
            .collect(),
    })
}

/// Assembles one module in `dir` (files named by `n`).
fn one(
    ptxas: &Path,
    arch: &str,
    dir: &Path,
    n: usize,
    k: &PtxKernel,
) -> Result<Vec<u8>, AssembleError> {
    let io = |e: std::io::Error| AssembleError::Run {
        ptxas: ptxas.display().to_string(),
        message: e.to_string(),
    };
    let ptx = dir.join(format!("{n}.ptx"));
    let cubin = dir.join(format!("{n}.cubin"));
    std::fs::write(&ptx, &k.ptx).map_err(io)?;
    let out = Command::new(ptxas)
        .arg(format!("-arch={arch}"))
        .arg("-o")
        .arg(&cubin)
        .arg(&ptx)
        .output()
        .map_err(io)?;
    if !out.status.success() {
        return Err(AssembleError::Rejected {
            entry: k.entry.clone(),
            arch: arch.to_string(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    std::fs::read(&cubin).map_err(io)
}
