//! Index simplification with variable ranges.
//!
//! Lowered index expressions carry the arithmetic of every reshape and
//! transpose between a kernel and its buffers: `o[div(div(add(mul(v1, 2048),
//! v3), 128), 16), ...]` for a row of heads read back as one wide row.
//! Knowing that each loop variable lies in `0 .. extent` (an output axis,
//! a contraction's `k`, a reduction's variable), most of it cancels: the
//! index above is `v1`. Backends then emit a few instructions per load
//! instead of dozens, which matters most where a load sits in an inner loop
//! (a tensor-core kernel's staged operands) and for the time the driver
//! takes to compile the code.
//!
//! The rewrite works on linear forms `sum(c_i * atom_i) + c`, where atoms
//! are variables, dims and whatever does not reduce further. With `x` known
//! to be non-negative and `c > 0`:
//!
//! * `div(x, c)`: the terms whose coefficient `c` divides come out as
//!   quotients; the rest `r` stays `div(r, c)`, or vanishes when
//!   `0 <= r < c`; `div(div(x, a), b)` is `div(x, a * b)`;
//! * `rem(x, c)`: the terms `c` divides vanish; the rest `r` stays
//!   `rem(r, c)`, or is `r` when `0 <= r < c`;
//! * `div(v, n)` is 0 and `rem(v, n)` is `v` for a variable `v` in
//!   `0 .. n` (`n` symbolic);
//! * `min(x, y)` and `max(x, y)`: the operand the ranges prove is the
//!   result (a clamp that never bites goes), and a clamp whose result can
//!   take one value only is that value (a concatenation's
//!   `min(max(v - 2048, 0), 0)` for `v < 2049` is 0). Ranges of clamps and
//!   of sums with constants are read from the simplified expression's
//!   structure, so chains of clamps take linear time.
//!
//! Only the index expressions of loads are rewritten (they are i64 by
//! construction), and only where the ranges prove it; anything else is
//! left as it is. Division and remainder truncate toward zero, which is
//! floor division on the non-negative values the rules require.

use std::collections::HashMap;

use super::{Binary, Body, Expr, Kernel, Unary, Var};
use crate::Dim;

/// What is known of an i64 value: an inclusive lower bound and an
/// exclusive upper bound.
#[derive(Clone, Debug, PartialEq)]
struct Range {
    lo: Option<i64>,
    hi: Hi,
}

/// An exclusive upper bound.
#[derive(Clone, Debug, PartialEq)]
enum Hi {
    Const(i64),
    /// Less than this expression (a dim).
    Sym(Expr),
    Unknown,
}

impl Range {
    const UNKNOWN: Range = Range {
        lo: None,
        hi: Hi::Unknown,
    };

    /// The one value of a range that holds exactly one.
    fn single(&self) -> Option<i64> {
        match (self.lo, &self.hi) {
            (Some(l), Hi::Const(h)) if l.checked_add(1) == Some(*h) => Some(l),
            _ => None,
        }
    }

    /// `0 .. extent`.
    fn upto(extent: &Expr) -> Range {
        let hi = match extent {
            Expr::Int(n) => Hi::Const(*n),
            Expr::Dim(_) => Hi::Sym(extent.clone()),
            _ => Hi::Unknown,
        };
        Range { lo: Some(0), hi }
    }
}

/// `sum(coef * atom) + k`.
#[derive(Clone, Debug, PartialEq)]
struct Lin {
    terms: Vec<(i64, Expr)>,
    k: i64,
}

impl Lin {
    fn konst(k: i64) -> Lin {
        Lin {
            terms: Vec::new(),
            k,
        }
    }

    fn atom(e: Expr) -> Lin {
        Lin {
            terms: vec![(1, e)],
            k: 0,
        }
    }

    fn add(mut self, other: Lin, sign: i64) -> Option<Lin> {
        for (c, a) in other.terms {
            let c = c.checked_mul(sign)?;
            match self.terms.iter_mut().find(|(_, b)| *b == a) {
                Some(t) => t.0 = t.0.checked_add(c)?,
                None => self.terms.push((c, a)),
            }
        }
        self.terms.retain(|(c, _)| *c != 0);
        self.k = self.k.checked_add(other.k.checked_mul(sign)?)?;
        Some(self)
    }

    fn scale(mut self, s: i64) -> Option<Lin> {
        for t in &mut self.terms {
            t.0 = t.0.checked_mul(s)?;
        }
        self.terms.retain(|(c, _)| *c != 0);
        self.k = self.k.checked_mul(s)?;
        Some(self)
    }

    fn as_const(&self) -> Option<i64> {
        self.terms.is_empty().then_some(self.k)
    }

    /// The expression: terms in order, `mul(atom, coef)`, the constant last.
    fn build(&self) -> Expr {
        let mut out: Option<Expr> = None;
        for (c, a) in &self.terms {
            let term = if *c == 1 || *c == -1 {
                a.clone()
            } else {
                Expr::bin(Binary::Mul, a.clone(), Expr::Int(*c))
            };
            out = Some(match (out, *c < 0 && *c == -1) {
                (None, false) => term,
                (None, true) => Expr::bin(Binary::Sub, Expr::Int(0), term),
                (Some(e), false) => Expr::bin(Binary::Add, e, term),
                (Some(e), true) => Expr::bin(Binary::Sub, e, term),
            });
        }
        match out {
            None => Expr::Int(self.k),
            Some(e) if self.k == 0 => e,
            Some(e) if self.k < 0 => Expr::bin(Binary::Sub, e, Expr::Int(-self.k)),
            Some(e) => Expr::bin(Binary::Add, e, Expr::Int(self.k)),
        }
    }
}

/// The simplifier's state: the ranges of the variables in scope.
struct Cx {
    vars: HashMap<Var, Range>,
    /// Also simplify integer expressions outside load indices (compared,
    /// selected on, cast), fold comparisons and selects the ranges
    /// decide, and write linear forms with their terms sorted (see
    /// [`at_lane`]).
    fold: bool,
}

