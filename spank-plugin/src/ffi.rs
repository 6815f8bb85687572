//! The C boundary: the bindgen output for slurm/spank.h, the guard every Slurm callback runs
//! in, and safe wrappers over the few spank_* calls the plugin makes. Nothing outside this
//! module calls into C.

use std::ffi::{c_char, c_int, c_uint, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

#[allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code, clippy::all)]
pub(crate) mod bindings {
    include!(concat!(env!("OUT_DIR"), "/spank_bindings.rs"));
    include!(concat!(env!("OUT_DIR"), "/slurm_consts.rs"));
}

use bindings::{slurm_err_t as spank_err, spank_item};
pub(crate) use bindings::{spank_context as Context, spank_t, SLURM_BATCH_SCRIPT, SLURM_INTERACTIVE_STEP};

use crate::error::{Error, Result};

/// ESPANK_SUCCESS (a macro in slurm_errno.h, 0).
const SUCCESS: bindings::spank_err_t = bindings::ESPANK_SUCCESS as bindings::spank_err_t;

/// Log levels the plugin writes at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Error = 0,
    Info = 1,
    Verbose = 2,
    Debug = 3,
    Debug2 = 4,
}

/// Slurm's printf-like log functions (`slurm_error`, `slurm_info`, ...).
type LogFn = unsafe extern "C" fn(*const c_char, ...);

/// Looks a log function up in the process (libslurm(full), loaded by srun or slurmstepd
/// before the plugin). Resolved at run time so the pure parts of the crate can be unit-tested
/// outside Slurm, where the messages go to stderr instead.
fn log_fn(level: Level) -> Option<LogFn> {
    use std::sync::OnceLock;
    static FNS: OnceLock<[Option<LogFn>; 5]> = OnceLock::new();
    let fns = FNS.get_or_init(|| {
        [c"slurm_error", c"slurm_info", c"slurm_verbose", c"slurm_debug", c"slurm_debug2"].map(|name| {
            // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no preconditions.
            let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            // SAFETY: a non-null result is the address of Slurm's variadic log function of
            // that name, whose C signature is `void f(const char *fmt, ...)`.
            (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, LogFn>(p) })
        })
    });
    fns[level as usize]
}

/// Writes one line through Slurm's own logging (slurmstepd's log and, for errors in a task,
/// the user's terminal).
pub(crate) fn log(level: Level, msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    match log_fn(level) {
        // SAFETY: the format is "%s" with one NUL-terminated string argument that outlives
        // the call.
        Some(f) => unsafe { f(c"%s".as_ptr(), c.as_ptr()) },
        None => eprintln!("{msg}"),
    }
}

/// Runs a callback body for Slurm: Ok -> 0, Err -> the message logged as an error and -1, a
/// panic -> logged and -1. No panic ever unwinds into Slurm.
pub(crate) fn guard<F: FnOnce() -> Result<()>>(callback: &str, f: F) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            tracing::error!("{}", e.message());
            -1
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            // Logging itself could be what panicked: write directly.
            let _ = catch_unwind(|| log(Level::Error, &format!("flexmig: internal error in {callback}: {what}; please report this bug")));
            -1
        }
    }
}

