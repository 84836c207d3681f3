//! Keeps docs/language.md true to the code.
//!
//! * Every ```kiln block is a whole file: it compiles with
//!   `kiln::frontend::compile_source` (named `example.kiln`, in an empty
//!   temporary folder) and its graph verifies.
//! * Every ```kiln-error block fails to compile. When the next fenced block
//!   follows it with only blank lines between and is a ```text block, that
//!   block is the rendered errors (up to trailing blank lines).
//! * A ```kiln-nocheck block imports files the page does not have, so it
//!   cannot compile here; its only errors must be that those files cannot
//!   be read (so its syntax is still checked). There are at most three.
//! * Every ```kir block (a lowered graph shown for comparison) parses,
//!   verifies and prints back exactly as written; when an earlier ```kiln
//!   example has a model of the graph's name, the block is exactly that
//!   example's lowering.

use std::path::{Path, PathBuf};

use kiln::frontend::compile_source;
use kiln_dialect::verify::{render, verify};

/// The file name used when compiling examples (and rendering their errors).
const FILE: &str = "example.kiln";

fn language_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/language.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// A fenced code block of the markdown file.
#[derive(Debug)]
struct Block {
    /// The info string after the opening fence (`kiln`, `kiln-error`, `text`).
    info: String,
    /// The lines between the fences, each ending in `\n`.
    text: String,
    /// 1-based line of the opening fence.
    line: usize,
    /// 1-based line of the closing fence.
    end_line: usize,
}

/// Every fenced block, in file order. Fences are lines starting with three
/// backticks; a block ends at the next line that is exactly three backticks.
fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in md.lines().enumerate() {
        let n = i + 1;
        match &mut open {
            Some(b) => {
                if line == "```" {
                    b.end_line = n;
                    out.push(open.take().expect("a block is open"));
                } else {
                    b.text.push_str(line);
                    b.text.push('\n');
                }
            }
            None => {
                if let Some(info) = line.strip_prefix("```") {
                    open = Some(Block {
                        info: info.trim().to_string(),
                        text: String::new(),
                        line: n,
                        end_line: n,
                    });
                }
            }
        }
    }
    if let Some(b) = open {
        panic!(
            "docs/language.md:{}: the code block is never closed",
            b.line
        );
    }
    out
}

/// An empty folder of its own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p =
            std::env::temp_dir().join(format!("kiln-language-docs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create a temporary folder");
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn kiln_examples_compile_and_verify() {
    let md = language_md();
    let dir = TempDir::new("ok");
    let mut failures = Vec::new();
    let mut count = 0;
    for b in blocks(&md).iter().filter(|b| b.info == "kiln") {
        count += 1;
        match compile_source(FILE, &b.text, dir.path()) {
            Ok(c) => {
                if let Err(errs) = verify(&c.graph) {
                    let text = kiln_dialect::text::print(&c.graph);
                    failures.push(format!(
                        "docs/language.md:{}: the graph does not verify:\n{}",
                        b.line,
                        render(&errs, "lowered.kir", &text)
                    ));
                }
            }
            Err(f) => failures.push(format!(
                "docs/language.md:{}: does not compile:\n{}",
                b.line,
                f.render()
            )),
        }
    }
    assert!(count >= 15, "only {count} kiln examples");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn kiln_error_examples_fail_as_shown() {
    let md = language_md();
    let lines: Vec<&str> = md.lines().collect();
    let all = blocks(&md);
    let dir = TempDir::new("error");
    let mut failures = Vec::new();
    let mut count = 0;
    for (i, b) in all
        .iter()
        .enumerate()
        .filter(|(_, b)| b.info == "kiln-error")
    {
        count += 1;
        let failed = match compile_source(FILE, &b.text, dir.path()) {
            Ok(_) => {
                failures.push(format!(
                    "docs/language.md:{}: compiles, but must fail",
                    b.line
                ));
                continue;
            }
            Err(f) => f,
        };
        let Some(next) = all.get(i + 1) else { continue };
        let between = &lines[b.end_line..next.line - 1];
        if next.info != "text" || !between.iter().all(|l| l.trim().is_empty()) {
            continue;
        }
        let rendered = failed.render();
        if rendered.trim_end() != next.text.trim_end() {
            failures.push(format!(
                "docs/language.md:{}: the errors differ from the text under the example; they are:\n{rendered}",
                b.line
            ));
        }
    }
    assert!(count >= 5, "only {count} kiln-error examples");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn kiln_nocheck_examples_only_miss_their_imports() {
    let md = language_md();
    let dir = TempDir::new("nocheck");
    let nocheck: Vec<Block> = blocks(&md)
        .into_iter()
        .filter(|b| b.info == "kiln-nocheck")
        .collect();
    assert!(
        nocheck.len() <= 3,
        "{} kiln-nocheck examples; keep them few",
        nocheck.len()
    );
    let mut failures = Vec::new();
    for b in &nocheck {
        match compile_source(FILE, &b.text, dir.path()) {
            Ok(_) => failures.push(format!(
                "docs/language.md:{}: compiles; mark it ```kiln",
                b.line
            )),
            Err(f) => {
                if f.diags.is_empty()
                    || f.diags
                        .iter()
                        .any(|d| !d.message.starts_with("cannot read "))
                {
                    failures.push(format!(
                        "docs/language.md:{}: fails for another reason than a missing import:\n{}",
                        b.line,
                        f.render()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn kir_examples_are_canonical_graphs() {
    let md = language_md();
    let dir = TempDir::new("kir");
    let mut failures = Vec::new();
    // the lowered graphs of the kiln examples so far, by name
    let mut lowered: Vec<(String, String)> = Vec::new();
    for b in blocks(&md)
        .iter()
        .filter(|b| b.info == "kir" || b.info == "kiln")
    {
        if b.info == "kiln" {
            if let Ok(c) = compile_source(FILE, &b.text, dir.path()) {
                lowered.push((c.graph.name.clone(), kiln_dialect::text::print(&c.graph)));
            }
            continue;
        }
        let g = match kiln_dialect::text::parse(&b.text) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!(
                    "docs/language.md:{}: does not parse:\n{}",
                    b.line,
                    e.diagnostic().render("block.kir", &b.text)
                ));
                continue;
            }
        };
        if let Err(errs) = verify(&g) {
            failures.push(format!(
                "docs/language.md:{}: does not verify:\n{}",
                b.line,
                render(&errs, "block.kir", &b.text)
            ));
            continue;
        }
        let printed = kiln_dialect::text::print(&g);
        if printed != b.text {
            failures.push(format!(
                "docs/language.md:{}: is not in canonical form; the printer writes:\n{printed}",
                b.line
            ));
        }
        if let Some((_, text)) = lowered.iter().rev().find(|(n, _)| *n == g.name)
            && *text != b.text
        {
            failures.push(format!(
                "docs/language.md:{}: is not the lowering of the model `{}` above, which is:\n{text}",
                b.line, g.name
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn only_known_kinds_of_blocks() {
    let md = language_md();
    for b in blocks(&md) {
        assert!(
            ["kiln", "kiln-error", "kiln-nocheck", "text", "sh", "kir"].contains(&b.info.as_str()),
            "docs/language.md:{}: unknown block kind `{}`",
            b.line,
            b.info
        );
    }
}
