//! Reading weights from `.safetensors` files.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_dialect::DType;
use safetensors::{Dtype, SafeTensors};

use crate::host::HostTensor;

/// Why a weights file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a readable .safetensors file: {message}")]
    Format { path: String, message: String },
    #[error("{path}: tensor `{name}` has element type {dtype:?}, which kiln does not read")]
    DType {
        path: String,
        name: String,
        dtype: Dtype,
    },
}

/// A tensor as stored in the file: the element type the file names (packed
/// sub-byte kiln types are stored as `U8` bytes), its shape and bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTensor {
    /// The kiln type of the stored elements (`u8` for raw packed bytes).
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl StoredTensor {
    /// Interprets the tensor as `want`: equal types pass through; `u8` bytes
    /// are taken as packed sub-byte codes of `want` when their count is
    /// exactly `want.storage_bytes(numel)` for `shape`.
    pub fn to_host(&self, want: DType, shape: &[usize]) -> Result<HostTensor, String> {
        let numel: usize = shape.iter().product();
        if self.dtype == want {
            if self.shape != shape {
                return Err(format!("expected shape {shape:?}, found {:?}", self.shape));
            }
            return Ok(HostTensor {
                dtype: want,
                shape: self.shape.clone(),
                data: self.data.clone(),
            });
        }
        if self.dtype == DType::U8 && want.bits() < 8 {
            let need = want.storage_bytes(numel);
            if self.data.len() != need {
                return Err(format!(
                    "expected {need} bytes of packed {want} for shape {shape:?}, found {} bytes",
                    self.data.len()
                ));
            }
            return Ok(HostTensor {
                dtype: want,
                shape: shape.to_vec(),
                data: self.data.clone(),
            });
        }
        Err(format!(
            "expected element type {want}, found {}",
            self.dtype
        ))
    }
}

fn kiln_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool,
        Dtype::F8_E4M3 => DType::F8E4M3,
        Dtype::F8_E5M2 => DType::F8E5M2,
        Dtype::F8_E8M0 => DType::E8M0,
        Dtype::F4 => DType::F4E2M1,
        _ => return None,
    })
}

/// Reads every tensor of a `.safetensors` file, by name.
pub fn read(path: &Path) -> Result<BTreeMap<String, StoredTensor>, WeightsError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| WeightsError::Io {
        path: p.clone(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| WeightsError::Format {
        path: p.clone(),
        message: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let dtype = kiln_dtype(view.dtype()).ok_or_else(|| WeightsError::DType {
            path: p.clone(),
            name: name.clone(),
            dtype: view.dtype(),
        })?;
        out.insert(
            name,
            StoredTensor {
                dtype,
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            },
        );
    }
    Ok(out)
}
