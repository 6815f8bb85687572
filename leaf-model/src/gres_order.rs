//! The GRES order of a flexmig node: which leaf gets which Slurm GRES index.
//!
//! Two facts decide it, and this module is the one place both live:
//!
//! * **flexmig's order** ([`flexmig_order`]): the double leaves first, one per GPU in turn, then
//!   the small leaves round-robin across GPUs (small 0 of GPU 0, of GPU 1, ..., small 1 of GPU 0,
//!   ...). Slurm hands out the lowest free indices first, so a single-leaf job gets a double leaf
//!   while one is free and an N-leaf job of small leaves is spread evenly over the GPUs.
//! * **Slurm's numbering** ([`slurm_gres_indices`]): slurmd numbers a node's gpu GRES in the
//!   type order of the slurm.conf `NodeName=... Gres=` line, and by gres.conf line order only
//!   within one type (seen on Slurm 22.05 and 24.11). A type missing from the line, or lines
//!   beyond its count, are dropped by slurmd.
//!
//! So gres.conf lists the leaves in flexmig's order grouped by type, and the node's `Gres=`
//! line names the types in that same order ([`node_gres`]): then gres.conf line k of the gpu
//! lines is GRES index k. Everything here is pure data in, data out.

use std::fmt;

use crate::layout::LeafRole;

/// One leaf as the order sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLeaf {
    /// The physical GPU (NVML index).
    pub gpu: u32,
    pub role: LeafRole,
    /// The MIG profile, which is the leaf's GRES type.
    pub profile: String,
    /// The leaf's position among the leaves of its role on its GPU (0, 1, ...; by memory slice).
    pub rank: u32,
}

/// flexmig's GRES order of `leaves`: position k holds the index into `leaves` of the leaf that
/// gets GRES index k. Doubles first, then smalls, each round-robin over the GPUs by rank; then
/// grouped stably by type in order of first appearance, because Slurm numbers by type (on a node
/// of one GPU model the grouping changes nothing).
pub fn flexmig_order(leaves: &[OrderLeaf]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..leaves.len()).collect();
    order.sort_by_key(|&i| {
        let l = &leaves[i];
        (l.role != LeafRole::Double, l.rank, l.gpu)
    });
    let mut types: Vec<&str> = Vec::new();
    for &i in &order {
        if !types.contains(&leaves[i].profile.as_str()) {
            types.push(&leaves[i].profile);
        }
    }
    order.sort_by_key(|&i| types.iter().position(|t| *t == leaves[i].profile));
    order
}

/// One `gpu:<type>:<count>` item of a slurm.conf `Gres=` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GresCount {
    pub type_name: String,
    pub count: u64,
}

impl fmt::Display for GresCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gpu:{}:{}", self.type_name, self.count)
    }
}

/// The gpu items of the node's `Gres=` line for leaves whose profiles are given in GRES order:
/// each type once, in order of first appearance, with its number of leaves.
pub fn node_gres<'a>(profiles_in_gres_order: impl IntoIterator<Item = &'a str>) -> Vec<GresCount> {
    let mut out: Vec<GresCount> = Vec::new();
    for p in profiles_in_gres_order {
        match out.iter_mut().find(|g| g.type_name == p) {
            Some(g) => g.count += 1,
            None => out.push(GresCount { type_name: p.to_string(), count: 1 }),
        }
    }
    out
}

/// The items as a `Gres=` value: `gpu:1g.20gb:2,gpu:1g.10gb:12`.
pub fn gres_value(items: &[GresCount]) -> String {
    items.iter().map(GresCount::to_string).collect::<Vec<_>>().join(",")
}

/// The gpu items of a slurm.conf `Gres=` value, in order (other GRES, such as `nic:2`, are
/// skipped). Accepts `gpu:<type>:<count>`, `gpu:<type>` (count 1), a `no_consume` flag, a
/// `K`/`M`/`G` count suffix and a socket suffix such as `(S:0-1)`.
///
/// # Errors
/// An untyped gpu item (`gpu:14`: flexmig's leaves are typed by profile) or a malformed one.
pub fn parse_node_gres(value: &str) -> Result<Vec<GresCount>, String> {
    let mut out = Vec::new();
    for item in split_top_level(value) {
        let item = item.trim();
        let bare = item.find('(').map_or(item, |p| &item[..p]);
        let mut parts: Vec<&str> = bare.split(':').collect();
        if parts.first() != Some(&"gpu") {
            continue;
        }
        parts.retain(|p| !p.eq_ignore_ascii_case("no_consume"));
        let typed = |t: &str, count: u64| {
            if t.is_empty() {
                Err(format!("`{item}` has an empty type"))
            } else {
                Ok(GresCount { type_name: t.to_string(), count })
            }
        };
        let untyped = || Err(format!("`{item}` has no type: flexmig's leaves are gpu GRES typed by profile (gpu:<profile>:<count>)"));
        let g = match parts.as_slice() {
            [_] => untyped(),
            [_, x] if parse_count(x).is_some() => untyped(),
            [_, t] => typed(t, 1),
            [_, t, n] => typed(t, parse_count(n).ok_or_else(|| format!("`{item}` has count `{n}`, which is not a number"))?),
            _ => Err(format!("`{item}` is not of the form gpu:<type>:<count>")),
        }?;
        out.push(g);
    }
    Ok(out)
}

