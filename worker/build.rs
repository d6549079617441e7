//! Compiles the run guard (`guard/main.rs`) into a small executable of its own, which
//! `src/guard.rs` embeds: standard library only, so it starts as fast as `setpriv` does.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "guard/main.rs";
    println!("cargo:rerun-if-changed={source}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let mut command = Command::new(rustc);
    command
        .args([
            "--edition=2021",
            "--crate-type=bin",
            "--crate-name=run_guard",
        ])
        .args([
            "-Copt-level=2",
            "-Cpanic=abort",
            "-Cstrip=symbols",
            "-Cdebuginfo=0",
        ])
        // Linked statically: no dynamic loader at each start (a quarter of a millisecond less
        // a run, measured).
        .arg("-Ctarget-feature=+crt-static")
        .args(["--target", &target])
        .arg("-o")
        .arg(out.join("run-guard"))
        .arg(source);
    if let Some(linker) = std::env::var_os("RUSTC_LINKER") {
        command.arg("-C").arg({
            let mut arg = std::ffi::OsString::from("linker=");
            arg.push(linker);
            arg
        });
    }
    let status = command.status().expect("run rustc to build the run guard");
    assert!(status.success(), "building the run guard ({source}) failed");
}
