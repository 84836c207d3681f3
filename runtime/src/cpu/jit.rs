//! The JIT for kernels compiled to Cranelift IR: defines the functions in a
//! [`cranelift_jit::JITModule`] with the helper symbols they import, and
//! hands out callable [`KernelFn`] pointers.
//!
//! The compiler builds the functions (`kiln::codegen::compile_kernel`); this
//! module only links and finalizes them, so the runtime does not depend on
//! the compiler.

use std::collections::HashMap;

use cranelift_codegen::Context;
use cranelift_codegen::ir::{Function, UserExternalName};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module};
use kiln_dialect::DType;
use kiln_dialect::numeric;
use thiserror::Error;

/// A compiled kernel: `args[i]` points at input `i`'s bytes and
/// `args[inputs]` at the output's, `dims[j]` is the size of the kernel's
/// symbolic dim `j`, and the call computes the output elements whose index
/// on axis 0 lies in `[begin, end)`.
pub type KernelFn = unsafe extern "C" fn(*const *mut u8, *const i64, i64, i64);

/// Why the JIT failed.
#[derive(Debug, Error)]
pub enum JitError {
    #[error("no Cranelift backend for this host: {0}")]
    Host(String),
    #[error("Cranelift settings: {0}")]
    Settings(String),
    #[error("kernel `{name}` does not link: {message}")]
    Module { name: String, message: String },
    #[error("kernel `{name}` imports `{helper}`, which the runtime does not provide")]
    UnknownHelper { name: String, helper: String },
}

/// The host's instruction set, with `opt_level = speed`.
pub fn host_isa() -> Result<OwnedTargetIsa, JitError> {
    host_isa_at("speed")
}

/// The host's instruction set at a Cranelift `opt_level` (`none`, `speed`,
/// `speed_and_size`).
pub fn host_isa_at(opt_level: &str) -> Result<OwnedTargetIsa, JitError> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| {
        f.set(k, v).map_err(|e| JitError::Settings(e.to_string()))
    };
    set(&mut flags, "opt_level", opt_level)?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    let isa = cranelift_native::builder().map_err(|e| JitError::Host(e.to_string()))?;
    isa.finish(settings::Flags::new(flags))
        .map_err(|e| JitError::Host(e.to_string()))
}

/// One function to link: its symbol name, its IR and the helper names its
/// user-named external functions refer to (namespace 0, index `i` names
/// `imports[i]`).
pub struct JitFunction {
    pub name: String,
    pub func: Function,
    pub imports: Vec<String>,
    /// Whether Cranelift's optimizer runs on it. Off for the tiled
    /// contractions: its loop-invariant code motion lifts an epilogue's
    /// constants out of the whole loop nest, where they hold registers
    /// across the `k` loop and its accumulators spill.
    pub optimize: bool,
}

/// JIT-compiled kernels; the code stays valid while this value lives.
pub struct JitModule {
    modules: Vec<JITModule>,
    fns: HashMap<String, KernelFn>,
}

impl JitModule {
    /// Compiles and links `funcs` for `isa` (normally [`host_isa`]); the
    /// functions not to optimize are compiled for the host at
    /// `opt_level = none`, in a module of their own.
    pub fn new(isa: OwnedTargetIsa, funcs: Vec<JitFunction>) -> Result<JitModule, JitError> {
        let (fast, plain): (Vec<JitFunction>, Vec<JitFunction>) =
            funcs.into_iter().partition(|f| f.optimize);
        let mut out = JitModule {
            modules: Vec::new(),
            fns: HashMap::new(),
        };
        for (isa, funcs) in [(Some(isa), fast), (None, plain)] {
            if funcs.is_empty() {
                continue;
            }
            let isa = match isa {
                Some(isa) => isa,
                None => host_isa_at("none")?,
            };
            let (module, fns) = link(isa, funcs)?;
            out.modules.push(module);
            out.fns.extend(fns);
        }
        Ok(out)
    }

    /// The kernel named `name`, valid while `self` lives.
    pub fn get(&self, name: &str) -> Option<KernelFn> {
        self.fns.get(name).copied()
    }
}

