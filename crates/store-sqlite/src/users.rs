//! Users and sessions. Emails are stored exactly as given (the app lower-cases and trims them)
//! and are unique; a session stores only the SHA-256 of its token.

use sqlx::SqlitePool;

use stampede_app::ports::{Credentials, PortResult, Role, Session, User, UserAccount, UserStatus};
use stampede_core::{Timestamp, UserId};

use crate::error::OrPort;
use crate::rows::{self, col, col_ts, col_word, user_cols};
use crate::BEGIN_WRITE;

/// Inserts a user; `false` if the email is taken.
pub(crate) async fn insert(writer: &SqlitePool, user: &User, hash: &str) -> PortResult<bool> {
    let done = sqlx::query(
        "INSERT INTO users (id, email, name, role, password_hash, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (email) DO NOTHING",
    )
    .bind(user.id.as_str())
    .bind(&user.email)
    .bind(&user.name)
    .bind(user.role.as_str())
    .bind(hash)
    .bind(user.created_at.0)
    .execute(writer)
    .await
    .port()?;
    Ok(done.rows_affected() == 1)
}

/// Creates the admin, or promotes the user with this email and sets the password.
pub(crate) async fn upsert_admin(writer: &SqlitePool, user: &User, hash: &str) -> PortResult<User> {
    let mut tx = writer.begin_with(BEGIN_WRITE).await.port()?;
    sqlx::query(
        "INSERT INTO users (id, email, name, role, password_hash, created_at) \
         VALUES (?1, ?2, ?3, 'admin', ?4, ?5) \
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
        " FROM users WHERE email = ?1"
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
pub(crate) async fn credentials(
    reader: &SqlitePool,
    email: &str,
) -> PortResult<Option<Credentials>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        user_cols!(),
        ", password_hash FROM users WHERE email = ?1"
    ))
    .bind(email)
    .fetch_optional(reader)
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
pub(crate) async fn by_id(reader: &SqlitePool, id: &UserId) -> PortResult<Option<User>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        user_cols!(),
        " FROM users WHERE id = ?1"
    ))
    .bind(id.as_str())
    .fetch_optional(reader)
    .await
    .port()?;
    row.map(|r| rows::user(&r)).transpose()
}

/// Stores a new session if the account is active (`false` if not): the check and the insert are
/// one statement under SQLite's single writer, so a ban cannot slip between them.
pub(crate) async fn insert_session(
    writer: &SqlitePool,
    session: &Session,
    created_at: Timestamp,
) -> PortResult<bool> {
    let done = sqlx::query(
        "INSERT INTO sessions (token_hash, user_id, expires_at, created_at) \
         SELECT ?1, id, ?3, ?4 FROM users WHERE id = ?2 AND status = 'active'",
    )
    .bind(&session.session_id)
    .bind(session.user_id.as_str())
    .bind(session.expires_at.0)
    .bind(created_at.0)
    .execute(writer)
    .await
    .port()?;
    Ok(done.rows_affected() > 0)
}

