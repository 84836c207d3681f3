//! Lowering of the kernel plan to the kernel dialect
//! (`kiln_dialect::kernel`): one kernel per plan kernel, buffers for every
//! tensor in memory, launches in plan order. docs/kernels.md describes the
//! design.
//!
//! Each op has a compute definition ([`compute`]): the expression of one
//! result element at given index expressions, in terms of its operands'
//! elements. A kernel's body is its output's definition at the loop
//! variables `v0 ..`, operands inlined through the kernel's node tree
//! (TVM-style compute + inline): an operand in memory becomes a load, an
//! operand the kernel computes becomes its own definition at the operand's
//! indices. A contraction kernel whose tree is
//! `epilogue(matmul(prologue_a, prologue_b))` becomes a
//! [`Body::Contract`]; everything else is a [`Body::Map`] with reductions.

mod compute;
mod copies;
mod cx;
mod ex;
mod fragments;
mod igemm;
mod index;
mod movement;
mod nn;
mod pack;
mod pointwise;
mod quant;
mod run;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use kiln_dialect::DType;
use kiln_dialect::graph::{Graph, NodeId, Value};
use kiln_dialect::interp::tensor::round_value;
use kiln_dialect::kernel::{self, Body, Buffer, Expr, Launch, Program, Ty};
use kiln_dialect::ops::{Literal, Op};
use thiserror::Error;

use crate::extract::Kind;
use crate::plan::Plan;

pub use copies::forward_identity_copies;
pub use cx::ty_of;
pub use fragments::{FRAGMENT_COLS, FRAGMENT_DEPTH, fragment_index, order_int4_fragments};
pub use pack::{lay_out_weights, pack_contraction_weights, transpose_8bit_weights};
pub use run::{RunError, run_program};

/// Why a plan could not be lowered.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum LowerError {
    /// An op (or a use of it) the lowering does not handle.
    #[error("cannot lower `{op}` to %{value}: {ty} from ({operands}): {reason}")]
    Unsupported {
        op: &'static str,
        value: String,
        ty: String,
        operands: String,
        reason: String,
    },
    /// A plan that breaks the plan's own invariants.
    #[error("plan kernel {kernel} (%{value}): {reason}")]
    Plan {
        kernel: usize,
        value: String,
        reason: String,
    },
}

impl LowerError {
    fn unsupported(cx: &cx::Cx, v: Value, reason: &str) -> LowerError {
        let g = cx.g;
        let operands: Vec<String> = g
            .operands(v.node)
            .iter()
            .map(|o| format!("%{}: {}", g.value_name(*o), g.value_type(*o)))
            .collect();
        LowerError::Unsupported {
            op: g.node(v.node).op.mnemonic(),
            value: g.value_name(v).to_string(),
            ty: g.value_type(v).to_string(),
            operands: operands.join(", "),
            reason: reason.to_string(),
        }
    }
}

/// What a kernel computes: the plan's kernel, or a source (an `iota`, a
/// constant of symbolic shape) that has to be materialized.
struct Work<'a> {
    kind: Kind,
    output: Value,
    nodes: &'a [NodeId],
    bind_time: bool,
}

