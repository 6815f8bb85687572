//! The chunk pipeline: how one all-reduce moves through the shared segment.
//!
//! A call's buffer is cut into chunks of one slot each. Chunk c of a call is round `r = first + c`
//! of the communicator (rounds count up over all calls, the same on every rank, since every rank
//! makes the same calls in the same order), and uses slot `r % depth`. Per round:
//!
//! 1. each rank's *down* stream waits until `reduced[slot] >= r - depth + 1` (the reducers are done
//!    reading the slot's previous inputs), writes its call's [`signature`] into `sig[slot][rank]`,
//!    copies its chunk into its input slot, and writes `arrived[slot][rank] = r + 1`;
//! 2. the reducer threads (T per rank) wait until every rank's `arrived` is `>= r + 1` and every
//!    rank's `consumed` is `>= r - depth + 1` (the slot's previous result has been copied up
//!    everywhere), and that every rank's `sig` is their own call's (ranks making different calls
//!    abort the communicator with a message, instead of reducing unrelated bytes or waiting for
//!    rounds that never come); then each takes pieces of the chunk from `claim[slot]` until none is left,
//!    reduces each into the result slot and counts it in `done[slot]`; the piece that completes the
//!    round stores `reduced[slot] = r + 1`. Pieces are handed out, not assigned (about
//!    [`PIECES_PER_SHARE`] per thread), so a reducer the scheduler keeps off a CPU delays one piece,
//!    not a fixed share of every chunk while all ranks wait for it;
//! 3. each rank's *up* stream waits until `reduced[slot] >= r + 1`, copies the result into its
//!    output buffer, and writes `consumed[slot][rank] = r + 1`.
//!
//! The streams only ever wait for one counter to reach a value (`cuStreamWaitValue64` GEQ) and only
//! write their own counters (`cuStreamWriteValue64`); down and up are separate streams, so copies of
//! different chunks run both ways at once. Counters only grow. When a peer dies or the communicator
//! is aborted, every `reduced` is raised to [`RELEASED`], which satisfies every wait any stream has
//! or will enqueue: no stream hangs, and the error is reported by the next call.
//!
//! [`Streams`] is what the GPU (or the CPU-only simulation) provides: the ops above, in stream order.

use crate::ffi::shm::{process_alive, Counter, Geometry, Segment, ShmError};
use crate::reduce::{self, DType, Op};
use crate::trace::Tracer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The value every `reduced` counter is raised to on abort: above any round a stream waits for.
pub const RELEASED: u64 = 1 << 62;

/// How often a waiting reducer checks that its peers still run.
const PEER_CHECK: Duration = Duration::from_millis(50);

/// Pieces of a chunk per reducer thread of the communicator: enough that threads that run late
/// find the rest taken by others, few enough that handing them out costs nothing next to reducing.
pub const PIECES_PER_SHARE: usize = 4;

/// Pieces a chunk of `elements` is cut into for `shares` reducer threads (all ranks' together):
/// [`PIECES_PER_SHARE`] each, at most one per 64-element block; every rank computes the same.
pub fn pieces(elements: usize, shares: usize) -> usize {
    (shares * PIECES_PER_SHARE).min(elements.div_ceil(reduce::BLOCK)).max(1)
}

/// What a call is, as every rank's copy down declares it: size, element type and operation.
/// Ranks of a communicator must make the same calls in the same order (NCCL's rule too).
pub fn signature(bytes: usize, dtype: DType, op: Op) -> u64 {
    let t = match dtype {
        DType::F32 => 1,
        DType::Bf16 => 2,
        DType::F16 => 3,
    };
    let o = match op {
        Op::Sum => 1,
        Op::Avg => 2,
    };
    ((bytes as u64) << 8) | (t << 4) | o
}

/// A [`signature`] in words, for the error message.
pub fn describe(sig: u64) -> String {
    let t = match (sig >> 4) & 0xf {
        1 => "f32",
        2 => "bf16",
        3 => "f16",
        _ => "?",
    };
    let o = match sig & 0xf {
        1 => "sum",
        2 => "avg",
        _ => "?",
    };
    format!("{} bytes {t} {o}", sig >> 8)
}

/// Of the ranks' signatures of one round, not all equal: (a rank making the most common call, the
/// lowest such; the lowest rank making another).
fn odd_call(sigs: &[u64]) -> (usize, usize) {
    let count = |i: usize| sigs.iter().filter(|&&s| s == sigs[i]).count();
    let common = (0..sigs.len()).max_by_key(|&i| (count(i), std::cmp::Reverse(i))).expect("at least one rank");
    let odd = (0..sigs.len()).find(|&i| sigs[i] != sigs[common]).expect("signatures differ");
    (common, odd)
}

/// Bits of a `claim` counter that hold the next piece; the bits above hold the use of the slot.
const PIECE_BITS: u32 = 24;

