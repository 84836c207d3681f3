//! The `.kir` parser: text to [`Graph`], keeping each node's span and the
//! comments above it. Parsing checks syntax, names and attributes; types are
//! checked by the verifier ([`crate::verify`]) afterwards.

use std::collections::HashMap;

use logos::Logos;

use crate::DType;
use crate::diag::Diagnostic;
use crate::graph::{Graph, Output, Span, Trivia, Value, ValueInfo};
use crate::layout::Layout;
use crate::numeric::BitOrder;
use crate::ops::{AttrValue, Op, OpBuildError};
use crate::quant::{Granularity, QuantScheme};
use crate::shape::{Dim, Shape};
use crate::suggest::closest;
use crate::text::lexer::Tok;
use crate::types::TensorType;

/// A syntax or naming error in `.kir` text, at a span.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub span: Span,
    pub message: String,
    /// Extra lines ("did you mean", where a name was first defined).
    pub notes: Vec<String>,
}

impl ParseError {
    /// The error as a diagnostic to render against the source.
    pub fn diagnostic(&self) -> Diagnostic {
        Diagnostic::error(self.message.clone())
            .with_label(self.span, "")
            .with_notes(self.notes.clone())
    }
}

/// Parses one graph from `.kir` text.
pub fn parse(src: &str) -> Result<Graph, ParseError> {
    let mut toks = Vec::new();
    let mut lex = Tok::lexer(src);
    while let Some(t) = lex.next() {
        let span = Span::new(lex.span().start, lex.span().end);
        match t {
            Ok(t) => toks.push((t, span)),
            Err(()) => {
                return Err(ParseError {
                    span,
                    message: format!(
                        "unexpected `{}` (not a token of .kir text; numbers must fit in 64 bits)",
                        lex.slice()
                    ),
                    notes: vec![],
                });
            }
        }
    }
    let mut p = Parser {
        toks,
        pos: 0,
        eof: Span::new(src.len(), src.len()),
        values: HashMap::new(),
    };
    p.graph()
}

struct Parser {
    toks: Vec<(Tok, Span)>,
    pos: usize,
    eof: Span,
    values: HashMap<String, (Value, Span)>,
}

