//! The in-process bus of the embedded mode, with the same delivery semantics as JetStream:
//! a work queue per pool with ack / nak / in-progress, redelivery after the ack wait up to a
//! maximum delivery count, and dedup ids remembered for a window.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::{broadcast, mpsc, oneshot, Notify, Semaphore};
use tokio::time::Instant;

use crate::bus::{
    Acker, Bus, BusError, ControlMessage, Delivery, EventBatch, IncomingRequest, IncomingTask,
    Notice, RunDelivery, RunRequest, WorkerReply, WorkerRequest,
};
use crate::{TaskReply, WorkerTask};

/// One pool's tasks: the workers serving it share the receiver (each task goes to one).
type TaskQueue = (
    mpsc::Sender<IncomingTask>,
    Arc<tokio::sync::Mutex<mpsc::Receiver<IncomingTask>>>,
);

/// Tuning of the in-memory bus. The defaults suit production; tests shorten the timers.
#[derive(Clone, Debug)]
pub struct InMemoryBusConfig {
    /// A delivery neither acknowledged nor kept alive within this time is delivered again.
    pub ack_wait: Duration,
    /// After this many deliveries a message is dropped (and logged).
    pub max_deliver: u32,
    /// How long a dedup id is remembered.
    pub dedup_window: Duration,
    /// How long a worker request waits for the control plane's reply.
    pub request_timeout: Duration,
    /// Capacity of the event channel; publishers wait when it is full.
    pub event_capacity: usize,
}

impl Default for InMemoryBusConfig {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            dedup_window: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
            event_capacity: 4096,
        }
    }
}

#[derive(Clone)]
pub struct InMemoryBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: InMemoryBusConfig,
    queue: Mutex<QueueState>,
    queue_changed: Notify,
    events_tx: mpsc::Sender<EventBatch>,
    events_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<EventBatch>>>,
    control: broadcast::Sender<ControlMessage>,
    notices: broadcast::Sender<Notice>,
    requests_tx: mpsc::Sender<IncomingRequest>,
    requests_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<IncomingRequest>>>,
    tasks: Mutex<HashMap<String, TaskQueue>>,
}

#[derive(Default)]
struct QueueState {
    pools: HashMap<String, VecDeque<Queued>>,
    in_flight: HashMap<u64, InFlight>,
    next_token: u64,
    dedup_ids: HashSet<String>,
    dedup_order: VecDeque<(Instant, String)>,
}

struct Queued {
    request: RunRequest,
    delivery_count: u32,
    not_before: Option<Instant>,
}

struct InFlight {
    request: RunRequest,
    delivery_count: u32,
    deadline: Instant,
}

impl InMemoryBus {
    pub fn new(config: InMemoryBusConfig) -> Self {
        let (events_tx, events_rx) = mpsc::channel(config.event_capacity);
        let (requests_tx, requests_rx) = mpsc::channel(1024);
        let (control, _) = broadcast::channel(1024);
        let (notices, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                config,
                queue: Mutex::new(QueueState::default()),
                queue_changed: Notify::new(),
                events_tx,
                events_rx: Arc::new(tokio::sync::Mutex::new(events_rx)),
                control,
                notices,
                requests_tx,
                requests_rx: Arc::new(tokio::sync::Mutex::new(requests_rx)),
                tasks: Mutex::default(),
            }),
        }
    }
}

