//! `kiln compile --autotune`: each run-time kernel of a GPU program whose
//! kind has tuning choices is compiled under every candidate
//! [`PtxOptions`] of its kind (the tensor-core tilings, split-K and
//! tensor copies, the row kernels' occupancy and weight handling, the GEMV's tiling, the int4
//! kernel's splits), each distinct module is timed alone on the device at
//! the sizes given with `--dim`, and the fastest is kept. The artifact
//! holds the chosen modules (and their cubins) and records each choice in
//! its `autotune` section (`key` `ptx-options`, `value` the candidate's
//! label), so loading it never tunes again.
//!
//! A candidate is timed as a program of that one launch
//! ([`Program::of_kernel`], random values at the bound sizes), with the
//! executor's timed replays ([`CudaExecutable::time_launches`]): the
//! median of [`REPEATS`] repeats of [`BATCH`] launches. A candidate that
//! fails to compile or run is left out and reported (the default's
//! failure is an error). Kernels whose
//! sizes are not all bound, bind-time launches and kernels with one
//! candidate keep the default options. On the PTX interpreter
//! ([`TuneOn::Sim`], for tests) a candidate's time is the interpreter's
//! wall time for one run, which says nothing about a GPU: it checks the
//! mechanism, not the choice.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use kiln_dialect::DType;
use kiln_dialect::kernel::{Launch, Program};
use kiln_runtime::HostTensor;
use kiln_runtime::artifact::AutotuneChoice;
use kiln_runtime::cuda::{CudaExecutable, SimExecutable};
use rand::{Rng, SeedableRng};

use crate::codegen::ptx::{
    GemvTiling, MmaSplits, PtxArch, PtxKernel, PtxOptions, QmmaBalance, RowTuning,
    compile_kernel_with, parse_mma_tiling,
};
use crate::error::KilnError;

/// Timed repeats per candidate (the median is kept).
pub const REPEATS: usize = 9;
/// Launches per timed repeat.
pub const BATCH: usize = 20;

/// Where the candidates are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TuneOn {
    /// The machine's first NVIDIA GPU.
    Cuda,
    /// The PTX interpreter (the mechanism only; see the module's
    /// documentation).
    Sim,
}

/// One candidate's figure.
#[derive(Clone, Debug)]
pub struct Trial {
    pub label: String,
    /// The median time of one launch.
    pub time: Duration,
}

/// What tuning one kernel found.
#[derive(Clone, Debug)]
pub struct KernelTuning {
    /// The launch's index in the program and its kernel's name.
    pub launch: usize,
    pub kernel: String,
    /// Every distinct candidate, in the order tried (the default first).
    pub trials: Vec<Trial>,
    /// The label of the fastest.
    pub chosen: String,
    /// Candidates left out: their labels and why (a compile or launch
    /// error; the default is never left out).
    pub failed: Vec<(String, String)>,
}

/// A tuned program's modules (one per launch, as
/// [`crate::codegen::ptx::compile_program`] gives them), the choices for
/// the artifact, and what each tuned kernel measured.
#[derive(Clone, Debug)]
pub struct Tuned {
    pub kernels: Vec<PtxKernel>,
    pub choices: Vec<AutotuneChoice>,
    pub report: Vec<KernelTuning>,
}

/// The label of the untouched options.
pub const DEFAULT: &str = "default";

/// The candidates for a kernel compiled to entry `entry` (its kind is the
/// prefix), each `base` with one choice changed; the default first.
pub fn candidates(entry: &str, arch: PtxArch, base: &PtxOptions) -> Vec<(String, PtxOptions)> {
    let mut out = vec![(DEFAULT.to_string(), *base)];
    let kind = entry.split('_').next().unwrap_or_default();
    match kind {
        "mma" | "imma" | "f8mma" => {
            let names: &[&str] = match arch {
                PtxArch::Sm90a => &["wide-wg", "narrow-wg", "narrow-wg2", "medium", "large"],
                PtxArch::Sm80 => &["medium", "large"],
            };
            // Tensor copies, and a copying warp beside the warp groups,
            // feed warpgroup tiles only (sm_90a): (label, tma, specialized).
            let feeds: &[(&str, bool, bool)] = match arch {
                PtxArch::Sm90a => &[
                    ("", false, false),
                    (",tma", true, false),
                    (",ws", true, true),
                ],
                PtxArch::Sm80 => &[("", false, false)],
            };
            for split in [None, Some(MmaSplits::Auto)] {
                for &(feed, tma, ws) in feeds {
                    for &name in names {
                        let mut o = *base;
                        o.mma_tiling = parse_mma_tiling(name);
                        o.mma_splits = split;
                        o.mma_tma = tma;
                        o.mma_specialize = ws;
                        let mut label = format!("tiling={name}");
                        if split.is_some() {
                            label.push_str(",splits=auto");
                        }
                        label.push_str(feed);
                        out.push((label, o));
                    }
                }
            }
        }
        "row" => {
            for spec in ["0", "2", "3", "4", "2,reload", "3,reload", "4,reload"] {
                let mut o = *base;
                o.rows = RowTuning::parse(spec);
                out.push((format!("rows={spec}"), o));
            }
        }
        "gemv" => {
            for spec in ["16,8", "32,8", "64,8", "32,16", "64,4,stage", "32,16,stage"] {
                let mut o = *base;
                o.gemv = GemvTiling::parse(spec);
                out.push((format!("gemv={spec}"), o));
            }
        }
        "qmma" => {
            for s in ["1", "auto"] {
                let mut o = *base;
                o.qmma_splits = QmmaBalance::parse(s);
                out.push((format!("qmma-splits={s}"), o));
            }
        }
        _ => {}
    }
    out
}

