//! Tensor maps for `cp.async.bulk.tensor` on the interpreter.
//!
//! On a GPU a tensor map is the driver's opaque 128-byte descriptor
//! (`cuTensorMapEncodeTiled`). The interpreter reads its own encoding of
//! the same facts, which [`TensorMap::encode`] writes and the executor
//! places in device memory where the driver's would go:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | `KTMA` |
//! | 4..8 | rank (1 to 5), u32 |
//! | 8..16 | the global address of element 0, u64 |
//! | 16..56 | the extent of each dimension, innermost first, u64 x 5 |
//! | 56..88 | the byte stride of dimensions 1 to 4, u64 x 4 |
//! | 88..108 | the box, elements per dimension, u32 x 5 |
//! | 108..112 | bytes per element, u32 |
//! | 112..116 | the swizzle: 0 (none) or 128 (bytes), u32 |
//!
//! A copy reads the box at the given coordinates (signed, innermost
//! first); elements outside the tensor read as zeros. The box lands in
//! shared memory densely, innermost dimension fastest; with the 128-byte
//! swizzle (the box's inner extent must then be 128 bytes, and the
//! destination 1024-byte aligned), the 16-byte chunk `c` of each 128-byte
//! row `r` lands at chunk `c ^ (r % 8)` of that row, as on the GPU.

/// The facts of one tensor map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMap {
    pub base: u64,
    /// Extents, innermost first (1 to 5 of them).
    pub dims: Vec<u64>,
    /// Byte strides of dimensions 1.. (one fewer than `dims`).
    pub strides: Vec<u64>,
    /// The box, elements per dimension.
    pub box_dims: Vec<u32>,
    pub elem_bytes: u32,
    /// 0 or 128.
    pub swizzle: u32,
}

const MAGIC: &[u8; 4] = b"KTMA";

impl TensorMap {
    /// The 128 bytes the interpreter reads.
    pub fn encode(&self) -> [u8; 128] {
        let mut b = [0u8; 128];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&(self.dims.len() as u32).to_le_bytes());
        b[8..16].copy_from_slice(&self.base.to_le_bytes());
        for (i, d) in self.dims.iter().take(5).enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&d.to_le_bytes());
        }
        for (i, s) in self.strides.iter().take(4).enumerate() {
            b[56 + 8 * i..64 + 8 * i].copy_from_slice(&s.to_le_bytes());
        }
        for (i, x) in self.box_dims.iter().take(5).enumerate() {
            b[88 + 4 * i..92 + 4 * i].copy_from_slice(&x.to_le_bytes());
        }
        b[108..112].copy_from_slice(&self.elem_bytes.to_le_bytes());
        b[112..116].copy_from_slice(&self.swizzle.to_le_bytes());
        b
    }

    /// Reads an encoding back; an error says what is wrong with it.
    pub fn decode(b: &[u8]) -> Result<TensorMap, String> {
        if b.len() < 128 || &b[0..4] != MAGIC {
            return Err("the tensor map is not one the interpreter's executor wrote".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let rank = u32_at(4) as usize;
        if !(1..=5).contains(&rank) {
            return Err(format!("a tensor map of rank {rank}"));
        }
        let m = TensorMap {
            base: u64_at(8),
            dims: (0..rank).map(|i| u64_at(16 + 8 * i)).collect(),
            strides: (0..rank - 1).map(|i| u64_at(56 + 8 * i)).collect(),
            box_dims: (0..rank).map(|i| u32_at(88 + 4 * i)).collect(),
            elem_bytes: u32_at(108),
            swizzle: u32_at(112),
        };
        if ![1, 2, 4, 8].contains(&m.elem_bytes) || ![0, 128].contains(&m.swizzle) {
            return Err(format!(
                "a tensor map of {}-byte elements and a swizzle of {}",
                m.elem_bytes, m.swizzle
            ));
        }
        if m.box_dims.iter().any(|&x| x == 0 || x > 256) {
            return Err(format!("a tensor map box of {:?}", m.box_dims));
        }
        if m.swizzle == 128 && m.box_dims[0] * m.elem_bytes != 128 {
            return Err(format!(
                "a 128-byte swizzle with a box {} bytes wide (128 here)",
                m.box_dims[0] * m.elem_bytes
            ));
        }
        Ok(m)
    }

    /// Bytes of one box.
    pub fn box_bytes(&self) -> u64 {
        self.box_dims.iter().map(|&x| u64::from(x)).product::<u64>() * u64::from(self.elem_bytes)
    }

    /// The box at `coords` (innermost first): for each element in dense
    /// box order, its global address, or `None` outside the tensor.
    pub fn box_addresses(&self, coords: &[i64]) -> Vec<Option<u64>> {
        let total: usize = self.box_dims.iter().map(|&x| x as usize).product();
        let mut out = Vec::with_capacity(total);
        let mut idx = vec![0u32; self.dims.len()];
        for _ in 0..total {
            let mut addr = Some(self.base);
            for (d, &i) in idx.iter().enumerate() {
                let c = coords.get(d).copied().unwrap_or(0) + i64::from(i);
                if c < 0 || c as u64 >= self.dims[d] {
                    addr = None;
                    break;
                }
                let stride = if d == 0 {
                    u64::from(self.elem_bytes)
                } else {
                    self.strides[d - 1]
                };
                addr = addr.map(|a| a + c as u64 * stride);
            }
            out.push(addr);
            for (i, &b) in idx.iter_mut().zip(&self.box_dims) {
                *i += 1;
                if *i < b {
                    break;
                }
                *i = 0;
            }
        }
        out
    }

    /// Where byte `o` of the dense box lands, from the destination.
    pub fn smem_offset(&self, o: u64) -> u64 {
        if self.swizzle == 0 {
            return o;
        }
        let (row, chunk, byte) = (o / 128, (o % 128) / 16, o % 16);
        row * 128 + ((chunk ^ (row % 8)) * 16) + byte
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip_and_boxes_clip_and_swizzle() {
        let m = TensorMap {
            base: 0x1000,
            dims: vec![64, 3, 2],
            strides: vec![128, 384],
            box_dims: vec![64, 4, 1],
            elem_bytes: 2,
            swizzle: 128,
        };
        assert_eq!(TensorMap::decode(&m.encode()), Ok(m.clone()));
        // rows 2 and 3 of the box at row 1 lie past the 3 rows
        let a = m.box_addresses(&[0, 1, 1]);
        assert_eq!(a.len(), 256);
        assert_eq!(a[0], Some(0x1000 + 384 + 128));
        assert_eq!(a[65], Some(0x1000 + 384 + 256 + 2));
        assert!(a[128..].iter().all(Option::is_none));
        // chunk 1 of row 3 lands at chunk 2
        assert_eq!(m.smem_offset(3 * 128 + 16 + 5), 3 * 128 + 2 * 16 + 5);
        assert!(TensorMap::decode(&[0u8; 128]).is_err());
        let narrow = TensorMap {
            box_dims: vec![32, 4, 1],
            ..m
        };
        assert!(TensorMap::decode(&narrow.encode()).is_err());
    }
}
