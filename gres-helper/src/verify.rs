//! `verify`: the node's MIG leaves (NVML), the node inventory, gres.conf, the node's slurm.conf
//! `Gres=` line and what slurmd itself reports (`slurmd -G`) must agree on which leaf has which
//! GRES index. The SPANK plugin binds tasks through that index, so a disagreement puts a task
//! on the wrong leaf.
//!
//! Slurm's index of a gres.conf line follows the type order of the `Gres=` line, and the line
//! order only within a type ([`leaf_model::gres_order::slurm_gres_indices`]): gres.conf is
//! checked against the `Gres=` line the node's leaves need, and slurm.conf's line against that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use leaf_model::gres_order::{gres_value, parse_node_gres, slurm_gres_indices, GresCount};
use leaf_model::inventory::Inventory;

use crate::devices::{DevicePaths, MigMinors};
use crate::leaves::{ordered_leaves, NodeLeaf};
use crate::node::Node;
use crate::node_config::node_gres;
use crate::slurm_conf::{self, NodeEntry};

/// One gpu GRES record, from gres.conf or from `slurmd -G`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GresRecord {
    /// Where it came from, for messages (`gres.conf line 5`, `slurmd -G record 3`).
    pub origin: String,
    pub type_name: Option<String>,
    pub count: u32,
    pub files: Vec<PathBuf>,
}

fn split_files(v: &str) -> Vec<PathBuf> {
    v.split(',').filter(|f| !f.is_empty()).map(PathBuf::from).collect()
}

/// The `Name=gpu` records of a gres.conf, in order.
///
/// # Errors
/// A gpu line with a device range (`/dev/nvidia[0-3]`) this check cannot follow.
pub fn parse_gres_conf(text: &str) -> Result<Vec<GresRecord>> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut name = None;
        let mut type_name = None;
        let mut files = Vec::new();
        let mut count = 1;
        for kv in line.split_whitespace() {
            let Some((k, v)) = kv.split_once('=') else { continue };
            match k.to_ascii_lowercase().as_str() {
                "name" => name = Some(v.to_string()),
                "type" => type_name = Some(v.to_string()),
                "file" | "multiplefiles" => files = split_files(v),
                "count" => count = v.parse().unwrap_or(1),
                _ => {}
            }
        }
        if name.as_deref() != Some("gpu") {
            continue;
        }
        if files.iter().any(|f| f.to_string_lossy().contains('[')) {
            bail!(
                "gres.conf line {}: device ranges are not supported by verify; write one line per leaf (`flexmig-gres-helper gres-conf`)",
                n + 1
            );
        }
        out.push(GresRecord { origin: format!("gres.conf line {}", n + 1), type_name, count, files });
    }
    Ok(out)
}

/// The gpu records `slurmd -G` prints (`Gres Name=gpu Type=1g.10gb Count=1 Index=.. ID=.. File=a,b,c ...`),
/// in slurmd's order, which is its GRES index order.
pub fn parse_slurmd_g(text: &str) -> Vec<GresRecord> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(pos) = line.find("Gres Name=") else { continue };
        let rest = &line[pos + "Gres ".len()..];
        let mut name = None;
        let mut type_name = None;
        let mut files = Vec::new();
        let mut count = 1;
        for kv in rest.split_whitespace() {
            let Some((k, v)) = kv.split_once('=') else { continue };
            match k {
                "Name" => name = Some(v.to_string()),
                "Type" => type_name = (v != "(null)").then(|| v.to_string()),
                "Count" => count = v.parse().unwrap_or(1),
                "File" => files = split_files(v),
                _ => {}
            }
        }
        if name.as_deref() == Some("gpu") {
            let n = out.len() + 1;
            out.push(GresRecord { origin: format!("slurmd -G record {n}"), type_name, count, files });
        }
    }
    out
}

