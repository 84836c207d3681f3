//! Every rule, checked against the reference interpreter on an instance of
//! its left-hand side with fresh random inputs. A rule without a sample here
//! fails `every_rule_has_a_sample`.

use super::check::check_rule;
use super::{Rule, algebra, fusion, layout, quant};

/// (rule name, a graph whose output is the rule's left-hand side, relative tolerance)
const SAMPLES: &[(&str, &str, f64)] = &[
    (
        "transpose-transpose",
        "graph t {
  input %x: f32[2, 3, 4]
  %a: f32[3, 4, 2] = transpose(%x) {perm = [1, 2, 0]}
  %b: f32[4, 2, 3] = transpose(%a) {perm = [1, 2, 0]}
  output y = %b
}
",
        0.0,
    ),
    (
        "transpose-transpose",
        "graph t {
  input %x: f32[5, 3]
  %a: f32[3, 5] = transpose(%x) {perm = [1, 0]}
  %b: f32[5, 3] = transpose(%a) {perm = [-1, 0]}
  output y = %b
}
",
        0.0,
    ),
    (
        "transpose-transpose",
        "graph t {
  input %x: f32[2, 3, 4]
  %a: f32[3, 2, 4] = transpose(%x) {perm = [1, 0, 2]}
  %b: f32[3, 4, 2] = transpose(%a) {perm = [0, 2, 1]}
  output y = %b
}
",
        0.0,
    ),
    (
        "transpose-identity",
        "graph t {
  input %x: f32[2, 3]
  %a: f32[2, 3] = transpose(%x) {perm = [0, 1]}
  output y = %a
}
",
        0.0,
    ),
    (
        "reshape-reshape",
        "graph t {
  input %x: f32[2, 6]
  %a: f32[3, 4] = reshape(%x) {shape = [3, 4]}
  %b: f32[12] = reshape(%a) {shape = [12]}
  output y = %b
}
",
        0.0,
    ),
    (
        "view-identity",
        "graph t {
  input %x: f32[batch, 3]
  %a: f32[batch, 3] = reshape(%x) {shape = [batch, 3]}
  output y = %a
}
",
        0.0,
    ),
    (
        "view-identity",
        "graph t {
  input %x: f32[2, 3]
  %a: f32[2, 3] = expand(%x) {shape = [2, 3]}
  output y = %a
}
",
        0.0,
    ),
    (
        "unary-transpose-sink",
        "graph t {
  input %x: f32[2, 3]
  %a: f32[3, 2] = transpose(%x) {perm = [1, 0]}
  %b: f32[3, 2] = tanh(%a)
  output y = %b
}
",
        0.0,
    ),
    (
        "binary-transpose-sink",
        "graph t {
  input %x: f32[2, 3, 5]
  input %z: f32[2, 3, 5]
  %a: f32[5, 2, 3] = transpose(%x) {perm = [2, 0, 1]}
  %b: f32[5, 2, 3] = transpose(%z) {perm = [2, 0, 1]}
  %c: f32[5, 2, 3] = mul(%a, %b)
  output y = %c
}
",
        0.0,
    ),
    (
        "broadcast-fold",
        "graph t {
  input %x: f32[4, 3]
  input %b: f32[3]
  %e: f32[4, 3] = expand(%b) {shape = [4, 3]}
  %c: f32[4, 3] = add(%e, %x)
  output y = %c
}
",
        0.0,
    ),
    (
        "mul-one",
        "graph t {
  input %x: f32[4, 3]
  %one: f32[] = constant {value = 1}
  %c: f32[4, 3] = mul(%x, %one)
  output y = %c
}
",
        0.0,
    ),
    (
        "div-one",
        "graph t {
  input %x: bf16[7]
  %one: bf16[] = constant {value = 1}
  %c: bf16[7] = div(%x, %one)
  output y = %c
}
",
        0.0,
    ),
    (
        "add-zero",
        "graph t {
  input %x: f32[4, 3]
  %z: f32[3] = constant {value = 0}
  %c: f32[4, 3] = add(%z, %x)
  output y = %c
}
",
        0.0,
    ),
    (
        "add-zero",
        "graph t {
  input %x: i32[5]
  %z: i32[] = constant {value = 0}
  %c: i32[5] = sub(%x, %z)
  output y = %c
}
",
        0.0,
    ),
    (
        "sub-self-int",
        "graph t {
  input %x: i32[2, 5]
  %c: i32[2, 5] = sub(%x, %x)
  output y = %c
}
",
        0.0,
    ),
    (
        "neg-neg",
        "graph t {
  input %x: f16[9]
  %a: f16[9] = neg(%x)
  %b: f16[9] = neg(%a)
  output y = %b
}
",
        0.0,
    ),
    (
        "matmul-scale-out",
        "graph t {
  input %a: f32[m, 16]
  weight %b: f32[16, 8]
  %s: f32[] = constant {value = 0.125}
  %as: f32[m, 16] = mul(%a, %s)
  %c: f32[m, 8] = matmul(%as, %b)
  output y = %c
}
",
        1e-6,
    ),
    (
        "scale-into-weight",
        "graph t {
  input %x: f32[m, 16]
  weight %w: f32[16, 8]
  weight %s: f32[8]
  %c: f32[m, 8] = matmul(%x, %w)
  %d: f32[m, 8] = mul(%c, %s)
  output y = %d
}
",
        1e-6,
    ),
    (
        "conv-batchnorm-fold",
        "graph t {
  input %x: f32[2, 3, 9, 9]
  weight %w: f32[4, 3, 3, 3]
  weight %b: f32[4]
  weight %gamma: f32[4]
  weight %beta: f32[4]
  weight %mean: f32[4]
  weight %var: f32[4]
  %v: f32[4] = abs(%var)
  %c: f32[2, 4, 7, 7] = conv2d(%x, %w, %b)
  %n: f32[2, 4, 7, 7] = batch_norm(%c, %gamma, %beta, %mean, %v)
  output y = %n
}
",
        1e-5,
    ),
    (
        "conv-channels-last",
        "graph t {
  input %x: f32[2, 3, 7, 7]
  weight %w: f32[4, 3, 3, 3]
  %c: f32[2, 4, 5, 5] = conv2d(%x, %w)
  output y = %c
}
",
        0.0,
    ),
    (
        "relayout-relayout",
        "graph t {
  input %x: f32[1, 3, 2, 4]
  %a: f32[1, 3, 2, 4] nhwc = relayout(%x) {layout = nhwc}
  %b: f32[1, 3, 2, 4] = relayout(%a) {layout = row_major}
  output y = %b
}
",
        0.0,
    ),
    (
        "relayout-identity",
        "graph t {
  input %x: f32[1, 3, 2, 4] nhwc
  %a: f32[1, 3, 2, 4] nhwc = relayout(%x) {layout = nhwc}
  output y = %a
}
",
        0.0,
    ),
    (
        "unary-relayout-sink",
        "graph t {
  input %x: f32[1, 3, 2, 4]
  %a: f32[1, 3, 2, 4] nhwc = relayout(%x) {layout = nhwc}
  %b: f32[1, 3, 2, 4] nhwc = relu6(%a)
  output y = %b
}
",
        0.0,
    ),
    (
        "binary-relayout-sink",
        "graph t {
  input %x: f32[1, 3, 2, 4]
  input %z: f32[1, 3, 2, 4]
  %a: f32[1, 3, 2, 4] nhwc = relayout(%x) {layout = nhwc}
  %b: f32[1, 3, 2, 4] nhwc = relayout(%z) {layout = nhwc}
  %c: f32[1, 3, 2, 4] nhwc = sub(%a, %b)
  output y = %c
}
",
        0.0,
    ),
    (
        "weight-packed",
        "graph t {
  input %x: bf16[m, 32]
  weight %w: bf16[32, 8]
  %c: bf16[m, 8] = matmul(%x, %w)
  output y = %c
}
",
        0.0,
    ),
    (
        "weight-packed",
        "graph t {
  input %x: bf16[m, 64]
  weight %q: i4[64, 8] quant<group(32, axis = 0), scale = bf16>
  weight %s: bf16[2, 8]
  %w: bf16[64, 8] = dequantize(%q, %s) {dtype = bf16}
  %c: bf16[m, 8] = matmul(%x, %w)
  output y = %c
}
",
        0.0,
    ),
    // the integer product is exact; the dequantize-then-multiply side rounds
    // each dequantized element to f32 first: agreement to f32 precision
    (
        "w8a8-int8-matmul",
        "graph t {
  input %xq: i8[m, 32] quant<per_channel(axis = 0), scale = f32>
  input %sx: f32[m]
  weight %wq: i8[32, 8] quant<per_channel(axis = 1), scale = f32>
  weight %sw: f32[8]
  %x: f32[m, 32] = dequantize(%xq, %sx) {dtype = f32}
  %w: f32[32, 8] = dequantize(%wq, %sw) {dtype = f32}
  %c: f32[m, 8] = matmul(%x, %w)
  output y = %c
}
",
        1e-6,
    ),
    (
        "fp8-matmul",
        "graph t {
  input %aq: f8e4m3[3, 16] quant<per_tensor, scale = f32>
  input %sa: f32[]
  weight %bq: f8e4m3[16, 4] quant<per_tensor, scale = f32>
  weight %sb: f32[]
  %a: f32[3, 16] = dequantize(%aq, %sa) {dtype = f32}
  %b: f32[16, 4] = dequantize(%bq, %sb) {dtype = f32}
  %c: f32[3, 4] = matmul(%a, %b)
  output y = %c
}
",
        1e-6,
    ),
    // per-token scales as `act i8` declarations make them: one group over
    // the whole last axis of a rank-3 activation, bf16 values (the left side
    // rounds every dequantized element and the product to bf16)
    (
        "w8a8-int8-matmul",
        "graph t {
  input %xq: i8[2, m, 32] quant<group(32, axis = 2), scale = f32>
  input %sx: f32[2, m, 1]
  weight %wq: i8[32, 8] quant<per_channel(axis = 1), scale = f32>
  weight %sw: f32[8]
  %x: bf16[2, m, 32] = dequantize(%xq, %sx) {dtype = bf16}
  %w: bf16[32, 8] = dequantize(%wq, %sw) {dtype = bf16}
  %c: bf16[2, m, 8] = matmul(%x, %w)
  output y = %c
}
",
        2e-2,
    ),
    // fp8 W8A8: per-token activation scales, per-channel weight scales
    (
        "fp8-matmul",
        "graph t {
  input %aq: f8e4m3[5, 16] quant<group(16, axis = 1), scale = f32>
  input %sa: f32[5, 1]
  weight %bq: f8e4m3[16, 4] quant<per_channel(axis = 1), scale = f32>
  weight %sb: f32[4]
  %a: f32[5, 16] = dequantize(%aq, %sa) {dtype = f32}
  %b: f32[16, 4] = dequantize(%bq, %sb) {dtype = f32}
  %c: f32[5, 4] = matmul(%a, %b)
  output y = %c
}
",
        1e-6,
    ),
    (
        "group-scale-after-sums",
        "graph t {
  input %x: f32[3, 64]
  weight %q: i4[64, 8] quant<group(32, axis = 0), scale = f32>
  weight %s: f32[2, 8]
  %w: f32[64, 8] = dequantize(%q, %s) {dtype = f32}
  %c: f32[3, 8] = matmul(%x, %w)
  output y = %c
}
",
        1e-6,
    ),
    // the attention op sums in the same order as the decomposed form
    (
        "attention-pattern",
        "graph t {
  input %q: f32[1, 2, 5, 4]
  input %k: f32[1, 2, 7, 4]
  input %v: f32[1, 2, 7, 3]
  input %mask: f32[1, 1, 5, 7]
  %kt: f32[1, 2, 4, 7] = transpose(%k) {perm = [0, 1, 3, 2]}
  %qk: f32[1, 2, 5, 7] = matmul(%q, %kt)
  %s: f32[] = constant {value = 0.5}
  %sc: f32[1, 2, 5, 7] = mul(%qk, %s)
  %m: f32[1, 2, 5, 7] = add(%sc, %mask)
  %p: f32[1, 2, 5, 7] = softmax(%m)
  %o: f32[1, 2, 5, 3] = matmul(%p, %v)
  output y = %o
}
",
        1e-6,
    ),
];

