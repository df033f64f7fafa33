//! Durable vs ephemeral (SMSE): which functions keep warm instances, and how many,
//! within a memory budget; re-planned every interval from the rates just observed.
//!
//! SMSE ranks functions by `BCR = T_f / (M_f * W)` with `T_f = lambda_f * W * C_f`,
//! the cold-start time saved by one warm instance. That overstates the benefit twice:
//! an ephemeral instance is already warm for `keep_alive` after each invocation, so
//! only arrivals after a longer gap would have been cold (`exp(-lambda * keep_alive)`
//! of them for Poisson arrivals); and a second, third... warm instance only serves the
//! arrivals that find the others busy. Here the n-th durable instance of f serves
//! `lambda W P(N >= n - 1)` invocations, N ~ Poisson(lambda E / concurrency) being
//! the number busy (what an arrival sees), and saves
//! `benefit_n = C * lambda W P(N >= n - 1) * exp(-lambda * keep_alive)` seconds.
//! Instances are taken in descending `benefit_n / (M W)` while free memory stays
//! above the reserve kept for ephemeral instances, and only while the instance would
//! avoid at least `min_reuses` cold starts in the window (SMSE: a durable instance
//! pays off after about three reuses).

use serde::{Deserialize, Serialize};

/// What one function did over the last window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionLoad {
    pub name: String,
    /// Invocations per second.
    pub rate: f64,
    pub exec_seconds: f64,
    pub cold_start_seconds: f64,
    pub memory_bytes: f64,
    /// Invocations one instance runs at once.
    pub concurrency: u32,
    /// Durable instances the function has now (the previous plan's): these stay while
    /// they avoid at least [`KEEP_SHARE`] of the reuses that pay for a new one, so a
    /// rate near the threshold does not flip the stage at every plan.
    #[serde(default)]
    pub durable_now: u32,
}

/// Share of `min_reuses` below which an instance that is already durable goes.
pub const KEEP_SHARE: f64 = 0.5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProvisioningConfig {
    /// Planning window W (and re-planning interval).
    pub window_seconds: f64,
    /// Memory available to this workload's instances.
    pub memory_budget_bytes: f64,
    /// Memory kept free for ephemeral instances.
    pub reserve_bytes: f64,
    /// How long an idle ephemeral instance stays before scaling to zero.
    pub keep_alive_seconds: f64,
    /// Reuses in a window below which a durable instance does not pay off.
    pub min_reuses: f64,
    /// Most durable instances of one function.
    pub max_per_function: u32,
}

