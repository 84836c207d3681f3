//! Tokens of the model language (logos), and the newline rule.
//!
//! Statements end at a newline. A newline inside `(...)` or `[...]`, after
//! a token that cannot end a statement (an operator, `,`, `=`, `:`, `{`,
//! `as`, ...) or before a line that starts with a binary operator other
//! than `-` continues the statement instead.

use std::fmt;

use kiln_dialect::Span;
use logos::Logos;

#[derive(Logos, Clone, Debug, PartialEq)]
#[logos(skip r"[ \t\r\f]+")]
#[logos(skip(r"//[^\n]*", allow_greedy = true))]
pub enum Tok {
    #[token("\n")]
    Newline,
    #[token("model")]
    Model,
    #[token("block")]
    Block,
    #[token("input")]
    Input,
    #[token("weight")]
    Weight,
    #[token("output")]
    Output,
    #[token("let")]
    Let,
    #[token("const")]
    Const,
    #[token("for")]
    For,
    #[token("in")]
    In,
    #[token("return")]
    Return,
    #[token("import")]
    Import,
    #[token("as")]
    As,
    #[regex(r"[A-Za-z_][A-Za-z0-9_]*", |lex| lex.slice().to_string())]
    Ident(String),
    #[regex(r"[0-9]+", |lex| lex.slice().parse::<i64>().ok())]
    Int(i64),
    #[regex(r"[0-9]+\.[0-9]+([eE][+-]?[0-9]+)?", |lex| lex.slice().parse::<f64>().ok())]
    #[regex(r"[0-9]+[eE][+-]?[0-9]+", |lex| lex.slice().parse::<f64>().ok())]
    Float(f64),
    #[regex(r#""([^"\\\n]|\\.)*""#, |lex| lex.slice()[1..lex.slice().len() - 1].replace("\\\"", "\"").replace("\\\\", "\\"))]
    Str(String),
    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token(",")]
    Comma,
    #[token(":")]
    Colon,
    #[token("=")]
    Assign,
    #[token("..")]
    DotDot,
    #[token("...")]
    Ellipsis,
    #[token(".")]
    Dot,
    #[token("+")]
    Plus,
    #[token("-")]
    Minus,
    #[token("*")]
    Star,
    #[token("/")]
    Slash,
    #[token("@")]
    At,
    #[token("==")]
    EqEq,
    #[token("!=")]
    NotEq,
    #[token("<")]
    Lt,
    #[token("<=")]
    Le,
    #[token(">")]
    Gt,
    #[token(">=")]
    Ge,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Tok::Newline => "end of line",
            Tok::Model => "`model`",
            Tok::Block => "`block`",
            Tok::Input => "`input`",
            Tok::Weight => "`weight`",
            Tok::Output => "`output`",
            Tok::Let => "`let`",
            Tok::Const => "`const`",
            Tok::For => "`for`",
            Tok::In => "`in`",
            Tok::Return => "`return`",
            Tok::Import => "`import`",
            Tok::As => "`as`",
            Tok::Ident(s) => return write!(f, "`{s}`"),
            Tok::Int(i) => return write!(f, "`{i}`"),
            Tok::Float(x) => return write!(f, "`{x}`"),
            Tok::Str(s) => return write!(f, "{s:?}"),
            Tok::LParen => "`(`",
            Tok::RParen => "`)`",
            Tok::LBracket => "`[`",
            Tok::RBracket => "`]`",
            Tok::LBrace => "`{`",
            Tok::RBrace => "`}`",
            Tok::Comma => "`,`",
            Tok::Colon => "`:`",
            Tok::Assign => "`=`",
            Tok::DotDot => "`..`",
            Tok::Ellipsis => "`...`",
            Tok::Dot => "`.`",
            Tok::Plus => "`+`",
            Tok::Minus => "`-`",
            Tok::Star => "`*`",
            Tok::Slash => "`/`",
            Tok::At => "`@`",
            Tok::EqEq => "`==`",
            Tok::NotEq => "`!=`",
            Tok::Lt => "`<`",
            Tok::Le => "`<=`",
            Tok::Gt => "`>`",
            Tok::Ge => "`>=`",
        };
        f.write_str(s)
    }
}

impl Tok {
    /// Whether a statement can end after this token.
    pub fn can_end_statement(&self) -> bool {
        match self {
            Tok::Ident(_) | Tok::Int(_) | Tok::Float(_) | Tok::Str(_) => true,
            Tok::RParen | Tok::RBracket | Tok::RBrace => true,
            Tok::Return => true,
            // the declaration keywords are also names (`x @ weight`)
            Tok::Model | Tok::Block | Tok::Input | Tok::Weight | Tok::Output => true,
            Tok::Newline
            | Tok::Let
            | Tok::Const
            | Tok::For
            | Tok::In
            | Tok::Import
            | Tok::As
            | Tok::LParen
            | Tok::LBracket
            | Tok::LBrace
            | Tok::Comma
            | Tok::Colon
            | Tok::Assign
            | Tok::DotDot
            | Tok::Ellipsis
            | Tok::Dot
            | Tok::Plus
            | Tok::Minus
            | Tok::Star
            | Tok::Slash
            | Tok::At
            | Tok::EqEq
            | Tok::NotEq
            | Tok::Lt
            | Tok::Le
            | Tok::Gt
            | Tok::Ge => false,
        }
    }

