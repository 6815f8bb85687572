//! A timeline of one communicator's pipeline counters, for finding where a call's time goes
//! (copies down, the CPU reduce, copies up, the gap between calls): no CUDA tool sees the ranks'
//! streams and the reducers of several processes on one clock.
//!
//! With `FLEXMIG_HOSTREDUCE_TRACE=DIR`, rank 0 runs one more thread that polls every slot's
//! `arrived`, `reduced` and `consumed` counters and records each change with its time; at teardown
//! it writes `DIR/hostreduce-trace-<pid>-<n>.txt`:
//!
//! ```text
//! geometry <nranks> <depth> <slot_bytes>
//! call <ns> <first round> <rounds> <bytes>  (rank 0 started the call: the CPU side, ahead of the GPU)
//! <ns> A|R|C <slot> <rank> <value>          (arrived / reduced (rank 0) / consumed reached round + 1)
//! dropped <n>                               (changes past the cap, not kept)
//! ```
//!
//! A debugging aid: the poller takes a CPU, and a change that comes and goes between two polls
//! (two rounds of one slot within one poll) shows as its last value only.
use crate::ffi::shm::{Counter, Segment};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// Changes kept at most (40 MiB); later ones are counted, not kept.
const MAX_EVENTS: usize = 1 << 20;

/// One counter change: (ns since the tracer started, which, slot, rank, new value).
pub type Change = (u64, char, usize, usize, u64);

/// What the poller saw: the changes kept, and how many more it dropped past the cap.
type Seen = (Vec<Change>, u64);

/// The poller of one communicator's segment, and the calls rank 0 started.
#[derive(Debug)]
pub struct Tracer {
    t0: Instant,
    stop: Arc<AtomicBool>,
    poller: Mutex<Option<JoinHandle<Seen>>>,
    calls: Mutex<Vec<(u64, u64, u64, usize)>>,
    out: PathBuf,
}

static TRACES: AtomicUsize = AtomicUsize::new(0);

impl Tracer {
    /// Starts polling `seg`; the timeline goes to a new file in `dir` when [`Tracer::finish`] runs.
    pub fn start(seg: Arc<Segment>, dir: &Path) -> Tracer {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let n = TRACES.fetch_add(1, Ordering::Relaxed);
        let out = dir.join(format!("hostreduce-trace-{}-{n}.txt", std::process::id()));
        let flag = stop.clone();
        let poller = std::thread::Builder::new().name("hostreduce-trace".into()).spawn(move || poll(&seg, t0, &flag)).ok();
        Tracer { t0, stop, poller: Mutex::new(poller), calls: Mutex::new(Vec::new()), out }
    }

    /// Notes that rank 0 started a call of `bytes` in `rounds` rounds from `first_round`.
    pub fn call(&self, first_round: u64, rounds: u64, bytes: usize) {
        let t = self.t0.elapsed().as_nanos() as u64;
        self.calls.lock().unwrap().push((t, first_round, rounds, bytes));
    }

    /// Stops the poller and writes the timeline of segment geometry `g`; returns the file written.
    pub fn finish(&self, g: crate::ffi::shm::Geometry) -> std::io::Result<PathBuf> {
        self.stop.store(true, Ordering::Release);
        let (changes, dropped) = self.poller.lock().unwrap().take().and_then(|h| h.join().ok()).unwrap_or_default();
        let mut f = std::io::BufWriter::new(std::fs::File::create(&self.out)?);
        writeln!(f, "geometry {} {} {}", g.nranks, g.depth, g.slot_bytes)?;
        for (t, r, n, b) in self.calls.lock().unwrap().iter() {
            writeln!(f, "call {t} {r} {n} {b}")?;
        }
        for (t, c, slot, rank, v) in changes {
            writeln!(f, "{t} {c} {slot} {rank} {v}")?;
        }
        if dropped > 0 {
            writeln!(f, "dropped {dropped}")?;
        }
        f.flush()?;
        Ok(self.out.clone())
    }
}

/// The counters a timeline follows, in the order they are polled.
fn followed(nranks: usize, depth: usize) -> Vec<(char, usize, usize, Counter)> {
    let mut v = Vec::new();
    for slot in 0..depth {
        for r in 0..nranks {
            v.push(('A', slot, r, Counter::Arrived(r)));
        }
        v.push(('R', slot, 0, Counter::Reduced));
        for r in 0..nranks {
            v.push(('C', slot, r, Counter::Consumed(r)));
        }
    }
    v
}

fn poll(seg: &Segment, t0: Instant, stop: &AtomicBool) -> Seen {
    let g = seg.geometry();
    let watch = followed(g.nranks, g.depth);
    let mut last: Vec<u64> = watch.iter().map(|w| seg.counter(w.1, w.3).load(Ordering::Acquire)).collect();
    let mut out = Vec::with_capacity(4096);
    let mut dropped = 0u64;
    loop {
        // One more sweep once told to stop: the last changes before it are kept.
        let last_sweep = stop.load(Ordering::Acquire);
        for (i, &(c, slot, rank, counter)) in watch.iter().enumerate() {
            let v = seg.counter(slot, counter).load(Ordering::Acquire);
            if v != last[i] {
                last[i] = v;
                if out.len() < MAX_EVENTS {
                    out.push((t0.elapsed().as_nanos() as u64, c, slot, rank, v));
                } else {
                    dropped += 1;
                }
            }
        }
        if last_sweep {
            return (out, dropped);
        }
        std::hint::spin_loop();
    }
}
