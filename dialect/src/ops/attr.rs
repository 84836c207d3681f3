//! Attribute values: the typed fields of ops, and their generic text form.

use std::fmt;

use crate::DType;
use crate::layout::Layout;
use crate::quant::QuantScheme;
use crate::shape::Dim;

/// An attribute as written in text, before it is given its op's field type.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A bare identifier: a dtype, an enum case, a symbolic dim.
    Ident(String),
    List(Vec<AttrValue>),
    Quant(QuantScheme),
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Float(x) => f.write_str(&format_f64(*x)),
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Ident(s) => f.write_str(s),
            AttrValue::List(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            AttrValue::Quant(q) => write!(f, "{q}"),
        }
    }
}

/// Prints an f64 so that parsing it back gives the same bits: the shortest
/// round-trip form, always with a `.` or an exponent; `inf`, `-inf`, `nan`.
pub fn format_f64(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{x:?}")
    }
}

/// A Rust type that an op attribute can have.
pub trait Attribute: Sized + Clone + PartialEq {
    /// What the text must look like, for error messages ("a list of integers").
    const EXPECTED: &'static str;
    /// The generic text form.
    fn to_attr(&self) -> AttrValue;
    /// Converts from the generic text form; `None` when the value does not fit.
    fn from_attr(v: &AttrValue) -> Option<Self>;
}

impl Attribute for bool {
    const EXPECTED: &'static str = "`true` or `false`";
    fn to_attr(&self) -> AttrValue {
        AttrValue::Bool(*self)
    }
    fn from_attr(v: &AttrValue) -> Option<Self> {
        match v {
            AttrValue::Bool(b) => Some(*b),
            AttrValue::Int(_)
            | AttrValue::Float(_)
            | AttrValue::Ident(_)
            | AttrValue::List(_)
            | AttrValue::Quant(_) => None,
        }
    }
}

impl Attribute for i64 {
    const EXPECTED: &'static str = "an integer";
    fn to_attr(&self) -> AttrValue {
        AttrValue::Int(*self)
    }
    fn from_attr(v: &AttrValue) -> Option<Self> {
        match v {
            AttrValue::Int(i) => Some(*i),
            AttrValue::Float(_)
            | AttrValue::Bool(_)
            | AttrValue::Ident(_)
            | AttrValue::List(_)
            | AttrValue::Quant(_) => None,
        }
    }
}

impl Attribute for f64 {
    const EXPECTED: &'static str = "a number";
    fn to_attr(&self) -> AttrValue {
        AttrValue::Float(*self)
    }
    fn from_attr(v: &AttrValue) -> Option<Self> {
        number(v)
    }
}

fn number(v: &AttrValue) -> Option<f64> {
    match v {
        AttrValue::Int(i) => Some(*i as f64),
        AttrValue::Float(x) => Some(*x),
        AttrValue::Ident(s) => match s.as_str() {
            "inf" => Some(f64::INFINITY),
            "nan" => Some(f64::NAN),
            _ => None,
        },
        AttrValue::Bool(_) | AttrValue::List(_) | AttrValue::Quant(_) => None,
    }
}

/// An optional attribute: absent in text means `None`.
impl<T: Attribute> Attribute for Option<T> {
    const EXPECTED: &'static str = T::EXPECTED;
    fn to_attr(&self) -> AttrValue {
        match self {
            Some(v) => v.to_attr(),
            // Never printed: `None` is the default and defaults are omitted.
            None => AttrValue::List(Vec::new()),
        }
    }
    fn from_attr(v: &AttrValue) -> Option<Self> {
        T::from_attr(v).map(Some)
    }
}

impl Attribute for Vec<i64> {
    const EXPECTED: &'static str = "a list of integers";
    fn to_attr(&self) -> AttrValue {
        AttrValue::List(self.iter().map(|&i| AttrValue::Int(i)).collect())
    }
    fn from_attr(v: &AttrValue) -> Option<Self> {
        match v {
            AttrValue::List(items) => items.iter().map(i64::from_attr).collect(),
            AttrValue::Int(_)
            | AttrValue::Float(_)
            | AttrValue::Bool(_)
            | AttrValue::Ident(_)
            | AttrValue::Quant(_) => None,
        }
    }
}

