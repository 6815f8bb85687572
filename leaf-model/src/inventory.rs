//! The node inventory: which MIG leaves a node has, under which Slurm GRES index.
//!
//! Written by `flexmig-gres-helper`, read by the SPANK plugin in every task of a `--flexmig`
//! step. The format is TOML with a `version` key; unknown keys are rejected so that a typo
//! never silently drops a field.
//!
//! ```toml
//! version = 1
//! [[gpu]]
//! index = 0
//! uuid = "GPU-..."
//! bus_id = "00000000:4B:00.0"
//! model = "NVIDIA A100-PCIE-40GB"
//! [[leaf]]
//! gres_index = 0          # Slurm's GRES index of this leaf (see crate::gres_order)
//! gpu = 0                 # a [[gpu]] index
//! profile = "1g.5gb"
//! uuid = "MIG-..."        # exported as NCCL_MIG_ID
//! cuda_device = "MIG-..." # optional, exported as CUDA_VISIBLE_DEVICES; defaults to uuid
//! gpu_instance = 1        # optional, the MIG GPU instance id (DCGM's name for the leaf)
//! ```
//!
//! A node whose GPUs are not in MIG mode (a test cluster) can carry emulated leaves: an
//! `[emulation]` table with `sm_percent` (each leaf's share of its GPU under CUDA MPS), every
//! leaf's `cuda_device` naming its GPU and `uuid` a synthetic MIG id.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The inventory format version this crate reads and writes.
pub const VERSION: u32 = 1;

/// Where the plugin looks for the inventory unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/slurm/flexmig.toml";

/// A node's inventory of physical GPUs and MIG leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub version: u32,
    /// Set when the leaves are emulated (shares of GPUs that are not in MIG mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emulation: Option<Emulation>,
    #[serde(default, rename = "gpu")]
    pub gpus: Vec<Gpu>,
    #[serde(default, rename = "leaf")]
    pub leaves: Vec<Leaf>,
}

/// Emulated leaves: each is a share of its GPU, its task runs beside the GPU's other leaves'
/// under CUDA MPS, so a test cluster without MIG runs flexmig jobs as it would on MIG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Emulation {
    /// Each leaf's share of its GPU's SMs, in percent (`CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`).
    pub sm_percent: u32,
}

/// One physical GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// NVML index of the GPU on the node.
    pub index: u32,
    pub uuid: String,
    pub bus_id: String,
    pub model: String,
}

/// One MIG leaf: a GPU instance with one compute instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Leaf {
    /// Slurm's GRES index of this leaf: its place among the node's gpu GRES, numbered by the
    /// slurm.conf `Gres=` type order, then gres.conf line order ([`crate::gres_order`]).
    pub gres_index: u32,
    /// The `index` of the [`Gpu`] the leaf lives on.
    pub gpu: u32,
    /// MIG profile name, e.g. `1g.10gb`.
    pub profile: String,
    /// The leaf's MIG UUID (`MIG-...`), exported as `NCCL_MIG_ID`.
    pub uuid: String,
    /// What CUDA_VISIBLE_DEVICES should hold for this leaf; defaults to `uuid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_device: Option<String>,
    /// The MIG GPU instance id on its GPU (names the leaf in DCGM's metrics); None for an
    /// emulated leaf, or an inventory written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_instance: Option<u32>,
}

impl Leaf {
    /// The value for CUDA_VISIBLE_DEVICES.
    pub fn cuda_device(&self) -> &str {
        self.cuda_device.as_deref().unwrap_or(&self.uuid)
    }
}

