//! The contract between the PTX backend (`kiln::codegen::ptx`) and the CUDA
//! executor: what one compiled kernel is, and how it is launched.
//!
//! A [`PtxKernel`] is a whole PTX module with one `.entry`. Its parameters,
//! in order, are
//!
//! ```text
//! .param .u64 in0, .., .param .u64 in(n-1),   // device pointers to the inputs
//! .param .u64 out,                            // the output
//! .param .s64 dim0, .., .param .s64 dim(d-1), // Kernel::dims, bound at run time
//! .param .s64 units                           // work units of this launch
//! .param .u64 scratch                         // split grids only (Grid::SplitTiles, BalancedTiles)
//! ```
//!
//! Tensors are row-major in their storage types, exactly as `HostTensor`
//! holds them (sub-byte types packed LSB first). Every buffer the executor
//! allocates is 256-byte aligned; model inputs are copied into such buffers,
//! so kernels may use vector loads when their own index arithmetic keeps
//! the element offset aligned.
//!
//! The work is `units` independent units ([`Grid`]), and every kernel walks
//! them with a grid-stride loop, so the executor may launch fewer blocks
//! than units ([`launch_config`] caps the grid).

/// How a kernel's work divides into units, and units into blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Grid {
    /// One thread per `per_thread` consecutive output elements (row-major
    /// order): `units = ceil(elements / per_thread)` threads, `block` of
    /// them per block. A thread owns whole bytes of a sub-byte output.
    Elements { per_thread: u32 },
    /// One block per row: `units` is the product of the output's leading
    /// axes, all but the last `inner_axes`; the block computes every output
    /// element of its row (a softmax row, a reduced element), then walks to
    /// the row a grid further. The executor launches at most as many
    /// blocks as the device keeps resident ([`launch_config`]).
    Rows { inner_axes: u32 },
    /// One block per output tile of a contraction: the output's last two
    /// axes (`m`, `n`) are cut into `tile_m x tile_n` tiles and `units` is
    /// the product of the leading (batch) axes times the tiles of one
    /// matrix; the block computes its tile, then walks to the tile a grid
    /// further.
    Tiles { tile_m: u32, tile_n: u32 },
    /// [`Grid::Tiles`] with each tile's work split over `splits` blocks
    /// (attention over a long key range): `units` is the tiles' count
    /// times `splits`, the split the fastest-varying index. The blocks of a
    /// tile combine their partial results through scratch memory: the
    /// entry takes one more parameter, the address of `units * scratch`
    /// bytes that are zero when first allocated, kept between the launches
    /// of one run state, and private to it; a kernel leaves every byte it
    /// relies on being zero (a tile's arrival counter) zero again.
    SplitTiles {
        tile_m: u32,
        tile_n: u32,
        splits: u32,
        scratch: u32,
    },
    /// [`Grid::Tiles`] balanced over `sms` multiprocessors: the tiles of
    /// the last, partial wave (`tiles % sms` of them, when `splits` times
    /// as many blocks fit in `sms`) are each split over `splits` blocks,
    /// so that every multiprocessor gets about the same work in one wave
    /// (W4's 172 tiles on 132: 132 whole tiles and 40 in thirds, 252
    /// blocks, rather than 40 multiprocessors computing two tiles while
    /// 92 compute one). Units `0 .. whole` are the whole tiles `0 ..
    /// whole`; unit `whole + s * r + p` is part `p` of tile `whole + r`
    /// ([`Grid::balanced_units`]). The kernel recovers `whole` from
    /// `units`: `whole = (tiles * splits - units) / (splits - 1)`. The
    /// entry takes the scratch parameter of [`Grid::SplitTiles`], `units *
    /// scratch` bytes with the same rules.
    BalancedTiles {
        tile_m: u32,
        tile_n: u32,
        splits: u32,
        scratch: u32,
        sms: u32,
    },
    /// One block per `tile_h x tile_w` spatial tile of an image output
    /// whose logical shape is `[.., C, H, W]` (rank at least 3; the layout
    /// in memory may be channels-last): `units` is the product of the axes
    /// before the channel axis (the batch) times
    /// `ceil(H / tile_h) * ceil(W / tile_w)`; the channel axis is not cut
    /// (the block computes every channel of its pixels). The block computes
    /// its tile, then walks to the tile a grid further. An output of rank
    /// below 3 has no units.
    Images { tile_h: u32, tile_w: u32 },
}

