//! The preloaded library finds the real NCCL behind it however the application loaded NCCL: in
//! the global scope (preloaded after it, or linked by the program), or only as a dependency of a
//! module opened RTLD_LOCAL, which is how PyTorch's own libnccl.so.2 arrives (Python opens
//! extension modules RTLD_LOCAL). A stand-in libnccl.so.2 answers ncclGroupStart with 42.
mod common;
use common::{cc, library};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the stand-in NCCL, a module that links it, and a program that opens the module with
/// `mode` ("RTLD_LOCAL" or "RTLD_GLOBAL") and prints what ncclGroupStart returned.
fn build(dir: &Path, mode: &str) -> PathBuf {
    std::fs::write(dir.join("nccl.c"), "int ncclGroupStart(void) { return 42; }\nint ncclGroupEnd(void) { return 43; }\n").unwrap();
    std::fs::write(dir.join("ext.c"), "extern int ncclGroupStart(void);\nint call(void) { return ncclGroupStart(); }\n").unwrap();
    std::fs::write(
        dir.join("main.c"),
        format!(
            "#include <dlfcn.h>\n#include <stdio.h>\nint main(void) {{\n  void *h = dlopen(\"./libext.so\", RTLD_NOW | {mode});\n  \
             if (!h) {{ printf(\"dlopen: %s\\n\", dlerror()); return 2; }}\n  int (*call)(void) = (int (*)(void))dlsym(h, \"call\");\n  \
             printf(\"%d\\n\", call());\n  return 0;\n}}\n"
        ),
    )
    .unwrap();
    cc(dir, &["-shared", "-fPIC", "-Wl,-soname,libnccl.so.2", "-o", "libnccl.so.2", "nccl.c"]);
    cc(dir, &["-shared", "-fPIC", "-o", "libext.so", "ext.c", "-L.", "-l:libnccl.so.2", "-Wl,-rpath,$ORIGIN"]);
    cc(dir, &["-o", "main", "main.c", "-ldl"]);
    dir.join("main")
}

fn run(mode: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    let main = build(d.path(), mode);
    let out = Command::new(&main).current_dir(d.path()).env("LD_PRELOAD", library()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn nccl_loaded_by_a_local_module_is_found() {
    let out = run("RTLD_LOCAL");
    assert_eq!(out.trim(), "42", "the call must reach the stand-in NCCL through the library: {out}");
}

#[test]
fn nccl_in_the_global_scope_is_found() {
    let out = run("RTLD_GLOBAL");
    assert_eq!(out.trim(), "42", "{out}");
}
