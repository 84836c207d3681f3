//! The ahead-of-time artifact (`.kart`): one file with a compiled model's
//! kernel program, its kernels' code, its weights (already in the kernels'
//! layouts), its shape buckets and autotuning choices, every section
//! checksummed. `docs/artifact.md` specifies the bytes.
//!
//! [`Artifact::from_bytes`] verifies the whole file (magic, format version,
//! header checksum, section table, zero padding, every section's checksum)
//! before it decodes any section, and refuses bad input with an
//! [`ArtifactError`] that names the problem; it never panics.
//! [`Artifact::cpu_executable`] links the CLIF kernels with the runtime's
//! JIT and binds the stored weights; [`Artifact::cuda_executable`] builds
//! the CUDA executor from the stored PTX.
//!
//! Checksums detect damage, not tampering: an artifact is code, and a
//! loaded artifact runs what it holds.

use std::collections::HashMap;
use std::path::Path;

use kiln_dialect::DType;
use kiln_dialect::kernel::Program;
use kiln_dialect::kernel::serial;
use thiserror::Error;

use crate::HostTensor;
use crate::cpu::executor::{CpuExecutable, KernelFn, RunError};
use crate::cpu::jit::{JitError, JitFunction, JitModule, host_isa};
pub use crate::cuda::Cubins;
use crate::cuda::{CudaError, CudaExecutable, Grid, PtxKernel, TensorMapSpec};

/// The first eight bytes of every artifact.
pub const MAGIC: [u8; 8] = *b"KILNART\0";

/// The format version this runtime writes (and the newest it reads):
/// version 2 added the `cubin` section, version 3 stores the program's
/// constants compactly (splats and values packed in their element type,
/// `kernel::serial::Constants::Compact`), version 4 adds grid tag 3
/// (`Grid::SplitTiles`), version 5 adds grid tag 4 (`Grid::Images`),
/// version 6 the `tensor_maps` section, version 7 grid tag 5
/// (`Grid::BalancedTiles`).
pub const FORMAT_VERSION: u32 = 7;

/// The first format version with grid tag 4 (`Grid::Images`).
const IMAGES_VERSION: u32 = 5;

/// The first format version with grid tag 5 (`Grid::BalancedTiles`).
const BALANCED_VERSION: u32 = 7;

/// The first format version with the `tensor_maps` section.
const TENSOR_MAPS_VERSION: u32 = 6;

/// The oldest format version this runtime reads (version 1 is version 2
/// without the `cubin` section; both store constants as `f64` values).
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// Sections start at offsets that are multiples of this, and so do the
/// weights inside the weights section (so the file can be memory-mapped).
pub const ALIGN: usize = 64;

/// The bytes of one section-table entry.
const ENTRY_BYTES: usize = 32;

/// What an artifact was compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// The CPU that compiled it (or one with the same instruction set
    /// features): kernels as CLIF text.
    Cpu,
    /// NVIDIA Ampere: kernels as PTX.
    Sm80,
    /// NVIDIA Hopper: kernels as PTX.
    Sm90,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 3] = [Target::Cpu, Target::Sm80, Target::Sm90];

    /// The name in the header and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Sm80 => "sm_80",
            Target::Sm90 => "sm_90",
        }
    }

    /// The target named `name`.
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// The kinds of sections, with their numbers in the section table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SectionKind {
    /// The kernel program (`kiln_dialect::kernel::serial`).
    Program,
    /// CPU kernels: the host they were compiled for and CLIF text.
    Clif,
    /// GPU kernels: PTX modules and their launch parameters.
    Ptx,
    /// The weights, packed, each at a 64-byte aligned offset.
    Weights,
    /// The shape buckets the program was planned for.
    Buckets,
    /// Autotuning choices (none are made yet: written empty).
    Autotune,
    /// GPU kernels assembled by `ptxas` for the target's architecture.
    Cubin,
    /// The tensor maps of the PTX kernels that read through them.
    TensorMaps,
}

impl SectionKind {
    /// Every kind, in table-number order.
    pub const ALL: [SectionKind; 8] = [
        SectionKind::Program,
        SectionKind::Clif,
        SectionKind::Ptx,
        SectionKind::Weights,
        SectionKind::Buckets,
        SectionKind::Autotune,
        SectionKind::Cubin,
        SectionKind::TensorMaps,
    ];

    /// The number in the section table.
    pub fn number(self) -> u32 {
        match self {
            SectionKind::Program => 1,
            SectionKind::Clif => 2,
            SectionKind::Ptx => 3,
            SectionKind::Weights => 4,
            SectionKind::Buckets => 5,
            SectionKind::Autotune => 6,
            SectionKind::Cubin => 7,
            SectionKind::TensorMaps => 8,
        }
    }

    /// The name messages use.
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Program => "program",
            SectionKind::Clif => "clif",
            SectionKind::Ptx => "ptx",
            SectionKind::Weights => "weights",
            SectionKind::Buckets => "buckets",
            SectionKind::Autotune => "autotune",
            SectionKind::Cubin => "cubin",
            SectionKind::TensorMaps => "tensor_maps",
        }
    }

    fn from_number(n: u32) -> Option<SectionKind> {
        SectionKind::ALL.into_iter().find(|k| k.number() == n)
    }
}

