//! Weight-only quantization of a model's matmul weights (`kiln quantize`):
//! round-to-nearest codes and scales in the schemes the model language
//! declares (docs/quantization.md), the quantized graph those weights
//! feed, and an accuracy report of that graph against the original.
//!
//! A weight is quantized when it is the second operand of a `matmul`
//! (`x @ w`, or `x @ w.T` through a transpose or the matmul's flag), has rank 2 and a float type: the groups run
//! along its reduced axis (axis 0 of `w: [in, out]`, axis 1 of a transposed
//! use), so each output channel has scales of its own. Norm weights, biases
//! and embeddings keep their type. The codes, scales and zero points are
//! exactly what the graph's `quantize` op computes from the chosen scales
//! (round half to even, saturating), and the quantized graph binds `w` to
//! `dequantize(w, w.scale[, w.zero][, w.global])`, the value a quantized
//! declaration `weight w: int4[..] group 128 scale bf16` gives.

pub mod scale_search;

use kiln_dialect::interp::Tensor;
use kiln_dialect::interp::tensor::unravel;
use kiln_dialect::numeric;
use kiln_dialect::numeric::BitOrder;
use kiln_dialect::ops::Op;
use kiln_dialect::quant::{Granularity, QuantScheme};
use kiln_dialect::{DType, Dim, Graph, Shape, TensorType, Value};

/// Why a model could not be quantized as asked.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantizeError {
    #[error(
        "unknown quantization scheme `{0}`: expected w4a16, w8a16, w3a16 or w6a16 (options :gN, :pc, :pt, :zp, as in w4a16:g128), mxfp4, nvfp4, fp8, w8a8 or fp8a8 (options :pc, :pt) or none"
    )]
    Scheme(String),
    #[error("--layer `{0}`: expected PATTERN=SCHEME (a weight name with `*` wildcards)")]
    Layer(String),
    #[error("weight `{name}` {shape:?}: {message}")]
    Weight {
        name: String,
        shape: Vec<usize>,
        message: String,
    },
    #[error("the quantized graph does not verify: {0}")]
    Graph(String),
    #[error("--emit-model: {0}")]
    Source(String),
}

/// How a weight's elements share scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granule {
    /// Runs of `n` along the reduced axis, float scales.
    Group(u64),
    /// One float scale per output channel.
    PerChannel,
    /// One float scale for the tensor.
    PerTensor,
    /// MXFP4: e2m1 codes in blocks of 32, e8m0 scales.
    Mx,
    /// NVFP4: e2m1 codes in blocks of 16, e4m3 scales and an f32 global scale.
    Nv,
}

/// A quantization recipe: what `--scheme` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipe {
    /// As written (`w4a16:g128`).
    pub text: String,
    /// The codes' element type.
    pub codes: DType,
    pub granule: Granule,
    /// Unsigned codes with a zero point of the codes' type (asymmetric).
    pub zero: bool,
    /// W8A8: the code type the activations multiplying the weight are
    /// quantized to at run time, one scale per token (`act` in the model).
    pub act: Option<DType>,
}

