//! The CUDA executor: runs a [`Program`] whose kernels were compiled to PTX
//! ([`PtxKernel`], one per launch) on device 0, on one stream.
//!
//! * [`CudaExecutable::new`] looks for the driver first ([`CudaError::NoDriver`]
//!   where there is none), checks the program as the CPU executor does and
//!   every kernel against the contract of [`super::kernel`], loads each
//!   distinct PTX module once, and uploads the constants.
//! * [`CudaExecutable::bind_weights`] checks the weights (same checks and
//!   messages as the CPU executor), uploads them once, and runs the
//!   bind-time launches on the GPU; their results stay on the device.
//! * [`CudaExecutable::run`] checks the inputs and binds the dims. Each
//!   distinct binding is a *bucket*: a device arena for the intermediates
//!   (planned by [`crate::cpu::arena`] with liveness reuse), a device buffer
//!   per model input, and the launch arguments, all made the first time the
//!   binding is seen. The inputs are copied into the bucket's buffers, the
//!   launches run in order on the stream (the first run of a bucket
//!   captures them into a CUDA graph, later runs replay it), and the
//!   outputs are copied back.
//!
//! Nothing here panics on bad input or a failing driver call: every failure
//! is a [`CudaError`] naming the launch, kernel or buffer.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaFunction, CudaGraph, LaunchConfig, PushKernelArg};
use kiln_dialect::DType;
use kiln_dialect::kernel::Program;

use super::driver::{self, Device};
use super::error::CudaError;
use super::kernel::{Cubins, Grid, PtxKernel, launch_config};
use super::memory::{DeviceBuffer, device_aligned};
use super::modules;
use crate::HostTensor;
use crate::binding::{
    Bindings, DimValues, byte_size, check_inputs, check_weights, dim_values, kernel_dims,
    kernel_output_shape, resolve, tensor_map_args,
};
use crate::cpu::RunError;
use crate::cpu::arena;
use crate::cpu::program_check::{Origin, check_program};

/// Figures of the executable and its last run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CudaStats {
    /// Device arena bytes of the last run's bucket (0 before the first).
    pub peak_arena_bytes: usize,
    /// What that arena would need without reuse.
    pub unshared_arena_bytes: usize,
    /// Run-time launches per run, as the program lists them.
    pub launches: usize,
    /// Launches run once when weights are bound.
    pub bind_time_launches: usize,
    /// Kernels the last run launched (launches with an empty output are
    /// skipped).
    pub kernels_launched: usize,
    /// PTX modules loaded (one per distinct PTX text).
    pub modules: usize,
    /// Of those, modules loaded from cubins (no PTX compiled by the driver).
    pub cubin_modules: usize,
    /// Shape buckets made so far (one per distinct binding of the dims).
    pub buckets: usize,
    /// CUDA graphs captured so far (one per bucket run with graphs on).
    pub graph_captures: usize,
    /// Graph launches so far, the one right after each capture included.
    pub graph_replays: usize,
}

/// A tensor the executable holds on the device: a weight, a constant or a
/// bind-time result.
struct Held {
    dtype: DType,
    shape: Vec<usize>,
    buffer: DeviceBuffer,
}

/// One launch at concrete dims: everything `cuLaunchKernel` receives.
struct Step {
    launch: usize,
    /// Device addresses of the inputs, then the output.
    pointers: Vec<u64>,
    dims: Vec<i64>,
    units: i64,
    /// The address of a split grid's scratch memory (`Grid::SplitTiles`).
    scratch: Option<u64>,
    /// The address of the launch's tensor maps (`PtxKernel::tensor_maps`).
    tensor_maps: Option<u64>,
    config: LaunchConfig,
}

/// A captured launch sequence.
struct Graph(CudaGraph);

// SAFETY: a CUDA graph may be used from any thread as long as no two
// threads use it at once; `Graph` lives inside `CudaExecutable::state`,
// whose mutex serializes every use (launch and drop included).
unsafe impl Send for Graph {}

