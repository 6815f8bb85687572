//! Settings from the environment, what each rank tells the others at communicator creation, and
//! the decision all ranks take from that (the same one on every rank, since they decide from the
//! same gathered bytes).

use crate::ffi::shm::{Geometry, MAX_RANKS};
use crate::pipeline::Settings;
use std::path::PathBuf;

/// `FLEXMIG_HOSTREDUCE`: off (never), on (every all-reduce the host path can take), auto (those
/// the measured table says are faster).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    On,
    Auto,
}

/// Everything the library reads from the environment, once per communicator.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub mode: Mode,
    pub slot_bytes: usize,
    pub depth: usize,
    /// Reducer threads per rank; None: from the CPUs this process may use (see [`default_threads`]).
    pub threads: Option<usize>,
    pub shm_dir: PathBuf,
    pub table: Option<PathBuf>,
    pub debug: bool,
    /// The first and last chunk of a call, in bytes ([`crate::pipeline::chunk_lengths`]); 0: none.
    /// All ranks must agree.
    pub ramp: usize,
    /// How far this rank's copies down may run ahead of the reduce, in rounds (see
    /// [`crate::pipeline::enqueue`]); None: the depth. This rank's own choice.
    pub lead: Option<usize>,
    /// A directory for rank 0's pipeline timeline (see [`crate::trace`]); None: no timeline.
    pub trace: Option<PathBuf>,
    /// CUDA_LAUNCH_BLOCKING=1: every call synchronous; the host path's waits would then block the
    /// caller's thread on work of the reducer threads, so it stays with NCCL.
    pub launch_blocking: bool,
    pub job: String,
    pub step: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("FLEXMIG_HOSTREDUCE={0}: expected off, on or auto")]
    Mode(String),
    #[error("{name}={value}: expected {what}")]
    Number { name: &'static str, value: String, what: &'static str },
}

pub const DEFAULT_SLOT_BYTES: usize = 8 << 20;
pub const DEFAULT_DEPTH: usize = 4;

fn number(
    get: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
    what: &'static str,
    ok: fn(usize) -> bool,
) -> Result<Option<usize>, ConfigError> {
    match get(name) {
        None => Ok(None),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if ok(n) => Ok(Some(n)),
            _ => Err(ConfigError::Number { name, value: v, what }),
        },
    }
}

impl Config {
    /// Reads the settings through `get` (the environment, or a map in tests).
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable and what it takes.
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mode = match get("FLEXMIG_HOSTREDUCE").as_deref().map(str::trim) {
            None | Some("") | Some("auto") => Mode::Auto,
            Some("on") | Some("1") => Mode::On,
            Some("off") | Some("0") => Mode::Off,
            Some(v) => return Err(ConfigError::Mode(v.to_string())),
        };
        let slot_bytes =
            number(get, "FLEXMIG_HOSTREDUCE_CHUNK", "bytes, a multiple of 4096 up to 1 GiB", |n| n > 0 && n % 4096 == 0 && n <= 1 << 30)?;
        let depth = number(get, "FLEXMIG_HOSTREDUCE_DEPTH", "slots in the ring, 2 to 64", |n| (2..=64).contains(&n))?;
        let threads = number(get, "FLEXMIG_HOSTREDUCE_THREADS", "reducer threads per rank, 1 to 64", |n| (1..=64).contains(&n))?;
        let ramp = number(get, "FLEXMIG_HOSTREDUCE_RAMP", "bytes, 0 or a multiple of 4096 up to 1 GiB", |n| n % 4096 == 0 && n <= 1 << 30)?;
        let lead = number(get, "FLEXMIG_HOSTREDUCE_LEAD", "rounds a rank's copies down may run ahead of the reduce, 1 to 64", |n| {
            (1..=64).contains(&n)
        })?;
        let flag = |name: &str| matches!(get(name).as_deref().map(str::trim), Some("1") | Some("yes") | Some("true"));
        let nccl_info = matches!(get("NCCL_DEBUG").as_deref().map(str::trim), Some(v) if v.eq_ignore_ascii_case("info") || v.eq_ignore_ascii_case("trace"));
        Ok(Config {
            mode,
            slot_bytes: slot_bytes.unwrap_or(DEFAULT_SLOT_BYTES),
            depth: depth.unwrap_or(DEFAULT_DEPTH),
            threads,
            shm_dir: get("FLEXMIG_HOSTREDUCE_SHM_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/dev/shm")),
            table: get("FLEXMIG_HOSTREDUCE_TABLE").map(PathBuf::from),
            trace: get("FLEXMIG_HOSTREDUCE_TRACE").map(PathBuf::from),
            lead,
            ramp: ramp.unwrap_or(0),
            debug: flag("FLEXMIG_HOSTREDUCE_DEBUG") || nccl_info,
            launch_blocking: flag("CUDA_LAUNCH_BLOCKING"),
            job: get("SLURM_JOB_ID").unwrap_or_else(|| "nojob".into()),
            step: get("SLURM_STEP_ID").unwrap_or_else(|| "nostep".into()),
        })
    }
}

