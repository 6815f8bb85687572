//! `nccl status`: is a libnccl usable for flexmig ranks that share a GPU?

use std::fmt;
use std::path::Path;

use anyhow::Context;

use super::install::RING_SLICE_MARKER;
use super::patch::{PATCH_MARKER, SHM_CE_MARKER};
use super::version::{find, library_banner, library_version, Banner, NcclVersion};

/// What a libnccl is, for flexmig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibraryKind {
    /// Carries the flexmig MIG patch (NCCL_MIG_ID); `shm_ce_direct`: also the copy-engine SHM change
    /// (NCCL_SHM_USE_CUDA_MEMCPY=1 driven from the rank's thread, without the proxy-thread deadlock).
    /// `ring_slice_steps`: built with `nccl install --ring-slice-steps N` (None: NCCL's own slicing).
    Patched { version: Option<NcclVersion>, shm_ce_direct: bool, ring_slice_steps: Option<u8> },
    /// Stock >= 2.31: NVIDIA's experimental MIG support (SHM between the leaves of one GPU, NET
    /// between GPUs), with the variables the flexmig plugin exports.
    StockMigSupport { version: NcclVersion },
    /// Stock 2.30.x: several ranks per GPU with NCCL_MULTI_RANK_GPU_ENABLE=1, but it connects the
    /// leaves of one GPU with P2P (CUDA IPC), which MIG instances do not have: the guard patch is needed.
    StockNeedsGuard { version: NcclVersion },
    /// Stock and too old (ranks on MIG leaves of one GPU fail with "Duplicate GPU detected"), of
    /// unknown version, or a pre-release of a release with MIG support (`suffix`, e.g. "a7").
    Unusable { version: Option<NcclVersion>, suffix: String },
}

impl LibraryKind {
    pub fn usable(&self) -> bool {
        matches!(self, LibraryKind::Patched { .. } | LibraryKind::StockMigSupport { .. })
    }
}

/// The variables stock NCCL's MIG support needs, as the flexmig plugin exports them.
pub const STOCK_MIG_ENV: &str = "NCCL_MULTI_RANK_GPU_ENABLE=1 NCCL_MNNVL_ENABLE=0 NCCL_NVLS_ENABLE=0";

impl fmt::Display for LibraryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = |v: &Option<NcclVersion>| v.map(|v| v.to_string()).unwrap_or_else(|| "of unknown version".into());
        match self {
            LibraryKind::Patched { version, shm_ce_direct, ring_slice_steps } => {
                write!(f, "patched: NCCL {} with the flexmig MIG patch (reads NCCL_MIG_ID)", v(version))?;
                if *shm_ce_direct {
                    write!(f, "; its copy-engine SHM mode (NCCL_SHM_USE_CUDA_MEMCPY=1) runs without the proxy thread")?;
                } else {
                    write!(
                        f,
                        "; its copy-engine SHM mode (NCCL_SHM_USE_CUDA_MEMCPY=1) uses NCCL's proxy thread, which can hang: leave it off"
                    )?;
                }
                match ring_slice_steps {
                    Some(n) => write!(f, "; ring all-reduce/all-gather slices of {n} step(s) (built with --ring-slice-steps {n})"),
                    None => Ok(()),
                }
            }
            LibraryKind::StockMigSupport { version } => write!(
                f,
                "stock with MIG support: NCCL {version} (>= {}) has NVIDIA's experimental MIG support, one MIG instance \
                 per rank, leaves of one GPU over SHM; it needs {STOCK_MIG_ENV} (never NCCL_NVLS_ENABLE=1, which aborts \
                 its init) and a CUDA 13.0+ driver, and the flexmig plugin exports these variables; leaves on different \
                 GPUs go over NET (the network transport), not SHM, in stock NCCL",
                NcclVersion::MIG_SUPPORT
            ),
            LibraryKind::StockNeedsGuard { version } => write!(
                f,
                "unusable on MIG: stock NCCL {version} runs several ranks per GPU (NCCL_MULTI_RANK_GPU_ENABLE=1) but knows \
                 nothing of MIG: it connects the leaves of one GPU with P2P (CUDA IPC), which MIG instances do not have; \
                 build the guard patch: `flexmig-gres-helper nccl install --source nccl-{version} --prefix <dir>` \
                 (or use stock NCCL >= {})",
                NcclVersion::MIG_SUPPORT
            ),
            LibraryKind::Unusable { version: Some(version), suffix } if !suffix.is_empty() => write!(
                f,
                "unusable: NCCL {version}{suffix} is a pre-release; NVIDIA documents MIG support for the releases from {}.{} on, \
                 and a pre-release may predate it: use a release (e.g. the nvidia-nccl-cu13 wheel's)",
                NcclVersion::MIG_SUPPORT.major,
                NcclVersion::MIG_SUPPORT.minor
            ),
            LibraryKind::Unusable { version, .. } => write!(
                f,
                "unusable: stock NCCL {} refuses ranks on MIG leaves of one GPU (\"Duplicate GPU detected\"); \
                 build a patched one with `flexmig-gres-helper nccl install --source <nccl source> --prefix <dir>`",
                v(version)
            ),
        }
    }
}

