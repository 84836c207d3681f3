//! quantize and dequantize under every granularity, with zero points, float
//! codes, microscaling blocks and a global scale.

use super::*;
use DType::*;

const NAN: f64 = f64::NAN;

#[test]
fn int4_group_symmetric_round_half_even_and_saturation() {
    let scheme = "quant<group(2, axis = 1), scale = f32>";
    let src = format!(
        "graph t {{
  input %x: f32[4, 4]
  input %s: f32[4, 2]
  %q: i4[4, 4] {scheme} = quantize(%x, %s) {{dtype = i4, scheme = {scheme}}}
  %d: f32[4, 4] = dequantize(%q, %s) {{dtype = f32}}
  output q = %q
  output d = %d
}}"
    );
    #[rustfmt::skip]
    let x = f32t(&[4, 4], &[
        1.25, 1.75, -1.25, 100.0,
        -2.5, 0.5, -20.0, 3.0,
        0.3125, -0.1875, 14.0, -26.0,
        7.5, -4.5, 0.375, 5.625,
    ]);
    let s = f32t(&[4, 2], &[0.5, 0.25, 1.0, 2.0, 0.125, 4.0, 3.0, 0.75]);
    let o = run_all(&src, &[("x", x), ("s", s)]);
    // by hand: x / s per group of two columns, ties to even, saturated to [-8, 7]
    // row 0: 2.5 -> 2, 3.5 -> 4 | -5, 400 -> 7
    // row 1: -2.5 -> -2, 0.5 -> 0 | -10 -> -8, 1.5 -> 2
    // row 2: 2.5 -> 2, -1.5 -> -2 | 3.5 -> 4, -6.5 -> -6
    // row 3: 2.5 -> 2, -1.5 -> -2 | 0.5 -> 0, 7.5 -> 8 -> 7
    #[rustfmt::skip]
    assert_exact(&o[0], I4, &[4, 4], &[
        2.0, 4.0, -5.0, 7.0,
        -2.0, 0.0, -8.0, 2.0,
        2.0, -2.0, 4.0, -6.0,
        2.0, -2.0, 0.0, 7.0,
    ]);
    // codes * s
    #[rustfmt::skip]
    assert_exact(&o[1], F32, &[4, 4], &[
        1.0, 2.0, -1.25, 1.75,
        -2.0, 0.0, -16.0, 4.0,
        0.25, -0.25, 16.0, -24.0,
        6.0, -6.0, 0.0, 5.25,
    ]);
}

#[test]
fn u4_group_with_zero_point() {
    let scheme = "quant<group(2, axis = 1), scale = f32, zero = u4>";
    let src = format!(
        "graph t {{
  input %x: f32[2, 4]
  input %s: f32[2, 2]
  input %z: u4[2, 2]
  %q: u4[2, 4] {scheme} = quantize(%x, %s, %z) {{dtype = u4, scheme = {scheme}}}
  %d: f32[2, 4] = dequantize(%q, %s, %z) {{dtype = f32}}
  output q = %q
  output d = %d
}}"
    );
    let x = f32t(&[2, 4], &[-4.0, 1.25, 2.5, 20.0, 0.5, -0.25, -4.0, 3.0]);
    let s = f32t(&[2, 2], &[0.5, 1.0, 0.25, 2.0]);
    let z = t(U4, &[2, 2], &[8.0, 3.0, 0.0, 15.0]);
    let o = run_all(&src, &[("x", x), ("s", s), ("z", z)]);
    // by hand, round(x / s) + zero as the op table defines it (round half to
    // even before the zero point is added, as ONNX does), saturated to [0, 15]:
    // row 0: -8 + 8 = 0; round(2.5) = 2, + 8 = 10 | round(2.5) = 2, + 3 = 5; 20 + 3 -> 15
    // row 1: 2 + 0 = 2; -1 + 0 -> 0 | -2 + 15 = 13; round(1.5) = 2, + 15 = 17 -> 15
    assert_exact(
        &o[0],
        U4,
        &[2, 4],
        &[0.0, 10.0, 5.0, 15.0, 2.0, 0.0, 13.0, 15.0],
    );
    // (q - zero) * s
    assert_exact(
        &o[1],
        F32,
        &[2, 4],
        &[-4.0, 1.0, 2.0, 12.0, 0.5, 0.0, -4.0, 0.0],
    );
}

