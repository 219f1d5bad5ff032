//! Binding arguments on either engine without repeating sqlx's bounds in every shared
//! function: [`Engine`] is implemented for SQLite and PostgreSQL, and [`Bind`] gives every
//! statement of an `Engine` the argument types the stores' tables use.

use sqlx::query::Query;
use sqlx::Database;

/// A statement of either engine, with its arguments.
pub type Statement<'q, DB> = Query<'q, DB, <DB as Database>::Arguments<'q>>;

/// An engine the shared SQL runs on: binds the argument types the tables use.
pub trait Engine: Database {
    /// Binds a text argument.
    fn text<'q>(q: Statement<'q, Self>, v: &'q str) -> Statement<'q, Self>;
    /// Binds a text argument or NULL.
    fn opt_text<'q>(q: Statement<'q, Self>, v: Option<&'q str>) -> Statement<'q, Self>;
    /// Binds an owned text argument.
    fn string<'q>(q: Statement<'q, Self>, v: String) -> Statement<'q, Self>;
    /// Binds a 64-bit integer.
    fn int<'q>(q: Statement<'q, Self>, v: i64) -> Statement<'q, Self>;
    /// Binds a 64-bit integer or NULL.
    fn opt_int<'q>(q: Statement<'q, Self>, v: Option<i64>) -> Statement<'q, Self>;
}

macro_rules! engine {
    ($db:ty) => {
        impl Engine for $db {
            fn text<'q>(q: Statement<'q, Self>, v: &'q str) -> Statement<'q, Self> {
                q.bind(v)
            }
            fn opt_text<'q>(q: Statement<'q, Self>, v: Option<&'q str>) -> Statement<'q, Self> {
                q.bind(v)
            }
            fn string<'q>(q: Statement<'q, Self>, v: String) -> Statement<'q, Self> {
                q.bind(v)
            }
            fn int<'q>(q: Statement<'q, Self>, v: i64) -> Statement<'q, Self> {
                q.bind(v)
            }
            fn opt_int<'q>(q: Statement<'q, Self>, v: Option<i64>) -> Statement<'q, Self> {
                q.bind(v)
            }
        }
    };
}

engine!(sqlx::Sqlite);
engine!(sqlx::Postgres);

/// [`Engine`]'s binds as methods of the statement, so shared code reads like sqlx's own.
pub trait Bind<'q>: Sized {
    /// Binds a text argument.
    fn text(self, v: &'q str) -> Self;
    /// Binds a text argument or NULL.
    fn opt_text(self, v: Option<&'q str>) -> Self;
    /// Binds an owned text argument.
    fn string(self, v: String) -> Self;
    /// Binds a 64-bit integer.
    fn int(self, v: i64) -> Self;
    /// Binds a 64-bit integer or NULL.
    fn opt_int(self, v: Option<i64>) -> Self;
}

impl<'q, DB: Engine> Bind<'q> for Statement<'q, DB> {
    fn text(self, v: &'q str) -> Self {
        DB::text(self, v)
    }
    fn opt_text(self, v: Option<&'q str>) -> Self {
        DB::opt_text(self, v)
    }
    fn string(self, v: String) -> Self {
        DB::string(self, v)
    }
    fn int(self, v: i64) -> Self {
        DB::int(self, v)
    }
    fn opt_int(self, v: Option<i64>) -> Self {
        DB::opt_int(self, v)
    }
}

/// A new statement of engine `DB`.
pub fn statement<DB: Engine>(sql: &str) -> Statement<'_, DB> {
    sqlx::query::<DB>(sql)
}

/// A statement of a plan, with what it must change.
pub struct Write<'q, DB: Database> {
    pub statement: Statement<'q, DB>,
    /// `Some(what)`: it must change exactly one row, or `what` changed meanwhile (a race lost,
    /// or a bug): the transaction must not commit.
    pub exactly_one: Option<String>,
}
