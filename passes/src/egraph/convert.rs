//! Between the dialect graph and the e-graph.

use std::collections::HashMap;

use egg::Id;
use kiln_dialect::graph::{Graph, Value, ValueInfo};
use kiln_dialect::ops::Op;
use kiln_dialect::{Dim, Shape};

use super::analysis::{KGraph, Meta, add_op};
use super::lang::{Head, KNode};

/// A graph loaded into an e-graph.
pub struct Loaded {
    pub egraph: KGraph,
    /// Each output's name and class.
    pub outputs: Vec<(String, Id)>,
    /// The graph's inputs and weights, in order (kept even when unused).
    pub sources: Vec<Id>,
    /// The name each value had in the graph, by class.
    pub names: HashMap<Id, String>,
    /// The class of each value of the loaded graph.
    pub values: HashMap<Value, Id>,
    /// For an e-graph made by [`with_mats`]: each class's class in the
    /// e-graph it was copied from.
    pub origin: HashMap<Id, Id>,
    pub graph_name: String,
}

/// Loads a verified graph. With `mats`, every use of an op's result goes
/// through a `mat` node (the starting point of fusion: one kernel per op).
/// `split` becomes one `slice` per piece.
pub fn load(g: &Graph, mats: bool) -> Loaded {
    load_into(g, mats, KGraph::new(Meta::default()))
}

/// [`load`] into a given (empty) e-graph, e.g. one with egg explanations
/// enabled.
pub fn load_into(g: &Graph, mats: bool, mut egraph: KGraph) -> Loaded {
    let mut class: HashMap<Value, Id> = HashMap::new();
    let mut names = HashMap::new();
    let mut sources = Vec::new();
    let order = g.topo_order().expect("a verified graph is acyclic");
    let use_of = |egraph: &mut KGraph, id: Id| -> Id {
        let is_op_result = egraph[id].nodes.iter().any(|n| match n.head {
            Head::Op(o) => !matches!(
                egraph.analysis.ops.get(o).op.class(),
                kiln_dialect::ops::OpClass::Source
            ),
            Head::Mat => false,
        });
        if mats && is_op_result {
            egraph.add(KNode::mat(id))
        } else {
            id
        }
    };
    for id in order {
        let node = g.node(id);
        let operands: Vec<Id> = g.operands(id).iter().map(|v| class[v]).collect();
        let args: Vec<Id> = operands.iter().map(|&a| use_of(&mut egraph, a)).collect();
        match &node.op {
            Op::Split { axis, sizes } => {
                let rank = g.value_type(g.operands(id)[0]).rank();
                let a =
                    kiln_dialect::shape::normalize_axis(*axis, rank).expect("verified axis") as i64;
                let mut start = 0;
                for (port, &n) in sizes.iter().enumerate() {
                    let slice = Op::Slice {
                        axes: vec![a],
                        starts: vec![start],
                        ends: vec![start + n],
                        steps: vec![],
                    };
                    start += n;
                    let c = add_op(&mut egraph, slice, args.clone())
                        .expect("split pieces are well typed");
                    class.insert(
                        Value {
                            node: id,
                            port: port as u32,
                        },
                        c,
                    );
                    names
                        .entry(c)
                        .or_insert_with(|| node.results[port].name.clone());
                }
            }
            op => {
                let r = &node.results[0];
                let (name, declared) = if let kiln_dialect::ops::OpClass::Source = op.class() {
                    (
                        if let Op::Input | Op::Weight = op {
                            Some(r.name.clone())
                        } else {
                            None
                        },
                        Some(r.ty.clone()),
                    )
                } else {
                    (None, None)
                };
                let oid = egraph.analysis.ops.intern(op.clone(), name, declared);
                let c = egraph.add(KNode::op(oid, args));
                if let Op::Input | Op::Weight = op {
                    sources.push(c);
                }
                class.insert(Value::of(id), c);
                names.entry(c).or_insert_with(|| r.name.clone());
            }
        }
    }
    let outputs = g
        .outputs()
        .iter()
        .map(|o| {
            let c = class[&o.value];
            (o.name.clone(), use_of(&mut egraph, c))
        })
        .collect();
    egraph.rebuild();
    let values = class
        .into_iter()
        .map(|(v, c)| (v, egraph.find(c)))
        .collect();
    Loaded {
        egraph,
        outputs,
        sources,
        names,
        values,
        origin: HashMap::new(),
        graph_name: g.name.clone(),
    }
}

