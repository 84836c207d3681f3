//! Instructions a warp executes together: `shfl.sync`, `ldmatrix`,
//! `mma.sync`. Fragment layouts follow the PTX ISA's figures for
//! `ldmatrix .m8n8 .b16` and `mma .m16n8k16` with 16-bit operands.

use crate::Stats;
use crate::exec::{Ctx, Shared, Thread, set};
use crate::float;
use crate::inst::{Inst, Op, Operand, Shfl, Ty};

/// Runs `inst` for the 32 lanes of a warp (threads `base..base + 32`).
pub(crate) fn collective(
    ctx: &Ctx,
    inst: &Inst,
    lanes: &mut [Thread],
    base: u32,
    shared: &mut Shared,
    _stats: &mut Stats,
) -> Result<(), String> {
    let ops = &inst.ops;
    let get = |lanes: &[Thread], l: usize, i: usize| -> Result<u64, String> {
        let o = ops
            .get(i)
            .ok_or_else(|| format!("operand {i} is missing"))?;
        ctx.get(&lanes[l], base + l as u32, o)
    };
    match inst.op {
        Op::WarpSync => {
            shared.warp_barrier(base as usize / 32);
        }
        Op::Shfl(mode) => {
            // d, a, b, c, membermask
            let mut out = [0u64; 32];
            for (l, o) in out.iter_mut().enumerate() {
                let b = (get(lanes, l, 2)? & 31) as usize;
                let c = get(lanes, l, 3)?;
                let clamp = (c & 31) as usize;
                let segmask = ((c >> 8) & 31) as usize;
                let max_lane = (l & segmask) | (clamp & !segmask);
                let min_lane = l & segmask;
                let (j, ok) = match mode {
                    Shfl::Up => {
                        let j = l as isize - b as isize;
                        (j, j >= max_lane as isize)
                    }
                    Shfl::Down => {
                        let j = l + b;
                        (j as isize, j <= max_lane)
                    }
                    Shfl::Bfly => {
                        let j = l ^ b;
                        (j as isize, j <= max_lane)
                    }
                    Shfl::Idx => {
                        let j = min_lane | (b & !segmask);
                        (j as isize, j <= max_lane)
                    }
                };
                let src = if ok { j as usize } else { l };
                *o = get(lanes, src, 1)?;
            }
            for (l, th) in lanes.iter_mut().enumerate() {
                set(th, &ops[0], Ty::B32, out[l])?;
            }
        }
        Op::Ldmatrix(num, trans) => {
            let Some(Operand::Addr(a)) = ops.get(1) else {
                return Err("ldmatrix without an address".into());
            };
            let Some(Operand::Vec(dst)) = ops.first() else {
                return Err("ldmatrix without destination registers".into());
            };
            if dst.len() != usize::from(num) {
                return Err(format!("{} registers for ldmatrix .x{num}", dst.len()));
            }
            // rows[m][r][c]: lane 8m + r gives the address of row r of
            // matrix m, eight 16-bit elements.
            let mut rows = vec![[[0u16; 8]; 8]; usize::from(num)];
            for (m, mat) in rows.iter_mut().enumerate() {
                for (r, row) in mat.iter_mut().enumerate() {
                    let l = 8 * m + r;
                    let addr = ctx.addr(&lanes[l], a);
                    if !addr.is_multiple_of(16) {
                        return Err(format!(
                            "ldmatrix: lane {l} gives a row address not aligned to 16 bytes"
                        ));
                    }
                    let bytes = shared.read(addr, 16, base + l as u32)?;
                    for (c, e) in row.iter_mut().enumerate() {
                        *e = u16::from_le_bytes([bytes[2 * c], bytes[2 * c + 1]]);
                    }
                }
            }
            for (l, th) in lanes.iter_mut().enumerate() {
                let (g, q) = (l / 4, l % 4);
                for (m, d) in dst.iter().enumerate() {
                    let mat = &rows[m];
                    let (lo, hi) = if trans {
                        (mat[2 * q][g], mat[2 * q + 1][g])
                    } else {
                        (mat[g][2 * q], mat[g][2 * q + 1])
                    };
                    set(th, d, Ty::B32, u64::from(lo) | (u64::from(hi) << 16))?;
                }
            }
        }
        Op::Mma(t) => {
            let vec = |i: usize, n: usize| -> Result<&Vec<Operand>, String> {
                match ops.get(i) {
                    Some(Operand::Vec(v)) if v.len() == n => Ok(v),
                    _ => Err(format!("mma operand {i}: expected {n} registers")),
                }
            };
            let (d, a, b, c) = (vec(0, 4)?, vec(1, 4)?, vec(2, 2)?, vec(3, 4)?);
            let mut am = [[0f64; 16]; 16];
            let mut bm = [[0f64; 8]; 16];
            let mut cm = [[0f64; 8]; 16];
            let half = |v: u64, hi: bool| float::to_f64(t, if hi { v >> 16 } else { v } & 0xffff);
            for (l, th) in lanes.iter().enumerate() {
                let (g, q) = (l / 4, l % 4);
                let lane = base + l as u32;
                // A: a0 = (g, 2q..), a1 = (g + 8, 2q..), a2 = (g, 2q + 8..),
                // a3 = (g + 8, 2q + 8..), two elements each, low half first.
                for (j, o) in a.iter().enumerate() {
                    let v = ctx.get(th, lane, o)?;
                    let row = g + 8 * (j % 2);
                    let col = 2 * q + 8 * (j / 2);
                    am[row][col] = half(v, false);
                    am[row][col + 1] = half(v, true);
                }
                // B (k x n): b0 = (k 2q.., n g), b1 = (k 2q + 8.., n g).
                for (j, o) in b.iter().enumerate() {
                    let v = ctx.get(th, lane, o)?;
                    let k = 2 * q + 8 * j;
                    bm[k][g] = half(v, false);
                    bm[k + 1][g] = half(v, true);
                }
                // C, D: c0, c1 = (g, 2q..), c2, c3 = (g + 8, 2q..).
                for (j, o) in c.iter().enumerate() {
                    let v = ctx.get(th, lane, o)?;
                    cm[g + 8 * (j / 2)][2 * q + j % 2] = f64::from(f32::from_bits(v as u32));
                }
            }
            for (l, th) in lanes.iter_mut().enumerate() {
                let (g, q) = (l / 4, l % 4);
                for (j, o) in d.iter().enumerate() {
                    let (row, col) = (g + 8 * (j / 2), 2 * q + j % 2);
                    let mut s = cm[row][col];
                    for (k, brow) in bm.iter().enumerate() {
                        s += am[row][k] * brow[col];
                    }
                    set(th, o, Ty::F32, u64::from((s as f32).to_bits()))?;
                }
            }
        }
        Op::MmaI8(ta, tb) | Op::MmaF8(ta, tb) => {
            // m16n8k32 on 8-bit elements. Register j of A holds row g (+8
            // for odd j) and k 4q..4q+3 (+16 for j >= 2), lowest byte
            // first; register j of B holds k 4q..4q+3 (+16 for j = 1) of
            // column g; C and D as for m16n8k16. Products and sums are
            // exact in f64 (s8: |sum| < 2^53), then wrap to s32 or round
            // to f32 once.
            let vec = |i: usize, n: usize| -> Result<&Vec<Operand>, String> {
                match ops.get(i) {
                    Some(Operand::Vec(v)) if v.len() == n => Ok(v),
                    _ => Err(format!("mma operand {i}: expected {n} registers")),
                }
            };
            let int = matches!(inst.op, Op::MmaI8(..));
            let (d, a, b, c) = (vec(0, 4)?, vec(1, 4)?, vec(2, 2)?, vec(3, 4)?);
            let mut am = [[0f64; 32]; 16];
            let mut bm = [[0f64; 8]; 32];
            let mut cm = [[0f64; 8]; 16];
            let value = |t: Ty, v: u64, i: usize| -> f64 {
                let code = ((v >> (8 * i)) & 0xff) as u8;
                match t {
                    Ty::S8 => f64::from(code as i8),
                    Ty::U8 => f64::from(code),
                    t => float::fp8_value(t, code),
                }
            };
            for (l, th) in lanes.iter().enumerate() {
                let (g, q) = (l / 4, l % 4);
                let lane = base + l as u32;
                for (j, o) in a.iter().enumerate() {
                    let v = ctx.get(th, lane, o)?;
                    for i in 0..4 {
                        am[g + 8 * (j % 2)][4 * q + 16 * (j / 2) + i] = value(ta, v, i);
                    }
                }
                for (j, o) in b.iter().enumerate() {
                    let v = ctx.get(th, lane, o)?;
                    for i in 0..4 {
                        bm[4 * q + 16 * j + i][g] = value(tb, v, i);
                    }
                }
                for (j, o) in c.iter().enumerate() {
                    let v = ctx.get(th, lane, o)? as u32;
                    cm[g + 8 * (j / 2)][2 * q + j % 2] = if int {
                        f64::from(v as i32)
                    } else {
                        f64::from(f32::from_bits(v))
                    };
                }
            }
            for (l, th) in lanes.iter_mut().enumerate() {
                let (g, q) = (l / 4, l % 4);
                for (j, o) in d.iter().enumerate() {
                    let (row, col) = (g + 8 * (j / 2), 2 * q + j % 2);
                    let mut s = cm[row][col];
                    for (k, brow) in bm.iter().enumerate() {
                        s += am[row][k] * brow[col];
                    }
                    // s32: wraps around, as without `.satfinite`.
                    let bits = if int {
                        u64::from(s as i64 as i32 as u32)
                    } else {
                        u64::from((s as f32).to_bits())
                    };
                    set(th, o, Ty::B32, bits)?;
                }
            }
        }
        _ => unreachable!("not a warp collective: {:?}", inst.op),
    }
    Ok(())
}

