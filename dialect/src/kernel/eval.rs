//! The reference evaluator of the kernel dialect: runs a [`Kernel`] on
//! interpreter tensors, one output element at a time, exactly as the
//! module documentation says. Float arithmetic in an f32 kernel is rounded
//! to f32 after every operation; transcendental functions are computed in
//! f64 and rounded. A reduction whose variables have not changed since it
//! was last evaluated is not folded again (the hoisting backends do), so
//! `exp(x - max_row) / sum_row` costs a row per row, not per element.

use std::collections::HashMap;

use thiserror::Error;

use super::{Attention, Binary, Body, Expr, Kernel, Reduction, Ty, Unary, Var};
use crate::DType;
use crate::interp::Tensor;
use crate::interp::tensor::strides;
use crate::numeric;

/// Why a kernel could not be evaluated.
#[derive(Debug, Error, PartialEq)]
pub enum EvalError {
    #[error("kernel `{kernel}`: {found} inputs given, {expected} declared")]
    Arity {
        kernel: String,
        expected: usize,
        found: usize,
    },
    #[error(
        "kernel `{kernel}`: input {input} (`{name}`) has shape {found:?}, the kernel expects {expected:?}"
    )]
    InputShape {
        kernel: String,
        input: usize,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("kernel `{kernel}`: {message}")]
    Dim { kernel: String, message: String },
    #[error("kernel `{kernel}`: load of input {input} at {index:?} is outside its shape {shape:?}")]
    OutOfBounds {
        kernel: String,
        input: usize,
        index: Vec<i64>,
        shape: Vec<usize>,
    },
    #[error("kernel `{kernel}`: {message}")]
    Type { kernel: String, message: String },
}

/// A scalar value.
#[derive(Clone, Copy, Debug, PartialEq)]
enum V {
    F(f64),
    I(i64),
    B(bool),
}

struct Ctx<'a> {
    k: &'a Kernel,
    inputs: &'a [&'a Tensor],
    strides: Vec<Vec<usize>>,
    dims: Vec<i64>,
    vars: Vec<i64>,
    acc: Option<V>,
    /// Per reduction (by address): the variables it depends on, or `None`
    /// when it reads the accumulator.
    free: HashMap<*const Expr, Option<Vec<Var>>>,
    /// Per reduction: its last value and the values of its variables then.
    cache: HashMap<*const Expr, (Vec<i64>, V)>,
}

