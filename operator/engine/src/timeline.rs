//! The run as a picture: one row per unit, bars for cold start, queueing and execution.

use std::fmt::Write;

use crate::graph::RunGraph;
use crate::record::RunRecord;

const ROW: f64 = 14.0;
const LEFT: f64 = 150.0;
const WIDTH: f64 = 900.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG timeline (times from the run's start).
pub fn svg(graph: &RunGraph, record: &RunRecord) -> String {
    let t0 = record.started_at;
    let end = record
        .units
        .iter()
        .flat_map(|u| &u.attempts)
        .map(|a| a.finished_at)
        .fold(record.finished_at.unwrap_or(t0), f64::max);
    let span = (end - t0).max(0.001);
    let x = |t: f64| LEFT + (t - t0).max(0.0) / span * WIDTH;
    let mut rows = Vec::new();
    for &stage in &graph.order {
        let name = &graph.stages[stage].name;
        let mut units: Vec<_> = record.units.iter().filter(|u| &u.stage == name).collect();
        units.sort_by_key(|u| u.segment);
        rows.extend(units);
    }
    let height = 40.0 + rows.len() as f64 * ROW + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="10">"#,
        w = LEFT + WIDTH + 20.0
    );
    let _ = writeln!(
        s,
        r#"<text x="4" y="14" font-size="12">{} run {} ({:?}), {:.2} s: cold start (orange), queued (grey), executing (blue), failed (red)</text>"#,
        escape(&record.workflow),
        escape(&record.run),
        record.phase,
        span
    );
    for (i, unit) in rows.iter().enumerate() {
        let y = 30.0 + i as f64 * ROW;
        let label = match unit.segment {
            Some(seg) => format!("{} #{seg}", unit.stage),
            None => unit.stage.clone(),
        };
        let _ = writeln!(
            s,
            r#"<text x="4" y="{}">{}</text>"#,
            y + 10.0,
            escape(&label)
        );
        for a in &unit.attempts {
            if a.reused {
                let _ = writeln!(
                    s,
                    r##"<rect x="{:.1}" y="{y}" width="2" height="11" fill="#2ca02c"><title>reused</title></rect>"##,
                    x(a.submitted_at)
                );
                continue;
            }
            let exec = a.download_seconds + a.function_seconds + a.upload_seconds;
            let exec_start = a.finished_at - exec;
            let cold_end = a.submitted_at + a.cold_start_seconds.unwrap_or(0.0);
            let mut bar = |from: f64, to: f64, color: &str, title: String| {
                if to > from {
                    let _ = writeln!(
                        s,
                        r#"<rect x="{:.1}" y="{y}" width="{:.1}" height="11" fill="{color}"><title>{}</title></rect>"#,
                        x(from),
                        (x(to) - x(from)).max(1.0),
                        escape(&title)
                    );
                }
            };
            if a.error.is_some() {
                bar(
                    a.submitted_at,
                    a.finished_at,
                    "#d62728",
                    a.error.clone().unwrap_or_default(),
                );
                continue;
            }
            bar(
                a.submitted_at,
                cold_end,
                "#ff7f0e",
                format!("cold start {:.2} s", cold_end - a.submitted_at),
            );
            bar(
                cold_end,
                exec_start,
                "#bbbbbb",
                format!("queued {:.2} s", exec_start - cold_end),
            );
            bar(
                exec_start,
                a.finished_at,
                "#1f77b4",
                format!(
                    "download {:.2} s, function {:.2} s, upload {:.2} s on {}",
                    a.download_seconds, a.function_seconds, a.upload_seconds, a.instance
                ),
            );
        }
    }
    let axis_y = 30.0 + rows.len() as f64 * ROW + 12.0;
    for tick in 0..=4 {
        let t = span * tick as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{axis_y}" text-anchor="middle">{t:.1} s</text>"#,
            LEFT + WIDTH * tick as f64 / 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}
