//! Which leaf each task gets, and the environment that tells the task about it.
//! Pure logic over the node inventory and what Slurm put in the job environment; no FFI.

use std::collections::{BTreeMap, BTreeSet};

use leaf_model::{Inventory, Leaf};

use crate::config::{Mode, PluginArgs};
use crate::error::{Error, Result};
use leaf_model::hostlist;

/// What Slurm tells the plugin about the task being started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskView {
    pub job_id: u32,
    pub step_id: u32,
    /// True for the batch script's own step.
    pub is_batch: bool,
    /// True for `srun --interactive` (salloc's shell): like the batch script, Slurm sets only the
    /// job's GPUs (SLURM_JOB_GPUS) for it, so SLURM_STEP_GPUS is whatever the user exported.
    pub is_interactive: bool,
    pub node_id: u32,
    pub nnodes: u32,
    pub local_task_id: u32,
    pub local_task_count: u32,
    pub global_task_id: u32,
    pub total_task_count: u32,
    /// The step's GPUs (`SLURM_STEP_GPUS`, `SLURM_JOB_GPUS` for the batch script) as slurmstepd
    /// set them for the whole step, before per-task GPU binding (`--gpus-per-task`,
    /// `--gpu-bind`) narrowed them to the task's own; None where that is not known (then the
    /// task's list is the step's).
    pub step_gpus: Option<String>,
}

impl TaskView {
    /// The variable slurmstepd itself sets to the allocated GRES indices (overwriting or
    /// removing the user's): the job's for the batch script and the interactive step, the
    /// step's for every other step.
    pub fn gpu_var(&self) -> &'static str {
        if self.is_batch || self.is_interactive {
            "SLURM_JOB_GPUS"
        } else {
            "SLURM_STEP_GPUS"
        }
    }
}

/// One change to the task's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvChange {
    Set(String, String),
    Unset(String),
}

/// What the plugin does to one task.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskPlan {
    /// Changes to the task's environment, in order.
    pub env: Vec<EnvChange>,
    /// MIG UUIDs of the leaves the task binds exclusively (locked for the task's lifetime).
    pub exclusive: Vec<String>,
}

/// The variables torch.distributed reads; set only where the user has not set them.
pub const TORCH_VARS: [&str; 6] = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"];

/// Parses a GRES index list as Slurm writes it (`0,2,4` or `0-2,5`).
///
/// # Errors
/// Anything that is not a comma-separated list of indices or ascending ranges.
pub fn parse_index_list(s: &str) -> std::result::Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let num = |t: &str| t.trim().parse::<u32>().map_err(|_| format!("`{t}` is not a GRES index"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b || b - a > 4096 {
                    return Err(format!("`{part}` is not an ascending range"));
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    Ok(out)
}

/// Looks the allocated GRES indices up in the inventory and orders the leaves round-robin
/// across physical GPUs: leaf k of each GPU (in GPU index order), then leaf k+1, ...
/// Within a GPU, leaves keep GRES index order.
///
/// # Errors
/// An index with no leaf in the inventory, or an index given twice.
pub fn balanced_leaves<'a>(inv: &'a Inventory, indices: &[u32], var: &str, list: &str, inventory_path: &str) -> Result<Vec<&'a Leaf>> {
    let mut seen = BTreeSet::new();
    let mut per_gpu: BTreeMap<u32, Vec<&Leaf>> = BTreeMap::new();
    for &i in indices {
        if !seen.insert(i) {
            return Err(Error::node(format!(
                "GRES index {i} appears twice in {var}={list}; refusing to bind two ranks to one MIG leaf (report this to the Slurm admin)"
            )));
        }
        let leaf = inv.leaf_by_gres_index(i).ok_or_else(|| {
            Error::node(format!(
                "GRES index {i} (from {var}={list}) has no MIG leaf in the node inventory {inventory_path}: \
                 the inventory and gres.conf disagree; the admin should run `flexmig-gres-helper verify` on this node"
            ))
        })?;
        per_gpu.entry(leaf.gpu).or_default().push(leaf);
    }
    for leaves in per_gpu.values_mut() {
        leaves.sort_by_key(|l| l.gres_index);
    }
    let rounds = per_gpu.values().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::with_capacity(indices.len());
    for k in 0..rounds {
        for leaves in per_gpu.values() {
            if let Some(l) = leaves.get(k) {
                out.push(*l);
            }
        }
    }
    Ok(out)
}

/// NCCL's channel and CTA count settings: a user who sets any of them keeps their own tuning.
pub const NCCL_CHANNEL_VARS: &[&str] = &["NCCL_MAX_NCHANNELS", "NCCL_MIN_NCHANNELS", "NCCL_MAX_CTAS", "NCCL_MIN_CTAS"];

/// MASTER_PORT for a step: the same for every task of the step, different for the steps of
/// one job (and, mostly, of different jobs).
pub fn master_port(job_id: u32, step_id: u32, (lo, hi): (u16, u16)) -> u16 {
    let span = u64::from(hi - lo) + 1;
    // The batch step's id is 0xfffffffb: fold it into the same range as ordinary steps.
    let key = u64::from(job_id) * 1000 + u64::from(step_id % 1000);
    lo + (key % span) as u16
}

/// The LD_PRELOAD value with `lib` in front, unless it is already an entry.
fn preload_with(lib: &str, existing: Option<&str>) -> Option<String> {
    match existing.map(str::trim).filter(|s| !s.is_empty()) {
        None => Some(lib.to_string()),
        Some(e) if e.split([' ', ':']).any(|x| x == lib) => None,
        Some(e) => Some(format!("{lib} {e}")),
    }
}

/// Variables that only flexmig sets: present in a step's environment, they come from an outer
/// flexmig view (the batch script of `sbatch --flexmig`, a `--flexmig=node` launcher).
const RANK_VIEW: [&str; 3] = ["FLEXMIG_LEAF", "FLEXMIG_GPU", "FLEXMIG_PROFILE"];
const NODE_VIEW: [&str; 3] = ["FLEXMIG_LEAVES", "FLEXMIG_GPUS", "FLEXMIG_PROFILES"];