/// Evaluates `k` on `inputs` (one tensor per [`Kernel::inputs`], with
/// concrete shapes), with the symbolic dims bound by `dims`. Returns the
/// output tensor, its values rounded to the output's type.
pub fn run(
    k: &Kernel,
    inputs: &[&Tensor],
    dims: &HashMap<String, usize>,
) -> Result<Tensor, EvalError> {
    let err_dim = |message: String| EvalError::Dim {
        kernel: k.name.clone(),
        message,
    };
    if inputs.len() != k.inputs.len() {
        return Err(EvalError::Arity {
            kernel: k.name.clone(),
            expected: k.inputs.len(),
            found: inputs.len(),
        });
    }
    for (i, (b, t)) in k.inputs.iter().zip(inputs).enumerate() {
        let want = b.shape.resolve(dims).map_err(|s| {
            err_dim(format!(
                "input `{}` has symbolic dim `{s}` with no size",
                b.name
            ))
        })?;
        if want != t.shape {
            return Err(EvalError::InputShape {
                kernel: k.name.clone(),
                input: i,
                name: b.name.clone(),
                expected: want,
                found: t.shape.clone(),
            });
        }
    }
    let dim_values = k
        .dims
        .iter()
        .map(|d| {
            dims.get(d)
                .map(|&n| n as i64)
                .ok_or_else(|| err_dim(format!("no size for symbolic dim `{d}`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out_shape = k.output.shape.resolve(dims).map_err(|s| {
        err_dim(format!(
            "output `{}` has symbolic dim `{s}` with no size",
            k.output.name
        ))
    })?;
    let mut cx = Ctx {
        k,
        inputs,
        strides: inputs.iter().map(|t| strides(&t.shape)).collect(),
        dims: dim_values,
        vars: Vec::new(),
        acc: None,
        free: HashMap::new(),
        cache: HashMap::new(),
    };
    let r = out_shape.len();
    match &k.body {
        Body::Map { expr } => {
            free_vars(expr, &mut cx.free);
        }
        Body::Attention(t) => {
            for e in t.exprs() {
                free_vars(e, &mut cx.free);
            }
        }
        Body::Contract {
            extent,
            a,
            b,
            epilogue,
            ..
        } => {
            for e in [extent, a, b, epilogue] {
                free_vars(e, &mut cx.free);
            }
        }
    }
    let n: usize = out_shape.iter().product();
    let mut data = Vec::with_capacity(n);
    let mut idx = vec![0usize; r];
    let (mut weights, mut weights_row) = (Vec::new(), None);
    for flat in 0..n {
        crate::interp::tensor::unravel(flat, &out_shape, &mut idx);
        for (a, &i) in idx.iter().enumerate() {
            cx.set(Var(a as u32), i as i64);
        }
        let v = match &k.body {
            Body::Map { expr } => cx.eval(expr)?,
            Body::Attention(t) => {
                // The weights of the keys, once per output row (the
                // value's columns are the fastest axis).
                let row = flat / out_shape[r - 1].max(1);
                if weights_row != Some(row) {
                    weights = cx.attention_weights(t, idx[r - 2] as i64)?;
                    weights_row = Some(row);
                }
                let mut acc = 0.0;
                for (j, w) in weights.iter().enumerate() {
                    if *w != 0.0 {
                        cx.set(t.j, j as i64);
                        acc += w * cx.float(&t.v)?;
                    }
                }
                cx.acc = Some(cx.fr(acc));
                let v = cx.eval(&t.epilogue)?;
                cx.acc = None;
                v
            }
            Body::Contract {
                k: kv,
                extent,
                a,
                b,
                epilogue,
            } => {
                let n = cx.int(extent)?;
                let mut acc: Option<V> = None;
                for p in 0..n.max(0) {
                    cx.set(*kv, p);
                    let (x, y) = (cx.eval(a)?, cx.eval(b)?);
                    let prod = cx.binary(Binary::Mul, x, y)?;
                    acc = Some(match acc {
                        None => prod,
                        Some(s) => cx.binary(Binary::Add, s, prod)?,
                    });
                }
                cx.acc = Some(acc.unwrap_or(match k.float {
                    Ty::F64 | Ty::F32 => V::F(0.0),
                    Ty::I64 | Ty::Bool => V::I(0),
                }));
                let v = cx.eval(epilogue)?;
                cx.acc = None;
                v
            }
        };
        data.push(store(k.output.dtype, v));
    }
    Ok(Tensor::new(k.output.dtype, &out_shape, data))
}

/// The value an element of `dtype` holds after storing `v`.
fn store(dtype: DType, v: V) -> f64 {
    match v {
        V::F(x) => numeric::round_to(dtype, x),
        V::I(i) => {
            if dtype.has_integer_values() {
                wrap(dtype, i) as f64
            } else {
                numeric::round_to(dtype, i as f64)
            }
        }
        V::B(b) => numeric::round_to(dtype, f64::from(u8::from(b))),
    }
}

/// Wraps an i64 to the width of an integer type (two's complement).
fn wrap(dtype: DType, i: i64) -> i64 {
    let bits = dtype.bits();
    if bits >= 64 || dtype == DType::Bool {
        return if dtype == DType::Bool {
            i64::from(i != 0)
        } else {
            i
        };
    }
    let signed = dtype.int_range().is_some_and(|(lo, _)| lo < 0);
    let shift = 64 - bits;
    if signed {
        (i << shift) >> shift
    } else {
        ((i as u64) << shift >> shift) as i64
    }
}

impl Ctx<'_> {
    fn set(&mut self, v: Var, x: i64) {
        let i = v.0 as usize;
        if self.vars.len() <= i {
            self.vars.resize(i + 1, 0);
        }
        self.vars[i] = x;
    }

    fn type_err(&self, message: String) -> EvalError {
        EvalError::Type {
            kernel: self.k.name.clone(),
            message,
        }
    }

    /// Rounds a float result to the kernel's float type.
    fn fr(&self, x: f64) -> V {
        V::F(match self.k.float {
            Ty::F32 => x as f32 as f64,
            Ty::F64 | Ty::I64 | Ty::Bool => x,
        })
    }

    fn float(&mut self, e: &Expr) -> Result<f64, EvalError> {
        match self.eval(e)? {
            V::F(x) => Ok(x),
            v => Err(self.type_err(format!("expected a float, found {v:?} from {e}"))),
        }
    }

    /// The softmax weights of every key for query `m` (the other output
    /// variables set): `exp(s - max) / sum`, scores computed in the
    /// kernel's float type, the softmax in f64; all zero when every score
    /// is `-inf`.
    fn attention_weights(&mut self, t: &Attention, m: i64) -> Result<Vec<f64>, EvalError> {
        let keys = self.int(&t.keys)?.max(0);
        let depth = self.int(&t.depth)?.max(0);
        let scale = self.eval(&t.scale)?;
        let offset = match &t.causal {
            Some(c) => Some(self.int(c)?),
            None => None,
        };
        let mut scores = Vec::with_capacity(keys as usize);
        for j in 0..keys {
            self.set(t.j, j);
            if offset.is_some_and(|o| j > m + o) {
                scores.push(f64::NEG_INFINITY);
                continue;
            }
            let mut dot = self.fr(0.0);
            for d in 0..depth {
                self.set(t.d, d);
                let (q, k) = (self.eval(&t.q)?, self.eval(&t.k)?);
                let prod = self.binary(Binary::Mul, q, k)?;
                dot = self.binary(Binary::Add, dot, prod)?;
            }
            let mut s = self.binary(Binary::Mul, dot, scale)?;
            if let Some(b) = &t.bias {
                let b = self.eval(b)?;
                s = self.binary(Binary::Add, s, b)?;
            }
            match s {
                V::F(x) => scores.push(x),
                v => return Err(self.type_err(format!("an attention score gave {v:?}"))),
            }
        }
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            return Ok(vec![0.0; scores.len()]);
        }
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        Ok(e.iter().map(|x| x / sum).collect())
    }

    fn int(&mut self, e: &Expr) -> Result<i64, EvalError> {
        match self.eval(e)? {
            V::I(i) => Ok(i),
            v => Err(self.type_err(format!("expected an i64, found {v:?} from {e}"))),
        }
    }

    fn eval(&mut self, e: &Expr) -> Result<V, EvalError> {
        Ok(match e {
            Expr::Float(x) => self.fr(*x),
            Expr::Int(i) => V::I(*i),
            Expr::Bool(b) => V::B(*b),
            Expr::Var(v) => V::I(self.vars.get(v.0 as usize).copied().unwrap_or(0)),
            Expr::Dim(i) => V::I(
                *self
                    .dims
                    .get(*i as usize)
                    .ok_or_else(|| self.type_err(format!("dim{i} is not declared")))?,
            ),
            Expr::Acc => self
                .acc
                .ok_or_else(|| self.type_err("`acc` outside a contraction epilogue".into()))?,
            Expr::Load {
                input,
                index,
                guard,
            } => {
                if let Some(g) = guard {
                    match self.eval(g)? {
                        V::B(true) => {}
                        V::B(false) => return Ok(self.zero_of(*input)),
                        v => return Err(self.type_err(format!("guard {g} gave {v:?}"))),
                    }
                }
                let t = *self
                    .inputs
                    .get(*input)
                    .ok_or_else(|| self.type_err(format!("no input {input}")))?;
                let mut idx = Vec::with_capacity(index.len());
                for ie in index {
                    idx.push(self.int(ie)?);
                }
                let oob = idx.len() != t.shape.len()
                    || idx
                        .iter()
                        .zip(&t.shape)
                        .any(|(&i, &n)| i < 0 || i as usize >= n);
                if oob {
                    return Err(EvalError::OutOfBounds {
                        kernel: self.k.name.clone(),
                        input: *input,
                        index: idx,
                        shape: t.shape.clone(),
                    });
                }
                let flat: usize = idx
                    .iter()
                    .zip(&self.strides[*input])
                    .map(|(&i, &s)| i as usize * s)
                    .sum();
                self.decode(*input, t.data[flat])
            }
            Expr::Unary(op, x) => {
                let x = self.eval(x)?;
                self.unary(*op, x)?
            }
            Expr::Binary(op, a, b) => {
                let (a, b) = (self.eval(a)?, self.eval(b)?);
                self.binary(*op, a, b)?
            }
            Expr::Select(c, a, b) => {
                let c = self.eval(c)?;
                let (a, b) = (self.eval(a)?, self.eval(b)?);
                match c {
                    V::B(c) => {
                        if c {
                            a
                        } else {
                            b
                        }
                    }
                    v => return Err(self.type_err(format!("select on {v:?}"))),
                }
            }
            Expr::Cast(t, x) => {
                let x = self.eval(x)?;
                match (t, x) {
                    (Ty::F32 | Ty::F64, V::F(f)) => self.fr(f),
                    (Ty::F32 | Ty::F64, V::I(i)) => self.fr(i as f64),
                    (Ty::F32 | Ty::F64, V::B(b)) => V::F(f64::from(u8::from(b))),
                    (Ty::I64, V::F(f)) => V::I(f as i64),
                    (Ty::I64, V::I(i)) => V::I(i),
                    (Ty::I64, V::B(b)) => V::I(i64::from(b)),
                    (Ty::Bool, V::F(f)) => V::B(f != 0.0),
                    (Ty::Bool, V::I(i)) => V::B(i != 0),
                    (Ty::Bool, V::B(b)) => V::B(b),
                }
            }
            Expr::Round(d, x) => match self.eval(x)? {
                V::F(f) => V::F(numeric::round_to(*d, f)),
                V::I(i) => V::I(wrap(*d, i)),
                v => return Err(self.type_err(format!("round<{d}> of {v:?}"))),
            },
            Expr::Reduce {
                op,
                var,
                extent,
                body,
            } => {
                // A reduction whose variables have not changed since its
                // last evaluation has the same value: reuse it (the
                // hoisting a backend does; values are unchanged).
                let key: Option<Vec<i64>> = match self.free.get(&(e as *const Expr)) {
                    Some(Some(vars)) => Some(
                        vars.iter()
                            .map(|v| self.vars.get(v.0 as usize).copied().unwrap_or(0))
                            .collect(),
                    ),
                    _ => None,
                };
                if let Some(key) = &key
                    && let Some((k, v)) = self.cache.get(&(e as *const Expr))
                    && k == key
                {
                    return Ok(*v);
                }
                let v = self.fold(*op, *var, extent, body)?;
                if let Some(key) = key {
                    self.cache.insert(e as *const Expr, (key, v));
                }
                v
            }
        })
    }

    /// The fold of `body` over `var` in `0 .. extent`.
    fn fold(
        &mut self,
        op: Reduction,
        var: Var,
        extent: &Expr,
        body: &Expr,
    ) -> Result<V, EvalError> {
        let n = self.int(extent)?;
        let mut acc: Option<V> = None;
        // The variable is bound inside the fold only: a fold nested in
        // another over the same variable leaves the outer one's value.
        let outer = self.vars.get(var.0 as usize).copied();
        for p in 0..n.max(0) {
            self.set(var, p);
            let v = self.eval(body)?;
            acc = Some(match acc {
                None => v,
                Some(s) => self.binary(
                    match op {
                        Reduction::Sum => Binary::Add,
                        Reduction::Prod => Binary::Mul,
                        Reduction::Max => Binary::Max,
                        Reduction::Min => Binary::Min,
                    },
                    s,
                    v,
                )?,
            });
        }
        if let Some(x) = outer {
            self.set(var, x);
        }
        Ok(match acc {
            Some(v) => v,
            None => self.identity(op),
        })
    }

    /// The fold of an empty range: in the kernel's float type.
    fn identity(&self, op: Reduction) -> V {
        match op {
            Reduction::Sum => V::F(0.0),
            Reduction::Prod => V::F(1.0),
            Reduction::Max => V::F(f64::NEG_INFINITY),
            Reduction::Min => V::F(f64::INFINITY),
        }
    }

    fn zero_of(&self, input: usize) -> V {
        let dtype = self.k.inputs.get(input).map_or(DType::F32, |b| b.dtype);
        self.decode_as(dtype, 0.0)
    }

    fn decode(&self, input: usize, x: f64) -> V {
        let dtype = self.k.inputs[input].dtype;
        self.decode_as(dtype, x)
    }

    fn decode_as(&self, dtype: DType, x: f64) -> V {
        if dtype == DType::Bool {
            V::B(x != 0.0)
        } else if dtype.has_integer_values() {
            V::I(x as i64)
        } else {
            self.fr(x)
        }
    }

    fn unary(&self, op: Unary, x: V) -> Result<V, EvalError> {
        Ok(match (op, x) {
            (Unary::Not, V::B(b)) => V::B(!b),
            (Unary::Neg, V::I(i)) => V::I(i.wrapping_neg()),
            (Unary::Abs, V::I(i)) => V::I(i.wrapping_abs()),
            (Unary::Floor | Unary::Ceil | Unary::Round, V::I(i)) => V::I(i),
            (op, V::F(f)) => self.fr(match op {
                Unary::Neg => -f,
                Unary::Abs => f.abs(),
                Unary::Exp => f.exp(),
                Unary::Log => f.ln(),
                Unary::Sqrt => f.sqrt(),
                Unary::Tanh => f.tanh(),
                Unary::Erf => libm::erf(f),
                Unary::Sin => f.sin(),
                Unary::Cos => f.cos(),
                Unary::Floor => f.floor(),
                Unary::Ceil => f.ceil(),
                Unary::Round => f.round_ties_even(),
                Unary::Not => {
                    return Err(self.type_err(format!("not of a float {f}")));
                }
            }),
            (op, v) => return Err(self.type_err(format!("{} of {v:?}", op.name()))),
        })
    }

    fn binary(&self, op: Binary, a: V, b: V) -> Result<V, EvalError> {
        use Binary::*;
        Ok(match (a, b) {
            (V::F(x), V::F(y)) => match op {
                Add => self.fr(x + y),
                Sub => self.fr(x - y),
                Mul => self.fr(x * y),
                Div => self.fr(x / y),
                Pow => self.fr(x.powf(y)),
                Max => self.fr(if x.is_nan() || y.is_nan() {
                    f64::NAN
                } else {
                    x.max(y)
                }),
                Min => self.fr(if x.is_nan() || y.is_nan() {
                    f64::NAN
                } else {
                    x.min(y)
                }),
                Eq => V::B(x == y),
                Ne => V::B(x != y),
                Lt => V::B(x < y),
                Le => V::B(x <= y),
                Gt => V::B(x > y),
                Ge => V::B(x >= y),
                Rem | And | Or => {
                    return Err(self.type_err(format!("{} of floats", op.name())));
                }
            },
            (V::I(x), V::I(y)) => match op {
                Add => V::I(x.wrapping_add(y)),
                Sub => V::I(x.wrapping_sub(y)),
                Mul => V::I(x.wrapping_mul(y)),
                Div => V::I(if y == 0 { 0 } else { x.wrapping_div(y) }),
                Rem => V::I(if y == 0 { 0 } else { x.wrapping_rem(y) }),
                Pow => V::I(int_pow(x, y)),
                Max => V::I(x.max(y)),
                Min => V::I(x.min(y)),
                Eq => V::B(x == y),
                Ne => V::B(x != y),
                Lt => V::B(x < y),
                Le => V::B(x <= y),
                Gt => V::B(x > y),
                Ge => V::B(x >= y),
                And | Or => return Err(self.type_err(format!("{} of integers", op.name()))),
            },
            (V::B(x), V::B(y)) => match op {
                And => V::B(x && y),
                Or => V::B(x || y),
                Eq => V::B(x == y),
                Ne => V::B(x != y),
                _ => return Err(self.type_err(format!("{} of bools", op.name()))),
            },
            (a, b) => {
                return Err(self.type_err(format!("{} of mixed types {a:?} and {b:?}", op.name())));
            }
        })
    }
}

/// Records, for every reduction in `e` (by address), the variables it
/// depends on (those it uses minus its own), or `None` when it reads the
/// accumulator; returns the variables `e` uses and whether it reads `acc`.
fn free_vars(
    e: &Expr,
    out: &mut HashMap<*const Expr, Option<Vec<Var>>>,
) -> (std::collections::BTreeSet<Var>, bool) {
    let mut vars = std::collections::BTreeSet::new();
    let mut acc = false;
    match e {
        Expr::Var(v) => {
            vars.insert(*v);
        }
        Expr::Acc => acc = true,
        _ => {}
    }
    e.for_each_child(|c| {
        let (v, a) = free_vars(c, out);
        vars.extend(v);
        acc |= a;
    });
    if let Expr::Reduce { var, .. } = e {
        vars.remove(var);
        out.insert(
            e as *const Expr,
            (!acc).then(|| vars.iter().copied().collect()),
        );
    }
    (vars, acc)
}

/// Integer power, wrapping; a negative exponent gives 0 unless the base is
/// 1 or -1.
fn int_pow(x: i64, y: i64) -> i64 {
    if y < 0 {
        return match x {
            1 => 1,
            -1 => {
                if y % 2 == 0 {
                    1
                } else {
                    -1
                }
            }
            _ => 0,
        };
    }
    x.wrapping_pow(y.min(u32::MAX as i64) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{Buffer, Expr};
    use crate::{Dim, Shape};

    fn buf(name: &str, dtype: DType, dims: Vec<Dim>) -> Buffer {
        Buffer {
            name: name.into(),
            dtype,
            shape: Shape(dims),
        }
    }

    /// The attention template against its map form (`Attention::as_map`,
    /// evaluated as a map kernel) and, for one row, against values computed
    /// here in f64: grouped-query heads, a bias, a causal offset that
    /// leaves the first queries without keys, an epilogue; f64 throughout.
    #[test]
    fn attention_as_its_map_form_and_by_hand() {
        use crate::kernel::Attention;
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
        let (h, hkv, sq, skv, d) = (4usize, 2usize, 5usize, 3usize, 6usize);
        let v = |i| Expr::Var(Var(i));
        let (j, dv) = (Var(4), Var(5));
        let kh = Expr::bin(Binary::Div, v(1), Expr::Int(2));
        let shape = |a: usize, b: usize, c: usize| {
            vec![
                Dim::Static(1),
                Dim::Static(a as u64),
                Dim::Static(b as u64),
                Dim::Static(c as u64),
            ]
        };
        let t = Attention {
            j,
            keys: Expr::Int(skv as i64),
            d: dv,
            depth: Expr::Int(d as i64),
            q: Expr::load(0, vec![v(0), v(1), v(2), Expr::Var(dv)]),
            k: Expr::load(1, vec![v(0), kh.clone(), Expr::Var(j), Expr::Var(dv)]),
            v: Expr::load(2, vec![v(0), kh, Expr::Var(j), v(3)]),
            scale: Expr::Float(0.4),
            bias: Some(Expr::load(3, vec![v(2), Expr::Var(j)])),
            causal: Some(Expr::Int(skv as i64 - sq as i64)),
            epilogue: Expr::bin(Binary::Mul, Expr::Acc, Expr::Float(2.0)),
        };
        let inputs = vec![
            buf("q", DType::F64, shape(h, sq, d)),
            buf("k", DType::F64, shape(hkv, skv, d)),
            buf("v", DType::F64, shape(hkv, skv, d)),
            buf(
                "bias",
                DType::F64,
                vec![Dim::Static(sq as u64), Dim::Static(skv as u64)],
            ),
        ];
        let kernel = Kernel {
            name: "attention".into(),
            inputs: inputs.clone(),
            output: buf("o", DType::F64, shape(h, sq, d)),
            dims: vec![],
            float: Ty::F64,
            body: Body::Attention(Box::new(t.clone())),
        };
        let map = kernel.attention_as_map();
        let tensors: Vec<Tensor> = inputs
            .iter()
            .map(|b| {
                let dims: Vec<usize> = b
                    .shape
                    .0
                    .iter()
                    .map(|x| x.as_static().unwrap() as usize)
                    .collect();
                let n = dims.iter().product();
                let vals = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
                Tensor::new(DType::F64, &dims, vals)
            })
            .collect();
        let refs: Vec<&Tensor> = tensors.iter().collect();
        let none = HashMap::new();
        let got = run(&kernel, &refs, &none).unwrap();
        let want = run(&map, &refs, &none).unwrap();
        for (a, b) in got.data.iter().zip(&want.data) {
            assert!((a - b).abs() < 1e-12, "template {a}, map form {b}");
        }
        // Query 0 sees no key (offset -2); query 4, head 3 (kv head 1), by
        // hand.
        let at = |t: &Tensor, ix: [usize; 4]| {
            let s = crate::interp::tensor::strides(&t.shape);
            t.data[ix.iter().zip(&s).map(|(i, s)| i * s).sum::<usize>()]
        };
        assert!(got.data[..d].iter().all(|x| *x == 0.0));
        let scores: Vec<f64> = (0..skv)
            .map(|jj| {
                let dot: f64 = (0..d)
                    .map(|x| at(&tensors[0], [0, 3, 4, x]) * at(&tensors[1], [0, 1, jj, x]))
                    .sum();
                dot * 0.4 + tensors[3].data[4 * skv + jj]
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        for n in 0..d {
            let o: f64 = (0..skv)
                .map(|jj| e[jj] / sum * at(&tensors[2], [0, 1, jj, n]))
                .sum();
            let g = at(&got, [0, 3, 4, n]);
            assert!(
                (g - 2.0 * o).abs() < 1e-12,
                "column {n}: {g} vs {}",
                2.0 * o
            );
        }
    }

    /// softmax over a row, written as max and sum reductions: checked
    /// against values computed by hand in f64.
    #[test]
    fn softmax_rows_by_hand() {
        let (v0, v1, r) = (Var(0), Var(1), Var(2));
        let x = |col: Expr| Expr::load(0, vec![Expr::Var(v0), col]);
        let m = Expr::reduce(Reduction::Max, r, Expr::Dim(0), x(Expr::Var(r)));
        let e = |col: Expr| Expr::un(Unary::Exp, Expr::bin(Binary::Sub, x(col), m.clone()));
        let s = Expr::reduce(Reduction::Sum, r, Expr::Dim(0), e(Expr::Var(r)));
        let k = Kernel {
            name: "softmax".into(),
            inputs: vec![buf("x", DType::F64, vec![Dim::Static(2), Dim::sym("n")])],
            output: buf("y", DType::F64, vec![Dim::Static(2), Dim::sym("n")]),
            dims: vec!["n".into()],
            float: Ty::F64,
            body: Body::Map {
                expr: Expr::bin(Binary::Div, e(Expr::Var(v1)), s),
            },
        };
        let xs = [0.5, -1.25, 2.0, 3.0, 0.0, -0.75];
        let t = Tensor::new(DType::F64, &[2, 3], xs.to_vec());
        let dims = HashMap::from([("n".to_string(), 3)]);
        let y = run(&k, &[&t], &dims).unwrap();
        for row in 0..2 {
            let xr = &xs[row * 3..row * 3 + 3];
            let mx = xr.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let den: f64 = xr.iter().map(|v| (v - mx).exp()).sum();
            for (c, xv) in xr.iter().enumerate() {
                let want = (xv - mx).exp() / den;
                assert!((y.data[row * 3 + c] - want).abs() < 1e-15);
            }
        }
    }

    /// A contraction with an epilogue, in f32 with a bf16 output: each
    /// element is the f32 sum rounded to bf16, by hand.
    #[test]
    fn contraction_with_epilogue() {
        let (m, n, k) = (Var(0), Var(1), Var(2));
        let kern = Kernel {
            name: "mm".into(),
            inputs: vec![
                buf("a", DType::F32, vec![Dim::Static(2), Dim::Static(3)]),
                buf("b", DType::F32, vec![Dim::Static(3), Dim::Static(2)]),
            ],
            output: buf("c", DType::BF16, vec![Dim::Static(2), Dim::Static(2)]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Contract {
                k,
                extent: Expr::Int(3),
                a: Expr::load(0, vec![Expr::Var(m), Expr::Var(k)]),
                b: Expr::load(1, vec![Expr::Var(k), Expr::Var(n)]),
                epilogue: Expr::bin(Binary::Add, Expr::Acc, Expr::Float(1.0)),
            },
        };
        let a = Tensor::new(DType::F32, &[2, 3], vec![1.0, 2.0, 3.0, -1.0, 0.5, 0.25]);
        let b = Tensor::new(DType::F32, &[3, 2], vec![0.1, 1.0, 0.2, -2.0, 0.3, 4.0]);
        let c = run(&kern, &[&a, &b], &HashMap::new()).unwrap();
        // row 0: 0.1 + 0.4 + 0.9 + 1 = 2.4 -> bf16 2.40625; 1 - 4 + 12 + 1 = 10
        // row 1: -0.1 + 0.1 + 0.075 + 1 = 1.075 -> bf16 1.078125; -1 - 1 + 1 + 1 = 0
        assert_eq!(c.data, vec![2.40625, 10.0, 1.078125, 0.0]);
    }

    /// A guarded load gives 0 outside the guard and never reads there; an
    /// unguarded load outside the shape is an error, not a panic.
    #[test]
    fn guards_and_bounds() {
        let v0 = Var(0);
        let i = Expr::bin(Binary::Sub, Expr::Var(v0), Expr::Int(1));
        let guard = Expr::bin(Binary::Ge, i.clone(), Expr::Int(0));
        let padded = Kernel {
            name: "pad".into(),
            inputs: vec![buf("x", DType::I32, vec![Dim::Static(2)])],
            output: buf("y", DType::I32, vec![Dim::Static(3)]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Map {
                expr: Expr::Load {
                    input: 0,
                    index: vec![Expr::bin(Binary::Min, i.clone(), Expr::Int(1))],
                    guard: Some(Box::new(guard)),
                },
            },
        };
        let x = Tensor::new(DType::I32, &[2], vec![7.0, -3.0]);
        let y = run(&padded, &[&x], &HashMap::new()).unwrap();
        assert_eq!(y.data, vec![0.0, 7.0, -3.0]);
        let unguarded = Kernel {
            body: Body::Map {
                expr: Expr::load(0, vec![i]),
            },
            ..padded
        };
        assert!(matches!(
            run(&unguarded, &[&x], &HashMap::new()),
            Err(EvalError::OutOfBounds { .. })
        ));
    }

    #[test]
    fn integers_wrap_to_the_output_width() {
        let k = Kernel {
            name: "wrap".into(),
            inputs: vec![buf("x", DType::I8, vec![Dim::Static(3)])],
            output: buf("y", DType::I8, vec![Dim::Static(3)]),
            dims: vec![],
            float: Ty::F32,
            body: Body::Map {
                expr: Expr::bin(
                    Binary::Mul,
                    Expr::load(0, vec![Expr::Var(Var(0))]),
                    Expr::Int(3),
                ),
            },
        };
        let x = Tensor::new(DType::I8, &[3], vec![50.0, -50.0, 2.0]);
        let y = run(&k, &[&x], &HashMap::new()).unwrap();
        // 150 wraps to -106, -150 to 106
        assert_eq!(y.data, vec![-106.0, 106.0, 6.0]);
    }
}
