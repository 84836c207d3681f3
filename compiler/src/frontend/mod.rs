//! The model language: lexer (logos), grammar (lalrpop), syntax tree,
//! diagnostics, and the lowering to the graph dialect.
//!
//! [`compile_file`] reads a `.kiln` file and the files it imports, parses
//! them, and lowers the main file's model to a verified graph. Errors come
//! back together, rendered like rustc's by [`Failed::render`].

pub mod ast;
pub mod lexer;
mod lower;

#[allow(clippy::all, clippy::pedantic, unused_parens, unused_imports)]
mod grammar {
    include!(concat!(env!("OUT_DIR"), "/frontend/grammar.rs"));
}

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_dialect::diag::{Diagnostic, render_files};
use kiln_dialect::{Graph, Span};
use lalrpop_util::ParseError;

pub use lower::dtype_named;

use self::ast::{File, Item};
use self::lexer::Tok;

/// The files of one compilation: names (as given) and texts, indexed by
/// `Span::file`.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub files: Vec<(String, String)>,
}

/// A model lowered to a verified graph.
#[derive(Debug)]
pub struct Compiled {
    pub graph: Graph,
    /// The main file's syntax tree.
    pub ast: File,
    pub sources: Sources,
}

/// Every error of a compilation, with the sources to render them against.
#[derive(Debug)]
pub struct Failed {
    pub diags: Vec<Diagnostic>,
    pub sources: Sources,
}

impl Failed {
    /// The errors rendered like rustc's, followed by a count.
    pub fn render(&self) -> String {
        let mut s = render_files(&self.diags, &self.sources.files);
        let n = self.diags.len();
        if n > 1 {
            s.push_str(&format!("error: {n} errors found\n"));
        }
        s
    }
}

/// Compiles a `.kiln` file (and what it imports) to a graph.
pub fn compile_file(path: &Path) -> Result<Compiled, Failed> {
    let mut loader = Loader::default();
    let main = loader.load(path, None);
    finish(loader, main)
}

/// Compiles source text; imports resolve relative to `dir`.
pub fn compile_source(name: &str, src: &str, dir: &Path) -> Result<Compiled, Failed> {
    let mut loader = Loader::default();
    let main = loader.add(name, src.to_string(), dir.join(name));
    finish(loader, Some(main))
}