impl Grid {
    /// The units of a [`Grid::BalancedTiles`] launch of `tiles` tiles: the
    /// `tiles % sms` tiles past the whole waves are split `splits` ways
    /// when that many blocks fit in `sms` (and `splits > 1`); otherwise
    /// every tile is one unit.
    pub fn balanced_units(tiles: u64, splits: u32, sms: u32) -> u64 {
        let (s, sms) = (u64::from(splits), u64::from(sms.max(1)));
        let rest = tiles % sms;
        if s > 1 && rest > 0 && rest.saturating_mul(s) <= sms {
            tiles - rest + rest * s
        } else {
            tiles
        }
    }
}

/// One kernel of the kernel dialect compiled to PTX.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtxKernel {
    /// The `.entry` name in [`PtxKernel::ptx`].
    pub entry: String,
    /// The module text: `.version`, `.target`, `.address_size 64`, one entry.
    pub ptx: String,
    /// The target it was written for (`sm_90a`, `sm_80`).
    pub arch: String,
    /// Threads per block: a multiple of 32, at most 1024.
    pub block: u32,
    pub grid: Grid,
    /// Dynamic shared memory per block, in bytes.
    pub shared_bytes: u32,
    /// The tensor maps its `cp.async.bulk.tensor` copies read (empty: the
    /// entry takes no `p_tmaps` parameter).
    pub tensor_maps: Vec<TensorMapSpec>,
}

/// A tensor map a kernel reads, made by the executor for each launch
/// (the map holds the argument's address): kernel input `arg`, of shape
/// `[.., R, C]` at the launch's dims, seen as three dimensions `[C, R, L]`
/// (innermost first; `L` the product of the leading axes, 1 without
/// any), a box of `box_inner` x `box_rows` x 1 elements of `elem_bytes`
/// bytes, with the 128-byte swizzle (`box_inner * elem_bytes` is 128),
/// out-of-bounds elements read as zeros. The maps of a launch lie 128
/// bytes apart in device memory passed as the entry's last parameter,
/// `p_tmaps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorMapSpec {
    pub arg: u32,
    pub box_inner: u32,
    pub box_rows: u32,
    pub elem_bytes: u32,
}

impl TensorMapSpec {
    /// Extents `[C, R, L]` and byte strides of dimensions 1 and 2, for
    /// the argument's shape.
    pub fn view(&self, shape: &[usize]) -> ([u64; 3], [u64; 2]) {
        let r = shape.len();
        let c = shape.last().copied().unwrap_or(1) as u64;
        let rows = if r >= 2 { shape[r - 2] as u64 } else { 1 };
        let lead: u64 = shape[..r.saturating_sub(2)]
            .iter()
            .map(|&d| d as u64)
            .product();
        let e = u64::from(self.elem_bytes);
        ([c, rows, lead], [c * e, c * rows * e])
    }
}

/// Machine code for the kernels, assembled by `ptxas` for one GPU
/// architecture: the executor loads a cubin instead of having the driver
/// compile the kernel's PTX when the device can run it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cubins {
    /// The architecture assembled for (`sm_90a`, `sm_80`).
    pub arch: String,
    /// The assembler, as `ptxas --version` names itself.
    pub assembler: String,
    /// One per kernel, in launch order; empty where there is none.
    pub modules: Vec<Vec<u8>>,
}

impl Cubins {
    /// Whether a device of compute capability `major.minor` runs cubins
    /// for `arch`: `sm_XYa` only on X.Y, `sm_XY` on X.Z for Z >= Y.
    pub fn run_on(arch: &str, major: i32, minor: i32) -> bool {
        let Some((want_major, want_minor, specific)) = parse_arch(arch) else {
            return false;
        };
        major == want_major
            && if specific {
                minor == want_minor
            } else {
                minor >= want_minor
            }
    }
}

/// `sm_XY` as `(X, Y, false)`, `sm_XYa` as `(X, Y, true)`; `None` for
/// other names.
pub(crate) fn parse_arch(arch: &str) -> Option<(i32, i32, bool)> {
    let digits = arch.strip_prefix("sm_")?;
    let (digits, specific) = match digits.strip_suffix('a') {
        Some(d) => (d, true),
        None => (digits, false),
    };
    let n = digits.parse::<i32>().ok()?;
    Some((n / 10, n % 10, specific))
}

/// The most blocks one launch uses; kernels loop over the rest.
pub const MAX_BLOCKS: u64 = 1 << 20;

