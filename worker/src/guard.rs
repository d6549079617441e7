//! The run guard: a small process between a local run and the process that started it, so that
//! nothing a run started outlives Autopilot, even when Autopilot is killed with `kill -9`.
//!
//! The local executor starts `autopilot __run-guard <pid> <program> [args…]` as the leader of
//! the run's process group. The guard:
//!
//! - asks the kernel for a signal when its parent dies (Linux's parent-death signal, which a
//!   process cannot set for its own children once they fork: the run's tool commands would not
//!   have it) and becomes the "subreaper" of everything below it, so a command that detaches
//!   (`setsid`, a double fork) is still its descendant;
//! - starts the program in the same process group, with its own standard streams, environment
//!   and directory, and waits for it;
//! - when the program ends, kills what it left running outside the group (the executor kills
//!   the group) and ends the way the program ended: the same exit code, or the same signal;
//! - when its parent dies first, kills every descendant, detached ones included, then the group
//!   (itself with it).
//!
//! Signals for the run (the executor's `SIGTERM` at a stop, `SIGKILL` after the grace) go to
//! the whole group, so the guard does not forward them; it only keeps them from ending itself
//! before the program.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::prctl;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpgrp, getpid, getppid, Pid};

/// The first argument that makes the `autopilot` binary a run guard.
pub const GUARD_ARG: &str = "__run-guard";

/// Exit code of a guard that could not start its program (as a shell answers).
const CANNOT_START: i32 = 127;

/// Whether this binary acts as the run guard (see [`take_over_if_asked`]).
static IN_THIS_BINARY: AtomicBool = AtomicBool::new(false);

/// The run guard's program, when this binary is one: `/proc/self/exe`, which stays this very
/// binary even when its file is replaced by an upgrade while it runs.
pub fn this_binary() -> Option<PathBuf> {
    IN_THIS_BINARY
        .load(Ordering::Relaxed)
        .then(|| PathBuf::from("/proc/self/exe"))
}

/// Called first in a binary's `main`, before any thread starts: when the binary was started as
/// a run guard (`<binary> __run-guard …`), runs the guard and never returns; otherwise notes
/// that this binary can be one ([`this_binary`]) and returns.
pub fn take_over_if_asked() {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|first| first == GUARD_ARG) {
        run(args.collect());
    }
    IN_THIS_BINARY.store(true, Ordering::Relaxed);
}

/// Runs the guard with the arguments after [`GUARD_ARG`]: the pid of the process that started
/// it, the program, and the program's arguments. Never returns.
fn run(args: Vec<OsString>) -> ! {
    let mut args = args.into_iter();
    let parent = args
        .next()
        .and_then(|pid| pid.to_str()?.parse::<i32>().ok());
    let (Some(parent), Some(program)) = (parent, args.next()) else {
        eprintln!("usage: autopilot {GUARD_ARG} <parent-pid> <program> [args…]");
        std::process::exit(CANNOT_START);
    };
    if let Err(err) = prctl::set_pdeathsig(Signal::SIGUSR1) {
        eprintln!("autopilot run guard: cannot ask for the parent-death signal: {err}");
        std::process::exit(CANNOT_START);
    }
    // The parent may have died before the signal was asked for: then none would come.
    if getppid().as_raw() != parent {
        std::process::exit(CANNOT_START);
    }
    let _ = prctl::set_child_subreaper(true);
    let waited = [
        Signal::SIGCHLD,
        Signal::SIGUSR1,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ];
    let mut set = SigSet::empty();
    for signal in waited {
        set.add(signal);
    }
    // Blocked here, taken one at a time below. The program starts with none blocked (the
    // standard library clears the mask of the processes it spawns).
    if let Err(err) = signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        eprintln!("autopilot run guard: cannot block signals: {err}");
        std::process::exit(CANNOT_START);
    }
    let program_name = program.to_string_lossy().into_owned();
    let child = match std::process::Command::new(&program).args(args).spawn() {
        Ok(child) => child,
        Err(err) => {
            eprintln!("cannot start `{program_name}`: {err}");
            std::process::exit(CANNOT_START);
        }
    };
    let program = Pid::from_raw(child.id() as i32);
    let status = loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(status) = reap(program) {
                    break status;
                }
            }
            Ok(Signal::SIGUSR1) if getppid().as_raw() != parent => {
                kill_descendants();
                let _ = signal::killpg(getpgrp(), Signal::SIGKILL);
                std::process::exit(CANNOT_START);
            }
            // Sent to the group, so the program has it too; the guard waits for its end.
            _ => {}
        }
    };
    kill_descendants();
    exit_like(status)
}

/// Reaps every child that ended; returns how `program` ended, if it did.
fn reap(program: Pid) -> Option<WaitStatus> {
    let mut ended = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return ended,
            Ok(status) if status.pid() == Some(program) => ended = Some(status),
            Ok(_) => {}
        }
    }
}

/// Kills the guard's descendants until none is left: a child killed may leave children of its
/// own, which come to the guard (its subreaper). Gives up after a second (a process the kernel
/// cannot kill at once, in uninterruptible sleep, say); the group kill follows anyway.
fn kill_descendants() {
    let me = getpid();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let children = children_of(me);
        if children.is_empty() || Instant::now() > deadline {
            return;
        }
        for child in children {
            let _ = signal::kill(child, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
    }
}

/// The processes whose parent is `pid`, from `/proc`.
fn children_of(pid: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&child| parent_of(child) == Some(pid.as_raw()))
        .map(Pid::from_raw)
        .collect()
}

/// The parent of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    parent_in(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The parent in a `/proc/<pid>/stat` line: the second field after the closing parenthesis of
/// the command name, which may itself hold spaces and parentheses.
fn parent_in(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Ends this process the way the program ended: its exit code, or its signal raised again.
fn exit_like(status: WaitStatus) -> ! {
    match status {
        WaitStatus::Exited(_, code) => std::process::exit(code),
        WaitStatus::Signaled(_, signal, _) => {
            // No core file of the guard for a signal that dumped the program's.
            let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
            // SAFETY: restores the default action of a signal this process never handles.
            #[allow(unsafe_code)]
            unsafe {
                let _ = signal::signal(signal, signal::SigHandler::SigDfl);
            }
            let mut only = SigSet::empty();
            only.add(signal);
            let _ = signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&only), None);
            let _ = signal::raise(signal);
            std::process::exit(128 + signal as i32)
        }
        _ => std::process::exit(CANNOT_START),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_past_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(parent_in("4242 (a) b (c)) S 17 4242 4242 0 -1"), Some(17));
        assert_eq!(parent_in("4242 (sh) R 1 4242"), Some(1));
        assert_eq!(parent_in("garbage"), None);
        let me = std::process::id() as i32;
        assert_eq!(
            parent_of(me),
            Some(std::os::unix::process::parent_id() as i32)
        );
    }
}
