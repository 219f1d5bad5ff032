//! Idempotency keys, webhook de-duplication, the append-only audit log and buyers'
//! notification feeds.
//!
//! Idempotency: one row per `(user, key)`, with the ids of the order its checkout creates;
//! `status` is NULL while the first request is being worked on. A claim older than the
//! caller's lease counts as abandoned (its request died) and is taken over, ids and all, by the
//! next request with that key and body, which then owns the row.

use std::collections::HashSet;

use sqlx::{Pool, Transaction};

use stampede_app::ports::{
    AuditEntry, AuditFilter, CheckoutIds, EventKind, IdempotencyAnswer, IdempotencyClaim,
    IdempotencyStart, Notification, PortResult,
};
use stampede_core::{OrderId, PaymentId, Timestamp, UserId};

use crate::engine::{
    all_distinct, begin_write, commit, find, list, one, statement, values_list, Bind, Conn, Engine,
    InBatch, Pending, Run,
};
use crate::internal;
use crate::rows::{col, col_ts, col_word};

/// Claims a key, or says why not (replay, mismatch, in progress). The claim is an insert
/// first, so two nodes racing on one key cannot both proceed: the loser waits for the
/// winner's insert to commit, then reads and locks the winner's row.
impl<DB: Engine> InBatch<DB> for IdempotencyClaim {
    const OP: &'static str = "idempotency_start";
    type Answer = IdempotencyStart;
    fn run<'c>(&'c self, tx: &'c mut Transaction<'static, DB>) -> Pending<'c, IdempotencyStart> {
        Box::pin(idempotency_start(tx, self))
    }
    fn run_all<'c>(
        items: &'c [Self],
        tx: &'c mut Transaction<'static, DB>,
    ) -> Pending<'c, Vec<IdempotencyStart>> {
        Box::pin(async move { claim_all(tx, &items.iter().collect::<Vec<_>>()).await })
    }
}

/// Claims of a batch together: new keys (the usual case) are inserted by one multi-row
/// statement and proceed; a key already there, or named twice in the batch, is claimed as
/// [`IdempotencyClaim`]'s own write does, in the batch's order.
pub async fn claim_all<DB: Engine>(
    tx: &mut impl Conn<DB>,
    claims: &[&IdempotencyClaim],
) -> PortResult<Vec<IdempotencyStart>> {
    let mut inserted = HashSet::new();
    if all_distinct(claims.iter().map(|c| (c.user.as_str(), c.key.as_str()))) {
        for chunk in claims.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO idempotency (user_id, key, request_hash, status, body, started_at, \
                 order_id, payment_id) SELECT column1, column2, column3, NULL, NULL, column4, \
                 column5, column6 FROM (VALUES {}) AS v WHERE TRUE \
                 ON CONFLICT (user_id, key) DO NOTHING RETURNING user_id, key",
                values_list(chunk.len(), 6)
            );
            let mut q = statement::<DB>(&sql);
            for c in chunk {
                q = q
                    .text(c.user.as_str())
                    .text(&c.key)
                    .text(&c.request_hash)
                    .int(c.now.0)
                    .text(c.ids.order_id.as_str())
                    .text(c.ids.payment_id.as_str());
            }
            for row in q.all(tx).await? {
                inserted.insert((col::<String>(&row, "user_id")?, col::<String>(&row, "key")?));
            }
        }
    }
    let mut out = Vec::with_capacity(claims.len());
    for c in claims {
        let key = (c.user.as_str().to_owned(), c.key.clone());
        out.push(match inserted.contains(&key) {
            true => IdempotencyStart::Proceed {
                ids: c.ids.clone(),
                resumed: false,
            },
            false => idempotency_start(tx, c).await?,
        });
    }
    Ok(out)
}

/// Rows per multi-row statement here: well under either engine's limit on parameters.
const ROWS_PER_STATEMENT: usize = 500;