/// The shared-memory address of element (`row`, `k`) of a `wgmma` operand
/// whose descriptor is `desc` (rows: `m` of A or `n` of B), elements of
/// `bytes` bytes, `k_major` unless the operand is transposed. The layouts
/// are the canonical ones with the 128-byte swizzle (mode 1 in bits 62-63):
/// `k`-major, rows of 128 bytes of `k`, eight rows an atom, atoms `SBO`
/// apart; `m`/`n`-major, rows of 128 bytes of `m`/`n` per `k`, eight `k`
/// an atom, atoms `SBO` apart along `k` and `LBO` apart along `m`/`n`
/// every 128 bytes. The swizzle XORs address bits 4-6 with bits 7-9.
fn wgmma_addr(desc: u64, row: usize, k: usize, bytes: usize, k_major: bool) -> u64 {
    let start = (desc & 0x3fff) << 4;
    let lbo = ((desc >> 16) & 0x3fff) << 4;
    let sbo = ((desc >> 32) & 0x3fff) << 4;
    let per_row = 128 / bytes;
    let logical = if k_major {
        start + (row / 8) as u64 * sbo + (row % 8) as u64 * 128 + (k * bytes) as u64
    } else {
        start
            + (row / per_row) as u64 * lbo
            + (k / 8) as u64 * sbo
            + (k % 8) as u64 * 128
            + ((row % per_row) * bytes) as u64
    };
    logical ^ (((logical >> 7) & 7) << 4)
}

