//! A compact binary form of a kernel [`Program`], for artifacts.
//!
//! The text form (`Display`) is for reading and golden files; it does not
//! keep constants' values and has no parser. This form keeps everything:
//! `decode(&encode(p)) == p` for every program (floats by their bits).
//!
//! Little endian throughout. A string is a `u32` byte length and UTF-8
//! bytes; a list a `u32` count and its items; an index a `u64`. Enums are a
//! `u8` tag (the tables are in `docs/artifact.md`, "The program section").
//! Decoding checks every length against the bytes left, so a corrupt or
//! hostile input gives a [`DecodeError`], never a panic or a huge
//! allocation; expression trees deeper than [`MAX_DEPTH`] are refused.

use thiserror::Error;

use super::{
    Attention, Binary, Body, Buffer, Expr, Kernel, Launch, Program, Reduction, Ty, Unary, Var,
};
use crate::{DType, Dim, Shape, numeric};

/// The deepest expression tree [`decode`] accepts (the recursion bound).
pub const MAX_DEPTH: usize = 2048;

/// Why bytes are not a program.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The bytes end inside an item.
    #[error("program bytes end at offset {at} inside {what}")]
    UnexpectedEnd { at: usize, what: &'static str },
    /// A tag that names no variant.
    #[error("program bytes at offset {at}: {tag} is not a valid {what} tag")]
    BadTag {
        at: usize,
        what: &'static str,
        tag: u8,
    },
    /// A string that is not UTF-8, or an unknown element type name.
    #[error("program bytes at offset {at}: {message}")]
    Invalid { at: usize, message: String },
    /// An expression nested deeper than [`MAX_DEPTH`].
    #[error("program bytes at offset {at}: expression nested deeper than {MAX_DEPTH}")]
    TooDeep { at: usize },
    /// Bytes after the program.
    #[error("{extra} bytes after the end of the program")]
    Trailing { extra: usize },
}

/// How constants' values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Constants {
    /// Every value as its `f64` bits (artifact formats 1 and 2).
    F64,
    /// Each constant tagged (artifact format 3): `0` its values as `f64`
    /// bits, `1` a splat (`u64` count, one value's bits), `2` codes of the
    /// buffer's element type packed as the dialect packs them (`u64`
    /// count, the bytes as a list), whichever is smallest and keeps every
    /// value's bits.
    Compact,
}

/// The most elements a splat constant may expand to when decoded (a
/// bound on what corrupt bytes can make the reader allocate).
pub const MAX_SPLAT: u64 = 1 << 27;

/// The bytes of `p`, constants [`Constants::Compact`].
pub fn encode(p: &Program) -> Vec<u8> {
    encode_with(p, Constants::Compact)
}

/// The bytes of `p` with constants stored as `form` says.
pub fn encode_with(p: &Program, form: Constants) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.str(&p.name);
    w.list(&p.buffers, |w, b| w.buffer(b));
    w.list(&p.inputs, |w, &i| w.index(i));
    w.list(&p.weights, |w, &i| w.index(i));
    w.list(&p.constants, |w, (b, values)| {
        w.index(*b);
        match form {
            Constants::F64 => w.list(values, |w, v| w.u64(v.to_bits())),
            Constants::Compact => {
                let dtype = p.buffers.get(*b).map(|x| x.dtype);
                w.constant(values, dtype);
            }
        }
    });
    w.list(&p.outputs, |w, (name, b)| {
        w.str(name);
        w.index(*b);
    });
    w.list(&p.dims, |w, d| w.str(d));
    w.list(&p.launches, |w, l| {
        w.kernel(&l.kernel);
        w.list(&l.args, |w, &a| w.index(a));
        w.index(l.out);
        w.0.push(u8::from(l.bind_time));
    });
    w.0
}

/// The program `bytes` hold, constants [`Constants::Compact`]; every byte
/// must belong to it.
pub fn decode(bytes: &[u8]) -> Result<Program, DecodeError> {
    decode_with(bytes, Constants::Compact)
}

