//! `status`: the node's leaves, who Slurm gave them to, and which flexmig task holds each.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use clap::Args;
use leaf_model::holders::{self, Holder};
use leaf_model::Inventory;

use super::Outcome;
use crate::status::{self, Record};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The node inventory.
    #[arg(long, value_name = "PATH", default_value = leaf_model::inventory::DEFAULT_PATH)]
    inventory: PathBuf,
    /// Where the plugin keeps its holder records (its holders_dir= plugstack argument).
    #[arg(long, value_name = "DIR", default_value = holders::DEFAULT_DIR)]
    holders_dir: PathBuf,
    /// This node's Slurm name (default: the host name up to the first dot).
    #[arg(long)]
    node_name: Option<String>,
    /// Show only what the node knows: no slurmctld query, nothing compared with Slurm.
    #[arg(long)]
    no_slurm: bool,
    /// Print JSON: {"node", "slurm", "gpus": [{"index", "model", "bus_id", "leaves": [{"gres_index",
    /// "profile", "uuid", "slurm": {"job", "user"} or null, "bound": {"job", "step", "rank", "pid",
    /// "uid", "alive"} or null}]}], "disagreements": [...]}.
    #[arg(long)]
    json: bool,
}

pub fn run(a: StatusArgs) -> Result<Outcome> {
    let inv = Inventory::load(&a.inventory)?;
    let node = a.node_name.clone().unwrap_or_else(super::host_short_name);
    let slurm_gpus = if a.no_slurm {
        None
    } else {
        Command::new("scontrol")
            .args(["show", "node", &node])
            .output()
            .ok()
            .and_then(|o| status::parse_scontrol_node_gpus(&String::from_utf8_lossy(&o.stdout)))
    };
    let slurm = if a.no_slurm {
        None
    } else {
        let o = Command::new("scontrol")
            .args(["show", "job", "-d"])
            .output()
            .context("running `scontrol show job -d` (install slurm-client, or pass --no-slurm)")?;
        if !o.status.success() {
            anyhow::bail!(
                "`scontrol show job -d` failed: {} (pass --no-slurm to see the node alone)",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Some(status::parse_scontrol_jobs(&String::from_utf8_lossy(&o.stdout), &node))
    };
    let (records, unreadable) = read_records(&a.holders_dir);
    let view = status::build(&node, &inv, slurm.as_deref(), slurm_gpus, &records, &unreadable);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", status::table(&view));
    }
    Ok(if view.disagreements.is_empty() { Outcome::Done } else { Outcome::Differences })
}

/// The holder records, and a line for each file that is not one.
fn read_records(dir: &std::path::Path) -> (Vec<Record>, Vec<String>) {
    let (mut records, mut unreadable) = (Vec::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(dir) else { return (records, unreadable) };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
    paths.sort();
    for p in paths {
        let file = p.display().to_string();
        match std::fs::read_to_string(&p) {
            // A record the task is still filling in.
            Ok(t) if t.is_empty() => {}
            Ok(t) => match Holder::parse(&t) {
                Ok(holder) => {
                    let alive = holders::process_start(holder.pid).is_some_and(|s| s == holder.pid_start);
                    records.push(Record { file, holder, alive });
                }
                Err(e) => unreadable.push(format!("{file}: {e}")),
            },
            Err(e) => unreadable.push(format!("{file}: {e}")),
        }
    }
    (records, unreadable)
}
