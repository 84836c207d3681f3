//! The simulated GPU: runs a [`Program`]'s PTX kernels on the PTX
//! interpreter ([`kiln_ptx_sim`]) instead of a device, so that the GPU path
//! (kernels, launch configuration, bind-time launches) is checked against
//! the reference evaluator on machines without a GPU.
//!
//! It runs exactly what [`super::CudaExecutable`] would launch, with the
//! same checks and messages for programs, weights and inputs, but each
//! buffer in its own allocation (a kernel that reads or writes past its
//! buffer is an error, where the GPU's arena would let it touch a
//! neighbour), outputs filled with `0xff` bytes before the launches (an
//! element no thread writes reads back as NaN, or -1), and row grids
//! limited to [`SIM_RESIDENT`] blocks so that every row kernel walks
//! several rows. It is slow: thousands of interpreted instructions per
//! output element; tests keep their sizes small.

use std::collections::HashMap;
use std::sync::Mutex;

use kiln_dialect::kernel::Program;
use kiln_ptx_sim::{Device, Launch, Module};

use super::error::CudaError;
use super::executor::CudaExecutable;
use super::kernel::{Grid, PtxKernel, launch_config};
use crate::HostTensor;
use crate::binding::{
    Bindings, byte_size, check_inputs, check_weights, kernel_dims, kernel_output_shape, resolve,
    tensor_map_args,
};
use crate::cpu::RunError;
use crate::cpu::program_check::{Origin, check_program};

/// Blocks a row grid is given (the GPU gives as many as stay resident).
pub const SIM_RESIDENT: u32 = 3;

/// The most instructions one launch may run before it counts as hung.
pub const SIM_LIMIT: u64 = 4_000_000_000;

/// What the launches of the last run did, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub launches: usize,
    pub instructions: u64,
    pub global_loaded: u64,
    pub global_stored: u64,
}

/// A program whose kernels run on the PTX interpreter.
pub struct SimExecutable {
    program: Program,
    kernels: Vec<PtxKernel>,
    modules: Vec<Module>,
    origins: Vec<Origin>,
    /// Weights, constants and bind-time results.
    held: Vec<Option<HostTensor>>,
    weight_dims: Bindings,
    bound: bool,
    stats: Mutex<SimStats>,
    /// At most this many blocks for tile grids ([`SimExecutable::cap_tile_blocks`]).
    tile_blocks: Option<u32>,
}

/// A [`CudaError::Simulated`], with the text of the PTX line it names.
fn simulated(kernel: &str, k: &PtxKernel, source: kiln_ptx_sim::SimError) -> CudaError {
    let line = match &source {
        kiln_ptx_sim::SimError::Parse { line, .. }
        | kiln_ptx_sim::SimError::Unsupported { line, .. } => Some(*line),
        kiln_ptx_sim::SimError::Fault { line, .. } => Some(*line as usize),
        _ => None,
    };
    let at = line
        .and_then(|l| k.ptx.lines().nth(l.wrapping_sub(1)))
        .map_or(String::new(), |t| format!("\n  at: {}", t.trim()));
    CudaError::Simulated {
        kernel: kernel.to_string(),
        entry: k.entry.clone(),
        source: Box::new(source),
        at,
    }
}

fn invalid(message: String) -> CudaError {
    CudaError::Run(RunError::InvalidProgram(message))
}

fn overflow(name: &str) -> CudaError {
    CudaError::Run(RunError::SizeOverflow {
        name: name.to_string(),
    })
}

impl SimExecutable {
    /// Checks the program and kernels as [`CudaExecutable::new`] does and
    /// reads every kernel's PTX; a program without weights is bound at once.
    pub fn new(program: Program, kernels: Vec<PtxKernel>) -> Result<SimExecutable, CudaError> {
        CudaExecutable::check(&program, &kernels)?;
        let origins = check_program(&program, kernels.len())?;
        let mut modules = Vec::with_capacity(kernels.len());
        for (k, launch) in kernels.iter().zip(&program.launches) {
            let module = Module::parse(&k.ptx)
                .map_err(|source| simulated(&launch.kernel.name, k, source))?;
            modules.push(module);
        }
        let mut held: Vec<Option<HostTensor>> = vec![None; program.buffers.len()];
        for (b, values) in &program.constants {
            let buffer = &program.buffers[*b];
            let shape = resolve(&buffer.shape, &HashMap::new(), &buffer.name)?;
            if shape.iter().product::<usize>() != values.len() {
                return Err(invalid(format!(
                    "constant `{}` of shape {} has {} values",
                    buffer.name,
                    buffer.shape,
                    values.len()
                )));
            }
            held[*b] = Some(HostTensor::from_values(buffer.dtype, &shape, values));
        }
        let mut exe = SimExecutable {
            program,
            kernels,
            modules,
            origins,
            held,
            weight_dims: HashMap::new(),
            bound: false,
            stats: Mutex::new(SimStats::default()),
            tile_blocks: None,
        };
        if exe.program.weights.is_empty() {
            exe.bind_weights(&HashMap::new())?;
        }
        Ok(exe)
    }