impl Default for InMemoryBus {
    fn default() -> Self {
        Self::new(InMemoryBusConfig::default())
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A poisoned lock means a panic while holding it; the queue state is still consistent
        // because every mutation is a single insert or remove.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves expired in-flight deliveries back to their queue, or drops them after
    /// `max_deliver` deliveries. Returns the earliest remaining deadline.
    fn expire_in_flight(&self, state: &mut QueueState, now: Instant) -> Option<Instant> {
        let expired: Vec<u64> = state
            .in_flight
            .iter()
            .filter(|(_, flight)| flight.deadline <= now)
            .map(|(token, _)| *token)
            .collect();
        for token in expired {
            let Some(flight) = state.in_flight.remove(&token) else {
                continue;
            };
            if flight.delivery_count >= self.config.max_deliver {
                tracing::error!(
                    run.id = %flight.request.run_id,
                    deliveries = flight.delivery_count,
                    "run request dropped after its last delivery went unacknowledged"
                );
                continue;
            }
            let pool = flight.request.pool.clone();
            state.pools.entry(pool).or_default().push_back(Queued {
                request: flight.request,
                delivery_count: flight.delivery_count,
                not_before: None,
            });
        }
        state.in_flight.values().map(|flight| flight.deadline).min()
    }

    /// Takes the next deliverable request of `pool`, or says when to look again.
    fn take_next(self: &Arc<Self>, pool: &str) -> Result<Delivery<RunRequest>, Option<Instant>> {
        let now = Instant::now();
        let mut state = self.lock();
        let earliest_deadline = self.expire_in_flight(&mut state, now);
        let queue = state.pools.entry(pool.to_owned()).or_default();
        let ready = queue
            .iter()
            .position(|q| q.not_before.is_none_or(|t| t <= now));
        let Some(index) = ready else {
            let earliest_retry = queue.iter().filter_map(|q| q.not_before).min();
            return Err([earliest_deadline, earliest_retry]
                .into_iter()
                .flatten()
                .min());
        };
        let queued = queue.remove(index).expect("index found above");
        let token = state.next_token;
        state.next_token += 1;
        let delivery_count = queued.delivery_count + 1;
        state.in_flight.insert(
            token,
            InFlight {
                request: queued.request.clone(),
                delivery_count,
                deadline: now + self.config.ack_wait,
            },
        );
        Ok(Delivery {
            message: queued.request,
            delivery_count,
            acker: Box::new(RunAcker {
                inner: Arc::clone(self),
                token,
            }),
        })
    }

    fn remember_dedup_id(&self, state: &mut QueueState, id: &str) -> bool {
        let now = Instant::now();
        while let Some((seen_at, _)) = state.dedup_order.front() {
            if now.duration_since(*seen_at) < self.config.dedup_window {
                break;
            }
            if let Some((_, old)) = state.dedup_order.pop_front() {
                state.dedup_ids.remove(&old);
            }
        }
        if !state.dedup_ids.insert(id.to_owned()) {
            return false;
        }
        state.dedup_order.push_back((now, id.to_owned()));
        true
    }
}

struct RunAcker {
    inner: Arc<Inner>,
    token: u64,
}

#[async_trait]
impl Acker for RunAcker {
    async fn ack(&self) -> Result<(), BusError> {
        self.inner.lock().in_flight.remove(&self.token);
        Ok(())
    }

    async fn nak(&self, delay: Duration) -> Result<(), BusError> {
        {
            let mut state = self.inner.lock();
            let Some(flight) = state.in_flight.remove(&self.token) else {
                return Ok(());
            };
            let pool = flight.request.pool.clone();
            state.pools.entry(pool).or_default().push_back(Queued {
                request: flight.request,
                delivery_count: flight.delivery_count,
                not_before: Some(Instant::now() + delay),
            });
        }
        self.inner.queue_changed.notify_waiters();
        Ok(())
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        let mut state = self.inner.lock();
        if let Some(flight) = state.in_flight.get_mut(&self.token) {
            flight.deadline = Instant::now() + self.inner.config.ack_wait;
        }
        Ok(())
    }
}

/// Event batches are acknowledged by taking them; a `nak` puts the batch back after the delay.
struct EventAcker {
    tx: mpsc::Sender<EventBatch>,
    batch: EventBatch,
}

#[async_trait]
impl Acker for EventAcker {
    async fn ack(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn nak(&self, delay: Duration) -> Result<(), BusError> {
        let tx = self.tx.clone();
        let batch = self.batch.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(batch).await;
        });
        Ok(())
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        Ok(())
    }
}

#[async_trait]
impl Bus for InMemoryBus {
    fn crosses_processes(&self) -> bool {
        false
    }

    async fn publish_run(&self, request: RunRequest) -> Result<bool, BusError> {
        {
            let mut state = self.inner.lock();
            if !self.inner.remember_dedup_id(&mut state, &request.dedup_id) {
                return Ok(false);
            }
            let pool = request.pool.clone();
            state.pools.entry(pool).or_default().push_back(Queued {
                request,
                delivery_count: 0,
                not_before: None,
            });
        }
        self.inner.queue_changed.notify_waiters();
        Ok(true)
    }