/// Lowers a kernel plan to a kernel program: one kernel per plan kernel (in
/// launch order, bind-time ones flagged), buffers for every graph input,
/// weight, constant and kernel output, the graph's outputs, and every
/// symbolic dim.
pub fn lower_plan(plan: &Plan) -> Result<Program, LowerError> {
    let g = &plan.graph;
    let igemm: &[DType] = crate::cost::target(plan.target).map_or(&[], |t| t.implicit_gemm_conv);
    let order = g.topo_order().map_err(|e| LowerError::Plan {
        kernel: 0,
        value: String::new(),
        reason: format!("the plan graph has a cycle: {}", e.0),
    })?;
    let owned: HashSet<NodeId> = plan.kernels.iter().flat_map(|k| k.nodes.clone()).collect();
    let mut p = Program {
        name: g.name.clone(),
        buffers: Vec::new(),
        inputs: Vec::new(),
        weights: Vec::new(),
        constants: Vec::new(),
        outputs: Vec::new(),
        dims: Vec::new(),
        launches: Vec::new(),
    };
    let mut buf_of: HashMap<Value, usize> = HashMap::new();
    let mut add_buffer = |p: &mut Program, v: Value| -> usize {
        *buf_of.entry(v).or_insert_with(|| {
            let ty = g.value_type(v);
            p.buffers.push(Buffer {
                name: g.value_name(v).to_string(),
                dtype: ty.dtype,
                shape: ty.shape.clone(),
            });
            p.buffers.len() - 1
        })
    };
    for v in g.inputs() {
        let b = add_buffer(&mut p, v);
        p.inputs.push(b);
    }
    for v in g.weights() {
        let b = add_buffer(&mut p, v);
        p.weights.push(b);
    }
    // Sources in memory: constants of static shape are program constants
    // (dense ones too when a kernel lists them); iotas and constants of
    // symbolic shape get a kernel of their own.
    let mut in_memory: HashSet<Value> = HashSet::new();
    let mut sources: Vec<NodeId> = Vec::new();
    for &id in &order {
        let node = g.node(id);
        let v = Value::of(id);
        let dense = matches!(
            node.op,
            Op::Constant {
                value: Literal::Dense(_)
            }
        );
        let free = !owned.contains(&id);
        match &node.op {
            Op::Constant { value } if free || dense => {
                let ty = g.value_type(v);
                let b = add_buffer(&mut p, v);
                if dense {
                    in_memory.insert(v);
                }
                match ty.shape.numel() {
                    Some(n) => {
                        let vals = (0..n as usize)
                            .map(|i| round_value(ty.dtype, value.get(i)))
                            .collect();
                        p.constants.push((b, vals));
                    }
                    None => sources.push(id),
                }
            }
            Op::Iota { .. } if free => {
                add_buffer(&mut p, v);
                sources.push(id);
            }
            _ => {}
        }
    }
    for k in &plan.kernels {
        add_buffer(&mut p, k.output);
    }
    let source_nodes: Vec<[NodeId; 1]> = sources.iter().map(|&id| [id]).collect();
    let mut work: Vec<Work> = source_nodes
        .iter()
        .map(|n| Work {
            kind: Kind::Elem,
            output: Value::of(n[0]),
            nodes: n,
            bind_time: g.value_type(Value::of(n[0])).shape.symbols().is_empty(),
        })
        .collect();
    work.extend(plan.kernels.iter().map(|k| Work {
        kind: k.kind,
        output: k.output,
        nodes: &k.nodes,
        bind_time: k.bind_time,
    }));
    for (i, w) in work.iter().enumerate() {
        let (kernel, inputs, views) = lower_kernel(g, w, &format!("k{i}"), &in_memory, igemm)?;
        let mut args = Vec::with_capacity(inputs.len());
        for v in inputs {
            let b = buf_of.get(&v).copied().ok_or_else(|| LowerError::Plan {
                kernel: i,
                value: g.value_name(w.output).to_string(),
                reason: format!("reads %{}, which no kernel writes", g.value_name(v)),
            })?;
            args.push(b);
        }
        let mut kernel = kernel::Kernel {
            inputs: args.iter().map(|&b| p.buffers[b].clone()).collect(),
            output: p.buffers[buf_of[&w.output]].clone(),
            ..kernel
        };
        for view in views {
            match view.input {
                Some(slot) => kernel.inputs[slot].shape = view.shape,
                None => kernel.output.shape = view.shape,
            }
        }
        let kernel = kernel::simplify::simplify(&with_buffer_dims(kernel));
        p.launches.push(Launch {
            kernel,
            args,
            out: buf_of[&w.output],
            bind_time: w.bind_time,
        });
    }
    for o in g.outputs() {
        let b = buf_of
            .get(&o.value)
            .copied()
            .ok_or_else(|| LowerError::Plan {
                kernel: 0,
                value: o.name.clone(),
                reason: "the output is computed by no kernel".into(),
            })?;
        p.outputs.push((o.name.clone(), b));
    }
    for b in &p.buffers {
        for s in b.shape.symbols() {
            if !p.dims.iter().any(|d| d == s) {
                p.dims.push(s.to_string());
            }
        }
    }
    Ok(p)
}

