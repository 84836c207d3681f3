//! `kiln import`: an imported ONNX graph written back as an editable
//! model-language file, with its weights as a safetensors file.
//!
//! Every op becomes one `let` (a call of the op by its mnemonic, attributes
//! that differ from their defaults named); values and weights take the
//! ONNX names made into identifiers (`conv1/7x7_s2_w_0` → `conv1_7x7_s2_w_0`),
//! numbered ones `v<n>`; the weights file holds each weight under its
//! identifier.
//!
//! Repeated structure becomes blocks. The compute ops, in topological
//! order, are cut wherever exactly one activation (an input or an op's
//! result; weights and constants do not count) is live, giving segments
//! with one input and one output; a one-op segment that follows every
//! occurrence of a structure joins it (a unit's trailing `relu`). Segments
//! of at least two ops whose ops, attributes, constant values, weight
//! types, input type and internal wiring are equal, and whose weights no op
//! outside them uses, form a group; a group of two or more is written as
//! one `block unitN(x)` (from its first occurrence: weights named after its
//! weights without their common prefix, constants repeated inside) and each
//! occurrence is an instance `unitN[k]`, whose weights the weights file
//! holds as `unitN.k.NAME`. Consecutive instances of one block chain, so a
//! run of them is one `for` loop; everything else stays flat.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use kiln_dialect::interp::Tensor;
use kiln_dialect::ops::{AttrValue, Literal, Op, attr::format_f64};
use kiln_dialect::{Graph, NodeId, Value};

/// Why the model could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: cannot write the weights: {message}")]
    Weights { path: String, message: String },
    #[error("the graph has a cycle: {0}")]
    Cycle(String),
}

const RESERVED: &[&str] = &[
    "let", "const", "for", "in", "return", "import", "as", "model", "block",
];

/// Identifiers for value names, unique within one model.
#[derive(Default)]
struct Names {
    used: HashSet<String>,
    of: HashMap<Value, String>,
}

impl Names {
    fn fresh(&mut self, wanted: &str) -> String {
        let mut base: String = wanted
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if base.is_empty() || base.starts_with(|c: char| c.is_ascii_digit()) {
            base.insert(0, 'v');
        }
        if RESERVED.contains(&base.as_str()) || base == "T" {
            base.push('_');
        }
        let mut name = base.clone();
        let mut k = 1;
        while !self.used.insert(name.clone()) {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    }
}

fn number(x: f64) -> String {
    format_f64(x)
}

fn attr_text(v: &AttrValue) -> String {
    match v {
        AttrValue::Float(x) => number(*x),
        AttrValue::List(items) => {
            let parts: Vec<String> = items.iter().map(attr_text).collect();
            format!("[{}]", parts.join(", "))
        }
        AttrValue::Int(_) | AttrValue::Bool(_) | AttrValue::Ident(_) | AttrValue::Quant(_) => {
            v.to_string()
        }
    }
}

/// How the writer treats a node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Input,
    Weight,
    Constant,
    Compute,
}

fn kind(op: &Op) -> Kind {
    match op {
        Op::Input => Kind::Input,
        Op::Weight => Kind::Weight,
        Op::Constant { .. } => Kind::Constant,
        _compute => Kind::Compute,
    }
}

/// The arguments of a `constant(...)` call: its value, shape and dtype.
fn constant_args(value: &Literal, ty: &kiln_dialect::TensorType) -> Vec<String> {
    let v = match value {
        Literal::Splat(x) => number(*x),
        Literal::Dense(xs) => format!(
            "[{}]",
            xs.iter().map(|x| number(*x)).collect::<Vec<_>>().join(", ")
        ),
    };
    let dims: Vec<String> = ty.shape.dims().iter().map(|d| d.to_string()).collect();
    vec![
        v,
        format!("shape = [{}]", dims.join(", ")),
        format!("dtype = {}", ty.dtype),
    ]
}

/// The call text of a node (`conv(x, w, strides = [2, 2])`) with the given
/// operand texts.
fn call_text(g: &Graph, id: NodeId, operands: Vec<String>) -> String {
    let node = g.node(id);
    let mut args = operands;
    if let Op::Constant { value } = &node.op {
        args = constant_args(value, &node.results[0].ty);
    } else {
        for (k, a) in node.op.attrs() {
            args.push(format!("{k} = {}", attr_text(&a)));
        }
    }
    format!("{}({})", node.op.mnemonic(), args.join(", "))
}

