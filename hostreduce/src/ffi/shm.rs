//! The shared-memory segment of one communicator: its file under /dev/shm, its mapping, and the
//! layout inside it (header, counters, slots).
//!
//! Layout, all offsets fixed by [`Geometry`]:
//! - page 0: the [`Header`] (magic, version, geometry, attach count, abort flag, the ranks' pids
//!   and process start times);
//! - counters, each a `u64` on its own cache line: per slot `reduced`, `done` (CPU shares finished),
//!   and per slot and rank `arrived` (written by the rank's stream after its copy down) and
//!   `consumed` (written by its stream after its copy up);
//! - data, page aligned: per slot, one input slot per rank and one result slot.
//!
//! Everything that touches the mapping's memory is in this file: counters are handed out as
//! `&AtomicU64` (valid for the mapping's life), data only through copies and through the two
//! `unsafe fn`s whose contract the chunk protocol (pipeline.rs) keeps.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// "flexmHR1" as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"flexmHR1");
pub const VERSION: u32 = 4;
/// Ranks per communicator the header has room for (8 GPUs x 7 leaves = 56 on the largest node).
pub const MAX_RANKS: usize = 64;
const PAGE: usize = 4096;
const LINE: usize = 64;

/// The shape of a segment: ranks, slots in the ring, bytes per slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub nranks: usize,
    pub depth: usize,
    pub slot_bytes: usize,
}

/// Which counter of a slot (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// The round whose result is complete in the slot (round + 1); one per slot.
    Reduced,
    /// Pieces of the CPU reduce finished, counted over all rounds of the slot; one per slot.
    Done,
    /// The next piece of the CPU reduce to hand out, with the use of the slot it belongs to
    /// (see [`crate::pipeline::claim_piece`]); one per slot.
    Claim,
    /// The round whose input this rank has copied into the slot (round + 1).
    Arrived(usize),
    /// The round whose result this rank has copied out of the slot (round + 1).
    Consumed(usize),
    /// What this rank's call of the slot's current round is (see [`crate::pipeline::signature`]),
    /// written by its copy down before `Arrived`.
    Sig(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("geometry {0:?} is invalid: 1..={MAX_RANKS} ranks, depth >= 2, slot bytes a non-zero multiple of {PAGE}")]
    BadGeometry(Geometry),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("shared segment {0} already exists (another communicator with the same id, or a leftover): not reusing it")]
    Exists(PathBuf),
    #[error("shared segment {path} did not appear within {secs} s (rank 0 never created it)")]
    NotCreated { path: PathBuf, secs: u64 },
    #[error("shared segment {path} is not ours or not this communicator's: {why}")]
    Mismatch { path: PathBuf, why: String },
    #[error("only {attached} of {nranks} ranks mapped {path} within {secs} s")]
    AttachTimeout { path: PathBuf, attached: u32, nranks: usize, secs: u64 },
}

/// The first page of the segment. Written by rank 0 before the file gets its final name, read by
/// the others after they open it.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub nranks: AtomicU32,
    pub depth: AtomicU32,
    _pad: AtomicU32,
    pub slot_bytes: AtomicU64,
    /// Ranks that have mapped the segment; the one that makes it `nranks` unlinks the name.
    pub attached: AtomicU32,
    /// 0 while healthy; otherwise an [`crate::pipeline::AbortReason`] code in the low 8 bits and
    /// the rank the abort is about (the dead one, or the one that aborted) above them, set together
    /// by one compare-exchange. Never goes back to 0.
    pub abort: AtomicU32,
    /// Unused (up to version 3, the abort's rank, written after the flag).
    _unused: AtomicU32,
    _pad2: AtomicU32,
    pub pids: [AtomicU32; MAX_RANKS],
    /// Process start time (clock ticks after boot, /proc/PID/stat field 22): a reused pid is not the peer.
    pub start_times: [AtomicU64; MAX_RANKS],
}

const _: () = assert!(std::mem::size_of::<Header>() <= PAGE);

