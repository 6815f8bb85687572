//! The SPANK plugin under a real Slurm: real srun/sbatch/salloc, real slurmstepd, the built
//! .so loaded from plugstack.conf, emulated MIG leaves as char devices.

use std::collections::{BTreeMap, BTreeSet};

use flexmig_integration::task_env::{check_rank_step, parse_tasks, print_vars, srun, start, text, vars};
use flexmig_integration::{Cluster, ClusterConfig, RealGpu, DEFAULT_PLUGSTACK};

#[test]
fn option_is_listed_in_help_of_srun_sbatch_and_salloc() {
    let (c, _) = start(1);
    for prog in ["srun", "sbatch", "salloc"] {
        let o = Cluster::output(c.command(prog).arg("--help")).unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("--flexmig=MODE"), "{prog} --help lacks --flexmig:\n{}", text(&o));
        assert!(out.contains("Options provided by plugins"), "{prog}");
    }
}

#[test]
fn each_task_gets_its_own_leaf_alternating_gpus() {
    let (c, leaves) = start(2);
    let o = srun(&c, &["--flexmig", "-n6", "--gres=gpu:1g.5gb:6", "bash", "-c", &print_vars()]);
    assert!(o.status.success(), "{}", text(&o));
    let tasks = parse_tasks(&String::from_utf8_lossy(&o.stdout));
    let used = check_rank_step(&tasks, &leaves, 6);
    assert_eq!(used.len(), 6);
    // 3 on each GPU, ranks 0,2,4 on one GPU and 1,3,5 on the other.
    let gpus: Vec<&str> = tasks.values().map(|t| t["FLEXMIG_GPU"].as_str()).collect();
    assert_eq!(gpus, ["0", "1", "0", "1", "0", "1"]);

    // Explicit --flexmig=rank is the same; a 7-task step over both GPUs mixes in a double leaf.
    let o = srun(&c, &["--flexmig=rank", "-n7", "--gres=gpu:7", "bash", "-c", &print_vars()]);
    assert!(o.status.success(), "{}", text(&o));
    check_rank_step(&parse_tasks(&String::from_utf8_lossy(&o.stdout)), &leaves, 7);
}