/// The identifier a result would like: its name, numbered ones `v<n>`.
fn wanted_name(name: &str) -> String {
    if name.parse::<u64>().is_ok() {
        format!("v{name}")
    } else {
        name.to_string()
    }
}

/// Binds fresh names to a node's results; the `let` target list.
fn bind_results(g: &Graph, id: NodeId, names: &mut Names) -> String {
    let results: Vec<String> = g
        .node(id)
        .results
        .iter()
        .enumerate()
        .map(|(port, res)| {
            let n = names.fresh(&wanted_name(&res.name));
            names.of.insert(
                Value {
                    node: id,
                    port: port as u32,
                },
                n.clone(),
            );
            n
        })
        .collect();
    results.join(", ")
}

/// A run of compute ops between two points of the topological order where
/// exactly one activation is live: `input` before, `output` after.
struct Segment {
    ops: Vec<NodeId>,
    input: Value,
    output: Value,
}

/// The segments of a graph: its compute ops cut wherever exactly one
/// activation (an input or an op's result, not a weight or constant) is
/// live. Ops before the first cut or after the last are in none.
fn segments(g: &Graph, order: &[NodeId]) -> Vec<Segment> {
    let compute: Vec<NodeId> = order
        .iter()
        .copied()
        .filter(|id| kind(&g.node(*id).op) == Kind::Compute)
        .collect();
    let pos: HashMap<NodeId, usize> = compute.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let outputs: HashSet<Value> = g.outputs().iter().map(|o| o.value).collect();
    // born[i + 1]: activations made by op i (index 0: the inputs);
    // dies[i + 1]: activations whose last use is op i.
    let n = compute.len();
    let mut born: Vec<Vec<Value>> = vec![Vec::new(); n + 1];
    let mut dies: Vec<Vec<Value>> = vec![Vec::new(); n + 2];
    for id in order {
        let node = g.node(*id);
        let slot = match kind(&node.op) {
            Kind::Input => 0,
            Kind::Compute => pos[id] + 1,
            Kind::Weight | Kind::Constant => continue,
        };
        for port in 0..node.results.len() {
            let v = Value {
                node: *id,
                port: port as u32,
            };
            let last = if outputs.contains(&v) {
                Some(n + 1)
            } else {
                g.users(v)
                    .iter()
                    .filter_map(|(u, _)| pos.get(u))
                    .max()
                    .map(|p| p + 1)
            };
            if let Some(last) = last.filter(|l| *l > slot) {
                born[slot].push(v);
                dies[last].push(v);
            }
        }
    }
    let mut live: HashSet<Value> = HashSet::new();
    let mut cuts: Vec<(usize, Value)> = Vec::new();
    for slot in 0..=n {
        for v in &dies[slot] {
            live.remove(v);
        }
        live.extend(born[slot].iter().copied());
        if live.len() == 1 {
            cuts.push((slot, *live.iter().next().unwrap()));
        }
    }
    let atoms: Vec<Segment> = cuts
        .windows(2)
        .map(|w| Segment {
            ops: compute[w[0].0..w[1].0].to_vec(),
            input: w[0].1,
            output: w[1].1,
        })
        .collect();
    absorb_tails(g, atoms)
}

/// Joins a segment of one op to the segment of several ops before it when
/// every occurrence of that structure is followed by the same one-op
/// segment: a unit's trailing activation (the `relu` after a residual
/// `add`) belongs to the unit, but an op that follows only the last of a
/// run does not.
fn absorb_tails(g: &Graph, atoms: Vec<Segment>) -> Vec<Segment> {
    let keys: Vec<Option<String>> = atoms
        .iter()
        .map(|a| segment_key(g, a).map(|k| k.0))
        .collect();
    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, (a, k)) in atoms.iter().zip(&keys).enumerate() {
        if let Some(k) = k
            && a.ops.len() >= 2
        {
            by_key.entry(k.as_str()).or_default().push(i);
        }
    }
    let mut absorbs: HashSet<usize> = HashSet::new();
    for occ in by_key.values().filter(|o| o.len() >= 2) {
        let tail = |i: &usize| {
            atoms
                .get(i + 1)
                .filter(|t| t.ops.len() == 1)
                .and_then(|_| keys[i + 1].as_ref())
        };
        let first = tail(&occ[0]);
        if first.is_some() && occ.iter().all(|i| tail(i) == first) {
            absorbs.extend(occ.iter().map(|i| i + 1));
        }
    }
    let mut out: Vec<Segment> = Vec::new();
    for (i, seg) in atoms.into_iter().enumerate() {
        match out.last_mut() {
            Some(prev) if absorbs.contains(&i) => {
                prev.ops.extend(seg.ops);
                prev.output = seg.output;
            }
            Some(_) | None => out.push(seg),
        }
    }
    out
}

