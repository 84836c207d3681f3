//! Backends that turn kernels of the kernel dialect into code.
//!
//! * [`clif`]: Cranelift IR for the CPU, run by `kiln_runtime::cpu::jit`.

pub mod clif;

pub use clif::{ClifKernel, CodegenError, clif_text, compile_kernel};
