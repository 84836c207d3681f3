//! Quantization schemes: how a quantized tensor's codes map back to reals.
//!
//! A quantized tensor has a storage element type (`i4`, `f8e4m3`, ...) and a
//! scheme. Dequantization is
//!
//! ```text
//! x = (q - zero) * scale * global        (zero = 0 when symmetric, global = 1 when absent)
//! ```
//!
//! where `scale` (and `zero`) are taken from the scale tensor at the position
//! that the granularity assigns to each element. See docs/ir.md.

use std::fmt;

use crate::DType;
use crate::numeric::BitOrder;
use crate::shape::{Dim, Shape};

/// Which elements share one scale.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One scale for the whole tensor; the scale tensor is a scalar.
    PerTensor,
    /// One scale per index of `axis`; the scale tensor is 1-D of that size.
    PerChannel { axis: usize },
    /// Runs of `size` consecutive elements along `axis` share a scale stored
    /// in a compute float type; the scale tensor has the input's shape with
    /// that axis divided by `size`.
    Group { size: u64, axis: usize },
    /// A microscaling block: like `Group`, but the scale is itself a
    /// low-precision storage type (`e8m0` for MX formats, `f8e4m3` for NVFP4),
    /// optionally times a per-tensor `global` scale.
    Block { size: u64, axis: usize },
}

/// A quantization scheme. The storage element type is the tensor's dtype.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QuantScheme {
    /// Which elements share a scale.
    pub granularity: Granularity,
    /// Element type of the scale tensor.
    pub scale: DType,
    /// Element type of the zero-point tensor; `None` for symmetric schemes.
    pub zero: Option<DType>,
    /// Element type of a second, per-tensor scale (NVFP4's f32 scale).
    pub global: Option<DType>,
    /// Bit order of sub-byte codes inside bytes.
    pub packing: BitOrder,
}

/// Why a scheme does not fit a tensor.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error(
        "{element} cannot hold quantized codes (expected i8, u8, i6, i4, u4, i3, f8e4m3, f8e5m2 or f4e2m1)"
    )]
    Element { element: DType },
    #[error("quantization axis {axis} is out of range for {shape}")]
    Axis { axis: usize, shape: Shape },
    #[error("group size {size} does not divide axis {axis} of {shape} (size {dim})")]
    GroupDivide {
        size: u64,
        axis: usize,
        dim: Dim,
        shape: Shape,
    },
    #[error("group size must be positive, found {size}")]
    GroupSize { size: u64 },
    #[error("{what} scale type must be {expected}, found {found}")]
    ScaleType {
        what: &'static str,
        expected: &'static str,
        found: DType,
    },
    #[error("a zero point needs integer codes, found {element}")]
    ZeroWithFloat { element: DType },
    #[error("zero-point type must be an integer or float type, found {found}")]
    ZeroType { found: DType },
    #[error("a global scale belongs to block schemes only")]
    GlobalNotBlock,
    #[error("global scale type must be f32 or f16 or bf16, found {found}")]
    GlobalType { found: DType },
}

impl QuantScheme {
    /// A symmetric group-wise scheme (`group(size, axis)`, scales of `scale`).
    pub fn group(size: u64, axis: usize, scale: DType) -> QuantScheme {
        QuantScheme {
            granularity: Granularity::Group { size, axis },
            scale,
            zero: None,
            global: None,
            packing: BitOrder::LsbFirst,
        }
    }

    /// Whether the scheme has a zero point.
    pub fn is_symmetric(&self) -> bool {
        self.zero.is_none()
    }

    /// Checks the scheme against a storage element type and a shape.
    pub fn check(&self, element: DType, shape: &Shape) -> Result<(), QuantError> {
        use DType::*;
        let int_codes = match element {
            I8 | U8 | I6 | I4 | U4 | I3 => true,
            F8E4M3 | F8E5M2 | F4E2M1 => false,
            F64 | F32 | F16 | BF16 | I64 | I32 | Bool | E8M0 => {
                return Err(QuantError::Element { element });
            }
        };
        match &self.granularity {
            Granularity::PerTensor => {}
            Granularity::PerChannel { axis } => {
                if *axis >= shape.rank() {
                    return Err(QuantError::Axis {
                        axis: *axis,
                        shape: shape.clone(),
                    });
                }
            }
            Granularity::Group { size, axis } | Granularity::Block { size, axis } => {
                if *size == 0 {
                    return Err(QuantError::GroupSize { size: *size });
                }
                let Some(dim) = shape.dims().get(*axis) else {
                    return Err(QuantError::Axis {
                        axis: *axis,
                        shape: shape.clone(),
                    });
                };
                if dim.as_static().is_none_or(|n| n % size != 0) {
                    return Err(QuantError::GroupDivide {
                        size: *size,
                        axis: *axis,
                        dim: dim.clone(),
                        shape: shape.clone(),
                    });
                }
            }
        }
        match &self.granularity {
            Granularity::Block { .. } => {
                if !matches!(self.scale, E8M0 | F8E4M3) {
                    return Err(QuantError::ScaleType {
                        what: "a block",
                        expected: "e8m0 or f8e4m3",
                        found: self.scale,
                    });
                }
            }
            Granularity::PerTensor | Granularity::PerChannel { .. } | Granularity::Group { .. } => {
                if !self.scale.is_float() {
                    return Err(QuantError::ScaleType {
                        what: "a tensor, channel or group",
                        expected: "f64, f32, f16 or bf16",
                        found: self.scale,
                    });
                }
                if self.global.is_some() {
                    return Err(QuantError::GlobalNotBlock);
                }
            }
        }
        if let Some(z) = self.zero {
            if !int_codes {
                return Err(QuantError::ZeroWithFloat { element });
            }
            if !(z.is_numeric() || z.has_integer_values() && z.is_storage()) {
                return Err(QuantError::ZeroType { found: z });
            }
        }
        if let Some(g) = self.global
            && !matches!(g, F32 | F16 | BF16)
        {
            return Err(QuantError::GlobalType { found: g });
        }
        Ok(())
    }