impl PtxKernel {
    /// The number of work units for an output of this shape.
    pub fn units(&self, out_shape: &[usize]) -> u64 {
        match self.grid {
            Grid::Elements { per_thread } => {
                let n: u64 = out_shape.iter().map(|&d| d as u64).product();
                n.div_ceil(per_thread.max(1) as u64)
            }
            Grid::Rows { inner_axes } => {
                let keep = out_shape.len().saturating_sub(inner_axes as usize);
                out_shape[..keep].iter().map(|&d| d as u64).product()
            }
            Grid::Tiles { tile_m, tile_n } => tiles(out_shape, tile_m, tile_n),
            Grid::SplitTiles {
                tile_m,
                tile_n,
                splits,
                ..
            } => tiles(out_shape, tile_m, tile_n).saturating_mul(u64::from(splits.max(1))),
            Grid::BalancedTiles {
                tile_m,
                tile_n,
                splits,
                sms,
                ..
            } => Grid::balanced_units(tiles(out_shape, tile_m, tile_n), splits, sms),
            Grid::Images { tile_h, tile_w } => images(out_shape, tile_h, tile_w),
        }
    }

    /// Bytes of scratch memory a launch of `units` units takes (`None`:
    /// the kernel takes no scratch parameter).
    pub fn scratch_bytes(&self, units: u64) -> Option<u64> {
        match self.grid {
            Grid::SplitTiles { scratch, .. } | Grid::BalancedTiles { scratch, .. } => {
                Some(units.saturating_mul(u64::from(scratch)))
            }
            Grid::Elements { .. }
            | Grid::Rows { .. }
            | Grid::Tiles { .. }
            | Grid::Images { .. } => None,
        }
    }

    /// The number of `.param`s the entry declares for a launch with
    /// `args` tensor arguments (inputs and output) and `dims` dims.
    pub fn params(&self, args: usize, dims: usize) -> usize {
        args + dims
            + 1
            + usize::from(self.scratch_bytes(0).is_some())
            + usize::from(!self.tensor_maps.is_empty())
    }
}

/// Tiles of `tile_m x tile_n` over the last two axes, times the leading axes.
fn tiles(out_shape: &[usize], tile_m: u32, tile_n: u32) -> u64 {
    let r = out_shape.len();
    if r < 2 {
        return 0;
    }
    let batch: u64 = out_shape[..r - 2].iter().map(|&d| d as u64).product();
    let tm = (out_shape[r - 2] as u64).div_ceil(u64::from(tile_m.max(1)));
    let tn = (out_shape[r - 1] as u64).div_ceil(u64::from(tile_n.max(1)));
    batch * tm * tn
}

/// Tiles of `tile_h x tile_w` over the last two (spatial) axes of a
/// `[.., C, H, W]` shape, times the axes before the channel axis; 0 below
/// rank 3.
fn images(out_shape: &[usize], tile_h: u32, tile_w: u32) -> u64 {
    let r = out_shape.len();
    if r < 3 {
        return 0;
    }
    let batch: u64 = out_shape[..r - 3].iter().map(|&d| d as u64).product();
    let th = (out_shape[r - 2] as u64).div_ceil(u64::from(tile_h.max(1)));
    let tw = (out_shape[r - 1] as u64).div_ceil(u64::from(tile_w.max(1)));
    batch * th * tw
}