/// Runs `slurmd -G` (with `SLURM_CONF` and `-N` if given) and returns what it printed.
///
/// # Errors
/// slurmd missing or failing.
pub fn run_slurmd_g(slurmd: &Path, slurm_conf: Option<&Path>, node_name: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(slurmd);
    cmd.arg("-G");
    if let Some(n) = node_name {
        cmd.args(["-N", n]);
    }
    if let Some(c) = slurm_conf {
        cmd.env("SLURM_CONF", c);
    }
    let out = cmd.output().with_context(|| format!("running `{} -G` (install slurmd, or pass --no-slurmd)", slurmd.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("`{} -G` failed ({}): {}", slurmd.display(), out.status, text.trim());
    }
    Ok(text)
}

/// What verify compares.
#[derive(Debug)]
pub struct VerifyInputs<'a> {
    pub paths: &'a DevicePaths,
    pub gres_conf: &'a Path,
    pub inventory: &'a Path,
    /// `slurmd -G` output; None skips that check.
    pub slurmd_g: Option<String>,
    /// slurm.conf and the node's NodeName there; None skips that check.
    pub slurm_conf: Option<SlurmConfCheck<'a>>,
}

/// Which slurm.conf line to check.
#[derive(Debug, Clone, Copy)]
pub struct SlurmConfCheck<'a> {
    pub path: &'a Path,
    pub node_name: &'a str,
}

fn describe(l: &NodeLeaf) -> String {
    format!("{} (GPU {} {} at memory slice {})", l.uuid, l.gpu, l.profile, l.start)
}

/// Checks the records of one source (gres.conf or slurmd) against the inventory: the record
/// with Slurm GRES index k must name the device files of the leaf the inventory gives index k.
/// `indices[i]` is record i's GRES index (None: slurmd drops it, `dropped` says why).
fn check_records(
    what: &str,
    records: &[GresRecord],
    indices: &[Option<u32>],
    dropped: &dyn Fn(&GresRecord) -> String,
    inv: &Inventory,
    by_files: &BTreeMap<Vec<PathBuf>, &NodeLeaf>,
    diffs: &mut Vec<String>,
) {
    let mut total = 0u32;
    for (r, index) in records.iter().zip(indices) {
        total += r.count.max(1);
        if r.count != 1 {
            diffs.push(format!("{}: Count={} (a MIG leaf is one GRES; write one line per leaf)", r.origin, r.count));
        }
        let Some(index) = *index else {
            diffs.push(format!("{}: {}", r.origin, dropped(r)));
            continue;
        };
        let leaf = by_files.get(&r.files);
        let inv_leaf = inv.leaf_by_gres_index(index);
        match (leaf, inv_leaf) {
            (None, _) => diffs.push(format!(
                "{} (GRES index {index}) names device files {} that belong to no MIG leaf of the node",
                r.origin,
                r.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(",")
            )),
            (Some(l), None) => diffs.push(format!("{} (GRES index {index}) is leaf {}, but the inventory has no leaf with GRES index {index}", r.origin, describe(l))),
            (Some(l), Some(il)) if il.uuid != l.uuid => diffs.push(format!(
                "{} (GRES index {index}) is leaf {}, but the inventory gives GRES index {index} to {} (GPU {} {}): tasks would run on the wrong leaf",
                r.origin,
                describe(l),
                il.uuid,
                il.gpu,
                il.profile
            )),
            (Some(l), Some(_)) => {
                if r.type_name.as_deref() != Some(l.profile.as_str()) {
                    diffs.push(format!(
                        "{} (GRES index {index}) has Type={}, but leaf {} is a {}",
                        r.origin,
                        r.type_name.as_deref().unwrap_or("(none)"),
                        l.uuid,
                        l.profile
                    ));
                }
            }
        }
    }
    let n = u32::try_from(inv.leaves.len()).unwrap_or(u32::MAX);
    if total != n {
        diffs.push(format!("{what} has {total} gpu GRES, the inventory {n} leaves"));
    }
}

