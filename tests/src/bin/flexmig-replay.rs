//! `flexmig-replay`: a trace replayed, time-compressed, on a throwaway Slurm with flexmig (an
//! emulated node built by the helper, the Lua filters, the plugin), each job's placement and
//! times recorded, and the parity against `flexmig-sim compare` printed.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use flexmig_integration::replay::{self, Options};
use flexmig_sim::alloc::Costs;
use flexmig_sim::report::{DISTRIBUTIONS, MIXES};
use flexmig_sim::trace::{generate, parse_csv, Distribution, Mix, Synthetic};

const USAGE: &str = "\
usage: flexmig-replay [--trace CSV | --distribution small|balanced|large --mix training|inference|mixed
                       --seed N --jobs N --load L] [--gpus N] [--scale S] [--out DIR]

Replays a trace (default: 20 synthetic jobs, balanced sizes, mixed, seed 1, load 2) on a throwaway
Slurm with flexmig (an emulated A100-40GB node of --gpus GPUs, default 2, built by
flexmig-gres-helper; the Lua filters; the plugin), --scale trace seconds per real second
(default 300), and prints the parity against the simulator; --out writes parity.svg and
records.csv. Needs root and Slurm, as the integration tests.

Exit status:
  0  success
  2  bad input or an error (the message says what is wrong)";

#[derive(Debug)]
struct Cli {
    trace: Option<PathBuf>,
    distribution: Distribution,
    mix: Mix,
    seed: u64,
    jobs: usize,
    load: f64,
    gpus: u32,
    scale: f64,
    out: Option<PathBuf>,
}

fn parse_args() -> Result<Cli> {
    let mut cli = Cli {
        trace: None,
        distribution: Distribution::Balanced,
        mix: Mix::Mixed,
        seed: 1,
        jobs: 20,
        load: 2.0,
        gpus: 2,
        scale: 300.0,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--help" || a == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it.next().with_context(|| format!("{a} needs a value\n{USAGE}"))?;
        let num = |what: &str| format!("{a} {v}: not {what}");
        match a.as_str() {
            "--trace" => cli.trace = Some(v.into()),
            "--distribution" => {
                cli.distribution = DISTRIBUTIONS.into_iter().find(|d| d.as_str() == v).with_context(|| num("small, balanced or large"))?
            }
            "--mix" => cli.mix = MIXES.into_iter().find(|m| m.as_str() == v).with_context(|| num("training, inference or mixed"))?,
            "--seed" => cli.seed = v.parse().with_context(|| num("a number"))?,
            "--jobs" => cli.jobs = v.parse().with_context(|| num("a number"))?,
            "--load" => cli.load = v.parse().with_context(|| num("a number"))?,
            "--gpus" => cli.gpus = v.parse().with_context(|| num("a number"))?,
            "--scale" => cli.scale = v.parse().with_context(|| num("a number"))?,
            "--out" => cli.out = Some(v.into()),
            _ => bail!("unknown argument {a}\n{USAGE}"),
        }
    }
    anyhow::ensure!(cli.scale.is_finite() && cli.scale > 0.0, "--scale must be a positive number");
    anyhow::ensure!(cli.load.is_finite() && cli.load > 0.0, "--load must be a positive number");
    anyhow::ensure!(cli.gpus >= 1, "--gpus must be at least 1");
    Ok(cli)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("flexmig-replay: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let cli = parse_args()?;
    let geo = replay::geometry()?;
    let trace = match &cli.trace {
        Some(p) => parse_csv(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)?,
        None => generate(&Synthetic {
            distribution: cli.distribution,
            mix: cli.mix,
            seed: cli.seed,
            jobs: Some(cli.jobs),
            load: cli.load,
            cluster_slices: geo.compute * cli.gpus,
        }),
    };
    let (_node, cluster) = replay::start_cluster(cli.gpus)?;
    let opt = Options { gpus: cli.gpus, scale: cli.scale, costs: Costs::default() };
    eprintln!("flexmig-replay: {} jobs on {} x {}, {}x compressed", trace.len(), cli.gpus, replay::MODEL, cli.scale);
    let r = replay::replay(&cluster, &trace, &opt)?;
    let p = replay::parity(&r)?;
    print!("{p}");
    if let Some(dir) = &cli.out {
        std::fs::create_dir_all(dir)?;
        let title = format!("{} jobs, {} x {}, {}x compressed", trace.len(), cli.gpus, replay::MODEL, cli.scale);
        std::fs::write(dir.join("parity.svg"), p.svg(&title))?;
        let mut csv = String::from("id,size,gres,rank_gpus,concentration,factor,replay_start_s,replay_end_s,sim_start_s,sim_end_s\n");
        for ((j, rec), ((rs, re), (ss, se))) in trace.iter().zip(&r.records).zip(&p.per_job) {
            let gres: Vec<String> = rec.gres.iter().map(u32::to_string).collect();
            let mut ranks = rec.ranks.clone();
            ranks.sort_by_key(|r| r.rank);
            let rank_gpus: Vec<String> = ranks.iter().map(|r| r.gpu.to_string()).collect();
            csv.push_str(&format!(
                "{},{},{},{},{},{},{rs:.1},{re:.1},{ss:.1},{se:.1}\n",
                j.id,
                j.size,
                gres.join(" "),
                rank_gpus.join(" "),
                rec.concentration,
                rec.factor
            ));
        }
        std::fs::write(dir.join("records.csv"), csv)?;
        eprintln!("wrote {}/parity.svg, records.csv", dir.display());
    }
    Ok(())
}
