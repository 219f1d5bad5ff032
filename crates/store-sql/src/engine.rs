//! Running the shared SQL on either engine without repeating sqlx's bounds in every shared
//! function: [`Engine`] is implemented for SQLite and PostgreSQL, [`Bind`] gives every
//! statement of an `Engine` the argument types the stores' tables use, and [`Run`] executes it
//! on a connection, a transaction or a pool, with errors already classified.

use std::future::Future;
use std::pin::Pin;

use sqlx::pool::PoolConnection;
use sqlx::query::Query;
use sqlx::{Database, Pool, Transaction};

use stampede_app::ports::PortResult;

use crate::error::OrPort;
use crate::rows::DbRow;

/// A boxed future that may cross threads: what the engines' concrete executors return.
pub type Pending<'c, T> = Pin<Box<dyn Future<Output = PortResult<T>> + Send + 'c>>;

/// A statement of either engine, with its arguments.
pub type Statement<'q, DB> = Query<'q, DB, <DB as Database>::Arguments<'q>>;

/// An engine the shared SQL runs on: binds the argument types the tables use and runs
/// statements on its own connection type (sqlx's executor bounds stay in the two concrete
/// implementations below instead of every shared function).
pub trait Engine: Database<Row: DbRow> {
    /// How a transaction that writes starts: SQLite takes the write lock up front, so a
    /// transaction that reads before it writes never fails to upgrade its lock half-way.
    const BEGIN_WRITE: &'static str;
    /// Runs a statement; the rows it changed.
    fn execute<'c, 'q: 'c>(
        conn: &'c mut Self::Connection,
        q: Statement<'q, Self>,
    ) -> Pending<'c, u64>;
    /// Runs a query; every row.
    fn fetch_all<'c, 'q: 'c>(
        conn: &'c mut Self::Connection,
        q: Statement<'q, Self>,
    ) -> Pending<'c, Vec<Self::Row>>;
    /// Runs a query; its first row, if any.
    fn fetch_optional<'c, 'q: 'c>(
        conn: &'c mut Self::Connection,
        q: Statement<'q, Self>,
    ) -> Pending<'c, Option<Self::Row>>;
    /// Binds an argument.
    fn bind<'q>(q: Statement<'q, Self>, v: Arg<'q>) -> Statement<'q, Self>;
    // Accounts, feeds, outbox, webhooks and the stock audit.
    /// Appended to the `SELECT` a claim leases from: several PostgreSQL nodes claim at once,
    /// each skipping the rows another has locked; SQLite's single writer needs nothing.
    const SKIP_LOCKED: &'static str;
    /// Appended to a `SELECT` whose rows the transaction goes on to change.
    const FOR_UPDATE: &'static str;
    /// Appended to a `SELECT` whose rows must not change before the transaction ends.
    const FOR_SHARE: &'static str;
    /// How a read that must see one snapshot across several statements starts.
    const BEGIN_SNAPSHOT: &'static str;
    /// The SQL type a JSON parameter is cast to (`CAST($n AS ...)`) to fill a JSON column.
    const JSON: &'static str;
    /// The texts of a JSON array parameter `$1`, as a subquery (`id IN (...)`).
    const JSON_TEXTS: &'static str;
    /// The database clock, in milliseconds since the epoch.
    const NOW_MS: &'static str;
    /// The column that orders a buyer's notifications as they were added.
    const NOTIFICATION_SEQ: &'static str;
    // Catalog, room log, hold cap: where the engines' SQL really differs.
    /// The condition that the row `alias` of `table` (`sales`, `drops`, `products`) has a name
    /// matching the search query in the argument `param` (see [`Engine::search_query`]).
    fn search_condition(table: &str, alias: &str, param: &str) -> String;
    /// The search query for search words: each a prefix, all required. The words are letters
    /// and digits only (`search_words`), so no operator or quote can be slipped in.
    fn search_query(words: &[String]) -> String;
    /// The larger of two values (`MAX` of two arguments on SQLite, `GREATEST` on PostgreSQL).
    const GREATEST: &'static str;
    /// The JSON array of its arguments.
    const JSON_ARRAY: &'static str;
    /// The aggregate of JSON values into one JSON array.
    const JSON_ARRAY_AGG: &'static str;
    /// The aggregate of the distinct `user_id`s of a group, as one comma-separated text.
    const DISTINCT_USER_IDS: &'static str;
    /// Whether every write goes through one connection (SQLite): then writes of different
    /// kinds are best committed together, since they would queue for that writer anyway.
    const ONE_WRITER: bool;
}