/// Builds a dialect graph from chosen e-nodes (one per reachable class;
/// `mat` nodes are skipped: they mark kernel boundaries, not values).
/// Returns the graph and, for each created node, the class it computes.
pub fn to_graph(l: &Loaded, choice: &HashMap<Id, KNode>) -> (Graph, HashMap<Id, Value>) {
    let eg = &l.egraph;
    let mut g = Graph::new(&l.graph_name);
    let mut made: HashMap<Id, Value> = HashMap::new();
    let mut used_names: std::collections::HashSet<String> = std::collections::HashSet::new();
    let hints: HashMap<Id, String> = l
        .names
        .iter()
        .map(|(k, n)| (eg.find(*k), n.clone()))
        .collect();
    // The interface first, in its order.
    for &s in &l.sources {
        let s = eg.find(s);
        emit(eg, s, choice, &mut g, &mut made, &hints, &mut used_names);
    }
    for (_, c) in &l.outputs {
        emit(
            eg,
            eg.find(*c),
            choice,
            &mut g,
            &mut made,
            &hints,
            &mut used_names,
        );
    }
    for (name, c) in &l.outputs {
        let v = made[&unmat(eg, eg.find(*c), choice)];
        g.add_output(name, v);
    }
    (g, made)
}

/// The class a value really lives in: through `mat` nodes.
fn unmat(eg: &KGraph, c: Id, choice: &HashMap<Id, KNode>) -> Id {
    match choice.get(&c) {
        Some(KNode {
            head: Head::Mat,
            args,
        }) => unmat(eg, eg.find(args[0]), choice),
        _ => c,
    }
}

fn emit(
    eg: &KGraph,
    c: Id,
    choice: &HashMap<Id, KNode>,
    g: &mut Graph,
    made: &mut HashMap<Id, Value>,
    hints: &HashMap<Id, String>,
    used: &mut std::collections::HashSet<String>,
) -> Value {
    // iterative post-order, so deep graphs do not overflow the stack
    let mut stack = vec![(c, false)];
    while let Some((c, ready)) = stack.pop() {
        let c = eg.find(c);
        if made.contains_key(&c) {
            continue;
        }
        let node = choice
            .get(&c)
            .unwrap_or_else(|| panic!("no choice for class {c}"));
        if !ready {
            stack.push((c, true));
            for a in &node.args {
                let a = eg.find(*a);
                if !made.contains_key(&a) {
                    stack.push((a, false));
                }
            }
            continue;
        }
        match node.head {
            Head::Mat => {
                let v = made[&eg.find(node.args[0])];
                made.insert(c, v);
            }
            Head::Op(o) => {
                let e = eg.analysis.ops.get(o);
                let operands: Vec<Value> = node.args.iter().map(|a| made[&eg.find(*a)]).collect();
                let ty = eg[c].data.ty.clone();
                let name = match &e.name {
                    Some(n) => n.clone(),
                    None => match hints.get(&c) {
                        Some(n) if !used.contains(n) => n.clone(),
                        _ => g.fresh_name(),
                    },
                };
                let name = if used.contains(&name) {
                    g.fresh_name()
                } else {
                    name
                };
                used.insert(name.clone());
                let id = g.add_node(e.op.clone(), &operands, vec![ValueInfo { name, ty }]);
                made.insert(c, Value::of(id));
            }
        }
    }
    made[&c]
}

/// A fully static shape's dims as i64 (for rules that compute attributes).
pub fn static_dims(s: &Shape) -> Option<Vec<i64>> {
    s.dims()
        .iter()
        .map(|d| {
            if let Dim::Static(n) = d {
                Some(*n as i64)
            } else {
                None
            }
        })
        .collect()
}

