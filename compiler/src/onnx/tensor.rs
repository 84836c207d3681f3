//! ONNX tensors: element types, and `TensorProto` data (typed fields,
//! `raw_data`, external files) as the interpreter's tensors.

use std::path::{Component, Path};

use kiln_dialect::DType;
use kiln_dialect::interp::Tensor;

use super::error::OnnxError;
use super::proto;

/// The kiln element type of an ONNX `TensorProto.DataType` code, or `None`
/// for the types kiln has no equal of (strings, complex numbers, unsigned
/// 16/32/64-bit and 16-bit integers, minifloats and 4-bit codes).
pub fn dtype_of(code: i32) -> Option<DType> {
    use proto::tensor_proto::DataType as D;
    Some(match D::try_from(code).ok()? {
        D::Float => DType::F32,
        D::Uint8 => DType::U8,
        D::Int8 => DType::I8,
        D::Int32 => DType::I32,
        D::Int64 => DType::I64,
        D::Bool => DType::Bool,
        D::Float16 => DType::F16,
        D::Double => DType::F64,
        D::Bfloat16 => DType::BF16,
        // Quantized storage types need a scheme in kiln; they are imported
        // through QuantizeLinear/DequantizeLinear once those are mapped.
        D::Float8e4m3fn
        | D::Float8e5m2
        | D::Int4
        | D::Uint4
        | D::Float4e2m1
        | D::Undefined
        | D::Uint16
        | D::Int16
        | D::String
        | D::Uint32
        | D::Uint64
        | D::Complex64
        | D::Complex128
        | D::Float8e4m3fnuz
        | D::Float8e5m2fnuz
        | D::Float8e8m0
        | D::Uint2
        | D::Int2
        | D::Float6e2m3
        | D::Float6e3m2 => return None,
    })
}

/// The name of an ONNX data type code, for messages.
pub fn dtype_name(code: i32) -> String {
    proto::tensor_proto::DataType::try_from(code)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| format!("data type {code}"))
}

fn err(name: &str, message: impl Into<String>) -> OnnxError {
    OnnxError::Tensor {
        name: name.to_string(),
        message: message.into(),
    }
}

/// Reads a tensor. `base` is the folder external-data locations are
/// relative to (the model's folder).
pub fn read(t: &proto::TensorProto, base: &Path) -> Result<Tensor, OnnxError> {
    let name = t.name();
    let code = t.data_type();
    let dtype = dtype_of(code).ok_or_else(|| {
        err(
            name,
            format!("element type {} is not supported", dtype_name(code)),
        )
    })?;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(err(name, format!("negative dimension {d} in {:?}", t.dims)));
        }
        shape.push(d as usize);
    }
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= 1 << 40)
        .ok_or_else(|| err(name, format!("dimensions {:?} are too large", t.dims)))?;
    if t.segment.is_some() {
        return Err(err(name, "segmented tensors are not supported"));
    }
    let external;
    let raw: Option<&[u8]> = if t.data_location() == proto::tensor_proto::DataLocation::External {
        external = read_external(t, base)?;
        Some(&external)
    } else {
        t.raw_data.as_deref()
    };
    let data = match raw {
        Some(bytes) => decode_raw(name, dtype, bytes, n)?,
        None => typed_fields(t, dtype, n)?,
    };
    if data.len() != n {
        return Err(err(
            name,
            format!(
                "holds {} elements, its dimensions {:?} need {n}",
                data.len(),
                t.dims
            ),
        ));
    }
    Ok(Tensor::new(dtype, &shape, data))
}

