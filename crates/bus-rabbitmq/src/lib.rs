//! The cluster event bus over RabbitMQ (AMQP 0-9-1, through `lapin` on the caller's tokio
//! runtime). One [`AmqpBus`] per node implements two ports:
//!
//! - [`EventBus`] (live events: stock moves, "sold out" cleared, sessions revoked). Publishing
//!   never waits: the event goes to this node's own subscribers at once, and a background task
//!   sends it to the fanout exchange `stampede.<namespace>.live`, which copies it to every
//!   node's exclusive queue `stampede.<namespace>.node.<node_id>`. Each node re-broadcasts what
//!   the OTHER nodes published (its own messages carry its `node_id` header and are skipped,
//!   so local subscribers see each event once). Best effort: while the broker is unreachable,
//!   other nodes miss this node's live events (they are superseded by the next ones anyway).
//! - [`OutboxSink`] (durable events from the transactional outbox): persistent messages to the
//!   durable direct exchange `stampede.<namespace>.events`, routed to the quorum queue
//!   `stampede.<namespace>.events`, published with publisher confirms. `Ok` only when the
//!   broker confirmed every message, so the outbox relay can mark them delivered; any doubt is
//!   an error, and the relay simply retries (consumers de-duplicate by event id).
//!
//! [`AmqpBus::consume_events`] makes the node one of the competing consumers of that queue.
//!
//! A supervisor task owns the connection: it connects, declares the topology, starts the
//! consumers and, whenever the connection or one of its channels dies, starts over with capped
//! backoff (at most [`MAX_BACKOFF`]). Nothing on the request path ever waits for the broker.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use stampede_app::ports::{Event, EventBus, OutboxEvent, OutboxSink, PortError, PortResult};

/// Events buffered per slow local subscriber (older ones are lost to a lagging subscriber,
/// as with the in-process bus).
pub const LIVE_SUBSCRIBER_CAPACITY: usize = 4096;
/// Live events waiting for the publisher task; beyond this they are dropped (and counted)
/// rather than slowing down the request that published them.
pub const LIVE_OUTGOING_CAPACITY: usize = 4096;
/// Unacknowledged durable events a consumer may hold at once (they are handled concurrently).
pub const PREFETCH: u16 = 64;
/// How long `deliver` waits for the broker's confirms before giving up.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between two connection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// First pause after a failed attempt (doubled up to [`MAX_BACKOFF`]), and the pause before
/// reconnecting after a connection was lost (so a flapping broker is not hammered).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// A connection attempt (TCP + handshake + topology) that takes longer is abandoned: a
/// black-holed address must not stall the supervisor.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the supervisor checks that the connection and its channels are still open.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// Heartbeat interval asked for unless the URL sets `heartbeat=`: a dead peer is noticed
/// within two of them. The server's default (60 s) would keep a half-dead connection, and the
/// exclusive live queue it holds (which the reconnecting node needs), for minutes.
const HEARTBEAT_SECS: u16 = 10;
/// Header naming the node that published a live event.
const NODE_HEADER: &str = "node_id";
/// Routing key binding the events exchange to the events queue.
const EVENTS_ROUTING_KEY: &str = "event";
/// Quorum queues count deliveries; RabbitMQ 4 drops a message after 20 by default, which a
/// consumer failing for a minute would reach. The outbox has already let go of the event by
/// then, so the limit is set out of reach: a failing event is retried, never dropped.
const DELIVERY_LIMIT: i64 = 1_000_000;
/// Pause before a failed event is handed back to the queue: the first retry comes soon, later
/// ones (the broker counts deliveries) back off up to [`MAX_NACK_PAUSE`].
const FIRST_NACK_PAUSE: Duration = Duration::from_millis(250);
const MAX_NACK_PAUSE: Duration = Duration::from_secs(5);

const METRIC_CONNECTED: &str = "stampede_bus_connected";
const METRIC_LIVE_DROPPED: &str = "stampede_bus_live_dropped_total";
const METRIC_DELIVERED: &str = "stampede_bus_events_delivered_total";
const METRIC_RECONNECTS: &str = "stampede_bus_reconnects_total";

