//! The flexmig NCCL patches (embedded, so installing needs no network) and a strict
//! unified-diff applier: every hunk must match the tree exactly (a line offset is allowed,
//! fuzz is not), and nothing is written unless every hunk of every file applies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::version::NcclVersion;

/// The string every flexmig patch adds to libnccl (in an INFO format string); `nccl status` looks for it.
pub const PATCH_MARKER: &str = "flexmig-mig-patch/";
/// The string the copy-engine SHM change (hunk 9) adds to libnccl; `nccl status` reports it.
pub const SHM_CE_MARKER: &str = "flexmig-shm-ce/";

/// One embedded patch: the NCCL release it was made against, and its unified diff (`patch -p1` format).
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedPatch {
    /// The release it was made against.
    pub version: NcclVersion,
    /// Every release whose sources it was checked against (applies exactly, compiles), `version` included.
    pub releases: &'static [NcclVersion],
    pub name: &'static str,
    /// What the patch does, in a few words.
    pub summary: &'static str,
    pub diff: &'static str,
}

const FULL: &str = "MIG ids in peer info, synthetic topology bus ids, no P2P/NVLS between leaves of one GPU";
const FULL_CE: &str = "MIG ids in peer info, synthetic topology bus ids, no P2P/NVLS between leaves of one GPU, \
     SHM copy engines driven from the launching thread (NCCL_SHM_USE_CUDA_MEMCPY=1 without the proxy-thread deadlock)";
const GUARD: &str = "P2P guard only (stock 2.30 runs several ranks per GPU with NCCL_MULTI_RANK_GPU_ENABLE=1 \
     but connects them with P2P/CUMEM): SHM between leaves, of one GPU and of different GPUs";

/// Every patch flexmig carries, oldest release first.
pub const PATCHES: &[EmbeddedPatch] = &[
    EmbeddedPatch {
        version: NcclVersion::new(2, 21, 5),
        releases: &[NcclVersion::new(2, 21, 5)],
        name: "nccl-2.21.5.patch",
        summary: FULL,
        diff: include_str!("../../../nccl-patch/nccl-2.21.5.patch"),
    },
    EmbeddedPatch {
        version: NcclVersion::new(2, 28, 9),
        releases: &[NcclVersion::new(2, 28, 9)],
        name: "nccl-2.28.9.patch",
        summary: FULL_CE,
        diff: include_str!("../../../nccl-patch/nccl-2.28.9.patch"),
    },
    EmbeddedPatch {
        version: NcclVersion::new(2, 29, 7),
        releases: &[NcclVersion::new(2, 29, 7)],
        name: "nccl-2.29.7.patch",
        summary: FULL_CE,
        diff: include_str!("../../../nccl-patch/nccl-2.29.7.patch"),
    },
    EmbeddedPatch {
        version: NcclVersion::new(2, 30, 3),
        releases: &[NcclVersion::new(2, 30, 3), NcclVersion::new(2, 30, 4)],
        name: "nccl-2.30.3.patch",
        summary: GUARD,
        diff: include_str!("../../../nccl-patch/nccl-2.30.3.patch"),
    },
    EmbeddedPatch {
        version: NcclVersion::new(2, 30, 7),
        releases: &[NcclVersion::new(2, 30, 7)],
        name: "nccl-2.30.7.patch",
        summary: GUARD,
        diff: include_str!("../../../nccl-patch/nccl-2.30.7.patch"),
    },
];

