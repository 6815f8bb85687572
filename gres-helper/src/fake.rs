//! The fake node: a TOML file describing GPUs (by recorded model table), their MIG mode,
//! current GPU and compute instances, and running processes. Used by the tests and the demo
//! instead of NVML; `apply` on it rewrites the file atomically.
//!
//! ```toml
//! version = 1
//! [[gpu]]
//! index = 0
//! model = "H100-80GB"            # a recorded table: short name or NVML device name
//! uuid = "GPU-..."
//! bus_id = "00000000:4B:00.0"
//! minor = 0                      # optional: /dev/nvidia<minor>; defaults to index
//! mig_enabled = true
//! mig_pending = true             # optional: defaults to mig_enabled
//! enable_needs_reset = false     # optional: enabling MIG stays pending until a GPU reset
//! [[gpu.instance]]
//! id = 7
//! profile = "1g.10gb"
//! start = 0
//! compute = [{ id = 0, slices = 1, uuid = "MIG-..." }]
//! [[gpu.process]]
//! pid = 4242
//! name = "python"
//! ```
//!
//! `process_query_error = "Insufficient Permissions"` (optional, per GPU) makes listing the
//! GPU's processes fail with that message, as NVML's query can.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use leaf_model::layout::Layout;
use leaf_model::mig::{builtin_model, builtin_model_names, GiProfile, GpuModel};
use serde::{Deserialize, Serialize};

use crate::node::{ComputeInstance, GpuInfo, GpuInstance, GpuProcess, MigMode, MigModeChange, Node};

