//! Recorded MIG profile tables: for each GPU model, its GPU-instance profiles with slice
//! counts, memory and legal placements, as NVML reports them (`nvmlDeviceGetGpuInstanceProfileInfoV`,
//! `nvmlDeviceGetGpuInstancePossiblePlacements_v2`; `nvidia-smi mig -lgip` / `-lgipp`).
//!
//! The tables live as TOML files in `leaf-model/profiles/`, one per model, embedded at build
//! time. A placement's `start` is in memory slices and its size is the profile's
//! `memory_slices` (that is how NVML reports placements).

use serde::{Deserialize, Serialize};

/// One GPU model's MIG geometry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuModel {
    /// Short model name used on the command line, e.g. `H100-80GB`.
    pub name: String,
    /// Device names as NVML reports them (`nvmlDeviceGetName`) for this model.
    #[serde(default)]
    pub nvml_names: Vec<String>,
    /// Compute slices of the whole GPU (7 on A100/H100/H200/B200, 4 on A30).
    pub compute_slices: u32,
    /// Memory slices of the whole GPU (8 on A100/H100/H200/B200, 4 on A30).
    pub memory_slices: u32,
    /// Total device memory in MiB.
    pub memory_mib: u64,
    #[serde(rename = "profile")]
    pub profiles: Vec<GiProfile>,
}

/// A GPU-instance profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GiProfile {
    /// NVML GPU-instance profile id (as `nvidia-smi mig -lgip` prints it).
    pub id: u32,
    /// Profile name, e.g. `1g.10gb`.
    pub name: String,
    pub compute_slices: u32,
    pub memory_slices: u32,
    pub memory_mib: u64,
    pub max_instances: u32,
    /// True for the `+me` variants that own the media engines.
    #[serde(default)]
    pub media_extensions: bool,
    /// Legal start positions, in memory slices; each placement spans `memory_slices`.
    pub placements: Vec<u32>,
}

/// A placed GPU instance: start and size in memory slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Placement {
    pub start: u32,
    pub size: u32,
}

impl GpuModel {
    /// Parses one recorded table.
    ///
    /// # Errors
    /// Malformed TOML, unknown fields, or geometry that does not add up.
    pub fn parse(text: &str) -> Result<Self, String> {
        let m: GpuModel = toml::from_str(text).map_err(|e| e.to_string())?;
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), String> {
        for p in &self.profiles {
            if p.compute_slices == 0 || p.compute_slices > self.compute_slices {
                return Err(format!("{}: profile {} has {} compute slices", self.name, p.name, p.compute_slices));
            }
            if p.memory_slices == 0 || p.memory_slices > self.memory_slices {
                return Err(format!("{}: profile {} has {} memory slices", self.name, p.name, p.memory_slices));
            }
            if let Some(s) = p.placements.iter().find(|s| **s + p.memory_slices > self.memory_slices) {
                return Err(format!("{}: profile {} placement {} runs past the last memory slice", self.name, p.name, s));
            }
        }
        Ok(())
    }

    /// The profile called `name`.
    pub fn profile(&self, name: &str) -> Option<&GiProfile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// The profile with NVML id `id`.
    pub fn profile_by_id(&self, id: u32) -> Option<&GiProfile> {
        self.profiles.iter().find(|p| p.id == id)
    }
}

impl GiProfile {
    /// The legal placements of this profile.
    pub fn placements(&self) -> impl Iterator<Item = Placement> + '_ {
        self.placements.iter().map(move |&start| Placement { start, size: self.memory_slices })
    }
}

/// The recorded tables shipped with flexmig, as (file name, contents).
const TABLES: &[(&str, &str)] = &[
    ("A30.toml", include_str!("../profiles/A30.toml")),
    ("A100-40GB.toml", include_str!("../profiles/A100-40GB.toml")),
    ("A100-80GB.toml", include_str!("../profiles/A100-80GB.toml")),
    ("H100-80GB.toml", include_str!("../profiles/H100-80GB.toml")),
    ("H100-94GB.toml", include_str!("../profiles/H100-94GB.toml")),
    ("H200.toml", include_str!("../profiles/H200.toml")),
    ("B200.toml", include_str!("../profiles/B200.toml")),
];

/// The short names of every recorded model, in table order.
pub fn builtin_model_names() -> Vec<String> {
    builtin_models().into_iter().map(|m| m.name).collect()
}

/// Every recorded GPU model.
pub fn builtin_models() -> Vec<GpuModel> {
    TABLES.iter().map(|(file, text)| GpuModel::parse(text).unwrap_or_else(|e| panic!("recorded table {file} is broken: {e}"))).collect()
}

/// The recorded model named `name` (short name like `H100-80GB`, or an NVML device name),
/// compared case-insensitively.
pub fn builtin_model(name: &str) -> Option<GpuModel> {
    builtin_models().into_iter().find(|m| m.name.eq_ignore_ascii_case(name) || m.nvml_names.iter().any(|n| n.eq_ignore_ascii_case(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recorded_table_parses_and_is_consistent() {
        let models = builtin_models();
        assert!(!models.is_empty());
        for m in &models {
            assert!(m.profiles.iter().any(|p| p.compute_slices == 1), "{} has no 1g profile", m.name);
            let full = m.profiles.iter().find(|p| p.compute_slices == m.compute_slices).expect("full-GPU profile");
            assert_eq!(full.memory_slices, m.memory_slices, "{}", m.name);
        }
    }

    #[test]
    fn h100_matches_nvidia_smi() {
        let m = builtin_model("h100-80gb").unwrap();
        let double = m.profile("1g.20gb").unwrap();
        assert_eq!(double.placements().collect::<Vec<_>>().len(), 4);
        assert!(double.placements().all(|p| p.size == 2 && p.start % 2 == 0));
        assert_eq!(m.profile_by_id(19).unwrap().name, "1g.10gb");
        assert_eq!(builtin_model("NVIDIA H100 80GB HBM3").unwrap().name, "H100-80GB");
    }

    #[test]
    fn rejects_a_placement_past_the_end() {
        let t = include_str!("../profiles/H100-80GB.toml").replace("placements = [0, 4]", "placements = [0, 6]");
        assert!(GpuModel::parse(&t).unwrap_err().contains("3g.40gb"));
    }
}
