//! The `kiln` command line, run as a user runs it: exit codes, messages,
//! files in and out.

mod common;

use common::{kiln, npy_bytes, root, text};

use std::path::{Path, PathBuf};
use std::process::Output;

/// A user error: exit code 1, a message containing `want` on stderr, and
/// no sign of a panic.
fn user_error(out: &Output, want: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(want), "expected `{want}` in:\n{err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
}

fn scratch(name: &str) -> common::Scratch {
    common::scratch(&format!("cli-{name}"))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Reads back an f32 `.npy` written by kiln: checks the magic and descr and
/// returns the data after the header.
fn read_f32_npy(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).expect("read npy");
    assert_eq!(&b[..6], b"\x93NUMPY");
    let hlen = match b[6] {
        1 => u16::from_le_bytes([b[8], b[9]]) as usize + 10,
        _ => u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize + 12,
    };
    let header = text(&b[..hlen]);
    assert!(header.contains("'<f4'"), "{header}");
    b[hlen..]
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn help_lists_exactly_the_working_subcommands() {
    let out = kiln(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        commands,
        [
            "check", "compile", "explain", "run", "bench", "quantize", "import", "help"
        ]
    );
    for sub in [
        "check", "compile", "explain", "run", "bench", "quantize", "import",
    ] {
        let out = kiln(&[sub, "--help"]);
        assert_eq!(out.status.code(), Some(0));
        assert!(text(&out.stdout).contains("Usage: kiln"), "{sub}");
    }
}

#[test]
fn readme_main_job_runs_and_is_deterministic() {
    let args = [
        "run",
        "examples/ir/mlp.kir",
        "--random-inputs",
        "1",
        "--random-weights",
        "1",
        "--dim",
        "batch=4",
    ];
    let a = kiln(&args);
    assert_eq!(a.status.code(), Some(0), "{}", text(&a.stderr));
    let line = text(&a.stdout);
    assert!(line.starts_with("y: bf16[4, 1024]  sum "), "{line}");
    assert!(line.contains("checksum "), "{line}");
    assert_eq!(text(&kiln(&args).stdout), line, "same seeds, same output");
    let other = kiln(&[
        "run",
        "examples/ir/mlp.kir",
        "--random-inputs",
        "2",
        "--random-weights",
        "1",
        "--dim",
        "batch=4",
    ]);
    assert_ne!(
        text(&other.stdout),
        line,
        "another input seed changes the result"
    );
}

#[test]
fn check_reports_interface_and_errors() {
    let ok = kiln(&["check", "examples/ir/quantized_linear.kir"]);
    assert_eq!(ok.status.code(), Some(0));
    let s = text(&ok.stdout);
    assert!(
        s.contains("weight w: i4[256, 512] quant<group(32, axis = 0), scale = bf16>"),
        "{s}"
    );
    assert!(s.contains("output y: bf16[m, 512]"), "{s}");
    let printed = kiln(&["check", "--print", "examples/ir/mlp.kir"]);
    assert_eq!(
        text(&printed.stdout),
        std::fs::read_to_string(root().join("examples/ir/mlp.kir")).unwrap()
    );

    let bad = kiln(&["check", "tests/filetests/verify/matmul-contraction.kir"]);
    user_error(&bad, "contraction sizes differ");
    assert!(
        text(&bad.stderr).contains("matmul-contraction.kir:5:3"),
        "{}",
        text(&bad.stderr)
    );
    user_error(
        &kiln(&["check", "tests/filetests/parse/unknown-op.kir"]),
        "did you mean `matmul`?",
    );
    user_error(&kiln(&["check", "no/such/model.kir"]), "no/such/model.kir");
    user_error(
        &kiln(&["check", "README.md"]),
        "expected a model file ending in .kiln (model language), .kir (graph IR text) or .onnx",
    );
}

#[test]
fn run_reads_npy_inputs_and_writes_named_outputs() {
    let dir = scratch("io");
    std::fs::write(
        dir.join("m.kir"),
        "graph m {\n  input %x: f32[n, 3]\n  %d: f32[n, 3] = add(%x, %x)\n  %s: f32[n] = reduce_sum(%d) {axes = [1]}\n  output \"out:0\" = %d\n  output total = %s\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("x.npy"),
        npy_bytes("<f4", &[2, 3], &f32_bytes(&[1.0, 2.0, 3.0, -4.0, 0.5, 6.0])),
    )
    .unwrap();
    let out_dir = dir.join("out");
    let m = dir.join("m.kir");
    let x = format!("x={}", dir.join("x.npy").display());
    let out = kiln(&[
        "run",
        m.to_str().unwrap(),
        "--input",
        &x,
        "--random-weights",
        "0",
        "--output-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        read_f32_npy(&out_dir.join("out_0.npy")),
        vec![2.0, 4.0, 6.0, -8.0, 1.0, 12.0]
    );
    assert_eq!(read_f32_npy(&out_dir.join("total.npy")), vec![12.0, 5.0]);
    assert!(
        text(&out.stdout).contains("out:0: f32[2, 3]  sum 1.700000e1"),
        "{}",
        text(&out.stdout)
    );

    // bad inputs: each a clear error
    let i32x = dir.join("i.npy");
    std::fs::write(&i32x, npy_bytes("<i4", &[2, 3], &[0u8; 24])).unwrap();
    let arg = format!("x={}", i32x.display());
    user_error(
        &kiln(&[
            "run",
            m.to_str().unwrap(),
            "--input",
            &arg,
            "--random-weights",
            "0",
        ]),
        "expected element type f32, found i32",
    );
    let wrong_rank = dir.join("r.npy");
    std::fs::write(
        &wrong_rank,
        npy_bytes("<f4", &[3], &f32_bytes(&[1.0, 2.0, 3.0])),
    )
    .unwrap();
    let arg = format!("x={}", wrong_rank.display());
    user_error(
        &kiln(&[
            "run",
            m.to_str().unwrap(),
            "--input",
            &arg,
            "--random-weights",
            "0",
        ]),
        "expected rank 2 ([n, 3]), found rank 1 ([3])",
    );
    let junk = dir.join("junk.npy");
    std::fs::write(&junk, b"\x93NUMPY garbage").unwrap();
    let arg = format!("x={}", junk.display());
    user_error(
        &kiln(&[
            "run",
            m.to_str().unwrap(),
            "--input",
            &arg,
            "--random-weights",
            "0",
        ]),
        "not a readable .npy file",
    );
    user_error(
        &kiln(&[
            "run",
            m.to_str().unwrap(),
            "--input",
            "y=a.npy",
            "--random-weights",
            "0",
        ]),
        "the model has no input `y`",
    );
    user_error(
        &kiln(&["run", m.to_str().unwrap(), "--random-weights", "0"]),
        "pass --input x=FILE.npy or --random-inputs SEED",
    );
    user_error(
        &kiln(&[
            "run",
            m.to_str().unwrap(),
            "--random-inputs",
            "3",
            "--random-weights",
            "0",
        ]),
        "give its size with --dim n=N",
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_binds_weights_from_safetensors() {
    let dir = scratch("weights");
    let m = dir.join("lin.kir");
    std::fs::write(
        &m,
        "graph lin {\n  input %x: f32[1, 2]\n  weight %layers.0.w: f32[2, 2]\n  %y: f32[1, 2] = matmul(%x, %layers.0.w)\n  output y = %y\n}\n",
    )
    .unwrap();
    let w = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &w).unwrap();
    let good = dir.join("w.safetensors");
    safetensors::serialize_to_file([("layers.0.w", view.clone())], None, &good).unwrap();
    std::fs::write(
        dir.join("x.npy"),
        npy_bytes("<f4", &[1, 2], &f32_bytes(&[1.0, -1.0])),
    )
    .unwrap();
    let x = format!("x={}", dir.join("x.npy").display());
    let out_dir = dir.join("out");
    let out = kiln(&[
        "run",
        m.to_str().unwrap(),
        "--input",
        &x,
        "--weights",
        good.to_str().unwrap(),
        "--output-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // [1, -1] @ [[1, 2], [3, 4]] = [-2, -2]
    assert_eq!(read_f32_npy(&out_dir.join("y.npy")), vec![-2.0, -2.0]);

    let misnamed = dir.join("bad.safetensors");
    safetensors::serialize_to_file([("layers.0.ww", view)], None, &misnamed).unwrap();
    user_error(
        &kiln(&[
            "run",
            m.to_str().unwrap(),
            "--input",
            &x,
            "--weights",
            misnamed.to_str().unwrap(),
        ]),
        "has no tensor `layers.0.w` (f32[2, 2]); did you mean `layers.0.ww`?",
    );
    user_error(
        &kiln(&["run", m.to_str().unwrap(), "--input", &x]),
        "pass --weights W.safetensors or --random-weights SEED",
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn explain_shows_kernels_rewrites_and_rules() {
    let out = kiln(&["explain", "examples/resnet_block.kiln"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    // the folded batch norm: a rewrite with its explanation
    assert!(
        s.contains("conv2d: from the source by conv-batchnorm-fold"),
        "{s}"
    );
    // a fused kernel with the roles of its ops and the unfused comparison
    assert!(
        s.contains("conv2d (root)") && s.contains("(epilogue)"),
        "{s}"
    );
    assert!(s.contains("kernel(s) would take"), "{s}");
    // per-rule counts in both phases
    assert!(
        s.contains("rewrite phase (algebra, layout, quantization)")
            && s.contains("kernel phase (fusion)"),
        "{s}"
    );
    let fired = s
        .lines()
        .find(|l| l.trim_start().starts_with("conv-batchnorm-fold "))
        .expect("rule line");
    let n: usize = fired
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("count");
    assert!(n >= 3, "three batch norms fold: {fired}");
}

/// `kiln run --device cpu` writes what the interpreter writes, within the
/// CPU backend's f32 tolerance (1e-4 of the largest magnitude).
#[test]
fn run_on_the_cpu_matches_the_interpreter() {
    let mut results = Vec::new();
    for device in ["interp", "cpu"] {
        let dir = scratch(&format!("device-{device}"));
        let out = kiln(&[
            "run",
            "examples/mlp.kiln",
            "--device",
            device,
            "--random-inputs",
            "4",
            "--random-weights",
            "5",
            "--dim",
            "batch=7",
            "--output-dir",
            dir.to_str().expect("utf-8 path"),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        results.push(read_f32_npy(&dir.join("y.npy")));
    }
    let (want, got) = (&results[0], &results[1]);
    assert_eq!(want.len(), 7 * 64);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        assert!((w - g).abs() <= 1e-4 * scale, "y[{i}]: interp {w}, cpu {g}");
    }
}

/// `kiln bench --json` prints one object with the median, minimum and 90th
/// percentile, ordered as such.
#[test]
fn bench_prints_json_figures() {
    let out = kiln(&[
        "bench",
        "examples/mlp.kiln",
        "--dim",
        "batch=4",
        "--iters",
        "5",
        "--warmup",
        "1",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    let field = |name: &str| -> f64 {
        let rest = s
            .split(&format!("\"{name}\": "))
            .nth(1)
            .unwrap_or_else(|| panic!("no {name} in {s}"));
        rest.split([',', '}'])
            .next()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} is not a number in {s}"))
    };
    let (min, median, p90) = (field("min_ms"), field("median_ms"), field("p90_ms"));
    assert!(0.0 < min && min <= median && median <= p90, "{s}");
    assert!(s.contains("\"device\": \"cpu\""), "{s}");
}

/// `--emit kernels,clif` prints the kernel dialect and the Cranelift IR of
/// every kernel of the plan.
#[test]
fn compile_emits_kernels_and_clif() {
    let out = kiln(&[
        "compile",
        "examples/mlp.kiln",
        "--target",
        "cpu",
        "--emit",
        "plan,kernels,clif",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    let kernels = s.lines().filter(|l| l.starts_with("kernel ")).count();
    assert!(kernels > 0, "{s}");
    for i in 0..kernels {
        assert!(s.contains(&format!("launch k{i}(")), "k{i}:\n{s}");
        assert!(s.contains(&format!("function %k{i}(")), "k{i}:\n{s}");
    }
}

/// `--device cuda` where there is no CUDA driver: exit 1 and a message that
/// says so and names the alternative (on a machine with a GPU the command
/// runs, and this test only checks that it succeeds).
#[test]
fn cuda_without_a_driver_is_a_user_error() {
    let model = root().join("examples/mlp.kiln");
    let out = kiln(&[
        "run",
        model.to_str().expect("utf-8 path"),
        "--device",
        "cuda",
        "--random-inputs",
        "1",
        "--random-weights",
        "1",
        "--dim",
        "batch=2",
    ]);
    if kiln_runtime::cuda::driver_present() {
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        return;
    }
    user_error(&out, "no CUDA driver found");
    assert!(
        text(&out.stderr).contains("--device cpu"),
        "{}",
        text(&out.stderr)
    );
}

/// Every command takes an ONNX model; its initializers are its weights
/// unless `--weights` or `--random-weights` say otherwise; outputs are
/// written under their names.
#[test]
fn onnx_models_work_in_every_command() {
    let ops = "tests/fixtures/onnx/ops";
    let m = format!("{ops}/conv_weight_initializer.onnx");
    let out = kiln(&["check", &m]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("input  x: f32[1, 3, 6, 6]") && s.contains("weight w: f32[4, 3, 3, 3]"),
        "{s}"
    );
    let out = kiln(&["compile", &m, "--target", "cpu", "--emit", "graph"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("conv2d(%x, %w)"),
        "{}",
        text(&out.stdout)
    );
    let out = kiln(&["explain", &m, "--target", "cpu"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = kiln(&["bench", &m, "--iters", "2", "--warmup", "0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("median"),
        "{}",
        text(&out.stdout)
    );

    // run: the model's own weights, then a weights file that overrides them
    let dir = scratch("onnx");
    let input = format!("x={ops}/conv_weight_initializer.in0.npy");
    let own = dir.join("own");
    let out = kiln(&[
        "run",
        &m,
        "--device",
        "cpu",
        "--input",
        &input,
        "--output-dir",
        own.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = kiln_runtime::npy::read(&own.join("y.npy")).expect("y.npy");
    let want = kiln_runtime::npy::read(&root().join(ops).join("conv_weight_initializer.out0.npy"))
        .expect("expected");
    let diff = got
        .to_values()
        .iter()
        .zip(want.to_values())
        .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
        .fold(0.0, f64::max);
    assert!(diff < 1e-4, "{diff}");
    let kiln_file = dir.join("conv.kiln");
    let out = kiln(&["import", &m, "-o", kiln_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let w = dir.join("conv.safetensors");
    assert!(w.exists());
    let random = dir.join("random");
    let out = kiln(&[
        "run",
        &m,
        "--input",
        &input,
        "--random-weights",
        "3",
        "--output-dir",
        random.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let filed = dir.join("filed");
    let out = kiln(&[
        "run",
        &m,
        "--input",
        &input,
        "--weights",
        w.to_str().unwrap(),
        "--output-dir",
        filed.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let read = |d: &Path| {
        kiln_runtime::npy::read(&d.join("y.npy"))
            .expect("y.npy")
            .to_values()
    };
    assert_ne!(read(&random), read(&filed));
    let interp = dir.join("interp");
    let out = kiln(&[
        "run",
        &m,
        "--input",
        &input,
        "--output-dir",
        interp.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(read(&interp), read(&filed));

    // names with characters outside [A-Za-z0-9_.-]: `--input gpu_0/data_0`, `gpu_0_softmax_1.npy`
    let light = "tests/fixtures/onnx/light";
    let named = dir.join("named");
    let out = kiln(&[
        "run",
        &format!("{light}/shufflenet.onnx"),
        "--device",
        "cpu",
        "--input",
        &format!("gpu_0/data_0={light}/input_1x3x224x224.npy"),
        "--output-dir",
        named.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(named.join("gpu_0_softmax_1.npy").exists());
    user_error(
        &kiln(&[
            "import",
            "tests/filetests/parse/unknown-op.kir",
            "-o",
            "x.kiln",
        ]),
        "`kiln import` reads ONNX models (.onnx)",
    );
}

/// Progress is drawn on a terminal only: `kiln bench` under a pseudo
/// terminal (util-linux `script`) shows its compile spinner and its bar of
/// runs, and nothing of them with `KILN_PROGRESS=off` or into a pipe.
#[test]
fn progress_is_drawn_on_a_terminal_only() {
    let args = [
        "bench",
        "examples/mlp.kiln",
        "--iters",
        "30",
        "--dim",
        "batch=4",
    ];
    let piped = kiln(&args);
    assert_eq!(piped.status.code(), Some(0));
    let err = text(&piped.stderr);
    assert!(!err.contains("timing runs"), "progress in a pipe: {err}");
    let Ok(script) = which("script") else {
        eprintln!("notice: no `script` (util-linux): the terminal case is not checked");
        return;
    };
    let line = format!("{} {}", env!("CARGO_BIN_EXE_kiln"), args.join(" "));
    let tty = |progress: &str| {
        let out = std::process::Command::new(&script)
            .args(["-qec", &line, "/dev/null"])
            .env("KILN_PROGRESS", progress)
            .current_dir(root())
            .output()
            .expect("script runs");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let shown = tty("on");
    assert!(
        shown.contains("compiling `mlp` for cpu") && shown.contains("timing runs ["),
        "{shown}"
    );
    assert!(shown.contains("`mlp` on cpu: median"), "{shown}");
    let off = tty("off");
    assert!(!off.contains("timing runs"), "{off}");
    assert!(off.contains("`mlp` on cpu: median"), "{off}");
}

/// The first `name` on the PATH.
fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|f| f.is_file())
        .ok_or(())
}

/// `--specialize` compiles for the --dim sizes: llama_block's projections
/// at `seq = 4` take the GEMV path (none do for a symbolic `seq`), a
/// specialized run gives the unspecialized outputs, an input of another
/// size is refused naming it, and a dim the model lacks is named.
#[test]
fn specialize_fixes_the_sizes() {
    let ptx = |extra: &[&str]| {
        let mut args = vec![
            "compile",
            "examples/llama_block.kiln",
            "--dim",
            "seq=4",
            "--emit",
            "ptx",
        ];
        args.extend_from_slice(extra);
        let o = kiln(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        text(&o.stdout)
    };
    assert_eq!(ptx(&[]).matches(".entry gemv_").count(), 0);
    // all seven projections (on GPU targets their rotary embeddings and
    // views are fused into the readers, not into the products)
    assert_eq!(ptx(&["--specialize"]).matches(".entry gemv_").count(), 7);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "examples/mlp.kiln",
            "--random-inputs",
            "1",
            "--random-weights",
            "2",
            "--dim",
            "batch=3",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let o = kiln(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        text(&o.stdout)
    };
    assert_eq!(run(&["--specialize"]), run(&[]));
    // compiled for batch 3, given batch 2
    let mut opts = kiln::jit::JitOptions {
        dims: [("batch".to_string(), 3u64)].into_iter().collect(),
        specialize: true,
        ..Default::default()
    };
    let mut m = kiln::jit::compile_file(&root().join("examples/mlp.kiln"), &opts).unwrap();
    assert!(
        m.inputs()[0].1.to_string().contains("[3, 64]"),
        "{:?}",
        m.inputs()
    );
    m.bind_random_weights(1).unwrap();
    let two =
        kiln_runtime::HostTensor::from_values(kiln_dialect::DType::F32, &[2, 64], &[0.5; 128]);
    let e = m
        .run(&[("x".to_string(), two)].into_iter().collect())
        .unwrap_err()
        .to_string();
    assert!(e.contains('x') && e.contains('2') && e.contains('3'), "{e}");
    opts.dims = [("btach".to_string(), 3u64)].into_iter().collect();
    let e = kiln::jit::compile_file(&root().join("examples/mlp.kiln"), &opts)
        .err()
        .expect("a dim the model lacks")
        .to_string();
    assert!(
        e.contains("no symbolic dim `btach`") && e.contains("batch"),
        "{e}"
    );
}