/// Compiles and links `funcs` into one Cranelift JIT module.
fn link(
    isa: OwnedTargetIsa,
    funcs: Vec<JitFunction>,
) -> Result<(JITModule, HashMap<String, KernelFn>), JitError> {
    let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
    for (name, ptr) in helpers() {
        builder.symbol(name, ptr);
    }
    let mut module = JITModule::new(builder);
    let mut ids: Vec<(String, FuncId, usize)> = Vec::new();
    let mut helper_ids: HashMap<String, FuncId> = HashMap::new();
    let known: HashMap<&str, *const u8> = helpers().into_iter().collect();
    for f in funcs {
        let err = |message: String| JitError::Module {
            name: f.name.clone(),
            message,
        };
        let mut func = f.func;
        // Point each imported helper at its declaration in this module.
        let refs: Vec<_> = func.params.user_named_funcs().keys().collect();
        for r in refs {
            let old = func.params.user_named_funcs()[r].clone();
            let helper = f
                .imports
                .get(old.index as usize)
                .ok_or_else(|| err(format!("import {} has no name", old.index)))?;
            if !known.contains_key(helper.as_str()) {
                return Err(JitError::UnknownHelper {
                    name: f.name.clone(),
                    helper: helper.clone(),
                });
            }
            let sig = func
                .dfg
                .ext_funcs
                .values()
                .find(|d| matches!(d.name, cranelift_codegen::ir::ExternalName::User(u) if u == r))
                .map(|d| func.dfg.signatures[d.signature].clone())
                .ok_or_else(|| err(format!("import `{helper}` is never called")))?;
            let id = match helper_ids.get(helper) {
                Some(&id) => id,
                None => {
                    let id = module
                        .declare_function(helper, Linkage::Import, &sig)
                        .map_err(|e| err(e.to_string()))?;
                    helper_ids.insert(helper.clone(), id);
                    id
                }
            };
            func.params
                .reset_user_func_name(r, UserExternalName::new(0, id.as_u32()));
        }
        let id = module
            .declare_function(&f.name, Linkage::Local, &func.signature)
            .map_err(|e| err(e.to_string()))?;
        let mut ctx = Context::for_function(func);
        module
            .define_function(id, &mut ctx)
            .map_err(|e| err(format!("{e:?}")))?;
        let size = ctx.compiled_code().map_or(0, |c| c.code_buffer().len());
        ids.push((f.name, id, size));
    }
    module
        .finalize_definitions()
        .map_err(|e| JitError::Module {
            name: "<module>".into(),
            message: e.to_string(),
        })?;
    let mut fns = HashMap::new();
    let profile = std::env::var_os("KILN_PERF_MAP").is_some();
    let mut map = String::new();
    for (name, id, size) in ids {
        let ptr = module.get_finalized_function(id);
        if profile {
            map.push_str(&format!("{:x} {size:x} kiln:{name}\n", ptr as usize));
            let dump = std::env::temp_dir().join(format!("kiln-jit-{name}.bin"));
            // SAFETY: the finalized function's code is `size` readable bytes.
            let code = unsafe { std::slice::from_raw_parts(ptr, size) };
            let _ = std::fs::write(dump, code);
        }
        // SAFETY: the function was built with the kernel ABI's signature.
        let f: KernelFn = unsafe { std::mem::transmute::<*const u8, KernelFn>(ptr) };
        fns.insert(name, f);
    }
    if profile {
        // perf's map of JIT code: `perf report` names the kernels.
        use std::io::Write;
        let path = format!("/tmp/perf-{}.map", std::process::id());
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = file.write_all(map.as_bytes());
        }
    }
    Ok((module, fns))
}

impl Drop for JitModule {
    fn drop(&mut self) {
        for m in self.modules.drain(..) {
            // SAFETY: the pointers handed out are documented to die with `self`.
            unsafe { m.free_memory() };
        }
    }
}

/// The element types, numbered as the `dtype` argument of [`kiln_encode`]
/// and [`kiln_round_to`] takes them: [`DType::ALL`]'s order.
pub const DTYPES: [DType; 17] = DType::ALL;

