//! The CUDA driver API, resolved at run time (no link-time dependency: the library loads on a
//! machine without CUDA, and CI builds it without one). libcuda.so.1 is the one the application
//! already loaded; entry points come from `cuGetProcAddress` at the CUDA 12.0 ABI (the `_v2` forms
//! of the stream memory operations and host registration), falling back to plain `dlsym`.

use crate::ffi::shm::{Counter, Segment};
use crate::pipeline::{Side, Streams};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

pub type CuResult = c_int;
pub type DevPtr = u64;

/// A CUDA stream handle (the caller's, or one of ours).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream(pub *mut c_void);
/// A CUDA event handle.
#[derive(Clone, Copy, Debug)]
pub struct Event(*mut c_void);

// SAFETY: CUDA handles are opaque tokens usable from any thread of the process; this library only
// uses them from the application's threads, inside NCCL calls.
unsafe impl Send for Stream {}
// SAFETY: as above.
unsafe impl Sync for Stream {}
// SAFETY: as above.
unsafe impl Send for Event {}
// SAFETY: as above.
unsafe impl Sync for Event {}

const CU_STREAM_NON_BLOCKING: c_uint = 1;
const CU_EVENT_DISABLE_TIMING: c_uint = 2;
const CU_MEMHOSTREGISTER_PORTABLE: c_uint = 1;
const CU_MEMHOSTREGISTER_DEVICEMAP: c_uint = 2;
const CU_STREAM_WAIT_VALUE_GEQ: c_uint = 0;
const CU_STREAM_WRITE_VALUE_DEFAULT: c_uint = 0;
const CU_STREAM_CAPTURE_STATUS_NONE: c_int = 0;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("CUDA driver not usable: {0}")]
    Load(String),
    #[error("{call} failed: CUDA error {code} ({name})")]
    Call { call: &'static str, code: CuResult, name: String },
}

macro_rules! driver_table {
    ($($field:ident : $sym:literal fn($($arg:ty),*);)*) => {
        /// The driver entry points this library calls.
        #[allow(non_snake_case)]
        struct Driver {
            $($field: unsafe extern "C" fn($($arg),*) -> CuResult,)*
            get_error_name: Option<unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult>,
        }

        impl Driver {
            #[allow(non_snake_case)]
            fn load() -> Result<Driver, CudaError> {
                // SAFETY: dlopen of the driver library by its soname; RTLD_NOLOAD first, so that the
                // application's own copy is used when it has one.
                let lib = unsafe {
                    let name = c"libcuda.so.1".as_ptr();
                    let h = libc::dlopen(name, libc::RTLD_NOW | libc::RTLD_NOLOAD);
                    if h.is_null() { libc::dlopen(name, libc::RTLD_NOW | libc::RTLD_GLOBAL) } else { h }
                };
                if lib.is_null() {
                    return Err(CudaError::Load("libcuda.so.1 not found".into()));
                }
                type GetProc = unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64, *mut c_int) -> CuResult;
                // SAFETY: dlsym on a valid handle; the symbol, if present, has cuGetProcAddress_v2's signature.
                let get_proc: Option<GetProc> = unsafe {
                    let p = libc::dlsym(lib, c"cuGetProcAddress_v2".as_ptr());
                    if p.is_null() { None } else { Some(std::mem::transmute::<*mut c_void, GetProc>(p)) }
                };
                let resolve = |base: &CStr, versioned: &CStr| -> *mut c_void {
                    let mut p: *mut c_void = std::ptr::null_mut();
                    if let Some(gp) = get_proc {
                        let mut status: c_int = 0;
                        // SAFETY: cuGetProcAddress_v2 writes a function pointer (or nothing) into p.
                        let rc = unsafe { gp(base.as_ptr(), &mut p, 12000, 0, &mut status) };
                        if rc != 0 || status != 0 {
                            p = std::ptr::null_mut();
                        }
                    }
                    if p.is_null() {
                        // SAFETY: dlsym on a valid handle.
                        p = unsafe { libc::dlsym(lib, versioned.as_ptr()) };
                    }
                    p
                };
                $(
                    let base = CStr::from_bytes_with_nul(concat!(stringify!($field), "\0").as_bytes()).expect("no NUL inside");
                    let versioned = CStr::from_bytes_with_nul(concat!($sym, "\0").as_bytes()).expect("no NUL inside");
                    let p = resolve(base, versioned);
                    if p.is_null() {
                        return Err(CudaError::Load(format!("{} not found in libcuda.so.1", $sym)));
                    }
                    // SAFETY: the driver's entry point of that name has exactly this C signature (cuda.h, 12.0 ABI).
                    let $field = unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) -> CuResult>(p) };
                )*
                let gen = resolve(c"cuGetErrorName", c"cuGetErrorName");
                // SAFETY: as above, cuGetErrorName(CUresult, const char**).
                let get_error_name = (!gen.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult>(gen) });
                Ok(Driver { $($field,)* get_error_name })
            }
        }
    };
}