/// The program `bytes` hold, constants stored as `form` says.
pub fn decode_with(bytes: &[u8], form: Constants) -> Result<Program, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let name = r.str("the program name")?;
    let buffers = r.list("the buffers", |r| r.buffer())?;
    let inputs = r.list("the inputs", |r| r.index("an input"))?;
    let weights = r.list("the weights", |r| r.index("a weight"))?;
    let constants = r.list("the constants", |r| {
        let at = r.at;
        let b = r.index("a constant's buffer")?;
        let values = match form {
            Constants::F64 => r.list("a constant's values", |r| {
                Ok(f64::from_bits(r.u64("a constant's value")?))
            })?,
            Constants::Compact => {
                let dtype =
                    buffers
                        .get(b)
                        .map(|x| x.dtype)
                        .ok_or_else(|| DecodeError::Invalid {
                            at,
                            message: format!(
                                "constant buffer {b} is not among the {} buffers",
                                buffers.len()
                            ),
                        })?;
                r.constant(dtype)?
            }
        };
        Ok((b, values))
    })?;
    let outputs = r.list("the outputs", |r| {
        Ok((r.str("an output name")?, r.index("an output buffer")?))
    })?;
    let dims = r.list("the dims", |r| r.str("a dim name"))?;
    let launches = r.list("the launches", |r| {
        let kernel = r.kernel()?;
        let args = r.list("a launch's arguments", |r| r.index("an argument"))?;
        let out = r.index("a launch's output")?;
        let bind_time = r.bool("a launch's bind-time flag")?;
        Ok(Launch {
            kernel,
            args,
            out,
            bind_time,
        })
    })?;
    if r.at != bytes.len() {
        return Err(DecodeError::Trailing {
            extra: bytes.len() - r.at,
        });
    }
    Ok(Program {
        name,
        buffers,
        inputs,
        weights,
        constants,
        outputs,
        dims,
        launches,
    })
}

struct Writer(Vec<u8>);

impl Writer {
    /// One constant's values in the smallest form that keeps their bits.
    fn constant(&mut self, values: &[f64], dtype: Option<DType>) {
        let bits = |v: &f64| v.to_bits();
        if values.len() > 1 && values.iter().all(|v| bits(v) == bits(&values[0])) {
            self.0.push(1);
            self.u64(values.len() as u64);
            self.u64(bits(&values[0]));
            return;
        }
        if let Some(d) = dtype.filter(|d| *d != DType::F64 && *d != DType::I64) {
            let codes: Vec<u64> = values.iter().map(|&v| numeric::encode(d, v)).collect();
            let exact = codes
                .iter()
                .zip(values)
                .all(|(&c, v)| numeric::decode(d, c).to_bits() == v.to_bits());
            if exact {
                self.0.push(2);
                self.u64(values.len() as u64);
                let packed = numeric::pack(d, &codes, numeric::BitOrder::LsbFirst);
                self.list(&packed, |w, &b| w.0.push(b));
                return;
            }
        }
        self.0.push(0);
        self.list(values, |w, v| w.u64(v.to_bits()));
    }

    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn index(&mut self, i: usize) {
        self.u64(i as u64);
    }

    fn len(&mut self, n: usize) {
        // Programs with more than 4G items of one kind do not fit in memory.
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }

    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn list<T>(&mut self, items: &[T], mut f: impl FnMut(&mut Writer, &T)) {
        self.len(items.len());
        for item in items {
            f(self, item);
        }
    }

    fn buffer(&mut self, b: &Buffer) {
        self.str(&b.name);
        self.str(b.dtype.name());
        self.shape(&b.shape);
    }

    fn shape(&mut self, s: &Shape) {
        self.list(&s.0, |w, d| match d {
            Dim::Static(n) => {
                w.0.push(0);
                w.u64(*n);
            }
            Dim::Sym(name) => {
                w.0.push(1);
                w.str(name);
            }
        });
    }

