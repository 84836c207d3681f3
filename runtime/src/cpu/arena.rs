//! The memory planner: one arena for every buffer a run writes, with
//! offsets chosen so that buffers whose lifetimes overlap never share bytes.
//!
//! A buffer written by a run-time launch lives from the launch that first
//! writes it to the last launch that reads it, or to the end of the run if
//! it is a model output. Inputs, weights, constants and bind-time results
//! live outside the arena. Placement is greedy best-fit by size over the
//! interval graph: buffers are placed largest first, each into the smallest
//! gap left between the already placed buffers it is live with.

use kiln_dialect::kernel::Program;

/// Offsets and sizes in the arena are multiples of this many bytes.
pub const ARENA_ALIGN: usize = 64;

/// One buffer to place: its size in bytes and the launches it is live over
/// (`first ..= last`, indices into the run-time launch sequence).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub bytes: usize,
    pub first: usize,
    pub last: usize,
}

impl Lifetime {
    /// Whether the two lifetimes share a launch.
    pub fn overlaps(&self, other: &Lifetime) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// Where each requested buffer lies in the arena.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Byte offset of each request, in request order; multiples of
    /// [`ARENA_ALIGN`].
    pub offsets: Vec<usize>,
    /// The arena's size: the end of the highest placed buffer.
    pub peak_bytes: usize,
    /// The arena's size if no two buffers shared bytes.
    pub unshared_bytes: usize,
}

/// The arena plan of a program at one binding of its dims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaPlan {
    /// For every buffer of the program: its offset in the arena, or `None`
    /// for buffers that live outside it.
    pub offsets: Vec<Option<usize>>,
    pub peak_bytes: usize,
    pub unshared_bytes: usize,
}

/// Rounds `bytes` up to the arena alignment (`None` on overflow).
pub fn aligned(bytes: usize) -> Option<usize> {
    bytes.checked_next_multiple_of(ARENA_ALIGN)
}

/// Places buffers with the given lifetimes: greedy best-fit, largest first.
///
/// Returns `None` only when the sizes overflow `usize`.
pub fn place(requests: &[Lifetime]) -> Option<Placement> {
    let sizes: Vec<usize> = requests
        .iter()
        .map(|r| aligned(r.bytes))
        .collect::<Option<_>>()?;
    let unshared_bytes = sizes.iter().try_fold(0usize, |a, &s| a.checked_add(s))?;

    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(sizes[i]), requests[i].first, i));

    let mut offsets = vec![0usize; requests.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(requests.len());
    let mut peak_bytes = 0usize;
    for &i in &order {
        let size = sizes[i];
        // The placed buffers live at the same time as this one, by offset.
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| sizes[j] > 0 && requests[j].overlaps(&requests[i]))
            .map(|&j| (offsets[j], offsets[j] + sizes[j]))
            .collect();
        let offset = best_fit(&mut busy, size);
        offsets[i] = offset;
        peak_bytes = peak_bytes.max(offset.checked_add(size)?);
        placed.push(i);
    }
    Some(Placement {
        offsets,
        peak_bytes,
        unshared_bytes,
    })
}

/// The lowest offset of the smallest gap between the `busy` byte ranges
/// that holds `size` bytes, or the end of the highest range if none does.
fn best_fit(busy: &mut [(usize, usize)], size: usize) -> usize {
    busy.sort_unstable();
    let mut best: Option<(usize, usize)> = None; // (gap size, offset)
    let mut cursor = 0usize;
    for &(start, end) in busy.iter() {
        if start > cursor {
            let gap = start - cursor;
            if gap >= size && best.is_none_or(|(g, _)| gap < g) {
                best = Some((gap, cursor));
            }
        }
        cursor = cursor.max(end);
    }
    best.map_or(cursor, |(_, offset)| offset)
}

