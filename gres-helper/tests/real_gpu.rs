//! Read-only checks against the real NVML of a GPU machine. Ignored by default; run them there
//! with `cargo test -p flexmig-gres-helper --test real_gpu -- --ignored`. They never call
//! `apply`: the machine's MIG mode must stay as it is. FLEXMIG_HELPER names the helper to run
//! where this test binary was built elsewhere (tests/gpu/prepare-slurm-job.sh carries both).

use std::process::Command;

fn helper(args: &[&str]) -> (i32, String, String) {
    let bin = std::env::var_os("FLEXMIG_HELPER").unwrap_or_else(|| env!("CARGO_BIN_EXE_flexmig-gres-helper").into());
    eprintln!("real_gpu: running {}", std::path::Path::new(&bin).display());
    let o = Command::new(bin).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver"]
fn plan_from_live_nvml_matches_the_recorded_table() {
    let (code, out, err) = helper(&["plan", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for g in v["gpus"].as_array().unwrap() {
        let model = g["model"].as_str().unwrap();
        let (code, recorded, _) = helper(&["plan", "--model", model, "--json"]);
        if code == 0 {
            let r: serde_json::Value = serde_json::from_str(&recorded).unwrap();
            assert_eq!(g["instances"], r["instances"], "live NVML and the recorded {model} table disagree");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver"]
fn export_reads_the_live_node() {
    let (code, out, err) = helper(&["export"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(!v["gpus"].as_array().unwrap().is_empty());
}
