//! `flexmig-gres-helper`: turns a GPU node into a flexmig node.
//!
//! Exit codes: 0 success, 1 a check found differences (`assert`, `verify`), 2 an error.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

mod fake;
mod gres_conf;
mod mig_layout;
mod nccl;
mod node;
mod nvml;
mod signals;
mod slurm_conf;
mod verify;

use gres_conf::DevicePaths;
use node::Node;

#[derive(Debug, Parser)]
#[command(
    name = "flexmig-gres-helper",
    version,
    about = "Plan and apply the flexmig MIG leaf layout, write Slurm configuration, install patched NCCL"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Use a fake node described by this TOML file instead of NVML (tests, demo).
    #[arg(long, global = true, value_name = "PATH")]
    fake_node: Option<PathBuf>,
    /// Directory holding the device files (nvidiaN, nvidia-caps/) as gres.conf names them.
    #[arg(long, global = true, value_name = "DIR", default_value = "/dev")]
    dev_root: PathBuf,
    /// The driver's MIG capability minors file.
    #[arg(long, global = true, value_name = "PATH", default_value = "/proc/driver/nvidia-caps/mig-minors")]
    mig_minors: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the flexmig leaf layout: of a recorded model (--model), or of every GPU of the node.
    Plan {
        /// A recorded GPU model (see `models`); without it, plan from what the node reports.
        #[arg(long)]
        model: Option<String>,
        /// Print JSON: {"model": ..., "instances": [{"profile", "start", "size"}, ...]}
        /// (with --model), or {"gpus": [{"gpu", "model", "instances"}, ...]} for the node.
        #[arg(long)]
        json: bool,
    },
    /// Enable MIG mode and create exactly the planned leaves; changes only what differs.
    Apply {
        /// Apply this layout (`export` or `plan --json` output) instead of the plan.
        #[arg(long, value_name = "FILE")]
        layout: Option<PathBuf>,
        /// Change GPUs even though processes run on them.
        #[arg(long)]
        force: bool,
    },
    /// Check (read-only) that the node has exactly the planned leaves; exit 1 if not.
    Assert {
        /// Check against this layout (`export` or `plan --json` output) instead of the plan.
        #[arg(long, value_name = "FILE")]
        layout: Option<PathBuf>,
    },
    /// Print the node's current GPU instances as JSON, in the schema `assert --layout` reads.
    Export,
    /// Write gres.conf, the slurm.conf node line, the node inventory and the Lua policy.
    GresConf(GresConfArgs),
    /// Check that NVML, the inventory, gres.conf and `slurmd -G` agree; exit 1 if not.
    Verify(VerifyArgs),
    /// List the recorded GPU models.
    Models,
    /// Create and equip fake nodes for tests and the demo.
    #[command(subcommand)]
    FakeNode(FakeNodeCommand),
    /// Build, install and inspect the patched NCCL flexmig needs.
    #[command(subcommand)]
    Nccl(nccl::NcclCommand),
}

#[derive(Debug, Args)]
struct GresConfArgs {
    /// Write gres.conf here (otherwise it is printed).
    #[arg(long, value_name = "PATH")]
    gres_conf: Option<PathBuf>,
    /// Write the slurm.conf `NodeName=... Gres=...` line here.
    #[arg(long, value_name = "PATH")]
    node_conf: Option<PathBuf>,
    /// Write the node inventory the SPANK plugin reads here (usually /etc/slurm/flexmig.toml).
    #[arg(long, value_name = "PATH")]
    inventory: Option<PathBuf>,
    /// Write the size-aware policy for the Lua filters here (flexmig_policy.lua next to slurm.conf).
    #[arg(long, value_name = "PATH")]
    policy: Option<PathBuf>,
    /// NodeName for the slurm.conf line (default: this host's short name).
    #[arg(long)]
    node_name: Option<String>,
    /// More slurm.conf node parameters to append, e.g. "CPUs=64 RealMemory=512000".
    #[arg(long, default_value = "")]
    node_options: String,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    #[arg(long, value_name = "PATH", default_value = "/etc/slurm/gres.conf")]
    gres_conf: PathBuf,
    #[arg(long, value_name = "PATH", default_value = leaf_model::inventory::DEFAULT_PATH)]
    inventory: PathBuf,
    /// The slurmd binary to run as `slurmd -G`.
    #[arg(long, value_name = "PATH", default_value = "slurmd")]
    slurmd: PathBuf,
    /// slurm.conf, whose `NodeName=... Gres=` line for this node is checked (its type order
    /// decides the GRES indices), and SLURM_CONF for `slurmd -G`
    /// [default: $SLURM_CONF, else /etc/slurm/slurm.conf].
    #[arg(long, value_name = "PATH")]
    slurm_conf: Option<PathBuf>,
    /// Skip the slurm.conf check.
    #[arg(long)]
    no_slurm_conf: bool,
    /// This node's NodeName in slurm.conf, also `-N` for `slurmd -G` [default: the host's short name].
    #[arg(long)]
    node_name: Option<String>,
    /// Read saved `slurmd -G` output from this file instead of running slurmd.
    #[arg(long, value_name = "FILE", conflicts_with = "no_slurmd")]
    slurmd_output: Option<PathBuf>,
    /// Skip the slurmd check.
    #[arg(long)]
    no_slurmd: bool,
}

