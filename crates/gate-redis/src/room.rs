//! The cluster waiting room: every sale's line in Redis, shared by every node, with the same
//! semantics as the in-memory reference ([`stampede_core::waiting_line::WaitingLine`]) and
//! held to the same conformance suite.
//!
//! Per sale, keys hash-tagged with the sale (one slot, so each script is atomic on Redis
//! Cluster too): `state`, `dev`, `rank`, `until` (hashes per user), `line` (a sorted set of
//! the waiting by rank: a position is one `ZRANK`, O(log n)), `pre` (the pre-queue by join
//! order), `adm` (outstanding admissions by expiry), `devn` / `devu` (accounts and units per
//! device), `order` (ranks in admission order), `won` (lottery winners), `draws` (published
//! records) and `meta` (flags, counters, rules and seeds). Every change is one Lua script, so
//! two nodes admitting at once cannot admit more than the stock allows.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use stampede_app::ports::{PortError, PortResult, RoomRules, RoomSnapshot, WaitingRoom};
use stampede_core::draw::DrawPurpose;
use stampede_core::waiting_line::{
    Admitted, ClaimRefusal, EntryState, EntryView, JoinRefusal, LineStats,
};
use stampede_core::{SaleId, UserId};

use crate::RedisGateConfig;

/// Shared by the scripts: the caller's entry as a flat array.
const VIEW_FN: &str = r#"
local function view(user)
  local st = redis.call('HGET', KEYS[1], user)
  if not st then return false end
  local pos, pre = 0, 0
  if st == 'waiting' then
    local r = redis.call('ZRANK', KEYS[5], user)
    if r then pos = r + 1 else
      local p = redis.call('ZRANK', KEYS[6], user)
      if p then pos = p + 1; pre = 1 end
    end
  end
  return { st, pos, pre, redis.call('HGET', KEYS[3], user) or '0',
    redis.call('HGET', KEYS[2], user) or '', redis.call('HGET', KEYS[4], user) or '0',
    redis.call('SISMEMBER', KEYS[11], user), redis.call('HGET', KEYS[7], 'sold_out') or '0',
    redis.call('HGET', KEYS[7], 'closed') or '0', redis.call('HGET', KEYS[7], 'paused') or '0',
    (st == 'admitted' or st == 'claimed') and redis.call('SISMEMBER', KEYS[17], user) or 0 }
end
"#;

/// ARGV: user, device, max accounts per device. Returns the view, or an error word.
const JOIN: &str = r#"
local user, device, cap = ARGV[1], ARGV[2], tonumber(ARGV[3])
local st = redis.call('HGET', KEYS[1], user)
local closed = redis.call('HGET', KEYS[7], 'closed') == '1'
if st then
  if st == 'expired' and not closed then
    redis.call('SREM', KEYS[11], user)
    redis.call('SREM', KEYS[17], user)
    local r = redis.call('HINCRBY', KEYS[7], 'next_rank', 1) - 1
    redis.call('ZADD', KEYS[5], r, user)
    redis.call('HSET', KEYS[1], user, 'waiting')
    redis.call('HSET', KEYS[3], user, r)
    redis.call('HDEL', KEYS[4], user)
  end
  return view(user)
end
if closed then return 'closed' end
local n = tonumber(redis.call('HGET', KEYS[9], device) or '0')
if cap > 0 and n >= cap then return 'device_cap' end
redis.call('HINCRBY', KEYS[9], device, 1)
redis.call('HSET', KEYS[1], user, 'waiting')
redis.call('HSET', KEYS[2], user, device)
if redis.call('HGET', KEYS[7], 'drawn') == '1' then
  local r = redis.call('HINCRBY', KEYS[7], 'next_rank', 1) - 1
  redis.call('ZADD', KEYS[5], r, user)
  redis.call('HSET', KEYS[3], user, r)
else
  local seq = redis.call('HINCRBY', KEYS[7], 'seq', 1)
  redis.call('ZADD', KEYS[6], seq, user)
end
return view(user)
"#;

const VIEW: &str = r#"
return view(ARGV[1])
"#;

/// Places the pre-queue: ARGV is the drawn order; members it does not name follow in join
/// order. Idempotent.
const PLACE: &str = r#"
local function place(order)
  if redis.call('HGET', KEYS[7], 'drawn') == '1' then return 0 end
  local placed = {}
  local function put(user)
    local r = redis.call('HINCRBY', KEYS[7], 'next_rank', 1) - 1
    redis.call('ZADD', KEYS[5], r, user)
    redis.call('HSET', KEYS[3], user, r)
    placed[user] = true
  end
  for i = 1, #order do
    local u = order[i]
    if not placed[u] and redis.call('ZSCORE', KEYS[6], u) then put(u) end
  end
  local rest = redis.call('ZRANGE', KEYS[6], 0, -1)
  for i = 1, #rest do if not placed[rest[i]] then put(rest[i]) end end
  redis.call('DEL', KEYS[6])
  redis.call('HSET', KEYS[7], 'drawn', '1')
  return 1
end
"#;

const PLACE_CALL: &str = r#"
return place(ARGV)
"#;

