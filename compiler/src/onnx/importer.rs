//! The import state: ONNX value names bound to graph values or to tensors
//! known at compile time, the materialization of known tensors (weights or
//! constants), and the folding of nodes whose inputs are all known.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;

use kiln_dialect::graph::ValueInfo;
use kiln_dialect::interp::{self, Tensor};
use kiln_dialect::ops::{Literal, Op};
use kiln_dialect::shape::{Dim, Shape};
use kiln_dialect::{DType, Graph, TensorType, Value};

use super::error::OnnxError;
use super::node::NodeCx;
use super::{Imported, OPSETS, ops, proto, tensor};

/// An ONNX value: computed by the graph, known at compile time, or a
/// shape (or part of one) known up to symbolic dims.
#[derive(Clone, Debug)]
pub enum Val {
    Graph(Value),
    Const(Rc<Tensor>),
    Dims(Rc<Dims>),
}

/// One element of a shape vector: a number or a symbolic dim.
#[derive(Clone, Debug, PartialEq)]
pub enum SymInt {
    Int(i64),
    Sym(String),
}

/// An int64 vector (or scalar) whose elements are dims, some symbolic: what
/// `Shape` gives for a symbolic shape, and what `Gather`, `Slice`,
/// `Unsqueeze`, `Squeeze`, `Concat` and `Cast` make of it, until `Reshape`,
/// `Expand` or `ConstantOfShape` use it as a shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Dims {
    pub items: Vec<SymInt>,
    /// Rank 0 (one item) rather than rank 1.
    pub scalar: bool,
}

impl Dims {
    /// The value: a known tensor when no item is symbolic.
    pub fn into_val(self) -> Val {
        let ints: Option<Vec<f64>> = self
            .items
            .iter()
            .map(|i| match i {
                SymInt::Int(v) => Some(*v as f64),
                SymInt::Sym(_) => None,
            })
            .collect();
        match ints {
            Some(v) if self.scalar && v.len() == 1 => {
                Val::Const(Rc::new(Tensor::scalar(DType::I64, v[0])))
            }
            Some(v) => Val::Const(Rc::new(Tensor::new(DType::I64, &[v.len()], v))),
            None => Val::Dims(Rc::new(self)),
        }
    }
}

/// Nodes whose inputs are all known are folded only when the inputs hold
/// at most this many elements in all (the interpreter computes in f64).
const FOLD_LIMIT: usize = 1 << 16;

/// A fold whose results would hold more elements than this is not done
/// (the node is imported as ops instead), so that a small known input
/// cannot make the importer allocate a huge tensor.
const FOLD_RESULT_LIMIT: u64 = 1 << 20;

/// Known tensors up to this many elements become `constant` ops in the
/// graph (with every element written out); larger ones become weights.
const INLINE_LIMIT: usize = 64;

/// Ops that are never folded: their result may be far larger than their
/// inputs (`ConstantOfShape` decides by itself what to keep).
const NO_FOLD: &[&str] = &["ConstantOfShape"];

/// The state of one import (or of one fold, in a scratch graph).
pub struct Cx {
    pub g: Graph,
    vals: HashMap<String, Val>,
    inits: HashSet<String>,
    /// The data of every weight the graph declares.
    pub weights: HashMap<String, Tensor>,
    materialized: HashMap<String, Value>,
    /// A scratch graph for folding: known tensors become constants.
    scratch: bool,
    /// The opset of the default domain.
    pub opset: i64,
}

fn model_err(path: &str, message: impl Into<String>) -> OnnxError {
    OnnxError::Model {
        path: path.to_string(),
        message: message.into(),
    }
}

/// A symbol name made of identifier characters.
fn symbol(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'd');
    }
    out
}