#[test]
fn u8_per_tensor_zero_point_f32_zero() {
    // zero point held as f32 (a float zero-point type), per tensor
    let scheme = "quant<per_tensor, scale = f32, zero = f32>";
    let src = format!(
        "graph t {{
  input %x: f32[5]
  input %s: f32[]
  input %z: f32[]
  %q: u8[5] {scheme} = quantize(%x, %s, %z) {{dtype = u8, scheme = {scheme}}}
  %d: f64[5] = dequantize(%q, %s, %z) {{dtype = f64}}
  output q = %q
  output d = %d
}}"
    );
    let x = f32t(&[5], &[0.0, 1.0, -1.0, 100.0, -100.0]);
    let s = f32t(&[], &[0.25]);
    let z = f32t(&[], &[128.0]);
    let o = run_all(&src, &[("x", x), ("s", s), ("z", z)]);
    // x / 0.25 + 128: 128, 132, 124, 528 -> 255, -272 -> 0
    assert_exact(&o[0], U8, &[5], &[128.0, 132.0, 124.0, 255.0, 0.0]);
    assert_exact(&o[1], F64, &[5], &[0.0, 1.0, -1.0, 31.75, -32.0]);
}

#[test]
fn int8_per_channel() {
    let scheme = "quant<per_channel(axis = 1), scale = f32>";
    let src = format!(
        "graph t {{
  input %x: f32[3, 2]
  input %s: f32[2]
  %q: i8[3, 2] {scheme} = quantize(%x, %s) {{dtype = i8, scheme = {scheme}}}
  %d: f32[3, 2] = dequantize(%q, %s) {{dtype = f32}}
  output q = %q
  output d = %d
}}"
    );
    let x = f32t(&[3, 2], &[10.0, 0.5, -70.0, -0.333, 0.75, 2.0]);
    let s = f32t(&[2], &[0.5, 0.01]);
    let o = run_all(&src, &[("x", x), ("s", s)]);
    // column 0 (s 0.5): 20, -140 -> -128, 1.5 -> 2; column 1 (s = f32(0.01)): 50, -33.3 -> -33, 200 -> 127
    assert_exact(&o[0], I8, &[3, 2], &[20.0, 50.0, -128.0, -33.0, 2.0, 127.0]);
    let s1 = 0.01f32 as f64;
    let r = |v: f64| v as f32 as f64;
    assert_exact(
        &o[1],
        F32,
        &[3, 2],
        &[10.0, r(50.0 * s1), -64.0, r(-33.0 * s1), 1.0, r(127.0 * s1)],
    );
}

#[test]
fn f8e4m3_per_tensor_saturates() {
    let scheme = "quant<per_tensor, scale = f32>";
    let src = format!(
        "graph t {{
  input %x: f32[6]
  input %s: f32[]
  %q: f8e4m3[6] {scheme} = quantize(%x, %s) {{dtype = f8e4m3, scheme = {scheme}}}
  %d: bf16[6] = dequantize(%q, %s) {{dtype = bf16}}
  output q = %q
  output d = %d
}}"
    );
    let x = f32t(&[6], &[0.3, 1000.0, -1000.0, 17.0, 0.001, NAN]);
    let s = f32t(&[], &[2.0]);
    let o = run_all(&src, &[("x", x), ("s", s)]);
    // x / 2 = 0.15 -> 0.15625 (1.25 * 2^-3), 500 -> 448, -500 -> -448,
    // 8.5 -> 8 (tie, even mantissa), 0.0005 -> 0 (below half of 2^-9), NaN
    assert_exact(
        &o[0],
        F8E4M3,
        &[6],
        &[0.15625, 448.0, -448.0, 8.0, 0.0, NAN],
    );
    // * 2, exact in bf16 (896 = 7 * 2^7)
    assert_exact(&o[1], BF16, &[6], &[0.3125, 896.0, -896.0, 16.0, 0.0, NAN]);
}

