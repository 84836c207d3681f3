//! The syntax tree of the model language, with a span on every node.

use std::fmt::{self, Write};

use kiln_dialect::Span;

/// A name with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A source file: imports, constants, blocks and models.
#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `import "path.kiln"`: the blocks and constants of another file.
    Import {
        path: String,
        span: Span,
    },
    Const(ConstDecl),
    Block(BlockDef),
    Model(ModelDef),
}

/// `const NAME = EXPR` (an integer or float computed at compile time).
#[derive(Clone, Debug, PartialEq)]
pub struct ConstDecl {
    pub name: Ident,
    pub value: Expr,
    pub span: Span,
}

/// `block NAME(params) { statements }`: a reusable piece with weights of its own.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockDef {
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// A block parameter: a name, optionally typed (`x: bf16[seq, d]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub ty: Option<TypeExpr>,
}

/// `model NAME { statements }`: the graph to compile.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDef {
    pub name: Ident,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `input NAME: TYPE [modifiers]`
    Input {
        name: Ident,
        ty: TypeExpr,
        mods: Vec<Modifier>,
        span: Span,
    },
    /// `weight NAME: TYPE [modifiers]` (modifiers give a quantization scheme or a layout)
    Weight {
        name: Ident,
        ty: TypeExpr,
        mods: Vec<Modifier>,
        span: Span,
    },
    /// `output NAME [: TYPE] = EXPR`
    Output {
        name: Ident,
        ty: Option<TypeExpr>,
        value: Expr,
        span: Span,
    },
    /// `let a [, b ...] = EXPR`
    Let {
        names: Vec<Ident>,
        value: Expr,
        span: Span,
    },
    /// `a [, b ...] = EXPR`: rebinds existing names (in loops, for example).
    Assign {
        names: Vec<Ident>,
        value: Expr,
        span: Span,
    },
    Const(ConstDecl),
    /// `for i in START..END { statements }` (unrolled at compile time)
    For {
        var: Ident,
        start: Expr,
        end: Expr,
        body: Vec<Stmt>,
        span: Span,
    },
    /// `return EXPR [, EXPR ...]` (blocks only)
    Return {
        values: Vec<Expr>,
        span: Span,
    },
}

/// `DTYPE[dim, ...]`; dims are constant expressions or symbol names.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeExpr {
    pub dtype: Ident,
    pub dims: Vec<Expr>,
    pub span: Span,
}

/// A word or number after a declaration's type (`group 128 scale bf16`, `nhwc`).
#[derive(Clone, Debug, PartialEq)]
pub enum Modifier {
    Word(Ident),
    Int(i64, Span),
}

impl Modifier {
    pub fn span(&self) -> Span {
        match self {
            Modifier::Word(i) => i.span,
            Modifier::Int(_, s) => *s,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
    /// Nesting depth: 1 for a name or a number, one more than the deepest
    /// sub-expression otherwise. Bounded by [`MAX_EXPR_DEPTH`].
    pub depth: u32,
}

/// The deepest expression the parser builds. Every later stage walks
/// expressions recursively; the bound keeps a pathological input (a sum of
/// ten thousand terms) from overflowing the stack.
pub const MAX_EXPR_DEPTH: u32 = 256;

/// An expression nested deeper than [`MAX_EXPR_DEPTH`]: the parser's
/// user error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooDeep {
    pub span: Span,
}

impl Expr {
    /// A name or a number.
    pub fn leaf(kind: ExprKind, span: Span) -> Expr {
        Expr {
            kind,
            span,
            depth: 1,
        }
    }

