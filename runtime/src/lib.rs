//! kiln's thin runtime: host tensors, `.npy` and `.safetensors` I/O, and
//! (as the backends land) the executors that run compiled artifacts.
//!
//! It depends on the dialect for element types and their exact encodings,
//! never on the optimizer or the front-ends.

pub mod artifact;
mod binding;
pub mod cpu;
pub mod cuda;
pub mod host;
pub mod npy;
pub mod safetensors;

pub use host::HostTensor;
