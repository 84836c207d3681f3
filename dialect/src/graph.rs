//! The graph: ops as nodes of a petgraph `StableDiGraph`, operands as edges.
//!
//! A node holds an op and its results (each a named, typed value). An edge
//! runs from a producer to a consumer and says which result feeds which
//! operand slot, so operand order lives on the edges. Inputs and weights are
//! nodes too (`Op::Input`, `Op::Weight`), named by their result; outputs are
//! named references to values.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use petgraph::Direction;
use petgraph::stable_graph::{EdgeIndex, NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;

use crate::infer::{TypeError, infer};
use crate::ops::Op;
use crate::types::TensorType;

/// A node's index in its graph.
pub type NodeId = NodeIndex<u32>;

/// A byte range in a source file. `file` numbers the files of one
/// compilation (0 is the main file; imports get the next numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub file: u32,
    pub start: usize,
    pub end: usize,
}

impl Span {
    /// A range in the main file.
    pub fn new(start: usize, end: usize) -> Span {
        Span {
            file: 0,
            start,
            end,
        }
    }

    /// A range in file number `file`.
    pub fn in_file(file: u32, start: usize, end: usize) -> Span {
        Span { file, start, end }
    }

    /// The smallest span covering both (same file).
    pub fn to(self, other: Span) -> Span {
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// One result of a node: `port` selects among the results of multi-result
/// ops (`split`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value {
    pub node: NodeId,
    pub port: u32,
}

impl Value {
    /// The first (often only) result of a node.
    pub fn of(node: NodeId) -> Value {
        Value { node, port: 0 }
    }
}

/// A named, typed result.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub ty: TensorType,
}

/// An op with its results.
#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub results: Vec<ValueInfo>,
    /// Where the node was written, when it came from text.
    pub span: Option<Span>,
    /// Comments and blank lines written just above the node in text.
    pub doc: Vec<Trivia>,
}

/// A comment line (text after `//`) or a blank line kept from the source,
/// so that text IR prints back as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trivia {
    Comment(String),
    Blank,
}

/// An operand edge: result `port` of the source feeds operand slot `operand`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Use {
    pub operand: u32,
    pub port: u32,
}

/// A named graph output.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub value: Value,
    pub span: Option<Span>,
    pub doc: Vec<Trivia>,
}

/// A dataflow graph of dialect ops.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    /// Comments above the graph header.
    pub doc: Vec<Trivia>,
    /// Comments after the last item, before the closing brace.
    pub end_doc: Vec<Trivia>,
    g: StableDiGraph<Node, Use, u32>,
    outputs: Vec<Output>,
    /// Every result name ever added, so [`Graph::fresh_name`] is O(1).
    reserved: HashSet<String>,
    /// Instances of repeated blocks, as the front-end made them (metadata
    /// for the optimizer; not part of the text form or of equality).
    pub regions: Vec<Region>,
}

/// The nodes one instance of a block made (`decoder(x) as layers[3]`): the
/// optimizer saturates one instance of a block and reuses the result for
/// the others.
#[derive(Clone, Debug, PartialEq)]
pub struct Region {
    /// The block's name.
    pub block: String,
    /// The instance's name prefix (`layers.3`).
    pub instance: String,
    /// Its nodes, in the order they were made.
    pub nodes: Vec<NodeId>,
}

/// The graph has a cycle through the named value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the graph has a cycle through %{0}")]
pub struct CycleError(pub String);

impl Graph {
    /// An empty graph.
    pub fn new(name: &str) -> Graph {
        Graph {
            name: name.to_string(),
            ..Graph::default()
        }
    }

    /// Adds a node. Each operand must be a value of this graph.
    pub fn add_node(&mut self, op: Op, operands: &[Value], results: Vec<ValueInfo>) -> NodeId {
        for r in &results {
            self.reserved.insert(r.name.clone());
        }
        let id = self.g.add_node(Node {
            op,
            results,
            span: None,
            doc: Vec::new(),
        });
        for (i, v) in operands.iter().enumerate() {
            assert!(
                self.g.contains_node(v.node),
                "operand {i} of a new node is not in the graph"
            );
            self.g.add_edge(
                v.node,
                id,
                Use {
                    operand: i as u32,
                    port: v.port,
                },
            );
        }
        id
    }

    /// Adds a named input.
    pub fn add_input(&mut self, name: &str, ty: TensorType) -> Value {
        Value::of(self.add_node(
            Op::Input,
            &[],
            vec![ValueInfo {
                name: name.into(),
                ty,
            }],
        ))
    }

