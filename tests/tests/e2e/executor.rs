//! Executor conformance: the same behaviour from the local-process executor and the Docker
//! executor (a real Docker Engine, the runtime image). Each case is written once and run on both.

use std::path::Path;
use std::time::Duration;

use autopilot_proto::{NetworkMode, RunId, Sandbox};
use autopilot_tests::components;
use autopilot_worker::{
    CommandSpec, ExecError, Executor, ExitInfo, LocalExecutor, OutputLine, OutputStream,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub fn shell(script: &str, cwd: &Path) -> CommandSpec {
    CommandSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("AUTOPILOT_TEST_VAR".into(), "visible".into()),
            ("HOME".into(), cwd.display().to_string()),
        ],
        cwd: cwd.to_path_buf(),
        stdin: None,
        claude: false,
        run: (RunId::new(), 1),
        sandbox: Sandbox {
            network: NetworkMode::None,
            memory_mb: 256,
            cpus: 1.0,
            pids: 128,
        },
        mcp_config: None,
        image: None,
    }
}

pub async fn run(
    executor: &dyn Executor,
    command: CommandSpec,
    stop: CancellationToken,
) -> (Result<ExitInfo, ExecError>, Vec<OutputLine>) {
    let (tx, mut rx) = mpsc::channel(64);
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        lines
    });
    let info = executor
        .execute(command, tx, stop, Duration::from_secs(1))
        .await;
    (info, collector.await.unwrap())
}

pub fn stdout(lines: &[OutputLine]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.stream == OutputStream::Stdout)
        .map(|l| l.text.as_str())
        .collect()
}

async fn both_outputs_in_order_and_the_exit_code(executor: &dyn Executor) {
    let dir = tempfile::tempdir().unwrap();
    let (info, lines) = run(
        executor,
        shell(
            "echo one; echo two >&2; echo three; printf 'no newline'; exit 3",
            dir.path(),
        ),
        CancellationToken::new(),
    )
    .await;
    let info = info.unwrap();
    assert_eq!(info.code, Some(3), "{info:?}");
    assert!(!info.stopped && !info.killed && !info.out_of_memory);
    assert_eq!(stdout(&lines), ["one", "three", "no newline"]);
    assert!(lines
        .iter()
        .any(|l| l.stream == OutputStream::Stderr && l.text == "two"));
}

async fn stdin_is_written_then_closed(executor: &dyn Executor) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = shell("cat; echo end", dir.path());
    command.stdin = Some("first\nsecond line ✓\n".into());
    let (info, lines) = run(executor, command, CancellationToken::new()).await;
    assert_eq!(info.unwrap().code, Some(0));
    assert_eq!(stdout(&lines), ["first", "second line ✓", "end"]);
}

async fn only_the_given_environment(executor: &dyn Executor) {
    let dir = tempfile::tempdir().unwrap();
    let (info, lines) = run(
        executor,
        shell(
            "echo \"var=$AUTOPILOT_TEST_VAR\"; echo \"cargo=${CARGO_TARGET_DIR:-unset}\"; test -n \"$HOME\" && echo home-set",
            dir.path(),
        ),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(info.unwrap().code, Some(0));
    assert_eq!(stdout(&lines), ["var=visible", "cargo=unset", "home-set"]);
}

async fn files_stay_in_the_workspace_between_runs(executor: &dyn Executor) {
    let dir = tempfile::tempdir().unwrap();
    let (info, _) = run(
        executor,
        shell("mkdir -p notes && echo kept > notes/a.txt", dir.path()),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(info.unwrap().code, Some(0));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("notes/a.txt")).unwrap(),
        "kept\n"
    );
    let (info, lines) = run(
        executor,
        shell("cat notes/a.txt", dir.path()),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(info.unwrap().code, Some(0));
    assert_eq!(stdout(&lines), ["kept"]);
}

async fn a_long_line_arrives_whole(executor: &dyn Executor) {
    let dir = tempfile::tempdir().unwrap();
    let (info, lines) = run(
        executor,
        shell(
            "head -c 300000 /dev/zero | tr '\\0' x; echo; echo after",
            dir.path(),
        ),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(info.unwrap().code, Some(0));
    let out = stdout(&lines);
    assert_eq!(
        out.len(),
        2,
        "{:?}",
        out.iter().map(|l| l.len()).collect::<Vec<_>>()
    );
    assert_eq!(out[0].len(), 300_000);
    assert!(out[0].bytes().all(|b| b == b'x'));
    assert_eq!(out[1], "after");
}

/// A stop signal that fires after `delay`.
fn stop_after(delay: Duration) -> CancellationToken {
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        trigger.cancel();
    });
    stop
}

