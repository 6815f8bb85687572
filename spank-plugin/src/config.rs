//! The plugin's configuration: the plugstack.conf arguments, the `--flexmig[=MODE]` option and
//! the node name that `%n` in a path stands for. Pure parsing, no FFI.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// What `--flexmig[=MODE]` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One leaf per task (the default).
    Rank,
    /// One task per node that gets all of the node's leaves (for launchers such as torchrun).
    Node,
    /// Do nothing (turns off a `--flexmig` inherited from `sbatch --flexmig`).
    Off,
}

impl Mode {
    /// Parses the option argument; a bare `--flexmig` (None or "") means `rank`.
    ///
    /// # Errors
    /// An unknown mode, with the list of known ones.
    pub fn parse(arg: Option<&str>) -> Result<Mode> {
        match arg.map(str::trim) {
            // `sbatch --flexmig` (no argument) exports the option to inner steps as the literal
            // text "(null)" (SLURM_SPANK__SLURM_SPANK_OPTION_flexmig_flexmig=(null)).
            None | Some("") | Some("(null)") | Some("rank") => Ok(Mode::Rank),
            Some("node") => Ok(Mode::Node),
            Some("off") => Ok(Mode::Off),
            Some(other) => Err(Error::step(format!(
                "unknown mode --flexmig={other}: use --flexmig (one MIG leaf per task), \
                 --flexmig=node (one task per node with all its leaves, for launchers like torchrun) \
                 or --flexmig=off"
            ))),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Rank => "rank",
            Mode::Node => "node",
            Mode::Off => "off",
        })
    }
}

/// The arguments after the plugin path in plugstack.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginArgs {
    /// The node inventory (`inventory=PATH`).
    pub inventory: PathBuf,
    /// A patched libnccl.so.2 put in front of the task's LD_PRELOAD (`nccl=PATH`).
    pub nccl: Option<PathBuf>,
    /// Export RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    /// (`torch_env=yes|no`, default yes).
    pub torch_env: bool,
    /// The range MASTER_PORT is drawn from (`master_ports=LO-HI`).
    pub master_ports: (u16, u16),
    /// Where the per-leaf lock files live (`lock_dir=PATH`).
    pub lock_dir: PathBuf,
    /// NCCL_MAX_NCHANNELS for single-node steps (`nccl_max_channels=N|off`, default 2), unless
    /// the user set NCCL's channel or CTA counts. A leaf has few SMs and every NCCL channel
    /// takes one while gradients are reduced during the backward pass: fewer channels gave
    /// DDP steps 0-5% more throughput on emulated leaves (BENCHMARKS.md, "Channels").
    pub nccl_max_channels: Option<u32>,
    /// flexmig's host-reduce library (`hostreduce=PATH`), put in LD_PRELOAD in front of NCCL: it
    /// takes the large all-reduces between leaves of this node off the GPUs' links and SMs.
    pub hostreduce: Option<PathBuf>,
    /// What it does by default (`hostreduce_mode=auto|on|off`, exported as FLEXMIG_HOSTREDUCE
    /// unless the user set it): `auto` takes the host path only where it was measured faster.
    pub hostreduce_mode: HostReduceMode,
    /// Where root keeps one world-readable record per running task of who holds which leaf
    /// (`holders_dir=PATH`), for `flexmig-gres-helper status` and monitoring; never for locking.
    pub holders_dir: PathBuf,
    /// dcgm-exporter's `--hpc-job-mapping-dir` (`dcgm_job_map=DIR`): each bound MIG leaf's file
    /// there holds the id of the job that holds it, so GPU metrics are labelled by job.
    pub dcgm_job_map: Option<PathBuf>,
}

/// `FLEXMIG_HOSTREDUCE` of the host-reduce library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostReduceMode {
    Auto,
    On,
    Off,
}

impl HostReduceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HostReduceMode::Auto => "auto",
            HostReduceMode::On => "on",
            HostReduceMode::Off => "off",
        }
    }
}

