//! Resources for one instance of a stage, from the FunctionProfile's observations.
//!
//! `cpu = clamp(p95(cores used) * h_cpu)`, `memory = clamp(max(peak memory) * h_mem)`
//! within the profile's bounds, once at least `min_observations` invocations were
//! seen. An OOM kill raises memory at once, before that: the request that was killed
//! was too small whatever the statistics say. Memory limit = request; no CPU limit
//! (throttling an encoder only makes it slower).

use serde::{Deserialize, Serialize};
use vflow_api::{FunctionProfile, Quantity, Recommendation, SizingMode, StageOverrides};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SizingConfig {
    /// Multiplier on p95 CPU cores.
    pub cpu_headroom: f64,
    /// Multiplier on the largest memory peak.
    pub memory_headroom: f64,
    /// Invocations seen before the observations are trusted.
    pub min_observations: u64,
    /// Memory multiplier after an OOM kill.
    pub oom_raise: f64,
    /// CPU and memory when a quantity cannot be read (it passed validation, so rare).
    pub fallback_cpu: f64,
    pub fallback_memory_bytes: f64,
    /// Multiplier on the most an invocation read plus wrote, for its scratch disk.
    pub scratch_headroom: f64,
    /// Scratch per invocation when the profile sets none and nothing is observed.
    pub default_scratch_bytes: f64,
    /// Scratch per invocation is never below this.
    pub min_scratch_bytes: f64,
}

