//! Lowering: the syntax tree of a model to a graph of the dialect.
//!
//! Lowering elaborates everything that is known at compile time: constants
//! are computed, `for` loops unrolled, blocks inlined under their instance
//! names (so weight names are the safetensors keys), and each op's type is
//! inferred as its node is added. Every node carries the span of the
//! expression that made it. Errors do not stop the lowering: a failed
//! expression yields a poisoned value that later uses ignore, so one run
//! reports every independent error.

use std::collections::{BTreeSet, HashMap};

use kiln_dialect::activation_quant;
use kiln_dialect::diag::Diagnostic;
use kiln_dialect::graph::{Graph, Output, Value, ValueInfo};
use kiln_dialect::numeric::BitOrder;
use kiln_dialect::ops::{AttrValue, Literal, OP_TABLE, Op, OpSpec, OperandKind};
use kiln_dialect::quant::{Granularity, QuantScheme};
use kiln_dialect::suggest::closest;
use kiln_dialect::{DType, Dim, Layout, Shape, Span, TensorType};

use super::ast::*;

/// A value during lowering.
#[derive(Clone, Debug)]
enum Val {
    Tensor(Value),
    Int(i64),
    Float(f64),
    List(Vec<Val>),
    /// Several tensors (a `split`, or a block returning several values).
    Tuple(Vec<Value>),
    /// A name that is not a variable or constant: a dtype, an enum case, a
    /// symbolic dimension, or a misspelling, decided by its use.
    Word(String, Span),
    /// The result of an expression that already failed (reported once).
    Poison,
}

/// The `shape` and `dtype` arguments of a `constant` or `iota` call.
type SourceType = (Option<(Val, Span)>, Option<(Val, Span)>);

/// Type names accepted besides the dialect's own (`int4` for `i4`, ...).
const DTYPE_ALIASES: &[(&str, DType)] = &[
    ("int64", DType::I64),
    ("int32", DType::I32),
    ("int8", DType::I8),
    ("uint8", DType::U8),
    ("int6", DType::I6),
    ("int4", DType::I4),
    ("uint4", DType::U4),
    ("int3", DType::I3),
    ("fp8", DType::F8E4M3),
    ("fp4", DType::F4E2M1),
];

/// Resolves a type name (dialect name or alias).
pub fn dtype_named(name: &str) -> Option<DType> {
    DType::from_name(name).or_else(|| {
        DTYPE_ALIASES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| *d)
    })
}

fn all_dtype_names() -> impl Iterator<Item = &'static str> {
    DType::ALL
        .iter()
        .map(|d| d.name())
        .chain(DTYPE_ALIASES.iter().map(|(n, _)| *n))
}

/// Everything the lowering needs from the loaded files.
pub struct Program<'a> {
    pub consts: Vec<&'a ConstDecl>,
    pub blocks: HashMap<String, &'a BlockDef>,
    pub model: &'a ModelDef,
}

/// Lowers a model; returns the graph or every error found.
pub fn lower(p: &Program) -> Result<Graph, Vec<Diagnostic>> {
    let mut cx = Lowerer {
        g: Graph::new(&p.model.name.name),
        diags: Vec::new(),
        blocks: &p.blocks,
        globals: HashMap::new(),
        stack: Vec::new(),
        weights: HashMap::new(),
        inputs: HashMap::new(),
        word_hints: HashMap::new(),
        symbols: BTreeSet::new(),
        names: BTreeSet::new(),
        unrolled: 0,
        act_quant: HashMap::new(),
    };
    for c in &p.consts {
        let v = cx.const_value(&c.value, &[]);
        cx.globals.insert(c.name.name.clone(), v);
    }
    let mut scopes = vec![Scope::default()];
    let frame = Frame {
        prefix: String::new(),
        in_block: None,
    };
    cx.stmts(&p.model.body, &mut scopes, &frame);
    if cx.g.outputs().is_empty() && cx.diags.is_empty() {
        cx.error(
            p.model.name.span,
            format!("model `{}` has no outputs", p.model.name.name),
            "declare one with `output NAME = EXPR`",
        );
    }
    if cx.diags.is_empty() {
        Ok(cx.g)
    } else {
        Err(cx.diags)
    }
}

#[derive(Default)]
struct Scope {
    vars: HashMap<String, (Val, Span)>,
}

/// Where statements are being lowered: the weight-name prefix, and the
/// block being instantiated (for `return` and error notes).
struct Frame {
    prefix: String,
    in_block: Option<String>,
}

struct Lowerer<'a> {
    g: Graph,
    diags: Vec<Diagnostic>,
    blocks: &'a HashMap<String, &'a BlockDef>,
    globals: HashMap<String, Val>,
    /// Block instantiations in progress: (block name, span of the call).
    stack: Vec<(String, Span)>,
    /// Full weight names declared so far: where, and the value bound.
    weights: HashMap<String, (Span, Val)>,
    inputs: HashMap<String, Span>,
    /// "Did you mean" for names that failed to resolve, by span start, from
    /// the scope they were written in.
    word_hints: HashMap<(u32, usize), String>,
    symbols: BTreeSet<String>,
    names: BTreeSet<String>,
    /// Loop iterations and block instances unrolled so far.
    unrolled: u64,
    /// Weights declared with `act DT` (their dequantized value): the code
    /// type a matmul's left operand is quantized to when it multiplies one.
    act_quant: HashMap<Value, DType>,
}

/// Loops and blocks are unrolled at compile time: the most loop iterations
/// plus block instances one model may unroll in all, so that a runaway loop
/// is an error rather than a hang.
pub const MAX_UNROLLED: u64 = 1 << 20;

/// What a block body returns.
enum Returned {
    Nothing,
    Values(Vec<Val>),
}

impl<'a> Lowerer<'a> {
    // ---- diagnostics ---------------------------------------------------

    fn error(&mut self, span: Span, message: impl Into<String>, help: impl Into<String>) {
        let help = help.into();
        let mut d = Diagnostic::error(message).with_label(span, "");
        if !help.is_empty() {
            d = d.with_notes([format!("help: {help}")]);
        }
        self.push(d);
    }

    /// Adds a diagnostic, labelled with the block instantiations it is inside.
    fn push(&mut self, mut d: Diagnostic) {
        for (block, call) in self.stack.iter().rev() {
            d = d.with_label(*call, format!("in block `{block}`, instantiated here"));
        }
        self.diags.push(d);
    }

    // ---- statements ----------------------------------------------------

    fn stmts(&mut self, body: &[Stmt], scopes: &mut Vec<Scope>, frame: &Frame) -> Returned {
        let mut ret = Returned::Nothing;
        for s in body {
            if let Returned::Values(_) = ret {
                self.error(
                    stmt_span(s),
                    "statement after `return`",
                    "a block ends with its `return`",
                );
                break;
            }
            ret = self.stmt(s, scopes, frame);
        }
        ret
    }