async fn stop_terms_then_kills(executor: &dyn Executor) {
    let dir = tempfile::tempdir().unwrap();
    let stop = stop_after(Duration::from_millis(1500));
    // The shell ignores SIGTERM, so only SIGKILL ends it.
    let (info, lines) = run(
        executor,
        shell(
            "trap '' TERM; echo ready; sleep 60 & wait; echo never",
            dir.path(),
        ),
        stop,
    )
    .await;
    let info = info.unwrap();
    assert!(info.stopped && info.killed, "{info:?}");
    assert_eq!(info.signal, Some(9), "{info:?}");
    assert_eq!(stdout(&lines), ["ready"]);
}

async fn stop_lets_a_polite_process_end_on_term(executor: &dyn Executor) {
    let dir = tempfile::tempdir().unwrap();
    let stop = stop_after(Duration::from_millis(1500));
    let (info, lines) = run(
        executor,
        shell(
            "trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.1; done",
            dir.path(),
        ),
        stop,
    )
    .await;
    let info = info.unwrap();
    assert!(info.stopped && !info.killed, "{info:?}");
    assert_eq!(stdout(&lines), ["ready", "got-term"]);
}

async fn a_missing_program_is_reported_as_such(executor: &dyn Executor) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = shell("true", dir.path());
    command.program = "/nonexistent/claude".into();
    let (info, _) = run(executor, command, CancellationToken::new()).await;
    let err = info.unwrap_err();
    assert!(matches!(err, ExecError::ProgramNotFound(_)), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/claude"), "{err}");
}

/// A run killed by a signal is reported so, through the guard as without it.
#[tokio::test]
async fn a_run_killed_by_a_signal_reports_the_signal_with_and_without_the_guard() {
    for executor in [LocalExecutor::default(), LocalExecutor::unguarded()] {
        let dir = tempfile::tempdir().unwrap();
        let (info, _) = run(
            &executor,
            shell("kill -9 $$", dir.path()),
            CancellationToken::new(),
        )
        .await;
        let info = info.unwrap();
        assert_eq!((info.code, info.signal), (None, Some(9)), "{executor:?}");
    }
}

/// What a run started and detached from itself (a new session, outside its process group)
/// ends with the run under the guard, which adopted it.
#[tokio::test]
async fn a_guarded_run_takes_what_it_detached_with_it() {
    let executor = LocalExecutor::default();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("detached.pid");
    let script = format!(
        "setsid sh -c 'echo $$ > {}; exec sleep 300' >/dev/null 2>&1 & sleep 0.3; echo done",
        pid_file.display()
    );
    let (info, lines) = run(
        &executor,
        shell(&script, dir.path()),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(info.unwrap().code, Some(0));
    assert_eq!(stdout(&lines), ["done"]);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.contains(") Z ") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the detached process {pid} lives on: {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&super::LocalExecutor::default()).await;
                }
            )+
        }
        /// The local executor without its run guard.
        mod unguarded {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&super::LocalExecutor::unguarded()).await;
                }
            )+
        }
        mod docker {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(executor) = super::components::docker_executor(
                        concat!("conformance-", stringify!($case)),
                    )
                    .await
                    else {
                        return;
                    };
                    super::$case(&executor).await;
                    assert_eq!(executor.containers().await.unwrap(), 0, "the run left its container behind");
                }
            )+
        }
    };
}

conformance!(
    both_outputs_in_order_and_the_exit_code,
    stdin_is_written_then_closed,
    only_the_given_environment,
    files_stay_in_the_workspace_between_runs,
    a_long_line_arrives_whole,
    stop_terms_then_kills,
    stop_lets_a_polite_process_end_on_term,
    a_missing_program_is_reported_as_such,
);
