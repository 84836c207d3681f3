//! The CPU executor: runs a [`Program`] whose kernels are compiled to native
//! functions with the kernel ABI ([`KernelFn`]).
//!
//! * Construction checks the program's structure (buffer indices, dtypes
//!   against the kernels' declarations, that every launch reads only what
//!   exists by then) and encodes its constants once.
//! * [`CpuExecutable::bind_weights`] checks and copies the weights, binds
//!   the dims their shapes name, and runs the bind-time launches once.
//! * [`CpuExecutable::run`] binds the dims from the inputs' shapes, plans
//!   the arena for those dims (cached per distinct binding), runs the
//!   run-time launches on the thread pool, and copies the outputs out.
//!
//! Nothing here panics on bad input: every mismatch is a [`RunError`].

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_dialect::DType;
use kiln_dialect::kernel::Program;

use super::aligned::AlignedBytes;
use super::arena::{self, ArenaPlan};
use super::pool::{ThreadPool, Work};
use super::program_check::{Origin, check_program};
use crate::HostTensor;
use crate::binding::{
    Bindings, DimValues, byte_size, check_inputs, check_weights, dim_values, kernel_dims, resolve,
};

/// A compiled kernel: see [`super::jit::KernelFn`] for the ABI.
pub use super::jit::KernelFn;

/// Why a program cannot be built, bound or run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("invalid program: {0}")]
    InvalidProgram(String),
    #[error("weights are not bound: call bind_weights before run")]
    WeightsNotBound,
    #[error("missing weight `{name}`")]
    MissingWeight { name: String },
    #[error("weight `{name}`: expected element type {expected}, found {found}")]
    WeightDType {
        name: String,
        expected: DType,
        found: DType,
    },
    #[error("weight `{name}`: expected shape {expected}, found {found}")]
    WeightShape {
        name: String,
        expected: String,
        found: String,
    },
    #[error("missing input `{name}`")]
    MissingInput { name: String },
    #[error("unknown input `{name}`: the program's inputs are {known}")]
    UnknownInput { name: String, known: String },
    #[error("input `{name}`: expected element type {expected}, found {found}")]
    InputDType {
        name: String,
        expected: DType,
        found: DType,
    },
    #[error("input `{name}`: expected rank {expected} (shape {shape}), found rank {found}")]
    InputRank {
        name: String,
        shape: String,
        expected: usize,
        found: usize,
    },
    #[error("input `{name}` axis {axis}: expected size {expected}, found {found}")]
    InputShape {
        name: String,
        axis: usize,
        expected: usize,
        found: usize,
    },
    #[error("dim `{dim}` is {first_value} from {first} but {second_value} from {second}")]
    DimConflict {
        dim: String,
        first: String,
        first_value: usize,
        second: String,
        second_value: usize,
    },
    #[error("dim `{dim}` (needed by {needed_by}) is not bound by any input or weight shape")]
    UnboundDim { dim: String, needed_by: String },
    #[error("tensor `{name}`: {message}")]
    TensorSize { name: String, message: String },
    #[error("buffer `{name}` is too large for this machine at these dims")]
    SizeOverflow { name: String },
}

/// Figures of the executable and its last run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecStats {
    /// Arena bytes of the last run (0 before the first).
    pub peak_arena_bytes: usize,
    /// What the last run's arena would need without reuse.
    pub unshared_arena_bytes: usize,
    /// Run-time launches per run.
    pub launches: usize,
    /// Launches run once when weights are bound.
    pub bind_time_launches: usize,
    /// Threads that run kernels, the caller included.
    pub threads: usize,
}

/// A tensor the executable owns: a weight, a constant or a bind-time result.
#[derive(Clone)]
struct Held {
    dtype: DType,
    shape: Vec<usize>,
    bytes: AlignedBytes,
}

impl Held {
    fn to_host(&self) -> HostTensor {
        HostTensor {
            dtype: self.dtype,
            shape: self.shape.clone(),
            data: self.bytes.as_slice().to_vec(),
        }
    }
}

/// One run-time launch at concrete dims.
struct LaunchPlan {
    launch: usize,
    dims: Vec<i64>,
    work: Work,
}

/// Everything a run at one binding of the dims needs, computed once.
struct RunPlan {
    shapes: Vec<Option<Vec<usize>>>,
    arena: ArenaPlan,
    launches: Vec<LaunchPlan>,
}

/// A program ready to run on the CPU; see the module docs.
pub struct CpuExecutable {
    program: Program,
    kernels: Vec<KernelFn>,
    /// Keeps the compiled code alive as long as the kernel pointers.
    _code: Box<dyn Any + Send + Sync>,
    pool: ThreadPool,
    origins: Vec<Origin>,
    /// Constants, weights and bind-time results, by buffer.
    held: Vec<Option<Held>>,
    /// Dims bound by the weights' shapes, with where each came from.
    weight_dims: Bindings,
    bound: bool,
    plans: Mutex<HashMap<DimValues, Arc<RunPlan>>>,
    /// The arena of an earlier run, kept for the next one.
    spare_arena: Mutex<AlignedBytes>,
    last: Mutex<ExecStats>,
}

impl std::fmt::Debug for CpuExecutable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuExecutable")
            .field("program", &self.program.name)
            .field("launches", &self.program.launches.len())
            .field("pool", &self.pool)
            .field("bound", &self.bound)
            .finish()
    }
}

