//! [`CudaError`]: every way building, binding or running a program on the
//! GPU can fail, with the kernel, launch or buffer it concerns.

use cudarc::driver::DriverError;
use cudarc::driver::sys::CUresult;

use crate::cpu::RunError;

/// Why a program cannot be built, bound or run on the GPU.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// The CUDA driver library could not be loaded.
    #[error("no CUDA driver found (libcuda.so): {reason}, use --device cpu")]
    NoDriver { reason: String },
    /// The driver loaded but no device could be opened.
    #[error("no usable CUDA device: {reason}, use --device cpu")]
    NoDevice { reason: String },
    /// A check shared with the CPU executor failed (program structure,
    /// weights, inputs, dims, sizes): the same messages as there.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A compiled kernel breaks the contract of [`super::kernel`].
    #[error("kernel `{kernel}` (entry `{entry}`): {message}")]
    InvalidKernel {
        kernel: String,
        entry: String,
        message: String,
    },
    /// The driver refused a kernel's PTX module or its entry.
    /// `arch` is the target the kernel was written for, `device` the
    /// device's (`sm_90`, or `unknown`).
    #[error(
        "loading the PTX of entry `{entry}` (kernel `{kernel}`, written for {arch}, \
         on a {device} device) failed: {source}"
    )]
    ModuleLoad {
        kernel: String,
        entry: String,
        arch: String,
        device: String,
        source: DriverError,
    },
    /// A kernel was compiled for a GPU this device is not: an
    /// architecture-specific target (`sm_90a`) on another generation, or a
    /// newer target than the device.
    #[error(
        "kernel `{kernel}` was compiled for {arch}, which this {device} device cannot run: \
         compile for the device's target (`--target {suggest}`)"
    )]
    ArchMismatch {
        kernel: String,
        arch: String,
        device: String,
        suggest: String,
    },
    /// A device allocation failed for lack of memory.
    #[error("out of device memory: {bytes} bytes for {what}")]
    OutOfMemory { what: String, bytes: usize },
    /// A kernel launch was refused.
    #[error("launch {launch} (kernel `{kernel}`, entry `{entry}`) failed: {source}")]
    Launch {
        launch: usize,
        kernel: String,
        entry: String,
        source: DriverError,
    },
    /// Stream capture gave no graph.
    #[error("capturing the launches of program `{program}` into a CUDA graph failed: {message}")]
    GraphCapture { program: String, message: String },
    /// A kernel failed on the PTX interpreter ([`super::SimExecutable`]):
    /// its module could not be read, or a thread did something undefined.
    #[error("kernel `{kernel}` (entry `{entry}`) on the PTX interpreter: {source}{at}")]
    Simulated {
        kernel: String,
        entry: String,
        source: Box<kiln_ptx_sim::SimError>,
        /// The PTX line the error names, as `\n  at: TEXT`, or empty.
        at: String,
    },
    /// Any other driver call failed; `context` says what was being done.
    #[error("CUDA error while {context}: {source}")]
    Driver {
        context: String,
        source: DriverError,
    },
}

impl CudaError {
    /// Whether this error means there is no GPU to run on (no driver, or
    /// no device): callers fall back to the CPU or skip.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            CudaError::NoDriver { .. } | CudaError::NoDevice { .. }
        )
    }

    /// A failed driver call made while `context`.
    pub(crate) fn driver(context: impl Into<String>, source: DriverError) -> CudaError {
        CudaError::Driver {
            context: context.into(),
            source,
        }
    }

    /// A failed allocation of `bytes` for `what`: [`CudaError::OutOfMemory`]
    /// when the driver says so, else a driver error.
    pub(crate) fn alloc(what: &str, bytes: usize, source: DriverError) -> CudaError {
        match source.0 {
            CUresult::CUDA_ERROR_OUT_OF_MEMORY => CudaError::OutOfMemory {
                what: what.to_string(),
                bytes,
            },
            _ => CudaError::driver(format!("allocating {bytes} bytes for {what}"), source),
        }
    }
}
