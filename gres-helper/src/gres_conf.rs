//! `gres-conf`: the node's Slurm configuration from its MIG leaves: gres.conf lines, the
//! slurm.conf `NodeName ... Gres=` line, the node inventory the SPANK plugin reads, and the
//! size-aware policy the Lua filters read.
//!
//! The leaf order is [`leaf_model::gres_order`]'s: doubles first, one per GPU in turn, then the
//! small leaves round-robin across GPUs, grouped by type. Slurm numbers a node's gpu GRES in the
//! type order of the slurm.conf `Gres=` line and by gres.conf line order only within a type, so
//! the node line written here names the types in the gres.conf order: with it, gpu line k of
//! gres.conf is GRES index k, which the inventory records.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use leaf_model::gres_order::{self, GresCount, OrderLeaf};
use leaf_model::inventory::{Gpu, Inventory, Leaf};
use leaf_model::layout::LeafRole;

use crate::node::{GpuInfo, Node};

/// Where device files live (`/dev` unless a test points elsewhere) and where the driver
/// publishes the MIG capability minors.
#[derive(Debug, Clone)]
pub struct DevicePaths {
    pub dev_root: PathBuf,
    pub mig_minors: PathBuf,
}

impl Default for DevicePaths {
    fn default() -> Self {
        DevicePaths { dev_root: PathBuf::from("/dev"), mig_minors: PathBuf::from("/proc/driver/nvidia-caps/mig-minors") }
    }
}

impl DevicePaths {
    /// `/dev/nvidia<minor>` under the device root.
    pub fn gpu_device(&self, minor: u32) -> PathBuf {
        self.dev_root.join(format!("nvidia{minor}"))
    }
    /// `/dev/nvidia-caps/nvidia-cap<minor>` under the device root.
    pub fn cap_device(&self, minor: u32) -> PathBuf {
        self.dev_root.join("nvidia-caps").join(format!("nvidia-cap{minor}"))
    }
}

/// The capability minors of every GPU instance and compute instance, keyed by
/// (GPU device minor, GPU instance id, compute instance id or None for the GI itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigMinors(pub BTreeMap<(u32, u32, Option<u32>), u32>);

impl MigMinors {
    /// Parses /proc/driver/nvidia-caps/mig-minors (`gpu0/gi1/access 12`, `gpu0/gi1/ci0/access 13`).
    ///
    /// # Errors
    /// A line that is none of `config N`, `monitor N`, `gpuG/giI/access N`, `gpuG/giI/ciC/access N`.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let bad = || anyhow!("{origin} line {}: cannot parse {line:?} (expected e.g. `gpu0/gi1/ci0/access 13`)", n + 1);
            let (key, minor) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
            let minor: u32 = minor.trim().parse().map_err(|_| bad())?;
            if key == "config" || key == "monitor" {
                continue;
            }
            let parts: Vec<&str> = key.split('/').collect();
            let num = |s: &str, prefix: &str| s.strip_prefix(prefix).and_then(|v| v.parse::<u32>().ok());
            let entry = match parts.as_slice() {
                [g, gi, "access"] => (num(g, "gpu"), num(gi, "gi"), None, true),
                [g, gi, ci, "access"] => (num(g, "gpu"), num(gi, "gi"), num(ci, "ci"), false),
                _ => return Err(bad()),
            };
            match entry {
                (Some(g), Some(gi), None, true) => map.insert((g, gi, None), minor),
                (Some(g), Some(gi), Some(ci), false) => map.insert((g, gi, Some(ci)), minor),
                _ => return Err(bad()),
            };
        }
        Ok(MigMinors(map))
    }

    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    /// Unreadable or malformed file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the MIG capability minors {}: is the NVIDIA driver loaded with MIG support? (tests and the demo: point --mig-minors at a fake one)",
                path.display()
            )
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn get(&self, gpu_minor: u32, gi: u32, ci: Option<u32>) -> Result<u32> {
        self.0.get(&(gpu_minor, gi, ci)).copied().ok_or_else(|| {
            anyhow!("the MIG minors file has no entry gpu{gpu_minor}/gi{gi}{}/access", ci.map(|c| format!("/ci{c}")).unwrap_or_default())
        })
    }
}

