//! Loading a model file into a verified graph.

use std::path::{Path, PathBuf};

use kiln_dialect::Graph;
use kiln_dialect::verify::{render, verify};

use crate::error::KilnError;

/// A verified graph with the file it came from.
#[derive(Debug)]
pub struct Model {
    pub graph: Graph,
    pub path: PathBuf,
    pub source: String,
}

/// The model formats `kiln` reads at this stage.
pub const MODEL_EXTENSIONS: &[&str] = &["kir"];

/// Reads, parses and verifies a model. Errors come rendered against the
/// source, like a compiler's.
pub fn load(path: &Path) -> Result<Model, KilnError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !MODEL_EXTENSIONS.contains(&ext) {
        return Err(KilnError::Usage(format!(
            "{}: expected a model file ending in .kir (graph IR text), found {}",
            path.display(),
            if ext.is_empty() {
                "no extension".to_string()
            } else {
                format!("`.{ext}`")
            }
        )));
    }
    let source = std::fs::read_to_string(path).map_err(|source| KilnError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let name = path.display().to_string();
    let graph = kiln_dialect::text::parse(&source)
        .map_err(|e| KilnError::Diagnostics(e.diagnostic().render(&name, &source)))?;
    verify(&graph).map_err(|errs| KilnError::Diagnostics(render(&errs, &name, &source)))?;
    Ok(Model {
        graph,
        path: path.to_path_buf(),
        source,
    })
}
