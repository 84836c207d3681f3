//! The ONNX front-end: a `ModelProto` becomes the same dialect [`Graph`]
//! the model language produces (same verifier, same pipeline afterwards).
//!
//! * The protobuf types are generated from the vendored `proto/onnx.proto`
//!   ([`proto`]; docs/onnx.md says how and why).
//! * Graph inputs keep their names; initializers become weights under their
//!   names, with their data in [`Imported::weights`]; outputs keep their names.
//! * Values known at compile time (initializers, `Constant`, `Shape` of a
//!   static shape, and any node all of whose inputs are known) are folded:
//!   the node is mapped into a scratch graph and run by the reference
//!   interpreter, so shape subgraphs (`Shape`, `Gather`, `Concat`, ...)
//!   leave no trace in the imported graph.
//! * Each op maps onto dialect ops in [`ops`], with the attribute defaults of
//!   the opset in force; what is not mapped is an
//!   `unsupported ONNX op <Op> (node <name>, opset <n>)` error.

pub mod error;
pub mod node;
pub mod ops;
pub mod tensor;

mod importer;
pub mod to_kiln;

/// The types generated from `proto/onnx.proto` by `tools/onnx-proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!("proto/onnx.rs");
}

use std::collections::HashMap;
use std::path::Path;

use kiln_dialect::Graph;
use kiln_dialect::interp::Tensor;
use prost::Message;

pub use error::OnnxError;

/// The opsets of the default domain that kiln imports. Opsets 22 and 23
/// change the other ops kiln imports only in the element types they allow
/// (their attributes, inputs and outputs are those of opset 21), and 23
/// adds `Attention` and `RMSNormalization`.
pub const OPSETS: std::ops::RangeInclusive<i64> = 7..=23;

/// An imported model: the graph and the data of its weights (the
/// initializers it uses at run time, by name).
#[derive(Debug)]
pub struct Imported {
    pub graph: Graph,
    pub weights: HashMap<String, Tensor>,
}

/// Reads and imports an `.onnx` file; external data is read relative to
/// its folder.
pub fn import_file(path: &Path) -> Result<Imported, OnnxError> {
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    import_bytes(&bytes, &path.display().to_string(), stem, base)
}

/// Imports a serialized `ModelProto`. `path` names it in messages, `stem`
/// names the graph when the model's graph has no name, and `base` is the
/// folder external data is read from.
pub fn import_bytes(
    bytes: &[u8],
    path: &str,
    stem: &str,
    base: &Path,
) -> Result<Imported, OnnxError> {
    let model = proto::ModelProto::decode(bytes).map_err(|e| OnnxError::Decode {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    importer::import(&model, path, stem, base)
}
