//! The node's `Gres=` as slurm.conf gives it: the `NodeName=` line naming the node (a hostlist
//! such as `gpu[01-04]`), or the `NodeName=DEFAULT` line before it, following `Include` lines
//! (relative to slurm.conf's directory, as Slurm does) and `\` line continuations.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

/// Where slurm.conf is unless told: `$SLURM_CONF`, else `/etc/slurm/slurm.conf`.
pub fn default_path() -> PathBuf {
    std::env::var_os("SLURM_CONF").filter(|v| !v.is_empty()).map_or_else(|| PathBuf::from("/etc/slurm/slurm.conf"), PathBuf::from)
}

/// The slurm.conf lines naming one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// The node's line: `/etc/slurm/slurm.conf line 40`.
    pub origin: String,
    /// The line's `NodeName=` value.
    pub names: String,
    /// The `Gres=` value in effect and the line that sets it (the node's own, or a DEFAULT
    /// line); None when neither sets one.
    pub gres: Option<(String, String)>,
    /// Further lines naming the same node.
    pub also: Vec<String>,
}

/// One logical line: its text and where it starts.
struct Line {
    text: String,
    origin: String,
}

const MAX_INCLUDE_DEPTH: usize = 8;

/// Finds `node` in the slurm.conf at `path`.
///
/// # Errors
/// slurm.conf or an included file unreadable, an include cycle, a malformed NodeName hostlist.
pub fn find_node(path: &Path, node: &str) -> Result<Option<NodeEntry>> {
    let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut lines = Vec::new();
    read_lines(path, &dir, 0, &mut lines)?;
    find_in(&lines, node)
}

fn read_lines(path: &Path, dir: &Path, depth: usize, out: &mut Vec<Line>) -> Result<()> {
    if depth > MAX_INCLUDE_DEPTH {
        bail!("{}: includes nest deeper than {MAX_INCLUDE_DEPTH} files (an include cycle?)", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut pending: Option<Line> = None;
    for (n, raw) in text.lines().enumerate() {
        let code = strip_comment(raw);
        let (code, continued) = match code.strip_suffix('\\') {
            Some(c) => (c.to_string(), true),
            None => (code, false),
        };
        let line = match pending.take() {
            Some(mut l) => {
                l.text.push(' ');
                l.text.push_str(&code);
                l
            }
            None => Line { text: code, origin: format!("{} line {}", path.display(), n + 1) },
        };
        if continued {
            pending = Some(line);
            continue;
        }
        let t = line.text.trim();
        let include = t
            .get(..7)
            .filter(|k| k.eq_ignore_ascii_case("include"))
            .map(|_| &t[7..])
            .filter(|rest| rest.starts_with(char::is_whitespace))
            .map(str::trim);
        match include {
            Some(target) => {
                let p = Path::new(target.trim_matches('"'));
                let p = if p.is_absolute() { p.to_path_buf() } else { dir.join(p) };
                read_lines(&p, dir, depth + 1, out).with_context(|| format!("following the Include on {}", line.origin))?;
            }
            None if !t.is_empty() => out.push(line),
            None => {}
        }
    }
    if let Some(l) = pending {
        out.push(l);
    }
    Ok(())
}

/// The line without its comment (`#` up to the end, unless written `\#`).
fn strip_comment(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'#') => {
                out.push('#');
                chars.next();
            }
            '#' => break,
            _ => out.push(c),
        }
    }
    out.trim_end().to_string()
}

/// `key=value` pairs of a line; values may be double-quoted.
fn pairs(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=').filter(|&i| !rest[..i].contains(char::is_whitespace)) else {
            // A word without `=`: skip it.
            rest = rest.find(char::is_whitespace).map_or("", |i| rest[i..].trim_start());
            continue;
        };
        let key = rest[..eq].to_string();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (q[..end].to_string(), &q[end + 1..]),
                None => (q.to_string(), ""),
            }
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        out.push((key, value));
        rest = next.trim_start();
    }
    out
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
}

fn find_in(lines: &[Line], node: &str) -> Result<Option<NodeEntry>> {
    let mut default_gres: Option<(String, String)> = None;
    let mut found: Option<NodeEntry> = None;
    for line in lines {
        let p = pairs(&line.text);
        let Some((first, names)) = p.first() else { continue };
        if !first.eq_ignore_ascii_case("nodename") {
            continue;
        }
        let gres = get(&p, "gres").map(|g| (g.to_string(), line.origin.clone()));
        if names.eq_ignore_ascii_case("default") {
            if gres.is_some() {
                default_gres = gres;
            }
            continue;
        }
        let listed = leaf_model::hostlist::expand(names).map_err(|e| anyhow!("{}: NodeName={names}: {e}", line.origin))?;
        if !listed.iter().any(|n| n == node) {
            continue;
        }
        match &mut found {
            Some(f) => f.also.push(line.origin.clone()),
            None => {
                found = Some(NodeEntry {
                    origin: line.origin.clone(),
                    names: names.clone(),
                    gres: gres.or_else(|| default_gres.clone()),
                    also: Vec::new(),
                })
            }
        }
    }
    Ok(found)
}