/// Takes the next unclaimed piece of the `use_`-th use of a slot (1-based: round r is use
/// r / depth + 1) from its `claim` counter, out of `pieces`; None when all are taken.
///
/// The counter holds (use << 24) | next piece. The first reducer of a new use replaces the last
/// use's value (whose pieces are all reduced: a reducer only starts round r after every rank copied
/// up round r - depth), taking piece 0; a reducer still in an older use finds a newer one and takes
/// nothing. Every piece of a use goes to exactly one reducer.
pub fn claim_piece(claim: &AtomicU64, use_: u64, pieces: usize) -> Option<usize> {
    debug_assert!(pieces < 1 << PIECE_BITS && use_ < 1 << (64 - PIECE_BITS));
    let mut cur = claim.load(Ordering::Acquire);
    loop {
        let (u, next) = (cur >> PIECE_BITS, (cur & ((1 << PIECE_BITS) - 1)) as usize);
        let (take, new) = match u.cmp(&use_) {
            std::cmp::Ordering::Less => (0, (use_ << PIECE_BITS) | 1),
            std::cmp::Ordering::Equal if next < pieces => (next, cur + 1),
            _ => return None,
        };
        match claim.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(take),
            Err(now) => cur = now,
        }
    }
}

/// What this rank's reducer threads did, for the debug line at teardown.
#[derive(Debug, Default)]
pub struct ReducerStats {
    /// Chunks seen (every thread sees every chunk).
    pub chunks: AtomicU64,
    /// Pieces this rank's threads reduced.
    pub pieces: AtomicU64,
    /// Time spent waiting for the ranks' copies down (and the slot to be free), in ns, all threads.
    pub wait_ns: AtomicU64,
    /// Time spent reducing, in ns, all threads.
    pub reduce_ns: AtomicU64,
}

impl ReducerStats {
    fn add(c: &AtomicU64, t: Instant) {
        c.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// The two streams of a rank: copies into the segment, copies out of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Down,
    Up,
}

/// Stream-ordered operations of one rank for one call, in the order they must run on each side.
pub trait Streams {
    type Error;
    /// The side waits until counter `c` of slot `slot` is at least `value`.
    fn wait_geq(&mut self, side: Side, slot: usize, c: Counter, value: u64) -> Result<(), Self::Error>;
    /// The side writes `value` into counter `c` of `slot`, after everything before it on that side.
    fn write(&mut self, side: Side, slot: usize, c: Counter, value: u64) -> Result<(), Self::Error>;
    /// Down: bytes `offset..offset + len` of the send buffer into this rank's input slot.
    fn copy_down(&mut self, offset: usize, slot: usize, len: usize) -> Result<(), Self::Error>;
    /// Up: the first `len` bytes of result slot `slot` into bytes `offset..` of the receive buffer.
    fn copy_up(&mut self, slot: usize, offset: usize, len: usize) -> Result<(), Self::Error>;
}

/// Chunks a call aims for: enough to keep copies down, the CPU reduce and copies up overlapped.
pub const TARGET_CHUNKS: usize = 8;

/// The chunk size of a call of `bytes`: an eighth of the call, but at least a quarter of a slot
/// (each chunk costs a fixed overhead: stream operations, the reducers' wake-up) and at most a
/// slot; a multiple of 4096 bytes, so of every element size. Every rank computes the same.
pub fn chunk_bytes(bytes: usize, slot_bytes: usize) -> usize {
    (bytes.div_ceil(TARGET_CHUNKS).div_ceil(4096) * 4096).clamp((slot_bytes / 4).max(4096).min(slot_bytes), slot_bytes)
}

/// The lengths of a call's chunks: [`chunk_bytes`] each (the last the rest) or, with a `ramp`
/// (bytes, a multiple of 4096; 0: none), chunks doubling from `ramp` up to that size at the
/// start and halving back to it at the end, so that the first chunk's copies and reduce (the
/// pipeline's fill, while the copies up wait) and the last one's (its drain) are short. A call too
/// small for both ramps and one whole chunk between them has none. Every rank computes the same.
pub fn chunk_lengths(bytes: usize, slot_bytes: usize, ramp: usize) -> Vec<usize> {
    let c = chunk_bytes(bytes, slot_bytes);
    let plain = || (0..bytes.div_ceil(c)).map(|i| (bytes - i * c).min(c)).collect();
    let head: Vec<usize> =
        if ramp == 0 { Vec::new() } else { std::iter::successors(Some(ramp), |l| Some(l * 2)).take_while(|&l| l < c).collect() };
    let ends = 2 * head.iter().sum::<usize>();
    if head.is_empty() || bytes < ends + c {
        return plain();
    }
    let middle = bytes - ends;
    let mut v = head.clone();
    // The odd chunk right after the ramp up, so that the call ends halving down to `ramp`.
    if middle % c > 0 {
        v.push(middle % c);
    }
    v.resize(v.len() + middle / c, c);
    v.extend(head.iter().rev());
    v
}

/// The chunks of a call of `bytes` with slots of `slot_bytes` and first chunk `ramp` (see
/// [`chunk_lengths`]): (index, offset, length).
pub fn chunks(bytes: usize, slot_bytes: usize, ramp: usize) -> impl Iterator<Item = (u64, usize, usize)> {
    let mut offset = 0;
    chunk_lengths(bytes, slot_bytes, ramp).into_iter().enumerate().map(move |(i, len)| {
        offset += len;
        (i as u64, offset - len, len)
    })
}

/// Enqueues one call's stream operations for `rank`, rounds from `first_round`.
///
/// A copy down of round r waits until round `r - lead` is reduced (`lead` from 1 to the depth; at
/// the depth that is only the slot being free): how far a rank's copies may run ahead of the
/// slowest rank. Where copy engines serve the ranks' queued copies in turn, a rank far ahead
/// delays the others' copies of the round everyone waits for.
///
/// The two sides are handed out interleaved, each chunk's copy down `depth - 1` chunks ahead of its
/// copy up: where both streams end up on one hardware queue (CUDA maps streams onto a few), the
/// queue runs them in this order, which still overlaps chunks and never waits for something queued
/// behind the wait (every counter a wait needs is produced by work handed out before it).
///
/// # Errors
/// Whatever the streams return; the call is then broken and the communicator must be aborted.
pub fn enqueue<S: Streams>(
    s: &mut S,
    settings: Settings,
    rank: usize,
    lead: usize,
    first_round: u64,
    bytes: usize,
    sig: u64,
) -> Result<(), S::Error> {
    let g = settings.geometry;
    let depth = g.depth as u64;
    let lead = lead.clamp(1, g.depth) as u64;
    let all: Vec<_> = chunks(bytes, g.slot_bytes, settings.ramp).collect();
    let ahead = g.depth - 1;
    let down = |s: &mut S, (c, off, len): (u64, usize, usize)| -> Result<(), S::Error> {
        let r = first_round + c;
        let slot = (r % depth) as usize;
        if r >= depth {
            s.wait_geq(Side::Down, slot, Counter::Reduced, r - depth + 1)?;
        }
        if lead < depth && r >= lead {
            // Rounds of different slots may complete out of order (a reducer moves on to the next
            // round while others finish pieces of this one), so round r - lead being reduced does
            // not imply round r - depth is: the slot's own wait stays.
            s.wait_geq(Side::Down, ((r - lead) % depth) as usize, Counter::Reduced, r - lead + 1)?;
        }
        s.write(Side::Down, slot, Counter::Sig(rank), sig)?;
        s.copy_down(off, slot, len)?;
        s.write(Side::Down, slot, Counter::Arrived(rank), r + 1)
    };
    for &ch in all.iter().take(ahead) {
        down(s, ch)?;
    }
    for (i, &(c, off, len)) in all.iter().enumerate() {
        if let Some(&next) = all.get(i + ahead) {
            down(s, next)?;
        }
        let r = first_round + c;
        let slot = (r % depth) as usize;
        s.wait_geq(Side::Up, slot, Counter::Reduced, r + 1)?;
        s.copy_up(slot, off, len)?;
        s.write(Side::Up, slot, Counter::Consumed(rank), r + 1)?;
    }
    Ok(())
}

/// Why a communicator's host path stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortReason {
    /// A peer process is gone (killed, crashed, exited mid-collective).
    PeerDied,
    /// A rank aborted the communicator (ncclCommAbort, or a failure enqueuing a call).
    Aborted,
    /// Destroy found work the peers never finished.
    Unfinished,
    /// A rank made another all-reduce (size, type or operation) than the others at the same point.
    Mismatch,
}

