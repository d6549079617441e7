//! The run's socket: where the `memory` server of a run (see
//! `autopilot_fixed_servers::memory`) sends its operations, and its `approval` server the tool
//! calls that wait for an operator (see `autopilot_fixed_servers::approval`). It lives in the run's MCP
//! configuration directory, which only the run's user can enter, and admits a request only with
//! the token given to that server in its settings file (which it deletes once read), so the
//! run's Bash can use neither. Each operation goes on to the control plane as a
//! [`WorkerRequest::Memory`] naming the run, attempt and worker; the control plane decides whose
//! memory that is. The relay does not read the operation beyond its JSON.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use autopilot_fixed_servers::approval_wire::{self, Decision};
use autopilot_fixed_servers::memory_wire::{MemoryAnswer, MAX_LINE_BYTES};
use autopilot_proto::{
    ApprovalAnswer, ApprovalAsk, Bus, RunId, WorkerId, WorkerReply, WorkerRequest,
};
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// For the control plane's answer to one operation.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest path a Unix socket can have (`sun_path`, with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Who the relayed operations are for.
#[derive(Clone)]
pub struct RunIdentity {
    pub run_id: RunId,
    pub attempt: u32,
    pub worker_id: WorkerId,
    /// The run's slot on this worker, lent back while its calls wait for approval.
    pub slot: Arc<SlotLoan>,
}

/// How often a pending approval is asked about again.
const APPROVAL_POLL: Duration = Duration::from_secs(1);

/// A run's slot on its worker. A run whose tool calls all wait for a person holds no slot: the
/// worker may take another run meanwhile. When a decision comes, the run takes a free slot back
/// if there is one, and otherwise goes on beside the others (the worker then takes no new run
/// until one ends).
#[derive(Default)]
pub struct SlotLoan {
    state: std::sync::Mutex<LoanState>,
}

#[derive(Default)]
struct LoanState {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    slots: Option<Arc<tokio::sync::Semaphore>>,
    waiting: usize,
}

impl SlotLoan {
    pub fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        let slots = Arc::clone(permit.semaphore());
        Self {
            state: std::sync::Mutex::new(LoanState {
                permit: Some(permit),
                slots: Some(slots),
                waiting: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LoanState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call starts waiting: the first gives the slot back.
    pub fn lend(&self) {
        let mut state = self.state();
        state.waiting += 1;
        if state.waiting == 1 {
            state.permit = None;
        }
    }

    /// A call was decided: the last takes a slot again when one is free.
    pub fn take_back(&self) {
        let mut state = self.state();
        state.waiting = state.waiting.saturating_sub(1);
        if state.waiting == 0 && state.permit.is_none() {
            state.permit = state
                .slots
                .as_ref()
                .and_then(|slots| Arc::clone(slots).try_acquire_owned().ok());
        }
    }

    /// Whether the run holds a slot now.
    pub fn holds(&self) -> bool {
        self.state().permit.is_some()
    }
}

/// A serving socket; it stops when dropped.
pub struct MemoryRelay {
    stop: CancellationToken,
}

impl Drop for MemoryRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The token a run's memory server presents: fresh random bytes, hex.
pub fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl MemoryRelay {
    /// Serves the socket at `path` (which must not exist), owner-only.
    pub fn start(
        path: &Path,
        token: String,
        run: RunIdentity,
        bus: Arc<dyn Bus>,
    ) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "the memory socket's path {} is longer than a Unix socket's {MAX_SOCKET_PATH} \
                 bytes; set TMPDIR to a shorter directory",
                path.display()
            ));
        }
        let failed = |err: std::io::Error| format!("cannot open the run's memory socket: {err}");
        let listener = UnixListener::bind(path).map_err(failed)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
        let stop = CancellationToken::new();
        let serving = stop.clone();
        let shared = Arc::new((token, run, bus));
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = serving.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(err) => {
                            tracing::warn!(error = %err, "the memory socket stopped accepting");
                            return;
                        }
                    },
                };
                let shared = Arc::clone(&shared);
                let stop = serving.clone();
                tokio::spawn(async move {
                    let (token, run, bus) = &*shared;
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = serve(stream, token, run, bus.as_ref()) => {}
                    }
                });
            }
        });
        Ok(Self { stop })
    }
}

/// Answers each request line on `stream` until it closes.
async fn serve(stream: UnixStream, token: &str, run: &RunIdentity, bus: &dyn Bus) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(u64::MAX));
    loop {
        let mut line = Vec::new();
        lines.get_mut().set_limit(MAX_LINE_BYTES as u64);
        match lines.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let answer = match line.last() {
            Some(b'\n') => answer(&line, token, run, bus).await,
            _ => to_value(refused(format!(
                "the request is over {MAX_LINE_BYTES} bytes; a value holds at most 64 KiB"
            ))),
        };
        let mut reply = serde_json::to_vec(&answer).unwrap_or_default();
        reply.push(b'\n');
        if write.write_all(&reply).await.is_err() {
            return;
        }
    }
}

fn refused(reason: impl Into<String>) -> MemoryAnswer {
    MemoryAnswer::Refused {
        reason: reason.into(),
    }
}

