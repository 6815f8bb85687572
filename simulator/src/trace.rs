//! Jobs and where they come from: the paper's synthetic workloads (Table 2), the simulator's
//! own CSV trace format, and `sacct -P` output from a real Slurm cluster.

use anyhow::{bail, Context, Result};
use std::fmt::Write as _;

/// What a job does; Dynamic-MIG never drains a GPU running inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Training,
    Inference,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Training => "training",
            Kind::Inference => "inference",
        }
    }
}

/// One job of a trace. `size` is in compute slices (= Flex-MIG leaves); `duration_s` is the
/// run time on its exact-sized instance, before any slowdown.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub submit_s: f64,
    pub size: u32,
    pub duration_s: f64,
    pub kind: Kind,
}

/// The paper's size distributions (Table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribution {
    Small,
    Balanced,
    Large,
}

/// Which job kinds a synthetic trace holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    Training,
    Inference,
    Mixed,
}

pub const TRAIN_SIZES: [u32; 5] = [1, 2, 4, 6, 8];
pub const INFER_SIZES: [u32; 3] = [1, 2, 4];

impl Distribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Distribution::Small => "small",
            Distribution::Balanced => "balanced",
            Distribution::Large => "large",
        }
    }
    /// Jobs per size in one trace (Table 2): training sizes 1/2/4/6/8, inference 1/2/4.
    pub fn counts(self) -> ([u32; 5], [u32; 3]) {
        match self {
            Distribution::Small => ([16, 8, 4, 2, 1], [16, 8, 4]),
            Distribution::Balanced => ([8, 8, 8, 4, 4], [10, 10, 10]),
            Distribution::Large => ([4, 4, 12, 8, 4], [8, 8, 16]),
        }
    }
}

impl Mix {
    pub fn as_str(self) -> &'static str {
        match self {
            Mix::Training => "training",
            Mix::Inference => "inference",
            Mix::Mixed => "mixed",
        }
    }
}

/// A small deterministic generator (splitmix64), so a seed gives the same trace everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// How a synthetic trace is drawn.
#[derive(Debug, Clone)]
pub struct Synthetic {
    pub distribution: Distribution,
    pub mix: Mix,
    pub seed: u64,
    /// None: exactly the Table 2 counts. Some(n): n jobs drawn with Table 2's proportions.
    pub jobs: Option<usize>,
    /// Offered load: demanded slice-seconds per second over the cluster's compute slices;
    /// sets the mean of the exponential inter-arrival times (open loop).
    pub load: f64,
    /// Compute slices of the whole cluster (for the arrival rate).
    pub cluster_slices: u32,
}

/// Duration classes: short 600-1800 s, medium 1800-3600 s, long 3600-7200 s, equally likely.
pub const DURATION_CLASSES: [(f64, f64); 3] = [(600.0, 1800.0), (1800.0, 3600.0), (3600.0, 7200.0)];
const MEAN_DURATION: f64 = (1200.0 + 2700.0 + 5400.0) / 3.0;

/// Draws a trace: sizes from Table 2, durations from the three classes, Poisson arrivals.
pub fn generate(s: &Synthetic) -> Vec<Job> {
    let mut rng = Rng::new(s.seed);
    let (train, infer) = s.distribution.counts();
    let mut pool: Vec<(u32, Kind, u32)> = Vec::new();
    if s.mix != Mix::Inference {
        pool.extend(TRAIN_SIZES.iter().zip(train).map(|(&z, c)| (z, Kind::Training, c)));
    }
    if s.mix != Mix::Training {
        pool.extend(INFER_SIZES.iter().zip(infer).map(|(&z, c)| (z, Kind::Inference, c)));
    }
    let total: u32 = pool.iter().map(|p| p.2).sum();
    let mut shapes: Vec<(u32, Kind)> = match s.jobs {
        None => pool.iter().flat_map(|&(z, k, c)| (0..c).map(move |_| (z, k))).collect(),
        Some(n) => (0..n)
            .map(|_| {
                let mut r = rng.below(u64::from(total)) as u32;
                let mut pick = (pool[0].0, pool[0].1);
                for &(z, k, c) in &pool {
                    if r < c {
                        pick = (z, k);
                        break;
                    }
                    r -= c;
                }
                pick
            })
            .collect(),
    };
    // Shuffle (Fisher-Yates) so sizes arrive interleaved.
    for i in (1..shapes.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        shapes.swap(i, j);
    }
    let mean_size = pool.iter().map(|p| f64::from(p.0 * p.2)).sum::<f64>() / f64::from(total);
    let mean_gap = mean_size * MEAN_DURATION / (s.load * f64::from(s.cluster_slices));
    let mut t = 0.0;
    shapes
        .into_iter()
        .enumerate()
        .map(|(i, (size, kind))| {
            let (lo, hi) = DURATION_CLASSES[rng.below(3) as usize];
            let duration_s = (lo + (hi - lo) * rng.unit()).round();
            let job = Job { id: format!("j{i}"), submit_s: t, size, duration_s, kind };
            t += (-(1.0 - rng.unit()).ln() * mean_gap).round();
            job
        })
        .collect()
}

