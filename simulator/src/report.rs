//! The paper-style comparison (its Figures 7 and 8): every size distribution x job mix x
//! scheduler, ten synthetic traces each, FM/DM/SM; written as a CSV of every run, a
//! Markdown table of ratios to Dynamic-MIG, and one SVG chart per scheduler.

use crate::alloc::Mode;
use crate::geometry::Geometry;
use crate::sim::{simulate, Config, Metrics, Scheduler};
use crate::trace::{generate, Distribution, Mix, Synthetic};
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

pub const DISTRIBUTIONS: [Distribution; 3] = [Distribution::Small, Distribution::Balanced, Distribution::Large];
pub const MIXES: [Mix; 3] = [Mix::Training, Mix::Inference, Mix::Mixed];
pub const SCHEDULERS: [Scheduler; 2] = [Scheduler::Fifo, Scheduler::Backfill];

/// A metric of [`Metrics`] the comparison averages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Jct,
    Wait,
    Run,
    Makespan,
    Utilization,
    ExtFragDelay,
    Reconfigurations,
}

impl Metric {
    /// The metrics plotted, one panel each.
    pub const PLOTTED: [Metric; 5] = [Metric::Jct, Metric::Run, Metric::Wait, Metric::Makespan, Metric::Utilization];

    /// Its value in one run.
    pub fn of(self, m: &Metrics) -> f64 {
        match self {
            Metric::Jct => m.avg_jct_s,
            Metric::Wait => m.avg_wait_s,
            Metric::Run => m.avg_run_s,
            Metric::Makespan => m.makespan_s,
            Metric::Utilization => m.utilization,
            Metric::ExtFragDelay => m.avg_ext_frag_delay_s,
            Metric::Reconfigurations => m.reconfigurations as f64,
        }
    }

    /// Its name in the plots.
    pub fn label(self) -> &'static str {
        match self {
            Metric::Jct => "JCT incl. waiting (submission to end)",
            Metric::Wait => "waiting time",
            Metric::Run => "execution time (start to end, the paper's JCT)",
            Metric::Makespan => "makespan",
            Metric::Utilization => "utilization",
            Metric::ExtFragDelay => "ext. fragmentation delay",
            Metric::Reconfigurations => "reconfigurations",
        }
    }
}

/// One cell of the comparison: the mean of each mode's metrics over the traces.
#[derive(Debug, Clone)]
pub struct Cell {
    pub scheduler: Scheduler,
    pub distribution: Distribution,
    pub mix: Mix,
    /// Per mode (FM, DM, SM): the per-trace metrics; empty where the mode cannot run the traces.
    pub runs: [Vec<Metrics>; 3],
}

impl Cell {
    /// Mean of `metric` over the traces for mode `m`.
    pub fn mean(&self, m: Mode, metric: Metric) -> Option<f64> {
        let runs = &self.runs[m as usize];
        (!runs.is_empty()).then(|| runs.iter().map(|r| metric.of(r)).sum::<f64>() / runs.len() as f64)
    }
    /// Mean of mode `m` over the mean of Dynamic-MIG.
    pub fn ratio(&self, m: Mode, metric: Metric) -> Option<f64> {
        let d = self.mean(Mode::Dm, metric)?;
        let v = self.mean(m, metric)?;
        (d > 0.0).then_some(v / d)
    }
}

/// Settings of the comparison.
#[derive(Debug, Clone)]
pub struct Study {
    pub traces: u64,
    pub load: f64,
    pub base: Config,
}