impl AbortReason {
    fn code(self) -> u32 {
        match self {
            AbortReason::PeerDied => 1,
            AbortReason::Aborted => 2,
            AbortReason::Unfinished => 3,
            AbortReason::Mismatch => 4,
        }
    }
    fn from_code(c: u32) -> Option<AbortReason> {
        match c {
            1 => Some(AbortReason::PeerDied),
            2 => Some(AbortReason::Aborted),
            3 => Some(AbortReason::Unfinished),
            4 => Some(AbortReason::Mismatch),
            _ => None,
        }
    }
}

/// The state of an aborted communicator: why, and which rank it is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", match reason {
    AbortReason::PeerDied => format!("flexmig-hostreduce: rank {rank} died or left; the communicator is unusable"),
    AbortReason::Aborted => format!("flexmig-hostreduce: rank {rank} aborted the communicator"),
    AbortReason::Unfinished => format!("flexmig-hostreduce: rank {rank} destroyed the communicator with all-reduces its peers never finished"),
    AbortReason::Mismatch => format!("flexmig-hostreduce: rank {rank} made another all-reduce than its peers (size, type or operation); the communicator is unusable"),
})]
pub struct Abort {
    pub reason: AbortReason,
    pub rank: usize,
}

/// What one rank decides for itself (the others need not agree).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Local {
    /// Reducer threads this rank runs: `Settings::threads` normally (the pieces of every chunk are
    /// cut for that many per rank); fewer only in tests showing that the others reduce what a
    /// rank's missing or late reducers do not.
    pub reducers: usize,
    /// CPUs the reducer threads are kept on (see [`crate::numa`]); None: anywhere.
    pub cpus: Option<Vec<usize>>,
    /// Where rank 0 writes a timeline of the pipeline's counters (see [`crate::trace`]); None: none.
    pub trace: Option<std::path::PathBuf>,
    /// How far this rank's copies down may run ahead of the reduce (see [`enqueue`]); None: the depth.
    pub lead: Option<usize>,
}

/// The settings every rank of a communicator must share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub geometry: Geometry,
    /// Reducer threads per rank.
    pub threads: usize,
    /// The first and last chunk of a call, in bytes (see [`chunk_lengths`]); 0: chunks of one size.
    pub ramp: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Shm(#[from] ShmError),
    #[error("rank {rank} never mapped the shared segment")]
    NeverAttached { rank: usize },
    #[error("rank {rank} (pid {pid}) is not visible from this process (separate pid namespaces?): a dead peer could not be detected")]
    PeerInvisible { rank: usize, pid: u32 },
    #[error("cannot start a reducer thread: {0}")]
    Thread(std::io::Error),
    #[error("rank 0 could not make the shared segment (or a rank could not tell): every rank stays with NCCL")]
    NotMade,
}

