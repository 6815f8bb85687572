//! The Slurm release a SPANK plugin was built for, against the Slurm that runs here.
//!
//! A plugin carries its build's `SLURM_VERSION_NUMBER` as the exported `u32` symbol
//! `plugin_version`, `(major << 16) | (minor << 8) | micro`. Slurm's loader compares major and
//! minor only and refuses any other release, which on a `required` plugstack line stops every
//! srun and job step; the micro release does not matter.

use std::fmt;
use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use object::{Object, ObjectSection, ObjectSymbol};

/// Where a Debian Slurm loads plugins from, and so where flexmig's is installed.
pub const DEFAULT_PLUGIN: &str = "/usr/lib/x86_64-linux-gnu/slurm-wlm/flexmig.so";

/// A Slurm release: `22.05.8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlurmVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl SlurmVersion {
    /// The release a `SLURM_VERSION_NUMBER` stands for.
    pub fn from_number(n: u32) -> Self {
        SlurmVersion { major: n >> 16, minor: (n >> 8) & 0xff, micro: n & 0xff }
    }

    /// The release `slurmd -V` or `srun --version` names: `slurm 22.05.8`, `slurm-wlm 22.05.8`,
    /// `slurm 24.11.0-0rc1` (the first word that starts with a digit; a suffix after the micro
    /// number is ignored).
    pub fn parse(text: &str) -> Option<Self> {
        let word = text.split_whitespace().find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
        let mut parts = word.split('.');
        let number = |p: Option<&str>| -> Option<u32> {
            let digits: String = p?.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        let (major, minor) = (number(parts.next())?, number(parts.next())?);
        let micro = number(parts.next()).unwrap_or(0);
        Some(SlurmVersion { major, minor, micro })
    }

    /// Whether Slurm of release `self` loads a plugin built for `plugin`: the same major.minor.
    pub fn loads(&self, plugin: SlurmVersion) -> bool {
        (self.major, self.minor) == (plugin.major, plugin.minor)
    }
}

impl fmt::Display for SlurmVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}.{}", self.major, self.minor, self.micro)
    }
}

/// Why a file's stamp cannot be read; Slurm could not load such a file either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoStamp {
    /// Not an ELF object (the parser's message).
    NotElf(String),
    /// An ELF object that defines no `plugin_version`.
    NoSymbol,
    /// `plugin_version` is not 4 bytes of file data (the reason).
    Unreadable(String),
}

impl fmt::Display for NoStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoStamp::NotElf(e) => write!(f, "is not an ELF shared object ({e})"),
            NoStamp::NoSymbol => write!(f, "exports no `plugin_version` symbol, so it is no Slurm plugin"),
            NoStamp::Unreadable(e) => write!(f, "has a `plugin_version` symbol whose value cannot be read ({e})"),
        }
    }
}

/// The `plugin_version` an ELF shared object exports.
///
/// # Errors
/// Not an ELF file, no defined `plugin_version`, or one that is not 4 bytes of file data.
pub fn stamp_of(bytes: &[u8]) -> std::result::Result<u32, NoStamp> {
    let file = object::File::parse(bytes).map_err(|e| NoStamp::NotElf(e.to_string()))?;
    // The loader finds it through the dynamic symbol table; a stripped .so has no other.
    let symbol = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.is_definition() && s.name() == Ok("plugin_version"))
        .ok_or(NoStamp::NoSymbol)?;
    let index = symbol.section_index().ok_or_else(|| NoStamp::Unreadable("it is in no section".into()))?;
    let section = file.section_by_index(index).map_err(|e| NoStamp::Unreadable(e.to_string()))?;
    let data = section.data_range(symbol.address(), 4).map_err(|e| NoStamp::Unreadable(e.to_string()))?.ok_or_else(|| {
        NoStamp::Unreadable(format!("{} has no file data at {:#x}", section.name().unwrap_or("its section"), symbol.address()))
    })?;
    let word: [u8; 4] = data.try_into().map_err(|_| NoStamp::Unreadable("shorter than 4 bytes".into()))?;
    Ok(if file.is_little_endian() { u32::from_le_bytes(word) } else { u32::from_be_bytes(word) })
}

/// What the file at `path` is stamped with; None when there is no file.
///
/// # Errors
/// The file exists but cannot be read.
pub fn read_stamp(path: &Path) -> Result<Option<std::result::Result<u32, NoStamp>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(stamp_of(&bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!(e).context(format!("reading the plugin {}", path.display()))),
    }
}

/// The Slurm release `slurmd -V` reports.
///
/// # Errors
/// slurmd cannot be run, fails, or prints no release.
pub fn slurmd_version(slurmd: &Path) -> Result<SlurmVersion> {
    let out = Command::new(slurmd).arg("-V").output().with_context(|| {
        format!(
            "running `{} -V` to learn this node's Slurm release (pass --slurmd PATH, or --no-plugin to skip the plugin check)",
            slurmd.display()
        )
    })?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("`{} -V` failed ({}): {}", slurmd.display(), out.status, text.trim());
    }
    SlurmVersion::parse(&text).ok_or_else(|| anyhow!("`{} -V` printed no Slurm release: {:?}", slurmd.display(), text.trim()))
}

