//! `flexmig-sim`: does one-to-many MIG pay off on my cluster?

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use flexmig_sim::alloc::{Concentration, Costs, Mode, Placement};
use flexmig_sim::geometry::{load_model, Geometry};
use flexmig_sim::report::{write_all, Study};
use flexmig_sim::sim::{simulate, Config, Scheduler};
use flexmig_sim::trace::{generate, parse_csv, parse_sacct, to_csv, Distribution, Job, Mix, SacctOptions, Synthetic};
use flexmig_sim::Comparison;
use std::path::PathBuf;
use std::time::Instant;

/// The exit statuses, as `flexmig-gres-helper` has them; no command of the simulator is a
/// check, so none exits 1.
const EXIT_STATUS: &str = "\
Exit status:
  0  success
  2  bad input or an error (the message says what is wrong)";

/// Exit status of bad input or a failure.
const ERROR_EXIT: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "flexmig-sim",
    version,
    about = "Trace-driven simulator: Flex-MIG (one-to-many) against Dynamic-MIG and Static-MIG",
    after_help = EXIT_STATUS
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one trace under Flex-MIG, Dynamic-MIG and Static-MIG and compare.
    #[command(after_help = EXIT_STATUS)]
    Compare {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        workload: WorkloadArgs,
        /// Print one JSON object {"FM": {...}, "DM": {...}, "SM": {...} or null, ...}.
        #[arg(long)]
        json: bool,
    },
    /// Write a synthetic trace in the CSV trace format (to edit, or to feed back with --trace).
    Generate {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        workload: WorkloadArgs,
    },
    /// Regenerate the Figure 7/8-style comparison: every size distribution x job mix x
    /// scheduler, N traces each; writes table.md, runs.csv and ratios-{fifo,backfill}.svg.
    Figures {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Traces per cell.
        #[arg(long, default_value_t = 10)]
        traces: u64,
        /// Offered load of the synthetic traces.
        #[arg(long, default_value_t = 2.0)]
        load: f64,
        #[arg(long, default_value = "simulator/results")]
        out: PathBuf,
    },
    /// The concentration slowdown from DDP step measurements (the JSON lines of
    /// bench/ddp_step.sh, packed with GPUS=1 and spread with GPUS=2): prints the runs that count
    /// and the --concentration-slowdown value.
    #[command(after_help = EXIT_STATUS)]
    Calibrate {
        /// ddp_step.jsonl files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Time the simulator on large synthetic traces (balanced, mixed, backfill).
    Bench {
        /// Job counts to time.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        jobs: Vec<usize>,
        /// GPU counts to time (8 GPUs per node).
        #[arg(long, value_delimiter = ',', default_value = "64")]
        gpus: Vec<u32>,
        #[arg(long, default_value = "A100-40GB")]
        model: String,
        #[arg(long, value_enum, default_value = "backfill")]
        scheduler: Scheduler,
        /// Offered load (1.0: the cluster is just saturated).
        #[arg(long, default_value_t = 0.9)]
        load: f64,
        /// Job mix (inference also times Static-MIG, which cannot run 6- and 8-slice jobs).
        #[arg(long, value_enum, default_value = "mixed")]
        mix: Mix,
    },
}

#[derive(Args, Debug, Clone)]
struct ClusterArgs {
    /// GPUs in the cluster.
    #[arg(long, default_value_t = 2)]
    gpus: u32,
    /// GPUs per node (a Flex-MIG job stays in one node); default: min(gpus, 8).
    #[arg(long)]
    gpus_per_node: Option<u32>,
    /// GPU model (a recorded table of leaf-model).
    #[arg(long, default_value = "A100-40GB")]
    model: String,
    #[arg(long, value_enum, default_value = "fifo")]
    scheduler: Scheduler,
    /// Waiting jobs that backfilling examines per pass.
    #[arg(long, default_value_t = 14)]
    backfill_window: usize,
    /// Dynamic-MIG: seconds to drain and reconfigure a GPU.
    #[arg(long, default_value_t = 110.0)]
    reconfig_s: f64,
    /// Dynamic-MIG: seconds to save a drained job's checkpoint.
    #[arg(long, default_value_t = 30.0)]
    ckpt_save_s: f64,
    /// Dynamic-MIG: seconds to load it again.
    #[arg(long, default_value_t = 30.0)]
    ckpt_load_s: f64,
    /// Flex-MIG: slowdown of a job on 2+ leaves wherever its leaves are (0.03 = 3% longer), on
    /// top of --concentration-slowdown.
    #[arg(long, default_value_t = 0.0)]
    one_to_many_slowdown: f64,
    /// Flex-MIG: slowdown of a job on 2+ leaves by the largest number of its leaves on one GPU,
    /// as LEAVES:SLOWDOWN points (linear between them, proportional to the leaves outside them;
    /// 0: none). The default is measured (flexmig-sim calibrate).
    #[arg(long, default_value_t = Concentration::measured())]
    concentration_slowdown: Concentration,
    /// Flex-MIG: how a job's leaves are picked: as Slurm does with flexmig (lowest free GRES
    /// indices in the helper's order), or each from the GPU with the most free leaves.
    #[arg(long, value_enum, default_value = "slurm")]
    placement: Placement,
    /// Dynamic-MIG: slowdown of a job split into instances on 2+ GPUs.
    #[arg(long, default_value_t = 0.02)]
    cross_gpu_slowdown: f64,
    /// Flex-MIG: speed-up of a one-leaf job on the double leaf (0.10 = 10% shorter).
    #[arg(long, default_value_t = 0.10)]
    double_leaf_speedup: f64,
}

