//! One plan for a workflow: every decision of the other modules, per stage, each with
//! the numbers behind it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vflow_api::{
    BranchProbability, FunctionProfile, PrewarmPolicy, Provisioning, StagePlan, VideoWorkflow,
    validate::StageShape,
};

use crate::{
    branch::{BranchEstimate, BranchModel, BranchObservation, DEFAULT_PRIOR_STRENGTH},
    dag::{Dag, DagError},
    estimates::{Timing, invocation_rate, timing},
    fusion::{self, FusionInput, FusionStage, Prices, TransferModel},
    gpu::{self, GpuRequest, GpuSharing},
    packing::{self, Completion, Objective, PackingInput, ScalingModel, ServiceCurve},
    path::{self, LikelyPath},
    prewarm::{self, Margin, PathStage, PrewarmAction},
    provisioning::{self, FunctionLoad, ProvisioningConfig},
    sizing::{SizingConfig, StageSize, size_stage},
};

/// Everything the planner is told besides the workflow and its profiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PlannerConfig {
    pub sizing: SizingConfig,
    pub gpu_sharing: GpuSharing,
    /// Throughput of P processes on one GPU relative to one, e.g. [[1, 1.0], [8, 7.4]];
    /// unset: the H100 measurements for the sharing mode (MPS 7.4x at 8, else 3.4x).
    pub gpu_speedups: Option<Vec<(u32, f64)>>,
    pub margin: Margin,
    pub branch_prior_strength: f64,
    pub branch_observations: Vec<BranchObservation>,
    /// Segments a run's fan-out is expected to produce, where `input_seconds` does not
    /// tell (`segments::estimate`).
    pub expected_segments: u32,
    /// Size of a run's input.
    pub input_bytes: f64,
    /// Duration of a run's input, where known (`vflow run` probes it): the fan-out's
    /// segments, their number and lengths, are estimated from it.
    pub input_seconds: Option<f64>,
    pub transfer: TransferModel,
    pub prices: Prices,
    pub scaling: ScalingModel,
    pub packing_objective: Objective,
    pub max_packing_degree: u32,
    /// Slow-down per extra invocation sharing an instance's CPU (caches, memory bandwidth).
    pub cpu_interference: f64,
    pub provisioning: ProvisioningConfig,
    /// Invocations per second per stage, when the caller counts them; else the
    /// profile's rate over the provisioning window, shared among the stages that run
    /// the function.
    pub stage_rates: BTreeMap<String, f64>,
    /// When the plan is made (unix seconds): rates count the invocations of the window
    /// before it. None: as of each profile's newest count (tests, the simulator).
    pub now: Option<i64>,
    pub fusion_samples: u32,
    /// Fuse chain stages into one pod where the model shows a gain (the operator
    /// builds one pod for a fused chain, the local mode one instance; see
    /// docs/planner.md). Off: every stage in its own instances.
    pub fuse: bool,
    pub seed: u64,
    /// Where every instance runs when that is one known place (the local mode: this
    /// machine); None: a cluster, bounded only by maxScale.
    pub room: Option<Room>,
}

/// The cores the instances share, and how many may run at once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Room {
    pub cores: f64,
    pub max_instances: Option<u32>,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            sizing: SizingConfig::default(),
            gpu_sharing: GpuSharing::default(),
            gpu_speedups: None,
            margin: Margin::default(),
            branch_prior_strength: DEFAULT_PRIOR_STRENGTH,
            branch_observations: Vec::new(),
            expected_segments: 8,
            input_bytes: 200e6,
            input_seconds: None,
            transfer: TransferModel::default(),
            prices: Prices::default(),
            scaling: ScalingModel {
                base_seconds: 0.0,
                per_instance_seconds: 0.046,
            },
            packing_objective: Objective::default(),
            max_packing_degree: 8,
            cpu_interference: 0.05,
            provisioning: ProvisioningConfig::default(),
            stage_rates: BTreeMap::new(),
            now: None,
            fusion_samples: 1000,
            fuse: true,
            seed: 1,
            room: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Dag(#[from] DagError),
    #[error("stage {stage:?} runs function {function:?}, which has no FunctionProfile")]
    MissingProfile { stage: String, function: String },
}

/// A reason, by topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    pub topic: &'static str,
    pub text: String,
}

