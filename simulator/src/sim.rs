//! The event-driven engine: arrivals, completions and reconfiguration wake-ups in time
//! order, one scheduling pass per distinct event time, and the metrics.

use crate::alloc::{build, Allocator, Costs, Hold, Mode};
use crate::geometry::Geometry;
use crate::trace::Job;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Queue discipline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheduler {
    /// Strict first come, first served: only the oldest waiting job may start.
    Fifo,
    /// Aggressive backfilling: any of the first `window` waiting jobs that fits starts,
    /// in queue order, without reservations.
    Backfill,
}

impl Scheduler {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheduler::Fifo => "fifo",
            Scheduler::Backfill => "backfill",
        }
    }
}

/// Everything a run needs besides the trace.
#[derive(Debug, Clone)]
pub struct Config {
    pub scheduler: Scheduler,
    /// Waiting jobs backfilling examines per pass (14 in the paper).
    pub backfill_window: usize,
    pub costs: Costs,
    /// Keep per-job holdings over time (for the invariant tests); costs memory.
    pub record: bool,
}

/// The summary of one run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metrics {
    pub jobs: usize,
    pub makespan_s: f64,
    /// Job completion time as an admin sees it: end minus submission, waiting included.
    pub avg_jct_s: f64,
    pub avg_wait_s: f64,
    /// Execution time: end minus start (slowdowns and drains included, waiting excluded); what
    /// the Flex-MIG paper calls JCT.
    pub avg_run_s: f64,
    /// Waiting at the head of the queue while the cluster had enough free capacity in total.
    pub avg_ext_frag_delay_s: f64,
    /// Compute-slice-seconds held by jobs over compute slices times makespan.
    pub utilization: f64,
    /// GPU drains (Dynamic-MIG).
    pub reconfigurations: u64,
    /// Times a running job was checkpointed and paused by a drain.
    pub drained_jobs: u64,
}

/// What happened to one job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// When the scheduler gave it resources.
    pub alloc_s: f64,
    /// When it began running (after a reconfiguration, if one was needed).
    pub start_s: f64,
    pub end_s: f64,
    pub slices: u32,
    pub ext_frag_s: f64,
    pub drains: u32,
}

/// A stretch of time a job held memory slices `start..start+size` of `gpu`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    pub job: usize,
    pub hold: Hold,
    pub from_s: f64,
    pub to_s: f64,
}

/// A drain: at `at_s` GPU `gpu` was emptied to make room for job `for_job`; `jobs` were
/// running on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Drain {
    pub at_s: f64,
    pub gpu: u32,
    pub for_job: usize,
    pub jobs: Vec<usize>,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Run {
    pub metrics: Metrics,
    pub outcomes: Vec<Outcome>,
    pub segments: Vec<Segment>,
    pub drains: Vec<Drain>,
}

/// Seconds, totally ordered for the event heap.
#[derive(Debug, Clone, Copy)]
struct Time(f64);
impl PartialEq for Time {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for Time {}
impl PartialOrd for Time {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Time {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    End { job: u32, version: u32 },
    Wake,
}

/// Simulates `jobs` under one mode. Err(reason) when the mode cannot run some job at all
/// (Static-MIG and jobs larger than 4 slices).
///
/// # Errors
/// The first job the mode cannot admit, with the reason.
pub fn simulate(jobs: &[Job], geo: &Geometry, mode: Mode, cfg: &Config) -> Result<Run, String> {
    let mut alloc = build(mode, geo, &cfg.costs, jobs.len());
    for j in jobs {
        alloc.admissible(j)?;
    }
    Ok(Engine::new(jobs, alloc.as_mut(), cfg).run(geo))
}

struct Engine<'a> {
    jobs: &'a [Job],
    alloc: &'a mut dyn Allocator,
    cfg: &'a Config,
    heap: BinaryHeap<Reverse<(Time, Event)>>,
    queue: VecDeque<usize>,
    out: Vec<Outcome>,
    version: Vec<u32>,
    open: Vec<Vec<usize>>,
    segments: Vec<Segment>,
    drains: Vec<Drain>,
    busy_slice_s: f64,
    drained_jobs: u64,
}

impl<'a> Engine<'a> {
    fn new(jobs: &'a [Job], alloc: &'a mut dyn Allocator, cfg: &'a Config) -> Self {
        Engine {
            jobs,
            alloc,
            cfg,
            heap: BinaryHeap::new(),
            queue: VecDeque::new(),
            out: vec![Outcome::default(); jobs.len()],
            version: vec![0; jobs.len()],
            open: if cfg.record { vec![Vec::new(); jobs.len()] } else { Vec::new() },
            segments: Vec::new(),
            drains: Vec::new(),
            busy_slice_s: 0.0,
            drained_jobs: 0,
        }
    }

