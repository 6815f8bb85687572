//! The fake nodes: GPUs (by recorded model table), their MIG mode, current GPU and compute
//! instances, and running processes, in place of NVML. [`MemoryNode`] holds them in memory
//! (unit tests); [`FileNode`] keeps them in a TOML file (`--fake-node`, the CLI tests, the
//! demo), which `apply` rewrites atomically. The file format:
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

/// What to do about a fake node that is refused.
const FIX: &str = "fix the file or recreate it with `flexmig-gres-helper fake-node create`";

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

/// A fake node held in memory.
#[derive(Debug, Clone)]
pub struct MemoryNode {
    file: FakeNodeFile,
    /// The recorded table of each GPU of `file`, in its order.
    models: Vec<GpuModel>,
    /// Changed since created or last committed.
    changed: bool,
}

/// A fake node kept in a file: changes are written back on [`Node::commit`].
#[derive(Debug)]
pub struct FileNode {
    path: PathBuf,
    node: MemoryNode,
}

impl FakeNodeFile {
    /// Parses and checks fake-node text; `origin` names it in errors.
    ///
    /// # Errors
    /// Malformed TOML, unknown fields or version, unknown models, impossible instances.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let table: toml::Table = toml::from_str(text).map_err(|e| anyhow!("fake node {origin} is malformed: {}; {FIX}", e.message()))?;
        match table.get("version") {
            Some(toml::Value::Integer(v)) if *v == i64::from(VERSION) => {}
            Some(v) => bail!("fake node {origin} has version {v}, but this helper reads version {VERSION}; {FIX}"),
            None => bail!("fake node {origin} has no `version` key; {FIX}"),
        }
        let file: FakeNodeFile = toml::from_str(text).map_err(|e| anyhow!("fake node {origin} is malformed: {}; {FIX}", e.message()))?;
        file.models(origin)?;
        Ok(file)
    }

    /// The recorded table of each GPU, after checking what a parsed file cannot show: GPU
    /// indices listed once, known models, instances the model allows, MIG mode on where
    /// instances exist.
    ///
    /// # Errors
    /// The first of those that fails, naming `origin`.
    fn models(&self, origin: &str) -> Result<Vec<GpuModel>> {
        let fix = FIX;
        let mut models = Vec::new();
        let mut seen = BTreeSet::new();
        for g in &self.gpus {
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
        Ok(models)
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

impl MemoryNode {
    /// The node `file` describes; `origin` names it in errors.
    ///
    /// # Errors
    /// What [`FakeNodeFile::parse`] refuses beyond the syntax: unknown models, impossible instances.
    pub fn new(file: FakeNodeFile, origin: &str) -> Result<Self> {
        let models = file.models(origin)?;
        Ok(MemoryNode { file, models, changed: false })
    }

    /// A fresh node of `count` GPUs of `model`, MIG mode as given, no instances.
    ///
    /// # Errors
    /// An unknown model.
    #[cfg(test)]
    pub fn create(model: &str, count: u32, mig_enabled: bool) -> Result<Self> {
        Self::new(FakeNodeFile::create(model, count, mig_enabled)?, "a new fake node")
    }

    /// What the node is now, in the file format.
    pub fn file(&self) -> &FakeNodeFile {
        &self.file
    }

    /// Changes the node behind the helper's back (a process starts, an instance breaks), with
    /// the checks a loaded file gets.
    ///
    /// # Errors
    /// The edited node is one a fake-node file could not describe; the node is then unchanged.
    #[cfg(test)]
    pub fn edit(&mut self, change: impl FnOnce(&mut FakeNodeFile)) -> Result<()> {
        let mut file = self.file.clone();
        change(&mut file);
        *self = MemoryNode { changed: true, ..MemoryNode::new(file, "the edited fake node")? };
        Ok(())
    }

    fn gpu_mut(&mut self, gpu: u32) -> Result<(usize, &mut FakeGpu)> {
        let pos = self.file.gpus.iter().position(|g| g.index == gpu).ok_or_else(|| anyhow!("fake node has no GPU {gpu}"))?;
        Ok((pos, &mut self.file.gpus[pos]))
    }
}

#[cfg(test)]
impl MemoryNode {
    /// `count` GPUs of `model` with the planned leaves applied, and the driver's minors for them.
    pub fn applied(model: &str, count: u32) -> (Self, crate::devices::MigMinors) {
        let mut node = Self::create(model, count, true).unwrap();
        let want = crate::mig_layout::plan_node(&mut node).unwrap();
        crate::mig_layout::apply(&mut node, &want, false, &mut Vec::new()).unwrap();
        let minors = crate::devices::MigMinors::parse(&fake_mig_minors(&(0..count).collect::<Vec<_>>()), "fake mig-minors").unwrap();
        (node, minors)
    }
}

impl FileNode {
    /// Loads the fake node at `path`.
    ///
    /// # Errors
    /// Unreadable or invalid file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read the fake node {}; create one with `flexmig-gres-helper fake-node create`", path.display())
        })?;
        let origin = path.display().to_string();
        let node = MemoryNode::new(FakeNodeFile::parse(&text, &origin)?, &origin)?;
        Ok(FileNode { path: path.to_path_buf(), node })
    }

    /// The node as loaded and changed since.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn file(&self) -> &FakeNodeFile {
        self.node.file()
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

