//! Users and sessions. Emails are stored exactly as given (the app lower-cases and trims them)
//! and are unique; a session stores only the SHA-256 of its token.

use sqlx::PgPool;

use stampede_app::ports::{Credentials, PortResult, Role, Session, User, UserAccount, UserStatus};
use stampede_core::{Timestamp, UserId};

use crate::error::OrPort;
use crate::rows::{self, col, col_ts, col_word, user_cols};

/// Inserts a user; `false` if the email is taken.
pub(crate) async fn insert(pool: &PgPool, user: &User, hash: &str) -> PortResult<bool> {
    let done = sqlx::query(
        "INSERT INTO users (id, email, name, role, password_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (email) DO NOTHING",
    )
    .bind(user.id.as_str())
    .bind(&user.email)
    .bind(&user.name)
    .bind(user.role.as_str())
    .bind(hash)
    .bind(user.created_at.0)
    .execute(pool)
    .await
    .port()?;
    Ok(done.rows_affected() == 1)
}

/// Creates the admin, or promotes the user with this email and sets the password.
pub(crate) async fn upsert_admin(pool: &PgPool, user: &User, hash: &str) -> PortResult<User> {
    let mut tx = pool.begin().await.port()?;
    sqlx::query(
        "INSERT INTO users (id, email, name, role, password_hash, created_at) \
         VALUES ($1, $2, $3, 'admin', $4, $5) \
         ON CONFLICT (email) DO UPDATE SET role = 'admin', password_hash = excluded.password_hash",
    )
    .bind(user.id.as_str())
    .bind(&user.email)
    .bind(&user.name)
    .bind(hash)
    .bind(user.created_at.0)
    .execute(&mut *tx)
    .await
    .port()?;
    let row = sqlx::query(concat!(
        "SELECT ",
        user_cols!(),
        " FROM users WHERE email = $1"
    ))
    .bind(&user.email)
    .fetch_one(&mut *tx)
    .await
    .port()?;
    let stored = rows::user(&row)?;
    tx.commit().await.port()?;
    Ok(stored)
}

/// The login path's view of a user.
pub(crate) async fn credentials(pool: &PgPool, email: &str) -> PortResult<Option<Credentials>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        user_cols!(),
        ", password_hash FROM users WHERE email = $1"
    ))
    .bind(email)
    .fetch_optional(pool)
    .await
    .port()?;
    row.map(|r| {
        Ok(Credentials {
            user: rows::user(&r)?,
            password_hash: col(&r, "password_hash")?,
        })
    })
    .transpose()
}

/// A user by id.
pub(crate) async fn by_id(pool: &PgPool, id: &UserId) -> PortResult<Option<User>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        user_cols!(),
        " FROM users WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(pool)
    .await
    .port()?;
    row.map(|r| rows::user(&r)).transpose()
}

/// Stores a new session if the account is active (`false` if not). The user row is share-locked
/// by the same statement, so a ban racing the login either commits first (and this sees the
/// new status) or waits for this insert and then ends the session with the others.
pub(crate) async fn insert_session(
    pool: &PgPool,
    session: &Session,
    created_at: Timestamp,
) -> PortResult<bool> {
    let done = sqlx::query(
        "INSERT INTO sessions (token_hash, user_id, expires_at, created_at) \
         SELECT $1, u.id, $3, $4 FROM (SELECT id, status FROM users WHERE id = $2 FOR SHARE) u \
         WHERE u.status = 'active'",
    )
    .bind(&session.session_id)
    .bind(session.user_id.as_str())
    .bind(session.expires_at.0)
    .bind(created_at.0)
    .execute(pool)
    .await
    .port()?;
    Ok(done.rows_affected() > 0)
}

/// A session with its user's current role (so a promotion or demotion applies at once).
pub(crate) async fn session(pool: &PgPool, session_id: &str) -> PortResult<Option<Session>> {
    let row = sqlx::query(
        "SELECT s.token_hash, s.user_id, s.expires_at, u.role FROM sessions s \
         JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1 AND u.status = 'active'",
    )
    .bind(session_id)
    .fetch_optional(pool)
    .await
    .port()?;
    row.map(|r| {
        Ok(Session {
            session_id: col(&r, "token_hash")?,
            user_id: UserId::from_trusted(col(&r, "user_id")?),
            role: col_word(&r, "role", Role::parse)?,
            expires_at: col_ts(&r, "expires_at")?,
        })
    })
    .transpose()
}

