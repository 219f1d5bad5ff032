//! The waitlist after a sell-out, over HTTP in both modes: a buyer still in line when the
//! room says sold out sees their place on the waitlist; a unit that comes back is offered to
//! the first of them for the claim window (2 s here), shown with its deadline; unclaimed, it
//! passes to the next, who reserves it within their window.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{parse_rfc3339, sale_body, unix_now, Api, TestServer};
use serde_json::{json, Value};

/// The claim window the server is started with.
const CLAIM_SECS: i64 = 2;

async fn join(api: &Api, token: &str, sale: &str, device: &str) {
    api.post(
        &format!("/api/v1/sales/{sale}/queue"),
        Some(token),
        &json!({ "device_id": device }),
    )
    .await
    .expect(202);
}

async fn me(api: &Api, token: &str, sale: &str) -> Value {
    api.get(&format!("/api/v1/sales/{sale}/queue/me"), Some(token))
        .await
        .expect(200)
        .clone()
}

/// Polls the buyer's place until `done` holds (within 10 s).
async fn until(
    api: &Api,
    token: &str,
    sale: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = me(api, token, sale).await;
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "waited for {what}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn reserve(
    api: &Api,
    token: &str,
    sale: &str,
    admission: &str,
    device: &str,
) -> common::Resp {
    let rb = api
        .request(reqwest::Method::POST, "/api/v1/cart/items", Some(token))
        .header("X-Admission-Token", admission)
        .header("X-Device-Id", device)
        .json(&json!({ "sale_id": sale, "quantity": 1 }));
    api.send(rb).await
}

in_both_modes! {
    /// One unit, three buyers: the first buys it, the other two wait on the waitlist; the
    /// unit comes back and is offered to the second, who lets the claim window pass; the
    /// third is offered it next and reserves it in time.
    async fn a_returned_unit_is_offered_down_the_waitlist(mode) {
        let claim = CLAIM_SECS.to_string();
        let server = TestServer::start_with_in(
            mode,
            &[("STAMPEDE_WAITLIST_CLAIM_SECS", claim.as_str())],
            None,
        )
        .await;
        let api = server.api();
        let admin = api.admin_token().await;
        let mut body = sale_body(1, 1, 300);
        body["queue_required"] = json!(true);
        let sale = api.create_sale_with(&admin, &body).await.expect(201)["sale_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let buyers = api.buyers(3, 3).await;
        let (a, b, c) = (&buyers[0], &buyers[1], &buyers[2]);

        join(&api, a, &sale, "dev-a").await;
        let turn = until(&api, a, &sale, "a's turn", |v| v["admission_token"].is_string()).await;
        assert!(turn.get("claim_deadline").is_none(), "before the sell-out an admission is no offer");
        let r = reserve(&api, a, &sale, turn["admission_token"].as_str().unwrap(), "dev-a").await;
        assert_eq!(r.status, 201, "{}", r.text);
        let hold = r.json["hold_id"].as_str().unwrap().to_owned();

        join(&api, b, &sale, "dev-b").await;
        join(&api, c, &sale, "dev-c").await;
        let vb = until(&api, b, &sale, "b on the waitlist", |v| v["status"] == "sold_out").await;
        assert_eq!(vb["waitlist_position"], 1, "{vb}");
        let vc = until(&api, c, &sale, "c on the waitlist", |v| v["status"] == "sold_out").await;
        assert_eq!(vc["waitlist_position"], 2, "{vc}");

        // The unit comes back: the first on the waitlist is offered it, with a deadline.
        api.delete(&format!("/api/v1/cart/items/{hold}"), Some(a)).await.expect(204);
        let offer = until(&api, b, &sale, "b's offer", |v| v["status"] == "admitted").await;
        let deadline_ms = parse_rfc3339(offer["claim_deadline"].as_str().expect("an offer states its deadline")).unwrap();
        assert!(
            (deadline_ms / 1000 - unix_now() - CLAIM_SECS).abs() <= 2,
            "the claim lasts the stated window: {offer}"
        );
        let b_token = offer["admission_token"].as_str().unwrap().to_owned();
        let vc = me(&api, c, &sale).await;
        assert_eq!(vc["waitlist_position"], 1, "c is next: {vc}");
        assert_ne!(vc["status"], "admitted");

        // Unclaimed: it passes on to c; b's token no longer buys.
        let offer = until(&api, c, &sale, "c's offer", |v| v["status"] == "admitted").await;
        assert!(offer["claim_deadline"].is_string(), "{offer}");
        assert_eq!(me(&api, b, &sale).await["status"], "expired");
        let late = reserve(&api, b, &sale, &b_token, "dev-b").await;
        late.expect_problem(403, "not_admitted");

        // c reserves within the window: the unit is theirs.
        let r = reserve(&api, c, &sale, offer["admission_token"].as_str().unwrap(), "dev-c").await;
        assert_eq!(r.status, 201, "{}", r.text);
        let m = api.metrics(&admin, &sale).await;
        assert_eq!((m["held"].as_i64(), m["available"].as_i64()), (Some(1), Some(0)), "{m}");
    }
}