#[derive(Debug, Subcommand)]
enum FakeNodeCommand {
    /// Write a new fake node: GPUs of a recorded model, no instances.
    Create {
        /// A recorded model (see `models`).
        #[arg(long)]
        model: String,
        /// Number of GPUs.
        #[arg(long, default_value_t = 2)]
        gpus: u32,
        /// Start with MIG mode disabled.
        #[arg(long)]
        mig_disabled: bool,
        /// The file to write.
        out: PathBuf,
    },
    /// Make the fake node's device files under --dev-root (mknod, needs root) and write the
    /// --mig-minors file, as the NVIDIA driver would.
    Devices,
}

fn open_node(g: &Global) -> Result<Box<dyn Node>> {
    Ok(match &g.fake_node {
        Some(p) => Box::new(fake::FakeNode::load(p)?),
        None => Box::new(nvml::NvmlNode::open()?),
    })
}

fn paths(g: &Global) -> DevicePaths {
    DevicePaths { dev_root: g.dev_root.clone(), mig_minors: g.mig_minors.clone() }
}

fn print_layout_text(gpu: Option<u32>, l: &leaf_model::layout::Layout) {
    let head = gpu.map_or_else(String::new, |g| format!("GPU {g}: "));
    println!("{head}{} -> {} leaves", l.model, l.instances.len());
    for i in &l.instances {
        let role = match l.role(i) {
            leaf_model::layout::LeafRole::Double => "double",
            leaf_model::layout::LeafRole::Small => "small",
        };
        println!("  {:<12} memory slices {}..{}  ({role})", i.profile, i.start, i.start + i.size - 1);
    }
}

fn want_layout(node: &mut dyn Node, layout: Option<&Path>) -> Result<mig_layout::NodeLayout> {
    match layout {
        Some(p) => {
            let gpus = node.gpus()?;
            mig_layout::read_layout_file(p, &gpus)
        }
        None => mig_layout::plan_node(node),
    }
}

fn write_out(path: &Path, text: &str, what: &str) -> Result<()> {
    leaf_model::atomic::write_atomic(path, text.as_bytes(), 0o644).with_context(|| format!("writing {what} {}", path.display()))?;
    eprintln!("wrote {what} {}", path.display());
    Ok(())
}