fn input_type(vi: &proto::ValueInfoProto, path: &str) -> Result<TensorType, OnnxError> {
    use proto::tensor_shape_proto::dimension::Value as D;
    use proto::type_proto::Value as T;
    let name = vi.name();
    let Some(T::TensorType(tt)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(model_err(
            path,
            format!(
                "graph input `{name}` is not a tensor (sequences, maps and optionals are not supported)"
            ),
        ));
    };
    let dtype = tensor::dtype_of(tt.elem_type()).ok_or_else(|| {
        model_err(
            path,
            format!(
                "graph input `{name}` has element type {}, which kiln does not support",
                tensor::dtype_name(tt.elem_type())
            ),
        )
    })?;
    let Some(shape) = &tt.shape else {
        return Err(model_err(
            path,
            format!("graph input `{name}` has no shape (kiln needs its rank)"),
        ));
    };
    let dims = shape
        .dim
        .iter()
        .enumerate()
        .map(|(i, d)| match &d.value {
            Some(D::DimValue(n)) if *n >= 0 => Ok(Dim::Static(*n as u64)),
            Some(D::DimValue(n)) => Err(model_err(
                path,
                format!("graph input `{name}` has a negative dimension {n}"),
            )),
            Some(D::DimParam(p)) if !p.is_empty() => Ok(Dim::Sym(symbol(p))),
            _ => Ok(Dim::Sym(format!("{}_{i}", symbol(name)))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TensorType::new(dtype, Shape(dims)))
}

/// Imports a decoded model.
pub fn import(
    model: &proto::ModelProto,
    path: &str,
    stem: &str,
    base: &Path,
) -> Result<Imported, OnnxError> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| model_err(path, "the model has no graph"))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain(), "" | "ai.onnx"))
        .map(|o| o.version())
        // IR version 2 and older models have no opset_import: opset 1
        .unwrap_or(1);
    if !OPSETS.contains(&opset) {
        return Err(model_err(
            path,
            format!(
                "ONNX opset {opset} is not supported (kiln imports opsets {} to {})",
                OPSETS.start(),
                OPSETS.end()
            ),
        ));
    }
    let name = match graph.name() {
        "" => stem.to_string(),
        n => n.to_string(),
    };
    let mut cx = Cx {
        g: Graph::new(&name),
        vals: HashMap::new(),
        inits: HashSet::new(),
        weights: HashMap::new(),
        materialized: HashMap::new(),
        scratch: false,
        opset,
    };
    for t in &graph.initializer {
        let value = tensor::read(t, base)?;
        cx.inits.insert(t.name().to_string());
        cx.vals
            .insert(t.name().to_string(), Val::Const(Rc::new(value)));
    }
    if !graph.sparse_initializer.is_empty() {
        return Err(model_err(path, "sparse initializers are not supported"));
    }
    for vi in &graph.input {
        // before IR version 4 initializers are listed as inputs too
        if cx.inits.contains(vi.name()) {
            continue;
        }
        if vi.name().is_empty() {
            return Err(model_err(path, "a graph input has no name"));
        }
        let ty = input_type(vi, path)?;
        let v = cx.g.add_input(vi.name(), ty);
        cx.vals.insert(vi.name().to_string(), Val::Graph(v));
    }
    for (i, n) in graph.node.iter().enumerate() {
        let node_opset = match n.domain() {
            "" | "ai.onnx" => opset,
            d => {
                return Err(OnnxError::Unsupported {
                    op: format!("{d}.{}", n.op_type()),
                    node: NodeCx::new(n, i, opset).name,
                    opset: model
                        .opset_import
                        .iter()
                        .find(|o| o.domain() == d)
                        .map_or(0, |o| o.version()),
                    detail: String::new(),
                });
            }
        };
        let node = NodeCx::new(n, i, node_opset);
        cx.node(&node)?;
    }
    if graph.output.is_empty() {
        return Err(model_err(path, "the graph has no outputs"));
    }
    for o in &graph.output {
        let v = match cx.vals.get(o.name()) {
            Some(Val::Graph(v)) => *v,
            Some(Val::Const(_)) => cx.materialize(o.name())?,
            Some(Val::Dims(_)) => {
                return Err(model_err(
                    path,
                    format!(
                        "graph output `{}` is a shape with symbolic dims, computed at run time",
                        o.name()
                    ),
                ));
            }
            None => {
                return Err(model_err(
                    path,
                    format!("graph output `{}` is computed by no node", o.name()),
                ));
            }
        };
        cx.g.add_output(o.name(), v);
    }
    Ok(Imported {
        graph: cx.g,
        weights: cx.weights,
    })
}