/// The structural key of a segment, and its weights in first-use order;
/// `None` when it cannot be a block (a weight shared with ops outside it,
/// a result made outside it).
fn segment_key(g: &Graph, seg: &Segment) -> Option<(String, Vec<NodeId>)> {
    let inside: HashMap<NodeId, usize> =
        seg.ops.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    if !inside.contains_key(&seg.output.node) {
        return None;
    }
    let mut weights: Vec<NodeId> = Vec::new();
    let mut key = format!("in {}\n", g.value_type(seg.input));
    for id in &seg.ops {
        let mut codes = Vec::new();
        for o in g.operands(*id) {
            codes.push(operand_code(g, seg, &inside, &mut weights, o)?);
        }
        let tys: Vec<String> = g
            .node(*id)
            .results
            .iter()
            .map(|r| r.ty.to_string())
            .collect();
        writeln!(key, "{} = {}", tys.join(", "), call_text(g, *id, codes)).unwrap();
    }
    writeln!(key, "ret {}.{}", inside[&seg.output.node], seg.output.port).unwrap();
    Some((key, weights))
}

/// An operand as the key writes it: the segment's input, an earlier op of
/// the segment, a weight of its own, or a constant's value.
fn operand_code(
    g: &Graph,
    seg: &Segment,
    inside: &HashMap<NodeId, usize>,
    weights: &mut Vec<NodeId>,
    o: Value,
) -> Option<String> {
    if o == seg.input {
        return Some("x".into());
    }
    if let Some(k) = inside.get(&o.node) {
        return Some(format!("%{k}.{}", o.port));
    }
    let node = g.node(o.node);
    match kind(&node.op) {
        Kind::Weight => {
            let own = g.users(o).iter().all(|(u, _)| inside.contains_key(u))
                && !g.outputs().iter().any(|out| out.value == o);
            if !own {
                return None;
            }
            let j = match weights.iter().position(|w| *w == o.node) {
                Some(j) => j,
                None => {
                    weights.push(o.node);
                    weights.len() - 1
                }
            };
            Some(format!("w{j}: {}", node.results[0].ty))
        }
        Kind::Constant => Some(format!(
            "{}: {}",
            call_text(g, o.node, Vec::new()),
            node.results[0].ty
        )),
        Kind::Input | Kind::Compute => None,
    }
}

/// A repeated structure written as a block, and its occurrences.
struct Group {
    name: String,
    /// Segment indices, in order.
    members: Vec<usize>,
}

/// The groups of structurally equal segments of at least two ops that
/// occur at least twice, in order of first occurrence.
fn groups(g: &Graph, segs: &[Segment]) -> Vec<Group> {
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<Group> = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        if seg.ops.len() < 2 {
            continue;
        }
        let Some((key, _)) = segment_key(g, seg) else {
            continue;
        };
        let k = *by_key.entry(key).or_insert_with(|| {
            out.push(Group {
                name: String::new(),
                members: Vec::new(),
            });
            out.len() - 1
        });
        out[k].members.push(i);
    }
    let mut kept: Vec<Group> = out.into_iter().filter(|gr| gr.members.len() >= 2).collect();
    for (k, gr) in kept.iter_mut().enumerate() {
        gr.name = format!("unit{}", k + 1);
    }
    kept
}

