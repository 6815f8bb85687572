//! Atomic file replacement: write a temporary file next to the target, fsync it, rename it
//! over the target, fsync the directory. Readers see the old or the new file, never a mix.
//!
//! [`write_set`] does this for files that only make sense together (gres.conf, the slurm.conf
//! node line and the node inventory): every temporary is written and synced before the first
//! rename, so a file that cannot be written leaves all of them as they were. A rename that
//! fails after others succeeded (an immutable target, say) puts the renamed ones back. Only a
//! crash between the renames leaves a mix; the old contents then remain next to the targets as
//! `.<name>.flexmig-old.<pid>.<n>`.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One file of a set: its path, new contents and unix permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileWrite {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

/// Why a set of files was not written.
#[derive(Debug)]
pub struct SetError {
    /// The target file the failure concerns.
    pub path: PathBuf,
    /// What was being done, with the path it was done to.
    pub step: String,
    pub source: io::Error,
    /// Targets that could not be put back after a failed rename, with why (empty: none of the
    /// files was changed).
    pub not_restored: Vec<(PathBuf, io::Error)>,
}

impl fmt::Display for SetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write {}: {}: {}", self.path.display(), self.step, self.source)?;
        if self.not_restored.is_empty() {
            write!(f, "; none of the files was changed")
        } else {
            let list: Vec<String> = self.not_restored.iter().map(|(p, e)| format!("{} ({e})", p.display())).collect();
            write!(f, "; these files could not be put back and hold their new content: {}", list.join(", "))
        }
    }
}

// The message already holds `source`'s: no `source()`, so error chains do not repeat it.
impl std::error::Error for SetError {}

impl From<SetError> for io::Error {
    fn from(e: SetError) -> Self {
        io::Error::new(e.source.kind(), e.to_string())
    }
}

/// Replaces `path` with `contents` atomically, keeping `mode` (unix permission bits).
///
/// # Errors
/// Any I/O error, with the path it concerns in the message.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_set(&[FileWrite { path: path.to_path_buf(), contents: contents.to_vec(), mode }]).map_err(io::Error::from)
}

/// Replaces every file of `files` with its contents, as a set: all or none (see the module
/// documentation for the one exception, a crash between the renames).
///
/// # Errors
/// The first failure, naming its file; a path given twice or naming a directory is refused
/// before anything is written.
pub fn write_set(files: &[FileWrite]) -> Result<(), SetError> {
    write_set_with(files, &mut |from, to| fs::rename(from, to))
}

/// A file on its way in: its temporary, and the link keeping its old content for a rollback.
struct Staged<'a> {
    file: &'a FileWrite,
    dir: PathBuf,
    tmp: PathBuf,
    backup: Option<PathBuf>,
}

