//! The cluster gate: every node's fast stock and limit filter, shared in Redis.
//!
//! Per sale three keys, hash-tagged with the sale so they live in one slot (one Lua script may
//! touch them on Redis Cluster): `avail` (units the gate still lets through), `users` (a hash of
//! the units each buyer holds or owns) and `ops` (a counter bumped by every change, which
//! reconciliation uses to tell a quiet sale from a busy one).
//!
//! One script checks the buyer's limit and the stock and takes the units, atomically: two nodes
//! cannot together let more through than there is. The gate is still only a filter: PostgreSQL
//! judges every request it lets through, so a wrong gate can undersell for a moment, never
//! oversell.
//!
//! After a flush or a restart of Redis the keys are gone: the take script says so
//! ([`GateVerdict::Unseeded`]) instead of answering "sold out", and the application seeds the sale
//! from the judge ([`Gate::seed`], first writer wins).
//!
//! Every call has a deadline: if Redis is slow or gone the call fails as
//! [`PortError::Unavailable`] (a fast 503 with `Retry-After`), it never hangs a buyer.
//!
//! The URL names one Redis (`redis://host:port/db`) or a Redis Cluster
//! (`redis+cluster://host:port,host:port,…`, or several `redis://` seeds separated by commas):
//! then the cluster client routes every script to the master of its sale's slot, and the hash
//! tags keep each script on one slot.

mod room;

pub use room::{RedisRateLimits, RedisRoom};

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::Script;

use stampede_app::ports::{Gate, GateSeed, GateVerdict, PortError, PortResult};
use stampede_core::{SaleId, UserId};

/// Checks the limit, then the stock; takes both at once. Returns 0 pass, 1 sold out,
/// 2 over the limit, -1 unseeded.
const TAKE: &str = r#"
local avail = redis.call('GET', KEYS[1])
if not avail then return -1 end
local qty = tonumber(ARGV[2])
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if held + qty > tonumber(ARGV[3]) then return 2 end
if tonumber(avail) < qty then return 1 end
redis.call('DECRBY', KEYS[1], qty)
redis.call('HINCRBY', KEYS[2], ARGV[1], qty)
redis.call('INCR', KEYS[3])
return 0
"#;

/// [`TAKE`] for a reserve, with the buyer's shared rate quotas counted in the same step (GCRA
/// on Redis's clock), so a reserve that reaches Redis is one round trip. Quotas are checked
/// before the limit and the stock, and spent only if every one passes (a refused device does
/// not use up the buyer's quota). KEYS: avail, users, ops, the buyer's rate key and, if the
/// client named a device, the device's. ARGV: user, quantity, limit, then (interval µs,
/// tolerance µs) for the buyer and for the device. Returns `{code, wait_us}`: code 0 pass,
/// 1 sold out, 2 over the limit, 3 rate limited (retry in `wait_us`), -1 unseeded.
const TAKE_COUNTED: &str = r#"
local avail = redis.call('GET', KEYS[1])
if not avail then return {-1, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local spend = {}
for i = 4, #KEYS do
  local interval = tonumber(ARGV[4 + (i - 4) * 2])
  local tolerance = tonumber(ARGV[5 + (i - 4) * 2])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  if tat - tolerance > now then return {3, tat - tolerance - now} end
  spend[#spend + 1] = {KEYS[i], tat + interval}
end
for _, s in ipairs(spend) do
  redis.call('SET', s[1], string.format('%.0f', s[2]), 'PX', math.ceil((s[2] - now) / 1000) + 1)
end
local qty = tonumber(ARGV[2])
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if held + qty > tonumber(ARGV[3]) then return {2, 0} end
if tonumber(avail) < qty then return {1, 0} end
redis.call('DECRBY', KEYS[1], qty)
redis.call('HINCRBY', KEYS[2], ARGV[1], qty)
redis.call('INCR', KEYS[3])
return {0, 0}
"#;

/// Returns units. On an unseeded sale it does nothing: the seed, read from the judge, already
/// counts them.
const GIVE: &str = r#"
if not redis.call('GET', KEYS[1]) then return 0 end
local qty = tonumber(ARGV[2])
redis.call('INCRBY', KEYS[1], qty)
local left = redis.call('HINCRBY', KEYS[2], ARGV[1], -qty)
if left <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
redis.call('INCR', KEYS[3])
return 1
"#;

/// Seeds a sale the gate does not know. ARGV: available, then user, units pairs.
const SEED: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('INCR', KEYS[3])
return 1
"#;

/// The sale's counters in one read: ops, available (or false), the users hash.
const SNAPSHOT: &str = r#"
return { redis.call('GET', KEYS[3]) or '0', redis.call('GET', KEYS[1]) or false,
         redis.call('HGETALL', KEYS[2]) }
"#;

/// Overwrites a sale's counters only if `ops` still reads ARGV[1] (nothing changed since the
/// snapshot the repair was computed from). ARGV: ops, available, then user, units pairs.
const REPAIR: &str = r#"
if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[1] then return 0 end
if not redis.call('GET', KEYS[1]) then return 0 end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('INCR', KEYS[3])
return 1
"#;

/// How the gate reaches Redis.
#[derive(Debug, Clone)]
pub struct RedisGateConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key, so several deployments (or test runs) can share one Redis.
    pub namespace: String,
    /// Deadline of one call, connection included: past it the buyer gets a fast 503.
    pub timeout: Duration,
}

/// A shared rate quota: `per_sec` requests a second with bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub per_sec: u32,
    pub burst: u32,
}

