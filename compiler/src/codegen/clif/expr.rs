//! The expression emitter: one `match` over [`Expr`], scoped memoization
//! (common sub-expressions are emitted once) and loop-invariant hoisting.

use std::collections::{BTreeSet, HashMap, HashSet};

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    AbiParam, BlockArg, ExtFuncData, ExternalName, FuncRef, InstBuilder, MemFlagsData, Signature,
    StackSlot, StackSlotData, StackSlotKind, Type, UserExternalName, Value, types,
};
use cranelift_codegen::isa::{CallConv, TargetIsa};
use cranelift_frontend::FunctionBuilder;
use kiln_dialect::kernel::{Binary, Expr, Kernel, Reduction, Ty, Unary, Var};
use kiln_dialect::{DType, Dim};

use super::CodegenError;
use super::hoist;

/// The compute type of a value: the kernel's float type, i64 or bool (an
/// `i8` holding 0 or 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum T {
    F,
    I,
    B,
}

/// Emits a kernel's function body.
pub(super) struct Emitter<'a, 'f> {
    pub k: &'a Kernel,
    pub b: FunctionBuilder<'f>,
    /// The float compute type: `f32` for f32 kernels, else `f64`.
    pub fty: Type,
    pub call_conv: CallConv,
    /// Whether the ISA has fused multiply-add.
    pub fma: bool,
    pub begin: Value,
    pub end: Value,
    /// The clamped axis-0 range, once [`Emitter::axis0_range`] has run.
    pub range0: (Value, Value),
    pub dims: Vec<Value>,
    /// Base pointer of each input, then the output.
    pub bases: Vec<Value>,
    /// Per-axis sizes and element strides of each input, then the output.
    pub shapes: Vec<Vec<Value>>,
    pub strides: Vec<Vec<Value>>,
    /// Bound index variables.
    pub vars: HashMap<Var, Value>,
    /// The contraction accumulator, inside an epilogue.
    pub acc: Option<(Value, T)>,
    /// Four lanes of the accumulator, inside an epilogue on the vector path.
    pub vacc: Option<Value>,
    memo: Vec<HashMap<String, (Value, T)>>,
    /// Row buffers of the vector path: the key of a shared sub-expression
    /// (written in a lane variable) to that variable and the buffer's
    /// address; element `i` of the buffer holds its value at `var = i`.
    pub scratch: HashMap<String, (Var, Value)>,
    /// Lane-invariant floats of the vector path broadcast once per row
    /// (`interior::splat_candidates`): key to the stack slot holding the
    /// `f32x4` value.
    pub vsplat: HashMap<String, StackSlot>,
    /// Keys of `add(x, mul(a, b))` nodes of unrolled sums the vector path
    /// emits as one fused multiply-add (`interior::unroll`).
    pub fused: std::collections::HashSet<String>,
    /// The slot [`Emitter::pin`] stores to.
    pin_slot: Option<StackSlot>,
    /// The values already pinned: a value is stored once (an invariant
    /// that several hoisted expressions share was stored, after a reload
    /// from its spill slot, once per sharer, in every row's preheader).
    pinned: HashSet<Value>,
    imports: Vec<String>,
    funcs: HashMap<String, FuncRef>,
    /// The block that returns.
    pub ret: cranelift_codegen::ir::Block,
}

/// Block arguments from values.
pub(super) fn args(vs: &[Value]) -> Vec<BlockArg> {
    vs.iter().map(|&v| BlockArg::Value(v)).collect()
}

/// Memory flags of every load and store: in bounds, maybe unaligned.
pub(super) fn mem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Memory flags of a load from a kernel input: as [`mem`], and read-only
/// while the kernel runs (a launch never writes a buffer it reads), so
/// Cranelift may move the load to its use and fold it into the
/// instruction there.
pub(super) fn input_mem() -> MemFlagsData {
    mem().with_readonly().with_can_move()
}

