//! The GPU machine's end-to-end runner (tests/gpu/slurm-job.sh, flexmig-gpu-job) in its dry-run
//! mode: no GPU and no torch, but the real Slurm path: emulated leaves of a GPU that is not in MIG
//! mode, the Lua filters turning `--gres=mig:N` into typed requests, the plugin binding each
//! rank, two jobs at once on disjoint leaves.

use std::process::Command;

#[test]
fn the_gpu_job_runs_its_slurm_path_without_a_gpu() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Any loadable library stands in for the host-reduce library here.
    let o = Command::new(env!("CARGO_BIN_EXE_flexmig-gpu-job"))
        .args(["--dry-run", "--steps", "1", "--hostreduce", "/lib/x86_64-linux-gnu/libm.so.6"])
        .current_dir(&repo)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out.lines().last(), Some("PASS"), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
    // mig:4, mig:7, then mig:3 and mig:4 at once, then mig:7 with hostreduce=: 25 ranks reported.
    let rows = out.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains("MIG-e")).count();
    assert_eq!(rows, 4 + 7 + 3 + 4 + 7, "{out}");
    assert!(out.contains("with hostreduce= on the plugstack line"), "{out}");
}