    /// Launches tile grids (`Grid::Tiles`, `Grid::SplitTiles`) with at
    /// most `blocks` blocks, so that each block walks several tiles (the
    /// tile kernels loop over their tiles a grid apart; on the GPU they
    /// get one block per tile up to a million tiles): what a kernel keeps
    /// from one tile to the next is then checked.
    pub fn cap_tile_blocks(&mut self, blocks: u32) {
        self.tile_blocks = Some(blocks.max(1));
    }

    /// The program this executable runs.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// What the launches of the last run did.
    pub fn stats(&self) -> SimStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks and keeps the weights, then runs the bind-time launches.
    pub fn bind_weights(&mut self, weights: &HashMap<String, HostTensor>) -> Result<(), CudaError> {
        self.bound = false;
        let dims = check_weights(&self.program, weights)?;
        for &b in &self.program.weights {
            let name = &self.program.buffers[b].name;
            let t = weights
                .get(name)
                .ok_or_else(|| RunError::MissingWeight { name: name.clone() })?;
            self.held[b] = Some(t.clone());
        }
        let mut stats = SimStats::default();
        for i in 0..self.program.launches.len() {
            let launch = &self.program.launches[i];
            if !launch.bind_time {
                continue;
            }
            let mut device = Device::new();
            let mut pointers = Vec::new();
            for &a in &launch.args {
                let t = self.held[a].as_ref().ok_or_else(|| {
                    invalid(format!(
                        "bind-time launch {i} reads `{}`, which is not bound",
                        self.program.buffers[a].name
                    ))
                })?;
                pointers.push(device.alloc(t.data.clone()));
            }
            let out = &self.program.buffers[launch.out];
            let shape = resolve(&out.shape, &dims, &out.name)?;
            let bytes = byte_size(out.dtype, &shape).ok_or_else(|| overflow(&out.name))?;
            let ptr = device.alloc(vec![0xff; bytes]);
            pointers.push(ptr);
            self.launch(i, &mut device, pointers, &dims, &shape, &mut stats)?;
            self.held[launch.out] = Some(HostTensor {
                dtype: out.dtype,
                shape,
                data: device.bytes(ptr).to_vec(),
            });
        }
        self.weight_dims = dims;
        self.bound = true;
        Ok(())
    }

    /// Runs launch `i` with these pointers (arguments, then the output).
    fn launch(
        &self,
        i: usize,
        device: &mut Device,
        pointers: Vec<u64>,
        bindings: &Bindings,
        shape: &[usize],
        stats: &mut SimStats,
    ) -> Result<(), CudaError> {
        let kernel = &self.kernels[i];
        if shape.iter().product::<usize>() == 0 {
            return Ok(());
        }
        let dims = kernel_dims(&self.program, i, bindings)?;
        let units = kernel.units(&kernel_output_shape(&self.program, i, bindings)?);
        let Some((blocks, block)) = launch_config(kernel, units, SIM_RESIDENT) else {
            return Ok(());
        };
        let blocks = match (kernel.grid, self.tile_blocks) {
            (
                Grid::Tiles { .. } | Grid::SplitTiles { .. } | Grid::BalancedTiles { .. },
                Some(cap),
            ) => blocks.min(cap),
            _ => blocks,
        };
        let out_ptr = pointers.last().copied();
        let mut args = pointers;
        args.extend(dims.iter().map(|&d| d as u64));
        args.push(units);
        // A split grid's scratch memory, zeroed as the executor allocates
        // it. The executor keeps it between launches, so the kernel runs
        // twice on it here: the second launch must write what the first
        // did (a tile's counter left non-zero would not).
        let scratch = kernel.scratch_bytes(units);
        if let Some(bytes) = scratch {
            let bytes = usize::try_from(bytes).map_err(|_| overflow("scratch memory"))?;
            args.push(device.alloc(vec![0; bytes]));
        }
        // The tensor maps, in the interpreter's encoding, 128 bytes apart.
        if !kernel.tensor_maps.is_empty() {
            let mut bytes = Vec::with_capacity(128 * kernel.tensor_maps.len());
            let maps = &kernel.tensor_maps;
            for (spec, base, shape) in tensor_map_args(&self.program, i, maps, &args, bindings)? {
                let (dims, strides) = spec.view(&shape);
                let map = kiln_ptx_sim::tensor_map::TensorMap {
                    base,
                    dims: dims.to_vec(),
                    strides: strides.to_vec(),
                    box_dims: vec![spec.box_inner, spec.box_rows, 1],
                    elem_bytes: spec.elem_bytes,
                    swizzle: 128,
                };
                bytes.extend_from_slice(&map.encode());
            }
            args.push(device.alloc(bytes));
        }
        // The driver refuses a block more shared memory than the
        // multiprocessor gives one (227 KiB on sm_90, 163 KiB on sm_80).
        let most = if kernel.arch.starts_with("sm_8") {
            163 * 1024
        } else {
            227 * 1024
        };
        if kernel.shared_bytes > most {
            return Err(CudaError::InvalidKernel {
                kernel: self.program.launches[i].kernel.name.clone(),
                entry: kernel.entry.clone(),
                message: format!(
                    "asks for {} bytes of shared memory a block; a block of {} may have at most \
                     {most}",
                    kernel.shared_bytes, kernel.arch
                ),
            });
        }
        let launch = Launch {
            grid: blocks,
            block,
            dynamic_shared: kernel.shared_bytes,
        };
        let name = &self.program.launches[i].kernel.name;
        let mut first = None;
        for pass in 0..if scratch.is_some() { 2 } else { 1 } {
            if pass == 1
                && let Some(p) = out_ptr
            {
                // the output as a fresh run finds it
                device.bytes_mut(p).fill(0xff);
            }
            let s = kiln_ptx_sim::run(
                &self.modules[i],
                &kernel.entry,
                launch,
                &args,
                device,
                SIM_LIMIT,
            )
            .map_err(|source| simulated(name, kernel, source))?;
            stats.instructions += s.instructions;
            stats.global_loaded += s.global_loaded;
            stats.global_stored += s.global_stored;
            let written = out_ptr.map(|p| device.bytes(p).to_vec());
            if pass == 0 {
                first = written;
            } else if written != first {
                return Err(invalid(format!(
                    "kernel `{name}` (entry `{}`) wrote a different output when launched \
                     again on the scratch memory it left: it must leave it as it needs it",
                    kernel.entry
                )));
            }
        }
        stats.launches += 1;
        Ok(())
    }