/// Runs a `wgmma.mma_async` for the 128 threads of a warp group (threads
/// `base..base + 128`), at once: `D = A B + (scale-d ? D : 0)` for a 64 x N
/// tile, B read from shared memory through its descriptor and A through
/// its descriptor or (16-bit types) from four registers per thread.
/// Accumulator register `i` of lane `l` of warp `w` holds row
/// `16 w + l / 4 (+8 when i % 4 >= 2)` and column `8 (i / 4) + 2 (l % 4) +
/// i % 2`; A register `j` holds row `16 w + l / 4 (+8 for odd j)` and `k`
/// `2 (l % 4) (+8 for j >= 2)` in its low half, the next `k` in its high
/// half (the fragment of `mma.m16n8k16` per warp).
pub(crate) fn group_collective(
    ctx: &Ctx,
    inst: &Inst,
    threads: &mut [Thread],
    base: u32,
    shared: &mut Shared,
) -> Result<(), String> {
    let Op::Wgmma(n, kdepth, dt, ta, tb) = inst.op else {
        unreachable!("not a warp-group collective: {:?}", inst.op)
    };
    let (n, kdepth) = (n as usize, kdepth as usize);
    let ops = &inst.ops;
    let Some(Operand::Vec(d)) = ops.first() else {
        return Err("wgmma without accumulator registers".into());
    };
    if d.len() != n / 2 {
        return Err(format!("{} accumulator registers for n = {n}", d.len()));
    }
    let get = |t: usize, i: usize| -> Result<u64, String> {
        let o = ops
            .get(i)
            .ok_or_else(|| format!("operand {i} is missing"))?;
        ctx.get(&threads[t], base + t as u32, o)
    };
    // A from registers: four 32-bit registers per thread, no transpose
    // operand (the immediates after B's descriptor shift by one).
    let a_regs = match ops.get(1) {
        Some(Operand::Vec(a)) => {
            if a.len() != 4 || kdepth != 16 || !matches!(ta, Ty::F16 | Ty::BF16) {
                return Err(format!(
                    "a register A operand of {} registers for k = {kdepth} and {ta:?} \
                     (interpreted: four registers of 16-bit pairs, k = 16)",
                    a.len()
                ));
            }
            Some(a.clone())
        }
        _ => None,
    };
    let da = if a_regs.is_some() {
        None
    } else {
        Some(get(0, 1)?)
    };
    let db = get(0, 2)?;
    for t in 1..128 {
        if da.is_some() && get(t, 1)? != da.unwrap_or(0) || get(t, 2)? != db {
            return Err(format!(
                "thread {} gives other descriptors than thread {base}",
                base + t as u32
            ));
        }
    }
    for desc in da.into_iter().chain([db]) {
        if desc >> 62 != 1 {
            return Err(format!(
                "a descriptor with swizzle mode {} (only the 128-byte swizzle is interpreted)",
                desc >> 62
            ));
        }
    }
    let scale_d = get(0, 3)? & 1 == 1;
    let imm = |i: usize, default: u64| -> Result<u64, String> {
        if ops.len() > i {
            get(0, i)
        } else {
            Ok(default)
        }
    };
    let neg = |v: u64| if v as i64 == -1 { -1.0 } else { 1.0 };
    let (sa, sb) = (neg(imm(4, 1)?), neg(imm(5, 1)?));
    let (trans_a, trans_b) = match a_regs {
        Some(_) => (false, imm(6, 0)? == 1),
        None => (imm(6, 0)? == 1, imm(7, 0)? == 1),
    };
    let bytes = |t: Ty| {
        if matches!(t, Ty::F16 | Ty::BF16) {
            2
        } else {
            1
        }
    };
    let value = |t: Ty, addr: u64, shared: &Shared| -> Result<f64, String> {
        let b = shared.read_async(addr, bytes(t))?;
        Ok(match t {
            Ty::F16 | Ty::BF16 => float::to_f64(t, u64::from(u16::from_le_bytes([b[0], b[1]]))),
            Ty::E4m3 | Ty::E5m2 => float::fp8_value(t, b[0]),
            Ty::S8 => f64::from(b[0] as i8),
            _ => f64::from(b[0]),
        })
    };
    let mut am = vec![vec![0f64; kdepth]; 64];
    match (&a_regs, da) {
        (Some(regs), _) => {
            for (t, th) in threads.iter().enumerate() {
                let (w, l) = (t / 32, t % 32);
                for (j, o) in regs.iter().enumerate() {
                    let bits = ctx.get(th, base + t as u32, o)?;
                    let row = 16 * w + l / 4 + 8 * (j % 2);
                    let k = 2 * (l % 4) + 8 * (j / 2);
                    for (h, x) in am[row][k..k + 2].iter_mut().enumerate() {
                        let half = (bits >> (16 * h)) & 0xffff;
                        *x = sa * float::to_f64(ta, half);
                    }
                }
            }
        }
        (None, Some(da)) => {
            for (r, row) in am.iter_mut().enumerate() {
                for (k, x) in row.iter_mut().enumerate() {
                    *x = sa * value(ta, wgmma_addr(da, r, k, bytes(ta), !trans_a), shared)?;
                }
            }
        }
        (None, None) => unreachable!("A is in registers or behind a descriptor"),
    }
    let mut bm = vec![vec![0f64; kdepth]; n];
    for (c, col) in bm.iter_mut().enumerate() {
        for (k, x) in col.iter_mut().enumerate() {
            *x = sb * value(tb, wgmma_addr(db, c, k, bytes(tb), !trans_b), shared)?;
        }
    }
    for (t, th) in threads.iter_mut().enumerate() {
        let (w, l) = (t / 32, t % 32);
        for (i, o) in d.iter().enumerate() {
            let row = 16 * w + l / 4 + if i % 4 >= 2 { 8 } else { 0 };
            let col = 8 * (i / 4) + 2 * (l % 4) + i % 2;
            let dot: f64 = (0..kdepth).map(|k| am[row][k] * bm[col][k]).sum();
            let old = ctx.get(th, base + t as u32, o)?;
            let v = match dt {
                Ty::S32 => {
                    let c = if scale_d {
                        i64::from(old as u32 as i32)
                    } else {
                        0
                    };
                    (c + dot as i64) as i32 as u32 as u64
                }
                _ => {
                    let c = if scale_d {
                        f64::from(f32::from_bits(old as u32))
                    } else {
                        0.0
                    };
                    u64::from(((c + dot) as f32).to_bits())
                }
            };
            set(th, o, dt, v)?;
        }
    }
    Ok(())
}
