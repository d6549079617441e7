//! The local-process executor: runs the command as a child process in its own process group.
//! Its behaviour is checked by the executor conformance suite (`tests/tests/e2e/executor.rs`),
//! which runs the same cases on the Docker executor.

use std::process::Stdio;
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

#[derive(Clone, Debug, Default)]
pub struct LocalExecutor;

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
        std::fs::create_dir_all(&command.cwd).map_err(|err| {
            ExecError::Setup(format!(
                "cannot create workspace {}: {err}",
                command.cwd.display()
            ))
        })?;
        let mut child = Command::new(&command.program);
        die_with_this_process(&mut child);
        let mut child = child
            .args(&command.args)
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

/// Has the child killed when this process dies, even by `kill -9`, which leaves no chance to
/// stop it (Linux's parent-death signal). The "parent" is the thread that spawns the child: here
/// a runtime worker thread, which lives as long as the process's runtime.
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
