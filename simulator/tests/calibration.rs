//! The concentration slowdown: its default is what `flexmig-sim calibrate` computes from the
//! committed DDP step measurements, and the table reads between and beyond its points.

use flexmig_sim::alloc::{Concentration, Costs};
use flexmig_sim::calibrate::{calibrate, read_steps};

#[test]
fn the_default_table_is_the_calibration_of_the_committed_runs() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/results/nccl");
    let mut steps = Vec::new();
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            steps.extend(read_steps(&std::fs::read_to_string(&p).unwrap(), &p.display().to_string()));
        }
    }
    let c = calibrate(&steps).unwrap();
    assert_eq!(c.table, Concentration::measured(), "{}", c.report());
    assert_eq!(Costs::default().concentration_slowdown, Concentration::measured());
    // Packed on one GPU and spread over two with the same leaves on the fullest GPU both count
    // at that concentration: 4 ranks on 2 GPUs at 2, 7 at 4, 14 at 7.
    for (ranks, gpus, m) in [(4, 2, 2), (7, 2, 4), (14, 2, 7)] {
        assert!(steps.iter().any(|s| (s.ranks, s.gpus, s.concentration()) == (ranks, gpus, m)), "no spread run {ranks} on {gpus}");
    }
    // Both models at every point.
    for key in [("resnet", 2), ("resnet", 4), ("resnet", 7), ("transformer", 2), ("transformer", 4), ("transformer", 7)] {
        assert!(c.runs.contains_key(&(key.0.to_string(), key.1)), "{key:?}: {}", c.report());
    }
}

#[test]
fn the_table_is_linear_between_points_and_proportional_outside() {
    let t = Concentration::parse("2:0.1,4:0.3").unwrap();
    let at: Vec<f64> = (1..=6).map(|m| t.at(m)).collect();
    let want = [0.05, 0.1, 0.2, 0.3, 0.375, 0.45];
    for (m, (a, w)) in at.iter().zip(want).enumerate() {
        assert!((a - w).abs() < 1e-12, "{} leaves: {a} != {w}", m + 1);
    }
    assert_eq!(t.to_string(), "2:0.1,4:0.3");
    assert_eq!(Concentration::parse("0").unwrap(), Concentration::none());
    assert_eq!(Concentration::none().at(7), 0.0);
    for (bad, says) in
        [("4", "LEAVES:SLOWDOWN"), ("0:0.1", "start at 1"), ("2:0.1,2:0.2", "twice"), ("2:-1", "non-negative"), ("x:1", "leaf count")]
    {
        let e = Concentration::parse(bad).unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
    }
}
