//! The `kiln` command line. Exit codes: 0 success, 1 a user error (message
//! on stderr, no backtrace), 2 an internal error.

use crate::progress::Progress;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use kiln_dialect::interp;
use kiln_runtime::HostTensor;

use crate::data::{self, InputSpec, WeightSource};
use crate::error::KilnError;
use crate::model;
use crate::pipeline::{self, Stage};

/// kiln: a compiler for neural-network models.
#[derive(Debug, Parser)]
#[command(name = "kiln", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where `kiln compile --autotune` times its candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TuneArg {
    /// The machine's first NVIDIA GPU.
    Cuda,
    /// The PTX interpreter: checks the mechanism (its times say nothing
    /// about a GPU).
    #[value(name = "cuda-sim")]
    CudaSim,
}

/// The targets `kiln compile` plans for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    /// NVIDIA Hopper (H100): wgmma and TMA.
    #[value(name = "sm_90")]
    Sm90,
    /// NVIDIA Ampere (A100): mma.sync.
    #[value(name = "sm_80")]
    Sm80,
    /// The host CPU.
    Cpu,
}

impl TargetArg {
    pub fn target(self) -> &'static kiln_passes::cost::Target {
        match self {
            TargetArg::Sm90 => &kiln_passes::cost::SM90,
            TargetArg::Sm80 => &kiln_passes::cost::SM80,
            TargetArg::Cpu => &kiln_passes::cost::CPU,
        }
    }
}

/// Where `kiln run` evaluates a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// The reference interpreter: exact, slow, the oracle of every backend.
    Interp,
    /// Native code for the host CPU: the model optimized for the `cpu`
    /// target, its kernels compiled with Cranelift, run on all cores.
    Cpu,
    /// The first NVIDIA GPU: the model optimized for the `sm_90` target, its
    /// kernels emitted as PTX and run by the CUDA executor (CUDA graphs per
    /// input shape). Needs the CUDA driver.
    Cuda,
    /// The GPU path without a GPU: the `sm_90` plan's kernels as `sm_90a`
    /// PTX, run by the PTX interpreter, which checks every access and
    /// barrier. Slow: for checking kernels, not for timing.
    CudaSim,
}

