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
        // slurmstepd: remembered for init_post_opt, where spank_option_getopt does not see it yet.
        *REMOTE_OPTION.lock().unwrap_or_else(|p| p.into_inner()) = Some(arg.map(str::to_string));
        return Ok(());
    }
    if Mode::parse(arg)? != Mode::Off {
        plugin_args()?;
    }
    Ok(())
}

/// The `--flexmig` argument slurmstepd's option callback was given (Some(None): a bare one).
static REMOTE_OPTION: Mutex<Option<Option<String>>> = Mutex::new(None);

/// What slurmstepd prepared for the step as root, before it forked the tasks (which inherit it).
#[derive(Debug)]
struct Step {
    args: PluginArgs,
    inventory: Inventory,
    /// The step's GPUs as slurmstepd set them (see [`TaskView::gpu_var`]).
    step_gpus: Option<String>,
    /// The step's leaves, locked for the step's lifetime by slurmstepd itself: no program of
    /// the user's ever holds these, so none can keep a leaf after its job.
    _held: Vec<std::os::fd::OwnedFd>,
    /// Where the tasks of this step lock their own leaves (one rank per leaf within the step).
    task_locks: Option<std::path::PathBuf>,
}

static STEP: Mutex<Option<Result<Step>>> = Mutex::new(None);

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

/// `slurm_spank_init_post_opt`: in slurmstepd, as root, once per step before the tasks are
/// forked: checks the step's leaves against what slurmctld allocated and locks them for the
/// step. What goes wrong is reported by the tasks, where the user sees it.
fn init_post_opt(spank: &Spank, _args: &[String]) -> Result<()> {
    if ffi::context() != Context::S_CTX_REMOTE {
        return Ok(());
    }
    let given = spank.flexmig_option().or_else(|| REMOTE_OPTION.lock().unwrap_or_else(|p| p.into_inner()).clone());
    let Some(arg) = given else {
        return Ok(());
    };
    let Ok(mode @ (Mode::Rank | Mode::Node)) = Mode::parse(arg.as_deref()) else {
        return Ok(());
    };
    let step = prepare_step(spank, mode);
    if let Err(e) = &step {
        tracing::debug!("step not prepared: {}", e.message());
    }
    *STEP.lock().unwrap_or_else(|p| p.into_inner()) = Some(step);
    Ok(())
}

fn prepare_step(spank: &Spank, mode: Mode) -> Result<Step> {
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
    let view = step_view(spank)?;
    let step_gpus = spank.getenv(view.gpu_var());
    let view = TaskView { step_gpus: step_gpus.clone(), ..view };
    if let Some(node) = &node {
        match slurm_allocation(view.job_id, node) {
            Allocation::Known(detail) => {
                binding::check_allocated_types(&args, &inventory, &view, &binding::allocated_types(&detail), &node_shown)?;
                binding::check_allocated_indices(&args, &inventory, &view, &detail, &node_shown)?;
            }
            Allocation::Ambiguous => {
                return Err(Error::step(
                    "slurmctld's record of this job holds lines that look like its own GRES detail (in the job's name or comment?), \
                     so flexmig cannot tell which leaves Slurm allocated here; rename the job (sbatch -J) and resubmit",
                ))
            }
            Allocation::Unknown => tracing::debug!("slurmctld's allocation is not known here: leaves are not checked against it"),
        }
    }
    let uuids = binding::leaves_to_lock(mode, &args, &inventory, &view, &node_shown)?;
    let ids: Vec<&str> = uuids.iter().map(String::as_str).collect();
    let held = leaf_lock::open(&args.lock_dir, ids.iter().copied())?.hold_here(&ids)?;
    let task_locks = (!uuids.is_empty()).then(|| args.lock_dir.join("steps").join(format!("{}.{}", view.job_id, view.step_id)));
    Ok(Step { args, inventory, step_gpus, _held: held, task_locks })
}

enum Allocation {
    /// This node's GRES detail of the job (`gpu:1g.5gb:2(IDX:2-3),...`).
    Known(String),
    /// The record names this node's detail more than once: it cannot be told from forged text.
    Ambiguous,
    Unknown,
}

