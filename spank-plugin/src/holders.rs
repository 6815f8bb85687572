//! Who holds which leaf, for people and monitoring: the task's holder record
//! (`leaf_model::holders`) and dcgm-exporter's job-mapping files. Never used for locking.
//!
//! Root creates the files in directories of its own (task_init_privileged) and keeps them open;
//! the task fills them in through those descriptors once it has locked its leaves, before the
//! user's program runs (the descriptors close at exec, so the program cannot change them); root
//! removes the record and empties the mapping files when the task ends (task_exit).

use std::io::Read as _;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use leaf_model::holders::{self, Holder};
use leaf_model::Inventory;

use crate::error::{Error, Result};
use crate::ffi::sys;
use crate::trusted_fs::{self, Missing};

/// The files a task writes once it holds its leaves.
#[derive(Debug, Default)]
pub struct Records {
    holder: Option<OwnedFd>,
    /// (leaf uuid, its dcgm-exporter mapping file)
    dcgm: Vec<(String, OwnedFd)>,
}

/// Opens (creating) `name` in the checked directory `dir`: a regular file of root's, 0644.
fn open_record(dir: &Path, missing: Missing, name: &str, what: &str) -> Result<OwnedFd> {
    let d = trusted_fs::open_dir(dir, missing).map_err(|e| Error::node(format!("{what}: {e}")))?;
    let path = d.path.join(name);
    let cname = sys::c_name(name.as_ref()).map_err(|e| Error::node(format!("{what} {}: {e}", path.display())))?;
    let fd =
        sys::create_file_at(d.fd.as_fd(), &cname, 0o644).map_err(|e| Error::node(format!("cannot open {what} {}: {e}", path.display())))?;
    let st = sys::fstat(fd.as_fd()).map_err(|e| Error::node(format!("{what} {}: {e}", path.display())))?;
    trusted_fs::trusted_file(&path, &st).map_err(|e| Error::node(format!("{what}: {e}")))?;
    Ok(fd)
}

/// Root's part: the task's record and the mapping files of the leaves it may bind.
///
/// # Errors
/// A directory or file root cannot trust, or I/O.
pub fn open(
    holders_dir: &Path,
    dcgm_dir: Option<&Path>,
    (job, step, task): (u32, u32, u32),
    candidates: &[String],
    inv: &Inventory,
) -> Result<Records> {
    let holder = Some(open_record(holders_dir, Missing::CreateReadable, &holders::file_name(job, step, task), "the holder record")?);
    let mut dcgm = Vec::new();
    if let Some(dir) = dcgm_dir {
        for uuid in candidates {
            let Some(leaf) = inv.leaves.iter().find(|l| &l.uuid == uuid) else { continue };
            // DCGM names MIG instances by GPU and GPU instance id; emulated leaves have none.
            if let Some(gi) = leaf.gpu_instance {
                dcgm.push((
                    uuid.clone(),
                    open_record(dir, Missing::CreateReadable, &holders::dcgm_file_name(leaf.gpu, gi), "the dcgm job map")?,
                ));
            }
        }
    }
    Ok(Records { holder, dcgm })
}

impl Records {
    /// The task's part, once it holds `holder.leaves`: fills the record in and names the job in
    /// the mapping files of those leaves. The other files close untouched.
    ///
    /// # Errors
    /// I/O.
    pub fn write(self, holder: &Holder) -> Result<()> {
        if let Some(fd) = self.holder {
            let f = std::fs::File::from(fd);
            f.set_len(0)
                .and_then(|()| f.write_all_at(holder.to_toml_string().as_bytes(), 0))
                .map_err(|e| Error::node(format!("writing the holder record: {e}")))?;
        }
        for (uuid, fd) in self.dcgm {
            if holder.leaves.contains(&uuid) {
                let f = std::fs::File::from(fd);
                f.set_len(0)
                    .and_then(|()| f.write_all_at(format!("{}\n", holder.job).as_bytes(), 0))
                    .map_err(|e| Error::node(format!("writing the dcgm job map of {uuid}: {e}")))?;
            }
        }
        Ok(())
    }
}

/// Root's part when the task has ended: removes its record and empties the mapping files that
/// still name its job (a later task may already have taken the leaf over).
///
/// # Errors
/// A directory root cannot trust, or I/O other than a missing file.
pub fn remove(holders_dir: &Path, dcgm_dir: Option<&Path>, (job, step, task): (u32, u32, u32), inv: &Inventory) -> Result<()> {
    let name = holders::file_name(job, step, task);
    let d = match trusted_fs::open_dir(holders_dir, Missing::Fail) {
        Ok(d) => d,
        Err(_) if !holders_dir.exists() => return Ok(()),
        Err(e) => return Err(Error::node(format!("the holder records: {e}"))),
    };
    let cname = sys::c_name(name.as_ref()).map_err(|e| Error::node(e.to_string()))?;
    let mut text = String::new();
    if let Ok(fd) = sys::open_file_at(d.fd.as_fd(), &cname, None) {
        let _ = std::fs::File::from(fd).read_to_string(&mut text);
    }
    match sys::unlink_at(d.fd.as_fd(), &cname) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::node(format!("removing the holder record {}: {e}", d.path.join(&name).display()))),
    }
    let (Some(dir), Ok(holder)) = (dcgm_dir, Holder::parse(&text)) else { return Ok(()) };
    let Ok(dd) = trusted_fs::open_dir(dir, Missing::Fail) else { return Ok(()) };
    for uuid in &holder.leaves {
        let Some(gi) = inv.leaves.iter().find(|l| &l.uuid == uuid).and_then(|l| l.gpu_instance.map(|gi| (l.gpu, gi))) else { continue };
        let Ok(cn) = sys::c_name(holders::dcgm_file_name(gi.0, gi.1).as_ref()) else { continue };
        let Ok(fd) = sys::create_file_at(dd.fd.as_fd(), &cn, 0o644) else { continue };
        let f = std::fs::File::from(fd);
        let mut held = String::new();
        let _ = (&f).read_to_string(&mut held);
        if held.trim() == job.to_string() {
            let _ = f.set_len(0);
        }
    }
    Ok(())
}
