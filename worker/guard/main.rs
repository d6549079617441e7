//! The run guard: a small program between a local run and the process that started it, so that
//! nothing a run started outlives Autopilot, even when Autopilot is killed with `kill -9`.
//! `worker/build.rs` compiles it on its own (standard library only, no crates: a few hundred
//! kilobytes that start in about the time `setpriv` does, where starting the whole `autopilot`
//! binary again cost twice that in page faults alone) and the worker embeds it; see
//! `worker/src/guard.rs` for how it is started.
//!
//! `run-guard <parent-pid> <program> [args…]`, started as the leader of the run's process group:
//!
//! - asks the kernel for SIGUSR1 when its parent dies (the parent-death signal; a process cannot
//!   set it for the children it forks, so the run's tool commands would not have it) and becomes
//!   the subreaper of everything below it, so a command that detaches (`setsid`, a double fork)
//!   is still its descendant;
//! - starts the program in the same process group, with its own standard streams, environment
//!   and directory, and waits for it;
//! - when the program ends, kills what it left running (the executor kills the group as well)
//!   and ends the way the program ended: the same exit code, or the same signal;
//! - when its parent dies first, kills every descendant, detached ones included, then the group
//!   (itself with it).
//!
//! Signals for the run (the executor's SIGTERM at a stop, SIGKILL after the grace) go to the
//! whole group, so the guard does not forward them; it only keeps them from ending itself before
//! the program.

use std::os::raw::{c_int, c_ulong};
use std::time::{Duration, Instant};

/// Linux's `sigset_t` as the C library lays it out (1024 bits).
#[repr(C)]
struct SigSet([u64; 16]);

#[repr(C)]
struct RLimit {
    current: u64,
    max: u64,
}

extern "C" {
    fn prctl(option: c_int, arg2: c_ulong, arg3: c_ulong, arg4: c_ulong, arg5: c_ulong) -> c_int;
    fn getpid() -> c_int;
    fn getppid() -> c_int;
    fn getpgrp() -> c_int;
    fn kill(pid: c_int, signal: c_int) -> c_int;
    fn raise(signal: c_int) -> c_int;
    fn signal(signal: c_int, handler: usize) -> usize;
    fn sigemptyset(set: *mut SigSet) -> c_int;
    fn sigaddset(set: *mut SigSet, signal: c_int) -> c_int;
    fn sigprocmask(how: c_int, set: *const SigSet, old: *mut SigSet) -> c_int;
    fn sigwait(set: *const SigSet, signal: *mut c_int) -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn setrlimit(resource: c_int, limit: *const RLimit) -> c_int;
}

const PR_SET_PDEATHSIG: c_int = 1;
const PR_SET_NAME: c_int = 15;
const PR_SET_CHILD_SUBREAPER: c_int = 36;
const SIGHUP: c_int = 1;
const SIGINT: c_int = 2;
const SIGQUIT: c_int = 3;
const SIGKILL: c_int = 9;
const SIGUSR1: c_int = 10;
const SIGTERM: c_int = 15;
const SIGCHLD: c_int = 17;
const SIG_BLOCK: c_int = 0;
const SIG_UNBLOCK: c_int = 1;
const SIG_DFL: usize = 0;
const WNOHANG: c_int = 1;
const RLIMIT_CORE: c_int = 4;

/// Exit code of a guard that could not start its program (as a shell answers).
const CANNOT_START: i32 = 127;

