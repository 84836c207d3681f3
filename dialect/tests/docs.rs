//! Keeps docs/ir.md true to the code.
//!
//! * Every ```kir block parses, verifies, and prints back exactly as written
//!   (so every example is in canonical form).
//! * Every ```kir-error block fails to parse or to verify. When the next
//!   fenced block follows it with only blank lines between and is a ```text
//!   block, that block is the rendered error (up to trailing blank lines),
//!   with the file named `example.kir`.
//! * Every op of the op table has exactly one `### `mnemonic`` heading, no
//!   heading names an op that does not exist, and each op's section has a
//!   ```kir example that uses the op.

use std::collections::BTreeMap;

use kiln_dialect::ops::OP_TABLE;
use kiln_dialect::text::{parse, print};
use kiln_dialect::verify::{render, verify};

/// The file name used when rendering errors of `kir-error` examples.
const ERROR_FILE: &str = "example.kir";

fn ir_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/ir.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// A fenced code block of the markdown file.
#[derive(Debug)]
struct Block {
    /// The info string after the opening fence (`kir`, `kir-error`, `text`).
    info: String,
    /// The lines between the fences, each ending in `\n`.
    text: String,
    /// 1-based line of the opening fence.
    line: usize,
    /// 1-based line of the closing fence.
    end_line: usize,
    /// The `### ` heading the block is under, if any.
    heading: Option<String>,
}

/// Every fenced block, in file order. Fences are lines starting with three
/// backticks; a block ends at the next line that is exactly three backticks.
fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut heading: Option<String> = None;
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
                        heading: heading.clone(),
                    });
                } else if line.starts_with('#') {
                    // `###` starts an op section, `#` and `##` end one, deeper
                    // headings stay inside it.
                    let level = line.chars().take_while(|&c| c == '#').count();
                    match level {
                        3 => heading = Some(line[3..].trim().to_string()),
                        1 | 2 => heading = None,
                        _ => {}
                    }
                }
            }
        }
    }
    if let Some(b) = open {
        panic!("docs/ir.md:{}: the code block is never closed", b.line);
    }
    out
}

/// The mnemonic of an op heading: `### `name`` gives `name`.
fn op_heading(h: &str) -> Option<&str> {
    h.strip_prefix('`')?.strip_suffix('`')
}

/// The mnemonics a parsed graph uses (declarations included).
fn ops_used(g: &kiln_dialect::Graph) -> Vec<&'static str> {
    g.node_ids().map(|id| g.node(id).op.mnemonic()).collect()
}

#[test]
fn kir_examples_parse_verify_and_print_back() {
    let md = ir_md();
    let mut failures = Vec::new();
    let mut count = 0;
    for b in blocks(&md).iter().filter(|b| b.info == "kir") {
        count += 1;
        let g = match parse(&b.text) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!(
                    "docs/ir.md:{}: does not parse:\n{}",
                    b.line,
                    e.diagnostic().render("block.kir", &b.text)
                ));
                continue;
            }
        };
        if let Err(errors) = verify(&g) {
            failures.push(format!(
                "docs/ir.md:{}: does not verify:\n{}",
                b.line,
                render(&errors, "block.kir", &b.text)
            ));
            continue;
        }
        let printed = print(&g);
        if printed != b.text {
            failures.push(format!(
                "docs/ir.md:{}: is not in canonical form; the printer writes:\n{printed}",
                b.line
            ));
        }
    }
    assert!(
        count >= OP_TABLE.len(),
        "only {count} kir examples for {} ops",
        OP_TABLE.len()
    );
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn kir_error_examples_fail_as_shown() {
    let md = ir_md();
    let lines: Vec<&str> = md.lines().collect();
    let all = blocks(&md);
    let mut failures = Vec::new();
    let mut count = 0;
    for (i, b) in all
        .iter()
        .enumerate()
        .filter(|(_, b)| b.info == "kir-error")
    {
        count += 1;
        let rendered = match parse(&b.text) {
            Err(e) => e.diagnostic().render(ERROR_FILE, &b.text),
            Ok(g) => match verify(&g) {
                Err(errors) => render(&errors, ERROR_FILE, &b.text),
                Ok(()) => {
                    failures.push(format!(
                        "docs/ir.md:{}: marked kir-error, but it parses and verifies",
                        b.line
                    ));
                    continue;
                }
            },
        };
        let Some(next) = all.get(i + 1) else { continue };
        let only_blank_between = lines[b.end_line..next.line - 1]
            .iter()
            .all(|l| l.trim().is_empty());
        if next.info == "text" && only_blank_between && next.text.trim_end() != rendered.trim_end()
        {
            failures.push(format!(
                "docs/ir.md:{}: the rendered error differs from the text block at line {}; it is:\n{rendered}",
                b.line, next.line
            ));
        }
    }
    assert!(count > 0, "docs/ir.md has no kir-error example");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_op_has_one_section_with_an_example() {
    let md = ir_md();
    let mut headings: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, line) in md.lines().enumerate() {
        if let Some(name) = line.strip_prefix("### ").and_then(|h| op_heading(h.trim())) {
            headings.entry(name).or_default().push(i + 1);
        }
    }
    let mut failures = Vec::new();
    for (name, at) in &headings {
        if !OP_TABLE.iter().any(|s| s.mnemonic == *name) {
            failures.push(format!(
                "docs/ir.md:{}: heading names `{name}`, which is not an op",
                at[0]
            ));
        }
        if at.len() > 1 {
            failures.push(format!(
                "docs/ir.md: `{name}` has {} headings (lines {at:?})",
                at.len()
            ));
        }
    }
    let all = blocks(&md);
    for spec in OP_TABLE {
        let m = spec.mnemonic;
        if !headings.contains_key(m) {
            failures.push(format!("docs/ir.md has no \"### `{m}`\" section"));
            continue;
        }
        let heading = format!("`{m}`");
        let has_example = all
            .iter()
            .filter(|b| b.info == "kir" && b.heading.as_deref() == Some(heading.as_str()))
            .any(|b| parse(&b.text).is_ok_and(|g| ops_used(&g).contains(&m)));
        if !has_example {
            failures.push(format!(
                "docs/ir.md: the section of `{m}` has no kir example that uses it"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn block_extraction() {
    let md = "# T\n\n### `add`\n\ntext\n\n```kir\ngraph g {\n}\n```\n\n## Other\n\n```kir-error\nx\n```\n";
    let b = blocks(md);
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].info, "kir");
    assert_eq!(b[0].text, "graph g {\n}\n");
    assert_eq!(b[0].line, 7);
    assert_eq!(b[0].end_line, 10);
    assert_eq!(b[0].heading.as_deref(), Some("`add`"));
    assert_eq!(b[1].info, "kir-error");
    assert_eq!(b[1].heading, None);
    assert_eq!(op_heading("`add`"), Some("add"));
    assert_eq!(op_heading("Sources"), None);
}