/// Returns who was admitted, as a flat list of user, rank pairs.
/// Lapses stale admissions (a claim never settled counts as used), then admits, unless the
/// organiser paused admission, and no more than the rules' `new_per_minute` in any 60 s
/// (`recent`, KEYS[15]: admissions by time, kept one window). ARGV: units available (-1: read
/// the gate's `avail`, KEYS[14], in this same atomic step), units per admission, ttl ms, now
/// ms, max batch.
const ADMIT: &str = r#"
local avail, per = tonumber(ARGV[1]), tonumber(ARGV[2])
local ttl, now, max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if avail < 0 then avail = tonumber(redis.call('GET', KEYS[14]) or '0') end
if per < 1 then per = 1 end
local stale = redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', now)
for i = 1, #stale do
  local u = stale[i]
  local st = redis.call('HGET', KEYS[1], u)
  local untl = tonumber(redis.call('HGET', KEYS[4], u) or '0')
  if st == 'claimed' then
    if untl + 60000 <= now then
      redis.call('HSET', KEYS[1], u, 'used')
      redis.call('ZREM', KEYS[8], u)
      redis.call('HINCRBY', KEYS[7], 'used', 1)
    end
  else
    redis.call('HSET', KEYS[1], u, 'expired')
    redis.call('ZREM', KEYS[8], u)
    redis.call('HINCRBY', KEYS[7], 'expired', 1)
  end
end
if redis.call('HGET', KEYS[7], 'drawn') ~= '1' or redis.call('HGET', KEYS[7], 'closed') == '1'
  or redis.call('HGET', KEYS[7], 'paused') == '1' then
  return {}
end
local free = avail - redis.call('ZCARD', KEYS[8]) * per
if free < 0 then free = 0 end
local room = math.floor(free / per)
if room > max then room = max end
redis.call('ZREMRANGEBYSCORE', KEYS[15], '-inf', now - 60000)
local per_minute = tonumber(redis.call('HGET', KEYS[7], 'new_per_minute') or '0')
if per_minute > 0 then
  local left = per_minute - redis.call('ZCARD', KEYS[15])
  if room > left then room = left end
end
local max_active = tonumber(redis.call('HGET', KEYS[7], 'max_active') or '0')
if max_active > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[16], '-inf', now)
  local left = max_active - redis.call('ZCARD', KEYS[8]) - redis.call('ZCARD', KEYS[16])
  if room > left then room = left end
