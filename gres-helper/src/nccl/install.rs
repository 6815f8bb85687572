//! `nccl install`: source (tree or tarball) -> version -> patch -> build -> install -> plugstack line.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::patch::{self, Applicability, Plan};
use super::status;
use super::version::{self, NcclVersion};

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// NCCL source: a tree (with makefiles/version.mk) or a release tarball (.tar.gz, .tar.xz, .tar).
    #[arg(long)]
    pub source: PathBuf,
    /// Where to install (lib/, include/); required unless --check-only.
    #[arg(long, required_unless_present = "check_only")]
    pub prefix: Option<PathBuf>,
    /// The CUDA toolkit to build with (default: $CUDA_HOME, then nvcc on PATH, then /usr/local/cuda).
    #[arg(long)]
    pub cuda_home: Option<PathBuf>,
    /// GPU architectures to build for, e.g. "90" or "80,90" or "sm_90" or "9.0" (default: the GPUs nvidia-smi lists).
    #[arg(long)]
    pub arch: Option<String>,
    /// Parallel build jobs (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Where the patched copy of the source is built (default: <prefix>/src/nccl-<version>).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Only detect the version and check that the patch applies; change nothing, build nothing.
    #[arg(long, conflicts_with = "patch_only")]
    pub check_only: bool,
    /// Copy the source into the work directory and patch it, but do not build (CI compiles a few files itself).
    #[arg(long)]
    pub patch_only: bool,
    /// Build the release as it is, without a flexmig patch: NCCL >= 2.31 (its own MIG support
    /// serves leaves of one GPU), or for comparisons.
    #[arg(long, conflicts_with_all = ["check_only", "patch_only"])]
    pub no_patch: bool,
    /// Steps per slice of ring all-reduce and all-gather (Simple protocol): 2 is NCCL's own, 1 cuts
    /// each 4-step chunk into 4 slices instead of 2. With the copy-engine SHM mode
    /// (NCCL_SHM_USE_CUDA_MEMCPY=1) that lifts 2 leaves from 77% to 82% of the link's bound
    /// (BENCHMARKS.md); it changes the kernels for every transport, so it is off by default.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2), conflicts_with_all = ["check_only", "no_patch"])]
    pub ring_slice_steps: Option<u8>,
}