async fn idempotency_start<DB: Engine>(
    tx: &mut impl Conn<DB>,
    c: &IdempotencyClaim,
) -> PortResult<IdempotencyStart> {
    let (user, key, request_hash, now) = (&c.user, c.key.as_str(), c.request_hash.as_str(), c.now);
    let (lease_ms, ids) = (c.lease_ms, &c.ids);
    // `$1` the user, `$2` the key, `$3` the request's hash, `$4` now, `$5`/`$6` the ids.
    let claim = |sql| {
        let q = statement::<DB>(sql)
            .text(user.as_str())
            .text(key)
            .text(request_hash);
        q.int(now.0)
            .text(ids.order_id.as_str())
            .text(ids.payment_id.as_str())
    };
    let claimed = claim(
        "INSERT INTO idempotency (user_id, key, request_hash, status, body, started_at, \
         order_id, payment_id) VALUES ($1, $2, $3, NULL, NULL, $4, $5, $6) \
         ON CONFLICT (user_id, key) DO NOTHING",
    );
    if claimed.run(tx).await? == 1 {
        let ids = ids.clone();
        return Ok(IdempotencyStart::Proceed {
            ids,
            resumed: false,
        });
    }
    let sql = format!(
        "SELECT request_hash, status, body, started_at, order_id, payment_id FROM idempotency \
         WHERE user_id = $1 AND key = $2{}",
        DB::FOR_UPDATE
    );
    let q = statement::<DB>(&sql).text(user.as_str()).text(key);
    let row = one(q, tx, || {
        format!("idempotency key {key} of {user} vanished")
    })
    .await?;
    let status: Option<i64> = col(&row, "status")?;
    let verdict = match status {
        _ if col::<String>(&row, "request_hash")? != request_hash => IdempotencyStart::Mismatch,
        Some(status) => IdempotencyStart::Replay {
            status: u16::try_from(status)
                .map_err(|_| internal(format!("stored status {status}")))?,
            body: col::<Option<String>>(&row, "body")?.unwrap_or_default(),
        },
        None if col_ts(&row, "started_at")?.plus_millis(lease_ms) <= now => {
            // Taken over under the ids of the first claim (one from before ids were kept
            // takes the new ones): the lapsed attempt's order, if it committed, is found.
            let q = claim(
                "UPDATE idempotency SET request_hash = $3, started_at = $4, \
                 order_id = COALESCE(order_id, $5), payment_id = COALESCE(payment_id, $6) \
                 WHERE user_id = $1 AND key = $2 RETURNING order_id, payment_id",
            );
            let row = one(q, tx, || format!("idempotency key {key} vanished")).await?;
            let ids = CheckoutIds {
                order_id: OrderId::from_trusted(col(&row, "order_id")?),
                payment_id: PaymentId::from_trusted(col(&row, "payment_id")?),
            };
            IdempotencyStart::Proceed { ids, resumed: true }
        }
        None => IdempotencyStart::InProgress,
    };
    Ok(verdict)
}

impl<DB: Engine> InBatch<DB> for IdempotencyAnswer {
    const OP: &'static str = "idempotency_finish";
    type Answer = ();
    /// Stores the answer for a claimed key.
    fn run<'c>(&'c self, tx: &'c mut Transaction<'static, DB>) -> Pending<'c, ()> {
        Box::pin(async move { answer_all(tx, &[self]).await.map(|_| ()) })
    }
    fn run_all<'c>(
        items: &'c [Self],
        tx: &'c mut Transaction<'static, DB>,
    ) -> Pending<'c, Vec<()>> {
        Box::pin(async move { answer_all(tx, &items.iter().collect::<Vec<_>>()).await })
    }
}

/// Stores the answers for claimed keys, a statement for each few hundred (one by one when a
/// key comes twice, so the last answer stays).
pub async fn answer_all<DB: Engine>(
    tx: &mut impl Conn<DB>,
    answers: &[&IdempotencyAnswer],
) -> PortResult<Vec<()>> {
    let distinct = all_distinct(answers.iter().map(|a| (a.user.as_str(), a.key.as_str())));
    let size = if distinct { ROWS_PER_STATEMENT } else { 1 };
    for chunk in answers.chunks(size) {
        let sql = format!(
            "UPDATE idempotency SET status = v.column3, body = v.column4 FROM (VALUES {}) AS v \
             WHERE idempotency.user_id = v.column1 AND idempotency.key = v.column2",
            values_list(chunk.len(), 4)
        );
        let mut q = statement::<DB>(&sql);
        for a in chunk {
            q = q
                .text(a.user.as_str())
                .text(&a.key)
                .int(i64::from(a.status))
                .text(&a.body);
        }
        let done = q.run(tx).await?;
        if usize::try_from(done).ok() != Some(chunk.len()) {
            let keys: Vec<&str> = chunk.iter().map(|a| a.key.as_str()).collect();
            tracing::warn!(
                ?keys,
                done,
                "idempotency answers for keys that were never claimed"
            );
        }
    }
    Ok(vec![(); answers.len()])
}