/// Where the bus connects and which names it uses.
#[derive(Clone)]
pub struct AmqpConfig {
    /// AMQP URL, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f` (`%2f` is the vhost `/`).
    pub url: String,
    /// Prefix of every exchange and queue (`stampede.<namespace>.…`), so several deployments
    /// (or tests) can share one broker without seeing each other's events.
    pub namespace: String,
    /// This node's identity, unique in the cluster: names its live queue and marks its live
    /// events so it does not receive them back.
    pub node_id: String,
}

impl std::fmt::Debug for AmqpConfig {
    /// Hides the password that the URL may carry, so the config can be logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact(&self.url))
            .field("namespace", &self.namespace)
            .field("node_id", &self.node_id)
            .finish()
    }
}

/// The URL without its user-info part (`amqp://***@host/...`).
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Applies durable events taken from the events queue (e.g. writes the notification whose id
/// is the event's id). Called at least once per event, possibly concurrently and on several
/// nodes: it must be idempotent by event id.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// `Ok` acknowledges the event (it leaves the queue); `Err` hands it back to the queue
    /// after a short pause, to be tried again here or on another node.
    async fn handle(&self, event: OutboxEvent) -> PortResult<()>;
}

/// The exchange and queue names of one namespace and node.
#[derive(Debug, Clone)]
struct Names {
    live_exchange: String,
    events_exchange: String,
    events_queue: String,
    node_queue: String,
}

impl Names {
    fn new(config: &AmqpConfig) -> Self {
        let ns = &config.namespace;
        Self {
            live_exchange: format!("stampede.{ns}.live"),
            events_exchange: format!("stampede.{ns}.events"),
            events_queue: format!("stampede.{ns}.events"),
            node_queue: format!("stampede.{ns}.node.{}", config.node_id),
        }
    }
}

/// An AMQP short string, or an error if it is longer than the protocol allows (255 bytes).
fn short(s: &str) -> Result<ShortString, String> {
    ShortString::try_new(s).map_err(|e| format!("name {s:?} is not a valid AMQP name: {e}"))
}

/// One live connection with the channels the bus uses on it. Replaced as a whole when
/// anything in it breaks.
struct Link {
    conn: Connection,
    /// Publishes live events (no confirms: they are best effort).
    live_out: Channel,
    /// Publishes durable events, in publisher-confirm mode.
    confirm: Channel,
    /// Consumes this node's live queue; kept here so it stays open as long as the link.
    live_in: Channel,
    /// Raised by whoever finds the link broken (a consumer that ended, a closed channel): the
    /// supervisor then drops it and reconnects.
    lost: Notify,
}

impl Link {
    /// Whether the connection and the bus's own channels are all still open.
    fn healthy(&self) -> bool {
        self.conn.status().connected()
            && self.live_out.status().connected()
            && self.confirm.status().connected()
            && self.live_in.status().connected()
    }
}

/// State shared by the bus handle and its background tasks.
struct Shared {
    config: AmqpConfig,
    names: Names,
    /// This node's live events, whoever published them.
    local: broadcast::Sender<Event>,
    /// Live events on their way to the broker.
    outgoing: mpsc::Sender<Event>,
    /// The current link, if connected.
    link: watch::Sender<Option<Arc<Link>>>,
    connected: AtomicBool,
    /// Registered durable-event handlers; also the lock that orders starting their consumers
    /// against link changes (so each handler gets exactly one consumer per link).
    handlers: Mutex<Vec<Arc<dyn EventHandler>>>,
    /// Set once to stop every task and close the connection.
    shutdown: watch::Sender<bool>,
    /// Set by `delete_topology`: consumers cancelled by the deletion must not make the
    /// supervisor declare everything again.
    retired: AtomicBool,
    consumer_seq: AtomicU64,
}

