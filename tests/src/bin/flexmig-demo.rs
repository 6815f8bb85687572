//! The flexmig demo: a throwaway single-node Slurm with emulated MIG GPUs, `srun --flexmig`
//! steps, and the rank -> GPU -> leaf table of each. Run by scripts/demo.sh.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use flexmig_integration::{Cluster, ClusterConfig};

fn main() {
    if let Err(e) = run() {
        eprintln!("flexmig-demo: error: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let gpus = 2;
    let (cfg, leaves) = ClusterConfig::emulated(gpus);
    println!("Starting a throwaway Slurm (munged, slurmctld, slurmd on loopback) with {gpus} emulated A100-40GB GPUs,");
    println!("each split into the flexmig leaf layout: 6 x 1g.5gb + 1 x 1g.10gb.\n");
    let cluster = Cluster::start(&cfg)?;
    println!("plugstack.conf: {}", std::fs::read_to_string(cluster.dir().join("plugstack.conf"))?.trim());
    println!("node line:      NodeName=localhost Gres={}\n", cfg.node_gres);
    let steps: [(&str, &[&str]); 3] = [
        ("a 1-leaf job (takes the double leaf)", &["--flexmig", "-n1", "--gres=gpu:1g.10gb:1"]),
        ("a 4-leaf job", &["--flexmig", "-n4", "--gres=gpu:1g.5gb:4"]),
        ("a 6-leaf job", &["--flexmig", "-n6", "--gres=gpu:1g.5gb:6"]),
    ];
    for (what, args) in steps {
        println!("== {what}: srun {} <task printing its environment>", args.join(" "));
        let o = Cluster::output(cluster.command("srun").args(args).args([
            "bash",
            "-c",
            "echo \"$RANK|$SLURMD_NODENAME|$SLURM_STEP_GPUS|$FLEXMIG_GPU|$NCCL_MIG_ID|$FLEXMIG_PROFILE|$CUDA_VISIBLE_DEVICES|$MASTER_ADDR:$MASTER_PORT\"",
        ]))?;
        if !o.status.success() {
            bail!("srun failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut rows = BTreeMap::new();
        for line in stdout.lines() {
            let f: Vec<&str> = line.split('|').collect();
            if f.len() == 8 {
                rows.insert(f[0].parse::<u32>().unwrap_or(u32::MAX), f);
            }
        }
        let step_gpus = rows.values().next().map(|f| f[2]).unwrap_or("");
        println!("   Slurm allocated GRES indices {step_gpus}; flexmig bound:");
        println!("   {:<5} {:<10} {:<4} {:<6} {:<9} {:<42} {}", "rank", "node", "gpu", "gres", "profile", "leaf (NCCL_MIG_ID = CUDA_VISIBLE_DEVICES)", "rendezvous");
        for f in rows.values() {
            let gres = leaves.iter().find(|l| l.uuid == f[4]).map(|l| l.gres_index.to_string()).unwrap_or_else(|| "?".into());
            let same = if f[6] == f[4] { "" } else { " (CUDA_VISIBLE_DEVICES differs!)" };
            println!("   {:<5} {:<10} {:<4} {:<6} {:<9} {:<42} {}{same}", f[0], f[1], f[3], gres, f[5], f[4], f[7]);
        }
        println!();
    }
    println!("Stopping the throwaway Slurm.");
    Ok(())
}