/// Reducer threads per rank when not set: this rank's share of the CPUs (the node's `k` ranks
/// may all run on the same CPUs, as without Slurm's task binding) less one for the application's
/// own thread, which launches the kernels, at least one and at most [`MAX_DEFAULT_THREADS`]. On
/// the GPU machine (16 CPUs) that is 3 / 3 / 3 / 2 / 1 at 2 / 3 / 4 / 5 / 7 leaves. Measured at
/// 16, 64 and 256 MiB against 1-4 threads in the same launches: one leaves the reduce CPU-bound at
/// 3-5 leaves, more than one loses at 7; the default was within about 5% of the best at 64 and
/// 256 MiB but for bf16 at 2 leaves and 64 MiB (0.84), and up to 14% off at 16 MiB, as far as
/// repeats of one setting spread there (bench/results/hostreduce/report.md, the thread runs).
/// Tuned with random data, no data-loader workers competing for the CPUs.
pub fn default_threads(usable_cpus: usize, online_cpus: usize, k: usize) -> usize {
    usable_cpus.min(online_cpus / k.max(1)).saturating_sub(1).clamp(1, MAX_DEFAULT_THREADS)
}

/// A cap, chosen: at 256 MiB three threads per rank were within noise of four at every k, and
/// each one more is a CPU the application may want.
pub const MAX_DEFAULT_THREADS: usize = 3;

/// FNV-1a, 64 bits: stable across processes and builds (names and fingerprints must agree between ranks).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// This machine, for "are all ranks on one node": host name and boot id, not NCCL's host hash
/// (which NCCL_HOSTID changes).
pub fn host_hash(hostname: &str, boot_id: &str) -> u64 {
    fnv1a(format!("{}\n{}", hostname.trim(), boot_id.trim()).as_bytes())
}

/// What each rank contributes to the all-gather at communicator creation (fixed size, little endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub host: u64,
    pub mode: Mode,
    pub launch_blocking: bool,
    pub slot_bytes: u64,
    pub depth: u32,
    pub threads: u32,
    pub table: u64,
    /// [`Settings::ramp`].
    pub ramp: u32,
}

pub const PEER_INFO_BYTES: usize = 48;
// A new version whenever bytes get a meaning: a peer that would ignore them must not decide alike.
const PEER_MAGIC: u32 = u32::from_le_bytes(*b"FHR2");

impl PeerInfo {
    pub fn encode(&self) -> [u8; PEER_INFO_BYTES] {
        let mut b = [0u8; PEER_INFO_BYTES];
        b[0..4].copy_from_slice(&PEER_MAGIC.to_le_bytes());
        b[4] = match self.mode {
            Mode::Off => 0,
            Mode::On => 1,
            Mode::Auto => 2,
        };
        b[5] = self.launch_blocking as u8;
        b[8..16].copy_from_slice(&self.host.to_le_bytes());
        b[16..24].copy_from_slice(&self.slot_bytes.to_le_bytes());
        b[24..28].copy_from_slice(&self.depth.to_le_bytes());
        b[28..32].copy_from_slice(&self.threads.to_le_bytes());
        b[32..40].copy_from_slice(&self.table.to_le_bytes());
        b[40..44].copy_from_slice(&self.ramp.to_le_bytes());
        b
    }

    /// None for bytes that are not a flexmig-hostreduce peer's (another library version, or junk).
    pub fn decode(b: &[u8]) -> Option<PeerInfo> {
        if b.len() != PEER_INFO_BYTES || b[0..4] != PEER_MAGIC.to_le_bytes() {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        Some(PeerInfo {
            mode: match b[4] {
                0 => Mode::Off,
                1 => Mode::On,
                2 => Mode::Auto,
                _ => return None,
            },
            launch_blocking: b[5] != 0,
            host: u64_at(8),
            slot_bytes: u64_at(16),
            depth: u32_at(24),
            threads: u32_at(28),
            table: u64_at(32),
            ramp: u32_at(40),
        })
    }
}

/// The path a communicator takes, decided identically on every rank.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Host reduction available, with these settings (the selection is then per call).
    Host { settings: Settings, mode: Mode },
    /// Everything through NCCL, and why.
    Nccl(String),
}