/// Everything runs at one binding of the dims need, made once.
struct Bucket {
    /// Shapes of the inputs and of the buffers run-time launches write.
    shapes: Vec<Option<Vec<usize>>>,
    offsets: Vec<Option<usize>>,
    peak_bytes: usize,
    unshared_bytes: usize,
    arena: DeviceBuffer,
    /// One device buffer per model input: (buffer index, memory).
    inputs: Vec<(usize, DeviceBuffer)>,
    /// The run-time launches that have work, in order.
    steps: Vec<Step>,
    /// The scratch memory of the steps that take it (zeroed once, kept
    /// between runs: kernels leave it as they need it). Only held: the
    /// steps hold its addresses.
    #[allow(dead_code)]
    scratch: Vec<DeviceBuffer>,
    graph: Option<Graph>,
}

/// What runs change: the buckets and the figures.
#[derive(Default)]
struct RunState {
    buckets: HashMap<DimValues, Bucket>,
    stats: CudaStats,
}

/// A program ready to run on the GPU; see the module docs.
pub struct CudaExecutable {
    /// First, so it drops first: graphs go before the modules whose
    /// functions they launch, and buffers before the stream is released.
    state: Mutex<RunState>,
    program: Program,
    kernels: Vec<PtxKernel>,
    functions: Vec<CudaFunction>,
    /// Per launch: blocks of its kernel resident at once on the device.
    resident: Vec<u32>,
    /// Tile grids launch at most the resident blocks, each walking several
    /// tiles (`KILN_TILE_BLOCKS=resident`; measured before it becomes a
    /// kernel's own choice, docs/gpu.md).
    resident_tiles: bool,
    device: Device,
    origins: Vec<Origin>,
    /// Constants, weights and bind-time results, by buffer.
    held: Vec<Option<Held>>,
    /// Dims bound by the weights' shapes, with where each came from.
    weight_dims: Bindings,
    /// The scratch memory of bind-time launches with split grids.
    bind_scratch: Vec<DeviceBuffer>,
    bound: bool,
    use_graphs: bool,
}

impl std::fmt::Debug for CudaExecutable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaExecutable")
            .field("program", &self.program.name)
            .field("launches", &self.program.launches.len())
            .field("bound", &self.bound)
            .field("use_graphs", &self.use_graphs)
            .finish()
    }
}

fn invalid(message: String) -> CudaError {
    CudaError::Run(RunError::InvalidProgram(message))
}

/// The driver's tensor map for `spec` over the argument at `base` of
/// `shape` (`cuTensorMapEncodeTiled`: three dimensions, the 128-byte
/// swizzle, zeros out of bounds).
fn encode_tensor_map(
    spec: &crate::cuda::TensorMapSpec,
    base: u64,
    shape: &[usize],
    what: &str,
) -> Result<[u8; 128], CudaError> {
    use cudarc::driver::sys;
    let (dims, strides) = spec.view(shape);
    let dtype = match spec.elem_bytes {
        1 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
        2 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT16,
        4 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT32,
        e => return Err(invalid(format!("{what}: elements of {e} bytes"))),
    };
    let boxes = [spec.box_inner, spec.box_rows, 1u32];
    let elem_strides = [1u32; 3];
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    // SAFETY: every pointer names a live array of the rank's length (3
    // extents, 2 strides, 3 box extents, 3 element strides) or the map
    // the driver fills; the base is a device address the map only records.
    let r = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            dtype,
            3,
            base as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    r.result().map_err(|e| {
        CudaError::driver(
            format!("encoding {what} (extents {dims:?}, strides {strides:?}, box {boxes:?})"),
            e,
        )
    })?;
    let mut out = [0u8; 128];
    for (chunk, w) in out.chunks_mut(8).zip(map.opaque) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    Ok(out)
}

fn overflow(name: &str) -> CudaError {
    CudaError::Run(RunError::SizeOverflow {
        name: name.to_string(),
    })
}

/// The shape of every constant, checked against its values.
fn constant_shapes(program: &Program) -> Result<Vec<Vec<usize>>, CudaError> {
    let mut shapes = Vec::with_capacity(program.constants.len());
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
        shapes.push(shape);
    }
    Ok(shapes)
}