    fn run(mut self, geo: &Geometry) -> Run {
        let mut order: Vec<usize> = (0..self.jobs.len()).collect();
        order.sort_by(|&a, &b| self.jobs[a].submit_s.total_cmp(&self.jobs[b].submit_s));
        let mut next = 0;
        let mut last_t = 0.0;
        let mut blocked: Option<usize> = None;
        loop {
            let t_arr = order.get(next).map(|&i| self.jobs[i].submit_s);
            let t_ev = self.heap.peek().map(|Reverse((t, _))| t.0);
            let t = match (t_arr, t_ev) {
                (None, None) => break,
                (Some(a), None) => a,
                (None, Some(e)) => e,
                (Some(a), Some(e)) => a.min(e),
            };
            if let Some(h) = blocked {
                self.out[h].ext_frag_s += t - last_t;
            }
            last_t = t;
            while let Some(&Reverse((Time(te), ev))) = self.heap.peek() {
                if te > t {
                    break;
                }
                self.heap.pop();
                if let Event::End { job, version } = ev {
                    let j = job as usize;
                    if version == self.version[j] {
                        self.finish(j, t);
                    }
                }
            }
            while next < order.len() && self.jobs[order[next]].submit_s <= t {
                self.queue.push_back(order[next]);
                next += 1;
            }
            self.pass(t);
            blocked = self.queue.front().copied().filter(|&h| {
                let job = &self.jobs[h];
                self.alloc.free_for(job, t) >= self.alloc.demand(job)
            });
        }
        let metrics = self.metrics(geo);
        Run { metrics, outcomes: self.out, segments: self.segments, drains: self.drains }
    }

    fn pass(&mut self, t: f64) {
        match self.cfg.scheduler {
            Scheduler::Fifo => {
                while let Some(&h) = self.queue.front() {
                    if !self.try_start(h, t) {
                        break;
                    }
                    self.queue.pop_front();
                }
            }
            Scheduler::Backfill => {
                let mut i = 0;
                while i < self.queue.len() && i < self.cfg.backfill_window {
                    if self.try_start(self.queue[i], t) {
                        self.queue.remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
        }
    }

    fn try_start(&mut self, j: usize, t: f64) -> bool {
        let job = &self.jobs[j];
        let Some(g) = self.alloc.place(j, job, t) else {
            return false;
        };
        let o = &mut self.out[j];
        o.alloc_s = t;
        o.start_s = t + g.start_delay;
        o.end_s = o.start_s + job.duration_s * g.factor;
        o.slices = g.slices;
        let end = o.end_s;
        self.heap.push(Reverse((Time(end), Event::End { job: j as u32, version: 0 })));
        if let Some(w) = g.wake_at {
            self.heap.push(Reverse((Time(w), Event::Wake)));
        }
        let delay = self.alloc.drain_delay();
        for &d in &g.drained {
            let o = &mut self.out[d];
            o.end_s += delay;
            o.drains += 1;
            self.version[d] += 1;
            self.drained_jobs += 1;
            self.heap.push(Reverse((Time(o.end_s), Event::End { job: d as u32, version: self.version[d] })));
        }
        if self.cfg.record {
            for &gpu in &g.drained_gpus {
                let jobs = g.drained.iter().copied().filter(|&d| self.open[d].iter().any(|&s| self.segments[s].hold.gpu == gpu)).collect();
                self.drains.push(Drain { at_s: t, gpu, for_job: j, jobs });
            }
            for &d in &g.drained {
                self.close(d, t);
                self.open_holdings(d, t);
            }
            self.open_holdings(j, t);
        }
        true
    }

    fn open_holdings(&mut self, j: usize, t: f64) {
        for hold in self.alloc.holdings(j) {
            self.open[j].push(self.segments.len());
            self.segments.push(Segment { job: j, hold, from_s: t, to_s: f64::INFINITY });
        }
    }

    fn close(&mut self, j: usize, t: f64) {
        for s in std::mem::take(&mut self.open[j]) {
            self.segments[s].to_s = t;
        }
    }

    fn finish(&mut self, j: usize, t: f64) {
        self.alloc.release(j);
        let o = &self.out[j];
        self.busy_slice_s += f64::from(o.slices) * (t - o.alloc_s);
        if self.cfg.record {
            self.close(j, t);
        }
    }

    fn metrics(&self, geo: &Geometry) -> Metrics {
        let n = self.jobs.len();
        if n == 0 {
            return Metrics {
                jobs: 0,
                makespan_s: 0.0,
                avg_jct_s: 0.0,
                avg_wait_s: 0.0,
                avg_run_s: 0.0,
                avg_ext_frag_delay_s: 0.0,
                utilization: 0.0,
                reconfigurations: 0,
                drained_jobs: 0,
            };
        }
        let first = self.jobs.iter().map(|j| j.submit_s).fold(f64::INFINITY, f64::min);
        let last = self.out.iter().map(|o| o.end_s).fold(f64::NEG_INFINITY, f64::max);
        let makespan = last - first;
        let nf = n as f64;
        let mean = |f: &dyn Fn(usize) -> f64| (0..n).map(f).sum::<f64>() / nf;
        let capacity = f64::from(geo.compute * self.cfg.costs.gpus) * makespan;
        Metrics {
            jobs: n,
            makespan_s: makespan,
            avg_jct_s: mean(&|i| self.out[i].end_s - self.jobs[i].submit_s),
            avg_wait_s: mean(&|i| self.out[i].start_s - self.jobs[i].submit_s),
            avg_run_s: mean(&|i| self.out[i].end_s - self.out[i].start_s),
            avg_ext_frag_delay_s: mean(&|i| self.out[i].ext_frag_s),
            utilization: if capacity > 0.0 { self.busy_slice_s / capacity } else { 0.0 },
            reconfigurations: self.alloc.reconfigurations(),
            drained_jobs: self.drained_jobs,
        }
    }
}
