//! Convolutions on the CPU end to end: a model of convolutions that the
//! `cpu` target lowers as implicit GEMMs (padded, strided, dilated,
//! grouped, with bias, activations and a residual, 7x7 windows, a strided
//! 1x1), compiled with Cranelift and run by the executor, against the
//! reference interpreter (`common::compare`: f32 within 1e-4 of the
//! output's largest magnitude) with fresh random inputs and weights, batch
//! sizes 1 and 3. `inverted_bottlenecks_*` does the same for MobileNetV2
//! blocks (C3's pattern: pointwise expansion, depthwise 3x3, pointwise
//! projection with a residual) at odd spatial sizes and channel counts.

mod common;

use kiln::jit::JitOptions;

const MODEL: &str = "model convs {
    input x: f32[n, 6, 11, 13]
    weight w1: f32[8, 6, 3, 3]
    weight b1: f32[8]
    weight w2: f32[10, 3, 3, 5]
    weight w3: f32[13, 6, 7, 7]
    weight w4: f32[4, 6, 1, 1]
    weight w5: f32[6, 6, 3, 3]

    output a = relu(conv2d(x, w1, b1, padding = [1, 1, 1, 1]))
    output b = conv2d(x, w2, stride = [2, 1], padding = [0, 2, 1, 2], dilation = [2, 1], groups = 2)
    output c = relu6(conv2d(x, w3, padding = [3, 3, 3, 3]))
    output d = conv2d(x, w4, stride = [2, 2])
    output e = x + conv2d(x, w5, padding = [1, 1, 1, 1])
}
";

#[test]
fn implicit_gemm_convs_run_on_the_cpu_as_in_the_interpreter() {
    let dir = std::env::temp_dir().join(format!("kiln-cpu-conv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("convs.kiln");
    std::fs::write(&path, MODEL).unwrap();
    let seed = common::seed();
    for size in [1, 3] {
        let r = common::compare(&path, size, seed, &JitOptions::default());
        assert!(r.is_ok(), "batch {size}, seed {seed}: {}", r.unwrap_err());
    }
    std::fs::remove_dir_all(&dir).ok();
}

const BOTTLENECKS: &str = "model blocks {
    input x: f32[n, 5, 7, 9] nhwc
    input z: f32[n, 3, 1, 11]
    weight we: f32[30, 5, 1, 1]
    weight se: f32[30, 1, 1]
    weight wd: f32[30, 1, 3, 3]
    weight sd: f32[30, 1, 1]
    weight wp: f32[5, 30, 1, 1]
    weight sp: f32[5, 1, 1]
    weight wd2: f32[30, 1, 5, 5]
    weight wz: f32[3, 3, 1, 1]

    let h = relu6(conv2d(x, we) * se)
    let d = relu6(conv2d(h, wd, padding = [1, 1, 1, 1], groups = 30) * sd)
    output y = x + conv2d(d, wp) * sp
    let d2 = conv2d(h, wd2, stride = [2, 2], padding = [2, 1, 2, 1], groups = 30)
    output y2 = conv2d(d2, wp) * sp
    output y3 = z + conv2d(z, wz)
}
";

#[test]
fn inverted_bottlenecks_run_on_the_cpu_as_in_the_interpreter() {
    let dir = std::env::temp_dir().join(format!("kiln-cpu-mbv2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("blocks.kiln");
    std::fs::write(&path, BOTTLENECKS).unwrap();
    let seed = common::seed();
    for size in [1, 3] {
        let r = common::compare(&path, size, seed, &JitOptions::default());
        assert!(r.is_ok(), "batch {size}, seed {seed}: {}", r.unwrap_err());
    }
    std::fs::remove_dir_all(&dir).ok();
}
