//! Extraction with kernel kinds: the cheapest equal program whose every
//! kernel has a shape the code generators can emit.
//!
//! Each e-class is priced in each [`Kind`] it can take: `Mem` (the value is
//! in memory: a source, or a `mat` closing a kernel) or one of the kernel
//! templates, meaning "computed inside the kernel of a consumer, as a tree
//! of this kind". A node's legal kinds follow from its op class and its
//! operands' kinds (an elementwise op extends a contraction as an epilogue;
//! a contraction takes elementwise prologues; ...). Costs are the roofline
//! times of the kernels closed below a node plus the estimate of the open
//! one. Each choice carries the set of kernels (in-memory classes) it
//! needs, so a kernel read by several consumers is counted once (the cost
//! of a DAG, greedily), while a value fused into several kernels is paid in
//! each (recompute).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::Rc;

use egg::Id;
use kiln_dialect::DType;
use kiln_dialect::ops::{Op, OpClass};

use crate::cost::{Sizes, compute_seconds, kernel_seconds, matmul_rate};
use crate::egraph::analysis::KGraph;
use crate::egraph::lang::{Head, KNode};

/// The state a class is extracted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// In memory: a source, or the output of a kernel.
    Mem,
    /// An elementwise tree (with index-mapped loads for data movement).
    Elem,
    /// A row reduction (`softmax`, norms, `reduce_*`) with elementwise prologue and epilogue.
    Row,
    /// A matmul or convolution with elementwise prologues per operand and an epilogue.
    Contract,
    /// Fused attention with elementwise prologues (rope, scale) and an epilogue.
    Attn,
    /// A pooling window with prologue and epilogue.
    Window,
    /// A fused MobileNetV2 inverted bottleneck: 1x1 expand, depthwise, 1x1 project.
    Block,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Mem,
        Kind::Elem,
        Kind::Row,
        Kind::Contract,
        Kind::Attn,
        Kind::Window,
        Kind::Block,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Mem => "mem",
            Kind::Elem => "elementwise",
            Kind::Row => "row-reduce",
            Kind::Contract => "contraction",
            Kind::Attn => "attention",
            Kind::Window => "window",
            Kind::Block => "conv-block",
        }
    }
}

/// The price of extracting a class in some kind.
#[derive(Clone, Debug)]
pub struct Cost {
    /// The in-memory classes whose kernels this choice needs (itself
    /// included, for a choice that closes a kernel), sorted: the cost of a
    /// DAG counts each kernel once, however many consumers read it.
    pub kernels: Rc<Vec<Id>>,
    /// For an in-memory choice that closes a kernel: that kernel's seconds.
    pub kernel: f64,
    /// Classes the open kernel reads from memory.
    pub reads: Rc<BTreeSet<Id>>,
    /// Arithmetic seconds of the open kernel.
    pub compute: f64,
    /// Extra bytes the open kernel moves for reading operands in a layout
    /// it handles poorly.
    pub extra: f64,
    /// How many weight-only values the open kernel recomputes from the
    /// original weights instead of reading their bind-time form: a
    /// tie-breaker, so transforms the rules chose (packing) are used.
    pub rebind: u32,
    /// Seconds of everything: the kernels needed plus the open one as if
    /// closed.
    pub total: f64,
}

/// The chosen node of a (class, kind), and the kind of each operand.
#[derive(Clone, Debug)]
pub struct Choice {
    pub node: KNode,
    pub kinds: Vec<Kind>,
    pub cost: Cost,
}

/// The extraction: the best choice per (class, kind).
pub struct Extraction {
    pub best: HashMap<(Id, Kind), Choice>,
}

struct Ctx<'a> {
    eg: &'a KGraph,
    sizes: &'a Sizes<'a>,
    sealed: &'a HashSet<Id>,
}

impl Ctx<'_> {
    fn bytes(&self, c: Id) -> f64 {
        self.sizes.bytes(&self.eg[c].data.ty)
    }

    fn estimate(&self, below: f64, reads: &BTreeSet<Id>, compute: f64, extra: f64) -> f64 {
        // `below`: the seconds of the kernels the choice needs
        let read_bytes: f64 = reads.iter().map(|&r| self.bytes(r)).sum::<f64>() + extra;
        let open = if reads.is_empty() && compute == 0.0 {
            0.0
        } else {
            kernel_seconds(self.sizes.target, read_bytes, compute)
        };
        below + open
    }
}

