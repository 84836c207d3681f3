//! Activation-aware per-input-channel scales (the scaling half of AWQ).
//!
//! For weights `w_i: [k, n]` that all read the same activations `x` (the
//! query, key and value projections after one norm), `x @ w_i = (x / s) @
//! (s w_i)` for any positive `s` of length `k`, one factor per input
//! channel. Quantizing `s w_i` instead of `w_i` gives the input channels
//! whose activations are large finer steps (their rows are scaled up, so
//! they take more of each group's range) at the expense of the others. The
//! division `x / s` costs nothing when it folds into what makes `x`:
//!
//! - a norm's weights: `x = norm(h) * gamma (+ beta)`, so `gamma / s` (and
//!   `beta / s`) give `x / s`;
//! - the columns of an earlier matmul: `x = a * (h @ v)` (a SwiGLU's up
//!   projection), so dividing column `c` of `v` by `s_c` gives `x / s`.
//!
//! The search tries `s_c = mean|x_c|^alpha` (normalized so that
//! `sqrt(max s * min s) = 1`) for `alpha` in [`ALPHAS`] and keeps the one
//! whose quantization error as the matmuls see it is least,
//! `sum_i trace(D_i^T (X^T X) D_i)` with `D_i = w_i - deq(Q(s w_i)) / s`.
//! `alpha = 0` is `s = 1`, round to nearest, so the choice is never worse on
//! the calibration activations.

use std::collections::HashMap;

use kiln_dialect::interp::Tensor;
use kiln_dialect::ops::Op;
use kiln_dialect::{Graph, Value};

use super::{QuantizeError, Recipe, dequantize_values, quantize_calibrated, quantize_weight};

/// The exponents the search tries (AWQ's grid of 20).
pub const ALPHAS: [f64; 20] = [
    0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8,
    0.85, 0.9, 0.95,
];

/// The smallest mean activation magnitude a channel's scale is taken from.
const MIN_MEAN: f64 = 1e-4;

/// Where `x / s` is folded.
#[derive(Clone, Debug, PartialEq)]
pub enum Fold {
    /// `x = rms_norm(h, gamma)` or `layer_norm(h, gamma, beta)` over the
    /// last axis: `gamma` (and `beta`) divided by `s`.
    Norm { gamma: String, beta: Option<String> },
    /// `x = a * (h @ v)`: the columns of `v` divided by `s`.
    Columns { weight: String },
}

/// Weights that read the same activations, and where their scale folds.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleGroup {
    pub fold: Fold,
    /// The weights (`[k, n]`, used as `x @ w`), in graph order.
    pub weights: Vec<String>,
}

/// A weight's name if `v` is a plain weight, else `None`.
fn weight_name(g: &Graph, v: Value) -> Option<String> {
    matches!(g.node(v.node).op, Op::Weight).then(|| g.value_name(v).to_string())
}

/// Whether every use of `v` is one operand of the single node `n`.
fn used_only_by(g: &Graph, v: Value, n: kiln_dialect::graph::NodeId) -> bool {
    let users = g.users(v);
    !users.is_empty()
        && users.iter().all(|&(u, _)| u == n)
        && !g.outputs().iter().any(|o| o.value == v)
}

/// The groups of `names` (weights used as `x @ w` with `w: [k, n]`) whose
/// activations come from a norm with weights or from a product with an
/// earlier matmul, so that a per-channel scale folds there. Each `x` must
/// feed nothing but matmuls with weights of `names`, and what the scale
/// folds into must serve that `x` alone.
pub fn scale_groups(g: &Graph, names: &[String]) -> Vec<ScaleGroup> {
    let mut by_x: Vec<(Value, Vec<String>)> = Vec::new();
    for w in g.weights() {
        let name = g.value_name(w).to_string();
        if !names.contains(&name) {
            continue;
        }
        for (n, slot) in g.users(w) {
            let direct = matches!(
                g.node(n).op,
                Op::Matmul {
                    transpose_a: false,
                    transpose_b: false
                }
            ) && slot == 1;
            if !direct {
                continue;
            }
            let x = g.operands(n)[0];
            match by_x.iter_mut().find(|(v, _)| *v == x) {
                Some((_, ws)) => ws.push(name.clone()),
                None => by_x.push((x, vec![name.clone()])),
            }
        }
    }
    let mut out = Vec::new();
    for (x, weights) in by_x {
        // every use of x is `x @ w` with one of the group's weights
        let all_ours = !g.outputs().iter().any(|o| o.value == x)
            && g.users(x).iter().all(|&(n, slot)| {
                slot == 0
                    && matches!(
                        g.node(n).op,
                        Op::Matmul {
                            transpose_a: false,
                            transpose_b: false
                        }
                    )
                    && weight_name(g, g.operands(n)[1]).is_some_and(|w| weights.contains(&w))
            });
        // a weight read by two matmuls would need one scale for both inputs
        let once = weights
            .iter()
            .all(|w| weights.iter().filter(|v| *v == w).count() == 1);
        if !all_ours || !once {
            continue;
        }
        if let Some(fold) = fold_of(g, x) {
            out.push(ScaleGroup { fold, weights });
        }
    }
    out
}

