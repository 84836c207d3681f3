//! A pool of persistent worker threads that runs one kernel at a time over
//! the axis-0 range `[0, rows)` of its output, split into contiguous chunks.
//!
//! The calling thread takes part: a pool of `n` threads has `n - 1`
//! workers. A launch is published to the workers, every thread claims
//! chunks from a shared counter until none are left, and the caller returns
//! only once every chunk has finished, so the next launch sees all of this
//! one's writes. Launches with little work run on the calling thread alone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::executor::KernelFn;

/// The environment variable that overrides the number of threads.
pub const THREADS_ENV: &str = "KILN_THREADS";

/// Launches whose estimated cost (see [`Work::cost`]) is below this run on
/// the calling thread alone.
pub const MIN_PARALLEL_COST: usize = 1 << 15;

/// Chunks per thread: a few, so that a thread slowed down by another
/// process leaves its share to the others.
const CHUNKS_PER_THREAD: usize = 4;

/// The extent of one launch, as the pool needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Work {
    /// The output's axis-0 size (1 for a rank-0 output).
    pub rows: usize,
    /// Bits of one row: the elements of the remaining axes times the bits of
    /// the output's element type. Chunks start where `row * row_bits` is a
    /// multiple of 8, so no two threads write the same byte.
    pub row_bits: u64,
    /// A rough cost estimate (elements touched); below
    /// [`MIN_PARALLEL_COST`] the launch is not split.
    pub cost: usize,
}

/// The smallest number of rows whose bits are a whole number of bytes.
pub fn row_step(row_bits: u64) -> usize {
    match row_bits % 8 {
        0 => 1,
        4 => 2,
        2 | 6 => 4,
        _ => 8,
    }
}

/// Splits `[0, rows)` into at most `parts` contiguous, non-empty ranges in
/// order, every boundary a multiple of [`row_step`]`(row_bits)`.
pub fn split(rows: usize, row_bits: u64, parts: usize) -> Vec<(usize, usize)> {
    let step = row_step(row_bits);
    let units = rows.div_ceil(step);
    let parts = parts.clamp(1, units.max(1));
    let mut out = Vec::with_capacity(parts);
    for p in 0..parts {
        let begin = (units * p / parts * step).min(rows);
        let end = (units * (p + 1) / parts * step).min(rows);
        if end > begin {
            out.push((begin, end));
        }
    }
    out
}

/// The number of threads the environment asks for: `KILN_THREADS` if set
/// to a positive integer, else [`std::thread::available_parallelism`].
pub fn threads_from_env() -> usize {
    std::env::var(THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The pointers of one launch, shared with the workers.
///
/// Invariant: the pointers are valid for every call of the kernel on any
/// chunk of the task, and [`ThreadPool::run`] (which created the task)
/// does not return before every chunk's call has returned; a worker that
/// still holds the task afterwards finds no chunk left to claim and never
/// dereferences them.
struct LaunchPointers {
    args: *const *mut u8,
    dims: *const i64,
}

// SAFETY: the pointers are only passed to the kernel while the launch that
// owns them is in progress (see the invariant above); the kernel's writes
// go to disjoint byte ranges of the output (whole-byte chunk boundaries).
unsafe impl Send for LaunchPointers {}
// SAFETY: as above; the struct itself is never written after creation.
unsafe impl Sync for LaunchPointers {}

struct Task {
    kernel: KernelFn,
    pointers: LaunchPointers,
    chunks: Vec<(usize, usize)>,
    next: AtomicUsize,
    done: AtomicUsize,
}

impl Task {
    /// Claims and runs chunks until none are left.
    fn work(&self, shared: &Shared) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(&(begin, end)) = self.chunks.get(i) else {
                return;
            };
            // SAFETY: chunk `i` is claimed by this thread only, the pointers
            // are valid until every chunk is done (LaunchPointers' invariant),
            // and the chunk lies within `[0, rows)` of the launch.
            unsafe {
                (self.kernel)(
                    self.pointers.args,
                    self.pointers.dims,
                    begin as i64,
                    end as i64,
                )
            };
            if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.chunks.len() {
                let _state = shared.lock();
                shared.finished.notify_all();
            }
        }
    }
}

