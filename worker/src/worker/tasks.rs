//! The tasks a control plane hands this worker (see `autopilot_proto::task`), served beside the
//! runs: each goes through the executor like a run's command (in a container of the run image on
//! the Docker executor), with no network, a throwaway workspace and no credential.
//!
//! - `list_tools`: `autopilot-mcp-guard --list-tools -- <command>` starts an operator's stdio
//!   server once and prints its tools; its settings (the server's environment, placeholders in
//!   place of credentials) reach it in a settings file, as a run's servers' do.

use std::sync::Arc;
use std::time::Duration;

use autopilot_fixed_servers::catalog::{GUARD_PROGRAM, SETTINGS_FILE_VAR};
use autopilot_proto::{
    Bus, IncomingTask, NetworkMode, RunId, Sandbox, TaskReply, WorkerId, WorkerTask,
};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::WorkerConfig;
use crate::command::CommandSpec;
use crate::executor::{Executor, OutputLine, OutputStream};
use crate::mcp::{ConfigFile, McpFiles};

/// How long one task may take, the start of its container included.
const TASK_TIMEOUT: Duration = Duration::from_secs(30);
/// Tasks done at once by one worker, beside its runs.
const CONCURRENT_TASKS: usize = 2;
/// Of a failed task's standard error, the last this many characters are told.
const STDERR_TAIL_CHARS: usize = 600;

/// Serves the tasks of every pool of this worker until `stop` fires.
pub(super) async fn serve(
    config: Arc<WorkerConfig>,
    bus: Arc<dyn Bus>,
    executor: Arc<dyn Executor>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut streams = Vec::with_capacity(config.pools.len());
    for pool in &config.pools {
        streams.push(bus.serve_tasks(pool).await?);
    }
    let mut tasks = futures::stream::select_all(streams);
    let permits = Arc::new(Semaphore::new(CONCURRENT_TASKS));
    loop {
        let incoming: IncomingTask = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            incoming = tasks.next() => match incoming {
                Some(incoming) => incoming,
                None => return Ok(()),
            },
        };
        let (config, executor) = (Arc::clone(&config), Arc::clone(&executor));
        let permits = Arc::clone(&permits);
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let listed = match incoming.request {
                WorkerTask::ListTools { command, args, env } => {
                    let server = Server::Command { command, args };
                    list_tools(&config, executor.as_ref(), server, env).await
                }
                WorkerTask::ListPythonTools { code, env } => {
                    list_tools(&config, executor.as_ref(), Server::Python(code), env).await
                }
            };
            let reply = match listed {
                Ok(tools) => TaskReply::Tools {
                    worker_id: config.worker_id.clone(),
                    tools,
                },
                Err(reason) => failed(&config.worker_id, reason),
            };
            let _ = incoming.reply.send(reply);
        });
    }
}

fn failed(worker_id: &WorkerId, reason: String) -> TaskReply {
    TaskReply::Failed {
        worker_id: worker_id.clone(),
        reason,
    }
}

/// The server a listing starts.
enum Server {
    /// A program (on the worker, or in the run image).
    Command { command: String, args: Vec<String> },
    /// A dynamic server's source, started by the run's Python.
    Python(String),
}

/// Starts the server through the executor, under the guard's `--list-tools`, and reads the tools
/// it printed.
async fn list_tools(
    config: &WorkerConfig,
    executor: &dyn Executor,
    server: Server,
    env: std::collections::BTreeMap<String, String>,
) -> Result<Vec<Value>, String> {
    let setup = |err: std::io::Error| format!("cannot prepare the listing: {err}");
    let files = ConfigFile::create().map_err(setup)?;
    let mut written = vec![(
        "list.guard.json".to_owned(),
        json!({ "env": env }).to_string().into_bytes(),
    )];
    if let Server::Python(code) = &server {
        written.push(("server.py".to_owned(), code.clone().into_bytes()));
    }
    let settings = McpFiles {
        document: json!({ "mcpServers": {} }),
        settings: written,
    };
    files.write(&settings).map_err(setup)?;
    let workspace = tempfile::Builder::new()
        .prefix("autopilot-task-")
        .tempdir()
        .map_err(setup)?;
    // A container runs the image's guard with the directory mounted; a local run the guard
    // beside the worker's fixed servers, with the directory where it is.
    let (guard, dir, python) = if executor.name() == "docker" {
        (
            GUARD_PROGRAM.into(),
            crate::docker::MCP_CONFIG_MOUNT.to_owned(),
            "python3".to_owned(),
        )
    } else {
        let env = &config.command_env;
        let dir = files.dir().display().to_string();
        (env.guard_bin(), dir, env.python.display().to_string())
    };
    let (command, args) = match server {
        Server::Command { command, args } => (command, args),
        Server::Python(_) => (python, vec![format!("{dir}/server.py")]),
    };
    let mut vars = config.command_env.base.clone();
    vars.push(("HOME".into(), workspace.path().display().to_string()));
    vars.push((SETTINGS_FILE_VAR.into(), format!("{dir}/list.guard.json")));
    let mut guard_args = vec!["--list-tools".to_owned(), "--".to_owned(), command];
    guard_args.extend(args);
    let spec = CommandSpec {
        program: guard,
        args: guard_args,
        env: vars,
        cwd: workspace.path().to_path_buf(),
        stdin: None,
        claude: false,
        // A task is no run: an id of its own names its container.
        run: (RunId::new(), 1),
        sandbox: Sandbox {
            network: NetworkMode::None,
            ..Sandbox::default()
        },
        mcp_config: Some(files.path()),
        image: None,
    };
    let (output, mut lines) = mpsc::channel::<OutputLine>(256);
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    let collect = async move {
        let (mut stdout, mut stderr) = (Vec::new(), String::new());
        while let Some(line) = lines.recv().await {
            match line.stream {
                OutputStream::Stdout => stdout.push(line.text),
                OutputStream::Stderr => {
                    stderr.push_str(&line.text);
                    stderr.push('\n');
                }
            }
        }
        (stdout, stderr)
    };
    let executed = async {
        let timer = tokio::time::sleep(TASK_TIMEOUT);
        tokio::pin!(timer);
        let execute = executor.execute(spec, output, stop, config.kill_grace);
        tokio::pin!(execute);
        tokio::select! {
            exit = &mut execute => (exit, false),
            _ = &mut timer => {
                stopper.cancel();
                (execute.await, true)
            }
        }
    };
    let ((exit, timed_out), (stdout, stderr)) = tokio::join!(executed, collect);
    let exit = exit.map_err(|err| err.to_string())?;
    if timed_out {
        return Err(format!(
            "the server did not list its tools within {} s",
            TASK_TIMEOUT.as_secs()
        ));
    }
    let listed = stdout
        .iter()
        .rev()
        .find_map(|line| serde_json::from_str::<Value>(line).ok())
        .and_then(|answer| answer.get("tools").and_then(Value::as_array).cloned());
    match (exit.code, listed) {
        (Some(0), Some(tools)) => Ok(tools),
        _ => {
            let said = stderr.trim();
            let skip = said.chars().count().saturating_sub(STDERR_TAIL_CHARS);
            let said: String = said.chars().skip(skip).collect();
            Err(match said.is_empty() {
                true => format!("the listing ended with {exit:?} and printed no tools"),
                false => said
                    .trim_start_matches(&format!("{GUARD_PROGRAM}: "))
                    .to_owned(),
            })
        }
    }
}
