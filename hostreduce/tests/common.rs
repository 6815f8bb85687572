//! Helpers shared by the integration tests: unique segment names, and leftover checks.
#![allow(dead_code)]
use flexmig_hostreduce::ffi::shm::segment_path;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// The directory segments live in: /dev/shm where it exists (as in production), else the temp dir.
pub fn shm_dir() -> PathBuf {
    let d = Path::new("/dev/shm");
    if d.is_dir() {
        d.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A segment name no other test (or test process) uses: this process's id as the job, a counter
/// as the step.
pub fn unique_path(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    segment_path(&shm_dir(), &format!("test{}", std::process::id()), &format!("{tag}{n}"), 0x1234_5678_9abc_def0 ^ n)
}

/// Files in the segment directory whose names start like `path`'s (the segment or a temporary
/// file of its creation): a test must leave none.
pub fn leftovers(path: &Path) -> Vec<PathBuf> {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&name))
        .collect()
}

/// libflexmig_hostreduce.so of this source, in this test's target/<profile>/ (beside deps/).
/// `cargo test` builds the library only as the rlib the tests link, so the shared library is built
/// here (a no-op when it is current), lest a stale one be tested.
pub fn library() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe.parent().unwrap().parent().unwrap();
            let target = profile_dir.parent().unwrap();
            let mut cargo = Command::new(env!("CARGO"));
            cargo.args(["build", "--quiet", "-p", "flexmig-hostreduce", "--lib", "--target-dir"]).arg(target);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cargo.arg("--release");
            }
            assert!(cargo.status().unwrap().success(), "building libflexmig_hostreduce.so");
            let lib = profile_dir.join("libflexmig_hostreduce.so");
            assert!(lib.exists(), "{} not built", lib.display());
            lib
        })
        .clone()
}

pub fn cc(dir: &Path, args: &[&str]) {
    let st = Command::new("cc").current_dir(dir).args(args).status().expect("a C compiler (cc)");
    assert!(st.success(), "cc {args:?}");
}
