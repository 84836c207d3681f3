//! The CUDA executor: runs a kernel-dialect program whose kernels were
//! compiled to PTX, on an NVIDIA GPU found through the driver at run time.
//! docs/gpu.md ("The CUDA executor") describes driver detection, the module
//! cache, the per-bucket arenas, graph capture and replay, and the errors.

mod driver;
mod error;
pub mod executor;
pub mod kernel;
mod memory;
mod modules;
pub mod sim;

pub use driver::{driver_present, no_driver};
pub use error::CudaError;
pub use executor::{CudaExecutable, CudaStats};
pub use kernel::{Cubins, Grid, PtxKernel, TensorMapSpec, launch_config};
pub use memory::DEVICE_ALIGN;
pub use sim::{SimExecutable, SimStats};
