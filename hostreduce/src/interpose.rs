//! What the preloaded library does in each intercepted NCCL call: which communicators get the host
//! path (decided at creation, the same on every rank), which all-reduces take it, and teardown.
//!
//! Every CUDA call is made on the application's thread, inside the NCCL call it intercepts; the
//! reducer threads never call CUDA. Everything is enqueued on the caller's stream at call time:
//! our two streams wait for the caller's stream, and the caller's stream waits for them, so the call
//! is ordered like an NCCL kernel would be.

use crate::config::{decide, default_threads, fnv1a, host_hash, Config, Decision, Mode, PeerInfo, PEER_INFO_BYTES};
use crate::ffi::cuda::{self, CudaError, DevPtr, DeviceBuffer, Event, GpuCall, Stream};
use crate::ffi::nccl::{self, Comm, NcclResult, NCCL_REMOTE_ERROR, NCCL_SUCCESS, NCCL_UNHANDLED_CUDA_ERROR};
use crate::ffi::shm::segment_path;
use crate::numa;
use crate::pipeline::{self, AbortReason, HostComm, Local};
use crate::reduce::{DType, Op};
use crate::select::{Table, BUILT_IN};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long ranks wait for each other while setting up a segment.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long destroy waits for started calls to finish before aborting them.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(10);

/// A communicator with the host path available.
#[derive(Debug)]
struct GpuComm {
    host: HostComm,
    mode: Mode,
    table: Table,
    debug: bool,
    seg_dev: DevPtr,
    down: Stream,
    up: Stream,
    fork: Event,
    join_down: Event,
    join_up: Event,
    host_calls: AtomicU64,
    nccl_calls: AtomicU64,
}

fn comms() -> &'static Mutex<HashMap<usize, Arc<GpuComm>>> {
    static COMMS: std::sync::OnceLock<Mutex<HashMap<usize, Arc<GpuComm>>>> = std::sync::OnceLock::new();
    COMMS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lookup(comm: Comm) -> Option<Arc<GpuComm>> {
    comms().lock().unwrap().get(&(comm as usize)).cloned()
}

/// Where each live communicator came from, host path or not: the hash its segment name is made
/// of, and how many times it has been split. A communicator split from it gets its own hash from
/// these and its color; every rank of the parent makes the same splits in the same order (NCCL's
/// rule: ncclCommSplit is collective over the parent), so the ranks of a child agree on it, and
/// children of different colors or splits differ.
#[derive(Clone, Copy, Debug)]
struct Origin {
    hash: u64,
    splits: u64,
}

fn origins() -> &'static Mutex<HashMap<usize, Origin>> {
    static ORIGINS: std::sync::OnceLock<Mutex<HashMap<usize, Origin>>> = std::sync::OnceLock::new();
    ORIGINS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The identity a communicator split from one of hash `parent`, at its split number `split`, with
/// `color`, is set up under (in place of an ncclUniqueId).
fn split_id(parent: u64, split: u64, color: i32) -> Vec<u8> {
    let mut id = Vec::with_capacity(24);
    id.extend_from_slice(&parent.to_le_bytes());
    id.extend_from_slice(&split.to_le_bytes());
    id.extend_from_slice(&i64::from(color).to_le_bytes());
    id
}

thread_local! {
    static GROUP_DEPTH: Cell<u32> = const { Cell::new(0) };
}