impl Device {
    fn name(self) -> &'static str {
        match self {
            Device::Interp => "interp",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::CudaSim => "cuda-sim",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and verify a model; print its interface, or its errors (exit 1).
    Check {
        /// The model: model language (.kiln), graph IR text (.kir) or ONNX (.onnx).
        model: PathBuf,
        /// Also print the graph in canonical .kir form.
        #[arg(long)]
        print: bool,
    },
    /// Compile a model through the pipeline's stages and print the ones
    /// asked for with --emit.
    Compile {
        /// The model: model language (.kiln), graph IR text (.kir) or ONNX (.onnx).
        model: PathBuf,
        /// Stages to print, comma-separated: ast (the syntax tree, every
        /// binary expression parenthesized), graph (as lowered), graph-opt
        /// (after cleanup and the algebra, layout and quantization rules), plan (the kernels, one
        /// line each), kernels (the plan lowered to the kernel dialect), clif (each kernel as
        /// Cranelift IR for this CPU), ptx (each kernel as a PTX module for sm_90a).
        #[arg(long, value_enum, value_delimiter = ',', value_name = "STAGES")]
        emit: Vec<Stage>,
        /// The target the kernels are planned and priced for.
        #[arg(long, value_enum, default_value_t = TargetArg::Sm90)]
        target: TargetArg,
        /// The size of a symbolic dimension to plan for, as NAME=N
        /// (repeatable); unbound symbols are priced at the target's default.
        #[arg(long = "dim", value_name = "NAME=N", value_parser = parse_dim)]
        dims: Vec<(String, usize)>,
        /// Write each emitted stage to a file in DIR instead of stdout.
        #[arg(long, value_name = "DIR", requires = "emit")]
        emit_dir: Option<PathBuf>,
        /// Print the time each stage took (on stderr).
        #[arg(long)]
        timings: bool,
        /// Write the compiled model as an artifact (.kart, docs/artifact.md)
        /// for --target: the kernels, and the weights when they have a
        /// source (--weights, --random-weights, or the model's own).
        #[arg(short = 'o', long = "output", value_name = "OUT.kart")]
        output: Option<PathBuf>,
        /// Store weights read by name from a .safetensors file in the artifact.
        #[arg(long, value_name = "W.safetensors", conflicts_with = "random_weights")]
        weights: Option<PathBuf>,
        /// Store weights drawn from a seeded generator in the artifact (the
        /// same seed gives the same weights as `kiln run --random-weights`).
        #[arg(long, value_name = "SEED")]
        random_weights: Option<u64>,
        /// For a GPU target, store PTX only: without this, when `ptxas` is
        /// found (KILN_PTXAS, else the PATH) the artifact also holds the
        /// kernels assembled for the target's GPU, which load without the
        /// driver compiling PTX.
        #[arg(long, requires = "output")]
        no_cubins: bool,
        /// Compile for exactly the sizes given with --dim: they become
        /// static in every kernel (a decode step's `m = 1` takes the GEMV
        /// path on GPUs); inputs of other sizes are then refused.
        #[arg(long)]
        specialize: bool,
        /// For a GPU target, time each kernel's candidate tilings and
        /// tunings on the GPU (or, `=cuda-sim`, on the PTX interpreter) at
        /// the --dim sizes and keep the fastest; the artifact records the
        /// choices (docs/gpu.md, "Autotuning").
        #[arg(long, value_enum, value_name = "DEVICE", num_args = 0..=1,
              default_missing_value = "cuda", requires = "output")]
        autotune: Option<TuneArg>,
    },
    /// Show the optimizer's decisions: each kernel of the plan, the ops it
    /// fuses and their roles, what they would cost as separate kernels, the
    /// rewrites (with egg's explanations) that produced ops not in the
    /// source, and per-rule match counts and search times.
    Explain {
        /// The model: model language (.kiln), graph IR text (.kir) or ONNX (.onnx).
        model: PathBuf,
        /// The target to plan for.
        #[arg(long, value_enum, default_value_t = TargetArg::Sm90)]
        target: TargetArg,
        /// The size of a symbolic dimension to plan for, as NAME=N (repeatable).
        #[arg(long = "dim", value_name = "NAME=N", value_parser = parse_dim)]
        dims: Vec<(String, usize)>,
    },
    /// Run a model or an artifact on given or random inputs and print a
    /// summary of each output (type, sum, mean |x|, checksum).
    Run {
        /// The model: model language (.kiln), graph IR text (.kir), ONNX
        /// (.onnx), or an artifact written by `kiln compile -o` (.kart).
        model: PathBuf,
        /// An input from a .npy file, as NAME=FILE.npy (repeatable). A float
        /// file may feed any float input; it is rounded to the input's type.
        #[arg(long = "input", value_name = "NAME=FILE.npy", value_parser = parse_pair)]
        inputs: Vec<(String, String)>,
        /// Draw every input not given with --input from a seeded generator
        /// (standard normal floats, integers in 0..4).
        #[arg(long, value_name = "SEED")]
        random_inputs: Option<u64>,
        /// Bind weights by name from a .safetensors file (an ONNX model's
        /// own initializers fill in the weights the file lacks; without
        /// --weights or --random-weights, they are the weights).
        #[arg(long, value_name = "W.safetensors", conflicts_with = "random_weights")]
        weights: Option<PathBuf>,
        /// Draw all weights from a seeded generator (the same seed always
        /// gives the same weights).
        #[arg(long, value_name = "SEED")]
        random_weights: Option<u64>,
        /// The size of a symbolic dimension for random inputs, as NAME=N
        /// (repeatable); input files bind sizes by themselves.
        #[arg(long = "dim", value_name = "NAME=N", value_parser = parse_dim)]
        dims: Vec<(String, usize)>,
        /// Where to run (default: interp for a model; for an artifact,
        /// the device of the target it was compiled for).
        #[arg(long, value_enum)]
        device: Option<Device>,
        /// Write each output to DIR/<name>.npy (floats as f32 unless
        /// --keep-dtype; characters outside [A-Za-z0-9_.-] in names become _).
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
        /// Write outputs in their own element type instead of f32.
        #[arg(long, requires = "output_dir")]
        keep_dtype: bool,
        /// Compile for exactly the sizes given with --dim: they become
        /// static in every kernel (a decode step's `m = 1` takes the GEMV
        /// path on GPUs); inputs of other sizes are then refused.
        #[arg(long)]
        specialize: bool,
    },
    /// Time a model: compile it for the device, bind weights, then run it on
    /// seeded random inputs and report the median, minimum and 90th
    /// percentile of the run times (after warm-up runs).
    Bench {
        /// The model: model language (.kiln), graph IR text (.kir), ONNX
        /// (.onnx) or an artifact (.kart).
        model: PathBuf,
        /// Where to run (default: cpu; an artifact's own target).
        #[arg(long, value_enum)]
        device: Option<Device>,
        /// Timed runs.
        #[arg(long, default_value_t = 50)]
        iters: usize,
        /// Untimed runs first.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// The size of a symbolic dimension, as NAME=N (repeatable).
        #[arg(long = "dim", value_name = "NAME=N", value_parser = parse_dim)]
        dims: Vec<(String, usize)>,
        /// Bind weights by name from a .safetensors file (default: the
        /// model's own, as an ONNX model carries them, else random weights,
        /// seed 1).
        #[arg(long, value_name = "W.safetensors", conflicts_with = "random_weights")]
        weights: Option<PathBuf>,
        /// Draw all weights from a seeded generator.
        #[arg(long, value_name = "SEED")]
        random_weights: Option<u64>,
        /// Print one JSON object instead of a line of text.
        #[arg(long)]
        json: bool,
        /// Compile for exactly the sizes given with --dim: they become
        /// static in every kernel (a decode step's `m = 1` takes the GEMV
        /// path on GPUs); inputs of other sizes are then refused.
        #[arg(long)]
        specialize: bool,
    },
    /// Quantize a model's matmul weights (round to nearest) and write them
    /// as the quantized declarations `weight w: int4[..] group 128 scale
    /// bf16` read; print the declarations and the accuracy of the quantized
    /// model against the original on the given inputs (interpreter).
    Quantize {
        /// The model: model language (.kiln), graph IR text (.kir) or ONNX (.onnx).
        model: PathBuf,
        /// The original weights (default: the model's own, as an ONNX
        /// model carries them).
        #[arg(long, value_name = "W.safetensors", conflicts_with = "random_weights")]
        weights: Option<PathBuf>,
        /// Draw the original weights from a seeded generator (to try a
        /// scheme on a model without weights).
        #[arg(long, value_name = "SEED")]
        random_weights: Option<u64>,
        /// The scheme: w4a16 (int4, groups of 128), w8a16 (int8, per
        /// channel), w3a16, w6a16, with options :gN (groups of N), :pc (per
        /// channel), :pt (per tensor), :zp (unsigned codes with zero
        /// points), e.g. w4a16:g128; mxfp4; nvfp4; fp8 (e4m3, per channel); w8a8 and fp8a8 (int8 or fp8 e4m3 weights with per-channel f32 scales, or :pt, and activations quantized per token at run time).
        #[arg(long, value_name = "SCHEME")]
        scheme: String,
        /// Another scheme (or `none`, to keep the weight) for the weights
        /// whose names match PATTERN (`*` matches any characters); the last
        /// matching --layer wins (repeatable).
        #[arg(long = "layer", value_name = "PATTERN=SCHEME")]
        layers: Vec<String>,
        /// An input for the accuracy report, as NAME=FILE.npy (repeatable).
        #[arg(long = "input", value_name = "NAME=FILE.npy", value_parser = parse_pair)]
        inputs: Vec<(String, String)>,
        /// Seed of the inputs not given with --input (default 1).
        #[arg(long, value_name = "SEED", default_value_t = 1)]
        random_inputs: u64,
        /// The size of a symbolic dimension for random inputs, as NAME=N.
        #[arg(long = "dim", value_name = "NAME=N", value_parser = parse_dim)]
        dims: Vec<(String, usize)>,
        /// Calibrate on these inputs, as NAME=FILE.npy (repeatable; inputs
        /// not given are drawn from --calibrate-random): per-input-channel
        /// scales folded into the norms and matmuls before the weights
        /// (AWQ-style), then each scale's clipping, both chosen by the
        /// error seen through the matmuls' activations.
        #[arg(long = "calibrate", value_name = "NAME=FILE.npy", value_parser = parse_pair)]
        calibrate: Vec<(String, String)>,
        /// Calibrate on inputs drawn from this seed (a different seed from
        /// the report's inputs keeps the report honest).
        #[arg(long, value_name = "SEED")]
        calibrate_random: Option<u64>,
        /// The weights file to write: every weight of the quantized model.
        #[arg(short = 'o', long = "output", value_name = "Q.safetensors")]
        output: PathBuf,
        /// Also write the model file with the quantized weights' declarations
        /// rewritten to read them (model-language models only).
        #[arg(long, value_name = "OUT.kiln")]
        emit_model: Option<PathBuf>,
    },
    /// Import an ONNX model as an editable model-language file, with its
    /// initializers as a safetensors file (names made into identifiers).
    Import {
        /// The ONNX model (.onnx).
        model: PathBuf,
        /// The model-language file to write.
        #[arg(short = 'o', long = "output", value_name = "OUT.kiln")]
        output: PathBuf,
        /// The weights file to write (default: OUT.safetensors beside OUT.kiln).
        #[arg(long, value_name = "W.safetensors")]
        weights_out: Option<PathBuf>,
    },
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=FILE, found `{s}`")),
    }
}