/// Classifies a library from its bytes: the patch marker string, else the "NCCL version" banner.
pub fn classify(bytes: &[u8]) -> LibraryKind {
    let banner = library_banner(bytes);
    let version = banner.as_ref().map(|b| b.version);
    if find(bytes, PATCH_MARKER.as_bytes()).is_some() {
        return LibraryKind::Patched {
            version,
            shm_ce_direct: find(bytes, SHM_CE_MARKER.as_bytes()).is_some(),
            ring_slice_steps: ring_slice_steps(bytes),
        };
    }
    match banner {
        Some(Banner { version, suffix }) if version >= NcclVersion::MIG_SUPPORT => {
            if suffix.is_empty() {
                LibraryKind::StockMigSupport { version }
            } else {
                LibraryKind::Unusable { version: Some(version), suffix }
            }
        }
        Some(Banner { version, .. }) if version.is_2_30() && version >= NcclVersion::MULTI_RANK_GPU => {
            LibraryKind::StockNeedsGuard { version }
        }
        _ => LibraryKind::Unusable { version, suffix: String::new() },
    }
}

/// The digit after the `--ring-slice-steps` marker, if the library carries one.
fn ring_slice_steps(bytes: &[u8]) -> Option<u8> {
    let at = find(bytes, RING_SLICE_MARKER.as_bytes())? + RING_SLICE_MARKER.len();
    bytes.get(at).filter(|b| b.is_ascii_digit()).map(|b| b - b'0')
}

