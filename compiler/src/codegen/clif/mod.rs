//! The Cranelift backend: each kernel becomes one CLIF function with the
//! kernel ABI
//!
//! ```text
//! extern "C" fn(args: *const *mut u8, dims: *const i64, begin: i64, end: i64)
//! ```
//!
//! `args[i]` points at input `i`'s bytes (row-major, in its storage type as
//! `HostTensor` holds them), `args[inputs.len()]` at the output's; `dims[j]`
//! is the size of [`Kernel::dims`]`[j]`; the call computes the output
//! elements whose index on axis 0 lies in `[begin, end)` (a rank-0 output:
//! its one element when `begin <= 0 < end`).
//!
//! Ranges of one output never interfere, with one condition for the
//! sub-byte output types (`i4 u4 i3 i6 f4e2m1`): elements are written by
//! read-modify-write of whole bytes, so ranges run at the same time must
//! start on a byte boundary (`begin * elements_per_row * bits % 8 == 0`).
//!
//! Loads are trusted to lie inside their tensors, as the reference evaluator
//! checks (`kernel::eval::run` rejects a kernel that reads outside); a
//! guarded load reads only where its guard holds. Loop-invariant
//! sub-expressions (reductions included) are computed once in the
//! preheader of the outermost loop they do not depend on; this also
//! evaluates the invariant parts of a reduction's body when its extent is
//! zero, which needs their loads to be in bounds too.
//!
//! In f32 kernels `exp`, `erf` and `tanh` are inline approximations
//! (`math.rs`); f32 map kernels and reductions that qualify run four lanes at
//! a time (`vmap.rs`). The other transcendental functions (and all of f64
//! kernels) call the runtime's helpers (`kiln_exp_f32`,
//! ...), named in [`ClifKernel::imports`] and linked by
//! `kiln_runtime::cpu::jit::JitModule`.

mod contract;
mod dtype_io;
mod expr;
mod hoist;
mod interior;
mod loops;
mod math;
mod views;
mod vmap;

use cranelift_codegen::ir::{AbiParam, Function, Signature, UserFuncName, types};
use cranelift_codegen::isa::TargetIsa;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use kiln_dialect::kernel::{Body, Kernel};
use kiln_runtime::cpu::jit::JitFunction;
use thiserror::Error;

use expr::Emitter;

/// A kernel compiled to Cranelift IR.
#[derive(Clone, Debug)]
pub struct ClifKernel {
    /// The kernel's name: the symbol the JIT defines.
    pub name: String,
    /// The function, with the kernel ABI's signature.
    pub func: Function,
    /// The runtime helpers the function calls: user external name
    /// `u0:i` is `imports[i]`.
    pub imports: Vec<String>,
    /// Whether Cranelift's optimizer should run on it: not for
    /// contractions (`JitFunction::optimize` says why).
    pub optimize: bool,
}

impl From<ClifKernel> for JitFunction {
    fn from(k: ClifKernel) -> JitFunction {
        JitFunction {
            name: k.name,
            func: k.func,
            imports: k.imports,
            optimize: k.optimize,
        }
    }
}

/// Why a kernel could not be compiled.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CodegenError {
    /// An ill-typed expression (which the evaluator would reject too).
    #[error("kernel `{kernel}`: type error in `{expr}`: {message}")]
    Type {
        kernel: String,
        expr: String,
        message: String,
    },
    /// A form this backend does not compile.
    #[error("kernel `{kernel}`: unsupported `{expr}`: {message}")]
    Unsupported {
        kernel: String,
        expr: String,
        message: String,
    },
    /// A shape or dim the kernel does not declare.
    #[error("kernel `{kernel}`: {message}")]
    Kernel { kernel: String, message: String },
    /// Cranelift's verifier rejected the function (a backend bug).
    #[error("kernel `{kernel}`: invalid CLIF: {message}")]
    Verify { kernel: String, message: String },
}

/// Compiles `k` to a CLIF function for `isa`.
pub fn compile_kernel(k: &Kernel, isa: &dyn TargetIsa) -> Result<ClifKernel, CodegenError> {
    let collapsed = views::collapse_split_reads(k);
    let k = collapsed.as_ref().unwrap_or(k);
    let ptr = isa.pointer_type();
    let mut sig = Signature::new(isa.default_call_conv());
    sig.params.push(AbiParam::new(ptr));
    sig.params.push(AbiParam::new(ptr));
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    let mut func = Function::with_name_signature(UserFuncName::testcase(&k.name), sig);
    let mut fctx = FunctionBuilderContext::new();
    let imports;
    {
        let b = FunctionBuilder::new(&mut func, &mut fctx);
        let mut em = Emitter::new(k, b, isa)?;
        match &k.body {
            Body::Map { expr } => loops::emit_map(&mut em, expr)?,
            Body::Contract {
                k: kv,
                extent,
                a,
                b,
                epilogue,
            } => contract::emit_contract(&mut em, *kv, extent, a, b, epilogue)?,
            // No fused CPU attention kernel yet: the element expression.
            Body::Attention(t) => loops::emit_map(&mut em, &t.as_map(k.output.shape.rank()))?,
        }
        imports = em.finish(isa);
    }
    let flags = cranelift_codegen::settings::Flags::new(cranelift_codegen::settings::builder());
    cranelift_codegen::verify_function(&func, &flags).map_err(|e| CodegenError::Verify {
        kernel: k.name.clone(),
        message: e.to_string(),
    })?;
    Ok(ClifKernel {
        name: k.name.clone(),
        func,
        imports,
        optimize: matches!(k.body, Body::Map { .. } | Body::Attention(_)),
    })
}

/// The CLIF text of a compiled kernel (for `--emit clif`), with the helper
/// names it imports listed first.
pub fn clif_text(k: &ClifKernel) -> String {
    let mut s = String::new();
    for (i, name) in k.imports.iter().enumerate() {
        s.push_str(&format!("; u0:{i} = {name}\n"));
    }
    s.push_str(&k.func.display().to_string());
    s
}
