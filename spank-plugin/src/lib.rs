//! flexmig's SPANK plugin: `srun --flexmig` gives every task one MIG leaf of its own.
//!
//! Loaded by srun, sbatch, salloc, slurmd and slurmstepd from plugstack.conf:
//! `required /usr/lib/x86_64-linux-gnu/slurm-wlm/flexmig.so inventory=/etc/slurm/flexmig.toml`.
//! In each task of a `--flexmig` step, root opens the inventory and the lock files of the step's
//! leaves (`task_init_privileged`); then, as the user, the task is given its leaf: the GRES
//! indices Slurm allocated are looked up in the inventory, ordered round-robin across physical
//! GPUs, the leaf is locked and CUDA_VISIBLE_DEVICES, NCCL_MIG_ID, ... and the torch.distributed
//! variables are exported (`task_init`). Steps without `--flexmig` are never touched, and a
//! configuration error only ever fails `--flexmig` steps.
//!
//! The C boundary (the symbols Slurm calls, the spank_* calls, the system calls on lock files) is
//! [`ffi`]; everything here and below is safe Rust.

pub mod binding;
pub mod config;
pub mod error;
mod ffi;
mod holders;
pub mod leaf_lock;
mod slurm_log;
mod trusted_fs;

use std::sync::{Mutex, OnceLock};

use binding::{EnvChange, TaskView};
use config::{Mode, NodeName, PluginArgs};
use error::{Error, Result};
use ffi::{Context, Item, Spank};
use leaf_model::Inventory;

/// The plugstack arguments as `slurm_spank_init` found them. A bad argument is kept as an error
/// for the `--flexmig` steps to report: it must not stop anything else.
static ARGS: OnceLock<Result<PluginArgs>> = OnceLock::new();

fn plugin_args() -> Result<PluginArgs> {
    ARGS.get().cloned().unwrap_or_else(|| Err(Error::slurm("slurm_spank_init did not run before this callback")))
}

/// `slurm_spank_init`, in every context: checks the plugstack arguments and registers
/// `--flexmig[=MODE]`. Never fails: a failing init of a `required` plugin keeps slurmd from
/// starting, fails every step on the node and drains it.
fn init(spank: &Spank, args: &[String]) -> Result<()> {
    let ctx = ffi::context();
    slurm_log::init(matches!(ctx, Context::S_CTX_LOCAL | Context::S_CTX_ALLOCATOR));
    let parsed = PluginArgs::parse(args);
    if let (Err(e), Context::S_CTX_SLURMD) = (&parsed, ctx) {
        // Once per slurmd start, in its log.
        tracing::error!("{}; steps without --flexmig are not affected, --flexmig steps on this node fail until this is fixed", e.message());
    }
    let _ = ARGS.set(parsed);
    if matches!(ctx, Context::S_CTX_LOCAL | Context::S_CTX_REMOTE | Context::S_CTX_ALLOCATOR) {
        if let Err(e) = spank.register_option() {
            tracing::error!("{}; --flexmig is not available", e.message());
        }
    }
    Ok(())
}

/// The `--flexmig` option as srun, sbatch or salloc read it: an unknown mode, or a plugstack
/// line they cannot use, fails the command before anything is submitted or started.
fn option_given(arg: Option<&str>, remote: bool) -> Result<()> {
    if remote {
        return Ok(()); // slurmstepd: the task reads the option itself
    }
    if Mode::parse(arg)? != Mode::Off {
        plugin_args()?;
    }
    Ok(())
}

/// What root prepared in a task for `task_init`, which runs later in the same process.
#[derive(Debug)]
struct Prepared {
    args: PluginArgs,
    inventory: Inventory,
    step_gpus: Option<String>,
    locks: leaf_lock::OpenLocks,
    records: holders::Records,
}

static PREPARED: Mutex<Option<Result<Prepared>>> = Mutex::new(None);

/// The GRES types slurmctld says the job was given on this node, by index (None: not known).
/// Asked once per step, before the tasks are forked, so they inherit it.
static JOB_GRES_TYPES: OnceLock<Option<std::collections::BTreeMap<u32, String>>> = OnceLock::new();