/// The lifetimes of the buffers the program's run-time launches write, in
/// buffer-index order: `(buffer, lifetime)`; `bytes[b]` is the size of
/// buffer `b` at the dims being planned.
pub fn lifetimes(program: &Program, bytes: &[usize]) -> Vec<(usize, Lifetime)> {
    let mut span: Vec<Option<(usize, usize)>> = vec![None; program.buffers.len()];
    let run_time = program.launches.iter().filter(|l| !l.bind_time);
    for (step, launch) in run_time.enumerate() {
        if let Some(s) = span.get_mut(launch.out) {
            *s = Some(match *s {
                Some((first, last)) => (first.min(step), last.max(step)),
                None => (step, step),
            });
        }
    }
    let steps = program.launches.iter().filter(|l| !l.bind_time).count();
    let run_time = program.launches.iter().filter(|l| !l.bind_time);
    for (step, launch) in run_time.enumerate() {
        for &arg in &launch.args {
            if let Some(Some((_, last))) = span.get_mut(arg) {
                *last = (*last).max(step);
            }
        }
    }
    for &(_, b) in &program.outputs {
        if let Some(Some((_, last))) = span.get_mut(b) {
            *last = steps.saturating_sub(1).max(*last);
        }
    }
    span.iter()
        .enumerate()
        .filter_map(|(b, s)| {
            s.map(|(first, last)| {
                (
                    b,
                    Lifetime {
                        bytes: bytes.get(b).copied().unwrap_or(0),
                        first,
                        last,
                    },
                )
            })
        })
        .collect()
}

