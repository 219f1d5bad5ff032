//! Users and sessions. Emails are stored exactly as given (the app lower-cases and trims them)
//! and are unique; a session stores only the SHA-256 of its token.

use sqlx::Pool;

use stampede_app::ports::{Credentials, PortResult, Role, Session, User, UserAccount, UserStatus};
use stampede_core::{Timestamp, UserId};

use crate::engine::{
    begin_write, commit, find, list, one, statement, Bind, Conn, Engine, Run, Statement,
};
use crate::error::OrPort;
use crate::rows::{self, col, col_ts, col_word, DbRow};
use crate::user_cols;

/// The `SELECT` of [`rows::user`]'s columns.
const USERS: &str = concat!("SELECT ", user_cols!());

/// Inserts a user; `false` if the email is taken.
pub async fn insert<DB: Engine>(writer: &Pool<DB>, user: &User, hash: &str) -> PortResult<bool> {
    let sql = "INSERT INTO users (id, email, name, role, password_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (email) DO NOTHING";
    Ok(new_user::<DB>(sql, user, user.role, hash)
        .run_in(writer, "insert_user")
        .await?
        == 1)
}

/// `sql`, an insert into `users` (id, email, name, role, password hash, creation time), bound.
fn new_user<'q, DB: Engine>(
    sql: &'q str,
    user: &'q User,
    role: Role,
    hash: &'q str,
) -> Statement<'q, DB> {
    statement::<DB>(sql)
        .text(user.id.as_str())
        .text(&user.email)
        .text(&user.name)
        .text(role.as_str())
        .text(hash)
        .int(user.created_at.0)
}

/// Creates the admin, or promotes the user with this email and sets the password.
pub async fn upsert_admin<DB: Engine>(
    writer: &Pool<DB>,
    user: &User,
    hash: &str,
) -> PortResult<User> {
    let sql = concat!(
        "INSERT INTO users (id, email, name, role, password_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (email) \
         DO UPDATE SET role = 'admin', password_hash = excluded.password_hash RETURNING ",
        user_cols!()
    );
    let q = new_user::<DB>(sql, user, Role::Admin, hash);
    let conn = &mut writer.acquire().await.port()?;
    rows::user(&one(q, conn, || format!("admin {} vanished", user.email)).await?)
}

/// The login path's view of a user.
pub async fn credentials<DB: Engine>(
    reader: &Pool<DB>,
    email: &str,
) -> PortResult<Option<Credentials>> {
    let sql = format!("{USERS}, password_hash FROM users WHERE email = $1");
    find(reader, &sql, email, |r| {
        Ok(Credentials {
            user: rows::user(r)?,
            password_hash: col(r, "password_hash")?,
        })
    })
    .await
}

/// A user by id.
pub async fn by_id<DB: Engine>(reader: &Pool<DB>, id: &UserId) -> PortResult<Option<User>> {
    let sql = concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1");
    find(reader, sql, id.as_str(), rows::user).await
}

/// Stores a new session if the account is active (`false` if not). The check and the insert are
/// one statement: under SQLite's single writer a ban cannot slip between them; on PostgreSQL
/// the user row is share-locked by the same statement ([`Engine::FOR_SHARE`]), so a ban racing
/// the login either commits first (and this sees the new status) or waits for this insert and
/// then ends the session with the others.
pub async fn insert_session<DB: Engine>(
    writer: &Pool<DB>,
    session: &Session,
    created_at: Timestamp,
) -> PortResult<bool> {
    let sql = format!(
        "INSERT INTO sessions (token_hash, user_id, expires_at, created_at) \
         SELECT $1, u.id, $3, $4 FROM (SELECT id, status FROM users WHERE id = $2{}) u \
         WHERE u.status = 'active'",
        DB::FOR_SHARE
    );
    let done = statement::<DB>(&sql)
        .text(&session.session_id)
        .text(session.user_id.as_str())
        .int(session.expires_at.0)
        .int(created_at.0)
        .run_in(writer, "insert_session")
        .await?;
    Ok(done > 0)
}

/// A session with its user's current role (so a promotion or demotion applies at once).
pub async fn session<DB: Engine>(
    reader: &Pool<DB>,
    session_id: &str,
) -> PortResult<Option<Session>> {
    let sql = "SELECT s.token_hash, s.user_id, s.expires_at, u.role FROM sessions s \
         JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1 AND u.status = 'active'";
    find(reader, sql, session_id, |r| {
        Ok(Session {
            session_id: col(r, "token_hash")?,
            user_id: UserId::from_trusted(col(r, "user_id")?),
            role: col_word(r, "role", Role::parse)?,
            expires_at: col_ts(r, "expires_at")?,
        })
    })
    .await
}

/// Logs out: deletes the session and records its revocation until its expiry, in one
/// transaction; `false` if there was no such session.
pub async fn delete_session<DB: Engine>(writer: &Pool<DB>, session_id: &str) -> PortResult<bool> {
    let mut tx = begin_write(writer).await?;
    let ended = end_sessions(&mut tx, "token_hash", session_id).await?;
    commit(tx, "delete_session").await?;
    Ok(!ended.is_empty())
}

