//! NCCL versions: read from a source tree's `makefiles/version.mk` or a library's banner string.

use std::fmt;
use std::path::Path;

use anyhow::Context;

/// An NCCL release number, e.g. 2.28.9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NcclVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl NcclVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self { major, minor, patch }
    }

    /// The first release whose stock library accepts several ranks on one GPU
    /// (`NCCL_MULTI_RANK_GPU_ENABLE=1`, which the flexmig plugin exports).
    pub const MULTI_RANK_GPU: NcclVersion = NcclVersion::new(2, 30, 3);

    /// The first release NVIDIA documents with (experimental) MIG support: one communicator over
    /// MIG instances, one instance per rank, SHM between the instances of one GPU and the network
    /// (NET) between GPUs.
    pub const MIG_SUPPORT: NcclVersion = NcclVersion::new(2, 31, 0);

    /// A 2.30 release: several ranks per GPU, but no MIG support (the guard patch's releases).
    pub fn is_2_30(&self) -> bool {
        self.major == 2 && self.minor == 30
    }

    /// Parses "2.28.9" (anything after the third number, like "+cuda13.0", is ignored by the caller).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch_part = parts.next()?;
        let digits: String = patch_part.chars().take_while(|c| c.is_ascii_digit()).collect();
        let patch = digits.parse().ok()?;
        Some(Self { major, minor, patch })
    }
}

impl fmt::Display for NcclVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Reads the version from the text of NCCL's `makefiles/version.mk`:
/// `NCCL_MAJOR   := 2`, `NCCL_MINOR   := 28`, `NCCL_PATCH   := 9`.
pub fn parse_version_mk(text: &str) -> anyhow::Result<NcclVersion> {
    let field = |name: &str| -> anyhow::Result<u32> {
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix(name) else { continue };
            let rest = rest.trim_start();
            let Some(value) = rest.strip_prefix(":=").or_else(|| rest.strip_prefix('=')) else { continue };
            return value.trim().parse().with_context(|| format!("{name} is not a number: {:?}", value.trim()));
        }
        anyhow::bail!("no {name} line")
    };
    Ok(NcclVersion::new(field("NCCL_MAJOR")?, field("NCCL_MINOR")?, field("NCCL_PATCH")?))
}

/// The `NCCL_SUFFIX` of a version.mk text ("a7" on a pre-release), empty when unset.
pub fn parse_version_mk_suffix(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("NCCL_SUFFIX"))
        .filter_map(|rest| {
            let rest = rest.trim_start();
            rest.strip_prefix(":=").or_else(|| rest.strip_prefix('='))
        })
        .map(|v| v.trim().to_string())
        .next()
        .unwrap_or_default()
}

/// The `NCCL_SUFFIX` of the source tree at `dir` (empty for a release, or when unreadable:
/// [`source_version`] reports that).
pub fn source_suffix(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("makefiles/version.mk")).map(|t| parse_version_mk_suffix(&t)).unwrap_or_default()
}