/// The step's leaves as listed in `var` (task-time value), balanced across GPUs.
fn allocated<'a>(args: &PluginArgs, inv: &'a Inventory, task: &TaskView, list: Option<String>, node: &str) -> Result<Vec<&'a Leaf>> {
    let var = task.gpu_var();
    let list = list.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
        Error::step(format!(
            "no GPUs are allocated to this {} on {node} ({var} is not set): ask for MIG leaves with \
             --gres=mig:N (or --gres=gpu:<profile>:N) in sbatch/srun, or run without --flexmig (--flexmig=off for a step inside an `sbatch --flexmig` job)",
            if task.is_batch { "batch script" } else { "step" }
        ))
    })?;
    let indices = parse_index_list(&list).map_err(|e| Error::slurm(format!("cannot read {var}={list} on {node}: {e}")))?;
    balanced_leaves(inv, &indices, var, &list, &args.inventory.display().to_string())
}

/// The leaves whose lock files root opens for a task (in task_init_privileged): every leaf of the
/// step, since per-task GPU binding picks among them only later; none for the batch script,
/// which binds nothing, and none without a binding mode.
///
/// # Errors
/// As [`plan_task`] for the step's GPU list.
pub fn leaves_to_lock(mode: Mode, args: &PluginArgs, inv: &Inventory, task: &TaskView, node: &str) -> Result<Vec<String>> {
    if mode == Mode::Off || task.is_batch {
        return Ok(Vec::new());
    }
    Ok(allocated(args, inv, task, task.step_gpus.clone(), node)?.iter().map(|l| l.uuid.clone()).collect())
}

/// The GRES type Slurm allocated at each index, from slurmctld's detail entry for this node
/// (`scontrol show job -d`: `gpu:1g.10gb:2(IDX:0-1),gpu:1g.20gb:1(IDX:12),mig:0`). Untyped
/// entries (`gpu:2(IDX:0-1)`) say nothing of types and are left out.
pub fn allocated_types(detail: &str) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    for e in leaf_model::gres_detail::parse(detail).into_iter().filter(|e| e.name == "gpu") {
        if let Some(ty) = e.type_name {
            out.extend(e.indices.into_iter().map(|i| (i, ty.clone())));
        }
    }
    out
}

