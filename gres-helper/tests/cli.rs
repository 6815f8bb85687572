//! The helper's command line on fake nodes: fixed interfaces, exit codes, files.

use std::path::Path;
use std::process::{Command, Output};

fn helper() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flexmig-gres-helper"))
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let o: Output = cmd.output().expect("run the helper");
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn plan_json_is_the_fixed_interface_for_every_recorded_model() {
    for (model, n, small, double) in [
        ("A30", 4, "1g.6gb", None),
        ("A100-40GB", 7, "1g.5gb", Some("1g.10gb")),
        ("A100-80GB", 7, "1g.10gb", Some("1g.20gb")),
        ("H100-80GB", 7, "1g.10gb", Some("1g.20gb")),
        ("H100-94GB", 7, "1g.12gb", Some("1g.24gb")),
        ("H200", 7, "1g.18gb", Some("1g.35gb")),
        ("B200", 7, "1g.23gb", Some("1g.45gb")),
    ] {
        let (code, out, err) = run(helper().args(["plan", "--model", model, "--json"]));
        assert_eq!(code, 0, "{model}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.keys().collect::<Vec<_>>(), ["instances", "model"], "{out}");
        assert_eq!(v["model"], model);
        let inst = v["instances"].as_array().unwrap();
        assert_eq!(inst.len(), n, "{model}");
        for (i, x) in inst.iter().enumerate() {
            assert_eq!(x.as_object().unwrap().len(), 3);
            let want = match double {
                Some(d) if i == n - 1 => d,
                _ => small,
            };
            assert_eq!(x["profile"], want, "{model} {out}");
        }
        assert_eq!(inst.iter().map(|x| x["size"].as_u64().unwrap()).sum::<u64>(), if n == 4 { 4 } else { 8 });
    }
}

#[test]
fn plan_refuses_unknown_models_with_exit_2() {
    let (code, _, err) = run(helper().args(["plan", "--model", "V100", "--json"]));
    assert_eq!(code, 2);
    assert!(err.contains("not a recorded GPU model") && err.contains("H100-80GB"), "{err}");
}

fn dir_setup(model: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let node = d.path().join("node.toml");
    let (code, _, err) = run(helper().args(["fake-node", "create", "--model", model, "--gpus", "2", "--mig-disabled"]).arg(&node));
    assert_eq!(code, 0, "{err}");
    (d, node)
}

#[test]
fn apply_assert_export_round_trip_with_exit_codes() {
    let (d, node) = dir_setup("H200");
    let fk = |c: &mut Command| {
        c.arg("--fake-node").arg(&node);
    };
    let mut c = helper();
    fk(&mut c);
    let (code, out, _) = run(c.arg("assert"));
    assert_eq!(code, 1);
    assert!(out.contains("GPU 0: MIG mode is disabled") && out.contains("missing 1g.35gb at memory slice 6"), "{out}");
    let mut c = helper();
    fk(&mut c);
    let (code, out, err) = run(c.arg("apply"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("created").count(), 14, "{out}");
    let mut c = helper();
    fk(&mut c);
    let (code, exported, _) = run(c.arg("export"));
    assert_eq!(code, 0);
    let layout = d.path().join("layout.json");
    std::fs::write(&layout, &exported).unwrap();
    let mut c = helper();
    fk(&mut c);
    assert_eq!(run(c.arg("assert").arg("--layout").arg(&layout)).0, 0);
    // Another model's plan does not match: exit 2 (an error, not a difference).
    let other = d.path().join("other.json");
    let (_, plan_json, _) = run(helper().args(["plan", "--model", "B200", "--json"]));
    std::fs::write(&other, plan_json).unwrap();
    let mut c = helper();
    fk(&mut c);
    let (code, _, err) = run(c.arg("assert").arg("--layout").arg(&other));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the layout is for model B200"), "{err}");
}

#[test]
fn malformed_fake_node_is_an_error_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let node = d.path().join("node.toml");
    std::fs::write(&node, "version = 1\n[[gpu]]\nindex = 0\nmodel = \"H100-80GB\"\n").unwrap();
    let (code, _, err) = run(helper().arg("--fake-node").arg(&node).arg("export"));
    assert_eq!(code, 2);
    assert!(err.contains(&node.display().to_string()) && err.contains("malformed"), "{err}");
    let (code, _, err) = run(helper().arg("--fake-node").arg(Path::new("/nonexistent/node.toml")).arg("plan"));
    assert_eq!(code, 2);
    assert!(err.contains("fake-node create"), "{err}");
}

#[test]
fn gres_conf_then_verify_and_a_broken_inventory() {
    let (d, node) = dir_setup("A100-40GB");
    let dev = d.path().join("dev");
    let minors = d.path().join("mig-minors");
    let common = |c: &mut Command| {
        c.arg("--fake-node").arg(&node).arg("--dev-root").arg(&dev).arg("--mig-minors").arg(&minors);
    };
    let mut c = helper();
    common(&mut c);
    assert_eq!(run(c.arg("apply")).0, 0);
    std::fs::write(&minors, "config 1\nmonitor 2\n").unwrap();
    // Minors missing for the leaves: a clear error.
    let mut c = helper();
    common(&mut c);
    let (code, _, err) = run(c.arg("gres-conf"));
    assert_eq!(code, 2);
    assert!(err.contains("no entry gpu0/gi"), "{err}");
    let text: String = {
        let mut s = String::from("config 1\nmonitor 2\n");
        for g in 0..2u32 {
            for gi in 0..15u32 {
                s.push_str(&format!("gpu{g}/gi{gi}/access {}\n", 3 + (g * 15 + gi) * 9));
                for ci in 0..8u32 {
                    s.push_str(&format!("gpu{g}/gi{gi}/ci{ci}/access {}\n", 3 + (g * 15 + gi) * 9 + 1 + ci));
                }
            }
        }
        s
    };
    std::fs::write(&minors, text).unwrap();
    let (gres, inv, line, pol) =
        (d.path().join("gres.conf"), d.path().join("flexmig.toml"), d.path().join("node.conf"), d.path().join("flexmig_policy.lua"));
    let mut c = helper();
    common(&mut c);
    let (code, _, err) = run(c
        .arg("gres-conf")
        .arg("--gres-conf")
        .arg(&gres)
        .arg("--inventory")
        .arg(&inv)
        .arg("--node-conf")
        .arg(&line)
        .arg("--policy")
        .arg(&pol)
        .args(["--node-name", "gpu01"]));
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(&line).unwrap().contains("NodeName=gpu01 Gres=gpu:1g.10gb:2,gpu:1g.5gb:12"));
    // slurm.conf takes the node line gres-conf wrote through an Include; SLURM_CONF finds it.
    let slurm_conf = d.path().join("slurm.conf");
    std::fs::write(&slurm_conf, "ClusterName=x\nInclude node.conf\n").unwrap();
    let verify = |extra: &[&str]| {
        let mut c = helper();
        common(&mut c);
        c.env("SLURM_CONF", &slurm_conf);
        c.arg("verify").arg("--gres-conf").arg(&gres).arg("--inventory").arg(&inv).args(["--node-name", "gpu01"]);
        // No plugin installed where verify looks: its version check is skipped with a note.
        run(c.arg("--plugin").arg(d.path().join("flexmig.so")).args(extra))
    };
    let (code, out, err) = verify(&["--no-slurmd"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("slurm.conf's NodeName=gpu01 line"), "{out}");
    assert!(err.contains("verify: note: no plugin at") && err.contains("was not checked"), "{err}");
    // The admin's own node line with the types swapped: every GRES index would shift.
    let swapped = d.path().join("swapped.conf");
    std::fs::write(&swapped, "NodeName=gpu01 CPUs=64 Gres=gpu:1g.5gb:12,gpu:1g.10gb:2\n").unwrap();
    let (code, out, err) = verify(&["--no-slurmd", "--slurm-conf", swapped.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("swapped.conf line 1: Gres=gpu:1g.5gb:12,gpu:1g.10gb:2 lists the leaf types in another order"), "{out}");
    assert!(out.contains("set Gres=gpu:1g.10gb:2,gpu:1g.5gb:12,"), "{out}");
    let (code, out, err) = verify(&["--no-slurmd", "--no-slurm-conf", "--slurm-conf", swapped.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = verify(&["--no-slurmd", "--slurm-conf", "/nonexistent/slurm.conf"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/slurm.conf") && err.contains("--no-slurm-conf"), "{err}");
    // A hand-edited inventory that swaps two leaves' GRES indices.
    let t = std::fs::read_to_string(&inv).unwrap();
    let t = t.replacen("gres_index = 0\n", "gres_index = 99\n", 1).replacen("gres_index = 1\n", "gres_index = 0\n", 1).replacen(
        "gres_index = 99\n",
        "gres_index = 1\n",
        1,
    );
    std::fs::write(&inv, t).unwrap();
    let (code, out, _) = verify(&["--no-slurmd"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("wrong leaf"), "{out}");
    // A malformed inventory is a difference with the parser's message.
    std::fs::write(&inv, "version = 1\n[[leaf]]\nslot = 1\n").unwrap();
    let (code, out, _) = verify(&["--no-slurmd"]);
    assert_eq!(code, 1);
    assert!(out.contains("malformed"), "{out}");
}

#[test]
fn a_closed_stdout_ends_the_helper_quietly_without_a_panic() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;
    // `helper ... | head -1`: the reader is gone before the helper writes.
    let mut fds = [0; 2];
    // SAFETY: pipe() fills the two-element array; the read end is closed once and the write end is
    // owned by exactly one OwnedFd.
    let stdout = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        OwnedFd::from_raw_fd(fds[1])
    };
    let o = helper().args(["plan", "--model", "H200", "--json"]).stdout(std::process::Stdio::from(stdout)).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.signal(), Some(libc::SIGPIPE), "{:?}: {err}", o.status);
}

/// A fake 2 x A100-40GB node with MIG leaves applied and a driver-style mig-minors file;
/// returns the work dir and the global arguments pointing at it.
fn applied_node() -> (tempfile::TempDir, Vec<std::ffi::OsString>) {
    let (d, node) = dir_setup("A100-40GB");
    let minors = d.path().join("mig-minors");
    let global: Vec<std::ffi::OsString> =
        vec!["--fake-node".into(), node.into(), "--dev-root".into(), d.path().join("dev").into(), "--mig-minors".into(), minors.into()];
    assert_eq!(run(helper().args(&global).arg("apply")).0, 0);
    let (code, _, err) = run(helper().args(&global).args(["fake-node", "devices"]));
    // Without root mknod fails, but the mig-minors file is written first.
    assert!(code == 0 || err.contains("mknod"), "{err}");
    (d, global)
}

#[test]
fn gres_conf_changes_none_of_its_files_when_one_cannot_be_written() {
    let (d, global) = applied_node();
    let p = |n: &str| d.path().join(n);
    let gres_conf = |inventory: &Path| {
        let mut c = helper();
        c.args(&global).arg("gres-conf").arg("--gres-conf").arg(p("gres.conf")).arg("--node-conf").arg(p("node.conf"));
        c.arg("--inventory").arg(inventory).arg("--policy").arg(p("flexmig_policy.lua")).args(["--node-name", "gpu01"]);
        run(&mut c)
    };
    let (code, _, err) = gres_conf(&p("flexmig.toml"));
    assert_eq!(code, 0, "{err}");
    // The old set: stale files an earlier gres-conf wrote.
    let names = ["gres.conf", "node.conf", "flexmig.toml", "flexmig_policy.lua"];
    for n in names {
        std::fs::write(p(n), format!("old {n}\n")).unwrap();
    }
    // Inventory targets that cannot be written even as root: under a regular file (no
    // directory to put a temporary in), and an existing directory (nothing to rename over).
    std::fs::write(p("not-a-dir"), "").unwrap();
    std::fs::create_dir(p("inventory-dir")).unwrap();
    for bad in [p("not-a-dir").join("flexmig.toml"), p("inventory-dir")] {
        let (code, _, err) = gres_conf(&bad);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&bad.display().to_string()) && err.contains("none of the files was changed"), "{err}");
        for n in names {
            assert_eq!(std::fs::read_to_string(p(n)).unwrap(), format!("old {n}\n"), "{n} changed although {} failed", bad.display());
        }
        let left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("flexmig-tmp") || n.contains("flexmig-old"))
            .collect();
        assert!(left.is_empty(), "temporaries left: {left:?}");
    }
}

/// A stdout whose reader is already gone, as in `helper ... | head -1` once head has exited.
fn closed_stdout() -> std::process::Stdio {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe() fills the two-element array; the read end is closed once and the write end is
    // owned by exactly one OwnedFd.
    let write_end = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        OwnedFd::from_raw_fd(fds[1])
    };
    std::process::Stdio::from(write_end)
}

