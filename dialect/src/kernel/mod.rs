//! The kernel dialect: the level between the kernel plan and the backends.
//!
//! A [`Kernel`] reads whole tensors ([`Buffer`]s, row-major, in their
//! storage types) and writes one. Its [`Body`] says how each output element
//! is computed:
//!
//! * [`Body::Map`]: an iteration space (the output's shape) with one
//!   expression tree per element. The loop variables `v0 .. v(r-1)` are the
//!   output's indices; a [`Expr::Reduce`] inside the tree folds over a
//!   variable of its own (a sum over `k` for a naive matmul, a max and a sum
//!   over a row for softmax).
//! * [`Body::Contract`]: the contraction template
//!   `out[.., m, n] = epilogue(sum_k a(.., m, k) * b(.., k, n))`, with a
//!   prologue expression per operand and an epilogue over the accumulator
//!   ([`Expr::Acc`]). Backends give it a tiled, vectorized loop nest.
//!
//! Expressions are typed ([`Ty`]): floats compute in the kernel's float type
//! ([`Kernel::float`]: f32, or f64 for f64 models), integers and indices in
//! i64, comparisons give bools. A [`Expr::Load`] decodes an element of its
//! input to the compute type (the value of a code for the quantized storage
//! types, as the reference interpreter holds them); storing the result
//! encodes it to the output's type, rounding to nearest even.
//!
//! The reference evaluator ([`eval`]) runs a kernel on interpreter tensors;
//! each backend is tested against it and the graph interpreter.

pub mod eval;
pub mod serial;

use std::fmt;

use crate::{DType, Shape};

/// The type of a scalar expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ty {
    F32,
    F64,
    I64,
    Bool,
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ty::F32 => "f32",
            Ty::F64 => "f64",
            Ty::I64 => "i64",
            Ty::Bool => "bool",
        })
    }
}

/// A tensor a kernel reads or writes: row-major, elements in `dtype`
/// (sub-byte types packed as the dialect packs them, LSB first).
#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    pub name: String,
    pub dtype: DType,
    pub shape: Shape,
}

/// An index variable: a loop over an output axis or a reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Var(pub u32);

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// One kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// Unique in its program; deterministic.
    pub name: String,
    pub inputs: Vec<Buffer>,
    pub output: Buffer,
    /// The symbolic dims the kernel's shapes use, in the order of
    /// [`Expr::Dim`] indices; bound at run time.
    pub dims: Vec<String>,
    /// The type float arithmetic runs in: [`Ty::F32`] or [`Ty::F64`].
    pub float: Ty,
    pub body: Body,
}

/// A whole model as kernels: every tensor it touches, and the kernels in
/// launch order. What a backend compiles and an executor runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub name: String,
    /// Every tensor: graph inputs, weights, constants, intermediates and
    /// outputs. Names are unique.
    pub buffers: Vec<Buffer>,
    /// The model's inputs, bound by name at run time: buffer indices.
    pub inputs: Vec<usize>,
    /// The model's weights, bound by name when weights are bound.
    pub weights: Vec<usize>,
    /// Constant tensors known at compile time: buffer index and values (as
    /// the interpreter holds them: decoded, row-major).
    pub constants: Vec<(usize, Vec<f64>)>,
    /// The model's outputs: output name and buffer index (several names may
    /// share a buffer, and an output may be an input or a weight).
    pub outputs: Vec<(String, usize)>,
    /// Every symbolic dim of the program's shapes, bound at run time from
    /// the shapes of the inputs.
    pub dims: Vec<String>,
    /// The kernels in launch order.
    pub launches: Vec<Launch>,
}

/// One kernel launch: its argument buffers, one per [`Kernel::inputs`],
/// and the buffer it writes.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub kernel: Kernel,
    pub args: Vec<usize>,
    pub out: usize,
    /// Runs once when weights are bound (it reads only weights, constants
    /// and other bind-time results), not on every run.
    pub bind_time: bool,
}

/// How the output elements are computed.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// `out[v0, .., v(r-1)] = expr`, for every index of the output.
    Map { expr: Expr },
    /// `out[.., m, n] = epilogue(sum over k < extent of a * b)`: the output
    /// axes are `v0 .. v(r-1)` (batch axes, then `m` = `v(r-2)`, `n` =
    /// `v(r-1)`) and the contracted axis is `k`. `a` may use the batch
    /// variables, `m` and `k`; `b` the batch variables, `k` and `n`; the
    /// epilogue any output variable and [`Expr::Acc`].
    Contract {
        k: Var,
        extent: Expr,
        a: Expr,
        b: Expr,
        epilogue: Expr,
    },
}

/// Unary scalar operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Tanh,
    Erf,
    Sin,
    Cos,
    Floor,
    Ceil,
    /// Round half to even.
    Round,
    /// Logical not of a bool.
    Not,
}

/// Binary scalar operations; both operands have the same type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    /// Float division; for i64, division truncating toward zero (0 for a
    /// zero divisor).
    Div,
    /// i64 remainder with the sign of the dividend (0 for a zero divisor).
    Rem,
    Pow,
    /// NaN-propagating for floats.
    Max,
    /// NaN-propagating for floats.
    Min,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