/// The union of two sorted sets of classes.
fn merge(a: &Rc<Vec<Id>>, b: &Rc<Vec<Id>>) -> Rc<Vec<Id>> {
    if b.is_empty() || Rc::ptr_eq(a, b) {
        return a.clone();
    }
    if a.is_empty() {
        return b.clone();
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    if out.len() == a.len() {
        a.clone()
    } else if out.len() == b.len() {
        b.clone()
    } else {
        Rc::new(out)
    }
}

fn union_set(a: &Rc<BTreeSet<Id>>, b: &Rc<BTreeSet<Id>>) -> Rc<BTreeSet<Id>> {
    if b.is_empty() || Rc::ptr_eq(a, b) {
        return a.clone();
    }
    if a.is_empty() {
        return b.clone();
    }
    let mut s = (**a).clone();
    s.extend(b.iter().copied());
    Rc::new(s)
}

/// The kinds an op node can have given the kinds of its unmaterialized
/// operands: for each target kind, which operand kinds are allowed.
fn op_kind(op: &Op) -> Kind {
    match op.class() {
        OpClass::Source => Kind::Mem,
        OpClass::Elementwise | OpClass::Movement | OpClass::Quant => Kind::Elem,
        OpClass::ChannelNorm => {
            if let Op::BatchNorm { .. } = op {
                Kind::Elem
            } else {
                Kind::Row
            }
        }
        OpClass::Reduce | OpClass::RowNorm => Kind::Row,
        OpClass::Matmul | OpClass::Conv => Kind::Contract,
        OpClass::Attention => Kind::Attn,
        OpClass::Pool => Kind::Window,
    }
}

/// Ops that may extend a kernel as its epilogue: elementwise arithmetic and
/// views (the store is index-mapped).
fn epilogue_ok(op: &Op) -> bool {
    match op.class() {
        OpClass::Elementwise | OpClass::Quant => true,
        OpClass::Movement => matches!(
            op,
            Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } | Op::Transpose { .. }
        ),
        OpClass::ChannelNorm => matches!(op, Op::BatchNorm { .. }),
        OpClass::Source
        | OpClass::Reduce
        | OpClass::RowNorm
        | OpClass::Matmul
        | OpClass::Conv
        | OpClass::Attention
        | OpClass::Pool => false,
    }
}

fn is_conv(eg: &KGraph, c: Id, depthwise: bool) -> bool {
    eg[c].nodes.iter().any(|n| match n.head {
        Head::Op(id) => {
            if let Op::Conv2d { groups, .. } = &eg.analysis.ops.get(id).op {
                let w = &eg[n.args[1]].data.ty;
                let pointwise = w.shape.dims()[2..].iter().all(|d| d.as_static() == Some(1));
                if depthwise {
                    *groups > 1 && w.shape.dims()[1].as_static() == Some(1)
                } else {
                    pointwise && *groups == 1
                }
            } else {
                false
            }
        }
        Head::Mat => false,
    })
}

/// Whether depthwise convolution class `c` can be the middle of a fused
/// inverted-bottleneck kernel (`Target::conv_block`): bf16 or f16, an odd
/// window with "same" padding, stride and dilation 1 (the form the GPU's
/// block kernel tiles; other blocks stay separate kernels).
fn tileable_depthwise(eg: &KGraph, c: Id) -> bool {
    let half = matches!(eg[c].data.ty.dtype, DType::BF16 | DType::F16);
    half && eg[c].nodes.iter().any(|n| match n.head {
        Head::Op(id) => {
            let Op::Conv2d {
                stride,
                padding,
                dilation,
                ..
            } = &eg.analysis.ops.get(id).op
            else {
                return false;
            };
            let w = eg[n.args[1]].data.ty.shape.dims();
            let (Some(kh), Some(kw)) = (w[2].as_static(), w[3].as_static()) else {
                return false;
            };
            let (ph, pw) = ((kh / 2) as i64, (kw / 2) as i64);
            kh % 2 == 1
                && kw % 2 == 1
                && stride[..] == [1, 1]
                && dilation[..] == [1, 1]
                && padding[..] == [ph, pw, ph, pw]
        }
        Head::Mat => false,
    })
}