/// The fake node file format version.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeNodeFile {
    pub version: u32,
    #[serde(default, rename = "gpu")]
    pub gpus: Vec<FakeGpu>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeGpu {
    pub index: u32,
    pub model: String,
    pub uuid: String,
    pub bus_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<u32>,
    pub mig_enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_pending: Option<bool>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable_needs_reset: bool,
    #[serde(default, rename = "instance", skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<FakeInstance>,
    #[serde(default, rename = "process", skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<FakeProcess>,
    /// Listing the processes fails with this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_query_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeInstance {
    pub id: u32,
    pub profile: String,
    pub start: u32,
    #[serde(default)]
    pub compute: Vec<FakeCompute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeCompute {
    pub id: u32,
    pub slices: u32,
    pub uuid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeProcess {
    pub pid: u32,
    pub name: String,
}

/// A fake node backed by a file.
#[derive(Debug)]
pub struct FakeNode {
    path: PathBuf,
    file: FakeNodeFile,
    models: Vec<GpuModel>,
    dirty: bool,
}

impl FakeNodeFile {
    /// Parses and checks fake-node text; `origin` names it in errors.
    ///
    /// # Errors
    /// Malformed TOML, unknown fields or version, unknown models, impossible instances.
    pub fn parse(text: &str, origin: &str) -> Result<(Self, Vec<GpuModel>)> {
        let fix = "fix the file or recreate it with `flexmig-gres-helper fake-node create`";
        let table: toml::Table = toml::from_str(text).map_err(|e| anyhow!("fake node {origin} is malformed: {}; {fix}", e.message()))?;
        match table.get("version") {
            Some(toml::Value::Integer(v)) if *v == i64::from(VERSION) => {}
            Some(v) => bail!("fake node {origin} has version {v}, but this helper reads version {VERSION}; {fix}"),
            None => bail!("fake node {origin} has no `version` key; {fix}"),
        }
        let file: FakeNodeFile = toml::from_str(text).map_err(|e| anyhow!("fake node {origin} is malformed: {}; {fix}", e.message()))?;
        let mut models = Vec::new();
        let mut seen = BTreeSet::new();
        for g in &file.gpus {
            if !seen.insert(g.index) {
                bail!("fake node {origin}: GPU index {} is listed twice; {fix}", g.index);
            }
            let model = builtin_model(&g.model).ok_or_else(|| {
                anyhow!(
                    "fake node {origin}: GPU {} has model {:?}, which is not a recorded table (known: {}); {fix}",
                    g.index,
                    g.model,
                    builtin_model_names().join(", ")
                )
            })?;
            let layout = Layout {
                model: model.name.clone(),
                instances: g
                    .instances
                    .iter()
                    .map(|i| {
                        let size = model.profile(&i.profile).map_or(0, |p| p.memory_slices);
                        leaf_model::layout::LeafPlacement { profile: i.profile.clone(), start: i.start, size }
                    })
                    .collect(),
            };
            layout.check_against(&model).map_err(|e| anyhow!("fake node {origin}: GPU {}: {e}; {fix}", g.index))?;
            if !g.instances.is_empty() && !g.mig_enabled {
                bail!("fake node {origin}: GPU {} has instances but MIG mode disabled; {fix}", g.index);
            }
            let mut gi_ids = BTreeSet::new();
            for i in &g.instances {
                if !gi_ids.insert(i.id) {
                    bail!("fake node {origin}: GPU {} has GPU instance id {} twice; {fix}", g.index, i.id);
                }
            }
            models.push(model);
        }
        Ok((file, models))
    }

    /// Serialises to TOML.
    pub fn to_toml_string(&self) -> String {
        let body = toml::to_string(self).expect("fake node serialises");
        format!("# flexmig fake GPU node (see `flexmig-gres-helper fake-node --help`)\n{body}")
    }

    /// A fresh node of `count` GPUs of `model`, MIG mode as given, no instances.
    ///
    /// # Errors
    /// An unknown model.
    pub fn create(model: &str, count: u32, mig_enabled: bool) -> Result<Self> {
        let m = builtin_model(model)
            .ok_or_else(|| anyhow!("{model:?} is not a recorded GPU model; use one of {}", builtin_model_names().join(", ")))?;
        let gpus = (0..count)
            .map(|i| FakeGpu {
                index: i,
                model: m.name.clone(),
                uuid: format!("GPU-{}", uuid_like(&format!("{}/{i}", m.name))),
                bus_id: format!("00000000:{:02X}:00.0", 0x4B + i),
                minor: None,
                mig_enabled,
                mig_pending: None,
                enable_needs_reset: false,
                instances: Vec::new(),
                processes: Vec::new(),
                process_query_error: None,
            })
            .collect();
        Ok(FakeNodeFile { version: VERSION, gpus })
    }
}

impl FakeNode {
    /// Loads the fake node at `path`.
    ///
    /// # Errors
    /// Unreadable or invalid file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read the fake node {}; create one with `flexmig-gres-helper fake-node create`", path.display())
        })?;
        let (file, models) = FakeNodeFile::parse(&text, &path.display().to_string())?;
        Ok(FakeNode { path: path.to_path_buf(), file, models, dirty: false })
    }

    /// The parsed file.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn file(&self) -> &FakeNodeFile {
        &self.file
    }

    fn gpu_mut(&mut self, gpu: u32) -> Result<(usize, &mut FakeGpu)> {
        let pos = self.file.gpus.iter().position(|g| g.index == gpu).ok_or_else(|| anyhow!("fake node has no GPU {gpu}"))?;
        Ok((pos, &mut self.file.gpus[pos]))
    }
}

/// A deterministic UUID-shaped string from `seed` (FNV-1a, twice).
pub fn uuid_like(seed: &str) -> String {
    let h = |salt: u64| {
        let mut x: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
        for b in seed.bytes() {
            x ^= u64::from(b);
            x = x.wrapping_mul(0x0100_0000_01b3);
        }
        // splitmix64 finaliser: neighbouring seeds give unrelated-looking ids.
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    };
    let (a, b) = (h(1), h(2));
    format!("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", a >> 32, (a >> 16) & 0xffff, a & 0xffff, b >> 48, b & 0xffff_ffff_ffff)
}