#[derive(Args, Debug, Clone)]
struct WorkloadArgs {
    #[arg(long, value_enum, default_value = "balanced")]
    distribution: Distribution,
    #[arg(long, value_enum, default_value = "mixed")]
    mix: Mix,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Draw this many jobs with Table 2's proportions (default: exactly Table 2's counts).
    #[arg(long)]
    jobs: Option<usize>,
    /// Offered load: demanded slice-seconds per second over the cluster's slices.
    #[arg(long, default_value_t = 2.0)]
    load: f64,
    /// Read jobs from a CSV trace (`flexmig-sim generate` writes one) instead.
    #[arg(long, conflicts_with = "sacct")]
    trace: Option<PathBuf>,
    /// Read jobs from `sacct -P -X -o JobID,Submit,Start,End,AllocTRES,ReqTRES,ElapsedRaw,Partition` output instead.
    #[arg(long)]
    sacct: Option<PathBuf>,
    /// sacct: compute slices one whole GPU (gres/gpu) counts as; default: the model's.
    #[arg(long)]
    gpu_slices: Option<u32>,
    /// sacct: jobs of this partition are inference jobs.
    #[arg(long)]
    inference_partition: Option<String>,
    /// Leave out (and count on stderr) jobs that Flex-MIG or Dynamic-MIG could not run on
    /// this cluster at all (wider than a node), instead of reporting that mode as null.
    #[arg(long)]
    drop_oversized: bool,
}

impl ClusterArgs {
    fn geometry(&self) -> Result<Geometry> {
        Geometry::from_model(&load_model(&self.model)?)
    }
    fn config(&self) -> Result<Config> {
        anyhow::ensure!(self.gpus > 0, "--gpus must be at least 1");
        for (name, v) in [
            ("--reconfig-s", self.reconfig_s),
            ("--ckpt-save-s", self.ckpt_save_s),
            ("--ckpt-load-s", self.ckpt_load_s),
            ("--one-to-many-slowdown", self.one_to_many_slowdown),
            ("--cross-gpu-slowdown", self.cross_gpu_slowdown),
        ] {
            anyhow::ensure!(v.is_finite() && v >= 0.0, "{name} must be a non-negative number, not {v}");
        }
        anyhow::ensure!(
            (0.0..1.0).contains(&self.double_leaf_speedup),
            "--double-leaf-speedup must be in [0, 1), not {}",
            self.double_leaf_speedup
        );
        Ok(Config {
            scheduler: self.scheduler,
            backfill_window: self.backfill_window,
            record: false,
            costs: Costs {
                gpus: self.gpus,
                gpus_per_node: self.gpus_per_node.unwrap_or(self.gpus.min(8)).max(1),
                reconfig_s: self.reconfig_s,
                ckpt_save_s: self.ckpt_save_s,
                ckpt_load_s: self.ckpt_load_s,
                one_to_many_slowdown: self.one_to_many_slowdown,
                cross_gpu_slowdown: self.cross_gpu_slowdown,
                concentration_slowdown: self.concentration_slowdown.clone(),
                double_leaf_speedup: self.double_leaf_speedup,
                placement: self.placement,
            },
        })
    }
}

impl WorkloadArgs {
    fn jobs(&self, geo: &Geometry, gpus: u32) -> Result<Vec<Job>> {
        if let Some(p) = &self.trace {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading trace {}", p.display()))?;
            return parse_csv(&text).with_context(|| format!("parsing trace {}", p.display()));
        }
        if let Some(p) = &self.sacct {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading sacct output {}", p.display()))?;
            let opt =
                SacctOptions { gpu_slices: self.gpu_slices.unwrap_or(geo.compute), inference_partition: self.inference_partition.clone() };
            return parse_sacct(&text, &opt).with_context(|| format!("parsing sacct output {}", p.display()));
        }
        anyhow::ensure!(self.load.is_finite() && self.load > 0.0, "--load must be a positive number (offered load, e.g. 0.9 or 2)");
        Ok(generate(&Synthetic {
            distribution: self.distribution,
            mix: self.mix,
            seed: self.seed,
            jobs: self.jobs,
            load: self.load,
            cluster_slices: geo.compute * gpus,
        }))
    }
}

