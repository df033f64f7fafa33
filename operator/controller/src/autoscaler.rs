//! The Knative-like autoscaler: a pure function of what a stage has in flight, what was
//! asked to be pre-warmed and the time (passed in, never read here).
//!
//! - Wanted instances: `ceil(in_flight / target_concurrency)`, and at least the
//!   replicas of every pre-warm request whose window is open (from its start, which is
//!   the requested ready time minus the stage's cold start, until the ready time plus
//!   the scale-to-zero delay).
//! - Clamped to `[min, max]`; a durable stage's minimum is at least one.
//! - Scaling down to a positive count is immediate (the runtime drains in-flight
//!   invocations on SIGTERM). Scaling to zero waits until the stage has been idle for the
//!   workflow's `scaleToZeroAfter`; until then the current replicas are kept, unless
//!   another stage of the workflow has pods the scheduler cannot place: idle instances
//!   then give their room to work that is waiting (`reclaim_idle`).
//! - The decision says when to look again (a pre-warm window opening or closing, the
//!   idle delay running out), so the reconciler can requeue exactly then.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// A pre-warm request, turned into a window by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrewarmWindow {
    /// When to start scaling up (the ready time minus the stage's cold start).
    pub start: Timestamp,
    /// When the instances should be ready.
    pub ready_by: Timestamp,
    pub replicas: u32,
}

/// What the autoscaler knows about one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleInput {
    pub min_replicas: u32,
    pub max_replicas: Option<u32>,
    /// Invocations one instance runs at once.
    pub target_concurrency: u32,
    /// Durable stages keep at least one instance; ephemeral ones scale to zero.
    pub durable: bool,
    pub in_flight: u32,
    /// Last time the stage had invocations in flight (or was pre-warmed), if known.
    pub last_active: Option<Timestamp>,
    pub scale_to_zero_after: Duration,
    pub prewarm: Vec<PrewarmWindow>,
    /// Replicas the Deployment has now (None: it does not exist yet).
    pub current: Option<u32>,
    /// Another stage waits for room the scheduler cannot find: replicas kept only for
    /// the idle delay go now, and so do those of a pre-warm whose ready time has passed
    /// (those the load, the minimum or a pre-warm still ahead of its ready time asks
    /// for stay).
    pub reclaim_idle: bool,
}

/// Why the replicas are what they are (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleReason {
    Load,
    Prewarm,
    IdleGrace,
    Idle,
    /// Idle replicas let go before their delay: another stage needs the room.
    Reclaimed,
    Minimum,
    Maximum,
}

impl ScaleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleReason::Load => "load",
            ScaleReason::Prewarm => "prewarm",
            ScaleReason::IdleGrace => "idle_grace",
            ScaleReason::Idle => "idle",
            ScaleReason::Reclaimed => "reclaimed",
            ScaleReason::Minimum => "minimum",
            ScaleReason::Maximum => "maximum",
        }
    }
}

/// The autoscaler's answer for one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleDecision {
    pub replicas: u32,
    pub reason: ScaleReason,
    /// When the answer may change without any new input.
    pub recheck_at: Option<Timestamp>,
}

/// A stage's last activity when it has had none: its replicas came from pre-warming.
pub const NEVER_ACTIVE: Timestamp = Timestamp::MIN;