/// Decides from every rank's gathered [`PeerInfo`] bytes (rank order).
pub fn decide(gathered: &[Vec<u8>]) -> Decision {
    let k = gathered.len();
    if k < 2 {
        return Decision::Nccl("one rank: nothing to reduce".into());
    }
    if k > MAX_RANKS {
        return Decision::Nccl(format!("{k} ranks: more than the {MAX_RANKS} a segment holds"));
    }
    let mut infos = Vec::with_capacity(k);
    for (r, b) in gathered.iter().enumerate() {
        match PeerInfo::decode(b) {
            Some(i) => infos.push(i),
            None => return Decision::Nccl(format!("rank {r} sent no flexmig-hostreduce peer information")),
        }
    }
    let first = infos[0];
    let hosts: std::collections::HashSet<u64> = infos.iter().map(|i| i.host).collect();
    if hosts.len() > 1 {
        return Decision::Nccl(format!("ranks on {} hosts", hosts.len()));
    }
    if let Some(r) = infos.iter().position(|i| i.mode != first.mode) {
        return Decision::Nccl(format!("FLEXMIG_HOSTREDUCE differs between rank 0 ({:?}) and rank {r} ({:?})", first.mode, infos[r].mode));
    }
    if first.mode == Mode::Off {
        return Decision::Nccl("FLEXMIG_HOSTREDUCE=off".into());
    }
    if let Some(r) = infos.iter().position(|i| i.launch_blocking) {
        return Decision::Nccl(format!("CUDA_LAUNCH_BLOCKING=1 on rank {r}"));
    }
    if let Some(r) = infos.iter().position(|i| (i.slot_bytes, i.depth, i.ramp) != (first.slot_bytes, first.depth, first.ramp)) {
        return Decision::Nccl(format!("chunk size, depth or ramp differ between rank 0 and rank {r}"));
    }
    if let Some(r) = infos.iter().position(|i| i.table != first.table) {
        return Decision::Nccl(format!("selection tables differ between rank 0 and rank {r}"));
    }
    let geometry = Geometry { nranks: k, depth: first.depth as usize, slot_bytes: first.slot_bytes as usize };
    if let Err(e) = geometry.check() {
        return Decision::Nccl(e.to_string());
    }
    // Chunks must be whole elements of every type: the environment allows only such ramps.
    if first.ramp % 4096 != 0 {
        return Decision::Nccl(format!("ramp of {} bytes: not a multiple of 4096", first.ramp));
    }
    // Every rank runs the same number of reducer threads (the shares of a chunk are k x threads).
    let threads = infos.iter().map(|i| i.threads.max(1)).min().unwrap_or(1) as usize;
    Decision::Host { settings: Settings { geometry, threads, ramp: first.ramp as usize }, mode: first.mode }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| m.get(k).cloned()
    }

    #[test]
    fn defaults_and_settings_from_the_environment() {
        let c = Config::from_env(&env(&[])).unwrap();
        assert_eq!((c.mode, c.slot_bytes, c.depth, c.threads, c.debug, c.launch_blocking), (Mode::Auto, 8 << 20, 4, None, false, false));
        assert_eq!((c.job.as_str(), c.step.as_str(), c.shm_dir.to_str().unwrap()), ("nojob", "nostep", "/dev/shm"));
        let c = Config::from_env(&env(&[
            ("FLEXMIG_HOSTREDUCE", "on"),
            ("FLEXMIG_HOSTREDUCE_CHUNK", "1048576"),
            ("FLEXMIG_HOSTREDUCE_DEPTH", "3"),
            ("FLEXMIG_HOSTREDUCE_THREADS", "2"),
            ("FLEXMIG_HOSTREDUCE_LEAD", "2"),
            ("FLEXMIG_HOSTREDUCE_RAMP", "262144"),
            ("NCCL_DEBUG", "INFO"),
            ("CUDA_LAUNCH_BLOCKING", "1"),
            ("SLURM_JOB_ID", "77"),
            ("SLURM_STEP_ID", "0"),
        ]))
        .unwrap();
        assert_eq!((c.mode, c.slot_bytes, c.depth, c.threads, c.debug, c.launch_blocking), (Mode::On, 1 << 20, 3, Some(2), true, true));
        assert_eq!((c.job.as_str(), c.step.as_str(), c.lead, c.ramp), ("77", "0", Some(2), 262144));
        assert_eq!(Config::from_env(&env(&[("FLEXMIG_HOSTREDUCE", "off")])).unwrap().mode, Mode::Off);
    }

    #[test]
    fn bad_settings_name_the_variable() {
        assert_eq!(Config::from_env(&env(&[("FLEXMIG_HOSTREDUCE", "fast")])), Err(ConfigError::Mode("fast".into())));
        let e = Config::from_env(&env(&[("FLEXMIG_HOSTREDUCE_CHUNK", "1000")])).unwrap_err();
        assert_eq!(e.to_string(), "FLEXMIG_HOSTREDUCE_CHUNK=1000: expected bytes, a multiple of 4096 up to 1 GiB");
        assert!(Config::from_env(&env(&[("FLEXMIG_HOSTREDUCE_DEPTH", "1")])).is_err());
        assert!(Config::from_env(&env(&[("FLEXMIG_HOSTREDUCE_THREADS", "zero")])).is_err());
        assert!(Config::from_env(&env(&[("FLEXMIG_HOSTREDUCE_LEAD", "0")])).is_err());
        assert!(Config::from_env(&env(&[("FLEXMIG_HOSTREDUCE_RAMP", "1000")])).is_err());
    }

    #[test]
    fn default_threads_share_the_cpus() {
        // All ranks on all 16 CPUs, as on the GPU machine: 2, 3, 4, 5 and 7 leaves.
        let on_16: Vec<usize> = [2, 3, 4, 5, 7].iter().map(|&k| default_threads(16, 16, k)).collect();
        assert_eq!(on_16, [3, 3, 3, 2, 1]);
        assert_eq!(default_threads(8, 112, 7), 3); // Slurm gave this task 8 CPUs: capped
        assert_eq!(default_threads(2, 112, 7), 1); // ... or 2: one stays with the application
        assert_eq!(default_threads(1, 2, 7), 1);
        assert_eq!(default_threads(0, 0, 0), 1);
    }

    fn info() -> PeerInfo {
        PeerInfo { host: 7, mode: Mode::Auto, launch_blocking: false, slot_bytes: 2 << 20, depth: 4, threads: 2, table: 99, ramp: 1 << 18 }
    }

    #[test]
    fn peer_info_round_trips_and_junk_is_not_a_peer() {
        let i = info();
        assert_eq!(PeerInfo::decode(&i.encode()), Some(i));
        assert_eq!(PeerInfo::decode(&[0u8; PEER_INFO_BYTES]), None);
        assert_eq!(PeerInfo::decode(&i.encode()[..40]), None);
    }

    #[test]
    fn decisions() {
        let all = |f: &dyn Fn(usize, &mut PeerInfo)| -> Vec<Vec<u8>> {
            (0..4)
                .map(|r| {
                    let mut i = info();
                    f(r, &mut i);
                    i.encode().to_vec()
                })
                .collect()
        };
        let host = decide(&all(&|r, i| i.threads = if r == 2 { 1 } else { 3 }));
        let Decision::Host { settings, mode } = host else { panic!("{host:?}") };
        assert_eq!((settings.geometry, settings.threads, mode), (Geometry { nranks: 4, depth: 4, slot_bytes: 2 << 20 }, 1, Mode::Auto));
        assert_eq!(settings.ramp, 1 << 18);
        let why = |g: Vec<Vec<u8>>| match decide(&g) {
            Decision::Nccl(w) => w,
            d => panic!("{d:?}"),
        };
        assert_eq!(why(all(&|r, i| i.host = r as u64 % 2)), "ranks on 2 hosts");
        assert!(why(all(&|r, i| i.mode = if r == 3 { Mode::On } else { Mode::Auto })).contains("rank 3"));
        assert_eq!(why(all(&|_, i| i.mode = Mode::Off)), "FLEXMIG_HOSTREDUCE=off");
        assert_eq!(why(all(&|r, i| i.launch_blocking = r == 1)), "CUDA_LAUNCH_BLOCKING=1 on rank 1");
        assert!(why(all(&|r, i| i.depth = 4 + r as u32)).contains("rank 1"));
        assert!(why(all(&|r, i| i.ramp = if r == 3 { 1 << 20 } else { 0 })).contains("rank 3"));
        assert!(why(all(&|_, i| i.ramp = 1000)).contains("not a multiple of 4096"));
        // A peer of the version before ramps (its magic) is not taken for one without a ramp.
        let mut g = all(&|_, _| {});
        g[1][0..4].copy_from_slice(b"FHR1");
        assert_eq!(why(g), "rank 1 sent no flexmig-hostreduce peer information");
        assert!(why(all(&|r, i| i.table = r as u64)).contains("tables differ"));
        assert!(why(all(&|_, i| i.depth = 1)).contains("invalid"));
        let mut g = all(&|_, _| {});
        g[2] = vec![0; PEER_INFO_BYTES];
        assert_eq!(why(g), "rank 2 sent no flexmig-hostreduce peer information");
        assert_eq!(why(vec![info().encode().to_vec()]), "one rank: nothing to reduce");
    }

    #[test]
    fn hashes_are_stable() {
        // FNV-1a's published test vectors: names derived from hashes must not change between builds
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(host_hash("node1", "b1"), host_hash("node1", "b2"));
        assert_eq!(host_hash("node1\n", " b1"), host_hash("node1", "b1"));
    }
}
