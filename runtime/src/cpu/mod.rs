//! The CPU backend's run time: the memory planner ([`arena`]), the thread
//! pool ([`pool`]) and the executor ([`executor`]) that runs a kernel
//! [`Program`](kiln_dialect::kernel::Program) compiled to native functions.
//! docs/runtime.md describes the kernel ABI, planning, threading and errors.

mod aligned;
pub mod arena;
pub mod executor;
pub mod jit;
pub mod pool;
pub(crate) mod program_check;

pub use executor::{CpuExecutable, ExecStats, KernelFn, RunError};
pub use pool::ThreadPool;
