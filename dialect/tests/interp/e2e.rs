//! Whole graphs: examples/ir/mlp.kir against an f64 computation written here.

use super::*;
use DType::*;

/// Rounds to the nearest bf16 (ties to even), from the format's definition:
/// 8 significant bits, exponent at least -126 (subnormals below).
fn bf16(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let e = (x.abs().log2().floor() as i32).max(-126);
    let q = 2f64.powi(e - 7);
    (x / q).round_ties_even() * q
}

/// erf by its Maclaurin series for |z| <= 2, and by the continued fraction
/// of erfc beyond (both far more precise than bf16 needs).
fn erf(z: f64) -> f64 {
    if z.abs() <= 2.0 {
        let mut term = z;
        let mut sum = z;
        for n in 1..200 {
            term *= -z * z / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(a) = e^(-a^2) / sqrt(pi) / (a + (1/2) / (a + 1 / (a + (3/2) / (a + ...))))
        let a = z.abs();
        let mut k = a;
        for n in (1..300).rev() {
            k = a + (n as f64 / 2.0) / k;
        }
        let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / k;
        z.signum() * (1.0 - erfc)
    }
}

#[test]
fn erf_oracle_matches_known_values() {
    // scipy.special.erf([0.1, 0.5, 1, 2, 2.9, 3.5, 5])
    let known = [
        (0.1, 0.1124629160182849),
        (0.5, 0.5204998778130465),
        (1.0, 0.8427007929497148),
        (2.0, 0.9953222650189527),
        (2.9, 0.9999589021219005),
        (3.5, 0.9999992569016276),
        (5.0, 0.9999999999984626),
    ];
    for (x, e) in known {
        assert!(
            (erf(x) - e).abs() < 1e-14,
            "erf({x}) = {}, expected {e}",
            erf(x)
        );
        assert!((erf(-x) + e).abs() < 1e-14);
    }
    // bf16 by definition: 1 + 2^-8 is a tie -> 1; 1 + 3 * 2^-8 -> 1 + 2^-6
    assert_eq!(bf16(1.0 + 2f64.powi(-8)), 1.0);
    assert_eq!(bf16(1.0 + 3.0 * 2f64.powi(-8)), 1.0 + 2f64.powi(-6));
    assert_eq!(bf16(-0.1), -0.10009765625);
}

/// `y = layer_norm(x + gelu(x @ w1 + b1) @ w2 + b2)`; `round` is applied
/// after every op (the identity for a pure f64 reference).
fn mlp_reference(
    x: &Tensor,
    w1: &Tensor,
    b1: &Tensor,
    w2: &Tensor,
    b2: &Tensor,
    round: &dyn Fn(f64) -> f64,
) -> Vec<f64> {
    let (batch, d, hdim) = (x.shape[0], x.shape[1], w1.shape[1]);
    let mut out = vec![];
    for r in 0..batch {
        let xr = &x.data[r * d..(r + 1) * d];
        let mut h = vec![0.0; hdim];
        for (j, hj) in h.iter_mut().enumerate() {
            let mut s = 0.0;
            for (p, &xv) in xr.iter().enumerate() {
                s += xv * w1.data[p * hdim + j];
            }
            let pre = round(round(s) + b1.data[j]);
            *hj = round(0.5 * pre * (1.0 + erf(pre / 2f64.sqrt())));
        }
        let mut res = vec![0.0; d];
        for (j, rj) in res.iter_mut().enumerate() {
            let mut s = 0.0;
            for (p, &hv) in h.iter().enumerate() {
                s += hv * w2.data[p * d + j];
            }
            let proj = round(round(s) + b2.data[j]);
            *rj = round(xr[j] + proj);
        }
        let mean = res.iter().sum::<f64>() / d as f64;
        let var = res.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
        out.extend(res.iter().map(|v| round((v - mean) / (var + 1e-5).sqrt())));
    }
    out
}

#[test]
fn mlp_example_bf16_batch3() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/ir/mlp.kir");
    let src = std::fs::read_to_string(path).expect("examples/ir/mlp.kir");
    let mut r = rng("mlp_example_bf16_batch3");
    let x = random(&mut r, BF16, &[3, 1024], -1.0, 1.0);
    let w1 = random(&mut r, BF16, &[1024, 4096], -1.0 / 16.0, 1.0 / 16.0);
    let b1 = random(&mut r, BF16, &[4096], -0.5, 0.5);
    let w2 = random(&mut r, BF16, &[4096, 1024], -1.0 / 32.0, 1.0 / 32.0);
    let b2 = random(&mut r, BF16, &[1024], -0.5, 0.5);
    let y = eval1(
        &src,
        &[
            ("x", x.clone()),
            ("w1", w1.clone()),
            ("b1", b1.clone()),
            ("w2", w2.clone()),
            ("b2", b2.clone()),
        ],
    );
    // (1) the same computation rounding to bf16 after every op, as the
    // IR's value semantics say: equal to within one bf16 ulp
    let emulated = mlp_reference(&x, &w1, &b1, &w2, &b2, &bf16);
    assert_ulps(&y, BF16, &[3, 1024], &emulated, 1.0);
    // (2) a pure f64 computation: the graph's bf16 roundings (relative 2^-9
    // each) leave the normalized outputs within a few hundredths
    let exact = mlp_reference(&x, &w1, &b1, &w2, &b2, &|v| v);
    let max_err = y
        .data
        .iter()
        .zip(&exact)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let mean_err = y
        .data
        .iter()
        .zip(&exact)
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
        / exact.len() as f64;
    assert!(max_err < 0.05, "max |bf16 graph - f64| = {max_err}");
    assert!(mean_err < 0.01, "mean |bf16 graph - f64| = {mean_err}");
    // the output is normalized: per row mean ~0, variance ~1
    for row in y.data.chunks(1024) {
        let m = row.iter().sum::<f64>() / 1024.0;
        let v = row.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / 1024.0;
        assert!(
            m.abs() < 0.01 && (v - 1.0).abs() < 0.02,
            "mean {m}, var {v}"
        );
    }
}

#[test]
fn symbolic_batch_binds_to_each_size() {
    // a smaller graph of the same form, batch bound to 1 and to 5
    let src = "graph m {
  input %x: f32[batch, 3]
  weight %w: f32[3, 2]
  %h: f32[batch, 2] = matmul(%x, %w)
  %g: f32[batch, 2] = gelu(%h) {approximate = tanh}
  output g = %g
}";
    let w = f32t(&[3, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, -1.0]);
    for batch in [1usize, 5] {
        let xv: Vec<f64> = (0..batch * 3).map(|i| i as f64 * 0.25 - 1.0).collect();
        let x = f32t(&[batch, 3], &xv);
        let g = eval1(src, &[("x", x), ("w", w.clone())]);
        let exp: Vec<f64> = (0..batch)
            .flat_map(|b| {
                let r = &xv[b * 3..b * 3 + 3];
                [r[0] + r[2], r[1] - r[2]]
            })
            .map(|h| {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * h * (1.0 + (c * (h + 0.044715 * h * h * h)).tanh())
            })
            .collect();
        assert_close(&g, F32, &[batch, 2], &exp, REL32, 1e-7);
    }
}
