//! Reading and writing NumPy `.npy` files.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use kiln_dialect::DType;

use crate::host::HostTensor;

/// Why a `.npy` file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a readable .npy file: {message}")]
    Format { path: String, message: String },
    #[error(
        "{path}: element type `{descr}` is not supported (expected one of <f8 <f4 <f2 <i8 <i4 |i1 |u1 |b1)"
    )]
    DType { path: String, descr: String },
    #[error("{path}: Fortran-order arrays are not supported; save with np.ascontiguousarray")]
    FortranOrder { path: String },
    #[error("cannot write {dtype} as .npy (NumPy has no such type); cast it first")]
    Unwritable { dtype: DType },
}

fn descr_dtype(descr: &str) -> Option<DType> {
    Some(match descr {
        "<f8" => DType::F64,
        "<f4" => DType::F32,
        "<f2" => DType::F16,
        "<i8" => DType::I64,
        "<i4" => DType::I32,
        "|i1" | "<i1" => DType::I8,
        "|u1" | "<u1" => DType::U8,
        "|b1" | "<b1" => DType::Bool,
        _ => return None,
    })
}

/// Reads a `.npy` file (C order, little-endian f64/f32/f16/i64/i32/i8/u8/bool).
pub fn read(path: &Path) -> Result<HostTensor, NpyError> {
    let p = path.display().to_string();
    let file = File::open(path).map_err(|source| NpyError::Io {
        path: p.clone(),
        source,
    })?;
    let npy = npyz::NpyFile::new(BufReader::new(file)).map_err(|e| NpyError::Format {
        path: p.clone(),
        message: e.to_string(),
    })?;
    if npy.order() == npyz::Order::Fortran && npy.shape().len() > 1 {
        return Err(NpyError::FortranOrder { path: p });
    }
    let descr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => {
            return Err(NpyError::DType {
                path: p,
                descr: format!("{other:?}"),
            });
        }
    };
    let dtype = descr_dtype(&descr).ok_or_else(|| NpyError::DType {
        path: p.clone(),
        descr: descr.clone(),
    })?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let fmt = |e: std::io::Error| NpyError::Format {
        path: p.clone(),
        message: e.to_string(),
    };
    let values: Vec<f64> = match dtype {
        DType::F64 => npy.into_vec::<f64>().map_err(fmt)?,
        DType::F32 => npy
            .into_vec::<f32>()
            .map_err(fmt)?
            .into_iter()
            .map(f64::from)
            .collect(),
        DType::F16 => npy
            .into_vec::<half::f16>()
            .map_err(fmt)?
            .into_iter()
            .map(f64::from)
            .collect(),
        DType::I64 => npy
            .into_vec::<i64>()
            .map_err(fmt)?
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        DType::I32 => npy
            .into_vec::<i32>()
            .map_err(fmt)?
            .into_iter()
            .map(f64::from)
            .collect(),
        DType::I8 => npy
            .into_vec::<i8>()
            .map_err(fmt)?
            .into_iter()
            .map(f64::from)
            .collect(),
        DType::U8 => npy
            .into_vec::<u8>()
            .map_err(fmt)?
            .into_iter()
            .map(f64::from)
            .collect(),
        DType::Bool => npy
            .into_vec::<bool>()
            .map_err(fmt)?
            .into_iter()
            .map(|b| b as u8 as f64)
            .collect(),
        _ => unreachable!("descr_dtype only gives NumPy types"),
    };
    if values.len() != shape.iter().product::<usize>() {
        return Err(NpyError::Format {
            path: p,
            message: "data is shorter than the shape says".into(),
        });
    }
    Ok(HostTensor::from_values(dtype, &shape, &values))
}

/// Writes a tensor as `.npy`. Types NumPy lacks (bf16, the quantized
/// storage types) must be cast first.
pub fn write(path: &Path, t: &HostTensor) -> Result<(), NpyError> {
    use npyz::WriterBuilder;
    let p = path.display().to_string();
    let io = |source: std::io::Error| NpyError::Io {
        path: p.clone(),
        source,
    };
    let file = File::create(path).map_err(io)?;
    let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
    let v = t.to_values();
    macro_rules! put {
        ($ty:ty, $conv:expr) => {{
            let mut w = npyz::WriteOptions::<$ty>::new()
                .default_dtype()
                .shape(&shape)
                .writer(BufWriter::new(file))
                .begin_nd()
                .map_err(io)?;
            w.extend(v.iter().map($conv)).map_err(io)?;
            w.finish().map_err(io)
        }};
    }
    match t.dtype {
        DType::F64 => put!(f64, |&x| x),
        DType::F32 => put!(f32, |&x| x as f32),
        DType::F16 => put!(half::f16, |&x| half::f16::from_f64(x)),
        DType::I64 => put!(i64, |&x| x as i64),
        DType::I32 => put!(i32, |&x| x as i32),
        DType::I8 => put!(i8, |&x| x as i8),
        DType::U8 => put!(u8, |&x| x as u8),
        DType::Bool => put!(bool, |&x| x != 0.0),
        DType::BF16
        | DType::I4
        | DType::U4
        | DType::I3
        | DType::I6
        | DType::F8E4M3
        | DType::F8E5M2
        | DType::F4E2M1
        | DType::E8M0 => Err(NpyError::Unwritable { dtype: t.dtype }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_numpy_type() {
        let dir = std::env::temp_dir().join(format!("kiln-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for dt in [
            DType::F64,
            DType::F32,
            DType::F16,
            DType::I64,
            DType::I32,
            DType::I8,
            DType::U8,
            DType::Bool,
        ] {
            let vals: Vec<f64> = (0..6)
                .map(|i| {
                    if dt == DType::Bool {
                        (i % 2) as f64
                    } else {
                        i as f64 - 2.5f64.floor()
                    }
                })
                .collect();
            let t = HostTensor::from_values(dt, &[2, 3], &vals);
            let path = dir.join(format!("{dt}.npy"));
            write(&path, &t).unwrap();
            assert_eq!(read(&path).unwrap(), t, "{dt}");
        }
        let e = write(
            &dir.join("x.npy"),
            &HostTensor::from_values(DType::BF16, &[1], &[1.0]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("bf16"), "{e}");
        std::fs::write(dir.join("bad.npy"), b"not numpy").unwrap();
        let e = read(&dir.join("bad.npy")).unwrap_err();
        assert!(e.to_string().contains("not a readable .npy file"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
