//! Small constructors for kernel expressions. Index arithmetic on integer
//! constants folds as it is built, so lowered kernels stay readable
//! (`v1` rather than `add(mul(v1, 1), 0)`).

use kiln_dialect::kernel::{Binary, Expr, Reduction, Ty, Unary, Var};

/// An i64 constant.
pub fn int(i: i64) -> Expr {
    Expr::Int(i)
}

/// A float constant (in the kernel's float type).
pub fn float(x: f64) -> Expr {
    Expr::Float(x)
}

/// An index variable.
pub fn var(v: Var) -> Expr {
    Expr::Var(v)
}

fn fold(op: Binary, a: &Expr, b: &Expr) -> Option<Expr> {
    use Binary::*;
    match (op, a, b) {
        (Add, Expr::Int(x), Expr::Int(y)) => Some(int(x.wrapping_add(*y))),
        (Sub, Expr::Int(x), Expr::Int(y)) => Some(int(x.wrapping_sub(*y))),
        (Mul, Expr::Int(x), Expr::Int(y)) => Some(int(x.wrapping_mul(*y))),
        (Div, Expr::Int(x), Expr::Int(y)) if *y != 0 => Some(int(x.wrapping_div(*y))),
        (Rem, Expr::Int(x), Expr::Int(y)) if *y != 0 => Some(int(x.wrapping_rem(*y))),
        (Min, Expr::Int(x), Expr::Int(y)) => Some(int(*x.min(y))),
        (Max, Expr::Int(x), Expr::Int(y)) => Some(int(*x.max(y))),
        (Add, Expr::Int(0), e) | (Add | Sub, e, Expr::Int(0)) => Some(e.clone()),
        (Mul, Expr::Int(1), e) | (Mul | Div, e, Expr::Int(1)) => Some(e.clone()),
        (Mul, Expr::Int(0), _) | (Mul, _, Expr::Int(0)) | (Rem, _, Expr::Int(1)) => Some(int(0)),
        _ => None,
    }
}

/// `op(a, b)`, folded when both are integer constants or one is an identity.
pub fn bin(op: Binary, a: Expr, b: Expr) -> Expr {
    fold(op, &a, &b).unwrap_or_else(|| Expr::bin(op, a, b))
}

pub fn add(a: Expr, b: Expr) -> Expr {
    bin(Binary::Add, a, b)
}

pub fn sub(a: Expr, b: Expr) -> Expr {
    bin(Binary::Sub, a, b)
}

pub fn mul(a: Expr, b: Expr) -> Expr {
    bin(Binary::Mul, a, b)
}

pub fn div(a: Expr, b: Expr) -> Expr {
    bin(Binary::Div, a, b)
}

pub fn rem(a: Expr, b: Expr) -> Expr {
    bin(Binary::Rem, a, b)
}

pub fn min(a: Expr, b: Expr) -> Expr {
    bin(Binary::Min, a, b)
}

pub fn max(a: Expr, b: Expr) -> Expr {
    bin(Binary::Max, a, b)
}

pub fn lt(a: Expr, b: Expr) -> Expr {
    Expr::bin(Binary::Lt, a, b)
}

pub fn gt(a: Expr, b: Expr) -> Expr {
    Expr::bin(Binary::Gt, a, b)
}

pub fn ge(a: Expr, b: Expr) -> Expr {
    Expr::bin(Binary::Ge, a, b)
}

pub fn eq(a: Expr, b: Expr) -> Expr {
    Expr::bin(Binary::Eq, a, b)
}

/// Logical and; `true` operands drop out.
pub fn and(a: Expr, b: Expr) -> Expr {
    match (a, b) {
        (Expr::Bool(true), e) | (e, Expr::Bool(true)) => e,
        (a, b) => Expr::bin(Binary::And, a, b),
    }
}

pub fn or(a: Expr, b: Expr) -> Expr {
    Expr::bin(Binary::Or, a, b)
}

pub fn un(op: Unary, x: Expr) -> Expr {
    Expr::un(op, x)
}

pub fn select(c: Expr, a: Expr, b: Expr) -> Expr {
    match c {
        Expr::Bool(true) => a,
        Expr::Bool(false) => b,
        c => Expr::select(c, a, b),
    }
}

/// A conversion; an integer constant converted to a float is a float
/// constant.
pub fn cast(t: Ty, x: Expr) -> Expr {
    match (t, x) {
        (Ty::F32 | Ty::F64, Expr::Int(i)) => float(i as f64),
        (t, x) => Expr::Cast(t, Box::new(x)),
    }
}

/// `lo <= x <= hi` by comparisons, NaN passing through (the interpreter's
/// `clamp`): `x < lo ? lo : (x > hi ? hi : x)`. An absent bound does not
/// limit.
pub fn clamp(x: Expr, lo: Option<Expr>, hi: Option<Expr>) -> Expr {
    let upper = match hi {
        Some(h) => select(gt(x.clone(), h.clone()), h, x.clone()),
        None => x.clone(),
    };
    match lo {
        Some(l) => select(lt(x, l.clone()), l, upper),
        None => upper,
    }
}

/// An index clamped into `0 .. n` (for reads whose value a select discards).
pub fn clamp_index(i: Expr, n: Expr) -> Expr {
    min(max(i, int(0)), sub(n, int(1)))
}

/// The fold of `body` over `var` in `0 .. extent`.
pub fn reduce(op: Reduction, var: Var, extent: Expr, body: Expr) -> Expr {
    Expr::reduce(op, var, extent, body)
}