impl Geometry {
    pub fn check(&self) -> Result<(), ShmError> {
        if self.nranks == 0 || self.nranks > MAX_RANKS || self.depth < 2 || self.slot_bytes == 0 || self.slot_bytes % PAGE != 0 {
            return Err(ShmError::BadGeometry(*self));
        }
        Ok(())
    }
    fn counters_per_slot(&self) -> usize {
        3 + 3 * self.nranks
    }
    fn counter_offset(&self, slot: usize, c: Counter) -> usize {
        let i = match c {
            Counter::Reduced => 0,
            Counter::Done => 1,
            Counter::Claim => 2,
            Counter::Arrived(r) => 3 + r,
            Counter::Consumed(r) => 3 + self.nranks + r,
            Counter::Sig(r) => 3 + 2 * self.nranks + r,
        };
        PAGE + (slot * self.counters_per_slot() + i) * LINE
    }
    fn data_offset(&self) -> usize {
        (PAGE + self.depth * self.counters_per_slot() * LINE).div_ceil(PAGE) * PAGE
    }
    /// Offset of rank `rank`'s input slot `slot`; `rank == nranks` is the result slot.
    pub fn slot_offset(&self, slot: usize, rank: usize) -> usize {
        self.data_offset() + (slot * (self.nranks + 1) + rank) * self.slot_bytes
    }
    pub fn total_bytes(&self) -> usize {
        self.slot_offset(self.depth, 0)
    }
}

/// The segment's name for a communicator: job and step (so concurrent steps never meet) and a
/// hash of the communicator's unique id (random per communicator).
pub fn segment_path(dir: &Path, job: &str, step: &str, id_hash: u64) -> PathBuf {
    dir.join(format!("flexmig-hr-{job}.{step}-{id_hash:016x}"))
}

/// One mapping of a segment.
#[derive(Debug)]
pub struct Segment {
    base: *mut u8,
    len: usize,
    geometry: Geometry,
    path: PathBuf,
    rank: usize,
}

// SAFETY: the mapping is plain shared memory; all access to it goes through atomics or through the
// copies and slices below, whose exclusivity the chunk protocol guarantees across threads.
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

fn cpath(p: &Path) -> CString {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).expect("segment paths have no NUL")
}

fn io_err(what: &'static str, path: &Path) -> ShmError {
    ShmError::Io { what, path: path.to_path_buf(), source: io::Error::last_os_error() }
}

/// This process's start time (field 22 of /proc/self/stat), 0 where /proc is unreadable.
pub fn start_time(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0 };
    rest.split_whitespace().nth(19).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Whether process `pid`, started at `start` (0: unknown), still runs: it exists, is not a zombie,
/// and (where both are known) has the same start time, so a reused pid does not count.
pub fn process_alive(pid: u32, start: u64) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let Some((_, rest)) = stat.rsplit_once(')') else { return true };
            let mut f = rest.split_whitespace();
            let state = f.next().unwrap_or("R");
            let now: u64 = f.nth(18).and_then(|s| s.parse().ok()).unwrap_or(0);
            !matches!(state, "Z" | "X" | "x") && (start == 0 || now == 0 || now == start)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        // /proc hidden: ask the kernel whether the pid exists at all.
        // SAFETY: kill with signal 0 sends nothing; it only checks that the pid exists.
        Err(_) => unsafe { libc::kill(pid as libc::pid_t, 0) == 0 || *libc::__errno_location() != libc::ESRCH },
    }
}

/// Lets the calling thread's short sleeps end close to when they were asked to (the default timer
/// slack of 50 µs would more than double a 20 µs pause).
pub fn set_timer_slack(ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK only changes a scheduling setting of the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong);
    }
}

/// The CPUs this process may run on (its affinity mask); empty if the kernel does not say.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// Keeps the calling thread on `cpus` (ignored where that fails: the thread then runs anywhere).
pub fn pin_current_thread(cpus: &[usize]) {
    // SAFETY: the set is built from CPU numbers below CPU_SETSIZE and only affects this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPUs online on this machine.
pub fn online_cpus() -> usize {
    // SAFETY: sysconf only reads a system setting.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        1
    }
}

