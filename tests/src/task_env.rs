//! What the tasks of a step saw: a bash snippet that prints their environment, its parser, and
//! the check of a `--flexmig` step's bindings, shared by the plugin's integration tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Output;

use crate::{Cluster, ClusterConfig, EmulatedLeaf, PLUGIN_VARS};

/// The variables a task is checked for: Slurm's own, and everything the plugin may set.
pub fn vars() -> Vec<&'static str> {
    ["SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"].into_iter().chain(PLUGIN_VARS.iter().copied()).collect()
}

/// A bash snippet that prints `<procid> NAME=value` (or `NAME` alone when unset) per variable.
pub fn print_vars() -> String {
    format!(
        "for v in {}; do if [ -n \"${{!v+x}}\" ]; then echo \"$SLURM_PROCID $v=${{!v}}\"; else echo \"$SLURM_PROCID $v\"; fi; done",
        vars().join(" ")
    )
}

/// Task environments by SLURM_PROCID, from [`print_vars`] output (unset variables absent).
pub fn parse_tasks(stdout: &str) -> BTreeMap<u32, HashMap<String, String>> {
    let mut out: BTreeMap<u32, HashMap<String, String>> = BTreeMap::new();
    for line in stdout.lines() {
        let Some((id, rest)) = line.split_once(' ') else { continue };
        let Ok(id) = id.parse::<u32>() else { continue };
        let m = out.entry(id).or_default();
        if let Some((k, v)) = rest.split_once('=') {
            m.insert(k.to_string(), v.to_string());
        }
    }
    out
}

pub fn text(o: &Output) -> String {
    format!("status {:?}\nstdout:\n{}\nstderr:\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

pub fn srun(c: &Cluster, args: &[&str]) -> Output {
    Cluster::output(c.command("srun").args(args)).unwrap()
}

pub fn start(gpus: u32) -> (Cluster, Vec<EmulatedLeaf>) {
    let (cfg, leaves) = ClusterConfig::emulated(gpus);
    (Cluster::start(&cfg).unwrap(), leaves)
}

/// Checks one flexmig step's bindings against the inventory: distinct leaves, CUDA device ==
/// MIG id == the leaf of an allocated GRES index, FLEXMIG_GPU right, ranks alternating GPUs
/// where the allocation allows, torch variables right. Returns the leaves used.
pub fn check_rank_step(tasks: &BTreeMap<u32, HashMap<String, String>>, leaves: &[EmulatedLeaf], ntasks: u32) -> BTreeSet<String> {
    assert_eq!(tasks.len() as u32, ntasks, "{tasks:#?}");
    let by_uuid: HashMap<&str, &EmulatedLeaf> = leaves.iter().map(|l| (l.uuid.as_str(), l)).collect();
    let mut used = BTreeSet::new();
    let port = &tasks[&0]["MASTER_PORT"];
    let mut gpus_in_order = Vec::new();
    for (rank, t) in tasks {
        let uuid = &t["NCCL_MIG_ID"];
        let leaf = by_uuid.get(uuid.as_str()).unwrap_or_else(|| panic!("task {rank}: {uuid} is not an inventory leaf"));
        assert!(used.insert(uuid.clone()), "leaf {uuid} bound twice: {tasks:#?}");
        assert_eq!(&t["CUDA_VISIBLE_DEVICES"], uuid, "task {rank}");
        assert_eq!(t["FLEXMIG_LEAF"], *uuid);
        assert_eq!(t["FLEXMIG_GPU"], leaf.gpu.to_string(), "task {rank}");
        assert_eq!(t["FLEXMIG_PROFILE"], leaf.profile);
        assert_eq!(t["NCCL_MULTI_RANK_GPU_ENABLE"], "1");
        assert_eq!((t["NCCL_NVLS_ENABLE"].as_str(), t["NCCL_MNNVL_ENABLE"].as_str()), ("0", "0"), "what NCCL's own MIG support needs");
        assert_eq!(t["NCCL_MAX_NCHANNELS"], "2", "single-node steps get few NCCL channels by default");
        let allocated: Vec<u32> = t["SLURM_STEP_GPUS"].split(',').map(|s| s.parse().unwrap()).collect();
        assert!(allocated.contains(&leaf.gres_index), "task {rank}: leaf {} not allocated to the step ({allocated:?})", leaf.gres_index);
        assert_eq!(t["RANK"], rank.to_string());
        assert_eq!(t["RANK"], t["SLURM_PROCID"]);
        assert_eq!(t["LOCAL_RANK"], t["SLURM_LOCALID"]);
        assert_eq!(t["WORLD_SIZE"], ntasks.to_string());
        assert_eq!(t["LOCAL_WORLD_SIZE"], ntasks.to_string());
        assert_eq!(t["MASTER_ADDR"], "localhost");
        assert_eq!(&t["MASTER_PORT"], port, "one MASTER_PORT for the whole step");
        gpus_in_order.push(leaf.gpu);
    }
    // Round-robin: while both GPUs still have allocated leaves, consecutive ranks alternate.
    let per_gpu = |g: u32| gpus_in_order.iter().filter(|&&x| x == g).count();
    let balanced = 2 * per_gpu(0).min(per_gpu(1));
    for w in gpus_in_order[..balanced].windows(2) {
        assert_ne!(w[0], w[1], "ranks do not alternate GPUs: {gpus_in_order:?}");
    }
    used
}
