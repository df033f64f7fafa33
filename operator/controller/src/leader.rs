//! Leader election through a coordination.k8s.io Lease, so two replicas are safe: only
//! the holder runs the controllers (and so writes anything but the Lease).
//!
//! The holder renews every `renew` interval; another replica takes the Lease over only
//! after `renewTime + leaseDurationSeconds` has passed. Updates carry the Lease's
//! resourceVersion, so two replicas racing for an expired Lease cannot both win (one
//! gets 409 Conflict). A holder that cannot renew within the lease duration stops
//! (the process exits and is restarted), so it never writes while another leads.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
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

pub fn step(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Step {
    let Some(spec) = spec else {
        return Step::Acquire;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == identity => Step::Renew,
        None | Some("") => Step::Acquire,
        Some(_) => {
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0);
            let duration =
                SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            match renewed.and_then(|r| r.checked_add(duration).ok()) {
                Some(expiry) if expiry > now => Step::Wait,
                _ => Step::Acquire,
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

/// One attempt to acquire or renew. Ok(true): we hold the Lease now.
pub async fn try_hold(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool> {
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
    let acquire = match step(existing.spec.as_ref(), &cfg.identity, now) {
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
    loop {
        match try_hold(api, cfg).await {
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

/// Renews the Lease until that fails for longer than the lease duration (or another
/// replica holds it); returns the error that ends the leadership.
pub async fn keep(api: &Api<Lease>, cfg: &LeaseConfig) -> Error {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.renew).await;
        match try_hold(api, cfg).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                return Error::LostLease(format!("{} is held by another replica", cfg.name));
            }
            Err(e) => {
                warn!(error = %e, "renewing the Lease");
                // Stop before the Lease could expire, so no two replicas lead at once.
                if last_ok.elapsed() + cfg.renew >= cfg.lease_duration {
                    return Error::LostLease(format!("{}: could not renew: {e}", cfg.name));
                }
            }
        }
    }
}

/// Gives the Lease up on shutdown so another replica need not wait for it to expire.
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
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
    fn takes_over_only_an_expired_or_free_lease() {
        assert_eq!(step(None, "a", t(0)), Step::Acquire);
        assert_eq!(step(Some(&held_by("a", 0)), "a", t(100)), Step::Renew);
        assert_eq!(step(Some(&held_by("b", 0)), "a", t(14)), Step::Wait);
        assert_eq!(step(Some(&held_by("b", 0)), "a", t(15)), Step::Acquire);
        assert_eq!(step(Some(&LeaseSpec::default()), "a", t(0)), Step::Acquire);
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
