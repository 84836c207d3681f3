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

use self::ast::{File, Item, MAX_EXPR_DEPTH, TooDeep};
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
    let main = loader.load(path, &path.display().to_string(), None);
    finish(loader, main)
}

/// Compiles source text; imports resolve relative to `dir`.
pub fn compile_source(name: &str, src: &str, dir: &Path) -> Result<Compiled, Failed> {
    let mut loader = Loader::default();
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
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
            let end = loader.files[main].text.trim_end().len();
            diags.push(
                Diagnostic::error(format!("{main_name} has no `model`"))
                    .with_label(
                        Span::in_file(main as u32, end, end),
                        "no `model` in this file",
                    )
                    .with_notes([
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

/// The longest chain of imports (a imports b imports c ...) accepted.
const MAX_IMPORT_DEPTH: usize = 64;

impl Loader {
    /// Loads a file; `from` is the import that asked for it. `name` is how
    /// diagnostics call the file: the path as given for the main file, the
    /// importing file's name joined with the import's path for the others.
    fn load(&mut self, path: &Path, name: &str, from: Option<Span>) -> Option<usize> {
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(&id) = self.by_path.get(&canon) {
            if let Some(pos) = self.loading.iter().position(|&f| f == id) {
                let mut chain: Vec<String> = self.loading[pos..]
                    .iter()
                    .map(|&f| self.files[f].name.clone())
                    .collect();
                let help = match chain.len() {
                    1 => "help: remove the import; a file sees its own blocks and constants",
                    2 => "help: move what both files need into a third file that both import",
                    _ => "help: move what these files share into a file that imports none of them",
                };
                chain.push(self.files[id].name.clone());
                let d = Diagnostic::error(format!("import cycle: {}", chain.join(" → ")));
                let d = match from {
                    Some(s) => d.with_label(s, "this import closes the cycle"),
                    None => d,
                };
                self.diags.push(d.with_notes([help.to_string()]));
                return None;
            }
            return Some(id);
        }
        if self.loading.len() >= MAX_IMPORT_DEPTH {
            let d = Diagnostic::error(format!(
                "imports are chained more than {MAX_IMPORT_DEPTH} files deep"
            ));
            self.diags.push(match from {
                Some(s) => d.with_label(s, ""),
                None => d,
            });
            return None;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let d = Diagnostic::error(format!("cannot read {name}: {e}"));
                self.diags.push(match from {
                    Some(s) => d.with_label(s, "imported here"),
                    None => d,
                });
                return None;
            }
        };
        Some(self.add(name, text, canon))
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
            let shown_dir = Path::new(&self.files[id].name)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            for item in &ast.items {
                if let Item::Import { path, span } = item {
                    let shown = shown_dir.join(path).display().to_string();
                    self.load(&dir.join(path), &shown, Some(*span));
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
        diags.push(lex_error(e));
    }
    if let Some(d) = too_many_braces(&tokens, file) {
        diags.push(d);
        return None;
    }
    let all: Vec<(usize, Tok, usize)> = tokens.clone();
    let mut recovered = Vec::new();
    let result = grammar::FileParser::new().parse(
        file,
        &mut recovered,
        tokens.into_iter().map(Ok::<_, TooDeep>),
    );
    let cx = SyntaxContext {
        src,
        file,
        tokens: &all,
    };
    for r in recovered {
        diags.push(cx.error(r.error));
    }
    match result {
        Ok(f) if lex_errors.is_empty() => Some(f),
        Ok(_) => None,
        Err(e) => {
            diags.push(cx.error(e));
            None
        }
    }
}

/// The deepest `{ ... }` nesting (loops in blocks in models) the parser
/// accepts; like [`MAX_EXPR_DEPTH`], it bounds the recursion of later stages.
pub const MAX_BRACE_DEPTH: usize = 64;

/// An error at the first `{` nested deeper than [`MAX_BRACE_DEPTH`].
fn too_many_braces(tokens: &[(usize, Tok, usize)], file: u32) -> Option<Diagnostic> {
    let mut depth = 0usize;
    for (l, t, r) in tokens {
        match t {
            Tok::LBrace => {
                depth += 1;
                if depth > MAX_BRACE_DEPTH {
                    return Some(
                        Diagnostic::error(format!(
                            "`{{ ... }}` nested more than {MAX_BRACE_DEPTH} deep"
                        ))
                        .with_label(Span::in_file(file, *l, *r), ""),
                    );
                }
            }
            Tok::RBrace => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

fn lex_error(e: &lexer::LexError) -> Diagnostic {
    if e.kind == lexer::LexErrorKind::IntTooLarge {
        return Diagnostic::error(format!("integer `{}` is too large", e.text))
            .with_label(e.span, format!("the largest integer is {}", i64::MAX));
    }
    let help = match e.text.as_str() {
        "^" => Some("for a power, call `pow(a, b)`"),
        "!" => Some("for a logical not, call `not(x)`; `!=` compares"),
        "&" => Some("for a logical and, call `and(a, b)`"),
        "|" => Some("for a logical or, call `or(a, b)`"),
        ";" => Some("a statement ends at the end of its line; remove the `;`"),
        "#" => Some("comments start with `//`"),
        "'" => Some("strings (in `import`) use double quotes"),
        _ => None,
    };
    let d = Diagnostic::error(format!("unexpected character `{}`", e.text))
        .with_label(e.span, "not part of the language");
    match help {
        Some(h) => d.with_notes([format!("help: {h}")]),
        None => d,
    }
}

/// What syntax errors are rendered against: the text, and the tokens of
/// the file (to point at a bracket left open or a line left unfinished).
struct SyntaxContext<'a> {
    src: &'a str,
    file: u32,
    tokens: &'a [(usize, Tok, usize)],
}

impl SyntaxContext<'_> {
    fn error(&self, e: ParseError<usize, Tok, TooDeep>) -> Diagnostic {
        let len = self.src.len();
        match e {
            ParseError::UnrecognizedToken {
                token: (l, t, r),
                expected,
            } => {
                let d = Diagnostic::error(format!(
                    "expected {}, found {t}",
                    describe_expected(&expected)
                ))
                .with_label(Span::in_file(self.file, l, r), "");
                let d = self.unclosed(d, l);
                let mut notes = Vec::new();
                let at_line_start = self.starts_line(l);
                if let Some(prev) = self.unfinished_line_before(l) {
                    notes.push(format!(
                        "help: the line before ends with {prev}, so the statement goes on to this line"
                    ));
                } else if is_reserved(&t) && expected.iter().any(|e| e == "Ident") {
                    notes.push(format!("help: {t} is a reserved word; choose another name"));
                }
                if t == Tok::Minus && at_line_start {
                    notes.push("help: a line that starts with `-` begins a new statement; to continue the expression, end the previous line with the `-`".to_string());
                }
                d.with_notes(notes)
            }
            ParseError::UnrecognizedEof { location, expected } => {
                let d = Diagnostic::error(format!(
                    "expected {}, found the end of the file",
                    describe_expected(&expected)
                ))
                .with_label(Span::in_file(self.file, location.min(len), len), "");
                self.unclosed(d, len)
            }
            ParseError::ExtraToken { token: (l, t, r) } => {
                Diagnostic::error(format!("unexpected {t}"))
                    .with_label(Span::in_file(self.file, l, r), "")
            }
            ParseError::InvalidToken { location } => Diagnostic::error("invalid token").with_label(
                Span::in_file(self.file, location.min(len), (location + 1).min(len)),
                "",
            ),
            ParseError::User {
                error: TooDeep { span },
            } => Diagnostic::error(format!(
                "this expression is nested more than {MAX_EXPR_DEPTH} levels deep"
            ))
            .with_label(span, "")
            .with_notes(["help: name parts of it with `let`".to_string()]),
        }
    }

    /// Adds a label at the innermost `(` or `[` before `at` that is never
    /// closed in the file.
    fn unclosed(&self, d: Diagnostic, at: usize) -> Diagnostic {
        let mut open: Vec<&(usize, Tok, usize)> = Vec::new();
        for b in self.tokens {
            match b.1 {
                Tok::LParen | Tok::LBracket => open.push(b),
                Tok::RParen | Tok::RBracket => {
                    open.pop();
                }
                _ => {}
            }
        }
        match open.iter().rev().find(|(l, _, _)| *l < at) {
            Some((l, t, r)) => d.with_label(
                Span::in_file(self.file, *l, *r),
                format!("this {t} is never closed"),
            ),
            None => d,
        }
    }

    /// The last token of the line before the one holding byte `at`, when
    /// that line left its statement open (it ends with a token that cannot
    /// end a statement, outside brackets), so the newline was not an end.
    fn unfinished_line_before(&self, at: usize) -> Option<&Tok> {
        let line_start = self.src[..at.min(self.src.len())].rfind('\n')? + 1;
        let mut depth = 0i32;
        let mut prev = None;
        for (_, t, r) in self.tokens.iter().take_while(|(_, _, r)| *r <= line_start) {
            match t {
                Tok::LParen | Tok::LBracket => depth += 1,
                Tok::RParen | Tok::RBracket => depth -= 1,
                _ => {}
            }
            prev = Some((t, *r));
        }
        let (t, r) = prev?;
        // the token must be on an earlier line, with nothing but the line
        // break (and comments or blanks) after it
        let on_earlier_line = self.src[r..line_start].contains('\n');
        // (after `{` a body starts: its first line is no continuation)
        let continues = !t.can_end_statement() && !matches!(t, Tok::Newline | Tok::LBrace);
        (on_earlier_line && depth <= 0 && continues).then_some(t)
    }

    /// Whether only blanks come before byte `at` on its line (and it is not
    /// the first line).
    fn starts_line(&self, at: usize) -> bool {
        let before = &self.src[..at.min(self.src.len())];
        match before.rfind('\n') {
            Some(nl) => before[nl + 1..].chars().all(|c| c == ' ' || c == '\t'),
            None => false,
        }
    }
}

/// Keywords that are never names. (`model`, `block`, `input`, `weight`
/// and `output` are names where a name is expected.)
fn is_reserved(t: &Tok) -> bool {
    matches!(
        t,
        Tok::Let | Tok::Const | Tok::For | Tok::In | Tok::Return | Tok::Import | Tok::As
    )
}

/// Turns the parser's terminal names into words: `"("` -> `` `(` ``,
/// `Ident` -> "a name".
fn describe_expected(expected: &[String]) -> String {
    let mut words: Vec<String> = expected
        .iter()
        .map(|e| match e.as_str() {
            "Ident" => "a name".to_string(),
            // an integer is a number: say "a number" when both are expected
            "Int" if expected.iter().any(|e| e == "Float") => "a number".to_string(),
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
    // the declaration keywords are names too: "a name" covers them
    if expected.iter().any(|e| e == "Ident") {
        words.retain(|w| {
            !matches!(
                w.as_str(),
                "`model`" | "`block`" | "`input`" | "`weight`" | "`output`"
            )
        });
    }
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