pub fn group_enter() {
    GROUP_DEPTH.with(|d| d.set(d.get() + 1));
}
pub fn group_leave() {
    GROUP_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
}
fn in_group() -> bool {
    GROUP_DEPTH.with(|d| d.get() > 0)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn log(on: bool, msg: std::fmt::Arguments<'_>) {
    if on {
        eprintln!("flexmig-hostreduce: {msg}");
    }
}

fn this_host() -> u64 {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    host_hash(&hostname, &boot)
}

/// All-gathers `mine` over the real communicator (synchronously, on a stream of our own).
fn exchange(comm: Comm, nranks: usize, mine: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let n = mine.len();
    let send = DeviceBuffer::new(n).map_err(|e| e.to_string())?;
    let recv = DeviceBuffer::new(n * nranks).map_err(|e| e.to_string())?;
    send.write(mine).map_err(|e| e.to_string())?;
    let s = cuda::stream_create().map_err(|e| e.to_string())?;
    let r = nccl::all_gather(send.ptr, recv.ptr, n, comm, s);
    let synced = cuda::stream_synchronize(s);
    let _ = cuda::stream_destroy(s);
    if r != NCCL_SUCCESS {
        return Err(format!("ncclAllGather returned {r}"));
    }
    synced.map_err(|e| e.to_string())?;
    let mut all = vec![0u8; n * nranks];
    recv.read(&mut all).map_err(|e| e.to_string())?;
    Ok(all.chunks(n).map(|c| c.to_vec()).collect())
}

/// After the real init succeeded: decide, with the other ranks, whether this communicator gets the
/// host path, and set it up. Any failure leaves the communicator to NCCL (on every rank: the last
/// step is an exchange of each rank's outcome).
pub fn on_init(comm: Comm, nranks: usize, id: &[u8], rank: usize, config_blocking: Option<i32>) {
    origins().lock().unwrap().insert(comm as usize, Origin { hash: fnv1a(id), splits: 0 });
    let cfg = match Config::from_env(&env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flexmig-hostreduce: {e}; host reduction off");
            return;
        }
    };
    let say = |path: &str, why: &str| log(cfg.debug, format_args!("rank {rank}/{nranks} comm {comm:p}: path={path} ({why})"));
    // Decided without talking to the other ranks, so the same on all of them only when their
    // environment agrees (the plugin exports the same FLEXMIG_HOSTREDUCE to every task of a step).
    if cfg.mode == Mode::Off {
        return say("nccl", "FLEXMIG_HOSTREDUCE=off");
    }
    let blocking_env = !matches!(env("NCCL_COMM_BLOCKING").as_deref(), Some("0"));
    let blocking = match config_blocking {
        Some(b) if b != i32::MIN => b != 0,
        _ => blocking_env,
    };
    if !blocking {
        return say("nccl", "non-blocking communicator");
    }
    if in_group() {
        return say("nccl", "created inside ncclGroupStart/End");
    }
    match cuda::has_context() {
        Ok(true) => {}
        Ok(false) => return say("nccl", "no current CUDA context"),
        Err(e) => return say("nccl", &e.to_string()),
    }
    let (table, table_note) = match &cfg.table {
        None => (Table::parse(BUILT_IN).expect("the built-in table is checked by the tests"), "built-in table".to_string()),
        Some(p) => match std::fs::read_to_string(p).map_err(|e| e.to_string()).and_then(|t| Table::parse(&t).map_err(|e| e.to_string())) {
            Ok(t) => (t, format!("table {}", p.display())),
            Err(e) => {
                eprintln!("flexmig-hostreduce: FLEXMIG_HOSTREDUCE_TABLE={}: {e}; using the built-in table", p.display());
                (Table::parse(BUILT_IN).expect("checked by the tests"), "built-in table".to_string())
            }
        },
    };
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let online = crate::ffi::shm::online_cpus().max(cpus);
    let info = PeerInfo {
        host: this_host(),
        mode: cfg.mode,
        launch_blocking: cfg.launch_blocking,
        slot_bytes: cfg.slot_bytes as u64,
        depth: cfg.depth as u32,
        threads: cfg.threads.unwrap_or_else(|| default_threads(cpus, online, nranks)) as u32,
        table: table.fingerprint(),
        ramp: cfg.ramp as u32,
    };
    let gathered = match exchange(comm, nranks, &info.encode()) {
        Ok(g) => g,
        Err(e) => return say("nccl", &format!("exchange at creation failed: {e}")),
    };
    debug_assert_eq!(gathered[rank].len(), PEER_INFO_BYTES);
    let (settings, mode) = match decide(&gathered) {
        Decision::Nccl(why) => return say("nccl", &why),
        Decision::Host { settings, mode } => (settings, mode),
    };
    let path = segment_path(&cfg.shm_dir, &cfg.job, &cfg.step, fnv1a(id));
    let built = build(comm, &path, rank, settings, mode, table, &cfg);
    // Every rank must take the same path: exchange the outcome.
    let ok = [built.is_ok() as u8];
    let all_ok = match exchange(comm, nranks, &ok) {
        Ok(g) => g.iter().all(|b| b[0] == 1),
        Err(_) => false,
    };
    match (built, all_ok) {
        (Ok(gc), true) => {
            let g = settings.geometry;
            let sel = if mode == Mode::On { "every all-reduce it can take".to_string() } else { format!("auto, {table_note}") };
            say(
                "hostreduce",
                &format!(
                    "{} ranks on this node, segment {}, {} x {} KiB slots, {} reducer threads per rank, {sel}",
                    g.nranks,
                    path.display(),
                    g.depth,
                    g.slot_bytes >> 10,
                    settings.threads
                ),
            );
            comms().lock().unwrap().insert(comm as usize, Arc::new(gc));
        }
        (Ok(gc), false) => {
            teardown(gc, comm, false);
            say("nccl", "another rank could not set up the host path");
        }
        (Err(e), _) => say("nccl", &format!("setup failed: {e}")),
    }
}

