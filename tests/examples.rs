//! The example models (`examples/*.kiln`) and the benchmark workloads
//! (`bench/*.kiln`): each compiles, verifies, prints as graph text that
//! parses back to the same graph, and evaluates in the reference
//! interpreter on random data without NaN; `kiln check` and `kiln compile`
//! accept each. `examples/mlp.kiln` is also compared with an f64
//! computation written out by hand.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::data::{self, InputSpec, WeightSource};
use kiln::frontend::compile_file;
use kiln_dialect::Graph;
use kiln_dialect::interp::{self, Tensor};
use kiln_dialect::text::{parse, print};
use kiln_dialect::verify::{VerifyError, verify};

/// Benchmark files with tens of millions of weight elements (a few seconds
/// each to draw and run): `tests/optimizer.rs` runs each through the
/// interpreter, source and plan, with the same check for NaN, in a test of
/// its own; running them here as well would double the cost.
///
/// - `w3` and `w3d`: 51M weight elements (d 2048, ffn 5632);
/// - `w4`: 45M int4 codes (4096x11008);
/// - `w5_int8`, `w5_fp8`: 16.8M weight elements (4096x4096).
const LARGE: &[&str] = &[
    "bench/w3.kiln",
    "bench/w3d.kiln",
    "bench/w4.kiln",
    "bench/w5_int8.kiln",
    "bench/w5_fp8.kiln",
];

/// Sizes of symbolic dims other than the default 3, per file: the W6
/// activation is 24x56x56 per image, so one image keeps the convolutions
/// quick.
const DIMS: &[(&str, &str, usize)] = &[("bench/w6.kiln", "n", 1)];

/// Files that must exist (a missing one fails instead of being skipped).
const EXPECTED: &[&str] = &[
    "examples/mlp.kiln",
    "examples/llama_block.kiln",
    "examples/llama_decode.kiln",
    "examples/tiny_llama.kiln",
    "examples/mobilenet_v2_block.kiln",
    "examples/resnet_block.kiln",
    "examples/llama_w4a16.kiln",
    "examples/llama_w8a8.kiln",
    "bench/w1.kiln",
    "bench/w1b.kiln",
    "bench/w2.kiln",
    "bench/w3.kiln",
    "bench/w3d.kiln",
    "bench/w4.kiln",
    "bench/w5_int8.kiln",
    "bench/w5_fp8.kiln",
    "bench/w6.kiln",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// Every `.kiln` file of `examples/` and `bench/`, sorted.
fn model_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["examples", "bench"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}")) {
            let p = e.expect("dir entry").path();
            if p.extension().is_some_and(|e| e == "kiln") {
                out.push(p);
            }
        }
    }
    out.sort();
    let names: Vec<String> = out.iter().map(|p| rel(p)).collect();
    for want in EXPECTED {
        assert!(names.iter().any(|n| n == want), "{want} is missing");
    }
    out
}

