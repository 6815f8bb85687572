//! The GPU side without a GPU: each rank's two streams are threads that run the same stream
//! operations ([`Streams`]) in order, with memcpy for the copy engines and spinning loads for
//! `cuStreamWaitValue64`. Everything else (segment, counters, reducer threads, abort) is the real
//! code, so tests exercise the whole pipeline on a machine without CUDA.

use crate::ffi::shm::{Counter, Segment};
use crate::pipeline::{self, Abort, HostComm, Side, Streams};
use crate::reduce::{DType, Op};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Task = Box<dyn FnOnce() + Send>;

/// FTZ, DAZ and round toward zero on top of the default MXCSR: an application thread that flushes
/// denormals (as `torch.set_flush_denormal(True)` does) and rounds otherwise.
#[cfg(target_arch = "x86_64")]
pub const MXCSR_FLUSH_TRUNCATE: u32 = crate::reduce::MXCSR_DEFAULT | 0x8040 | 0x6000;

/// Runs `f` on this thread with MXCSR set to `csr`, restored after: how tests stand for such an
/// application thread.
#[cfg(target_arch = "x86_64")]
pub fn with_mxcsr<R>(csr: u32, f: impl FnOnce() -> R) -> R {
    let old = crate::reduce::mxcsr();
    crate::reduce::set_mxcsr(csr);
    let r = f();
    crate::reduce::set_mxcsr(old);
    r
}

/// One in-order stream: a thread running queued operations one after the other.
#[derive(Debug)]
struct Stream {
    tx: Option<mpsc::Sender<Task>>,
    thread: Option<JoinHandle<()>>,
}

impl Stream {
    fn new(name: String) -> Stream {
        let (tx, rx) = mpsc::channel::<Task>();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                for t in rx {
                    t()
                }
            })
            .expect("starting a simulated stream");
        Stream { tx: Some(tx), thread: Some(thread) }
    }
    fn push(&self, t: Task) {
        self.tx.as_ref().expect("stream open").send(t).expect("simulated stream alive");
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

/// A rank's device buffers in the simulation.
pub type SendBuf = Arc<Vec<u8>>;
pub type RecvBuf = Arc<Mutex<Vec<u8>>>;

/// One simulated rank: the real [`HostComm`] and two simulated streams.
#[derive(Debug)]
pub struct SimRank {
    pub comm: HostComm,
    seg: Arc<Segment>,
    down: Arc<Stream>,
    up: Arc<Stream>,
}

/// Waits for a call's two streams to pass their last operation (an event on each stream).
#[derive(Debug)]
pub struct Completion(mpsc::Receiver<()>);

impl Completion {
    /// Blocks until both streams are done with the call, or `timeout` passes (returns false).
    pub fn wait(self, timeout: std::time::Duration) -> bool {
        let t0 = std::time::Instant::now();
        (0..2).all(|_| self.0.recv_timeout(timeout.saturating_sub(t0.elapsed())).is_ok())
    }
}

struct Calls<'a> {
    rank: &'a SimRank,
    send: SendBuf,
    recv: RecvBuf,
}

impl Streams for Calls<'_> {
    type Error = std::convert::Infallible;
    fn wait_geq(&mut self, side: Side, slot: usize, c: Counter, value: u64) -> Result<(), Self::Error> {
        let seg = self.rank.seg.clone();
        self.rank.stream(side).push(Box::new(move || {
            while seg.counter(slot, c).load(Ordering::Acquire) < value {
                std::thread::yield_now();
            }
        }));
        Ok(())
    }
    fn write(&mut self, side: Side, slot: usize, c: Counter, value: u64) -> Result<(), Self::Error> {
        let seg = self.rank.seg.clone();
        self.rank.stream(side).push(Box::new(move || seg.counter(slot, c).store(value, Ordering::Release)));
        Ok(())
    }
    fn copy_down(&mut self, offset: usize, slot: usize, len: usize) -> Result<(), Self::Error> {
        let (seg, send) = (self.rank.seg.clone(), self.send.clone());
        self.rank.down.push(Box::new(move || seg.copy_into_input(slot, &send[offset..offset + len])));
        Ok(())
    }
    fn copy_up(&mut self, slot: usize, offset: usize, len: usize) -> Result<(), Self::Error> {
        let (seg, recv) = (self.rank.seg.clone(), self.recv.clone());
        self.rank.up.push(Box::new(move || seg.copy_from_result(slot, &mut recv.lock().unwrap()[offset..offset + len])));
        Ok(())
    }
}