impl Cx {
    fn range_of_atom(&self, a: &Expr) -> Range {
        match a {
            Expr::Int(n) => Range {
                lo: Some(*n),
                hi: n.checked_add(1).map_or(Hi::Unknown, Hi::Const),
            },
            Expr::Var(v) => self.vars.get(v).cloned().unwrap_or(Range::UNKNOWN),
            Expr::Dim(_) => Range {
                lo: Some(0),
                hi: Hi::Unknown,
            },
            Expr::Binary(Binary::Div, x, c) => match (self.range(&self.lin(x)), &**c) {
                (r, Expr::Int(c)) if *c > 0 && r.lo.is_some_and(|l| l >= 0) => Range {
                    lo: r.lo.map(|l| l / c),
                    hi: match r.hi {
                        Hi::Const(h) => Hi::Const((h - 1).max(0) / c + 1),
                        Hi::Sym(_) | Hi::Unknown => Hi::Unknown,
                    },
                },
                _ => Range::UNKNOWN,
            },
            Expr::Binary(Binary::Rem, x, c) => match (self.range(&self.lin(x)), &**c) {
                (r, Expr::Int(c)) if *c > 0 && r.lo.is_some_and(|l| l >= 0) => Range {
                    lo: Some(0),
                    hi: Hi::Const(match r.hi {
                        Hi::Const(h) => h.min(*c),
                        Hi::Sym(_) | Hi::Unknown => *c,
                    }),
                },
                _ => Range::UNKNOWN,
            },
            Expr::Binary(op @ (Binary::Min | Binary::Max), x, y) => {
                let (rx, ry) = (self.range_of(x), self.range_of(y));
                let (lo, hi) = match op {
                    Binary::Min => (
                        rx.lo.zip(ry.lo).map(|(a, b)| a.min(b)),
                        match (&rx.hi, &ry.hi) {
                            (Hi::Const(a), Hi::Const(b)) => Hi::Const(*a.min(b)),
                            (Hi::Const(a), _) | (_, Hi::Const(a)) => Hi::Const(*a),
                            _ => Hi::Unknown,
                        },
                    ),
                    _ => (
                        match (rx.lo, ry.lo) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            (Some(a), None) | (None, Some(a)) => Some(a),
                            (None, None) => None,
                        },
                        match (&rx.hi, &ry.hi) {
                            (Hi::Const(a), Hi::Const(b)) => Hi::Const(*a.max(b)),
                            _ => Hi::Unknown,
                        },
                    ),
                };
                Range { lo, hi }
            }
            // A product of non-negative factors is non-negative.
            Expr::Binary(Binary::Mul, x, y) => {
                let (rx, ry) = (self.range(&self.lin(x)), self.range(&self.lin(y)));
                let nonneg = |r: &Range| r.lo.is_some_and(|l| l >= 0);
                match (&rx.hi, &ry.hi) {
                    (Hi::Const(a), Hi::Const(b)) if nonneg(&rx) && nonneg(&ry) => Range {
                        lo: rx.lo.zip(ry.lo).and_then(|(a, b)| a.checked_mul(b)),
                        hi: (a - 1)
                            .checked_mul(b - 1)
                            .and_then(|x| x.checked_add(1))
                            .map_or(Hi::Unknown, Hi::Const),
                    },
                    _ if nonneg(&rx) && nonneg(&ry) => Range {
                        lo: Some(0),
                        hi: Hi::Unknown,
                    },
                    _ => Range::UNKNOWN,
                }
            }
            _ => Range::UNKNOWN,
        }
    }

    /// The range of an expression already simplified: clamps, sums and
    /// differences with constants by their structure (so a chain of clamps
    /// is not simplified again at every level), anything else through its
    /// linear form.
    fn range_of(&self, e: &Expr) -> Range {
        match e {
            Expr::Int(_) | Expr::Var(_) | Expr::Dim(_) => self.range_of_atom(e),
            Expr::Binary(Binary::Min | Binary::Max, _, _) => self.range_of_atom(e),
            Expr::Binary(op @ (Binary::Add | Binary::Sub), x, c) if matches!(**c, Expr::Int(_)) => {
                let Expr::Int(c) = **c else { unreachable!() };
                let c = if *op == Binary::Sub {
                    c.checked_neg()
                } else {
                    Some(c)
                };
                let r = self.range_of(x);
                let Some(c) = c else {
                    return Range::UNKNOWN;
                };
                Range {
                    lo: r.lo.and_then(|l| l.checked_add(c)),
                    hi: match r.hi {
                        Hi::Const(h) => h.checked_add(c).map_or(Hi::Unknown, Hi::Const),
                        Hi::Sym(_) | Hi::Unknown => Hi::Unknown,
                    },
                }
            }
            _ => self.range(&self.lin(e)),
        }
    }

    /// The range of a linear form (static bounds; a lone variable keeps
    /// its symbolic bound).
    fn range(&self, l: &Lin) -> Range {
        if let ([(1, a)], 0) = (l.terms.as_slice(), l.k) {
            return self.range_of_atom(a);
        }
        let (mut lo, mut hi) = (Some(l.k), Some(l.k));
        for (c, a) in &l.terms {
            let r = self.range_of_atom(a);
            let top = match r.hi {
                Hi::Const(h) => Some(h - 1),
                Hi::Sym(_) | Hi::Unknown => None,
            };
            let (tlo, thi) = if *c > 0 {
                (
                    r.lo.and_then(|x| x.checked_mul(*c)),
                    top.and_then(|x| x.checked_mul(*c)),
                )
            } else {
                (
                    top.and_then(|x| x.checked_mul(*c)),
                    r.lo.and_then(|x| x.checked_mul(*c)),
                )
            };
            lo = lo.zip(tlo).and_then(|(a, b)| a.checked_add(b));
            hi = hi.zip(thi).and_then(|(a, b)| a.checked_add(b));
        }
        Range {
            lo,
            hi: hi
                .and_then(|h| h.checked_add(1))
                .map_or(Hi::Unknown, Hi::Const),
        }
    }

    fn nonneg(&self, l: &Lin) -> bool {
        self.range(l).lo.is_some_and(|x| x >= 0)
    }

    /// The linear form of an i64 expression.
    fn lin(&self, e: &Expr) -> Lin {
        self.try_lin(e).unwrap_or_else(|| Lin::atom(self.expr(e)))
    }

    fn try_lin(&self, e: &Expr) -> Option<Lin> {
        Some(match e {
            Expr::Int(i) => Lin::konst(*i),
            // A variable over an axis of size 1 is 0.
            // A variable with one possible value (an axis of size 1, or
            // the one row a select's condition leaves) is that value.
            Expr::Var(v) if self.vars.get(v).and_then(Range::single).is_some() => {
                Lin::konst(self.vars.get(v).and_then(Range::single)?)
            }
            Expr::Var(_) | Expr::Dim(_) => Lin::atom(e.clone()),
            Expr::Binary(Binary::Add, a, b) => self.lin(a).add(self.lin(b), 1)?,
            Expr::Binary(Binary::Sub, a, b) => self.lin(a).add(self.lin(b), -1)?,
            Expr::Binary(Binary::Mul, a, b) => {
                let (la, lb) = (self.lin(a), self.lin(b));
                match (la.as_const(), lb.as_const()) {
                    (_, Some(c)) => la.scale(c)?,
                    (Some(c), None) => lb.scale(c)?,
                    (None, None) => Lin::atom(Expr::bin(Binary::Mul, la.build(), lb.build())),
                }
            }
            Expr::Binary(Binary::Div, a, b) => self.div(a, b)?,
            Expr::Binary(Binary::Rem, a, b) => self.rem(a, b)?,
            Expr::Binary(op @ (Binary::Min | Binary::Max), a, b) => self.clamp(*op, a, b),
            _ => return None,
        })
    }

    /// `min(a, b)` or `max(a, b)`: the operand the ranges prove is the
    /// result (a clamp that never clamps), else the operation on the
    /// simplified operands.
    fn clamp(&self, op: Binary, a: &Expr, b: &Expr) -> Lin {
        let (la, lb) = (self.lin(a), self.lin(b));
        let (ra, rb) = (self.range(&la), self.range(&lb));
        let top = |r: &Range| match r.hi {
            Hi::Const(h) => Some(h - 1),
            Hi::Sym(_) | Hi::Unknown => None,
        };
        // `x <= y` for every value of each.
        let below = |x: &Range, y: &Range| top(x).zip(y.lo).is_some_and(|(t, l)| t <= l);
        let a_wins = match op {
            Binary::Min => below(&ra, &rb),
            _ => below(&rb, &ra),
        };
        let b_wins = match op {
            Binary::Min => below(&rb, &ra),
            _ => below(&ra, &rb),
        };
        if a_wins {
            la
        } else if b_wins {
            lb
        } else {
            let e = Expr::bin(op, la.build(), lb.build());
            match self.range_of_atom(&e).single() {
                Some(x) => Lin::konst(x),
                None => Lin::atom(e),
            }
        }
    }

    fn div(&self, a: &Expr, b: &Expr) -> Option<Lin> {
        let la = self.lin(a);
        let lb = self.lin(b);
        if let Some(c) = lb.as_const() {
            if c <= 0 || !self.nonneg(&la) {
                return Some(Lin::atom(Expr::bin(Binary::Div, la.build(), lb.build())));
            }
            if let Some(x) = la.as_const() {
                return Some(Lin::konst(x / c));
            }
            // div(div(x, a), c) = div(x, a * c)
            if let ([(1, Expr::Binary(Binary::Div, x, inner))], 0) = (la.terms.as_slice(), la.k)
                && let Expr::Int(a0) = **inner
                && a0 > 0
                && let Some(ac) = a0.checked_mul(c)
            {
                return self.div(x, &Expr::Int(ac));
            }
            let (mut q, mut rest) = (Lin::konst(0), Lin::konst(la.k));
            for (k, t) in &la.terms {
                if k % c == 0 {
                    q.terms.push((k / c, t.clone()));
                } else {
                    rest.terms.push((*k, t.clone()));
                }
            }
            if !self.nonneg(&rest) {
                return Some(Lin::atom(Expr::bin(Binary::Div, la.build(), Expr::Int(c))));
            }
            // Move whole multiples of `c` out of the constant.
            q.k = rest.k / c;
            rest.k %= c;
            if !self.nonneg(&rest) {
                return Some(Lin::atom(Expr::bin(Binary::Div, la.build(), Expr::Int(c))));
            }
            let r = self.range(&rest);
            let tail = match r.hi {
                Hi::Const(h) if h <= c => Lin::konst(0),
                _ if rest.terms.is_empty() => Lin::konst(rest.k / c),
                _ => match self.split_small(&rest, c) {
                    // div(g x + s, c) = div(x, c / g) for 0 <= s < g, g | c
                    Some((g, big, _)) => self.div(&big.build(), &Expr::Int(c / g))?,
                    None => Lin::atom(Expr::bin(Binary::Div, rest.build(), Expr::Int(c))),
                },
            };
            return q.add(tail, 1);
        }
        // div(v, n) with 0 <= v < n
        let r = self.range(&la);
        if r.lo.is_some_and(|l| l >= 0) && r.hi == Hi::Sym(lb.build()) {
            return Some(Lin::konst(0));
        }
        Some(Lin::atom(Expr::bin(Binary::Div, la.build(), lb.build())))
    }

    fn rem(&self, a: &Expr, b: &Expr) -> Option<Lin> {
        let la = self.lin(a);
        let lb = self.lin(b);
        if let Some(c) = lb.as_const() {
            if c <= 0 || !self.nonneg(&la) {
                return Some(Lin::atom(Expr::bin(Binary::Rem, la.build(), lb.build())));
            }
            if let Some(x) = la.as_const() {
                return Some(Lin::konst(x % c));
            }
            let mut rest = Lin::konst(la.k % c);
            for (k, t) in &la.terms {
                if k % c != 0 {
                    rest.terms.push((*k, t.clone()));
                }
            }
            if !self.nonneg(&rest) {
                return Some(Lin::atom(Expr::bin(Binary::Rem, la.build(), Expr::Int(c))));
            }
            return Some(match self.range(&rest).hi {
                Hi::Const(h) if h <= c => rest,
                _ if rest.terms.is_empty() => Lin::konst(rest.k % c),
                _ => match self.split_small(&rest, c) {
                    // rem(g x + s, c) = g rem(x, c / g) + s for 0 <= s < g, g | c
                    Some((g, big, small)) => self
                        .rem(&big.build(), &Expr::Int(c / g))?
                        .scale(g)?
                        .add(small, 1)?,
                    None => Lin::atom(Expr::bin(Binary::Rem, rest.build(), Expr::Int(c))),
                },
            });
        }
        let r = self.range(&la);
        if r.lo.is_some_and(|l| l >= 0) && r.hi == Hi::Sym(lb.build()) {
            return Some(la);
        }
        Some(Lin::atom(Expr::bin(Binary::Rem, la.build(), lb.build())))
    }

    /// `l` (non-negative) as `g * big + small` with `g > 1` dividing `c`
    /// and `0 <= small < g`: the largest such `g` among the common factors
    /// of `c` and `l`'s coefficients. Gives `g`, `big` and `small`.
    fn split_small(&self, l: &Lin, c: i64) -> Option<(i64, Lin, Lin)> {
        let mut gs: Vec<i64> = l.terms.iter().map(|(k, _)| gcd(k.abs(), c)).collect();
        gs.sort_unstable_by(|a, b| b.cmp(a));
        gs.dedup();
        for g in gs.into_iter().filter(|&g| g > 1 && g < c) {
            let (mut big, mut small) =
                (Lin::konst(l.k.div_euclid(g)), Lin::konst(l.k.rem_euclid(g)));
            for (k, t) in &l.terms {
                if k % g == 0 {
                    big.terms.push((k / g, t.clone()));
                } else {
                    small.terms.push((*k, t.clone()));
                }
            }
            let r = self.range(&small);
            if r.lo.is_some_and(|x| x >= 0)
                && matches!(r.hi, Hi::Const(h) if h <= g)
                && self.nonneg(&big)
            {
                return Some((g, big, small));
            }
        }
        None
    }

    /// Any expression: the indices of its loads simplified, reductions'
    /// variables in range inside their bodies.
    fn expr(&self, e: &Expr) -> Expr {
        match e {
            Expr::Load {
                input,
                index,
                guard,
            } => Expr::Load {
                input: *input,
                index: index.iter().map(|i| self.canon(self.lin(i))).collect(),
                guard: guard.as_ref().map(|g| Box::new(self.expr(g))),
            },
            Expr::Reduce {
                op,
                var,
                extent,
                body,
            } => {
                let mut inner = Cx {
                    vars: self.vars.clone(),
                    fold: self.fold,
                };
                inner.vars.insert(*var, Range::upto(extent));
                Expr::Reduce {
                    op: *op,
                    var: *var,
                    extent: Box::new(self.expr(extent)),
                    body: Box::new(inner.expr(body)),
                }
            }
            Expr::Float(_)
            | Expr::Int(_)
            | Expr::Bool(_)
            | Expr::Var(_)
            | Expr::Dim(_)
            | Expr::Acc => e.clone(),
            Expr::Unary(op, x) => match (op, self.expr(x)) {
                (Unary::Not, Expr::Bool(b)) if self.fold => Expr::Bool(!b),
                (_, x) => Expr::Unary(*op, Box::new(x)),
            },
            Expr::Binary(..) if self.fold && integer_arithmetic(e) => self.canon(self.lin(e)),
            Expr::Binary(op, a, b) => {
                let (a, b) = (self.expr(a), self.expr(b));
                match (op, &a, &b) {
                    (_, Expr::Int(x), Expr::Int(y)) if self.fold => match compare(*op, *x, *y) {
                        Some(t) => Expr::Bool(t),
                        None => Expr::Binary(*op, Box::new(a), Box::new(b)),
                    },
                    (Binary::And, Expr::Bool(x), _) | (Binary::And, _, Expr::Bool(x))
                        if self.fold && !x =>
                    {
                        Expr::Bool(false)
                    }
                    (Binary::Or, Expr::Bool(x), _) | (Binary::Or, _, Expr::Bool(x))
                        if self.fold && *x =>
                    {
                        Expr::Bool(true)
                    }
                    _ => Expr::Binary(*op, Box::new(a), Box::new(b)),
                }
            }
            Expr::Select(c, a, b) => match self.expr(c) {
                Expr::Bool(t) if self.fold => self.expr(if t { a } else { b }),
                c => Expr::Select(Box::new(c), Box::new(self.expr(a)), Box::new(self.expr(b))),
            },
            Expr::Cast(t, x) => Expr::Cast(*t, Box::new(self.expr(x))),
            Expr::Round(d, x) => Expr::Round(*d, Box::new(self.expr(x))),
        }
    }
}