#[test]
fn apply_into_a_closed_pipe_still_reaches_the_planned_layout() {
    let (_d, node) = dir_setup("H100-80GB");
    let o = helper().arg("--fake-node").arg(&node).args(["apply", "--force"]).stdout(closed_stdout()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.code(), Some(0), "{:?}: {err}", o.status);
    let (code, out, err) = run(helper().arg("--fake-node").arg(&node).arg("assert"));
    assert_eq!(code, 0, "apply stopped halfway:\n{out}{err}");
}

#[test]
fn apply_refuses_a_gpu_whose_processes_cannot_be_listed() {
    let (_d, node) = dir_setup("A100-80GB");
    let text = std::fs::read_to_string(&node).unwrap();
    // GPU 1's process query fails, as NVML's can (permissions, a driver fault).
    let broken = text.replacen("index = 1\n", "index = 1\nprocess_query_error = \"Insufficient Permissions\"\n", 1);
    assert_ne!(broken, text);
    std::fs::write(&node, &broken).unwrap();
    let (code, _, err) = run(helper().arg("--fake-node").arg(&node).arg("apply"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("GPU 1") && err.contains("processes cannot be listed") && err.contains("Insufficient Permissions"), "{err}");
    assert!(err.contains("nothing was changed") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&node).unwrap(), broken, "a refused apply changed the node");
    let (code, out, err) = run(helper().arg("--fake-node").arg(&node).args(["apply", "--force"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("warning: GPU 1") && out.contains("--force"), "{out}");
    assert_eq!(run(helper().arg("--fake-node").arg(&node).arg("assert")).0, 0);
}

#[test]
fn exit_statuses_are_documented_and_a_bad_command_line_is_2() {
    for args in [&["--help"][..], &["verify", "--help"], &["assert", "--help"]] {
        let (code, out, err) = run(helper().args(args));
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(
            out.contains("Exit status:") && out.contains("1  a check found differences") && out.contains("2  bad input or an error"),
            "{args:?}: {out}"
        );
    }
    let (code, _, err) = run(helper().args(["verify", "--no-such-flag"]));
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(helper().args(["verify", "--no-plugin", "--plugin", "/x.so"]));
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(helper().arg("no-such-verb"));
    assert_eq!(code, 2, "{err}");
}

/// An applied fake node with gres.conf and the inventory written by gres-conf; returns the
/// work dir and the arguments of a `verify` that checks them without slurmd or slurm.conf.
fn configured_node() -> (tempfile::TempDir, Vec<std::ffi::OsString>) {
    let (d, global) = applied_node();
    let (gres, inv) = (d.path().join("gres.conf"), d.path().join("flexmig.toml"));
    let (code, _, err) = run(helper().args(&global).arg("gres-conf").arg("--gres-conf").arg(&gres).arg("--inventory").arg(&inv));
    assert_eq!(code, 0, "{err}");
    let mut verify = global;
    verify.extend(["verify".into(), "--gres-conf".into(), gres.into(), "--inventory".into(), inv.into()]);
    verify.extend(["--no-slurmd".into(), "--no-slurm-conf".into()]);
    (d, verify)
}

/// An executable `slurmd` that prints `text` for `-V` and exits with `code`.
fn fake_slurmd(dir: &Path, name: &str, text: &str, code: i32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\necho '{text}'\nexit {code}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A shared object exporting `plugin_version = stamp`, as Slurm's plugins do.
fn stamped_so(dir: &Path, stamp: u32) -> std::path::PathBuf {
    let (c, so) = (dir.join(format!("stamp-{stamp:x}.c")), dir.join(format!("stamp-{stamp:x}.so")));
    std::fs::write(&c, format!("const unsigned int plugin_version = {stamp}u;\n")).unwrap();
    let st = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&c).status();
    assert!(st.is_ok_and(|s| s.success()), "building a stamped .so needs a C compiler (apt-get install gcc)");
    so
}

#[test]
fn verify_checks_the_plugins_slurm_version_stamp() {
    let (d, verify) = configured_node();
    let plugin = stamped_so(d.path(), 0x16_05_08);
    let slurmd = |name: &str, text: &str, code: i32| fake_slurmd(d.path(), name, text, code);
    let (same, newer, micro) =
        (slurmd("same", "slurm 22.05.8", 0), slurmd("newer", "slurm 23.11.10", 0), slurmd("micro", "slurm-wlm 22.05.11", 0));
    let (broken, silent) = (slurmd("broken", "slurmd: fatal: oops", 1), slurmd("silent", "", 0));
    let check = |plugin: &Path, slurmd: &Path| run(helper().args(&verify).arg("--plugin").arg(plugin).arg("--slurmd").arg(slurmd));

    let (code, out, err) = check(&plugin, &same);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{}'s Slurm version stamp agree", plugin.display())), "{out}");
    // Slurm compares major.minor only.
    let (code, out, err) = check(&plugin, &micro);
    assert_eq!(code, 0, "{out}{err}");
    // Another release: Slurm would refuse the plugin.
    let (code, out, err) = check(&plugin, &newer);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("is built for Slurm 22.05 (plugin_version 0x160508, 22.05.8), but this node runs Slurm 23.11.10"), "{out}");
    assert!(out.contains("Incompatible Slurm plugin") && out.contains("rebuild it"), "{out}");
    // A file Slurm cannot load at all is a difference too.
    let text = d.path().join("text.so");
    std::fs::write(&text, "not a plugin").unwrap();
    let (code, out, err) = check(&text, &same);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("is not an ELF shared object"), "{out}");
    // No Slurm release to compare with: an error that says how to skip the check.
    for bad in [&broken, &silent, &d.path().join("no-slurmd")] {
        let (code, out, err) = check(&plugin, bad);
        assert_eq!(code, 2, "{out}{err}");
        assert!(err.contains(&format!("{} -V", bad.display())), "{err}");
    }
    assert!(check(&plugin, &d.path().join("no-slurmd")).2.contains("--no-plugin"));
    // No plugin installed: a note, and the rest is verified.
    let (code, out, err) = check(&d.path().join("absent.so"), &broken);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("verify: note: no plugin at") && err.contains("absent.so") && !out.contains("stamp"), "{err}");
    let (code, out, err) = run(helper().args(&verify).arg("--no-plugin").arg("--slurmd").arg(&broken));
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("note") && !out.contains("stamp"), "{out}{err}");
}

