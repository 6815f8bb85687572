//! Scheduler invariants on small hand-made traces with hand-computed outcomes, and on
//! generated traces for every mode and scheduler.

use flexmig_sim::alloc::{Concentration, Costs, Flex, Mode, Placement};
use flexmig_sim::geometry::{load_model, Geometry};
use flexmig_sim::sim::{simulate, Config, Run, Scheduler};
use flexmig_sim::trace::{generate, Distribution, Job, Kind, Mix, Synthetic};

fn a100() -> Geometry {
    Geometry::from_model(&load_model("A100-40GB").unwrap()).unwrap()
}

fn job(id: &str, submit_s: f64, size: u32, duration_s: f64, kind: Kind) -> Job {
    Job { id: id.into(), submit_s, size, duration_s, kind }
}

fn train(id: &str, submit_s: f64, size: u32, duration_s: f64) -> Job {
    job(id, submit_s, size, duration_s, Kind::Training)
}

/// No slowdowns, so outcomes are easy to compute by hand.
fn plain(gpus: u32, scheduler: Scheduler) -> Config {
    Config {
        scheduler,
        backfill_window: 14,
        record: true,
        costs: Costs {
            gpus,
            gpus_per_node: gpus,
            one_to_many_slowdown: 0.0,
            cross_gpu_slowdown: 0.0,
            concentration_slowdown: Concentration::none(),
            double_leaf_speedup: 0.0,
            ..Costs::default()
        },
    }
}

fn times(run: &Run) -> Vec<(f64, f64)> {
    run.outcomes.iter().map(|o| (o.start_s, o.end_s)).collect()
}

/// Checks what must hold in every run, whatever the mode.
fn check_invariants(jobs: &[Job], run: &Run, scheduler: Scheduler, mode: Mode) {
    // Every job ran, never before it arrived, for at least its duration.
    for (j, o) in jobs.iter().zip(&run.outcomes) {
        assert!(o.alloc_s >= j.submit_s, "{mode:?}: job {} allocated at {} before it arrived at {}", j.id, o.alloc_s, j.submit_s);
        assert!(o.start_s >= o.alloc_s, "{mode:?}: job {} starts before its allocation", j.id);
        assert!(o.end_s > o.start_s, "{mode:?}: job {} never ran", j.id);
    }
    // No memory slice (leaf or instance) is held by two jobs at once.
    let segs = &run.segments;
    assert!(!segs.is_empty());
    for (i, a) in segs.iter().enumerate() {
        assert!(a.to_s.is_finite(), "{mode:?}: job {} never released its slices", a.job);
        for b in &segs[i + 1..] {
            let same_slices =
                a.hold.gpu == b.hold.gpu && a.hold.start < b.hold.start + b.hold.size && b.hold.start < a.hold.start + a.hold.size;
            let same_time = a.from_s < b.to_s && b.from_s < a.to_s;
            assert!(
                !(same_slices && same_time),
                "{mode:?}: GPU {} slices double-booked by jobs {} ({:?} {}..{}) and {} ({:?} {}..{})",
                a.hold.gpu,
                jobs[a.job].id,
                a.hold,
                a.from_s,
                a.to_s,
                jobs[b.job].id,
                b.hold,
                b.from_s,
                b.to_s
            );
        }
    }
    // FIFO: allocations in arrival order.
    if scheduler == Scheduler::Fifo {
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by(|&a, &b| jobs[a].submit_s.total_cmp(&jobs[b].submit_s));
        for w in order.windows(2) {
            let (a, b) = (&run.outcomes[w[0]], &run.outcomes[w[1]]);
            assert!(
                a.alloc_s <= b.alloc_s,
                "{mode:?} FIFO: job {} allocated at {} after job {} at {}",
                jobs[w[0]].id,
                a.alloc_s,
                jobs[w[1]].id,
                b.alloc_s
            );
        }
    }
    // Drains only in Dynamic-MIG, never of inference, never on a GPU running inference.
    if mode != Mode::Dm {
        assert!(run.drains.is_empty());
        assert_eq!(run.metrics.reconfigurations, 0);
    }
    for d in &run.drains {
        for &j in &d.jobs {
            assert_eq!(jobs[j].kind, Kind::Training, "drained inference job {}", jobs[j].id);
        }
        // The job the drain made room for may itself be inference; nothing else on the GPU may.
        for s in segs.iter().filter(|s| s.hold.gpu == d.gpu && s.job != d.for_job && s.from_s <= d.at_s && d.at_s < s.to_s) {
            assert_ne!(jobs[s.job].kind, Kind::Inference, "GPU {} drained at {} while inference job {} ran", d.gpu, d.at_s, jobs[s.job].id);
        }
    }
    for (j, o) in jobs.iter().zip(&run.outcomes) {
        if j.kind == Kind::Inference {
            assert_eq!(o.drains, 0);
        }
    }
    assert_eq!(run.metrics.drained_jobs, run.outcomes.iter().map(|o| u64::from(o.drains)).sum::<u64>());
    assert!((0.0..=1.0).contains(&run.metrics.utilization), "{mode:?}: utilization {}", run.metrics.utilization);
}

