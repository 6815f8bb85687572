//! The three ways of handing MIG capacity to jobs: Flex-MIG (fixed leaves, one-to-many),
//! Dynamic-MIG (exact instances on demand, draining when the placement tree blocks) and
//! Static-MIG (fixed 1g + 2g + 4g).

use crate::geometry::{span, Geometry};
use crate::trace::{Job, Kind};
use std::collections::{BTreeSet, HashMap};

const NONE: u32 = u32::MAX;

/// Operating mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Flex-MIG.
    Fm,
    /// Dynamic-MIG.
    Dm,
    /// Static-MIG.
    Sm,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Fm, Mode::Dm, Mode::Sm];
    pub fn key(self) -> &'static str {
        match self {
            Mode::Fm => "FM",
            Mode::Dm => "DM",
            Mode::Sm => "SM",
        }
    }
}

/// Cluster shape and per-mode costs.
#[derive(Debug, Clone)]
pub struct Costs {
    pub gpus: u32,
    pub gpus_per_node: u32,
    /// Dynamic-MIG: seconds a drain-and-reconfigure of one GPU takes.
    pub reconfig_s: f64,
    /// Dynamic-MIG: checkpoint save and load seconds added to every drained training job.
    pub ckpt_save_s: f64,
    pub ckpt_load_s: f64,
    /// Flex-MIG: relative slowdown of a job on two or more leaves that does not depend on where
    /// its leaves are (the communication, which does, is `concentration_slowdown`).
    pub one_to_many_slowdown: f64,
    /// Dynamic-MIG: relative slowdown of a job split into instances on several GPUs.
    pub cross_gpu_slowdown: f64,
    /// Flex-MIG: relative slowdown of a job on two or more leaves by its concentration, the
    /// largest number of its leaves on one GPU (they share that GPU's host link).
    pub concentration_slowdown: Concentration,
    /// Flex-MIG: relative speed-up of a one-leaf job on the double leaf (more memory).
    pub double_leaf_speedup: f64,
    /// Flex-MIG: how a job's leaves are picked.
    pub placement: Placement,
}

impl Default for Costs {
    fn default() -> Self {
        Costs {
            gpus: 2,
            gpus_per_node: 2,
            reconfig_s: 110.0,
            ckpt_save_s: 30.0,
            ckpt_load_s: 30.0,
            one_to_many_slowdown: 0.0,
            cross_gpu_slowdown: 0.02,
            concentration_slowdown: Concentration::measured(),
            double_leaf_speedup: 0.10,
            placement: Placement::Slurm,
        }
    }
}

impl Costs {
    /// The duration multiplier of a Flex-MIG job of two or more leaves with at most
    /// `concentration` of them on one GPU.
    pub fn many_leaves_factor(&self, concentration: u32) -> f64 {
        (1.0 + self.one_to_many_slowdown) * (1.0 + self.concentration_slowdown.at(concentration))
    }
}

/// The concentration slowdown: measured points (leaves of the job on its most loaded GPU,
/// relative slowdown), linear between them and proportional to the leaves outside them (the
/// communication time of a data-parallel step grows with the ranks sharing one GPU's link).
#[derive(Debug, Clone, PartialEq)]
pub struct Concentration {
    points: Vec<(u32, f64)>,
}

impl Concentration {
    /// The default: DDP training steps (ResNet-50 and a 6-layer transformer, bench/ddp_step.sh)
    /// on emulated leaves of H200s, packed on one GPU and spread over two, communication time
    /// over compute time by leaves per GPU, mean of the two models (`flexmig-sim calibrate`
    /// over bench/results/nccl/; simulator/README.md says which runs).
    pub fn measured() -> Self {
        Concentration { points: vec![(2, 0.055), (4, 0.113), (7, 0.218)] }
    }

    /// No placement cost at all.
    pub fn none() -> Self {
        Concentration { points: Vec::new() }
    }

    /// Points as (leaves on one GPU, slowdown).
    ///
    /// # Errors
    /// A zero leaf count, a count given twice, or a slowdown that is negative or not finite.
    pub fn new(mut points: Vec<(u32, f64)>) -> Result<Self, String> {
        points.sort_by_key(|p| p.0);
        for w in points.windows(2) {
            if w[0].0 == w[1].0 {
                return Err(format!("{} leaves per GPU given twice", w[0].0));
            }
        }
        for &(m, v) in &points {
            if m == 0 {
                return Err("leaves per GPU start at 1".into());
            }
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("the slowdown at {m} leaves per GPU must be a non-negative number, not {v}"));
            }
        }
        Ok(Concentration { points })
    }

    /// `LEAVES:SLOWDOWN,...`, e.g. `2:0.055,4:0.113,7:0.218`; `0` or an empty string: none.
    ///
    /// # Errors
    /// A malformed point, or what [`Concentration::new`] refuses.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s == "0" {
            return Ok(Self::none());
        }
        let mut points = Vec::new();
        for item in s.split(',') {
            let (m, v) = item
                .split_once(':')
                .ok_or_else(|| format!("`{item}` is not LEAVES:SLOWDOWN (e.g. 4:0.113, 11.3% slower with 4 leaves on one GPU)"))?;
            let m = m.trim().parse::<u32>().map_err(|_| format!("`{item}`: `{m}` is not a leaf count"))?;
            let v = v.trim().parse::<f64>().map_err(|_| format!("`{item}`: `{v}` is not a number"))?;
            points.push((m, v));
        }
        Self::new(points)
    }

    pub fn points(&self) -> &[(u32, f64)] {
        &self.points
    }

    /// The slowdown of a job with `m` of its leaves on its most loaded GPU.
    pub fn at(&self, m: u32) -> f64 {
        let (Some(&(m0, v0)), Some(&(m1, v1))) = (self.points.first(), self.points.last()) else {
            return 0.0;
        };
        let m = f64::from(m);
        if m <= f64::from(m0) {
            return v0 * m / f64::from(m0);
        }
        if m >= f64::from(m1) {
            return v1 * m / f64::from(m1);
        }
        for w in self.points.windows(2) {
            let ((a, va), (b, vb)) = ((f64::from(w[0].0), w[0].1), (f64::from(w[1].0), w[1].1));
            if m <= b {
                return va + (vb - va) * (m - a) / (b - a);
            }
        }
        v1
    }
}