/// Why an inventory could not be used. Every message says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryError {
    /// Where the inventory came from (a path, or a description).
    pub origin: String,
    pub kind: InventoryErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryErrorKind {
    Unreadable(String),
    Malformed(String),
    MissingVersion,
    UnknownVersion(i64),
    Invalid(String),
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.origin;
        match &self.kind {
            InventoryErrorKind::Unreadable(e) => write!(
                f,
                "cannot read the node inventory {o}: {e}; create it with `flexmig-gres-helper gres-conf` or point the plugstack argument inventory= at it"
            ),
            InventoryErrorKind::Malformed(e) => write!(
                f,
                "the node inventory {o} is malformed: {e}; regenerate it with `flexmig-gres-helper gres-conf`"
            ),
            InventoryErrorKind::MissingVersion => write!(
                f,
                "the node inventory {o} has no `version` key; regenerate it with `flexmig-gres-helper gres-conf`"
            ),
            InventoryErrorKind::UnknownVersion(v) => write!(
                f,
                "the node inventory {o} has version {v}, but this flexmig reads version {VERSION}; regenerate it with the flexmig-gres-helper of the same release as the plugin"
            ),
            InventoryErrorKind::Invalid(e) => write!(
                f,
                "the node inventory {o} is inconsistent: {e}; regenerate it with `flexmig-gres-helper gres-conf`"
            ),
        }
    }
}

impl std::error::Error for InventoryError {}

impl Inventory {
    /// An empty inventory of the current version.
    pub fn new() -> Self {
        Inventory { version: VERSION, emulation: None, gpus: Vec::new(), leaves: Vec::new() }
    }

    /// Reads and validates the inventory at `path`.
    ///
    /// # Errors
    /// Unreadable file, malformed TOML, unknown version or fields, inconsistent content.
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| InventoryError { origin: origin.clone(), kind: InventoryErrorKind::Unreadable(e.to_string()) })?;
        Self::parse(&text, &origin)
    }

    /// Parses and validates inventory text; `origin` names it in errors.
    ///
    /// # Errors
    /// As [`Inventory::load`], less the I/O.
    pub fn parse(text: &str, origin: &str) -> Result<Self, InventoryError> {
        let err = |kind| InventoryError { origin: origin.to_string(), kind };
        // Look at the version first, so an inventory from a newer release is reported as
        // such rather than as a pile of unknown fields.
        let table: toml::Table = toml::from_str(text).map_err(|e| err(InventoryErrorKind::Malformed(one_line(&e))))?;
        match table.get("version") {
            None => return Err(err(InventoryErrorKind::MissingVersion)),
            Some(toml::Value::Integer(v)) if *v == i64::from(VERSION) => {}
            Some(toml::Value::Integer(v)) => return Err(err(InventoryErrorKind::UnknownVersion(*v))),
            Some(other) => {
                return Err(err(InventoryErrorKind::Malformed(format!("`version` must be an integer, found {}", other.type_str()))))
            }
        }
        let inv: Inventory = toml::from_str(text).map_err(|e| err(InventoryErrorKind::Malformed(one_line(&e))))?;
        inv.validate().map_err(|e| err(InventoryErrorKind::Invalid(e)))?;
        Ok(inv)
    }

    /// Checks the cross-references: unique GPU indices, unique GRES indices and leaf UUIDs,
    /// every leaf on a declared GPU, no empty names.
    ///
    /// # Errors
    /// A description of the first inconsistency found.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(e) = &self.emulation {
            if !(1..=100).contains(&e.sm_percent) {
                return Err(format!("[emulation] sm_percent = {} is not a share of 1-100 percent", e.sm_percent));
            }
        }
        let mut gpu_idx = BTreeSet::new();
        let mut gpu_uuid = BTreeSet::new();
        for g in &self.gpus {
            if !gpu_idx.insert(g.index) {
                return Err(format!("GPU index {} is listed twice", g.index));
            }
            if g.uuid.trim().is_empty() {
                return Err(format!("GPU {} has an empty uuid", g.index));
            }
            if !gpu_uuid.insert(g.uuid.as_str()) {
                return Err(format!("GPU uuid {} is listed twice", g.uuid));
            }
        }
        let mut gres: BTreeMap<u32, &Leaf> = BTreeMap::new();
        let mut uuids = BTreeSet::new();
        for l in &self.leaves {
            if let Some(prev) = gres.insert(l.gres_index, l) {
                return Err(format!("GRES index {} is given to two leaves ({} and {})", l.gres_index, prev.uuid, l.uuid));
            }
            if !gpu_idx.contains(&l.gpu) {
                return Err(format!("leaf {} (GRES index {}) is on GPU {}, which has no [[gpu]] entry", l.uuid, l.gres_index, l.gpu));
            }
            if l.uuid.is_empty() || l.uuid.starts_with('.') || !l.uuid.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(format!(
                    "leaf with GRES index {} has uuid `{}`: a MIG UUID is letters, digits and dashes (MIG-...)",
                    l.gres_index, l.uuid
                ));
            }
            if !uuids.insert(l.uuid.as_str()) {
                return Err(format!("leaf uuid {} is listed twice", l.uuid));
            }
            if l.profile.trim().is_empty() {
                return Err(format!("leaf {} has an empty profile", l.uuid));
            }
            if matches!(&l.cuda_device, Some(c) if c.trim().is_empty() || c.contains(',')) {
                return Err(format!("leaf {} has a cuda_device that is empty or holds a comma", l.uuid));
            }
            if self.emulation.is_some() && l.cuda_device.is_none() {
                return Err(format!("emulated leaf {} has no cuda_device (the GPU it is a share of)", l.uuid));
            }
        }
        Ok(())
    }

    /// The leaf with Slurm GRES index `gres_index`.
    pub fn leaf_by_gres_index(&self, gres_index: u32) -> Option<&Leaf> {
        self.leaves.iter().find(|l| l.gres_index == gres_index)
    }

    /// The GPU with NVML index `index`.
    pub fn gpu(&self, index: u32) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.index == index)
    }

    /// Serialises to TOML, leaves sorted by GRES index.
    pub fn to_toml_string(&self) -> String {
        let mut sorted = self.clone();
        sorted.gpus.sort_by_key(|g| g.index);
        sorted.leaves.sort_by_key(|l| l.gres_index);
        let body = toml::to_string(&sorted).expect("inventory serialises to TOML");
        format!("# flexmig node inventory: written by flexmig-gres-helper, read by the flexmig SPANK plugin.\n{body}")
    }

    /// Validates and writes the inventory atomically (mode 0644: every job user reads it).
    ///
    /// # Errors
    /// An inconsistent inventory, or the I/O error.
    pub fn write_atomic(&self, path: &Path) -> std::io::Result<()> {
        self.validate().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        crate::atomic::write_atomic(path, self.to_toml_string().as_bytes(), 0o644)
    }
}