    /// Shape of the scale (and zero-point) tensor for a quantized tensor of
    /// `shape`. Call [`QuantScheme::check`] first.
    pub fn scale_shape(&self, shape: &Shape) -> Shape {
        match &self.granularity {
            Granularity::PerTensor => Shape::scalar(),
            Granularity::PerChannel { axis } => Shape(vec![shape.dims()[*axis].clone()]),
            Granularity::Group { size, axis } | Granularity::Block { size, axis } => {
                let mut dims = shape.dims().to_vec();
                if let Dim::Static(n) = dims[*axis] {
                    dims[*axis] = Dim::Static(n / size);
                }
                Shape(dims)
            }
        }
    }

    /// Index into the scale tensor (row-major over [`QuantScheme::scale_shape`])
    /// for the element at multi-index `idx` of a tensor of concrete `shape`.
    pub fn scale_index(&self, idx: &[usize], shape: &[usize]) -> usize {
        match &self.granularity {
            Granularity::PerTensor => 0,
            Granularity::PerChannel { axis } => idx[*axis],
            Granularity::Group { size, axis } | Granularity::Block { size, axis } => {
                let mut flat = 0;
                for (a, (&i, &n)) in idx.iter().zip(shape).enumerate() {
                    let (i, n) = if a == *axis {
                        (i / *size as usize, n / *size as usize)
                    } else {
                        (i, n)
                    };
                    flat = flat * n + i;
                }
                flat
            }
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Granularity::PerTensor => f.write_str("per_tensor"),
            Granularity::PerChannel { axis } => write!(f, "per_channel(axis = {axis})"),
            Granularity::Group { size, axis } => write!(f, "group({size}, axis = {axis})"),
            Granularity::Block { size, axis } => write!(f, "block({size}, axis = {axis})"),
        }
    }
}

impl fmt::Display for QuantScheme {
    /// `quant<group(128, axis = 0), scale = bf16[, zero = u4][, global = f32][, packing = msb_first]>`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "quant<{}, scale = {}", self.granularity, self.scale)?;
        if let Some(z) = self.zero {
            write!(f, ", zero = {z}")?;
        }
        if let Some(g) = self.global {
            write!(f, ", global = {g}")?;
        }
        match self.packing {
            BitOrder::LsbFirst => {}
            BitOrder::MsbFirst => f.write_str(", packing = msb_first")?,
        }
        f.write_str(">")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_scheme_checks_and_scale_shape() {
        let s = QuantScheme::group(128, 0, DType::BF16);
        let shape = Shape::of(&[4096, 11008]);
        s.check(DType::I4, &shape).unwrap();
        assert_eq!(s.scale_shape(&shape), Shape::of(&[32, 11008]));
        assert_eq!(s.to_string(), "quant<group(128, axis = 0), scale = bf16>");
        let e = s.check(DType::I4, &Shape::of(&[100, 8])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "group size 128 does not divide axis 0 of [100, 8] (size 100)"
        );
        assert!(matches!(
            s.check(DType::F32, &shape),
            Err(QuantError::Element { .. })
        ));
    }

    #[test]
    fn block_and_zero_rules() {
        let mx = QuantScheme {
            granularity: Granularity::Block { size: 32, axis: 1 },
            scale: DType::E8M0,
            zero: None,
            global: None,
            packing: BitOrder::LsbFirst,
        };
        mx.check(DType::F4E2M1, &Shape::of(&[8, 64])).unwrap();
        let bad = QuantScheme {
            scale: DType::F16,
            ..mx.clone()
        };
        assert!(matches!(
            bad.check(DType::F4E2M1, &Shape::of(&[8, 64])),
            Err(QuantError::ScaleType { .. })
        ));
        let z = QuantScheme {
            zero: Some(DType::U4),
            ..QuantScheme::group(32, 1, DType::F16)
        };
        z.check(DType::U4, &Shape::of(&[8, 64])).unwrap();
        assert!(matches!(
            z.check(DType::F8E4M3, &Shape::of(&[8, 64])),
            Err(QuantError::ZeroWithFloat { .. })
        ));
        let g = QuantScheme {
            global: Some(DType::F32),
            ..QuantScheme::group(32, 1, DType::F16)
        };
        assert_eq!(
            g.check(DType::I4, &Shape::of(&[8, 64])),
            Err(QuantError::GlobalNotBlock)
        );
    }

    #[test]
    fn scale_indices() {
        let s = QuantScheme::group(2, 1, DType::F32);
        // shape [2, 4] -> scales [2, 2]; element (1, 3) uses scale (1, 1) = 3
        assert_eq!(s.scale_index(&[1, 3], &[2, 4]), 3);
        assert_eq!(s.scale_index(&[0, 1], &[2, 4]), 0);
        let c = QuantScheme {
            granularity: Granularity::PerChannel { axis: 1 },
            ..s.clone()
        };
        assert_eq!(c.scale_index(&[1, 3], &[2, 4]), 3);
        let t = QuantScheme {
            granularity: Granularity::PerTensor,
            ..s
        };
        assert_eq!(t.scale_index(&[1, 3], &[2, 4]), 0);
    }
}
