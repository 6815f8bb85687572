//! The fixed `compare --json` interface and the trace inputs, through the real binary.

use serde_json::Value;
use std::process::Command;

fn sim(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flexmig-sim")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn compare(dist: &str, mix: &str, sched: &str, seed: &str) -> Value {
    let (ok, out, err) = sim(&[
        "compare",
        "--gpus",
        "2",
        "--model",
        "A100-40GB",
        "--distribution",
        dist,
        "--mix",
        mix,
        "--scheduler",
        sched,
        "--seed",
        seed,
        "--json",
    ]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not one JSON object ({e}): {out}"))
}

fn check_mode(v: &Value) {
    for key in ["makespan_s", "avg_jct_s", "avg_wait_s", "avg_ext_frag_delay_s", "utilization"] {
        let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {v}"));
        assert!(x >= 0.0, "{key} = {x}");
    }
    assert!(v["reconfigurations"].is_u64());
    assert!(v["utilization"].as_f64().unwrap() <= 1.0);
    assert!(v["avg_jct_s"].as_f64().unwrap() > v["avg_wait_s"].as_f64().unwrap());
    assert!(v["makespan_s"].as_f64().unwrap() >= 600.0);
}

#[test]
fn compare_json_has_fm_dm_and_sm_where_admissible() {
    for sched in ["fifo", "backfill"] {
        // Training holds 6- and 8-slice jobs: Static-MIG cannot run them.
        let v = compare("large", "training", sched, "3");
        check_mode(&v["FM"]);
        check_mode(&v["DM"]);
        assert_eq!(v["FM"]["reconfigurations"], 0);
        assert!(v["SM"].is_null());
        assert!(v["not_admissible"]["SM"].as_str().unwrap().contains("slices"));
        // Inference is 1/2/4 only: all three run.
        let v = compare("small", "inference", sched, "3");
        for m in ["FM", "DM", "SM"] {
            check_mode(&v[m]);
        }
        assert_eq!(v["SM"]["reconfigurations"], 0);
        assert_eq!(v["config"]["scheduler"], sched);
    }
    // The placement rule and the concentration table are named in the config.
    let (ok, out, err) = sim(&["compare", "--placement", "most-free", "--concentration-slowdown", "2:0.1,4:0.3", "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["config"]["placement"], "most-free");
    assert_eq!(v["config"]["concentration_slowdown"]["3"], 0.2);
    assert_eq!(v["config"]["concentration_slowdown"]["7"], 0.525);
    // The same seed gives the same answer; another seed another trace.
    assert_eq!(compare("balanced", "mixed", "fifo", "5"), compare("balanced", "mixed", "fifo", "5"));
    assert_ne!(compare("balanced", "mixed", "fifo", "5")["DM"], compare("balanced", "mixed", "fifo", "6")["DM"]);
}

#[test]
fn generated_csv_trace_reads_back_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, csv, err) = sim(&["generate", "--distribution", "small", "--mix", "mixed", "--seed", "4"]);
    assert!(ok, "{err}");
    let path = dir.path().join("t.csv");
    std::fs::write(&path, &csv).unwrap();
    let (ok, from_file, err) = sim(&["compare", "--trace", path.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let (ok, direct, err) = sim(&["compare", "--distribution", "small", "--mix", "mixed", "--seed", "4", "--json"]);
    assert!(ok, "{err}");
    let (a, b): (Value, Value) = (serde_json::from_str(&from_file).unwrap(), serde_json::from_str(&direct).unwrap());
    assert_eq!(a["FM"], b["FM"]);
    assert_eq!(a["DM"], b["DM"]);
}

#[test]
fn sacct_input_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sacct.txt");
    std::fs::write(
        &path,
        "JobID|Submit|Start|End|AllocTRES|Partition\n\
         1|2024-05-01T10:00:00|2024-05-01T10:00:00|2024-05-01T11:00:00|cpu=4,gres/mig=6|gpu\n\
         2|2024-05-01T10:00:00|2024-05-01T10:00:00|2024-05-01T10:30:00|cpu=1,gres/mig=1|serve\n\
         3|2024-05-01T10:01:00|2024-05-01T11:00:00|2024-05-01T11:20:00|cpu=1,gres/mig:2g.10gb=1|gpu\n",
    )
    .unwrap();
    let (ok, out, err) = sim(&["compare", "--sacct", path.to_str().unwrap(), "--inference-partition", "serve", "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["config"]["jobs"], 3);
    check_mode(&v["FM"]);
    assert!(v["SM"].is_null());
    // A whole-node job (8 GPUs = 56 slices) is wider than the 2-GPU node: FM and DM are
    // null unless it is left out.
    let wide = dir.path().join("wide.txt");
    let text =
        std::fs::read_to_string(&path).unwrap() + "4|2024-05-01T10:02:00|2024-05-01T12:00:00|2024-05-01T13:00:00|cpu=64,gres/gpu=8|gpu\n";
    std::fs::write(&wide, text).unwrap();
    let (ok, out, err) = sim(&["compare", "--sacct", wide.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["FM"].is_null() && v["DM"].is_null());
    assert!(v["not_admissible"]["FM"].as_str().unwrap().contains("job 4"));
    let (ok, out, err) = sim(&["compare", "--sacct", wide.to_str().unwrap(), "--drop-oversized", "--json"]);
    assert!(ok, "{err}");
    assert!(err.contains("left out 1 of 4 jobs"), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["config"]["jobs"], 3);
    check_mode(&v["FM"]);
    check_mode(&v["DM"]);
    let (code, _, err) = status(&["compare", "--model", "Z100", "--json"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Z100") && err.contains("A100-40GB"), "{err}");
}

/// The exit status and output of the simulator.
fn status(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flexmig-sim")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn bad_input_exits_2_as_in_the_helper() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "# flexmig-sim trace v1\nid,submit_s,size,duration_s,kind\nj0,0,0,10,training\n").unwrap();
    let bad = bad.to_str().unwrap();
    let missing = dir.path().join("missing.csv");
    let missing = missing.to_str().unwrap();
    for (args, says) in [
        (&["compare", "--trace", bad][..], "line 3"),
        (&["compare", "--trace", missing], "missing.csv"),
        (&["compare", "--sacct", missing], "missing.csv"),
        (&["compare", "--gpus", "0"], "--gpus must be at least 1"),
        (&["compare", "--load=0"], "--load must be a positive number"),
        (&["generate", "--double-leaf-speedup", "1.5"], "--double-leaf-speedup"),
        (&["compare", "--concentration-slowdown", "2:x"], "`x` is not a number"),
        (&["compare", "--placement", "packed"], "packed"),
        (&["compare", "--no-such-flag"], "--no-such-flag"),
        (&["no-such-command"], "no-such-command"),
    ] {
        let (code, out, err) = status(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    for args in [&["--help"][..], &["compare", "--help"]] {
        let (code, out, err) = status(args);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("Exit status:") && out.contains("2  bad input or an error"), "{args:?}: {out}");
    }
}

#[test]
fn compare_prints_a_table_of_every_mode() {
    let (code, out, err) = status(&["compare", "--distribution", "large", "--mix", "training", "--seed", "3"]);
    assert_eq!(code, 0, "{err}");
    let (ok, json, err) = sim(&["compare", "--distribution", "large", "--mix", "training", "--seed", "3", "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&json).unwrap();
    for m in ["FM", "DM"] {
        let row: Vec<&str> =
            out.lines().find(|l| l.starts_with(m)).unwrap_or_else(|| panic!("no {m} row: {out}")).split_whitespace().collect();
        assert_eq!(row.len(), 8, "{row:?}");
        assert_eq!(row[1], format!("{:.0}", v[m]["makespan_s"].as_f64().unwrap()), "{out}");
        // Both job times side by side: ours with waiting, the paper's without.
        assert_eq!(row[2], format!("{:.0}", v[m]["avg_jct_s"].as_f64().unwrap()), "{out}");
        assert_eq!(row[3], format!("{:.0}", v[m]["avg_run_s"].as_f64().unwrap()), "{out}");
        assert_eq!(row[7], v[m]["reconfigurations"].to_string(), "{out}");
    }
    assert!(out.contains("exec_s: start to end, what the Flex-MIG paper calls JCT"), "{out}");
    let sm = out.lines().find(|l| l.starts_with("SM")).unwrap();
    assert_eq!(sm, format!("SM   not admissible: {}", v["not_admissible"]["SM"].as_str().unwrap()));
}

#[test]
fn a_closed_stdout_ends_the_simulator_quietly_without_a_panic() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;
    let mut fds = [0; 2];
    // SAFETY: pipe() fills the two-element array; the read end is closed once and the write end is
    // owned by exactly one OwnedFd.
    let stdout = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        OwnedFd::from_raw_fd(fds[1])
    };
    let args = ["compare", "--distribution", "small", "--mix", "mixed", "--seed", "4", "--json"];
    let o = Command::new(env!("CARGO_BIN_EXE_flexmig-sim")).args(args).stdout(std::process::Stdio::from(stdout)).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.signal(), Some(libc::SIGPIPE), "{:?}: {err}", o.status);
}
