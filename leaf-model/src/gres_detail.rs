//! What slurmctld says a job was given on a node, as `scontrol show job -d` (and the job record's
//! `gres_detail_str`) write it: `gpu:1g.10gb:2(IDX:0-1),gpu:1g.20gb:1(IDX:12),mig:0`. Read by the
//! plugin (to check a leaf's type against Slurm's) and by the helper's `status`.

/// One allocated GRES entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    pub name: String,
    /// The type (`1g.10gb`), None for an untyped request (`gpu:2(IDX:0-1)`).
    pub type_name: Option<String>,
    pub indices: Vec<u32>,
}

/// The entries with GRES indices; others (`mig:0`, `license:x(CNT:1)`) and malformed ones are left
/// out.
pub fn parse(detail: &str) -> Vec<Allocated> {
    let entries = crate::gres_order::split_top_level(detail);
    let mut out = Vec::new();
    for e in entries {
        let Some((head, rest)) = e.trim().split_once("(IDX:") else { continue };
        let Some(indices) = index_list(rest.trim_end_matches(')')) else { continue };
        let parts: Vec<&str> = head.split(':').collect();
        let (name, type_name) = match parts[..] {
            [name, ty, _count] => (name, Some(ty.to_string())),
            [name, _count] => (name, None),
            _ => continue,
        };
        out.push(Allocated { name: name.to_string(), type_name, indices });
    }
    out
}

/// A job as `scontrol show job -d` prints it: its id, user, state, and each node line's GRES
/// detail (`Nodes=n[1-2] CPU_IDs=0-3 Mem=0 GRES=gpu:1g.5gb:2(IDX:2-3)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScontrolJob {
    pub job: u32,
    pub user: String,
    pub state: String,
    /// (the line's node hostlist, its GRES detail)
    pub nodes: Vec<(String, String)>,
}

impl ScontrolJob {
    /// The GRES detail of `node`, if the job has some there.
    pub fn detail_on(&self, node: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|(list, _)| crate::hostlist::expand(list).map(|n| n.iter().any(|n| n == node)).unwrap_or(false))
            .map(|(_, d)| d.as_str())
    }
}

/// Reads the jobs of `scontrol show job -d` output.
pub fn scontrol_jobs(text: &str) -> Vec<ScontrolJob> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let words: Vec<&str> = block.split_whitespace().collect();
        let get = |k: &str| words.iter().find_map(|w| w.strip_prefix(k));
        let Some(job) = get("JobId=").and_then(|j| j.parse::<u32>().ok()) else { continue };
        let user = get("UserId=").map(|u| u.split('(').next().unwrap_or(u).to_string()).unwrap_or_default();
        let state = get("JobState=").unwrap_or_default().to_string();
        let mut nodes = Vec::new();
        for line in block.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix("Nodes=") else { continue };
            let list = rest.split_whitespace().next().unwrap_or_default();
            if let Some(gres) = line.split_whitespace().find_map(|w| w.strip_prefix("GRES=")) {
                nodes.push((list.to_string(), gres.to_string()));
            }
        }
        out.push(ScontrolJob { job, user, state, nodes });
    }
    out
}

/// A Slurm index list (`0,2,4` or `0-2,5`), None when malformed.
pub fn index_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let num = |t: &str| t.trim().parse::<u32>().ok();
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b || b - a > 4096 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_scontrols_jobs() {
        let text = "JobId=12 JobName=x\n   UserId=alice(1001) GroupId=alice(1001)\n   JobState=RUNNING Reason=None\n   \
                    JOB_GRES=gpu:1g.5gb:2\n     Nodes=n[1-2] CPU_IDs=0-1 Mem=0 GRES=gpu:1g.5gb:2(IDX:2-3)\n\n\
                    JobId=13 JobName=y\n   UserId=bob(1002)\n   JobState=PENDING\n";
        let jobs = scontrol_jobs(text);
        assert_eq!(jobs.len(), 2);
        assert_eq!((jobs[0].job, jobs[0].user.as_str(), jobs[0].state.as_str()), (12, "alice", "RUNNING"));
        assert_eq!(jobs[0].detail_on("n2"), Some("gpu:1g.5gb:2(IDX:2-3)"));
        assert_eq!(jobs[0].detail_on("n3"), None);
        assert!(jobs[1].nodes.is_empty());
    }

    #[test]
    fn reads_scontrols_detail() {
        let got = parse("gpu:1g.5gb:3(IDX:0-1,5),gpu:1g.10gb:1(IDX:12),gpu:2(IDX:7-8),mig:0,license:x(CNT:1)");
        let a = |n: &str, t: Option<&str>, i: &[u32]| Allocated { name: n.into(), type_name: t.map(Into::into), indices: i.to_vec() };
        assert_eq!(got, [a("gpu", Some("1g.5gb"), &[0, 1, 5]), a("gpu", Some("1g.10gb"), &[12]), a("gpu", None, &[7, 8])]);
        assert!(parse("").is_empty());
        assert!(parse("gpu:1g.5gb:2(IDX:x)").is_empty());
        assert_eq!(index_list("3-5,9"), Some(vec![3, 4, 5, 9]));
        assert_eq!(index_list("5-3"), None);
    }
}