#[test]
fn mxfp4_block32_e8m0_scales() {
    let scheme = "quant<block(32, axis = 1), scale = e8m0>";
    let src = format!(
        "graph t {{
  input %x: f32[2, 32]
  input %s: e8m0[2, 1]
  %q: f4e2m1[2, 32] {scheme} = quantize(%x, %s) {{dtype = f4e2m1, scheme = {scheme}}}
  %d: f32[2, 32] = dequantize(%q, %s) {{dtype = f32}}
  output q = %q
  output d = %d
}}"
    );
    // row 0: (j - 16) / 8, scale 0.5; row 1: (j - 16) * 1.5 (last 100), scale 4
    let mut xv: Vec<f64> = (0..32).map(|j| (j as f64 - 16.0) * 0.125).collect();
    xv.extend((0..32).map(|j| {
        if j == 31 {
            100.0
        } else {
            (j as f64 - 16.0) * 1.5
        }
    }));
    let x = f32t(&[2, 32], &xv);
    let s = t(E8M0, &[2, 1], &[0.5, 4.0]);
    let o = run_all(&src, &[("x", x), ("s", s)]);
    // ml_dtypes: (x / s).astype(float4_e2m1fn) (ties to even code; saturating at 6)
    let q = [
        -4.0, -4.0, -4.0, -3.0, -3.0, -3.0, -2.0, -2.0, -2.0, -2.0, -1.5, -1.0, -1.0, -1.0, -0.5,
        -0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0, 4.0, -6.0,
        -6.0, -6.0, -4.0, -4.0, -4.0, -4.0, -3.0, -3.0, -3.0, -2.0, -2.0, -1.5, -1.0, -1.0, -0.5,
        0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0, 4.0, 4.0, 4.0, 6.0, 6.0,
    ];
    assert_exact(&o[0], F4E2M1, &[2, 32], &q);
    let dq: Vec<f64> = q
        .iter()
        .enumerate()
        .map(|(i, v)| v * if i < 32 { 0.5 } else { 4.0 })
        .collect();
    assert_exact(&o[1], F32, &[2, 32], &dq);
}

#[test]
fn nvfp4_block16_f8_scales_and_global() {
    let scheme = "quant<block(16, axis = 1), scale = f8e4m3, global = f32>";
    let src = format!(
        "graph t {{
  input %x: f32[1, 32]
  input %s: f8e4m3[1, 2]
  input %g: f32[]
  %q: f4e2m1[1, 32] {scheme} = quantize(%x, %s, %g) {{dtype = f4e2m1, scheme = {scheme}}}
  %d: f32[1, 32] = dequantize(%q, %s, %g) {{dtype = f32}}
  output q = %q
  output d = %d
}}"
    );
    // x_i = ((7 i) % 23 - 11) * 0.2 (as f32); block scales 0.75, 1.5; global 0.5
    let xv: Vec<f64> = (0..32)
        .map(|i| (((i * 7) % 23) as f64 - 11.0) * 0.2)
        .collect();
    let x = f32t(&[1, 32], &xv);
    let s = t(F8E4M3, &[1, 2], &[0.75, 1.5]);
    let g = f32t(&[], &[0.5]);
    let o = run_all(&src, &[("x", x), ("s", s), ("g", g)]);
    // ml_dtypes: (x / (s * g)).astype(float4_e2m1fn)
    let q = [
        -6.0, -2.0, 1.5, 6.0, -3.0, 0.5, 4.0, -4.0, -0.5, 3.0, -6.0, -1.5, 2.0, 6.0, -3.0, 1.0,
        2.0, -2.0, 0.0, 2.0, -2.0, -0.5, 1.5, -3.0, -1.0, 1.0, 3.0, -1.5, 0.5, 2.0, -2.0, -0.5,
    ];
    assert_exact(&o[0], F4E2M1, &[1, 32], &q);
    let dq: Vec<f64> = q
        .iter()
        .enumerate()
        .map(|(i, v)| v * if i < 16 { 0.375 } else { 0.75 })
        .collect();
    assert_exact(&o[1], F32, &[1, 32], &dq);
}

