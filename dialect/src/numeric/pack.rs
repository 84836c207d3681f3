//! Packing codes into bytes and back.

use super::mask;
use crate::DType;

/// Bit order of sub-byte elements inside bytes.
///
/// Sub-byte elements form one dense bitstream with no padding between
/// elements and zero bits at the end up to a whole byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BitOrder {
    /// Stream bit `i` is bit `i % 8` of byte `i / 8`, and each element's
    /// least significant bit comes first: for `i4`, element 0 is the low
    /// nibble of byte 0.
    LsbFirst,
    /// Stream bit `i` is bit `7 - i % 8` of byte `i / 8`, and each element's
    /// most significant bit comes first: for `i4`, element 0 is the high
    /// nibble of byte 0.
    MsbFirst,
}

/// Why bytes could not be unpacked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PackError {
    /// The byte count does not match the element count.
    #[error("expected {expected} bytes for {n} elements of {dtype}, found {found}")]
    Length {
        /// The element type.
        dtype: DType,
        /// The number of elements asked for.
        n: usize,
        /// `dtype.storage_bytes(n)` (`usize::MAX` if that overflows).
        expected: usize,
        /// The number of bytes given.
        found: usize,
    },
}

/// Packs codes into bytes.
///
/// Types of 8 bits or more: each code little-endian in `bits() / 8` bytes
/// (`bool` is one byte holding `code & 1`); `order` is ignored. Sub-byte
/// types (`i4 u4 f4e2m1 i3 i6`): a dense bitstream in `order` (see
/// [`BitOrder`]), padded with zero bits to a whole byte. Bits of a code
/// above `dtype.bits()` are ignored. The result has
/// `dtype.storage_bytes(codes.len())` bytes.
pub fn pack(dtype: DType, codes: &[u64], order: BitOrder) -> Vec<u8> {
    let bits = dtype.bits();
    if dtype == DType::Bool {
        return codes.iter().map(|&c| (c & 1) as u8).collect();
    }
    if bits >= 8 {
        let width = (bits / 8) as usize;
        return codes
            .iter()
            .flat_map(|&c| c.to_le_bytes().into_iter().take(width))
            .collect();
    }
    let mut out = Vec::with_capacity((codes.len() * bits as usize).div_ceil(8));
    // Pending stream bits not yet written: `pending` of them in `acc`.
    let mut acc = 0u64;
    let mut pending = 0u32;
    for &code in codes {
        let code = code & mask(bits);
        match order {
            BitOrder::LsbFirst => {
                acc |= code << pending;
                pending += bits;
                while pending >= 8 {
                    out.push(acc as u8);
                    acc >>= 8;
                    pending -= 8;
                }
            }
            BitOrder::MsbFirst => {
                acc = (acc << bits) | code;
                pending += bits;
                while pending >= 8 {
                    pending -= 8;
                    out.push((acc >> pending) as u8);
                }
                acc &= mask(pending);
            }
        }
    }
    if pending > 0 {
        out.push(match order {
            BitOrder::LsbFirst => acc as u8,
            BitOrder::MsbFirst => (acc << (8 - pending)) as u8,
        });
    }
    out
}

/// Unpacks `n` codes packed by [`pack`] with the same `dtype` and `order`.
///
/// `bool` bytes give `byte & 1`. Fails with [`PackError::Length`] unless
/// `bytes.len() == dtype.storage_bytes(n)`; padding bits are not checked.
pub fn unpack(
    dtype: DType,
    bytes: &[u8],
    n: usize,
    order: BitOrder,
) -> Result<Vec<u64>, PackError> {
    let bits = dtype.bits();
    let expected = n
        .checked_mul(bits as usize)
        .map_or(usize::MAX, |b| b.div_ceil(8));
    if bytes.len() != expected {
        return Err(PackError::Length {
            dtype,
            n,
            expected,
            found: bytes.len(),
        });
    }
    if dtype == DType::Bool {
        return Ok(bytes.iter().map(|&b| u64::from(b & 1)).collect());
    }
    if bits >= 8 {
        let width = (bits / 8) as usize;
        return Ok(bytes
            .chunks_exact(width)
            .map(|chunk| {
                chunk
                    .iter()
                    .rev()
                    .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
            })
            .collect());
    }
    let mut out = Vec::with_capacity(n);
    let mut acc = 0u64;
    let mut available = 0u32;
    let mut bytes = bytes.iter();
    while out.len() < n {
        while available < bits {
            let Some(&byte) = bytes.next() else {
                return Ok(out);
            };
            match order {
                BitOrder::LsbFirst => acc |= u64::from(byte) << available,
                BitOrder::MsbFirst => acc = (acc << 8) | u64::from(byte),
            }
            available += 8;
        }
        available -= bits;
        match order {
            BitOrder::LsbFirst => {
                out.push(acc & mask(bits));
                acc >>= bits;
            }
            BitOrder::MsbFirst => {
                out.push((acc >> available) & mask(bits));
                acc &= mask(available);
            }
        }
    }
    Ok(out)
}
