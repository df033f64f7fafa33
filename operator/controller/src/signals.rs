//! What the autoscaler scales for: the demand of the runs in this process (posted on
//! the [`DemandBoard`](vflow_runs::demand::DemandBoard), in memory) plus two annotations
//! on the VideoWorkflow through which people and other tools can ask too:
//!
//! - `vflow.io/in-flight: '{"scale": 3, "detect": 1}'`: invocations in flight per stage
//!   now. Stages not named have none.
//! - `vflow.io/prewarm: '[{"stage": "detect", "replicas": 2, "at": "2030-01-01T00:00:00Z"}]'`:
//!   have `replicas` instances of `stage` ready by `at` (RFC 3339). The operator starts
//!   scaling at `at` minus the stage's cold start (observed p95, else the profile's
//!   `coldStartPrior`) minus a margin, and keeps the instances until `at` plus the
//!   workflow's `scaleToZeroAfter` unless invocations arrive.
//!
//! An annotation that does not parse, or names a stage the workflow lacks, is reported
//! in the Degraded condition and otherwise ignored: scaling falls back to the minimum.

use std::collections::BTreeMap;

pub use vflow_runs::demand::PrewarmRequest;
use vflow_runs::demand::WorkflowDemand;

pub const IN_FLIGHT: &str = "vflow.io/in-flight";
pub const PREWARM: &str = "vflow.io/prewarm";

/// What the annotations and the runs in this process ask for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    pub in_flight: BTreeMap<String, u32>,
    pub prewarm: Vec<PrewarmRequest>,
    /// What could not be used, with the annotation it came from.
    pub problems: Vec<String>,
}

impl Signals {
    pub fn in_flight(&self, stage: &str) -> u32 {
        self.in_flight.get(stage).copied().unwrap_or(0)
    }
    /// Adds the runs' demand to what the annotations ask (in flight: the sum).
    pub fn add(&mut self, demand: &WorkflowDemand, stages: &[&str]) {
        for (stage, n) in demand.in_flight_by_stage() {
            if stages.contains(&stage) {
                *self.in_flight.entry(stage.to_string()).or_default() += n;
            }
        }
        self.prewarm.extend(
            demand
                .prewarm()
                .filter(|p| stages.contains(&p.stage.as_str()))
                .cloned(),
        );
    }

    pub fn prewarm_for<'a>(&'a self, stage: &'a str) -> impl Iterator<Item = &'a PrewarmRequest> {
        self.prewarm.iter().filter(move |p| p.stage == stage)
    }
}

/// Reads the annotations; `stages` are the workflow's stage names.
pub fn parse(annotations: Option<&BTreeMap<String, String>>, stages: &[&str]) -> Signals {
    let mut s = Signals::default();
    let Some(annotations) = annotations else {
        return s;
    };
    if let Some(raw) = annotations.get(IN_FLIGHT) {
        match serde_json::from_str::<BTreeMap<String, u32>>(raw) {
            Ok(map) => {
                for (stage, n) in map {
                    if stages.contains(&stage.as_str()) {
                        s.in_flight.insert(stage, n);
                    } else {
                        s.problems
                            .push(format!("annotation {IN_FLIGHT}: no stage {stage:?}"));
                    }
                }
            }
            Err(e) => s.problems.push(format!(
                "annotation {IN_FLIGHT}: {e} (expected {{\"<stage>\": <count>}})"
            )),
        }
    }
    if let Some(raw) = annotations.get(PREWARM) {
        match serde_json::from_str::<Vec<PrewarmRequest>>(raw) {
            Ok(list) => {
                for p in list {
                    if stages.contains(&p.stage.as_str()) {
                        s.prewarm.push(p);
                    } else {
                        s.problems
                            .push(format!("annotation {PREWARM}: no stage {:?}", p.stage));
                    }
                }
            }
            Err(e) => s.problems.push(format!(
                "annotation {PREWARM}: {e} (expected [{{\"stage\": \"<stage>\", \"replicas\": <n>, \"at\": \"<RFC 3339 time>\"}}])"
            )),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_both_annotations() {
        let a = ann(&[
            (IN_FLIGHT, r#"{"scale": 3}"#),
            (
                PREWARM,
                r#"[{"stage": "detect", "replicas": 2, "at": "2030-01-01T00:00:00Z"}]"#,
            ),
        ]);
        let s = parse(Some(&a), &["scale", "detect"]);
        assert_eq!(s.in_flight("scale"), 3);
        assert_eq!(s.in_flight("detect"), 0);
        assert_eq!(s.prewarm_for("detect").count(), 1);
        assert_eq!(s.prewarm[0].at.to_string(), "2030-01-01T00:00:00Z");
        assert!(s.problems.is_empty());
    }

    #[test]
    fn the_runs_demand_adds_to_the_annotations() {
        let a = ann(&[(IN_FLIGHT, r#"{"scale": 3}"#)]);
        let mut s = parse(Some(&a), &["scale", "detect"]);
        let mut d = WorkflowDemand::default();
        d.begin("scale");
        d.begin("gone");
        let at = "2030-01-01T00:00:00Z".parse().expect("time");
        d.request_prewarm("detect", 2, at);
        s.add(&d, &["scale", "detect"]);
        assert_eq!(s.in_flight("scale"), 4);
        assert_eq!(
            s.in_flight("gone"),
            0,
            "a stage the workflow lost is ignored"
        );
        let p: Vec<_> = s.prewarm_for("detect").collect();
        assert_eq!((p.len(), p[0].replicas, p[0].at), (1, 2, at));
    }

    #[test]
    fn reports_what_it_cannot_use() {
        let a = ann(&[
            (IN_FLIGHT, r#"{"nope": 3}"#),
            (
                PREWARM,
                r#"[{"stage": "scale", "replicas": -1, "at": "x"}]"#,
            ),
        ]);
        let s = parse(Some(&a), &["scale"]);
        assert!(s.in_flight.is_empty() && s.prewarm.is_empty());
        assert_eq!(s.problems.len(), 2, "{:?}", s.problems);
        assert!(s.problems[0].contains("no stage \"nope\""));
    }
}