/// What flexmig needs done to an NCCL release.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Apply this patch (made or checked for this release).
    Patch(&'static EmbeddedPatch),
    /// A 2.30.x release no guard patch was checked against: the first of these (newest first)
    /// that applies exactly to the tree.
    Guard(Vec<&'static EmbeddedPatch>),
    /// NCCL >= 2.31: its own (experimental) MIG support serves leaves of one GPU; no patch is offered.
    StockMigSupport,
}

/// Picks the patch for `version`, or refuses naming what is supported.
pub fn select(version: NcclVersion) -> anyhow::Result<Plan> {
    if let Some(p) = PATCHES.iter().find(|p| p.releases.contains(&version)) {
        return Ok(Plan::Patch(p));
    }
    if version >= NcclVersion::MIG_SUPPORT {
        return Ok(Plan::StockMigSupport);
    }
    if version.is_2_30() && version >= NcclVersion::MULTI_RANK_GPU {
        return Ok(Plan::Guard(PATCHES.iter().rev().filter(|p| p.version.is_2_30()).collect()));
    }
    let known: Vec<String> = PATCHES.iter().flat_map(|p| p.releases).map(|v| v.to_string()).collect();
    bail!(
        "no flexmig patch for NCCL {version}: patches exist for {} only (and any other 2.30.x the guard patch \
         applies to), and stock NCCL >= {} needs none for leaves of one GPU; use one of those releases",
        known.join(", "),
        NcclVersion::MIG_SUPPORT
    )
}

/// Why `nccl install` offers no patch for NCCL >= 2.31, and what to do instead.
pub fn stock_mig_support_note(version: NcclVersion) -> String {
    format!(
        "NCCL {version} needs no flexmig patch for leaves of one GPU: from {} on, NCCL's own experimental MIG \
         support connects them over SHM, given {} (the flexmig plugin exports these). Between leaves of different \
         GPUs stock NCCL takes NET (the network transport); the flexmig patch would give them SHM, as it does on \
         2.28-2.30, but it is not made or tested for >= {}, so none is offered. Use the stock library (PyPI's \
         nvidia-nccl-cu13 wheel, or build this source with --no-patch) and check it with \
         `flexmig-gres-helper nccl status <libnccl.so.2>`",
        NcclVersion::MIG_SUPPORT,
        super::status::STOCK_MIG_ENV,
        NcclVersion::MIG_SUPPORT
    )
}

/// The patch `plan` puts on the tree at `root`, and whether it applies there or is already applied.
/// For a [`Plan::Guard`] the first candidate that matches exactly; if none does, the error names
/// each candidate's first mismatch.
pub fn choose(plan: &Plan, version: NcclVersion, root: &Path) -> anyhow::Result<(&'static EmbeddedPatch, Applicability)> {
    let candidates: Vec<&'static EmbeddedPatch> = match plan {
        Plan::Patch(p) => vec![p],
        Plan::Guard(ps) => ps.clone(),
        Plan::StockMigSupport => bail!("{}", stock_mig_support_note(version)),
    };
    let mut errors = Vec::new();
    for p in &candidates {
        match check_tree(root, p.diff) {
            Ok((state, _)) => return Ok((p, state)),
            Err(e) if candidates.len() == 1 => return Err(e),
            Err(e) => errors.push(format!("{}: {:#}", p.name, e)),
        }
    }
    let checked: Vec<String> = candidates.iter().flat_map(|p| p.releases).map(|v| v.to_string()).collect();
    bail!(
        "no flexmig guard patch applies to NCCL {version} (the guard patches are checked against {} only):\n{}\n\
         use one of those releases, or stock NCCL >= {} for leaves of one GPU",
        checked.join(", "),
        errors.join("\n"),
        NcclVersion::MIG_SUPPORT
    )
}

/// One hunk: the lines it expects (context and removed) and the lines it leaves (context and added).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// 1-based line in the original file, from the `@@ -l,s` header.
    pub old_start: usize,
    pub old_lines: Vec<String>,
    pub new_lines: Vec<String>,
}

/// The hunks of one file, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePatch {
    /// Path inside the tree (the `+++ b/...` name with the first component stripped, as `patch -p1`).
    pub path: PathBuf,
    pub hunks: Vec<Hunk>,
}

