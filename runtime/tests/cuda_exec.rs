//! The CUDA executor end to end, with hand-written PTX kernels that follow
//! the kernel contract (runtime/tests/ptx/*.ptx) in small programs built by
//! hand, checked against values computed here on the host.
//!
//! Without a CUDA driver only the no-driver test runs; the GPU tests print
//! a notice and pass, unless `KILN_REQUIRE_GPU=1`, which makes a missing
//! driver or device a failure.

use std::collections::HashMap;
use std::io::Write;

use kiln_dialect::kernel::{Body, Buffer, Expr, Kernel, Launch, Program, Ty};
use kiln_dialect::{DType, Dim, Shape};
use kiln_runtime::HostTensor;
use kiln_runtime::cpu::RunError;
use kiln_runtime::cuda::{CudaError, CudaExecutable, Grid, PtxKernel, driver_present};
use rand::Rng;

const ADD: &str = include_str!("ptx/add_f32.ptx");
const SCALE: &str = include_str!("ptx/scale_f32.ptx");
const ADD_ROWS: &str = include_str!("ptx/add_rows_f32.ptx");
const ROW_SUM: &str = include_str!("ptx/row_sum_f32.ptx");

/// Writes straight to stderr, past the test harness's output capture.
fn notice(message: &str) {
    let _ = writeln!(std::io::stderr(), "note: {message}");
}

fn gpu_required() -> bool {
    std::env::var("KILN_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// Builds the executable, or `None` (with a notice) where this machine has
/// no driver or device and `KILN_REQUIRE_GPU=1` is not set.
fn build(program: Program, kernels: Vec<PtxKernel>) -> Option<CudaExecutable> {
    match CudaExecutable::new(program, kernels) {
        Ok(exe) => Some(exe),
        Err(e) if e.is_unavailable() && !gpu_required() => {
            notice(&format!(
                "skipping a GPU test: {e} (set KILN_REQUIRE_GPU=1 to fail instead)"
            ));
            None
        }
        Err(e) => panic!("building the CUDA executable failed: {e}"),
    }
}

fn buf(name: &str, dims: &[&str]) -> Buffer {
    Buffer {
        name: name.into(),
        dtype: DType::F32,
        shape: Shape(
            dims.iter()
                .map(|d| d.parse::<u64>().map_or_else(|_| Dim::sym(d), Dim::Static))
                .collect(),
        ),
    }
}

fn launch(bufs: &[Buffer], args: &[usize], out: usize, dims: &[&str], bind_time: bool) -> Launch {
    Launch {
        kernel: Kernel {
            name: format!("k_{}", bufs[out].name),
            inputs: args.iter().map(|&a| bufs[a].clone()).collect(),
            output: bufs[out].clone(),
            dims: dims.iter().map(|d| d.to_string()).collect(),
            float: Ty::F32,
            // The executor never reads the body: the kernels are PTX.
            body: Body::Map {
                expr: Expr::Float(0.0),
            },
        },
        args: args.to_vec(),
        out,
        bind_time,
    }
}

fn ptx(text: &str, entry: &str, block: u32, grid: Grid) -> PtxKernel {
    PtxKernel {
        entry: entry.into(),
        ptx: text.into(),
        arch: "sm_80".into(),
        block,
        grid,
        shared_bytes: 0,
        tensor_maps: Vec::new(),
    }
}

fn elements() -> Grid {
    Grid::Elements { per_thread: 1 }
}

/// x, b: f32[m, n] inputs; w: f32[n] weight; c: f32[1] constant.
/// w2 = w * c (bind time), s = x + b, h = s + w2 (by row), y = rowsum(h),
/// d = h + s (the add kernel again: its module is shared).
/// Outputs: y, y_again (= y), h, d, w2, x_out (= x).
fn model(c: f64) -> (Program, Vec<PtxKernel>) {
    let bufs = vec![
        buf("x", &["m", "n"]),
        buf("b", &["m", "n"]),
        buf("w", &["n"]),
        buf("c", &["1"]),
        buf("w2", &["n"]),
        buf("s", &["m", "n"]),
        buf("h", &["m", "n"]),
        buf("y", &["m"]),
        buf("d", &["m", "n"]),
    ];
    let launches = vec![
        launch(&bufs, &[2, 3], 4, &["n"], true),
        launch(&bufs, &[0, 1], 5, &["m", "n"], false),
        launch(&bufs, &[5, 4], 6, &["m", "n"], false),
        launch(&bufs, &[6], 7, &["m", "n"], false),
        launch(&bufs, &[6, 5], 8, &["m", "n"], false),
    ];
    let kernels = vec![
        ptx(SCALE, "scale_f32", 128, elements()),
        ptx(ADD, "add_f32", 256, elements()),
        ptx(ADD_ROWS, "add_rows_f32", 256, elements()),
        ptx(ROW_SUM, "row_sum_f32", 32, Grid::Rows { inner_axes: 0 }),
        ptx(ADD, "add_f32", 256, elements()),
    ];
    let outputs = [
        ("y", 7),
        ("y_again", 7),
        ("h", 6),
        ("d", 8),
        ("w2", 4),
        ("x_out", 0),
    ];
    let program = Program {
        name: "cuda_test".into(),
        buffers: bufs,
        inputs: vec![0, 1],
        weights: vec![2],
        constants: vec![(3, vec![c])],
        outputs: outputs.iter().map(|&(n, b)| (n.to_string(), b)).collect(),
        dims: vec!["m".into(), "n".into()],
        launches,
    };
    (program, kernels)
}

/// Random values in ±[0.5, 2).
fn random(n: usize) -> Vec<f64> {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| {
            let v: f64 = rng.random_range(0.5..2.0);
            if rng.random_bool(0.5) { v } else { -v }
        })
        .collect()
}

fn f32s(shape: &[usize], values: &[f64]) -> HostTensor {
    HostTensor::from_values(DType::F32, shape, values)
}

fn inputs(m: usize, n: usize, x: &[f64], b: &[f64]) -> HashMap<String, HostTensor> {
    HashMap::from([
        ("x".to_string(), f32s(&[m, n], x)),
        ("b".to_string(), f32s(&[m, n], b)),
    ])
}

fn output<'a>(out: &'a [(String, HostTensor)], name: &str) -> &'a HostTensor {
    &out.iter().find(|(n, _)| n == name).unwrap().1
}

