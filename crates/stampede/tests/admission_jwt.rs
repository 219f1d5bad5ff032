//! Admission tokens checked by an outside JWT library: a real admission, taken through the
//! waiting room over HTTP, verified by PyJWT against the JWKS the server publishes at
//! `/.well-known/jwks.json` (`scripts/verify-admission-token.py`, the example in README), and
//! refused by it for another user, device or sale and for a changed byte. In cluster mode the
//! token comes from one node and the keys from the other: every node signs with one key.
//!
//! PyJWT (pinned, with its `crypto` extra) is installed into a venv under the target dir.
//! Without python3 or the package index the test says what it skipped and passes, except under
//! CI (`CI` set), where that is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{cluster_nodes, rfc3339, sale_body, unix_now, TestServer};
use serde_json::json;

const PYJWT: &str = "PyJWT[crypto]==2.10.1";
const CRYPTOGRAPHY: &str = "cryptography==44.0.3";

/// The venv's python with PyJWT installed, made once per test binary; `Err` says why not.
fn python() -> Result<PathBuf, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pyjwt-venv");
            let python = venv.join("bin/python");
            let has = |py: &PathBuf| {
                Command::new(py)
                    .args([
                        "-c",
                        "import jwt, sys; sys.exit(jwt.__version__ != '2.10.1')",
                    ])
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if has(&python) {
                return Ok(python);
            }
            let made = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .map_err(|e| format!("python3: {e}"))?;
            if !made.success() {
                return Err("python3 -m venv failed".into());
            }
            let out = Command::new(venv.join("bin/pip"))
                .args([
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    PYJWT,
                    CRYPTOGRAPHY,
                ])
                .output()
                .map_err(|e| format!("pip: {e}"))?;
            if !out.status.success() || !has(&python) {
                return Err(format!(
                    "pip install {PYJWT} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(python)
        })
        .clone()
}

/// Runs the verifier; returns (accepted, output).
fn pyjwt_verify(
    python: &PathBuf,
    jwks_url: &str,
    token: &str,
    user: &str,
    sale: &str,
    device: &str,
) -> (bool, String) {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/verify-admission-token.py");
    let out = Command::new(python)
        .arg(script)
        .args(["--jwks-url", jwks_url, "--token", token])
        .args(["--user", user, "--sale", sale, "--device", device])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

in_both_modes! {
    /// An admitted buyer's token verifies with PyJWT and the published keys, carries the
    /// claims the README names, and is refused for anyone or anything else.
    async fn an_admission_token_verifies_with_an_outside_jwt_library(mode) {
        let python = match python() {
            Ok(p) => p,
            Err(why) if std::env::var_os("CI").is_none() => {
                eprintln!("skipped: no PyJWT ({why})");
                return;
            }
            Err(why) => panic!("PyJWT is needed under CI: {why}"),
        };
        let mut nodes = if mode.is_cluster() {
            cluster_nodes(&mode, 2).await
        } else {
            vec![TestServer::start_in(mode.clone()).await]
        };
        let first = &nodes[0];
        let other = &nodes[nodes.len() - 1];
        let admin = first.admin_token().await;
        let mut body = sale_body(10, 1, 300);
        body["queue_required"] = json!(true);
        body["starts_at"] = json!(rfc3339(unix_now() - 1));
        let sale = first.create_sale_with(&admin, &body).await.expect(201)["sale_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let buyer = first.buyer().await;
        let user = first.user_id_of(&buyer).await;
        first
            .post(&format!("/api/v1/sales/{sale}/queue"), Some(&buyer), &json!({ "device_id": "phone-1" }))
            .await
            .expect(202);
        let deadline = Instant::now() + Duration::from_secs(20);
        let token = loop {
            let r = first.get(&format!("/api/v1/sales/{sale}/queue/me"), Some(&buyer)).await;
            if let Some(t) = r.expect(200)["admission_token"].as_str() {
                break t.to_owned();
            }
            assert!(Instant::now() < deadline, "not admitted: {}", r.text);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };

        let jwks = other.get("/.well-known/jwks.json", None).await;
        let keys = jwks.expect(200)["keys"].as_array().unwrap().clone();
        assert_eq!(keys.len(), 1, "{}", jwks.text);
        assert_eq!((keys[0]["kty"].as_str(), keys[0]["crv"].as_str()), (Some("OKP"), Some("Ed25519")));
        assert!(jwks.header("cache-control").is_some_and(|c| c.contains("max-age")));
        let url = other.url("/.well-known/jwks.json");

        let (ok, out) = pyjwt_verify(&python, &url, &token, &user, &sale, "phone-1");
        assert!(ok, "PyJWT refused a genuine admission: {out}");
        let claims: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(claims["iss"], "stampede");
        assert_eq!(claims["aud"], "stampede-admission");
        assert!(claims["ticket"].is_u64(), "{claims}");
        let (iat, exp) = (claims["iat"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
        assert!(iat <= unix_now() && exp > unix_now() && exp - iat <= 120, "{claims}");

        for (user, sale, device, why) in [
            ("01ANOTHERUSER00000000000000", sale.as_str(), "phone-1", "another user"),
            (user.as_str(), sale.as_str(), "phone-2", "another device"),
            (user.as_str(), "01ANOTHERSALE00000000000000", "phone-1", "another sale"),
        ] {
            let (ok, out) = pyjwt_verify(&python, &url, &token, user, sale, device);
            assert!(!ok, "PyJWT accepted the token for {why}: {out}");
            assert!(out.contains("refused"), "{out}");
        }
        // One changed character of the claims: the signature no longer matches.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let flipped = if parts[1].ends_with('A') { 'B' } else { 'A' };
        parts[1].pop();
        parts[1].push(flipped);
        let (ok, out) = pyjwt_verify(&python, &url, &parts.join("."), &user, &sale, "phone-1");
        assert!(!ok, "PyJWT accepted a changed token: {out}");

        // And the server itself takes the same token, once, from the device it was bound to.
        let reserve = |device: &'static str| {
            first
                .request(reqwest::Method::POST, "/api/v1/cart/items", Some(&buyer))
                .header("X-Admission-Token", token.clone())
                .header("X-Device-Id", device)
                .json(&json!({ "sale_id": sale, "quantity": 1 }))
        };
        let r = first.send(reserve("phone-2")).await;
        r.expect_problem(403, "not_admitted");
        assert!(r.json["detail"].as_str().unwrap().contains("device"), "{}", r.text);
        first.send(reserve("phone-1")).await.expect(201);
        first.send(reserve("phone-1")).await.expect_problem(403, "not_admitted");

        // The key outlives a restart of the embedded server (its seed is in the data dir), so
        // shops that cached the JWKS keep verifying.
        if !mode.is_cluster() {
            nodes[0].restart().await;
            let again = nodes[0].get("/.well-known/jwks.json", None).await;
            assert_eq!(again.expect(200)["keys"], json!(keys), "the key changed on restart");
        }
    }
}
