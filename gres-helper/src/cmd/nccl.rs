//! `nccl`: build, install and inspect the NCCL flexmig ranks use.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::Outcome;
use crate::nccl::{install, patch, status, version};

#[derive(Debug, Subcommand)]
pub enum NcclCommand {
    /// Patch, build and install NCCL from a source tree or release tarball (no network needed).
    Install(install::InstallArgs),
    /// Tell whether a libnccl.so serves flexmig ranks: patched, or stock >= 2.31 with NVIDIA's MIG
    /// support (usable); stock 2.30.x (needs the guard patch) or older (unusable). Exit 0 usable,
    /// 1 unusable, 2 not readable as libnccl.
    Status {
        /// The library, e.g. /opt/nccl-flexmig/lib/libnccl.so.2
        library: PathBuf,
    },
    /// List the NCCL releases this binary carries patches for.
    Patches,
}

pub fn run(cmd: NcclCommand) -> Result<Outcome> {
    match cmd {
        NcclCommand::Install(args) => install::run(&args)?,
        NcclCommand::Status { library } => {
            let kind = status::classify_file(&library)?;
            println!("{}: {kind}", library.display());
            if !kind.usable() {
                return Ok(Outcome::Differences);
            }
        }
        NcclCommand::Patches => {
            for p in patch::PATCHES {
                let files = patch::parse_diff(p.diff)?;
                let hunks: usize = files.iter().map(|f| f.hunks.len()).sum();
                let releases: Vec<String> = p.releases.iter().map(|v| v.to_string()).collect();
                println!("NCCL {}: {} ({} files, {} hunks): {}", releases.join(", "), p.name, files.len(), hunks, p.summary);
            }
            println!(
                "other NCCL 2.30.x (>= {}): the guard patch whose every hunk matches the tree exactly, if one does",
                version::NcclVersion::MULTI_RANK_GPU
            );
            println!(
                "NCCL >= {}: no patch; stock NCCL's experimental MIG support with {} (leaves of one GPU over SHM, \
                 of different GPUs over NET)",
                version::NcclVersion::MIG_SUPPORT,
                status::STOCK_MIG_ENV
            );
        }
    }
    Ok(Outcome::Done)
}