fn close(found: &[f64], expected: &[f64], what: &str) {
    assert_eq!(found.len(), expected.len(), "{what}: length");
    for (i, (x, y)) in found.iter().zip(expected).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
            "{what} element {i}: {x} vs {y}"
        );
    }
}

/// The model's outputs computed on the host, in f32 as the kernels do
/// (the row sum to a tolerance: its order differs).
fn check_against_host(
    out: &[(String, HostTensor)],
    m: usize,
    n: usize,
    c: f64,
    w: &[f64],
    x: &[f64],
    b: &[f64],
) {
    let f = |v: f64| v as f32;
    let w2: Vec<f32> = w.iter().map(|&v| f(v) * f(c)).collect();
    let s: Vec<f32> = (0..m * n).map(|k| f(x[k]) + f(b[k])).collect();
    let h: Vec<f32> = (0..m * n).map(|k| s[k] + w2[k % n]).collect();
    let d: Vec<f32> = (0..m * n).map(|k| h[k] + s[k]).collect();
    let y: Vec<f64> = (0..m)
        .map(|i| (0..n).map(|j| h[i * n + j] as f64).sum())
        .collect();
    let exact = |v: &[f32]| v.iter().map(|&e| e as f64).collect::<Vec<f64>>();
    assert_eq!(output(out, "w2").to_values(), exact(&w2), "w2");
    assert_eq!(output(out, "h").shape, vec![m, n]);
    assert_eq!(output(out, "h").to_values(), exact(&h), "h");
    assert_eq!(output(out, "d").to_values(), exact(&d), "d");
    assert_eq!(output(out, "y").shape, vec![m]);
    close(&output(out, "y").to_values(), &y, "y");
    assert_eq!(output(out, "y_again"), output(out, "y"));
    assert_eq!(output(out, "x_out"), &f32s(&[m, n], x));
}

