//! Paths as root may use them. The plugin opens the inventory and the leaf locks as root, inside
//! every user's step, so a path is only used when no user could have put anything on it:
//!
//! - every directory on the way is owned by root and writable by nobody else (an ancestor may be
//!   sticky and world-writable, like /tmp: there users cannot move root's entries);
//! - the directory a file is read from or created in is writable by root alone;
//! - a symbolic link is followed only when root owns it (a link in a sticky directory may be a
//!   user's); `..` is refused;
//! - files are opened relative to the checked directory, never through a link, and checked
//!   after opening (owner, type, mode), so nothing can be swapped in between.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Read as _};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use crate::ffi::sys::{self, Kind, Stat};

/// What to do about missing directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    Fail,
    /// Create them, root's alone (0700).
    Create,
    /// Create them, root's but readable by all (0755): for records users may read.
    CreateReadable,
}

/// Links followed in one path at most (Linux's own limit is 40).
const MAX_LINKS: u32 = 32;

/// A directory opened and checked, with the path it was reached by (for messages).
#[derive(Debug)]
pub(crate) struct Dir {
    pub fd: OwnedFd,
    pub path: PathBuf,
}

/// Opens the directory `path`, checked as the module says; with [`Missing::Create`] the missing
/// directories are made 0700.
///
/// # Errors
/// A message naming the path that is not trusted and why.
pub(crate) fn open_dir(path: &Path, missing: Missing) -> Result<Dir, String> {
    match walk(path, Target::Dir, missing)? {
        Walked::Dir(d) => Ok(d),
        Walked::File(..) => unreachable!("a Dir target walks to a directory"),
    }
}

/// Reads the file at `path`: a regular file owned by root, writable by root alone, in a
/// directory checked as the module says.
///
/// # Errors
/// A message naming the path that is not trusted and why, or the I/O error.
pub(crate) fn read_file(path: &Path) -> Result<String, String> {
    let (dir, name) = match walk(path, Target::File, Missing::Fail)? {
        Walked::File(dir, name) => (dir, name),
        Walked::Dir(d) => return Err(format!("{} is a directory", d.path.display())),
    };
    let shown = dir.path.join(&name);
    let cname = sys::c_name(&name).map_err(|e| format!("{}: {e}", shown.display()))?;
    let fd = sys::open_file_at(dir.fd.as_fd(), &cname, None).map_err(|e| describe_open_error(&shown, e))?;
    let st = sys::fstat(fd.as_fd()).map_err(|e| format!("{}: {e}", shown.display()))?;
    trusted_file(&shown, &st)?;
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text).map_err(|e| format!("cannot read {}: {e}", shown.display()))?;
    Ok(text)
}

/// Checks an opened file that root reads or locks.
///
/// # Errors
/// Not a regular file, not root's, writable by others, or with other names (hard links).
pub(crate) fn trusted_file(path: &Path, st: &Stat) -> Result<(), String> {
    if st.kind != Kind::File {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if st.uid != 0 {
        return Err(format!("{} is owned by uid {}, not by root", path.display(), st.uid));
    }
    if st.mode & 0o022 != 0 {
        return Err(format!("{} is writable by others than root (mode {:04o})", path.display(), st.mode));
    }
    if st.nlink != 1 {
        return Err(format!("{} has {} names (hard links)", path.display(), st.nlink));
    }
    Ok(())
}

/// Checks a directory on the way (`last`: the one files are used in).
fn trusted_dir(path: &Path, st: &Stat, last: bool) -> Result<(), String> {
    if st.uid != 0 {
        return Err(format!("{} is owned by uid {}, not by root", path.display(), st.uid));
    }
    let writable_by_others = st.mode & 0o022 != 0;
    let sticky = st.mode & 0o1000 != 0;
    if writable_by_others && (last || !sticky) {
        return Err(format!("{} is writable by others than root (mode {:04o})", path.display(), st.mode));
    }
    Ok(())
}

fn describe_open_error(path: &Path, e: io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => format!("{} is a symbolic link, which root does not follow here", path.display()),
        _ => format!("cannot open {}: {e}", path.display()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Dir,
    File,
}

#[derive(Debug)]
enum Walked {
    Dir(Dir),
    /// The checked directory holding the file, and the file's name in it.
    File(Dir, OsString),
}

fn components(path: &Path) -> Result<VecDeque<OsString>, String> {
    let mut out = VecDeque::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push_back(n.to_os_string()),
            Component::ParentDir => return Err(format!("{} holds `..`", path.display())),
            Component::Prefix(_) => return Err(format!("{} is not a Unix path", path.display())),
        }
    }
    Ok(out)
}

