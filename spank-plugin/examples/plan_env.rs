//! What the plugin's own code (`binding::plan_task`) exports to each task of a one-node
//! `srun --flexmig -nK` step, printed as `<local task> KEY=VALUE` lines. The GPU benchmark
//! launcher (tests/gpu/leaf_launch.py) emulates this environment on machines without MIG;
//! bench/check.sh compares the two so that the emulation cannot drift from the plugin.
//!
//!   cargo run -q -p flexmig-spank --example plan_env -- --gpus 2 --tasks 7 [--max-channels 2|off]
//!
//! The node has `--gpus` GPUs of 7 leaves each (6 x 1g.18gb and one 1g.35gb, an H200), in the
//! GRES order `flexmig-gres-helper gres-conf` writes (`leaf_model::gres_order`: double leaves
//! first, then the small ones round-robin over the GPUs). The step holds the `--tasks` lowest small-leaf GRES indices, which
//! is what Slurm gives `--gres=gpu:1g.18gb:K` on an idle node, and double leaves past the small
//! ones (7 leaves of one GPU); with `--gpus 1` the leaves are those of one GPU ("packed").

use flexmig_spank::binding::{plan_task, EnvChange, TaskView};
use flexmig_spank::config::{Mode, PluginArgs};
use leaf_model::gres_order::{flexmig_order, OrderLeaf};
use leaf_model::inventory::{Gpu, Inventory, Leaf};
use leaf_model::layout::LeafRole;

fn main() {
    if let Err(e) = run() {
        eprintln!("plan_env: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut gpus = 1u32;
    let mut tasks = 1u32;
    let mut channels = "off".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--gpus" => gpus = value()?.parse().map_err(|e| format!("--gpus: {e}"))?,
            "--tasks" => tasks = value()?.parse().map_err(|e| format!("--tasks: {e}"))?,
            "--max-channels" => channels = value()?,
            _ => return Err(format!("unknown argument {a}; use --gpus G --tasks K [--max-channels N|off]").into()),
        }
    }
    if gpus == 0 || tasks == 0 || tasks > 7 * gpus {
        return Err(format!("--tasks {tasks}: {gpus} GPUs have 1..={} leaves", 7 * gpus).into());
    }
    let mut inv = Inventory::new();
    for g in 0..gpus {
        inv.gpus.push(Gpu { index: g, uuid: format!("GPU-{g}"), bus_id: format!("00000000:0{}:00.0", g + 6), model: "NVIDIA H200".into() });
    }
    // Each GPU's 6 small leaves and its double one, numbered in the order the helper writes.
    let mut node = Vec::new();
    for g in 0..gpus {
        for k in 0..7 {
            let (role, profile, rank) = if k == 6 { (LeafRole::Double, "1g.35gb", 0) } else { (LeafRole::Small, "1g.18gb", k) };
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
    // Small leaves first (GRES gpus..7*gpus), then the doubles (0..gpus).
    let step_gpus: Vec<String> = (gpus..7 * gpus).chain(0..gpus).take(tasks as usize).map(|i| i.to_string()).collect();
    let plugin_args = PluginArgs::parse(&[format!("nccl_max_channels={channels}")])?;
    for t in 0..tasks {
        let task = TaskView {
            job_id: 1,
            step_id: 0,
            is_batch: false,
            node_id: 0,
            nnodes: 1,
            local_task_id: t,
            local_task_count: tasks,
            global_task_id: t,
            total_task_count: tasks,
            step_gpus: None,
            is_interactive: false,
        };
        let env = |k: &str| match k {
            "SLURM_STEP_GPUS" => Some(step_gpus.join(",")),
            "SLURM_STEP_NODELIST" => Some("localhost".to_string()),
            _ => None,
        };
        for change in plan_task(Mode::Rank, &plugin_args, &inv, &task, &env)?.env {
            match change {
                EnvChange::Set(k, v) => println!("{t} {k}={v}"),
                EnvChange::Unset(k) => println!("{t} -{k}"),
            }
        }
    }
    Ok(())
}