#[test]
fn without_a_driver_new_is_a_clean_error() {
    if driver_present() {
        notice("a CUDA driver is present: the no-driver error is not exercised here");
        return;
    }
    let (program, kernels) = model(1.5);
    let err = CudaExecutable::new(program, kernels).unwrap_err();
    assert!(matches!(err, CudaError::NoDriver { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("no CUDA driver found (libcuda.so): "),
        "{text}"
    );
    assert!(text.ends_with("use --device cpu"), "{text}");
}

#[test]
fn runs_bind_time_and_run_time_launches_against_the_host() {
    let c = random(1)[0];
    let (program, kernels) = model(c);
    let Some(mut exe) = build(program, kernels) else {
        return;
    };
    assert_eq!(
        exe.run(&inputs(1, 4, &random(4), &random(4)))
            .unwrap_err()
            .to_string(),
        "weights are not bound: call bind_weights before run"
    );
    let n = 37;
    let w = random(n);
    exe.bind_weights(&HashMap::from([("w".to_string(), f32s(&[n], &w))]))
        .unwrap();
    for m in [1usize, 3, 50, 783] {
        let (x, b) = (random(m * n), random(m * n));
        let out = exe.run(&inputs(m, n, &x, &b)).unwrap();
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["y", "y_again", "h", "d", "w2", "x_out"]);
        check_against_host(&out, m, n, c, &w, &x, &b);
    }
    let stats = exe.stats();
    assert_eq!((stats.launches, stats.bind_time_launches), (4, 1));
    assert_eq!(stats.kernels_launched, 4);
    assert_eq!(stats.modules, 4, "the two add launches share one module");
    assert_eq!(stats.buckets, 4);
    assert_eq!((stats.graph_captures, stats.graph_replays), (4, 4));
    // s, h, y, d: h and d are outputs, s is read by the last launch, so
    // nothing can share bytes here.
    let mn = (783 * n * 4).next_multiple_of(256);
    assert_eq!(
        stats.unshared_arena_bytes,
        3 * mn + (783 * 4usize).next_multiple_of(256)
    );
    assert_eq!(stats.peak_arena_bytes, stats.unshared_arena_bytes);
}

#[test]
fn graph_replay_matches_plain_launches_across_buckets() {
    let c = random(1)[0];
    let (program, kernels) = model(c);
    let Some(mut exe) = build(program, kernels) else {
        return;
    };
    let n = 64;
    let w = random(n);
    exe.bind_weights(&HashMap::from([("w".to_string(), f32s(&[n], &w))]))
        .unwrap();
    let cases: Vec<(usize, Vec<f64>, Vec<f64>)> = [5usize, 300, 5, 300, 5]
        .iter()
        .map(|&m| (m, random(m * n), random(m * n)))
        .collect();
    assert!(exe.use_graphs());
    let graphed: Vec<_> = cases
        .iter()
        .map(|(m, x, b)| exe.run(&inputs(*m, n, x, b)).unwrap())
        .collect();
    let stats = exe.stats();
    assert_eq!(stats.buckets, 2);
    assert_eq!((stats.graph_captures, stats.graph_replays), (2, 5));
    exe.set_use_graphs(false);
    for ((m, x, b), expected) in cases.iter().zip(&graphed) {
        let plain = exe.run(&inputs(*m, n, x, b)).unwrap();
        assert_eq!(
            &plain, expected,
            "m = {m}: graph replay and plain launches differ"
        );
        check_against_host(&plain, *m, n, c, &w, x, b);
    }
    let stats = exe.stats();
    assert_eq!((stats.graph_captures, stats.graph_replays), (2, 5));
    // Rebinding the weights drops the buckets (their graphs point at the
    // old weights); the next runs use the new ones.
    exe.set_use_graphs(true);
    let w = random(n);
    exe.bind_weights(&HashMap::from([("w".to_string(), f32s(&[n], &w))]))
        .unwrap();
    let (m, x, b) = &cases[0];
    let out = exe.run(&inputs(*m, n, x, b)).unwrap();
    check_against_host(&out, *m, n, c, &w, x, b);
    assert_eq!(exe.stats().graph_captures, 3);
}

#[test]
fn empty_outputs_skip_their_launches() {
    let (program, kernels) = model(2.0);
    let Some(mut exe) = build(program, kernels) else {
        return;
    };
    let n = 8;
    exe.bind_weights(&HashMap::from([("w".to_string(), f32s(&[n], &random(n)))]))
        .unwrap();
    let out = exe.run(&inputs(0, n, &[], &[])).unwrap();
    assert_eq!(output(&out, "y").shape, vec![0]);
    assert!(output(&out, "y").data.is_empty());
    assert_eq!(output(&out, "h").shape, vec![0, n]);
    assert_eq!(exe.stats().kernels_launched, 0);
    assert_eq!(exe.stats().graph_captures, 0);
}

#[test]
fn bad_weights_and_inputs_are_clean_errors() {
    let (program, kernels) = model(2.0);
    let Some(mut exe) = build(program, kernels) else {
        return;
    };
    let wrong = HashMap::from([("w".to_string(), f32s(&[2, 2], &random(4)))]);
    assert_eq!(
        exe.bind_weights(&wrong).unwrap_err().to_string(),
        "weight `w`: expected shape [n], found [2, 2]"
    );
    exe.bind_weights(&HashMap::from([("w".to_string(), f32s(&[4], &random(4)))]))
        .unwrap();
    // n is 4 from the weight: an input with 5 columns conflicts.
    let err = exe
        .run(&inputs(2, 5, &random(10), &random(10)))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "dim `n` is 4 from weight `w` axis 0 but 5 from input `x` axis 1"
    );
    let mut rank1 = inputs(2, 4, &random(8), &random(8));
    rank1.insert("b".into(), f32s(&[8], &random(8)));
    assert_eq!(
        exe.run(&rank1).unwrap_err().to_string(),
        "input `b`: expected rank 2 (shape [m, n]), found rank 1"
    );
    let mut mismatched = inputs(2, 4, &random(8), &random(8));
    mismatched.insert("b".into(), f32s(&[3, 4], &random(12)));
    assert!(matches!(
        exe.run(&mismatched).unwrap_err(),
        CudaError::Run(RunError::DimConflict { .. })
    ));
    assert!(matches!(
        exe.run(&HashMap::new()).unwrap_err(),
        CudaError::Run(RunError::MissingInput { .. })
    ));
    // A good run after the errors still works.
    assert!(exe.run(&inputs(2, 4, &random(8), &random(8))).is_ok());
}

