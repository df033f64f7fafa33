//! When to scale each stage on the path up, for a run started at `t0`.
//!
//! Xanadu's just-in-time rule: stage k's input arrives at
//! `A_k = t0 + longest path of (exec + overhead) over the path stages before it`,
//! and the stage is scaled up at `D_k = max(t0, A_k - C_k - margin)`, so its instance
//! is ready as the input arrives. Speculative scales everything at `t0`; None waits
//! for the input. The margin grows with the spread of the upstream execution times
//! (see [`Margin`]): a fixed margin is either too small for a long uncertain chain or
//! wasteful for a short steady one.

use serde::{Deserialize, Serialize};
use vflow_api::PrewarmPolicy;

/// One stage of the path with what the schedule needs to know about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathStage {
    pub stage: String,
    /// Positions, in the path, of the stages whose output this stage takes. Only
    /// earlier positions count.
    pub after: Vec<usize>,
    /// Expected (median) execution time of one invocation.
    pub exec_seconds: f64,
    /// Standard deviation of the execution time (0 when unknown).
    #[serde(default)]
    pub exec_std_seconds: f64,
    /// Dispatch and data passing from this stage to the next.
    pub overhead_seconds: f64,
    /// Time from "scale up" to "instance ready".
    pub cold_start_seconds: f64,
    /// Instances the stage needs when its input arrives.
    pub replicas: u32,
    /// The stage already has enough warm instances (durable, or fused into a warm pod).
    #[serde(default)]
    pub warm: bool,
}

/// Scale stage `stage` up to `replicas` at `at_seconds` (same clock as `t0`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrewarmAction {
    pub stage: String,
    pub at_seconds: f64,
    pub replicas: u32,
}

/// How much earlier than "just in time" to start: `base + z * sigma_k`, where sigma_k
/// is the standard deviation of stage k's arrival (independent upstream times add
/// their variances). With z = 1, an input arrives before the instance is ready in
/// about one run in six, and then only by a fraction of a cold start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Margin {
    pub base_seconds: f64,
    pub z: f64,
}

impl Default for Margin {
    fn default() -> Self {
        Margin {
            base_seconds: 0.25,
            z: 1.0,
        }
    }
}

impl Margin {
    pub fn fixed(seconds: f64) -> Self {
        Margin {
            base_seconds: seconds,
            z: 0.0,
        }
    }
}

/// Expected arrival of each stage's input, and its standard deviation (along the
/// longest path, the one that sets the arrival).
///
/// A stage starts when both its input and an instance are there: an instance that is
/// not warm cannot be ready before `t0 + C_j`, however early it is requested. So the
/// first stage of a cold path starts at `t0 + C_0`, not `t0`, and every later arrival
/// moves with it; ALGORITHMS.md's `A_k = t0 + sum(E_j + O_j)` leaves that out and
/// would warm every later stage one cold start too early.
pub fn expected_arrivals(path: &[PathStage], t0: f64) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(path.len());
    for (k, stage) in path.iter().enumerate() {
        let arrival = stage
            .after
            .iter()
            .filter(|&&j| j < k)
            .map(|&j| {
                let (a, var) = out[j];
                let s = &path[j];
                let start = if s.warm {
                    a
                } else {
                    a.max(t0 + s.cold_start_seconds)
                };
                (
                    start + s.exec_seconds + s.overhead_seconds,
                    var + s.exec_std_seconds.powi(2),
                )
            })
            .fold(None, |best: Option<(f64, f64)>, x| match best {
                Some(b) if b.0 >= x.0 => Some(b),
                _ => Some(x),
            })
            .unwrap_or((t0, 0.0));
        out.push(arrival);
    }
    out.into_iter().map(|(a, var)| (a, var.sqrt())).collect()
}

/// Just-in-time: `D_k = max(t0, A_k - C_k - margin_k)` for every stage not yet warm.
pub fn jit_schedule(path: &[PathStage], t0: f64, margin: Margin) -> Vec<PrewarmAction> {
    expected_arrivals(path, t0)
        .into_iter()
        .zip(path)
        .filter(|(_, s)| !s.warm)
        .map(|((arrival, sigma), s)| {
            let lead = s.cold_start_seconds + margin.base_seconds + margin.z * sigma;
            PrewarmAction {
                stage: s.stage.clone(),
                at_seconds: (arrival - lead).max(t0),
                replicas: s.replicas.max(1),
            }
        })
        .collect()
}