struct State {
    task: Option<Arc<Task>>,
    epoch: u64,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    finished: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Kernels are `extern "C"`: a panic in one aborts, so the lock is
        // never poisoned by them; recover anyway rather than panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A pool of persistent threads that runs kernels; see the module docs.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serializes launches from several callers.
    dispatch: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `threads` threads in all (the caller counts as one; 0 is
    /// taken as 1). Fewer are used if the system refuses to spawn more.
    pub fn new(threads: usize) -> ThreadPool {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                task: None,
                epoch: 0,
                shutdown: false,
            }),
            wake: Condvar::new(),
            finished: Condvar::new(),
        });
        let mut workers = Vec::new();
        for i in 1..threads.max(1) {
            let s = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("kiln-cpu-{i}"))
                .spawn(move || worker(&s));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(_) => break,
            }
        }
        ThreadPool {
            shared,
            workers,
            dispatch: Mutex::new(()),
        }
    }

    /// A pool sized by [`threads_from_env`].
    pub fn from_env() -> ThreadPool {
        ThreadPool::new(threads_from_env())
    }

    /// The number of threads that run kernels, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// The chunks a launch of this extent is split into.
    pub fn chunks(&self, work: &Work) -> Vec<(usize, usize)> {
        if work.rows == 0 {
            return Vec::new();
        }
        if self.threads() == 1 || work.cost < MIN_PARALLEL_COST {
            return vec![(0, work.rows)];
        }
        split(work.rows, work.row_bits, self.threads() * CHUNKS_PER_THREAD)
    }

    /// Runs `kernel` over `[0, work.rows)` and returns when every chunk is
    /// done. Nothing runs when `work.rows` is 0.
    ///
    /// # Safety
    ///
    /// `args` and `dims` must be what `kernel` expects (the kernel ABI of
    /// [`super::executor`]) and stay valid, with the output writable and not
    /// otherwise accessed, until this call returns; the kernel must write
    /// only the output bytes of the rows it is given.
    pub unsafe fn run(
        &self,
        kernel: KernelFn,
        args: *const *mut u8,
        dims: *const i64,
        work: &Work,
    ) {
        let chunks = self.chunks(work);
        match chunks.as_slice() {
            [] => {}
            [(begin, end)] => {
                // SAFETY: the caller's contract.
                unsafe { kernel(args, dims, *begin as i64, *end as i64) }
            }
            _ => {
                let _one_launch_at_a_time = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
                let task = Arc::new(Task {
                    kernel,
                    pointers: LaunchPointers { args, dims },
                    chunks,
                    next: AtomicUsize::new(0),
                    done: AtomicUsize::new(0),
                });
                {
                    let mut state = self.shared.lock();
                    state.task = Some(Arc::clone(&task));
                    state.epoch = state.epoch.wrapping_add(1);
                    self.shared.wake.notify_all();
                }
                task.work(&self.shared);
                let mut state = self.shared.lock();
                while task.done.load(Ordering::Acquire) < task.chunks.len() {
                    state = self
                        .shared
                        .finished
                        .wait(state)
                        .unwrap_or_else(|e| e.into_inner());
                }
                state.task = None;
            }
        }
    }
}