driver_table! {
    cuCtxGetCurrent: "cuCtxGetCurrent" fn(*mut *mut c_void);
    cuCtxGetDevice: "cuCtxGetDevice" fn(*mut c_int);
    cuDeviceGetPCIBusId: "cuDeviceGetPCIBusId" fn(*mut c_char, c_int, c_int);
    cuStreamCreate: "cuStreamCreate" fn(*mut *mut c_void, c_uint);
    cuStreamDestroy: "cuStreamDestroy_v2" fn(*mut c_void);
    cuStreamSynchronize: "cuStreamSynchronize" fn(*mut c_void);
    cuStreamIsCapturing: "cuStreamIsCapturing" fn(*mut c_void, *mut c_int);
    cuStreamWaitEvent: "cuStreamWaitEvent" fn(*mut c_void, *mut c_void, c_uint);
    cuStreamWaitValue64: "cuStreamWaitValue64_v2" fn(*mut c_void, DevPtr, u64, c_uint);
    cuStreamWriteValue64: "cuStreamWriteValue64_v2" fn(*mut c_void, DevPtr, u64, c_uint);
    cuEventCreate: "cuEventCreate" fn(*mut *mut c_void, c_uint);
    cuEventDestroy: "cuEventDestroy_v2" fn(*mut c_void);
    cuEventRecord: "cuEventRecord" fn(*mut c_void, *mut c_void);
    cuMemHostRegister: "cuMemHostRegister_v2" fn(*mut c_void, usize, c_uint);
    cuMemHostUnregister: "cuMemHostUnregister" fn(*mut c_void);
    cuMemHostGetDevicePointer: "cuMemHostGetDevicePointer_v2" fn(*mut DevPtr, *mut c_void, c_uint);
    cuMemcpyAsync: "cuMemcpyAsync" fn(DevPtr, DevPtr, usize, *mut c_void);
    cuMemAlloc: "cuMemAlloc_v2" fn(*mut DevPtr, usize);
    cuMemFree: "cuMemFree_v2" fn(DevPtr);
    cuMemcpyHtoD: "cuMemcpyHtoD_v2" fn(DevPtr, *const c_void, usize);
    cuMemcpyDtoH: "cuMemcpyDtoH_v2" fn(*mut c_void, DevPtr, usize);
}

static DRIVER: OnceLock<Result<Driver, String>> = OnceLock::new();

fn driver() -> Result<&'static Driver, CudaError> {
    DRIVER.get_or_init(|| Driver::load().map_err(|e| e.to_string())).as_ref().map_err(|e| CudaError::Load(e.clone()))
}

fn check(call: &'static str, code: CuResult) -> Result<(), CudaError> {
    if code == 0 {
        return Ok(());
    }
    let mut name: *const c_char = std::ptr::null();
    if let Ok(Some(f)) = driver().map(|d| d.get_error_name) {
        // SAFETY: cuGetErrorName stores a pointer to a static string (or leaves it null).
        unsafe { f(code, &mut name) };
    }
    let name = if name.is_null() {
        "unknown".to_string()
    } else {
        // SAFETY: a NUL-terminated static string from the driver.
        unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
    };
    Err(CudaError::Call { call, code, name })
}

/// Calls driver entry point `$f` of the loaded table with `$args`, mapping its status.
macro_rules! cu {
    ($f:ident($($a:expr),*)) => {{
        let d = driver()?;
        // SAFETY: the arguments satisfy the entry point's contract as documented at each call site
        // (valid handles of the current context, pointers to live memory of the stated length).
        check(stringify!($f), unsafe { (d.$f)($($a),*) })
    }};
}

/// Whether the calling thread has a current CUDA context (it has, inside NCCL calls of an
/// application that initialised CUDA).
pub fn has_context() -> Result<bool, CudaError> {
    let mut ctx: *mut c_void = std::ptr::null_mut();
    cu!(cuCtxGetCurrent(&mut ctx))?;
    Ok(!ctx.is_null())
}

