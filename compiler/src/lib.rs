//! The kiln compiler: loading models, binding data, and the `kiln` command.
//!
//! Models are written in the model language (`.kiln`, [`frontend`]) or as
//! graph IR text (`.kir`); [`pipeline`] runs the stages. The ONNX importer,
//! the optimizer and the backends join the same pipeline as they land.

pub mod cli;
pub mod data;
pub mod error;
pub mod frontend;
pub mod model;
pub mod pipeline;

pub use error::KilnError;
