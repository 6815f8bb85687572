//! `flexmig-gres-helper`: turns a GPU node into a flexmig node.
//!
//! Exit codes: 0 success, 1 a check found differences (`assert`, `verify`), 2 an error.

use clap::{Parser, Subcommand};

mod nccl;

#[derive(Debug, Parser)]
#[command(name = "flexmig-gres-helper", version, about = "Plan and apply the flexmig MIG leaf layout, write Slurm configuration, install patched NCCL")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build, install and inspect the patched NCCL flexmig needs.
    #[command(subcommand)]
    Nccl(nccl::NcclCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Nccl(cmd) => nccl::run(cmd),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("flexmig-gres-helper: error: {e:#}");
            std::process::exit(2);
        }
    }
}
