//! Which all-reduces take the host path under `FLEXMIG_HOSTREDUCE=auto`: a table of measured
//! (k, element type, size) points, host reduction against NCCL in the same run.
//!
//! The rule is "never slower than NCCL": a call of `bytes` at `k` ranks takes the host path only
//! when it lies between two measured sizes (or on one) at that k and type, and every measured size
//! from the one below it to the one above it was a win (host reduction at least `min_speedup` times
//! NCCL's rate). Anything not measured (another k, another type, a size below the smallest or above
//! the largest measured) goes to NCCL. An empty table sends everything to NCCL.
//!
//! The committed table (`hostreduce/select.json`, built into the library) is made from
//! bench/results/hostreduce/ by `bench/hostreduce_table.py`; `FLEXMIG_HOSTREDUCE_TABLE=PATH` loads
//! another one.

use crate::reduce::DType;
use serde::{Deserialize, Serialize};

pub const TABLE_VERSION: u32 = 1;

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
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("selection table: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("selection table version {0}: this library reads version {TABLE_VERSION}")]
    Version(u32),
    #[error("selection table: min_speedup {0} is below 1, which would pick a slower path")]
    Speedup(f64),
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
        let t: Table = serde_json::from_str(text)?;
        if t.version != TABLE_VERSION {
            return Err(TableError::Version(t.version));
        }
        if t.min_speedup.is_nan() || t.min_speedup < 1.0 {
            return Err(TableError::Speedup(t.min_speedup));
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
        p.nccl_busbw_gbps > 0.0 && p.hostreduce_busbw_gbps >= self.min_speedup * p.nccl_busbw_gbps
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
            version: 1,
            source: "test".into(),
            machine: "test".into(),
            min_speedup: 1.05,
            points: points
                .iter()
                .map(|&(k, bytes, h, n)| Point { k, dtype: DType::F32, bytes, hostreduce_busbw_gbps: h, nccl_busbw_gbps: n })
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
        let ok = r#"{"version":1,"source":"s","machine":"m","min_speedup":1.05,"points":[]}"#;
        assert!(Table::parse(ok).is_ok());
        assert!(matches!(Table::parse(&ok.replace("\"version\":1", "\"version\":2")), Err(TableError::Version(2))));
        assert!(matches!(Table::parse(&ok.replace("1.05", "0.9")), Err(TableError::Speedup(_))));
        assert!(matches!(Table::parse(&ok.replace("\"points\"", "\"extra\":1,\"points\"")), Err(TableError::Parse(_))));
        let p = r#"{"k":2,"dtype":"f32","bytes":1,"hostreduce_busbw_gbps":1,"nccl_busbw_gbps":1}"#;
        assert!(matches!(Table::parse(&ok.replace("[]", &format!("[{p},{p}]"))), Err(TableError::Duplicate { k: 2, .. })));
        assert!(matches!(Table::parse(&ok.replace("[]", &format!("[{}]", p.replace("f32", "f64")))), Err(TableError::Parse(_))));
    }
}