impl Recipe {
    /// Parses a scheme: `wBa16[:gN|:pc|:pt][:zp]` for B in 3, 4, 6, 8 (default
    /// groups of 128, per channel for 8 bits), `mxfp4`, `nvfp4`, `fp8` (e4m3
    /// codes, one scale per channel), `w8a8` and `fp8a8` (int8 or fp8 e4m3
    /// weights and activations: per-channel f32 weight scales, or `:pt`, and
    /// per-token activation scales); `none` (keep the weight) is `None`.
    pub fn parse(s: &str) -> Result<Option<Recipe>, QuantizeError> {
        let bad = || QuantizeError::Scheme(s.to_string());
        let mut parts = s.split(':');
        let head = parts.next().unwrap_or_default();
        let simple = |codes, granule| Recipe {
            text: s.to_string(),
            codes,
            granule,
            zero: false,
            act: None,
        };
        let (bits, mut granule) = match head {
            "none" if s == "none" => return Ok(None),
            "mxfp4" if s == head => return Ok(Some(simple(DType::F4E2M1, Granule::Mx))),
            "nvfp4" if s == head => return Ok(Some(simple(DType::F4E2M1, Granule::Nv))),
            "fp8" if s == head => return Ok(Some(simple(DType::F8E4M3, Granule::PerChannel))),
            "w8a8" | "fp8a8" => {
                let codes = if head == "w8a8" {
                    DType::I8
                } else {
                    DType::F8E4M3
                };
                let granule = match parts.next() {
                    None | Some("pc") => Granule::PerChannel,
                    Some("pt") => Granule::PerTensor,
                    Some(_) => return Err(bad()),
                };
                if parts.next().is_some() {
                    return Err(bad());
                }
                return Ok(Some(Recipe {
                    act: Some(codes),
                    ..simple(codes, granule)
                }));
            }
            "w3a16" => (3, Granule::Group(128)),
            "w4a16" => (4, Granule::Group(128)),
            "w6a16" => (6, Granule::Group(128)),
            "w8a16" => (8, Granule::PerChannel),
            _ => return Err(bad()),
        };
        let mut zero = false;
        for p in parts {
            match p {
                "pc" => granule = Granule::PerChannel,
                "pt" => granule = Granule::PerTensor,
                "zp" => zero = true,
                g => {
                    let n: u64 = g
                        .strip_prefix('g')
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(bad)?;
                    if n == 0 {
                        return Err(bad());
                    }
                    granule = Granule::Group(n);
                }
            }
        }
        let codes = match (bits, zero) {
            (3, false) => DType::I3,
            (4, false) => DType::I4,
            (4, true) => DType::U4,
            (6, false) => DType::I6,
            (8, false) => DType::I8,
            (8, true) => DType::U8,
            // no unsigned 3- and 6-bit types
            _ => return Err(bad()),
        };
        Ok(Some(Recipe {
            text: s.to_string(),
            codes,
            granule,
            zero,
            act: None,
        }))
    }

    /// The scheme for a weight of `shape` reduced along `axis` whose values
    /// are `float` (the type it dequantizes back to).
    pub fn scheme(&self, axis: usize, float: DType) -> QuantScheme {
        let scale = match float {
            // W8A8 keeps f32 scales, as the int8 and fp8 GEMMs' epilogues take them
            _ if self.act.is_some() => DType::F32,
            DType::F16 | DType::BF16 | DType::F32 => float,
            _ => DType::F32,
        };
        let (granularity, scale, global) = match self.granule {
            Granule::Group(n) => (Granularity::Group { size: n, axis }, scale, None),
            // one scale per output channel: the axis that is not reduced
            Granule::PerChannel => (Granularity::PerChannel { axis: 1 - axis }, scale, None),
            Granule::PerTensor => (Granularity::PerTensor, scale, None),
            Granule::Mx => (Granularity::Block { size: 32, axis }, DType::E8M0, None),
            Granule::Nv => (
                Granularity::Block { size: 16, axis },
                DType::F8E4M3,
                Some(DType::F32),
            ),
        };
        QuantScheme {
            granularity,
            scale,
            zero: self.zero.then_some(self.codes),
            global,
            packing: BitOrder::LsbFirst,
        }
    }
}

/// A `--layer PATTERN=SCHEME` override: the last pattern a weight's name
/// matches decides its recipe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRule {
    pub pattern: String,
    pub recipe: Option<Recipe>,
}