impl Node for FakeNode {
    fn gpus(&mut self) -> Result<Vec<GpuInfo>> {
        Ok(self
            .file
            .gpus
            .iter()
            .zip(&self.models)
            .map(|(g, m)| GpuInfo {
                index: g.index,
                minor: g.minor.unwrap_or(g.index),
                uuid: g.uuid.clone(),
                bus_id: g.bus_id.clone(),
                name: m.nvml_names.first().cloned().unwrap_or_else(|| m.name.clone()),
                model: m.clone(),
                mig: MigMode { current: g.mig_enabled, pending: g.mig_pending.unwrap_or(g.mig_enabled) },
            })
            .collect())
    }

    fn instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>> {
        let (pos, g) = self.gpu_mut(gpu)?;
        let g = g.clone();
        let model = &self.models[pos];
        Ok(g.instances
            .iter()
            .map(|i| {
                let p = model.profile(&i.profile).expect("checked at load");
                GpuInstance {
                    id: i.id,
                    profile: i.profile.clone(),
                    start: i.start,
                    size: p.memory_slices,
                    compute_slices: p.compute_slices,
                    compute: i
                        .compute
                        .iter()
                        .map(|c| ComputeInstance { id: c.id, compute_slices: c.slices, uuid: c.uuid.clone() })
                        .collect(),
                }
            })
            .collect())
    }

    fn processes(&mut self, gpu: u32) -> Result<Vec<GpuProcess>> {
        let (_, g) = self.gpu_mut(gpu)?;
        if let Some(e) = &g.process_query_error {
            bail!("listing the processes of fake GPU {gpu}: {e}");
        }
        Ok(g.processes.iter().map(|p| GpuProcess { pid: p.pid, name: p.name.clone() }).collect())
    }

    fn set_mig_mode(&mut self, gpu: u32, enabled: bool) -> Result<MigModeChange> {
        let (_, g) = self.gpu_mut(gpu)?;
        if enabled && !g.instances.is_empty() {
            return Ok(MigModeChange::Done);
        }
        if !enabled && !g.instances.is_empty() {
            bail!("GPU {gpu}: cannot disable MIG mode while GPU instances exist");
        }
        g.mig_pending = Some(enabled);
        let change = if g.enable_needs_reset && enabled && !g.mig_enabled {
            MigModeChange::NeedsReset
        } else {
            g.mig_enabled = enabled;
            MigModeChange::Done
        };
        self.dirty = true;
        Ok(change)
    }

    fn destroy_instance(&mut self, gpu: u32, gi: u32) -> Result<()> {
        let (_, g) = self.gpu_mut(gpu)?;
        let before = g.instances.len();
        g.instances.retain(|i| i.id != gi);
        if g.instances.len() == before {
            bail!("GPU {gpu} has no GPU instance {gi}");
        }
        self.dirty = true;
        Ok(())
    }

    fn create_leaf(&mut self, gpu: u32, profile: &GiProfile, start: u32) -> Result<GpuInstance> {
        let (pos, g) = self.gpu_mut(gpu)?;
        if !g.mig_enabled {
            bail!("GPU {gpu}: MIG mode is not enabled");
        }
        let uuid_seed = format!("{}/{}/{}", g.uuid, profile.name, start);
        let id = (1..).find(|id| g.instances.iter().all(|i| i.id != *id)).expect("a free id");
        let mut next = g.instances.clone();
        next.push(FakeInstance {
            id,
            profile: profile.name.clone(),
            start,
            compute: vec![FakeCompute { id: 0, slices: profile.compute_slices, uuid: format!("MIG-{}", uuid_like(&uuid_seed)) }],
        });
        // The same placement rules NVML enforces.
        let model = &self.models[pos];
        let layout = Layout {
            model: model.name.clone(),
            instances: next
                .iter()
                .map(|i| leaf_model::layout::LeafPlacement {
                    profile: i.profile.clone(),
                    start: i.start,
                    size: model.profile(&i.profile).map_or(0, |p| p.memory_slices),
                })
                .collect(),
        };
        layout.check_against(model).map_err(|e| anyhow!("GPU {gpu}: cannot create {} at {start}: {e}", profile.name))?;
        self.file.gpus[pos].instances = next;
        self.dirty = true;
        Ok(self.instances(gpu)?.into_iter().find(|i| i.id == id).expect("just created"))
    }

