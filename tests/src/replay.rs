//! A trace replayed on a real Slurm with flexmig, time-compressed, against the simulator.
//!
//! [`replay`] submits every job of a trace (`sbatch --gres=mig:N -nN`, through the Lua filters)
//! at its submission time divided by the scale, into a [`Cluster`] built by the node helper. Each
//! job runs `srun --flexmig`, so every rank reports the GRES indices Slurm gave the step
//! (`SLURM_STEP_GPUS`) and the GPU the plugin bound it to (`FLEXMIG_GPU`); then the job runs for
//! its duration over the scale times the simulator's factor for the placement it got (the largest
//! number of its leaves on one GPU, or the double leaf), counted from its start. The
//! scheduler is `sched/builtin` (strict FIFO), as the simulator's `fifo`.
//!
//! [`parity`] then compares, against the simulator:
//! * placement: the simulator's Flex-MIG allocator driven through slurmctld's own order of
//!   allocations and completions (from its log) must name the GRES indices Slurm gave each job;
//!   the idealised `most-free` rule is counted beside it, and how often each rule gave the
//!   evenest split the free leaves allowed;
//! * times: makespan, waiting, execution and JCT of the replay (scaled back) against the
//!   simulator's run of the same trace (the paper's Figure 6).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use flexmig_sim::alloc::{Allocator as _, Costs, Flex, Placement};
use flexmig_sim::geometry::{load_model, Geometry};
use flexmig_sim::sim::{simulate, Config, Metrics, Scheduler};
use flexmig_sim::trace::Job;

use crate::helper_node::{self, HelperNode};
use crate::Cluster;

/// The GPU model of the emulated node (the harness's fake node helper builds A100-40GB nodes).
pub const MODEL: &str = "A100-40GB";

/// What the batch script of every replayed job does. Times are `date +%s.%N`.
const JOB_SCRIPT: &str = r#"#!/bin/bash
out="$REPLAY_DIR/$SLURM_JOB_NAME"
start=$(date +%s.%N)
echo "$start ${SLURM_JOB_GPUS:-none}" > "$out.start"
srun --flexmig bash -c 'echo "$SLURM_PROCID ${SLURM_STEP_GPUS:-none} ${FLEXMIG_GPU:-none} ${FLEXMIG_PROFILE:-none}"' > "$out.ranks" || exit 3
m=$(awk '{print $3}' "$out.ranks" | sort | uniq -c | sort -rn | awk 'NR==1{print $1}')
if [ "$REPLAY_SIZE" = 1 ]; then
  if [ "$(awk '{print $4}' "$out.ranks")" = "$REPLAY_DOUBLE_PROFILE" ]; then f=$REPLAY_DOUBLE_FACTOR; else f=1; fi
else
  f=$(echo "$REPLAY_FACTORS" | cut -d' ' -f"$m")
fi
now=$(date +%s.%N)
sleep "$(awk -v b="$REPLAY_BASE_S" -v f="$f" -v s="$start" -v n="$now" 'BEGIN { x = b * f - (n - s); if (x < 0) x = 0; printf "%.3f", x }')"
echo "$(date +%s.%N) $m $f" > "$out.end"
"#;

/// A replay's settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// GPUs of the one node.
    pub gpus: u32,
    /// Trace seconds per real second.
    pub scale: f64,
    /// The simulator's costs (the job factors come from them); `gpus` is set from above.
    pub costs: Costs,
}

/// What one rank reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rank {
    pub rank: u32,
    pub step_gpus: String,
    pub gpu: u32,
    pub profile: String,
}

/// One replayed job, times in trace seconds from the first submission.
#[derive(Debug, Clone)]
pub struct Record {
    pub job_id: u32,
    pub submit_s: f64,
    pub start_s: f64,
    pub end_s: f64,
    /// The job's GRES indices (`SLURM_JOB_GPUS`), ascending.
    pub gres: Vec<u32>,
    pub ranks: Vec<Rank>,
    /// The factor the job applied, and the concentration it saw.
    pub factor: f64,
    pub concentration: u32,
}