/// Speculative: every stage on the path at `t0`.
pub fn speculative_schedule(path: &[PathStage], t0: f64) -> Vec<PrewarmAction> {
    path.iter()
        .filter(|s| !s.warm)
        .map(|s| PrewarmAction {
            stage: s.stage.clone(),
            at_seconds: t0,
            replicas: s.replicas.max(1),
        })
        .collect()
}

/// The schedule for a workflow's policy (None: nothing ahead of the input).
pub fn schedule(
    policy: PrewarmPolicy,
    path: &[PathStage],
    t0: f64,
    margin: Margin,
) -> Vec<PrewarmAction> {
    match policy {
        PrewarmPolicy::JustInTime => jit_schedule(path, t0, margin),
        PrewarmPolicy::Speculative => speculative_schedule(path, t0),
        PrewarmPolicy::None => Vec::new(),
    }
}

/// Rolling just-in-time: stage `reached` of `path` got its input at `now` and starts
/// at `starts_at` (now when its instance is ready, else when the instance will be);
/// the schedule for the stages after it, from what is known now instead of what was
/// expected at `t0`. The spread of an arrival then covers only the stages still to
/// run, so the margin shrinks as the run advances.
pub fn reschedule(
    path: &[PathStage],
    reached: usize,
    now: f64,
    starts_at: f64,
    margin: Margin,
) -> Vec<PrewarmAction> {
    if reached >= path.len() {
        return Vec::new();
    }
    let n = path.len() - reached;
    let mut arrivals: Vec<(f64, f64)> = Vec::with_capacity(n);
    let mut starts: Vec<f64> = Vec::with_capacity(n);
    let mut out = Vec::new();
    for (k, s) in path[reached..].iter().enumerate() {
        if k == 0 {
            arrivals.push((now, 0.0));
            starts.push(starts_at.max(now));
            continue;
        }
        let (a, var) = s
            .after
            .iter()
            .filter(|&&j| j >= reached && j - reached < k)
            .map(|&j| {
                let p = &path[j];
                let jj = j - reached;
                (
                    starts[jj] + p.exec_seconds + p.overhead_seconds,
                    arrivals[jj].1 + p.exec_std_seconds.powi(2),
                )
            })
            .fold((now, 0.0), |b, x| if x.0 > b.0 { x } else { b });
        let lead = s.cold_start_seconds + margin.base_seconds + margin.z * var.sqrt();
        let at = (a - lead).max(now);
        if !s.warm {
            out.push(PrewarmAction {
                stage: s.stage.clone(),
                at_seconds: at,
                replicas: s.replicas.max(1),
            });
        }
        let ready = if s.warm {
            now
        } else {
            at + s.cold_start_seconds
        };
        arrivals.push((a, var));
        starts.push(a.max(ready));
    }
    out
}

/// What to do when a run took a branch the path did not predict.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replan {
    /// Stages warmed for the abandoned branch: let them go (after their keep-alive).
    pub release: Vec<String>,
    /// The schedule for the stages of the new path that are not warm yet.
    pub warm: Vec<PrewarmAction>,
}