    fn stmt(&mut self, s: &Stmt, scopes: &mut Vec<Scope>, frame: &Frame) -> Returned {
        match s {
            Stmt::Input {
                name,
                ty,
                mods,
                span,
            } => {
                if let Some(b) = &frame.in_block {
                    self.error(
                        *span,
                        format!("`input` inside block `{b}`"),
                        "inputs belong to the model; pass values to a block as parameters",
                    );
                    return Returned::Nothing;
                }
                let Some(mut t) = self.tensor_type(ty, scopes, true) else {
                    // bound anyway, so its uses do not report it again
                    self.bind_new(scopes, name, Val::Poison);
                    return Returned::Nothing;
                };
                for m in mods {
                    match m {
                        Modifier::Word(w) if w.name == "nhwc" || w.name == "nchw" => {
                            t.layout = if w.name == "nhwc" {
                                Layout::Nhwc
                            } else {
                                Layout::Nchw
                            };
                        }
                        other => {
                            self.error(
                                other.span(),
                                "unexpected word after an input's type",
                                "an input takes a layout (`nchw` or `nhwc`) only",
                            );
                        }
                    }
                }
                if let Err(e) = t.check_well_formed() {
                    self.error(
                        ty.span,
                        format!("invalid type for input `{}`: {e}", name.name),
                        "",
                    );
                    return Returned::Nothing;
                }
                if let Some(prev) = self.inputs.insert(name.name.clone(), *span) {
                    let _ = prev;
                    self.error(
                        name.span,
                        format!("input `{}` is declared twice", name.name),
                        "",
                    );
                    return Returned::Nothing;
                }
                self.names.insert(name.name.clone());
                let v = self.g.add_input(&name.name, t);
                self.g.node_mut(v.node).span = Some(*span);
                self.bind_new(scopes, name, Val::Tensor(v));
            }
            Stmt::Weight {
                name,
                ty,
                mods,
                span,
            } => {
                let full = join(&frame.prefix, &name.name);
                // where this declaration happens: the block instantiation, or the line itself
                let site = self
                    .stack
                    .last()
                    .map(|(_, call)| *call)
                    .unwrap_or(name.span);
                if let Some((prev, v)) = self.weights.get(&full).cloned() {
                    // labelled at the instantiations already: no block labels
                    self.diags.push(
                        Diagnostic::error(format!("weight `{full}` is declared twice"))
                            .with_label(site, "declared again here")
                            .with_label(prev, "first declared here")
                            .with_notes(["help: give each block instance its own name with `as`, e.g. `mlp(x) as layers[i].mlp`".to_string()]),
                    );
                    // bind the first declaration, so later uses do not fail too
                    self.bind_new(scopes, name, v);
                    return Returned::Nothing;
                }
                // a value named like this weight (a `let` in a block instance
                // of the same name) yields the name: weight names are the
                // weights file's keys
                if self.names.contains(&full) {
                    self.rename_value(&full);
                }
                let v = self.weight(&full, ty, mods, *span, scopes);
                self.weights.insert(full, (site, v.clone()));
                self.bind_new(scopes, name, v);
            }
            Stmt::Output {
                name,
                ty,
                value,
                span,
            } => {
                if let Some(b) = &frame.in_block {
                    self.error(
                        *span,
                        format!("`output` inside block `{b}`"),
                        "blocks give values back with `return`",
                    );
                    return Returned::Nothing;
                }
                let v = self.expr(value, scopes, frame);
                let Some(t) = self.tensor_of(&v, value.span, "an output") else {
                    return Returned::Nothing;
                };
                if let Some(te) = ty
                    && let Some(want) = self.tensor_type(te, scopes, false)
                    && &want != self.g.value_type(t)
                {
                    let found = self.g.value_type(t).clone();
                    self.error(
                        value.span,
                        format!(
                            "output `{}` is declared {want}, but its value is {found}",
                            name.name
                        ),
                        "",
                    );
                    return Returned::Nothing;
                }
                if self.g.outputs().iter().any(|o| o.name == name.name) {
                    self.error(
                        name.span,
                        format!("output `{}` is declared twice", name.name),
                        "",
                    );
                    return Returned::Nothing;
                }
                self.name_value(&Val::Tensor(t), &name.name);
                self.g.push_output(Output {
                    name: name.name.clone(),
                    value: t,
                    span: Some(*span),
                    doc: Vec::new(),
                });
            }
            Stmt::Let { names, value, .. } => {
                let v = self.expr(value, scopes, frame);
                if let Val::Word(w, s) = &v {
                    let (w, s) = (w.clone(), *s);
                    self.unknown_name(&w, s);
                }
                for (n, v) in self.destructure(names, v, value.span) {
                    self.name_value(&v, &join(&frame.prefix, &n.name));
                    self.bind_new(scopes, &n, v);
                }
            }
            Stmt::Assign { names, value, .. } => {
                let v = self.expr(value, scopes, frame);
                for (n, v) in self.destructure(names, v, value.span) {
                    self.name_value(&v, &join(&frame.prefix, &n.name));
                    match scopes
                        .iter_mut()
                        .rev()
                        .find(|s| s.vars.contains_key(&n.name))
                    {
                        Some(scope) => {
                            scope.vars.insert(n.name.clone(), (v, n.span));
                        }
                        None if self.globals.contains_key(&n.name) => {
                            self.error(
                                n.span,
                                format!("cannot assign to `{}`: it is a constant", n.name),
                                format!("define a variable instead: `let {} = ...`", n.name),
                            );
                        }
                        None => {
                            let hint = self
                                .suggest_var(&n.name, scopes)
                                .map(|s| format!("did you mean `{s}`? "))
                                .unwrap_or_default();
                            self.error(
                                n.span,
                                format!("cannot assign to `{}`: it is not defined", n.name),
                                format!("{hint}define it first with `let {} = ...`", n.name),
                            );
                        }
                    }
                }
            }
            Stmt::Const(c) => {
                let v = self.const_value(&c.value, scopes);
                self.bind_new(scopes, &c.name, v);
            }
            Stmt::For {
                var,
                start,
                end,
                body,
                span,
            } => {
                let (Some(a), Some(b)) = (
                    self.int_of(start, scopes, "a loop bound"),
                    self.int_of(end, scopes, "a loop bound"),
                ) else {
                    return Returned::Nothing;
                };
                let trips = if b > a { b.abs_diff(a) } else { 0 };
                if !self.spend(
                    trips,
                    *span,
                    &format!("this loop runs {trips} times, which"),
                ) {
                    return Returned::Nothing;
                }
                for i in a..b {
                    scopes.push(Scope::default());
                    scopes
                        .last_mut()
                        .expect("pushed")
                        .vars
                        .insert(var.name.clone(), (Val::Int(i), var.span));
                    let r = self.stmts(body, scopes, frame);
                    scopes.pop();
                    if let Returned::Values(_) = r {
                        self.error(var.span, "`return` inside a loop", "return after the loop");
                        break;
                    }
                }
            }
            Stmt::Return { values, span } => {
                if frame.in_block.is_none() {
                    self.error(
                        *span,
                        "`return` outside a block",
                        "a model gives its results with `output NAME = EXPR`",
                    );
                    return Returned::Nothing;
                }
                let vals = values.iter().map(|e| self.expr(e, scopes, frame)).collect();
                return Returned::Values(vals);
            }
        }
        Returned::Nothing
    }

    fn bind_new(&mut self, scopes: &mut [Scope], name: &Ident, v: Val) {
        let scope = scopes.last_mut().expect("a scope");
        if let Some((_, prev)) = scope.vars.get(&name.name)
            && prev.file == name.span.file
        {
            let prev = *prev;
            self.push(
                Diagnostic::error(format!("`{}` is already defined here", name.name))
                    .with_label(name.span, "defined again")
                    .with_label(prev, "first defined here")
                    .with_notes([format!(
                        "help: rebind it without `let` (`{} = ...`), or use a new name",
                        name.name
                    )]),
            );
            return;
        }
        scope.vars.insert(name.name.clone(), (v, name.span));
    }