macro_rules! engine {
    ($db:ty, $conn:ty, $begin:literal, { $($own:tt)* }) => {
        impl Engine for $db {
            const BEGIN_WRITE: &'static str = $begin;
            fn execute<'c, 'q: 'c>(
                conn: &'c mut Self::Connection,
                q: Statement<'q, Self>,
            ) -> Pending<'c, u64> {
                Box::pin(async move { Ok(q.execute(conn).await.port()?.rows_affected()) })
            }
            fn fetch_all<'c, 'q: 'c>(
                conn: &'c mut Self::Connection,
                q: Statement<'q, Self>,
            ) -> Pending<'c, Vec<Self::Row>> {
                Box::pin(async move { q.fetch_all(conn).await.port() })
            }
            fn fetch_optional<'c, 'q: 'c>(
                conn: &'c mut Self::Connection,
                q: Statement<'q, Self>,
            ) -> Pending<'c, Option<Self::Row>> {
                Box::pin(async move { q.fetch_optional(conn).await.port() })
            }
            fn bind<'q>(q: Statement<'q, Self>, v: Arg<'q>) -> Statement<'q, Self> {
                match v {
                    Arg::Text(v) => q.bind(v),
                    Arg::OptText(v) => q.bind(v),
                    Arg::String(v) => q.bind(v),
                    Arg::Int(v) => q.bind(v),
                    Arg::OptInt(v) => q.bind(v),
                    Arg::Flag(v) => q.bind(v),
                }
            }
            $($own)*
        }
        impl Conn<$db> for $conn {
            fn conn(&mut self) -> &mut Self {
                self
            }
        }
    };
}

engine!(sqlx::Sqlite, sqlx::SqliteConnection, "BEGIN IMMEDIATE", {
    const SKIP_LOCKED: &'static str = "";
    const FOR_UPDATE: &'static str = "";
    const FOR_SHARE: &'static str = "";
    // A read transaction sees one snapshot of a WAL database.
    const BEGIN_SNAPSHOT: &'static str = "BEGIN";
    const JSON: &'static str = "TEXT";
    const JSON_TEXTS: &'static str = "SELECT value FROM json_each($1)";
    const NOW_MS: &'static str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
    // Notifications are never deleted, so rowid grows as they are added.
    const NOTIFICATION_SEQ: &'static str = "rowid";
    /// FTS5, the search tables kept in step by the triggers of migration 0008.
    fn search_condition(table: &str, alias: &str, param: &str) -> String {
        format!("{alias}.id IN (SELECT id FROM {table}_search WHERE {table}_search MATCH {param})")
    }
    /// FTS5: each word a quoted prefix; the words cannot break out of the quotes.
    fn search_query(words: &[String]) -> String {
        let words: Vec<String> = words.iter().map(|w| format!("\"{w}\"*")).collect();
        words.join(" ")
    }
    const GREATEST: &'static str = "MAX";
    const JSON_ARRAY: &'static str = "json_array";
    const JSON_ARRAY_AGG: &'static str = "json_group_array";
    const DISTINCT_USER_IDS: &'static str = "group_concat(DISTINCT user_id)";
    const ONE_WRITER: bool = true;
});
engine!(sqlx::Postgres, sqlx::PgConnection, "BEGIN", {
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const FOR_SHARE: &'static str = " FOR SHARE";
    const BEGIN_SNAPSHOT: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";
    const JSON: &'static str = "JSONB";
    const JSON_TEXTS: &'static str = "SELECT json_array_elements_text($1::json)";
    const NOW_MS: &'static str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";
    const NOTIFICATION_SEQ: &'static str = "seq";
    /// Full-text search over the letters-and-digits of names, 'simple' configuration: the
    /// expression of the GIN indexes of migration 0007, so they serve it.
    fn search_condition(_table: &str, alias: &str, param: &str) -> String {
        format!(
            "to_tsvector('simple', regexp_replace({alias}.name, '[^[:alnum:]]+', ' ', 'g')) \
             @@ to_tsquery('simple', {param})"
        )
    }
    /// `to_tsquery`: each word a prefix (`:*`), all required (`&`).
    fn search_query(words: &[String]) -> String {
        let words: Vec<String> = words.iter().map(|w| format!("{w}:*")).collect();
        words.join(" & ")
    }
    const GREATEST: &'static str = "GREATEST";
    const JSON_ARRAY: &'static str = "json_build_array";
    const JSON_ARRAY_AGG: &'static str = "json_agg";
    const DISTINCT_USER_IDS: &'static str = "string_agg(DISTINCT user_id, ',')";
    const ONE_WRITER: bool = false;
});

