//! The CUDA executor: runs a kernel-dialect program whose kernels were
//! compiled to PTX, on an NVIDIA GPU found through the driver at run time.

pub mod kernel;

pub use kernel::{Grid, PtxKernel, launch_config};
