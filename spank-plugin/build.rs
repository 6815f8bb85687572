//! Generates the Rust bindings to `slurm/spank.h` (which also stamp the plugin with the version
//! of the Slurm it is built against: the plugin loader refuses a plugin of another major.minor),
//! and turns that version into cfgs for what differs between releases.
//!
//! `SLURM_INCLUDE_DIR` points at the directory holding `slurm/spank.h` (default `/usr/include`).

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-env-changed=SLURM_INCLUDE_DIR");
    let include = PathBuf::from(env::var("SLURM_INCLUDE_DIR").unwrap_or_else(|_| "/usr/include".into()));
    let spank_h = include.join("slurm/spank.h");
    if !spank_h.exists() {
        panic!(
            "{} not found: install Slurm's development headers (Debian: apt-get install libslurm-dev) \
             or set SLURM_INCLUDE_DIR to the directory that holds slurm/spank.h",
            spank_h.display()
        );
    }
    println!("cargo:rerun-if-changed={}", spank_h.display());
    println!("cargo:rerun-if-changed={}", include.join("slurm/slurm_version.h").display());

    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_arg(format!("-I{}", include.display()))
        .allowlist_function("spank_.*")
        .allowlist_type("spank_.*")
        .allowlist_var("SLURM_VERSION_NUMBER|ESPANK_SUCCESS")
        .rustified_enum("spank_context")
        .constified_enum_module("spank_item")
        .constified_enum_module("slurm_err_t")
        .constified_enum_module("spank_err")
        .derive_debug(true)
        .layout_tests(false)
        .generate()
        .expect("bindgen could not read slurm/spank.h");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    bindings.write_to_file(out.join("spank_bindings.rs")).expect("writing bindings");

    // Constants that live in slurm.h (too large to run through bindgen): read them with the
    // C preprocessor so they always match the installed Slurm.
    let expanded = cc::Build::new()
        .include(&include)
        .file("consts.c")
        .cargo_metadata(false)
        .try_expand()
        .expect("the C preprocessor could not read slurm/slurm.h (install libslurm-dev)");
    let text = String::from_utf8_lossy(&expanded);
    let batch = macro_value(&text, "flexmig_batch_script");
    let interactive = macro_value(&text, "flexmig_interactive_step");
    let version = parse_c_int(&macro_value(&text, "flexmig_slurm_version"));
    println!("cargo:rerun-if-changed=consts.c");
    std::fs::write(
        out.join("slurm_consts.rs"),
        format!(
            "/// `SLURM_BATCH_SCRIPT` from slurm.h: the step id of a batch script.\npub const SLURM_BATCH_SCRIPT: u32 = {};\n\
             /// `SLURM_INTERACTIVE_STEP` from slurm.h: the step id of `srun --interactive` (salloc's shell).\npub const SLURM_INTERACTIVE_STEP: u32 = {};\n",
            batch.trim_matches(|c| c == '(' || c == ')'),
            interactive.trim_matches(|c| c == '(' || c == ')')
        ),
    )
    .unwrap();
    // Slurm 25.05 lets a plugin choose what its failing init does (slurm_spank_init_failure_mode).
    println!("cargo::rustc-check-cfg=cfg(flexmig_init_failure_mode)");
    if version >= slurm_version(25, 5) {
        println!("cargo:rustc-cfg=flexmig_init_failure_mode");
    }
}

/// SLURM_VERSION_NUMBER of a release (SLURM_VERSION_NUM in slurm_version.h).
fn slurm_version(major: u64, minor: u64) -> u64 {
    (major << 16) | (minor << 8)
}

fn macro_value(expanded: &str, key: &str) -> String {
    // The preprocessor may spread one statement over several lines and insert line markers.
    let joined: String = expanded.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join(" ");
    let at = joined.find(&format!("{key} =")).unwrap_or_else(|| panic!("{key} not found in the preprocessed consts.c"));
    let rest = &joined[at + key.len() + 2..];
    rest[..rest.find(';').expect("statement ends with ;")].split_whitespace().collect::<Vec<_>>().join("")
}

fn parse_c_int(s: &str) -> u64 {
    let s = s.trim_matches(|c| c == '(' || c == ')' || c == ' ');
    let s = s.trim_end_matches(['u', 'U', 'l', 'L']);
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).unwrap()
    } else {
        s.parse().unwrap()
    }
}
