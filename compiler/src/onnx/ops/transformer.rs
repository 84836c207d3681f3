//! The transformer ops of opset 23: `Attention` onto the dialect's
//! `attention` (with the KV cache as a `concat`), and `RMSNormalization`
//! onto `rms_norm`. (`RotaryEmbedding` is not imported.)

use kiln_dialect::ops::{Literal, Op};
use kiln_dialect::shape::Dim;
use kiln_dialect::{DType, TensorType, Value};

use super::super::error::OnnxError;
use super::super::importer::{Cx, Val};
use super::super::node::NodeCx;
use super::movement::axis;

/// The ops of this file exist from opset 23 on.
fn since_23(n: &NodeCx) -> Result<(), OnnxError> {
    if n.opset < 23 {
        return Err(n.unsupported("the op exists from opset 23 on"));
    }
    Ok(())
}

/// `RMSNormalization(x, scale) {axis = -1, epsilon = 1e-5, stash_type}`:
/// `x / sqrt(mean(x^2) + epsilon) * scale` over the axes from `axis` on.
pub fn rms_norm(cx: &mut Cx, n: &NodeCx) -> Result<Value, OnnxError> {
    since_23(n)?;
    n.only(&["axis", "epsilon", "stash_type"])?;
    let x = cx.value(n, 0)?;
    let scale = cx.value(n, 1)?;
    let rank = cx.ty(x).rank();
    let a = axis(n, cx, n.int("axis", -1)?, rank)? as i64;
    let eps = n.float("epsilon", 1e-5)? as f64;
    cx.add(n, Op::RmsNorm { axis: a, eps }, &[x, scale])
}

/// `Attention(Q, K, V, attn_mask?, past_key?, past_value?)` of opset 23:
/// `softmax(Q K^T * scale + mask) V` per head, grouped-query when K and V
/// have fewer heads, over the past keys and values followed by the new
/// ones (returned as `present_key`, `present_value`).
///
/// Rank-3 operands `[B, S, heads * D]` are split into heads with
/// `q_num_heads` and `kv_num_heads`. A boolean mask becomes an additive one
/// (`0` where true, `-inf` where false). `is_causal` lets query `i` see key
/// `j` when `j <= i + past`; the dialect's causal attention aligns the last
/// query with the last key, which is the same when the new keys are as many
/// as the queries, so other static lengths get an explicit mask. `softcap`,
/// the `qk_matmul_output` output and masks shorter than the keys are
/// refused; `softmax_precision` is accepted (kiln's softmax runs in f32 or
/// wider).
pub fn attention(cx: &mut Cx, n: &NodeCx) -> Result<Vec<Val>, OnnxError> {
    since_23(n)?;
    n.only(&[
        "is_causal",
        "kv_num_heads",
        "q_num_heads",
        "qk_matmul_output_mode",
        "scale",
        "softcap",
        "softmax_precision",
    ])?;
    if n.float("softcap", 0.0)? != 0.0 {
        return Err(n.unsupported("softcap other than 0"));
    }
    if n.output(3).is_some() {
        return Err(n.unsupported("the qk_matmul_output output"));
    }
    let q = cx.value(n, 0)?;
    let k = cx.value(n, 1)?;
    let v = cx.value(n, 2)?;
    let mask = cx.opt_value(n, 3)?;
    let past_k = cx.opt_value(n, 4)?;
    let past_v = cx.opt_value(n, 5)?;
    if past_k.is_some() != past_v.is_some() {
        return Err(n.error(
            "past_key and past_value must be given together",
            cx.shapes(n),
        ));
    }
    let rank = cx.ty(q).rank();
    if cx.ty(k).rank() != rank || cx.ty(v).rank() != rank || !(rank == 3 || rank == 4) {
        return Err(n.error(
            "Q, K and V must all be of rank 4 ([batch, heads, seq, head]) or all of rank 3 ([batch, seq, heads * head])",
            cx.shapes(n),
        ));
    }
    let (q, k, v) = if rank == 3 {
        let heads = |name: &str| {
            n.int_opt(name)?.filter(|&h| h > 0).ok_or_else(|| {
                n.error(
                    format!("rank-3 operands need a positive `{name}`"),
                    cx.shapes(n),
                )
            })
        };
        let (hq, hkv) = (heads("q_num_heads")? as u64, heads("kv_num_heads")? as u64);
        (
            split_heads(cx, n, q, hq)?,
            split_heads(cx, n, k, hkv)?,
            split_heads(cx, n, v, hkv)?,
        )
    } else {
        (q, k, v)
    };
    let new_keys = cx.ty(k).shape.dims()[2].clone();
    let (k, v) = match (past_k, past_v) {
        (Some(pk), Some(pv)) => (
            cx.add(n, Op::Concat { axis: 2 }, &[pk, k])?,
            cx.add(n, Op::Concat { axis: 2 }, &[pv, v])?,
        ),
        _ => (k, v),
    };
    let q_len = cx.ty(q).shape.dims()[2].clone();
    let keys = cx.ty(k).shape.dims()[2].clone();
    let dt = cx.ty(q).dtype;
    let mut mask = match mask {
        Some(m) => Some(additive_mask(cx, n, m, dt, &keys)?),
        None => None,
    };
    let mut causal = n.int("is_causal", 0)? != 0;
    if causal && new_keys != q_len {
        // kiln's causal frontier is `j <= i + keys - q_len`; ONNX's is
        // `j <= i + past`: build the mask when the two differ
        let past = match past_k {
            Some(pk) => cx.ty(pk).shape.dims()[2].clone(),
            None => Dim::Static(0),
        };
        let (Dim::Static(sq), Dim::Static(skv), Dim::Static(past)) = (&q_len, &keys, &past) else {
            return Err(n.unsupported(format!(
                "is_causal with {q_len} queries and {new_keys} new keys, which may differ (kiln needs them equal or known)"
            )));
        };
        if sq.saturating_mul(*skv) > 1 << 24 {
            return Err(n.unsupported(format!(
                "is_causal with {sq} queries and {new_keys} new keys: kiln would need a {sq}x{skv} mask"
            )));
        }
        let frontier = causal_bias(cx, *sq, *skv, *past, dt);
        mask = Some(match mask {
            Some(m) => cx.add(n, Op::Add, &[m, frontier])?,
            None => frontier,
        });
        causal = false;
    }
    let scale = n.float_opt("scale")?.map(f64::from);
    let mut operands = vec![q, k, v];
    operands.extend(mask);
    let y = cx.add(n, Op::Attention { causal, scale }, &operands)?;
    let y = if rank == 3 { merge_heads(cx, n, y)? } else { y };
    Ok(vec![Val::Graph(y), Val::Graph(k), Val::Graph(v)])
}

