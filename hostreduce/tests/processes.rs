//! Ranks as separate processes (the hostreduce-sim-rank binary), as they are in a job: the
//! results, the segment's cleanup, and a peer killed with SIGKILL in the middle of a call.
mod common;
use common::{leftovers, unique_path};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hostreduce-sim-rank");

fn spawn(path: &Path, rank: usize, k: usize, calls: usize, mode: &str) -> Child {
    Command::new(BIN)
        .args([path.to_str().unwrap(), &rank.to_string(), &k.to_string(), "8192", "3", "2", &calls.to_string(), mode])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting hostreduce-sim-rank")
}

/// Waits for a child with a deadline; kills it when it overstays. Returns (exit code, stdout).
fn finish(mut c: Child, deadline: Instant) -> (Option<i32>, String) {
    while c.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            c.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = c.wait().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(c.stdout.as_mut().unwrap(), &mut out).unwrap();
    (status.code(), out)
}

#[test]
fn four_processes_reduce_exactly_and_leave_nothing() {
    let path = unique_path("proc");
    let kids: Vec<_> = (0..4).map(|r| spawn(&path, r, 4, 30, "ok")).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for (r, c) in kids.into_iter().enumerate() {
        let (code, out) = finish(c, deadline);
        assert_eq!(code, Some(0), "rank {r}: {out}");
        assert!(out.contains("30 calls checked"), "rank {r}: {out}");
    }
    assert!(leftovers(&path).is_empty(), "{:?}", leftovers(&path));
}

#[test]
fn a_peer_killed_mid_call_fails_the_others_within_seconds() {
    let path = unique_path("kill");
    let mut victim = spawn(&path, 2, 3, 4, "stall");
    let survivors: Vec<_> = (0..2).map(|r| spawn(&path, r, 3, 4, "expect-death")).collect();
    // The victim has done its 4 calls and stalls; the survivors go on into a 5th it never joins.
    let mut line = String::new();
    BufReader::new(victim.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "stalled");
    let killed = Instant::now();
    victim.kill().unwrap(); // SIGKILL: no handler, no cleanup of its own
    victim.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    for (r, c) in survivors.into_iter().enumerate() {
        let (code, out) = finish(c, deadline);
        assert_eq!(code, Some(0), "rank {r}: {out}");
        assert!(out.contains("rank 2 died"), "rank {r}: {out}");
    }
    assert!(killed.elapsed() < Duration::from_secs(5), "dead peer noticed only after {:?}", killed.elapsed());
    assert!(leftovers(&path).is_empty(), "{:?}", leftovers(&path));
}

#[test]
fn a_peer_that_dies_before_attaching_leaves_nothing() {
    // Rank 2 never starts: rank 0 gives up on it and removes the name; rank 1 finds it missing.
    let path = unique_path("early");
    let kids: Vec<_> = (0..2).map(|r| spawn(&path, r, 3, 1, "ok")).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    for (r, c) in kids.into_iter().enumerate() {
        let (code, out) = finish(c, deadline);
        assert_eq!(code, Some(5), "rank {r}: {out}");
        assert!(out.contains("setup failed"), "rank {r}: {out}");
    }
    assert!(leftovers(&path).is_empty(), "{:?}", leftovers(&path));
}
