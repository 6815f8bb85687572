//! One simulated rank as its own process, for the tests of flexmig-hostreduce (tests/processes.rs):
//! sets up the rank's side of a shared segment, runs all-reduces through the simulated streams and
//! checks every byte. Exit codes: 0 done as told, 2 bad arguments, 3 wrong bytes, 4 expected
//! error missing or late, 5 setup failed, 6 a call timed out.
//!
//!   hostreduce-sim-rank PATH RANK RANKS SLOT_BYTES DEPTH THREADS CALLS MODE
//!
//! MODE: `ok` (CALLS calls, then exit), `stall` (CALLS calls, print `stalled`, sleep until killed),
//! `expect-death` (CALLS calls, then one more that must end with a dead-peer error within 5 s).
use flexmig_hostreduce::ffi::shm::Geometry;
use flexmig_hostreduce::pipeline::{AbortReason, HostComm, Settings};
use flexmig_hostreduce::sim::{test_call, test_expected, test_input, SimRank};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SEED: u64 = 0x5eed_f1e0_0000_0001;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 8 {
        eprintln!("usage: hostreduce-sim-rank PATH RANK RANKS SLOT_BYTES DEPTH THREADS CALLS ok|stall|expect-death");
        std::process::exit(2);
    }
    let num = |i: usize| -> usize {
        a[i].parse().unwrap_or_else(|_| {
            eprintln!("argument {} is not a number: {}", i + 1, a[i]);
            std::process::exit(2)
        })
    };
    let (rank, nranks, slot_bytes, depth, threads, calls) = (num(1), num(2), num(3), num(4), num(5), num(6));
    let settings = Settings { geometry: Geometry { nranks, depth, slot_bytes }, threads, ramp: 0 };
    let comm = match HostComm::setup(std::path::Path::new(&a[0]), rank, settings, Duration::from_millis(1500)) {
        Ok(c) => c,
        Err(e) => {
            println!("setup failed: {e}");
            std::process::exit(5);
        }
    };
    let sim = SimRank::new(comm);
    for call in 0..calls {
        let (dtype, op, n) = test_call(call, slot_bytes);
        let recv = Arc::new(Mutex::new(vec![0xeeu8; n * dtype.size()]));
        let done = sim.all_reduce(Arc::new(test_input(SEED, call, rank, dtype, n)), recv.clone(), dtype, op).expect("healthy communicator");
        if !done.wait(Duration::from_secs(20)) {
            println!("call {call} timed out");
            std::process::exit(6);
        }
        if *recv.lock().unwrap() != test_expected(SEED, call, nranks, dtype, op, n) {
            println!("call {call} ({dtype} {op:?} {n} elements): wrong bytes");
            std::process::exit(3);
        }
    }
    match a[7].as_str() {
        "ok" => println!("rank {rank}: {calls} calls checked"),
        "stall" => {
            println!("stalled");
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        "expect-death" => {
            let t0 = Instant::now();
            let (dtype, op, n) = test_call(calls, slot_bytes);
            let recv = Arc::new(Mutex::new(vec![0u8; n * dtype.size()]));
            let done =
                sim.all_reduce(Arc::new(test_input(SEED, calls, rank, dtype, n)), recv, dtype, op).expect("healthy before the peer died");
            let released = done.wait(Duration::from_secs(5));
            let abort = sim.comm.aborted();
            let ms = t0.elapsed().as_millis();
            // The next call is refused at once, naming the dead rank.
            let next = sim.all_reduce(Arc::new(vec![0; 4]), Arc::new(Mutex::new(vec![0; 4])), dtype, op).err();
            match (released, abort, next) {
                (true, Some(x), Some(y)) if x.reason == AbortReason::PeerDied && x == y => {
                    println!("rank {rank}: released after {ms} ms: {x}")
                }
                other => {
                    println!("rank {rank}: no dead-peer error after {ms} ms: {other:?}");
                    std::process::exit(4);
                }
            }
        }
        m => {
            eprintln!("unknown mode {m}");
            std::process::exit(2);
        }
    }
}