/// The difference, if any, between the plugin at `plugin` (its stamp as read) and the Slurm
/// release `slurm` that runs here (`source` says where that came from).
pub fn check(plugin: &Path, stamp: std::result::Result<u32, NoStamp>, slurm: SlurmVersion, source: &str) -> Option<String> {
    let stamp = match stamp {
        Ok(n) => n,
        Err(why) => {
            return Some(format!(
                "the plugin {} {why}: Slurm {slurm} cannot load it; install flexmig's plugin built for this release there \
                 (the package flexmig-slurm-plugin-{}.{:02})",
                plugin.display(),
                slurm.major,
                slurm.minor
            ))
        }
    };
    let built = SlurmVersion::from_number(stamp);
    (!slurm.loads(built)).then(|| {
        format!(
            "the plugin {} is built for Slurm {}.{:02} (plugin_version {stamp:#x}, {built}), but this node runs Slurm {slurm} ({source}): \
             Slurm refuses a plugin of another major.minor release (\"Incompatible Slurm plugin\"), and with a `required` plugstack line \
             every srun and job step fails; install the package flexmig-slurm-plugin-{}.{:02}, or rebuild it against this release's \
             headers (`cargo build --release -p flexmig-spank`, SLURM_INCLUDE_DIR for a Slurm elsewhere) and install it again",
            plugin.display(),
            built.major,
            built.minor,
            slurm.major,
            slurm.minor
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_releases_slurm_prints() {
        let v = |major, minor, micro| Some(SlurmVersion { major, minor, micro });
        assert_eq!(SlurmVersion::parse("slurm 22.05.8\n"), v(22, 5, 8));
        assert_eq!(SlurmVersion::parse("slurm-wlm 22.05.8"), v(22, 5, 8));
        assert_eq!(SlurmVersion::parse("slurm 24.11.0-0rc1"), v(24, 11, 0));
        assert_eq!(SlurmVersion::parse("slurm 25.05"), v(25, 5, 0));
        assert_eq!(SlurmVersion::parse("slurm unknown"), None);
        assert_eq!(SlurmVersion::parse("slurm 23"), None);
        assert_eq!(SlurmVersion::parse(""), None);
        assert_eq!(SlurmVersion::parse("slurm 22.05.8").unwrap().to_string(), "22.05.8");
    }

    #[test]
    fn reads_slurm_version_numbers() {
        // SLURM_VERSION_NUMBER of 22.05.8 and 23.11.10.
        assert_eq!(SlurmVersion::from_number(0x16_05_08), SlurmVersion { major: 22, minor: 5, micro: 8 });
        assert_eq!(SlurmVersion::from_number(0x17_0b_0a), SlurmVersion { major: 23, minor: 11, micro: 10 });
    }

    #[test]
    fn only_major_and_minor_must_match() {
        let running = SlurmVersion::parse("slurm 22.05.8").unwrap();
        let so = Path::new("/x/flexmig.so");
        assert_eq!(check(so, Ok(0x16_05_08), running, "slurmd -V"), None);
        assert_eq!(check(so, Ok(0x16_05_02), running, "slurmd -V"), None, "another micro release loads");
        let d = check(so, Ok(0x17_0b_0a), running, "slurmd -V").unwrap();
        assert!(d.starts_with("the plugin /x/flexmig.so is built for Slurm 23.11 (plugin_version 0x170b0a, 23.11.10)"), "{d}");
        assert!(d.contains("install the package flexmig-slurm-plugin-"), "names the package to install: {d}");
        assert!(d.contains("this node runs Slurm 22.05.8 (slurmd -V)") && d.contains("rebuild it"), "{d}");
        assert!(check(so, Ok(0x16_06_00), running, "slurmd -V").is_some(), "another minor release is refused");
        assert!(check(so, Ok(0x17_05_08), running, "slurmd -V").is_some(), "another major release is refused");
        let d = check(so, Err(NoStamp::NoSymbol), running, "slurmd -V").unwrap();
        assert!(d.contains("exports no `plugin_version` symbol") && d.contains("cannot load it"), "{d}");
    }

    /// A shared object built by the C compiler that exports `plugin_version = stamp`.
    fn stamped_so(dir: &Path, stamp: u32) -> std::path::PathBuf {
        let c = dir.join("stamp.c");
        let so = dir.join(format!("stamp-{stamp:x}.so"));
        std::fs::write(&c, format!("const unsigned int plugin_version = {stamp}u;\nconst unsigned int spank_plugin_version = 1;\n"))
            .unwrap();
        let st = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&c).status();
        assert!(st.is_ok_and(|s| s.success()), "building a stamped .so needs a C compiler (apt-get install gcc)");
        so
    }

    #[test]
    fn reads_the_stamp_of_a_shared_object() {
        let dir = tempfile::tempdir().unwrap();
        for stamp in [0x16_05_08, 0x17_0b_0a] {
            let so = stamped_so(dir.path(), stamp);
            assert_eq!(read_stamp(&so).unwrap(), Some(Ok(stamp)));
            // Stripped to its dynamic symbols, as packages ship it.
            assert!(Command::new("strip").arg(&so).status().unwrap().success());
            assert_eq!(read_stamp(&so).unwrap(), Some(Ok(stamp)));
        }
        assert_eq!(read_stamp(&dir.path().join("absent.so")).unwrap(), None);
        let text = dir.path().join("text.so");
        std::fs::write(&text, "not a plugin").unwrap();
        assert!(matches!(read_stamp(&text).unwrap(), Some(Err(NoStamp::NotElf(_)))));
        // An ELF without the symbol: the C compiler's output for an empty unit.
        std::fs::write(dir.path().join("empty.c"), "int flexmig_unrelated = 1;\n").unwrap();
        let empty = dir.path().join("empty.so");
        assert!(Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&empty)
            .arg(dir.path().join("empty.c"))
            .status()
            .unwrap()
            .success());
        assert_eq!(read_stamp(&empty).unwrap(), Some(Err(NoStamp::NoSymbol)));
    }
}