impl Cx {
    /// A linear form as an expression: with [`Cx::fold`], its terms sorted
    /// (so that equal forms reached in different orders are equal
    /// expressions).
    fn canon(&self, mut l: Lin) -> Expr {
        if self.fold {
            l.terms.sort_by_cached_key(|(c, a)| (format!("{a:?}"), *c));
        }
        l.build()
    }
}

/// Whether `e` is integer arithmetic on variables, dims and constants
/// only (an i64 whatever the kernel: no loads, floats or casts).
fn integer_arithmetic(e: &Expr) -> bool {
    match e {
        Expr::Int(_) | Expr::Var(_) | Expr::Dim(_) => true,
        Expr::Binary(
            Binary::Add
            | Binary::Sub
            | Binary::Mul
            | Binary::Div
            | Binary::Rem
            | Binary::Min
            | Binary::Max,
            a,
            b,
        ) => integer_arithmetic(a) && integer_arithmetic(b),
        Expr::Float(_)
        | Expr::Bool(_)
        | Expr::Load { .. }
        | Expr::Unary(..)
        | Expr::Binary(..)
        | Expr::Select(..)
        | Expr::Cast(..)
        | Expr::Round(..)
        | Expr::Reduce { .. }
        | Expr::Acc => false,
    }
}

/// `op` on two integer constants, where it is a comparison or a logical
/// operation the evaluator defines on them.
fn compare(op: Binary, x: i64, y: i64) -> Option<bool> {
    Some(match op {
        Binary::Eq => x == y,
        Binary::Ne => x != y,
        Binary::Lt => x < y,
        Binary::Le => x <= y,
        Binary::Gt => x > y,
        Binary::Ge => x >= y,
        Binary::Add
        | Binary::Sub
        | Binary::Mul
        | Binary::Div
        | Binary::Rem
        | Binary::Pow
        | Binary::Max
        | Binary::Min
        | Binary::And
        | Binary::Or => return None,
    })
}

