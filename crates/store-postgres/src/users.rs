//! Users and sessions. Emails are stored exactly as given (the app lower-cases and trims them)
//! and are unique; a session stores only the SHA-256 of its token.

use sqlx::PgPool;

use stampede_app::ports::{Credentials, PortResult, Role, Session, User};
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

/// Stores a new session.
pub(crate) async fn insert_session(
    pool: &PgPool,
    session: &Session,
    created_at: Timestamp,
) -> PortResult<()> {
    sqlx::query(
        "INSERT INTO sessions (token_hash, user_id, expires_at, created_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&session.token_hash)
    .bind(session.user_id.as_str())
    .bind(session.expires_at.0)
    .bind(created_at.0)
    .execute(pool)
    .await
    .port()?;
    Ok(())
}

/// A session with its user's current role (so a promotion or demotion applies at once).
pub(crate) async fn session(pool: &PgPool, token_hash: &str) -> PortResult<Option<Session>> {
    let row = sqlx::query(
        "SELECT s.token_hash, s.user_id, s.expires_at, u.role FROM sessions s \
         JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(pool)
    .await
    .port()?;
    row.map(|r| {
        Ok(Session {
            token_hash: col(&r, "token_hash")?,
            user_id: UserId::from_trusted(col(&r, "user_id")?),
            role: col_word(&r, "role", Role::parse)?,
            expires_at: col_ts(&r, "expires_at")?,
        })
    })
    .transpose()
}

/// Logs out; `false` if there was no such session.
pub(crate) async fn delete_session(pool: &PgPool, token_hash: &str) -> PortResult<bool> {
    let done = sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
        .bind(token_hash)
        .execute(pool)
        .await
        .port()?;
    Ok(done.rows_affected() > 0)
}