    fn destructure(&mut self, names: &[Ident], v: Val, span: Span) -> Vec<(Ident, Val)> {
        match (names.len(), v) {
            (_, Val::Poison) => names.iter().map(|n| (n.clone(), Val::Poison)).collect(),
            (1, Val::Tuple(t)) if t.len() != 1 => {
                self.error(
                    span,
                    format!("this gives {} values, one name is bound", t.len()),
                    format!(
                        "bind them all: `let {} = ...`",
                        (0..t.len())
                            .map(|i| format!("v{i}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                vec![(names[0].clone(), Val::Poison)]
            }
            (1, Val::Tuple(t)) => vec![(names[0].clone(), Val::Tensor(t[0]))],
            (1, v) => vec![(names[0].clone(), v)],
            (n, Val::Tuple(t)) if t.len() == n => names
                .iter()
                .cloned()
                .zip(t.into_iter().map(Val::Tensor))
                .collect(),
            (n, Val::Tuple(t)) => {
                self.error(
                    span,
                    format!("this gives {} values, {n} names are bound", t.len()),
                    "",
                );
                names.iter().map(|n| (n.clone(), Val::Poison)).collect()
            }
            (n, _) => {
                self.error(
                    span,
                    format!("this gives one value, {n} names are bound"),
                    "",
                );
                names.iter().map(|n| (n.clone(), Val::Poison)).collect()
            }
        }
    }

    /// Names the node behind a value after the `let` that binds it (if the
    /// node still has a generated name).
    fn name_value(&mut self, v: &Val, name: &str) {
        let Val::Tensor(t) = v else { return };
        let node = self.g.node(t.node);
        if let Op::Input | Op::Weight = node.op {
            return;
        }
        // only generated names (numbers) are replaced; a value keeps its first name
        let current = &node.results[t.port as usize].name;
        if !current.chars().all(|c| c.is_ascii_digit()) {
            return;
        }
        let fresh = self.unique_name(name);
        self.g.node_mut(t.node).results[t.port as usize].name = fresh;
    }

    /// Gives the value named `name` another name.
    fn rename_value(&mut self, name: &str) {
        let found = self.g.node_ids().find_map(|id| {
            let n = self.g.node(id);
            n.results
                .iter()
                .position(|r| r.name == name)
                .map(|p| (id, p))
        });
        if let Some((id, port)) = found {
            let fresh = self.unique_name(&format!("{name}.value"));
            self.g.node_mut(id).results[port].name = fresh;
        }
    }

    fn unique_name(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while self.names.contains(&name)
            || self.weights.contains_key(&name)
            || self.inputs.contains_key(&name)
        {
            name = format!("{base}.{i}");
            i += 1;
        }
        self.names.insert(name.clone());
        name
    }

    // ---- declarations --------------------------------------------------

    /// A declared type. Only a model `input` may introduce a new symbolic
    /// dim (`new_symbols`); elsewhere a name that is not a constant must be a
    /// symbol the inputs introduced, so a misspelt constant is an error.
    fn tensor_type(
        &mut self,
        te: &TypeExpr,
        scopes: &[Scope],
        new_symbols: bool,
    ) -> Option<TensorType> {
        let Some(dtype) = dtype_named(&te.dtype.name) else {
            let hint = closest(&te.dtype.name, all_dtype_names())
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_default();
            self.error(
                te.dtype.span,
                format!("unknown element type `{}`", te.dtype.name),
                hint,
            );
            return None;
        };
        let mut dims = Vec::new();
        for d in &te.dims {
            match &d.kind {
                ExprKind::Name(n) if self.lookup(n, scopes).is_none() => {
                    if !self.symbols.contains(n) {
                        let mut known: Vec<String> = self.globals.keys().cloned().collect();
                        known.extend(scopes.iter().flat_map(|s| s.vars.keys().cloned()));
                        known.extend(self.symbols.iter().cloned());
                        let near = closest(n, known.iter().map(String::as_str)).map(str::to_string);
                        let typo = n.chars().count() >= 3
                            && near
                                .as_ref()
                                .is_some_and(|k| strsim::osa_distance(k, n) <= 1);
                        if !new_symbols || typo {
                            let hint = near
                                .map(|k| format!("did you mean `{k}`? "))
                                .unwrap_or_default();
                            self.error(
                                d.span,
                                format!("unknown size `{n}`"),
                                format!("{hint}a size is a number, a constant, or a symbol that a model input introduces"),
                            );
                            return None;
                        }
                    }
                    self.symbols.insert(n.clone());
                    dims.push(Dim::Sym(n.clone()));
                }
                _ => {
                    let n = self.int_of(d, scopes, "a dimension")?;
                    if n < 0 {
                        self.error(
                            d.span,
                            format!("a dimension must not be negative, found {n}"),
                            "",
                        );
                        return None;
                    }
                    dims.push(Dim::Static(n as u64));
                }
            }
        }
        Some(TensorType::new(dtype, Shape(dims)))
    }

    /// A weight declaration: plain, or quantized by its modifiers (then the
    /// codes, scales and zero points are separate weights and the name is
    /// bound to their dequantization).
    fn weight(
        &mut self,
        full: &str,
        te: &TypeExpr,
        mods: &[Modifier],
        span: Span,
        scopes: &[Scope],
    ) -> Val {
        let Some(mut t) = self.tensor_type(te, scopes, false) else {
            return Val::Poison;
        };
        let q = match self.modifiers(mods, &mut t, te) {
            Some(q) => q,
            None => return Val::Poison,
        };
        let Some((scheme, out_dtype, act)) = q else {
            if let Err(e) = t.check_well_formed() {
                self.error(
                    te.span,
                    format!("invalid type for weight `{full}`: {e}"),
                    "",
                );
                return Val::Poison;
            }
            self.names.insert(full.to_string());
            let v = self.g.add_weight(full, t);
            self.g.node_mut(v.node).span = Some(span);
            return Val::Tensor(v);
        };
        if let Err(e) = scheme.check(t.dtype, &t.shape) {
            self.error(
                te.span,
                format!("the quantization of weight `{full}` does not fit its type {t}: {e}"),
                "",
            );
            return Val::Poison;
        }
        let codes_ty = TensorType {
            quant: Some(scheme.clone()),
            ..t.clone()
        };
        if let Err(e) = codes_ty.check_well_formed() {
            self.error(
                te.span,
                format!("invalid type for weight `{full}`: {e}"),
                "",
            );
            return Val::Poison;
        }
        let scale_shape = scheme.scale_shape(&t.shape);
        let codes = TensorType {
            quant: Some(scheme.clone()),
            ..t.clone()
        };
        let mut operands = vec![self.g.add_weight(full, codes)];
        operands.push(self.g.add_weight(
            &format!("{full}.scale"),
            TensorType::new(scheme.scale, scale_shape.clone()),
        ));
        if let Some(z) = scheme.zero {
            operands.push(
                self.g
                    .add_weight(&format!("{full}.zero"), TensorType::new(z, scale_shape)),
            );
        }
        if let Some(gl) = scheme.global {
            operands.push(self.g.add_weight(
                &format!("{full}.global"),
                TensorType::new(gl, Shape::scalar()),
            ));
        }
        for o in &operands {
            self.g.node_mut(o.node).span = Some(span);
            let n = self.g.value_name(*o).to_string();
            self.names.insert(n);
        }
        match self
            .g
            .add_op(Op::Dequantize { dtype: out_dtype }, &operands)
        {
            Ok(r) => {
                self.g.node_mut(r[0].node).span = Some(span);
                let n = self.unique_name(&format!("{full}.dequantized"));
                self.g.node_mut(r[0].node).results[0].name = n;
                if let Some(codes) = act {
                    self.act_quant.insert(r[0], codes);
                }
                Val::Tensor(r[0])
            }
            Err(e) => {
                self.error(span, e.to_string(), "");
                Val::Poison
            }
        }
    }

    /// Reads a declaration's modifiers: layout words, and a quantization
    /// scheme (`group 128 [axis 0]`, `per_channel [axis 1]`, `per_tensor`,
    /// `mx`, `nv`, `block 32`, then `scale DT`, `zero DT`, `global DT`,
    /// `to DT`, `msb_first`, `act DT`). Returns the scheme with the
    /// dequantized type and the activations' code type (`act`); `None` after
    /// reporting an error.
    fn modifiers(
        &mut self,
        mods: &[Modifier],
        t: &mut TensorType,
        te: &TypeExpr,
    ) -> Option<Option<(QuantScheme, DType, Option<DType>)>> {
        let mut gran: Option<(Granularity, Span)> = None;
        let mut scale: Option<DType> = None;
        let mut zero: Option<DType> = None;
        let mut global: Option<DType> = None;
        let mut to: Option<DType> = None;
        let mut act: Option<DType> = None;
        let mut axis: Option<usize> = None;
        let mut packing = BitOrder::LsbFirst;
        let mut i = 0;
        let last = t.rank().saturating_sub(1);
        while i < mods.len() {
            let m = &mods[i];
            let Modifier::Word(w) = m else {
                self.error(
                    m.span(),
                    "unexpected number in a declaration",
                    "numbers follow `group`, `block` or `axis`",
                );
                return None;
            };
            let int_arg = |i: usize, this: &mut Self| -> Option<i64> {
                match mods.get(i + 1) {
                    Some(Modifier::Int(n, _)) => Some(*n),
                    _ => {
                        this.error(
                            w.span,
                            format!(
                                "`{}` needs a number after it, like `{} 128`",
                                w.name, w.name
                            ),
                            "",
                        );
                        None
                    }
                }
            };
            let dtype_arg = |i: usize, this: &mut Self| -> Option<DType> {
                match mods.get(i + 1) {
                    Some(Modifier::Word(d)) => match dtype_named(&d.name) {
                        Some(dt) => Some(dt),
                        None => {
                            let hint = closest(&d.name, all_dtype_names())
                                .map(|s| format!("did you mean `{s}`?"))
                                .unwrap_or_default();
                            this.error(d.span, format!("unknown element type `{}`", d.name), hint);
                            None
                        }
                    },
                    _ => {
                        this.error(
                            w.span,
                            format!(
                                "`{}` needs an element type after it, like `{} bf16`",
                                w.name, w.name
                            ),
                            "",
                        );
                        None
                    }
                }
            };
            let mut set_gran = |g: Granularity, this: &mut Self| -> bool {
                if let Some((_, prev)) = gran {
                    this.diags.push(
                        Diagnostic::error("a weight has one quantization granularity")
                            .with_label(w.span, "second one here")
                            .with_label(prev, "first one here"),
                    );
                    return false;
                }
                gran = Some((g, w.span));
                true
            };
            match w.name.as_str() {
                "nchw" => t.layout = Layout::Nchw,
                "nhwc" => t.layout = Layout::Nhwc,
                "msb_first" => packing = BitOrder::MsbFirst,
                "group" | "block" => {
                    let n = int_arg(i, self)?;
                    if n <= 0 {
                        self.error(
                            mods[i + 1].span(),
                            format!("a group size must be positive, found {n}"),
                            "",
                        );
                        return None;
                    }
                    let g = if w.name == "group" {
                        Granularity::Group {
                            size: n as u64,
                            axis: 0,
                        }
                    } else {
                        Granularity::Block {
                            size: n as u64,
                            axis: 0,
                        }
                    };
                    if !set_gran(g, self) {
                        return None;
                    }
                    i += 1;
                }
                "per_channel" => {
                    if !set_gran(Granularity::PerChannel { axis: last }, self) {
                        return None;
                    }
                }
                "per_tensor" => {
                    if !set_gran(Granularity::PerTensor, self) {
                        return None;
                    }
                }
                "mx" => {
                    if !set_gran(Granularity::Block { size: 32, axis: 0 }, self) {
                        return None;
                    }
                    scale.get_or_insert(DType::E8M0);
                }
                "nv" => {
                    if !set_gran(Granularity::Block { size: 16, axis: 0 }, self) {
                        return None;
                    }
                    scale.get_or_insert(DType::F8E4M3);
                    global.get_or_insert(DType::F32);
                }
                "axis" => {
                    let n = int_arg(i, self)?;
                    if n < 0 || n as usize >= t.rank().max(1) {
                        self.error(
                            mods[i + 1].span(),
                            format!("axis {n} is out of range for {}", t.shape),
                            "",
                        );
                        return None;
                    }
                    axis = Some(n as usize);
                    i += 1;
                }
                "scale" => {
                    scale = Some(dtype_arg(i, self)?);
                    i += 1;
                }
                "zero" => {
                    zero = Some(dtype_arg(i, self)?);
                    i += 1;
                }
                "global" => {
                    global = Some(dtype_arg(i, self)?);
                    i += 1;
                }
                "to" => {
                    to = Some(dtype_arg(i, self)?);
                    i += 1;
                }
                "act" => {
                    let codes = dtype_arg(i, self)?;
                    if !activation_quant::codes_supported(codes) {
                        self.error(
                            mods[i + 1].span(),
                            format!("`act {codes}`: activations are quantized at run time to i8, f8e4m3 or f8e5m2"),
                            "`act int8` for W8A8, `act f8e4m3` for fp8",
                        );
                        return None;
                    }
                    act = Some(codes);
                    i += 1;
                }
                other => {
                    let words = [
                        "group",
                        "block",
                        "per_channel",
                        "per_tensor",
                        "mx",
                        "nv",
                        "axis",
                        "scale",
                        "zero",
                        "global",
                        "to",
                        "act",
                        "msb_first",
                        "nchw",
                        "nhwc",
                    ];
                    let hint = closest(other, words)
                        .map(|s| format!("did you mean `{s}`? "))
                        .unwrap_or_default();
                    self.error(w.span, format!("unknown word `{other}` in a declaration"), format!("{hint}expected a layout (nchw, nhwc) or a quantization: group N, per_channel, per_tensor, block N, mx, nv, with scale DT, zero DT, global DT, axis N, to DT, act DT"));
                    return None;
                }
            }
            i += 1;
        }
        let Some((mut g, gspan)) = gran else {
            for (present, word) in [
                (scale.is_some(), "scale"),
                (zero.is_some(), "zero"),
                (global.is_some(), "global"),
                (axis.is_some(), "axis"),
                (packing == BitOrder::MsbFirst, "msb_first"),
                (to.is_some(), "to"),
                (act.is_some(), "act"),
            ] {
                if present {
                    self.error(te.span, format!("`{word}` is given without a granularity"), "say how elements share scales: `group N`, `per_channel`, `per_tensor`, `block N`, `mx` or `nv`");
                    return None;
                }
            }
            return Some(None);
        };
        if let Some(a) = axis {
            match &mut g {
                Granularity::PerTensor => {}
                Granularity::PerChannel { axis }
                | Granularity::Group { axis, .. }
                | Granularity::Block { axis, .. } => *axis = a,
            }
        }
        let Some(scale) = scale else {
            self.error(
                gspan,
                "a quantized weight needs the element type of its scales",
                "add `scale DT`, e.g. `group 128 scale bf16`",
            );
            return None;
        };
        let out = to.unwrap_or(if scale.is_float() { scale } else { DType::BF16 });
        if !out.is_float() {
            self.error(
                te.span,
                format!("`to {out}`: a weight dequantizes to a float type"),
                "",
            );
            return None;
        }
        Some(Some((
            QuantScheme {
                granularity: g,
                scale,
                zero,
                global,
                packing,
            },
            out,
            act,
        )))
    }

    // ---- expressions ---------------------------------------------------

    fn lookup(&self, name: &str, scopes: &[Scope]) -> Option<Val> {
        scopes
            .iter()
            .rev()
            .find_map(|s| s.vars.get(name).map(|(v, _)| v.clone()))
            .or_else(|| self.globals.get(name).cloned())
    }

    fn suggest_var(&self, name: &str, scopes: &[Scope]) -> Option<String> {
        let mut names: Vec<&str> = scopes
            .iter()
            .flat_map(|s| s.vars.keys().map(String::as_str))
            .collect();
        names.extend(self.globals.keys().map(String::as_str));
        closest(name, names).map(str::to_string)
    }

    fn expr(&mut self, e: &Expr, scopes: &[Scope], frame: &Frame) -> Val {
        match &e.kind {
            ExprKind::Name(n) => match self.lookup(n, scopes) {
                Some(v) => v,
                None => match special_float(n) {
                    Some(x) => Val::Float(x),
                    None => {
                        if let Some(s) = self.suggest_var(n, scopes) {
                            self.word_hints.insert((e.span.file, e.span.start), s);
                        }
                        Val::Word(n.clone(), e.span)
                    }
                },
            },
            ExprKind::Int(i) => Val::Int(*i),
            ExprKind::Float(x) => Val::Float(*x),
            ExprKind::List(items) => {
                Val::List(items.iter().map(|i| self.expr(i, scopes, frame)).collect())
            }
            ExprKind::Neg(inner) => match self.expr(inner, scopes, frame) {
                Val::Int(i) => self.negate_int(i, e.span),
                Val::Float(x) => Val::Float(-x),
                v => self.op_on(Op::Neg, &[(v, inner.span)], e.span, "`-`"),
            },
            ExprKind::Binary {
                op,
                op_span,
                lhs,
                rhs,
            } => {
                let a = self.expr(lhs, scopes, frame);
                let b = self.expr(rhs, scopes, frame);
                self.binary(*op, *op_span, (a, lhs.span), (b, rhs.span), e.span)
            }
            ExprKind::Call {
                callee,
                args,
                instance,
            } => self.call(callee, args, instance.as_ref(), e.span, scopes, frame),
            ExprKind::Index { base, items } => {
                let b = self.expr(base, scopes, frame);
                self.index(b, base.span, items, e.span, scopes)
            }
            ExprKind::Transpose(inner) => {
                let v = self.expr(inner, scopes, frame);
                let Some(t) = self.tensor_of(&v, inner.span, "`.T`") else {
                    return Val::Poison;
                };
                let r = self.g.value_type(t).rank();
                if r < 2 {
                    let ty = self.g.value_type(t).clone();
                    self.error(
                        e.span,
                        format!(
                            "`.T` swaps the last two axes and needs rank 2 or more, found {ty}"
                        ),
                        "",
                    );
                    return Val::Poison;
                }
                let mut perm: Vec<i64> = (0..r as i64).collect();
                perm.swap(r - 1, r - 2);
                self.add(Op::Transpose { perm }, &[t], e.span, "`.T`")
            }
        }
    }

    /// The tensor in a value, or an error saying what was found.
    fn tensor_of(&mut self, v: &Val, span: Span, what: &str) -> Option<Value> {
        match v {
            Val::Tensor(t) => Some(*t),
            Val::Poison => None,
            Val::Word(w, s) => {
                self.unknown_name(w, *s);
                None
            }
            Val::Int(_) | Val::Float(_) => {
                self.error(
                    span,
                    format!("{what} needs a tensor here, found a number"),
                    "",
                );
                None
            }
            Val::List(_) => {
                self.error(
                    span,
                    format!("{what} needs a tensor here, found a list"),
                    "",
                );
                None
            }
            Val::Tuple(t) => {
                self.error(
                    span,
                    format!("{what} needs one tensor here, found {} values", t.len()),
                    "bind them to names first: `let a, b = ...`",
                );
                None
            }
        }
    }

    fn unknown_name(&mut self, w: &str, span: Span) {
        let mut known: Vec<String> = self.globals.keys().cloned().collect();
        known.extend(self.inputs.keys().cloned());
        let in_scope = self.word_hints.get(&(span.file, span.start)).cloned();
        let hint = in_scope
            .or_else(|| closest(w, known.iter().map(String::as_str)).map(str::to_string))
            .map(|s| format!("did you mean `{s}`?"))
            .unwrap_or_default();
        self.error(span, format!("unknown name `{w}`"), hint);
    }

    fn binary(
        &mut self,
        op: BinOp,
        op_span: Span,
        a: (Val, Span),
        b: (Val, Span),
        span: Span,
    ) -> Val {
        match (&a.0, &b.0) {
            (Val::Poison, _) | (_, Val::Poison) => return Val::Poison,
            (Val::Int(x), Val::Int(y)) => return self.fold_int(op, *x, *y, span),
            (Val::Int(_) | Val::Float(_), Val::Int(_) | Val::Float(_)) => {
                let (x, y) = (num(&a.0), num(&b.0));
                return match op {
                    BinOp::Add => Val::Float(x + y),
                    BinOp::Sub => Val::Float(x - y),
                    BinOp::Mul => Val::Float(x * y),
                    BinOp::Div => Val::Float(x / y),
                    BinOp::MatMul
                    | BinOp::Eq
                    | BinOp::Ne
                    | BinOp::Lt
                    | BinOp::Le
                    | BinOp::Gt
                    | BinOp::Ge => {
                        self.error(
                            op_span,
                            format!("`{}` needs tensors, found two numbers", op.symbol()),
                            "",
                        );
                        Val::Poison
                    }
                };
            }
            _ => {}
        }
        let dialect_op = match op {
            BinOp::Add => Op::Add,
            BinOp::Sub => Op::Sub,
            BinOp::Mul => Op::Mul,
            BinOp::Div => Op::Div,
            BinOp::MatMul => Op::Matmul {
                transpose_a: false,
                transpose_b: false,
            },
            BinOp::Eq => Op::Eq,
            BinOp::Ne => Op::Ne,
            BinOp::Lt => Op::Lt,
            BinOp::Le => Op::Le,
            BinOp::Gt => Op::Gt,
            BinOp::Ge => Op::Ge,
        };
        let what = format!("`{}`", op.symbol());
        // `x @ w` with `w` declared `act DT`: x is quantized per token first
        let a = match (&a.0, &b.0) {
            (Val::Tensor(x), Val::Tensor(w)) if matches!(op, BinOp::MatMul) => {
                match self.act_quant.get(w).copied() {
                    Some(codes) => match activation_quant::insert(&mut self.g, *x, codes) {
                        Ok(ins) => {
                            for v in &ins.added {
                                self.g.node_mut(v.node).span = Some(a.1);
                            }
                            // named after the weight: `w.act_scale`, `w.act_codes`, `w.act`
                            let wname = self.g.value_name(*w).to_string();
                            let base = wname.strip_suffix(".dequantized").unwrap_or(&wname);
                            for (v, suffix) in [
                                (ins.scale, "act_scale"),
                                (ins.codes, "act_codes"),
                                (ins.dequantized, "act"),
                            ] {
                                let n = self.unique_name(&format!("{base}.{suffix}"));
                                self.g.node_mut(v.node).results[0].name = n;
                            }
                            (Val::Tensor(ins.dequantized), a.1)
                        }
                        Err(e) => {
                            let name = self.g.value_name(*w).to_string();
                            let w = name.strip_suffix(".dequantized").unwrap_or(&name);
                            self.error(
                                a.1,
                                format!("the left operand of `@` with weight `{w}` (declared `act {codes}`): {e}"),
                                "",
                            );
                            return Val::Poison;
                        }
                    },
                    None => a,
                }
            }
            _ => a,
        };
        self.op_on(dialect_op, &[a, b], span, &what)
    }

    /// Counts `units` of unrolling against [`MAX_UNROLLED`]; false (after
    /// one error for the whole model) once the budget is spent.
    fn spend(&mut self, units: u64, span: Span, what: &str) -> bool {
        if self.unrolled > MAX_UNROLLED {
            return false;
        }
        self.unrolled = self.unrolled.saturating_add(units);
        if self.unrolled > MAX_UNROLLED {
            self.error(
                span,
                format!("{what} takes the model past {MAX_UNROLLED} unrolled loop iterations and block instances"),
                "loops and blocks are unrolled at compile time; a model of real layers needs far fewer",
            );
            return false;
        }
        true
    }

    fn negate_int(&mut self, i: i64, span: Span) -> Val {
        match i.checked_neg() {
            Some(n) => Val::Int(n),
            None => {
                self.error(
                    span,
                    format!("`-({i})` does not fit in a 64-bit integer"),
                    "",
                );
                Val::Poison
            }
        }
    }

    fn fold_int(&mut self, op: BinOp, x: i64, y: i64, span: Span) -> Val {
        let r = match op {
            BinOp::Add => x.checked_add(y),
            BinOp::Sub => x.checked_sub(y),
            BinOp::Mul => x.checked_mul(y),
            BinOp::Div => {
                if y == 0 {
                    self.error(span, "division by zero in a constant", "");
                    return Val::Poison;
                }
                if x.checked_rem(y).is_some_and(|r| r != 0) {
                    self.error(span, format!("`{x} / {y}` does not divide exactly"), "integer constants divide exactly; write a float (`10.0 / 3`) for a fraction");
                    return Val::Poison;
                }
                x.checked_div(y)
            }
            BinOp::MatMul
            | BinOp::Eq
            | BinOp::Ne
            | BinOp::Lt
            | BinOp::Le
            | BinOp::Gt
            | BinOp::Ge => {
                self.error(
                    span,
                    format!("`{}` needs tensors, found two numbers", op.symbol()),
                    "",
                );
                return Val::Poison;
            }
        };
        match r {
            Some(v) => Val::Int(v),
            None => {
                self.error(span, "integer overflow in a constant", "");
                Val::Poison
            }
        }
    }

    /// Applies an elementwise or matmul op to values that may mix tensors
    /// and numbers; numbers become scalar constants of the tensor's type.
    fn op_on(&mut self, op: Op, args: &[(Val, Span)], span: Span, what: &str) -> Val {
        self.op_on_inner(op, args, span, what)
            .unwrap_or(Val::Poison)
    }

    fn op_on_inner(&mut self, op: Op, args: &[(Val, Span)], span: Span, what: &str) -> Option<Val> {
        let dtype = args.iter().find_map(|(v, _)| match v {
            Val::Tensor(t) => Some(self.g.value_type(*t).dtype),
            Val::Int(_)
            | Val::Float(_)
            | Val::List(_)
            | Val::Tuple(_)
            | Val::Word(..)
            | Val::Poison => None,
        });
        let mut operands = Vec::new();
        for (v, s) in args {
            operands.push(self.operand(v, *s, dtype, what)?);
        }
        Some(self.add(op, &operands, span, what))
    }

    /// An operand: a tensor, or a number made a scalar constant of `dtype`
    /// (the type of the op's tensors). A fraction for an integer type, or a
    /// number with no tensor to take a type from, is an error.
    fn operand(&mut self, v: &Val, span: Span, dtype: Option<DType>, what: &str) -> Option<Value> {
        match (v, dtype) {
            (Val::Int(_) | Val::Float(_), Some(dt)) => {
                let x = num(v);
                if !dt.is_float() && x.fract() != 0.0 {
                    self.error(span, format!("{what}: {x} is not a whole number, so it cannot be a scalar of type {dt}"), "cast the tensor to a float type first, or write a whole number");
                    return None;
                }
                Some(self.scalar(x, dt, span))
            }
            _ => self.tensor_of(v, span, what),
        }
    }

    fn scalar(&mut self, x: f64, dtype: DType, span: Span) -> Value {
        let name = self.g.fresh_name();
        let id = self.g.add_node(
            Op::Constant {
                value: Literal::Splat(x),
            },
            &[],
            vec![ValueInfo {
                name,
                ty: TensorType::new(dtype, Shape::scalar()),
            }],
        );
        self.g.node_mut(id).span = Some(span);
        Value::of(id)
    }

    /// Adds a node; a type error becomes a diagnostic at `span`.
    fn add(&mut self, op: Op, operands: &[Value], span: Span, what: &str) -> Val {
        match self.g.add_op(op.clone(), operands) {
            Ok(results) => {
                self.g.node_mut(results[0].node).span = Some(span);
                if results.len() == 1 {
                    Val::Tensor(results[0])
                } else {
                    Val::Tuple(results)
                }
            }
            Err(e) => {
                let mnemonic = op.mnemonic();
                let msg = e.to_string().replacen(&format!("`{mnemonic}`"), what, 1);
                self.error(span, msg, "");
                Val::Poison
            }
        }
    }

    // ---- calls ---------------------------------------------------------

    fn call(
        &mut self,
        callee: &Ident,
        args: &[Arg],
        instance: Option<&Path>,
        span: Span,
        scopes: &[Scope],
        frame: &Frame,
    ) -> Val {
        if let Some(b) = self.blocks.get(callee.name.as_str()).copied() {
            return self.instantiate(b, callee, args, instance, span, scopes, frame);
        }
        if let Some(path) = instance {
            if OP_TABLE.iter().any(|s| s.mnemonic == callee.name) {
                self.error(
                    path.span,
                    format!("`as` names block instances, and `{}` is an op", callee.name),
                    "",
                );
            } else {
                let hint = closest(&callee.name, self.blocks.keys().map(String::as_str))
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_default();
                self.error(
                    callee.span,
                    format!("unknown block `{}`", callee.name),
                    hint,
                );
                return Val::Poison;
            }
        }
        let Some(spec) = OP_TABLE.iter().find(|s| s.mnemonic == callee.name) else {
            let names = OP_TABLE
                .iter()
                .map(|s| s.mnemonic)
                .chain(self.blocks.keys().map(String::as_str));
            let hint = closest(&callee.name, names)
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_default();
            self.error(
                callee.span,
                format!("unknown op or block `{}`", callee.name),
                hint,
            );
            for a in args {
                self.expr(&a.value, scopes, frame);
            }
            return Val::Poison;
        };
        let vals: Vec<(Option<&Ident>, Val, Span)> = args
            .iter()
            .map(|a| {
                (
                    a.name.as_ref(),
                    self.expr(&a.value, scopes, frame),
                    a.value.span,
                )
            })
            .collect();
        if vals.iter().any(|(_, v, _)| matches!(v, Val::Poison)) {
            return Val::Poison;
        }
        self.op_call(spec, callee, vals, span)
    }

    /// Maps call arguments onto an op's operands and attributes: positional
    /// arguments fill the operands (a number or list skips the remaining
    /// optional operands), then the attributes in table order; named
    /// arguments go where their name says.
    fn op_call(
        &mut self,
        spec: &'static OpSpec,
        callee: &Ident,
        args: Vec<(Option<&Ident>, Val, Span)>,
        span: Span,
    ) -> Val {
        self.op_call_inner(spec, callee, args, span)
            .unwrap_or(Val::Poison)
    }

    fn op_call_inner(
        &mut self,
        spec: &'static OpSpec,
        callee: &Ident,
        args: Vec<(Option<&Ident>, Val, Span)>,
        span: Span,
    ) -> Option<Val> {
        let op_name = spec.mnemonic;
        let source = spec.operands.is_empty() && matches!(op_name, "constant" | "iota");
        if op_name == "input" || op_name == "weight" {
            self.error(
                callee.span,
                format!("`{op_name}` is a declaration, not a call"),
                format!("write `{op_name} NAME: TYPE`"),
            );
            return None;
        }
        let mut operands: Vec<Option<(Val, Span)>> = vec![None; spec.operands.len()];
        let mut variadic: Vec<(Val, Span)> = Vec::new();
        let mut attrs: Vec<(String, AttrValue, Span)> = Vec::new();
        let mut source_ty: SourceType = (None, None);
        let mut slot = 0usize;
        let mut attr_slot = 0usize;
        for (name, v, s) in args {
            match name {
                None => {
                    let is_tensor = matches!(v, Val::Tensor(_));
                    while slot < spec.operands.len()
                        && spec.operands[slot].kind == OperandKind::Optional
                        && !is_tensor
                    {
                        slot += 1;
                    }
                    if slot < spec.operands.len() {
                        if spec.operands[slot].kind == OperandKind::Variadic {
                            if is_tensor {
                                variadic.push((v, s));
                                continue;
                            }
                            if let Val::Tuple(ts) = &v {
                                // several values (a `split`, a block) fill a variadic operand
                                variadic.extend(ts.iter().map(|t| (Val::Tensor(*t), s)));
                                continue;
                            }
                            slot += 1;
                        } else {
                            operands[slot] = Some((v, s));
                            slot += 1;
                            continue;
                        }
                    }
                    let Some(a) = spec.attrs.get(attr_slot) else {
                        let n = spec.operands.len() + spec.attrs.len();
                        self.error(
                            s,
                            format!(
                                "`{op_name}` takes at most {n} arguments {}, this is one too many",
                                describe_params(spec)
                            ),
                            "",
                        );
                        return None;
                    };
                    attr_slot += 1;
                    match self.attr_value(&v, s, op_name, a.name) {
                        Some(av) => attrs.push((a.name.to_string(), av, s)),
                        None => return None,
                    }
                }
                Some(n) => {
                    if let Some(i) = spec.operands.iter().position(|o| o.name == n.name) {
                        if spec.operands[i].kind == OperandKind::Variadic {
                            self.error(
                                n.span,
                                format!("`{}` takes its tensors positionally", op_name),
                                "",
                            );
                            return None;
                        }
                        if operands[i].is_some() {
                            self.error(
                                n.span,
                                format!("operand `{}` of `{op_name}` is given twice", n.name),
                                "",
                            );
                            return None;
                        }
                        operands[i] = Some((v, s));
                    } else if spec.attrs.iter().any(|a| a.name == n.name) {
                        if attrs.iter().any(|(k, _, _)| *k == n.name) {
                            self.error(
                                n.span,
                                format!("argument `{}` of `{op_name}` is given twice", n.name),
                                "",
                            );
                            return None;
                        }
                        match self.attr_value(&v, s, op_name, &n.name) {
                            Some(av) => attrs.push((n.name.clone(), av, s)),
                            None => return None,
                        }
                    } else if source && (n.name == "shape" || n.name == "dtype") {
                        if n.name == "shape" {
                            source_ty.0 = Some((v, s));
                        } else {
                            source_ty.1 = Some((v, s));
                        }
                    } else {
                        let mut names: Vec<&str> = spec.operands.iter().map(|o| o.name).collect();
                        names.extend(spec.attrs.iter().map(|a| a.name));
                        if source {
                            names.extend(["shape", "dtype"]);
                        }
                        let hint = closest(&n.name, names.iter().copied())
                            .map(|s| format!("did you mean `{s}`? "))
                            .unwrap_or_default();
                        self.error(
                            n.span,
                            format!("`{op_name}` has no argument `{}`", n.name),
                            format!("{hint}it takes {}", describe_params(spec)),
                        );
                        return None;
                    }
                }
            }
        }
        // numbers given for operands become scalars of the first tensor's type
        let dtype = operands
            .iter()
            .flatten()
            .chain(variadic.iter())
            .find_map(|(v, _)| match v {
                Val::Tensor(t) => Some(self.g.value_type(*t).dtype),
                Val::Int(_)
                | Val::Float(_)
                | Val::List(_)
                | Val::Tuple(_)
                | Val::Word(..)
                | Val::Poison => None,
            });
        let mut values = Vec::new();
        for (i, o) in spec.operands.iter().enumerate() {
            match (o.kind, operands[i].take()) {
                (OperandKind::Variadic, _) => {
                    if variadic.is_empty() {
                        self.error(
                            span,
                            format!("`{op_name}` needs at least one tensor for `{}`", o.name),
                            "",
                        );
                        return None;
                    }
                    for (v, s) in std::mem::take(&mut variadic) {
                        values.push(self.operand(&v, s, dtype, &format!("`{op_name}`"))?);
                    }
                }
                (_, Some((v, s))) => values.push(self.operand(
                    &v,
                    s,
                    dtype,
                    &format!("operand `{}` of `{op_name}`", o.name),
                )?),
                (OperandKind::Required, None) => {
                    self.error(
                        span,
                        format!("`{op_name}` is missing operand `{}`", o.name),
                        format!("it takes {}", describe_params(spec)),
                    );
                    return None;
                }
                (OperandKind::Optional, None) => {
                    // a later optional operand cannot be given without this one
                    if spec.operands[i + 1..]
                        .iter()
                        .enumerate()
                        .any(|(j, _)| operands[i + 1 + j].is_some())
                    {
                        self.error(
                            span,
                            format!(
                                "`{op_name}`: operand `{}` must be given when a later one is",
                                o.name
                            ),
                            "",
                        );
                        return None;
                    }
                }
            }
        }
        let pairs: Vec<(String, AttrValue)> = attrs
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        let op = match Op::build(op_name, &pairs) {
            Ok(op) => op,
            Err(e) => {
                let at = match &e {
                    kiln_dialect::ops::OpBuildError::AttrType { attr, .. } => attrs
                        .iter()
                        .find(|(k, _, _)| k == attr)
                        .map(|(_, _, s)| *s)
                        .unwrap_or(span),
                    _ => span,
                };
                self.error(at, e.to_string(), "");
                return None;
            }
        };
        if source {
            return Some(self.source_op(op, source_ty, span));
        }
        Some(self.add(op, &values, span, &format!("`{op_name}`")))
    }

    /// `constant(value, shape = [...], dtype = DT)` and `iota(..., shape, dtype)`.
    fn source_op(&mut self, op: Op, ty: SourceType, span: Span) -> Val {
        let name = op.mnemonic();
        let dims = match ty.0 {
            Some((v, s)) => match self.dims_of(&v, s) {
                Some(d) => d,
                None => return Val::Poison,
            },
            None if name == "constant" => Vec::new(),
            None => {
                self.error(span, format!("`{name}` needs `shape = [...]`"), "");
                return Val::Poison;
            }
        };
        let dtype = match ty.1 {
            Some((Val::Word(w, s), _)) => match dtype_named(&w) {
                Some(d) => d,
                None => {
                    self.error(s, format!("unknown element type `{w}`"), "");
                    return Val::Poison;
                }
            },
            Some((_, s)) => {
                self.error(s, "`dtype` must be an element type, like f32", "");
                return Val::Poison;
            }
            None => DType::F32,
        };
        let t = TensorType::new(dtype, Shape(dims));
        if let Err(e) = kiln_dialect::infer::infer(&op, &[], Some(&t)) {
            self.error(span, e.to_string(), "");
            return Val::Poison;
        }
        let vname = self.g.fresh_name();
        let id = self
            .g
            .add_node(op, &[], vec![ValueInfo { name: vname, ty: t }]);
        self.g.node_mut(id).span = Some(span);
        Val::Tensor(Value::of(id))
    }

    fn dims_of(&mut self, v: &Val, span: Span) -> Option<Vec<Dim>> {
        let Val::List(items) = v else {
            self.error(
                span,
                "a shape is a list of sizes and symbols, like [batch, 64]",
                "",
            );
            return None;
        };
        items
            .iter()
            .map(|i| match i {
                Val::Int(n) if *n >= 0 => Some(Dim::Static(*n as u64)),
                Val::Word(w, _) if self.symbols.contains(w) => Some(Dim::Sym(w.clone())),
                Val::Word(w, s) => {
                    let hint = closest(w, self.symbols.iter().map(String::as_str)).map(|s| format!("did you mean `{s}`? ")).unwrap_or_default();
                    self.error(*s, format!("unknown size `{w}`"), format!("{hint}sizes are numbers, constants, or symbols used in the input and weight types"));
                    None
                }
                _ => {
                    self.error(span, "a shape is a list of sizes and symbols, like [batch, 64]", "");
                    None
                }
            })
            .collect()
    }

    /// A constant argument as an attribute value.
    fn attr_value(&mut self, v: &Val, span: Span, op: &str, attr: &str) -> Option<AttrValue> {
        match v {
            Val::Int(i) => Some(AttrValue::Int(*i)),
            Val::Float(x) => Some(AttrValue::Float(*x)),
            Val::Word(w, _) if w == "true" || w == "false" => Some(AttrValue::Bool(w == "true")),
            // type aliases (`int8`) mean the dialect's names (`i8`)
            Val::Word(w, _) => Some(AttrValue::Ident(
                dtype_named(w)
                    .map(|d| d.name().to_string())
                    .unwrap_or_else(|| w.clone()),
            )),
            Val::List(items) => items
                .iter()
                .map(|i| self.attr_value(i, span, op, attr))
                .collect::<Option<Vec<_>>>()
                .map(AttrValue::List),
            Val::Tensor(_) | Val::Tuple(_) => {
                self.error(
                    span,
                    format!(
                        "argument `{attr}` of `{op}` must be known at compile time, found a tensor"
                    ),
                    "",
                );
                None
            }
            Val::Poison => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn instantiate(
        &mut self,
        b: &BlockDef,
        callee: &Ident,
        args: &[Arg],
        instance: Option<&Path>,
        span: Span,
        scopes: &[Scope],
        frame: &Frame,
    ) -> Val {
        if self.stack.iter().any(|(n, _)| *n == b.name.name) {
            self.error(
                callee.span,
                format!("block `{}` instantiates itself", b.name.name),
                "blocks cannot be recursive",
            );
            return Val::Poison;
        }
        if self.stack.len() >= 64 {
            self.error(callee.span, "blocks are nested more than 64 deep", "");
            return Val::Poison;
        }
        // arguments, evaluated in the caller's scope
        let mut bound: Vec<Option<(Val, Span)>> = vec![None; b.params.len()];
        let mut next = 0usize;
        for a in args {
            let v = self.expr(&a.value, scopes, frame);
            let i = match &a.name {
                None => {
                    if next >= b.params.len() {
                        self.error(
                            a.value.span,
                            format!(
                                "block `{}` takes {} arguments, this is one too many",
                                b.name.name,
                                b.params.len()
                            ),
                            format!("its parameters: {}", param_list(b)),
                        );
                        return Val::Poison;
                    }
                    next += 1;
                    next - 1
                }
                Some(n) => match b.params.iter().position(|p| p.name.name == n.name) {
                    Some(i) => i,
                    None => {
                        let hint = closest(&n.name, b.params.iter().map(|p| p.name.name.as_str()))
                            .map(|s| format!("did you mean `{s}`? "))
                            .unwrap_or_default();
                        self.error(
                            n.span,
                            format!("block `{}` has no parameter `{}`", b.name.name, n.name),
                            format!("{hint}its parameters: {}", param_list(b)),
                        );
                        return Val::Poison;
                    }
                },
            };
            if bound[i].is_some() {
                self.error(
                    a.value.span,
                    format!(
                        "parameter `{}` of block `{}` is given twice",
                        b.params[i].name.name, b.name.name
                    ),
                    "",
                );
                return Val::Poison;
            }
            bound[i] = Some((v, a.value.span));
        }
        // the instance name
        let prefix = match instance {
            Some(p) => {
                let mut parts = Vec::new();
                for part in &p.parts {
                    match part {
                        PathPart::Name(n) => parts.push(n.name.clone()),
                        PathPart::Index(e) => match self.int_of(e, scopes, "an instance index") {
                            Some(i) => parts.push(i.to_string()),
                            None => return Val::Poison,
                        },
                    }
                }
                join(&frame.prefix, &parts.join("."))
            }
            None => join(&frame.prefix, &b.name.name),
        };
        let mut scope = Scope::default();
        for (i, p) in b.params.iter().enumerate() {
            let Some((v, s)) = bound[i].take() else {
                self.error(
                    span,
                    format!(
                        "block `{}` is missing argument `{}`",
                        b.name.name, p.name.name
                    ),
                    format!("its parameters: {}", param_list(b)),
                );
                return Val::Poison;
            };
            if let Some(te) = &p.ty {
                let Some(t) = self.tensor_of(&v, s, &format!("parameter `{}`", p.name.name)) else {
                    return Val::Poison;
                };
                let found = self.g.value_type(t).clone();
                if let Some(want) = self.tensor_type(te, &[], true)
                    && !type_matches(&want, &found)
                {
                    self.error(
                        s,
                        format!(
                            "parameter `{}` of block `{}` is declared {want}, found {found}",
                            p.name.name, b.name.name
                        ),
                        "",
                    );
                    return Val::Poison;
                }
            }
            scope.vars.insert(p.name.name.clone(), (v, p.name.span));
        }
        if !self.spend(
            1,
            span,
            &format!("this instance of block `{}`", b.name.name),
        ) {
            return Val::Poison;
        }
        let top_level = self.stack.is_empty();
        let first_node = self.g.node_count();
        self.stack.push((b.name.name.clone(), span));
        let inner = Frame {
            prefix: prefix.clone(),
            in_block: Some(b.name.name.clone()),
        };
        let mut block_scopes = vec![scope];
        let r = self.stmts(&b.body, &mut block_scopes, &inner);
        if top_level {
            // the nodes this instance made (nothing is removed while lowering,
            // so they are the ids from `first_node` on)
            let nodes = self
                .g
                .node_ids()
                .filter(|n| n.index() >= first_node)
                .collect();
            self.g.regions.push(kiln_dialect::graph::Region {
                block: b.name.name.clone(),
                instance: prefix,
                nodes,
            });
        }
        self.stack.pop();
        match r {
            Returned::Nothing => {
                self.error(
                    span,
                    format!("block `{}` returns nothing", b.name.name),
                    "end the block with `return EXPR`",
                );
                Val::Poison
            }
            Returned::Values(vs) if vs.len() == 1 => vs.into_iter().next().unwrap_or(Val::Poison),
            Returned::Values(vs) => {
                let mut out = Vec::new();
                for (i, v) in vs.into_iter().enumerate() {
                    match v {
                        Val::Tensor(t) => out.push(t),
                        Val::Poison => return Val::Poison,
                        Val::Int(_)
                        | Val::Float(_)
                        | Val::List(_)
                        | Val::Tuple(_)
                        | Val::Word(..) => {
                            self.error(
                                span,
                                format!("block `{}` returns several values, and value {} is not a tensor", b.name.name, i + 1),
                                "a block that returns several values returns tensors only",
                            );
                            return Val::Poison;
                        }
                    }
                }
                Val::Tuple(out)
            }
        }
    }

    // ---- indexing ------------------------------------------------------

    fn index(
        &mut self,
        base: Val,
        base_span: Span,
        items: &[IndexItem],
        span: Span,
        scopes: &[Scope],
    ) -> Val {
        self.index_inner(base, base_span, items, span, scopes)
            .unwrap_or(Val::Poison)
    }

    fn index_inner(
        &mut self,
        base: Val,
        base_span: Span,
        items: &[IndexItem],
        span: Span,
        scopes: &[Scope],
    ) -> Option<Val> {
        let t = self.tensor_of(&base, base_span, "indexing")?;
        let ty = self.g.value_type(t).clone();
        let rank = ty.rank();
        let ellipses = items
            .iter()
            .filter(|i| matches!(i, IndexItem::Ellipsis(_)))
            .count();
        let explicit = items.len() - ellipses;
        if ellipses > 1 || explicit > rank {
            let msg = if ellipses > 1 {
                "an index has at most one `...`".to_string()
            } else {
                format!("{explicit} indices for a tensor of rank {rank} ({ty})")
            };
            self.error(span, msg, "");
            return None;
        }
        let (mut axes, mut starts, mut ends, mut steps, mut squeeze) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut axis = 0usize;
        for item in items {
            match item {
                IndexItem::Ellipsis(_) => axis += rank - explicit,
                IndexItem::At(e) => {
                    let i = self.int_of(e, scopes, "an index")?;
                    if let Some(n) = ty.shape.dims()[axis].as_static()
                        && (i >= n as i64 || i < -(n as i64))
                    {
                        self.error(
                            e.span,
                            format!(
                                "index {i} is out of range for axis {axis} of size {n} in {ty}"
                            ),
                            "",
                        );
                        return None;
                    }
                    axes.push(axis as i64);
                    starts.push(i);
                    let Some(end) = (if i == -1 {
                        Some(i64::MAX)
                    } else {
                        i.checked_add(1)
                    }) else {
                        self.error(
                            e.span,
                            format!("index {i} is out of range for axis {axis} in {ty}"),
                            "",
                        );
                        return None;
                    };
                    ends.push(end);
                    steps.push(1);
                    squeeze.push(axis as i64);
                    axis += 1;
                }
                IndexItem::Range {
                    start, end, step, ..
                } => {
                    let st = match step {
                        Some(e) => self.int_of(e, scopes, "a step")?,
                        None => 1,
                    };
                    if st == 0 {
                        self.error(span, "a slice step must not be 0", "");
                        return None;
                    }
                    let s = match start {
                        Some(e) => self.int_of(e, scopes, "a slice bound")?,
                        None if st > 0 => 0,
                        None => -1,
                    };
                    let en = match end {
                        Some(e) => self.int_of(e, scopes, "a slice bound")?,
                        None if st > 0 => i64::MAX,
                        None => i64::MIN / 2,
                    };
                    if !(s == 0 && en == i64::MAX && st == 1) {
                        axes.push(axis as i64);
                        starts.push(s);
                        ends.push(en);
                        steps.push(st);
                    }
                    axis += 1;
                }
            }
        }
        let mut v = t;
        if !axes.is_empty() {
            let steps = if steps.iter().all(|&s| s == 1) {
                Vec::new()
            } else {
                steps
            };
            match self.add(
                Op::Slice {
                    axes,
                    starts,
                    ends,
                    steps,
                },
                &[v],
                span,
                "indexing",
            ) {
                Val::Tensor(x) => v = x,
                _ => return None,
            }
        }
        if !squeeze.is_empty() {
            match self.add(Op::Squeeze { axes: squeeze }, &[v], span, "indexing") {
                Val::Tensor(x) => v = x,
                _ => return None,
            }
        }
        Some(Val::Tensor(v))
    }

    // ---- constants -----------------------------------------------------

    /// Evaluates a constant expression (numbers, constants, arithmetic).
    fn const_value(&mut self, e: &Expr, scopes: &[Scope]) -> Val {
        match &e.kind {
            ExprKind::Int(i) => Val::Int(*i),
            ExprKind::Float(x) => Val::Float(*x),
            ExprKind::Name(n) => match self.lookup(n, scopes) {
                Some(v @ (Val::Int(_) | Val::Float(_) | Val::Poison)) => v,
                Some(_) => {
                    self.error(
                        e.span,
                        format!(
                            "`{n}` is a tensor; a constant needs a value known at compile time"
                        ),
                        "",
                    );
                    Val::Poison
                }
                None => match special_float(n) {
                    Some(x) => Val::Float(x),
                    None => {
                        self.unknown_name(n, e.span);
                        Val::Poison
                    }
                },
            },
            ExprKind::Neg(inner) => match self.const_value(inner, scopes) {
                Val::Int(i) => self.negate_int(i, e.span),
                Val::Float(x) => Val::Float(-x),
                v => v,
            },
            ExprKind::Binary {
                op,
                op_span,
                lhs,
                rhs,
            } => {
                let a = self.const_value(lhs, scopes);
                let b = self.const_value(rhs, scopes);
                self.binary(*op, *op_span, (a, lhs.span), (b, rhs.span), e.span)
            }
            ExprKind::List(_)
            | ExprKind::Call { .. }
            | ExprKind::Index { .. }
            | ExprKind::Transpose(_) => {
                self.error(
                    e.span,
                    "a constant is a number computed at compile time",
                    "use `let` for tensors",
                );
                Val::Poison
            }
        }
    }

    fn int_of(&mut self, e: &Expr, scopes: &[Scope], what: &str) -> Option<i64> {
        match self.const_value(e, scopes) {
            Val::Int(i) => Some(i),
            Val::Poison => None,
            _ => {
                self.error(e.span, format!("{what} must be an integer"), "");
                None
            }
        }
    }
}

fn num(v: &Val) -> f64 {
    match v {
        Val::Int(i) => *i as f64,
        Val::Float(x) => *x,
        Val::Tensor(_) | Val::List(_) | Val::Tuple(_) | Val::Word(..) | Val::Poison => f64::NAN,
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn stmt_span(s: &Stmt) -> Span {
    match s {
        Stmt::Input { span, .. }
        | Stmt::Weight { span, .. }
        | Stmt::Output { span, .. }
        | Stmt::Let { span, .. }
        | Stmt::Assign { span, .. }
        | Stmt::For { span, .. }
        | Stmt::Return { span, .. } => *span,
        Stmt::Const(c) => c.span,
    }
}

fn describe_params(spec: &OpSpec) -> String {
    let mut parts: Vec<String> = spec
        .operands
        .iter()
        .map(|o| match o.kind {
            OperandKind::Required => o.name.to_string(),
            OperandKind::Optional => format!("{}?", o.name),
            OperandKind::Variadic => format!("{}...", o.name),
        })
        .collect();
    parts.extend(spec.attrs.iter().map(|a| match a.default {
        Some(d) => format!(
            "{} = {}",
            a.name,
            d.replace("vec! ", "").replace("vec!", "")
        ),
        None => a.name.to_string(),
    }));
    format!("({})", parts.join(", "))
}

fn param_list(b: &BlockDef) -> String {
    let v: Vec<&str> = b.params.iter().map(|p| p.name.name.as_str()).collect();
    format!("({})", v.join(", "))
}

/// A declared parameter type matches when dtype and rank agree and every
/// static dim is equal (symbolic dims in the declaration match any size).
fn type_matches(want: &TensorType, found: &TensorType) -> bool {
    want.dtype == found.dtype
        && want.rank() == found.rank()
        && want
            .shape
            .dims()
            .iter()
            .zip(found.shape.dims())
            .all(|(w, f)| match w {
                Dim::Static(_) => w == f,
                Dim::Sym(_) => true,
            })
}

/// The float an unbound `inf` or `nan` stands for (`-inf` is its negation).
fn special_float(name: &str) -> Option<f64> {
    match name {
        "inf" => Some(f64::INFINITY),
        "nan" => Some(f64::NAN),
        _ => None,
    }
}
