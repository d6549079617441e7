//! The run guard, as the local executor starts it: a small program (`worker/guard/main.rs`,
//! built by `worker/build.rs`) carried inside this binary, which each local run starts under so
//! that nothing the run starts outlives this process, even after `kill -9`. What the guard does
//! is described in its source.
//!
//! The guard is put in an anonymous in-memory file (`memfd_create`) once per process and started
//! from there, through `/proc/<this pid>/fd/<fd>`: nothing is written to disk, no other user can
//! swap it, and a `noexec` temporary directory does not matter.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The guard's executable.
const GUARD: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/run-guard"));

/// Where the guard can be started from, or `None` (said once in the log) when it cannot be
/// put in memory here.
pub fn program() -> Option<PathBuf> {
    static GUARD_FILE: OnceLock<Option<(OwnedFd, PathBuf)>> = OnceLock::new();
    GUARD_FILE
        .get_or_init(|| match load() {
            Ok(loaded) => Some(loaded),
            Err(err) => {
                tracing::warn!(error = %err, "cannot load the run guard; what local runs start themselves may outlive a kill -9 of this process");
                None
            }
        })
        .as_ref()
        .map(|(_, path)| path.clone())
}

/// The guard in a sealed-by-use in-memory file, kept open for the life of this process (closed
/// on exec, so no run inherits it).
fn load() -> std::io::Result<(OwnedFd, PathBuf)> {
    let fd = nix::sys::memfd::memfd_create(
        c"autopilot-run-guard",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(GUARD)?;
    let path = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        file.as_raw_fd()
    ));
    Ok((OwnedFd::from(file), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_runs_a_program_and_ends_as_it_ended() {
        let guard = program().expect("the guard loads");
        let parent = std::process::id().to_string();
        let status = std::process::Command::new(&guard)
            .args([parent.as_str(), "/bin/sh", "-c", "exit 7"])
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(7));
        let output = std::process::Command::new(&guard)
            .args([parent.as_str(), "/nonexistent/program"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(127));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("/nonexistent/program"),
            "{output:?}"
        );
    }
}