fn parse_dim(s: &str) -> Result<(String, usize), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=N, found `{s}`"))?;
    let n = v
        .parse::<usize>()
        .map_err(|_| format!("expected a size after `{k}=`, found `{v}`"))?;
    if k.is_empty() {
        return Err(format!("expected NAME=N, found `{s}`"));
    }
    Ok((k.to_string(), n))
}

/// Handles a failed write to stdout: a closed pipe ends the program with
/// success (the reader has what it wanted); anything else is an error.
pub fn stdout_failed(e: std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to standard output: {e}");
    std::process::exit(1);
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    // An internal error (a panic) prints one line and exits 2, with no backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("internal error in kiln: {info}");
        eprintln!("this is a bug in kiln; please report it with the model that caused it");
    }));
    match std::panic::catch_unwind(|| execute(cli.command)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            let msg = e.to_string();
            if msg.starts_with("error") {
                eprint!("{msg}");
            } else {
                eprintln!("error: {msg}");
            }
            1
        }
        Err(_) => 2,
    }
}

fn execute(cmd: Command) -> Result<(), KilnError> {
    match cmd {
        Command::Check { model: path, print } => check(&path, print),
        Command::Import {
            model: path,
            output,
            weights_out,
        } => import(&path, &output, weights_out.as_deref()),
        Command::Quantize {
            model: path,
            weights,
            random_weights,
            scheme,
            layers,
            inputs,
            random_inputs,
            dims,
            calibrate,
            calibrate_random,
            output,
            emit_model,
        } => {
            let wsrc = match (&weights, random_weights) {
                (Some(p), _) => WeightSource::File(p),
                (None, Some(seed)) => WeightSource::Random(seed),
                (None, None) => WeightSource::Model {
                    fallback_seed: None,
                },
            };
            let dims: BTreeMap<String, usize> = dims.into_iter().collect();
            let spec = InputSpec {
                files: &inputs,
                random_seed: Some(random_inputs),
                dims: &dims,
            };
            let calib = (!calibrate.is_empty() || calibrate_random.is_some()).then(|| InputSpec {
                files: &calibrate,
                random_seed: calibrate_random,
                dims: &dims,
            });
            quantize(
                &path,
                &wsrc,
                &spec,
                calib.as_ref(),
                &scheme,
                &layers,
                (&output, emit_model.as_deref()),
            )
        }
        Command::Explain {
            model: path,
            target,
            dims,
        } => {
            let dims: HashMap<String, u64> = dims.into_iter().map(|(k, v)| (k, v as u64)).collect();
            let text = pipeline::explain(&path, target.target(), &dims)?;
            crate::out!("{text}");
            Ok(())
        }
        Command::Compile {
            model: path,
            emit,
            emit_dir,
            timings,
            target,
            dims,
            output,
            weights,
            random_weights,
            no_cubins,
            specialize,
            autotune,
        } => {
            if autotune.is_some() && target == TargetArg::Cpu {
                return Err(KilnError::Usage(
                    "--autotune tunes GPU kernels: give --target sm_90 or sm_80".into(),
                ));
            }
            if let Some(out) = &output {
                let weights = match (&weights, random_weights) {
                    (Some(p), _) => Some(WeightSource::File(p)),
                    (None, Some(seed)) => Some(WeightSource::Random(seed)),
                    (None, None) => None,
                };
                let ptxas = match target {
                    TargetArg::Cpu => None,
                    TargetArg::Sm80 | TargetArg::Sm90 if no_cubins => None,
                    TargetArg::Sm80 | TargetArg::Sm90 => crate::cubin::find_ptxas(),
                };
                let parts = ArtifactParts {
                    target,
                    dims,
                    weights,
                    ptxas,
                    specialize,
                    autotune: autotune.map(|a| match a {
                        TuneArg::Cuda => crate::autotune::TuneOn::Cuda,
                        TuneArg::CudaSim => crate::autotune::TuneOn::Sim,
                    }),
                };
                return write_artifact(&path, out, parts, &emit, emit_dir);
            }
            if weights.is_some() || random_weights.is_some() {
                return Err(KilnError::Usage(
                    "--weights and --random-weights are stored in an artifact: give -o OUT.kart"
                        .into(),
                ));
            }
            let opts = pipeline::Options {
                target: target.target(),
                dims: dims.into_iter().map(|(k, v)| (k, v as u64)).collect(),
                specialize,
                ..pipeline::Options::default()
            };
            let c = pipeline::compile(&path, &emit, &opts)?;
            pipeline::write_emitted(&c, emit_dir.as_deref())?;
            if emit.is_empty() {
                crate::outln!(
                    "{}: compiled `{}` for {}: {} kernel(s), {:.3} us estimated",
                    path.display(),
                    c.graph.name,
                    c.plan.target,
                    c.plan.run_kernels().count(),
                    c.plan.seconds * 1e6
                );
            }
            if timings {
                for (phase, r) in [("algebra", &c.algebra), ("fusion", &c.fusion)] {
                    eprintln!(
                        "{phase:>24}: {} iterations, {} e-nodes, {} e-classes, stopped: {}",
                        r.iterations, r.nodes, r.classes, r.stop_reason
                    );
                    for (rule, n, t) in &r.rules {
                        if *n > 0 {
                            eprintln!(
                                "{:>24}  {rule}: {n} ({:.3} ms searching)",
                                "",
                                t.as_secs_f64() * 1e3
                            );
                        }
                    }
                }
                for (stage, d) in &c.timings {
                    eprintln!("{stage:>24}: {:.3} ms", d.as_secs_f64() * 1e3);
                }
            }
            Ok(())
        }
        Command::Run {
            model: path,
            inputs,
            random_inputs,
            weights,
            random_weights,
            dims,
            device,
            output_dir,
            keep_dtype,
            specialize,
        } => {
            let dims: BTreeMap<String, usize> = dims.into_iter().collect();
            let spec = InputSpec {
                files: &inputs,
                random_seed: random_inputs,
                dims: &dims,
            };
            let wsrc = match (&weights, random_weights) {
                (Some(p), _) => WeightSource::File(p),
                (None, Some(seed)) => WeightSource::Random(seed),
                (None, None) => WeightSource::Model {
                    fallback_seed: None,
                },
            };
            if is_artifact(&path) {
                return run_artifact(
                    &path,
                    &spec,
                    weights.as_deref(),
                    random_weights,
                    device,
                    output_dir.as_deref(),
                    keep_dtype,
                );
            }
            run(
                &path,
                &spec,
                &wsrc,
                (device.unwrap_or(Device::Interp), specialize),
                output_dir.as_deref(),
                keep_dtype,
            )
        }
        Command::Bench {
            model: path,
            device,
            iters,
            warmup,
            dims,
            weights,
            random_weights,
            json,
            specialize,
        } => {
            let dims: BTreeMap<String, usize> = dims.into_iter().collect();
            let spec = InputSpec {
                files: &[],
                random_seed: Some(1),
                dims: &dims,
            };
            if is_artifact(&path) {
                return bench_artifact(
                    &path,
                    &spec,
                    weights.as_deref(),
                    random_weights,
                    device,
                    (iters.max(1), warmup, json),
                );
            }
            let wsrc = match (&weights, random_weights) {
                (Some(p), _) => WeightSource::File(p),
                (None, Some(seed)) => WeightSource::Random(seed),
                (None, None) => WeightSource::Model {
                    fallback_seed: Some(1),
                },
            };
            let device = device.unwrap_or(Device::Cpu);
            bench(
                &path,
                &spec,
                &wsrc,
                (device, specialize),
                (iters.max(1), warmup, json),
            )
        }
    }
}

