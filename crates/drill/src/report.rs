//! The drill's report: one Markdown file with the figures, the audit and four SVG charts next
//! to it (stock over time, requests per second, p50/p99 latency over time, outcome mix), and
//! the exact command that reproduces it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plotters::prelude::*;

use crate::audit::Audit;
use crate::stats::Summary;
use crate::DrillError;

/// The drill's settings and phases, as the report states them.
#[derive(Debug, Clone)]
pub struct Run {
    pub command: String,
    pub target: String,
    pub buyers: usize,
    pub stock: i64,
    pub per_user_limit: i64,
    pub arrival: String,
    pub mix: String,
    pub duration: Duration,
    pub seed: u64,
    pub connections: usize,
    pub setup: Duration,
    /// From T-0 to the last buyer's last answer.
    pub wall: Duration,
    pub settle: Duration,
}

fn chart_err<E: std::fmt::Debug>(e: E) -> DrillError {
    DrillError::Report(format!("drawing a chart: {e:?}"))
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Writes `report.md` and its charts into `dir`; returns the report's path.
pub fn write(
    dir: &Path,
    run: &Run,
    summary: &Summary,
    audit: &Audit,
) -> Result<PathBuf, DrillError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| DrillError::Report(format!("{}: {e}", dir.display())))?;
    stock_chart(&dir.join("stock.svg"), summary)?;
    rate_chart(&dir.join("requests.svg"), summary)?;
    latency_chart(&dir.join("latency.svg"), summary)?;
    outcome_chart(&dir.join("outcomes.svg"), summary)?;
    let md = markdown(run, summary, audit);
    let path = dir.join("report.md");
    std::fs::write(&path, md)
        .map_err(|e| DrillError::Report(format!("{}: {e}", path.display())))?;
    Ok(path)
}

/// The Markdown text of the report.
pub fn markdown(run: &Run, s: &Summary, audit: &Audit) -> String {
    let mut md = String::new();
    let verdict = if audit.passed() { "PASSED" } else { "FAILED" };
    let requests = s.requests();
    let wall = run.wall.as_secs_f64().max(1e-9);
    let _ = writeln!(md, "# Flash-sale drill: audit {verdict}\n");
    let _ = writeln!(md, "Reproduce with:\n\n```sh\n{}\n```\n", run.command);
    let _ = writeln!(md, "| setting | value |\n|---|---|");
    for (k, v) in [
        ("target", run.target.clone()),
        ("buyers", run.buyers.to_string()),
        ("stock", run.stock.to_string()),
        ("per-user limit", run.per_user_limit.to_string()),
        (
            "arrival",
            if run.arrival == "t0" {
                "t0 (everyone at once)".to_owned()
            } else {
                format!("{} over {:.1} s", run.arrival, run.duration.as_secs_f64())
            },
        ),
        ("mix", run.mix.clone()),
        (
            "connections (most buyers in flight)",
            run.connections.to_string(),
        ),
        ("seed", run.seed.to_string()),
    ] {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(md, "\n## Figures\n");
    let _ = writeln!(md, "| figure | value |\n|---|---|");
    for (k, v) in [
        (
            "accounts set up in",
            format!("{:.1} s", run.setup.as_secs_f64()),
        ),
        (
            "wall time, T-0 to last answer",
            format!("{:.2} s", run.wall.as_secs_f64()),
        ),
        ("requests", requests.to_string()),
        (
            "requests/s (mean over the wall time)",
            format!("{:.0}", requests as f64 / wall),
        ),
        ("buyers/s", format!("{:.0}", run.buyers as f64 / wall)),
        (
            "units sold / stock",
            format!("{} / {}", audit.units_sold, run.stock),
        ),
        ("units demanded", audit.units_demanded.to_string()),
        ("holds acknowledged", s.acked_holds.to_string()),
        (
            "orders confirmed to buyers",
            s.acked_confirmed_orders.to_string(),
        ),
        (
            "queue joins without a waiting room (404/409: queue unavailable)",
            s.queue_unavailable.to_string(),
        ),
        (
            "FIFO inversions among admitted buyers",
            audit.fifo_inversions.to_string(),
        ),
        (
            "waited for holds to end",
            format!("{:.1} s", run.settle.as_secs_f64()),
        ),
    ] {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(
        md,
        "\n### Latency by endpoint (ms; from the scheduled arrival for a buyer's first request)\n"
    );
    let _ = writeln!(
        md,
        "| endpoint | requests | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|"
    );
    for (name, h) in &s.endpoints {
        let _ = writeln!(
            md,
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max())
        );
    }
    let _ = writeln!(
        md,
        "\n### Answers by status\n\n| endpoint | status | count |\n|---|---|---|"
    );
    for ((name, status), n) in &s.statuses {
        let shown = if *status == 0 {
            "no answer".to_owned()
        } else {
            status.to_string()
        };
        let _ = writeln!(md, "| {name} | {shown} | {n} |");
    }
    let _ = writeln!(
        md,
        "\n### Outcomes (one per buyer)\n\n| outcome | buyers |\n|---|---|"
    );
    for (name, n) in &s.outcomes {
        let _ = writeln!(md, "| {name} | {n} |");
    }
    let _ = writeln!(
        md,
        "\n## Audit: {verdict}\n\n| check | verdict | detail |\n|---|---|---|"
    );
    for c in &audit.checks {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            c.name,
            if c.ok { "ok" } else { "**VIOLATED**" },
            c.detail
        );
    }
    let _ = writeln!(
        md,
        "\n## Charts\n\n![stock over time](stock.svg)\n\n![requests per second](requests.svg)\n\n\
         ![latency over time](latency.svg)\n\n![outcome mix](outcomes.svg)"
    );
    md
}

