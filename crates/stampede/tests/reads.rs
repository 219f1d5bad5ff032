//! The viewers' reads under a read stampede: sale list and detail come from a per-node cache that
//! lags the judge by at most the configured interval, and carry `Cache-Control` and an `ETag`
//! so browsers and CDNs can take most of the load (the single-flight figure itself is checked
//! in-process, in usecases.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sale_reads_are_cacheable_revalidate_with_etags_and_lag_by_at_most_a_second() {
    let server = TestServer::start_with(&[("STAMPEDE_READ_CACHE_MS", "1000")], None).await;
    let admin = server.admin_token().await;
    let sale = server.create_sale(&admin, 10, 5, 600).await;
    let path = format!("/api/v1/sales/{sale}");

    let first = server.get(&path, None).await;
    first.expect(200);
    assert_eq!(
        first.header("cache-control").as_deref(),
        Some("public, max-age=1")
    );
    let etag = first.header("etag").expect("an ETag");
    assert!(etag.starts_with("W/\""), "weak ETag: {etag}");

    let again = server
        .send(
            server
                .request(reqwest::Method::GET, &path, None)
                .header("if-none-match", &etag),
        )
        .await;
    assert_eq!(again.status, 304, "unchanged: not modified");
    assert!(again.text.is_empty());
    assert_eq!(again.header("etag").as_deref(), Some(etag.as_str()));

    // A buyer takes stock: viewers see it within the configured lag.
    let buyer = server.buyer().await;
    let changed_at = Instant::now();
    server.hold(&buyer, &sale, 3).await;
    let fresh = loop {
        let r = server.get(&path, None).await;
        if r.expect(200)["available"] == 7 {
            break r;
        }
        assert!(
            changed_at.elapsed() < Duration::from_millis(1500),
            "stock shown to viewers lagged more than the 1 s allowed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let new_etag = fresh.header("etag").unwrap();
    assert_ne!(new_etag, etag, "new content, new ETag");
    let stale = server
        .send(
            server
                .request(reqwest::Method::GET, &path, None)
                .header("if-none-match", &etag),
        )
        .await;
    assert_eq!(stale.status, 200, "an old ETag gets the new body");

    // The list revalidates the same way.
    let list = server.get("/api/v1/sales", None).await;
    list.expect(200);
    let list_etag = list.header("etag").unwrap();
    let list_again = server
        .send(
            server
                .request(reqwest::Method::GET, "/api/v1/sales", None)
                .header("if-none-match", &list_etag),
        )
        .await;
    assert_eq!(list_again.status, 304);

    // An admin change is seen at once, not after the lag.
    server
        .admin_action(&admin, &sale, "pause")
        .await
        .expect(200);
    assert_eq!(
        server.get(&path, None).await.expect(200)["status"],
        "paused"
    );
}
