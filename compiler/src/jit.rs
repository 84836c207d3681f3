//! The host JIT API: compile a model (source text or a file) for the host
//! CPU or an NVIDIA GPU, bind its weights, and run it on host tensors. Every failure is an
//! error value ([`KilnError`]); nothing here panics on a bad model, bad
//! weights or bad inputs.
//!
//! ```no_run
//! use std::collections::HashMap;
//! use kiln::jit::{self, JitOptions};
//! use kiln_runtime::HostTensor;
//! use kiln_dialect::DType;
//!
//! # fn main() -> Result<(), kiln::KilnError> {
//! let mut model = jit::compile_file("examples/mlp.kiln".as_ref(), &JitOptions::default())?;
//! model.bind_random_weights(7)?;
//! let x = HostTensor::from_values(DType::F32, &[2, 64], &vec![0.5; 128]);
//! let outputs = model.run(&HashMap::from([("x".to_string(), x)]))?;
//! println!("{}: {:?}", outputs[0].0, outputs[0].1.shape);
//! # Ok(())
//! # }
//! ```
//!
//! The pipeline is the command line's: parse, verify, optimize for the
//! device's target (`cpu`, or `sm_90` for [`Device::Cuda`]), lower the
//! kernel plan to the kernel dialect, compile each kernel (Cranelift, or
//! PTX), and hand the program to the runtime's CPU or CUDA executor.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_dialect::TensorType;
use kiln_dialect::kernel::Program;
use kiln_passes::optimize::Limits;
use kiln_runtime::HostTensor;
use kiln_runtime::cpu::executor::{CpuExecutable, ExecStats, KernelFn};
use kiln_runtime::cpu::jit::{JitFunction, JitModule, host_isa};
use kiln_runtime::cpu::pool::ThreadPool;
use kiln_runtime::cuda::{CudaExecutable, CudaStats, SimExecutable};

use kiln_runtime::artifact::{Artifact, Code, Target};

use crate::cache;
pub use crate::cache::Cache;
use crate::codegen::clif::{ClifKernel, compile_kernel};
use crate::data;
use crate::error::KilnError;
use crate::model;
use crate::pipeline::{self, Options};

/// Where a compiled model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The host CPU: kernels compiled with Cranelift, run on a thread pool.
    #[default]
    Cpu,
    /// The first NVIDIA GPU of the machine: kernels emitted as PTX, run by
    /// the CUDA executor (needs the CUDA driver at run time, nothing at
    /// build time).
    Cuda,
    /// The GPU path without a GPU: the same plan (priced for `sm_90`) and
    /// `sm_90a` PTX kernels as [`Device::Cuda`], run by the PTX
    /// interpreter ([`SimExecutable`]). Slow; for checking kernels on
    /// machines without a GPU.
    CudaSim,
}

impl Device {
    /// The name the command line uses.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::CudaSim => "cuda-sim",
        }
    }
}

/// Options of a JIT compilation.
#[derive(Clone, Debug, Default)]
pub struct JitOptions {
    /// Where the model runs.
    pub device: Device,
    /// Sizes of symbolic dims the plan is priced at; the compiled model runs
    /// at any size.
    pub dims: HashMap<String, u64>,
    /// Bounds of the optimizer's saturation.
    pub limits: Limits,
    /// Where compilations are cached ([`crate::cache`]); by default the
    /// folder the environment names.
    pub cache: Cache,
    /// Compile for exactly the sizes of `dims` (see
    /// [`crate::pipeline::Options::specialize`]): inputs of other sizes
    /// are then refused.
    pub specialize: bool,
}

/// The executor a model runs on.
enum Exec {
    Cpu(CpuExecutable),
    Cuda(CudaExecutable),
    Sim(SimExecutable),
}

/// A model compiled for a device.
pub struct Model {
    exe: Exec,
    inputs: Vec<(String, TensorType)>,
    weights: Vec<(String, TensorType)>,
    outputs: Vec<(String, TensorType)>,
    compile_time: Duration,
    cache_hit: bool,
}

