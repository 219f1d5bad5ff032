//! Group commit. One writer task drains every reservation waiting for it into one store
//! transaction, then takes the next batch. There is no fixed wait: an idle system commits a
//! lone request at once, a busy one batches by itself, and one fsync serves hundreds of buyers.
//! A hold is acknowledged only after its batch has committed. [`WriteBatcher`] is the same loop
//! for writes whose callers wait only until they are durable (audit entries), and
//! [`CheckoutWriter`] the one over every step of a checkout.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use stampede_core::judge::Refusal;
use stampede_core::{Hold, Order};

use crate::ports::{
    CheckoutError, CheckoutWrite, CheckoutWritten, Holds, IdempotencyAnswer, IdempotencyClaim,
    IdempotencyStart, KeyedOrder, NewOrder, Notification, OutboxEvent, OutboxLease, OwedDone,
    PaymentAnswer, PaymentApplied, PortError, PortResult, ReserveRequest, Store,
};

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
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(same_class(&e)));
                }
            }
        }
    }
    tracing::debug!("group commit writer drained and stopped");
}

/// A batch's failure, told to each of its callers: the same words and the same class (worth
/// a retry, or not).
fn same_class(e: &PortError) -> PortError {
    match e {
        PortError::Unavailable { .. } => PortError::unavailable(e.to_string()),
        _ => PortError::internal(e.to_string()),
    }
}

/// Writes a batch in one store transaction: an answer per item, in order.
pub type BatchWrite<T, R = ()> =
    Box<dyn Fn(Vec<T>) -> futures::future::BoxFuture<'static, Vec<PortResult<R>>> + Send + Sync>;

type Waiting<T, R> = (T, oneshot::Sender<PortResult<R>>);

/// Group commit for writes a caller waits on only until they are durable (and for their
/// answer): whatever is waiting when the writer is free goes in one transaction. Dropping
/// every clone lets the writer finish the queue and stop.
pub struct WriteBatcher<T, R = ()> {
    queue: mpsc::Sender<Waiting<T, R>>,
}