/// Fusion rules apply to graphs loaded with `mat` boundaries.
const FUSION_SAMPLES: &[(&str, &str)] = &[
    (
        "fuse-elementwise",
        "graph t {
  input %x: f32[4, 5]
  %a: f32[4, 5] = exp(%x)
  %b: f32[4, 5] = mul(%a, %x)
  output y = %b
}
",
    ),
    (
        "fuse-epilogue",
        "graph t {
  input %x: f32[3, 8]
  weight %w: f32[8, 5]
  weight %b: f32[5]
  %m: f32[3, 5] = matmul(%x, %w)
  %c: f32[3, 5] = add(%m, %b)
  output y = %c
}
",
    ),
    (
        "fuse-prologue",
        "graph t {
  input %x: bf16[3, 64]
  weight %q: i4[64, 8] quant<group(32, axis = 0), scale = bf16>
  weight %s: bf16[2, 8]
  %w: bf16[64, 8] = dequantize(%q, %s) {dtype = bf16}
  %c: bf16[3, 8] = matmul(%x, %w)
  output y = %c
}
",
    ),
    (
        "fuse-norm-prologue",
        "graph t {
  input %x: f32[3, 16]
  weight %g: f32[16]
  weight %w: f32[16, 4]
  %n: f32[3, 16] = rms_norm(%x, %g)
  %c: f32[3, 4] = matmul(%n, %w)
  output y = %c
}
",
    ),
    (
        "fuse-attention-view",
        "graph t {
  input %q: f32[1, 2, 8, 16]
  input %kv: f32[1, 8, 64]
  %k: f32[1, 8, 32] = slice(%kv) {axes = [2], starts = [0], ends = [32]}
  %v: f32[1, 8, 32] = slice(%kv) {axes = [2], starts = [32], ends = [64]}
  %kr: f32[1, 8, 2, 16] = reshape(%k) {shape = [1, 8, 2, 16]}
  %vr: f32[1, 8, 2, 16] = reshape(%v) {shape = [1, 8, 2, 16]}
  %kt: f32[1, 2, 8, 16] = transpose(%kr) {perm = [0, 2, 1, 3]}
  %vt: f32[1, 2, 8, 16] = transpose(%vr) {perm = [0, 2, 1, 3]}
  %o: f32[1, 2, 8, 16] = attention(%q, %kt, %vt) {causal = true}
  output y = %o
}
",
    ),
    (
        "fuse-conv-chain",
        "graph t {
  input %x: f32[1, 4, 6, 6]
  weight %we: f32[8, 4, 1, 1]
  weight %wd: f32[8, 1, 3, 3]
  %e: f32[1, 8, 6, 6] = conv2d(%x, %we)
  %d: f32[1, 8, 6, 6] = conv2d(%e, %wd) {padding = [1, 1, 1, 1], groups = 8}
  output y = %d
}
",
    ),
];