impl LayerRule {
    pub fn parse(s: &str) -> Result<LayerRule, QuantizeError> {
        let (p, r) = s
            .split_once('=')
            .filter(|(p, r)| !p.is_empty() && !r.is_empty())
            .ok_or_else(|| QuantizeError::Layer(s.to_string()))?;
        Ok(LayerRule {
            pattern: p.to_string(),
            recipe: Recipe::parse(r)?,
        })
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of
/// characters (dots included).
pub fn glob(pattern: &str, name: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == name;
    };
    let Some(mut tail) = name.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = rest.split('*').collect();
    let (last, middle) = pieces.split_last().expect("split gives one piece at least");
    for piece in middle {
        match tail.find(piece) {
            Some(i) => tail = &tail[i + piece.len()..],
            None => return false,
        }
    }
    tail.len() >= last.len() && tail.ends_with(last)
}

/// One weight as quantized: its codes and scales (values as the
/// interpreter holds them) and the scheme that reads them.
#[derive(Clone, Debug)]
pub struct QuantizedWeight {
    pub name: String,
    pub recipe: Recipe,
    pub scheme: QuantScheme,
    /// The axis the groups run along (the matmul's reduced axis).
    pub axis: usize,
    /// The float type the weight dequantizes to (its original type).
    pub float: DType,
    pub codes: Tensor,
    pub scale: Tensor,
    pub zero: Option<Tensor>,
    pub global: Option<Tensor>,
}

impl QuantizedWeight {
    /// The tensors a quantized declaration reads, by name (`w`, `w.scale`,
    /// `w.zero`, `w.global`).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![
            (self.name.clone(), self.codes.clone()),
            (format!("{}.scale", self.name), self.scale.clone()),
        ];
        if let Some(z) = &self.zero {
            v.push((format!("{}.zero", self.name), z.clone()));
        }
        if let Some(g) = &self.global {
            v.push((format!("{}.global", self.name), g.clone()));
        }
        v
    }

    /// The model-language declaration that reads these tensors.
    pub fn declaration(&self) -> String {
        let dims: Vec<String> = self.codes.shape.iter().map(|d| d.to_string()).collect();
        format!(
            "weight {}: {}[{}] {}",
            self.name,
            self.codes.dtype.name(),
            dims.join(", "),
            self.modifiers()
        )
    }

    /// The modifiers of [`QuantizedWeight::declaration`]:
    /// `group 128 axis 0 scale bf16 to bf16`.
    pub fn modifiers(&self) -> String {
        let gran = match self.recipe.granule {
            Granule::Group(n) => format!("group {n} axis {}", self.axis),
            Granule::PerChannel => format!("per_channel axis {}", 1 - self.axis),
            Granule::PerTensor => "per_tensor".to_string(),
            Granule::Mx => format!("mx axis {}", self.axis),
            Granule::Nv => format!("nv axis {}", self.axis),
        };
        let mut d = gran;
        if matches!(
            self.recipe.granule,
            Granule::Group(_) | Granule::PerChannel | Granule::PerTensor
        ) {
            d.push_str(&format!(" scale {}", self.scheme.scale.name()));
        }
        if let Some(z) = self.scheme.zero {
            d.push_str(&format!(" zero {}", z.name()));
        }
        d.push_str(&format!(" to {}", self.float.name()));
        if let Some(a) = self.recipe.act {
            d.push_str(&format!(" act {}", a.name()));
        }
        d
    }
}

/// `src`, the model-language text `g` was lowered from, with the
/// declaration of each quantized weight rewritten to read its codes and
/// scales: `weight wq: bf16[d, d]` becomes `weight wq: i4[d, d] group 128
/// axis 0 scale bf16 to bf16` (the shape as written, other modifiers kept).
/// A declaration in a block stands for every instance of the block, so all
/// its instances must be quantized alike; a weight declared in an imported
/// file is not rewritten (an error names it).
pub fn rewrite_source(
    src: &str,
    g: &Graph,
    qs: &[QuantizedWeight],
) -> Result<String, QuantizeError> {
    let bad = |m: String| QuantizeError::Source(m);
    // Per declaration (its span): the weights it declares.
    let mut decls: Vec<(kiln_dialect::Span, Vec<String>)> = Vec::new();
    for w in g.weights() {
        let Some(span) = g.node(w.node).span else {
            continue;
        };
        let name = g.value_name(w).to_string();
        match decls.iter_mut().find(|(s, _)| *s == span) {
            Some((_, names)) => names.push(name),
            None => decls.push((span, vec![name])),
        }
    }
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for (span, names) in &decls {
        let mine: Vec<&QuantizedWeight> = qs.iter().filter(|q| names.contains(&q.name)).collect();
        let Some(first) = mine.first() else {
            continue;
        };
        if span.file != 0 {
            return Err(bad(format!(
                "weight `{}` is declared in an imported file; only the model file's own declarations are rewritten",
                first.name
            )));
        }
        if mine.len() != names.len() || mine.iter().any(|q| q.modifiers() != first.modifiers()) {
            let how = |n: &String| {
                qs.iter()
                    .find(|q| &q.name == n)
                    .map_or("kept".to_string(), |q| q.modifiers())
            };
            let list: Vec<String> = names
                .iter()
                .map(|n| format!("`{n}` ({})", how(n)))
                .collect();
            return Err(bad(format!(
                "one declaration stands for {}: its instances must be quantized alike",
                list.join(", ")
            )));
        }
        let text = src.get(span.start..span.end).ok_or_else(|| {
            bad(format!(
                "the declaration of `{}` is not in the source",
                first.name
            ))
        })?;
        // `weight NAME: DTYPE[SHAPE] MODS`: the dtype becomes the codes', the
        // quantization modifiers follow the ones written
        let (Some(colon), Some(open)) = (text.find(':'), text.find('[')) else {
            return Err(bad(format!("cannot read the declaration `{text}`")));
        };
        let new = format!(
            "{} {}{} {}",
            &text[..=colon],
            first.codes.dtype.name(),
            &text[open..],
            first.modifiers()
        );
        edits.push((span.start, span.end, new));
    }
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut out = src.to_string();
    for (start, end, new) in edits {
        out.replace_range(start..end, &new);
    }
    Ok(out)
}