#[test]
fn verify_reads_the_stamp_of_the_built_plugin_against_the_real_slurmd() {
    // target/debug/libflexmig_spank.so beside the helper (`cargo build -p flexmig-spank`, which
    // scripts/test.sh runs first) and the slurmd of this machine.
    let plugin = Path::new(env!("CARGO_BIN_EXE_flexmig-gres-helper")).with_file_name("libflexmig_spank.so");
    let real = Command::new("slurmd").arg("-V").output().ok().filter(|o| o.status.success());
    let (Some(real), true) = (real, plugin.exists()) else {
        let why = format!("needs {} (cargo build -p flexmig-spank) and slurmd on PATH", plugin.display());
        // CI builds the plugin first (scripts/test.sh), so there a missing one is a failure.
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("SKIPPED: {why}");
        return;
    };
    let (d, verify) = configured_node();
    let (code, out, err) = run(helper().args(&verify).arg("--plugin").arg(&plugin));
    assert_eq!(code, 0, "the plugin is built against this machine's Slurm headers: {out}{err}");
    assert!(out.contains("libflexmig_spank.so's Slurm version stamp agree"), "{out}");
    let running = String::from_utf8_lossy(&real.stdout).into_owned();
    let release: String = running.split_whitespace().last().unwrap_or_default().split('.').take(2).collect::<Vec<_>>().join(".");
    let other = if release == "26.05" { "slurm 25.11.1" } else { "slurm 26.05.0" };
    let slurmd = fake_slurmd(d.path(), "slurmd", other, 0);
    let (code, out, err) = run(helper().args(&verify).arg("--plugin").arg(&plugin).arg("--slurmd").arg(&slurmd));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!("is built for Slurm {release} ")) && out.contains(&format!("this node runs Slurm {}", &other[6..])),
        "{out}"
    );
}