impl Shared {
    fn handlers(&self) -> MutexGuard<'_, Vec<Arc<dyn EventHandler>>> {
        // A poisoned list is still a valid list (pushes cannot half-happen).
        self.handlers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn current_link(&self) -> Option<Arc<Link>> {
        self.link.borrow().clone()
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow() || self.retired.load(Ordering::SeqCst)
    }

    fn consumer_tag(&self, kind: &str) -> String {
        let n = self.consumer_seq.fetch_add(1, Ordering::Relaxed);
        format!("stampede.{}.{kind}.{n}", self.config.node_id)
    }
}

/// Waits until the bus is shut down.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means the bus is gone.
    let _ = rx.wait_for(|stop| *stop).await;
}

fn live_dropped(n: u64) {
    metrics::counter!(METRIC_LIVE_DROPPED).increment(n);
}

/// The RabbitMQ event bus of one node. Cheap to share (`Arc`); dropping the last handle (or
/// calling [`AmqpBus::close`]) stops its tasks and closes the connection.
pub struct AmqpBus {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AmqpBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBus")
            .field("config", &self.shared.config)
            .field("connected", &self.connected())
            .finish()
    }
}

impl AmqpBus {
    /// Returns at once even if the broker is down, so a node starts (and serves its local
    /// subscribers) without it: a supervisor task connects, and reconnects with capped backoff
    /// (≤ 2 s) whenever the connection drops, re-declaring the topology and restarting the
    /// consumers. Must be called inside a tokio runtime (lapin runs its I/O on it).
    pub async fn start(config: AmqpConfig) -> Arc<AmqpBus> {
        let (local, _) = broadcast::channel(LIVE_SUBSCRIBER_CAPACITY);
        let (outgoing, outgoing_rx) = mpsc::channel(LIVE_OUTGOING_CAPACITY);
        let (link, _) = watch::channel(None);
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            names: Names::new(&config),
            config,
            local,
            outgoing,
            link,
            connected: AtomicBool::new(false),
            handlers: Mutex::new(Vec::new()),
            shutdown,
            retired: AtomicBool::new(false),
            consumer_seq: AtomicU64::new(0),
        });
        metrics::gauge!(METRIC_CONNECTED).set(0.0);
        // Make the counters visible (at 0) before anything happens.
        metrics::counter!(METRIC_LIVE_DROPPED).increment(0);
        metrics::counter!(METRIC_DELIVERED).increment(0);
        metrics::counter!(METRIC_RECONNECTS).increment(0);

        tokio::spawn(run_live_out(shared.clone(), outgoing_rx));
        let supervisor = tokio::spawn(supervise(shared.clone()));
        Arc::new(AmqpBus {
            shared,
            supervisor: Mutex::new(Some(supervisor)),
        })
    }

    /// Starts competing consumers of the durable event queue that call `handler` for each
    /// event, so the work is shared by every node that consumes: ack after `Ok`, nack with
    /// requeue after `Err` (after a short pause, so a failing dependency is not spun on).
    /// Up to [`PREFETCH`] events are handled concurrently. Survives reconnects: the consumer
    /// is started again on every new connection. Undecodable messages are logged and dropped.
    pub fn consume_events(self: &Arc<Self>, handler: Arc<dyn EventHandler>) {
        let shared = &self.shared;
        let mut handlers = shared.handlers();
        handlers.push(handler.clone());
        if let Some(link) = shared.current_link() {
            tokio::spawn(run_events_in(shared.clone(), link, handler));
        }
    }

    /// Whether a connection is up right now, with the topology declared and this node's live
    /// queue consumed (for `/readyz` and a metric).
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Deletes this namespace's events queue and both exchanges, and this node's live queue
    /// (for tests' cleanup), then stops the bus, which would otherwise declare them again.
    /// Other buses of the namespace should be closed first for the same reason.
    pub async fn delete_topology(&self) -> Result<(), PortError> {
        self.shared.retired.store(true, Ordering::SeqCst);
        let result = self.delete_topology_now().await;
        self.close().await;
        result
    }

    async fn delete_topology_now(&self) -> Result<(), PortError> {
        let link = self
            .shared
            .current_link()
            .ok_or_else(|| PortError::unavailable("not connected to RabbitMQ"))?;
        let names = &self.shared.names;
        let work = async {
            let channel = link
                .conn
                .create_channel()
                .await
                .map_err(|e| e.to_string())?;
            for queue in [&names.events_queue, &names.node_queue] {
                channel
                    .queue_delete(short(queue)?, QueueDeleteOptions::default())
                    .await
                    .map_err(|e| format!("deleting queue {queue}: {e}"))?;
            }
            for exchange in [&names.live_exchange, &names.events_exchange] {
                channel
                    .exchange_delete(short(exchange)?, ExchangeDeleteOptions::default())
                    .await
                    .map_err(|e| format!("deleting exchange {exchange}: {e}"))?;
            }
            let _ = channel.close(200, "OK".into()).await;
            Ok::<(), String>(())
        };
        match tokio::time::timeout(CONFIRM_TIMEOUT, work).await {
            Ok(result) => result.map_err(PortError::unavailable),
            Err(_) => Err(PortError::unavailable("deleting the topology timed out")),
        }
    }

    /// Stops the bus: its consumers end (unacknowledged events go back to the queue for the
    /// other nodes), the connection is closed, and it never reconnects. Waits (at most a few
    /// seconds) for the connection to be closed. Idempotent.
    pub async fn close(&self) {
        self.shared.shutdown.send_replace(true);
        let supervisor = self
            .supervisor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(supervisor) = supervisor {
            let _ = tokio::time::timeout(Duration::from_secs(3), supervisor).await;
        }
    }
}