/// Drops an unanswered claim (an answered one stays, so it keeps replaying).
pub async fn idempotency_abandon<DB: Engine>(
    writer: &Pool<DB>,
    user: &UserId,
    key: &str,
) -> PortResult<()> {
    statement::<DB>("DELETE FROM idempotency WHERE user_id = $1 AND key = $2 AND status IS NULL")
        .text(user.as_str())
        .text(key)
        .run_in(writer, "idempotency_abandon")
        .await?;
    Ok(())
}

/// Whether a webhook event id has been recorded.
pub async fn webhook_event_seen<DB: Engine>(reader: &Pool<DB>, event_id: &str) -> PortResult<bool> {
    let sql = "SELECT 1 FROM webhook_events WHERE event_id = $1";
    Ok(find(reader, sql, event_id, |_| Ok(())).await?.is_some())
}

/// Records a webhook event id; `false` if it was already seen.
pub async fn record_webhook_event<DB: Engine>(
    writer: &Pool<DB>,
    event_id: &str,
    now: Timestamp,
) -> PortResult<bool> {
    let done = statement::<DB>(
        "INSERT INTO webhook_events (event_id, received_at) VALUES ($1, $2) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .text(event_id)
    .int(now.0)
    .run_in(writer, "record_webhook_event")
    .await?;
    Ok(done == 1)
}

fn json_value(text: Option<String>) -> PortResult<Option<serde_json::Value>> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| internal(format!("audit json: {e}"))))
        .transpose()
}

/// Appends entries in one transaction, 500 per statement (3,500 parameters, well under
/// SQLite's limit). The table refuses updates and deletes.
pub async fn append_audits<DB: Engine>(
    writer: &Pool<DB>,
    entries: &[AuditEntry],
) -> PortResult<()> {
    let mut tx = begin_write(writer).await?;
    insert_audits(&mut tx, entries).await?;
    commit(tx, "append_audits").await
}

/// Writes audit entries inside the caller's transaction, a few hundred per statement.
pub async fn insert_audits<DB: Engine>(
    tx: &mut impl Conn<DB>,
    entries: &[AuditEntry],
) -> PortResult<()> {
    for chunk in entries.chunks(500) {
        // `VALUES` names its columns `column1`… on both engines.
        let sql = format!(
            "INSERT INTO audit (id, at, actor, action, target, before_json, after_json) \
             SELECT column1, column2, column3, column4, column5, CAST(column6 AS {json}), \
             CAST(column7 AS {json}) FROM (VALUES {}) AS v",
            values_list(chunk.len(), 7),
            json = DB::JSON
        );
        let text = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
        let json: Vec<_> = chunk
            .iter()
            .map(|e| [text(&e.before), text(&e.after)])
            .collect();
        let mut q = statement::<DB>(&sql);
        for (e, [before, after]) in chunk.iter().zip(&json) {
            q = q
                .text(&e.id)
                .int(e.at.0)
                .text(&e.actor)
                .text(&e.action)
                .text(&e.target);
            q = q.opt_text(before.as_deref()).opt_text(after.as_deref());
        }
        q.run(tx).await?;
    }
    Ok(())
}

/// Entries matching the filter, oldest first. A `limit` of 0 means no limit.
pub async fn audit<DB: Engine>(reader: &Pool<DB>, f: &AuditFilter) -> PortResult<Vec<AuditEntry>> {
    let limit = Some(f.limit).filter(|l| *l > 0).map_or(i64::MAX, i64::from);
    let q = statement::<DB>(
        "SELECT id, at, actor, action, target, CAST(before_json AS TEXT) AS before_json, \
         CAST(after_json AS TEXT) AS after_json FROM audit \
         WHERE (CAST($1 AS TEXT) IS NULL OR actor = $1) \
         AND (CAST($2 AS TEXT) IS NULL OR action = $2) \
         AND (CAST($3 AS TEXT) IS NULL OR id > $3) ORDER BY id LIMIT $4",
    )
    .opt_text(f.actor.as_deref())
    .opt_text(f.action.as_deref())
    .opt_text(f.after.as_deref())
    .int(limit);
    list(q, reader, |r| {
        Ok(AuditEntry {
            id: col(r, "id")?,
            at: col_ts(r, "at")?,
            actor: col(r, "actor")?,
            action: col(r, "action")?,
            target: col(r, "target")?,
            before: json_value(col(r, "before_json")?)?,
            after: json_value(col(r, "after_json")?)?,
        })
    })
    .await
}

