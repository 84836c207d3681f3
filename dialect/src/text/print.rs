//! The `.kir` printer. Its output is the canonical text form: the parser
//! reads it back to an equal graph, and printing that gives the same text.

use std::fmt::Write;

use crate::graph::{Graph, Trivia};
use crate::ops::Op;
use crate::text::lexer::quote;

/// Prints a graph as `.kir` text.
pub fn print(g: &Graph) -> String {
    let mut out = String::new();
    trivia(&mut out, &g.doc, "");
    let _ = writeln!(out, "graph {} {{", name_token(&g.name));
    let order = match g.topo_order() {
        Ok(o) => o,
        // A cyclic graph still prints (in insertion order) so it can be inspected.
        Err(_) => g.node_ids().collect(),
    };
    for id in order {
        let node = g.node(id);
        trivia(&mut out, &node.doc, "  ");
        out.push_str("  ");
        if let Op::Input | Op::Weight = node.op {
            let r = &node.results[0];
            let _ = writeln!(
                out,
                "{} {}: {}",
                node.op.mnemonic(),
                value_token(&r.name),
                r.ty
            );
            continue;
        }
        for (i, r) in node.results.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{}: {}", value_token(&r.name), r.ty);
        }
        let _ = write!(out, " = {}", node.op.mnemonic());
        let operands = g.operands(id);
        // Ops that take no operands (`constant`, `iota`) print without parentheses.
        if !(operands.is_empty() && node.op.spec().operands.is_empty()) {
            out.push('(');
            for (i, v) in operands.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&value_token(g.value_name(*v)));
            }
            out.push(')');
        }
        let attrs = node.op.attrs();
        if !attrs.is_empty() {
            out.push_str(" {");
            for (i, (k, v)) in attrs.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let _ = write!(out, "{k} = {v}");
            }
            out.push('}');
        }
        out.push('\n');
    }
    for o in g.outputs() {
        trivia(&mut out, &o.doc, "  ");
        let _ = writeln!(
            out,
            "  output {} = {}",
            name_token(&o.name),
            value_token(g.value_name(o.value))
        );
    }
    trivia(&mut out, &g.end_doc, "  ");
    out.push_str("}\n");
    out
}

fn trivia(out: &mut String, doc: &[Trivia], indent: &str) {
    for t in doc {
        match t {
            Trivia::Comment(c) => {
                let _ = writeln!(out, "{indent}//{c}");
            }
            Trivia::Blank => out.push('\n'),
        }
    }
}

/// `%name`, quoted when the name has characters outside `[A-Za-z0-9_.]`.
pub fn value_token(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        format!("%{name}")
    } else {
        format!("%{}", quote(name))
    }
}

/// A graph or output name: a bare identifier when it is one, else quoted.
pub fn name_token(name: &str) -> String {
    let mut chars = name.chars();
    let ident = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ident { name.to_string() } else { quote(name) }
}