/// Parses a unified diff as `git diff` writes it.
pub fn parse_diff(diff: &str) -> anyhow::Result<Vec<FilePatch>> {
    let mut files: Vec<FilePatch> = Vec::new();
    let mut lines = diff.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(name) = line.strip_prefix("+++ ") {
            let name = name.split('\t').next().unwrap_or(name).trim();
            let stripped = name.split_once('/').map(|(_, rest)| rest).unwrap_or(name);
            if stripped.is_empty() || stripped.split('/').any(|c| c == "..") {
                bail!("bad file name in patch: {name:?}");
            }
            files.push(FilePatch { path: PathBuf::from(stripped), hunks: Vec::new() });
        } else if let Some(header) = line.strip_prefix("@@ ") {
            let file = files.last_mut().context("hunk before any +++ line")?;
            let (old_start, old_count, new_count) = parse_hunk_header(header)?;
            let mut hunk = Hunk { old_start, old_lines: Vec::new(), new_lines: Vec::new() };
            while hunk.old_lines.len() < old_count || hunk.new_lines.len() < new_count {
                let body = lines.next().with_context(|| format!("{}: hunk at line {old_start} ends early", file.path.display()))?;
                if body.starts_with('\\') {
                    continue; // "\ No newline at end of file"
                }
                let (tag, text) = body.split_at(body.len().min(1));
                match tag {
                    " " | "" => {
                        hunk.old_lines.push(text.to_string());
                        hunk.new_lines.push(text.to_string());
                    }
                    "-" => hunk.old_lines.push(text.to_string()),
                    "+" => hunk.new_lines.push(text.to_string()),
                    _ => bail!("{}: unexpected line in hunk at line {old_start}: {body:?}", file.path.display()),
                }
            }
            file.hunks.push(hunk);
        }
    }
    if files.is_empty() || files.iter().any(|f| f.hunks.is_empty()) {
        bail!("patch has no files or a file without hunks");
    }
    Ok(files)
}

fn parse_hunk_header(header: &str) -> anyhow::Result<(usize, usize, usize)> {
    // "-l,s +l,s @@ optional function context"
    let mut it = header.split_whitespace();
    let old = it.next().and_then(|s| s.strip_prefix('-')).context("hunk header without -l,s")?;
    let new = it.next().and_then(|s| s.strip_prefix('+')).context("hunk header without +l,s")?;
    let range = |s: &str| -> anyhow::Result<(usize, usize)> {
        let (start, count) = s.split_once(',').unwrap_or((s, "1"));
        Ok((start.parse().context("hunk start")?, count.parse().context("hunk length")?))
    };
    let (old_start, old_count) = range(old)?;
    let (_, new_count) = range(new)?;
    Ok((old_start, old_count, new_count))
}

/// How a patch relates to a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applicability {
    /// Every hunk matches: the tree is stock and the patch applies.
    Applies,
    /// Every hunk's result is already there.
    AlreadyApplied,
}

/// Applies `hunks` to `text` (the whole file). Each hunk is looked for at its recorded line first,
/// then at the nearest line after the previous hunk where its expected lines match exactly.
pub fn apply_to_text(text: &str, file: &FilePatch) -> anyhow::Result<String> {
    let ends_with_newline = text.ends_with('\n');
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut floor = 0usize; // hunks apply in order and may not overlap
    let mut shift: isize = 0; // how far earlier hunks moved the text
    for (i, hunk) in file.hunks.iter().enumerate() {
        let want = (hunk.old_start.saturating_sub(1) as isize + shift).max(0) as usize;
        let at = find_block(&lines, &hunk.old_lines, want, floor).with_context(|| {
            format!(
                "{}: hunk {} (original line {}) does not match this tree: expected\n{}",
                file.path.display(),
                i + 1,
                hunk.old_start,
                hunk.old_lines.iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
            )
        })?;
        lines.splice(at..at + hunk.old_lines.len(), hunk.new_lines.iter().cloned());
        floor = at + hunk.new_lines.len();
        shift += hunk.new_lines.len() as isize - hunk.old_lines.len() as isize;
    }
    let mut out = lines.join("\n");
    if ends_with_newline {
        out.push('\n');
    }
    Ok(out)
}

/// The start of `block` in `lines` at or after `floor`, nearest to `want`.
fn find_block(lines: &[String], block: &[String], want: usize, floor: usize) -> Option<usize> {
    if block.len() > lines.len() {
        return None;
    }
    let last = lines.len() - block.len();
    let matches = |at: usize| at >= floor && at <= last && lines[at..at + block.len()] == *block;
    // Far enough both ways to reach every line, also when the file is shorter than `want`.
    (0..=lines.len().max(want)).find_map(|d| {
        if matches(want + d) {
            Some(want + d)
        } else if d <= want && matches(want - d) {
            Some(want - d)
        } else {
            None
        }
    })
}

