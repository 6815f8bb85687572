//! MIG geometry as the simulator needs it, derived from the recorded profile tables in
//! `leaf_model::mig` (never copied): which instance profiles exist, where they may be placed,
//! the Flex-MIG leaf layout, the Static-MIG layout, and repacking a GPU's instances when
//! Dynamic-MIG has to drain it.

use anyhow::{Context, Result};
use leaf_model::layout::LeafRole;
use leaf_model::mig::{builtin_model, builtin_models, GpuModel};

/// One usable GPU-instance profile (the `+me` media variants are left out: they place
/// like their plain twin and only one may exist).
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub compute: u32,
    pub mem: u32,
    pub max: u32,
    /// Legal starts in memory slices.
    pub placements: Vec<u32>,
}

/// A leaf of the Flex-MIG layout (one compute slice each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    pub start: u32,
    pub size: u32,
    pub double: bool,
}

/// The MIG geometry of one GPU model.
#[derive(Debug, Clone)]
pub struct Geometry {
    pub model: String,
    pub compute: u32,
    pub mem: u32,
    /// Sorted by (compute slices, memory slices).
    pub profiles: Vec<Profile>,
    /// The Flex-MIG leaves of every GPU: `compute` one-slice instances using all memory.
    pub leaves: Vec<Leaf>,
    /// The MIG profiles of the small and (where the layout has one) the double leaves: their
    /// GRES types on a flexmig node.
    pub small_profile: String,
    pub double_profile: Option<String>,
    /// Static-MIG layout: (profile index, start), the 1g + 2g + 4g split.
    pub static_layout: Vec<(usize, u32)>,
}

/// Looks a model up in leaf-model's recorded tables.
///
/// # Errors
/// When the model has no recorded table; the message lists those that exist.
pub fn load_model(name: &str) -> Result<GpuModel> {
    builtin_model(name).with_context(|| {
        let known: Vec<String> = builtin_models().into_iter().map(|m| m.name).collect();
        format!(
            "GPU model {name} has no recorded MIG profile table in leaf-model (known: {}); pick one of those with --model",
            known.join(", ")
        )
    })
}