/// Reads and classifies the library at `path` (symbolic links followed).
pub fn classify_file(path: &Path) -> anyhow::Result<LibraryKind> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if !bytes.starts_with(b"\x7fELF") {
        anyhow::bail!("{} is not an ELF shared library", path.display());
    }
    if library_version(&bytes).is_none() && find(&bytes, b"ncclCommInitRank").is_none() {
        anyhow::bail!("{} does not look like libnccl (no \"NCCL version\" string, no ncclCommInitRank)", path.display());
    }
    Ok(classify(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lib(strings: &[&str]) -> Vec<u8> {
        let mut b = b"\x7fELF\x02\x01\x01".to_vec();
        for s in strings {
            b.extend_from_slice(s.as_bytes());
            b.push(0);
        }
        b
    }

    #[test]
    fn patched_library() {
        let b = lib(&["NCCL version 2.28.9+cuda13.0", "flexmig-mig-patch/1: rank %d busId %lx NCCL_MIG_ID %s"]);
        let k = classify(&b);
        assert_eq!(k, LibraryKind::Patched { version: Some(NcclVersion::new(2, 28, 9)), shm_ce_direct: false, ring_slice_steps: None });
        assert!(k.to_string().contains("can hang: leave it off"), "{k}");
        let b = lib(&[
            "NCCL version 2.28.9+cuda13.0",
            "flexmig-mig-patch/1: rank %d busId %lx NCCL_MIG_ID %s",
            "flexmig-shm-ce/1: copy engines driven from the rank's streams",
        ]);
        let k = classify(&b);
        assert_eq!(k, LibraryKind::Patched { version: Some(NcclVersion::new(2, 28, 9)), shm_ce_direct: true, ring_slice_steps: None });
        assert!(k.to_string().contains("runs without the proxy thread"), "{k}");
        assert!(!k.to_string().contains("slices"), "{k}");
        let b = lib(&[
            "NCCL version 2.28.9+cuda13.0",
            "flexmig-mig-patch/1: rank %d busId %lx NCCL_MIG_ID %s",
            "flexmig-shm-ce/1: copy engines driven from the rank's streams",
            "flexmig-ring-slice-steps=1",
        ]);
        let k = classify(&b);
        assert_eq!(k, LibraryKind::Patched { version: Some(NcclVersion::new(2, 28, 9)), shm_ce_direct: true, ring_slice_steps: Some(1) });
        assert!(k.to_string().contains("slices of 1 step(s) (built with --ring-slice-steps 1)"), "{k}");
    }

    #[test]
    fn stock_2_28_9_is_unusable() {
        let k = classify(&lib(&["NCCL version 2.28.9+cuda13.0"]));
        assert_eq!(k, LibraryKind::Unusable { version: Some(NcclVersion::new(2, 28, 9)), suffix: String::new() });
        assert!(!k.usable());
        assert!(k.to_string().contains("Duplicate GPU detected"));
    }

    #[test]
    fn stock_2_30_needs_the_guard_patch() {
        for (minor_patch, text) in
            [(3, "NCCL version 2.30.3+cuda12.9"), (7, "NCCL version 2.30.7+cuda13.0"), (9, "NCCL version 2.30.9+cuda13.0")]
        {
            let k = classify(&lib(&[text]));
            assert_eq!(k, LibraryKind::StockNeedsGuard { version: NcclVersion::new(2, 30, minor_patch) });
            assert!(!k.usable(), "{k}");
            let s = k.to_string();
            assert!(s.starts_with("unusable on MIG: stock NCCL 2.30."), "{s}");
            assert!(s.contains("P2P (CUDA IPC)") && s.contains(&format!("nccl install --source nccl-2.30.{minor_patch} ")), "{s}");
        }
    }

    #[test]
    fn stock_2_30_0_is_too_old() {
        let k = classify(&lib(&["NCCL version 2.30.0+cuda13.0"]));
        assert_eq!(k, LibraryKind::Unusable { version: Some(NcclVersion::new(2, 30, 0)), suffix: String::new() });
    }

    #[test]
    fn stock_2_31_and_later_use_nvidias_mig_support() {
        for (v, text) in
            [(NcclVersion::new(2, 31, 2), "NCCL version 2.31.2+cuda13.0"), (NcclVersion::new(2, 32, 3), "NCCL version 2.32.3+cuda13.2")]
        {
            let k = classify(&lib(&[text, "ncclCommInitRank"]));
            assert_eq!(k, LibraryKind::StockMigSupport { version: v });
            assert!(k.usable());
            let s = k.to_string();
            for needed in ["NCCL_MULTI_RANK_GPU_ENABLE=1", "NCCL_MNNVL_ENABLE=0", "never NCCL_NVLS_ENABLE=1", "over NET", "not SHM"] {
                assert!(s.contains(needed), "{needed}: {s}");
            }
        }
    }

    #[test]
    fn a_pre_release_of_2_31_is_not_taken_for_mig_support() {
        let k = classify(&lib(&["NCCL version 2.31.0a7+cuda13.0"]));
        assert_eq!(k, LibraryKind::Unusable { version: Some(NcclVersion::new(2, 31, 0)), suffix: "a7".into() });
        assert!(!k.usable());
        assert!(k.to_string().contains("2.31.0a7 is a pre-release"), "{k}");
    }

    #[test]
    fn patched_2_30_is_usable_whatever_the_stock_release_would_be() {
        let k = classify(&lib(&["NCCL version 2.30.7+cuda13.0", "flexmig-mig-patch/1: rank %d busId %lx NCCL_MIG_ID %s"]));
        assert!(matches!(k, LibraryKind::Patched { version: Some(v), shm_ce_direct: false, .. } if v == NcclVersion::new(2, 30, 7)));
        assert!(k.usable());
    }

    #[test]
    fn unknown_version_is_unusable() {
        assert_eq!(classify(&lib(&["ncclCommInitRank"])), LibraryKind::Unusable { version: None, suffix: String::new() });
        assert!(classify(&lib(&["NCCL version 2.29.7+cuda13.0"])).to_string().contains("Duplicate GPU detected"));
    }

    #[test]
    fn file_that_is_not_nccl_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libfoo.so");
        std::fs::write(&p, lib(&["hello"])).unwrap();
        assert!(classify_file(&p).is_err());
        std::fs::write(&p, b"not elf").unwrap();
        assert!(classify_file(&p).is_err());
        std::fs::write(&p, lib(&["NCCL version 2.29.7+cuda13.0"])).unwrap();
        assert!(!classify_file(&p).unwrap().usable());
    }
}