fn invalid(message: String) -> RunError {
    RunError::InvalidProgram(message)
}

impl CpuExecutable {
    /// Builds an executable from a program and one compiled kernel per
    /// launch (in launch order); `code` keeps the kernels' memory alive.
    /// Uses a pool sized by [`super::pool::threads_from_env`].
    ///
    /// A program without weights is bound at once (its bind-time launches
    /// run here); others need [`CpuExecutable::bind_weights`] before
    /// [`CpuExecutable::run`].
    pub fn new(
        program: Program,
        kernels: Vec<KernelFn>,
        code: Box<dyn Any + Send + Sync>,
    ) -> Result<CpuExecutable, RunError> {
        CpuExecutable::with_pool(program, kernels, code, ThreadPool::from_env())
    }

    /// As [`CpuExecutable::new`], on the given pool.
    pub fn with_pool(
        program: Program,
        kernels: Vec<KernelFn>,
        code: Box<dyn Any + Send + Sync>,
        pool: ThreadPool,
    ) -> Result<CpuExecutable, RunError> {
        let origins = check_program(&program, kernels.len())?;
        let mut held: Vec<Option<Held>> = vec![None; program.buffers.len()];
        for (b, values) in &program.constants {
            let buffer = &program.buffers[*b];
            let shape = resolve(&buffer.shape, &HashMap::new(), &buffer.name)
                .map_err(|_| invalid(format!("constant `{}` has a symbolic shape", buffer.name)))?;
            let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if numel != Some(values.len()) {
                return Err(invalid(format!(
                    "constant `{}` of shape {} has {} values",
                    buffer.name,
                    buffer.shape,
                    values.len()
                )));
            }
            let tensor = HostTensor::from_values(buffer.dtype, &shape, values);
            held[*b] = Some(Held {
                dtype: buffer.dtype,
                shape,
                bytes: AlignedBytes::from_slice(&tensor.data),
            });
        }
        let bind_time_launches = program.launches.iter().filter(|l| l.bind_time).count();
        let last = ExecStats {
            launches: program.launches.len() - bind_time_launches,
            bind_time_launches,
            threads: pool.threads(),
            ..ExecStats::default()
        };
        let mut exe = CpuExecutable {
            program,
            kernels,
            _code: code,
            pool,
            origins,
            held,
            weight_dims: HashMap::new(),
            bound: false,
            plans: Mutex::new(HashMap::new()),
            spare_arena: Mutex::new(AlignedBytes::default()),
            last: Mutex::new(last),
        };
        if exe.program.weights.is_empty() {
            exe.bind_weights(&HashMap::new())?;
        }
        Ok(exe)
    }

    /// The program this executable runs.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// A copy of what the executable holds for buffer `b`: a constant, a
    /// bound weight or a bind-time result (`None` for inputs, run-time
    /// results, and weights before binding). Artifacts store bind-time
    /// results this way, so that loading one runs no bind-time launch.
    pub fn held_tensor(&self, b: usize) -> Option<HostTensor> {
        self.held.get(b)?.as_ref().map(Held::to_host)
    }

    /// Checks every weight against the program (name, element type, shape,
    /// byte count), copies them, binds the dims their shapes name, and runs
    /// the bind-time launches. Tensors the program does not use are ignored
    /// (a weights file may hold more, and the optimizer drops dead weights).
    /// Replaces weights bound earlier; after an error no weights are bound.
    pub fn bind_weights(&mut self, weights: &HashMap<String, HostTensor>) -> Result<(), RunError> {
        self.bound = false;
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let dims = check_weights(&self.program, weights)?;
        for &b in &self.program.weights {
            let t = &weights[&self.program.buffers[b].name];
            self.held[b] = Some(Held {
                dtype: t.dtype,
                shape: t.shape.clone(),
                bytes: AlignedBytes::from_slice(&t.data),
            });
        }
        for i in 0..self.program.launches.len() {
            if self.program.launches[i].bind_time {
                self.run_bind_time(i, &dims)?;
            }
        }
        self.weight_dims = dims;
        self.bound = true;
        Ok(())
    }

    /// Runs bind-time launch `i` into a fresh held tensor.
    fn run_bind_time(&mut self, i: usize, dims: &Bindings) -> Result<(), RunError> {
        let launch = &self.program.launches[i];
        let out = &self.program.buffers[launch.out];
        let shape = resolve(&out.shape, dims, &out.name)?;
        let bytes = byte_size(out.dtype, &shape).ok_or_else(|| RunError::SizeOverflow {
            name: out.name.clone(),
        })?;
        let (kernel_dims, work) = launch_extent(&self.program, i, dims, &shape)?;
        let mut result = Held {
            dtype: out.dtype,
            shape,
            bytes: AlignedBytes::zeroed(bytes),
        };
        let mut args = Vec::with_capacity(launch.args.len() + 1);
        for &a in &launch.args {
            match &self.held[a] {
                Some(h) => args.push(h.bytes.as_slice().as_ptr().cast_mut()),
                None => {
                    return Err(invalid(format!(
                        "bind-time launch {i} reads `{}`, which is not bound",
                        self.program.buffers[a].name
                    )));
                }
            }
        }
        args.push(result.bytes.as_mut_ptr());
        // SAFETY: every argument points at a held tensor of the shape the
        // program declares (checked when bound or computed), the output at
        // a fresh buffer of the output's size; all outlive the call.
        unsafe {
            self.pool
                .run(self.kernels[i], args.as_ptr(), kernel_dims.as_ptr(), &work)
        };
        self.held[launch.out] = Some(result);
        Ok(())
    }

