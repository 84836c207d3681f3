//! The e-class analysis: every class knows its tensor type (dtype, shape,
//! layout), whether it is a splat constant, and whether it depends on
//! weights and constants only (then it is computed when weights are bound,
//! never at run time).

use std::collections::HashMap;

use egg::{DidMerge, EGraph, Id};
use kiln_dialect::TensorType;
use kiln_dialect::infer::infer;
use kiln_dialect::interp::tensor::round_value;
use kiln_dialect::ops::{Literal, Op, OpClass};

use super::lang::{Head, KNode, OpTable};

/// Facts about an e-class.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassData {
    pub ty: TensorType,
    /// Every element has this value (a constant, or a broadcast of one).
    pub splat: Option<f64>,
    /// Computable from weights and constants alone.
    pub weight_only: bool,
}

/// The analysis, which also owns the op table.
#[derive(Clone, Debug, Default)]
pub struct Meta {
    pub ops: OpTable,
    /// The rule that made each class a rule's right-hand side created (for
    /// `kiln explain`; keys are the class ids at creation).
    pub made_by: HashMap<Id, &'static str>,
}

/// The e-graph of the optimizer.
pub type KGraph = EGraph<KNode, Meta>;

impl Meta {
    /// The type an e-node would have, or why it is ill-typed.
    pub fn type_of(egraph: &KGraph, node: &KNode) -> Result<TensorType, String> {
        match node.head {
            Head::Mat => Ok(egraph[node.args[0]].data.ty.clone()),
            Head::Op(id) => {
                let e = egraph.analysis.ops.get(id);
                let tys: Vec<&TensorType> = node.args.iter().map(|a| &egraph[*a].data.ty).collect();
                match infer(&e.op, &tys, e.declared.as_ref()) {
                    Ok(mut v) if v.len() == 1 => Ok(v.remove(0)),
                    Ok(v) => Err(format!(
                        "`{}` gives {} results; the e-graph holds single-result ops",
                        e.op.mnemonic(),
                        v.len()
                    )),
                    Err(err) => Err(err.to_string()),
                }
            }
        }
    }
}

impl egg::Analysis<KNode> for Meta {
    type Data = ClassData;

    fn make(egraph: &mut KGraph, node: &KNode, _id: Id) -> ClassData {
        let ty = match Meta::type_of(egraph, node) {
            Ok(t) => t,
            // Nodes are type-checked before they are added (see `add_checked`).
            Err(e) => panic!("ill-typed e-node {node:?}: {e}"),
        };
        let child = |i: usize| &egraph[node.args[i]].data;
        let (splat, weight_only) = match node.head {
            Head::Mat => (child(0).splat, child(0).weight_only),
            Head::Op(id) => {
                let op = &egraph.analysis.ops.get(id).op;
                let splat = if let Op::Constant { value } = op {
                    match value {
                        Literal::Splat(x) => Some(round_value(ty.dtype, *x)),
                        Literal::Dense(v) => (!v.is_empty()
                            && v.iter().all(|x| x.to_bits() == v[0].to_bits()))
                        .then(|| round_value(ty.dtype, v[0])),
                    }
                } else if let Op::Expand { .. }
                | Op::Reshape { .. }
                | Op::Transpose { .. }
                | Op::Squeeze { .. }
                | Op::Unsqueeze { .. } = op
                {
                    child(0).splat
                } else {
                    None
                };
                let weight_only = match op.class() {
                    OpClass::Source => !matches!(op, Op::Input),
                    OpClass::Elementwise
                    | OpClass::Reduce
                    | OpClass::RowNorm
                    | OpClass::ChannelNorm
                    | OpClass::Matmul
                    | OpClass::Conv
                    | OpClass::Attention
                    | OpClass::Pool
                    | OpClass::Movement
                    | OpClass::Quant => node.args.iter().all(|a| egraph[*a].data.weight_only),
                };
                (splat, weight_only)
            }
        };
        // A value whose shape names a symbolic dim is sized at run time, so
        // it cannot be computed when weights are bound.
        let weight_only = weight_only && ty.shape.as_static().is_some();
        ClassData {
            ty,
            splat,
            weight_only,
        }
    }

    fn merge(&mut self, a: &mut ClassData, b: ClassData) -> DidMerge {
        debug_assert_eq!(a.ty, b.ty, "merged classes must have one type");
        let mut changed_a = false;
        let mut changed_b = false;
        if a.splat.is_none() && b.splat.is_some() {
            a.splat = b.splat;
            changed_a = true;
        } else if a.splat.is_some() && b.splat.is_none() {
            changed_b = true;
        }
        if !a.weight_only && b.weight_only {
            a.weight_only = true;
            changed_a = true;
        } else if a.weight_only && !b.weight_only {
            changed_b = true;
        }
        DidMerge(changed_a, changed_b)
    }
}

/// Adds a node after checking its type; `None` (and nothing added) when
/// the node would be ill-typed. Rules add their right-hand sides this way.
pub fn add_checked(egraph: &mut KGraph, node: KNode) -> Option<Id> {
    Meta::type_of(egraph, &node).ok()?;
    Some(egraph.add(node))
}

/// Interns an op and adds it over `args`, type-checked.
pub fn add_op(egraph: &mut KGraph, op: Op, args: Vec<Id>) -> Option<Id> {
    let id = egraph.analysis.ops.intern(op, None, None);
    add_checked(egraph, KNode::op(id, args))
}

/// Adds a scalar constant of `dtype` (shape `[]`).
pub fn add_scalar(egraph: &mut KGraph, x: f64, dtype: kiln_dialect::DType) -> Id {
    let ty = TensorType::new(dtype, kiln_dialect::Shape::scalar());
    let id = egraph.analysis.ops.intern(
        Op::Constant {
            value: Literal::Splat(x),
        },
        None,
        Some(ty),
    );
    egraph.add(KNode::op(id, vec![]))
}