/// One leaf of the node, in GRES order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLeaf {
    pub gres_index: u32,
    pub gpu: u32,
    pub gpu_minor: u32,
    pub gi: u32,
    pub ci: u32,
    pub profile: String,
    pub start: u32,
    pub role: LeafRole,
    pub uuid: String,
    /// Device files, as gres.conf names them.
    pub files: Vec<PathBuf>,
}

/// The node's leaves in GRES order ([`gres_order::flexmig_order`]), with their device files.
///
/// # Errors
/// A GPU with MIG off or a GPU instance that is not a leaf (run `apply` first), no leaves at
/// all, missing MIG minors.
pub fn ordered_leaves(node: &mut dyn Node, paths: &DevicePaths, minors: &MigMinors) -> Result<(Vec<GpuInfo>, Vec<NodeLeaf>)> {
    let gpus = node.gpus()?;
    let mut keys = Vec::new();
    let mut found = Vec::new();
    for g in &gpus {
        let mut insts = node.instances(g.index)?;
        if insts.is_empty() {
            continue;
        }
        if !g.mig.current {
            bail!("GPU {} has GPU instances but MIG mode is not in effect; run `flexmig-gres-helper apply`", g.index);
        }
        insts.sort_by_key(|i| i.start);
        let min = insts.iter().map(|i| i.size).min().unwrap_or(1);
        let mut rank = BTreeMap::<LeafRole, u32>::new();
        for inst in &insts {
            let ci = inst.leaf_ci().ok_or_else(|| {
                anyhow!(
                    "GPU {} GPU instance {} ({} at memory slice {}) has {} compute instances, so it is not a flexmig leaf; run `flexmig-gres-helper apply` first",
                    g.index,
                    inst.id,
                    inst.profile,
                    inst.start,
                    inst.compute.len()
                )
            })?;
            let role = if inst.size > min { LeafRole::Double } else { LeafRole::Small };
            let r = rank.entry(role).or_insert(0);
            let files = vec![
                paths.gpu_device(g.minor),
                paths.cap_device(minors.get(g.minor, inst.id, None).with_context(|| format!("GPU {} leaf {}", g.index, ci.uuid))?),
                paths.cap_device(minors.get(g.minor, inst.id, Some(ci.id)).with_context(|| format!("GPU {} leaf {}", g.index, ci.uuid))?),
            ];
            keys.push(OrderLeaf { gpu: g.index, role, profile: inst.profile.clone(), rank: *r });
            found.push(NodeLeaf {
                gres_index: 0,
                gpu: g.index,
                gpu_minor: g.minor,
                gi: inst.id,
                ci: ci.id,
                profile: inst.profile.clone(),
                start: inst.start,
                role,
                uuid: ci.uuid.clone(),
                files,
            });
            *r += 1;
        }
    }
    if found.is_empty() {
        bail!("the node has no MIG leaves; run `flexmig-gres-helper apply` first");
    }
    let leaves = gres_order::flexmig_order(&keys)
        .into_iter()
        .zip(0u32..)
        .map(|(i, gres_index)| NodeLeaf { gres_index, ..found[i].clone() })
        .collect();
    Ok((gpus, leaves))
}

/// One gres.conf line for `leaf`.
pub fn gres_line(leaf: &NodeLeaf) -> String {
    let files = leaf.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(",");
    format!("Name=gpu Type={} MultipleFiles={files}", leaf.profile)
}

/// The gres.conf text.
pub fn gres_conf_text(leaves: &[NodeLeaf]) -> String {
    let mut s = format!(
        "# flexmig: written by `flexmig-gres-helper gres-conf`; do not edit by hand.\n\
         # One line per MIG leaf. Slurm numbers the node's gpu GRES in the type order of its\n\
         # slurm.conf `Gres=` line and by the line order here only within a type. The node line\n\
         # gres-conf writes, Gres={}, names the types in this file's order,\n\
         # so line k is GRES index k, as the flexmig node inventory records. Reorder nothing,\n\
         # here or in the Gres= line (check with `flexmig-gres-helper verify`).\n",
        gres_order::gres_value(&node_gres(leaves))
    );
    for l in leaves {
        let _ = writeln!(s, "# GRES index {}: GPU {} {} at memory slice {} ({})", l.gres_index, l.gpu, l.profile, l.start, l.uuid);
        let _ = writeln!(s, "{}", gres_line(l));
    }
    s
}