impl SimRank {
    pub fn new(comm: HostComm) -> SimRank {
        let seg = comm.segment_arc();
        let r = comm.rank();
        SimRank { comm, seg, down: Arc::new(Stream::new(format!("sim-down-{r}"))), up: Arc::new(Stream::new(format!("sim-up-{r}"))) }
    }

    /// A rank whose two sides share one in-order queue, as two CUDA streams do when they are
    /// mapped onto the same hardware queue: only an order of operations without waits on work
    /// queued behind them completes.
    pub fn new_one_queue(comm: HostComm) -> SimRank {
        let seg = comm.segment_arc();
        let q = Arc::new(Stream::new(format!("sim-queue-{}", comm.rank())));
        SimRank { comm, seg, down: q.clone(), up: q }
    }

    fn stream(&self, side: Side) -> &Stream {
        match side {
            Side::Down => &self.down,
            Side::Up => &self.up,
        }
    }

    /// Enqueues an all-reduce of `send` into `recv` (same length) the way the GPU path does, and
    /// returns at once, like an asynchronous NCCL call.
    ///
    /// # Errors
    /// The abort state when the communicator is dead; nothing is enqueued then.
    pub fn all_reduce(&self, send: SendBuf, recv: RecvBuf, dtype: DType, op: Op) -> Result<Completion, Abort> {
        let bytes = send.len();
        let first = self.comm.start(bytes, dtype, op)?;
        let mut calls = Calls { rank: self, send, recv };
        let Ok(()) = pipeline::enqueue(
            &mut calls,
            self.comm.settings(),
            self.comm.rank(),
            self.comm.lead(),
            first,
            bytes,
            pipeline::signature(bytes, dtype, op),
        );
        let (tx, rx) = mpsc::channel();
        for side in [Side::Down, Side::Up] {
            let tx = tx.clone();
            self.stream(side).push(Box::new(move || {
                let _ = tx.send(());
            }));
        }
        Ok(Completion(rx))
    }
}

/// Deterministic input of `rank` for call `call` of a test (values in [-4, 4) with full mantissas),
/// so that every simulated process can compute every rank's input and the expected result.
pub fn test_input(seed: u64, call: usize, rank: usize, dtype: DType, n: usize) -> Vec<u8> {
    let mut x = seed ^ ((call as u64) << 32) ^ (rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut b = Vec::with_capacity(n * dtype.size());
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = ((x >> 11) as f64 / (1u64 << 53) as f64 * 8.0 - 4.0) as f32;
        match dtype {
            DType::F32 => b.extend_from_slice(&v.to_le_bytes()),
            DType::Bf16 => b.extend_from_slice(&crate::reduce::f32_to_bf16(v).to_le_bytes()),
            DType::F16 => b.extend_from_slice(&crate::reduce::f32_to_f16(v).to_le_bytes()),
        }
    }
    b
}

/// The expected result of call `call` over `nranks` ranks: the scalar reference over their inputs.
pub fn test_expected(seed: u64, call: usize, nranks: usize, dtype: DType, op: Op, n: usize) -> Vec<u8> {
    let ins: Vec<Vec<u8>> = (0..nranks).map(|r| test_input(seed, call, r, dtype, n)).collect();
    let refs: Vec<&[u8]> = ins.iter().map(|v| v.as_slice()).collect();
    let mut out = vec![0u8; n * dtype.size()];
    crate::reduce::reduce_scalar(dtype, op, &refs, &mut out).expect("test buffers fit");
    out
}

/// The calls of a simulated run, by index: cycling through element types, operations and sizes
/// (one element; a slot exactly; several slots with a tail; more chunks than slots).
pub fn test_call(call: usize, slot_bytes: usize) -> (DType, Op, usize) {
    let dtype = [DType::F32, DType::Bf16, DType::F16][call % 3];
    let op = [Op::Sum, Op::Avg][(call / 3) % 2];
    // with 16 KiB slots: one chunk, 4 KiB chunks, 8 KiB chunks, whole slots
    let bytes = [dtype.size(), slot_bytes, 3 * slot_bytes + 2 * 70, 9 * slot_bytes - 64][(call / 6) % 4];
    (dtype, op, bytes / dtype.size())
}
