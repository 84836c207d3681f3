//! Running a launch: blocks one after another, the threads of a block
//! each until they reach a collective, collectives when every thread they
//! involve has arrived.

use std::collections::VecDeque;

use crate::float::{self, int_value, sx};
use crate::inst::{Addr, Base, Cmp, Inst, Op, Operand, Rnd, Space, Special, Test, Ty};
use crate::parse::Entry;
use crate::{Device, Launch, SimError, Stats};

/// Shared addresses start here (0 is never a valid shared address).
pub(crate) const SHARED_BASE: u64 = 1024;

/// A register no instruction has written: NaN as any float, and far out of
/// every buffer as an address.
const POISON: u64 = 0x7ff4_dead_7fa0_dead;

/// Who last wrote and read one shared byte, in which barrier epoch, and
/// the epoch of the accessing warp's own barriers (`bar.warp.sync`) then.
#[derive(Clone, Copy, Default)]
pub(crate) struct Meta {
    w_epoch: u32,
    w_tid: u16,
    w_wepoch: u32,
    r_epoch: u32,
    r_tid: u16,
    /// The readers' warp ([`MANY`] when several warps read), and the
    /// latest reader's warp barrier epoch.
    r_warp: u16,
    r_wepoch: u32,
}

/// Several threads read the byte in this epoch.
const MANY: u16 = u16::MAX;

/// A block's shared memory with what the race check needs.
pub(crate) struct Shared {
    pub(crate) bytes: Vec<u8>,
    meta: Vec<Meta>,
    /// Barriers passed, plus one.
    epoch: u32,
    /// Each warp's own barriers passed (`bar.warp.sync`): they order the
    /// accesses of the warp's lanes.
    warp_epochs: Vec<u32>,
}

/// The warp of thread `tid`.
fn warp_of(tid: u16) -> u16 {
    tid / 32
}

impl Shared {
    /// Warp `w` passed its barrier.
    pub(crate) fn warp_barrier(&mut self, w: usize) {
        if self.warp_epochs.len() <= w {
            self.warp_epochs.resize(w + 1, 0);
        }
        self.warp_epochs[w] += 1;
    }

    fn warp_epoch(&self, tid: u16) -> u32 {
        self.warp_epochs
            .get(warp_of(tid) as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Whether thread `t`'s access is ordered after one by thread `other`
    /// in this epoch at the warp barrier epoch `then`: the same thread, or
    /// a thread of the same warp with a warp barrier between.
    fn ordered(&self, t: u16, other: u16, then: u32) -> bool {
        other == t || (warp_of(other) == warp_of(t) && self.warp_epoch(t) > then)
    }

    fn offset(&self, addr: u64, len: usize) -> Result<usize, String> {
        let off = addr
            .checked_sub(SHARED_BASE)
            .filter(|&o| o as usize + len <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "a shared access of {len} bytes at offset {} outside the {} bytes of shared \
                     memory",
                    addr as i64 - SHARED_BASE as i64,
                    self.bytes.len()
                )
            })?;
        Ok(off as usize)
    }

    /// Reads `len` bytes as thread `tid`.
    pub(crate) fn read(&mut self, addr: u64, len: usize, tid: u32) -> Result<&[u8], String> {
        let off = self.offset(addr, len)?;
        let t = tid as u16;
        let now = self.warp_epoch(t);
        for i in off..off + len {
            let m = self.meta[i];
            if m.w_epoch == self.epoch && !self.ordered(t, m.w_tid, m.w_wepoch) {
                return Err(format!(
                    "a shared-memory race: reads byte {} that thread {} wrote since the last \
                     barrier",
                    i, m.w_tid
                ));
            }
            let m = &mut self.meta[i];
            if m.r_epoch != self.epoch {
                m.r_epoch = self.epoch;
                m.r_tid = t;
                m.r_warp = warp_of(t);
            } else {
                if m.r_tid != t {
                    m.r_tid = MANY;
                }
                if m.r_warp != warp_of(t) {
                    m.r_warp = MANY;
                }
            }
            m.r_wepoch = now;
        }
        Ok(&self.bytes[off..off + len])
    }

    /// Reads `len` bytes for an asynchronous unit (`wgmma`), outside the
    /// race check (it reads after the barriers that order the copies).
    pub(crate) fn read_async(&self, addr: u64, len: usize) -> Result<&[u8], String> {
        let off = self.offset(addr, len)?;
        Ok(&self.bytes[off..off + len])
    }

