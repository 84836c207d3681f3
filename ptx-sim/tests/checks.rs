//! The interpreter against hand-computed results, and each of its checks
//! against a kernel that breaks it.

use kiln_ptx_sim::{Device, Launch, Module, SimError, run};

/// A module of one entry `k(.u64 p_out, .u64 p_in)` with `body`.
fn module(shared: &str, body: &str) -> Module {
    let text = format!(
        ".version 8.0\n.target sm_80\n.address_size 64\n{shared}\n\
         .visible .entry k(\n\t.param .u64 p_out,\n\t.param .u64 p_in\n)\n{{\n\
         \t.reg .b32 %r<64>;\n\t.reg .b64 %rd<64>;\n\t.reg .f32 %f<64>;\n\t.reg .pred %p<8>;\n\
         \tld.param.u64 %rd0, [p_out];\n\tld.param.u64 %rd1, [p_in];\n\
         \tmov.u32 %r0, %tid.x;\n\tmul.wide.u32 %rd2, %r0, 4;\n\
         \tadd.s64 %rd3, %rd0, %rd2;\n\tadd.s64 %rd4, %rd1, %rd2;\n{body}\n\tret;\n}}\n"
    );
    Module::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Runs `m` with one block of `threads` over an output of `n` u32 words
/// and an input of `input`; the output words.
fn go(m: &Module, threads: u32, n: usize, input: &[u32]) -> Result<Vec<u32>, SimError> {
    let mut dev = Device::new();
    let out = dev.alloc(vec![0; n * 4]);
    let inp = dev.alloc(input.iter().flat_map(|w| w.to_le_bytes()).collect());
    let launch = Launch {
        grid: 1,
        block: threads,
        dynamic_shared: 0,
    };
    run(m, "k", launch, &[out, inp], &mut dev, 1 << 24)?;
    Ok(dev
        .bytes(out)
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

#[test]
fn arithmetic_as_computed_by_hand() {
    // out[t] = min(in[t] * 3 - 7, 100) as s32; f32: (x + 0.5) * 2 rounded.
    let m = module(
        "",
        "\tld.global.b32 %r1, [%rd4];\n\tmad.lo.s32 %r2, %r1, 3, -7;\n\
         \tmin.s32 %r3, %r2, 100;\n\tst.global.b32 [%rd3], %r3;",
    );
    let got = go(&m, 32, 32, &(0..32).collect::<Vec<u32>>()).unwrap();
    let want: Vec<u32> = (0..32).map(|x: i32| (x * 3 - 7).min(100) as u32).collect();
    assert_eq!(got, want);
    let m = module(
        "",
        "\tld.global.f32 %f1, [%rd4];\n\tadd.rn.f32 %f2, %f1, 0f3F000000;\n\
         \tmul.rn.f32 %f3, %f2, 0f40000000;\n\tcvt.rni.s32.f32 %r5, %f3;\n\
         \tst.global.b32 [%rd3], %r5;",
    );
    let xs: Vec<u32> = (0..32).map(|i| (i as f32 * 0.25 - 3.0).to_bits()).collect();
    let got = go(&m, 32, 32, &xs).unwrap();
    let want: Vec<u32> = (0..32)
        .map(|i| (((i as f32 * 0.25 - 3.0) + 0.5) * 2.0).round_ties_even() as i32 as u32)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn lop3_applies_its_truth_table() {
    // (a & 0x000f000f) | 0x43004300 (table 0xEA), and a ^ b ^ c (0x96)
    // with b = 0x0ff00ff0, c = a << 7: against the same by hand.
    let m = module(
        "",
        "\tld.global.b32 %r1, [%rd4];\n\tlop3.b32 %r2, %r1, 0x000f000f, 0x43004300, 0xEA;\n\
         \tshl.b32 %r3, %r1, 7;\n\tlop3.b32 %r4, %r1, 0x0ff00ff0, %r3, 0x96;\n\
         \tadd.u32 %r5, %r2, %r4;\n\tst.global.b32 [%rd3], %r5;",
    );
    let xs: Vec<u32> = (0..32u32)
        .map(|i| i.wrapping_mul(0x9E37_79B9) ^ (i << 3))
        .collect();
    let got = go(&m, 32, 32, &xs).unwrap();
    let want: Vec<u32> = xs
        .iter()
        .map(|&a| ((a & 0x000f_000f) | 0x4300_4300).wrapping_add(a ^ 0x0ff0_0ff0 ^ (a << 7)))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn an_atomic_add_returns_the_old_value() {
    // Each thread adds in[t] to in[0] (the input is the counter's buffer)
    // and stores the value it saw: threads run in order here, so thread t
    // sees in[0] plus the inputs of threads 0 .. t-1 (and thread 0 its own
    // start value). A `.cg` load of the counter after a fence and a barrier
    // sees the sum.
    let m = module(
        "",
        "\tld.global.b32 %r1, [%rd4];\n\tmembar.gl;\n\
         \tatom.acq_rel.gpu.global.add.u32 %r2, [%rd1], %r1;\n\
         \tfence.acq_rel.gpu;\n\tbar.sync 0;\n\tld.global.cg.u32 %r3, [%rd1];\n\
         \tst.global.b32 [%rd3], %r2;\n\tst.global.b32 [%rd3+128], %r3;",
    );
    let xs: Vec<u32> = (0..32u32).map(|i| 3 * i + 5).collect();
    let got = go(&m, 32, 64, &xs).unwrap();
    let mut counter = xs[0];
    for t in 0..32 {
        assert_eq!(got[t], counter, "thread {t}");
        counter += xs[t];
    }
    assert!(got[32..].iter().all(|&x| x == counter), "{got:?}");
}

/// A prefetch changes no value; one past every allocation is reported
/// (the address a kernel prefetches is one it will load).
#[test]
fn prefetches_change_nothing_and_stray_ones_are_reported() {
    let body = |off: u32| {
        format!(
            "\tprefetch.global.L1 [%rd4+{off}];\n\tprefetch.global.L2 [%rd4];\n\
             \tld.global.b32 %r1, [%rd4];\n\tadd.s32 %r1, %r1, 1;\n\tst.global.b32 [%rd3], %r1;"
        )
    };
    let xs: Vec<u32> = (0..32u32).map(|i| 7 * i + 2).collect();
    let got = go(&module("", &body(0)), 32, 32, &xs).unwrap();
    assert_eq!(got, xs.iter().map(|x| x + 1).collect::<Vec<_>>());
    // Thread 0 prefetches byte 4096 of a 128-byte input.
    let err = go(&module("", &body(4096)), 32, 32, &xs).unwrap_err();
    assert!(
        err.to_string()
            .contains("byte 4096 of buffer 1, outside it"),
        "{err}"
    );
}

#[test]
fn a_butterfly_shuffle_sums_the_warp() {
    let mut body = String::from("\tld.global.b32 %r1, [%rd4];\n");
    for (i, d) in [16, 8, 4, 2, 1].iter().enumerate() {
        body.push_str(&format!(
            "\tshfl.sync.bfly.b32 %r{}, %r{}, {d}, 31, -1;\n\tadd.s32 %r{}, %r{}, %r{};\n",
            10 + i,
            1 + i,
            2 + i,
            1 + i,
            10 + i
        ));
    }
    body.push_str("\tst.global.b32 [%rd3], %r6;");
    let m = module("", &body);
    let input: Vec<u32> = (0..64).map(|i| i * i + 1).collect();
    let got = go(&m, 64, 64, &input).unwrap();
    let warp0: u32 = input[..32].iter().sum();
    let warp1: u32 = input[32..].iter().sum();
    assert!(got[..32].iter().all(|&x| x == warp0), "{got:?}");
    assert!(got[32..].iter().all(|&x| x == warp1), "{got:?}");
}

/// Thread t writes its word to shared memory, the block synchronizes, and
/// thread t reads its neighbour's: correct with the barrier, a race
/// without it.
#[test]
fn shared_memory_races_are_found_and_barriers_order_them() {
    let shared = ".shared .align 4 .b8 buf[256];";
    let body = |bar: &str| {
        format!(
            "\tld.global.b32 %r1, [%rd4];\n\tmov.u32 %r2, buf;\n\tmad.lo.u32 %r3, %r0, 4, %r2;\n\
             \tst.shared.b32 [%r3], %r1;\n{bar}\tadd.u32 %r4, %r0, 1;\n\tand.b32 %r4, %r4, 63;\n\
             \tmad.lo.u32 %r5, %r4, 4, %r2;\n\tld.shared.b32 %r6, [%r5];\n\
             \tst.global.b32 [%rd3], %r6;"
        )
    };
    let input: Vec<u32> = (100..164).collect();
    let got = go(&module(shared, &body("\tbar.sync 0;\n")), 64, 64, &input).unwrap();
    let want: Vec<u32> = (0..64).map(|t| input[(t + 1) % 64]).collect();
    assert_eq!(got, want);
    let e = go(&module(shared, &body("")), 64, 64, &input).unwrap_err();
    assert!(e.to_string().contains("shared-memory race"), "{e}");
}

/// The same exchange within each warp (thread t reads lane t + 1 of its
/// own warp): ordered by the warp's own barrier (`bar.warp.sync`), a race
/// without it; a warp's barrier does not order another warp's threads
/// (thread t reads thread t + 32's word).
#[test]
fn a_warp_barrier_orders_the_warps_own_lanes_only() {
    let shared = ".shared .align 4 .b8 buf[256];";
    let body = |bar: &str, other: &str| {
        format!(
            "\tld.global.b32 %r1, [%rd4];\n\tmov.u32 %r2, buf;\n\tmad.lo.u32 %r3, %r0, 4, %r2;\n\
             \tst.shared.b32 [%r3], %r1;\n{bar}\t{other}\n\
             \tmad.lo.u32 %r5, %r4, 4, %r2;\n\tld.shared.b32 %r6, [%r5];\n\
             \tst.global.b32 [%rd3], %r6;"
        )
    };
    // lane + 1 within the warp: (t & ~31) | ((t + 1) & 31)
    let same = "add.u32 %r4, %r0, 1;\n\tand.b32 %r4, %r4, 31;\n\tand.b32 %r7, %r0, 32;\n\
                \tor.b32 %r4, %r4, %r7;";
    let input: Vec<u32> = (100..164).collect();
    let bar = "\tbar.warp.sync -1;\n";
    let got = go(&module(shared, &body(bar, same)), 64, 64, &input).unwrap();
    let want: Vec<u32> = (0..64).map(|t| input[(t & !31) | ((t + 1) & 31)]).collect();
    assert_eq!(got, want);
    let e = go(&module(shared, &body("", same)), 64, 64, &input).unwrap_err();
    assert!(e.to_string().contains("shared-memory race"), "{e}");
    let across = "xor.b32 %r4, %r0, 32;";
    let e = go(&module(shared, &body(bar, across)), 64, 64, &input).unwrap_err();
    assert!(e.to_string().contains("shared-memory race"), "{e}");
}

#[test]
fn out_of_bounds_and_misaligned_accesses_are_errors() {
    // Thread 31 reads one word past the 31-word input.
    let m = module(
        "",
        "\tld.global.b32 %r1, [%rd4];\n\tst.global.b32 [%rd3], %r1;",
    );
    let e = go(&m, 32, 32, &[7; 31]).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("thread 31") && s.contains("outside"), "{s}");
    // A 16-byte load at a 4-byte aligned address.
    let m = module(
        "",
        "\tld.global.v4.b32 {%r1, %r2, %r3, %r4}, [%rd4+4];\n\tst.global.b32 [%rd3], %r1;",
    );
    let e = go(&m, 32, 32, &[1; 64]).unwrap_err();
    assert!(e.to_string().contains("misaligned"), "{e}");
}

#[test]
fn a_barrier_that_some_threads_skip_is_a_deadlock() {
    // Half a warp waits at a barrier, the other half at a shuffle that
    // the first half never reaches: stuck.
    let m = module(
        "",
        "\tsetp.lt.u32 %p1, %r0, 16;\n\t@%p1 bra $L_a;\n\tbar.sync 0;\n\tbra.uni $L_b;\n\
         $L_a:\n\tshfl.sync.bfly.b32 %r1, %r0, 1, 31, -1;\n$L_b:\n\tst.global.b32 [%rd3], %r0;",
    );
    let e = go(&m, 32, 32, &[0; 32]).unwrap_err();
    assert!(matches!(e, SimError::Stuck { .. }), "{e}");
    // Exited threads do not hold a barrier back.
    let m = module(
        "",
        "\tsetp.ge.u32 %p1, %r0, 32;\n\t@%p1 ret;\n\tbar.sync 0;\n\tst.global.b32 [%rd3], %r0;",
    );
    let got = go(&m, 64, 64, &[0; 64]).unwrap();
    assert_eq!(&got[..32], &(0..32).collect::<Vec<u32>>()[..]);
    assert!(got[32..].iter().all(|&x| x == 0));
}

/// A `cp.async` lands when its group is waited for: reading before the
/// wait reads the old bytes.
#[test]
fn async_copies_land_at_their_wait() {
    let shared = ".shared .align 16 .b8 buf[1024];";
    let body = |wait: &str| {
        format!(
            "\tmov.u32 %r2, buf;\n\tmul.lo.u32 %r3, %r0, 16;\n\tadd.u32 %r3, %r3, %r2;\n\
             \tmov.u32 %r9, 0;\n\tst.shared.b32 [%r3], %r9;\n\
             \tmul.wide.u32 %rd5, %r0, 16;\n\tadd.s64 %rd6, %rd1, %rd5;\n\
             \tcp.async.cg.shared.global [%r3], [%rd6], 16, 16;\n\tcp.async.commit_group;\n\
             {wait}\tld.shared.b32 %r4, [%r3];\n\tst.global.b32 [%rd3], %r4;"
        )
    };
    let input: Vec<u32> = (0..128).map(|i| i + 1000).collect();
    let got = go(
        &module(shared, &body("\tcp.async.wait_group 0;\n")),
        32,
        32,
        &input,
    )
    .unwrap();
    assert_eq!(got, (0..32).map(|t| input[4 * t]).collect::<Vec<u32>>());
    let early = go(&module(shared, &body("")), 32, 32, &input).unwrap();
    assert!(early.iter().all(|&x| x == 0), "{early:?}");
}

/// `mma.sync.m16n8k16` with A[i][k] = i + k / 16, B[k][j] = 1 if k == j
/// (so D = A's first eight columns plus C), fragments built as the PTX
/// ISA lays them out.
#[test]
fn an_mma_by_hand() {
    use half::bf16;
    let a = |i: usize, k: usize| bf16::from_f32(i as f32 + k as f32 / 16.0);
    let b = |k: usize, j: usize| bf16::from_f32(if k == j { 1.0 } else { 0.0 });
    // Per lane: a0..a3, b0..b1, c0..c3 as input words.
    let mut input = Vec::new();
    for l in 0..32usize {
        let (g, q) = (l / 4, l % 4);
        let pack = |lo: bf16, hi: bf16| u32::from(lo.to_bits()) | (u32::from(hi.to_bits()) << 16);
        for j in 0..4 {
            let (row, col) = (g + 8 * (j % 2), 2 * q + 8 * (j / 2));
            input.push(pack(a(row, col), a(row, col + 1)));
        }
        for j in 0..2 {
            let k = 2 * q + 8 * j;
            input.push(pack(b(k, g), b(k + 1, g)));
        }
        for _ in 0..4 {
            input.push(0.5f32.to_bits());
        }
    }
    let mut body = String::from("\tmul.wide.u32 %rd5, %r0, 40;\n\tadd.s64 %rd6, %rd1, %rd5;\n");
    for j in 0..10 {
        body.push_str(&format!(
            "\tld.global.b32 %r{}, [%rd6+{}];\n",
            10 + j,
            4 * j
        ));
    }
    body.push_str(
        "\tmma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f0, %f1, %f2, %f3}, \
         {%r10, %r11, %r12, %r13}, {%r14, %r15}, {%f4, %f5, %f6, %f7};\n",
    );
    body.push_str(
        "\tmov.b32 %f4, %r16;\n\tmov.b32 %f5, %r17;\n\tmov.b32 %f6, %r18;\n\tmov.b32 %f7, %r19;\n",
    );
    body.push_str("\tmul.wide.u32 %rd7, %r0, 16;\n\tadd.s64 %rd8, %rd0, %rd7;\n");
    body.push_str("\tst.global.v4.f32 [%rd8], {%f0, %f1, %f2, %f3};");
    // (c is read from %f4..%f7 before they are set: load it first.)
    let body = body.replace(
        "\tmma.sync",
        "\tmov.b32 %f4, %r16;\n\tmov.b32 %f5, %r17;\n\tmov.b32 %f6, %r18;\n\tmov.b32 %f7, %r19;\n\tmma.sync",
    );
    let m = module("", &body);
    let got = go(&m, 32, 128, &input).unwrap();
    for l in 0..32usize {
        let (g, q) = (l / 4, l % 4);
        for j in 0..4 {
            let (row, col) = (g + 8 * (j / 2), 2 * q + j % 2);
            let want = a(row, col).to_f32() + 0.5;
            let got = f32::from_bits(got[4 * l + j]);
            assert_eq!(got, want, "lane {l} element {j}");
        }
    }
}

/// `mma.sync.m16n8k32` with s8 operands and s32 accumulators against the
/// product computed by hand, fragments as the PTX ISA lays them out.
#[test]
fn an_int8_mma_by_hand() {
    let a = |i: usize, k: usize| ((i * 7 + k * 3) % 23) as i32 - 11;
    let b = |k: usize, j: usize| ((k * 5 + j) % 17) as i32 - 8;
    let c = |i: usize, j: usize| (i * 100 + j) as i32 - 700;
    let pack = |v: [i32; 4]| {
        v.iter()
            .enumerate()
            .fold(0u32, |w, (i, &x)| w | ((x as u8 as u32) << (8 * i)))
    };
    let mut input = Vec::new();
    for l in 0..32usize {
        let (g, q) = (l / 4, l % 4);
        for j in 0..4 {
            let (row, k0) = (g + 8 * (j % 2), 4 * q + 16 * (j / 2));
            input.push(pack([0, 1, 2, 3].map(|i| a(row, k0 + i))));
        }
        for j in 0..2 {
            let k0 = 4 * q + 16 * j;
            input.push(pack([0, 1, 2, 3].map(|i| b(k0 + i, g))));
        }
        for j in 0..4 {
            input.push(c(g + 8 * (j / 2), 2 * q + j % 2) as u32);
        }
    }
    let mut body = String::from("\tmul.wide.u32 %rd5, %r0, 40;\n\tadd.s64 %rd6, %rd1, %rd5;\n");
    for j in 0..10 {
        body.push_str(&format!(
            "\tld.global.b32 %r{}, [%rd6+{}];\n",
            10 + j,
            4 * j
        ));
    }
    body.push_str(
        "\tmma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%r20, %r21, %r22, %r23}, \
         {%r10, %r11, %r12, %r13}, {%r14, %r15}, {%r16, %r17, %r18, %r19};\n\
         \tmul.wide.u32 %rd7, %r0, 16;\n\tadd.s64 %rd8, %rd0, %rd7;\n\
         \tst.global.v4.b32 [%rd8], {%r20, %r21, %r22, %r23};",
    );
    let got = go(&module("", &body), 32, 128, &input).unwrap();
    for l in 0..32usize {
        let (g, q) = (l / 4, l % 4);
        for j in 0..4 {
            let (row, col) = (g + 8 * (j / 2), 2 * q + j % 2);
            let want: i32 = c(row, col) + (0..32).map(|k| a(row, k) * b(k, col)).sum::<i32>();
            assert_eq!(got[4 * l + j] as i32, want, "lane {l} element {j}");
        }
    }
}

/// A tensor copy (`cp.async.bulk.tensor`) of a 64 x 8 box of a bf16
/// tensor of 5 rows, at row 1: the last four rows of the box lie outside
/// and read as zeros; the box lands with the 128-byte swizzle. The copy's
/// bytes complete an mbarrier the threads wait on; the producer is the
/// last thread, so the others wait first (and run again once it has
/// copied). Without a producer the wait never ends, which is reported.
#[test]
fn tensor_copies_land_swizzled_and_complete_their_barrier() {
    use kiln_ptx_sim::tensor_map::TensorMap;
    let text = |producer: bool| {
        let issue = if producer {
            "\t@%p1 mbarrier.arrive.expect_tx.shared::cta.b64 %rd10, [%r10], 1024;\n\
             \tmov.u32 %r12, 0;\n\tmov.u32 %r13, 1;\n\
             \t@%p1 cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes \
             [%r11], [%rd5, {%r12, %r13}], [%r10];\n"
        } else {
            ""
        };
        format!(
            ".version 8.0\n.target sm_90a\n.address_size 64\n\
             .shared .align 1024 .b8 buf[1024];\n.shared .align 8 .b8 bar[8];\n\
             .visible .entry k(\n\t.param .u64 p_out,\n\t.param .u64 p_map\n)\n{{\n\
             \t.reg .b32 %r<64>;\n\t.reg .b64 %rd<64>;\n\t.reg .pred %p<8>;\n\
             \tld.param.u64 %rd0, [p_out];\n\tld.param.u64 %rd5, [p_map];\n\
             \tmov.u32 %r0, %tid.x;\n\tmul.wide.u32 %rd2, %r0, 4;\n\tadd.s64 %rd3, %rd0, %rd2;\n\
             \tmov.u32 %r10, bar;\n\tmov.u32 %r11, buf;\n\tsetp.eq.u32 %p1, %r0, 63;\n\
             \t@%p1 mbarrier.init.shared::cta.b64 [%r10], 1;\n\
             \tfence.mbarrier_init.release.cluster;\n\tbar.sync 0;\n{issue}\
             $L_wait:\n\tmbarrier.try_wait.parity.shared::cta.b64 %p2, [%r10], 0;\n\
             \t@!%p2 bra $L_wait;\n\
             \tmad.lo.u32 %r20, %r0, 16, %r11;\n\tld.shared.b32 %r21, [%r20];\n\
             \tst.global.b32 [%rd3], %r21;\n\tret;\n}}\n"
        )
    };
    let input: Vec<u16> = (0..5 * 64).map(|i| (i * 7 + 3) as u16).collect();
    let run_it = |producer: bool| {
        let m = Module::parse(&text(producer)).unwrap_or_else(|e| panic!("{e}"));
        let mut dev = Device::new();
        let out = dev.alloc(vec![0; 64 * 4]);
        let data = dev.alloc(input.iter().flat_map(|w| w.to_le_bytes()).collect());
        let map = TensorMap {
            base: data,
            dims: vec![64, 5],
            strides: vec![128],
            box_dims: vec![64, 8],
            elem_bytes: 2,
            swizzle: 128,
        };
        let map = dev.alloc(map.encode().to_vec());
        let launch = Launch {
            grid: 1,
            block: 64,
            dynamic_shared: 0,
        };
        run(&m, "k", launch, &[out, map], &mut dev, 1 << 20).map(|_| {
            dev.bytes(out)
                .chunks(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<u32>>()
        })
    };
    let got = run_it(true).unwrap();
    for (t, &g) in got.iter().enumerate() {
        // thread t reads shared bytes 16 t..: row r, stored chunk c, which
        // holds the box's chunk c ^ (r % 8)
        let (r, c) = (t / 8, (t % 8) ^ (t / 8 % 8));
        let row = 1 + r;
        let want = if row < 5 {
            let e = row * 64 + c * 8;
            u32::from(input[e]) | (u32::from(input[e + 1]) << 16)
        } else {
            0
        };
        assert_eq!(g, want, "thread {t}");
    }
    let e = run_it(false).unwrap_err();
    assert!(e.to_string().contains("an mbarrier wait"), "{e}");
}

/// A named barrier holds only the threads it counts (`bar.sync 1, 64`
/// while a third warp works on), and `mbarrier.arrive` hands work from
/// that warp to the others and back: against the values by hand; a
/// barrier counting fewer threads than wait at it, or a hand-over without
/// its arrival, is reported.
#[test]
fn named_barriers_and_mbarrier_arrivals_order_part_of_a_block() {
    let text = |count: u32, arrive: bool| {
        let arrival = if arrive {
            "\tmbarrier.arrive.shared::cta.b64 %rd10, [%r10];\n"
        } else {
            ""
        };
        format!(
            ".version 8.0\n.target sm_90a\n.address_size 64\n\
             .shared .align 8 .b8 bars[16];\n.shared .align 4 .b8 buf[256];\n\
             .visible .entry k(\n\t.param .u64 p_out,\n\t.param .u64 p_in\n)\n{{\n\
             \t.reg .b32 %r<64>;\n\t.reg .b64 %rd<64>;\n\t.reg .pred %p<8>;\n\
             \tld.param.u64 %rd0, [p_out];\n\tld.param.u64 %rd1, [p_in];\n\
             \tmov.u32 %r0, %tid.x;\n\tmov.u32 %r10, bars;\n\tadd.u32 %r11, %r10, 8;\n\
             \tsetp.eq.u32 %p1, %r0, 0;\n\
             \t@%p1 mbarrier.init.shared::cta.b64 [%r10], 1;\n\
             \t@%p1 mbarrier.init.shared::cta.b64 [%r11], 64;\n\
             \tfence.mbarrier_init.release.cluster;\n\tbar.sync 0;\n\
             \tsetp.lt.u32 %p2, %r0, 64;\n\t@%p2 bra $L_consumer;\n\
             \tsetp.ne.u32 %p3, %r0, 64;\n\t@%p3 ret;\n\
             // the producer: in[0] * 3 to out[64], handed over, then out[65]\n\
             // once every consumer has arrived\n\
             \tld.global.b32 %r1, [%rd1];\n\tmul.lo.u32 %r1, %r1, 3;\n\
             \tst.global.b32 [%rd0+256], %r1;\n{arrival}\
             $L_empty:\n\tmbarrier.try_wait.parity.shared::cta.b64 %p4, [%r11], 0;\n\
             \t@!%p4 bra $L_empty;\n\tld.global.b32 %r2, [%rd0];\n\tadd.u32 %r2, %r2, 1;\n\
             \tst.global.b32 [%rd0+260], %r2;\n\tret;\n\
             $L_consumer:\n\
             $L_full:\n\tmbarrier.try_wait.parity.shared::cta.b64 %p4, [%r10], 0;\n\
             \t@!%p4 bra $L_full;\n\
             \tld.global.b32 %r1, [%rd0+256];\n\tadd.u32 %r1, %r1, %r0;\n\
             \tmov.u32 %r3, buf;\n\tmad.lo.u32 %r4, %r0, 4, %r3;\n\tst.shared.b32 [%r4], %r1;\n\
             \tbar.sync 1, {count};\n\
             \txor.b32 %r5, %r0, 1;\n\tmad.lo.u32 %r5, %r5, 4, %r3;\n\tld.shared.b32 %r6, [%r5];\n\
             \tmul.wide.u32 %rd2, %r0, 4;\n\tadd.s64 %rd3, %rd0, %rd2;\n\
             \tst.global.b32 [%rd3], %r6;\n\
             \tmbarrier.arrive.shared::cta.b64 %rd11, [%r11];\n\tret;\n}}\n"
        )
    };
    let go_with = |count: u32, arrive: bool| {
        let m = Module::parse(&text(count, arrive)).unwrap_or_else(|e| panic!("{e}"));
        go(&m, 96, 66, &[41])
    };
    let got = go_with(64, true).unwrap();
    // consumer t: 123 + (t ^ 1); the producer's 123, then out[0] + 1
    let want: Vec<u32> = (0..64)
        .map(|t| 123 + (t ^ 1))
        .chain([123, 123 + 1 + 1])
        .collect();
    assert_eq!(got, want);
    let e = go_with(32, true).unwrap_err();
    assert!(e.to_string().contains("which counts 32"), "{e}");
    let e = go_with(64, false).unwrap_err();
    assert!(matches!(e, SimError::Stuck { .. }), "{e}");
}
