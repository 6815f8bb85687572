//! The Flex-MIG leaf layout planner.
//!
//! Flex-MIG fixes every GPU to one-compute-slice GPU instances (the *leaves*) that together use
//! every compute slice and every memory slice: with `C` compute slices, `M` memory slices, a
//! small 1g profile of `s` memory slices and a larger 1g profile of `d` memory slices, `k`
//! large ("double") leaves and `C - k` small ones with `k*d + (C-k)*s = M`. On the 7/8-slice
//! parts that is 6 small + 1 double (A100-40GB: 6x1g.5gb + 1x1g.10gb); on an A30 (4/4) it is
//! 4 small.
//!
//! The planner reads only the geometry (profiles, slice counts, instance limits, legal
//! placements) as NVML reports it, never a model name, so a new GPU works without a code
//! change; it refuses clearly where no such layout exists.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::mig::{GiProfile, GpuModel};

/// One planned (or existing) leaf: a GPU instance of `profile` at memory slice `start`,
/// spanning `size` memory slices.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeafPlacement {
    pub profile: String,
    pub start: u32,
    pub size: u32,
}

/// A GPU's leaf layout. Serialised as the fixed interface of `flexmig-gres-helper plan --json`:
/// `{"model": "...", "instances": [{"profile": "1g.5gb", "start": 0, "size": 1}, ...]}`,
/// instances sorted by start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub model: String,
    pub instances: Vec<LeafPlacement>,
}

/// Whether a leaf is one of the small ones or a larger ("double") one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LeafRole {
    Small,
    Double,
}

/// Why no Flex-MIG layout exists for a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// The model reports no GPU-instance profiles at all.
    NoMig { model: String },
    /// No usable profile with one compute slice.
    NoOneSliceProfile { model: String },
    /// No mix of 1g profiles covers every compute and memory slice within the instance limits.
    NoExactFill { model: String, compute_slices: u32, memory_slices: u32, profiles: String },
    /// The counts add up but the legal placements do not fit together.
    NoPlacement { model: String, wanted: String },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::NoMig { model } => write!(
                f,
                "GPU model {model} reports no MIG GPU-instance profiles: it does not support MIG (or the driver does not offer it); flexmig needs a MIG-capable GPU (A30, A100, H100, H200, B200, ...)"
            ),
            PlanError::NoOneSliceProfile { model } => write!(
                f,
                "GPU model {model} has no GPU-instance profile with exactly one compute slice (media-extension variants aside), so it cannot be cut into flexmig leaves"
            ),
            PlanError::NoExactFill { model, compute_slices, memory_slices, profiles } => write!(
                f,
                "GPU model {model}: no mix of one-compute-slice instances uses all {compute_slices} compute slices and all {memory_slices} memory slices within the instance limits (1g profiles: {profiles}); flexmig cannot lay out this GPU"
            ),
            PlanError::NoPlacement { model, wanted } => write!(
                f,
                "GPU model {model}: {wanted} would use every slice, but their legal placements do not fit together; flexmig cannot lay out this GPU"
            ),
        }
    }
}

impl std::error::Error for PlanError {}

