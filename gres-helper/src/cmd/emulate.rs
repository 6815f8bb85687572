//! `emulate`: a flexmig node from GPUs that are not in MIG mode (test clusters, CI, a site
//! trying flexmig before it commits to MIG): each GPU cut into N emulated leaves, each a share of
//! the GPU's SMs under CUDA MPS. Writes gres.conf, the slurm.conf node line, the inventory and
//! the Lua policy as a set, and makes one device file per leaf that aliases its GPU's (same
//! major and minor, its own path), so Slurm counts N GRES per GPU and device cgroups still
//! allow the GPU.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use leaf_model::inventory::{Emulation, Gpu, Inventory, Leaf};

use super::{host_short_name, Global, Outcome};

#[derive(Debug, Args)]
pub struct EmulateArgs {
    /// Emulated leaves per GPU.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub leaves_per_gpu: u32,
    /// The leaves' GRES type (default: the GPU model's small MIG profile, e.g. 1g.18gb on an H200).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Each leaf's share of its GPU's SMs under CUDA MPS, in percent (default: 100 / N).
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub sm_percent: Option<u32>,
    /// Write gres.conf here (otherwise everything is printed and no device file is made).
    #[arg(long, value_name = "PATH")]
    pub gres_conf: Option<PathBuf>,
    /// Write the slurm.conf `NodeName=... Gres=...` line here.
    #[arg(long, value_name = "PATH")]
    pub node_conf: Option<PathBuf>,
    /// Write the node inventory the SPANK plugin reads here (usually /etc/slurm/flexmig.toml).
    #[arg(long, value_name = "PATH")]
    pub inventory: Option<PathBuf>,
    /// Write the size-aware policy for the Lua filters here.
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// NodeName for the slurm.conf line (default: this host's short name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// More slurm.conf node parameters to append, e.g. "CPUs=64 RealMemory=512000".
    #[arg(long, default_value = "")]
    pub node_options: String,
}

/// The alias device file of leaf `k` of the GPU with device minor `minor`.
fn alias(dev_root: &Path, minor: u32, k: u32) -> PathBuf {
    dev_root.join("flexmig-emu").join(format!("nvidia{minor}-leaf{k}"))
}