/// Compiles model-language source held in memory; `name` is how errors
/// call it.
pub fn compile_source(name: &str, src: &str, opts: &JitOptions) -> Result<Model, KilnError> {
    let t = Instant::now();
    let m = model::load_source(name, src)?;
    build(m, t, opts)
}

/// Compiles a model file (`.kiln`, `.kir` or `.onnx`). The weights an ONNX
/// model carries (its initializers) are bound; [`Model::bind_weights`] may
/// replace them.
pub fn compile_file(path: &Path, opts: &JitOptions) -> Result<Model, KilnError> {
    let t = Instant::now();
    let mut m = model::load(path)?;
    let own: HashMap<String, HostTensor> = std::mem::take(&mut m.weights)
        .iter()
        .map(|(k, v)| (k.clone(), crate::data::from_interp(v)))
        .collect();
    let mut model = build(m, t, opts)?;
    if !own.is_empty() {
        model.bind_weights(&own)?;
    }
    Ok(model)
}

/// Compiles a model already loaded (and verified) by [`model::load`].
pub fn compile_loaded(m: model::Model, opts: &JitOptions) -> Result<Model, KilnError> {
    build(m, Instant::now(), opts)
}

/// Compiles a loaded model's program to native code and builds its
/// executor; with a cache folder, a model compiled before with the same
/// options is loaded from it instead.
fn build(m: model::Model, start: Instant, opts: &JitOptions) -> Result<Model, KilnError> {
    let m = crate::pipeline::specialized(m, &opts.dims, opts.specialize)?;
    let g = &m.graph;
    let typed = |vs: Vec<kiln_dialect::Value>| -> Vec<(String, TensorType)> {
        vs.into_iter()
            .map(|v| (g.value_name(v).to_string(), g.value_type(v).clone()))
            .collect()
    };
    let inputs = typed(g.inputs());
    let weights = typed(g.weights());
    let outputs = g
        .outputs()
        .iter()
        .map(|o| (o.name.clone(), g.value_type(o.value).clone()))
        .collect();
    let (target, stored_as) = match opts.device {
        Device::Cpu => (&kiln_passes::cost::CPU, Target::Cpu),
        Device::Cuda => {
            // Before any work: a machine without the driver gets the error
            // at once.
            if !kiln_runtime::cuda::driver_present() {
                return Err(kiln_runtime::cuda::no_driver().into());
            }
            (&kiln_passes::cost::SM90, Target::Sm90)
        }
        Device::CudaSim => (&kiln_passes::cost::SM90, Target::Sm90),
    };
    let isa = match opts.device {
        Device::Cpu => Some(host_isa()?),
        Device::Cuda | Device::CudaSim => None,
    };
    let cached = opts.cache.dir().map(|dir| {
        // The simulated GPU's kernels are written for another arch.
        let name = match opts.device {
            Device::CudaSim => "cuda-sim",
            Device::Cpu | Device::Cuda => target.name,
        };
        let key = cache_key(&m, opts, name, isa.as_deref());
        (dir, key)
    });
    let done = |exe, cache_hit| Model {
        exe,
        inputs,
        weights,
        outputs,
        compile_time: start.elapsed(),
        cache_hit,
    };
    if let Some((dir, key)) = &cached
        && let Some(a) = cache::load(dir, key)
    {
        let exe = match opts.device {
            Device::Cpu => a.cpu_executable().map(Exec::Cpu),
            Device::Cuda => a.cuda_executable().map(Exec::Cuda),
            Device::CudaSim => match &a.code {
                Code::Ptx(kernels) => SimExecutable::new(a.program.clone(), kernels.clone())
                    .map(Exec::Sim)
                    .map_err(Into::into),
                Code::Cpu(_) => Err(kiln_runtime::artifact::ArtifactError::WrongTarget {
                    built: a.target.name(),
                    wanted: "--device cuda-sim".into(),
                }),
            },
        };
        match exe {
            Ok(exe) => return Ok(done(exe, true)),
            Err(_) => cache::forget(dir, key),
        }
    }
    // (the graph is already specialized when asked)
    let popts = Options {
        target,
        dims: opts.dims.clone(),
        limits: opts.limits,
        specialize: false,
    };
    let c = pipeline::compile_model(m, start.elapsed(), &[], &popts)?;
    let mut program = kiln_passes::lower::lower_plan(&c.plan)?;
    kiln_passes::lower::lay_out_weights(&mut program, popts.target);
    let keep = cached.as_ref().map(|_| program.clone());
    let (exe, code) = match isa {
        Some(isa) => {
            let clif = clif_kernels(&program, &*isa)?;
            let code = keep
                .as_ref()
                .map(|_| Code::Cpu(crate::artifact::cpu_code(&clif, &*isa)));
            let exe = link(program, clif, isa, ThreadPool::from_env())?;
            (Exec::Cpu(exe), code)
        }
        None if opts.device == Device::CudaSim => {
            let kernels = crate::codegen::ptx::compile_program(
                &program,
                crate::codegen::ptx::PtxArch::Sm90a,
            )?;
            let code = keep.as_ref().map(|_| Code::Ptx(kernels.clone()));
            (Exec::Sim(SimExecutable::new(program, kernels)?), code)
        }
        None => {
            let kernels = crate::codegen::ptx::compile_program(
                &program,
                crate::codegen::ptx::PtxArch::Sm90a,
            )?;
            let code = keep.as_ref().map(|_| Code::Ptx(kernels.clone()));
            (Exec::Cuda(CudaExecutable::new(program, kernels)?), code)
        }
    };
    if let (Some((dir, key)), Some(program), Some(code)) = (&cached, keep, code) {
        let artifact = Artifact {
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            target: stored_as,
            program,
            code,
            weights: None,
            buckets: Vec::new(),
            autotune: Vec::new(),
            cubins: None,
        };
        cache::store(dir, key, &artifact);
    }
    Ok(done(exe, false))
}