/// The plan for one stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageDecision {
    pub name: String,
    pub function: String,
    pub size: StageSize,
    /// Invocations per instance (packing degree).
    pub concurrency: u32,
    pub provisioning: Provisioning,
    pub min_replicas: u32,
    pub max_replicas: Option<u32>,
    /// Stage whose pod this stage runs in.
    pub fused_with: Option<String>,
    /// Seconds after a run starts at which to scale the stage up; None: not pre-warmed.
    pub prewarm_after_seconds: Option<f64>,
    pub gpu: Option<GpuRequest>,
    /// Probability that the stage runs in a run.
    pub run_probability: f64,
    pub on_likely_path: bool,
    pub reasons: Vec<Reason>,
}

impl StageDecision {
    pub fn reason_text(&self) -> String {
        self.reasons
            .iter()
            .map(|r| format!("{}: {}", r.topic, r.text))
            .collect::<Vec<_>>()
            .join(". ")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowPlan {
    pub workflow: String,
    pub stages: Vec<StageDecision>,
    /// Xanadu's greedy most likely path (what is pre-warmed).
    pub most_likely_path: Vec<String>,
    pub path_probability: f64,
    /// The max-product path, for comparison.
    pub max_product_path: Vec<String>,
    pub max_product_probability: f64,
    pub branch_probabilities: Vec<BranchEstimate>,
    /// The path as the pre-warm schedule sees it, for re-planning at run time with
    /// [`prewarm::jit_schedule`] or [`prewarm::replan`].
    pub path_stages: Vec<PathStage>,
    /// Every stage in topological order in the same form (each after all its
    /// parents): for scheduling what follows a branch off the likely path once a run
    /// takes it.
    pub all_stages: Vec<PathStage>,
    /// The schedule for a run starting at 0.
    pub prewarm: Vec<PrewarmAction>,
    pub prewarm_policy: PrewarmPolicy,
    /// The margin the schedule was made with, for re-planning it while a run goes.
    pub prewarm_margin: Margin,
    /// Monte Carlo estimate of a run's latency and cost under this plan.
    pub p95_seconds: f64,
    pub p50_seconds: f64,
    pub cost_per_run: f64,
    pub latency_objective_seconds: Option<f64>,
    pub meets_objective: bool,
    pub warnings: Vec<String>,
}

impl WorkflowPlan {
    /// The per-stage plan as the VideoWorkflow status carries it.
    pub fn to_status_stages(&self) -> Vec<StagePlan> {
        self.stages
            .iter()
            .map(|s| StagePlan {
                name: s.name.clone(),
                cpu: Some(s.size.cpu()),
                memory: Some(s.size.memory()),
                gpu: s.size.gpu,
                gpu_resources: s
                    .gpu
                    .as_ref()
                    .map(|g| g.resources.clone())
                    .unwrap_or_default(),
                concurrency: Some(s.concurrency),
                min_replicas: Some(s.min_replicas),
                max_replicas: s.max_replicas,
                replicas: None,
                ready_replicas: None,
                provisioning: Some(s.provisioning),
                fused_with: s.fused_with.clone(),
                prewarm_after_seconds: s.prewarm_after_seconds,
                reason: Some(s.reason_text()),
            })
            .collect()
    }

    /// Learned branch probabilities as the VideoWorkflow status carries them.
    pub fn to_status_branches(&self) -> Vec<BranchProbability> {
        self.branch_probabilities
            .iter()
            .map(|b| BranchProbability {
                stage: b.stage.clone(),
                probability: b.probability,
                observations: b.observations,
                taken: b.taken,
            })
            .collect()
    }
}

/// Per-stage facts gathered before deciding.
struct StageFacts {
    size: StageSize,
    timing: Timing,
    per_segment: bool,
    copies: u32,
    output_bytes: f64,
    /// Mean execution time by packing degree, as observed (degree, invocations, s).
    by_degree: Vec<(u32, u64, f64)>,
    /// Cores one invocation uses (p50), once observed.
    used_cores: Option<f64>,
    /// How its instance grows with the invocations it runs at once.
    growth: packing::InstanceGrowth,
}

impl StageFacts {
    /// Cores one invocation uses: observed, else its share of the request.
    fn cores_each(&self) -> f64 {
        let share = self.size.cpu_cores / f64::from(self.size.sized_for.max(1));
        self.used_cores.unwrap_or(share)
    }
}

/// Plans a workflow against its FunctionProfiles (by name).
pub fn plan_workflow(
    workflow: &VideoWorkflow,
    profiles: &BTreeMap<String, FunctionProfile>,
    cfg: &PlannerConfig,
) -> Result<WorkflowPlan, PlanError> {
    let spec = &workflow.spec;
    let dag = Dag::from_spec(spec)?;
    let model = BranchModel::from_spec(
        spec,
        &dag,
        &cfg.branch_observations,
        cfg.branch_prior_strength,
    );
    let likely = path::greedy(&dag, &model);
    let max_product = path::max_product(&dag, &model);
    let run_p = path::run_probabilities(&dag, &model);
    let lengths = cfg
        .input_seconds
        .and_then(|t| crate::segments::estimate(workflow, profiles, t))
        .filter(|l| !l.is_empty());
    let segments = lengths
        .as_ref()
        .map_or(cfg.expected_segments.max(1), |l| l.len() as u32);
    // Each segment's work relative to the mean (a segment's invocation takes time in
    // proportion to its length).
    let work: Vec<f64> = lengths
        .map(|l| {
            let mean = l.iter().sum::<f64>() / l.len() as f64;
            l.iter().map(|x| x / mean.max(1e-9)).collect()
        })
        .unwrap_or_default();
    let mut warnings = Vec::new();

    // Sizes, timings and data sizes.
    let mut facts: Vec<StageFacts> = Vec::with_capacity(dag.len());
    let mut input_of = vec![0.0f64; dag.len()];
    for &i in dag.order() {
        let stage = &spec.stages[i];
        let profile = profiles
            .get(&stage.function)
            .ok_or_else(|| PlanError::MissingProfile {
                stage: stage.name.clone(),
                function: stage.function.clone(),
            })?;
        let size = size_stage(profile, stage.overrides.as_ref(), &cfg.sizing);
        let per_segment = matches!(dag.shape(i), StageShape::PerSegment(_));
        let copies = if per_segment { segments } else { 1 };
        input_of[i] = if dag.parents(i).is_empty() {
            cfg.input_bytes
        } else {
            dag.parents(i)
                .iter()
                .map(|&u| facts_out(&facts, &dag, u, i, segments))
                .sum()
        };
        let ratio = profile
            .status
            .as_ref()
            .and_then(|s| s.output_input_ratio)
            .unwrap_or(1.0);
        let status = profile.status.as_ref();
        let used_cores = status
            .filter(|s| s.invocations >= MIN_OBSERVED)
            .and_then(|s| s.cpu_cores.as_ref())
            .map(|d| d.p50)
            .filter(|c| c.is_finite() && *c > 0.0);
        let overrides = stage.overrides.as_ref();
        let bound = |q: &Option<vflow_api::Quantity>| q.as_ref().and_then(|q| q.value().ok());
        let bounds = profile.spec.bounds.as_ref();
        let growth = packing::InstanceGrowth {
            cores: size.cpu_cores,
            memory_bytes: size.memory_bytes,
            sized_for: size.sized_for.max(1),
            cores_each: used_cores.unwrap_or(size.cpu_cores / f64::from(size.sized_for.max(1))),
            pinned_cores: overrides.is_some_and(|o| o.cpu.is_some()),
            pinned_memory: overrides.is_some_and(|o| o.memory.is_some()),
            // No instance is larger than the room it runs in.
            max_cores: match (bounds.and_then(|b| bound(&b.max_cpu)), cfg.room) {
                (Some(b), Some(r)) => Some(b.min(r.cores)),
                (b, r) => b.or(r.map(|r| r.cores)),
            },
            max_memory_bytes: bounds.and_then(|b| bound(&b.max_memory)),
        };
        facts.push(StageFacts {
            size,
            timing: timing(profile),
            per_segment,
            copies,
            output_bytes: input_of[i] * ratio,
            by_degree: status
                .map(|s| {
                    s.exec_by_degree
                        .iter()
                        .map(|d| (d.degree, d.invocations, d.mean_seconds))
                        .collect()
                })
                .unwrap_or_default(),
            used_cores,
            growth,
        });
    }
    // facts were pushed in topological order; index them by stage.
    let facts = reorder(facts, dag.order());

    // Packing: the concurrency per instance for a run's burst of segments.
    let mut concurrency = vec![1u32; dag.len()];
    let mut packing_reason = vec![String::new(); dag.len()];
    for i in 0..dag.len() {
        let f = &facts[i];
        let o = spec.stages[i].overrides.as_ref();
        if let Some(c) = o.and_then(|o| o.concurrency) {
            concurrency[i] = c.max(1);
            packing_reason[i] = format!("{c} from the stage's overrides");
            continue;
        }
        if !f.per_segment {
            concurrency[i] = f.size.concurrency;
            packing_reason[i] =
                format!("runs once per run: {} from the profile", f.size.concurrency);
            continue;
        }
        let mut input = packing_input(cfg, f, segments, o.and_then(|o| o.max_scale));
        input.work = work.clone();
        let choice = packing::choose(&input, cfg.packing_objective);
        concurrency[i] = choice.chosen.degree;
        packing_reason[i] = format!("{}; {}", choice.reason, curve_source(f, cfg));
    }

    // Fusion over the stages on the likely path.
    let fusion_input = fusion_input(spec, &dag, &likely, &facts, &concurrency, segments, cfg);
    let fusion_plan = fusion::search(&fusion_input);
    let mut fused_with: Vec<Option<usize>> = vec![None; dag.len()];
    let mut fusion_reason: Vec<Option<String>> = vec![None; dag.len()];
    for &(u, v) in &fusion_plan.fused_edges(&fusion_input) {
        let head = fused_with[u].unwrap_or(u);
        fused_with[v] = Some(head);
    }
    for (e, &(u, v)) in fusion_plan.edges.iter().zip(&fusion_input.candidates) {
        fusion_reason[v] = Some(e.reason.clone());
        if e.fused {
            fusion_reason[u].get_or_insert_with(|| e.reason.clone());
        }
    }

    // Durable vs ephemeral.
    let durable = provisioning_counts(workflow, profiles, &dag, &facts, &concurrency, cfg);

    // Pre-warm schedule along the likely path.
    let path_stages = schedule_stages(
        &dag,
        &likely,
        &facts,
        &concurrency,
        &durable,
        &fused_with,
        spec,
        cfg,
    );
    // Every stage as if all ran: where a run takes a branch off the likely path, the
    // stages after it are scheduled from this (the run engine's Prewarmer).
    let every = LikelyPath {
        stages: dag.order().to_vec(),
        runs: vec![true; dag.len()],
        probability: 1.0,
    };
    let all_stages = schedule_stages(
        &dag,
        &every,
        &facts,
        &concurrency,
        &durable,
        &fused_with,
        spec,
        cfg,
    );
    let prewarm = prewarm::schedule(spec.prewarm, &path_stages, 0.0, cfg.margin);
    let arrivals = prewarm::expected_arrivals(&path_stages, 0.0);

    let mut stages = Vec::with_capacity(dag.len());
    for i in 0..dag.len() {
        let stage = &spec.stages[i];
        let f = &facts[i];
        // The instance runs concurrency[i] invocations at once: its cores and memory
        // grow with them, unless the stage's overrides pin them.
        let p = concurrency[i];
        let mut size = f.size.clone();
        size.cpu_cores = f.growth.cores(p);
        size.memory_bytes = f.growth.memory_bytes(p);
        size.sized_for = p;
        let cpu_text = (size.cpu_cores != f.size.cpu_cores).then(|| {
            format!(
                "{} cores sized for {} at once, {} for {}: each invocation uses {:.2} ({})",
                f.size.cpu(),
                f.size.sized_for,
                size.cpu(),
                p,
                f.growth.cores_each,
                if f.used_cores.is_some() {
                    "observed p50"
                } else {
                    "its share of the request: not observed yet"
                }
            )
        });
        let memory_text = (size.memory_bytes != f.size.memory_bytes).then(|| {
            format!(
                "{} sized for {} at once, {} for {}: the runtime's {} MiB plus each invocation's share",
                f.size.memory(),
                f.size.sized_for,
                size.memory(),
                p,
                packing::RUNTIME_BASE_BYTES / (1024.0 * 1024.0)
            )
        });
        let mut reasons = vec![Reason {
            topic: "size",
            text: format!(
                "{} cores, {} memory ({:?}): {}",
                f.size.cpu(),
                f.size.memory(),
                f.size.source,
                f.size.reason
            ),
        }];
        reasons.push(Reason {
            topic: "concurrency",
            text: packing_reason[i].clone(),
        });
        if let Some(text) = cpu_text {
            reasons.push(Reason { topic: "cpu", text });
        }
        if let Some(text) = memory_text {
            reasons.push(Reason {
                topic: "memory",
                text,
            });
        }
        let (prov, min_replicas, prov_text) = durable[i].clone();
        reasons.push(Reason {
            topic: "provisioning",
            text: prov_text,
        });
        if let Some(text) = &fusion_reason[i] {
            reasons.push(Reason {
                topic: "fusion",
                text: text.clone(),
            });
        }
        // Split points from the function's measured usage over its runs.
        let usage = profiles
            .get(&stage.function)
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.usage_profile.as_ref());
        reasons.push(Reason {
            topic: "split",
            text: match usage {
                Some(u) => format!(
                    "{} (from {} invocations' usage profile)",
                    crate::split::read_usage(u, size.cpu_cores, size.memory_bytes).describe(),
                    u.invocations
                ),
                None => {
                    "no usage profile measured yet (`vflow run` or `vflow profile` records one)"
                        .into()
                }
            },
        });
        let pos = path_stages.iter().position(|p| p.stage == stage.name);
        let action = prewarm.iter().find(|a| a.stage == stage.name);
        let prewarm_text = match (pos, action) {
            (Some(k), Some(a)) => format!(
                "{:?}: input expected at {:.2}s (sd {:.2}s), cold start {:.2}s, so scale to {} at {:.2}s",
                spec.prewarm,
                arrivals[k].0,
                arrivals[k].1,
                path_stages[k].cold_start_seconds,
                a.replicas,
                a.at_seconds
            ),
            (Some(_), None) if spec.prewarm == PrewarmPolicy::None => {
                "prewarm None: scaled up when its input arrives".into()
            }
            (Some(_), None) => match fused_with[i] {
                Some(head) => format!(
                    "runs in {}'s instances (fused): warmed with them",
                    dag.name(head)
                ),
                None => "already warm (durable): nothing to pre-warm".into(),
            },
            (None, _) => format!(
                "not on the most likely path (runs in {:.0}% of runs): scaled up on demand",
                run_p[i] * 100.0
            ),
        };
        reasons.push(Reason {
            topic: "prewarm",
            text: prewarm_text,
        });
        let gpu = f.size.gpu.and_then(|share| {
            match gpu::translate(share, f.size.gpu_memory_bytes, &cfg.gpu_sharing) {
                Ok(r) => {
                    reasons.push(Reason {
                        topic: "gpu",
                        text: r.reason.clone(),
                    });
                    Some(r)
                }
                Err(e) => {
                    warnings.push(format!("stage {}: {e}", stage.name));
                    reasons.push(Reason {
                        topic: "gpu",
                        text: e.to_string(),
                    });
                    None
                }
            }
        });
        stages.push(StageDecision {
            name: stage.name.clone(),
            function: stage.function.clone(),
            size,
            concurrency: concurrency[i],
            provisioning: prov,
            min_replicas,
            max_replicas: stage.overrides.as_ref().and_then(|o| o.max_scale),
            fused_with: fused_with[i].map(|h| dag.name(h).to_string()),
            prewarm_after_seconds: action.map(|a| a.at_seconds),
            gpu,
            run_probability: run_p[i],
            on_likely_path: likely.runs[i],
            reasons,
        });
    }
    let objective = spec.latency_objective.map(|d| d.as_secs_f64());
    if let Some(limit) = objective
        && fusion_plan.estimate.p95_seconds > limit
    {
        warnings.push(format!(
            "estimated p95 {:.1}s is above the latency objective {:.1}s even with the fastest fusion plan",
            fusion_plan.estimate.p95_seconds, limit
        ));
    }
    Ok(WorkflowPlan {
        workflow: workflow.metadata.name.clone().unwrap_or_default(),
        stages,
        most_likely_path: likely.names(&dag),
        path_probability: likely.probability,
        max_product_path: max_product.names(&dag),
        max_product_probability: max_product.probability,
        branch_probabilities: model.estimates(),
        path_stages,
        all_stages,
        prewarm,
        prewarm_policy: spec.prewarm,
        prewarm_margin: cfg.margin,
        p95_seconds: fusion_plan.estimate.p95_seconds,
        p50_seconds: fusion_plan.estimate.p50_seconds,
        cost_per_run: fusion_plan.estimate.mean_cost,
        latency_objective_seconds: objective,
        meets_objective: objective.is_none_or(|l| fusion_plan.estimate.p95_seconds <= l),
        warnings,
    })
}

/// Bytes stage u hands to child v per invocation of v.
fn facts_out(facts: &[StageFacts], dag: &Dag, u: usize, v: usize, segments: u32) -> f64 {
    let Some(pos) = dag.order().iter().position(|&x| x == u) else {
        return 0.0;
    };
    let f = &facts[pos];
    let v_per_segment = matches!(dag.shape(v), StageShape::PerSegment(_));
    match (f.per_segment, v_per_segment) {
        // A fan-out's output is split among the segments.
        (false, true) => f.output_bytes / f64::from(segments),
        // A join takes every segment.
        (true, false) => f.output_bytes * f64::from(segments),
        _ => f.output_bytes,
    }
}

fn reorder(facts: Vec<StageFacts>, order: &[usize]) -> Vec<StageFacts> {
    let mut slots: Vec<Option<StageFacts>> = (0..facts.len()).map(|_| None).collect();
    for (f, &i) in facts.into_iter().zip(order) {
        slots[i] = Some(f);
    }
    slots.into_iter().flatten().collect()
}

/// Invocations a quantity needs before the planner trusts it over the profile's priors.
const MIN_OBSERVED: u64 = 5;

/// E(P) from the function's own runs: degree 1 from its timing, and every other degree
/// seen at least [`MIN_OBSERVED`] times. None until one beyond 1 is.
fn observed_curve(f: &StageFacts) -> Option<ServiceCurve> {
    let mut points = vec![(1u32, f.timing.exec.median)];
    points.extend(
        f.by_degree
            .iter()
            .filter(|(p, n, e)| *p > 1 && *n >= MIN_OBSERVED && e.is_finite() && *e > 0.0)
            .map(|&(p, _, e)| (p, e)),
    );
    (points.len() > 1)
        .then(|| ServiceCurve::new(points).ok())
        .flatten()
}

/// How E(P) was had, for the packing reason.
fn curve_source(f: &StageFacts, cfg: &PlannerConfig) -> String {
    if observed_curve(f).is_some() {
        let seen: Vec<String> = f
            .by_degree
            .iter()
            .filter(|(_, n, _)| *n >= MIN_OBSERVED)
            .map(|(p, n, e)| format!("P={p}: {e:.2}s over {n}"))
            .collect();
        format!("E(P) observed ({})", seen.join(", "))
    } else if f.size.gpu.is_some() {
        let speedups = cfg
            .gpu_speedups
            .clone()
            .unwrap_or_else(|| default_gpu_speedups(&cfg.gpu_sharing));
        format!("E(P) from the GPU speedup prior {speedups:?} (no runs beyond P=1 observed yet)")
    } else {
        format!(
            "E(P) modelled: each invocation uses {:.2} of the instance's {:.2} cores ({}), {}, {:.0}% slower per neighbour",
            f.cores_each(),
            f.size.cpu_cores,
            if f.used_cores.is_some() {
                "observed p50"
            } else {
                "its share of the request: not observed yet"
            },
            if f.growth.pinned_cores {
                "cores pinned by the overrides: packed invocations share them"
            } else {
                "the instance grows beyond them"
            },
            100.0 * cfg.cpu_interference
        )
    }
}

fn packing_input(
    cfg: &PlannerConfig,
    f: &StageFacts,
    segments: u32,
    max_scale: Option<u32>,
) -> PackingInput {
    let e1 = f.timing.exec.median;
    let curve = match observed_curve(f) {
        Some(curve) => curve,
        None if f.size.gpu.is_some() => {
            let speedups = cfg
                .gpu_speedups
                .clone()
                .unwrap_or_else(|| default_gpu_speedups(&cfg.gpu_sharing));
            ServiceCurve::from_speedups(e1, &speedups)
                .unwrap_or_else(|_| ServiceCurve::cpu_shared(e1, 1.0, |_| 1.0, 0.0))
        }
        // Invocations that use fewer cores than the instance has pack into the room;
        // beyond it the instance grows, unless its cores are pinned (then they share).
        None => ServiceCurve::cpu_shared(
            e1,
            f.cores_each(),
            |p| f.growth.cores(p),
            cfg.cpu_interference,
        ),
    };
    // No degree takes the instance past the profile's bounds.
    let max_degree = f.growth.largest_fitting(cfg.max_packing_degree.max(1));
    // What P invocations keep busy (a local process is not held to its request; the
    // request's headroom would leave a core of a 2-core machine unused).
    let instance_cores = (1..=max_degree)
        .map(|p| (f.cores_each() * f64::from(p)).min(f.growth.cores(p)))
        .collect();
    let instance_price = (1..=max_degree)
        .map(|p| {
            cfg.prices.per_second(
                f.growth.cores(p),
                f.growth.memory_bytes(p),
                f.size.gpu.unwrap_or(0.0),
            )
        })
        .collect();
    PackingInput {
        invocations: segments,
        curve,
        scaling: cfg.scaling,
        instance_price,
        max_degree,
        warm_instances: 0,
        max_instances: match (max_scale, cfg.room.and_then(|r| r.max_instances)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
        instance_cores,
        room_cores: cfg.room.map(|r| r.cores),
        work: Vec::new(),
        completion: Completion::All,
    }
}

/// Throughput of P processes on one GPU, relative to one: measured on one H100 with a
/// small detector (ARCHITECTURE.md): 7.4x at 8 under MPS, 3.4x under time-slicing.
pub fn default_gpu_speedups(sharing: &GpuSharing) -> Vec<(u32, f64)> {
    match sharing {
        GpuSharing::Mps { .. } => vec![(1, 1.0), (8, 7.4)],
        _ => vec![(1, 1.0), (8, 3.4)],
    }
}

fn fusion_input(
    spec: &vflow_api::VideoWorkflowSpec,
    dag: &Dag,
    likely: &LikelyPath,
    facts: &[StageFacts],
    concurrency: &[u32],
    segments: u32,
    cfg: &PlannerConfig,
) -> FusionInput {
    let on: Vec<usize> = likely.stages.clone();
    let pos = |i: usize| on.iter().position(|&x| x == i);
    let stages = on
        .iter()
        .map(|&i| {
            let f = &facts[i];
            // Packing P on one instance stretches each invocation by E(P) / E(1).
            let e1 = f.timing.exec.median.max(1e-9);
            let stretch = if concurrency[i] > 1 {
                packing_input(cfg, f, segments, None)
                    .curve
                    .at(concurrency[i])
                    / e1
            } else {
                1.0
            };
            FusionStage {
                name: spec.stages[i].name.clone(),
                exec: crate::rng::LogNormal {
                    median: f.timing.exec.median * stretch,
                    sigma: f.timing.exec.sigma,
                },
                cores: f.size.cpu_cores / f64::from(concurrency[i]),
                memory_bytes: f.size.memory_bytes,
                gpu: f.size.gpu.unwrap_or(0.0) / f64::from(concurrency[i]),
                output_bytes: f.output_bytes,
                per_segment: f.per_segment,
            }
        })
        .collect();
    let parents: Vec<Vec<usize>> = on
        .iter()
        .map(|&i| {
            effective_parents(dag, &likely.runs, i)
                .into_iter()
                .filter_map(pos)
                .collect()
        })
        .collect();
    let candidates = dag
        .chain_edges()
        .into_iter()
        .filter(|_| cfg.fuse && spec.fusion == vflow_api::FusionPolicy::Auto)
        .filter(|&(u, v)| fusable(spec, facts, concurrency, dag, u, v))
        .filter_map(|(u, v)| Some((pos(u)?, pos(v)?)))
        .collect();
    FusionInput {
        stages,
        parents,
        order: (0..on.len()).collect(),
        candidates,
        segments,
        objective_seconds: spec.latency_objective.map(|d| d.as_secs_f64()),
        transfer: cfg.transfer,
        prices: cfg.prices.clone(),
        samples: cfg.fusion_samples.max(1),
        seed: cfg.seed,
    }
}

/// A chain edge u -> v that one instance can run as one invocation (the run engine
/// checks the same before it sends a chain): same shape, u fans out no segments,
/// neither has a condition (a skipped step would leave the chain half run), no GPU
/// (one container of the pod holds it) and the same packing degree (one instance
/// takes one concurrency).
fn fusable(
    spec: &vflow_api::VideoWorkflowSpec,
    facts: &[StageFacts],
    concurrency: &[u32],
    dag: &Dag,
    u: usize,
    v: usize,
) -> bool {
    let gpu = |i: usize| facts[i].size.gpu.is_some_and(|g| g > 0.0);
    dag.shape(u) == dag.shape(v)
        && !spec.stages[u].fan_out
        && spec.stages[u].when.is_none()
        && spec.stages[v].when.is_none()
        && !gpu(u)
        && !gpu(v)
        && concurrency[u] == concurrency[v]
}

/// The running stages whose output reaches `i`: a skipped stage passes its input
/// through, so its own inputs count instead.
fn effective_parents(dag: &Dag, runs: &[bool], i: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut stack: Vec<usize> = dag.parents(i).to_vec();
    while let Some(u) = stack.pop() {
        if runs[u] {
            if !out.contains(&u) {
                out.push(u);
            }
        } else {
            stack.extend(dag.parents(u));
        }
    }
    out.sort_by_key(|&u| dag.rank(u));
    out
}

/// Durable instances the previous plan (the workflow's status) gave the stage.
fn durable_now(workflow: &VideoWorkflow, stage: &str) -> u32 {
    workflow
        .status
        .as_ref()
        .and_then(|s| s.stages.iter().find(|p| p.name == stage))
        .filter(|p| p.provisioning == Some(Provisioning::Durable))
        .and_then(|p| p.min_replicas)
        .unwrap_or(0)
}

fn provisioning_counts(
    workflow: &VideoWorkflow,
    profiles: &BTreeMap<String, FunctionProfile>,
    dag: &Dag,
    facts: &[StageFacts],
    concurrency: &[u32],
    cfg: &PlannerConfig,
) -> Vec<(Provisioning, u32, String)> {
    let spec = &workflow.spec;
    let mut users: BTreeMap<&str, u32> = BTreeMap::new();
    for s in &spec.stages {
        *users.entry(s.function.as_str()).or_default() += 1;
    }
    let mut prov_cfg = cfg.provisioning.clone();
    prov_cfg.keep_alive_seconds = spec.scale_to_zero_after.as_secs_f64();
    let loads: Vec<FunctionLoad> = (0..dag.len())
        .map(|i| {
            let stage = &spec.stages[i];
            let rate = cfg.stage_rates.get(&stage.name).copied().or_else(|| {
                let r = profiles
                    .get(&stage.function)
                    .and_then(|p| invocation_rate(p, cfg.now, cfg.provisioning.window_seconds))?;
                Some(
                    r / f64::from(
                        users
                            .get(stage.function.as_str())
                            .copied()
                            .unwrap_or(1)
                            .max(1),
                    ),
                )
            });
            FunctionLoad {
                name: stage.name.clone(),
                rate: rate.unwrap_or(0.0),
                exec_seconds: facts[i].timing.exec.mean(),
                cold_start_seconds: facts[i].timing.cold_start.median,
                memory_bytes: facts[i].size.memory_bytes,
                concurrency: concurrency[i],
                durable_now: durable_now(workflow, &stage.name),
            }
        })
        .collect();
    let decisions = provisioning::plan(&loads, &prov_cfg);
    (0..dag.len())
        .map(|i| {
            let stage = &spec.stages[i];
            let o = stage.overrides.as_ref();
            let choice = o.and_then(|o| o.provisioning).unwrap_or(spec.provisioning);
            let min_scale = o.and_then(|o| o.min_scale);
            let (prov, n, text) = match choice {
                Provisioning::Durable => (
                    Provisioning::Durable,
                    min_scale.unwrap_or(1).max(1),
                    "Durable as the workflow or stage says".to_string(),
                ),
                Provisioning::Ephemeral => (
                    Provisioning::Ephemeral,
                    min_scale.unwrap_or(0),
                    "Ephemeral as the workflow or stage says".to_string(),
                ),
                Provisioning::Auto => {
                    let d = &decisions[i];
                    let known = loads[i].rate > 0.0;
                    let n = d.durable.max(min_scale.unwrap_or(0));
                    let text = if known {
                        d.reason.clone()
                    } else {
                        "no invocation rate observed yet: ephemeral until one is".to_string()
                    };
                    (
                        if n > 0 {
                            Provisioning::Durable
                        } else {
                            Provisioning::Ephemeral
                        },
                        n,
                        text,
                    )
                }
            };
            (prov, n, text)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn schedule_stages(
    dag: &Dag,
    likely: &LikelyPath,
    facts: &[StageFacts],
    concurrency: &[u32],
    durable: &[(Provisioning, u32, String)],
    fused_with: &[Option<usize>],
    spec: &vflow_api::VideoWorkflowSpec,
    cfg: &PlannerConfig,
) -> Vec<PathStage> {
    let on = &likely.stages;
    on.iter()
        .map(|&i| {
            let f = &facts[i];
            let after = effective_parents(dag, &likely.runs, i)
                .into_iter()
                .filter_map(|u| on.iter().position(|&x| x == u))
                .collect();
            let max_scale = spec.stages[i].overrides.as_ref().and_then(|o| o.max_scale);
            let replicas = f
                .copies
                .div_ceil(concurrency[i].max(1))
                .min(max_scale.unwrap_or(u32::MAX))
                .max(1);
            let t = &cfg.transfer;
            let overhead = t.dispatch_seconds
                + 2.0 * t.request_seconds
                + f.output_bytes / t.put_bytes_per_second
                + f.output_bytes / t.get_bytes_per_second;
            PathStage {
                stage: dag.name(i).to_string(),
                after,
                exec_seconds: f.timing.exec.median,
                exec_std_seconds: f.timing.exec.std_dev(),
                overhead_seconds: overhead,
                cold_start_seconds: f.timing.cold_start.median,
                cold_start_std_seconds: f.timing.cold_start.std_dev(),
                replicas,
                warm: durable[i].1 >= replicas || fused_with[i].is_some(),
            }
        })
        .collect()
}
