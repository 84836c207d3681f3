//! `kiln explain`: what the optimizer did and why.
//!
//! For every kernel of the plan: the ops it fuses and their roles
//! (prologue, root, epilogue), what the same ops would cost as one kernel
//! each, and, for every op that is not in the source graph, the rewrites
//! that produced it (from egg's explanations). Then the rules with how
//! often each fired and how long its search took.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;

use egg::{Id, TreeExplanation};
use kiln_dialect::graph::{Graph, NodeId};
use kiln_dialect::ops::OpClass;

use crate::cost::{Sizes, Target, compute_seconds, kernel_seconds};
use crate::egraph::analysis::KGraph;
use crate::egraph::convert::Loaded;
use crate::egraph::lang::{Head, KNode};
use crate::optimize::{self, Limits, SaturationReport};
use crate::plan::{Kernel, Plan};

/// The report for a graph compiled for `target` at the given symbol sizes.
pub fn explain(
    g: &Graph,
    target: &'static Target,
    symbols: &HashMap<String, u64>,
    limits: Limits,
) -> String {
    let mut r = optimize::rewrite_with(g, limits, true);
    let (plan, fusion, kl) = optimize::kernels_full(&r, target, symbols, limits);
    let sizes = Sizes {
        target,
        symbols: symbols.clone(),
    };
    let mut out = String::new();
    let dims: Vec<String> = symbols.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    let _ = writeln!(
        out,
        "explain `{}` for {}{}",
        g.name,
        target.name,
        if dims.is_empty() {
            String::new()
        } else {
            format!(" ({})", dims.join(", "))
        }
    );
    let run: Vec<&Kernel> = plan.run_kernels().collect();
    let alone_total: f64 = run.iter().map(|k| alone(&plan, k, &sizes).1).sum();
    let alone_count: usize = run.iter().map(|k| alone(&plan, k, &sizes).0).sum();
    let _ = writeln!(
        out,
        "\nplan: {} kernel(s), {:.3} us estimated; one kernel per op would be {} kernel(s), {:.3} us",
        run.len(),
        plan.seconds * 1e6,
        alone_count,
        alone_total * 1e6
    );
    let transforms = plan.kernels.len() - run.len();
    if transforms > 0 {
        let _ = writeln!(
            out,
            "{transforms} weight transform(s) run when the weights are bound, never at run time"
        );
    }
    // the source graph's e-node for each class of the rewrite e-graph
    let source_node: HashMap<Id, Id> = r
        .original
        .values()
        .map(|&id| (r.loaded.egraph.find(id), id))
        .collect();
    // bind-time transforms, in one list
    let bind: Vec<String> = plan
        .kernels
        .iter()
        .filter(|k| k.bind_time)
        .map(|k| {
            let ops: Vec<&str> = k
                .nodes
                .iter()
                .map(|n| plan.graph.node(*n).op.mnemonic())
                .collect();
            format!("%{} = {}", plan.graph.value_name(k.output), ops.join("+"))
        })
        .collect();
    if !bind.is_empty() {
        let _ = writeln!(out, "weight transforms: {}", bind.join(", "));
    }
    let lines = plan.to_text();
    for (i, k) in plan
        .kernels
        .iter()
        .enumerate()
        .filter(|(_, k)| !k.bind_time)
    {
        let line = lines
            .lines()
            .find(|l| l.starts_with(&format!("kernel k{i} ")))
            .unwrap_or_default();
        let _ = writeln!(out, "\n{line}");
        let roles = roles(&plan.graph, k);
        let (n, t) = alone(&plan, k, &sizes);
        let _ = writeln!(out, "  fuses: {}", roles.join(", "));
        if n > 1 {
            let _ = writeln!(
                out,
                "  the same ops as {n} kernel(s) would take {:.3} us; fused: {:.3} us",
                t * 1e6,
                k.seconds * 1e6
            );
        }
        for &node in &k.nodes {
            let Some(why) = rewrites_of(&mut r, &kl, &plan, node, &source_node) else {
                continue;
            };
            let _ = writeln!(
                out,
                "  %{} = {}: {}",
                plan.graph.value_name(kiln_dialect::Value::of(node)),
                plan.graph.node(node).op.mnemonic(),
                why
            );
        }
    }
    report_rules(
        &mut out,
        "rewrite phase (algebra, layout, quantization)",
        &r.report,
    );
    report_rules(&mut out, "kernel phase (fusion)", &fusion);
    out
}

fn report_rules(out: &mut String, title: &str, r: &SaturationReport) {
    let _ = writeln!(
        out,
        "\n{title}: {} iteration(s), {} e-nodes, {} e-classes, {:.3} ms, stopped: {}",
        r.iterations,
        r.nodes,
        r.classes,
        r.time.as_secs_f64() * 1e3,
        r.stop_reason
    );
    let _ = writeln!(out, "  {:<28} {:>6} {:>12}", "rule", "fired", "search ms");
    for (name, n, t) in &r.rules {
        let _ = writeln!(out, "  {name:<28} {n:>6} {:>12.3}", t.as_secs_f64() * 1e3);
    }
}

