//! The whole pipeline with ranks as threads of this process (each with its own mapping of the
//! segment and its own reducer threads, the streams simulated): byte-exact results, slot reuse
//! over many rounds, calls queued back to back, the segment's name gone once set up, aborts.
mod common;
use common::{leftovers, unique_path};
use flexmig_hostreduce::ffi::shm::{Geometry, Segment, ShmError};
use flexmig_hostreduce::pipeline::{AbortReason, HostComm, Local, Settings, SetupError};
use flexmig_hostreduce::reduce::{reduce_scalar, DType, Op};
use flexmig_hostreduce::sim::{test_call, test_expected, test_input, SimRank};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

const SEED: u64 = 42;
const T: Duration = Duration::from_secs(5);

/// Sets up `k` ranks on threads, queues `calls` all-reduces on each without waiting in between,
/// then checks every rank's every output against the scalar reference.
fn run(k: usize, depth: usize, threads: usize, calls: usize) {
    run_with(k, depth, threads, calls, SimRank::new)
}

fn run_with(k: usize, depth: usize, threads: usize, calls: usize, make: fn(HostComm) -> SimRank) {
    run_reducers(k, depth, threads, calls, make, &|_| threads)
}

/// As [`run_with`], rank r running `reducers(r)` reducer threads.
fn run_reducers(k: usize, depth: usize, threads: usize, calls: usize, make: fn(HostComm) -> SimRank, reducers: &dyn Fn(usize) -> usize) {
    run_local(k, depth, threads, calls, make, &|rank| Local { reducers: reducers(rank), ..Local::default() })
}

/// As [`run_with`], rank r with its own choices `local(r)`.
fn run_local(k: usize, depth: usize, threads: usize, calls: usize, make: fn(HostComm) -> SimRank, local: &dyn Fn(usize) -> Local) {
    run_settings(Settings { geometry: Geometry { nranks: k, depth, slot_bytes: 16384 }, threads, ramp: 0 }, calls, make, local)
}

