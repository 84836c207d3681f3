//! Split grids ([`super::Grid::SplitTiles`]): a tile's work dealt to
//! `splits` blocks (units `tile * splits + part`) that combine their partial
//! results through the kernel's scratch memory. The scratch holds each
//! unit's partial result (`per_unit` bytes at `unit * per_unit`), then one
//! arrival counter per tile (u32, after every unit's partial). Each block
//! stores its partial, fences and counts its arrival; the block that arrives
//! last reads every split's partial in split order (so the result does not
//! depend on which block it is), sets the counter back to zero for the next
//! launch and finishes the tile. Used by the decode attention
//! (`attention.rs`), split-K tensor-core contractions (`mma.rs`) and the
//! split tiles of the int4 fragment kernel's balanced grids
//! ([`super::Grid::BalancedTiles`], `qmma.rs`: the units past the whole
//! tiles, its own addressing of a tile's first part).

use super::asm::Class;
use super::expr::Em;

/// The scratch memory's global address (the entry's `p_scratch`).
pub(super) fn scratch(em: &mut Em) -> String {
    let (p, g) = (em.reg(Class::D), em.reg(Class::D));
    em.ins(format!("ld.param.u64 {p}, [p_scratch]"));
    em.ins(format!("cvta.to.global.u64 {g}, {p}"));
    g
}

/// A unit's tile (s64) and its part of the tile's work (u32), for a
/// power-of-two `splits`.
pub(super) fn unit_parts(em: &mut Em, unit: &str, splits: u32) -> (String, String) {
    let (tile, part) = (em.reg(Class::D), em.reg(Class::R));
    em.ins(format!(
        "shr.u64 {tile}, {unit}, {}",
        splits.trailing_zeros()
    ));
    em.ins(format!("cvt.u32.u64 {part}, {unit}"));
    em.ins(format!("and.b32 {part}, {part}, {}", splits - 1));
    (tile, part)
}

/// A block's arrival at its tile's counter, once every thread that stored
/// part of the block's partial has fenced (`fence.acq_rel.gpu`): a block
/// barrier, thread 0 counts the arrival and tells the block through a word
/// of shared memory (the last 16 bytes of the kernel's dynamic shared
/// memory, `flag_at` bytes after `smem`), and blocks other than the last
/// branch to `not_last`. The last one fences (acquiring the other blocks'
/// partials) and goes on.
pub(super) struct Arrival<'s> {
    pub scratch: &'s str,
    /// Every unit of the launch (u64), the bytes of a unit's partial.
    pub units: &'s str,
    pub per_unit: u32,
    /// The tile (s64), the thread (u32), the dynamic shared memory's
    /// address (u32) and the flag's offset in it.
    pub tile: &'s str,
    pub tid: &'s str,
    pub smem: &'s str,
    pub flag_at: u32,
    pub splits: u32,
    pub not_last: &'s str,
    /// The barrier the block's computing threads pass together.
    pub sync: String,
}

impl Arrival<'_> {
    /// Emits the arrival; the counter's address, for [`Arrival::reset`].
    pub(super) fn emit(&self, em: &mut Em) -> String {
        em.ins(self.sync.clone());
        let ctr = em.reg(Class::D);
        em.ins(format!(
            "mad.lo.s64 {ctr}, {}, {}, {}",
            self.units, self.per_unit, self.scratch
        ));
        let t4 = em.reg(Class::D);
        em.ins(format!("shl.b64 {t4}, {}, 2", self.tile));
        em.ins(format!("add.s64 {ctr}, {ctr}, {t4}"));
        let flag = em.reg(Class::R);
        em.ins(format!("add.u32 {flag}, {}, {}", self.smem, self.flag_at));
        let (p0, counted) = (em.reg(Class::P), em.a.label("counted"));
        em.ins(format!("setp.ne.u32 {p0}, {}, 0", self.tid));
        em.ins(format!("@{p0} bra {counted}"));
        let (old, last, pl) = (em.reg(Class::R), em.reg(Class::R), em.reg(Class::P));
        em.ins(format!("atom.acq_rel.gpu.global.add.u32 {old}, [{ctr}], 1"));
        em.ins(format!("setp.eq.u32 {pl}, {old}, {}", self.splits - 1));
        em.ins(format!("selp.u32 {last}, 1, 0, {pl}"));
        em.ins(format!("st.shared.u32 [{flag}], {last}"));
        em.a.place(&counted);
        em.ins(self.sync.clone());
        let (seen, pnot) = (em.reg(Class::R), em.reg(Class::P));
        em.ins(format!("ld.shared.u32 {seen}, [{flag}]"));
        em.ins(format!("setp.eq.u32 {pnot}, {seen}, 0"));
        em.ins(format!("@{pnot} bra.uni {}", self.not_last));
        em.ins("fence.acq_rel.gpu");
        ctr
    }

    /// The address of unit `unit`'s own partial (u64), plus the thread's
    /// byte offset `off` in it (s64).
    pub(super) fn own_partial(&self, em: &mut Em, unit: &str, off: &str) -> String {
        let own = em.reg(Class::D);
        em.ins(format!(
            "mad.lo.s64 {own}, {unit}, {}, {}",
            self.per_unit, self.scratch
        ));
        em.ins(format!("add.s64 {own}, {own}, {off}"));
        own
    }

    /// The address of the tile's first split's partial, plus the
    /// thread's byte offset `off` in a partial (s64): split `s`'s lies
    /// `s * per_unit` bytes on.
    pub(super) fn first_partial(&self, em: &mut Em, off: &str) -> String {
        let base = em.reg(Class::D);
        em.ins(format!(
            "shl.b64 {base}, {}, {}",
            self.tile,
            self.splits.trailing_zeros()
        ));
        em.ins(format!(
            "mad.lo.s64 {base}, {base}, {}, {}",
            self.per_unit, self.scratch
        ));
        em.ins(format!("add.s64 {base}, {base}, {off}"));
        base
    }

    /// The last block sets the tile's counter back to zero (thread
    /// `tid == 0`, after it has read every partial).
    pub(super) fn reset(em: &mut Em, ctr: &str, tid: &str) {
        let pz = em.reg(Class::P);
        em.ins(format!("setp.eq.u32 {pz}, {tid}, 0"));
        em.ins(format!("@{pz} st.global.u32 [{ctr}], 0"));
    }
}