/// Reductions: the fold of a body over `0 .. extent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    Sum,
    Prod,
    Max,
    Min,
}

/// A scalar expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A float constant in the kernel's float type.
    Float(f64),
    Int(i64),
    Bool(bool),
    /// An index variable's value (i64).
    Var(Var),
    /// The run-time size of [`Kernel::dims`]`[i]` (i64).
    Dim(u32),
    /// Element `index` (one i64 per axis) of input `input`, decoded: a
    /// float type gives the kernel's float type, integer and quantized
    /// integer codes i64, `bool` a bool. With a guard, the load happens only
    /// where the guard is true and gives 0 (false) elsewhere: padding.
    Load {
        input: usize,
        index: Vec<Expr>,
        guard: Option<Box<Expr>>,
    },
    Unary(Unary, Box<Expr>),
    Binary(Binary, Box<Expr>, Box<Expr>),
    /// `cond ? a : b`; both sides are evaluated.
    Select(Box<Expr>, Box<Expr>, Box<Expr>),
    /// Converts between compute types: float to i64 truncates toward zero
    /// (saturating; NaN gives 0), bool to a number gives 0 or 1, a number
    /// to bool is `!= 0`.
    Cast(Ty, Box<Expr>),
    /// Rounds a float to the nearest value of a float storage type (`bf16`,
    /// `f16`, `f8e4m3`, ...; nearest even, that type's overflow rules), or
    /// an i64 to an integer type (round is identity; wraps to its width).
    Round(DType, Box<Expr>),
    /// The fold of `body` over `var` in `0 .. extent`.
    Reduce {
        op: Reduction,
        var: Var,
        extent: Box<Expr>,
        body: Box<Expr>,
    },
    /// The accumulator of a [`Body::Contract`] (in its epilogue only).
    Acc,
}

impl Expr {
    pub fn un(op: Unary, x: Expr) -> Expr {
        Expr::Unary(op, Box::new(x))
    }

    pub fn bin(op: Binary, a: Expr, b: Expr) -> Expr {
        Expr::Binary(op, Box::new(a), Box::new(b))
    }

    pub fn select(c: Expr, a: Expr, b: Expr) -> Expr {
        Expr::Select(Box::new(c), Box::new(a), Box::new(b))
    }

    pub fn load(input: usize, index: Vec<Expr>) -> Expr {
        Expr::Load {
            input,
            index,
            guard: None,
        }
    }

    pub fn reduce(op: Reduction, var: Var, extent: Expr, body: Expr) -> Expr {
        Expr::Reduce {
            op,
            var,
            extent: Box::new(extent),
            body: Box::new(body),
        }
    }

    /// `self` with every sub-expression for which `f` gives a replacement
    /// replaced (outermost first; a replacement is not searched again).
    pub fn substitute(&self, f: &dyn Fn(&Expr) -> Option<Expr>) -> Expr {
        if let Some(r) = f(self) {
            return r;
        }
        let s = |x: &Expr| Box::new(x.substitute(f));
        match self {
            Expr::Float(_)
            | Expr::Int(_)
            | Expr::Bool(_)
            | Expr::Var(_)
            | Expr::Dim(_)
            | Expr::Acc => self.clone(),
            Expr::Load {
                input,
                index,
                guard,
            } => Expr::Load {
                input: *input,
                index: index.iter().map(|i| i.substitute(f)).collect(),
                guard: guard.as_deref().map(s),
            },
            Expr::Unary(op, x) => Expr::Unary(*op, s(x)),
            Expr::Binary(op, a, b) => Expr::Binary(*op, s(a), s(b)),
            Expr::Select(c, a, b) => Expr::Select(s(c), s(a), s(b)),
            Expr::Cast(t, x) => Expr::Cast(*t, s(x)),
            Expr::Round(d, x) => Expr::Round(*d, s(x)),
            Expr::Reduce {
                op,
                var,
                extent,
                body,
            } => Expr::Reduce {
                op: *op,
                var: *var,
                extent: s(extent),
                body: s(body),
            },
        }
    }

    /// Calls `f` on every direct sub-expression.
    pub fn for_each_child(&self, mut f: impl FnMut(&Expr)) {
        match self {
            Expr::Float(_)
            | Expr::Int(_)
            | Expr::Bool(_)
            | Expr::Var(_)
            | Expr::Dim(_)
            | Expr::Acc => {}
            Expr::Load { index, guard, .. } => {
                index.iter().for_each(&mut f);
                if let Some(g) = guard {
                    f(g);
                }
            }
            Expr::Unary(_, x) | Expr::Cast(_, x) | Expr::Round(_, x) => f(x),
            Expr::Binary(_, a, b) => {
                f(a);
                f(b);
            }
            Expr::Select(c, a, b) => {
                f(c);
                f(a);
                f(b);
            }
            Expr::Reduce { extent, body, .. } => {
                f(extent);
                f(body);
            }
        }
    }
}

