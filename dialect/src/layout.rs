//! Physical layouts of tensors.
//!
//! A shape is always logical: a 4-D activation's dims are `[N, C, H, W]` and
//! a convolution weight's are `[O, I, KH, KW]` whatever the layout. The layout
//! says how the logical tensor is laid out in memory, so choosing a layout
//! never changes what a graph computes; layout conversions are identities in
//! the interpreter.

use std::fmt;

/// How a tensor is laid out in memory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum Layout {
    /// Row-major (C order) over the logical dims. The default.
    #[default]
    RowMajor,
    /// A 4-D activation in N, C, H, W order (row-major over the logical dims,
    /// marked as an activation layout).
    Nchw,
    /// A 4-D activation stored channels-last: memory order N, H, W, C.
    Nhwc,
    /// A packed or blocked weight layout produced at compile time, named
    /// (e.g. `marlin_i4` for int4 tiles interleaved for tensor-core fragments).
    Packed(String),
}

impl Layout {
    /// The order in which logical axes appear in memory, outermost first,
    /// where that is a permutation (`None` for packed layouts).
    pub fn memory_order(&self, rank: usize) -> Option<Vec<usize>> {
        match self {
            Layout::RowMajor | Layout::Nchw => Some((0..rank).collect()),
            Layout::Nhwc => Some(vec![0, 2, 3, 1]),
            Layout::Packed(_) => None,
        }
    }

    /// Checks that the layout applies to a tensor of this rank.
    pub fn check_rank(&self, rank: usize) -> Result<(), String> {
        match self {
            Layout::Nchw | Layout::Nhwc if rank != 4 => Err(format!(
                "layout `{self}` is for 4-D activations, found rank {rank}"
            )),
            Layout::RowMajor | Layout::Nchw | Layout::Nhwc | Layout::Packed(_) => Ok(()),
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::RowMajor => f.write_str("row_major"),
            Layout::Nchw => f.write_str("nchw"),
            Layout::Nhwc => f.write_str("nhwc"),
            Layout::Packed(name) => write!(f, "packed({name})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_and_rank_rules() {
        assert_eq!(Layout::Nhwc.memory_order(4), Some(vec![0, 2, 3, 1]));
        assert_eq!(Layout::RowMajor.memory_order(2), Some(vec![0, 1]));
        assert_eq!(Layout::Packed("marlin_i4".into()).memory_order(2), None);
        assert!(Layout::Nhwc.check_rank(3).unwrap_err().contains("4-D"));
        assert!(Layout::Packed("x".into()).check_rank(2).is_ok());
        assert_eq!(
            Layout::Packed("marlin_i4".into()).to_string(),
            "packed(marlin_i4)"
        );
    }
}
