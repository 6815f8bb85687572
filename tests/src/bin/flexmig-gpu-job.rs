//! The mission path on a GPU machine, as a user meets it: a throwaway Slurm (munged, slurmctld,
//! slurmd on loopback) on a node whose GPUs are not in MIG mode, each cut into 7 emulated leaves
//! (shares of the GPU under CUDA MPS), the Lua filters and the SPANK plugin with `nccl=` naming
//! the patched NCCL; then `sbatch --gres=mig:4 -n4` running `srun --flexmig python ddp_job.py`, a
//! 7-leaf job, and two jobs at once. Checks each rank's binding, that NCCL connected the ranks over
//! SHM and never P2P, that parameters and gradients end equal on every rank and the loss fell,
//! and prints samples/s beside the same script as one process with the whole job's SM share.
//! The last line is `PASS` when everything held. MIG mode is never touched; a GPU in MIG mode is
//! refused.
//!
//!   flexmig-gpu-job [--nccl LIB] [--hostreduce LIB] [--python PY] [--steps N] [--dry-run]
//!
//! With `--hostreduce`, the 7-leaf job runs a second time with the plugin's `hostreduce=` (the
//! host-reduce library in front of NCCL, FLEXMIG_HOSTREDUCE=auto), checked the same way.
//!
//! Run from the repository root by tests/gpu/slurm-job.sh (FLEXMIG_SPANK_SO names the plugin).
//! `--dry-run` needs no GPU and no torch: a fake GPU, and ddp_job.py --dry-run, so CI checks the
//! Slurm path and the bindings.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};
use flexmig_integration::{Cluster, ClusterConfig, EmulatedLeaf, RealGpu};
use serde_json::Value;

const LEAVES_PER_GPU: u32 = 7;
const PROFILE: &str = "1g.18gb";
const SM_PERCENT: u32 = 14;

struct Args {
    nccl: Option<String>,
    hostreduce: Option<String>,
    python: String,
    steps: u32,
    dry_run: bool,
}

fn main() {
    match parse().and_then(|a| run(&a)) {
        Ok(true) => println!("PASS"),
        Ok(false) => {
            println!("FAIL");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("flexmig-gpu-job: error: {e:#}");
            println!("FAIL");
            std::process::exit(2);
        }
    }
}

fn parse() -> Result<Args> {
    let mut a = Args { nccl: None, hostreduce: None, python: "python3".into(), steps: 300, dry_run: false };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--nccl" => a.nccl = Some(v()?),
            "--hostreduce" => a.hostreduce = Some(v()?),
            "--python" => a.python = v()?,
            "--steps" => a.steps = v()?.parse().context("--steps")?,
            "--dry-run" => a.dry_run = true,
            _ => bail!("unknown argument {k}; use [--nccl LIB] [--hostreduce LIB] [--python PY] [--steps N] [--dry-run]"),
        }
    }
    Ok(a)
}

/// The machine's GPUs; none may be in MIG mode.
fn gpus(dry_run: bool) -> Result<Vec<RealGpu>> {
    if dry_run {
        return Ok(vec![RealGpu {
            uuid: "GPU-d0000000-0000-4000-8000-000000000000".into(),
            model: "dry run".into(),
            bus_id: "00000000:00:00.0".into(),
        }]);
    }
    let o = Command::new("nvidia-smi")
        .args(["--query-gpu=uuid,name,pci.bus_id,mig.mode.current", "--format=csv,noheader"])
        .output()
        .context("running nvidia-smi")?;
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let [uuid, name, bus, mig] = f[..] else { bail!("cannot read nvidia-smi's line `{line}`") };
        if mig == "Enabled" {
            bail!("GPU {uuid} is in MIG mode: emulated leaves are for GPUs that are not; use its real MIG leaves (flexmig-gres-helper gres-conf)");
        }
        out.push(RealGpu { uuid: uuid.into(), model: name.into(), bus_id: bus.into() });
    }
    if out.is_empty() {
        bail!("nvidia-smi lists no GPU");
    }
    Ok(out)
}

