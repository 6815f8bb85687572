//! flexmig-sim: a trace-driven simulator of one GPU cluster under three MIG operating modes:
//! Flex-MIG (fixed leaves, one-to-many), Dynamic-MIG (exact instances on demand, draining
//! when the placement tree blocks) and Static-MIG (fixed 1g + 2g + 4g).
//!
//! * [`geometry`]: MIG trees and legal placements from leaf-model's recorded tables.
//! * [`trace`]: synthetic workloads (the paper's Table 2), the CSV trace format, `sacct` input.
//! * [`alloc`]: the three modes' bookkeeping.
//! * [`sim`]: the event-driven engine, the FIFO and backfilling schedulers, the metrics.
//! * [`report`]: the Figure 7/8-style comparison: table and SVG plots.

pub mod alloc;
pub mod geometry;
pub mod report;
pub mod sim;
pub mod trace;

use alloc::Mode;
use geometry::Geometry;
use serde_json::{json, Map, Value};
use sim::{simulate, Config};
use trace::Job;

/// The jobs that both Flex-MIG and Dynamic-MIG can run on this cluster (Static-MIG's
/// limit of 4 slices is a property of the mode, so it is not applied here).
pub fn drop_oversized(jobs: Vec<Job>, geo: &Geometry, cfg: &Config) -> Vec<Job> {
    let fm = alloc::build(Mode::Fm, geo, &cfg.costs, 0);
    let dm = alloc::build(Mode::Dm, geo, &cfg.costs, 0);
    jobs.into_iter().filter(|j| fm.admissible(j).is_ok() && dm.admissible(j).is_ok()).collect()
}

/// Runs all three modes on one trace: the `compare --json` object. A mode that cannot run
/// some job of the trace is `null`, with the reason under `"not_admissible"`.
pub fn compare(jobs: &[Job], geo: &Geometry, cfg: &Config) -> Value {
    let mut out = Map::new();
    let mut why = Map::new();
    for mode in Mode::ALL {
        match simulate(jobs, geo, mode, cfg) {
            Ok(run) => {
                out.insert(mode.key().into(), serde_json::to_value(run.metrics).expect("metrics serialise"));
            }
            Err(reason) => {
                out.insert(mode.key().into(), Value::Null);
                why.insert(mode.key().into(), reason.into());
            }
        }
    }
    out.insert("not_admissible".into(), Value::Object(why));
    out.insert(
        "config".into(),
        json!({
            "model": geo.model,
            "gpus": cfg.costs.gpus,
            "gpus_per_node": cfg.costs.gpus_per_node,
            "scheduler": cfg.scheduler.as_str(),
            "backfill_window": cfg.backfill_window,
            "jobs": jobs.len(),
            "reconfig_s": cfg.costs.reconfig_s,
            "ckpt_save_s": cfg.costs.ckpt_save_s,
            "ckpt_load_s": cfg.costs.ckpt_load_s,
            "one_to_many_slowdown": cfg.costs.one_to_many_slowdown,
            "cross_gpu_slowdown": cfg.costs.cross_gpu_slowdown,
            "double_leaf_speedup": cfg.costs.double_leaf_speedup,
        }),
    );
    Value::Object(out)
}
