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

/// Invocations per second over the profile's observation window, when it has one.
pub fn invocation_rate(profile: &FunctionProfile) -> Option<f64> {
    let s = profile.status.as_ref()?;
    let start = s.window_start.as_ref()?.0.as_millisecond();
    let end = s.window_end.as_ref()?.0.as_millisecond();
    let seconds = (end - start) as f64 / 1000.0;
    (seconds > 0.0).then(|| s.invocations as f64 / seconds)
}