fn node(gpus: &[RealGpu], nccl: Option<&str>, hostreduce: Option<&str>) -> Result<(ClusterConfig, Vec<EmulatedLeaf>)> {
    let (mut cfg, leaves) = ClusterConfig::emulated_gpus(gpus, LEAVES_PER_GPU, PROFILE, SM_PERCENT);
    let n = leaves.len();
    for f in ["job_submit.lua", "cli_filter.lua", "flexmig_filter.lua"] {
        cfg.files.push((
            f.into(),
            std::fs::read_to_string(format!("slurm-conf/{f}")).with_context(|| format!("slurm-conf/{f} (run from the repository root)"))?,
        ));
    }
    cfg.files.push((
        "flexmig_policy.lua".into(),
        format!("return {{ small_type = {PROFILE:?}, double_type = nil, leaves_per_node = {n}, small_leaves_per_node = {n}, single_prefers_double = true }}\n"),
    ));
    cfg.slurm_conf_extra = "JobSubmitPlugins=lua\nCliFilterPlugins=lua\n".into();
    // slurmd initialises a cgroup plugin even with task/none; on a cgroup v2 machine without
    // systemd (GPU machines in containers or VMs) it must make its own hierarchy.
    let v2 = std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().skip(1).take(2).eq(["/sys/fs/cgroup", "cgroup2"])))
        .unwrap_or(false);
    if v2 {
        cfg.files.push(("cgroup.conf".into(), "CgroupPlugin=cgroup/v2\nIgnoreSystemd=yes\n".into()));
    }
    let mut extra = String::new();
    if let Some(lib) = nccl {
        extra.push_str(&format!(" nccl={lib}"));
    }
    if let Some(lib) = hostreduce {
        extra.push_str(&format!(" hostreduce={lib}"));
    }
    cfg.plugstack = format!("required @PLUGIN@ inventory=@DIR@/flexmig.toml lock_dir=@DIR@/locks holders_dir=@DIR@/holders{extra}\n");
    cfg.cpus = 64;
    Ok((cfg, leaves))
}

/// What one job printed: its ranks' bindings, rank 0's result, NCCL's connection lines.
#[derive(Debug, Default)]
struct JobOutput {
    ranks: Vec<Value>,
    result: Option<Value>,
    connections: Vec<String>,
    text: String,
}

fn read_output(text: String) -> JobOutput {
    let mut o = JobOutput::default();
    for line in text.lines() {
        if let Some(j) = line.strip_prefix("RANK ") {
            o.ranks.extend(serde_json::from_str::<Value>(j).ok());
        } else if let Some(j) = line.strip_prefix("RESULT ") {
            o.result = serde_json::from_str(j).ok();
        } else if line.contains(" via ") && line.contains("Channel") {
            o.connections.push(line.to_string());
        }
    }
    o.text = text;
    o
}