/// The ops of a kernel with their roles: ops before the root (the one op
/// that is not elementwise, if any) are its prologue, ops after it its
/// epilogue.
fn roles(g: &Graph, k: &Kernel) -> Vec<String> {
    let root = k.nodes.iter().copied().find(|n| {
        !matches!(
            g.node(*n).op.class(),
            OpClass::Elementwise | OpClass::Movement | OpClass::Quant | OpClass::Source
        )
    });
    let Some(root) = root else {
        return k
            .nodes
            .iter()
            .map(|n| g.node(*n).op.mnemonic().to_string())
            .collect();
    };
    // ops the root reads, through the kernel
    let mut before = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(n) = stack.pop() {
        for v in g.operands(n) {
            if k.nodes.contains(&v.node) && before.insert(v.node) {
                stack.push(v.node);
            }
        }
    }
    k.nodes
        .iter()
        .map(|&n| {
            let m = g.node(n).op.mnemonic();
            if n == root {
                format!("{m} (root)")
            } else if before.contains(&n) {
                format!("{m} (prologue)")
            } else {
                format!("{m} (epilogue)")
            }
        })
        .collect()
}

/// The kernels and seconds the kernel's ops would take each as its own
/// kernel (reading its operands and writing its result). Data movement
/// that only renames a view (reshape, squeeze, unsqueeze) costs nothing.
fn alone(plan: &Plan, k: &Kernel, sizes: &Sizes) -> (usize, f64) {
    let g = &plan.graph;
    let mut count = 0;
    let mut secs = 0.0;
    for &n in &k.nodes {
        let node = g.node(n);
        if let kiln_dialect::Op::Reshape { .. }
        | kiln_dialect::Op::Squeeze { .. }
        | kiln_dialect::Op::Unsqueeze { .. } = node.op
        {
            continue;
        }
        let ins: Vec<&kiln_dialect::TensorType> =
            g.operands(n).iter().map(|v| g.value_type(*v)).collect();
        let out = &node.results[0].ty;
        let bytes: f64 = ins.iter().map(|t| sizes.bytes(t)).sum::<f64>() + sizes.bytes(out);
        secs += kernel_seconds(
            sizes.target,
            bytes,
            compute_seconds(sizes, &node.op, &ins, out),
        );
        count += 1;
    }
    (count, secs)
}

/// Why an op of the plan exists, when it is not in the source graph: the
/// rules on egg's explanation of its equality with the source's node.
fn rewrites_of(
    r: &mut optimize::Rewritten,
    kl: &Loaded,
    plan: &Plan,
    node: NodeId,
    source_node: &HashMap<Id, Id>,
) -> Option<String> {
    let (b_class, b_node) = plan.made_from.get(&node)?;
    // classes of the kernel e-graph map back to the rewrite e-graph's, a
    // `mat` operand to the class of its value
    let back = |b: Id| -> Option<Id> {
        let b = kl.egraph.find(b);
        let inner = kl.egraph[b].nodes.iter().find_map(|n| {
            if let Head::Mat = n.head {
                Some(kl.egraph.find(n.args[0]))
            } else {
                None
            }
        });
        let b = inner.unwrap_or(b);
        kl.origin.get(&b).map(|a| r.loaded.egraph.find(*a))
    };
    let a_class = back(*b_class)?;
    let args: Option<Vec<Id>> = b_node.args.iter().map(|a| back(*a)).collect();
    let a_node = KNode {
        head: b_node.head.clone(),
        args: args?,
    };
    if let Head::Mat = a_node.head {
        return None;
    }
    let source = *source_node.get(&a_class)?;
    let eg: &mut KGraph = &mut r.loaded.egraph;
    if eg.id_to_node(source) == &a_node {
        return None;
    }
    let made = eg.add_uncanonical(a_node);
    if eg.find(made) != eg.find(source) {
        return None;
    }
    let ex = eg.explain_id_equivalence(source, made);
    let mut rules = Vec::new();
    collect_rules(&ex.explanation_trees, &mut rules);
    if rules.is_empty() {
        return None;
    }
    rules.dedup();
    Some(format!("from the source by {}", rules.join(", then ")))
}

fn collect_rules(t: &TreeExplanation<KNode>, out: &mut Vec<String>) {
    for term in t {
        for rule in [&term.forward_rule, &term.backward_rule]
            .into_iter()
            .flatten()
        {
            let s = rule.to_string();
            if !out.contains(&s) {
                out.push(s);
            }
        }
        for child in &term.child_proofs {
            collect_rules(child, out);
        }
    }
}
