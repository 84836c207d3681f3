//! The roofline cost model: one table of figures per target, and the work
//! of each op (bytes and arithmetic by unit). A kernel's time is its launch
//! cost plus the larger of its memory time (bytes read and written over the
//! bandwidth) and its compute time (each unit's work over its peak).

use std::collections::HashMap;

use kiln_dialect::ops::{Op, OpClass};
use kiln_dialect::{DType, Dim, Shape, TensorType};

/// A target's figures.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: &'static str,
    /// Memory bandwidth, bytes per second (bytes read plus bytes written).
    pub bandwidth: f64,
    /// Dense tensor-core (or wide SIMD) throughput for 16-bit floats, FLOP/s.
    pub matmul_f16: f64,
    /// The same for f32 inputs (TF32 tensor cores on GPUs).
    pub matmul_f32: f64,
    /// The same for 8-bit inputs (int8 or fp8), op/s.
    pub matmul_i8: f64,
    /// Plain fused multiply-add throughput (CUDA cores / SIMD), FLOP/s.
    pub fma: f64,
    /// Transcendental throughput (exp, tanh, erf), op/s.
    pub special: f64,
    /// Cost of one kernel launch, seconds.
    pub launch: f64,
    /// The size assumed for a symbolic dim that no binding gives.
    pub default_symbol: u64,
    /// Extra traffic, as a fraction of its bytes, when a contraction reads a
    /// weight in plain row-major order instead of its packed fragment order.
    pub unpacked_weight: f64,
    /// Extra traffic, as a fraction of its bytes, when a convolution reads
    /// activations in NCHW instead of channels-last.
    pub nchw_conv: f64,
    /// Whether the target's backend has a tiled kernel for a fused
    /// inverted bottleneck (`Kind::Block`; the PTX backend's `block.rs`:
    /// bf16/f16, a depthwise stage of stride 1 with "same" padding, which
    /// extraction checks). Without one, a block kernel would recompute the
    /// expansion for every output element, so extraction does not offer it.
    pub conv_block: bool,
    /// When the backend's contraction kernels read a bind-time `b` operand
    /// packed in column panels of this width (`lower::pack_contraction_weights`).
    pub weight_panel: Option<usize>,
    /// Whether contractions of 8-bit elements (int8, fp8) read their `b`
    /// weight `k`-major (`[n, k]`), transposed at bind time when stored
    /// `[k, n]` (`lower::transpose_8bit_weights`): the GPU's 8-bit tensor
    /// cores.
    pub k_major_8bit: bool,
    /// Whether contractions that dequantize 4-bit weights read them in the
    /// tensor-core fragment order of the GPU's dequantizing kernel,
    /// reordered at bind time (`lower::order_int4_fragments`).
    pub int4_fragments: bool,
    /// Whether the backend runs convolutions as direct loops over the
    /// output, so that an elementwise prologue fused into the input is
    /// recomputed for every window tap that reads it (kh * kw / strides
    /// times); tiled backends stage input tiles once.
    pub direct_conv: bool,
    /// The weight types whose convolutions other than pointwise and
    /// depthwise ones are lowered as implicit GEMMs (`Body::Contract` over
    /// an im2col gather, `lower::igemm`), which the backend tiles; others
    /// as map kernels with reductions. The CPU tiles f32; the GPU targets
    /// take bf16/f16 (input and weight alike) on tensor cores.
    pub implicit_gemm_conv: &'static [DType],
    /// Whether a matmul may take a row norm (layer or RMS norm over its
    /// first operand's last axis) as its prologue. The CPU backend hoists
    /// the norm's row statistics out of its tiled loops; the GPU tensor-core
    /// kernels read plain operand tiles, so on GPU targets the norm runs as
    /// a row kernel of its own and the matmul on tensor cores.
    pub norm_prologue: bool,
    /// Whether an attention kernel may compute its operands (a rotary
    /// embedding, a transpose) as it reads them. The GPU attention kernel
    /// copies plain rows of q, k and v to shared memory, so on GPU targets
    /// computed operands are written by a kernel of their own.
    pub attention_prologue: bool,
    /// Where `attention_prologue` is off: whether the attention kernel
    /// still computes its queries (a rotary embedding, once per block) and
    /// the rows of a key or value concatenation past its first part (a KV
    /// cache's new entries: `concat(cache, new)` along the keys, the cache
    /// copied as it is), so that neither is written by a kernel of its own.
    pub attention_rows: bool,
    /// Whether an 8-bit or narrower `quantize` (W8A8's activations) may be
    /// fused into the kernel that reads its codes. The GPU's byte
    /// tensor-core contractions copy plain `i8` / fp8 rows, so on GPU
    /// targets the codes are written by a kernel of their own (one byte an
    /// element) and the contraction reads them.
    pub quantize_prologue: bool,
    /// Whether a contraction may take an epilogue that moves its elements
    /// (a transpose or reshape of its output, a rotary embedding that
    /// reads another column). The GPU's tensor-core kernels store tiles of
    /// the output's last two axes, and a contraction with such an
    /// epilogue would lower to a map with a sum in every element, so on
    /// GPU targets the contraction writes its plain result and the
    /// movement is fused into its reader.
    pub view_epilogue: bool,
    /// The code types whose dequantization a contraction may evaluate in
    /// its main loop (`None`: any). The GPU targets have main loops for
    /// 4-bit codes only (the fragment-order int4 kernel); a weight of
    /// other codes (int8, int3/int6, fp8, MXFP4/NVFP4 weight-only) is
    /// dequantized once when the weights are bound and the contraction
    /// runs on the 16-bit tensor cores, rather than on the generic path
    /// (one thread per output element).
    pub dequantize_prologue: Option<&'static [DType]>,
}