impl Cx {
    /// Converts one node, folding it when its inputs are all known.
    fn node(&mut self, node: &NodeCx) -> Result<(), OnnxError> {
        let mut known = Vec::new();
        let mut all_known = true;
        let mut elements = 0usize;
        for i in 0..node.input_count() {
            let Some(name) = node.input(i) else { continue };
            match self.get_named(node, name)? {
                Val::Const(t) => {
                    elements += t.numel();
                    known.push((name.to_string(), t));
                }
                Val::Graph(_) | Val::Dims(_) => all_known = false,
            }
        }
        let fold = all_known && elements <= FOLD_LIMIT && !NO_FOLD.contains(&node.op);
        let folded = if fold { self.fold(node, known)? } else { None };
        let results = match folded {
            Some(r) => r,
            None => ops::convert(self, node)?,
        };
        for (i, r) in results.into_iter().enumerate() {
            let Some(name) = node.output(i) else { continue };
            if let Val::Graph(v) = &r {
                self.name_result(*v, name);
            }
            self.vals.insert(name.to_string(), r);
        }
        Ok(())
    }

    /// Gives a graph result the ONNX name where it still has a number.
    fn name_result(&mut self, v: Value, name: &str) {
        // numbers are the graph's own fresh names: leave those to it
        if self.scratch || name.chars().all(|c| c.is_ascii_digit()) {
            return;
        }
        let node = self.g.node_mut(v.node);
        let r = &mut node.results[v.port as usize];
        if r.name.parse::<u64>().is_ok() && !matches!(node.op, Op::Input | Op::Weight) {
            r.name = name.to_string();
        }
    }

    /// Maps the node into a scratch graph over its known inputs and runs
    /// that graph with the reference interpreter; `None` when the results
    /// would be too large to hold.
    fn fold(
        &mut self,
        node: &NodeCx,
        known: Vec<(String, Rc<Tensor>)>,
    ) -> Result<Option<Vec<Val>>, OnnxError> {
        let mut scratch = Cx {
            g: Graph::new("fold"),
            vals: known.into_iter().map(|(n, t)| (n, Val::Const(t))).collect(),
            inits: HashSet::new(),
            weights: HashMap::new(),
            materialized: HashMap::new(),
            scratch: true,
            opset: self.opset,
        };
        let results = ops::convert(&mut scratch, node)?;
        let too_large = results.iter().any(|r| match r {
            Val::Graph(v) => scratch
                .g
                .value_type(*v)
                .shape
                .numel()
                .is_none_or(|n| n > FOLD_RESULT_LIMIT),
            Val::Const(_) | Val::Dims(_) => false,
        });
        if too_large {
            return Ok(None);
        }
        let mut outs = Vec::new();
        for (i, r) in results.iter().enumerate() {
            if let Val::Graph(v) = r {
                scratch.g.add_output(&format!("o{i}"), *v);
                outs.push(i);
            }
        }
        if outs.is_empty() {
            return Ok(Some(results));
        }
        let computed = interp::run(&scratch.g, &HashMap::new()).map_err(|e| {
            node.error(
                format!("evaluating it at compile time failed: {e}"),
                String::from("(known)"),
            )
        })?;
        let mut results = results;
        for (i, (_, t)) in outs.into_iter().zip(computed) {
            results[i] = Val::Const(Rc::new(t));
        }
        Ok(Some(results))
    }

    fn get_named(&self, node: &NodeCx, name: &str) -> Result<Val, OnnxError> {
        self.vals
            .get(name)
            .cloned()
            .ok_or_else(|| OnnxError::MissingValue {
                op: node.op.to_string(),
                node: node.name.clone(),
                name: name.to_string(),
            })
    }