/// Re-plans at `now` from the branch actually taken. `new_path` is the most likely path
/// from the stage just reached (its first stage's input arrives at `now`); `warmed` are
/// the stages scaled up for this run so far and not used yet.
pub fn replan(
    policy: PrewarmPolicy,
    warmed: &[String],
    new_path: &[PathStage],
    now: f64,
    margin: Margin,
) -> Replan {
    let release = warmed
        .iter()
        .filter(|w| !new_path.iter().any(|s| &s.stage == *w))
        .cloned()
        .collect();
    let pending: Vec<PathStage> = new_path
        .iter()
        .map(|s| PathStage {
            warm: s.warm || warmed.contains(&s.stage),
            ..s.clone()
        })
        .collect();
    Replan {
        release,
        warm: schedule(policy, &pending, now, margin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn chain(stages: &[(f64, f64)]) -> Vec<PathStage> {
        stages
            .iter()
            .enumerate()
            .map(|(k, &(exec, cold))| PathStage {
                stage: format!("s{k}"),
                after: if k == 0 { vec![] } else { vec![k - 1] },
                exec_seconds: exec,
                exec_std_seconds: 0.0,
                overhead_seconds: 0.1,
                cold_start_seconds: cold,
                replicas: 1,
                warm: false,
            })
            .collect()
    }

    #[test]
    fn jit_by_hand() {
        // Three stages of 4 s, 3 s, 5 s with 2 s cold starts and 0.1 s overhead, from
        // t0 = 100. s0 is cold: it starts at 102, so s1's input arrives at 106.1 and
        // s2's at 109.2.
        let path = chain(&[(4.0, 2.0), (3.0, 2.0), (5.0, 2.0)]);
        let a = expected_arrivals(&path, 100.0);
        for (got, want) in a.iter().zip([100.0, 106.1, 109.2]) {
            assert!((got.0 - want).abs() < 1e-9, "{a:?}");
        }
        let s = jit_schedule(&path, 100.0, Margin::fixed(0.5));
        let at: Vec<f64> = s.iter().map(|x| x.at_seconds).collect();
        // s0: max(100, 100 - 2.5); s1: 106.1 - 2.5; s2: 109.2 - 2.5.
        assert!((at[0] - 100.0).abs() < 1e-9);
        assert!((at[1] - 103.6).abs() < 1e-9);
        assert!((at[2] - 106.7).abs() < 1e-9);
        // With s0 warm, the arrivals are Xanadu's sums.
        let mut warm = path.clone();
        warm[0].warm = true;
        let a = expected_arrivals(&warm, 100.0);
        assert!((a[2].0 - 107.2).abs() < 1e-9);
        assert!(
            speculative_schedule(&path, 100.0)
                .iter()
                .all(|x| x.at_seconds == 100.0)
        );
        assert!(schedule(PrewarmPolicy::None, &path, 100.0, Margin::default()).is_empty());
    }

    #[test]
    fn margin_grows_with_upstream_spread() {
        let mut path = chain(&[(4.0, 1.0), (4.0, 1.0), (4.0, 1.0)]);
        path[0].exec_std_seconds = 0.3;
        path[1].exec_std_seconds = 0.4;
        let s = jit_schedule(
            &path,
            0.0,
            Margin {
                base_seconds: 0.0,
                z: 1.0,
            },
        );
        // s2's input: s0 starts at 1 (cold), so 1 + 4.1 + 4.1 = 9.2; its sigma is
        // sqrt(0.3^2 + 0.4^2) = 0.5: 9.2 - 1 - 0.5.
        assert!((s[2].at_seconds - 7.7).abs() < 1e-9);
    }

    #[test]
    fn reschedule_uses_the_actual_arrival() {
        let path = chain(&[(4.0, 2.0), (3.0, 2.0), (5.0, 2.0)]);
        // s1's input came at 110 (later than the 106.1 expected) and s1 was warm: s2's
        // input is due at 113.1, so s2 is warmed at 113.1 - 2 - 0.5.
        let s = reschedule(&path, 1, 110.0, 110.0, Margin::fixed(0.5));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].stage, "s2");
        assert!((s[0].at_seconds - 110.6).abs() < 1e-9);
        // s1's instance is ready only at 111.5: s2 at 112.1.
        let s = reschedule(&path, 1, 110.0, 111.5, Margin::fixed(0.5));
        assert!((s[0].at_seconds - 112.1).abs() < 1e-9);
        assert!(reschedule(&path, 3, 0.0, 0.0, Margin::default()).is_empty());
    }

    #[test]
    fn replan_releases_the_abandoned_branch() {
        let mut new_path = chain(&[(2.0, 2.0), (2.0, 2.0)]);
        new_path[0].stage = "b".into();
        new_path[1].stage = "b2".into();
        let warmed = vec!["a".to_string(), "a2".to_string(), "b2".to_string()];
        let r = replan(
            PrewarmPolicy::JustInTime,
            &warmed,
            &new_path,
            50.0,
            Margin::fixed(0.0),
        );
        assert_eq!(r.release, vec!["a", "a2"]);
        // b is needed now (cold); b2 is already warm.
        assert_eq!(r.warm.len(), 1);
        assert_eq!(r.warm[0].stage, "b");
        assert_eq!(r.warm[0].at_seconds, 50.0);
    }
}
