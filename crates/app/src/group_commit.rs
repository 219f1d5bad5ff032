//! Group commit for reservations. One writer task drains every reservation waiting for it into
//! one store transaction, then takes the next batch. There is no fixed wait: an idle system
//! commits a lone request at once, a busy one batches by itself, and one fsync serves hundreds
//! of buyers. A hold is acknowledged only after its batch has committed.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use stampede_core::judge::Refusal;
use stampede_core::Hold;

use crate::ports::{Holds, PortError, PortResult, ReserveRequest};

/// The judge's answer to one reservation, or why its batch failed.
pub type Verdict = PortResult<Result<Hold, Refusal>>;

struct Pending {
    request: ReserveRequest,
    reply: oneshot::Sender<Verdict>,
}

/// The sending side, held by the use cases. Dropping every clone lets the writer finish the
/// queue and stop: that is how shutdown flushes it.
#[derive(Clone)]
pub struct ReserveBatcher {
    queue: mpsc::Sender<Pending>,
}

/// Why a reservation could not even be queued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("too many reservations are waiting for the judge")]
    Full,
    #[error("the judge is shutting down")]
    Closed,
}

impl ReserveBatcher {
    /// Starts the writer over the judge (it needs only the `Holds` role). Returns the handle and the writer's task, which ends once
    /// every handle is dropped and the queue is drained.
    pub fn start(
        store: Arc<dyn Holds>,
        max_batch: usize,
        queue_depth: usize,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue_depth.max(1));
        let task = tokio::spawn(write_loop(store, rx, max_batch.max(1)));
        (Self { queue: tx }, task)
    }

    /// Queues one reservation; the receiver yields the judge's verdict once its batch has
    /// committed (or failed). Dropping the receiver does not withdraw the request.
    pub fn submit(
        &self,
        request: ReserveRequest,
    ) -> Result<oneshot::Receiver<Verdict>, EnqueueError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Pending { request, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => EnqueueError::Full,
                mpsc::error::TrySendError::Closed(_) => EnqueueError::Closed,
            })?;
        Ok(answer)
    }
}

async fn write_loop(store: Arc<dyn Holds>, mut rx: mpsc::Receiver<Pending>, max_batch: usize) {
    let mut batch: Vec<Pending> = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        let requests: Vec<ReserveRequest> = batch.iter().map(|p| p.request.clone()).collect();
        metrics::histogram!("stampede_group_commit_batch_size").record(requests.len() as f64);
        let started = std::time::Instant::now();
        let outcome = store.reserve(&requests).await;
        metrics::histogram!("stampede_group_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(verdicts) if verdicts.len() == batch.len() => {
                for (pending, verdict) in batch.drain(..).zip(verdicts) {
                    // A buyer who gave up waiting is not an error: the hold stands and expires.
                    let _ = pending.reply.send(Ok(verdict));
                }
            }
            Ok(verdicts) => {
                tracing::error!(
                    expected = batch.len(),
                    got = verdicts.len(),
                    "store returned a wrong number of verdicts"
                );
                for pending in batch.drain(..) {
                    let _ = pending
                        .reply
                        .send(Err(PortError::internal("verdict count mismatch")));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, size = batch.len(), "group commit failed");
                let message = e.to_string();
                let unavailable = matches!(e, PortError::Unavailable { .. });
                for pending in batch.drain(..) {
                    let err = if unavailable {
                        PortError::unavailable(message.clone())
                    } else {
                        PortError::internal(message.clone())
                    };
                    let _ = pending.reply.send(Err(err));
                }
            }
        }
    }
    tracing::debug!("group commit writer drained and stopped");
}
