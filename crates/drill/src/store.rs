//! The store, read directly: the audit's second witness (besides the admin API), over SQLite
//! (embedded) or PostgreSQL (cluster). Read-only, in one transaction, so every figure comes
//! from the same instant. Also seeds buyer accounts into a fresh embedded store before its
//! server starts, which is how a million buyers get accounts in seconds rather than hours of
//! password hashing.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection};

use crate::DrillError;

/// What the store says about one sale after the drill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreFacts {
    pub total_stock: i64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    pub per_user_limit: i64,
    /// Units in holds still active (must equal `held`).
    pub active_units: i64,
    /// Units in holds converted to orders (must equal `sold`).
    pub converted_units: i64,
    /// Holds of the sale, in any state.
    pub holds: i64,
    /// Active holds whose expiry passed more than the grace period ago: a hold that should
    /// have ended and did not.
    pub overdue_active_holds: i64,
    /// Buyers whose live holds and purchases exceed the limit (from the holds themselves).
    pub users_over_limit: i64,
    /// Buyers whose unit counter exceeds the limit (the judge's own per-buyer row).
    pub user_units_over_limit: i64,
    pub confirmed_orders: i64,
    /// Confirmed orders without exactly one captured payment.
    pub confirmed_without_one_capture: i64,
    /// Captured payments on orders that are not confirmed.
    pub captures_on_unconfirmed: i64,
    /// Converted holds not paid by exactly one confirmed order.
    pub converted_without_one_order: i64,
    /// Holds released, expired or still active that a confirmed order nevertheless paid.
    pub ended_holds_with_confirmed_order: i64,
}

/// Where the store is.
#[derive(Debug, Clone)]
pub enum StoreUrl {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl StoreUrl {
    /// `postgres://…` or `postgresql://…`; `sqlite://PATH` or a plain path is SQLite.
    pub fn parse(s: &str) -> StoreUrl {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            StoreUrl::Postgres(s.to_owned())
        } else {
            StoreUrl::Sqlite(s.trim_start_matches("sqlite://").into())
        }
    }
}

/// Ids go into the SQL text (the same text for both databases); only ULID-like ids pass.
fn checked_id(id: &str) -> Result<&str, DrillError> {
    if !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(id)
    } else {
        Err(DrillError::Audit(format!("not a sale id: {id:?}")))
    }
}

fn queries(sale: &str, now_ms: i64, grace_ms: i64) -> Vec<String> {
    let of_sale = format!("SELECT order_id FROM order_items WHERE sale_id = '{sale}'");
    let due = now_ms.saturating_sub(grace_ms);
    vec![
        format!("SELECT total_stock, available, held, sold, per_user_limit FROM sales WHERE id = '{sale}'"),
        format!(
            "SELECT CAST(COALESCE(SUM(CASE WHEN state = 'active' THEN quantity ELSE 0 END), 0) AS BIGINT), \
                    CAST(COALESCE(SUM(CASE WHEN state = 'converted' THEN quantity ELSE 0 END), 0) AS BIGINT), \
                    CAST(COUNT(*) AS BIGINT), \
                    CAST(COALESCE(SUM(CASE WHEN state = 'active' AND expires_at < {due} THEN 1 ELSE 0 END), 0) AS BIGINT) \
             FROM holds WHERE sale_id = '{sale}'"
        ),
        format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM (SELECT user_id FROM holds \
             WHERE sale_id = '{sale}' AND state IN ('active', 'converted') \
             GROUP BY user_id HAVING SUM(quantity) > (SELECT per_user_limit FROM sales WHERE id = '{sale}')) t"
        ),
        format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM user_units WHERE sale_id = '{sale}' \
             AND units > (SELECT per_user_limit FROM sales WHERE id = '{sale}')"
        ),
        format!("SELECT CAST(COUNT(*) AS BIGINT) FROM orders WHERE status = 'confirmed' AND id IN ({of_sale})"),
        format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM orders o WHERE o.status = 'confirmed' AND o.id IN ({of_sale}) \
             AND (SELECT COUNT(*) FROM payments p WHERE p.order_id = o.id AND p.status = 'captured') <> 1"
        ),
        format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM payments p WHERE p.status = 'captured' AND p.order_id IN ({of_sale}) \
             AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = p.order_id AND o.status = 'confirmed')"
        ),
        format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM holds h WHERE h.sale_id = '{sale}' AND h.state = 'converted' \
             AND (SELECT COUNT(*) FROM order_items oi JOIN orders o ON o.id = oi.order_id \
                  WHERE oi.hold_id = h.id AND o.status = 'confirmed') <> 1"
        ),
        format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM holds h WHERE h.sale_id = '{sale}' AND h.state <> 'converted' \
             AND EXISTS (SELECT 1 FROM order_items oi JOIN orders o ON o.id = oi.order_id \
                  WHERE oi.hold_id = h.id AND o.status = 'confirmed')"
        ),
    ]
}