impl std::fmt::Display for Concentration {
    /// The `--concentration-slowdown` form, `2:0.055,4:0.113,7:0.218`; `0` for none.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.points.is_empty() {
            return f.write_str("0");
        }
        let items: Vec<String> = self.points.iter().map(|(m, v)| format!("{m}:{v}")).collect();
        f.write_str(&items.join(","))
    }
}

impl std::str::FromStr for Concentration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

/// What an allocator hands a job.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Seconds between the decision and the job running (a drain in progress).
    pub start_delay: f64,
    /// Multiplier on the job's duration (slowdowns, speed-ups).
    pub factor: f64,
    /// Compute slices held.
    pub slices: u32,
    /// Running jobs that were drained for this grant (each delayed by `drain_delay`).
    pub drained: Vec<usize>,
    /// GPUs drained for this grant.
    pub drained_gpus: Vec<u32>,
    /// When the scheduler must look again (a reconfiguring GPU comes back).
    pub wake_at: Option<f64>,
}

/// A piece of GPU a job holds: memory slices `start..start+size` of `gpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub gpu: u32,
    pub start: u32,
    pub size: u32,
}

/// One operating mode's bookkeeping of who holds what.
pub trait Allocator {
    /// Err(reason) when no state of the cluster could ever run the job.
    fn admissible(&self, job: &Job) -> Result<(), String>;
    /// Places job `idx` now, or None when it has to wait.
    fn place(&mut self, idx: usize, job: &Job, now: f64) -> Option<Grant>;
    fn release(&mut self, idx: usize);
    /// What the job holds right now.
    fn holdings(&self, idx: usize) -> Vec<Hold>;
    /// Capacity units the job needs, and free units in the whole cluster now (for the
    /// external-fragmentation delay: enough free in total, but not where it could run).
    fn demand(&self, job: &Job) -> u32;
    fn free_for(&self, job: &Job, now: f64) -> u32;
    /// Extra seconds a drained job loses.
    fn drain_delay(&self) -> f64 {
        0.0
    }
    fn reconfigurations(&self) -> u64 {
        0
    }
}

/// Builds the allocator of a mode.
pub fn build(mode: Mode, geo: &Geometry, costs: &Costs, n_jobs: usize) -> Box<dyn Allocator> {
    match mode {
        Mode::Fm => Box::new(Flex::new(geo, costs, n_jobs)),
        Mode::Dm => Box::new(Dynamic::new(geo, costs, n_jobs)),
        Mode::Sm => Box::new(Static::new(geo, costs, n_jobs)),
    }
}

fn node_ranges(costs: &Costs) -> Vec<std::ops::Range<u32>> {
    let gpn = costs.gpus_per_node.max(1);
    (0..costs.gpus.div_ceil(gpn)).map(|n| n * gpn..((n + 1) * gpn).min(costs.gpus)).collect()
}

// ---------------------------------------------------------------------------------------
// Flex-MIG

/// How Flex-MIG picks a job's leaves on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// What flexmig on Slurm does: the Lua filters' typed request, then cons_tres's lowest free
    /// GRES indices over the GRES order the node helper writes.
    Slurm,
    /// An idealised spread: each leaf from the GPU of the node with the most free leaves of
    /// its kind; one-leaf jobs round-robin over the cluster's GPUs.
    MostFree,
}

impl Placement {
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Slurm => "slurm",
            Placement::MostFree => "most-free",
        }
    }
}

/// What the Slurm filters turn `--gres=mig:N` into (slurm-conf/flexmig_filter.lua and the cases
/// of slurm-conf/size_rule.cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// `mig:1` -> untyped `gpu:1`: the lowest free index of either kind.
    Any(u32),
    /// `mig:N` -> `gpu:<small>:N`.
    Small(u32),
    /// `mig:N` beyond a node's small leaves -> `gpu:<small>:S,gpu:<double>:N-S`.
    AllSmallPlusDouble(u32),
}

