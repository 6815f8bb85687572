//! `nccl status`: is a libnccl usable for flexmig ranks that share a GPU?

use std::fmt;
use std::path::Path;

use anyhow::Context;

use super::install::RING_SLICE_MARKER;
use super::patch::{PATCH_MARKER, SHM_CE_MARKER};
use super::version::{find, library_version, NcclVersion};

/// What a libnccl is, for flexmig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibraryKind {
    /// Carries the flexmig MIG patch (NCCL_MIG_ID); `shm_ce_direct`: also the copy-engine SHM change
    /// (NCCL_SHM_USE_CUDA_MEMCPY=1 driven from the rank's thread, without the proxy-thread deadlock).
    /// `ring_slice_steps`: built with `nccl install --ring-slice-steps N` (None: NCCL's own slicing).
    Patched { version: Option<NcclVersion>, shm_ce_direct: bool, ring_slice_steps: Option<u8> },
    /// Stock, but new enough to run several ranks per GPU with NCCL_MULTI_RANK_GPU_ENABLE=1.
    StockMultiRank { version: NcclVersion },
    /// Stock and too old: ranks on MIG leaves of one GPU fail with "Duplicate GPU detected".
    Unusable { version: Option<NcclVersion> },
}

impl LibraryKind {
    pub fn usable(&self) -> bool {
        !matches!(self, LibraryKind::Unusable { .. })
    }
}

impl fmt::Display for LibraryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = |v: &Option<NcclVersion>| v.map(|v| v.to_string()).unwrap_or_else(|| "of unknown version".into());
        match self {
            LibraryKind::Patched { version, shm_ce_direct, ring_slice_steps } => {
                write!(f, "patched: NCCL {} with the flexmig MIG patch (reads NCCL_MIG_ID)", v(version))?;
                if *shm_ce_direct {
                    write!(f, "; its copy-engine SHM mode (NCCL_SHM_USE_CUDA_MEMCPY=1) runs without the proxy thread")?;
                } else {
                    write!(f, "; its copy-engine SHM mode (NCCL_SHM_USE_CUDA_MEMCPY=1) uses NCCL's proxy thread, which can hang: leave it off")?;
                }
                match ring_slice_steps {
                    Some(n) => write!(f, "; ring all-reduce/all-gather slices of {n} step(s) (built with --ring-slice-steps {n})"),
                    None => Ok(()),
                }
            }
            LibraryKind::StockMultiRank { version } => write!(
                f,
                "stock-new-enough: NCCL {version} (>= {}) runs several ranks per GPU with NCCL_MULTI_RANK_GPU_ENABLE=1, which the flexmig plugin exports",
                NcclVersion::MULTI_RANK_GPU
            ),
            LibraryKind::Unusable { version } => write!(
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
    let version = library_version(bytes);
    if find(bytes, PATCH_MARKER.as_bytes()).is_some() {
        return LibraryKind::Patched {
            version,
            shm_ce_direct: find(bytes, SHM_CE_MARKER.as_bytes()).is_some(),
            ring_slice_steps: ring_slice_steps(bytes),
        };
    }
    match version {
        Some(v) if v >= NcclVersion::MULTI_RANK_GPU => LibraryKind::StockMultiRank { version: v },
        _ => LibraryKind::Unusable { version },
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
        assert_eq!(k, LibraryKind::Unusable { version: Some(NcclVersion::new(2, 28, 9)) });
        assert!(!k.usable());
        assert!(k.to_string().contains("Duplicate GPU detected"));
    }

    #[test]
    fn stock_2_30_is_new_enough() {
        let k = classify(&lib(&["NCCL version 2.30.7+cuda13.0"]));
        assert_eq!(k, LibraryKind::StockMultiRank { version: NcclVersion::new(2, 30, 7) });
        assert!(k.usable());
        assert!(k.to_string().contains("NCCL_MULTI_RANK_GPU_ENABLE=1"));
    }

    #[test]
    fn stock_2_30_0_is_too_old() {
        assert!(!classify(&lib(&["NCCL version 2.30.0+cuda13.0"])).usable());
    }

    #[test]
    fn unknown_version_is_unusable() {
        assert_eq!(classify(&lib(&["ncclCommInitRank"])), LibraryKind::Unusable { version: None });
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
