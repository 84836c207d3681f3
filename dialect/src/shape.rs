//! Shapes with static and named symbolic dimensions, and NumPy broadcasting.

use std::collections::HashMap;
use std::fmt;

/// One dimension: a known size or a named symbol bound when the model runs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    /// A size known at compile time.
    Static(u64),
    /// A size named by a symbol (`batch`, `seq`), the same everywhere it appears.
    Sym(String),
}

impl Dim {
    /// The static size, if known.
    pub fn as_static(&self) -> Option<u64> {
        match self {
            Dim::Static(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }

    /// A symbolic dimension.
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(name.to_string())
    }

    /// The concrete size under the given symbol bindings.
    pub fn resolve(&self, bindings: &HashMap<String, usize>) -> Result<usize, String> {
        match self {
            Dim::Static(n) => Ok(*n as usize),
            Dim::Sym(s) => bindings.get(s).copied().ok_or_else(|| s.clone()),
        }
    }
}

impl From<u64> for Dim {
    fn from(n: u64) -> Dim {
        Dim::Static(n)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Static(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

/// A tensor shape: a list of dimensions (rank 0 is a scalar).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Shape(pub Vec<Dim>);

/// Why two shapes do not broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastError {
    /// The offending axis, counted from the end (-1 is the last axis).
    pub axis_from_end: i64,
    /// The two dimensions that disagree.
    pub dims: (Dim, Dim),
}

impl fmt::Display for BroadcastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = match &self.dims {
            (Dim::Sym(_), _) | (_, Dim::Sym(_)) => {
                "a symbolic size broadcasts only with 1 or the same symbol"
            }
            _ => "sizes must be equal or one of them 1",
        };
        write!(
            f,
            "axis {}: {} vs {} ({rule})",
            self.axis_from_end, self.dims.0, self.dims.1
        )
    }
}

impl Shape {
    /// A fully static shape.
    pub fn of(dims: &[u64]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::Static(d)).collect())
    }

    /// A scalar (rank 0).
    pub fn scalar() -> Shape {
        Shape(Vec::new())
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The dimensions.
    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    /// The static sizes, if every dimension is static.
    pub fn as_static(&self) -> Option<Vec<u64>> {
        self.0.iter().map(Dim::as_static).collect()
    }

    /// Element count, if static.
    pub fn numel(&self) -> Option<u64> {
        self.as_static().map(|d| d.iter().product())
    }

    /// The names of the symbols that occur, in order of first occurrence.
    pub fn symbols(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for d in &self.0 {
            if let Dim::Sym(s) = d
                && !out.contains(&s.as_str())
            {
                out.push(s);
            }
        }
        out
    }

    /// Normalizes a possibly negative axis against this rank.
    pub fn axis(&self, axis: i64) -> Option<usize> {
        normalize_axis(axis, self.rank())
    }

    /// NumPy broadcasting of two shapes.
    ///
    /// Static sizes broadcast when equal or one is 1. A symbolic size
    /// broadcasts with 1 and with the same symbol only: kiln does not assume
    /// anything about a symbol's value, so `batch` against `4` is an error.
    pub fn broadcast(&self, other: &Shape) -> Result<Shape, BroadcastError> {
        let rank = self.rank().max(other.rank());
        let mut out = Vec::with_capacity(rank);
        for i in 0..rank {
            let a = dim_from_end(self, rank - 1 - i);
            let b = dim_from_end(other, rank - 1 - i);
            let d = match (a, b) {
                (None, Some(d)) | (Some(d), None) => d.clone(),
                (Some(a), Some(b)) => match (a, b) {
                    _ if a == b => a.clone(),
                    (Dim::Static(1), d) | (d, Dim::Static(1)) => d.clone(),
                    _ => {
                        return Err(BroadcastError {
                            axis_from_end: i as i64 - rank as i64,
                            dims: (a.clone(), b.clone()),
                        });
                    }
                },
                (None, None) => unreachable!("index below the larger rank"),
            };
            out.push(d);
        }
        Ok(Shape(out))
    }

    /// Whether `self` broadcasts to exactly `target` (as `expand` requires).
    pub fn broadcasts_to(&self, target: &Shape) -> bool {
        self.rank() <= target.rank() && self.broadcast(target).is_ok_and(|b| &b == target)
    }

    /// Binds this shape's symbols to the sizes of a concrete shape, checking
    /// the static sizes and any symbol already bound.
    pub fn bind(
        &self,
        concrete: &[usize],
        bindings: &mut HashMap<String, usize>,
    ) -> Result<(), String> {
        if concrete.len() != self.rank() {
            return Err(format!(
                "expected rank {} ({self}), found rank {} ({})",
                self.rank(),
                concrete.len(),
                fmt_concrete(concrete)
            ));
        }
        for (i, (d, &c)) in self.0.iter().zip(concrete).enumerate() {
            match d {
                Dim::Static(n) if *n as usize != c => {
                    return Err(format!(
                        "expected {self}, found {}: axis {i} must be {n}",
                        fmt_concrete(concrete)
                    ));
                }
                Dim::Static(_) => {}
                Dim::Sym(s) => match bindings.get(s) {
                    Some(&b) if b != c => {
                        return Err(format!(
                            "expected {self}, found {}: `{s}` is already {b}, here it is {c}",
                            fmt_concrete(concrete)
                        ));
                    }
                    Some(_) => {}
                    None => {
                        bindings.insert(s.clone(), c);
                    }
                },
            }
        }
        Ok(())
    }

    /// Concrete sizes under the bindings; the error names an unbound symbol.
    pub fn resolve(&self, bindings: &HashMap<String, usize>) -> Result<Vec<usize>, String> {
        self.0.iter().map(|d| d.resolve(bindings)).collect()
    }
}

