//! `apply`: MIG mode on and exactly the planned leaves; changes only what differs.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{Global, Outcome};
use crate::{mig_layout, signals};

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Apply this layout (`export` or `plan --json` output) instead of the plan.
    #[arg(long, value_name = "FILE")]
    pub layout: Option<PathBuf>,
    /// Change GPUs even though processes run on them.
    #[arg(long)]
    pub force: bool,
}

pub fn run(g: &Global, a: ApplyArgs) -> Result<Outcome> {
    // A reader that goes away (`apply | head -1`) must not end the change halfway.
    signals::ignore_sigpipe();
    let mut node = g.open_node()?;
    let want = mig_layout::wanted(node.as_mut(), a.layout.as_deref())?;
    let mut out = std::io::stdout();
    mig_layout::apply(node.as_mut(), &want, a.force, &mut out)?;
    // A closed stdout is no error of apply's: the change is done.
    let _ = out.flush();
    Ok(Outcome::Done)
}