/// The first node whose free count is at least n, in O(log nodes): a max segment tree over the
/// nodes' free counts (Slurm's first-fit over node order on clusters of many nodes).
#[derive(Debug, Clone)]
struct FirstFit {
    size: usize,
    max: Vec<u32>,
}

impl FirstFit {
    fn new(values: &[u32]) -> Self {
        let size = values.len().next_power_of_two().max(1);
        let mut f = FirstFit { size, max: vec![0; 2 * size] };
        for (i, &v) in values.iter().enumerate() {
            f.set(i, v);
        }
        f
    }

    fn set(&mut self, i: usize, v: u32) {
        let mut k = self.size + i;
        self.max[k] = v;
        while k > 1 {
            k /= 2;
            self.max[k] = self.max[2 * k].max(self.max[2 * k + 1]);
        }
    }

    fn first_at_least(&self, n: u32) -> Option<usize> {
        if self.max[1] < n {
            return None;
        }
        let mut k = 1;
        while k < self.size {
            k = if self.max[2 * k] >= n { 2 * k } else { 2 * k + 1 };
        }
        Some(k - self.size)
    }
}

#[derive(Debug, Clone)]
struct FlexGpu {
    owner: Vec<u32>,
    free_small: u32,
    free_double: u32,
}

/// Flex-MIG: every GPU keeps its fixed leaves; a job of N leaves takes N of them on one node,
/// by the size-aware rule of the Slurm filters (slurm-conf/size_rule.cases): one-leaf jobs
/// prefer the double leaf, larger jobs take small leaves only, and a job larger than a node's
/// small leaves takes all of them plus doubles. Which leaves: [`Placement`].
#[derive(Debug)]
pub struct Flex {
    leaves: Vec<crate::geometry::Leaf>,
    gpus: Vec<FlexGpu>,
    nodes: Vec<std::ops::Range<u32>>,
    /// Per node, its GRES order: position k is the leaf with GRES index k, as (GPU of the
    /// cluster, leaf slot).
    order: Vec<Vec<(u32, usize)>>,
    /// Free small and double leaves per node, and what each node has in all.
    node_small: Vec<u32>,
    node_double: Vec<u32>,
    node_small_total: Vec<u32>,
    /// First fit over the nodes by free small leaves, and by free leaves of either kind.
    fit_small: FirstFit,
    fit_any: FirstFit,
    free_small: u32,
    free_double: u32,
    held: Vec<Vec<(u32, u8)>>,
    rr: u32,
    costs: Costs,
}

impl Flex {
    pub fn new(geo: &Geometry, costs: &Costs, n_jobs: usize) -> Self {
        let small = geo.leaves.iter().filter(|l| !l.double).count() as u32;
        let double = geo.leaves.len() as u32 - small;
        let nodes = node_ranges(costs);
        let order =
            nodes.iter().map(|r| geo.gres_order(r.len() as u32).into_iter().map(|(g, slot)| (r.start + g, slot)).collect()).collect();
        Flex {
            leaves: geo.leaves.clone(),
            gpus: vec![FlexGpu { owner: vec![NONE; geo.leaves.len()], free_small: small, free_double: double }; costs.gpus as usize],
            node_small: nodes.iter().map(|r| r.len() as u32 * small).collect(),
            node_double: nodes.iter().map(|r| r.len() as u32 * double).collect(),
            node_small_total: nodes.iter().map(|r| r.len() as u32 * small).collect(),
            fit_small: FirstFit::new(&nodes.iter().map(|r| r.len() as u32 * small).collect::<Vec<_>>()),
            fit_any: FirstFit::new(&nodes.iter().map(|r| r.len() as u32 * (small + double)).collect::<Vec<_>>()),
            nodes,
            order,
            free_small: small * costs.gpus,
            free_double: double * costs.gpus,
            held: vec![Vec::new(); n_jobs],
            rr: 0,
            costs: costs.clone(),
        }
    }

    fn node_of(&self, gpu: u32) -> usize {
        (gpu / self.costs.gpus_per_node.max(1)) as usize
    }

    fn take_slot(&mut self, idx: usize, gpu: u32, leaf: usize) {
        let double = self.leaves[leaf].double;
        let node = self.node_of(gpu);
        let g = &mut self.gpus[gpu as usize];
        debug_assert_eq!(g.owner[leaf], NONE, "leaf taken twice");
        g.owner[leaf] = idx as u32;
        if double {
            g.free_double -= 1;
            self.free_double -= 1;
            self.node_double[node] -= 1;
        } else {
            g.free_small -= 1;
            self.free_small -= 1;
            self.node_small[node] -= 1;
        }
        self.refile(node);
        self.held[idx].push((gpu, leaf as u8));
    }

    fn refile(&mut self, node: usize) {
        self.fit_small.set(node, self.node_small[node]);
        self.fit_any.set(node, self.node_small[node] + self.node_double[node]);
    }

    fn take(&mut self, idx: usize, gpu: u32, double: bool) {
        let g = &self.gpus[gpu as usize];
        let leaf =
            (0..self.leaves.len()).find(|&l| g.owner[l] == NONE && self.leaves[l].double == double).expect("counted free leaf exists");
        self.take_slot(idx, gpu, leaf);
    }