pub fn run(args: &InstallArgs) -> anyhow::Result<()> {
    let staging = Staging::new()?;
    let source = resolve_source(&args.source, &staging)?;
    let version = version::source_version(&source)?;
    let plan = patch::select(version)?;
    let suffix = version::source_suffix(&source);
    println!("nccl install: {} is NCCL {version}{suffix}", args.source.display());
    if matches!(plan, Plan::StockMigSupport) && !args.no_patch {
        if !suffix.is_empty() {
            bail!(
                "NCCL {version}{suffix} is a pre-release: flexmig offers no patch for NCCL >= {}, whose releases carry \
                 NVIDIA's MIG support, and a pre-release may predate that support; use a release's stock library (e.g. PyPI's \
                 nvidia-nccl-cu13 wheel) and check it with `flexmig-gres-helper nccl status <libnccl.so.2>`",
                NcclVersion::MIG_SUPPORT
            );
        }
        bail!("{}", patch::stock_mig_support_note(version));
    }

    if args.check_only {
        let (p, state) = patch::choose(&plan, version, &source)?;
        say_chosen(p, version);
        match state {
            Applicability::Applies => {
                let (_, files) = patch::check_tree(&source, p.diff)?;
                println!("nccl install: {} applies cleanly ({} files)", p.name, files.len());
                for f in files.keys() {
                    println!("  {}", f.display());
                }
            }
            Applicability::AlreadyApplied => println!("nccl install: {} is already applied to this tree", p.name),
        }
        return Ok(());
    }

    let prefix = absolute(args.prefix.as_deref().context("--prefix is required")?)?;
    let work = match &args.work_dir {
        Some(w) => absolute(w)?,
        None => prefix.join("src").join(format!("nccl-{version}")),
    };
    // Before any copying: fail early on a missing toolkit or a patch that does not apply.
    let cuda_home = if args.patch_only { None } else { Some(find_cuda_home(args.cuda_home.as_deref())?) };
    let chosen = if args.no_patch { None } else { Some(patch::choose(&plan, version, &source)?.0) };

    prepare_work_dir(&source, &work)?;
    match chosen {
        None => println!("nccl install: --no-patch: building NCCL {version} as it is"),
        Some(p) => {
            say_chosen(p, version);
            match patch::apply_tree(&work, p.diff)? {
                Applicability::Applies => println!("nccl install: applied {}", p.name),
                Applicability::AlreadyApplied => println!("nccl install: {} was already applied", p.name),
            }
        }
    }
    if let Some(steps) = args.ring_slice_steps {
        set_ring_slice_steps(&work, steps)?;
        println!("nccl install: ring all-reduce and all-gather slices of {steps} step(s) per 4-step chunk (--ring-slice-steps)");
    }
    let Some(cuda_home) = cuda_home else {
        println!("nccl install: patched tree ready in {} (--patch-only: not built)", work.display());
        return Ok(());
    };
    let archs = match &args.arch {
        Some(list) => parse_arch_list(list)?,
        None => detect_archs()?,
    };
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(4));

    let gencode = gencode_flags(&archs);
    println!("nccl install: building in {} with {} for {} ({jobs} jobs)", work.display(), cuda_home.display(), gencode);
    let make_vars =
        [format!("CUDA_HOME={}", cuda_home.display()), format!("NVCC_GENCODE={gencode}"), format!("PREFIX={}", prefix.display())];
    run_command(Command::new("make").arg("-C").arg(&work).arg(format!("-j{jobs}")).arg("src.build").args(&make_vars), "building NCCL")?;
    run_command(Command::new("make").arg("-C").arg(&work).arg("src.install").args(&make_vars), "installing NCCL")?;

    let library = prefix.join("lib/libnccl.so.2");
    let kind = status::classify_file(&library)?;
    println!("nccl install: {}: {kind}", library.display());
    if !kind.usable() {
        if args.no_patch {
            println!("nccl install: done (--no-patch): {} is not for flexmig ranks, only for comparisons", library.display());
            return Ok(());
        }
        bail!("the installed library is not usable for flexmig (see above)");
    }
    println!("nccl install: done. Add this argument to the flexmig line of plugstack.conf:");
    println!("nccl={}", library.display());
    Ok(())
}

/// Says which patch goes on when the release is not one it was checked against.
fn say_chosen(p: &patch::EmbeddedPatch, version: NcclVersion) {
    if !p.releases.contains(&version) {
        let checked: Vec<String> = p.releases.iter().map(|v| v.to_string()).collect();
        println!(
            "nccl install: NCCL {version} is not a release {} was checked against ({}); every hunk of it matches \
             this tree exactly, so it is used: check the built library on a GPU (tests/gpu/nccl-mig.sh)",
            p.name,
            checked.join(", ")
        );
    }
}

/// A scratch directory for unpacking tarballs, removed on drop.
struct Staging(PathBuf);

impl Staging {
    fn new() -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("flexmig-nccl-{}-{nanos}", std::process::id()));
        Ok(Self(dir))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tree is used as is; a tarball is unpacked into the staging directory.
fn resolve_source(source: &Path, staging: &Staging) -> anyhow::Result<PathBuf> {
    let meta = std::fs::metadata(source).with_context(|| format!("--source {}", source.display()))?;
    if meta.is_dir() {
        return absolute(source);
    }
    std::fs::create_dir_all(&staging.0).with_context(|| format!("creating {}", staging.0.display()))?;
    run_command(Command::new("tar").arg("-xf").arg(source).arg("-C").arg(&staging.0), "unpacking the NCCL tarball")?;
    find_source_root(&staging.0).with_context(|| format!("{} holds no NCCL source tree (no makefiles/version.mk)", source.display()))
}

