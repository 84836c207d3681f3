//! Decoded instructions.

/// A PTX scalar type (`.b32`, `.f16x2`, `.pred`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    B8,
    B16,
    B32,
    B64,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    BF16,
    F16x2,
    BF16x2,
    F32,
    F64,
    Pred,
    /// fp8 (`.e4m3`, `.e5m2`): `mma` operands only.
    E4m3,
    E5m2,
}

impl Ty {
    pub(crate) fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "bf16" => Ty::BF16,
            "f16x2" => Ty::F16x2,
            "bf16x2" => Ty::BF16x2,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            "e4m3" => Ty::E4m3,
            "e5m2" => Ty::E5m2,
            _ => return None,
        })
    }

    /// Width in bits (a predicate is one bit).
    #[inline]
    pub fn bits(self) -> u32 {
        match self {
            Ty::Pred => 1,
            Ty::B8 | Ty::U8 | Ty::S8 | Ty::E4m3 | Ty::E5m2 => 8,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::BF16 => 16,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 | Ty::F16x2 | Ty::BF16x2 => 32,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 64,
        }
    }

    /// Width in bytes in memory.
    pub fn bytes(self) -> u32 {
        self.bits().div_ceil(8)
    }

    pub(crate) fn signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }

    pub(crate) fn is_float(self) -> bool {
        matches!(
            self,
            Ty::F16 | Ty::BF16 | Ty::F16x2 | Ty::BF16x2 | Ty::F32 | Ty::F64
        )
    }

    /// The mask of the type's bits in a register.
    #[inline]
    pub(crate) fn mask(self) -> u64 {
        match self.bits() {
            64 => u64::MAX,
            b => (1u64 << b) - 1,
        }
    }
}

/// Comparisons of `setp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Lo,
    Ls,
    Hi,
    Hs,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

impl Cmp {
    pub(crate) fn parse(s: &str) -> Option<Cmp> {
        Some(match s {
            "eq" => Cmp::Eq,
            "ne" => Cmp::Ne,
            "lt" => Cmp::Lt,
            "le" => Cmp::Le,
            "gt" => Cmp::Gt,
            "ge" => Cmp::Ge,
            "lo" => Cmp::Lo,
            "ls" => Cmp::Ls,
            "hi" => Cmp::Hi,
            "hs" => Cmp::Hs,
            "equ" => Cmp::Equ,
            "neu" => Cmp::Neu,
            "ltu" => Cmp::Ltu,
            "leu" => Cmp::Leu,
            "gtu" => Cmp::Gtu,
            "geu" => Cmp::Geu,
            "num" => Cmp::Num,
            "nan" => Cmp::Nan,
            _ => return None,
        })
    }
}

/// Tests of `testp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Test {
    Finite,
    Infinite,
    Number,
    NotANumber,
    Normal,
    Subnormal,
}

/// Rounding of `cvt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rnd {
    Nearest,
    Zero,
    Down,
    Up,
    IntNearest,
    IntZero,
    IntDown,
    IntUp,
}

/// State spaces of loads and stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Param,
    Global,
    Shared,
}

/// Modes of `shfl.sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shfl {
    Up,
    Down,
    Bfly,
    Idx,
}

/// Special registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    Tid,
    Ntid,
    Ctaid,
    Nctaid,
    Lane,
    Warp,
    Zero,
    One,
}