/// Runs the whole comparison.
pub fn run_study(geo: &Geometry, s: &Study) -> Vec<Cell> {
    let mut cells = Vec::new();
    for scheduler in SCHEDULERS {
        let cfg = Config { scheduler, ..s.base.clone() };
        for distribution in DISTRIBUTIONS {
            for mix in MIXES {
                let mut runs: [Vec<Metrics>; 3] = Default::default();
                for seed in 1..=s.traces {
                    let jobs = generate(&Synthetic {
                        distribution,
                        mix,
                        seed,
                        jobs: None,
                        load: s.load,
                        cluster_slices: geo.compute * cfg.costs.gpus,
                    });
                    for mode in Mode::ALL {
                        if let Ok(run) = simulate(&jobs, geo, mode, &cfg) {
                            runs[mode as usize].push(run.metrics);
                        }
                    }
                }
                cells.push(Cell { scheduler, distribution, mix, runs });
            }
        }
    }
    cells
}

type CellFilter = Box<dyn Fn(&Cell) -> bool>;

fn pct(r: Option<f64>) -> String {
    r.map_or("n/a".into(), |r| format!("{:+.1}%", (r - 1.0) * 100.0))
}

/// The Markdown table: FM and SM relative to DM, per cell, and the averages.
pub fn table(cells: &[Cell], geo: &Geometry, s: &Study) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Model {}, {} GPUs, {} traces per cell, offered load {}, reconfiguration {} s, checkpoint {}+{} s, \
         Flex-MIG placement {}, one-to-many slowdown {}, concentration slowdown {}, double-leaf speed-up {}, \
         Dynamic-MIG cross-GPU slowdown {}.\n",
        geo.model,
        s.base.costs.gpus,
        s.traces,
        s.load,
        s.base.costs.reconfig_s,
        s.base.costs.ckpt_save_s,
        s.base.costs.ckpt_load_s,
        s.base.costs.placement.as_str(),
        s.base.costs.one_to_many_slowdown,
        s.base.costs.concentration_slowdown,
        s.base.costs.double_leaf_speedup,
        s.base.costs.cross_gpu_slowdown
    );
    let _ = writeln!(t, "Change of Flex-MIG (FM) and Static-MIG (SM) against Dynamic-MIG (DM), ratio of means over the traces (negative is better for JCT, waiting time and makespan; positive is better for utilization). SM is n/a where a trace holds jobs larger than 4 slices.\n");
    let _ = writeln!(t, "JCT incl. wait: completion minus submission (ours); exec: completion minus start, what the paper calls JCT.\n");
    let _ = writeln!(t, "| scheduler | sizes | mix | FM JCT incl. wait | FM exec | FM wait | FM makespan | FM util | SM JCT | SM wait | SM makespan | SM util | DM drains/trace | ext-frag delay FM / DM / SM (s) |");
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for c in cells {
        let ef = |m: Mode| c.mean(m, Metric::ExtFragDelay).map_or("n/a".into(), |v| format!("{v:.0}"));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} / {} / {} |",
            c.scheduler.as_str(),
            c.distribution.as_str(),
            c.mix.as_str(),
            pct(c.ratio(Mode::Fm, Metric::Jct)),
            pct(c.ratio(Mode::Fm, Metric::Run)),
            pct(c.ratio(Mode::Fm, Metric::Wait)),
            pct(c.ratio(Mode::Fm, Metric::Makespan)),
            pct(c.ratio(Mode::Fm, Metric::Utilization)),
            pct(c.ratio(Mode::Sm, Metric::Jct)),
            pct(c.ratio(Mode::Sm, Metric::Wait)),
            pct(c.ratio(Mode::Sm, Metric::Makespan)),
            pct(c.ratio(Mode::Sm, Metric::Utilization)),
            c.mean(Mode::Dm, Metric::Reconfigurations).unwrap_or(0.0),
            ef(Mode::Fm),
            ef(Mode::Dm),
            ef(Mode::Sm),
        );
    }
    let _ = writeln!(t, "\nAverages of the FM/DM ratios over cells:\n");
    let _ = writeln!(t, "| scheduler | cells | FM JCT incl. wait | FM exec (paper's JCT) | FM wait | FM makespan | FM util |");
    let _ = writeln!(t, "|---|---|---|---|---|---|---|");
    let groups: [(&str, CellFilter); 5] = [
        ("all", Box::new(|_| true)),
        ("small-dominant", Box::new(|c| c.distribution == Distribution::Small)),
        ("large-dominant", Box::new(|c| c.distribution == Distribution::Large)),
        ("small-dominant mixed", Box::new(|c| c.distribution == Distribution::Small && c.mix == Mix::Mixed)),
        ("training only", Box::new(|c| c.mix == Mix::Training)),
    ];
    for sched in SCHEDULERS {
        for (name, keep) in &groups {
            let sel: Vec<&Cell> = cells.iter().filter(|c| c.scheduler == sched && keep(c)).collect();
            let avg = |metric: Metric| {
                let v: Vec<f64> = sel.iter().filter_map(|c| c.ratio(Mode::Fm, metric)).collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            let _ = writeln!(
                t,
                "| {} | {name} | {} | {} | {} | {} | {} |",
                sched.as_str(),
                pct(avg(Metric::Jct)),
                pct(avg(Metric::Run)),
                pct(avg(Metric::Wait)),
                pct(avg(Metric::Makespan)),
                pct(avg(Metric::Utilization))
            );
        }
    }
    let _ = writeln!(t, "\nLargest makespan cut of FM against DM in one cell (the paper's \"up to\"):\n");
    for sched in SCHEDULERS {
        let best = cells
            .iter()
            .filter(|c| c.scheduler == sched)
            .filter_map(|c| c.ratio(Mode::Fm, Metric::Makespan).map(|r| (r, c)))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((r, c)) = best {
            let _ = writeln!(t, "- {}: {} ({} sizes, {} mix)", sched.as_str(), pct(Some(r)), c.distribution.as_str(), c.mix.as_str());
        }
    }
    t
}