impl Default for SizingConfig {
    fn default() -> Self {
        SizingConfig {
            cpu_headroom: 1.2,
            memory_headroom: 1.2,
            min_observations: 20,
            oom_raise: 1.5,
            fallback_cpu: 1.0,
            fallback_memory_bytes: 512.0 * MIB,
            scratch_headroom: 2.0,
            default_scratch_bytes: 2048.0 * MIB,
            min_scratch_bytes: 64.0 * MIB,
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Where the applied numbers came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SizeSource {
    /// The profile's `resources` (sizing Off or Recommend, or too few observations).
    Spec,
    /// The recommendation from observations (sizing Auto).
    Observed,
    /// Raised after OOM kills, before enough observations.
    OomRaised,
}

/// What one instance of a stage requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageSize {
    pub cpu_cores: f64,
    /// Request and limit.
    pub memory_bytes: f64,
    /// Share of one GPU.
    pub gpu: Option<f64>,
    /// GPU memory one instance needs (largest observed x headroom), for MIG and HAMi.
    pub gpu_memory_bytes: Option<u64>,
    /// Invocations per instance, before packing: the profile's `concurrency` (a
    /// stage's `overrides.concurrency` is a packing degree, decided in the plan).
    pub concurrency: u32,
    /// How many invocations at once the size holds: observed sizes are one
    /// invocation's use (the runtime measures each function process), written ones
    /// are for the profile's `concurrency`.
    pub sized_for: u32,
    /// Scratch disk one invocation needs (its inputs and outputs), in bytes.
    pub scratch_bytes_each: f64,
    pub source: SizeSource,
    /// Why these numbers, in a sentence or two.
    pub reason: String,
}

impl StageSize {
    pub fn cpu(&self) -> Quantity {
        Quantity::from_cores(self.cpu_cores)
    }
    pub fn memory(&self) -> Quantity {
        Quantity::from_bytes(self.memory_bytes)
    }
    /// The scratch disk of an instance running `invocations` at once.
    pub fn scratch_bytes(&self, invocations: u32) -> f64 {
        self.scratch_bytes_each * f64::from(invocations.max(1))
    }
}

/// Scratch disk for one invocation, and why: the profile's `resources.scratch` is a
/// floor; under sizing Auto, trusted observations raise it to the most an invocation
/// read plus wrote, with headroom (a download that does not fit fails, and a failed
/// invocation teaches nothing, so this errs large).
fn scratch_each(profile: &FunctionProfile, cfg: &SizingConfig) -> (f64, String) {
    let spec = profile
        .spec
        .resources
        .scratch
        .as_ref()
        .and_then(|q| q.value().ok());
    let observed = profile
        .status
        .as_ref()
        .filter(|s| {
            profile.spec.sizing == SizingMode::Auto && s.invocations >= cfg.min_observations
        })
        .and_then(|s| s.scratch_bytes.as_ref())
        .map(|d| d.max * cfg.scratch_headroom);
    let (bytes, why) = match (spec, observed) {
        (Some(s), Some(o)) if o > s => (
            o,
            format!("scratch = max in+out x {} headroom", cfg.scratch_headroom),
        ),
        (Some(s), _) => (s, "scratch from the profile's resources".to_string()),
        (None, Some(o)) => (
            o,
            format!("scratch = max in+out x {} headroom", cfg.scratch_headroom),
        ),
        (None, None) => (cfg.default_scratch_bytes, "scratch default".to_string()),
    };
    // Whole powers of two MiB: observations that drift a little do not change the
    // pod template (and roll the stage's pods) on every plan.
    let mib = (bytes.max(cfg.min_scratch_bytes) / MIB).ceil().max(1.0);
    let bytes = 2f64.powi(mib.log2().ceil() as i32) * MIB;
    (bytes, format!("{why}: {:.0} MiB each", bytes / MIB))
}

/// What the observations say, whatever the sizing mode.
struct Observed {
    cpu: Option<f64>,
    memory: Option<f64>,
    oom_memory: Option<f64>,
    gpu_memory: Option<u64>,
    trusted: bool,
    observations: u64,
    notes: Vec<String>,
}

fn observe(profile: &FunctionProfile, cfg: &SizingConfig, spec_memory: f64) -> Observed {
    let status = profile.status.clone().unwrap_or_default();
    let bounds = profile.spec.bounds.clone().unwrap_or_default();
    let q = |x: &Option<Quantity>| x.as_ref().and_then(|q| q.value().ok());
    let clamp = |v: f64, lo: Option<f64>, hi: Option<f64>| {
        let v = lo.map_or(v, |lo| v.max(lo));
        hi.map_or(v, |hi| v.min(hi))
    };
    let (min_cpu, max_cpu) = (q(&bounds.min_cpu), q(&bounds.max_cpu));
    let (min_mem, max_mem) = (q(&bounds.min_memory), q(&bounds.max_memory));
    let trusted = status.invocations >= cfg.min_observations;
    let mut notes = Vec::new();
    let mut cpu = None;
    let mut memory = None;
    if trusted {
        if let Some(d) = &status.cpu_cores {
            let v = clamp(d.p95 * cfg.cpu_headroom, min_cpu, max_cpu);
            notes.push(format!(
                "cpu = p95 {:.2} cores x {} headroom = {:.2}{}",
                d.p95,
                cfg.cpu_headroom,
                d.p95 * cfg.cpu_headroom,
                bound_note(v, d.p95 * cfg.cpu_headroom)
            ));
            cpu = Some(v);
        }
        if let Some(d) = &status.memory_bytes {
            let v = clamp(d.max * cfg.memory_headroom, min_mem, max_mem);
            notes.push(format!(
                "memory = max {:.0} MiB x {} headroom = {:.0} MiB{}",
                d.max / MIB,
                cfg.memory_headroom,
                d.max * cfg.memory_headroom / MIB,
                bound_note(v, d.max * cfg.memory_headroom)
            ));
            memory = Some(v);
        }
    } else {
        notes.push(format!(
            "{} of {} observations needed before trusting them",
            status.invocations, cfg.min_observations
        ));
    }
    let oom_memory = (status.oom_kills > 0).then(|| {
        // From the inputs, not from the last recommendation, so re-planning does not
        // compound the raise; a new kill records a higher peak and raises it again.
        let peak = status.memory_bytes.as_ref().map_or(0.0, |d| d.max) * cfg.memory_headroom;
        let base = spec_memory.max(peak).max(memory.unwrap_or(0.0));
        let raised = clamp(base * cfg.oom_raise, min_mem, max_mem);
        notes.push(format!(
            "{} OOM kill(s): memory raised to {:.0} MiB ({:.0} MiB x {}){}",
            status.oom_kills,
            raised / MIB,
            base / MIB,
            cfg.oom_raise,
            bound_note(raised, base * cfg.oom_raise)
        ));
        raised
    });
    let gpu_memory = status
        .gpu_memory_bytes
        .as_ref()
        .filter(|_| status.invocations > 0)
        .map(|d| (d.max * cfg.memory_headroom).ceil() as u64);
    Observed {
        cpu,
        memory,
        oom_memory,
        gpu_memory,
        trusted,
        observations: status.invocations,
        notes,
    }
}

fn bound_note(applied: f64, wanted: f64) -> &'static str {
    if applied > wanted * 1.000_001 {
        " (raised to the minimum bound)"
    } else if applied < wanted * 0.999_999 {
        " (capped at the maximum bound)"
    } else {
        ""
    }
}

/// The size of a stage's instances: the profile's sizing mode applied to its
/// observations, then the stage's overrides, which always win.
pub fn size_stage(
    profile: &FunctionProfile,
    overrides: Option<&StageOverrides>,
    cfg: &SizingConfig,
) -> StageSize {
    let spec = &profile.spec;
    let mut notes = Vec::new();
    let spec_cpu = spec.resources.cpu.value().unwrap_or_else(|_| {
        notes.push(format!(
            "unreadable cpu {:?}: using {}",
            spec.resources.cpu.as_str(),
            cfg.fallback_cpu
        ));
        cfg.fallback_cpu
    });
    let spec_memory = spec
        .resources
        .memory
        .value()
        .unwrap_or(cfg.fallback_memory_bytes);
    let obs = observe(profile, cfg, spec_memory);
    let (mut cpu, mut memory, mut source) = (spec_cpu, spec_memory, SizeSource::Spec);
    match spec.sizing {
        SizingMode::Auto => {
            if obs.trusted && (obs.cpu.is_some() || obs.memory.is_some()) {
                cpu = obs.cpu.unwrap_or(cpu);
                memory = obs.memory.unwrap_or(memory);
                source = SizeSource::Observed;
            }
            if let Some(raised) = obs.oom_memory
                && raised > memory
            {
                memory = raised;
                if source == SizeSource::Spec {
                    source = SizeSource::OomRaised;
                }
            }
            notes.push("sizing Auto".into());
        }
        SizingMode::Recommend => {
            notes.push("sizing Recommend: spec values applied, recommendation reported".into())
        }
        SizingMode::Off => notes.push("sizing Off: spec values".into()),
    }
    notes.extend(obs.notes.iter().cloned());
    let (scratch_bytes_each, scratch_note) = scratch_each(profile, cfg);
    notes.push(scratch_note);
    let mut gpu = spec.resources.gpu;
    let concurrency = spec.concurrency.max(1);
    if let Some(o) = overrides {
        if let Some(v) = o.cpu.as_ref().and_then(|q| q.value().ok()) {
            cpu = v;
            notes.push(format!(
                "cpu {} from the stage's overrides",
                o.cpu.as_ref().map_or("", |q| q.as_str())
            ));
        }
        if let Some(v) = o.memory.as_ref().and_then(|q| q.value().ok()) {
            if obs.oom_memory.is_some_and(|m| m > v) {
                notes.push("the override pins memory below the OOM raise".into());
            }
            memory = v;
            notes.push(format!(
                "memory {} from the stage's overrides",
                o.memory.as_ref().map_or("", |q| q.as_str())
            ));
        }
        if o.gpu.is_some() {
            gpu = o.gpu;
        }
    }
    StageSize {
        cpu_cores: cpu,
        memory_bytes: memory,
        gpu,
        gpu_memory_bytes: obs.gpu_memory,
        concurrency,
        sized_for: if source == SizeSource::Observed {
            1
        } else {
            concurrency
        },
        scratch_bytes_each,
        source,
        reason: notes.join("; "),
    }
}

/// The recommendation for the profile's status: what Auto would apply, with the
/// observations it rests on.
pub fn recommend(profile: &FunctionProfile, cfg: &SizingConfig) -> Recommendation {
    let spec_cpu = profile
        .spec
        .resources
        .cpu
        .value()
        .unwrap_or(cfg.fallback_cpu);
    let spec_memory = profile
        .spec
        .resources
        .memory
        .value()
        .unwrap_or(cfg.fallback_memory_bytes);
    let obs = observe(profile, cfg, spec_memory);
    let cpu = obs.cpu.unwrap_or(spec_cpu);
    let memory = obs
        .memory
        .unwrap_or(spec_memory)
        .max(obs.oom_memory.unwrap_or(0.0));
    let mut reason = obs.notes.join("; ");
    if !obs.trusted && obs.oom_memory.is_none() {
        reason.push_str("; spec values kept");
    }
    Recommendation {
        cpu: Quantity::from_cores(cpu),
        memory: Quantity::from_bytes(memory),
        gpu: profile.spec.resources.gpu,
        concurrency: Some(profile.spec.concurrency.max(1)),
        observations: obs.observations,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vflow_api::{
        Distribution, FunctionProfileSpec, FunctionProfileStatus, ResourceBounds, ResourceRequest,
    };

    fn profile(mode: SizingMode, status: Option<FunctionProfileStatus>) -> FunctionProfile {
        let mut p = FunctionProfile::new(
            "scale",
            FunctionProfileSpec {
                image: "img".into(),
                command: vec!["run".into()],
                description: None,
                params: vec![],
                resources: ResourceRequest {
                    cpu: "2".parse().expect("q"),
                    memory: "1Gi".parse().expect("q"),
                    gpu: None,
                    scratch: None,
                },
                bounds: Some(ResourceBounds {
                    min_cpu: Some("500m".parse().expect("q")),
                    max_cpu: Some("4".parse().expect("q")),
                    min_memory: Some("256Mi".parse().expect("q")),
                    max_memory: Some("2Gi".parse().expect("q")),
                }),
                sizing: mode,
                worker: Default::default(),
                concurrency: 1,
                cold_start_prior: None,
                exec_time_prior: None,
                timeout: None,
                warmup_command: vec![],
                produces: None,
            },
        );
        p.status = status;
        p
    }

    fn observed(n: u64, cpu_p95: f64, mem_max_mib: f64, ooms: u64) -> FunctionProfileStatus {
        FunctionProfileStatus {
            invocations: n,
            oom_kills: ooms,
            cpu_cores: Some(Distribution {
                p50: cpu_p95 / 2.0,
                p95: cpu_p95,
                max: cpu_p95,
            }),
            memory_bytes: Some(Distribution {
                p50: mem_max_mib * MIB / 2.0,
                p95: mem_max_mib * MIB,
                max: mem_max_mib * MIB,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn auto_applies_observations_by_hand() {
        // p95 1.5 cores x 1.2 = 1.8 cores; max 600 MiB x 1.2 = 720 MiB.
        let p = profile(SizingMode::Auto, Some(observed(50, 1.5, 600.0, 0)));
        let s = size_stage(&p, None, &SizingConfig::default());
        assert!((s.cpu_cores - 1.8).abs() < 1e-9);
        assert!((s.memory_bytes - 720.0 * MIB).abs() < 1.0);
        assert_eq!(s.source, SizeSource::Observed);
        assert_eq!(s.cpu().as_str(), "1800m");
        assert_eq!(s.memory().as_str(), "720Mi");
        assert!(s.reason.contains("p95 1.50 cores"), "{}", s.reason);
    }

    #[test]
    fn bounds_clamp_the_recommendation() {
        // p95 5 cores x 1.2 = 6 > max 4; 100 MiB x 1.2 = 120 MiB < min 256 MiB.
        let p = profile(SizingMode::Auto, Some(observed(50, 5.0, 100.0, 0)));
        let s = size_stage(&p, None, &SizingConfig::default());
        assert_eq!(s.cpu_cores, 4.0);
        assert_eq!(s.memory_bytes, 256.0 * MIB);
        assert!(s.reason.contains("capped at the maximum bound"));
        assert!(s.reason.contains("raised to the minimum bound"));
    }

    #[test]
    fn too_few_observations_keep_the_spec() {
        let p = profile(SizingMode::Auto, Some(observed(5, 0.5, 100.0, 0)));
        let s = size_stage(&p, None, &SizingConfig::default());
        assert_eq!((s.cpu_cores, s.memory_bytes), (2.0, 1024.0 * MIB));
        assert_eq!(s.source, SizeSource::Spec);
        assert!(s.reason.contains("5 of 20 observations"));
    }

    #[test]
    fn oom_raises_memory_at_once() {
        // 3 invocations, one killed at ~1 GiB: max(1024, 1000 x 1.2) x 1.5 = 1800 MiB.
        let p = profile(SizingMode::Auto, Some(observed(3, 0.5, 1000.0, 1)));
        let s = size_stage(&p, None, &SizingConfig::default());
        assert!(
            (s.memory_bytes - 1800.0 * MIB).abs() < 1.0,
            "{}",
            s.memory_bytes / MIB
        );
        assert_eq!(s.source, SizeSource::OomRaised);
        // Same inputs, same answer: no compounding when re-planned.
        assert_eq!(size_stage(&p, None, &SizingConfig::default()), s);
        // The raise is capped by maxMemory (2 GiB).
        let p = profile(SizingMode::Auto, Some(observed(3, 0.5, 1900.0, 1)));
        assert_eq!(
            size_stage(&p, None, &SizingConfig::default()).memory_bytes,
            2048.0 * MIB
        );
    }

    #[test]
    fn recommend_and_off_keep_spec_but_report() {
        for mode in [SizingMode::Recommend, SizingMode::Off] {
            let p = profile(mode, Some(observed(50, 1.5, 600.0, 0)));
            let s = size_stage(&p, None, &SizingConfig::default());
            assert_eq!((s.cpu_cores, s.memory_bytes), (2.0, 1024.0 * MIB));
            let r = recommend(&p, &SizingConfig::default());
            assert_eq!((r.cpu.as_str(), r.memory.as_str()), ("1800m", "720Mi"));
            assert_eq!(r.observations, 50);
        }
    }

    #[test]
    fn overrides_win() {
        let p = profile(SizingMode::Auto, Some(observed(50, 1.5, 600.0, 0)));
        let o = StageOverrides {
            cpu: Some("3".parse().expect("q")),
            gpu: Some(0.5),
            concurrency: Some(4),
            ..Default::default()
        };
        let s = size_stage(&p, Some(&o), &SizingConfig::default());
        assert_eq!(s.cpu_cores, 3.0);
        assert!((s.memory_bytes - 720.0 * MIB).abs() < 1.0);
        // The override's concurrency is a packing degree (the plan's): the size is
        // still the profile's, observed for one invocation.
        assert_eq!((s.gpu, s.concurrency, s.sized_for), (Some(0.5), 1, 1));
    }

    #[test]
    fn scratch_follows_the_bytes_an_invocation_moved() {
        let cfg = SizingConfig::default();
        // Nothing observed, nothing set: the default, 2 GiB each.
        let p = profile(SizingMode::Auto, None);
        let s = size_stage(&p, None, &cfg);
        assert_eq!(s.scratch_bytes_each, 2048.0 * MIB);
        assert_eq!(s.scratch_bytes(4), 4.0 * 2048.0 * MIB);
        // Observed: at most 300 MiB in+out, x 2 = 600 MiB, up to a power of two.
        let mut status = observed(50, 1.0, 500.0, 0);
        status.scratch_bytes = Some(Distribution {
            p50: 100.0 * MIB,
            p95: 250.0 * MIB,
            max: 300.0 * MIB,
        });
        let p = profile(SizingMode::Auto, Some(status.clone()));
        let s = size_stage(&p, None, &cfg);
        assert_eq!(s.scratch_bytes_each, 1024.0 * MIB, "{}", s.reason);
        assert!(s.reason.contains("max in+out x 2 headroom"), "{}", s.reason);
        // The profile's value is a floor that observations only raise.
        let mut p = profile(SizingMode::Auto, Some(status.clone()));
        p.spec.resources.scratch = Some("8Gi".parse().expect("q"));
        assert_eq!(size_stage(&p, None, &cfg).scratch_bytes_each, 8192.0 * MIB);
        p.spec.resources.scratch = Some("100Mi".parse().expect("q"));
        assert_eq!(size_stage(&p, None, &cfg).scratch_bytes_each, 1024.0 * MIB);
        // Sizing Off: observations are not applied.
        let p = profile(SizingMode::Off, Some(status));
        assert_eq!(size_stage(&p, None, &cfg).scratch_bytes_each, 2048.0 * MIB);
    }
}