type R<T> = Result<T, ParseError>;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn span(&self) -> Span {
        self.toks.get(self.pos).map(|(_, s)| *s).unwrap_or(self.eof)
    }

    fn prev_end(&self) -> usize {
        self.pos
            .checked_sub(1)
            .and_then(|i| self.toks.get(i))
            .map(|(_, s)| s.end)
            .unwrap_or(0)
    }

    fn err<T>(&self, expected: &str) -> R<T> {
        let found = self
            .peek()
            .map(Tok::describe)
            .unwrap_or_else(|| "end of file".into());
        Err(ParseError {
            span: self.span(),
            message: format!("expected {expected}, found {found}"),
            notes: vec![],
        })
    }

    fn bump(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|(t, _)| t.clone());
        self.pos += 1;
        t
    }

    /// Skips newlines (inside a line-spanning construct).
    fn skip_nl(&mut self) {
        while let Some(Tok::Newline) = self.peek() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: &Tok) -> R<()> {
        if self.eat(t) {
            Ok(())
        } else {
            self.err(&t.describe())
        }
    }

    fn keyword(&mut self, kw: &str) -> R<()> {
        match self.peek() {
            Some(Tok::Ident(s)) if s == kw => {
                self.pos += 1;
                Ok(())
            }
            _ => self.err(&format!("`{kw}`")),
        }
    }

    fn ident(&mut self, what: &str) -> R<String> {
        match self.peek() {
            Some(Tok::Ident(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => self.err(what),
        }
    }

    fn int(&mut self, what: &str) -> R<i64> {
        match self.peek() {
            Some(Tok::Int(i)) => {
                let i = *i;
                self.pos += 1;
                Ok(i)
            }
            _ => self.err(what),
        }
    }

    /// Comments and blank lines before an item. An empty line (two or more
    /// newlines in a row) becomes one [`Trivia::Blank`].
    fn trivia(&mut self) -> Vec<Trivia> {
        let mut out = Vec::new();
        let mut newlines = 0;
        loop {
            match self.peek() {
                Some(Tok::Newline) => {
                    newlines += 1;
                    self.pos += 1;
                }
                Some(Tok::Comment(c)) => {
                    let c = c.clone();
                    if newlines >= 2 {
                        out.push(Trivia::Blank);
                    }
                    out.push(Trivia::Comment(c));
                    self.pos += 1;
                    newlines = 0;
                }
                _ => break,
            }
        }
        if newlines >= 2 {
            out.push(Trivia::Blank);
        }
        out
    }

    fn end_of_line(&mut self) -> R<()> {
        match self.peek() {
            Some(Tok::Newline) | None => Ok(()),
            Some(Tok::RBrace) => Ok(()),
            _ => self.err("end of line"),
        }
    }

    fn name(&mut self, what: &str) -> R<String> {
        match self.peek() {
            Some(Tok::Ident(s)) | Some(Tok::Str(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => self.err(what),
        }
    }

    fn graph(&mut self) -> R<Graph> {
        let doc = self.trivia();
        self.keyword("graph")?;
        let name = self.name("a graph name")?;
        let mut g = Graph::new(&name);
        g.doc = doc;
        self.expect(&Tok::LBrace)?;
        loop {
            let doc = self.trivia();
            match self.peek() {
                Some(Tok::RBrace) => {
                    self.pos += 1;
                    g.end_doc = doc;
                    break;
                }
                Some(Tok::Ident(kw)) if kw == "input" || kw == "weight" => {
                    self.declaration(&mut g, doc)?
                }
                Some(Tok::Ident(kw)) if kw == "output" => self.output(&mut g, doc)?,
                Some(Tok::Value(_)) => self.node(&mut g, doc)?,
                _ => return self.err("`input`, `weight`, `output`, a `%value` definition or `}`"),
            }
            self.end_of_line()?;
        }
        self.skip_nl();
        if let Some(t) = self.peek() {
            return Err(ParseError {
                span: self.span(),
                message: format!("found {} after the graph's closing `}}`", t.describe()),
                notes: vec![
                    "a file holds one graph; comments go above the graph or inside it".into(),
                ],
            });
        }
        Ok(g)
    }

    fn value_def(&mut self) -> R<(String, Span)> {
        let span = self.span();
        match self.bump() {
            Some(Tok::Value(v)) => {
                if let Some((_, prev)) = self.values.get(&v) {
                    return Err(ParseError {
                        span,
                        message: format!("value %{v} is defined twice"),
                        notes: vec![format!("first defined at byte {}", prev.start)],
                    });
                }
                Ok((v, span))
            }
            _ => {
                self.pos -= 1;
                self.err("a `%value` name")
            }
        }
    }

    fn value_use(&mut self) -> R<Value> {
        let span = self.span();
        match self.bump() {
            Some(Tok::Value(v)) => match self.values.get(&v) {
                Some((val, _)) => Ok(*val),
                None => {
                    let sugg = closest(&v, self.values.keys().map(String::as_str));
                    Err(ParseError {
                        span,
                        message: format!("unknown value %{v}"),
                        notes: sugg
                            .map(|s| format!("did you mean %{s}?"))
                            .into_iter()
                            .collect(),
                    })
                }
            },
            _ => {
                self.pos -= 1;
                self.err("a `%value`")
            }
        }
    }

    fn declaration(&mut self, g: &mut Graph, doc: Vec<Trivia>) -> R<()> {
        let start = self.span().start;
        let kw = self.ident("`input` or `weight`")?;
        let (name, _) = self.value_def()?;
        self.expect(&Tok::Colon)?;
        let ty = self.ty()?;
        let op = if kw == "input" { Op::Input } else { Op::Weight };
        let id = g.add_node(
            op,
            &[],
            vec![ValueInfo {
                name: name.clone(),
                ty,
            }],
        );
        let span = Span::new(start, self.prev_end());
        let node = g.node_mut(id);
        node.span = Some(span);
        node.doc = doc;
        self.values.insert(name, (Value::of(id), span));
        Ok(())
    }

    fn output(&mut self, g: &mut Graph, doc: Vec<Trivia>) -> R<()> {
        let start = self.span().start;
        self.keyword("output")?;
        let name = self.name("an output name")?;
        if g.outputs().iter().any(|o| o.name == name) {
            return Err(ParseError {
                span: Span::new(start, self.prev_end()),
                message: format!("output `{name}` is declared twice"),
                notes: vec![],
            });
        }
        self.expect(&Tok::Eq)?;
        let value = self.value_use()?;
        g.push_output(Output {
            name,
            value,
            span: Some(Span::new(start, self.prev_end())),
            doc,
        });
        Ok(())
    }

    fn node(&mut self, g: &mut Graph, doc: Vec<Trivia>) -> R<()> {
        let start = self.span().start;
        let mut results = Vec::new();
        loop {
            let (name, span) = self.value_def()?;
            if results.iter().any(|r: &ValueInfo| r.name == name) {
                return Err(ParseError {
                    span,
                    message: format!("value %{name} is defined twice"),
                    notes: vec![],
                });
            }
            self.expect(&Tok::Colon)?;
            let ty = self.ty()?;
            results.push(ValueInfo { name, ty });
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        self.expect(&Tok::Eq)?;
        let op_span = self.span();
        let mnemonic = self.ident("an op name")?;
        let mut operands = Vec::new();
        if self.eat(&Tok::LParen) && !self.eat(&Tok::RParen) {
            loop {
                operands.push(self.value_use()?);
                if self.eat(&Tok::RParen) {
                    break;
                }
                self.expect(&Tok::Comma)?;
            }
        }
        let mut attrs: Vec<(String, AttrValue)> = Vec::new();
        let mut attr_spans = Vec::new();
        if self.eat(&Tok::LBrace) {
            loop {
                self.skip_nl();
                let span = self.span();
                let key = self.ident("an attribute name")?;
                self.expect(&Tok::Eq)?;
                let v = self.attr_value()?;
                attrs.push((key, v));
                attr_spans.push(Span::new(span.start, self.prev_end()));
                self.skip_nl();
                if self.eat(&Tok::RBrace) {
                    break;
                }
                self.expect(&Tok::Comma)?;
            }
        }
        let op = Op::build(&mnemonic, &attrs).map_err(|e| {
            let span = match &e {
                OpBuildError::UnknownOp { .. } | OpBuildError::MissingAttr { .. } => op_span,
                OpBuildError::UnknownAttr { attr, .. }
                | OpBuildError::DuplicateAttr { attr, .. } => attrs
                    .iter()
                    .rposition(|(k, _)| k == attr)
                    .map(|i| attr_spans[i])
                    .unwrap_or(op_span),
                OpBuildError::AttrType { attr, .. } => attrs
                    .iter()
                    .position(|(k, _)| k == attr)
                    .map(|i| attr_spans[i])
                    .unwrap_or(op_span),
            };
            ParseError {
                span,
                message: e.to_string(),
                notes: vec![],
            }
        })?;
        if let Op::Input | Op::Weight = op {
            return Err(ParseError {
                span: op_span,
                message: format!(
                    "`{mnemonic}` is declared as `{mnemonic} %name: type`, not called"
                ),
                notes: vec![],
            });
        }
        let names: Vec<String> = results.iter().map(|r| r.name.clone()).collect();
        let id = g.add_node(op, &operands, results);
        let span = Span::new(start, self.prev_end());
        let node = g.node_mut(id);
        node.span = Some(span);
        node.doc = doc;
        for (port, name) in names.into_iter().enumerate() {
            self.values.insert(
                name,
                (
                    Value {
                        node: id,
                        port: port as u32,
                    },
                    span,
                ),
            );
        }
        Ok(())
    }

    fn number(&mut self) -> R<AttrValue> {
        let neg = self.eat(&Tok::Minus);
        let v = match self.peek().cloned() {
            Some(Tok::Int(i)) => AttrValue::Int(if neg { -i } else { i }),
            Some(Tok::Float(x)) => AttrValue::Float(if neg { -x } else { x }),
            Some(Tok::Ident(s)) if s == "inf" => AttrValue::Float(if neg {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            }),
            Some(Tok::Ident(s)) if s == "nan" && !neg => AttrValue::Float(f64::NAN),
            _ => return self.err("a number"),
        };
        self.pos += 1;
        Ok(v)
    }

    fn attr_value(&mut self) -> R<AttrValue> {
        self.attr_value_at(0)
    }

    /// An attribute value inside `depth` enclosing lists. Nesting is bounded
    /// so that deeply nested text is an error rather than a stack overflow.
    fn attr_value_at(&mut self, depth: usize) -> R<AttrValue> {
        const MAX_DEPTH: usize = 16;
        match self.peek().cloned() {
            Some(Tok::Minus | Tok::Int(_) | Tok::Float(_)) => self.number(),
            Some(Tok::Ident(s)) if s == "inf" || s == "nan" => self.number(),
            Some(Tok::Ident(s)) if s == "true" || s == "false" => {
                self.pos += 1;
                Ok(AttrValue::Bool(s == "true"))
            }
            Some(Tok::Ident(s)) if s == "quant" => Ok(AttrValue::Quant(self.quant()?)),
            Some(Tok::Ident(s)) if s == "packed" => {
                self.pos += 1;
                self.expect(&Tok::LParen)?;
                let name = self.ident("a packed layout name")?;
                self.expect(&Tok::RParen)?;
                Ok(AttrValue::Ident(format!("packed({name})")))
            }
            Some(Tok::Ident(s)) => {
                self.pos += 1;
                Ok(AttrValue::Ident(s))
            }
            Some(Tok::LBracket) if depth >= MAX_DEPTH => Err(ParseError {
                span: self.span(),
                message: format!("attribute lists nest more than {MAX_DEPTH} deep"),
                notes: vec![],
            }),
            Some(Tok::LBracket) => {
                self.pos += 1;
                let mut items = Vec::new();
                self.skip_nl();
                if !self.eat(&Tok::RBracket) {
                    loop {
                        self.skip_nl();
                        items.push(self.attr_value_at(depth + 1)?);
                        self.skip_nl();
                        if self.eat(&Tok::RBracket) {
                            break;
                        }
                        self.expect(&Tok::Comma)?;
                    }
                }
                Ok(AttrValue::List(items))
            }
            _ => self.err("an attribute value"),
        }
    }

    fn dtype(&mut self) -> R<DType> {
        let span = self.span();
        let name = self.ident("an element type")?;
        DType::from_name(&name).ok_or_else(|| ParseError {
            span,
            message: format!("unknown element type `{name}`"),
            notes: closest(&name, DType::ALL.iter().map(|d| d.name()))
                .map(|s| format!("did you mean `{s}`?"))
                .into_iter()
                .collect(),
        })
    }

    fn ty(&mut self) -> R<TensorType> {
        let dtype = self.dtype()?;
        self.expect(&Tok::LBracket)?;
        let mut dims = Vec::new();
        if !self.eat(&Tok::RBracket) {
            loop {
                match self.peek().cloned() {
                    Some(Tok::Int(n)) if n >= 0 => {
                        self.pos += 1;
                        dims.push(Dim::Static(n as u64));
                    }
                    Some(Tok::Ident(s)) => {
                        self.pos += 1;
                        dims.push(Dim::Sym(s));
                    }
                    _ => return self.err("a size or a symbolic dimension"),
                }
                if self.eat(&Tok::RBracket) {
                    break;
                }
                self.expect(&Tok::Comma)?;
            }
        }
        let mut ty = TensorType::new(dtype, Shape(dims));
        if let Some(Tok::Ident(s)) = self.peek().cloned() {
            match s.as_str() {
                "nchw" | "nhwc" | "row_major" => {
                    self.pos += 1;
                    ty.layout = match s.as_str() {
                        "nchw" => Layout::Nchw,
                        "nhwc" => Layout::Nhwc,
                        _ => Layout::RowMajor,
                    };
                }
                "packed" => {
                    self.pos += 1;
                    self.expect(&Tok::LParen)?;
                    let name = self.ident("a packed layout name")?;
                    self.expect(&Tok::RParen)?;
                    ty.layout = Layout::Packed(name);
                }
                _ => {}
            }
        }
        if let Some(Tok::Ident(s)) = self.peek()
            && s == "quant"
        {
            ty.quant = Some(self.quant()?);
        }
        Ok(ty)
    }

    fn axis_kw(&mut self) -> R<usize> {
        self.keyword("axis")?;
        self.expect(&Tok::Eq)?;
        let a = self.int("an axis")?;
        Ok(a as usize)
    }

    fn quant(&mut self) -> R<QuantScheme> {
        self.keyword("quant")?;
        self.expect(&Tok::Lt)?;
        let gspan = self.span();
        let gran = match self
            .ident("a granularity (per_tensor, per_channel, group, block)")?
            .as_str()
        {
            "per_tensor" => Granularity::PerTensor,
            "per_channel" => {
                self.expect(&Tok::LParen)?;
                let axis = self.axis_kw()?;
                self.expect(&Tok::RParen)?;
                Granularity::PerChannel { axis }
            }
            g @ ("group" | "block") => {
                let block = g == "block";
                self.expect(&Tok::LParen)?;
                let size = self.int("a group size")? as u64;
                self.expect(&Tok::Comma)?;
                let axis = self.axis_kw()?;
                self.expect(&Tok::RParen)?;
                if block {
                    Granularity::Block { size, axis }
                } else {
                    Granularity::Group { size, axis }
                }
            }
            other => {
                return Err(ParseError {
                    span: gspan,
                    message: format!(
                        "unknown granularity `{other}`; expected per_tensor, per_channel, group or block"
                    ),
                    notes: vec![],
                });
            }
        };
        self.expect(&Tok::Comma)?;
        self.keyword("scale")?;
        self.expect(&Tok::Eq)?;
        let scale = self.dtype()?;
        let mut scheme = QuantScheme {
            granularity: gran,
            scale,
            zero: None,
            global: None,
            packing: BitOrder::LsbFirst,
        };
        while self.eat(&Tok::Comma) {
            let kspan = self.span();
            let key = self.ident("`zero`, `global` or `packing`")?;
            self.expect(&Tok::Eq)?;
            match key.as_str() {
                "zero" => scheme.zero = Some(self.dtype()?),
                "global" => scheme.global = Some(self.dtype()?),
                "packing" => {
                    let vspan = self.span();
                    scheme.packing = match self.ident("`lsb_first` or `msb_first`")?.as_str() {
                        "lsb_first" => BitOrder::LsbFirst,
                        "msb_first" => BitOrder::MsbFirst,
                        other => {
                            return Err(ParseError {
                                span: vspan,
                                message: format!(
                                    "unknown packing `{other}`; expected lsb_first or msb_first"
                                ),
                                notes: vec![],
                            });
                        }
                    }
                }
                other => {
                    return Err(ParseError {
                        span: kspan,
                        message: format!(
                            "unknown scheme field `{other}`; expected zero, global or packing"
                        ),
                        notes: vec![],
                    });
                }
            }
        }
        self.expect(&Tok::Gt)?;
        Ok(scheme)
    }
}