impl Segment {
    fn map(fd: libc::c_int, len: usize, path: &Path) -> Result<*mut u8, ShmError> {
        // SAFETY: a fresh shared mapping of a file we hold open; the kernel picks the address.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(io_err("mapping", path));
        }
        Ok(p as *mut u8)
    }

    /// Rank 0: creates the segment (mode 0600, never an existing file), fills the header and the
    /// counters (all zero) and only then gives it its name, so that no rank opens it half made.
    ///
    /// # Errors
    /// [`ShmError::Exists`] when the name is taken, I/O errors from the file system.
    pub fn create(path: &Path, geometry: Geometry) -> Result<Segment, ShmError> {
        geometry.check()?;
        let len = geometry.total_bytes();
        let tmp = PathBuf::from(format!("{}.tmp{}", path.display(), std::process::id()));
        let ctmp = cpath(&tmp);
        // An unnamed file (O_TMPFILE) is invisible until it is linked under its final name, so no
        // other user learns the name early or meets the file half made; a named temporary is the
        // fallback where the file system lacks O_TMPFILE.
        let dir = cpath(path.parent().unwrap_or(Path::new("/")));
        // SAFETY: plain open(2) of a NUL-terminated directory path.
        let unnamed = unsafe { libc::open(dir.as_ptr(), libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC, 0o600 as libc::c_uint) };
        let fd = if unnamed >= 0 {
            unnamed
        } else {
            // SAFETY: plain open(2) of a NUL-terminated path.
            let fd =
                unsafe { libc::open(ctmp.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC, 0o600 as libc::c_uint) };
            if fd < 0 {
                return Err(io_err("creating", &tmp));
            }
            fd
        };
        let named_tmp = unnamed < 0;
        let cleanup = |e: ShmError| {
            // SAFETY: the fd is ours and the path NUL-terminated; removing our own temporary file.
            unsafe {
                libc::close(fd);
                if named_tmp {
                    libc::unlink(ctmp.as_ptr());
                }
            }
            e
        };
        // SAFETY: fd is open for writing. tmpfs allocates pages on first touch; posix_fallocate
        // reserves them now, so a full /dev/shm fails here instead of with SIGBUS later.
        let rc = unsafe { libc::posix_fallocate(fd, 0, len as libc::off_t) };
        if rc != 0 {
            return Err(cleanup(ShmError::Io { what: "sizing", path: tmp.clone(), source: io::Error::from_raw_os_error(rc) }));
        }
        let base = Self::map(fd, len, &tmp).map_err(cleanup)?;
        let seg = Segment { base, len, geometry, path: path.to_path_buf(), rank: 0 };
        let h = seg.header();
        h.version.store(VERSION, Ordering::Relaxed);
        h.nranks.store(geometry.nranks as u32, Ordering::Relaxed);
        h.depth.store(geometry.depth as u32, Ordering::Relaxed);
        h.slot_bytes.store(geometry.slot_bytes as u64, Ordering::Relaxed);
        seg.register_self();
        h.attached.store(1, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        let cfinal = cpath(path);
        // Atomic, and fails instead of replacing; the unnamed file is linked through /proc, which
        // needs no privilege (AT_EMPTY_PATH would).
        let source = if named_tmp { ctmp.clone() } else { cpath(Path::new(&format!("/proc/self/fd/{fd}"))) };
        // SAFETY: linkat(2) of two NUL-terminated paths.
        let linked = unsafe { libc::linkat(libc::AT_FDCWD, source.as_ptr(), libc::AT_FDCWD, cfinal.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
        let err = io::Error::last_os_error();
        // SAFETY: the mapping holds its own reference to the file; removing our temporary name.
        unsafe {
            libc::close(fd);
            if named_tmp {
                libc::unlink(ctmp.as_ptr());
            }
        }
        if linked != 0 {
            return Err(if err.raw_os_error() == Some(libc::EEXIST) {
                ShmError::Exists(path.to_path_buf())
            } else {
                ShmError::Io { what: "naming", path: path.to_path_buf(), source: err }
            });
        }
        if geometry.nranks == 1 {
            seg.unlink();
        }
        Ok(seg)
    }

    /// Ranks > 0: waits (until `timeout`) for rank 0's segment, maps it, checks that it is this
    /// communicator's, records this process and counts itself as attached; the last rank to attach
    /// removes the name.
    ///
    /// # Errors
    /// [`ShmError::NotCreated`] after the timeout, [`ShmError::Mismatch`] for a foreign segment.
    pub fn open(path: &Path, geometry: Geometry, rank: usize, timeout: Duration) -> Result<Segment, ShmError> {
        geometry.check()?;
        let len = geometry.total_bytes();
        let c = cpath(path);
        let t0 = Instant::now();
        let fd = loop {
            // SAFETY: plain open(2) of a NUL-terminated path.
            let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
            if fd >= 0 {
                break fd;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::NotFound {
                return Err(ShmError::Io { what: "opening", path: path.to_path_buf(), source: e });
            }
            if t0.elapsed() > timeout {
                return Err(ShmError::NotCreated { path: path.to_path_buf(), secs: timeout.as_secs() });
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        // SAFETY: fstat into a zeroed struct of the right type.
        let size = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) != 0 {
                libc::close(fd);
                return Err(io_err("reading the size of", path));
            }
            // Only a segment of this user's, made the way rank 0 makes it: another user's file
            // under the same name is never mapped.
            if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_uid != libc::geteuid() || st.st_mode & 0o777 != 0o600 {
                libc::close(fd);
                return Err(ShmError::Io {
                    what: "trusting (not a 0600 file of this user's)",
                    path: path.to_path_buf(),
                    source: io::Error::from_raw_os_error(libc::EPERM),
                });
            }
            st.st_size as usize
        };
        if size != len {
            // SAFETY: closing our fd.
            unsafe { libc::close(fd) };
            return Err(ShmError::Mismatch { path: path.to_path_buf(), why: format!("{size} bytes, expected {len}") });
        }
        let base = Self::map(fd, len, path);
        // SAFETY: the mapping (if any) holds its own reference to the file.
        unsafe { libc::close(fd) };
        let seg = Segment { base: base?, len, geometry, path: path.to_path_buf(), rank };
        let h = seg.header();
        let found = (
            h.magic.load(Ordering::Acquire),
            h.version.load(Ordering::Relaxed),
            h.nranks.load(Ordering::Relaxed) as usize,
            h.depth.load(Ordering::Relaxed) as usize,
            h.slot_bytes.load(Ordering::Relaxed) as usize,
        );
        if found != (MAGIC, VERSION, geometry.nranks, geometry.depth, geometry.slot_bytes) {
            return Err(ShmError::Mismatch {
                path: path.to_path_buf(),
                why: format!("header (magic, version, ranks, depth, slot) = {found:x?}"),
            });
        }
        seg.register_self();
        if h.attached.fetch_add(1, Ordering::AcqRel) + 1 == geometry.nranks as u32 {
            seg.unlink();
        }
        Ok(seg)
    }

    fn register_self(&self) {
        let pid = std::process::id();
        let h = self.header();
        h.start_times[self.rank].store(start_time(pid), Ordering::Relaxed);
        h.pids[self.rank].store(pid, Ordering::Release);
    }

    /// Rank 0: waits until every rank has mapped the segment (by then its name is gone). On timeout
    /// removes the name itself, so that nothing is left in /dev/shm.
    ///
    /// # Errors
    /// [`ShmError::AttachTimeout`].
    pub fn wait_attached(&self, timeout: Duration) -> Result<(), ShmError> {
        let t0 = Instant::now();
        loop {
            let n = self.header().attached.load(Ordering::Acquire);
            if n as usize >= self.geometry.nranks {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                self.unlink();
                return Err(ShmError::AttachTimeout {
                    path: self.path.clone(),
                    attached: n,
                    nranks: self.geometry.nranks,
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Removes the segment's name (idempotent); the memory lives until the last mapping goes.
    pub fn unlink(&self) {
        let c = cpath(&self.path);
        // SAFETY: unlink(2) of a NUL-terminated path; ENOENT (already gone) is fine.
        unsafe { libc::unlink(c.as_ptr()) };
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }
    pub fn rank(&self) -> usize {
        self.rank
    }
    /// The mapping, for registration with CUDA.
    pub fn base(&self) -> *mut u8 {
        self.base
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn header(&self) -> &Header {
        // SAFETY: the header lies at the start of the mapping (page aligned, size checked at
        // compile time), consists of atomics only, and lives as long as `self`.
        unsafe { &*(self.base as *const Header) }
    }

    pub fn counter(&self, slot: usize, c: Counter) -> &AtomicU64 {
        assert!(slot < self.geometry.depth);
        // SAFETY: the offset lies inside the counter area of the mapping (slot < depth, rank <
        // nranks by construction of Counter values), is 64-byte aligned, and lives as long as `self`.
        unsafe { &*(self.base.add(self.geometry.counter_offset(slot, c)) as *const AtomicU64) }
    }

    /// The address of a counter, for the GPU's stream memory operations.
    pub fn counter_addr(&self, slot: usize, c: Counter) -> *mut u64 {
        self.counter(slot, c) as *const AtomicU64 as *mut u64
    }

    /// The address of an input slot (`rank < nranks`) or the result slot (`rank == nranks`).
    pub fn slot_addr(&self, slot: usize, rank: usize) -> *mut u8 {
        assert!(slot < self.geometry.depth && rank <= self.geometry.nranks);
        // SAFETY: inside the mapping by the layout arithmetic.
        unsafe { self.base.add(self.geometry.slot_offset(slot, rank)) }
    }

    /// Copies `src` into this rank's input slot `slot` (the CPU-only stand-in for the GPU's copy down).
    pub fn copy_into_input(&self, slot: usize, src: &[u8]) {
        assert!(src.len() <= self.geometry.slot_bytes);
        // SAFETY: the destination lies inside this rank's input slot, which by the chunk protocol no
        // one reads until this rank's `arrived` counter says so.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.slot_addr(slot, self.rank), src.len()) }
    }

    /// Copies the start of result slot `slot` into `dst` (the stand-in for the GPU's copy up).
    pub fn copy_from_result(&self, slot: usize, dst: &mut [u8]) {
        assert!(dst.len() <= self.geometry.slot_bytes);
        // SAFETY: the source lies inside the result slot, which by the protocol no one writes until
        // every rank's `consumed` counter has passed this round.
        unsafe { std::ptr::copy_nonoverlapping(self.slot_addr(slot, self.geometry.nranks), dst.as_mut_ptr(), dst.len()) }
    }

    /// The first `len` bytes of every rank's input slot `slot`, in rank order.
    ///
    /// # Safety
    /// No one may write these bytes while the slices live: the caller has seen every rank's
    /// `arrived` counter for this round, and copies down of the next round into this slot wait for
    /// `reduced`, which the caller has not yet advanced.
    pub unsafe fn inputs(&self, slot: usize, range: std::ops::Range<usize>) -> Vec<&[u8]> {
        assert!(range.end <= self.geometry.slot_bytes);
        (0..self.geometry.nranks)
            // SAFETY: inside the mapping; exclusivity as the caller promises.
            .map(|r| unsafe { std::slice::from_raw_parts(self.slot_addr(slot, r).add(range.start), range.len()) })
            .collect()
    }

    /// Bytes `range` of result slot `slot`, to write.
    ///
    /// # Safety
    /// The caller is the only one touching these bytes while the slice lives: its share of the
    /// chunk, after every rank's `consumed` counter has passed the slot's previous round.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn result_mut(&self, slot: usize, range: std::ops::Range<usize>) -> &mut [u8] {
        assert!(range.end <= self.geometry.slot_bytes);
        // SAFETY: inside the mapping; exclusivity as the caller promises.
        unsafe { std::slice::from_raw_parts_mut(self.slot_addr(slot, self.geometry.nranks).add(range.start), range.len()) }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; no reference into it outlives `self` (all borrow it).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}