impl Default for ProvisioningConfig {
    fn default() -> Self {
        ProvisioningConfig {
            window_seconds: 60.0,
            memory_budget_bytes: 16.0 * 1024.0 * 1024.0 * 1024.0,
            reserve_bytes: 4.0 * 1024.0 * 1024.0 * 1024.0,
            keep_alive_seconds: 60.0,
            min_reuses: 3.0,
            max_per_function: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningDecision {
    pub name: String,
    /// Instances to keep warm; 0 means ephemeral.
    pub durable: u32,
    /// Cold-start seconds the first durable instance saves per window.
    pub first_benefit_seconds: f64,
    /// Benefit per GiB-second of the first instance.
    pub first_bcr: f64,
    pub reason: String,
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// P(N >= k) for N ~ Poisson(mean).
fn poisson_at_least(mean: f64, k: u32) -> f64 {
    if k == 0 {
        return 1.0;
    }
    let mut term = (-mean).exp();
    let mut below = term;
    for i in 1..k {
        term *= mean / f64::from(i);
        below += term;
    }
    (1.0 - below).clamp(0.0, 1.0)
}

/// Invocations the n-th (1-based) durable instance serves in a window.
pub fn served_by(load: &FunctionLoad, n: u32, window: f64) -> f64 {
    let busy_mean = load.rate * load.exec_seconds / f64::from(load.concurrency.max(1));
    load.rate * window * poisson_at_least(busy_mean, n.saturating_sub(1))
}

/// Cold starts the n-th durable instance avoids in a window: the invocations it
/// serves that would have found no instance kept alive.
pub fn avoided_by(load: &FunctionLoad, n: u32, cfg: &ProvisioningConfig) -> f64 {
    let would_be_cold = (-load.rate * cfg.keep_alive_seconds).exp();
    served_by(load, n, cfg.window_seconds) * would_be_cold
}

/// Cold-start seconds the n-th durable instance saves in a window.
pub fn benefit(load: &FunctionLoad, n: u32, cfg: &ProvisioningConfig) -> f64 {
    load.cold_start_seconds * avoided_by(load, n, cfg)
}

/// Durable instance counts for every function (in the order given).
pub fn plan(loads: &[FunctionLoad], cfg: &ProvisioningConfig) -> Vec<ProvisioningDecision> {
    let w = cfg.window_seconds.max(1e-9);
    let bcr = |l: &FunctionLoad, n: u32| benefit(l, n, cfg) / (l.memory_bytes.max(1.0) / GIB * w);
    let mut durable = vec![0u32; loads.len()];
    let mut free = cfg.memory_budget_bytes;
    let mut stop: Vec<Option<String>> = vec![None; loads.len()];
    loop {
        // The next instance of each function; benefit per instance falls with n, so
        // taking the best next instance each time is taking the best instances overall.
        let next = (0..loads.len())
            .filter(|&f| stop[f].is_none())
            .map(|f| (f, bcr(&loads[f], durable[f] + 1)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        let Some((f, _)) = next else { break };
        let l = &loads[f];
        let n = durable[f] + 1;
        let avoided = avoided_by(l, n, cfg);
        let needed = if n <= l.durable_now {
            cfg.min_reuses * KEEP_SHARE
        } else {
            cfg.min_reuses
        };
        if n > cfg.max_per_function {
            stop[f] = Some(format!(
                "at the limit of {} durable instances",
                cfg.max_per_function
            ));
        } else if avoided < needed {
            stop[f] = Some(if n <= l.durable_now {
                format!(
                    "instance {n}, durable now, would avoid {avoided:.1} cold starts per {w:.0}s window, below the {needed} reuses that keep it"
                )
            } else {
                format!(
                    "instance {n} would avoid {avoided:.1} cold starts per {w:.0}s window, below the {needed} reuses that pay for keeping it"
                )
            });
        } else if free - l.memory_bytes < cfg.reserve_bytes {
            stop[f] = Some(format!(
                "instance {n} ({:.2} GiB) would leave less than the {:.1} GiB reserve for ephemeral instances",
                l.memory_bytes / GIB,
                cfg.reserve_bytes / GIB
            ));
        } else {
            durable[f] = n;
            free -= l.memory_bytes;
        }
    }
    loads
        .iter()
        .enumerate()
        .map(|(f, l)| {
            let first = benefit(l, 1, cfg);
            let why = stop[f].clone().unwrap_or_default();
            let reason = format!(
                "{:.3} invocations/s, {:.1}s cold start, {:.2} GiB: one warm instance saves {:.1}s per {:.0}s window ({:.0}% of arrivals would be cold after the {:.0}s keep-alive), BCR {:.2} s/(GiB*s); {} durable{}",
                l.rate,
                l.cold_start_seconds,
                l.memory_bytes / GIB,
                first,
                w,
                (-l.rate * cfg.keep_alive_seconds).exp() * 100.0,
                cfg.keep_alive_seconds,
                bcr(l, 1),
                durable[f],
                if why.is_empty() { String::new() } else { format!(" (next: {why})") }
            );
            ProvisioningDecision {
                name: l.name.clone(),
                durable: durable[f],
                first_benefit_seconds: first,
                first_bcr: bcr(l, 1),
                reason,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, rate: f64, mem_gib: f64) -> FunctionLoad {
        FunctionLoad {
            name: name.into(),
            rate,
            exec_seconds: 2.0,
            cold_start_seconds: 3.0,
            memory_bytes: mem_gib * GIB,
            concurrency: 1,
            durable_now: 0,
        }
    }

    fn cfg(budget_gib: f64, keep_alive: f64) -> ProvisioningConfig {
        ProvisioningConfig {
            window_seconds: 60.0,
            memory_budget_bytes: budget_gib * GIB,
            reserve_bytes: 1.0 * GIB,
            keep_alive_seconds: keep_alive,
            min_reuses: 3.0,
            max_per_function: 16,
        }
    }

    #[test]
    fn poisson_tail_by_hand() {
        assert_eq!(poisson_at_least(2.0, 0), 1.0);
        assert!((poisson_at_least(2.0, 1) - (1.0 - (-2.0f64).exp())).abs() < 1e-12);
        // P(N >= 2) = 1 - e^-2 (1 + 2) = 0.59399...
        assert!((poisson_at_least(2.0, 2) - 0.593_994_150_290_161_9).abs() < 1e-12);
    }

    #[test]
    fn benefit_by_hand() {
        // 0.1/s, no keep-alive: the first instance serves all 6 arrivals per minute,
        // saving 6 x 3 s = 18 s. With a 10 s keep-alive, e^-1 of them would be cold.
        let l = load("f", 0.1, 1.0);
        assert!((benefit(&l, 1, &cfg(8.0, 0.0)) - 18.0).abs() < 1e-9);
        assert!((benefit(&l, 1, &cfg(8.0, 10.0)) - 18.0 * (-1.0f64).exp()).abs() < 1e-9);
        // The second serves the arrivals that find the first busy: P(N >= 1), N ~ Poisson(0.2).
        let second = 18.0 * (1.0 - (-0.2f64).exp());
        assert!((benefit(&l, 2, &cfg(8.0, 0.0)) - second).abs() < 1e-9);
    }

    #[test]
    fn budget_goes_to_the_best_ratio_first() {
        // Same rate; "small" uses a quarter of the memory: 4x the BCR.
        let loads = [
            load("big", 0.5, 2.0),
            load("small", 0.5, 0.5),
            load("rare", 0.01, 0.5),
        ];
        // 3 GiB budget, 1 GiB reserve: 2 GiB to give.
        let d = plan(&loads, &cfg(3.0, 0.0));
        assert!(d[1].durable >= 1);
        assert_eq!(d[0].durable, 0, "{}", d[0].reason);
        assert!(d[0].reason.contains("reserve"), "{}", d[0].reason);
        // 0.6 arrivals per window: below three reuses.
        assert_eq!(d[2].durable, 0);
        assert!(d[2].reason.contains("reuses"), "{}", d[2].reason);
        assert!(
            d[1].reason.contains("1 durable") || d[1].durable > 1,
            "{}",
            d[1].reason
        );
        let used: f64 = d
            .iter()
            .zip(&loads)
            .map(|(d, l)| f64::from(d.durable) * l.memory_bytes)
            .sum();
        assert!(used <= 2.0 * GIB + 1.0);
    }

    #[test]
    fn long_keep_alive_makes_busy_functions_ephemeral() {
        // One arrival every 2 s never waits 60 s: keep-alive keeps it warm anyway.
        let d = plan(&[load("busy", 0.5, 0.5)], &cfg(8.0, 60.0));
        assert_eq!(d[0].durable, 0, "{}", d[0].reason);
    }

    #[test]
    fn a_durable_instance_stays_until_the_rate_falls_well_below_the_threshold() {
        let c = cfg(16.0, 2.0);
        let at = |rate: f64, durable_now: u32| {
            let l = FunctionLoad {
                durable_now,
                ..load("f", rate, 0.5)
            };
            plan(&[l], &c)[0].durable
        };
        // 0.06/s: instance 1 avoids 3.2 cold starts per minute, over the 3 that pay.
        assert_eq!(at(0.06, 0), 1);
        // 0.05/s: 2.7. Not enough to start keeping one, enough to keep one kept.
        assert_eq!(at(0.05, 0), 0);
        assert_eq!(at(0.05, 1), 1);
        // 0.02/s: 1.15, below half the threshold: it goes.
        assert_eq!(at(0.02, 1), 0);
        let kept = plan(
            &[FunctionLoad {
                durable_now: 1,
                ..load("f", 0.02, 0.5)
            }],
            &c,
        );
        assert!(kept[0].reason.contains("durable now"), "{}", kept[0].reason);
    }
}