fn run_settings(settings: Settings, calls: usize, make: fn(HostComm) -> SimRank, local: &dyn Fn(usize) -> Local) {
    let (k, slot_bytes) = (settings.geometry.nranks, settings.geometry.slot_bytes);
    let path = unique_path("pipe");
    let barrier = Arc::new(Barrier::new(k));
    let handles: Vec<_> = (0..k)
        .map(|rank| {
            let (path, barrier) = (path.clone(), barrier.clone());
            let local = local(rank);
            std::thread::spawn(move || {
                let sim = make(HostComm::setup_local(&path, rank, settings, T, local, &mut |_| true).expect("setup"));
                barrier.wait();
                // Every rank is set up: the name is gone, the memory lives on in the mappings.
                assert!(leftovers(&path).is_empty(), "{:?} left after setup", leftovers(&path));
                let mut pending = Vec::new();
                for call in 0..calls {
                    let (dtype, op, n) = test_call(call, slot_bytes);
                    let recv = Arc::new(Mutex::new(vec![0xeeu8; n * dtype.size()]));
                    let send = Arc::new(test_input(SEED, call, rank, dtype, n));
                    pending.push((call, recv.clone(), sim.all_reduce(send, recv, dtype, op).unwrap()));
                }
                for (call, recv, done) in pending {
                    assert!(done.wait(T), "rank {rank} call {call} did not complete");
                    let (dtype, op, n) = test_call(call, slot_bytes);
                    assert!(
                        *recv.lock().unwrap() == test_expected(SEED, call, k, dtype, op, n),
                        "k={k} rank {rank} call {call}: {dtype} {op:?} n={n}: wrong bytes"
                    );
                }
                assert_eq!(sim.comm.aborted(), None);
                // No communicator goes before every rank's last copy up has landed (rank 0's
                // timeline, where kept, is written when its communicator goes).
                barrier.wait();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(leftovers(&path).is_empty());
}

#[test]
fn one_rank_reduces_to_itself() {
    run(1, 2, 1, 24);
}

#[test]
fn two_ranks_depth_two() {
    run(2, 2, 1, 24);
}

#[test]
fn three_ranks_two_threads_each() {
    run(3, 3, 2, 24);
}

#[test]
fn seven_leaves() {
    run(7, 4, 1, 24);
}

#[test]
fn ranks_whose_reducers_do_not_run_are_covered_by_the_others() {
    // Pieces are handed out, not owned: ranks 1 and 2 run no reducer thread at all (as if the
    // scheduler kept them off the CPUs), and rank 0's reduce everything.
    run_reducers(3, 3, 2, 24, SimRank::new, &|r| if r == 0 { 2 } else { 0 });
    run_reducers(7, 4, 1, 24, SimRank::new, &|r| usize::from(r == 6));
}

#[test]
fn both_sides_on_one_queue_still_complete() {
    run_with(3, 2, 1, 24, SimRank::new_one_queue);
    run_with(4, 4, 2, 24, SimRank::new_one_queue);
}

#[test]
fn a_second_segment_of_the_same_name_is_refused() {
    let path = unique_path("dup");
    let g = Geometry { nranks: 2, depth: 2, slot_bytes: 4096 };
    let first = Segment::create(&path, g).unwrap();
    assert!(matches!(Segment::create(&path, g), Err(ShmError::Exists(_))));
    first.unlink();
    assert!(leftovers(&path).is_empty());
}

#[test]
fn a_file_another_user_put_under_the_name_is_never_mapped_and_the_creator_leaves_no_temporary_name() {
    let path = unique_path("squat");
    let g = Geometry { nranks: 2, depth: 2, slot_bytes: 4096 };
    // The name appears only once the segment is complete: nothing else of ours is ever visible.
    let seg = Segment::create(&path, g).unwrap();
    let names = leftovers(&path);
    assert_eq!(names.len(), 1, "only the final name: {names:?}");
    seg.unlink();
    // A file of the right size but not this user's 0600 one is refused by the ranks that open it.
    std::fs::write(&path, vec![0u8; g.total_bytes()]).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let e = Segment::open(&path, g, 1, Duration::from_millis(100)).unwrap_err().to_string();
    assert!(e.contains("not a 0600 file of this user's"), "{e}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_rank_that_never_attaches_leaves_nothing_behind() {
    let path = unique_path("noshow");
    let settings = Settings { geometry: Geometry { nranks: 2, depth: 2, slot_bytes: 4096 }, threads: 1, ramp: 0 };
    let err = HostComm::setup(&path, 0, settings, Duration::from_millis(200)).unwrap_err();
    assert!(matches!(err, SetupError::Shm(ShmError::AttachTimeout { attached: 1, nranks: 2, .. })), "{err}");
    assert!(leftovers(&path).is_empty(), "{:?}", leftovers(&path));
    // and a rank whose rank 0 never came gives up too
    let err = HostComm::setup(&path, 1, settings, Duration::from_millis(100)).unwrap_err();
    assert!(matches!(err, SetupError::Shm(ShmError::NotCreated { .. })), "{err}");
}

#[test]
fn a_segment_of_another_shape_is_refused() {
    let path = unique_path("shape");
    let g = Geometry { nranks: 2, depth: 2, slot_bytes: 4096 };
    let _owner = Segment::create(&path, g).unwrap();
    let other = Geometry { slot_bytes: 8192, ..g };
    assert!(matches!(Segment::open(&path, other, 1, T), Err(ShmError::Mismatch { .. })));
    let other = Geometry { depth: 3, ..g };
    assert!(matches!(Segment::open(&path, other, 1, T), Err(ShmError::Mismatch { .. })));
    _owner.unlink();
}

#[test]
fn bad_geometry_is_refused() {
    for g in [
        Geometry { nranks: 0, depth: 2, slot_bytes: 4096 },
        Geometry { nranks: 65, depth: 2, slot_bytes: 4096 },
        Geometry { nranks: 2, depth: 1, slot_bytes: 4096 },
        Geometry { nranks: 2, depth: 2, slot_bytes: 1000 },
    ] {
        assert!(matches!(Segment::create(&unique_path("bad"), g), Err(ShmError::BadGeometry(_))), "{g:?}");
    }
}

/// A rank that aborts while its peer waits in a call: the peer's streams are released and the
/// peer sees the abort, naming the rank, and its next call is refused.
#[test]
fn abort_releases_a_waiting_peer() {
    let path = unique_path("abort");
    let settings = Settings { geometry: Geometry { nranks: 2, depth: 2, slot_bytes: 4096 }, threads: 1, ramp: 0 };
    let p1 = path.clone();
    let aborter = std::thread::spawn(move || {
        let sim = SimRank::new(HostComm::setup(&p1, 1, settings, T).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        sim.comm.abort(AbortReason::Aborted);
    });
    let sim = SimRank::new(HostComm::setup(&path, 0, settings, T).unwrap());
    let (dtype, op, n) = test_call(12, 4096);
    let recv = Arc::new(Mutex::new(vec![0u8; n * dtype.size()]));
    let done = sim.all_reduce(Arc::new(test_input(SEED, 12, 0, dtype, n)), recv, dtype, op).unwrap();
    assert!(done.wait(T), "streams not released by the peer's abort");
    let a = sim.comm.aborted().expect("abort visible");
    assert_eq!((a.reason, a.rank), (AbortReason::Aborted, 1));
    assert_eq!(sim.all_reduce(Arc::new(vec![0; 4]), Arc::new(Mutex::new(vec![0; 4])), dtype, op).unwrap_err(), a);
    aborter.join().unwrap();
}

#[test]
fn reducer_threads_stay_on_the_cpus_they_are_given() {
    use flexmig_hostreduce::ffi::shm::allowed_cpus;
    let allowed = allowed_cpus();
    assert!(allowed.len() >= 2, "this test needs two CPUs to tell a pinned thread from a free one, has {allowed:?}");
    let cpu = *allowed.last().unwrap();
    let path = unique_path("pin");
    let settings = Settings { geometry: Geometry { nranks: 1, depth: 2, slot_bytes: 4096 }, threads: 1, ramp: 0 };
    let comm =
        HostComm::setup_local(&path, 0, settings, T, Local { reducers: 1, cpus: Some(vec![cpu]), ..Local::default() }, &mut |_| true)
            .unwrap();
    // Reducer threads are named hostreduce-<rank>.<thread>; other tests' rank-0 reducers run free.
    let pinned = || {
        std::fs::read_dir("/proc/self/task").unwrap().flatten().any(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            comm.trim() == "hostreduce-0.0"
                && status.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Cpus_allowed_list:", &cpu.to_string()])
        })
    };
    let t0 = std::time::Instant::now();
    while !pinned() {
        assert!(t0.elapsed() < T, "no reducer thread kept on CPU {cpu}");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(comm);
}

/// Ranks making different calls at the same point (here rank `odd` calls with `its` instead of
/// the others' 4096 f32 elements summed): every rank's call completes (no stream waits forever),
/// the communicator is aborted as a mismatch naming the odd rank (on every rank, whichever
/// rank's reducer saw it first), and the next call is refused.
fn mismatch(odd: usize, its: (DType, Op, usize)) {
    let path = unique_path("mismatch");
    let settings = Settings { geometry: Geometry { nranks: 3, depth: 2, slot_bytes: 16384 }, threads: 1, ramp: 0 };
    let handles: Vec<_> = (0..3)
        .map(|rank| {
            let path = path.clone();
            std::thread::spawn(move || {
                let sim = SimRank::new(HostComm::setup(&path, rank, settings, T).expect("setup"));
                let (dtype, op, n) = if rank == odd { its } else { (DType::F32, Op::Sum, 4096) };
                let recv = Arc::new(Mutex::new(vec![0u8; n * dtype.size()]));
                let done = sim.all_reduce(Arc::new(vec![1u8; n * dtype.size()]), recv, dtype, op).unwrap();
                assert!(done.wait(T), "rank {rank}: a mismatched call left the streams waiting");
                let a = sim.comm.aborted().expect("the mismatch aborts the communicator");
                assert_eq!(a.reason, AbortReason::Mismatch, "rank {rank}");
                assert_eq!(a.rank, odd, "rank {rank}: the abort names the rank whose call differs from the others': {a}");
                assert!(a.to_string().contains("another all-reduce"), "{a}");
                assert_eq!(sim.all_reduce(Arc::new(vec![0; 4]), Arc::new(Mutex::new(vec![0; 4])), DType::F32, Op::Sum).unwrap_err(), a);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(leftovers(&path).is_empty());
}

#[test]
fn ranks_calling_another_size_type_or_operation_abort_instead_of_hanging() {
    mismatch(1, (DType::F32, Op::Sum, 4096 * 5)); // more chunks than the others
    mismatch(2, (DType::F32, Op::Sum, 1024)); // fewer
    mismatch(0, (DType::Bf16, Op::Sum, 8192)); // the same bytes, another type
    mismatch(1, (DType::F32, Op::Avg, 4096)); // another operation
}

#[test]
fn when_rank_0_cannot_make_the_segment_every_rank_gives_up_at_once() {
    // A segment directory that does not exist stands for a full /dev/shm or a memory limit.
    let path = std::env::temp_dir().join(format!("flexmig-no-such-dir-{}", std::process::id())).join("seg");
    let settings = Settings { geometry: Geometry { nranks: 3, depth: 2, slot_bytes: 4096 }, threads: 1, ramp: 0 };
    let said = Arc::new(Mutex::new(Vec::new()));
    let barrier = Arc::new(Barrier::new(3));
    let long = Duration::from_secs(30);
    let t0 = std::time::Instant::now();
    let handles: Vec<_> = (0..3)
        .map(|rank| {
            let (path, said, barrier) = (path.clone(), said.clone(), barrier.clone());
            std::thread::spawn(move || {
                // The exchange among the ranks, as the library does it over NCCL.
                let mut gate = |ok: bool| {
                    said.lock().unwrap().push(ok);
                    barrier.wait();
                    let all = said.lock().unwrap().iter().all(|&b| b);
                    all
                };
                HostComm::setup_local(&path, rank, settings, long, Local { reducers: 1, ..Local::default() }, &mut gate).unwrap_err()
            })
        })
        .collect();
    for (rank, h) in handles.into_iter().enumerate() {
        let e = h.join().unwrap();
        if rank > 0 {
            assert!(matches!(e, SetupError::NotMade), "rank {rank}: {e}");
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "the ranks waited {:?} for a segment that never came", t0.elapsed());
}

#[test]
#[cfg(target_arch = "x86_64")]
fn reducers_made_on_a_thread_that_flushes_denormals_reduce_exactly() {
    // The reducer threads are made on the thread that sets the communicator up (in the library,
    // the application's, inside ncclCommInitRank) and inherit its MXCSR (PyTorch's
    // set_flush_denormal(True) sets FTZ and DAZ); they must reduce in the default environment.
    let (k, slot_bytes, n) = (2, 16384, 3000);
    let path = unique_path("ftz");
    let settings = Settings { geometry: Geometry { nranks: k, depth: 2, slot_bytes }, threads: 1, ramp: 0 };
    // fp32 and bf16 with exponents 0-3: subnormals and the smallest normals, whose sums and
    // averages are subnormal or round
    let input = move |rank: usize, dtype: DType| -> Vec<u8> {
        (0..n as u32)
            .flat_map(|i| {
                let x = (i.wrapping_mul(0x9e37_79b9) ^ (rank as u32).wrapping_mul(0x85eb_ca6b)).rotate_left(7);
                match dtype {
                    DType::F32 => (x & 0x81ff_ffff).to_le_bytes().to_vec(),
                    _ => ((x & 0x81ff) as u16).to_le_bytes().to_vec(),
                }
            })
            .collect()
    };
    let handles: Vec<_> = (0..k)
        .map(|rank| {
            let path = path.clone();
            std::thread::spawn(move || {
                let comm = flexmig_hostreduce::sim::with_mxcsr(flexmig_hostreduce::sim::MXCSR_FLUSH_TRUNCATE, || {
                    HostComm::setup_local(&path, rank, settings, T, Local { reducers: 1, ..Local::default() }, &mut |_| true)
                        .expect("setup")
                });
                let sim = SimRank::new(comm);
                for dtype in [DType::F32, DType::Bf16] {
                    for op in [Op::Sum, Op::Avg] {
                        let ins: Vec<Vec<u8>> = (0..k).map(|r| input(r, dtype)).collect();
                        let refs: Vec<&[u8]> = ins.iter().map(|v| v.as_slice()).collect();
                        let mut want = vec![0u8; n * dtype.size()];
                        reduce_scalar(dtype, op, &refs, &mut want).unwrap();
                        let recv = Arc::new(Mutex::new(vec![0xeeu8; n * dtype.size()]));
                        let done = sim.all_reduce(Arc::new(ins[rank].clone()), recv.clone(), dtype, op).unwrap();
                        assert!(done.wait(T), "rank {rank}: {dtype} {op:?} did not complete");
                        assert!(*recv.lock().unwrap() == want, "rank {rank}: {dtype} {op:?}: not the reference's bytes");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(leftovers(&path).is_empty());
}

#[test]
fn calls_that_ramp_their_chunks_up_and_down_give_every_byte() {
    // With 16 KiB slots and 4 KiB ramps, the multi-slot calls start and end with 4 KiB chunks.
    let settings = Settings { geometry: Geometry { nranks: 3, depth: 3, slot_bytes: 16384 }, threads: 2, ramp: 4096 };
    for call in [12, 18] {
        let (dtype, _, n) = test_call(call, 16384);
        let ramped = flexmig_hostreduce::pipeline::chunk_lengths(n * dtype.size(), 16384, 4096);
        assert!(ramped.len() > flexmig_hostreduce::pipeline::chunk_lengths(n * dtype.size(), 16384, 0).len() && ramped[0] == 4096);
    }
    run_settings(settings, 36, SimRank::new, &|_| Local { reducers: 2, ..Local::default() });
    run_settings(Settings { ramp: 8192, ..settings }, 36, SimRank::new_one_queue, &|_| Local {
        reducers: 2,
        lead: Some(2),
        ..Local::default()
    });
}

#[test]
fn copies_held_to_a_short_lead_still_give_every_byte() {
    // Lead 1: each copy down waits for the round before it; ranks with different leads mix.
    run_local(3, 4, 1, 40, SimRank::new, &|rank| Local { reducers: 1, lead: Some(1 + rank), ..Local::default() });
    run_local(2, 3, 2, 40, SimRank::new_one_queue, &|_| Local { reducers: 2, lead: Some(1), ..Local::default() });
}

#[test]
fn rank_zero_writes_a_timeline_of_every_counter_it_saw_change() {
    let (k, depth, slot_bytes, calls) = (2, 2, 16384, 12);
    let dir = std::env::temp_dir().join(format!("hr-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let settings = Settings { geometry: Geometry { nranks: k, depth, slot_bytes }, threads: 1, ramp: 0 };
    run_settings(settings, calls, SimRank::new, &|_| Local { reducers: 1, trace: Some(dir.clone()), ..Local::default() });
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "one timeline, rank 0's: {files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(format!("geometry {k} {depth} {slot_bytes}").as_str()));
    // Calls: every one, rounds in order, each starting where the last one's chunks ended.
    let mut rounds = 0u64;
    let mut last_value = std::collections::HashMap::new();
    let mut last_t = 0u64;
    let mut starts = 0;
    for l in lines {
        let f: Vec<&str> = l.split(' ').collect();
        if f[0] == "call" {
            let (dtype, _, n) = test_call(starts, slot_bytes);
            let chunks = flexmig_hostreduce::pipeline::chunk_lengths(n * dtype.size(), slot_bytes, 0).len() as u64;
            assert_eq!(f[2].parse::<u64>().unwrap(), rounds, "{l}");
            assert_eq!(f[3].parse::<u64>().unwrap(), chunks, "{l}");
            assert_eq!(f[4].parse::<usize>().unwrap(), n * dtype.size(), "{l}");
            rounds += chunks;
            starts += 1;
            continue;
        }
        let (t, what, slot, rank, v): (u64, &str, usize, usize, u64) =
            (f[0].parse().unwrap(), f[1], f[2].parse().unwrap(), f[3].parse().unwrap(), f[4].parse().unwrap());
        assert!(t >= last_t, "times in order: {l}");
        last_t = t;
        assert!(["A", "R", "C"].contains(&what) && slot < depth && rank < k, "{l}");
        // A counter only grows, and names a round of its own slot.
        let prev = last_value.insert((what.to_string(), slot, rank), v).unwrap_or(0);
        assert!(v > prev && (v - 1) % depth as u64 == slot as u64, "{l} after {prev}");
    }
    assert_eq!(starts, calls);
    // Each slot's counters end at the last round that used it, for every rank.
    for slot in 0..depth {
        let last = (0..rounds).rev().find(|r| r % depth as u64 == slot as u64).unwrap() + 1;
        assert_eq!(last_value[&("R".to_string(), slot, 0)], last, "reduced[{slot}]");
        for rank in 0..k {
            assert_eq!(last_value[&("A".to_string(), slot, rank)], last, "arrived[{slot}][{rank}]");
            assert_eq!(last_value[&("C".to_string(), slot, rank)], last, "consumed[{slot}][{rank}]");
        }
    }
}