/// Whether the value class is a concatenation of two values along the
/// second-to-last axis (the keys of an attention) whose first part is a
/// source (a KV cache input): the rows an attention kernel copies, and the
/// new ones it computes (`Target::attention_rows`).
fn is_cache_concat(eg: &KGraph, c: Id) -> bool {
    let rank = eg[c].data.ty.rank() as i64;
    eg[c].nodes.iter().any(|n| match n.head {
        Head::Op(id) => {
            if let Op::Concat { axis } = &eg.analysis.ops.get(id).op {
                let axis = if *axis < 0 { axis + rank } else { *axis };
                n.args.len() == 2
                    && axis == rank - 2
                    && eg[n.args[0]].nodes.iter().any(|m| match m.head {
                        Head::Op(id) => {
                            matches!(eg.analysis.ops.get(id).op.class(), OpClass::Source)
                        }
                        Head::Mat => false,
                    })
            } else {
                false
            }
        }
        Head::Mat => false,
    })
}

/// Whether the value class is a view of another value that keeps rows of
/// its last axis contiguous: reshapes, slices (step 1 on the last axis),
/// transposes that keep the last axis last and added or removed unit axes,
/// at most `depth + 1` deep, over a value that is not such a view (one in
/// memory). An attention kernel reads such keys or values where they lie,
/// as rows at a pitch (W3's values: each head's columns of the fused QKV
/// projection's output), instead of a kernel of their own rearranging them
/// first.
fn is_row_view(eg: &KGraph, c: Id, depth: u32) -> bool {
    let rank = eg[c].data.ty.rank() as i64;
    eg[c].nodes.iter().any(|n| match n.head {
        Head::Op(id) => {
            let keeps_rows = match &eg.analysis.ops.get(id).op {
                Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => true,
                Op::Transpose { perm } => perm.last().is_some_and(|p| *p == rank - 1 || *p == -1),
                Op::Slice { axes, steps, .. } => axes.iter().enumerate().all(|(i, a)| {
                    let a = if *a < 0 { a + rank } else { *a };
                    a != rank - 1 || steps.get(i).is_none_or(|s| *s == 1)
                }),
                _ => false,
            };
            keeps_rows
                && n.args.len() == 1
                && (!is_view_only(eg, n.args[0])
                    || (depth > 0 && is_row_view(eg, n.args[0], depth - 1)))
        }
        Head::Mat => false,
    })
}

/// Whether every node of the class is a movement op (not a value in
/// memory of its own).
fn is_view_only(eg: &KGraph, c: Id) -> bool {
    eg[c].nodes.iter().all(|n| match n.head {
        Head::Op(id) => matches!(eg.analysis.ops.get(id).op.class(), OpClass::Movement),
        Head::Mat => false,
    })
}

/// Whether the value class computes a row norm over its last axis (the
/// norms that may run as a matmul prologue).
fn is_last_axis_norm(eg: &KGraph, c: Id) -> bool {
    eg[c].nodes.iter().any(|n| match n.head {
        Head::Op(id) => {
            if let Op::LayerNorm { axis, .. } | Op::RmsNorm { axis, .. } =
                &eg.analysis.ops.get(id).op
            {
                *axis == -1 || *axis == eg[c].data.ty.rank() as i64 - 1
            } else {
                false
            }
        }
        Head::Mat => false,
    })
}

/// Whether `op` as an epilogue moves its operand's elements (a view) or
/// reads others than the one at its own index (a rotary embedding).
fn moves_elements(op: &Op) -> bool {
    matches!(op.class(), OpClass::Movement) || matches!(op, Op::Rope { .. })
}