/// The base of an address operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    Reg(u32),
    Param(u32),
    Shared(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr {
    pub base: Base,
    pub offset: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    Reg(u32),
    /// `!%p`.
    NotPred(u32),
    Imm(u64),
    Special(Special),
    /// The shared address of a shared array.
    SharedSym(u32),
    Addr(Addr),
    Vec(Vec<Operand>),
    /// `_`, or a label before it is resolved.
    Sink,
    /// A resolved branch target (an instruction index).
    Label(u32),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    Mov(Ty),
    Add(Ty),
    Sub(Ty),
    /// Type, `.hi`, `.wide` (neither: `.lo`, or a float multiply).
    Mul(Ty, bool, bool),
    Mad(Ty, bool, bool),
    Fma(Ty),
    Div(Ty),
    Rem(Ty),
    /// Type, `.NaN`.
    Min(Ty, bool),
    Max(Ty, bool),
    Abs(Ty),
    Neg(Ty),
    Not(Ty),
    And(Ty),
    Or(Ty),
    Xor(Ty),
    /// `lop3`: any bitwise function of three operands, by its truth table
    /// (the fourth operand).
    Lop3(Ty),
    Shl(Ty),
    Shr(Ty),
    Copysign(Ty),
    Sqrt(Ty),
    Rcp(Ty),
    Rsqrt(Ty),
    Ex2(Ty),
    Lg2(Ty),
    Sin(Ty),
    Cos(Ty),
    Tanh(Ty),
    Testp(Test, Ty),
    /// Comparison, combining operation (0 and, 1 or, 2 xor), type.
    Setp(Cmp, Option<u8>, Ty),
    Selp(Ty),
    Cvt {
        d: Ty,
        s: Ty,
        rnd: Rnd,
        sat: bool,
    },
    Cvta,
    Bfe(Ty),
    Popc(Ty),
    Clz(Ty),
    Brev(Ty),
    /// Space, vector width, type.
    Ld(Space, u8, Ty),
    St(Space, u8, Ty),
    /// `atom.global.add`: the old value into the destination.
    AtomAdd(Ty),
    CpAsync,
    CpCommit,
    CpWait,
    CpWaitAll,
    Bra,
    Ret,
    Bar,
    Fence,
    /// `prefetch.global.L1` / `.L2`: no effect on values; the address must
    /// lie inside an allocation (a kernel that prefetches past its
    /// buffers has an address bug).
    Prefetch,
    Shfl(Shfl),
    /// Matrices (1, 2, 4), `.trans`.
    Ldmatrix(u8, bool),
    /// `bar.warp.sync`: the warp's lanes meet; orders their shared
    /// accesses.
    WarpSync,
    /// `mma.sync.aligned.m16n8k16.row.col.f32.T.T.f32`.
    Mma(Ty),
    /// `mma.sync.aligned.m16n8k32.row.col.s32.A.B.s32` (A, B: `s8`, `u8`).
    MmaI8(Ty, Ty),
    /// `mma.sync.aligned.m16n8k32.row.col.f32.A.B.f32` (A, B: `e4m3`,
    /// `e5m2`).
    MmaF8(Ty, Ty),
    /// `mbarrier.init.shared::cta.b64 [bar], count`.
    MbarInit,
    /// `mbarrier.arrive.expect_tx.shared::cta.b64 state, [bar], bytes`.
    MbarArriveTx,
    /// `mbarrier.arrive.shared::cta.b64 state, [bar]`: one arrival.
    MbarArrive,
    /// `mbarrier.try_wait.parity.shared::cta.b64 p, [bar], parity`: a
    /// thread whose phase has not completed waits here (the block runs
    /// the others) instead of spinning.
    MbarTryWait,
    /// `cp.async.bulk.tensor.Nd.shared::cluster.global.tile.mbarrier::
    /// complete_tx::bytes [dst], [map, {c0, ..}], [bar]`: a box of a
    /// tensor map copied at once (see [`crate::tensor_map`]), its bytes
    /// completed on the barrier.
    Tma(u8),
    /// `wgmma.mma_async.sync.aligned.m64nNkK.D.A.B` with B in shared
    /// memory (a descriptor) and A in shared memory or (16-bit types) in
    /// registers: N, K, the accumulator type, A's and B's types.
    Wgmma(u32, u32, Ty, Ty, Ty),
}

impl Op {
    /// Whether the warp group (four warps) executes this instruction
    /// together.
    pub(crate) fn is_group_collective(self) -> bool {
        matches!(self, Op::Wgmma(..))
    }

    /// Whether the warp executes this instruction together.
    pub(crate) fn is_warp_collective(self) -> bool {
        matches!(
            self,
            Op::Shfl(_)
                | Op::WarpSync
                | Op::Ldmatrix(..)
                | Op::Mma(_)
                | Op::MmaI8(..)
                | Op::MmaF8(..)
        )
    }
}

/// One instruction: guard, operation, operands, source line.
#[derive(Clone, Debug)]
pub struct Inst {
    /// Predicate register and whether it is negated.
    pub guard: Option<(u32, bool)>,
    pub op: Op,
    pub ops: Vec<Operand>,
    pub line: u32,
}
