//! The preloaded library end to end without a GPU. Each rank is a process running
//! tests/fake/rank.c, an application that calls NCCL as PyTorch does, with the library preloaded
//! in front of a stand-in NCCL and a stand-in CUDA driver (tests/fake/: device memory is host
//! memory, stream operations run at once and in order, collectives go through files). What only
//! the GPU machine shows (copy engines, concurrency, speed) is bench/hostreduce.sh's; this is the
//! rest of the interposer: the decision at creation, which calls take the host path, their bytes,
//! teardown, a dead peer and ranks whose calls differ.
mod common;
use common::{cc, library};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The stand-in libcuda.so.1 and libnccl.so.2 and the rank program, built once per test binary
/// beside it (target/<profile>/fake-cuda-nccl/).
fn fakes() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake");
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap().join("fake-cuda-nccl");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["cuda.c", "nccl.c", "rank.c"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        cc(&dir, &["-O1", "-Wall", "-Werror", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", "libcuda.so.1", "cuda.c"]);
        cc(&dir, &["-O1", "-Wall", "-Werror", "-shared", "-fPIC", "-Wl,-soname,libnccl.so.2", "-o", "libnccl.so.2", "nccl.c"]);
        cc(&dir, &["-O1", "-Wall", "-Werror", "-o", "rank", "rank.c", "-L.", "-l:libnccl.so.2", "-l:libcuda.so.1", "-Wl,-rpath,$ORIGIN"]);
        dir
    })
}

struct Rank {
    code: Option<i32>,
    out: String,
    err: String,
}

impl Rank {
    /// (rc, ok) of each call, in order.
    fn calls(&self) -> Vec<(i32, bool)> {
        self.out
            .lines()
            .filter_map(|l| l.strip_prefix("CALL "))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[1].trim_start_matches("rc=").parse().unwrap(), f[2] == "ok=1")
            })
            .collect()
    }
}

