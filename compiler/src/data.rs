//! Binding inputs and weights: from `.npy` and `.safetensors` files or from
//! deterministic random generators; and summaries of results.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use kiln_dialect::interp::Tensor;
use kiln_dialect::shape::fmt_concrete;
use kiln_dialect::suggest::closest;
use kiln_dialect::{DType, DTypeClass, Graph, TensorType};
use kiln_runtime::HostTensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::error::KilnError;

/// Which declaration a tensor binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Input,
    Weight,
}

fn role_error(role: Role, name: &str, message: String) -> KilnError {
    match role {
        Role::Input => KilnError::Input {
            name: name.into(),
            message,
        },
        Role::Weight => KilnError::Weight {
            name: name.into(),
            message,
        },
    }
}

/// A host tensor as the interpreter's exact values.
pub fn to_interp(t: &HostTensor) -> Tensor {
    Tensor {
        dtype: t.dtype,
        shape: t.shape.clone(),
        data: t.to_values(),
    }
}

/// The interpreter's values packed as a host tensor.
pub fn from_interp(t: &Tensor) -> HostTensor {
    HostTensor::from_values(t.dtype, &t.shape, &t.data)
}

/// Converts a tensor read from a file to the declared element type: equal
/// types pass; a float file feeds any float declaration (rounded to nearest
/// even); anything else is an error naming both types.
pub fn convert(
    t: HostTensor,
    role: Role,
    name: &str,
    want: DType,
) -> Result<HostTensor, KilnError> {
    if t.dtype == want {
        return Ok(t);
    }
    if t.dtype.is_float() && want.is_float() {
        return Ok(HostTensor::from_values(want, &t.shape, &t.to_values()));
    }
    Err(role_error(
        role,
        name,
        format!("expected element type {want}, found {}", t.dtype),
    ))
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A deterministic random tensor for a declaration: the same seed and name
/// always give the same values.
///
/// Floats are standard normal; weights of rank 2 and more are scaled by
/// `1/sqrt(fan_in)` (fan-in is the second-to-last axis for matrices and
/// `C*KH*KW` for 4-D convolution weights) so activations stay O(1).
/// Integers are uniform in `0..4`, bools fair coins; integer codes uniform
/// over their range, `e8m0` scales powers of two from 2^-8 to 1, minifloats
/// standard normal rounded to the type.
pub fn random_tensor(
    seed: u64,
    name: &str,
    role: Role,
    dtype: DType,
    shape: &[usize],
) -> HostTensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv(name));
    let n: usize = shape.iter().product();
    let scale = match (role, shape.len()) {
        (Role::Weight, 4) => 1.0 / ((shape[1] * shape[2] * shape[3]).max(1) as f64).sqrt(),
        (Role::Weight, r) if r >= 2 => 1.0 / (shape[r - 2].max(1) as f64).sqrt(),
        _ => 1.0,
    };
    let values: Vec<f64> = (0..n)
        .map(|_| match dtype.class() {
            DTypeClass::Float => rng.sample::<f64, _>(StandardNormal) * scale,
            DTypeClass::Int => rng.random_range(0..4) as f64,
            DTypeClass::Bool => rng.random_range(0..2) as f64,
            DTypeClass::Storage => match dtype.int_range() {
                // integer codes: uniform over the range
                Some((lo, hi)) => rng.random_range(lo..=hi) as f64,
                // power-of-two scales: 2^-8 ..= 2^0
                None if dtype == DType::E8M0 => (-(rng.random_range(0..=8) as f64)).exp2(),
                // minifloat codes or scales: normal, rounded (saturating) to the type
                None => rng.sample::<f64, _>(StandardNormal),
            },
        })
        .collect();
    HostTensor::from_values(dtype, shape, &values)
}