/// A small ELF shared library as NCCL's carries its banner ("NCCL version X.Y.Z+cudaA.B", in
/// .rodata) and its API symbol, plus any `extra` strings (the flexmig patch's INFO format string).
fn fake_libnccl(dir: &Path, name: &str, banner: &str, extra: &[&str]) -> std::path::PathBuf {
    let (c, so) = (dir.join(format!("{name}.c")), dir.join(format!("{name}.so")));
    let mut text = format!("const char ncclVersionBanner[] = \"{banner}\";\nint ncclCommInitRank(void) {{ return 0; }}\n");
    for (i, s) in extra.iter().enumerate() {
        text.push_str(&format!("const char flexmigString{i}[] = \"{s}\";\n"));
    }
    std::fs::write(&c, text).unwrap();
    let st = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&c).status();
    assert!(st.is_ok_and(|s| s.success()), "building a fake libnccl needs a C compiler (apt-get install gcc)");
    so
}

/// A `nccl status` case: library name, banner, extra strings, exit status, what the line must say.
type StatusCase = (&'static str, &'static str, &'static [&'static str], i32, &'static [&'static str]);

#[test]
fn nccl_status_for_each_release_kind_with_its_exit_status() {
    let d = tempfile::tempdir().unwrap();
    const MARKER: &str = "flexmig-mig-patch/1: rank %d busId %lx NCCL_MIG_ID %s";
    let cases: &[StatusCase] = &[
        ("stock-2.29.7", "NCCL version 2.29.7+cuda13.0", &[], 1, &["unusable: stock NCCL 2.29.7", "Duplicate GPU detected"]),
        (
            "stock-2.30.3",
            "NCCL version 2.30.3+cuda12.9",
            &[],
            1,
            &[
                "unusable on MIG: stock NCCL 2.30.3",
                "P2P (CUDA IPC)",
                "build the guard patch: `flexmig-gres-helper nccl install --source nccl-2.30.3 ",
            ],
        ),
        (
            "stock-2.30.7",
            "NCCL version 2.30.7+cuda13.0",
            &[],
            1,
            &["unusable on MIG: stock NCCL 2.30.7", "nccl install --source nccl-2.30.7 "],
        ),
        (
            "stock-2.31.2",
            "NCCL version 2.31.2+cuda13.0",
            &[],
            0,
            &[
                "stock with MIG support: NCCL 2.31.2",
                "NCCL_MULTI_RANK_GPU_ENABLE=1",
                "NCCL_MNNVL_ENABLE=0",
                "never NCCL_NVLS_ENABLE=1",
                "go over NET",
            ],
        ),
        ("stock-2.32.3", "NCCL version 2.32.3+cuda13.2", &[], 0, &["stock with MIG support: NCCL 2.32.3", "not SHM, in stock NCCL"]),
        ("pre-2.31.0a7", "NCCL version 2.31.0a7+cuda13.0", &[], 1, &["2.31.0a7 is a pre-release"]),
        (
            "patched-2.28.9",
            "NCCL version 2.28.9+cuda13.0",
            &[MARKER, "flexmig-shm-ce/1: copy engines driven from the rank's stream"],
            0,
            &["patched: NCCL 2.28.9 with the flexmig MIG patch", "runs without the proxy thread"],
        ),
        ("guarded-2.30.7", "NCCL version 2.30.7+cuda13.0", &[MARKER], 0, &["patched: NCCL 2.30.7 with the flexmig MIG patch"]),
        ("guarded-2.30.4", "NCCL version 2.30.4+cuda13.0", &[MARKER], 0, &["patched: NCCL 2.30.4 with the flexmig MIG patch"]),
    ];
    for (name, banner, extra, code, says) in cases {
        let so = fake_libnccl(d.path(), name, banner, extra);
        let (got, out, err) = run(helper().args(["nccl", "status"]).arg(&so));
        assert_eq!(got, *code, "{name}: {out}{err}");
        assert!(out.starts_with(&format!("{}: ", so.display())), "{name}: {out}");
        for s in *says {
            assert!(out.contains(s), "{name}: {s:?} missing in {out}");
        }
    }
    // Not libnccl, and not there: exit 2 with what is wrong.
    let other = d.path().join("libother.so");
    std::fs::write(d.path().join("other.c"), "int other(void) { return 1; }\n").unwrap();
    assert!(Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&other).arg(d.path().join("other.c")).status().unwrap().success());
    let (code, _, err) = run(helper().args(["nccl", "status"]).arg(&other));
    assert_eq!(code, 2);
    assert!(err.contains("does not look like libnccl"), "{err}");
    let (code, _, err) = run(helper().args(["nccl", "status"]).arg(d.path().join("missing.so")));
    assert_eq!(code, 2);
    assert!(err.contains("missing.so"), "{err}");
}