impl Default for PluginArgs {
    fn default() -> Self {
        PluginArgs {
            inventory: PathBuf::from(leaf_model::inventory::DEFAULT_PATH),
            nccl: None,
            torch_env: true,
            // Below Linux's ephemeral range (32768-60999), so a listening rendezvous port does
            // not collide with outgoing connections.
            master_ports: (20000, 32767),
            lock_dir: PathBuf::from("/run/flexmig"),
            nccl_max_channels: Some(DEFAULT_NCCL_MAX_CHANNELS),
            hostreduce: None,
            hostreduce_mode: HostReduceMode::Auto,
            holders_dir: PathBuf::from(leaf_model::holders::DEFAULT_DIR),
            dcgm_job_map: None,
        }
    }
}

impl PluginArgs {
    /// The arguments for one node: `%n` in a path stands for the node's Slurm name, so one
    /// plugstack.conf on a shared file system can name per-node inventories
    /// (`inventory=/etc/slurm/flexmig/%n.toml`).
    ///
    /// # Errors
    /// A path uses `%n` but the node name is unknown.
    pub fn for_node(&self, node: Option<&NodeName>) -> Result<PluginArgs> {
        let expand = |p: &std::path::Path, key: &str| -> Result<PathBuf> {
            let s = p.to_string_lossy();
            if !s.contains("%n") {
                return Ok(p.to_path_buf());
            }
            let n = node.ok_or_else(|| {
                Error::config(format!("{key}={s} in plugstack.conf uses %n, but slurmstepd did not say this node's name (SLURMD_NODENAME)"))
            })?;
            Ok(PathBuf::from(s.replace("%n", n.as_str())))
        };
        Ok(PluginArgs {
            inventory: expand(&self.inventory, "inventory")?,
            nccl: self.nccl.as_deref().map(|p| expand(p, "nccl")).transpose()?,
            hostreduce: self.hostreduce.as_deref().map(|p| expand(p, "hostreduce")).transpose()?,
            lock_dir: expand(&self.lock_dir, "lock_dir")?,
            holders_dir: expand(&self.holders_dir, "holders_dir")?,
            dcgm_job_map: self.dcgm_job_map.as_deref().map(|p| expand(p, "dcgm_job_map")).transpose()?,
            ..self.clone()
        })
    }
}

/// A node's Slurm name, checked to be a plain host name: it is put into paths that root opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeName(String);

