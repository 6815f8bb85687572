//! The plugin as a hostile user and a careless admin meet it, on a real Slurm: root never uses
//! a path a user could have shaped, no user can hold a leaf without a job, a configuration error
//! fails only `--flexmig` steps (never slurmd, never other work, never the node), and every task
//! sees exactly its own step's view.

use std::collections::BTreeSet;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;

use flexmig_integration::task_env::{check_rank_step, parse_tasks, print_vars, srun, start, text};
use flexmig_integration::{ensure_test_user, Cluster, ClusterConfig, EmulatedLeaf, TEST_USER};

fn test_uid() -> u32 {
    ensure_test_user().unwrap();
    let o = std::process::Command::new("id").args(["-u", TEST_USER]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), None).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs srun with `args` then `touch <marker>`, expects it to fail before the task ran, and
/// returns its stderr.
fn refused(c: &Cluster, cmd: &mut std::process::Command, args: &[&str]) -> String {
    let marker = c.dir().join("task-ran");
    let _ = std::fs::remove_file(&marker);
    let o = Cluster::output(cmd.args(args).arg("touch").arg(&marker)).unwrap();
    assert!(!o.status.success(), "{args:?} should fail:\n{}", text(&o));
    assert!(!marker.exists(), "{args:?}: the task ran although flexmig refused it:\n{}", text(&o));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The first small (1g.5gb) leaf: what `--gres=gpu:1g.5gb:1` gets on an idle node.
fn first_small(leaves: &[EmulatedLeaf]) -> &EmulatedLeaf {
    leaves.iter().filter(|l| l.profile == "1g.5gb").min_by_key(|l| l.gres_index).unwrap()
}

fn node_state(c: &Cluster) -> String {
    let o = Cluster::output(c.command("sinfo").args(["-h", "-N", "-o", "%T"])).unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn sbatch(c: &Cluster, conf: Option<&Path>, args: &[&str], script: &str) -> (Output, String) {
    let name = format!("job-{}.sh", args.join("").replace(['-', '=', ':', '/'], ""));
    c.write_file(&name, &format!("#!/bin/bash\n{script}\n")).unwrap();
    let out = c.dir().join(format!("{name}.out"));
    let mut cmd = c.command("sbatch");
    if let Some(conf) = conf {
        cmd.env("SLURM_CONF", conf);
    }
    let o = Cluster::output(cmd.arg("--wait").args(args).arg("-o").arg(&out).arg(c.dir().join(&name))).unwrap();
    (o, std::fs::read_to_string(&out).unwrap_or_default())
}

#[test]
fn root_takes_the_node_name_from_slurmd_not_from_the_job_environment() {
    let (mut cfg, leaves) = ClusterConfig::emulated(1);
    let inventory = cfg.inventory.take().unwrap();
    cfg.plugstack = "required @PLUGIN@ inventory=@DIR@/inv/%n.toml lock_dir=@DIR@/locks/%n holders_dir=@DIR@/holders/%n\n".into();
    let c = Cluster::start(&cfg).unwrap();
    std::fs::create_dir(c.dir().join("inv")).unwrap();
    std::fs::write(c.dir().join("inv/localhost.toml"), &inventory).unwrap();
    std::fs::create_dir(c.dir().join("locks")).unwrap();
    let secret = c.dir().join("secret");
    std::fs::create_dir(&secret).unwrap();
    chmod(&secret, 0o700);

    // The user's own inventory, and a link of theirs to a directory only root may write.
    let uid = test_uid();
    let attack = tempfile::Builder::new().prefix("flexmig-attack-").tempdir().unwrap();
    chmod(attack.path(), 0o755);
    chown(attack.path(), uid);
    std::fs::create_dir(attack.path().join("x")).unwrap();
    chown(&attack.path().join("x"), uid);
    std::fs::write(attack.path().join("x/d.toml"), inventory.replace("MIG-e", "MIG-f")).unwrap();
    chown(&attack.path().join("x/d.toml"), uid);
    symlink(&secret, attack.path().join("x/d")).unwrap();
    chown(&attack.path().join("x/d"), uid);
    // @DIR@/inv/../../.. is /.
    let name = format!("../../..{}/x/d", attack.path().display());

    let mut cmd = c.command_as_user("srun").unwrap();
    cmd.env("SLURMD_NODENAME", &name).args(["--flexmig", "-n2", "--gres=gpu:1g.5gb:2", "bash", "-c", &print_vars()]);
    let o = Cluster::output(&mut cmd).unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let tasks = parse_tasks(&String::from_utf8_lossy(&o.stdout));
    let used = check_rank_step(&tasks, &leaves, 2);
    assert_eq!(used.len(), 2, "bound from the node's own inventory, not the user's");
    assert_eq!(std::fs::read_dir(&secret).unwrap().count(), 0, "root created files through the user's link");
    for u in &used {
        assert!(c.dir().join(format!("locks/localhost/{u}.lock")).exists(), "{u}: lock not in the node's lock directory");
    }
}

#[test]
fn no_user_can_open_a_leaf_lock_so_none_can_hold_a_leaf_without_a_job() {
    let (c, leaves) = start(1);
    let o = srun(&c, &["--flexmig", "-n1", "--gres=gpu:1g.5gb:1", "true"]);
    assert!(o.status.success(), "{}", text(&o));
    let locks = c.dir().join("locks");
    let lock = locks.join(format!("{}.lock", first_small(&leaves).uuid));
    let (dir, file) = (std::fs::metadata(&locks).unwrap(), std::fs::metadata(&lock).unwrap());
    assert_eq!((dir.uid(), dir.mode() & 0o777), (0, 0o700), "lock directory");
    assert_eq!((file.uid(), file.mode() & 0o777), (0, 0o600), "lock file");
    ensure_test_user().unwrap();
    let hold = format!("exec 9<'{}' && flock -n 9 && echo held", lock.display());
    let o = Cluster::output(c.command("runuser").args(["-u", TEST_USER, "--", "bash", "-c", &hold])).unwrap();
    assert!(!String::from_utf8_lossy(&o.stdout).contains("held"), "a user holds a leaf without a job: {}", text(&o));
    // The leaf is still there for the next step.
    let o = Cluster::output(c.command_as_user("srun").unwrap().args(["--flexmig", "-n1", "--gres=gpu:1g.5gb:1", "true"])).unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_lock_dir_or_lock_file_root_does_not_own_alone_is_refused() {
    let (mut cfg, leaves) = ClusterConfig::emulated(1);
    cfg.plugstack = "required @PLUGIN@ inventory=@DIR@/flexmig.toml lock_dir=@DIR@/shared/locks holders_dir=@DIR@/holders\n".into();
    let c = Cluster::start(&cfg).unwrap();
    // An admin put the lock directory under a world-writable directory, and a user made it first.
    let shared = c.dir().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    let uid = test_uid();
    let locks = shared.join("locks");
    std::fs::create_dir(&locks).unwrap();
    chown(&locks, uid);
    let e = refused(&c, &mut c.command("srun"), &["--flexmig", "-n1", "--gres=gpu:1g.5gb:1"]);
    assert!(e.contains("owned by uid") && e.contains("lock_dir="), "{e}");
    let o = srun(&c, &["-n1", "--gres=gpu:1g.5gb:1", "true"]);
    assert!(o.status.success(), "steps without --flexmig are not affected: {}", text(&o));

    // Root's directory, but with a link planted where a lock file goes: never followed.
    std::fs::remove_dir(&locks).unwrap();
    std::fs::create_dir(&locks).unwrap();
    chmod(&locks, 0o700);
    let planted = c.dir().join("planted");
    let small = first_small(&leaves);
    symlink(&planted, locks.join(format!("{}.lock", small.uuid))).unwrap();
    let e = refused(&c, &mut c.command("srun"), &["--flexmig", "-n1", "--gres=gpu:1g.5gb:1"]);
    assert!(e.contains(&small.uuid), "{e}");
    assert!(!planted.exists(), "root created the target of a link in the lock directory");
    // A lock directory others may write is refused even when root's.
    std::fs::remove_file(locks.join(format!("{}.lock", small.uuid))).unwrap();
    chmod(&locks, 0o777);
    let e = refused(&c, &mut c.command("srun"), &["--flexmig", "-n1", "--gres=gpu:1g.5gb:1"]);
    assert!(e.contains("writable by others"), "{e}");
}

#[test]
fn locks_are_prepared_only_for_the_leaves_of_the_step() {
    let (c, leaves) = start(2);
    let o = srun(&c, &["--flexmig", "-n1", "--gres=gpu:1g.5gb:1", "true"]);
    assert!(o.status.success(), "{}", text(&o));
    // The lock of the second double leaf cannot be made.
    let last = leaves.iter().filter(|l| l.profile == "1g.10gb").max_by_key(|l| l.gres_index).unwrap();
    symlink("/nonexistent/dir/x", c.dir().join(format!("locks/{}.lock", last.uuid))).unwrap();
    let o = srun(&c, &["--flexmig", "-n2", "--gres=gpu:1g.5gb:2", "bash", "-c", &print_vars()]);
    assert!(o.status.success(), "a 2-leaf step must not depend on the locks of other leaves: {}", text(&o));
    check_rank_step(&parse_tasks(&String::from_utf8_lossy(&o.stdout)), &leaves, 2);
    let (o, log) = sbatch(&c, None, &["--flexmig", "-n2", "--gres=gpu:1g.5gb:2"], "srun true && echo inner-ok");
    assert!(o.status.success() && log.contains("inner-ok"), "{}\n{log}", text(&o));
    // The step that does hold that leaf fails, naming it.
    let e = refused(&c, &mut c.command("srun"), &["--flexmig", "-n1", "--gres=gpu:1g.10gb:2"]);
    assert!(e.contains(&last.uuid), "{e}");
}

#[test]
fn a_bad_plugstack_argument_fails_only_flexmig_steps_and_never_the_node() {
    let (mut cfg, _) = ClusterConfig::emulated(1);
    cfg.plugstack = "required @PLUGIN@ inventory=@DIR@/flexmig.toml lock_dir=@DIR@/locks holders_dir=@DIR@/holders bogus=1\n".into();
    // slurmd starts (Cluster::start waits for the node to be idle).
    let c = Cluster::start(&cfg).unwrap();
    let o = srun(&c, &["-n1", "--gres=gpu:1", "true"]);
    assert!(o.status.success(), "{}", text(&o));
    let (o, log) = sbatch(&c, None, &["-n1"], "echo batch-ok");
    assert!(o.status.success() && log.contains("batch-ok"), "{}\n{log}", text(&o));
    let e = refused(&c, &mut c.command("srun"), &["--flexmig", "-n1", "--gres=gpu:1"]);
    assert!(e.contains("bogus=1") && e.contains("plugstack.conf"), "{e}");
    let slurmd_log = std::fs::read_to_string(c.dir().join("log/slurmd.localhost.log")).unwrap();
    assert_eq!(slurmd_log.matches("steps without --flexmig are not affected").count(), 1, "logged once per slurmd start:\n{slurmd_log}");

    // srun's copy is good, the node's is bad: the task fails with the node's error, and a batch
    // job with --flexmig fails without draining the node. With `optional` too.
    let good = c.dir().join("plugstack-good.conf");
    std::fs::write(
        &good,
        format!(
            "required {} inventory={d}/flexmig.toml lock_dir={d}/locks holders_dir={d}/holders\n",
            c.plugin().display(),
            d = c.dir().display()
        ),
    )
    .unwrap();
    let conf = std::fs::read_to_string(c.conf()).unwrap();
    let client = c.dir().join("slurm-client.conf");
    std::fs::write(
        &client,
        conf.replace(
            &format!("PlugStackConfig={}", c.dir().join("plugstack.conf").display()),
            &format!("PlugStackConfig={}", good.display()),
        ),
    )
    .unwrap();
    for keyword in ["required", "optional"] {
        c.write_file(
            "plugstack.conf",
            &format!("{keyword} {} inventory={d}/flexmig.toml bogus=1\n", c.plugin().display(), d = c.dir().display()),
        )
        .unwrap();
        let mut cmd = c.command("srun");
        cmd.env("SLURM_CONF", &client);
        let e = refused(&c, &mut cmd, &["--flexmig", "-n1", "--gres=gpu:1"]);
        assert!(e.contains("bogus=1"), "{keyword}: {e}");
        let mut cmd = c.command("srun");
        let o = Cluster::output(cmd.env("SLURM_CONF", &client).args(["-n1", "--gres=gpu:1", "true"])).unwrap();
        assert!(o.status.success(), "{keyword}: {}", text(&o));
        let (o, log) = sbatch(&c, Some(&client), &["--flexmig", "-n1", "--gres=gpu:1"], "echo batch-ran");
        assert!(!o.status.success() && !log.contains("batch-ran"), "{keyword}: the batch script ran: {}\n{log}", text(&o));
        assert!(log.contains("bogus=1"), "{keyword}: the job's output lacks the error:\n{log}");
        assert_eq!(node_state(&c), "idle", "{keyword}: the node must not be drained");
        let (o, log) = sbatch(&c, Some(&client), &["-n1"], "echo plain-ok");
        assert!(o.status.success() && log.contains("plain-ok"), "{keyword}: {}\n{log}", text(&o));
    }
}

#[test]
fn inherited_ranks_are_replaced_in_steps_of_several_tasks() {
    let (c, leaves) = start(2);
    let mut cmd = c.command("srun");
    cmd.envs([("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "16"), ("LOCAL_WORLD_SIZE", "16")]);
    let o = Cluster::output(cmd.args(["--flexmig", "-n2", "--gres=gpu:1g.5gb:2", "bash", "-c", &print_vars()])).unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // check_rank_step asserts RANK == SLURM_PROCID, LOCAL_RANK == SLURM_LOCALID and the sizes.
    check_rank_step(&parse_tasks(&String::from_utf8_lossy(&o.stdout)), &leaves, 2);
    // One task: the user's own value stays (documented).
    let mut cmd = c.command("srun");
    let o =
        Cluster::output(cmd.env("RANK", "5").args(["--flexmig", "-n1", "--gres=gpu:1g.5gb:1", "bash", "-c", "echo RANK=$RANK"])).unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("RANK=5"), "{}", text(&o));
}

#[test]
fn inner_steps_see_only_their_own_view() {
    let (c, leaves) = start(2);
    let show =
        "env | grep -E '^(FLEXMIG_|NCCL_MULTI_RANK|NCCL_MIG_ID|NCCL_NVLS|NCCL_MNNVL)' | sed \"s/^/$SLURM_STEP_ID.$SLURM_PROCID /\" || true";
    let script = format!(
        "srun -n2 bash -c '{show}'\nsrun --flexmig=off -n1 --gres=gpu:1g.5gb:1 bash -c '{show}; echo \"$SLURM_STEP_ID.0 off-ran\"'\n",
        show = show.replace('\'', "'\\''")
    );
    let (o, log) = sbatch(&c, None, &["--flexmig", "-n2", "--gres=gpu:1g.5gb:2"], &script);
    assert!(o.status.success(), "{}\n{log}", text(&o));
    let lines: Vec<&str> = log.lines().collect();
    let step0: Vec<&&str> = lines.iter().filter(|l| l.starts_with("0.")).collect();
    assert!(step0.iter().any(|l| l.contains("FLEXMIG_LEAF=")), "the rank step is bound: {log}");
    for l in &step0 {
        assert!(
            !l.contains("FLEXMIG_LEAVES=") && !l.contains("FLEXMIG_GPUS=") && !l.contains("FLEXMIG_PROFILES="),
            "rank step kept the batch view: {l}"
        );
    }
    let uuids: BTreeSet<&str> = step0.iter().filter_map(|l| l.split("FLEXMIG_LEAF=").nth(1)).collect();
    assert_eq!(uuids.len(), 2, "{log}");
    assert!(uuids.iter().all(|u| leaves.iter().any(|l| l.uuid == *u)));
    assert!(lines.iter().any(|l| *l == "1.0 off-ran"), "{log}");
    let step1: Vec<&&str> = lines.iter().filter(|l| l.starts_with("1.") && **l != "1.0 off-ran").collect();
    assert!(step1.is_empty(), "--flexmig=off kept what flexmig set: {step1:?}");
}

#[test]
fn per_task_gpu_binding_binds_each_task_to_the_leaf_slurm_gave_it() {
    let (c, leaves) = start(2);
    let show = print_vars();
    // With task/none, map_gpu names GRES indices: the four a 4-leaf step gets, reversed.
    let mut smalls: Vec<u32> = leaves.iter().filter(|l| l.profile == "1g.5gb").map(|l| l.gres_index).collect();
    smalls.sort();
    let map = format!("--gpu-bind=map_gpu:{},{},{},{}", smalls[3], smalls[2], smalls[1], smalls[0]);
    for binding in [vec!["--gpus-per-task=1"], vec!["--gres=gpu:1g.5gb:4", "--gpu-bind=single:1"], vec!["--gres=gpu:1g.5gb:4", &map]] {
        let mut args = vec!["--flexmig", "-n4"];
        args.extend(&binding);
        args.extend(["bash", "-c", &show]);
        let o = srun(&c, &args);
        assert!(o.status.success(), "{binding:?}: {}", text(&o));
        let tasks = parse_tasks(&String::from_utf8_lossy(&o.stdout));
        assert_eq!(tasks.len(), 4, "{binding:?}: {}", text(&o));
        let mut seen = BTreeSet::new();
        for (rank, t) in &tasks {
            let own: Vec<u32> = t["SLURM_STEP_GPUS"].split(',').map(|s| s.parse().unwrap()).collect();
            assert_eq!(own.len(), 1, "{binding:?}: Slurm narrows each task to its own GPU");
            let leaf = leaves.iter().find(|l| l.uuid == t["NCCL_MIG_ID"]).unwrap();
            assert!(own.contains(&leaf.gres_index), "{binding:?}: task {rank} bound {} outside its own GPUs {own:?}", leaf.gres_index);
            assert!(seen.insert(leaf.uuid.clone()), "{binding:?}: two tasks on one leaf");
        }
    }
    // A map that gives two tasks one GPU: one task binds the leaf, the other is refused. A leaf
    // lock lives as long as its task, so the tasks stay a while: a task that had already ended
    // would have left the leaf free for the other to bind, one after the other.
    let twice = format!("--gpu-bind=map_gpu:{0},{0}", smalls[0]);
    let stay = format!("{show}; sleep 3");
    let o = srun(&c, &["--flexmig", "-n2", "--gres=gpu:1g.5gb:2", &twice, "bash", "-c", &stay]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("already bound"), "{}", text(&o));
    assert!(parse_tasks(&String::from_utf8_lossy(&o.stdout)).len() <= 1, "two tasks ran on one leaf: {}", text(&o));
}

#[test]
fn a_leaf_of_another_type_than_slurm_allocated_is_never_bound() {
    // The admin wrote the types of the node's Gres= in another order than the helper's node line:
    // Slurm numbers the small leaves first, gres.conf and the inventory the double ones.
    let (mut cfg, leaves) = ClusterConfig::emulated(2);
    assert_eq!(cfg.node_gres, "gpu:1g.10gb:2,gpu:1g.5gb:12");
    cfg.node_gres = "gpu:1g.5gb:12,gpu:1g.10gb:2".into();
    let c = Cluster::start(&cfg).unwrap();
    let e = refused(&c, &mut c.command("srun"), &["--flexmig", "-n1", "--gres=gpu:1g.5gb:1"]);
    assert!(e.contains("as a 1g.5gb") && e.contains("flexmig-gres-helper verify"), "{e}");
    assert!(e.contains(&leaves[0].uuid), "names the leaf the inventory has there: {e}");
    let (o, log) = sbatch(&c, None, &["--flexmig", "-n1", "--gres=gpu:1g.5gb:1"], "echo batch-ran");
    assert!(!o.status.success() && !log.contains("batch-ran") && log.contains("as a 1g.5gb"), "{}\n{log}", text(&o));
    assert_eq!(node_state(&c), "idle");
    // Steps without --flexmig are Slurm's business.
    let o = srun(&c, &["-n1", "--gres=gpu:1g.5gb:1", "true"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_task_killed_with_sigkill_leaves_no_stale_lock() {
    let (c, _) = start(1);
    let workdir = tempfile::Builder::new().prefix("flexmig-kill-").tempdir().unwrap();
    let script = "#!/bin/bash\n\
        srun --flexmig -n1 --gres=gpu:1g.5gb:1 bash -c 'echo $$ > pid; echo A $NCCL_MIG_ID; exec sleep 100' > a.out 2>&1 &\n\
        for i in $(seq 50); do [ -s pid ] && break; sleep 0.1; done\n\
        kill -9 $(cat pid)\n\
        wait\n\
        srun --flexmig -n1 --gres=gpu:1g.5gb:1 bash -c 'echo B $NCCL_MIG_ID' > b.out 2>&1\n";
    c.write_file("kill.sh", script).unwrap();
    let o = Cluster::output(
        c.command("sbatch")
            .current_dir(workdir.path())
            .args(["--wait", "-n1", "--gres=gpu:1g.5gb:1", "-o", "batch.out"])
            .arg(c.dir().join("kill.sh")),
    )
    .unwrap();
    let read = |f: &str| std::fs::read_to_string(workdir.path().join(f)).unwrap_or_default();
    assert!(o.status.success(), "{}\n{}", text(&o), read("batch.out"));
    let (a, b) = (read("a.out"), read("b.out"));
    let leaf_a = a.lines().find_map(|l| l.strip_prefix("A ")).unwrap_or_else(|| panic!("{a}"));
    assert_eq!(b.lines().find_map(|l| l.strip_prefix("B ")), Some(leaf_a), "the killed task's leaf is free again:\n{a}\n{b}");
}

#[test]
fn the_interactive_step_binds_only_the_jobs_own_leaves_whatever_the_user_exports() {
    let (c, leaves) = start(2);
    ensure_test_user().unwrap();
    let o = Cluster::output(c.command_as_user("sbatch").unwrap().args([
        "--parsable",
        "--gres=gpu:1g.5gb:1",
        "-n1",
        "-o",
        "/dev/null",
        "--wrap",
        "sleep 30",
    ]))
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let job = String::from_utf8_lossy(&o.stdout).trim().to_string();
    wait_running(&c, &job);
    // The interactive step gets only SLURM_JOB_GPUS from slurmstepd: a SLURM_STEP_GPUS naming every
    // leaf of the node is the user's own.
    let mut cmd = c.command_as_user("srun").unwrap();
    cmd.env("SLURM_STEP_GPUS", "0-13").args([
        &format!("--jobid={job}"),
        "--overlap",
        "--interactive",
        "--flexmig=node",
        "-n1",
        "bash",
        "-c",
        "echo LEAVES=$FLEXMIG_LEAVES",
    ]);
    let o = Cluster::output(&mut cmd).unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    if let Some(l) = out.lines().find_map(|l| l.strip_prefix("LEAVES=")) {
        assert_eq!(l.split(',').count(), 1, "the interactive step got more than the job's one leaf: {}", text(&o));
        assert!(leaves.iter().any(|x| x.uuid == l && x.profile == "1g.5gb"));
    }
    // Whatever it did, every other leaf is still free for other users' jobs.
    let o = srun(&c, &["--flexmig", "-n2", "--gres=gpu:1g.10gb:2", "true"]);
    assert!(o.status.success(), "another job's leaves were taken: {}", text(&o));
    let _ = c.command("scancel").arg(&job).status();
}

#[test]
fn a_lock_a_user_keeps_past_the_step_blocks_no_later_step() {
    let (c, _) = start(1);
    ensure_test_user().unwrap();
    // The task leaves a process behind that keeps whatever descriptors it inherited.
    let o = Cluster::output(c.command_as_user("srun").unwrap().args([
        "--flexmig",
        "-n1",
        "--gres=gpu:1g.5gb:1",
        "bash",
        "-c",
        "setsid sleep 30 </dev/null >/dev/null 2>&1 & disown",
    ]))
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = srun(&c, &["--flexmig", "-n1", "--gres=gpu:1g.5gb:1", "true"]);
    assert!(o.status.success(), "a process left by an ended step still blocks its leaf: {}", text(&o));
    let _ = std::process::Command::new("pkill").args(["-u", TEST_USER, "sleep"]).status();
}

fn wait_running(c: &Cluster, job: &str) {
    let t0 = std::time::Instant::now();
    loop {
        let o = Cluster::output(c.command("squeue").args(["-h", "-j", job, "-o", "%T"])).unwrap();
        if String::from_utf8_lossy(&o.stdout).trim() == "RUNNING" {
            return;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(20), "job {job} did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
