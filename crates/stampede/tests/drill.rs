//! The drill in CI: a small flash sale (5,000 buyers, 100 units) rehearsed against the
//! embedded server the drill starts itself. It must pass its audit and write its report.
//! (That the audit can fail is tested on doctored snapshots in `stampede-drill`'s own tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

#[test]
fn a_small_drill_passes_its_audit() {
    let dir = tempfile::tempdir().unwrap();
    let report_dir = dir.path().join("report");
    let out = Command::new(common::binary())
        .args([
            "drill",
            "--buyers",
            "5000",
            "--stock",
            "100",
            "--per-user-limit",
            "1",
        ])
        .args([
            "--arrival",
            "ramp",
            "--duration-secs",
            "2",
            "--hold-seconds",
            "2",
        ])
        .args([
            "--mix",
            "refresh=20,queue=5,pay=55,abandon=10,decline=10",
            "--seed",
            "6",
        ])
        .args(["--connections", "64", "--quiet", "--report-dir"])
        .arg(&report_dir)
        .env_remove("STAMPEDE_ADMIN_EMAIL")
        .env_remove("STAMPEDE_ADMIN_PASSWORD")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "drill failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("drill audit passed"), "{stdout}");
    // Every buyer ended with exactly one outcome.
    let outcomes: u64 = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("drill outcome "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    assert_eq!(outcomes, 5000, "{stdout}");
    // Something was sold, never more than the stock.
    let sold: i64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("drill units_sold "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!((1..=100).contains(&sold), "{stdout}");
    let report = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(report.contains("audit PASSED"), "{report}");
    assert!(
        report.contains("stampede") && report.contains("--buyers 5000"),
        "command to reproduce"
    );
    for chart in ["stock.svg", "requests.svg", "latency.svg", "outcomes.svg"] {
        let svg = std::fs::read_to_string(report_dir.join(chart)).unwrap();
        assert!(svg.starts_with("<svg") || svg.contains("<svg"), "{chart}");
    }
}
