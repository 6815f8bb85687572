//! Which all-reduces take the host path under `FLEXMIG_HOSTREDUCE=auto`: a table of measured
//! (k, element type, size) points, host reduction against NCCL in the same run.
//!
//! The rule is "never slower than NCCL": a call of `bytes` at `k` ranks takes the host path only
//! when it lies between two measured sizes (or on one) at that k and type, and every measured size
//! from the one below it to the one above it was a win. A point is a win when the host path was at
//! least `min_speedup` times NCCL's rate alone, or, where it was also measured beside compute (as
//! in training, where NCCL's kernels take SMs from the backward pass), when it was that much faster
//! there and at least `floor` times NCCL's rate alone. Anything not measured (another k, another
//! type, a size below the smallest or above the largest measured) goes to NCCL. An empty table
//! sends everything to NCCL.
//!
//! The committed table (`hostreduce/select.json`, built into the library) is made from
//! bench/results/hostreduce/ by `bench/hostreduce_table.py`; `FLEXMIG_HOSTREDUCE_TABLE=PATH` loads
//! another one.

use crate::reduce::DType;
use serde::{Deserialize, Serialize};

pub const TABLE_VERSION: u32 = 2;

/// The table built into the library.
pub const BUILT_IN: &str = include_str!("../select.json");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    pub version: u32,
    /// The results file(s) the points come from.
    pub source: String,
    /// The machine they were measured on.
    pub machine: String,
    /// A measured point counts as a win only when the host path is this many times faster.
    pub min_speedup: f64,
    /// Beside compute, a win also needs the host path alone at this fraction of NCCL's rate alone
    /// at least, so that an all-reduce with nothing beside it loses little where it is taken.
    pub floor: f64,
    pub points: Vec<Point>,
}

/// One measurement: both paths at one (k, type, size), in the same run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    pub k: usize,
    pub dtype: DType,
    pub bytes: u64,
    pub hostreduce_busbw_gbps: f64,
    pub nccl_busbw_gbps: f64,
    /// The same all-reduces beside compute, where measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beside_compute: Option<Beside>,
}

/// All-reduces beside matrix products on another stream of the same rank: seconds until both
/// are done, per path (bench/hostreduce.py, kind "overlap").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Beside {
    pub hostreduce_s: f64,
    pub nccl_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("selection table: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("selection table version {0}: this library reads version {TABLE_VERSION}")]
    Version(u32),
    #[error("selection table: min_speedup {0} is below 1, which would pick a slower path")]
    Speedup(f64),
    #[error("selection table: floor {0} is not in (0, 1]")]
    Floor(f64),
    #[error("selection table: two points for k={k} {dtype} {bytes} bytes")]
    Duplicate { k: usize, dtype: DType, bytes: u64 },
}

impl Table {
    /// Parses and checks a table (JSON).
    ///
    /// # Errors
    /// [`TableError`] for malformed JSON, unknown fields, another version, a speed-up below 1, or
    /// a point given twice.
    pub fn parse(text: &str) -> Result<Table, TableError> {
        // The version first: a table of another version has other fields (version 1 had no
        // `floor`), and its error should say which version it is, not which field is missing.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        if let Ok(Versioned { version }) = serde_json::from_str::<Versioned>(text) {
            if version != TABLE_VERSION {
                return Err(TableError::Version(version));
            }
        }
        let t: Table = serde_json::from_str(text)?;
        if t.min_speedup.is_nan() || t.min_speedup < 1.0 {
            return Err(TableError::Speedup(t.min_speedup));
        }
        if t.floor.is_nan() || t.floor <= 0.0 || t.floor > 1.0 {
            return Err(TableError::Floor(t.floor));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &t.points {
            if !seen.insert((p.k, p.dtype, p.bytes)) {
                return Err(TableError::Duplicate { k: p.k, dtype: p.dtype, bytes: p.bytes });
            }
        }
        Ok(t)
    }

    fn wins(&self, p: &Point) -> bool {
        if p.nccl_busbw_gbps <= 0.0 {
            return false;
        }
        let alone = p.hostreduce_busbw_gbps / p.nccl_busbw_gbps;
        let beside = p.beside_compute.as_ref().is_some_and(|b| b.hostreduce_s > 0.0 && b.nccl_s >= self.min_speedup * b.hostreduce_s);
        alone >= self.min_speedup || (beside && alone >= self.floor)
    }

    /// Whether an all-reduce of `bytes` of `dtype` over `k` ranks takes the host path.
    pub fn host_wins(&self, k: usize, dtype: DType, bytes: u64) -> bool {
        let mut pts: Vec<&Point> = self.points.iter().filter(|p| p.k == k && p.dtype == dtype).collect();
        pts.sort_by_key(|p| p.bytes);
        let below = pts.iter().rposition(|p| p.bytes <= bytes);
        let above = pts.iter().position(|p| p.bytes >= bytes);
        match (below, above) {
            (Some(lo), Some(hi)) => pts[lo..=hi].iter().all(|p| self.wins(p)),
            _ => false,
        }
    }

