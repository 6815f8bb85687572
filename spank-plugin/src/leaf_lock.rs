//! Leaf locks: one exclusive flock per MIG leaf for as long as the task bound to it lives, so two
//! tasks never share a leaf, even when Slurm lets two steps share GRES (`--overlap`).
//!
//! Root opens `<lock_dir>/<MIG uuid>.lock` for the leaves of the step (in
//! slurm_spank_task_init_privileged): the directory and files are root's alone (0700, 0600), so no
//! user can open them to hold a leaf without a job or remove one that is held. The task then, as
//! the user, takes `flock(LOCK_EX | LOCK_NB)` on the descriptor of the leaf it binds and keeps it
//! open across exec, so the lock is held until the task and everything it started have exited.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::error::{Error, Result};
use crate::ffi::sys;
use crate::trusted_fs::{self, Missing};

/// Lock files of a step's leaves, opened by root, not yet locked.
#[derive(Debug, Default)]
pub struct OpenLocks(BTreeMap<String, OwnedFd>);

/// Opens (creating where missing) the lock files of `uuids` in `dir`.
///
/// # Errors
/// A lock directory or file root cannot trust (not root's, writable by others, a link), or I/O;
/// the message says what the admin should fix.
pub fn open<'a>(dir: &Path, uuids: impl IntoIterator<Item = &'a str>) -> Result<OpenLocks> {
    let fix = "the lock directory (plugstack argument lock_dir=) must be root's alone; remove what is in the way or name another";
    let d = trusted_fs::open_dir(dir, Missing::Create).map_err(|e| Error::node(format!("leaf locks: {e}; {fix}")))?;
    let mut out = BTreeMap::new();
    for uuid in uuids {
        let name = format!("{uuid}.lock");
        let path = d.path.join(&name);
        let cname = sys::c_name(name.as_ref()).map_err(|e| Error::node(format!("leaf lock {}: {e}", path.display())))?;
        let fd = sys::open_file_at(d.fd.as_fd(), &cname, Some(0o600))
            .map_err(|e| Error::node(format!("cannot open the leaf lock {}: {e}; {fix}", path.display())))?;
        let st = sys::fstat(fd.as_fd()).map_err(|e| Error::node(format!("leaf lock {}: {e}", path.display())))?;
        trusted_fs::trusted_file(&path, &st).map_err(|e| Error::node(format!("leaf lock: {e}; {fix}")))?;
        if st.mode & 0o077 != 0 {
            // Made readable by an earlier release: make it root's alone.
            sys::fchmod(fd.as_fd(), 0o600).map_err(|e| Error::node(format!("leaf lock {}: chmod: {e}", path.display())))?;
        }
        out.insert(uuid.to_string(), fd);
    }
    Ok(OpenLocks(out))
}

impl OpenLocks {
    /// Locks the leaves `uuids` for the rest of this task's life (the descriptors stay open across
    /// exec) and closes the other lock files.
    ///
    /// # Errors
    /// A leaf already bound to another task, a leaf whose lock was not opened, or I/O.
    pub fn hold(self, uuids: &[&str]) -> Result<()> {
        for fd in self.lock(uuids)? {
            sys::keep_across_exec(fd).map_err(|e| Error::node(format!("keeping a leaf lock open: {e}")))?;
        }
        Ok(()) // the remaining descriptors close here
    }

    /// Locks the leaves `uuids` for as long as the returned descriptors stay open in this process
    /// (slurmstepd holds its step's leaves this way: no program of the user's ever has them).
    ///
    /// # Errors
    /// As [`OpenLocks::hold`].
    pub fn hold_here(self, uuids: &[&str]) -> Result<Vec<OwnedFd>> {
        self.lock(uuids)
    }

    fn lock(mut self, uuids: &[&str]) -> Result<Vec<OwnedFd>> {
        let mut held = Vec::new();
        for uuid in uuids {
            let fd = self.0.remove(*uuid).ok_or_else(|| {
                Error::step(format!("MIG leaf {uuid} is not one of the leaves Slurm allocated to this step; refusing to bind it"))
            })?;
            match sys::try_lock_exclusive(fd.as_fd()) {
                Ok(true) => held.push(fd),
                Ok(false) => {
                    return Err(Error::step(format!(
                        "MIG leaf {uuid} is already bound to another running flexmig task on this node \
                         (a step started with --overlap, a step without --gres sharing the job's leaves, \
                         or --gpu-bind=map_gpu naming one GPU twice?); give each concurrent step its own leaves \
                         (srun --exact --gres=mig:N ...)"
                    )))
                }
                Err(e) => return Err(Error::node(format!("cannot lock MIG leaf {uuid}: {e}"))),
            }
        }
        Ok(held)
    }

