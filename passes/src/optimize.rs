//! The optimizer, phase by phase.
//!
//! 1. **Rewrites** ([`rewrite`]): saturate the plain graph with the algebra
//!    and layout rules. Nothing is chosen yet.
//! 2. **Kernels** ([`kernels`]): copy that e-graph with a `mat` on every use
//!    (one kernel per op), saturate with the fusion rules, and extract under
//!    the target's roofline cost with kernel kinds ([`crate::extract`]):
//!    fusion, layouts and the algebraic forms are chosen together, in one
//!    e-graph, by one cost model. The result is a [`Plan`].
//!
//! [`optimize`] runs both.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use egg::{CostFunction, Id, Language, Runner};
use kiln_dialect::graph::Graph;
use kiln_dialect::ops::OpClass;

use crate::cost::{Sizes, Target};
use crate::egraph::analysis::{KGraph, Meta};
use crate::egraph::convert::{self, Loaded};
use crate::egraph::lang::{Head, KNode};
use crate::extract;
use crate::plan::{self, Plan};
use crate::rules::{self, Rule};

/// Bounds on equality saturation.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub iterations: usize,
    pub nodes: usize,
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            iterations: 16,
            nodes: 200_000,
            time: Duration::from_secs(2),
        }
    }
}

/// What one saturation did.
#[derive(Clone, Debug, Default)]
pub struct SaturationReport {
    pub iterations: usize,
    pub nodes: usize,
    pub classes: usize,
    pub stop_reason: String,
    /// Per rule: times it fired (new unions) and search time.
    pub rules: Vec<(String, usize, Duration)>,
    pub time: Duration,
}

/// Saturates an e-graph with a rule family within the limits.
pub fn saturate(egraph: KGraph, rules: &[Rule], limits: Limits) -> (KGraph, SaturationReport) {
    let t = Instant::now();
    crate::stats::take_search_times();
    let runner = Runner::default()
        .with_egraph(egraph)
        .with_iter_limit(limits.iterations)
        .with_node_limit(limits.nodes)
        .with_time_limit(limits.time)
        .run(&rules::rewrites(rules));
    let mut fired: HashMap<String, usize> = HashMap::new();
    for it in &runner.iterations {
        for (name, n) in &it.applied {
            *fired.entry(name.to_string()).or_default() += n;
        }
    }
    let times = crate::stats::take_search_times();
    let report = SaturationReport {
        iterations: runner.iterations.len(),
        nodes: runner.egraph.total_number_of_nodes(),
        classes: runner.egraph.number_of_classes(),
        stop_reason: match &runner.stop_reason {
            Some(egg::StopReason::Saturated) => "saturated".into(),
            Some(egg::StopReason::IterationLimit(n)) => format!("iteration limit ({n})"),
            Some(egg::StopReason::NodeLimit(n)) => format!("node limit ({n})"),
            Some(egg::StopReason::TimeLimit(s)) => format!("time limit ({s:.2} s)"),
            Some(egg::StopReason::Other(s)) => s.clone(),
            None => "not run".into(),
        },
        rules: rules
            .iter()
            .map(|r| {
                (
                    r.name.to_string(),
                    fired.get(r.name).copied().unwrap_or(0),
                    times.get(r.name).copied().unwrap_or_default(),
                )
            })
            .collect(),
        time: t.elapsed(),
    };
    (runner.egraph, report)
}

/// The algebra phase's cost: a count of ops weighted by kind; weight-only
/// values and sources cost nothing (they exist before the model runs).
struct OpCount<'a> {
    eg: &'a KGraph,
}

impl CostFunction<KNode> for OpCount<'_> {
    type Cost = f64;

    fn cost<C: FnMut(Id) -> f64>(&mut self, enode: &KNode, mut costs: C) -> f64 {
        let weight_only = self
            .eg
            .lookup(enode.clone())
            .is_some_and(|c| self.eg[c].data.weight_only);
        let own = if weight_only {
            0.0
        } else {
            match enode.head {
                Head::Mat => 0.0,
                Head::Op(id) => match self.eg.analysis.ops.get(id).op.class() {
                    OpClass::Source => 0.0,
                    OpClass::Movement => 1.0,
                    OpClass::Elementwise | OpClass::Quant => 2.0,
                    OpClass::Reduce | OpClass::RowNorm | OpClass::ChannelNorm | OpClass::Pool => {
                        4.0
                    }
                    OpClass::Matmul | OpClass::Conv | OpClass::Attention => 8.0,
                },
            }
        };
        enode.fold(own, |acc, c| acc + costs(c))
    }
}

