//! When a stage's pods are resized. A new size rolls every pod of the stage, so the
//! plan's size is applied only when it matters: the observer folds new observations
//! into the profile every 30 s, and a few millicores of p95 would otherwise roll a busy
//! stage each time. A resize waits while the stage has invocations in flight (a roll
//! would start their successors cold); memory raised after an OOM goes at once.

use k8s_openapi::api::apps::v1::Deployment;
use vflow_api::Quantity;
use vflow_planner::sizing::{SizeSource, StageSize};

/// Relative change in CPU or memory below which the running size is kept.
pub const MATERIAL_CHANGE: f64 = 0.10;

/// CPU cores and memory bytes the stage's running pods request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunningSize {
    pub cpu_cores: f64,
    pub memory_bytes: f64,
}

/// The size of the function container of an existing Deployment (None when it has no
/// such container or its quantities cannot be read: then the plan's size is applied).
pub fn running_size(d: &Deployment, container: &str) -> Option<RunningSize> {
    let c = d
        .spec
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)?;
    let requests = c.resources.as_ref()?.requests.as_ref()?;
    let value = |k: &str| requests.get(k)?.0.parse::<Quantity>().ok()?.value().ok();
    Some(RunningSize {
        cpu_cores: value("cpu")?,
        memory_bytes: value("memory")?,
    })
}

/// What to do with the plan's size for a stage whose pods run at `running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Build the pods at the plan's size (new stage, material change while idle, or
    /// memory raised after an OOM).
    Apply,
    /// Within [`MATERIAL_CHANGE`]: keep the running size.
    KeepImmaterial,
    /// Material, but invocations are in flight: keep it until the stage is idle (the
    /// in-flight count dropping triggers the reconcile that applies it).
    Defer,
}

pub fn decide(planned: &StageSize, running: Option<RunningSize>, in_flight: u32) -> Resize {
    let Some(running) = running else {
        return Resize::Apply;
    };
    let changed = |new: f64, old: f64| {
        if old <= 0.0 {
            new != old
        } else {
            ((new - old) / old).abs() > MATERIAL_CHANGE
        }
    };
    let oom_raise =
        planned.source == SizeSource::OomRaised && planned.memory_bytes > running.memory_bytes;
    if oom_raise {
        return Resize::Apply;
    }
    if !changed(planned.cpu_cores, running.cpu_cores)
        && !changed(planned.memory_bytes, running.memory_bytes)
    {
        return Resize::KeepImmaterial;
    }
    if in_flight > 0 {
        return Resize::Defer;
    }
    Resize::Apply
}

/// The size to build the stage's pods with, given what [`decide`] said.
pub fn settle(planned: &StageSize, running: Option<RunningSize>, resize: Resize) -> StageSize {
    match (resize, running) {
        (Resize::Apply, _) | (_, None) => planned.clone(),
        (_, Some(r)) => StageSize {
            cpu_cores: r.cpu_cores,
            memory_bytes: r.memory_bytes,
            ..planned.clone()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(cpu: f64, mem: f64, source: SizeSource) -> StageSize {
        StageSize {
            cpu_cores: cpu,
            memory_bytes: mem,
            gpu: None,
            gpu_memory_bytes: None,
            concurrency: 1,
            sized_for: 1,
            scratch_bytes_each: 2.0 * GIB,
            source,
            reason: String::new(),
        }
    }

    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    const RUNNING: RunningSize = RunningSize {
        cpu_cores: 1.0,
        memory_bytes: GIB,
    };

    #[test]
    fn a_new_stage_gets_the_plan() {
        let p = size(0.5, GIB, SizeSource::Spec);
        assert_eq!(decide(&p, None, 3), Resize::Apply);
        assert_eq!(settle(&p, None, decide(&p, None, 3)), p);
    }

    #[test]
    fn a_few_percent_keeps_the_running_pods() {
        let p = size(1.05, 1.08 * GIB, SizeSource::Observed);
        assert_eq!(decide(&p, Some(RUNNING), 0), Resize::KeepImmaterial);
        let kept = settle(&p, Some(RUNNING), decide(&p, Some(RUNNING), 0));
        assert_eq!((kept.cpu_cores, kept.memory_bytes), (1.0, GIB));
    }

    #[test]
    fn a_material_change_waits_for_the_stage_to_be_idle() {
        let p = size(0.6, GIB, SizeSource::Observed);
        assert_eq!(decide(&p, Some(RUNNING), 2), Resize::Defer);
        assert_eq!(
            settle(&p, Some(RUNNING), decide(&p, Some(RUNNING), 2)).cpu_cores,
            1.0
        );
        assert_eq!(decide(&p, Some(RUNNING), 0), Resize::Apply);
        assert_eq!(
            settle(&p, Some(RUNNING), decide(&p, Some(RUNNING), 0)).cpu_cores,
            0.6
        );
        // Memory alone counts too.
        let m = size(1.0, 0.5 * GIB, SizeSource::Observed);
        assert_eq!(decide(&m, Some(RUNNING), 0), Resize::Apply);
    }

    #[test]
    fn memory_raised_after_an_oom_goes_at_once() {
        let p = size(1.0, 1.5 * GIB, SizeSource::OomRaised);
        assert_eq!(decide(&p, Some(RUNNING), 4), Resize::Apply);
        // A raise of a few percent too: the pods are being killed.
        let small = size(1.0, 1.05 * GIB, SizeSource::OomRaised);
        assert_eq!(decide(&small, Some(RUNNING), 4), Resize::Apply);
    }
}