impl Geometry {
    /// Derives the geometry from a recorded table.
    ///
    /// # Errors
    /// When the table has no one-compute-slice profile or no legal Flex-MIG leaf layout.
    pub fn from_model(m: &GpuModel) -> Result<Self> {
        let mut profiles: Vec<Profile> = m
            .profiles
            .iter()
            .filter(|p| !p.media_extensions && !p.placements.is_empty())
            .map(|p| Profile {
                name: p.name.clone(),
                compute: p.compute_slices,
                mem: p.memory_slices,
                max: p.max_instances,
                placements: p.placements.clone(),
            })
            .collect();
        profiles.sort_by_key(|p| (p.compute, p.mem));
        let mut g = Geometry {
            model: m.name.clone(),
            compute: m.compute_slices,
            mem: m.memory_slices,
            profiles,
            leaves: Vec::new(),
            small_profile: String::new(),
            double_profile: None,
            static_layout: Vec::new(),
        };
        let layout = leaf_model::layout::plan(m)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("{}: no Flex-MIG leaf layout", m.name))?;
        g.small_profile = layout.small_profile().unwrap_or_default().to_string();
        g.double_profile = layout.double_profile().map(str::to_string);
        g.leaves = Self::plan_leaves(&layout);
        g.static_layout = g.plan_static();
        Ok(g)
    }

    /// The Flex-MIG leaves, from leaf-model's layout planner (the same one the node helper
    /// applies).
    fn plan_leaves(layout: &leaf_model::layout::Layout) -> Vec<Leaf> {
        let mut leaves: Vec<Leaf> =
            layout.instances.iter().map(|l| Leaf { start: l.start, size: l.size, double: layout.role(l) == LeafRole::Double }).collect();
        leaves.sort_by_key(|l| l.start);
        leaves
    }

    /// Leaves per GPU.
    pub fn leaves_per_gpu(&self) -> u32 {
        self.leaves.len() as u32
    }

    /// The GRES order of a node of `gpus` GPUs of this model, as `flexmig-gres-helper gres-conf`
    /// writes it (leaf-model's [`gres_order`](leaf_model::gres_order::flexmig_order), the one home
    /// of that order): position k is the leaf with Slurm GRES index k, as (GPU of the node, index
    /// into [`Geometry::leaves`]).
    pub fn gres_order(&self, gpus: u32) -> Vec<(u32, usize)> {
        use leaf_model::gres_order::{flexmig_order, OrderLeaf};
        let mut keys = Vec::new();
        let mut slots = Vec::new();
        for gpu in 0..gpus {
            let (mut small, mut double) = (0, 0);
            for (slot, l) in self.leaves.iter().enumerate() {
                let (role, rank, profile) = if l.double {
                    double += 1;
                    (LeafRole::Double, double - 1, self.double_profile.clone().unwrap_or_default())
                } else {
                    small += 1;
                    (LeafRole::Small, small - 1, self.small_profile.clone())
                };
                keys.push(OrderLeaf { gpu, role, profile, rank });
                slots.push((gpu, slot));
            }
        }
        flexmig_order(&keys).into_iter().map(|i| slots[i]).collect()
    }

    /// 1g + 2g + 4g (the smallest-memory 2g and 4g; the 1g with the most memory that still
    /// fits beside them, so all memory is used: A100-40GB 1g.10gb + 2g.10gb + 4g.20gb), where
    /// the model has them.
    fn plan_static(&self) -> Vec<(usize, u32)> {
        let pick = |c: u32| self.profiles.iter().position(|p| p.compute == c);
        let (Some(two), Some(four)) = (pick(2), pick(4)) else {
            return Vec::new();
        };
        let mut ones: Vec<usize> = (0..self.profiles.len()).filter(|&p| self.profiles[p].compute == 1).collect();
        ones.sort_by_key(|&p| std::cmp::Reverse(self.profiles[p].mem));
        for one in ones {
            let want = [one, two, four];
            if let Some(starts) = self.pack(&want) {
                return want.into_iter().zip(starts).collect();
            }
        }
        Vec::new()
    }

    /// Memory slices of the smallest 1g profile (a one-slice job on a 1g with more memory
    /// runs `double_leaf_speedup` faster).
    pub fn small_mem(&self) -> u32 {
        self.profiles.iter().filter(|p| p.compute == 1).map(|p| p.mem).min().unwrap_or(1)
    }

    /// The exact Dynamic-MIG profile for a request of `slices` compute slices: the fewest
    /// compute slices that cover it, then the fewest memory slices.
    pub fn exact_profile(&self, slices: u32) -> Option<usize> {
        self.profiles.iter().position(|p| p.compute >= slices)
    }

    /// Finds legal starts for instances of the given profiles on an empty GPU (all placed at
    /// once, as after a drain). Returns the starts in the order of `profs`.
    pub fn pack(&self, profs: &[usize]) -> Option<Vec<u32>> {
        let compute: u32 = profs.iter().map(|&p| self.profiles[p].compute).sum();
        if compute > self.compute {
            return None;
        }
        let mut counts = vec![0u32; self.profiles.len()];
        for &p in profs {
            counts[p] += 1;
            if counts[p] > self.profiles[p].max {
                return None;
            }
        }
        let mut order: Vec<usize> = (0..profs.len()).collect();
        // Largest and least flexible first.
        order.sort_by_key(|&i| (std::cmp::Reverse(self.profiles[profs[i]].mem), self.profiles[profs[i]].placements.len()));
        let mut starts = vec![0u32; profs.len()];
        if self.pack_rec(profs, &order, 0, 0, &mut starts) {
            Some(starts)
        } else {
            None
        }
    }

    fn pack_rec(&self, profs: &[usize], order: &[usize], k: usize, mask: u32, starts: &mut [u32]) -> bool {
        let Some(&i) = order.get(k) else { return true };
        let p = &self.profiles[profs[i]];
        for &s in &p.placements {
            let m = span(s, p.mem);
            if mask & m == 0 {
                starts[i] = s;
                if self.pack_rec(profs, order, k + 1, mask | m, starts) {
                    return true;
                }
            }
        }
        false
    }

    /// Where a new instance of profile `p` can go on a GPU whose occupied memory slices are
    /// `mask`, without touching what runs there: the legal start that blocks the fewest
    /// other legal placements, or None when the placement tree blocks it.
    pub fn best_start(&self, mask: u32, p: usize) -> Option<u32> {
        let prof = &self.profiles[p];
        let mut best: Option<(u32, u32)> = None;
        for &s in &prof.placements {
            let m = span(s, prof.mem);
            if mask & m != 0 {
                continue;
            }
            let blocked = self.open_placements(mask) - self.open_placements(mask | m);
            if !matches!(best, Some((b, _)) if blocked >= b) {
                best = Some((blocked, s));
            }
        }
        best.map(|(_, s)| s)
    }

    fn open_placements(&self, mask: u32) -> u32 {
        let mut n = 0;
        for p in &self.profiles {
            for &s in &p.placements {
                if mask & span(s, p.mem) == 0 {
                    n += 1;
                }
            }
        }
        n
    }
}