#[test]
fn flex_fifo_holds_back_a_job_that_backfill_starts() {
    // One A100: 6 small leaves (slices 0-5) and the double leaf (6-7).
    let jobs = [train("a", 0.0, 6, 100.0), train("b", 0.0, 1, 50.0), train("c", 10.0, 2, 50.0), train("d", 20.0, 1, 10.0)];
    let geo = a100();
    // FIFO: a takes the 6 small leaves, b the double leaf. c waits for a (t=100); d, behind
    // c, may not pass it although the double leaf is free from t=50.
    let fifo = simulate(&jobs, &geo, Mode::Fm, &plain(1, Scheduler::Fifo)).unwrap();
    assert_eq!(times(&fifo), [(0.0, 100.0), (0.0, 50.0), (100.0, 150.0), (100.0, 110.0)]);
    check_invariants(&jobs, &fifo, Scheduler::Fifo, Mode::Fm);
    // b and later d sit on the double leaf.
    let double: Vec<&str> =
        fifo.segments.iter().filter(|s| s.hold.start == 6 && s.hold.size == 2).map(|s| jobs[s.job].id.as_str()).collect();
    assert_eq!(double, ["b", "d"]);
    // c waited at the head with no small leaf free: no external fragmentation.
    assert_eq!(fifo.outcomes[2].ext_frag_s, 0.0);
    assert_eq!(fifo.metrics.makespan_s, 150.0);
    assert_eq!(fifo.metrics.avg_wait_s, (0.0 + 0.0 + 90.0 + 80.0) / 4.0);

    // Backfill: d starts on the double leaf when b leaves it at t=50.
    let bf = simulate(&jobs, &geo, Mode::Fm, &plain(1, Scheduler::Backfill)).unwrap();
    assert_eq!(times(&bf), [(0.0, 100.0), (0.0, 50.0), (100.0, 150.0), (50.0, 60.0)]);
    check_invariants(&jobs, &bf, Scheduler::Backfill, Mode::Fm);
    // The checker is not vacuous: it rejects backfill's order as FIFO, and a double booking.
    let as_fifo = std::panic::catch_unwind(|| check_invariants(&jobs, &bf, Scheduler::Fifo, Mode::Fm));
    assert!(as_fifo.is_err());
    let mut broken = fifo.clone();
    let d_seg = broken.segments.iter().position(|s| jobs[s.job].id == "d").unwrap();
    broken.segments[d_seg].from_s = 40.0; // d on the double leaf while b still holds it
    assert!(std::panic::catch_unwind(|| check_invariants(&jobs, &broken, Scheduler::Fifo, Mode::Fm)).is_err());
}

