//! Repeated blocks: instances of one block (the layers of a transformer)
//! that made identical subgraphs. The rewrite phase saturates the first
//! instance only and copies what it found into the others; extraction
//! treats the values that leave an instance as kernel boundaries, so each
//! instance is priced on its own. Both keep compile time linear in the
//! number of layers.

use std::collections::{BTreeSet, HashMap, HashSet};

use egg::Id;
use kiln_dialect::graph::{Graph, NodeId, Value};
use kiln_dialect::ops::Op;

use crate::egraph::analysis::KGraph;
use crate::egraph::convert::copy_node;
use crate::egraph::lang::KNode;

/// Instances of one block whose subgraphs are identical up to weight names
/// and the values they read from outside; `instances[i][j]` is the `j`-th
/// node of instance `i`.
#[derive(Clone, Debug)]
pub struct Repeated {
    pub block: String,
    pub prefixes: Vec<String>,
    pub instances: Vec<Vec<NodeId>>,
}

/// The fewest nodes an instance needs for its block to be saturated once
/// and reused.
pub const MIN_NODES: usize = 16;

/// The repeated blocks of a graph (groups of two or more identical
/// instances, in the graph's order).
pub fn repeated(g: &Graph) -> Vec<Repeated> {
    let mut groups: Vec<(String, String, Repeated)> = Vec::new();
    for r in &g.regions {
        let nodes: Vec<NodeId> = r.nodes.iter().copied().filter(|n| g.contains(*n)).collect();
        let sig = signature(g, &nodes, &r.instance);
        match groups
            .iter_mut()
            .find(|(b, s, _)| *b == r.block && *s == sig)
        {
            Some((_, _, rep)) => {
                rep.prefixes.push(r.instance.clone());
                rep.instances.push(nodes);
            }
            None => groups.push((
                r.block.clone(),
                sig,
                Repeated {
                    block: r.block.clone(),
                    prefixes: vec![r.instance.clone()],
                    instances: vec![nodes],
                },
            )),
        }
    }
    // a small block (a batch norm) gains little from reuse, and its rewrites
    // often reach past its inputs (conv + batch-norm folding), which a copy
    // cannot carry over: only sizeable blocks are reused
    groups
        .into_iter()
        .map(|(_, _, r)| r)
        .filter(|r| r.instances.len() >= 2 && r.instances[0].len() >= MIN_NODES)
        .collect()
}

/// A text that is equal for two instances exactly when their subgraphs are:
/// ops with attributes, types, weight names without the instance prefix,
/// operands as positions inside the instance or as the order in which
/// outside values are first read.
fn signature(g: &Graph, nodes: &[NodeId], prefix: &str) -> String {
    let pos: HashMap<NodeId, usize> = nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut outside: HashMap<Value, usize> = HashMap::new();
    let mut s = String::new();
    for &n in nodes {
        let node = g.node(n);
        let name = if let Op::Weight = node.op {
            node.results[0]
                .name
                .strip_prefix(prefix)
                .unwrap_or(&node.results[0].name)
                .to_string()
        } else {
            String::new()
        };
        s.push_str(&format!("{:?}|{name}|", node.op));
        for r in &node.results {
            s.push_str(&format!("{}|", r.ty));
        }
        for v in g.operands(n) {
            match pos.get(&v.node) {
                Some(p) => s.push_str(&format!("n{p}:{} ", v.port)),
                None => {
                    let k = outside.len();
                    let k = *outside.entry(v).or_insert(k);
                    s.push_str(&format!("x{k} "));
                }
            }
        }
        s.push('\n');
    }
    s
}

/// Corresponding values of two instances of a repeated block: each result
/// of the `j`-th node, and each value read from outside in the order of
/// first reading.
pub fn correspondence(g: &Graph, a: &[NodeId], b: &[NodeId]) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for (&na, &nb) in a.iter().zip(b) {
        for port in 0..g.node(na).results.len() as u32 {
            out.push((Value { node: na, port }, Value { node: nb, port }));
        }
    }
    let (ea, eb) = (outside_reads(g, a), outside_reads(g, b));
    out.extend(ea.into_iter().zip(eb));
    out
}

/// The values from outside an instance that it reads, in first-read order.
pub fn outside_reads(g: &Graph, nodes: &[NodeId]) -> Vec<Value> {
    let inside: HashSet<NodeId> = nodes.iter().copied().collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for &n in nodes {
        for v in g.operands(n) {
            if !inside.contains(&v.node) && seen.insert(v) {
                out.push(v);
            }
        }
    }
    out
}

/// The values an instance writes that something outside it reads (its
/// outputs), including graph outputs.
pub fn boundary_values(g: &Graph, nodes: &[NodeId]) -> Vec<Value> {
    let inside: HashSet<NodeId> = nodes.iter().copied().collect();
    let outs: HashSet<Value> = g.outputs().iter().map(|o| o.value).collect();
    let mut vals = Vec::new();
    for &n in nodes {
        for port in 0..g.node(n).results.len() as u32 {
            let v = Value { node: n, port };
            if outs.contains(&v) || g.users(v).iter().any(|(u, _)| !inside.contains(u)) {
                vals.push(v);
            }
        }
    }
    vals
}

/// Copies into another instance of the e-graph everything saturation found
/// for the first one. `corr` maps each class of the first instance's nodes
/// and of the values it reads from outside to the other instance's
/// counterparts; `local` is every class of the first instance (original or
/// made by rules). Other classes are shared by all instances.
pub fn copy_instance(eg: &mut KGraph, corr: &HashMap<Id, Id>, local: &BTreeSet<Id>) {
    let mut map: HashMap<Id, Id> = corr
        .iter()
        .map(|(a, b)| (eg.find(*a), eg.find(*b)))
        .collect();
    let mut pending: Vec<(Id, KNode)> = local
        .iter()
        .flat_map(|&c| eg[c].nodes.iter().map(move |n| (c, n.clone())))
        .collect();
    loop {
        let before = pending.len();
        let mut rest = Vec::new();
        for (c, n) in pending {
            let c = eg.find(c);
            // a source of the first instance (its weights) has its counterpart
            // already: the corresponding class of the other instance
            if n.args.is_empty() && map.contains_key(&c) {
                continue;
            }
            let mut args = Vec::with_capacity(n.args.len());
            let mut ready = true;
            let mut skip = false;
            for a in &n.args {
                let a = eg.find(*a);
                match map.get(&a) {
                    Some(t) => args.push(*t),
                    None if local.contains(&a) => {
                        ready = false;
                        break;
                    }
                    // a value from outside that the instance does not read
                    // directly: a rule looked past the instance's inputs, and
                    // the other instance's counterpart is unknown, so the form
                    // is not copied (a constant made by a rule, shared by all
                    // instances, has no operands and is copied as it is)
                    None => {
                        skip = true;
                        break;
                    }
                }
            }
            if skip {
                continue;
            }
            if !ready {
                rest.push((c, n));
                continue;
            }
            copy_node(eg, &mut map, c, n.head.clone(), args);
        }
        pending = rest;
        if pending.is_empty() || pending.len() == before {
            break;
        }
    }
    eg.rebuild();
}