impl<T, R> Clone for WriteBatcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> WriteBatcher<T, R> {
    /// Starts the writer over `write`, at most `max_batch` items per transaction. Returns the
    /// handle and the writer's task, which ends once every handle is dropped and the queue is
    /// drained.
    pub fn start(write: BatchWrite<T, R>, max_batch: usize) -> (Self, tokio::task::JoinHandle<()>) {
        let max_batch = max_batch.max(1);
        let (tx, mut rx) = mpsc::channel::<Waiting<T, R>>(max_batch * 4);
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut batch, max_batch).await > 0 {
                let (items, replies): (Vec<T>, Vec<_>) = batch.drain(..).unzip();
                let size = items.len();
                let mut answers = write(items).await.into_iter();
                for reply in replies {
                    let answer = answers.next().unwrap_or_else(|| {
                        Err(PortError::internal(format!(
                            "a batch of {size} lacked answers"
                        )))
                    });
                    let _ = reply.send(answer);
                }
            }
        });
        (Self { queue: tx }, task)
    }

    /// Writes `item` with whatever else is waiting; returns its answer once its transaction
    /// committed. Waits for room in the queue rather than dropping the write.
    pub async fn write(&self, item: T) -> PortResult<R> {
        let (reply, answer) = oneshot::channel();
        let stopped = || PortError::unavailable("the writer has stopped");
        self.queue
            .send((item, reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Group commit of every step of a checkout: new orders, the gateway's answers, the money
/// moves it did, idempotency keys' claims and answers, and the notifications they lead to.
/// A checkout passes through several kinds in turn; with one writer (SQLite), a batcher per
/// kind would queue its commits behind the others', so everything waiting, of every kind,
/// shares one commit instead (see `Store::write_checkouts`).
#[derive(Clone)]
pub struct CheckoutWriter(WriteBatcher<CheckoutWrite, CheckoutWritten>);

/// Takes the answer of the kind written, or says the store answered for another.
macro_rules! step {
    ($(#[$doc:meta])* $name:ident($item:ty) -> $answer:ty, $variant:ident, $answered:pat => $out:expr) => {
        $(#[$doc])*
        pub async fn $name(&self, item: $item) -> PortResult<$answer> {
            match self.0.write(CheckoutWrite::$variant(item)).await? {
                $answered => Ok($out),
                _ => Err(PortError::internal(concat!(
                    "a checkout write (",
                    stringify!($variant),
                    ") was answered for another kind"
                ))),
            }
        }
    };
}

impl CheckoutWriter {
    /// Starts the writer over `store`, at most `max_batch` steps per transaction; its task is
    /// detached (every caller waits for its own commit, so the queue is empty once the
    /// requests have drained).
    pub fn start(store: Arc<dyn Store>, max_batch: usize) -> Self {
        let write: BatchWrite<CheckoutWrite, CheckoutWritten> = Box::new(move |items| {
            let store = store.clone();
            Box::pin(async move { store.write_checkouts(&items).await })
        });
        Self(WriteBatcher::start(write, max_batch).0)
    }

    step!(
        /// A new order over the buyer's holds.
        order(NewOrder) -> Result<Order, CheckoutError>, Order, CheckoutWritten::Order(r) => r
    );
    step!(
        /// The gateway's answer for an order.
        payment(PaymentAnswer) -> Option<PaymentApplied>, Payment,
        CheckoutWritten::Payment(r) => r
    );
    step!(
        /// A money move the gateway did.
        owed_done(OwedDone) -> bool, OwedDone, CheckoutWritten::OwedDone(r) => r
    );
    step!(
        /// An idempotency key's claim.
        claim(IdempotencyClaim) -> IdempotencyStart, Claim, CheckoutWritten::Claim(r) => r
    );
    step!(
        /// The answer stored for a claimed key.
        answer(IdempotencyAnswer) -> (), Answer, CheckoutWritten::Answer => ()
    );
    step!(
        /// An idempotency key's claim and, if the claim is new, its order, in one commit where
        /// the store can.
        keyed_order(Box<KeyedOrder>) -> (IdempotencyStart, Option<Result<Order, CheckoutError>>),
        KeyedOrder, CheckoutWritten::KeyedOrder(start, order) => (start, order)
    );
    step!(
        /// The outbox relay's lease of waiting events, sharing the checkouts' commit.
        outbox_claim(OutboxLease) -> Vec<OutboxEvent>, OutboxClaim,
        CheckoutWritten::OutboxClaimed(events) => events
    );
    step!(
        /// Events the outbox relay delivered, sharing the checkouts' commit.
        outbox_delivered(Vec<String>) -> (), OutboxDelivered,
        CheckoutWritten::OutboxDelivered => ()
    );
    step!(
        /// A buyer's notification (false: it was there already).
        notice(Notification) -> bool, Notice, CheckoutWritten::Notice(r) => r
    );
}

/// The answer of a batch written as a whole, given to each of its `n` items.
pub fn for_each_of(n: usize, outcome: PortResult<()>) -> Vec<PortResult<()>> {
    (0..n)
        .map(|_| outcome.as_ref().map(|_| ()).map_err(same_class))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Batches = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A writer that records each batch, and fails when told to.
    fn recording(fail: bool) -> (BatchWrite<u32>, Batches) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        let write: BatchWrite<u32> = Box::new(move |items| {
            let seen = seen.clone();
            Box::pin(async move {
                let n = items.len();
                seen.lock().unwrap().push(items);
                let outcome = match fail {
                    true => Err(PortError::unavailable("disk gone")),
                    false => Ok(()),
                };
                for_each_of(n, outcome)
            })
        });
        (write, batches)
    }

    #[tokio::test]
    async fn writes_waiting_together_share_one_transaction() {
        let (write, batches) = recording(false);
        let (batcher, task) = WriteBatcher::start(write, 1_000);
        let writes = (0..100).map(|i| batcher.write(i));
        let results = futures::future::join_all(writes).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        drop(batcher);
        task.await.unwrap();
        let batches = batches.lock().unwrap().clone();
        assert_eq!(
            batches,
            vec![(0..100).collect::<Vec<u32>>()],
            "one batch, in order"
        );
    }

    #[tokio::test]
    async fn each_caller_gets_its_own_answer_and_a_short_batch_fails_the_rest() {
        // Doubles each item, but answers at most 5 per batch.
        let write: BatchWrite<u32, u32> = Box::new(|items| {
            Box::pin(async move { items.iter().take(5).map(|i| Ok(i * 2)).collect() })
        });
        let (batcher, task) = WriteBatcher::start(write, 8);
        let answers = futures::future::join_all((0..8).map(|i| batcher.write(i))).await;
        let doubled: Vec<u32> = answers[..5].iter().map(|a| *a.as_ref().unwrap()).collect();
        assert_eq!(doubled, vec![0, 2, 4, 6, 8]);
        assert!(answers[5..]
            .iter()
            .all(|a| matches!(a, Err(PortError::Internal { .. }))));
        drop(batcher);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_batch_cap_splits_and_a_failure_reaches_every_caller_with_its_class() {
        let (write, batches) = recording(true);
        let (batcher, task) = WriteBatcher::start(write, 30);
        let results = futures::future::join_all((0..100).map(|i| batcher.write(i))).await;
        assert!(results
            .iter()
            .all(|r| matches!(r, Err(PortError::Unavailable { .. }))));
        drop(batcher);
        task.await.unwrap();
        let sizes: Vec<usize> = batches.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![30, 30, 30, 10]);
    }
}