/// Why slurmd drops a gres.conf line when the node's `Gres=` is `gres`.
fn dropped_by_slurmd(r: &GresRecord, gres: &[GresCount]) -> String {
    let value = gres_value(gres);
    match r.type_name.as_deref() {
        None => format!("has no Type=; a MIG leaf's line needs Type=<its profile> (the node needs Gres={value})"),
        Some(t) => match gres.iter().find(|g| g.type_name == t) {
            None => format!("Type={t}, but the node has no {t} leaf (its leaves need Gres={value}); slurmd would drop this line"),
            Some(g) => format!("one {t} line more than the node's {} {t} leaves (Gres={value}); slurmd would drop this line", g.count),
        },
    }
}

/// Checks the node's slurm.conf `Gres=` against `want`, the gpu items its leaves need.
fn check_slurm_conf(check: SlurmConfCheck<'_>, entry: Option<NodeEntry>, want: &[GresCount], diffs: &mut Vec<String>) {
    let want_value = gres_value(want);
    let node = check.node_name;
    let Some(e) = entry else {
        diffs.push(format!(
            "{} has no NodeName line for {node} (pass --node-name if slurm.conf names this node otherwise); the node needs NodeName={node} Gres={want_value} (see the line `flexmig-gres-helper gres-conf --node-conf` writes)",
            check.path.display()
        ));
        return;
    };
    if !e.also.is_empty() {
        diffs.push(format!("{}: node {node} is also named on {}; keep one line for it", e.origin, e.also.join(", ")));
    }
    let Some((value, origin)) = e.gres else {
        diffs.push(format!(
            "{}: NodeName={} has no Gres= (nor a NodeName=DEFAULT line before it), so Slurm gives the node no MIG leaves: add Gres={want_value}, then restart slurmctld and slurmd",
            e.origin, e.names
        ));
        return;
    };
    let place = if origin == e.origin { origin } else { format!("{origin} (NodeName=DEFAULT, in effect for {} on {})", e.names, e.origin) };
    let fixed = slurm_conf::replace_gpu_items(&value, &want_value);
    let have = match parse_node_gres(&value) {
        Ok(h) => h,
        Err(err) => {
            diffs.push(format!("{place}: Gres={value}: {err}; set Gres={fixed}, then restart slurmctld and slurmd"));
            return;
        }
    };
    if have == want {
        return;
    }
    let key = |v: &[GresCount]| {
        let mut k: Vec<(String, u64)> = v.iter().map(|g| (g.type_name.clone(), g.count)).collect();
        k.sort();
        k
    };
    let (how, so) = if key(&have) == key(want) {
        (
            "lists the leaf types in another order than",
            "every leaf gets another GRES index and tasks would run on leaves Slurm gave to other jobs",
        )
    } else {
        ("has other leaf types or counts than", "Slurm's GRES indices are not the inventory's and tasks could run on the wrong leaves")
    };
    diffs.push(format!(
        "{place}: Gres={value} {how} this node needs: Gres={want_value} (its MIG leaves, as gres.conf and the inventory number them). Slurm numbers a node's gpu GRES in the type order of this line and by gres.conf line order only within a type, so with this line {so}; set Gres={fixed}, then restart slurmctld and slurmd"
    ));
}