/// First line of the CSV trace format.
pub const CSV_MAGIC: &str = "# flexmig-sim trace v1";
const CSV_COLUMNS: [&str; 5] = ["id", "submit_s", "size", "duration_s", "kind"];

/// Writes the CSV trace format: the version line, a header, one job per line.
pub fn to_csv(jobs: &[Job]) -> String {
    let mut out = format!("{CSV_MAGIC}\n{}\n", CSV_COLUMNS.join(","));
    for j in jobs {
        let _ = writeln!(out, "{},{},{},{},{}", j.id, j.submit_s, j.size, j.duration_s, j.kind.as_str());
    }
    out
}

/// Parses the CSV trace format. Columns may come in any order but must be exactly
/// `id,submit_s,size,duration_s,kind`; lines starting with `#` after the version line are
/// comments.
///
/// # Errors
/// A missing or unknown version line, unknown or missing columns, or a bad value, naming the line.
pub fn parse_csv(text: &str) -> Result<Vec<Job>> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    match lines.next() {
        Some((_, l)) if l.trim() == CSV_MAGIC => {}
        Some((_, l)) if l.starts_with("# flexmig-sim trace") => {
            bail!("unsupported trace version {:?}: this flexmig-sim reads {CSV_MAGIC:?}", l.trim())
        }
        _ => bail!("not a flexmig-sim trace: the first line must be {CSV_MAGIC:?}"),
    }
    let mut lines = lines.filter(|(_, l)| !l.starts_with('#'));
    let (_, header) = lines.next().context("trace has no header line")?;
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let mut idx = [usize::MAX; 5];
    for (i, c) in cols.iter().enumerate() {
        let k = CSV_COLUMNS
            .iter()
            .position(|x| x == c)
            .with_context(|| format!("unknown column {c:?} (columns are {})", CSV_COLUMNS.join(",")))?;
        if idx[k] != usize::MAX {
            bail!("column {c:?} appears twice");
        }
        idx[k] = i;
    }
    if let Some(k) = idx.iter().position(|&i| i == usize::MAX) {
        bail!("missing column {:?}", CSV_COLUMNS[k]);
    }
    let mut jobs = Vec::new();
    for (n, line) in lines {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let lineno = n + 1;
        if f.len() != cols.len() {
            bail!("line {lineno}: {} fields, the header has {}", f.len(), cols.len());
        }
        let num = |k: usize| -> Result<f64> {
            let v: f64 = f[idx[k]].parse().with_context(|| format!("line {lineno}: {} {:?} is not a number", CSV_COLUMNS[k], f[idx[k]]))?;
            if !v.is_finite() || v < 0.0 {
                bail!("line {lineno}: {} must be a non-negative number", CSV_COLUMNS[k]);
            }
            Ok(v)
        };
        let size: u32 = f[idx[2]].parse().with_context(|| format!("line {lineno}: size {:?} is not a whole number", f[idx[2]]))?;
        if size == 0 {
            bail!("line {lineno}: size must be at least 1");
        }
        let kind = match f[idx[4]] {
            "training" => Kind::Training,
            "inference" => Kind::Inference,
            k => bail!("line {lineno}: kind {k:?} is neither training nor inference"),
        };
        jobs.push(Job { id: f[idx[0]].to_string(), submit_s: num(1)?, size, duration_s: num(3)?, kind });
    }
    Ok(jobs)
}

/// How `sacct` rows become jobs.
#[derive(Debug, Clone)]
pub struct SacctOptions {
    /// Compute slices one whole GPU (`gres/gpu`) counts as.
    pub gpu_slices: u32,
    /// Jobs in this partition are inference jobs (never drained); others are training.
    pub inference_partition: Option<String>,
}