/// Whether a contraction may evaluate class `c` in its main loop: unless
/// `c` dequantizes codes of a type outside `allowed` (`None`: any).
fn dequantize_in_loop(eg: &KGraph, c: Id, allowed: Option<&[DType]>) -> bool {
    let Some(allowed) = allowed else {
        return true;
    };
    !eg[c].nodes.iter().any(|n| match n.head {
        Head::Op(id) => {
            matches!(&eg.analysis.ops.get(id).op, Op::Dequantize { .. })
                && n.args
                    .first()
                    .is_some_and(|q| !allowed.contains(&eg[*q].data.ty.dtype))
        }
        Head::Mat => false,
    })
}

/// Whether class `c` quantizes to codes of 8 bits or fewer.
fn is_narrow_quantize(eg: &KGraph, c: Id) -> bool {
    eg[c].nodes.iter().any(|n| match n.head {
        Head::Op(id) => {
            matches!(&eg.analysis.ops.get(id).op, Op::Quantize { dtype, .. } if dtype.bits() <= 8)
        }
        Head::Mat => false,
    })
}

/// How many times a direct-loop convolution reads each input element: once
/// per window tap (the window's size over the strides' product) for each
/// output channel of its group (at least 1).
fn window_taps(ctx: &Ctx, op: &Op, node: &KNode) -> f64 {
    let (stride, groups): (f64, f64) = match op {
        Op::Conv2d { stride, groups, .. } | Op::ConvTranspose2d { stride, groups, .. } => (
            stride.iter().map(|&s| s.max(1) as f64).product(),
            (*groups).max(1) as f64,
        ),
        _ => (1.0, 1.0),
    };
    let w = &ctx.eg[node.args[1]].data.ty;
    let dims = w.shape.dims();
    let window: f64 = dims.iter().skip(2).map(|d| ctx.sizes.dim(d)).product();
    let per_group = match op {
        // conv_transpose2d weights are [in, out / groups, kh, kw]
        Op::ConvTranspose2d { .. } => dims.get(1).map_or(1.0, |d| ctx.sizes.dim(d)),
        _ => dims.first().map_or(1.0, |d| ctx.sizes.dim(d)) / groups,
    };
    (window / stride * per_group).max(1.0)
}

/// How many times a prologue on operand `i` of a contraction is recomputed
/// (once per tile of the other operand's free dimension; on a direct-loop
/// backend, once per window tap and output channel for a convolution's
/// input).
fn recompute_factor(ctx: &Ctx, op: &Op, node: &KNode, i: usize, out: Id) -> f64 {
    let tile = 128.0;
    let t = &ctx.eg[out].data.ty;
    let dims = t.shape.dims();
    let d = |k: usize| {
        dims.get(dims.len().wrapping_sub(k))
            .map(|d| ctx.sizes.dim(d))
            .unwrap_or(1.0)
    };
    match op.class() {
        OpClass::Matmul => {
            if i == 0 {
                (d(1) / tile).ceil().max(1.0)
            } else {
                (d(2) / tile).ceil().max(1.0)
            }
        }
        OpClass::Attention => {
            if i == 0 {
                1.0
            } else {
                let q = &ctx.eg[node.args[0]].data.ty;
                (ctx.sizes.dim(&q.shape.dims()[2]) / tile).ceil().max(1.0)
            }
        }
        OpClass::Conv => {
            if i == 0 {
                if ctx.sizes.target.direct_conv {
                    window_taps(ctx, op, node)
                } else {
                    1.0
                }
            } else {
                let n = ctx.sizes.dim(&dims[0]) * ctx.sizes.dim(&dims[2]) * ctx.sizes.dim(&dims[3]);
                (n / tile).ceil().max(1.0)
            }
        }
        OpClass::Source
        | OpClass::Elementwise
        | OpClass::Movement
        | OpClass::Quant
        | OpClass::Reduce
        | OpClass::RowNorm
        | OpClass::ChannelNorm
        | OpClass::Pool => 1.0,
    }
}