/// Compares NVML, inventory, gres.conf and slurmd; returns the differences (empty: all agree).
///
/// # Errors
/// The node cannot be read or has no leaves; gres.conf unreadable.
pub fn verify(node: &mut dyn Node, input: &VerifyInputs<'_>) -> Result<Vec<String>> {
    let minors = MigMinors::load(&input.paths.mig_minors)?;
    let (gpus, leaves) = ordered_leaves(node, input.paths, &minors)?;
    let mut diffs = Vec::new();

    let inv = match Inventory::load(input.inventory) {
        Ok(i) => i,
        Err(e) => {
            diffs.push(e.to_string());
            return Ok(diffs);
        }
    };
    // NVML against the inventory.
    for g in gpus.iter().filter(|g| leaves.iter().any(|l| l.gpu == g.index)) {
        match inv.gpu(g.index) {
            None => diffs.push(format!("GPU {} ({}) has leaves but no [[gpu]] entry in the inventory", g.index, g.uuid)),
            Some(ig) if ig.uuid != g.uuid || ig.bus_id != g.bus_id => {
                diffs.push(format!("GPU {}: NVML reports {} at {}, the inventory {} at {}", g.index, g.uuid, g.bus_id, ig.uuid, ig.bus_id))
            }
            Some(_) => {}
        }
    }
    for l in &leaves {
        match inv.leaves.iter().find(|il| il.uuid == l.uuid) {
            None => diffs.push(format!("leaf {} is on the node but not in the inventory", describe(l))),
            Some(il) => {
                if il.gpu != l.gpu || il.profile != l.profile {
                    diffs.push(format!("leaf {}: the inventory says GPU {} {}", describe(l), il.gpu, il.profile));
                }
                if il.gres_index != l.gres_index {
                    diffs.push(format!(
                        "leaf {} has GRES index {} in the inventory, but flexmig's order gives it {} (regenerate with `flexmig-gres-helper gres-conf`)",
                        describe(l),
                        il.gres_index,
                        l.gres_index
                    ));
                }
            }
        }
    }
    for il in &inv.leaves {
        if !leaves.iter().any(|l| l.uuid == il.uuid) {
            diffs.push(format!("inventory leaf {} (GRES index {}) does not exist on the node", il.uuid, il.gres_index));
        }
    }

    // Read slurm.conf first: an unreadable one is an error, not a difference.
    let slurm_conf = match input.slurm_conf {
        Some(c) => Some((
            c,
            slurm_conf::find_node(c.path, c.node_name)
                .context("reading slurm.conf (pass --slurm-conf PATH, or --no-slurm-conf to skip this check)")?,
        )),
        None => None,
    };
    // The Gres= line the node's leaves need; gres.conf is numbered as Slurm would with it.
    let want = node_gres(&leaves);
    let by_files: BTreeMap<Vec<PathBuf>, &NodeLeaf> = leaves.iter().map(|l| (l.files.clone(), l)).collect();
    let text = std::fs::read_to_string(input.gres_conf).with_context(|| format!("cannot read gres.conf {}", input.gres_conf.display()))?;
    let records = parse_gres_conf(&text)?;
    let types: Vec<&str> = records.iter().map(|r| r.type_name.as_deref().unwrap_or("")).collect();
    let indices = slurm_gres_indices(&want, &types);
    let dropped = |r: &GresRecord| dropped_by_slurmd(r, &want);
    check_records(&format!("{}", input.gres_conf.display()), &records, &indices, &dropped, &inv, &by_files, &mut diffs);
    if let Some((check, entry)) = slurm_conf {
        check_slurm_conf(check, entry, &want, &mut diffs);
    }

    if let Some(out) = &input.slurmd_g {
        let records = parse_slurmd_g(out);
        if records.is_empty() {
            diffs.push(format!(
                "`slurmd -G` reported no gpu GRES (is GresTypes=gpu set and gres.conf the one slurmd reads?); it printed:\n{}",
                out.trim()
            ));
        } else {
            // slurmd has numbered them already: the index of a record is its position.
            let indices: Vec<Option<u32>> = (0..).take(records.len()).map(Some).collect();
            check_records("slurmd -G", &records, &indices, &|_| String::new(), &inv, &by_files, &mut diffs);
        }
    }
    Ok(diffs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{fake_mig_minors, MemoryNode};
    use crate::node_config::{gres_conf_text, inventory};

    struct Setup {
        dir: tempfile::TempDir,
        paths: DevicePaths,
        node: MemoryNode,
        leaves: Vec<NodeLeaf>,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (mut node, _) = MemoryNode::applied("A100-40GB", 2);
        let paths = DevicePaths { dev_root: dir.path().join("dev"), mig_minors: dir.path().join("mig-minors") };
        std::fs::write(&paths.mig_minors, fake_mig_minors(&[0, 1])).unwrap();
        let minors = MigMinors::load(&paths.mig_minors).unwrap();
        let (gpus, leaves) = ordered_leaves(&mut node, &paths, &minors).unwrap();
        std::fs::write(dir.path().join("gres.conf"), gres_conf_text(&leaves)).unwrap();
        inventory(&gpus, &leaves).write_atomic(&dir.path().join("flexmig.toml")).unwrap();
        Setup { dir, paths, node, leaves }
    }

    fn slurmd_output(leaves: &[NodeLeaf]) -> String {
        leaves
            .iter()
            .map(|l| {
                format!(
                    "slurmd-x: Gres Name=gpu Type={} Count=1 Index=9 ID=7696487 File={} (null)\n",
                    l.profile,
                    l.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(",")
                )
            })
            .collect()
    }

    fn run(s: &mut Setup, slurmd: Option<String>) -> Vec<String> {
        let gres = s.dir.path().join("gres.conf");
        let inv = s.dir.path().join("flexmig.toml");
        let input = VerifyInputs { paths: &s.paths, gres_conf: &gres, inventory: &inv, slurmd_g: slurmd, slurm_conf: None };
        verify(&mut s.node, &input).unwrap()
    }

    /// verify with a slurm.conf of `text` (node gpu01), without slurmd.
    fn run_with_slurm_conf(s: &mut Setup, text: &str) -> Vec<String> {
        let conf = s.dir.path().join("slurm.conf");
        std::fs::write(&conf, text).unwrap();
        let gres = s.dir.path().join("gres.conf");
        let inv = s.dir.path().join("flexmig.toml");
        let slurm_conf = Some(SlurmConfCheck { path: &conf, node_name: "gpu01" });
        let input = VerifyInputs { paths: &s.paths, gres_conf: &gres, inventory: &inv, slurmd_g: None, slurm_conf };
        verify(&mut s.node, &input).unwrap()
    }

    /// What slurmd -G prints for `gres.conf` lines naming `leaves` under `Gres=gres`: the
    /// lines grouped by the line's type order.
    fn slurmd_as_numbered(leaves: &[NodeLeaf], gres: &str) -> String {
        let types: Vec<&str> = leaves.iter().map(|l| l.profile.as_str()).collect();
        let idx = slurm_gres_indices(&parse_node_gres(gres).unwrap(), &types);
        let mut numbered: Vec<(u32, NodeLeaf)> = idx.iter().zip(leaves).filter_map(|(i, l)| Some(((*i)?, l.clone()))).collect();
        numbered.sort_by_key(|(i, _)| *i);
        slurmd_output(&numbered.into_iter().map(|(_, l)| l).collect::<Vec<_>>())
    }

    #[test]
    fn agrees_when_generated_together() {
        let mut s = setup();
        let out = slurmd_output(&s.leaves);
        assert_eq!(run(&mut s, Some(out)), Vec::<String>::new());
    }

    #[test]
    fn catches_swapped_gres_conf_lines() {
        let mut s = setup();
        let gres = s.dir.path().join("gres.conf");
        let text = std::fs::read_to_string(&gres).unwrap();
        let mut lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Name=")).collect();
        lines.swap(0, 2);
        std::fs::write(&gres, lines.join("\n")).unwrap();
        let mut swapped = s.leaves.clone();
        swapped.swap(0, 2);
        let d = run(&mut s, Some(slurmd_as_numbered(&swapped, "gpu:1g.10gb:2,gpu:1g.5gb:12")));
        // Slurm numbers by type: the small leaf now on line 1 keeps GRES index 2 (still the
        // first small line), the doubles swap places: line 2 is GRES index 0.
        assert!(d.iter().any(|m| m.contains("gres.conf line 2 (GRES index 0)") && m.contains("wrong leaf")), "{d:#?}");
        assert!(d.iter().any(|m| m.contains("gres.conf line 3 (GRES index 1)") && m.contains("wrong leaf")), "{d:#?}");
        assert!(!d.iter().any(|m| m.contains("gres.conf line 1 ")), "{d:#?}");
        assert!(d.iter().any(|m| m.contains("slurmd -G record 1 (GRES index 0)") && m.contains("wrong leaf")), "{d:#?}");
        assert_eq!(d.len(), 4, "{d:#?}");
    }

    #[test]
    fn checks_the_gres_type_order_of_slurm_conf() {
        let mut s = setup();
        let right = "gpu:1g.10gb:2,gpu:1g.5gb:12";
        let conf = |gres: &str| format!("ClusterName=x\nNodeName=gpu[01-02] CPUs=64 Gres={gres} State=UNKNOWN\n");
        assert_eq!(run_with_slurm_conf(&mut s, &conf(right)), Vec::<String>::new());
        // The types swapped: one difference, saying what to write, other GRES kept.
        let d = run_with_slurm_conf(&mut s, &conf("nic:1,gpu:1g.5gb:12,gpu:1g.10gb:2"));
        assert_eq!(d.len(), 1, "{d:#?}");
        assert!(
            d[0].contains("slurm.conf line 2: Gres=nic:1,gpu:1g.5gb:12,gpu:1g.10gb:2 lists the leaf types in another order"),
            "{}",
            d[0]
        );
        assert!(
            d[0].contains("this node needs: Gres=gpu:1g.10gb:2,gpu:1g.5gb:12 (")
                && d[0].contains("set Gres=nic:1,gpu:1g.10gb:2,gpu:1g.5gb:12,"),
            "{}",
            d[0]
        );
        // The same with slurmd -G: slurmd numbers the 1g.5gb leaves first, every record is off.
        let out = slurmd_as_numbered(&s.leaves, "gpu:1g.5gb:12,gpu:1g.10gb:2");
        let d = run(&mut s, Some(out));
        assert!(d.iter().filter(|m| m.contains("slurmd -G record") && m.contains("wrong leaf")).count() >= 12, "{d:#?}");
        for (gres, want) in [
            ("gpu:1g.10gb:2,gpu:1g.5gb:10", "has other leaf types or counts"),
            ("gpu:1g.10gb:2", "has other leaf types or counts"),
            ("gpu:14", "has no type"),
        ] {
            let d = run_with_slurm_conf(&mut s, &conf(gres));
            assert_eq!(d.len(), 1, "{gres}: {d:#?}");
            assert!(d[0].contains(want) && d[0].contains(&format!("set Gres={right}")), "{gres}: {}", d[0]);
        }
    }

    #[test]
    fn checks_default_lines_missing_nodes_and_missing_gres() {
        let mut s = setup();
        let d = run_with_slurm_conf(&mut s, "NodeName=DEFAULT Gres=gpu:1g.5gb:12,gpu:1g.10gb:2\nNodeName=gpu01 CPUs=4\n");
        assert_eq!(d.len(), 1, "{d:#?}");
        assert!(d[0].contains("slurm.conf line 1 (NodeName=DEFAULT, in effect for gpu01 on") && d[0].contains("line 2)"), "{}", d[0]);
        let d = run_with_slurm_conf(&mut s, "NodeName=gpu02 Gres=gpu:1g.10gb:2,gpu:1g.5gb:12\n");
        assert!(
            d[0].contains("has no NodeName line for gpu01") && d[0].contains("NodeName=gpu01 Gres=gpu:1g.10gb:2,gpu:1g.5gb:12"),
            "{d:#?}"
        );
        let d = run_with_slurm_conf(&mut s, "NodeName=gpu01 CPUs=4\n");
        assert!(d[0].contains("has no Gres=") && d[0].contains("add Gres=gpu:1g.10gb:2,gpu:1g.5gb:12"), "{d:#?}");
        let d = run_with_slurm_conf(&mut s, "NodeName=gpu01 Gres=gpu:1g.10gb:2,gpu:1g.5gb:12\nNodeName=gpu[01-02]\n");
        assert!(d[0].contains("also named on") && d[0].contains("line 2"), "{d:#?}");
        // An unreadable slurm.conf is an error, not a difference.
        let gres = s.dir.path().join("gres.conf");
        let inv = s.dir.path().join("flexmig.toml");
        let missing = s.dir.path().join("none.conf");
        let slurm_conf = Some(SlurmConfCheck { path: &missing, node_name: "gpu01" });
        let input = VerifyInputs { paths: &s.paths, gres_conf: &gres, inventory: &inv, slurmd_g: None, slurm_conf };
        let e = format!("{:#}", verify(&mut s.node, &input).unwrap_err());
        assert!(e.contains("none.conf") && e.contains("--no-slurm-conf"), "{e}");
    }

    #[test]
    fn gres_conf_lines_slurmd_would_drop() {
        let mut s = setup();
        let gres = s.dir.path().join("gres.conf");
        let text = std::fs::read_to_string(&gres).unwrap();
        let extra = "Name=gpu Type=1g.20gb MultipleFiles=/dev/nvidia0\nName=gpu Type=1g.10gb MultipleFiles=/dev/nvidia1\nName=gpu MultipleFiles=/dev/nvidia1\n";
        std::fs::write(&gres, format!("{text}{extra}")).unwrap();
        let d = run(&mut s, None);
        let n = text.lines().count();
        assert!(
            d.iter().any(|m| m.starts_with(&format!("gres.conf line {}: Type=1g.20gb, but the node has no 1g.20gb leaf", n + 1))),
            "{d:#?}"
        );
        assert!(d.iter().any(|m| m.starts_with(&format!("gres.conf line {}: one 1g.10gb line more than the node's 2", n + 2))), "{d:#?}");
        assert!(d.iter().any(|m| m.starts_with(&format!("gres.conf line {}: has no Type=", n + 3))), "{d:#?}");
        assert!(d.iter().any(|m| m.contains("has 17 gpu GRES, the inventory 14 leaves")), "{d:#?}");
    }

    #[test]
    fn catches_a_stale_inventory_and_a_missing_leaf() {
        let mut s = setup();
        let inv_path = s.dir.path().join("flexmig.toml");
        let mut inv = Inventory::load(&inv_path).unwrap();
        inv.leaves[0].uuid = "MIG-gone".into();
        inv.write_atomic(&inv_path).unwrap();
        let d = run(&mut s, None);
        assert!(d.iter().any(|m| m.contains("MIG-gone") && m.contains("does not exist on the node")), "{d:#?}");
        assert!(d.iter().any(|m| m.contains("not in the inventory")), "{d:#?}");
    }

    #[test]
    fn catches_slurmd_seeing_fewer_leaves_and_wrong_types() {
        let mut s = setup();
        let mut out = slurmd_output(&s.leaves[..13]);
        out = out.replacen("Type=1g.10gb", "Type=1g.5gb", 1);
        let d = run(&mut s, Some(out));
        assert!(d.iter().any(|m| m.contains("slurmd -G has 13 gpu GRES, the inventory 14")), "{d:#?}");
        assert!(d.iter().any(|m| m.contains("Type=1g.5gb")), "{d:#?}");
        let d = run(&mut s, Some("slurmd: nothing\n".into()));
        assert!(d[0].contains("reported no gpu GRES"), "{d:#?}");
    }

    #[test]
    fn parses_real_slurmd_g_lines() {
        let out = "slurmd-localhost: Gres Name=gpu Type=1g.20gb Count=1 Index=139 ID=7696487 File=/d/nvidia1,/d/nvidia-caps/nvidia-cap138,/d/nvidia-caps/nvidia-cap139 (null)\nslurmd-localhost: other\n";
        let r = parse_slurmd_g(out);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].type_name.as_deref(), Some("1g.20gb"));
        assert_eq!(r[0].files.len(), 3);
    }
}
