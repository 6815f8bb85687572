//! The node helper end to end under a real Slurm: `flexmig-gres-helper` builds the emulated
//! node's configuration (fake 2-GPU A100-40GB node: apply, gres-conf), the cluster starts with
//! it, the Lua filters turn `--gres=mig:N` into typed requests, the SPANK plugin binds the
//! leaves, and `verify` agrees with the real `slurmd -G`, until the gres.conf order is broken
//! on purpose.

use std::collections::BTreeMap;
use std::process::Output;

use flexmig_integration::helper_node::{self, HelperNode};
use flexmig_integration::Cluster;
use leaf_model::{gres_order, Inventory};

fn text(o: &Output) -> String {
    format!("status {:?}\nstdout:\n{}\nstderr:\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn build_node(model: &str, gpus: u32) -> HelperNode {
    helper_node::build(model, gpus).unwrap()
}

fn verify(node: &HelperNode, c: &Cluster) -> Output {
    helper_node::verify(node, c).unwrap()
}

/// One line per task: `<procid> <step gpus> <FLEXMIG_GPU> <FLEXMIG_PROFILE> <NCCL_MIG_ID>`.
const TASK_LINE: &str =
    "echo \"$SLURM_PROCID ${SLURM_STEP_GPUS:-${SLURM_JOB_GPUS:-none}} ${FLEXMIG_GPU:-none} ${FLEXMIG_PROFILE:-none} ${NCCL_MIG_ID:-none}\"";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Task {
    gres: String,
    gpu: String,
    profile: String,
    uuid: String,
}

fn parse_tasks(out: &str) -> BTreeMap<u32, Task> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [id, gres, gpu, profile, uuid] = f.as_slice() else { return None };
            Some((
                id.parse().ok()?,
                Task { gres: gres.to_string(), gpu: gpu.to_string(), profile: profile.to_string(), uuid: uuid.to_string() },
            ))
        })
        .collect()
}

/// Checks each task's leaf against the helper's inventory; returns the GRES indices used.
fn check_tasks(inv: &Inventory, tasks: &BTreeMap<u32, Task>) -> Vec<u32> {
    let mut used = Vec::new();
    for (rank, t) in tasks {
        let leaf = inv
            .leaves
            .iter()
            .find(|l| l.uuid == t.uuid)
            .unwrap_or_else(|| panic!("task {rank}: {} is not an inventory leaf: {tasks:#?}", t.uuid));
        assert_eq!(t.gpu, leaf.gpu.to_string(), "task {rank}");
        assert_eq!(t.profile, leaf.profile, "task {rank}");
        assert!(!used.contains(&leaf.gres_index), "leaf bound twice: {tasks:#?}");
        used.push(leaf.gres_index);
    }
    used.sort_unstable();
    used
}

fn srun(c: &Cluster, args: &[&str]) -> Output {
    Cluster::output(c.command("srun").args(args)).unwrap()
}