/// `[B, S, heads * D]` as `[B, heads, S, D]`.
fn split_heads(cx: &mut Cx, n: &NodeCx, x: Value, heads: u64) -> Result<Value, OnnxError> {
    let dims = cx.ty(x).shape.dims().to_vec();
    let hidden = match &dims[2] {
        Dim::Static(h) if h % heads == 0 => *h,
        other => {
            return Err(n.error(
                format!("a hidden size of {other} does not split into {heads} heads"),
                cx.shapes(n),
            ));
        }
    };
    let shape = vec![
        dims[0].clone(),
        dims[1].clone(),
        Dim::Static(heads),
        Dim::Static(hidden / heads),
    ];
    let x = cx.add(n, Op::Reshape { shape }, &[x])?;
    cx.add(
        n,
        Op::Transpose {
            perm: vec![0, 2, 1, 3],
        },
        &[x],
    )
}

/// `[B, heads, S, D]` back as `[B, S, heads * D]`.
fn merge_heads(cx: &mut Cx, n: &NodeCx, y: Value) -> Result<Value, OnnxError> {
    let y = cx.add(
        n,
        Op::Transpose {
            perm: vec![0, 2, 1, 3],
        },
        &[y],
    )?;
    let dims = cx.ty(y).shape.dims().to_vec();
    let (Dim::Static(h), Dim::Static(d)) = (&dims[2], &dims[3]) else {
        return Err(n.unsupported("symbolic head counts or head sizes"));
    };
    let shape = vec![dims[0].clone(), dims[1].clone(), Dim::Static(h * d)];
    cx.add(n, Op::Reshape { shape }, &[y])
}

/// The mask as an additive bias of the operands' type: a boolean mask is
/// `0` where true and `-inf` where false. Its last axis must cover every key.
fn additive_mask(
    cx: &mut Cx,
    n: &NodeCx,
    m: Value,
    dt: DType,
    keys: &Dim,
) -> Result<Value, OnnxError> {
    let ty = cx.ty(m);
    match ty.shape.dims().last() {
        Some(last) if last == keys || *last == Dim::Static(1) => {}
        last => {
            return Err(n.unsupported(format!(
                "an attn_mask whose last axis ({}) is not the {keys} keys",
                last.map_or("none".to_string(), |d| d.to_string())
            )));
        }
    }
    if ty.dtype == DType::Bool {
        let zero = cx.scalar(dt, 0.0);
        let minus_inf = cx.scalar(dt, f64::NEG_INFINITY);
        cx.add(n, Op::Where, &[m, zero, minus_inf])
    } else if ty.dtype != dt {
        cx.add(n, Op::Cast { dtype: dt }, &[m])
    } else {
        Ok(m)
    }
}

/// `[q_len, keys]`: `0` where key `j <= i + past`, else `-inf`.
fn causal_bias(cx: &mut Cx, q_len: u64, keys: u64, past: u64, dt: DType) -> Value {
    let mut data = Vec::with_capacity((q_len * keys) as usize);
    for i in 0..q_len {
        for j in 0..keys {
            data.push(if j <= i + past {
                0.0
            } else {
                f64::NEG_INFINITY
            });
        }
    }
    cx.constant(Literal::Dense(data), TensorType::of(dt, &[q_len, keys]))
}