fn host_short_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().split('.').next().unwrap_or("localhost").to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn run(cli: Cli) -> Result<i32> {
    let g = &cli.global;
    match cli.command {
        Command::Nccl(cmd) => nccl::run(cmd),
        Command::Models => {
            for m in leaf_model::mig::builtin_models() {
                println!("{:<10} {} compute / {} memory slices  ({})", m.name, m.compute_slices, m.memory_slices, m.nvml_names.join(", "));
            }
            Ok(0)
        }
        Command::Plan { model: Some(model), json } => {
            let m = leaf_model::mig::builtin_model(&model).with_context(|| {
                format!("{model:?} is not a recorded GPU model; use one of {}", leaf_model::mig::builtin_model_names().join(", "))
            })?;
            let l = leaf_model::layout::plan(&m)?;
            if json {
                println!("{}", serde_json::to_string(&l)?);
            } else {
                print_layout_text(None, &l);
            }
            Ok(0)
        }
        Command::Plan { model: None, json } => {
            let mut node = open_node(g)?;
            let l = mig_layout::plan_node(node.as_mut())?;
            if json {
                println!("{}", serde_json::to_string(&l)?);
            } else {
                for gl in l.gpus {
                    print_layout_text(Some(gl.gpu), &leaf_model::layout::Layout { model: gl.model, instances: gl.instances });
                }
            }
            Ok(0)
        }
        Command::Apply { layout, force } => {
            signals::ignore_sigpipe();
            let mut node = open_node(g)?;
            let want = want_layout(node.as_mut(), layout.as_deref())?;
            let mut out = std::io::stdout();
            mig_layout::apply(node.as_mut(), &want, force, &mut out)?;
            // A closed stdout is no error of apply's: the change is done.
            let _ = out.flush();
            Ok(0)
        }
        Command::Assert { layout } => {
            let mut node = open_node(g)?;
            let want = want_layout(node.as_mut(), layout.as_deref())?;
            let diffs = mig_layout::differences(node.as_mut(), &want)?;
            if diffs.is_empty() {
                println!("assert: the node matches the layout ({} GPUs)", want.gpus.len());
                Ok(0)
            } else {
                for d in &diffs {
                    println!("{d}");
                }
                eprintln!("assert: {} difference(s); `flexmig-gres-helper apply` fixes them", diffs.len());
                Ok(1)
            }
        }
        Command::Export => {
            let mut node = open_node(g)?;
            println!("{}", serde_json::to_string_pretty(&mig_layout::export(node.as_mut())?)?);
            Ok(0)
        }
        Command::GresConf(a) => {
            let mut node = open_node(g)?;
            let p = paths(g);
            let minors = gres_conf::MigMinors::load(&p.mig_minors)?;
            let (gpus, leaves) = gres_conf::ordered_leaves(node.as_mut(), &p, &minors)?;
            let gres = gres_conf::gres_conf_text(&leaves);
            let node_name = a.node_name.unwrap_or_else(host_short_name);
            let line = gres_conf::node_line(&node_name, &leaves, &a.node_options);
            let inv = gres_conf::inventory(&gpus, &leaves);
            // gres.conf, the node line and the inventory only agree as a set: write all of
            // them or none.
            let mut set = Vec::new();
            let mut add = |path: &Option<PathBuf>, text: String, what: &'static str| {
                if let Some(p) = path {
                    set.push((leaf_model::atomic::FileWrite { path: p.clone(), contents: text.into_bytes(), mode: 0o644 }, what));
                }
            };
            add(&a.gres_conf, gres.clone(), "gres.conf");
            add(
                &a.node_conf,
                format!("# flexmig: the node's line for slurm.conf (written by flexmig-gres-helper gres-conf)\n{line}\n"),
                "slurm.conf node line",
            );
            if a.inventory.is_some() {
                inv.validate().map_err(|e| anyhow::anyhow!("the inventory to write is inconsistent ({e}); nothing was written"))?;
            }
            add(&a.inventory, inv.to_toml_string(), "node inventory");
            if a.policy.is_some() {
                add(&a.policy, gres_conf::policy_lua(&leaves).context("nothing was written")?, "Lua policy");
            }
            let wrote = !set.is_empty();
            let files: Vec<_> = set.iter().map(|(f, _)| f.clone()).collect();
            leaf_model::atomic::write_set(&files).context("gres-conf writes its files as a set")?;
            for (f, what) in &set {
                eprintln!("wrote {what} {}", f.path.display());
            }
            if !wrote {
                println!(
                    "### gres.conf\n{gres}\n### slurm.conf\n{line}\n\n### {}\n{}",
                    leaf_model::inventory::DEFAULT_PATH,
                    inv.to_toml_string()
                );
            }
            Ok(0)
        }
        Command::Verify(a) => {
            let mut node = open_node(g)?;
            let p = paths(g);
            let slurmd_g = if a.no_slurmd {
                None
            } else if let Some(f) = &a.slurmd_output {
                Some(std::fs::read_to_string(f).with_context(|| format!("reading saved slurmd -G output {}", f.display()))?)
            } else {
                Some(verify::run_slurmd_g(&a.slurmd, a.slurm_conf.as_deref(), a.node_name.as_deref())?)
            };
            let conf_path = a.slurm_conf.clone().unwrap_or_else(slurm_conf::default_path);
            let node_name = a.node_name.clone().unwrap_or_else(host_short_name);
            let slurm_conf = (!a.no_slurm_conf).then_some(verify::SlurmConfCheck { path: &conf_path, node_name: &node_name });
            let input = verify::VerifyInputs { paths: &p, gres_conf: &a.gres_conf, inventory: &a.inventory, slurmd_g, slurm_conf };
            let diffs = verify::verify(node.as_mut(), &input)?;
            if diffs.is_empty() {
                let mut sources = vec!["NVML".to_string(), a.inventory.display().to_string(), a.gres_conf.display().to_string()];
                if !a.no_slurm_conf {
                    sources.push(format!("{}'s NodeName={node_name} line", conf_path.display()));
                }
                if !a.no_slurmd {
                    sources.push("slurmd -G".into());
                }
                let last = sources.pop().unwrap_or_default();
                println!("verify: {} and {last} agree", sources.join(", "));
                Ok(0)
            } else {
                for d in &diffs {
                    println!("{d}");
                }
                eprintln!(
                    "verify: {} difference(s); fix each as it says (`flexmig-gres-helper gres-conf` rewrites gres.conf, the inventory and the node line), then restart slurmd",
                    diffs.len()
                );
                Ok(1)
            }
        }
        Command::FakeNode(FakeNodeCommand::Create { model, gpus, mig_disabled, out }) => {
            let f = fake::FakeNodeFile::create(&model, gpus, !mig_disabled)?;
            write_out(&out, &f.to_toml_string(), "fake node")?;
            Ok(0)
        }
        Command::FakeNode(FakeNodeCommand::Devices) => {
            let Some(path) = &g.fake_node else { bail!("fake-node devices needs --fake-node PATH") };
            let mut node = fake::FakeNode::load(path)?;
            make_fake_devices(&mut node, &paths(g))?;
            Ok(0)
        }
    }
}