fn build(
    comm: Comm,
    path: &std::path::Path,
    rank: usize,
    settings: pipeline::Settings,
    mode: Mode,
    table: Table,
    cfg: &Config,
) -> Result<GpuComm, String> {
    let debug = cfg.debug;
    let cpus = reducer_cpus();
    let local = Local { reducers: settings.threads, cpus: cpus.as_ref().map(|(_, c)| c.clone()), trace: cfg.trace.clone(), lead: cfg.lead };
    // Rank 0 says whether it made the segment before the others wait for it.
    let mut gate = |ok: bool| exchange(comm, settings.geometry.nranks, &[ok as u8]).is_ok_and(|all| all.iter().all(|b| b[0] == 1));
    let host = HostComm::setup_local(path, rank, settings, SETUP_TIMEOUT, local, &mut gate).map_err(|e| e.to_string())?;
    if let Some((node, c)) = &cpus {
        log(debug, format_args!("rank {rank}: reducer threads on NUMA node {node} (CPUs {}), the GPU's", numa::format_cpulist(c)));
    }
    let seg_dev = cuda::register(host.segment()).map_err(|e| e.to_string())?;
    let made = (|| -> Result<_, CudaError> {
        Ok((cuda::stream_create()?, cuda::stream_create()?, cuda::event_create()?, cuda::event_create()?, cuda::event_create()?))
    })();
    match made {
        Ok((down, up, fork, join_down, join_up)) => Ok(GpuComm {
            host,
            mode,
            table,
            debug,
            seg_dev,
            down,
            up,
            fork,
            join_down,
            join_up,
            host_calls: AtomicU64::new(0),
            nccl_calls: AtomicU64::new(0),
        }),
        Err(e) => {
            let _ = cuda::unregister(host.segment());
            Err(e.to_string())
        }
    }
}

/// The GPU's NUMA node and the CPUs of it this process may use, where the machine has several
/// nodes (see [`numa`]); None leaves the reducer threads to the scheduler.
fn reducer_cpus() -> Option<(usize, Vec<usize>)> {
    let sys = std::path::Path::new("/sys");
    let nodes = numa::nodes(sys);
    let (node, cpus) = numa::gpu_node(sys, &cuda::current_pci_bus_id().ok()?)?;
    numa::choose(nodes, &cpus, &crate::ffi::shm::allowed_cpus()).map(|c| (node, c))
}

fn dtype_of(nccl_type: i32) -> Option<DType> {
    match nccl_type {
        6 => Some(DType::F16),
        7 => Some(DType::F32),
        9 => Some(DType::Bf16),
        _ => None,
    }
}

fn op_of(nccl_op: i32) -> Option<Op> {
    match nccl_op {
        0 => Some(Op::Sum),
        4 => Some(Op::Avg),
        _ => None,
    }
}

/// Which all-reduces the host path takes, from the call's arguments alone (the same on every rank):
/// the element type and operation it supports (NCCL's codes), a non-empty buffer, outside a group,
/// and under `auto` a measured win. Returns the type, operation and size in bytes.
fn route(mode: Mode, table: &Table, k: usize, datatype: i32, op: i32, count: usize, in_group: bool) -> Option<(DType, Op, usize)> {
    let (dtype, op) = (dtype_of(datatype)?, op_of(op)?);
    let bytes = count.checked_mul(dtype.size())?;
    if bytes == 0 || in_group || mode == Mode::Off || (mode == Mode::Auto && !table.host_wins(k, dtype, bytes as u64)) {
        return None;
    }
    Some((dtype, op, bytes))
}

