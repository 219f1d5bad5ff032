//! The SQLite store's own settings, seen from outside: the pools really run as documented, and
//! the schema itself refuses what `TxStock` must never write.

// A test crate: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use sqlx::SqlitePool;

use stampede_app::ports::Store;
use stampede_store_sqlite::{open, Backend};

async fn int_pragma(pool: &SqlitePool, name: &str) -> i64 {
    sqlx::query_scalar(&format!("PRAGMA {name}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The durability and concurrency settings really apply, on both pools.
#[tokio::test]
async fn pools_run_wal_full_sync_with_one_writer_and_read_only_readers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("x.db")).await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap(); // idempotent
    for pool in [store.backend().writer(), store.backend().reader()] {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(int_pragma(pool, "synchronous").await, 2, "FULL");
        assert_eq!(int_pragma(pool, "foreign_keys").await, 1);
        assert_eq!(int_pragma(pool, "busy_timeout").await, 5_000);
    }
    assert_eq!(store.backend().writer().options().get_max_connections(), 1);
    assert_eq!(int_pragma(store.backend().writer(), "query_only").await, 0);
    assert_eq!(int_pragma(store.backend().reader(), "query_only").await, 1);
    let write = sqlx::query("INSERT INTO webhook_events VALUES ('e', 0)")
        .execute(store.backend().reader())
        .await;
    assert!(write.is_err(), "a reader connection accepted a write");
    store.ping().await.unwrap();
    store.close().await;
}

/// The schema itself refuses unbalanced counters, the last line behind `TxStock`.
#[tokio::test]
async fn schema_refuses_unbalanced_counters_and_audit_edits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("x.db")).await.unwrap();
    store.migrate().await.unwrap();
    sqlx::query(
        "INSERT INTO sales VALUES ('s', 'n', 'd', 1, 1, 'EUR', 0, 1, 1, 0, 60, 'running', \
         5, 5, 0, 0, 0, 0, NULL, NULL, '')",
    )
    .execute(store.backend().writer())
    .await
    .unwrap();
    let oversell = sqlx::query("UPDATE sales SET available = available - 1 WHERE id = 's'")
        .execute(store.backend().writer())
        .await;
    assert!(oversell.is_err());
    sqlx::query("INSERT INTO audit VALUES ('a', 0, 'x', 'y', 'z', NULL, NULL)")
        .execute(store.backend().writer())
        .await
        .unwrap();
    assert!(sqlx::query("UPDATE audit SET actor = 'w'")
        .execute(store.backend().writer())
        .await
        .is_err());
    assert!(sqlx::query("DELETE FROM audit")
        .execute(store.backend().writer())
        .await
        .is_err());
}