impl Node for MemoryNode {
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
        self.changed = true;
        Ok(change)
    }

    fn destroy_instance(&mut self, gpu: u32, gi: u32) -> Result<()> {
        let (_, g) = self.gpu_mut(gpu)?;
        let before = g.instances.len();
        g.instances.retain(|i| i.id != gi);
        if g.instances.len() == before {
            bail!("GPU {gpu} has no GPU instance {gi}");
        }
        self.changed = true;
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
        self.changed = true;
        Ok(self.instances(gpu)?.into_iter().find(|i| i.id == id).expect("just created"))
    }

    /// Nothing to make durable: the change is the memory.
    fn commit(&mut self) -> Result<()> {
        Ok(())
    }
}

impl Node for FileNode {
    fn gpus(&mut self) -> Result<Vec<GpuInfo>> {
        self.node.gpus()
    }
    fn instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>> {
        self.node.instances(gpu)
    }
    fn processes(&mut self, gpu: u32) -> Result<Vec<GpuProcess>> {
        self.node.processes(gpu)
    }
    fn set_mig_mode(&mut self, gpu: u32, enabled: bool) -> Result<MigModeChange> {
        self.node.set_mig_mode(gpu, enabled)
    }
    fn destroy_instance(&mut self, gpu: u32, gi: u32) -> Result<()> {
        self.node.destroy_instance(gpu, gi)
    }
    fn create_leaf(&mut self, gpu: u32, profile: &GiProfile, start: u32) -> Result<GpuInstance> {
        self.node.create_leaf(gpu, profile, start)
    }
    /// Writes the file (atomically) when the node changed.
    fn commit(&mut self) -> Result<()> {
        if self.node.changed {
            leaf_model::atomic::write_atomic(&self.path, self.node.file.to_toml_string().as_bytes(), 0o644)
                .with_context(|| format!("writing the fake node {}", self.path.display()))?;
            self.node.changed = false;
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
        let f = FakeNodeFile::parse(&t, "t").unwrap();
        assert_eq!(f.gpus.len(), 2);
        assert_ne!(f.gpus[0].uuid, f.gpus[1].uuid);
        assert_eq!(FakeNodeFile::parse(&f.to_toml_string(), "t").unwrap(), f);
        let gpus = MemoryNode::new(f, "t").unwrap().gpus().unwrap();
        assert_eq!((gpus[0].model.name.as_str(), gpus[1].minor), ("H100-80GB", 1));
    }

    #[test]
    fn a_memory_node_changes_as_nvml_would_and_refuses_impossible_edits() {
        let mut node = MemoryNode::create("A100-40GB", 1, true).unwrap();
        let m = node.gpus().unwrap().remove(0).model;
        let made = node.create_leaf(0, m.profile("1g.10gb").unwrap(), 6).unwrap();
        assert_eq!((made.start, made.size, made.leaf_ci().is_some()), (6, 2, true));
        // The placement rules NVML enforces: 1g.10gb cannot start at slice 5.
        let e = format!("{:#}", node.create_leaf(0, m.profile("1g.10gb").unwrap(), 5).unwrap_err());
        assert!(e.contains("cannot create 1g.10gb at 5"), "{e}");
        assert!(node.changed);
        node.commit().unwrap();
        assert_eq!(node.file().gpus[0].instances.len(), 1);
        let e = format!("{:#}", node.edit(|f| f.gpus[0].mig_enabled = false).unwrap_err());
        assert!(e.contains("MIG mode disabled"), "{e}");
        assert!(node.file().gpus[0].mig_enabled, "a refused edit leaves the node as it was");
        node.edit(|f| f.gpus[0].processes.push(FakeProcess { pid: 7, name: "python".into() })).unwrap();
        assert_eq!(node.processes(0).unwrap(), vec![GpuProcess { pid: 7, name: "python".into() }]);
        node.destroy_instance(0, made.id).unwrap();
        assert!(node.instances(0).unwrap().is_empty());
    }

    #[test]
    fn a_file_node_writes_its_file_on_commit_only_after_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(&p, "# hand-written\n".to_string() + &node_text()).unwrap();
        let mut node = FileNode::load(&p).unwrap();
        node.commit().unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().starts_with("# hand-written"), "an unchanged node is not rewritten");
        node.set_mig_mode(1, false).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().starts_with("# hand-written"), "nothing is written before commit");
        node.commit().unwrap();
        let again = FileNode::load(&p).unwrap();
        assert!(!again.file().gpus[1].mig_enabled && again.file().gpus[0].mig_enabled);
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
