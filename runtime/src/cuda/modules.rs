//! Loading the kernels: each distinct PTX text becomes one driver module,
//! loaded once (kernels with identical PTX share it), and each launch gets
//! its entry function. Before any driver call, every kernel is checked
//! against the contract of [`super::kernel`] and against its launch.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute_enum};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;
use kiln_dialect::kernel::Launch;

use super::error::CudaError;
use super::kernel::{Cubins, PtxKernel, parse_arch};

/// Dynamic shared memory a block may use without opting in.
const DEFAULT_DYNAMIC_SHARED: u32 = 48 * 1024;

/// The entry function of every launch, and how many modules were loaded.
pub(crate) struct LoadedKernels {
    pub functions: Vec<CudaFunction>,
    /// Per launch: blocks of its kernel the device runs at once (0 when
    /// the driver could not say).
    pub resident: Vec<u32>,
    pub modules: usize,
    /// Of those, modules loaded from cubins.
    pub cubin_modules: usize,
}

/// Whether PTX written for `arch` (`sm_XY`, or `sm_XYa` for the
/// architecture-specific features of exactly that GPU) runs on a device of
/// compute capability `major.minor`. An unparsable `arch` is left to the
/// driver.
pub(crate) fn runs_on(arch: &str, major: i32, minor: i32) -> bool {
    let Some((want_major, want_minor, specific)) = parse_arch(arch) else {
        return true;
    };
    if specific {
        (major, minor) == (want_major, want_minor)
    } else {
        (major, minor) >= (want_major, want_minor)
    }
}

/// The number of `.param`s entry `entry` of `ptx` declares, or `None`
/// when the text has no such `.entry` with a parameter list.
pub(crate) fn entry_params(ptx: &str, entry: &str) -> Option<usize> {
    let mut rest = ptx;
    while let Some(at) = rest.find(".entry") {
        let after = &rest[at + ".entry".len()..];
        rest = after;
        let trimmed = after.trim_start();
        if trimmed.len() == after.len() {
            continue; // `.entryfoo`: not the directive
        }
        let Some(tail) = trimmed.strip_prefix(entry) else {
            continue;
        };
        let tail = tail.trim_start();
        let Some(list) = tail.strip_prefix('(') else {
            continue; // a longer name starting with `entry`
        };
        let close = list.find(')')?;
        return Some(list[..close].matches(".param").count());
    }
    None
}

/// Checks kernel `kernel` of launch `index` against the contract: a
/// usable entry name and PTX text, the block size, and the parameter list
/// (inputs, output, dims, units) its launch implies.
pub(crate) fn check_kernel(
    index: usize,
    kernel: &PtxKernel,
    launch: &Launch,
) -> Result<(), CudaError> {
    let fail = |message: String| CudaError::InvalidKernel {
        kernel: launch.kernel.name.clone(),
        entry: kernel.entry.clone(),
        message: format!("launch {index}: {message}"),
    };
    if kernel.entry.is_empty() || kernel.entry.contains('\0') {
        return Err(fail("the entry name is empty or holds a NUL byte".into()));
    }
    if kernel.ptx.contains('\0') {
        return Err(fail("the PTX text holds a NUL byte".into()));
    }
    if kernel.block == 0 || kernel.block > 1024 || !kernel.block.is_multiple_of(32) {
        return Err(fail(format!(
            "{} threads per block (the contract asks for a multiple of 32, at most 1024)",
            kernel.block
        )));
    }
    let expected = kernel.params(launch.kernel.inputs.len() + 1, launch.kernel.dims.len());
    let scratch = if kernel.scratch_bytes(0).is_some() {
        ", scratch"
    } else {
        ""
    };
    match entry_params(&kernel.ptx, &kernel.entry) {
        None => Err(fail(format!(
            "the PTX has no `.entry {}(...)`",
            kernel.entry
        ))),
        Some(found) if found != expected => Err(fail(format!(
            "the entry declares {found} parameters, the launch passes {expected} \
             ({} inputs, the output, {} dims, units{scratch})",
            launch.kernel.inputs.len(),
            launch.kernel.dims.len()
        ))),
        Some(_) => Ok(()),
    }
}

