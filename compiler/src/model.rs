//! Loading a model file into a verified graph.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_dialect::Graph;
use kiln_dialect::interp::Tensor;
use kiln_dialect::verify::{render, verify};

use crate::error::KilnError;
use crate::frontend::{self, ast};

/// A verified graph with the file it came from.
#[derive(Debug)]
pub struct Model {
    pub graph: Graph,
    pub path: PathBuf,
    /// The syntax tree, for models written in the model language.
    pub ast: Option<ast::File>,
    /// Weight data the model file carries (ONNX initializers), by name;
    /// empty for the text formats.
    pub weights: HashMap<String, Tensor>,
}

/// The model formats `kiln` reads.
pub const MODEL_EXTENSIONS: &[&str] = &["kiln", "kir", "onnx"];

/// Parses and verifies model-language source held in memory; `name` is how
/// diagnostics call it, and imports resolve against the current directory.
pub fn load_source(name: &str, src: &str) -> Result<Model, KilnError> {
    let c = frontend::compile_source(name, src, Path::new("."))
        .map_err(|f| KilnError::Diagnostics(f.render()))?;
    from_frontend(c, Path::new(name))
}

fn from_frontend(c: frontend::Compiled, path: &Path) -> Result<Model, KilnError> {
    // The lowering infers every type, so this only guards kiln itself.
    if let Err(errs) = verify(&c.graph) {
        let text = kiln_dialect::text::print(&c.graph);
        return Err(KilnError::Internal {
            stage: "the front-end's lowering",
            message: format!(
                "the graph of {} does not verify:\n{}",
                path.display(),
                render(&errs, "lowered.kir", &text)
            ),
        });
    }
    Ok(Model {
        graph: c.graph,
        path: path.to_path_buf(),
        ast: Some(c.ast),
        weights: HashMap::new(),
    })
}

/// Reads, parses and verifies a model: `.kiln` (the model language),
/// `.kir` (graph IR text) or `.onnx` (imported, with its initializers as
/// [`Model::weights`]). Errors come rendered against the source, like a
/// compiler's.
pub fn load(path: &Path) -> Result<Model, KilnError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let name = path.display().to_string();
    match ext {
        "kiln" => {
            if !path.exists() {
                return Err(KilnError::Io {
                    path: name,
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            let c = frontend::compile_file(path).map_err(|f| KilnError::Diagnostics(f.render()))?;
            from_frontend(c, path)
        }
        "kir" => {
            let source = std::fs::read_to_string(path).map_err(|source| KilnError::Io {
                path: name.clone(),
                source,
            })?;
            let graph = kiln_dialect::text::parse(&source)
                .map_err(|e| KilnError::Diagnostics(e.diagnostic().render(&name, &source)))?;
            verify(&graph).map_err(|errs| KilnError::Diagnostics(render(&errs, &name, &source)))?;
            Ok(Model {
                graph,
                path: path.to_path_buf(),
                ast: None,
                weights: HashMap::new(),
            })
        }
        "onnx" => {
            let imported = crate::onnx::import_file(path)?;
            if let Err(errs) = verify(&imported.graph) {
                let text = kiln_dialect::text::print(&imported.graph);
                return Err(KilnError::Internal {
                    stage: "the ONNX import",
                    message: format!(
                        "the graph of {} does not verify:\n{}",
                        path.display(),
                        render(&errs, "imported.kir", &text)
                    ),
                });
            }
            Ok(Model {
                graph: imported.graph,
                path: path.to_path_buf(),
                ast: None,
                weights: imported.weights,
            })
        }
        _ => Err(KilnError::Usage(format!(
            "{name}: expected a model file ending in .kiln (model language), .kir (graph IR text) or .onnx, found {}",
            if ext.is_empty() {
                "no extension".to_string()
            } else {
                format!("`.{ext}`")
            }
        ))),
    }
}