/// Why an artifact cannot be read or loaded. Each message names the file's
/// part at fault, what was expected and what was found.
#[derive(Debug, Error)]
pub enum ArtifactError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The file ends before something it declares.
    #[error("truncated artifact: {what} needs {needed} bytes, the file has {found}")]
    Truncated {
        what: String,
        needed: u64,
        found: u64,
    },
    /// Not an artifact at all.
    #[error("not a kiln artifact: expected the magic bytes \"KILNART\\0\", found {found:?}")]
    BadMagic { found: String },
    /// Written by a newer kiln.
    #[error(
        "artifact format version {found} is newer than this runtime reads (version {supported}); rebuild the artifact or update kiln"
    )]
    NewerVersion { found: u32, supported: u32 },
    /// A version that never existed.
    #[error(
        "artifact format version {found} is not valid (this runtime reads versions {oldest} to {supported})"
    )]
    BadVersion {
        found: u32,
        oldest: u32,
        supported: u32,
    },
    /// The header's bytes do not match its checksum.
    #[error("corrupt artifact: header checksum is {found:#010x}, expected {expected:#010x}")]
    HeaderChecksum { expected: u32, found: u32 },
    /// A section's bytes do not match its checksum.
    #[error(
        "corrupt artifact: {section} section checksum is {found:#010x}, expected {expected:#010x}"
    )]
    SectionChecksum {
        section: &'static str,
        expected: u32,
        found: u32,
    },
    /// The header or section table is malformed (overlapping or misaligned
    /// sections, bytes outside every section, a missing section).
    #[error("corrupt artifact: {0}")]
    Layout(String),
    /// A section's contents are malformed.
    #[error("corrupt artifact: {section} section: {message}")]
    Section {
        section: &'static str,
        message: String,
    },
    /// The header names a target this runtime does not know.
    #[error("artifact built for unknown target `{0}`")]
    UnknownTarget(String),
    /// The artifact is for another target than the one asked for.
    #[error("artifact built for target {built}, but it was asked to run on {wanted}")]
    WrongTarget { built: &'static str, wanted: String },
    /// A CPU artifact built for another kind of host.
    #[error(
        "artifact built for another CPU: {message} (built for {built}; this host is {host}); recompile it here"
    )]
    Host {
        message: String,
        built: String,
        host: String,
    },
    /// A kernel's CLIF text does not parse (a damaged or foreign artifact).
    #[error("kernel `{kernel}`: CLIF does not parse: {message}")]
    Clif { kernel: String, message: String },
    /// The JIT refused the kernels.
    #[error(transparent)]
    Jit(#[from] JitError),
    /// The program, or the stored weights, were refused by the executor.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The CUDA executor could not be built.
    #[error(transparent)]
    Cuda(#[from] CudaError),
}

/// A CPU kernel as stored: CLIF text and what the JIT needs to link it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClifKernel {
    /// The kernel's name (the launch's kernel name).
    pub name: String,
    /// Whether Cranelift's optimizer runs on it (`JitFunction::optimize`).
    pub optimize: bool,
    /// The runtime helpers it calls: user external name `u0:i` is
    /// `imports[i]`.
    pub imports: Vec<String>,
    /// One CLIF function, as `Function::display` writes it.
    pub clif: String,
}

/// The CPU kernels, with the host they were compiled for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuCode {
    /// The target triple (`x86_64-unknown-linux-gnu`).
    pub triple: String,
    /// The instruction-set features enabled when the CLIF was emitted
    /// (Cranelift's ISA flag names, `has_avx`, `has_fma`, ...). A host that
    /// lacks one of them cannot load the artifact.
    pub features: Vec<String>,
    /// One kernel per launch, in launch order.
    pub kernels: Vec<ClifKernel>,
}

/// The kernels' code for the artifact's target.
#[derive(Clone, Debug, PartialEq)]
pub enum Code {
    /// CLIF for the CPU.
    Cpu(CpuCode),
    /// PTX for a GPU, one module per launch, in launch order.
    Ptx(Vec<PtxKernel>),
}

/// One autotuning choice: for a kernel, a key and the value chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutotuneChoice {
    /// The kernel's name.
    pub kernel: String,
    /// What was tuned (a tile size, a block size).
    pub key: String,
    /// The value chosen.
    pub value: String,
}

/// A compiled model, as an artifact holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Artifact {
    /// The version of kiln that wrote it.
    pub kiln_version: String,
    /// The target it was compiled for.
    pub target: Target,
    /// The kernel program, in launch order.
    pub program: Program,
    /// One compiled kernel per launch of the program.
    pub code: Code,
    /// The program's weights, by name, in the layouts its kernels read
    /// (bind-time results included); `None` when compiled without weights,
    /// which are then bound when it is loaded.
    pub weights: Option<Vec<(String, HostTensor)>>,
    /// The shape buckets it was planned for: each a binding of symbolic
    /// dims to sizes (one bucket today: the compile's `--dim` values).
    pub buckets: Vec<Vec<(String, u64)>>,
    /// Autotuning choices (empty: none are made yet).
    pub autotune: Vec<AutotuneChoice>,
    /// For a GPU target, the kernels assembled for its architecture when
    /// `ptxas` was found at compile time.
    pub cubins: Option<Cubins>,
}

impl Artifact {
    /// The bytes of the artifact.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut sections: Vec<(SectionKind, Vec<u8>)> =
            vec![(SectionKind::Program, serial::encode(&self.program))];
        match &self.code {
            Code::Cpu(c) => sections.push((SectionKind::Clif, encode_clif(c))),
            Code::Ptx(k) => sections.push((SectionKind::Ptx, encode_ptx(k))),
        }
        if let Some(w) = &self.weights {
            sections.push((SectionKind::Weights, encode_weights(w)));
        }
        sections.push((SectionKind::Buckets, encode_buckets(&self.buckets)));
        sections.push((SectionKind::Autotune, encode_autotune(&self.autotune)));
        if let Some(c) = &self.cubins {
            sections.push((SectionKind::Cubin, encode_cubins(c)));
        }
        if let Code::Ptx(k) = &self.code
            && k.iter().any(|k| !k.tensor_maps.is_empty())
        {
            sections.push((SectionKind::TensorMaps, encode_tensor_maps(k)));
        }