impl Quota {
    /// GCRA's emission interval and burst tolerance, in µs (as the scripts take them).
    fn gcra_us(self) -> (u64, u64) {
        let interval = 1_000_000 / u64::from(self.per_sec.max(1));
        (
            interval,
            interval * u64::from(self.burst.max(1).saturating_sub(1)),
        )
    }
}

/// The quotas a reserve is counted against inside the gate's script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuyerQuotas {
    pub user: Quota,
    pub device: Quota,
}

/// The difference between the gate and the judge seen by one reconciliation pass, remembered
/// until the next pass: repaired only if the next pass sees the same difference at the same
/// `ops` (the sale was quiet in between, so no pair was half done).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sighting {
    ops: String,
    available_delta: i64,
    users_delta: Vec<(String, i64)>,
}

/// A [`Gate`] in Redis, shared by every node of a deployment.
pub struct RedisGate {
    conn: Conn,
    namespace: String,
    timeout: Duration,
    take: Script,
    take_counted: Script,
    /// Counted in the take script of a reserve; `None`: reserves are not rate limited here.
    quotas: Option<BuyerQuotas>,
    give: Script,
    seed: Script,
    snapshot: Script,
    repair: Script,
    sightings: DashMap<SaleId, Sighting>,
}

impl std::fmt::Debug for RedisGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisGate")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: redis::RedisError) -> PortError {
    PortError::unavailable_because("redis", e)
}

/// A connection to one Redis or to a Redis Cluster. Both heal themselves after an outage; the
/// cluster one follows the slot map (and its `MOVED` / `ASK` answers), so every call goes to
/// the master of its keys' slot.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The seed nodes of a Redis Cluster named by `url`, or `None` if it names one Redis:
/// `redis+cluster://h1:p1,h2:p2` (also `rediss+cluster://`), or `redis://h1:p1,redis://h2:p2`.
pub fn cluster_seeds(url: &str) -> Option<Vec<String>> {
    for (scheme, plain) in [
        ("redis+cluster://", "redis://"),
        ("rediss+cluster://", "rediss://"),
    ] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let seeds: Vec<String> = rest
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| format!("{plain}{}", s.trim_end_matches('/')))
                .collect();
            return Some(seeds);
        }
    }
    if url.contains(',') {
        return Some(
            url.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        );
    }
    None
}