/// A random weight, as `--random-weights SEED` draws it, keeping
/// activations O(1): [`random_tensor`] scales a float weight by
/// 1/sqrt(fan-in), and the scale of an integer-coded quantized weight `P`
/// (the weight `P.scale`, one row per group of G codes) is divided further
/// by the largest code magnitude times sqrt(G), so that code times scale
/// spreads like a float weight of P's fan-in. `type_of` gives the type of
/// another weight by name.
pub fn random_weight(
    seed: u64,
    name: &str,
    dtype: DType,
    shape: &[usize],
    type_of: impl Fn(&str) -> Option<TensorType>,
) -> HostTensor {
    let t = random_tensor(seed, name, Role::Weight, dtype, shape);
    let rows = |s: &[usize]| {
        if s.len() >= 2 {
            s[s.len() - 2].max(1)
        } else {
            1
        }
    };
    let divisor = name
        .strip_suffix(".scale")
        .and_then(&type_of)
        .filter(|codes| codes.quant.is_some())
        .and_then(|codes| {
            let (lo, hi) = codes.dtype.int_range()?;
            let code_rows = codes.shape.as_static().map_or(1, |s| {
                rows(&s.iter().map(|&d| d as usize).collect::<Vec<_>>())
            });
            let group = (code_rows / rows(shape)).max(1) as f64;
            Some(lo.unsigned_abs().max(hi.unsigned_abs()) as f64 * group.sqrt())
        });
    match divisor {
        Some(m) if m > 1.0 && dtype.is_float() => {
            let values: Vec<f64> = t.to_values().iter().map(|v| v / m).collect();
            HostTensor::from_values(dtype, shape, &values)
        }
        _ => t,
    }
}

/// Where the inputs of a run come from.
pub struct InputSpec<'a> {
    /// `NAME=FILE.npy` pairs.
    pub files: &'a [(String, String)],
    /// Seed for inputs not given as files.
    pub random_seed: Option<u64>,
    /// Sizes of symbolic dims for random inputs.
    pub dims: &'a BTreeMap<String, usize>,
}

/// Where the weights of a run come from.
pub enum WeightSource<'a> {
    /// A safetensors file; weights it lacks come from the model's own data
    /// (ONNX initializers) where it has them.
    File(&'a Path),
    /// Seeded random weights, for every weight.
    Random(u64),
    /// The model's own weight data; a weight it lacks is drawn from the
    /// seed when there is one, else an error asks for a source.
    Model { fallback_seed: Option<u64> },
}

fn concrete_shape(
    ty: &TensorType,
    dims: &BTreeMap<String, usize>,
    role: Role,
    name: &str,
) -> Result<Vec<usize>, KilnError> {
    let map: HashMap<String, usize> = dims.iter().map(|(k, v)| (k.clone(), *v)).collect();
    ty.shape.resolve(&map).map_err(|sym| {
        role_error(
            role,
            name,
            format!("its type {ty} has symbolic dim `{sym}`; give its size with --dim {sym}=N"),
        )
    })
}

/// Binds every input and weight of the graph. Inputs come from files or
/// random; weights from a safetensors file or random.
pub fn bind(
    g: &Graph,
    inputs: &InputSpec,
    weights: &WeightSource,
) -> Result<HashMap<String, Tensor>, KilnError> {
    bind_with(g, inputs, weights, &HashMap::new())
}