/// Adds the symbols of a kernel's buffer shapes to its dims (after the ones
/// its expressions use).
fn with_buffer_dims(mut k: kernel::Kernel) -> kernel::Kernel {
    let shapes: Vec<_> = k
        .inputs
        .iter()
        .chain(std::iter::once(&k.output))
        .map(|b| b.shape.clone())
        .collect();
    for s in &shapes {
        for d in s.symbols() {
            if !k.dims.iter().any(|x| x == d) {
                k.dims.push(d.to_string());
            }
        }
    }
    k
}

/// The float type of a kernel: f64 when it touches an f64 tensor.
fn float_type(g: &Graph, w: &Work) -> Ty {
    let mut values = vec![w.output];
    for &n in w.nodes {
        values.push(Value::of(n));
        values.extend(g.operands(n));
    }
    if values.iter().any(|&v| g.value_type(v).dtype == DType::F64) {
        Ty::F64
    } else {
        Ty::F32
    }
}

/// Lowers one kernel; returns it (with placeholder buffers), the values
/// its inputs are, in order, and the buffers it sees through views.
fn lower_kernel(
    g: &Graph,
    w: &Work,
    name: &str,
    in_memory: &HashSet<Value>,
    igemm: &[DType],
) -> Result<(kernel::Kernel, Vec<Value>, Vec<pointwise::View>), LowerError> {
    let inside: HashSet<NodeId> = w.nodes.iter().copied().collect();
    let float = float_type(g, w);
    let r = g.value_type(w.output).shape.rank();
    let idx: Vec<Expr> = (0..r).map(|i| Expr::Var(kernel::Var(i as u32))).collect();
    let contract = if w.kind == Kind::Contract {
        lower_contract(g, w, &inside, in_memory, float, &idx)?
    } else {
        None
    };
    let contract = match contract {
        None if w.kind == Kind::Attn => lower_attention(g, w, &inside, in_memory, float, &idx)?,
        c => c,
    };
    let conv = if w.kind == Kind::Contract && contract.is_none() {
        match pointwise::lower(g, w, &inside, in_memory, float)? {
            Some(c) => Some(c),
            None if !igemm.is_empty() => igemm::lower(g, w, &inside, in_memory, float, igemm)?,
            None => None,
        }
    } else {
        None
    };
    let (body, inputs, dims, views) = match (contract, conv) {
        (Some((body, inputs, dims)), _) => (body, inputs, dims, Vec::new()),
        (None, Some(c)) => c,
        (None, None) => {
            let mut cx = cx::Cx::new(g, &inside, in_memory, float, r);
            let expr = cx.at(w.output, &idx)?;
            (Body::Map { expr }, cx.inputs, cx.dims, Vec::new())
        }
    };
    let placeholder = Buffer {
        name: String::new(),
        dtype: DType::F32,
        shape: kiln_dialect::Shape(vec![]),
    };
    Ok((
        kernel::Kernel {
            name: name.to_string(),
            inputs: Vec::new(),
            output: placeholder,
            dims,
            float,
            body,
        },
        inputs,
        views,
    ))
}

type Lowered = (Body, Vec<Value>, Vec<String>);

