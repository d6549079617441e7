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

/// `MFD_EXEC` (Linux 6.3): the in-memory file may be executed even where `vm.memfd_noexec`
/// makes that the exception. Older kernels do not know the flag, and allow it anyway.
const MFD_EXEC: std::os::raw::c_uint = 0x0010;

/// The guard in an in-memory file, kept open for the life of this process (closed on exec, so
/// no run inherits it), and tried once: a system that forbids executing it is found here, not
/// at every run.
fn load() -> std::io::Result<(OwnedFd, PathBuf)> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let name = c"autopilot-run-guard";
    let executable = MFdFlags::MFD_CLOEXEC | MFdFlags::from_bits_retain(MFD_EXEC);
    let fd = match memfd_create(name, executable) {
        Err(nix::errno::Errno::EINVAL) => memfd_create(name, MFdFlags::MFD_CLOEXEC)?,
        fd => fd?,
    };
    let mut file = std::fs::File::from(fd);
    file.write_all(GUARD)?;
    let path = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        file.as_raw_fd()
    ));
    // Without arguments it says how to use it and ends with 127.
    let tried = std::process::Command::new(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if tried.code() != Some(127) {
        return Err(std::io::Error::other(format!(
            "the guard answered {tried} to a trial run"
        )));
    }
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
