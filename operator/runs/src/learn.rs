//! The cluster's side of the feedback loop: what each invocation of a run measured
//! (its own record, kept by the engine) goes into the FunctionProfiles, as in the local
//! mode and through the same fold (`vflow_engine::learn::fold`). Records lose nothing:
//! a burst of pods scaled down before any scrape still has every invocation counted,
//! and a cold start is what the invocation waited for an instance.
//!
//! Every write of a profile's status goes through [`update_status`]: read, change,
//! write with the resourceVersion read, again on a conflict. The run controller, the
//! observer and the profile controller all write that status; none loses another's
//! update.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use vflow_api::FunctionProfile;
use vflow_engine::RunGraph;
use vflow_engine::learn::{fold, stamp};
use vflow_engine::record::{Attempt, RunRecord};

/// Tries of one status update before giving up on conflicts.
const CONFLICT_TRIES: u32 = 5;

/// Reads profile `name`, lets `change` edit it (false: nothing to write) and writes its
/// status back unless someone wrote it since the read, in which case it starts over.
/// Ok(false): no such profile, or nothing changed.
pub async fn update_status(
    api: &Api<FunctionProfile>,
    name: &str,
    mut change: impl FnMut(&mut FunctionProfile) -> bool,
) -> Result<bool, kube::Error> {
    let mut tries = 0;
    loop {
        tries += 1;
        let Some(mut profile) = api.get_opt(name).await? else {
            return Ok(false);
        };
        if !change(&mut profile) {
            return Ok(false);
        }
        profile.metadata.managed_fields = None;
        match api
            .replace_status(name, &PostParams::default(), &profile)
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 && tries < CONFLICT_TRIES => {
                tracing::debug!(profile = %name, "status changed under us; reading it again");
            }
            Err(e) => return Err(e),
        }
    }
}

/// The attempts of `record` not yet folded, by function (reused ones ran nothing).
fn unlearned<'a>(
    graph: &RunGraph,
    record: &'a RunRecord,
) -> BTreeMap<String, Vec<(usize, usize, &'a Attempt)>> {
    let mut by_function: BTreeMap<String, Vec<(usize, usize, &Attempt)>> = BTreeMap::new();
    for (u, unit) in record.units.iter().enumerate() {
        let Some(node) = graph.stages.iter().find(|s| s.name == unit.stage) else {
            continue;
        };
        for (a, attempt) in unit.attempts.iter().enumerate() {
            if !attempt.reused && !attempt.learned {
                by_function
                    .entry(node.function.clone())
                    .or_default()
                    .push((u, a, attempt));
            }
        }
    }
    by_function
}

/// Folds every attempt of `record` not folded before into its function's profile in
/// `namespace` and marks it learned; the caller persists the record. Returns how many
/// attempts were folded. A profile that could not be written keeps its attempts
/// unmarked, for the next try.
pub async fn learn_from_run(
    client: &Client,
    namespace: &str,
    graph: &RunGraph,
    record: &mut RunRecord,
) -> (usize, Option<kube::Error>) {
    let api: Api<FunctionProfile> = Api::namespaced(client.clone(), namespace);
    let mut learned = Vec::new();
    let mut first_error = None;
    for (function, attempts) in unlearned(graph, record) {
        let batch: Vec<&Attempt> = attempts.iter().map(|(_, _, a)| *a).collect();
        let written = update_status(&api, &function, |profile| {
            fold(profile, &batch);
            if let Some(status) = profile.status.as_mut() {
                stamp(status, Timestamp::now());
            }
            true
        })
        .await;
        match written {
            // No profile: nothing to learn into (the run had it when it started).
            Ok(_) => learned.extend(attempts.iter().map(|(u, a, _)| (*u, *a))),
            Err(e) => {
                tracing::warn!(function = %function, error = %e, "could not fold the run's invocations into the profile");
                first_error.get_or_insert(e);
            }
        }
    }
    for &(u, a) in &learned {
        if let Some(attempt) = record
            .units
            .get_mut(u)
            .and_then(|unit| unit.attempts.get_mut(a))
        {
            attempt.learned = true;
        }
    }
    (learned.len(), first_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vflow_engine::record::{RunPhase, UnitRecord, UnitStatus};

    fn graph() -> RunGraph {
        let wf: vflow_api::VideoWorkflowSpec = serde_json::from_value(serde_json::json!({
            "storage": {"bucket": "videos"},
            "stages": [
                {"name": "split", "function": "splitter"},
                {"name": "copy", "function": "copier", "after": ["split"], "forEachSegment": true}
            ]
        }))
        .expect("spec");
        RunGraph::new(&wf).expect("graph")
    }

    fn attempt(reused: bool, learned: bool) -> Attempt {
        Attempt {
            submitted_at: 0.0,
            finished_at: 1.0,
            queued_seconds: 0.0,
            cold_start_seconds: None,
            download_seconds: 0.0,
            function_seconds: 1.0,
            upload_seconds: 0.0,
            cpu_seconds: 0.5,
            peak_rss_bytes: 1 << 20,
            bytes_in: 1,
            bytes_out: 1,
            instance: String::new(),
            error: None,
            reused,
            oom_killed: false,
            learned,
            ..Default::default()
        }
    }

    #[test]
    fn only_attempts_that_ran_and_were_not_folded_are_learned() {
        let unit = |stage: &str, segment, attempts| UnitRecord {
            stage: stage.into(),
            segment,
            status: UnitStatus::Done,
            outputs: vec![],
            output_bytes: vec![],
            metadata: Default::default(),
            attempts,
            started_at: None,
            message: None,
        };
        let record = RunRecord {
            units: vec![
                unit("split", None, vec![attempt(false, true)]),
                unit(
                    "copy",
                    Some(0),
                    vec![attempt(false, false), attempt(false, false)],
                ),
                unit("copy", Some(1), vec![attempt(true, false)]),
            ],
            run: "r".into(),
            workflow: "wf".into(),
            input: "s3://videos/in.mp4".into(),
            prefix: "s3://videos/outputs/r/".into(),
            phase: RunPhase::Succeeded,
            segments: Some(2),
            started_at: 0.0,
            finished_at: Some(1.0),
            message: None,
            sessions: 1,
        };
        let by_function = unlearned(&graph(), &record);
        assert_eq!(by_function.keys().collect::<Vec<_>>(), ["copier"]);
        let places: Vec<(usize, usize)> = by_function["copier"]
            .iter()
            .map(|(u, a, _)| (*u, *a))
            .collect();
        assert_eq!(places, [(1, 0), (1, 1)]);
    }
}
