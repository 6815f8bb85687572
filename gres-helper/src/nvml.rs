//! The real node, through NVML. nvml-wrapper covers devices, MIG mode and processes; GPU and
//! compute instance profiles, placements, creation and destruction are not wrapped in 0.13, so
//! this module calls them through nvml-wrapper-sys's raw bindings. Every `unsafe` NVML call of
//! the helper is in this module (the signal mask apply holds is in `signals.rs`).
//!
//! Never run `apply` against a GPU machine you do not own: it changes MIG mode and instances.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::io::Write as _;

use anyhow::{anyhow, bail, Context, Result};
use leaf_model::mig::{builtin_model, GiProfile, GpuModel};
use nvml_wrapper::error::{nvml_try, NvmlError};
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings as sys;

use crate::node::{ComputeInstance, GpuInfo, GpuInstance, GpuProcess, MigMode, MigModeChange, Node};

/// The node's GPUs through NVML.
pub struct NvmlNode {
    nvml: Nvml,
}

impl std::fmt::Debug for NvmlNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NvmlNode")
    }
}

/// Raw GPU-instance handle.
type GiHandle = sys::nvmlGpuInstance_t;

impl NvmlNode {
    /// Loads libnvidia-ml and initialises NVML.
    ///
    /// # Errors
    /// No NVIDIA driver (or not permitted).
    pub fn open() -> Result<Self> {
        let nvml = Nvml::init().context(
            "cannot initialise NVML (libnvidia-ml.so.1): is the NVIDIA driver installed? On a machine without GPUs use --fake-node",
        )?;
        // The raw functions panic when called while missing: check them all up front.
        let lib = nvml.lib();
        let missing: Vec<&str> = [
            ("nvmlDeviceGetGpuInstanceProfileInfoV", lib.nvmlDeviceGetGpuInstanceProfileInfoV.is_ok()),
            ("nvmlDeviceGetGpuInstancePossiblePlacements_v2", lib.nvmlDeviceGetGpuInstancePossiblePlacements_v2.is_ok()),
            ("nvmlDeviceGetGpuInstances", lib.nvmlDeviceGetGpuInstances.is_ok()),
            ("nvmlDeviceGetGpuInstanceById", lib.nvmlDeviceGetGpuInstanceById.is_ok()),
            ("nvmlDeviceCreateGpuInstanceWithPlacement", lib.nvmlDeviceCreateGpuInstanceWithPlacement.is_ok()),
            ("nvmlGpuInstanceGetInfo", lib.nvmlGpuInstanceGetInfo.is_ok()),
            ("nvmlGpuInstanceDestroy", lib.nvmlGpuInstanceDestroy.is_ok()),
            ("nvmlGpuInstanceGetComputeInstanceProfileInfo", lib.nvmlGpuInstanceGetComputeInstanceProfileInfo.is_ok()),
            ("nvmlGpuInstanceGetComputeInstances", lib.nvmlGpuInstanceGetComputeInstances.is_ok()),
            ("nvmlGpuInstanceCreateComputeInstance", lib.nvmlGpuInstanceCreateComputeInstance.is_ok()),
            ("nvmlComputeInstanceGetInfo_v2", lib.nvmlComputeInstanceGetInfo_v2.is_ok()),
            ("nvmlComputeInstanceDestroy", lib.nvmlComputeInstanceDestroy.is_ok()),
            ("nvmlDeviceGetGpuInstanceId", lib.nvmlDeviceGetGpuInstanceId.is_ok()),
            ("nvmlDeviceGetComputeInstanceId", lib.nvmlDeviceGetComputeInstanceId.is_ok()),
        ]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| n)
        .collect();
        if !missing.is_empty() {
            bail!(
                "this NVIDIA driver's NVML lacks {}: flexmig needs a driver with MIG placement support (R510 or newer); upgrade the driver",
                missing.join(", ")
            );
        }
        Ok(NvmlNode { nvml })
    }

    fn device(&self, gpu: u32) -> Result<Device<'_>> {
        self.nvml.device_by_index(gpu).with_context(|| format!("NVML has no GPU {gpu}"))
    }

    fn lib(&self) -> &sys::NvmlLib {
        self.nvml.lib()
    }

    /// GPU-instance profile info for the NVML profile enum value `p`, if the GPU offers it.
    fn gi_profile_info(&self, dev: &Device<'_>, p: u32) -> Option<sys::nvmlGpuInstanceProfileInfo_v2_t> {
        // SAFETY: an all-zero nvmlGpuInstanceProfileInfo_v2_t is a valid value (integers and a
        // char array).
        let mut info: sys::nvmlGpuInstanceProfileInfo_v2_t = unsafe { std::mem::zeroed() };
        info.version = (std::mem::size_of::<sys::nvmlGpuInstanceProfileInfo_v2_t>() as u32) | (2 << 24);
        // SAFETY: the device handle comes from a live `Device` of `self.nvml`; `info` is a valid
        // out-pointer of the type the function expects, with its version set.
        let rc = unsafe { self.lib().nvmlDeviceGetGpuInstanceProfileInfoV(dev.handle(), p, &mut info) };
        nvml_try(rc).ok().map(|()| info)
    }

    fn placements(&self, dev: &Device<'_>, profile_id: u32) -> Result<Vec<sys::nvmlGpuInstancePlacement_t>, NvmlError> {
        let mut count: u32 = 0;
        // SAFETY: a null placements pointer asks NVML for the count only.
        let rc =
            unsafe { self.lib().nvmlDeviceGetGpuInstancePossiblePlacements_v2(dev.handle(), profile_id, std::ptr::null_mut(), &mut count) };
        nvml_try(rc)?;
        let mut buf = vec![sys::nvmlGpuInstancePlacement_t { start: 0, size: 0 }; count as usize];
        // SAFETY: `buf` holds `count` placements, the number NVML just reported.
        let rc =
            unsafe { self.lib().nvmlDeviceGetGpuInstancePossiblePlacements_v2(dev.handle(), profile_id, buf.as_mut_ptr(), &mut count) };
        nvml_try(rc)?;
        buf.truncate(count as usize);
        Ok(buf)
    }

    /// The GPU's MIG geometry from live NVML data; falls back to the recorded table when NVML
    /// offers no profiles (MIG mode off on drivers that list profiles only in MIG mode).
    fn model(&self, dev: &Device<'_>, name: &str) -> GpuModel {
        let mut profiles = Vec::new();
        for p in 0..sys::NVML_GPU_INSTANCE_PROFILE_COUNT {
            let Some(info) = self.gi_profile_info(dev, p) else { continue };
            let Ok(pl) = self.placements(dev, info.id) else { continue };
            let Some(first) = pl.first() else { continue };
            // SAFETY: NVML NUL-terminates the name within its 96-byte buffer.
            let raw = unsafe { CStr::from_ptr(info.name.as_ptr()) }.to_string_lossy().into_owned();
            let pname = raw.trim_start_matches("MIG ").to_string();
            profiles.push(GiProfile {
                id: info.id,
                media_extensions: pname.contains('+'),
                name: pname,
                compute_slices: info.sliceCount,
                memory_slices: first.size,
                memory_mib: info.memorySizeMB,
                max_instances: info.instanceCount,
                placements: pl.iter().map(|x| x.start).collect(),
            });
        }
        let recorded = builtin_model(name);
        if profiles.is_empty() {
            if let Some(m) = recorded {
                // Not eprintln!, which panics on a broken stderr: this runs during apply too.
                let _ = writeln!(
                    std::io::stderr(),
                    "flexmig-gres-helper: NVML lists no MIG profiles for {name} (MIG mode off?); using the recorded {} table",
                    m.name
                );
                return m;
            }
            let _ = writeln!(
                std::io::stderr(),
                "flexmig-gres-helper: NVML lists no MIG profiles for {name} and flexmig has no recorded table for it: if it supports MIG, enable MIG mode (nvidia-smi -i <gpu> -mig 1) so NVML reports its geometry"
            );
        }
        let compute_slices = profiles.iter().map(|p| p.compute_slices).max().unwrap_or(0);
        let memory_slices = profiles.iter().flat_map(|p| p.placements.iter().map(move |s| s + p.memory_slices)).max().unwrap_or(0);
        let memory_mib = dev.memory_info().map(|m| m.total / (1024 * 1024)).unwrap_or(0);
        GpuModel {
            name: recorded.map_or_else(|| name.to_string(), |m| m.name),
            nvml_names: vec![name.to_string()],
            compute_slices,
            memory_slices,
            memory_mib,
            profiles,
        }
    }

    fn gpu_instances(&self, dev: &Device<'_>) -> Result<Vec<(GiHandle, sys::nvmlGpuInstanceInfo_t)>> {
        let mut out = Vec::new();
        for p in 0..sys::NVML_GPU_INSTANCE_PROFILE_COUNT {
            let Some(info) = self.gi_profile_info(dev, p) else { continue };
            let mut buf: Vec<GiHandle> = vec![std::ptr::null_mut(); info.instanceCount.max(1) as usize];
            let mut count: u32 = 0;
            // SAFETY: `buf` has room for instanceCount handles, the most NVML returns for a profile.
            let rc = unsafe { self.lib().nvmlDeviceGetGpuInstances(dev.handle(), info.id, buf.as_mut_ptr(), &mut count) };
            if nvml_try(rc).is_err() {
                continue;
            }
            for &gi in buf.iter().take(count as usize) {
                // SAFETY: zeroed info is valid (a null device pointer and integers).
                let mut gi_info: sys::nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: `gi` is a handle NVML just returned; `gi_info` is a valid out-pointer.
                let rc = unsafe { self.lib().nvmlGpuInstanceGetInfo(gi, &mut gi_info) };
                nvml_try(rc).context("nvmlGpuInstanceGetInfo")?;
                out.push((gi, gi_info));
            }
        }
        out.sort_by_key(|(_, i)| i.id);
        out.dedup_by_key(|(_, i)| i.id);
        Ok(out)
    }

    /// Compute instances of `gi`: (handle, id, compute slices).
    fn compute_instances(&self, gi: GiHandle) -> Result<Vec<(sys::nvmlComputeInstance_t, u32, u32)>> {
        let mut out = Vec::new();
        for cp in 0..sys::NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
            // SAFETY: zeroed profile info is a valid value (integers only).
            let mut info: sys::nvmlComputeInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `gi` is a live handle; `info` a valid out-pointer.
            let rc = unsafe {
                self.lib().nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, cp, sys::NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, &mut info)
            };
            if nvml_try(rc).is_err() {
                continue;
            }
            let mut buf: Vec<sys::nvmlComputeInstance_t> = vec![std::ptr::null_mut(); info.instanceCount.max(1) as usize];
            let mut count: u32 = 0;
            // SAFETY: `buf` has room for instanceCount handles.
            let rc = unsafe { self.lib().nvmlGpuInstanceGetComputeInstances(gi, info.id, buf.as_mut_ptr(), &mut count) };
            if nvml_try(rc).is_err() {
                continue;
            }
            for &ci in buf.iter().take(count as usize) {
                // SAFETY: zeroed info is valid (null pointers and integers).
                let mut ci_info: sys::nvmlComputeInstanceInfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: `ci` is a handle NVML just returned; `ci_info` a valid out-pointer.
                let rc = unsafe { self.lib().nvmlComputeInstanceGetInfo_v2(ci, &mut ci_info) };
                nvml_try(rc).context("nvmlComputeInstanceGetInfo_v2")?;
                out.push((ci, ci_info.id, info.sliceCount));
            }
        }
        Ok(out)
    }

    /// MIG device UUIDs by (GPU instance id, compute instance id).
    fn mig_uuids(&self, dev: &Device<'_>) -> BTreeMap<(u32, u32), String> {
        let mut out = BTreeMap::new();
        let max = dev.mig_device_count().unwrap_or(0);
        for j in 0..max {
            let Ok(mig) = dev.mig_device_by_index(j) else { continue };
            let (mut gi, mut ci) = (0u32, 0u32);
            // SAFETY: `mig` is a live MIG device handle; the out-pointers are valid u32s.
            let ok = unsafe {
                nvml_try(self.lib().nvmlDeviceGetGpuInstanceId(mig.handle(), &mut gi)).is_ok()
                    && nvml_try(self.lib().nvmlDeviceGetComputeInstanceId(mig.handle(), &mut ci)).is_ok()
            };
            if let (true, Ok(uuid)) = (ok, mig.uuid()) {
                out.insert((gi, ci), uuid);
            }
        }
        out
    }

    fn gi_by_id(&self, dev: &Device<'_>, id: u32) -> Result<GiHandle> {
        let mut gi: GiHandle = std::ptr::null_mut();
        // SAFETY: valid device handle and out-pointer.
        let rc = unsafe { self.lib().nvmlDeviceGetGpuInstanceById(dev.handle(), id, &mut gi) };
        nvml_try(rc).with_context(|| format!("no GPU instance {id}"))?;
        Ok(gi)
    }
}

