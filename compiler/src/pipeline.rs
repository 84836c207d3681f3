//! The compilation pipeline, top to bottom. Each stage can print its
//! output (`kiln compile --emit`), the verifier runs between stages, and
//! every stage is timed (`--timings`).
//!
//! ```text
//! .kiln ──parse──▶ AST ──lower──▶ graph ──verify──▶ cleanup (CSE, DCE) ──rewrites──▶ graph-opt ──kernels──▶ plan
//! .kir  ──parse─────────────────▶ graph ──verify──▶ ...
//! ```
//!
//! The optimizer, the kernel plan and the backends extend this file as they
//! land.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_dialect::Graph;
use kiln_dialect::verify::verify;
use kiln_passes::cleanup;
use kiln_passes::cost::Target;
use kiln_passes::optimize::{self, Limits, SaturationReport};
use kiln_passes::plan::Plan;
use std::collections::HashMap;

use crate::error::KilnError;
use crate::model;

/// A stage whose output can be printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// The syntax tree (model-language files only), every binary expression parenthesized.
    Ast,
    /// The graph as lowered from the source, in .kir text.
    Graph,
    /// The graph after the cleanup passes and the algebra, layout and quantization rules.
    GraphOpt,
    /// The kernel plan: one line per kernel (`kernel ...`), weight transforms as `transform ...`.
    Plan,
    /// The plan lowered to the kernel dialect: each kernel's element expression.
    Kernels,
    /// Each kernel as Cranelift IR for the host CPU.
    Clif,
    /// Each kernel as a PTX module for Hopper (`sm_90a`), as the CUDA
    /// executor loads it.
    Ptx,
}

impl Stage {
    /// The name used by `--emit` and for files in `--emit-dir`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Ast => "ast",
            Stage::Graph => "graph",
            Stage::GraphOpt => "graph-opt",
            Stage::Plan => "plan",
            Stage::Kernels => "kernels",
            Stage::Clif => "clif",
            Stage::Ptx => "ptx",
        }
    }

    fn file_name(self, model: &str) -> String {
        match self {
            Stage::Ast => format!("{model}.ast.kiln"),
            Stage::Graph => format!("{model}.kir"),
            Stage::GraphOpt => format!("{model}.opt.kir"),
            Stage::Plan => format!("{model}.plan"),
            Stage::Kernels => format!("{model}.kernels"),
            Stage::Clif => format!("{model}.clif"),
            Stage::Ptx => format!("{model}.ptx"),
        }
    }
}

/// What came out of each stage, and how long each took.
pub struct Compilation {
    pub emitted: Vec<(Stage, String)>,
    pub timings: Vec<(&'static str, Duration)>,
    /// The graph after algebra.
    pub graph: Graph,
    pub plan: Plan,
    pub algebra: SaturationReport,
    pub fusion: SaturationReport,
}

/// Options of a compilation.
#[derive(Clone, Debug)]
pub struct Options {
    /// The target the cost model and the plan are for.
    pub target: &'static Target,
    /// Sizes of symbolic dims the plan is priced at (a shape bucket).
    pub dims: HashMap<String, u64>,
    pub limits: Limits,
    /// Compile for exactly those sizes: the dims become static in the graph
    /// before anything else (`kiln_dialect::specialize`), so every kernel
    /// knows them; the compiled model then takes inputs of those sizes only.
    pub specialize: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            target: &kiln_passes::cost::SM90,
            dims: HashMap::new(),
            limits: Limits::default(),
            specialize: false,
        }
    }
}

/// `m` specialized to `dims` when `on` (see [`Options::specialize`]); a
/// size the model contradicts or a dim it does not have is a usage error.
pub fn specialized(
    mut m: model::Model,
    dims: &HashMap<String, u64>,
    on: bool,
) -> Result<model::Model, KilnError> {
    if on {
        m.graph = kiln_dialect::specialize::specialize(&m.graph, dims)
            .map_err(|e| KilnError::Usage(format!("--specialize: {e}")))?;
    }
    Ok(m)
}

/// Runs the pipeline on a model file, keeping the text of the `emit` stages.
pub fn compile(path: &Path, emit: &[Stage], opts: &Options) -> Result<Compilation, KilnError> {
    let t = Instant::now();
    let m = model::load(path)?;
    compile_model(m, t.elapsed(), emit, opts)
}