impl<'a, 'f> Emitter<'a, 'f> {
    /// Starts the function: the entry block reads the arguments, the dims,
    /// the tensor pointers and computes every shape and stride.
    pub fn new(
        k: &'a Kernel,
        mut b: FunctionBuilder<'f>,
        isa: &dyn TargetIsa,
    ) -> Result<Emitter<'a, 'f>, CodegenError> {
        let ptr = isa.pointer_type();
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        let (argp, dimp, begin, end) = (p[0], p[1], p[2], p[3]);
        let dims: Vec<Value> = (0..k.dims.len())
            .map(|j| b.ins().load(types::I64, mem(), dimp, (8 * j) as i32))
            .collect();
        let psize = ptr.bytes() as i32;
        let bases: Vec<Value> = (0..=k.inputs.len())
            .map(|i| b.ins().load(ptr, mem(), argp, psize * i as i32))
            .collect();
        let mut shapes = Vec::new();
        let mut strides = Vec::new();
        for buf in k.inputs.iter().chain(std::iter::once(&k.output)) {
            let mut sh = Vec::new();
            for d in &buf.shape.0 {
                sh.push(match d {
                    Dim::Static(n) => b.ins().iconst(types::I64, *n as i64),
                    Dim::Sym(s) => {
                        let j = k.dims.iter().position(|x| x == s).ok_or_else(|| {
                            CodegenError::Kernel {
                                kernel: k.name.clone(),
                                message: format!(
                                    "`{}` has symbolic dim `{s}`, which is not in the kernel's dims",
                                    buf.name
                                ),
                            }
                        })?;
                        dims[j]
                    }
                });
            }
            let mut st = vec![b.ins().iconst(types::I64, 1); sh.len()];
            for a in (0..sh.len().saturating_sub(1)).rev() {
                st[a] = b.ins().imul(st[a + 1], sh[a + 1]);
            }
            shapes.push(sh);
            strides.push(st);
        }
        let fty = if k.float == Ty::F32 {
            types::F32
        } else {
            types::F64
        };
        let fma = isa
            .isa_flags()
            .iter()
            .any(|f| f.name == "has_fma" && f.as_bool() == Some(true));
        let ret = b.create_block();
        Ok(Emitter {
            k,
            b,
            fty,
            call_conv: isa.default_call_conv(),
            fma,
            begin,
            end,
            range0: (begin, end),
            dims,
            bases,
            shapes,
            strides,
            vars: HashMap::new(),
            acc: None,
            vacc: None,
            memo: vec![HashMap::new()],
            scratch: HashMap::new(),
            vsplat: HashMap::new(),
            fused: Default::default(),
            pin_slot: None,
            pinned: HashSet::new(),
            imports: Vec::new(),
            funcs: HashMap::new(),
            ret,
        })
    }

    /// Jumps to the return block, returns, and finishes the function;
    /// gives the helper names it imports.
    pub fn finish(mut self, isa: &dyn TargetIsa) -> Vec<String> {
        self.b.ins().jump(self.ret, &[]);
        self.b.switch_to_block(self.ret);
        self.b.ins().return_(&[]);
        self.b.seal_all_blocks();
        self.b.finalize(isa.frontend_config());
        self.imports
    }

    pub fn type_err(&self, e: &Expr, message: impl Into<String>) -> CodegenError {
        CodegenError::Type {
            kernel: self.k.name.clone(),
            expr: e.to_string(),
            message: message.into(),
        }
    }

    pub fn unsupported(&self, e: &Expr, message: impl Into<String>) -> CodegenError {
        CodegenError::Unsupported {
            kernel: self.k.name.clone(),
            expr: e.to_string(),
            message: message.into(),
        }
    }

    /// Opens a memo scope (a loop body or a conditional block).
    pub fn push_scope(&mut self) {
        self.memo.push(HashMap::new());
    }