/// An empty list where the device does not support the query; other errors stay errors.
fn unless_unsupported<T>(r: Result<Vec<T>, NvmlError>) -> Result<Vec<T>, NvmlError> {
    match r {
        Err(NvmlError::NotSupported) => Ok(Vec::new()),
        r => r,
    }
}

impl Node for NvmlNode {
    fn gpus(&mut self) -> Result<Vec<GpuInfo>> {
        let n = self.nvml.device_count().context("nvmlDeviceGetCount")?;
        let mut out = Vec::new();
        for i in 0..n {
            let dev = self.device(i)?;
            let name = dev.name().context("nvmlDeviceGetName")?;
            let mig = match dev.mig_mode() {
                Ok(m) => MigMode { current: m.current == sys::NVML_DEVICE_MIG_ENABLE, pending: m.pending == sys::NVML_DEVICE_MIG_ENABLE },
                Err(NvmlError::NotSupported) => MigMode::default(),
                Err(e) => return Err(anyhow!(e).context(format!("reading MIG mode of GPU {i}"))),
            };
            let model = self.model(&dev, &name);
            out.push(GpuInfo {
                index: i,
                minor: dev.minor_number().context("nvmlDeviceGetMinorNumber")?,
                uuid: dev.uuid().context("nvmlDeviceGetUUID")?,
                bus_id: dev.pci_info().context("nvmlDeviceGetPciInfo")?.bus_id,
                name: name.clone(),
                model,
                mig,
            });
        }
        Ok(out)
    }