fn main() {
    // Output piped into `head` ends the program quietly (SIGPIPE), not with a panic.
    // SAFETY: restoring a signal's default disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // clap exits 2 on a malformed command line and 0 for --help and --version.
    if let Err(e) = real_main() {
        eprintln!("flexmig-sim: {e:#}");
        std::process::exit(ERROR_EXIT);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Compare { cluster, workload, json } => {
            let geo = cluster.geometry()?;
            let mut jobs = workload.jobs(&geo, cluster.gpus)?;
            let cfg = cluster.config()?;
            if workload.drop_oversized {
                let before = jobs.len();
                jobs = flexmig_sim::drop_oversized(jobs, &geo, &cfg);
                if jobs.len() < before {
                    eprintln!("flexmig-sim: left out {} of {before} jobs wider than one node", before - jobs.len());
                }
            }
            let out = flexmig_sim::compare(&jobs, &geo, &cfg);
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_table(&out, &geo, &cluster);
            }
        }
        Cmd::Generate { cluster, workload } => {
            cluster.config()?;
            let geo = cluster.geometry()?;
            print!("{}", to_csv(&workload.jobs(&geo, cluster.gpus)?));
        }
        Cmd::Figures { cluster, traces, load, out } => {
            let geo = cluster.geometry()?;
            let study = Study { traces, load, base: cluster.config()? };
            let table = write_all(&geo, &study, &out)?;
            println!("{table}");
            eprintln!("wrote {}/table.md, runs.csv, ratios-fifo.svg, ratios-backfill.svg", out.display());
        }
        Cmd::Calibrate { files } => {
            let mut steps = Vec::new();
            for f in &files {
                let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
                steps.extend(flexmig_sim::calibrate::read_steps(&text, &f.display().to_string()));
            }
            let c = flexmig_sim::calibrate::calibrate(&steps).map_err(anyhow::Error::msg)?;
            print!("{}", c.report());
        }
        Cmd::Bench { jobs, gpus, model, scheduler, load, mix } => {
            let geo = Geometry::from_model(&load_model(&model)?)?;
            println!(
                "{model}, balanced sizes, {} mix, {} scheduler, offered load {load}, 8 GPUs per node\n",
                mix.as_str(),
                scheduler.as_str()
            );
            println!("| jobs | GPUs | mode | seconds | makespan (h) | drains |");
            println!("|---|---|---|---|---|---|");
            for &g in &gpus {
                for &n in &jobs {
                    let trace = generate(&Synthetic {
                        distribution: Distribution::Balanced,
                        mix,
                        seed: 1,
                        jobs: Some(n),
                        load,
                        cluster_slices: geo.compute * g,
                    });
                    let cfg = Config {
                        scheduler,
                        backfill_window: 14,
                        record: false,
                        costs: Costs { gpus: g, gpus_per_node: g.min(8), ..Costs::default() },
                    };
                    for mode in Mode::ALL {
                        let t0 = Instant::now();
                        let Ok(run) = simulate(&trace, &geo, mode, &cfg) else {
                            continue;
                        };
                        let secs = t0.elapsed().as_secs_f64();
                        println!(
                            "| {n} | {g} | {} | {secs:.3} | {:.1} | {} |",
                            mode.key(),
                            run.metrics.makespan_s / 3600.0,
                            run.metrics.reconfigurations
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

fn print_table(out: &Comparison, geo: &Geometry, c: &ClusterArgs) {
    println!("{} x{} ({} scheduler, {} placement)", geo.model, c.gpus, c.scheduler.as_str(), c.placement.as_str());
    println!(
        "{:<4} {:>12} {:>16} {:>12} {:>12} {:>14} {:>8} {:>8}",
        "mode", "makespan_s", "jct_incl_wait_s", "exec_s", "wait_s", "ext_frag_s", "util", "reconf"
    );
    for m in Mode::ALL {
        match out.mode(m) {
            Err(why) => println!("{:<4} not admissible: {why}", m.key()),
            Ok(v) => println!(
                "{:<4} {:>12.0} {:>16.0} {:>12.0} {:>12.0} {:>14.0} {:>8.3} {:>8}",
                m.key(),
                v.makespan_s,
                v.avg_jct_s,
                v.avg_run_s,
                v.avg_wait_s,
                v.avg_ext_frag_delay_s,
                v.utilization,
                v.reconfigurations
            ),
        }
    }
    println!("(means per job; jct_incl_wait_s: submission to end; exec_s: start to end, what the Flex-MIG paper calls JCT)");
}