/// The number of `dtype` in [`DTYPES`].
pub fn dtype_id(dtype: DType) -> i32 {
    DTYPES.iter().position(|&d| d == dtype).unwrap_or(0) as i32
}

fn dtype_of(id: i32) -> DType {
    DTYPES.get(id as usize).copied().unwrap_or(DType::F64)
}

/// The code of `x` in element type `dtype` ([`numeric::encode`]).
pub extern "C" fn kiln_encode(dtype: i32, x: f64) -> i64 {
    numeric::encode(dtype_of(dtype), x) as i64
}

/// `x` rounded to element type `dtype` ([`numeric::round_to`]).
pub extern "C" fn kiln_round_to(dtype: i32, x: f64) -> f64 {
    numeric::round_to(dtype_of(dtype), x)
}

/// Integer power as the kernel dialect defines it (wrapping; a negative
/// exponent gives 0 unless the base is 1 or -1).
pub extern "C" fn kiln_ipow(x: i64, y: i64) -> i64 {
    if y < 0 {
        return match x {
            1 => 1,
            -1 if y % 2 == 0 => 1,
            -1 => -1,
            _ => 0,
        };
    }
    x.wrapping_pow(y.min(u32::MAX as i64) as u32)
}

macro_rules! float_helpers {
    ($($f32:ident $f64:ident |$x:ident| $e:expr;)*) => {
        $(
            /// The f32 function: computed in f64 and rounded, as the evaluator does.
            pub extern "C" fn $f32($x: f32) -> f32 {
                let $x = f64::from($x);
                ($e) as f32
            }
            /// The f64 function.
            pub extern "C" fn $f64($x: f64) -> f64 {
                $e
            }
        )*
    };
}

float_helpers! {
    kiln_exp_f32 kiln_exp_f64 |x| x.exp();
    kiln_log_f32 kiln_log_f64 |x| x.ln();
    kiln_tanh_f32 kiln_tanh_f64 |x| x.tanh();
    kiln_erf_f32 kiln_erf_f64 |x| libm::erf(x);
    kiln_sin_f32 kiln_sin_f64 |x| x.sin();
    kiln_cos_f32 kiln_cos_f64 |x| x.cos();
}

/// `x^y` in f32, computed in f64 and rounded.
pub extern "C" fn kiln_pow_f32(x: f32, y: f32) -> f32 {
    f64::from(x).powf(f64::from(y)) as f32
}

/// `x^y` in f64.
pub extern "C" fn kiln_pow_f64(x: f64, y: f64) -> f64 {
    x.powf(y)
}

/// Every helper symbol kernels may import, by name.
pub fn helpers() -> Vec<(&'static str, *const u8)> {
    vec![
        ("kiln_encode", kiln_encode as *const u8),
        ("kiln_round_to", kiln_round_to as *const u8),
        ("kiln_ipow", kiln_ipow as *const u8),
        ("kiln_exp_f32", kiln_exp_f32 as *const u8),
        ("kiln_exp_f64", kiln_exp_f64 as *const u8),
        ("kiln_log_f32", kiln_log_f32 as *const u8),
        ("kiln_log_f64", kiln_log_f64 as *const u8),
        ("kiln_tanh_f32", kiln_tanh_f32 as *const u8),
        ("kiln_tanh_f64", kiln_tanh_f64 as *const u8),
        ("kiln_erf_f32", kiln_erf_f32 as *const u8),
        ("kiln_erf_f64", kiln_erf_f64 as *const u8),
        ("kiln_sin_f32", kiln_sin_f32 as *const u8),
        ("kiln_sin_f64", kiln_sin_f64 as *const u8),
        ("kiln_cos_f32", kiln_cos_f32 as *const u8),
        ("kiln_cos_f64", kiln_cos_f64 as *const u8),
        ("kiln_pow_f32", kiln_pow_f32 as *const u8),
        ("kiln_pow_f64", kiln_pow_f64 as *const u8),
    ]
}
