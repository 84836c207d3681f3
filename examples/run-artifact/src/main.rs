//! Loads a kiln artifact (`.kart`) and runs it on its target (the CPU, or
//! the GPU for an `sm_*` artifact), with nothing but `kiln-runtime`: no
//! compiler, no optimizer, no front-end.
//!
//! ```text
//! run-artifact MODEL.kart [--input NAME=FILE.npy ...] [--random-inputs SEED] [--dim NAME=N ...]
//! ```
//!
//! Prints one line per output, as `kiln run` does (type, sum, mean |x|,
//! a checksum of its bits), and on stderr the time to load the artifact
//! (read, verify, link its kernels or load its GPU modules, bind its
//! weights) and of the first run; for a GPU artifact, how many modules came
//! from its cubins.
//! Seeded random inputs use this program's own generator (uniform in
//! [-1, 1)), not `kiln run`'s. Exit code 1 and a message on bad input.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use kiln_dialect::Dim;
use kiln_runtime::HostTensor;
use kiln_runtime::artifact::{Artifact, Target};
use kiln_runtime::cpu::executor::CpuExecutable;
use kiln_runtime::cuda::CudaExecutable;

/// The executor of the artifact's target.
enum Exe {
    Cpu(CpuExecutable),
    Cuda(CudaExecutable),
}

impl Exe {
    fn program(&self) -> &kiln_dialect::kernel::Program {
        match self {
            Exe::Cpu(e) => e.program(),
            Exe::Cuda(e) => e.program(),
        }
    }

    fn run(
        &self,
        inputs: &HashMap<String, HostTensor>,
    ) -> Result<Vec<(String, HostTensor)>, String> {
        match self {
            Exe::Cpu(e) => e.run(inputs).map_err(|e| e.to_string()),
            Exe::Cuda(e) => e.run(inputs).map_err(|e| e.to_string()),
        }
    }
}

/// The command line, parsed.
struct Args {
    artifact: PathBuf,
    inputs: Vec<(String, PathBuf)>,
    seed: Option<u64>,
    dims: HashMap<String, usize>,
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: run-artifact MODEL.kart [--input NAME=FILE.npy ...] [--random-inputs SEED] [--dim NAME=N ...]";
    let mut args = std::env::args().skip(1);
    let mut artifact = None;
    let mut inputs = Vec::new();
    let mut seed = None;
    let mut dims = HashMap::new();
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value; {usage}"));
        match a.as_str() {
            "--input" => {
                let v = value("--input")?;
                let (k, f) = v
                    .split_once('=')
                    .ok_or(format!("expected NAME=FILE.npy, found `{v}`"))?;
                inputs.push((k.to_string(), PathBuf::from(f)));
            }
            "--random-inputs" => {
                let v = value("--random-inputs")?;
                seed = Some(
                    v.parse()
                        .map_err(|_| format!("expected a seed, found `{v}`"))?,
                );
            }
            "--dim" => {
                let v = value("--dim")?;
                let (k, n) = v
                    .split_once('=')
                    .ok_or(format!("expected NAME=N, found `{v}`"))?;
                let n = n
                    .parse()
                    .map_err(|_| format!("expected a size, found `{n}`"))?;
                dims.insert(k.to_string(), n);
            }
            _ if artifact.is_none() && !a.starts_with("--") => artifact = Some(PathBuf::from(a)),
            _ => return Err(format!("unexpected argument `{a}`; {usage}")),
        }
    }
    Ok(Args {
        artifact: artifact.ok_or(usage.to_string())?,
        inputs,
        seed,
        dims,
    })
}

/// Uniform values in [-1, 1) from a seeded SplitMix64 stream.
fn random_values(seed: u64, n: usize) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let start = Instant::now();
    let artifact = Artifact::read(&args.artifact).map_err(|e| e.to_string())?;
    let read = start.elapsed();
    let exe = match artifact.target {
        Target::Cpu => Exe::Cpu(artifact.cpu_executable().map_err(|e| e.to_string())?),
        Target::Sm80 | Target::Sm90 => {
            Exe::Cuda(artifact.cuda_executable().map_err(|e| e.to_string())?)
        }
    };
    let loaded = start.elapsed();
    let p = exe.program();
    let mut inputs: HashMap<String, HostTensor> = HashMap::new();
    for (name, file) in &args.inputs {
        let t = kiln_runtime::npy::read(file).map_err(|e| e.to_string())?;
        inputs.insert(name.clone(), t);
    }
    for &b in &p.inputs {
        let buf = &p.buffers[b];
        if inputs.contains_key(&buf.name) {
            continue;
        }
        let Some(seed) = args.seed else {
            return Err(format!(
                "missing input `{}`: pass --input {}=FILE.npy or --random-inputs SEED",
                buf.name, buf.name
            ));
        };
        let mut shape = Vec::with_capacity(buf.shape.0.len());
        for d in &buf.shape.0 {
            shape.push(match d {
                Dim::Static(n) => *n as usize,
                Dim::Sym(s) => *args
                    .dims
                    .get(s)
                    .ok_or(format!("input `{}` needs --dim {s}=N", buf.name))?,
            });
        }
        let n = shape.iter().product();
        let values = random_values(seed ^ b as u64, n);
        inputs.insert(
            buf.name.clone(),
            HostTensor::from_values(buf.dtype, &shape, &values),
        );
    }
    let t = Instant::now();
    let outputs = exe.run(&inputs)?;
    let first_run = t.elapsed();
    for (name, t) in &outputs {
        let v = t.to_values();
        let n = v.len().max(1) as f64;
        let sum: f64 = v.iter().sum();
        let mean_abs = v.iter().map(|x| x.abs()).sum::<f64>() / n;
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        println!(
            "{name}: {}[{}]  sum {sum:.6e}  mean|x| {mean_abs:.6e}  checksum {:016x}",
            t.dtype,
            shape.join(", "),
            t.checksum()
        );
    }
    eprintln!(
        "loaded in {:.3} ms (read and verified in {:.3} ms), first run {:.3} ms ({:.3} ms from start)",
        loaded.as_secs_f64() * 1e3,
        read.as_secs_f64() * 1e3,
        first_run.as_secs_f64() * 1e3,
        start.elapsed().as_secs_f64() * 1e3
    );
    if let Exe::Cuda(e) = &exe {
        let s = e.stats();
        eprintln!(
            "{} GPU module(s), {} from cubins",
            s.modules, s.cubin_modules
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