/// The memory-slice bit mask of a placement.
pub fn span(start: u32, size: u32) -> u32 {
    ((1u32 << size) - 1) << start
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> Geometry {
        Geometry::from_model(&load_model("H100-80GB").unwrap()).unwrap()
    }

    #[test]
    fn flex_layout_is_six_small_one_double_using_all_memory() {
        let g = h100();
        assert_eq!(g.leaves.len(), 7);
        assert_eq!(g.leaves.iter().filter(|l| l.double).count(), 1);
        let d = g.leaves.iter().find(|l| l.double).unwrap();
        assert_eq!(d.start % 2, 0);
        let mask = g.leaves.iter().fold(0, |m, l| {
            assert_eq!(m & span(l.start, l.size), 0, "leaves overlap");
            m | span(l.start, l.size)
        });
        assert_eq!(mask, 0xff);
    }

    #[test]
    fn static_layout_is_1g_2g_4g_using_all_memory() {
        let g = h100();
        let names: Vec<&str> = g.static_layout.iter().map(|&(p, _)| g.profiles[p].name.as_str()).collect();
        assert_eq!(names, ["1g.20gb", "2g.20gb", "4g.40gb"]);
        let four = g.static_layout.iter().find(|&&(p, _)| g.profiles[p].compute == 4).unwrap();
        assert_eq!(four.1, 0, "4g only goes at 0");
    }

    #[test]
    fn exact_profiles_and_tree_blocking() {
        let g = h100();
        assert_eq!(g.profiles[g.exact_profile(1).unwrap()].name, "1g.10gb");
        assert_eq!(g.profiles[g.exact_profile(3).unwrap()].name, "3g.40gb");
        assert_eq!(g.profiles[g.exact_profile(6).unwrap()].name, "7g.80gb");
        assert!(g.exact_profile(8).is_none());
        let one = g.exact_profile(1).unwrap();
        let four = g.exact_profile(4).unwrap();
        // A 1g at slice 2 leaves 7 memory slices free but blocks the only 4g placement.
        assert_eq!(g.best_start(span(2, 1), four), None);
        // Repacking (a drain) fits both.
        let starts = g.pack(&[one, four]).unwrap();
        assert_eq!(starts[1], 0);
        assert!(starts[0] >= 4);
        // On an empty GPU a 1g goes where it blocks least: not under the 4g, 3g or 7g.
        assert!(g.best_start(0, one).unwrap() >= 4);
        // Compute slices bound packing: 4g + 3g + 1g is 8 compute slices.
        assert!(g.pack(&[four, g.exact_profile(3).unwrap(), one]).is_none());
    }
}
