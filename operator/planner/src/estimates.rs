//! What the planner assumes about a function's timing before and after observing it:
//! the profile's status when it has observations, else its priors, else defaults.

use vflow_api::FunctionProfile;

use crate::rng::LogNormal;

/// Execution time when neither observations nor a prior exist.
pub const DEFAULT_EXEC_SECONDS: f64 = 5.0;
/// Cold start when neither observations nor a prior exist.
pub const DEFAULT_COLD_START_SECONDS: f64 = 3.0;
/// p95 / p50 assumed for a prior (a prior is one number; times are right-skewed).
pub const PRIOR_SPREAD: f64 = 1.5;

/// Timing of one function.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub exec: LogNormal,
    pub cold_start: LogNormal,
    /// Whether `exec` comes from observations.
    pub observed: bool,
}

pub fn timing(profile: &FunctionProfile) -> Timing {
    let status = profile.status.as_ref().filter(|s| s.invocations > 0);
    let prior = |d: Option<vflow_api::Duration>, default: f64| {
        let m = d.map_or(default, |d| d.as_secs_f64());
        LogNormal::from_p50_p95(m, m * PRIOR_SPREAD)
    };
    let exec = status
        .and_then(|s| s.exec_seconds.as_ref())
        .map(|d| LogNormal::from_p50_p95(d.p50, d.p95))
        .unwrap_or_else(|| prior(profile.spec.exec_time_prior, DEFAULT_EXEC_SECONDS));
    let cold_start = status
        .and_then(|s| s.cold_start_seconds.as_ref())
        .filter(|_| status.is_some_and(|s| s.cold_starts > 0))
        .map(|d| LogNormal::from_p50_p95(d.p50, d.p95))
        .unwrap_or_else(|| prior(profile.spec.cold_start_prior, DEFAULT_COLD_START_SECONDS));
    Timing {
        exec,
        cold_start,
        observed: status.and_then(|s| s.exec_seconds.as_ref()).is_some(),
    }
}

/// Invocations per second over the `window` seconds before `now` (unix seconds; None:
/// the end of the profile's newest bucket), from the status's per-bucket counts. None
/// when the profile has never counted any: nothing is known yet.
pub fn invocation_rate(profile: &FunctionProfile, now: Option<i64>, window: f64) -> Option<f64> {
    let buckets = &profile.status.as_ref()?.recent_invocations;
    let newest = buckets.iter().map(|b| b.start.0.as_second()).max()?;
    let now = now.unwrap_or(newest + vflow_api::INVOCATION_BUCKET_SECONDS);
    let window = window.max(1.0);
    let from = now as f64 - window;
    let count: u64 = buckets
        .iter()
        .filter(|b| b.start.0.as_second() as f64 >= from && b.start.0.as_second() < now)
        .map(|b| b.invocations)
        .sum();
    Some(count as f64 / window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use vflow_api::{FunctionProfileStatus, InvocationBucket};

    fn counted(buckets: &[(i64, u64)]) -> FunctionProfile {
        let mut p = FunctionProfile::new(
            "f",
            serde_json::from_value(serde_json::json!({
                "image": "x", "command": ["f"], "resources": {"cpu": "1", "memory": "1Gi"}
            }))
            .unwrap_or_else(|e| panic!("spec: {e}")),
        );
        p.status = Some(FunctionProfileStatus {
            recent_invocations: buckets
                .iter()
                .map(|&(s, n)| InvocationBucket {
                    start: Time(
                        k8s_openapi::jiff::Timestamp::from_second(s)
                            .unwrap_or_else(|e| panic!("time: {e}")),
                    ),
                    invocations: n,
                })
                .collect(),
            ..Default::default()
        });
        p
    }

    #[test]
    fn the_rate_counts_the_window_before_now_and_falls_when_invocations_stop() {
        let t0 = 1_800_000_000;
        let p = counted(&[(t0, 6), (t0 + 10, 6), (t0 + 50, 12)]);
        // As of the newest bucket's end (t0 + 60): all 24 in the last 60 s.
        assert_eq!(invocation_rate(&p, None, 60.0), Some(0.4));
        assert_eq!(invocation_rate(&p, Some(t0 + 60), 60.0), Some(0.4));
        // 30 s later the first two buckets are out of the window.
        assert_eq!(invocation_rate(&p, Some(t0 + 90), 60.0), Some(0.2));
        // Nothing for a while: 0, known.
        assert_eq!(invocation_rate(&p, Some(t0 + 600), 60.0), Some(0.0));
        assert_eq!(invocation_rate(&counted(&[]), None, 60.0), None);
    }
}