/// The kernel's one node whose op `is` picks, when there is exactly one.
fn sole_node(g: &Graph, w: &Work, is: impl Fn(&Op) -> bool) -> Option<NodeId> {
    let mut picked = w.nodes.iter().copied().filter(|&n| is(&g.node(n).op));
    let first = picked.next()?;
    picked.next().is_none().then_some(first)
}

/// The kernel's output at `idx` with `v` standing for the accumulator
/// (`Expr::Acc`), or `None` when the output reads `v` anywhere but at its
/// own index.
fn epilogue_over(
    cx: &mut cx::Cx,
    w: &Work,
    v: Value,
    idx: &[Expr],
) -> Result<Option<Expr>, LowerError> {
    cx.acc = Some((v, idx.to_vec()));
    let e = cx.at(w.output, idx)?;
    let escaped = cx.acc_escaped;
    cx.acc = None;
    Ok((!escaped).then_some(e))
}

/// `epilogue(attention(q, k, v[, mask]))` as the attention template, when
/// the kernel has one attention node whose result the epilogue reads only
/// at the output's own index.
fn lower_attention(
    g: &Graph,
    w: &Work,
    inside: &HashSet<NodeId>,
    in_memory: &HashSet<Value>,
    float: Ty,
    idx: &[Expr],
) -> Result<Option<Lowered>, LowerError> {
    let Some(a) = sole_node(g, w, |op| matches!(op, Op::Attention { .. })) else {
        return Ok(None);
    };
    let av = Value::of(a);
    if g.value_type(av).shape != g.value_type(w.output).shape || idx.len() != 4 {
        return Ok(None);
    }
    let mut cx = cx::Cx::new(g, inside, in_memory, float, idx.len());
    let Some(epilogue) = epilogue_over(&mut cx, w, av, idx)? else {
        return Ok(None);
    };
    let t = nn::attention_template(&mut cx, av, idx, epilogue)?;
    Ok(Some((Body::Attention(Box::new(t)), cx.inputs, cx.dims)))
}

/// `epilogue(matmul(a, b))` as a contraction template, when the kernel has
/// one matmul of operands of rank 2 or more, whose result the epilogue
/// reads only at the output's own index.
fn lower_contract(
    g: &Graph,
    w: &Work,
    inside: &HashSet<NodeId>,
    in_memory: &HashSet<Value>,
    float: Ty,
    idx: &[Expr],
) -> Result<Option<Lowered>, LowerError> {
    let Some(m) = sole_node(g, w, |op| matches!(op, Op::Matmul { .. })) else {
        return Ok(None);
    };
    let Op::Matmul {
        transpose_a,
        transpose_b,
    } = g.node(m).op
    else {
        return Ok(None);
    };
    let mv = Value::of(m);
    let ops = g.operands(m);
    let r = idx.len();
    if g.value_type(ops[0]).shape.rank() < 2
        || g.value_type(ops[1]).shape.rank() < 2
        || g.value_type(mv).shape != g.value_type(w.output).shape
        || r < 2
    {
        return Ok(None);
    }
    let mut cx = cx::Cx::new(g, inside, in_memory, float, r);
    let Some(epilogue) = epilogue_over(&mut cx, w, mv, idx)? else {
        return Ok(None);
    };
    let k = cx.fresh();
    let (ai, bi, extent) = nn::matmul_operands(
        &mut cx,
        mv,
        idx,
        ops[0],
        ops[1],
        transpose_a,
        transpose_b,
        Expr::Var(k),
    )?;
    let a = cx.at(ops[0], &ai)?;
    let b = cx.at(ops[1], &bi)?;
    let (ta, tb) = (cx.ty_of(ops[0]), cx.ty_of(ops[1]));
    let (a, b) = if ta == tb {
        (a, b)
    } else {
        (cx.to_float(a, ta), cx.to_float(b, tb))
    };
    let body = Body::Contract {
        k,
        extent,
        a,
        b,
        epilogue,
    };
    Ok(Some((body, cx.inputs, cx.dims)))
}