    /// Writes `data` as thread `tid`.
    pub(crate) fn write(&mut self, addr: u64, data: &[u8], tid: u32) -> Result<(), String> {
        let off = self.offset(addr, data.len())?;
        let t = tid as u16;
        let now = self.warp_epoch(t);
        for i in off..off + data.len() {
            let m = self.meta[i];
            if m.w_epoch == self.epoch && !self.ordered(t, m.w_tid, m.w_wepoch) {
                return Err(format!(
                    "a shared-memory race: writes byte {} that thread {} wrote since the last \
                     barrier",
                    i, m.w_tid
                ));
            }
            // Reads by other threads: ordered only by a warp barrier of the
            // one warp that read (after its latest read).
            let read_ordered =
                m.r_tid == t || (m.r_warp == warp_of(t) && m.r_warp != MANY && now > m.r_wepoch);
            if m.r_epoch == self.epoch && !read_ordered {
                let who = if m.r_tid == MANY {
                    "other threads".to_string()
                } else {
                    format!("thread {}", m.r_tid)
                };
                return Err(format!(
                    "a shared-memory race: writes byte {i} that {who} read since the last barrier"
                ));
            }
            let m = &mut self.meta[i];
            m.w_epoch = self.epoch;
            m.w_tid = t;
            m.w_wepoch = now;
        }
        self.bytes[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// An mbarrier as the interpreter keeps it in its 8 bytes of shared
/// memory: arrivals per phase (12 bits), arrivals still pending (12 bits),
/// the current phase's parity (1 bit), the transaction bytes still
/// expected (signed 32 bits: a copy may complete before its arrival
/// expects it).
struct Mbarrier {
    count: u16,
    pending: u16,
    phase: u8,
    tx: i64,
}

impl Mbarrier {
    fn read(shared: &Shared, addr: u64) -> Result<Mbarrier, String> {
        if !addr.is_multiple_of(8) {
            return Err("an mbarrier at an address that is not 8-byte aligned".into());
        }
        let off = shared.offset(addr, 8)?;
        let w = u32::from_le_bytes(shared.bytes[off..off + 4].try_into().unwrap_or_default());
        let tx = i32::from_le_bytes(
            shared.bytes[off + 4..off + 8]
                .try_into()
                .unwrap_or_default(),
        );
        let count = (w & 0xfff) as u16;
        if count == 0 {
            return Err("an mbarrier used before mbarrier.init".into());
        }
        Ok(Mbarrier {
            count,
            pending: ((w >> 12) & 0xfff) as u16,
            phase: ((w >> 24) & 1) as u8,
            tx: i64::from(tx),
        })
    }

    fn write(&self, shared: &mut Shared, addr: u64) -> Result<(), String> {
        if !addr.is_multiple_of(8) {
            return Err("an mbarrier at an address that is not 8-byte aligned".into());
        }
        let off = shared.offset(addr, 8)?;
        let w =
            u32::from(self.count) | (u32::from(self.pending) << 12) | (u32::from(self.phase) << 24);
        shared.bytes[off..off + 4].copy_from_slice(&w.to_le_bytes());
        let tx = i32::try_from(self.tx).map_err(|_| "mbarrier transaction count overflow")?;
        shared.bytes[off + 4..off + 8].copy_from_slice(&tx.to_le_bytes());
        Ok(())
    }

    /// Completes the phase when every arrival and byte is in.
    fn settle(&mut self) {
        if self.pending == 0 && self.tx == 0 {
            self.phase ^= 1;
            self.pending = self.count;
        }
    }
}

/// A `cp.async` copy waiting for its group.
struct Pending {
    dst: u64,
    data: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum State {
    Run,
    /// At a warp collective.
    Warp,
    /// At a warp-group collective (`wgmma`).
    Group,
    /// At `bar.sync`.
    Bar,
    /// At an `mbarrier.try_wait` whose phase has not completed.
    Spin,
    Done,
}

pub(crate) struct Thread {
    pub(crate) pc: usize,
    pub(crate) state: State,
    pub(crate) regs: Vec<u64>,
    groups: VecDeque<Vec<Pending>>,
    open: Vec<Pending>,
}

/// What every thread of a block sees alike.
pub(crate) struct Ctx<'a> {
    pub(crate) e: &'a Entry,
    pub(crate) launch: Launch,
    pub(crate) block: u32,
    args: &'a [u64],
    /// Shared address of each shared array.
    sym: Vec<u64>,
}

impl Ctx<'_> {
    /// The value of a source operand in thread `tid`.
    #[inline]
    pub(crate) fn get(&self, th: &Thread, tid: u32, o: &Operand) -> Result<u64, String> {
        Ok(match o {
            Operand::Reg(r) => th.regs[*r as usize],
            Operand::NotPred(r) => u64::from(th.regs[*r as usize] & 1 == 0),
            Operand::Imm(v) => *v,
            Operand::Special(s) => match s {
                Special::Tid => u64::from(tid),
                Special::Ntid => u64::from(self.launch.block),
                Special::Ctaid => u64::from(self.block),
                Special::Nctaid => u64::from(self.launch.grid),
                Special::Lane => u64::from(tid % 32),
                Special::Warp => u64::from(tid / 32),
                Special::Zero => 0,
                Special::One => 1,
            },
            Operand::SharedSym(s) => self.sym[*s as usize],
            Operand::Addr(_) | Operand::Vec(_) | Operand::Sink | Operand::Label(_) => {
                return Err(format!("{o:?} where a value was expected"));
            }
        })
    }

    /// The address an address operand names (params: the parameter index).
    pub(crate) fn addr(&self, th: &Thread, a: &Addr) -> u64 {
        let base = match a.base {
            Base::Reg(r) => th.regs[r as usize],
            Base::Param(p) => u64::from(p),
            Base::Shared(s) => self.sym[s as usize],
        };
        base.wrapping_add(a.offset as u64)
    }
}

/// Writes `v` (masked to `t`) into a destination operand.
#[inline]
pub(crate) fn set(th: &mut Thread, o: &Operand, t: Ty, v: u64) -> Result<(), String> {
    match o {
        Operand::Reg(r) => {
            th.regs[*r as usize] = v & t.mask();
            Ok(())
        }
        Operand::Sink => Ok(()),
        _ => Err(format!("{o:?} is not a register")),
    }
}

pub(crate) fn run(
    e: &Entry,
    launch: Launch,
    args: &[u64],
    dev: &mut Device,
    limit: u64,
) -> Result<Stats, SimError> {
    // Static arrays first, then the dynamic one, each at its alignment.
    let mut sym = Vec::new();
    let mut at = 0u64;
    let mut dynamic = None;
    for (i, (_, align, size)) in e.shared.iter().enumerate() {
        match size {
            Some(n) => {
                at = at.next_multiple_of(u64::from((*align).max(1)));
                sym.push(SHARED_BASE + at);
                at += u64::from(*n);
            }
            None => {
                sym.push(0);
                dynamic = Some((i, *align));
            }
        }
    }
    if let Some((i, align)) = dynamic {
        at = at.next_multiple_of(u64::from(align.max(16)));
        sym[i] = SHARED_BASE + at;
        at += u64::from(launch.dynamic_shared);
    }
    let size = at as usize;
    let mut stats = Stats::default();
    let mut shared = Shared {
        bytes: vec![0; size],
        meta: vec![Meta::default(); size],
        epoch: 1,
        warp_epochs: Vec::new(),
    };
    let nregs = e.registers.len();
    for block in 0..launch.grid {
        // Fresh shared memory per block, filled with a pattern (never 0s
        // that a kernel could wrongly rely on).
        shared.bytes.iter_mut().for_each(|b| *b = 0xa5);
        shared.meta.iter_mut().for_each(|m| *m = Meta::default());
        shared.epoch = 1;
        shared.warp_epochs.clear();
        let ctx = Ctx {
            e,
            launch,
            block,
            args,
            sym: sym.clone(),
        };
        let mut threads: Vec<Thread> = (0..launch.block)
            .map(|_| Thread {
                pc: 0,
                state: State::Run,
                regs: vec![POISON; nregs],
                groups: VecDeque::new(),
                open: Vec::new(),
            })
            .collect();
        run_block(&ctx, &mut threads, &mut shared, dev, &mut stats, limit)?;
    }
    Ok(stats)
}

fn run_block(
    ctx: &Ctx,
    threads: &mut [Thread],
    shared: &mut Shared,
    dev: &mut Device,
    stats: &mut Stats,
    limit: u64,
) -> Result<(), SimError> {
    let fault = |tid: u32, line: u32, what: String| SimError::Fault {
        entry: ctx.e.name.clone(),
        block: ctx.block,
        thread: tid,
        line,
        what,
    };
    loop {
        let before = stats.instructions;
        for (tid, th) in threads.iter_mut().enumerate() {
            if matches!(th.state, State::Run | State::Spin) {
                th.state = State::Run;
                run_thread(ctx, th, tid as u32, shared, dev, stats, limit)?;
            }
        }
        let moved = stats.instructions != before;
        // Warp collectives whose live lanes have all arrived.
        let mut progressed = false;
        for w in 0..threads.len() / 32 {
            let lanes = &mut threads[w * 32..w * 32 + 32];
            let live: Vec<usize> = (0..32).filter(|&l| lanes[l].state != State::Done).collect();
            if live.is_empty() || !live.iter().all(|&l| lanes[l].state == State::Warp) {
                continue;
            }
            let pc = lanes[live[0]].pc;
            if let Some(&l) = live.iter().find(|&&l| lanes[l].pc != pc) {
                let line = ctx.e.insts[lanes[l].pc].line;
                return Err(fault(
                    (w * 32 + l) as u32,
                    line,
                    format!(
                        "the lanes of warp {w} wait at different collectives (lines {} and {line})",
                        ctx.e.insts[pc].line
                    ),
                ));
            }
            let inst = &ctx.e.insts[pc];
            if live.len() != 32 {
                let gone = (0..32).find(|l| !live.contains(l)).unwrap();
                return Err(fault(
                    (w * 32 + gone) as u32,
                    inst.line,
                    format!(
                        "warp {w} runs a collective `{:?}` after lane {gone} exited",
                        inst.op
                    ),
                ));
            }
            crate::warp::collective(ctx, inst, lanes, (w * 32) as u32, shared, stats)
                .map_err(|what| fault((w * 32) as u32, inst.line, what))?;
            for th in lanes.iter_mut() {
                th.pc += 1;
                th.state = State::Run;
            }
            stats.instructions += 32;
            progressed = true;
        }
        if progressed {
            continue;
        }
        // Warp-group collectives: four warps, every live thread arrived.
        for g in 0..threads.len() / 128 {
            let group = &mut threads[g * 128..g * 128 + 128];
            let live: Vec<usize> = (0..128)
                .filter(|&l| group[l].state != State::Done)
                .collect();
            if live.is_empty() || !live.iter().all(|&l| group[l].state == State::Group) {
                continue;
            }
            let pc = group[live[0]].pc;
            let inst = &ctx.e.insts[pc];
            if live.len() != 128 || live.iter().any(|&l| group[l].pc != pc) {
                return Err(fault(
                    (g * 128) as u32,
                    inst.line,
                    format!("the threads of warp group {g} do not all reach this `wgmma`"),
                ));
            }
            crate::warp::group_collective(ctx, inst, group, (g * 128) as u32, shared)
                .map_err(|what| fault((g * 128) as u32, inst.line, what))?;
            for th in group.iter_mut() {
                th.pc += 1;
                th.state = State::Run;
            }
            stats.instructions += 128;
            progressed = true;
        }
        if progressed {
            continue;
        }
        let live = threads.iter().filter(|t| t.state != State::Done).count();
        if live == 0 {
            return Ok(());
        }
        if release_barriers(ctx, threads, shared, stats)? {
            continue;
        }
        // Threads waiting on an mbarrier try again while others move.
        if moved && threads.iter().any(|t| t.state == State::Spin) {
            continue;
        }
        // Nobody can move.
        let describe = |t: &Thread| match t.state {
            State::Bar => format!("bar.sync at line {}", ctx.e.insts[t.pc].line),
            State::Spin => format!("an mbarrier wait at line {}", ctx.e.insts[t.pc].line),
            State::Warp => format!("a warp collective at line {}", ctx.e.insts[t.pc].line),
            State::Group => format!("a warp-group collective at line {}", ctx.e.insts[t.pc].line),
            State::Done => "exited".into(),
            State::Run => "running".into(),
        };
        let mut seen: Vec<String> = Vec::new();
        for (tid, t) in threads.iter().enumerate() {
            let d = describe(t);
            if !seen.iter().any(|s| s.ends_with(&d)) {
                seen.push(format!("thread {tid}: {d}"));
            }
        }
        return Err(SimError::Stuck {
            entry: ctx.e.name.clone(),
            block: ctx.block,
            what: format!("threads wait for each other forever ({})", seen.join("; ")),
        });
    }
}

/// Releases the threads waiting at a barrier that every thread it waits
/// for has reached: `bar.sync id` waits for every thread that has not
/// exited, `bar.sync id, count` for `count` threads (a named barrier
/// that part of the block uses, e.g. the threads computing while another
/// warp copies). Whether any barrier was released.
fn release_barriers(
    ctx: &Ctx,
    threads: &mut [Thread],
    shared: &mut Shared,
    stats: &mut Stats,
) -> Result<bool, SimError> {
    let live = threads.iter().filter(|t| t.state != State::Done).count() as u64;
    // Per barrier: its waiting threads and the count they wait for.
    let mut waits: Vec<(u64, u64, Vec<usize>)> = Vec::new();
    for (tid, th) in threads.iter().enumerate() {
        if th.state != State::Bar {
            continue;
        }
        let inst = &ctx.e.insts[th.pc];
        let fault = |what: String| SimError::Fault {
            entry: ctx.e.name.clone(),
            block: ctx.block,
            thread: tid as u32,
            line: inst.line,
            what,
        };
        let id = match inst.ops.first() {
            Some(o) => ctx.get(th, tid as u32, o).map_err(fault)?,
            None => 0,
        };
        let count = match inst.ops.get(1) {
            Some(o) => ctx.get(th, tid as u32, o).map_err(fault)?,
            None => live,
        };
        if id >= 16 {
            return Err(fault(format!("barrier {id} (there are 16, 0 to 15)")));
        }
        match waits.iter_mut().find(|w| w.0 == id) {
            Some(w) if w.1 != count => {
                return Err(fault(format!(
                    "threads wait at barrier {id} for {} and for {count} threads",
                    w.1
                )));
            }
            Some(w) => w.2.push(tid),
            None => waits.push((id, count, vec![tid])),
        }
    }
    let mut released = false;
    for (id, count, tids) in waits {
        if tids.len() as u64 > count {
            let line = ctx.e.insts[threads[tids[0]].pc].line;
            return Err(SimError::Fault {
                entry: ctx.e.name.clone(),
                block: ctx.block,
                thread: tids[0] as u32,
                line,
                what: format!(
                    "{} threads wait at barrier {id}, which counts {count}",
                    tids.len()
                ),
            });
        }
        if tids.len() as u64 == count {
            shared.epoch += 1;
            stats.barriers += 1;
            for t in tids {
                threads[t].pc += 1;
                threads[t].state = State::Run;
            }
            released = true;
        }
    }
    Ok(released)
}

/// Runs one thread until it waits, exits or runs off the end.
fn run_thread(
    ctx: &Ctx,
    th: &mut Thread,
    tid: u32,
    shared: &mut Shared,
    dev: &mut Device,
    stats: &mut Stats,
    limit: u64,
) -> Result<(), SimError> {
    let insts = &ctx.e.insts;
    loop {
        let Some(inst) = insts.get(th.pc) else {
            th.state = State::Done;
            return Ok(());
        };
        stats.instructions += 1;
        if stats.instructions > limit {
            return Err(SimError::StepLimit {
                entry: ctx.e.name.clone(),
                limit,
            });
        }
        if let Some((p, neg)) = inst.guard
            && (th.regs[p as usize] & 1 == 1) == neg
        {
            th.pc += 1;
            continue;
        }
        match inst.op {
            Op::Bra => {
                let Some(Operand::Label(t)) = inst.ops.first() else {
                    unreachable!("branches are resolved when parsed")
                };
                th.pc = *t as usize;
                continue;
            }
            Op::Ret => {
                th.state = State::Done;
                return Ok(());
            }
            Op::Bar => {
                th.state = State::Bar;
                return Ok(());
            }
            op if op.is_warp_collective() => {
                th.state = State::Warp;
                stats.instructions -= 1;
                return Ok(());
            }
            op if op.is_group_collective() => {
                th.state = State::Group;
                stats.instructions -= 1;
                return Ok(());
            }
            Op::MbarTryWait => {
                let fault = |what: String| SimError::Fault {
                    entry: ctx.e.name.clone(),
                    block: ctx.block,
                    thread: tid,
                    line: inst.line,
                    what,
                };
                let (Some(d), Some(Operand::Addr(a)), Some(p)) =
                    (inst.ops.first(), inst.ops.get(1), inst.ops.get(2))
                else {
                    return Err(fault("mbarrier.try_wait takes p, [bar], parity".into()));
                };
                let parity = ctx.get(th, tid, p).map_err(fault)? & 1;
                let bar = Mbarrier::read(shared, ctx.addr(th, a)).map_err(fault)?;
                if u64::from(bar.phase) == parity {
                    // the phase of this parity has not completed
                    th.state = State::Spin;
                    stats.instructions -= 1;
                    return Ok(());
                }
                set(th, d, Ty::Pred, 1).map_err(fault)?;
                th.pc += 1;
                continue;
            }
            _ => {}
        }
        step(ctx, th, tid, inst, shared, dev, stats).map_err(|what| SimError::Fault {
            entry: ctx.e.name.clone(),
            block: ctx.block,
            thread: tid,
            line: inst.line,
            what,
        })?;
        th.pc += 1;
    }
}

fn f32_of(v: u64) -> f32 {
    f32::from_bits(v as u32)
}

fn bits32(x: f32) -> u64 {
    u64::from(x.to_bits())
}

/// A float value of type `t` (f32 or f64) as f64.
fn fval(t: Ty, v: u64) -> Result<f64, String> {
    match t {
        Ty::F32 => Ok(f64::from(f32_of(v))),
        Ty::F64 => Ok(f64::from_bits(v)),
        _ => Err(format!("float arithmetic on {t:?}")),
    }
}

/// `x` as bits of `t` (f32 or f64), rounded to nearest.
fn fbits(t: Ty, x: f64) -> u64 {
    match t {
        Ty::F32 => bits32(x as f32),
        _ => x.to_bits(),
    }
}

/// `min`/`max` of floats: the number when one is NaN; -0 below +0.
fn fminmax(t: Ty, a: u64, b: u64, max: bool, nan: bool) -> Result<u64, String> {
    let (x, y) = (fval(t, a)?, fval(t, b)?);
    let canonical = match t {
        Ty::F32 => 0x7fff_ffff,
        _ => 0x7fff_ffff_ffff_ffff,
    };
    if x.is_nan() || y.is_nan() {
        if nan || (x.is_nan() && y.is_nan()) {
            return Ok(canonical);
        }
        return Ok(if x.is_nan() { b } else { a });
    }
    let pick_a = if x == y {
        // Equal values: the zero of the wanted sign.
        if max {
            !x.is_sign_negative()
        } else {
            x.is_sign_negative()
        }
    } else if max {
        x > y
    } else {
        x < y
    };
    Ok(if pick_a { a } else { b })
}

fn compare(cmp: Cmp, t: Ty, a: u64, b: u64) -> Result<bool, String> {
    if t.is_float() {
        let (x, y) = (fval(t, a)?, fval(t, b)?);
        let un = x.is_nan() || y.is_nan();
        return Ok(match cmp {
            Cmp::Eq => !un && x == y,
            Cmp::Ne => !un && x != y,
            Cmp::Lt => !un && x < y,
            Cmp::Le => !un && x <= y,
            Cmp::Gt => !un && x > y,
            Cmp::Ge => !un && x >= y,
            Cmp::Equ => un || x == y,
            Cmp::Neu => un || x != y,
            Cmp::Ltu => un || x < y,
            Cmp::Leu => un || x <= y,
            Cmp::Gtu => un || x > y,
            Cmp::Geu => un || x >= y,
            Cmp::Num => !un,
            Cmp::Nan => un,
            Cmp::Lo | Cmp::Ls | Cmp::Hi | Cmp::Hs => {
                return Err(format!("an unsigned comparison {cmp:?} of floats"));
            }
        });
    }
    let (x, y) = (int_value(t, a), int_value(t, b));
    let (ux, uy) = (a & t.mask(), b & t.mask());
    Ok(match cmp {
        Cmp::Eq => x == y,
        Cmp::Ne => x != y,
        Cmp::Lt => x < y,
        Cmp::Le => x <= y,
        Cmp::Gt => x > y,
        Cmp::Ge => x >= y,
        Cmp::Lo => ux < uy,
        Cmp::Ls => ux <= uy,
        Cmp::Hi => ux > uy,
        Cmp::Hs => ux >= uy,
        _ => return Err(format!("a float comparison {cmp:?} of integers")),
    })
}

/// Executes one instruction that involves nobody else.
fn step(
    ctx: &Ctx,
    th: &mut Thread,
    tid: u32,
    inst: &Inst,
    shared: &mut Shared,
    dev: &mut Device,
    stats: &mut Stats,
) -> Result<(), String> {
    let ops = &inst.ops;
    let arg = |i: usize| -> Result<&Operand, String> {
        ops.get(i).ok_or_else(|| format!("operand {i} is missing"))
    };
    let get = |th: &Thread, i: usize| -> Result<u64, String> { ctx.get(th, tid, arg(i)?) };
    match inst.op {
        Op::Mov(t) => {
            let d = arg(0)?;
            let s = arg(1)?;
            match (d, s) {
                (Operand::Vec(parts), _) => {
                    // Unpack: the first part takes the low bits.
                    let v = ctx.get(th, tid, s)?;
                    let w = t.bits() / parts.len() as u32;
                    for (j, p) in parts.iter().enumerate() {
                        let part = v >> (w * j as u32);
                        set(th, p, Ty::B64, part & ((1u64 << w) - 1))?;
                    }
                }
                (_, Operand::Vec(parts)) => {
                    let w = t.bits() / parts.len() as u32;
                    let mut v = 0u64;
                    for (j, p) in parts.iter().enumerate() {
                        let part = ctx.get(th, tid, p)? & ((1u64 << w) - 1);
                        v |= part << (w * j as u32);
                    }
                    set(th, d, t, v)?;
                }
                _ => {
                    let v = ctx.get(th, tid, s)?;
                    set(th, d, t, v)?;
                }
            }
        }
        Op::Add(t) | Op::Sub(t) => {
            let (a, b) = (get(th, 1)?, get(th, 2)?);
            let sub = matches!(inst.op, Op::Sub(_));
            let v = if t.is_float() {
                let (x, y) = (fval(t, a)?, fval(t, b)?);
                match t {
                    Ty::F32 => {
                        let (x, y) = (x as f32, y as f32);
                        bits32(if sub { x - y } else { x + y })
                    }
                    _ => (if sub { x - y } else { x + y }).to_bits(),
                }
            } else if sub {
                a.wrapping_sub(b)
            } else {
                a.wrapping_add(b)
            };
            set(th, arg(0)?, t, v)?;
        }
        Op::Mul(t, hi, wide) | Op::Mad(t, hi, wide) => {
            let (a, b) = (get(th, 1)?, get(th, 2)?);
            let mad = matches!(inst.op, Op::Mad(..));
            if t.is_float() {
                let v = match t {
                    Ty::F32 => {
                        let (x, y) = (f32_of(a), f32_of(b));
                        if mad {
                            x.mul_add(y, f32_of(get(th, 3)?))
                        } else {
                            x * y
                        }
                        .to_bits()
                        .into()
                    }
                    _ => {
                        let (x, y) = (f64::from_bits(a), f64::from_bits(b));
                        if mad {
                            x.mul_add(y, f64::from_bits(get(th, 3)?))
                        } else {
                            x * y
                        }
                        .to_bits()
                    }
                };
                set(th, arg(0)?, t, v)?;
                return Ok(());
            }
            let w = t.bits();
            let (x, y) = (int_value(t, a), int_value(t, b));
            let p = x.wrapping_mul(y);
            let (v, dt) = if wide {
                let dt = match (w, t.signed()) {
                    (16, true) => Ty::S32,
                    (16, false) => Ty::U32,
                    (32, true) => Ty::S64,
                    (32, false) => Ty::U64,
                    _ => return Err(format!("a wide multiply of {t:?}")),
                };
                (p as u64, dt)
            } else if hi {
                ((p >> w) as u64, t)
            } else {
                (p as u64, t)
            };
            let v = if mad { v.wrapping_add(get(th, 3)?) } else { v };
            set(th, arg(0)?, dt, v)?;
        }
        Op::Fma(t) => {
            let (a, b, c) = (get(th, 1)?, get(th, 2)?, get(th, 3)?);
            let v = match t {
                Ty::F32 => bits32(f32_of(a).mul_add(f32_of(b), f32_of(c))),
                Ty::F64 => f64::from_bits(a)
                    .mul_add(f64::from_bits(b), f64::from_bits(c))
                    .to_bits(),
                // Each 16-bit half: the product and sum in f64 (exact for
                // the halves' 11-bit significands unless the addend is far
                // smaller), rounded once to the half's type.
                Ty::F16x2 | Ty::BF16x2 => {
                    let half = if t == Ty::F16x2 { Ty::F16 } else { Ty::BF16 };
                    let mut v = 0;
                    for shift in [0, 16] {
                        let part = |x: u64| float::to_f64(half, (x >> shift) & 0xffff);
                        let r = part(a).mul_add(part(b), part(c));
                        v |= float::from_f64(half, r, Rnd::Nearest)? << shift;
                    }
                    v
                }
                _ => return Err(format!("fma of {t:?}")),
            };
            let t = if matches!(t, Ty::F16x2 | Ty::BF16x2) {
                Ty::B32
            } else {
                t
            };
            set(th, arg(0)?, t, v)?;
        }
        Op::Div(t) | Op::Rem(t) => {
            let (a, b) = (get(th, 1)?, get(th, 2)?);
            let rem = matches!(inst.op, Op::Rem(_));
            let v = if t.is_float() {
                if rem {
                    return Err("rem of floats".into());
                }
                match t {
                    Ty::F32 => bits32(f32_of(a) / f32_of(b)),
                    _ => (f64::from_bits(a) / f64::from_bits(b)).to_bits(),
                }
            } else {
                let (x, y) = (int_value(t, a), int_value(t, b));
                if y == 0 {
                    // Undefined in PTX: all ones, as the GPU gives.
                    u64::MAX
                } else if rem {
                    (x % y) as u64
                } else {
                    (x / y) as u64
                }
            };
            set(th, arg(0)?, t, v)?;
        }
        Op::Min(t, nan) | Op::Max(t, nan) => {
            let (a, b) = (get(th, 1)?, get(th, 2)?);
            let max = matches!(inst.op, Op::Max(..));
            let v = if t.is_float() {
                fminmax(t, a, b, max, nan)?
            } else {
                let (x, y) = (int_value(t, a), int_value(t, b));
                let pick_a = if max { x >= y } else { x <= y };
                if pick_a { a } else { b }
            };
            set(th, arg(0)?, t, v)?;
        }
        Op::Abs(t) | Op::Neg(t) => {
            let a = get(th, 1)?;
            let neg = matches!(inst.op, Op::Neg(_));
            let v = if t.is_float() {
                let sign = 1u64 << (t.bits() - 1);
                if neg { a ^ sign } else { a & !sign }
            } else {
                let x = int_value(t, a);
                (if neg { x.wrapping_neg() } else { x.abs() }) as u64
            };
            set(th, arg(0)?, t, v)?;
        }
        Op::Not(t) => {
            let a = get(th, 1)?;
            set(th, arg(0)?, t, !a)?;
        }
        Op::And(t) | Op::Or(t) | Op::Xor(t) => {
            let (a, b) = (get(th, 1)?, get(th, 2)?);
            let v = match inst.op {
                Op::And(_) => a & b,
                Op::Or(_) => a | b,
                _ => a ^ b,
            };
            set(th, arg(0)?, t, v)?;
        }
        Op::Lop3(t) => {
            // Bit i of the result is bit (a_i b_i c_i, read as a 3-bit
            // number) of the table.
            let (a, b, c, lut) = (get(th, 1)?, get(th, 2)?, get(th, 3)?, get(th, 4)?);
            let mut v = 0u64;
            for i in 0..t.bits() {
                let sel = ((a >> i) & 1) << 2 | ((b >> i) & 1) << 1 | ((c >> i) & 1);
                v |= ((lut >> sel) & 1) << i;
            }
            set(th, arg(0)?, t, v)?;
        }
        Op::Shl(t) | Op::Shr(t) => {
            let (a, b) = (get(th, 1)?, get(th, 2)? & 0xffff_ffff);
            let w = u64::from(t.bits());
            let v = if matches!(inst.op, Op::Shl(_)) {
                if b >= w { 0 } else { a << b }
            } else if t.signed() {
                (sx(a, t.bits()) >> b.min(w - 1).min(63)) as u64
            } else if b >= w {
                0
            } else {
                (a & t.mask()) >> b
            };
            set(th, arg(0)?, t, v)?;
        }
        Op::Copysign(t) => {
            // d = |b| with the sign of a.
            let (a, b) = (get(th, 1)?, get(th, 2)?);
            let sign = 1u64 << (t.bits() - 1);
            set(th, arg(0)?, t, (b & !sign) | (a & sign))?;
        }
        Op::Sqrt(t)
        | Op::Rcp(t)
        | Op::Rsqrt(t)
        | Op::Ex2(t)
        | Op::Lg2(t)
        | Op::Sin(t)
        | Op::Cos(t)
        | Op::Tanh(t) => {
            let a = get(th, 1)?;
            let v = match t {
                // sqrt, rcp and division round once in f32 itself.
                Ty::F32 => match inst.op {
                    Op::Sqrt(_) => bits32(f32_of(a).sqrt()),
                    Op::Rcp(_) => bits32(1.0 / f32_of(a)),
                    _ => fbits(t, unary(inst.op, f64::from(f32_of(a)))),
                },
                Ty::F64 => fbits(t, unary(inst.op, f64::from_bits(a))),
                _ => return Err(format!("{:?} of {t:?}", inst.op)),
            };
            set(th, arg(0)?, t, v)?;
        }
        Op::Testp(test, t) => {
            let x = fval(t, get(th, 1)?)?;
            let min_normal = match t {
                Ty::F32 => f64::from(f32::MIN_POSITIVE),
                _ => f64::MIN_POSITIVE,
            };
            let r = match test {
                Test::Finite => x.is_finite(),
                Test::Infinite => x.is_infinite(),
                Test::Number => !x.is_nan(),
                Test::NotANumber => x.is_nan(),
                Test::Normal => x.is_finite() && x.abs() >= min_normal,
                Test::Subnormal => x != 0.0 && x.abs() < min_normal,
            };
            set(th, arg(0)?, Ty::Pred, u64::from(r))?;
        }
        Op::Setp(cmp, combine, t) => {
            let mut r = compare(cmp, t, get(th, 1)?, get(th, 2)?)?;
            if let Some(c) = combine {
                let p = get(th, 3)? & 1 == 1;
                r = match c {
                    0 => r && p,
                    1 => r || p,
                    _ => r ^ p,
                };
            }
            set(th, arg(0)?, Ty::Pred, u64::from(r))?;
        }
        Op::Selp(t) => {
            let c = get(th, 3)? & 1 == 1;
            let v = if c { get(th, 1)? } else { get(th, 2)? };
            set(th, arg(0)?, t, v)?;
        }
        Op::Cvt { d, s, rnd, sat } => {
            let v = if matches!(d, Ty::F16x2 | Ty::BF16x2) {
                // The first source goes to the upper half.
                let half = if d == Ty::F16x2 { Ty::F16 } else { Ty::BF16 };
                let hi = float::cvt(half, s, rnd, sat, get(th, 1)?)?;
                let lo = float::cvt(half, s, rnd, sat, get(th, 2)?)?;
                (hi << 16) | lo
            } else {
                float::cvt(d, s, rnd, sat, get(th, 1)?)?
            };
            let dt = if matches!(d, Ty::F16x2 | Ty::BF16x2) {
                Ty::B32
            } else {
                d
            };
            set(th, arg(0)?, dt, v)?;
        }
        Op::Cvta => {
            let v = get(th, 1)?;
            set(th, arg(0)?, Ty::B64, v)?;
        }
        Op::Bfe(t) => {
            let a = get(th, 1)?;
            let w = t.bits();
            let pos = (get(th, 2)? & 0xff) as u32;
            let len = (get(th, 3)? & 0xff) as u32;
            let mut v = 0u64;
            for i in 0..w {
                let bit = if i < len && pos + i < w {
                    (a >> (pos + i)) & 1
                } else if t.signed() && len > 0 {
                    // The sign: the field's top bit (or the source's).
                    (a >> (pos + len - 1).min(w - 1)) & 1
                } else {
                    0
                };
                v |= bit << i;
            }
            set(th, arg(0)?, t, v)?;
        }
        Op::Popc(t) | Op::Clz(t) | Op::Brev(t) => {
            let a = get(th, 1)? & t.mask();
            let w = t.bits();
            let v = match inst.op {
                Op::Popc(_) => u64::from(a.count_ones()),
                Op::Clz(_) => u64::from(a.leading_zeros() - (64 - w)),
                _ => a.reverse_bits() >> (64 - w),
            };
            let dt = if matches!(inst.op, Op::Brev(_)) {
                t
            } else {
                Ty::U32
            };
            set(th, arg(0)?, dt, v)?;
        }
        Op::Ld(space, vec, t) => load(ctx, th, tid, inst, space, vec, t, shared, dev, stats)?,
        Op::St(space, vec, t) => store(ctx, th, tid, inst, space, vec, t, shared, dev, stats)?,
        Op::AtomAdd(t) => {
            let Some(Operand::Addr(a)) = inst.ops.get(1) else {
                return Err("an atomic without an address".into());
            };
            let len = t.bytes() as usize;
            let addr = ctx.addr(th, a);
            if !addr.is_multiple_of(len as u64) {
                return Err(format!("an atomic of {len} bytes at a misaligned address"));
            }
            let (b, off) = dev.locate(addr, len).ok_or_else(|| global_oob(addr, len))?;
            let mut old = [0u8; 8];
            old[..len].copy_from_slice(&dev.buffers[b][off..off + len]);
            let old = u64::from_le_bytes(old);
            let add = get(th, 2)?;
            let new = old.wrapping_add(add).to_le_bytes();
            dev.buffers[b][off..off + len].copy_from_slice(&new[..len]);
            stats.global_loaded += len as u64;
            stats.global_stored += len as u64;
            set(th, arg(0)?, t, old)?;
        }
        Op::MbarInit => {
            let Operand::Addr(a) = arg(0)? else {
                return Err("mbarrier.init takes [bar], count".into());
            };
            let count = get(th, 1)?;
            if count == 0 || count > 0xfff {
                return Err(format!("an mbarrier of {count} arrivals"));
            }
            let bar = Mbarrier {
                count: count as u16,
                pending: count as u16,
                phase: 0,
                tx: 0,
            };
            bar.write(shared, ctx.addr(th, a))?;
        }
        Op::MbarArriveTx | Op::MbarArrive => {
            let Operand::Addr(a) = arg(1)? else {
                return Err("mbarrier.arrive takes state, [bar] (and bytes with expect_tx)".into());
            };
            let addr = ctx.addr(th, a);
            let mut bar = Mbarrier::read(shared, addr)?;
            let state = u64::from(bar.phase);
            if inst.op == Op::MbarArriveTx {
                bar.tx += get(th, 2)? as i64;
            }
            if bar.pending == 0 {
                return Err("an arrival at an mbarrier whose phase has no arrival left".into());
            }
            bar.pending -= 1;
            bar.settle();
            bar.write(shared, addr)?;
            if !matches!(arg(0)?, Operand::Sink) {
                set(th, arg(0)?, Ty::B64, state)?;
            }
        }
        Op::Tma(rank) => {
            let (Operand::Addr(d), Operand::Vec(m), Operand::Addr(b)) = (arg(0)?, arg(1)?, arg(2)?)
            else {
                return Err("cp.async.bulk.tensor takes [dst], [map, {coords}], [bar]".into());
            };
            let (Some(map), Some(Operand::Vec(coords))) = (m.first(), m.get(1)) else {
                return Err("cp.async.bulk.tensor takes [dst], [map, {coords}], [bar]".into());
            };
            let at = ctx.get(th, tid, map)?;
            if !at.is_multiple_of(64) {
                return Err(format!("a tensor map at {at:#x}, not 64-byte aligned"));
            }
            let (mb, mo) = dev.locate(at, 128).ok_or_else(|| global_oob(at, 128))?;
            let tm = crate::tensor_map::TensorMap::decode(&dev.buffers[mb][mo..mo + 128])?;
            if tm.dims.len() != rank as usize || coords.len() != rank as usize {
                return Err(format!(
                    "a {rank}d copy with {} coordinates of a rank-{} tensor map",
                    coords.len(),
                    tm.dims.len()
                ));
            }
            let c: Vec<i64> = coords
                .iter()
                .map(|o| ctx.get(th, tid, o).map(|v| v as u32 as i32 as i64))
                .collect::<Result<_, _>>()?;
            let dst = ctx.addr(th, d);
            if tm.swizzle == 128 && !(dst - SHARED_BASE).is_multiple_of(1024) {
                return Err(format!(
                    "a 128-byte-swizzled copy to shared offset {}, not 1024-byte aligned",
                    dst - SHARED_BASE
                ));
            }
            let e = tm.elem_bytes as usize;
            let total = tm.box_bytes();
            shared.offset(dst, total as usize)?;
            for (j, src) in tm.box_addresses(&c).into_iter().enumerate() {
                let mut data = vec![0u8; e];
                if let Some(src) = src {
                    let (sb, so) = dev.locate(src, e).ok_or_else(|| global_oob(src, e))?;
                    data.copy_from_slice(&dev.buffers[sb][so..so + e]);
                    stats.global_loaded += e as u64;
                }
                let off = shared.offset(dst + tm.smem_offset((j * e) as u64), e)?;
                shared.bytes[off..off + e].copy_from_slice(&data);
            }
            let addr = ctx.addr(th, b);
            let mut bar = Mbarrier::read(shared, addr)?;
            bar.tx -= total as i64;
            bar.settle();
            bar.write(shared, addr)?;
        }
        Op::MbarTryWait => unreachable!("run_thread waits at mbarriers"),
        Op::Prefetch => {
            let Operand::Addr(a) = arg(0)? else {
                return Err("a prefetch without an address".into());
            };
            let addr = ctx.addr(th, a);
            dev.locate(addr, 1).ok_or_else(|| global_oob(addr, 1))?;
        }
        Op::CpAsync => {
            let (Operand::Addr(d), Operand::Addr(s)) = (arg(0)?, arg(1)?) else {
                return Err("cp.async takes two addresses".into());
            };
            let size = get(th, 2)? as usize;
            let src_size = if ops.len() > 3 {
                get(th, 3)? as usize
            } else {
                size
            };
            if ![4, 8, 16].contains(&size) || src_size > size {
                return Err(format!(
                    "cp.async of {size} bytes, {src_size} from the source"
                ));
            }
            let (dst, src) = (ctx.addr(th, d), ctx.addr(th, s));
            if dst % size as u64 != 0 || src % size as u64 != 0 {
                return Err(format!(
                    "cp.async of {size} bytes between misaligned addresses (shared offset {}, \
                     global {src:#x})",
                    dst as i64 - SHARED_BASE as i64
                ));
            }
            shared.offset(dst, size)?;
            let mut data = vec![0u8; size];
            if src_size > 0 {
                let (b, off) = dev
                    .locate(src, src_size)
                    .ok_or_else(|| global_oob(src, src_size))?;
                data[..src_size].copy_from_slice(&dev.buffers[b][off..off + src_size]);
                stats.global_loaded += src_size as u64;
            }
            th.open.push(Pending { dst, data });
        }
        Op::CpCommit => {
            let group = std::mem::take(&mut th.open);
            th.groups.push_back(group);
        }
        Op::CpWait | Op::CpWaitAll => {
            let keep = if let Op::CpWait = inst.op {
                get(th, 0)? as usize
            } else {
                let group = std::mem::take(&mut th.open);
                th.groups.push_back(group);
                0
            };
            while th.groups.len() > keep {
                for p in th.groups.pop_front().unwrap() {
                    shared.write(p.dst, &p.data, tid)?;
                }
            }
        }
        Op::Fence => {}
        Op::Bra
        | Op::Ret
        | Op::Bar
        | Op::Shfl(_)
        | Op::WarpSync
        | Op::Ldmatrix(..)
        | Op::Mma(_)
        | Op::MmaI8(..)
        | Op::MmaF8(..)
        | Op::Wgmma(..) => {
            unreachable!("run_thread handles {:?}", inst.op)
        }
    }
    Ok(())
}

fn unary(op: Op, x: f64) -> f64 {
    match op {
        Op::Sqrt(_) => x.sqrt(),
        Op::Rcp(_) => 1.0 / x,
        Op::Rsqrt(_) => 1.0 / x.sqrt(),
        Op::Ex2(_) => x.exp2(),
        Op::Lg2(_) => x.log2(),
        Op::Sin(_) => x.sin(),
        Op::Cos(_) => x.cos(),
        Op::Tanh(_) => x.tanh(),
        _ => unreachable!("not a unary float op: {op:?}"),
    }
}

fn global_oob(addr: u64, len: usize) -> String {
    if addr >= crate::GLOBAL_BASE {
        let rel = addr - crate::GLOBAL_BASE;
        format!(
            "a global access of {len} bytes at byte {} of buffer {}, outside it",
            rel & 0xffff_ffff,
            rel >> 32
        )
    } else {
        format!("a global access of {len} bytes at {addr:#x}, in no buffer")
    }
}

/// The registers of a load's or store's value operand.
fn value_regs(o: &Operand) -> &[Operand] {
    match o {
        Operand::Vec(v) => v,
        o => std::slice::from_ref(o),
    }
}

#[allow(clippy::too_many_arguments)]
fn load(
    ctx: &Ctx,
    th: &mut Thread,
    tid: u32,
    inst: &Inst,
    space: Space,
    vec: u8,
    t: Ty,
    shared: &mut Shared,
    dev: &mut Device,
    stats: &mut Stats,
) -> Result<(), String> {
    let Some(Operand::Addr(a)) = inst.ops.get(1) else {
        return Err("a load without an address".into());
    };
    let dsts = value_regs(&inst.ops[0]);
    if dsts.len() != usize::from(vec) {
        return Err(format!("{} registers for a v{vec} load", dsts.len()));
    }
    let es = t.bytes() as usize;
    let len = es * usize::from(vec);
    let addr = ctx.addr(th, a);
    let mut buf = [0u8; 32];
    let bytes: &[u8] = match space {
        Space::Param => {
            let v = ctx
                .args
                .get(addr as usize)
                .ok_or_else(|| format!("parameter {addr} of {}", ctx.args.len()))?;
            buf[..8].copy_from_slice(&v.to_le_bytes());
            &buf[..len.min(8)]
        }
        Space::Global => {
            if !addr.is_multiple_of(len as u64) {
                return Err(format!(
                    "a global load of {len} bytes at a misaligned address"
                ));
            }
            let (b, off) = dev.locate(addr, len).ok_or_else(|| global_oob(addr, len))?;
            stats.global_loaded += len as u64;
            buf[..len].copy_from_slice(&dev.buffers[b][off..off + len]);
            &buf[..len]
        }
        Space::Shared => {
            if !addr.is_multiple_of(len as u64) {
                return Err(format!(
                    "a shared load of {len} bytes at misaligned offset {}",
                    addr as i64 - SHARED_BASE as i64
                ));
            }
            buf[..len].copy_from_slice(shared.read(addr, len, tid)?);
            &buf[..len]
        }
    };
    for (j, d) in dsts.iter().enumerate() {
        let mut v = 0u64;
        for k in 0..es {
            v |= u64::from(bytes[j * es + k]) << (8 * k);
        }
        if t.signed() {
            v = sx(v, t.bits()) as u64;
        }
        set(th, d, Ty::B64, v)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn store(
    ctx: &Ctx,
    th: &mut Thread,
    tid: u32,
    inst: &Inst,
    space: Space,
    vec: u8,
    t: Ty,
    shared: &mut Shared,
    dev: &mut Device,
    stats: &mut Stats,
) -> Result<(), String> {
    let Some(Operand::Addr(a)) = inst.ops.first() else {
        return Err("a store without an address".into());
    };
    let srcs = value_regs(&inst.ops[1]);
    if srcs.len() != usize::from(vec) {
        return Err(format!("{} registers for a v{vec} store", srcs.len()));
    }
    let es = t.bytes() as usize;
    let len = es * usize::from(vec);
    let mut buf = [0u8; 32];
    for (j, s) in srcs.iter().enumerate() {
        let v = ctx.get(th, tid, s)?;
        buf[j * es..(j + 1) * es].copy_from_slice(&v.to_le_bytes()[..es]);
    }
    let bytes = &buf[..len];
    let addr = ctx.addr(th, a);
    if !addr.is_multiple_of(len as u64) {
        return Err(format!("a store of {len} bytes at a misaligned address"));
    }
    match space {
        Space::Param => return Err("a store to a parameter".into()),
        Space::Global => {
            let (b, off) = dev.locate(addr, len).ok_or_else(|| global_oob(addr, len))?;
            dev.buffers[b][off..off + len].copy_from_slice(bytes);
            stats.global_stored += len as u64;
        }
        Space::Shared => shared.write(addr, bytes, tid)?,
    }
    Ok(())
}