/// The items of a GRES list (`gpu:1g.5gb:2(S:0,1),mig:0`), split at the commas outside
/// parentheses; empty items left out.
pub fn split_top_level(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in value.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

fn parse_count(s: &str) -> Option<u64> {
    let (digits, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1 << 10),
        b'm' | b'M' => (&s[..s.len() - 1], 1 << 20),
        b'g' | b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

/// Slurm's GRES index of each gres.conf gpu record, given the node's `Gres=` items and each
/// record's type in gres.conf line order. The records are grouped by the position of their type
/// in the `Gres=` line (a type named twice counts at its first place, with the counts added) and
/// keep their line order within a type. `None`: slurmd drops the record, because its type is not
/// in the line or the type already has as many records as its count.
pub fn slurm_gres_indices(gres: &[GresCount], record_types: &[&str]) -> Vec<Option<u32>> {
    let mut types: Vec<(&str, u64)> = Vec::new();
    for g in gres {
        match types.iter_mut().find(|(t, _)| *t == g.type_name) {
            Some((_, n)) => *n = n.saturating_add(g.count),
            None => types.push((&g.type_name, g.count)),
        }
    }
    let mut out = vec![None; record_types.len()];
    let mut next = 0u32;
    for (t, count) in types {
        let mut taken = 0u64;
        for (i, r) in record_types.iter().enumerate() {
            if *r == t && taken < count {
                out[i] = Some(next);
                next += 1;
                taken += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(gpu: u32, role: LeafRole, profile: &str, rank: u32) -> OrderLeaf {
        OrderLeaf { gpu, role, profile: profile.into(), rank }
    }

    /// The leaves of `gpus` GPUs with `smalls` small leaves of `small` and one double of
    /// `double` each, listed GPU by GPU (smalls by rank, then the double), as a node reports them.
    fn node(gpus: &[(&str, &str)], smalls: u32) -> Vec<OrderLeaf> {
        let mut v = Vec::new();
        for (g, (small, double)) in (0u32..).zip(gpus) {
            for r in 0..smalls {
                v.push(leaf(g, LeafRole::Small, small, r));
            }
            v.push(leaf(g, LeafRole::Double, double, 0));
        }
        v
    }

    fn ordered(leaves: &[OrderLeaf]) -> Vec<(u32, &str)> {
        flexmig_order(leaves).into_iter().map(|i| (leaves[i].gpu, leaves[i].profile.as_str())).collect()
    }

    #[test]
    fn flexmig_order_puts_doubles_first_then_smalls_round_robin() {
        type Case = (&'static str, Vec<OrderLeaf>, Vec<(u32, &'static str)>);
        let cases: Vec<Case> = vec![
            ("no leaves", vec![], vec![]),
            ("one GPU", node(&[("s", "d")], 2), vec![(0, "d"), (0, "s"), (0, "s")]),
            (
                "two GPUs",
                node(&[("s", "d"), ("s", "d")], 3),
                vec![(0, "d"), (1, "d"), (0, "s"), (1, "s"), (0, "s"), (1, "s"), (0, "s"), (1, "s")],
            ),
            (
                "three GPUs, no doubles",
                vec![leaf(2, LeafRole::Small, "s", 0), leaf(0, LeafRole::Small, "s", 0), leaf(1, LeafRole::Small, "s", 0)],
                vec![(0, "s"), (1, "s"), (2, "s")],
            ),
            (
                "GPUs with fewer smalls than others",
                vec![leaf(0, LeafRole::Small, "s", 0), leaf(0, LeafRole::Small, "s", 1), leaf(1, LeafRole::Small, "s", 0)],
                vec![(0, "s"), (1, "s"), (0, "s")],
            ),
            (
                // A100-40GB (1g.5gb small, 1g.10gb double) beside an A100-80GB (1g.10gb small,
                // 1g.20gb double): 1g.10gb is a double on GPU 0 and a small on GPU 1, so its
                // leaves are grouped together where 1g.10gb first appears.
                "mixed models, grouped by type",
                node(&[("1g.5gb", "1g.10gb"), ("1g.10gb", "1g.20gb")], 2),
                vec![(0, "1g.10gb"), (1, "1g.10gb"), (1, "1g.10gb"), (1, "1g.20gb"), (0, "1g.5gb"), (0, "1g.5gb")],
            ),
        ];
        for (name, leaves, want) in cases {
            assert_eq!(ordered(&leaves), want, "{name}");
            // Whatever the input order, the order is a permutation of it.
            let mut seen = flexmig_order(&leaves);
            seen.sort_unstable();
            assert_eq!(seen, (0..leaves.len()).collect::<Vec<_>>(), "{name}");
        }
    }

    #[test]
    fn flexmig_order_is_one_slurm_numbers_in_line_order() {
        // With the Gres= line node_gres() gives, Slurm's index of the k-th leaf is k, for
        // every recorded leaf layout shape, even on a node mixing models.
        for leaves in [
            node(&[("1g.10gb", "1g.20gb"); 2], 6),
            node(&[("1g.5gb", "1g.10gb"); 4], 6),
            node(&[("1g.5gb", "1g.10gb"), ("1g.10gb", "1g.20gb")], 6),
            (0..4).map(|r| leaf(r % 2, LeafRole::Small, "1g.6gb", r / 2)).collect(),
        ] {
            let types: Vec<&str> = flexmig_order(&leaves).into_iter().map(|i| leaves[i].profile.as_str()).collect();
            let gres = node_gres(types.iter().copied());
            let idx = slurm_gres_indices(&gres, &types);
            assert_eq!(idx, (0..).take(types.len()).map(Some).collect::<Vec<_>>(), "{types:?}");
        }
    }

    #[test]
    fn node_gres_counts_types_in_order_of_first_appearance() {
        assert_eq!(gres_value(&node_gres(["1g.20gb", "1g.20gb", "1g.10gb", "1g.10gb", "1g.10gb"])), "gpu:1g.20gb:2,gpu:1g.10gb:3");
        assert_eq!(gres_value(&node_gres([])), "");
    }

    #[test]
    fn slurm_numbers_by_the_type_order_of_the_gres_line() {
        let g = |v: &str| parse_node_gres(v).unwrap();
        // gres.conf as flexmig writes it for two H100-80GB: doubles first.
        let records = ["1g.20gb", "1g.20gb", "1g.10gb", "1g.10gb", "1g.10gb"];
        type Case<'a> = (&'a str, &'a [&'a str], Vec<Option<u32>>);
        let cases: Vec<Case<'_>> = vec![
            ("gpu:1g.20gb:2,gpu:1g.10gb:3", &records, vec![Some(0), Some(1), Some(2), Some(3), Some(4)]),
            // The swapped line: every index shifts, the first 1g.10gb line is index 0.
            ("gpu:1g.10gb:3,gpu:1g.20gb:2", &records, vec![Some(3), Some(4), Some(0), Some(1), Some(2)]),
            // Types interleaved in gres.conf: numbered by type, line order within a type.
            (
                "gpu:1g.20gb:2,gpu:1g.10gb:3",
                &["1g.10gb", "1g.20gb", "1g.10gb", "1g.20gb", "1g.10gb"],
                vec![Some(2), Some(0), Some(3), Some(1), Some(4)],
            ),
            // A type named twice counts at its first place.
            ("gpu:1g.10gb:1,gpu:1g.20gb:2,gpu:1g.10gb:2", &records, vec![Some(3), Some(4), Some(0), Some(1), Some(2)]),
            // Too small a count drops the last lines of the type; a missing type drops all.
            ("gpu:1g.20gb:1,gpu:1g.10gb:3", &records, vec![Some(0), None, Some(1), Some(2), Some(3)]),
            ("gpu:1g.10gb:3", &records, vec![None, None, Some(0), Some(1), Some(2)]),
            ("nic:2,gpu:1g.20gb:2(S:0-1),gpu:1g.10gb:3", &records, vec![Some(0), Some(1), Some(2), Some(3), Some(4)]),
        ];
        for (line, recs, want) in &cases {
            assert_eq!(&slurm_gres_indices(&g(line), recs), want, "{line}");
        }
    }

    #[test]
    fn parses_gres_values() {
        let p = |v: &str| parse_node_gres(v).map(|g| gres_value(&g));
        assert_eq!(p("gpu:1g.20gb:2,gpu:1g.10gb:12").unwrap(), "gpu:1g.20gb:2,gpu:1g.10gb:12");
        assert_eq!(p("gpu:a100:no_consume:1K").unwrap(), "gpu:a100:1024");
        assert_eq!(p("gpu:1g.5gb").unwrap(), "gpu:1g.5gb:1");
        assert_eq!(p("nic:4,bandwidth:lustre:4G,gpu:1g.5gb:2(S:0,1)").unwrap(), "gpu:1g.5gb:2");
        assert_eq!(p("").unwrap(), "");
        for (bad, msg) in [
            ("gpu:14", "has no type"),
            ("gpu", "has no type"),
            ("gpu:1g.5gb:x", "not a number"),
            ("gpu:a:b:c", "not of the form"),
            ("gpu::3", "empty type"),
            ("gpu:t:99999999999999999999", "not a number"),
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.contains(msg) && e.contains(bad), "{bad}: {e}");
        }
    }
}