    fn kernel(&mut self, k: &Kernel) {
        self.str(&k.name);
        self.list(&k.inputs, |w, b| w.buffer(b));
        self.buffer(&k.output);
        self.list(&k.dims, |w, d| w.str(d));
        self.0.push(ty_tag(k.float));
        match &k.body {
            Body::Map { expr } => {
                self.0.push(0);
                self.expr(expr);
            }
            Body::Contract {
                k,
                extent,
                a,
                b,
                epilogue,
            } => {
                self.0.push(1);
                self.u32(k.0);
                self.expr(extent);
                self.expr(a);
                self.expr(b);
                self.expr(epilogue);
            }
            Body::Attention(t) => {
                self.0.push(2);
                self.u32(t.j.0);
                self.u32(t.d.0);
                for e in [&t.keys, &t.depth, &t.q, &t.k, &t.v, &t.scale] {
                    self.expr(e);
                }
                for o in [&t.bias, &t.causal] {
                    self.0.push(u8::from(o.is_some()));
                    if let Some(e) = o {
                        self.expr(e);
                    }
                }
                self.expr(&t.epilogue);
            }
        }
    }

    fn expr(&mut self, e: &Expr) {
        match e {
            Expr::Float(x) => {
                self.0.push(0);
                self.u64(x.to_bits());
            }
            Expr::Int(i) => {
                self.0.push(1);
                self.0.extend_from_slice(&i.to_le_bytes());
            }
            Expr::Bool(b) => {
                self.0.push(2);
                self.0.push(u8::from(*b));
            }
            Expr::Var(v) => {
                self.0.push(3);
                self.u32(v.0);
            }
            Expr::Dim(d) => {
                self.0.push(4);
                self.u32(*d);
            }
            Expr::Load {
                input,
                index,
                guard,
            } => {
                self.0.push(5);
                self.index(*input);
                self.list(index, |w, i| w.expr(i));
                match guard {
                    None => self.0.push(0),
                    Some(g) => {
                        self.0.push(1);
                        self.expr(g);
                    }
                }
            }
            Expr::Unary(op, x) => {
                self.0.push(6);
                self.0.push(unary_tag(*op));
                self.expr(x);
            }
            Expr::Binary(op, a, b) => {
                self.0.push(7);
                self.0.push(binary_tag(*op));
                self.expr(a);
                self.expr(b);
            }
            Expr::Select(c, a, b) => {
                self.0.push(8);
                self.expr(c);
                self.expr(a);
                self.expr(b);
            }
            Expr::Cast(t, x) => {
                self.0.push(9);
                self.0.push(ty_tag(*t));
                self.expr(x);
            }
            Expr::Round(d, x) => {
                self.0.push(10);
                self.str(d.name());
                self.expr(x);
            }
            Expr::Reduce {
                op,
                var,
                extent,
                body,
            } => {
                self.0.push(11);
                self.0.push(reduction_tag(*op));
                self.u32(var.0);
                self.expr(extent);
                self.expr(body);
            }
            Expr::Acc => self.0.push(12),
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    /// One constant's values ([`Constants::Compact`]) of element type `d`.
    fn constant(&mut self, d: DType) -> Result<Vec<f64>, DecodeError> {
        let at = self.at;
        match self.u8("a constant's form")? {
            0 => self.list("a constant's values", |r| {
                Ok(f64::from_bits(r.u64("a constant's value")?))
            }),
            1 => {
                let n = self.u64("a splat's count")?;
                let v = f64::from_bits(self.u64("a splat's value")?);
                if n > MAX_SPLAT {
                    return Err(DecodeError::Invalid {
                        at,
                        message: format!("a splat of {n} values (at most {MAX_SPLAT})"),
                    });
                }
                Ok(vec![v; n as usize])
            }
            2 => {
                let n = self.u64("a packed constant's count")?;
                let bytes = self.list("a packed constant's bytes", |r| r.u8("a byte"))?;
                let n = usize::try_from(n)
                    .ok()
                    .filter(|&n| {
                        n.checked_mul(d.bits() as usize)
                            .is_some_and(|b| b.div_ceil(8) == bytes.len())
                    })
                    .ok_or_else(|| DecodeError::Invalid {
                        at,
                        message: format!("{n} packed {d} values in {} bytes", bytes.len()),
                    })?;
                let codes =
                    numeric::unpack(d, &bytes, n, numeric::BitOrder::LsbFirst).map_err(|e| {
                        DecodeError::Invalid {
                            at,
                            message: e.to_string(),
                        }
                    })?;
                Ok(codes.into_iter().map(|c| numeric::decode(d, c)).collect())
            }
            tag => Err(DecodeError::BadTag {
                at,
                what: "constant form",
                tag,
            }),
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(DecodeError::UnexpectedEnd { at: self.at, what }),
        }
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        let at = self.at;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::BadTag {
                at,
                what: "bool",
                tag,
            }),
        }
    }

