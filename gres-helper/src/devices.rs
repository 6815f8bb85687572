//! Where a MIG leaf's device files are: `/dev/nvidia<minor>` of its GPU and the capability
//! files of its GPU instance and compute instance, numbered by the minors the driver publishes
//! in /proc/driver/nvidia-caps/mig-minors. gres.conf names them, and Slurm confines a task to them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

/// Where device files live (`/dev` unless a test points elsewhere) and where the driver
/// publishes the MIG capability minors.
#[derive(Debug, Clone)]
pub struct DevicePaths {
    pub dev_root: PathBuf,
    pub mig_minors: PathBuf,
}

impl Default for DevicePaths {
    fn default() -> Self {
        DevicePaths { dev_root: PathBuf::from("/dev"), mig_minors: PathBuf::from("/proc/driver/nvidia-caps/mig-minors") }
    }
}

impl DevicePaths {
    /// `/dev/nvidia<minor>` under the device root.
    pub fn gpu_device(&self, minor: u32) -> PathBuf {
        self.dev_root.join(format!("nvidia{minor}"))
    }
    /// `/dev/nvidia-caps/nvidia-cap<minor>` under the device root.
    pub fn cap_device(&self, minor: u32) -> PathBuf {
        self.dev_root.join("nvidia-caps").join(format!("nvidia-cap{minor}"))
    }
}

/// The capability minors of every GPU instance and compute instance, keyed by
/// (GPU device minor, GPU instance id, compute instance id or None for the GI itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigMinors(pub BTreeMap<(u32, u32, Option<u32>), u32>);

impl MigMinors {
    /// Parses /proc/driver/nvidia-caps/mig-minors (`gpu0/gi1/access 12`, `gpu0/gi1/ci0/access 13`).
    ///
    /// # Errors
    /// A line that is none of `config N`, `monitor N`, `gpuG/giI/access N`, `gpuG/giI/ciC/access N`.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let bad = || anyhow!("{origin} line {}: cannot parse {line:?} (expected e.g. `gpu0/gi1/ci0/access 13`)", n + 1);
            let (key, minor) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
            let minor: u32 = minor.trim().parse().map_err(|_| bad())?;
            if key == "config" || key == "monitor" {
                continue;
            }
            let parts: Vec<&str> = key.split('/').collect();
            let num = |s: &str, prefix: &str| s.strip_prefix(prefix).and_then(|v| v.parse::<u32>().ok());
            let entry = match parts.as_slice() {
                [g, gi, "access"] => (num(g, "gpu"), num(gi, "gi"), None, true),
                [g, gi, ci, "access"] => (num(g, "gpu"), num(gi, "gi"), num(ci, "ci"), false),
                _ => return Err(bad()),
            };
            match entry {
                (Some(g), Some(gi), None, true) => map.insert((g, gi, None), minor),
                (Some(g), Some(gi), Some(ci), false) => map.insert((g, gi, Some(ci)), minor),
                _ => return Err(bad()),
            };
        }
        Ok(MigMinors(map))
    }

    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    /// Unreadable or malformed file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the MIG capability minors {}: is the NVIDIA driver loaded with MIG support? (tests and the demo: point --mig-minors at a fake one)",
                path.display()
            )
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn get(&self, gpu_minor: u32, gi: u32, ci: Option<u32>) -> Result<u32> {
        self.0.get(&(gpu_minor, gi, ci)).copied().ok_or_else(|| {
            anyhow!("the MIG minors file has no entry gpu{gpu_minor}/gi{gi}{}/access", ci.map(|c| format!("/ci{c}")).unwrap_or_default())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_driver_minors_file() {
        let m = MigMinors::parse("config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n", "t").unwrap();
        assert_eq!(m.get(0, 1, None).unwrap(), 12);
        assert_eq!(m.get(0, 1, Some(0)).unwrap(), 13);
        assert!(m.get(1, 1, None).is_err());
        assert!(MigMinors::parse("gpu0/gi1 12\n", "t").unwrap_err().to_string().contains("line 1"));
        assert!(MigMinors::parse("gpu0/gi1/access x\n", "t").is_err());
    }

    #[test]
    fn device_files_sit_under_the_device_root() {
        let p = DevicePaths { dev_root: "/tmp/d".into(), mig_minors: "/x".into() };
        assert_eq!(p.gpu_device(3), PathBuf::from("/tmp/d/nvidia3"));
        assert_eq!(p.cap_device(12), PathBuf::from("/tmp/d/nvidia-caps/nvidia-cap12"));
    }
}
