//! Who holds which leaf: one record per running flexmig task, the contract between the SPANK
//! plugin that writes it and `flexmig-gres-helper status` that reads it.
//!
//! Root creates `<dir>/<job>.<step>.<task>.toml` (0644, in a directory of root's that everyone
//! may read) when the task starts, the plugin fills it in once it has locked the task's leaves
//! (before the user's program runs), and root removes it when the task ends. It is a record for
//! people and monitoring, never a lock: a task killed with its slurmstepd can leave one behind,
//! so readers check that the process still lives (`pid` and `pid_start`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where the plugin keeps the records unless told otherwise (`holders_dir=`).
pub const DEFAULT_DIR: &str = "/run/flexmig-holders";

/// The record format version.
pub const VERSION: u32 = 1;

/// One task's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holder {
    pub version: u32,
    pub job: u32,
    pub step: u32,
    /// The task's id on this node (Slurm's local task id).
    pub task: u32,
    /// The task's global rank (Slurm's global task id).
    pub rank: u32,
    pub uid: u32,
    pub pid: u32,
    /// The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with the
    /// pid it names the process, even after the pid is reused.
    pub pid_start: u64,
    /// MIG UUIDs of the leaves the task holds.
    pub leaves: Vec<String>,
}

/// The record file's name for a task.
pub fn file_name(job: u32, step: u32, task: u32) -> String {
    format!("{job}.{step}.{task}.toml")
}

impl Holder {
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("a holder record serialises to TOML")
    }

    /// # Errors
    /// Not a record of this version.
    pub fn parse(text: &str) -> Result<Holder, HolderError> {
        let h: Holder = toml::from_str(text).map_err(|e| HolderError(e.message().to_string()))?;
        if h.version != VERSION {
            return Err(HolderError(format!("version {} (this flexmig reads {VERSION})", h.version)));
        }
        Ok(h)
    }
}

/// A record that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderError(pub String);

impl fmt::Display for HolderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a flexmig holder record: {}", self.0)
    }
}

impl std::error::Error for HolderError {}

/// A process's start time (/proc/<pid>/stat field 22), or None when it is gone.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The dcgm-exporter job-mapping file of a MIG instance (`--hpc-job-mapping-dir`): named
/// `<GPU index>.<GPU instance id>`, holding one job id per line.
pub fn dcgm_file_name(gpu: u32, gpu_instance: u32) -> String {
    format!("{gpu}.{gpu_instance}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_what_they_are_not() {
        let h = Holder {
            version: VERSION,
            job: 12,
            step: 0,
            task: 3,
            rank: 7,
            uid: 1001,
            pid: 4242,
            pid_start: 99,
            leaves: vec!["MIG-a".into()],
        };
        assert_eq!(Holder::parse(&h.to_toml_string()).unwrap(), h);
        assert!(Holder::parse("version = 2\n").unwrap_err().to_string().contains("not a flexmig holder record"));
        assert!(Holder::parse(&h.to_toml_string().replace("pid = 4242", "pid = 4242\nextra = 1")).is_err());
        assert_eq!(file_name(12, 0, 3), "12.0.3.toml");
        assert_eq!(dcgm_file_name(2, 13), "2.13");
    }

    /// dcgm-exporter reads only files whose names match `^\d+(\.\d+)?$` (validGPUFile in
    /// internal/pkg/transformation/hpc.go) and looks MIG metrics up as "<GPU>.<GPUInstanceID>".
    #[test]
    fn mapping_names_are_what_dcgm_exporter_reads() {
        let valid = |n: &str| match n.split_once('.') {
            Some((a, b)) => !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()),
            None => !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()),
        };
        for (g, gi) in [(0, 1), (3, 10), (7, 14)] {
            let n = dcgm_file_name(g, gi);
            assert!(valid(&n), "{n}");
            assert_eq!(n, format!("{g}.{gi}"));
        }
    }

    #[test]
    fn a_live_process_has_a_start_time_and_a_gone_one_none() {
        let me = std::process::id();
        let t = process_start(me).expect("this process");
        assert_eq!(process_start(me), Some(t));
        assert_eq!(process_start(u32::MAX - 1), None);
    }
}
