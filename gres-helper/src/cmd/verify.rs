//! `verify`: NVML, the inventory, gres.conf, the slurm.conf node line, `slurmd -G` and the
//! installed plugin's Slurm version stamp agree; exit 1 and every difference if not.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::{host_short_name, Global, Outcome};
use crate::plugin_stamp::{self, DEFAULT_PLUGIN};
use crate::{slurm_conf, verify};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[arg(long, value_name = "PATH", default_value = "/etc/slurm/gres.conf")]
    pub gres_conf: PathBuf,
    #[arg(long, value_name = "PATH", default_value = leaf_model::inventory::DEFAULT_PATH)]
    pub inventory: PathBuf,
    /// The slurmd binary to run as `slurmd -G`, and as `slurmd -V` for the Slurm release the
    /// plugin must be built for.
    #[arg(long, value_name = "PATH", default_value = "slurmd")]
    pub slurmd: PathBuf,
    /// slurm.conf, whose `NodeName=... Gres=` line for this node is checked (its type order
    /// decides the GRES indices), and SLURM_CONF for `slurmd -G`
    /// [default: $SLURM_CONF, else /etc/slurm/slurm.conf].
    #[arg(long, value_name = "PATH")]
    pub slurm_conf: Option<PathBuf>,
    /// Skip the slurm.conf check.
    #[arg(long)]
    pub no_slurm_conf: bool,
    /// This node's NodeName in slurm.conf, also `-N` for `slurmd -G` [default: the host's short name].
    #[arg(long)]
    pub node_name: Option<String>,
    /// Read saved `slurmd -G` output from this file instead of running slurmd.
    #[arg(long, value_name = "FILE", conflicts_with = "no_slurmd")]
    pub slurmd_output: Option<PathBuf>,
    /// Skip the `slurmd -G` check.
    #[arg(long)]
    pub no_slurmd: bool,
    /// The installed flexmig plugin, whose Slurm version stamp must be the major.minor release
    /// `slurmd -V` reports (Slurm refuses any other); not there: skipped, with a note.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PLUGIN)]
    pub plugin: PathBuf,
    /// Skip the plugin's version check.
    #[arg(long, conflicts_with = "plugin")]
    pub no_plugin: bool,
}

pub fn run(g: &Global, a: VerifyArgs) -> Result<Outcome> {
    let mut node = g.open_node()?;
    let paths = g.device_paths();
    let slurmd_g = if a.no_slurmd {
        None
    } else if let Some(f) = &a.slurmd_output {
        Some(std::fs::read_to_string(f).with_context(|| format!("reading saved slurmd -G output {}", f.display()))?)
    } else {
        Some(verify::run_slurmd_g(&a.slurmd, a.slurm_conf.as_deref(), a.node_name.as_deref())?)
    };
    let conf_path = a.slurm_conf.clone().unwrap_or_else(slurm_conf::default_path);
    let node_name = a.node_name.clone().unwrap_or_else(host_short_name);
    let slurm_conf = (!a.no_slurm_conf).then_some(verify::SlurmConfCheck { path: &conf_path, node_name: &node_name });
    let input = verify::VerifyInputs { paths: &paths, gres_conf: &a.gres_conf, inventory: &a.inventory, slurmd_g, slurm_conf };
    let mut diffs = verify::verify(node.as_mut(), &input)?;
    let plugin_checked = if a.no_plugin {
        false
    } else {
        match plugin_stamp::read_stamp(&a.plugin)? {
            None => {
                eprintln!(
                    "verify: note: no plugin at {}, so its Slurm version stamp was not checked (--plugin PATH names it)",
                    a.plugin.display()
                );
                false
            }
            Some(stamp) => {
                let slurm = plugin_stamp::slurmd_version(&a.slurmd)?;
                let source = format!("`{} -V`", a.slurmd.display());
                diffs.extend(plugin_stamp::check(&a.plugin, stamp, slurm, &source));
                true
            }
        }
    };
    if diffs.is_empty() {
        let mut sources = vec!["NVML".to_string(), a.inventory.display().to_string(), a.gres_conf.display().to_string()];
        if !a.no_slurm_conf {
            sources.push(format!("{}'s NodeName={node_name} line", conf_path.display()));
        }
        if !a.no_slurmd {
            sources.push("slurmd -G".into());
        }
        if plugin_checked {
            sources.push(format!("{}'s Slurm version stamp", a.plugin.display()));
        }
        let last = sources.pop().unwrap_or_default();
        println!("verify: {} and {last} agree", sources.join(", "));
        return Ok(Outcome::Done);
    }
    for d in &diffs {
        println!("{d}");
    }
    eprintln!(
        "verify: {} difference(s); fix each as it says (`flexmig-gres-helper gres-conf` rewrites gres.conf, the inventory and the node line), then restart slurmd",
        diffs.len()
    );
    Ok(Outcome::Differences)
}