/// Loads one module per distinct PTX text and the entry of every kernel
/// (in launch order); opts kernels into more than 48 KiB of dynamic shared
/// memory where they ask for it. A kernel with a cubin the device runs is
/// loaded from it (and from its PTX if the driver refuses the cubin).
pub(crate) fn load(
    ctx: &Arc<CudaContext>,
    kernels: &[PtxKernel],
    launches: &[Launch],
    cubins: Option<&Cubins>,
) -> Result<LoadedKernels, CudaError> {
    let cc = ctx.compute_capability().ok();
    let device = match cc {
        Some((major, minor)) => format!("sm_{major}{minor}"),
        None => "unknown".to_string(),
    };
    if let Some((major, minor)) = cc {
        for (kernel, launch) in kernels.iter().zip(launches) {
            if !runs_on(&kernel.arch, major, minor) {
                return Err(CudaError::ArchMismatch {
                    kernel: launch.kernel.name.clone(),
                    arch: kernel.arch.clone(),
                    device: device.clone(),
                    suggest: if major >= 9 { "sm_90" } else { "sm_80" }.to_string(),
                });
            }
        }
    }
    let usable = cubins.filter(|c| {
        cc.is_some_and(|(major, minor)| Cubins::run_on(&c.arch, major, minor))
            && c.modules.len() == kernels.len()
    });
    let mut cubin_modules = 0;
    let mut modules: HashMap<&str, Arc<CudaModule>> = HashMap::new();
    let mut functions = Vec::with_capacity(kernels.len());
    let mut resident = Vec::with_capacity(kernels.len());
    let sms = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_or(0, |n| u32::try_from(n).unwrap_or(0));
    for (i, (kernel, launch)) in kernels.iter().zip(launches).enumerate() {
        let load_error = |source| CudaError::ModuleLoad {
            kernel: launch.kernel.name.clone(),
            entry: kernel.entry.clone(),
            arch: kernel.arch.clone(),
            device: device.clone(),
            source,
        };
        let module = match modules.get(kernel.ptx.as_str()) {
            Some(m) => Arc::clone(m),
            None => {
                let binary = usable
                    .map(|c| &c.modules[i])
                    .filter(|b| !b.is_empty())
                    .and_then(|b| ctx.load_module(Ptx::from_binary(b.clone())).ok());
                if binary.is_some() {
                    cubin_modules += 1;
                }
                let m = match binary {
                    Some(m) => m,
                    None => ctx
                        .load_module(Ptx::from_src(kernel.ptx.as_str()))
                        .map_err(load_error)?,
                };
                modules.insert(kernel.ptx.as_str(), Arc::clone(&m));
                m
            }
        };
        let function = module.load_function(&kernel.entry).map_err(load_error)?;
        if kernel.shared_bytes > DEFAULT_DYNAMIC_SHARED {
            function
                .set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    i32::try_from(kernel.shared_bytes).unwrap_or(i32::MAX),
                )
                .map_err(|e| {
                    CudaError::driver(
                        format!(
                            "allowing {} bytes of shared memory to entry `{}`",
                            kernel.shared_bytes, kernel.entry
                        ),
                        e,
                    )
                })?;
        }
        let per_sm = function
            .occupancy_max_active_blocks_per_multiprocessor(
                kernel.block,
                kernel.shared_bytes as usize,
                None,
            )
            .unwrap_or(0);
        resident.push(per_sm.saturating_mul(sms));
        functions.push(function);
    }
    Ok(LoadedKernels {
        functions,
        resident,
        modules: modules.len(),
        cubin_modules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubin_architectures_by_hand() {
        // a cubin runs within its major version only
        assert!(Cubins::run_on("sm_90a", 9, 0));
        assert!(!Cubins::run_on("sm_90a", 9, 1));
        assert!(!Cubins::run_on("sm_90a", 10, 0));
        assert!(Cubins::run_on("sm_80", 8, 0));
        assert!(Cubins::run_on("sm_80", 8, 9));
        assert!(!Cubins::run_on("sm_80", 9, 0));
        assert!(!Cubins::run_on("sm_86", 8, 0));
        assert!(!Cubins::run_on("compute_90", 9, 0));
        assert!(!Cubins::run_on("sm_9x", 9, 0));
    }

    #[test]
    fn architectures_by_hand() {
        // sm_90a: exactly an sm_90 device.
        assert!(runs_on("sm_90a", 9, 0));
        assert!(!runs_on("sm_90a", 8, 0));
        assert!(!runs_on("sm_90a", 10, 0));
        // sm_80: any device from sm_80 on.
        assert!(runs_on("sm_80", 8, 0));
        assert!(runs_on("sm_80", 8, 6));
        assert!(runs_on("sm_80", 9, 0));
        assert!(!runs_on("sm_80", 7, 5));
        assert!(runs_on("sm_86", 8, 9));
        assert!(!runs_on("sm_86", 8, 0));
        // Unknown spellings go to the driver.
        assert!(runs_on("compute_90", 7, 0));
        assert!(runs_on("sm_x", 7, 0));
    }
    use crate::cuda::kernel::Grid;
    use kiln_dialect::kernel::{Body, Buffer, Expr, Kernel, Ty};
    use kiln_dialect::{DType, Shape};

    const PTX: &str = ".version 8.0\n.target sm_90a\n.address_size 64\n\n\
        .visible .entry add_f32_1(\n  .param .u64 a,\n  .param .u64 b,\n  .param .u64 out,\n\
        .param .s64 dim0,\n  .param .s64 units\n)\n{\n  ret;\n}\n\
        .visible .entry add_f32(\n  .param .u64 a,\n  .param .u64 out,\n  .param .s64 units\n)\n{\n  ret;\n}\n";

    fn launch(inputs: usize, dims: usize) -> Launch {
        let b = Buffer {
            name: "t".into(),
            dtype: DType::F32,
            shape: Shape::of(&[4]),
        };
        Launch {
            kernel: Kernel {
                name: "k".into(),
                inputs: vec![b.clone(); inputs],
                output: b,
                dims: (0..dims).map(|d| format!("d{d}")).collect(),
                float: Ty::F32,
                body: Body::Map {
                    expr: Expr::Float(0.0),
                },
            },
            args: (0..inputs).collect(),
            out: inputs,
            bind_time: false,
        }
    }

    fn kernel(entry: &str, block: u32) -> PtxKernel {
        PtxKernel {
            entry: entry.into(),
            ptx: PTX.into(),
            arch: "sm_90a".into(),
            block,
            grid: Grid::Elements { per_thread: 1 },
            shared_bytes: 0,
            tensor_maps: Vec::new(),
        }
    }

    #[test]
    fn parameters_are_counted_for_the_named_entry_only() {
        assert_eq!(entry_params(PTX, "add_f32_1"), Some(5));
        assert_eq!(entry_params(PTX, "add_f32"), Some(3));
        assert_eq!(entry_params(PTX, "add"), None);
        assert_eq!(entry_params("", "add"), None);
    }

    #[test]
    fn kernels_that_break_the_contract_are_named() {
        assert!(check_kernel(0, &kernel("add_f32_1", 256), &launch(2, 1)).is_ok());
        assert!(check_kernel(0, &kernel("add_f32", 128), &launch(1, 0)).is_ok());
        let err = check_kernel(3, &kernel("add_f32_1", 256), &launch(1, 1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel `k` (entry `add_f32_1`): launch 3: the entry declares 5 parameters, \
             the launch passes 4 (1 inputs, the output, 1 dims, units)"
        );
        let err = check_kernel(0, &kernel("mul", 256), &launch(1, 0)).unwrap_err();
        assert!(
            err.to_string().contains("has no `.entry mul(...)`"),
            "{err}"
        );
        let err = check_kernel(0, &kernel("add_f32", 100), &launch(1, 0)).unwrap_err();
        assert!(err.to_string().contains("100 threads per block"), "{err}");
        let mut k = kernel("add_f32", 64);
        k.ptx.push('\0');
        assert!(check_kernel(0, &k, &launch(1, 0)).is_err());
    }
}