#[test]
fn helper_config_serves_size_aware_requests_and_verify_tracks_slurmd() {
    let node = build_node("A100-40GB", 2);
    // The helper's order: the two doubles first, then small leaves alternating GPUs.
    let profiles: Vec<(u32, &str)> = {
        let mut l: Vec<_> = node.inventory.leaves.iter().collect();
        l.sort_by_key(|l| l.gres_index);
        l.iter().map(|l| (l.gpu, l.profile.as_str())).collect()
    };
    assert_eq!(&profiles[..4], &[(0, "1g.10gb"), (1, "1g.10gb"), (0, "1g.5gb"), (1, "1g.5gb")]);
    assert_eq!(node.cfg.node_gres, "gpu:1g.10gb:2,gpu:1g.5gb:12");
    let c = Cluster::start(&node.cfg).unwrap_or_else(|e| panic!("{e:#}"));

    // verify: NVML (the fake node), inventory, gres.conf and the real slurmd -G agree.
    let o = verify(&node, &c);
    assert!(o.status.success(), "{}\nslurmd -G:\n{}", text(&o), c.slurmd_g().unwrap());

    // sbatch --gres=mig:6: job_submit.lua makes it 6 small leaves; the inner srun --flexmig
    // binds one per task, 3 per GPU, ranks alternating GPUs.
    let script = c.dir().join("job6.sh");
    std::fs::write(&script, format!("#!/bin/bash\nsrun --flexmig bash -c '{TASK_LINE}'\n")).unwrap();
    let out = c.dir().join("job6.out");
    let o = Cluster::output(c.command("sbatch").args(["--wait", "--gres=mig:6", "-n6", "-o"]).arg(&out).arg(&script)).unwrap();
    assert!(o.status.success(), "{}\n{}", text(&o), c.log_tails());
    let tasks = parse_tasks(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(tasks.len(), 6, "{tasks:#?}");
    let used = check_tasks(&node.inventory, &tasks);
    assert_eq!(used, vec![2, 3, 4, 5, 6, 7], "mig:6 must take the 6 lowest small leaves: {tasks:#?}");
    assert!(tasks.values().all(|t| t.profile == "1g.5gb"));
    let gpus: Vec<&str> = tasks.values().map(|t| t.gpu.as_str()).collect();
    assert_eq!(gpus, ["0", "1", "0", "1", "0", "1"], "{tasks:#?}");

    // srun --gres=mig:1 (cli_filter -> untyped gpu:1): the first double leaf.
    let o = srun(&c, &["--gres=mig:1", "--flexmig", "bash", "-c", TASK_LINE]);
    assert!(o.status.success(), "{}", text(&o));
    let t = parse_tasks(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(check_tasks(&node.inventory, &t), vec![0], "{t:#?}");
    assert_eq!(t[&0].profile, "1g.10gb");

    // An inner `srun --gres=mig:2` (cli_filter only) inside a mig:6 allocation: 2 small leaves.
    let script = c.dir().join("inner.sh");
    std::fs::write(&script, format!("#!/bin/bash\nsrun --gres=mig:2 -n2 --flexmig bash -c '{TASK_LINE}'\n")).unwrap();
    let out = c.dir().join("inner.out");
    let o = Cluster::output(c.command("sbatch").args(["--wait", "--gres=mig:6", "-n6", "-o"]).arg(&out).arg(&script)).unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let t = parse_tasks(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(t.len(), 2, "{t:#?}");
    let used = check_tasks(&node.inventory, &t);
    assert!(t.values().all(|x| x.profile == "1g.5gb"), "{t:#?}");
    assert_eq!(used, vec![2, 3], "{t:#?}");

    // With both doubles busy, mig:1 falls back to a small leaf.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let o = Cluster::output(c.command("sbatch").args(["--parsable", "--gres=mig:1", "--wrap", "sleep 60"])).unwrap();
        assert!(o.status.success(), "{}", text(&o));
        holders.push(String::from_utf8_lossy(&o.stdout).trim().to_string());
    }
    let t0 = std::time::Instant::now();
    loop {
        let o = Cluster::output(c.command("squeue").args(["-h", "-t", "R", "-o", "%i"])).unwrap();
        if String::from_utf8_lossy(&o.stdout).lines().count() >= 2 {
            break;
        }
        assert!(t0.elapsed().as_secs() < 30, "holder jobs did not start:\n{}", c.log_tails());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let o = srun(&c, &["--gres=mig:1", "--flexmig", "bash", "-c", TASK_LINE]);
    assert!(o.status.success(), "{}", text(&o));
    let t = parse_tasks(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(t[&0].profile, "1g.5gb", "fallback to a small leaf: {t:#?}");
    assert_eq!(check_tasks(&node.inventory, &t), vec![2]);
    let _ = Cluster::output(c.command("scancel").args(&holders));

    // Bad requests fail with the filters' messages.
    for (args, msg) in [
        (vec!["--gres=mig:0", "true"], "mig:0"),
        (vec!["--gres=mig:15", "true"], "a node has 14"),
        (vec!["--gres=mig:2", "--gpus=1", "true"], "cannot be combined"),
    ] {
        let o = srun(&c, &args);
        assert!(!o.status.success(), "{args:?} should fail: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains(msg), "{args:?}: {}", text(&o));
    }

    // Break the order on purpose: swap GPU 0's double and small line in gres.conf. Slurm
    // numbers by type, so the small line keeps its index and the doubles trade theirs: slurmd -G
    // gives GRES index 0 to GPU 1's double, which the inventory has as index 1; verify says so.
    let gres = std::fs::read_to_string(c.dir().join("gres.conf")).unwrap();
    let mut lines: Vec<&str> = gres.lines().filter(|l| l.starts_with("Name=")).collect();
    lines.swap(0, 2);
    c.write_file("gres.conf", &(lines.join("\n") + "\n")).unwrap();
    let o = verify(&node, &c);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("slurmd -G record 1 (GRES index 0)") && out.contains("wrong leaf"), "{out}");
    assert!(out.contains("gres.conf line 2 (GRES index 0)") && !out.contains("gres.conf line 1 "), "{out}");
}

#[test]
fn verify_catches_a_slurm_conf_gres_line_in_another_type_order() {
    // The admin's own node line with the types in the other order beside the helper's gres.conf.
    let mut node = build_node("A100-40GB", 2);
    let right = "gpu:1g.10gb:2,gpu:1g.5gb:12";
    assert_eq!(node.cfg.node_gres, right);
    node.cfg.node_gres = "gpu:1g.5gb:12,gpu:1g.10gb:2".into();
    let c = Cluster::start(&node.cfg).unwrap_or_else(|e| panic!("{e:#}"));

    // Real Slurm numbers by the line's type order, as leaf_model::gres_order says: slurmd -G
    // lists the 1g.5gb leaves first, and a job asking for one 1g.10gb leaf gets GRES index 12,
    // which the inventory gives to a 1g.5gb leaf.
    let g = c.slurmd_g().unwrap();
    let types: Vec<&str> = g.lines().filter_map(|l| l.split("Gres Name=gpu Type=").nth(1)?.split_whitespace().next()).collect();
    let gres_conf = std::fs::read_to_string(c.dir().join("gres.conf")).unwrap();
    let lines: Vec<&str> = gres_conf.lines().filter_map(|l| l.strip_prefix("Name=gpu Type=")?.split_whitespace().next()).collect();
    let idx = gres_order::slurm_gres_indices(&gres_order::parse_node_gres(&node.cfg.node_gres).unwrap(), &lines);
    let mut modelled = vec![""; lines.len()];
    for (t, i) in lines.iter().zip(&idx) {
        modelled[i.unwrap() as usize] = t;
    }
    assert_eq!(types, modelled, "slurmd -G:\n{g}");
    assert_eq!(&types[..12], ["1g.5gb"; 12], "slurmd -G:\n{g}");
    let o = srun(&c, &["--gres=gpu:1g.10gb:1", "bash", "-c", "echo $SLURM_STEP_GPUS"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "12", "{}", text(&o));
    assert_eq!(node.inventory.leaf_by_gres_index(12).unwrap().profile, "1g.5gb");

    // verify says what is wrong and what to write, with and without slurmd.
    let fix = format!("set Gres={right},");
    let o = verify(&node, &c);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Gres=gpu:1g.5gb:12,gpu:1g.10gb:2 lists the leaf types in another order") && out.contains(&fix), "{out}");
    assert!(out.contains("slurmd -G record 1 (GRES index 0)") && out.contains("wrong leaf"), "{out}");
    let o = helper_node::verify_with(&node, &c, &["--no-slurmd"]).unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 1, "only the slurm.conf line is wrong: {out}");
    assert!(out.contains("slurm.conf line") && out.contains(&fix), "{out}");

    // With the line verify asks for, slurmd -G and every file agree.
    let conf = std::fs::read_to_string(c.conf()).unwrap();
    c.write_file("slurm.conf", &conf.replace("Gres=gpu:1g.5gb:12,gpu:1g.10gb:2", &format!("Gres={right}"))).unwrap();
    let o = verify(&node, &c);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn job_submit_alone_enforces_the_rule() {
    // Without cli_filter (a user could bypass it), job_submit.lua still rewrites and refuses.
    let mut node = build_node("H100-80GB", 2);
    node.cfg.slurm_conf_extra = "JobSubmitPlugins=lua\n".into();
    let c = Cluster::start(&node.cfg).unwrap_or_else(|e| panic!("{e:#}"));
    let o = Cluster::output(c.command("sbatch").args(["--parsable", "--hold", "--gres=mig:4", "--wrap", "true"])).unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let o = Cluster::output(c.command("scontrol").args(["show", "job", &id])).unwrap();
    let show = String::from_utf8_lossy(&o.stdout);
    assert!(show.contains("gpu:1g.10gb:4"), "{show}");
    let _ = Cluster::output(c.command("scancel").arg(&id));
    let o = Cluster::output(c.command("sbatch").args(["--gres=mig:0", "--wrap", "true"])).unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("mig:0 asks for no MIG leaf"), "{}", text(&o));
    let o = Cluster::output(c.command("sbatch").args(["--gres=mig:15", "--wrap", "true"])).unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("a node has 14"), "{}", text(&o));
    let o = verify(&node, &c);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a30_node_without_double_leaves() {
    // A30: 4 x 1g.6gb per GPU, no double profile; the policy has double_type = nil.
    let node = build_node("A30", 2);
    assert_eq!(node.cfg.node_gres, "gpu:1g.6gb:8");
    let c = Cluster::start(&node.cfg).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(verify(&node, &c).status.success());
    let o = srun(&c, &["--gres=mig:1", "--flexmig", "bash", "-c", TASK_LINE]);
    assert!(o.status.success(), "{}", text(&o));
    let t = parse_tasks(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(check_tasks(&node.inventory, &t), vec![0]);
    assert_eq!(t[&0].profile, "1g.6gb");
    let o = srun(&c, &["--gres=mig:8", "-n8", "--flexmig", "bash", "-c", TASK_LINE]);
    assert!(o.status.success(), "{}", text(&o));
    let t = parse_tasks(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(check_tasks(&node.inventory, &t), (0..8).collect::<Vec<_>>());
    let o = srun(&c, &["--gres=mig:9", "true"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("a node has 8"), "{}", text(&o));
}

/// A node whose GPUs are not in MIG mode, configured by `flexmig-gres-helper emulate`: Slurm
/// counts its alias device files as GRES and the plugin binds each rank to a share of its GPU.
#[test]
fn emulated_leaves_from_the_helper_run_flexmig_steps() {
    let work = tempfile::tempdir().unwrap();
    let p = |n: &str| work.path().join(n).display().to_string();
    let ok = |args: &[&str]| {
        let o = helper_node::helper(args).unwrap();
        assert!(o.status.success(), "flexmig-gres-helper {args:?}: {}", text(&o));
    };
    ok(&["fake-node", "create", "--model", "H200", "--gpus", "2", "--mig-disabled", &p("node.toml")]);
    let g = ["--fake-node", &p("node.toml"), "--dev-root", &p("dev"), "--mig-minors", &p("mig-minors")];
    ok(&[&g[..], &["fake-node", "devices"]].concat());
    ok(&[
        &g[..],
        &[
            "emulate",
            "--leaves-per-gpu",
            "7",
            "--gres-conf",
            &p("gres.conf"),
            "--node-conf",
            &p("node.conf"),
            "--inventory",
            &p("flexmig.toml"),
        ],
        &["--node-name", "localhost"],
    ]
    .concat());
    let read = |n: &str| std::fs::read_to_string(work.path().join(n)).unwrap();
    let node_gres =
        read("node.conf").lines().find_map(|l| l.split_whitespace().find_map(|kv| kv.strip_prefix("Gres=")).map(String::from)).unwrap();
    let inv = Inventory::load(&work.path().join("flexmig.toml")).unwrap();
    let cfg = flexmig_integration::ClusterConfig {
        node_gres,
        gres_conf: read("gres.conf"),
        inventory: Some(read("flexmig.toml")),
        plugstack: flexmig_integration::DEFAULT_PLUGSTACK.into(),
        slurm_conf_extra: String::new(),
        files: Vec::new(),
        devices: Vec::new(),
        cpus: 16,
        nodes: 1,
    };
    let c = Cluster::start(&cfg).unwrap();
    let o = Cluster::output(c.command("srun").args([
        "--flexmig",
        "-n4",
        "--gres=gpu:1g.18gb:4",
        "bash",
        "-c",
        "echo \"$SLURM_PROCID $NCCL_MIG_ID $CUDA_VISIBLE_DEVICES $CUDA_MPS_ACTIVE_THREAD_PERCENTAGE $FLEXMIG_GPU\"",
    ]))
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let mut leaves = std::collections::BTreeSet::new();
    let mut gpus = std::collections::BTreeSet::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 5, "{out}");
        let leaf = inv.leaves.iter().find(|l| l.uuid == f[1]).unwrap_or_else(|| panic!("{line}"));
        assert_eq!(f[2], inv.gpu(leaf.gpu).unwrap().uuid, "the leaf's GPU: {line}");
        assert_eq!(f[3], "14", "100 / 7 percent of the GPU: {line}");
        assert!(leaves.insert(f[1].to_string()), "one leaf per rank");
        gpus.insert(f[4].to_string());
    }
    assert_eq!((leaves.len(), gpus.len()), (4, 2), "four ranks over both GPUs: {out}");
}
