//! The helper's verbs, one module each: its flags and what it does. `main` parses the command
//! line, calls the verb and turns its [`Outcome`] or error into the exit status.

pub mod apply;
pub mod assert;
pub mod emulate;
pub mod export;
pub mod fake_node;
pub mod gres_conf;
pub mod models;
pub mod nccl;
pub mod plan;
pub mod status;
pub mod verify;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::devices::DevicePaths;
use crate::node::Node;

/// What a verb found. An error instead is exit status 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done; a check found nothing to report. Exit status 0.
    Done,
    /// A check found differences (`assert`, `verify`, an unusable `nccl status`). Exit status 1.
    Differences,
}

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Done => 0,
            Outcome::Differences => 1,
        }
    }
}

/// Exit status of bad input or a failure: the message says what is wrong and what to do.
pub const ERROR_EXIT: i32 = 2;

/// Where the node's GPUs are: flags every verb takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Use a fake node described by this TOML file instead of NVML (tests, demo).
    #[arg(long, global = true, value_name = "PATH")]
    pub fake_node: Option<PathBuf>,
    /// Directory holding the device files (nvidiaN, nvidia-caps/) as gres.conf names them.
    #[arg(long, global = true, value_name = "DIR", default_value = "/dev")]
    pub dev_root: PathBuf,
    /// The driver's MIG capability minors file.
    #[arg(long, global = true, value_name = "PATH", default_value = "/proc/driver/nvidia-caps/mig-minors")]
    pub mig_minors: PathBuf,
}

impl Global {
    /// The node: the fake one of `--fake-node`, else NVML.
    ///
    /// # Errors
    /// An unreadable or invalid fake node; NVML that cannot be loaded.
    pub fn open_node(&self) -> Result<Box<dyn Node>> {
        Ok(match &self.fake_node {
            Some(p) => Box::new(crate::fake::FileNode::load(p)?),
            None => Box::new(crate::nvml::NvmlNode::open()?),
        })
    }

    pub fn device_paths(&self) -> DevicePaths {
        DevicePaths { dev_root: self.dev_root.clone(), mig_minors: self.mig_minors.clone() }
    }
}

/// Writes the files given a path (`(path, contents, what)`) as one set: all of them or none.
/// Returns false, writing nothing, when no path was given (the caller prints instead).
///
/// # Errors
/// A file that could not be written; then none was changed.
pub fn write_file_set(files: Vec<(&Option<PathBuf>, String, &'static str)>, verb: &str) -> Result<bool> {
    let set: Vec<(leaf_model::atomic::FileWrite, &str)> = files
        .into_iter()
        .filter_map(|(path, text, what)| {
            path.as_ref().map(|p| (leaf_model::atomic::FileWrite { path: p.clone(), contents: text.into_bytes(), mode: 0o644 }, what))
        })
        .collect();
    if set.is_empty() {
        return Ok(false);
    }
    let files: Vec<_> = set.iter().map(|(f, _)| f.clone()).collect();
    leaf_model::atomic::write_set(&files).with_context(|| format!("{verb} writes its files as a set"))?;
    for (f, what) in &set {
        eprintln!("wrote {what} {}", f.path.display());
    }
    Ok(true)
}

/// This host's name up to the first dot: the NodeName Slurm usually gives it.
pub fn host_short_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().split('.').next().unwrap_or("localhost").to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Writes `text` to `path` atomically and says so on stderr; `what` names the file.
///
/// # Errors
/// The file cannot be written.
pub fn write_file(path: &Path, text: &str, what: &str) -> Result<()> {
    leaf_model::atomic::write_atomic(path, text.as_bytes(), 0o644).with_context(|| format!("writing {what} {}", path.display()))?;
    eprintln!("wrote {what} {}", path.display());
    Ok(())
}