/// An NCCL source tree of release `version` holding just what `patch_file` (under nccl-patch/)
/// expects: each patched file made of its hunks' context and removed lines.
fn tree_matching(dir: &Path, version: &str, patch_file: &str) -> std::path::PathBuf {
    let root = dir.join(format!("nccl-{version}"));
    let diff = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../nccl-patch").join(patch_file)).unwrap();
    let mut files: Vec<(String, String)> = Vec::new();
    for line in diff.lines() {
        if let Some(name) = line.strip_prefix("+++ b/") {
            files.push((name.to_string(), String::new()));
        } else if line.starts_with("@@") {
            files.last_mut().unwrap().1.push_str("// elsewhere\n");
        } else if let Some((_, text)) = files.last_mut() {
            if let Some(l) = line.strip_prefix(' ').or_else(|| line.strip_prefix('-').filter(|_| !line.starts_with("---"))) {
                text.push_str(l);
                text.push('\n');
            } else if line.is_empty() {
                text.push('\n');
            }
        }
    }
    for (name, text) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let (major, rest) = version.split_once('.').unwrap();
    let (minor, patch) = rest.split_once('.').unwrap();
    std::fs::create_dir_all(root.join("makefiles")).unwrap();
    std::fs::write(
        root.join("makefiles/version.mk"),
        format!("NCCL_MAJOR   := {major}\nNCCL_MINOR   := {minor}\nNCCL_PATCH   := {patch}\nNCCL_SUFFIX  :=\n"),
    )
    .unwrap();
    root
}

