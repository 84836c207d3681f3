//! The kiln compiler: loading models, binding data, and the `kiln` command.
//!
//! At this stage a model is graph IR text (`.kir`); the model language, the
//! ONNX importer, the optimizer and the backends join the same pipeline as
//! they land.

pub mod cli;
pub mod data;
pub mod error;
pub mod model;

pub use error::KilnError;