    fn request(&self, size: u32) -> Request {
        let small = self.node_small_total.first().copied().unwrap_or(0);
        match size {
            1 => Request::Any(1),
            n if n <= small => Request::Small(n),
            n => Request::AllSmallPlusDouble(n),
        }
    }

    /// Whether node `k` can hold the request now.
    fn fits(&self, k: usize, r: Request) -> bool {
        match r {
            Request::Any(n) => self.node_small[k] + self.node_double[k] >= n,
            Request::Small(n) => self.node_small[k] >= n,
            Request::AllSmallPlusDouble(n) => {
                self.node_small[k] == self.node_small_total[k] && self.node_small_total[k] + self.node_double[k] >= n
            }
        }
    }

    /// Slurm's placement: the first node (in node order) that can hold the request, and there
    /// the lowest free GRES indices of the requested types.
    fn place_slurm(&mut self, idx: usize, r: Request) -> bool {
        // Not enough free leaves in the whole cluster: no node to look at.
        let enough = match r {
            Request::Small(n) => self.free_small >= n,
            Request::Any(n) | Request::AllSmallPlusDouble(n) => self.free_small + self.free_double >= n,
        };
        if !enough {
            return false;
        }
        let node = match r {
            Request::Any(n) => self.fit_any.first_at_least(n),
            Request::Small(n) => self.fit_small.first_at_least(n),
            Request::AllSmallPlusDouble(_) => (0..self.nodes.len()).find(|&k| self.fits(k, r)),
        };
        let Some(node) = node else {
            return false;
        };
        let (mut small, mut double, mut any) = match r {
            Request::Any(n) => (0, 0, n),
            Request::Small(n) => (n, 0, 0),
            Request::AllSmallPlusDouble(n) => (self.node_small_total[node], n - self.node_small_total[node], 0),
        };
        for k in 0..self.order[node].len() {
            let (gpu, slot) = self.order[node][k];
            if self.gpus[gpu as usize].owner[slot] != NONE {
                continue;
            }
            let want = if any > 0 {
                any -= 1;
                true
            } else if self.leaves[slot].double && double > 0 {
                double -= 1;
                true
            } else if !self.leaves[slot].double && small > 0 {
                small -= 1;
                true
            } else {
                false
            };
            if want {
                self.take_slot(idx, gpu, slot);
            }
            if small + double + any == 0 {
                break;
            }
        }
        true
    }

    /// The idealised placement ([`Placement::MostFree`]).
    fn place_most_free(&mut self, idx: usize, r: Request) -> bool {
        let n = self.gpus.len() as u32;
        match r {
            Request::Any(_) => {
                let double = self.free_double > 0;
                if !double && self.free_small == 0 {
                    return false;
                }
                let free = |g: &FlexGpu| if double { g.free_double } else { g.free_small };
                let Some(gpu) = (0..n).map(|i| (self.rr + i) % n).find(|&g| free(&self.gpus[g as usize]) > 0) else {
                    return false;
                };
                self.take(idx, gpu, double);
                self.rr = (gpu + 1) % n;
            }
            Request::Small(size) => {
                // The node that fits most tightly keeps bigger holes for bigger jobs.
                let Some(node) = (0..self.nodes.len()).filter(|&k| self.node_small[k] >= size).min_by_key(|&k| self.node_small[k]) else {
                    return false;
                };
                for _ in 0..size {
                    let gpu = self.nodes[node]
                        .clone()
                        .max_by_key(|&g| (self.gpus[g as usize].free_small, std::cmp::Reverse(g)))
                        .expect("node has GPUs");
                    self.take(idx, gpu, false);
                }
            }
            Request::AllSmallPlusDouble(size) => {
                let Some(node) = (0..self.nodes.len()).find(|&k| self.fits(k, r)) else {
                    return false;
                };
                for i in 0..size {
                    let double = i >= self.node_small_total[node];
                    let gpu = self.nodes[node]
                        .clone()
                        .max_by_key(|&g| {
                            let gg = &self.gpus[g as usize];
                            (if double { gg.free_double } else { gg.free_small }, std::cmp::Reverse(g))
                        })
                        .expect("node has GPUs");
                    self.take(idx, gpu, double);
                }
            }
        }
        true
    }

    /// The largest number of job `idx`'s leaves on one GPU.
    pub fn concentration(&self, idx: usize) -> u32 {
        let held = &self.held[idx];
        let Some(&(first, _)) = held.first() else { return 0 };
        // A job's leaves are on one node: count per GPU of that node.
        let node = &self.nodes[self.node_of(first)];
        let mut per_gpu = vec![0u32; node.len()];
        let mut most = 0;
        for &(g, _) in held {
            let c = &mut per_gpu[(g - node.start) as usize];
            *c += 1;
            most = most.max(*c);
        }
        most
    }