/// Where a scale on the last axis of `x` folds, if anywhere.
fn fold_of(g: &Graph, x: Value) -> Option<Fold> {
    let node = g.node(x.node);
    let ops = g.operands(x.node);
    let last_axis = |axis: i64| {
        let r = g.value_type(x).rank() as i64;
        axis == -1 || axis == r - 1
    };
    let per_channel = |v: Value| {
        let t = g.value_type(v);
        t.rank() == 1
            && t.shape.dims() == &g.value_type(x).shape.dims()[g.value_type(x).rank() - 1..]
    };
    let sole = |v: Value| used_only_by(g, v, x.node) && per_channel(v);
    match &node.op {
        Op::RmsNorm { axis, .. } if last_axis(*axis) && ops.len() == 2 && sole(ops[1]) => {
            Some(Fold::Norm {
                gamma: weight_name(g, ops[1])?,
                beta: None,
            })
        }
        Op::LayerNorm { axis, .. } if last_axis(*axis) && ops.len() >= 2 && sole(ops[1]) => {
            let beta = match ops.get(2) {
                Some(&b) if sole(b) => Some(weight_name(g, b)?),
                Some(_) => return None,
                None => None,
            };
            Some(Fold::Norm {
                gamma: weight_name(g, ops[1])?,
                beta,
            })
        }
        Op::Mul => {
            // one factor is `h @ v` with v a weight, used only here
            ops.iter().find_map(|&f| {
                let Op::Matmul {
                    transpose_a: false,
                    transpose_b: false,
                } = g.node(f.node).op
                else {
                    return None;
                };
                let v = g.operands(f.node)[1];
                let same_shape = g.value_type(f).shape == g.value_type(x).shape;
                (same_shape && used_only_by(g, f, x.node) && used_only_by(g, v, f.node))
                    .then(|| weight_name(g, v))
                    .flatten()
                    .map(|weight| Fold::Columns { weight })
            })
        }
        _ => None,
    }
}

/// What the search chose for one group.
#[derive(Clone, Debug)]
pub struct Chosen {
    pub group: ScaleGroup,
    pub alpha: f64,
    /// One factor per input channel.
    pub scale: Vec<f64>,
    /// The group's error through the activations at `alpha = 0` (round to
    /// nearest) and at the chosen `alpha`.
    pub error_rtn: f64,
    pub error: f64,
}

