//! Artifacts (`.kart`, docs/artifact.md) through the command line: a
//! compiled artifact gives the same bits as the source model run on the
//! CPU, and every kind of bad input is refused with exit code 1 and a
//! message that names the problem, never a panic.

mod common;

use common::{kiln, npy_bytes, text};

use std::path::{Path, PathBuf};
use std::process::Output;

use kiln_runtime::artifact::{Artifact, Code};

fn ok(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    text(&out.stdout)
}

/// A user error: exit code 1, a message containing `want` on stderr, and
/// no sign of a panic.
fn user_error(out: &Output, want: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(want), "expected `{want}` in:\n{err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
}

fn scratch(name: &str) -> common::Scratch {
    common::scratch(&format!("kart-{name}"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `examples/mlp.kiln` compiled for the CPU with random weights (seed 1)
/// at batch 4, written to `dir/mlp.kart`.
fn mlp_artifact(dir: &Path) -> PathBuf {
    let a = dir.join("mlp.kart");
    ok(&kiln(&[
        "compile",
        "examples/mlp.kiln",
        "-o",
        s(&a),
        "--target",
        "cpu",
        "--random-weights",
        "1",
        "--dim",
        "batch=4",
    ]));
    a
}

/// The section table as docs/artifact.md lays it out: (kind, offset, length).
fn sections(bytes: &[u8]) -> Vec<(u32, usize, usize)> {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let mut at = 16;
    at += 4 + u32_at(at) as usize; // kiln version
    at += 4 + u32_at(at) as usize; // target
    let n = u32_at(at) as usize;
    at += 4;
    (0..n)
        .map(|i| {
            let e = at + 32 * i;
            (u32_at(e), u64_at(e + 8), u64_at(e + 16))
        })
        .collect()
}

#[test]
fn artifact_runs_give_the_source_models_bits() {
    let dir = scratch("same-bits");
    for (model, dim) in [
        ("examples/mlp.kiln", "batch=4"),
        ("examples/ir/mlp.kir", "batch=3"),
        ("examples/ir/inverted_bottleneck.kir", "n=1"),
        ("examples/ir/decoder_block.kir", "seq=8"),
    ] {
        let name = Path::new(model).file_stem().unwrap().to_str().unwrap();
        let a = dir.join(format!("{name}.kart"));
        let (src_out, art_out) = (
            dir.join(format!("{name}-src")),
            dir.join(format!("{name}-art")),
        );
        let compiled = ok(&kiln(&[
            "compile",
            model,
            "-o",
            s(&a),
            "--target",
            "cpu",
            "--random-weights",
            "7",
            "--dim",
            dim,
        ]));
        assert!(compiled.contains("wrote"), "{compiled}");
        let source = ok(&kiln(&[
            "run",
            model,
            "--device",
            "cpu",
            "--random-inputs",
            "3",
            "--random-weights",
            "7",
            "--dim",
            dim,
            "--output-dir",
            s(&src_out),
        ]));
        let artifact = ok(&kiln(&[
            "run",
            s(&a),
            "--random-inputs",
            "3",
            "--dim",
            dim,
            "--output-dir",
            s(&art_out),
        ]));
        // The summaries end with a checksum of each output's bits; the
        // files hold floats as f32, which every float type converts to exactly.
        assert_eq!(source, artifact, "{model}");
        let mut files: Vec<_> = std::fs::read_dir(&src_out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        files.sort();
        assert!(!files.is_empty());
        for f in files {
            let a = std::fs::read(src_out.join(&f)).unwrap();
            let b = std::fs::read(art_out.join(&f)).unwrap();
            assert_eq!(a, b, "{model}: {f:?}");
        }
    }
}

#[test]
fn artifact_holds_what_the_format_says() {
    let dir = scratch("layout");
    let a = mlp_artifact(&dir);
    let bytes = std::fs::read(&a).unwrap();
    assert_eq!(&bytes[..8], b"KILNART\0");
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 7);
    let table = sections(&bytes);
    let kinds: Vec<u32> = table.iter().map(|t| t.0).collect();
    // program, clif, weights, buckets, autotune
    assert_eq!(kinds, [1, 2, 4, 5, 6]);
    for &(_, offset, _) in &table {
        assert_eq!(offset % 64, 0);
    }
    let last = table.last().unwrap();
    assert_eq!(last.1 + last.2, bytes.len());
    let art = Artifact::from_bytes(&bytes).unwrap();
    // The bind-time packing ran at compile time: no bind-time launch is
    // left, and the stored weights are the program's weights.
    assert!(art.program.launches.iter().all(|l| !l.bind_time));
    let w = art.weights.as_ref().unwrap();
    assert_eq!(w.len(), art.program.weights.len());
    assert_eq!(art.buckets, vec![vec![("batch".to_string(), 4)]]);
    assert!(art.autotune.is_empty());
    match &art.code {
        Code::Cpu(c) => assert_eq!(c.kernels.len(), art.program.launches.len()),
        Code::Ptx(_) => panic!("a cpu artifact holds PTX"),
    }
}

#[test]
fn damaged_artifacts_are_refused() {
    let dir = scratch("damaged");
    let a = mlp_artifact(&dir);
    let bytes = std::fs::read(&a).unwrap();
    let bad = dir.join("bad.kart");
    let run = |b: &[u8]| {
        std::fs::write(&bad, b).unwrap();
        kiln(&["run", s(&bad), "--random-inputs", "1", "--dim", "batch=4"])
    };
    // Truncated: inside the header, and inside the last section.
    user_error(&run(&bytes[..10]), "truncated artifact");
    user_error(
        &run(&bytes[..bytes.len() - 1]),
        "truncated artifact: the autotune section",
    );
    let half = &bytes[..bytes.len() / 2];
    user_error(&run(half), "truncated artifact");
    // One flipped byte in each section, and in the header.
    let names = [
        (1, "program"),
        (2, "clif"),
        (4, "weights"),
        (5, "buckets"),
        (6, "autotune"),
    ];
    for (kind, offset, len) in sections(&bytes) {
        let name = names.iter().find(|n| n.0 == kind).unwrap().1;
        if len == 0 {
            continue;
        }
        let mut b = bytes.clone();
        b[offset + len / 2] ^= 0x10;
        user_error(
            &run(&b),
            &format!("corrupt artifact: {name} section checksum"),
        );
    }
    let mut b = bytes.clone();
    b[20] ^= 0x01; // inside the kiln version string
    user_error(&run(&b), "corrupt artifact: header checksum");
    // Wrong magic, newer format version.
    let mut b = bytes.clone();
    b[..4].copy_from_slice(b"PK\x03\x04");
    user_error(&run(&b), "not a kiln artifact");
    let mut b = bytes.clone();
    b[8..12].copy_from_slice(&8u32.to_le_bytes());
    user_error(
        &run(&b),
        "format version 8 is newer than this runtime reads (version 7)",
    );
    let mut b = bytes.clone();
    b[8..12].copy_from_slice(&0u32.to_le_bytes());
    user_error(&run(&b), "artifact format version 0 is not valid");
    user_error(&run(b""), "truncated artifact");
}

#[test]
fn artifacts_for_another_target_are_refused() {
    let dir = scratch("target");
    // A GPU artifact on the CPU.
    let gpu = dir.join("mlp-sm90.kart");
    ok(&kiln(&[
        "compile",
        "examples/mlp.kiln",
        "-o",
        s(&gpu),
        "--target",
        "sm_90",
        "--random-weights",
        "1",
    ]));
    let art = Artifact::read(&gpu).unwrap();
    assert!(matches!(art.code, Code::Ptx(ref k) if k.len() == art.program.launches.len()));
    let out = kiln(&[
        "run",
        s(&gpu),
        "--device",
        "cpu",
        "--random-inputs",
        "1",
        "--dim",
        "batch=2",
    ]);
    user_error(
        &out,
        "artifact built for target sm_90, but it was asked to run on --device cpu",
    );
    // A CPU artifact on the GPU.
    let cpu = mlp_artifact(&dir);
    let out = kiln(&[
        "run",
        s(&cpu),
        "--device",
        "cuda",
        "--random-inputs",
        "1",
        "--dim",
        "batch=4",
    ]);
    user_error(
        &out,
        "artifact built for target cpu, but it was asked to run on --device cuda",
    );
    // A CPU artifact whose code needs a feature this host lacks.
    let mut art = Artifact::read(&cpu).unwrap();
    match &mut art.code {
        Code::Cpu(c) => c.features.push("has_feature_from_the_future".into()),
        Code::Ptx(_) => panic!("a cpu artifact holds PTX"),
    }
    let other = dir.join("other-cpu.kart");
    art.write(&other).unwrap();
    let out = kiln(&["run", s(&other), "--random-inputs", "1", "--dim", "batch=4"]);
    user_error(
        &out,
        "artifact built for another CPU: this host lacks has_feature_from_the_future",
    );
}

#[test]
fn bad_inputs_and_weights_are_refused() {
    let dir = scratch("inputs");
    let a = mlp_artifact(&dir);
    let npy = |name: &str, descr: &str, shape: &[usize], elem: usize| {
        let p = dir.join(name);
        let n: usize = shape.iter().product();
        std::fs::write(&p, npy_bytes(descr, shape, &vec![0u8; n * elem])).unwrap();
        p
    };
    let good = npy("x.npy", "<f4", &[4, 64], 4);
    let input = |p: &Path| format!("x={}", s(p));
    // A good file runs.
    ok(&kiln(&["run", s(&a), "--input", &input(&good)]));
    // Missing input.
    user_error(&kiln(&["run", s(&a)]), "input `x`: no value given");
    // Extra input.
    let extra = format!("y={}", s(&good));
    user_error(
        &kiln(&["run", s(&a), "--input", &input(&good), "--input", &extra]),
        "the model has no input `y`",
    );
    // Wrong shape: 63 columns for 64.
    let narrow = npy("narrow.npy", "<f4", &[4, 63], 4);
    user_error(
        &kiln(&["run", s(&a), "--input", &input(&narrow)]),
        "input `x`",
    );
    let out = kiln(&["run", s(&a), "--input", &input(&narrow)]);
    assert!(text(&out.stderr).contains("63"), "{}", text(&out.stderr));
    // Wrong dtype: integers for a float input.
    let ints = npy("ints.npy", "<i4", &[4, 64], 4);
    user_error(
        &kiln(&["run", s(&a), "--input", &input(&ints)]),
        "input `x`",
    );
    // Unreadable .npy.
    let junk = dir.join("junk.npy");
    std::fs::write(&junk, b"not a numpy file").unwrap();
    user_error(&kiln(&["run", s(&a), "--input", &input(&junk)]), "junk.npy");
    // A weights file missing a tensor, for an artifact compiled without weights.
    let bare = dir.join("bare.kart");
    let out = ok(&kiln(&[
        "compile",
        "examples/mlp.kiln",
        "-o",
        s(&bare),
        "--target",
        "cpu",
        "--dim",
        "batch=4",
    ]));
    assert!(out.contains("no weights"), "{out}");
    user_error(
        &kiln(&["run", s(&bare), "--input", &input(&good)]),
        "compiled without weights: pass --weights",
    );
    let art = Artifact::read(&bare).unwrap();
    let first = &art.program.buffers[art.program.weights[0]];
    let shape: Vec<usize> = first
        .shape
        .as_static()
        .unwrap()
        .iter()
        .map(|&d| d as usize)
        .collect();
    let data = vec![0u8; shape.iter().product::<usize>() * 4];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &data).unwrap();
    let partial = dir.join("partial.safetensors");
    safetensors::serialize_to_file([(first.name.as_str(), view)], None, &partial).unwrap();
    let second = &art.program.buffers[art.program.weights[1]].name;
    user_error(
        &kiln(&[
            "run",
            s(&bare),
            "--input",
            &input(&good),
            "--weights",
            s(&partial),
        ]),
        &format!(
            "weight `{second}`: {} has no tensor `{second}`",
            s(&partial)
        ),
    );
    // Weights for an artifact that holds its own.
    user_error(
        &kiln(&[
            "run",
            s(&a),
            "--input",
            &input(&good),
            "--weights",
            s(&partial),
        ]),
        "holds its weights",
    );
}

/// The JIT's compile cache: the second compile of an unchanged model loads
/// the stored kernels and gives the first compile's bits (and the
/// interpreter's values within the f32 tolerance); a changed model, other
/// dims, a damaged entry and the cache turned off all compile afresh.
#[test]
fn the_jit_cache_reuses_an_unchanged_models_kernels() {
    use kiln::jit::{self, Cache, JitOptions};
    use kiln_dialect::DType;
    use kiln_runtime::HostTensor;
    use std::collections::HashMap;

    let dir = scratch("jit-cache");
    let cache = dir.join("cache");
    let opts = JitOptions {
        cache: Cache::Dir(cache.clone()),
        ..JitOptions::default()
    };
    let src = std::fs::read_to_string(common::root().join("examples/mlp.kiln")).expect("mlp");
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(common::seed());
    let x = HostTensor::from_values(
        DType::F32,
        &[3, 64],
        &common::values(&mut rng, DType::F32, 192),
    );
    let inputs = HashMap::from([("x".to_string(), x)]);
    let run = |src: &str, opts: &JitOptions| {
        let mut m = jit::compile_source("mlp.kiln", src, opts).expect("compiles");
        m.bind_random_weights(3).expect("weights");
        let y = m.run(&inputs).expect("runs");
        (m.cache_hit(), y)
    };
    let entries = || {
        std::fs::read_dir(&cache)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "kart"))
                    .count()
            })
            .unwrap_or(0)
    };
    let (hit, first) = run(&src, &opts);
    assert!(!hit, "an empty cache cannot hit");
    assert_eq!(entries(), 1);
    let (hit, second) = run(&src, &opts);
    assert!(hit, "the unchanged model is not loaded from the cache");
    assert_eq!(first, second, "the cached kernels give other bits");
    // the interpreter on the same weights and inputs
    let m = kiln::model::load_source("mlp.kiln", &src).expect("loads");
    let mut bound: HashMap<String, kiln_dialect::interp::Tensor> = kiln::data::bind_weights(
        &m.graph,
        &kiln::data::WeightSource::Random(3),
        &m.weights,
        &Default::default(),
    )
    .expect("weights");
    for (k, t) in &inputs {
        bound.insert(k.clone(), kiln::data::to_interp(t));
    }
    let want = kiln_dialect::interp::run(&m.graph, &bound).expect("interprets");
    for ((name, got), (_, w)) in second.iter().zip(&want) {
        let got = kiln::data::to_interp(got);
        let scale = w.data.iter().fold(1e-30f64, |a, v| a.max(v.abs()));
        let err = got
            .data
            .iter()
            .zip(&w.data)
            .fold(0.0f64, |a, (g, w)| a.max((g - w).abs()));
        assert!(
            err <= common::tolerance(DType::F32) * scale,
            "{name}: {err} of {scale}"
        );
    }
    // a changed model and other dims are other entries
    let changed = src.replacen("gelu(", "relu(", 1);
    assert_ne!(changed, src, "examples/mlp.kiln has no gelu to change");
    assert!(!run(&changed, &opts).0);
    let other_dims = JitOptions {
        dims: HashMap::from([("batch".to_string(), 512)]),
        ..opts.clone()
    };
    assert!(!run(&src, &other_dims).0);
    assert_eq!(entries(), 3);
    // a damaged entry is compiled again (and replaced)
    for e in std::fs::read_dir(&cache).expect("cache").flatten() {
        let mut b = std::fs::read(e.path()).expect("entry");
        let at = b.len() / 2;
        b[at] ^= 0x55;
        std::fs::write(e.path(), b).expect("damaged");
    }
    let (hit, again) = run(&src, &opts);
    assert!(!hit, "a damaged entry was used");
    assert_eq!(again, first);
    assert!(run(&src, &opts).0, "the replaced entry is not used");
    // off: nothing is read or written
    let off = JitOptions {
        cache: Cache::Off,
        ..JitOptions::default()
    };
    assert!(!run(&src, &off).0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pruning removes the least recently used entries first.
#[test]
fn the_jit_cache_prunes_the_oldest_entries() {
    let dir = scratch("jit-prune");
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let p = dir.join(format!("{name}.kart"));
        std::fs::write(&p, vec![0u8; 100]).expect("entry");
        let f = std::fs::File::options()
            .append(true)
            .open(&p)
            .expect("open");
        let t =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + i as u64);
        f.set_modified(t).expect("mtime");
    }
    std::fs::write(dir.join("other.txt"), vec![0u8; 500]).expect("other");
    kiln::cache::prune(&dir, 250);
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["b.kart", "c.kart", "other.txt"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A GPU artifact compiled where `ptxas` is found holds a cubin section:
/// one ELF for the CUDA machine per launch, assembled for the target's
/// architecture, the same bytes `ptxas` makes of the stored PTX; a flipped
/// byte in it is refused; `--no-cubins` stores PTX only.
#[test]
fn gpu_artifacts_hold_cubins_when_ptxas_is_found() {
    let Some(ptxas) = kiln::cubin::find_ptxas() else {
        assert!(
            std::env::var("KILN_REQUIRE_PTXAS").as_deref() != Ok("1"),
            "KILN_REQUIRE_PTXAS=1 but no ptxas (set KILN_PTXAS)"
        );
        eprintln!("notice: no ptxas found (KILN_PTXAS, PATH): cubins are not checked");
        return;
    };
    let dir = scratch("cubins");
    for (target, arch) in [("sm_90", "sm_90a"), ("sm_80", "sm_80")] {
        let path = dir.join(format!("mlp-{target}.kart"));
        let out = ok(&kiln(&[
            "compile",
            "examples/mlp.kiln",
            "-o",
            s(&path),
            "--target",
            target,
            "--random-weights",
            "1",
        ]));
        assert!(out.contains(&format!("PTX and cubins for {arch}")), "{out}");
        let bytes = std::fs::read(&path).unwrap();
        let kinds: Vec<u32> = sections(&bytes).iter().map(|t| t.0).collect();
        assert_eq!(kinds, [1, 3, 4, 5, 6, 7]);
        let art = Artifact::from_bytes(&bytes).unwrap();
        let cubins = art.cubins.as_ref().expect("a cubin section");
        assert_eq!(cubins.arch, arch);
        let Code::Ptx(kernels) = &art.code else {
            panic!("a GPU artifact holds CLIF")
        };
        assert_eq!(cubins.modules.len(), art.program.launches.len());
        for m in &cubins.modules {
            assert_eq!(&m[..4], b"\x7fELF", "not an ELF file");
            // e_machine: EM_CUDA
            assert_eq!(u16::from_le_bytes([m[18], m[19]]), 190);
        }
        // the first kernel assembled here gives the same bytes
        let ptx = dir.join("k0.ptx");
        let cubin = dir.join("k0.cubin");
        std::fs::write(&ptx, &kernels[0].ptx).unwrap();
        let status = std::process::Command::new(&ptxas)
            .arg(format!("-arch={arch}"))
            .arg("-o")
            .arg(&cubin)
            .arg(&ptx)
            .status()
            .expect("ptxas runs");
        assert!(status.success());
        assert_eq!(std::fs::read(&cubin).unwrap(), cubins.modules[0]);
        // a flipped byte in the cubin section
        let (_, offset, len) = *sections(&bytes).iter().find(|t| t.0 == 7).unwrap();
        let mut b = bytes.clone();
        b[offset + len / 2] ^= 0x10;
        let bad = dir.join("bad.kart");
        std::fs::write(&bad, &b).unwrap();
        user_error(
            &kiln(&["run", s(&bad), "--device", "cuda", "--random-inputs", "1"]),
            "corrupt artifact: cubin section checksum",
        );
    }
    let plain = dir.join("mlp-ptx.kart");
    let out = ok(&kiln(&[
        "compile",
        "examples/mlp.kiln",
        "-o",
        s(&plain),
        "--target",
        "sm_90",
        "--no-cubins",
    ]));
    assert!(out.contains("kernel(s) as PTX,"), "{out}");
    assert!(Artifact::read(&plain).unwrap().cubins.is_none());
}

/// A GPU artifact stores the weight layouts its kernels read, made at
/// compile time: `examples/llama_w4a16.kiln`'s seven int4 projections (on
/// GPU targets a product's rotary embedding and views are fused into its
/// readers, not into the product) read their codes in fragment order. The
/// artifact keeps no bind-time launch, holds the seven copies
/// `[N/64, K/32, 2, 32, 32]`, and runs on the PTX
/// interpreter to the same bits as the source model there, whose bind-time
/// launches make the copies on the (simulated) GPU.
#[test]
fn gpu_artifacts_store_the_weight_layouts_their_kernels_read() {
    let dir = scratch("layouts");
    let path = dir.join("w4a16.kart");
    ok(&kiln(&[
        "compile",
        "examples/llama_w4a16.kiln",
        "-o",
        s(&path),
        "--target",
        "sm_90",
        "--random-weights",
        "3",
        "--dim",
        "seq=4",
        "--no-cubins",
    ]));
    let art = Artifact::read(&path).unwrap();
    assert!(art.program.launches.iter().all(|l| !l.bind_time));
    let weights = art.weights.as_ref().expect("stored weights");
    assert_eq!(weights.len(), art.program.weights.len());
    let fragments: Vec<&str> = weights
        .iter()
        .filter(|(_, t)| t.dtype == kiln_dialect::DType::I4 && t.shape.len() == 5)
        .map(|(n, t)| {
            assert_eq!(&t.shape[2..], [2, 32, 32], "{n}");
            n.as_str()
        })
        .collect();
    assert_eq!(fragments.len(), 7, "{fragments:?}");
    let run = |what: &str| {
        let mut args = vec!["run", what, "--device", "cuda-sim", "--random-inputs", "5"];
        args.extend(["--dim", "seq=4"]);
        if what.ends_with(".kiln") {
            args.extend(["--random-weights", "3"]);
        }
        ok(&kiln(&args))
    };
    assert_eq!(run(s(&path)), run("examples/llama_w4a16.kiln"));
}

/// `kiln bench` takes artifacts: it times the stored kernels (reporting the
/// load time instead of a compile time), and refuses what `kiln run`
/// refuses.
#[test]
fn bench_takes_artifacts() {
    let dir = scratch("bench");
    let a = mlp_artifact(&dir);
    let out = ok(&kiln(&[
        "bench",
        s(&a),
        "--dim",
        "batch=4",
        "--iters",
        "3",
        "--warmup",
        "1",
    ]));
    assert!(
        out.contains("`mlp` on cpu: median") && out.contains("over 3 runs (1 warm-up); loaded in"),
        "{out}"
    );
    let json = ok(&kiln(&[
        "bench",
        s(&a),
        "--dim",
        "batch=4",
        "--iters",
        "2",
        "--json",
    ]));
    assert!(
        json.starts_with("{\"model\": \"mlp\", \"device\": \"cpu\", \"iters\": 2,")
            && json.contains("\"load_ms\": "),
        "{json}"
    );
    user_error(
        &kiln(&["bench", s(&a), "--device", "cuda", "--dim", "batch=4"]),
        "artifact built for target cpu, but it was asked to run on --device cuda",
    );
    user_error(
        &kiln(&["bench", s(&a), "--random-weights", "2", "--dim", "batch=4"]),
        "holds its weights",
    );
}

/// `kiln compile --autotune` (here on the PTX interpreter, which checks
/// the mechanism; its times say nothing about a GPU): every run-time
/// kernel with choices is timed under each distinct candidate, the
/// artifact records one `ptx-options` choice per tuned kernel, holds that
/// candidate's module for it, and runs as the source model does; a CPU
/// target is refused.
#[test]
fn autotuned_artifacts_record_and_hold_their_choices() {
    use kiln::autotune::{DEFAULT, candidates};
    use kiln::codegen::ptx::{PtxArch, PtxOptions, compile_kernel_with};
    let dir = scratch("autotune");
    let model = dir.join("t.kiln");
    std::fs::write(
        &model,
        "model t {\n    input x: bf16[m, 64]\n    weight w: bf16[64, 72]\n    \
         output y = softmax(x @ w)\n}\n",
    )
    .unwrap();
    let path = dir.join("t.kart");
    let args = |target: &'static str| {
        vec![
            "compile".to_string(),
            s(&model).to_string(),
            "-o".into(),
            s(&path).to_string(),
            "--target".into(),
            target.into(),
            "--random-weights".into(),
            "2".into(),
            "--dim".into(),
            "m=40".into(),
            "--no-cubins".into(),
            "--autotune=cuda-sim".into(),
        ]
    };
    let argv = args("sm_90");
    let out = ok(&kiln(&argv.iter().map(String::as_str).collect::<Vec<_>>()));
    let art = Artifact::read(&path).unwrap();
    // The matmul and the softmax rows both have choices.
    assert_eq!(art.autotune.len(), 2, "{:?}\n{out}", art.autotune);
    assert_eq!(out.matches("autotune launch").count(), 2, "{out}");
    let Code::Ptx(kernels) = &art.code else {
        panic!("PTX code")
    };
    let base = PtxOptions::from_env();
    for c in &art.autotune {
        assert_eq!(c.key, "ptx-options");
        let (i, launch) = art
            .program
            .launches
            .iter()
            .enumerate()
            .find(|(_, l)| l.kernel.name == c.kernel)
            .expect("a tuned kernel of the program");
        let default = compile_kernel_with(&launch.kernel, PtxArch::Sm90a, &base).unwrap();
        let cands = candidates(&default.entry, PtxArch::Sm90a, &base);
        let (_, opts) = cands
            .iter()
            .find(|(label, _)| *label == c.value)
            .unwrap_or_else(|| panic!("{} is no candidate of {}", c.value, default.entry));
        let want = compile_kernel_with(&launch.kernel, PtxArch::Sm90a, opts).unwrap();
        assert_eq!(
            kernels[i].ptx, want.ptx,
            "{}: not the chosen module",
            c.kernel
        );
        if c.value != DEFAULT {
            assert_ne!(want.ptx, default.ptx, "{}", c.value);
        }
    }
    let run = |what: &str| {
        let mut args = vec!["run", what, "--device", "cuda-sim", "--random-inputs", "5"];
        args.extend(["--dim", "m=40"]);
        if what.ends_with(".kiln") {
            args.extend(["--random-weights", "2"]);
        }
        ok(&kiln(&args))
    };
    assert_eq!(run(s(&path)), run(s(&model)));
    let argv = args("cpu");
    user_error(
        &kiln(&argv.iter().map(String::as_str).collect::<Vec<_>>()),
        "--autotune tunes GPU kernels",
    );
}