    async fn pull_runs(
        &self,
        pool: &str,
        slots: Arc<Semaphore>,
        _batch: usize,
    ) -> Result<BoxStream<'static, RunDelivery>, BusError> {
        let inner = Arc::clone(&self.inner);
        let pool = pool.to_owned();
        let deliveries = stream::unfold((inner, pool, slots), |(inner, pool, slots)| async move {
            // A free slot first: requests wait in the queue, not at a busy worker.
            let slot = Arc::clone(&slots).acquire_owned().await.ok()?;
            loop {
                let delivery = {
                    let changed = inner.queue_changed.notified();
                    tokio::pin!(changed);
                    // Register before looking, so a publish between the look and the wait wakes us.
                    changed.as_mut().enable();
                    match inner.take_next(&pool) {
                        Ok(delivery) => Some(delivery),
                        Err(Some(wake_at)) => {
                            tokio::select! {
                                _ = &mut changed => {}
                                _ = tokio::time::sleep_until(wake_at) => {}
                            }
                            None
                        }
                        Err(None) => {
                            changed.await;
                            None
                        }
                    }
                };
                if let Some(delivery) = delivery {
                    return Some((RunDelivery { delivery, slot }, (inner, pool, slots)));
                }
            }
        });
        Ok(deliveries.boxed())
    }

    async fn publish_events(&self, batch: EventBatch) -> Result<(), BusError> {
        self.inner
            .events_tx
            .send(batch)
            .await
            .map_err(|_| BusError::Closed)
    }

    async fn pull_events(&self) -> Result<BoxStream<'static, Delivery<EventBatch>>, BusError> {
        let rx = Arc::clone(&self.inner.events_rx);
        let tx = self.inner.events_tx.clone();
        let batches = stream::unfold((rx, tx), |(rx, tx)| async move {
            let batch = rx.lock().await.recv().await?;
            let acker = Box::new(EventAcker {
                tx: tx.clone(),
                batch: batch.clone(),
            });
            Some((
                Delivery {
                    message: batch,
                    delivery_count: 1,
                    acker,
                },
                (rx, tx),
            ))
        });
        Ok(batches.boxed())
    }

    async fn publish_control(&self, message: ControlMessage) -> Result<(), BusError> {
        // No subscriber is not an error: no worker is running anything to cancel.
        let _ = self.inner.control.send(message);
        Ok(())
    }

    async fn subscribe_control(&self) -> Result<BoxStream<'static, ControlMessage>, BusError> {
        Ok(broadcast_stream(self.inner.control.subscribe()).boxed())
    }

    async fn publish_notice(&self, notice: Notice) -> Result<(), BusError> {
        let _ = self.inner.notices.send(notice);
        Ok(())
    }

    async fn subscribe_notices(&self) -> Result<BoxStream<'static, Notice>, BusError> {
        Ok(broadcast_stream(self.inner.notices.subscribe()).boxed())
    }

    async fn request(&self, request: WorkerRequest) -> Result<WorkerReply, BusError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests_tx
            .send(IncomingRequest { request, reply })
            .await
            .map_err(|_| BusError::Closed)?;
        let timeout = self.inner.config.request_timeout;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(BusError::Unavailable(
                "the control plane dropped the request".into(),
            )),
            Err(_) => Err(BusError::Timeout(timeout)),
        }
    }

    async fn serve_requests(&self) -> Result<BoxStream<'static, IncomingRequest>, BusError> {
        let rx = Arc::clone(&self.inner.requests_rx);
        let requests = stream::unfold(rx, |rx| async move {
            let request = rx.lock().await.recv().await?;
            Some((request, rx))
        });
        Ok(requests.boxed())
    }

    async fn request_task(
        &self,
        pool: &str,
        task: WorkerTask,
        timeout: Duration,
    ) -> Result<TaskReply, BusError> {
        // Served while a worker's stream holds the receiver beside the map's own handle.
        let sender = {
            let tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
            tasks
                .get(pool)
                .filter(|(_, rx)| Arc::strong_count(rx) > 1)
                .map(|(tx, _)| tx.clone())
        };
        let Some(sender) = sender else {
            return Err(BusError::Unavailable(format!(
                "no worker serves pool `{pool}`; start one (or use a pool that has workers)"
            )));
        };
        let (reply, answer) = oneshot::channel();
        sender
            .send(IncomingTask {
                request: task,
                reply,
            })
            .await
            .map_err(|_| BusError::Closed)?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(BusError::Unavailable(
                "the worker dropped the task without answering".into(),
            )),
            Err(_) => Err(BusError::Timeout(timeout)),
        }
    }

    async fn serve_tasks(&self, pool: &str) -> Result<BoxStream<'static, IncomingTask>, BusError> {
        let rx = {
            let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
            let (_, rx) = tasks.entry(pool.to_owned()).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(64);
                (tx, Arc::new(tokio::sync::Mutex::new(rx)))
            });
            Arc::clone(rx)
        };
        let tasks = stream::unfold(rx, |rx| async move {
            let task = rx.lock().await.recv().await?;
            Some((task, rx))
        });
        Ok(tasks.boxed())
    }
}

/// Control messages and notices through a broadcast receiver. A subscriber that lags skips what
/// it missed; workers also learn of cancellation from their heartbeat replies, followers look
/// again periodically.
fn broadcast_stream<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(message) => return Some((message, rx)),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "broadcast subscriber lagged");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