/// A slurmctld event, in its log's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Allocate(u32),
    Complete(u32),
}

/// A finished replay.
#[derive(Debug, Clone)]
pub struct Replay {
    pub trace: Vec<Job>,
    /// Per trace job.
    pub records: Vec<Record>,
    pub events: Vec<Event>,
    pub options: Options,
}

/// Builds the emulated node with the helper and starts Slurm with strict FIFO scheduling.
///
/// # Errors
/// The helper or a daemon failing.
pub fn start_cluster(gpus: u32) -> Result<(HelperNode, Cluster)> {
    let mut node = helper_node::build(MODEL, gpus)?;
    node.cfg.slurm_conf_extra.push_str("SchedulerType=sched/builtin\n");
    // A CPU per leaf and one more, so that leaves, not CPUs, decide what runs.
    node.cfg.cpus = node.cfg.cpus.max(node.inventory.leaves.len() as u32 + 1);
    let c = Cluster::start(&node.cfg)?;
    // The first job after start-up waits for slurmctld to take the node into use: not in the clock.
    let o = Cluster::output(c.command("sbatch").args(["--wait", "--gres=mig:1", "-o", "/dev/null", "--wrap", "true"]))?;
    if !o.status.success() {
        bail!("the warm-up job failed: {}\n{}", String::from_utf8_lossy(&o.stderr), c.log_tails());
    }
    Ok((node, c))
}

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The simulator's geometry of the replay's GPUs.
///
/// # Errors
/// The model has no recorded table.
pub fn geometry() -> Result<Geometry> {
    Geometry::from_model(&load_model(MODEL)?)
}

