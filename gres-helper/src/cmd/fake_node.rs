//! `fake-node`: create fake nodes and equip them with device files, for tests and the demo.

use std::os::unix::fs::FileTypeExt as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use super::{write_file, Global, Outcome};
use crate::devices::DevicePaths;
use crate::fake::{self, FakeNodeFile, FileNode};
use crate::node::Node;

#[derive(Debug, Subcommand)]
pub enum FakeNodeCommand {
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

pub fn run(g: &Global, cmd: FakeNodeCommand) -> Result<Outcome> {
    match cmd {
        FakeNodeCommand::Create { model, gpus, mig_disabled, out } => {
            let f = FakeNodeFile::create(&model, gpus, !mig_disabled)?;
            write_file(&out, &f.to_toml_string(), "fake node")?;
        }
        FakeNodeCommand::Devices => {
            let Some(path) = &g.fake_node else { bail!("fake-node devices needs --fake-node PATH") };
            make_devices(&mut FileNode::load(path)?, &g.device_paths())?;
        }
    }
    Ok(Outcome::Done)
}

/// mknod the node's GPU and MIG capability device files and write its mig-minors file.
fn make_devices(node: &mut dyn Node, p: &DevicePaths) -> Result<()> {
    let gpus = node.gpus()?;
    let minors: Vec<u32> = gpus.iter().map(|g| g.minor).collect();
    write_file(&p.mig_minors, &fake::fake_mig_minors(&minors), "fake mig-minors")?;
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