impl NodeName {
    /// # Errors
    /// Anything but letters, digits, `-`, `_` and inner dots (no `/`, no `..`, no leading dot).
    pub fn parse(name: &str) -> Result<NodeName> {
        let plain = !name.is_empty()
            && name.len() <= 255
            && !name.starts_with(['.', '-'])
            && !name.contains("..")
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !plain {
            return Err(Error::node(format!(
                "the node name `{}` is not a plain host name (letters, digits, `-`, `_`, inner dots), so it cannot stand for %n in a path",
                name.escape_default()
            )));
        }
        Ok(NodeName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const KEYS: &str =
    "inventory=PATH, nccl=PATH, torch_env=yes|no, master_ports=LO-HI, lock_dir=PATH, nccl_max_channels=N|off, hostreduce=PATH, hostreduce_mode=auto|on|off, holders_dir=PATH, dcgm_job_map=DIR";

/// NCCL_MAX_NCHANNELS exported to single-node steps unless configured otherwise.
pub const DEFAULT_NCCL_MAX_CHANNELS: u32 = 2;

impl PluginArgs {
    /// Parses `key=value` arguments strictly.
    ///
    /// # Errors
    /// An unknown key, a missing `=`, a repeated key, or a bad value; the message names the
    /// argument and the plugstack.conf line to fix.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<PluginArgs> {
        let mut out = PluginArgs::default();
        let mut seen = Vec::new();
        for raw in args {
            let raw = raw.as_ref();
            let bad = |why: String| {
                Error::config(format!("bad argument `{raw}` in plugstack.conf: {why}; fix the flexmig line of plugstack.conf"))
            };
            let (key, value) = raw.split_once('=').ok_or_else(|| bad(format!("expected key=value; known keys: {KEYS}")))?;
            if seen.contains(&key) {
                return Err(bad(format!("`{key}` is given twice")));
            }
            seen.push(key);
            match key {
                "inventory" => out.inventory = absolute_path(value).map_err(bad)?,
                "nccl" => out.nccl = Some(absolute_path(value).map_err(bad)?),
                "torch_env" => out.torch_env = yes_no(value).map_err(bad)?,
                "master_ports" => out.master_ports = port_range(value).map_err(bad)?,
                "lock_dir" => out.lock_dir = absolute_path(value).map_err(bad)?,
                "nccl_max_channels" => out.nccl_max_channels = channels(value).map_err(bad)?,
                "hostreduce" => out.hostreduce = Some(absolute_path(value).map_err(bad)?),
                "holders_dir" => out.holders_dir = absolute_path(value).map_err(bad)?,
                "dcgm_job_map" => out.dcgm_job_map = Some(absolute_path(value).map_err(bad)?),
                "hostreduce_mode" => {
                    out.hostreduce_mode = match value {
                        "auto" => HostReduceMode::Auto,
                        "on" => HostReduceMode::On,
                        "off" => HostReduceMode::Off,
                        _ => return Err(bad(format!("`{value}` is not auto, on or off"))),
                    }
                }
                _ => return Err(bad(format!("unknown key `{key}`; known keys: {KEYS}"))),
            }
        }
        Ok(out)
    }
}

fn absolute_path(v: &str) -> Result<PathBuf, String> {
    if v.split('/').any(|c| c == "..") {
        return Err(format!("`{v}` holds `..`"));
    }
    if v.is_empty() {
        return Err("the path is empty".into());
    }
    if !v.starts_with('/') {
        return Err(format!("`{v}` is not an absolute path"));
    }
    Ok(PathBuf::from(v))
}

fn yes_no(v: &str) -> Result<bool, String> {
    match v {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        _ => Err(format!("`{v}` is not yes or no")),
    }
}

fn channels(v: &str) -> Result<Option<u32>, String> {
    match v {
        "off" | "no" => Ok(None),
        _ => match v.parse::<u32>() {
            Ok(n @ 1..=64) => Ok(Some(n)),
            _ => Err(format!("`{v}` is not a channel count 1-64 or `off`")),
        },
    }
}

fn port_range(v: &str) -> Result<(u16, u16), String> {
    let err = || format!("`{v}` is not a port range LO-HI with 1024 <= LO <= HI <= 65535");
    let (lo, hi) = v.split_once('-').ok_or_else(err)?;
    let lo: u16 = lo.parse().map_err(|_| err())?;
    let hi: u16 = hi.parse().map_err(|_| err())?;
    if lo < 1024 || lo > hi {
        return Err(err());
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(Mode::parse(None).unwrap(), Mode::Rank);
        assert_eq!(Mode::parse(Some("")).unwrap(), Mode::Rank);
        assert_eq!(Mode::parse(Some("(null)")).unwrap(), Mode::Rank);
        assert_eq!(Mode::parse(Some("rank")).unwrap(), Mode::Rank);
        assert_eq!(Mode::parse(Some("node")).unwrap(), Mode::Node);
        assert_eq!(Mode::parse(Some("off")).unwrap(), Mode::Off);
        let e = Mode::parse(Some("ranks")).unwrap_err().to_string();
        assert!(e.contains("--flexmig=ranks") && e.contains("--flexmig=node"), "{e}");
    }

    #[test]
    fn default_args() {
        let a = PluginArgs::parse::<&str>(&[]).unwrap();
        assert_eq!(a, PluginArgs::default());
        assert_eq!(a.inventory, PathBuf::from("/etc/slurm/flexmig.toml"));
    }

    #[test]
    fn all_keys() {
        let a = PluginArgs::parse(&[
            "inventory=/x/inv.toml",
            "nccl=/opt/nccl/lib/libnccl.so.2",
            "torch_env=no",
            "master_ports=30000-30010",
            "lock_dir=/tmp/l",
        ])
        .unwrap();
        assert_eq!(a.lock_dir, PathBuf::from("/tmp/l"));
        assert_eq!(a.inventory, PathBuf::from("/x/inv.toml"));
        assert_eq!(a.nccl, Some(PathBuf::from("/opt/nccl/lib/libnccl.so.2")));
        assert!(!a.torch_env);
        assert_eq!(a.master_ports, (30000, 30010));
        assert_eq!(a.nccl_max_channels, Some(DEFAULT_NCCL_MAX_CHANNELS), "on by default");
        assert_eq!(PluginArgs::parse(&["nccl_max_channels=off"]).unwrap().nccl_max_channels, None);
        assert_eq!(PluginArgs::parse(&["nccl_max_channels=4"]).unwrap().nccl_max_channels, Some(4));
        let h = PluginArgs::parse(&["hostreduce=/opt/flexmig/lib/libflexmig_hostreduce.so", "hostreduce_mode=on"]).unwrap();
        assert_eq!(
            (h.hostreduce.as_deref(), h.hostreduce_mode),
            (Some(std::path::Path::new("/opt/flexmig/lib/libflexmig_hostreduce.so")), HostReduceMode::On)
        );
        assert_eq!(PluginArgs::default().hostreduce_mode, HostReduceMode::Auto);
        let m = PluginArgs::parse(&["holders_dir=/run/h/%n", "dcgm_job_map=/run/dcgm-job-map"]).unwrap();
        assert_eq!(m.holders_dir, PathBuf::from("/run/h/%n"));
        assert_eq!(m.dcgm_job_map, Some(PathBuf::from("/run/dcgm-job-map")));
        assert_eq!(PluginArgs::default().holders_dir, PathBuf::from("/run/flexmig-holders"));
    }

    #[test]
    fn node_name_expansion() {
        let a = PluginArgs::parse(&["inventory=/etc/slurm/flexmig/%n.toml", "lock_dir=/run/flexmig/%n"]).unwrap();
        let b = a.for_node(Some(&NodeName::parse("gpu07").unwrap())).unwrap();
        assert_eq!(b.inventory, PathBuf::from("/etc/slurm/flexmig/gpu07.toml"));
        assert_eq!(b.lock_dir, PathBuf::from("/run/flexmig/gpu07"));
        assert!(a.for_node(None).unwrap_err().to_string().contains("%n"));
        let plain = PluginArgs::default();
        assert_eq!(plain.for_node(None).unwrap(), plain);
    }

    #[test]
    fn strict_errors_name_the_argument() {
        for (arg, needle) in [
            ("inventry=/x", "unknown key `inventry`"),
            ("inventory", "expected key=value"),
            ("inventory=relative.toml", "not an absolute path"),
            ("nccl=", "empty"),
            ("torch_env=maybe", "not yes or no"),
            ("master_ports=80-90", "port range"),
            ("master_ports=3000", "port range"),
            ("master_ports=4000-3000", "port range"),
            ("nccl_max_channels=0", "channel count"),
            ("nccl_max_channels=65", "channel count"),
            ("nccl_max_channels=many", "channel count"),
            ("hostreduce=lib.so", "not an absolute path"),
            ("hostreduce_mode=fast", "not auto, on or off"),
        ] {
            let e = PluginArgs::parse(&[arg]).unwrap_err().to_string();
            assert!(e.starts_with("flexmig: bad argument") && e.contains(arg) && e.contains(needle), "{arg}: {e}");
        }
        let e = PluginArgs::parse(&["torch_env=no", "torch_env=yes"]).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        assert!(PluginArgs::parse(&["lock_dir=/run/../etc"]).unwrap_err().to_string().contains("`..`"));
    }

    #[test]
    fn node_names_are_plain_host_names() {
        for ok in ["localhost", "gpu07", "n1.cluster", "rack-2_n03"] {
            assert_eq!(NodeName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "..", "../../x/d", "a/b", ".hidden", "-n", "a..b", "n\n", "n 1", "\0"] {
            let e = NodeName::parse(bad).unwrap_err().to_string();
            assert!(e.contains("not a plain host name"), "{bad}: {e}");
        }
    }
}