/// Formats concrete sizes like a shape: `[2, 3]`.
pub fn fmt_concrete(dims: &[usize]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Normalizes `axis` (negative counts from the end) for a tensor of `rank`.
pub fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

fn dim_from_end(s: &Shape, from_end: usize) -> Option<&Dim> {
    let r = s.rank();
    (from_end < r).then(|| &s.0[r - 1 - from_end])
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(dims: &[&str]) -> Shape {
        Shape(
            dims.iter()
                .map(|d| match d.parse::<u64>() {
                    Ok(n) => Dim::Static(n),
                    Err(_) => Dim::sym(d),
                })
                .collect(),
        )
    }

    #[test]
    fn numpy_broadcasting() {
        assert_eq!(
            s(&["4", "1"]).broadcast(&s(&["3"])).unwrap(),
            s(&["4", "3"])
        );
        assert_eq!(s(&[]).broadcast(&s(&["2", "5"])).unwrap(), s(&["2", "5"]));
        assert_eq!(
            s(&["8", "1", "6", "1"])
                .broadcast(&s(&["7", "1", "5"]))
                .unwrap(),
            s(&["8", "7", "6", "5"])
        );
        assert_eq!(
            s(&["batch", "1"]).broadcast(&s(&["1", "7"])).unwrap(),
            s(&["batch", "7"])
        );
        assert_eq!(
            s(&["batch", "7"]).broadcast(&s(&["batch", "7"])).unwrap(),
            s(&["batch", "7"])
        );
        let e = s(&["4", "3"]).broadcast(&s(&["5"])).unwrap_err();
        assert_eq!(e.axis_from_end, -1);
        assert_eq!(
            e.to_string(),
            "axis -1: 3 vs 5 (sizes must be equal or one of them 1)"
        );
        let e = s(&["batch"]).broadcast(&s(&["4"])).unwrap_err();
        assert!(e.to_string().contains("symbolic size"), "{e}");
        assert!(s(&["batch"]).broadcast(&s(&["seq"])).is_err());
    }

    #[test]
    fn broadcasts_to_target_only() {
        assert!(s(&["1", "3"]).broadcasts_to(&s(&["2", "3"])));
        assert!(s(&["3"]).broadcasts_to(&s(&["batch", "3"])));
        assert!(!s(&["2", "3"]).broadcasts_to(&s(&["3"])));
        assert!(!s(&["2", "3"]).broadcasts_to(&s(&["1", "3"])));
    }

    #[test]
    fn binding_symbols() {
        let mut b = HashMap::new();
        s(&["batch", "4"]).bind(&[3, 4], &mut b).unwrap();
        assert_eq!(b["batch"], 3);
        let err = s(&["batch", "seq"]).bind(&[5, 2], &mut b).unwrap_err();
        assert!(err.contains("`batch` is already 3"), "{err}");
        let err = s(&["batch", "4"]).bind(&[3, 5], &mut b).unwrap_err();
        assert!(err.contains("axis 1 must be 4"), "{err}");
        assert_eq!(s(&["batch", "2"]).resolve(&b).unwrap(), vec![3, 2]);
        assert_eq!(s(&["seq"]).resolve(&b).unwrap_err(), "seq");
    }

    #[test]
    fn axes() {
        assert_eq!(normalize_axis(-1, 3), Some(2));
        assert_eq!(normalize_axis(3, 3), None);
        assert_eq!(normalize_axis(-4, 3), None);
        assert_eq!(normalize_axis(0, 0), None);
    }
}
