//! What differs between the Slurm releases flexmig supports (22.05 on Debian 12, 24.11 on
//! Debian 13, 26.05 on Debian unstable: `scripts/release-matrix.sh` runs every suite on each),
//! checked on the Slurm these tests run on: the plugin's version stamp, the symbols a release
//! reads, what Slurm does with a plugin of another release, the `(null)` of a bare
//! `sbatch --flexmig`, the form in which a task's error reaches the user.

use flexmig_integration::task_env::{check_rank_step, parse_tasks, print_vars, srun, start, text};
use flexmig_integration::{plugin_so, Cluster};

/// (major, minor) of the Slurm this cluster runs, from `srun --version` (`slurm 24.11.5`,
/// `slurm-wlm 22.05.8`).
fn running_release(c: &Cluster) -> (u32, u32) {
    let o = Cluster::output(c.command("srun").arg("--version")).unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let version = out.split_whitespace().nth(1).unwrap_or_else(|| panic!("srun --version: {}", text(&o)));
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap());
    let release = (parts.next().unwrap(), parts.next().unwrap());
    // The matrix says which release each chroot holds: a mix-up would test the wrong one.
    if let Ok(want) = std::env::var("FLEXMIG_EXPECT_SLURM") {
        assert_eq!(format!("{}.{:02}", release.0, release.1), want, "FLEXMIG_EXPECT_SLURM");
    }
    release
}

/// A dynamic symbol of an ELF64 little-endian shared object: (file offset of its bytes, size).
fn dynamic_symbol(elf: &[u8], name: &str) -> Option<(usize, usize)> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&elf[..6], b"\x7fELF\x02\x01", "not an ELF64 little-endian file");
    let (shoff, shentsize, shnum) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
    // Section header i: (type, addr, offset, size, link, entsize).
    let sh = |i: usize| {
        let b = shoff + i * shentsize;
        (u32_at(b + 4), u64_at(b + 0x10), u64_at(b + 0x18), u64_at(b + 0x20), u32_at(b + 0x28), u64_at(b + 0x38))
    };
    const SHT_DYNSYM: usize = 11;
    let dynsym = (0..shnum).map(sh).find(|s| s.0 == SHT_DYNSYM)?;
    let strtab = sh(dynsym.4);
    for k in 0..dynsym.3 / dynsym.5 {
        let s = dynsym.2 + k * dynsym.5;
        let name_off = strtab.2 + u32_at(s);
        let end = elf[name_off..].iter().position(|&b| b == 0)? + name_off;
        let shndx = u16_at(s + 6);
        if &elf[name_off..end] == name.as_bytes() && shndx != 0 {
            let (value, size) = (u64_at(s + 8), u64_at(s + 16));
            let section = sh(shndx);
            return Some((section.2 + value - section.1, size));
        }
    }
    None
}

fn read_u32_symbol(elf: &[u8], name: &str) -> Option<u32> {
    let (at, size) = dynamic_symbol(elf, name)?;
    assert_eq!(size, 4, "{name} is not a 32-bit value");
    Some(u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()))
}

/// The value of an enumerator of slurm/slurm_errno.h (members count on from the last `= N`).
fn slurm_errno(name: &str) -> i64 {
    let h = std::fs::read_to_string("/usr/include/slurm/slurm_errno.h")
        .expect("/usr/include/slurm/slurm_errno.h: install libslurm-dev (scripts/install-deps.sh does)");
    let mut next = 0i64;
    for line in h.lines() {
        let l = line.split("/*").next().unwrap().trim();
        let Some(member) = l.strip_suffix(',').or_else(|| if l.starts_with("ESPANK_") { Some(l) } else { None }) else { continue };
        let (m, v) = match member.split_once('=') {
            Some((m, v)) => (m.trim(), v.trim().parse::<i64>().ok()),
            None => (member.trim(), None),
        };
        if !m.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') || m.is_empty() {
            continue;
        }
        let value = v.unwrap_or(next);
        if m == name {
            return value;
        }
        next = value + 1;
    }
    panic!("{name} not found in slurm_errno.h");
}

#[test]
fn the_plugin_is_stamped_for_the_running_slurm_release() {
    let (c, _) = start(1);
    let (major, minor) = running_release(&c);
    let elf = std::fs::read(plugin_so().unwrap()).unwrap();
    let stamp = read_u32_symbol(&elf, "plugin_version").expect("plugin_version is not exported");
    assert_eq!(
        (stamp >> 16, (stamp >> 8) & 0xff),
        (major, minor),
        "the plugin is stamped {stamp:#x}: built against another Slurm's headers than the one running ({major}.{minor:02})"
    );
}