/// Adds one notification to a buyer's feed; `false` (nothing written) if its id is there
/// already, so a redelivered event takes effect once.
impl<DB: Engine> InBatch<DB> for Notification {
    const OP: &'static str = "append_notifications";
    type Answer = bool;
    /// Adds the notification to its buyer's feed unless one with its id is there.
    fn run<'c>(&'c self, tx: &'c mut Transaction<'static, DB>) -> Pending<'c, bool> {
        Box::pin(async move { Ok(notify_all(tx, &[self]).await?.first() == Some(&true)) })
    }
    fn run_all<'c>(
        items: &'c [Self],
        tx: &'c mut Transaction<'static, DB>,
    ) -> Pending<'c, Vec<bool>> {
        Box::pin(async move { notify_all(tx, &items.iter().collect::<Vec<_>>()).await })
    }
}

/// Adds notifications to their buyers' feeds in the order given, a statement for each few
/// hundred (one by one when an id comes twice); whether each was added.
pub async fn notify_all<DB: Engine>(
    tx: &mut impl Conn<DB>,
    notices: &[&Notification],
) -> PortResult<Vec<bool>> {
    let size = match all_distinct(notices.iter().map(|n| n.id.as_str())) {
        true => ROWS_PER_STATEMENT,
        false => 1,
    };
    let mut added = HashSet::new();
    for chunk in notices.chunks(size) {
        let sql = format!(
            "INSERT INTO notifications (id, user_id, kind, created_at, data_json) \
             SELECT column1, column2, column3, column4, CAST(column5 AS {}) \
             FROM (VALUES {}) AS v WHERE TRUE ON CONFLICT (id) DO NOTHING RETURNING id",
            DB::JSON,
            values_list(chunk.len(), 5)
        );
        let data: Vec<String> = chunk.iter().map(|n| n.data.to_string()).collect();
        let mut q = statement::<DB>(&sql);
        for (n, data) in chunk.iter().zip(&data) {
            q = q
                .text(&n.id)
                .text(n.user_id.as_str())
                .text(n.kind.as_str())
                .int(n.created_at.0)
                .text(data);
        }
        for row in q.all(tx).await? {
            added.insert(col::<String>(&row, "id")?);
        }
    }
    // An id added by this call counts for its first notification only.
    Ok(notices.iter().map(|n| added.remove(&n.id)).collect())
}

/// A buyer's notifications after a cursor, oldest first: in the order they were added
/// ([`Engine::NOTIFICATION_SEQ`]), not by id, so an event applied late cannot land behind a
/// reader's cursor.
pub async fn notifications<DB: Engine>(
    reader: &Pool<DB>,
    user: &UserId,
    after: Option<&str>,
    limit: u32,
) -> PortResult<Vec<Notification>> {
    let sql = format!(
        "SELECT id, user_id, kind, created_at, CAST(data_json AS TEXT) AS data_json \
         FROM notifications \
         WHERE user_id = $1 AND (CAST($2 AS TEXT) IS NULL OR {seq} > COALESCE( \
             (SELECT {seq} FROM notifications WHERE id = $2 AND user_id = $1), -1)) \
         ORDER BY {seq} LIMIT $3",
        seq = DB::NOTIFICATION_SEQ
    );
    let q = statement::<DB>(&sql)
        .text(user.as_str())
        .opt_text(after)
        .int(i64::from(limit));
    list(q, reader, |r| {
        let data: String = col(r, "data_json")?;
        Ok(Notification {
            id: col(r, "id")?,
            user_id: UserId::from_trusted(col(r, "user_id")?),
            kind: col_word(r, "kind", EventKind::parse)?,
            created_at: col_ts(r, "created_at")?,
            data: serde_json::from_str(&data)
                .map_err(|e| internal(format!("notification json: {e}")))?,
        })
    })
    .await
}