/// Plans the arena of a program: `bytes[b]` is the size of buffer `b` at
/// the dims being planned. `None` only when the sizes overflow `usize`.
pub fn plan(program: &Program, bytes: &[usize]) -> Option<ArenaPlan> {
    let live = lifetimes(program, bytes);
    let requests: Vec<Lifetime> = live.iter().map(|&(_, l)| l).collect();
    let placement = place(&requests)?;
    let mut offsets = vec![None; program.buffers.len()];
    for (&(b, _), &offset) in live.iter().zip(&placement.offsets) {
        offsets[b] = Some(offset);
    }
    Some(ArenaPlan {
        offsets,
        peak_bytes: placement.peak_bytes,
        unshared_bytes: placement.unshared_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_dialect::kernel::{Body, Buffer, Expr, Kernel, Launch, Ty};
    use kiln_dialect::{DType, Shape};
    use proptest::prelude::*;

    fn life(bytes: usize, first: usize, last: usize) -> Lifetime {
        Lifetime { bytes, first, last }
    }

    /// A program over f32 vectors of the given lengths: `chain[i] = (args,
    /// out)` launches; buffer 0 is the input.
    fn program(lengths: &[u64], chain: &[(Vec<usize>, usize, bool)], outputs: &[usize]) -> Program {
        let buffers: Vec<Buffer> = lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| Buffer {
                name: format!("t{i}"),
                dtype: DType::F32,
                shape: Shape::of(&[n]),
            })
            .collect();
        let launches = chain
            .iter()
            .map(|(args, out, bind_time)| Launch {
                kernel: Kernel {
                    name: format!("k{out}"),
                    inputs: args.iter().map(|&a| buffers[a].clone()).collect(),
                    output: buffers[*out].clone(),
                    dims: vec![],
                    float: Ty::F32,
                    body: Body::Map {
                        expr: Expr::Float(0.0),
                    },
                },
                args: args.clone(),
                out: *out,
                bind_time: *bind_time,
            })
            .collect();
        Program {
            name: "p".into(),
            buffers,
            inputs: vec![0],
            weights: vec![],
            constants: vec![],
            outputs: outputs.iter().map(|&b| (format!("o{b}"), b)).collect(),
            dims: vec![],
            launches,
        }
    }

    #[test]
    fn a_chain_needs_two_slots() {
        // in -> a -> b -> c -> d: each launch holds its argument and its
        // result, so two slots of 128 bytes (100 rounded up) suffice.
        let p = program(
            &[25, 25, 25, 25, 25],
            &[
                (vec![0], 1, false),
                (vec![1], 2, false),
                (vec![2], 3, false),
                (vec![3], 4, false),
            ],
            &[4],
        );
        let bytes = vec![100; 5];
        let plan = plan(&p, &bytes).unwrap();
        assert_eq!(plan.offsets[0], None, "inputs live outside the arena");
        assert_eq!(plan.peak_bytes, 256);
        assert_eq!(plan.unshared_bytes, 4 * 128);
        assert_ne!(plan.offsets[1], plan.offsets[2]);
        assert_eq!(plan.offsets[1], plan.offsets[3]);
        assert_eq!(plan.offsets[2], plan.offsets[4]);
    }

    #[test]
    fn outputs_live_to_the_end_and_bind_time_results_stay_outside() {
        // t1 is an output, so it cannot be reused by t3; t4 is a bind-time
        // result (outside the arena).
        let p = program(
            &[16, 16, 16, 16, 16],
            &[
                (vec![], 4, true),
                (vec![0, 4], 1, false),
                (vec![1], 2, false),
                (vec![2], 3, false),
            ],
            &[1, 3],
        );
        let plan = plan(&p, &[64; 5]).unwrap();
        assert_eq!(plan.offsets[4], None);
        let (o1, o2, o3) = (plan.offsets[1], plan.offsets[2], plan.offsets[3]);
        assert!(o1 != o2 && o1 != o3 && o2 != o3);
        assert_eq!(plan.peak_bytes, 3 * 64);
    }

    #[test]
    fn best_fit_fills_the_hole_a_large_buffer_leaves() {
        // A (1024) lives over 0..=1, B (512) over 0..=3, C (512) over 2..=3,
        // D (256) over 2..=2. Largest first: A at 0, B above it at 1024,
        // then C and D in A's old bytes: peak 1536 = the live bytes of
        // step 0, so optimal.
        let reqs = [
            life(1024, 0, 1),
            life(512, 0, 3),
            life(512, 2, 3),
            life(256, 2, 2),
        ];
        let p = place(&reqs).unwrap();
        assert_eq!(p.peak_bytes, 1536);
        assert_eq!(p.unshared_bytes, 2304);
        assert_eq!(p.offsets, vec![0, 1024, 0, 512]);
    }

    #[test]
    fn best_fit_picks_the_smallest_gap_that_fits() {
        // Gaps of 128 (256..384) and 64 (640..704) bytes, then the end at 960.
        let mut busy = vec![(704, 960), (0, 256), (384, 640)];
        assert_eq!(best_fit(&mut busy, 64), 640);
        assert_eq!(best_fit(&mut busy, 128), 256);
        assert_eq!(best_fit(&mut busy, 192), 960);
        assert_eq!(best_fit(&mut [], 64), 0);
    }

    #[test]
    fn buffers_that_die_early_do_not_block_later_ones() {
        let reqs = [
            life(1000, 0, 0),
            life(256, 1, 9),
            life(128, 0, 0),
            life(256, 1, 9),
            life(64, 0, 0),
            life(256, 1, 9),
            life(64, 5, 5),
        ];
        let p = place(&reqs).unwrap();
        // Largest first: 1000 (1024) at 0 over step 0; the 256s over 1..=9
        // go to 0, 256, 512; the 128 and 64 over step 0 go above 1024; the
        // late 64 goes right after the pillars.
        assert_eq!(p.offsets[0], 0);
        assert_eq!((p.offsets[1], p.offsets[3], p.offsets[5]), (0, 256, 512));
        assert_eq!(p.offsets[6], 768);
        assert_eq!(p.peak_bytes, 1024 + 128 + 64);
    }

    #[test]
    fn zero_sized_buffers_take_no_space() {
        let p = place(&[life(0, 0, 3), life(100, 0, 3)]).unwrap();
        assert_eq!(p.peak_bytes, 128);
        assert!(place(&[life(usize::MAX - 3, 0, 0)]).is_none());
    }

    /// A random program: buffer 0 is the input; launch `i` writes buffer
    /// `i + 1` from one to three earlier buffers; some buffers are outputs.
    fn random_program() -> impl Strategy<Value = (Program, Vec<usize>)> {
        (1usize..14).prop_flat_map(|launches| {
            let reads = prop::collection::vec(
                prop::collection::vec(any::<prop::sample::Index>(), 1..4),
                launches,
            );
            let sizes = prop::collection::vec(0usize..3000, launches + 1);
            let outputs = prop::collection::vec(any::<bool>(), launches + 1);
            (reads, sizes, outputs).prop_map(move |(reads, sizes, outputs)| {
                let chain: Vec<(Vec<usize>, usize, bool)> = reads
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r.iter().map(|x| x.index(i + 1)).collect(), i + 1, false))
                    .collect();
                let outs: Vec<usize> = (1..=launches).filter(|&b| outputs[b]).collect();
                (program(&vec![1; launches + 1], &chain, &outs), sizes)
            })
        })
    }

    proptest! {
        #[test]
        fn live_buffers_never_overlap(
            reqs in prop::collection::vec((0usize..5000, 0usize..12, 0usize..6), 0..40)
        ) {
            let reqs: Vec<Lifetime> =
                reqs.into_iter().map(|(b, f, len)| life(b, f, f + len)).collect();
            let p = place(&reqs).unwrap();
            let mut lower = 0usize;
            for step in 0..18 {
                let live: usize = reqs
                    .iter()
                    .filter(|r| r.first <= step && step <= r.last)
                    .map(|r| aligned(r.bytes).unwrap())
                    .sum();
                lower = lower.max(live);
            }
            prop_assert!(p.peak_bytes >= lower);
            prop_assert!(p.peak_bytes <= p.unshared_bytes);
            for (i, a) in reqs.iter().enumerate() {
                prop_assert_eq!(p.offsets[i] % ARENA_ALIGN, 0);
                prop_assert!(p.offsets[i] + a.bytes <= p.peak_bytes);
                for (j, b) in reqs.iter().enumerate().skip(i + 1) {
                    if a.bytes == 0 || b.bytes == 0 || !a.overlaps(b) {
                        continue;
                    }
                    let (x, y) = (p.offsets[i], p.offsets[j]);
                    prop_assert!(
                        x + a.bytes <= y || y + b.bytes <= x,
                        "{:?} at {} overlaps {:?} at {}", a, x, b, y
                    );
                }
            }
        }

        #[test]
        fn buffers_needed_at_the_same_launch_never_share_bytes((p, sizes) in random_program()) {
            let plan = plan(&p, &sizes).unwrap();
            let steps = p.launches.len();
            // Independent of `lifetimes`: buffer b (written by launch b - 1)
            // is needed at step t if written at t, or written before t and
            // read at t or later or a model output.
            let needed = |b: usize, t: usize| {
                b >= 1
                    && (b - 1 == t
                        || b - 1 < t
                            && (p.outputs.iter().any(|&(_, o)| o == b)
                                || p.launches[t..].iter().any(|l| l.args.contains(&b))))
            };
            for t in 0..steps {
                let live: Vec<usize> = (0..p.buffers.len()).filter(|&b| needed(b, t)).collect();
                for &a in &live {
                    let oa = plan.offsets[a].expect("written buffers are in the arena");
                    prop_assert!(oa + sizes[a] <= plan.peak_bytes);
                    for &b in &live {
                        let ob = plan.offsets[b].unwrap();
                        if a < b && sizes[a] > 0 && sizes[b] > 0 {
                            prop_assert!(
                                oa + sizes[a] <= ob || ob + sizes[b] <= oa,
                                "step {}: t{} at {} overlaps t{} at {}", t, a, oa, b, ob
                            );
                        }
                    }
                }
            }
            prop_assert_eq!(plan.offsets[0], None);
        }
    }
}
