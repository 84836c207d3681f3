//! Host tensors: typed, packed bytes in memory.

use kiln_dialect::DType;
use kiln_dialect::numeric::{self, BitOrder};

/// A tensor in host memory: element type, shape, and the elements' codes
/// packed as docs/numeric-formats.md says (little-endian; sub-byte types
/// LSB-first, no padding between elements).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl HostTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Encodes real values (rounded to `dtype` by its encoding rules).
    ///
    /// Panics if `values` does not fill `shape` (a programming error).
    pub fn from_values(dtype: DType, shape: &[usize], values: &[f64]) -> HostTensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "values do not fill shape {shape:?}"
        );
        let codes: Vec<u64> = values.iter().map(|&v| numeric::encode(dtype, v)).collect();
        HostTensor {
            dtype,
            shape: shape.to_vec(),
            data: numeric::pack(dtype, &codes, BitOrder::LsbFirst),
        }
    }

    /// The exact value of every element.
    pub fn to_values(&self) -> Vec<f64> {
        self.to_values_in(BitOrder::LsbFirst)
    }

    /// The exact value of every element, with sub-byte codes packed in
    /// `order` (a quantization scheme may declare `msb_first`).
    pub fn to_values_in(&self, order: BitOrder) -> Vec<f64> {
        match numeric::unpack(self.dtype, &self.data, self.numel(), order) {
            Ok(codes) => codes
                .into_iter()
                .map(|c| numeric::decode(self.dtype, c))
                .collect(),
            // The constructors keep data and shape consistent; a tensor built by
            // hand with a wrong byte count has no values to give.
            Err(_) => Vec::new(),
        }
    }

    /// Checks that the byte count matches the shape and element type.
    pub fn check_size(&self) -> Result<(), String> {
        let expected = self.dtype.storage_bytes(self.numel());
        if self.data.len() == expected {
            Ok(())
        } else {
            Err(format!(
                "{} elements of {} need {expected} bytes, found {}",
                self.numel(),
                self.dtype,
                self.data.len()
            ))
        }
    }

    /// A 64-bit FNV-1a hash of the packed bytes: equal for bit-identical tensors.
    pub fn checksum(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in &self.data {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_packed_bytes() {
        let t = HostTensor::from_values(DType::I4, &[3], &[-8.0, 7.0, 1.0]);
        assert_eq!(t.data, vec![0x78, 0x01]);
        assert_eq!(t.to_values(), vec![-8.0, 7.0, 1.0]);
        let b = HostTensor::from_values(DType::BF16, &[2], &[1.0, -2.0]);
        assert_eq!(b.data, vec![0x80, 0x3F, 0x00, 0xC0]);
        assert!(b.check_size().is_ok());
        let bad = HostTensor {
            dtype: DType::F32,
            shape: vec![2],
            data: vec![0; 7],
        };
        assert_eq!(
            bad.check_size().unwrap_err(),
            "2 elements of f32 need 8 bytes, found 7"
        );
        assert_ne!(t.checksum(), b.checksum());
    }
}