/// Reads one of the stock terms from a sample.
type StockOf = fn(&crate::stats::StockSample) -> i64;

fn stock_chart(path: &Path, s: &Summary) -> Result<(), DrillError> {
    let root = SVGBackend::new(path, (900, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_err)?;
    let x_max = s.stock.last().map_or(1.0, |p| p.at_secs).max(1.0);
    let y_max = s
        .stock
        .iter()
        .map(|p| p.available + p.held + p.sold)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("Stock over time", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max * 1.05)
        .map_err(chart_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds from T-0")
        .y_desc("units")
        .draw()
        .map_err(chart_err)?;
    let series: [(&str, RGBColor, StockOf); 3] = [
        ("available", BLUE, |p| p.available),
        ("held", RGBColor(230, 140, 0), |p| p.held),
        ("sold", RGBColor(0, 150, 60), |p| p.sold),
    ];
    for (name, color, f) in series {
        chart
            .draw_series(LineSeries::new(
                s.stock.iter().map(|p| (p.at_secs, f(p) as f64)),
                color.stroke_width(2),
            ))
            .map_err(chart_err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(chart_err)?;
    root.present().map_err(chart_err)
}

fn rate_chart(path: &Path, s: &Summary) -> Result<(), DrillError> {
    let root = SVGBackend::new(path, (900, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_err)?;
    let x_max = (s.seconds.len() as f64).max(1.0);
    let y_max = s
        .seconds
        .iter()
        .map(|x| x.requests)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("Requests answered per second", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max * 1.05)
        .map_err(chart_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds from T-0")
        .y_desc("requests/s")
        .draw()
        .map_err(chart_err)?;
    chart
        .draw_series(LineSeries::new(
            s.seconds
                .iter()
                .enumerate()
                .map(|(i, x)| (i as f64 + 0.5, x.requests as f64)),
            BLUE.stroke_width(2),
        ))
        .map_err(chart_err)?;
    root.present().map_err(chart_err)
}

fn latency_chart(path: &Path, s: &Summary) -> Result<(), DrillError> {
    let root = SVGBackend::new(path, (900, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_err)?;
    let x_max = (s.seconds.len() as f64).max(1.0);
    let y_max = s
        .seconds
        .iter()
        .filter(|x| x.requests > 0)
        .map(|x| ms(x.latency_us.value_at_quantile(0.99)))
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency over time (p50, p99)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max * 1.05)
        .map_err(chart_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds from T-0")
        .y_desc("ms")
        .draw()
        .map_err(chart_err)?;
    for (name, q, color) in [("p50", 0.5, BLUE), ("p99", 0.99, RED)] {
        chart
            .draw_series(LineSeries::new(
                s.seconds
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| x.requests > 0)
                    .map(|(i, x)| (i as f64 + 0.5, ms(x.latency_us.value_at_quantile(q)))),
                color.stroke_width(2),
            ))
            .map_err(chart_err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(chart_err)?;
    root.present().map_err(chart_err)
}

/// Horizontal bars, one per outcome (drawn as rectangles: no histogram feature needed).
fn outcome_chart(path: &Path, s: &Summary) -> Result<(), DrillError> {
    let rows: Vec<(&str, u64)> = s.outcomes.iter().map(|(k, v)| (*k, *v)).collect();
    let height = 80 + 30 * rows.len().max(1) as u32;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_err)?;
    let total: u64 = rows.iter().map(|(_, n)| n).sum::<u64>().max(1);
    let x_max = rows.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1) as f64;
    let n = rows.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("Outcome mix (buyers)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(10)
        .build_cartesian_2d(0f64..x_max * 1.45, 0f64..n)
        .map_err(chart_err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc("buyers")
        .draw()
        .map_err(chart_err)?;
    for (i, (name, count)) in rows.iter().enumerate() {
        let y = n - i as f64 - 1.0;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y + 0.15), (*count as f64, y + 0.85)],
                Palette99::pick(i).filled(),
            )))
            .map_err(chart_err)?;
        let label = format!(
            "{name}: {count} ({:.1}%)",
            *count as f64 * 100.0 / total as f64
        );
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (*count as f64 + x_max * 0.01, y + 0.65),
                ("sans-serif", 14),
            )))
            .map_err(chart_err)?;
    }
    root.present().map_err(chart_err)
}
