//! The alert rules in `deploy/prometheus/alerts.yml`: valid for promtool, firing on the series
//! their unit tests feed them, each with a runbook entry, and every metric they use exported by
//! a running server (so a renamed metric cannot silently disarm an alert).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Mode, TestServer};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rules_text() -> String {
    std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap()
}

fn alert_names() -> Vec<String> {
    rules_text()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

/// Metric names used in the rules' expressions.
fn metrics_used() -> BTreeSet<String> {
    let text = rules_text();
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("stampede_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// promtool, or `None` with a message (a failure under CI, which installs it).
fn promtool() -> Option<&'static str> {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return Some("promtool");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have promtool (Debian package prometheus)"
    );
    eprintln!("skipped: promtool not installed (apt-get install prometheus)");
    None
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let dir = repo().join("deploy/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new(promtool)
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_alert_has_a_runbook_entry() {
    let runbook = std::fs::read_to_string(repo().join("docs/runbook.md")).unwrap();
    let names = alert_names();
    assert!(names.len() >= 6, "the rules define the alerts: {names:?}");
    for name in names {
        assert!(
            runbook.contains(&format!("\n## {name}\n")),
            "docs/runbook.md has no section for {name}"
        );
        assert!(
            rules_text().contains(&format!("docs/runbook.md#{}", name.to_lowercase())),
            "{name} links its runbook entry"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_use_is_exported_by_a_cluster_node() {
    // Cluster mode exports everything the embedded mode does, plus the bus's metrics.
    let Some(mode) = Mode::cluster().await else {
        return;
    };
    let server = TestServer::start_in(mode).await;
    let admin = server.admin_token().await;
    let sale = server.create_sale(&admin, 10, 1, 1).await;
    let buyer = server.buyer().await;
    server.hold(&buyer, &sale, 1).await;
    server
        .reserve(&buyer, &sale, 1)
        .await
        .expect_problem(422, "limit_exceeded");
    let wanted = metrics_used();
    let mut missing = wanted.clone();
    for _ in 0..60 {
        let text = server.get("/metrics", None).await.text;
        missing.retain(|name| !text.contains(&format!("\n{name}")));
        if missing.is_empty() {
            break;
        }
        // The hold lapses after 1 s; the sweeper and reconciler export the rest.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        missing.is_empty(),
        "metrics used by alerts.yml but not exported: {missing:?} (of {wanted:?})"
    );
}