/// The PCI bus id ("0000:3B:00.0") of the current context's device.
pub fn current_pci_bus_id() -> Result<String, CudaError> {
    let mut dev: c_int = 0;
    cu!(cuCtxGetDevice(&mut dev))?;
    let mut buf = [0 as c_char; 32];
    cu!(cuDeviceGetPCIBusId(buf.as_mut_ptr(), buf.len() as c_int, dev))?;
    // SAFETY: the driver wrote a NUL-terminated string into buf, which is longer than any bus id.
    Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

pub fn stream_create() -> Result<Stream, CudaError> {
    let mut s: *mut c_void = std::ptr::null_mut();
    cu!(cuStreamCreate(&mut s, CU_STREAM_NON_BLOCKING))?;
    Ok(Stream(s))
}
pub fn stream_destroy(s: Stream) -> Result<(), CudaError> {
    cu!(cuStreamDestroy(s.0))
}
pub fn stream_synchronize(s: Stream) -> Result<(), CudaError> {
    cu!(cuStreamSynchronize(s.0))
}
/// Whether `s` is being captured into a CUDA graph (then nothing may be enqueued that the graph
/// cannot replay: the host path's rounds are not replayable).
pub fn is_capturing(s: Stream) -> Result<bool, CudaError> {
    let mut status: c_int = 0;
    cu!(cuStreamIsCapturing(s.0, &mut status))?;
    Ok(status != CU_STREAM_CAPTURE_STATUS_NONE)
}
pub fn event_create() -> Result<Event, CudaError> {
    let mut e: *mut c_void = std::ptr::null_mut();
    cu!(cuEventCreate(&mut e, CU_EVENT_DISABLE_TIMING))?;
    Ok(Event(e))
}
pub fn event_destroy(e: Event) -> Result<(), CudaError> {
    cu!(cuEventDestroy(e.0))
}
/// `waiter` waits (on the device) for everything `s` holds now.
pub fn stream_wait_stream(waiter: Stream, s: Stream, via: Event) -> Result<(), CudaError> {
    cu!(cuEventRecord(via.0, s.0))?;
    cu!(cuStreamWaitEvent(waiter.0, via.0, 0))
}

/// Pins and maps a segment for the device; returns its device address.
pub fn register(seg: &Segment) -> Result<DevPtr, CudaError> {
    // SAFETY (for cu!): base..base+len is the segment's live mapping, page aligned.
    cu!(cuMemHostRegister(seg.base() as *mut c_void, seg.len(), CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP))?;
    let mut d: DevPtr = 0;
    if let Err(e) = cu!(cuMemHostGetDevicePointer(&mut d, seg.base() as *mut c_void, 0)) {
        let _ = unregister(seg);
        return Err(e);
    }
    Ok(d)
}
pub fn unregister(seg: &Segment) -> Result<(), CudaError> {
    cu!(cuMemHostUnregister(seg.base() as *mut c_void))
}

/// A device buffer for the small exchanges at communicator creation, freed on drop.
#[derive(Debug)]
pub struct DeviceBuffer {
    pub ptr: DevPtr,
    len: usize,
}

impl DeviceBuffer {
    pub fn new(len: usize) -> Result<DeviceBuffer, CudaError> {
        let mut ptr: DevPtr = 0;
        cu!(cuMemAlloc(&mut ptr, len.max(1)))?;
        Ok(DeviceBuffer { ptr, len })
    }
    pub fn write(&self, src: &[u8]) -> Result<(), CudaError> {
        assert!(src.len() <= self.len);
        cu!(cuMemcpyHtoD(self.ptr, src.as_ptr() as *const c_void, src.len()))
    }
    pub fn read(&self, dst: &mut [u8]) -> Result<(), CudaError> {
        assert!(dst.len() <= self.len);
        cu!(cuMemcpyDtoH(dst.as_mut_ptr() as *mut c_void, self.ptr, dst.len()))
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        let free = || cu!(cuMemFree(self.ptr));
        let _ = free();
    }
}

/// One call's stream operations on the GPU: the copies by copy engine on our down and up streams,
/// waits and signals as stream memory operations on the segment's counters.
#[derive(Debug)]
pub struct GpuCall<'a> {
    pub seg: &'a Segment,
    pub seg_dev: DevPtr,
    pub down: Stream,
    pub up: Stream,
    pub send: DevPtr,
    pub recv: DevPtr,
}

impl GpuCall<'_> {
    fn dev(&self, host: *const u8) -> DevPtr {
        self.seg_dev + (host as usize - self.seg.base() as usize) as u64
    }
    fn stream(&self, side: Side) -> Stream {
        match side {
            Side::Down => self.down,
            Side::Up => self.up,
        }
    }
}

impl Streams for GpuCall<'_> {
    type Error = CudaError;
    fn wait_geq(&mut self, side: Side, slot: usize, c: Counter, value: u64) -> Result<(), CudaError> {
        let addr = self.dev(self.seg.counter_addr(slot, c) as *const u8);
        cu!(cuStreamWaitValue64(self.stream(side).0, addr, value, CU_STREAM_WAIT_VALUE_GEQ))
    }
    fn write(&mut self, side: Side, slot: usize, c: Counter, value: u64) -> Result<(), CudaError> {
        let addr = self.dev(self.seg.counter_addr(slot, c) as *const u8);
        cu!(cuStreamWriteValue64(self.stream(side).0, addr, value, CU_STREAM_WRITE_VALUE_DEFAULT))
    }
    fn copy_down(&mut self, offset: usize, slot: usize, len: usize) -> Result<(), CudaError> {
        let dst = self.dev(self.seg.slot_addr(slot, self.seg.rank()));
        cu!(cuMemcpyAsync(dst, self.send + offset as u64, len, self.down.0))
    }
    fn copy_up(&mut self, slot: usize, offset: usize, len: usize) -> Result<(), CudaError> {
        let src = self.dev(self.seg.slot_addr(slot, self.seg.geometry().nranks));
        cu!(cuMemcpyAsync(self.recv + offset as u64, src, len, self.up.0))
    }
}