    fn index(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let at = self.at;
        let v = self.u64(what)?;
        usize::try_from(v).map_err(|_| DecodeError::Invalid {
            at,
            message: format!("{what} index {v} does not fit this machine"),
        })
    }

    fn str(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let n = self.u32(what)? as usize;
        let at = self.at;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid {
            at,
            message: format!("{what} is not UTF-8"),
        })
    }

    fn list<T>(
        &mut self,
        what: &'static str,
        mut f: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = self.u32(what)? as usize;
        // Every item takes at least one byte: a count beyond the bytes left
        // is corrupt. Items are larger in memory than on disk, so the
        // vector grows as items decode rather than trusting the count.
        if n > self.bytes.len() - self.at {
            return Err(DecodeError::UnexpectedEnd { at: self.at, what });
        }
        let mut v = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            v.push(f(self)?);
        }
        Ok(v)
    }

    fn dtype(&mut self) -> Result<DType, DecodeError> {
        let at = self.at;
        let name = self.str("an element type")?;
        DType::from_name(&name).ok_or_else(|| DecodeError::Invalid {
            at,
            message: format!("unknown element type `{name}`"),
        })
    }

    fn buffer(&mut self) -> Result<Buffer, DecodeError> {
        let name = self.str("a buffer name")?;
        let dtype = self.dtype()?;
        let shape = Shape(self.list("a shape", |r| {
            let at = r.at;
            match r.u8("a dim")? {
                0 => Ok(Dim::Static(r.u64("a dim")?)),
                1 => Ok(Dim::Sym(r.str("a dim name")?)),
                tag => Err(DecodeError::BadTag {
                    at,
                    what: "dim",
                    tag,
                }),
            }
        })?);
        Ok(Buffer { name, dtype, shape })
    }

    fn ty(&mut self) -> Result<Ty, DecodeError> {
        let at = self.at;
        let tag = self.u8("a type")?;
        ty_from(tag).ok_or(DecodeError::BadTag {
            at,
            what: "type",
            tag,
        })
    }

    fn kernel(&mut self) -> Result<Kernel, DecodeError> {
        let name = self.str("a kernel name")?;
        let inputs = self.list("a kernel's inputs", |r| r.buffer())?;
        let output = self.buffer()?;
        let dims = self.list("a kernel's dims", |r| r.str("a dim name"))?;
        let float = self.ty()?;
        let at = self.at;
        let body = match self.u8("a kernel body")? {
            0 => Body::Map {
                expr: self.expr(0)?,
            },
            1 => Body::Contract {
                k: Var(self.u32("a contraction variable")?),
                extent: self.expr(0)?,
                a: self.expr(0)?,
                b: self.expr(0)?,
                epilogue: self.expr(0)?,
            },
            2 => {
                let j = Var(self.u32("an attention key variable")?);
                let d = Var(self.u32("an attention dot variable")?);
                let keys = self.expr(0)?;
                let depth = self.expr(0)?;
                let q = self.expr(0)?;
                let k = self.expr(0)?;
                let v = self.expr(0)?;
                let scale = self.expr(0)?;
                let bias = match self.bool("an attention bias flag")? {
                    true => Some(self.expr(0)?),
                    false => None,
                };
                let causal = match self.bool("an attention causal flag")? {
                    true => Some(self.expr(0)?),
                    false => None,
                };
                Body::Attention(Box::new(Attention {
                    j,
                    keys,
                    d,
                    depth,
                    q,
                    k,
                    v,
                    scale,
                    bias,
                    causal,
                    epilogue: self.expr(0)?,
                }))
            }
            tag => {
                return Err(DecodeError::BadTag {
                    at,
                    what: "kernel body",
                    tag,
                });
            }
        };
        Ok(Kernel {
            name,
            inputs,
            output,
            dims,
            float,
            body,
        })
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, DecodeError> {
        let at = self.at;
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep { at });
        }
        let sub = |r: &mut Self| r.expr(depth + 1).map(Box::new);
        let bad = |what, tag| DecodeError::BadTag { at, what, tag };
        Ok(match self.u8("an expression")? {
            0 => Expr::Float(f64::from_bits(self.u64("a float")?)),
            1 => Expr::Int(self.u64("an integer")? as i64),
            2 => Expr::Bool(self.bool("a bool")?),
            3 => Expr::Var(Var(self.u32("a variable")?)),
            4 => Expr::Dim(self.u32("a dim")?),
            5 => {
                let input = self.index("a load's input")?;
                let index = self.list("a load's index", |r| r.expr(depth + 1))?;
                let guard = if self.bool("a load's guard flag")? {
                    Some(sub(self)?)
                } else {
                    None
                };
                Expr::Load {
                    input,
                    index,
                    guard,
                }
            }
            6 => {
                let tag = self.u8("a unary op")?;
                let op = unary_from(tag).ok_or(bad("unary op", tag))?;
                Expr::Unary(op, sub(self)?)
            }
            7 => {
                let tag = self.u8("a binary op")?;
                let op = binary_from(tag).ok_or(bad("binary op", tag))?;
                let a = sub(self)?;
                Expr::Binary(op, a, sub(self)?)
            }
            8 => {
                let c = sub(self)?;
                let a = sub(self)?;
                Expr::Select(c, a, sub(self)?)
            }
            9 => {
                let t = self.ty()?;
                Expr::Cast(t, sub(self)?)
            }
            10 => {
                let d = self.dtype()?;
                Expr::Round(d, sub(self)?)
            }
            11 => {
                let tag = self.u8("a reduction")?;
                let op = reduction_from(tag).ok_or(bad("reduction", tag))?;
                let var = Var(self.u32("a reduction variable")?);
                let extent = sub(self)?;
                Expr::Reduce {
                    op,
                    var,
                    extent,
                    body: sub(self)?,
                }
            }
            12 => Expr::Acc,
            tag => return Err(bad("expression", tag)),
        })
    }
}

