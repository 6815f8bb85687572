//! The simulator's Flex-MIG allocator follows the size-aware rule's shared cases
//! (slurm-conf/size_rule.cases, also read by the Lua filters' tests): admissibility, the leaves
//! a job takes on an empty node, and which GRES indices Slurm gives them there.

use flexmig_sim::alloc::{build, Allocator as _, Costs, Flex, Mode};
use flexmig_sim::geometry::{load_model, Geometry};
use flexmig_sim::trace::{Job, Kind};

struct Case {
    line: String,
    model: String,
    gpus: u32,
    small: u32,
    double: u32,
    request: u32,
    /// (small, double) taken, or None: refused.
    takes: Option<(u32, u32)>,
}

fn cases() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../slurm-conf/size_rule.cases");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    for line in text.lines() {
        let body = line.split('#').next().unwrap_or("").trim();
        if body.is_empty() {
            continue;
        }
        let f: Vec<&str> = body.split_whitespace().collect();
        let num = |i: usize| f[i].parse::<u32>().unwrap_or_else(|_| panic!("{path}: `{line}`: field {} is not a number", i + 1));
        let takes = match &f[5..] {
            ["refused"] => None,
            ["small", s, "double", d] => Some((s.parse().unwrap(), d.parse().unwrap())),
            other => panic!("{path}: `{line}`: cannot read {other:?}"),
        };
        out.push(Case { line: line.to_string(), model: f[0].into(), gpus: num(1), small: num(2), double: num(3), request: num(4), takes });
    }
    assert!(!out.is_empty(), "{path} has no cases");
    out
}

#[test]
fn flex_allocator_follows_the_shared_size_rule() {
    for c in cases() {
        let geo = Geometry::from_model(&load_model(&c.model).unwrap()).unwrap();
        let per_gpu_small = geo.leaves.iter().filter(|l| !l.double).count() as u32;
        let per_gpu_double = geo.leaves.len() as u32 - per_gpu_small;
        assert_eq!((per_gpu_small * c.gpus, per_gpu_double * c.gpus), (c.small, c.double), "{}: the model's layout", c.line);
        let costs = Costs { gpus: c.gpus, gpus_per_node: c.gpus, ..Costs::default() };
        let mut fm = build(Mode::Fm, &geo, &costs, 1);
        let job = Job { id: "j".into(), submit_s: 0.0, size: c.request, duration_s: 1.0, kind: Kind::Training };
        match c.takes {
            None => assert!(fm.admissible(&job).is_err(), "{}: admitted", c.line),
            Some((small, double)) => {
                fm.admissible(&job).unwrap_or_else(|e| panic!("{}: {e}", c.line));
                let grant = fm.place(0, &job, 0.0).unwrap_or_else(|| panic!("{}: not placed on an empty node", c.line));
                assert_eq!(grant.slices, c.request, "{}", c.line);
                let held = fm.holdings(0);
                let small_mem = geo.small_mem();
                let doubles = held.iter().filter(|h| h.size > small_mem).count() as u32;
                assert_eq!((held.len() as u32 - doubles, doubles), (small, double), "{}: {held:?}", c.line);
                // The GRES order puts the doubles first: on an empty node the job gets the lowest
                // indices of each type it asked for, doubles from 0, small leaves from after them.
                let mut flex = Flex::new(&geo, &costs, 1);
                flex.place(0, &job, 0.0).unwrap();
                let (_, idx) = flex.gres_indices(0).unwrap();
                let want: Vec<u32> = (0..double).chain(c.double..c.double + small).collect();
                assert_eq!(idx, want, "{}", c.line);
            }
        }
    }
}
