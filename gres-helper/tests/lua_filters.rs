//! Runs the Lua filters' unit tests (slurm-conf/tests/test_filters.lua) with plain lua5.1 and
//! a mocked `slurm` table, so `cargo test` covers them.

use std::path::Path;
use std::process::Command;

#[test]
fn lua_filters_unit_tests_pass() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../slurm-conf/tests/test_filters.lua");
    let out = Command::new("lua5.1")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run lua5.1 ({e}): install it (apt-get install lua5.1; scripts/install-deps.sh does)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{} failed:\n{text}", script.display());
    let passed: u32 = text
        .split("lua filters: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line in:\n{text}"));
    assert!(passed > 0 && text.contains(" 0 failed"), "{text}");
}