    /// Runs the model on named inputs; returns every output, in the
    /// program's output order.
    pub fn run(
        &self,
        inputs: &HashMap<String, HostTensor>,
    ) -> Result<Vec<(String, HostTensor)>, RunError> {
        if !self.bound {
            return Err(RunError::WeightsNotBound);
        }
        let bindings = self.bind_inputs(inputs)?;
        let plan = self.plan_for(&bindings)?;

        let mut arena =
            std::mem::take(&mut *self.spare_arena.lock().unwrap_or_else(|e| e.into_inner()));
        if arena.len() < plan.arena.peak_bytes {
            arena = AlignedBytes::zeroed(plan.arena.peak_bytes);
        }
        let base = arena.as_mut_ptr();
        // Outputs computed by this run are written straight into the
        // tensors returned, not copied out of the arena afterwards.
        // Their bytes are left uninitialized (no memset of a large output
        // on one thread): the launch that writes a buffer writes every
        // byte of it, except sub-byte types, whose stores read and modify
        // whole bytes and which start zeroed. `set_len` follows the
        // launches.
        let mut direct: HashMap<usize, Vec<u8>> = HashMap::new();
        for (_, b) in &self.program.outputs {
            if self.origins[*b] == Origin::RunTime && !direct.contains_key(b) {
                let dtype = self.program.buffers[*b].dtype;
                let shape = plan.shapes[*b].clone().unwrap_or_default();
                let len = byte_size(dtype, &shape).unwrap_or(0);
                let bytes = if dtype.bits() < 8 {
                    vec![0u8; len]
                } else {
                    Vec::with_capacity(len)
                };
                direct.insert(*b, bytes);
            }
        }
        let mut args: Vec<*mut u8> = Vec::new();
        for lp in &plan.launches {
            let launch = &self.program.launches[lp.launch];
            args.clear();
            for &b in launch.args.iter().chain(std::iter::once(&launch.out)) {
                args.push(match direct.get_mut(&b) {
                    // A direct output read by a later launch has been
                    // written by then (the program check orders them).
                    Some(bytes) => bytes.as_mut_ptr(),
                    None => self.pointer(b, inputs, base, &plan.arena),
                });
            }
            // SAFETY: inputs were checked against their declared shapes and
            // byte counts, held tensors have their declared shapes, and arena
            // buffers have their planned sizes at these dims without overlap
            // among live buffers; the arena and inputs outlive the call, and
            // the output is written by this launch only.
            unsafe {
                self.pool.run(
                    self.kernels[lp.launch],
                    args.as_ptr(),
                    lp.dims.as_ptr(),
                    &lp.work,
                )
            };
        }

        for (b, bytes) in direct.iter_mut() {
            let shape = plan.shapes[*b].clone().unwrap_or_default();
            let len = byte_size(self.program.buffers[*b].dtype, &shape).unwrap_or(0);
            // SAFETY: the capacity is `len`, and the launch that writes the
            // buffer (every run-time buffer has one) wrote all its bytes.
            unsafe { bytes.set_len(len) };
        }
        let mut outputs = Vec::with_capacity(self.program.outputs.len());
        for (name, b) in &self.program.outputs {
            let tensor = match self.origins[*b] {
                Origin::Input => inputs[&self.program.buffers[*b].name].clone(),
                Origin::RunTime => {
                    let buffer = &self.program.buffers[*b];
                    let shape = plan.shapes[*b].clone().unwrap_or_default();
                    // The last name of a buffer takes its bytes, earlier
                    // ones a copy.
                    let later = self.program.outputs[outputs.len() + 1..]
                        .iter()
                        .any(|(_, o)| o == b);
                    let data = if later {
                        direct.get(b).cloned().unwrap_or_default()
                    } else {
                        direct.remove(b).unwrap_or_default()
                    };
                    HostTensor {
                        dtype: buffer.dtype,
                        shape,
                        data,
                    }
                }
                Origin::Weight | Origin::Constant | Origin::BindTime | Origin::Unused => {
                    match &self.held[*b] {
                        Some(h) => h.to_host(),
                        None => return Err(RunError::WeightsNotBound),
                    }
                }
            };
            outputs.push((name.clone(), tensor));
        }
        *self.spare_arena.lock().unwrap_or_else(|e| e.into_inner()) = arena;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.peak_arena_bytes = plan.arena.peak_bytes;
        last.unshared_arena_bytes = plan.arena.unshared_bytes;
        Ok(outputs)
    }

