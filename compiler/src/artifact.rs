//! The artifact writer: a model compiled for one target, with its weights,
//! as a [`kiln_runtime::artifact::Artifact`] (`docs/artifact.md`).
//!
//! For the CPU the kernels are compiled to CLIF here and stored as text;
//! for a GPU target they are PTX (and cubins). With weights, for every
//! target, the weights are bound here and the program's bind-time launches
//! (the weight layouts its kernels read: column panels on the CPU, `k`-major
//! 8-bit weights and fragment-order int4 codes on GPUs; folded scales) run
//! once on the host, compiled with Cranelift: the artifact stores their
//! results as weights and drops those launches, so that loading one runs
//! no kernel.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use kiln_dialect::kernel::Program;
use kiln_runtime::HostTensor;
use kiln_runtime::artifact::{
    Artifact, ClifKernel as StoredClif, Code, CpuCode, Target, host_features,
};
use kiln_runtime::cpu::executor::{CpuExecutable, KernelFn};
use kiln_runtime::cpu::jit::{JitFunction, JitModule, host_isa};

use crate::autotune::{KernelTuning, TuneOn};
use crate::codegen::clif::{ClifKernel, compile_kernel};
use crate::codegen::ptx::{self, PtxArch};
use crate::data::{self, WeightSource};
use crate::error::KilnError;
use crate::model;
use crate::pipeline::{self, Options};

/// What `kiln compile -o` was asked for.
pub struct ArtifactOptions<'a> {
    /// The target the kernels are planned and emitted for.
    pub target: Target,
    /// Sizes of symbolic dims to plan for (the artifact's shape bucket).
    pub dims: BTreeMap<String, usize>,
    /// Where the weights come from; `None` stores none (unless the model
    /// carries its own, as an ONNX model does).
    pub weights: Option<WeightSource<'a>>,
    /// For a GPU target, the `ptxas` that assembles the kernels into the
    /// artifact's cubins; `None` stores PTX only.
    pub ptxas: Option<std::path::PathBuf>,
    /// Compile for exactly the sizes of `dims` (see
    /// [`crate::pipeline::Options::specialize`]).
    pub specialize: bool,
    /// For a GPU target, tune each kernel's PTX options by timing the
    /// candidates there ([`crate::autotune`]) at the sizes of `dims`.
    pub autotune: Option<TuneOn>,
}

/// Compiles the model at `path` into an artifact.
pub fn build(path: &Path, opts: &ArtifactOptions) -> Result<Artifact, KilnError> {
    build_with_report(path, opts).map(|(a, _)| a)
}

/// [`build`], with what autotuning measured (empty without it).
pub fn build_with_report(
    path: &Path,
    opts: &ArtifactOptions,
) -> Result<(Artifact, Vec<KernelTuning>), KilnError> {
    let start = Instant::now();
    let mut m = model::load(path)?;
    let source = match &opts.weights {
        Some(WeightSource::File(p)) => Some(WeightSource::File(p)),
        Some(WeightSource::Random(seed)) => Some(WeightSource::Random(*seed)),
        Some(WeightSource::Model { fallback_seed }) => Some(WeightSource::Model {
            fallback_seed: *fallback_seed,
        }),
        None if !m.weights.is_empty() => Some(WeightSource::Model {
            fallback_seed: None,
        }),
        None => None,
    };
    let weights: Option<HashMap<String, HostTensor>> = match &source {
        Some(src) => Some(
            data::bind_weights(&m.graph, src, &m.weights, &opts.dims)?
                .iter()
                .map(|(k, t)| (k.clone(), data::from_interp(t)))
                .collect(),
        ),
        None => None,
    };
    m.weights.clear();
    let target = match opts.target {
        Target::Cpu => &kiln_passes::cost::CPU,
        Target::Sm80 => &kiln_passes::cost::SM80,
        Target::Sm90 => &kiln_passes::cost::SM90,
    };
    let popts = Options {
        target,
        dims: opts
            .dims
            .iter()
            .map(|(k, &v)| (k.clone(), v as u64))
            .collect(),
        specialize: opts.specialize,
        ..Options::default()
    };
    let c = pipeline::compile_model(m, start.elapsed(), &[], &popts)?;
    let mut program = kiln_passes::lower::lower_plan(&c.plan)?;
    kiln_passes::lower::lay_out_weights(&mut program, target);
    let buckets = if opts.dims.is_empty() {
        Vec::new()
    } else {
        vec![
            opts.dims
                .iter()
                .map(|(k, &v)| (k.clone(), v as u64))
                .collect(),
        ]
    };
    // With weights, the bind-time launches run here (every target).
    let (program, weights) = match weights {
        Some(w) => {
            let (frozen, tensors) = fold_bind_time(&program, &w)?;
            (frozen, Some(tensors))
        }
        None => (program, None),
    };
    let mut cubins = None;
    let (mut choices, mut report) = (Vec::new(), Vec::new());
    let code = match opts.target {
        Target::Cpu => Code::Cpu(cpu_code_of(&program)?),
        Target::Sm80 | Target::Sm90 => {
            let arch = match opts.target {
                Target::Sm80 => PtxArch::Sm80,
                Target::Sm90 | Target::Cpu => PtxArch::Sm90a,
            };
            let kernels = match opts.autotune {
                Some(on) => {
                    let base = ptx::PtxOptions::from_env();
                    let tuned = crate::autotune::tune(&program, arch, &base, &opts.dims, on)?;
                    choices = tuned.choices;
                    report = tuned.report;
                    tuned.kernels
                }
                None => ptx::compile_program(&program, arch)?,
            };
            cubins = match &opts.ptxas {
                Some(p) => Some(crate::cubin::assemble(p, arch.target(), &kernels)?),
                None => None,
            };
            Code::Ptx(kernels)
        }
    };
    let artifact = Artifact {
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        target: opts.target,
        program,
        code,
        weights,
        buckets,
        autotune: choices,
        cubins,
    };
    Ok((artifact, report))
}

