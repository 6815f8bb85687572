//! `assert`: read-only; the node has exactly the planned leaves, or exit 1 and the differences.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{Global, Outcome};
use crate::mig_layout;

#[derive(Debug, Args)]
pub struct AssertArgs {
    /// Check against this layout (`export` or `plan --json` output) instead of the plan.
    #[arg(long, value_name = "FILE")]
    pub layout: Option<PathBuf>,
}

pub fn run(g: &Global, a: AssertArgs) -> Result<Outcome> {
    let mut node = g.open_node()?;
    let want = mig_layout::wanted(node.as_mut(), a.layout.as_deref())?;
    let diffs = mig_layout::differences(node.as_mut(), &want)?;
    if diffs.is_empty() {
        println!("assert: the node matches the layout ({} GPUs)", want.gpus.len());
        return Ok(Outcome::Done);
    }
    for d in &diffs {
        println!("{d}");
    }
    eprintln!("assert: {} difference(s); `flexmig-gres-helper apply` fixes them", diffs.len());
    Ok(Outcome::Differences)
}