/// The matmul weights of `g` that can be quantized: name, shape, the
/// reduced axis and the float type, in the graph's weight order.
pub fn candidates(g: &Graph) -> Vec<(String, Vec<usize>, usize, DType)> {
    let mut out = Vec::new();
    for w in g.weights() {
        let ty = g.value_type(w);
        let Some(shape) = ty.shape.as_static() else {
            continue;
        };
        if shape.len() != 2 || !ty.dtype.is_float() || ty.quant.is_some() {
            continue;
        }
        // `x @ w`, `x @ w` with `transpose_b`, or `x @ w.T` (a transpose
        // feeding the matmul)
        let as_b = |v: Value, flipped: bool| {
            g.users(v)
                .into_iter()
                .find_map(|(n, slot)| match g.node(n).op {
                    Op::Matmul { transpose_b, .. } if slot == 1 => {
                        Some(usize::from(transpose_b != flipped))
                    }
                    _ => None,
                })
        };
        let axis = as_b(w, false).or_else(|| {
            g.users(w)
                .into_iter()
                .find_map(|(n, _)| match &g.node(n).op {
                    Op::Transpose { perm } if perm == &[1, 0] => as_b(Value::of(n), true),
                    _ => None,
                })
        });
        if let Some(axis) = axis {
            let shape = shape.iter().map(|&d| d as usize).collect();
            out.push((g.value_name(w).to_string(), shape, axis, ty.dtype));
        }
    }
    out
}

/// Quantizes `w` (of shape `[rows, cols]`, reduced along `axis`) by
/// `recipe`, round to nearest; the codes dequantize back to `float`.
pub fn quantize_weight(
    name: &str,
    w: &Tensor,
    axis: usize,
    float: DType,
    recipe: &Recipe,
) -> Result<QuantizedWeight, QuantizeError> {
    quantize_clipped(name, w, axis, float, recipe, &|_| 1.0)
}