/// Tunes every run-time launch of `program` for `arch` at the sizes
/// `dims` (see the module's documentation).
pub fn tune(
    program: &Program,
    arch: PtxArch,
    base: &PtxOptions,
    dims: &BTreeMap<String, usize>,
    on: TuneOn,
) -> Result<Tuned, KilnError> {
    tune_among(program, arch, base, dims, on, candidates)
}

/// [`tune`] with the candidates of each kernel from `cands` (called as
/// [`candidates`] is: the entry, the arch and the base options; the default
/// first).
pub fn tune_among(
    program: &Program,
    arch: PtxArch,
    base: &PtxOptions,
    dims: &BTreeMap<String, usize>,
    on: TuneOn,
    cands: impl Fn(&str, PtxArch, &PtxOptions) -> Vec<(String, PtxOptions)>,
) -> Result<Tuned, KilnError> {
    let bindings: HashMap<String, usize> = dims.iter().map(|(k, &v)| (k.clone(), v)).collect();
    let mut kernels = Vec::with_capacity(program.launches.len());
    let mut choices = Vec::new();
    let mut report = Vec::new();
    for (i, launch) in program.launches.iter().enumerate() {
        let default = compile_kernel_with(&launch.kernel, arch, base)?;
        let sized = launch
            .kernel
            .inputs
            .iter()
            .chain([&launch.kernel.output])
            .all(|b| b.shape.resolve(&bindings).is_ok());
        let cands = cands(&default.entry, arch, base);
        if launch.bind_time || !sized || cands.len() < 2 {
            kernels.push(default);
            continue;
        }
        // Each distinct module once (a candidate that does not apply to
        // this kernel compiles to the default's PTX).
        let mut distinct: Vec<(String, PtxKernel)> = vec![(DEFAULT.to_string(), default)];
        let mut failed = Vec::new();
        for (label, opts) in cands.into_iter().skip(1) {
            // A candidate that cannot be compiled (or below, run) is left
            // out and reported; the default must work.
            let pk = match compile_kernel_with(&launch.kernel, arch, &opts) {
                Ok(pk) => pk,
                Err(e) => {
                    failed.push((label, e.to_string()));
                    continue;
                }
            };
            if distinct
                .iter()
                .all(|(_, d)| d.ptx != pk.ptx || d.grid != pk.grid)
            {
                distinct.push((label, pk));
            }
        }
        if distinct.len() < 2 {
            kernels.extend(distinct.into_iter().map(|(_, pk)| pk));
            continue;
        }
        let inputs = random_inputs(launch, &bindings, i as u64)?;
        let mut trials = Vec::with_capacity(distinct.len());
        let mut ran = Vec::with_capacity(distinct.len());
        for (j, (label, pk)) in distinct.iter().enumerate() {
            match time_one(launch, pk, &inputs, on) {
                Ok(time) => {
                    trials.push(Trial {
                        label: label.clone(),
                        time,
                    });
                    ran.push(j);
                }
                Err(e) if j > 0 => failed.push((label.clone(), e.to_string())),
                Err(e) => return Err(e),
            }
        }
        let best = (0..trials.len())
            .min_by_key(|&j| trials[j].time)
            .unwrap_or_default();
        let chosen = trials[best].label.clone();
        let best = ran[best];
        choices.push(AutotuneChoice {
            kernel: launch.kernel.name.clone(),
            key: "ptx-options".into(),
            value: chosen.clone(),
        });
        report.push(KernelTuning {
            launch: i,
            kernel: launch.kernel.name.clone(),
            trials,
            chosen,
            failed,
        });
        kernels.push(distinct.swap_remove(best).1);
    }
    Ok(Tuned {
        kernels,
        choices,
        report,
    })
}