/// [`bind`] for a model that carries weight data of its own (`embedded`,
/// the initializers of an ONNX model): a weights file overrides it tensor
/// by tensor, random weights replace all of it.
pub fn bind_with(
    g: &Graph,
    inputs: &InputSpec,
    weights: &WeightSource,
    embedded: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>, KilnError> {
    let typed: Vec<(String, TensorType)> = g
        .inputs()
        .into_iter()
        .map(|v| (g.value_name(v).to_string(), g.value_type(v).clone()))
        .collect();
    let (mut out, dims) = bind_inputs(&typed, inputs)?;
    out.extend(bind_weights(g, weights, embedded, &dims)?);
    Ok(out)
}

/// Bound inputs, and the dims they were bound at.
pub type BoundInputs = (HashMap<String, Tensor>, BTreeMap<String, usize>);

/// Binds inputs of the given names and types from files or random (the
/// input half of [`bind_with`], for artifacts, which have no graph).
/// Returns the tensors and the dims: `inputs.dims` with the sizes the
/// files bound added.
pub fn bind_inputs(
    typed: &[(String, TensorType)],
    inputs: &InputSpec,
) -> Result<BoundInputs, KilnError> {
    let mut out = HashMap::new();
    let input_names: Vec<String> = typed.iter().map(|(n, _)| n.clone()).collect();
    for (name, _) in inputs.files {
        if !input_names.contains(name) {
            let hint = closest(name, input_names.iter().map(String::as_str))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            return Err(KilnError::Usage(format!(
                "--input {name}=...: the model has no input `{name}` (its inputs: {}){hint}",
                input_names.join(", ")
            )));
        }
    }
    let mut dims = inputs.dims.clone();
    // File inputs first, so their shapes bind symbols for random ones.
    let mut bound_syms: HashMap<String, usize> = HashMap::new();
    for (name, ty) in typed {
        let name = name.as_str();
        if let Some((_, file)) = inputs.files.iter().find(|(n, _)| n == name) {
            let t = kiln_runtime::npy::read(Path::new(file))?;
            let t = convert(t, Role::Input, name, ty.dtype)?;
            ty.shape
                .bind(&t.shape, &mut bound_syms)
                .map_err(|m| role_error(Role::Input, name, format!("{m} (from {file})")))?;
            out.insert(name.to_string(), to_interp(&t));
        }
    }
    for (k, v) in &bound_syms {
        if let Some(given) = dims.get(k)
            && given != v
        {
            return Err(KilnError::Usage(format!(
                "--dim {k}={given} disagrees with the input files, which give {k} = {v}"
            )));
        }
        dims.insert(k.clone(), *v);
    }
    for (name, ty) in typed {
        let name = name.as_str();
        if out.contains_key(name) {
            continue;
        }
        let Some(seed) = inputs.random_seed else {
            return Err(role_error(
                Role::Input,
                name,
                format!(
                    "no value given for {ty}; pass --input {name}=FILE.npy or --random-inputs SEED"
                ),
            ));
        };
        let shape = concrete_shape(ty, &dims, Role::Input, name)?;
        out.insert(
            name.to_string(),
            to_interp(&random_tensor(seed, name, Role::Input, ty.dtype, &shape)),
        );
    }
    Ok((out, dims))
}

/// Binds every weight of the graph from a safetensors file, random or the
/// model's own data (the weight half of [`bind_with`]); `dims` sizes
/// symbolic weight shapes.
pub fn bind_weights(
    g: &Graph,
    weights: &WeightSource,
    embedded: &HashMap<String, Tensor>,
    dims: &BTreeMap<String, usize>,
) -> Result<HashMap<String, Tensor>, KilnError> {
    let mut out = HashMap::new();
    let stored = match weights {
        WeightSource::File(p) => Some(kiln_runtime::safetensors::read(p)?),
        WeightSource::Random(_) | WeightSource::Model { .. } => None,
    };
    let random = |seed: u64, name: &str, ty: &TensorType, shape: &[usize]| {
        let type_of = |n: &str| {
            g.weights()
                .into_iter()
                .find(|&w| g.value_name(w) == n)
                .map(|w| g.value_type(w).clone())
        };
        to_interp(&random_weight(seed, name, ty.dtype, shape, type_of))
    };
    for v in g.weights() {
        let (name, ty) = (g.value_name(v), g.value_type(v));
        let shape = concrete_shape(ty, dims, Role::Weight, name)?;
        let own = embedded
            .get(name)
            .filter(|_| !matches!(weights, WeightSource::Random(_)));
        let in_file = stored.as_ref().is_some_and(|m| m.contains_key(name));
        if let Some(t) = own.filter(|_| !in_file) {
            if t.dtype != ty.dtype || t.shape != shape {
                return Err(role_error(
                    Role::Weight,
                    name,
                    format!(
                        "the model's data is {}{}, its declaration {ty}",
                        t.dtype,
                        fmt_concrete(&t.shape)
                    ),
                ));
            }
            out.insert(name.to_string(), t.clone());
            continue;
        }
        let t = match (&stored, weights) {
            (
                _,
                WeightSource::Model {
                    fallback_seed: Some(seed),
                },
            ) => random(*seed, name, ty, &shape),
            (
                _,
                WeightSource::Model {
                    fallback_seed: None,
                },
            ) => {
                return Err(KilnError::Usage(
                    "the model's weights need a source: pass --weights W.safetensors or --random-weights SEED".into(),
                ));
            }
            (Some(map), WeightSource::File(p)) => {
                let st = map.get(name).ok_or_else(|| {
                    let hint = closest(name, map.keys().map(String::as_str))
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_default();
                    role_error(
                        Role::Weight,
                        name,
                        format!("{} has no tensor `{name}` ({ty}){hint}", p.display()),
                    )
                })?;
                let host = st.to_host(ty.dtype, &shape).map_err(|m| {
                    role_error(Role::Weight, name, format!("{m} in {}", p.display()))
                })?;
                // sub-byte codes are read in the bit order their scheme declares
                let order = ty
                    .quant
                    .as_ref()
                    .map_or(kiln_dialect::numeric::BitOrder::LsbFirst, |q| q.packing);
                Tensor {
                    dtype: host.dtype,
                    shape: host.shape.clone(),
                    data: host.to_values_in(order),
                }
            }
            (_, WeightSource::Random(seed)) => random(*seed, name, ty, &shape),
            (None, WeightSource::File(_)) => unreachable!("a weights file is read above"),
        };
        out.insert(name.to_string(), t);
    }
    Ok(out)
}

/// One line about a result: type, sum, mean absolute value, and a hash of
/// its bytes (equal for bit-identical results).
pub fn summary(name: &str, t: &Tensor) -> String {
    let n = t.data.len().max(1) as f64;
    let sum: f64 = t.data.iter().sum();
    let mean_abs: f64 = t.data.iter().map(|v| v.abs()).sum::<f64>() / n;
    format!(
        "{name}: {}{}  sum {sum:.6e}  mean|x| {mean_abs:.6e}  checksum {:016x}",
        t.dtype,
        fmt_concrete(&t.shape),
        from_interp(t).checksum()
    )
}

/// The file name an output is written under: every character outside
/// `[A-Za-z0-9_.-]` replaced by `_`.
pub fn output_file_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{s}.npy")
}