#[test]
fn fewer_tasks_than_leaves_and_user_set_torch_vars() {
    let (c, leaves) = start(2);
    let o = Cluster::output(c.command("srun").env("MASTER_PORT", "4242").env("NCCL_MIN_NCHANNELS", "8").args([
        "--flexmig",
        "-n2",
        "--gres=gpu:1g.5gb:4",
        "bash",
        "-c",
        &print_vars(),
    ]))
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let tasks = parse_tasks(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(tasks.len(), 2);
    for t in tasks.values() {
        assert_eq!(t["MASTER_PORT"], "4242", "a user's MASTER_PORT is kept");
        assert!(!t.contains_key("NCCL_MAX_NCHANNELS"), "a user who tunes NCCL's channels keeps their own setting: {t:?}");
    }
    let gpus: BTreeSet<u32> = tasks.values().map(|t| leaves.iter().find(|l| l.uuid == t["NCCL_MIG_ID"]).unwrap().gpu).collect();
    assert_eq!(gpus.len(), 2, "two tasks over four leaves still use both GPUs");
}

#[test]
fn without_flexmig_nothing_changes() {
    let (c, _) = start(2);
    let script = format!("{}; env | grep -E '^(FLEXMIG_|NCCL_|PET_)' | sed 's/^/ENV:/' || true", print_vars());
    for extra in [None, Some("--flexmig=off")] {
        let mut args = vec!["-n2", "--gres=gpu:1g.5gb:2"];
        args.extend(extra);
        args.extend(["bash", "-c", &script]);
        let o = srun(&c, &args);
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(!out.contains("ENV:"), "{extra:?}: plugin touched the step:\n{out}");
        let tasks = parse_tasks(&out);
        assert_eq!(tasks.len(), 2);
        for t in tasks.values() {
            // Slurm's own value (GRES indices with task/none) is left as it is.
            assert_eq!(t["CUDA_VISIBLE_DEVICES"], t["SLURM_STEP_GPUS"], "{extra:?}");
            for v in vars().into_iter().filter(|v| !v.starts_with("SLURM_") && *v != "CUDA_VISIBLE_DEVICES") {
                assert!(!t.contains_key(v), "{extra:?}: {v} set without --flexmig");
            }
        }
    }
    // A step without GPUs and without --flexmig runs as usual.
    let o = srun(&c, &["-n1", "true"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn sbatch_flexmig_reaches_inner_steps_and_the_batch_step_gets_the_node_view() {
    let (c, leaves) = start(2);
    let out = c.dir().join("job.out");
    let script = format!(
        "#!/bin/bash\necho \"batch LEAVES=$FLEXMIG_LEAVES RANK=${{RANK-unset}} CVD=$CUDA_VISIBLE_DEVICES\"\nsrun bash -c '{}'\n",
        print_vars().replace('\'', "'\\''")
    );
    c.write_file("job.sh", &script).unwrap();
    let o = Cluster::output(
        c.command("sbatch").args(["--wait", "--flexmig", "-n4", "--gres=gpu:1g.5gb:4", "-o"]).arg(&out).arg(c.dir().join("job.sh")),
    )
    .unwrap();
    let log = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(o.status.success(), "{}\njob output:\n{log}", text(&o));
    let batch = log.lines().find(|l| l.starts_with("batch ")).expect("batch line");
    let leaves_line: Vec<&str> = batch.split_whitespace().find_map(|w| w.strip_prefix("LEAVES=")).unwrap().split(',').collect();
    assert_eq!(leaves_line.len(), 4, "{batch}");
    assert!(batch.contains("RANK=unset"), "the batch step must not get torch variables: {batch}");
    assert!(batch.contains(&format!("CVD={}", leaves_line.join(","))), "{batch}");
    let tasks = parse_tasks(&log);
    let used = check_rank_step(&tasks, &leaves, 4);
    let batch_set: BTreeSet<String> = leaves_line.iter().map(|s| s.to_string()).collect();
    assert_eq!(used, batch_set, "inner step binds exactly the job's leaves");
}

#[test]
fn node_mode_gives_one_task_all_leaves() {
    let (c, leaves) = start(2);
    let o = srun(
        &c,
        &[
            "--flexmig=node",
            "-n1",
            "--gres=gpu:1g.5gb:4",
            "bash",
            "-c",
            "echo \"$FLEXMIG_LEAVES|$CUDA_VISIBLE_DEVICES|$LOCAL_WORLD_SIZE|$PET_NPROC_PER_NODE|${RANK-unset}|${NCCL_MIG_ID-unset}\"",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let parts: Vec<&str> = line.split('|').collect();
    let uuids: Vec<&str> = parts[0].split(',').collect();
    assert_eq!(uuids.len(), 4);
    assert_eq!(parts[1], parts[0]);
    assert_eq!(&parts[2..], ["4", "4", "unset", "unset"]);
    let gpus: Vec<u32> = uuids.iter().map(|u| leaves.iter().find(|l| l.uuid == *u).unwrap().gpu).collect();
    assert_eq!(gpus, [0, 1, 0, 1], "balanced order");
    let o = srun(&c, &["--flexmig=node", "-n2", "--gres=gpu:1g.5gb:4", "true"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--ntasks-per-node=1"), "{}", text(&o));
}

#[test]
fn a_non_root_user_gets_bindings() {
    let (c, leaves) = start(2);
    let o = Cluster::output(c.command_as_user("srun").unwrap().args([
        "--flexmig",
        "-n4",
        "--gres=gpu:1g.5gb:4",
        "bash",
        "-c",
        &format!("id -un; {}", print_vars()),
    ]))
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().filter(|l| *l == flexmig_integration::TEST_USER).count() == 4, "{out}");
    check_rank_step(&parse_tasks(&out), &leaves, 4);
}

/// Each error: the step fails, the user's terminal says what is wrong, and the task's own
/// command never runs.
#[test]
fn errors_fail_cleanly_with_their_message() {
    let (c, leaves) = start(2);
    let good_inventory = std::fs::read_to_string(c.dir().join("flexmig.toml")).unwrap();
    let marker = c.dir().join("task-ran");
    let run = |args: &[&str]| {
        let _ = std::fs::remove_file(&marker);
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend(["touch".to_string(), marker.display().to_string()]);
        let o = Cluster::output(c.command("srun").args(&a)).unwrap();
        assert!(!o.status.success(), "{args:?} should fail:\n{}", text(&o));
        assert!(!marker.exists(), "{args:?}: the task ran although flexmig failed");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let expect = |args: &[&str], needles: &[&str]| {
        let err = run(args);
        for n in needles {
            assert!(err.contains(n), "{args:?}: stderr lacks `{n}`:\n{err}");
        }
    };

    expect(&["--flexmig", "-n3", "--gres=gpu:1g.5gb:2"], &["3 tasks on localhost but only 2 MIG leaves", "--gres=mig:3"]);
    expect(&["--flexmig", "-n1"], &["no GPUs are allocated", "--gres=mig:N"]);
    expect(&["--flexmig=bogus", "-n1", "--gres=gpu:1"], &["unknown mode --flexmig=bogus"]);

    std::fs::remove_file(c.dir().join("flexmig.toml")).unwrap();
    expect(&["--flexmig", "-n1", "--gres=gpu:1"], &["cannot use the node inventory", "flexmig.toml does not exist"]);
    c.write_file("flexmig.toml", "version = 1\n[[leaf]\n").unwrap();
    expect(&["--flexmig", "-n1", "--gres=gpu:1"], &["is malformed"]);
    c.write_file("flexmig.toml", &good_inventory.replace("version = 1", "version = 9")).unwrap();
    expect(&["--flexmig", "-n1", "--gres=gpu:1"], &["has version 9", "reads version 1"]);
    c.write_file("flexmig.toml", &good_inventory.replace("gres_index = 0\n", "gres_index = 0\nslot = 1\n")).unwrap();
    expect(&["--flexmig", "-n1", "--gres=gpu:1"], &["is malformed", "slot"]);
    // GRES index 0 missing from the inventory.
    let without_0 = good_inventory.replace("gres_index = 0\n", "gres_index = 99\n");
    c.write_file("flexmig.toml", &without_0).unwrap();
    expect(&["--flexmig", "-n1", "--gres=gpu:1g.10gb:1"], &["GRES index 0", "has no MIG leaf", "flexmig-gres-helper verify"]);
    // Two GRES indices naming one leaf: refused rather than binding two ranks to it.
    let dup = good_inventory.replace(&format!("uuid = \"{}\"", leaves[1].uuid), &format!("uuid = \"{}\"", leaves[0].uuid));
    c.write_file("flexmig.toml", &dup).unwrap();
    expect(&["--flexmig", "-n2", "--gres=gpu:1g.5gb:2"], &["listed twice", &leaves[0].uuid]);
    // Root reads the inventory for every user's step, so only a file of root's is used.
    c.write_file("flexmig.toml", &good_inventory).unwrap();
    let inv = c.dir().join("flexmig.toml");
    std::os::unix::fs::chown(&inv, Some(65534), None).unwrap();
    expect(&["--flexmig", "-n1", "--gres=gpu:1"], &["cannot use the node inventory", "owned by uid 65534, not by root"]);
    std::os::unix::fs::chown(&inv, Some(0), None).unwrap();
    std::fs::set_permissions(&inv, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    expect(&["--flexmig", "-n1", "--gres=gpu:1"], &["writable by others than root"]);
    std::fs::set_permissions(&inv, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();

    // A bad plugstack argument fails --flexmig at once, naming the argument; other steps run.
    c.write_file(
        "plugstack.conf",
        &DEFAULT_PLUGSTACK
            .replace("@PLUGIN@", &c.plugin().display().to_string())
            .replace("inventory=@DIR@/flexmig.toml", "inventry=/etc/x.toml"),
    )
    .unwrap();
    expect(&["--flexmig", "-n1", "--gres=gpu:1"], &["inventry=/etc/x.toml", "unknown key"]);
    let o = srun(&c, &["-n1", "--gres=gpu:1", "true"]);
    assert!(o.status.success(), "a step without --flexmig must not fail on flexmig's configuration: {}", text(&o));
    c.write_file(
        "plugstack.conf",
        &format!(
            "required {} inventory={d}/flexmig.toml lock_dir={d}/locks holders_dir={d}/holders nccl=/nonexistent/libnccl.so.2\n",
            c.plugin().display(),
            d = c.dir().display()
        ),
    )
    .unwrap();
    expect(&["--flexmig", "-n1", "--gres=gpu:1"], &["/nonexistent/libnccl.so.2", "does not exist"]);

    // Everything good again: works.
    c.write_file(
        "plugstack.conf",
        &format!(
            "required {} inventory={d}/flexmig.toml lock_dir={d}/locks holders_dir={d}/holders\n",
            c.plugin().display(),
            d = c.dir().display()
        ),
    )
    .unwrap();
    let o = srun(&c, &["--flexmig", "-n1", "--gres=gpu:1", "true"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn nccl_argument_preloads_the_patched_library_and_channels_can_be_off() {
    let (cfg, _) = ClusterConfig::emulated(1);
    let mut cfg = cfg;
    cfg.plugstack =
        "required @PLUGIN@ inventory=@DIR@/flexmig.toml lock_dir=@DIR@/locks holders_dir=@DIR@/holders nccl=@DIR@/libnccl.so.2 torch_env=no nccl_max_channels=off hostreduce=@DIR@/libflexmig_hostreduce.so\n"
            .into();
    let c = Cluster::start(&cfg).unwrap();
    // Any loadable library stands in for the patched NCCL and the host-reduce library here.
    let libm = "/lib/x86_64-linux-gnu/libm.so.6";
    std::fs::copy(libm, c.dir().join("libnccl.so.2")).unwrap();
    std::fs::copy(libm, c.dir().join("libflexmig_hostreduce.so")).unwrap();
    let lib = c.dir().join("libnccl.so.2").display().to_string();
    let hr = c.dir().join("libflexmig_hostreduce.so").display().to_string();
    let o = Cluster::output(c.command("srun").env("LD_PRELOAD", libm).args([
        "--flexmig",
        "-n2",
        "--gres=gpu:2",
        "/bin/bash",
        "-c",
        "echo \"P=$LD_PRELOAD R=${RANK-unset} C=${NCCL_MAX_NCHANNELS-unset} H=$FLEXMIG_HOSTREDUCE\"",
    ]))
    .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.lines().count() == 2, "{}", text(&o));
    for l in out.lines() {
        assert_eq!(
            l,
            format!("P={hr} {lib} {libm} R=unset C=unset H=auto"),
            "the host-reduce library first, then the patched NCCL, then the user's LD_PRELOAD; torch_env=no sets no RANK; nccl_max_channels=off none"
        );
    }
}

/// 20 steps of one job started at once, each asking for one leaf: all run at the same time and
/// every one gets a different leaf.
#[test]
fn twenty_concurrent_steps_get_disjoint_leaves() {
    let (c, leaves) = start(3);
    let script = "#!/bin/bash\nfor i in $(seq 1 20); do\n  srun --exact -n1 --gres=gpu:1 --flexmig bash -c 'echo \"$NCCL_MIG_ID $CUDA_VISIBLE_DEVICES $FLEXMIG_GPU $SLURM_STEP_GPUS $MASTER_PORT $(date +%s.%N)\"; sleep 3; date +%s.%N' > steps.$i.out 2>&1 &\ndone\nwait\n";
    c.write_file("steps.sh", script).unwrap();
    let workdir = tempfile::Builder::new().prefix("flexmig-steps-").tempdir().unwrap();
    let o = Cluster::output(
        c.command("sbatch")
            .current_dir(workdir.path())
            .args(["--wait", "-n20", "--gres=gpu:20", "-o", "batch.out"])
            .arg(c.dir().join("steps.sh")),
    )
    .unwrap();
    assert!(o.status.success(), "{}\n{}", text(&o), std::fs::read_to_string(workdir.path().join("batch.out")).unwrap_or_default());
    let mut seen = BTreeSet::new();
    let mut ports = BTreeSet::new();
    let mut windows = Vec::new();
    for i in 1..=20 {
        let t = std::fs::read_to_string(workdir.path().join(format!("steps.{i}.out"))).unwrap();
        let mut lines = t.lines();
        let f: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(f.len(), 6, "step {i}: {t}");
        let leaf = leaves.iter().find(|l| l.uuid == f[0]).unwrap_or_else(|| panic!("step {i}: unknown leaf {t}"));
        assert_eq!(f[1], f[0]);
        assert_eq!(f[2], leaf.gpu.to_string());
        assert_eq!(f[3], leaf.gres_index.to_string(), "step {i} got the leaf of its own GRES index");
        assert!(seen.insert(f[0].to_string()), "leaf {} bound by two steps", f[0]);
        ports.insert(f[4].to_string());
        let end: f64 = lines.next().unwrap().trim().parse().unwrap();
        windows.push((f[5].parse::<f64>().unwrap(), end));
    }
    assert_eq!(seen.len(), 20);
    assert_eq!(ports.len(), 20, "every step its own MASTER_PORT");
    // They really ran concurrently: the latest start precedes the earliest end.
    let latest_start = windows.iter().map(|w| w.0).fold(f64::MIN, f64::max);
    let earliest_end = windows.iter().map(|w| w.1).fold(f64::MAX, f64::min);
    assert!(latest_start < earliest_end, "steps did not overlap: {windows:?}");
}

/// Slurm lets a step started with --overlap share the GRES of a running step; flexmig still
/// never binds two tasks to one leaf: the overlapping step fails, the first one is unharmed,
/// and the leaves are free again once the first step ends.
#[test]
fn overlapping_steps_never_share_a_leaf() {
    let (c, _) = start(2);
    let workdir = tempfile::Builder::new().prefix("flexmig-overlap-").tempdir().unwrap();
    let script = "#!/bin/bash\n\
        srun --flexmig -n2 bash -c 'echo A $NCCL_MIG_ID; sleep 4' > a.out 2>&1 &\n\
        sleep 1.5\n\
        srun --overlap --flexmig -n2 bash -c 'echo B $NCCL_MIG_ID' > b.out 2>&1; echo \"b=$?\" > b.rc\n\
        wait\n\
        srun --flexmig -n2 bash -c 'echo C $NCCL_MIG_ID' > c.out 2>&1\n";
    c.write_file("overlap.sh", script).unwrap();
    let o = Cluster::output(
        c.command("sbatch")
            .current_dir(workdir.path())
            .args(["--wait", "-n2", "--gres=gpu:1g.5gb:2", "-o", "batch.out"])
            .arg(c.dir().join("overlap.sh")),
    )
    .unwrap();
    let read = |f: &str| std::fs::read_to_string(workdir.path().join(f)).unwrap_or_default();
    assert!(o.status.success(), "{}\n{}", text(&o), read("batch.out"));
    let (a, b, cc) = (read("a.out"), read("b.out"), read("c.out"));
    assert_eq!(a.lines().filter(|l| l.starts_with("A MIG-")).count(), 2, "{a}");
    assert!(!b.contains("B MIG-"), "the overlapping step ran on bound leaves:\n{b}");
    assert!(b.contains("already bound to another running flexmig task"), "{b}");
    assert_ne!(read("b.rc").trim(), "b=0");
    assert_eq!(cc.lines().filter(|l| l.starts_with("C MIG-")).count(), 2, "leaves are free after the step ended:\n{cc}");
}

#[test]
fn plugin_exports_what_the_loader_needs_and_no_init_or_fini() {
    let so = flexmig_integration::plugin_so().unwrap();
    let o = std::process::Command::new("nm").args(["-D", "--defined-only"]).arg(&so).output().unwrap();
    let syms: BTreeSet<String> =
        String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.split_whitespace().nth(2).map(str::to_string)).collect();
    for s in [
        "plugin_name",
        "plugin_type",
        "plugin_version",
        "spank_plugin_version",
        "slurm_spank_init",
        "slurm_spank_task_init",
        "slurm_spank_task_init_privileged",
    ] {
        assert!(syms.contains(s), "{s} not exported");
    }
    for s in ["init", "fini"] {
        assert!(!syms.contains(s), "{s} must not be exported: Slurm's loader would call it");
    }
}

#[test]
fn sbatch_refuses_an_unknown_mode_before_submitting() {
    let (c, _) = start(1);
    let o = Cluster::output(c.command("sbatch").args(["--flexmig=ranks", "-n1", "--gres=gpu:1", "--wrap", "true"])).unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown mode --flexmig=ranks"), "{}", text(&o));
    let q = Cluster::output(c.command("squeue").args(["-h", "-o", "%i"])).unwrap();
    let jobs = Cluster::output(c.command("scontrol").args(["show", "jobs"])).unwrap();
    assert!(
        String::from_utf8_lossy(&q.stdout).trim().is_empty() && String::from_utf8_lossy(&jobs.stdout).contains("No jobs"),
        "a job was submitted: {}",
        text(&jobs)
    );
}

/// Two nodes (two slurmd on loopback, per-node inventories named with %n): global ranks, node
/// -local leaves and ranks, one rendezvous on the first node.
#[test]
fn two_nodes_get_global_ranks_and_node_local_leaves() {
    let (cfg, leaves) = ClusterConfig::emulated_nodes(2, 2);
    let c = Cluster::start(&cfg).unwrap();
    let o = srun(
        &c,
        &[
            "--flexmig",
            "-N2",
            "-n6",
            "--ntasks-per-node=3",
            "--gres=gpu:1g.5gb:3",
            "bash",
            "-c",
            &format!("echo \"$SLURM_PROCID NODE=$SLURMD_NODENAME\"; {}", print_vars()),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let tasks = parse_tasks(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(tasks.len(), 6, "{tasks:#?}");
    let port = &tasks[&0]["MASTER_PORT"];
    let mut per_node: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new(); // node -> (local rank, gpu)
    let mut seen = BTreeSet::new();
    for (rank, t) in &tasks {
        let node = &t["NODE"];
        let idx: usize = node.trim_start_matches('n').parse::<usize>().unwrap() - 1;
        let leaf = leaves[idx]
            .iter()
            .find(|l| l.uuid == t["NCCL_MIG_ID"])
            .unwrap_or_else(|| panic!("task {rank} on {node}: {} is not a leaf of {node}", t["NCCL_MIG_ID"]));
        assert!(seen.insert(leaf.uuid.clone()));
        assert_eq!(t["CUDA_VISIBLE_DEVICES"], leaf.uuid);
        assert_eq!(t["FLEXMIG_GPU"], leaf.gpu.to_string());
        assert_eq!(t["RANK"], rank.to_string());
        assert_eq!(t["WORLD_SIZE"], "6");
        assert_eq!(t["LOCAL_WORLD_SIZE"], "3");
        assert_eq!(t["LOCAL_RANK"], t["SLURM_LOCALID"]);
        assert_eq!(t["MASTER_ADDR"], "n1", "the rendezvous is the step's first node");
        assert!(!t.contains_key("NCCL_MAX_NCHANNELS"), "a step over several nodes keeps NCCL's channel count for the network");
        assert_eq!(&t["MASTER_PORT"], port);
        per_node.entry(node.clone()).or_default().push((t["LOCAL_RANK"].parse().unwrap(), leaf.gpu));
    }
    assert_eq!(per_node.len(), 2);
    for (node, mut v) in per_node {
        v.sort();
        let gpus: Vec<u32> = v.iter().map(|x| x.1).collect();
        assert_eq!(gpus, [0, 1, 0], "{node}: local ranks alternate GPUs");
    }
}

#[test]
fn emulated_leaves_on_gpus_without_mig_share_their_gpu_under_mps() {
    let gpus: Vec<RealGpu> = (0..2)
        .map(|g| RealGpu {
            uuid: format!("GPU-0000000{g}-aaaa-4bbb-8ccc-dddddddddddd"),
            model: "NVIDIA H200".into(),
            bus_id: format!("00000000:0{g}:00.0"),
        })
        .collect();
    let (cfg, leaves) = ClusterConfig::emulated_gpus(&gpus, 4, "1g.18gb", 25);
    let c = Cluster::start(&cfg).unwrap();
    let o = srun(
        &c,
        &[
            "--flexmig",
            "-n4",
            "--gres=gpu:1g.18gb:4",
            "bash",
            "-c",
            &format!("{}; echo \"$SLURM_PROCID MPS=$CUDA_MPS_ACTIVE_THREAD_PERCENTAGE\"", print_vars()),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let tasks = parse_tasks(&out);
    assert_eq!(tasks.len(), 4);
    let mut seen = BTreeSet::new();
    for (rank, t) in &tasks {
        let leaf = leaves.iter().find(|l| l.uuid == t["NCCL_MIG_ID"]).unwrap_or_else(|| panic!("task {rank}: {t:?}"));
        assert!(seen.insert(leaf.uuid.clone()));
        assert_eq!(t["CUDA_VISIBLE_DEVICES"], gpus[leaf.gpu as usize].uuid, "task {rank}: the leaf's GPU, not a MIG id");
        assert_eq!(t["FLEXMIG_GPU"], leaf.gpu.to_string());
        assert!(out.contains(&format!("{rank} MPS=25")), "task {rank} gets its share of the GPU:\n{out}");
    }
    let gpus_used: BTreeSet<&str> = tasks.values().map(|t| t["FLEXMIG_GPU"].as_str()).collect();
    assert_eq!(gpus_used.len(), 2, "ranks spread over both GPUs");
    let log = std::fs::read_to_string(c.dir().join("log/slurmd.localhost.log")).unwrap();
    assert!(log.contains("is emulated: a 25% share of its GPU under CUDA MPS"), "the log says the leaves are emulated");
}