/// A model compiled for the CPU or the GPU with its inputs bound, split
/// from one binding of the graph: the graph's inputs, and its weights
/// (already bound to the model).
fn device_model(
    m: model::Model,
    bindings: &HashMap<String, interp::Tensor>,
    dims: &BTreeMap<String, usize>,
    (device, specialize): (crate::jit::Device, bool),
) -> Result<(crate::jit::Model, HashMap<String, HostTensor>), KilnError> {
    let g = &m.graph;
    let input_names: Vec<String> = g
        .inputs()
        .into_iter()
        .map(|v| g.value_name(v).to_string())
        .collect();
    let opts = crate::jit::JitOptions {
        device,
        dims: dims.iter().map(|(k, &v)| (k.clone(), v as u64)).collect(),
        specialize,
        ..crate::jit::JitOptions::default()
    };
    let mut inputs = HashMap::new();
    let mut weights = HashMap::new();
    for (name, t) in bindings {
        let host = data::from_interp(t);
        if input_names.contains(name) {
            inputs.insert(name.clone(), host);
        } else {
            weights.insert(name.clone(), host);
        }
    }
    let progress = Progress::spinner(format!(
        "compiling `{}` for {}",
        m.graph.name,
        device.name()
    ));
    let mut model = crate::jit::compile_loaded(m, &opts)?;
    progress.set_message("binding the weights");
    model.bind_weights(&weights)?;
    Ok((model, inputs))
}