/// Searches the scale of `group`: `weights` are the float weights by name,
/// `recipes` each group weight's recipe, `x` the activations (rows of the
/// matmuls' first operand, at most [`super::MAX_CALIBRATION_ROWS`] used).
/// With `clip`, the weights will also get the clipping search
/// ([`quantize_calibrated`]), and the choice is made with it: among the two
/// best alphas by round to nearest and `alpha = 0`, the least error after
/// clipping (so never worse on `x` than clipping alone).
pub fn search(
    group: &ScaleGroup,
    weights: &HashMap<String, Tensor>,
    recipes: &HashMap<String, Recipe>,
    x: &Tensor,
    clip: bool,
) -> Result<Chosen, QuantizeError> {
    let k = *x.shape.last().unwrap_or(&0);
    let rows = (x.data.len() / k.max(1)).min(super::MAX_CALIBRATION_ROWS);
    let mut mean = vec![0.0f64; k];
    for r in 0..rows {
        for (c, m) in mean.iter_mut().enumerate() {
            *m += x.data[r * k + c].abs();
        }
    }
    for m in &mut mean {
        *m = (*m / rows.max(1) as f64).max(MIN_MEAN);
    }
    // X^T X, once for every alpha
    let mut gram = vec![0.0f64; k * k];
    for r in 0..rows {
        let xr = &x.data[r * k..(r + 1) * k];
        for (i, &xi) in xr.iter().enumerate() {
            if xi == 0.0 {
                continue;
            }
            for (gij, &xj) in gram[i * k..(i + 1) * k].iter_mut().zip(xr) {
                *gij += xi * xj;
            }
        }
    }
    // The group's error with scales `s`: each weight's rows scaled, then
    // quantized round to nearest, or (`clip`) with the clipping search on
    // the activations the scaled weight sees, `x / s`.
    let error_of = |s: &[f64], clip: bool| -> Result<f64, QuantizeError> {
        let mut total = 0.0;
        // the activations the scaled weights see, for the clipping search
        let xs = clip.then(|| Tensor {
            dtype: x.dtype,
            shape: vec![rows, k],
            data: (0..rows * k).map(|f| x.data[f] / s[f % k]).collect(),
        });
        for name in &group.weights {
            let w = &weights[name];
            let n = w.shape[1];
            if w.shape[0] != k {
                return Err(QuantizeError::Weight {
                    name: name.clone(),
                    shape: w.shape.clone(),
                    message: format!("its activations have {k} columns, expected {}", w.shape[0]),
                });
            }
            let scaled: Vec<f64> = (0..k * n).map(|f| w.data[f] * s[f / n]).collect();
            // the scaled weight in f64 (no rounding to the float type, which
            // the search should not see as error)
            let ws = Tensor {
                dtype: w.dtype,
                shape: w.shape.clone(),
                data: scaled,
            };
            let q = match &xs {
                Some(xs) => quantize_calibrated(name, &ws, 0, w.dtype, &recipes[name], xs)?,
                None => quantize_weight(name, &ws, 0, w.dtype, &recipes[name])?,
            };
            let deq = dequantize_values(&q);
            // D = w - deq / s, column by column: d^T G d
            let mut d = vec![0.0f64; k];
            for col in 0..n {
                for (i, di) in d.iter_mut().enumerate() {
                    *di = w.data[i * n + col] - deq[i * n + col] / s[i];
                }
                for i in 0..k {
                    if d[i] == 0.0 {
                        continue;
                    }
                    let gi = &gram[i * k..(i + 1) * k];
                    total += d[i] * gi.iter().zip(&d).map(|(a, b)| a * b).sum::<f64>();
                }
            }
        }
        Ok(total)
    };
    let scales_for = |alpha: f64| -> Vec<f64> {
        let s: Vec<f64> = mean.iter().map(|m| m.powf(alpha)).collect();
        let (lo, hi) = s.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
        let norm = (lo * hi).sqrt();
        s.iter().map(|v| v / norm).collect()
    };
    // every alpha round to nearest (alpha = 0 first: round to nearest)
    let mut tried = Vec::with_capacity(ALPHAS.len());
    for &alpha in &ALPHAS {
        tried.push((alpha, error_of(&scales_for(alpha), false)?));
    }
    let error_rtn = tried[0].1;
    let mut best = (0.0, error_rtn);
    if clip {
        // the clipping search changes which scales are best: the two best
        // alphas and alpha = 0 (clipping alone), each with its clipping
        tried.sort_by(|a, b| a.1.total_cmp(&b.1));
        let mut finalists: Vec<f64> = tried.iter().take(2).map(|t| t.0).collect();
        if !finalists.contains(&0.0) {
            finalists.push(0.0);
        }
        best = (0.0, f64::INFINITY);
        for alpha in finalists {
            let e = error_of(&scales_for(alpha), true)?;
            if e < best.1 {
                best = (alpha, e);
            }
        }
    } else {
        for &(alpha, e) in &tried {
            if e < best.1 {
                best = (alpha, e);
            }
        }
    }
    Ok(Chosen {
        group: group.clone(),
        alpha: best.0,
        scale: scales_for(best.0),
        error_rtn,
        error: best.1,
    })
}

/// Folds the chosen scale into `weights`: the group's weights' rows
/// multiplied by `s`, the fold's norm weights (or the earlier matmul's
/// columns) divided by it, each changed tensor rounded to its type.
pub fn apply(weights: &mut HashMap<String, Tensor>, c: &Chosen) {
    let s = &c.scale;
    // each element of `name` as `f(flat index, columns, value)`, rounded to its type
    let mut rescale = |name: &str, f: &dyn Fn(usize, usize, f64) -> f64| {
        if let Some(t) = weights.get_mut(name) {
            let n = t.shape.get(1).copied().unwrap_or(1);
            let data = t
                .data
                .iter()
                .enumerate()
                .map(|(i, &v)| f(i, n, v))
                .collect();
            *t = Tensor::new(t.dtype, &t.shape, data);
        }
    };
    for name in &c.group.weights {
        rescale(name, &|i, n, v| v * s[i / n]);
    }
    match &c.group.fold {
        Fold::Norm { gamma, beta } => {
            for name in std::iter::once(gamma).chain(beta) {
                rescale(name, &|i, _, v| v / s[i]);
            }
        }
        Fold::Columns { weight } => rescale(weight, &|i, n, v| v / s[i % n]),
    }
}

/// One line saying what the search chose for a group.
pub fn describe(c: &Chosen) -> String {
    let into = match &c.group.fold {
        Fold::Norm { gamma, .. } => format!("`{gamma}`"),
        Fold::Columns { weight } => format!("the columns of `{weight}`"),
    };
    let reduction = if c.error_rtn > 0.0 {
        format!(
            ", error {:.1}% of round to nearest's",
            100.0 * c.error / c.error_rtn
        )
    } else {
        String::new()
    };
    let how = if c.alpha == 0.0 {
        "no scales (alpha 0)".to_string()
    } else {
        format!("alpha {:.2}, folded into {into}", c.alpha)
    };
    format!("{}: {how}{reduction}", c.group.weights.join(", "))
}