/// Replays `trace` on `c`, a cluster of [`start_cluster`].
///
/// # Errors
/// A submission failing, a job failing or not ending in time, or its records missing.
pub fn replay(c: &Cluster, trace: &[Job], opt: &Options) -> Result<Replay> {
    let geo = geometry()?;
    let costs = Costs { gpus: opt.gpus, gpus_per_node: opt.gpus, ..opt.costs.clone() };
    let dir = c.dir().join("replay");
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("job.sh");
    std::fs::write(&script, JOB_SCRIPT)?;
    let factors: Vec<String> = (1..=geo.leaves_per_gpu()).map(|m| format!("{}", costs.many_leaves_factor(m))).collect();
    let mut order: Vec<usize> = (0..trace.len()).collect();
    order.sort_by(|&a, &b| trace[a].submit_s.total_cmp(&trace[b].submit_s));
    let first = order.first().map_or(0.0, |&i| trace[i].submit_s);
    let t0 = now_s();
    let mut submitted = vec![0.0; trace.len()];
    let mut ids = vec![0u32; trace.len()];
    for &i in &order {
        let j = &trace[i];
        let at = t0 + (j.submit_s - first) / opt.scale;
        let wait = at - now_s();
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
        submitted[i] = now_s();
        let o = Cluster::output(
            c.command("sbatch")
                .args(["--parsable", &format!("--gres=mig:{}", j.size), &format!("-n{}", j.size)])
                .arg(format!("--job-name=r{i}"))
                .arg("-o")
                .arg(dir.join(format!("r{i}.out")))
                .arg(&script)
                .env("REPLAY_DIR", &dir)
                .env("REPLAY_SIZE", j.size.to_string())
                .env("REPLAY_BASE_S", format!("{}", j.duration_s / opt.scale))
                .env("REPLAY_FACTORS", factors.join(" "))
                .env("REPLAY_DOUBLE_FACTOR", format!("{}", 1.0 - costs.double_leaf_speedup))
                .env("REPLAY_DOUBLE_PROFILE", geo.double_profile.clone().unwrap_or_default()),
        )?;
        if !o.status.success() {
            bail!("sbatch of trace job {} ({} leaves): {}", j.id, j.size, String::from_utf8_lossy(&o.stderr));
        }
        let out = String::from_utf8_lossy(&o.stdout);
        ids[i] = out.trim().split(';').next().unwrap_or("").parse().with_context(|| format!("sbatch printed `{out}`"))?;
    }
    // Every job ends within its longest possible run after the last submission, times the jobs.
    let longest = trace.iter().map(|j| j.duration_s * costs.many_leaves_factor(geo.leaves_per_gpu())).sum::<f64>() / opt.scale;
    let deadline = Instant::now() + Duration::from_secs_f64(longest + 60.0);
    loop {
        let o = Cluster::output(c.command("squeue").args(["-h", "-o", "%i"]))?;
        if String::from_utf8_lossy(&o.stdout).trim().is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the replay did not finish in time:\n{}", String::from_utf8_lossy(&o.stdout));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut records = Vec::new();
    for (i, j) in trace.iter().enumerate() {
        records.push(read_record(&dir, i, ids[i], submitted[i], t0, first, opt.scale).with_context(|| format!("trace job {}", j.id))?);
    }
    let events = read_events(&c.dir().join("log/slurmctld.log"))?;
    Ok(Replay { trace: trace.to_vec(), records, events, options: Options { costs, ..opt.clone() } })
}

fn read_record(dir: &Path, i: usize, job_id: u32, submitted: f64, t0: f64, first: f64, scale: f64) -> Result<Record> {
    let read = |ext: &str| -> Result<String> {
        let p: PathBuf = dir.join(format!("r{i}.{ext}"));
        std::fs::read_to_string(&p).with_context(|| {
            let out = std::fs::read_to_string(dir.join(format!("r{i}.out"))).unwrap_or_default();
            format!("reading {} (job {job_id} output: {out})", p.display())
        })
    };
    let trace_s = |t: f64| first + (t - t0) * scale;
    let start = read("start")?;
    let mut f = start.split_whitespace();
    let start_s: f64 = f.next().context("empty start record")?.parse()?;
    let gres = parse_indices(f.next().unwrap_or("none"));
    let ranks: Vec<Rank> = read("ranks")?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [rank, step, gpu, profile] = f.as_slice() else { return None };
            Some(Rank { rank: rank.parse().ok()?, step_gpus: step.to_string(), gpu: gpu.parse().ok()?, profile: profile.to_string() })
        })
        .collect();
    let end = read("end")?;
    let f: Vec<&str> = end.split_whitespace().collect();
    let [end_s, m, factor] = f.as_slice() else { bail!("end record `{end}`") };
    Ok(Record {
        job_id,
        submit_s: trace_s(submitted),
        start_s: trace_s(start_s),
        end_s: trace_s(end_s.parse()?),
        gres,
        ranks,
        factor: factor.parse()?,
        concentration: m.parse()?,
    })
}

/// `0-2,5` -> [0, 1, 2, 5].
pub fn parse_indices(list: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<u32>().ok()),
        }
    }
    out.sort_unstable();
    out
}

