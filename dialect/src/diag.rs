//! Diagnostics: an error with a source span, rendered like rustc's (the
//! source line, a caret under the span, the message, notes).

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFiles;
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
    render_files(diags, &[(file_name.to_string(), source.to_string())])
}

/// Renders diagnostics whose spans point into several files (`Span::file`
/// indexes `files`, each a name and its text), without colour.
pub fn render_files(diags: &[Diagnostic], files: &[(String, String)]) -> String {
    let mut db = SimpleFiles::new();
    for (name, src) in files {
        db.add(name.as_str(), src.as_str());
    }
    let config = Config::default();
    let mut out = String::new();
    for d in diags {
        let cs = match d.severity {
            Severity::Error => CsDiagnostic::error(),
            Severity::Warning => CsDiagnostic::warning(),
        };
        let labels = d
            .labels
            .iter()
            .enumerate()
            .filter(|(_, (span, _))| (span.file as usize) < files.len())
            .map(|(i, (span, msg))| {
                let len = files[span.file as usize].1.len();
                let end = span.end.min(len);
                let range = span.start.min(end)..end;
                let l = if i == 0 {
                    Label::primary(span.file as usize, range)
                } else {
                    Label::secondary(span.file as usize, range)
                };
                l.with_message(msg.clone())
            })
            .collect();
        let cs = cs
            .with_message(&d.message)
            .with_labels(labels)
            .with_notes(d.notes.clone());
        let mut w = term::termcolor::NoColor::new(Vec::<u8>::new());
        match term::emit(&mut w, &config, &db, &cs) {
            Ok(()) => out.push_str(&String::from_utf8_lossy(&w.into_inner())),
            Err(_) => out.push_str(&format!("error: {}\n", d.message)),
        }
    }
    out
}
