//! Tunables of the use cases, with defaults that suit a real sale. The binary fills this from
//! flags, environment and file.

/// Cost of the argon2id password hash. The default is OWASP's recommendation
/// (m = 19 MiB, t = 2, p = 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Cost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Cost {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Unpaid holds one account may have open at once, across all sales, unless configured: more
/// than a buyer filling a cart from a drop needs, far fewer than a bot hoarding stock.
pub const DEFAULT_OPEN_HOLDS_PER_ACCOUNT: u32 = 10;
/// Unpaid holds one device may have open at once across its accounts (a household shares one).
pub const DEFAULT_OPEN_HOLDS_PER_DEVICE: u32 = 20;

/// Everything the use cases can be tuned by.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// How long a login token lives.
    pub token_ttl_secs: i64,
    pub argon2: Argon2Cost,
    /// Password hashes computed at once; more wait (hashing is CPU-bound and must not starve
    /// the request threads).
    pub hash_concurrency: usize,
    /// Shared secret for payment webhooks (`Stampede-Signature`).
    pub webhook_secret: String,
    /// Webhooks older than this are refused (replay window).
    pub webhook_tolerance_secs: i64,
    /// An in-progress `Idempotency-Key` claim older than this is taken as abandoned (its request
    /// died with a crash) and may be retried.
    pub idempotency_lease_ms: i64,
    /// Most reservations judged in one store transaction.
    pub max_batch: usize,
    /// How many reservations may wait for the judge before new ones are turned away (503).
    pub reserve_queue_depth: usize,
    /// How often the sweeper looks for lapsed holds.
    pub sweep_interval_ms: u64,
    /// How often the gate is checked against the judge and repaired.
    pub reconcile_interval_secs: u64,
    /// Hold lifetime when a sale does not set one.
    pub default_hold_seconds: u32,
    /// How often live stock updates are published (coalesced per sale).
    pub stock_publish_interval_ms: u64,
    /// How long a node answers "sold out" from its own memory after the gate said so, unless a
    /// stock-returned event clears it sooner. 0 (the embedded default, where the gate is in
    /// memory anyway) turns the flag off; with a shared gate it saves the round trip in the
    /// 99% case, and bounds how long a lost event can hide returned stock.
    pub sold_out_flag_ms: u64,
    /// How often the outbox relay looks for undelivered events (it is also woken at once when
    /// an order event is written on this node).
    pub outbox_interval_ms: u64,
    /// The key session tokens are signed with (64 hex digits), the same on every node; `None`:
    /// the one kept in the store (made by the first node that starts).
    pub session_key: Option<String>,
    /// How often a node reloads the revoked sessions from the store. A revocation reaches the
    /// other nodes as an event at once; this bounds how long a lost event (broker down) could
    /// keep an ended session alive on another node.
    pub revocation_refresh_ms: u64,
    /// How stale the sale list and detail shown to viewers may be, in ms (0: always fresh).
    /// The hottest reads of a sale day; the reserve path never uses them.
    pub read_cache_ms: u64,
    /// Buyers are warned (in-app, and the shop's webhook) when a hold has this many seconds
    /// left; 0 turns the warning off.
    pub hold_warning_secs: u64,
    /// How often the shop-webhook job looks for due deliveries (it is also woken at once when
    /// this node queued one). Only runs when a shop webhook URL is configured.
    pub shop_webhook_interval_ms: u64,
    /// How often the waiting room admits the next buyers and tells the waiting what changed.
    pub admission_tick_ms: u64,
    /// How long an admission token lasts.
    pub admission_ttl_secs: i64,
    /// How long a waitlist offer lasts: once a sale sold out, a unit that comes back is
    /// offered to the next in line for this long, then passes on.
    pub waitlist_claim_secs: i64,
    /// Most buyers admitted to one sale in one tick (smooths a burst of returned stock).
    pub admission_max_batch: u64,
    /// How often the money reconciliation finishes captures, voids and refunds the gateway
    /// has not acknowledged (a crash or a gateway error after the judge decided) and resolves
    /// stuck pending orders. It also runs once at start.
    pub payment_reconcile_interval_ms: u64,
    /// A pending order whose authorization's answer was never recorded (its checkout died
    /// with its process) is resolved once it is this old: long enough that no live checkout
    /// can still be waiting on the gateway.
    pub payment_answer_timeout_secs: i64,
    /// A pending order still unsettled this long after checkout (an asynchronous payment
    /// whose webhook never came) is failed and its authorization voided.
    pub payment_deadline_secs: i64,
    /// The denial-of-inventory guard: unpaid holds open at once per account and per device,
    /// across every sale (0: no cap). The judge counts them in the reservation's own
    /// transaction, so concurrent reserves cannot pass it together.
    pub hold_cap: stampede_core::judge::HoldCap,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            token_ttl_secs: 24 * 3600,
            argon2: Argon2Cost::default(),
            hash_concurrency: 2,
            webhook_secret: String::new(),
            webhook_tolerance_secs: 300,
            idempotency_lease_ms: 60_000,
            max_batch: 512,
            reserve_queue_depth: 20_000,
            sweep_interval_ms: 250,
            reconcile_interval_secs: 30,
            default_hold_seconds: 300,
            stock_publish_interval_ms: 200,
            sold_out_flag_ms: 0,
            outbox_interval_ms: 500,
            session_key: None,
            revocation_refresh_ms: 1000,
            read_cache_ms: 1000,
            hold_warning_secs: 60,
            shop_webhook_interval_ms: 200,
            admission_tick_ms: 100,
            admission_ttl_secs: 120,
            waitlist_claim_secs: 300,
            admission_max_batch: 1000,
            payment_reconcile_interval_ms: 5000,
            payment_answer_timeout_secs: 120,
            payment_deadline_secs: 3600,
            hold_cap: stampede_core::judge::HoldCap {
                per_account: DEFAULT_OPEN_HOLDS_PER_ACCOUNT,
                per_device: DEFAULT_OPEN_HOLDS_PER_DEVICE,
            },
        }
    }
}