/// The gpu items of the node's slurm.conf `Gres=` line for leaves in GRES order.
pub fn node_gres(leaves: &[NodeLeaf]) -> Vec<GresCount> {
    gres_order::node_gres(leaves.iter().map(|l| l.profile.as_str()))
}

/// The slurm.conf node line: `NodeName=<node> Gres=gpu:<type>:<n>,... <extra>`.
pub fn node_line(node_name: &str, leaves: &[NodeLeaf], extra: &str) -> String {
    let gres = gres_order::gres_value(&node_gres(leaves));
    let extra = extra.trim();
    if extra.is_empty() {
        format!("NodeName={node_name} Gres={gres}")
    } else {
        format!("NodeName={node_name} Gres={gres} {extra}")
    }
}

/// The node inventory for the SPANK plugin.
pub fn inventory(gpus: &[GpuInfo], leaves: &[NodeLeaf]) -> Inventory {
    let mut inv = Inventory::new();
    inv.gpus = gpus
        .iter()
        .filter(|g| leaves.iter().any(|l| l.gpu == g.index))
        .map(|g| Gpu { index: g.index, uuid: g.uuid.clone(), bus_id: g.bus_id.clone(), model: g.name.clone() })
        .collect();
    inv.leaves = leaves
        .iter()
        .map(|l| Leaf { gres_index: l.gres_index, gpu: l.gpu, profile: l.profile.clone(), uuid: l.uuid.clone(), cuda_device: None })
        .collect();
    inv
}

/// The size-aware policy the Lua filters read (`flexmig_policy.lua`), for this node's leaves.
///
/// # Errors
/// GPUs of different models on one node (their leaf types differ).
pub fn policy_lua(leaves: &[NodeLeaf]) -> Result<String> {
    let smalls: Vec<&str> = dedup(leaves.iter().filter(|l| l.role == LeafRole::Small).map(|l| l.profile.as_str()));
    let doubles: Vec<&str> = dedup(leaves.iter().filter(|l| l.role == LeafRole::Double).map(|l| l.profile.as_str()));
    if smalls.len() > 1 || doubles.len() > 1 {
        bail!(
            "the node mixes GPU models (small leaves {smalls:?}, double leaves {doubles:?}); the size-aware policy takes one small and one double type: write flexmig_policy.lua by hand"
        );
    }
    let small = smalls.first().ok_or_else(|| anyhow!("the node has no small leaves"))?;
    let n_small = leaves.iter().filter(|l| l.role == LeafRole::Small).count();
    let double = doubles.first().map_or("nil".to_string(), |d| format!("{d:?}"));
    Ok(format!(
        "-- flexmig size-aware policy: the one place its parameters live. Read by job_submit.lua\n\
         -- and cli_filter.lua (same directory). Written by `flexmig-gres-helper gres-conf --policy`;\n\
         -- on a cluster of several node kinds, use the values of the smallest node.\n\
         return {{\n\
         \x20 small_type = {small:?},        -- GRES type of the small leaves\n\
         \x20 double_type = {double},       -- GRES type of the double leaves (nil: none)\n\
         \x20 leaves_per_node = {},          -- every leaf of a node\n\
         \x20 small_leaves_per_node = {n_small},    -- the small ones\n\
         \x20 single_prefers_double = true, -- mig:1 takes any leaf, doubles first (GRES order)\n\
         }}\n",
        leaves.len()
    ))
}

