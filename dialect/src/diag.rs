//! Diagnostics: an error with a source span, rendered like rustc's (the
//! source line, a caret under the span, the message, notes).

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, Config};

use crate::graph::Span;

/// How serious a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// A message about a place in a source file.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    /// Spans with their own short messages; the first is the primary one.
    pub labels: Vec<(Span, String)>,
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// An error with a message and no location yet.
    pub fn error(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            labels: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a labelled span (the first one added is the primary span).
    pub fn with_label(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.labels.push((span, label.into()));
        self
    }

    /// Adds notes printed under the source excerpt.
    pub fn with_notes(mut self, notes: impl IntoIterator<Item = String>) -> Diagnostic {
        self.notes.extend(notes);
        self
    }

    /// Renders against the source text, without colour.
    pub fn render(&self, file_name: &str, source: &str) -> String {
        render_all(std::slice::from_ref(self), file_name, source)
    }
}

/// Renders several diagnostics for one file, without colour.
pub fn render_all(diags: &[Diagnostic], file_name: &str, source: &str) -> String {
    let file = SimpleFile::new(file_name, source);
    let config = Config::default();
    let mut out = String::new();
    for d in diags {
        let cs = match d.severity {
            Severity::Error => CsDiagnostic::error(),
            Severity::Warning => CsDiagnostic::warning(),
        };
        let clamp = |s: Span| {
            let end = s.end.min(source.len());
            s.start.min(end)..end
        };
        let labels = d
            .labels
            .iter()
            .enumerate()
            .map(|(i, (span, msg))| {
                let l = if i == 0 {
                    Label::primary((), clamp(*span))
                } else {
                    Label::secondary((), clamp(*span))
                };
                l.with_message(msg.clone())
            })
            .collect();
        let cs = cs
            .with_message(&d.message)
            .with_labels(labels)
            .with_notes(d.notes.clone());
        let mut w = term::termcolor::NoColor::new(Vec::<u8>::new());
        match term::emit(&mut w, &config, &file, &cs) {
            Ok(()) => out.push_str(&String::from_utf8_lossy(&w.into_inner())),
            Err(_) => out.push_str(&format!("error: {}\n", d.message)),
        }
    }
    out
}