    pub fn pop_scope(&mut self) {
        self.memo.pop();
    }

    /// Sets the memo aside (for [`Emitter::restore_memo`]), leaving one
    /// empty scope.
    pub fn take_memo(&mut self) -> Vec<HashMap<String, (Value, T)>> {
        std::mem::replace(&mut self.memo, vec![HashMap::new()])
    }

    pub fn restore_memo(&mut self, memo: Vec<HashMap<String, (Value, T)>>) {
        self.memo = memo;
    }

    fn lookup(&self, key: &str) -> Option<(Value, T)> {
        self.memo.iter().rev().find_map(|m| m.get(key).copied())
    }

    /// The Cranelift type of a compute type.
    pub fn clif_ty(&self, t: T) -> Type {
        match t {
            T::F => self.fty,
            T::I => types::I64,
            T::B => types::I8,
        }
    }

    pub fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    /// A float constant in the compute type.
    pub fn fconst(&mut self, x: f64) -> Value {
        if self.fty == types::F32 {
            self.b.ins().f32const(x as f32)
        } else {
            self.b.ins().f64const(x)
        }
    }

    /// Calls the runtime helper `name` with the given signature.
    pub fn call(&mut self, name: &str, params: &[Type], ret: Type, a: &[Value]) -> Value {
        let f = match self.funcs.get(name) {
            Some(&f) => f,
            None => {
                let mut sig = Signature::new(self.call_conv);
                sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
                sig.returns.push(AbiParam::new(ret));
                let sigref = self.b.import_signature(sig);
                let idx = self.imports.len() as u32;
                self.imports.push(name.to_string());
                let nref = self
                    .b
                    .func
                    .declare_imported_user_function(UserExternalName::new(0, idx));
                let f = self.b.import_function(ExtFuncData {
                    name: ExternalName::user(nref),
                    signature: sigref,
                    colocated: false,
                    patchable: false,
                });
                self.funcs.insert(name.to_string(), f);
                f
            }
        };
        let inst = self.b.ins().call(f, a);
        self.b.inst_results(inst)[0]
    }

    /// The static type of `e` (checked fully when it is emitted).
    pub fn type_of(&self, e: &Expr) -> Result<T, CodegenError> {
        Ok(match e {
            Expr::Float(_) => T::F,
            Expr::Int(_) | Expr::Var(_) | Expr::Dim(_) => T::I,
            Expr::Bool(_) => T::B,
            Expr::Acc => self
                .acc
                .map(|a| a.1)
                .ok_or_else(|| self.type_err(e, "`acc` outside a contraction epilogue"))?,
            Expr::Load { input, .. } => {
                let buf = self
                    .k
                    .inputs
                    .get(*input)
                    .ok_or_else(|| self.type_err(e, format!("no input {input}")))?;
                load_type(buf.dtype)
            }
            Expr::Unary(Unary::Not, _) => T::B,
            Expr::Unary(_, x) | Expr::Round(_, x) => self.type_of(x)?,
            Expr::Binary(op, a, _) => match op {
                Binary::Eq | Binary::Ne | Binary::Lt | Binary::Le | Binary::Gt | Binary::Ge => T::B,
                _ => self.type_of(a)?,
            },
            Expr::Select(_, a, _) => self.type_of(a)?,
            Expr::Cast(t, _) => match t {
                Ty::F32 | Ty::F64 => T::F,
                Ty::I64 => T::I,
                Ty::Bool => T::B,
            },
            Expr::Reduce { body, .. } => self.type_of(body)?,
        })
    }

    /// Emits, in the current block, every sub-expression of `e` that
    /// depends only on `bound` variables: the preheader of a loop.
    pub fn hoist(&mut self, e: &Expr, bound: &BTreeSet<Var>) -> Result<(), CodegenError> {
        let mut inv = Vec::new();
        hoist::invariants(e, bound, &mut inv);
        for x in inv {
            let (v, _) = self.emit(x)?;
            self.pin(v);
        }
        Ok(())
    }