impl Unary {
    pub fn name(self) -> &'static str {
        match self {
            Unary::Neg => "neg",
            Unary::Abs => "abs",
            Unary::Exp => "exp",
            Unary::Log => "log",
            Unary::Sqrt => "sqrt",
            Unary::Tanh => "tanh",
            Unary::Erf => "erf",
            Unary::Sin => "sin",
            Unary::Cos => "cos",
            Unary::Floor => "floor",
            Unary::Ceil => "ceil",
            Unary::Round => "round",
            Unary::Not => "not",
        }
    }
}

impl Binary {
    pub fn name(self) -> &'static str {
        match self {
            Binary::Add => "add",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
            Binary::Div => "div",
            Binary::Rem => "rem",
            Binary::Pow => "pow",
            Binary::Max => "max",
            Binary::Min => "min",
            Binary::Eq => "eq",
            Binary::Ne => "ne",
            Binary::Lt => "lt",
            Binary::Le => "le",
            Binary::Gt => "gt",
            Binary::Ge => "ge",
            Binary::And => "and",
            Binary::Or => "or",
        }
    }
}

impl Reduction {
    pub fn name(self) -> &'static str {
        match self {
            Reduction::Sum => "sum",
            Reduction::Prod => "prod",
            Reduction::Max => "max",
            Reduction::Min => "min",
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Float(x) => write!(f, "{x:?}"),
            Expr::Int(i) => write!(f, "{i}"),
            Expr::Bool(b) => write!(f, "{b}"),
            Expr::Var(v) => write!(f, "{v}"),
            Expr::Dim(i) => write!(f, "dim{i}"),
            Expr::Acc => f.write_str("acc"),
            Expr::Load {
                input,
                index,
                guard,
            } => {
                write!(f, "in{input}[")?;
                for (i, e) in index.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{e}")?;
                }
                f.write_str("]")?;
                if let Some(g) = guard {
                    write!(f, " if {g}")?;
                }
                Ok(())
            }
            Expr::Unary(op, x) => write!(f, "{}({x})", op.name()),
            Expr::Binary(op, a, b) => write!(f, "{}({a}, {b})", op.name()),
            Expr::Select(c, a, b) => write!(f, "select({c}, {a}, {b})"),
            Expr::Cast(t, x) => write!(f, "cast<{t}>({x})"),
            Expr::Round(d, x) => write!(f, "round<{d}>({x})"),
            Expr::Reduce {
                op,
                var,
                extent,
                body,
            } => write!(f, "{}({var} < {extent}: {body})", op.name()),
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.body {
            Body::Map { .. } => "map",
            Body::Contract { .. } => "contract",
        };
        write!(f, "kernel {} {kind} float {} (", self.name, self.float)?;
        for (i, b) in self.inputs.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "in{i} %{}: {}{}", b.name, b.dtype, b.shape)?;
        }
        write!(
            f,
            ") -> %{}: {}{}",
            self.output.name, self.output.dtype, self.output.shape
        )?;
        if !self.dims.is_empty() {
            f.write_str(" dims [")?;
            for (i, d) in self.dims.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "dim{i} = {d}")?;
            }
            f.write_str("]")?;
        }
        f.write_str(" {\n")?;
        let r = self.output.shape.rank();
        let vars: Vec<String> = (0..r).map(|i| format!("v{i}")).collect();
        match &self.body {
            Body::Map { expr } => writeln!(f, "  out[{}] = {expr}", vars.join(", "))?,
            Body::Contract {
                k,
                extent,
                a,
                b,
                epilogue,
            } => {
                writeln!(f, "  acc = sum({k} < {extent}: mul(a, b))")?;
                writeln!(f, "  a = {a}")?;
                writeln!(f, "  b = {b}")?;
                writeln!(f, "  out[{}] = {epilogue}", vars.join(", "))?;
            }
        }
        f.write_str("}\n")
    }
}

impl fmt::Display for Program {
    /// The buffers (inputs, weights, constants marked), the launches with
    /// their kernels, and the outputs: the text of golden files.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "program {} dims [{}] {{",
            self.name,
            self.dims.join(", ")
        )?;
        for (i, b) in self.buffers.iter().enumerate() {
            let role = if self.inputs.contains(&i) {
                "input"
            } else if self.weights.contains(&i) {
                "weight"
            } else if self.constants.iter().any(|(c, _)| *c == i) {
                "constant"
            } else {
                "buffer"
            };
            writeln!(f, "  {role} b{i} %{}: {}{}", b.name, b.dtype, b.shape)?;
        }
        for l in &self.launches {
            let args: Vec<String> = l.args.iter().map(|a| format!("b{a}")).collect();
            let when = if l.bind_time { "bind-time " } else { "" };
            writeln!(
                f,
                "  {when}launch {}({}) -> b{}",
                l.kernel.name,
                args.join(", "),
                l.out
            )?;
            for line in l.kernel.to_string().lines() {
                writeln!(f, "    {line}")?;
            }
        }
        for (name, b) in &self.outputs {
            writeln!(f, "  output {name} = b{b}")?;
        }
        f.write_str("}\n")
    }
}