/// The CPU artifact's code: each launch's kernel compiled to CLIF.
fn cpu_code_of(program: &Program) -> Result<CpuCode, KilnError> {
    let isa = host_isa()?;
    let mut clif: Vec<ClifKernel> = Vec::with_capacity(program.launches.len());
    for l in &program.launches {
        clif.push(compile_kernel(&l.kernel, &*isa)?);
    }
    Ok(cpu_code(&clif, &*isa))
}

/// Binds `weights` to `p`, runs its bind-time launches on the host (their
/// kernels compiled with Cranelift, whatever target `p` was laid out for:
/// they are plain copies and folds) and returns [`freeze`]'s program with
/// its weights: those the run-time launches read, as given, and the
/// bind-time results.
pub fn fold_bind_time(
    p: &Program,
    weights: &HashMap<String, HostTensor>,
) -> Result<(Program, Vec<(String, HostTensor)>), KilnError> {
    let binders = Program {
        launches: p.launches.iter().filter(|l| l.bind_time).cloned().collect(),
        outputs: Vec::new(),
        ..p.clone()
    };
    let isa = host_isa()?;
    let mut funcs = Vec::with_capacity(binders.launches.len());
    for l in &binders.launches {
        funcs.push(JitFunction::from(compile_kernel(&l.kernel, &*isa)?));
    }
    let module = JitModule::new(isa, funcs)?;
    let mut fns: Vec<KernelFn> = Vec::with_capacity(binders.launches.len());
    for l in &binders.launches {
        fns.push(
            module
                .get(&l.kernel.name)
                .ok_or_else(|| KilnError::Internal {
                    stage: "the JIT",
                    message: format!("kernel `{}` was compiled but not defined", l.kernel.name),
                })?,
        );
    }
    let mut exe = CpuExecutable::new(binders, fns, Box::new(std::sync::Mutex::new(module)))?;
    exe.bind_weights(weights)?;
    let frozen = freeze(p);
    let mut tensors = Vec::with_capacity(frozen.weights.len());
    for &b in &frozen.weights {
        let name = frozen.buffers[b].name.clone();
        let t = exe.held_tensor(b).ok_or_else(|| KilnError::Internal {
            stage: "binding the artifact's weights",
            message: format!("`{name}` is not held after binding"),
        })?;
        tensors.push((name, t));
    }
    Ok((frozen, tensors))
}

/// CPU kernels as an artifact stores them: the host's triple and
/// instruction-set features, and each kernel's CLIF text.
pub fn cpu_code(clif: &[ClifKernel], isa: &dyn cranelift_codegen::isa::TargetIsa) -> CpuCode {
    CpuCode {
        triple: isa.triple().to_string(),
        features: host_features(isa),
        kernels: clif.iter().map(stored_clif).collect(),
    }
}

fn stored_clif(k: &ClifKernel) -> StoredClif {
    StoredClif {
        name: k.name.clone(),
        optimize: k.optimize,
        imports: k.imports.clone(),
        clif: k.func.display().to_string(),
    }
}

/// `p` with its bind-time launches removed and their results made weights;
/// weights only those launches read are dropped.
pub fn freeze(p: &Program) -> Program {
    let mut used = vec![false; p.buffers.len()];
    for l in p.launches.iter().filter(|l| !l.bind_time) {
        for &a in &l.args {
            used[a] = true;
        }
    }
    for (_, b) in &p.outputs {
        used[*b] = true;
    }
    let mut weights: Vec<usize> = p.weights.iter().copied().filter(|&b| used[b]).collect();
    for l in p.launches.iter().filter(|l| l.bind_time) {
        if used[l.out] {
            weights.push(l.out);
        }
    }
    Program {
        weights,
        launches: p
            .launches
            .iter()
            .filter(|l| !l.bind_time)
            .cloned()
            .collect(),
        ..p.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emitted_clif_round_trips_through_the_reader() {
        let src = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mlp.kiln"),
        )
        .unwrap();
        let m = model::load_source("mlp.kiln", &src).unwrap();
        let popts = Options {
            target: &kiln_passes::cost::CPU,
            dims: [("batch".to_string(), 2)].into_iter().collect(),
            ..Options::default()
        };
        let c = pipeline::compile_model(m, Default::default(), &[], &popts).unwrap();
        let mut program = kiln_passes::lower::lower_plan(&c.plan).unwrap();
        kiln_passes::lower::pack_contraction_weights(&mut program, 8);
        let isa = host_isa().unwrap();
        assert!(!program.launches.is_empty());
        for l in &program.launches {
            let k = compile_kernel(&l.kernel, &*isa).unwrap();
            let text = k.func.display().to_string();
            let parsed = cranelift_reader::parse_functions(&text).unwrap();
            assert_eq!(parsed.len(), 1);
            assert_eq!(parsed[0].display().to_string(), text, "{}", k.name);
        }
    }
}
