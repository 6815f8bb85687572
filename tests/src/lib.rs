//! A real, throwaway single-node Slurm for flexmig's integration tests and demo.
//!
//! [`Cluster::start`] writes a slurm.conf, gres.conf, plugstack.conf and node inventory into a
//! fresh temporary directory, makes fake MIG leaf devices there with mknod, and starts its own
//! munged, slurmctld and slurmd (foreground children, loopback, free ports). Dropping the
//! [`Cluster`] cancels its jobs and stops the daemons, also when a test panics; on a panic it
//! prints the tail of the daemons' logs.
//!
//! Needs root (daemons, mknod) and the Debian packages slurm-wlm, slurmctld, slurmd,
//! slurm-client and munge; `scripts/test.sh` installs them.
//!
//! Inputs a test may set: [`ClusterConfig`]'s `node_gres` (the slurm.conf `Gres=`),
//! `gres_conf` (full gres.conf text; `@DEV@` is replaced by the cluster's fake device root),
//! `inventory` (the plugin's TOML, `@DEV@` replaced too), `plugstack` (full text; `@PLUGIN@`,
//! `@DIR@` replaced), `slurm_conf_extra` (extra slurm.conf lines, e.g. `JobSubmitPlugins=lua`),
//! and `files` (extra files put next to slurm.conf, e.g. job_submit.lua).

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

pub mod helper_node;
pub mod replay;
pub mod task_env;

/// The name of the unprivileged user the tests run jobs as.
pub const TEST_USER: &str = "flexmig-test";

/// What to put into the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The `Gres=` value of the node line, e.g. `gpu:1g.5gb:12,gpu:1g.10gb:2`.
    pub node_gres: String,
    /// gres.conf text; `@DEV@` stands for the fake device root.
    pub gres_conf: String,
    /// Inventory TOML written to `<dir>/flexmig.toml`; `@DEV@` replaced. None: no file.
    pub inventory: Option<String>,
    /// plugstack.conf text; `@PLUGIN@` is the plugin .so, `@DIR@` the cluster directory.
    pub plugstack: String,
    /// Extra slurm.conf lines.
    pub slurm_conf_extra: String,
    /// Extra files written next to slurm.conf (name, contents).
    pub files: Vec<(String, String)>,
    /// Device files to create under the device root (relative paths such as `nvidia0`,
    /// `nvidia-caps/nvidia-cap12`).
    pub devices: Vec<String>,
    /// CPUs the node claims (slurm.conf overrides the real count).
    pub cpus: u32,
    /// How many nodes: 1 is `localhost`; more are n1, n2, ..., one slurmd each on loopback,
    /// all with the same gres.conf and devices.
    pub nodes: u32,
}

impl ClusterConfig {
    /// The Slurm node names.
    pub fn node_names(&self) -> Vec<String> {
        if self.nodes <= 1 {
            vec!["localhost".to_string()]
        } else {
            (1..=self.nodes).map(|n| format!("n{n}")).collect()
        }
    }
}

/// The plugstack line that loads the built plugin with the cluster's inventory.
/// Every variable the flexmig plugin may set in a task. The harness keeps the caller's values of
/// them out of jobs, so that a step without `--flexmig` can be checked for having none of them.
pub const PLUGIN_VARS: &[&str] = &[
    "CUDA_VISIBLE_DEVICES",
    "NCCL_MIG_ID",
    "NCCL_MULTI_RANK_GPU_ENABLE",
    "NCCL_MAX_NCHANNELS",
    "NCCL_NVLS_ENABLE",
    "NCCL_MNNVL_ENABLE",
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
    "FLEXMIG_HOSTREDUCE",
    "FLEXMIG_GPU",
    "FLEXMIG_PROFILE",
    "FLEXMIG_LEAF",
    "FLEXMIG_LEAVES",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "LD_PRELOAD",
];

pub const DEFAULT_PLUGSTACK: &str = "required @PLUGIN@ inventory=@DIR@/flexmig.toml lock_dir=@DIR@/locks holders_dir=@DIR@/holders\n";

/// One emulated leaf of [`ClusterConfig::emulated`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatedLeaf {
    pub gres_index: u32,
    pub gpu: u32,
    pub profile: String,
    pub uuid: String,
}

impl ClusterConfig {
    /// A node with `gpus` emulated A100-40GB GPUs, built as an admin builds a real one: by
    /// `flexmig-gres-helper` on a fake node (each GPU split into the flexmig layout, 6 x 1g.5gb +
    /// 1 x 1g.10gb; gres.conf, the node's `Gres=` and the inventory in the helper's GRES order),
    /// with the plugin loaded from plugstack and no Lua filters.
    ///
    /// # Panics
    /// When the helper is not built or fails (`cargo test --workspace` builds it).
    pub fn emulated(gpus: u32) -> (Self, Vec<EmulatedLeaf>) {
        Self::emulated_on(gpus, None)
    }

