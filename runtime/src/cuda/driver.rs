//! Finding the CUDA driver at run time and opening device 0.
//!
//! The driver library (`libcuda.so`) is loaded dynamically, so a build of
//! kiln runs on machines without one; [`driver_present`] asks before any
//! driver call is made (the loader would otherwise panic on first use).

use std::sync::Arc;

use cudarc::driver::sys::{self, CUresult};
use cudarc::driver::{CudaContext, CudaStream};

use super::error::CudaError;

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library under its known names.
    unsafe { sys::is_culib_present() }
}

/// The context of device 0 and the one stream every launch goes on.
pub(crate) struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
}

/// The error for a machine without the driver library.
pub fn no_driver() -> CudaError {
    CudaError::NoDriver {
        reason: "the library could not be loaded under any of its names \
                 (install the NVIDIA driver, or add its directory to LD_LIBRARY_PATH)"
            .to_string(),
    }
}

/// Opens device 0: checks for the driver, creates (retains) the primary
/// context and a stream of its own.
///
/// Event tracking is turned off before any memory is allocated: every
/// allocation, copy and launch of an executable is ordered on its one
/// stream, and tracking would record and wait on events around each of
/// them, which stream capture cannot take.
pub(crate) fn open() -> Result<Device, CudaError> {
    if !driver_present() {
        return Err(no_driver());
    }
    // The lazy loader panics when the library lacks an entry point it
    // needs (a driver older than the CUDA 12.8 API): report that as a
    // missing driver rather than unwinding through the caller.
    let ctx = match std::panic::catch_unwind(|| CudaContext::new(0)) {
        Ok(Ok(ctx)) => ctx,
        Ok(Err(e)) => {
            let reason = match e.0 {
                CUresult::CUDA_ERROR_NO_DEVICE => "the driver reports no CUDA device".to_string(),
                CUresult::CUDA_ERROR_INVALID_DEVICE => "device 0 does not exist".to_string(),
                _ => format!("opening device 0 failed: {e}"),
            };
            return Err(CudaError::NoDevice { reason });
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown failure");
            return Err(CudaError::NoDriver {
                reason: format!("the driver library is unusable ({what})"),
            });
        }
    };
    // SAFETY: nothing has been allocated in this context object yet, and
    // everything this executable allocates is used on `stream` only.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx
        .new_stream()
        .map_err(|e| CudaError::driver("creating a stream", e))?;
    Ok(Device { ctx, stream })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_no_driver_error_says_what_is_missing_and_what_to_do() {
        let e = no_driver();
        let text = e.to_string();
        assert!(
            text.starts_with("no CUDA driver found (libcuda.so): "),
            "{text}"
        );
        assert!(text.ends_with(", use --device cpu"), "{text}");
        assert!(e.is_unavailable());
    }
}
