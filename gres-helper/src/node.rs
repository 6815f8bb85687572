//! What the helper needs from a GPU node, behind one trait: the real implementation talks to
//! NVML ([`crate::nvml`]), the fake one reads and writes a TOML file ([`crate::fake`]).

use anyhow::Result;
use leaf_model::layout::LeafPlacement;
use leaf_model::mig::{GiProfile, GpuModel};

/// One physical GPU as the node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// NVML index.
    pub index: u32,
    /// Minor number of the GPU's device file (`/dev/nvidia<minor>`).
    pub minor: u32,
    pub uuid: String,
    pub bus_id: String,
    /// NVML device name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// The GPU's MIG geometry as the node reports it (empty `profiles` where MIG is unsupported).
    pub model: GpuModel,
    pub mig: MigMode,
}

/// MIG mode: current and pending (pending differs from current until a GPU reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MigMode {
    pub current: bool,
    pub pending: bool,
}

/// A compute instance inside a GPU instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeInstance {
    pub id: u32,
    pub compute_slices: u32,
    /// The MIG device UUID (`MIG-...`) of this compute instance.
    pub uuid: String,
}

/// A GPU instance as it exists on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInstance {
    pub id: u32,
    pub profile: String,
    pub start: u32,
    pub size: u32,
    pub compute_slices: u32,
    pub compute: Vec<ComputeInstance>,
}

impl GpuInstance {
    /// Its placement in the layout schema.
    pub fn placement(&self) -> LeafPlacement {
        LeafPlacement { profile: self.profile.clone(), start: self.start, size: self.size }
    }

    /// The compute instance if this GPU instance is a flexmig leaf: exactly one compute
    /// instance spanning all of its compute slices.
    pub fn leaf_ci(&self) -> Option<&ComputeInstance> {
        match self.compute.as_slice() {
            [ci] if ci.compute_slices == self.compute_slices => Some(ci),
            _ => None,
        }
    }
}

/// A process using a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuProcess {
    pub pid: u32,
    pub name: String,
}

/// The result of asking for MIG mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigModeChange {
    /// The mode is in effect now.
    Done,
    /// The mode is pending and takes effect after a GPU reset.
    NeedsReset,
}

/// A GPU node: what NVML offers the helper.
pub trait Node {
    /// Every GPU of the node, by NVML index.
    ///
    /// # Errors
    /// NVML failures, or a malformed fake node.
    fn gpus(&mut self) -> Result<Vec<GpuInfo>>;
    /// The GPU instances (with their compute instances) of GPU `gpu`.
    fn instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>>;
    /// Processes running on GPU `gpu` (any of its instances).
    ///
    /// # Errors
    /// The processes could not be listed. Never an empty list in that case: callers decide
    /// whether a GPU is idle from it.
    fn processes(&mut self, gpu: u32) -> Result<Vec<GpuProcess>>;
    /// Enables or disables MIG mode on `gpu`.
    fn set_mig_mode(&mut self, gpu: u32, enabled: bool) -> Result<MigModeChange>;
    /// Destroys GPU instance `gi` of `gpu`, its compute instances first.
    fn destroy_instance(&mut self, gpu: u32, gi: u32) -> Result<()>;
    /// Creates a GPU instance of `profile` at memory slice `start` with one compute instance
    /// spanning it, and returns it.
    fn create_leaf(&mut self, gpu: u32, profile: &GiProfile, start: u32) -> Result<GpuInstance>;
    /// Makes the changes durable (the fake node writes its file; NVML needs nothing).
    fn commit(&mut self) -> Result<()>;
}
