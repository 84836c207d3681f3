//! Golden tests of the model language's diagnostics: every file
//! `tests/filetests/kiln/*.kiln` must fail to compile.
//!
//! A file starts with one `// expect: LINE:COL: MESSAGE` line per error it
//! reports, in the order they are reported (`// expect: PATH:LINE:COL:
//! MESSAGE` for an error located in another file, `PATH` relative to the
//! test file's folder). Each error must be reported at that place with a
//! message or note containing `MESSAGE`, and the file must report no other
//! error. The whole rendering is compared with the file's `.out` twin,
//! which is exactly what `kiln check tests/filetests/kiln/NAME.kiln` prints
//! from the workspace root. `KILN_BLESS=1 cargo test --test kiln_errors`
//! rewrites the `.out` files from the current output (review the diff
//! before committing).
//!
//! Files under `tests/filetests/kiln/imports/` are imported by the tests,
//! not tests themselves.

use std::path::{Path, PathBuf};

use kiln::frontend::compile_file;

/// The folder of the test files, relative to the workspace root.
const DIR: &str = "tests/filetests/kiln";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// One `// expect:` line.
#[derive(Debug)]
struct Expect {
    /// `FILE:LINE:COL`, as codespan renders a location.
    location: String,
    message: String,
}

fn expectations(src: &str, file: &str) -> Result<Vec<Expect>, String> {
    let dir = Path::new(file).parent().unwrap_or(Path::new(""));
    let mut out = Vec::new();
    for line in src.lines() {
        let Some(rest) = line.strip_prefix("// expect: ") else {
            break;
        };
        let (loc, message) = rest
            .split_once(": ")
            .ok_or_else(|| format!("{file}: `{line}` is not `// expect: LINE:COL: MESSAGE`"))?;
        let parts: Vec<&str> = loc.rsplitn(3, ':').collect();
        let location = match parts.as_slice() {
            [col, line] => format!("{file}:{line}:{col}"),
            [col, line, path] => format!("{}:{line}:{col}", dir.join(path).display()),
            _ => return Err(format!("{file}: `{loc}` is not LINE:COL or PATH:LINE:COL")),
        };
        out.push(Expect {
            location,
            message: message.to_string(),
        });
    }
    if out.is_empty() {
        return Err(format!(
            "{file}: the first line must be `// expect: LINE:COL: MESSAGE`"
        ));
    }
    Ok(out)
}

/// The rendered diagnostics, one string each (the `N errors found` line
/// left out).
fn split_diagnostics(rendered: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in rendered.lines() {
        if line.starts_with("error") && !line.ends_with(" errors found") {
            out.push(String::new());
        }
        if line.ends_with(" errors found") && line.starts_with("error: ") {
            continue;
        }
        if let Some(d) = out.last_mut() {
            d.push_str(line);
            d.push('\n');
        }
    }
    out
}

/// The primary location of a rendered diagnostic (`FILE:LINE:COL`).
fn location(diag: &str) -> Option<&str> {
    diag.lines()
        .find_map(|l| l.trim_start().strip_prefix("┌─ "))
        .map(str::trim)
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
            out.display()
        )
    })?;
    if expected == actual {
        Ok(())
    } else {
        Err(format!(
            "{}: output differs from the golden file\n--- expected\n{expected}\n--- actual\n{actual}",
            out.display()
        ))
    }
}

fn check(file: &str) -> Result<(), String> {
    let path = Path::new(file);
    let src = std::fs::read_to_string(path).map_err(|e| format!("{file}: {e}"))?;
    let expect = expectations(&src, file)?;
    let failed = match compile_file(path) {
        Ok(_) => return Err(format!("{file}: compiled, but must be rejected")),
        Err(f) => f,
    };
    let rendered = failed.render();
    let diags = split_diagnostics(&rendered);
    if diags.len() != expect.len() {
        return Err(format!(
            "{file}: {} `// expect:` line(s), but {} error(s) reported:\n{rendered}",
            expect.len(),
            diags.len()
        ));
    }
    for (e, d) in expect.iter().zip(&diags) {
        if location(d) != Some(e.location.as_str()) || !d.contains(&e.message) {
            return Err(format!(
                "{file}: expected an error at {} containing `{}`, found:\n{d}\nfull output:\n{rendered}",
                e.location, e.message
            ));
        }
    }
    golden(path, &rendered)
}

#[test]
fn kiln_files_fail_as_expected() {
    // Paths relative to the workspace root make the renderings the same as
    // `kiln check` prints there, on every machine. This is the only test of
    // this binary, so changing the directory affects nothing else.
    std::env::set_current_dir(root()).expect("enter the workspace root");
    let mut files: Vec<String> = std::fs::read_dir(DIR)
        .unwrap_or_else(|e| panic!("{DIR}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "kiln"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(
        files.len() >= 30,
        "at least 30 error cases are kept, found {}",
        files.len()
    );
    let failures: Vec<String> = files.iter().filter_map(|f| check(f).err()).collect();
    assert!(
        failures.is_empty(),
        "{} file(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