/// `value` with its gpu items replaced by `gpu` (at the place of the first gpu item, or at the
/// end); other GRES stay as they are.
pub fn replace_gpu_items(value: &str, gpu: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut placed = false;
    // Split at the commas outside a socket list such as `(S:0,1)`.
    for item in leaf_model::gres_order::split_top_level(value) {
        let name = item.trim().split([':', '(']).next().unwrap_or("");
        if name == "gpu" {
            if !placed && !gpu.is_empty() {
                out.push(gpu);
            }
            placed = true;
        } else {
            out.push(item);
        }
    }
    if !placed && !gpu.is_empty() {
        out.push(gpu);
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(files: &[(&str, &str)], node: &str) -> Result<Option<NodeEntry>> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        find_node(&dir.path().join(files[0].0), node).map(|e| {
            e.map(|mut e| {
                // Paths relative to the directory, for readable comparisons.
                let strip = |s: &mut String| *s = s.replace(&format!("{}/", dir.path().display()), "");
                strip(&mut e.origin);
                if let Some((_, o)) = &mut e.gres {
                    strip(o);
                }
                e.also.iter_mut().for_each(strip);
                e
            })
        })
    }

    fn gres(files: &[(&str, &str)], node: &str) -> Option<(String, String)> {
        find(files, node).unwrap().unwrap().gres
    }

    #[test]
    fn finds_the_node_line_and_its_gres() {
        let conf = "ClusterName=x\n# NodeName=gpu01 Gres=gpu:wrong:1\nnodename=gpu[01-04],login1 CPUs=64 \\\n  Gres=gpu:1g.20gb:2,gpu:1g.10gb:12 # comment\nNodeName=gpu05 Gres=\"gpu:1g.5gb:1\" Feature=\"a b\"\n";
        let g = |n: &str| gres(&[("slurm.conf", conf)], n);
        assert_eq!(g("gpu03"), Some(("gpu:1g.20gb:2,gpu:1g.10gb:12".into(), "slurm.conf line 3".into())));
        assert_eq!(g("login1").unwrap().0, "gpu:1g.20gb:2,gpu:1g.10gb:12");
        assert_eq!(g("gpu05").unwrap().0, "gpu:1g.5gb:1");
        assert_eq!(find(&[("slurm.conf", conf)], "gpu06").unwrap(), None);
        assert_eq!(find(&[("slurm.conf", conf)], "gpu1").unwrap(), None, "gpu1 is not gpu01");
    }

    #[test]
    fn default_lines_give_gres_to_the_lines_after_them() {
        let conf = "NodeName=DEFAULT Gres=gpu:1g.10gb:12\nNodeName=a CPUs=4\nNodeName=DEFAULT CPUs=8\nNodeName=b\nNodeName=DEFAULT Gres=gpu:x:1\nNodeName=c Gres=gpu:y:2\n";
        let f = [("slurm.conf", conf)];
        assert_eq!(gres(&f, "a"), Some(("gpu:1g.10gb:12".into(), "slurm.conf line 1".into())));
        assert_eq!(gres(&f, "b").unwrap().1, "slurm.conf line 1", "a DEFAULT line without Gres= keeps the earlier one");
        assert_eq!(gres(&f, "c"), Some(("gpu:y:2".into(), "slurm.conf line 6".into())));
        assert_eq!(gres(&[("slurm.conf", "NodeName=a CPUs=1\n")], "a"), None);
    }

    #[test]
    fn follows_includes_relative_to_slurm_conf() {
        let f = [("etc/slurm.conf", "ClusterName=x\nInclude nodes/gpu.conf\n"), ("etc/nodes/gpu.conf", "\n\nNodeName=n1 Gres=gpu:t:3\n")];
        let e = find(&f, "n1").unwrap().unwrap();
        assert_eq!(e.origin, "etc/nodes/gpu.conf line 3");
        assert_eq!(e.gres.unwrap().0, "gpu:t:3");
        let missing = find(&[("slurm.conf", "include /nonexistent/x.conf\n")], "n1").unwrap_err();
        assert!(format!("{missing:#}").contains("/nonexistent/x.conf") && format!("{missing:#}").contains("line 1"), "{missing:#}");
        let cycle = find(&[("slurm.conf", "Include slurm.conf\n")], "n1").unwrap_err();
        assert!(format!("{cycle:#}").contains("include cycle"), "{cycle:#}");
    }

    #[test]
    fn replaces_only_the_gpu_items() {
        assert_eq!(replace_gpu_items("gpu:b:12,gpu:a:2", "gpu:a:2,gpu:b:12"), "gpu:a:2,gpu:b:12");
        assert_eq!(replace_gpu_items("nic:1,gpu:b:12,mps:100,gpu:a:2", "gpu:a:2,gpu:b:12"), "nic:1,gpu:a:2,gpu:b:12,mps:100");
        assert_eq!(replace_gpu_items("nic:1", "gpu:a:2"), "nic:1,gpu:a:2");
        assert_eq!(replace_gpu_items("", "gpu:a:2"), "gpu:a:2");
        assert_eq!(replace_gpu_items("gpu:b:1(S:0,1),nic:1(S:0,1)", "gpu:a:1"), "gpu:a:1,nic:1(S:0,1)");
    }
}
