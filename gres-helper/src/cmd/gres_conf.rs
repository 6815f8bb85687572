//! `gres-conf`: gres.conf, the slurm.conf node line, the node inventory and the Lua policy,
//! from the node's current leaves, written as a set.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Args;

use super::{host_short_name, Global, Outcome};
use crate::devices::MigMinors;
use crate::leaves::ordered_leaves;
use crate::node_config;

#[derive(Debug, Args)]
pub struct GresConfArgs {
    /// Write gres.conf here (otherwise it is printed).
    #[arg(long, value_name = "PATH")]
    pub gres_conf: Option<PathBuf>,
    /// Write the slurm.conf `NodeName=... Gres=...` line here.
    #[arg(long, value_name = "PATH")]
    pub node_conf: Option<PathBuf>,
    /// Write the node inventory the SPANK plugin reads here (usually /etc/slurm/flexmig.toml).
    #[arg(long, value_name = "PATH")]
    pub inventory: Option<PathBuf>,
    /// Write the size-aware policy for the Lua filters here (flexmig_policy.lua next to slurm.conf).
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// NodeName for the slurm.conf line (default: this host's short name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// More slurm.conf node parameters to append, e.g. "CPUs=64 RealMemory=512000".
    #[arg(long, default_value = "")]
    pub node_options: String,
}

pub fn run(g: &Global, a: GresConfArgs) -> Result<Outcome> {
    let mut node = g.open_node()?;
    let paths = g.device_paths();
    let minors = MigMinors::load(&paths.mig_minors)?;
    let (gpus, leaves) = ordered_leaves(node.as_mut(), &paths, &minors)?;
    let gres = node_config::gres_conf_text(&leaves);
    let node_name = a.node_name.unwrap_or_else(host_short_name);
    let line = node_config::node_line(&node_name, &leaves, &a.node_options);
    let inv = node_config::inventory(&gpus, &leaves);
    if a.inventory.is_some() {
        inv.validate().map_err(|e| anyhow!("the inventory to write is inconsistent ({e}); nothing was written"))?;
    }
    let policy = if a.policy.is_some() { node_config::policy_lua(&leaves).context("nothing was written")? } else { String::new() };
    // gres.conf, the node line and the inventory only agree as a set: write all of them or none.
    let written = super::write_file_set(
        vec![
            (&a.gres_conf, gres.clone(), "gres.conf"),
            (
                &a.node_conf,
                format!("# flexmig: the node's line for slurm.conf (written by flexmig-gres-helper gres-conf)\n{line}\n"),
                "slurm.conf node line",
            ),
            (&a.inventory, inv.to_toml_string(), "node inventory"),
            (&a.policy, policy, "Lua policy"),
        ],
        "gres-conf",
    )?;
    if !written {
        println!("### gres.conf\n{gres}\n### slurm.conf\n{line}\n\n### {}\n{}", leaf_model::inventory::DEFAULT_PATH, inv.to_toml_string());
    }
    Ok(Outcome::Done)
}
