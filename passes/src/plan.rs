//! The kernel plan: the extracted program as a graph whose kernels are
//! explicit. Each kernel computes one materialized value from values in
//! memory (sources or other kernels' outputs) through a tree of ops of one
//! template kind. Values fused into two kernels appear once in each.

use std::collections::HashMap;
use std::fmt::Write;

use egg::Id;
use kiln_dialect::graph::{Graph, NodeId, Value, ValueInfo};
use kiln_dialect::ops::OpClass;

use crate::cost::Target;
use crate::egraph::convert::Loaded;
use crate::egraph::lang::Head;
use crate::extract::{Choice, Extraction, Kind};

/// One kernel.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub kind: Kind,
    /// The value the kernel writes.
    pub output: Value,
    /// The kernel's nodes, operands first.
    pub nodes: Vec<NodeId>,
    /// The values it reads from memory.
    pub reads: Vec<Value>,
    /// Runs when weights are bound (it depends on weights and constants only).
    pub bind_time: bool,
    /// Estimated seconds (0 for bind-time kernels).
    pub seconds: f64,
}

/// A graph and its kernels, in launch order.
#[derive(Clone, Debug)]
pub struct Plan {
    pub graph: Graph,
    /// The e-class and e-node of the kernel e-graph each op node was
    /// extracted from (for explanations).
    pub made_from: HashMap<NodeId, (Id, crate::egraph::lang::KNode)>,
    pub kernels: Vec<Kernel>,
    pub target: &'static str,
    pub seconds: f64,
}

struct Builder<'a> {
    l: &'a Loaded,
    ex: &'a Extraction,
    g: Graph,
    /// Kernels in creation order (the index is the kernel's identity).
    kernels: Vec<Kernel>,
    /// Kernel indices in launch order (a kernel after those it reads).
    order: Vec<usize>,
    /// Values in memory, by class.
    mem: HashMap<Id, Value>,
    /// Values computed inside a kernel: (class, kind, kernel index).
    inner: HashMap<(Id, Kind, usize), Value>,
    names: HashMap<Id, String>,
    /// Result names given so far.
    used: std::collections::HashSet<String>,
    made_from: HashMap<NodeId, (Id, crate::egraph::lang::KNode)>,
}

/// Builds the plan of an extraction, from the outputs down.
pub fn build(l: &Loaded, ex: &Extraction, target: &Target) -> Plan {
    let eg = &l.egraph;
    let names = l
        .names
        .iter()
        .map(|(k, v)| (eg.find(*k), v.clone()))
        .collect();
    let mut b = Builder {
        l,
        ex,
        g: Graph::new(&l.graph_name),
        kernels: Vec::new(),
        order: Vec::new(),
        mem: HashMap::new(),
        inner: HashMap::new(),
        names,
        used: Default::default(),
        made_from: HashMap::new(),
    };
    for &s in &l.sources {
        b.mem_value(eg.find(s));
    }
    let outs: Vec<(String, Value)> = l
        .outputs
        .iter()
        .map(|(n, c)| (n.clone(), b.mem_value(eg.find(*c))))
        .collect();
    for (n, v) in outs {
        b.g.add_output(&n, v);
    }
    let kernels: Vec<Kernel> = b.order.iter().map(|&i| b.kernels[i].clone()).collect();
    let seconds = kernels.iter().map(|k| k.seconds).sum();
    Plan {
        graph: b.g,
        made_from: b.made_from,
        kernels,
        target: target.name,
        seconds,
    }
}