impl Attribute for Vec<Dim> {
    const EXPECTED: &'static str = "a list of sizes and symbols, like [batch, 16, 64]";
    fn to_attr(&self) -> AttrValue {
        AttrValue::List(
            self.iter()
                .map(|d| match d {
                    Dim::Static(n) => AttrValue::Int(*n as i64),
                    Dim::Sym(s) => AttrValue::Ident(s.clone()),
                })
                .collect(),
        )
    }
    fn from_attr(v: &AttrValue) -> Option<Self> {
        let AttrValue::List(items) = v else {
            return None;
        };
        items
            .iter()
            .map(|item| match item {
                AttrValue::Int(n) if *n >= 0 => Some(Dim::Static(*n as u64)),
                AttrValue::Ident(s) => Some(Dim::Sym(s.clone())),
                AttrValue::Int(_)
                | AttrValue::Float(_)
                | AttrValue::Bool(_)
                | AttrValue::List(_)
                | AttrValue::Quant(_) => None,
            })
            .collect()
    }
}

impl Attribute for DType {
    const EXPECTED: &'static str = "an element type, like f32";
    fn to_attr(&self) -> AttrValue {
        AttrValue::Ident(self.name().into())
    }
    fn from_attr(v: &AttrValue) -> Option<Self> {
        match v {
            AttrValue::Ident(s) => DType::from_name(s),
            AttrValue::Int(_)
            | AttrValue::Float(_)
            | AttrValue::Bool(_)
            | AttrValue::List(_)
            | AttrValue::Quant(_) => None,
        }
    }
}

impl Attribute for Layout {
    const EXPECTED: &'static str = "a layout: row_major, nchw, nhwc or packed(NAME)";
    fn to_attr(&self) -> AttrValue {
        AttrValue::Ident(self.to_string())
    }
    fn from_attr(v: &AttrValue) -> Option<Self> {
        let AttrValue::Ident(s) = v else { return None };
        match s.as_str() {
            "row_major" => Some(Layout::RowMajor),
            "nchw" => Some(Layout::Nchw),
            "nhwc" => Some(Layout::Nhwc),
            other => {
                let name = other.strip_prefix("packed(")?.strip_suffix(')')?;
                let ok =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                ok.then(|| Layout::Packed(name.to_string()))
            }
        }
    }
}

impl Attribute for QuantScheme {
    const EXPECTED: &'static str = "a scheme, like quant<group(128, axis = 0), scale = bf16>";
    fn to_attr(&self) -> AttrValue {
        AttrValue::Quant(self.clone())
    }
    fn from_attr(v: &AttrValue) -> Option<Self> {
        match v {
            AttrValue::Quant(q) => Some(q.clone()),
            AttrValue::Int(_)
            | AttrValue::Float(_)
            | AttrValue::Bool(_)
            | AttrValue::Ident(_)
            | AttrValue::List(_) => None,
        }
    }
}

/// Declares a fieldless enum attribute whose cases are written as identifiers.
macro_rules! enum_attr {
    ($(#[doc = $doc:literal])* $name:ident { $($(#[doc = $cdoc:literal])* $case:ident = $text:literal),+ $(,)? }) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[doc = $cdoc])* $case),+ }

        impl $name {
            /// The identifier used in text.
            pub fn name(self) -> &'static str {
                match self { $($name::$case => $text),+ }
            }
        }

        impl Attribute for $name {
            const EXPECTED: &'static str = concat!("one of" $(, " `", $text, "`")+);
            fn to_attr(&self) -> AttrValue {
                AttrValue::Ident(self.name().into())
            }
            fn from_attr(v: &AttrValue) -> Option<Self> {
                match v {
                    AttrValue::Ident(s) => match s.as_str() {
                        $($text => Some($name::$case),)+
                        _ => None,
                    },
                    AttrValue::Int(_)
                    | AttrValue::Float(_)
                    | AttrValue::Bool(_)
                    | AttrValue::List(_)
                    | AttrValue::Quant(_) => None,
                }
            }
        }
    };
}

