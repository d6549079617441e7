//! The tasks a control plane hands this worker (see `autopilot_proto::task`), served beside the
//! runs: each goes through the executor like a run's command (in a container of the run image on
//! the Docker executor), with no network, a throwaway workspace and no credential.
//!
//! - `list_tools`: `autopilot-mcp-guard --list-tools -- <command>` starts an operator's stdio
//!   server (or a dynamic server's source) once and prints its tools;
//! - `call_tool`: `autopilot-mcp-guard --call-tool <tool> -- <command>` calls one of its tools
//!   (`invoke_server_tool`).
//!
//! The server's settings (its environment, placeholders in place of credentials; a call's
//! arguments) reach the guard in a settings file, as a run's servers' do.

use std::sync::Arc;
use std::time::Duration;

use autopilot_fixed_servers::catalog::{GUARD_PROGRAM, SETTINGS_FILE_VAR};
use autopilot_proto::{
    Bus, IncomingTask, NetworkMode, RunId, Sandbox, TaskReply, TaskServer, WorkerId, WorkerTask,
};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::WorkerConfig;
use crate::command::CommandSpec;
use crate::executor::{Executor, OutputLine, OutputStream};
use crate::mcp::{ConfigFile, McpFiles, RunPrograms};

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
            let worker_id = config.worker_id.clone();
            let reply = match incoming.request {
                WorkerTask::ListTools { server, env } => {
                    let asked = once(&config, executor.as_ref(), server, env, Ask::Tools).await;
                    match asked {
                        Ok(Value::Array(tools)) => TaskReply::Tools { worker_id, tools },
                        Ok(_) => failed(&worker_id, "the listing printed no tools".to_owned()),
                        Err(reason) => failed(&worker_id, reason),
                    }
                }
                WorkerTask::CallTool {
                    server,
                    env,
                    tool,
                    arguments,
                } => {
                    let ask = Ask::Call { tool, arguments };
                    match once(&config, executor.as_ref(), server, env, ask).await {
                        Ok(result) => TaskReply::Called { worker_id, result },
                        Err(reason) => failed(&worker_id, reason),
                    }
                }
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

/// What the guard asks the server it starts once.
enum Ask {
    Tools,
    Call { tool: String, arguments: Value },
}

/// Starts the server through the executor under the guard (`--list-tools`, or `--call-tool`
/// with the arguments in its settings file) and reads what it printed: the tools (an array),
/// or the call's result.
async fn once(
    config: &WorkerConfig,
    executor: &dyn Executor,
    server: TaskServer,
    env: std::collections::BTreeMap<String, String>,
    ask: Ask,
) -> Result<Value, String> {
    let setup = |err: std::io::Error| format!("cannot prepare the listing: {err}");
    let files = ConfigFile::create().map_err(setup)?;
    let (mode, arguments) = match ask {
        Ask::Tools => (vec!["--list-tools".to_owned()], Value::Null),
        Ask::Call { tool, arguments } => (vec!["--call-tool".to_owned(), tool], arguments),
    };
    let guard_settings = json!({ "env": env, "arguments": arguments });
    let mut written = vec![(
        "once.guard.json".to_owned(),
        guard_settings.to_string().into_bytes(),
    )];
    if let TaskServer::Python { code } = &server {
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
    let in_container = executor.name() == "docker";
    let RunPrograms {
        guard, dir, python, ..
    } = RunPrograms::new(in_container, &config.command_env, files.dir());
    let (command, args) = match server {
        TaskServer::Command { command, args } => (command, args),
        TaskServer::Python { .. } => (python, vec![format!("{dir}/server.py")]),
    };
    let mut vars = config.command_env.base.clone();
    vars.push(("HOME".into(), workspace.path().display().to_string()));
    vars.push((SETTINGS_FILE_VAR.into(), format!("{dir}/once.guard.json")));
    let mut guard_args = mode;
    guard_args.extend(["--".to_owned(), command]);
    guard_args.extend(args);
    let spec = CommandSpec {
        program: guard.into(),
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
            "the server did not answer within {} s",
            TASK_TIMEOUT.as_secs()
        ));
    }
    let answer = stdout
        .iter()
        .rev()
        .find_map(|line| serde_json::from_str::<Value>(line).ok())
        .and_then(|mut answer| match answer.get_mut("tools") {
            Some(tools) => Some(tools.take()),
            None => answer.get_mut("result").map(Value::take),
        });
    match (exit.code, answer) {
        (Some(0), Some(answer)) => Ok(answer),
        _ => {
            let said = stderr.trim();
            let skip = said.chars().count().saturating_sub(STDERR_TAIL_CHARS);
            let said: String = said.chars().skip(skip).collect();
            Err(match said.is_empty() {
                true => format!("the guard ended with {exit:?} and printed no answer"),
                false => said
                    .trim_start_matches(&format!("{GUARD_PROGRAM}: "))
                    .to_owned(),
            })
        }
    }
}
