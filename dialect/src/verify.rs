//! The verifier: checks that a graph is well formed and well typed.
//!
//! It runs between pipeline stages. Every error names the node (its first
//! result and op) and says what was expected and what was found; errors from
//! parsed text carry the node's span so they print inline at the line.

use std::collections::HashSet;

use crate::diag::Diagnostic;
use crate::graph::{CycleError, Graph, Span};
use crate::infer::{TypeError, infer};
use crate::types::TensorType;

/// One verifier finding.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}{kind}", .node.as_ref().map(|n| format!("{n}: ")).unwrap_or_default())]
pub struct VerifyError {
    /// The node, as `%name` (its first result), when the error is about one.
    pub node: Option<String>,
    pub span: Option<Span>,
    pub kind: VerifyErrorKind,
}

/// What is wrong.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum VerifyErrorKind {
    #[error(transparent)]
    Type(TypeError),
    #[error("declared type of %{value} is {declared}, but `{op}` gives {inferred}")]
    Declared {
        value: String,
        op: &'static str,
        declared: TensorType,
        inferred: TensorType,
    },
    #[error("`{op}` gives {expected} result(s) here, {found} declared")]
    ResultCount {
        op: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("value %{0} is defined twice")]
    DuplicateName(String),
    #[error("output `{0}` is declared twice")]
    DuplicateOutput(String),
    #[error("the graph has no outputs")]
    NoOutputs,
    #[error("output `{0}` refers to a value that is not in the graph")]
    DanglingOutput(String),
    #[error("operand {slot} refers to a value that is not in the graph")]
    DanglingOperand { slot: usize },
    #[error(transparent)]
    Cycle(CycleError),
}

impl VerifyError {
    /// The error as a diagnostic to render against the source.
    pub fn diagnostic(&self) -> Diagnostic {
        let d = Diagnostic::error(self.to_string());
        match self.span {
            Some(s) => d.with_label(s, ""),
            None => d,
        }
    }
}

/// Checks the whole graph; returns every error found.
pub fn verify(g: &Graph) -> Result<(), Vec<VerifyError>> {
    let mut errors = Vec::new();
    let order = match g.topo_order() {
        Ok(o) => o,
        Err(e) => {
            return Err(vec![VerifyError {
                node: None,
                span: None,
                kind: VerifyErrorKind::Cycle(e),
            }]);
        }
    };
    let mut names = HashSet::new();
    for id in order {
        let node = g.node(id);
        let who = node
            .results
            .first()
            .map(|r| format!("%{}", r.name))
            .unwrap_or_else(|| node.op.mnemonic().to_string());
        let err = |kind| VerifyError {
            node: Some(who.clone()),
            span: node.span,
            kind,
        };
        for r in &node.results {
            if !names.insert(r.name.as_str()) {
                errors.push(err(VerifyErrorKind::DuplicateName(r.name.clone())));
            }
        }
        let operands = g.operands(id);
        if let Some(slot) = operands.iter().position(|v| !g.has_value(*v)) {
            errors.push(err(VerifyErrorKind::DanglingOperand { slot }));
            continue;
        }
        let tys: Vec<&TensorType> = operands.iter().map(|v| g.value_type(*v)).collect();
        let declared = node.results.first().map(|r| &r.ty);
        match infer(&node.op, &tys, declared) {
            Err(e) => errors.push(err(VerifyErrorKind::Type(e))),
            Ok(inferred) => {
                if inferred.len() != node.results.len() {
                    errors.push(err(VerifyErrorKind::ResultCount {
                        op: node.op.mnemonic(),
                        expected: inferred.len(),
                        found: node.results.len(),
                    }));
                    continue;
                }
                for (r, t) in node.results.iter().zip(inferred) {
                    if r.ty != t {
                        errors.push(err(VerifyErrorKind::Declared {
                            value: r.name.clone(),
                            op: node.op.mnemonic(),
                            declared: r.ty.clone(),
                            inferred: t,
                        }));
                    }
                }
            }
        }
    }
    if g.outputs().is_empty() {
        errors.push(VerifyError {
            node: None,
            span: None,
            kind: VerifyErrorKind::NoOutputs,
        });
    }
    let mut outs = HashSet::new();
    for o in g.outputs() {
        let err = |kind| VerifyError {
            node: None,
            span: o.span,
            kind,
        };
        if !outs.insert(o.name.as_str()) {
            errors.push(err(VerifyErrorKind::DuplicateOutput(o.name.clone())));
        }
        if !g.has_value(o.value) {
            errors.push(err(VerifyErrorKind::DanglingOutput(o.name.clone())));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Renders verifier errors against the text the graph was parsed from.
pub fn render(errors: &[VerifyError], file_name: &str, source: &str) -> String {
    let diags: Vec<Diagnostic> = errors.iter().map(VerifyError::diagnostic).collect();
    crate::diag::render_all(&diags, file_name, source)
}