fn read_external(t: &proto::TensorProto, base: &Path) -> Result<Vec<u8>, OnnxError> {
    let name = t.name();
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for kv in &t.external_data {
        let parse = |v: &str| {
            v.parse::<u64>().map_err(|_| {
                err(
                    name,
                    format!("external data `{}` is not a number: `{v}`", kv.key()),
                )
            })
        };
        match kv.key() {
            "location" => location = Some(kv.value().to_string()),
            "offset" => offset = parse(kv.value())?,
            "length" => length = Some(parse(kv.value())?),
            _ => {}
        }
    }
    let location = location.ok_or_else(|| err(name, "external data without a `location`"))?;
    let rel = Path::new(&location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(err(
            name,
            format!(
                "external data location `{location}` must be a relative path inside the model's folder"
            ),
        ));
    }
    let path = base.join(rel);
    let bytes = std::fs::read(&path).map_err(|source| OnnxError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = match length {
        Some(l) => start.saturating_add(usize::try_from(l).unwrap_or(usize::MAX)),
        None => bytes.len(),
    };
    if start > bytes.len() || end > bytes.len() {
        return Err(err(
            name,
            format!(
                "external data {}: bytes {start}..{end} are past its end ({} bytes)",
                path.display(),
                bytes.len()
            ),
        ));
    }
    Ok(bytes[start..end].to_vec())
}

fn decode_raw(name: &str, dtype: DType, b: &[u8], n: usize) -> Result<Vec<f64>, OnnxError> {
    let bits = dtype.bits() as usize;
    let need = (n * bits).div_ceil(8);
    if b.len() != need {
        return Err(err(
            name,
            format!(
                "raw_data has {} bytes, {n} elements of {dtype} need {need}",
                b.len()
            ),
        ));
    }
    macro_rules! le {
        ($t:ty) => {
            b.chunks_exact(std::mem::size_of::<$t>())
                .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect()
        };
    }
    Ok(match dtype {
        DType::F32 => le!(f32),
        DType::F64 => le!(f64),
        DType::I64 => le!(i64),
        DType::I32 => le!(i32),
        DType::I8 => b.iter().map(|&x| x as i8 as f64).collect(),
        DType::U8 => b.iter().map(|&x| x as f64).collect(),
        DType::Bool => b.iter().map(|&x| (x != 0) as u8 as f64).collect(),
        DType::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        DType::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        DType::I4
        | DType::U4
        | DType::F8E4M3
        | DType::F8E5M2
        | DType::F4E2M1
        | DType::I3
        | DType::I6
        | DType::E8M0 => decode_codes(dtype, b, n),
    })
}

/// Sub-byte and minifloat codes (ONNX packs 4-bit codes low nibble first).
fn decode_codes(dtype: DType, b: &[u8], n: usize) -> Vec<f64> {
    let bits = dtype.bits() as usize;
    (0..n)
        .map(|i| {
            let code = if bits == 8 {
                b[i] as u32
            } else {
                ((b[i / 2] >> (4 * (i % 2))) & 0xf) as u32
            };
            kiln_dialect::numeric::decode(dtype, code as u64)
        })
        .collect()
}

fn typed_fields(t: &proto::TensorProto, dtype: DType, n: usize) -> Result<Vec<f64>, OnnxError> {
    let name = t.name();
    Ok(match dtype {
        DType::F32 => t.float_data.iter().map(|&x| x as f64).collect(),
        DType::F64 => t.double_data.clone(),
        DType::I64 => t.int64_data.iter().map(|&x| x as f64).collect(),
        DType::I32 | DType::I8 | DType::U8 | DType::Bool => {
            t.int32_data.iter().map(|&x| x as f64).collect()
        }
        // 16-bit floats are stored as their bit patterns in int32_data
        DType::F16 => t
            .int32_data
            .iter()
            .map(|&x| half::f16::from_bits(x as u16).to_f64())
            .collect(),
        DType::BF16 => t
            .int32_data
            .iter()
            .map(|&x| half::bf16::from_bits(x as u16).to_f64())
            .collect(),
        DType::I4
        | DType::U4
        | DType::F8E4M3
        | DType::F8E5M2
        | DType::F4E2M1
        | DType::I3
        | DType::I6
        | DType::E8M0 => {
            let bytes: Vec<u8> = t.int32_data.iter().map(|&x| x as u8).collect();
            if bytes.len() * 8 < n * dtype.bits() as usize {
                return Err(err(
                    name,
                    format!("int32_data holds too few codes for {n} elements"),
                ));
            }
            decode_codes(dtype, &bytes, n)
        }
    })
}
