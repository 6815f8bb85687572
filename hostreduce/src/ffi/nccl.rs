//! The NCCL boundary: the entry points this library exports in front of libnccl.so.2 (it is
//! LD_PRELOADed, so the application's calls land here first), and the real ones behind it,
//! found with `dlsym(RTLD_NEXT)` or, for a libnccl loaded out of the global scope, through its
//! own handle. Each exported function runs its body through [`guard`]: no
//! panic crosses into the application, it becomes `ncclInternalError` with a message.
//!
//! The decisions are made in `crate::interpose` (safe code); this file only converts arguments.

use crate::ffi::cuda::{DevPtr, Stream};
use crate::interpose;
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

pub type NcclResult = c_int;
pub type Comm = *mut c_void;

pub const NCCL_SUCCESS: NcclResult = 0;
pub const NCCL_UNHANDLED_CUDA_ERROR: NcclResult = 1;
pub const NCCL_SYSTEM_ERROR: NcclResult = 2;
pub const NCCL_INTERNAL_ERROR: NcclResult = 3;
pub const NCCL_REMOTE_ERROR: NcclResult = 6;
/// ncclUint8, for the exchanges at communicator creation.
const NCCL_UINT8: c_int = 1;
pub const NCCL_UNIQUE_ID_BYTES: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UniqueId {
    pub internal: [u8; NCCL_UNIQUE_ID_BYTES],
}

type InitRank = unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> NcclResult;
type InitRankConfig = unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int, *mut c_void) -> NcclResult;
type AllReduce = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, *mut c_void) -> NcclResult;
type AllGather = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, Comm, *mut c_void) -> NcclResult;
type CommOnly = unsafe extern "C" fn(Comm) -> NcclResult;
type AsyncError = unsafe extern "C" fn(Comm, *mut NcclResult) -> NcclResult;
type NoArgs = unsafe extern "C" fn() -> NcclResult;
type Split = unsafe extern "C" fn(Comm, c_int, c_int, *mut Comm, *mut c_void) -> NcclResult;
type CommInt = unsafe extern "C" fn(Comm, *mut c_int) -> NcclResult;

/// The real NCCL entry points (the next definition after this library in the lookup order).
struct Real {
    init_rank: Option<InitRank>,
    init_rank_config: Option<InitRankConfig>,
    all_reduce: Option<AllReduce>,
    all_gather: Option<AllGather>,
    destroy: Option<CommOnly>,
    abort: Option<CommOnly>,
    async_error: Option<AsyncError>,
    group_start: Option<NoArgs>,
    group_end: Option<NoArgs>,
    split: Option<Split>,
    count: Option<CommInt>,
    user_rank: Option<CommInt>,
}

fn next<T>(name: &std::ffi::CStr) -> Option<T> {
    // SAFETY: dlsym with RTLD_NEXT finds the definition after ours (libnccl's) where libnccl is in
    // the global scope (preloaded, or linked by the program). Where it is not (PyTorch's own NCCL
    // comes in as a dependency of an extension module, which Python loads RTLD_LOCAL), the loaded
    // libnccl.so.2 is asked directly: RTLD_NOLOAD only returns a handle to a library already in
    // the process, and a lookup through that handle searches libnccl and its dependencies, which
    // this library is not one of (checked: never our own definition). The caller names the function
    // type that symbol has in nccl.h.
    unsafe {
        let mut p = libc::dlsym(libc::RTLD_NEXT, name.as_ptr());
        if p.is_null() {
            let h = libc::dlopen(c"libnccl.so.2".as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
            if !h.is_null() {
                p = libc::dlsym(h, name.as_ptr());
                if p == libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) {
                    p = std::ptr::null_mut();
                }
                // The handle only counted a reference to a library that stays loaded anyway.
                libc::dlclose(h);
            }
        }
        if p.is_null() {
            None
        } else {
            Some(std::mem::transmute_copy::<*mut c_void, T>(&p))
        }
    }
}

fn real() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| Real {
        init_rank: next(c"ncclCommInitRank"),
        init_rank_config: next(c"ncclCommInitRankConfig"),
        all_reduce: next(c"ncclAllReduce"),
        all_gather: next(c"ncclAllGather"),
        destroy: next(c"ncclCommDestroy"),
        abort: next(c"ncclCommAbort"),
        async_error: next(c"ncclCommGetAsyncError"),
        group_start: next(c"ncclGroupStart"),
        group_end: next(c"ncclGroupEnd"),
        split: next(c"ncclCommSplit"),
        count: next(c"ncclCommCount"),
        user_rank: next(c"ncclCommUserRank"),
    })
}