/// Reads the version of the NCCL source tree at `dir`.
pub fn source_version(dir: &Path) -> anyhow::Result<NcclVersion> {
    let path = dir.join("makefiles/version.mk");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (is {} an NCCL source tree?)", path.display(), dir.display()))?;
    parse_version_mk(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The banner NCCL compiles into its library: "NCCL version 2.28.9+cuda13.0", or with a
/// pre-release suffix (`NCCL_SUFFIX` of version.mk) "NCCL version 2.31.0a7+cuda13.0".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banner {
    pub version: NcclVersion,
    /// The suffix right after the release number ("a7"), empty for a release.
    pub suffix: String,
}

/// Finds the first "NCCL version X.Y.Z" banner in a library's bytes.
pub fn library_banner(bytes: &[u8]) -> Option<Banner> {
    const NEEDLE: &[u8] = b"NCCL version ";
    let mut start = 0;
    while let Some(pos) = find(&bytes[start..], NEEDLE) {
        let at = start + pos + NEEDLE.len();
        let tail: Vec<u8> = bytes[at..].iter().take(16).take_while(|b| b.is_ascii_digit() || **b == b'.').copied().collect();
        if let Some(version) = std::str::from_utf8(&tail).ok().and_then(NcclVersion::parse) {
            let suffix = bytes[at + tail.len()..].iter().take(16).take_while(|b| b.is_ascii_alphanumeric()).map(|b| *b as char).collect();
            return Some(Banner { version, suffix });
        }
        start = at;
    }
    None
}

/// The release number of a library's banner.
pub fn library_version(bytes: &[u8]) -> Option<NcclVersion> {
    library_banner(bytes).map(|b| b.version)
}

/// Byte-string search (the first position of `needle` in `haystack`).
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= haystack.len() {
        match haystack[i..haystack.len() - needle.len() + 1].iter().position(|b| *b == first) {
            None => return None,
            Some(p) => {
                i += p;
                if &haystack[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION_MK_2_28_9: &str =
        "##### version\nNCCL_MAJOR   := 2\nNCCL_MINOR   := 28\nNCCL_PATCH   := 9\nNCCL_SUFFIX  :=\nPKG_REVISION := 1\n";

    #[test]
    fn version_mk_of_2_28_9() {
        assert_eq!(parse_version_mk(VERSION_MK_2_28_9).unwrap(), NcclVersion::new(2, 28, 9));
    }

    #[test]
    fn version_mk_suffix() {
        assert_eq!(parse_version_mk_suffix(VERSION_MK_2_28_9), "");
        assert_eq!(parse_version_mk_suffix("NCCL_MAJOR   := 2\nNCCL_MINOR   := 31\nNCCL_PATCH   := 0\nNCCL_SUFFIX  := a7\n"), "a7");
        assert_eq!(parse_version_mk_suffix("NCCL_MAJOR := 2\n"), "");
    }

    #[test]
    fn version_mk_missing_patch_is_an_error() {
        let err = parse_version_mk("NCCL_MAJOR := 2\nNCCL_MINOR := 28\n").unwrap_err();
        assert!(format!("{err:#}").contains("NCCL_PATCH"));
    }

    #[test]
    fn version_mk_garbage_value_is_an_error() {
        assert!(parse_version_mk("NCCL_MAJOR := two\nNCCL_MINOR := 28\nNCCL_PATCH := 9\n").is_err());
    }

    #[test]
    fn parse_and_order() {
        assert_eq!(NcclVersion::parse("2.30.7").unwrap(), NcclVersion::new(2, 30, 7));
        assert_eq!(NcclVersion::parse("2.28.9+cuda13.0").unwrap(), NcclVersion::new(2, 28, 9));
        assert!(NcclVersion::parse("2.28").is_none());
        assert!(NcclVersion::new(2, 29, 7) < NcclVersion::MULTI_RANK_GPU);
        assert!(NcclVersion::new(2, 30, 7) >= NcclVersion::MULTI_RANK_GPU);
        assert!(NcclVersion::new(2, 9, 9) < NcclVersion::new(2, 21, 5));
    }

    #[test]
    fn library_banners() {
        let mut lib = vec![0u8; 100];
        lib.extend_from_slice(b"NCCL version %s\0junk NCCL version 2.28.9+cuda13.0\0tail");
        assert_eq!(library_version(&lib), Some(NcclVersion::new(2, 28, 9)));
        assert_eq!(library_version(b"no banner here"), None);
        let b = library_banner(b"x\0NCCL version 2.31.0a7+cuda13.0\0").unwrap();
        assert_eq!((b.version, b.suffix.as_str()), (NcclVersion::new(2, 31, 0), "a7"));
        let b = library_banner(b"NCCL version 2.32.3+cuda13.0").unwrap();
        assert_eq!((b.version, b.suffix.as_str()), (NcclVersion::new(2, 32, 3), ""));
        assert!(NcclVersion::new(2, 30, 7).is_2_30() && !NcclVersion::new(2, 31, 2).is_2_30());
        assert!(NcclVersion::new(2, 31, 2) >= NcclVersion::MIG_SUPPORT && NcclVersion::new(2, 30, 7) < NcclVersion::MIG_SUPPORT);
    }

    #[test]
    fn find_bytes() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"abc", b"abcd"), None);
        assert_eq!(find(b"aaa", b"a"), Some(0));
    }
}
