//! The kiln compiler: loading models, binding data, and the `kiln` command.
//!
//! Models are written in the model language (`.kiln`, [`frontend`]) or as
//! graph IR text (`.kir`); [`pipeline`] runs the stages. The ONNX importer,
//! the optimizer and the backends join the same pipeline as they land.

/// Writes to stdout; when the reader has gone away (`kiln ... | head`),
/// exits quietly instead of failing.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($t)*) {
            $crate::cli::stdout_failed(e);
        }
    }};
}

/// [`out!`] with a newline.
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            $crate::cli::stdout_failed(e);
        }
    }};
}

pub mod artifact;
pub mod autotune;
pub mod cache;
pub mod cli;
pub mod codegen;
pub mod cubin;
pub mod data;
pub mod error;
pub mod frontend;
pub mod jit;
pub mod model;
pub mod onnx;
pub mod pipeline;
pub mod progress;
pub mod quantize;

pub use error::KilnError;
