//! A short trace replayed on the real Slurm with flexmig: Slurm's placement is what the
//! simulator's Flex-MIG allocator predicts, job by job, uneven splits included, and the replay's
//! times are those of `compare`.

use flexmig_integration::replay::{self, Options};
use flexmig_sim::alloc::Costs;
use flexmig_sim::trace::{Job, Kind};

fn job(id: &str, submit_s: f64, size: u32, duration_s: f64) -> Job {
    Job { id: id.into(), submit_s, size, duration_s, kind: Kind::Training }
}

#[test]
fn slurm_places_every_job_where_the_simulator_does() {
    // Two A100-40GB: GRES 0-1 the double leaves, then small leaf k of GPU g at 2 + 2k + g.
    let trace = [
        job("y", 0.0, 3, 1500.0),  // 2 3 4: two leaves on GPU 0, one on GPU 1
        job("z", 0.0, 3, 200.0),   // 5 6 7
        job("w", 0.0, 3, 1500.0),  // 8 9 10
        job("p1", 0.0, 1, 1500.0), // 0: a double leaf
        job("p2", 0.0, 1, 1500.0), // 1: the other
        // After z: the lowest free small leaves are z's 5 6 7 (GPU 1, 0, 1) and 11 (GPU 1), so
        // three of q's four leaves share GPU 1, though 2 + 2 was free (12 is on GPU 0).
        job("q", 500.0, 4, 400.0),
        job("p3", 800.0, 1, 300.0), // both doubles busy: the lowest free small leaf, 12
    ];
    let (_node, c) = replay::start_cluster(2).unwrap_or_else(|e| panic!("{e:#}"));
    let opt = Options { gpus: 2, scale: 60.0, costs: Costs::default() };
    let r = replay::replay(&c, &trace, &opt).unwrap_or_else(|e| panic!("{e:#}\n{}", c.log_tails()));
    let p = replay::parity(&r).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{p}");
    let gres: Vec<Vec<u32>> = r.records.iter().map(|x| x.gres.clone()).collect();
    assert_eq!(gres, [vec![2, 3, 4], vec![5, 6, 7], vec![8, 9, 10], vec![0], vec![1], vec![5, 6, 7, 11], vec![12]], "{p}");
    assert_eq!(p.slurm_rule_exact, trace.len(), "{p}");
    assert_eq!(p.concentration_agrees, trace.len(), "{p}");
    // The plugin put q's ranks round-robin over its leaves' GPUs: 3 on GPU 1, 1 on GPU 0.
    let q = &r.records[5];
    let mut gpus: Vec<u32> = q.ranks.iter().map(|x| x.gpu).collect();
    gpus.sort_unstable();
    assert_eq!(gpus, [0, 1, 1, 1]);
    assert_eq!(q.concentration, 3);
    assert!((q.factor - Costs::default().many_leaves_factor(3)).abs() < 1e-9, "{}", q.factor);
    assert!(q.ranks.iter().all(|x| x.step_gpus == "5-7,11" || x.step_gpus == "5,6,7,11"), "{:?}", q.ranks);
    // Four multi-leaf jobs; all but q got the evenest split. The most-free rule, greedy one leaf
    // at a time from the GPU with the most free leaves (4 against 2 here), splits q 3 + 1 too.
    assert_eq!((p.multi_leaf, p.evenest_replay, p.evenest_most_free), (4, 3, 3), "{p}");
    // The replay's times are the simulator's: no job waits for leaves in either, and each runs
    // as long, up to the compression's launch delay (under a second per job, tens of trace
    // seconds at this scale, which shows as waiting).
    assert!((p.replay.avg_run_s / p.simulated.avg_run_s - 1.0).abs() < 0.05, "{p}");
    assert!((p.replay.makespan_s / p.simulated.makespan_s - 1.0).abs() < 0.10, "{p}");
}