    /// Stores `v` to a scratch stack slot, so that Cranelift computes it
    /// here: its optimizer places a pure value at its first use, and
    /// without this it put invariants such as a layer norm's `sum / n` and
    /// `1 / sqrt(var + eps)` inside every loop that used them (seen in the
    /// optimized CLIF; the likely cause is that their constant operands
    /// are rematerialized per block, which defeats the loop-invariant
    /// hoisting), recomputing the row statistics for every element.
    fn pin(&mut self, v: Value) {
        if !self.pinned.insert(v) {
            return;
        }
        let slot = match self.pin_slot {
            Some(s) => s,
            None => {
                let s = self.b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    16,
                    4,
                ));
                self.pin_slot = Some(s);
                s
            }
        };
        let ptr = self.b.func.dfg.value_type(self.bases[0]);
        self.b.ins().stack_store(ptr, v, slot, 0);
    }

    /// The variables bound now.
    pub fn bound(&self) -> BTreeSet<Var> {
        self.vars.keys().copied().collect()
    }

    /// Emits `e`, or reuses its value where it was emitted in a scope that
    /// is still open.
    pub fn emit(&mut self, e: &Expr) -> Result<(Value, T), CodegenError> {
        let key = if hoist::is_leaf(e) {
            None
        } else {
            let key = hoist::key(e);
            if let Some(v) = self.lookup(&key) {
                return Ok(v);
            }
            Some(key)
        };
        let v = match e {
            Expr::Float(x) => (self.fconst(*x), T::F),
            Expr::Int(i) => (self.iconst(*i), T::I),
            Expr::Bool(x) => (self.b.ins().iconst(types::I8, i64::from(*x)), T::B),
            Expr::Var(v) => match self.vars.get(v) {
                Some(&x) => (x, T::I),
                // The evaluator reads an unbound variable as 0.
                None => (self.iconst(0), T::I),
            },
            Expr::Dim(i) => match self.dims.get(*i as usize) {
                Some(&d) => (d, T::I),
                None => return Err(self.type_err(e, format!("dim{i} is not declared"))),
            },
            Expr::Acc => self
                .acc
                .ok_or_else(|| self.type_err(e, "`acc` outside a contraction epilogue"))?,
            Expr::Load {
                input,
                index,
                guard,
            } => self.load(e, *input, index, guard.as_deref())?,
            Expr::Unary(op, x) => {
                let x = self.emit(x)?;
                self.unary(e, *op, x)?
            }
            Expr::Binary(op, a, b) => {
                let a = self.emit(a)?;
                let b = self.emit(b)?;
                self.binary(e, *op, a, b)?
            }
            Expr::Select(c, a, b) => {
                let (c, ct) = self.emit(c)?;
                let (a, at) = self.emit(a)?;
                let (b, bt) = self.emit(b)?;
                if ct != T::B || at != bt {
                    return Err(self.type_err(e, "select needs a bool and two equal types"));
                }
                (self.b.ins().select(c, a, b), at)
            }
            Expr::Cast(t, x) => {
                let x = self.emit(x)?;
                self.cast(*t, x)
            }
            Expr::Round(d, x) => {
                let x = self.emit(x)?;
                self.round(e, *d, x)?
            }
            Expr::Reduce {
                op,
                var,
                extent,
                body,
            } => self.reduce(e, *op, *var, extent, body)?,
        };
        if let Some(key) = key
            && let Some(m) = self.memo.last_mut()
        {
            m.insert(key, v);
        }
        Ok(v)
    }

    fn unary(
        &mut self,
        e: &Expr,
        op: Unary,
        (x, t): (Value, T),
    ) -> Result<(Value, T), CodegenError> {
        Ok(match (op, t) {
            (Unary::Not, T::B) => (self.b.ins().icmp_imm_s(IntCC::Equal, x, 0), T::B),
            (Unary::Neg, T::I) => (self.b.ins().ineg(x), T::I),
            (Unary::Abs, T::I) => (self.b.ins().iabs(x), T::I),
            (Unary::Floor | Unary::Ceil | Unary::Round, T::I) => (x, T::I),
            (Unary::Neg, T::F) => (self.b.ins().fneg(x), T::F),
            (Unary::Abs, T::F) => (self.b.ins().fabs(x), T::F),
            (Unary::Sqrt, T::F) => (self.b.ins().sqrt(x), T::F),
            (Unary::Floor, T::F) => (self.b.ins().floor(x), T::F),
            (Unary::Ceil, T::F) => (self.b.ins().ceil(x), T::F),
            (Unary::Round, T::F) => (self.b.ins().nearest(x), T::F),
            (Unary::Exp, T::F) if self.fty == types::F32 => (self.exp_f32(x), T::F),
            (Unary::Erf, T::F) if self.fty == types::F32 => (self.erf_f32(x), T::F),
            (Unary::Tanh, T::F) if self.fty == types::F32 => (self.tanh_f32(x), T::F),
            (
                Unary::Exp | Unary::Log | Unary::Tanh | Unary::Erf | Unary::Sin | Unary::Cos,
                T::F,
            ) => {
                let name = format!("kiln_{}_{}", op.name(), self.fty);
                let fty = self.fty;
                (self.call(&name, &[fty], fty, &[x]), T::F)
            }
            (op, t) => return Err(self.type_err(e, format!("{} of {t:?}", op.name()))),
        })
    }

    fn binary(
        &mut self,
        e: &Expr,
        op: Binary,
        (a, at): (Value, T),
        (b, bt): (Value, T),
    ) -> Result<(Value, T), CodegenError> {
        use Binary::*;
        if at != bt {
            return Err(self.type_err(e, format!("{} of {at:?} and {bt:?}", op.name())));
        }
        let fcmp = |s: &mut Self, cc| (s.b.ins().fcmp(cc, a, b), T::B);
        let icmp = |s: &mut Self, cc| (s.b.ins().icmp(cc, a, b), T::B);
        Ok(match at {
            T::F => match op {
                Add => (self.b.ins().fadd(a, b), T::F),
                Sub => (self.b.ins().fsub(a, b), T::F),
                Mul => (self.b.ins().fmul(a, b), T::F),
                Div => (self.b.ins().fdiv(a, b), T::F),
                Max => (self.b.ins().fmax(a, b), T::F),
                Min => (self.b.ins().fmin(a, b), T::F),
                Pow => {
                    let (name, fty) = (format!("kiln_pow_{}", self.fty), self.fty);
                    (self.call(&name, &[fty, fty], fty, &[a, b]), T::F)
                }
                Eq => fcmp(self, FloatCC::Equal),
                Ne => fcmp(self, FloatCC::NotEqual),
                Lt => fcmp(self, FloatCC::LessThan),
                Le => fcmp(self, FloatCC::LessThanOrEqual),
                Gt => fcmp(self, FloatCC::GreaterThan),
                Ge => fcmp(self, FloatCC::GreaterThanOrEqual),
                Rem | And | Or => return Err(self.type_err(e, "of floats")),
            },
            T::I => match op {
                Add => (self.b.ins().iadd(a, b), T::I),
                Sub => (self.b.ins().isub(a, b), T::I),
                Mul => (self.b.ins().imul(a, b), T::I),
                Div | Rem => (self.int_div(op == Div, a, b), T::I),
                Max => (self.b.ins().smax(a, b), T::I),
                Min => (self.b.ins().smin(a, b), T::I),
                Pow => (
                    self.call("kiln_ipow", &[types::I64; 2], types::I64, &[a, b]),
                    T::I,
                ),
                Eq => icmp(self, IntCC::Equal),
                Ne => icmp(self, IntCC::NotEqual),
                Lt => icmp(self, IntCC::SignedLessThan),
                Le => icmp(self, IntCC::SignedLessThanOrEqual),
                Gt => icmp(self, IntCC::SignedGreaterThan),
                Ge => icmp(self, IntCC::SignedGreaterThanOrEqual),
                And | Or => return Err(self.type_err(e, "of integers")),
            },
            T::B => match op {
                And => (self.b.ins().band(a, b), T::B),
                Or => (self.b.ins().bor(a, b), T::B),
                Eq => icmp(self, IntCC::Equal),
                Ne => icmp(self, IntCC::NotEqual),
                _ => return Err(self.type_err(e, "of bools")),
            },
        })
    }

    /// i64 division (toward zero) or remainder that never traps: 0 for a
    /// zero divisor, wrapping for `MIN / -1`.
    fn int_div(&mut self, div: bool, a: Value, b: Value) -> Value {
        let zero = self.b.ins().icmp_imm_s(IntCC::Equal, b, 0);
        let m1 = self.b.ins().icmp_imm_s(IntCC::Equal, b, -1);
        let special = self.b.ins().bor(zero, m1);
        let one = self.iconst(1);
        let safe = self.b.ins().select(special, one, b);
        let z = self.iconst(0);
        if div {
            let q = self.b.ins().sdiv(a, safe);
            let neg = self.b.ins().ineg(a);
            let q = self.b.ins().select(m1, neg, q);
            self.b.ins().select(zero, z, q)
        } else {
            let r = self.b.ins().srem(a, safe);
            self.b.ins().select(special, z, r)
        }
    }

    fn cast(&mut self, t: Ty, (x, xt): (Value, T)) -> (Value, T) {
        let fty = self.fty;
        match (t, xt) {
            (Ty::F32 | Ty::F64, T::F) => (x, T::F),
            (Ty::F32 | Ty::F64, T::I) => (self.int_to_float(x), T::F),
            (Ty::F32 | Ty::F64, T::B) => {
                let i = self.b.ins().uextend(types::I64, x);
                (self.b.ins().fcvt_from_sint(fty, i), T::F)
            }
            (Ty::I64, T::F) => (self.b.ins().fcvt_to_sint_sat(types::I64, x), T::I),
            (Ty::I64, T::I) => (x, T::I),
            (Ty::I64, T::B) => (self.b.ins().uextend(types::I64, x), T::I),
            (Ty::Bool, T::F) => {
                let z = self.fconst(0.0);
                (self.b.ins().fcmp(FloatCC::NotEqual, x, z), T::B)
            }
            (Ty::Bool, T::I) => (self.b.ins().icmp_imm_s(IntCC::NotEqual, x, 0), T::B),
            (Ty::Bool, T::B) => (x, T::B),
        }
    }

    /// An i64 as the compute float, rounded as the evaluator rounds it
    /// (to f64, then to the kernel's float type).
    pub fn int_to_float(&mut self, x: Value) -> Value {
        let d = self.b.ins().fcvt_from_sint(types::F64, x);
        if self.fty == types::F32 {
            self.b.ins().fdemote(types::F32, d)
        } else {
            d
        }
    }

    /// The compute float as f64.
    pub fn f64_of_compute(&mut self, x: Value) -> Value {
        if self.fty == types::F32 {
            self.b.ins().fpromote(types::F64, x)
        } else {
            x
        }
    }

    /// An f64 as the compute float.
    pub fn compute_of_f64(&mut self, x: Value) -> Value {
        if self.fty == types::F32 {
            self.b.ins().fdemote(types::F32, x)
        } else {
            x
        }
    }

    fn round(
        &mut self,
        e: &Expr,
        d: DType,
        (x, t): (Value, T),
    ) -> Result<(Value, T), CodegenError> {
        match t {
            T::F => Ok((self.round_float(d, x), T::F)),
            T::I => Ok((self.wrap_int(d, x), T::I)),
            T::B => Err(self.type_err(e, format!("round<{d}> of a bool"))),
        }
    }

    /// Wraps an i64 to the width of `d` as the evaluator does.
    pub fn wrap_int(&mut self, d: DType, x: Value) -> Value {
        if d == DType::Bool {
            let c = self.b.ins().icmp_imm_s(IntCC::NotEqual, x, 0);
            return self.b.ins().uextend(types::I64, c);
        }
        let bits = d.bits();
        if bits >= 64 {
            return x;
        }
        let shift = i64::from(64 - bits);
        let up = self.b.ins().ishl_imm_s(x, shift);
        if d.int_range().is_some_and(|(lo, _)| lo < 0) {
            self.b.ins().sshr_imm_s(up, shift)
        } else {
            self.b.ins().ushr_imm_s(up, shift)
        }
    }

    fn reduce(
        &mut self,
        e: &Expr,
        op: Reduction,
        var: Var,
        extent: &Expr,
        body: &Expr,
    ) -> Result<(Value, T), CodegenError> {
        if self.vars.contains_key(&var) {
            return Err(self.unsupported(e, format!("reduction variable {var} is already bound")));
        }
        let (n, nt) = self.emit(extent)?;
        if nt != T::I {
            return Err(self.type_err(e, "the extent is not an integer"));
        }
        let t = self.type_of(body)?;
        let init = match (t, op) {
            (T::F, Reduction::Sum) => self.fconst(0.0),
            (T::F, Reduction::Prod) => self.fconst(1.0),
            (T::F, Reduction::Max) => self.fconst(f64::NEG_INFINITY),
            (T::F, Reduction::Min) => self.fconst(f64::INFINITY),
            (T::I, Reduction::Sum) => self.iconst(0),
            (T::I, Reduction::Prod) => self.iconst(1),
            (T::I, Reduction::Max) => self.iconst(i64::MIN),
            (T::I, Reduction::Min) => self.iconst(i64::MAX),
            (T::B, _) => return Err(self.type_err(e, "a reduction of bools")),
        };
        // The body's invariant parts, once before the loop.
        let mut bound = self.bound();
        bound.remove(&var);
        self.hoist(body, &bound)?;
        let (start, init) = if t == T::F
            && matches!(op, Reduction::Sum | Reduction::Max | Reduction::Min)
            && super::vmap::vectorizable(self, body, var)
        {
            self.vreduce(op, var, n, body, init)?
        } else {
            (self.iconst(0), init)
        };
        let out = self.for_loop(start, n, 1, &[init], |s, i, acc| {
            s.vars.insert(var, i);
            let (v, vt) = s.emit(body)?;
            if vt != t {
                return Err(s.type_err(body, "the body's type changes"));
            }
            let a = acc[0];
            let r = match (t, op) {
                (T::F, Reduction::Sum) => s.b.ins().fadd(a, v),
                (T::F, Reduction::Prod) => s.b.ins().fmul(a, v),
                (T::F, Reduction::Max) => s.b.ins().fmax(a, v),
                (T::F, Reduction::Min) => s.b.ins().fmin(a, v),
                (_, Reduction::Sum) => s.b.ins().iadd(a, v),
                (_, Reduction::Prod) => s.b.ins().imul(a, v),
                (_, Reduction::Max) => s.b.ins().smax(a, v),
                (_, Reduction::Min) => s.b.ins().smin(a, v),
            };
            s.vars.remove(&var);
            Ok(vec![r])
        })?;
        Ok((out.1[0], t))
    }
}

/// The compute type a load of `dtype` gives.
pub(super) fn load_type(dtype: DType) -> T {
    if dtype == DType::Bool {
        T::B
    } else if dtype.has_integer_values() {
        T::I
    } else {
        T::F
    }
}