/// The directory holding makefiles/version.mk: `dir` itself or one of its direct children.
fn find_source_root(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.join("makefiles/version.mk").is_file() {
        return Ok(dir.to_path_buf());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.join("makefiles/version.mk").is_file() {
            return Ok(path);
        }
    }
    bail!("not found")
}

const WORK_STAMP: &str = ".flexmig-nccl-work";

/// Copies the pristine source into `work` (replacing an earlier copy that this tool made).
fn prepare_work_dir(source: &Path, work: &Path) -> anyhow::Result<()> {
    if work.exists() {
        if !work.join(WORK_STAMP).exists() {
            bail!("{} exists and was not made by flexmig-gres-helper; give another --work-dir or remove it", work.display());
        }
        std::fs::remove_dir_all(work).with_context(|| format!("removing the old build copy {}", work.display()))?;
    }
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    std::fs::write(work.join(WORK_STAMP), "made by flexmig-gres-helper nccl install\n")?;
    let mut from = source.as_os_str().to_owned();
    from.push("/.");
    run_command(Command::new("cp").arg("-a").arg(&from).arg(work), "copying the NCCL source")?;
    Ok(())
}

/// The string `--ring-slice-steps` compiles into the library, for `nccl status`.
pub const RING_SLICE_MARKER: &str = "flexmig-ring-slice-steps=";

/// Sets the slice steps of ring all-reduce and all-gather in the build copy's
/// src/include/collectives.h (compile-time constants of NCCL's kernels and host code), and adds a
/// string that names the setting to the library. The chunk stays at NCCL_STEPS/2 (4 steps): 8-step
/// chunks hang (measured: BENCHMARKS.md).
fn set_ring_slice_steps(work: &Path, steps: u8) -> anyhow::Result<()> {
    let path = work.join("src/include/collectives.h");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = String::with_capacity(text.len() + 256);
    let mut found = [0usize; 4];
    const NAMES: [&str; 4] = ["ALLREDUCE_SLICESTEPS", "ALLGATHER_SLICESTEPS", "ALLREDUCE_CHUNKSTEPS", "ALLGATHER_CHUNKSTEPS"];
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let name = match (words.next(), words.next()) {
            (Some("#define"), Some(name)) => NAMES.iter().position(|n| *n == name),
            _ => None,
        };
        match name {
            Some(i) if i < 2 => {
                found[i] += 1;
                out.push_str(&format!("#define {} {steps} // flexmig-gres-helper nccl install --ring-slice-steps {steps}\n", NAMES[i]));
                if i == 1 {
                    // Next to the defines, inside the header's include guard.
                    out.push_str(&format!(
                        "// The setting, named in the library for `flexmig-gres-helper nccl status`.\n\
                         __attribute__((used)) static const char flexmigRingSliceSteps[] = \"{RING_SLICE_MARKER}{steps}\";\n"
                    ));
                }
            }
            Some(i) => {
                // The chunk must be NCCL's 4 steps, which the slice divides.
                let value: String = line.split_whitespace().skip(2).collect();
                if value != "(NCCL_STEPS/2)" {
                    bail!("{}: {} is {value}, not (NCCL_STEPS/2); --ring-slice-steps knows only that chunk", path.display(), NAMES[i]);
                }
                found[i] += 1;
                out.push_str(line);
                out.push('\n');
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if let Some(i) = found.iter().position(|n| *n != 1) {
        bail!(
            "{} defines {} {} times, not once: this NCCL release is laid out differently; build without --ring-slice-steps",
            path.display(),
            NAMES[i],
            found[i]
        );
    }
    leaf_model::atomic::write_atomic(&path, out.as_bytes(), 0o644).with_context(|| format!("writing {}", path.display()))
}

fn run_command(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status}): {cmd:?}");
    }
    Ok(())
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