    /// The node and the Slurm GRES indices of the leaves job `idx` holds, ascending.
    pub fn gres_indices(&self, idx: usize) -> Option<(usize, Vec<u32>)> {
        let &(gpu, _) = self.held[idx].first()?;
        let node = self.node_of(gpu);
        let mut out: Vec<u32> = self.held[idx]
            .iter()
            .map(|&(g, l)| {
                self.order[node].iter().position(|&(og, ol)| og == g && ol == l as usize).expect("a node's leaf has an index") as u32
            })
            .collect();
        out.sort_unstable();
        Some((node, out))
    }

    fn node_double_total(&self, node: usize) -> u32 {
        let per_gpu = self.leaves.iter().filter(|l| l.double).count() as u32;
        self.nodes[node].len() as u32 * per_gpu
    }
}

impl Allocator for Flex {
    fn admissible(&self, job: &Job) -> Result<(), String> {
        let most = (0..self.nodes.len()).map(|k| self.node_small_total[k] + self.node_double_total(k)).max().unwrap_or(0);
        if job.size > most {
            return Err(format!("job {} asks for {} leaves; one node has {most}", job.id, job.size));
        }
        Ok(())
    }

    fn place(&mut self, idx: usize, job: &Job, _now: f64) -> Option<Grant> {
        let r = self.request(job.size);
        let placed = match self.costs.placement {
            Placement::Slurm => self.place_slurm(idx, r),
            Placement::MostFree => self.place_most_free(idx, r),
        };
        if !placed {
            return None;
        }
        let factor = if job.size == 1 {
            let (_, leaf) = self.held[idx][0];
            if self.leaves[leaf as usize].double {
                1.0 - self.costs.double_leaf_speedup
            } else {
                1.0
            }
        } else {
            self.costs.many_leaves_factor(self.concentration(idx))
        };
        Some(Grant { factor, slices: job.size, ..Grant::default() })
    }

    fn release(&mut self, idx: usize) {
        for (gpu, leaf) in std::mem::take(&mut self.held[idx]) {
            let node = self.node_of(gpu);
            let g = &mut self.gpus[gpu as usize];
            g.owner[leaf as usize] = NONE;
            if self.leaves[leaf as usize].double {
                g.free_double += 1;
                self.free_double += 1;
                self.node_double[node] += 1;
            } else {
                g.free_small += 1;
                self.free_small += 1;
                self.node_small[node] += 1;
            }
            self.refile(node);
        }
    }

    fn holdings(&self, idx: usize) -> Vec<Hold> {
        self.held[idx]
            .iter()
            .map(|&(gpu, l)| Hold { gpu, start: self.leaves[l as usize].start, size: self.leaves[l as usize].size })
            .collect()
    }

    fn demand(&self, job: &Job) -> u32 {
        job.size
    }

