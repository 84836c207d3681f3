//! A reference runner for lowered programs: binds inputs and weights by
//! name, materializes constants, and runs every launch in order with the
//! kernel dialect's evaluator (`kernel::eval::run`). Slow; for tests and
//! for checking backends.

use std::borrow::Cow;
use std::collections::HashMap;

use kiln_dialect::Shape;
use kiln_dialect::interp::Tensor;
use kiln_dialect::kernel::{Program, eval};
use thiserror::Error;

/// Why a program could not be run.
#[derive(Debug, Error, PartialEq)]
pub enum RunError {
    #[error("no tensor bound for `{0}`")]
    Missing(String),
    #[error("`{name}`: {message}")]
    Binding { name: String, message: String },
    #[error("launch {launch}: argument buffer `{name}` was never written")]
    Unwritten { launch: usize, name: String },
    #[error(transparent)]
    Eval(#[from] eval::EvalError),
}

/// Runs `p` on tensors bound by buffer name (every input and weight);
/// returns each output by name, in order.
pub fn run_program(
    p: &Program,
    bindings: &HashMap<String, Tensor>,
) -> Result<Vec<(String, Tensor)>, RunError> {
    let mut bufs: Vec<Option<Tensor>> = vec![None; p.buffers.len()];
    let mut dims: HashMap<String, usize> = HashMap::new();
    for &b in p.inputs.iter().chain(&p.weights) {
        let buf = &p.buffers[b];
        let t = bindings
            .get(&buf.name)
            .ok_or_else(|| RunError::Missing(buf.name.clone()))?;
        let err = |message: String| RunError::Binding {
            name: buf.name.clone(),
            message,
        };
        if t.dtype != buf.dtype {
            return Err(err(format!("dtype {} for a {} buffer", t.dtype, buf.dtype)));
        }
        buf.shape.bind(&t.shape, &mut dims).map_err(err)?;
        bufs[b] = Some(t.clone());
    }
    for (b, vals) in &p.constants {
        let buf = &p.buffers[*b];
        let shape = buf.shape.resolve(&dims).map_err(|s| RunError::Binding {
            name: buf.name.clone(),
            message: format!("unbound dim `{s}`"),
        })?;
        bufs[*b] = Some(Tensor::new(buf.dtype, &shape, vals.clone()));
    }
    for (i, l) in p.launches.iter().enumerate() {
        let mut args = Vec::with_capacity(l.args.len());
        for (&a, decl) in l.args.iter().zip(&l.kernel.inputs) {
            let t = bufs[a].as_ref().ok_or_else(|| RunError::Unwritten {
                launch: i,
                name: p.buffers[a].name.clone(),
            })?;
            args.push(viewed(t, &decl.shape, &dims));
        }
        let args: Vec<&Tensor> = args.iter().map(|t| t.as_ref()).collect();
        let out = eval::run(&l.kernel, &args, &dims)?;
        bufs[l.out] = Some(viewed(&out, &p.buffers[l.out].shape, &dims).into_owned());
    }
    p.outputs
        .iter()
        .map(|(name, b)| {
            bufs[*b]
                .clone()
                .map(|t| (name.clone(), t))
                .ok_or_else(|| RunError::Missing(p.buffers[*b].name.clone()))
        })
        .collect()
}

/// `t` with the shape `shape` when that resolves to the same number of
/// elements (a kernel's view of a buffer: the same row-major elements),
/// else `t` unchanged for the evaluator to reject.
fn viewed<'t>(t: &'t Tensor, shape: &Shape, dims: &HashMap<String, usize>) -> Cow<'t, Tensor> {
    match shape.resolve(dims) {
        Ok(s) if s != t.shape && s.iter().product::<usize>() == t.shape.iter().product() => {
            Cow::Owned(Tensor::new(t.dtype, &s, t.data.clone()))
        }
        _ => Cow::Borrowed(t),
    }
}