fn missing(name: &str) -> NcclResult {
    eprintln!("flexmig-hostreduce: the real {name} was not found behind this library (is libnccl.so.2 loaded after it?)");
    NCCL_SYSTEM_ERROR
}

/// Runs an exported function's body; a panic becomes ncclInternalError and a message.
fn guard(name: &str, body: impl FnOnce() -> NcclResult) -> NcclResult {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
            eprintln!("flexmig-hostreduce: internal error in {name}: {msg}");
            NCCL_INTERNAL_ERROR
        }
    }
}

/// The all-gather the interposer uses at communicator creation (on its own stream, synchronised).
// `comm` is NCCL's opaque handle, passed on as the application gave it to us; we never dereference it.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn all_gather(send: DevPtr, recv: DevPtr, bytes: usize, comm: Comm, stream: Stream) -> NcclResult {
    match real().all_gather {
        // SAFETY: device buffers of `bytes` and `bytes * nranks`, a live communicator and stream.
        Some(f) => unsafe { f(send as *const c_void, recv as *mut c_void, bytes, NCCL_UINT8, comm, stream.0) },
        None => missing("ncclAllGather"),
    }
}

/// ncclConfig_t's `blocking` field (after `size_t size; unsigned magic; unsigned version;`), or
/// None without a config. NCCL_CONFIG_UNDEF_INT (INT_MIN) means NCCL's default.
fn config_blocking(config: *mut c_void) -> Option<c_int> {
    if config.is_null() {
        return None;
    }
    // SAFETY: NCCL's ABI: every ncclConfig_t since 2.14 starts with these fields, and the caller
    // passes one initialised by NCCL_CONFIG_INITIALIZER.
    Some(unsafe { *((config as *const u8).add(16) as *const c_int) })
}

/// ncclCommInitRank: the real one, then the interposer's setup for this communicator.
///
/// # Safety
/// As ncclCommInitRank.
#[no_mangle]
pub unsafe extern "C" fn ncclCommInitRank(comm: *mut Comm, nranks: c_int, id: UniqueId, rank: c_int) -> NcclResult {
    guard("ncclCommInitRank", || {
        let Some(f) = real().init_rank else { return missing("ncclCommInitRank") };
        // SAFETY: passing the caller's arguments through unchanged.
        let r = unsafe { f(comm, nranks, id, rank) };
        if r == NCCL_SUCCESS && !comm.is_null() {
            // SAFETY: on success NCCL stored the new communicator in *comm.
            interpose::on_init(unsafe { *comm }, nranks as usize, &id.internal, rank as usize, None);
        }
        r
    })
}

/// ncclCommInitRankConfig: as ncclCommInitRank; non-blocking communicators stay with NCCL.
///
/// # Safety
/// As ncclCommInitRankConfig.
#[no_mangle]
pub unsafe extern "C" fn ncclCommInitRankConfig(
    comm: *mut Comm,
    nranks: c_int,
    id: UniqueId,
    rank: c_int,
    config: *mut c_void,
) -> NcclResult {
    guard("ncclCommInitRankConfig", || {
        let Some(f) = real().init_rank_config else { return missing("ncclCommInitRankConfig") };
        // SAFETY: passing the caller's arguments through unchanged.
        let r = unsafe { f(comm, nranks, id, rank, config) };
        if r == NCCL_SUCCESS && !comm.is_null() {
            // SAFETY: on success NCCL stored the new communicator in *comm.
            interpose::on_init(unsafe { *comm }, nranks as usize, &id.internal, rank as usize, config_blocking(config));
        }
        r
    })
}

/// ncclCommSplit: the real one, then the interposer's setup for the new communicator (as for
/// ncclCommInitRankConfig), which PyTorch makes for its subgroups once the default group has a
/// device.
///
/// # Safety
/// As ncclCommSplit.
#[no_mangle]
pub unsafe extern "C" fn ncclCommSplit(comm: Comm, color: c_int, key: c_int, newcomm: *mut Comm, config: *mut c_void) -> NcclResult {
    guard("ncclCommSplit", || {
        let Some(f) = real().split else { return missing("ncclCommSplit") };
        // SAFETY: passing the caller's arguments through unchanged.
        let r = unsafe { f(comm, color, key, newcomm, config) };
        if r != NCCL_SUCCESS || newcomm.is_null() {
            return r;
        }
        // SAFETY: on success NCCL stored the new communicator (or NULL for NCCL_SPLIT_NOCOLOR) in *newcomm.
        let child = unsafe { *newcomm };
        let shape = if child.is_null() { None } else { comm_shape(child) };
        interpose::on_split(comm, color, shape.map(|(n, rk)| (child, n, rk)), config_blocking(config));
        r
    })
}