    /// Adds a named weight.
    pub fn add_weight(&mut self, name: &str, ty: TensorType) -> Value {
        Value::of(self.add_node(
            Op::Weight,
            &[],
            vec![ValueInfo {
                name: name.into(),
                ty,
            }],
        ))
    }

    /// Adds an op whose result types are inferred; results are named
    /// `%<n>` after the node count unless names are given.
    pub fn add_op(&mut self, op: Op, operands: &[Value]) -> Result<Vec<Value>, TypeError> {
        let tys: Vec<&TensorType> = operands.iter().map(|v| self.value_type(*v)).collect();
        let results = infer(&op, &tys, None)?;
        // distinct fresh names for every result (none is reserved until the
        // node is added, so each starts after the previous one)
        let mut next = self.g.node_count();
        let mut infos = Vec::with_capacity(results.len());
        for ty in results {
            let name = self.fresh_name_from(next);
            next = name.parse::<usize>().map_or(next, |n| n + 1);
            infos.push(ValueInfo { name, ty });
        }
        let n = infos.len();
        let id = self.add_node(op, operands, infos);
        Ok((0..n as u32).map(|port| Value { node: id, port }).collect())
    }

    /// Adds an op with one result (convenience for builders and tests).
    pub fn add1(&mut self, op: Op, operands: &[Value]) -> Result<Value, TypeError> {
        Ok(self.add_op(op, operands)?[0])
    }

    /// A value name that no result of the graph has yet: a number.
    pub fn fresh_name(&self) -> String {
        self.fresh_name_from(self.g.node_count())
    }

    fn fresh_name_from(&self, mut n: usize) -> String {
        loop {
            let name = n.to_string();
            if !self.reserved.contains(&name) {
                return name;
            }
            n += 1;
        }
    }

    /// Adds a named output.
    pub fn add_output(&mut self, name: &str, value: Value) {
        self.outputs.push(Output {
            name: name.into(),
            value,
            span: None,
            doc: Vec::new(),
        });
    }

    /// Adds an output with its source location and comments.
    pub fn push_output(&mut self, output: Output) {
        self.outputs.push(output);
    }

    /// The outputs, in order.
    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    /// The outputs, mutably (to retarget them during rewriting).
    pub fn outputs_mut(&mut self) -> &mut Vec<Output> {
        &mut self.outputs
    }

    /// Whether `id` is a node of this graph.
    pub fn contains(&self, id: NodeId) -> bool {
        self.g.contains_node(id)
    }