/// The longest common prefix of identifiers, cut after its last `_`.
fn common_prefix(names: &[String]) -> usize {
    let Some(first) = names.first() else {
        return 0;
    };
    let mut len = first.len();
    for n in &names[1..] {
        len = len.min(
            first
                .bytes()
                .zip(n.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    first[..len].rfind('_').map_or(0, |i| i + 1)
}

/// The local weight names of a block: the first occurrence's weight
/// identifiers without their common prefix.
fn local_weight_names(g: &Graph, weights: &[NodeId], names: &mut Names) -> Vec<String> {
    let full: Vec<String> = weights
        .iter()
        .map(|w| Names::default().fresh(&g.node(*w).results[0].name))
        .collect();
    let cut = if full.len() > 1 {
        common_prefix(&full)
    } else {
        0
    };
    full.iter().map(|n| names.fresh(&n[cut..])).collect()
}

/// The text of a block for a group, written from its first occurrence, and
/// its local weight names in first-use order.
fn block_text(g: &Graph, gr: &Group, seg: &Segment) -> (String, Vec<String>) {
    let (_, weights) = segment_key(g, seg).expect("grouped segments have keys");
    let mut names = Names::default();
    let x = names.fresh("x");
    names.of.insert(seg.input, x.clone());
    let locals = local_weight_names(g, &weights, &mut names);
    let mut out = format!("block {}({x}) {{\n", gr.name);
    for (w, n) in weights.iter().zip(&locals) {
        writeln!(out, "    weight {n}: {}", g.node(*w).results[0].ty).unwrap();
        names.of.insert(Value::of(*w), n.clone());
    }
    let mut consts: HashMap<NodeId, String> = HashMap::new();
    for id in &seg.ops {
        for o in g.operands(*id) {
            if kind(&g.node(o.node).op) == Kind::Constant && !consts.contains_key(&o.node) {
                let n = names.fresh(&wanted_name(&g.node(o.node).results[0].name));
                writeln!(out, "    let {n} = {}", call_text(g, o.node, Vec::new())).unwrap();
                consts.insert(o.node, n.clone());
                names.of.insert(o, n);
            }
        }
        let args: Vec<String> = g
            .operands(*id)
            .iter()
            .map(|o| names.of[o].clone())
            .collect();
        let call = call_text(g, *id, args);
        let targets = bind_results(g, *id, &mut names);
        writeln!(out, "    let {targets} = {call}").unwrap();
    }
    writeln!(out, "    return {}\n}}\n", names.of[&seg.output]).unwrap();
    (out, locals)
}

/// The grouped segments: where each goes, and the blocks' weight names.
struct Blocks {
    segs: Vec<Segment>,
    groups: Vec<Group>,
    /// Segment index → (group, instance number).
    placed: HashMap<usize, (usize, usize)>,
    /// Per group, its local weight names in first-use order.
    locals: Vec<Vec<String>>,
}

/// The state of writing the model's body.
struct Writer<'a> {
    g: &'a Graph,
    weights: &'a HashMap<String, Tensor>,
    names: Names,
    body: String,
    renamed: HashMap<String, Tensor>,
    /// Segments already written as calls.
    done: HashSet<usize>,
}

impl Writer<'_> {
    /// Writes the calls for the run of consecutive instances of one block
    /// that starts at segment `m`: one call, or a `for` loop chaining them.
    fn run(&mut self, b: &Blocks, m: usize) {
        let (group, first) = b.placed[&m];
        let mut end = m + 1;
        while b.placed.get(&end).is_some_and(|p| p.0 == group) {
            end += 1;
        }
        let name = &b.groups[group].name;
        let input = self.names.of[&b.segs[m].input].clone();
        let last = b.segs[end - 1].output;
        let wanted = wanted_name(&self.g.node(last.node).results[last.port as usize].name);
        let out = self.names.fresh(&wanted);
        if end - m == 1 {
            writeln!(
                self.body,
                "    let {out} = {name}({input}) as {name}[{first}]"
            )
            .unwrap();
        } else {
            let i = self.names.fresh("i");
            writeln!(
                self.body,
                "    let {out} = {input}\n    for {i} in {first}..{} {{\n        {out} = {name}({out}) as {name}[{i}]\n    }}",
                first + end - m
            )
            .unwrap();
        }
        self.names.of.insert(last, out);
        for s in m..end {
            self.done.insert(s);
            self.rename_instance(b, s);
        }
    }

    /// Files an instance's weights under `BLOCK.N.LOCAL`.
    fn rename_instance(&mut self, b: &Blocks, s: usize) {
        let (group, inst) = b.placed[&s];
        let Some((_, ws)) = segment_key(self.g, &b.segs[s]) else {
            return;
        };
        for (w, local) in ws.iter().zip(&b.locals[group]) {
            if let Some(t) = self.weights.get(&self.g.node(*w).results[0].name) {
                let full = format!("{}.{inst}.{local}", b.groups[group].name);
                self.renamed.insert(full, t.clone());
            }
        }
    }

    /// Writes one op (or constant) as a `let`.
    fn op(&mut self, id: NodeId) {
        let args: Vec<String> = self
            .g
            .operands(id)
            .iter()
            .map(|o| self.names.of[o].clone())
            .collect();
        let call = call_text(self.g, id, args);
        let targets = bind_results(self.g, id, &mut self.names);
        writeln!(self.body, "    let {targets} = {call}").unwrap();
    }
}

/// Whether a value is used only by ops that blocks hold.
fn only_held(g: &Graph, held: &HashSet<NodeId>, v: Value) -> bool {
    let users = g.users(v);
    !users.is_empty()
        && users.iter().all(|(u, _)| held.contains(u))
        && !g.outputs().iter().any(|o| o.value == v)
}

/// Finds the repeated segments and writes a block for each group.
fn find_blocks(g: &Graph, order: &[NodeId], names: &mut Names, out: &mut String) -> Blocks {
    let segs = segments(g, order);
    let groups = groups(g, &segs);
    let mut placed = HashMap::new();
    let mut locals = Vec::new();
    for (k, gr) in groups.iter().enumerate() {
        names.fresh(&gr.name);
        let (text, l) = block_text(g, gr, &segs[gr.members[0]]);
        out.push_str(&text);
        locals.push(l);
        for (i, m) in gr.members.iter().enumerate() {
            placed.insert(*m, (k, i));
        }
    }
    Blocks {
        segs,
        groups,
        placed,
        locals,
    }
}

/// The model-language text of a graph, and the weights renamed to the
/// identifiers the text declares.
pub fn to_kiln(
    g: &Graph,
    weights: &HashMap<String, Tensor>,
) -> Result<(String, HashMap<String, Tensor>), WriteError> {
    let order = g
        .topo_order()
        .map_err(|e| WriteError::Cycle(e.to_string()))?;
    let mut out = String::from("// Imported from ONNX by `kiln import`.\n");
    let mut w = Writer {
        g,
        weights,
        names: Names::default(),
        body: String::new(),
        renamed: HashMap::new(),
        done: HashSet::new(),
    };
    let b = find_blocks(g, &order, &mut w.names, &mut out);
    let mut starts: HashMap<NodeId, usize> = HashMap::new();
    let mut held: HashSet<NodeId> = HashSet::new();
    for m in b.placed.keys() {
        starts.insert(b.segs[*m].ops[0], *m);
        held.extend(b.segs[*m].ops.iter().copied());
    }
    let model = w.names.fresh(&g.name);
    writeln!(out, "model {model} {{").unwrap();
    for id in &order {
        let node = g.node(*id);
        let v = Value::of(*id);
        let r = &node.results[0];
        match kind(&node.op) {
            Kind::Input => {
                let n = w.names.fresh(&r.name);
                writeln!(out, "    input {n}: {}", r.ty).unwrap();
                w.names.of.insert(v, n);
            }
            Kind::Weight if only_held(g, &held, v) => {}
            Kind::Weight => {
                let n = w.names.fresh(&r.name);
                writeln!(out, "    weight {n}: {}", r.ty).unwrap();
                if let Some(t) = weights.get(&r.name) {
                    w.renamed.insert(n.clone(), t.clone());
                }
                w.names.of.insert(v, n);
            }
            Kind::Constant if only_held(g, &held, v) => {}
            Kind::Compute if held.contains(id) => {
                if let Some(m) = starts.get(id)
                    && !w.done.contains(m)
                {
                    w.run(&b, *m);
                }
            }
            Kind::Constant | Kind::Compute => w.op(*id),
        }
    }
    out.push('\n');
    out.push_str(&w.body);
    write_outputs(g, &w.names, &mut out);
    out.push_str("}\n");
    Ok((out, w.renamed))
}

/// Writes the `output` declarations.
fn write_outputs(g: &Graph, names: &Names, out: &mut String) {
    let mut outs = HashSet::new();
    for o in g.outputs() {
        let mut n: String = o
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if n.is_empty() || n.starts_with(|c: char| c.is_ascii_digit()) {
            n.insert(0, 'y');
        }
        while !outs.insert(n.clone()) {
            n.push('_');
        }
        writeln!(out, "    output {n} = {}", names.of[&o.value]).unwrap();
    }
}

/// Writes weights as a safetensors file ([`crate::data::write_safetensors`]).
pub fn write_safetensors(path: &Path, weights: &HashMap<String, Tensor>) -> Result<(), WriteError> {
    crate::data::write_safetensors(path, weights).map_err(|message| WriteError::Weights {
        path: path.display().to_string(),
        message,
    })
}