/// Writes tensors as a safetensors file, in name order, each in its own
/// element type: the types safetensors names as they are (`f8e4m3`,
/// `f8e5m2` and `e8m0` too), sub-byte codes (`i4 u4 i3 i6 f4e2m1`) packed
/// LSB first as `U8` bytes of shape `[bytes]` (which the weight loader reads
/// back as packed codes of the declared type). Errors are messages.
pub fn write_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), String> {
    use safetensors::Dtype as S;
    let mut hosts = Vec::new();
    for (name, t) in tensors {
        let host = from_interp(t);
        let (dt, shape) = match t.dtype {
            DType::F64 => (S::F64, t.shape.clone()),
            DType::F32 => (S::F32, t.shape.clone()),
            DType::F16 => (S::F16, t.shape.clone()),
            DType::BF16 => (S::BF16, t.shape.clone()),
            DType::I64 => (S::I64, t.shape.clone()),
            DType::I32 => (S::I32, t.shape.clone()),
            DType::I8 => (S::I8, t.shape.clone()),
            DType::U8 => (S::U8, t.shape.clone()),
            DType::Bool => (S::BOOL, t.shape.clone()),
            DType::F8E4M3 => (S::F8_E4M3, t.shape.clone()),
            DType::F8E5M2 => (S::F8_E5M2, t.shape.clone()),
            DType::E8M0 => (S::F8_E8M0, t.shape.clone()),
            DType::I4 | DType::U4 | DType::I3 | DType::I6 | DType::F4E2M1 => {
                (S::U8, vec![host.data.len()])
            }
        };
        hosts.push((name.clone(), dt, shape, host.data));
    }
    hosts.sort_by(|a, b| a.0.cmp(&b.0));
    let mut views = Vec::new();
    for (name, dt, shape, bytes) in &hosts {
        let view = safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes)
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        views.push((name.clone(), view));
    }
    safetensors::tensor::serialize_to_file(views, None, path).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tensors_are_deterministic_and_not_zero() {
        let a = random_tensor(7, "w1", Role::Weight, DType::F32, &[64, 8]);
        let b = random_tensor(7, "w1", Role::Weight, DType::F32, &[64, 8]);
        let c = random_tensor(7, "w2", Role::Weight, DType::F32, &[64, 8]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let v = a.to_values();
        assert!(v.iter().all(|x| *x != 0.0));
        // scaled by 1/sqrt(64): the standard deviation is near 1/8
        let sd = (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
        assert!((0.09..0.16).contains(&sd), "{sd}");
        let q = random_tensor(1, "q", Role::Weight, DType::I4, &[100]).to_values();
        assert!(q.iter().all(|x| (-8.0..=7.0).contains(x)) && q.iter().any(|x| *x < 0.0));
    }

    #[test]
    fn output_names_are_sanitized() {
        assert_eq!(output_file_name("logits:0/a b"), "logits_0_a_b.npy");
        assert_eq!(output_file_name("y.1-x"), "y.1-x.npy");
    }
}