enum_attr! {
    /// Which form of GELU: the exact erf form or the tanh approximation.
    GeluApprox {
        /// `0.5 x (1 + erf(x / sqrt 2))`
        None = "none",
        /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`
        Tanh = "tanh",
    }
}

enum_attr! {
    /// How `pad` fills the new elements.
    PadMode {
        /// With the `value` attribute.
        Constant = "constant",
        /// Mirrored about the edge, without repeating the edge element.
        Reflect = "reflect",
        /// Repeating the edge element.
        Edge = "edge",
    }
}

/// The value of a `constant`: one number repeated, or every element in
/// row-major order.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Splat(f64),
    Dense(Vec<f64>),
}

impl Literal {
    /// The element at flat index `i`.
    pub fn get(&self, i: usize) -> f64 {
        match self {
            Literal::Splat(x) => *x,
            Literal::Dense(v) => v[i],
        }
    }
}

fn literal_number(x: f64) -> AttrValue {
    // Integral values print without a fraction so integer constants read naturally.
    if x.fract() == 0.0 && x.abs() < 9.007_199_254_740_992e15 && !(x == 0.0 && x.is_sign_negative())
    {
        AttrValue::Int(x as i64)
    } else {
        AttrValue::Float(x)
    }
}

impl Attribute for Literal {
    const EXPECTED: &'static str = "a number or a list of numbers";
    fn to_attr(&self) -> AttrValue {
        match self {
            Literal::Splat(x) => literal_number(*x),
            Literal::Dense(v) => AttrValue::List(v.iter().map(|&x| literal_number(x)).collect()),
        }
    }
    fn from_attr(v: &AttrValue) -> Option<Self> {
        match v {
            AttrValue::List(items) => items
                .iter()
                .map(number)
                .collect::<Option<_>>()
                .map(Literal::Dense),
            AttrValue::Int(_) | AttrValue::Float(_) | AttrValue::Ident(_) => {
                number(v).map(Literal::Splat)
            }
            AttrValue::Bool(b) => Some(Literal::Splat(if *b { 1.0 } else { 0.0 })),
            AttrValue::Quant(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_to_round_trip() {
        for x in [1e-5, 0.1, 100.0, -0.0, 1.0 / 6.0, 3.4e38, 5e-324] {
            let s = format_f64(x);
            assert_eq!(s.parse::<f64>().unwrap().to_bits(), x.to_bits(), "{s}");
            assert!(s.contains('.') || s.contains('e'), "{s}");
        }
        assert_eq!(format_f64(f64::NEG_INFINITY), "-inf");
    }

    #[test]
    fn conversions_reject_wrong_kinds() {
        assert_eq!(i64::from_attr(&AttrValue::Float(1.5)), None);
        assert_eq!(f64::from_attr(&AttrValue::Int(2)), Some(2.0));
        assert_eq!(
            Vec::<i64>::from_attr(&AttrValue::List(vec![
                AttrValue::Int(1),
                AttrValue::Bool(true)
            ])),
            None
        );
        assert_eq!(
            GeluApprox::from_attr(&AttrValue::Ident("tanh".into())),
            Some(GeluApprox::Tanh)
        );
        assert_eq!(GeluApprox::from_attr(&AttrValue::Ident("erf".into())), None);
        assert_eq!(GeluApprox::EXPECTED, "one of `none` `tanh`");
        assert_eq!(
            Literal::Dense(vec![1.0, 0.5, -0.0]).to_attr().to_string(),
            "[1, 0.5, -0.0]"
        );
    }
}