#[test]
fn nccl_install_takes_the_guard_patch_for_every_2_30_release_it_matches() {
    let d = tempfile::tempdir().unwrap();
    // 2.30.4: the 2.30.3 patch, checked against it.
    let tree = tree_matching(d.path(), "2.30.4", "nccl-2.30.3.patch");
    let (code, out, err) = run(helper().args(["nccl", "install", "--check-only", "--source"]).arg(&tree));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is NCCL 2.30.4") && out.contains("nccl-2.30.3.patch applies cleanly (3 files)"), "{out}");
    assert!(!out.contains("is not a release"), "{out}");
    // A 2.30 release no patch was checked against: the one that matches, said so.
    for patch in ["nccl-2.30.3.patch", "nccl-2.30.7.patch"] {
        let dir = d.path().join(patch);
        let tree = tree_matching(&dir, "2.30.9", patch);
        let (code, out, err) = run(helper().args(["nccl", "install", "--check-only", "--source"]).arg(&tree));
        assert_eq!(code, 0, "{patch}: {out}{err}");
        assert!(out.contains(&format!("NCCL 2.30.9 is not a release {patch} was checked against")), "{out}");
        assert!(out.contains(&format!("{patch} applies cleanly")), "{out}");
        // --patch-only writes it; a second check sees it applied.
        let prefix = dir.join("prefix");
        let (code, out, err) = run(helper().args(["nccl", "install", "--patch-only", "--source"]).arg(&tree).arg("--prefix").arg(&prefix));
        assert_eq!(code, 0, "{out}{err}");
        let work = prefix.join("src/nccl-2.30.9");
        assert!(std::fs::read_to_string(work.join("src/init.cc")).unwrap().contains("flexmig-mig-patch/1"));
        let (code, out, _) = run(helper().args(["nccl", "install", "--check-only", "--source"]).arg(&work));
        assert_eq!(code, 0);
        assert!(out.contains(&format!("{patch} is already applied")), "{out}");
    }
    // A 2.30 tree neither matches: refused with exit 2, nothing built.
    let tree = tree_matching(&d.path().join("odd"), "2.30.9", "nccl-2.30.7.patch");
    std::fs::write(tree.join("src/include/transport.h"), "struct ncclPeerInfo {\n  int rank;\n};\n").unwrap();
    let (code, _, err) = run(helper().args(["nccl", "install", "--check-only", "--source"]).arg(&tree));
    assert_eq!(code, 2);
    assert!(err.contains("no flexmig guard patch applies to NCCL 2.30.9") && err.contains("src/include/transport.h"), "{err}");
}