/// The same e-graph with every use of an op's result through `mat`: the
/// start of kernel formation, keeping every alternative the rewrite phase
/// found. Each class gets the same nodes with their non-source operands
/// wrapped; nodes that only close a cycle (reachable from themselves) are
/// left out, since an acyclic node of the class always computes the same.
pub fn with_mats(l: &Loaded) -> Loaded {
    let old = &l.egraph;
    let mut eg = KGraph::new(Meta {
        ops: old.analysis.ops.clone(),
        made_by: HashMap::new(),
    });
    let mut map: HashMap<Id, Id> = HashMap::new();
    let is_source = |n: &KNode| match n.head {
        Head::Op(o) => matches!(
            old.analysis.ops.get(o).op.class(),
            kiln_dialect::ops::OpClass::Source
        ),
        Head::Mat => false,
    };
    let mut pending: Vec<(Id, KNode)> = old
        .classes()
        .flat_map(|c| c.nodes.iter().map(move |n| (c.id, n.clone())))
        .collect();
    pending.sort_by_key(|(c, _)| *c);
    loop {
        let before = pending.len();
        let mut rest = Vec::new();
        for (c, n) in pending {
            if !n.args.iter().all(|a| map.contains_key(&old.find(*a))) {
                rest.push((c, n));
                continue;
            }
            let args: Vec<Id> = n
                .args
                .iter()
                .map(|a| {
                    let a = old.find(*a);
                    let new = map[&a];
                    if old[a].nodes.iter().any(is_source) {
                        new
                    } else {
                        eg.add(KNode::mat(new))
                    }
                })
                .collect();
            copy_node(&mut eg, &mut map, c, n.head.clone(), args);
        }
        pending = rest;
        if pending.is_empty() || pending.len() == before {
            break;
        }
    }
    eg.rebuild();
    let outputs: Vec<(String, Id)> = l
        .outputs
        .iter()
        .map(|(n, c)| (n.clone(), eg.find(map[&old.find(*c)])))
        .collect();
    let outputs = outputs
        .into_iter()
        .map(|(n, c)| {
            let wrapped = if eg[c].nodes.iter().any(is_source_in(&eg)) {
                c
            } else {
                eg.add(KNode::mat(c))
            };
            (n, wrapped)
        })
        .collect();
    let sources = l
        .sources
        .iter()
        .map(|&s| eg.find(map[&old.find(s)]))
        .collect();
    let names = l
        .names
        .iter()
        .filter_map(|(k, v)| map.get(&old.find(*k)).map(|&n| (n, v.clone())))
        .collect();
    eg.rebuild();
    let values = l
        .values
        .iter()
        .filter_map(|(v, c)| map.get(&old.find(*c)).map(|n| (*v, eg.find(*n))))
        .collect();
    let origin = map.iter().map(|(a, b)| (eg.find(*b), *a)).collect();
    Loaded {
        egraph: eg,
        outputs,
        sources,
        names,
        values,
        origin,
        graph_name: l.graph_name.clone(),
    }
}

/// Adds the copy of an e-node of class `c` (its head, its arguments already
/// copied) to `eg`, in the class that earlier copies from `c` went to:
/// `map` sends each copied class to its class in `eg`.
pub(crate) fn copy_node(
    eg: &mut KGraph,
    map: &mut HashMap<Id, Id>,
    c: Id,
    head: Head,
    args: Vec<Id>,
) {
    let id = eg.add(KNode { head, args });
    match map.get(&c) {
        Some(&prev) => {
            eg.union(prev, id);
        }
        None => {
            map.insert(c, id);
        }
    }
}

fn is_source_in(eg: &KGraph) -> impl Fn(&KNode) -> bool + '_ {
    move |n| match n.head {
        Head::Op(o) => matches!(
            eg.analysis.ops.get(o).op.class(),
            kiln_dialect::ops::OpClass::Source
        ),
        Head::Mat => false,
    }
}
