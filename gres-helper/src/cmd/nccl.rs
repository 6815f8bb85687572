//! `nccl`: build, install and inspect the patched NCCL flexmig ranks use.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::Outcome;
use crate::nccl::{install, patch, status, version};

#[derive(Debug, Subcommand)]
pub enum NcclCommand {
    /// Patch, build and install NCCL from a source tree or release tarball (no network needed).
    Install(install::InstallArgs),
    /// Tell whether a libnccl.so is patched for flexmig, stock but new enough, or unusable
    /// (exit 0 usable, 1 unusable, 2 not readable as libnccl).
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
                println!("NCCL {}: {} ({} files, {} hunks): {}", p.version, p.name, files.len(), hunks, p.summary);
            }
            println!(
                "other NCCL >= {}: no patch; stock NCCL with NCCL_MULTI_RANK_GPU_ENABLE=1 (no P2P guard between leaves)",
                version::NcclVersion::MULTI_RANK_GPU
            );
        }
    }
    Ok(Outcome::Done)
}