/// A session with its user's current role (so a promotion or demotion applies at once).
pub(crate) async fn session(reader: &SqlitePool, session_id: &str) -> PortResult<Option<Session>> {
    let row = sqlx::query(
        "SELECT s.token_hash, s.user_id, s.expires_at, u.role FROM sessions s \
         JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?1 AND u.status = 'active'",
    )
    .bind(session_id)
    .fetch_optional(reader)
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
pub(crate) async fn delete_session(writer: &SqlitePool, session_id: &str) -> PortResult<bool> {
    let mut tx = writer.begin_with(BEGIN_WRITE).await.port()?;
    let row = sqlx::query("DELETE FROM sessions WHERE token_hash = ?1 RETURNING expires_at")
        .bind(session_id)
        .fetch_optional(&mut *tx)
        .await
        .port()?;
    let Some(row) = row else {
        return Ok(false);
    };
    let expires_at = col_ts(&row, "expires_at")?;
    revoke(&mut tx, session_id, expires_at).await?;
    tx.commit().await.port()?;
    Ok(true)
}

async fn revoke(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    session_id: &str,
    expires_at: Timestamp,
) -> PortResult<()> {
    sqlx::query(
        "INSERT INTO session_revocations (session_id, expires_at) VALUES (?1, ?2) \
         ON CONFLICT (session_id) DO NOTHING",
    )
    .bind(session_id)
    .bind(expires_at.0)
    .execute(&mut **tx)
    .await
    .port()?;
    Ok(())
}

/// Sessions ended early that would still be valid at `now`.
pub(crate) async fn revoked_sessions(
    reader: &SqlitePool,
    now: Timestamp,
) -> PortResult<Vec<(String, Timestamp)>> {
    let rows =
        sqlx::query("SELECT session_id, expires_at FROM session_revocations WHERE expires_at > ?1")
            .bind(now.0)
            .fetch_all(reader)
            .await
            .port()?;
    rows.iter()
        .map(|r| Ok((col(r, "session_id")?, col_ts(r, "expires_at")?)))
        .collect()
}

/// The shared secret `name`, written as `candidate` if there was none (first writer wins).
pub(crate) async fn shared_secret(
    writer: &SqlitePool,
    name: &str,
    candidate: &str,
) -> PortResult<String> {
    sqlx::query("INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .bind(candidate)
        .execute(writer)
        .await
        .port()?;
    let row = sqlx::query("SELECT value FROM settings WHERE name = ?1")
        .bind(name)
        .fetch_one(writer)
        .await
        .port()?;
    col(&row, "value")
}

fn account(row: &sqlx::sqlite::SqliteRow) -> PortResult<UserAccount> {
    Ok(UserAccount {
        user: rows::user(row)?,
        status: col_word(row, "status", UserStatus::parse)?,
        status_reason: col(row, "status_reason")?,
    })
}

/// Sets the status; ends the sessions of an account that is no longer active, in one
/// transaction.
pub(crate) async fn set_status(
    writer: &SqlitePool,
    user: &UserId,
    status: UserStatus,
    reason: &str,
) -> PortResult<Option<Vec<(String, Timestamp)>>> {
    let mut tx = writer.begin_with(BEGIN_WRITE).await.port()?;
    let done = sqlx::query("UPDATE users SET status = ?1, status_reason = ?2 WHERE id = ?3")
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
        let rows =
            sqlx::query("DELETE FROM sessions WHERE user_id = ?1 RETURNING token_hash, expires_at")
                .bind(user.as_str())
                .fetch_all(&mut *tx)
                .await
                .port()?;
        for r in &rows {
            let ended_one: (String, Timestamp) = (col(r, "token_hash")?, col_ts(r, "expires_at")?);
            revoke(&mut tx, &ended_one.0, ended_one.1).await?;
            ended.push(ended_one);
        }
    }
    tx.commit().await.port()?;
    Ok(Some(ended))
}

/// One account with its status.
pub(crate) async fn account_by_id(
    reader: &SqlitePool,
    user: &UserId,
) -> PortResult<Option<UserAccount>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        user_cols!(),
        ", status, status_reason FROM users WHERE id = ?1"
    ))
    .bind(user.as_str())
    .fetch_optional(reader)
    .await
    .port()?;
    row.map(|r| account(&r)).transpose()
}

/// Accounts matching `query` in email or name, by id, after `after`.
pub(crate) async fn accounts(
    reader: &SqlitePool,
    query: &str,
    after: Option<&UserId>,
    limit: u32,
) -> PortResult<Vec<UserAccount>> {
    let pattern = stampede_app::ports::contains_pattern(query);
    let rows = sqlx::query(concat!(
        "SELECT ",
        user_cols!(),
        ", status, status_reason FROM users \
         WHERE (lower(email) LIKE ?1 ESCAPE '\\' OR lower(name) LIKE ?1 ESCAPE '\\') \
         AND id > ?2 ORDER BY id LIMIT ?3"
    ))
    .bind(pattern)
    .bind(after.map(|a| a.as_str()).unwrap_or(""))
    .bind(i64::from(limit))
    .fetch_all(reader)
    .await
    .port()?;
    rows.iter().map(account).collect()
}
