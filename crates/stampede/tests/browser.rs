//! The pages in a real headless Chromium: a buyer signs up, waits for a sale on its countdown,
//! buys, is declined, pays, and sees the order; a second browser sees the stock drop live; an
//! admin pauses the sale and the buyer's page shows it; each refusal of Buy is explained; a
//! waiting-room sale shows the place in line and hands over to buying. The scenarios live in `tests/browser/e2e.mjs`
//! (playwright-core driving Debian's `chromium`); this test starts the real server for them and
//! saves their screenshots under `docs/screenshots/`.
//!
//! Without node/npm or chromium the test says what it skipped and passes, except under CI
//! (`CI` set), where that is a failure: `.ci/run` installs chromium.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, ADMIN_EMAIL, ADMIN_PASSWORD};

/// The whole run may take this long (it takes ~20 s once the browser is installed).
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn script_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("STAMPEDE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why the browser suite cannot run here, if it cannot.
fn missing() -> Option<String> {
    let mut missing = Vec::new();
    if !runs("node") {
        missing.push("node".to_owned());
    }
    if !runs("npm") {
        missing.push("npm".to_owned());
    }
    if !chromium().exists() {
        missing.push(format!(
            "{} (apt-get install chromium chromium-driver)",
            chromium().display()
        ));
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// The playwright-core version `package.json` pins, and the one installed (if any).
fn driver_versions(dir: &Path) -> (String, Option<String>) {
    let read = |p: PathBuf| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
    };
    let pinned = read(dir.join("package.json"))
        .and_then(|v| {
            v["dependencies"]["playwright-core"]
                .as_str()
                .map(str::to_owned)
        })
        .expect("package.json pins playwright-core");
    let installed = read(dir.join("node_modules/playwright-core/package.json"))
        .and_then(|v| v["version"].as_str().map(str::to_owned));
    (pinned, installed)
}

/// `npm ci` when the pinned playwright-core is not the one installed (or none is).
fn install_driver(dir: &Path) {
    let (pinned, installed) = driver_versions(dir);
    if installed.as_deref() == Some(pinned.as_str()) {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .expect("run npm ci");
    assert!(
        out.status.success(),
        "npm ci failed in {}:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_in_a_real_browser() {
    if let Some(why) = missing() {
        let msg = format!("browser test skipped: {why} not installed");
        assert!(
            std::env::var_os("CI").is_none(),
            "{msg}; CI must run the browser suite"
        );
        eprintln!("{msg}");
        return;
    }
    let dir = script_dir();
    tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || install_driver(&dir)
    })
    .await
    .unwrap();

    let server = TestServer::start().await;
    let shots = repo().join("docs/screenshots");
    let mut child = Command::new("node")
        .arg("e2e.mjs")
        .current_dir(&dir)
        .env("STAMPEDE_URL", server.url(""))
        .env("ADMIN_EMAIL", ADMIN_EMAIL)
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("CHROMIUM", chromium())
        .env("SCREENSHOT_DIR", &shots)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the browser scenarios did not finish within {RUN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "a browser scenario failed ({status}); see its output above"
    );
    for name in [
        "storefront.png",
        "sale.png",
        "waiting-room.png",
        "dashboard.png",
    ] {
        assert!(
            shots.join(name).exists(),
            "screenshot {name} missing under {}",
            shots.display()
        );
    }
}

/// The pages themselves, without a browser: each answers HTML with the strict content policy,
/// user text is escaped, an unknown sale is a 404 page (not a 500), and the assets carry a
/// year-long cache under content-hashed names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_answer_escaped_html_and_cacheable_assets() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let mut body = common::sale_body(5, 1, 60);
    body["name"] = "<script>alert(1)</script> & co".into();
    body["description"] = "\"quoted\" <b>bold</b>".into();
    let sale = server.create_sale_with(&admin, &body).await;
    let id = sale.expect(201)["sale_id"].as_str().unwrap().to_owned();

    for path in [
        "/".to_owned(),
        format!("/sales/{id}"),
        format!("/sales/{id}/queue"),
        "/cart".into(),
        "/orders".into(),
        "/login".into(),
        "/signup".into(),
        "/admin".into(),
    ] {
        let r = server.get(&path, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert!(r.content_type().starts_with("text/html"), "{path}");
        assert!(
            r.header("content-security-policy")
                .is_some_and(|v| v.contains("script-src 'self'")),
            "{path} has no strict CSP"
        );
        assert!(!r.text.contains("<script>alert"), "{path} did not escape");
    }
    let page = server.get(&format!("/sales/{id}"), None).await;
    assert!(page
        .text
        .contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"));
    assert!(page
        .text
        .contains("&quot;quoted&quot; &lt;b&gt;bold&lt;/b&gt;"));

    for bad in [
        "/sales/not-a-sale",
        "/sales/01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "/sales/%3Cscript%3E/queue",
    ] {
        let r = server.get(bad, None).await;
        assert_eq!(r.status, 404, "{bad}");
        assert!(r.content_type().starts_with("text/html"), "{bad}");
    }

    // The asset names come from the page; each is cached for a year, any other name is 404.
    let home = server.get("/", None).await;
    let names: Vec<String> = home
        .text
        .match_indices("/assets/app.")
        .map(|(i, _)| home.text[i..].split('"').next().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 2, "one stylesheet and one script: {names:?}");
    for name in names {
        let r = server.get(&name, None).await;
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(
            r.header("cache-control").as_deref(),
            Some("public, max-age=31536000, immutable"),
            "{name}"
        );
    }
    let stale = server.get("/assets/app.0000000000.js", None).await;
    stale.expect_problem(404, "not_found");
}

/// The dashboard's stream: admins only (401 without a token, 403 for a buyer, 404 for no such
/// sale), then a `figures` event at once and one per second, following the judge's stock and
/// the node's reserve window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_live_figures_stream_to_admins_only() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let buyer = server.buyer().await;
    let sale = server
        .create_sale_with(&admin, &common::sale_body(5, 1, 60))
        .await;
    let id = sale.expect(201)["sale_id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/admin/sales/{id}/live");

    server
        .get(&path, None)
        .await
        .expect_problem(401, "unauthenticated");
    server
        .get(&path, Some(&buyer))
        .await
        .expect_problem(403, "forbidden");
    server
        .get(
            "/api/v1/admin/sales/01ARZ3NDEKTSV4RRFFQ69G5FAV/live",
            Some(&admin),
        )
        .await
        .expect_problem(404, "not_found");

    server.hold(&buyer, &id, 1).await;
    server.reserve(&buyer, &id, 1).await; // over the limit of 1: refused
    let mut res = common::http_client()
        .get(server.url(&path))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut events = Vec::new();
    let mut buf = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.len() < 2 && Instant::now() < deadline {
        let chunk = tokio::time::timeout(Duration::from_secs(5), res.chunk())
            .await
            .expect("a figures event within 5 s")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if block.contains("event: figures") {
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap();
                events.push(serde_json::from_str::<serde_json::Value>(data).unwrap());
            }
        }
    }
    assert_eq!(events.len(), 2, "two figures events: {events:?}");
    let f = &events[1];
    assert_eq!(f["status"], "live");
    assert_eq!(f["metrics"]["held"], 1);
    assert_eq!(f["metrics"]["available"], 4);
    assert_eq!(f["metrics"]["invariant_ok"], true);
    assert_eq!(f["reserve"]["accepted"], 1);
    assert_eq!(f["reserve"]["refusals"]["limit_exceeded"], 1);
    assert_eq!(f["reserve"]["samples"], 2);
    assert!(f["reserve"]["p99_ms"].as_f64().unwrap() >= f["reserve"]["p50_ms"].as_f64().unwrap());
    assert!(f["orders_per_sec"].is_number() && f["admission_rate_per_sec"].is_number());
}
