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
pub mod simplify;

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

impl Body {
    /// The largest variable the body names: its expressions' and its
    /// contraction or attention variables (0 when none).
    pub fn max_var(&self) -> u32 {
        match self {
            Body::Map { expr } => max_var(expr),
            Body::Contract {
                k,
                extent,
                a,
                b,
                epilogue,
            } => [extent, a, b, epilogue]
                .into_iter()
                .map(max_var)
                .fold(k.0, u32::max),
            Body::Attention(t) => t
                .exprs()
                .into_iter()
                .map(max_var)
                .fold(t.j.0.max(t.d.0), u32::max),
        }
    }
}

impl Kernel {
    /// The kernel with an [`Body::Attention`] body replaced by its
    /// [`Attention::as_map`] element expression (other bodies unchanged):
    /// for backends without a fused attention kernel.
    pub fn attention_as_map(&self) -> Kernel {
        match &self.body {
            Body::Attention(t) => Kernel {
                body: Body::Map {
                    expr: t.as_map(self.output.shape.rank()),
                },
                ..self.clone()
            },
            Body::Map { .. } | Body::Contract { .. } => self.clone(),
        }
    }
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

impl Program {
    /// The program of one launch of `kernel`: its inputs are the
    /// program's inputs, named `in0`, `in1`, .., and its output is the
    /// output `out` (for running or timing one kernel alone).
    pub fn of_kernel(kernel: &Kernel) -> Program {
        let mut buffers: Vec<Buffer> = kernel
            .inputs
            .iter()
            .enumerate()
            .map(|(i, b)| Buffer {
                name: format!("in{i}"),
                ..b.clone()
            })
            .collect();
        buffers.push(Buffer {
            name: "out".into(),
            ..kernel.output.clone()
        });
        let n = kernel.inputs.len();
        Program {
            name: kernel.name.clone(),
            buffers,
            inputs: (0..n).collect(),
            weights: vec![],
            constants: vec![],
            outputs: vec![("out".into(), n)],
            dims: kernel.dims.clone(),
            launches: vec![Launch {
                kernel: kernel.clone(),
                args: (0..n).collect(),
                out: n,
                bind_time: false,
            }],
        }
    }
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
    /// Scaled dot-product attention with an epilogue: see [`Attention`].
    Attention(Box<Attention>),
}

/// The attention template, `out[.., m, n] = epilogue(acc)` with
///
/// ```text
/// s(j) = scale * sum(d < depth: q * k) + bias      for every key j < keys
/// s(j) = -inf                                       where causal and j > m + offset
/// acc  = sum_j exp(s(j) - max) * v / sum_j exp(s(j) - max)   (0 when every s(j) is -inf)
/// ```
///
/// The output axes are batch axes (heads among them), then `m` = `v(r-2)`
/// (the query) and `n` = `v(r-1)` (the value feature). `q` may use the batch
/// variables, `m` and `d`; `k` the batch variables, `j` and `d`; `v` the
/// batch variables, `j` and `n`; `bias` the batch variables, `m` and `j`;
/// `scale` and the causal offset only dims; the epilogue any output
/// variable and [`Expr::Acc`]. Backends without a fused kernel for it run
/// [`Attention::as_map`].
#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    /// The key variable and the number of keys.
    pub j: Var,
    pub keys: Expr,
    /// The variable of the `q . k` dot product and its extent (head dim).
    pub d: Var,
    pub depth: Expr,
    pub q: Expr,
    pub k: Expr,
    pub v: Expr,
    pub scale: Expr,
    /// An additive score term (a mask of `0` and `-inf`, or a bias).
    pub bias: Option<Expr>,
    /// Causal masking: key `j` is seen by query `m` only when
    /// `j <= m + offset` (the offset is `keys - queries` for a KV cache).
    pub causal: Option<Expr>,
    pub epilogue: Expr,
}

impl Attention {
    /// The expressions of the template, for walks over all of them.
    pub fn exprs(&self) -> Vec<&Expr> {
        let mut v = vec![
            &self.keys,
            &self.depth,
            &self.q,
            &self.k,
            &self.v,
            &self.scale,
        ];
        v.extend(self.bias.as_ref());
        v.extend(self.causal.as_ref());
        v.push(&self.epilogue);
        v
    }

    /// The template's expressions, mutably (the order of [`Attention::exprs`]).
    pub fn exprs_mut(&mut self) -> Vec<&mut Expr> {
        let mut v = vec![
            &mut self.keys,
            &mut self.depth,
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.scale,
        ];
        v.extend(self.bias.as_mut());
        v.extend(self.causal.as_mut());
        v.push(&mut self.epilogue);
        v
    }