    /// A short fingerprint, so that ranks can check they decide by the same table.
    pub fn fingerprint(&self) -> u64 {
        crate::config::fnv1a(serde_json::to_string(self).expect("a table serialises").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(points: &[(usize, u64, f64, f64)]) -> Table {
        Table {
            version: TABLE_VERSION,
            source: "test".into(),
            machine: "test".into(),
            min_speedup: 1.05,
            floor: 0.95,
            points: points
                .iter()
                .map(|&(k, bytes, h, n)| Point {
                    k,
                    dtype: DType::F32,
                    bytes,
                    hostreduce_busbw_gbps: h,
                    nccl_busbw_gbps: n,
                    beside_compute: None,
                })
                .collect(),
        }
    }

    const M: u64 = 1 << 20;

    #[test]
    fn only_sizes_inside_a_run_of_measured_wins_take_the_host_path() {
        // k=7: loses at 1 MiB, ties at 4 MiB (below the margin), wins from 16 to 256 MiB
        let t = table(&[(7, M, 1.0, 3.0), (7, 4 * M, 5.0, 4.9), (7, 16 * M, 7.0, 5.0), (7, 64 * M, 8.0, 5.5), (7, 256 * M, 8.5, 5.9)]);
        assert!(!t.host_wins(7, DType::F32, M));
        assert!(!t.host_wins(7, DType::F32, 8 * M), "between a tie and a win: not measured a win");
        assert!(t.host_wins(7, DType::F32, 16 * M));
        assert!(t.host_wins(7, DType::F32, 100 * M));
        assert!(t.host_wins(7, DType::F32, 256 * M));
        assert!(!t.host_wins(7, DType::F32, 257 * M), "above the largest measured size");
        assert!(!t.host_wins(7, DType::F32, 1024), "below the smallest");
        assert!(!t.host_wins(4, DType::F32, 64 * M), "k not measured");
        assert!(!t.host_wins(7, DType::Bf16, 64 * M), "type not measured");
    }

    #[test]
    fn a_loss_inside_the_range_splits_it() {
        let t = table(&[(4, 16 * M, 12.0, 10.0), (4, 64 * M, 9.0, 10.0), (4, 256 * M, 12.0, 10.0)]);
        assert!(t.host_wins(4, DType::F32, 16 * M));
        assert!(!t.host_wins(4, DType::F32, 32 * M));
        assert!(!t.host_wins(4, DType::F32, 64 * M));
        assert!(!t.host_wins(4, DType::F32, 128 * M));
        assert!(t.host_wins(4, DType::F32, 256 * M));
    }

    #[test]
    fn beside_compute_a_win_needs_the_margin_there_and_the_floor_alone() {
        let mut t = table(&[(4, 16 * M, 9.6, 10.0), (4, 32 * M, 9.0, 10.0), (4, 64 * M, 9.7, 10.0)]);
        let beside = |h, n| Some(Beside { hostreduce_s: h, nccl_s: n });
        t.points[0].beside_compute = beside(1.0, 1.2); // wins beside compute, 0.96 alone
        t.points[1].beside_compute = beside(1.0, 1.5); // wins beside compute, but 0.90 alone
        t.points[2].beside_compute = beside(1.0, 1.02); // 0.97 alone, no margin beside compute
        assert!(t.host_wins(4, DType::F32, 16 * M));
        assert!(!t.host_wins(4, DType::F32, 32 * M), "below the floor alone");
        assert!(!t.host_wins(4, DType::F32, 64 * M), "beside compute within the margin");
        assert!(!t.host_wins(4, DType::F32, 24 * M), "between a win and a loss");
        // alone, a win needs no measurement beside compute
        t.points[1] = Point { hostreduce_busbw_gbps: 11.0, beside_compute: None, ..t.points[1].clone() };
        assert!(t.host_wins(4, DType::F32, 24 * M));
    }

    #[test]
    fn the_built_in_table_parses_and_round_trips() {
        let t = Table::parse(BUILT_IN).unwrap();
        let again = Table::parse(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(t, again);
        assert_eq!(t.fingerprint(), again.fingerprint());
        // a measured size takes the host path only if it was itself a win there
        for p in &t.points {
            assert!(!t.host_wins(p.k, p.dtype, p.bytes) || t.wins(p), "{p:?}");
        }
    }

    #[test]
    fn malformed_tables_are_refused() {
        let ok = r#"{"version":2,"source":"s","machine":"m","min_speedup":1.05,"floor":0.95,"points":[]}"#;
        assert!(Table::parse(ok).is_ok());
        assert!(matches!(Table::parse(&ok.replace("\"version\":2", "\"version\":1")), Err(TableError::Version(1))));
        assert!(matches!(Table::parse(&ok.replace("1.05", "0.9")), Err(TableError::Speedup(_))));
        assert!(matches!(Table::parse(&ok.replace("0.95", "1.5")), Err(TableError::Floor(_))));
        assert!(matches!(Table::parse(&ok.replace(",\"floor\":0.95", "")), Err(TableError::Parse(_))));
        // a version 1 table (no floor) is refused for its version, which the message names
        let v1 = ok.replace("\"version\":2", "\"version\":1").replace(",\"floor\":0.95", "");
        let e = Table::parse(&v1).unwrap_err();
        assert!(matches!(e, TableError::Version(1)), "{e}");
        assert!(e.to_string().contains("version 1") && e.to_string().contains("version 2"), "{e}");
        assert!(matches!(Table::parse(&ok.replace("\"points\"", "\"extra\":1,\"points\"")), Err(TableError::Parse(_))));
        let p = r#"{"k":2,"dtype":"f32","bytes":1,"hostreduce_busbw_gbps":1,"nccl_busbw_gbps":1}"#;
        assert!(matches!(Table::parse(&ok.replace("[]", &format!("[{p},{p}]"))), Err(TableError::Duplicate { k: 2, .. })));
        assert!(matches!(Table::parse(&ok.replace("[]", &format!("[{}]", p.replace("f32", "f64")))), Err(TableError::Parse(_))));
    }
}
