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

use crate::rng::Rng;

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
    /// Time from "scale up" to "instance ready" (median).
    pub cold_start_seconds: f64,
    /// Standard deviation of the cold start (0 when unknown).
    #[serde(default)]
    pub cold_start_std_seconds: f64,
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

/// What is known, at some instant, about one stage of the path in a running run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageProgress {
    /// Its input arrived.
    pub input_at: Option<f64>,
    /// It is running since (its input and an instance were both there).
    pub started_at: Option<f64>,
    /// It finished.
    pub finished_at: Option<f64>,
    /// An instance was requested for it (pre-warm issued, or on demand).
    pub requested_at: Option<f64>,
    /// That instance is ready.
    pub ready_at: Option<f64>,
}

/// How the progress-aware schedule trades lateness against idle instances.
///
/// An instance requested at `t` is ready at `t + C`; the input arrives at `A`. Asking
/// at `t` idles `(A - C - t)+` instance-seconds and delays the run by `(t + C - A)+`.
/// With one late second weighing `w` idle instance-seconds, the best `t` is the
/// `1 / (1 + w)` quantile of `A - C` (the newsvendor's critical fractile);
/// `late_quantile` is that probability of being late.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Risk {
    /// Accepted probability that the input arrives before the instance is ready.
    pub late_quantile: f64,
    /// Monte Carlo samples per evaluation (the same random numbers at every instant).
    pub samples: usize,
    /// Resolution of the issue times.
    pub step_seconds: f64,
}

impl Default for Risk {
    fn default() -> Self {
        // One late second counts as much as about nine idle instance-seconds: a late
        // input delays the whole run (and every stage after it), an early instance
        // only holds its own resources.
        Risk {
            late_quantile: 0.1,
            samples: 128,
            step_seconds: 0.05,
        }
    }
}

/// sigma of the log-normal with this median and standard deviation:
/// `s^2 = m^2 x (x - 1)` with `x = exp(sigma^2)`.
fn log_sigma(median: f64, std: f64) -> f64 {
    if median <= 0.0 || std <= 0.0 {
        return 0.0;
    }
    let r = std / median;
    let x = (1.0 + (1.0 + 4.0 * r * r).sqrt()) / 2.0;
    x.ln().max(0.0).sqrt()
}