/// How a child ended, as `waitpid` reports it.
#[derive(Clone, Copy)]
enum Ended {
    Exited(i32),
    Signaled(c_int),
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let parent = args
        .next()
        .and_then(|pid| pid.to_str()?.parse::<c_int>().ok());
    let (Some(parent), Some(program)) = (parent, args.next()) else {
        eprintln!("usage: run-guard <parent-pid> <program> [args…]");
        std::process::exit(CANNOT_START);
    };
    // SAFETY (every block below): plain system calls with valid arguments, on memory this
    // function owns.
    unsafe {
        prctl(PR_SET_NAME, c"run-guard".as_ptr() as c_ulong, 0, 0, 0);
        if prctl(PR_SET_PDEATHSIG, SIGUSR1 as c_ulong, 0, 0, 0) != 0 {
            eprintln!(
                "autopilot run guard: cannot ask for the parent-death signal: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(CANNOT_START);
        }
        // The parent may have died before the signal was asked for: then none would come.
        if getppid() != parent {
            std::process::exit(CANNOT_START);
        }
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let mut waited = SigSet([0; 16]);
    unsafe {
        sigemptyset(&mut waited);
        for signal in [SIGCHLD, SIGUSR1, SIGTERM, SIGINT, SIGHUP, SIGQUIT] {
            sigaddset(&mut waited, signal);
        }
        // Blocked here and taken one at a time below. The program starts with none blocked:
        // the standard library clears the mask of the processes it spawns.
        if sigprocmask(SIG_BLOCK, &waited, std::ptr::null_mut()) != 0 {
            eprintln!("autopilot run guard: cannot block signals");
            std::process::exit(CANNOT_START);
        }
    }
    let child = match std::process::Command::new(&program).args(args).spawn() {
        Ok(child) => child,
        Err(err) => {
            eprintln!("cannot start `{}`: {err}", program.to_string_lossy());
            std::process::exit(CANNOT_START);
        }
    };
    let program = child.id() as c_int;
    let ended = loop {
        let mut signal: c_int = 0;
        if unsafe { sigwait(&waited, &mut signal) } != 0 {
            continue;
        }
        match signal {
            SIGCHLD => {
                if let Some(ended) = reap(program) {
                    break ended;
                }
            }
            SIGUSR1 if unsafe { getppid() } != parent => {
                kill_descendants();
                unsafe { kill(-getpgrp(), SIGKILL) };
                std::process::exit(CANNOT_START);
            }
            // Sent to the group, so the program has it too; the guard waits for its end.
            _ => {}
        }
    };
    kill_descendants();
    exit_like(ended)
}

/// Reaps every child that ended; returns how `program` ended, if it did.
fn reap(program: c_int) -> Option<Ended> {
    let mut ended = None;
    loop {
        let mut status: c_int = 0;
        let pid = unsafe { waitpid(-1, &mut status, WNOHANG) };
        if pid <= 0 {
            return ended;
        }
        if pid == program {
            ended = Some(if status & 0x7f == 0 {
                Ended::Exited((status >> 8) & 0xff)
            } else {
                Ended::Signaled(status & 0x7f)
            });
        }
    }
}

/// Kills the guard's descendants until none is left: a child killed may leave children of its
/// own, which come to the guard (their subreaper). Gives up after a second (a process the kernel
/// cannot kill at once, in uninterruptible sleep, say); the group kill follows anyway.
fn kill_descendants() {
    let me = unsafe { getpid() };
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let children = children_of(me);
        if children.is_empty() || Instant::now() > deadline {
            return;
        }
        for child in children {
            unsafe { kill(child, SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(5));
        let mut status: c_int = 0;
        while unsafe { waitpid(-1, &mut status, WNOHANG) } > 0 {}
    }
}

/// The processes whose parent is `pid` (a process of one thread, as the guard is): the kernel's
/// list of them when it keeps one (`CONFIG_PROC_CHILDREN`), else a look through `/proc`, which
/// reads every process's `stat` (a millisecond and more on a busy machine, at each run's end).
fn children_of(pid: c_int) -> Vec<c_int> {
    if let Ok(list) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        return list
            .split_whitespace()
            .filter_map(|child| child.parse().ok())
            .collect();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<c_int>().ok())
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| parent_in(&stat))
                == Some(pid)
        })
        .collect()
}

/// The parent in a `/proc/<pid>/stat` line: the second field after the closing parenthesis of
/// the command name, which may itself hold spaces and parentheses.
fn parent_in(stat: &str) -> Option<c_int> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Ends this process the way the program ended: its exit code, or its signal raised again.
fn exit_like(ended: Ended) -> ! {
    match ended {
        Ended::Exited(code) => std::process::exit(code),
        Ended::Signaled(signal_number) => {
            unsafe {
                // No core file of the guard for a signal that dumped the program's.
                setrlimit(RLIMIT_CORE, &RLimit { current: 0, max: 0 });
                signal(signal_number, SIG_DFL);
                let mut only = SigSet([0; 16]);
                sigemptyset(&mut only);
                sigaddset(&mut only, signal_number);
                sigprocmask(SIG_UNBLOCK, &only, std::ptr::null_mut());
                raise(signal_number);
            }
            std::process::exit(128 + signal_number)
        }
    }
}