/// Parses `sacct -P -X -o JobID,Submit,Start,End,AllocTRES[,ReqTRES,ElapsedRaw,Partition,State]`
/// output (pipe-separated, with its header line). Job steps (`123.batch`), jobs that never
/// started, and jobs without GPUs are skipped. The size comes from AllocTRES (ReqTRES when
/// AllocTRES has no GPU): `gres/mig:<N>g.<M>gb=k` counts k*N slices, untyped `gres/mig=k` k
/// slices, `gres/gpu=k` k*gpu_slices. The duration is End-Start (ElapsedRaw when present).
/// Times are made relative to the earliest submit.
///
/// # Errors
/// A missing required column or an unparsable time, naming the line.
pub fn parse_sacct(text: &str, opt: &SacctOptions) -> Result<Vec<Job>> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().context("empty sacct output")?;
    let cols: Vec<&str> = header.split('|').map(str::trim).collect();
    let col = |name: &str| cols.iter().position(|c| c.eq_ignore_ascii_case(name));
    let need = |name: &str| {
        col(name).with_context(|| {
            format!("sacct output lacks column {name}; run sacct -P -X -o JobID,Submit,Start,End,AllocTRES,ReqTRES,ElapsedRaw,Partition")
        })
    };
    let (c_id, c_submit, c_start, c_end, c_alloc) = (need("JobID")?, need("Submit")?, need("Start")?, need("End")?, need("AllocTRES")?);
    let (c_req, c_elapsed, c_part) = (col("ReqTRES"), col("ElapsedRaw"), col("Partition"));
    let mut jobs = Vec::new();
    for (n, line) in lines {
        let lineno = n + 1;
        let f: Vec<&str> = line.split('|').collect();
        let get = |c: usize| f.get(c).map_or("", |s| s.trim());
        let id = get(c_id);
        if id.contains('.') {
            continue; // a job step
        }
        let (Some(submit), Some(start)) = (parse_time(get(c_submit)), parse_time(get(c_start))) else {
            if parse_time(get(c_submit)).is_none() {
                bail!("line {lineno}: Submit {:?} is not a time like 2024-05-01T12:00:00", get(c_submit));
            }
            continue; // never started
        };
        let mut size = tres_slices(get(c_alloc), opt.gpu_slices);
        if size == 0 {
            size = c_req.map_or(0, |c| tres_slices(get(c), opt.gpu_slices));
        }
        if size == 0 {
            continue; // no GPU
        }
        let duration = match c_elapsed.and_then(|c| get(c).parse::<f64>().ok()) {
            Some(e) => e,
            None => match parse_time(get(c_end)) {
                Some(end) => (end - start).max(0.0),
                None => continue, // still running
            },
        };
        let kind = match (&opt.inference_partition, c_part) {
            (Some(p), Some(c)) if get(c) == p => Kind::Inference,
            _ => Kind::Training,
        };
        jobs.push(Job { id: id.to_string(), submit_s: submit, size, duration_s: duration, kind });
    }
    if let Some(t0) = jobs.iter().map(|j| j.submit_s).reduce(f64::min) {
        for j in &mut jobs {
            j.submit_s -= t0;
        }
    }
    jobs.sort_by(|a, b| a.submit_s.total_cmp(&b.submit_s));
    Ok(jobs)
}

/// Compute slices requested by a TRES string such as
/// `cpu=8,gres/gpu=2,mem=64G` or `gres/mig=3,gres/mig:1g.10gb=2,gres/mig:2g.20gb=1`.
pub fn tres_slices(tres: &str, gpu_slices: u32) -> u32 {
    let (mut mig_untyped, mut mig_typed, mut gpu_untyped, mut gpu_typed) = (None, 0u32, None, 0u32);
    for item in tres.split(',') {
        let Some((key, val)) = item.split_once('=') else {
            continue;
        };
        let Ok(count) = val.trim().parse::<u32>() else {
            continue;
        };
        let key = key.trim();
        if key == "gres/mig" {
            mig_untyped = Some(count);
        } else if let Some(profile) = key.strip_prefix("gres/mig:") {
            let slices = profile.split_once('g').and_then(|(n, _)| n.parse::<u32>().ok()).unwrap_or(1);
            mig_typed += count * slices;
        } else if key == "gres/gpu" {
            gpu_untyped = Some(count);
        } else if key.starts_with("gres/gpu:") {
            gpu_typed += count;
        }
    }
    let mig = if mig_typed > 0 { mig_typed } else { mig_untyped.unwrap_or(0) };
    let gpus = gpu_untyped.unwrap_or(gpu_typed);
    mig + gpus * gpu_slices
}