/// Loads an artifact (`docs/artifact.md`) as a model for `device`: its
/// kernels are linked (CPU) or its modules loaded (GPU) and its stored
/// weights bound; one compiled without weights takes
/// [`Model::bind_weights`]. A device other than the artifact's target is
/// refused.
pub fn load_artifact(a: &Artifact, device: Device) -> Result<Model, KilnError> {
    let start = Instant::now();
    let wrong = |wanted: &str| {
        KilnError::Artifact(kiln_runtime::artifact::ArtifactError::WrongTarget {
            built: a.target.name(),
            wanted: wanted.into(),
        })
    };
    let exe = match (device, a.target) {
        (Device::Cpu, Target::Cpu) => Exec::Cpu(a.cpu_executable()?),
        (Device::Cuda, Target::Sm80 | Target::Sm90) => Exec::Cuda(a.cuda_executable()?),
        (Device::Cpu, Target::Sm80 | Target::Sm90) => return Err(wrong("--device cpu")),
        (Device::Cuda, Target::Cpu) => return Err(wrong("--device cuda")),
        (Device::CudaSim, Target::Sm80 | Target::Sm90) => match &a.code {
            Code::Ptx(kernels) => {
                let mut sim = SimExecutable::new(a.program.clone(), kernels.clone())?;
                if a.weights.is_some() {
                    sim.bind_weights(&a.weight_map())?;
                }
                Exec::Sim(sim)
            }
            Code::Cpu(_) => return Err(wrong("--device cuda-sim")),
        },
        (Device::CudaSim, Target::Cpu) => return Err(wrong("--device cuda-sim")),
    };
    let p = &a.program;
    let typed = |bs: &[usize]| -> Vec<(String, TensorType)> {
        bs.iter()
            .map(|&b| {
                let buf = &p.buffers[b];
                (
                    buf.name.clone(),
                    TensorType::new(buf.dtype, buf.shape.clone()),
                )
            })
            .collect()
    };
    let outputs = p
        .outputs
        .iter()
        .map(|(n, b)| {
            let buf = &p.buffers[*b];
            (n.clone(), TensorType::new(buf.dtype, buf.shape.clone()))
        })
        .collect();
    Ok(Model {
        exe,
        inputs: typed(&p.inputs),
        weights: typed(&p.weights),
        outputs,
        compile_time: start.elapsed(),
        cache_hit: false,
    })
}

