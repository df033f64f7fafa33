//! Leader election through a coordination.k8s.io Lease, so two replicas are safe: only
//! the holder runs the controllers (and so writes anything but the Lease).
//!
//! The holder renews every `renew` interval, on a task of its own, each try with a
//! deadline; a holder that has not renewed by `lease duration - renew` after its last
//! renewal began stops leading (everything that writes is dropped and its spawned
//! tasks aborted, see vflow_runs::fence), before any other replica may take over.
//! Another replica takes the Lease over only after it has seen the same holder and
//! renew time, unchanged, for a whole lease duration by its own clock (as client-go
//! does): clocks that disagree cannot make it take a Lease early. Updates carry the
//! Lease's resourceVersion, so two replicas racing for an expired Lease cannot both
//! win (one gets 409 Conflict).

use std::time::Duration;

use tokio::time::Instant;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, api::PostParams};
use tracing::{info, warn};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew: Duration,
}

/// What to do with the Lease as it is now (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it over.
    Acquire,
    /// Someone else holds it.
    Wait,
}

/// What this replica last saw of the Lease: its holder and renew time, and when (by
/// this replica's clock) that last changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    record: (Option<String>, Option<Timestamp>, Option<Timestamp>),
    since: Instant,
}

impl Seen {
    /// Notes the Lease as read at `at`; keeps the older time when nothing changed.
    pub fn observe(previous: Option<Seen>, spec: Option<&LeaseSpec>, at: Instant) -> Seen {
        let record = (
            spec.and_then(|s| s.holder_identity.clone()),
            spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            spec.and_then(|s| s.acquire_time.as_ref()).map(|t| t.0),
        );
        match previous {
            Some(p) if p.record == record => p,
            _ => Seen { record, since: at },
        }
    }
}

/// What to do with the Lease: `seen` is how long, by this replica's clock, it has
/// looked exactly as it does now.
pub fn step(spec: Option<&LeaseSpec>, identity: &str, unchanged_for: Duration) -> Step {
    let Some(spec) = spec else {
        return Step::Acquire;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == identity => Step::Renew,
        None | Some("") => Step::Acquire,
        Some(_) => {
            let duration = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15),
            );
            if unchanged_for >= duration {
                Step::Acquire
            } else {
                Step::Wait
            }
        }
    }
}

fn spec_for(
    cfg: &LeaseConfig,
    old: Option<&LeaseSpec>,
    now: Timestamp,
    acquire: bool,
) -> LeaseSpec {
    let transitions = old.and_then(|s| s.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.lease_duration.as_secs().max(1) as i32),
        acquire_time: if acquire {
            Some(MicroTime(now))
        } else {
            old.and_then(|s| s.acquire_time.clone())
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if acquire && old.is_some() {
            transitions + 1
        } else {
            transitions
        }),
        ..LeaseSpec::default()
    }
}

/// One attempt to acquire or renew. Ok(true): we hold the Lease now. `seen` carries
/// what this replica saw of the Lease from one attempt to the next.
pub async fn try_hold(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    seen: &mut Option<Seen>,
) -> Result<bool> {
    let now = Timestamp::now();
    let existing = match api.get_opt(&cfg.name).await? {
        Some(l) => l,
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec_for(cfg, None, now, true)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        }
    };
    let observed = Seen::observe(seen.take(), existing.spec.as_ref(), Instant::now());
    let unchanged_for = observed.since.elapsed();
    *seen = Some(observed);
    let acquire = match step(existing.spec.as_ref(), &cfg.identity, unchanged_for) {
        Step::Wait => return Ok(false),
        Step::Renew => false,
        Step::Acquire => true,
    };
    let mut lease = existing.clone();
    lease.spec = Some(spec_for(cfg, existing.spec.as_ref(), now, acquire));
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Waits until this replica holds the Lease.
pub async fn acquire(api: &Api<Lease>, cfg: &LeaseConfig) {
    let mut logged = false;
    let mut seen = None;
    loop {
        let attempt = tokio::time::timeout(cfg.lease_duration, try_hold(api, cfg, &mut seen));
        match attempt.await.unwrap_or_else(|_| {
            Err(Error::LostLease(format!(
                "{}: no answer from the API server within the lease duration",
                cfg.name
            )))
        }) {
            Ok(true) => {
                info!(lease = %cfg.name, identity = %cfg.identity, "became the leader");
                return;
            }
            Ok(false) if !logged => {
                info!(lease = %cfg.name, "another replica leads; standing by");
                logged = true;
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "leader election"),
        }
        tokio::time::sleep(cfg.renew).await;
    }
}