/// Runs the extraction to a fixed point.
///
/// DAG costs are not monotone along a cycle of the e-graph, so choices that
/// form a cycle are found from `roots`, the offending node banned, and the
/// extraction run again until no cycle is left.
///
/// `sealed` classes (the outputs of repeated block instances) are read from
/// memory only, and their consumers do not count what computed them: it is
/// the same for every choice downstream.
pub fn extract(eg: &KGraph, sizes: &Sizes, roots: &[Id], sealed: &HashSet<Id>) -> Extraction {
    let mut banned: HashSet<(Id, KNode)> = HashSet::new();
    loop {
        let ex = extract_once(eg, sizes, &banned, sealed);
        let cycles = find_cycles(eg, &ex, roots);
        if cycles.is_empty() {
            return ex;
        }
        // Each round bans at least one chosen (hence not yet banned) node,
        // so the loop ends (resnet50 of the ONNX light models, whose weights
        // are all one constant, needs 76 bans in 29 rounds for the CPU).
        banned.extend(cycles);
    }
}

/// The (class, node) choices that close a cycle of choices reachable from
/// the roots in memory: every back edge of one depth-first walk.
fn find_cycles(eg: &KGraph, ex: &Extraction, roots: &[Id]) -> Vec<(Id, KNode)> {
    // iterative DFS with colours: 1 = on the stack, 2 = done
    let mut colour: HashMap<(Id, Kind), u8> = HashMap::new();
    let mut found = Vec::new();
    for &r in roots {
        let start = (eg.find(r), Kind::Mem);
        if colour.contains_key(&start) {
            continue;
        }
        let mut stack: Vec<((Id, Kind), usize)> = vec![(start, 0)];
        colour.insert(start, 1);
        while let Some(&mut (key, ref mut next)) = stack.last_mut() {
            let Some(ch) = ex.best.get(&key) else {
                colour.insert(key, 2);
                stack.pop();
                continue;
            };
            if *next < ch.node.args.len() {
                let child = (eg.find(ch.node.args[*next]), ch.kinds[*next]);
                *next += 1;
                match colour.get(&child) {
                    Some(1) => {
                        let back = (key.0, ch.node.clone());
                        if !found.contains(&back) {
                            found.push(back);
                        }
                    }
                    Some(_) => {}
                    None => {
                        colour.insert(child, 1);
                        stack.push((child, 0));
                    }
                }
            } else {
                colour.insert(key, 2);
                stack.pop();
            }
        }
    }
    found
}