/// `slurm_spank_user_init`, once per step in slurmstepd (as the user): asks slurmctld, through
/// `scontrol show job -d`, which GRES types the job was given on this node, for the tasks to
/// check their leaves against.
fn user_init(spank: &Spank, _args: &[String]) -> Result<()> {
    let Some(arg) = spank.flexmig_option() else {
        return Ok(());
    };
    if !matches!(Mode::parse(arg.as_deref()), Ok(Mode::Rank | Mode::Node)) {
        return Ok(());
    }
    // Asked from a fresh process: libslurm's own RPC calls made from inside slurmstepd can hit
    // its locks (Slurm 24.11 aborts the step: "auth_g_create: pthread_rwlock_rdlock()").
    let types = (|| {
        let node = trusted_node_name().ok()??;
        let job = spank.item_u32(Item::JobId).ok()?;
        let out = std::process::Command::new("scontrol")
            .args(["show", "job", "-d", &job.to_string()])
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        let jobs = leaf_model::gres_detail::scontrol_jobs(&String::from_utf8_lossy(&out.stdout));
        let detail = jobs.iter().find(|j| j.job == job)?.detail_on(node.as_str())?.to_string();
        Some(binding::allocated_types(&detail))
    })();
    if types.is_none() {
        tracing::debug!("the job's GRES types on this node are not known: leaves are not checked against them");
    }
    let _ = JOB_GRES_TYPES.set(types);
    Ok(())
}

/// `slurm_spank_task_init_privileged`, in each task as root: reads the inventory and opens the
/// lock files of the step's leaves. What goes wrong is reported by `task_init`, where the user
/// sees it.
fn task_init_privileged(spank: &Spank, _args: &[String]) -> Result<()> {
    let Some(arg) = spank.flexmig_option() else {
        return Ok(());
    };
    let Ok(mode @ (Mode::Rank | Mode::Node)) = Mode::parse(arg.as_deref()) else {
        return Ok(()); // off, or a bad mode task_init reports
    };
    let prepared = prepare(spank, mode);
    *PREPARED.lock().unwrap_or_else(|p| p.into_inner()) = Some(prepared);
    Ok(())
}

fn prepare(spank: &Spank, mode: Mode) -> Result<Prepared> {
    let node = trusted_node_name()?;
    let args = plugin_args()?.for_node(node.as_ref())?;
    let node_shown = node.as_ref().map_or("this node".to_string(), NodeName::to_string);
    let text = trusted_fs::read_file(&args.inventory).map_err(|e| {
        Error::node(format!(
            "cannot use the node inventory on {node_shown}: {e}; the admin writes it with `flexmig-gres-helper gres-conf --inventory PATH` \
             (a file of root's, in a directory of root's) and names it with inventory= in plugstack.conf"
        ))
    })?;
    let inventory = Inventory::parse(&text, &args.inventory.display().to_string()).map_err(|e| Error::node(e.to_string()))?;
    let task = task_view(spank, None)?;
    let step_gpus = spank.getenv(task.gpu_var());
    let task = TaskView { step_gpus: step_gpus.clone(), ..task };
    if let Some(Some(types)) = JOB_GRES_TYPES.get() {
        binding::check_allocated_types(&args, &inventory, &task, types, &node_shown)?;
    }
    let uuids = binding::leaves_to_lock(mode, &args, &inventory, &task, &node_shown)?;
    let locks = leaf_lock::open(&args.lock_dir, uuids.iter().map(String::as_str))?;
    let records = if task.is_batch {
        holders::Records::default()
    } else {
        holders::open(&args.holders_dir, args.dcgm_job_map.as_deref(), (task.job_id, task.step_id, task.local_task_id), &uuids, &inventory)?
    };
    Ok(Prepared { args, inventory, step_gpus, locks, records })
}

/// This node's Slurm name as slurmd told slurmstepd (slurmstepd puts it in its own process
/// environment). The job's SLURMD_NODENAME is not used: until the task starts it is whatever the
/// user's shell exported through srun.
fn trusted_node_name() -> Result<Option<NodeName>> {
    std::env::var("SLURMD_NODENAME").ok().map(|n| NodeName::parse(&n)).transpose()
}

