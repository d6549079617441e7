//! The event ingester: stores run events from the bus in batches, idempotently, and tells live
//! followers.

use std::sync::Arc;
use std::time::Duration;

use autopilot_proto::{Delivery, EventBatch};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::services::runs;

/// Most deliveries stored in one transaction.
const MAX_DELIVERIES_PER_WRITE: usize = 64;

pub async fn run_ingester(app: Arc<App>, cancel: CancellationToken) -> anyhow::Result<()> {
    let mut batches = app
        .bus
        .pull_events()
        .await?
        .ready_chunks(MAX_DELIVERIES_PER_WRITE);
    loop {
        let deliveries: Vec<Delivery<EventBatch>> = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            next = batches.next() => match next {
                Some(deliveries) => deliveries,
                None => anyhow::bail!("the bus closed the event stream"),
            },
        };
        let events: Vec<_> = deliveries
            .iter()
            .flat_map(|d| d.message.events.iter().cloned())
            .collect();
        match runs::store_events(&app, &events).await {
            Ok(()) => {
                for delivery in &deliveries {
                    if let Err(err) = delivery.acker.ack().await {
                        tracing::warn!(error = %err, "could not acknowledge an event batch");
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, events = events.len(), "storing events failed; they will be redelivered");
                app.metrics.error("event_ingester");
                for delivery in &deliveries {
                    let _ = delivery.acker.nak(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
