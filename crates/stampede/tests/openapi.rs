//! The OpenAPI document is generated from the route table; these tests fail if the committed
//! `openapi.json` drifts from what the binary generates, or if a documented route is not
//! actually served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestServer;
use reqwest::Method;

fn committed() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.json");
    std::fs::read_to_string(path).expect("openapi.json is committed at the repository root")
}

#[test]
fn committed_openapi_matches_the_generated_one() {
    let out = std::process::Command::new(common::binary())
        .arg("openapi")
        .output()
        .expect("run stampede openapi");
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        generated.trim(),
        committed().trim(),
        "openapi.json is stale: run `cargo run -p stampede -- openapi > openapi.json`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_served() {
    let server = TestServer::start().await;
    let api = server.api();
    let doc = api.get("/openapi.json", None).await;
    let doc = doc.expect(200).clone();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(
        paths.len() >= 20,
        "expected the whole contract, got {}",
        paths.len()
    );
    let some_id = "01J00000000000000000000000";
    let mut checked = 0;
    for (path, item) in paths {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { some_id } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            if concrete.ends_with("/events") {
                continue; // an open stream; served-ness is covered by the SSE test
            }
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = api.send(api.request(m.clone(), &concrete, None)).await;
            assert_ne!(
                resp.status, 405,
                "{m} {concrete} is documented but not routed"
            );
            if resp.status == 404 {
                assert_ne!(
                    resp.json["type"], "/problems/no_such_route",
                    "{m} {concrete} is documented but not routed"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20);
}