pub fn run(g: &Global, a: EmulateArgs) -> Result<Outcome> {
    let mut node = g.open_node()?;
    let gpus = node.gpus()?;
    if gpus.is_empty() {
        bail!("the node has no GPU");
    }
    for gpu in &gpus {
        if gpu.mig.current || gpu.mig.pending {
            bail!(
                "GPU {} ({}) is in MIG mode{}: emulated leaves are for GPUs without MIG; give it real leaves with \
                 `flexmig-gres-helper apply` and `gres-conf` instead",
                gpu.index,
                gpu.uuid,
                if gpu.mig.current { "" } else { " (pending)" }
            );
        }
    }
    let n = a.leaves_per_gpu;
    let sm_percent = a.sm_percent.unwrap_or((100 / n).max(1));
    let profile = match &a.profile {
        Some(p) => p.clone(),
        None => leaf_model::layout::plan(&gpus[0].model)
            .ok()
            .and_then(|l| l.small_profile().map(str::to_string))
            .with_context(|| format!("{} has no recorded MIG profiles: name the leaves' type with --profile", gpus[0].name))?,
    };
    if profile.is_empty() || profile.contains([':', ',', ' ']) {
        bail!("--profile {profile:?}: a GRES type has no `:`, `,` or spaces");
    }
    let dev_root = g.device_paths().dev_root;
    let mut inv = Inventory::new();
    inv.emulation = Some(Emulation { sm_percent });
    let mut gres = format!(
        "# flexmig: written by `flexmig-gres-helper emulate`; do not edit by hand.\n\
         # EMULATED leaves: {n} per GPU, each {sm_percent}% of the GPU's SMs under CUDA MPS (no MIG).\n\
         # One type, so line k is GRES index k. Each file aliases its GPU's device file.\n"
    );
    let mut aliases = Vec::new();
    for gpu in &gpus {
        inv.gpus.push(Gpu { index: gpu.index, uuid: gpu.uuid.clone(), bus_id: gpu.bus_id.clone(), model: gpu.name.clone() });
    }
    // Leaf k of every GPU, then leaf k+1: the lowest free indices Slurm hands out spread a job.
    for k in 0..n {
        for gpu in &gpus {
            let idx = inv.leaves.len() as u32;
            let path = alias(&dev_root, gpu.minor, k);
            gres.push_str(&format!("Name=gpu Type={profile} File={}\n", path.display()));
            aliases.push((path, dev_root.join(format!("nvidia{}", gpu.minor))));
            inv.leaves.push(Leaf {
                gres_index: idx,
                gpu: gpu.index,
                profile: profile.clone(),
                uuid: format!("MIG-emu{k}-{}", gpu.uuid.trim_start_matches("GPU-")),
                cuda_device: Some(gpu.uuid.clone()),
                gpu_instance: None,
            });
        }
    }
    inv.validate().map_err(|e| anyhow::anyhow!("the inventory to write is inconsistent ({e}); nothing was written"))?;
    let total = inv.leaves.len();
    let node_name = a.node_name.unwrap_or_else(host_short_name);
    let opts = a.node_options.trim();
    let line = format!("NodeName={node_name} Gres=gpu:{profile}:{total}{}{opts}", if opts.is_empty() { "" } else { " " });
    let policy = format!(
        "-- flexmig size-aware policy for emulated leaves (written by `flexmig-gres-helper emulate`).\n\
         return {{\n  small_type = {profile:?},\n  double_type = nil,\n  leaves_per_node = {total},\n  small_leaves_per_node = {total},\n  single_prefers_double = true,\n}}\n"
    );
    let asked = [&a.gres_conf, &a.node_conf, &a.inventory, &a.policy].iter().any(|p| p.is_some());
    if !asked {
        println!("### gres.conf\n{gres}\n### slurm.conf\n{line}\n\n### {}\n{}", leaf_model::inventory::DEFAULT_PATH, inv.to_toml_string());
        return Ok(Outcome::Done);
    }
    if a.gres_conf.is_some() {
        make_aliases(&aliases)?;
    }
    super::write_file_set(
        vec![
            (&a.gres_conf, gres, "gres.conf"),
            (
                &a.node_conf,
                format!("# flexmig: the node's line for slurm.conf (written by flexmig-gres-helper emulate)\n{line}\n"),
                "slurm.conf node line",
            ),
            (&a.inventory, inv.to_toml_string(), "node inventory"),
            (&a.policy, policy, "Lua policy"),
        ],
        "emulate",
    )?;
    eprintln!("start CUDA MPS on the node before jobs run (see README, \"Trying flexmig without MIG\")");
    Ok(Outcome::Done)
}

/// mknod each alias with its GPU's device numbers; an alias already there must match.
fn make_aliases(aliases: &[(PathBuf, PathBuf)]) -> Result<()> {
    for (path, gpu_dev) in aliases {
        let src = std::fs::metadata(gpu_dev).with_context(|| format!("{} (the GPU's device file)", gpu_dev.display()))?;
        if !src.file_type().is_char_device() {
            bail!("{} is not a character device", gpu_dev.display());
        }
        let (major, minor) = (libc::major(src.rdev()), libc::minor(src.rdev()));
        if let Ok(m) = std::fs::symlink_metadata(path) {
            if m.file_type().is_char_device() && m.rdev() == src.rdev() {
                continue;
            }
            bail!("{} exists and is not an alias of {}: remove it", path.display(), gpu_dev.display());
        }
        std::fs::create_dir_all(path.parent().expect("alias has a parent")).with_context(|| format!("creating {}", path.display()))?;
        let st = std::process::Command::new("mknod")
            .arg("-m")
            .arg(format!("{:o}", src.mode() & 0o777))
            .arg(path)
            .arg("c")
            .arg(major.to_string())
            .arg(minor.to_string())
            .status()
            .context("running mknod")?;
        if !st.success() {
            bail!("mknod {} failed (device files need root)", path.display());
        }
    }
    Ok(())
}