    /// An expression over sub-expressions, or [`TooDeep`] past the bound.
    pub fn nest(kind: ExprKind, span: Span) -> Result<Expr, TooDeep> {
        let depth = kind.child_depth() + 1;
        if depth > MAX_EXPR_DEPTH {
            return Err(TooDeep { span });
        }
        Ok(Expr { kind, span, depth })
    }
}

/// [`Expr::nest`] for the grammar's actions.
pub fn nest<L, T>(
    kind: ExprKind,
    span: Span,
) -> Result<Expr, lalrpop_util::ParseError<L, T, TooDeep>> {
    Expr::nest(kind, span).map_err(|error| lalrpop_util::ParseError::User { error })
}

impl ExprKind {
    /// The depth of the deepest direct sub-expression (0 for none).
    fn child_depth(&self) -> u32 {
        let opt = |e: &Option<Expr>| e.as_ref().map_or(0, |e| e.depth);
        match self {
            ExprKind::Name(_) | ExprKind::Int(_) | ExprKind::Float(_) => 0,
            ExprKind::List(items) => items.iter().map(|e| e.depth).max().unwrap_or(0),
            ExprKind::Neg(e) | ExprKind::Transpose(e) => e.depth,
            ExprKind::Binary { lhs, rhs, .. } => lhs.depth.max(rhs.depth),
            ExprKind::Call { args, instance, .. } => {
                let path = instance
                    .iter()
                    .flat_map(|p| &p.parts)
                    .map(|part| match part {
                        PathPart::Name(_) => 0,
                        PathPart::Index(e) => e.depth,
                    });
                args.iter()
                    .map(|a| a.value.depth)
                    .chain(path)
                    .max()
                    .unwrap_or(0)
            }
            ExprKind::Index { base, items } => items
                .iter()
                .map(|i| match i {
                    IndexItem::At(e) => e.depth,
                    IndexItem::Range {
                        start, end, step, ..
                    } => opt(start).max(opt(end)).max(opt(step)),
                    IndexItem::Ellipsis(_) => 0,
                })
                .chain([base.depth])
                .max()
                .unwrap_or(0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    MatMul,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::MatMul => "@",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Name(String),
    Int(i64),
    Float(f64),
    /// `[a, b, c]`: a list (shapes, axes, constants).
    List(Vec<Expr>),
    Neg(Box<Expr>),
    Binary {
        op: BinOp,
        op_span: Span,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `f(args)` or `block(args) as path`.
    Call {
        callee: Ident,
        args: Vec<Arg>,
        instance: Option<Path>,
    },
    /// `x[i, a:b:c, ...]`
    Index {
        base: Box<Expr>,
        items: Vec<IndexItem>,
    },
    /// `x.T`: swaps the last two axes.
    Transpose(Box<Expr>),
}

/// A call argument, positional or named.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

// a range holds three optional expressions; items are few and short-lived
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum IndexItem {
    /// `i`: one index, the axis is removed.
    At(Expr),
    /// `start:end:step`, each part optional.
    Range {
        start: Option<Expr>,
        end: Option<Expr>,
        step: Option<Expr>,
        span: Span,
    },
    /// `...`: as many full axes as needed.
    Ellipsis(Span),
}

/// An instance path after `as`: `layers[i].attn` names the prefix `layers.3.attn`.
#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    pub parts: Vec<PathPart>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PathPart {
    Name(Ident),
    Index(Expr),
}

// ---- printing (`kiln compile --emit ast`) --------------------------------
//
// The tree prints as source with every binary expression parenthesized, so
// precedence and grouping are visible.

impl fmt::Display for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            match item {
                Item::Import { path, .. } => writeln!(f, "import {path:?}")?,
                Item::Const(c) => writeln!(f, "const {} = {}", c.name.name, c.value)?,
                Item::Block(b) => {
                    let params: Vec<String> = b
                        .params
                        .iter()
                        .map(|p| match &p.ty {
                            Some(t) => format!("{}: {t}", p.name.name),
                            None => p.name.name.clone(),
                        })
                        .collect();
                    writeln!(f, "block {}({}) {{", b.name.name, params.join(", "))?;
                    write_stmts(f, &b.body, 1)?;
                    writeln!(f, "}}")?;
                }
                Item::Model(m) => {
                    writeln!(f, "model {} {{", m.name.name)?;
                    write_stmts(f, &m.body, 1)?;
                    writeln!(f, "}}")?;
                }
            }
        }
        Ok(())
    }
}

fn write_stmts(f: &mut fmt::Formatter<'_>, stmts: &[Stmt], depth: usize) -> fmt::Result {
    let pad = "    ".repeat(depth);
    for s in stmts {
        f.write_str(&pad)?;
        match s {
            Stmt::Input { name, ty, mods, .. } => {
                writeln!(f, "input {}: {ty}{}", name.name, mods_text(mods))?
            }
            Stmt::Weight { name, ty, mods, .. } => {
                writeln!(f, "weight {}: {ty}{}", name.name, mods_text(mods))?
            }
            Stmt::Output {
                name, ty, value, ..
            } => match ty {
                Some(t) => writeln!(f, "output {}: {t} = {value}", name.name)?,
                None => writeln!(f, "output {} = {value}", name.name)?,
            },
            Stmt::Let { names, value, .. } => writeln!(f, "let {} = {value}", names_text(names))?,
            Stmt::Assign { names, value, .. } => writeln!(f, "{} = {value}", names_text(names))?,
            Stmt::Const(c) => writeln!(f, "const {} = {}", c.name.name, c.value)?,
            Stmt::For {
                var,
                start,
                end,
                body,
                ..
            } => {
                writeln!(f, "for {} in {start}..{end} {{", var.name)?;
                write_stmts(f, body, depth + 1)?;
                writeln!(f, "{pad}}}")?;
            }
            Stmt::Return { values, .. } => {
                let v: Vec<String> = values.iter().map(|e| e.to_string()).collect();
                writeln!(f, "return {}", v.join(", "))?;
            }
        }
    }
    Ok(())
}

fn names_text(names: &[Ident]) -> String {
    names
        .iter()
        .map(|n| n.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn mods_text(mods: &[Modifier]) -> String {
    let mut s = String::new();
    for m in mods {
        match m {
            Modifier::Word(w) => {
                let _ = write!(s, " {}", w.name);
            }
            Modifier::Int(i, _) => {
                let _ = write!(s, " {i}");
            }
        }
    }
    s
}

impl fmt::Display for TypeExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        write!(f, "{}[{}]", self.dtype.name, dims.join(", "))
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Name(n) => f.write_str(n),
            ExprKind::Int(i) => write!(f, "{i}"),
            ExprKind::Float(x) => write!(f, "{x:?}"),
            ExprKind::List(items) => {
                let v: Vec<String> = items.iter().map(|e| e.to_string()).collect();
                write!(f, "[{}]", v.join(", "))
            }
            ExprKind::Neg(e) => write!(f, "-{e}"),
            ExprKind::Binary { op, lhs, rhs, .. } => write!(f, "({lhs} {} {rhs})", op.symbol()),
            ExprKind::Call {
                callee,
                args,
                instance,
            } => {
                let v: Vec<String> = args
                    .iter()
                    .map(|a| match &a.name {
                        Some(n) => format!("{} = {}", n.name, a.value),
                        None => a.value.to_string(),
                    })
                    .collect();
                write!(f, "{}({})", callee.name, v.join(", "))?;
                if let Some(p) = instance {
                    write!(f, " as {p}")?;
                }
                Ok(())
            }
            ExprKind::Index { base, items } => {
                let v: Vec<String> = items
                    .iter()
                    .map(|it| match it {
                        IndexItem::At(e) => e.to_string(),
                        IndexItem::Ellipsis(_) => "...".into(),
                        IndexItem::Range {
                            start, end, step, ..
                        } => {
                            let o = |e: &Option<Expr>| {
                                e.as_ref().map(|e| e.to_string()).unwrap_or_default()
                            };
                            match step {
                                Some(_) => format!("{}:{}:{}", o(start), o(end), o(step)),
                                None => format!("{}:{}", o(start), o(end)),
                            }
                        }
                    })
                    .collect();
                write!(f, "{base}[{}]", v.join(", "))
            }
            ExprKind::Transpose(e) => write!(f, "{e}.T"),
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.parts.iter().enumerate() {
            match p {
                PathPart::Name(n) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(&n.name)?;
                }
                PathPart::Index(e) => write!(f, "[{e}]")?,
            }
        }
        Ok(())
    }
}