/// One call, as the reducer threads see it.
#[derive(Clone, Copy, Debug)]
struct Job {
    first_round: u64,
    bytes: usize,
    dtype: DType,
    op: Op,
    sig: u64,
}

/// The CPU side of one rank of a communicator: its mapping of the segment and its reducer threads.
#[derive(Debug)]
pub struct HostComm {
    seg: Arc<Segment>,
    settings: Settings,
    next_round: Mutex<u64>,
    senders: Mutex<Vec<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Arc<ReducerStats>,
    tracer: Mutex<Option<Tracer>>,
    lead: usize,
}

impl HostComm {
    /// Sets up rank `rank`'s side: rank 0 creates the segment at `path` and waits until every rank
    /// has mapped it, the others open it (all within `timeout`); each then checks that it can see
    /// its peers' processes and starts its reducer threads. When this returns on every rank, the
    /// segment's name is gone from the file system.
    ///
    /// # Errors
    /// [`SetupError`]; on rank 0 the name is removed before returning an error.
    pub fn setup(path: &std::path::Path, rank: usize, settings: Settings, timeout: Duration) -> Result<HostComm, SetupError> {
        Self::setup_local(path, rank, settings, timeout, Local { reducers: settings.threads, ..Local::default() }, &mut |_| true)
    }

    /// [`HostComm::setup`] with this rank's own choices in `local`, and a `gate` every rank passes
    /// once: rank 0 right after making the segment (with whether it could), the others before
    /// opening it (with true). It must tell every rank whether all passed true (an exchange among
    /// the ranks); if not, all give up at once instead of waiting out `timeout` for a segment that
    /// will never appear (a full /dev/shm, a memory limit).
    ///
    /// # Errors
    /// As [`HostComm::setup`]; [`SetupError::NotMade`] where the gate said no.
    pub fn setup_local(
        path: &std::path::Path,
        rank: usize,
        settings: Settings,
        timeout: Duration,
        local: Local,
        gate: &mut dyn FnMut(bool) -> bool,
    ) -> Result<HostComm, SetupError> {
        let reducers = local.reducers;
        let cpus = local.cpus.map(Arc::new);
        let g = settings.geometry;
        let seg = if rank == 0 {
            let made = Segment::create(path, g);
            let all = gate(made.is_ok());
            let s = made?;
            if !all {
                s.unlink();
                return Err(SetupError::NotMade);
            }
            s.wait_attached(timeout)?;
            s
        } else {
            if !gate(true) {
                return Err(SetupError::NotMade);
            }
            Segment::open(path, g, rank, timeout)?
        };
        // Every peer has registered its pid once it attached; rank 0 saw all attach, the others
        // may be ahead of the last one: wait for its pid too.
        let t0 = Instant::now();
        for r in 0..g.nranks {
            let h = seg.header();
            while h.pids[r].load(Ordering::Acquire) == 0 && t0.elapsed() < timeout {
                std::thread::sleep(Duration::from_millis(1));
            }
            let pid = h.pids[r].load(Ordering::Acquire);
            if pid == 0 {
                return Err(SetupError::NeverAttached { rank: r });
            }
            if !process_alive(pid, h.start_times[r].load(Ordering::Relaxed)) {
                return Err(SetupError::PeerInvisible { rank: r, pid });
            }
        }
        let seg = Arc::new(seg);
        let tracer = local.trace.as_deref().filter(|_| rank == 0).map(|dir| Tracer::start(seg.clone(), dir));
        let comm = HostComm {
            seg,
            settings,
            next_round: Mutex::new(0),
            senders: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            stats: Arc::default(),
            tracer: Mutex::new(tracer),
            lead: local.lead.unwrap_or(g.depth).clamp(1, g.depth),
        };
        for t in 0..reducers {
            let (tx, rx) = mpsc::channel();
            let worker = Reducer { seg: comm.seg.clone(), settings, stats: comm.stats.clone(), cpus: cpus.clone() };
            let h = std::thread::Builder::new()
                .name(format!("hostreduce-{rank}.{t}"))
                .spawn(move || worker.run(rx))
                .map_err(SetupError::Thread)?;
            comm.senders.lock().unwrap().push(tx);
            comm.threads.lock().unwrap().push(h);
        }
        Ok(comm)
    }

    pub fn rank(&self) -> usize {
        self.seg.rank()
    }
    pub fn settings(&self) -> Settings {
        self.settings
    }
    pub fn segment(&self) -> &Segment {
        &self.seg
    }
    pub fn segment_arc(&self) -> Arc<Segment> {
        self.seg.clone()
    }
    pub fn stats(&self) -> &ReducerStats {
        &self.stats
    }
    /// How far this rank's copies down run ahead of the reduce, for [`enqueue`].
    pub fn lead(&self) -> usize {
        self.lead
    }

    /// The abort state, if the communicator's host path is dead.
    pub fn aborted(&self) -> Option<Abort> {
        aborted(&self.seg)
    }

    /// Starts one all-reduce of `bytes` (a whole number of `dtype` elements): hands it to the
    /// reducer threads and returns its first round, for [`enqueue`] on this rank's streams.
    ///
    /// # Errors
    /// The abort state when the communicator is already dead: nothing was started.
    pub fn start(&self, bytes: usize, dtype: DType, op: Op) -> Result<u64, Abort> {
        if let Some(a) = self.aborted() {
            return Err(a);
        }
        let mut next = self.next_round.lock().unwrap();
        let first_round = *next;
        let rounds = chunk_lengths(bytes, self.settings.geometry.slot_bytes, self.settings.ramp).len() as u64;
        *next += rounds;
        if let Some(t) = &*self.tracer.lock().unwrap() {
            t.call(first_round, rounds, bytes);
        }
        let job = Job { first_round, bytes, dtype, op, sig: signature(bytes, dtype, op) };
        for tx in self.senders.lock().unwrap().iter() {
            // A reducer only ends when its sender is dropped, so sending cannot fail here.
            let _ = tx.send(job);
        }
        Ok(first_round)
    }