/// slurmctld's allocations and completions in its log's order.
///
/// # Errors
/// The log cannot be read.
pub fn read_events(log: &Path) -> Result<Vec<Event>> {
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let id = |l: &str, after: &str| -> Option<u32> {
        let rest = &l[l.find(after)? + after.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    Ok(text
        .lines()
        .filter_map(|l| {
            if l.contains("sched: Allocate JobId=") {
                id(l, "Allocate JobId=").map(Event::Allocate)
            } else if l.contains("_job_complete: JobId=") && l.trim_end().ends_with("done") {
                id(l, "_job_complete: JobId=").map(Event::Complete)
            } else {
                None
            }
        })
        .collect())
}

/// How the replay and the simulator agree.
#[derive(Debug, Clone)]
pub struct Parity {
    pub jobs: usize,
    /// Jobs whose GRES indices the simulator's rule named, driven through slurmctld's order.
    pub slurm_rule_exact: usize,
    pub most_free_rule_exact: usize,
    /// Jobs of 2+ leaves; of them, those that got the evenest split the free leaves allowed
    /// (the replay's, and the most-free rule's in the same states).
    pub multi_leaf: usize,
    pub evenest_replay: usize,
    pub evenest_most_free: usize,
    /// Jobs whose ranks' GPUs (FLEXMIG_GPU) have the concentration the simulator gave them.
    pub concentration_agrees: usize,
    /// Jobs that are not where the simulator put them: (trace id, Slurm's, the simulator's).
    pub mismatches: Vec<(String, Vec<u32>, Vec<u32>)>,
    /// The replay's metrics (trace seconds) and the simulator's of the same trace.
    pub replay: Metrics,
    pub simulated: Metrics,
    /// Per job (start, end) in the replay and the simulation, trace seconds.
    pub per_job: Vec<((f64, f64), (f64, f64))>,
}

/// The most even split possible: the least m with sum over GPUs of min(free, m) >= n.
fn evenest(free_per_gpu: &[u32], n: u32) -> u32 {
    (1..=n).find(|&m| free_per_gpu.iter().map(|&f| f.min(m)).sum::<u32>() >= n).unwrap_or(n)
}

/// Compares a replay with the simulator.
///
/// # Errors
/// The log's events do not cover the trace's jobs.
pub fn parity(r: &Replay) -> Result<Parity> {
    let geo = geometry()?;
    let costs = r.options.costs.clone();
    let by_id: BTreeMap<u32, usize> = r.records.iter().enumerate().map(|(i, rec)| (rec.job_id, i)).collect();
    let n = r.trace.len();
    let sim = simulate(&r.trace, &geo, flexmig_sim::alloc::Mode::Fm, &config(&costs)).map_err(anyhow::Error::msg)?;
    let mut slurm = Flex::new(&geo, &Costs { placement: Placement::Slurm, ..costs.clone() }, n);
    let mut most = Flex::new(&geo, &Costs { placement: Placement::MostFree, ..costs.clone() }, n);
    let mut p = Parity {
        jobs: n,
        slurm_rule_exact: 0,
        most_free_rule_exact: 0,
        multi_leaf: 0,
        evenest_replay: 0,
        evenest_most_free: 0,
        concentration_agrees: 0,
        mismatches: Vec::new(),
        replay: metrics(r, &geo),
        simulated: sim.metrics.clone(),
        per_job: r.records.iter().zip(&sim.outcomes).map(|(rec, o)| ((rec.start_s, rec.end_s), (o.start_s, o.end_s))).collect(),
    };
    let small_per_gpu = geo.leaves.iter().filter(|l| !l.double).count() as u32;
    let mut free_small = vec![small_per_gpu; r.options.gpus as usize];
    let mut seen = vec![false; n];
    for ev in &r.events {
        match *ev {
            Event::Allocate(id) => {
                let Some(&i) = by_id.get(&id) else { continue };
                let job = &r.trace[i];
                let rec = &r.records[i];
                seen[i] = true;
                // The evenest split of the small leaves free now (jobs within a node's small leaves).
                let small_only = job.size >= 2 && job.size <= small_per_gpu * r.options.gpus;
                let best = small_only.then(|| evenest(&free_small, job.size));
                slurm.place(i, job, 0.0).with_context(|| format!("the simulator cannot place trace job {} where Slurm did", job.id))?;
                let (_, predicted) = slurm.gres_indices(i).context("placed")?;
                if predicted == rec.gres {
                    p.slurm_rule_exact += 1;
                } else {
                    p.mismatches.push((job.id.clone(), rec.gres.clone(), predicted));
                }
                if most.place(i, job, 0.0).is_some() && most.gres_indices(i).map(|x| x.1) == Some(rec.gres.clone()) {
                    p.most_free_rule_exact += 1;
                }
                let mut per_gpu: BTreeMap<u32, u32> = BTreeMap::new();
                for rank in &rec.ranks {
                    *per_gpu.entry(rank.gpu).or_insert(0) += 1;
                }
                let real_m = per_gpu.values().copied().max().unwrap_or(0);
                if rec.ranks.len() == job.size as usize && real_m == slurm.concentration(i) && real_m == rec.concentration {
                    p.concentration_agrees += 1;
                }
                if let Some(best) = best {
                    p.multi_leaf += 1;
                    p.evenest_replay += usize::from(real_m == best);
                    p.evenest_most_free += usize::from(most.concentration(i) == best);
                }
                for h in slurm.holdings(i) {
                    if h.size == 1 {
                        free_small[h.gpu as usize] -= 1;
                    }
                }
            }
            Event::Complete(id) => {
                let Some(&i) = by_id.get(&id) else { continue };
                for h in slurm.holdings(i) {
                    if h.size == 1 {
                        free_small[h.gpu as usize] += 1;
                    }
                }
                slurm.release(i);
                most.release(i);
            }
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        bail!("slurmctld's log has no allocation of trace job {} (job {})", r.trace[i].id, r.records[i].job_id);
    }
    Ok(p)
}

fn config(costs: &Costs) -> Config {
    Config { scheduler: Scheduler::Fifo, backfill_window: 14, costs: costs.clone(), record: false }
}

/// The replay's metrics, as the simulator computes its own.
fn metrics(r: &Replay, geo: &Geometry) -> Metrics {
    let n = r.records.len().max(1) as f64;
    let first = r.records.iter().map(|x| x.submit_s).fold(f64::INFINITY, f64::min);
    let last = r.records.iter().map(|x| x.end_s).fold(f64::NEG_INFINITY, f64::max);
    let mean = |f: &dyn Fn(&Record) -> f64| r.records.iter().map(f).sum::<f64>() / n;
    let geo_slices = f64::from(geo.compute * r.options.gpus);
    let held: f64 = r.records.iter().zip(&r.trace).map(|(x, j)| f64::from(j.size) * (x.end_s - x.start_s)).sum();
    Metrics {
        jobs: r.records.len(),
        makespan_s: last - first,
        avg_jct_s: mean(&|x| x.end_s - x.submit_s),
        avg_wait_s: mean(&|x| x.start_s - x.submit_s),
        avg_run_s: mean(&|x| x.end_s - x.start_s),
        avg_ext_frag_delay_s: 0.0,
        utilization: held / (geo_slices * (last - first)),
        reconfigurations: 0,
        drained_jobs: 0,
    }
}

impl fmt::Display for Parity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "placement, the simulator driven through slurmctld's order of allocations and completions:")?;
        writeln!(
            f,
            "  GRES indices named exactly: {}/{} (slurm rule), {}/{} (most-free rule)",
            self.slurm_rule_exact, self.jobs, self.most_free_rule_exact, self.jobs
        )?;
        writeln!(f, "  ranks' GPUs (FLEXMIG_GPU) with the simulated concentration: {}/{}", self.concentration_agrees, self.jobs)?;
        writeln!(
            f,
            "  evenest split the free small leaves allowed: {}/{} multi-leaf jobs (Slurm), {}/{} (most-free rule in the same states)",
            self.evenest_replay, self.multi_leaf, self.evenest_most_free, self.multi_leaf
        )?;
        for (id, real, sim) in &self.mismatches {
            writeln!(f, "  job {id}: Slurm gave {real:?}, the simulator {sim:?}")?;
        }
        writeln!(f, "times (trace seconds), the replay against `compare` (Flex-MIG, fifo):")?;
        writeln!(f, "  {:<28} {:>10} {:>10} {:>8}", "metric", "replay", "simulated", "ratio")?;
        let rows = [
            ("makespan_s", self.replay.makespan_s, self.simulated.makespan_s),
            ("jct_incl_wait_s (ours)", self.replay.avg_jct_s, self.simulated.avg_jct_s),
            ("exec_s (the paper's JCT)", self.replay.avg_run_s, self.simulated.avg_run_s),
            ("wait_s", self.replay.avg_wait_s, self.simulated.avg_wait_s),
            ("utilization", self.replay.utilization, self.simulated.utilization),
        ];
        for (name, a, b) in rows {
            let ratio = if b > 0.0 { format!("{:.3}", a / b) } else { "-".into() };
            writeln!(f, "  {name:<28} {a:>10.1} {b:>10.1} {ratio:>8}")?;
        }
        Ok(())
    }
}