/// The cache key of compiling `m` with `opts` for a target: the verified
/// graph as text, the options, and for the CPU the host's instruction set.
fn cache_key(
    m: &model::Model,
    opts: &JitOptions,
    target: &str,
    isa: Option<&dyn cranelift_codegen::isa::TargetIsa>,
) -> String {
    let mut dims: Vec<String> = opts.dims.iter().map(|(k, v)| format!("{k}={v}")).collect();
    dims.sort();
    let host = isa.map_or(String::new(), |isa| {
        format!(
            "{} {}",
            isa.triple(),
            kiln_runtime::artifact::host_features(isa).join(" ")
        )
    });
    cache::key(&[
        target,
        &dims.join(","),
        &format!("{:?}", opts.limits),
        &host,
        &switches(),
        &m.graph.to_string(),
    ])
}

/// The environment switches that change what is compiled (measurement
/// choices not yet the default: `codegen::ptx::PtxOptions::from_env`,
/// `KILN_MMA_TILING`, `KILN_INT4_FRAGMENTS`), as `NAME=value` for the cache
/// key: a compilation under other switches is another entry.
fn switches() -> String {
    switches_from(|v| std::env::var(v).ok())
}

/// The compile switches' names.
const SWITCHES: [&str; 16] = [
    "KILN_PTX_BRANCH_SELECTS",
    "KILN_PTX_WALK",
    "KILN_ROW_TUNING",
    "KILN_GEMV_TILING",
    "KILN_MMA_COALESCED",
    "KILN_MMA_CHUNKS",
    "KILN_GEMV_DEQUANT",
    "KILN_QMMA_SPLITS",
    "KILN_MMA_SPLITS",
    "KILN_MMA_TMA",
    "KILN_MMA_WS",
    "KILN_MMA_HEAVY",
    "KILN_MMA_GROUP",
    "KILN_MMA_TILING",
    "KILN_INT4_FRAGMENTS",
    "KILN_ATTN_WGMMA",
];

