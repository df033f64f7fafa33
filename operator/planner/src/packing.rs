//! Packing (ProPack): how many invocations one instance runs at once (P).
//!
//! For C concurrent invocations, `n(P) = ceil(m / P)` instances (m = C for the whole
//! burst, 0.9 C for its tail, C / 2 for the median), scaling time `S(n)`, service
//! time of one instance running P invocations `E(P)`:
//! `T(P) = E(P) + S(n(P))`, `K(P) = E(P) * n(P) * price`, and the choice
//! `argmin T`, `argmin K` or `argmin 0.55 (K - Kmin)/Kmin + 0.45 (T - Tmin)/Tmin`.
//!
//! Two changes from the paper's model, both because a Kubernetes cluster is not an
//! unbounded FaaS pool: instances already warm do not need scaling (`S(n - warm)`),
//! and when n exceeds what the cluster (or maxScale) can hold, invocations run in
//! waves: `T = waves * E(P) + S(min(n, cap) - warm)`. Where the room is known in cores
//! (the local mode: this machine), cap also counts how many instances of P
//! invocations' cores fit in it: packing never promises cores that are not there.

use serde::{Deserialize, Serialize};

/// Time to bring n instances up: `base + per_instance * n` (ProPack found it close to
/// linear, about 0.046 s per instance on AWS Lambda).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingModel {
    pub base_seconds: f64,
    pub per_instance_seconds: f64,
}

impl ScalingModel {
    pub fn seconds(&self, n: u32) -> f64 {
        if n == 0 {
            0.0
        } else {
            self.base_seconds + self.per_instance_seconds * f64::from(n)
        }
    }
}

/// E(P): measured service time at some degrees, linear in between and beyond.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceCurve {
    points: Vec<(u32, f64)>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("a service curve needs at least one point with P >= 1 and a positive time")]
pub struct CurveError;

impl ServiceCurve {
    /// From (P, seconds) measurements, in any order.
    pub fn new(mut points: Vec<(u32, f64)>) -> Result<Self, CurveError> {
        points.retain(|&(p, e)| p >= 1 && e.is_finite() && e > 0.0);
        points.sort_by_key(|&(p, _)| p);
        points.dedup_by_key(|x| x.0);
        if points.is_empty() {
            return Err(CurveError);
        }
        Ok(ServiceCurve { points })
    }

    /// Invocations of `e1` seconds needing `cores_each` cores, P of them in an instance
    /// of `instance_cores(P)` cores: they share the cores once P * cores_each exceeds
    /// them, and each extra neighbour slows all by `interference` (memory bandwidth,
    /// caches).
    pub fn cpu_shared(
        e1: f64,
        cores_each: f64,
        instance_cores: impl Fn(u32) -> f64,
        interference: f64,
    ) -> Self {
        let points = [1u32, 2, 4, 8, 16, 32, 64]
            .iter()
            .map(|&p| {
                let cores = instance_cores(p).max(f64::MIN_POSITIVE);
                let share = (f64::from(p) * cores_each / cores).max(1.0);
                (p, e1 * share * (1.0 + interference * f64::from(p - 1)))
            })
            .collect();
        ServiceCurve { points }
    }

    /// From throughput measured at several process counts, relative to one process
    /// (e.g. 8 processes -> 7.4x under MPS): the P invocations finish together after
    /// `P * e1 / speedup(P)`.
    pub fn from_speedups(e1: f64, speedups: &[(u32, f64)]) -> Result<Self, CurveError> {
        ServiceCurve::new(
            speedups
                .iter()
                .filter(|(_, s)| *s > 0.0)
                .map(|&(p, s)| (p, f64::from(p) * e1 / s))
                .collect(),
        )
    }

