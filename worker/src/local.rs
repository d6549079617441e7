//! The local-process executor: runs the command as a child process in its own process group.
//! Its behaviour is checked by the executor conformance suite (`tests/tests/e2e/executor.rs`),
//! which runs the same cases on the Docker executor.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::command::CommandSpec;
use crate::executor::{ExecError, Executor, ExitInfo, OutputLine, OutputStream};

/// How long output readers may keep going after the process exited (a grandchild that inherited
/// the pipes is killed with the group, but its last bytes may still be in flight).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Runs each command as a child process, under the run guard ([`crate::guard`]): nothing the
/// command starts outlives this process.
#[derive(Clone, Debug)]
pub struct LocalExecutor {
    guarded: bool,
}

impl Default for LocalExecutor {
    fn default() -> Self {
        Self { guarded: true }
    }
}

impl LocalExecutor {
    /// Without the run guard: the command itself still dies with this process, what it starts
    /// may not (for comparison in tests and benchmarks).
    pub fn unguarded() -> Self {
        Self { guarded: false }
    }
}

#[async_trait]
impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn execute(
        &self,
        command: CommandSpec,
        output: mpsc::Sender<OutputLine>,
        stop: CancellationToken,
        grace: Duration,
    ) -> Result<ExitInfo, ExecError> {
        if let Some(image) = &command.image {
            return Err(ExecError::Setup(format!(
                "this job asks for the image `{image}`, which only the Docker executor can give: \
                 run it in a pool of workers with AUTOPILOT_EXECUTOR=docker, or remove its `image`"
            )));
        }
        std::fs::create_dir_all(&command.cwd).map_err(|err| {
            ExecError::Setup(format!(
                "cannot create workspace {}: {err}",
                command.cwd.display()
            ))
        })?;
        let guard = self.guarded.then(crate::guard::program).flatten();
        let mut child = command_dying_with_this_process(&command, guard.as_deref())?;
        let mut child = child
            .env_clear()
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&command.cwd)
            .stdin(if command.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| match err.kind() {
                std::io::ErrorKind::NotFound => ExecError::ProgramNotFound(format!(
                    "`{}` was not found or is not executable",
                    command.program.display()
                )),
                _ => ExecError::Spawn(err),
            })?;
        let pid = child.id().and_then(|id| i32::try_from(id).ok());

        if let (Some(input), Some(mut stdin)) = (command.stdin, child.stdin.take()) {
            tokio::spawn(async move {
                // A process that exits without reading its input is not our error to report.
                let _ = stdin.write_all(input.as_bytes()).await;
                let _ = stdin.shutdown().await;
            });
        }
        let stdout = child
            .stdout
            .take()
            .map(|out| forward_lines(out, OutputStream::Stdout, output.clone()));
        let stderr = child
            .stderr
            .take()
            .map(|err| forward_lines(err, OutputStream::Stderr, output));

        let mut info = ExitInfo::default();
        let status = tokio::select! {
            status = child.wait() => status,
            _ = stop.cancelled() => {
                info.stopped = true;
                signal_group(pid, Signal::SIGTERM);
                tokio::select! {
                    status = child.wait() => status,
                    _ = tokio::time::sleep(grace) => {
                        info.killed = true;
                        signal_group(pid, Signal::SIGKILL);
                        child.wait().await
                    }
                }
            }
        }
        .map_err(ExecError::Spawn)?;
        // Whatever the process left running in its group goes with it.
        signal_group(pid, Signal::SIGKILL);

        for reader in [stdout, stderr].into_iter().flatten() {
            if tokio::time::timeout(DRAIN_AFTER_EXIT, reader)
                .await
                .is_err()
            {
                tracing::warn!("output still open after the process exited; stopped reading it");
            }
        }
        info.code = status.code();
        info.signal = std::os::unix::process::ExitStatusExt::signal(&status);
        Ok(info)
    }
}

