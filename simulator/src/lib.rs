//! flexmig-sim: a trace-driven simulator of one GPU cluster under three MIG operating modes:
//! Flex-MIG (fixed leaves, one-to-many), Dynamic-MIG (exact instances on demand, draining
//! when the placement tree blocks) and Static-MIG (fixed 1g + 2g + 4g).
//!
//! * [`geometry`]: MIG trees and legal placements from leaf-model's recorded tables.
//! * [`trace`]: synthetic workloads (the paper's Table 2), the CSV trace format, `sacct` input.
//! * [`alloc`]: the three modes' bookkeeping.
//! * [`sim`]: the event-driven engine, the FIFO and backfilling schedulers, the metrics.
//! * [`calibrate`]: the concentration slowdown from measured DDP steps.
//! * [`report`]: the Figure 7/8-style comparison: table and SVG plots.

pub mod alloc;
pub mod calibrate;
pub mod geometry;
pub mod report;
pub mod sim;
pub mod trace;

use alloc::{Mode, Placement};
use geometry::Geometry;
use serde::ser::{Serialize, SerializeMap, Serializer};
use sim::{simulate, Config, Metrics, Scheduler};
use std::collections::BTreeMap;
use trace::Job;

/// The jobs that both Flex-MIG and Dynamic-MIG can run on this cluster (Static-MIG's
/// limit of 4 slices is a property of the mode, so it is not applied here).
pub fn drop_oversized(jobs: Vec<Job>, geo: &Geometry, cfg: &Config) -> Vec<Job> {
    let fm = alloc::build(Mode::Fm, geo, &cfg.costs, 0);
    let dm = alloc::build(Mode::Dm, geo, &cfg.costs, 0);
    jobs.into_iter().filter(|j| fm.admissible(j).is_ok() && dm.admissible(j).is_ok()).collect()
}

/// One trace under all three modes: what `compare` prints. Serialises as the fixed
/// `compare --json` object: `"FM"`, `"DM"`, `"SM"` (the metrics, or `null` where the mode
/// cannot run some job of the trace), `"not_admissible"` (the reason, per null mode) and
/// `"config"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Per mode, in [`Mode::ALL`] order: the run's metrics, or why the mode cannot run the trace.
    pub modes: [Result<Metrics, String>; 3],
    pub config: CompareConfig,
}

impl Comparison {
    /// Mode `m`'s metrics, or why it cannot run the trace.
    pub fn mode(&self, m: Mode) -> Result<&Metrics, &str> {
        self.modes[m as usize].as_ref().map_err(String::as_str)
    }
}

impl Serialize for Comparison {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(Mode::ALL.len() + 2))?;
        for m in Mode::ALL {
            map.serialize_entry(m.key(), &self.mode(m).ok())?;
        }
        let why: BTreeMap<&str, &str> = Mode::ALL.iter().filter_map(|&m| Some((m.key(), self.mode(m).err()?))).collect();
        map.serialize_entry("not_admissible", &why)?;
        map.serialize_entry("config", &self.config)?;
        map.end()
    }
}

/// The parameters a comparison ran with, `"config"` in `compare --json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CompareConfig {
    pub model: String,
    pub gpus: u32,
    pub gpus_per_node: u32,
    #[serde(serialize_with = "scheduler_name")]
    pub scheduler: Scheduler,
    pub backfill_window: usize,
    /// Jobs in the trace.
    pub jobs: usize,
    pub reconfig_s: f64,
    pub ckpt_save_s: f64,
    pub ckpt_load_s: f64,
    pub one_to_many_slowdown: f64,
    /// Dynamic-MIG's split jobs only.
    pub cross_gpu_slowdown: f64,
    /// Flex-MIG: the slowdown by the largest number of a job's leaves on one GPU, for every
    /// count a GPU of the model can hold (`{"1": ..., "2": ..., ...}`).
    pub concentration_slowdown: BTreeMap<u32, f64>,
    pub double_leaf_speedup: f64,
    /// Flex-MIG's placement rule: `slurm` or `most-free`.
    #[serde(serialize_with = "placement_name")]
    pub placement: Placement,
}

fn placement_name<S: Serializer>(p: &Placement, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(p.as_str())
}

fn scheduler_name<S: Serializer>(s: &Scheduler, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.as_str())
}

/// Runs all three modes on one trace.
pub fn compare(jobs: &[Job], geo: &Geometry, cfg: &Config) -> Comparison {
    let modes = Mode::ALL.map(|mode| simulate(jobs, geo, mode, cfg).map(|run| run.metrics));
    let c = &cfg.costs;
    let config = CompareConfig {
        model: geo.model.clone(),
        gpus: c.gpus,
        gpus_per_node: c.gpus_per_node,
        scheduler: cfg.scheduler,
        backfill_window: cfg.backfill_window,
        jobs: jobs.len(),
        reconfig_s: c.reconfig_s,
        ckpt_save_s: c.ckpt_save_s,
        ckpt_load_s: c.ckpt_load_s,
        one_to_many_slowdown: c.one_to_many_slowdown,
        cross_gpu_slowdown: c.cross_gpu_slowdown,
        concentration_slowdown: (1..=geo.leaves_per_gpu()).map(|m| (m, c.concentration_slowdown.at(m))).collect(),
        double_leaf_speedup: c.double_leaf_speedup,
        placement: c.placement,
    };
    Comparison { modes, config }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::load_model;
    use crate::trace::{generate, Distribution, Mix, Synthetic};

    #[test]
    fn a_comparison_is_typed_and_serialises_as_the_fixed_json_object() {
        let geo = Geometry::from_model(&load_model("A100-40GB").unwrap()).unwrap();
        let cfg = Config { scheduler: Scheduler::Backfill, backfill_window: 14, record: false, costs: alloc::Costs::default() };
        let synthetic = Synthetic {
            distribution: Distribution::Large,
            mix: Mix::Training,
            seed: 2,
            jobs: None,
            load: 2.0,
            cluster_slices: geo.compute * 2,
        };
        let jobs = generate(&synthetic);
        let c = compare(&jobs, &geo, &cfg);
        let fm = c.mode(Mode::Fm).unwrap();
        assert_eq!(fm.jobs, jobs.len());
        assert!(c.mode(Mode::Dm).is_ok());
        // Training traces hold 6- and 8-slice jobs; Static-MIG's largest instance is 4g.
        let why = c.mode(Mode::Sm).unwrap_err();
        assert!(why.contains("slices"), "{why}");
        assert_eq!((c.config.jobs, c.config.scheduler), (jobs.len(), Scheduler::Backfill));

        let v = serde_json::to_value(&c).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["DM", "FM", "SM", "config", "not_admissible"]);
        assert_eq!(v["FM"], serde_json::to_value(fm).unwrap());
        assert!(v["SM"].is_null());
        assert_eq!(v["not_admissible"], serde_json::json!({ "SM": why }));
        assert_eq!(v["config"]["scheduler"], "backfill");
        assert_eq!(v["config"]["model"], "A100-40GB");
        assert_eq!(v["config"]["placement"], "slurm");
        // The slowdown for every concentration an A100 can hold, 1 to 7 leaves on one GPU.
        let conc = v["config"]["concentration_slowdown"].as_object().unwrap();
        assert_eq!(conc.keys().map(String::as_str).collect::<Vec<_>>(), ["1", "2", "3", "4", "5", "6", "7"]);
        assert_eq!(conc["4"], cfg.costs.concentration_slowdown.at(4));
        assert_eq!(v["config"].as_object().unwrap().len(), 14);
    }
}