/// mknod the fake node's GPU and MIG capability device files and write its mig-minors file.
fn make_fake_devices(node: &mut fake::FakeNode, p: &DevicePaths) -> Result<()> {
    let gpus = node.gpus()?;
    let minors: Vec<u32> = gpus.iter().map(|g| g.minor).collect();
    write_out(&p.mig_minors, &fake::fake_mig_minors(&minors), "fake mig-minors")?;
    std::fs::create_dir_all(p.dev_root.join("nvidia-caps")).with_context(|| format!("creating {}", p.dev_root.display()))?;
    let mut files = Vec::new();
    for g in &gpus {
        files.push((p.gpu_device(g.minor), 195, g.minor));
        for inst in node.instances(g.index)? {
            let m = fake::fake_cap_minor(g.minor, inst.id, None);
            files.push((p.cap_device(m), 511, m));
            for ci in &inst.compute {
                let m = fake::fake_cap_minor(g.minor, inst.id, Some(ci.id));
                files.push((p.cap_device(m), 511, m));
            }
        }
    }
    let mut made = 0;
    for (path, major, minor) in files {
        use std::os::unix::fs::FileTypeExt;
        if std::fs::metadata(&path).map(|m| m.file_type().is_char_device()).unwrap_or(false) {
            continue;
        }
        let st = std::process::Command::new("mknod")
            .arg(&path)
            .arg("c")
            .arg(major.to_string())
            .arg(minor.to_string())
            .status()
            .context("running mknod")?;
        if !st.success() {
            bail!(
                "mknod {} failed: fake device files need root (Slurm drops gres.conf files that are not character devices)",
                path.display()
            );
        }
        made += 1;
    }
    eprintln!("made {made} fake device files under {}", p.dev_root.display());
    Ok(())
}

fn main() {
    // Output piped into `head` or a closed pager ends the program quietly, as for any Unix tool,
    // instead of a panic on the broken pipe (Rust ignores SIGPIPE by default). `apply` alone
    // ignores it again: it must finish its change.
    // SAFETY: restoring a signal's default disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("flexmig-gres-helper: error: {e:#}");
            std::process::exit(2);
        }
    }
}