    /// Figures of the executable and its last run.
    pub fn stats(&self) -> ExecStats {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number of distinct dim bindings planned so far.
    pub fn cached_plans(&self) -> usize {
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Where buffer `b`'s bytes are during a run.
    fn pointer(
        &self,
        b: usize,
        inputs: &HashMap<String, HostTensor>,
        base: *mut u8,
        arena: &ArenaPlan,
    ) -> *mut u8 {
        match self.origins[b] {
            // Kernels never write their inputs: the cast to `*mut` only
            // follows the ABI's pointer type.
            Origin::Input => inputs[&self.program.buffers[b].name]
                .data
                .as_ptr()
                .cast_mut(),
            Origin::RunTime => base.wrapping_add(arena.offsets[b].unwrap_or(0)),
            Origin::Weight | Origin::Constant | Origin::BindTime => match &self.held[b] {
                Some(h) => h.bytes.as_slice().as_ptr().cast_mut(),
                None => std::ptr::null_mut(),
            },
            Origin::Unused => std::ptr::null_mut(),
        }
    }

    /// Checks the inputs and binds the dims their shapes name.
    fn bind_inputs(&self, inputs: &HashMap<String, HostTensor>) -> Result<Bindings, RunError> {
        check_inputs(&self.program, &self.weight_dims, inputs)
    }

    /// The plan at these bindings, from the cache or made now.
    fn plan_for(&self, bindings: &Bindings) -> Result<Arc<RunPlan>, RunError> {
        let key = dim_values(bindings);
        if let Some(plan) = self
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(Arc::clone(plan));
        }
        let plan = Arc::new(self.make_plan(bindings)?);
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Arc::clone(&plan));
        Ok(plan)
    }

    fn make_plan(&self, bindings: &Bindings) -> Result<RunPlan, RunError> {
        let p = &self.program;
        let mut shapes: Vec<Option<Vec<usize>>> = vec![None; p.buffers.len()];
        let mut bytes = vec![0usize; p.buffers.len()];
        for (b, buffer) in p.buffers.iter().enumerate() {
            if self.origins[b] == Origin::RunTime {
                let shape = resolve(&buffer.shape, bindings, &buffer.name)?;
                bytes[b] =
                    byte_size(buffer.dtype, &shape).ok_or_else(|| RunError::SizeOverflow {
                        name: buffer.name.clone(),
                    })?;
                shapes[b] = Some(shape);
            }
        }
        let arena = arena::plan(p, &bytes).ok_or_else(|| RunError::SizeOverflow {
            name: "the arena".to_string(),
        })?;
        let mut launches = Vec::new();
        for (i, launch) in p.launches.iter().enumerate() {
            if launch.bind_time {
                continue;
            }
            let shape = shapes[launch.out].clone().unwrap_or_default();
            let (dims, work) = launch_extent(p, i, bindings, &shape)?;
            launches.push(LaunchPlan {
                launch: i,
                dims,
                work,
            });
        }
        Ok(RunPlan {
            shapes,
            arena,
            launches,
        })
    }
}