/// `slurm_spank_task_init`, in each task as the user, before exec: binds the task's leaf and
/// exports what the task needs.
fn task_init(spank: &Spank, _args: &[String]) -> Result<()> {
    let Some(arg) = spank.flexmig_option() else {
        return Ok(()); // no --flexmig: never touch the step
    };
    let mode = Mode::parse(arg.as_deref())?;
    let prepared = PREPARED.lock().unwrap_or_else(|p| p.into_inner()).take();
    let task = task_view(spank, None)?;
    let (plan, held, inventory_emulation) = if mode == Mode::Off {
        let args = plugin_args().unwrap_or_default();
        (binding::plan_task(mode, &args, &Inventory::new(), &task, &|k| spank.getenv(k))?, None, None)
    } else {
        let p = prepared.ok_or_else(|| Error::slurm("slurm_spank_task_init_privileged did not run for this task"))??;
        let task = TaskView { step_gpus: p.step_gpus.clone(), ..task.clone() };
        (binding::plan_task(mode, &p.args, &p.inventory, &task, &|k| spank.getenv(k))?, Some((p.locks, p.records)), p.inventory.emulation)
    };
    if let (Some(e), Some(p)) = (&inventory_emulation, plan.exclusive.first()) {
        tracing::info!("leaf {p} is emulated: a {}% share of its GPU under CUDA MPS, not a MIG instance", e.sm_percent);
    }
    if let Some((locks, records)) = held {
        let exclusive: Vec<&str> = plan.exclusive.iter().map(String::as_str).collect();
        locks.hold(&exclusive)?;
        let pid = std::process::id();
        records.write(&leaf_model::holders::Holder {
            version: leaf_model::holders::VERSION,
            job: task.job_id,
            step: task.step_id,
            task: task.local_task_id,
            rank: task.global_task_id,
            uid: ffi::sys::uid(),
            pid,
            pid_start: leaf_model::holders::process_start(pid).unwrap_or(0),
            leaves: plan.exclusive.clone(),
        })?;
    }
    for c in &plan.env {
        match c {
            EnvChange::Set(k, v) => spank.setenv(k, v)?,
            EnvChange::Unset(k) => spank.unsetenv(k)?,
        }
    }
    let shown: Vec<String> = plan
        .env
        .iter()
        .filter_map(|c| match c {
            EnvChange::Set(k, v) if k.starts_with("FLEXMIG_") || k == "CUDA_VISIBLE_DEVICES" => Some(format!("{k}={v}")),
            _ => None,
        })
        .collect();
    tracing::debug!("mode {mode}: {}", shown.join(" "));
    Ok(())
}

/// `slurm_spank_task_exit`, in slurmstepd as root when a task has ended: removes its holder
/// record and its job from the dcgm-exporter mapping files.
fn task_exit(spank: &Spank, _args: &[String]) -> Result<()> {
    let Some(arg) = spank.flexmig_option() else {
        return Ok(());
    };
    if !matches!(Mode::parse(arg.as_deref()), Ok(Mode::Rank | Mode::Node)) {
        return Ok(());
    }
    let step = spank.item_u32(Item::StepId)?;
    if step == ffi::SLURM_BATCH_SCRIPT {
        return Ok(());
    }
    let node = trusted_node_name()?;
    let args = plugin_args()?.for_node(node.as_ref())?;
    // The inventory names each leaf's GPU instance, for the mapping files; without it, only the
    // record goes.
    let inventory = trusted_fs::read_file(&args.inventory).ok().and_then(|t| Inventory::parse(&t, "inventory").ok()).unwrap_or_default();
    let ids = (spank.item_u32(Item::JobId)?, step, spank.item_u32(Item::TaskId)?);
    holders::remove(&args.holders_dir, args.dcgm_job_map.as_deref(), ids, &inventory)
}

fn task_view(spank: &Spank, step_gpus: Option<String>) -> Result<TaskView> {
    let step_id = spank.item_u32(Item::StepId)?;
    Ok(TaskView {
        job_id: spank.item_u32(Item::JobId)?,
        step_id,
        is_batch: step_id == ffi::SLURM_BATCH_SCRIPT,
        node_id: spank.item_u32(Item::NodeId)?,
        nnodes: spank.item_u32(Item::NNodes)?,
        local_task_id: spank.item_u32(Item::TaskId)?,
        local_task_count: spank.item_u32(Item::LocalTaskCount)?,
        global_task_id: spank.item_u32(Item::TaskGlobalId)?,
        total_task_count: spank.item_u32(Item::TotalTaskCount)?,
        step_gpus,
    })
}