/// Random inputs for `launch`'s kernel at `bindings` (seeded per launch):
/// floats uniform in [-1, 1), 8-bit floats in [-3, 3), integers in
/// [-8, 8) (codes of any width in range), booleans either way.
fn random_inputs(
    launch: &Launch,
    bindings: &HashMap<String, usize>,
    seed: u64,
) -> Result<HashMap<String, HostTensor>, KilnError> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x6b69_6c6e ^ seed);
    let mut out = HashMap::new();
    for (i, b) in launch.kernel.inputs.iter().enumerate() {
        let shape = b.shape.resolve(bindings).map_err(|s| {
            KilnError::Usage(format!("autotune: dim `{s}` of `{}` is not bound", b.name))
        })?;
        let n: usize = shape.iter().product();
        let vals: Vec<f64> = (0..n)
            .map(|_| match b.dtype {
                DType::F8E4M3 | DType::F8E5M2 => rng.random_range(-3.0..3.0),
                d if d.is_float() => rng.random_range(-1.0..1.0),
                DType::Bool => f64::from(u8::from(rng.random::<bool>())),
                _ => f64::from(rng.random_range(-8i32..8)),
            })
            .collect();
        out.insert(
            format!("in{i}"),
            HostTensor::from_values(b.dtype, &shape, &vals),
        );
    }
    Ok(out)
}

/// The median time of one launch of `pk` as `launch`'s kernel.
fn time_one(
    launch: &Launch,
    pk: &PtxKernel,
    inputs: &HashMap<String, HostTensor>,
    on: TuneOn,
) -> Result<Duration, KilnError> {
    let program = Program::of_kernel(&launch.kernel);
    match on {
        TuneOn::Cuda => {
            let exe = CudaExecutable::new(program, vec![pk.clone()])?;
            let mut times = exe.time_launches(inputs, REPEATS, BATCH)?;
            times.sort();
            Ok(times[times.len() / 2] / BATCH as u32)
        }
        TuneOn::Sim => {
            let exe = SimExecutable::new(program, vec![pk.clone()])?;
            let start = Instant::now();
            exe.run(inputs)?;
            Ok(start.elapsed())
        }
    }
}

#[cfg(test)]
mod tests {
    use kiln_dialect::kernel::{Body, Buffer, Expr, Kernel, Ty, Var};
    use kiln_dialect::{DType, Dim, Shape};

    use super::*;

    /// A candidate that cannot run (here a tiling of sixteen stages that
    /// asks for more shared memory than a block may have, which the
    /// interpreter refuses as the driver does) is left out and reported
    /// with why; the others are timed, and the kept module is the chosen
    /// one's.
    #[test]
    fn failing_candidates_are_left_out_and_reported() {
        let buf = |name: &str, dims: [u64; 2]| Buffer {
            name: name.into(),
            dtype: DType::BF16,
            shape: Shape(dims.iter().map(|&d| Dim::Static(d)).collect()),
        };
        let (m, n, k) = (Var(0), Var(1), Var(2));
        let load = |input: usize, index: Vec<Expr>| Expr::Load {
            input,
            index,
            guard: None,
        };
        let kernel = Kernel {
            name: "k0".into(),
            inputs: vec![buf("a", [40, 64]), buf("b", [64, 72])],
            output: buf("c", [40, 72]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Contract {
                k,
                extent: Expr::Int(64),
                a: load(0, vec![Expr::Var(m), Expr::Var(k)]),
                b: load(1, vec![Expr::Var(k), Expr::Var(n)]),
                epilogue: Expr::Acc,
            },
        };
        let program = Program::of_kernel(&kernel);
        let base = PtxOptions::default();
        let with = |tiling: &str| PtxOptions {
            mma_tiling: parse_mma_tiling(tiling),
            ..base
        };
        let cands = |_: &str, _: PtxArch, b: &PtxOptions| {
            vec![
                (DEFAULT.to_string(), *b),
                ("too-deep".to_string(), with("128x128x64,64x32,16,1")),
                ("tiling=medium".to_string(), with("medium")),
            ]
        };
        let deep =
            compile_kernel_with(&kernel, PtxArch::Sm90a, &with("128x128x64,64x32,16,1")).unwrap();
        assert!(deep.shared_bytes > 227 * 1024, "{}", deep.shared_bytes);
        let dims = BTreeMap::new();
        let tuned = tune_among(&program, PtxArch::Sm90a, &base, &dims, TuneOn::Sim, cands).unwrap();
        let r = &tuned.report[0];
        assert_eq!(r.failed.len(), 1, "{:?}", r.failed);
        assert_eq!(r.failed[0].0, "too-deep");
        assert!(r.failed[0].1.contains("shared memory"), "{}", r.failed[0].1);
        let timed: Vec<&str> = r.trials.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(timed, [DEFAULT, "tiling=medium"]);
        assert_eq!(tuned.choices.len(), 1);
        assert_eq!(tuned.choices[0].value, r.chosen);
        let opts = if r.chosen == DEFAULT {
            base
        } else {
            with("medium")
        };
        let want = compile_kernel_with(&kernel, PtxArch::Sm90a, &opts).unwrap();
        assert_eq!(tuned.kernels[0].ptx, want.ptx, "not the chosen module");
    }
}
