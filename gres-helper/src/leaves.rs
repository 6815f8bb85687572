//! The node's leaves in GRES order, with their device files: what the node reports, put in
//! the order [`leaf_model::gres_order`] owns (doubles first, one per GPU in turn, then the small
//! leaves round-robin across GPUs, grouped by type).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use leaf_model::gres_order::{self, OrderLeaf};
use leaf_model::layout::LeafRole;

use crate::devices::{DevicePaths, MigMinors};
use crate::node::{GpuInfo, Node};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{fake_cap_minor, fake_mig_minors, FakeNodeFile, MemoryNode};

    #[test]
    fn leaf_order_puts_doubles_first_then_spreads_smalls() {
        let (mut node, minors) = MemoryNode::applied("A100-40GB", 2);
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
    fn device_files_follow_the_gpu_minor_not_the_index() {
        let mut f = FakeNodeFile::create("A100-80GB", 2, true).unwrap();
        f.gpus[0].minor = Some(3);
        f.gpus[1].minor = Some(1);
        let mut node = MemoryNode::new(f, "t").unwrap();
        let want = crate::mig_layout::plan_node(&mut node).unwrap();
        crate::mig_layout::apply(&mut node, &want, false, &mut Vec::new()).unwrap();
        let minors = MigMinors::parse(&fake_mig_minors(&[1, 3]), "t").unwrap();
        let (_, leaves) = ordered_leaves(&mut node, &DevicePaths::default(), &minors).unwrap();
        let l0 = &leaves[0];
        assert_eq!(l0.gpu, 0);
        assert_eq!(l0.files[0], PathBuf::from("/dev/nvidia3"));
        let gi_minor = fake_cap_minor(3, l0.gi, None);
        assert_eq!(l0.files[1], PathBuf::from(format!("/dev/nvidia-caps/nvidia-cap{gi_minor}")));
        assert_eq!(leaves[1].files[0], PathBuf::from("/dev/nvidia1"));
        // Minors of GPU minor 0 (the index) would be wrong: none are listed, so it fails clearly.
        let wrong = MigMinors::parse(&fake_mig_minors(&[0, 1]), "t").unwrap();
        let e = format!("{:#}", ordered_leaves(&mut node, &DevicePaths::default(), &wrong).unwrap_err());
        assert!(e.contains("no entry gpu3/gi"), "{e}");
    }

    #[test]
    fn refuses_a_node_that_is_not_applied() {
        let mut node = MemoryNode::create("H200", 1, true).unwrap();
        let e = ordered_leaves(&mut node, &DevicePaths::default(), &MigMinors::default()).unwrap_err();
        assert!(e.to_string().contains("run `flexmig-gres-helper apply`"), "{e}");
    }

    #[test]
    fn refuses_a_gpu_instance_that_is_not_a_leaf() {
        let (mut node, minors) = MemoryNode::applied("H100-80GB", 1);
        node.edit(|f| f.gpus[0].instances[1].compute.clear()).unwrap();
        let e = ordered_leaves(&mut node, &DevicePaths::default(), &minors).unwrap_err().to_string();
        assert!(e.contains("has 0 compute instances, so it is not a flexmig leaf"), "{e}");
    }
}