impl CudaExecutable {
    /// The checks [`CudaExecutable::new`] makes before it touches the
    /// device: the program's structure (as the CPU executor checks it), its
    /// constants, and every kernel against the contract and its launch.
    /// Needs no driver.
    pub fn check(program: &Program, kernels: &[PtxKernel]) -> Result<(), CudaError> {
        check_program(program, kernels.len())?;
        constant_shapes(program)?;
        for (i, (kernel, launch)) in kernels.iter().zip(&program.launches).enumerate() {
            modules::check_kernel(i, kernel, launch)?;
        }
        Ok(())
    }

    /// Builds an executable from a program and one PTX kernel per launch
    /// (in launch order) on device 0.
    ///
    /// Returns [`CudaError::NoDriver`] where the driver library is absent
    /// (before anything else), [`CudaError::NoDevice`] where it has no
    /// device. A program without weights is bound at once (its bind-time
    /// launches run here); others need [`CudaExecutable::bind_weights`]
    /// before [`CudaExecutable::run`].
    pub fn new(program: Program, kernels: Vec<PtxKernel>) -> Result<CudaExecutable, CudaError> {
        CudaExecutable::with_cubins(program, kernels, None)
    }

    /// [`CudaExecutable::new`], loading each kernel from its cubin where
    /// the device runs `cubins`' architecture.
    pub fn with_cubins(
        program: Program,
        kernels: Vec<PtxKernel>,
        cubins: Option<&Cubins>,
    ) -> Result<CudaExecutable, CudaError> {
        if !driver::driver_present() {
            return Err(driver::no_driver());
        }
        CudaExecutable::check(&program, &kernels)?;
        let origins = check_program(&program, kernels.len())?;
        let device = driver::open()?;
        let loaded = modules::load(&device.ctx, &kernels, &program.launches, cubins)?;

        let mut held: Vec<Option<Held>> = (0..program.buffers.len()).map(|_| None).collect();
        for ((b, values), shape) in program.constants.iter().zip(constant_shapes(&program)?) {
            let buffer = &program.buffers[*b];
            let tensor = HostTensor::from_values(buffer.dtype, &shape, values);
            let what = format!("constant `{}`", buffer.name);
            held[*b] = Some(Held {
                dtype: buffer.dtype,
                shape,
                buffer: upload_new(&device, &tensor.data, &what)?,
            });
        }
        let bind_time_launches = program.launches.iter().filter(|l| l.bind_time).count();
        let stats = CudaStats {
            launches: program.launches.len() - bind_time_launches,
            bind_time_launches,
            modules: loaded.modules,
            cubin_modules: loaded.cubin_modules,
            ..CudaStats::default()
        };
        let mut exe = CudaExecutable {
            state: Mutex::new(RunState {
                buckets: HashMap::new(),
                stats,
            }),
            program,
            kernels,
            functions: loaded.functions,
            resident: loaded.resident,
            resident_tiles: std::env::var("KILN_TILE_BLOCKS").is_ok_and(|v| v == "resident"),
            device,
            origins,
            held,
            weight_dims: HashMap::new(),
            bind_scratch: Vec::new(),
            bound: false,
            use_graphs: true,
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

    /// Whether runs capture and replay CUDA graphs (the default) or launch
    /// every kernel on the stream each time.
    pub fn use_graphs(&self) -> bool {
        self.use_graphs
    }

    /// Turns graph capture and replay on or off; graphs captured earlier
    /// are kept for when it is turned back on.
    pub fn set_use_graphs(&mut self, on: bool) {
        self.use_graphs = on;
    }

    /// Figures of the executable and its last run.
    pub fn stats(&self) -> CudaStats {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stats
    }

    /// Checks every weight against the program (name, element type, shape,
    /// byte count: the CPU executor's checks and messages), uploads them,
    /// binds the dims their shapes name, and runs the bind-time launches on
    /// the GPU. Tensors the program does not use are ignored. Replaces
    /// weights bound earlier (and drops every bucket, whose launches point
    /// at them); after an error no weights are bound.
    pub fn bind_weights(&mut self, weights: &HashMap<String, HostTensor>) -> Result<(), CudaError> {
        self.bound = false;
        {
            let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
            state.buckets.clear();
            state.stats.buckets = 0;
        }
        let dims = check_weights(&self.program, weights)?;
        for &b in &self.program.weights {
            let name = &self.program.buffers[b].name;
            let t = weights
                .get(name)
                .ok_or_else(|| RunError::MissingWeight { name: name.clone() })?;
            let what = format!("weight `{name}`");
            self.held[b] = Some(Held {
                dtype: t.dtype,
                shape: t.shape.clone(),
                buffer: upload_new(&self.device, &t.data, &what)?,
            });
        }
        for i in 0..self.program.launches.len() {
            if self.program.launches[i].bind_time {
                self.run_bind_time(i, &dims)?;
            }
        }
        self.device.stream.synchronize().map_err(|e| {
            CudaError::driver(
                format!(
                    "running the bind-time launches of program `{}`",
                    self.program.name
                ),
                e,
            )
        })?;
        self.weight_dims = dims;
        self.bound = true;
        Ok(())
    }

    /// Runs bind-time launch `i` into a fresh held buffer.
    fn run_bind_time(&mut self, i: usize, dims: &Bindings) -> Result<(), CudaError> {
        let launch = &self.program.launches[i];
        let out = &self.program.buffers[launch.out];
        let shape = resolve(&out.shape, dims, &out.name)?;
        let bytes = byte_size(out.dtype, &shape).ok_or_else(|| overflow(&out.name))?;
        let what = format!("bind-time result `{}`", out.name);
        let buffer = DeviceBuffer::zeroed(&self.device.stream, bytes, &what)?;
        let mut pointers = Vec::with_capacity(launch.args.len() + 1);
        for &a in &launch.args {
            match &self.held[a] {
                Some(h) => pointers.push(h.buffer.ptr_at(0)),
                None => {
                    return Err(invalid(format!(
                        "bind-time launch {i} reads `{}`, which is not bound",
                        self.program.buffers[a].name
                    )));
                }
            }
        }
        pointers.push(buffer.ptr_at(0));
        let mut scratch = Vec::new();
        if let Some(step) = self.step(i, pointers, dims, &shape, &mut scratch)? {
            self.launch(&step)?;
        }
        self.bind_scratch.extend(scratch);
        self.held[launch.out] = Some(Held {
            dtype: out.dtype,
            shape,
            buffer,
        });
        Ok(())
    }

    /// Launch `i` with these pointers at these dims, or `None` when its
    /// output (of `shape`) is empty; a split grid's zeroed scratch memory
    /// is pushed to `scratch`.
    fn step(
        &self,
        i: usize,
        pointers: Vec<u64>,
        bindings: &Bindings,
        shape: &[usize],
        scratch: &mut Vec<DeviceBuffer>,
    ) -> Result<Option<Step>, CudaError> {
        let kernel = &self.kernels[i];
        let out = &self.program.buffers[self.program.launches[i].out];
        let dims = kernel_dims(&self.program, i, bindings)?;
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| overflow(&out.name))?;
        if numel == 0 {
            return Ok(None);
        }
        let units = kernel.units(&kernel_output_shape(&self.program, i, bindings)?);
        let Some((blocks, block)) = launch_config(kernel, units, self.resident[i]) else {
            return Ok(None);
        };
        let blocks = match kernel.grid {
            Grid::Tiles { .. } if self.resident_tiles && self.resident[i] > 0 => {
                blocks.min(self.resident[i])
            }
            _ => blocks,
        };
        let tensor_maps = if kernel.tensor_maps.is_empty() {
            None
        } else {
            let what = format!("the tensor maps of launch {i} (`{}`)", out.name);
            let mut bytes = Vec::with_capacity(128 * kernel.tensor_maps.len());
            let maps = &kernel.tensor_maps;
            for (spec, base, shape) in tensor_map_args(&self.program, i, maps, &pointers, bindings)?
            {
                bytes.extend_from_slice(&encode_tensor_map(&spec, base, &shape, &what)?);
            }
            let mut buffer = DeviceBuffer::zeroed(&self.device.stream, bytes.len(), &what)?;
            buffer.upload(&self.device.stream, 0, &bytes, &what)?;
            let ptr = buffer.ptr_at(0);
            scratch.push(buffer);
            Some(ptr)
        };
        let scratch = match kernel.scratch_bytes(units) {
            Some(bytes) => {
                let bytes = usize::try_from(bytes).map_err(|_| overflow(&out.name))?;
                let what = format!("the scratch memory of launch {i} (`{}`)", out.name);
                let buffer = DeviceBuffer::zeroed(&self.device.stream, bytes, &what)?;
                let ptr = buffer.ptr_at(0);
                scratch.push(buffer);
                Some(ptr)
            }
            None => None,
        };
        Ok(Some(Step {
            launch: i,
            pointers,
            dims,
            units: i64::try_from(units).map_err(|_| overflow(&out.name))?,
            scratch,
            tensor_maps,
            config: LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (block, 1, 1),
                shared_mem_bytes: kernel.shared_bytes,
            },
        }))
    }

