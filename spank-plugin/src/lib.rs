//! flexmig's SPANK plugin: `srun --flexmig` gives every task one MIG leaf of its own.
//!
//! Loaded by srun, sbatch, salloc and slurmstepd from plugstack.conf:
//! `required /usr/lib/x86_64-linux-gnu/slurm-wlm/flexmig.so inventory=/etc/slurm/flexmig.toml`.
//! In each task of a `--flexmig` step it reads the step's GRES indices, looks the leaves up in
//! the node inventory, orders them round-robin across physical GPUs and exports the task's
//! leaf (CUDA_VISIBLE_DEVICES, NCCL_MIG_ID, ...) and the torch.distributed variables.
//! Steps without `--flexmig` are never touched.

pub mod binding;
pub mod config;
mod ffi;
pub mod hostlist;
pub mod leaf_lock;
mod slurm_log;

use std::ffi::{c_char, c_int, c_uint};

use binding::{EnvChange, TaskView};
use config::{Mode, PluginArgs};
use ffi::{Context, Item, Spank};
use leaf_model::Inventory;

/// The Slurm version this plugin was built against (major.minor.micro).
pub const SLURM_VERSION: &str = env!("FLEXMIG_SLURM_VERSION");

// The symbols Slurm's plugin loader reads (what SPANK_PLUGIN(flexmig, 1) declares in C).
#[no_mangle]
#[used]
pub static plugin_name: [u8; 8] = *b"flexmig\0";
#[no_mangle]
#[used]
pub static plugin_type: [u8; 6] = *b"spank\0";
#[no_mangle]
#[used]
pub static plugin_version: c_uint = ffi::SLURM_VERSION_NUMBER;
#[no_mangle]
#[used]
pub static spank_plugin_version: c_uint = 1;

/// Called in every context (srun, sbatch/salloc, slurmstepd, slurmd): checks the plugstack
/// arguments and registers `--flexmig[=MODE]`.
///
/// # Safety
/// Called by Slurm with its live handle and `ac` valid argument strings in `av`.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_init(sp: ffi::spank_t, ac: c_int, av: *mut *mut c_char) -> c_int {
    let ctx = ffi::context();
    slurm_log::init(matches!(ctx, Context::S_CTX_LOCAL | Context::S_CTX_ALLOCATOR));
    ffi::guard("slurm_spank_init", || {
        let _span = tracing::debug_span!("init").entered();
        // SAFETY: Slurm passes ac valid argument strings.
        let args = unsafe { ffi::args(ac, av) };
        PluginArgs::parse(&args)?;
        if matches!(ctx, Context::S_CTX_LOCAL | Context::S_CTX_REMOTE | Context::S_CTX_ALLOCATOR) {
            // SAFETY: sp is the handle of this callback.
            let spank = unsafe { Spank::new(sp) };
            spank.register_option(Some(option_callback))?;
        }
        Ok(())
    })
}

/// The `--flexmig` option callback: refuses an unknown mode in srun/sbatch/salloc, before
/// anything starts. In slurmstepd it runs after init, twice, and does nothing (the task reads
/// the option itself with spank_option_getopt).
extern "C" fn option_callback(_val: c_int, optarg: *const c_char, remote: c_int) -> c_int {
    ffi::guard("the --flexmig option", || {
        if remote != 0 {
            return Ok(());
        }
        let arg = if optarg.is_null() {
            None
        } else {
            // SAFETY: Slurm passes a NUL-terminated option argument (or NULL).
            Some(unsafe { std::ffi::CStr::from_ptr(optarg) }.to_string_lossy().into_owned())
        };
        Mode::parse(arg.as_deref()).map(|_| ())
    })
}

/// Runs in each forked task as root, before the task becomes the user: makes sure the leaf
/// lock files exist (root-owned, so users cannot tamper with them).
///
/// # Safety
/// Called by Slurm with its live handle and `ac` valid argument strings in `av`.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_task_init_privileged(sp: ffi::spank_t, ac: c_int, av: *mut *mut c_char) -> c_int {
    ffi::guard("slurm_spank_task_init_privileged", || {
        let _span = tracing::debug_span!("task_init_privileged").entered();
        // SAFETY: sp is the handle of this callback.
        let spank = unsafe { Spank::new(sp) };
        let Some(arg) = spank.flexmig_option() else {
            return Ok(());
        };
        if !matches!(Mode::parse(arg.as_deref()), Ok(Mode::Rank | Mode::Node)) {
            return Ok(()); // task_init reports a bad mode
        }
        // SAFETY: Slurm passes ac valid argument strings.
        let args = PluginArgs::parse(&unsafe { ffi::args(ac, av) })?.for_node(node_name(&spank).as_deref())?;
        // An unreadable inventory is reported by task_init, as the user sees it.
        if let Ok(inventory) = Inventory::load(&args.inventory) {
            leaf_lock::prepare(&args.lock_dir, inventory.leaves.iter().map(|l| l.uuid.as_str()))?;
        }
        Ok(())
    })
}

/// Runs in each forked task, as the user, after Slurm set the GPU variables and before exec.
///
/// # Safety
/// Called by Slurm with its live handle and `ac` valid argument strings in `av`.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_task_init(sp: ffi::spank_t, ac: c_int, av: *mut *mut c_char) -> c_int {
    ffi::guard("slurm_spank_task_init", || {
        let _span = tracing::debug_span!("task_init").entered();
        // SAFETY: sp is the handle of this callback.
        let spank = unsafe { Spank::new(sp) };
        let Some(arg) = spank.flexmig_option() else {
            return Ok(()); // no --flexmig: never touch the step
        };
        let mode = Mode::parse(arg.as_deref())?;
        if mode == Mode::Off {
            return Ok(());
        }
        // SAFETY: Slurm passes ac valid argument strings.
        let args = PluginArgs::parse(&unsafe { ffi::args(ac, av) })?.for_node(spank.getenv("SLURMD_NODENAME").as_deref())?;
        let task = task_view(&spank)?;
        let inventory = Inventory::load(&args.inventory).map_err(|e| format!("flexmig: {e}"))?;
        let plan = binding::plan_task(mode, &args, &inventory, &task, &|k| spank.getenv(k))?;
        for uuid in &plan.exclusive {
            leaf_lock::lock(&args.lock_dir, uuid)?;
        }
        let changes = plan.env;
        for c in &changes {
            match c {
                EnvChange::Set(k, v) => spank.setenv(k, v)?,
                EnvChange::Unset(k) => spank.unsetenv(k)?,
            }
        }
        let shown: Vec<String> = changes
            .iter()
            .filter_map(|c| match c {
                EnvChange::Set(k, v) if k.starts_with("FLEXMIG_") || k == "CUDA_VISIBLE_DEVICES" => Some(format!("{k}={v}")),
                _ => None,
            })
            .collect();
        tracing::debug!("job {} step {} task {} (mode {mode}): {}", task.job_id, task.step_id, task.global_task_id, shown.join(" "));
        Ok(())
    })
}

/// This node's Slurm name. SLURMD_NODENAME is set for the task only after
/// task_init_privileged, so there it is the step's node list at this node's index.
fn node_name(spank: &Spank) -> Option<String> {
    if let Some(n) = spank.getenv("SLURMD_NODENAME") {
        return Some(n);
    }
    let id = spank.item_u32(Item::NodeId).ok()? as usize;
    ["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"]
        .iter()
        .find_map(|v| spank.getenv(v))
        .and_then(|l| hostlist::expand(&l))
        .and_then(|hosts| hosts.get(id).cloned())
}

fn task_view(spank: &Spank) -> Result<TaskView, String> {
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
    })
}
