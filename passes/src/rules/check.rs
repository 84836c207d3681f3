//! Checking a rule against the reference interpreter: the rule is applied
//! once to the output of a small graph, both sides are turned into graphs,
//! and the two are evaluated on the same fresh random inputs.

use std::collections::HashMap;

use egg::Id;
use kiln_dialect::graph::{Graph, Value, ValueInfo};
use kiln_dialect::interp::{Tensor, run};
use kiln_dialect::ops::Op;
use kiln_dialect::verify::verify;
use kiln_dialect::{DType, Shape, TensorType};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::{Rhs, Rule};
use crate::egraph::convert::{self, Loaded};
use crate::egraph::lang::{Head, KNode};

/// What a check found.
#[derive(Debug)]
pub struct Checked {
    /// The largest difference between the two sides, relative to the
    /// largest magnitude of the left side's outputs.
    pub max_rel_diff: f64,
    pub seed: u64,
}

/// Applies `rule` to the node computing `src`'s single output (the graph
/// must contain the rule's left-hand side there) and compares both sides on
/// random inputs drawn from `seed`. Symbolic dims are bound to 3. With
/// `mats`, the graph is loaded as for kernel formation (every use through
/// `mat`), for the fusion rules.
pub fn check_rule(rule: &Rule, src: &str, seed: u64, mats: bool) -> Result<Checked, String> {
    let g = kiln_dialect::text::parse(src).map_err(|e| e.to_string())?;
    verify(&g).map_err(|e| format!("{e:?}"))?;
    let l = convert::load(&g, mats);
    let mut out = l.egraph.find(l.outputs[0].1);
    // every class of a freshly loaded graph has exactly one node
    let choice: HashMap<Id, KNode> = l
        .egraph
        .classes()
        .map(|c| (c.id, c.nodes[0].clone()))
        .collect();
    if is_mat(&choice[&out]) {
        out = l.egraph.find(choice[&out].args[0]);
    }
    let node = choice[&out].clone();
    let rhs = (rule.apply)(&l.egraph, &node).ok_or_else(|| {
        format!(
            "rule `{}` does not apply to the output of:\n{src}",
            rule.name
        )
    })?;
    let (lhs_graph, made) = convert::to_graph(&l, &choice);
    let rhs_graph = graph_of_rhs(&l, &lhs_graph, &made, &rhs)?;
    let bindings = random_bindings(&lhs_graph, seed);
    let a = run(&lhs_graph, &bindings).map_err(|e| format!("left side: {e}"))?;
    let b = run(&rhs_graph, &bindings)
        .map_err(|e| format!("right side: {e}\n{}", kiln_dialect::text::print(&rhs_graph)))?;
    let (ta, tb) = (&a[0].1, &b[0].1);
    if ta.shape != tb.shape || ta.dtype != tb.dtype {
        return Err(format!(
            "types differ: {}{:?} vs {}{:?}",
            ta.dtype, ta.shape, tb.dtype, tb.shape
        ));
    }
    let scale = ta
        .data
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1e-30);
    let diff = ta.max_abs_diff(tb);
    if ta
        .data
        .iter()
        .zip(&tb.data)
        .any(|(x, y)| x.is_nan() != y.is_nan())
    {
        return Err("NaN on one side only".into());
    }
    Ok(Checked {
        max_rel_diff: diff / scale,
        seed,
    })
}

/// The left graph with its output replaced by the rule's right-hand side.
fn graph_of_rhs(
    l: &Loaded,
    lhs: &Graph,
    made: &HashMap<Id, Value>,
    rhs: &Rhs,
) -> Result<Graph, String> {
    let mut g = lhs.clone();
    let v = add_rhs(l, &mut g, made, rhs)?;
    let name = g.outputs()[0].name.clone();
    g.outputs_mut().clear();
    g.add_output(&name, v);
    g.remove_dead_nodes();
    verify(&g).map_err(|e| format!("right side does not verify: {e:?}"))?;
    Ok(g)
}

fn add_rhs(
    l: &Loaded,
    g: &mut Graph,
    made: &HashMap<Id, Value>,
    rhs: &Rhs,
) -> Result<Value, String> {
    match rhs {
        Rhs::Class(c) => made
            .get(&l.egraph.find(*c))
            .copied()
            .ok_or_else(|| format!("class {c} is not in the left graph")),
        Rhs::Scalar(x, dt) => {
            let name = g.fresh_name();
            let id = g.add_node(
                Op::Constant {
                    value: kiln_dialect::ops::Literal::Splat(*x),
                },
                &[],
                vec![ValueInfo {
                    name,
                    ty: TensorType::new(*dt, Shape::scalar()),
                }],
            );
            Ok(Value::of(id))
        }
        Rhs::Op(op, args) => {
            let vals = args
                .iter()
                .map(|a| add_rhs(l, g, made, a))
                .collect::<Result<Vec<_>, _>>()?;
            g.add1(op.clone(), &vals)
                .map_err(|e| format!("right side: {e}"))
        }
    }
}

/// Random inputs and weights for a graph: normal floats, small integers;
/// symbolic dims are 3.
pub fn random_bindings(g: &Graph, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::new();
    let syms: HashMap<String, usize> = g
        .inputs()
        .into_iter()
        .chain(g.weights())
        .flat_map(|v| {
            g.value_type(v)
                .shape
                .symbols()
                .into_iter()
                .map(|s| (s.to_string(), 3))
                .collect::<Vec<_>>()
        })
        .collect();
    for v in g.inputs().into_iter().chain(g.weights()) {
        let ty = g.value_type(v);
        let shape = ty.shape.resolve(&syms).expect("symbols bound");
        let n: usize = shape.iter().product();
        let data: Vec<f64> = (0..n)
            .map(|_| match ty.dtype {
                d if d.is_float() => rng.sample::<f64, _>(StandardNormal),
                DType::Bool => rng.random_range(0..2) as f64,
                _ => rng.random_range(-3..4) as f64,
            })
            .collect();
        out.insert(
            g.value_name(v).to_string(),
            Tensor::new(ty.dtype, &shape, data),
        );
    }
    out
}

/// Whether `n` is a `mat` node (for tests of later phases).
pub fn is_mat(n: &KNode) -> bool {
    matches!(n.head, Head::Mat)
}