/// Checks `diff` against the tree at `root` without writing; returns the patched text of every file.
pub fn check_tree(root: &Path, diff: &str) -> anyhow::Result<(Applicability, BTreeMap<PathBuf, String>)> {
    let files = parse_diff(diff)?;
    let mut patched = BTreeMap::new();
    let mut first_error = None;
    for file in &files {
        let path = root.join(&file.path);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        match apply_to_text(&text, file) {
            Ok(new_text) => {
                patched.insert(file.path.clone(), new_text);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        // Maybe the tree already carries the patch: every hunk's result present, in order.
        let reversed: Vec<FilePatch> = files.iter().map(reverse).collect();
        let all_reverse = reversed
            .iter()
            .all(|file| std::fs::read_to_string(root.join(&file.path)).map(|t| apply_to_text(&t, file).is_ok()).unwrap_or(false));
        if all_reverse {
            return Ok((Applicability::AlreadyApplied, BTreeMap::new()));
        }
        return Err(e.context(format!("the flexmig patch does not apply to {}", root.display())));
    }
    Ok((Applicability::Applies, patched))
}

fn reverse(file: &FilePatch) -> FilePatch {
    FilePatch {
        path: file.path.clone(),
        hunks: file
            .hunks
            .iter()
            .map(|h| Hunk { old_start: h.old_start, old_lines: h.new_lines.clone(), new_lines: h.old_lines.clone() })
            .collect(),
    }
}

/// Applies `diff` to the tree at `root`: all files or none.
pub fn apply_tree(root: &Path, diff: &str) -> anyhow::Result<Applicability> {
    let (state, patched) = check_tree(root, diff)?;
    for (rel, text) in &patched {
        let path = root.join(rel);
        let tmp = path.with_extension("flexmig-tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str = "diff --git a/src/a.cc b/src/a.cc\n--- a/src/a.cc\n+++ b/src/a.cc\n@@ -2,3 +2,4 @@ fn\n two\n-three\n+THREE\n+three and a half\n four\n@@ -8,2 +9,2 @@\n eight\n-nine\n+NINE\n";

    fn tree(text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/a.cc"), text).unwrap();
        dir
    }

    const ORIGINAL: &str = "one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\nten\n";

    #[test]
    fn parses_files_and_hunks() {
        let files = parse_diff(DIFF).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, PathBuf::from("src/a.cc"));
        assert_eq!(files[0].hunks.len(), 2);
        assert_eq!(files[0].hunks[0].old_lines, vec!["two", "three", "four"]);
        assert_eq!(files[0].hunks[0].new_lines, vec!["two", "THREE", "three and a half", "four"]);
    }

    #[test]
    fn applies_exactly() {
        let dir = tree(ORIGINAL);
        assert_eq!(apply_tree(dir.path(), DIFF).unwrap(), Applicability::Applies);
        let text = std::fs::read_to_string(dir.path().join("src/a.cc")).unwrap();
        assert_eq!(text, "one\ntwo\nTHREE\nthree and a half\nfour\nfive\nsix\nseven\neight\nNINE\nten\n");
        // A second run sees its own work.
        assert_eq!(apply_tree(dir.path(), DIFF).unwrap(), Applicability::AlreadyApplied);
    }

    #[test]
    fn applies_with_line_offset() {
        let dir = tree(&format!("zero\nminus one\n{ORIGINAL}"));
        assert_eq!(apply_tree(dir.path(), DIFF).unwrap(), Applicability::Applies);
        let text = std::fs::read_to_string(dir.path().join("src/a.cc")).unwrap();
        assert!(text.contains("THREE\nthree and a half\n") && text.contains("NINE\nten"));
    }

    #[test]
    fn applies_to_a_file_much_shorter_than_the_hunks_line_numbers() {
        let dir = tree("two\nthree\nfour\neight\nnine\n");
        assert_eq!(apply_tree(dir.path(), &DIFF.replace("@@ -2,3 +2,4 @@", "@@ -200,3 +200,4 @@")).unwrap(), Applicability::Applies);
        assert_eq!(std::fs::read_to_string(dir.path().join("src/a.cc")).unwrap(), "two\nTHREE\nthree and a half\nfour\neight\nNINE\n");
    }

    #[test]
    fn refuses_a_tree_that_differs_and_writes_nothing() {
        let changed = ORIGINAL.replace("nine", "NEIN");
        let dir = tree(&changed);
        let err = apply_tree(dir.path(), DIFF).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("does not apply") && msg.contains("hunk 2"), "{msg}");
        assert_eq!(std::fs::read_to_string(dir.path().join("src/a.cc")).unwrap(), changed);
    }

    #[test]
    fn refuses_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_tree(dir.path(), DIFF).is_err());
    }

    #[test]
    fn rejects_path_escape() {
        assert!(parse_diff("--- a/../x\n+++ b/../x\n@@ -1 +1 @@\n-a\n+b\n").is_err());
    }

    #[test]
    fn selection() {
        assert!(matches!(select(NcclVersion::new(2, 28, 9)).unwrap(), Plan::Patch(p) if p.name == "nccl-2.28.9.patch"));
        assert!(matches!(select(NcclVersion::new(2, 29, 7)).unwrap(), Plan::Patch(_)));
        assert!(matches!(select(NcclVersion::new(2, 21, 5)).unwrap(), Plan::Patch(p) if p.name == "nccl-2.21.5.patch"));
        assert!(matches!(select(NcclVersion::new(2, 30, 7)).unwrap(), Plan::Patch(p) if p.summary.starts_with("P2P guard")));
        // 2.30.3 and 2.30.4 have the same three files: one patch, checked against both.
        for v in [NcclVersion::new(2, 30, 3), NcclVersion::new(2, 30, 4)] {
            assert!(matches!(select(v).unwrap(), Plan::Patch(p) if p.name == "nccl-2.30.3.patch"), "{v}");
        }
        // Another 2.30.x: the guard patches, newest first.
        let Plan::Guard(candidates) = select(NcclVersion::new(2, 30, 9)).unwrap() else { panic!("2.30.9: not the guard") };
        assert_eq!(candidates.iter().map(|p| p.name).collect::<Vec<_>>(), ["nccl-2.30.7.patch", "nccl-2.30.3.patch"]);
        for v in [NcclVersion::new(2, 31, 0), NcclVersion::new(2, 31, 2), NcclVersion::new(2, 32, 3)] {
            assert!(matches!(select(v).unwrap(), Plan::StockMigSupport), "{v}");
        }
        for v in [NcclVersion::new(2, 27, 3), NcclVersion::new(2, 30, 0)] {
            let err = format!("{:#}", select(v).unwrap_err());
            assert!(err.contains(&format!("no flexmig patch for NCCL {v}")) && err.contains("2.28.9") && err.contains("2.30.4"), "{err}");
        }
    }

    /// A tree that `p` matches exactly: each file holds the lines its hunks expect, apart.
    fn tree_for(p: &EmbeddedPatch) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for file in parse_diff(p.diff).unwrap() {
            let mut text = String::new();
            for h in &file.hunks {
                text.push_str("// filler\n");
                for l in &h.old_lines {
                    text.push_str(l);
                    text.push('\n');
                }
            }
            let path = dir.path().join(&file.path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn embedded(name: &str) -> &'static EmbeddedPatch {
        PATCHES.iter().find(|p| p.name == name).unwrap()
    }

    #[test]
    fn another_2_30_release_takes_the_guard_patch_that_matches_it() {
        let v = NcclVersion::new(2, 30, 9);
        let plan = select(v).unwrap();
        for name in ["nccl-2.30.7.patch", "nccl-2.30.3.patch"] {
            let dir = tree_for(embedded(name));
            let (p, state) = choose(&plan, v, dir.path()).unwrap();
            assert_eq!((p.name, state), (name, Applicability::Applies));
            // Once applied, the same patch is recognised.
            apply_tree(dir.path(), p.diff).unwrap();
            let (p, state) = choose(&plan, v, dir.path()).unwrap();
            assert_eq!((p.name, state), (name, Applicability::AlreadyApplied));
        }
        // A tree neither matches: refused, naming both patches and what they were checked against.
        let dir = tree_for(embedded("nccl-2.30.7.patch"));
        let init = dir.path().join("src/init.cc");
        let text = std::fs::read_to_string(&init).unwrap().replace("info->busId = comm->busId;", "info->busId = busIdOf(comm);");
        std::fs::write(&init, text).unwrap();
        let err = format!("{:#}", choose(&plan, v, dir.path()).unwrap_err());
        assert!(err.contains("no flexmig guard patch applies to NCCL 2.30.9"), "{err}");
        assert!(err.contains("nccl-2.30.7.patch: ") && err.contains("nccl-2.30.3.patch: ") && err.contains("src/init.cc"), "{err}");
        assert!(err.contains("2.30.7, 2.30.3, 2.30.4"), "{err}");
    }

    #[test]
    fn no_patch_is_offered_for_nvidias_mig_support() {
        let dir = tree_for(embedded("nccl-2.30.7.patch"));
        let v = NcclVersion::new(2, 32, 3);
        let err = format!("{:#}", choose(&select(v).unwrap(), v, dir.path()).unwrap_err());
        for want in [
            "NCCL 2.32.3 needs no flexmig patch for leaves of one GPU",
            "over SHM",
            "NCCL_MNNVL_ENABLE=0",
            "takes NET",
            "none is offered",
            "--no-patch",
        ] {
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    /// Where a developer keeps pristine NCCL trees (git-ignored `.nccl/src`, or `$NCCL_TREES`), each
    /// as `nccl-X.Y.Z`; the test skips releases not there.
    #[test]
    fn embedded_patches_apply_to_pristine_trees_when_present() {
        let mut roots = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../.nccl/src")];
        roots.extend(std::env::var_os("NCCL_TREES").map(PathBuf::from));
        for p in PATCHES {
            for v in p.releases {
                for root in &roots {
                    let tree = root.join(format!("nccl-{v}"));
                    if !tree.join("makefiles/version.mk").is_file() {
                        continue;
                    }
                    assert_eq!(super::super::version::source_version(&tree).unwrap(), *v);
                    let (state, files) = check_tree(&tree, p.diff).unwrap_or_else(|e| panic!("{} on {v}: {e:#}", p.name));
                    assert_eq!(state, Applicability::Applies, "{} on {v}", p.name);
                    assert!(files.values().any(|t| t.contains(PATCH_MARKER)), "{}", p.name);
                }
            }
        }
    }

    #[test]
    fn embedded_patches_parse_and_carry_the_marker() {
        for p in PATCHES {
            let files = parse_diff(p.diff).unwrap_or_else(|e| panic!("{}: {e:#}", p.name));
            assert!(files.iter().any(|f| f.path == Path::new("src/init.cc")), "{}", p.name);
            assert!(p.diff.contains(PATCH_MARKER), "{} lacks the marker", p.name);
            assert!(p.diff.contains("NCCL_MIG_ID"), "{}", p.name);
            // The copy-engine SHM change exists for the releases PyTorch and Debian ship.
            let ce = p.version == NcclVersion::new(2, 28, 9) || p.version == NcclVersion::new(2, 29, 7);
            assert_eq!(p.diff.contains(SHM_CE_MARKER), ce, "{}", p.name);
            assert_eq!(p.summary.contains("SHM copy engines"), ce, "{}", p.name);
            assert!(p.releases.contains(&p.version), "{}", p.name);
        }
        // No release is claimed by two patches.
        let all: Vec<NcclVersion> = PATCHES.iter().flat_map(|p| p.releases.iter().copied()).collect();
        assert!(all.iter().enumerate().all(|(i, v)| !all[i + 1..].contains(v)), "{all:?}");
    }
}