/// Standard normal CDF (Abramowitz and Stegun 7.1.26 on erf, |error| < 1.5e-7).
fn norm_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// Inverse standard normal CDF (Acklam's rational approximation, |rel. error| < 1.2e-9).
fn norm_inv(p: f64) -> f64 {
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let lo = 0.024_25;
    if p < lo {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - lo {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

/// A log-normal time `median * exp(sigma z)`, drawn at the uniform `u`, given that it
/// is longer than `elapsed` (what "still running after `elapsed`" tells).
fn conditional_draw(median: f64, sigma: f64, u: f64, elapsed: f64) -> f64 {
    if sigma <= 0.0 || median <= 0.0 {
        return median.max(elapsed);
    }
    let floor = if elapsed > 0.0 {
        norm_cdf((elapsed / median).ln() / sigma)
    } else {
        0.0
    };
    let p = floor + u * (1.0 - floor);
    (median * (sigma * norm_inv(p)).exp()).max(elapsed)
}

/// Progress-aware just-in-time: the next instance requests to make for a run, and
/// when, from what is known about it at `now` (`progress`, one per path stage).
///
/// The arrival `A_j` of stage j's input is a random variable: the stages running now
/// finish after a log-normal time *given that they have run so long* (a stage 1.8 s
/// into a 2 s median has little left, one 3 s in may have a long tail), stages not
/// started yet add their whole log-normal times, and an instance still starting is
/// ready after its cold start given that it has not been ready so far. A stage is
/// requested at the first instant `t >= now` at which, if nothing new is heard by
/// `t`, `P(A_j - C_j <= t) >= late_quantile`: the latest time that keeps the chance
/// of a late instance at the accepted risk (see [`Risk`]).
///
/// Returns the request(s) due first (all at the same `at_seconds`), or nothing when
/// no stage is left to request. The caller issues them and calls again at that time,
/// and on every progress event (an input arriving, a stage starting), which replaces
/// what it had planned: the decision is taken where the most is known. Against a
/// fixed margin this (1) uses each stage's own spread, cold-start spread included,
/// (2) uses how long the running stage has already run, and (3) decides late, with
/// the run's actual progress. Deterministic: the random numbers come from a fixed
/// seed.
pub fn progress_schedule(
    path: &[PathStage],
    progress: &[StageProgress],
    now: f64,
    risk: Risk,
) -> Vec<PrewarmAction> {
    let n = path.len();
    let known = |k: usize| progress.get(k).copied().unwrap_or_default();
    // Stages to decide: not warm, nothing requested, input not here (on demand then).
    let is_pending: Vec<bool> = (0..n)
        .map(|k| {
            let p = known(k);
            !path[k].warm
                && p.requested_at.is_none()
                && p.ready_at.is_none()
                && p.input_at.is_none()
                && p.started_at.is_none()
                && p.finished_at.is_none()
        })
        .collect();
    if !is_pending.iter().any(|&x| x) {
        return Vec::new();
    }
    let exec_sigma: Vec<f64> = path
        .iter()
        .map(|s| log_sigma(s.exec_seconds, s.exec_std_seconds))
        .collect();
    let cold_sigma: Vec<f64> = path
        .iter()
        .map(|s| log_sigma(s.cold_start_seconds, s.cold_start_std_seconds))
        .collect();
    let samples = risk.samples.max(1);
    // Common random numbers, per sample and stage: (exec uniform, cold uniform,
    // unconditional exec, unconditional cold start).
    let mut rng = Rng::new(0x5EED_2020_0000 ^ n as u64);
    let draws: Vec<(f64, f64, f64, f64)> = (0..samples * n)
        .map(|i| {
            let s = &path[i % n];
            let (ue, uc) = (rng.uniform(), rng.uniform());
            (
                ue,
                uc,
                s.exec_seconds * (exec_sigma[i % n] * norm_inv(ue)).exp(),
                s.cold_start_seconds * (cold_sigma[i % n] * norm_inv(uc)).exp(),
            )
        })
        .collect();
    // The news horizon: by then (p99.99) the running stages have finished and the
    // instances awaited have started their stages, and the caller has called again.
    // A stage not due by then is decided then. With nothing in flight: the rest of
    // the path at its p99.99 times.
    let hi = |m: f64, sg: f64| m * (3.7 * sg).exp();
    let lo = |m: f64, sg: f64| m * (-3.7 * sg).exp();
    let news = (0..n)
        .filter_map(|k| {
            let p = known(k);
            if p.finished_at.is_some() {
                None
            } else if let Some(st) = p.started_at {
                Some((st + hi(path[k].exec_seconds, exec_sigma[k])).max(now))
            } else if p.input_at.is_some() {
                let r = p.ready_at.or(p.requested_at).unwrap_or(now);
                Some((r + hi(path[k].cold_start_seconds, cold_sigma[k])).max(now))
            } else {
                None
            }
        })
        .fold(f64::INFINITY, f64::min);
    let horizon = if news.is_finite() {
        news
    } else {
        now + path
            .iter()
            .zip(&exec_sigma)
            .map(|(s, &sg)| hi(s.exec_seconds, sg) + s.overhead_seconds)
            .sum::<f64>()
            + 1.0
    };
    // Stages that cannot be due before the horizon (their input cannot arrive early
    // enough even at the p0.01 times) are left for a later call.
    let mut lb_finish = vec![0.0; n];
    let mut reachable = vec![false; n];
    for k in 0..n {
        let s = &path[k];
        let p = known(k);
        let arrival = p.input_at.unwrap_or_else(|| {
            s.after
                .iter()
                .filter(|&&j| j < k)
                .map(|&j| lb_finish[j] + path[j].overhead_seconds)
                .fold(now, f64::max)
        });
        lb_finish[k] = if let Some(f) = p.finished_at {
            f
        } else if let Some(st) = p.started_at {
            (st + lo(s.exec_seconds, exec_sigma[k])).max(now)
        } else {
            arrival + lo(s.exec_seconds, exec_sigma[k])
        };
        reachable[k] =
            is_pending[k] && arrival - hi(s.cold_start_seconds, cold_sigma[k]) <= horizon + 1e-9;
    }
    let Some(last) = reachable.iter().rposition(|&x| x) else {
        return Vec::new();
    };
    let step = risk.step_seconds.max(1e-3);
    let q = risk.late_quantile.clamp(0.0, 1.0);
    let mut finish = vec![0.0; n];
    let mut slack: Vec<Vec<f64>> = vec![Vec::with_capacity(samples); n];
    // The stages due at `tau` if nothing new is heard before it.
    let mut due_at = |tau: f64| -> Vec<usize> {
        for v in &mut slack {
            v.clear();
        }
        for i in 0..samples {
            let d = &draws[i * n..(i + 1) * n];
            for k in 0..=last {
                let s = &path[k];
                let p = known(k);
                let (u_exec, u_cold, exec, cold) = d[k];
                finish[k] = if let Some(f) = p.finished_at {
                    f
                } else if let Some(st) = p.started_at {
                    st + conditional_draw(s.exec_seconds, exec_sigma[k], u_exec, tau - st)
                } else {
                    let arrival = p.input_at.unwrap_or_else(|| {
                        s.after
                            .iter()
                            .filter(|&&j| j < k)
                            .map(|&j| finish[j] + path[j].overhead_seconds)
                            .fold(tau, f64::max)
                    });
                    let ready = if s.warm {
                        f64::NEG_INFINITY
                    } else if let Some(r) = p.ready_at {
                        r
                    } else if let Some(r) = p.requested_at {
                        r + conditional_draw(s.cold_start_seconds, cold_sigma[k], u_cold, tau - r)
                    } else {
                        // Not requested yet: requested in time (that is the plan).
                        f64::NEG_INFINITY
                    };
                    if reachable[k] {
                        slack[k].push(arrival - cold);
                    }
                    arrival.max(ready) + exec
                };
            }
        }
        (0..=last)
            .filter(|&k| reachable[k])
            .filter(|&k| {
                let v = &mut slack[k];
                let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
                let (_, x, _) = v.select_nth_unstable_by(rank, f64::total_cmp);
                *x <= tau + 1e-9
            })
            .collect()
    };
    // Coarse steps until something is due, then halve back to `step` (the first due
    // instant, assuming "due" does not flicker within one coarse step).
    let coarse = 8.0 * step;
    let mut prev = now;
    let mut tau = now;
    let mut due = due_at(tau);
    while due.is_empty() {
        if tau > horizon {
            return Vec::new();
        }
        prev = tau;
        tau += coarse;
        due = due_at(tau);
    }
    while tau - prev > step * 1.01 {
        let mid = (prev + tau) / 2.0;
        let d = due_at(mid);
        if d.is_empty() {
            prev = mid;
        } else {
            tau = mid;
            due = d;
        }
    }
    due.into_iter()
        .map(|k| PrewarmAction {
            stage: path[k].stage.clone(),
            at_seconds: tau,
            replicas: path[k].replicas.max(1),
        })
        .collect()
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
                cold_start_std_seconds: 0.0,
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
    fn progress_schedule_by_hand() {
        // No spread: s0 (4 s) cold from t0 = 100 with a 2 s cold start starts at 102
        // and ends at 106; s1's input at 106.1, so s1 (2 s cold start) is due at 104.1,
        // after s0's start (news by 102 at the latest): nothing to decide yet.
        let path = chain(&[(4.0, 2.0), (3.0, 2.0), (5.0, 2.0)]);
        let mut known = vec![StageProgress::default(); 3];
        known[0].input_at = Some(100.0);
        known[0].requested_at = Some(100.0);
        let r = Risk::default();
        assert!(progress_schedule(&path, &known, 100.0, r).is_empty());
        // s0 started at 102: s1 due at 104.1 (on the 0.05 s grid). Only what is due
        // first comes back.
        known[0].started_at = Some(102.0);
        known[0].ready_at = Some(102.0);
        let s = progress_schedule(&path, &known, 102.0, r);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].stage, "s1");
        assert!(
            (s[0].at_seconds - 104.1).abs() <= r.step_seconds + 1e-9,
            "{s:?}"
        );
        // s2's input at 106.1 + 3.1 = 109.2, due at 107.2: after s1's input (106.1).
        known[1].requested_at = Some(104.1);
        assert!(progress_schedule(&path, &known, 104.1, r).is_empty());
        known[0].finished_at = Some(106.0);
        known[1].input_at = Some(106.1);
        known[1].started_at = Some(106.1);
        known[1].ready_at = Some(106.1);
        let s = progress_schedule(&path, &known, 106.1, r);
        assert_eq!(s[0].stage, "s2");
        assert!(
            (s[0].at_seconds - 107.2).abs() <= r.step_seconds + 1e-9,
            "{s:?}"
        );
        // Stages already asked for are never scheduled again.
        known[2].requested_at = Some(107.2);
        assert!(progress_schedule(&path, &known, 107.2, r).is_empty());
    }

    #[test]
    fn progress_schedule_leads_more_with_more_spread() {
        let mut path = chain(&[(2.0, 2.0), (2.0, 2.0)]);
        let mut known = vec![StageProgress::default(); 2];
        known[0].input_at = Some(0.0);
        known[0].started_at = Some(0.0);
        known[0].ready_at = Some(0.0);
        let at = |p: &[PathStage], k: &[StageProgress]| {
            progress_schedule(p, k, 0.0, Risk::default())[0].at_seconds
        };
        // No spread: s1's input at 2.1, due at 0.1.
        assert!((at(&path, &known) - 0.1).abs() <= 0.05 + 1e-9);
        path[0].exec_std_seconds = 0.5;
        path[1].cold_start_std_seconds = 0.3;
        // With spread, at the 10% risk, earlier: now.
        assert_eq!(at(&path, &known), 0.0);
        // Having run 1.9 s of a 2 s median says it ends soon: s1 is due at once.
        known[0].started_at = Some(-1.9);
        assert_eq!(at(&path, &known), 0.0);
    }

    #[test]
    fn normal_helpers() {
        for x in [-3.0, -1.0, 0.0, 0.5, 2.0] {
            assert!((norm_inv(norm_cdf(x)) - x).abs() < 1e-3, "{x}");
        }
        assert!((norm_cdf(1.644_853_626_951_472) - 0.95).abs() < 1e-6);
        // Median 2, sd 0.5 back from the sigma found.
        let sg = log_sigma(2.0, 0.5);
        let mean = 2.0 * (sg * sg / 2.0).exp();
        let sd = mean * ((sg * sg).exp() - 1.0).sqrt();
        assert!((sd - 0.5).abs() < 1e-9);
        // Conditional draws never end before the time already run.
        assert!(conditional_draw(2.0, 0.25, 0.0, 3.0) >= 3.0);
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
