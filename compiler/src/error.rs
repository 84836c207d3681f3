//! The errors a user of `kiln` can meet. Each says what was expected and
//! what was found; rendered diagnostics point at the source line.

use kiln_dialect::interp::InterpError;
use kiln_runtime::npy::NpyError;
use kiln_runtime::safetensors::WeightsError;

/// A user-facing error (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum KilnError {
    /// Diagnostics already rendered against the source.
    #[error("{0}")]
    Diagnostics(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Npy(#[from] NpyError),
    /// An ONNX model that cannot be imported.
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    /// An imported model could not be written as a `.kiln` file.
    #[error(transparent)]
    OnnxWrite(#[from] crate::onnx::to_kiln::WriteError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Interp(#[from] InterpError),
    #[error("input `{name}`: {message}")]
    Input { name: String, message: String },
    #[error("weight `{name}`: {message}")]
    Weight { name: String, message: String },
    /// The kernel plan could not be lowered to kernels (an op the CPU and
    /// GPU backends do not lower yet).
    #[error(transparent)]
    Lower(#[from] kiln_passes::lower::LowerError),
    /// A kernel could not be compiled to native code.
    #[error(transparent)]
    Codegen(#[from] crate::codegen::clif::CodegenError),
    /// The JIT could not make the native code runnable.
    #[error(transparent)]
    Jit(#[from] kiln_runtime::cpu::jit::JitError),
    /// A compiled model refused its weights or inputs, or failed to run.
    #[error(transparent)]
    Run(#[from] kiln_runtime::cpu::RunError),
    /// A kernel could not be emitted as PTX.
    #[error(transparent)]
    Ptx(#[from] crate::codegen::ptx::PtxError),
    /// The GPU path: no driver or device, a refused module, a failed
    /// launch or allocation, or a model that refused its weights or inputs.
    #[error(transparent)]
    Cuda(#[from] kiln_runtime::cuda::CudaError),
    /// An artifact that cannot be read, verified or loaded.
    #[error(transparent)]
    Artifact(#[from] kiln_runtime::artifact::ArtifactError),
    #[error(transparent)]
    Assemble(#[from] crate::cubin::AssembleError),
    /// A compiler stage broke an invariant: a bug in kiln, not in the model.
    #[error(
        "internal error after {stage}: {message}\n(this is a bug in kiln, not in the model; please report it with the model)"
    )]
    Internal {
        stage: &'static str,
        message: String,
    },
}