/// The H100 (SXM, 80 GB HBM3): 2.91 TB/s measured copy bandwidth, 770
/// TFLOP/s bf16 measured (cuBLAS), about 1000 TOPS fp8/int8 dense.
pub static SM90: Target = Target {
    name: "sm_90",
    bandwidth: 2.9e12,
    matmul_f16: 750e12,
    matmul_f32: 370e12,
    matmul_i8: 900e12,
    fma: 60e12,
    special: 4e12,
    launch: 2.5e-6,
    default_symbol: 512,
    unpacked_weight: 0.25,
    nchw_conv: 0.5,
    conv_block: true,
    weight_panel: None,
    k_major_8bit: true,
    int4_fragments: true,
    direct_conv: false,
    implicit_gemm_conv: &[DType::BF16, DType::F16],
    norm_prologue: false,
    attention_prologue: false,
    attention_rows: true,
    quantize_prologue: false,
    view_epilogue: false,
    dequantize_prologue: Some(&[DType::I4, DType::U4]),
};

/// An A100-class GPU (sm_80): mma.sync only.
pub static SM80: Target = Target {
    name: "sm_80",
    bandwidth: 1.9e12,
    matmul_f16: 280e12,
    matmul_f32: 140e12,
    matmul_i8: 560e12,
    fma: 19e12,
    special: 1.5e12,
    launch: 3e-6,
    default_symbol: 512,
    unpacked_weight: 0.25,
    nchw_conv: 0.5,
    conv_block: true,
    weight_panel: None,
    k_major_8bit: true,
    int4_fragments: true,
    direct_conv: false,
    implicit_gemm_conv: &[DType::BF16, DType::F16],
    norm_prologue: false,
    attention_prologue: false,
    attention_rows: true,
    quantize_prologue: false,
    view_epilogue: false,
    dequantize_prologue: Some(&[DType::I4, DType::U4]),
};

/// The 2-core x86-64 machine of CI and development, 128-bit SIMD code.
pub static CPU: Target = Target {
    name: "cpu",
    bandwidth: 15e9,
    matmul_f16: 40e9,
    matmul_f32: 40e9,
    matmul_i8: 40e9,
    fma: 40e9,
    special: 4e9,
    launch: 5e-6,
    default_symbol: 64,
    unpacked_weight: 0.15,
    nchw_conv: 0.3,
    conv_block: false,
    weight_panel: Some(8),
    k_major_8bit: false,
    int4_fragments: false,
    direct_conv: true,
    implicit_gemm_conv: &[DType::F32],
    norm_prologue: true,
    attention_prologue: true,
    attention_rows: false,
    quantize_prologue: true,
    view_epilogue: true,
    dequantize_prologue: None,
};

/// The target named `name` (`sm_90`, `sm_80`, `cpu`).
pub fn target(name: &str) -> Option<&'static Target> {
    [&SM90, &SM80, &CPU].into_iter().find(|t| t.name == name)
}

/// Concrete sizes for cost estimates: bound symbols, else the target's default.
#[derive(Clone, Debug)]
pub struct Sizes<'a> {
    pub target: &'a Target,
    pub symbols: HashMap<String, u64>,
}