fn bench(
    path: &Path,
    inputs: &InputSpec,
    weights: &WeightSource,
    (device, specialize): (Device, bool),
    (iters, warmup, json): (usize, usize, bool),
) -> Result<(), KilnError> {
    let start = Instant::now();
    let m = model::load(path)?;
    let bindings = data::bind_with(&m.graph, inputs, weights, &m.weights)?;
    let name = m.graph.name.clone();
    let mut times = Vec::with_capacity(iters);
    let mut threads = 1;
    let mut peak = 0;
    let compile_ms;
    match device {
        Device::Interp => {
            compile_ms = start.elapsed().as_secs_f64() * 1e3;
            let progress = Progress::bar((warmup + iters) as u64, "timing interpreter runs");
            for i in 0..warmup + iters {
                let t = Instant::now();
                interp::run(&m.graph, &bindings)?;
                if i >= warmup {
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
                progress.inc();
            }
        }
        Device::Cpu | Device::Cuda | Device::CudaSim => {
            let jd = match device {
                Device::Cuda => crate::jit::Device::Cuda,
                Device::CudaSim => crate::jit::Device::CudaSim,
                Device::Interp | Device::Cpu => crate::jit::Device::Cpu,
            };
            let (model, host) = device_model(m, &bindings, inputs.dims, (jd, specialize))?;
            compile_ms = model.compile_time().as_secs_f64() * 1e3;
            times = time_model(&model, &host, iters, warmup)?;
            let s = model.stats();
            threads = s.threads;
            peak = s.peak_arena_bytes;
        }
    }
    let figures = Figures {
        times,
        setup_ms: compile_ms,
        setup: "compiled",
        threads,
        peak,
    };
    report(path, &name, device.name(), iters, warmup, figures, json);
    Ok(())
}

/// What a benchmark measured.
struct Figures {
    /// Run times in milliseconds.
    times: Vec<f64>,
    /// Compile (or artifact load) time in milliseconds.
    setup_ms: f64,
    /// `compiled` or `loaded`.
    setup: &'static str,
    threads: usize,
    peak: usize,
}

/// Prints a benchmark's median, minimum and 90th percentile.
fn report(
    path: &Path,
    name: &str,
    device: &str,
    iters: usize,
    warmup: usize,
    f: Figures,
    json: bool,
) {
    let Figures {
        mut times,
        setup_ms,
        setup,
        threads,
        peak,
    } = f;
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let (median, min, p90) = (at(0.5), times[0], at(0.9));
    let key = if setup == "loaded" { "load" } else { "compile" };
    if json {
        crate::outln!(
            "{{\"model\": {:?}, \"device\": \"{device}\", \"iters\": {iters}, \"median_ms\": {median:.6}, \"min_ms\": {min:.6}, \"p90_ms\": {p90:.6}, \"{key}_ms\": {setup_ms:.3}, \"threads\": {threads}, \"peak_arena_bytes\": {peak}}}",
            name
        );
    } else {
        crate::outln!(
            "{}: `{name}` on {device}: median {median:.3} ms, min {min:.3} ms, p90 {p90:.3} ms over {iters} runs ({warmup} warm-up); {setup} in {setup_ms:.1} ms; {threads} thread(s), arena {peak} bytes",
            path.display()
        );
    }
}

/// `kiln bench A.kart`: the artifact loaded for its target's device (or
/// `device`), timed as a source model is.
fn bench_artifact(
    path: &Path,
    inputs: &InputSpec,
    weights: Option<&Path>,
    random_weights: Option<u64>,
    device: Option<Device>,
    (iters, warmup, json): (usize, usize, bool),
) -> Result<(), KilnError> {
    let start = Instant::now();
    let (model, host) = artifact_model(path, inputs, weights, random_weights, device)?;
    let setup_ms = start.elapsed().as_secs_f64() * 1e3;
    let times = time_model(&model, &host, iters, warmup)?;
    let s = model.stats();
    let name = model.program().name.clone();
    let figures = Figures {
        times,
        setup_ms,
        setup: "loaded",
        threads: s.threads,
        peak: s.peak_arena_bytes,
    };
    report(
        path,
        &name,
        model.device().name(),
        iters,
        warmup,
        figures,
        json,
    );
    Ok(())
}

/// Run times of a compiled model in milliseconds. On the CPU, whole runs;
/// on the GPU the device work alone: inputs uploaded once, the run's CUDA
/// graph replayed. A first run checks that the model runs; then enough
/// replays per sample to fill about a millisecond, so that the wait for the
/// device does not dominate short plans.
fn time_model(
    model: &crate::jit::Model,
    host: &HashMap<String, HostTensor>,
    iters: usize,
    warmup: usize,
) -> Result<Vec<f64>, KilnError> {
    match model.device() {
        crate::jit::Device::Cpu | crate::jit::Device::CudaSim => {
            let progress = Progress::bar((warmup + iters) as u64, "timing runs");
            let mut times = Vec::with_capacity(iters);
            for i in 0..warmup + iters {
                let t = Instant::now();
                model.run(host)?;
                if i >= warmup {
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
                progress.inc();
            }
            Ok(times)
        }
        crate::jit::Device::Cuda => {
            let _progress = Progress::spinner("timing CUDA graph replays");
            model.run(host)?;
            let once = model.time_runs(host, warmup.max(1), 1)?;
            let one = once
                .iter()
                .min()
                .map_or(1e-3, |d| d.as_secs_f64())
                .max(1e-7);
            let batch = ((1e-3 / one).ceil() as usize).clamp(1, 100);
            Ok(model
                .time_runs(host, iters, batch)?
                .into_iter()
                .map(|d| d.as_secs_f64() * 1e3)
                .collect())
        }
    }
}

/// `kiln quantize`: see [`crate::quantize`].
fn quantize(
    path: &Path,
    wsrc: &WeightSource,
    spec: &InputSpec,
    calib: Option<&InputSpec>,
    scheme: &str,
    layers: &[String],
    (output, emit_model): (&Path, Option<&Path>),
) -> Result<(), KilnError> {
    use crate::quantize::{self as q, LayerRule, Recipe};
    let usage = |e: q::QuantizeError| KilnError::Usage(e.to_string());
    if emit_model.is_some() && path.extension().and_then(|e| e.to_str()) != Some("kiln") {
        return Err(KilnError::Usage(format!(
            "{}: --emit-model rewrites model-language files (.kiln)",
            path.display()
        )));
    }
    let recipe = Recipe::parse(scheme).map_err(usage)?;
    let rules = layers
        .iter()
        .map(|l| LayerRule::parse(l))
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage)?;
    let m = model::load(path)?;
    let bindings = data::bind_with(&m.graph, spec, wsrc, &m.weights)?;
    let mut chosen = Vec::new();
    let mut kept = Vec::new();
    for (name, _, axis, float) in q::candidates(&m.graph) {
        let r = rules
            .iter()
            .rev()
            .find(|r| q::glob(&r.pattern, &name))
            .map_or(recipe.as_ref(), |r| r.recipe.as_ref());
        match r {
            Some(r) => chosen.push((name, axis, float, r.clone())),
            None => kept.push(name),
        }
    }
    let rtn = chosen
        .iter()
        .map(|(n, axis, float, r)| q::quantize_weight(n, &bindings[n], *axis, *float, r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage)?;
    // Calibrated: per-input-channel scales folded into norms and earlier
    // matmuls, then each scale's clipping, both chosen by the error the
    // matmuls see on the calibration activations.
    let calibrated = match calib {
        None => None,
        Some(cspec) => {
            let names: Vec<String> = chosen.iter().map(|c| c.0.clone()).collect();
            let g = q::with_activations(&m.graph, &names);
            let mut cb = data::bind_with(&g, cspec, wsrc, &m.weights)?;
            let acts: HashMap<String, interp::Tensor> = interp::run(&g, &cb)?.into_iter().collect();
            // scales for weight-only recipes (W8A8 rounds the activations
            // too, which the search's error does not see)
            let recipes: HashMap<String, Recipe> = chosen
                .iter()
                .filter(|c| c.3.act.is_none())
                .map(|c| (c.0.clone(), c.3.clone()))
                .collect();
            let weight_only: Vec<String> = recipes.keys().cloned().collect();
            let mut groups = q::scale_search::scale_groups(&m.graph, &weight_only);
            // the folds into earlier matmuls' columns first, so that the
            // groups containing those matmuls search their final columns
            groups.sort_by_key(|g| matches!(g.fold, q::scale_search::Fold::Norm { .. }));
            let mut working = bindings.clone();
            let mut scales = Vec::new();
            for group in &groups {
                let Some(x) = acts.get(&format!("{}.act", group.weights[0])) else {
                    continue;
                };
                let c =
                    q::scale_search::search(group, &working, &recipes, x, true).map_err(usage)?;
                q::scale_search::apply(&mut working, &c);
                scales.push(c);
            }
            // the activations the scaled weights read
            for w in m.graph.weights() {
                let n = m.graph.value_name(w);
                if let Some(t) = working.get(n) {
                    cb.insert(n.to_string(), t.clone());
                }
            }
            let acts: HashMap<String, interp::Tensor> = interp::run(&g, &cb)?.into_iter().collect();
            let qs = chosen
                .iter()
                .map(|(n, axis, float, r)| match acts.get(&format!("{n}.act")) {
                    Some(x) => q::quantize_calibrated(n, &working[n], *axis, *float, r, x),
                    None => q::quantize_weight(n, &working[n], *axis, *float, r),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(usage)?;
            Some((qs, working, scales))
        }
    };
    let original = interp::run(&m.graph, &bindings)?;
    let run_quantized = |qs: &[q::QuantizedWeight],
                         floats: &HashMap<String, interp::Tensor>|
     -> Result<_, KilnError> {
        let g = q::quantized_graph(&m.graph, qs).map_err(|e| KilnError::Internal {
            stage: "kiln quantize",
            message: e.to_string(),
        })?;
        let b = q::quantized_bindings(floats, qs);
        let outs = interp::run(&g, &b)?;
        Ok((g, b, outs))
    };
    let (_, _, rtn_outs) = run_quantized(&rtn, &bindings)?;
    let (quantized, floats) = match &calibrated {
        Some((qs, working, _)) => (qs, working),
        None => (&rtn, &bindings),
    };
    let (qgraph, qbindings, after) = run_quantized(quantized, floats)?;
    // Every weight of the quantized model.
    let weight_names: Vec<String> = qgraph
        .weights()
        .into_iter()
        .map(|w| qgraph.value_name(w).to_string())
        .collect();
    let out: HashMap<String, interp::Tensor> = weight_names
        .iter()
        .filter_map(|n| qbindings.get(n).map(|t| (n.clone(), t.clone())))
        .collect();
    crate::data::write_safetensors(output, &out).map_err(|message| KilnError::Weight {
        name: output.display().to_string(),
        message,
    })?;
    if quantized.is_empty() && kept.is_empty() {
        crate::outln!(
            "{}: no matmul weights to quantize (only the second operands of matmuls are; convolution weights are not yet)",
            path.display()
        );
    } else {
        crate::outln!(
            "{}: quantized {} of {} matmul weights; declare them as",
            path.display(),
            quantized.len(),
            quantized.len() + kept.len()
        );
    }
    for qw in quantized {
        crate::outln!("    {}", qw.declaration());
    }
    if !kept.is_empty() {
        crate::outln!("kept as they are (--layer ...=none): {}", kept.join(", "));
    }
    if let Some((_, _, scales)) = &calibrated {
        if !scales.is_empty() {
            crate::outln!(
                "activation-aware input-channel scales (the weights' rows times s, folded as 1/s):"
            );
        }
        for c in scales {
            crate::outln!("    {}", q::scale_search::describe(c));
        }
    }
    crate::outln!("accuracy on the inputs, quantized against the original (interpreter):");
    crate::outln!("    output: max |error| / max |original|, mean |error| / mean |original|");
    for e in q::output_errors(&original, &rtn_outs) {
        let label = if calibrated.is_some() {
            " (round to nearest)"
        } else {
            ""
        };
        crate::outln!(
            "    {}{label}: {:.3e}, {:.3e}",
            e.name,
            e.max_rel,
            e.mean_rel
        );
    }
    if calibrated.is_some() {
        for e in q::output_errors(&original, &after) {
            crate::outln!(
                "    {} (calibrated): {:.3e}, {:.3e}",
                e.name,
                e.max_rel,
                e.mean_rel
            );
        }
    }
    crate::outln!("wrote {} ({} tensors)", output.display(), out.len());
    if let Some(out_model) = emit_model {
        let src = std::fs::read_to_string(path).map_err(|source| KilnError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let text = q::rewrite_source(&src, &m.graph, quantized).map_err(usage)?;
        std::fs::write(out_model, text).map_err(|source| KilnError::Io {
            path: out_model.display().to_string(),
            source,
        })?;
        crate::outln!("wrote {}", out_model.display());
    }
    Ok(())
}

fn import(path: &Path, output: &Path, weights_out: Option<&Path>) -> Result<(), KilnError> {
    if path.extension().and_then(|e| e.to_str()) != Some("onnx") {
        return Err(KilnError::Usage(format!(
            "{}: `kiln import` reads ONNX models (.onnx)",
            path.display()
        )));
    }
    let m = model::load(path)?;
    let (text, weights) = crate::onnx::to_kiln::to_kiln(&m.graph, &m.weights)?;
    let wpath = weights_out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| output.with_extension("safetensors"));
    std::fs::write(output, &text).map_err(|source| KilnError::Io {
        path: output.display().to_string(),
        source,
    })?;
    crate::onnx::to_kiln::write_safetensors(&wpath, &weights)?;
    crate::outln!(
        "{}: wrote {} ({} lines) and {} ({} weights)",
        path.display(),
        output.display(),
        text.lines().count(),
        wpath.display(),
        weights.len()
    );
    Ok(())
}

fn check(path: &Path, print: bool) -> Result<(), KilnError> {
    let m = model::load(path)?;
    let g = &m.graph;
    if print {
        crate::out!("{}", kiln_dialect::text::print(g));
        return Ok(());
    }
    crate::outln!(
        "{}: graph `{}` is well formed ({} nodes)",
        path.display(),
        g.name,
        g.node_count()
    );
    for v in g.inputs() {
        crate::outln!("  input  {}: {}", g.value_name(v), g.value_type(v));
    }
    for v in g.weights() {
        crate::outln!("  weight {}: {}", g.value_name(v), g.value_type(v));
    }
    for o in g.outputs() {
        crate::outln!("  output {}: {}", o.name, g.value_type(o.value));
    }
    Ok(())
}

fn run(
    path: &Path,
    inputs: &InputSpec,
    weights: &WeightSource,
    (device, specialize): (Device, bool),
    output_dir: Option<&Path>,
    keep_dtype: bool,
) -> Result<(), KilnError> {
    let m = model::load(path)?;
    let bindings = data::bind_with(&m.graph, inputs, weights, &m.weights)?;
    let outputs = match device {
        Device::Interp => {
            let _progress = Progress::spinner("running the reference interpreter");
            interp::run(&m.graph, &bindings)?
        }
        Device::Cpu | Device::Cuda | Device::CudaSim => {
            let d = match device {
                Device::Cuda => crate::jit::Device::Cuda,
                Device::CudaSim => crate::jit::Device::CudaSim,
                Device::Interp | Device::Cpu => crate::jit::Device::Cpu,
            };
            let (model, host) = device_model(m, &bindings, inputs.dims, (d, specialize))?;
            model
                .run(&host)?
                .iter()
                .map(|(n, t)| (n.clone(), data::to_interp(t)))
                .collect()
        }
    };
    write_outputs(&outputs, output_dir, keep_dtype)
}

/// Prints each output's summary and writes it to `DIR/<name>.npy`.
fn write_outputs(
    outputs: &[(String, interp::Tensor)],
    output_dir: Option<&Path>,
    keep_dtype: bool,
) -> Result<(), KilnError> {
    if let Some(dir) = output_dir {
        std::fs::create_dir_all(dir).map_err(|source| KilnError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    for (name, t) in outputs {
        crate::outln!("{}", data::summary(name, t));
        if let Some(dir) = output_dir {
            let t = if keep_dtype || !t.dtype.is_float() {
                t.clone()
            } else {
                interp::Tensor::new(kiln_dialect::DType::F32, &t.shape, t.data.clone())
            };
            kiln_runtime::npy::write(
                &dir.join(data::output_file_name(name)),
                &data::from_interp(&t),
            )?;
        }
    }
    Ok(())
}

/// Whether `path` names an artifact (`.kart`).
fn is_artifact(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("kart")
}

/// What `kiln compile -o` stores.
struct ArtifactParts<'a> {
    target: TargetArg,
    dims: Vec<(String, usize)>,
    weights: Option<WeightSource<'a>>,
    ptxas: Option<PathBuf>,
    specialize: bool,
    autotune: Option<crate::autotune::TuneOn>,
}

/// `kiln compile MODEL -o OUT.kart`: writes the artifact (and prints the
/// stages asked for with --emit first).
fn write_artifact(
    path: &Path,
    out: &Path,
    parts: ArtifactParts,
    emit: &[Stage],
    emit_dir: Option<PathBuf>,
) -> Result<(), KilnError> {
    use kiln_runtime::artifact::Target;
    let ArtifactParts {
        target,
        dims,
        weights,
        ptxas,
        specialize,
        autotune,
    } = parts;
    let dims: BTreeMap<String, usize> = dims.into_iter().collect();
    if !emit.is_empty() {
        let opts = pipeline::Options {
            target: target.target(),
            dims: dims.iter().map(|(k, &v)| (k.clone(), v as u64)).collect(),
            specialize,
            ..pipeline::Options::default()
        };
        let c = pipeline::compile(path, emit, &opts)?;
        pipeline::write_emitted(&c, emit_dir.as_deref())?;
    }
    let target = match target {
        TargetArg::Cpu => Target::Cpu,
        TargetArg::Sm80 => Target::Sm80,
        TargetArg::Sm90 => Target::Sm90,
    };
    let opts = crate::artifact::ArtifactOptions {
        target,
        dims,
        weights,
        ptxas,
        specialize,
        autotune,
    };
    let progress = Progress::spinner(format!(
        "compiling {} for {}{}",
        path.display(),
        target.name(),
        if autotune.is_some() {
            " (autotuning)"
        } else {
            ""
        }
    ));
    let (a, report) = crate::artifact::build_with_report(path, &opts)?;
    drop(progress);
    let bytes = a.to_bytes();
    std::fs::write(out, &bytes).map_err(|source| KilnError::Io {
        path: out.display().to_string(),
        source,
    })?;
    let weights = match &a.weights {
        Some(w) => format!(
            "{} weight(s), {} bytes",
            w.len(),
            w.iter().map(|(_, t)| t.data.len()).sum::<usize>()
        ),
        None => "no weights".to_string(),
    };
    let code = match (&a.code, &a.cubins) {
        (kiln_runtime::artifact::Code::Cpu(_), _) => "CLIF".to_string(),
        (kiln_runtime::artifact::Code::Ptx(_), None) => "PTX".to_string(),
        (kiln_runtime::artifact::Code::Ptx(_), Some(c)) => {
            format!("PTX and cubins for {} ({})", c.arch, c.assembler)
        }
    };
    crate::outln!(
        "{}: wrote {} for {}: {} kernel(s) as {code}, {weights}; {} bytes",
        path.display(),
        out.display(),
        target.name(),
        a.program.launches.len(),
        bytes.len()
    );
    for t in &report {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let default = t.trials.first().map_or(0.0, |d| ms(d.time));
        let best = t
            .trials
            .iter()
            .find(|x| x.label == t.chosen)
            .map_or(0.0, |d| ms(d.time));
        crate::outln!(
            "autotune launch {} (`{}`): {} {best:.4} ms (default {default:.4} ms; {} candidates)",
            t.launch,
            t.kernel,
            t.chosen,
            t.trials.len()
        );
        for (label, why) in &t.failed {
            crate::outln!("  left out {label}: {why}");
        }
    }
    Ok(())
}

/// The weights an artifact compiled without them is run with: each of the
/// program's weights from the file, by name, in the program's type.
fn artifact_weights(
    program: &kiln_dialect::kernel::Program,
    file: &Path,
) -> Result<HashMap<String, HostTensor>, KilnError> {
    let stored = kiln_runtime::safetensors::read(file)?;
    let mut out = HashMap::new();
    for &b in &program.weights {
        let buf = &program.buffers[b];
        let weight = |message: String| KilnError::Weight {
            name: buf.name.clone(),
            message,
        };
        let st = stored.get(&buf.name).ok_or_else(|| {
            weight(format!(
                "{} has no tensor `{}` ({}{})",
                file.display(),
                buf.name,
                buf.dtype,
                buf.shape
            ))
        })?;
        let shape: Vec<usize> = buf
            .shape
            .as_static()
            .ok_or_else(|| weight(format!("has symbolic shape {}", buf.shape)))?
            .iter()
            .map(|&d| d as usize)
            .collect();
        let t = st
            .to_host(buf.dtype, &shape)
            .map_err(|m| weight(format!("{m} in {}", file.display())))?;
        out.insert(buf.name.clone(), t);
    }
    Ok(out)
}

/// An artifact loaded for `device` (default: its target's), with its
/// weights (stored, or from `weights`) and the inputs `inputs` describes.
fn artifact_model(
    path: &Path,
    inputs: &InputSpec,
    weights: Option<&Path>,
    random_weights: Option<u64>,
    device: Option<Device>,
) -> Result<(crate::jit::Model, HashMap<String, HostTensor>), KilnError> {
    use kiln_runtime::artifact::{Artifact, Target};
    let a = Artifact::read(path)?;
    let device = device.unwrap_or(match a.target {
        Target::Cpu => Device::Cpu,
        Target::Sm80 | Target::Sm90 => Device::Cuda,
    });
    let external = match (&a.weights, weights, random_weights) {
        (Some(_), None, None) => None,
        (Some(_), Some(_), _) | (Some(_), None, Some(_)) => {
            return Err(KilnError::Usage(format!(
                "{} holds its weights; --weights and --random-weights apply to artifacts compiled without them",
                path.display()
            )));
        }
        (None, Some(file), _) => Some(artifact_weights(&a.program, file)?),
        (None, None, Some(_)) => {
            return Err(KilnError::Usage(format!(
                "{} holds no weights, and random weights need the model's declarations: compile it with --random-weights SEED, or pass --weights W.safetensors",
                path.display()
            )));
        }
        (None, None, None) if a.program.weights.is_empty() => None,
        (None, None, None) => {
            return Err(KilnError::Usage(format!(
                "{} was compiled without weights: pass --weights W.safetensors",
                path.display()
            )));
        }
    };
    let device = match device {
        Device::Interp => {
            return Err(KilnError::Usage(format!(
                "{} is compiled for {}: run it with --device {}; the reference interpreter runs source models",
                path.display(),
                a.target.name(),
                match a.target {
                    Target::Cpu => "cpu",
                    Target::Sm80 | Target::Sm90 => "cuda",
                }
            )));
        }
        Device::Cpu => crate::jit::Device::Cpu,
        Device::Cuda => crate::jit::Device::Cuda,
        Device::CudaSim => crate::jit::Device::CudaSim,
    };
    let mut model = crate::jit::load_artifact(&a, device)?;
    if let Some(w) = &external {
        model.bind_weights(w)?;
    }
    let (bound, _) = data::bind_inputs(model.inputs(), inputs)?;
    let host = bound
        .iter()
        .map(|(k, t)| (k.clone(), data::from_interp(t)))
        .collect();
    Ok((model, host))
}

/// `kiln run ARTIFACT.kart`: loads, verifies and runs an artifact.
fn run_artifact(
    path: &Path,
    inputs: &InputSpec,
    weights: Option<&Path>,
    random_weights: Option<u64>,
    device: Option<Device>,
    output_dir: Option<&Path>,
    keep_dtype: bool,
) -> Result<(), KilnError> {
    let (model, host) = artifact_model(path, inputs, weights, random_weights, device)?;
    let outputs = model.run(&host)?;
    write_outputs(
        &outputs
            .iter()
            .map(|(n, t)| (n.clone(), data::to_interp(t)))
            .collect::<Vec<_>>(),
        output_dir,
        keep_dtype,
    )
}
