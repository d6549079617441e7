//! `autopilot-relay HOST:PORT SOCKET -- PROGRAM [ARGS...]`
//!
//! The only way out of a `model-only` run container. The container has no network; the worker
//! mounts its model proxy's Unix socket into it. This relay listens on the container's loopback,
//! passes every connection through to that socket, and runs the real command as its child: same
//! standard input, output and error, termination signals passed on, its exit status returned
//! (128 + the signal when a signal ended it). Part of the run image; std and `nix` only, so it
//! starts in about a millisecond.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::thread;

use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

const USAGE: &str = "usage: autopilot-relay HOST:PORT SOCKET -- PROGRAM [ARGS...]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (address, socket, command) = match args.as_slice() {
        [address, socket, separator, command @ ..] if separator == "--" && !command.is_empty() => {
            (address.clone(), PathBuf::from(socket), command.to_vec())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Termination signals are taken by a thread of ours and passed to the child (which starts
    // with an empty mask), not left to end the relay.
    let mut forwarded = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        forwarded.add(signal);
    }
    if let Err(err) = forwarded.thread_block() {
        eprintln!("autopilot-relay: cannot take signals: {err}");
        return ExitCode::from(2);
    }
    let listener = match TcpListener::bind(&address) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("autopilot-relay: cannot listen on {address}: {err}");
            return ExitCode::from(2);
        }
    };
    thread::spawn(move || serve(listener, &socket));
    let mut child = match Command::new(&command[0]).args(&command[1..]).spawn() {
        Ok(child) => child,
        Err(err) => {
            eprintln!("[FATAL autopilot-relay] exec {} failed: {err}", command[0]);
            return ExitCode::from(127);
        }
    };
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    thread::spawn(move || {
        while let Ok(signal) = forwarded.wait() {
            let _ = kill(pid, signal);
        }
    });
    match child.wait() {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(255)),
            (None, None) => ExitCode::from(1),
        },
        Err(err) => {
            eprintln!("autopilot-relay: waiting for {} failed: {err}", command[0]);
            ExitCode::from(1)
        }
    }
}

fn serve(listener: TcpListener, socket: &Path) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        match UnixStream::connect(socket) {
            Ok(upstream) => relay(client, upstream),
            Err(err) => eprintln!("autopilot-relay: cannot reach the model proxy: {err}"),
        }
    }
}

/// Copies both ways until each side has closed its half.
fn relay(client: TcpStream, upstream: UnixStream) {
    let (Ok(client_out), Ok(upstream_in)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let (mut from, mut to) = (client, upstream_in);
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
    thread::spawn(move || {
        let (mut from, mut to) = (upstream, client_out);
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
