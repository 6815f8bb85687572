//! `flexmig-gres-helper nccl ...`: build, install and inspect the NCCL that flexmig ranks use.
//!
//! `install` takes an NCCL source tree or release tarball, detects its version, applies the
//! embedded flexmig patch (or none for NCCL >= 2.30.3), builds it with the local CUDA for the
//! GPUs present (or `--arch`), installs it under `--prefix` and prints the plugstack `nccl=`
//! argument. Nothing is downloaded. `status` tells whether a libnccl is patched, stock but new
//! enough, or unusable.

mod install;
mod patch;
mod status;
mod version;

use std::path::PathBuf;

use clap::Subcommand;

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

pub fn run(cmd: NcclCommand) -> anyhow::Result<i32> {
    match cmd {
        NcclCommand::Install(args) => install::run(&args),
        NcclCommand::Status { library } => {
            let kind = status::classify_file(&library)?;
            println!("{}: {kind}", library.display());
            Ok(if kind.usable() { 0 } else { 1 })
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
            Ok(0)
        }
    }
}