impl Drop for AmqpBus {
    fn drop(&mut self) {
        // The tasks hold the shared state, not the bus: tell them to stop.
        self.shared.shutdown.send_replace(true);
    }
}

impl EventBus for AmqpBus {
    /// Sends the event to this node's subscribers at once, then queues it for the other
    /// nodes. Never waits and never fails: when the queue is full or the broker unreachable,
    /// the other nodes miss it (counted in `stampede_bus_live_dropped_total`).
    fn publish(&self, event: Event) {
        let shared = &self.shared;
        if !self.connected() {
            let _ = shared.local.send(event);
            live_dropped(1);
            return;
        }
        // No local subscriber is not an error: nobody is watching right now.
        let _ = shared.local.send(event.clone());
        if shared.outgoing.try_send(event).is_err() {
            live_dropped(1);
        }
    }

    /// This node's live events, local and from the other nodes, from now on.
    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.local.subscribe()
    }
}

#[async_trait]
impl OutboxSink for AmqpBus {
    /// Publishes every event persistently (delivery mode 2, `message_id` = event id) and
    /// waits for the broker's confirms. `Err(Unavailable)` on no connection, a nack, an
    /// unroutable message (the queue is missing), a closed channel, or no confirm within
    /// [`CONFIRM_TIMEOUT`]: the caller keeps the events and retries.
    async fn deliver(&self, events: &[OutboxEvent]) -> PortResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let shared = &self.shared;
        let link = shared
            .current_link()
            .ok_or_else(|| PortError::unavailable("not connected to RabbitMQ"))?;
        let result =
            tokio::time::timeout(CONFIRM_TIMEOUT, publish_confirmed(shared, &link, events))
                .await
                .unwrap_or_else(|_| {
                    Err(PortError::unavailable(format!(
                        "RabbitMQ did not confirm {} event(s) within {CONFIRM_TIMEOUT:?}",
                        events.len()
                    )))
                });
        match &result {
            Ok(()) => {
                metrics::counter!(METRIC_DELIVERED).increment(events.len() as u64);
            }
            Err(e) => {
                if !link.confirm.status().connected() {
                    // The channel is gone: have the supervisor build a new link.
                    link.lost.notify_one();
                }
                debug!(error = %e, count = events.len(), "events not delivered");
            }
        }
        result
    }
}