/// The tag of a type.
fn ty_tag(t: Ty) -> u8 {
    match t {
        Ty::F32 => 0,
        Ty::F64 => 1,
        Ty::I64 => 2,
        Ty::Bool => 3,
    }
}

/// Every type, by tag.
const TYS: [Ty; 4] = [Ty::F32, Ty::F64, Ty::I64, Ty::Bool];

fn ty_from(tag: u8) -> Option<Ty> {
    TYS.get(tag as usize).copied()
}

/// The tag of a unary op.
fn unary_tag(op: Unary) -> u8 {
    match op {
        Unary::Neg => 0,
        Unary::Abs => 1,
        Unary::Exp => 2,
        Unary::Log => 3,
        Unary::Sqrt => 4,
        Unary::Tanh => 5,
        Unary::Erf => 6,
        Unary::Sin => 7,
        Unary::Cos => 8,
        Unary::Floor => 9,
        Unary::Ceil => 10,
        Unary::Round => 11,
        Unary::Not => 12,
    }
}

/// Every unary op, by tag (`unary_tag` is its inverse; a test checks).
const UNARIES: [Unary; 13] = [
    Unary::Neg,
    Unary::Abs,
    Unary::Exp,
    Unary::Log,
    Unary::Sqrt,
    Unary::Tanh,
    Unary::Erf,
    Unary::Sin,
    Unary::Cos,
    Unary::Floor,
    Unary::Ceil,
    Unary::Round,
    Unary::Not,
];

fn unary_from(tag: u8) -> Option<Unary> {
    UNARIES.get(tag as usize).copied()
}

/// The tag of a binary op.
fn binary_tag(op: Binary) -> u8 {
    match op {
        Binary::Add => 0,
        Binary::Sub => 1,
        Binary::Mul => 2,
        Binary::Div => 3,
        Binary::Rem => 4,
        Binary::Pow => 5,
        Binary::Max => 6,
        Binary::Min => 7,
        Binary::Eq => 8,
        Binary::Ne => 9,
        Binary::Lt => 10,
        Binary::Le => 11,
        Binary::Gt => 12,
        Binary::Ge => 13,
        Binary::And => 14,
        Binary::Or => 15,
    }
}