/// Extracts the cheapest term of every output (and source) under the
/// algebra cost, as a choice of one node per class. Classes are visited in
/// id order (operands were added first), so a pass settles almost all of
/// the graph and the fixed point comes in a few passes.
fn extract_simple(l: &Loaded) -> HashMap<Id, KNode> {
    let eg = &l.egraph;
    let mut cf = OpCount { eg };
    let mut ids: Vec<Id> = eg.classes().map(|c| c.id).collect();
    ids.sort();
    let mut best: HashMap<Id, (f64, KNode)> = HashMap::new();
    loop {
        let mut changed = false;
        for &c in &ids {
            for n in &eg[c].nodes {
                if !n.args.iter().all(|a| best.contains_key(&eg.find(*a))) {
                    continue;
                }
                let cost = cf.cost(n, |a| best[&eg.find(a)].0);
                if best.get(&c).is_none_or(|(b, _)| cost < *b) {
                    best.insert(c, (cost, n.clone()));
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut choice = HashMap::new();
    let mut stack: Vec<Id> = l
        .outputs
        .iter()
        .map(|(_, c)| *c)
        .chain(l.sources.iter().copied())
        .collect();
    while let Some(c) = stack.pop() {
        let c = eg.find(c);
        if choice.contains_key(&c) {
            continue;
        }
        let node = best[&c].1.clone();
        stack.extend(node.args.iter().copied());
        choice.insert(c, node);
    }
    choice
}

/// The result of the rewrite phase: an e-graph holding the source graph
/// and every equal form the algebra and layout rules found.
pub struct Rewritten {
    pub loaded: Loaded,
    pub report: SaturationReport,
}

impl Rewritten {
    /// The cheapest graph of the e-graph under a simple op count (for
    /// `--emit graph-opt`; kernel formation keeps all the alternatives).
    pub fn graph(&self) -> Graph {
        convert::to_graph(&self.loaded, &extract_simple(&self.loaded)).0
    }
}

/// Phase 1: rewrites. Saturates the plain graph (no kernel boundaries yet)
/// with the algebra, layout and quantization rules.
pub fn rewrite(g: &Graph, limits: Limits) -> Rewritten {
    let mut l = convert::load(g, false);
    let eg = std::mem::replace(&mut l.egraph, KGraph::new(Meta::default()));
    let family: Vec<Rule> = rules::algebra::RULES
        .iter()
        .chain(rules::layout::RULES)
        .copied()
        .collect();
    let (eg, report) = saturate(eg, &family, limits);
    l.egraph = eg;
    Rewritten { loaded: l, report }
}

/// Phase 2: kernels. Every use goes through `mat`, the fusion rules offer
/// the fused alternatives, and extraction under the target's cost model
/// chooses among everything the two phases found.
pub fn kernels(
    r: &Rewritten,
    target: &'static Target,
    symbols: &HashMap<String, u64>,
    limits: Limits,
) -> (Plan, SaturationReport) {
    let mut l = convert::with_mats(&r.loaded);
    let eg = std::mem::replace(&mut l.egraph, KGraph::new(Meta::default()));
    let (eg, report) = saturate(eg, rules::fusion::RULES, limits);
    l.egraph = eg;
    let sizes = Sizes {
        target,
        symbols: symbols.clone(),
    };
    let roots: Vec<Id> = l
        .outputs
        .iter()
        .map(|(_, c)| *c)
        .chain(l.sources.iter().copied())
        .collect();
    let ex = extract::extract(&l.egraph, &sizes, &roots);
    (plan::build(&l, &ex, target), report)
}

/// Everything the optimizer did.
#[derive(Debug)]
pub struct Optimized {
    /// The cheapest rewritten graph by op count (for display).
    pub graph: Graph,
    pub plan: Plan,
    pub rewrite: SaturationReport,
    pub fusion: SaturationReport,
}

/// Runs the whole optimizer for a target.
pub fn optimize(
    g: &Graph,
    target: &'static Target,
    symbols: &HashMap<String, u64>,
    limits: Limits,
) -> Optimized {
    let r = rewrite(g, limits);
    let (plan, fusion) = kernels(&r, target, symbols, limits);
    Optimized {
        graph: r.graph(),
        plan,
        rewrite: r.report,
        fusion,
    }
}