    fn commit(&mut self) -> Result<()> {
        if self.dirty {
            leaf_model::atomic::write_atomic(&self.path, self.file.to_toml_string().as_bytes(), 0o644)
                .with_context(|| format!("writing the fake node {}", self.path.display()))?;
            self.dirty = false;
        }
        Ok(())
    }
}

/// The device-file minor of GPU instance `gi` (and compute instance `ci`) of the GPU with
/// device minor `gpu_minor`, in the numbering the NVIDIA driver uses in
/// /proc/driver/nvidia-caps/mig-minors: `config` 1, `monitor` 2, then per GPU 15 GPU instances
/// of 9 minors each (the GI's own, then its 8 compute instances).
pub fn fake_cap_minor(gpu_minor: u32, gi: u32, ci: Option<u32>) -> u32 {
    3 + (gpu_minor * 15 + gi) * 9 + ci.map_or(0, |c| c + 1)
}

/// The text of a mig-minors file for GPUs with the given device minors.
pub fn fake_mig_minors(gpu_minors: &[u32]) -> String {
    let mut s = String::from("config 1\nmonitor 2\n");
    for &g in gpu_minors {
        for gi in 0..15 {
            let _ = writeln!(s, "gpu{g}/gi{gi}/access {}", fake_cap_minor(g, gi, None));
            for ci in 0..8 {
                let _ = writeln!(s, "gpu{g}/gi{gi}/ci{ci}/access {}", fake_cap_minor(g, gi, Some(ci)));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_text() -> String {
        FakeNodeFile::create("H100-80GB", 2, true).unwrap().to_toml_string()
    }

    fn err(text: &str) -> String {
        format!("{:#}", FakeNodeFile::parse(text, "node.toml").unwrap_err())
    }

    #[test]
    fn created_nodes_round_trip() {
        let t = node_text();
        let (f, models) = FakeNodeFile::parse(&t, "t").unwrap();
        assert_eq!(f.gpus.len(), 2);
        assert_eq!(models[0].name, "H100-80GB");
        assert_ne!(f.gpus[0].uuid, f.gpus[1].uuid);
        assert_eq!(FakeNodeFile::parse(&f.to_toml_string(), "t").unwrap().0, f);
    }

    #[test]
    fn rejects_malformed_fake_nodes() {
        let t = node_text();
        assert!(err("version = 1\n[[gpu]\n").contains("malformed"));
        assert!(err(&t.replace("version = 1", "version = 3")).contains("version 3"));
        assert!(err(&t.replace("version = 1", "")).contains("no `version`"));
        assert!(err(&t.replace("mig_enabled = true", "mig_enabled = true\ncolour = \"red\"")).contains("colour"));
        assert!(err(&t.replace("model = \"H100-80GB\"", "model = \"V100\"")).contains("not a recorded table"));
        assert!(err(&t.replace("index = 1", "index = 0")).contains("listed twice"));
        let with_bad_instance = format!("{t}\n[[gpu.instance]]\nid = 1\nprofile = \"1g.20gb\"\nstart = 1\n");
        assert!(err(&with_bad_instance).contains("cannot start"), "{}", err(&with_bad_instance));
        let disabled = node_text().replace("mig_enabled = true", "mig_enabled = false");
        let e = err(&format!("{disabled}\n[[gpu.instance]]\nid = 1\nprofile = \"1g.10gb\"\nstart = 0\n"));
        assert!(e.contains("MIG mode disabled"), "{e}");
    }

    #[test]
    fn cap_minors_match_the_driver_numbering() {
        assert_eq!(fake_cap_minor(0, 0, None), 3);
        assert_eq!(fake_cap_minor(0, 0, Some(0)), 4);
        assert_eq!(fake_cap_minor(0, 1, None), 12);
        assert_eq!(fake_cap_minor(1, 0, None), 138);
        let text = fake_mig_minors(&[0]);
        assert!(text.contains("gpu0/gi1/access 12\n"));
        assert!(text.contains("gpu0/gi14/ci7/access 137\n"));
    }
}
