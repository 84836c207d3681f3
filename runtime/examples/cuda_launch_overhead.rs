//! The launch overhead of the CUDA executor: a program of 20 chained small
//! kernels (`y = x + 1` on 256 f32 elements each, hand-written PTX), timed
//! as a CUDA graph replay and as plain stream launches.
//!
//! ```text
//! cargo run --release -p kiln-runtime --example cuda_launch_overhead [-- REPEATS]
//! ```
//!
//! Each figure is a median over REPEATS (default 2000) host-timed repeats
//! that end with a stream synchronize: once with one launch sequence per
//! repeat (latency, the synchronize included), once with 100 sequences
//! back to back per repeat (throughput). Exits 1 where there is no driver.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use kiln_dialect::kernel::{Body, Buffer, Expr, Kernel, Launch, Program, Ty};
use kiln_dialect::{DType, Shape};
use kiln_runtime::HostTensor;
use kiln_runtime::cuda::{CudaExecutable, Grid, PtxKernel, driver_present};

const ADD_ONE: &str = include_str!("ptx/add_one_f32.ptx");
const KERNELS: usize = 20;
const ELEMENTS: u64 = 256;
const BATCH: usize = 100;

/// `t0` (the input) -> `t1` -> ... -> `t20` (the output), each `+ 1`.
fn chain() -> (Program, Vec<PtxKernel>) {
    let buffers: Vec<Buffer> = (0..=KERNELS)
        .map(|i| Buffer {
            name: format!("t{i}"),
            dtype: DType::F32,
            shape: Shape::of(&[ELEMENTS]),
        })
        .collect();
    let launches = (1..=KERNELS)
        .map(|i| Launch {
            kernel: Kernel {
                name: format!("add_one_{i}"),
                inputs: vec![buffers[i - 1].clone()],
                output: buffers[i].clone(),
                dims: vec![],
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
    let kernel = PtxKernel {
        entry: "add_one_f32".into(),
        ptx: ADD_ONE.into(),
        arch: "sm_80".into(),
        block: 256,
        grid: Grid::Elements { per_thread: 1 },
        shared_bytes: 0,
        tensor_maps: Vec::new(),
    };
    let program = Program {
        name: "launch_chain".into(),
        buffers,
        inputs: vec![0],
        weights: vec![],
        constants: vec![],
        outputs: vec![("y".into(), KERNELS)],
        dims: vec![],
        launches,
    };
    (program, vec![kernel; KERNELS])
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// Microseconds per kernel of a repeat that ran `sequences` sequences.
fn per_kernel(d: Duration, sequences: usize) -> f64 {
    d.as_secs_f64() * 1e6 / (sequences * KERNELS) as f64
}

fn run(repeats: usize) -> Result<(), Box<dyn std::error::Error>> {
    let (program, kernels) = chain();
    let mut exe = CudaExecutable::new(program, kernels)?;
    let x: Vec<f64> = (0..ELEMENTS).map(|i| i as f64 * 0.25).collect();
    let inputs = HashMap::from([(
        "t0".to_string(),
        HostTensor::from_values(DType::F32, &[ELEMENTS as usize], &x),
    )]);
    let out = exe.run(&inputs)?;
    let expected: Vec<f64> = x.iter().map(|v| v + KERNELS as f64).collect();
    if out[0].1.to_values() != expected {
        return Err("the chain computed wrong values".into());
    }
    println!("{KERNELS} chained kernels of {ELEMENTS} f32 elements; median of {repeats} repeats");
    for graphs in [true, false] {
        exe.set_use_graphs(graphs);
        let latency = median(exe.time_launches(&inputs, repeats, 1)?);
        let batched = median(exe.time_launches(&inputs, repeats.div_ceil(10), BATCH)?);
        println!(
            "{:<15} {:>7.2} us per kernel ({:.1} us per sequence + sync); \
             {:>6.2} us per kernel back to back ({BATCH} sequences per sync)",
            if graphs {
                "graph replay:"
            } else {
                "plain launches:"
            },
            per_kernel(latency, 1),
            latency.as_secs_f64() * 1e6,
            per_kernel(batched, BATCH),
        );
    }
    let stats = exe.stats();
    println!(
        "modules loaded: {}, graph captures: {}, graph launches: {}",
        stats.modules, stats.graph_captures, stats.graph_replays
    );
    Ok(())
}

fn main() -> ExitCode {
    let repeats = match std::env::args().nth(1).map(|a| a.parse::<usize>()) {
        None => 2000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: cuda_launch_overhead [REPEATS (a positive integer)]");
            return ExitCode::from(2);
        }
    };
    if !driver_present() {
        eprintln!(
            "cuda_launch_overhead: no CUDA driver found (libcuda.so): this example needs an \
             NVIDIA GPU and its driver"
        );
        return ExitCode::from(1);
    }
    match run(repeats) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cuda_launch_overhead: {e}");
            ExitCode::from(1)
        }
    }
}
