//! What can go wrong while importing an ONNX model. Every error names the
//! node (its name, op type and the opset in force) where there is one.

/// An ONNX model that kiln cannot import (a user error, exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file (or an external-data file) could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The bytes are not a protobuf `ModelProto` (truncated or not ONNX).
    #[error("{path}: not a valid ONNX model: {message}")]
    Decode { path: String, message: String },
    /// The model as a whole is outside what kiln reads (no graph, an
    /// opset out of range, a non-tensor input).
    #[error("{path}: {message}")]
    Model { path: String, message: String },
    /// An op type, or an attribute value of a supported op, that kiln does not import.
    #[error("unsupported ONNX op {op} (node {node}, opset {opset}){}", detail_note(.detail))]
    Unsupported {
        op: String,
        node: String,
        opset: i64,
        detail: String,
    },
    /// A node whose inputs or attributes do not fit its op: the message,
    /// with the shapes of its inputs.
    #[error("ONNX node {node} ({op}, opset {opset}): {message}; input shapes: {shapes}")]
    Node {
        op: String,
        node: String,
        opset: i64,
        message: String,
        shapes: String,
    },
    /// A node reads a value that nothing defines.
    #[error(
        "ONNX node {node} ({op}) reads `{name}`, which no node, graph input or initializer defines"
    )]
    MissingValue {
        op: String,
        node: String,
        name: String,
    },
    /// A tensor (an initializer or a constant attribute) whose data does not
    /// fit its declaration.
    #[error("ONNX tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
}

fn detail_note(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}