/// An argument of a statement: the types the stores' tables use.
pub enum Arg<'q> {
    Text(&'q str),
    OptText(Option<&'q str>),
    String(String),
    Int(i64),
    OptInt(Option<i64>),
    Flag(bool),
}

/// [`Engine::bind`] as methods of the statement, so shared code reads like sqlx's own.
pub trait Bind<'q>: Sized {
    /// Binds an argument.
    fn arg(self, v: Arg<'q>) -> Self;
    /// Binds a text argument.
    fn text(self, v: &'q str) -> Self {
        self.arg(Arg::Text(v))
    }
    /// Binds a text argument or NULL.
    fn opt_text(self, v: Option<&'q str>) -> Self {
        self.arg(Arg::OptText(v))
    }
    /// Binds an owned text argument.
    fn string(self, v: String) -> Self {
        self.arg(Arg::String(v))
    }
    /// Binds a 64-bit integer.
    fn int(self, v: i64) -> Self {
        self.arg(Arg::Int(v))
    }
    /// Binds a 64-bit integer or NULL.
    fn opt_int(self, v: Option<i64>) -> Self {
        self.arg(Arg::OptInt(v))
    }
    /// Binds a boolean.
    fn flag(self, v: bool) -> Self {
        self.arg(Arg::Flag(v))
    }
}

impl<'q, DB: Engine> Bind<'q> for Statement<'q, DB> {
    fn arg(self, v: Arg<'q>) -> Self {
        DB::bind(self, v)
    }
}

/// A new statement of engine `DB`.
pub fn statement<DB: Engine>(sql: &str) -> Statement<'_, DB> {
    sqlx::query::<DB>(sql)
}

/// Where a statement can run: a connection of the engine, borrowed for the statement.
pub trait Conn<DB: Engine>: Send {
    /// The connection to run on.
    fn conn(&mut self) -> &mut DB::Connection;
}

impl<DB: Engine> Conn<DB> for PoolConnection<DB> {
    fn conn(&mut self) -> &mut DB::Connection {
        self
    }
}

impl<DB: Engine> Conn<DB> for Transaction<'_, DB> {
    fn conn(&mut self) -> &mut DB::Connection {
        self
    }
}

