//! The node's Slurm configuration from its leaves in GRES order: gres.conf lines, the
//! slurm.conf `NodeName ... Gres=` line, the node inventory the SPANK plugin reads, and the
//! size-aware policy the Lua filters read.
//!
//! Slurm numbers a node's gpu GRES in the type order of the slurm.conf `Gres=` line and by
//! gres.conf line order only within a type, so the node line written here names the types in
//! the gres.conf order: with it, gpu line k of gres.conf is GRES index k, which the inventory
//! records.

use std::fmt::Write as _;

use anyhow::{anyhow, bail, Result};
use leaf_model::gres_order::{self, GresCount};
use leaf_model::inventory::{Gpu, Inventory, Leaf};
use leaf_model::layout::LeafRole;

use crate::leaves::NodeLeaf;
use crate::node::GpuInfo;

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
        .map(|l| Leaf {
            gres_index: l.gres_index,
            gpu: l.gpu,
            profile: l.profile.clone(),
            uuid: l.uuid.clone(),
            cuda_device: None,
            gpu_instance: Some(l.gi),
        })
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
    use crate::devices::{DevicePaths, MigMinors};
    use crate::fake::{fake_mig_minors, FakeNodeFile, MemoryNode};
    use crate::leaves::ordered_leaves;
    use crate::mig_layout::{apply, plan_node};

    #[test]
    fn gres_conf_lines_are_slurms_index_order_on_a_node_mixing_models() {
        // 1g.10gb is the double of the A100-40GB and the small of the A100-80GB: Slurm numbers
        // all 1g.10gb leaves together, so gres.conf must list them together.
        let mut f = FakeNodeFile::create("A100-40GB", 2, true).unwrap();
        f.gpus[1] = FakeNodeFile::create("A100-80GB", 2, true).unwrap().gpus.remove(1);
        let mut node = MemoryNode::new(f, "t").unwrap();
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
        let e = policy_lua(&leaves).unwrap_err().to_string();
        assert!(e.contains("mixes GPU models") && e.contains("write flexmig_policy.lua by hand"), "{e}");
    }

    #[test]
    fn gres_conf_node_line_inventory_and_policy() {
        let (mut node, minors) = MemoryNode::applied("H100-80GB", 2);
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
    fn a30_has_no_double_type() {
        let (mut node, minors) = MemoryNode::applied("A30", 1);
        let (_, leaves) = ordered_leaves(&mut node, &DevicePaths::default(), &minors).unwrap();
        assert_eq!(leaves.len(), 4);
        assert!(policy_lua(&leaves).unwrap().contains("double_type = nil"));
    }
}