    /// Puts one launch on the stream.
    fn launch(&self, step: &Step) -> Result<(), CudaError> {
        let mut builder = self
            .device
            .stream
            .launch_builder(&self.functions[step.launch]);
        for p in &step.pointers {
            builder.arg(p);
        }
        for d in &step.dims {
            builder.arg(d);
        }
        builder.arg(&step.units);
        if let Some(scratch) = &step.scratch {
            builder.arg(scratch);
        }
        if let Some(maps) = &step.tensor_maps {
            builder.arg(maps);
        }
        // SAFETY: the parameters follow the kernel contract (input pointers,
        // output pointer, dims, units, scratch; the entry's parameter count was
        // checked against it); every pointer is a live device buffer of the
        // size the program declares at these dims (held tensors, the
        // bucket's input buffers, or arena ranges no live buffer shares),
        // and all of them outlive the stream's use of them: buckets and held
        // tensors are dropped only after the stream has finished.
        unsafe { builder.launch(step.config) }
            .map(|_| ())
            .map_err(|source| CudaError::Launch {
                launch: step.launch,
                kernel: self.program.launches[step.launch].kernel.name.clone(),
                entry: self.kernels[step.launch].entry.clone(),
                source,
            })
    }

    /// Captures the steps into a graph (nothing runs during capture).
    fn capture(&self, steps: &[Step]) -> Result<Graph, CudaError> {
        let stream = &self.device.stream;
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| CudaError::driver("starting a stream capture", e))?;
        let launched = steps.iter().try_for_each(|s| self.launch(s));
        // The capture is ended whatever happened, so the stream is usable.
        let ended = stream.end_capture(CUgraphInstantiate_flags(0));
        launched?;
        match ended {
            Ok(Some(graph)) => Ok(Graph(graph)),
            Ok(None) => Err(CudaError::GraphCapture {
                program: self.program.name.clone(),
                message: "the capture ended without a graph".into(),
            }),
            Err(e) => Err(CudaError::driver(
                format!(
                    "ending the capture of program `{}` and instantiating its graph",
                    self.program.name
                ),
                e,
            )),
        }
    }

    /// The bucket of one binding: shapes, arena, input buffers, launches.
    fn make_bucket(&self, bindings: &Bindings) -> Result<Bucket, CudaError> {
        let p = &self.program;
        let stream = &self.device.stream;
        let mut shapes: Vec<Option<Vec<usize>>> = vec![None; p.buffers.len()];
        let mut sizes = vec![0usize; p.buffers.len()];
        let mut planned = vec![0usize; p.buffers.len()];
        for (b, buffer) in p.buffers.iter().enumerate() {
            if matches!(self.origins[b], Origin::RunTime | Origin::Input) {
                let shape = resolve(&buffer.shape, bindings, &buffer.name)?;
                sizes[b] = byte_size(buffer.dtype, &shape).ok_or_else(|| overflow(&buffer.name))?;
                // Sizes rounded to the device alignment keep every offset
                // the planner chooses a multiple of it.
                planned[b] = device_aligned(sizes[b]).ok_or_else(|| overflow(&buffer.name))?;
                shapes[b] = Some(shape);
            }
        }
        let plan = arena::plan(p, &planned).ok_or_else(|| overflow("the arena"))?;
        let what = format!("the arena of program `{}`", p.name);
        let arena = DeviceBuffer::zeroed(stream, plan.peak_bytes, &what)?;
        let mut inputs = Vec::with_capacity(p.inputs.len());
        for &b in &p.inputs {
            let what = format!("input `{}`", p.buffers[b].name);
            inputs.push((b, DeviceBuffer::zeroed(stream, sizes[b], &what)?));
        }
        let pointer = |b: usize| -> Result<u64, CudaError> {
            match self.origins[b] {
                Origin::Input => inputs
                    .iter()
                    .find(|(i, _)| *i == b)
                    .map(|(_, buffer)| buffer.ptr_at(0))
                    .ok_or_else(|| invalid(format!("input `{}` has no buffer", p.buffers[b].name))),
                Origin::RunTime => Ok(arena.ptr_at(plan.offsets[b].unwrap_or(0))),
                Origin::Weight | Origin::Constant | Origin::BindTime => match &self.held[b] {
                    Some(h) => Ok(h.buffer.ptr_at(0)),
                    None => Err(RunError::WeightsNotBound.into()),
                },
                Origin::Unused => Err(invalid(format!(
                    "buffer `{}` is read but nothing produces it",
                    p.buffers[b].name
                ))),
            }
        };
        let mut steps = Vec::new();
        let mut scratch = Vec::new();
        for (i, launch) in p.launches.iter().enumerate() {
            if launch.bind_time {
                continue;
            }
            let pointers = launch
                .args
                .iter()
                .chain(std::iter::once(&launch.out))
                .map(|&b| pointer(b))
                .collect::<Result<Vec<u64>, CudaError>>()?;
            let shape = shapes[launch.out].clone().unwrap_or_default();
            if let Some(step) = self.step(i, pointers, bindings, &shape, &mut scratch)? {
                steps.push(step);
            }
        }
        Ok(Bucket {
            shapes,
            offsets: plan.offsets,
            peak_bytes: plan.peak_bytes,
            unshared_bytes: plan.unshared_bytes,
            arena,
            inputs,
            steps,
            scratch,
            graph: None,
        })
    }

    /// Runs the model on named inputs; returns every output, in the
    /// program's output order. Runs from several threads are serialized.
    pub fn run(
        &self,
        inputs: &HashMap<String, HostTensor>,
    ) -> Result<Vec<(String, HostTensor)>, CudaError> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let RunState { buckets, stats } = &mut *guard;
        let bucket = self.prepare(buckets, stats, inputs)?;
        self.enqueue(bucket, stats)?;
        self.finish(bucket)?;
        let outputs = self.outputs(bucket, inputs)?;
        stats.peak_arena_bytes = bucket.peak_bytes;
        stats.unshared_arena_bytes = bucket.unshared_bytes;
        stats.kernels_launched = bucket.steps.len();
        Ok(outputs)
    }

    /// Times the run-time launches alone, for benchmarks: takes the inputs
    /// into their bucket once (capturing its graph if graphs are on), then,
    /// `repeats` times, puts the launch sequence on the stream `batch` times
    /// (a graph launch each, or every kernel launch) and waits for the
    /// stream; returns the host time of each repeat.
    pub fn time_launches(
        &self,
        inputs: &HashMap<String, HostTensor>,
        repeats: usize,
        batch: usize,
    ) -> Result<Vec<Duration>, CudaError> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let RunState { buckets, stats } = &mut *guard;
        let bucket = self.prepare(buckets, stats, inputs)?;
        self.enqueue(bucket, stats)?;
        self.finish(bucket)?;
        let mut times = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let start = Instant::now();
            for _ in 0..batch {
                self.enqueue(bucket, stats)?;
            }
            self.finish(bucket)?;
            times.push(start.elapsed());
        }
        stats.kernels_launched = bucket.steps.len();
        Ok(times)
    }

    /// Checks the inputs, finds or makes their bucket, and copies them
    /// into its buffers.
    fn prepare<'a>(
        &self,
        buckets: &'a mut HashMap<DimValues, Bucket>,
        stats: &mut CudaStats,
        inputs: &HashMap<String, HostTensor>,
    ) -> Result<&'a mut Bucket, CudaError> {
        if !self.bound {
            return Err(RunError::WeightsNotBound.into());
        }
        let bindings = check_inputs(&self.program, &self.weight_dims, inputs)?;
        let known = buckets.len();
        let bucket = match buckets.entry(dim_values(&bindings)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let bucket = e.insert(self.make_bucket(&bindings)?);
                stats.buckets = known + 1;
                bucket
            }
        };
        let stream = &self.device.stream;
        for (b, buffer) in &mut bucket.inputs {
            let name = &self.program.buffers[*b].name;
            let t = inputs
                .get(name)
                .ok_or_else(|| RunError::MissingInput { name: name.clone() })?;
            buffer.upload(stream, 0, &t.data, &format!("input `{name}`"))?;
        }
        Ok(bucket)
    }

    /// Puts the bucket's launches on the stream once: its graph (captured
    /// first if it has none) when graphs are on, else every launch.
    fn enqueue(&self, bucket: &mut Bucket, stats: &mut CudaStats) -> Result<(), CudaError> {
        if !self.use_graphs || bucket.steps.is_empty() {
            return bucket.steps.iter().try_for_each(|step| self.launch(step));
        }
        let graph = match &mut bucket.graph {
            Some(graph) => graph,
            None => {
                let graph = self.capture(&bucket.steps)?;
                stats.graph_captures += 1;
                bucket.graph.insert(graph)
            }
        };
        graph.0.launch().map_err(|e| {
            CudaError::driver(
                format!("launching the graph of program `{}`", self.program.name),
                e,
            )
        })?;
        stats.graph_replays += 1;
        Ok(())
    }

    /// Waits for the stream; a kernel that failed on the device shows here.
    fn finish(&self, bucket: &Bucket) -> Result<(), CudaError> {
        self.device.stream.synchronize().map_err(|e| {
            CudaError::driver(
                format!(
                    "running the {} launches of program `{}` (one of them failed on the device)",
                    bucket.steps.len(),
                    self.program.name
                ),
                e,
            )
        })
    }

    /// Copies the outputs back (each buffer once, whatever its names).
    fn outputs(
        &self,
        bucket: &Bucket,
        inputs: &HashMap<String, HostTensor>,
    ) -> Result<Vec<(String, HostTensor)>, CudaError> {
        let p = &self.program;
        let stream = &self.device.stream;
        let mut fetched: HashMap<usize, HostTensor> = HashMap::new();
        let mut outputs = Vec::with_capacity(p.outputs.len());
        for (name, b) in &p.outputs {
            if let Some(t) = fetched.get(b) {
                outputs.push((name.clone(), t.clone()));
                continue;
            }
            let buffer = &p.buffers[*b];
            let what = format!("output `{name}`");
            let tensor = match self.origins[*b] {
                Origin::Input => {
                    inputs
                        .get(&buffer.name)
                        .cloned()
                        .ok_or_else(|| RunError::MissingInput {
                            name: buffer.name.clone(),
                        })?
                }
                Origin::RunTime => {
                    let shape = bucket.shapes[*b].clone().unwrap_or_default();
                    let len = byte_size(buffer.dtype, &shape).ok_or_else(|| overflow(name))?;
                    let offset = bucket.offsets[*b].unwrap_or(0);
                    HostTensor {
                        dtype: buffer.dtype,
                        shape,
                        data: bucket.arena.download(stream, offset, len, &what)?,
                    }
                }
                Origin::Weight | Origin::Constant | Origin::BindTime | Origin::Unused => {
                    match &self.held[*b] {
                        Some(h) => HostTensor {
                            dtype: h.dtype,
                            shape: h.shape.clone(),
                            data: h.buffer.download(stream, 0, h.buffer.len(), &what)?,
                        },
                        None => return Err(RunError::WeightsNotBound.into()),
                    }
                }
            };
            fetched.insert(*b, tensor.clone());
            outputs.push((name.clone(), tensor));
        }
        Ok(outputs)
    }
}