/// Runs a statement on a [`Conn`] or a pool, like sqlx's own `execute`/`fetch_*`, with the
/// error classified ([`crate::error`]).
pub trait Run<'q, DB: Engine>: Sized {
    /// Runs on a connection or transaction; the rows changed.
    fn run(self, on: &mut impl Conn<DB>) -> impl Future<Output = PortResult<u64>> + Send;
    /// Runs a query on a connection or transaction; every row.
    fn all(self, on: &mut impl Conn<DB>) -> impl Future<Output = PortResult<Vec<DB::Row>>> + Send;
    /// Runs a query on a connection or transaction; the first row, if any.
    fn first(
        self,
        on: &mut impl Conn<DB>,
    ) -> impl Future<Output = PortResult<Option<DB::Row>>> + Send;
    /// Runs a write on a connection of `pool`, a commit of its own (counted as `op`); the rows
    /// changed.
    fn run_in(
        self,
        pool: &Pool<DB>,
        op: &'static str,
    ) -> impl Future<Output = PortResult<u64>> + Send;
    /// Runs a query on a connection of `pool`; every row.
    fn all_in(self, pool: &Pool<DB>) -> impl Future<Output = PortResult<Vec<DB::Row>>> + Send;
    /// Runs a query on a connection of `pool`; the first row, if any.
    fn first_in(self, pool: &Pool<DB>) -> impl Future<Output = PortResult<Option<DB::Row>>> + Send;
}

impl<'q, DB: Engine> Run<'q, DB> for Statement<'q, DB> {
    async fn run(self, on: &mut impl Conn<DB>) -> PortResult<u64> {
        DB::execute(on.conn(), self).await
    }
    async fn all(self, on: &mut impl Conn<DB>) -> PortResult<Vec<DB::Row>> {
        DB::fetch_all(on.conn(), self).await
    }
    async fn first(self, on: &mut impl Conn<DB>) -> PortResult<Option<DB::Row>> {
        DB::fetch_optional(on.conn(), self).await
    }
    async fn run_in(self, pool: &Pool<DB>, op: &'static str) -> PortResult<u64> {
        let changed = self.run(&mut pool.acquire().await.port()?).await?;
        metrics::counter!("stampede_store_commits_total", "op" => op).increment(1);
        Ok(changed)
    }
    async fn all_in(self, pool: &Pool<DB>) -> PortResult<Vec<DB::Row>> {
        self.all(&mut pool.acquire().await.port()?).await
    }
    async fn first_in(self, pool: &Pool<DB>) -> PortResult<Option<DB::Row>> {
        self.first(&mut pool.acquire().await.port()?).await
    }
}

/// Starts a transaction that writes ([`Engine::BEGIN_WRITE`]).
pub async fn begin_write<DB: Engine>(pool: &Pool<DB>) -> PortResult<Transaction<'static, DB>> {
    pool.begin_with(DB::BEGIN_WRITE).await.port()
}

/// Commits a transaction that wrote, counted as `stampede_store_commits_total{op}` (`op`: the
/// store operation): the figure group commit is judged by (one commit serves a batch).
pub async fn commit<DB: Engine>(tx: Transaction<'_, DB>, op: &'static str) -> PortResult<()> {
    tx.commit().await.port()?;
    metrics::counter!("stampede_store_commits_total", "op" => op).increment(1);
    Ok(())
}

/// A write that can share a transaction with others of its kind ([`each_in_one`]).
pub trait InBatch<DB: Engine>: Sync {
    /// The store operation, as the commit metric names it.
    const OP: &'static str;
    /// What the write tells its caller.
    type Answer: Send;
    /// Runs inside the batch's transaction; a refusal must come before the first write.
    fn run<'c>(&'c self, tx: &'c mut Transaction<'static, DB>) -> Pending<'c, Self::Answer>;

    /// Runs a batch's items in order inside its transaction, each seeing the writes of those
    /// before it: one after another, unless the kind does them together in a constant number
    /// of statements.
    fn run_all<'c>(
        items: &'c [Self],
        tx: &'c mut Transaction<'static, DB>,
    ) -> Pending<'c, Vec<Self::Answer>>
    where
        Self: Sized,
    {
        Box::pin(async move {
            let mut done = Vec::with_capacity(items.len());
            for item in items {
                done.push(item.run(tx).await?);
            }
            Ok(done)
        })
    }
}