/// The command to spawn for `spec`, set up so that its process is killed when this process
/// dies, even by `kill -9`, which leaves no chance to stop it (Linux's parent-death signal; the
/// "parent" is the thread that spawns the child: a runtime worker thread, which lives as long
/// as the process's runtime).
///
/// Under the run `guard` when there is one, which also takes what the command starts with it.
/// Else through `setpriv --pdeathsig KILL` (util-linux), which sets the signal and execs the
/// program in the same process. Both start with `posix_spawn`. Without either, a pre-exec hook
/// sets the signal, which makes the standard library fork the whole server instead: a cost
/// that shows at hundreds of short runs a second (page tables copied, copy-on-write faults
/// after). A missing program is found before spawning, so it is reported as such rather than
/// as the guard's or `setpriv`'s exit code.
fn command_dying_with_this_process(
    spec: &CommandSpec,
    guard: Option<&Path>,
) -> Result<Command, ExecError> {
    let mut command = match (guard, setpriv()) {
        (Some(guard), _) => {
            let mut command = Command::new(guard);
            command.arg(std::process::id().to_string());
            command
        }
        (None, Some(setpriv)) => {
            let mut command = Command::new(setpriv);
            command.args(["--pdeathsig", "KILL", "--"]);
            command
        }
        (None, None) => {
            let mut command = Command::new(&spec.program);
            command.args(&spec.args);
            die_with_this_process(&mut command);
            return Ok(command);
        }
    };
    // The run's own PATH, else this process's (as the standard library would look it up).
    let inherited = std::env::var("PATH").ok();
    let search_path = spec
        .env
        .iter()
        .find(|(name, _)| name == "PATH")
        .map(|(_, value)| value.as_str())
        .or(inherited.as_deref());
    let program = resolve(&spec.program, search_path, &spec.cwd).ok_or_else(|| {
        ExecError::ProgramNotFound(format!(
            "`{}` was not found or is not executable",
            spec.program.display()
        ))
    })?;
    command.arg(program).args(&spec.args);
    Ok(command)
}

/// `setpriv`, if this machine has it.
fn setpriv() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            ["/usr/bin/setpriv", "/bin/setpriv"]
                .into_iter()
                .map(PathBuf::from)
                .find(|path| is_executable(path))
        })
        .as_deref()
}

/// Where `program` is: itself when it names a path (relative ones from `cwd`), else the first
/// executable of that name in `search_path`.
fn resolve(program: &Path, search_path: Option<&str>, cwd: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 || program.is_absolute() {
        let path = cwd.join(program);
        return is_executable(&path).then(|| program.to_path_buf());
    }
    search_path?
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Sets the parent-death signal in a pre-exec hook (see [`command_dying_with_this_process`]).
#[allow(unsafe_code)]
fn die_with_this_process(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the hook runs in the forked child before exec and makes only async-signal-safe
    // system calls (prctl, getppid); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died between the fork and the prctl: then nothing would fire.
            if u32::try_from(nix::unistd::getppid().as_raw()) != Ok(parent) {
                return Err(std::io::Error::other("the process that started it is gone"));
            }
            Ok(())
        });
    }
}

fn signal_group(pid: Option<i32>, signal: Signal) {
    if let Some(pid) = pid {
        // ESRCH (the group is gone) is the expected answer once the process has exited.
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// Reads `reader` line by line (lossy UTF-8, any length) and sends each line on.
fn forward_lines<R>(
    reader: R,
    stream: OutputStream,
    output: mpsc::Sender<OutputLine>,
) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(64 * 1024, reader);
        let mut buffer = Vec::with_capacity(8 * 1024);
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer).await {
                Ok(0) => return,
                Ok(_) => {
                    while matches!(buffer.last(), Some(b'\n' | b'\r')) {
                        buffer.pop();
                    }
                    let text = String::from_utf8_lossy(&buffer).into_owned();
                    if output.send(OutputLine { stream, text }).await.is_err() {
                        return;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "reading process output failed");
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_the_path_or_by_their_own_path() {
        let cwd = Path::new("/");
        let path = Some("/nonexistent:/bin:/usr/bin");
        assert!(resolve(Path::new("sh"), path, cwd).is_some_and(|found| found.ends_with("sh")));
        assert_eq!(
            resolve(Path::new("/bin/sh"), None, cwd).as_deref(),
            Some(Path::new("/bin/sh"))
        );
        assert_eq!(resolve(Path::new("no-such-program-here"), path, cwd), None);
        assert_eq!(resolve(Path::new("sh"), None, cwd), None);
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        assert_eq!(resolve(&plain, None, cwd), None, "not executable");
        assert_eq!(
            resolve(Path::new("bin/sh"), None, Path::new("/")).as_deref(),
            Some(Path::new("bin/sh"))
        );
    }
}
