//! A PTX interpreter for the kernels kiln emits, so that every GPU kernel
//! can be run against the reference evaluator on a machine without a GPU.
//!
//! The interpreter runs one launch (a 1-D grid of 1-D blocks) over a
//! [`Device`] of buffers. Each thread has its own registers and runs until
//! it reaches an instruction its warp or block executes together
//! (`shfl.sync`, `ldmatrix`, `mma.sync`, `bar.warp.sync`, `bar.sync`); the collective runs
//! when every live thread it involves has arrived. It checks what a GPU
//! would leave undefined or silently wrong, and reports it as a
//! [`SimError`] naming the entry, block, thread and source line:
//!
//! - every global and shared access within its buffer and aligned to its
//!   size (a vector load of 16 bytes at an address that is not a multiple
//!   of 16 is an error, as on the GPU);
//! - shared-memory races: a thread reading or writing bytes another thread
//!   of the block wrote (or read, for a write) since the last barrier (a
//!   warp's own barrier, `bar.warp.sync`, orders its lanes' accesses);
//! - barriers and warp collectives that not every live thread reaches
//!   (a deadlock on the GPU), and warp collectives with an exited lane;
//! - `cp.async` copies land in shared memory only when the issuing thread
//!   waits for their group, so reading too early reads the old bytes;
//! - tensor copies (`cp.async.bulk.tensor`, from a tensor map in the
//!   interpreter's encoding, [`tensor_map`]) land at once and complete
//!   their bytes on an mbarrier (`mbarrier.init`, `.arrive.expect_tx`,
//!   `.try_wait.parity`); a thread whose phase has not completed waits
//!   while the others run, and threads that wait forever are reported.
//!
//! Arithmetic follows the PTX ISA: integer operations wrap, shifts clamp,
//! float operations round to nearest even (`fma` once), conversions round
//! as written and saturate to integers, `min`/`max` return the number when
//! one operand is NaN. Approximate instructions (`ex2.approx`, `rcp.approx`,
//! `sin.approx`, ...) are computed in f64 and rounded once, so they are
//! more exact than the GPU's; `.ftz` is not modelled (subnormals are kept);
//! `mma` products are summed in f64 and rounded to f32 once. Tests of
//! float kernels keep their tolerances.
//!
//! `wgmma.mma_async` runs at once (its operands read from shared memory
//! through their descriptors, or A from the threads' registers). Not interpreted: anything kiln does
//! not emit (an error names the instruction and its line).

mod exec;
mod float;
mod inst;
mod parse;
pub mod tensor_map;
mod warp;

pub use inst::Ty;
pub use parse::{Entry, Module};

/// What went wrong: in the module text, or while running a launch.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("PTX line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error("PTX line {line}: `{instruction}` is not interpreted")]
    Unsupported { line: usize, instruction: String },
    #[error("no entry `{0}` in the module")]
    NoEntry(String),
    #[error("entry `{entry}` takes {want} parameters, the launch gives {got}")]
    Arguments {
        entry: String,
        want: usize,
        got: usize,
    },
    #[error("a launch of {block} threads per block: expected a multiple of 32, at most 1024")]
    Block { block: u32 },
    /// A thread did something undefined.
    #[error("entry `{entry}`, block {block}, thread {thread}, PTX line {line}: {what}")]
    Fault {
        entry: String,
        block: u32,
        thread: u32,
        line: u32,
        what: String,
    },
    /// Threads wait for each other forever.
    #[error("entry `{entry}`, block {block}: {what}")]
    Stuck {
        entry: String,
        block: u32,
        what: String,
    },
    #[error("entry `{entry}` ran more than {limit} instructions")]
    StepLimit { entry: String, limit: u64 },
}

/// First global address; buffer `i` starts at `GLOBAL_BASE + i << 32`.
const GLOBAL_BASE: u64 = 1 << 40;

/// Global memory: buffers at 256-byte aligned addresses, far apart.
#[derive(Clone, Debug, Default)]
pub struct Device {
    buffers: Vec<Vec<u8>>,
}

impl Device {
    pub fn new() -> Device {
        Device::default()
    }

    /// A new buffer holding `bytes`; its device address.
    pub fn alloc(&mut self, bytes: Vec<u8>) -> u64 {
        assert!(bytes.len() < (1 << 32), "buffers are smaller than 4 GiB");
        self.buffers.push(bytes);
        GLOBAL_BASE + ((self.buffers.len() as u64 - 1) << 32)
    }

    /// The bytes of the buffer at `addr` (an address [`Device::alloc`] gave).
    pub fn bytes(&self, addr: u64) -> &[u8] {
        &self.buffers[((addr - GLOBAL_BASE) >> 32) as usize]
    }

    /// The bytes of the buffer at `addr`, to change.
    pub fn bytes_mut(&mut self, addr: u64) -> &mut [u8] {
        &mut self.buffers[((addr - GLOBAL_BASE) >> 32) as usize]
    }

    /// The buffer and offset of `len` bytes at `addr`, if they lie in one.
    fn locate(&self, addr: u64, len: usize) -> Option<(usize, usize)> {
        let rel = addr.checked_sub(GLOBAL_BASE)?;
        let b = (rel >> 32) as usize;
        let off = (rel & 0xffff_ffff) as usize;
        let buf = self.buffers.get(b)?;
        (off + len <= buf.len()).then_some((b, off))
    }
}

/// The shape of a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Blocks in the grid.
    pub grid: u32,
    /// Threads per block.
    pub block: u32,
    /// Bytes of the `.extern .shared` array.
    pub dynamic_shared: u32,
}

/// What one launch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Instructions executed (per thread, summed).
    pub instructions: u64,
    /// Bytes loaded from and stored to global memory (`cp.async` included).
    pub global_loaded: u64,
    pub global_stored: u64,
    /// Block barriers passed.
    pub barriers: u64,
}

/// Runs `entry` of `module` once over `device`, with `args` (one 64-bit
/// value per parameter, in order: pointers from [`Device::alloc`], sizes)
/// and at most `limit` instructions in all.
pub fn run(
    module: &Module,
    entry: &str,
    launch: Launch,
    args: &[u64],
    device: &mut Device,
    limit: u64,
) -> Result<Stats, SimError> {
    let e = module
        .entry(entry)
        .ok_or_else(|| SimError::NoEntry(entry.to_string()))?;
    if e.params.len() != args.len() {
        return Err(SimError::Arguments {
            entry: entry.to_string(),
            want: e.params.len(),
            got: args.len(),
        });
    }
    if launch.block == 0 || !launch.block.is_multiple_of(32) || launch.block > 1024 {
        return Err(SimError::Block {
            block: launch.block,
        });
    }
    exec::run(e, launch, args, device, limit)
}
