//! The plugin's cost: `srun -n 7 true` with and without `--flexmig` on a throwaway local Slurm
//! (emulated leaves), A/B interleaved in one run so drift hits both sides alike.
//! Usage: flexmig-bench-plugin [ROUNDS]   (bench/plugin_overhead.sh runs it)

use std::time::Instant;

use anyhow::{bail, Result};
use flexmig_integration::{Cluster, ClusterConfig};

fn main() {
    if let Err(e) = run() {
        eprintln!("flexmig-bench-plugin: error: {e:#}");
        std::process::exit(2);
    }
}

fn time_srun(c: &Cluster, flexmig: bool) -> Result<f64> {
    let mut cmd = c.command("srun");
    cmd.args(["-n7", "--gres=gpu:1g.5gb:7"]);
    if flexmig {
        cmd.arg("--flexmig");
    }
    cmd.arg("true");
    let t0 = Instant::now();
    let o = cmd.output()?;
    let dt = t0.elapsed().as_secs_f64();
    if !o.status.success() {
        bail!("srun failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(dt)
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = v[v.len() / 2];
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (median, mean, v[v.len() * 9 / 10])
}

fn run() -> Result<()> {
    let rounds: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(40);
    let (cfg, _) = ClusterConfig::emulated(2);
    let c = Cluster::start(&cfg)?;
    // Warm-up: first sruns pay for cold caches on both sides.
    for _ in 0..3 {
        time_srun(&c, false)?;
        time_srun(&c, true)?;
    }
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        // Alternate which side goes first.
        if i % 2 == 0 {
            off.push(time_srun(&c, false)?);
            on.push(time_srun(&c, true)?);
        } else {
            on.push(time_srun(&c, true)?);
            off.push(time_srun(&c, false)?);
        }
    }
    let (m_off, a_off, p_off) = stats(&mut off);
    let (m_on, a_on, p_on) = stats(&mut on);
    println!("srun -n7 --gres=gpu:1g.5gb:7 true, {rounds} interleaved rounds (seconds)");
    println!("{:<18} {:>8} {:>8} {:>8}", "", "median", "mean", "p90");
    println!("{:<18} {:>8.3} {:>8.3} {:>8.3}", "without --flexmig", m_off, a_off, p_off);
    println!("{:<18} {:>8.3} {:>8.3} {:>8.3}", "with --flexmig", m_on, a_on, p_on);
    println!("ratio with/without: median {:.3}, mean {:.3}", m_on / m_off, a_on / a_off);
    Ok(())
}