/// Publishes `events` on the link's confirm channel and waits for every confirm.
async fn publish_confirmed(shared: &Shared, link: &Link, events: &[OutboxEvent]) -> PortResult<()> {
    let names = &shared.names;
    let exchange = short(&names.events_exchange).map_err(PortError::internal)?;
    let routing_key = short(EVENTS_ROUTING_KEY).map_err(PortError::internal)?;
    let mut confirms = Vec::with_capacity(events.len());
    for event in events {
        let payload = serde_json::to_vec(event)
            .map_err(|e| PortError::internal(format!("encoding event {}: {e}", event.id)))?;
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(node_header(&shared.config.node_id));
        if let Ok(id) = ShortString::try_new(event.id.as_str()) {
            properties = properties.with_message_id(id);
        }
        let confirm = link
            .confirm
            .basic_publish(
                exchange.clone(),
                routing_key.clone(),
                // Mandatory: a message no queue takes comes back instead of vanishing.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &payload,
                properties,
            )
            .await
            .map_err(|e| PortError::unavailable(format!("publishing event {}: {e}", event.id)))?;
        confirms.push((event.id.as_str(), confirm));
    }
    for (id, confirm) in confirms {
        match confirm.await {
            Ok(Confirmation::Ack(None)) => {}
            Ok(Confirmation::Ack(Some(returned))) => {
                return Err(PortError::unavailable(format!(
                    "event {id} was not routed to a queue ({})",
                    returned.reply_text
                )));
            }
            Ok(Confirmation::Nack(_)) => {
                return Err(PortError::unavailable(format!(
                    "RabbitMQ refused (nacked) event {id}"
                )));
            }
            Ok(Confirmation::NotRequested) => {
                return Err(PortError::internal(
                    "the confirm channel is not in confirm mode",
                ));
            }
            Err(e) => {
                return Err(PortError::unavailable(format!(
                    "no confirm for event {id}: {e}"
                )));
            }
        }
    }
    Ok(())
}

fn node_header(node_id: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        NODE_HEADER.into(),
        AMQPValue::LongString(LongString::from(node_id.as_bytes().to_vec())),
    );
    headers
}

/// The `node_id` header of a message, if any.
fn header_node(delivery: &Delivery) -> Option<Vec<u8>> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(NODE_HEADER)? {
        AMQPValue::LongString(s) => Some(s.as_bytes().to_vec()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes().to_vec()),
        _ => None,
    }
}

/// How many times the broker has delivered this message before (quorum queues count).
fn delivery_count(delivery: &Delivery) -> u32 {
    let Some(headers) = delivery.properties.headers().as_ref() else {
        return 0;
    };
    let count = match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        _ => 0,
    };
    u32::try_from(count.clamp(0, 32)).unwrap_or(0)
}

