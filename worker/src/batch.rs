//! Requests that carry many items. Callers hand in one item each and wait for its reply; one
//! task sends them, one request at a time, with every item that arrived while the previous
//! request was on the way. An idle worker sends each item at once; a loaded one sends fewer,
//! larger requests, and the control plane stores a request's items in one statement.

use std::future::Future;

use autopilot_proto::BusError;
use tokio::sync::{mpsc, oneshot};

/// An item, its size, and where its reply goes.
type Waiting<I, R> = (I, usize, oneshot::Sender<Result<R, BusError>>);

pub struct Batcher<I, R> {
    tx: mpsc::UnboundedSender<Waiting<I, R>>,
}

/// What one request may carry: at most `items`, and no more than `bytes` by the sizes the
/// callers gave (a first item larger than that still goes, alone).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub items: usize,
    pub bytes: usize,
}

impl<I: Send + 'static, R: Send + 'static> Batcher<I, R> {
    /// Starts the sending task; it ends when the batcher is dropped. `send` answers with one
    /// reply per item, in order.
    pub fn start<F, Fut>(limits: Limits, send: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, BusError>> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiting<I, R>>();
        tokio::spawn(async move {
            let mut carried = None;
            loop {
                let first = match carried.take() {
                    Some(first) => first,
                    None => match rx.recv().await {
                        Some(first) => first,
                        None => return,
                    },
                };
                let mut bytes = first.1;
                let mut batch = vec![first];
                while batch.len() < limits.items.max(1) {
                    let Ok(next) = rx.try_recv() else { break };
                    if bytes + next.1 > limits.bytes {
                        carried = Some(next);
                        break;
                    }
                    bytes += next.1;
                    batch.push(next);
                }
                let (items, waiting): (Vec<I>, Vec<_>) = batch
                    .into_iter()
                    .map(|(item, _, waiter)| (item, waiter))
                    .unzip();
                let count = items.len();
                match send(items).await {
                    Ok(replies) if replies.len() == count => {
                        for (waiter, reply) in waiting.into_iter().zip(replies) {
                            let _ = waiter.send(Ok(reply));
                        }
                    }
                    Ok(replies) => {
                        let err = BusError::Malformed(format!(
                            "{} replies to a request of {count} items",
                            replies.len()
                        ));
                        for waiter in waiting {
                            let _ = waiter.send(Err(err.clone()));
                        }
                    }
                    Err(err) => {
                        for waiter in waiting {
                            let _ = waiter.send(Err(err.clone()));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Sends `item`, of `size` bytes in a request, with whatever else is waiting, and returns
    /// its reply.
    pub async fn call(&self, item: I, size: usize) -> Result<R, BusError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((item, size, reply))
            .map_err(|_| BusError::Closed)?;
        answer.await.map_err(|_| BusError::Closed)?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    fn limits(items: usize, bytes: usize) -> Limits {
        Limits { items, bytes }
    }

    /// Calls with an item whose size is its value.
    async fn call(batcher: &Batcher<u32, u32>, item: u32) -> Result<u32, BusError> {
        batcher.call(item, item as usize).await
    }

    /// A batcher whose requests take 20 ms and answer each item with its double, recording the
    /// items of every request.
    type Requests = Arc<Mutex<Vec<Vec<u32>>>>;

    fn recording(limits: Limits) -> (Arc<Batcher<u32, u32>>, Requests) {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let batcher = Batcher::start(limits, move |items: Vec<u32>| {
            seen.lock().unwrap().push(items.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(items.into_iter().map(|item| item * 2).collect())
            }
        });
        (Arc::new(batcher), requests)
    }

    #[tokio::test]
    async fn items_waiting_during_a_request_go_together_in_the_next() {
        let (batcher, requests) = recording(limits(64, 1000));
        let first = tokio::spawn({
            let batcher = Arc::clone(&batcher);
            async move { call(&batcher, 1).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let rest: Vec<_> = (2..=5)
            .map(|item| {
                let batcher = Arc::clone(&batcher);
                tokio::spawn(async move { call(&batcher, item).await })
            })
            .collect();
        assert_eq!(first.await.unwrap().unwrap(), 2);
        for (item, reply) in (2..=5).zip(rest) {
            assert_eq!(reply.await.unwrap().unwrap(), item * 2);
        }
        assert_eq!(*requests.lock().unwrap(), vec![vec![1], vec![2, 3, 4, 5]]);
    }

    #[tokio::test]
    async fn a_request_stays_within_its_limits() {
        let (batcher, requests) = recording(limits(3, 10));
        let first = tokio::spawn({
            let batcher = Arc::clone(&batcher);
            async move { call(&batcher, 1).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Four by count, then by size: 4 + 4 fit in 10, the next 4 does not; 12 goes alone.
        let items = [1, 1, 1, 1, 4, 4, 4, 12];
        let waiting: Vec<_> = items
            .into_iter()
            .map(|item| {
                let batcher = Arc::clone(&batcher);
                tokio::spawn(async move { call(&batcher, item).await })
            })
            .collect();
        // Let every call queue up before the first request is answered.
        first.await.unwrap().unwrap();
        for reply in waiting {
            reply.await.unwrap().unwrap();
        }
        assert_eq!(
            *requests.lock().unwrap(),
            vec![vec![1], vec![1, 1, 1], vec![1, 4, 4], vec![4], vec![12]]
        );
    }

    #[tokio::test]
    async fn a_failed_request_fails_each_of_its_items() {
        let batcher = Batcher::start(limits(8, 100), |_items: Vec<u32>| async {
            Err::<Vec<u32>, _>(BusError::Timeout(Duration::from_secs(1)))
        });
        assert!(matches!(call(&batcher, 1).await, Err(BusError::Timeout(_))));
        let short = Batcher::start(limits(8, 100), |_items: Vec<u32>| async {
            Ok::<Vec<u32>, BusError>(Vec::new())
        });
        assert!(matches!(call(&short, 1).await, Err(BusError::Malformed(_))));
    }
}