/// ncclAllReduce: Some(result) when the host path took the call, None to hand it to NCCL.
#[allow(clippy::too_many_arguments)]
pub fn on_all_reduce(send: DevPtr, recv: DevPtr, count: usize, datatype: i32, op: i32, comm: Comm, stream: Stream) -> Option<NcclResult> {
    let gc = lookup(comm)?;
    if let Some(a) = gc.host.aborted() {
        eprintln!("{a}");
        return Some(NCCL_REMOTE_ERROR);
    }
    let pass = || {
        gc.nccl_calls.fetch_add(1, Ordering::Relaxed);
        None
    };
    let k = gc.host.settings().geometry.nranks;
    let Some((dtype, op, bytes)) = route(gc.mode, &gc.table, k, datatype, op, count, in_group()) else { return pass() };
    // A CUDA graph would replay the copies without the reducers' rounds: NCCL's kernels it is.
    match cuda::is_capturing(stream) {
        Ok(false) => {}
        _ => return pass(),
    }
    match enqueue(&gc, send, recv, bytes, dtype, op, stream) {
        Ok(()) => {
            gc.host_calls.fetch_add(1, Ordering::Relaxed);
            Some(NCCL_SUCCESS)
        }
        Err(Enqueue::Aborted(a)) => {
            eprintln!("{a}");
            Some(NCCL_REMOTE_ERROR)
        }
        Err(Enqueue::Cuda(e)) => {
            // The reducers of every rank now wait for this rank's copies: abort, releasing them.
            eprintln!("flexmig-hostreduce: rank {}: {e}; aborting the communicator's host path", gc.host.rank());
            gc.host.abort(AbortReason::Aborted);
            Some(NCCL_UNHANDLED_CUDA_ERROR)
        }
    }
}

enum Enqueue {
    Aborted(pipeline::Abort),
    Cuda(CudaError),
}

fn enqueue(gc: &GpuComm, send: DevPtr, recv: DevPtr, bytes: usize, dtype: DType, op: Op, stream: Stream) -> Result<(), Enqueue> {
    // Both of our streams start after what the caller's stream holds now.
    cuda::stream_wait_stream(gc.down, stream, gc.fork).map_err(Enqueue::Cuda)?;
    cuda::stream_wait_stream(gc.up, stream, gc.fork).map_err(Enqueue::Cuda)?;
    let first = gc.host.start(bytes, dtype, op).map_err(Enqueue::Aborted)?;
    let mut call = GpuCall { seg: gc.host.segment(), seg_dev: gc.seg_dev, down: gc.down, up: gc.up, send, recv };
    pipeline::enqueue(&mut call, gc.host.settings(), gc.host.rank(), gc.host.lead(), first, bytes, pipeline::signature(bytes, dtype, op))
        .map_err(Enqueue::Cuda)?;
    // The caller's stream continues once both are through.
    cuda::stream_wait_stream(stream, gc.down, gc.join_down).map_err(Enqueue::Cuda)?;
    cuda::stream_wait_stream(stream, gc.up, gc.join_up).map_err(Enqueue::Cuda)
}

/// Whether the host path of `comm` is aborted (for ncclCommGetAsyncError).
pub fn is_aborted(comm: Comm) -> bool {
    lookup(comm).is_some_and(|gc| gc.host.aborted().is_some())
}

/// After the real ncclCommSplit: counts the split on the parent (every rank of it calls split,
/// `child` None where its color was NCCL_SPLIT_NOCOLOR) and sets the child up as a new
/// communicator of `nranks`, this process being `rank`. A parent this library did not see made
/// (not by ncclCommInitRank/Config) gives children that stay with NCCL.
pub fn on_split(parent: Comm, color: i32, child: Option<(Comm, usize, usize)>, config_blocking: Option<i32>) {
    let origin = origins().lock().unwrap().get_mut(&(parent as usize)).map(|o| {
        let at = *o;
        o.splits += 1;
        at
    });
    let Some((comm, nranks, rank)) = child else { return };
    match origin {
        Some(o) => on_init(comm, nranks, &split_id(o.hash, o.splits, color), rank, config_blocking),
        None => {
            let debug = Config::from_env(&env).is_ok_and(|c| c.debug);
            log(
                debug,
                format_args!("rank {rank}/{nranks} comm {comm:p}: path=nccl (split from a communicator made outside this library's view)"),
            );
        }
    }
}

/// ncclCommDestroy (`abort` false) and ncclCommAbort (true).
pub fn on_teardown(comm: Comm, abort: bool) {
    origins().lock().unwrap().remove(&(comm as usize));
    let gc = comms().lock().unwrap().remove(&(comm as usize));
    if let Some(gc) = gc {
        match Arc::try_unwrap(gc) {
            Ok(gc) => teardown(gc, comm, abort),
            // Another thread is inside a call on this communicator: leave it to the last user.
            Err(gc) => log(gc.debug, format_args!("comm {comm:p} torn down while in use")),
        }
    }
}

