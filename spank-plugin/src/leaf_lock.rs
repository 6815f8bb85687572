//! Leaf locks: one exclusive flock per MIG leaf for as long as the task bound to it lives, so
//! two tasks can never share a leaf, even when Slurm lets two steps share GRES (`--overlap`).
//!
//! Root prepares `<lock_dir>/<MIG uuid>.lock` (in slurm_spank_task_init_privileged); the
//! task, as the user, opens it read-only and takes `flock(LOCK_EX | LOCK_NB)`. The descriptor
//! is left open across exec (no FD_CLOEXEC), so the lock is held until the task and everything
//! it started have exited; Slurm ends those with the step.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::IntoRawFd;
use std::path::{Path, PathBuf};

fn lock_path(dir: &Path, uuid: &str) -> PathBuf {
    dir.join(format!("{uuid}.lock"))
}

/// Creates the lock directory (0755) and one lock file (0644) per leaf where missing.
/// Runs as root; users can open the files but not create, remove or chmod them.
///
/// # Errors
/// I/O errors, naming the path.
pub fn prepare<'a>(dir: &Path, uuids: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    let ctx = |p: &Path, e: io::Error| format!("flexmig: preparing leaf lock {}: {e}", p.display());
    if !dir.is_dir() {
        fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(|e| ctx(dir, e))?;
    }
    for uuid in uuids {
        let p = lock_path(dir, uuid);
        if !p.exists() {
            let f = fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o644).open(&p).map_err(|e| ctx(&p, e))?;
            f.set_permissions(fs::Permissions::from_mode(0o644)).map_err(|e| ctx(&p, e))?;
        }
    }
    Ok(())
}

/// Takes the exclusive lock of one leaf for the rest of this process's life and its exec'd
/// successors. Returns the descriptor, deliberately leaked.
///
/// # Errors
/// The leaf is locked by another task, or the lock file cannot be opened.
pub fn lock(dir: &Path, uuid: &str) -> Result<i32, String> {
    let p = lock_path(dir, uuid);
    let f = fs::OpenOptions::new().read(true).open(&p).map_err(|e| {
        format!(
            "flexmig: cannot open the lock of MIG leaf {uuid} ({}): {e}; the lock directory is made by slurmstepd as root \
             (plugstack argument lock_dir=), check that it exists and is readable",
            p.display()
        )
    })?;
    let fd = f.into_raw_fd();
    // SAFETY: fd is a valid open descriptor we own.
    let rc = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // SAFETY: closing the descriptor we own and will not use again.
        unsafe { libc::close(fd) };
        return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            format!(
                "flexmig: MIG leaf {uuid} is already bound to another running flexmig task on this node \
                 (a step started with --overlap, or a step without --gres sharing the job's leaves?); \
                 give each concurrent step its own leaves (srun --exact --gres=mig:N ...)"
            )
        } else {
            format!("flexmig: cannot lock MIG leaf {uuid} ({}): {err}", p.display())
        });
    }
    // Keep it across exec so the task itself holds the lock.
    // SAFETY: fcntl on our own valid descriptor.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_of_a_leaf_is_refused_until_the_first_is_released() {
        let dir = std::env::temp_dir().join(format!("flexmig-locks-{}", std::process::id()));
        prepare(&dir, ["MIG-a", "MIG-b"]).unwrap();
        assert_eq!(fs::metadata(lock_path(&dir, "MIG-a")).unwrap().permissions().mode() & 0o777, 0o644);
        let fd = lock(&dir, "MIG-a").unwrap();
        // flock locks belong to the open file description: a second open conflicts even in
        // the same process, as it would in another task.
        let e = lock(&dir, "MIG-a").unwrap_err();
        assert!(e.contains("already bound") && e.contains("--overlap"), "{e}");
        let fd_b = lock(&dir, "MIG-b").unwrap();
        // SAFETY: closing descriptors this test owns.
        unsafe {
            libc::close(fd);
            libc::close(fd_b);
        }
        let fd = lock(&dir, "MIG-a").unwrap();
        // SAFETY: as above.
        unsafe { libc::close(fd) };
        assert!(lock(&dir, "MIG-missing").unwrap_err().contains("cannot open the lock"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
