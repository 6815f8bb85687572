//! An emulated flexmig node built the way an admin builds a real one: `flexmig-gres-helper`
//! creates a fake node, applies the leaf layout and writes gres.conf, the node line, the
//! inventory and the Lua policy; [`build`] turns those into a [`ClusterConfig`] with the Lua
//! filters of `slurm-conf/` enabled.

use std::path::{Path, PathBuf};

use std::process::{Command, Output};

use anyhow::{bail, Context as _, Result};
use leaf_model::Inventory;

use crate::{Cluster, ClusterConfig, DEFAULT_PLUGSTACK};

/// The helper binary: `$FLEXMIG_GRES_HELPER`, else `<target>/debug/flexmig-gres-helper`
/// (`cargo test --workspace` builds it; alone: `cargo build -p flexmig-gres-helper`).
///
/// # Errors
/// When it has not been built.
pub fn helper_bin() -> Result<PathBuf> {
    crate::built_artifact("FLEXMIG_GRES_HELPER", "flexmig-gres-helper", "flexmig-gres-helper")
}

/// Runs the helper and returns its output, whatever its exit status.
///
/// # Errors
/// The helper could not be started.
pub fn helper(args: &[&str]) -> Result<Output> {
    Command::new(helper_bin()?).args(args).output().context("running flexmig-gres-helper")
}

fn ok(args: &[&str]) -> Result<String> {
    let o = helper(args)?;
    if !o.status.success() {
        bail!(
            "flexmig-gres-helper {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Where the Lua filters are read from: `$FLEXMIG_LUA_DIR` if set (the installed
/// `/usr/share/flexmig`, scripts/package-test.sh), else the repository's slurm-conf/ folder.
pub fn slurm_conf_dir() -> PathBuf {
    match std::env::var_os("FLEXMIG_LUA_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../slurm-conf"),
    }
}

/// The emulated node built with the helper.
#[derive(Debug)]
pub struct HelperNode {
    /// Holds node.toml (the fake node), mig-minors, gres.conf, node.conf, flexmig.toml.
    pub work: tempfile::TempDir,
    pub cfg: ClusterConfig,
    pub inventory: Inventory,
}

impl HelperNode {
    /// A file of the work directory.
    pub fn path(&self, name: &str) -> String {
        self.work.path().join(name).display().to_string()
    }
}

/// `fake-node create` + `apply` + `assert` + `fake-node devices` (for the mig-minors file) +
/// `gres-conf` with the device root left as the harness's `@DEV@` placeholder.
///
/// # Errors
/// A helper step failing, with its output.
pub fn build(model: &str, gpus: u32) -> Result<HelperNode> {
    let work = tempfile::tempdir()?;
    let p = |n: &str| work.path().join(n).display().to_string();
    ok(&["fake-node", "create", "--model", model, "--gpus", &gpus.to_string(), "--mig-disabled", &p("node.toml")])?;
    ok(&["--fake-node", &p("node.toml"), "apply"])?;
    ok(&["--fake-node", &p("node.toml"), "assert"])?;
    ok(&["--fake-node", &p("node.toml"), "--dev-root", &p("dev"), "--mig-minors", &p("mig-minors"), "fake-node", "devices"])?;
    ok(&[
        "--fake-node",
        &p("node.toml"),
        "--dev-root",
        "@DEV@",
        "--mig-minors",
        &p("mig-minors"),
        "gres-conf",
        "--gres-conf",
        &p("gres.conf"),
        "--inventory",
        &p("flexmig.toml"),
        "--node-conf",
        &p("node.conf"),
        "--policy",
        &p("flexmig_policy.lua"),
        "--node-name",
        "localhost",
    ])?;
    let read = |n: &str| std::fs::read_to_string(work.path().join(n)).with_context(|| format!("reading {n}"));
    let gres_conf = read("gres.conf")?;
    let node_line = read("node.conf")?;
    let node_gres = node_line
        .lines()
        .find(|l| l.starts_with("NodeName="))
        .and_then(|l| l.split_whitespace().find_map(|kv| kv.strip_prefix("Gres=")))
        .context("no Gres= in the helper's node line")?
        .to_string();
    // Device files to mknod: every path gres.conf names, relative to @DEV@.
    let mut devices = Vec::new();
    for f in
        gres_conf.lines().filter_map(|l| l.split_whitespace().find_map(|kv| kv.strip_prefix("MultipleFiles="))).flat_map(|v| v.split(','))
    {
        devices.push(f.strip_prefix("@DEV@/").with_context(|| format!("{f} is not under @DEV@"))?.to_string());
    }
    devices.sort();
    devices.dedup();
    let mut files = Vec::new();
    for n in ["job_submit.lua", "cli_filter.lua", "flexmig_filter.lua"] {
        files.push((n.to_string(), std::fs::read_to_string(slurm_conf_dir().join(n)).with_context(|| format!("reading slurm-conf/{n}"))?));
    }
    files.push(("flexmig_policy.lua".into(), read("flexmig_policy.lua")?));
    let inv_text = read("flexmig.toml")?;
    let inventory = Inventory::parse(&inv_text, "helper inventory")?;
    let cfg = ClusterConfig {
        node_gres,
        gres_conf,
        inventory: Some(inv_text),
        plugstack: DEFAULT_PLUGSTACK.to_string(),
        slurm_conf_extra: "JobSubmitPlugins=lua\nCliFilterPlugins=lua\n".into(),
        files,
        devices,
        cpus: 16,
        nodes: 1,
    };
    Ok(HelperNode { work, cfg, inventory })
}

/// `flexmig-gres-helper verify` of the running cluster's gres.conf, inventory, slurm.conf node
/// line and slurmd against the fake node's instances.
///
/// # Errors
/// The helper could not be started.
pub fn verify(node: &HelperNode, c: &Cluster) -> Result<Output> {
    verify_with(node, c, &[])
}

/// [`verify`] with more arguments (`--no-slurmd`, say).
///
/// # Errors
/// The helper could not be started.
pub fn verify_with(node: &HelperNode, c: &Cluster, extra: &[&str]) -> Result<Output> {
    let dev = c.dev_root().display().to_string();
    let gres = c.dir().join("gres.conf").display().to_string();
    let inv = c.dir().join("flexmig.toml").display().to_string();
    let conf = c.conf().display().to_string();
    let (fake, minors) = (node.path("node.toml"), node.path("mig-minors"));
    let mut args = vec![
        "--fake-node",
        &fake,
        "--dev-root",
        &dev,
        "--mig-minors",
        &minors,
        "verify",
        "--gres-conf",
        &gres,
        "--inventory",
        &inv,
        "--slurm-conf",
        &conf,
        "--node-name",
        "localhost",
    ];
    args.extend_from_slice(extra);
    helper(&args)
}
