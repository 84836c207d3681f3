//! kiln's graph dialect: element types, quantization schemes, shapes and
//! layouts, the op table, the graph with its verifier and shape inference,
//! the `.kir` text form, and the reference interpreter that every other path
//! is tested against.

pub mod activation_quant;
pub mod diag;
pub mod dtype;
pub mod graph;
pub mod infer;
pub mod interp;
pub mod kernel;
pub mod layout;
pub mod numeric;
pub mod ops;
pub mod quant;
pub mod shape;
pub mod specialize;
pub mod suggest;
pub mod text;
pub mod types;
pub mod verify;

pub use dtype::{DType, DTypeClass};
pub use graph::{Graph, NodeId, Span, Value};
pub use layout::Layout;
pub use ops::Op;
pub use quant::{Granularity, QuantScheme};
pub use shape::{Dim, Shape};
pub use types::TensorType;
