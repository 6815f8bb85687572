//! Slurm hostlist expressions (`gpu[01-04,07],login`), as slurm.conf's NodeName= and the job's
//! node lists write them: read by the helper (slurm.conf) and the plugin (SLURM_STEP_NODELIST,
//! the job record).

/// The host names of a Slurm hostlist (`gpu[01-04,07],login1`, `rack[1-2]-n[1-2]`), in order.
///
/// # Errors
/// No host at all, unbalanced brackets, a range that is not digits, or more than 65536 names.
pub fn expand(list: &str) -> Result<Vec<String>, String> {
    const MAX: usize = 1 << 16;
    let mut elems = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1).ok_or("a `]` without its `[`")?,
            ',' if depth == 0 => {
                elems.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("a `[` without its `]`".into());
    }
    elems.push(&list[start..]);
    let mut out = Vec::new();
    for elem in elems.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
        let mut names = vec![String::new()];
        let mut rest = elem;
        while let Some(open) = rest.find('[') {
            let close = open + rest[open..].find(']').ok_or("a `[` without its `]`")?;
            let mut values = Vec::new();
            for part in rest[open + 1..close].split(',') {
                let (a, b) = part.split_once('-').unwrap_or((part, part));
                let (a, b) = (a.trim(), b.trim());
                let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
                if !digits(a) || !digits(b) {
                    return Err(format!("`[{}]` is not a list of numbers and ranges", &rest[open + 1..close]));
                }
                let (lo, hi): (u64, u64) = (a.parse().map_err(|_| "a number too large")?, b.parse().map_err(|_| "a number too large")?);
                if hi < lo || hi - lo >= MAX as u64 {
                    return Err(format!("the range {a}-{b} is empty or too large"));
                }
                values.extend((lo..=hi).map(|v| format!("{v:0width$}", width = a.len())));
            }
            let prefix = &rest[..open];
            names = names.iter().flat_map(|n| values.iter().map(move |v| format!("{n}{prefix}{v}"))).collect();
            if names.len() > MAX {
                return Err(format!("more than {MAX} names"));
            }
            rest = &rest[close + 1..];
        }
        if rest.contains(']') {
            return Err("a `]` without its `[`".into());
        }
        out.extend(names.into_iter().map(|n| n + rest));
        if out.len() > MAX {
            return Err(format!("more than {MAX} names"));
        }
    }
    if out.is_empty() {
        return Err("it names no host".into());
    }
    Ok(out)
}

/// The first host of a hostlist, or None for an empty or malformed one.
pub fn first_host(list: &str) -> Option<String> {
    expand(list).ok()?.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::{expand, first_host};

    #[test]
    fn expansion() {
        assert_eq!(expand("gpu[01-03,07],login").unwrap(), ["gpu01", "gpu02", "gpu03", "gpu07", "login"]);
        assert_eq!(expand("r[1-2]-n[8-9]").unwrap(), ["r1-n8", "r1-n9", "r2-n8", "r2-n9"]);
        assert_eq!(expand("n[9-10]").unwrap(), ["n9", "n10"]);
        assert_eq!(expand("a,node[08-10,3],b").unwrap(), ["a", "node08", "node09", "node10", "node3", "b"]);
        assert_eq!(expand("localhost").unwrap(), ["localhost"]);
        for bad in ["", " , ", "n[1-", "n[2-1]", "n[a]", "n]", "node[]", "node]1["] {
            assert!(expand(bad).is_err(), "{bad}");
        }
        for l in ["node[01-04,07],gpu5", "rack[2-3]-gpu[005-009]"] {
            assert_eq!(first_host(l).unwrap(), expand(l).unwrap()[0]);
        }
    }

    #[test]
    fn first_hosts() {
        assert_eq!(first_host("a,b").as_deref(), Some("a"));
        assert_eq!(first_host("node[7,1-3],x").as_deref(), Some("node7"));
        assert_eq!(first_host("gpu-a100-[10-12]").as_deref(), Some("gpu-a100-10"));
        assert_eq!(first_host(""), None);
        assert_eq!(first_host("node[01-04"), None);
    }
}