/// Runs the pipeline from a loaded model (`load_time`: how long loading took).
pub fn compile_model(
    m: model::Model,
    load_time: Duration,
    emit: &[Stage],
    opts: &Options,
) -> Result<Compilation, KilnError> {
    let m = specialized(m, &opts.dims, opts.specialize)?;
    let path = m.path.clone();
    let path = path.as_path();
    let mut timings = vec![("parse + lower + verify", load_time)];
    let mut emitted = Vec::new();
    if emit.contains(&Stage::Ast) {
        match &m.ast {
            Some(ast) => emitted.push((Stage::Ast, ast.to_string())),
            None => {
                return Err(KilnError::Usage(format!(
                    "--emit ast: {} is graph IR and has no syntax tree",
                    path.display()
                )));
            }
        }
    }
    if emit.contains(&Stage::Graph) {
        emitted.push((Stage::Graph, kiln_dialect::text::print(&m.graph)));
    }
    let mut g = m.graph;
    let t = Instant::now();
    cleanup::common_subexpressions(&mut g);
    cleanup::dead_code(&mut g);
    timings.push(("cleanup", t.elapsed()));
    if let Err(errs) = verify(&g) {
        let text = kiln_dialect::text::print(&g);
        return Err(KilnError::Internal {
            stage: "cleanup",
            message: format!(
                "the graph does not verify:\n{}",
                kiln_dialect::verify::render(&errs, "cleanup.kir", &text)
            ),
        });
    }
    let t = Instant::now();
    let rewritten = optimize::rewrite(&g, opts.limits);
    let algebra = rewritten.report.clone();
    let g = rewritten.graph();
    timings.push(("rewrites", t.elapsed()));
    if emit.contains(&Stage::GraphOpt) {
        emitted.push((Stage::GraphOpt, kiln_dialect::text::print(&g)));
    }
    let t = Instant::now();
    let (plan, fusion) = optimize::kernels(&rewritten, opts.target, &opts.dims, opts.limits);
    timings.push(("kernels", t.elapsed()));
    if emit.contains(&Stage::Plan) {
        emitted.push((Stage::Plan, plan.to_text()));
    }
    if emit.contains(&Stage::Kernels) || emit.contains(&Stage::Clif) || emit.contains(&Stage::Ptx) {
        let t = Instant::now();
        let mut program = kiln_passes::lower::lower_plan(&plan)?;
        kiln_passes::lower::lay_out_weights(&mut program, opts.target);
        timings.push(("lower to kernels", t.elapsed()));
        if emit.contains(&Stage::Kernels) {
            emitted.push((Stage::Kernels, program.to_string()));
        }
        if emit.contains(&Stage::Clif) {
            let t = Instant::now();
            let isa = kiln_runtime::cpu::jit::host_isa()?;
            let mut text = String::new();
            for l in &program.launches {
                let k = crate::codegen::clif::compile_kernel(&l.kernel, &*isa)?;
                text.push_str(&crate::codegen::clif::clif_text(&k));
                text.push('\n');
            }
            timings.push(("cranelift", t.elapsed()));
            emitted.push((Stage::Clif, text));
        }
        if emit.contains(&Stage::Ptx) {
            let t = Instant::now();
            // The target's architecture: `mma.sync` tiles for sm_80,
            // warpgroup instructions for sm_90 (and a CPU target's plan
            // shown as sm_90a PTX).
            let arch = match opts.target.name {
                "sm_80" => crate::codegen::ptx::PtxArch::Sm80,
                _ => crate::codegen::ptx::PtxArch::Sm90a,
            };
            let kernels = crate::codegen::ptx::compile_program(&program, arch)?;
            let mut text = String::new();
            for k in &kernels {
                text.push_str(&format!(
                    "// ---- {} ({:?}, {} threads per block)\n",
                    k.entry, k.grid, k.block
                ));
                text.push_str(&k.ptx);
                text.push('\n');
            }
            timings.push(("ptx", t.elapsed()));
            emitted.push((Stage::Ptx, text));
        }
    }
    Ok(Compilation {
        emitted,
        timings,
        graph: g,
        plan,
        algebra,
        fusion,
    })
}

/// Writes emitted stages to stdout (with a header per stage when there are
/// several) or to files in `dir`.
pub fn write_emitted(c: &Compilation, dir: Option<&Path>) -> Result<(), KilnError> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| KilnError::Io {
                path: dir.display().to_string(),
                source,
            })?;
            for (stage, text) in &c.emitted {
                let p = dir.join(stage.file_name(&c.graph.name));
                std::fs::write(&p, text).map_err(|source| KilnError::Io {
                    path: p.display().to_string(),
                    source,
                })?;
            }
        }
        None => {
            let many = c.emitted.len() > 1;
            for (stage, text) in &c.emitted {
                if many {
                    crate::outln!("// ---- {} ----", stage.name());
                }
                crate::out!("{text}");
            }
        }
    }
    Ok(())
}

/// The optimizer's report for a model (`kiln explain`).
pub fn explain(
    path: &Path,
    target: &'static Target,
    dims: &HashMap<String, u64>,
) -> Result<String, KilnError> {
    let m = model::load(path)?;
    let mut g = m.graph;
    cleanup::common_subexpressions(&mut g);
    cleanup::dead_code(&mut g);
    Ok(kiln_passes::explain::explain(
        &g,
        target,
        dims,
        Limits::default(),
    ))
}
