//! Element types: the compute types and the quantized storage types.

use std::fmt;

/// An element type.
///
/// Compute types (`f64 f32 f16 bf16 i64 i32 i8 u8 bool`) may appear anywhere.
/// Storage types (`i4 u4 i3 i6 f8e4m3 f8e5m2 f4e2m1 e8m0`) hold quantized data
/// and scales: they are moved, cast, quantized to and dequantized from, but
/// not computed on directly. Their exact encodings live in [`crate::numeric`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I8,
    U8,
    Bool,
    I4,
    U4,
    I3,
    I6,
    F8E4M3,
    F8E5M2,
    F4E2M1,
    E8M0,
}

/// What an element type is made of, for type rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DTypeClass {
    /// IEEE-style binary floating point used for arithmetic.
    Float,
    /// Two's-complement or unsigned integers used for arithmetic.
    Int,
    /// `bool`.
    Bool,
    /// A quantized storage type (integer or minifloat codes, or a scale type).
    Storage,
}

impl DType {
    /// Every element type, in declaration order.
    pub const ALL: [DType; 17] = [
        DType::F64,
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::I32,
        DType::I8,
        DType::U8,
        DType::Bool,
        DType::I4,
        DType::U4,
        DType::I3,
        DType::I6,
        DType::F8E4M3,
        DType::F8E5M2,
        DType::F4E2M1,
        DType::E8M0,
    ];

    /// The name used in `.kir` and `.kiln` text.
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "f64",
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::Bool => "bool",
            DType::I4 => "i4",
            DType::U4 => "u4",
            DType::I3 => "i3",
            DType::I6 => "i6",
            DType::F8E4M3 => "f8e4m3",
            DType::F8E5M2 => "f8e5m2",
            DType::F4E2M1 => "f4e2m1",
            DType::E8M0 => "e8m0",
        }
    }

    /// Parses a type name as printed by [`DType::name`].
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bits of storage per element (`bool` is stored as one byte).
    pub fn bits(self) -> u32 {
        match self {
            DType::F64 | DType::I64 => 64,
            DType::F32 | DType::I32 => 32,
            DType::F16 | DType::BF16 => 16,
            DType::I8 | DType::U8 | DType::Bool => 8,
            DType::F8E4M3 | DType::F8E5M2 | DType::E8M0 => 8,
            DType::I6 => 6,
            DType::I4 | DType::U4 | DType::F4E2M1 => 4,
            DType::I3 => 3,
        }
    }

    /// Bytes needed to store `n` elements, packed as docs/ir.md describes.
    pub fn storage_bytes(self, n: usize) -> usize {
        (n * self.bits() as usize).div_ceil(8)
    }

    /// The class of the type.
    pub fn class(self) -> DTypeClass {
        match self {
            DType::F64 | DType::F32 | DType::F16 | DType::BF16 => DTypeClass::Float,
            DType::I64 | DType::I32 | DType::I8 | DType::U8 => DTypeClass::Int,
            DType::Bool => DTypeClass::Bool,
            DType::I4
            | DType::U4
            | DType::I3
            | DType::I6
            | DType::F8E4M3
            | DType::F8E5M2
            | DType::F4E2M1
            | DType::E8M0 => DTypeClass::Storage,
        }
    }

    /// Floating compute type (`f64 f32 f16 bf16`).
    pub fn is_float(self) -> bool {
        self.class() == DTypeClass::Float
    }

    /// Integer compute type (`i64 i32 i8 u8`).
    pub fn is_int(self) -> bool {
        self.class() == DTypeClass::Int
    }

    /// A quantized storage type.
    pub fn is_storage(self) -> bool {
        self.class() == DTypeClass::Storage
    }

    /// A numeric compute type (float or integer; not bool, not storage).
    pub fn is_numeric(self) -> bool {
        self.is_float() || self.is_int()
    }

    /// Whether the codes of this type are integers (compute ints and the
    /// integer storage types).
    pub fn has_integer_values(self) -> bool {
        match self {
            DType::I64 | DType::I32 | DType::I8 | DType::U8 | DType::Bool => true,
            DType::I4 | DType::U4 | DType::I3 | DType::I6 => true,
            DType::F64 | DType::F32 | DType::F16 | DType::BF16 => false,
            DType::F8E4M3 | DType::F8E5M2 | DType::F4E2M1 | DType::E8M0 => false,
        }
    }

    /// The range of an integer-valued type, as `(min, max)`.
    pub fn int_range(self) -> Option<(i64, i64)> {
        match self {
            DType::I64 => Some((i64::MIN, i64::MAX)),
            DType::I32 => Some((i32::MIN as i64, i32::MAX as i64)),
            DType::I8 => Some((-128, 127)),
            DType::U8 => Some((0, 255)),
            DType::Bool => Some((0, 1)),
            DType::I6 => Some((-32, 31)),
            DType::I4 => Some((-8, 7)),
            DType::U4 => Some((0, 15)),
            DType::I3 => Some((-4, 3)),
            DType::F64 | DType::F32 | DType::F16 | DType::BF16 => None,
            DType::F8E4M3 | DType::F8E5M2 | DType::F4E2M1 | DType::E8M0 => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        let mut names: Vec<_> = DType::ALL.iter().map(|d| d.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DType::ALL.len());
        assert_eq!(DType::from_name("float32"), None);
    }

    #[test]
    fn packed_sizes() {
        assert_eq!(DType::I4.storage_bytes(3), 2);
        assert_eq!(DType::I3.storage_bytes(8), 3);
        assert_eq!(DType::I6.storage_bytes(5), 4);
        assert_eq!(DType::BF16.storage_bytes(5), 10);
    }
}
