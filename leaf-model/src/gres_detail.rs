//! What slurmctld says a job was given on a node, as `scontrol show job -d` (and the job record's
//! `gres_detail_str`) write it: `gpu:1g.10gb:2(IDX:0-1),gpu:1g.20gb:1(IDX:12),mig:0`. Read by the
//! plugin (to check a leaf's type against Slurm's) and by the helper's `status`.

/// One allocated GRES entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    pub name: String,
    /// The type (`1g.10gb`), None for an untyped request (`gpu:2(IDX:0-1)`).
    pub type_name: Option<String>,
    pub indices: Vec<u32>,
}

/// The entries with GRES indices; others (`mig:0`, `license:x(CNT:1)`) and malformed ones are left
/// out.
pub fn parse(detail: &str) -> Vec<Allocated> {
    let mut depth = 0i32;
    let mut start = 0;
    let mut entries = Vec::new();
    for (i, c) in detail.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                entries.push(&detail[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    entries.push(&detail[start..]);
    let mut out = Vec::new();
    for e in entries {
        let Some((head, rest)) = e.trim().split_once("(IDX:") else { continue };
        let Some(indices) = index_list(rest.trim_end_matches(')')) else { continue };
        let parts: Vec<&str> = head.split(':').collect();
        let (name, type_name) = match parts[..] {
            [name, ty, _count] => (name, Some(ty.to_string())),
            [name, _count] => (name, None),
            _ => continue,
        };
        out.push(Allocated { name: name.to_string(), type_name, indices });
    }
    out
}

/// A Slurm index list (`0,2,4` or `0-2,5`), None when malformed.
pub fn index_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let num = |t: &str| t.trim().parse::<u32>().ok();
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b || b - a > 4096 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_scontrols_detail() {
        let got = parse("gpu:1g.5gb:3(IDX:0-1,5),gpu:1g.10gb:1(IDX:12),gpu:2(IDX:7-8),mig:0,license:x(CNT:1)");
        let a = |n: &str, t: Option<&str>, i: &[u32]| Allocated { name: n.into(), type_name: t.map(Into::into), indices: i.to_vec() };
        assert_eq!(got, [a("gpu", Some("1g.5gb"), &[0, 1, 5]), a("gpu", Some("1g.10gb"), &[12]), a("gpu", None, &[7, 8])]);
        assert!(parse("").is_empty());
        assert!(parse("gpu:1g.5gb:2(IDX:x)").is_empty());
        assert_eq!(index_list("3-5,9"), Some(vec![3, 4, 5, 9]));
        assert_eq!(index_list("5-3"), None);
    }
}