/// [`quantize_weight`] with each scale's range shrunk by `clip(s)` (in
/// `(0, 1]`, `s` the scale's flat index): the values past the clipped
/// range saturate, the others get finer steps.
fn quantize_clipped(
    name: &str,
    w: &Tensor,
    axis: usize,
    float: DType,
    recipe: &Recipe,
    clip: &dyn Fn(usize) -> f64,
) -> Result<QuantizedWeight, QuantizeError> {
    let scheme = recipe.scheme(axis, float);
    let shape = Shape(w.shape.iter().map(|&d| Dim::Static(d as u64)).collect());
    if recipe.act.is_some() && axis != 0 {
        return Err(QuantizeError::Weight {
            name: name.to_string(),
            shape: w.shape.clone(),
            message: format!(
                "{} quantizes the activations of `x @ w` with w: [in, out]; this weight is used transposed",
                recipe.text
            ),
        });
    }
    scheme
        .check(recipe.codes, &shape)
        .map_err(|e| QuantizeError::Weight {
            name: name.to_string(),
            shape: w.shape.clone(),
            message: format!("{} does not fit: {e}", recipe.text),
        })?;
    let scale_shape: Vec<usize> = scheme
        .scale_shape(&shape)
        .as_static()
        .expect("a static weight has static scales")
        .iter()
        .map(|&d| d as usize)
        .collect();
    let groups: usize = scale_shape.iter().product();
    // Per scale: the smallest and largest value, and the largest magnitude.
    let (mut lo, mut hi) = (vec![0.0f64; groups], vec![0.0f64; groups]);
    let mut idx = vec![0; w.shape.len()];
    for (f, &x) in w.data.iter().enumerate() {
        unravel(f, &w.shape, &mut idx);
        let s = scheme.scale_index(&idx, &w.shape);
        lo[s] = lo[s].min(x);
        hi[s] = hi[s].max(x);
    }
    // The tensor's largest magnitude before clipping (NVFP4's global scale).
    let tensor_amax = lo.iter().chain(&hi).fold(0.0f64, |m, v| m.max(v.abs()));
    for (s, (l, h)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
        let c = clip(s);
        *l *= c;
        *h *= c;
    }
    let amax: Vec<f64> = lo
        .iter()
        .zip(&hi)
        .map(|(l, h)| l.abs().max(h.abs()))
        .collect();
    let codes = recipe.codes;
    // A scale in its storage type; a zero one (an all-zero group) is 1.
    let stored = |dt: DType, x: f64| {
        let s = numeric::round_to(dt, x);
        if s > 0.0 && s.is_finite() { s } else { 1.0 }
    };
    let mut global = None;
    let mut zero = None;
    let scale: Vec<f64> = match recipe.granule {
        Granule::Mx => amax
            .iter()
            .map(|&a| {
                // OCP MX: 2^(floor(log2 amax) - emax), emax = 2 for e2m1
                if a > 0.0 {
                    2f64.powi((a.log2().floor() as i32 - 2).clamp(-127, 127))
                } else {
                    1.0
                }
            })
            .collect(),
        Granule::Nv => {
            // a per-tensor f32 scale that maps the largest block scale to
            // e4m3's largest value, then e4m3 block scales
            let g = stored(DType::F32, tensor_amax / (6.0 * 448.0));
            global = Some(g);
            amax.iter()
                .map(|&a| stored(DType::F8E4M3, a / (6.0 * g)))
                .collect()
        }
        Granule::Group(_) | Granule::PerChannel | Granule::PerTensor if recipe.zero => {
            // unsigned codes 0 ..= qmax with zero points: the range
            // [min(lo, 0), max(hi, 0)] over qmax steps
            let qmax = numeric::max_finite(codes);
            let s: Vec<f64> = lo
                .iter()
                .zip(&hi)
                .map(|(l, h)| stored(scheme.scale, (h - l.min(0.0)).max(0.0) / qmax))
                .collect();
            zero = Some(
                lo.iter()
                    .zip(&s)
                    .map(|(l, s)| numeric::round_half_even(-l.min(0.0) / s).clamp(0.0, qmax))
                    .collect::<Vec<f64>>(),
            );
            s
        }
        Granule::Group(_) | Granule::PerChannel | Granule::PerTensor => {
            // symmetric: the largest magnitude maps to the largest code
            // (integers) or to the largest finite value (fp8)
            let top = numeric::max_finite(codes);
            amax.iter()
                .map(|&a| stored(scheme.scale, a / top))
                .collect()
        }
    };
    // The codes, as the graph's quantize op computes them.
    let g = global.unwrap_or(1.0);
    let mut data = Vec::with_capacity(w.data.len());
    for (f, &x) in w.data.iter().enumerate() {
        unravel(f, &w.shape, &mut idx);
        let s = scheme.scale_index(&idx, &w.shape);
        let v = x / (scale[s] * g);
        let q = if codes.has_integer_values() {
            let z = zero.as_ref().map_or(0.0, |z| z[s]);
            numeric::round_half_even(v) + z
        } else {
            v
        };
        data.push(numeric::decode(codes, numeric::encode(codes, q)));
    }
    Ok(QuantizedWeight {
        name: name.to_string(),
        recipe: recipe.clone(),
        scheme: scheme.clone(),
        axis,
        float,
        codes: Tensor::new(codes, &w.shape, data),
        scale: Tensor::new(scheme.scale, &scale_shape, scale),
        zero: zero.map(|z| Tensor::new(codes, &scale_shape, z)),
        global: global.map(|g| Tensor::new(DType::F32, &[], vec![g])),
    })
}