/// `--cuda-home`, else $CUDA_HOME, else the toolkit of the nvcc on PATH, else /usr/local/cuda.
fn find_cuda_home(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = match given {
        Some(p) => vec![p.to_path_buf()],
        None => {
            let mut c = Vec::new();
            if let Some(h) = std::env::var_os("CUDA_HOME").filter(|v| !v.is_empty()) {
                c.push(PathBuf::from(h));
            }
            if let Some(path) = std::env::var_os("PATH") {
                for dir in std::env::split_paths(&path) {
                    if dir.join("nvcc").is_file() {
                        if let Some(home) = dir.parent() {
                            c.push(home.to_path_buf());
                        }
                        break;
                    }
                }
            }
            c.push(PathBuf::from("/usr/local/cuda"));
            c
        }
    };
    for home in &candidates {
        if home.join("bin/nvcc").is_file() {
            return absolute(home);
        }
    }
    bail!(
        "no CUDA toolkit found (looked for bin/nvcc in {}); pass --cuda-home",
        candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}

/// "90", "sm_90", "9.0", "compute_90", "90a", lists separated by commas or spaces -> ["90", ...].
pub fn parse_arch_list(list: &str) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for item in list.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()) {
        let bare = item.trim_start_matches("sm_").trim_start_matches("compute_");
        let arch = match bare.split_once('.') {
            Some((major, minor)) => format!("{major}{minor}"),
            None => bare.to_string(),
        };
        let digits = arch.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        if digits.len() < 2 || !digits.chars().all(|c| c.is_ascii_digit()) || arch.len() - digits.len() > 1 {
            bail!("bad GPU architecture {item:?}: expected e.g. 90, sm_90 or 9.0");
        }
        if !out.contains(&arch) {
            out.push(arch);
        }
    }
    if out.is_empty() {
        bail!("--arch is empty");
    }
    Ok(out)
}

/// NVCC flags for `archs`: SASS for each.
pub fn gencode_flags(archs: &[String]) -> String {
    archs.iter().map(|a| format!("-gencode=arch=compute_{a},code=sm_{a}")).collect::<Vec<_>>().join(" ")
}

