//! Following a run live, in one place: the HTTP API's event stream, MCP's `wait: true` and the
//! completion of a run (which waits for its events to be stored) all use it.
//!
//! A follower is told when its run changed through `App::run_updates`: by this replica directly,
//! and in the fleet by the others through the notice relay (`crate::notices`), so it works
//! whichever replica the client reached. Notices are hints; a follower also looks again every
//! [`POLL`] whatever it was told, so a missed notice delays it by at most that.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use autopilot_proto::{RunEvent, RunId};
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::domain::{Run, ServiceResult};
use crate::services::runs;

/// How often a follower looks at its run even without being told it changed.
pub const POLL: Duration = Duration::from_secs(2);
/// Events read from the store at a time.
const EVENTS_PER_READ: u32 = 500;

/// Notices of changes to runs, from the moment of [`Updates::subscribe`]: subscribe before
/// reading or creating a run, so no change made after that is missed.
pub struct Updates(broadcast::Receiver<RunId>);

impl Updates {
    pub fn subscribe(app: &App) -> Self {
        Updates(app.run_updates.subscribe())
    }

    /// From now on, only changes to `run_id` matter.
    pub fn watch(self, run_id: RunId) -> RunWatch {
        RunWatch {
            run_id,
            updates: self.0,
        }
    }
}

/// Waits for changes to one run.
pub struct RunWatch {
    run_id: RunId,
    updates: broadcast::Receiver<RunId>,
}

impl RunWatch {
    /// Starts watching `run_id` (subscribed now: read the run after this).
    pub fn new(app: &App, run_id: RunId) -> Self {
        Updates::subscribe(app).watch(run_id)
    }

    /// Returns when the run may have changed: it was notified, notices were missed, or [`POLL`]
    /// passed.
    pub async fn changed(&mut self) {
        let told = async {
            loop {
                match self.updates.recv().await {
                    Ok(id) if id == self.run_id => return,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    // Only when the process is going away; the periodic look stands in.
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        let _ = tokio::time::timeout(POLL, told).await;
    }
}

/// What following a run's events yields.
#[derive(Debug)]
pub enum Followed {
    Event(RunEvent),
    /// The run is final and every event before this was given.
    End(Box<Run>),
}

/// The events of a run after sequence number `after`, then new ones as they are stored; ends
/// with [`Followed::End`] once the run is final, or without it when Autopilot shuts down.
pub fn events(app: Arc<App>, run_id: RunId, after: i64) -> impl Stream<Item = Followed> {
    struct State {
        app: Arc<App>,
        watch: RunWatch,
        run_id: RunId,
        cursor: i64,
        buffer: VecDeque<RunEvent>,
        finished: bool,
    }
    let shutdown = app.shutdown.clone();
    let state = State {
        watch: RunWatch::new(&app, run_id),
        app,
        run_id,
        cursor: after,
        buffer: VecDeque::new(),
        finished: false,
    };
    stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.buffer.pop_front() {
                state.cursor = event.seq;
                return Some((Followed::Event(event), state));
            }
            if state.finished {
                return None;
            }
            if read_events(&mut state.buffer, &state.app, state.run_id, state.cursor).await {
                continue;
            }
            let run = state.app.store.get_run(state.run_id).await.ok().flatten();
            if let Some(run) = run.filter(|run| run.status.is_terminal()) {
                // Events stored between the read above and this one still go out first.
                if read_events(&mut state.buffer, &state.app, state.run_id, state.cursor).await {
                    continue;
                }
                state.finished = true;
                return Some((Followed::End(Box::new(run)), state));
            }
            state.watch.changed().await;
        }
    })
    .take_until(shutdown.cancelled_owned())
}

/// Reads the next events after `cursor` into `buffer`; whether there were any.
async fn read_events(
    buffer: &mut VecDeque<RunEvent>,
    app: &App,
    run_id: RunId,
    cursor: i64,
) -> bool {
    match app.store.list_events(run_id, cursor, EVENTS_PER_READ).await {
        Ok(events) => {
            let any = !events.is_empty();
            buffer.extend(events);
            any
        }
        Err(err) => {
            tracing::warn!(run.id = %run_id, error = %err, "reading events for a follower failed");
            false
        }
    }
}

/// The states of a run as it goes: `run` as given, then the run each time it may have changed
/// (`watch`, made before `run` was read, tells when), until it is final, `until` passes (the run
/// as it is then comes last), `cancel` fires or Autopilot shuts down.
pub fn states(
    app: Arc<App>,
    watch: RunWatch,
    run: Run,
    until: Instant,
    cancel: CancellationToken,
) -> impl Stream<Item = ServiceResult<Run>> {
    stream::unfold(
        (app, watch, Some(run), false),
        move |(app, mut watch, current, done)| {
            let cancel = cancel.clone();
            async move {
                if done {
                    return None;
                }
                if let Some(run) = current {
                    let done = run.status.is_terminal();
                    return Some((Ok(run), (app, watch, None, done)));
                }
                let run_id = watch.run_id;
                let at_deadline = tokio::select! {
                    _ = watch.changed() => false,
                    _ = tokio::time::sleep_until(until) => true,
                    _ = cancel.cancelled() => return None,
                    _ = app.shutdown.cancelled() => return None,
                };
                match runs::get(&app, run_id).await {
                    Ok(run) => {
                        let done = at_deadline || run.status.is_terminal();
                        Some((Ok(run), (app, watch, None, done)))
                    }
                    Err(err) => Some((Err(err), (app, watch, None, true))),
                }
            }
        },
    )
}
