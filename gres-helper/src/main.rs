//! `flexmig-gres-helper`: turns a GPU node into a flexmig node.
//!
//! This file parses the command line and maps outcomes to exit statuses; each verb lives in
//! its module under `cmd/`. Exit statuses: 0 success, 1 a check found differences (`assert`,
//! `verify`, `nccl status`), 2 bad input or an error.

use clap::{Parser, Subcommand};

mod cmd;
mod devices;
mod fake;
mod leaves;
mod mig_layout;
mod nccl;
mod node;
mod node_config;
mod nvml;
mod plugin_stamp;
mod signals;
mod slurm_conf;
mod status;
mod verify;

use cmd::{Global, Outcome};

const EXIT_STATUS: &str = "\
Exit status:
  0  success; a check found nothing to report
  1  a check found differences (assert, verify, status; nccl status: the library is unusable)
  2  bad input or an error (the message says what is wrong and what to do)";

#[derive(Debug, Parser)]
#[command(
    name = "flexmig-gres-helper",
    version,
    about = "Plan and apply the flexmig MIG leaf layout, write Slurm configuration, install patched NCCL",
    after_help = EXIT_STATUS
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the flexmig leaf layout: of a recorded model (--model), or of every GPU of the node.
    Plan(cmd::plan::PlanArgs),
    /// Enable MIG mode and create exactly the planned leaves; changes only what differs.
    Apply(cmd::apply::ApplyArgs),
    /// Check (read-only) that the node has exactly the planned leaves; exit 1 if not.
    #[command(after_help = EXIT_STATUS)]
    Assert(cmd::assert::AssertArgs),
    /// Print the node's current GPU instances as JSON, in the schema `assert --layout` reads.
    Export,
    /// Write gres.conf, the slurm.conf node line, the node inventory and the Lua policy.
    GresConf(cmd::gres_conf::GresConfArgs),
    /// The same for GPUs not in MIG mode: each cut into N emulated leaves (shares under CUDA MPS).
    Emulate(cmd::emulate::EmulateArgs),
    /// Check that NVML, the inventory, gres.conf, slurm.conf, `slurmd -G` and the installed
    /// plugin's Slurm version agree; exit 1 if not.
    #[command(after_help = EXIT_STATUS)]
    Verify(cmd::verify::VerifyArgs),
    /// Show the node's leaves: free, given by Slurm to which job, held by which flexmig task;
    /// exit 1 where Slurm, the plugin's records and the inventory disagree.
    #[command(after_help = EXIT_STATUS)]
    Status(cmd::status::StatusArgs),
    /// List the recorded GPU models.
    Models,
    /// Create and equip fake nodes for tests and the demo.
    #[command(subcommand)]
    FakeNode(cmd::fake_node::FakeNodeCommand),
    /// Build, install and inspect the NCCL flexmig ranks load (patched, or stock >= 2.31).
    #[command(subcommand)]
    Nccl(cmd::nccl::NcclCommand),
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let g = &cli.global;
    match cli.command {
        Command::Plan(a) => cmd::plan::run(g, a),
        Command::Apply(a) => cmd::apply::run(g, a),
        Command::Assert(a) => cmd::assert::run(g, a),
        Command::Export => cmd::export::run(g),
        Command::GresConf(a) => cmd::gres_conf::run(g, a),
        Command::Emulate(a) => cmd::emulate::run(g, a),
        Command::Verify(a) => cmd::verify::run(g, a),
        Command::Status(a) => cmd::status::run(a),
        Command::Models => cmd::models::run(),
        Command::FakeNode(c) => cmd::fake_node::run(g, c),
        Command::Nccl(c) => cmd::nccl::run(c),
    }
}

fn main() {
    // Output piped into `head` or a closed pager ends the program quietly, as for any Unix tool,
    // instead of a panic on the broken pipe (Rust ignores SIGPIPE by default). `apply` alone
    // ignores it again: it must finish its change.
    // SAFETY: restoring a signal's default disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // clap exits 2 on a malformed command line and 0 for --help and --version.
    let cli = Cli::parse();
    match run(cli) {
        Ok(outcome) => std::process::exit(outcome.exit_code()),
        Err(e) => {
            eprintln!("flexmig-gres-helper: error: {e:#}");
            std::process::exit(cmd::ERROR_EXIT);
        }
    }
}