fn all_rules() -> Vec<&'static Rule> {
    algebra::RULES
        .iter()
        .chain(fusion::RULES)
        .chain(layout::RULES)
        .chain(quant::RULES)
        .collect()
}

#[test]
fn every_rule_has_a_sample() {
    for r in all_rules() {
        let sampled = SAMPLES.iter().any(|(n, _, _)| *n == r.name)
            || FUSION_SAMPLES.iter().any(|(n, _)| *n == r.name);
        assert!(sampled, "rule `{}` has no sample in rules/tests.rs", r.name);
    }
    let mut names: Vec<_> = all_rules().iter().map(|r| r.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), all_rules().len(), "rule names are unique");
}

#[test]
fn every_rule_is_an_identity_on_random_inputs() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    let rules = all_rules();
    let mut failures = Vec::new();
    for (i, (name, src, tol)) in SAMPLES.iter().enumerate() {
        let rule = rules
            .iter()
            .find(|r| r.name == *name)
            .unwrap_or_else(|| panic!("no rule `{name}`"));
        match check_rule(rule, src, seed.wrapping_add(i as u64), false) {
            Ok(c) if c.max_rel_diff <= *tol => {}
            Ok(c) => failures.push(format!(
                "{name} (sample {i}): relative difference {} > {tol} (seed {})",
                c.max_rel_diff, c.seed
            )),
            Err(e) => failures.push(format!("{name} (sample {i}): {e}")),
        }
    }
    for (i, (name, src)) in FUSION_SAMPLES.iter().enumerate() {
        let rule = rules
            .iter()
            .find(|r| r.name == *name)
            .unwrap_or_else(|| panic!("no rule `{name}`"));
        // `mat` is the identity on values, so both sides are exactly equal
        match check_rule(rule, src, seed.wrapping_add(100 + i as u64), true) {
            Ok(c) if c.max_rel_diff == 0.0 => {}
            Ok(c) => failures.push(format!(
                "{name}: relative difference {} (seed {})",
                c.max_rel_diff, c.seed
            )),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
