//! The thread pool the kernels run on.
//!
//! A decode step is a few hundred short parallel loops (tens of microseconds each), so
//! waking sleeping threads for every loop (rayon's futex wake-ups) costs as much as the
//! work. Here the workers spin for a short while after each loop, ready for the next, and
//! sleep on a condition variable only when no work has come for a while.
//!
//! Work is split into many more chunks than threads and claimed one at a time, so a
//! worker the OS has descheduled (another busy process on the machine) holds back at
//! most one chunk: the caller and the other workers take the rest. That keeps a loaded
//! machine from collapsing the speed, unlike barrier-based pools where every thread waits
//! for the slowest.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long an idle worker spins on `pause` before it spins on `sched_yield`.
const PAUSE_SPIN: Duration = Duration::from_micros(10);

/// How long an idle worker spins before it sleeps (`RUSTFORMERS_SPIN_US` overrides).
fn spin_time() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| {
        let us = std::env::var("RUSTFORMERS_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        Duration::from_micros(us)
    })
}

/// A job: a function of the chunk index. Lives on the caller's stack for the duration of
/// [`Pool::run`].
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
}

/// Bits of the chunk count and of the next-chunk index in [`Shared::state`].
const INDEX_BITS: u32 = 20;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
/// The most chunks one job may have.
const MAX_CHUNKS: usize = INDEX_MASK as usize;

/// `state` fields: generation (24 bits), chunk count, next chunk.
fn unpack(state: u64) -> (u64, u64, u64) {
    (
        state >> (2 * INDEX_BITS),
        (state >> INDEX_BITS) & INDEX_MASK,
        state & INDEX_MASK,
    )
}

struct Shared {
    /// Generation, chunk count and next chunk in one word, so that a claim checks all
    /// three at once and fails once the generation has moved on.
    state: AtomicU64,
    /// The current job (valid while a claim of the current generation succeeds).
    job: AtomicPtr<Job<'static>>,
    /// Chunks finished in the current job.
    done: AtomicUsize,
    /// A chunk panicked on a worker (the caller re-raises it).
    panicked: AtomicBool,
    /// Workers asleep, and the generation they saw, guarded for the condition variable.
    sleep: Mutex<usize>,
    wake: Condvar,
}

/// A fixed set of worker threads; the caller of [`Pool::run`] works too.
pub struct Pool {
    shared: Arc<Shared>,
    threads: usize,
    /// One job at a time; a second caller (or a nested call) runs its loop inline.
    busy: Mutex<()>,
}

impl Pool {
    /// A pool of `threads` threads in all (the caller included).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleep: Mutex::new(0),
            wake: Condvar::new(),
        });
        for i in 1..threads {
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("rustformers-{i}"))
                .spawn(move || worker(&s));
            if spawned.is_err() {
                // Fewer workers: the caller and the others take their share.
                tracing::warn!("could not start kernel thread {i}");
            }
        }
        Self {
            shared,
            threads,
            busy: Mutex::new(()),
        }
    }

    /// The process-wide pool: `RUSTFORMERS_NUM_THREADS`, else `RAYON_NUM_THREADS`, else
    /// the available cores.
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let from_env = |k: &str| {
                std::env::var(k)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|n| *n > 0)
            };
            let n = from_env("RUSTFORMERS_NUM_THREADS")
                .or_else(|| from_env("RAYON_NUM_THREADS"))
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            Pool::new(n)
        })
    }

    /// Threads in all, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(0)`, ..., `f(chunks - 1)`, spread over the pool; returns when all are done.
    pub fn run(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        let inline = || (0..chunks).for_each(f);
        if chunks <= 1 || self.threads == 1 || chunks > MAX_CHUNKS {
            return inline();
        }
        let _guard = match self.busy.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return inline(),
        };
        let s = &*self.shared;
        let job = Job { f };
        s.done.store(0, Ordering::Relaxed);
        // SAFETY (lifetime erasure): workers dereference the pointer only after a
        // successful claim in this generation, and this function returns only after every
        // claimed chunk is done and no chunk is left to claim.
        let ptr = &job as *const Job<'_> as *mut Job<'static>;
        s.job.store(ptr, Ordering::Release);
        let generation = (unpack(s.state.load(Ordering::Relaxed)).0 + 1) & 0xFF_FFFF;
        s.state.store(
            (generation << (2 * INDEX_BITS)) | ((chunks as u64) << INDEX_BITS),
            Ordering::Release,
        );
        {
            let sleepers = s.sleep.lock().unwrap_or_else(|p| p.into_inner());
            if *sleepers > 0 {
                s.wake.notify_all();
            }
        }
        // Work alongside the workers. A panic waits for the others to finish first, so
        // that no worker is left holding the job.
        let mut caller_panic = None;
        while let Some(i) = claim(s, generation) {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i))) {
                caller_panic.get_or_insert(p);
            }
            s.done.fetch_add(1, Ordering::AcqRel);
        }
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < chunks {
            spins += 1;
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                // A worker holding a chunk may be descheduled: let it run.
                std::thread::yield_now();
            }
        }
        s.job.store(std::ptr::null_mut(), Ordering::Release);
        if let Some(p) = caller_panic {
            resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            resume_unwind(Box::new("a kernel thread panicked"));
        }
    }
}

/// Claims the next chunk of `generation`, if any is left.
fn claim(s: &Shared, generation: u64) -> Option<usize> {
    let mut cur = s.state.load(Ordering::Acquire);
    loop {
        let (g, chunks, next) = unpack(cur);
        if g != generation || next >= chunks {
            return None;
        }
        match s
            .state
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return Some(next as usize),
            Err(now) => cur = now,
        }
    }
}

fn worker(s: &Shared) {
    let spin = spin_time();
    let mut seen = unpack(s.state.load(Ordering::Acquire)).0;
    loop {
        // Wait for a new generation: spin, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        let generation = loop {
            let g = unpack(s.state.load(Ordering::Acquire)).0;
            if g != seen {
                break g;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let waited = start.elapsed();
            if waited < PAUSE_SPIN {
                continue;
            }
            if waited < spin {
                // Still ready within a microsecond or so, but a thread that wants this
                // core (our caller, or another process) gets it first.
                std::thread::yield_now();
                continue;
            }
            let mut sleepers = s.sleep.lock().unwrap_or_else(|p| p.into_inner());
            *sleepers += 1;
            while unpack(s.state.load(Ordering::Acquire)).0 == seen {
                sleepers = s.wake.wait(sleepers).unwrap_or_else(|p| p.into_inner());
            }
            *sleepers -= 1;
        };
        seen = generation;
        while let Some(i) = claim(s, generation) {
            // SAFETY: the claim succeeded in this generation, so chunk `i` is not done
            // and the caller is still inside `Pool::run`, where the job lives; it stored
            // the job before publishing the generation (release/acquire).
            let job = unsafe { &*s.job.load(Ordering::Acquire) };
            if catch_unwind(AssertUnwindSafe(|| (job.f)(i))).is_err() {
                s.panicked.store(true, Ordering::Release);
            }
            s.done.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_exactly_once() {
        let pool = Pool::new(3);
        for round in 0..200 {
            let chunks = 1 + round % 37;
            let hits: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(chunks, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            if round % 50 == 0 {
                // Let the workers fall asleep, then wake them.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    #[test]
    fn concurrent_and_nested_callers_run_inline() {
        let pool = Arc::new(Pool::new(2));
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    for _ in 0..100 {
                        pool.run(8, &|_| {
                            pool.run(2, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 100 * 8 * 2);
    }
}