/// A self-healing connection to Redis (or a Redis Cluster) with the config's deadline on
/// connecting and on every reply, shared by the gate, the room and the rate limits.
pub async fn connect(config: &RedisGateConfig) -> PortResult<Conn> {
    if let Some(seeds) = cluster_seeds(&config.url) {
        if seeds.is_empty() {
            return Err(PortError::internal("redis url: no cluster nodes"));
        }
        let client = redis::cluster::ClusterClient::builder(seeds)
            .connection_timeout(config.timeout)
            .response_timeout(config.timeout)
            .retries(1)
            .build()
            .map_err(|e| PortError::internal_because("redis cluster url", e))?;
        return tokio::time::timeout(config.timeout * 4, client.get_async_connection())
            .await
            .map_err(|_| PortError::unavailable("redis: connect timed out"))?
            .map(Conn::Cluster)
            .map_err(unavailable);
    }
    let client = redis::Client::open(config.url.as_str())
        .map_err(|e| PortError::internal_because("redis url", e))?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.timeout))
        .set_response_timeout(Some(config.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    tokio::time::timeout(
        config.timeout * 4,
        ConnectionManager::new_with_config(client, manager_config),
    )
    .await
    .map_err(|_| PortError::unavailable("redis: connect timed out"))?
    .map(Conn::Single)
    .map_err(unavailable)
}

/// Runs `script` on `keys` and `args` within `timeout`: the one way every script call is
/// made, so none can hang a buyer.
pub(crate) async fn invoke<T: redis::FromRedisValue>(
    conn: &Conn,
    timeout: Duration,
    script: &Script,
    keys: &[String],
    args: &[String],
) -> PortResult<T> {
    let mut invocation = script.prepare_invoke();
    for key in keys {
        invocation.key(key);
    }
    for arg in args {
        invocation.arg(arg);
    }
    let mut conn = conn.clone();
    tokio::time::timeout(timeout, invocation.invoke_async(&mut conn))
        .await
        .map_err(|_| PortError::unavailable("redis: call timed out"))?
        .map_err(unavailable)
}

impl RedisGate {
    /// Connects (within the configured deadline). The connection is re-established on its own
    /// after Redis restarts; calls made meanwhile fail fast.
    pub async fn connect(config: RedisGateConfig) -> PortResult<RedisGate> {
        let conn = connect(&config).await?;
        Ok(RedisGate {
            conn,
            namespace: config.namespace,
            timeout: config.timeout,
            take: Script::new(TAKE),
            take_counted: Script::new(TAKE_COUNTED),
            quotas: None,
            give: Script::new(GIVE),
            seed: Script::new(SEED),
            snapshot: Script::new(SNAPSHOT),
            repair: Script::new(REPAIR),
            sightings: DashMap::new(),
        })
    }

    /// Counts every reserve against these shared quotas in the same script call as the take.
    pub fn with_buyer_quotas(mut self, quotas: BuyerQuotas) -> Self {
        self.quotas = Some(quotas);
        self
    }

    /// The sale's keys, in the order every script expects them.
    fn keys(&self, sale: &SaleId) -> [String; 3] {
        let tag = format!("stampede:{{{}:{}}}", self.namespace, sale);
        [
            format!("{tag}:avail"),
            format!("{tag}:users"),
            format!("{tag}:ops"),
        ]
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        sale: &SaleId,
        args: &[String],
    ) -> PortResult<T> {
        invoke(&self.conn, self.timeout, script, &self.keys(sale), args).await
    }

    /// Reads one sale's counters: `None` if the gate does not know it.
    async fn read(&self, sale: &SaleId) -> PortResult<Option<(String, i64, HashMap<String, i64>)>> {
        let (ops, available, users): (String, Option<i64>, HashMap<String, i64>) =
            self.run(&self.snapshot, sale, &[]).await?;
        Ok(available.map(|a| (ops, a, users)))
    }

    /// One sale's pass of [`Gate::rebuild`]; returns the units repaired.
    async fn reconcile_sale(&self, seed: &GateSeed) -> PortResult<u64> {
        let Some((ops, available, users)) = self.read(&seed.sale_id).await? else {
            // Redis lost the sale (flushed or restarted empty): everything is drift.
            let wrote = self.seed(seed).await?;
            return Ok(if wrote { seed_units(seed) } else { 0 });
        };
        let judged: HashMap<String, i64> = seed
            .user_units
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(u, n)| (u.to_string(), i64::from(*n)))
            .collect();
        let mut users_delta: Vec<(String, i64)> = users
            .iter()
            .map(|(u, n)| (u.clone(), n - judged.get(u).copied().unwrap_or(0)))
            .chain(
                judged
                    .iter()
                    .filter(|(u, _)| !users.contains_key(*u))
                    .map(|(u, n)| (u.clone(), -n)),
            )
            .filter(|(_, d)| *d != 0)
            .collect();
        users_delta.sort();
        let sighting = Sighting {
            ops,
            available_delta: available - seed.available,
            users_delta,
        };
        if sighting.available_delta == 0 && sighting.users_delta.is_empty() {
            self.sightings.remove(&seed.sale_id);
            return Ok(0);
        }
        let seen_before = self
            .sightings
            .get(&seed.sale_id)
            .is_some_and(|s| *s == sighting);
        if !seen_before {
            // Could be a pair in flight on some node: repair only if it is still there, the
            // same, with no gate traffic in between.
            self.sightings.insert(seed.sale_id.clone(), sighting);
            return Ok(0);
        }
        self.sightings.remove(&seed.sale_id);
        let mut args = vec![sighting.ops.clone(), seed.available.to_string()];
        args.extend(seed_pairs(seed));
        let repaired: i64 = self.run(&self.repair, &seed.sale_id, &args).await?;
        if repaired != 1 {
            return Ok(0);
        }
        let units = sighting.available_delta.unsigned_abs()
            + sighting
                .users_delta
                .iter()
                .map(|(_, d)| d.unsigned_abs())
                .sum::<u64>();
        tracing::warn!(sale = %seed.sale_id, units, "gate drift repaired from the judge");
        Ok(units)
    }
}