/// The clipping ratios the calibrated search tries for each scale.
pub const CLIP_RATIOS: [f64; 10] = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55];
/// The most activation rows the calibrated search uses per weight.
pub const MAX_CALIBRATION_ROWS: usize = 512;

/// Activation-aware round to nearest: for each scale (a group of one
/// output channel, a channel, the tensor), the clipping ratio of
/// [`CLIP_RATIOS`] whose quantization error, seen through the calibration
/// activations `x` (rows of the matmul's first operand, last axis the
/// reduced one), is least: `sum over rows of (x_g . (w_g - deq_g))^2`,
/// computed as `d^T (X_g^T X_g) d` with the Gram matrix of the group's
/// columns of `x`. Ratio 1 is round to nearest, so the result is never
/// worse on `x` than [`quantize_weight`]'s.
pub fn quantize_calibrated(
    name: &str,
    w: &Tensor,
    axis: usize,
    float: DType,
    recipe: &Recipe,
    x: &Tensor,
) -> Result<QuantizedWeight, QuantizeError> {
    let (rows_w, cols_w) = (w.shape[0], w.shape[1]);
    // `w` as [k, n] whatever its stored orientation
    let (kk, nn) = if axis == 0 {
        (rows_w, cols_w)
    } else {
        (cols_w, rows_w)
    };
    let at = |k: usize, n: usize| {
        if axis == 0 {
            k * cols_w + n
        } else {
            n * cols_w + k
        }
    };
    let xk = x.shape.last().copied().unwrap_or(0);
    if xk != kk {
        return Err(QuantizeError::Weight {
            name: name.to_string(),
            shape: w.shape.clone(),
            message: format!("calibration activations have {xk} columns, expected {kk}"),
        });
    }
    let rows = (x.data.len() / kk.max(1)).min(MAX_CALIBRATION_ROWS);
    let scheme = recipe.scheme(axis, float);
    // The runs of `k` that share a scale (one run for per-channel and
    // per-tensor scales).
    let run = match scheme.granularity {
        Granularity::Group { size, .. } | Granularity::Block { size, .. } => size as usize,
        Granularity::PerChannel { .. } | Granularity::PerTensor => kk,
    };
    // Gram matrices of the runs: gram[r][i * run + j] = sum x[., r*run+i] x[., r*run+j]
    let gram: Vec<Vec<f64>> = (0..kk / run)
        .map(|r| {
            let mut g = vec![0.0; run * run];
            for row in 0..rows {
                let xr = &x.data[row * kk + r * run..row * kk + (r + 1) * run];
                for i in 0..run {
                    if xr[i] == 0.0 {
                        continue;
                    }
                    for j in 0..run {
                        g[i * run + j] += xr[i] * xr[j];
                    }
                }
            }
            g
        })
        .collect();
    let shape = w.shape.clone();
    let mut idx = vec![0; 2];
    let scale_of = |k: usize, n: usize, idx: &mut Vec<usize>| {
        let (i0, i1) = if axis == 0 { (k, n) } else { (n, k) };
        idx[0] = i0;
        idx[1] = i1;
        scheme.scale_index(idx, &shape)
    };
    let scales: usize = {
        let dims = Shape(w.shape.iter().map(|&d| Dim::Static(d as u64)).collect());
        scheme
            .scale_shape(&dims)
            .as_static()
            .map_or(1, |s| s.iter().product::<u64>() as usize)
    };
    // Per scale and ratio: the error through the Gram matrix.
    let mut err = vec![vec![0.0f64; CLIP_RATIOS.len()]; scales];
    for (ri, &ratio) in CLIP_RATIOS.iter().enumerate() {
        let q = quantize_clipped(name, w, axis, float, recipe, &|_| ratio)?;
        let deq = dequantize_values(&q);
        let mut d = vec![0.0; run];
        for n in 0..nn {
            for (r, g) in gram.iter().enumerate() {
                for (i, di) in d.iter_mut().enumerate() {
                    let f = at(r * run + i, n);
                    *di = w.data[f] - deq[f];
                }
                let mut e = 0.0;
                for i in 0..run {
                    if d[i] == 0.0 {
                        continue;
                    }
                    let gi = &g[i * run..(i + 1) * run];
                    e += d[i] * gi.iter().zip(&d).map(|(a, b)| a * b).sum::<f64>();
                }
                err[scale_of(r * run, n, &mut idx)][ri] += e;
            }
        }
    }
    let best: Vec<f64> = err
        .iter()
        .map(|e| {
            let i = e
                .iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v < e[b] { i } else { b });
            CLIP_RATIOS[i]
        })
        .collect();
    quantize_clipped(name, w, axis, float, recipe, &|s| best[s])
}