    fn free_for(&self, job: &Job, _now: f64) -> u32 {
        match self.request(job.size) {
            Request::Small(_) => self.free_small,
            Request::Any(_) | Request::AllSmallPlusDouble(_) => self.free_small + self.free_double,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Dynamic-MIG

#[derive(Debug, Clone)]
struct DynGpu {
    /// (profile, start, job)
    insts: Vec<(u8, u32, u32)>,
    mask: u32,
    compute_used: u32,
    inference: u32,
    locked_until: f64,
    /// Bit p: a profile-p instance fits now without touching anything.
    fit: u32,
    /// Bit p: a profile-p instance fits after repacking everything (a drain).
    fit_drained: u32,
    /// What this GPU is filed under in the candidate sets: (fit mask, compute used) and
    /// (drain mask, instances).
    filed_fit: (u32, u32),
    filed_drain: (u32, u32),
}

/// Dynamic-MIG: each job gets the exact instance (a job larger than one GPU gets equal
/// parts on distinct GPUs of one node); where the placement tree blocks it, a GPU that runs
/// no inference is drained, repacked and reconfigured.
#[derive(Debug)]
pub struct Dynamic {
    geo: Geometry,
    gpus: Vec<DynGpu>,
    nodes: Vec<std::ops::Range<u32>>,
    held: Vec<Vec<u32>>,
    inference: Vec<bool>,
    pack_memo: HashMap<u64, Option<Vec<u32>>>,
    /// Per profile: GPUs where it fits now, by (free compute slices after placing it, gpu),
    /// so best fit is the first open one.
    fit_sets: Vec<BTreeSet<(u32, u32)>>,
    /// Per profile: GPUs running no inference where it fits after a drain, by (instances, gpu).
    drain_sets: Vec<BTreeSet<(u32, u32)>>,
    /// GPUs that were being reconfigured at the last placement.
    locked: Vec<u32>,
    free_compute: u32,
    costs: Costs,
    reconfigs: u64,
}

impl Dynamic {
    pub fn new(geo: &Geometry, costs: &Costs, n_jobs: usize) -> Self {
        let gpu = DynGpu {
            insts: Vec::new(),
            mask: 0,
            compute_used: 0,
            inference: 0,
            locked_until: f64::NEG_INFINITY,
            fit: 0,
            fit_drained: 0,
            filed_fit: (0, 0),
            filed_drain: (0, 0),
        };
        let mut d = Dynamic {
            geo: geo.clone(),
            gpus: vec![gpu; costs.gpus as usize],
            nodes: node_ranges(costs),
            held: vec![Vec::new(); n_jobs],
            inference: vec![false; n_jobs],
            pack_memo: HashMap::new(),
            fit_sets: vec![BTreeSet::new(); geo.profiles.len()],
            drain_sets: vec![BTreeSet::new(); geo.profiles.len()],
            locked: Vec::new(),
            free_compute: geo.compute * costs.gpus,
            costs: costs.clone(),
            reconfigs: 0,
        };
        for g in 0..d.gpus.len() {
            d.refresh(g);
        }
        d
    }

    /// (profile, parts) of a request.
    fn shape(&self, size: u32) -> Option<(usize, u32)> {
        let parts = size.div_ceil(self.geo.compute);
        let p = self.geo.exact_profile(size.div_ceil(parts))?;
        Some((p, parts))
    }

    fn pack(&mut self, profs: &[usize]) -> Option<Vec<u32>> {
        let mut counts = [0u8; 16];
        for &p in profs {
            counts[p.min(15)] += 1;
        }
        let key = counts.iter().enumerate().fold(0u64, |k, (i, &c)| k | (u64::from(c) << (4 * i)));
        let geo = &self.geo;
        let layout = self.pack_memo.entry(key).or_insert_with(|| {
            let mut sorted = profs.to_vec();
            sorted.sort_unstable();
            // Starts in ascending profile order; handed out per profile below.
            geo.pack(&sorted)
        });
        let layout = layout.clone()?;
        // Hand out the layout's starts to the requested order, profile by profile.
        let mut sorted: Vec<usize> = profs.to_vec();
        sorted.sort_unstable();
        let mut next: HashMap<usize, usize> = HashMap::new();
        let first = |p: usize| sorted.iter().position(|&q| q == p).expect("present");
        Some(
            profs
                .iter()
                .map(|&p| {
                    let k = next.entry(p).or_insert(0);
                    let s = layout[first(p) + *k];
                    *k += 1;
                    s
                })
                .collect(),
        )
    }

    fn refresh(&mut self, g: usize) {
        let (mask, used) = {
            let gpu = &self.gpus[g];
            (gpu.mask, gpu.compute_used)
        };
        let mut fit = 0;
        let mut fit_drained = 0;
        let existing: Vec<usize> = self.gpus[g].insts.iter().map(|i| i.0 as usize).collect();
        for p in 0..self.geo.profiles.len() {
            let prof = &self.geo.profiles[p];
            let count = existing.iter().filter(|&&q| q == p).count() as u32;
            if used + prof.compute > self.geo.compute || count >= prof.max {
                continue;
            }
            if prof.placements.iter().any(|&s| mask & span(s, prof.mem) == 0) {
                fit |= 1 << p;
            } else if !existing.is_empty() {
                let mut want = existing.clone();
                want.push(p);
                if self.pack(&want).is_some() {
                    fit_drained |= 1 << p;
                }
            }
        }
        self.gpus[g].fit = fit;
        self.gpus[g].fit_drained = fit_drained;
        self.file(g);
    }

    /// Re-files GPU `g` in the per-profile candidate sets.
    fn file(&mut self, g: usize) {
        let gu = g as u32;
        let c = self.geo.compute;
        let (old_fit, old_used) = self.gpus[g].filed_fit;
        let (old_drain, old_n) = self.gpus[g].filed_drain;
        for (p, prof) in self.geo.profiles.iter().enumerate() {
            if old_fit & (1 << p) != 0 {
                self.fit_sets[p].remove(&(c - old_used - prof.compute, gu));
            }
            if old_drain & (1 << p) != 0 {
                self.drain_sets[p].remove(&(old_n, gu));
            }
        }
        let gpu = &mut self.gpus[g];
        let drain = if gpu.inference == 0 { gpu.fit_drained } else { 0 };
        let n = gpu.insts.len() as u32;
        gpu.filed_fit = (gpu.fit, gpu.compute_used);
        gpu.filed_drain = (drain, n);
        for (p, prof) in self.geo.profiles.iter().enumerate() {
            if gpu.fit & (1 << p) != 0 {
                self.fit_sets[p].insert((c - gpu.compute_used - prof.compute, gu));
            }
            if drain & (1 << p) != 0 {
                self.drain_sets[p].insert((n, gu));
            }
        }
    }

    /// Picks `parts` GPUs in `range` for profile `p`: (gpu, needs drain).
    fn pick(&self, range: std::ops::Range<u32>, p: usize, parts: u32, now: f64) -> Option<Vec<(u32, bool)>> {
        let bit = 1u32 << p;
        let free_after = |g: &DynGpu| self.geo.compute - g.compute_used - self.geo.profiles[p].compute;
        let mut chosen: Vec<(u32, bool)> = Vec::new();
        let open = |g: &DynGpu| g.locked_until <= now;
        if parts == 1 {
            // Best fit: the open GPU left with the fewest free slices; else the open GPU
            // whose drain disturbs the fewest jobs.
            let open_in = |&&(_, g): &&(u32, u32)| range.contains(&g) && open(&self.gpus[g as usize]);
            if let Some(&(_, g)) = self.fit_sets[p].iter().find(open_in) {
                return Some(vec![(g, false)]);
            }
            return self.drain_sets[p].iter().find(open_in).map(|&(_, g)| vec![(g, true)]);
        } else {
            let mut fits: Vec<u32> =
                range.clone().filter(|&g| open(&self.gpus[g as usize]) && self.gpus[g as usize].fit & bit != 0).collect();
            fits.sort_by_key(|&g| (free_after(&self.gpus[g as usize]), g));
            chosen.extend(fits.into_iter().take(parts as usize).map(|g| (g, false)));
            if chosen.len() == parts as usize {
                return Some(chosen);
            }
        }
        // Drain: only GPUs that run no inference; disturb the fewest jobs.
        let mut drains: Vec<u32> = range
            .filter(|&g| {
                let d = &self.gpus[g as usize];
                open(d) && d.inference == 0 && d.fit_drained & bit != 0 && !chosen.iter().any(|&(c, _)| c == g)
            })
            .collect();
        drains.sort_by_key(|&g| (self.gpus[g as usize].insts.len(), g));
        for g in drains.into_iter().take(parts as usize - chosen.len()) {
            chosen.push((g, true));
        }
        (chosen.len() == parts as usize).then_some(chosen)
    }

    fn add_inst(&mut self, g: usize, p: usize, start: u32, idx: usize, inference: bool) {
        let prof = &self.geo.profiles[p];
        let gpu = &mut self.gpus[g];
        debug_assert_eq!(gpu.mask & span(start, prof.mem), 0, "double-booked memory slices");
        gpu.insts.push((p as u8, start, idx as u32));
        gpu.mask |= span(start, prof.mem);
        gpu.compute_used += prof.compute;
        if inference {
            gpu.inference += 1;
        }
        self.held[idx].push(g as u32);
    }
}

impl Allocator for Dynamic {
    fn admissible(&self, job: &Job) -> Result<(), String> {
        let (_, parts) = self.shape(job.size).ok_or_else(|| format!("job {}: no MIG profile of {} slices", job.id, job.size))?;
        let most = self.nodes.iter().map(|r| r.len() as u32).max().unwrap_or(0);
        if parts > most {
            return Err(format!("job {} needs {parts} GPUs of one node; nodes have {most}", job.id));
        }
        Ok(())
    }

    fn place(&mut self, idx: usize, job: &Job, now: f64) -> Option<Grant> {
        let (p, parts) = self.shape(job.size)?;
        if self.fit_sets[p].len() + self.drain_sets[p].len() < parts as usize {
            return None;
        }
        self.locked.retain(|&g| self.gpus[g as usize].locked_until > now);
        let picked = if parts == 1 {
            self.pick(0..self.costs.gpus, p, 1, now)
        } else {
            // One node; prefer a node where no drain is needed.
            let mut best: Option<Vec<(u32, bool)>> = None;
            for r in self.nodes.clone() {
                if let Some(c) = self.pick(r, p, parts, now) {
                    let drains = c.iter().filter(|x| x.1).count();
                    if !matches!(&best, Some(b) if drains >= b.iter().filter(|x| x.1).count()) {
                        best = Some(c);
                    }
                    if drains == 0 {
                        break;
                    }
                }
            }
            best
        }?;
        let inference = job.kind == Kind::Inference;
        self.inference[idx] = inference;
        self.free_compute -= self.geo.profiles[p].compute * parts;
        let mut grant = Grant { factor: 1.0, slices: self.geo.profiles[p].compute * parts, ..Grant::default() };
        if parts > 1 {
            grant.factor = 1.0 + self.costs.cross_gpu_slowdown;
        }
        for (g, drain) in picked {
            let gu = g as usize;
            if drain {
                let profs: Vec<usize> = self.gpus[gu].insts.iter().map(|i| i.0 as usize).chain([p]).collect();
                let starts = self.pack(&profs).expect("fit_drained said it packs");
                let gpu = &mut self.gpus[gu];
                gpu.mask = 0;
                for (inst, &s) in gpu.insts.iter_mut().zip(&starts) {
                    inst.1 = s;
                    gpu.mask |= span(s, self.geo.profiles[inst.0 as usize].mem);
                    if !grant.drained.contains(&(inst.2 as usize)) {
                        grant.drained.push(inst.2 as usize);
                    }
                }
                gpu.locked_until = now + self.costs.reconfig_s;
                self.locked.push(g);
                self.add_inst(gu, p, *starts.last().expect("new instance"), idx, inference);
                self.reconfigs += 1;
                grant.drained_gpus.push(g);
                grant.start_delay = self.costs.reconfig_s;
                grant.wake_at = Some(now + self.costs.reconfig_s);
            } else {
                let s = self.geo.best_start(self.gpus[gu].mask, p).expect("fit said it fits");
                self.add_inst(gu, p, s, idx, inference);
            }
            self.refresh(gu);
        }
        Some(grant)
    }

    fn release(&mut self, idx: usize) {
        for g in std::mem::take(&mut self.held[idx]) {
            let gu = g as usize;
            let geo = &self.geo;
            let gpu = &mut self.gpus[gu];
            let mut removed = 0;
            let mut freed = 0;
            gpu.insts.retain(|&(p, s, j)| {
                if j as usize == idx {
                    gpu.mask &= !span(s, geo.profiles[p as usize].mem);
                    gpu.compute_used -= geo.profiles[p as usize].compute;
                    freed += geo.profiles[p as usize].compute;
                    removed += 1;
                    false
                } else {
                    true
                }
            });
            if self.inference[idx] {
                gpu.inference -= removed;
            }
            self.free_compute += freed;
            self.refresh(gu);
        }
    }

    fn holdings(&self, idx: usize) -> Vec<Hold> {
        self.held[idx]
            .iter()
            .flat_map(|&g| {
                self.gpus[g as usize].insts.iter().filter(move |i| i.2 as usize == idx).map(move |&(p, start, _)| Hold {
                    gpu: g,
                    start,
                    size: self.geo.profiles[p as usize].mem,
                })
            })
            .collect()
    }

    fn demand(&self, job: &Job) -> u32 {
        self.shape(job.size).map_or(job.size, |(p, parts)| self.geo.profiles[p].compute * parts)
    }

    fn free_for(&self, _job: &Job, now: f64) -> u32 {
        let locked: u32 = self
            .locked
            .iter()
            .map(|&g| &self.gpus[g as usize])
            .filter(|g| g.locked_until > now)
            .map(|g| self.geo.compute - g.compute_used)
            .sum();
        self.free_compute - locked
    }

    fn drain_delay(&self) -> f64 {
        self.costs.reconfig_s + self.costs.ckpt_save_s + self.costs.ckpt_load_s
    }

    fn reconfigurations(&self) -> u64 {
        self.reconfigs
    }
}

// ---------------------------------------------------------------------------------------
// Static-MIG

/// Static-MIG: every GPU fixed as 1g + 2g + 4g; a job takes the smallest idle instance
/// that covers it (a larger one may serve a smaller request).
#[derive(Debug)]
pub struct Static {
    /// (compute, start, memory) per slot, ascending compute.
    slots: Vec<(u32, u32, u32)>,
    owner: Vec<Vec<u32>>,
    free_per_slot: Vec<u32>,
    free_compute: u32,
    held: Vec<Option<(u32, u8)>>,
    small_mem: u32,
    double_leaf_speedup: f64,
}

impl Static {
    pub fn new(geo: &Geometry, costs: &Costs, n_jobs: usize) -> Self {
        let mut slots: Vec<(u32, u32, u32)> =
            geo.static_layout.iter().map(|&(p, s)| (geo.profiles[p].compute, s, geo.profiles[p].mem)).collect();
        slots.sort_unstable();
        Static {
            owner: vec![vec![NONE; slots.len()]; costs.gpus as usize],
            free_per_slot: vec![costs.gpus; slots.len()],
            free_compute: slots.iter().map(|s| s.0).sum::<u32>() * costs.gpus,
            slots,
            held: vec![None; n_jobs],
            small_mem: geo.small_mem(),
            double_leaf_speedup: costs.double_leaf_speedup,
        }
    }
}

impl Allocator for Static {
    fn admissible(&self, job: &Job) -> Result<(), String> {
        let most = self.slots.last().map_or(0, |s| s.0);
        if job.size > most {
            return Err(format!("job {} asks for {} slices; the largest static instance has {most}", job.id, job.size));
        }
        Ok(())
    }

    fn place(&mut self, idx: usize, job: &Job, _now: f64) -> Option<Grant> {
        let slot = (0..self.slots.len()).find(|&k| self.slots[k].0 >= job.size && self.free_per_slot[k] > 0)?;
        let gpu = self.owner.iter().position(|o| o[slot] == NONE).expect("counted free slot exists");
        self.owner[gpu][slot] = idx as u32;
        self.free_per_slot[slot] -= 1;
        self.free_compute -= self.slots[slot].0;
        self.held[idx] = Some((gpu as u32, slot as u8));
        let (compute, _, mem) = self.slots[slot];
        let factor = if job.size == 1 && compute == 1 && mem > self.small_mem { 1.0 - self.double_leaf_speedup } else { 1.0 };
        Some(Grant { factor, slices: compute, ..Grant::default() })
    }

    fn release(&mut self, idx: usize) {
        if let Some((gpu, slot)) = self.held[idx].take() {
            self.owner[gpu as usize][slot as usize] = NONE;
            self.free_per_slot[slot as usize] += 1;
            self.free_compute += self.slots[slot as usize].0;
        }
    }

    fn holdings(&self, idx: usize) -> Vec<Hold> {
        self.held[idx]
            .iter()
            .map(|&(gpu, slot)| Hold { gpu, start: self.slots[slot as usize].1, size: self.slots[slot as usize].2 })
            .collect()
    }

    fn demand(&self, job: &Job) -> u32 {
        job.size
    }

    fn free_for(&self, _job: &Job, _now: f64) -> u32 {
        self.free_compute
    }
}