    /// The leaves whose lock files are open.
    pub fn leaves(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// Removes a step's task lock directory and its lock files (at the end of the step).
///
/// # Errors
/// A directory root cannot trust, or I/O other than a missing file.
pub fn remove_dir(dir: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else { return Ok(()) };
    let d = match trusted_fs::open_dir(dir, Missing::Fail) {
        Ok(d) => d,
        Err(_) if !dir.exists() => return Ok(()),
        Err(e) => return Err(Error::node(format!("leaf locks: {e}"))),
    };
    let entries = std::fs::read_dir(&d.path).map_err(|e| Error::node(format!("{}: {e}", d.path.display())))?;
    for e in entries.flatten() {
        let n = e.file_name();
        if n.to_string_lossy().ends_with(".lock") {
            if let Ok(c) = sys::c_name(&n) {
                let _ = sys::unlink_at(d.fd.as_fd(), &c);
            }
        }
    }
    let p = trusted_fs::open_dir(parent, Missing::Fail).map_err(|e| Error::node(format!("leaf locks: {e}")))?;
    let c = sys::c_name(name).map_err(|e| Error::node(e.to_string()))?;
    match sys::remove_dir_at(p.fd.as_fd(), &c) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::node(format!("removing {}: {e}", dir.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn scratch() -> tempfile::TempDir {
        assert_eq!(sys::euid(), 0, "the lock tests check root ownership: run them as root (scripts/test.sh does)");
        let d = tempfile::Builder::new().prefix("flexmig-locks-").tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn second_lock_of_a_leaf_is_refused_until_the_first_is_released() {
        let d = scratch();
        let dir = d.path().join("locks");
        let first = open(&dir, ["MIG-a", "MIG-b"]).unwrap();
        assert_eq!(first.leaves().collect::<Vec<_>>(), ["MIG-a", "MIG-b"]);
        let m = std::fs::metadata(dir.join("MIG-a.lock")).unwrap();
        assert_eq!((m.mode() & 0o777, m.uid()), (0o600, 0), "root's alone");
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        // flock locks belong to the open file description: a second open conflicts even in the
        // same process, as it would in another task.
        let keep = sys::try_lock_exclusive(first.0["MIG-a"].as_fd()).unwrap();
        assert!(keep);
        let e = open(&dir, ["MIG-a"]).unwrap().hold(&["MIG-a"]).unwrap_err().to_string();
        assert!(e.contains("already bound") && e.contains("--overlap"), "{e}");
        open(&dir, ["MIG-b"]).unwrap().hold(&["MIG-b"]).unwrap();
        drop(first);
        open(&dir, ["MIG-a"]).unwrap().hold(&["MIG-a"]).unwrap();
        let e = open(&dir, ["MIG-a"]).unwrap().hold(&["MIG-c"]).unwrap_err().to_string();
        assert!(e.contains("not one of the leaves Slurm allocated"), "{e}");
    }

    #[test]
    fn refuses_lock_dirs_and_files_a_user_could_touch() {
        let d = scratch();
        // A lock directory a user made first.
        let dir = d.path().join("userlocks");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let e = open(&dir, ["MIG-a"]).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534") && e.contains("lock_dir="), "{e}");
        // A lock file that is not root's, or a link in place of one (dangling or not).
        let dir = d.path().join("locks");
        open(&dir, std::iter::empty()).unwrap();
        std::fs::write(dir.join("MIG-u.lock"), "").unwrap();
        std::os::unix::fs::chown(dir.join("MIG-u.lock"), Some(65534), None).unwrap();
        assert!(open(&dir, ["MIG-u"]).unwrap_err().to_string().contains("owned by uid 65534"));
        symlink(d.path().join("target"), dir.join("MIG-l.lock")).unwrap();
        assert!(open(&dir, ["MIG-l"]).is_err());
        assert!(!d.path().join("target").exists(), "root must not create a link's target");
        // A lock file of an earlier release (0644) becomes root's alone.
        std::fs::write(dir.join("MIG-old.lock"), "").unwrap();
        std::fs::set_permissions(dir.join("MIG-old.lock"), std::fs::Permissions::from_mode(0o644)).unwrap();
        open(&dir, ["MIG-old"]).unwrap();
        assert_eq!(std::fs::metadata(dir.join("MIG-old.lock")).unwrap().mode() & 0o777, 0o600);
    }
}
