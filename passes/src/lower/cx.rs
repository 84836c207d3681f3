//! The lowering context of one kernel: which values are computed inside it,
//! which buffers it reads, its symbolic dims and fresh index variables; and
//! the accessor that gives any value's element at given indices, a load
//! when the value is in memory and its inlined definition when the kernel
//! computes it.

use std::collections::{HashMap, HashSet};

use kiln_dialect::graph::{Graph, NodeId, Value};
use kiln_dialect::kernel::{Expr, Ty, Var};
use kiln_dialect::ops::{Literal, Op};
use kiln_dialect::shape::{Dim, Shape};
use kiln_dialect::{DType, TensorType};

use super::LowerError;
use super::ex;

/// The kernel-level type a value of `dtype` has in expressions: bools are
/// bools, integer codes are i64, every other type is the float type.
pub fn ty_of(dtype: DType, float: Ty) -> Ty {
    if dtype == DType::Bool {
        Ty::Bool
    } else if dtype.has_integer_values() {
        Ty::I64
    } else {
        float
    }
}

/// One kernel being lowered.
pub struct Cx<'a> {
    pub g: &'a Graph,
    /// Nodes the kernel computes (everything else is read from memory).
    inside: &'a HashSet<NodeId>,
    /// Values in memory although a kernel lists their node (dense constants).
    in_memory: &'a HashSet<Value>,
    /// The kernel's input buffers, in first-use order.
    pub inputs: Vec<Value>,
    /// Symbolic dims, in first-use order: `Expr::Dim(i)` is `dims[i]`.
    pub dims: Vec<String>,
    next_var: u32,
    /// The float compute type.
    pub float: Ty,
    /// When lowering a contraction's epilogue: the contraction's value and
    /// the output indices at which it stands for the accumulator.
    pub acc: Option<(Value, Vec<Expr>)>,
    /// Set when the accumulator's value was asked for at other indices.
    pub acc_escaped: bool,
    /// Operands of each node (cached).
    operands: HashMap<NodeId, Vec<Value>>,
}