    fn instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>> {
        let dev = self.device(gpu)?;
        match dev.mig_mode() {
            Ok(m) if m.current == sys::NVML_DEVICE_MIG_ENABLE => {}
            _ => return Ok(Vec::new()),
        }
        let name = dev.name()?;
        let model = self.model(&dev, &name);
        let uuids = self.mig_uuids(&dev);
        let mut out = Vec::new();
        for (gi, info) in self.gpu_instances(&dev)? {
            let profile = model
                .profile_by_id(info.profileId)
                .ok_or_else(|| anyhow!("GPU {gpu}: GPU instance {} has unknown profile id {}", info.id, info.profileId))?;
            let compute = self
                .compute_instances(gi)?
                .into_iter()
                .map(|(_, id, slices)| ComputeInstance {
                    id,
                    compute_slices: slices,
                    uuid: uuids.get(&(info.id, id)).cloned().unwrap_or_default(),
                })
                .collect();
            out.push(GpuInstance {
                id: info.id,
                profile: profile.name.clone(),
                start: info.placement.start,
                size: info.placement.size,
                compute_slices: profile.compute_slices,
                compute,
            });
        }
        Ok(out)
    }

    fn processes(&mut self, gpu: u32) -> Result<Vec<GpuProcess>> {
        let dev = self.device(gpu)?;
        let failed = |call: &str| format!("listing the processes of GPU {gpu}: {call}");
        // The parent's compute list is required: without it nothing says the GPU is idle. The
        // other lists add what some drivers report only there; NotSupported from them means the
        // device has no such processes (no graphics engine, no MIG).
        let mut procs = dev.running_compute_processes().with_context(|| failed("nvmlDeviceGetComputeRunningProcesses"))?;
        procs
            .extend(unless_unsupported(dev.running_graphics_processes()).with_context(|| failed("nvmlDeviceGetGraphicsRunningProcesses"))?);
        let migs = match dev.mig_device_count() {
            Ok(n) => n,
            Err(NvmlError::NotSupported) => 0,
            Err(e) => return Err(anyhow!(e).context(failed("nvmlDeviceGetMaxMigDeviceCount"))),
        };
        for j in 0..migs {
            let mig = match dev.mig_device_by_index(j) {
                Ok(m) => m,
                // An index with no MIG device behind it.
                Err(NvmlError::NotFound | NvmlError::InvalidArg) => continue,
                Err(e) => return Err(anyhow!(e).context(failed(&format!("nvmlDeviceGetMigDeviceHandleByIndex({j})")))),
            };
            procs.extend(
                unless_unsupported(mig.running_compute_processes())
                    .with_context(|| failed(&format!("MIG device {j} compute processes")))?,
            );
            procs.extend(
                unless_unsupported(mig.running_graphics_processes())
                    .with_context(|| failed(&format!("MIG device {j} graphics processes")))?,
            );
        }
        let mut out: Vec<GpuProcess> = procs
            .into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                name: std::fs::read_to_string(format!("/proc/{}/comm", p.pid)).map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into()),
            })
            .collect();
        out.sort_by_key(|p| p.pid);
        out.dedup_by_key(|p| p.pid);
        Ok(out)
    }

    fn set_mig_mode(&mut self, gpu: u32, enabled: bool) -> Result<MigModeChange> {
        let dev = self.device(gpu)?;
        dev.set_mig_mode(enabled).with_context(|| format!("nvmlDeviceSetMigMode on GPU {gpu}"))?;
        let m = dev.mig_mode()?;
        let want = if enabled { sys::NVML_DEVICE_MIG_ENABLE } else { sys::NVML_DEVICE_MIG_DISABLE };
        Ok(if m.current == want { MigModeChange::Done } else { MigModeChange::NeedsReset })
    }

    fn destroy_instance(&mut self, gpu: u32, gi_id: u32) -> Result<()> {
        let dev = self.device(gpu)?;
        let gi = self.gi_by_id(&dev, gi_id)?;
        for (ci, id, _) in self.compute_instances(gi)? {
            // SAFETY: `ci` is a live compute-instance handle of `gi`.
            let rc = unsafe { self.lib().nvmlComputeInstanceDestroy(ci) };
            nvml_try(rc).with_context(|| format!("destroying compute instance {id} of GPU instance {gi_id}"))?;
        }
        // SAFETY: `gi` is a live GPU-instance handle with no compute instances left.
        let rc = unsafe { self.lib().nvmlGpuInstanceDestroy(gi) };
        nvml_try(rc).with_context(|| format!("destroying GPU instance {gi_id}"))?;
        Ok(())
    }

    fn create_leaf(&mut self, gpu: u32, profile: &GiProfile, start: u32) -> Result<GpuInstance> {
        let dev = self.device(gpu)?;
        let placement = sys::nvmlGpuInstancePlacement_t { start, size: profile.memory_slices };
        let mut gi: GiHandle = std::ptr::null_mut();
        // SAFETY: valid device handle, placement pointer to a live local, valid out-pointer.
        let rc = unsafe { self.lib().nvmlDeviceCreateGpuInstanceWithPlacement(dev.handle(), profile.id, &placement, &mut gi) };
        nvml_try(rc).with_context(|| format!("nvmlDeviceCreateGpuInstanceWithPlacement({}, start {start})", profile.name))?;
        // SAFETY: zeroed info is valid; `gi` was just created.
        let mut gi_info: sys::nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        nvml_try(unsafe { self.lib().nvmlGpuInstanceGetInfo(gi, &mut gi_info) }).context("nvmlGpuInstanceGetInfo")?;
        let mut created = false;
        let mut last_err = None;
        for cp in 0..sys::NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
            // SAFETY: zeroed profile info is valid.
            let mut info: sys::nvmlComputeInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: live `gi`, valid out-pointer.
            let rc = unsafe {
                self.lib().nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, cp, sys::NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, &mut info)
            };
            if nvml_try(rc).is_err() || info.sliceCount != profile.compute_slices {
                continue;
            }
            let mut ci: sys::nvmlComputeInstance_t = std::ptr::null_mut();
            // SAFETY: live `gi`, a profile id NVML just reported for it, valid out-pointer.
            let rc = unsafe { self.lib().nvmlGpuInstanceCreateComputeInstance(gi, info.id, &mut ci) };
            match nvml_try(rc) {
                Ok(()) => {
                    created = true;
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        if !created {
            // Do not leave a GPU instance without its compute instance behind.
            // SAFETY: `gi` is live and has no compute instances.
            let _ = nvml_try(unsafe { self.lib().nvmlGpuInstanceDestroy(gi) });
            bail!(
                "creating the compute instance of {} at {start} on GPU {gpu} failed ({}); the GPU instance was removed again",
                profile.name,
                last_err.map_or("no compute profile spans the GPU instance".to_string(), |e| e.to_string())
            );
        }
        self.instances(gpu)?
            .into_iter()
            .find(|i| i.id == gi_info.id)
            .ok_or_else(|| anyhow!("GPU {gpu}: the new GPU instance {} is not listed", gi_info.id))
    }

    fn commit(&mut self) -> Result<()> {
        Ok(())
    }
}