#[test]
fn nccl_install_offers_no_patch_for_nvidias_mig_support() {
    let d = tempfile::tempdir().unwrap();
    for v in ["2.31.2", "2.32.3"] {
        let tree = tree_matching(&d.path().join(v), v, "nccl-2.30.7.patch");
        for args in [&["--check-only"][..], &["--patch-only", "--prefix", "/nonexistent/prefix"]] {
            let (code, out, err) = run(helper().args(["nccl", "install", "--source"]).arg(&tree).args(args));
            assert_eq!(code, 2, "{v} {args:?}: {out}{err}");
            for want in [
                &format!("NCCL {v} needs no flexmig patch for leaves of one GPU") as &str,
                "over SHM",
                "NCCL_MULTI_RANK_GPU_ENABLE=1 NCCL_MNNVL_ENABLE=0 NCCL_NVLS_ENABLE=0",
                "stock NCCL takes NET",
                "none is offered",
                "--no-patch",
            ] {
                assert!(err.contains(want), "{v} {args:?}: {want:?} missing in {err}");
            }
        }
        assert!(!Path::new("/nonexistent/prefix").exists());
    }
    // A pre-release (NCCL_SUFFIX), as NCCL's development branch carries: refused as such.
    let tree = tree_matching(&d.path().join("pre"), "2.31.0", "nccl-2.30.7.patch");
    let mk = tree.join("makefiles/version.mk");
    std::fs::write(&mk, std::fs::read_to_string(&mk).unwrap().replace("NCCL_SUFFIX  :=", "NCCL_SUFFIX  := a7")).unwrap();
    let (code, out, err) = run(helper().args(["nccl", "install", "--check-only", "--source"]).arg(&tree));
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("is NCCL 2.31.0a7") && err.contains("NCCL 2.31.0a7 is a pre-release"), "{out}{err}");
}