#[test]
fn quantize_ties_to_even_per_tensor_int() {
    let scheme = "quant<per_tensor, scale = f64>";
    let src = format!(
        "graph t {{
  input %x: f64[9]
  input %s: f64[]
  %q: i8[9] {scheme} = quantize(%x, %s) {{dtype = i8, scheme = {scheme}}}
  output q = %q
}}"
    );
    let x = f64t(
        &[9],
        &[2.5, 3.5, -2.5, -3.5, 0.5, -0.5, 1.5, 2.5000001, 127.5],
    );
    let s = f64t(&[], &[1.0]);
    let q = eval1(&src, &[("x", x), ("s", s)]);
    // half to even; 2.5000001 rounds up; 127.5 -> 128 -> saturates to 127
    assert_exact(
        &q,
        I8,
        &[9],
        &[2.0, 4.0, -2.0, -4.0, 0.0, -0.0, 2.0, 3.0, 127.0],
    );
    // scale 0.5: x / s = 2.5 -> 2
    let x = f64t(&[2], &[1.25, -1.25]);
    let src2 = src.replace("[9]", "[2]");
    let q = eval1(&src2, &[("x", x), ("s", f64t(&[], &[0.5]))]);
    assert_exact(&q, I8, &[2], &[2.0, -2.0]);
}

#[test]
fn dequantize_of_quantize_error_is_bounded() {
    let mut r = rng("dequantize_of_quantize_error_is_bounded");
    // int8 per channel on axis 0 of [5, 33]; scale = max |x| / 127 per row
    let x = random(&mut r, F32, &[5, 33], -3.0, 3.0);
    let scales: Vec<f64> = (0..5)
        .map(|i| {
            x.data[i * 33..(i + 1) * 33]
                .iter()
                .fold(0.0f64, |m, v| m.max(v.abs()))
                / 127.0
        })
        .collect();
    let s = f32t(&[5], &scales);
    let scheme = "quant<per_channel(axis = 0), scale = f32>";
    let src = format!(
        "graph t {{
  input %x: f32[5, 33]
  input %s: f32[5]
  %q: i8[5, 33] {scheme} = quantize(%x, %s) {{dtype = i8, scheme = {scheme}}}
  %d: f64[5, 33] = dequantize(%q, %s) {{dtype = f64}}
  output d = %d
}}"
    );
    let d = eval1(&src, &[("x", x.clone()), ("s", s.clone())]);
    for (i, (&dv, &xv)) in d.data.iter().zip(&x.data).enumerate() {
        let sc = s.data[i / 33];
        assert!(
            (dv - xv).abs() <= sc / 2.0 * (1.0 + 1e-12),
            "element {i}: x {xv}, dq {dv}, scale {sc}"
        );
    }
    // int4 groups of 4 along axis 1 of [3, 8], bf16 scales, f32 dequantized
    let x = random(&mut r, F32, &[3, 8], -1.0, 1.0);
    let scales: Vec<f64> = (0..6)
        .map(|g| {
            x.data[g * 4..g * 4 + 4]
                .iter()
                .fold(0.0f64, |m, v| m.max(v.abs()))
                / 7.0
        })
        .collect();
    // bf16 may round a scale down, so give it one ulp of room before rounding
    let s = t(
        BF16,
        &[3, 2],
        &scales
            .iter()
            .map(|v| v * (1.0 + 2f64.powi(-7)))
            .collect::<Vec<_>>(),
    );
    let scheme = "quant<group(4, axis = 1), scale = bf16>";
    let src = format!(
        "graph t {{
  input %x: f32[3, 8]
  input %s: bf16[3, 2]
  %q: i4[3, 8] {scheme} = quantize(%x, %s) {{dtype = i4, scheme = {scheme}}}
  %d: f32[3, 8] = dequantize(%q, %s) {{dtype = f32}}
  output q = %q
  output d = %d
}}"
    );
    let o = run_all(&src, &[("x", x.clone()), ("s", s.clone())]);
    for (i, (&dv, &xv)) in o[1].data.iter().zip(&x.data).enumerate() {
        let sc = s.data[i / 4];
        assert!((-8.0..=7.0).contains(&o[0].data[i]));
        assert!(
            (dv - xv).abs() <= sc / 2.0 + ulp(F32, xv),
            "element {i}: x {xv}, dq {dv}, scale {sc}"
        );
    }
}