fn extract_once(
    eg: &KGraph,
    sizes: &Sizes,
    banned: &HashSet<(Id, KNode)>,
    sealed: &HashSet<Id>,
) -> Extraction {
    let ctx = Ctx { eg, sizes, sealed };
    let mut best: HashMap<(Id, Kind), Choice> = HashMap::new();
    let mut secs: HashMap<Id, f64> = HashMap::new();
    // Classes are numbered as they were added, operands first, so one pass in
    // id order settles most of the graph; further passes settle cycles and
    // the nodes that rules added later.
    let mut classes: Vec<Id> = eg.classes().map(|c| c.id).collect();
    classes.sort();
    for _pass in 0..1000 {
        let mut changed = false;
        for &c in &classes {
            for node in &eg[c].nodes {
                if !banned.is_empty() && banned.contains(&(c, node.clone())) {
                    continue;
                }
                for (kind, choice) in candidates(&ctx, &best, &secs, c, node) {
                    let better = best.get(&(c, kind)).is_none_or(|b| {
                        choice.cost.total < b.cost.total - 1e-15
                            || (choice.cost.total <= b.cost.total + 1e-15
                                && choice.cost.rebind < b.cost.rebind)
                    });
                    if better {
                        if kind == Kind::Mem {
                            secs.insert(c, choice.cost.kernel);
                        }
                        best.insert((c, kind), choice);
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    Extraction { best }
}

/// Every (kind, choice) a node offers, given the current best operands.
fn candidates(
    ctx: &Ctx,
    best: &HashMap<(Id, Kind), Choice>,
    secs: &HashMap<Id, f64>,
    c: Id,
    node: &KNode,
) -> Vec<(Kind, Choice)> {
    let eg = ctx.eg;
    match node.head {
        Head::Mat => {
            // close the cheapest open kernel of the value
            let v = eg.find(node.args[0]);
            let mut out: Option<Choice> = None;
            for k in Kind::ALL {
                if k == Kind::Mem {
                    continue;
                }
                let Some(ch) = best.get(&(v, k)) else {
                    continue;
                };
                let free = eg[v].data.weight_only;
                let read_bytes: f64 =
                    ch.cost.reads.iter().map(|&r| ctx.bytes(r)).sum::<f64>() + ch.cost.extra;
                let own = if free {
                    0.0
                } else {
                    kernel_seconds(ctx.sizes.target, read_bytes + ctx.bytes(v), ch.cost.compute)
                };
                let mut kernels: Vec<Id> = ch
                    .cost
                    .kernels
                    .iter()
                    .copied()
                    .filter(|&k| k != c)
                    .collect();
                let below: f64 = kernels
                    .iter()
                    .map(|k| secs.get(k).copied().unwrap_or(0.0))
                    .sum();
                let at = kernels.binary_search(&c).unwrap_or_else(|e| e);
                kernels.insert(at, c);
                let cost = Cost {
                    kernels: Rc::new(kernels),
                    kernel: own,
                    reads: Rc::new(BTreeSet::new()),
                    compute: 0.0,
                    extra: 0.0,
                    rebind: 0,
                    total: below + own,
                };
                if out.as_ref().is_none_or(|o| cost.total < o.cost.total) {
                    out = Some(Choice {
                        node: node.clone(),
                        kinds: vec![k],
                        cost,
                    });
                }
            }
            out.map(|ch| vec![(Kind::Mem, ch)]).unwrap_or_default()
        }
        Head::Op(id) => {
            let op = &eg.analysis.ops.get(id).op;
            if let OpClass::Source = op.class() {
                let cost = Cost {
                    kernels: Rc::default(),
                    kernel: 0.0,
                    reads: Rc::default(),
                    compute: 0.0,
                    extra: 0.0,
                    rebind: 0,
                    total: 0.0,
                };
                return vec![(
                    Kind::Mem,
                    Choice {
                        node: node.clone(),
                        kinds: vec![],
                        cost,
                    },
                )];
            }
            let ins: Vec<&kiln_dialect::TensorType> =
                node.args.iter().map(|a| &eg[*a].data.ty).collect();
            let own = if eg[c].data.weight_only {
                0.0
            } else if let Op::Matmul { .. } = op
                && node.args.iter().all(|a| eight_bit_codes(eg, *a))
            {
                // both operands are 8-bit codes widened for the arithmetic:
                // the kernel feeds the codes to the 8-bit tensor cores
                let t = ctx.sizes.target;
                compute_seconds(ctx.sizes, op, &ins, &eg[c].data.ty) * matmul_rate(t, ins[0].dtype)
                    / t.matmul_i8
            } else {
                compute_seconds(ctx.sizes, op, &ins, &eg[c].data.ty)
            };
            let native = op_kind(op);
            let mut out = Vec::new();
            // Target kinds: the op's own kind, and (for epilogue ops) the kind
            // of one operand it extends.
            let mut targets = vec![native];
            if epilogue_ok(op) {
                targets.extend([
                    Kind::Row,
                    Kind::Contract,
                    Kind::Attn,
                    Kind::Window,
                    Kind::Block,
                ]);
            }
            if let OpClass::Conv = op.class() {
                targets.push(Kind::Block);
            }
            if !ctx.sizes.target.conv_block {
                targets.retain(|k| *k != Kind::Block);
            }
            for target in targets {
                if let Some(ch) = combine(ctx, best, secs, c, node, op, native, target, own) {
                    out.push((target, ch));
                }
            }
            out
        }
    }
}

/// The operand kinds allowed for operand `i` when the node is extracted in
/// `target` (Mem is always allowed: a load).
#[allow(clippy::too_many_arguments)]
fn combine(
    ctx: &Ctx,
    best: &HashMap<(Id, Kind), Choice>,
    secs: &HashMap<Id, f64>,
    c: Id,
    node: &KNode,
    op: &Op,
    native: Kind,
    target: Kind,
    own: f64,
) -> Option<Choice> {
    let eg = ctx.eg;
    let n = node.args.len();
    // which operand carries a non-elementwise kind into this node (for epilogues and special prologues)
    let carriers: Vec<Option<usize>> = if target == native {
        // a matmul may also take a row norm over its first operand as prologue
        if native == Kind::Contract
            && matches!(op, Op::Matmul { .. })
            && ctx.sizes.target.norm_prologue
        {
            vec![None, Some(0)]
        } else {
            vec![None]
        }
    } else {
        (0..n).map(Some).collect()
    };
    let mut best_choice: Option<Choice> = None;
    for carrier in carriers {
        let mut kinds = Vec::with_capacity(n);
        let mut kernels: Rc<Vec<Id>> = Rc::default();
        let mut reads: Rc<BTreeSet<Id>> = Rc::default();
        let mut compute = own;
        let mut extra = 0.0;
        let mut rebind = 0u32;
        let mut ok = true;
        for (i, a) in node.args.iter().enumerate() {
            let a = eg.find(*a);
            // allowed non-Mem kinds for this operand
            let allowed: Vec<Kind> = if Some(i) == carrier {
                match (native, target) {
                    (Kind::Elem, t) if t != Kind::Elem => {
                        // epilogue: the carried kernel's output must be this node's iteration space
                        let same = ctx.sizes.numel(&eg[a].data.ty.shape)
                            == ctx.sizes.numel(&eg[c].data.ty.shape);
                        // (and a contraction's, where the target says so, in place)
                        let moves = t == Kind::Contract
                            && !ctx.sizes.target.view_epilogue
                            && moves_elements(op);
                        if same && !moves { vec![t] } else { vec![] }
                    }
                    (Kind::Contract, Kind::Contract) if i == 0 && is_last_axis_norm(eg, a) => {
                        vec![Kind::Row]
                    }
                    (Kind::Contract, Kind::Block) if i == 0 => {
                        // depthwise over a 1x1 expansion, or a 1x1 projection over the depthwise stage
                        if is_conv(eg, c, true)
                            && !is_conv(eg, a, true)
                            && tileable_depthwise(eg, c)
                        {
                            vec![Kind::Contract]
                        } else if is_conv(eg, c, false) {
                            vec![Kind::Block]
                        } else {
                            vec![]
                        }
                    }
                    _ => vec![],
                }
            } else if native == Kind::Attn
                && target == Kind::Attn
                && !ctx.sizes.target.attention_prologue
            {
                let rows = ctx.sizes.target.attention_rows
                    && (i == 0 || (i <= 2 && (is_cache_concat(eg, a) || is_row_view(eg, a, 3))));
                if rows { vec![Kind::Elem] } else { vec![] }
            } else {
                vec![Kind::Elem]
            };
            // pick the cheapest: the value in memory, or one allowed open kind
            let mut pick: Option<(Kind, &Choice, f64)> = None;
            if let Some(m) = best.get(&(a, Kind::Mem)) {
                pick = Some((Kind::Mem, m, m.cost.total));
            }
            let factor = recompute_factor(ctx, op, node, i, c);
            // a sealed value (a block instance's output) is only read from memory
            // (nor, where the target says so, a quantization's codes)
            // nor a dequantization of codes the target's contraction
            // loops do not read)
            let allowed = if ctx.sealed.contains(&a)
                || (!ctx.sizes.target.quantize_prologue && is_narrow_quantize(eg, a))
                || (native == Kind::Contract
                    && target == Kind::Contract
                    && !dequantize_in_loop(eg, a, ctx.sizes.target.dequantize_prologue))
            {
                Vec::new()
            } else {
                allowed
            };
            // A weight-only value in memory was made at bind time, in the form
            // (layout) the rules chose for it: on a tie it wins over redoing
            // its computation from the original weights.
            let margin = if eg[a].data.weight_only { 1e-12 } else { 0.0 };
            for k in &allowed {
                if let Some(ch) = best.get(&(a, *k)) {
                    let extra = ch.cost.compute * (factor - 1.0);
                    let t = ch.cost.total + extra;
                    if pick.is_none_or(|(pk, _, pt)| {
                        if pk == Kind::Mem {
                            t < pt - margin
                        } else {
                            t < pt
                        }
                    }) {
                        pick = Some((*k, ch, t));
                    }
                }
            }
            // the carrier must really carry its kind
            if Some(i) == carrier
                && target != native
                && !pick.is_some_and(|(k, _, _)| {
                    k == target || (target == Kind::Block && k != Kind::Mem)
                })
            {
                ok = false;
                break;
            }
            let Some((k, ch, _)) = pick else {
                ok = false;
                break;
            };
            kinds.push(k);
            extra += layout_penalty(ctx, op, i, a, k, &ch.cost);
            if k == Kind::Mem {
                if !ctx.sealed.contains(&a) {
                    kernels = merge(&kernels, &ch.cost.kernels);
                }
                let mut s = (*reads).clone();
                s.insert(a);
                reads = Rc::new(s);
            } else {
                kernels = merge(&kernels, &ch.cost.kernels);
                reads = union_set(&reads, &ch.cost.reads);
                compute += ch.cost.compute * factor;
                extra += ch.cost.extra;
                // recomputing a weight-only value counts against a choice when
                // its bind-time form is no larger than what it is made from
                // (a repacking, not a widening)
                let read_bytes: f64 = ch.cost.reads.iter().map(|&r| ctx.bytes(r)).sum();
                let rework = eg[a].data.weight_only && ctx.bytes(a) <= read_bytes;
                rebind += ch.cost.rebind + u32::from(rework);
            }
        }
        if !ok {
            continue;
        }
        let below: f64 = kernels
            .iter()
            .map(|k| secs.get(k).copied().unwrap_or(0.0))
            .sum();
        let total = ctx.estimate(below, &reads, compute, extra);
        let ch = Choice {
            node: node.clone(),
            kinds,
            cost: Cost {
                kernels,
                kernel: 0.0,
                reads,
                compute,
                extra,
                rebind,
                total,
            },
        };
        if best_choice.as_ref().is_none_or(|b| total < b.cost.total) {
            best_choice = Some(ch);
        }
    }
    best_choice
}

/// Extra bytes for reading operand `i` of `op` (in kind `k`, with cost `c`)
/// in a layout the kernel handles poorly: a contraction's weight in plain
/// row-major order, a convolution's activation in NCHW.
fn layout_penalty(ctx: &Ctx, op: &Op, i: usize, a: Id, k: Kind, c: &Cost) -> f64 {
    let eg = ctx.eg;
    let t = ctx.sizes.target;
    let (fraction, bad): (f64, fn(&KGraph, Id) -> bool) = match (op.class(), i) {
        (OpClass::Matmul, 1) => (t.unpacked_weight, |eg, r| {
            let ty = &eg[r].data.ty;
            eg[r].data.weight_only && ty.rank() >= 2 && ty.layout == kiln_dialect::Layout::RowMajor
        }),
        (OpClass::Conv, 0) => (t.nchw_conv, |eg, r| {
            let ty = &eg[r].data.ty;
            ty.rank() == 4 && ty.layout != kiln_dialect::Layout::Nhwc
        }),
        _ => return 0.0,
    };
    let mem: Vec<Id> = if k == Kind::Mem {
        vec![a]
    } else {
        c.reads.iter().copied().collect()
    };
    mem.into_iter()
        .filter(|&r| bad(eg, r))
        .map(|r| fraction * ctx.bytes(r))
        .sum()
}

/// Whether a class is (also) an 8-bit code tensor cast to a wider type.
fn eight_bit_codes(eg: &KGraph, c: Id) -> bool {
    eg[c].nodes.iter().any(|n| match n.head {
        Head::Op(id) => {
            if let Op::Cast { .. } = &eg.analysis.ops.get(id).op {
                eg[n.args[0]].data.ty.dtype.bits() == 8
            } else {
                false
            }
        }
        Head::Mat => n.args.iter().any(|a| eight_bit_codes_direct(eg, *a)),
    })
}

fn eight_bit_codes_direct(eg: &KGraph, c: Id) -> bool {
    eg[c].nodes.iter().any(|n| match n.head {
        Head::Op(id) => {
            matches!(&eg.analysis.ops.get(id).op, Op::Cast { .. })
                && eg[n.args[0]].data.ty.dtype.bits() == 8
        }
        Head::Mat => false,
    })
}