/// `slurm_spank_init_failure_mode` (25.05) tells Slurm that a failing init fails the job instead
/// of draining the node. The plugin exports it, as ESPANK_JOB_FAILURE, exactly where the release
/// it is built for reads it.
#[test]
fn init_failure_mode_is_exported_from_25_05_as_job_failure() {
    let (c, _) = start(1);
    let release = running_release(&c);
    let elf = std::fs::read(plugin_so().unwrap()).unwrap();
    let mode = read_u32_symbol(&elf, "slurm_spank_init_failure_mode");
    if release >= (25, 5) {
        let want = slurm_errno("ESPANK_JOB_FAILURE");
        assert_eq!(mode.map(i64::from), Some(want), "Slurm {release:?} reads slurm_spank_init_failure_mode");
    } else {
        assert_eq!(mode, None, "Slurm {release:?} has no slurm_spank_init_failure_mode");
    }
}

/// Why the packages pin their Slurm release: a plugin stamped for another major.minor is refused
/// by Slurm, and on a `required` line that stops every srun, with or without `--flexmig`. On an
/// `optional` line (the packaged snippet) other work runs and `--flexmig` is refused by srun,
/// so no task runs without its binding (when srun and the node agree; see the next test).
#[test]
fn a_plugin_of_another_release_is_refused_and_optional_keeps_other_work_running() {
    let (c, _) = start(1);
    let (major, minor) = running_release(&c);
    let mut elf = std::fs::read(c.plugin()).unwrap();
    let (at, _) = dynamic_symbol(&elf, "plugin_version").unwrap();
    let other = ((major + 1) << 16) | (minor << 8);
    elf[at..at + 4].copy_from_slice(&other.to_le_bytes());
    let foreign = c.dir().join("flexmig-other-release.so");
    std::fs::write(&foreign, &elf).unwrap();
    std::fs::set_permissions(&foreign, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let args = format!("inventory={d}/flexmig.toml lock_dir={d}/locks", d = c.dir().display());
    let marker = c.dir().join("task-ran");

    c.write_file("plugstack.conf", &format!("required {} {args}\n", foreign.display())).unwrap();
    let o = srun(&c, &["-n1", "true"]);
    assert!(!o.status.success(), "a required plugin of another release must stop srun: {}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Incompatible") && err.contains("flexmig-other-release.so"), "{}", text(&o));

    c.write_file("plugstack.conf", &format!("optional {} {args}\n", foreign.display())).unwrap();
    let o = srun(&c, &["-n1", "--gres=gpu:1", "true"]);
    assert!(o.status.success(), "an optional plugin that does not load must not stop other work: {}", text(&o));
    let o = Cluster::output(c.command("srun").args(["--flexmig", "-n1", "--gres=gpu:1", "touch"]).arg(&marker)).unwrap();
    assert!(!o.status.success(), "--flexmig without the plugin must be refused: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("flexmig"), "{}", text(&o));
    assert!(!marker.exists(), "a --flexmig task ran without the plugin");
}

/// srun on the login side has the plugin, the node's slurmstepd cannot load it (a plugin of
/// another release, or one removed from the node). With `required` (the line the packages ship,
/// commented out) the step fails and no task runs; with `optional` Slurm runs the tasks without
/// their leaves, on Slurm's GPU indices: why the packaged line is `required`.
#[test]
fn a_node_that_cannot_load_a_required_plugin_runs_no_flexmig_task_where_optional_runs_it_unbound() {
    let (c, _) = start(1);
    let (major, minor) = running_release(&c);
    let args = format!("inventory={d}/flexmig.toml lock_dir={d}/locks", d = c.dir().display());
    // The client's configuration: the good plugin.
    let good = c.dir().join("plugstack-client.conf");
    std::fs::write(&good, format!("required {} {args}\n", c.plugin().display())).unwrap();
    let conf = std::fs::read_to_string(c.conf()).unwrap();
    let client = c.dir().join("slurm-client.conf");
    std::fs::write(
        &client,
        conf.replace(
            &format!("PlugStackConfig={}", c.dir().join("plugstack.conf").display()),
            &format!("PlugStackConfig={}", good.display()),
        ),
    )
    .unwrap();
    let mut elf = std::fs::read(c.plugin()).unwrap();
    let (at, _) = dynamic_symbol(&elf, "plugin_version").unwrap();
    elf[at..at + 4].copy_from_slice(&(((major + 1) << 16) | (minor << 8)).to_le_bytes());
    let foreign = c.dir().join("flexmig-other-release.so");
    std::fs::write(&foreign, &elf).unwrap();
    std::fs::set_permissions(&foreign, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let marker = c.dir().join("task-ran");
    for plugin in [foreign.display().to_string(), format!("{}/gone.so", c.dir().display())] {
        for keyword in ["required", "optional"] {
            c.write_file("plugstack.conf", &format!("{keyword} {plugin} {args}\n")).unwrap();
            let _ = std::fs::remove_file(&marker);
            let o = Cluster::output(
                c.command("srun")
                    .env("SLURM_CONF", &client)
                    .args(["--flexmig", "-n1", "--gres=gpu:1", "bash", "-c"])
                    .arg(format!("echo CVD=$CUDA_VISIBLE_DEVICES FLEXMIG_LEAF=${{FLEXMIG_LEAF-unset}}; touch {}", marker.display())),
            )
            .unwrap();
            if keyword == "required" {
                assert!(!marker.exists(), "{keyword} {plugin}: a task ran on a node without the plugin: {}", text(&o));
            } else {
                assert!(marker.exists(), "{keyword} {plugin}: Slurm's behaviour changed, the task did not run: {}", text(&o));
                let out = String::from_utf8_lossy(&o.stdout);
                assert!(out.contains("CVD=0 FLEXMIG_LEAF=unset"), "{keyword} {plugin}: {}", text(&o));
            }
        }
    }
}

/// A bare `sbatch --flexmig` hands its inner steps the option as the text `(null)` (every release
/// from 22.05 through 26.05); the plugin reads it as the default mode.
#[test]
fn a_bare_sbatch_flexmig_reaches_inner_steps_as_null_and_binds_them() {
    let (c, leaves) = start(2);
    let out = c.dir().join("job.out");
    let script = format!(
        "#!/bin/bash\necho \"OPT=${{SLURM_SPANK__SLURM_SPANK_OPTION_flexmig_flexmig-unset}}\"\nsrun bash -c '{}'\n",
        print_vars().replace('\'', "'\\''")
    );
    c.write_file("job.sh", &script).unwrap();
    let o = Cluster::output(
        c.command("sbatch").args(["--wait", "--flexmig", "-n2", "--gres=gpu:1g.5gb:2", "-o"]).arg(&out).arg(c.dir().join("job.sh")),
    )
    .unwrap();
    let log = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(o.status.success(), "{}\njob output:\n{log}", text(&o));
    assert!(log.lines().any(|l| l == "OPT=(null)"), "the batch environment's option value changed:\n{log}");
    check_rank_step(&parse_tasks(&log), &leaves, 2);
}

/// A task's error reaches the user's terminal whole, in the form of the release:
/// `slurmstepd-<node>: error: flexmig: ...` (seen on 22.05 and 24.11), and from 25.05
/// `[<timestamp>] error: flexmig: ...` (seen on 26.05).
#[test]
fn a_task_error_reaches_the_terminal_in_the_release_form() {
    let (c, _) = start(1);
    let release = running_release(&c);
    let o = srun(&c, &["--flexmig", "-n3", "--gres=gpu:1g.5gb:2", "true"]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("3 tasks on localhost but only 2 MIG leaves"))
        .unwrap_or_else(|| panic!("the error did not reach the terminal: {}", text(&o)));
    let (prefix, message) = line.split_once("flexmig: ").unwrap_or_else(|| panic!("no `flexmig: ` in {line:?}"));
    assert!(message.contains("--gres=mig:3"), "the message is cut: {line:?}");
    let words: Vec<&str> = prefix.split_whitespace().collect();
    if release >= (25, 5) {
        assert_eq!(words.len(), 2, "{prefix:?} on Slurm {release:?}");
        let stamp = words[0].strip_prefix('[').and_then(|w| w.strip_suffix(']')).unwrap_or_else(|| panic!("no timestamp in {prefix:?}"));
        assert!(stamp.len() >= 19 && stamp.as_bytes()[4] == b'-' && stamp.as_bytes()[10] == b'T', "timestamp {stamp:?}");
        assert_eq!(words[1], "error:", "{prefix:?}");
    } else {
        assert_eq!(words, ["slurmstepd-localhost:", "error:"], "{prefix:?} on Slurm {release:?}");
    }
}
