//! The C boundary: the bindgen output for slurm/spank.h, the guard every Slurm callback runs
//! in, and safe wrappers over the few spank_* calls the plugin makes. Nothing outside this
//! module calls into C.

use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

#[allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code, clippy::all)]
pub(crate) mod bindings {
    include!(concat!(env!("OUT_DIR"), "/spank_bindings.rs"));
    include!(concat!(env!("OUT_DIR"), "/slurm_consts.rs"));
}

use bindings::{slurm_err_t as spank_err, spank_item};
pub(crate) use bindings::{spank_context as Context, spank_t, SLURM_BATCH_SCRIPT, SLURM_VERSION_NUMBER};

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
pub(crate) fn guard<F: FnOnce() -> Result<(), String>>(callback: &str, f: F) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(msg)) => {
            tracing::error!("{msg}");
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

/// The arguments Slurm passes to a callback (from plugstack.conf).
///
/// # Safety
/// `argv` must point to `argc` valid NUL-terminated strings (or be null with argc 0).
pub(crate) unsafe fn args(argc: c_int, argv: *mut *mut c_char) -> Vec<String> {
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

/// A C string from Rust, or the error message naming it.
fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("flexmig: `{s}` holds a NUL byte"))
}

/// The context this plugin instance runs in (srun, slurmstepd, sbatch/salloc, ...).
pub(crate) fn context() -> Context {
    // SAFETY: no arguments; valid in every context.
    unsafe { bindings::spank_context() }
}

/// The registered `--flexmig[=MODE]` option. Slurm keeps a pointer to it, so it lives for the
/// life of the process.
fn option(cb: bindings::spank_opt_cb_f) -> &'static mut bindings::spank_option {
    Box::leak(Box::new(bindings::spank_option {
        name: c"flexmig".as_ptr().cast_mut(),
        arginfo: c"MODE".as_ptr().cast_mut(),
        usage: c"Run one task per MIG leaf (flexmig). MODE: rank (default: one leaf per task, ranks alternating across the node's GPUs), node (one task per node with all its leaves, for launchers such as torchrun), off."
            .as_ptr()
            .cast_mut(),
        has_arg: 2,
        val: 0,
        cb,
    }))
}

/// A handle for the duration of one callback.
#[derive(Debug)]
pub(crate) struct Spank(spank_t);

impl Spank {
    /// # Safety
    /// `sp` must be the handle Slurm passed to the running callback.
    pub(crate) unsafe fn new(sp: spank_t) -> Self {
        Spank(sp)
    }

    /// Registers `--flexmig[=MODE]` with `cb` as its callback.
    pub(crate) fn register_option(&self, cb: bindings::spank_opt_cb_f) -> Result<(), String> {
        // SAFETY: self.0 is the live handle; the option struct is leaked, so it outlives Slurm's use.
        let rc = unsafe { bindings::spank_option_register(self.0, option(cb)) };
        check(rc, "registering --flexmig")
    }

    /// Whether the user gave `--flexmig` and with what argument: None if not given,
    /// Some(None) for a bare `--flexmig`.
    pub(crate) fn flexmig_option(&self) -> Option<Option<String>> {
        let opt = option(None);
        let mut arg: *mut c_char = std::ptr::null_mut();
        // SAFETY: live handle, a valid option struct naming our option, a valid out pointer.
        let rc = unsafe { bindings::spank_option_getopt(self.0, opt, &mut arg) };
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
    pub(crate) fn setenv(&self, name: &str, value: &str) -> Result<(), String> {
        let (n, v) = (cstring(name)?, cstring(value)?);
        // SAFETY: live handle and NUL-terminated strings.
        let rc = unsafe { bindings::spank_setenv(self.0, n.as_ptr(), v.as_ptr(), 1) };
        check(rc, &format!("setting {name}"))
    }

    /// Removes a variable from the job's environment.
    pub(crate) fn unsetenv(&self, name: &str) -> Result<(), String> {
        let n = cstring(name)?;
        // SAFETY: live handle and a NUL-terminated string.
        let rc = unsafe { bindings::spank_unsetenv(self.0, n.as_ptr()) };
        check(rc, &format!("unsetting {name}"))
    }

    /// A `uint32_t` item (S_JOB_ID, S_JOB_STEPID, S_JOB_NODEID, ...).
    pub(crate) fn item_u32(&self, item: Item) -> Result<u32, String> {
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
                return u32::try_from(i).map_err(|_| format!("flexmig: Slurm gave a negative task id {i}"));
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

fn check(rc: bindings::spank_err_t, what: &str) -> Result<(), String> {
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
    Err(format!("flexmig: {what} failed: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_maps_ok_err_and_panic() {
        assert_eq!(guard("t", || Ok(())), 0);
        assert_eq!(guard("t", || Err("flexmig: bad".into())), -1);
        assert_eq!(guard("t", || panic!("boom")), -1, "a panic must not unwind into Slurm");
        assert_eq!(guard("t", || -> Result<(), String> { panic!("{}", String::from("owned")) }), -1);
    }
}