end
if room <= 0 then return {} end
local next = redis.call('ZRANGE', KEYS[5], 0, room - 1, 'WITHSCORES')
local out = {}
-- Admitted once the room said sold out: a waitlist offer (KEYS[17]).
local sold_out = redis.call('HGET', KEYS[7], 'waitlist') == '1'
for i = 1, #next, 2 do
  local u, r = next[i], next[i + 1]
  redis.call('ZREM', KEYS[5], u)
  redis.call('HSET', KEYS[1], u, 'admitted')
  redis.call('HSET', KEYS[4], u, now + ttl)
  redis.call('ZADD', KEYS[8], now + ttl, u)
  redis.call('SREM', KEYS[11], u)
  redis.call('RPUSH', KEYS[10], r)
  redis.call('HINCRBY', KEYS[7], 'admitted', 1)
  redis.call('ZADD', KEYS[15], now, r)
  if sold_out then redis.call('SADD', KEYS[17], u) else redis.call('SREM', KEYS[17], u) end
  out[#out + 1] = u
  out[#out + 1] = r
  out[#out + 1] = redis.call('HGET', KEYS[2], u) or ''
  out[#out + 1] = tostring(now + ttl)
end
redis.call('PEXPIRE', KEYS[15], 60000)
return out
"#;

/// ARGV: user, device, ticket, quantity, device limit, now ms. Returns a word.
const CLAIM: &str = r#"
local user, device, ticket = ARGV[1], ARGV[2], ARGV[3]
local qty, limit, now = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local st = redis.call('HGET', KEYS[1], user)
if not st then return 'not_admitted' end
if st == 'used' or st == 'claimed' then return 'used' end
if st == 'expired' then return 'lapsed' end
if st ~= 'admitted' then return 'not_admitted' end
if tonumber(redis.call('HGET', KEYS[4], user) or '0') <= now then return 'lapsed' end
if redis.call('HGET', KEYS[3], user) ~= ticket or redis.call('HGET', KEYS[2], user) ~= device then
  return 'mismatch'
end
if limit > 0 and tonumber(redis.call('HGET', KEYS[12], device) or '0') + qty > limit then
  return 'device_limit'
end
redis.call('HINCRBY', KEYS[12], device, qty)
redis.call('HSET', KEYS[1], user, 'claimed')
return 'ok'
"#;

/// ARGV: user, quantity, reserved (1/0), shopping until (ms). A reserved admission joins
/// `shop` (KEYS[16]: buyers shopping, by when their hold has ended at the latest).
const SETTLE: &str = r#"
local user, qty = ARGV[1], tonumber(ARGV[2])
if redis.call('HGET', KEYS[1], user) ~= 'claimed' then return 0 end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], user, 'used')
  redis.call('ZREM', KEYS[8], user)
  redis.call('HINCRBY', KEYS[7], 'used', 1)
  redis.call('ZADD', KEYS[16], tonumber(ARGV[4]), user)
else
  redis.call('HSET', KEYS[1], user, 'admitted')
  local device = redis.call('HGET', KEYS[2], user)
  if device then
    local left = redis.call('HINCRBY', KEYS[12], device, -qty)
    if left <= 0 then redis.call('HDEL', KEYS[12], device) end
  end
end
return 1
"#;

/// ARGV: ttl ms, now ms, the number of winners, the winners, then the entrants. Entrants
/// still waiting are decided; anyone else keeps their place.
const LOTTERY: &str = r#"
local ttl, now, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
place({})
local won = {}
for i = 4, 3 + n do won[ARGV[i]] = true end
for i = 4 + n, #ARGV do
  local u = ARGV[i]
  local r = redis.call('ZSCORE', KEYS[5], u)
  if r and redis.call('HGET', KEYS[1], u) == 'waiting' then
    redis.call('ZREM', KEYS[5], u)
    if won[u] then
      redis.call('HSET', KEYS[1], u, 'admitted')
      redis.call('HSET', KEYS[4], u, now + ttl)
      redis.call('ZADD', KEYS[8], now + ttl, u)
      redis.call('SADD', KEYS[11], u)
      redis.call('RPUSH', KEYS[10], r)
      redis.call('HINCRBY', KEYS[7], 'admitted', 1)
    else
      redis.call('HSET', KEYS[1], u, 'lost')
      redis.call('HINCRBY', KEYS[7], 'lost', 1)
    end
  end
end
return 1
"#;

const STATS: &str = r#"
return { redis.call('HGETALL', KEYS[7]), redis.call('ZCARD', KEYS[5]), redis.call('ZCARD', KEYS[6]),
  redis.call('ZCARD', KEYS[8]), redis.call('LRANGE', KEYS[10], 0, -1), redis.call('HVALS', KEYS[12]) }
"#;

/// ARGV: meta field, candidate. Returns the value and whether this call set it.
const SETNX_META: &str = r#"
local created = redis.call('HSETNX', KEYS[7], ARGV[1], ARGV[2])
return { redis.call('HGET', KEYS[7], ARGV[1]), created }
"#;

/// Put in front of the scripts of a durable room ([`RedisRoom::durable`]): a sale whose line
/// Redis lost (flushed, restarted empty) answers `unloaded` instead of starting a new line.
const GUARD: &str = "if redis.call('HGET', KEYS[7], 'ready') ~= '1' then return 'unloaded' end\n";

/// Entries written per pipeline when a line is restored.
const RESTORE_CHUNK: usize = 10_000;

/// How long a restore may hold its lock before another node may take over.
const RESTORE_LEASE_MS: u64 = 120_000;

/// A [`WaitingRoom`] in Redis, shared by every node of a deployment.
pub struct RedisRoom {
    conn: crate::Conn,
    namespace: String,
    timeout: Duration,
    /// Restores lines from a log: a sale's keys are used only once marked `ready`.
    guarded: bool,
    join: Script,
    view: Script,
    place: Script,
    admit: Script,
    claim: Script,
    settle: Script,
    lottery: Script,
    stats: Script,
    setnx_meta: Script,
}

fn unavailable(e: redis::RedisError) -> PortError {
    PortError::unavailable_because("redis", e)
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .filter_map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

fn to_hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn state_of(word: &str) -> PortResult<EntryState> {
    Ok(match word {
        "waiting" => EntryState::Waiting,
        "admitted" => EntryState::Admitted,
        "claimed" => EntryState::Claimed,
        "used" => EntryState::Used,
        "expired" => EntryState::Expired,
        "lost" => EntryState::LotteryLost,
        other => return Err(PortError::internal(format!("unknown queue state {other}"))),
    })
}

type RawView = (
    String,
    u64,
    u8,
    u64,
    String,
    i64,
    u8,
    String,
    String,
    String,
    u8,
);

fn to_view(raw: RawView) -> PortResult<EntryView> {
    let (state, position, pre, ticket, device, until, won, sold_out, closed, paused, offered) = raw;
    Ok(EntryView {
        state: state_of(&state)?,
        position,
        pre_queue: pre == 1,
        ticket,
        device_id: device,
        admitted_until_ms: until,
        lottery_won: won == 1,
        sold_out: sold_out == "1",
        closed: closed == "1",
        paused: paused == "1",
        offered: offered == 1,
    })
}

impl RedisRoom {
    /// Connects (within the configured deadline); same settings as the gate.
    pub async fn connect(config: RedisGateConfig) -> PortResult<RedisRoom> {
        let conn = crate::connect(&config).await?;
        Ok(Self::build(conn, config.namespace, config.timeout, false))
    }

    fn build(conn: crate::Conn, namespace: String, timeout: Duration, guarded: bool) -> Self {
        let guard = if guarded { GUARD } else { "" };
        let plain = |body: &str| Script::new(&format!("{guard}{body}"));
        let with_view = |body: &str| Script::new(&format!("{guard}{VIEW_FN}\n{body}"));
        let with_place = |body: &str| Script::new(&format!("{guard}{PLACE}\n{body}"));
        RedisRoom {
            conn,
            namespace,
            timeout,
            guarded,
            join: with_view(JOIN),
            view: with_view(VIEW),
            place: with_place(PLACE_CALL),
            admit: plain(ADMIT),
            claim: plain(CLAIM),
            settle: plain(SETTLE),
            lottery: with_place(LOTTERY),
            stats: plain(STATS),
            setnx_meta: plain(SETNX_META),
        }
    }

    /// The room for a durable deployment (behind
    /// [`stampede_app::durable_room::DurableRoom`]): a sale's line is used only once it was
    /// restored from the log (or found empty there), and a line Redis loses answers
    /// [`PortError::RoomNotLoaded`] until it is restored again, instead of starting over with
    /// everyone's place gone.
    pub fn durable(self) -> Self {
        Self::build(self.conn, self.namespace, self.timeout, true)
    }

    /// The sale's room keys in the order the scripts expect, then the gate's `avail` (same
    /// hash tag as the gate's keys, so one script may read it on Redis Cluster too).
    fn keys(&self, sale: &SaleId) -> Vec<String> {
        let tag = format!("stampede:{{{}:{}}}", self.namespace, sale);
        let mut keys: Vec<String> = [
            "state", "dev", "rank", "until", "line", "pre", "meta", "adm", "devn", "order", "won",
            "devu", "draws",
        ]
        .iter()
        .map(|k| format!("{tag}:q:{k}"))
        .collect();
        keys.push(format!("{tag}:avail"));
        // Admissions of the last minute (the `new_per_minute` ceiling), after the gate's key
        // so the indexes above stay those the scripts were written against.
        keys.push(format!("{tag}:q:recent"));
        keys.push(format!("{tag}:q:shop"));
        // Admissions that are waitlist offers (made after the room said sold out).
        keys.push(format!("{tag}:q:offer"));
        keys
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        sale: &SaleId,
        args: &[String],
    ) -> PortResult<T> {
        let value: redis::Value =
            crate::invoke(&self.conn, self.timeout, script, &self.keys(sale), args).await?;
        if self.guarded && matches!(&value, redis::Value::BulkString(b) if b == b"unloaded") {
            return Err(PortError::RoomNotLoaded);
        }
        redis::from_redis_value(value).map_err(|e| PortError::internal_because("room reply", e))
    }

    async fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> PortResult<T> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
            .await
            .map_err(|_| PortError::unavailable("redis: call timed out"))?
            .map_err(unavailable)
    }

    fn key(&self, sale: &SaleId, which: usize) -> String {
        self.keys(sale).swap_remove(which)
    }

    /// A guarded room answers only from a line marked `ready` (see [`GUARD`]).
    fn check_ready(&self, ready: Option<&str>) -> PortResult<()> {
        if self.guarded && ready != Some("1") {
            return Err(PortError::RoomNotLoaded);
        }
        Ok(())
    }

    /// [`RedisRoom::check_ready`] for reads that are not scripts: one more round trip, only in
    /// a guarded room, on calls the admission rounds make rarely.
    async fn ensure_ready(&self, sale: &SaleId) -> PortResult<()> {
        if !self.guarded {
            return Ok(());
        }
        let ready: Option<String> = self
            .cmd(redis::cmd("HGET").arg(self.key(sale, 6)).arg("ready"))
            .await?;
        self.check_ready(ready.as_deref())
    }

    /// Replaces the sale's room keys with `snapshot`, in pipelines of [`RESTORE_CHUNK`]
    /// entries, and marks the line `ready` last (until then a guarded script answers
    /// `unloaded`, so nobody uses a half-written line).
    async fn write_snapshot(&self, sale: &SaleId, snapshot: &RoomSnapshot) -> PortResult<()> {
        let keys = self.keys(sale);
        let k = |i: usize| keys[i].as_str();
        // UNLINK: what is left of a big line is freed in Redis's background.
        let mut wipe = redis::cmd("UNLINK");
        for (i, key) in keys.iter().enumerate() {
            // 13 is the gate's stock: not the room's to drop.
            if i != 13 {
                wipe.arg(key);
            }
        }
        let _: i64 = self.cmd(&wipe).await?;
        let mut devices: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut pre_seq = 0u64;
        let mut next_rank = 0u64;
        let (mut admitted, mut used, mut expired, mut lost) = (0u64, 0u64, 0u64, 0u64);
        let mut admission_ranks: Vec<u64> = Vec::new();
        for chunk in snapshot.entries.chunks(RESTORE_CHUNK) {
            let mut pipe = redis::pipe();
            let (mut state, mut dev, mut rank) =
                (redis::cmd("HSET"), redis::cmd("HSET"), redis::cmd("HSET"));
            let (mut line, mut pre, mut until, mut adm, mut won) = (
                redis::cmd("ZADD"),
                redis::cmd("ZADD"),
                redis::cmd("HSET"),
                redis::cmd("ZADD"),
                redis::cmd("SADD"),
            );
            state.arg(k(0));
            dev.arg(k(1));
            rank.arg(k(2));
            line.arg(k(4));
            pre.arg(k(5));
            until.arg(k(3));
            adm.arg(k(7));
            won.arg(k(10));
            let (mut n_rank, mut n_line, mut n_pre, mut n_until, mut n_adm, mut n_won) =
                (0, 0, 0, 0, 0, 0);
            for e in chunk {
                let word = match e.state {
                    EntryState::Waiting => "waiting",
                    EntryState::Admitted | EntryState::Claimed => "admitted",
                    EntryState::Used => "used",
                    EntryState::Expired => "expired",
                    EntryState::LotteryLost => "lost",
                };
                state.arg(&e.user_id).arg(word);
                dev.arg(&e.user_id).arg(&e.device_id);
                let tally = devices.entry(e.device_id.as_str()).or_default();
                tally.0 += 1;
                tally.1 += e.units;
                match (snapshot.drawn, e.rank) {
                    (true, Some(r)) => {
                        rank.arg(&e.user_id).arg(r);
                        n_rank += 1;
                        next_rank = next_rank.max(r + 1);
                        if e.state == EntryState::Waiting {
                            line.arg(r).arg(&e.user_id);
                            n_line += 1;
                        }
                        if matches!(
                            e.state,
                            EntryState::Admitted
                                | EntryState::Claimed
                                | EntryState::Used
                                | EntryState::Expired
                        ) {
                            admission_ranks.push(r);
                        }
                    }
                    _ => {
                        if e.state == EntryState::Waiting {
                            pre_seq += 1;
                            pre.arg(e.pre_seq.unwrap_or(pre_seq)).arg(&e.user_id);
                            n_pre += 1;
                        }
                    }
                }
                if e.lottery_won {
                    won.arg(&e.user_id);
                    n_won += 1;
                }
                if e.until_ms != 0 {
                    until.arg(&e.user_id).arg(e.until_ms);
                    n_until += 1;
                }
                match e.state {
                    EntryState::Admitted | EntryState::Claimed => {
                        admitted += 1;
                        adm.arg(e.until_ms).arg(&e.user_id);
                        n_adm += 1;
                    }
                    EntryState::Used => {
                        admitted += 1;
                        used += 1;
                    }
                    EntryState::Expired => {
                        admitted += 1;
                        expired += 1;
                    }
                    EntryState::LotteryLost => lost += 1,
                    EntryState::Waiting => {}
                }
            }
            pipe.add_command(state).ignore();
            pipe.add_command(dev).ignore();
            if n_rank > 0 {
                pipe.add_command(rank).ignore();
            }
            if n_line > 0 {
                pipe.add_command(line).ignore();
            }
            if n_pre > 0 {
                pipe.add_command(pre).ignore();
            }
            if n_until > 0 {
                pipe.add_command(until).ignore();
            }
            if n_adm > 0 {
                pipe.add_command(adm).ignore();
            }
            if n_won > 0 {
                pipe.add_command(won).ignore();
            }
            self.pipe(&pipe).await?;
        }
        let mut pipe = redis::pipe();
        if !devices.is_empty() {
            let mut devn = redis::cmd("HSET");
            devn.arg(k(8));
            let mut devu = redis::cmd("HSET");
            devu.arg(k(11));
            let mut any_units = false;
            for (device, (accounts, units)) in &devices {
                devn.arg(*device).arg(*accounts);
                if *units > 0 {
                    devu.arg(*device).arg(*units);
                    any_units = true;
                }
            }
            pipe.add_command(devn).ignore();
            if any_units {
                pipe.add_command(devu).ignore();
            }
        }
        if !admission_ranks.is_empty() {
            admission_ranks.sort_unstable();
            let mut order = redis::cmd("RPUSH");
            order.arg(k(9)).arg(&admission_ranks);
            pipe.add_command(order).ignore();
        }
        if !snapshot.draws.is_empty() {
            let mut draws = redis::cmd("RPUSH");
            draws.arg(k(12)).arg(&snapshot.draws);
            pipe.add_command(draws).ignore();
        }
        let mut meta = redis::cmd("HSET");
        meta.arg(k(6))
            .arg("drawn")
            .arg(if snapshot.drawn { "1" } else { "0" })
            .arg("next_rank")
            .arg(next_rank)
            .arg("seq")
            .arg(
                pre_seq.max(
                    snapshot
                        .entries
                        .iter()
                        .filter_map(|e| e.pre_seq)
                        .max()
                        .map_or(0, |s| s + 1),
                ),
            )
            .arg("admitted")
            .arg(admitted)
            .arg("used")
            .arg(used)
            .arg("expired")
            .arg(expired)
            .arg("lost")
            .arg(lost)
            .arg("waitlist")
            .arg(if snapshot.waitlist { "1" } else { "0" });
        for (purpose, seed) in &snapshot.seeds {
            let field = match purpose {
                DrawPurpose::PreQueue => "seed_pre_queue",
                DrawPurpose::Lottery => "seed_lottery",
            };
            meta.arg(field).arg(to_hex(seed));
        }
        if let Some(rules) = snapshot.rules {
            meta.arg("max_accounts_per_device")
                .arg(rules.max_accounts_per_device)
                .arg("device_limit")
                .arg(rules.device_limit)
                .arg("pow_bits")
                .arg(rules.pow_bits)
                .arg("lottery_at_start")
                .arg(u8::from(rules.lottery_at_start))
                .arg("new_per_minute")
                .arg(rules.new_per_minute)
                .arg("paused")
                .arg(u8::from(rules.admission_paused))
                .arg("max_active")
                .arg(rules.max_active);
        }
        pipe.add_command(meta).ignore();
        // Last: the line is usable from here on.
        pipe.add_command(redis::cmd("HSET").arg(k(6)).arg("ready").arg("1").clone())
            .ignore();
        self.pipe(&pipe).await
    }

    async fn pipe(&self, pipe: &redis::Pipeline) -> PortResult<()> {
        let mut conn = self.conn.clone();
        // A chunk of a restore is bigger than a request: it gets a longer deadline.
        tokio::time::timeout(self.timeout * 20, pipe.query_async::<()>(&mut conn))
            .await
            .map_err(|_| PortError::unavailable("redis: restore call timed out"))?
            .map_err(unavailable)
    }
}

#[async_trait]
impl WaitingRoom for RedisRoom {
    async fn join(
        &self,
        sale: &SaleId,
        user: &UserId,
        device: &str,
        max_accounts_per_device: u32,
    ) -> PortResult<Result<EntryView, JoinRefusal>> {
        let value: redis::Value = self
            .run(
                &self.join,
                sale,
                &[
                    user.to_string(),
                    device.to_owned(),
                    max_accounts_per_device.to_string(),
                ],
            )
            .await?;
        match &value {
            redis::Value::BulkString(b) if b == b"closed" => Ok(Err(JoinRefusal::Closed)),
            redis::Value::BulkString(b) if b == b"device_cap" => {
                Ok(Err(JoinRefusal::DeviceAccountsCap))
            }
            _ => {
                let raw: RawView = redis::from_redis_value(value.clone())
                    .map_err(|e| PortError::internal_because("join reply", e))?;
                Ok(Ok(to_view(raw)?))
            }
        }
    }

    async fn view(&self, sale: &SaleId, user: &UserId) -> PortResult<Option<EntryView>> {
        let raw: Option<RawView> = self.run(&self.view, sale, &[user.to_string()]).await?;
        raw.map(to_view).transpose()
    }

    async fn pre_queue(&self, sale: &SaleId) -> PortResult<Option<Vec<String>>> {
        let (drawn, ready): (Option<String>, Option<String>) = self
            .cmd(
                redis::cmd("HMGET")
                    .arg(self.key(sale, 6))
                    .arg("drawn")
                    .arg("ready"),
            )
            .await?;
        self.check_ready(ready.as_deref())?;
        if drawn.as_deref() == Some("1") {
            return Ok(None);
        }
        let members: Vec<String> = self
            .cmd(redis::cmd("ZRANGE").arg(self.key(sale, 5)).arg(0).arg(-1))
            .await?;
        Ok(Some(members))
    }

    async fn place_drawn(&self, sale: &SaleId, order: &[String]) -> PortResult<bool> {
        let placed: i64 = self.run(&self.place, sale, order).await?;
        Ok(placed == 1)
    }

    async fn admit(
        &self,
        sale: &SaleId,
        units_available: Option<u64>,
        units_per_admission: u64,
        ttl_ms: i64,
        now_ms: i64,
        max_batch: u64,
    ) -> PortResult<u64> {
        Ok(self
            .admit_named(
                sale,
                units_available,
                units_per_admission,
                ttl_ms,
                now_ms,
                max_batch,
            )
            .await?
            .len() as u64)
    }

    async fn admit_named(
        &self,
        sale: &SaleId,
        units_available: Option<u64>,
        units_per_admission: u64,
        ttl_ms: i64,
        now_ms: i64,
        max_batch: u64,
    ) -> PortResult<Vec<Admitted>> {
        let flat: Vec<String> = self
            .run(
                &self.admit,
                sale,
                &[
                    units_available.map_or_else(|| "-1".to_owned(), |u| u.to_string()),
                    units_per_admission.to_string(),
                    ttl_ms.to_string(),
                    now_ms.to_string(),
                    max_batch.to_string(),
                ],
            )
            .await?;
        Ok(flat
            .chunks_exact(4)
            .map(|c| Admitted {
                user_id: c[0].clone(),
                ticket: c[1].parse().unwrap_or(0),
                device_id: c[2].clone(),
                until_ms: c[3].parse().unwrap_or(0),
            })
            .collect())
    }

    async fn holds(&self, sale: &SaleId) -> PortResult<bool> {
        let ready: Option<String> = self
            .cmd(redis::cmd("HGET").arg(self.key(sale, 6)).arg("ready"))
            .await?;
        Ok(ready.as_deref() == Some("1"))
    }

    async fn restore(&self, sale: &SaleId, snapshot: &RoomSnapshot) -> PortResult<bool> {
        let lock = format!("stampede:{{{}:{}}}:q:restoring", self.namespace, sale);
        let deadline = std::time::Instant::now() + Duration::from_millis(RESTORE_LEASE_MS);
        loop {
            if self.holds(sale).await? {
                return Ok(false);
            }
            let took: Option<String> = self
                .cmd(
                    redis::cmd("SET")
                        .arg(&lock)
                        .arg(std::process::id())
                        .arg("NX")
                        .arg("PX")
                        .arg(RESTORE_LEASE_MS),
                )
                .await?;
            if took.is_some() {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(PortError::unavailable(
                    "another node is still restoring this waiting room",
                ));
            }
            // Another node is restoring: its line is ready soon.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let outcome = self.write_snapshot(sale, snapshot).await;
        let _: i64 = self.cmd(redis::cmd("DEL").arg(&lock)).await.unwrap_or(0);
        outcome.map(|()| true)
    }

    async fn claim(
        &self,
        sale: &SaleId,
        user: &UserId,
        device: &str,
        ticket: u64,
        quantity: u64,
        device_limit: u64,
        now_ms: i64,
    ) -> PortResult<Result<(), ClaimRefusal>> {
        let word: String = self
            .run(
                &self.claim,
                sale,
                &[
                    user.to_string(),
                    device.to_owned(),
                    ticket.to_string(),
                    quantity.to_string(),
                    device_limit.to_string(),
                    now_ms.to_string(),
                ],
            )
            .await?;
        Ok(match word.as_str() {
            "ok" => Ok(()),
            "used" => Err(ClaimRefusal::AlreadyUsed),
            "lapsed" => Err(ClaimRefusal::Lapsed),
            "mismatch" => Err(ClaimRefusal::Mismatch),
            "device_limit" => Err(ClaimRefusal::DeviceLimit),
            _ => Err(ClaimRefusal::NotAdmitted),
        })
    }

    async fn settle(
        &self,
        sale: &SaleId,
        user: &UserId,
        quantity: u64,
        reserved: bool,
        shopping_until_ms: i64,
    ) -> PortResult<()> {
        let _: i64 = self
            .run(
                &self.settle,
                sale,
                &[
                    user.to_string(),
                    quantity.to_string(),
                    if reserved { "1" } else { "0" }.to_owned(),
                    shopping_until_ms.to_string(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn shopping_ended(&self, sale: &SaleId, user: &UserId) -> PortResult<()> {
        let _: i64 = self
            .cmd(
                redis::cmd("ZREM")
                    .arg(self.key(sale, 15))
                    .arg(user.as_str()),
            )
            .await?;
        Ok(())
    }

    async fn set_sold_out(&self, sale: &SaleId, sold_out: bool, close: bool) -> PortResult<()> {
        let meta = self.key(sale, 6);
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&meta)
            .arg("sold_out")
            .arg(if sold_out || close { "1" } else { "0" });
        if sold_out || close {
            // Sticky: admissions from now on are waitlist offers.
            cmd.arg("waitlist").arg("1");
        }
        if close {
            cmd.arg("closed").arg("1");
        }
        let _: i64 = self.cmd(&cmd).await?;
        Ok(())
    }

    async fn waiting_entrants(&self, sale: &SaleId) -> PortResult<Vec<String>> {
        self.ensure_ready(sale).await?;
        let mut line: Vec<String> = self
            .cmd(redis::cmd("ZRANGE").arg(self.key(sale, 4)).arg(0).arg(-1))
            .await?;
        let pre: Vec<String> = self
            .cmd(redis::cmd("ZRANGE").arg(self.key(sale, 5)).arg(0).arg(-1))
            .await?;
        line.extend(pre);
        Ok(line)
    }

    async fn apply_lottery(
        &self,
        sale: &SaleId,
        entrants: &[String],
        winners: &[String],
        ttl_ms: i64,
        now_ms: i64,
    ) -> PortResult<()> {
        let mut args = vec![
            ttl_ms.to_string(),
            now_ms.to_string(),
            winners.len().to_string(),
        ];
        args.extend(winners.iter().cloned());
        args.extend(entrants.iter().cloned());
        let _: i64 = self.run(&self.lottery, sale, &args).await?;
        Ok(())
    }

    async fn stats(&self, sale: &SaleId) -> PortResult<LineStats> {
        let (meta, waiting, pre, outstanding, order, units): (
            HashMap<String, String>,
            u64,
            u64,
            u64,
            Vec<u64>,
            Vec<i64>,
        ) = self.run(&self.stats, sale, &[]).await?;
        let n = |k: &str| meta.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let flag = |k: &str| meta.get(k).map(String::as_str) == Some("1");
        Ok(LineStats {
            waiting: waiting + pre,
            pre_queue: pre,
            drawn: flag("drawn"),
            admitted_total: n("admitted"),
            outstanding,
            used_total: n("used"),
            expired_total: n("expired"),
            lottery_lost_total: n("lost"),
            sold_out: flag("sold_out"),
            closed: flag("closed"),
            admission_ranks: order,
            device_units: units
                .into_iter()
                .filter(|u| *u > 0)
                .map(|u| u64::try_from(u).unwrap_or(0))
                .collect(),
        })
    }

    async fn signing_key(&self, candidate: [u8; 32]) -> PortResult<[u8; 32]> {
        let key = format!("stampede:{{{}}}:admission-key", self.namespace);
        // First writer wins: NX leaves an existing key alone.
        let _: Option<String> = self
            .cmd(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(to_hex(&candidate))
                    .arg("NX"),
            )
            .await?;
        let stored: Option<String> = self.cmd(redis::cmd("GET").arg(&key)).await?;
        stored
            .as_deref()
            .and_then(hex32)
            .ok_or_else(|| PortError::internal("admission key unreadable"))
    }

    async fn draw_seed(
        &self,
        sale: &SaleId,
        purpose: DrawPurpose,
        candidate: [u8; 32],
    ) -> PortResult<([u8; 32], bool)> {
        let field = match purpose {
            DrawPurpose::PreQueue => "seed_pre_queue",
            DrawPurpose::Lottery => "seed_lottery",
        };
        let (value, created): (String, i64) = self
            .run(
                &self.setnx_meta,
                sale,
                &[field.to_owned(), to_hex(&candidate)],
            )
            .await?;
        let seed = hex32(&value).ok_or_else(|| PortError::internal("seed unreadable"))?;
        Ok((seed, created == 1))
    }

    async fn rules(&self, sale: &SaleId) -> PortResult<RoomRules> {
        type Fields = (
            Option<u32>,
            Option<u32>,
            Option<u8>,
            Option<u8>,
            Option<u32>,
            Option<u8>,
            Option<u32>,
            Option<String>,
        );
        let (a, d, p, l, n, paused, active, ready): Fields = self
            .cmd(
                redis::cmd("HMGET")
                    .arg(self.key(sale, 6))
                    .arg("max_accounts_per_device")
                    .arg("device_limit")
                    .arg("pow_bits")
                    .arg("lottery_at_start")
                    .arg("new_per_minute")
                    .arg("paused")
                    .arg("max_active")
                    .arg("ready"),
            )
            .await?;
        self.check_ready(ready.as_deref())?;
        Ok(RoomRules {
            max_accounts_per_device: a.unwrap_or(0),
            device_limit: d.unwrap_or(0),
            pow_bits: p.unwrap_or(0),
            lottery_at_start: l == Some(1),
            new_per_minute: n.unwrap_or(0),
            admission_paused: paused == Some(1),
            max_active: active.unwrap_or(0),
        })
    }

    async fn set_rules(&self, sale: &SaleId, rules: RoomRules) -> PortResult<()> {
        let _: i64 = self
            .cmd(
                redis::cmd("HSET")
                    .arg(self.key(sale, 6))
                    .arg("max_accounts_per_device")
                    .arg(rules.max_accounts_per_device)
                    .arg("device_limit")
                    .arg(rules.device_limit)
                    .arg("pow_bits")
                    .arg(rules.pow_bits)
                    .arg("lottery_at_start")
                    .arg(u8::from(rules.lottery_at_start))
                    .arg("new_per_minute")
                    .arg(rules.new_per_minute)
                    .arg("paused")
                    .arg(u8::from(rules.admission_paused))
                    .arg("max_active")
                    .arg(rules.max_active),
            )
            .await?;
        Ok(())
    }

    async fn publish_draw(&self, sale: &SaleId, record: &str) -> PortResult<()> {
        let _: i64 = self
            .cmd(redis::cmd("RPUSH").arg(self.key(sale, 12)).arg(record))
            .await?;
        Ok(())
    }

    async fn draws(&self, sale: &SaleId) -> PortResult<Vec<String>> {
        self.ensure_ready(sale).await?;
        self.cmd(redis::cmd("LRANGE").arg(self.key(sale, 12)).arg(0).arg(-1))
            .await
    }
}

/// GCRA on Redis's own clock (so nodes' clocks do not matter). KEYS[1]: the client's key.
/// ARGV: emission interval (µs), burst tolerance (µs). Returns 0, or µs until allowed.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - tolerance > now then return tat - tolerance - now end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
"#;

/// Rate limits in Redis, shared by every node of a deployment. Each key expires as soon as its
/// bucket is full again, so memory follows the clients active in the last burst window.
pub struct RedisRateLimits {
    conn: crate::Conn,
    namespace: String,
    timeout: Duration,
    gcra: Script,
}

impl RedisRoom {
    /// Rate limits over the room's connection.
    pub fn rate_limits(&self) -> RedisRateLimits {
        RedisRateLimits {
            conn: self.conn.clone(),
            namespace: self.namespace.clone(),
            timeout: self.timeout,
            gcra: Script::new(GCRA),
        }
    }
}

#[async_trait]
impl stampede_app::ports::SharedRateLimiter for RedisRateLimits {
    async fn check(&self, key: &str, per_sec: u32, burst: u32) -> PortResult<Result<(), u64>> {
        let interval_us = 1_000_000 / u64::from(per_sec.max(1));
        let tolerance_us = interval_us * u64::from(burst.max(1).saturating_sub(1));
        let key = format!("stampede:{{{}:rl:{key}}}", self.namespace);
        let wait_us: u64 = crate::invoke(
            &self.conn,
            self.timeout,
            &self.gcra,
            &[key],
            &[interval_us.to_string(), tolerance_us.to_string()],
        )
        .await?;
        Ok(if wait_us == 0 {
            Ok(())
        } else {
            Err(wait_us.div_ceil(1000))
        })
    }
}