fn messages(errors: &[VerifyError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn compile(path: &Path) -> Result<Graph, String> {
    compile_file(path)
        .map(|c| c.graph)
        .map_err(|f| format!("{}: does not compile:\n{}", rel(path), f.render()))
}

/// Runs `f` on every file and fails with every file's error together.
fn check_all(files: &[PathBuf], f: impl Fn(&Path) -> Result<(), String>) {
    let failures: Vec<String> = files.iter().filter_map(|p| f(p).err()).collect();
    assert!(
        failures.is_empty(),
        "{} file(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// Random inputs and weights for a graph, every symbolic dim bound to 3
/// unless [`DIMS`] says otherwise for this file.
fn bind_random(g: &Graph, file: &str, seed: u64) -> Result<HashMap<String, Tensor>, String> {
    let mut dims = BTreeMap::new();
    for v in g.inputs().into_iter().chain(g.weights()) {
        for s in g.value_type(v).shape.symbols() {
            let n = DIMS
                .iter()
                .find(|(f, sym, _)| *f == file && *sym == s)
                .map_or(3, |(_, _, n)| *n);
            dims.insert(s.to_string(), n);
        }
    }
    let spec = InputSpec {
        files: &[],
        random_seed: Some(seed),
        dims: &dims,
    };
    data::bind(g, &spec, &WeightSource::Random(seed ^ 1)).map_err(|e| format!("{file}: {e}"))
}

#[test]
fn every_model_compiles_verifies_and_round_trips() {
    check_all(&model_files(), |path| {
        let name = rel(path);
        let g = compile(path)?;
        verify(&g).map_err(|e| {
            format!(
                "{name}: the lowered graph does not verify:\n{}",
                messages(&e)
            )
        })?;
        if g.outputs().is_empty() {
            return Err(format!("{name}: no outputs"));
        }
        // The lowered graph carries source spans, which text does not: compare
        // the text, then the graph parsed from it with its own round trip.
        let text = print(&g);
        let parsed = parse(&text)
            .map_err(|e| format!("{name}: printed graph does not parse: {e}\n{text}"))?;
        verify(&parsed).map_err(|e| {
            format!(
                "{name}: the parsed graph does not verify:\n{}",
                messages(&e)
            )
        })?;
        let again = print(&parsed);
        if again != text {
            return Err(format!(
                "{name}: print(parse(print(graph))) differs:\n--- first\n{text}\n--- second\n{again}"
            ));
        }
        if parse(&again).map_err(|e| format!("{name}: {e}"))? != parsed {
            return Err(format!("{name}: parse(print(parsed)) differs from parsed"));
        }
        Ok(())
    });
}

#[test]
fn bench_files_name_their_binding() {
    let files: Vec<PathBuf> = model_files()
        .into_iter()
        .filter(|p| rel(p).starts_with("bench/"))
        .collect();
    check_all(&files, |path| {
        let src = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        if src.lines().any(|l| l.starts_with("// benchmark: --dim ")) {
            Ok(())
        } else {
            Err(format!(
                "{}: no `// benchmark: --dim NAME=SIZE` header line",
                rel(path)
            ))
        }
    });
}

#[test]
fn every_model_evaluates_without_nan() {
    let files: Vec<PathBuf> = model_files()
        .into_iter()
        .filter(|p| !LARGE.contains(&rel(p).as_str()))
        .collect();
    check_all(&files, evaluates_without_nan);
}

/// Runs a model file on random inputs and weights in the interpreter: every
/// output is non-empty and free of NaN.
fn evaluates_without_nan(path: &Path) -> Result<(), String> {
    let seed = seed();
    let name = rel(path);
    let g = compile(path)?;
    let bindings = bind_random(&g, &name, seed)?;
    let outs = interp::run(&g, &bindings).map_err(|e| format!("{name}: seed {seed}: {e}"))?;
    if outs.len() != g.outputs().len() {
        return Err(format!(
            "{name}: {} outputs, {} declared",
            outs.len(),
            g.outputs().len()
        ));
    }
    for (out, t) in outs {
        if t.data.is_empty() {
            return Err(format!("{name}: output {out} is empty"));
        }
        if t.data.iter().any(|v| v.is_nan()) {
            return Err(format!("{name}: seed {seed}: output {out} has NaN"));
        }
    }
    Ok(())
}

/// `examples/mlp.kiln` computes `layer_norm(x + gelu(x @ w1 + b1) @ w2 + b2)`
/// (exact GELU, eps 1e-5, no affine): the interpreter's f32 result agrees
/// with the same formula in f64 on the same data to 1e-5, relative to
/// max(|expected|, 1).
#[test]
fn mlp_matches_an_f64_computation() {
    let seed = seed();
    let path = root().join("examples/mlp.kiln");
    let g = compile(&path).unwrap_or_else(|e| panic!("{e}"));
    let b = bind_random(&g, "examples/mlp.kiln", seed).unwrap_or_else(|e| panic!("{e}"));
    let (x, w1, b1, w2, b2) = (&b["x"], &b["w1"], &b["b1"], &b["w2"], &b["b2"]);
    assert_eq!(x.shape, [3, 64]);
    assert_eq!(w1.shape, [64, 256]);
    assert_eq!(b1.shape, [256]);
    assert_eq!(w2.shape, [256, 64]);
    assert_eq!(b2.shape, [64]);
    let (rows, d, hidden) = (3, 64, 256);

    let mut want = Vec::with_capacity(rows * d);
    for i in 0..rows {
        let xi = &x.data[i * d..(i + 1) * d];
        let h: Vec<f64> = (0..hidden)
            .map(|j| {
                let pre: f64 =
                    (0..d).map(|k| xi[k] * w1.data[k * hidden + j]).sum::<f64>() + b1.data[j];
                0.5 * pre * (1.0 + libm::erf(pre / std::f64::consts::SQRT_2))
            })
            .collect();
        let r: Vec<f64> = (0..d)
            .map(|c| {
                xi[c] + (0..hidden).map(|j| h[j] * w2.data[j * d + c]).sum::<f64>() + b2.data[c]
            })
            .collect();
        let mean = r.iter().sum::<f64>() / d as f64;
        let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
        want.extend(r.iter().map(|v| (v - mean) / (var + 1e-5).sqrt()));
    }

    let outs = interp::run(&g, &b).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert_eq!(outs.len(), 1);
    let (name, y) = &outs[0];
    assert_eq!(name, "y");
    assert_eq!(y.shape, [rows, d]);
    for (i, (got, want)) in y.data.iter().zip(&want).enumerate() {
        let tol = 1e-5 * want.abs().max(1.0);
        assert!(
            (got - want).abs() <= tol,
            "seed {seed}: y[{}, {}] = {got}, expected {want} (f64)",
            i / d,
            i % d
        );
    }
}

#[test]
fn kiln_check_and_compile_accept_every_model() {
    let kiln = env!("CARGO_BIN_EXE_kiln");
    check_all(&model_files(), |path| {
        let name = rel(path);
        for args in [
            vec!["check", name.as_str()],
            vec!["compile", name.as_str(), "--emit", "ast,graph"],
        ] {
            let out = Command::new(kiln)
                .args(&args)
                .current_dir(root())
                .output()
                .map_err(|e| format!("run kiln: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`kiln {}` exited with {}:\n{}",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            if out.stdout.is_empty() {
                return Err(format!("`kiln {}` printed nothing", args.join(" ")));
            }
        }
        Ok(())
    });
}