impl Sizes<'_> {
    pub fn dim(&self, d: &Dim) -> f64 {
        match d {
            Dim::Static(n) => *n as f64,
            Dim::Sym(s) => self
                .symbols
                .get(s)
                .copied()
                .unwrap_or(self.target.default_symbol) as f64,
        }
    }

    pub fn numel(&self, s: &Shape) -> f64 {
        s.dims().iter().map(|d| self.dim(d)).product()
    }

    /// Bytes of a tensor in memory.
    pub fn bytes(&self, t: &TensorType) -> f64 {
        self.numel(&t.shape) * t.dtype.bits() as f64 / 8.0
    }
}

fn is_special(op: &Op) -> bool {
    matches!(
        op,
        Op::Exp
            | Op::Log
            | Op::Tanh
            | Op::Sigmoid
            | Op::Gelu { .. }
            | Op::Silu
            | Op::Softplus
            | Op::Erf
            | Op::Sin
            | Op::Cos
            | Op::Pow
            | Op::Rsqrt
            | Op::Sqrt
            | Op::Div
            | Op::Reciprocal
            | Op::Rope { .. }
    )
}

/// The contraction throughput of a target for inputs of `dtype`.
pub fn matmul_rate(t: &Target, dtype: DType) -> f64 {
    matmul_peak(t, dtype)
}

fn matmul_peak(t: &Target, dtype: DType) -> f64 {
    match dtype {
        DType::F16 | DType::BF16 => t.matmul_f16,
        DType::F32 | DType::F64 => t.matmul_f32,
        DType::I8 | DType::U8 | DType::I32 | DType::F8E4M3 | DType::F8E5M2 => t.matmul_i8,
        DType::I64 | DType::Bool => t.fma,
        DType::I4 | DType::U4 | DType::I3 | DType::I6 | DType::F4E2M1 | DType::E8M0 => t.fma,
    }
}

/// Seconds of arithmetic for one op producing `out` from `ins`.
pub fn compute_seconds(sz: &Sizes, op: &Op, ins: &[&TensorType], out: &TensorType) -> f64 {
    let t = sz.target;
    let n_out = sz.numel(&out.shape);
    match op.class() {
        OpClass::Source | OpClass::Movement => 0.0,
        OpClass::Elementwise => {
            if is_special(op) {
                n_out / t.special + n_out / t.fma
            } else {
                n_out / t.fma
            }
        }
        OpClass::Quant => 2.0 * n_out / t.fma,
        OpClass::Reduce | OpClass::ChannelNorm | OpClass::RowNorm => {
            let n_in = ins.first().map(|x| sz.numel(&x.shape)).unwrap_or(n_out);
            let special = if let Op::Softmax { .. } | Op::LogSoftmax { .. } = op {
                n_in / t.special
            } else {
                0.0
            };
            4.0 * n_in / t.fma + special
        }
        OpClass::Matmul => {
            let a = ins[0];
            // 2 * (output elements) * K
            let transpose_a = matches!(
                op,
                Op::Matmul {
                    transpose_a: true,
                    ..
                }
            );
            let k_axis = if transpose_a {
                a.rank().saturating_sub(2)
            } else {
                a.rank().saturating_sub(1)
            };
            let k = a.shape.dims().get(k_axis).map(|d| sz.dim(d)).unwrap_or(1.0);
            2.0 * n_out * k / matmul_peak(t, a.dtype)
        }
        OpClass::Conv => {
            let w = ins[1];
            let per_out: f64 = w.shape.dims()[1..].iter().map(|d| sz.dim(d)).product();
            let depthwise = sz.dim(&w.shape.dims()[1]) == 1.0;
            let peak = if depthwise {
                t.fma
            } else {
                matmul_peak(t, w.dtype)
            };
            2.0 * n_out * per_out / peak
        }
        OpClass::Attention => {
            let (q, k) = (ins[0], ins[1]);
            let skv = sz.dim(&k.shape.dims()[2]);
            let d = sz.dim(&q.shape.dims()[3]);
            let rows = sz.numel(&q.shape) / d;
            let causal = if let Op::Attention { causal: true, .. } = op {
                0.5
            } else {
                1.0
            };
            causal * (4.0 * rows * skv * d / matmul_peak(t, q.dtype) + rows * skv / t.special)
        }
        OpClass::Pool => {
            let window = if let Op::MaxPool2d { kernel, .. } | Op::AvgPool2d { kernel, .. } = op {
                kernel.iter().product::<i64>() as f64
            } else {
                1.0
            };
            n_out * window / t.fma
        }
    }
}

/// Time of a kernel that moves `bytes` and computes for `compute` seconds.
pub fn kernel_seconds(t: &Target, bytes: f64, compute: f64) -> f64 {
    t.launch + (bytes / t.bandwidth).max(compute)
}
