//! Shape specialization: a graph with some of its symbolic dims fixed to
//! sizes, so that every kernel compiled from it knows them (a decode step's
//! `m = 1` makes a projection a GEMV; tiles and unrolling can be chosen for
//! the real sizes). The specialized graph computes what the original does
//! for inputs of those sizes and refuses others (their shapes no longer
//! match the inputs' static types).

use std::collections::HashMap;

use crate::graph::Graph;
use crate::ops::Op;
use crate::shape::{Dim, Shape};
use crate::verify::{VerifyError, verify};

/// Why a graph could not be specialized.
#[derive(Debug, thiserror::Error)]
pub enum SpecializeError {
    /// A size for a dim the graph does not have.
    #[error("--dim {name}={size}: the model has no symbolic dim `{name}` (its dims: {known})")]
    UnknownDim {
        name: String,
        size: u64,
        known: String,
    },
    /// The sizes contradict the graph (a dim set to a size a static axis
    /// it must equal does not have).
    #[error("the model does not hold at {sizes}: {}", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Inconsistent {
        sizes: String,
        errors: Vec<VerifyError>,
    },
}

fn fix(shape: &mut [Dim], sizes: &HashMap<String, u64>) {
    for d in shape {
        if let Dim::Sym(s) = d
            && let Some(&n) = sizes.get(s.as_str())
        {
            *d = Dim::Static(n);
        }
    }
}

/// The symbolic dims `g` names, sorted.
pub fn symbols(g: &Graph) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in g.node_ids() {
        let node = g.node(id);
        let mut note = |shape: &[Dim]| {
            for d in shape {
                if let Dim::Sym(s) = d
                    && !out.contains(s)
                {
                    out.push(s.clone());
                }
            }
        };
        for r in &node.results {
            note(&r.ty.shape.0);
        }
        if let Op::Reshape { shape } | Op::Expand { shape } = &node.op {
            note(shape);
        }
    }
    out.sort();
    out
}

/// `g` with every symbolic dim named in `sizes` replaced by its size: in
/// every value's type and in the target shapes of `reshape` and `expand`.
/// The result is verified; sizes the graph contradicts are an error that
/// says where.
pub fn specialize(g: &Graph, sizes: &HashMap<String, u64>) -> Result<Graph, SpecializeError> {
    let known = symbols(g);
    let mut names: Vec<&String> = sizes.keys().collect();
    names.sort();
    for name in &names {
        if !known.contains(name) {
            return Err(SpecializeError::UnknownDim {
                name: (*name).clone(),
                size: sizes[*name],
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        }
    }
    let mut out = g.clone();
    let ids: Vec<_> = out.node_ids().collect();
    for id in ids {
        let node = out.node_mut(id);
        for r in &mut node.results {
            fix(&mut r.ty.shape.0, sizes);
        }
        if let Op::Reshape { shape } | Op::Expand { shape } = &mut node.op {
            fix(shape, sizes);
        }
    }
    verify(&out).map_err(|errors| SpecializeError::Inconsistent {
        sizes: names
            .iter()
            .map(|n| format!("{n}={}", sizes[*n]))
            .collect::<Vec<_>>()
            .join(", "),
        errors,
    })?;
    Ok(out)
}

/// A shape with the sizes of `sizes` put in.
pub fn specialize_shape(s: &Shape, sizes: &HashMap<String, u64>) -> Shape {
    let mut s = s.clone();
    fix(&mut s.0, sizes);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;
    use crate::interp;
    use crate::interp::Tensor;
    use crate::text::parse;

    const G: &str = "graph g {
  input %x: f32[batch, seq, 8]
  weight %w: f32[8, 4]
  %h: f32[batch, seq, 4] = matmul(%x, %w)
  %r: f32[batch, seq, 2, 2] = reshape(%h) {shape = [batch, seq, 2, 2]}
  output y = %r
}
";

    #[test]
    fn fixed_dims_become_static_everywhere() {
        let g = parse(G).unwrap();
        assert_eq!(symbols(&g), ["batch", "seq"]);
        let sizes = HashMap::from([("batch".to_string(), 1), ("seq".to_string(), 3)]);
        let s = specialize(&g, &sizes).unwrap();
        let text = crate::text::print(&s);
        assert!(text.contains("input %x: f32[1, 3, 8]"), "{text}");
        assert!(
            text.contains("reshape(%h) {shape = [1, 3, 2, 2]}"),
            "{text}"
        );
        assert!(symbols(&s).is_empty());
        // the same values as the original at those sizes
        let mut rng = 0.37f64;
        let mut next = || {
            rng = (rng * 9301.0 + 0.49297).fract();
            rng - 0.5
        };
        let x = Tensor::new(DType::F32, &[1, 3, 8], (0..24).map(|_| next()).collect());
        let w = Tensor::new(DType::F32, &[8, 4], (0..32).map(|_| next()).collect());
        let b = HashMap::from([("x".to_string(), x), ("w".to_string(), w)]);
        assert_eq!(interp::run(&g, &b).unwrap(), interp::run(&s, &b).unwrap());
        // one dim only: the other stays symbolic
        let s = specialize(&g, &HashMap::from([("seq".to_string(), 5)])).unwrap();
        assert_eq!(symbols(&s), ["batch"]);
    }

    #[test]
    fn unknown_and_contradicting_sizes_are_errors() {
        let g = parse(G).unwrap();
        let e = specialize(&g, &HashMap::from([("btach".to_string(), 1)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no symbolic dim `btach`") && e.contains("batch, seq"),
            "{e}"
        );
        let g2 = parse(
            "graph h {
  input %x: f32[n, 4]
  input %y: f32[4, 4]
  %z: f32[n, 4] = add(%x, %y)
  output z = %z
}
",
        );
        // `n` broadcasts against 4: only 1 or 4 hold
        let g2 = g2.unwrap();
        assert!(specialize(&g2, &HashMap::from([("n".to_string(), 4)])).is_ok());
        let e = specialize(&g2, &HashMap::from([("n".to_string(), 3)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not hold at n=3"), "{e}");
    }
}
