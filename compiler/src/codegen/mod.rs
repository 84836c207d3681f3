//! Backends that turn kernels of the kernel dialect into code.
//!
//! * [`clif`]: Cranelift IR for the CPU, run by `kiln_runtime::cpu::jit`.
//! * [`ptx`]: PTX text for NVIDIA GPUs, run by `kiln_runtime::cuda`.

pub mod clif;
pub mod ptx;

pub use clif::{ClifKernel, CodegenError, clif_text, compile_kernel};
