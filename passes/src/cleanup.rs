//! Cleanup passes: dead-code elimination and common-subexpression
//! elimination. Both keep the graph's interface (inputs, weights, outputs)
//! and its values: the tests check outputs against the interpreter.

use std::collections::HashMap;

use kiln_dialect::graph::{Graph, NodeId, Value};
use kiln_dialect::ops::Op;

/// Removes every node that no output depends on (inputs and weights stay,
/// they are the interface). Returns the number removed.
pub fn dead_code(g: &mut Graph) -> usize {
    g.remove_dead_nodes()
}

/// Merges nodes that apply the same op, with the same attributes, to the
/// same operands and give the same result types: later copies' results are
/// replaced by the first one's. Inputs and weights are never merged.
/// Returns the number of nodes removed.
pub fn common_subexpressions(g: &mut Graph) -> usize {
    let Ok(order) = g.topo_order() else { return 0 };
    let mut seen: HashMap<String, NodeId> = HashMap::new();
    let mut removed = 0;
    for id in order {
        let node = g.node(id);
        if let Op::Input | Op::Weight = node.op {
            continue;
        }
        let key = node_key(g, id);
        match seen.get(&key) {
            Some(&first) => {
                let ports = g.node(id).results.len() as u32;
                for port in 0..ports {
                    g.replace_all_uses(Value { node: id, port }, Value { node: first, port });
                }
                g.remove_node(id);
                removed += 1;
            }
            None => {
                seen.insert(key, id);
            }
        }
    }
    removed
}

/// A node's identity for CSE: op, attributes (as printed, so `f64`s compare
/// by their exact text), result types and operand values.
fn node_key(g: &Graph, id: NodeId) -> String {
    let node = g.node(id);
    let attrs: Vec<String> = node
        .op
        .attrs()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let types: Vec<String> = node.results.iter().map(|r| r.ty.to_string()).collect();
    let operands: Vec<String> = g
        .operands(id)
        .iter()
        .map(|v| format!("{}:{}", v.node.index(), v.port))
        .collect();
    format!(
        "{}|{}|{}|{}",
        node.op.mnemonic(),
        attrs.join(","),
        types.join(","),
        operands.join(",")
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use kiln_dialect::DType;
    use kiln_dialect::interp::{Tensor, run};
    use kiln_dialect::text::{parse, print};
    use kiln_dialect::verify::verify;

    use super::*;

    const SRC: &str = "graph g {
  input %x: f32[5]
  %a: f32[5] = exp(%x)
  %b: f32[5] = exp(%x)
  %c: f32[5] = add(%a, %b)
  %d: f32[5] = leaky_relu(%c) {alpha = 0.1}
  %e: f32[5] = leaky_relu(%c) {alpha = 0.2}
  %f: f32[5] = add(%d, %e)
  %unused: f32[5] = tanh(%f)
  output f = %f
}
";

    fn inputs() -> HashMap<String, Tensor> {
        let x = Tensor::new(DType::F32, &[5], vec![-2.0, -0.5, 0.25, 1.0, 3.0]);
        HashMap::from([("x".to_string(), x)])
    }

    #[test]
    fn cse_merges_equal_nodes_only_and_keeps_values() {
        let mut g = parse(SRC).unwrap();
        let before = run(&g, &inputs()).unwrap();
        assert_eq!(
            common_subexpressions(&mut g),
            1,
            "the two exp(%x) merge; the leaky_relus differ in alpha"
        );
        verify(&g).unwrap();
        assert!(
            print(&g).contains("%c: f32[5] = add(%a, %a)"),
            "{}",
            print(&g)
        );
        assert_eq!(run(&g, &inputs()).unwrap(), before);
    }

    #[test]
    fn dce_removes_what_no_output_uses() {
        let mut g = parse(SRC).unwrap();
        let before = run(&g, &inputs()).unwrap();
        assert_eq!(dead_code(&mut g), 1);
        assert!(!print(&g).contains("%unused"));
        assert_eq!(run(&g, &inputs()).unwrap(), before);
        // inputs stay even when unused
        let mut g =
            parse("graph g {\n  input %x: f32[2]\n  input %y: f32[2]\n  output x = %x\n}\n")
                .unwrap();
        assert_eq!(dead_code(&mut g), 0);
        assert_eq!(g.inputs().len(), 2);
    }
}