pub fn plus(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// Decides the replicas of one stage at time `now`.
pub fn decide(input: &ScaleInput, now: Timestamp) -> ScaleDecision {
    let target = input.target_concurrency.max(1);
    let min = if input.durable {
        input.min_replicas.max(1)
    } else {
        input.min_replicas
    };
    let max = input
        .max_replicas
        .unwrap_or(vflow_planner::DEFAULT_MAX_INSTANCES)
        .max(min)
        .max(1);
    let mut recheck: Option<Timestamp> = None;
    let mut soonest = |t: Timestamp| {
        if t > now {
            recheck = Some(recheck.map_or(t, |r: Timestamp| r.min(t)));
        }
    };

    let from_load = input.in_flight.div_ceil(target);
    let mut from_prewarm = 0;
    let mut prewarm_reclaimed = false;
    for w in &input.prewarm {
        let end = plus(w.ready_by, input.scale_to_zero_after);
        if w.start <= now && now < end {
            // Past its ready time a window only waits for a late input, as an idle
            // stage waits out its delay: room that waiting work wants takes it alike.
            if input.reclaim_idle && now >= w.ready_by {
                prewarm_reclaimed = true;
                continue;
            }
            from_prewarm = from_prewarm.max(w.replicas);
            soonest(end);
        } else if w.start > now {
            soonest(w.start);
        }
    }
    let (mut wanted, mut reason) = if from_load == 0 && from_prewarm == 0 {
        (0, ScaleReason::Idle)
    } else if from_prewarm > from_load {
        (from_prewarm, ScaleReason::Prewarm)
    } else {
        (from_load, ScaleReason::Load)
    };

    if wanted == 0 {
        let current = input.current.unwrap_or(0);
        if prewarm_reclaimed && current > 0 {
            reason = ScaleReason::Reclaimed;
        }
        if let Some(last) = input.last_active {
            let idle_until = plus(last, input.scale_to_zero_after);
            if now < idle_until && current > 0 {
                if input.reclaim_idle {
                    reason = ScaleReason::Reclaimed;
                } else {
                    wanted = current;
                    reason = ScaleReason::IdleGrace;
                    soonest(idle_until);
                }
            }
        }
    }
    if wanted < min {
        wanted = min;
        reason = ScaleReason::Minimum;
    }
    if wanted > max {
        wanted = max;
        reason = ScaleReason::Maximum;
    }
    ScaleDecision {
        replicas: wanted,
        reason,
        recheck_at: recheck,
    }
}

/// The last time a stage was active, kept by the reconciler between calls: `now` while
/// invocations are in flight and at the moment they drop to zero. Without a memory (after
/// a restart) a stage that still has replicas counts as active now, so a restart never
/// scales a stage to zero earlier than its delay; unless a pre-warm request explains
/// them (`prewarmed`): then it was never active ([`NEVER_ACTIVE`]), and once the request
/// goes (its window ends, or a run withdraws it: a branch not taken) nothing holds them.
pub fn last_active(
    previous: Option<(u32, Timestamp)>,
    in_flight: u32,
    current_replicas: u32,
    prewarmed: bool,
    now: Timestamp,
) -> Option<Timestamp> {
    match previous {
        None if in_flight > 0 => Some(now),
        None if prewarmed => Some(NEVER_ACTIVE),
        None if current_replicas > 0 => Some(now),
        None => None,
        Some((prev_in_flight, _)) if in_flight > 0 || prev_in_flight > 0 => Some(now),
        Some((_, t)) => Some(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    fn ephemeral() -> ScaleInput {
        ScaleInput {
            min_replicas: 0,
            max_replicas: Some(10),
            target_concurrency: 2,
            durable: false,
            in_flight: 0,
            last_active: None,
            scale_to_zero_after: Duration::from_secs(60),
            prewarm: vec![],
            current: Some(0),
            reclaim_idle: false,
        }
    }

    #[test]
    fn idle_replicas_give_their_room_to_a_waiting_stage_but_not_what_is_asked_for() {
        let mut i = ephemeral();
        i.current = Some(3);
        i.last_active = Some(t(0));
        i.reclaim_idle = true;
        let d = decide(&i, t(30));
        assert_eq!(
            (d.replicas, d.reason, d.recheck_at),
            (0, ScaleReason::Reclaimed, None)
        );
        // Load, a pre-warm before its ready time and the minimum are not idle room.
        i.in_flight = 3;
        assert_eq!(decide(&i, t(30)).replicas, 2);
        i.in_flight = 0;
        i.prewarm = vec![PrewarmWindow {
            start: t(20),
            ready_by: t(35),
            replicas: 1,
        }];
        assert_eq!(decide(&i, t(30)).replicas, 1);
        i.prewarm.clear();
        i.durable = true;
        assert_eq!(
            (decide(&i, t(30)).replicas, decide(&i, t(30)).reason),
            (1, ScaleReason::Minimum)
        );
    }

    #[test]
    fn a_prewarm_past_its_ready_time_gives_its_room_to_a_waiting_stage() {
        let mut i = ephemeral();
        i.prewarm = vec![PrewarmWindow {
            start: t(10),
            ready_by: t(15),
            replicas: 2,
        }];
        i.current = Some(2);
        i.last_active = Some(NEVER_ACTIVE);
        i.reclaim_idle = true;
        // Before the ready time the input is still due: kept.
        assert_eq!(
            (decide(&i, t(14)).replicas, decide(&i, t(14)).reason),
            (2, ScaleReason::Prewarm)
        );
        // After it, the window waits for a late input: room wanted elsewhere takes it.
        let d = decide(&i, t(16));
        assert_eq!((d.replicas, d.reason), (0, ScaleReason::Reclaimed));
        // Without that want the window holds them until its end.
        i.reclaim_idle = false;
        let d = decide(&i, t(16));
        assert_eq!(
            (d.replicas, d.reason, d.recheck_at),
            (2, ScaleReason::Prewarm, Some(t(75)))
        );
        // Load is never reclaimed.
        i.reclaim_idle = true;
        i.in_flight = 1;
        assert_eq!(decide(&i, t(16)).replicas, 1);
    }

    #[test]
    fn scales_with_in_flight_over_target_concurrency() {
        let mut i = ephemeral();
        i.in_flight = 5;
        let d = decide(&i, t(0));
        assert_eq!((d.replicas, d.reason), (3, ScaleReason::Load));
        i.in_flight = 100;
        let d = decide(&i, t(0));
        assert_eq!((d.replicas, d.reason), (10, ScaleReason::Maximum));
    }

    #[test]
    fn ephemeral_stage_waits_the_delay_before_scaling_to_zero() {
        let mut i = ephemeral();
        i.current = Some(3);
        i.last_active = Some(t(0));
        let d = decide(&i, t(30));
        assert_eq!(d.replicas, 3, "still inside the idle delay");
        assert_eq!(d.reason, ScaleReason::IdleGrace);
        assert_eq!(d.recheck_at, Some(t(60)));
        let d = decide(&i, t(60));
        assert_eq!(
            (d.replicas, d.reason, d.recheck_at),
            (0, ScaleReason::Idle, None)
        );
    }

    #[test]
    fn a_timeline_of_load_then_idle() {
        // in-flight over time, with the reconciler's memory of the last activity.
        let timeline = [(0, 4, 2), (10, 1, 1), (20, 0, 1), (79, 0, 1), (80, 0, 0)];
        let mut memory: Option<(u32, Timestamp)> = None;
        let mut current = 0;
        for (at, in_flight, expect) in timeline {
            let now = t(at);
            let last = last_active(memory, in_flight, current, false, now);
            memory = last.map(|l| (in_flight, l));
            let i = ScaleInput {
                in_flight,
                last_active: last,
                current: Some(current),
                ..ephemeral()
            };
            current = decide(&i, now).replicas;
            assert_eq!(current, expect, "at {at}s with {in_flight} in flight");
        }
    }

    #[test]
    fn durable_stage_stays_at_its_minimum() {
        let mut i = ephemeral();
        i.durable = true;
        i.min_replicas = 0;
        i.last_active = Some(t(-1000));
        let d = decide(&i, t(0));
        assert_eq!((d.replicas, d.reason), (1, ScaleReason::Minimum));
        i.min_replicas = 2;
        assert_eq!(decide(&i, t(0)).replicas, 2);
        i.in_flight = 9;
        assert_eq!(decide(&i, t(0)).replicas, 5);
    }

    #[test]
    fn prewarm_opens_at_its_start_and_closes_after_the_delay() {
        let mut i = ephemeral();
        i.prewarm = vec![PrewarmWindow {
            start: t(10),
            ready_by: t(15),
            replicas: 4,
        }];
        let d = decide(&i, t(0));
        assert_eq!((d.replicas, d.recheck_at), (0, Some(t(10))));
        let d = decide(&i, t(10));
        assert_eq!((d.replicas, d.reason), (4, ScaleReason::Prewarm));
        assert_eq!(d.recheck_at, Some(t(75)));
        i.in_flight = 20;
        assert_eq!(decide(&i, t(12)).reason, ScaleReason::Load);
        i.in_flight = 0;
        i.current = Some(4);
        let d = decide(&i, t(75));
        assert_eq!(d.replicas, 0, "window closed and never active");
    }

    #[test]
    fn restart_without_memory_keeps_running_replicas_for_the_delay() {
        let last = last_active(None, 0, 2, false, t(0));
        assert_eq!(last, Some(t(0)));
        assert_eq!(last_active(None, 0, 0, false, t(0)), None);
        assert_eq!(last_active(Some((3, t(-5))), 0, 2, false, t(0)), Some(t(0)));
        assert_eq!(
            last_active(Some((0, t(-5))), 0, 2, false, t(0)),
            Some(t(-5))
        );
    }

    #[test]
    fn replicas_a_withdrawn_pre_warm_asked_for_go_at_once() {
        // Scaled up by a pre-warm request (no invocation yet): never active.
        let mut memory = None;
        let mut current = 0;
        let window = PrewarmWindow {
            start: t(0),
            ready_by: t(2),
            replicas: 2,
        };
        for at in [0, 1, 2] {
            let last = last_active(memory, 0, current, true, t(at));
            assert_eq!(last, Some(NEVER_ACTIVE));
            memory = last.map(|l| (0, l));
            let i = ScaleInput {
                last_active: last,
                current: Some(current),
                prewarm: vec![window],
                ..ephemeral()
            };
            current = decide(&i, t(at)).replicas;
            assert_eq!(current, 2);
        }
        // The branch was not taken: the request is withdrawn, the replicas go now, not
        // a scale-to-zero delay later.
        let last = last_active(memory, 0, current, false, t(3));
        let i = ScaleInput {
            last_active: last,
            current: Some(current),
            ..ephemeral()
        };
        assert_eq!(decide(&i, t(3)).replicas, 0);
        // Had it served an invocation, its delay would hold it.
        let last = last_active(Some((1, t(2))), 0, 2, false, t(3));
        let i = ScaleInput {
            last_active: last,
            current: Some(2),
            ..ephemeral()
        };
        assert_eq!(decide(&i, t(3)).replicas, 2);
    }
}