/// What slurmctld says the job was given on `node`, from `scontrol show job -d` run as root from
/// the Slurm installation slurmstepd belongs to (never PATH), in `/`, for at most 10 s. A fresh
/// process: libslurm's own calls made from inside slurmstepd can hit its locks (Slurm 24.11 aborts
/// the step: "auth_g_create: pthread_rwlock_rdlock()").
fn slurm_allocation(job: u32, node: &NodeName) -> Allocation {
    let Some(scontrol) = std::fs::read_link("/proc/self/exe").ok().and_then(|exe| Some(exe.parent()?.parent()?.join("bin/scontrol")))
    else {
        return Allocation::Unknown;
    };
    let Ok(mut child) = std::process::Command::new(&scontrol)
        .args(["show", "job", "-d", &job.to_string()])
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return Allocation::Unknown;
    };
    let t0 = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if t0.elapsed() < std::time::Duration::from_secs(10) => std::thread::sleep(std::time::Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Allocation::Unknown;
            }
        }
    }
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut out, &mut text);
    }
    let jobs = leaf_model::gres_detail::scontrol_jobs(&text);
    // One record, one detail line for this node: anything more was written by the job's owner.
    let ours: Vec<_> = jobs.iter().filter(|j| j.job == job).collect();
    let lines = text.lines().filter(|l| l.trim_start().starts_with("JobId=")).count();
    match ours.as_slice() {
        [j] if lines == 1 => {
            let mut here = j
                .nodes
                .iter()
                .filter(|(list, _)| leaf_model::hostlist::expand(list).map(|n| n.iter().any(|n| n == node.as_str())).unwrap_or(false));
            match (here.next(), here.next()) {
                (Some((_, d)), None) => Allocation::Known(d.clone()),
                (None, _) => Allocation::Unknown,
                _ => Allocation::Ambiguous,
            }
        }
        [] if lines == 0 => Allocation::Unknown,
        _ => Allocation::Ambiguous,
    }
}

/// `slurm_spank_exit`: in slurmstepd at the end of the step, as root: removes the step's task
/// lock directory (the step's own leaf locks go with slurmstepd).
fn exit(_spank: &Spank, _args: &[String]) -> Result<()> {
    if ffi::context() != Context::S_CTX_REMOTE {
        return Ok(());
    }
    let step = STEP.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(Ok(Step { task_locks: Some(dir), .. })) = step {
        leaf_lock::remove_dir(&dir)?;
    }
    Ok(())
}

/// `slurm_spank_task_init_privileged`, in each task as root: opens the task's lock files (in its
/// step's own directory) and its holder record. What goes wrong is reported by `task_init`,
/// where the user sees it.
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
    let guard = STEP.lock().unwrap_or_else(|p| p.into_inner());
    let step = match guard.as_ref() {
        Some(Ok(step)) => step,
        Some(Err(e)) => return Err(e.clone()),
        None => return Err(Error::slurm("slurm_spank_init_post_opt did not run for this step")),
    };
    let node_shown = trusted_node_name()?.map_or("this node".to_string(), |n| n.to_string());
    let task = TaskView { step_gpus: step.step_gpus.clone(), ..task_view(spank, None)? };
    let uuids = binding::leaves_to_lock(mode, &step.args, &step.inventory, &task, &node_shown)?;
    let locks = match &step.task_locks {
        Some(dir) => leaf_lock::open(dir, uuids.iter().map(String::as_str))?,
        None => leaf_lock::OpenLocks::default(),
    };
    let records = if task.is_batch {
        holders::Records::default()
    } else {
        holders::open(
            &step.args.holders_dir,
            step.args.dcgm_job_map.as_deref(),
            (task.job_id, task.step_id, task.local_task_id),
            &uuids,
            &step.inventory,
        )?
    };
    Ok(Prepared { args: step.args.clone(), inventory: step.inventory.clone(), step_gpus: step.step_gpus.clone(), locks, records })
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

/// The step as slurmstepd sees it before any task exists (task ids 0).
fn step_view(spank: &Spank) -> Result<TaskView> {
    let step_id = spank.item_u32(Item::StepId)?;
    Ok(TaskView {
        job_id: spank.item_u32(Item::JobId)?,
        step_id,
        is_batch: step_id == ffi::SLURM_BATCH_SCRIPT,
        is_interactive: step_id == ffi::SLURM_INTERACTIVE_STEP,
        node_id: spank.item_u32(Item::NodeId)?,
        nnodes: spank.item_u32(Item::NNodes)?,
        local_task_id: 0,
        local_task_count: spank.item_u32(Item::LocalTaskCount)?,
        global_task_id: 0,
        total_task_count: spank.item_u32(Item::TotalTaskCount)?,
        step_gpus: None,
    })
}

fn task_view(spank: &Spank, step_gpus: Option<String>) -> Result<TaskView> {
    Ok(TaskView {
        local_task_id: spank.item_u32(Item::TaskId)?,
        global_task_id: spank.item_u32(Item::TaskGlobalId)?,
        step_gpus,
        ..step_view(spank)?
    })
}