impl Parity {
    /// The parity plot: each job's end (and start) in the replay against the simulation, with
    /// the diagonal; hand-written SVG like the simulator's figures.
    pub fn svg(&self, title: &str) -> String {
        let (w, h, pad) = (440.0, 440.0, 60.0);
        let max = self.per_job.iter().flat_map(|((_, a), (_, b))| [*a, *b]).fold(1.0_f64, f64::max) * 1.05;
        let x = |v: f64| pad + v / max * (w - 2.0 * pad);
        let y = |v: f64| h - pad - v / max * (h - 2.0 * pad);
        let mut o = String::new();
        let _ = writeln!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(o, r#"<text x="{pad}" y="20" font-size="13" font-weight="bold">{title}</text>"#);
        let _ =
            writeln!(o, r#"<rect x="{pad}" y="{pad}" width="{}" height="{}" fill="none" stroke="black"/>"#, w - 2.0 * pad, h - 2.0 * pad);
        let _ = writeln!(
            o,
            r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#888" stroke-dasharray="4 3"/>"##,
            x(0.0),
            y(0.0),
            x(max),
            y(max)
        );
        for k in 0..=4 {
            let v = max * f64::from(k) / 4.0;
            let _ = writeln!(
                o,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{v:.0}</text><text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"#,
                x(v),
                h - pad + 14.0,
                pad - 4.0,
                y(v) + 4.0
            );
        }
        for ((rs, re), (ss, se)) in &self.per_job {
            let _ = writeln!(
                o,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#1f77b4"><title>end: simulated {se:.0} s, replay {re:.0} s</title></circle>"##,
                x(*se),
                y(*re)
            );
            let _ = writeln!(
                o,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="none" stroke="#ff7f0e"><title>start: simulated {ss:.0} s, replay {rs:.0} s</title></circle>"##,
                x(*ss),
                y(*rs)
            );
        }
        let _ = writeln!(o, r#"<text x="{}" y="{}" text-anchor="middle">simulated (trace s)</text>"#, w / 2.0, h - 15.0);
        let _ = writeln!(
            o,
            r#"<text x="15" y="{}" transform="rotate(-90 15 {})" text-anchor="middle">replayed on Slurm (trace s)</text>"#,
            h / 2.0,
            h / 2.0
        );
        let _ = writeln!(
            o,
            r##"<circle cx="{}" cy="38" r="3" fill="#1f77b4"/><text x="{}" y="42">job end</text><circle cx="{}" cy="38" r="3" fill="none" stroke="#ff7f0e"/><text x="{}" y="42">job start</text>"##,
            pad + 5.0,
            pad + 12.0,
            pad + 75.0,
            pad + 82.0
        );
        let _ = writeln!(o, "</svg>");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_index_lists_and_the_evenest_split() {
        assert_eq!(parse_indices("0-2,5"), [0, 1, 2, 5]);
        assert_eq!(parse_indices("7"), [7]);
        assert!(parse_indices("none").is_empty());
        assert_eq!(evenest(&[6, 6], 4), 2);
        assert_eq!(evenest(&[1, 6], 4), 3);
        assert_eq!(evenest(&[2, 4], 4), 2);
        assert_eq!(evenest(&[6, 6], 1), 1);
    }
}
