//! What the plugin's own code (`binding::plan_task`) exports to each task of a one-node
//! `srun --flexmig -nK` step, printed as `<local task> KEY=VALUE` lines. The GPU benchmark
//! launcher (tests/gpu/leaf_launch.py) emulates this environment on machines without MIG;
//! bench/check.sh compares the two so that the emulation cannot drift from the plugin.
//!
//!   cargo run -q -p flexmig-spank --example plan_env -- --gpus 2 --tasks 7 [--max-channels 2|off]
//!   cargo run -q -p flexmig-spank --example plan_env -- --placement 4,2 [--max-channels 2|off]
//!
//! The node has `--gpus` GPUs of 7 leaves each (6 x 1g.18gb and one 1g.35gb, an H200), in the
//! GRES order `flexmig-gres-helper gres-conf` writes (`leaf_model::gres_order`: double leaves
//! first, then the small ones round-robin over the GPUs). The step holds the `--tasks` lowest small-leaf GRES indices, which
//! is what Slurm gives `--gres=gpu:1g.18gb:K` on an idle node, and double leaves past the small
//! ones (7 leaves of one GPU); with `--gpus 1` the leaves are those of one GPU ("packed").
//! `--placement A,B,...` instead: A small leaves of GPU 0, B of GPU 1, ... (a job Slurm placed
//! unevenly), one task each.

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
    let mut placement: Option<Vec<u32>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--gpus" => gpus = value()?.parse().map_err(|e| format!("--gpus: {e}"))?,
            "--tasks" => tasks = value()?.parse().map_err(|e| format!("--tasks: {e}"))?,
            "--max-channels" => channels = value()?,
            "--placement" => {
                let p: Vec<u32> = value()?.split(',').map(str::parse).collect::<Result<_, _>>().map_err(|e| format!("--placement: {e}"))?;
                if p.iter().any(|&n| n > 6) || p.iter().sum::<u32>() == 0 {
                    return Err("--placement: 0..=6 small leaves per GPU, at least one in all".into());
                }
                gpus = p.len() as u32;
                tasks = p.iter().sum();
                placement = Some(p);
            }
            _ => return Err(format!("unknown argument {a}; use --gpus G --tasks K or --placement A,B,.. [--max-channels N|off]").into()),
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
    // Small leaves first (GRES gpus..7*gpus), then the doubles (0..gpus); or, placed, the first
    // small leaves of each GPU.
    let step_gpus: Vec<String> = match &placement {
        None => (gpus..7 * gpus).chain(0..gpus).take(tasks as usize).map(|i| i.to_string()).collect(),
        Some(p) => {
            let mut idx: Vec<u32> = (0..gpus)
                .flat_map(|g| {
                    inv.leaves
                        .iter()
                        .filter(move |l| l.gpu == g && l.profile == "1g.18gb")
                        .take(p[g as usize] as usize)
                        .map(|l| l.gres_index)
                })
                .collect();
            idx.sort_unstable();
            idx.iter().map(|i| i.to_string()).collect()
        }
    };
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