/// Logs out: deletes the session and records its revocation until its expiry, in one
/// transaction; `false` if there was no such session.
pub(crate) async fn delete_session(pool: &PgPool, session_id: &str) -> PortResult<bool> {
    let done = sqlx::query(
        "WITH ended AS (DELETE FROM sessions WHERE token_hash = $1 RETURNING token_hash, expires_at) \
         INSERT INTO session_revocations (session_id, expires_at) \
         SELECT token_hash, expires_at FROM ended ON CONFLICT (session_id) DO NOTHING",
    )
    .bind(session_id)
    .execute(pool)
    .await
    .port()?;
    Ok(done.rows_affected() > 0)
}

/// Sessions ended early that would still be valid at `now`.
pub(crate) async fn revoked_sessions(
    pool: &PgPool,
    now: Timestamp,
) -> PortResult<Vec<(String, Timestamp)>> {
    let rows =
        sqlx::query("SELECT session_id, expires_at FROM session_revocations WHERE expires_at > $1")
            .bind(now.0)
            .fetch_all(pool)
            .await
            .port()?;
    rows.iter()
        .map(|r| Ok((col(r, "session_id")?, col_ts(r, "expires_at")?)))
        .collect()
}

/// The shared secret `name`, written as `candidate` if there was none (first writer wins).
pub(crate) async fn shared_secret(
    pool: &PgPool,
    name: &str,
    candidate: &str,
) -> PortResult<String> {
    sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .bind(candidate)
        .execute(pool)
        .await
        .port()?;
    let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .port()?;
    col(&row, "value")
}

fn account(row: &sqlx::postgres::PgRow) -> PortResult<UserAccount> {
    Ok(UserAccount {
        user: rows::user(row)?,
        status: col_word(row, "status", UserStatus::parse)?,
        status_reason: col(row, "status_reason")?,
    })
}

/// Sets the status; ends the sessions of an account that is no longer active, in one
/// transaction (the user row is locked first, so a login racing the change either lands
/// before it, and its session is deleted here, or after it, and [`session`] refuses it).
pub(crate) async fn set_status(
    pool: &PgPool,
    user: &UserId,
    status: UserStatus,
    reason: &str,
) -> PortResult<Option<Vec<(String, Timestamp)>>> {
    let mut tx = pool.begin().await.port()?;
    let done = sqlx::query("UPDATE users SET status = $1, status_reason = $2 WHERE id = $3")
        .bind(status.as_str())
        .bind(reason)
        .bind(user.as_str())
        .execute(&mut *tx)
        .await
        .port()?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    let mut ended = Vec::new();
    if status != UserStatus::Active {
        let rows = sqlx::query(
            "WITH ended AS (DELETE FROM sessions WHERE user_id = $1 \
             RETURNING token_hash, expires_at) \
             INSERT INTO session_revocations (session_id, expires_at) \
             SELECT token_hash, expires_at FROM ended ON CONFLICT (session_id) DO NOTHING \
             RETURNING session_id, expires_at",
        )
        .bind(user.as_str())
        .fetch_all(&mut *tx)
        .await
        .port()?;
        for r in &rows {
            ended.push((col(r, "session_id")?, col_ts(r, "expires_at")?));
        }
    }
    tx.commit().await.port()?;
    Ok(Some(ended))
}

/// One account with its status.
pub(crate) async fn account_by_id(pool: &PgPool, user: &UserId) -> PortResult<Option<UserAccount>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        user_cols!(),
        ", status, status_reason FROM users WHERE id = $1"
    ))
    .bind(user.as_str())
    .fetch_optional(pool)
    .await
    .port()?;
    row.map(|r| account(&r)).transpose()
}

/// Accounts matching `query` in email or name, by id, after `after`.
pub(crate) async fn accounts(
    pool: &PgPool,
    query: &str,
    after: Option<&UserId>,
    limit: u32,
) -> PortResult<Vec<UserAccount>> {
    let pattern = stampede_app::ports::contains_pattern(query);
    let rows = sqlx::query(concat!(
        "SELECT ",
        user_cols!(),
        ", status, status_reason FROM users \
         WHERE (lower(email) LIKE $1 OR lower(name) LIKE $1) \
         AND id > $2 ORDER BY id LIMIT $3"
    ))
    .bind(pattern)
    .bind(after.map(|a| a.as_str()).unwrap_or(""))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .port()?;
    rows.iter().map(account).collect()
}