impl Default for Inventory {
    fn default() -> Self {
        Self::new()
    }
}

fn one_line(e: &toml::de::Error) -> String {
    let mut s = e.message().to_string();
    if let Some(span) = e.span() {
        s.push_str(&format!(" (at byte {})", span.start));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version = 1
[[gpu]]
index = 0
uuid = "GPU-0"
bus_id = "00000000:4B:00.0"
model = "NVIDIA A100-PCIE-40GB"
[[gpu]]
index = 1
uuid = "GPU-1"
bus_id = "00000000:4C:00.0"
model = "NVIDIA A100-PCIE-40GB"
[[leaf]]
gres_index = 0
gpu = 0
profile = "1g.5gb"
uuid = "MIG-a"
[[leaf]]
gres_index = 1
gpu = 1
profile = "1g.5gb"
uuid = "MIG-b"
cuda_device = "0"
"#;

    fn kind(text: &str) -> InventoryErrorKind {
        Inventory::parse(text, "t").unwrap_err().kind
    }

    #[test]
    fn parses_a_good_inventory() {
        let inv = Inventory::parse(GOOD, "t").unwrap();
        assert_eq!(inv.gpus.len(), 2);
        assert_eq!(inv.leaf_by_gres_index(1).unwrap().cuda_device(), "0");
        assert_eq!(inv.leaf_by_gres_index(0).unwrap().cuda_device(), "MIG-a");
        assert!(inv.leaf_by_gres_index(2).is_none());
    }

    #[test]
    fn round_trips_through_the_writer() {
        let inv = Inventory::parse(GOOD, "t").unwrap();
        let again = Inventory::parse(&inv.to_toml_string(), "t").unwrap();
        assert_eq!(inv, again);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("flexmig.toml");
        inv.write_atomic(&p).unwrap();
        assert_eq!(Inventory::load(&p).unwrap(), inv);
    }

    #[test]
    fn rejects_unknown_fields() {
        let t = GOOD.replace("profile = \"1g.5gb\"\nuuid = \"MIG-a\"", "profile = \"1g.5gb\"\nuuid = \"MIG-a\"\nslot = 3");
        match kind(&t) {
            InventoryErrorKind::Malformed(m) => assert!(m.contains("slot"), "{m}"),
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn rejects_missing_and_unknown_versions() {
        assert_eq!(kind(&GOOD.replace("version = 1", "")), InventoryErrorKind::MissingVersion);
        assert_eq!(kind(&GOOD.replace("version = 1", "version = 2")), InventoryErrorKind::UnknownVersion(2));
        assert!(matches!(kind(&GOOD.replace("version = 1", "version = \"1\"")), InventoryErrorKind::Malformed(_)));
        let e = Inventory::parse(&GOOD.replace("version = 1", "version = 7"), "/etc/slurm/flexmig.toml").unwrap_err();
        assert!(e.to_string().contains("version 7") && e.to_string().contains("/etc/slurm/flexmig.toml"), "{e}");
    }

    #[test]
    fn rejects_malformed_toml() {
        assert!(matches!(kind("version = 1\n[[leaf]\n"), InventoryErrorKind::Malformed(_)));
        assert!(matches!(kind(""), InventoryErrorKind::MissingVersion));
        assert!(matches!(kind(&GOOD.replace("gres_index = 1", "gres_index = -1")), InventoryErrorKind::Malformed(_)));
    }

    #[test]
    fn rejects_inconsistent_content() {
        let dup_gres = GOOD.replace("gres_index = 1", "gres_index = 0");
        match kind(&dup_gres) {
            InventoryErrorKind::Invalid(m) => assert!(m.contains("GRES index 0"), "{m}"),
            k => panic!("{k:?}"),
        }
        let dup_uuid = GOOD.replace("uuid = \"MIG-b\"", "uuid = \"MIG-a\"");
        assert!(matches!(kind(&dup_uuid), InventoryErrorKind::Invalid(m) if m.contains("MIG-a")));
        let bad_gpu = GOOD.replace("gpu = 1\n", "gpu = 5\n");
        assert!(matches!(kind(&bad_gpu), InventoryErrorKind::Invalid(m) if m.contains("GPU 5")));
        let dup_gpu = GOOD.replace("index = 1\n", "index = 0\n");
        assert!(matches!(kind(&dup_gpu), InventoryErrorKind::Invalid(m) if m.contains("GPU index 0")));
        let slash = GOOD.replace("uuid = \"MIG-b\"", "uuid = \"../../etc/x\"");
        assert!(matches!(kind(&slash), InventoryErrorKind::Invalid(m) if m.contains("letters, digits")));
        let comma = GOOD.replace("cuda_device = \"0\"", "cuda_device = \"0,1\"");
        assert!(matches!(kind(&comma), InventoryErrorKind::Invalid(_)));
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let e = Inventory::load(Path::new("/nonexistent/flexmig.toml")).unwrap_err();
        assert!(matches!(e.kind, InventoryErrorKind::Unreadable(_)));
        assert!(e.to_string().contains("/nonexistent/flexmig.toml"));
    }

    #[test]
    fn emulated_leaves_round_trip_and_need_their_gpu() {
        let text = "version = 1\n[emulation]\nsm_percent = 14\n[[gpu]]\nindex = 0\nuuid = \"GPU-a\"\nbus_id = \"0000:01:00.0\"\nmodel = \"H200\"\n\
                    [[leaf]]\ngres_index = 0\ngpu = 0\nprofile = \"1g.18gb\"\nuuid = \"MIG-emu-0-0\"\ncuda_device = \"GPU-a\"\n";
        let inv = Inventory::parse(text, "t").unwrap();
        assert_eq!(inv.emulation, Some(Emulation { sm_percent: 14 }));
        assert_eq!(Inventory::parse(&inv.to_toml_string(), "again").unwrap(), inv);
        let e = Inventory::parse(&text.replace("cuda_device = \"GPU-a\"\n", ""), "t").unwrap_err().to_string();
        assert!(e.contains("no cuda_device"), "{e}");
        let e = Inventory::parse(&text.replace("sm_percent = 14", "sm_percent = 0"), "t").unwrap_err().to_string();
        assert!(e.contains("1-100"), "{e}");
    }
}