/// The compute capabilities of the GPUs present, from nvidia-smi.
fn detect_archs() -> anyhow::Result<Vec<String>> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .context("running nvidia-smi to find the GPUs' architecture; pass --arch (e.g. --arch 90) on a machine without GPUs")?;
    if !out.status.success() {
        bail!("nvidia-smi failed ({}); pass --arch (e.g. --arch 90)", out.status);
    }
    parse_arch_list(&String::from_utf8_lossy(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_lists() {
        assert_eq!(parse_arch_list("90").unwrap(), vec!["90"]);
        assert_eq!(parse_arch_list("sm_80, 9.0,90").unwrap(), vec!["80", "90"]);
        assert_eq!(parse_arch_list("9.0\n9.0\n").unwrap(), vec!["90"]);
        assert_eq!(parse_arch_list("compute_90a").unwrap(), vec!["90a"]);
        assert!(parse_arch_list("hopper").is_err());
        assert!(parse_arch_list("").is_err());
        assert!(parse_arch_list("9").is_err());
    }

    #[test]
    fn gencode() {
        assert_eq!(gencode_flags(&["80".into(), "90".into()]), "-gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90");
    }

    #[test]
    fn source_root_in_tarball_layout() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("nccl-2.29.7");
        std::fs::create_dir_all(tree.join("makefiles")).unwrap();
        std::fs::write(tree.join("makefiles/version.mk"), "NCCL_MAJOR := 2\nNCCL_MINOR := 29\nNCCL_PATCH := 7\n").unwrap();
        let root = find_source_root(dir.path()).unwrap();
        assert_eq!(root, tree);
        assert_eq!(version::source_version(&root).unwrap(), NcclVersion::new(2, 29, 7));
        assert!(find_source_root(&tree.join("makefiles")).is_err());
    }

    fn collectives_tree(text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/include")).unwrap();
        std::fs::write(dir.path().join("src/include/collectives.h"), text).unwrap();
        dir
    }

    const COLLECTIVES_2_28: &str = "#include \"device.h\"\n\n// CHUNKSIZE must be a multiple of SLICESIZE\n\
        #define ALLREDUCE_SLICESTEPS (NCCL_STEPS/4)\n#define ALLREDUCE_CHUNKSTEPS (NCCL_STEPS/2)\n\
        #define ALLGATHER_SLICESTEPS (NCCL_STEPS/4)\n#define ALLGATHER_CHUNKSTEPS (NCCL_STEPS/2)\n\
        #define REDUCESCATTER_SLICESTEPS (NCCL_STEPS/4)\n";

    #[test]
    fn ring_slice_steps_rewrites_both_collectives() {
        // 2.28/2.29 write (NCCL_STEPS/4), 2.30 (NCCL_STEPS / 4).
        for text in [COLLECTIVES_2_28.to_string(), COLLECTIVES_2_28.replace("NCCL_STEPS/", "NCCL_STEPS / ")] {
            let dir = collectives_tree(&text);
            set_ring_slice_steps(dir.path(), 1).unwrap();
            let out = std::fs::read_to_string(dir.path().join("src/include/collectives.h")).unwrap();
            assert!(out.contains("#define ALLREDUCE_SLICESTEPS 1 //"), "{out}");
            assert!(out.contains("#define ALLGATHER_SLICESTEPS 1 //"), "{out}");
            // Chunks and the other collectives stay as they were.
            assert!(out.contains("#define ALLREDUCE_CHUNKSTEPS (NCCL_STEPS"), "{out}");
            assert!(out.contains("#define REDUCESCATTER_SLICESTEPS (NCCL_STEPS"), "{out}");
            assert!(out.contains(&format!("\"{RING_SLICE_MARKER}1\"")), "{out}");
            assert_eq!(out.matches("SLICESTEPS 1").count(), 2, "{out}");
            // Inside the include guard: right after the all-gather define, before the rest.
            let marker = out.find(RING_SLICE_MARKER).unwrap();
            assert!(
                marker > out.find("#define ALLGATHER_SLICESTEPS").unwrap() && marker < out.find("#define REDUCESCATTER").unwrap(),
                "{out}"
            );
        }
    }

    #[test]
    fn ring_slice_steps_refuses_an_unknown_layout() {
        let path = |d: &tempfile::TempDir| d.path().join("src/include/collectives.h");
        // A define missing: nothing written.
        let text = COLLECTIVES_2_28.replace("#define ALLGATHER_SLICESTEPS (NCCL_STEPS/4)\n", "");
        let dir = collectives_tree(&text);
        let err = set_ring_slice_steps(dir.path(), 1).unwrap_err().to_string();
        assert!(err.contains("ALLGATHER_SLICESTEPS 0 times"), "{err}");
        assert_eq!(std::fs::read_to_string(path(&dir)).unwrap(), text);
        // Another chunk size: refused, since the slice must divide it.
        let text = COLLECTIVES_2_28.replace("#define ALLREDUCE_CHUNKSTEPS (NCCL_STEPS/2)", "#define ALLREDUCE_CHUNKSTEPS NCCL_STEPS");
        let dir = collectives_tree(&text);
        let err = set_ring_slice_steps(dir.path(), 1).unwrap_err().to_string();
        assert!(err.contains("ALLREDUCE_CHUNKSTEPS is NCCL_STEPS"), "{err}");
        assert_eq!(std::fs::read_to_string(path(&dir)).unwrap(), text);
        // No tree at all.
        let empty = tempfile::tempdir().unwrap();
        assert!(set_ring_slice_steps(empty.path(), 1).unwrap_err().to_string().contains("collectives.h"));
    }

    #[test]
    fn work_dir_not_ours_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), "x").unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        assert!(prepare_work_dir(&src, &work).is_err());
        std::fs::remove_dir_all(&work).unwrap();
        prepare_work_dir(&src, &work).unwrap();
        assert_eq!(std::fs::read_to_string(work.join("f")).unwrap(), "x");
        // Ours now: a second run replaces it.
        prepare_work_dir(&src, &work).unwrap();
    }
}