    pub fn at(&self, p: u32) -> f64 {
        let pts = &self.points;
        let p = p.max(1);
        let line = |a: (u32, f64), b: (u32, f64)| {
            let t = (f64::from(p) - f64::from(a.0)) / f64::from(b.0 - a.0);
            a.1 + t * (b.1 - a.1)
        };
        match pts.iter().position(|&(q, _)| q >= p) {
            Some(k) if pts[k].0 == p => pts[k].1,
            Some(0) => pts[0].1 * f64::from(p) / f64::from(pts[0].0).max(1.0),
            Some(k) => line(pts[k - 1], pts[k]),
            None if pts.len() >= 2 => {
                line(pts[pts.len() - 2], pts[pts.len() - 1]).max(pts[pts.len() - 1].1)
            }
            None => pts[0].1 * f64::from(p) / f64::from(pts[0].0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Objective {
    Time,
    Cost,
    Joint { cost_weight: f64, time_weight: f64 },
}

impl Default for Objective {
    fn default() -> Self {
        Objective::Joint {
            cost_weight: 0.55,
            time_weight: 0.45,
        }
    }
}

/// Which invocations' completion the time refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Completion {
    #[default]
    All,
    /// 90% of them.
    Tail,
    /// Half of them.
    Median,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackingInput {
    pub invocations: u32,
    pub curve: ServiceCurve,
    pub scaling: ScalingModel,
    /// Price of one instance for one second, by the invocations it runs at once
    /// (index P - 1; the last one holds beyond): it grows as the instance does
    /// (`InstanceGrowth`).
    pub instance_price: Vec<f64>,
    /// Largest P considered.
    pub max_degree: u32,
    /// Instances already warm.
    pub warm_instances: u32,
    /// Most instances at once (cluster capacity or maxScale); None: unbounded.
    pub max_instances: Option<u32>,
    /// Cores of an instance by the invocations it runs at once (index P - 1; the last
    /// one holds beyond), and the cores all instances share, where known.
    #[serde(default)]
    pub instance_cores: Vec<f64>,
    #[serde(default)]
    pub room_cores: Option<f64>,
    /// Each invocation's work relative to the mean (segment lengths), where known:
    /// then the burst takes the longest-first makespan of it on the slots at once
    /// instead of whole waves. Empty: all alike.
    #[serde(default)]
    pub work: Vec<f64>,
    pub completion: Completion,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PackingOption {
    pub degree: u32,
    pub instances: u32,
    pub waves: u32,
    /// Instances running at once.
    pub at_once: u32,
    /// E(P)s the burst takes: the waves, or with the invocations' work known, its
    /// longest-first makespan on the slots at once.
    pub rounds: f64,
    pub service_seconds: f64,
    pub time_seconds: f64,
    pub cost: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PackingChoice {
    pub chosen: PackingOption,
    /// P = 1, for comparison.
    pub unpacked: PackingOption,
    pub options: Vec<PackingOption>,
    pub reason: String,
}

/// What `vflow-runtime serve` and its metrics sidecar hold themselves, with room to
/// spare (bench/runtime: 7.6 and 7.3 MiB idle).
pub const RUNTIME_BASE_BYTES: f64 = 32.0 * 1024.0 * 1024.0;

/// The memory of an instance that runs `degree` invocations at once, from the memory
/// of one sized for `sized_for` at once: the runtime's base, plus each invocation's
/// share. Packing more into a pod makes the pod bigger; it does not make each
/// invocation need less.
pub fn instance_memory(memory_bytes: f64, sized_for: u32, degree: u32) -> f64 {
    let per_invocation = (memory_bytes - RUNTIME_BASE_BYTES).max(0.0) / f64::from(sized_for.max(1));
    RUNTIME_BASE_BYTES + per_invocation * f64::from(degree.max(1))
}

/// How an instance's size follows the invocations it runs at once (P): each brings its
/// own use on top of the runtime's base. Cores: the instance keeps its size while the
/// invocations' own use (`cores_each`, observed or their share of the request) fits
/// in it, and grows with them beyond; memory: `instance_memory`. A size the stage's
/// overrides pin stays, and no degree may take the instance past the profile's bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceGrowth {
    /// The instance as sized, for `sized_for` invocations at once.
    pub cores: f64,
    pub memory_bytes: f64,
    pub sized_for: u32,
    /// Cores one invocation uses.
    pub cores_each: f64,
    pub pinned_cores: bool,
    pub pinned_memory: bool,
    /// The profile's `bounds.maxCpu` and `bounds.maxMemory`.
    pub max_cores: Option<f64>,
    pub max_memory_bytes: Option<f64>,
}

impl InstanceGrowth {
    pub fn cores(&self, degree: u32) -> f64 {
        if self.pinned_cores || degree <= self.sized_for {
            self.cores
        } else {
            self.cores.max(self.cores_each * f64::from(degree))
        }
    }

    pub fn memory_bytes(&self, degree: u32) -> f64 {
        if self.pinned_memory {
            self.memory_bytes
        } else {
            instance_memory(self.memory_bytes, self.sized_for, degree)
        }
    }

    /// Within the profile's bounds at `degree` (a millicore and a byte of slack for the
    /// bounds' own rounding).
    pub fn fits(&self, degree: u32) -> bool {
        self.max_cores
            .is_none_or(|m| self.cores(degree) <= m + 1e-3)
            && self
                .max_memory_bytes
                .is_none_or(|m| self.memory_bytes(degree) <= m + 1.0)
    }

    /// The largest degree up to `up_to` whose instance fits; 1 when none does.
    pub fn largest_fitting(&self, up_to: u32) -> u32 {
        (1..=up_to.max(1))
            .rev()
            .find(|&p| self.fits(p))
            .unwrap_or(1)
    }
}

/// The entry for degree `p` of a list by degree (the last one holds beyond).
fn pick(by_degree: &[f64], p: u32) -> Option<f64> {
    by_degree.get(p as usize - 1).or(by_degree.last()).copied()
}

/// T(P) and K(P) for one degree.
pub fn evaluate(input: &PackingInput, degree: u32) -> PackingOption {
    let p = degree.max(1);
    let m = match input.completion {
        Completion::All => f64::from(input.invocations),
        Completion::Tail => 0.9 * f64::from(input.invocations),
        Completion::Median => 0.5 * f64::from(input.invocations),
    };
    let instances = ((m / f64::from(p)).ceil() as u32).max(1);
    let fit = match (input.room_cores, pick(&input.instance_cores, p)) {
        (Some(room), Some(cores)) if cores > 0.0 => ((room + 1e-9) / cores).floor() as u32,
        _ => u32::MAX,
    };
    let cap = input.max_instances.unwrap_or(u32::MAX).min(fit).max(1);
    let waves = instances.div_ceil(cap);
    let started = instances.min(cap).saturating_sub(input.warm_instances);
    let e = input.curve.at(p);
    let rounds = if input.work.is_empty() || input.completion != Completion::All {
        f64::from(waves)
    } else {
        let slots = u64::from(instances.min(cap)) * u64::from(p);
        crate::segments::makespan(&input.work, slots.min(usize::MAX as u64) as usize)
    };
    let time = rounds * e + input.scaling.seconds(started);
    let price = pick(&input.instance_price, p).unwrap_or(0.0);
    let cost = e * f64::from(instances) * price;
    PackingOption {
        degree: p,
        instances,
        waves,
        at_once: instances.min(cap),
        rounds,
        service_seconds: e,
        time_seconds: time,
        cost,
    }
}

/// The degree that minimises the objective over P = 1..=max_degree.
pub fn choose(input: &PackingInput, objective: Objective) -> PackingChoice {
    let options: Vec<PackingOption> = (1..=input.max_degree.max(1))
        .map(|p| evaluate(input, p))
        .collect();
    let t_min = options
        .iter()
        .map(|o| o.time_seconds)
        .fold(f64::INFINITY, f64::min);
    let k_min = options.iter().map(|o| o.cost).fold(f64::INFINITY, f64::min);
    let score = |o: &PackingOption| match objective {
        Objective::Time => o.time_seconds,
        Objective::Cost => o.cost,
        Objective::Joint {
            cost_weight,
            time_weight,
        } => {
            cost_weight * (o.cost - k_min) / k_min.max(f64::MIN_POSITIVE)
                + time_weight * (o.time_seconds - t_min) / t_min.max(f64::MIN_POSITIVE)
        }
    };
    // Ties go to the smaller degree: fewer neighbours to fail with.
    let chosen = options
        .iter()
        .fold(None::<&PackingOption>, |best, o| match best {
            Some(b) if score(b) <= score(o) + 1e-12 => Some(b),
            _ => Some(o),
        })
        .cloned()
        .unwrap_or_else(|| evaluate(input, 1));
    let unpacked = evaluate(input, 1);
    let reason = format!(
        "{} invocations: P={} gives {} instance(s), T = E({}) {:.2}s{} + S({}) = {:.2}s and cost {:.3} against P=1: T {:.2}s, cost {:.3} ({})",
        input.invocations,
        chosen.degree,
        chosen.instances,
        chosen.degree,
        chosen.service_seconds,
        if !input.work.is_empty() && input.completion == Completion::All {
            format!(
                " x {:.2} (the segments' lengths, longest first on {} at once)",
                chosen.rounds,
                chosen.at_once * chosen.degree
            )
        } else if chosen.waves > 1 {
            format!(" x {} waves", chosen.waves)
        } else {
            String::new()
        },
        chosen.instances.saturating_sub(input.warm_instances),
        chosen.time_seconds,
        chosen.cost,
        unpacked.time_seconds,
        unpacked.cost,
        match objective {
            Objective::Time => "objective: time".to_string(),
            Objective::Cost => "objective: cost".to_string(),
            Objective::Joint {
                cost_weight,
                time_weight,
            } => format!(
                "objective: {cost_weight} x cost + {time_weight} x time, each relative to its best"
            ),
        }
    );
    PackingChoice {
        chosen,
        unpacked,
        options,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(c: u32) -> PackingInput {
        PackingInput {
            invocations: c,
            // 1 s alone; 2 share 2 cores; beyond, they share them.
            curve: ServiceCurve::new(vec![(1, 1.0), (2, 1.0), (4, 2.0), (8, 4.0)]).expect("curve"),
            scaling: ScalingModel {
                base_seconds: 0.0,
                per_instance_seconds: 0.046,
            },
            instance_price: vec![1.0],
            max_degree: 8,
            warm_instances: 0,
            max_instances: None,
            instance_cores: Vec::new(),
            room_cores: None,
            work: Vec::new(),
            completion: Completion::All,
        }
    }

    #[test]
    fn with_segment_lengths_the_burst_takes_their_makespan_not_whole_waves() {
        // 15 segments of 4 s and one of 2 s... as multipleOf 2 cuts 60 s: 14 x 4 s and
        // 2 x 2 s, on 2 instances of P = 1: 7.5 rounds of the mean segment's time.
        let mut i = input(16);
        i.max_instances = Some(2);
        i.max_degree = 1;
        let mean = 60.0 / 16.0;
        let mut work: Vec<f64> = vec![4.0 / mean; 14];
        work.extend([2.0 / mean, 2.0 / mean]);
        let waves = evaluate(&i, 1);
        i.work = work;
        let lengths = evaluate(&i, 1);
        assert_eq!(waves.waves, 8);
        let e = waves.service_seconds;
        assert!((waves.time_seconds - (8.0 * e + 0.092)).abs() < 1e-9);
        assert!((lengths.time_seconds - (30.0 / mean * e + 0.092)).abs() < 1e-9);
    }

    #[test]
    fn instances_at_once_are_as_many_as_their_cores_fit_in_the_room() {
        // 16 invocations of 1 core each on a 2-core machine that allows 2 instances:
        // an instance of P = 2 grows to 2 cores, so only one runs at once.
        let mut i = input(16);
        i.curve = ServiceCurve::new(vec![(1, 10.0), (2, 10.5)]).expect("curve");
        i.instance_cores = vec![1.0, 2.0];
        i.max_degree = 2;
        i.max_instances = Some(2);
        i.room_cores = Some(2.0);
        let one = evaluate(&i, 1);
        assert_eq!((one.waves, one.instances), (8, 16));
        let two = evaluate(&i, 2);
        assert_eq!(two.waves, 8, "8 instances of 2 cores, one at a time");
        assert!(two.time_seconds > one.time_seconds);
        assert_eq!(choose(&i, Objective::Time).chosen.degree, 1);
        // Without the room the same input promised 2 instances of 2 cores at once.
        i.room_cores = None;
        assert_eq!(evaluate(&i, 2).waves, 4);
        assert_eq!(choose(&i, Objective::Time).chosen.degree, 2);
    }

    #[test]
    fn curve_interpolates_and_extrapolates() {
        let c = ServiceCurve::new(vec![(1, 1.0), (2, 1.0), (4, 2.0), (8, 4.0)]).expect("curve");
        assert_eq!(c.at(3), 1.5);
        assert_eq!(c.at(16), 8.0);
        assert!(ServiceCurve::new(vec![(0, 1.0)]).is_err());
        let mps = ServiceCurve::from_speedups(1.0, &[(1, 1.0), (8, 7.4)]).expect("curve");
        assert!((mps.at(8) - 8.0 / 7.4).abs() < 1e-12);
    }

    #[test]
    fn t_and_k_by_hand() {
        // 1000 invocations, P = 2: 500 instances, T = 1 + 0.046 x 500 = 24 s, K = 500.
        let o = evaluate(&input(1000), 2);
        assert_eq!(o.instances, 500);
        assert!((o.time_seconds - 24.0).abs() < 1e-9);
        assert!((o.cost - 500.0).abs() < 1e-9);
        // P = 1: T = 1 + 46 = 47 s, K = 1000.
        let o = evaluate(&input(1000), 1);
        assert!((o.time_seconds - 47.0).abs() < 1e-9);
        // P = 8: 125 instances, T = 4 + 5.75 = 9.75 s, K = 500.
        let o = evaluate(&input(1000), 8);
        assert!((o.time_seconds - 9.75).abs() < 1e-9);
    }

    #[test]
    fn objectives_pick_by_hand() {
        let i = input(1000);
        // Time: P = 8 (9.75 s; P = 7 gives 3.5 + 143 x 0.046 = 10.08 s).
        assert_eq!(choose(&i, Objective::Time).chosen.degree, 8);
        // Cost is 500 for every P >= 2 (and the smaller degree wins the tie).
        assert_eq!(choose(&i, Objective::Cost).chosen.degree, 2);
        // Joint: P = 8 has the least time and the least cost.
        let j = choose(&i, Objective::default());
        assert_eq!(j.chosen.degree, 8);
        assert!(j.reason.contains("P=8"), "{}", j.reason);
    }

    #[test]
    fn capacity_makes_waves_and_warm_instances_skip_scaling() {
        let mut i = input(100);
        i.max_instances = Some(10);
        // P = 1: 100 instances in 10 waves of 1 s, and 10 started: 10 + 0.46.
        let o = evaluate(&i, 1);
        assert_eq!(o.waves, 10);
        assert!((o.time_seconds - 10.46).abs() < 1e-9);
        i.warm_instances = 10;
        assert!((evaluate(&i, 1).time_seconds - 10.0).abs() < 1e-9);
    }

    #[test]
    fn an_instance_grows_with_what_it_runs_at_once() {
        let gib = 1024.0 * 1024.0 * 1024.0;
        // Sized for one at 2 GiB: four at once need the base and four shares.
        let four = instance_memory(2.0 * gib, 1, 4);
        assert!((four - (RUNTIME_BASE_BYTES + 4.0 * (2.0 * gib - RUNTIME_BASE_BYTES))).abs() < 1.0);
        assert_eq!(instance_memory(2.0 * gib, 1, 1), 2.0 * gib);
        // Sized for two: one at once needs about half.
        let one = instance_memory(2.0 * gib, 2, 1);
        assert!(one > gib * 0.99 && one < gib * 1.02, "{one}");
    }

    fn growth() -> InstanceGrowth {
        InstanceGrowth {
            cores: 2.0,
            memory_bytes: 1024.0 * 1024.0 * 1024.0,
            sized_for: 1,
            cores_each: 0.5,
            pinned_cores: false,
            pinned_memory: false,
            max_cores: None,
            max_memory_bytes: None,
        }
    }

    #[test]
    fn cores_grow_once_the_invocations_use_outgrows_the_instance() {
        let g = growth();
        // 0.5 cores each in 2 cores: four fit, eight need 4.
        assert_eq!(g.cores(1), 2.0);
        assert_eq!(g.cores(4), 2.0);
        assert_eq!(g.cores(8), 4.0);
        let pinned = InstanceGrowth {
            pinned_cores: true,
            pinned_memory: true,
            ..g.clone()
        };
        assert_eq!(pinned.cores(8), 2.0);
        assert_eq!(pinned.memory_bytes(8), g.memory_bytes);
        assert!(g.memory_bytes(8) > 7.0 * g.memory_bytes);
    }

    #[test]
    fn no_degree_takes_an_instance_past_the_profiles_bounds() {
        let gib = 1024.0 * 1024.0 * 1024.0;
        let g = InstanceGrowth {
            max_cores: Some(3.0),
            ..growth()
        };
        assert_eq!(g.largest_fitting(8), 6, "6 x 0.5 = 3 cores");
        let g = InstanceGrowth {
            max_memory_bytes: Some(2.5 * gib),
            ..growth()
        };
        // 1 GiB for one: the base and two shares fit 2.5 GiB, three do not.
        assert_eq!(g.largest_fitting(8), 2);
        let g = InstanceGrowth {
            max_cores: Some(1.0),
            ..growth()
        };
        assert_eq!(g.largest_fitting(8), 1, "none fits: one, as sized");
    }

    #[test]
    fn a_shared_instance_slows_its_invocations_only_when_its_cores_stay() {
        let kept = ServiceCurve::cpu_shared(1.0, 1.0, |_| 2.0, 0.0);
        assert!((kept.at(4) - 2.0).abs() < 1e-9, "4 cores of work in 2");
        let grown = ServiceCurve::cpu_shared(1.0, 1.0, |p| f64::from(p).max(2.0), 0.0);
        assert!((grown.at(4) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_price_follows_the_instance_at_each_degree() {
        let mut i = input(8);
        i.instance_price = vec![1.0, 1.0, 3.0];
        // P = 2: E 1 s, 4 instances at 1; P = 3 and beyond pay 3.
        assert!((evaluate(&i, 2).cost - 4.0).abs() < 1e-9);
        let four = evaluate(&i, 4);
        assert!((four.cost - four.service_seconds * 2.0 * 3.0).abs() < 1e-9);
    }
}