    /// Runs the program on named inputs; every output, in program order.
    pub fn run(
        &self,
        inputs: &HashMap<String, HostTensor>,
    ) -> Result<Vec<(String, HostTensor)>, CudaError> {
        if !self.bound {
            return Err(RunError::WeightsNotBound.into());
        }
        let p = &self.program;
        let bindings = check_inputs(p, &self.weight_dims, inputs)?;
        let mut device = Device::new();
        let mut ptrs: Vec<Option<u64>> = vec![None; p.buffers.len()];
        let mut shapes: Vec<Vec<usize>> = vec![Vec::new(); p.buffers.len()];
        for (b, buffer) in p.buffers.iter().enumerate() {
            match self.origins[b] {
                Origin::Input => {
                    let t = inputs
                        .get(&buffer.name)
                        .ok_or_else(|| RunError::MissingInput {
                            name: buffer.name.clone(),
                        })?;
                    shapes[b] = t.shape.clone();
                    ptrs[b] = Some(device.alloc(t.data.clone()));
                }
                Origin::RunTime => {
                    let shape = resolve(&buffer.shape, &bindings, &buffer.name)?;
                    let bytes =
                        byte_size(buffer.dtype, &shape).ok_or_else(|| overflow(&buffer.name))?;
                    ptrs[b] = Some(device.alloc(vec![0xff; bytes]));
                    shapes[b] = shape;
                }
                Origin::Weight | Origin::Constant | Origin::BindTime => {
                    if let Some(t) = &self.held[b] {
                        shapes[b] = t.shape.clone();
                        ptrs[b] = Some(device.alloc(t.data.clone()));
                    }
                }
                Origin::Unused => {}
            }
        }
        let mut stats = SimStats::default();
        for (i, launch) in p.launches.iter().enumerate() {
            if launch.bind_time {
                continue;
            }
            let pointers = launch
                .args
                .iter()
                .chain(std::iter::once(&launch.out))
                .map(|&b| {
                    ptrs[b].ok_or_else(|| {
                        invalid(format!("buffer `{}` has no storage", p.buffers[b].name))
                    })
                })
                .collect::<Result<Vec<u64>, CudaError>>()?;
            let shape = shapes[launch.out].clone();
            self.launch(i, &mut device, pointers, &bindings, &shape, &mut stats)?;
        }
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        let mut outputs = Vec::with_capacity(p.outputs.len());
        for (name, b) in &p.outputs {
            let buffer = &p.buffers[*b];
            let tensor = match (self.origins[*b], ptrs[*b]) {
                (Origin::Input, _) => inputs[&buffer.name].clone(),
                (_, Some(ptr)) => HostTensor {
                    dtype: buffer.dtype,
                    shape: shapes[*b].clone(),
                    data: device.bytes(ptr).to_vec(),
                },
                (_, None) => return Err(RunError::WeightsNotBound.into()),
            };
            outputs.push((name.clone(), tensor));
        }
        Ok(outputs)
    }
}
