//! `kiln import`: an imported ONNX graph written back as an editable
//! model-language file, with its weights as a safetensors file.
//!
//! Every op becomes one `let` (a call of the op by its mnemonic, attributes
//! that differ from their defaults named); values and weights take the
//! ONNX names made into identifiers (`conv1/7x7_s2_w_0` → `conv1_7x7_s2_w_0`),
//! numbered ones `v<n>`; the weights file holds each weight under its
//! identifier. Repeated blocks are not recovered yet: the model is flat.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use kiln_dialect::interp::Tensor;
use kiln_dialect::ops::{AttrValue, Literal, Op, attr::format_f64};
use kiln_dialect::{DType, Graph, Value};

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
    #[error("weight `{name}` has element type {dtype}, which safetensors files cannot hold")]
    WeightType { name: String, dtype: DType },
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

/// The model-language text of a graph, and the weights renamed to the
/// identifiers the text declares.
pub fn to_kiln(
    g: &Graph,
    weights: &HashMap<String, Tensor>,
) -> Result<(String, HashMap<String, Tensor>), WriteError> {
    let order = g
        .topo_order()
        .map_err(|e| WriteError::Cycle(e.to_string()))?;
    let mut names = Names::default();
    let mut out = String::new();
    let mut body = String::new();
    let mut renamed = HashMap::new();
    let model = names.fresh(&g.name);
    writeln!(
        out,
        "// Imported from ONNX by `kiln import`.\nmodel {model} {{"
    )
    .unwrap();
    for id in &order {
        let node = g.node(*id);
        let v = Value::of(*id);
        let r = &node.results[0];
        match &node.op {
            Op::Input => {
                let n = names.fresh(&r.name);
                writeln!(out, "    input {n}: {}", r.ty).unwrap();
                names.of.insert(v, n);
            }
            Op::Weight => {
                let n = names.fresh(&r.name);
                writeln!(out, "    weight {n}: {}", r.ty).unwrap();
                if let Some(t) = weights.get(&r.name) {
                    renamed.insert(n.clone(), t.clone());
                }
                names.of.insert(v, n);
            }
            op => {
                let operands: Vec<String> = g
                    .operands(*id)
                    .iter()
                    .map(|o| names.of[o].clone())
                    .collect();
                let mut args = operands;
                for (k, a) in op.attrs() {
                    args.push(format!("{k} = {}", attr_text(&a)));
                }
                if let Op::Constant { value } = op {
                    args.clear();
                    args.push(match value {
                        Literal::Splat(x) => number(*x),
                        Literal::Dense(xs) => {
                            format!(
                                "[{}]",
                                xs.iter().map(|x| number(*x)).collect::<Vec<_>>().join(", ")
                            )
                        }
                    });
                    let dims: Vec<String> =
                        r.ty.shape.dims().iter().map(|d| d.to_string()).collect();
                    args.push(format!("shape = [{}]", dims.join(", ")));
                    args.push(format!("dtype = {}", r.ty.dtype));
                }
                let results: Vec<String> = node
                    .results
                    .iter()
                    .enumerate()
                    .map(|(port, res)| {
                        let wanted = if res.name.parse::<u64>().is_ok() {
                            format!("v{}", res.name)
                        } else {
                            res.name.clone()
                        };
                        let n = names.fresh(&wanted);
                        names.of.insert(
                            Value {
                                node: *id,
                                port: port as u32,
                            },
                            n.clone(),
                        );
                        n
                    })
                    .collect();
                writeln!(
                    body,
                    "    let {} = {}({})",
                    results.join(", "),
                    op.mnemonic(),
                    args.join(", ")
                )
                .unwrap();
            }
        }
    }
    out.push('\n');
    out.push_str(&body);
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
    out.push_str("}\n");
    Ok((out, renamed))
}

/// Writes weights as a safetensors file.
pub fn write_safetensors(path: &Path, weights: &HashMap<String, Tensor>) -> Result<(), WriteError> {
    use safetensors::Dtype as S;
    let mut hosts = Vec::new();
    for (name, t) in weights {
        let dt = match t.dtype {
            DType::F64 => S::F64,
            DType::F32 => S::F32,
            DType::F16 => S::F16,
            DType::BF16 => S::BF16,
            DType::I64 => S::I64,
            DType::I32 => S::I32,
            DType::I8 => S::I8,
            DType::U8 => S::U8,
            DType::Bool => S::BOOL,
            DType::I4
            | DType::U4
            | DType::I3
            | DType::I6
            | DType::F8E4M3
            | DType::F8E5M2
            | DType::F4E2M1
            | DType::E8M0 => {
                return Err(WriteError::WeightType {
                    name: name.clone(),
                    dtype: t.dtype,
                });
            }
        };
        hosts.push((
            name.clone(),
            dt,
            t.shape.clone(),
            crate::data::from_interp(t).data,
        ));
    }
    hosts.sort_by(|a, b| a.0.cmp(&b.0));
    let mut views = Vec::new();
    for (name, dt, shape, bytes) in &hosts {
        let view =
            safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes).map_err(|e| {
                WriteError::Weights {
                    path: path.display().to_string(),
                    message: e.to_string(),
                }
            })?;
        views.push((name.clone(), view));
    }
    safetensors::tensor::serialize_to_file(views, None, path).map_err(|e| WriteError::Weights {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}