#[test]
fn a_module_the_driver_refuses_names_its_entry() {
    let (program, mut kernels) = model(2.0);
    kernels[1].ptx = kernels[1].ptx.replace("add.rn.f32", "add.bogus.f32");
    if !driver_present() && !gpu_required() {
        notice("skipping a GPU test: no CUDA driver (libcuda.so) on this machine");
        return;
    }
    match CudaExecutable::new(program, kernels) {
        Err(CudaError::ModuleLoad { entry, kernel, .. }) => {
            assert_eq!((entry.as_str(), kernel.as_str()), ("add_f32", "k_s"));
        }
        Err(e) if e.is_unavailable() && !gpu_required() => {
            notice(&format!("skipping a GPU test: {e}"));
        }
        Err(e) => panic!("expected a module load error, got {e}"),
        Ok(_) => panic!("a module with an unknown instruction loaded"),
    }
}

#[test]
fn a_kernel_for_another_gpu_is_refused_before_loading() {
    let (program, mut kernels) = model(2.0);
    // No device is sm_99a's exact generation and also every other one.
    kernels[2].arch = "sm_99a".into();
    if !driver_present() && !gpu_required() {
        notice("skipping a GPU test: no CUDA driver (libcuda.so) on this machine");
        return;
    }
    match CudaExecutable::new(program, kernels) {
        Err(e @ CudaError::ArchMismatch { .. }) => {
            let text = e.to_string();
            assert!(text.contains("k_h") && text.contains("sm_99a"), "{text}");
            assert!(text.contains("--target"), "{text}");
        }
        Err(e) if e.is_unavailable() && !gpu_required() => {
            notice(&format!("skipping a GPU test: {e}"));
        }
        Err(e) => panic!("expected an architecture mismatch, got {e}"),
        Ok(_) => panic!("a kernel for sm_99a loaded"),
    }
}

#[test]
fn the_test_program_and_kernels_pass_the_checks_without_a_device() {
    let (program, kernels) = model(2.0);
    CudaExecutable::check(&program, &kernels).unwrap();
    let (program, mut kernels) = model(2.0);
    kernels.swap(1, 3);
    let err = CudaExecutable::check(&program, &kernels).unwrap_err();
    assert!(
        err.to_string()
            .contains("the entry declares 5 parameters, the launch passes 6"),
        "{err}"
    );
}

/// The same program and hand-written kernels on the PTX interpreter
/// ([`kiln_runtime::cuda::SimExecutable`]), everywhere: the same checks
/// and messages as the CUDA executor, and the host's results.
#[test]
fn the_simulated_executor_runs_the_program_as_the_host_computes() {
    use kiln_runtime::cuda::SimExecutable;
    let c = random(1)[0];
    let (program, kernels) = model(c);
    let mut exe = SimExecutable::new(program, kernels).unwrap();
    assert_eq!(
        exe.run(&inputs(1, 4, &random(4), &random(4)))
            .unwrap_err()
            .to_string(),
        "weights are not bound: call bind_weights before run"
    );
    let n = 37;
    let w = random(n);
    exe.bind_weights(&HashMap::from([("w".to_string(), f32s(&[n], &w))]))
        .unwrap();
    for m in [1usize, 3, 50] {
        let (x, b) = (random(m * n), random(m * n));
        let out = exe.run(&inputs(m, n, &x, &b)).unwrap();
        check_against_host(&out, m, n, c, &w, &x, &b);
    }
    let s = exe.stats();
    assert_eq!(s.launches, 4);
    assert!(s.instructions > 0 && s.global_stored >= (3 * 50 * n * 4) as u64);
    // A bad input: the CPU executor's message.
    let e = exe.run(&HashMap::new()).unwrap_err().to_string();
    assert!(e.contains("missing input"), "{e}");
}