/// The dims vector and the extent of launch `i` whose output has `shape`.
fn launch_extent(
    p: &Program,
    i: usize,
    bindings: &Bindings,
    shape: &[usize],
) -> Result<(Vec<i64>, Work), RunError> {
    let launch = &p.launches[i];
    let dims = kernel_dims(p, i, bindings)?;
    let out = &p.buffers[launch.out];
    let overflow = || RunError::SizeOverflow {
        name: out.name.clone(),
    };
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(overflow)?;
    let (rows, inner) = match shape.split_first() {
        None => (1, 1),
        Some((&rows, rest)) => (rows, rest.iter().product::<usize>()),
    };
    let row_bits = (inner as u64)
        .checked_mul(out.dtype.bits() as u64)
        .ok_or_else(overflow)?;
    let mut cost = numel;
    for &a in &launch.args {
        let arg = &p.buffers[a];
        let n = resolve(&arg.shape, bindings, &arg.name)
            .map(|s| s.iter().fold(1usize, |x, &d| x.saturating_mul(d)))
            .unwrap_or(0);
        cost = cost.saturating_add(n);
    }
    let rows = if numel == 0 { 0 } else { rows };
    Ok((
        dims,
        Work {
            rows,
            row_bits,
            cost,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_dialect::kernel::{Body, Buffer, Expr, Kernel, Launch, Ty};
    use kiln_dialect::{Dim, Shape};
    use rand::Rng;

    // Hand-written kernels with the ABI. Inputs may be unaligned (they are
    // the caller's `Vec<u8>`), so every access is unaligned.

    unsafe fn load(p: *const u8, i: usize) -> f32 {
        unsafe { p.cast::<f32>().add(i).read_unaligned() }
    }

    unsafe fn store(p: *mut u8, i: usize, v: f32) {
        unsafe { p.cast::<f32>().add(i).write_unaligned(v) }
    }

    /// `out[i, j] = a[i, j] + b[j]`; dims `[m, n]`.
    unsafe extern "C" fn add_rows(args: *const *mut u8, dims: *const i64, begin: i64, end: i64) {
        unsafe {
            let (a, b, out) = (*args, *args.add(1), *args.add(2));
            let n = *dims.add(1) as usize;
            for i in begin as usize..end as usize {
                for j in 0..n {
                    store(out, i * n + j, load(a, i * n + j) + load(b, j));
                }
            }
        }
    }

    /// `out[i, j] = a[i, j] * s[0]`; dims `[m, n]`.
    unsafe extern "C" fn scale(args: *const *mut u8, dims: *const i64, begin: i64, end: i64) {
        unsafe {
            let (a, s, out) = (*args, *args.add(1), *args.add(2));
            let n = *dims.add(1) as usize;
            for k in begin as usize * n..end as usize * n {
                store(out, k, load(a, k) * load(s, 0));
            }
        }
    }

    /// `out[i] = sum_j a[i, j]`; dims `[m, n]`.
    unsafe extern "C" fn row_sum(args: *const *mut u8, dims: *const i64, begin: i64, end: i64) {
        unsafe {
            let (a, out) = (*args, *args.add(1));
            let n = *dims.add(1) as usize;
            for i in begin as usize..end as usize {
                let s: f32 = (0..n).map(|j| load(a, i * n + j)).sum();
                store(out, i, s);
            }
        }
    }

    /// `out[j] = 2 * w[j]` (bind time); dims `[n]`.
    unsafe extern "C" fn double(args: *const *mut u8, _dims: *const i64, begin: i64, end: i64) {
        unsafe {
            let (w, out) = (*args, *args.add(1));
            for j in begin as usize..end as usize {
                store(out, j, 2.0 * load(w, j));
            }
        }
    }

    /// Calls of `total` (only one test uses it).
    static TOTAL_CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    /// `out[] = sum of every a[i, j]` (a rank-0 output); counts the calls
    /// that compute it in `TOTAL_CALLS`; dims `[m, n]`.
    unsafe extern "C" fn total(args: *const *mut u8, dims: *const i64, begin: i64, end: i64) {
        unsafe {
            let (a, out) = (*args, *args.add(1));
            if begin == 0 && end >= 1 {
                let count = (*dims * *dims.add(1)) as usize;
                store(out, 0, (0..count).map(|k| load(a, k)).sum());
                TOTAL_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Chunks of `to_u4` that started inside a byte.
    static SPLIT_BYTES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    /// `out[i, j] = x[i, j] & 15` into a packed `u4[m, n]` output (LSB-first
    /// nibbles, read-modify-write of whole bytes); dims `[m, n]`.
    unsafe extern "C" fn to_u4(args: *const *mut u8, dims: *const i64, begin: i64, end: i64) {
        unsafe {
            let (x, out) = (*args, *args.add(1));
            let n = *dims.add(1) as usize;
            if !(begin as usize * n * 4).is_multiple_of(8) {
                SPLIT_BYTES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            for k in begin as usize * n..end as usize * n {
                let code = *x.add(k) & 15;
                let byte = out.add(k / 2);
                let shift = (k % 2) * 4;
                *byte = (*byte & !(15 << shift)) | (code << shift);
            }
        }
    }

    fn buf(name: &str, dims: &[&str]) -> Buffer {
        Buffer {
            name: name.into(),
            dtype: DType::F32,
            shape: Shape(
                dims.iter()
                    .map(|d| d.parse::<u64>().map_or_else(|_| Dim::sym(d), Dim::Static))
                    .collect(),
            ),
        }
    }

    fn launch(
        bufs: &[Buffer],
        args: &[usize],
        out: usize,
        dims: &[&str],
        bind_time: bool,
    ) -> Launch {
        Launch {
            kernel: Kernel {
                name: format!("k_{}", bufs[out].name),
                inputs: args.iter().map(|&a| bufs[a].clone()).collect(),
                output: bufs[out].clone(),
                dims: dims.iter().map(|d| d.to_string()).collect(),
                float: Ty::F32,
                // The executor never reads the body: the kernels are native.
                body: Body::Map {
                    expr: Expr::Float(0.0),
                },
            },
            args: args.to_vec(),
            out,
            bind_time,
        }
    }

    /// x: f32[m, n] input, w: f32[n] weight, c: f32[1] constant,
    /// w2 = 2w (bind time), h = x + w2, s = h * c, r = rowsum(s).
    /// Outputs: y = r, y_again = r, h, x_out = x, w_out = w, w2, c_out = c.
    fn model(c: f64) -> (Program, Vec<KernelFn>) {
        let bufs = vec![
            buf("x", &["m", "n"]),
            buf("w", &["n"]),
            buf("c", &["1"]),
            buf("w2", &["n"]),
            buf("h", &["m", "n"]),
            buf("s", &["m", "n"]),
            buf("r", &["m"]),
        ];
        let launches = vec![
            launch(&bufs, &[1], 3, &["n"], true),
            launch(&bufs, &[0, 3], 4, &["m", "n"], false),
            launch(&bufs, &[4, 2], 5, &["m", "n"], false),
            launch(&bufs, &[5], 6, &["m", "n"], false),
        ];
        let kernels: Vec<KernelFn> = vec![double, add_rows, scale, row_sum];
        let outputs = [
            ("y", 6),
            ("y_again", 6),
            ("h", 4),
            ("x_out", 0),
            ("w_out", 1),
            ("w2", 3),
            ("c_out", 2),
        ];
        let program = Program {
            name: "test".into(),
            buffers: bufs,
            inputs: vec![0],
            weights: vec![1],
            constants: vec![(2, vec![c])],
            outputs: outputs.iter().map(|&(n, b)| (n.to_string(), b)).collect(),
            dims: vec!["m".into(), "n".into()],
            launches,
        };
        (program, kernels)
    }

    /// Random values in ±[0.5, 2): never zero.
    fn random(n: usize) -> Vec<f64> {
        let mut rng = rand::rng();
        (0..n)
            .map(|_| {
                let v: f64 = rng.random_range(0.5..2.0);
                if rng.random_bool(0.5) { v } else { -v }
            })
            .collect()
    }

    fn f32_tensor(shape: &[usize], values: &[f64]) -> HostTensor {
        HostTensor::from_values(DType::F32, shape, values)
    }

    fn executable(threads: usize) -> (CpuExecutable, f64) {
        let c = random(1)[0];
        let (program, kernels) = model(c);
        let exe =
            CpuExecutable::with_pool(program, kernels, Box::new(()), ThreadPool::new(threads))
                .unwrap();
        (exe, c)
    }

    fn weights(w: &[f64]) -> HashMap<String, HostTensor> {
        HashMap::from([("w".to_string(), f32_tensor(&[w.len()], w))])
    }

    fn inputs(m: usize, x: &[f64]) -> HashMap<String, HostTensor> {
        HashMap::from([("x".to_string(), f32_tensor(&[m, x.len() / m], x))])
    }

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "element {i}: {x} vs {y}"
            );
        }
    }

    #[test]
    fn runs_bind_time_and_run_time_launches_against_a_hand_oracle() {
        for threads in [1, 3] {
            let (mut exe, c) = executable(threads);
            let n = 37;
            let w = random(n);
            exe.bind_weights(&weights(&w)).unwrap();
            // Large enough to be split across threads (cost above the bar).
            let m = 700;
            let x = random(m * n);
            let out = exe.run(&inputs(m, &x)).unwrap();
            let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                ["y", "y_again", "h", "x_out", "w_out", "w2", "c_out"]
            );
            let c32 = c as f32 as f64;
            let h: Vec<f64> = (0..m * n).map(|k| x[k] + 2.0 * w[k % n]).collect();
            let y: Vec<f64> = (0..m)
                .map(|i| (0..n).map(|j| h[i * n + j] * c32).sum())
                .collect();
            let value = |name: &str| {
                let t = &out.iter().find(|(n, _)| n == name).unwrap().1;
                (t.shape.clone(), t.to_values())
            };
            assert_eq!(value("y").0, vec![m]);
            close(&value("y").1, &y);
            assert_eq!(value("y_again"), value("y"));
            assert_eq!(value("h").0, vec![m, n]);
            close(&value("h").1, &h);
            close(&value("x_out").1, &x);
            close(&value("w_out").1, &w);
            close(
                &value("w2").1,
                &w.iter().map(|v| 2.0 * v).collect::<Vec<_>>(),
            );
            assert_eq!(value("c_out"), (vec![1], vec![c32]));
            let stats = exe.stats();
            assert_eq!(stats.threads, threads);
            assert_eq!((stats.launches, stats.bind_time_launches), (3, 1));
            // h (output) lives throughout, s and r are live together: no
            // reuse is possible here, so peak = unshared = h + s + r.
            let hs = (m * n * 4).next_multiple_of(64);
            assert_eq!(
                stats.unshared_arena_bytes,
                2 * hs + (m * 4).next_multiple_of(64)
            );
            assert_eq!(stats.peak_arena_bytes, stats.unshared_arena_bytes);
        }
    }

    #[test]
    fn symbolic_dims_are_planned_once_per_binding() {
        let (mut exe, c) = executable(2);
        let n = 5;
        let w = random(n);
        exe.bind_weights(&weights(&w)).unwrap();
        for &m in &[3usize, 11, 3, 1, 11] {
            let x = random(m * n);
            let out = exe.run(&inputs(m, &x)).unwrap();
            let y: Vec<f64> = (0..m)
                .map(|i| {
                    (0..n)
                        .map(|j| (x[i * n + j] + 2.0 * w[j]) * (c as f32 as f64))
                        .sum()
                })
                .collect();
            close(&out[0].1.to_values(), &y);
            assert_eq!(
                exe.stats().peak_arena_bytes,
                2 * (m * n * 4).next_multiple_of(64) + 64
            );
        }
        assert_eq!(exe.cached_plans(), 3);
        // Zero rows: no launch writes anything, the outputs are empty.
        let empty = HashMap::from([("x".to_string(), f32_tensor(&[0, n], &[]))]);
        let out = exe.run(&empty).unwrap();
        assert_eq!((out[0].1.shape.clone(), out[0].1.data.len()), (vec![0], 0));
    }

    #[test]
    fn the_arena_reuses_dead_buffers() {
        // x -> a -> b -> c -> y (chain of scales): 2 slots suffice.
        let bufs = vec![
            buf("x", &["m", "n"]),
            buf("k", &["1"]),
            buf("a", &["m", "n"]),
            buf("b", &["m", "n"]),
            buf("c", &["m", "n"]),
            buf("y", &["m", "n"]),
        ];
        let launches = vec![
            launch(&bufs, &[0, 1], 2, &["m", "n"], false),
            launch(&bufs, &[2, 1], 3, &["m", "n"], false),
            launch(&bufs, &[3, 1], 4, &["m", "n"], false),
            launch(&bufs, &[4, 1], 5, &["m", "n"], false),
        ];
        let k = random(1)[0];
        let program = Program {
            name: "chain".into(),
            buffers: bufs,
            inputs: vec![0],
            weights: vec![],
            constants: vec![(1, vec![k])],
            outputs: vec![("y".into(), 5)],
            dims: vec!["m".into(), "n".into()],
            launches,
        };
        let exe =
            CpuExecutable::with_pool(program, vec![scale; 4], Box::new(()), ThreadPool::new(2))
                .unwrap();
        let (m, n) = (9, 16);
        let x = random(m * n);
        let out = exe.run(&inputs(m, &x)).unwrap();
        let k32 = k as f32 as f64;
        close(
            &out[0].1.to_values(),
            &x.iter().map(|v| v * k32.powi(4)).collect::<Vec<_>>(),
        );
        let stats = exe.stats();
        assert_eq!(stats.unshared_arena_bytes, 4 * 576);
        assert_eq!(stats.peak_arena_bytes, 2 * 576);
    }

    #[test]
    fn bad_weights_are_errors_naming_the_weight() {
        let (mut exe, _) = executable(1);
        assert_eq!(
            exe.run(&inputs(1, &random(4))).unwrap_err(),
            RunError::WeightsNotBound
        );
        assert_eq!(
            exe.bind_weights(&HashMap::new()).unwrap_err(),
            RunError::MissingWeight { name: "w".into() }
        );
        let wrong_type = HashMap::from([(
            "w".to_string(),
            HostTensor::from_values(DType::F64, &[4], &random(4)),
        )]);
        let err = exe.bind_weights(&wrong_type).unwrap_err();
        assert_eq!(
            err.to_string(),
            "weight `w`: expected element type f32, found f64"
        );
        let wrong_rank = HashMap::from([("w".to_string(), f32_tensor(&[2, 2], &random(4)))]);
        let err = exe.bind_weights(&wrong_rank).unwrap_err();
        assert_eq!(
            err.to_string(),
            "weight `w`: expected shape [n], found [2, 2]"
        );
        let mut short = weights(&random(4));
        short.get_mut("w").unwrap().data.pop();
        assert!(matches!(
            exe.bind_weights(&short).unwrap_err(),
            RunError::TensorSize { name, .. } if name == "w"
        ));
        // A failed bind leaves nothing bound.
        assert_eq!(
            exe.run(&inputs(1, &random(4))).unwrap_err(),
            RunError::WeightsNotBound
        );
        // Tensors the program does not use are ignored.
        let mut extra = weights(&random(4));
        extra.insert("unused".into(), f32_tensor(&[1], &[1.0]));
        exe.bind_weights(&extra).unwrap();
        assert!(exe.run(&inputs(1, &random(4))).is_ok());
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let (mut exe, _) = executable(1);
        exe.bind_weights(&weights(&random(4))).unwrap();
        assert_eq!(
            exe.run(&HashMap::new()).unwrap_err(),
            RunError::MissingInput { name: "x".into() }
        );
        let mut extra = inputs(2, &random(8));
        extra.insert("z".into(), f32_tensor(&[1], &[1.0]));
        assert_eq!(
            exe.run(&extra).unwrap_err().to_string(),
            "unknown input `z`: the program's inputs are x"
        );
        let f64_input = HashMap::from([(
            "x".to_string(),
            HostTensor::from_values(DType::F64, &[2, 4], &random(8)),
        )]);
        assert_eq!(
            exe.run(&f64_input).unwrap_err(),
            RunError::InputDType {
                name: "x".into(),
                expected: DType::F32,
                found: DType::F64
            }
        );
        let rank1 = HashMap::from([("x".to_string(), f32_tensor(&[8], &random(8)))]);
        assert_eq!(
            exe.run(&rank1).unwrap_err().to_string(),
            "input `x`: expected rank 2 (shape [m, n]), found rank 1"
        );
        // n is 4 from the weight: an input with 5 columns conflicts.
        let err = exe.run(&inputs(2, &random(10))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "dim `n` is 4 from weight `w` axis 0 but 5 from input `x` axis 1"
        );
        let mut short = inputs(2, &random(8));
        short.get_mut("x").unwrap().data.truncate(5);
        assert_eq!(
            exe.run(&short).unwrap_err().to_string(),
            "tensor `x`: shape [2, 4] of f32 needs 32 bytes, found 5"
        );
        let huge = HashMap::from([(
            "x".to_string(),
            HostTensor {
                dtype: DType::F32,
                shape: vec![usize::MAX / 2, 4],
                data: vec![],
            },
        )]);
        assert!(matches!(
            exe.run(&huge).unwrap_err(),
            RunError::SizeOverflow { .. }
        ));
    }

    #[test]
    fn static_dims_and_conflicts_between_inputs_are_checked() {
        // a: [m, 3], b: [m] -> out = a + ... (only shapes matter here).
        let bufs = vec![buf("a", &["m", "3"]), buf("b", &["m"]), buf("r", &["m"])];
        let program = Program {
            name: "two".into(),
            buffers: bufs.clone(),
            inputs: vec![0, 1],
            weights: vec![],
            constants: vec![],
            outputs: vec![("r".into(), 2), ("b".into(), 1)],
            dims: vec!["m".into()],
            launches: vec![launch(&bufs, &[0], 2, &["m", "n3"], false)],
        };
        let exe =
            CpuExecutable::with_pool(program, vec![row_sum], Box::new(()), ThreadPool::new(1))
                .unwrap();
        let run = |a: (&[usize], usize), b: usize| {
            let ins = HashMap::from([
                ("a".to_string(), f32_tensor(a.0, &random(a.1))),
                ("b".to_string(), f32_tensor(&[b], &random(b))),
            ]);
            exe.run(&ins)
        };
        assert_eq!(
            run((&[2, 4], 8), 2).unwrap_err(),
            RunError::InputShape {
                name: "a".into(),
                axis: 1,
                expected: 3,
                found: 4
            }
        );
        assert_eq!(
            run((&[2, 3], 6), 3).unwrap_err().to_string(),
            "dim `m` is 2 from input `a` axis 0 but 3 from input `b` axis 0"
        );
        // The kernel asks for a dim nothing binds.
        assert_eq!(
            run((&[2, 3], 6), 2).unwrap_err().to_string(),
            "dim `n3` (needed by kernel `k_r`) is not bound by any input or weight shape"
        );
    }

    #[test]
    fn rank_zero_outputs_are_computed_once() {
        let bufs = vec![buf("x", &["m", "n"]), buf("t", &[])];
        let program = Program {
            name: "total".into(),
            buffers: bufs.clone(),
            inputs: vec![0],
            weights: vec![],
            constants: vec![],
            outputs: vec![("t".into(), 1)],
            dims: vec!["m".into(), "n".into()],
            launches: vec![launch(&bufs, &[0], 1, &["m", "n"], false)],
        };
        let exe = CpuExecutable::with_pool(program, vec![total], Box::new(()), ThreadPool::new(4))
            .unwrap();
        let (m, n) = (300, 200); // cost far above the parallel bar
        let a = random(m * n);
        let out = exe.run(&inputs(m, &a)).unwrap();
        assert_eq!(out[0].1.shape, Vec::<usize>::new());
        // An f32 sum of 60000 terms that cancel: its error scales with the
        // sum of the magnitudes, not with the (small) result.
        let (got, want) = (out[0].1.to_values()[0], a.iter().sum::<f64>());
        let magnitude: f64 = a.iter().map(|x| x.abs()).sum();
        assert!(
            (got - want).abs() <= 1e-5 * magnitude,
            "{got} vs {want} (sum of magnitudes {magnitude})"
        );
        assert_eq!(TOTAL_CALLS.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn sub_byte_outputs_are_split_at_whole_bytes() {
        let mut bufs = vec![buf("x", &["m", "n"]), buf("q", &["m", "n"])];
        bufs[0].dtype = DType::U8;
        bufs[1].dtype = DType::U4;
        let program = Program {
            name: "u4".into(),
            buffers: bufs.clone(),
            inputs: vec![0],
            weights: vec![],
            constants: vec![],
            outputs: vec![("q".into(), 1)],
            dims: vec!["m".into(), "n".into()],
            launches: vec![launch(&bufs, &[0], 1, &["m", "n"], false)],
        };
        let exe = CpuExecutable::with_pool(program, vec![to_u4], Box::new(()), ThreadPool::new(4))
            .unwrap();
        let mut rng = rand::rng();
        // Rows of 3 nibbles: 1.5 bytes, so chunks may start at even rows only.
        for (m, n) in [(9001usize, 3usize), (4001, 5), (20001, 1)] {
            let codes: Vec<f64> = (0..m * n)
                .map(|_| rng.random_range(0..256) as f64)
                .collect();
            let x = HostTensor::from_values(DType::U8, &[m, n], &codes);
            let out = exe.run(&HashMap::from([("x".to_string(), x)])).unwrap();
            let expected: Vec<f64> = codes.iter().map(|&c| (c as u32 & 15) as f64).collect();
            assert_eq!(out[0].1.to_values(), expected, "m {m}, n {n}");
        }
        assert_eq!(SPLIT_BYTES.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn executables_can_be_shared_between_threads() {
        fn check<T: Send + Sync>() {}
        check::<CpuExecutable>();
        let (mut exe, c) = executable(2);
        let w = random(6);
        exe.bind_weights(&weights(&w)).unwrap();
        std::thread::scope(|s| {
            for m in [2usize, 3, 4, 5] {
                let exe = &exe;
                let w = &w;
                s.spawn(move || {
                    for _ in 0..20 {
                        let x = random(m * 6);
                        let out = exe.run(&inputs(m, &x)).unwrap();
                        let y: Vec<f64> = (0..m)
                            .map(|i| {
                                (0..6)
                                    .map(|j| (x[i * 6 + j] + 2.0 * w[j]) * (c as f32 as f64))
                                    .sum()
                            })
                            .collect();
                        close(&out[0].1.to_values(), &y);
                    }
                });
            }
        });
    }

    #[test]
    fn malformed_programs_are_rejected() {
        let (program, kernels) = model(1.0);
        let err = CpuExecutable::new(program.clone(), kernels[..3].to_vec(), Box::new(()));
        assert_eq!(
            err.unwrap_err().to_string(),
            "invalid program: 4 launches but 3 compiled kernels"
        );
        let mut p = program.clone();
        p.launches[1].args[0] = 99;
        assert!(CpuExecutable::new(p, kernels.clone(), Box::new(())).is_err());
        let mut p = program.clone();
        p.launches[0].args = vec![0]; // bind time reading an input
        p.launches[0].kernel.inputs[0] = p.buffers[0].clone();
        let err = CpuExecutable::new(p, kernels.clone(), Box::new(())).unwrap_err();
        assert!(err.to_string().contains("known only at run time"), "{err}");
        let mut p = program.clone();
        p.launches.swap(2, 3);
        let err = CpuExecutable::new(p, kernels.clone(), Box::new(())).unwrap_err();
        assert!(
            err.to_string().contains("before anything writes it"),
            "{err}"
        );
        let mut p = program.clone();
        p.buffers[4].dtype = DType::BF16;
        let err = CpuExecutable::new(p, kernels.clone(), Box::new(())).unwrap_err();
        assert!(
            err.to_string().contains("but the kernel declares f32"),
            "{err}"
        );
        let mut p = program;
        p.constants[0].1.push(2.0);
        let err = CpuExecutable::new(p, kernels, Box::new(())).unwrap_err();
        assert!(err.to_string().contains("has 2 values"), "{err}");
    }
}