    /// Input `i`, or `None` when absent.
    pub fn get(&self, node: &NodeCx, i: usize) -> Result<Option<Val>, OnnxError> {
        match node.input(i) {
            None => Ok(None),
            Some(n) => self.get_named(node, n).map(Some),
        }
    }

    /// Input `i` as a graph value (known tensors are materialized); an
    /// error names the input when it is absent.
    pub fn value(&mut self, node: &NodeCx, i: usize) -> Result<Value, OnnxError> {
        self.opt_value(node, i)?
            .ok_or_else(|| node.error(format!("input {i} is required"), self.shapes(node)))
    }

    /// Input `i` as a graph value, or `None` when absent.
    pub fn opt_value(&mut self, node: &NodeCx, i: usize) -> Result<Option<Value>, OnnxError> {
        let Some(name) = node.input(i) else {
            return Ok(None);
        };
        match self.get_named(node, name)? {
            Val::Graph(v) => Ok(Some(v)),
            Val::Const(_) => self.materialize(name).map(Some),
            Val::Dims(_) => Err(node.unsupported(format!(
                "input `{name}` is a shape with symbolic dims; kiln uses such shapes only as the shapes of Reshape, Expand and ConstantOfShape"
            ))),
        }
    }

    /// Input `i` when it is known at compile time; `None` when absent; an
    /// error when it is computed at run time (the op needs it known).
    pub fn known(
        &self,
        node: &NodeCx,
        i: usize,
        what: &str,
    ) -> Result<Option<Rc<Tensor>>, OnnxError> {
        match self.get(node, i)? {
            None => Ok(None),
            Some(Val::Const(t)) => Ok(Some(t)),
            Some(Val::Graph(_)) => Err(node.unsupported(format!(
                "input `{what}` is computed at run time; kiln needs it known at compile time"
            ))),
            Some(Val::Dims(_)) => Err(node.unsupported(format!(
                "input `{what}` holds symbolic dims; kiln needs it known at compile time"
            ))),
        }
    }

    /// Input `i` as shape elements: a known integer tensor or a shape with
    /// symbolic dims; `None` when absent.
    pub fn known_shape(
        &self,
        node: &NodeCx,
        i: usize,
        what: &str,
    ) -> Result<Option<Vec<SymInt>>, OnnxError> {
        match self.get(node, i)? {
            Some(Val::Dims(d)) => Ok(Some(d.items.clone())),
            _ => Ok(self
                .known_ints(node, i, what)?
                .map(|v| v.into_iter().map(SymInt::Int).collect())),
        }
    }

    /// A known integer input as a list.
    pub fn known_ints(
        &self,
        node: &NodeCx,
        i: usize,
        what: &str,
    ) -> Result<Option<Vec<i64>>, OnnxError> {
        Ok(self
            .known(node, i, what)?
            .map(|t| t.data.iter().map(|&x| x as i64).collect()))
    }

    /// The type of input `i` (known tensors included).
    pub fn input_type(&self, node: &NodeCx, i: usize) -> Result<Option<TensorType>, OnnxError> {
        Ok(self.get(node, i)?.map(|v| self.val_type(&v)))
    }

    /// The type of a value.
    pub fn val_type(&self, v: &Val) -> TensorType {
        match v {
            Val::Graph(v) => self.g.value_type(*v).clone(),
            Val::Const(t) => TensorType::of(
                t.dtype,
                &t.shape.iter().map(|&d| d as u64).collect::<Vec<_>>(),
            ),
            Val::Dims(d) if d.scalar => TensorType::of(DType::I64, &[]),
            Val::Dims(d) => TensorType::of(DType::I64, &[d.items.len() as u64]),
        }
    }

    /// The type of a graph value.
    pub fn ty(&self, v: Value) -> TensorType {
        self.g.value_type(v).clone()
    }

