//! What a run did, per stage: a table for people and JSON for tools.

use serde::Serialize;

use crate::graph::RunGraph;
use crate::record::{RunRecord, UnitStatus};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageSummary {
    pub stage: String,
    pub function: String,
    pub units: usize,
    pub done: usize,
    pub skipped: usize,
    pub failed: usize,
    /// Function executions, retries included; outputs reused from an earlier
    /// process are not executions.
    pub executions: usize,
    pub reused: usize,
    pub retries: usize,
    pub cold_starts: usize,
    pub cold_start_seconds: f64,
    pub queued_seconds: f64,
    pub exec_p50_seconds: f64,
    pub exec_max_seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

pub use vflow_api::QualityFigure;

/// How the quality figures of units and stages come out of a record.
pub trait QualityOf: Sized {
    /// A unit's figure: the metadata of a function that reports `psnr`, `ssim` and
    /// `frames` (the quality function), per segment or per rendition.
    fn of(unit: &crate::record::UnitRecord) -> Option<Self>;
    /// The figures of a stage's segments together, as one measurement of the whole
    /// would give them.
    fn combined(stage: &str, parts: &[&Self]) -> Option<Self>;
}

impl QualityOf for QualityFigure {
    fn of(unit: &crate::record::UnitRecord) -> Option<Self> {
        let number = |key: &str| unit.metadata.get(key).and_then(|v| v.as_f64());
        Some(QualityFigure {
            stage: unit.stage.clone(),
            segment: unit.segment,
            psnr: number("psnr")?,
            psnr_min: number("psnrMin"),
            ssim: number("ssim")?,
            vmaf: number("vmaf"),
            frames: unit.metadata.get("frames").and_then(|v| v.as_u64())?,
        })
    }

    /// PSNR from the frames' mean squared error (each segment's mean MSE weighted by
    /// its frames), SSIM and VMAF as frame-weighted means, the worst frame of all. None
    /// for no figures or no frames.
    fn combined(stage: &str, parts: &[&QualityFigure]) -> Option<QualityFigure> {
        let frames: u64 = parts.iter().map(|q| q.frames).sum();
        if frames == 0 {
            return None;
        }
        let weighted = |f: &dyn Fn(&QualityFigure) -> f64| {
            parts.iter().map(|q| f(q) * q.frames as f64).sum::<f64>() / frames as f64
        };
        // The quality function writes 100 dB for identical frames (MSE 0).
        let mse = weighted(&|q| {
            if q.psnr >= 100.0 {
                0.0
            } else {
                10f64.powf(-q.psnr / 10.0)
            }
        });
        Some(QualityFigure {
            stage: stage.to_string(),
            segment: None,
            psnr: if mse > 0.0 {
                -10.0 * mse.log10()
            } else {
                100.0
            },
            psnr_min: parts.iter().filter_map(|q| q.psnr_min).reduce(f64::min),
            ssim: weighted(&|q| q.ssim),
            vmaf: if parts.iter().all(|q| q.vmaf.is_some()) {
                Some(weighted(&|q| q.vmaf.unwrap_or(0.0)))
            } else {
                None
            },
            frames,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    pub run: String,
    pub workflow: String,
    pub phase: crate::record::RunPhase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub total_seconds: f64,
    /// Execution time summed over every invocation (download, function, upload).
    pub exec_seconds: f64,
    pub cold_starts: usize,
    /// Instance-seconds ready but unused before a first invocation (local mode only:
    /// the backend measures it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_before_use_seconds: Option<f64>,
    pub stages: Vec<StageSummary>,
    /// Quality measured by the run's stages, in the order of the record's units.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quality: Vec<QualityFigure>,
    /// Per stage that measured segments: their figures as one (a whole rendition).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quality_by_stage: Vec<QualityFigure>,
    pub outputs: Vec<String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

pub fn summarize(graph: &RunGraph, record: &RunRecord) -> RunReport {
    let mut stages = Vec::new();
    let mut exec_total = 0.0;
    for &index in &graph.order {
        let node = &graph.stages[index];
        let units: Vec<_> = record
            .units
            .iter()
            .filter(|u| u.stage == node.name)
            .collect();
        let attempts: Vec<_> = units
            .iter()
            .flat_map(|u| &u.attempts)
            .filter(|a| !a.reused)
            .collect();
        let ok: Vec<_> = attempts.iter().filter(|a| a.error.is_none()).collect();
        let exec: Vec<f64> = ok
            .iter()
            .map(|a| a.download_seconds + a.function_seconds + a.upload_seconds)
            .collect();
        exec_total += exec.iter().fold(0.0, |a, b| a + b);
        let count = |s: UnitStatus| units.iter().filter(|u| u.status == s).count();
        stages.push(StageSummary {
            stage: node.name.clone(),
            function: node.function.clone(),
            units: units.len(),
            done: count(UnitStatus::Done),
            skipped: count(UnitStatus::Skipped),
            failed: count(UnitStatus::Failed),
            executions: attempts.len(),
            reused: units
                .iter()
                .flat_map(|u| &u.attempts)
                .filter(|a| a.reused)
                .count(),
            retries: attempts.iter().filter(|a| a.error.is_some()).count(),
            cold_starts: attempts
                .iter()
                .filter(|a| a.cold_start_seconds.is_some())
                .count(),
            cold_start_seconds: attempts
                .iter()
                .filter_map(|a| a.cold_start_seconds)
                .fold(0.0, |a, b| a + b),
            queued_seconds: attempts
                .iter()
                .map(|a| a.queued_seconds)
                .fold(0.0, |a, b| a + b),
            exec_p50_seconds: median(exec.clone()),
            exec_max_seconds: exec.iter().copied().fold(0.0, f64::max),
            cpu_seconds: ok.iter().map(|a| a.cpu_seconds).fold(0.0, |a, b| a + b),
            peak_rss_bytes: ok.iter().map(|a| a.peak_rss_bytes).max().unwrap_or(0),
            bytes_in: ok.iter().map(|a| a.bytes_in).sum(),
            bytes_out: ok.iter().map(|a| a.bytes_out).sum(),
        });
    }
    // The run's outputs: what its sink stages (no stage after them) produced.
    let sinks: Vec<&str> = graph
        .stages
        .iter()
        .enumerate()
        .filter(|(i, _)| !graph.stages.iter().any(|s| s.after.contains(i)))
        .map(|(_, s)| s.name.as_str())
        .collect();
    let outputs = record
        .units
        .iter()
        .filter(|u| sinks.contains(&u.stage.as_str()) && u.status == UnitStatus::Done)
        .flat_map(|u| u.outputs.clone())
        .collect();
    let (quality, quality_by_stage) = quality(graph, record);
    RunReport {
        run: record.run.clone(),
        workflow: record.workflow.clone(),
        phase: record.phase,
        message: record.message.clone(),
        total_seconds: record.finished_at.unwrap_or(record.started_at) - record.started_at,
        exec_seconds: exec_total,
        cold_starts: stages.iter().map(|s| s.cold_starts).sum(),
        idle_before_use_seconds: None,
        stages,
        quality_by_stage,
        quality,
        outputs,
    }
}

/// The quality figures of a record: each unit's that measured one, in the record's
/// order, and per stage that measured segments, their figures as one (the whole).
pub fn quality(graph: &RunGraph, record: &RunRecord) -> (Vec<QualityFigure>, Vec<QualityFigure>) {
    let units: Vec<QualityFigure> = record
        .units
        .iter()
        .filter(|u| u.status == UnitStatus::Done)
        .filter_map(QualityFigure::of)
        .collect();
    let by_stage = graph
        .order
        .iter()
        .filter_map(|&i| {
            let name = &graph.stages[i].name;
            let parts: Vec<&QualityFigure> = units
                .iter()
                .filter(|q| &q.stage == name && q.segment.is_some())
                .collect();
            QualityFigure::combined(name, &parts)
        })
        .collect();
    (units, by_stage)
}

/// One figure in words: "PSNR 41.20 dB (worst frame 38.10), SSIM 0.9800, VMAF 92.00".
pub fn quality_line(q: &QualityFigure) -> String {
    let worst = q
        .psnr_min
        .map(|m| format!(" (worst frame {m:.2})"))
        .unwrap_or_default();
    let vmaf = q.vmaf.map(|v| format!(", VMAF {v:.2}")).unwrap_or_default();
    format!("PSNR {:.2} dB{worst}, SSIM {:.4}{vmaf}", q.psnr, q.ssim)
}

/// The quality figures, one line per unit, then per stage of segments for the whole;
/// empty when the run measured none.
pub fn quality_table(report: &RunReport) -> String {
    let mut out = String::new();
    let whole = report.quality_by_stage.iter().map(|q| (q, true));
    for (q, combined) in report.quality.iter().map(|q| (q, false)).chain(whole) {
        let unit = match (q.segment, combined) {
            (Some(s), _) => format!("{} segment {s}", q.stage),
            (None, true) => format!("{} (all {} frames)", q.stage, q.frames),
            (None, false) => q.stage.clone(),
        };
        out.push_str(&format!("quality {unit}: {}\n", quality_line(q)));
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / 1048576.0)
}

/// A fixed-width table of the stages.
pub fn table(report: &RunReport) -> String {
    let mut rows = vec![[
        "stage".to_string(),
        "units".into(),
        "done".into(),
        "skipped".into(),
        "runs".into(),
        "retries".into(),
        "cold".into(),
        "exec p50 s".into(),
        "exec max s".into(),
        "cpu s".into(),
        "peak MiB".into(),
    ]];
    for s in &report.stages {
        rows.push([
            s.stage.clone(),
            s.units.to_string(),
            s.done.to_string(),
            s.skipped.to_string(),
            format!(
                "{}{}",
                s.executions,
                if s.reused > 0 {
                    format!(" (+{} reused)", s.reused)
                } else {
                    String::new()
                }
            ),
            s.retries.to_string(),
            s.cold_starts.to_string(),
            format!("{:.2}", s.exec_p50_seconds),
            format!("{:.2}", s.exec_max_seconds),
            format!("{:.2}", s.cpu_seconds),
            mib(s.peak_rss_bytes),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{QualityFigure, QualityOf};

    fn figure(psnr: f64, ssim: f64, frames: u64) -> QualityFigure {
        QualityFigure {
            stage: "q".into(),
            segment: Some(0),
            psnr,
            psnr_min: Some(psnr - 1.0),
            ssim,
            vmaf: None,
            frames,
        }
    }

    // 30 dB and 40 dB over as many frames: MSE 1e-3 and 1e-4 in units of the peak,
    // mean 5.5e-4, which is 32.60 dB (not the 35 dB a mean of the decibels says).
    #[test]
    fn segments_combine_through_their_mean_squared_error_weighted_by_frames() {
        let (a, b) = (figure(30.0, 0.9, 100), figure(40.0, 0.99, 100));
        let whole = QualityFigure::combined("q", &[&a, &b]).expect("figures");
        assert!((whole.psnr - 32.596).abs() < 1e-3, "{whole:?}");
        assert!((whole.ssim - 0.945).abs() < 1e-9);
        assert_eq!(
            (whole.frames, whole.psnr_min, whole.vmaf),
            (200, Some(29.0), None)
        );
        let c = figure(40.0, 0.99, 300);
        let weighted = QualityFigure::combined("q", &[&a, &c]).expect("figures");
        assert!((weighted.psnr - 34.881).abs() < 1e-3, "{weighted:?}"); // (1e-3 + 3 x 1e-4) / 4
        // identical frames (100 dB) count as no error at all
        let same = figure(100.0, 1.0, 100);
        let half = QualityFigure::combined("q", &[&same, &b]).expect("figures");
        assert!((half.psnr - 43.010).abs() < 1e-3, "{half:?}");
        assert!(QualityFigure::combined("q", &[]).is_none());
    }
}