/// Every binary op, by tag (`binary_tag` is its inverse; a test checks).
const BINARIES: [Binary; 16] = [
    Binary::Add,
    Binary::Sub,
    Binary::Mul,
    Binary::Div,
    Binary::Rem,
    Binary::Pow,
    Binary::Max,
    Binary::Min,
    Binary::Eq,
    Binary::Ne,
    Binary::Lt,
    Binary::Le,
    Binary::Gt,
    Binary::Ge,
    Binary::And,
    Binary::Or,
];

fn binary_from(tag: u8) -> Option<Binary> {
    BINARIES.get(tag as usize).copied()
}

/// The tag of a reduction.
fn reduction_tag(op: Reduction) -> u8 {
    match op {
        Reduction::Sum => 0,
        Reduction::Prod => 1,
        Reduction::Max => 2,
        Reduction::Min => 3,
    }
}

/// Every reduction, by tag.
const REDUCTIONS: [Reduction; 4] = [
    Reduction::Sum,
    Reduction::Prod,
    Reduction::Max,
    Reduction::Min,
];

fn reduction_from(tag: u8) -> Option<Reduction> {
    REDUCTIONS.get(tag as usize).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_tables_invert_the_tag_functions() {
        for (i, &t) in TYS.iter().enumerate() {
            assert_eq!(ty_tag(t) as usize, i);
        }
        for (i, &u) in UNARIES.iter().enumerate() {
            assert_eq!(unary_tag(u) as usize, i);
        }
        for (i, &b) in BINARIES.iter().enumerate() {
            assert_eq!(binary_tag(b) as usize, i);
        }
        for (i, &r) in REDUCTIONS.iter().enumerate() {
            assert_eq!(reduction_tag(r) as usize, i);
        }
    }

    fn buf(name: &str, dtype: DType, dims: Vec<Dim>) -> Buffer {
        Buffer {
            name: name.into(),
            dtype,
            shape: Shape(dims),
        }
    }

    /// A program that uses every expression form, every body, a guard, a
    /// symbolic dim, a constant with a NaN and a bind-time launch.
    fn every_form() -> Program {
        let x = buf("x", DType::BF16, vec![Dim::sym("batch"), Dim::Static(3)]);
        let w = buf("w", DType::I4, vec![Dim::Static(3), Dim::Static(2)]);
        let c = buf("c", DType::F32, vec![Dim::Static(2)]);
        let y = buf("y", DType::F32, vec![Dim::sym("batch"), Dim::Static(2)]);
        let z = buf("z", DType::F32, vec![Dim::sym("batch"), Dim::Static(2)]);
        let v = |i| Expr::Var(Var(i));
        let map_expr = Expr::select(
            Expr::bin(
                Binary::Lt,
                Expr::Cast(Ty::I64, Box::new(Expr::Bool(true))),
                Expr::Dim(0),
            ),
            Expr::Round(
                DType::F8E4M3,
                Box::new(Expr::un(Unary::Erf, Expr::load(0, vec![v(0), v(1)]))),
            ),
            Expr::reduce(
                Reduction::Max,
                Var(2),
                Expr::Int(-7),
                Expr::Load {
                    input: 1,
                    index: vec![v(2)],
                    guard: Some(Box::new(Expr::bin(Binary::Ge, v(2), Expr::Int(0)))),
                },
            ),
        );
        let map = Kernel {
            name: "k0".into(),
            inputs: vec![y.clone(), c.clone()],
            output: z.clone(),
            dims: vec!["batch".into()],
            float: Ty::F32,
            body: Body::Map { expr: map_expr },
        };
        let contract = Kernel {
            name: "k1".into(),
            inputs: vec![x.clone(), w.clone()],
            output: y.clone(),
            dims: vec!["batch".into()],
            float: Ty::F64,
            body: Body::Contract {
                k: Var(2),
                extent: Expr::Int(3),
                a: Expr::load(0, vec![v(0), v(2)]),
                b: Expr::Cast(Ty::F64, Box::new(Expr::load(1, vec![v(2), v(1)]))),
                epilogue: Expr::bin(Binary::Add, Expr::Acc, Expr::Float(-0.0)),
            },
        };
        // Attention with and without the optional parts.
        let q4 = buf(
            "q",
            DType::BF16,
            vec![Dim::Static(1), Dim::Static(2), Dim::Static(3)],
        );
        let attention = |bias: bool, causal: bool| Kernel {
            name: "k2".into(),
            inputs: vec![q4.clone()],
            output: q4.clone(),
            dims: vec![],
            float: Ty::F32,
            body: Body::Attention(Box::new(Attention {
                j: Var(3),
                keys: Expr::Int(2),
                d: Var(4),
                depth: Expr::Int(3),
                q: Expr::load(0, vec![v(0), v(1), v(4)]),
                k: Expr::load(0, vec![v(0), v(3), v(4)]),
                v: Expr::load(0, vec![v(0), v(3), v(2)]),
                scale: Expr::Float(0.5),
                bias: bias.then(|| Expr::Float(-1.0)),
                causal: causal.then_some(Expr::Int(0)),
                epilogue: Expr::un(Unary::Neg, Expr::Acc),
            })),
        };
        let buffers = vec![x, w, c, y, z, q4.clone(), q4.clone()];
        let attn_launch = |bias, causal| Launch {
            kernel: attention(bias, causal),
            args: vec![5],
            out: 6,
            bind_time: false,
        };
        Program {
            name: "every form ✓".into(),
            buffers,
            inputs: vec![0],
            weights: vec![1],
            constants: vec![(2, vec![1.5, f64::NAN])],
            outputs: vec![("z".into(), 4), ("y again".into(), 3)],
            dims: vec!["batch".into()],
            launches: vec![
                Launch {
                    kernel: contract,
                    args: vec![0, 1],
                    out: 3,
                    bind_time: true,
                },
                Launch {
                    kernel: map,
                    args: vec![3, 2],
                    out: 4,
                    bind_time: false,
                },
                attn_launch(true, false),
                attn_launch(false, true),
            ],
        }
    }

    #[test]
    fn round_trips_every_form() {
        let p = every_form();
        let bytes = encode(&p);
        let q = decode(&bytes).unwrap();
        // NaN != NaN: compare the constants by bits, the rest with `==`.
        let bits = |p: &Program| -> Vec<Vec<u64>> {
            p.constants
                .iter()
                .map(|(_, v)| v.iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        assert_eq!(bits(&p), bits(&q));
        let strip = |mut p: Program| {
            p.constants.iter_mut().for_each(|(_, v)| v.clear());
            p
        };
        assert_eq!(strip(p), strip(q.clone()));
        assert_eq!(encode(&q), bytes);
    }

    /// Constants take the smallest form that keeps their bits: a splat, codes
    /// packed in their element type, or `f64` values; the `f64` form of
    /// artifact formats 1 and 2 reads back too; corrupt forms are errors.
    #[test]
    fn constants_take_their_smallest_form() {
        let b = |n: &str, d: DType, len: u64| buf(n, d, vec![Dim::Static(len)]);
        let values: Vec<(Buffer, Vec<f64>)> = vec![
            (b("splat", DType::F32, 1000), vec![0.25; 1000]),
            (b("bf16", DType::BF16, 3), vec![1.0, -2.5, 0.00390625]),
            (b("i4", DType::I4, 5), vec![-8.0, 7.0, 0.0, 3.0, -1.0]),
            (b("f64", DType::F64, 2), vec![1.5, f64::NAN]),
            // 0.1 is not an f32, -0.0 not an i8 code: kept as f64 bits
            (b("inexact", DType::F32, 2), vec![0.1, 2.0]),
            (b("negzero", DType::I8, 2), vec![-0.0, 1.0]),
        ];
        let p = Program {
            name: "constants".into(),
            buffers: values.iter().map(|(b, _)| b.clone()).collect(),
            inputs: vec![],
            weights: vec![],
            constants: values
                .iter()
                .enumerate()
                .map(|(i, (_, v))| (i, v.clone()))
                .collect(),
            outputs: vec![],
            dims: vec![],
            launches: vec![],
        };
        let bits = |p: &Program| -> Vec<Vec<u64>> {
            p.constants
                .iter()
                .map(|(_, v)| v.iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        for form in [Constants::Compact, Constants::F64] {
            let q = decode_with(&encode_with(&p, form), form).unwrap();
            assert_eq!(bits(&p), bits(&q), "{form:?}");
        }
        // the splat is 17 bytes instead of 8004, the packed ones 6 and 3
        let (compact, plain) = (encode(&p), encode_with(&p, Constants::F64));
        assert!(
            compact.len() + 7900 < plain.len(),
            "{} vs {}",
            compact.len(),
            plain.len()
        );
        // the form tags, in order
        let mut r = Reader {
            bytes: &compact,
            at: 0,
        };
        r.str("").unwrap();
        let buffers = r.list("", |r| r.buffer()).unwrap();
        r.list("", |r| r.index("")).unwrap();
        r.list("", |r| r.index("")).unwrap();
        assert_eq!(r.u32("").unwrap(), 6);
        let mut tags = Vec::new();
        for (i, b) in buffers.iter().enumerate() {
            assert_eq!(r.index("").unwrap(), i);
            tags.push(r.bytes[r.at]);
            r.constant(b.dtype).unwrap();
        }
        assert_eq!(tags, [1, 2, 2, 0, 0, 0]);
        // corrupt forms: an unknown tag, a splat past the bound, a count
        // the packed bytes do not hold, a buffer that does not exist
        // (after the constants: three empty lists, 12 bytes)
        let mut bad = p.clone();
        bad.constants = vec![(0, vec![0.25; 2])];
        let bytes = encode(&bad);
        let tag_at = bytes.len() - 12 - 8 - 8 - 1; // the splat: tag, count, value
        assert_eq!(bytes[tag_at], 1);
        let mut b3 = bytes.clone();
        b3[tag_at] = 3;
        assert!(matches!(
            decode(&b3),
            Err(DecodeError::BadTag { tag: 3, .. })
        ));
        let mut big = bytes.clone();
        big[tag_at + 1..tag_at + 9].copy_from_slice(&(MAX_SPLAT + 1).to_le_bytes());
        assert!(matches!(decode(&big), Err(DecodeError::Invalid { .. })));
        bad.constants = vec![(1, vec![1.0, 2.0])];
        let bytes = encode(&bad);
        let count_at = bytes.len() - 12 - 4 - 4 - 8; // count, then 4 bytes of codes as a list
        assert_eq!(bytes[count_at], 2);
        let mut short = bytes.clone();
        short[count_at] = 3;
        assert!(matches!(decode(&short), Err(DecodeError::Invalid { .. })));
        bad.constants = vec![(9, vec![1.0])];
        assert!(matches!(
            decode(&encode(&bad)),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn every_prefix_and_trailing_bytes_are_refused() {
        let bytes = encode(&every_form());
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes decoded");
        }
        let mut more = bytes.clone();
        more.push(0);
        assert_eq!(decode(&more), Err(DecodeError::Trailing { extra: 1 }));
    }

    #[test]
    fn bad_tags_and_deep_trees_are_errors() {
        // The program's name is 14 bytes of UTF-8 ("every form ✓"); a
        // buffer count of u32::MAX claims more items than bytes.
        let mut bytes = encode(&every_form());
        let count_at = 4 + "every form ✓".len();
        bytes[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::UnexpectedEnd {
                what: "the buffers",
                ..
            })
        ));
        // A chain of negations deeper than the bound.
        let mut e = Expr::Int(1);
        for _ in 0..MAX_DEPTH + 5 {
            e = Expr::un(Unary::Neg, e);
        }
        let mut p = every_form();
        p.launches[1].kernel.body = Body::Map { expr: e };
        assert!(matches!(
            decode(&encode(&p)),
            Err(DecodeError::TooDeep { .. })
        ));
        // Every single-byte change decodes to a program or an error.
        let bytes = encode(&every_form());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = decode(&b);
        }
    }
}
