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

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use egg::{CostFunction, Id, Language, Runner};
use kiln_dialect::graph::{Graph, Value};
use kiln_dialect::ops::OpClass;

use crate::cost::{Sizes, Target};
use crate::egraph::analysis::{KGraph, Meta};
use crate::egraph::convert::{self, Loaded};
use crate::egraph::lang::{Head, KNode};
use crate::extract;
use crate::plan::{self, Plan};
use crate::regions;
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
    saturate_except(egraph, rules, limits, &Arc::new(HashSet::new()))
}

/// [`saturate`], not searching the `frozen` classes.
pub fn saturate_except(
    egraph: KGraph,
    rules: &[Rule],
    limits: Limits,
    frozen: &Arc<HashSet<Id>>,
) -> (KGraph, SaturationReport) {
    let t = Instant::now();
    crate::stats::take_search_times();
    let runner = Runner::default()
        .with_egraph(egraph)
        .with_iter_limit(limits.iterations)
        .with_node_limit(limits.nodes)
        .with_time_limit(limits.time)
        .run(&rules::rewrites_except(rules, frozen));
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
    /// The values that leave an instance of a repeated block: kernel
    /// boundaries, where extraction prices each instance on its own.
    pub boundaries: Vec<Value>,
    /// Each value's e-node id as loaded (before any union).
    pub original: HashMap<Value, Id>,
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
    rewrite_with(g, limits, false)
}

/// [`rewrite`], optionally recording egg explanations (for `kiln explain`).
pub fn rewrite_with(g: &Graph, limits: Limits, explanations: bool) -> Rewritten {
    let egraph = if explanations {
        KGraph::new(Meta::default()).with_explanations_enabled()
    } else {
        KGraph::new(Meta::default())
    };
    let mut l = convert::load_into(g, false, egraph);
    // each value's own e-node (with explanations on, its id names the node
    // as loaded, which explanations start from)
    let original = l.values.clone();
    let reps = regions::repeated(g);
    // Instances after the first of each repeated block are not searched...
    let mut frozen: HashSet<Id> = HashSet::new();
    let mut first: HashSet<Id> = HashSet::new();
    for rep in &reps {
        for (i, inst) in rep.instances.iter().enumerate() {
            for &n in inst {
                for port in 0..g.node(n).results.len() as u32 {
                    if let Some(&c) = l.values.get(&Value { node: n, port }) {
                        if i == 0 {
                            first.insert(c)
                        } else {
                            frozen.insert(c)
                        };
                    }
                }
            }
        }
    }
    let outside: HashSet<Id> = l
        .values
        .iter()
        .filter(|(v, _)| {
            !reps
                .iter()
                .any(|r| r.instances.iter().any(|i| i.contains(&v.node)))
        })
        .map(|(_, c)| *c)
        .collect();
    frozen.retain(|c| !first.contains(c) && !outside.contains(c));
    let frozen = Arc::new(frozen);
    let eg = std::mem::replace(&mut l.egraph, KGraph::new(Meta::default()));
    let family: Vec<Rule> = rules::algebra::RULES
        .iter()
        .chain(rules::layout::RULES)
        .chain(rules::quant::RULES)
        .copied()
        .collect();
    let (mut eg, report) = saturate_except(eg, &family, limits, &frozen);
    // ...they get a copy of what the first one's saturation found.
    for rep in &reps {
        let local = instance_classes(&eg, &l, g, &rep.instances[0]);
        for inst in &rep.instances[1..] {
            let corr: HashMap<Id, Id> = regions::correspondence(g, &rep.instances[0], inst)
                .into_iter()
                .filter_map(|(a, b)| {
                    Some((eg.find(*l.values.get(&a)?), eg.find(*l.values.get(&b)?)))
                })
                .collect();
            regions::copy_instance(&mut eg, &corr, &local);
        }
    }
    for c in l.values.values_mut() {
        *c = eg.find(*c);
    }
    l.egraph = eg;
    let boundaries = reps
        .iter()
        .flat_map(|r| {
            r.instances
                .iter()
                .flat_map(|i| regions::boundary_values(g, i))
        })
        .collect();
    Rewritten {
        loaded: l,
        report,
        boundaries,
        original,
    }
}

/// Every class of an instance after saturation: its nodes' classes and the
/// classes rules made under them, up to the values it reads from outside.
fn instance_classes(
    eg: &KGraph,
    l: &Loaded,
    g: &Graph,
    nodes: &[kiln_dialect::NodeId],
) -> BTreeSet<Id> {
    // every class of an original node outside the instance: what it reads,
    // and what rules reached through that
    let inside: HashSet<kiln_dialect::NodeId> = nodes.iter().copied().collect();
    let outside: HashSet<Id> = l
        .values
        .iter()
        .filter(|(v, _)| !inside.contains(&v.node))
        .map(|(_, c)| eg.find(*c))
        .collect();
    let mut local = BTreeSet::new();
    let mut stack: Vec<Id> = nodes
        .iter()
        .flat_map(|&n| (0..g.node(n).results.len() as u32).map(move |port| Value { node: n, port }))
        .filter_map(|v| l.values.get(&v))
        .map(|c| eg.find(*c))
        .collect();
    while let Some(c) = stack.pop() {
        if outside.contains(&c) || !local.insert(c) {
            continue;
        }
        for n in &eg[c].nodes {
            stack.extend(n.args.iter().map(|a| eg.find(*a)));
        }
    }
    local
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
    let (plan, report, _) = kernels_full(r, target, symbols, limits);
    (plan, report)
}

/// [`kernels`], also returning the kernel e-graph the plan was extracted
/// from (for explanations).
pub fn kernels_full(
    r: &Rewritten,
    target: &'static Target,
    symbols: &HashMap<String, u64>,
    limits: Limits,
) -> (Plan, SaturationReport, Loaded) {
    let mut l = convert::with_mats(&r.loaded);
    let eg = std::mem::replace(&mut l.egraph, KGraph::new(Meta::default()));
    let (eg, report) = saturate(eg, rules::fusion::RULES, limits);
    l.origin = l.origin.iter().map(|(b, a)| (eg.find(*b), *a)).collect();
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
    // an instance's outputs are written to memory, and what reads them sees
    // only that write: each instance is priced (and chosen) on its own
    let sealed: HashSet<Id> = r
        .boundaries
        .iter()
        .filter_map(|v| l.values.get(v))
        .filter_map(|&c| l.egraph.lookup(KNode::mat(c)))
        .collect();
    let ex = extract::extract(&l.egraph, &sizes, &roots, &sealed);
    let plan = plan::build(&l, &ex, target);
    (plan, report, l)
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
