//! The concentration slowdown from measured DDP training steps: the JSON lines that
//! `bench/ddp_step.sh` writes (one record per run: model, ranks, GPUs the ranks were spread
//! over round-robin, the synced step time and the same step under `no_sync`).
//!
//! A record counts when it is what a flexmig job runs: flexmig's patched NCCL over shared memory
//! (`variant` `patched`), each leaf a share of its GPU under MPS, the plugin's
//! `NCCL_MAX_NCHANNELS=2` and no other tuning, every rank exiting 0. Its concentration is
//! `ceil(ranks / gpus)` (the plugin's round-robin), and its slowdown the communication time over
//! the compute time, `step / step_no_sync - 1`. Under MPS the ranks of one GPU also share its
//! memory bandwidth, so the compute part differs between packed and spread runs; the ratio
//! within one run keeps only what communication adds, which is what MIG leaves (own memory
//! slices) would see.

use crate::alloc::Concentration;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One DDP step measurement that counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub source: String,
    pub model: String,
    pub ranks: u32,
    pub gpus: u32,
    pub step_s: f64,
    pub no_sync_s: f64,
}

impl Step {
    /// The largest number of ranks on one GPU.
    pub fn concentration(&self) -> u32 {
        self.ranks.div_ceil(self.gpus.max(1))
    }

    /// Communication time over compute time.
    pub fn slowdown(&self) -> f64 {
        self.step_s / self.no_sync_s - 1.0
    }
}

/// The records of `text` (JSON lines; other lines, such as a run's header, are skipped) that
/// count, tagged with `source`.
pub fn read_steps(text: &str, source: &str) -> Vec<Step> {
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter_map(|r| step(&r, source)).collect()
}

fn step(r: &Value, source: &str) -> Option<Step> {
    let step_s = r["step_s"].as_f64()?;
    let no_sync_s = r["step_nosync_s"].as_f64().filter(|&t| t > 0.0)?;
    if r["variant"] != "patched" || r["mps"] != true {
        return None;
    }
    if !r["exit"].as_array()?.iter().all(|c| c.as_i64() == Some(0)) {
        return None;
    }
    let env: Vec<&str> = r["env"].as_array().map(|e| e.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    // The plugin's two channels, set by the plugin (recorded since ddp_step.py knew it) or by hand.
    let plugin_channels = matches!((env.as_slice(), r["plugin_max_channels"].as_i64()), ([], Some(2)) | (["NCCL_MAX_NCHANNELS=2"], None));
    if !plugin_channels {
        return None;
    }
    Some(Step {
        source: source.to_string(),
        model: r["model"].as_str()?.to_string(),
        ranks: u32::try_from(r["ranks"].as_u64()?).ok()?,
        gpus: r["gpus"].as_u64().map_or(Some(1), |g| u32::try_from(g).ok())?,
        step_s,
        no_sync_s,
    })
}

/// The calibration: per model and concentration the mean slowdown, and the table (the mean over
/// models, each model weighing the same, rounded to 0.001).
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// (model, concentration) -> slowdowns of the runs.
    pub runs: BTreeMap<(String, u32), Vec<f64>>,
    pub table: Concentration,
}

/// Calibrates from the steps.
///
/// # Errors
/// No step counts.
pub fn calibrate(steps: &[Step]) -> Result<Calibration, String> {
    if steps.is_empty() {
        return Err("no DDP step record of patched NCCL under MPS with the plugin's 2 channels in the input".into());
    }
    let mut runs: BTreeMap<(String, u32), Vec<f64>> = BTreeMap::new();
    for s in steps {
        runs.entry((s.model.clone(), s.concentration())).or_default().push(s.slowdown());
    }
    let mut per_m: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for ((_, m), v) in &runs {
        per_m.entry(*m).or_default().push(v.iter().sum::<f64>() / v.len() as f64);
    }
    let points = per_m.into_iter().map(|(m, v)| (m, (v.iter().sum::<f64>() / v.len() as f64 * 1000.0).round() / 1000.0)).collect();
    Ok(Calibration { runs, table: Concentration::new(points)? })
}

impl Calibration {
    /// A Markdown table of the runs and the resulting `--concentration-slowdown` argument.
    pub fn report(&self) -> String {
        let mut t =
            String::from("| model | leaves on one GPU | runs | slowdown (comm / compute), mean | min | max |\n|---|---|---|---|---|---|\n");
        for ((model, m), v) in &self.runs {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let _ = writeln!(t, "| {model} | {m} | {} | {:.1}% | {:.1}% | {:.1}% |", v.len(), mean * 100.0, min * 100.0, max * 100.0);
        }
        let _ = writeln!(t, "\n--concentration-slowdown {}", self.table);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORDS: &str = r#"{"machine": "header line, skipped"}
{"model": "resnet", "variant": "patched", "ranks": 4, "gpus": 1, "mps": true, "env": [], "exit": [0, 0, 0, 0], "step_s": 0.110, "step_nosync_s": 0.100, "plugin_max_channels": 2}
{"model": "resnet", "variant": "patched", "ranks": 4, "gpus": 2, "mps": true, "env": ["NCCL_MAX_NCHANNELS=2"], "exit": [0, 0, 0, 0], "step_s": 0.105, "step_nosync_s": 0.100}
{"model": "resnet", "variant": "patched", "ranks": 4, "gpus": 1, "mps": true, "env": [], "exit": [0, 0, 0, 0], "step_s": 0.2, "step_nosync_s": 0.1}
{"model": "resnet", "variant": "net", "ranks": 4, "gpus": 1, "mps": true, "env": [], "exit": [0, 0, 0, 0], "step_s": 0.2, "step_nosync_s": 0.1, "plugin_max_channels": 2}
{"model": "resnet", "variant": "patched", "ranks": 4, "gpus": 1, "mps": false, "env": [], "exit": [0, 0, 0, 0], "step_s": 0.2, "step_nosync_s": 0.1, "plugin_max_channels": 2}
{"model": "resnet", "variant": "patched", "ranks": 4, "gpus": 1, "mps": true, "env": [], "exit": [0, -6, 0, 0], "step_s": 0.2, "step_nosync_s": 0.1, "plugin_max_channels": 2}
{"model": "resnet", "variant": "patched", "ranks": 4, "gpus": 1, "mps": true, "env": ["NCCL_SHM_USE_CUDA_MEMCPY=1"], "exit": [0, 0, 0, 0], "step_s": 0.2, "step_nosync_s": 0.1, "plugin_max_channels": 2}
{"model": "transformer", "variant": "patched", "ranks": 4, "gpus": 1, "mps": true, "env": [], "exit": [0, 0, 0, 0], "step_s": 0.103, "step_nosync_s": 0.100, "plugin_max_channels": 2}
"#;

    #[test]
    fn counts_only_what_a_flexmig_job_runs() {
        let steps = read_steps(RECORDS, "t");
        // NCCL's own channels, the NET variant, time-slicing, a hung rank and other tuning are out.
        assert_eq!(steps.len(), 3, "{steps:#?}");
        assert_eq!(steps.iter().map(Step::concentration).collect::<Vec<_>>(), [4, 2, 4]);
        let c = calibrate(&steps).unwrap();
        // resnet at 4 leaves 10%, at 2 (4 spread over 2 GPUs) 5%; transformer at 4 leaves 3%:
        // the models weigh the same.
        assert_eq!(c.table.points(), [(2, 0.05), (4, 0.065)]);
        assert!(c.report().contains("--concentration-slowdown 2:0.05,4:0.065"), "{}", c.report());
        assert!(calibrate(&[]).is_err());
    }
}