/// Every run, one line per (cell, trace, mode).
pub fn csv(cells: &[Cell]) -> String {
    let mut t = String::from("scheduler,distribution,mix,trace,mode,makespan_s,avg_jct_s,avg_wait_s,avg_run_s,avg_ext_frag_delay_s,utilization,reconfigurations,drained_jobs\n");
    for c in cells {
        for mode in Mode::ALL {
            for (i, m) in c.runs[mode as usize].iter().enumerate() {
                let _ = writeln!(
                    t,
                    "{},{},{},{},{},{:.1},{:.1},{:.1},{:.1},{:.1},{:.4},{},{}",
                    c.scheduler.as_str(),
                    c.distribution.as_str(),
                    c.mix.as_str(),
                    i + 1,
                    mode.key(),
                    m.makespan_s,
                    m.avg_jct_s,
                    m.avg_wait_s,
                    m.avg_run_s,
                    m.avg_ext_frag_delay_s,
                    m.utilization,
                    m.reconfigurations,
                    m.drained_jobs
                );
            }
        }
    }
    t
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// One SVG per scheduler: a panel per metric, bars FM/DM and SM/DM per cell, a line at 1.
/// Hand-written SVG with generic font families, so it needs no fonts or libraries to build.
pub fn svg(cells: &[Cell], scheduler: Scheduler, geo: &Geometry, s: &Study) -> String {
    let sel: Vec<&Cell> = cells.iter().filter(|c| c.scheduler == scheduler).collect();
    let metrics = Metric::PLOTTED;
    let (pw, ph, left, top, gap) = (900.0, 220.0, 60.0, 70.0, 80.0);
    let width = pw + left + 30.0;
    let height = top + metrics.len() as f64 * (ph + gap) + 20.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{left}" y="24" font-size="15" font-weight="bold">FM/DM and SM/DM: {} x{}, {} traces per bar, {} scheduler</text>"#,
        esc(&geo.model),
        s.base.costs.gpus,
        s.traces,
        scheduler.as_str()
    );
    let _ =
        writeln!(o, r##"<rect x="{left}" y="36" width="12" height="12" fill="#1f77b4"/><text x="{}" y="46">FM / DM</text>"##, left + 16.0);
    let _ = writeln!(
        o,
        r##"<rect x="{}" y="36" width="12" height="12" fill="#ff7f0e"/><text x="{}" y="46">SM / DM (only where admissible)</text>"##,
        left + 90.0,
        left + 106.0
    );
    let n = sel.len().max(1) as f64;
    let gw = pw / n;
    for (k, metric) in metrics.into_iter().enumerate() {
        let y0 = top + k as f64 * (ph + gap);
        let vals: Vec<f64> = sel.iter().flat_map(|c| [c.ratio(Mode::Fm, metric), c.ratio(Mode::Sm, metric)]).flatten().collect();
        let vmax = vals.iter().copied().fold(1.2_f64, f64::max) * 1.1;
        let y = |v: f64| y0 + ph - v / vmax * ph;
        let _ = writeln!(o, r#"<text x="{left}" y="{}" font-weight="bold">{} (ratio to DM)</text>"#, y0 - 6.0, esc(metric.label()));
        let _ = writeln!(o, r#"<rect x="{left}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#);
        let mut tick = 0.0;
        while tick <= vmax {
            let _ = writeln!(
                o,
                r##"<line x1="{}" y1="{yy}" x2="{left}" y2="{yy}" stroke="black"/><text x="{}" y="{}" text-anchor="end">{tick:.1}</text>"##,
                left - 4.0,
                left - 6.0,
                y(tick) + 4.0,
                yy = y(tick)
            );
            tick += if vmax > 3.0 { 1.0 } else { 0.2 };
        }
        let _ = writeln!(
            o,
            r##"<line x1="{left}" y1="{yy}" x2="{}" y2="{yy}" stroke="#444" stroke-dasharray="4 3"/>"##,
            left + pw,
            yy = y(1.0)
        );
        for (i, c) in sel.iter().enumerate() {
            let gx = left + i as f64 * gw;
            let x = gx + gw / 2.0;
            let bw = gw * 0.32;
            for (j, (mode, color)) in [(Mode::Fm, "#1f77b4"), (Mode::Sm, "#ff7f0e")].iter().enumerate() {
                if let Some(r) = c.ratio(*mode, metric) {
                    let x = gx + gw * 0.16 + j as f64 * bw;
                    let _ = writeln!(
                        o,
                        r#"<rect x="{x:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="{color}"><title>{} {:.3}</title></rect>"#,
                        y(r),
                        (y0 + ph - y(r)).max(0.0),
                        mode.key(),
                        r
                    );
                    let _ = writeln!(
                        o,
                        r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{r:.2}</text>"#,
                        x + bw / 2.0,
                        y(r) - 3.0
                    );
                }
            }
            let _ = writeln!(
                o,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}<tspan x="{x:.1}" dy="13">{}</tspan></text>"#,
                y0 + ph + 15.0,
                c.distribution.as_str(),
                c.mix.as_str()
            );
        }
    }
    o.push_str("</svg>\n");
    o
}

/// Runs the study and writes runs.csv, table.md and one SVG per scheduler into `dir`.
///
/// # Errors
/// When a file cannot be written.
pub fn write_all(geo: &Geometry, s: &Study, dir: &Path) -> Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cells = run_study(geo, s);
    let tbl = table(&cells, geo, s);
    let write = |name: &str, text: &str| -> Result<()> {
        let path = dir.join(name);
        leaf_model::atomic::write_atomic(&path, text.as_bytes(), 0o644).with_context(|| format!("writing {}", path.display()))
    };
    write("table.md", &tbl)?;
    write("runs.csv", &csv(&cells))?;
    for sched in SCHEDULERS {
        write(&format!("ratios-{}.svg", sched.as_str()), &svg(&cells, sched, geo, s))?;
    }
    Ok(tbl)
}