fn worker(shared: &Shared) {
    let mut seen = 0u64;
    loop {
        let task = {
            let mut state = shared.lock();
            while state.epoch == seen && !state.shutdown {
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.shutdown {
                return;
            }
            seen = state.epoch;
            state.task.clone()
        };
        if let Some(task) = task {
            task.work(shared);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ThreadPool({} threads)", self.threads())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// `args[0]`: one `AtomicU32` counter per row; `args[1]`: the output,
    /// `u32` per row, set to `row * 3 + dims[0]`.
    unsafe extern "C" fn count_rows(args: *const *mut u8, dims: *const i64, begin: i64, end: i64) {
        unsafe {
            let counters = *args as *const AtomicU32;
            let out = *args.add(1) as *mut u32;
            for r in begin..end {
                (*counters.add(r as usize)).fetch_add(1, Ordering::Relaxed);
                out.add(r as usize).write_unaligned((r * 3 + *dims) as u32);
            }
        }
    }

    /// Records in `args[0]` (an `AtomicU32`) whether a chunk started at a
    /// row whose bit offset (`dims[0]` bits a row) is not a whole byte, and
    /// counts the calls in `args[1]`.
    unsafe extern "C" fn check_byte_boundaries(
        args: *const *mut u8,
        dims: *const i64,
        begin: i64,
        _end: i64,
    ) {
        unsafe {
            let bad = &*(*args as *const AtomicU32);
            let calls = &*(*args.add(1) as *const AtomicU32);
            if (begin * *dims) % 8 != 0 {
                bad.fetch_add(1, Ordering::Relaxed);
            }
            calls.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn run_counted(
        pool: &ThreadPool,
        rows: usize,
        cost: usize,
        offset: i64,
    ) -> (Vec<u32>, Vec<u32>) {
        let counters: Vec<AtomicU32> = (0..rows).map(|_| AtomicU32::new(0)).collect();
        let mut out = vec![0u32; rows];
        let args = [counters.as_ptr() as *mut u8, out.as_mut_ptr() as *mut u8];
        let dims = [offset];
        let work = Work {
            rows,
            row_bits: 32,
            cost,
        };
        // SAFETY: the buffers have `rows` entries and outlive the call.
        unsafe { pool.run(count_rows, args.as_ptr(), dims.as_ptr(), &work) };
        let counts = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        (counts, out)
    }

    #[test]
    fn every_row_runs_exactly_once() {
        let pool = ThreadPool::new(3);
        assert_eq!(pool.threads(), 3);
        for &rows in &[0usize, 1, 2, 5, 97, 1000] {
            let offset = rand::random_range(1..1000);
            let (counts, out) = run_counted(&pool, rows, usize::MAX, offset);
            assert!(counts.iter().all(|&c| c == 1), "rows {rows}: {counts:?}");
            let expected: Vec<u32> = (0..rows as i64).map(|r| (r * 3 + offset) as u32).collect();
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn many_launches_in_a_row_each_finish_before_the_next() {
        let pool = ThreadPool::new(4);
        for i in 0..500 {
            let (counts, out) = run_counted(&pool, 64, usize::MAX, i);
            assert!(counts.iter().all(|&c| c == 1));
            assert_eq!(out[63], (63 * 3 + i) as u32);
        }
    }

    #[test]
    fn small_launches_run_in_one_call() {
        let pool = ThreadPool::new(4);
        let small = Work {
            rows: 100,
            row_bits: 32,
            cost: 100,
        };
        assert_eq!(pool.chunks(&small), vec![(0, 100)]);
        let large = Work {
            cost: usize::MAX,
            ..small
        };
        assert_eq!(pool.chunks(&large).len(), 16);
        let single = ThreadPool::new(1);
        assert_eq!(single.chunks(&large), vec![(0, 100)]);
        let scalar = Work {
            rows: 1,
            row_bits: 32,
            cost: usize::MAX,
        };
        assert_eq!(pool.chunks(&scalar), vec![(0, 1)]);
    }

    #[test]
    fn splits_are_contiguous_and_respect_whole_bytes() {
        assert_eq!(row_step(32), 1);
        assert_eq!(row_step(12), 2); // three i4 elements a row
        assert_eq!(row_step(6), 4); // one i6
        assert_eq!(row_step(3), 8); // one i3
        assert_eq!(split(10, 32, 3), vec![(0, 3), (3, 6), (6, 10)]);
        assert_eq!(split(10, 12, 3), vec![(0, 2), (2, 6), (6, 10)]);
        assert_eq!(split(9, 3, 4), vec![(0, 8), (8, 9)]);
        assert_eq!(split(0, 32, 4), Vec::<(usize, usize)>::new());
        for rows in 1..60 {
            for bits in [3u64, 4, 6, 12, 32] {
                let s = split(rows, bits, 7);
                assert_eq!(s.first().unwrap().0, 0);
                assert_eq!(s.last().unwrap().1, rows);
                for w in s.windows(2) {
                    assert_eq!(w[0].1, w[1].0);
                    assert_eq!(w[1].0 as u64 * bits % 8, 0);
                }
            }
        }
    }

    #[test]
    fn sub_byte_outputs_split_only_at_whole_bytes() {
        let pool = ThreadPool::new(4);
        for bits in [3i64, 4, 6, 12] {
            let bad = AtomicU32::new(0);
            let calls = AtomicU32::new(0);
            let args = [
                &bad as *const AtomicU32 as *mut u8,
                &calls as *const AtomicU32 as *mut u8,
            ];
            let dims = [bits];
            let work = Work {
                rows: 1001,
                row_bits: bits as u64,
                cost: usize::MAX,
            };
            // SAFETY: the kernel reads the two counters and dims[0] only.
            unsafe { pool.run(check_byte_boundaries, args.as_ptr(), dims.as_ptr(), &work) };
            assert_eq!(bad.load(Ordering::Relaxed), 0, "{bits} bits a row");
            assert!(calls.load(Ordering::Relaxed) > 1);
        }
    }

    /// Prints the cost of a split launch of a trivial kernel (run with
    /// `--ignored --nocapture`); checks only that every row ran.
    #[test]
    #[ignore]
    fn launch_overhead() {
        for threads in [1, 2, 4] {
            let pool = ThreadPool::new(threads);
            let launches = 20_000;
            let start = std::time::Instant::now();
            for i in 0..launches {
                let (counts, _) = run_counted(&pool, 64, usize::MAX, i);
                assert!(counts.iter().all(|&c| c == 1));
            }
            let per = start.elapsed().as_secs_f64() / launches as f64 * 1e6;
            println!("{threads} threads: {per:.2} us per launch of 64 rows");
        }
    }

    #[test]
    fn thread_count_comes_from_the_environment_when_set() {
        // Only reads: the variable is not set by the test harness.
        if std::env::var(THREADS_ENV).is_err() {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            assert_eq!(threads_from_env(), n);
        }
        assert_eq!(ThreadPool::new(0).threads(), 1);
    }
}
