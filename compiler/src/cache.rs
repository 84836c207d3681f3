//! The JIT's compile cache: what [`crate::jit`] compiled, stored as an
//! artifact without weights (`docs/artifact.md`) under a key made of the
//! model's content (its verified graph, printed), the options, the device
//! (and for the CPU the host's instruction set), kiln's version and build.
//! An unchanged model then skips the optimizer, the planner and kernel
//! generation: the JIT loads the stored kernels instead.
//!
//! Where it lives: `KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln/jit`, else
//! `$HOME/.cache/kiln/jit`; `KILN_CACHE=off` turns it off. Entries are
//! written to a temporary file and renamed, so concurrent compiles never
//! read a partial one; an entry that cannot be read or is refused is
//! compiled again and replaced. Entries over [`MAX_ENTRY_BYTES`] are not
//! kept, and the folder is kept under [`MAX_BYTES`] by removing the least
//! recently used entries.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use kiln_runtime::artifact::Artifact;

/// The most bytes of entries the cache folder keeps.
pub const MAX_BYTES: u64 = 1 << 30;

/// The largest entry stored: a larger one is a program holding large
/// constants (weights folded at compile time), cheaper to compile again
/// than to keep.
pub const MAX_ENTRY_BYTES: usize = 64 << 20;

/// Where the JIT caches what it compiles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Cache {
    /// The folder the environment names (see the module docs), or none.
    #[default]
    Default,
    /// No caching.
    Off,
    /// This folder.
    Dir(PathBuf),
}

impl Cache {
    /// The folder to use, if any.
    pub fn dir(&self) -> Option<PathBuf> {
        match self {
            Cache::Off => None,
            Cache::Dir(d) => Some(d.clone()),
            Cache::Default => {
                let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
                if var("KILN_CACHE").is_some_and(|v| v == "off" || v == "0") {
                    return None;
                }
                if let Some(d) = var("KILN_CACHE_DIR") {
                    return Some(PathBuf::from(d));
                }
                if let Some(d) = var("XDG_CACHE_HOME") {
                    return Some(PathBuf::from(d).join("kiln/jit"));
                }
                var("HOME").map(|h| PathBuf::from(h).join(".cache/kiln/jit"))
            }
        }
    }
}

/// The key of a compilation: 128 bits of hash over every part, in hex.
pub fn key(parts: &[&str]) -> String {
    let half = |seed: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        seed.hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        env!("KILN_BUILD_ID").hash(&mut h);
        parts.hash(&mut h);
        h.finish()
    };
    format!("{:016x}{:016x}", half(1), half(2))
}

fn entry(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.kart"))
}

/// The stored compilation of `key`, if there is a readable one; its use
/// time is renewed.
pub fn load(dir: &Path, key: &str) -> Option<Artifact> {
    let path = entry(dir, key);
    if !path.is_file() {
        return None;
    }
    match Artifact::read(&path) {
        Ok(a) if a.kiln_version == env!("CARGO_PKG_VERSION") && a.weights.is_none() => {
            if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            Some(a)
        }
        _ => {
            forget(dir, key);
            None
        }
    }
}

/// Removes the entry of `key` (one that could not be used).
pub fn forget(dir: &Path, key: &str) {
    let _ = std::fs::remove_file(entry(dir, key));
}

/// Stores `artifact` under `key`, unless it is larger than
/// [`MAX_ENTRY_BYTES`]. Failing to write is not an error of the
/// compilation: the entry is then missing.
pub fn store(dir: &Path, key: &str, artifact: &Artifact) {
    let bytes = artifact.to_bytes();
    if bytes.len() > MAX_ENTRY_BYTES || std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!("{key}.{}.tmp", std::process::id()));
    if std::fs::write(&tmp, bytes).is_err() || std::fs::rename(&tmp, entry(dir, key)).is_err() {
        let _ = std::fs::remove_file(&tmp);
        return;
    }
    prune(dir, MAX_BYTES);
}

/// Removes the least recently used entries until those left take at most
/// `max` bytes.
pub fn prune(dir: &Path, max: u64) {
    let Ok(list) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = list
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "kart"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, m.len(), e.path()))
        })
        .collect();
    let mut total: u64 = entries.iter().map(|e| e.1).sum();
    entries.sort();
    for (_, len, path) in entries {
        if total <= max {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}