/// Owns the connection: connect, declare, serve, and start over when it breaks.
async fn supervise(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let url = redact(&shared.config.url);
    let mut backoff = FIRST_BACKOFF;
    let mut ever_connected = false;
    let mut failures: u64 = 0;
    loop {
        if shared.stopping() {
            break;
        }
        let attempt = tokio::select! {
            attempt = tokio::time::timeout(CONNECT_TIMEOUT, open_link(&shared)) => attempt,
            () = stopped(&mut shutdown) => break,
        };
        let attempt = attempt.unwrap_or_else(|_| Err("connecting timed out".to_owned()));
        let (link, live_in) = match attempt {
            Ok((link, live_in)) => (Arc::new(link), live_in),
            Err(e) => {
                failures += 1;
                log_failure(failures, &url, &e, backoff);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stopped(&mut shutdown) => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = FIRST_BACKOFF;
        failures = 0;
        if ever_connected {
            metrics::counter!(METRIC_RECONNECTS).increment(1);
            info!(url = %url, node = %shared.config.node_id, "reconnected to RabbitMQ");
        } else {
            info!(url = %url, node = %shared.config.node_id, "connected to RabbitMQ");
        }
        ever_connected = true;
        go_live(&shared, &link, live_in);

        tokio::select! {
            () = watch_link(&link) => {}
            () = stopped(&mut shutdown) => {}
        }

        go_dark(&shared);
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            link.conn.close(200, "closing".into()),
        )
        .await;
        drop(link);
        if shared.stopping() {
            break;
        }
        warn!(url = %url, node = %shared.config.node_id, "RabbitMQ connection lost; reconnecting");
        tokio::select! {
            () = tokio::time::sleep(FIRST_BACKOFF) => {}
            () = stopped(&mut shutdown) => break,
        }
    }
    go_dark(&shared);
    debug!(node = %shared.config.node_id, "bus stopped");
}

/// Logs a failed connection attempt: the first one and every 30th as a warning (a broker
/// that stays down should not flood the log), the others at debug level.
fn log_failure(failures: u64, url: &str, error: &str, retry_in: Duration) {
    if failures == 1 || failures.is_multiple_of(30) {
        warn!(
            url,
            error,
            failures,
            ?retry_in,
            "cannot connect to RabbitMQ; retrying"
        );
    } else {
        debug!(
            url,
            error,
            failures,
            ?retry_in,
            "cannot connect to RabbitMQ; retrying"
        );
    }
}

/// Connects and declares the topology; returns the link and the consumer of this node's
/// live queue (to be served once the link is published).
async fn open_link(shared: &Shared) -> Result<(Link, Consumer), String> {
    let config = &shared.config;
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("stampede {} {}", config.namespace, config.node_id).into());
    let mut uri: AMQPUri = config
        .url
        .parse()
        .map_err(|e| format!("invalid AMQP URL: {e}"))?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(HEARTBEAT_SECS);
    }
    // With lapin's `tokio` feature, `connect_uri` runs the connection's I/O and tasks on the
    // current tokio runtime (`async_rs::Runtime::tokio_current()`).
    let conn = Connection::connect_uri(uri, properties)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    match declare(shared, &conn).await {
        Ok((live_out, confirm, live_in, consumer)) => Ok((
            Link {
                conn,
                live_out,
                confirm,
                live_in,
                lost: Notify::new(),
            },
            consumer,
        )),
        Err(e) => {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                conn.close(200, "setup failed".into()),
            )
            .await;
            Err(e)
        }
    }
}