impl<'a> Cx<'a> {
    pub fn new(
        g: &'a Graph,
        inside: &'a HashSet<NodeId>,
        in_memory: &'a HashSet<Value>,
        float: Ty,
        out_rank: usize,
    ) -> Cx<'a> {
        Cx {
            g,
            inside,
            in_memory,
            inputs: Vec::new(),
            dims: Vec::new(),
            next_var: out_rank as u32,
            float,
            acc: None,
            acc_escaped: false,
            operands: HashMap::new(),
        }
    }

    /// A variable no other expression of the kernel uses.
    pub fn fresh(&mut self) -> Var {
        let v = Var(self.next_var);
        self.next_var += 1;
        v
    }

    pub fn ty(&self, v: Value) -> &'a TensorType {
        self.g.value_type(v)
    }

    pub fn shape(&self, v: Value) -> &'a Shape {
        &self.g.value_type(v).shape
    }

    pub fn dtype(&self, v: Value) -> DType {
        self.g.value_type(v).dtype
    }

    /// The expression type of a value's elements.
    pub fn ty_of(&self, v: Value) -> Ty {
        ty_of(self.dtype(v), self.float)
    }

    /// The size of a dim: a constant, or the kernel's run-time dim.
    pub fn dim(&mut self, d: &Dim) -> Expr {
        match d {
            Dim::Static(n) => ex::int(*n as i64),
            Dim::Sym(s) => Expr::Dim(self.dim_index(s)),
        }
    }

    /// Interns a symbolic dim.
    pub fn dim_index(&mut self, s: &str) -> u32 {
        match self.dims.iter().position(|d| d == s) {
            Some(i) => i as u32,
            None => {
                self.dims.push(s.to_string());
                (self.dims.len() - 1) as u32
            }
        }
    }

    /// The sizes of a value's axes.
    pub fn dims_of(&mut self, v: Value) -> Vec<Expr> {
        let shape = self.shape(v);
        shape.dims().iter().map(|d| self.dim(d)).collect()
    }

    pub fn operands(&mut self, n: NodeId) -> Vec<Value> {
        let g = self.g;
        self.operands
            .entry(n)
            .or_insert_with(|| g.operands(n))
            .clone()
    }

    /// Whether the kernel reads `v` from memory.
    pub fn is_memory(&self, v: Value) -> bool {
        !self.inside.contains(&v.node) || self.in_memory.contains(&v)
    }

    /// The kernel input index of a value in memory.
    pub fn input(&mut self, v: Value) -> usize {
        match self.inputs.iter().position(|x| *x == v) {
            Some(i) => i,
            None => {
                self.inputs.push(v);
                self.inputs.len() - 1
            }
        }
    }

    /// The element of `v` at `idx`: a load, or the inlined definition.
    pub fn at(&mut self, v: Value, idx: &[Expr]) -> Result<Expr, LowerError> {
        if let Some((acc_v, acc_idx)) = &self.acc
            && *acc_v == v
        {
            // An axis of size 1 has one index, whatever its expression
            // (broadcasting reads it as 0).
            let shape = &self.g.value_type(v).shape.0;
            let same = acc_idx.len() == idx.len()
                && acc_idx
                    .iter()
                    .zip(idx)
                    .zip(shape)
                    .all(|((x, y), d)| x == y || *d == kiln_dialect::Dim::Static(1));
            if same {
                return Ok(Expr::Acc);
            }
            self.acc_escaped = true;
        }
        if self.is_memory(v) {
            let input = self.input(v);
            return Ok(Expr::load(input, idx.to_vec()));
        }
        let node = self.g.node(v.node);
        if let Op::Constant {
            value: Literal::Splat(x),
        } = &node.op
        {
            return Ok(self.number(self.dtype(v), *x));
        }
        super::compute::define(self, v, idx)
    }

    /// The element of `v` at `idx` where `valid` holds, 0 (false) elsewhere;
    /// the index may be outside `v`'s shape only where `valid` is false. A
    /// value in memory is a guarded load; a computed one reads at the index
    /// clamped into the shape, and a select discards it.
    pub fn at_guarded(&mut self, v: Value, idx: &[Expr], valid: Expr) -> Result<Expr, LowerError> {
        if matches!(valid, Expr::Bool(true)) {
            return self.at(v, idx);
        }
        if self.is_memory(v) && self.acc.is_none() {
            let input = self.input(v);
            return Ok(Expr::Load {
                input,
                index: idx.to_vec(),
                guard: Some(Box::new(valid)),
            });
        }
        let dims = self.dims_of(v);
        let clamped: Vec<Expr> = idx
            .iter()
            .zip(dims)
            .map(|(i, n)| ex::clamp_index(i.clone(), n))
            .collect();
        let x = self.at(v, &clamped)?;
        let zero = self.zero(self.dtype(v));
        Ok(ex::select(valid, x, zero))
    }

    /// A constant of the expression type of `dtype`.
    pub fn number(&self, dtype: DType, x: f64) -> Expr {
        match ty_of(dtype, self.float) {
            Ty::Bool => Expr::Bool(x != 0.0),
            Ty::I64 => ex::int(if x.is_nan() { 0 } else { x as i64 }),
            Ty::F32 | Ty::F64 => ex::float(x),
        }
    }

    pub fn zero(&self, dtype: DType) -> Expr {
        self.number(dtype, 0.0)
    }

    /// `e` (of expression type `from`) converted to the float type.
    pub fn to_float(&self, e: Expr, from: Ty) -> Expr {
        match from {
            Ty::F32 | Ty::F64 => e,
            Ty::I64 | Ty::Bool => ex::cast(self.float, e),
        }
    }

    /// The element of `v` at `idx`, as a float.
    pub fn at_float(&mut self, v: Value, idx: &[Expr]) -> Result<Expr, LowerError> {
        let e = self.at(v, idx)?;
        Ok(self.to_float(e, self.ty_of(v)))
    }
}