/// Grid and block sizes (x only) for `units` units of `kernel`, or `None`
/// when there is no work (an empty output: the launch is skipped).
/// `resident` is how many blocks of this kernel the device runs at once
/// (occupancy times multiprocessors; 0 when unknown): a row grid launches
/// at most that many, so that each block walks several rows and what a row
/// kernel keeps across rows (weights in registers, the next row's loads in
/// flight) pays.
pub fn launch_config(kernel: &PtxKernel, units: u64, resident: u32) -> Option<(u32, u32)> {
    if units == 0 {
        return None;
    }
    let block = kernel.block.clamp(32, 1024);
    let blocks = match kernel.grid {
        Grid::Elements { .. } => units.div_ceil(block as u64),
        Grid::Rows { .. } if resident > 0 => units.min(u64::from(resident)),
        Grid::Rows { .. } => units,
        Grid::Tiles { .. }
        | Grid::SplitTiles { .. }
        | Grid::BalancedTiles { .. }
        | Grid::Images { .. } => units,
    };
    Some((blocks.min(MAX_BLOCKS) as u32, block))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(grid: Grid, block: u32) -> PtxKernel {
        PtxKernel {
            entry: "k".into(),
            ptx: String::new(),
            arch: "sm_90a".into(),
            block,
            grid,
            shared_bytes: 0,
            tensor_maps: Vec::new(),
        }
    }

    #[test]
    fn units_and_config_by_hand() {
        let e = k(Grid::Elements { per_thread: 4 }, 256);
        // 3 * 5 * 7 = 105 elements, 4 per thread: 27 threads, one block.
        assert_eq!(e.units(&[3, 5, 7]), 27);
        assert_eq!(launch_config(&e, 27, 0), Some((1, 256)));
        assert_eq!(launch_config(&e, 257, 0), Some((2, 256)));
        // Element grids are not capped by residency.
        assert_eq!(launch_config(&e, 2570, 3), Some((11, 256)));
        let r = k(Grid::Rows { inner_axes: 1 }, 128);
        assert_eq!(r.units(&[3, 5, 7]), 15);
        assert_eq!(launch_config(&r, 15, 0), Some((15, 128)));
        // Row grids: at most the resident blocks, each walking rows.
        assert_eq!(launch_config(&r, 15, 4), Some((4, 128)));
        assert_eq!(launch_config(&r, 3, 4), Some((3, 128)));
        assert_eq!(r.units(&[]), 1);
        assert_eq!(launch_config(&r, 0, 4), None);
        assert_eq!(
            launch_config(&r, 1 << 40, 0),
            Some((MAX_BLOCKS as u32, 128))
        );
        // Tiles: batch 2, m = 300 (3 tiles of 128), n = 129 (2 tiles).
        let t = k(
            Grid::Tiles {
                tile_m: 128,
                tile_n: 128,
            },
            256,
        );
        assert_eq!(t.units(&[2, 300, 129]), 12);
        assert_eq!(t.units(&[128, 128]), 1);
        assert_eq!(t.units(&[0, 128]), 0);
        assert_eq!(t.units(&[5]), 0);
        assert_eq!(launch_config(&t, 12, 4), Some((12, 256)));
        assert_eq!(t.scratch_bytes(12), None);
        assert_eq!(t.params(3, 1), 5);
        // Split tiles: the same 12 tiles, each over 5 blocks.
        let s = k(
            Grid::SplitTiles {
                tile_m: 128,
                tile_n: 128,
                splits: 5,
                scratch: 100,
            },
            128,
        );
        assert_eq!(s.units(&[2, 300, 129]), 60);
        assert_eq!(launch_config(&s, 60, 4), Some((60, 128)));
        assert_eq!(s.scratch_bytes(60), Some(6000));
        assert_eq!(s.params(3, 1), 6);
        // Balanced tiles: W4's 172 column tiles (one row tile of 16 by
        // 64) on 132 multiprocessors: 132 whole tiles, the other 40 in
        // thirds.
        let b = k(
            Grid::BalancedTiles {
                tile_m: 16,
                tile_n: 64,
                splits: 3,
                scratch: 4100,
                sms: 132,
            },
            256,
        );
        assert_eq!(b.units(&[1, 11008]), 132 + 40 * 3);
        assert_eq!(b.units(&[16, 11008]), 252);
        // 17 rows: 344 tiles, 80 past the whole waves, 240 blocks do not
        // fit in 132: no split.
        assert_eq!(b.units(&[17, 11008]), 344);
        // Fewer tiles than multiprocessors: all split (2 tiles, 6 units).
        assert_eq!(b.units(&[3, 128]), 6);
        // A whole number of waves: no split.
        assert_eq!(b.units(&[1, 64 * 264]), 264);
        assert_eq!(b.units(&[0, 128]), 0);
        assert_eq!(launch_config(&b, 252, 2), Some((252, 256)));
        assert_eq!(b.scratch_bytes(252), Some(252 * 4100));
        assert_eq!(b.params(3, 1), 6);
        // Images: batch 2, 24 channels (not cut), H = 56 in 4 tiles of 14,
        // W = 56 in 7 tiles of 8.
        let i = k(
            Grid::Images {
                tile_h: 14,
                tile_w: 8,
            },
            128,
        );
        assert_eq!(i.units(&[2, 24, 56, 56]), 2 * 4 * 7);
        // Batch 3, H = 9 and W = 10 in 3 tiles of 4 each.
        let i4 = k(
            Grid::Images {
                tile_h: 4,
                tile_w: 4,
            },
            256,
        );
        assert_eq!(i4.units(&[3, 5, 9, 10]), 27);
        // Rank 3 is one image; the channels do not count.
        assert_eq!(i4.units(&[5, 9, 10]), 9);
        assert_eq!(i4.units(&[0, 5, 9, 10]), 0);
        // Below rank 3 there is no image.
        assert_eq!(i4.units(&[9, 10]), 0);
        assert_eq!(i4.units(&[]), 0);
        assert_eq!(launch_config(&i, 56, 4), Some((56, 128)));
        assert_eq!(launch_config(&i4, 27, 0), Some((27, 256)));
        assert_eq!(launch_config(&i4, 0, 0), None);
        assert_eq!(i.scratch_bytes(56), None);
        assert_eq!(i.params(3, 1), 5);
    }
}