    /// Aborts the communicator for every rank: peers' calls fail, every stream wait is released.
    pub fn abort(&self, reason: AbortReason) {
        set_abort(&self.seg, reason, self.rank());
    }

    /// Stops the reducer threads after they finished the calls already started; if that takes more
    /// than `timeout` (peers that never make the same calls), aborts them with `reason` first.
    /// Then marks this rank as gone (pid 0), so that a peer still waiting for it fails instead of
    /// hanging. Every stream wait on this segment is satisfied afterwards.
    pub fn leave(&self, timeout: Duration, reason: AbortReason) {
        self.senders.lock().unwrap().clear();
        let threads: Vec<_> = self.threads.lock().unwrap().drain(..).collect();
        let t0 = Instant::now();
        while threads.iter().any(|h| !h.is_finished()) {
            if t0.elapsed() > timeout && self.aborted().is_none() {
                self.abort(reason);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for h in threads {
            let _ = h.join();
        }
        self.seg.header().pids[self.rank()].store(0, Ordering::Release);
    }

    /// Writes rank 0's timeline, if one is kept: after [`HostComm::leave`] and once this rank's
    /// streams are done, so that its last copies up are in it. Once; dropping does it otherwise.
    pub fn finish_trace(&self) {
        if let Some(t) = self.tracer.lock().unwrap().take() {
            match t.finish(self.settings.geometry) {
                Ok(file) => eprintln!("flexmig-hostreduce: rank {}: pipeline timeline in {}", self.rank(), file.display()),
                Err(e) => eprintln!("flexmig-hostreduce: rank {}: pipeline timeline not written: {e}", self.rank()),
            }
        }
    }
}

impl Drop for HostComm {
    fn drop(&mut self) {
        self.leave(Duration::from_secs(10), AbortReason::Unfinished);
        self.finish_trace();
    }
}

fn aborted(seg: &Segment) -> Option<Abort> {
    let word = seg.header().abort.load(Ordering::Acquire);
    AbortReason::from_code(word & 0xff).map(|reason| Abort { reason, rank: (word >> 8) as usize })
}

/// Marks the segment aborted (the first reason wins: true for the caller that set it) and
/// releases every stream wait. Reason and rank are one word, set by one compare-exchange: no rank
/// ever finds the flag taken but the reason not yet there, however setters race (a loser would
/// see no abort right after its own) or die halfway (every rank would see none, for good).
fn set_abort(seg: &Segment, reason: AbortReason, rank: usize) -> bool {
    let word = reason.code() | (rank as u32) << 8;
    let first = seg.header().abort.compare_exchange(0, word, Ordering::AcqRel, Ordering::Acquire).is_ok();
    release(seg);
    first
}

fn release(seg: &Segment) {
    for slot in 0..seg.geometry().depth {
        seg.counter(slot, Counter::Reduced).fetch_max(RELEASED, Ordering::AcqRel);
    }
}

/// One reducer thread: pieces of every chunk of every call, as many as it gets.
struct Reducer {
    seg: Arc<Segment>,
    settings: Settings,
    stats: Arc<ReducerStats>,
    cpus: Option<Arc<Vec<usize>>>,
}

impl Reducer {
    fn run(self, jobs: mpsc::Receiver<Job>) {
        // This thread inherited the MXCSR of the application's thread that created it.
        reduce::use_default_fp_env();
        crate::ffi::shm::set_timer_slack(1_000);
        if let Some(cpus) = &self.cpus {
            crate::ffi::shm::pin_current_thread(cpus);
        }
        // Pieces handed out per slot over all its uses so far: the `done` count that completes a round.
        let mut handed = vec![0u64; self.settings.geometry.depth];
        for job in jobs {
            if self.reduce_job(job, &mut handed).is_err() {
                release(&self.seg);
            }
        }
    }

    fn reduce_job(&self, job: Job, handed: &mut [u64]) -> Result<(), Abort> {
        let g = self.settings.geometry;
        let depth = g.depth as u64;
        let shares = g.nranks * self.settings.threads;
        let size = job.dtype.size();
        for (c, _, len) in chunks(job.bytes, g.slot_bytes, self.settings.ramp) {
            let r = job.first_round + c;
            let slot = (r % depth) as usize;
            let t0 = Instant::now();
            self.wait(|| {
                (0..g.nranks).all(|i| {
                    self.seg.counter(slot, Counter::Arrived(i)).load(Ordering::Acquire) > r
                        && (r < depth || self.seg.counter(slot, Counter::Consumed(i)).load(Ordering::Acquire) > r - depth)
                })
            })?;
            ReducerStats::add(&self.stats.wait_ns, t0);
            // The signatures read are this round's only while the round is still open: once its
            // last piece is done, copies down of round r + depth may overwrite them. The first
            // reducer to claim a piece always checks an open round.
            let sigs: Vec<u64> = (0..g.nranks).map(|i| self.seg.counter(slot, Counter::Sig(i)).load(Ordering::Acquire)).collect();
            if sigs.iter().any(|&s| s != job.sig) && self.seg.counter(slot, Counter::Reduced).load(Ordering::Acquire) <= r {
                // Every reducer of every rank read these same signatures (the round is open), so
                // whichever aborts first names the same rank: one whose call differs from most
                // ranks' (ties: from the lowest rank's call), not the first that differs from its own.
                let (common, odd) = odd_call(&sigs);
                if set_abort(&self.seg, AbortReason::Mismatch, odd) {
                    eprintln!(
                        "flexmig-hostreduce: rank {odd} called all-reduce of {}, rank {common} of {} at the same point: every rank of a communicator must make the same calls in the same order; aborting the communicator",
                        describe(sigs[odd]),
                        describe(sigs[common])
                    );
                }
                return Err(aborted(&self.seg).expect("just set"));
            }
            self.stats.chunks.fetch_add(1, Ordering::Relaxed);
            let t1 = Instant::now();
            let elements = len / size;
            let n = pieces(elements, shares);
            handed[slot] += n as u64;
            while let Some(p) = claim_piece(self.seg.counter(slot, Counter::Claim), r / depth + 1, n) {
                // Once aborted, the released streams overwrite the slots: stop reducing them.
                if let Some(a) = aborted(&self.seg) {
                    return Err(a);
                }
                let e = reduce::share(elements, n, p);
                if !e.is_empty() {
                    let bytes = e.start * size..e.end * size;
                    // SAFETY: every rank's `arrived` says its input for round r is in the slot, and no
                    // copy down of round r + depth starts before `reduced` reaches r + 1, which needs this
                    // piece; every rank's `consumed` has passed round r - depth, so no one reads this
                    // piece of the result slot; claim_piece gives piece p of this round to this thread
                    // alone, and no other piece overlaps it (reduce::share).
                    let (ins, out) = unsafe { (self.seg.inputs(slot, bytes.clone()), self.seg.result_mut(slot, bytes)) };
                    // Lengths agree by construction; an error here would be a bug in share arithmetic.
                    reduce::reduce(job.dtype, job.op, &ins, out).expect("piece ranges fit the slots");
                }
                self.stats.pieces.fetch_add(1, Ordering::Relaxed);
                let done = self.seg.counter(slot, Counter::Done).fetch_add(1, Ordering::AcqRel) + 1;
                if done == handed[slot] {
                    self.seg.counter(slot, Counter::Reduced).fetch_max(r + 1, Ordering::AcqRel);
                }
            }
            ReducerStats::add(&self.stats.reduce_ns, t1);
        }
        Ok(())
    }

    /// Waits for `ready`: spins while the peers' data is coming (a chunk takes tens of
    /// microseconds), then yields, then sleeps; checks the abort flag throughout and the peers'
    /// processes every [`PEER_CHECK`], aborting the communicator when one is gone.
    fn wait(&self, ready: impl Fn() -> bool) -> Result<(), Abort> {
        let t0 = Instant::now();
        let mut next_check = PEER_CHECK;
        let mut spins = 0u32;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(a) = aborted(&self.seg) {
                return Err(a);
            }
            spins += 1;
            if spins < 4096 {
                std::hint::spin_loop();
                continue;
            }
            let waited = t0.elapsed();
            if waited < Duration::from_millis(2) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(if waited < Duration::from_millis(20) { 20 } else { 50 }));
            }
            if waited > next_check {
                next_check = waited + PEER_CHECK;
                let h = self.seg.header();
                for r in 0..self.settings.geometry.nranks {
                    if !process_alive(h.pids[r].load(Ordering::Acquire), h.start_times[r].load(Ordering::Relaxed)) {
                        set_abort(&self.seg, AbortReason::PeerDied, r);
                        return Err(aborted(&self.seg).expect("just set"));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Record(Vec<(Side, String)>);
    impl Streams for Record {
        type Error = ();
        fn wait_geq(&mut self, side: Side, slot: usize, c: Counter, value: u64) -> Result<(), ()> {
            self.0.push((side, format!("wait {c:?}[{slot}]>={value}")));
            Ok(())
        }
        fn write(&mut self, side: Side, slot: usize, c: Counter, value: u64) -> Result<(), ()> {
            self.0.push((side, format!("write {c:?}[{slot}]={value}")));
            Ok(())
        }
        fn copy_down(&mut self, offset: usize, slot: usize, len: usize) -> Result<(), ()> {
            self.0.push((Side::Down, format!("down {offset}+{len}->[{slot}]")));
            Ok(())
        }
        fn copy_up(&mut self, slot: usize, offset: usize, len: usize) -> Result<(), ()> {
            self.0.push((Side::Up, format!("up [{slot}]->{offset}+{len}")));
            Ok(())
        }
    }

    #[test]
    fn chunks_cover_the_buffer() {
        assert_eq!(chunks(10_000, 4096, 0).collect::<Vec<_>>(), vec![(0, 0, 4096), (1, 4096, 4096), (2, 8192, 1808)]);
        assert_eq!(chunks(4096, 4096, 0).count(), 1);
        assert_eq!(chunks(0, 4096, 0).count(), 0);
        for bytes in [1, 4095, 4096, 100_000, 3 << 20, (16 << 20) + 2, 300 << 20] {
            let c: Vec<_> = chunks(bytes, 8 << 20, 0).collect();
            assert_eq!(c.iter().map(|x| x.2).sum::<usize>(), bytes);
            assert!(c.windows(2).all(|w| w[1].1 == w[0].1 + w[0].2 && w[1].0 == w[0].0 + 1));
        }
    }

    #[test]
    fn calls_are_cut_in_about_eight_chunks_between_a_quarter_slot_and_a_slot() {
        const M: usize = 1 << 20;
        let slot = 8 * M;
        assert_eq!(chunk_bytes(M, slot), 2 * M, "small calls: one chunk of the minimum size");
        assert_eq!(chunks(M, slot, 0).count(), 1);
        assert_eq!(chunk_bytes(16 * M, slot), 2 * M);
        assert_eq!(chunk_bytes(32 * M, slot), 4 * M);
        assert_eq!(chunk_bytes(64 * M, slot), 8 * M);
        assert_eq!(chunk_bytes(256 * M, slot), 8 * M, "large calls: whole slots");
        assert_eq!(chunk_bytes(24 * M + 4, slot) % 4096, 0);
        assert_eq!(chunk_bytes(1, 4096), 4096);
    }

    #[test]
    fn a_ramp_starts_and_ends_a_call_with_small_chunks() {
        const K: usize = 1 << 10;
        const M: usize = 1 << 20;
        let slot = 8 * M;
        assert_eq!(
            chunk_lengths(16 * M, slot, 256 * K),
            [256 * K, 512 * K, M, 512 * K, 2 * M, 2 * M, 2 * M, 2 * M, 2 * M, 2 * M, M, 512 * K, 256 * K]
        );
        assert_eq!(chunk_lengths(4 * M, slot, 256 * K), [2 * M, 2 * M], "too small for both ramps and a whole chunk");
        assert_eq!(chunk_lengths(16 * M, slot, 2 * M), chunk_lengths(16 * M, slot, 0), "a ramp no smaller than the chunk is none");
        for bytes in [4096, 5 << 20, (16 << 20) + 2, 25 << 20, 300 << 20] {
            for ramp in [0, 4096, 256 * K, M] {
                let l = chunk_lengths(bytes, slot, ramp);
                assert_eq!(l.iter().sum::<usize>(), bytes, "{bytes} {ramp}");
                assert!(l.iter().all(|&c| c > 0 && c <= slot), "{bytes} {ramp}: {l:?}");
                if ramp > 0 && l.len() > chunk_lengths(bytes, slot, 0).len() {
                    assert_eq!((l[0], l[l.len() - 1]), (ramp, ramp), "{bytes} {ramp}");
                }
                let c: Vec<_> = chunks(bytes, slot, ramp).collect();
                assert!(c.windows(2).all(|w| w[1].1 == w[0].1 + w[0].2 && w[1].0 == w[0].0 + 1));
            }
        }
    }

    #[test]
    fn each_stream_waits_for_the_slot_then_copies_then_signals() {
        let g = Geometry { nranks: 3, depth: 2, slot_bytes: 4096 };
        let mut rec = Record::default();
        // rounds 1, 2, 3 of rank 2: round 1 uses slot 1 for the first time, round 2 reuses slot 0
        enqueue(&mut rec, Settings { geometry: g, threads: 1, ramp: 0 }, 2, g.depth, 1, 3 * 4096 - 100, 77).unwrap();
        let side = |s| rec.0.iter().filter(|(x, _)| *x == s).map(|(_, t)| t.as_str()).collect::<Vec<_>>();
        assert_eq!(
            side(Side::Down),
            [
                "write Sig(2)[1]=77",
                "down 0+4096->[1]",
                "write Arrived(2)[1]=2",
                "wait Reduced[0]>=1",
                "write Sig(2)[0]=77",
                "down 4096+4096->[0]",
                "write Arrived(2)[0]=3",
                "wait Reduced[1]>=2",
                "write Sig(2)[1]=77",
                "down 8192+3996->[1]",
                "write Arrived(2)[1]=4",
            ]
        );
        assert_eq!(
            side(Side::Up),
            [
                "wait Reduced[1]>=2",
                "up [1]->0+4096",
                "write Consumed(2)[1]=2",
                "wait Reduced[0]>=3",
                "up [0]->4096+4096",
                "write Consumed(2)[0]=3",
                "wait Reduced[1]>=4",
                "up [1]->8192+3996",
                "write Consumed(2)[1]=4",
            ]
        );
    }

    #[test]
    fn a_lead_below_the_depth_holds_each_copy_down_until_an_earlier_round_is_reduced() {
        let g = Geometry { nranks: 2, depth: 4, slot_bytes: 4096 };
        let mut rec = Record::default();
        // rounds 0..5 of rank 1, copies down at most two rounds ahead of the reduce
        enqueue(&mut rec, Settings { geometry: g, threads: 1, ramp: 0 }, 1, 2, 0, 5 * 4096, 9).unwrap();
        let waits: Vec<_> = rec.0.iter().filter(|(x, t)| *x == Side::Down && t.starts_with("wait")).map(|(_, t)| t.as_str()).collect();
        // round 2 waits for round 0, round 3 for round 1, round 4 for round 2 and for its slot
        assert_eq!(waits, ["wait Reduced[0]>=1", "wait Reduced[1]>=2", "wait Reduced[0]>=1", "wait Reduced[2]>=3"]);
        // at the depth (and beyond: clamped) only the slot's own wait remains
        for lead in [4, 9] {
            let mut rec = Record::default();
            enqueue(&mut rec, Settings { geometry: g, threads: 1, ramp: 0 }, 1, lead, 0, 5 * 4096, 9).unwrap();
            let waits: Vec<_> = rec.0.iter().filter(|(x, t)| *x == Side::Down && t.starts_with("wait")).map(|(_, t)| t.as_str()).collect();
            assert_eq!(waits, ["wait Reduced[0]>=1"], "lead {lead}");
        }
    }

    #[test]
    fn pieces_are_a_few_per_thread_and_never_below_a_block() {
        assert_eq!(pieces(1 << 20, 7), 7 * PIECES_PER_SHARE);
        assert_eq!(pieces(64 * 3, 7), 3, "one per 64-element block");
        assert_eq!(pieces(1, 7), 1);
        assert_eq!(pieces(0, 7), 1, "an empty chunk still completes its round");
    }

    #[test]
    fn every_piece_of_a_use_is_claimed_once_and_older_uses_get_nothing() {
        let c = AtomicU64::new(0);
        let got: Vec<_> = std::iter::from_fn(|| claim_piece(&c, 1, 5)).collect();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        assert_eq!(claim_piece(&c, 1, 5), None);
        // The slot's next use starts over at piece 0; a reducer still in use 1 takes nothing.
        assert_eq!(claim_piece(&c, 2, 3), Some(0));
        assert_eq!(claim_piece(&c, 1, 5), None);
        assert_eq!(claim_piece(&c, 2, 3), Some(1));
        // A reducer may skip uses of a slot (all their pieces taken by others): the next use it
        // joins starts over too.
        assert_eq!(claim_piece(&c, 5, 1), Some(0));
        assert_eq!(claim_piece(&c, 5, 1), None);
    }

    #[test]
    fn racing_reducers_share_the_pieces_without_overlap() {
        let c = Arc::new(AtomicU64::new(0));
        let (uses, pieces) = (50u64, 97usize);
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let taken: Vec<Vec<(u64, usize)>> = (0..8)
            .map(|_| {
                let (c, barrier) = (c.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for u in 1..=uses {
                        barrier.wait(); // a use starts once every thread is past the last one
                        while let Some(p) = claim_piece(&c, u, pieces) {
                            mine.push((u, p));
                        }
                    }
                    mine
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let mut all: Vec<_> = taken.concat();
        all.sort_unstable();
        let want: Vec<_> = (1..=uses).flat_map(|u| (0..pieces).map(move |p| (u, p))).collect();
        assert_eq!(all, want);
    }

    #[test]
    fn signatures_tell_calls_apart_and_read_back() {
        let s = signature(4096, DType::F32, Op::Sum);
        assert_eq!(describe(s), "4096 bytes f32 sum");
        assert_eq!(describe(signature(1 << 40, DType::Bf16, Op::Avg)), format!("{} bytes bf16 avg", 1u64 << 40));
        let others = [
            signature(8192, DType::F32, Op::Sum),
            signature(4096, DType::Bf16, Op::Sum),
            signature(4096, DType::F16, Op::Sum),
            signature(4096, DType::F32, Op::Avg),
        ];
        assert!(others.iter().all(|&o| o != s && o != 0), "never 0, the value before any write");
    }

    #[test]
    fn the_rank_named_in_a_mismatch_is_the_one_the_most_ranks_disagree_with() {
        assert_eq!(odd_call(&[7, 7, 9]), (0, 2));
        assert_eq!(odd_call(&[9, 7, 7, 7]), (1, 0), "the odd call on rank 0");
        assert_eq!(odd_call(&[7, 9]), (0, 1), "a tie: the lowest rank's call counts as the common one");
        assert_eq!(odd_call(&[7, 9, 9, 7, 5]), (0, 1));
    }

    #[test]
    fn racing_aborts_agree_on_the_first_and_each_setter_sees_an_abort_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry { nranks: 1, depth: 3, slot_bytes: 4096 };
        let seg = Arc::new(Segment::create(&dir.path().join("seg"), g).unwrap());
        let reasons = [AbortReason::PeerDied, AbortReason::Aborted, AbortReason::Unfinished, AbortReason::Mismatch];
        let seen: Vec<(bool, Option<Abort>)> = (0..8)
            .map(|i| {
                let seg = seg.clone();
                std::thread::spawn(move || (set_abort(&seg, reasons[i % 4], 60 + i % 4), aborted(&seg)))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert_eq!(seen.iter().filter(|(first, _)| *first).count(), 1, "one setter wins");
        let first = aborted(&seg).expect("aborted");
        assert!(seen.iter().all(|(_, a)| *a == Some(first)), "{seen:?}");
        assert_eq!(first.rank, 60 + reasons.iter().position(|&r| r == first.reason).unwrap(), "reason and rank of one setter");
        assert!((0..g.depth).all(|s| seg.counter(s, Counter::Reduced).load(Ordering::Relaxed) == RELEASED));
    }

    #[test]
    fn abort_codes_round_trip_and_unknown_codes_are_healthy() {
        for r in [AbortReason::PeerDied, AbortReason::Aborted, AbortReason::Unfinished, AbortReason::Mismatch] {
            assert_eq!(AbortReason::from_code(r.code()), Some(r));
        }
        assert_eq!(AbortReason::from_code(0), None);
        assert_eq!(AbortReason::from_code(u32::MAX), None);
        let a = Abort { reason: AbortReason::PeerDied, rank: 3 };
        assert_eq!(a.to_string(), "flexmig-hostreduce: rank 3 died or left; the communicator is unusable");
    }
}