    /// A node.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    /// A node, mutably.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id]
    }

    /// Node ids in insertion order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.g.node_indices()
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }

    /// The operands of a node, in slot order.
    pub fn operands(&self, id: NodeId) -> Vec<Value> {
        let mut es: Vec<(u32, Value)> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| {
                (
                    e.weight().operand,
                    Value {
                        node: e.source(),
                        port: e.weight().port,
                    },
                )
            })
            .collect();
        es.sort_by_key(|(slot, _)| *slot);
        es.into_iter().map(|(_, v)| v).collect()
    }

    /// The consumers of a value: (node, operand slot).
    pub fn users(&self, v: Value) -> Vec<(NodeId, u32)> {
        let mut out: Vec<(NodeId, u32)> = self
            .g
            .edges_directed(v.node, Direction::Outgoing)
            .filter(|e| e.weight().port == v.port)
            .map(|e| (e.target(), e.weight().operand))
            .collect();
        out.sort();
        out
    }

    /// Makes every use of `old` (operands and outputs) use `new` instead.
    pub fn replace_all_uses(&mut self, old: Value, new: Value) {
        let edges: Vec<(EdgeIndex<u32>, NodeId, Use)> = self
            .g
            .edges_directed(old.node, Direction::Outgoing)
            .filter(|e| e.weight().port == old.port)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        for (e, target, u) in edges {
            self.g.remove_edge(e);
            self.g.add_edge(
                new.node,
                target,
                Use {
                    operand: u.operand,
                    port: new.port,
                },
            );
        }
        for o in &mut self.outputs {
            if o.value == old {
                o.value = new;
            }
        }
    }

    /// Removes a node and its edges. Its results must be unused.
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        self.g.remove_node(id)
    }

    /// A value's type.
    pub fn value_type(&self, v: Value) -> &TensorType {
        &self.g[v.node].results[v.port as usize].ty
    }

    /// A value's name (without `%`).
    pub fn value_name(&self, v: Value) -> &str {
        &self.g[v.node].results[v.port as usize].name
    }

    /// Whether `v` names an existing result.
    pub fn has_value(&self, v: Value) -> bool {
        self.g.contains_node(v.node) && (v.port as usize) < self.g[v.node].results.len()
    }

    /// The input nodes, in order.
    pub fn inputs(&self) -> Vec<Value> {
        self.sources(|op| matches!(op, Op::Input))
    }

    /// The weight nodes, in order.
    pub fn weights(&self) -> Vec<Value> {
        self.sources(|op| matches!(op, Op::Weight))
    }

    fn sources(&self, pick: impl Fn(&Op) -> bool) -> Vec<Value> {
        self.g
            .node_indices()
            .filter(|&n| pick(&self.g[n].op))
            .map(Value::of)
            .collect()
    }

    /// Nodes in a topological order that keeps insertion order wherever the
    /// dependencies allow (so a parsed file prints back in its own order).
    pub fn topo_order(&self) -> Result<Vec<NodeId>, CycleError> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut indeg: HashMap<NodeId, usize> = HashMap::new();
        let mut ready = BinaryHeap::new();
        for n in self.g.node_indices() {
            let d = self.g.edges_directed(n, Direction::Incoming).count();
            indeg.insert(n, d);
            if d == 0 {
                ready.push(Reverse(n));
            }
        }
        let mut order = Vec::with_capacity(indeg.len());
        while let Some(Reverse(n)) = ready.pop() {
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let d = indeg
                    .get_mut(&e.target())
                    .expect("every node has an in-degree");
                *d -= 1;
                if *d == 0 {
                    ready.push(Reverse(e.target()));
                }
            }
        }
        if order.len() != indeg.len() {
            let stuck = self
                .g
                .node_indices()
                .find(|n| indeg[n] > 0)
                .map(|n| {
                    self.g[n]
                        .results
                        .first()
                        .map(|r| r.name.clone())
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            return Err(CycleError(stuck));
        }
        Ok(order)
    }

    /// Removes nodes that no output depends on; returns how many. Inputs and
    /// weights are kept (they are the graph's interface).
    pub fn remove_dead_nodes(&mut self) -> usize {
        let mut live: BTreeSet<NodeId> = BTreeSet::new();
        let mut stack: Vec<NodeId> = self.outputs.iter().map(|o| o.value.node).collect();
        while let Some(n) = stack.pop() {
            if live.insert(n) {
                stack.extend(self.g.neighbors_directed(n, Direction::Incoming));
            }
        }
        let dead: Vec<NodeId> = self
            .g
            .node_indices()
            .filter(|n| !live.contains(n) && !self.g[*n].op.is_declaration())
            .collect();
        for &n in &dead {
            self.g.remove_node(n);
        }
        dead.len()
    }

    /// A structural key: nodes in topological order with operands as
    /// (position, port), for equality that ignores node ids and spans.
    fn structure(&self) -> Option<Vec<NodeKey<'_>>> {
        let order = self.topo_order().ok()?;
        let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        Some(
            order
                .iter()
                .map(|&n| {
                    let node = &self.g[n];
                    let ops = self
                        .operands(n)
                        .into_iter()
                        .map(|v| (pos[&v.node], v.port))
                        .collect();
                    (&node.op, node.results.as_slice(), node.doc.as_slice(), ops)
                })
                .collect(),
        )
    }

    fn output_key(&self) -> Option<Vec<OutputKey<'_>>> {
        let order = self.topo_order().ok()?;
        let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        self.outputs
            .iter()
            .map(|o| {
                pos.get(&o.value.node)
                    .map(|p| (o.name.as_str(), *p, o.value.port, o.doc.as_slice()))
            })
            .collect()
    }
}

/// A node for structural comparison: op, results, comments, operands as
/// (topological position, port).
type NodeKey<'a> = (&'a Op, &'a [ValueInfo], &'a [Trivia], Vec<(usize, u32)>);
/// An output for structural comparison: name, producer position, port, comments.
type OutputKey<'a> = (&'a str, usize, u32, &'a [Trivia]);

/// Two graphs are equal when they have the same name, comments, nodes (ops,
/// result names and types, operand wiring, in topological order) and outputs.
/// Node ids and source spans do not count.
impl PartialEq for Graph {
    fn eq(&self, other: &Graph) -> bool {
        self.name == other.name
            && self.doc == other.doc
            && self.end_doc == other.end_doc
            && self.structure().is_some()
            && self.structure() == other.structure()
            && self.output_key() == other.output_key()
    }
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::text::print(self))
    }
}
