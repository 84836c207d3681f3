//! Tensor types: element type, shape, layout and an optional quantization scheme.

use std::fmt;

use crate::DType;
use crate::layout::Layout;
use crate::quant::{QuantError, QuantScheme};
use crate::shape::Shape;

/// The type of a tensor value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
    pub layout: Layout,
    /// Present on quantized tensors: how the codes map back to reals.
    pub quant: Option<QuantScheme>,
}

/// Why a tensor type is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TypeFormError {
    #[error("{0}")]
    Layout(String),
    #[error(transparent)]
    Quant(#[from] QuantError),
}

impl TensorType {
    /// A row-major, unquantized tensor type.
    pub fn new(dtype: DType, shape: Shape) -> TensorType {
        TensorType {
            dtype,
            shape,
            layout: Layout::RowMajor,
            quant: None,
        }
    }

    /// A row-major tensor type with static dims.
    pub fn of(dtype: DType, dims: &[u64]) -> TensorType {
        TensorType::new(dtype, Shape::of(dims))
    }

    /// The same type with another element type (layout kept, scheme dropped).
    pub fn with_dtype(&self, dtype: DType) -> TensorType {
        TensorType {
            dtype,
            shape: self.shape.clone(),
            layout: self.layout.clone(),
            quant: None,
        }
    }

    /// The same element type and layout with another shape.
    pub fn with_shape(&self, shape: Shape) -> TensorType {
        TensorType {
            dtype: self.dtype,
            shape,
            layout: self.layout.clone(),
            quant: None,
        }
    }

    /// Rank of the shape.
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    /// Checks the layout and the quantization scheme against the shape.
    pub fn check_well_formed(&self) -> Result<(), TypeFormError> {
        self.layout
            .check_rank(self.rank())
            .map_err(TypeFormError::Layout)?;
        if let Some(q) = &self.quant {
            q.check(self.dtype, &self.shape)?;
        }
        Ok(())
    }
}

impl fmt::Display for TensorType {
    /// `bf16[batch, 1024]`, then ` nhwc` or ` packed(name)` when not row-major,
    /// then ` quant<...>` when quantized.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)?;
        match &self.layout {
            Layout::RowMajor => {}
            l @ (Layout::Nchw | Layout::Nhwc | Layout::Packed(_)) => write!(f, " {l}")?,
        }
        if let Some(q) = &self.quant {
            write!(f, " {q}")?;
        }
        Ok(())
    }
}