/// The values the codes stand for, `(q - zero) * scale * global`, in f64.
fn dequantize_values(q: &QuantizedWeight) -> Vec<f64> {
    let mut idx = vec![0; q.codes.shape.len()];
    let g = q.global.as_ref().map_or(1.0, |g| g.data[0]);
    q.codes
        .data
        .iter()
        .enumerate()
        .map(|(f, &c)| {
            unravel(f, &q.codes.shape, &mut idx);
            let s = q.scheme.scale_index(&idx, &q.codes.shape);
            let z = q.zero.as_ref().map_or(0.0, |z| z.data[s]);
            (c - z) * q.scale.data[s] * g
        })
        .collect()
}

/// `g` with an output `NAME.act` for each named weight: the first operand
/// of the matmul that reads it (its activations), for calibration.
pub fn with_activations(g: &Graph, names: &[String]) -> Graph {
    let mut out = g.clone();
    for w in g.weights() {
        let name = g.value_name(w);
        if !names.iter().any(|n| n == name) {
            continue;
        }
        // the matmul reading `w`, directly or through a transpose
        let direct = g.users(w);
        let through = direct.iter().filter_map(|&(n, _)| match &g.node(n).op {
            Op::Transpose { perm } if perm == &[1, 0] => Some(g.users(Value::of(n))),
            _ => None,
        });
        let mm = std::iter::once(direct.clone())
            .chain(through)
            .flatten()
            .find(|&(n, slot)| slot == 1 && matches!(g.node(n).op, Op::Matmul { .. }));
        if let Some((n, _)) = mm {
            let a = g.operands(n)[0];
            out.add_output(&format!("{name}.act"), a);
        }
    }
    out
}