#[test]
fn quantized_inputs_dequantize() {
    // codes bound directly as an input of quantized type; i3 codes, per channel
    let scheme = "quant<per_channel(axis = 0), scale = f16>";
    let src = format!(
        "graph t {{
  input %q: i3[2, 3] {scheme}
  input %s: f16[2]
  %d: f16[2, 3] = dequantize(%q, %s) {{dtype = f16}}
  output d = %d
}}"
    );
    let q = t(I3, &[2, 3], &[-4.0, 0.0, 3.0, 1.0, -1.0, 2.0]);
    let s = t(F16, &[2], &[0.5, 1000.0]);
    let d = eval1(&src, &[("q", q), ("s", s)]);
    // codes * scale, rounded to f16 (exact here: -2, 0, 1.5, 1000, -1000, 2000)
    assert_exact(&d, F16, &[2, 3], &[-2.0, 0.0, 1.5, 1000.0, -1000.0, 2000.0]);
}

#[test]
fn group_along_axis0_and_bf16_input_with_f16_global() {
    // i4[4, 3] with group(2, axis = 0): rows (0, 1) share scale row 0, rows (2, 3) row 1
    let scheme = "quant<group(2, axis = 0), scale = f32>";
    let src = format!(
        "graph t {{
  input %x: bf16[4, 3]
  input %s: f32[2, 3]
  %q: i4[4, 3] {scheme} = quantize(%x, %s) {{dtype = i4, scheme = {scheme}}}
  %d: bf16[4, 3] = dequantize(%q, %s) {{dtype = bf16}}
  output q = %q
  output d = %d
}}"
    );
    #[rustfmt::skip]
    let x = t(BF16, &[4, 3], &[
        1.0, 1.0, 1.0,
        -3.0, 2.5, 6.0,
        1.0, 1.0, 1.0,
        -3.0, 2.5, 6.0,
    ]);
    let s = f32t(&[2, 3], &[1.0, 0.5, 2.0, 0.25, 1.0, 4.0]);
    let o = run_all(&src, &[("x", x), ("s", s)]);
    // by hand: rows 0-1 / [1, 0.5, 2]: [1, 2, 0.5 -> 0], [-3, 5, 3];
    // rows 2-3 / [0.25, 1, 4]: [4, 1, 0.25 -> 0], [-12 -> -8, 2.5 -> 2, 1.5 -> 2]
    #[rustfmt::skip]
    assert_exact(&o[0], I4, &[4, 3], &[
        1.0, 2.0, 0.0,
        -3.0, 5.0, 3.0,
        4.0, 1.0, 0.0,
        -8.0, 2.0, 2.0,
    ]);
    #[rustfmt::skip]
    assert_exact(&o[1], BF16, &[4, 3], &[
        1.0, 1.0, 0.0,
        -3.0, 2.5, 6.0,
        1.0, 1.0, 0.0,
        -2.0, 2.0, 8.0,
    ]);
    // NVFP4-style with an f16 global scale, block along axis 0 of [16, 1]
    let scheme = "quant<block(16, axis = 0), scale = f8e4m3, global = f16>";
    let src = format!(
        "graph t {{
  input %x: f32[16, 1]
  input %s: f8e4m3[1, 1]
  input %g: f16[]
  %q: f4e2m1[16, 1] {scheme} = quantize(%x, %s, %g) {{dtype = f4e2m1, scheme = {scheme}}}
  %d: f32[16, 1] = dequantize(%q, %s, %g) {{dtype = f32}}
  output d = %d
}}"
    );
    let xv: Vec<f64> = (0..16).map(|i| i as f64 - 8.0).collect();
    let x = f32t(&[16, 1], &xv);
    let s = t(F8E4M3, &[1, 1], &[2.0]);
    let g = t(F16, &[], &[0.5]);
    let d = eval1(&src, &[("x", x), ("s", s), ("g", g)]);
    // effective scale 1: f4 values of -8..7: -8 -> -6, -7 -> -6, -5 -> -4 (tie 4/6 -> 4),
    // -3 -> -3, 2.5 n/a; 5 -> 4 (tie, even code), 7 -> 6
    let exp = [
        -6.0, -6.0, -6.0, -4.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 4.0, 6.0, 6.0,
    ];
    assert_exact(&d, F32, &[16, 1], &exp);
}
