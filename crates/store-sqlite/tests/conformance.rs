//! Conformance of `SqliteStore` to the `Store` port: the shared suite from `stampede-testkit`
//! (one test per check, each on a fresh database in its own temporary directory), plus the
//! SQLite-only durability check across a reopen.

// A test crate: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use stampede_app::ports::{AdminReads, Holds};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use stampede_app::ports::Store;
use stampede_store_sqlite::SqliteStore;
use stampede_testkit::store_conformance::{checked, levels, new_sale, reserve_one, user, T0};
use stampede_testkit::StoreFixture;
use tempfile::TempDir;

/// A migrated store on a fresh file in its own temporary directory (removed on drop).
struct Fx {
    dir: TempDir,
    store: SqliteStore,
}

impl Fx {
    fn path(&self) -> PathBuf {
        self.dir.path().join("data").join("stampede.db")
    }
}

#[async_trait]
impl StoreFixture for Fx {
    fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.store.clone())
    }
}

async fn fx() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    // A missing parent directory is created by `open`.
    let store = stampede_store_sqlite::open(&dir.path().join("data").join("stampede.db"))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    Fx { dir, store }
}

stampede_testkit::store_conformance_tests!(async { Some(fx().await) });

#[tokio::test]
async fn committed_holds_survive_a_reopen() {
    let f = fx().await;
    let sale = new_sale(&f.store, 10, 5).await;
    let a = user(1);
    let h = reserve_one(&f.store, &sale, &a, 3, T0).await;
    let path = f.path();
    // Dropped without closing: as close to a crash as a test gets.
    let Fx { dir, store } = f;
    drop(store);
    let store = stampede_store_sqlite::open(&path).await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.live_holds(&a, T0).await.unwrap(), vec![h]);
    assert_eq!(checked(&store, &sale.id).await, levels(10, 7, 3, 0));
    let seeds = store.gate_seeds().await.unwrap();
    assert_eq!(seeds[0].user_units, vec![(a, 3)]);
    store.close().await;
    drop(dir);
}

/// The room's log on SQLite against the shared log suite.
async fn with_room_log<C, Fut>(check: C)
where
    C: FnOnce(Arc<dyn stampede_app::ports::RoomLog>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let f = fx().await;
    check(Arc::new(f.store.clone())).await;
}

stampede_testkit::room_log_conformance_tests!(with_room_log);
