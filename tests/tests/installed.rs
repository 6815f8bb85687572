//! The Debian packages as installed (`scripts/package-test.sh` installs them with apt on the
//! host and in the release chroots, then runs every suite against the installed files and these
//! tests with `--ignored`). Ignored in a plain `cargo test`: they need the packages installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use flexmig_integration::helper_node::helper_bin;
use flexmig_integration::task_env::{check_rank_step, parse_tasks, print_vars, srun, start, text};
use flexmig_integration::{plugin_so, Cluster};

const SNIPPET: &str = "/etc/slurm/plugstack.conf.d/flexmig.conf";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stdout(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `24.11` of `slurm 24.11.5`.
fn running_release(c: &Cluster) -> String {
    let o = Cluster::output(c.command("srun").arg("--version")).unwrap();
    let v = String::from_utf8_lossy(&o.stdout).split_whitespace().nth(1).unwrap().to_string();
    v.split('.').take(2).collect::<Vec<_>>().join(".")
}

fn dpkg_field(package: &str, field: &str) -> String {
    stdout(Command::new("dpkg-query").args(["-W", &format!("-f=${{{field}}}"), package]))
}

#[test]
#[ignore = "needs the packages installed: scripts/package-test.sh"]
fn the_plugin_package_of_the_running_release_owns_the_plugin_and_pins_slurm() {
    let (c, _) = start(1);
    let release = running_release(&c);
    let so = plugin_so().unwrap();
    assert!(
        so.starts_with("/usr/lib") && so.ends_with("slurm-wlm/flexmig.so"),
        "FLEXMIG_SPANK_SO={} is not the installed plugin",
        so.display()
    );
    let package = format!("flexmig-slurm-plugin-{release}");
    let owner = stdout(Command::new("dpkg").arg("-S").arg(&so));
    assert_eq!(owner, format!("{package}: {}", so.display()));
    // The pin: exactly this Slurm release, and the installed Slurm satisfies it.
    let (major, minor) = release.split_once('.').unwrap();
    let next = format!("{major}.{:02}", minor.parse::<u32>().unwrap() + 1);
    let depends = dpkg_field(&package, "Depends");
    for want in [format!("slurm-wlm-basic-plugins (>= {release}~)"), format!("slurm-wlm-basic-plugins (<< {next}~)")] {
        assert!(depends.contains(&want), "{package} Depends: {depends}");
    }
    let slurm = dpkg_field("slurm-wlm-basic-plugins", "Version");
    for (op, v) in [("ge", format!("{release}~")), ("lt", format!("{next}~"))] {
        let ok = Command::new("dpkg").args(["--compare-versions", &slurm, op, &v]).status().unwrap().success();
        assert!(ok, "installed Slurm {slurm} does not satisfy {op} {v}");
    }
    // One plugin package at a time: they all install the same file.
    for f in ["Provides", "Conflicts", "Replaces"] {
        assert_eq!(dpkg_field(&package, f), "flexmig-slurm-plugin", "{f}");
    }
    assert!(dpkg_field(&package, "Conffiles").contains(SNIPPET), "{SNIPPET} is not a conffile of {package}");
    // Debian's plugstack.conf reads the snippet directory.
    let plugstack = std::fs::read_to_string("/etc/slurm/plugstack.conf").unwrap();
    assert!(plugstack.lines().any(|l| l.trim() == "include /etc/slurm/plugstack.conf.d/*.conf"), "{plugstack}");
}

/// The snippet changes nothing until the admin enables it; enabled, its line (with the
/// cluster's inventory and lock directory) loads the installed plugin and binds tasks.
#[test]
#[ignore = "needs the packages installed: scripts/package-test.sh"]
fn the_packaged_plugstack_line_is_off_until_enabled_and_then_binds_tasks() {
    let snippet = std::fs::read_to_string(SNIPPET).unwrap();
    let active: Vec<&str> = snippet.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).collect();
    assert!(active.is_empty(), "the packaged snippet is active: {active:?}");
    let line = snippet.lines().find_map(|l| l.strip_prefix("#required ")).unwrap_or_else(|| panic!("no #required line in:\n{snippet}"));
    let mut words = line.split_whitespace();
    let path = words.next().unwrap();
    assert_eq!(Path::new(path), plugin_so().unwrap(), "the snippet names another plugin than the installed one");
    let args: Vec<&str> = words.collect();
    assert_eq!(args, ["inventory=/etc/slurm/flexmig.toml"], "the packaged arguments");

    let (c, leaves) = start(2);
    // Enabled as the admin enables it, pointed at the test cluster's inventory and lock directory.
    c.write_file("plugstack.conf", &format!("required {path} inventory={d}/flexmig.toml lock_dir={d}/locks\n", d = c.dir().display()))
        .unwrap();
    let o = srun(&c, &["--flexmig", "-n2", "--gres=gpu:1g.5gb:2", "bash", "-c", &print_vars()]);
    assert!(o.status.success(), "{}", text(&o));
    check_rank_step(&parse_tasks(&String::from_utf8_lossy(&o.stdout)), &leaves, 2);
}

#[test]
#[ignore = "needs the packages installed: scripts/package-test.sh"]
fn the_helper_package_ships_the_helper_filters_patches_and_help() {
    let bin = helper_bin().unwrap();
    assert_eq!(bin, Path::new("/usr/bin/flexmig-gres-helper"), "FLEXMIG_GRES_HELPER is not the installed helper");
    assert_eq!(stdout(Command::new("dpkg").arg("-S").arg(&bin)), "flexmig-gres-helper: /usr/bin/flexmig-gres-helper");
    let version = dpkg_field("flexmig-gres-helper", "Version");
    assert_eq!(stdout(Command::new(&bin).arg("--version")), format!("flexmig-gres-helper {version}"));
    // The packages were built from this tree: what they ship is what it holds.
    for lua in ["job_submit.lua", "cli_filter.lua", "flexmig_filter.lua", "flexmig_policy.lua"] {
        let installed =
            std::fs::read(Path::new("/usr/share/flexmig").join(lua)).unwrap_or_else(|e| panic!("/usr/share/flexmig/{lua}: {e}"));
        assert_eq!(installed, std::fs::read(repo().join("slurm-conf").join(lua)).unwrap(), "{lua}");
    }
    let mut patches = 0;
    for e in std::fs::read_dir(repo().join("nccl-patch")).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        if name.ends_with(".patch") {
            let installed = std::fs::read(Path::new("/usr/share/flexmig/nccl-patch").join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(installed, std::fs::read(e.path()).unwrap(), "{name}");
            patches += 1;
        }
    }
    assert!(patches > 0);
    for doc in [
        "/usr/share/doc/flexmig-gres-helper/help.txt.gz",
        "/usr/share/man/man1/flexmig-gres-helper.1.gz",
        "/usr/share/doc/flexmig-gres-helper/copyright",
    ] {
        assert!(Path::new(doc).is_file(), "{doc} missing");
    }
}