        let mut head = Vec::new();
        head.extend_from_slice(&MAGIC);
        put_u32(&mut head, FORMAT_VERSION);
        put_u32(&mut head, 0); // header length, filled in below
        put_str(&mut head, &self.kiln_version);
        put_str(&mut head, self.target.name());
        put_u32(&mut head, sections.len() as u32);
        let header_len = head.len() + sections.len() * ENTRY_BYTES + 4;
        head[12..16].copy_from_slice(&(header_len as u32).to_le_bytes());
        let mut offset = header_len.next_multiple_of(ALIGN);
        for (kind, bytes) in &sections {
            put_u32(&mut head, kind.number());
            put_u32(&mut head, 0);
            put_u64(&mut head, offset as u64);
            put_u64(&mut head, bytes.len() as u64);
            put_u32(&mut head, crc32fast::hash(bytes));
            put_u32(&mut head, 0);
            offset = (offset + bytes.len()).next_multiple_of(ALIGN);
        }
        let crc = crc32fast::hash(&head);
        put_u32(&mut head, crc);
        for (_, bytes) in &sections {
            head.resize(head.len().next_multiple_of(ALIGN), 0);
            head.extend_from_slice(bytes);
        }
        head
    }

    /// Writes the artifact to `path`.
    pub fn write(&self, path: &Path) -> Result<(), ArtifactError> {
        std::fs::write(path, self.to_bytes()).map_err(|source| ArtifactError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads and verifies the artifact at `path` (see [`Artifact::from_bytes`])
    /// through a memory map of the file, so that its bytes are not copied
    /// before decoding: the weights are copied once, into their tensors.
    /// The file must not change while it is read (as for any mapped file);
    /// where it cannot be mapped it is read into memory.
    pub fn read(path: &Path) -> Result<Artifact, ArtifactError> {
        let io = |source| ArtifactError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read only and dropped before returning; the
        // file changing meanwhile is the documented misuse above.
        match unsafe { memmap2::Mmap::map(&file) } {
            Ok(map) => Artifact::from_bytes(&map),
            Err(_) => Artifact::from_bytes(&std::fs::read(path).map_err(io)?),
        }
    }

    /// Verifies every byte of `bytes`, then decodes the sections.
    pub fn from_bytes(bytes: &[u8]) -> Result<Artifact, ArtifactError> {
        let file_len = bytes.len() as u64;
        let truncated = |what: &str, needed: u64| ArtifactError::Truncated {
            what: what.to_string(),
            needed,
            found: file_len,
        };
        let n = bytes.len().min(8);
        if bytes[..n] != MAGIC[..n] {
            return Err(bad_magic(bytes));
        }
        if bytes.len() < 16 {
            return Err(truncated("the header", 16));
        }
        let version = le_u32(&bytes[8..12]);
        if version > FORMAT_VERSION {
            return Err(ArtifactError::NewerVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if version < OLDEST_FORMAT_VERSION {
            return Err(ArtifactError::BadVersion {
                found: version,
                oldest: OLDEST_FORMAT_VERSION,
                supported: FORMAT_VERSION,
            });
        }
        let header_len = le_u32(&bytes[12..16]) as usize;
        if header_len > bytes.len() {
            return Err(truncated("the header", header_len as u64));
        }
        if header_len < 16 + 4 {
            return Err(ArtifactError::Layout(format!(
                "header length {header_len} is shorter than the fixed fields"
            )));
        }
        let stored = le_u32(&bytes[header_len - 4..header_len]);
        let actual = crc32fast::hash(&bytes[..header_len - 4]);
        if stored != actual {
            return Err(ArtifactError::HeaderChecksum {
                expected: stored,
                found: actual,
            });
        }
        let layout = |m: String| ArtifactError::Layout(m);
        let mut r = Cursor::new(&bytes[16..header_len - 4], "header");
        let kiln_version = r.str().map_err(|e| layout(e.message))?;
        let target_name = r.str().map_err(|e| layout(e.message))?;
        let target = Target::from_name(&target_name)
            .ok_or_else(|| ArtifactError::UnknownTarget(target_name.clone()))?;
        let count = r.u32().map_err(|e| layout(e.message))? as usize;
        if r.left() != count.saturating_mul(ENTRY_BYTES) {
            return Err(layout(format!(
                "the header holds {} bytes of section table for {count} sections",
                r.left()
            )));
        }
        let mut table: Vec<(SectionKind, usize, usize, u32)> = Vec::with_capacity(count);
        let mut end = header_len;
        for i in 0..count {
            let e = |c: CursorError| layout(c.message);
            let number = r.u32().map_err(e)?;
            let flags = r.u32().map_err(e)?;
            let offset = r.u64().map_err(e)?;
            let len = r.u64().map_err(e)?;
            let crc = r.u32().map_err(e)?;
            let reserved = r.u32().map_err(e)?;
            let kind = SectionKind::from_number(number)
                .ok_or_else(|| layout(format!("section {i} has unknown kind {number}")))?;
            let name = kind.name();
            if flags != 0 || reserved != 0 {
                return Err(layout(format!(
                    "{name} section entry has nonzero reserved bits"
                )));
            }
            if table.iter().any(|t| t.0 == kind) {
                return Err(layout(format!("two {name} sections")));
            }
            let section_end = offset.saturating_add(len);
            if section_end > file_len {
                return Err(truncated(&format!("the {name} section"), section_end));
            }
            let (offset, len) = (offset as usize, len as usize);
            if offset % ALIGN != 0 || offset < end || offset - end >= ALIGN {
                return Err(layout(format!(
                    "{name} section at offset {offset}: expected the first multiple of {ALIGN} at or after {end}"
                )));
            }
            if bytes[end..offset].iter().any(|&b| b != 0) {
                return Err(layout(format!("nonzero padding before the {name} section")));
            }
            table.push((kind, offset, len, crc));
            end = offset + len;
        }
        if end != bytes.len() {
            return Err(layout(format!(
                "{} bytes after the last section",
                bytes.len() - end
            )));
        }
        for &(kind, offset, len, crc) in &table {
            let found = crc32fast::hash(&bytes[offset..offset + len]);
            if found != crc {
                return Err(ArtifactError::SectionChecksum {
                    section: kind.name(),
                    expected: crc,
                    found,
                });
            }
        }
        let section = |kind: SectionKind| {
            table
                .iter()
                .find(|t| t.0 == kind)
                .map(|&(_, o, l, _)| &bytes[o..o + l])
        };
        let required = |kind: SectionKind| {
            section(kind).ok_or_else(|| layout(format!("no {} section", kind.name())))
        };
        let form = if version >= 3 {
            serial::Constants::Compact
        } else {
            serial::Constants::F64
        };
        let program = serial::decode_with(required(SectionKind::Program)?, form).map_err(|e| {
            ArtifactError::Section {
                section: "program",
                message: e.to_string(),
            }
        })?;
        let code = match target {
            Target::Cpu => {
                if section(SectionKind::Ptx).is_some() {
                    return Err(layout("a cpu artifact with a ptx section".into()));
                }
                Code::Cpu(decode_clif(required(SectionKind::Clif)?)?)
            }
            Target::Sm80 | Target::Sm90 => {
                if section(SectionKind::Clif).is_some() {
                    return Err(layout(format!(
                        "a {} artifact with a clif section",
                        target.name()
                    )));
                }
                Code::Ptx(decode_ptx(required(SectionKind::Ptx)?, version)?)
            }
        };
        let launches = program.launches.len();
        let kernels = match &code {
            Code::Cpu(c) => c
                .kernels
                .iter()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>(),
            Code::Ptx(k) => k.iter().map(|k| k.entry.as_str()).collect(),
        };
        if kernels.len() != launches {
            return Err(ArtifactError::Section {
                section: code_section(&code),
                message: format!(
                    "{} kernels for a program of {launches} launches",
                    kernels.len()
                ),
            });
        }
        if let Code::Cpu(c) = &code {
            for (k, l) in c.kernels.iter().zip(&program.launches) {
                if k.name != l.kernel.name {
                    return Err(ArtifactError::Section {
                        section: "clif",
                        message: format!(
                            "kernel `{}` stored where the program launches `{}`",
                            k.name, l.kernel.name
                        ),
                    });
                }
            }
        }
        let weights = section(SectionKind::Weights)
            .map(decode_weights)
            .transpose()?;
        let buckets = decode_buckets(required(SectionKind::Buckets)?)?;
        let autotune = decode_autotune(required(SectionKind::Autotune)?)?;
        let cubins = section(SectionKind::Cubin).map(decode_cubins).transpose()?;
        if let Some(c) = &cubins {
            if version < 2 {
                return Err(layout(format!(
                    "a cubin section in a version {version} artifact"
                )));
            }
            if target == Target::Cpu {
                return Err(layout("a cpu artifact with a cubin section".into()));
            }
            if c.modules.len() != launches {
                return Err(ArtifactError::Section {
                    section: "cubin",
                    message: format!(
                        "{} cubins for a program of {launches} launches",
                        c.modules.len()
                    ),
                });
            }
        }
        let mut code = code;
        if let Some(b) = section(SectionKind::TensorMaps) {
            if version < TENSOR_MAPS_VERSION {
                return Err(layout(format!(
                    "a tensor_maps section in a version {version} artifact"
                )));
            }
            let Code::Ptx(kernels) = &mut code else {
                return Err(layout("a cpu artifact with a tensor_maps section".into()));
            };
            let maps = decode_tensor_maps(b)?;
            if maps.len() != launches {
                return Err(ArtifactError::Section {
                    section: "tensor_maps",
                    message: format!(
                        "tensor maps for {} kernels in a program of {launches} launches",
                        maps.len()
                    ),
                });
            }
            for (k, m) in kernels.iter_mut().zip(maps) {
                k.tensor_maps = m;
            }
        }
        Ok(Artifact {
            kiln_version,
            target,
            program,
            code,
            weights,
            buckets,
            autotune,
            cubins,
        })
    }

    /// The stored weights as `bind_weights` takes them (empty when the
    /// artifact holds none).
    pub fn weight_map(&self) -> HashMap<String, HostTensor> {
        self.weights.iter().flatten().cloned().collect()
    }

    /// Links the CPU kernels for this host and builds the executor, with
    /// the stored weights bound (without stored weights, bind them with
    /// `CpuExecutable::bind_weights` before running).
    ///
    /// Refuses a GPU artifact, and a CPU artifact compiled for another
    /// target triple or with an instruction-set feature this host lacks.
    pub fn cpu_executable(&self) -> Result<CpuExecutable, ArtifactError> {
        let code = match &self.code {
            Code::Cpu(c) => c,
            Code::Ptx(_) => {
                return Err(ArtifactError::WrongTarget {
                    built: self.target.name(),
                    wanted: "the cpu".into(),
                });
            }
        };
        let isa = host_isa()?;
        check_host(code, &isa.triple().to_string(), &host_features(&*isa))?;
        let mut funcs = Vec::with_capacity(code.kernels.len());
        for k in &code.kernels {
            let clif_err = |message: String| ArtifactError::Clif {
                kernel: k.name.clone(),
                message,
            };
            let mut parsed =
                cranelift_reader::parse_functions(&k.clif).map_err(|e| clif_err(e.to_string()))?;
            if parsed.len() != 1 {
                return Err(clif_err(format!(
                    "expected one function, found {}",
                    parsed.len()
                )));
            }
            let func = parsed.remove(0);
            funcs.push(JitFunction {
                name: k.name.clone(),
                func,
                imports: k.imports.clone(),
                optimize: k.optimize,
            });
        }
        let module = JitModule::new(isa, funcs)?;
        let mut kernels: Vec<KernelFn> = Vec::with_capacity(code.kernels.len());
        for k in &code.kernels {
            kernels.push(module.get(&k.name).ok_or_else(|| ArtifactError::Clif {
                kernel: k.name.clone(),
                message: "linked but not defined".into(),
            })?);
        }
        let mut exe = CpuExecutable::new(
            self.program.clone(),
            kernels,
            Box::new(std::sync::Mutex::new(module)),
        )?;
        if self.weights.is_some() {
            exe.bind_weights(&self.weight_map())?;
        }
        Ok(exe)
    }

    /// Builds the CUDA executor from the stored PTX, with the stored
    /// weights bound. Refuses a CPU artifact; needs the CUDA driver.
    pub fn cuda_executable(&self) -> Result<CudaExecutable, ArtifactError> {
        let kernels = match &self.code {
            Code::Ptx(k) => k.clone(),
            Code::Cpu(_) => {
                return Err(ArtifactError::WrongTarget {
                    built: self.target.name(),
                    wanted: "a CUDA GPU".into(),
                });
            }
        };
        let mut exe =
            CudaExecutable::with_cubins(self.program.clone(), kernels, self.cubins.as_ref())?;
        if self.weights.is_some() {
            exe.bind_weights(&self.weight_map())?;
        }
        Ok(exe)
    }
}

/// The names of the boolean instruction-set features `isa` enables, sorted:
/// what a CPU artifact records.
pub fn host_features(isa: &dyn cranelift_codegen::isa::TargetIsa) -> Vec<String> {
    let mut v: Vec<String> = isa
        .isa_flags()
        .iter()
        .filter(|f| f.as_bool() == Some(true))
        .map(|f| f.name.to_string())
        .collect();
    v.sort();
    v
}

/// Checks that a host with `triple` and `features` can run `code`.
pub fn check_host(code: &CpuCode, triple: &str, features: &[String]) -> Result<(), ArtifactError> {
    let host = || format!("{triple} with {}", features.join(" "));
    let built = || format!("{} with {}", code.triple, code.features.join(" "));
    if code.triple != triple {
        return Err(ArtifactError::Host {
            message: format!("target triple {} differs from {triple}", code.triple),
            built: built(),
            host: host(),
        });
    }
    let missing: Vec<&str> = code
        .features
        .iter()
        .filter(|f| !features.contains(f))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(ArtifactError::Host {
            message: format!("this host lacks {}", missing.join(", ")),
            built: built(),
            host: host(),
        });
    }
    Ok(())
}

fn code_section(code: &Code) -> &'static str {
    match code {
        Code::Cpu(_) => "clif",
        Code::Ptx(_) => "ptx",
    }
}

fn bad_magic(bytes: &[u8]) -> ArtifactError {
    let n = bytes.len().min(8);
    ArtifactError::BadMagic {
        found: bytes[..n].escape_ascii().to_string(),
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn put_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn put_u64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    put_u32(v, s.len() as u32);
    v.extend_from_slice(s.as_bytes());
}

fn put_list<T>(v: &mut Vec<u8>, items: &[T], mut f: impl FnMut(&mut Vec<u8>, &T)) {
    put_u32(v, items.len() as u32);
    for i in items {
        f(v, i);
    }
}

fn encode_clif(c: &CpuCode) -> Vec<u8> {
    let mut v = Vec::new();
    put_str(&mut v, &c.triple);
    put_list(&mut v, &c.features, |v, f| put_str(v, f));
    put_list(&mut v, &c.kernels, |v, k| {
        put_str(v, &k.name);
        v.push(u8::from(k.optimize));
        put_list(v, &k.imports, |v, i| put_str(v, i));
        put_str(v, &k.clif);
    });
    v
}

fn decode_clif(bytes: &[u8]) -> Result<CpuCode, ArtifactError> {
    let mut r = Cursor::new(bytes, "clif");
    let code = (|| {
        let triple = r.str()?;
        let features = r.list(|r| r.str())?;
        let kernels = r.list(|r| {
            Ok(ClifKernel {
                name: r.str()?,
                optimize: r.bool()?,
                imports: r.list(|r| r.str())?,
                clif: r.str()?,
            })
        })?;
        r.end()?;
        Ok(CpuCode {
            triple,
            features,
            kernels,
        })
    })();
    code.map_err(CursorError::into_artifact)
}

/// The tag and parameter of a grid. Exhaustive: a new `Grid` variant must
/// be given a tag here (and in `decode_grid` and docs/artifact.md).
fn encode_grid(v: &mut Vec<u8>, g: Grid) {
    match g {
        Grid::Elements { per_thread } => {
            v.push(0);
            put_u32(v, per_thread);
        }
        Grid::Rows { inner_axes } => {
            v.push(1);
            put_u32(v, inner_axes);
        }
        Grid::Tiles { tile_m, tile_n } => {
            v.push(2);
            put_u32(v, tile_m);
            put_u32(v, tile_n);
        }
        Grid::SplitTiles {
            tile_m,
            tile_n,
            splits,
            scratch,
        } => {
            v.push(3);
            for x in [tile_m, tile_n, splits, scratch] {
                put_u32(v, x);
            }
        }
        Grid::BalancedTiles {
            tile_m,
            tile_n,
            splits,
            scratch,
            sms,
        } => {
            v.push(5);
            for x in [tile_m, tile_n, splits, scratch, sms] {
                put_u32(v, x);
            }
        }
        Grid::Images { tile_h, tile_w } => {
            v.push(4);
            put_u32(v, tile_h);
            put_u32(v, tile_w);
        }
    }
}

/// The grid at the cursor, in an artifact of format `version` (which
/// decides the tags it may hold).
fn decode_grid(r: &mut Cursor, version: u32) -> Result<Grid, CursorError> {
    let at = r.at;
    match r.u8()? {
        0 => Ok(Grid::Elements {
            per_thread: r.u32()?,
        }),
        1 => Ok(Grid::Rows {
            inner_axes: r.u32()?,
        }),
        2 => Ok(Grid::Tiles {
            tile_m: r.u32()?,
            tile_n: r.u32()?,
        }),
        3 => Ok(Grid::SplitTiles {
            tile_m: r.u32()?,
            tile_n: r.u32()?,
            splits: r.u32()?,
            scratch: r.u32()?,
        }),
        4 if version >= IMAGES_VERSION => Ok(Grid::Images {
            tile_h: r.u32()?,
            tile_w: r.u32()?,
        }),
        4 => Err(r.error(
            at,
            format!(
                "4 is not a grid tag in a version {version} artifact \
                 (grid tag 4 is new in format version {IMAGES_VERSION})"
            ),
        )),
        5 if version >= BALANCED_VERSION => Ok(Grid::BalancedTiles {
            tile_m: r.u32()?,
            tile_n: r.u32()?,
            splits: r.u32()?,
            scratch: r.u32()?,
            sms: r.u32()?,
        }),
        5 => Err(r.error(
            at,
            format!(
                "5 is not a grid tag in a version {version} artifact \
                 (grid tag 5 is new in format version {BALANCED_VERSION})"
            ),
        )),
        tag => Err(r.error(at, format!("{tag} is not a grid tag"))),
    }
}

fn encode_ptx(kernels: &[PtxKernel]) -> Vec<u8> {
    let mut v = Vec::new();
    put_list(&mut v, kernels, |v, k| {
        put_str(v, &k.entry);
        put_str(v, &k.arch);
        put_u32(v, k.block);
        encode_grid(v, k.grid);
        put_u32(v, k.shared_bytes);
        put_str(v, &k.ptx);
    });
    v
}

fn decode_ptx(bytes: &[u8], version: u32) -> Result<Vec<PtxKernel>, ArtifactError> {
    let mut r = Cursor::new(bytes, "ptx");
    let kernels = (|| {
        let k = r.list(|r| {
            Ok(PtxKernel {
                entry: r.str()?,
                arch: r.str()?,
                block: r.u32()?,
                grid: decode_grid(r, version)?,
                shared_bytes: r.u32()?,
                ptx: r.str()?,
                tensor_maps: Vec::new(),
            })
        })?;
        r.end()?;
        Ok(k)
    })();
    kernels.map_err(CursorError::into_artifact)
}

/// Per kernel, in launch order, its tensor maps: argument, box (inner
/// elements, rows) and element bytes, four `u32` each.
fn encode_tensor_maps(kernels: &[PtxKernel]) -> Vec<u8> {
    let mut v = Vec::new();
    put_list(&mut v, kernels, |v, k| {
        put_list(v, &k.tensor_maps, |v, t| {
            for x in [t.arg, t.box_inner, t.box_rows, t.elem_bytes] {
                put_u32(v, x);
            }
        });
    });
    v
}

fn decode_tensor_maps(bytes: &[u8]) -> Result<Vec<Vec<TensorMapSpec>>, ArtifactError> {
    let mut r = Cursor::new(bytes, "tensor_maps");
    let maps = (|| {
        let m = r.list(|r| {
            r.list(|r| {
                Ok(TensorMapSpec {
                    arg: r.u32()?,
                    box_inner: r.u32()?,
                    box_rows: r.u32()?,
                    elem_bytes: r.u32()?,
                })
            })
        })?;
        r.end()?;
        Ok(m)
    })();
    maps.map_err(CursorError::into_artifact)
}

fn encode_cubins(c: &Cubins) -> Vec<u8> {
    let mut v = Vec::new();
    put_str(&mut v, &c.arch);
    put_str(&mut v, &c.assembler);
    put_list(&mut v, &c.modules, |v, m| {
        put_u64(v, m.len() as u64);
        v.extend_from_slice(m);
    });
    v
}

fn decode_cubins(bytes: &[u8]) -> Result<Cubins, ArtifactError> {
    let mut r = Cursor::new(bytes, "cubin");
    let cubins = (|| {
        let arch = r.str()?;
        let assembler = r.str()?;
        let modules = r.list(|r| {
            let n = r.u64()?;
            Ok(r.take(usize::try_from(n).unwrap_or(usize::MAX))?.to_vec())
        })?;
        r.end()?;
        Ok(Cubins {
            arch,
            assembler,
            modules,
        })
    })();
    cubins.map_err(CursorError::into_artifact)
}

fn encode_weights(weights: &[(String, HostTensor)]) -> Vec<u8> {
    // The index first, then the data, each tensor at an aligned offset
    // from the section's start.
    let mut index = Vec::new();
    put_u32(&mut index, weights.len() as u32);
    let index_len: usize = 4 + weights
        .iter()
        .map(|(n, t)| 4 + n.len() + 4 + t.dtype.name().len() + 4 + 8 * t.shape.len() + 16)
        .sum::<usize>();
    let mut offset = index_len.next_multiple_of(ALIGN);
    for (name, t) in weights {
        put_str(&mut index, name);
        put_str(&mut index, t.dtype.name());
        put_list(&mut index, &t.shape, |v, &d| put_u64(v, d as u64));
        put_u64(&mut index, offset as u64);
        put_u64(&mut index, t.data.len() as u64);
        offset = (offset + t.data.len()).next_multiple_of(ALIGN);
    }
    debug_assert_eq!(index.len(), index_len);
    for (_, t) in weights {
        index.resize(index.len().next_multiple_of(ALIGN), 0);
        index.extend_from_slice(&t.data);
    }
    index
}

fn decode_weights(bytes: &[u8]) -> Result<Vec<(String, HostTensor)>, ArtifactError> {
    let mut r = Cursor::new(bytes, "weights");
    let entries = r
        .list(|r| {
            let at = r.at;
            let name = r.str()?;
            let dtype_name = r.str()?;
            let dtype = DType::from_name(&dtype_name)
                .ok_or_else(|| r.error(at, format!("unknown element type `{dtype_name}`")))?;
            let shape = r.list(|r| {
                let at = r.at;
                let d = r.u64()?;
                usize::try_from(d).map_err(|_| r.error(at, format!("dim {d} too large")))
            })?;
            let offset = r.u64()?;
            let len = r.u64()?;
            Ok((name, dtype, shape, offset, len, at))
        })
        .map_err(CursorError::into_artifact)?;
    let section = |message: String| ArtifactError::Section {
        section: "weights",
        message,
    };
    let mut end = r.at;
    let mut out = Vec::with_capacity(entries.len());
    for (name, dtype, shape, offset, len, _) in entries {
        let stop = offset.checked_add(len).filter(|&s| s <= bytes.len() as u64);
        let Some(stop) = stop else {
            return Err(section(format!(
                "weight `{name}` at {offset}..+{len} lies outside the section's {} bytes",
                bytes.len()
            )));
        };
        let (offset, stop) = (offset as usize, stop as usize);
        if offset % ALIGN != 0 || offset < end || offset - end >= ALIGN {
            return Err(section(format!(
                "weight `{name}` at offset {offset}: expected the first multiple of {ALIGN} at or after {end}"
            )));
        }
        let t = HostTensor {
            dtype,
            shape,
            data: bytes[offset..stop].to_vec(),
        };
        t.check_size()
            .map_err(|m| section(format!("weight `{name}`: {m}")))?;
        out.push((name, t));
        end = stop;
    }
    if end != bytes.len() {
        return Err(section(format!(
            "{} bytes after the last weight",
            bytes.len() - end
        )));
    }
    Ok(out)
}

fn encode_buckets(buckets: &[Vec<(String, u64)>]) -> Vec<u8> {
    let mut v = Vec::new();
    put_list(&mut v, buckets, |v, b| {
        put_list(v, b, |v, (name, size)| {
            put_str(v, name);
            put_u64(v, *size);
        })
    });
    v
}

fn decode_buckets(bytes: &[u8]) -> Result<Vec<Vec<(String, u64)>>, ArtifactError> {
    let mut r = Cursor::new(bytes, "buckets");
    let b = (|| {
        let b = r.list(|r| r.list(|r| Ok((r.str()?, r.u64()?))))?;
        r.end()?;
        Ok(b)
    })();
    b.map_err(CursorError::into_artifact)
}

fn encode_autotune(choices: &[AutotuneChoice]) -> Vec<u8> {
    let mut v = Vec::new();
    put_list(&mut v, choices, |v, c| {
        put_str(v, &c.kernel);
        put_str(v, &c.key);
        put_str(v, &c.value);
    });
    v
}

fn decode_autotune(bytes: &[u8]) -> Result<Vec<AutotuneChoice>, ArtifactError> {
    let mut r = Cursor::new(bytes, "autotune");
    let c = (|| {
        let c = r.list(|r| {
            Ok(AutotuneChoice {
                kernel: r.str()?,
                key: r.str()?,
                value: r.str()?,
            })
        })?;
        r.end()?;
        Ok(c)
    })();
    c.map_err(CursorError::into_artifact)
}

/// A malformed section's contents: where, and what.
struct CursorError {
    section: &'static str,
    message: String,
}

impl CursorError {
    fn into_artifact(self) -> ArtifactError {
        ArtifactError::Section {
            section: self.section,
            message: self.message,
        }
    }
}

/// Reads the little-endian fields of one section, every length checked.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    section: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8], section: &'static str) -> Cursor<'a> {
        Cursor {
            bytes,
            at: 0,
            section,
        }
    }

    fn error(&self, at: usize, message: String) -> CursorError {
        CursorError {
            section: self.section,
            message: format!("at offset {at}: {message}"),
        }
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CursorError> {
        if n > self.left() {
            return Err(self.error(
                self.at,
                format!("needs {n} bytes, {} are left", self.left()),
            ));
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, CursorError> {
        Ok(self.take(1)?[0])
    }

    fn bool(&mut self) -> Result<bool, CursorError> {
        let at = self.at;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.error(at, format!("{b} is not a bool"))),
        }
    }

    fn u32(&mut self) -> Result<u32, CursorError> {
        Ok(le_u32(self.take(4)?))
    }

    fn u64(&mut self) -> Result<u64, CursorError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn str(&mut self) -> Result<String, CursorError> {
        let n = self.u32()? as usize;
        let at = self.at;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.error(at, "a string is not UTF-8".into()))
    }

    fn list<T>(
        &mut self,
        mut f: impl FnMut(&mut Self) -> Result<T, CursorError>,
    ) -> Result<Vec<T>, CursorError> {
        let at = self.at;
        let n = self.u32()? as usize;
        // Every item is at least one byte: a larger count is corrupt. The
        // vector grows as items decode rather than trusting the count.
        if n > self.left() {
            return Err(self.error(at, format!("a count of {n} exceeds the bytes left")));
        }
        let mut v = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            v.push(f(self)?);
        }
        Ok(v)
    }

    fn end(&self) -> Result<(), CursorError> {
        if self.left() != 0 {
            return Err(self.error(self.at, format!("{} bytes after the end", self.left())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_dialect::kernel::{Body, Buffer, Expr, Kernel, Launch, Ty};
    use kiln_dialect::{Dim, Shape};

    /// `y = x + w` over `[n, 3]` f32: one launch.
    fn program() -> Program {
        let b = |name: &str, dims: Vec<Dim>| Buffer {
            name: name.into(),
            dtype: DType::F32,
            shape: Shape(dims),
        };
        let x = b("x", vec![Dim::sym("n"), Dim::Static(3)]);
        let w = b("w", vec![Dim::Static(3)]);
        let y = b("y", vec![Dim::sym("n"), Dim::Static(3)]);
        let v = |i| Expr::Var(kiln_dialect::kernel::Var(i));
        let kernel = Kernel {
            name: "add".into(),
            inputs: vec![x.clone(), w.clone()],
            output: y.clone(),
            dims: vec!["n".into()],
            float: Ty::F32,
            body: Body::Map {
                expr: Expr::bin(
                    kiln_dialect::kernel::Binary::Add,
                    Expr::load(0, vec![v(0), v(1)]),
                    Expr::load(1, vec![v(1)]),
                ),
            },
        };
        Program {
            name: "add".into(),
            buffers: vec![x, w, y],
            inputs: vec![0],
            weights: vec![1],
            constants: vec![],
            outputs: vec![("y".into(), 2)],
            dims: vec!["n".into()],
            launches: vec![Launch {
                kernel,
                args: vec![0, 1],
                out: 2,
                bind_time: false,
            }],
        }
    }

    fn artifact() -> Artifact {
        Artifact {
            kiln_version: "0.1.0".into(),
            target: Target::Sm90,
            program: program(),
            code: Code::Ptx(vec![PtxKernel {
                entry: "add".into(),
                ptx: ".version 8.0\n.target sm_90a\n".into(),
                arch: "sm_90a".into(),
                block: 256,
                grid: Grid::Rows { inner_axes: 1 },
                shared_bytes: 16,
                tensor_maps: vec![TensorMapSpec {
                    arg: 1,
                    box_inner: 64,
                    box_rows: 128,
                    elem_bytes: 2,
                }],
            }]),
            weights: Some(vec![(
                "w".into(),
                HostTensor::from_values(DType::F32, &[3], &[1.0, -2.0, 0.5]),
            )]),
            buckets: vec![vec![("n".into(), 4)]],
            autotune: vec![],
            cubins: Some(Cubins {
                arch: "sm_90a".into(),
                assembler: "ptxas V13.0.88".into(),
                modules: vec![vec![0x7f, b'E', b'L', b'F', 2, 1]],
            }),
        }
    }

    #[test]
    fn every_grid_round_trips() {
        for g in [
            Grid::Elements { per_thread: 8 },
            Grid::Rows { inner_axes: 1 },
            Grid::Tiles {
                tile_m: 128,
                tile_n: 256,
            },
            Grid::SplitTiles {
                tile_m: 16,
                tile_n: 128,
                splits: 8,
                scratch: 8720,
            },
            Grid::BalancedTiles {
                tile_m: 16,
                tile_n: 64,
                splits: 3,
                scratch: 4100,
                sms: 132,
            },
            Grid::Images {
                tile_h: 14,
                tile_w: 8,
            },
        ] {
            let mut v = Vec::new();
            encode_grid(&mut v, g);
            let mut r = Cursor::new(&v, "ptx");
            assert_eq!(decode_grid(&mut r, FORMAT_VERSION).ok(), Some(g));
            assert_eq!(r.left(), 0);
        }
    }

    #[test]
    fn balanced_grids_are_refused_before_their_version() {
        let g = Grid::BalancedTiles {
            tile_m: 16,
            tile_n: 64,
            splits: 3,
            scratch: 4100,
            sms: 132,
        };
        let mut v = Vec::new();
        encode_grid(&mut v, g);
        assert_eq!(v[0], 5);
        for version in OLDEST_FORMAT_VERSION..BALANCED_VERSION {
            let mut r = Cursor::new(&v, "ptx");
            let e = decode_grid(&mut r, version).unwrap_err();
            assert_eq!(
                e.message,
                format!(
                    "at offset 0: 5 is not a grid tag in a version {version} artifact \
                     (grid tag 5 is new in format version 7)"
                )
            );
        }
        let mut r = Cursor::new(&v, "ptx");
        assert_eq!(decode_grid(&mut r, BALANCED_VERSION).ok(), Some(g));
    }

    #[test]
    fn image_grids_are_refused_before_their_version() {
        let g = Grid::Images {
            tile_h: 4,
            tile_w: 4,
        };
        let mut v = Vec::new();
        encode_grid(&mut v, g);
        assert_eq!(v[0], 4);
        for version in OLDEST_FORMAT_VERSION..IMAGES_VERSION {
            let mut r = Cursor::new(&v, "ptx");
            let e = decode_grid(&mut r, version).unwrap_err();
            assert_eq!(
                e.message,
                format!(
                    "at offset 0: 4 is not a grid tag in a version {version} artifact \
                     (grid tag 4 is new in format version 5)"
                )
            );
        }
        // A whole artifact relabelled as version 4.
        let mut a = artifact();
        if let Code::Ptx(k) = &mut a.code {
            k[0].grid = g;
        }
        assert_eq!(Artifact::from_bytes(&a.to_bytes()).unwrap(), a);
        let old = as_version(&a.to_bytes(), 4);
        let e = Artifact::from_bytes(&old).unwrap_err();
        assert!(
            matches!(&e, ArtifactError::Section { section: "ptx", message }
                if message.contains("4 is not a grid tag in a version 4 artifact")),
            "{e}"
        );
        // Earlier tags read as before in a version 4 artifact.
        a = without_tensor_maps(artifact());
        let old = as_version(&a.to_bytes(), 4);
        assert_eq!(Artifact::from_bytes(&old).unwrap(), a);
    }

    #[test]
    fn round_trips_and_aligns_sections_and_weights() {
        let a = artifact();
        let bytes = a.to_bytes();
        assert_eq!(&bytes[..8], b"KILNART\0");
        assert_eq!(bytes[8..12], FORMAT_VERSION.to_le_bytes());
        assert_eq!(Artifact::from_bytes(&bytes).unwrap(), a);
        // The weight's 12 bytes lie at a multiple of 64 in the file.
        let data: Vec<u8> = a.weights.as_ref().unwrap()[0].1.data.clone();
        let at = bytes
            .windows(12)
            .position(|w| w == data.as_slice())
            .unwrap();
        assert_eq!(at % ALIGN, 0);
    }

    /// `bytes` relabelled as format version `v`, the header checksum redone.
    fn as_version(bytes: &[u8], v: u32) -> Vec<u8> {
        let mut b = bytes.to_vec();
        b[8..12].copy_from_slice(&v.to_le_bytes());
        let h = le_u32(&b[12..16]) as usize;
        let crc = crc32fast::hash(&b[..h - 4]);
        b[h - 4..h].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Without the tensor maps the kernels have no such list.
    fn without_tensor_maps(mut a: Artifact) -> Artifact {
        if let Code::Ptx(ks) = &mut a.code {
            for k in ks {
                k.tensor_maps.clear();
            }
        }
        a
    }

    #[test]
    fn tensor_maps_are_refused_before_their_version() {
        let a = artifact();
        assert!(matches!(
            Artifact::from_bytes(&as_version(&a.to_bytes(), 5)),
            Err(ArtifactError::Layout(m)) if m == "a tensor_maps section in a version 5 artifact"
        ));
        let a = without_tensor_maps(a);
        assert_eq!(
            Artifact::from_bytes(&as_version(&a.to_bytes(), 5)).unwrap(),
            a
        );
    }

    #[test]
    fn version_1_artifacts_are_read_without_cubins() {
        let mut a = without_tensor_maps(artifact());
        let with = as_version(&a.to_bytes(), 1);
        assert!(matches!(
            Artifact::from_bytes(&with),
            Err(ArtifactError::Layout(m)) if m == "a cubin section in a version 1 artifact"
        ));
        a.cubins = None;
        let old = as_version(&a.to_bytes(), 1);
        assert_eq!(Artifact::from_bytes(&old).unwrap(), a);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let bytes = artifact().to_bytes();
        for n in 0..bytes.len() {
            assert!(Artifact::from_bytes(&bytes[..n]).is_err(), "{n} bytes read");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(Artifact::from_bytes(&b).is_err(), "flip at {i} read");
        }
    }

    #[test]
    fn a_gpu_artifact_is_refused_by_the_cpu_loader() {
        let e = artifact().cpu_executable().unwrap_err();
        assert!(
            matches!(e, ArtifactError::WrongTarget { built: "sm_90", .. }),
            "{e}"
        );
    }

    #[test]
    fn missing_host_features_and_other_triples_are_named() {
        let code = CpuCode {
            triple: "x86_64-unknown-linux-gnu".into(),
            features: vec!["has_avx".into(), "has_fma".into()],
            kernels: vec![],
        };
        let e = check_host(&code, "x86_64-unknown-linux-gnu", &["has_avx".into()]).unwrap_err();
        assert!(e.to_string().contains("this host lacks has_fma"), "{e}");
        let e = check_host(&code, "aarch64-unknown-linux-gnu", &[]).unwrap_err();
        assert!(e.to_string().contains("target triple x86_64"), "{e}");
        let more = ["has_avx".into(), "has_fma".into(), "has_bmi2".into()];
        assert!(check_host(&code, "x86_64-unknown-linux-gnu", &more).is_ok());
    }
}