impl Builder<'_> {
    fn fresh(&mut self, c: Id) -> String {
        let name = match self.names.get(&c) {
            Some(n) if !self.used.contains(n) => n.clone(),
            _ => self.g.fresh_name(),
        };
        self.used.insert(name.clone());
        name
    }

    /// The value of a class in memory: a source, or the output of its kernel.
    fn mem_value(&mut self, c: Id) -> Value {
        if let Some(v) = self.mem.get(&c) {
            return *v;
        }
        let eg = &self.l.egraph;
        let choice = self
            .ex
            .best
            .get(&(c, Kind::Mem))
            .unwrap_or_else(|| panic!("class {c} has no in-memory choice"));
        let node = choice.node.clone();
        let v = match node.head {
            Head::Op(id) => {
                let e = eg.analysis.ops.get(id);
                let name = match &e.name {
                    Some(n) => {
                        self.used.insert(n.clone());
                        n.clone()
                    }
                    None => self.fresh(c),
                };
                let ty = eg[c].data.ty.clone();
                Value::of(
                    self.g
                        .add_node(e.op.clone(), &[], vec![ValueInfo { name, ty }]),
                )
            }
            Head::Mat => {
                let inner = eg.find(node.args[0]);
                let kind = choice.kinds[0];
                let k = self.kernels.len();
                self.kernels.push(Kernel {
                    kind,
                    output: Value::of(NodeId::new(0)),
                    nodes: Vec::new(),
                    reads: Vec::new(),
                    bind_time: eg[inner].data.weight_only,
                    seconds: choice.cost.kernel,
                });
                let v = self.open_value(inner, kind, k);
                self.kernels[k].output = v;
                // launch order: after every kernel it reads, which finished first
                self.order.push(k);
                v
            }
        };
        self.mem.insert(c, v);
        v
    }

    /// The value of a class computed inside kernel `k` in `kind`. The
    /// choices under it are built in post-order with an explicit stack (a
    /// fused kernel's chain of ops can be thousands deep): each op's
    /// operands in order, those read from memory through [`Self::mem_value`]
    /// when their turn comes.
    fn open_value(&mut self, c: Id, kind: Kind, k: usize) -> Value {
        enum Step {
            /// Visit an open class: its operands first, then build it.
            Open(Id, Kind),
            /// Build an open class whose operands are all built.
            Build(Id, Kind),
            /// Materialize a class read from memory.
            Mem(Id),
        }
        let mut stack = vec![Step::Open(c, kind)];
        // classes whose operands are being visited: meeting one again
        // before it is built means the choices form a cycle
        let mut opened = std::collections::HashSet::new();
        while let Some(step) = stack.pop() {
            match step {
                Step::Mem(a) => {
                    self.mem_value(a);
                }
                Step::Open(c, kind) => {
                    if self.inner.contains_key(&(c, kind, k)) {
                        continue;
                    }
                    assert!(
                        opened.insert((c, kind)),
                        "internal error: the extracted choices form a cycle through class {c}"
                    );
                    let choice = self.choice(c, kind);
                    stack.push(Step::Build(c, kind));
                    for (a, ak) in choice.node.args.iter().zip(&choice.kinds).rev() {
                        let a = self.l.egraph.find(*a);
                        stack.push(if *ak == Kind::Mem {
                            Step::Mem(a)
                        } else {
                            Step::Open(a, *ak)
                        });
                    }
                }
                Step::Build(c, kind) => {
                    if !self.inner.contains_key(&(c, kind, k)) {
                        self.build_open(c, kind, k);
                    }
                }
            }
        }
        self.inner[&(c, kind, k)]
    }

    /// The extracted choice of class `c` in `kind`.
    fn choice(&self, c: Id, kind: Kind) -> Choice {
        self.ex
            .best
            .get(&(c, kind))
            .unwrap_or_else(|| panic!("class {c} has no {kind:?} choice"))
            .clone()
    }

    /// Adds the op chosen for open class `c` to kernel `k`, its operands
    /// already built.
    fn build_open(&mut self, c: Id, kind: Kind, k: usize) {
        let eg = &self.l.egraph;
        let choice = self.choice(c, kind);
        let Head::Op(id) = choice.node.head else {
            panic!("an open choice is an op")
        };
        let mut operands = Vec::new();
        let mut reads = Vec::new();
        for (a, ak) in choice.node.args.iter().zip(&choice.kinds) {
            let a = eg.find(*a);
            let v = if *ak == Kind::Mem {
                let v = self.mem[&a];
                reads.push(v);
                v
            } else {
                self.inner[&(a, *ak, k)]
            };
            operands.push(v);
        }
        let e = eg.analysis.ops.get(id);
        let name = self.fresh(c);
        let ty = eg[c].data.ty.clone();
        let node = self
            .g
            .add_node(e.op.clone(), &operands, vec![ValueInfo { name, ty }]);
        self.made_from.insert(node, (c, choice.node.clone()));
        let kernel = &mut self.kernels[k];
        kernel.nodes.push(node);
        for r in reads {
            if !kernel.reads.contains(&r) {
                kernel.reads.push(r);
            }
        }
        self.inner.insert((c, kind, k), Value::of(node));
    }
}

impl Plan {
    /// Kernels that run when the model runs (bind-time kernels excluded).
    pub fn run_kernels(&self) -> impl Iterator<Item = &Kernel> {
        self.kernels.iter().filter(|k| !k.bind_time)
    }

    /// One line per kernel, each beginning `kernel `; bind-time weight
    /// transforms as `transform ` lines.
    pub fn to_text(&self) -> String {
        let g = &self.graph;
        let mut out = String::new();
        let run = self.run_kernels().count();
        let _ = writeln!(
            out,
            "// plan of `{}` for {}: {run} kernel(s), {} weight transform(s), {:.3} us estimated",
            g.name,
            self.target,
            self.kernels.len() - run,
            self.seconds * 1e6
        );
        for (i, k) in self.kernels.iter().enumerate() {
            let word = if k.bind_time { "transform" } else { "kernel" };
            let reads: Vec<String> = k
                .reads
                .iter()
                .map(|v| format!("%{}", g.value_name(*v)))
                .collect();
            let _ = writeln!(
                out,
                "{word} k{i} {} %{} = {}  reads [{}]  {:.3} us",
                k.kind.name(),
                g.value_name(k.output),
                expr(g, k.output, &k.nodes),
                reads.join(", "),
                k.seconds * 1e6
            );
        }
        out
    }
}

/// The kernel's computation as a nested expression; values read from
/// memory print as `%name`.
fn expr(g: &Graph, v: Value, inside: &[NodeId]) -> String {
    if !inside.contains(&v.node) {
        return format!("%{}", g.value_name(v));
    }
    let n = g.node(v.node);
    let args: Vec<String> = g
        .operands(v.node)
        .iter()
        .map(|a| expr(g, *a, inside))
        .collect();
    let attrs = n.op.attrs();
    let attrs = if attrs.is_empty() || matches!(n.op.class(), OpClass::Source) {
        String::new()
    } else {
        let a: Vec<String> = attrs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        format!("{{{}}}", a.join(", "))
    };
    format!("{}{attrs}({})", n.op.mnemonic(), args.join(", "))
}