/// Renews the Lease until that fails for too long (or another replica holds it);
/// returns the error that ends the leadership. Run it on a task of its own: busy
/// controllers must not delay a renewal.
///
/// The leadership ends `lease duration - renew` after the start of the last renewal
/// that succeeded (each try is cut off at that moment): another replica waits a whole
/// lease duration from when it saw that renewal, so this one stops first.
pub async fn keep(api: &Api<Lease>, cfg: &LeaseConfig) -> Error {
    let mut seen = None;
    let margin = cfg.renew.min(cfg.lease_duration / 2);
    let mut deadline = Instant::now() + cfg.lease_duration - margin;
    loop {
        tokio::time::sleep_until((Instant::now() + cfg.renew).min(deadline)).await;
        let started = Instant::now();
        if started >= deadline {
            return Error::LostLease(format!(
                "{}: not renewed within {:?}",
                cfg.name,
                cfg.lease_duration - margin
            ));
        }
        match tokio::time::timeout_at(deadline, try_hold(api, cfg, &mut seen)).await {
            Ok(Ok(true)) => deadline = started + cfg.lease_duration - margin,
            Ok(Ok(false)) => {
                return Error::LostLease(format!("{} is held by another replica", cfg.name));
            }
            Ok(Err(e)) => warn!(error = %e, "renewing the Lease"),
            Err(_) => {
                return Error::LostLease(format!(
                    "{}: the API server did not answer the renewal in time",
                    cfg.name
                ));
            }
        }
    }
}

/// How long a release may take before it is given up (the Lease then expires).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Gives the Lease up on shutdown so another replica need not wait for it to expire;
/// gives up after a few seconds (the Lease then expires on its own).
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    if tokio::time::timeout(RELEASE_TIMEOUT, release_now(api, cfg))
        .await
        .is_err()
    {
        warn!(lease = %cfg.name, "releasing the Lease timed out; it will expire");
    }
}

async fn release_now(api: &Api<Lease>, cfg: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(&cfg.identity) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    if let Err(e) = api.replace(&cfg.name, &PostParams::default(), &lease).await {
        warn!(error = %e, "releasing the Lease");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    fn held_by(who: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(who.into()),
            renew_time: Some(MicroTime(t(renewed))),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn takes_over_only_a_lease_seen_unchanged_for_its_duration_or_free() {
        let s = Duration::from_secs;
        assert_eq!(step(None, "a", s(0)), Step::Acquire);
        assert_eq!(step(Some(&held_by("a", 0)), "a", s(100)), Step::Renew);
        assert_eq!(step(Some(&held_by("b", 0)), "a", s(14)), Step::Wait);
        assert_eq!(step(Some(&held_by("b", 0)), "a", s(15)), Step::Acquire);
        assert_eq!(step(Some(&LeaseSpec::default()), "a", s(0)), Step::Acquire);
    }

    #[test]
    fn expiry_is_measured_by_the_local_clock_from_the_last_change() {
        // The holder's clock is an hour ahead: its renew time is in our future. What
        // counts is how long we have seen it unchanged.
        let t0 = Instant::now();
        let ahead = held_by("b", 3600);
        let first = Seen::observe(None, Some(&ahead), t0);
        let later = Seen::observe(
            Some(first.clone()),
            Some(&ahead),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(later.since, t0, "unchanged: still seen since t0");
        // Its clock an hour behind: a stale-looking renew time does not expire it
        // before a lease duration of ours has passed.
        let behind = held_by("b", -3600);
        let seen = Seen::observe(Some(later), Some(&behind), t0 + Duration::from_secs(11));
        assert_eq!(
            seen.since,
            t0 + Duration::from_secs(11),
            "a renewal restarts the wait"
        );
    }

    #[test]
    fn acquiring_counts_a_transition() {
        let cfg = LeaseConfig {
            name: "l".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
        };
        let old = held_by("b", 0);
        let s = spec_for(&cfg, Some(&old), t(20), true);
        assert_eq!(s.lease_transitions, Some(1));
        assert_eq!(s.holder_identity.as_deref(), Some("a"));
        let r = spec_for(&cfg, Some(&s), t(25), false);
        assert_eq!(r.lease_transitions, Some(1));
        assert_eq!(r.acquire_time, s.acquire_time);
    }
}