/// Refuses a step whose leaves are not of the type Slurm allocated at their GRES index: then
/// slurm.conf's `Gres=` type order numbers the leaves differently from gres.conf and the
/// inventory, and the leaf the inventory names may be one Slurm gave another job.
///
/// # Errors
/// The first leaf whose profile differs, with what the admin should run.
pub fn check_allocated_types(args: &PluginArgs, inv: &Inventory, task: &TaskView, types: &BTreeMap<u32, String>, node: &str) -> Result<()> {
    for leaf in allocated(args, inv, task, task.step_gpus.clone(), node)? {
        match types.get(&leaf.gres_index) {
            Some(ty) if *ty != leaf.profile => {
                return Err(Error::node(format!(
                    "Slurm allocated GRES index {} on {node} as a {ty}, but the node inventory {} names the {} leaf {} there: \
                     slurm.conf's Gres= type order and gres.conf disagree, so the leaf may belong to another job; refusing to bind it. \
                     The admin should run `flexmig-gres-helper verify` on this node",
                    leaf.gres_index,
                    args.inventory.display(),
                    leaf.profile,
                    leaf.uuid
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Refuses a step whose GRES indices are not all among those slurmctld allocated to the job on
/// this node (`detail`, its `scontrol show job -d` entry for the node).
///
/// # Errors
/// The first index Slurm did not allocate to the job here.
pub fn check_allocated_indices(args: &PluginArgs, inv: &Inventory, task: &TaskView, detail: &str, node: &str) -> Result<()> {
    let allocated: BTreeSet<u32> =
        leaf_model::gres_detail::parse(detail).into_iter().filter(|e| e.name == "gpu").flat_map(|e| e.indices).collect();
    for leaf in allocated_leaves(args, inv, task, node)? {
        if !allocated.contains(&leaf.gres_index) {
            return Err(Error::step(format!(
                "GRES index {} (leaf {}) is in {} but slurmctld allocated only {detail} to job {} on {node}; refusing to bind it",
                leaf.gres_index,
                leaf.uuid,
                task.gpu_var(),
                task.job_id
            )));
        }
    }
    Ok(())
}

fn allocated_leaves<'a>(args: &PluginArgs, inv: &'a Inventory, task: &TaskView, node: &str) -> Result<Vec<&'a Leaf>> {
    allocated(args, inv, task, task.step_gpus.clone(), node)
}

/// Everything the plugin decides for one task, given the mode, the plugstack arguments, the node
/// inventory and the job environment (`env`, as the task will see it).
///
/// # Errors
/// A message for the user saying what is wrong and what to do.
pub fn plan_task(
    mode: Mode,
    args: &PluginArgs,
    inv: &Inventory,
    task: &TaskView,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TaskPlan> {
    let mut plan = Plan { env, out: Vec::new(), emulation: inv.emulation.as_ref() };
    if mode == Mode::Off {
        plan.drop_inherited_view(args);
        return Ok(TaskPlan { env: plan.out, exclusive: Vec::new() });
    }
    let node = env("SLURMD_NODENAME").unwrap_or_else(|| "this node".into());
    let var = task.gpu_var();
    let task_list = env(var);
    let leaves = allocated(args, inv, task, task_list.clone(), &node)?;
    // Per-task GPU binding narrowed the task's list: Slurm chose the task's leaves itself.
    let bound_by_slurm = match (&task.step_gpus, &task_list) {
        (Some(step), Some(own)) => index_set(step) != index_set(own),
        _ => false,
    };
    let exclusive = if task.is_batch || mode == Mode::Node {
        plan.node_view(args, task, &leaves, &node)?
    } else {
        let leaf = if bound_by_slurm {
            leaves[0]
        } else {
            if task.local_task_count as usize > leaves.len() {
                let list = task_list.unwrap_or_default();
                let n = leaves.len();
                return Err(Error::step(format!(
                    "this step has {} tasks on {node} but only {n} MIG leaves ({var}={list}), so task {n} and up would have no leaf: \
                     ask for --gres=mig:{} or run at most {n} tasks per node (--ntasks-per-node={n})",
                    task.local_task_count, task.local_task_count,
                )));
            }
            leaves[task.local_task_id as usize]
        };
        plan.rank_view(args, task, leaf, &node)?
    };
    plan.nccl_on_mig();
    plan.nccl_channels(args, task);
    plan.nccl_preload(args, &node)?;
    Ok(TaskPlan { env: plan.out, exclusive })
}

fn index_set(list: &str) -> Option<BTreeSet<u32>> {
    parse_index_list(list).ok().map(|v| v.into_iter().collect())
}

/// The environment changes of one task, as they are decided.
struct Plan<'e> {
    env: &'e dyn Fn(&str) -> Option<String>,
    out: Vec<EnvChange>,
    emulation: Option<&'e leaf_model::inventory::Emulation>,
}

impl Plan<'_> {
    fn set(&mut self, k: &str, v: impl Into<String>) {
        self.out.push(EnvChange::Set(k.to_string(), v.into()));
    }

    /// Sets `k` unless the user did (and the value is the user's own, `keep_users`).
    fn set_unless_users(&mut self, k: &str, v: impl Into<String>, keep_users: bool) {
        if !(keep_users && (self.env)(k).is_some()) {
            self.set(k, v);
        }
    }

    fn unset_present(&mut self, vars: &[&str]) {
        for v in vars {
            if (self.env)(v).is_some() {
                self.out.push(EnvChange::Unset(v.to_string()));
            }
        }
    }

    fn first_node(&self, node: &str) -> Result<String> {
        ["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"]
            .iter()
            .find_map(|v| (self.env)(v).and_then(|l| hostlist::first_host(&l)))
            .ok_or_else(|| {
                Error::slurm(format!("cannot tell the step's first node on {node}: SLURM_STEP_NODELIST is not set or malformed"))
            })
    }

    /// One leaf for the task: its device, its MIG id and the torch.distributed variables.
    fn rank_view(&mut self, args: &PluginArgs, task: &TaskView, leaf: &Leaf, node: &str) -> Result<Vec<String>> {
        // An outer node view (the batch script's) names leaves this task does not hold.
        self.unset_present(&NODE_VIEW);
        self.set("CUDA_VISIBLE_DEVICES", leaf.cuda_device());
        self.set("NCCL_MIG_ID", leaf.uuid.clone());
        self.set("NCCL_MULTI_RANK_GPU_ENABLE", "1");
        self.set("FLEXMIG_LEAF", leaf.uuid.clone());
        self.set("FLEXMIG_GPU", leaf.gpu.to_string());
        self.set("FLEXMIG_PROFILE", leaf.profile.clone());
        self.emulated_share();
        if args.torch_env {
            let addr = self.first_node(node)?;
            // srun gives every task the same environment, so in a step of several tasks a rank
            // or size that is already set was inherited (srun run from inside a torchrun
            // worker, say) and is wrong for all tasks but at most one: Slurm's values win.
            let users = task.total_task_count <= 1;
            self.set_unless_users("RANK", task.global_task_id.to_string(), users);
            self.set_unless_users("WORLD_SIZE", task.total_task_count.to_string(), users);
            self.set_unless_users("LOCAL_RANK", task.local_task_id.to_string(), users);
            self.set_unless_users("LOCAL_WORLD_SIZE", task.local_task_count.to_string(), users);
            self.set_unless_users("MASTER_ADDR", addr, true);
            self.set_unless_users("MASTER_PORT", master_port(task.job_id, task.step_id, args.master_ports).to_string(), true);
        }
        Ok(vec![leaf.uuid.clone()])
    }

    /// All of the node's leaves for one process (a launcher such as torchrun, or the batch
    /// script, whose inner steps bind the leaves).
    fn node_view(&mut self, args: &PluginArgs, task: &TaskView, leaves: &[&Leaf], node: &str) -> Result<Vec<String>> {
        if !task.is_batch && task.local_task_count > 1 {
            return Err(Error::step(format!(
                "--flexmig=node runs one task per node that gets all of the node's leaves, but this step has \
                 {} tasks on {node}: use `srun --ntasks-per-node=1 --flexmig=node` (or --flexmig for one leaf per task)",
                task.local_task_count
            )));
        }
        self.unset_present(&RANK_VIEW);
        let join = |f: &dyn Fn(&Leaf) -> String| leaves.iter().map(|l| f(l)).collect::<Vec<_>>().join(",");
        self.set("CUDA_VISIBLE_DEVICES", join(&|l| l.cuda_device().to_string()));
        self.set("FLEXMIG_LEAVES", join(&|l| l.uuid.clone()));
        self.set("FLEXMIG_GPUS", join(&|l| l.gpu.to_string()));
        self.set("FLEXMIG_PROFILES", join(&|l| l.profile.clone()));
        self.set("NCCL_MULTI_RANK_GPU_ENABLE", "1");
        // One process holds several leaves: a single NCCL_MIG_ID would be wrong for its workers.
        self.unset_present(&["NCCL_MIG_ID"]);
        if task.is_batch {
            return Ok(Vec::new()); // the batch script only launches steps; those bind the leaves
        }
        self.emulated_share();
        if args.torch_env {
            let addr = self.first_node(node)?;
            let port = master_port(task.job_id, task.step_id, args.master_ports).to_string();
            let n = leaves.len().to_string();
            // As in rank_view: with several tasks an inherited node rank is wrong for most.
            let users = task.total_task_count <= 1;
            self.set_unless_users("MASTER_ADDR", addr.clone(), true);
            self.set_unless_users("MASTER_PORT", port.clone(), true);
            self.set_unless_users("LOCAL_WORLD_SIZE", n.clone(), true);
            self.set_unless_users("NODE_RANK", task.node_id.to_string(), users);
            // torchrun reads its options from PET_* variables.
            self.set_unless_users("PET_NPROC_PER_NODE", n, true);
            self.set_unless_users("PET_NNODES", task.nnodes.to_string(), users);
            self.set_unless_users("PET_NODE_RANK", task.node_id.to_string(), users);
            self.set_unless_users("PET_MASTER_ADDR", addr, true);
            self.set_unless_users("PET_MASTER_PORT", port, true);
        }
        Ok(leaves.iter().map(|l| l.uuid.clone()).collect())
    }

    /// `--flexmig=off` inside a flexmig job: take back what the outer view set.
    fn drop_inherited_view(&mut self, args: &PluginArgs) {
        let inherited = RANK_VIEW.iter().chain(&NODE_VIEW).any(|v| (self.env)(v).is_some());
        if !inherited {
            return;
        }
        self.unset_present(&RANK_VIEW);
        self.unset_present(&NODE_VIEW);
        self.unset_present(&["NCCL_MIG_ID", "NCCL_MULTI_RANK_GPU_ENABLE", "NCCL_NVLS_ENABLE", "NCCL_MNNVL_ENABLE", "FLEXMIG_HOSTREDUCE"]);
        if let Some(preload) = (self.env)("LD_PRELOAD") {
            let ours: Vec<String> = args.nccl.iter().chain(&args.hostreduce).map(|p| p.display().to_string()).collect();
            let rest: Vec<&str> = preload.split([' ', ':']).filter(|e| !e.is_empty() && !ours.iter().any(|o| o == e)).collect();
            if rest.len() != preload.split([' ', ':']).filter(|e| !e.is_empty()).count() {
                if rest.is_empty() {
                    self.out.push(EnvChange::Unset("LD_PRELOAD".into()));
                } else {
                    self.set("LD_PRELOAD", rest.join(" "));
                }
            }
        }
    }

    /// On emulated leaves, the task's share of the GPU under CUDA MPS (a user's own share stays).
    fn emulated_share(&mut self) {
        if let Some(e) = self.emulation {
            self.set_unless_users("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", e.sm_percent.to_string(), true);
        }
    }

    /// What NCCL's own MIG support (2.31 and later) needs: no multi-node NVLink, and never NVLS,
    /// which MIG instances do not have (`NCCL_NVLS_ENABLE=1` aborts NCCL's init there, so even a
    /// user's 1 is overridden). Patched NCCL reads neither.
    fn nccl_on_mig(&mut self) {
        self.set("NCCL_NVLS_ENABLE", "0");
        self.set_unless_users("NCCL_MNNVL_ENABLE", "0", true);
    }

    fn nccl_channels(&mut self, args: &PluginArgs, task: &TaskView) {
        if let Some(n) = args.nccl_max_channels {
            // Single-node steps only: between nodes NCCL needs its channels for the network. The
            // batch step is left alone so that its inner steps decide for themselves.
            let user_tuned = NCCL_CHANNEL_VARS.iter().any(|v| (self.env)(v).is_some());
            if !task.is_batch && task.nnodes == 1 && !user_tuned {
                self.set("NCCL_MAX_NCHANNELS", n.to_string());
            }
        }
    }

    /// LD_PRELOAD with the host-reduce library (first, so its NCCL entry points win) and the
    /// patched NCCL in front of the user's own entries; FLEXMIG_HOSTREDUCE for the former.
    fn nccl_preload(&mut self, args: &PluginArgs, node: &str) -> Result<()> {
        let libs: Vec<(&std::path::Path, &str, &str)> = [
            args.hostreduce.as_deref().map(|p| (p, "hostreduce", "the host-reduce library")),
            args.nccl.as_deref().map(|p| (p, "nccl", "the patched NCCL")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if libs.is_empty() {
            return Ok(());
        }
        for (lib, key, what) in &libs {
            if !lib.is_file() {
                return Err(Error::node(format!(
                    "{what} {} named by {key}= in plugstack.conf does not exist on {node}: install it there \
                     (flexmig-gres-helper nccl install for NCCL) or fix the plugstack.conf line",
                    lib.display()
                )));
            }
        }
        let mut preload = (self.env)("LD_PRELOAD");
        for (lib, ..) in libs.iter().rev() {
            if let Some(v) = preload_with(&lib.display().to_string(), preload.as_deref()) {
                preload = Some(v);
            }
        }
        if preload != (self.env)("LD_PRELOAD") {
            self.set("LD_PRELOAD", preload.unwrap_or_default());
        }
        if args.hostreduce.is_some() {
            self.set_unless_users("FLEXMIG_HOSTREDUCE", args.hostreduce_mode.as_str(), true);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leaf_model::Gpu;
    use std::collections::HashMap;

    /// Two GPUs, 6 small leaves (MIG-<gpu>-0..5, 1g.5gb) and one double (MIG-<gpu>-6, 1g.10gb)
    /// each, numbered in the GRES order the helper writes: the doubles (0, 1), then the small
    /// leaves round-robin (2 + 2k + gpu is small leaf k of that GPU).
    fn inventory() -> Inventory {
        use leaf_model::gres_order::{flexmig_order, OrderLeaf};
        use leaf_model::layout::LeafRole;
        let mut inv = Inventory::new();
        let mut node = Vec::new();
        for g in 0..2 {
            inv.gpus.push(Gpu { index: g, uuid: format!("GPU-{g}"), bus_id: format!("0000:0{g}:00.0"), model: "A100".into() });
            for k in 0..7 {
                let (role, profile, rank) = if k == 6 { (LeafRole::Double, "1g.10gb", 0) } else { (LeafRole::Small, "1g.5gb", k) };
                node.push((OrderLeaf { gpu: g, role, profile: profile.into(), rank }, k));
            }
        }
        let order = flexmig_order(&node.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>());
        for (gres, &i) in order.iter().enumerate() {
            let (l, k) = &node[i];
            inv.leaves.push(Leaf {
                gres_index: gres as u32,
                gpu: l.gpu,
                profile: l.profile.clone(),
                uuid: format!("MIG-{}-{k}", l.gpu),
                cuda_device: None,
                gpu_instance: None,
            });
        }
        inv
    }

    fn task(local: u32, count: u32) -> TaskView {
        TaskView {
            job_id: 42,
            step_id: 3,
            is_batch: false,
            node_id: 0,
            nnodes: 1,
            local_task_id: local,
            local_task_count: count,
            global_task_id: local,
            total_task_count: count,
            step_gpus: None,
            is_interactive: false,
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    fn as_map(ch: &[EnvChange]) -> HashMap<String, String> {
        ch.iter()
            .filter_map(|c| match c {
                EnvChange::Set(k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn index_lists() {
        assert_eq!(parse_index_list("0,2,4").unwrap(), vec![0, 2, 4]);
        assert_eq!(parse_index_list("3-5,9").unwrap(), vec![3, 4, 5, 9]);
        assert_eq!(parse_index_list("7").unwrap(), vec![7]);
        assert!(parse_index_list("").is_err());
        assert!(parse_index_list("a").is_err());
        assert!(parse_index_list("5-3").is_err());
        assert!(parse_index_list("1,,2").is_err());
        assert!(parse_index_list("-1").is_err());
    }

    #[test]
    fn round_robin_alternates_gpus_and_keeps_order_within_a_gpu() {
        let inv = inventory();
        let got: Vec<_> = balanced_leaves(&inv, &[2, 3, 4, 5, 6, 7], "V", "", "inv").unwrap().iter().map(|l| l.uuid.as_str()).collect();
        assert_eq!(got, ["MIG-0-0", "MIG-1-0", "MIG-0-1", "MIG-1-1", "MIG-0-2", "MIG-1-2"]);
        // Uneven: 3 on GPU0, 1 on GPU1; the order of the index list does not matter.
        let got: Vec<_> = balanced_leaves(&inv, &[13, 4, 0, 2], "V", "", "inv").unwrap().iter().map(|l| l.gres_index).collect();
        assert_eq!(got, [0, 13, 2, 4]);
    }

    #[test]
    fn unknown_and_repeated_indices_are_refused() {
        let inv = inventory();
        let e = balanced_leaves(&inv, &[0, 99], "SLURM_STEP_GPUS", "0,99", "/etc/slurm/flexmig.toml").unwrap_err();
        let e = e.to_string();
        assert!(e.contains("GRES index 99") && e.contains("flexmig-gres-helper verify") && e.contains("/etc/slurm/flexmig.toml"), "{e}");
        let e = balanced_leaves(&inv, &[3, 3], "SLURM_STEP_GPUS", "3,3", "inv").unwrap_err().to_string();
        assert!(e.contains("appears twice"), "{e}");
    }

    #[test]
    fn rank_mode_gives_each_task_its_own_leaf_and_torch_vars() {
        let inv = inventory();
        let args = PluginArgs::default();
        let env = env_of(&[("SLURM_STEP_GPUS", "2,3,4,5,6,7"), ("SLURM_STEP_NODELIST", "gpu[07-08]"), ("SLURMD_NODENAME", "gpu07")]);
        let mut uuids = BTreeSet::new();
        for i in 0..6 {
            let m = as_map(&plan_task(Mode::Rank, &args, &inv, &task(i, 6), &env).unwrap().env);
            assert_eq!(m["CUDA_VISIBLE_DEVICES"], m["NCCL_MIG_ID"]);
            assert_eq!(m["FLEXMIG_GPU"], (i % 2).to_string(), "ranks alternate GPUs");
            assert_eq!(m["NCCL_MULTI_RANK_GPU_ENABLE"], "1");
            assert_eq!(m["RANK"], i.to_string());
            assert_eq!(m["LOCAL_RANK"], i.to_string());
            assert_eq!(m["WORLD_SIZE"], "6");
            assert_eq!(m["LOCAL_WORLD_SIZE"], "6");
            assert_eq!(m["MASTER_ADDR"], "gpu07");
            assert_eq!(m["MASTER_PORT"], master_port(42, 3, args.master_ports).to_string());
            assert_eq!(m["FLEXMIG_PROFILE"], "1g.5gb");
            assert!(uuids.insert(m["NCCL_MIG_ID"].clone()));
        }
    }

    #[test]
    fn user_set_torch_vars_are_kept_and_torch_env_can_be_off() {
        let inv = inventory();
        let env = env_of(&[("SLURM_STEP_GPUS", "2,3"), ("SLURM_STEP_NODELIST", "n1"), ("MASTER_PORT", "1234"), ("RANK", "5")]);
        let m = as_map(&plan_task(Mode::Rank, &PluginArgs::default(), &inv, &task(0, 1), &env).unwrap().env);
        assert!(!m.contains_key("MASTER_PORT") && !m.contains_key("RANK"), "a one-task step keeps the user's own: {m:?}");
        assert_eq!(m["WORLD_SIZE"], "1");
        // In a step of several tasks every task got the same RANK from srun: inherited, not the
        // user's per-task choice, so each task gets its own.
        let env = env_of(&[
            ("SLURM_STEP_GPUS", "2,3"),
            ("SLURM_STEP_NODELIST", "n1"),
            ("MASTER_PORT", "1234"),
            ("RANK", "0"),
            ("LOCAL_RANK", "0"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_WORLD_SIZE", "8"),
        ]);
        let m = as_map(&plan_task(Mode::Rank, &PluginArgs::default(), &inv, &task(1, 2), &env).unwrap().env);
        assert_eq!(
            (m["RANK"].as_str(), m["LOCAL_RANK"].as_str(), m["WORLD_SIZE"].as_str(), m["LOCAL_WORLD_SIZE"].as_str()),
            ("1", "1", "2", "2")
        );
        assert!(!m.contains_key("MASTER_PORT"), "a step-wide rendezvous port stays the user's");
        let args = PluginArgs { torch_env: false, ..PluginArgs::default() };
        let m = as_map(&plan_task(Mode::Rank, &args, &inv, &task(1, 2), &env).unwrap().env);
        assert!(TORCH_VARS.iter().all(|v| !m.contains_key(*v)), "{m:?}");
        assert_eq!(m["NCCL_MIG_ID"], "MIG-1-0");
    }

    #[test]
    fn single_node_steps_get_few_nccl_channels_unless_tuned_elsewhere() {
        let inv = inventory();
        let env = env_of(&[("SLURM_STEP_GPUS", "2,3"), ("SLURM_STEP_NODELIST", "n1")]);
        let plan = |args: &PluginArgs, t: &TaskView, env: &dyn Fn(&str) -> Option<String>| {
            as_map(&plan_task(Mode::Rank, args, &inv, t, env).unwrap().env)
        };
        let d = PluginArgs::default();
        assert_eq!(plan(&d, &task(0, 2), &env)["NCCL_MAX_NCHANNELS"], "2");
        assert_eq!(as_map(&plan_task(Mode::Node, &d, &inv, &task(0, 1), &env).unwrap().env)["NCCL_MAX_NCHANNELS"], "2");
        let four = PluginArgs { nccl_max_channels: Some(4), ..PluginArgs::default() };
        assert_eq!(plan(&four, &task(0, 2), &env)["NCCL_MAX_NCHANNELS"], "4");
        let off = PluginArgs { nccl_max_channels: None, ..PluginArgs::default() };
        assert!(!plan(&off, &task(0, 2), &env).contains_key("NCCL_MAX_NCHANNELS"));
        // Several nodes: the network needs NCCL's channels.
        let multi = TaskView { nnodes: 2, ..task(0, 2) };
        assert!(!plan(&d, &multi, &env).contains_key("NCCL_MAX_NCHANNELS"));
        // The batch step: its inner steps decide.
        let batch = TaskView { is_batch: true, step_id: 0xffff_fffb, ..task(0, 1) };
        let benv = env_of(&[("SLURM_JOB_GPUS", "2,3"), ("SLURM_JOB_NODELIST", "n1")]);
        assert!(!plan(&d, &batch, &benv).contains_key("NCCL_MAX_NCHANNELS"));
        // A user's own channel or CTA setting wins, whichever of them it is.
        for v in NCCL_CHANNEL_VARS {
            let env = env_of(&[("SLURM_STEP_GPUS", "2,3"), ("SLURM_STEP_NODELIST", "n1"), (v, "16")]);
            assert!(!plan(&d, &task(0, 2), &env).contains_key("NCCL_MAX_NCHANNELS"), "{v}");
        }
    }

    #[test]
    fn nccls_own_mig_support_gets_what_it_needs() {
        let inv = inventory();
        for mode in [Mode::Rank, Mode::Node] {
            let env = env_of(&[("SLURM_STEP_GPUS", "2,3"), ("SLURM_STEP_NODELIST", "n1"), ("NCCL_NVLS_ENABLE", "1")]);
            let m = as_map(&plan_task(mode, &PluginArgs::default(), &inv, &task(0, 1), &env).unwrap().env);
            assert_eq!((m["NCCL_NVLS_ENABLE"].as_str(), m["NCCL_MNNVL_ENABLE"].as_str()), ("0", "0"), "{mode}");
            let env = env_of(&[("SLURM_STEP_GPUS", "2,3"), ("SLURM_STEP_NODELIST", "n1"), ("NCCL_MNNVL_ENABLE", "1")]);
            let m = as_map(&plan_task(mode, &PluginArgs::default(), &inv, &task(0, 1), &env).unwrap().env);
            assert!(!m.contains_key("NCCL_MNNVL_ENABLE"), "{mode}: the user's own MNNVL setting stays");
        }
    }

    #[test]
    fn emulated_leaves_get_their_share_of_the_gpu() {
        let mut inv = inventory();
        let env = env_of(&[("SLURM_STEP_GPUS", "2,3"), ("SLURM_STEP_NODELIST", "n1")]);
        let m = as_map(&plan_task(Mode::Rank, &PluginArgs::default(), &inv, &task(0, 2), &env).unwrap().env);
        assert!(!m.contains_key("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"), "real MIG leaves need no MPS share");
        inv.emulation = Some(leaf_model::inventory::Emulation { sm_percent: 14 });
        for mode in [Mode::Rank, Mode::Node] {
            let m = as_map(&plan_task(mode, &PluginArgs::default(), &inv, &task(0, 1), &env).unwrap().env);
            assert_eq!(m["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "14", "{mode}");
        }
        let own = env_of(&[("SLURM_STEP_GPUS", "2,3"), ("SLURM_STEP_NODELIST", "n1"), ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "50")]);
        let m = as_map(&plan_task(Mode::Rank, &PluginArgs::default(), &inv, &task(0, 2), &own).unwrap().env);
        assert!(!m.contains_key("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"));
    }

    #[test]
    fn cuda_device_override() {
        let mut inv = inventory();
        inv.leaves[0].cuda_device = Some("0".into());
        let env = env_of(&[("SLURM_STEP_GPUS", "0"), ("SLURM_STEP_NODELIST", "n1")]);
        let m = as_map(&plan_task(Mode::Rank, &PluginArgs::default(), &inv, &task(0, 1), &env).unwrap().env);
        assert_eq!(m["CUDA_VISIBLE_DEVICES"], "0");
        assert_eq!(m["NCCL_MIG_ID"], "MIG-0-6");
    }

    #[test]
    fn too_many_tasks_and_no_gpus_fail_with_advice() {
        let inv = inventory();
        let env = env_of(&[("SLURM_STEP_GPUS", "0,1"), ("SLURM_STEP_NODELIST", "n1"), ("SLURMD_NODENAME", "n1")]);
        let e = plan_task(Mode::Rank, &PluginArgs::default(), &inv, &task(0, 3), &env).unwrap_err().to_string();
        assert!(e.contains("3 tasks on n1") && e.contains("--gres=mig:3"), "{e}");
        let e =
            plan_task(Mode::Rank, &PluginArgs::default(), &inv, &task(0, 1), &env_of(&[("SLURM_JOB_GPUS", "0")])).unwrap_err().to_string();
        assert!(e.contains("SLURM_STEP_GPUS is not set") && e.contains("--gres=mig:N"), "{e}");
    }

    #[test]
    fn off_changes_nothing_outside_a_flexmig_view_and_takes_an_inherited_one_back() {
        let inv = inventory();
        let plain = env_of(&[("SLURM_STEP_GPUS", "0"), ("NCCL_MULTI_RANK_GPU_ENABLE", "1"), ("LD_PRELOAD", "/opt/nccl/libnccl.so.2")]);
        let args = PluginArgs { nccl: Some("/opt/nccl/libnccl.so.2".into()), ..PluginArgs::default() };
        assert_eq!(plan_task(Mode::Off, &args, &inv, &task(0, 99), &plain).unwrap(), TaskPlan::default());
        // Inside `sbatch --flexmig`, an `srun --flexmig=off` step inherits the batch script's view.
        let batch_view = env_of(&[
            ("FLEXMIG_LEAVES", "MIG-0-0,MIG-1-0"),
            ("FLEXMIG_GPUS", "0,1"),
            ("FLEXMIG_PROFILES", "1g.5gb,1g.5gb"),
            ("NCCL_MULTI_RANK_GPU_ENABLE", "1"),
            ("NCCL_NVLS_ENABLE", "0"),
            ("LD_PRELOAD", "/opt/nccl/libnccl.so.2 /x/libfoo.so"),
        ]);
        let plan = plan_task(Mode::Off, &args, &inv, &task(0, 1), &batch_view).unwrap();
        for v in ["FLEXMIG_LEAVES", "FLEXMIG_GPUS", "FLEXMIG_PROFILES", "NCCL_MULTI_RANK_GPU_ENABLE", "NCCL_NVLS_ENABLE"] {
            assert!(plan.env.contains(&EnvChange::Unset(v.into())), "{v}: {plan:?}");
        }
        assert_eq!(as_map(&plan.env)["LD_PRELOAD"], "/x/libfoo.so");
        assert!(plan.exclusive.is_empty());
    }

    #[test]
    fn each_step_sees_only_its_own_view() {
        let inv = inventory();
        // A rank step inside `sbatch --flexmig` inherits FLEXMIG_LEAVES listing all the job's leaves.
        let env = env_of(&[
            ("SLURM_STEP_GPUS", "2,3"),
            ("SLURM_STEP_NODELIST", "n1"),
            ("FLEXMIG_LEAVES", "MIG-0-0,MIG-1-0,MIG-0-1"),
            ("FLEXMIG_GPUS", "0,1,0"),
            ("FLEXMIG_PROFILES", "a,b,c"),
        ]);
        let plan = plan_task(Mode::Rank, &PluginArgs::default(), &inv, &task(0, 2), &env).unwrap();
        for v in ["FLEXMIG_LEAVES", "FLEXMIG_GPUS", "FLEXMIG_PROFILES"] {
            assert!(plan.env.contains(&EnvChange::Unset(v.into())), "{v}");
        }
        // A node step inherits a rank view from an outer rank task.
        let env = env_of(&[("SLURM_STEP_GPUS", "2,3"), ("SLURM_STEP_NODELIST", "n1"), ("FLEXMIG_LEAF", "MIG-0-0"), ("FLEXMIG_GPU", "0")]);
        let plan = plan_task(Mode::Node, &PluginArgs::default(), &inv, &task(0, 1), &env).unwrap();
        assert!(plan.env.contains(&EnvChange::Unset("FLEXMIG_LEAF".into())) && plan.env.contains(&EnvChange::Unset("FLEXMIG_GPU".into())));
    }

    #[test]
    fn per_task_gpu_binding_binds_the_leaf_slurm_gave_the_task() {
        let inv = inventory();
        // --gpus-per-task=1 over 4 leaves: Slurm narrowed task 2's list to index 3.
        let t = TaskView { step_gpus: Some("2,3,4,5".into()), ..task(2, 4) };
        let env = env_of(&[("SLURM_STEP_GPUS", "3"), ("SLURM_STEP_NODELIST", "n1")]);
        let plan = plan_task(Mode::Rank, &PluginArgs::default(), &inv, &t, &env).unwrap();
        assert_eq!(plan.exclusive, ["MIG-1-0"]);
        assert_eq!(as_map(&plan.env)["NCCL_MIG_ID"], "MIG-1-0");
        // Root opens the locks of every leaf of the step, since the task's own is chosen later.
        let all = leaves_to_lock(Mode::Rank, &PluginArgs::default(), &inv, &t, "n1").unwrap();
        assert_eq!(all.len(), 4);
        // The batch script binds nothing, so it opens no locks.
        let b = TaskView { is_batch: true, step_gpus: Some("0,1".into()), ..task(0, 1) };
        assert!(leaves_to_lock(Mode::Rank, &PluginArgs::default(), &inv, &b, "n1").unwrap().is_empty());
        // Unnarrowed (the task's list is the step's): the balanced choice, as without binding.
        let t = TaskView { step_gpus: Some("2,3,4,5".into()), ..task(1, 4) };
        let env = env_of(&[("SLURM_STEP_GPUS", "2,3,4,5"), ("SLURM_STEP_NODELIST", "n1")]);
        assert_eq!(plan_task(Mode::Rank, &PluginArgs::default(), &inv, &t, &env).unwrap().exclusive, ["MIG-1-0"]);
    }

    #[test]
    fn node_mode_gives_all_leaves_in_balanced_order() {
        let inv = inventory();
        let env = env_of(&[("SLURM_STEP_GPUS", "2,3,4,5"), ("SLURM_STEP_NODELIST", "n[1-2]"), ("NCCL_MIG_ID", "stale")]);
        let plan = plan_task(Mode::Node, &PluginArgs::default(), &inv, &task(0, 1), &env).unwrap();
        assert_eq!(plan.exclusive, ["MIG-0-0", "MIG-1-0", "MIG-0-1", "MIG-1-1"]);
        let ch = plan.env;
        assert!(ch.contains(&EnvChange::Unset("NCCL_MIG_ID".into())));
        let m = as_map(&ch);
        assert_eq!(m["FLEXMIG_LEAVES"], "MIG-0-0,MIG-1-0,MIG-0-1,MIG-1-1");
        assert_eq!(m["CUDA_VISIBLE_DEVICES"], m["FLEXMIG_LEAVES"]);
        assert_eq!(m["FLEXMIG_GPUS"], "0,1,0,1");
        assert_eq!(m["LOCAL_WORLD_SIZE"], "4");
        assert_eq!(m["PET_NPROC_PER_NODE"], "4");
        assert_eq!(m["MASTER_ADDR"], "n1");
        assert!(!m.contains_key("RANK"));
        let e = plan_task(Mode::Node, &PluginArgs::default(), &inv, &task(0, 2), &env).unwrap_err().to_string();
        assert!(e.contains("--ntasks-per-node=1"), "{e}");
    }

    #[test]
    fn batch_step_gets_the_node_view_without_torch_vars() {
        let inv = inventory();
        let env = env_of(&[("SLURM_JOB_GPUS", "2,3"), ("SLURM_JOB_NODELIST", "n1")]);
        let t = TaskView { is_batch: true, step_id: 0xffff_fffb, ..task(0, 1) };
        let m = as_map(&plan_task(Mode::Rank, &PluginArgs::default(), &inv, &t, &env).unwrap().env);
        assert_eq!(m["FLEXMIG_LEAVES"], "MIG-0-0,MIG-1-0");
        assert!(TORCH_VARS.iter().all(|v| !m.contains_key(*v)), "{m:?}");
        assert!(!m.contains_key("NCCL_MIG_ID"));
    }

    #[test]
    fn nccl_preload_is_prepended_once_and_must_exist() {
        let inv = inventory();
        let dir = std::env::temp_dir().join(format!("flexmig-nccl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lib = dir.join("libnccl.so.2");
        std::fs::write(&lib, b"").unwrap();
        let args = PluginArgs { nccl: Some(lib.clone()), ..PluginArgs::default() };
        let l = lib.display().to_string();
        let env = env_of(&[("SLURM_STEP_GPUS", "0"), ("SLURM_STEP_NODELIST", "n1"), ("LD_PRELOAD", "/x/libfoo.so")]);
        let m = as_map(&plan_task(Mode::Rank, &args, &inv, &task(0, 1), &env).unwrap().env);
        assert_eq!(m["LD_PRELOAD"], format!("{l} /x/libfoo.so"));
        let env2 = env_of(&[("SLURM_STEP_GPUS", "0"), ("SLURM_STEP_NODELIST", "n1"), ("LD_PRELOAD", &format!("/x/a.so:{l}"))]);
        let m = as_map(&plan_task(Mode::Rank, &args, &inv, &task(0, 1), &env2).unwrap().env);
        assert!(!m.contains_key("LD_PRELOAD"));
        std::fs::remove_file(&lib).unwrap();
        let e = plan_task(Mode::Rank, &args, &inv, &task(0, 1), &env).unwrap_err().to_string();
        assert!(e.contains("does not exist") && e.contains("nccl="), "{e}");
    }

    #[test]
    fn indices_slurm_did_not_allocate_to_the_job_are_refused() {
        let inv = inventory();
        let t = TaskView { step_gpus: Some("2,3,4".into()), ..task(0, 3) };
        check_allocated_indices(&PluginArgs::default(), &inv, &t, "gpu:1g.5gb:3(IDX:2-4)", "n1").unwrap();
        check_allocated_indices(&PluginArgs::default(), &inv, &t, "gpu:3(IDX:2-4)", "n1").unwrap();
        let e = check_allocated_indices(&PluginArgs::default(), &inv, &t, "gpu:1g.5gb:1(IDX:2)", "n1").unwrap_err().to_string();
        assert!(e.contains("GRES index 3") && e.contains("slurmctld allocated only"), "{e}");
        // The interactive step's own list is the job's (the user's SLURM_STEP_GPUS is not).
        assert_eq!(TaskView { is_interactive: true, ..task(0, 1) }.gpu_var(), "SLURM_JOB_GPUS");
    }

    #[test]
    fn allocated_types_read_scontrols_detail() {
        let t = allocated_types("gpu:1g.5gb:3(IDX:0-1,5),gpu:1g.10gb:1(IDX:12),gpu:2(IDX:7-8),mig:0,license:x(CNT:1)");
        let want: BTreeMap<u32, String> =
            [(0, "1g.5gb"), (1, "1g.5gb"), (5, "1g.5gb"), (12, "1g.10gb")].map(|(i, t)| (i, t.to_string())).into();
        assert_eq!(t, want);
        assert!(allocated_types("").is_empty());
        assert!(allocated_types("gpu:1g.5gb:2(IDX:x)").is_empty());
    }

    #[test]
    fn a_leaf_of_another_type_than_slurm_allocated_is_refused() {
        let inv = inventory();
        let t = TaskView { step_gpus: Some("0,13".into()), ..task(0, 2) };
        // Index 0 is a double (1g.10gb) leaf in the inventory; Slurm says it gave a 1g.5gb there.
        let types: BTreeMap<u32, String> = [(0, "1g.5gb".to_string()), (13, "1g.5gb".to_string())].into();
        let e = check_allocated_types(&PluginArgs::default(), &inv, &t, &types, "n1").unwrap_err().to_string();
        assert!(e.contains("GRES index 0") && e.contains("as a 1g.5gb") && e.contains("flexmig-gres-helper verify"), "{e}");
        let types: BTreeMap<u32, String> = [(0, "1g.10gb".to_string())].into();
        check_allocated_types(&PluginArgs::default(), &inv, &t, &types, "n1").unwrap();
        check_allocated_types(&PluginArgs::default(), &inv, &t, &BTreeMap::new(), "n1").unwrap();
    }

    #[test]
    fn the_host_reduce_library_goes_first_in_ld_preload() {
        let inv = inventory();
        let dir = tempfile::tempdir().unwrap();
        let (hr, nccl) = (dir.path().join("libflexmig_hostreduce.so"), dir.path().join("libnccl.so.2"));
        std::fs::write(&hr, b"").unwrap();
        std::fs::write(&nccl, b"").unwrap();
        let args = PluginArgs { hostreduce: Some(hr.clone()), nccl: Some(nccl.clone()), ..PluginArgs::default() };
        let env = env_of(&[("SLURM_STEP_GPUS", "2,3"), ("SLURM_STEP_NODELIST", "n1"), ("LD_PRELOAD", "/x/libfoo.so")]);
        let m = as_map(&plan_task(Mode::Rank, &args, &inv, &task(0, 2), &env).unwrap().env);
        assert_eq!(m["LD_PRELOAD"], format!("{} {} /x/libfoo.so", hr.display(), nccl.display()));
        assert_eq!(m["FLEXMIG_HOSTREDUCE"], "auto");
        let own = env_of(&[("SLURM_STEP_GPUS", "2,3"), ("SLURM_STEP_NODELIST", "n1"), ("FLEXMIG_HOSTREDUCE", "off")]);
        let m = as_map(&plan_task(Mode::Rank, &args, &inv, &task(0, 2), &own).unwrap().env);
        assert!(!m.contains_key("FLEXMIG_HOSTREDUCE"), "a user's own choice stays");
        std::fs::remove_file(&hr).unwrap();
        let e = plan_task(Mode::Rank, &args, &inv, &task(0, 2), &env).unwrap_err().to_string();
        assert!(e.contains("host-reduce library") && e.contains("hostreduce="), "{e}");
    }

    #[test]
    fn master_port_is_in_range_and_differs_between_steps() {
        let r = (20000, 32767);
        let ports: BTreeSet<_> = (0..20).map(|s| master_port(1234, s, r)).collect();
        assert_eq!(ports.len(), 20);
        assert!(ports.iter().all(|p| (20000..=32767).contains(p)));
        assert_eq!(master_port(7, 0xffff_fffb, (30000, 30000)), 30000);
    }
}