#[test]
fn emulate_cuts_gpus_without_mig_into_leaves_and_refuses_gpus_in_mig_mode() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n).display().to_string();
    let (code, _, err) = run(helper().args(["fake-node", "create", "--model", "H200", "--gpus", "2", "--mig-disabled", &p("node.toml")]));
    assert_eq!(code, 0, "{err}");
    let g = ["--fake-node", &p("node.toml"), "--dev-root", &p("dev"), "--mig-minors", &p("mig-minors")];
    let (code, _, err) = run(helper().args(g).args(["fake-node", "devices"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(helper().args(g).args([
        "emulate",
        "--leaves-per-gpu",
        "4",
        "--gres-conf",
        &p("gres.conf"),
        "--node-conf",
        &p("node.conf"),
        "--inventory",
        &p("flexmig.toml"),
        "--policy",
        &p("policy.lua"),
        "--node-name",
        "gpu01",
    ]));
    assert_eq!(code, 0, "{err}");
    let gres = std::fs::read_to_string(p("gres.conf")).unwrap();
    let lines: Vec<&str> = gres.lines().filter(|l| l.starts_with("Name=")).collect();
    assert_eq!(lines.len(), 8, "{gres}");
    assert!(lines[0].starts_with("Name=gpu Type=1g.18gb File="), "the model's small profile: {}", lines[0]);
    assert!(std::fs::read_to_string(p("node.conf")).unwrap().contains("NodeName=gpu01 Gres=gpu:1g.18gb:8"));
    let inv = leaf_model::Inventory::load(Path::new(&p("flexmig.toml"))).unwrap();
    assert_eq!(inv.emulation.as_ref().map(|e| e.sm_percent), Some(25), "100 / 4 per leaf");
    for (i, l) in inv.leaves.iter().enumerate() {
        assert_eq!(l.gpu, i as u32 % 2, "leaves alternate GPUs in GRES order");
        let gpu = inv.gpu(l.gpu).unwrap();
        assert_eq!(l.cuda_device.as_deref(), Some(gpu.uuid.as_str()), "an emulated leaf names its GPU");
        assert!(l.uuid.starts_with("MIG-emu"), "{}", l.uuid);
        // Its device file aliases the GPU's: same numbers, its own path.
        let file = lines[i].split("File=").nth(1).unwrap();
        let (alias, gpu_dev) =
            (std::fs::metadata(file).unwrap(), std::fs::metadata(d.path().join(format!("dev/nvidia{}", l.gpu))).unwrap());
        assert!(alias.file_type().is_char_device());
        assert_eq!(alias.rdev(), gpu_dev.rdev());
    }
    assert!(std::fs::read_to_string(p("policy.lua")).unwrap().contains("leaves_per_node = 8"));
    // A GPU in MIG mode is refused, and nothing is written.
    let (code, _, err) = run(helper().args(["fake-node", "create", "--model", "H200", "--gpus", "1", &p("mig.toml")]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(helper().args([
        "--fake-node",
        &p("mig.toml"),
        "--dev-root",
        &p("dev"),
        "emulate",
        "--leaves-per-gpu",
        "2",
        "--gres-conf",
        &p("mig-gres.conf"),
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is in MIG mode") && err.contains("gres-conf"), "{err}");
    assert!(!Path::new(&p("mig-gres.conf")).exists());
}

#[test]
fn status_without_slurm_shows_the_records_and_a_stale_one() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n).display().to_string();
    let (code, _, err) =
        run(helper().args(["fake-node", "create", "--model", "A100-40GB", "--gpus", "2", "--mig-disabled", &p("node.toml")]));
    assert_eq!(code, 0, "{err}");
    let g = ["--fake-node", &p("node.toml"), "--dev-root", &p("dev"), "--mig-minors", &p("mig-minors")];
    let (code, _, err) = run(helper().args(g).args(["fake-node", "devices"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        run(helper().args(g).args(["emulate", "--leaves-per-gpu", "2", "--inventory", &p("flexmig.toml"), "--gres-conf", &p("gres.conf")]));
    assert_eq!(code, 0, "{err}");
    let inv = leaf_model::Inventory::load(Path::new(&p("flexmig.toml"))).unwrap();
    std::fs::create_dir(p("holders")).unwrap();
    // A live holder (this test's own process) and one whose process is gone.
    let me = std::process::id();
    let live = leaf_model::holders::Holder {
        version: leaf_model::holders::VERSION,
        job: 12,
        step: 0,
        task: 0,
        rank: 0,
        uid: 0,
        pid: me,
        pid_start: leaf_model::holders::process_start(me).unwrap(),
        leaves: vec![inv.leaves[0].uuid.clone()],
    };
    std::fs::write(p("holders/12.0.0.toml"), live.to_toml_string()).unwrap();
    let args = ["status", "--no-slurm", "--node-name", "n1", "--inventory", &p("flexmig.toml"), "--holders-dir", &p("holders")];
    let (code, out, err) = run(helper().args(args));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("job 12 r0") && out.contains("1 of 4 leaves busy on n1 (without Slurm's view)"), "{out}");
    let gone = leaf_model::holders::Holder { job: 13, pid: u32::MAX - 3, leaves: vec![inv.leaves[1].uuid.clone()], ..live };
    std::fs::write(p("holders/13.0.0.toml"), gone.to_toml_string()).unwrap();
    let (code, out, _) = run(helper().args(args));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("job 13 r0 (gone)") && out.contains("DISAGREE:") && out.contains("outlived its process"), "{out}");
}