/// Plans the Flex-MIG leaf layout of `model` from its geometry.
///
/// # Errors
/// [`PlanError`] where no layout of one-compute-slice instances uses every slice.
pub fn plan(model: &GpuModel) -> Result<Layout, PlanError> {
    let name = model.name.clone();
    if model.profiles.is_empty() {
        return Err(PlanError::NoMig { model: name });
    }
    let mut ones: Vec<&GiProfile> = model
        .profiles
        .iter()
        .filter(|p| p.compute_slices == 1 && !p.media_extensions && !p.placements.is_empty() && p.max_instances > 0)
        .collect();
    if ones.is_empty() {
        return Err(PlanError::NoOneSliceProfile { model: name });
    }
    // Smallest memory first; among equals, the one allowing more instances.
    ones.sort_by(|a, b| a.memory_slices.cmp(&b.memory_slices).then(b.max_instances.cmp(&a.max_instances)).then(a.id.cmp(&b.id)));
    let c = model.compute_slices;
    let m = model.memory_slices;
    let small = ones[0];

    // Candidate mixes (small, optional larger profile, count of the larger), fewest large first.
    let mut mixes: Vec<(&GiProfile, Option<&GiProfile>, u32)> = Vec::new();
    if small.memory_slices * c == m && small.max_instances >= c {
        mixes.push((small, None, 0));
    }
    for d in ones.iter().skip(1).filter(|d| d.memory_slices > small.memory_slices) {
        let need = i64::from(m) - i64::from(c) * i64::from(small.memory_slices);
        let diff = i64::from(d.memory_slices - small.memory_slices);
        if need > 0 && need % diff == 0 {
            let k = u32::try_from(need / diff).unwrap_or(u32::MAX);
            if k <= c && k <= d.max_instances && c - k <= small.max_instances {
                mixes.push((small, Some(*d), k));
            }
        }
    }
    if mixes.is_empty() {
        let profiles = ones
            .iter()
            .map(|p| {
                format!(
                    "{} ({} memory slice{}, up to {})",
                    p.name,
                    p.memory_slices,
                    if p.memory_slices == 1 { "" } else { "s" },
                    p.max_instances
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(PlanError::NoExactFill { model: name, compute_slices: c, memory_slices: m, profiles });
    }
    let mut last_wanted = String::new();
    for (s, d, k) in mixes {
        // Large leaves first, tried from the highest start down (they end up at the top of
        // memory, e.g. slices 6-7), then small ones from the lowest start up.
        let mut items: Vec<(&GiProfile, bool)> = Vec::new();
        if let Some(d) = d {
            items.extend((0..k).map(|_| (d, true)));
        }
        items.extend((0..c - k).map(|_| (s, false)));
        let mut used = vec![false; m as usize];
        let mut chosen = Vec::new();
        if place(&items, &mut used, &mut chosen) {
            let mut instances: Vec<LeafPlacement> = chosen;
            instances.sort_by_key(|l| l.start);
            return Ok(Layout { model: name, instances });
        }
        last_wanted = match d {
            Some(d) => format!("{}x{} + {}x{}", c - k, s.name, k, d.name),
            None => format!("{}x{}", c, s.name),
        };
    }
    Err(PlanError::NoPlacement { model: name, wanted: last_wanted })
}

fn place(items: &[(&GiProfile, bool)], used: &mut [bool], chosen: &mut Vec<LeafPlacement>) -> bool {
    let Some(((p, high_first), rest)) = items.split_first() else {
        return true;
    };
    let mut starts: Vec<u32> = p.placements.clone();
    starts.sort_unstable();
    if *high_first {
        starts.reverse();
    }
    // Identical items: only try starts above the previous one of the same profile, so each
    // set of starts is tried once.
    let bound = chosen.iter().rev().take_while(|l| l.profile == p.name).map(|l| l.start).next();
    for start in starts {
        if let Some(b) = bound {
            if (*high_first && start >= b) || (!*high_first && start <= b) {
                continue;
            }
        }
        let range = start as usize..(start + p.memory_slices) as usize;
        if range.end > used.len() || used[range.clone()].iter().any(|u| *u) {
            continue;
        }
        used[range.clone()].iter_mut().for_each(|u| *u = true);
        chosen.push(LeafPlacement { profile: p.name.clone(), start, size: p.memory_slices });
        if place(rest, used, chosen) {
            return true;
        }
        chosen.pop();
        used[range].iter_mut().for_each(|u| *u = false);
    }
    false
}

impl Layout {
    /// The role of `leaf` in this layout: leaves larger than the smallest are doubles.
    pub fn role(&self, leaf: &LeafPlacement) -> LeafRole {
        let min = self.instances.iter().map(|l| l.size).min().unwrap_or(leaf.size);
        if leaf.size > min {
            LeafRole::Double
        } else {
            LeafRole::Small
        }
    }

    /// The profile name of the small leaves.
    pub fn small_profile(&self) -> Option<&str> {
        self.instances.iter().filter(|l| self.role(l) == LeafRole::Small).map(|l| l.profile.as_str()).next()
    }

    /// The profile name of the double leaves, if the layout has any.
    pub fn double_profile(&self) -> Option<&str> {
        self.instances.iter().filter(|l| self.role(l) == LeafRole::Double).map(|l| l.profile.as_str()).next()
    }

    /// Checks that this layout can exist on `model`: known profiles, legal placements of the
    /// right size, no overlap, instance limits and compute slices respected.
    ///
    /// # Errors
    /// A description of the first problem.
    pub fn check_against(&self, model: &GpuModel) -> Result<(), String> {
        let mut used = vec![false; model.memory_slices as usize];
        let mut compute = 0u32;
        for l in &self.instances {
            let p = model.profile(&l.profile).ok_or_else(|| format!("profile {} does not exist on {}", l.profile, model.name))?;
            if l.size != p.memory_slices {
                return Err(format!(
                    "{} at {} has size {}, but {} spans {} memory slices",
                    l.profile, l.start, l.size, p.name, p.memory_slices
                ));
            }
            if !p.placements.contains(&l.start) {
                return Err(format!(
                    "{} cannot start at memory slice {} on {} (legal starts: {:?})",
                    l.profile, l.start, model.name, p.placements
                ));
            }
            let n = self.instances.iter().filter(|o| o.profile == l.profile).count();
            if n > p.max_instances as usize {
                return Err(format!("{} instances of {}, but {} allows {}", n, l.profile, model.name, p.max_instances));
            }
            for s in l.start..l.start + l.size {
                let slot =
                    used.get_mut(s as usize).ok_or_else(|| format!("{} at {} runs past the last memory slice", l.profile, l.start))?;
                if *slot {
                    return Err(format!("{} at {} overlaps another instance at memory slice {}", l.profile, l.start, s));
                }
                *slot = true;
            }
            compute += p.compute_slices;
        }
        if compute > model.compute_slices {
            return Err(format!("the instances use {compute} compute slices, but {} has {}", model.name, model.compute_slices));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mig::{builtin_model, builtin_models};

    fn summary(l: &Layout) -> Vec<(String, u32)> {
        l.instances.iter().map(|i| (i.profile.clone(), i.start)).collect()
    }

    #[test]
    fn every_recorded_model_gets_a_full_legal_layout() {
        for m in builtin_models() {
            let l = plan(&m).unwrap_or_else(|e| panic!("{}: {e}", m.name));
            assert_eq!(l.model, m.name);
            assert_eq!(l.instances.len() as u32, m.compute_slices, "{}", m.name);
            assert_eq!(l.instances.iter().map(|i| i.size).sum::<u32>(), m.memory_slices, "{}", m.name);
            l.check_against(&m).unwrap_or_else(|e| panic!("{}: {e}", m.name));
            assert!(l.instances.windows(2).all(|w| w[0].start < w[1].start));
            for i in &l.instances {
                assert_eq!(m.profile(&i.profile).unwrap().compute_slices, 1);
            }
        }
    }

    #[test]
    fn seven_slice_parts_get_six_small_and_one_double_at_the_top() {
        for (model, small, double) in [
            ("A100-40GB", "1g.5gb", "1g.10gb"),
            ("A100-80GB", "1g.10gb", "1g.20gb"),
            ("H100-80GB", "1g.10gb", "1g.20gb"),
            ("H100-94GB", "1g.12gb", "1g.24gb"),
            ("H200", "1g.18gb", "1g.35gb"),
            ("B200", "1g.23gb", "1g.45gb"),
        ] {
            let l = plan(&builtin_model(model).unwrap()).unwrap();
            let mut want: Vec<(String, u32)> = (0..6).map(|s| (small.to_string(), s)).collect();
            want.push((double.to_string(), 6));
            assert_eq!(summary(&l), want, "{model}");
            assert_eq!(l.small_profile(), Some(small));
            assert_eq!(l.double_profile(), Some(double));
        }
    }

    #[test]
    fn a30_gets_four_small() {
        let l = plan(&builtin_model("A30").unwrap()).unwrap();
        assert_eq!(summary(&l), (0..4).map(|s| ("1g.6gb".to_string(), s)).collect::<Vec<_>>());
        assert_eq!(l.double_profile(), None);
    }

    #[test]
    fn json_is_the_fixed_interface() {
        let l = plan(&builtin_model("A100-40GB").unwrap()).unwrap();
        let j = serde_json::to_string(&l).unwrap();
        assert!(j.starts_with(r#"{"model":"A100-40GB","instances":[{"profile":"1g.5gb","start":0,"size":1},"#), "{j}");
        assert!(j.ends_with(r#"{"profile":"1g.10gb","start":6,"size":2}]}"#), "{j}");
    }

    #[test]
    fn derived_from_geometry_not_names() {
        // An invented part: 3 compute slices, 4 memory slices, 1g at 1 or 2 memory slices.
        let t = r#"
name = "Future-GPU"
compute_slices = 3
memory_slices = 4
memory_mib = 4000
[[profile]]
id = 1
name = "1g.1gb"
compute_slices = 1
memory_slices = 1
memory_mib = 1000
max_instances = 3
placements = [1, 2, 3]
[[profile]]
id = 2
name = "1g.2gb"
compute_slices = 1
memory_slices = 2
memory_mib = 2000
max_instances = 2
placements = [0, 2]
"#;
        let m = GpuModel::parse(t).unwrap();
        let l = plan(&m).unwrap();
        // The double cannot sit at 2 (smalls only fit at 1..3, leaving 0 free), so it goes to 0.
        assert_eq!(summary(&l), vec![("1g.2gb".into(), 0), ("1g.1gb".into(), 2), ("1g.1gb".into(), 3)]);
    }

    #[test]
    fn refuses_where_no_layout_exists() {
        let base = include_str!("../profiles/H100-80GB.toml");
        // No double profile: 7 small leave one memory slice unused.
        let no_double =
            GpuModel::parse(&base.replace("name = \"1g.20gb\"\ncompute_slices = 1", "name = \"1g.20gb\"\ncompute_slices = 2")).unwrap();
        let e = plan(&no_double).unwrap_err();
        assert!(matches!(e, PlanError::NoExactFill { .. }), "{e:?}");
        assert!(e.to_string().contains("all 8 memory slices"), "{e}");
        // Doubles that may only start where the smalls need to be.
        let cramped = GpuModel::parse(&base.replace("placements = [0, 2, 4, 6]", "placements = [0]")).unwrap();
        let e = plan(&cramped).unwrap_err();
        assert!(matches!(e, PlanError::NoPlacement { .. }), "{e:?}");
        // No MIG at all.
        let none =
            GpuModel { name: "T4".into(), nvml_names: vec![], compute_slices: 1, memory_slices: 1, memory_mib: 15360, profiles: vec![] };
        assert!(plan(&none).unwrap_err().to_string().contains("does not support MIG"));
        // Only large profiles.
        let no_1g = GpuModel::parse(&base.replace("compute_slices = 1\n", "compute_slices = 2\n")).unwrap();
        assert!(matches!(plan(&no_1g).unwrap_err(), PlanError::NoOneSliceProfile { .. }));
    }

    #[test]
    fn check_against_catches_bad_layouts() {
        let m = builtin_model("H100-80GB").unwrap();
        let good = plan(&m).unwrap();
        let mut overlap = good.clone();
        overlap.instances[6].start = 4;
        assert!(overlap.check_against(&m).unwrap_err().contains("overlaps"));
        let mut bad_start = good.clone();
        bad_start.instances[6].start = 5;
        assert!(bad_start.check_against(&m).unwrap_err().contains("cannot start"));
        let mut unknown = good.clone();
        unknown.instances[0].profile = "1g.99gb".into();
        assert!(unknown.check_against(&m).unwrap_err().contains("does not exist"));
        let mut wrong_size = good;
        wrong_size.instances[0].size = 2;
        assert!(wrong_size.check_against(&m).unwrap_err().contains("size"));
    }
}