/// Deletes the sessions whose `column` is `value`, inside the caller's transaction, and records
/// their revocations until their expiry; the sessions ended. The revocations are copied first:
/// SQLite cannot feed one statement's `DELETE ... RETURNING` into another's `INSERT`.
async fn end_sessions<DB: Engine>(
    tx: &mut impl Conn<DB>,
    column: &str,
    value: &str,
) -> PortResult<Vec<(String, Timestamp)>> {
    let revoke = format!(
        "INSERT INTO session_revocations (session_id, expires_at) \
         SELECT token_hash, expires_at FROM sessions WHERE {column} = $1 \
         ON CONFLICT (session_id) DO NOTHING"
    );
    statement::<DB>(&revoke).text(value).run(tx).await?;
    let delete =
        format!("DELETE FROM sessions WHERE {column} = $1 RETURNING token_hash, expires_at");
    let rows = statement::<DB>(&delete).text(value).all(tx).await?;
    tokens(&rows, "token_hash")
}

/// Sessions ended early that would still be valid at `now`.
pub async fn revoked_sessions<DB: Engine>(
    reader: &Pool<DB>,
    now: Timestamp,
) -> PortResult<Vec<(String, Timestamp)>> {
    let rows = statement::<DB>(
        "SELECT session_id, expires_at FROM session_revocations WHERE expires_at > $1",
    )
    .int(now.0)
    .all_in(reader)
    .await?;
    tokens(&rows, "session_id")
}

/// Each row's session (its column `id`) with its expiry.
fn tokens<R: DbRow>(rows: &[R], id: &str) -> PortResult<Vec<(String, Timestamp)>> {
    rows.iter()
        .map(|r| Ok((col(r, id)?, col_ts(r, "expires_at")?)))
        .collect()
}

/// The shared secret `name`, written as `candidate` if there was none (first writer wins).
pub async fn shared_secret<DB: Engine>(
    writer: &Pool<DB>,
    name: &str,
    candidate: &str,
) -> PortResult<String> {
    // Setting a stored value to itself returns it: the first writer's, in one statement.
    let q = statement::<DB>(
        "INSERT INTO settings (name, value) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET value = settings.value RETURNING value",
    );
    let conn = &mut writer.acquire().await.port()?;
    let row = one(q.text(name).text(candidate), conn, || {
        format!("setting {name} vanished")
    });
    col(&row.await?, "value")
}

/// Sets the status; ends the sessions of an account that is no longer active, in one
/// transaction (the user row is locked first, so on PostgreSQL a login racing the change
/// either lands before it, and its session is deleted here, or after it, and [`session`]
/// refuses it).
pub async fn set_status<DB: Engine>(
    writer: &Pool<DB>,
    user: &UserId,
    status: UserStatus,
    reason: &str,
) -> PortResult<Option<Vec<(String, Timestamp)>>> {
    let mut tx = begin_write(writer).await?;
    let done = statement::<DB>("UPDATE users SET status = $1, status_reason = $2 WHERE id = $3")
        .text(status.as_str())
        .text(reason)
        .text(user.as_str())
        .run(&mut tx)
        .await?;
    if done == 0 {
        return Ok(None);
    }
    let mut ended = Vec::new();
    if status != UserStatus::Active {
        ended = end_sessions(&mut tx, "user_id", user.as_str()).await?;
    }
    commit(tx, "set_user_status").await?;
    Ok(Some(ended))
}

/// One account with its status.
pub async fn account_by_id<DB: Engine>(
    reader: &Pool<DB>,
    user: &UserId,
) -> PortResult<Option<UserAccount>> {
    let sql = format!("{USERS}, status, status_reason FROM users WHERE id = $1");
    find(reader, &sql, user.as_str(), account).await
}

/// A `users` row with its status.
fn account<R: DbRow>(row: &R) -> PortResult<UserAccount> {
    Ok(UserAccount {
        user: rows::user(row)?,
        status: col_word(row, "status", UserStatus::parse)?,
        status_reason: col(row, "status_reason")?,
    })
}

/// Accounts matching `query` in email or name, by id, after `after`.
pub async fn accounts<DB: Engine>(
    reader: &Pool<DB>,
    query: &str,
    after: Option<&UserId>,
    limit: u32,
) -> PortResult<Vec<UserAccount>> {
    let pattern = stampede_app::ports::contains_pattern(query);
    let sql = format!(
        "{USERS}, status, status_reason FROM users \
         WHERE (lower(email) LIKE $1 ESCAPE '\\' OR lower(name) LIKE $1 ESCAPE '\\') \
         AND id > $2 ORDER BY id LIMIT $3"
    );
    let q = statement::<DB>(&sql)
        .string(pattern)
        .text(after.map(|a| a.as_str()).unwrap_or(""))
        .int(i64::from(limit));
    list(q, reader, account).await
}