    /// The template as one element expression over the output variables
    /// of a rank-`rank` output (a row maximum, a sum of exponentials and
    /// the weighted sum over the keys, each recomputing the scores): what
    /// backends without a fused attention kernel run, and the reference
    /// the evaluator uses.
    pub fn as_map(&self, rank: usize) -> Expr {
        let mut next = self.exprs().iter().map(|e| max_var(e)).max().unwrap_or(0);
        next = next.max(rank as u32).max(self.j.0 + 1).max(self.d.0 + 1);
        let mut fresh = || {
            next += 1;
            Var(next)
        };
        let m = Var(rank.saturating_sub(2) as u32);
        let (jm, dm) = (fresh(), fresh());
        let max = Expr::reduce(Reduction::Max, jm, self.keys.clone(), self.score(m, jm, dm));
        let (js, ds) = (fresh(), fresh());
        let den = Expr::reduce(
            Reduction::Sum,
            js,
            self.keys.clone(),
            Expr::un(
                Unary::Exp,
                Expr::bin(Binary::Sub, self.score(m, js, ds), max.clone()),
            ),
        );
        let (jo, dout) = (fresh(), fresh());
        let weight = Expr::bin(
            Binary::Div,
            Expr::un(
                Unary::Exp,
                Expr::bin(Binary::Sub, self.score(m, jo, dout), max.clone()),
            ),
            den,
        );
        let value = self.at(&self.v, jo, dout);
        let out = Expr::reduce(
            Reduction::Sum,
            jo,
            self.keys.clone(),
            Expr::bin(Binary::Mul, weight, value),
        );
        let all_masked = Expr::bin(Binary::Eq, max, Expr::Float(f64::NEG_INFINITY));
        let acc = Expr::select(all_masked, Expr::Float(0.0), out);
        self.epilogue.substitute(&|x| match x {
            Expr::Acc => Some(acc.clone()),
            _ => None,
        })
    }

    /// `e` with the key variable renamed to `key` and the dot variable to
    /// `dot`.
    fn at(&self, e: &Expr, key: Var, dot: Var) -> Expr {
        e.substitute(&|x| match x {
            Expr::Var(v) if *v == self.j => Some(Expr::Var(key)),
            Expr::Var(v) if *v == self.d => Some(Expr::Var(dot)),
            _ => None,
        })
    }

    /// The masked score of key `key` for query `m`, its dot product over
    /// `dot`.
    fn score(&self, m: Var, key: Var, dot: Var) -> Expr {
        let qk = Expr::bin(
            Binary::Mul,
            self.at(&self.q, key, dot),
            self.at(&self.k, key, dot),
        );
        let mut s = Expr::bin(
            Binary::Mul,
            Expr::reduce(Reduction::Sum, dot, self.depth.clone(), qk),
            self.scale.clone(),
        );
        if let Some(b) = &self.bias {
            s = Expr::bin(Binary::Add, s, self.at(b, key, dot));
        }
        if let Some(off) = &self.causal {
            let limit = Expr::bin(Binary::Add, Expr::Var(m), off.clone());
            s = Expr::select(
                Expr::bin(Binary::Gt, Expr::Var(key), limit),
                Expr::Float(f64::NEG_INFINITY),
                s,
            );
        }
        s
    }
}

/// The largest variable an expression names (0 when none).
pub fn max_var(e: &Expr) -> u32 {
    let mut m = match e {
        Expr::Var(v) => v.0,
        Expr::Reduce { var, .. } => var.0,
        _ => 0,
    };
    e.for_each_child(|c| m = m.max(max_var(c)));
    m
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
            Body::Attention(_) => "attention",
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
            Body::Attention(t) => {
                writeln!(
                    f,
                    "  s = mul(sum({} < {}: mul(q, k)), {})",
                    t.d, t.depth, t.scale
                )?;
                if let Some(b) = &t.bias {
                    writeln!(f, "  s += {b}")?;
                }
                if let Some(c) = &t.causal {
                    writeln!(f, "  s = -inf where {} > v{} + {c}", t.j, r - 2)?;
                }
                writeln!(f, "  acc = softmax({} < {}: s) . v", t.j, t.keys)?;
                writeln!(f, "  q = {}", t.q)?;
                writeln!(f, "  k = {}", t.k)?;
                writeln!(f, "  v = {}", t.v)?;
                writeln!(f, "  out[{}] = {}", vars.join(", "), t.epilogue)?;
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
