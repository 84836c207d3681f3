//! Owned tensor bytes with 64-byte alignment, for weights, constants,
//! bind-time results and the arena.

/// 64 bytes, 64-byte aligned: the unit of owned tensor storage.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; 64]);

/// Owned bytes with 64-byte alignment.
#[derive(Clone, Default)]
pub(crate) struct AlignedBytes {
    blocks: Vec<Block>,
    len: usize,
}

impl AlignedBytes {
    pub(crate) fn zeroed(len: usize) -> AlignedBytes {
        AlignedBytes {
            blocks: vec![Block([0; 64]); len.div_ceil(64)],
            len,
        }
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> AlignedBytes {
        let mut out = AlignedBytes::zeroed(bytes.len());
        out.as_mut_slice().copy_from_slice(bytes);
        out
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `blocks` holds at least `len` initialized bytes (Block is a
        // plain byte array), borrowed immutably for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), self.len) }
    }

    /// Number of bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.blocks.as_mut_ptr().cast::<u8>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn bytes_round_trip_at_64_byte_alignment() {
        let mut rng = rand::rng();
        for len in [0usize, 1, 63, 64, 65, 1000] {
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let mut a = AlignedBytes::from_slice(&bytes);
            assert_eq!(a.as_slice(), bytes.as_slice());
            assert_eq!(a.len(), len);
            assert_eq!(a.as_mut_ptr() as usize % 64, 0);
            assert!(AlignedBytes::zeroed(len).as_slice().iter().all(|&b| b == 0));
        }
    }
}