/// Runs `k` ranks making the calls of `calls(rank)` with `env` and `env_of(rank)` set, and returns
/// each rank's outcome once all have ended (failing the test after 90 s). The segments go to a
/// directory of the job's own, which the caller gets to check for leftovers.
fn job(
    k: usize,
    calls: impl Fn(usize) -> String,
    env: &[(&str, &str)],
    env_of: impl Fn(usize) -> Vec<(String, String)>,
) -> (Vec<Rank>, tempfile::TempDir) {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = tempfile::tempdir().unwrap();
    for sub in ["nccl", "shm"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let id = format!("{:016x}{:016x}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let fake = fakes();
    let mut children = Vec::new();
    for rank in 0..k {
        let mut cmd = Command::new(fake.join("rank"));
        for (key, _) in std::env::vars() {
            if key.starts_with("FLEXMIG_") || key.starts_with("NCCL_") || key.starts_with("FAKE_") || key == "CUDA_LAUNCH_BLOCKING" {
                cmd.env_remove(key);
            }
        }
        cmd.env("LD_PRELOAD", library())
            .env("LD_LIBRARY_PATH", fake)
            .env("RANK", rank.to_string())
            .env("NRANKS", k.to_string())
            .env("FAKE_ID", &id)
            .env("FAKE_NCCL_DIR", dir.path().join("nccl"))
            .env("FLEXMIG_HOSTREDUCE_SHM_DIR", dir.path().join("shm"))
            .env("FLEXMIG_HOSTREDUCE_DEBUG", "1")
            .env("TEST_CALLS", calls(rank))
            .envs(env.iter().map(|&(a, b)| (a, b)))
            .envs(env_of(rank))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push(cmd.spawn().unwrap());
    }
    let t0 = Instant::now();
    while children.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        if t0.elapsed() > Duration::from_secs(90) {
            for c in &mut children {
                let _ = c.kill();
            }
            panic!("the ranks did not end within 90 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ranks = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            Rank { code: o.status.code(), out: String::from_utf8_lossy(&o.stdout).into(), err: String::from_utf8_lossy(&o.stderr).into() }
        })
        .collect();
    (ranks, dir)
}

fn same(calls: &str) -> impl Fn(usize) -> String + '_ {
    move |_| calls.to_string()
}

fn none(_: usize) -> Vec<(String, String)> {
    vec![]
}

/// `key=value` in the environment of `rank` alone.
fn only(rank: usize, key: &'static str, value: &'static str) -> impl Fn(usize) -> Vec<(String, String)> {
    move |r| if r == rank { vec![(key.to_string(), value.to_string())] } else { vec![] }
}

fn shm_files(dir: &tempfile::TempDir) -> Vec<String> {
    std::fs::read_dir(dir.path().join("shm")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// 64 KiB slots: calls of a few hundred KiB take several chunks, and the ring of 4 slots wraps
/// many times over the calls.
const SMALL_SLOTS: (&str, &str) = ("FLEXMIG_HOSTREDUCE_CHUNK", "65536");

#[test]
fn the_host_path_takes_what_it_supports_and_gets_every_byte_right() {
    // Host path: fp32, bf16 and fp16, sum and average, one element, out of place. NCCL: fp64,
    // int32, and a call inside ncclGroupStart/End.
    let calls = "f32:sum:100000,f32:avg:100000,bf16:sum:30001,f16:avg:7777,f32:sum:1,f32:sum:250000:oop,f64:sum:1000,i32:sum:1000,f32:sum:1000:group";
    let (ranks, dir) = job(3, same(calls), &[("FLEXMIG_HOSTREDUCE", "on"), SMALL_SLOTS], none);
    for (r, o) in ranks.iter().enumerate() {
        assert_eq!(o.code, Some(0), "rank {r}: {}{}", o.out, o.err);
        assert_eq!(o.calls(), vec![(0, true); 9], "rank {r}: {}{}", o.out, o.err);
        assert!(o.err.contains(&format!("rank {r}/3 comm")) && o.err.contains("path=hostreduce (3 ranks on this node"), "{}", o.err);
        assert!(o.err.contains("6 all-reduces on the host path, 3 through NCCL"), "rank {r}: {}", o.err);
        assert!(o.out.contains("ASYNC 0\nDONE"), "{}", o.out);
    }
    assert_eq!(shm_files(&dir), Vec::<String>::new(), "no segment left behind");
}

/// Two ranks whose both calls NCCL makes, right, with `says` in every rank's log.
fn all_through_nccl(env: &[(&str, &str)], env_of: impl Fn(usize) -> Vec<(String, String)>, says: &str) {
    let (ranks, _d) = job(2, same("f32:sum:5000,f32:sum:5000"), env, env_of);
    for o in &ranks {
        assert_eq!(o.calls(), vec![(0, true); 2], "{}{}", o.out, o.err);
        assert!(o.err.contains(says), "{says:?} not in: {}", o.err);
    }
}

#[test]
fn off_a_captured_stream_and_launch_blocking_leave_the_calls_to_nccl() {
    all_through_nccl(&[("FLEXMIG_HOSTREDUCE", "off")], none, "path=nccl (FLEXMIG_HOSTREDUCE=off)");
    // A stream being captured into a CUDA graph: the host path is set up, each call goes to NCCL.
    all_through_nccl(&[("FLEXMIG_HOSTREDUCE", "on"), ("FAKE_CUDA_CAPTURING", "1")], none, "0 all-reduces on the host path, 2 through NCCL");
    // CUDA_LAUNCH_BLOCKING=1 on one rank: every rank's communicator stays with NCCL.
    all_through_nccl(&[("FLEXMIG_HOSTREDUCE", "on")], only(1, "CUDA_LAUNCH_BLOCKING", "1"), "path=nccl (CUDA_LAUNCH_BLOCKING=1 on rank 1)");
    // No current CUDA context when the communicator is made: NCCL.
    all_through_nccl(&[("FLEXMIG_HOSTREDUCE", "on"), ("FAKE_CUDA_NO_CONTEXT", "1")], none, "path=nccl (no current CUDA context)");
}

#[test]
fn auto_takes_the_host_path_only_inside_the_table_s_winning_sizes() {
    // 2 ranks, fp32: a loss at 4 KiB, wins at 64 and 256 KiB.
    let point = |bytes: u64, host: f64| {
        format!(r#"{{"k": 2, "dtype": "f32", "bytes": {bytes}, "hostreduce_busbw_gbps": {host}, "nccl_busbw_gbps": 10.0}}"#)
    };
    let table = format!(
        r#"{{"version": 2, "source": "test", "machine": "test", "min_speedup": 1.1, "floor": 0.95, "points": [{}, {}, {}]}}"#,
        point(4096, 5.0),
        point(65536, 12.0),
        point(262144, 13.0)
    );
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("table.json");
    std::fs::write(&path, table).unwrap();
    // 1024 elements = 4 KiB (NCCL), 32768 = 128 KiB (host), 131072 = 512 KiB (beyond the table: NCCL).
    let calls = "f32:sum:1024,f32:sum:32768,f32:sum:131072,f32:sum:32768";
    let table_env = path.to_str().unwrap();
    let (ranks, _d) = job(2, same(calls), &[("FLEXMIG_HOSTREDUCE", "auto"), ("FLEXMIG_HOSTREDUCE_TABLE", table_env), SMALL_SLOTS], none);
    for o in &ranks {
        assert_eq!(o.calls(), vec![(0, true); 4], "{}{}", o.out, o.err);
        assert!(o.err.contains("auto, table"), "{}", o.err);
        assert!(o.err.contains("2 all-reduces on the host path, 2 through NCCL"), "{}", o.err);
    }
}

#[test]
fn a_dead_peer_fails_the_others_within_seconds_and_leaves_no_segment() {
    let calls = "f32:sum:200000,f32:sum:200000,f32:sum:200000";
    // Rank 2 kills itself before its second call.
    let die = [("FLEXMIG_HOSTREDUCE", "on"), SMALL_SLOTS, ("KILL_RANK", "2"), ("KILL_BEFORE", "1")];
    let t0 = Instant::now();
    let (ranks, dir) = job(3, same(calls), &die, none);
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert_eq!(ranks[2].code, None, "rank 2 was killed: {}", ranks[2].err);
    for o in &ranks[..2] {
        let c = o.calls();
        assert_eq!(c.len(), 3, "{}{}", o.out, o.err);
        assert_eq!(c[0], (0, true), "before the death: {}", o.err);
        // The call the dead rank never joined may end either way; the next is refused.
        assert_eq!(c[2].0, 6, "ncclRemoteError after the death: {}{}", o.out, o.err);
        assert!(o.err.contains("rank 2 died or left"), "{}", o.err);
        // What PyTorch's watchdog polls: the communicator reports the error by itself.
        assert!(o.out.contains("ASYNC 6"), "{}", o.out);
        assert_eq!(o.code, Some(0), "{}", o.err);
    }
    assert_eq!(shm_files(&dir), Vec::<String>::new());
}

#[test]
fn a_call_the_others_never_make_ends_once_they_have_left() {
    // Rank 1 makes a call more; ranks 0 and 2 destroy their communicator instead of joining it.
    let calls = |r: usize| if r == 1 { "f32:sum:50000,f32:sum:50000".to_string() } else { "f32:sum:50000".to_string() };
    let t0 = Instant::now();
    let (ranks, dir) = job(3, calls, &[("FLEXMIG_HOSTREDUCE", "on"), SMALL_SLOTS], none);
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    for o in &ranks {
        assert_eq!(o.code, Some(0), "{}{}", o.out, o.err);
        assert_eq!(o.calls()[0], (0, true), "{}{}", o.out, o.err);
    }
    assert_eq!(ranks[1].calls().len(), 2);
    assert!(ranks[1].out.contains("ASYNC 6"), "the host path knows its peers left: {}{}", ranks[1].out, ranks[1].err);
    assert_eq!(shm_files(&dir), Vec::<String>::new());
}

#[test]
fn ranks_making_different_calls_abort_with_a_message_instead_of_hanging() {
    let calls = |r: usize| if r == 1 { "f32:sum:3000,f32:sum:1000".to_string() } else { "f32:sum:1000,f32:sum:1000".to_string() };
    let (ranks, _d) = job(3, calls, &[("FLEXMIG_HOSTREDUCE", "on"), SMALL_SLOTS], none);
    let all_err: String = ranks.iter().map(|o| o.err.as_str()).collect();
    assert!(all_err.contains("every rank of a communicator must make the same calls"), "{all_err}");
    assert!(all_err.contains("rank 1 called all-reduce of"), "the odd rank is named: {all_err}");
    for o in &ranks {
        let c = o.calls();
        assert_eq!(c.len(), 2, "{}{}", o.out, o.err);
        assert_eq!(c[1].0, 6, "the next call is refused: {}{}", o.out, o.err);
    }
}

/// The segment each "path=hostreduce" line of a rank names, in order.
fn segments(err: &str) -> Vec<String> {
    err.lines()
        .filter(|l| l.contains("path=hostreduce"))
        .filter_map(|l| l.split("segment ").nth(1))
        .map(|s| s.split(',').next().unwrap().to_string())
        .collect()
}

#[test]
fn communicators_split_from_one_get_the_host_path_each_with_a_segment_of_its_own() {
    // 4 ranks split by rank % 2 into {0, 2} and {1, 3}; then the parent again.
    let split = [("SPLIT", "1"), ("PARENT_CALLS", "f32:sum:3000"), ("FLEXMIG_HOSTREDUCE", "on"), SMALL_SLOTS];
    let (ranks, dir) = job(4, same("f32:sum:100000,bf16:avg:5000"), &split, none);
    for (r, o) in ranks.iter().enumerate() {
        assert_eq!(o.calls(), vec![(0, true); 3], "rank {r}: {}{}", o.out, o.err);
        assert!(o.err.contains(&format!("rank {r}/4 comm")) && o.err.contains("path=hostreduce (4 ranks"), "{}", o.err);
        assert!(o.err.contains(&format!("rank {}/2 comm", r / 2)) && o.err.contains("path=hostreduce (2 ranks"), "{}", o.err);
        assert_eq!(segments(&o.err).len(), 2, "{}", o.err);
    }
    let seg = |r: usize| segments(&ranks[r].err);
    // Parent first, then the child: one parent segment, one per child, the children's apart.
    assert!((0..4).all(|r| seg(r)[0] == seg(0)[0]));
    assert_eq!(seg(0)[1], seg(2)[1]);
    assert_eq!(seg(1)[1], seg(3)[1]);
    assert_ne!(seg(0)[1], seg(1)[1]);
    assert!(seg(0)[1] != seg(0)[0] && seg(1)[1] != seg(0)[0]);
    assert_eq!(shm_files(&dir), Vec::<String>::new());

    // A rank without a color (rank 1) takes no part: the child is {0, 2}; the parent still works
    // for all three.
    let nocolor = [&split[..], &[("NOCOLOR_RANK", "1")]].concat();
    let (ranks, _d) = job(3, same("f32:sum:20000"), &nocolor, none);
    assert!(ranks[1].out.contains("NOCOLOR"), "{}", ranks[1].out);
    assert_eq!(ranks[1].calls(), vec![(0, true)], "{}{}", ranks[1].out, ranks[1].err);
    for o in [&ranks[0], &ranks[2]] {
        assert_eq!(o.calls(), vec![(0, true); 2], "{}{}", o.out, o.err);
        assert!(o.err.contains("path=hostreduce (2 ranks"), "{}", o.err);
    }
}