/// (ranks, this rank) of a communicator, from the real NCCL.
fn comm_shape(comm: Comm) -> Option<(usize, usize)> {
    let (count, user_rank) = (real().count?, real().user_rank?);
    let (mut n, mut rk): (c_int, c_int) = (0, 0);
    // SAFETY: a live communicator NCCL just made, and pointers to two ints.
    let ok = unsafe { count(comm, &mut n) == NCCL_SUCCESS && user_rank(comm, &mut rk) == NCCL_SUCCESS };
    (ok && n > 0 && rk >= 0 && rk < n).then_some((n as usize, rk as usize))
}

/// ncclAllReduce: the host path where the interposer takes it, NCCL otherwise.
///
/// # Safety
/// As ncclAllReduce.
#[no_mangle]
pub unsafe extern "C" fn ncclAllReduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: c_int,
    op: c_int,
    comm: Comm,
    stream: *mut c_void,
) -> NcclResult {
    guard("ncclAllReduce", || {
        if let Some(r) = interpose::on_all_reduce(sendbuff as DevPtr, recvbuff as DevPtr, count, datatype, op, comm, Stream(stream)) {
            return r;
        }
        let Some(f) = real().all_reduce else { return missing("ncclAllReduce") };
        // SAFETY: passing the caller's arguments through unchanged.
        unsafe { f(sendbuff, recvbuff, count, datatype, op, comm, stream) }
    })
}

/// ncclCommDestroy: the interposer's teardown (finishing started calls), then the real one.
///
/// # Safety
/// As ncclCommDestroy.
#[no_mangle]
pub unsafe extern "C" fn ncclCommDestroy(comm: Comm) -> NcclResult {
    guard("ncclCommDestroy", || {
        interpose::on_teardown(comm, false);
        let Some(f) = real().destroy else { return missing("ncclCommDestroy") };
        // SAFETY: passing the caller's argument through unchanged.
        unsafe { f(comm) }
    })
}

/// ncclCommAbort: the interposer's teardown (aborting unfinished calls for every rank), then the real one.
///
/// # Safety
/// As ncclCommAbort.
#[no_mangle]
pub unsafe extern "C" fn ncclCommAbort(comm: Comm) -> NcclResult {
    guard("ncclCommAbort", || {
        interpose::on_teardown(comm, true);
        let Some(f) = real().abort else { return missing("ncclCommAbort") };
        // SAFETY: passing the caller's argument through unchanged.
        unsafe { f(comm) }
    })
}

/// ncclCommGetAsyncError: NCCL's state, or ncclRemoteError once the host path is aborted (a dead
/// peer), so that watchdogs (PyTorch's) see it and abort the communicator.
///
/// # Safety
/// As ncclCommGetAsyncError.
#[no_mangle]
pub unsafe extern "C" fn ncclCommGetAsyncError(comm: Comm, async_error: *mut NcclResult) -> NcclResult {
    guard("ncclCommGetAsyncError", || {
        let Some(f) = real().async_error else { return missing("ncclCommGetAsyncError") };
        // SAFETY: passing the caller's arguments through unchanged.
        let r = unsafe { f(comm, async_error) };
        if r == NCCL_SUCCESS && !async_error.is_null() {
            // SAFETY: NCCL wrote a result there; we may only make it worse.
            unsafe {
                if *async_error == NCCL_SUCCESS && interpose::is_aborted(comm) {
                    *async_error = NCCL_REMOTE_ERROR;
                }
            }
        }
        r
    })
}

/// ncclGroupStart: counted, since calls inside a group are NCCL's to fuse.
#[no_mangle]
pub extern "C" fn ncclGroupStart() -> NcclResult {
    guard("ncclGroupStart", || {
        let Some(f) = real().group_start else { return missing("ncclGroupStart") };
        // SAFETY: no arguments.
        let r = unsafe { f() };
        if r == NCCL_SUCCESS {
            interpose::group_enter();
        }
        r
    })
}

/// ncclGroupEnd: see ncclGroupStart.
#[no_mangle]
pub extern "C" fn ncclGroupEnd() -> NcclResult {
    guard("ncclGroupEnd", || {
        interpose::group_leave();
        let Some(f) = real().group_end else { return missing("ncclGroupEnd") };
        // SAFETY: no arguments.
        unsafe { f() }
    })
}