#[test]
fn flex_spreads_over_the_gpus_and_applies_slowdowns() {
    let geo = a100();
    let jobs = [train("x", 0.0, 4, 100.0), train("p", 0.0, 1, 100.0), train("q", 0.0, 1, 100.0), train("r", 0.0, 1, 100.0)];
    // Both rules spread this trace alike: the double leaves first, the 4 leaves 2 + 2.
    for placement in [Placement::Slurm, Placement::MostFree] {
        let mut cfg = plain(2, Scheduler::Fifo);
        cfg.costs.one_to_many_slowdown = 0.10;
        cfg.costs.concentration_slowdown = Concentration::new(vec![(2, 0.05), (4, 0.20)]).unwrap();
        cfg.costs.double_leaf_speedup = 0.20;
        cfg.costs.placement = placement;
        let run = simulate(&jobs, &geo, Mode::Fm, &cfg).unwrap();
        check_invariants(&jobs, &run, Scheduler::Fifo, Mode::Fm);
        // x: 2 small leaves on each GPU: one-to-many, and 2 leaves on its fullest GPU.
        let per_gpu = |j: usize, g: u32| run.segments.iter().filter(|s| s.job == j && s.hold.gpu == g).count();
        assert_eq!((per_gpu(0, 0), per_gpu(0, 1)), (2, 2), "{placement:?}");
        assert!((run.outcomes[0].end_s - 100.0 * 1.10 * 1.05).abs() < 1e-9, "{placement:?}");
        // p and q take the double leaves of GPU 0 and 1 (20% faster); r finds no double leaf left.
        let hold = |j: usize| run.segments.iter().find(|s| s.job == j).unwrap().hold;
        assert_eq!((hold(1).gpu, hold(1).start, hold(1).size), (0, 6, 2));
        assert_eq!((hold(2).gpu, hold(2).start, hold(2).size), (1, 6, 2));
        assert_eq!(hold(3).size, 1);
        assert_eq!(times(&run)[1..], [(0.0, 80.0), (0.0, 80.0), (0.0, 100.0)]);
    }
}

#[test]
fn slurm_placement_takes_the_lowest_free_gres_indices() {
    // Two A100s: GRES 0-1 the doubles, then small leaf k of GPU g at index 2 + 2k + g.
    let geo = a100();
    let mut cfg = plain(2, Scheduler::Fifo);
    cfg.costs.concentration_slowdown = Concentration::new(vec![(2, 0.10), (4, 0.30)]).unwrap();
    let jobs = [
        train("y", 0.0, 3, 1000.0), // indices 2, 3, 4
        train("z", 0.0, 3, 10.0),   // 5, 6, 7: GPU 1, 0, 1
        train("w", 0.0, 3, 1000.0), // 8, 9, 10
        train("q", 20.0, 4, 100.0), // z's 5, 6, 7 and then 11: three of its four on GPU 1
    ];
    let run = simulate(&jobs, &geo, Mode::Fm, &cfg).unwrap();
    check_invariants(&jobs, &run, Scheduler::Fifo, Mode::Fm);
    let q: Vec<(u32, u32)> = run.segments.iter().filter(|s| s.job == 3).map(|s| (s.hold.gpu, s.hold.start)).collect();
    assert_eq!(q, [(1, 1), (0, 2), (1, 2), (1, 4)]);
    // Three leaves on GPU 1: 0.20, between the points at 2 and 4.
    assert!((run.outcomes[3].end_s - (20.0 + 100.0 * 1.20)).abs() < 1e-9, "{:?}", run.outcomes[3]);
    // y's 3 leaves are 2 + 1: 10% (the point at 2 leaves).
    assert!((run.outcomes[0].end_s - 1100.0).abs() < 1e-9);

    // The allocator names the GRES indices, as slurmctld would show them.
    let mut fm = Flex::new(&geo, &cfg.costs, jobs.len());
    use flexmig_sim::alloc::Allocator as _;
    for (i, j) in jobs.iter().enumerate().take(3) {
        fm.place(i, j, 0.0).unwrap();
    }
    fm.release(1);
    fm.place(3, &jobs[3], 20.0).unwrap();
    assert_eq!(fm.gres_indices(0), Some((0, vec![2, 3, 4])));
    assert_eq!(fm.gres_indices(3), Some((0, vec![5, 6, 7, 11])));
    assert_eq!(fm.concentration(3), 3);
    assert_eq!(fm.gres_indices(1), None);
}