/// `YYYY-MM-DDTHH:MM:SS` (sacct's default time format) to seconds since 1970, UTC.
fn parse_time(s: &str) -> Option<f64> {
    let (date, time) = s.split_once('T')?;
    let d: Vec<i64> = date.split('-').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let t: Vec<i64> = time.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    let (y, m, day) = (d[0], d[1], d[2]);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table2_counts_and_repeatable_seeds() {
        let s = Synthetic { distribution: Distribution::Small, mix: Mix::Mixed, seed: 7, jobs: None, load: 2.0, cluster_slices: 14 };
        let a = generate(&s);
        assert_eq!(a.len(), 31 + 28);
        assert_eq!(a.iter().filter(|j| j.kind == Kind::Training && j.size == 1).count(), 16);
        assert_eq!(a.iter().filter(|j| j.kind == Kind::Inference && j.size == 4).count(), 4);
        assert!(a.windows(2).all(|w| w[0].submit_s <= w[1].submit_s));
        assert!(a.iter().all(|j| (600.0..=7200.0).contains(&j.duration_s)));
        assert_eq!(a, generate(&s));
        assert_ne!(a, generate(&Synthetic { seed: 8, ..s }));
    }

    #[test]
    fn csv_round_trip_and_rejections() {
        let s = Synthetic { distribution: Distribution::Large, mix: Mix::Training, seed: 1, jobs: Some(20), load: 1.0, cluster_slices: 14 };
        let jobs = generate(&s);
        assert_eq!(parse_csv(&to_csv(&jobs)).unwrap(), jobs);
        let reordered = format!("{CSV_MAGIC}\nkind,id,size,submit_s,duration_s\ninference,a,2,5,60\n");
        let j = parse_csv(&reordered).unwrap();
        assert_eq!((j[0].kind, j[0].size, j[0].submit_s, j[0].duration_s), (Kind::Inference, 2, 5.0, 60.0));
        assert!(parse_csv("id,submit_s\n").unwrap_err().to_string().contains("first line"));
        assert!(parse_csv("# flexmig-sim trace v9\n").unwrap_err().to_string().contains("version"));
        let extra = format!("{CSV_MAGIC}\nid,submit_s,size,duration_s,kind,user\n");
        assert!(parse_csv(&extra).unwrap_err().to_string().contains("unknown column \"user\""));
        let bad = format!("{CSV_MAGIC}\nid,submit_s,size,duration_s,kind\na,0,0,5,training\n");
        assert!(parse_csv(&bad).unwrap_err().to_string().contains("line 3"));
    }

    #[test]
    fn tres_counts_gpus_and_mig_slices() {
        assert_eq!(tres_slices("billing=8,cpu=8,gres/gpu=2,mem=64G,node=1", 7), 14);
        assert_eq!(tres_slices("cpu=1,gres/gpu:a100=1,gres/gpu=1", 7), 7);
        assert_eq!(tres_slices("cpu=4,gres/mig=3", 7), 3);
        assert_eq!(tres_slices("gres/mig=3,gres/mig:1g.10gb=1,gres/mig:2g.20gb=1", 7), 3);
        assert_eq!(tres_slices("cpu=4,mem=1G", 7), 0);
    }

    #[test]
    fn sacct_rows_become_jobs() {
        let out = "JobID|Submit|Start|End|AllocTRES|ReqTRES|Partition|State\n\
            100|2024-05-01T10:00:00|2024-05-01T10:05:00|2024-05-01T11:05:00|cpu=4,gres/mig=2|cpu=4,gres/mig=2|train|COMPLETED\n\
            100.batch|2024-05-01T10:00:00|2024-05-01T10:05:00|2024-05-01T11:05:00|cpu=4,gres/mig=2||train|COMPLETED\n\
            101|2024-04-30T23:59:30|2024-05-01T00:00:00|2024-05-01T00:10:00|cpu=1,gres/gpu=1||serve|COMPLETED\n\
            102|2024-05-01T10:00:00|Unknown|Unknown||cpu=1,gres/mig=1|train|CANCELLED\n\
            103|2024-05-01T10:00:00|2024-05-01T10:00:00|2024-05-01T10:01:00|cpu=1||train|COMPLETED\n";
        let opt = SacctOptions { gpu_slices: 7, inference_partition: Some("serve".into()) };
        let jobs = parse_sacct(out, &opt).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(
            (jobs[0].id.as_str(), jobs[0].submit_s, jobs[0].size, jobs[0].duration_s, jobs[0].kind),
            ("101", 0.0, 7, 600.0, Kind::Inference)
        );
        assert_eq!(
            (jobs[1].id.as_str(), jobs[1].submit_s, jobs[1].size, jobs[1].duration_s, jobs[1].kind),
            ("100", 36030.0, 2, 3600.0, Kind::Training)
        );
        let e = parse_sacct("JobID|Submit|Start\n", &opt).unwrap_err();
        assert!(e.to_string().contains("End"));
    }
}