    /// [`ClusterConfig::emulated`] for `nodes` nodes named n1, n2, ... (several slurmd on
    /// loopback). Each node has its own inventory (`flexmig.<node>.toml`, leaf UUIDs that differ
    /// between nodes) and lock directory, named through `%n` in the plugstack arguments.
    pub fn emulated_nodes(nodes: u32, gpus: u32) -> (Self, Vec<Vec<EmulatedLeaf>>) {
        let (mut cfg, _) = Self::emulated_on(gpus, None);
        let mut all = Vec::new();
        for n in 1..=nodes {
            let (c, leaves) = Self::emulated_on(gpus, Some(n));
            cfg.files.push((format!("flexmig.n{n}.toml"), c.inventory.unwrap_or_default()));
            all.push(leaves);
        }
        cfg.inventory = None;
        cfg.nodes = nodes;
        cfg.plugstack = "required @PLUGIN@ inventory=@DIR@/flexmig.%n.toml lock_dir=@DIR@/locks/%n holders_dir=@DIR@/holders/%n\n".into();
        (cfg, all)
    }

    fn emulated_on(gpus: u32, node: Option<u32>) -> (Self, Vec<EmulatedLeaf>) {
        let built = helper_node::build("A100-40GB", gpus).unwrap_or_else(|e| panic!("building the emulated node with the helper: {e:#}"));
        let mut inventory = built.inventory;
        if let Some(n) = node {
            // One fake node's UUIDs for every node: make them differ between nodes.
            for l in &mut inventory.leaves {
                l.uuid = l.uuid.replacen("MIG-", &format!("MIG-{n:x}"), 1);
            }
        }
        let leaves = inventory
            .leaves
            .iter()
            .map(|l| EmulatedLeaf { gres_index: l.gres_index, gpu: l.gpu, profile: l.profile.clone(), uuid: l.uuid.clone() })
            .collect();
        let cfg = ClusterConfig {
            inventory: Some(inventory.to_toml_string()),
            plugstack: DEFAULT_PLUGSTACK.into(),
            slurm_conf_extra: String::new(),
            files: Vec::new(),
            cpus: 32,
            ..built.cfg
        };
        (cfg, leaves)
    }
}

/// A GPU of the machine, for [`ClusterConfig::emulated_gpus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealGpu {
    pub uuid: String,
    pub model: String,
    pub bus_id: String,
}

impl ClusterConfig {
    /// A node whose GPUs are not in MIG mode, each cut into `leaves_per_gpu` emulated leaves of
    /// type `profile`: the inventory's `[emulation]` gives each leaf `sm_percent` of its GPU
    /// under CUDA MPS, its `cuda_device` is the GPU's UUID and its MIG id a synthetic one. GRES
    /// indices go round-robin over the GPUs, as the helper's order does for small leaves.
    pub fn emulated_gpus(gpus: &[RealGpu], leaves_per_gpu: u32, profile: &str, sm_percent: u32) -> (Self, Vec<EmulatedLeaf>) {
        let mut inv = leaf_model::Inventory::new();
        inv.emulation = Some(leaf_model::inventory::Emulation { sm_percent });
        let mut gres = String::from("# flexmig emulated leaves: shares of GPUs that are not in MIG mode\n");
        let mut devices = Vec::new();
        let mut leaves = Vec::new();
        for (g, gpu) in gpus.iter().enumerate() {
            inv.gpus.push(leaf_model::Gpu {
                index: g as u32,
                uuid: gpu.uuid.clone(),
                bus_id: gpu.bus_id.clone(),
                model: gpu.model.clone(),
            });
        }
        for k in 0..leaves_per_gpu {
            for g in 0..gpus.len() as u32 {
                let idx = leaves.len() as u32;
                let dev = format!("flexmig-emu/gpu{g}-leaf{k}");
                gres.push_str(&format!("Name=gpu Type={profile} File=@DEV@/{dev}\n"));
                devices.push(dev);
                let uuid = format!("MIG-e{g:07x}-{k:04x}-4000-8000-{idx:012x}");
                inv.leaves.push(leaf_model::Leaf {
                    gres_index: idx,
                    gpu: g,
                    profile: profile.into(),
                    uuid: uuid.clone(),
                    cuda_device: Some(gpus[g as usize].uuid.clone()),
                    gpu_instance: None,
                });
                leaves.push(EmulatedLeaf { gres_index: idx, gpu: g, profile: profile.into(), uuid });
            }
        }
        let cfg = ClusterConfig {
            node_gres: format!("gpu:{profile}:{}", leaves.len()),
            gres_conf: gres,
            inventory: Some(inv.to_toml_string()),
            plugstack: DEFAULT_PLUGSTACK.into(),
            slurm_conf_extra: String::new(),
            files: Vec::new(),
            devices,
            cpus: 32,
            nodes: 1,
        };
        (cfg, leaves)
    }
}