    /// Whether a line starting with this token continues the previous one.
    fn continues_line(&self) -> bool {
        matches!(
            self,
            Tok::Plus
                | Tok::Star
                | Tok::Slash
                | Tok::At
                | Tok::EqEq
                | Tok::NotEq
                | Tok::Lt
                | Tok::Le
                | Tok::Gt
                | Tok::Ge
                | Tok::DotDot
                | Tok::Dot
                | Tok::As
        )
    }
}

/// What is wrong with a character sequence that is not a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LexErrorKind {
    /// A character that starts no token (`$`, `^`, `;`, ...).
    Unexpected,
    /// An integer literal beyond `i64::MAX`.
    IntTooLarge,
}

/// A character sequence that is not a token.
#[derive(Clone, Debug, PartialEq)]
pub struct LexError {
    pub span: Span,
    pub text: String,
    pub kind: LexErrorKind,
}

/// Tokenizes a file, applying the newline rule. Returns the tokens with
/// their byte ranges, and every unrecognized character sequence. An integer
/// too large for `i64` is an error and still yields an `Int` token, so the
/// parser does not report the same place again.
pub fn lex(src: &str, file: u32) -> (Vec<(usize, Tok, usize)>, Vec<LexError>) {
    let mut raw = Vec::new();
    let mut errors = Vec::new();
    let mut lexer = Tok::lexer(src);
    while let Some(t) = lexer.next() {
        let r = lexer.span();
        match t {
            Ok(t) => raw.push((r.start, t, r.end)),
            Err(()) => {
                let text = lexer.slice().to_string();
                let kind = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                    raw.push((r.start, Tok::Int(i64::MAX), r.end));
                    LexErrorKind::IntTooLarge
                } else {
                    LexErrorKind::Unexpected
                };
                errors.push(LexError {
                    span: Span::in_file(file, r.start, r.end),
                    text,
                    kind,
                });
            }
        }
    }
    let mut out: Vec<(usize, Tok, usize)> = Vec::with_capacity(raw.len());
    let mut depth = 0i32;
    for i in 0..raw.len() {
        let tok = &raw[i].1;
        match tok {
            Tok::LParen | Tok::LBracket => depth += 1,
            Tok::RParen | Tok::RBracket => depth -= 1,
            _ => {}
        }
        if let Tok::Newline = tok {
            let prev_ends = out.last().is_some_and(|(_, t, _)| t.can_end_statement());
            let next_continues = raw[i + 1..]
                .iter()
                .find(|(_, t, _)| !matches!(t, Tok::Newline))
                .is_some_and(|(_, t, _)| t.continues_line());
            if depth > 0 || !prev_ends || next_continues {
                continue;
            }
        }
        out.push(raw[i].clone());
    }
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<Tok> {
        lex(src, 0).0.into_iter().map(|(_, t, _)| t).collect()
    }

    #[test]
    fn newlines_end_statements_only_where_they_can() {
        use Tok::*;
        let t = kinds("let a = f(x,\n  y)\nlet b = a +\n  1\nlet c = b\n  @ w\n");
        assert_eq!(
            t,
            vec![
                Let,
                Ident("a".into()),
                Assign,
                Ident("f".into()),
                LParen,
                Ident("x".into()),
                Comma,
                Ident("y".into()),
                RParen,
                Newline,
                Let,
                Ident("b".into()),
                Assign,
                Ident("a".into()),
                Plus,
                Int(1),
                Newline,
                Let,
                Ident("c".into()),
                Assign,
                Ident("b".into()),
                At,
                Ident("w".into()),
                Newline
            ]
        );
    }

    #[test]
    fn comments_numbers_and_errors() {
        use Tok::*;
        assert_eq!(
            kinds("x // note\n1e-5 2.5 7 ..."),
            vec![
                Ident("x".into()),
                Newline,
                Float(1e-5),
                Float(2.5),
                Int(7),
                Ellipsis
            ]
        );
        let (_, errs) = lex("let a = $b", 0);
        assert_eq!(errs[0].text, "$");
        assert_eq!(errs[0].span, Span::new(8, 9));
        assert_eq!(errs[0].kind, LexErrorKind::Unexpected);
    }

    #[test]
    fn a_declaration_keyword_used_as_a_name_ends_a_line() {
        use Tok::*;
        assert_eq!(
            kinds("let h = x @ weight\noutput y = h"),
            vec![
                Let,
                Ident("h".into()),
                Assign,
                Ident("x".into()),
                At,
                Weight,
                Newline,
                Output,
                Ident("y".into()),
                Assign,
                Ident("h".into())
            ]
        );
    }

    #[test]
    fn an_integer_too_large_is_one_error_and_still_a_token() {
        use Tok::*;
        let (toks, errs) = lex("x * 99999999999999999999\n", 0);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].kind, LexErrorKind::IntTooLarge);
        assert_eq!(errs[0].span, Span::new(4, 24));
        let kinds: Vec<Tok> = toks.into_iter().map(|(_, t, _)| t).collect();
        assert_eq!(kinds, vec![Ident("x".into()), Star, Int(i64::MAX), Newline]);
    }
}