/// `g` with each quantized weight's float declaration replaced by its codes
/// and scales and every use reading their dequantization (`w.dequantized`).
pub fn quantized_graph(g: &Graph, qs: &[QuantizedWeight]) -> Result<Graph, QuantizeError> {
    let mut g = g.clone();
    for q in qs {
        let Some(old) = g.weights().into_iter().find(|&w| g.value_name(w) == q.name) else {
            continue;
        };
        let ty = g.value_type(old).clone();
        g.node_mut(old.node).results[0].name = format!("{}.float", q.name);
        let codes = g.add_weight(
            &q.name,
            TensorType {
                dtype: q.codes.dtype,
                shape: ty.shape.clone(),
                layout: ty.layout.clone(),
                quant: Some(q.scheme.clone()),
            },
        );
        let mut args = vec![codes];
        for (suffix, t) in q.tensors().into_iter().skip(1) {
            let shape = Shape(t.shape.iter().map(|&d| Dim::Static(d as u64)).collect());
            let v = g.add_weight(
                &suffix,
                TensorType {
                    dtype: t.dtype,
                    shape,
                    layout: kiln_dialect::Layout::RowMajor,
                    quant: None,
                },
            );
            args.push(v);
        }
        let deq: Value = g
            .add1(Op::Dequantize { dtype: q.float }, &args)
            .map_err(|e| QuantizeError::Graph(format!("{}: {e}", q.name)))?;
        g.node_mut(deq.node).results[0].name = format!("{}.dequantized", q.name);
        g.replace_all_uses(old, deq);
        g.remove_node(old.node);
        if let Some(act) = q.recipe.act {
            quantize_activations(&mut g, q, deq, act)?;
        }
    }
    kiln_dialect::verify::verify(&g).map_err(|errs| {
        QuantizeError::Graph(
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    Ok(g)
}

/// W8A8: each `x @ w` reading the dequantized weight `deq` becomes
/// `x' @ w` with `x'` the per-token quantization of `x` to `act` codes
/// (what a declaration with `act` makes the front-end insert).
fn quantize_activations(
    g: &mut Graph,
    q: &QuantizedWeight,
    deq: Value,
    act: DType,
) -> Result<(), QuantizeError> {
    let shape = q.codes.shape.clone();
    let weight_err = |message: String| QuantizeError::Weight {
        name: q.name.clone(),
        shape: shape.clone(),
        message,
    };
    for (n, slot) in g.users(deq) {
        let op = g.node(n).op.clone();
        let direct = matches!(
            op,
            Op::Matmul {
                transpose_a: false,
                transpose_b: false
            }
        ) && slot == 1;
        if !direct {
            return Err(weight_err(format!(
                "{} quantizes the activations of `x @ w` (w: [in, out]); this weight is also read by `{}`",
                q.recipe.text,
                op.mnemonic()
            )));
        }
        let x = g.operands(n)[0];
        let xq = kiln_dialect::activation_quant::insert(g, x, act)
            .map_err(|e| weight_err(format!("{}: {e}", q.recipe.text)))?
            .dequantized;
        let name = g.node(n).results[0].name.clone();
        let mm = g
            .add1(op, &[xq, deq])
            .map_err(|e| QuantizeError::Graph(format!("{}: {e}", q.name)))?;
        g.node_mut(mm.node).span = g.node(n).span;
        g.replace_all_uses(Value::of(n), mm);
        g.remove_node(n);
        g.node_mut(mm.node).results[0].name = name;
    }
    Ok(())
}

/// `bindings` (inputs and the original weights) with each quantized
/// weight's float tensor replaced by its codes and scales: the bindings of
/// [`quantized_graph`].
pub fn quantized_bindings(
    bindings: &std::collections::HashMap<String, Tensor>,
    qs: &[QuantizedWeight],
) -> std::collections::HashMap<String, Tensor> {
    let mut b = bindings.clone();
    for q in qs {
        b.remove(&q.name);
        b.extend(q.tensors());
    }
    b
}

/// One output's error of the quantized model against the original: the
/// largest absolute difference over the largest magnitude, and the mean
/// absolute difference over the mean magnitude.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputError {
    pub name: String,
    pub max_rel: f64,
    pub mean_rel: f64,
}

/// The errors of `quantized` against `original`, output by output.
pub fn output_errors(
    original: &[(String, Tensor)],
    quantized: &[(String, Tensor)],
) -> Vec<OutputError> {
    original
        .iter()
        .filter_map(|(name, o)| {
            let (_, q) = quantized.iter().find(|(n, _)| n == name)?;
            let n = o.data.len().max(1) as f64;
            let (mut max_d, mut max_o, mut sum_d, mut sum_o) = (0.0f64, 0.0f64, 0.0, 0.0);
            for (a, b) in o.data.iter().zip(&q.data) {
                let d = (a - b).abs();
                max_d = max_d.max(d);
                max_o = max_o.max(a.abs());
                sum_d += d;
                sum_o += a.abs();
            }
            let rel = |d: f64, o: f64| if o > 0.0 { d / o } else { d };
            Some(OutputError {
                name: name.clone(),
                max_rel: rel(max_d, max_o),
                mean_rel: rel(sum_d / n, sum_o / n),
            })
        })
        .collect()
}