/// A fresh device buffer holding `data`.
fn upload_new(device: &Device, data: &[u8], what: &str) -> Result<DeviceBuffer, CudaError> {
    let mut buffer = DeviceBuffer::zeroed(&device.stream, data.len(), what)?;
    buffer.upload(&device.stream, 0, data, what)?;
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::kernel::Grid;
    use crate::cuda::memory::DEVICE_ALIGN;
    use kiln_dialect::kernel::{Body, Buffer, Expr, Kernel, Launch, Ty};
    use kiln_dialect::{Dim, Shape};

    #[test]
    fn executables_can_be_shared_between_threads() {
        fn check<T: Send + Sync>() {}
        check::<CudaExecutable>();
    }

    fn chain(lengths: &[u64]) -> Program {
        let buffers: Vec<Buffer> = lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| Buffer {
                name: format!("t{i}"),
                dtype: DType::F32,
                shape: Shape(vec![Dim::sym("m"), Dim::Static(n)]),
            })
            .collect();
        let launches = (1..buffers.len())
            .map(|i| Launch {
                kernel: Kernel {
                    name: format!("k{i}"),
                    inputs: vec![buffers[i - 1].clone()],
                    output: buffers[i].clone(),
                    dims: vec!["m".into()],
                    float: Ty::F32,
                    body: Body::Map {
                        expr: Expr::Float(0.0),
                    },
                },
                args: vec![i - 1],
                out: i,
                bind_time: false,
            })
            .collect();
        Program {
            name: "chain".into(),
            buffers,
            inputs: vec![0],
            weights: vec![],
            constants: vec![],
            outputs: vec![("y".into(), lengths.len() - 1)],
            dims: vec!["m".into()],
            launches,
        }
    }

    fn ptx_kernel(entry: &str, params: usize) -> PtxKernel {
        let list: Vec<String> = (0..params).map(|i| format!(".param .u64 p{i}")).collect();
        PtxKernel {
            entry: entry.into(),
            ptx: format!(
                ".version 8.0\n.target sm_90a\n.address_size 64\n.visible .entry {entry}({})\n{{\nret;\n}}\n",
                list.join(", ")
            ),
            arch: "sm_90a".into(),
            block: 256,
            grid: Grid::Elements { per_thread: 1 },
            shared_bytes: 0,
            tensor_maps: Vec::new(),
        }
    }

    #[test]
    fn programs_and_kernels_are_checked_without_a_device() {
        let p = chain(&[3, 5, 7]);
        let good = vec![ptx_kernel("a", 4), ptx_kernel("b", 4)];
        CudaExecutable::check(&p, &good).unwrap();
        let err = CudaExecutable::check(&p, &good[..1]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid program: 2 launches but 1 compiled kernels"
        );
        let bad = vec![ptx_kernel("a", 4), ptx_kernel("b", 3)];
        let err = CudaExecutable::check(&p, &bad).unwrap_err();
        assert!(
            matches!(&err, CudaError::InvalidKernel { kernel, entry, .. } if kernel == "k2" && entry == "b"),
            "{err}"
        );
    }

    #[test]
    fn device_arena_offsets_keep_the_contract_alignment() {
        // Odd sizes: rounded to the device alignment before planning, every
        // offset stays a multiple of it.
        let p = chain(&[3, 5, 7, 11, 13, 17]);
        let sizes: Vec<usize> = [12usize, 20, 700, 44, 5000, 68]
            .iter()
            .map(|&s| device_aligned(s).unwrap())
            .collect();
        let plan = arena::plan(&p, &sizes).unwrap();
        for offset in plan.offsets.iter().flatten() {
            assert_eq!(offset % DEVICE_ALIGN, 0);
        }
        assert_eq!(plan.peak_bytes % DEVICE_ALIGN, 0);
        assert!(plan.peak_bytes < plan.unshared_bytes);
    }
}
