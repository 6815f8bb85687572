//! The flexmig demo: an emulated 2-GPU node built with `flexmig-gres-helper` (as an admin
//! builds a real one), a throwaway single-node Slurm with the Lua filters and the SPANK plugin,
//! and a 1-leaf, a 4-leaf and a 6-leaf job running side by side: which leaves Slurm allocated
//! to each, and which rank flexmig bound to which GPU and leaf. Run by scripts/demo.sh.

use std::collections::BTreeMap;
use std::process::Child;

use anyhow::{bail, Context as _, Result};
use flexmig_integration::{helper_node, Cluster};

fn main() {
    if let Err(e) = run() {
        eprintln!("flexmig-demo: error: {e:#}");
        std::process::exit(2);
    }
}

struct Row {
    rank: u32,
    gres: String,
    gpu: String,
    leaf: String,
    profile: String,
    cuda: String,
    rendezvous: String,
}

fn run() -> Result<()> {
    let (model, gpus) = ("A100-40GB", 2);
    println!("== 1. The node, built with flexmig-gres-helper on an emulated {gpus} x {model} (no GPU is touched)");
    let plan = helper_node::helper(&["plan", "--model", model])?;
    print!("$ flexmig-gres-helper plan --model {model}\n{}", String::from_utf8_lossy(&plan.stdout));
    let node = helper_node::build(model, gpus)?;
    println!("gres-conf wrote gres.conf (leaf order = GRES index), the node line, the inventory and the Lua policy:");
    println!("   NodeName=localhost Gres={}", node.cfg.node_gres);
    for (i, l) in node.cfg.gres_conf.lines().filter(|l| l.starts_with("Name=")).enumerate() {
        let short: Vec<&str> = l.split_whitespace().take(2).collect();
        let leaf = node.inventory.leaf_by_gres_index(i as u32).context("inventory lacks a gres.conf leaf")?;
        println!("   GRES {i:>2}: {} -> GPU {} {}", short.join(" "), leaf.gpu, leaf.uuid);
    }

    println!("\n== 2. A throwaway Slurm (munged, slurmctld, slurmd on loopback) with that configuration");
    let cluster = Cluster::start(&node.cfg)?;
    println!("   plugstack.conf: {}", std::fs::read_to_string(cluster.dir().join("plugstack.conf"))?.trim());
    println!("   slurm.conf:     GresTypes=gpu,mig  JobSubmitPlugins=lua  CliFilterPlugins=lua");
    let v = helper_node::verify(&node, &cluster)?;
    println!(
        "   flexmig-gres-helper verify (NVML vs inventory vs gres.conf vs slurmd -G): {}",
        if v.status.success() { "agree" } else { "DIFFER" }
    );
    if !v.status.success() {
        bail!("verify failed:\n{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    }

    println!("\n== 3. Three jobs at once: srun --flexmig --gres=mig:N -nN (the Lua filters turn mig:N into typed requests)");
    let print = "echo \"$RANK|$SLURM_STEP_GPUS|$FLEXMIG_GPU|$NCCL_MIG_ID|$FLEXMIG_PROFILE|$CUDA_VISIBLE_DEVICES|$MASTER_ADDR:$MASTER_PORT\"; sleep 3";
    let sizes = [1u32, 4, 6];
    let mut children: Vec<(u32, Child)> = Vec::new();
    for n in sizes {
        let child = cluster
            .command("srun")
            .args(["--flexmig", &format!("--gres=mig:{n}"), &format!("-n{n}"), "bash", "-c", print])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        children.push((n, child));
    }
    let mut jobs: Vec<(u32, Vec<Row>)> = Vec::new();
    for (n, child) in children {
        let o = child.wait_with_output()?;
        if !o.status.success() {
            bail!("srun --gres=mig:{n} failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let mut rows: Vec<Row> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                (f.len() == 7).then(|| Row {
                    rank: f[0].parse().unwrap_or(u32::MAX),
                    gres: f[1].to_string(),
                    gpu: f[2].to_string(),
                    leaf: f[3].to_string(),
                    profile: f[4].to_string(),
                    cuda: f[5].to_string(),
                    rendezvous: f[6].to_string(),
                })
            })
            .collect();
        rows.sort_by_key(|r| r.rank);
        jobs.push((n, rows));
    }
    for (n, rows) in &jobs {
        let gres = rows.first().map(|r| r.gres.as_str()).unwrap_or("");
        println!(
            "\n   mig:{n} job: Slurm allocated GRES {gres}; flexmig bound (rendezvous {}):",
            rows.first().map(|r| r.rendezvous.as_str()).unwrap_or("")
        );
        println!("   {:<5} {:<4} {:<6} {:<9} leaf (NCCL_MIG_ID = CUDA_VISIBLE_DEVICES)", "rank", "gpu", "gres", "profile");
        for r in rows {
            let idx =
                node.inventory.leaves.iter().find(|l| l.uuid == r.leaf).map(|l| l.gres_index.to_string()).unwrap_or_else(|| "?".into());
            let warn = if r.cuda == r.leaf { "" } else { "  (CUDA_VISIBLE_DEVICES differs!)" };
            println!("   {:<5} {:<4} {:<6} {:<9} {}{warn}", r.rank, r.gpu, idx, r.profile, r.leaf);
        }
    }

    println!("\n== 4. The node while the three jobs ran (each cell: leaf profile, job:rank)");
    let mut owner: BTreeMap<&str, String> = BTreeMap::new();
    for (n, rows) in &jobs {
        for r in rows {
            owner.insert(r.leaf.as_str(), format!("mig:{n} r{}", r.rank));
        }
    }
    for g in &node.inventory.gpus {
        let mut leaves: Vec<_> = node.inventory.leaves.iter().filter(|l| l.gpu == g.index).collect();
        leaves.sort_by_key(|l| l.gres_index);
        let cells: Vec<String> = leaves
            .iter()
            .map(|l| format!("[{} {}]", l.profile, owner.get(l.uuid.as_str()).map(String::as_str).unwrap_or("free")))
            .collect();
        println!("   GPU {}: {}", g.index, cells.join(" "));
    }
    let used: usize = jobs.iter().map(|(_, r)| r.len()).sum();
    if owner.len() != used {
        bail!("two ranks were bound to one leaf");
    }
    println!("   {used} of {} leaves busy, no leaf shared, no GPU reconfigured.", node.inventory.leaves.len());
    println!("\nStopping the throwaway Slurm.");
    Ok(())
}
