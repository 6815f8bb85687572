//! `flexmig-gres-helper status` and the plugin's holder records and dcgm-exporter job maps, on a
//! real Slurm: who holds each leaf while jobs run, as an unprivileged user; disagreements shown
//! and exit 1; records and maps gone when the tasks end, also when they are killed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flexmig_integration::helper_node::helper_bin;
use flexmig_integration::{ensure_test_user, Cluster, ClusterConfig, TEST_USER};
use serde_json::Value;

fn records(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| std::fs::read_to_string(e.path()).unwrap_or_default()).filter(|t| !t.is_empty()).collect())
        .unwrap_or_default()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < Duration::from_secs(20), "{what} did not happen within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `status --json` run as the unprivileged test user: (exit code, JSON).
fn status(c: &Cluster) -> (i32, Value, String) {
    status_with(c, &[])
}

fn status_with(c: &Cluster, extra: &[&str]) -> (i32, Value, String) {
    ensure_test_user().unwrap();
    let d = c.dir().display().to_string();
    let o = c
        .command("runuser")
        .args(["-u", TEST_USER, "--"])
        .arg(helper_bin().unwrap())
        .args([
            "status",
            "--json",
            "--node-name",
            "localhost",
            "--inventory",
            &format!("{d}/flexmig.toml"),
            "--holders-dir",
            &format!("{d}/holders"),
        ])
        .args(extra)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{}", String::from_utf8_lossy(&o.stderr)));
    (o.status.code().unwrap_or(-1), v, out)
}

fn sleeper(c: &Cluster, args: &[&str]) -> Child {
    c.command("srun").args(args).args(["sleep", "30"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

#[test]
fn status_shows_who_holds_each_leaf_and_dcgm_maps_follow_the_tasks() {
    let (mut cfg, _) = ClusterConfig::emulated(2);
    cfg.plugstack =
        "required @PLUGIN@ inventory=@DIR@/flexmig.toml lock_dir=@DIR@/locks holders_dir=@DIR@/holders dcgm_job_map=@DIR@/dcgm\n".into();
    let c = Cluster::start(&cfg).unwrap();
    let holders = c.dir().join("holders");
    let mut bound = sleeper(&c, &["--flexmig", "-n2", "--gres=gpu:1g.5gb:2"]);
    let mut plain = sleeper(&c, &["-n1", "--gres=gpu:1g.5gb:1"]);
    wait_for("two holder records", || records(&holders).len() == 2);
    let meta = std::fs::metadata(&holders).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o755, "everyone may read the records");
    wait_for("the plain job running", || {
        let o = c.command("squeue").args(["-h", "-t", "R", "-o", "%i"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).lines().count() == 2
    });

    let (code, v, out) = status(&c);
    assert_eq!(code, 0, "{out}");
    let leaves: Vec<&Value> = v["gpus"].as_array().unwrap().iter().flat_map(|g| g["leaves"].as_array().unwrap()).collect();
    assert_eq!(leaves.len(), 14);
    let held: Vec<&&Value> = leaves.iter().filter(|l| !l["bound"].is_null()).collect();
    assert_eq!(held.len(), 2, "{out}");
    let job = held[0]["bound"]["job"].as_u64().unwrap();
    for l in &held {
        assert_eq!(l["slurm"]["job"].as_u64(), Some(job), "Slurm gave the bound leaves to the same job: {out}");
        assert_eq!(l["bound"]["alive"], true);
    }
    let ranks: Vec<u64> = held.iter().map(|l| l["bound"]["rank"].as_u64().unwrap()).collect();
    assert_eq!(ranks.iter().collect::<std::collections::BTreeSet<_>>().len(), 2, "two ranks: {ranks:?}");
    let unbound: Vec<&&Value> = leaves.iter().filter(|l| !l["slurm"].is_null() && l["bound"].is_null()).collect();
    assert_eq!(unbound.len(), 1, "the job without --flexmig holds a leaf Slurm gave it, bound by no flexmig task: {out}");
    assert_eq!(leaves.iter().filter(|l| l["slurm"].is_null() && l["bound"].is_null()).count(), 11);
    assert_eq!(v["gpus"][0]["index"], 0);

    // What the node alone knows: the bound leaves, no Slurm view.
    let (code, v, out) = status_with(&c, &["--no-slurm"]);
    assert_eq!((code, v["slurm"].as_bool()), (0, Some(false)), "{out}");
    let alone: Vec<Value> = v["gpus"].as_array().unwrap().iter().flat_map(|g| g["leaves"].as_array().unwrap().clone()).collect();
    assert_eq!(alone.iter().filter(|l| !l["bound"].is_null()).count(), 2);
    assert!(alone.iter().all(|l| l["slurm"].is_null()));

    // dcgm-exporter's files: <gpu>.<gpu instance> holding the job id, for the bound leaves.
    let inv = leaf_model::Inventory::load(&c.dir().join("flexmig.toml")).unwrap();
    for l in &held {
        let leaf = inv.leaves.iter().find(|x| x.uuid == l["uuid"].as_str().unwrap()).unwrap();
        let f = c.dir().join("dcgm").join(leaf_model::holders::dcgm_file_name(leaf.gpu, leaf.gpu_instance.unwrap()));
        assert_eq!(std::fs::read_to_string(&f).unwrap(), format!("{job}\n"), "{}", f.display());
    }

    // A record whose process is gone (a task killed with its slurmstepd, say) is a disagreement.
    let planted = leaf_model::holders::Holder {
        version: leaf_model::holders::VERSION,
        job: 999,
        step: 0,
        task: 7,
        rank: 7,
        uid: 0,
        pid: u32::MAX - 2,
        pid_start: 1,
        leaves: vec![inv.leaves[13].uuid.clone()],
    };
    std::fs::write(holders.join("999.0.7.toml"), planted.to_toml_string()).unwrap();
    let (code, v, out) = status(&c);
    assert_eq!(code, 1, "{out}");
    assert!(v["disagreements"].as_array().unwrap().iter().any(|d| d.as_str().unwrap().contains("outlived its process")), "{out}");
    std::fs::remove_file(holders.join("999.0.7.toml")).unwrap();

    // The tasks are killed: the records go, the maps no longer name the job.
    let _ = c.command("scancel").arg(job.to_string()).status();
    let _ = bound.wait();
    wait_for("the records removed", || records(&holders).is_empty());
    for e in std::fs::read_dir(c.dir().join("dcgm")).unwrap().flatten() {
        assert_eq!(std::fs::read_to_string(e.path()).unwrap(), "", "{} still names a job", e.path().display());
    }
    let _ = plain.kill();
    let _ = Command::new("true").status();
}