#[test]
fn slurm_placement_fills_nodes_in_order() {
    // Three nodes of one A100 each: a job goes to the first node that can hold it.
    let geo = a100();
    let mut cfg = plain(3, Scheduler::Fifo);
    cfg.costs.gpus_per_node = 1;
    let jobs = [
        train("a", 0.0, 4, 100.0),  // node 0: 4 of its 6 small leaves
        train("b", 0.0, 4, 100.0),  // node 0 has 2 left: node 1
        train("c", 0.0, 2, 100.0),  // node 0's last 2
        train("d", 0.0, 1, 100.0),  // node 0's double leaf
        train("e", 0.0, 6, 100.0),  // node 2
        train("f", 10.0, 3, 100.0), // node 1's last 2 small leaves are too few: waits for a at 100
    ];
    let run = simulate(&jobs, &geo, Mode::Fm, &cfg).unwrap();
    check_invariants(&jobs, &run, Scheduler::Fifo, Mode::Fm);
    let gpu = |j: usize| run.segments.iter().find(|s| s.job == j).unwrap().hold.gpu;
    assert_eq!((0..6).map(gpu).collect::<Vec<_>>(), [0, 1, 0, 0, 2, 0]);
    assert_eq!(run.outcomes[5].start_s, 100.0);
}

/// Five 1g jobs land (by the least-blocking rule) at slices 6, 4, 5, 0, 1. When all but the
/// one at slice 1 are gone, a 4g (only legal at slice 0) is blocked by the tree although 6
/// compute slices are free: Dynamic-MIG drains the GPU unless it runs inference.
fn blocked_tree_trace(last: Kind) -> Vec<Job> {
    vec![
        train("a", 0.0, 1, 100.0),
        train("b", 0.0, 1, 100.0),
        train("c", 0.0, 1, 100.0),
        train("d", 0.0, 1, 100.0),
        job("e", 0.0, 1, 1000.0, last),
        train("big", 150.0, 4, 500.0),
    ]
}

#[test]
fn dynamic_drains_when_the_tree_blocks() {
    let geo = a100();
    let jobs = blocked_tree_trace(Kind::Training);
    let run = simulate(&jobs, &geo, Mode::Dm, &plain(1, Scheduler::Fifo)).unwrap();
    check_invariants(&jobs, &run, Scheduler::Fifo, Mode::Dm);
    let first_start = |j: usize| run.segments.iter().find(|s| s.job == j).unwrap().hold.start;
    assert_eq!((0..5).map(first_start).collect::<Vec<_>>(), [6, 4, 5, 0, 1]);
    // Drain at 150: 110 s reconfiguration; e loses 110 + 30 + 30 s; big runs 260..760 on 4g@0.
    assert_eq!(run.metrics.reconfigurations, 1);
    assert_eq!(run.drains.len(), 1);
    assert_eq!(run.drains[0].at_s, 150.0);
    assert_eq!(run.drains[0].jobs, [4]);
    assert_eq!(run.outcomes[4].end_s, 1000.0 + 170.0);
    assert_eq!(run.outcomes[4].drains, 1);
    assert_eq!((run.outcomes[5].alloc_s, run.outcomes[5].start_s, run.outcomes[5].end_s), (150.0, 260.0, 760.0));
    let big = run.segments.iter().find(|s| s.job == 5).unwrap().hold;
    assert_eq!((big.start, big.size), (0, 4));
    // e was moved off slice 1 by the repack.
    let e_after: Vec<u32> = run.segments.iter().filter(|s| s.job == 4).map(|s| s.hold.start).collect();
    assert_eq!(e_after.len(), 2);
    assert!(e_after[1] >= 4);
}

#[test]
fn dynamic_never_drains_a_gpu_running_inference() {
    let geo = a100();
    let jobs = blocked_tree_trace(Kind::Inference);
    let run = simulate(&jobs, &geo, Mode::Dm, &plain(1, Scheduler::Fifo)).unwrap();
    check_invariants(&jobs, &run, Scheduler::Fifo, Mode::Dm);
    assert_eq!(run.metrics.reconfigurations, 0);
    // big waits for e: starts at 1000.
    assert_eq!((run.outcomes[5].start_s, run.outcomes[5].end_s), (1000.0, 1500.0));
    // It waited at the head from 150 to 1000 with 6 compute slices free: external fragmentation.
    assert_eq!(run.outcomes[5].ext_frag_s, 850.0);
    // Flex-MIG runs the same trace without waiting: big takes 4 small leaves at 150.
    let fm = simulate(&jobs, &geo, Mode::Fm, &plain(1, Scheduler::Fifo)).unwrap();
    check_invariants(&jobs, &fm, Scheduler::Fifo, Mode::Fm);
    assert_eq!(fm.outcomes[5].start_s, 150.0);
}