/// Declares the exchanges and queues (idempotent: every node does it on every connection),
/// puts the confirm channel in confirm mode and starts consuming this node's live queue.
async fn declare(
    shared: &Shared,
    conn: &Connection,
) -> Result<(Channel, Channel, Channel, Consumer), String> {
    let names = &shared.names;
    let live_exchange = short(&names.live_exchange)?;
    let events_exchange = short(&names.events_exchange)?;
    let events_queue = short(&names.events_queue)?;
    let node_queue = short(&names.node_queue)?;
    let fail = |what: &str, e: lapin::Error| format!("{what}: {e}");

    let live_out = conn
        .create_channel()
        .await
        .map_err(|e| fail("opening a channel", e))?;
    let confirm = conn
        .create_channel()
        .await
        .map_err(|e| fail("opening a channel", e))?;
    let live_in = conn
        .create_channel()
        .await
        .map_err(|e| fail("opening a channel", e))?;

    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    confirm
        .exchange_declare(
            live_exchange.clone(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| fail("declaring the live exchange", e))?;
    confirm
        .exchange_declare(
            events_exchange.clone(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| fail("declaring the events exchange", e))?;
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    quorum.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    confirm
        .queue_declare(
            events_queue.clone(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            quorum,
        )
        .await
        .map_err(|e| fail("declaring the events queue", e))?;
    confirm
        .queue_bind(
            events_queue,
            events_exchange,
            short(EVENTS_ROUTING_KEY)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| fail("binding the events queue", e))?;
    confirm
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| fail("enabling publisher confirms", e))?;

    live_in
        .queue_declare(
            node_queue.clone(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| fail("declaring this node's live queue", e))?;
    live_in
        .queue_bind(
            node_queue.clone(),
            live_exchange,
            short("")?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| fail("binding this node's live queue", e))?;
    let consumer = live_in
        .basic_consume(
            node_queue,
            short(&shared.consumer_tag("live"))?,
            // Live events are best effort: no acknowledgements to wait for.
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| fail("consuming this node's live queue", e))?;
    Ok((live_out, confirm, live_in, consumer))
}

/// Publishes a new link: serves its live queue, starts a consumer per registered handler,
/// and reports the bus connected.
fn go_live(shared: &Arc<Shared>, link: &Arc<Link>, live_in: Consumer) {
    let handlers = shared.handlers();
    shared.link.send_replace(Some(link.clone()));
    tokio::spawn(run_live_in(shared.clone(), link.clone(), live_in));
    for handler in handlers.iter() {
        tokio::spawn(run_events_in(shared.clone(), link.clone(), handler.clone()));
    }
    shared.connected.store(true, Ordering::SeqCst);
    metrics::gauge!(METRIC_CONNECTED).set(1.0);
}

/// Withdraws the current link: from now on publishing drops live events and `deliver` fails
/// fast until the next link is up.
fn go_dark(shared: &Shared) {
    let _handlers = shared.handlers();
    shared.connected.store(false, Ordering::SeqCst);
    metrics::gauge!(METRIC_CONNECTED).set(0.0);
    shared.link.send_replace(None);
}

/// Returns when the link is found broken (or reported so).
async fn watch_link(link: &Link) {
    loop {
        tokio::select! {
            () = link.lost.notified() => return,
            () = tokio::time::sleep(WATCH_INTERVAL) => {
                if !link.healthy() {
                    return;
                }
            }
        }
    }
}

/// Re-broadcasts the live events of the other nodes to this node's subscribers.
async fn run_live_in(shared: Arc<Shared>, link: Arc<Link>, mut consumer: Consumer) {
    let mut shutdown = shared.shutdown.subscribe();
    let own = shared.config.node_id.as_bytes();
    loop {
        let next = tokio::select! {
            next = consumer.next() => next,
            () = stopped(&mut shutdown) => return,
        };
        match next {
            Some(Ok(delivery)) => {
                if header_node(&delivery).as_deref() == Some(own) {
                    continue; // our own event: local subscribers already have it
                }
                match serde_json::from_slice::<Event>(&delivery.data) {
                    Ok(event) => {
                        let _ = shared.local.send(event);
                    }
                    Err(e) => warn!(error = %e, "undecodable live event dropped"),
                }
            }
            Some(Err(e)) => {
                debug!(error = %e, "live consumer failed");
                break;
            }
            None => break,
        }
    }
    if !shared.stopping() {
        debug!("live consumer ended; the link will be rebuilt");
        link.lost.notify_one();
    }
}

/// One consumer of the events queue on `link`, for `handler`.
async fn run_events_in(shared: Arc<Shared>, link: Arc<Link>, handler: Arc<dyn EventHandler>) {
    let mut shutdown = shared.shutdown.subscribe();
    let tag = shared.consumer_tag("events");
    let start = async {
        let channel = link
            .conn
            .create_channel()
            .await
            .map_err(|e| format!("opening a channel: {e}"))?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(|e| format!("setting the prefetch: {e}"))?;
        let consumer = channel
            .basic_consume(
                short(&shared.names.events_queue)?,
                short(&tag)?,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("consuming the events queue: {e}"))?;
        Ok::<_, String>((channel, consumer))
    };
    let (channel, mut consumer) = match start.await {
        Ok(started) => started,
        Err(error) => {
            if !shared.stopping() {
                warn!(%error, "cannot start the events consumer; the link will be rebuilt");
                link.lost.notify_one();
            }
            return;
        }
    };
    debug!(%tag, "events consumer started");
    loop {
        let next = tokio::select! {
            next = consumer.next() => next,
            () = stopped(&mut shutdown) => break,
        };
        match next {
            Some(Ok(delivery)) => {
                tokio::spawn(handle_delivery(handler.clone(), delivery));
            }
            Some(Err(e)) => {
                debug!(error = %e, "events consumer failed");
                break;
            }
            None => break,
        }
    }
    if !shared.stopping() {
        warn!(%tag, "events consumer ended; the link will be rebuilt");
        link.lost.notify_one();
    }
    drop(channel);
}

/// Hands one durable event to the handler; acks on `Ok`, nacks (requeue) after a pause on
/// `Err` or a panic.
async fn handle_delivery(handler: Arc<dyn EventHandler>, delivery: Delivery) {
    let event: OutboxEvent = match serde_json::from_slice(&delivery.data) {
        Ok(event) => event,
        Err(e) => {
            // Requeueing would only bring it back forever.
            error!(error = %e, "undecodable durable event dropped");
            let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
    };
    let id = event.id.clone();
    // In a task of its own, so that a panicking handler becomes a retry, not a lost ack.
    let outcome = tokio::spawn(async move { handler.handle(event).await }).await;
    let failure = match outcome {
        Ok(Ok(())) => {
            if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                // The channel is gone: the broker will deliver it again (de-duplicated).
                debug!(event = %id, error = %e, "ack failed");
            }
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("handler panicked: {e}"),
    };
    let attempt = delivery_count(&delivery);
    let pause = nack_pause(attempt);
    warn!(event = %id, error = %failure, attempt = attempt + 1, retry_in = ?pause,
        "event handler failed; the event goes back to the queue");
    tokio::time::sleep(pause).await;
    let requeue = BasicNackOptions {
        requeue: true,
        multiple: false,
    };
    if let Err(e) = delivery.nack(requeue).await {
        debug!(event = %id, error = %e, "nack failed");
    }
}

/// The pause before handing back an event already delivered `count` times.
fn nack_pause(count: u32) -> Duration {
    FIRST_NACK_PAUSE
        .saturating_mul(1u32 << count.min(5))
        .min(MAX_NACK_PAUSE)
}

/// Sends this node's live events to the live exchange, one by one, on the current link.
async fn run_live_out(shared: Arc<Shared>, mut outgoing: mpsc::Receiver<Event>) {
    let mut shutdown = shared.shutdown.subscribe();
    let exchange = match short(&shared.names.live_exchange) {
        Ok(exchange) => exchange,
        Err(e) => {
            error!(error = %e, "live events cannot be published");
            return;
        }
    };
    let headers = node_header(&shared.config.node_id);
    loop {
        let event = tokio::select! {
            event = outgoing.recv() => match event {
                Some(event) => event,
                None => return,
            },
            () = stopped(&mut shutdown) => return,
        };
        let Some(link) = shared.current_link() else {
            live_dropped(1);
            continue;
        };
        let payload = match serde_json::to_vec(&event) {
            Ok(payload) => payload,
            Err(e) => {
                error!(error = %e, "live event cannot be encoded");
                live_dropped(1);
                continue;
            }
        };
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers.clone());
        let send = async {
            link.live_out
                .basic_publish(
                    exchange.clone(),
                    ShortString::default(),
                    BasicPublishOptions::default(),
                    &payload,
                    properties,
                )
                .await?
                .await
        };
        match tokio::time::timeout(CONFIRM_TIMEOUT, send).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "live event not published");
                live_dropped(1);
            }
            Err(_) => {
                debug!("live event not published: timed out");
                live_dropped(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }

    #[test]
    fn nack_pause_grows_and_is_capped() {
        assert_eq!(nack_pause(0), Duration::from_millis(250));
        assert_eq!(nack_pause(1), Duration::from_millis(500));
        assert_eq!(nack_pause(30), MAX_NACK_PAUSE);
    }

    #[test]
    fn names_follow_the_namespace() {
        let names = Names::new(&AmqpConfig {
            url: String::new(),
            namespace: "prod".into(),
            node_id: "n1".into(),
        });
        assert_eq!(names.live_exchange, "stampede.prod.live");
        assert_eq!(names.events_exchange, "stampede.prod.events");
        assert_eq!(names.events_queue, "stampede.prod.events");
        assert_eq!(names.node_queue, "stampede.prod.node.n1");
    }
}