fn finish(mut loader: Loader, main: Option<usize>) -> Result<Compiled, Failed> {
    let failed = |l: Loader| Failed {
        diags: l.diags,
        sources: Sources {
            files: l.files.into_iter().map(|f| (f.name, f.text)).collect(),
        },
    };
    let Some(main) = main else {
        return Err(failed(loader));
    };
    if !loader.diags.is_empty() {
        return Err(failed(loader));
    }
    // Gather constants and blocks of every file; the model of the main file.
    let mut consts = Vec::new();
    let mut blocks = HashMap::new();
    let mut defined: HashMap<String, Span> = HashMap::new();
    let mut models = Vec::new();
    let mut diags = Vec::new();
    let order: Vec<usize> = loader.order.clone();
    for &fid in &order {
        let file = loader.files[fid]
            .ast
            .as_ref()
            .expect("loaded files are parsed");
        for item in &file.items {
            let (name, span) = match item {
                Item::Import { .. } => continue,
                Item::Const(c) => (&c.name.name, c.name.span),
                Item::Block(b) => (&b.name.name, b.name.span),
                Item::Model(m) => {
                    if fid == main {
                        models.push(m);
                    }
                    continue;
                }
            };
            if let Some(prev) = defined.insert(name.clone(), span) {
                diags.push(
                    Diagnostic::error(format!("`{name}` is defined twice"))
                        .with_label(span, "defined again here")
                        .with_label(prev, "first defined here"),
                );
                continue;
            }
            match item {
                Item::Const(c) => consts.push(c),
                Item::Block(b) => {
                    if kiln_dialect::ops::OP_TABLE
                        .iter()
                        .any(|s| s.mnemonic == b.name.name)
                    {
                        diags.push(
                            Diagnostic::error(format!("block `{name}` has the name of an op"))
                                .with_label(b.name.span, "")
                                .with_notes([format!("help: rename the block, e.g. `{name}_block`; `{name}(...)` calls the op")]),
                        );
                        continue;
                    }
                    blocks.insert(b.name.name.clone(), b);
                }
                Item::Import { .. } | Item::Model(_) => {}
            }
        }
    }
    let main_name = loader.files[main].name.clone();
    let model = match models.as_slice() {
        [m] => Some(*m),
        [] => {
            diags.push(
                Diagnostic::error(format!("{main_name} has no `model`")).with_notes([
                    "help: declare one: `model NAME { input x: f32[4] ... output y = ... }`"
                        .to_string(),
                ]),
            );
            None
        }
        [first, rest @ ..] => {
            for m in rest {
                diags.push(
                    Diagnostic::error("a file compiles one model; this is a second one")
                        .with_label(m.name.span, "second model")
                        .with_label(first.name.span, "first model")
                        .with_notes(["help: move the other model to its own file (blocks can be shared with `import`)".to_string()]),
                );
            }
            None
        }
    };
    let result = match (model, diags.is_empty()) {
        (Some(model), true) => lower::lower(&lower::Program {
            consts,
            blocks,
            model,
        }),
        _ => Err(Vec::new()),
    };
    match result {
        Ok(graph) => {
            let sources = Sources {
                files: loader
                    .files
                    .iter()
                    .map(|f| (f.name.clone(), f.text.clone()))
                    .collect(),
            };
            let ast = loader.files[main].ast.take().expect("main file parsed");
            Ok(Compiled {
                graph,
                ast,
                sources,
            })
        }
        Err(mut more) => {
            diags.append(&mut more);
            loader.diags = diags;
            Err(failed(loader))
        }
    }
}

struct SourceFile {
    name: String,
    text: String,
    path: PathBuf,
    ast: Option<File>,
}

/// Loads files and their imports, parsing each once.
#[derive(Default)]
struct Loader {
    files: Vec<SourceFile>,
    /// File ids in the order their definitions are gathered (imports first).
    order: Vec<usize>,
    by_path: HashMap<PathBuf, usize>,
    /// Files being loaded, for cycle detection.
    loading: Vec<usize>,
    diags: Vec<Diagnostic>,
}

impl Loader {
    /// Loads a file; `from` is the import that asked for it.
    fn load(&mut self, path: &Path, from: Option<Span>) -> Option<usize> {
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(&id) = self.by_path.get(&canon) {
            if let Some(pos) = self.loading.iter().position(|&f| f == id) {
                let mut chain: Vec<String> = self.loading[pos..]
                    .iter()
                    .map(|&f| self.files[f].name.clone())
                    .collect();
                chain.push(self.files[id].name.clone());
                let d = Diagnostic::error(format!("import cycle: {}", chain.join(" → ")));
                let d = match from {
                    Some(s) => d.with_label(s, "this import closes the cycle"),
                    None => d,
                };
                self.diags.push(
                    d.with_notes([
                        "help: move what both files need into a third file that both import"
                            .to_string(),
                    ]),
                );
                return None;
            }
            return Some(id);
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let d = Diagnostic::error(format!("cannot read {}: {e}", path.display()));
                self.diags.push(match from {
                    Some(s) => d.with_label(s, "imported here"),
                    None => d,
                });
                return None;
            }
        };
        Some(self.add(&path.display().to_string(), text, canon))
    }

    fn add(&mut self, name: &str, text: String, canon: PathBuf) -> usize {
        let id = self.files.len();
        self.files.push(SourceFile {
            name: name.to_string(),
            text,
            path: canon.clone(),
            ast: None,
        });
        self.by_path.insert(canon, id);
        self.loading.push(id);
        let ast = parse(&self.files[id].text, id as u32, &mut self.diags);
        if let Some(ast) = &ast {
            let dir = self.files[id]
                .path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            for item in &ast.items {
                if let Item::Import { path, span } = item {
                    self.load(&dir.join(path), Some(*span));
                }
            }
        }
        self.files[id].ast = Some(ast.unwrap_or(File { items: Vec::new() }));
        self.loading.pop();
        self.order.push(id);
        id
    }
}