#[test]
fn static_serves_small_jobs_from_larger_instances_and_rejects_large_ones() {
    let geo = a100();
    let jobs = [
        train("s1", 0.0, 1, 100.0),
        train("s2", 0.0, 1, 100.0),
        train("s3", 0.0, 1, 100.0),
        train("m", 0.0, 2, 10.0),
        train("t", 5.0, 1, 10.0),
    ];
    let run = simulate(&jobs, &geo, Mode::Sm, &plain(1, Scheduler::Fifo)).unwrap();
    check_invariants(&jobs, &run, Scheduler::Fifo, Mode::Sm);
    // s1 on the 1g (1g.10gb@6, both memory slices), s2 on the 2g@4, s3 on the 4g@0; m
    // (2 slices) and t wait until 100.
    let holds: Vec<(u32, u32)> = (0..3)
        .map(|j| {
            let h = run.segments.iter().find(|s| s.job == j).unwrap().hold;
            (h.start, h.size)
        })
        .collect();
    assert_eq!(holds, [(6, 2), (4, 2), (0, 4)]);
    assert_eq!(times(&run)[3..], [(100.0, 110.0), (100.0, 110.0)]);
    // A one-slice job on the 1g.10gb has twice the small memory: the double-leaf speed-up
    // applies to it, not to one on the 2g.
    let mut fast = plain(1, Scheduler::Fifo);
    fast.costs.double_leaf_speedup = 0.2;
    let sped = simulate(&jobs, &geo, Mode::Sm, &fast).unwrap();
    assert_eq!(times(&sped)[..2], [(0.0, 80.0), (0.0, 100.0)]);
    // s3 holds 4 slices for 100 s: utilization counts what is held.
    assert!((run.metrics.utilization - (100.0 * 7.0 + 10.0 * 2.0 + 10.0 * 1.0) / (7.0 * 110.0)).abs() < 1e-9);
    let err = simulate(&[train("six", 0.0, 6, 10.0)], &geo, Mode::Sm, &plain(1, Scheduler::Fifo)).unwrap_err();
    assert!(err.contains("six"), "{err}");
}

#[test]
fn dynamic_splits_jobs_larger_than_a_gpu_over_one_node() {
    let geo = a100();
    let jobs = [train("eight", 0.0, 8, 100.0), train("one", 0.0, 1, 100.0)];
    let run = simulate(&jobs, &geo, Mode::Dm, &plain(2, Scheduler::Fifo)).unwrap();
    check_invariants(&jobs, &run, Scheduler::Fifo, Mode::Dm);
    let holds: Vec<_> = run.segments.iter().filter(|s| s.job == 0).map(|s| (s.hold.gpu, s.hold.size)).collect();
    assert_eq!(holds, [(0, 4), (1, 4)]);
    assert_eq!(run.outcomes[0].slices, 8);
    // On one GPU there is no node to hold it.
    assert!(simulate(&jobs, &geo, Mode::Dm, &plain(1, Scheduler::Fifo)).is_err());
}

#[test]
fn generated_traces_keep_the_invariants_in_every_mode() {
    let geo = a100();
    for scheduler in [Scheduler::Fifo, Scheduler::Backfill] {
        for (distribution, mix, gpus, gpus_per_node) in [
            (Distribution::Small, Mix::Mixed, 2, 2),
            (Distribution::Large, Mix::Training, 4, 4),
            (Distribution::Balanced, Mix::Inference, 2, 2),
            (Distribution::Balanced, Mix::Mixed, 6, 2),
        ] {
            for seed in 1..=3 {
                let jobs = generate(&Synthetic { distribution, mix, seed, jobs: None, load: 2.0, cluster_slices: 7 * gpus });
                for placement in [Placement::Slurm, Placement::MostFree] {
                    let costs = Costs { gpus, gpus_per_node, placement, ..Costs::default() };
                    let cfg = Config { record: true, scheduler, backfill_window: 14, costs };
                    for mode in Mode::ALL {
                        match simulate(&jobs, &geo, mode, &cfg) {
                            Ok(run) => check_invariants(&jobs, &run, scheduler, mode),
                            Err(e) => {
                                assert_eq!(mode, Mode::Sm, "{e}");
                                assert!(jobs.iter().any(|j| j.size > 4));
                            }
                        }
                    }
                }
            }
        }
    }
}