fn run(a: &Args) -> Result<bool> {
    let gpus = gpus(a.dry_run)?;
    println!(
        "== GPUs (not in MIG mode; each cut into {LEAVES_PER_GPU} emulated {PROFILE} leaves, {SM_PERCENT}% of its SMs each under CUDA MPS)"
    );
    for (i, g) in gpus.iter().enumerate() {
        println!("   GPU {i}: {} {} {}", g.model, g.uuid, g.bus_id);
    }
    let (cfg, leaves) = node(&gpus, a.nccl.as_deref(), None)?;
    let c = Cluster::start(&cfg)?;
    println!("== Slurm up in {}; plugstack: {}", c.dir().display(), std::fs::read_to_string(c.dir().join("plugstack.conf"))?.trim());
    let py =
        |extra: &str| format!("{} tests/gpu/ddp_job.py --steps {}{}{extra}", a.python, a.steps, if a.dry_run { " --dry-run" } else { "" });
    let repo = std::env::current_dir()?;
    let script =
        format!("#!/bin/bash\ncd {}\nexport NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,P2P,SHM\nsrun --flexmig {}\n", repo.display(), py(""));
    c.write_file("job.sh", &script)?;
    let submit = |n: u32, tag: &str| -> Result<std::process::Child> {
        let out = c.dir().join(format!("{tag}.out"));
        c.command("sbatch")
            .args(["--wait", &format!("--gres=mig:{n}"), &format!("-n{n}"), "-o"])
            .arg(&out)
            .arg(c.dir().join("job.sh"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("sbatch")
    };
    let total = leaves.len() as u32;
    let plans: Vec<Vec<(u32, String)>> = vec![
        vec![(4, "mig4".into())],
        vec![(total.min(7), format!("mig{}", total.min(7)))],
        vec![(3, "together-mig3".into()), (total.min(7) - 3, format!("together-mig{}", total.min(7) - 3))],
    ];
    let mut ok = true;
    let mut results = Vec::new();
    for round in plans {
        let children: Vec<_> = round.iter().map(|(n, tag)| submit(*n, tag).map(|ch| (*n, tag.clone(), ch))).collect::<Result<_>>()?;
        let mut bound_this_round = BTreeSet::new();
        for (n, tag, ch) in children {
            let o = ch.wait_with_output()?;
            let text = std::fs::read_to_string(c.dir().join(format!("{tag}.out"))).unwrap_or_default();
            let job = read_output(text);
            println!("\n== sbatch --gres=mig:{n} -n{n}: srun --flexmig python ddp_job.py ({tag})");
            ok &= check_job(n, &job, &leaves, &gpus, a.dry_run, o.status.success());
            for r in &job.ranks {
                if !bound_this_round.insert(r["NCCL_MIG_ID"].as_str().unwrap_or("").to_string()) {
                    println!("   FAILED: two jobs running at once were bound to one leaf");
                    ok = false;
                }
            }
            results.push((n, job.result.clone()));
        }
    }
    if let Some(hr) = &a.hostreduce {
        // The same 7-leaf job on a node whose plugstack line adds hostreduce=.
        let (cfg, leaves) = node(&gpus, a.nccl.as_deref(), Some(hr))?;
        let c2 = Cluster::start(&cfg)?;
        c2.write_file(
            "job.sh",
            &script.replace("NCCL_DEBUG_SUBSYS=INIT,P2P,SHM", "NCCL_DEBUG_SUBSYS=INIT,P2P,SHM FLEXMIG_HOSTREDUCE_DEBUG=1"),
        )?;
        let n = total.min(7);
        let tag = format!("mig{n}-hostreduce");
        let out = c2.dir().join(format!("{tag}.out"));
        let o = c2
            .command("sbatch")
            .args(["--wait", &format!("--gres=mig:{n}"), &format!("-n{n}"), "-o"])
            .arg(&out)
            .arg(c2.dir().join("job.sh"))
            .output()
            .context("sbatch")?;
        let job = read_output(std::fs::read_to_string(&out).unwrap_or_default());
        println!("\n== sbatch --gres=mig:{n} -n{n} with hostreduce= on the plugstack line ({tag})");
        ok &= check_job(n, &job, &leaves, &gpus, a.dry_run, o.status.success());
        for l in job.text.lines().filter(|l| l.contains("hostreduce")).take(8) {
            println!("     {l}");
        }
        results.push((n, job.result.clone()));
    }
    if !a.dry_run {
        println!("\n== The same script as one process with the whole job's SM share");
        for (n, r) in &results {
            let Some(r) = r else { continue };
            let pct = (SM_PERCENT * n).min(100);
            let o = Command::new(&a.python)
                .args(["tests/gpu/ddp_job.py", "--steps", &a.steps.to_string(), "--single", &n.to_string()])
                .env("CUDA_VISIBLE_DEVICES", &gpus[0].uuid)
                .env("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", pct.to_string())
                .output()
                .context("running the single-process baseline")?;
            let single = read_output(String::from_utf8_lossy(&o.stdout).into_owned());
            match (single.result.as_ref().and_then(|s| s["samples_per_s"].as_f64()), r["samples_per_s"].as_f64()) {
                (Some(one), Some(many)) => {
                    println!("   {n} leaves: {many:.0} samples/s; one process at {pct}%: {one:.0} samples/s; ratio {:.2}", many / one)
                }
                _ => {
                    println!("   {n} leaves: the baseline did not report:\n{}{}", single.text, String::from_utf8_lossy(&o.stderr));
                    ok = false;
                }
            }
        }
    }
    Ok(ok)
}

/// Prints and checks one job; false when something did not hold.
fn check_job(n: u32, job: &JobOutput, leaves: &[EmulatedLeaf], gpus: &[RealGpu], dry_run: bool, exited_ok: bool) -> bool {
    let mut ok = true;
    let mut fail = |what: String| {
        println!("   FAILED: {what}");
        ok = false;
    };
    if !exited_ok {
        fail(format!("the job failed; its output:\n{}", job.text));
    }
    println!("   {:<5} {:<4} {:<44} {:<5} {}", "rank", "gpu", "leaf (NCCL_MIG_ID)", "MPS%", "CUDA_VISIBLE_DEVICES");
    let mut seen = BTreeSet::new();
    let mut ranks: Vec<&Value> = job.ranks.iter().collect();
    ranks.sort_by_key(|r| r["RANK"].as_str().and_then(|s| s.parse::<u32>().ok()));
    for r in &ranks {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        println!(
            "   {:<5} {:<4} {:<44} {:<5} {}",
            s("RANK"),
            s("FLEXMIG_GPU"),
            s("NCCL_MIG_ID"),
            s("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"),
            s("CUDA_VISIBLE_DEVICES")
        );
        let Some(leaf) = leaves.iter().find(|l| l.uuid == s("NCCL_MIG_ID")) else {
            fail(format!("rank {} is not bound to a leaf of the node", s("RANK")));
            continue;
        };
        if !seen.insert(leaf.uuid.clone()) {
            fail(format!("leaf {} bound twice", leaf.uuid));
        }
        if s("CUDA_VISIBLE_DEVICES") != gpus[leaf.gpu as usize].uuid || s("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE") != SM_PERCENT.to_string() {
            fail(format!("rank {}: not its leaf's GPU and share", s("RANK")));
        }
    }
    if ranks.len() != n as usize {
        fail(format!("{} of {n} ranks reported", ranks.len()));
    }
    println!("   each rank's environment, from inside the job:");
    for r in &ranks {
        println!("     {r}");
    }
    if dry_run {
        println!("   dry run: training, NCCL transports and speed are not checked (no GPU)");
        return ok;
    }
    let shm = job.connections.iter().filter(|l| l.contains("via SHM")).count();
    let other: Vec<&String> = job.connections.iter().filter(|l| !l.contains("via SHM")).collect();
    println!("   NCCL connections: {shm} via SHM, {} otherwise:", other.len());
    for l in &job.connections {
        println!("     {}", l.split("NCCL INFO ").nth(1).unwrap_or(l));
    }
    if shm == 0 || !other.is_empty() {
        fail(format!("ranks must connect over SHM only: {other:?}"));
    }
    match &job.result {
        None => fail(format!("rank 0 printed no RESULT; output:\n{}", job.text)),
        Some(r) => {
            let (first, last) = (r["loss_first"].as_f64().unwrap_or(f64::NAN), r["loss_last"].as_f64().unwrap_or(f64::NAN));
            println!(
                "   loss {first:.4} -> {last:.4}; parameters and gradients equal on every rank: {}; {:.0} samples/s",
                r["params_equal"],
                r["samples_per_s"].as_f64().unwrap_or(0.0)
            );
            if r["params_equal"] != Value::Bool(true) {
                fail("parameters or gradients differ between ranks".into());
            }
            if !(last < first) {
                fail("the loss did not fall".into());
            }
        }
    }
    ok
}
