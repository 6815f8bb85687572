//! The first host of a Slurm hostlist expression (`node[01-04,07],gpu5` -> `node01`).

/// Returns the first host name of a Slurm hostlist, or None for an empty or malformed list.
pub fn first_host(list: &str) -> Option<String> {
    // The first top-level comma ends the first element; commas inside brackets do not count.
    let mut depth = 0usize;
    let mut end = list.len();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1)?,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let elem = list[..end].trim();
    if elem.is_empty() {
        return None;
    }
    // Each bracket group contributes its first value: the start of its first range.
    let mut out = String::new();
    let mut rest = elem;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find(']')? + open;
        let inner = &rest[open + 1..close];
        let first = inner.split(',').next()?.split('-').next()?.trim();
        if first.is_empty() || !first.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        out.push_str(first);
        rest = &rest[close + 1..];
    }
    if rest.contains(']') {
        return None;
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::first_host;

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
