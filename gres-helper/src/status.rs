//! `status`: which leaves of the node are free, which job Slurm gave each of the others, and
//! which flexmig task holds it. Pure logic over the inventory, slurmctld's view and the
//! plugin's holder records; `cmd::status` gathers them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use leaf_model::holders::Holder;
use leaf_model::Inventory;
use serde::Serialize;

/// A job Slurm runs on the node, with the GRES indices it got here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmJob {
    pub job: u32,
    pub user: String,
    pub indices: Vec<u32>,
}

/// A holder record as found, with whether its process still lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub file: String,
    pub holder: Holder,
    pub alive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlurmView {
    pub job: u32,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BoundView {
    pub job: u32,
    pub step: u32,
    pub rank: u32,
    pub pid: u32,
    pub uid: u32,
    pub alive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeafView {
    pub gres_index: u32,
    pub profile: String,
    pub uuid: String,
    pub slurm: Option<SlurmView>,
    pub bound: Option<BoundView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuView {
    pub index: u32,
    pub model: String,
    pub bus_id: String,
    pub leaves: Vec<LeafView>,
}

/// The node as `status` shows it. `slurm` is false with `--no-slurm`: then no leaf has a Slurm
/// view and nothing is compared with Slurm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub node: String,
    pub slurm: bool,
    pub gpus: Vec<GpuView>,
    pub disagreements: Vec<String>,
}

/// Puts the three views together and lists where they disagree.
/// `slurm_gpus`: how many gpu GRES Slurm knows on the node (its `Gres=`), when known.
pub fn build(
    node: &str,
    inv: &Inventory,
    slurm: Option<&[SlurmJob]>,
    slurm_gpus: Option<u64>,
    records: &[Record],
    unreadable: &[String],
) -> NodeView {
    let mut disagreements: Vec<String> = unreadable.to_vec();
    if let Some(n) = slurm_gpus {
        for l in inv.leaves.iter().filter(|l| u64::from(l.gres_index) >= n) {
            disagreements.push(format!(
                "inventory leaf {} has GRES index {}, but Slurm knows only {n} gpu GRES on {node} (run `flexmig-gres-helper verify`)",
                l.uuid, l.gres_index
            ));
        }
    }
    let mut by_index: BTreeMap<u32, SlurmView> = BTreeMap::new();
    for j in slurm.unwrap_or_default() {
        for &i in &j.indices {
            if inv.leaf_by_gres_index(i).is_none() {
                disagreements.push(format!(
                    "Slurm gave GRES index {i} to job {}, but the inventory has no leaf there (run `flexmig-gres-helper verify`)",
                    j.job
                ));
            }
            by_index.insert(i, SlurmView { job: j.job, user: j.user.clone() });
        }
    }
    let mut by_uuid: BTreeMap<&str, BoundView> = BTreeMap::new();
    for r in records {
        let h = &r.holder;
        let view = BoundView { job: h.job, step: h.step, rank: h.rank, pid: h.pid, uid: h.uid, alive: r.alive };
        for uuid in &h.leaves {
            if !inv.leaves.iter().any(|l| &l.uuid == uuid) {
                disagreements.push(format!("{} names leaf {uuid}, which is not in the inventory", r.file));
            }
            if !r.alive {
                disagreements.push(format!(
                    "leaf {uuid}: the record of job {} step {} rank {} (pid {}) outlived its process ({})",
                    h.job, h.step, h.rank, h.pid, r.file
                ));
            }
            if let Some(prev) = by_uuid.insert(uuid.as_str(), view.clone()) {
                disagreements.push(format!("leaf {uuid} is recorded as held by job {} and by job {}", prev.job, h.job));
            }
        }
    }
    let mut gpus = Vec::new();
    for g in &inv.gpus {
        let mut leaves: Vec<LeafView> = inv
            .leaves
            .iter()
            .filter(|l| l.gpu == g.index)
            .map(|l| LeafView {
                gres_index: l.gres_index,
                profile: l.profile.clone(),
                uuid: l.uuid.clone(),
                slurm: by_index.get(&l.gres_index).cloned(),
                bound: by_uuid.get(l.uuid.as_str()).cloned(),
            })
            .collect();
        leaves.sort_by_key(|l| l.gres_index);
        if slurm.is_some() {
            for l in &leaves {
                match (&l.slurm, &l.bound) {
                    (Some(s), Some(b)) if s.job != b.job => disagreements.push(format!(
                        "leaf {} (GRES index {}): Slurm gives it to job {}, but a flexmig task of job {} is bound to it",
                        l.uuid, l.gres_index, s.job, b.job
                    )),
                    (None, Some(b)) if b.alive => disagreements.push(format!(
                        "leaf {} (GRES index {}): a flexmig task of job {} is bound to it, but Slurm gave it to no job",
                        l.uuid, l.gres_index, b.job
                    )),
                    _ => {}
                }
            }
        }
        gpus.push(GpuView { index: g.index, model: g.model.clone(), bus_id: g.bus_id.clone(), leaves });
    }
    NodeView { node: node.to_string(), slurm: slurm.is_some(), gpus, disagreements }
}

/// The table: one line per GPU, a cell per leaf, then the disagreements.
pub fn table(v: &NodeView) -> String {
    let mut s = String::new();
    let (mut busy, mut all) = (0, 0);
    for g in &v.gpus {
        let cells: Vec<String> = g
            .leaves
            .iter()
            .map(|l| {
                all += 1;
                let who = match (&l.slurm, &l.bound) {
                    (_, Some(b)) => format!("job {} r{}{}", b.job, b.rank, if b.alive { "" } else { " (gone)" }),
                    (Some(s), None) => format!("job {} ({}, unbound)", s.job, s.user),
                    (None, None) => "free".into(),
                };
                if who != "free" {
                    busy += 1;
                }
                format!("[{} {who}]", l.profile)
            })
            .collect();
        let _ = writeln!(s, "GPU {} ({}, {}): {}", g.index, g.model, g.bus_id, cells.join(" "));
    }
    let _ = writeln!(s, "{busy} of {all} leaves busy on {}{}", v.node, if v.slurm { "" } else { " (without Slurm's view)" });
    for d in &v.disagreements {
        let _ = writeln!(s, "DISAGREE: {d}");
    }
    s
}

/// The number of gpu GRES in `scontrol show node <node>`'s `Gres=` field.
pub fn parse_scontrol_node_gpus(text: &str) -> Option<u64> {
    let gres = text.split_whitespace().find_map(|w| w.strip_prefix("Gres="))?;
    let counts: Vec<u64> = gres
        .split(',')
        .filter(|item| item.starts_with("gpu"))
        .filter_map(|item| item.split('(').next()?.rsplit(':').next()?.parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// Reads `scontrol show job -d` for the running jobs and their GRES indices on `node`.
pub fn parse_scontrol_jobs(text: &str, node: &str) -> Vec<SlurmJob> {
    leaf_model::gres_detail::scontrol_jobs(text)
        .into_iter()
        .filter(|j| j.state == "RUNNING")
        .filter_map(|j| {
            let indices: Vec<u32> = leaf_model::gres_detail::parse(j.detail_on(node)?)
                .into_iter()
                .filter(|e| e.name == "gpu")
                .flat_map(|e| e.indices)
                .collect();
            (!indices.is_empty()).then(|| SlurmJob { job: j.job, user: j.user.clone(), indices })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use leaf_model::holders::VERSION;
    use leaf_model::{Gpu, Leaf};

    fn inv() -> Inventory {
        let mut inv = Inventory::new();
        for g in 0..2 {
            inv.gpus.push(Gpu { index: g, uuid: format!("GPU-{g}"), bus_id: format!("0000:0{g}:00.0"), model: "A100".into() });
        }
        for i in 0..4u32 {
            inv.leaves.push(Leaf {
                gres_index: i,
                gpu: i % 2,
                profile: "1g.5gb".into(),
                uuid: format!("MIG-{i}"),
                cuda_device: None,
                gpu_instance: Some(i + 1),
            });
        }
        inv
    }

    fn record(job: u32, leaves: &[&str], alive: bool) -> Record {
        Record {
            file: format!("{job}.0.0.toml"),
            holder: Holder {
                version: VERSION,
                job,
                step: 0,
                task: 0,
                rank: 0,
                uid: 1000,
                pid: 77,
                pid_start: 5,
                leaves: leaves.iter().map(|s| s.to_string()).collect(),
            },
            alive,
        }
    }

    #[test]
    fn reads_the_nodes_gres_count() {
        let text = "NodeName=n1 Arch=x86_64 CoresPerSocket=1\n   Gres=gpu:1g.10gb:2,gpu:1g.5gb:12,mig:0\n   NodeAddr=n1";
        assert_eq!(parse_scontrol_node_gpus(text), Some(14));
        assert_eq!(parse_scontrol_node_gpus("NodeName=n1 Gres=(null)"), None);
    }

    #[test]
    fn reads_scontrols_job_detail() {
        let text = "JobId=12 JobName=x\n   UserId=alice(1001) GroupId=alice(1001)\n   JobState=RUNNING Reason=None\n   \
                    JOB_GRES=gpu:1g.5gb:2\n     Nodes=n[1-2] CPU_IDs=0-1 Mem=0 GRES=gpu:1g.5gb:2(IDX:2-3)\n\n\
                    JobId=13 JobName=y\n   UserId=bob(1002)\n   JobState=PENDING\n\n\
                    JobId=14\n   UserId=carol(1003)\n   JobState=RUNNING\n     Nodes=n3 CPU_IDs=0 Mem=0 GRES=gpu:1(IDX:0)\n";
        assert_eq!(parse_scontrol_jobs(text, "n2"), [SlurmJob { job: 12, user: "alice".into(), indices: vec![2, 3] }]);
        assert_eq!(parse_scontrol_jobs(text, "n3")[0].indices, [0]);
        assert!(parse_scontrol_jobs(text, "n9").is_empty());
    }

    #[test]
    fn agreeing_views_show_jobs_ranks_and_free_leaves() {
        let slurm = [SlurmJob { job: 12, user: "alice".into(), indices: vec![0, 1] }];
        let v = build("n1", &inv(), Some(&slurm), Some(4), &[record(12, &["MIG-0"], true)], &[]);
        assert!(v.disagreements.is_empty(), "{:?}", v.disagreements);
        let t = table(&v);
        assert!(t.contains("GPU 0 (A100, 0000:00:00.0): [1g.5gb job 12 r0] [1g.5gb free]"), "{t}");
        assert!(t.contains("GPU 1 (A100, 0000:01:00.0): [1g.5gb job 12 (alice, unbound)] [1g.5gb free]"), "{t}");
        assert!(t.contains("2 of 4 leaves busy on n1"), "{t}");
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j["gpus"][0]["leaves"][0]["bound"]["job"], 12);
        assert_eq!(j["gpus"][0]["leaves"][1]["slurm"], serde_json::Value::Null);
    }

    #[test]
    fn disagreements_are_shown() {
        let slurm = [SlurmJob { job: 12, user: "alice".into(), indices: vec![0, 9] }];
        let records = [record(13, &["MIG-0"], true), record(14, &["MIG-2"], false), record(15, &["MIG-x"], true)];
        let v = build("n1", &inv(), Some(&slurm), Some(3), &records, &["bad.toml: not a flexmig holder record".into()]);
        let all = v.disagreements.join("\n");
        for want in [
            "Slurm gives it to job 12, but a flexmig task of job 13",
            "outlived its process",
            "names leaf MIG-x, which is not in the inventory",
            "GRES index 9 to job 12, but the inventory has no leaf there",
            "bad.toml",
            "inventory leaf MIG-3 has GRES index 3, but Slurm knows only 3 gpu GRES",
        ] {
            assert!(all.contains(want), "missing `{want}` in:\n{all}");
        }
        // Without Slurm's view nothing is compared with Slurm.
        let v = build("n1", &inv(), None, None, &[record(13, &["MIG-0"], true)], &[]);
        assert!(v.disagreements.is_empty() && !v.slurm);
    }
}