/// Parses one file; syntax errors are added to `diags` (several per file
/// where the parser can recover).
fn parse(src: &str, file: u32, diags: &mut Vec<Diagnostic>) -> Option<File> {
    let (tokens, lex_errors) = lexer::lex(src, file);
    for e in &lex_errors {
        diags.push(
            Diagnostic::error(format!("unexpected character `{}`", e.text))
                .with_label(e.span, "not part of the language"),
        );
    }
    let mut recovered = Vec::new();
    let result =
        grammar::FileParser::new().parse(file, &mut recovered, tokens.into_iter().map(Ok::<_, ()>));
    for r in recovered {
        diags.push(syntax_error(r.error, file, src.len()));
    }
    match result {
        Ok(f) if lex_errors.is_empty() => Some(f),
        Ok(_) => None,
        Err(e) => {
            diags.push(syntax_error(e, file, src.len()));
            None
        }
    }
}

fn syntax_error(e: ParseError<usize, Tok, ()>, file: u32, len: usize) -> Diagnostic {
    match e {
        ParseError::UnrecognizedToken {
            token: (l, t, r),
            expected,
        } => Diagnostic::error(format!(
            "expected {}, found {t}",
            describe_expected(&expected)
        ))
        .with_label(Span::in_file(file, l, r), ""),
        ParseError::UnrecognizedEof { location, expected } => Diagnostic::error(format!(
            "expected {}, found the end of the file",
            describe_expected(&expected)
        ))
        .with_label(Span::in_file(file, location.min(len), len), ""),
        ParseError::ExtraToken { token: (l, t, r) } => {
            Diagnostic::error(format!("unexpected {t}")).with_label(Span::in_file(file, l, r), "")
        }
        ParseError::InvalidToken { location } => Diagnostic::error("invalid token")
            .with_label(Span::in_file(file, location, location + 1), ""),
        ParseError::User { error: () } => Diagnostic::error("syntax error"),
    }
}

/// Turns the parser's terminal names into words: `"("` -> `` `(` ``,
/// `Ident` -> "a name".
fn describe_expected(expected: &[String]) -> String {
    let mut words: Vec<String> = expected
        .iter()
        .map(|e| match e.as_str() {
            "Ident" => "a name".to_string(),
            "Int" => "an integer".to_string(),
            "Float" => "a number".to_string(),
            "Str" => "a string".to_string(),
            "\"\\n\"" => "end of line".to_string(),
            s if s.starts_with('"') && s.ends_with('"') && s.len() >= 2 => {
                format!("`{}`", &s[1..s.len() - 1])
            }
            s => s.to_string(),
        })
        .collect();
    words.sort();
    words.dedup();
    match words.len() {
        0 => "something else".to_string(),
        1 => words.remove(0),
        n if n <= 6 => {
            let last = words.pop().unwrap_or_default();
            format!("{} or {last}", words.join(", "))
        }
        _ => {
            // long lists say little; name the most useful few
            let preferred = [
                "a name",
                "end of line",
                "`=`",
                "`(`",
                "`)`",
                "`]`",
                "`}`",
                "`,`",
            ];
            let picked: Vec<&str> = preferred
                .iter()
                .copied()
                .filter(|p| words.iter().any(|w| w == p))
                .collect();
            if picked.is_empty() {
                "an expression".to_string()
            } else {
                format!("{} or another token", picked.join(", "))
            }
        }
    }
}
