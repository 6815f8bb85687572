//! `flexmig-gres-helper nccl ...` (being written).

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum NcclCommand {
    /// Tell whether a libnccl.so is patched for flexmig, stock but new enough, or unusable.
    Status { library: std::path::PathBuf },
}

pub fn run(cmd: NcclCommand) -> anyhow::Result<i32> {
    match cmd {
        NcclCommand::Status { library } => anyhow::bail!("nccl status {}: not implemented yet", library.display()),
    }
}
