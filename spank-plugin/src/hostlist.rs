//! Slurm hostlist expressions (`node[01-04,07],gpu5`): the first host, and the n-th.

/// Returns the first host name of a Slurm hostlist, or None for an empty or malformed list.
pub fn first_host(list: &str) -> Option<String> {
    expand(list)?.into_iter().next()
}

/// Expands a hostlist into its hosts, in order (`rack[1-2]-n[01-02]` ->
/// rack1-n01, rack1-n02, rack2-n01, rack2-n02). None when malformed or absurdly large.
pub fn expand(list: &str) -> Option<Vec<String>> {
    const MAX: usize = 1 << 16;
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut elems = Vec::new();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1)?,
            ',' if depth == 0 => {
                elems.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return None;
    }
    elems.push(&list[start..]);
    for elem in elems.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
        // Cartesian product of the bracket groups, left to right.
        let mut names = vec![String::new()];
        let mut rest = elem;
        while let Some(open) = rest.find('[') {
            let prefix = &rest[..open];
            let close = rest[open..].find(']')? + open;
            let mut values = Vec::new();
            for part in rest[open + 1..close].split(',') {
                let (a, b) = part.split_once('-').unwrap_or((part, part));
                let (a, b) = (a.trim(), b.trim());
                if a.is_empty() || !a.chars().all(|c| c.is_ascii_digit()) || !b.chars().all(|c| c.is_ascii_digit()) {
                    return None;
                }
                let (lo, hi): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
                if hi < lo || (hi - lo) as usize > MAX {
                    return None;
                }
                let width = a.len();
                values.extend((lo..=hi).map(|v| format!("{v:0width$}")));
            }
            names = names.iter().flat_map(|n| values.iter().map(move |v| format!("{n}{prefix}{v}"))).collect();
            if names.len() > MAX {
                return None;
            }
            rest = &rest[close + 1..];
        }
        if rest.contains(']') {
            return None;
        }
        out.extend(names.into_iter().map(|n| n + rest));
        if out.len() > MAX {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::{expand, first_host};

    #[test]
    fn expansion() {
        assert_eq!(expand("n[1-2]").unwrap(), ["n1", "n2"]);
        assert_eq!(expand("a,node[08-10,3],b").unwrap(), ["a", "node08", "node09", "node10", "node3", "b"]);
        assert_eq!(expand("rack[1-2]-n[01-02]").unwrap(), ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]);
        assert_eq!(expand("localhost").unwrap(), ["localhost"]);
        for bad in ["", "n[1-", "n[2-1]", "n[a]", "n]"] {
            assert!(expand(bad).is_none(), "{bad}");
        }
        // The first host agrees with the expansion.
        for l in ["node[01-04,07],gpu5", "rack[2-3]-gpu[005-009]"] {
            assert_eq!(first_host(l).unwrap(), expand(l).unwrap()[0]);
        }
    }

    #[test]
    fn expressions() {
        assert_eq!(first_host("localhost").as_deref(), Some("localhost"));
        assert_eq!(first_host("a,b").as_deref(), Some("a"));
        assert_eq!(first_host("node[01-04,07]").as_deref(), Some("node01"));
        assert_eq!(first_host("node[7,1-3],x").as_deref(), Some("node7"));
        assert_eq!(first_host("rack[2-3]-gpu[005-009]").as_deref(), Some("rack2-gpu005"));
        assert_eq!(first_host("gpu-a100-[10-12]").as_deref(), Some("gpu-a100-10"));
    }

    #[test]
    fn malformed() {
        assert_eq!(first_host(""), None);
        assert_eq!(first_host("node[01-04"), None);
        assert_eq!(first_host("node]1["), None);
        assert_eq!(first_host("node[]"), None);
        assert_eq!(first_host("node[a-b]"), None);
    }
}