/// Declares a SPANK callback Slurm calls by name: the C signature, the handle and arguments
/// made safe, and the body run inside [`guard`]. A task callback (`task`) that fails also ends
/// the task: Slurm ignores a failing callback of an `optional` plugin, and a task must never
/// run on a leaf it was not bound to.
macro_rules! spank_callback {
    ($(#[$doc:meta])* $symbol:ident => $body:path) => {
        spank_callback!(@emit $(#[$doc])* $symbol, $body, false);
    };
    ($(#[$doc:meta])* task $symbol:ident => $body:path) => {
        spank_callback!(@emit $(#[$doc])* $symbol, $body, true);
    };
    (@emit $(#[$doc:meta])* $symbol:ident, $body:path, $ends_task:expr) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Called by Slurm with its live handle and `ac` valid argument strings in `av`.
        #[no_mangle]
        pub unsafe extern "C" fn $symbol(sp: spank_t, ac: c_int, av: *mut *mut c_char) -> c_int {
            // SAFETY: Slurm passes the handle of this callback and ac valid argument strings.
            let (spank, args) = unsafe { (Spank(sp), args(ac, av)) };
            // No tracing span here: the subscriber's span storage does not survive slurmstepd's
            // fork into the tasks (spans entered before the fork panic after it).
            let rc = guard(stringify!($symbol), || $body(&spank, &args));
            if rc != 0 && $ends_task {
                // SAFETY: task callbacks run in the forked task, before exec; _exit ends only it.
                unsafe { libc::_exit(1) };
            }
            rc
        }
    };
}

spank_callback!(
    /// Called in every context (srun, sbatch/salloc, slurmstepd, slurmd).
    slurm_spank_init => crate::init
);
spank_callback!(
    /// Called after the options are read, in every context; in slurmstepd as root, once per
    /// step, before the tasks are forked.
    slurm_spank_init_post_opt => crate::init_post_opt
);
spank_callback!(
    /// Called at the end, in every context; in slurmstepd as root when the step is over.
    slurm_spank_exit => crate::exit
);
spank_callback!(
    /// Called in each forked task as root, before it becomes the user.
    task slurm_spank_task_init_privileged => crate::task_init_privileged
);
spank_callback!(
    /// Called in each forked task as the user, after Slurm set its GPU variables, before exec.
    task slurm_spank_task_init => crate::task_init
);
spank_callback!(
    /// Called in slurmstepd, as root, when a task has exited.
    slurm_spank_task_exit => crate::task_exit
);

/// What a failing `slurm_spank_init` does on Slurm >= 25.05: fail the job, never drain the
/// node. (flexmig's own init does not fail on a configuration error; this covers the rest.)
#[cfg(flexmig_init_failure_mode)]
#[no_mangle]
#[used]
pub static slurm_spank_init_failure_mode: c_int = bindings::slurm_err_t::ESPANK_JOB_FAILURE as c_int;

// The symbols Slurm's plugin loader reads (what SPANK_PLUGIN(flexmig, 1) declares in C).
#[no_mangle]
#[used]
pub static plugin_name: [u8; 8] = *b"flexmig\0";
#[no_mangle]
#[used]
pub static plugin_type: [u8; 6] = *b"spank\0";
#[no_mangle]
#[used]
pub static plugin_version: c_uint = bindings::SLURM_VERSION_NUMBER;
#[no_mangle]
#[used]
pub static spank_plugin_version: c_uint = 1;

/// The arguments Slurm passes to a callback (from plugstack.conf).
///
/// # Safety
/// `argv` must point to `argc` valid NUL-terminated strings (or be null with argc 0).
unsafe fn args(argc: c_int, argv: *mut *mut c_char) -> Vec<String> {
    if argv.is_null() || argc <= 0 {
        return Vec::new();
    }
    (0..argc as usize)
        .map(|i| {
            // SAFETY: the caller guarantees argc valid entries.
            let p = unsafe { *argv.add(i) };
            if p.is_null() {
                String::new()
            } else {
                // SAFETY: each entry is a NUL-terminated string owned by Slurm for the call.
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            }
        })
        .collect()
}

/// A C string from Rust, or the error naming it.
fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::step(format!("`{}` holds a NUL byte", s.escape_default())))
}

/// The context this plugin instance runs in (srun, slurmstepd, sbatch/salloc, ...).
pub(crate) fn context() -> Context {
    // SAFETY: no arguments; valid in every context.
    unsafe { bindings::spank_context() }
}

/// `--flexmig[=MODE]`. Slurm copies it when it is registered; getopt looks it up by name.
struct FlexmigOption(bindings::spank_option);

// SAFETY: the option only holds pointers to static strings and a function; nothing mutates it.
unsafe impl Sync for FlexmigOption {}

static FLEXMIG_OPTION: FlexmigOption = FlexmigOption(bindings::spank_option {
    name: c"flexmig".as_ptr().cast_mut(),
    arginfo: c"MODE".as_ptr().cast_mut(),
    usage: c"Run one task per MIG leaf (flexmig). MODE: rank (default: one leaf per task, ranks alternating across the node's GPUs), node (one task per node with all its leaves, for launchers such as torchrun), off."
        .as_ptr()
        .cast_mut(),
    has_arg: 2,
    val: 0,
    cb: Some(option_callback),
});

/// The `--flexmig` option callback.
extern "C" fn option_callback(_val: c_int, optarg: *const c_char, remote: c_int) -> c_int {
    guard("the --flexmig option", || {
        let arg = if optarg.is_null() {
            None
        } else {
            // SAFETY: Slurm passes a NUL-terminated option argument (or NULL).
            Some(unsafe { CStr::from_ptr(optarg) }.to_string_lossy().into_owned())
        };
        crate::option_given(arg.as_deref(), remote != 0)
    })
}

/// A handle for the duration of one callback.
#[derive(Debug)]
pub(crate) struct Spank(spank_t);

impl Spank {
    /// Registers `--flexmig[=MODE]`.
    pub(crate) fn register_option(&self) -> Result<()> {
        // SAFETY: self.0 is the live handle; Slurm copies the (static) option.
        let rc = unsafe { bindings::spank_option_register(self.0, std::ptr::from_ref(&FLEXMIG_OPTION.0).cast_mut()) };
        check(rc, "registering --flexmig")
    }

    /// Whether the user gave `--flexmig` and with what argument: None if not given,
    /// Some(None) for a bare `--flexmig`.
    pub(crate) fn flexmig_option(&self) -> Option<Option<String>> {
        let mut arg: *mut c_char = std::ptr::null_mut();
        // SAFETY: live handle, the option struct naming our option (only read), a valid out pointer.
        let rc = unsafe { bindings::spank_option_getopt(self.0, std::ptr::from_ref(&FLEXMIG_OPTION.0).cast_mut(), &mut arg) };
        if rc != SUCCESS {
            return None;
        }
        if arg.is_null() {
            return Some(None);
        }
        // SAFETY: Slurm returns a NUL-terminated string it owns for the step's lifetime.
        Some(Some(unsafe { CStr::from_ptr(arg) }.to_string_lossy().into_owned()))
    }

    /// A variable of the job's environment (remote context only).
    pub(crate) fn getenv(&self, name: &str) -> Option<String> {
        let cname = cstring(name).ok()?;
        let mut len = 1024usize;
        loop {
            let mut buf = vec![0u8; len];
            // SAFETY: live handle, NUL-terminated name, buffer of `len` writable bytes.
            let rc = unsafe { bindings::spank_getenv(self.0, cname.as_ptr(), buf.as_mut_ptr().cast(), len as c_int) };
            match rc {
                SUCCESS => {
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    return Some(String::from_utf8_lossy(&buf[..end]).into_owned());
                }
                spank_err::ESPANK_NOSPACE if len < (1 << 24) => len *= 4,
                _ => return None,
            }
        }
    }

    /// Sets (overwrites) a variable of the job's environment.
    pub(crate) fn setenv(&self, name: &str, value: &str) -> Result<()> {
        let (n, v) = (cstring(name)?, cstring(value)?);
        // SAFETY: live handle and NUL-terminated strings.
        let rc = unsafe { bindings::spank_setenv(self.0, n.as_ptr(), v.as_ptr(), 1) };
        check(rc, &format!("setting {name}"))
    }

    /// Removes a variable from the job's environment.
    pub(crate) fn unsetenv(&self, name: &str) -> Result<()> {
        let n = cstring(name)?;
        // SAFETY: live handle and a NUL-terminated string.
        let rc = unsafe { bindings::spank_unsetenv(self.0, n.as_ptr()) };
        check(rc, &format!("unsetting {name}"))
    }

    /// A `uint32_t` item (S_JOB_ID, S_JOB_STEPID, S_JOB_NODEID, ...).
    pub(crate) fn item_u32(&self, item: Item) -> Result<u32> {
        let mut v: u32 = 0;
        let code = match item {
            Item::JobId => spank_item::S_JOB_ID,
            Item::StepId => spank_item::S_JOB_STEPID,
            Item::NodeId => spank_item::S_JOB_NODEID,
            Item::NNodes => spank_item::S_JOB_NNODES,
            Item::LocalTaskCount => spank_item::S_JOB_LOCAL_TASK_COUNT,
            Item::TotalTaskCount => spank_item::S_JOB_TOTAL_TASK_COUNT,
            Item::TaskGlobalId => spank_item::S_TASK_GLOBAL_ID,
            Item::TaskId => {
                let mut i: c_int = 0;
                // SAFETY: S_TASK_ID takes an (int *), which `&mut i` is.
                let rc = unsafe { bindings::spank_get_item(self.0, spank_item::S_TASK_ID, &mut i as *mut c_int) };
                check(rc, "reading S_TASK_ID")?;
                return u32::try_from(i).map_err(|_| Error::slurm(format!("Slurm gave a negative task id {i}")));
            }
        };
        // SAFETY: every item above takes a (uint32_t *), which `&mut v` is.
        let rc = unsafe { bindings::spank_get_item(self.0, code, &mut v as *mut u32) };
        check(rc, &format!("reading {item:?}"))?;
        Ok(v)
    }
}

/// The spank items the plugin reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Item {
    JobId,
    StepId,
    NodeId,
    NNodes,
    LocalTaskCount,
    TotalTaskCount,
    TaskId,
    TaskGlobalId,
}

fn check(rc: bindings::spank_err_t, what: &str) -> Result<()> {
    if rc == SUCCESS {
        return Ok(());
    }
    // SAFETY: spank_strerror returns a static string for any code.
    let text = unsafe {
        let p = bindings::spank_strerror(rc);
        if p.is_null() {
            format!("code {rc}")
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    Err(Error::slurm(format!("{what} failed: {text}")))
}

/// The few system calls the plugin makes as root on paths: relative to an already checked
/// directory, never following a symbolic link, with owner and mode read from the open file.
pub(crate) mod sys {
    use std::ffi::{CStr, CString};
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
    use std::os::unix::ffi::OsStringExt;
    use std::path::PathBuf;

    /// What the plugin checks of a file: its type, owner, permission bits and link count.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Stat {
        pub kind: Kind,
        pub uid: u32,
        pub mode: u32,
        pub nlink: u64,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Kind {
        Dir,
        File,
        Symlink,
        Other,
    }

    impl From<&libc::stat> for Stat {
        fn from(st: &libc::stat) -> Self {
            let kind = match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => Kind::Dir,
                libc::S_IFREG => Kind::File,
                libc::S_IFLNK => Kind::Symlink,
                _ => Kind::Other,
            };
            #[allow(clippy::useless_conversion)] // nlink_t differs between architectures
            Stat { kind, uid: st.st_uid, mode: st.st_mode & 0o7777, nlink: u64::from(st.st_nlink) }
        }
    }

    fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
        // SAFETY: a non-negative result of open/openat is a new descriptor nobody else owns.
        cvt(fd).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The root directory.
    pub(crate) fn open_root() -> io::Result<OwnedFd> {
        // SAFETY: a NUL-terminated path and flags; no other preconditions.
        owned(unsafe { libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) })
    }

    /// A directory entry of `dir`, which must itself be a directory (not a link to one).
    pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a valid directory descriptor, a NUL-terminated name, flags.
        owned(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })
    }

    /// A regular file of `dir` opened read-only, never through a link; created with `create`
    /// permission bits when given and missing.
    pub(crate) fn open_file_at(dir: BorrowedFd<'_>, name: &CStr, create: Option<u32>) -> io::Result<OwnedFd> {
        let mut flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        if create.is_some() {
            flags |= libc::O_CREAT;
        }
        let mode = create.unwrap_or(0) as libc::c_uint;
        // SAFETY: a valid directory descriptor, a NUL-terminated name, flags and a mode.
        owned(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) })
    }

    /// A regular file of `dir` opened for writing, never through a link, created with `mode`
    /// where missing (not truncated: its owner decides what it holds).
    pub(crate) fn create_file_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<OwnedFd> {
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: a valid directory descriptor, a NUL-terminated name, flags and a mode.
        owned(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode as libc::c_uint) })
    }

    pub(crate) fn remove_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        // SAFETY: a valid directory descriptor and a NUL-terminated name.
        cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
    }

    pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        // SAFETY: a valid directory descriptor and a NUL-terminated name.
        cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }).map(drop)
    }

    /// This process's real user id.
    pub(crate) fn uid() -> u32 {
        // SAFETY: getuid has no preconditions.
        unsafe { libc::getuid() }
    }

    pub(crate) fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
        // SAFETY: a valid directory descriptor, a NUL-terminated name, a mode.
        cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(drop)
    }

    /// The entry `name` of `dir` itself (a link is not followed).
    pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Stat> {
        // SAFETY: an all-zero stat is a valid value for fstatat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid directory descriptor, a NUL-terminated name, a writable stat.
        cvt(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
        Ok(Stat::from(&st))
    }

    pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
        // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and a writable stat.
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
        Ok(Stat::from(&st))
    }

    /// The target of the link `name` in `dir`.
    pub(crate) fn readlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<PathBuf> {
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: a valid directory descriptor, a NUL-terminated name, a buffer of buf.len() bytes.
        let n = unsafe { libc::readlinkat(dir.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(PathBuf::from(std::ffi::OsString::from_vec(buf)))
    }

    pub(crate) fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
        // SAFETY: a valid descriptor and a mode.
        cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
    }

    /// Takes an exclusive flock without waiting: Ok(false) when another open file holds it.
    pub(crate) fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
        // SAFETY: flock on a valid descriptor.
        match cvt(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Hands a descriptor to the program the task execs (it stays open, and its lock held, for
    /// as long as the task and its children live).
    pub(crate) fn keep_across_exec(fd: OwnedFd) -> io::Result<RawFd> {
        // SAFETY: F_SETFD on a valid descriptor we own.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) })?;
        Ok(fd.into_raw_fd())
    }

    /// A path component as a C string.
    pub(crate) fn c_name(name: &std::ffi::OsStr) -> io::Result<CString> {
        use std::os::unix::ffi::OsStrExt;
        CString::new(name.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path component holds a NUL byte"))
    }

    /// This process's effective user id.
    #[cfg(test)]
    pub(crate) fn euid() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_maps_ok_err_and_panic() {
        assert_eq!(guard("t", || Ok(())), 0);
        assert_eq!(guard("t", || Err(Error::step("bad"))), -1);
        assert_eq!(guard("t", || panic!("boom")), -1, "a panic must not unwind into Slurm");
        assert_eq!(guard("t", || -> Result<()> { panic!("{}", String::from("owned")) }), -1);
    }
}