fn dedup<'a>(it: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = Vec::new();
    for x in it {
        if !v.contains(&x) {
            v.push(x);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{fake_mig_minors, FakeNode, FakeNodeFile};
    use crate::mig_layout::{apply, plan_node};

    pub(crate) fn applied(model: &str, gpus: u32) -> (tempfile::TempDir, FakeNode, MigMinors) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(&p, FakeNodeFile::create(model, gpus, true).unwrap().to_toml_string()).unwrap();
        let mut node = FakeNode::load(&p).unwrap();
        let want = plan_node(&mut node).unwrap();
        apply(&mut node, &want, false, &mut Vec::new()).unwrap();
        let minors = MigMinors::parse(&fake_mig_minors(&(0..gpus).collect::<Vec<_>>()), "t").unwrap();
        (dir, node, minors)
    }

    #[test]
    fn parses_the_driver_minors_file() {
        let m = MigMinors::parse("config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n", "t").unwrap();
        assert_eq!(m.get(0, 1, None).unwrap(), 12);
        assert_eq!(m.get(0, 1, Some(0)).unwrap(), 13);
        assert!(m.get(1, 1, None).is_err());
        assert!(MigMinors::parse("gpu0/gi1 12\n", "t").unwrap_err().to_string().contains("line 1"));
        assert!(MigMinors::parse("gpu0/gi1/access x\n", "t").is_err());
    }

    #[test]
    fn leaf_order_puts_doubles_first_then_spreads_smalls() {
        let (_d, mut node, minors) = applied("A100-40GB", 2);
        let (_, leaves) = ordered_leaves(&mut node, &DevicePaths::default(), &minors).unwrap();
        let order: Vec<(u32, &str)> = leaves.iter().map(|l| (l.gpu, l.profile.as_str())).collect();
        let mut want = vec![(0, "1g.10gb"), (1, "1g.10gb")];
        for _ in 0..6 {
            want.push((0, "1g.5gb"));
            want.push((1, "1g.5gb"));
        }
        assert_eq!(order, want);
        assert!(leaves.iter().enumerate().all(|(i, l)| l.gres_index as usize == i));
        // Any prefix of the small leaves is balanced across the GPUs.
        let smalls: Vec<u32> = leaves.iter().filter(|l| l.role == LeafRole::Small).map(|l| l.gpu).collect();
        for n in 1..=smalls.len() {
            let on0 = smalls[..n].iter().filter(|g| **g == 0).count();
            assert!(on0.abs_diff(n - on0) <= 1);
        }
    }

    #[test]
    fn gres_conf_lines_are_slurms_index_order_on_a_node_mixing_models() {
        // 1g.10gb is the double of the A100-40GB and the small of the A100-80GB: Slurm numbers
        // all 1g.10gb leaves together, so gres.conf must list them together.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        let mut f = FakeNodeFile::create("A100-40GB", 2, true).unwrap();
        f.gpus[1] = FakeNodeFile::create("A100-80GB", 2, true).unwrap().gpus.remove(1);
        std::fs::write(&p, f.to_toml_string()).unwrap();
        let mut node = FakeNode::load(&p).unwrap();
        let want = plan_node(&mut node).unwrap();
        apply(&mut node, &want, false, &mut Vec::new()).unwrap();
        let minors = MigMinors::parse(&fake_mig_minors(&[0, 1]), "t").unwrap();
        let (_, leaves) = ordered_leaves(&mut node, &DevicePaths::default(), &minors).unwrap();
        let line = node_line("n1", &leaves, "");
        assert_eq!(line, "NodeName=n1 Gres=gpu:1g.10gb:7,gpu:1g.20gb:1,gpu:1g.5gb:6");
        let gres = leaf_model::gres_order::parse_node_gres(line.split("Gres=").nth(1).unwrap()).unwrap();
        let text = gres_conf_text(&leaves);
        let types: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("Name=gpu Type=")).map(|l| l.split_whitespace().next().unwrap()).collect();
        let slurm = leaf_model::gres_order::slurm_gres_indices(&gres, &types);
        assert_eq!(slurm, leaves.iter().map(|l| Some(l.gres_index)).collect::<Vec<_>>());
        assert_eq!((leaves[0].gpu, leaves[0].role), (0, LeafRole::Double), "the first double leaf still comes first");
    }

    #[test]
    fn gres_conf_node_line_inventory_and_policy() {
        let (_d, mut node, minors) = applied("H100-80GB", 2);
        let paths = DevicePaths { dev_root: "/tmp/devroot".into(), mig_minors: "/x".into() };
        let (gpus, leaves) = ordered_leaves(&mut node, &paths, &minors).unwrap();
        let text = gres_conf_text(&leaves);
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Name=")).collect();
        assert_eq!(lines.len(), 14);
        assert!(
            lines[0].starts_with("Name=gpu Type=1g.20gb MultipleFiles=/tmp/devroot/nvidia0,/tmp/devroot/nvidia-caps/nvidia-cap"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("/tmp/devroot/nvidia1,"));
        assert_eq!(node_line("n1", &leaves, "CPUs=4"), "NodeName=n1 Gres=gpu:1g.20gb:2,gpu:1g.10gb:12 CPUs=4");
        let inv = inventory(&gpus, &leaves);
        inv.validate().unwrap();
        let again = Inventory::parse(&inv.to_toml_string(), "t").unwrap();
        assert_eq!(again.leaves.len(), 14);
        assert_eq!(again.leaf_by_gres_index(0).unwrap().profile, "1g.20gb");
        assert_eq!(again.gpus[0].model, "NVIDIA H100 80GB HBM3");
        let policy = policy_lua(&leaves).unwrap();
        assert!(policy.contains("small_type = \"1g.10gb\"") && policy.contains("double_type = \"1g.20gb\""), "{policy}");
        assert!(policy.contains("leaves_per_node = 14") && policy.contains("small_leaves_per_node = 12"), "{policy}");
    }

    #[test]
    fn device_files_follow_the_gpu_minor_not_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        let mut f = FakeNodeFile::create("A100-80GB", 2, true).unwrap();
        f.gpus[0].minor = Some(3);
        f.gpus[1].minor = Some(1);
        std::fs::write(&p, f.to_toml_string()).unwrap();
        let mut node = FakeNode::load(&p).unwrap();
        let want = plan_node(&mut node).unwrap();
        apply(&mut node, &want, false, &mut Vec::new()).unwrap();
        let minors = MigMinors::parse(&fake_mig_minors(&[1, 3]), "t").unwrap();
        let (_, leaves) = ordered_leaves(&mut node, &DevicePaths::default(), &minors).unwrap();
        let l0 = &leaves[0];
        assert_eq!(l0.gpu, 0);
        assert_eq!(l0.files[0], std::path::PathBuf::from("/dev/nvidia3"));
        let gi_minor = crate::fake::fake_cap_minor(3, l0.gi, None);
        assert_eq!(l0.files[1], std::path::PathBuf::from(format!("/dev/nvidia-caps/nvidia-cap{gi_minor}")));
        assert_eq!(leaves[1].files[0], std::path::PathBuf::from("/dev/nvidia1"));
        // Minors of GPU minor 0 (the index) would be wrong: none are listed, so it fails clearly.
        let wrong = MigMinors::parse(&fake_mig_minors(&[0, 1]), "t").unwrap();
        let e = format!("{:#}", ordered_leaves(&mut node, &DevicePaths::default(), &wrong).unwrap_err());
        assert!(e.contains("no entry gpu3/gi"), "{e}");
    }

    #[test]
    fn a30_has_no_double_type() {
        let (_d, mut node, minors) = applied("A30", 1);
        let (_, leaves) = ordered_leaves(&mut node, &DevicePaths::default(), &minors).unwrap();
        assert_eq!(leaves.len(), 4);
        assert!(policy_lua(&leaves).unwrap().contains("double_type = nil"));
    }

    #[test]
    fn refuses_a_node_that_is_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(&p, FakeNodeFile::create("H200", 1, true).unwrap().to_toml_string()).unwrap();
        let mut node = FakeNode::load(&p).unwrap();
        let e = ordered_leaves(&mut node, &DevicePaths::default(), &MigMinors::default()).unwrap_err();
        assert!(e.to_string().contains("run `flexmig-gres-helper apply`"), "{e}");
    }
}