fn facts_from(rows: &[Vec<i64>]) -> Result<StoreFacts, DrillError> {
    let get = |q: usize, c: usize| -> Result<i64, DrillError> {
        rows.get(q)
            .and_then(|r| r.get(c))
            .copied()
            .ok_or_else(|| DrillError::Audit(format!("store query {q} gave no column {c}")))
    };
    Ok(StoreFacts {
        total_stock: get(0, 0)?,
        available: get(0, 1)?,
        held: get(0, 2)?,
        sold: get(0, 3)?,
        per_user_limit: get(0, 4)?,
        active_units: get(1, 0)?,
        converted_units: get(1, 1)?,
        holds: get(1, 2)?,
        overdue_active_holds: get(1, 3)?,
        users_over_limit: get(2, 0)?,
        user_units_over_limit: get(3, 0)?,
        confirmed_orders: get(4, 0)?,
        confirmed_without_one_capture: get(5, 0)?,
        captures_on_unconfirmed: get(6, 0)?,
        converted_without_one_order: get(7, 0)?,
        ended_holds_with_confirmed_order: get(8, 0)?,
    })
}

fn db(e: sqlx::Error) -> DrillError {
    DrillError::Audit(format!("reading the store: {e}"))
}

/// Reads the facts of `sale_id`; `now_ms` is the judge's clock (a hold active past
/// `now_ms - grace_ms` is overdue).
pub async fn facts(
    url: &StoreUrl,
    sale_id: &str,
    now_ms: i64,
    grace_ms: i64,
) -> Result<StoreFacts, DrillError> {
    let sale = checked_id(sale_id)?;
    let qs = queries(sale, now_ms, grace_ms);
    let mut rows = Vec::with_capacity(qs.len());
    match url {
        StoreUrl::Sqlite(path) => {
            let mut conn = SqliteConnectOptions::new()
                .filename(path)
                .read_only(true)
                .connect()
                .await
                .map_err(db)?;
            let mut tx = conn.begin().await.map_err(db)?;
            for q in &qs {
                rows.push(row_i64(
                    sqlx::query(q).fetch_one(&mut *tx).await.map_err(db)?,
                )?);
            }
            tx.rollback().await.map_err(db)?;
        }
        StoreUrl::Postgres(u) => {
            let opts = PgConnectOptions::from_str(u).map_err(db)?;
            let mut conn = opts.connect().await.map_err(db)?;
            sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut conn)
                .await
                .map_err(db)?;
            for q in &qs {
                rows.push(row_i64_pg(
                    sqlx::query(q).fetch_one(&mut conn).await.map_err(db)?,
                )?);
            }
            sqlx::query("ROLLBACK")
                .execute(&mut conn)
                .await
                .map_err(db)?;
        }
    }
    facts_from(&rows)
}

fn row_i64(row: sqlx::sqlite::SqliteRow) -> Result<Vec<i64>, DrillError> {
    use sqlx::Row;
    (0..row.len())
        .map(|i| row.try_get::<i64, _>(i).map_err(db))
        .collect()
}

fn row_i64_pg(row: sqlx::postgres::PgRow) -> Result<Vec<i64>, DrillError> {
    use sqlx::Row;
    (0..row.len())
        .map(|i| row.try_get::<i64, _>(i).map_err(db))
        .collect()
}

/// A buyer account the drill made: its id and the bearer token it uses.
#[derive(Debug, Clone)]
pub struct SeededAccount {
    pub user_id: String,
    /// The session the token names (a row in `sessions`, as a login would write).
    pub session_id: String,
    pub token: String,
}

/// Writes `accounts` straight into a fresh, migrated embedded store whose server has not
/// started yet: the session signing key (which the server then uses, first writer wins), one
/// user row and one session per buyer. Their password hash is not a valid one, so nobody can
/// log in with them; they only hold the drill's tokens, signed with `key`.
pub async fn seed_accounts(
    path: &std::path::Path,
    accounts: &[SeededAccount],
    key: &[u8; 32],
    now_ms: i64,
) -> Result<(), DrillError> {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .connect()
        .await
        .map_err(db)?;
    let mut tx = conn.begin().await.map_err(db)?;
    sqlx::query("INSERT INTO settings (name, value) VALUES ('session_key', ?)")
        .bind(hex::encode(key))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let expires = now_ms + 7 * 24 * 3600 * 1000;
    // A few hundred rows per statement: SQLite's limit on bound parameters is 32,766.
    for chunk in accounts.chunks(500) {
        let mut users = String::from(
            "INSERT INTO users (id, email, name, role, password_hash, created_at) VALUES ",
        );
        let mut sessions = String::from(
            "INSERT INTO sessions (token_hash, user_id, expires_at, created_at) VALUES ",
        );
        for (i, _) in chunk.iter().enumerate() {
            if i > 0 {
                users.push(',');
                sessions.push(',');
            }
            users.push_str("(?, ?, ?, 'buyer', '!drill', ?)");
            sessions.push_str("(?, ?, ?, ?)");
        }
        let mut q = sqlx::query(&users);
        for a in chunk {
            q = q
                .bind(&a.user_id)
                .bind(format!("{}@drill.invalid", a.user_id.to_ascii_lowercase()))
                .bind("drill buyer")
                .bind(now_ms);
        }
        q.execute(&mut *tx).await.map_err(db)?;
        let mut q = sqlx::query(&sessions);
        for a in chunk {
            q = q
                .bind(&a.session_id)
                .bind(&a.user_id)
                .bind(expires)
                .bind(now_ms);
        }
        q.execute(&mut *tx).await.map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(())
}