fn teardown(gc: GpuComm, comm: Comm, abort: bool) {
    // Destroy lets started calls finish (aborting them after a timeout); abort does not wait for
    // calls that still need peers. Either way every stream wait on the segment is then satisfied.
    if abort {
        gc.host.leave(Duration::from_millis(100), AbortReason::Aborted);
    } else {
        gc.host.leave(DESTROY_TIMEOUT, AbortReason::Unfinished);
    }
    for s in [gc.down, gc.up] {
        let _ = cuda::stream_synchronize(s);
    }
    gc.host.finish_trace();
    let st = gc.host.stats();
    let ms = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64 / 1e6;
    log(
        gc.debug,
        format_args!(
            "rank {} comm {comm:p}: {} all-reduces on the host path, {} through NCCL; reducer threads: {} chunks, {} pieces reduced here, {:.1} ms waiting for copies down, {:.1} ms reducing",
            gc.host.rank(),
            gc.host_calls.load(Ordering::Relaxed),
            gc.nccl_calls.load(Ordering::Relaxed),
            st.chunks.load(Ordering::Relaxed),
            st.pieces.load(Ordering::Relaxed),
            ms(&st.wait_ns),
            ms(&st.reduce_ns),
        ),
    );
    let _ = cuda::unregister(gc.host.segment());
    for s in [gc.down, gc.up] {
        let _ = cuda::stream_destroy(s);
    }
    for e in [gc.fork, gc.join_down, gc.join_up] {
        let _ = cuda::event_destroy(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F32: i32 = 7;
    const BF16: i32 = 9;
    const F16: i32 = 6;
    const SUM: i32 = 0;
    const AVG: i32 = 4;
    const M: usize = 1 << 20;

    fn table() -> Table {
        Table::parse(
            r#"{"version":2,"source":"test","machine":"test","min_speedup":1.1,"floor":0.95,"points":[
            {"k":7,"dtype":"f32","bytes":16777216,"hostreduce_busbw_gbps":7.0,"nccl_busbw_gbps":5.7},
            {"k":7,"dtype":"f32","bytes":268435456,"hostreduce_busbw_gbps":10.3,"nccl_busbw_gbps":5.9}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn only_supported_types_and_operations_take_the_host_path() {
        let t = table();
        assert_eq!(route(Mode::On, &t, 2, F32, SUM, 10, false), Some((DType::F32, Op::Sum, 40)));
        assert_eq!(route(Mode::On, &t, 2, BF16, AVG, 10, false), Some((DType::Bf16, Op::Avg, 20)));
        assert_eq!(route(Mode::On, &t, 2, F16, SUM, 10, false), Some((DType::F16, Op::Sum, 20)));
        for other in [0, 1, 2, 3, 4, 5, 8, 10, 11] {
            assert_eq!(route(Mode::On, &t, 2, other, SUM, 10, false), None, "datatype {other}");
        }
        for other in [1, 2, 3, 5, 1000] {
            assert_eq!(route(Mode::On, &t, 2, F32, other, 10, false), None, "op {other} (prod, max, min, premulsum...)");
        }
        assert_eq!(route(Mode::On, &t, 2, F32, SUM, 0, false), None, "empty");
        assert_eq!(route(Mode::On, &t, 2, F32, SUM, 10, true), None, "inside a group");
        assert_eq!(route(Mode::On, &t, 2, F32, SUM, usize::MAX, false), None, "size overflow");
        assert_eq!(route(Mode::Off, &t, 2, F32, SUM, 10, false), None);
    }

    #[test]
    fn auto_follows_the_table() {
        let t = table();
        assert_eq!(route(Mode::Auto, &t, 7, F32, SUM, 64 * M / 4, false), Some((DType::F32, Op::Sum, 64 * M)));
        assert_eq!(route(Mode::Auto, &t, 7, F32, SUM, 4 * M / 4, false), None, "below the measured range");
        assert_eq!(route(Mode::Auto, &t, 4, F32, SUM, 64 * M / 4, false), None, "k not measured");
        assert_eq!(route(Mode::Auto, &t, 7, BF16, SUM, 64 * M / 2, false), None, "type not measured");
        assert!(route(Mode::On, &t, 4, F32, SUM, 4 * M / 4, false).is_some(), "on ignores the table");
    }
}
