//! The committed selection table (select.json) holds measured numbers only: every point is
//! rebuilt here from the committed results it names (bench/results/hostreduce/), with the rule of
//! bench/hostreduce_table.py: per --host run, the worst default-settings host record against the
//! best NCCL record of the same run; the point keeps the run where that ratio is lowest; points
//! with a wrong result left out; beside compute likewise per --beside run (slowest host, fastest
//! NCCL "overlap" record), the run where NCCL's time over the host path's is lowest.
use flexmig_hostreduce::select::{Table, BUILT_IN};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

type Key = (usize, String, u64);

fn records(file: &str, kind: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results/hostreduce").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|d| d["kind"] == kind && d.get("bytes").is_some())
        .collect()
}

fn key(d: &Value) -> Key {
    (d["k"].as_u64().unwrap() as usize, d["dtype"].as_str().unwrap().to_string(), d["bytes"].as_u64().unwrap())
}

fn is_default(d: &Value) -> bool {
    d.get("variant").and_then(Value::as_str).unwrap_or("default") == "default"
}

#[test]
fn every_point_of_the_built_in_table_comes_from_the_committed_results() {
    let t = Table::parse(BUILT_IN).unwrap();
    if t.points.is_empty() {
        assert!(t.source.starts_with("nothing measured"), "an empty table says so: {}", t.source);
        return;
    }
    // "bench/hostreduce_table.py --host A B --beside C D --min-speedup X --floor Y"
    let words: Vec<&str> = t.source.split_whitespace().collect();
    assert_eq!(words[0], "bench/hostreduce_table.py", "{}", t.source);
    let after = |flag: &str| -> Vec<&str> {
        let Some(i) = words.iter().position(|w| *w == flag) else { return vec![] };
        words[i + 1..].iter().take_while(|w| !w.starts_with("--")).copied().collect()
    };
    let min_speedup: f64 = after("--min-speedup")[0].parse().unwrap();
    assert_eq!(min_speedup, t.min_speedup);
    let floor: f64 = after("--floor")[0].parse().unwrap();
    assert_eq!(floor, t.floor);
    // key -> (host / NCCL, host, NCCL) of the run where the host path fared worst
    let mut alone: BTreeMap<Key, (f64, f64, f64)> = BTreeMap::new();
    let mut wrong = std::collections::BTreeSet::new();
    for f in after("--host") {
        let (mut host, mut nccl): (BTreeMap<Key, f64>, BTreeMap<Key, f64>) = Default::default();
        for d in records(f, "allreduce").into_iter().filter(is_default) {
            let v = d["busbw_equiv_GBps"].as_f64().unwrap();
            if d["impl"] == "hostreduce" {
                if d["correct"] != true {
                    wrong.insert(key(&d));
                }
                let e = host.entry(key(&d)).or_insert(f64::INFINITY);
                *e = e.min(v);
            } else if d["impl"] == "nccl" && d["correct"] == true {
                let e = nccl.entry(key(&d)).or_insert(0.0);
                *e = e.max(v);
            }
        }
        for (k, h) in host {
            let Some(&n) = nccl.get(&k).filter(|n| **n > 0.0) else { continue };
            if !matches!(alone.get(&k), Some(a) if a.0 <= h / n) {
                alone.insert(k, (h / n, h, n));
            }
        }
    }
    // key -> (NCCL's time / the host path's, host s, NCCL s) of the run where the host path fared worst
    let mut beside: BTreeMap<Key, (f64, f64, f64)> = BTreeMap::new();
    for f in after("--beside") {
        let mut run: BTreeMap<Key, (f64, f64)> = BTreeMap::new();
        for d in records(f, "overlap").into_iter().filter(is_default) {
            let s = d["both_s"].as_f64().unwrap();
            let e = run.entry(key(&d)).or_insert((f64::NAN, f64::NAN));
            match d["impl"].as_str() {
                Some("hostreduce") => e.0 = if e.0.is_nan() { s } else { e.0.max(s) },
                Some("nccl") => e.1 = if e.1.is_nan() { s } else { e.1.min(s) },
                _ => {}
            }
        }
        for (k, (h, n)) in run {
            if h.is_nan() || n.is_nan() || h <= 0.0 {
                continue;
            }
            if !matches!(beside.get(&k), Some(b) if b.0 <= n / h) {
                beside.insert(k, (n / h, h, n));
            }
        }
    }
    let want: Vec<(Key, f64, f64)> = alone.iter().filter(|(k, _)| !wrong.contains(*k)).map(|(k, a)| (k.clone(), a.1, a.2)).collect();
    assert_eq!(t.points.len(), want.len(), "points in select.json against points in the results");
    for (p, (k, h, n)) in t.points.iter().zip(&want) {
        assert_eq!((p.k, p.dtype.to_string(), p.bytes), k.clone());
        assert!((p.hostreduce_busbw_gbps - h).abs() < 0.001, "{k:?}: host {} in the table, {h} measured", p.hostreduce_busbw_gbps);
        assert!((p.nccl_busbw_gbps - n).abs() < 0.001, "{k:?}: NCCL {} in the table, {n} measured", p.nccl_busbw_gbps);
        match (&p.beside_compute, beside.get(k)) {
            (None, None) => {}
            (Some(b), Some((_, h, n))) => {
                assert!((b.hostreduce_s - h).abs() < 1e-5 && (b.nccl_s - n).abs() < 1e-5, "{k:?}: beside compute {b:?}, measured {h} {n}");
            }
            (b, m) => panic!("{k:?}: beside compute {b:?} in the table, {m:?} measured"),
        }
    }
}
