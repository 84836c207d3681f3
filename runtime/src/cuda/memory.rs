//! Device memory: one allocation per tensor the executable holds (weights,
//! constants, bind-time results), per model input of a shape bucket, and
//! per bucket arena. Every buffer starts at a multiple of [`DEVICE_ALIGN`]
//! bytes, as the kernel contract promises.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::error::CudaError;
use crate::cpu::RunError;

/// The alignment of every buffer start and arena offset, in bytes.
pub const DEVICE_ALIGN: usize = 256;

/// Rounds `bytes` up to [`DEVICE_ALIGN`] (`None` on overflow).
pub(crate) fn device_aligned(bytes: usize) -> Option<usize> {
    bytes.checked_next_multiple_of(DEVICE_ALIGN)
}

/// Bytes of device memory whose start is [`DEVICE_ALIGN`]-aligned.
///
/// The allocation is over-sized by `DEVICE_ALIGN - 1` bytes and the start
/// rounded up, so the alignment holds whatever the allocator returns.
pub(crate) struct DeviceBuffer {
    slice: CudaSlice<u8>,
    /// Offset of the aligned start inside `slice`.
    skew: usize,
    /// Usable bytes from the aligned start.
    bytes: usize,
    /// The aligned start, as kernels receive it.
    ptr: u64,
}

impl DeviceBuffer {
    /// Allocates `bytes` (at least one) for `what`, zeroed.
    pub fn zeroed(stream: &Arc<CudaStream>, bytes: usize, what: &str) -> Result<Self, CudaError> {
        let len =
            bytes
                .max(1)
                .checked_add(DEVICE_ALIGN - 1)
                .ok_or_else(|| RunError::SizeOverflow {
                    name: what.to_string(),
                })?;
        // SAFETY: the bytes are zeroed below, before anything reads them.
        let mut slice =
            unsafe { stream.alloc::<u8>(len) }.map_err(|e| CudaError::alloc(what, len, e))?;
        stream
            .memset_zeros(&mut slice)
            .map_err(|e| CudaError::driver(format!("zeroing {what}"), e))?;
        let raw = {
            let (raw, _sync) = slice.device_ptr(stream);
            raw
        };
        let ptr = raw.next_multiple_of(DEVICE_ALIGN as u64);
        Ok(DeviceBuffer {
            slice,
            skew: (ptr - raw) as usize,
            bytes,
            ptr,
        })
    }

    /// The device address of byte `offset` (no bounds check: the planner
    /// keeps offsets inside the buffer).
    pub fn ptr_at(&self, offset: usize) -> u64 {
        self.ptr + offset as u64
    }

    /// Usable bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Copies `data` to byte `offset` (stream-ordered).
    pub fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        offset: usize,
        data: &[u8],
        what: &str,
    ) -> Result<(), CudaError> {
        if data.is_empty() {
            return Ok(());
        }
        let range = self.range(offset, data.len(), what)?;
        let mut view = self
            .slice
            .try_slice_mut(range)
            .ok_or_else(|| out_of_bounds(what))?;
        stream
            .memcpy_htod(data, &mut view)
            .map_err(|e| CudaError::driver(format!("copying {what} to the device"), e))
    }

    /// Copies `len` bytes from byte `offset` back to the host. Waits for
    /// the stream's earlier work (the copy lands in pageable memory).
    pub fn download(
        &self,
        stream: &Arc<CudaStream>,
        offset: usize,
        len: usize,
        what: &str,
    ) -> Result<Vec<u8>, CudaError> {
        let mut out = vec![0u8; len];
        if len == 0 {
            return Ok(out);
        }
        let range = self.range(offset, len, what)?;
        let view = self
            .slice
            .try_slice(range)
            .ok_or_else(|| out_of_bounds(what))?;
        stream
            .memcpy_dtoh(&view, &mut out[..])
            .map_err(|e| CudaError::driver(format!("copying {what} to the host"), e))?;
        Ok(out)
    }

    /// The slice range of `len` bytes at `offset` past the aligned start.
    fn range(
        &self,
        offset: usize,
        len: usize,
        what: &str,
    ) -> Result<std::ops::Range<usize>, CudaError> {
        let end = offset.checked_add(len).filter(|&e| e <= self.bytes);
        match end {
            Some(end) => Ok(self.skew + offset..self.skew + end),
            None => Err(out_of_bounds(what)),
        }
    }
}

fn out_of_bounds(what: &str) -> CudaError {
    CudaError::Run(RunError::InvalidProgram(format!(
        "{what} does not fit the device buffer planned for it"
    )))
}