/// A running throwaway Slurm.
#[derive(Debug)]
pub struct Cluster {
    dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
    plugin: PathBuf,
}

/// A build artifact of this workspace: `$<env_var>` if set, else `<target>/debug/<file>`
/// (target from `CARGO_TARGET_DIR`, default the workspace's `target/`).
///
/// # Errors
/// When it has not been built; the message says how to build it.
pub fn built_artifact(env_var: &str, file: &str, package: &str) -> Result<PathBuf> {
    if let Ok(p) = std::env::var(env_var) {
        return Ok(PathBuf::from(p));
    }
    let target =
        std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("debug").join(file);
    if !p.exists() {
        bail!("{} not found: build it first (cargo build -p {package}) or set {env_var}", p.display());
    }
    Ok(p)
}

/// The built plugin: `$FLEXMIG_SPANK_SO`, else `<target>/debug/libflexmig_spank.so`.
///
/// # Errors
/// When it has not been built.
pub fn plugin_so() -> Result<PathBuf> {
    built_artifact("FLEXMIG_SPANK_SO", "libflexmig_spank.so", "flexmig-spank")
}

/// Creates the unprivileged test user if it does not exist.
///
/// # Errors
/// useradd failing.
pub fn ensure_test_user() -> Result<()> {
    if Command::new("id").arg(TEST_USER).output()?.status.success() {
        return Ok(());
    }
    let out = Command::new("useradd").args(["-M", "-s", "/bin/bash", TEST_USER]).output()?;
    // A concurrent test may have created it in between.
    if !out.status.success() && !Command::new("id").arg(TEST_USER).output()?.status.success() {
        bail!("useradd {TEST_USER}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A port for a daemon of a test cluster. Not one the kernel hands out (bind to port 0 would):
/// those come from the ephemeral range, where srun's and the daemons' own connections take ports
/// while clusters start side by side, so a port found free could be taken before slurmctld binds
/// it. These lie below that range (32768 up by default), and this process never gives one twice.
fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20000;
    const SPAN: u32 = 10000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries running at the same time start at different places.
    let base = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let port = (FIRST + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {FIRST}-{}", FIRST + SPAN - 1)
}

fn which(prog: &str) -> Result<()> {
    let found = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(prog).exists())).unwrap_or(false);
    if !found {
        bail!("{prog} not found: install slurm-wlm slurmctld slurmd slurm-client munge (scripts/test.sh does)");
    }
    Ok(())
}

impl Cluster {
    /// Writes the configuration and starts munged, slurmctld and slurmd; returns when the
    /// node is idle.
    ///
    /// # Errors
    /// Not root, missing Slurm, or a daemon that does not come up (with its log).
    pub fn start(cfg: &ClusterConfig) -> Result<Cluster> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("the integration tests start Slurm daemons and make device nodes: run them as root");
        }
        for p in ["munged", "slurmctld", "slurmd", "srun"] {
            which(p)?;
        }
        let plugin_src = plugin_so()?;
        let dir = tempfile::Builder::new().prefix("flexmig-slurm-").tempdir()?;
        let d = dir.path().to_path_buf();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755))?;
        for sub in ["state", "spool", "munge", "dev/nvidia-caps", "log"] {
            fs::create_dir_all(d.join(sub))?;
        }
        fs::set_permissions(d.join("munge"), fs::Permissions::from_mode(0o755))?;
        // The plugin is installed by copy, as an admin would, so that every user can read it.
        let plugin = d.join("flexmig.so");
        fs::copy(&plugin_src, &plugin).with_context(|| format!("copying {}", plugin_src.display()))?;
        fs::set_permissions(&plugin, fs::Permissions::from_mode(0o755))?;

        let dev = d.join("dev");
        for rel in &cfg.devices {
            let p = dev.join(rel);
            fs::create_dir_all(p.parent().unwrap())?;
            // Character devices with /dev/null's numbers: Slurm only checks the type.
            let st = Command::new("mknod").arg(&p).args(["c", "1", "3"]).status()?;
            if !st.success() {
                bail!("mknod {} failed", p.display());
            }
        }
        let subst = |s: &str| {
            s.replace("@DEV@", &dev.display().to_string())
                .replace("@PLUGIN@", &plugin.display().to_string())
                .replace("@DIR@", &d.display().to_string())
        };
        let (ctld_port, slurmd_port) = (free_port()?, free_port()?);
        let names = cfg.node_names();
        let mut node_lines = String::new();
        for n in &names {
            fs::create_dir_all(d.join("spool").join(n))?;
            if names.len() == 1 {
                node_lines.push_str(&format!("NodeName={n} CPUs={} Gres={} State=UNKNOWN\n", cfg.cpus, cfg.node_gres));
            } else {
                node_lines.push_str(&format!(
                    "NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={} CPUs={} Gres={} State=UNKNOWN\n",
                    free_port()?,
                    cfg.cpus,
                    cfg.node_gres
                ));
            }
        }
        let munge_socket = d.join("munge/munge.socket");
        let slurm_conf = format!(
            "ClusterName=flexmigtest\nSlurmctldHost=localhost\nSlurmctldPort={ctld_port}\nSlurmdPort={slurmd_port}\n\
             SlurmUser=root\nSlurmdUser=root\nAuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={sock}\n\
             StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool/%n\nSlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.%n.pid\n\
             SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.%n.log\nSlurmctldDebug=info\nSlurmdDebug=debug\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
             MpiDefault=none\nAccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/none\nJobAcctGatherType=jobacct_gather/none\n\
             MailProg=/bin/true\nReturnToService=2\nSlurmdParameters=config_overrides\nGresTypes=gpu,mig\nPlugStackConfig={d}/plugstack.conf\n\
             SchedulerParameters=sched_interval=1\nMessageTimeout=20\nKillWait=2\n{extra}\n\
             {node_lines}PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP\n",
            node_lines = node_lines,
            names = names.join(","),
            sock = munge_socket.display(),
            d = d.display(),
            extra = subst(&cfg.slurm_conf_extra),
        );
        write(&d.join("slurm.conf"), &slurm_conf)?;
        write(&d.join("gres.conf"), &subst(&cfg.gres_conf))?;
        write(&d.join("plugstack.conf"), &subst(&cfg.plugstack))?;
        if let Some(inv) = &cfg.inventory {
            write(&d.join("flexmig.toml"), &subst(inv))?;
        }
        for (name, text) in &cfg.files {
            write(&d.join(name), &subst(text))?;
        }

        let mut cluster = Cluster { dir, children: Vec::new(), plugin };
        // munged with a key of its own, on a socket of its own.
        let key = d.join("munge/munge.key");
        let mut bytes = vec![0u8; 1024];
        fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        fs::write(&key, &bytes)?;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400))?;
        let munged = Command::new("munged")
            .args(["--foreground", "--force"])
            .arg(format!("--socket={}", munge_socket.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--pid-file={}", d.join("munge/munged.pid").display()))
            .arg(format!("--log-file={}", d.join("log/munged.log").display()))
            .arg(format!("--seed-file={}", d.join("munge/munged.seed").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(d.join("log/munged.stderr"))?)
            .spawn()
            .context("starting munged")?;
        cluster.children.push(("munged".into(), munged));
        cluster.wait_for("munged socket", || munge_socket.exists())?;

        let ctld = cluster
            .daemon("slurmctld")
            .args(["-D", "-i"])
            .stderr(fs::File::create(d.join("log/slurmctld.stderr"))?)
            .spawn()
            .context("starting slurmctld")?;
        cluster.children.push(("slurmctld".into(), ctld));
        cluster.wait_for("slurmctld", || {
            cluster.command("scontrol").arg("ping").output().map(|o| String::from_utf8_lossy(&o.stdout).contains("UP")).unwrap_or(false)
        })?;
        for n in &names {
            let slurmd = cluster
                .daemon("slurmd")
                .args(["-D", "-N", n])
                .stderr(fs::File::create(d.join(format!("log/slurmd.{n}.stderr")))?)
                .spawn()
                .with_context(|| format!("starting slurmd for {n}"))?;
            cluster.children.push((format!("slurmd {n}"), slurmd));
        }
        let want = names.len();
        cluster.wait_for("all nodes idle", || {
            cluster
                .command("sinfo")
                .args(["-h", "-N", "-o", "%T"])
                .output()
                .map(|o| {
                    let out = String::from_utf8_lossy(&o.stdout).into_owned();
                    out.lines().filter(|l| l.trim() == "idle").count() == want
                })
                .unwrap_or(false)
        })?;
        Ok(cluster)
    }

    fn daemon(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("SLURM_CONF", self.conf()).stdin(Stdio::null()).stdout(Stdio::null());
        c
    }

    fn wait_for(&self, what: &str, mut ok: impl FnMut() -> bool) -> Result<()> {
        let t0 = Instant::now();
        // Generous: on a loaded 2-core CI machine, with a dozen test clusters starting at once,
        // slurmd's registration can take tens of seconds.
        while t0.elapsed() < Duration::from_secs(90) {
            if ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{what} did not come up within 90 s; logs:\n{}", self.log_tails())
    }

    /// The directory holding slurm.conf, gres.conf, plugstack.conf, flexmig.toml.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The root of the fake device files.
    pub fn dev_root(&self) -> PathBuf {
        self.dir().join("dev")
    }

    /// slurm.conf's path.
    pub fn conf(&self) -> PathBuf {
        self.dir().join("slurm.conf")
    }

    /// The installed copy of the plugin.
    pub fn plugin(&self) -> &Path {
        &self.plugin
    }

    /// A Slurm client command (srun, sbatch, scontrol, ...) pointed at this cluster, run as root.
    pub fn command(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("SLURM_CONF", self.conf()).current_dir(self.dir()).stdin(Stdio::null());
        // Keep the caller's flexmig-relevant settings out of jobs.
        for v in PLUGIN_VARS {
            c.env_remove(v);
        }
        // Nor the harness's own settings (FLEXMIG_SPANK_SO, FLEXMIG_GRES_HELPER, ... of the
        // release matrix and the package test): a job sees no FLEXMIG_ variable it did not get.
        for (k, _) in std::env::vars() {
            if (k.starts_with("SLURM_") && k != "SLURM_CONF") || k.starts_with("FLEXMIG_") {
                c.env_remove(k);
            }
        }
        c
    }

    /// A Slurm client command run as [`TEST_USER`] (created if needed).
    ///
    /// # Errors
    /// The user cannot be created.
    pub fn command_as_user(&self, prog: &str) -> Result<Command> {
        ensure_test_user()?;
        let mut c = self.command("runuser");
        c.args(["-u", TEST_USER, "--", prog]);
        Ok(c)
    }

    /// Runs a command and returns its output, whatever its exit status.
    ///
    /// # Errors
    /// The command could not be started.
    pub fn output(cmd: &mut Command) -> Result<Output> {
        cmd.output().with_context(|| format!("running {cmd:?}"))
    }

    /// `slurmd -G` for this node: the GRES as slurmd itself reads gres.conf.
    ///
    /// # Errors
    /// slurmd could not be run.
    pub fn slurmd_g(&self) -> Result<String> {
        let o = self.daemon("slurmd").args(["-G", "-N", "localhost"]).stdout(Stdio::piped()).stderr(Stdio::piped()).output()?;
        Ok(format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    }

    /// Rewrites a file of the cluster directory (atomically, so a running step sees old or new).
    ///
    /// # Errors
    /// I/O.
    pub fn write_file(&self, name: &str, text: &str) -> Result<()> {
        write(&self.dir().join(name), text)
    }

    /// The last lines of every daemon log.
    pub fn log_tails(&self) -> String {
        let mut s = String::new();
        if let Ok(rd) = fs::read_dir(self.dir().join("log")) {
            for e in rd.flatten() {
                let text = fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                s.push_str(&format!("==> {} <==\n{}\n", e.path().display(), lines[lines.len().saturating_sub(40)..].join("\n")));
            }
        }
        s
    }
}

fn write(p: &Path, text: &str) -> Result<()> {
    leaf_model::atomic::write_atomic(p, text.as_bytes(), 0o644).with_context(|| format!("writing {}", p.display()))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = writeln!(std::io::stderr(), "flexmig test cluster {} logs:\n{}", self.dir().display(), self.log_tails());
        }
        // Cancel whatever still runs so no slurmstepd outlives the test.
        let _ = self.command("scancel").args(["-p", "debug"]).output();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            match self.command("squeue").args(["-h", "-o", "%i"]).output() {
                Ok(o) if String::from_utf8_lossy(&o.stdout).trim().is_empty() => break,
                Ok(_) => std::thread::sleep(Duration::from_millis(200)),
                Err(_) => break,
            }
        }
        for (_, child) in self.children.iter_mut().rev() {
            // SAFETY: kill with a pid we spawned and have not reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if t0.elapsed() > Duration::from_secs(5) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}