fn seed_pairs(seed: &GateSeed) -> Vec<String> {
    seed.user_units
        .iter()
        .filter(|(_, n)| *n > 0)
        .flat_map(|(u, n)| [u.to_string(), n.to_string()])
        .collect()
}

fn seed_units(seed: &GateSeed) -> u64 {
    seed.available.unsigned_abs()
        + seed
            .user_units
            .iter()
            .map(|(_, n)| u64::from(*n))
            .sum::<u64>()
}

#[async_trait]
impl Gate for RedisGate {
    async fn try_take(
        &self,
        sale: &SaleId,
        user: &UserId,
        quantity: u32,
        limit: u32,
    ) -> PortResult<GateVerdict> {
        let answer: i64 = self
            .run(
                &self.take,
                sale,
                &[user.to_string(), quantity.to_string(), limit.to_string()],
            )
            .await?;
        Ok(match answer {
            0 => GateVerdict::Pass,
            1 => GateVerdict::SoldOut,
            2 => GateVerdict::LimitExceeded,
            _ => GateVerdict::Unseeded,
        })
    }

    async fn try_take_counted(
        &self,
        sale: &SaleId,
        user: &UserId,
        device: Option<&str>,
        quantity: u32,
        limit: u32,
    ) -> PortResult<GateVerdict> {
        let Some(quotas) = self.quotas else {
            return self.try_take(sale, user, quantity, limit).await;
        };
        let [avail, users, ops] = self.keys(sale);
        let tag = format!("stampede:{{{}:{}}}", self.namespace, sale);
        let mut keys = vec![avail, users, ops, format!("{tag}:rl:u:{user}")];
        let (u_interval, u_tolerance) = quotas.user.gcra_us();
        let mut args = vec![
            user.to_string(),
            quantity.to_string(),
            limit.to_string(),
            u_interval.to_string(),
            u_tolerance.to_string(),
        ];
        if let Some(device) = device {
            let (d_interval, d_tolerance) = quotas.device.gcra_us();
            keys.push(format!("{tag}:rl:d:{device}"));
            args.push(d_interval.to_string());
            args.push(d_tolerance.to_string());
        }
        let (code, wait_us): (i64, i64) =
            invoke(&self.conn, self.timeout, &self.take_counted, &keys, &args).await?;
        Ok(match code {
            0 => GateVerdict::Pass,
            1 => GateVerdict::SoldOut,
            2 => GateVerdict::LimitExceeded,
            3 => GateVerdict::RateLimited {
                retry_after_ms: u64::try_from(wait_us).unwrap_or(0).div_ceil(1000),
            },
            _ => GateVerdict::Unseeded,
        })
    }

    async fn give_back(&self, sale: &SaleId, user: &UserId, quantity: u32) -> PortResult<()> {
        let _: i64 = self
            .run(&self.give, sale, &[user.to_string(), quantity.to_string()])
            .await?;
        Ok(())
    }

    async fn rebuild(&self, seeds: &[GateSeed]) -> PortResult<u64> {
        let mut drift = 0;
        for seed in seeds {
            drift += self.reconcile_sale(seed).await?;
        }
        Ok(drift)
    }

    async fn seed(&self, seed: &GateSeed) -> PortResult<bool> {
        let mut args = vec![seed.available.to_string()];
        args.extend(seed_pairs(seed));
        let wrote: i64 = self.run(&self.seed, &seed.sale_id, &args).await?;
        if wrote == 1 {
            metrics::counter!("stampede_gate_seeded_total").increment(1);
            tracing::info!(sale = %seed.sale_id, available = seed.available, "gate seeded from the judge");
        }
        Ok(wrote == 1)
    }

    async fn available(&self, sale: &SaleId) -> PortResult<Option<i64>> {
        Ok(self.read(sale).await?.map(|(_, a, _)| a))
    }

    fn is_shared(&self) -> bool {
        true
    }
}