/// A map kernel's expression `e` at one lane of a run: output variable
/// `v` (the last axis, of static extent a multiple of `lanes`) replaced by
/// `chunk * lanes + lane`, where `chunk` (a fresh variable, in `0 ..
/// extent / lanes`) numbers the runs along the axis. Every integer
/// expression is simplified with the ranges (load indices, guards, and
/// integer arithmetic that is compared, selected on or cast), comparisons
/// of constants and selects on constants are folded, and linear forms
/// are written with sorted terms, so that two lanes reading the same
/// element read it through equal expressions. A backend that computes a
/// run's lanes in straight-line code emits each lane's expression: the
/// parities and halves of a rotary embedding (`rem(v, 2)`, `div(v, 2)`)
/// become constants and shared values. `None` where `v`'s axis is not a
/// static multiple of `lanes`.
pub fn at_lane(k: &Kernel, e: &Expr, v: Var, lanes: i64, chunk: Var, lane: i64) -> Option<Expr> {
    let extent = match k.output.shape.0.get(v.0 as usize)? {
        Dim::Static(n) => i64::try_from(*n).ok()?,
        Dim::Sym(_) => return None,
    };
    at_run_lane(k, e, v, extent, lanes, chunk, lane)
}

/// [`at_lane`] for any variable `v` of static extent `extent` (an
/// attention's depth variable in an operand computed from its inputs: a
/// rotary embedding of the queries), the other variables in the output's
/// axes.
pub fn at_run_lane(
    k: &Kernel,
    e: &Expr,
    v: Var,
    extent: i64,
    lanes: i64,
    chunk: Var,
    lane: i64,
) -> Option<Expr> {
    if lanes <= 0 || extent % lanes != 0 || !(0..lanes).contains(&lane) || rebinds(e, v) {
        return None;
    }
    let mut vars = output_ranges(k);
    vars.remove(&v);
    vars.insert(chunk, Range::upto(&Expr::Int(extent / lanes)));
    let cx = Cx { vars, fold: true };
    let at = Expr::bin(
        Binary::Add,
        Expr::bin(Binary::Mul, Expr::Var(chunk), Expr::Int(lanes)),
        Expr::Int(lane),
    );
    Some(cx.expr(&e.substitute(&|x| (*x == Expr::Var(v)).then(|| at.clone()))))
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The stride of output variable `v` in a load of `k`'s input `input` at
/// `index`: the coefficient of `v` in the element offset (a symbolic
/// extent counted as `sym`), where every index is linear in `v`; `None`
/// where `v` lies inside a division, a remainder, a product of variables
/// or a clamp. A backend walks an element kernel's output in the order
/// of its largest input with it.
pub fn stride_of(k: &Kernel, input: usize, index: &[Expr], v: Var, sym: i64) -> Option<i64> {
    let shape = &k.inputs.get(input)?.shape.0;
    if shape.len() != index.len() {
        return None;
    }
    let cx = Cx {
        vars: output_ranges(k),
        fold: false,
    };
    let mut stride = 0i64;
    let mut below = 1i64;
    for (d, ie) in shape.iter().zip(index).rev() {
        let l = cx.lin(ie);
        let mut c = 0i64;
        for (coef, atom) in &l.terms {
            if *atom == Expr::Var(v) {
                c = c.checked_add(*coef)?;
            } else if mentions(atom, v) {
                return None;
            }
        }
        stride = stride.checked_add(c.checked_mul(below)?)?;
        let extent = match d {
            Dim::Static(n) => i64::try_from(*n).ok()?,
            Dim::Sym(_) => sym,
        };
        below = below.checked_mul(extent)?;
    }
    Some(stride)
}

/// `k` with the index expressions of its loads simplified, given that its
/// output variables lie in the output's axes and its contraction and
/// attention variables in their extents.
pub fn simplify(k: &Kernel) -> Kernel {
    let mut cx = Cx {
        vars: output_ranges(k),
        fold: false,
    };
    let body = match &k.body {
        Body::Map { expr } => Body::Map {
            expr: cx.expr(expr),
        },
        Body::Contract {
            k: kv,
            extent,
            a,
            b,
            epilogue,
        } => {
            let epilogue = cx.expr(epilogue);
            cx.vars.insert(*kv, Range::upto(extent));
            Body::Contract {
                k: *kv,
                extent: extent.clone(),
                a: cx.expr(a),
                b: cx.expr(b),
                epilogue,
            }
        }
        Body::Attention(t) => {
            let mut t = (**t).clone();
            t.epilogue = cx.expr(&t.epilogue);
            cx.vars.insert(t.j, Range::upto(&t.keys));
            cx.vars.insert(t.d, Range::upto(&t.depth));
            t.q = cx.expr(&t.q);
            t.k = cx.expr(&t.k);
            t.v = cx.expr(&t.v);
            t.bias = t.bias.as_ref().map(|b| cx.expr(b));
            Body::Attention(Box::new(t))
        }
    };
    Kernel { body, ..k.clone() }
}

/// The ranges of a kernel's output variables.
fn output_ranges(k: &Kernel) -> HashMap<Var, Range> {
    let mut vars = HashMap::new();
    for (i, d) in k.output.shape.0.iter().enumerate() {
        let extent = match d {
            Dim::Static(n) => Expr::Int(*n as i64),
            Dim::Sym(s) => match k.dims.iter().position(|x| x == s) {
                Some(j) => Expr::Dim(j as u32),
                None => continue,
            },
        };
        vars.insert(Var(i as u32), Range::upto(&extent));
    }
    vars
}

/// Whether `lanes` consecutive values of `kv` from a multiple of `lanes`
/// read consecutive elements of a load at `index` (`kv` in `0 .. extent`,
/// `extent` a multiple of `lanes`; the other variables in the output's
/// axes): the index of the run's first element, as an expression of
/// `chunk` (the run's number, `kv / lanes`) whose last component is a
/// multiple of `lanes`, or `None` when that is not proven. This is what
/// lets a backend copy the run with one vector access.
pub fn chunk_index(
    k: &Kernel,
    index: &[Expr],
    kv: Var,
    extent: i64,
    lanes: i64,
    chunk: Var,
) -> Option<Vec<Expr>> {
    if lanes <= 0 || extent % lanes != 0 {
        return None;
    }
    let lane = Var(chunk.0 + 1);
    let mut vars = output_ranges(k);
    vars.insert(chunk, Range::upto(&Expr::Int(extent / lanes)));
    vars.insert(lane, Range::upto(&Expr::Int(lanes)));
    let cx = Cx { vars, fold: false };
    let at = Expr::bin(
        Binary::Add,
        Expr::bin(Binary::Mul, Expr::Var(chunk), Expr::Int(lanes)),
        Expr::Var(lane),
    );
    let uses_lane = |e: &Expr| super::max_var(e) >= lane.0 && mentions(e, lane);
    let (last, lead) = index.split_last()?;
    let mut out = Vec::with_capacity(index.len());
    for e in lead {
        let s = cx
            .lin(&e.substitute(&|x| (*x == Expr::Var(kv)).then(|| at.clone())))
            .build();
        if uses_lane(&s) {
            return None;
        }
        out.push(s);
    }
    let l = cx.lin(&last.substitute(&|x| (*x == Expr::Var(kv)).then(|| at.clone())));
    let mut rest = Lin::konst(l.k);
    let mut one_lane = false;
    for (c, t) in &l.terms {
        if *t == Expr::Var(lane) && *c == 1 {
            one_lane = true;
        } else if uses_lane(t) || c % lanes != 0 {
            return None;
        } else {
            rest.terms.push((*c, t.clone()));
        }
    }
    if !one_lane || rest.k % lanes != 0 {
        return None;
    }
    out.push(rest.build());
    Some(out)
}

/// Whether a reduction inside `e` binds `v`.
fn rebinds(e: &Expr, v: Var) -> bool {
    if let Expr::Reduce { var, .. } = e
        && *var == v
    {
        return true;
    }
    let mut any = false;
    e.for_each_child(|c| any |= rebinds(c, v));
    any
}

/// Whether `e` names variable `v`.
fn mentions(e: &Expr, v: Var) -> bool {
    if *e == Expr::Var(v) {
        return true;
    }
    let mut any = false;
    e.for_each_child(|c| any |= mentions(c, v));
    any
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Shape;
    use crate::kernel::Buffer;

    fn v(i: u32) -> Expr {
        Expr::Var(Var(i))
    }

    fn b(op: Binary, x: Expr, y: Expr) -> Expr {
        Expr::bin(op, x, y)
    }

    fn i(n: i64) -> Expr {
        Expr::Int(n)
    }

    /// The index of the attention output read back as rows of heads (W3's
    /// output projection): `o[0, h, s, d]` at row `v1`, column `v3`.
    #[test]
    fn head_rows_read_back() {
        let flat = b(Binary::Add, b(Binary::Mul, v(1), i(2048)), v(3));
        let row = b(Binary::Div, flat.clone(), i(128));
        let index = vec![
            b(
                Binary::Div,
                b(Binary::Div, row.clone(), i(16)),
                Expr::Dim(0),
            ),
            b(Binary::Rem, row.clone(), i(16)),
            b(Binary::Rem, b(Binary::Div, row, i(16)), Expr::Dim(0)),
            b(Binary::Rem, flat, i(128)),
        ];
        let buf = |n: &str, shape: Vec<Dim>| Buffer {
            name: n.into(),
            dtype: crate::DType::BF16,
            shape: Shape(shape),
        };
        let k = Kernel {
            name: "k".into(),
            inputs: vec![buf(
                "o",
                vec![
                    Dim::Static(1),
                    Dim::Static(16),
                    Dim::sym("seq"),
                    Dim::Static(128),
                ],
            )],
            output: buf(
                "y",
                vec![Dim::Static(1), Dim::sym("seq"), Dim::Static(2048)],
            ),
            dims: vec!["seq".into()],
            float: crate::kernel::Ty::F32,
            body: Body::Contract {
                k: Var(3),
                extent: i(2048),
                a: Expr::load(0, index),
                b: Expr::Float(1.0),
                epilogue: Expr::Acc,
            },
        };
        let s = simplify(&k);
        let Body::Contract { a, .. } = &s.body else {
            panic!("not a contraction")
        };
        assert_eq!(a.to_string(), "in0[0, div(v3, 128), v1, rem(v3, 128)]");
        // Eight consecutive k from a multiple of 8 are one 16-byte run;
        // seven are not aligned runs, nor is a run along the row index.
        let Expr::Load { index, .. } = a else {
            panic!("not a load")
        };
        let chunk = chunk_index(&s, index, Var(3), 2048, 8, Var(9)).expect("a run");
        let text: Vec<String> = chunk.iter().map(|e| e.to_string()).collect();
        assert_eq!(text, ["0", "div(v9, 16)", "v1", "mul(rem(v9, 16), 8)"]);
        assert_eq!(chunk_index(&s, index, Var(3), 2044, 7, Var(9)), None);
        assert_eq!(chunk_index(&s, index, Var(1), 64, 8, Var(9)), None);
    }

    /// Nothing is rewritten without a proof: a possibly negative dividend
    /// (a padded convolution's input row) keeps its division, and constant
    /// parts of a dividend leave only whole multiples.
    #[test]
    fn only_what_the_ranges_prove() {
        let mut vars = HashMap::new();
        vars.insert(Var(0), Range::upto(&i(56)));
        vars.insert(Var(1), Range::upto(&i(3)));
        let cx = Cx { vars, fold: false };
        // (v0 + v1 - 1) / 2: v0 + v1 - 1 may be -1
        let e = b(
            Binary::Div,
            b(Binary::Sub, b(Binary::Add, v(0), v(1)), i(1)),
            i(2),
        );
        assert_eq!(
            cx.lin(&e).build().to_string(),
            "div(sub(add(v0, v1), 1), 2)"
        );
        // (4 v1 + v0 + 9) / 4 = v1 + 2 + (v0 + 1) / 4
        let e = b(
            Binary::Div,
            b(
                Binary::Add,
                b(Binary::Add, b(Binary::Mul, v(1), i(4)), v(0)),
                i(9),
            ),
            i(4),
        );
        assert_eq!(
            cx.lin(&e).build().to_string(),
            "add(add(v1, div(add(v0, 1), 4)), 2)"
        );
        // (8 v1 + v0 % 4) % 8 = v0 % 4
        let e = b(
            Binary::Rem,
            b(
                Binary::Add,
                b(Binary::Mul, v(1), i(8)),
                b(Binary::Rem, v(0), i(4)),
            ),
            i(8),
        );
        assert_eq!(cx.lin(&e).build().to_string(), "rem(v0, 4)");
        // 16-byte chunks: with v1 < 8, (8 v0 + v1) / 128 = v0 / 16 and
        // (8 v0 + v1) % 128 = 8 (v0 % 16) + v1
        let mut vars = HashMap::new();
        vars.insert(Var(0), Range::upto(&i(256)));
        vars.insert(Var(1), Range::upto(&i(8)));
        let cx = Cx { vars, fold: false };
        let x = b(Binary::Add, b(Binary::Mul, v(0), i(8)), v(1));
        let d = b(Binary::Div, x.clone(), i(128));
        assert_eq!(cx.lin(&d).build().to_string(), "div(v0, 16)");
        let r = b(Binary::Rem, x, i(128));
        assert_eq!(
            cx.lin(&r).build().to_string(),
            "add(mul(rem(v0, 16), 8), v1)"
        );
    }

    /// A concatenation's clamps (W3d's KV cache joined with the new key,
    /// `v2 < 2049`): a clamp the range never reaches goes, one it may reach
    /// stays, and one whose result has a single value is that value.
    #[test]
    fn clamps_the_ranges_decide() {
        let mut vars = HashMap::new();
        vars.insert(Var(2), Range::upto(&i(2049)));
        vars.insert(Var(3), Range::upto(&i(128)));
        let cx = Cx { vars, fold: false };
        let clamp = |x: Expr, lo: i64, hi: i64| b(Binary::Min, b(Binary::Max, x, i(lo)), i(hi));
        // the cache rows: the lower clamp never bites, the upper one may
        assert_eq!(
            cx.lin(&clamp(v(2), 0, 2047)).build().to_string(),
            "min(v2, 2047)"
        );
        // the new row: v2 - 2048 <= 0, so max(., 0) is 0 and so is the clamp
        let e = b(
            Binary::Mul,
            clamp(b(Binary::Sub, v(2), i(2048)), 0, 0),
            i(2048),
        );
        assert_eq!(cx.lin(&e).build().to_string(), "0");
        // neither side bites: the value itself; both may: kept
        assert_eq!(cx.lin(&clamp(v(3), 0, 127)).build().to_string(), "v3");
        assert_eq!(
            cx.lin(&clamp(b(Binary::Sub, v(3), i(1)), 0, 125))
                .build()
                .to_string(),
            "min(max(sub(v3, 1), 0), 125)"
        );
        // v3 - 1 <= 126: only the lower clamp may bite
        assert_eq!(
            cx.lin(&clamp(b(Binary::Sub, v(3), i(1)), 0, 126))
                .build()
                .to_string(),
            "max(sub(v3, 1), 0)"
        );
        // min and max with each other's operands reversed
        assert_eq!(
            cx.lin(&b(Binary::Max, i(-1), v(3))).build().to_string(),
            "v3"
        );
        assert_eq!(
            cx.lin(&b(Binary::Min, i(500), v(3))).build().to_string(),
            "v3"
        );
        // A chain of 60 clamps (a model's pads and slices in a row) takes
        // time linear in its length, not doubling with each level.
        let mut e = b(Binary::Sub, v(3), i(1));
        for _ in 0..60 {
            e = clamp(b(Binary::Add, e, i(1)), 1, 126);
        }
        let start = std::time::Instant::now();
        let text = cx.lin(&e).build().to_string();
        assert!(text.starts_with("min("), "{text}");
        assert!(start.elapsed().as_secs() < 5, "{:?}", start.elapsed());
    }

    /// Each lane of an 8-element run of W3's rotary embedding of the keys
    /// (adjacent pairs): the parity select is decided, the pair's other
    /// element and the cosine are read through sorted linear forms, and
    /// every lane's expression (the run variable put back as `v3 / 8`)
    /// evaluates bit for bit as the original on random inputs at the
    /// elements of its lane.
    #[test]
    fn lanes_of_a_rotary_embedding() {
        use rand::{Rng, SeedableRng};
        let seq = 6;
        let buf = |n: &str, shape: Vec<Dim>| Buffer {
            name: n.into(),
            dtype: crate::DType::BF16,
            shape: Shape(shape),
        };
        let half = b(Binary::Div, v(3), i(2));
        let parity = b(Binary::Rem, v(3), i(2));
        let x = |off: Expr| {
            Expr::load(
                2,
                vec![
                    i(0),
                    v(2),
                    b(Binary::Add, b(Binary::Mul, v(1), i(128)), off),
                ],
            )
        };
        let own = x(b(Binary::Add, v(3), i(2048)));
        let own_load = own.clone();
        let other = x(b(
            Binary::Add,
            b(
                Binary::Sub,
                b(Binary::Mul, half.clone(), i(2)),
                parity.clone(),
            ),
            i(2049),
        ));
        let other_load = other.clone();
        let (cos, sin) = (
            Expr::load(0, vec![v(2), half.clone()]),
            Expr::load(1, vec![v(2), half]),
        );
        let expr = Expr::Select(
            Box::new(b(Binary::Eq, parity, i(0))),
            Box::new(b(
                Binary::Sub,
                b(Binary::Mul, own.clone(), cos.clone()),
                b(Binary::Mul, other.clone(), sin.clone()),
            )),
            Box::new(b(
                Binary::Add,
                b(Binary::Mul, own, sin),
                b(Binary::Mul, other, cos),
            )),
        );
        let k = Kernel {
            name: "rope".into(),
            inputs: vec![
                buf("cos", vec![Dim::sym("seq"), Dim::Static(64)]),
                buf("sin", vec![Dim::sym("seq"), Dim::Static(64)]),
                buf(
                    "qkv",
                    vec![Dim::Static(1), Dim::sym("seq"), Dim::Static(6144)],
                ),
            ],
            output: buf(
                "k",
                vec![
                    Dim::Static(1),
                    Dim::Static(16),
                    Dim::sym("seq"),
                    Dim::Static(128),
                ],
            ),
            dims: vec!["seq".into()],
            float: crate::kernel::Ty::F32,
            body: Body::Map { expr: expr.clone() },
        };
        let chunk = Var(4);
        let lanes: Vec<Expr> = (0..8)
            .map(|j| at_lane(&k, &expr, Var(3), 8, chunk, j).expect("a static axis"))
            .collect();
        assert_eq!(
            lanes[1].to_string(),
            "add(mul(in2[0, v2, add(add(mul(v1, 128), mul(v4, 8)), 2049)], in1[v2, mul(v4, 4)]), \
             mul(in2[0, v2, add(add(mul(v1, 128), mul(v4, 8)), 2048)], in0[v2, mul(v4, 4)]))"
        );
        assert_eq!(
            lanes[6].to_string(),
            "sub(mul(in2[0, v2, add(add(mul(v1, 128), mul(v4, 8)), 2054)], in0[v2, add(mul(v4, 4), 3)]), \
             mul(in2[0, v2, add(add(mul(v1, 128), mul(v4, 8)), 2055)], in1[v2, add(mul(v4, 4), 3)]))"
        );
        // No runs along a symbolic axis, nor of a length that does not
        // divide the axis.
        assert_eq!(at_lane(&k, &expr, Var(2), 8, chunk, 0), None);
        assert_eq!(at_lane(&k, &expr, Var(3), 3, chunk, 0), None);

        // The strides of the output's variables in the keys' own load
        // (`qkv[0, s, 2048 + 128 h + d]`, `seq` counted as 1000): s 6144,
        // h 128, d 1, the batch 0; none in the partner's (d inside a
        // division) for d.
        let Expr::Load { index, .. } = own_load else {
            unreachable!()
        };
        let strides: Vec<Option<i64>> = (0..4)
            .map(|a| stride_of(&k, 2, &index, Var(a), 1000))
            .collect();
        assert_eq!(strides, [Some(0), Some(128), Some(6144), Some(1)]);
        let Expr::Load { index, .. } = other_load else {
            unreachable!()
        };
        assert_eq!(stride_of(&k, 2, &index, Var(3), 1000), None);
        assert_eq!(stride_of(&k, 2, &index, Var(1), 1000), Some(128));
        // cos[s, d / 2]: s's stride is the row of 64.
        assert_eq!(
            stride_of(&k, 0, &[v(2), b(Binary::Div, v(3), i(2))], Var(2), 1000),
            Some(64)
        );

        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(rand::random());
        let mut random = |n: usize| -> Vec<f64> {
            (0..n)
                .map(|_| crate::numeric::round_to(crate::DType::BF16, rng.random_range(-2.0..2.0)))
                .collect()
        };
        let inputs = [
            crate::interp::Tensor::new(crate::DType::BF16, &[seq, 64], random(seq * 64)),
            crate::interp::Tensor::new(crate::DType::BF16, &[seq, 64], random(seq * 64)),
            crate::interp::Tensor::new(crate::DType::BF16, &[1, seq, 6144], random(seq * 6144)),
        ];
        let refs: Vec<&crate::interp::Tensor> = inputs.iter().collect();
        let dims = HashMap::from([("seq".to_string(), seq)]);
        let want = super::super::eval::run(&k, &refs, &dims).expect("the original runs");
        for (j, lane) in lanes.iter().enumerate() {
            let back = b(Binary::Div, v(3), i(8));
            let e = lane.substitute(&|x| (*x == Expr::Var(chunk)).then(|| back.clone()));
            let kj = Kernel {
                body: Body::Map { expr: e },
                ..k.clone()
            };
            let got = super::super::eval::run(&kj, &refs, &dims).expect("the lane runs");
            for (n, (g, w)) in got.data.iter().zip(&want.data).enumerate() {
                if n % 8 == j {
                    assert_eq!(g.to_bits(), w.to_bits(), "lane {j}, element {n}");
                }
            }
        }
    }
}
