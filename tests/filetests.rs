//! Golden-file tests, one folder per stage under `tests/filetests/`:
//!
//! - `parse/*.kir`: text that must be rejected by the parser;
//! - `verify/*.kir`: graphs that parse but must be rejected by the verifier;
//! - `graphs/*.kir`: valid graphs (round trip, verification, evaluation).
//!
//! A rejected file's first line is `// expect: <text>`, which the rendered
//! diagnostics must contain; the whole rendering is compared with the file's
//! `.out` twin. `KILN_BLESS=1 cargo test --test filetests` rewrites the `.out`
//! files from the current output (review the diff before committing).
//!
//! Every `.kir` file of the repository (examples included) must print back
//! exactly as written and re-parse to an equal graph.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln::data::{self, InputSpec, WeightSource};
use kiln_dialect::text::{parse, print};
use kiln_dialect::verify::{render, verify};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn kir_files(dir: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "kir"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no .kir files in {dir}");
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root().join("tests/filetests"))
        .or_else(|_| p.strip_prefix(root()))
        .unwrap_or(p)
        .display()
        .to_string()
}

fn expectation(src: &str, path: &Path) -> String {
    src.lines()
        .next()
        .and_then(|l| l.strip_prefix("// expect: "))
        .unwrap_or_else(|| panic!("{}: first line must be `// expect: <text>`", rel(path)))
        .to_string()
}

/// Compares `actual` with the golden `.out` file, or rewrites it in bless mode.
fn golden(path: &Path, actual: &str) -> Result<(), String> {
    let out = path.with_extension("out");
    if std::env::var("KILN_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&out, actual).expect("write golden file");
        return Ok(());
    }
    let expected = std::fs::read_to_string(&out).map_err(|_| {
        format!(
            "{}: no golden file; run with KILN_BLESS=1 to create it",
            rel(&out)
        )
    })?;
    if expected == actual {
        Ok(())
    } else {
        Err(format!(
            "{}: output differs from the golden file\n--- expected\n{expected}\n--- actual\n{actual}",
            rel(&out)
        ))
    }
}

fn check_all(files: Vec<PathBuf>, f: impl Fn(&Path, &str) -> Result<(), String>) {
    let failures: Vec<String> = files
        .iter()
        .filter_map(|p| {
            let src = std::fs::read_to_string(p).expect("read");
            f(p, &src).err()
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} file(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn parse_stage_rejections() {
    check_all(kir_files("tests/filetests/parse"), |path, src| {
        let expect = expectation(src, path);
        let err = match parse(src) {
            Ok(_) => return Err(format!("{}: parsed, but must be rejected", rel(path))),
            Err(e) => e,
        };
        let rendered = err.diagnostic().render(&rel(path), src);
        if !rendered.contains(&expect) {
            return Err(format!(
                "{}: expected the diagnostics to contain `{expect}`, found:\n{rendered}",
                rel(path)
            ));
        }
        golden(path, &rendered)
    });
}

#[test]
fn verify_stage_rejections() {
    let files = kir_files("tests/filetests/verify");
    assert!(
        files.len() >= 15,
        "at least 15 verifier rejections are kept"
    );
    check_all(files, |path, src| {
        let expect = expectation(src, path);
        let g = parse(src).map_err(|e| format!("{}: must parse: {e}", rel(path)))?;
        let errs = match verify(&g) {
            Ok(()) => return Err(format!("{}: verified, but must be rejected", rel(path))),
            Err(e) => e,
        };
        let rendered = render(&errs, &rel(path), src);
        if !rendered.contains(&expect) {
            return Err(format!(
                "{}: expected the diagnostics to contain `{expect}`, found:\n{rendered}",
                rel(path)
            ));
        }
        golden(path, &rendered)
    });
}

#[test]
fn every_kir_file_round_trips() {
    let mut files = kir_files("examples/ir");
    files.extend(kir_files("tests/filetests/graphs"));
    files.extend(kir_files("tests/filetests/verify"));
    check_all(files, |path, src| {
        let g = parse(src)
            .map_err(|e| format!("{}: {}", rel(path), e.diagnostic().render(&rel(path), src)))?;
        let printed = print(&g);
        if printed != src {
            return Err(format!(
                "{}: print(parse(text)) differs from the text:\n{printed}",
                rel(path)
            ));
        }
        let again = parse(&printed)
            .map_err(|e| format!("{}: printed text does not parse: {e}", rel(path)))?;
        if again != g {
            return Err(format!(
                "{}: parse(print(graph)) differs from the graph",
                rel(path)
            ));
        }
        Ok(())
    });
}

/// Every valid graph verifies and evaluates on random inputs, with each
/// symbolic dim bound to an odd size, a fresh seed each run.
#[test]
fn valid_graphs_evaluate() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut files = kir_files("examples/ir");
    files.extend(kir_files("tests/filetests/graphs"));
    check_all(files, |path, src| {
        let g = parse(src).map_err(|e| format!("{}: {e}", rel(path)))?;
        verify(&g).map_err(|e| render(&e, &rel(path), src))?;
        let mut dims = BTreeMap::new();
        for v in g.inputs().into_iter().chain(g.weights()) {
            for s in g.value_type(v).shape.symbols() {
                dims.insert(s.to_string(), 3);
            }
        }
        let spec = InputSpec {
            files: &[],
            random_seed: Some(seed),
            dims: &dims,
        };
        let bindings = data::bind(&g, &spec, &WeightSource::Random(seed ^ 1))
            .map_err(|e| format!("{}: {e}", rel(path)))?;
        let outs = kiln_dialect::interp::run(&g, &bindings)
            .map_err(|e| format!("{}: seed {seed}: {e}", rel(path)))?;
        for (name, t) in outs {
            if t.data.iter().any(|v| v.is_nan()) {
                return Err(format!("{}: seed {seed}: output {name} has NaN", rel(path)));
            }
        }
        Ok(())
    });
}
