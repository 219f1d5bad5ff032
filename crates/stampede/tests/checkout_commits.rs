//! Checkout is group-committed like reservations: a crowd paying at the same moment shares
//! the store's commits (orders, then the gateway's answers with their audit entries, then the
//! captures with theirs, each many buyers' to a transaction), counted by the server's own
//! `stampede_store_commits_total{op}`.

// A test crate: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;

use common::{assert_invariant, TestServer};

/// Store commits per operation, from `/metrics`.
async fn commits(server: &TestServer) -> BTreeMap<String, u64> {
    let text = server.get("/metrics", None).await.text;
    text.lines()
        .filter_map(|l| l.strip_prefix("stampede_store_commits_total{op=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(op, n)| (op.to_string(), n.trim().parse::<f64>().unwrap() as u64))
        .collect()
}

/// Commits made after `before`, per operation.
fn since(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(op, n)| (op.clone(), n - before.get(op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// What the server commits on its own schedule or after a checkout has answered: the sweeper,
/// and the relay that turns the orders' events into notifications.
const BACKGROUND: &[&str] = &[
    "expire_due_holds",
    "warn_expiring_holds",
    "outbox_claim",
    "outbox_delivered",
    "outbox_release",
    "append_notifications",
];

const BUYERS: usize = 1_000;

/// `BUYERS` fresh buyers each hold a unit of a new sale, then all pay at the same moment (with
/// an `Idempotency-Key` each if `keyed`). Returns the commits the checkouts made themselves
/// (background work left out), after checking every order is confirmed, the sale sold exactly
/// `BUYERS` and its invariant holds.
async fn pay_at_once(server: &TestServer, admin: &str, keyed: bool) -> u64 {
    let sale = server.create_sale(admin, BUYERS as u64, 1, 600).await;
    let buyers = server.buyers(BUYERS, 16).await;
    let api = server.api();
    let holds: Vec<String> = futures::stream::iter(buyers.clone())
        .map(|b| {
            let (api, sale) = (api.clone(), sale.clone());
            async move { api.hold(&b, &sale, 1).await }
        })
        .buffered(32)
        .collect()
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = commits(server).await;
    assert!(
        before.contains_key("reserve"),
        "/metrics must count commits: {before:?}"
    );
    let started = Instant::now();
    let answers =
        futures::future::join_all(buyers.iter().zip(&holds).enumerate().map(|(i, (b, h))| {
            let api = api.clone();
            let key = keyed.then(|| format!("pay-{i}"));
            async move { api.order(b, &[h.as_str()], "tok_ok", key.as_deref()).await }
        }))
        .await;
    let took = started.elapsed();
    let used = since(&before, &commits(server).await);
    for a in &answers {
        assert_eq!(a.expect(201)["status"], "confirmed", "{}", a.text);
    }
    let m = server.metrics(admin, &sale).await;
    assert_invariant(&m);
    assert_eq!(m["sold"], BUYERS as u64, "{m}");
    assert!(
        // One writer (embedded) commits every kind of step together; a pool, each kind apart.
        used.contains_key("checkout_writes")
            || (used.contains_key("create_orders") && used.contains_key("apply_payments")),
        "the checkouts' commits must be counted: {used:?}"
    );
    let own: u64 = used
        .iter()
        .filter(|(op, _)| !BACKGROUND.contains(&op.as_str()))
        .map(|(_, n)| n)
        .sum();
    eprintln!(
        "{BUYERS} checkouts (keyed: {keyed}) in {took:?}: {own} commits of their own; all: \
         {used:?}; failed batches: {:?}",
        server.log_lines("batch failed")
    );
    own
}

in_both_modes! {
    /// 1,000 buyers, each holding a unit, pay at the same moment: every order is confirmed and
    /// captured, the sale sold exactly 1,000, and the checkouts committed at most 50 times in
    /// all (one transaction per step of each checkout would be 3,000 and more). With an
    /// idempotency key each, a checkout has two more steps (the key's claim and its stored
    /// answer), group-committed too: at most 100 (one per step would be 5,000).
    async fn a_thousand_concurrent_checkouts_share_at_most_fifty_commits(mode) {
        let server = TestServer::start_in(mode).await;
        let admin = server.admin_token().await;
        let plain = pay_at_once(&server, &admin, false).await;
        assert!(plain <= 50, "{BUYERS} concurrent checkouts took {plain} commits");
        let keyed = pay_at_once(&server, &admin, true).await;
        assert!(keyed <= 100, "{BUYERS} concurrent keyed checkouts took {keyed} commits");
    }
}