fn root() -> Result<Dir, String> {
    let fd = sys::open_root().map_err(|e| format!("cannot open /: {e}"))?;
    Ok(Dir { fd, path: PathBuf::from("/") })
}

fn walk(path: &Path, target: Target, missing: Missing) -> Result<Walked, String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    let mut rest = components(path)?;
    if target == Target::File && rest.is_empty() {
        return Err(format!("{} names no file", path.display()));
    }
    let mut dir = root()?;
    let st = sys::fstat(dir.fd.as_fd()).map_err(|e| format!("/: {e}"))?;
    trusted_dir(&dir.path, &st, rest.is_empty())?;
    let mut links = 0;
    while let Some(name) = rest.pop_front() {
        let last = rest.is_empty();
        let here = dir.path.join(&name);
        let cname = sys::c_name(&name).map_err(|e| format!("{}: {e}", here.display()))?;
        let st = match sys::lstat_at(dir.fd.as_fd(), &cname) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound && missing != Missing::Fail && target == Target::Dir => {
                let mode = if missing == Missing::CreateReadable { 0o755 } else { 0o700 };
                match sys::mkdir_at(dir.fd.as_fd(), &cname, mode) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {} // made by a task next door
                    Err(e) => return Err(format!("cannot create {}: {e}", here.display())),
                }
                rest.push_front(name);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(format!("{} does not exist", here.display())),
            Err(e) => return Err(format!("{}: {e}", here.display())),
        };
        match st.kind {
            Kind::Symlink => {
                if st.uid != 0 {
                    return Err(format!("{} is a symbolic link owned by uid {}, which root does not follow", here.display(), st.uid));
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(format!("{} goes through more than {MAX_LINKS} symbolic links", path.display()));
                }
                let to = sys::readlink_at(dir.fd.as_fd(), &cname).map_err(|e| format!("{}: {e}", here.display()))?;
                for c in components(&to)?.into_iter().rev() {
                    rest.push_front(c);
                }
                if to.is_absolute() {
                    dir = root()?;
                }
            }
            Kind::Dir => {
                let fd = sys::open_dir_at(dir.fd.as_fd(), &cname).map_err(|e| describe_open_error(&here, e))?;
                let st = sys::fstat(fd.as_fd()).map_err(|e| format!("{}: {e}", here.display()))?;
                let ends_here = last && target == Target::Dir;
                trusted_dir(&here, &st, ends_here || (last && target == Target::File))?;
                dir = Dir { fd, path: here };
            }
            _ if last && target == Target::File => {
                // The directory holding the file is the one files are used in.
                let st = sys::fstat(dir.fd.as_fd()).map_err(|e| format!("{}: {e}", dir.path.display()))?;
                trusted_dir(&dir.path, &st, true)?;
                return Ok(Walked::File(dir, name));
            }
            _ => return Err(format!("{} is not a directory", here.display())),
        }
    }
    if target == Target::File {
        return Err(format!("{} is a directory", dir.path.display()));
    }
    let st = sys::fstat(dir.fd.as_fd()).map_err(|e| format!("{}: {e}", dir.path.display()))?;
    trusted_dir(&dir.path, &st, true)?;
    Ok(Walked::Dir(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// These tests make files owned by other users: they run as root, as the whole suite does.
    fn scratch() -> tempfile::TempDir {
        assert_eq!(sys::euid(), 0, "the trusted-path tests chown files: run them as root (scripts/test.sh does)");
        let d = tempfile::Builder::new().prefix("flexmig-trusted-").tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn chown(p: &Path, uid: u32) {
        std::os::unix::fs::lchown(p, Some(uid), None).unwrap();
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn reads_a_root_file_and_follows_root_links() {
        let d = scratch();
        let f = d.path().join("inv.toml");
        std::fs::write(&f, "version = 1\n").unwrap();
        chmod(&f, 0o644);
        assert_eq!(read_file(&f).unwrap(), "version = 1\n");
        // An admin's link (root's, in root's directory) is followed, to a file or a directory.
        symlink(&f, d.path().join("link.toml")).unwrap();
        assert_eq!(read_file(&d.path().join("link.toml")).unwrap(), "version = 1\n");
        std::fs::create_dir(d.path().join("real")).unwrap();
        std::fs::write(d.path().join("real/x.toml"), "x").unwrap();
        symlink("real", d.path().join("alias")).unwrap();
        assert_eq!(read_file(&d.path().join("alias/x.toml")).unwrap(), "x");
    }

    #[test]
    fn refuses_what_a_user_could_have_placed() {
        let d = scratch();
        let nobody = 65534;
        // A user's file.
        let f = d.path().join("user.toml");
        std::fs::write(&f, "x").unwrap();
        chown(&f, nobody);
        assert!(read_file(&f).unwrap_err().contains("owned by uid 65534"));
        // A root file writable by others.
        let w = d.path().join("w.toml");
        std::fs::write(&w, "x").unwrap();
        chmod(&w, 0o666);
        assert!(read_file(&w).unwrap_err().contains("writable by others"));
        // A user's link, even to a root file.
        let root_file = d.path().join("root.toml");
        std::fs::write(&root_file, "secret").unwrap();
        let l = d.path().join("l.toml");
        symlink(&root_file, &l).unwrap();
        chown(&l, nobody);
        assert!(read_file(&l).unwrap_err().contains("symbolic link owned by uid 65534"));
        // A directory of the user's on the way, or one others can write.
        let ud = d.path().join("userdir");
        std::fs::create_dir(&ud).unwrap();
        std::fs::write(ud.join("i.toml"), "x").unwrap();
        chown(&ud, nobody);
        assert!(read_file(&ud.join("i.toml")).unwrap_err().contains("userdir is owned by uid 65534"));
        chown(&ud, 0);
        chmod(&ud, 0o1777);
        assert!(read_file(&ud.join("i.toml")).unwrap_err().contains("writable by others"), "the file's own directory must not be shared");
        // `..` is refused outright.
        assert!(read_file(&d.path().join("userdir/../root.toml")).unwrap_err().contains("`..`"));
        // A hard link would be another name for a root file.
        std::fs::hard_link(&root_file, d.path().join("hard.toml")).unwrap();
        assert!(read_file(&d.path().join("hard.toml")).unwrap_err().contains("hard links"));
    }

    #[test]
    fn a_sticky_shared_ancestor_is_fine_but_not_a_shared_one() {
        let d = scratch();
        let shared = d.path().join("shared");
        std::fs::create_dir_all(shared.join("etc")).unwrap();
        std::fs::write(shared.join("etc/i.toml"), "x").unwrap();
        chmod(&shared, 0o1777);
        assert_eq!(read_file(&shared.join("etc/i.toml")).unwrap(), "x");
        chmod(&shared, 0o777);
        assert!(read_file(&shared.join("etc/i.toml")).unwrap_err().contains("shared is writable by others"));
    }

    #[test]
    fn creates_missing_directories_for_root_alone() {
        let d = scratch();
        let want = d.path().join("run/flexmig/n1");
        let dir = open_dir(&want, Missing::Create).unwrap();
        assert_eq!(dir.path, want);
        for p in [d.path().join("run"), d.path().join("run/flexmig"), want.clone()] {
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o700, "{}", p.display());
        }
        // Opening it again is fine; without Create a missing directory is an error.
        open_dir(&want, Missing::Create).unwrap();
        assert!(open_dir(&d.path().join("absent"), Missing::Fail).unwrap_err().contains("does not exist"));
        // A user's directory in the way is refused, not used.
        let pre = d.path().join("pre");
        std::fs::create_dir(&pre).unwrap();
        chown(&pre, 65534);
        assert!(open_dir(&pre.join("locks"), Missing::Create).unwrap_err().contains("owned by uid 65534"));
        assert!(!pre.join("locks").exists());
        // A dangling link in the way is not a place to create anything.
        symlink(d.path().join("elsewhere"), d.path().join("dangling")).unwrap();
        chown(&d.path().join("dangling"), 65534);
        assert!(open_dir(&d.path().join("dangling"), Missing::Create).is_err());
        assert!(!d.path().join("elsewhere").exists());
    }
}