fn write_set_with(files: &[FileWrite], rename: &mut dyn FnMut(&Path, &Path) -> io::Result<()>) -> Result<(), SetError> {
    let fail = |f: &FileWrite, step: String, source: io::Error| SetError { path: f.path.clone(), step, source, not_restored: Vec::new() };
    let mut staged: Vec<Staged<'_>> = Vec::new();
    let result = (|| {
        for (n, f) in files.iter().enumerate() {
            let name = f
                .path
                .file_name()
                .ok_or_else(|| fail(f, "checking the path".into(), io::Error::new(io::ErrorKind::InvalidInput, "not a file path")))?;
            if files[..n].iter().any(|o| o.path == f.path) {
                return Err(fail(f, "checking the set".into(), io::Error::new(io::ErrorKind::InvalidInput, "the path is given twice")));
            }
            if fs::symlink_metadata(&f.path).is_ok_and(|m| m.is_dir()) {
                return Err(fail(f, "checking the target".into(), io::Error::new(io::ErrorKind::InvalidInput, "it is a directory")));
            }
            let dir = match f.path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let side = |kind: &str| dir.join(format!(".{}.flexmig-{kind}.{}.{n}", name.to_string_lossy(), std::process::id()));
            let (tmp, backup) = (side("tmp"), side("old"));
            staged.push(Staged { file: f, dir, tmp: tmp.clone(), backup: None });
            write_synced(&tmp, &f.contents, f.mode).map_err(|(step, e)| fail(f, step, e))?;
            if fs::symlink_metadata(&f.path).is_ok() {
                // Keep the old content for a rollback: a hard link costs nothing; where links
                // are not possible, a copy keeps the content.
                let _ = fs::remove_file(&backup);
                fs::hard_link(&f.path, &backup)
                    .or_else(|_| fs::copy(&f.path, &backup).map(drop))
                    .map_err(|e| fail(f, format!("keeping its old content in {}", backup.display()), e))?;
                staged.last_mut().expect("just pushed").backup = Some(backup);
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        for s in &staged {
            let _ = fs::remove_file(&s.tmp);
            if let Some(b) = &s.backup {
                let _ = fs::remove_file(b);
            }
        }
        return Err(e);
    }
    for (k, s) in staged.iter().enumerate() {
        if let Err(e) = rename(&s.tmp, &s.file.path) {
            let mut err = fail(s.file, format!("renaming {} over it", s.tmp.display()), e);
            for done in &staged[..k] {
                let back = match &done.backup {
                    Some(b) => rename(b, &done.file.path),
                    None => fs::remove_file(&done.file.path),
                };
                if let Err(e) = back {
                    err.not_restored.push((done.file.path.clone(), e));
                }
            }
            for rest in &staged[k..] {
                let _ = fs::remove_file(&rest.tmp);
            }
            for s in &staged {
                if let Some(b) = &s.backup {
                    let _ = fs::remove_file(b);
                }
            }
            sync_dirs(&staged);
            return Err(err);
        }
    }
    for s in &staged {
        if let Some(b) = &s.backup {
            let _ = fs::remove_file(b);
        }
    }
    sync_dirs(&staged);
    Ok(())
}

/// Creates `tmp` afresh with `contents` and `mode`, synced to disk; on failure removes it and
/// says which step failed.
fn write_synced(tmp: &Path, contents: &[u8], mode: u32) -> Result<(), (String, io::Error)> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let step = |what: &str| format!("{what} its temporary file {}", tmp.display());
    // A leftover of a crashed run with our pid is ours to replace; create_new then never
    // follows a link planted under the temporary's name.
    let _ = fs::remove_file(tmp);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(tmp).map_err(|e| (step("creating"), e))?;
    let r = (|| {
        f.write_all(contents).map_err(|e| (step("writing"), e))?;
        // The umask may have narrowed the mode given to open.
        f.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| (step("setting the mode of"), e))?;
        f.sync_all().map_err(|e| (step("syncing"), e))
    })();
    if r.is_err() {
        let _ = fs::remove_file(tmp);
    }
    r
}

fn sync_dirs(staged: &[Staged<'_>]) {
    let mut done: Vec<&Path> = Vec::new();
    for s in staged {
        if !done.contains(&s.dir.as_path()) {
            if let Ok(d) = fs::File::open(&s.dir) {
                let _ = d.sync_all();
            }
            done.push(&s.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    fn file(path: &Path, text: &str) -> FileWrite {
        FileWrite { path: path.to_path_buf(), contents: text.as_bytes().to_vec(), mode: 0o644 }
    }

    #[test]
    fn replaces_content_and_sets_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gres.conf");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&p, b"new", 0o644).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(names(dir.path()), ["gres.conf"], "temporary or backup file left behind");
    }

    #[test]
    fn failure_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("x");
        let err = write_atomic(&p, b"new", 0o644).unwrap_err();
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }

    /// Three targets in two directories, all existing with "old" content.
    fn three(dir: &Path) -> Vec<PathBuf> {
        fs::create_dir(dir.join("b")).unwrap();
        let paths = vec![dir.join("gres.conf"), dir.join("node.conf"), dir.join("b").join("flexmig.toml")];
        for p in &paths {
            fs::write(p, "old").unwrap();
        }
        paths
    }

    fn contents(paths: &[PathBuf]) -> Vec<String> {
        paths.iter().map(|p| fs::read_to_string(p).unwrap_or_else(|e| format!("<{e}>"))).collect()
    }

    #[test]
    fn a_set_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = three(dir.path());
        paths.push(dir.path().join("new.lua"));
        write_set(&paths.iter().map(|p| file(p, "new")).collect::<Vec<_>>()).unwrap();
        assert_eq!(contents(&paths), ["new"; 4]);
        assert_eq!(names(dir.path()), ["b", "gres.conf", "new.lua", "node.conf"]);
        assert_eq!(names(&dir.path().join("b")), ["flexmig.toml"]);
    }

    #[test]
    fn a_file_that_cannot_be_written_changes_none_of_the_set() {
        // Each way the last file can fail while the first two could be written, as root too:
        // its directory is a regular file, its target is a directory, it is named twice.
        for case in ["parent is a file", "target is a directory", "path given twice"] {
            let dir = tempfile::tempdir().unwrap();
            let paths = three(dir.path());
            let mut set: Vec<FileWrite> = paths.iter().map(|p| file(p, "new")).collect();
            let last = match case {
                "parent is a file" => dir.path().join("gres.conf").join("flexmig.toml"),
                "target is a directory" => {
                    fs::create_dir(dir.path().join("flexmig.toml")).unwrap();
                    dir.path().join("flexmig.toml")
                }
                _ => paths[0].clone(),
            };
            set.push(file(&last, "new"));
            let e = write_set(&set).unwrap_err();
            assert_eq!(e.path, last, "{case}");
            let msg = e.to_string();
            assert!(msg.contains(&last.display().to_string()) && msg.contains("none of the files was changed"), "{case}: {msg}");
            assert_eq!(contents(&paths), ["old"; 3], "{case}");
            let mut want = vec!["b", "gres.conf", "node.conf"];
            if case == "target is a directory" {
                want.insert(1, "flexmig.toml");
            }
            assert_eq!(names(dir.path()), want, "{case}: temporaries left behind");
            assert_eq!(names(&dir.path().join("b")), ["flexmig.toml"], "{case}");
        }
    }

    #[test]
    fn a_failed_rename_puts_the_renamed_files_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = three(dir.path());
        paths.insert(1, dir.path().join("fresh.lua"));
        let set: Vec<FileWrite> = paths.iter().map(|p| file(p, "new")).collect();
        // The third rename fails, as it would over an immutable target.
        let mut n = 0;
        let e = write_set_with(&set, &mut |from, to| {
            n += 1;
            if n == 3 {
                Err(io::Error::from(io::ErrorKind::PermissionDenied))
            } else {
                fs::rename(from, to)
            }
        })
        .unwrap_err();
        assert_eq!(e.path, paths[2]);
        assert!(e.to_string().contains("none of the files was changed"), "{e}");
        assert_eq!(contents(&paths), ["old", "<No such file or directory (os error 2)>", "old", "old"]);
        assert_eq!(names(dir.path()), ["b", "gres.conf", "node.conf"]);
        assert_eq!(names(&dir.path().join("b")), ["flexmig.toml"]);
    }
}