/// Group commit for calls that each are a transaction of their own: the batch's items run one
/// after another in one write transaction, so many buyers share a commit. An item's refusal
/// writes nothing (every caller refuses before its first write), so items stay independent.
/// If the batch fails as a whole (a deadlock with another transaction, a lost connection), it
/// is tried once more, then every item runs in a transaction of its own: one item's trouble
/// never fails its neighbours, and nothing of a failed batch was committed.
pub async fn each_in_one<DB: Engine, T: InBatch<DB>>(
    writer: &Pool<DB>,
    items: &[T],
) -> Vec<PortResult<T::Answer>> {
    // A deadlock's victim usually gets through a second time; an item that fails the batch
    // by itself fails it again, and then the items run one by one.
    for attempt in 1..=2 {
        if items.len() < 2 {
            break;
        }
        let batch = async {
            let mut tx = begin_write(writer).await?;
            let done = T::run_all(items, &mut tx).await?;
            debug_assert_eq!(done.len(), items.len(), "an answer for every item");
            commit(tx, T::OP).await.map(|()| done)
        };
        match batch.await {
            Ok(done) => return done.into_iter().map(Ok).collect(),
            Err(e) => {
                metrics::counter!("stampede_store_batch_failures_total", "op" => T::OP)
                    .increment(1);
                tracing::warn!(error = %e, op = T::OP, size = items.len(), attempt, "batch failed");
            }
        }
    }
    let mut done = Vec::with_capacity(items.len());
    for item in items {
        done.push(
            async {
                let mut tx = begin_write(writer).await?;
                let r = item.run(&mut tx).await?;
                commit(tx, T::OP).await.map(|()| r)
            }
            .await,
        );
    }
    done
}

/// The row a query finds by the text argument `key`, if any, read by `read`.
pub async fn find<DB: Engine, T>(
    pool: &Pool<DB>,
    sql: &str,
    key: &str,
    read: impl Fn(&DB::Row) -> PortResult<T>,
) -> PortResult<Option<T>> {
    find_on(&mut pool.acquire().await.port()?, sql, key, read).await
}

/// The first row of a query that always yields one; an `Internal` error saying `missing` if
/// it does not.
pub async fn one<DB: Engine>(
    q: Statement<'_, DB>,
    on: &mut impl Conn<DB>,
    missing: impl FnOnce() -> String,
) -> PortResult<DB::Row> {
    q.first(on).await?.ok_or_else(|| crate::internal(missing()))
}

/// [`find`] inside a connection or transaction the caller holds.
pub async fn find_on<DB: Engine, T>(
    on: &mut impl Conn<DB>,
    sql: &str,
    key: &str,
    read: impl Fn(&DB::Row) -> PortResult<T>,
) -> PortResult<Option<T>> {
    let row = statement::<DB>(sql).text(key).first(on).await?;
    row.map(|r| read(&r)).transpose()
}

/// Every row of a query run on a connection of `pool`, each read by `read`.
pub async fn list<DB: Engine, T>(
    q: Statement<'_, DB>,
    pool: &Pool<DB>,
    read: impl Fn(&DB::Row) -> PortResult<T>,
) -> PortResult<Vec<T>> {
    q.all_in(pool).await?.iter().map(read).collect()
}

/// Whether no key comes twice: a batch whose items each touch a row of their own can be
/// written with one multi-row statement; one where two items touch the same row runs them one
/// after another, so the later sees the earlier.
pub fn all_distinct<K: Ord>(keys: impl Iterator<Item = K>) -> bool {
    let mut keys: Vec<K> = keys.collect();
    let n = keys.len();
    keys.sort_unstable();
    keys.dedup();
    keys.len() == n
}

/// `rows` rows of `width` parameters each, numbered from `$1`: the `VALUES` list of a
/// multi-row statement.
pub fn values_list(rows: usize, width: usize) -> String {
    let row = |r: usize| {
        let params: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
        format!("({})", params.join(", "))
    };
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}