/// [`switches`] with the values `get` gives.
fn switches_from(get: impl Fn(&str) -> Option<String>) -> String {
    SWITCHES
        .iter()
        .map(|v| format!("{v}={}", get(v).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Compiles every kernel of `program` with Cranelift for the host and
/// builds the executor that runs them.
pub fn native(program: Program) -> Result<CpuExecutable, KilnError> {
    native_on(program, ThreadPool::from_env())
}

/// As [`native`], running on the given thread pool.
pub fn native_on(program: Program, pool: ThreadPool) -> Result<CpuExecutable, KilnError> {
    let isa = host_isa()?;
    let clif = clif_kernels(&program, &*isa)?;
    link(program, clif, isa, pool)
}

/// Every kernel of `program` as Cranelift IR for `isa`.
fn clif_kernels(
    program: &Program,
    isa: &dyn cranelift_codegen::isa::TargetIsa,
) -> Result<Vec<ClifKernel>, KilnError> {
    program
        .launches
        .iter()
        .map(|l| Ok(compile_kernel(&l.kernel, isa)?))
        .collect()
}

/// Compiles the kernels to machine code and builds the executor.
fn link(
    program: Program,
    clif: Vec<ClifKernel>,
    isa: std::sync::Arc<dyn cranelift_codegen::isa::TargetIsa>,
    pool: ThreadPool,
) -> Result<CpuExecutable, KilnError> {
    let funcs: Vec<JitFunction> = clif.into_iter().map(JitFunction::from).collect();
    let module = JitModule::new(isa, funcs)?;
    let mut kernels: Vec<KernelFn> = Vec::with_capacity(program.launches.len());
    for l in &program.launches {
        let f = module
            .get(&l.kernel.name)
            .ok_or_else(|| KilnError::Internal {
                stage: "the JIT",
                message: format!("kernel `{}` was compiled but not defined", l.kernel.name),
            })?;
        kernels.push(f);
    }
    // The module is never used again, only kept alive: a mutex makes it Sync.
    Ok(CpuExecutable::with_pool(
        program,
        kernels,
        Box::new(std::sync::Mutex::new(module)),
        pool,
    )?)
}

/// Emits every kernel of `program` as PTX for Hopper (`sm_90a`) and builds
/// the CUDA executor that runs them.
pub fn gpu(program: Program) -> Result<CudaExecutable, KilnError> {
    gpu_for(program, crate::codegen::ptx::PtxArch::Sm90a)
}

/// [`gpu`] with the kernels written for `arch` (sm_80 modules run on later
/// GPUs too: the driver compiles their PTX for the device).
pub fn gpu_for(
    program: Program,
    arch: crate::codegen::ptx::PtxArch,
) -> Result<CudaExecutable, KilnError> {
    let kernels = crate::codegen::ptx::compile_program(&program, arch)?;
    Ok(CudaExecutable::new(program, kernels)?)
}

/// Compiles every kernel of `program` to PTX for `arch` (with the
/// process's [`crate::codegen::ptx::PtxOptions`]) and builds an executor
/// that runs them on the PTX interpreter: the GPU path checked on a
/// machine without a GPU (slow; for tests).
pub fn simulated_gpu_for(
    program: Program,
    arch: crate::codegen::ptx::PtxArch,
) -> Result<SimExecutable, KilnError> {
    let kernels = crate::codegen::ptx::compile_program(&program, arch)?;
    Ok(SimExecutable::new(program, kernels)?)
}

impl Model {
    /// The model's inputs: names and types (symbolic dims bind at run time).
    pub fn inputs(&self) -> &[(String, TensorType)] {
        &self.inputs
    }

    /// The model's weights: names and types.
    pub fn weights(&self) -> &[(String, TensorType)] {
        &self.weights
    }

    /// The model's outputs, in the order [`Model::run`] returns them.
    pub fn outputs(&self) -> &[(String, TensorType)] {
        &self.outputs
    }

    /// How long compiling took, parsing to native code.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Whether the kernels came from the compile cache (the optimizer,
    /// planner and kernel generation did not run).
    pub fn cache_hit(&self) -> bool {
        self.cache_hit
    }

    /// The kernel program the model runs.
    pub fn program(&self) -> &Program {
        match &self.exe {
            Exec::Cpu(e) => e.program(),
            Exec::Cuda(e) => e.program(),
            Exec::Sim(e) => e.program(),
        }
    }

    /// Where the model runs.
    pub fn device(&self) -> Device {
        match &self.exe {
            Exec::Cpu(_) => Device::Cpu,
            Exec::Cuda(_) => Device::Cuda,
            Exec::Sim(_) => Device::CudaSim,
        }
    }

    /// Figures of the last run: arena peak bytes, launches, threads (on
    /// the GPU: one, the host thread that launches).
    pub fn stats(&self) -> ExecStats {
        match &self.exe {
            Exec::Cpu(e) => e.stats(),
            Exec::Cuda(e) => {
                let s = e.stats();
                ExecStats {
                    peak_arena_bytes: s.peak_arena_bytes,
                    unshared_arena_bytes: s.unshared_arena_bytes,
                    launches: s.launches,
                    bind_time_launches: s.bind_time_launches,
                    threads: 1,
                }
            }
            Exec::Sim(e) => {
                let p = e.program();
                let bind_time_launches = p.launches.iter().filter(|l| l.bind_time).count();
                ExecStats {
                    peak_arena_bytes: 0,
                    unshared_arena_bytes: 0,
                    launches: p.launches.len() - bind_time_launches,
                    bind_time_launches,
                    threads: 1,
                }
            }
        }
    }

    /// The CUDA executor's figures (modules, buckets, graph captures and
    /// replays), for a model compiled for [`Device::Cuda`].
    pub fn cuda_stats(&self) -> Option<CudaStats> {
        match &self.exe {
            Exec::Cpu(_) | Exec::Sim(_) => None,
            Exec::Cuda(e) => Some(e.stats()),
        }
    }

    /// Times the device work alone (for benchmarks): on the GPU, the inputs
    /// are uploaded once and the run's CUDA graph is replayed `batch` times
    /// per sample, each sample waiting for the device; on the CPU, whole
    /// runs. Returns the time per run of each of `samples` samples.
    pub fn time_runs(
        &self,
        inputs: &HashMap<String, HostTensor>,
        samples: usize,
        batch: usize,
    ) -> Result<Vec<Duration>, KilnError> {
        let batch = batch.max(1);
        match &self.exe {
            Exec::Sim(e) => {
                let mut times = Vec::with_capacity(samples);
                for _ in 0..samples {
                    let t = Instant::now();
                    e.run(inputs)?;
                    times.push(t.elapsed());
                }
                Ok(times)
            }
            Exec::Cpu(e) => {
                let mut times = Vec::with_capacity(samples);
                for _ in 0..samples {
                    let t = Instant::now();
                    for _ in 0..batch {
                        e.run(inputs)?;
                    }
                    times.push(t.elapsed() / batch as u32);
                }
                Ok(times)
            }
            Exec::Cuda(e) => Ok(e
                .time_launches(inputs, samples, batch)?
                .into_iter()
                .map(|d| d / batch as u32)
                .collect()),
        }
    }

    /// Binds weights by name, checking each against the model; weight
    /// transforms chosen by the optimizer run here, once.
    pub fn bind_weights(&mut self, weights: &HashMap<String, HostTensor>) -> Result<(), KilnError> {
        match &mut self.exe {
            Exec::Cpu(e) => Ok(e.bind_weights(weights)?),
            Exec::Cuda(e) => Ok(e.bind_weights(weights)?),
            Exec::Sim(e) => Ok(e.bind_weights(weights)?),
        }
    }

    /// Binds weights drawn from a seeded generator, the same as
    /// `kiln run --random-weights SEED` draws them.
    pub fn bind_random_weights(&mut self, seed: u64) -> Result<(), KilnError> {
        let mut w = HashMap::new();
        for (name, ty) in &self.weights {
            let shape = ty.shape.as_static().ok_or_else(|| {
                KilnError::Usage(format!(
                    "weight `{name}` has symbolic shape {}; random weights need static shapes",
                    ty.shape
                ))
            })?;
            let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            w.insert(
                name.clone(),
                data::random_weight(seed, name, ty.dtype, &shape, |n| {
                    self.weights
                        .iter()
                        .find(|(w, _)| w == n)
                        .map(|(_, t)| t.clone())
                }),
            );
        }
        self.bind_weights(&w)
    }

    /// Runs the model on named inputs; returns every output by name, in
    /// the model's output order.
    pub fn run(
        &self,
        inputs: &HashMap<String, HostTensor>,
    ) -> Result<Vec<(String, HostTensor)>, KilnError> {
        match &self.exe {
            Exec::Cpu(e) => Ok(e.run(inputs)?),
            Exec::Cuda(e) => Ok(e.run(inputs)?),
            Exec::Sim(e) => Ok(e.run(inputs)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each switch's value is part of the key text (two settings of any
    /// one give two keys), and every switch the backends read is listed:
    /// the names are found in the sources that read them.
    #[test]
    fn every_compile_switch_is_in_the_cache_key() {
        let none = switches_from(|_| None);
        for v in SWITCHES {
            let one = switches_from(|x| (x == v).then(|| "1".to_string()));
            assert_ne!(one, none, "{v}");
            assert!(one.contains(&format!("{v}=1")), "{one}");
        }
        let sources = [
            include_str!("codegen/ptx/mod.rs"),
            include_str!("codegen/ptx/mma.rs"),
            include_str!("../../passes/src/lower/pack.rs"),
        ]
        .concat();
        for v in SWITCHES {
            assert!(sources.contains(&format!("\"{v}\"")), "{v} is read nowhere");
        }
        // And the other way: every `KILN_` switch those sources read is listed.
        for part in sources.split("\"KILN_").skip(1) {
            let name: String = part.chars().take_while(|c| *c != '"').collect();
            let name = format!("KILN_{name}");
            assert!(
                SWITCHES.contains(&name.as_str()),
                "{name} is not in the key"
            );
        }
    }
}