/// The answer to one request line: a memory operation's, or an approval's decision.
async fn answer(line: &[u8], token: &str, run: &RunIdentity, bus: &dyn Bus) -> Value {
    let Ok(mut request) = serde_json::from_slice::<serde_json::Map<String, Value>>(line) else {
        return to_value(refused("the request is not a JSON object"));
    };
    let given = request
        .remove("token")
        .and_then(|token| token.as_str().map(str::to_owned))
        .unwrap_or_default();
    if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        return to_value(refused("this socket answers only the run's own servers"));
    }
    if let Some(ask) = request.remove("approval") {
        let decision = match serde_json::from_value::<approval_wire::Ask>(ask) {
            Ok(ask) => approval(ask, run, bus).await,
            Err(err) => Decision {
                allow: false,
                message: format!("the approval request is not understood: {err}"),
            },
        };
        return serde_json::to_value(decision).unwrap_or_default();
    }
    let Some(op) = request.remove("op") else {
        return to_value(refused("the request names no operation"));
    };
    to_value(memory(op, run, bus).await)
}

fn to_value(answer: MemoryAnswer) -> Value {
    serde_json::to_value(answer).unwrap_or_default()
}

/// Asks the control plane about a tool call and waits for its decision, the run's slot lent
/// back meanwhile. Any failure to reach a decision is a denial.
async fn approval(ask: approval_wire::Ask, run: &RunIdentity, bus: &dyn Bus) -> Decision {
    let deny = |message: String| Decision {
        allow: false,
        message,
    };
    let asked = bus.request(WorkerRequest::Approval {
        run_id: run.run_id,
        attempt: run.attempt,
        worker_id: run.worker_id.clone(),
        ask: ApprovalAsk {
            tool: ask.tool,
            input: ask.input,
            tool_use_id: ask.tool_use_id,
        },
    });
    let mut answer = match tokio::time::timeout(ANSWER_TIMEOUT, asked).await {
        Ok(Ok(WorkerReply::Approval { answer })) => answer,
        Ok(Ok(WorkerReply::Rejected { reason })) => return deny(reason),
        Ok(Ok(other)) => return deny(format!("the control plane answered {other:?}")),
        Ok(Err(err)) => return deny(format!("the control plane cannot be reached: {err}")),
        Err(_) => return deny("the control plane did not answer in time".to_owned()),
    };
    let ApprovalAnswer::Pending { approval_id } = &answer else {
        return decision_of(answer);
    };
    let approval_id = approval_id.clone();
    run.slot.lend();
    loop {
        tokio::time::sleep(APPROVAL_POLL).await;
        let asked = bus.request(WorkerRequest::ApprovalStatus {
            run_id: run.run_id,
            attempt: run.attempt,
            worker_id: run.worker_id.clone(),
            approval_id: approval_id.clone(),
        });
        match tokio::time::timeout(ANSWER_TIMEOUT, asked).await {
            Ok(Ok(WorkerReply::Approval {
                answer: ApprovalAnswer::Pending { .. },
            })) => continue,
            Ok(Ok(WorkerReply::Approval { answer: decided })) => {
                answer = decided;
                break;
            }
            Ok(Ok(WorkerReply::Rejected { reason })) => {
                answer = ApprovalAnswer::Deny {
                    approval_id: Some(approval_id.clone()),
                    message: reason,
                };
                break;
            }
            // The control plane is away for a moment (a restart, NATS reconnecting): the
            // decision waits in the store, and the deadline is the control plane's.
            Ok(Ok(_)) | Ok(Err(_)) | Err(_) => continue,
        }
    }
    run.slot.take_back();
    decision_of(answer)
}

fn decision_of(answer: ApprovalAnswer) -> Decision {
    match answer {
        ApprovalAnswer::Allow { by, .. } => Decision {
            allow: true,
            message: format!("approved by {by}"),
        },
        ApprovalAnswer::Deny { message, .. } => Decision {
            allow: false,
            message,
        },
        ApprovalAnswer::Pending { .. } => Decision {
            allow: false,
            message: "no decision was reached".to_owned(),
        },
    }
}

/// Relays one memory operation.
async fn memory(op: Value, run: &RunIdentity, bus: &dyn Bus) -> MemoryAnswer {
    let asked = bus.request(WorkerRequest::Memory {
        run_id: run.run_id,
        attempt: run.attempt,
        worker_id: run.worker_id.clone(),
        op,
    });
    match tokio::time::timeout(ANSWER_TIMEOUT, asked).await {
        Ok(Ok(WorkerReply::Memory { answer })) => {
            serde_json::from_value(answer).unwrap_or_else(|err| {
                refused(format!(
                    "the control plane's answer is not understood: {err}"
                ))
            })
        }
        Ok(Ok(WorkerReply::Rejected { reason })) => refused(reason),
        Ok(Ok(other)) => refused(format!("the control plane answered {other:?}")),
        Ok(Err(err)) => refused(format!("the control plane cannot be reached: {err}")),
        Err(_) => refused(format!(
            "the control plane did not answer within {} s",
            ANSWER_TIMEOUT.as_secs()
        )),
    }
}