    /// The static dims of a graph value, or an error saying which is symbolic.
    pub fn static_dims(&self, node: &NodeCx, v: Value) -> Result<Vec<u64>, OnnxError> {
        let ty = self.ty(v);
        ty.shape.as_static().ok_or_else(|| {
            node.unsupported(format!(
                "its input of type {ty} has symbolic dims, and this op needs them known"
            ))
        })
    }

    /// The types of the node's inputs, for messages.
    pub fn shapes(&self, node: &NodeCx) -> String {
        let mut parts = Vec::new();
        for i in 0..node.input_count() {
            let s = match node.input(i) {
                None => "(absent)".to_string(),
                Some(n) => match self.vals.get(n) {
                    Some(v) => self.val_type(v).to_string(),
                    None => "(undefined)".to_string(),
                },
            };
            parts.push(s);
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }

    /// Adds a dialect op with one result.
    pub fn add(&mut self, node: &NodeCx, op: Op, operands: &[Value]) -> Result<Value, OnnxError> {
        Ok(self.add_n(node, op, operands)?[0])
    }

    /// Adds a dialect op; a type error names the node and its input shapes.
    pub fn add_n(
        &mut self,
        node: &NodeCx,
        op: Op,
        operands: &[Value],
    ) -> Result<Vec<Value>, OnnxError> {
        let mnemonic = op.mnemonic();
        self.g.add_op(op, operands).map_err(|e| {
            let types: Vec<String> = operands
                .iter()
                .map(|v| self.g.value_type(*v).to_string())
                .collect();
            node.error(
                format!("as kiln `{mnemonic}` on ({}): {e}", types.join(", ")),
                self.shapes(node),
            )
        })
    }

    /// A scalar constant.
    pub fn scalar(&mut self, dtype: DType, x: f64) -> Value {
        self.constant(Literal::Splat(x), TensorType::new(dtype, Shape::scalar()))
    }

    /// A constant of the given type.
    pub fn constant(&mut self, value: Literal, ty: TensorType) -> Value {
        let name = self.g.fresh_name();
        Value::of(
            self.g
                .add_node(Op::Constant { value }, &[], vec![ValueInfo { name, ty }]),
        )
    }

    /// A known tensor as a graph value.
    pub fn tensor_value(&mut self, t: &Tensor) -> Value {
        let ty = TensorType::of(
            t.dtype,
            &t.shape.iter().map(|&d| d as u64).collect::<Vec<_>>(),
        );
        let first = t.data.first().copied().unwrap_or(0.0);
        if t.data.iter().all(|x| x.to_bits() == first.to_bits()) {
            self.constant(Literal::Splat(first), ty)
        } else {
            self.constant(Literal::Dense(t.data.clone()), ty)
        }
    }

    /// The graph value of a known ONNX value: in a scratch graph a
    /// constant; an initializer (or a large folded value) a weight under
    /// its ONNX name; a small one a constant.
    fn materialize(&mut self, name: &str) -> Result<Value, OnnxError> {
        if let Some(v) = self.materialized.get(name) {
            return Ok(*v);
        }
        let Some(Val::Const(t)) = self.vals.get(name).cloned() else {
            unreachable!("materialize is called on known values only");
        };
        let small = t.numel() <= INLINE_LIMIT;
        let splat = t
            .data
            .iter()
            .all(|x| x.to_bits() == t.data.first().copied().unwrap_or(0.0).to_bits());
        let v = if self.scratch
            || (small && !self.inits.contains(name))
            || (splat && t.numel() > 0 && !self.inits.contains(name))
        {
            self.tensor_value(&t)
        } else {
            let ty = TensorType::of(
                t.dtype,
                &t.shape.iter().map(|&d| d as u64).collect::<Vec<_>>(),
            );
            let wname = if self
                .g
                .node_ids()
                .any(|id| self.g.node(id).results.iter().any(|r| r.name == name))
            {
                format!("{name}.weight")
            } else {
                name.to_string()
            };
            self.weights.insert(wname.clone(), (*t).clone());
            self.g.add_weight(&wname, ty)
        };
        self.materialized.insert(name.to_string(), v);
        Ok(v)
    }
}
