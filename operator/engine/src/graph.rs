//! The shape of a run: which stage instances ("units") exist and what each reads.

use vflow_api::condition::StageCondition;
use vflow_api::validate::{StageShape, workflow_shape};
use vflow_api::{FunctionProfile, VideoWorkflowSpec};

/// One invocation slot: a stage, and for per-segment stages the segment.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct UnitKey {
    pub stage: usize,
    pub segment: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct StageNode {
    pub name: String,
    pub function: String,
    pub after: Vec<usize>,
    pub shape: StageShape,
    pub fan_out: bool,
    pub join: bool,
    /// The condition, the index of the stage whose metadata it reads, and its text.
    pub when: Option<(StageCondition, usize, String)>,
    pub params: std::collections::BTreeMap<String, serde_json::Value>,
    pub retries: u32,
    pub timeout_seconds: Option<f64>,
    pub max_scale: Option<u32>,
    pub min_scale: Option<u32>,
    pub concurrency: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct RunGraph {
    pub stages: Vec<StageNode>,
    /// Topological order of stage indexes.
    pub order: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("the workflow's stages do not form a sound DAG (run `vflow validate` for the reasons)")]
    Unsound,
    #[error("stage {stage}: `when` condition: {message}")]
    Condition { stage: String, message: String },
}

/// Retries when a stage does not say: two, so a flaky invocation gets three tries.
pub const DEFAULT_RETRIES: u32 = 2;

impl RunGraph {
    pub fn new(spec: &VideoWorkflowSpec) -> Result<Self, GraphError> {
        let (order, shapes) = workflow_shape(spec).ok_or(GraphError::Unsound)?;
        let index = |name: &str| spec.stages.iter().position(|s| s.name == name);
        let mut stages = Vec::with_capacity(spec.stages.len());
        for (i, stage) in spec.stages.iter().enumerate() {
            let after = stage.after.iter().filter_map(|a| index(a)).collect();
            let when = match &stage.when {
                Some(w) => {
                    let cond =
                        StageCondition::parse(&w.condition).map_err(|e| GraphError::Condition {
                            stage: stage.name.clone(),
                            message: e.to_string(),
                        })?;
                    let source = index(&cond.stage).ok_or_else(|| GraphError::Condition {
                        stage: stage.name.clone(),
                        message: format!("no stage {}", cond.stage),
                    })?;
                    Some((cond, source, w.condition.clone()))
                }
                None => None,
            };
            let overrides = stage.overrides.as_ref();
            stages.push(StageNode {
                name: stage.name.clone(),
                function: stage.function.clone(),
                after,
                shape: shapes[i],
                fan_out: stage.fan_out,
                join: stage.join,
                when,
                params: stage.params.clone(),
                retries: overrides.and_then(|o| o.retries).unwrap_or(DEFAULT_RETRIES),
                timeout_seconds: overrides
                    .and_then(|o| o.timeout.as_ref())
                    .map(|d| d.as_secs_f64()),
                max_scale: overrides.and_then(|o| o.max_scale),
                min_scale: overrides.and_then(|o| o.min_scale),
                concurrency: overrides.and_then(|o| o.concurrency),
            });
        }
        Ok(Self { stages, order })
    }

    /// The timeout of one invocation: the stage's override, else the profile's.
    pub fn timeout_seconds(&self, stage: usize, profile: Option<&FunctionProfile>) -> Option<f64> {
        self.stages[stage].timeout_seconds.or_else(|| {
            profile
                .and_then(|p| p.spec.timeout.as_ref())
                .map(|d| d.as_secs_f64())
        })
    }

    pub fn stage_index(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }

    /// The units of a stage once the number of segments is known.
    pub fn units_of(&self, stage: usize, segments: Option<u32>) -> Vec<UnitKey> {
        match self.stages[stage].shape {
            StageShape::Once => vec![UnitKey {
                stage,
                segment: None,
            }],
            StageShape::PerSegment(_) => (0..segments.unwrap_or(0))
                .map(|s| UnitKey {
                    stage,
                    segment: Some(s),
                })
                .collect(),
        }
    }
}
