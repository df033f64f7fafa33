//! Rules for a VideoWorkflow: the DAG's shape, fan-out and join, conditions, and
//! stage parameters against their functions.

use std::collections::{BTreeMap, BTreeSet};

use super::{Lookup, Problems, ProfileSet, did_you_mean, is_dns_label, is_dns_subdomain, params};
use crate::{
    MAX_CHILD_NAME, MAX_STAGE_NAME, Quantity, TriggerType, VideoWorkflow, VideoWorkflowSpec,
    condition::StageCondition,
};

/// How a stage runs within a run, once the DAG is known to be sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageShape {
    /// Once per run.
    Once,
    /// Once per segment of the fan-out stage at this index.
    PerSegment(usize),
}

/// Every problem with a workflow. `profiles` are the FunctionProfiles its stages may use.
pub fn validate_workflow(wf: &VideoWorkflow, profiles: &ProfileSet) -> Vec<super::Problem> {
    let mut p = Problems::default();
    let name = wf.metadata.name.as_deref().unwrap_or_default();
    check_spec(&mut p, name, &wf.spec, profiles);
    p.into_vec()
}

/// The topological order and each stage's shape, or None when the DAG is unsound
/// (run `validate_workflow` for the reasons).
pub fn workflow_shape(spec: &VideoWorkflowSpec) -> Option<(Vec<usize>, Vec<StageShape>)> {
    let mut p = Problems::default();
    let graph = Graph::build(&mut p, spec);
    let order = graph.topological_order(&mut p, spec)?;
    let shapes = graph.shapes(&mut p, spec, &order);
    p.0.is_empty().then_some((order, shapes))
}

fn check_spec(p: &mut Problems, wf_name: &str, spec: &VideoWorkflowSpec, profiles: &ProfileSet) {
    check_names(p, wf_name, spec);
    check_storage_and_trigger(p, spec);
    let graph = Graph::build(p, spec);
    graph.check_roots(p, spec);
    let shapes = graph
        .topological_order(p, spec)
        .map(|order| graph.shapes(p, spec, &order));
    for (i, stage) in spec.stages.iter().enumerate() {
        check_stage_function(p, spec, i, profiles);
        if stage.fan_out && stage.join {
            p.add(
                format!("spec.stages[{i}]"),
                "a stage cannot both fan out and join",
            );
        }
        if let Some(o) = &stage.overrides {
            let at = format!("spec.stages[{i}].overrides");
            positive_quantity(p, &format!("{at}.cpu"), o.cpu.as_ref());
            positive_quantity(p, &format!("{at}.memory"), o.memory.as_ref());
            if let Some(gpu) = o.gpu {
                check_gpu(p, &format!("{at}.gpu"), gpu);
            }
            if let (Some(min), Some(max)) = (o.min_scale, o.max_scale)
                && min > max
            {
                p.add(
                    format!("{at}.minScale"),
                    format!("minScale {min} is above maxScale {max}"),
                );
            }
        }
    }
    if let Some(shapes) = &shapes {
        check_conditions(p, spec, &graph, shapes, profiles);
    }
    if spec
        .latency_objective
        .is_some_and(|d| d.as_secs_f64() <= 0.0)
    {
        p.add("spec.latencyObjective", "must be longer than zero");
    }
}

fn check_names(p: &mut Problems, wf_name: &str, spec: &VideoWorkflowSpec) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, stage) in spec.stages.iter().enumerate() {
        let at = format!("spec.stages[{i}].name");
        if let Some(first) = seen.insert(&stage.name, i) {
            p.add(
                &at,
                format!(
                    "duplicate stage name {:?} (also spec.stages[{first}])",
                    stage.name
                ),
            );
        }
        if !is_dns_label(&stage.name) || stage.name.len() > MAX_STAGE_NAME {
            p.add(
                &at,
                format!(
                    "{:?} is not a valid stage name: use at most {MAX_STAGE_NAME} lowercase letters, digits and '-', starting with a letter",
                    stage.name
                ),
            );
        } else if !wf_name.is_empty() && wf_name.len() + 1 + stage.name.len() > MAX_CHILD_NAME {
            p.add(
                &at,
                format!(
                    "\"{wf_name}-{}\" (workflow and stage name) is longer than {MAX_CHILD_NAME} characters; it names the stage's Deployment and Service",
                    stage.name
                ),
            );
        }
        if !is_dns_subdomain(&stage.function) {
            p.add(
                format!("spec.stages[{i}].function"),
                format!("{:?} is not a valid FunctionProfile name", stage.function),
            );
        }
    }
}

fn check_storage_and_trigger(p: &mut Problems, spec: &VideoWorkflowSpec) {
    let bucket = &spec.storage.bucket;
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !bucket_ok {
        p.add(
            "spec.storage.bucket",
            format!("{bucket:?} is not a valid bucket name: 3 to 63 lowercase letters, digits, '.' and '-'"),
        );
    }
    if let Some(endpoint) = &spec.storage.endpoint {
        let rest = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("https://"));
        if rest
            .is_none_or(|r| r.is_empty() || r.starts_with('/') || r.contains(char::is_whitespace))
        {
            p.add(
                "spec.storage.endpoint",
                format!("{endpoint:?} is not an http:// or https:// URL"),
            );
        }
    }
    check_output_prefix(p, &spec.output_prefix);
    let t = &spec.trigger;
    match t.type_ {
        TriggerType::Manual => {
            if t.prefix.is_some() || t.suffix.is_some() {
                p.add(
                    "spec.trigger",
                    "prefix and suffix only apply to the S3 trigger",
                );
            }
        }
        TriggerType::S3 => {
            let prefix = t.prefix.as_deref().unwrap_or_default();
            if spec.output_prefix.starts_with(prefix) {
                p.add(
                    "spec.outputPrefix",
                    format!(
                        "outputs under {:?} are inside the trigger's prefix {prefix:?}, so every output would start another run; use separate prefixes",
                        spec.output_prefix
                    ),
                );
            }
        }
    }
}

/// A key prefix every store takes the same way: relative, no `.` or `..` part, no
/// empty part (`//`), no backslash or control character. The local store would refuse
/// `../x/` only mid-run, and S3 would take it as a literal key.
fn check_output_prefix(p: &mut Problems, prefix: &str) {
    let bad = if prefix.starts_with('/') {
        Some("must be relative to the bucket (no leading '/')")
    } else if prefix.contains(|c: char| c == '\\' || c.is_control()) {
        Some("must not contain a backslash or a control character")
    } else if prefix
        .trim_end_matches('/')
        .split('/')
        .any(|part| part == "." || part == "..")
    {
        Some("must not contain a '.' or '..' part")
    } else if !prefix.is_empty() && prefix.trim_end_matches('/').split('/').any(str::is_empty) {
        Some("must not contain an empty part ('//')")
    } else {
        None
    };
    if let Some(why) = bad {
        p.add("spec.outputPrefix", format!("{prefix:?} {why}"));
    }
}

/// Stage indices and their edges, as far as names resolve.
struct Graph {
    parents: Vec<Vec<usize>>,
    /// Stages with an `after` that did not resolve: their shape checks would only
    /// repeat that problem in other words.
    unresolved: Vec<bool>,
}

impl Graph {
    fn build(p: &mut Problems, spec: &VideoWorkflowSpec) -> Graph {
        let index: BTreeMap<&str, usize> = spec
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let names = || spec.stages.iter().map(|s| s.name.as_str());
        let mut parents = vec![Vec::new(); spec.stages.len()];
        let mut unresolved = vec![false; spec.stages.len()];
        for (i, stage) in spec.stages.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for (k, after) in stage.after.iter().enumerate() {
                let at = format!("spec.stages[{i}].after[{k}]");
                if !seen.insert(after) {
                    p.add(&at, format!("{after:?} is listed twice"));
                } else if after == &stage.name {
                    p.add(&at, "a stage cannot run after itself");
                } else if let Some(&j) = index.get(after.as_str()) {
                    parents[i].push(j);
                } else {
                    unresolved[i] = true;
                    p.add(
                        &at,
                        format!("no stage named {after:?}{}", did_you_mean(after, names())),
                    );
                }
            }
        }
        Graph {
            parents,
            unresolved,
        }
    }

    fn check_roots(&self, p: &mut Problems, spec: &VideoWorkflowSpec) {
        let roots: Vec<&str> = spec
            .stages
            .iter()
            .filter(|s| s.after.is_empty())
            .map(|s| s.name.as_str())
            .collect();
        match roots.len() {
            0 => p.add(
                "spec.stages",
                "every stage has \"after\"; exactly one stage must have none: it reads the run's input",
            ),
            1 => {}
            n => p.add(
                "spec.stages",
                format!(
                    "{n} stages have no \"after\" ({}); exactly one stage reads the run's input, the others need \"after\"",
                    roots.join(", ")
                ),
            ),
        }
    }

    /// Kahn's order; on a cycle, reports it and returns None.
    fn topological_order(&self, p: &mut Problems, spec: &VideoWorkflowSpec) -> Option<Vec<usize>> {
        let n = self.parents.len();
        let mut children = vec![Vec::new(); n];
        let mut pending: Vec<usize> = self.parents.iter().map(Vec::len).collect();
        for (i, ps) in self.parents.iter().enumerate() {
            for &j in ps {
                children[j].push(i);
            }
        }
        let mut ready: Vec<usize> = (0..n).filter(|&i| pending[i] == 0).rev().collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop() {
            order.push(i);
            for &c in children[i].iter().rev() {
                pending[c] -= 1;
                if pending[c] == 0 {
                    ready.push(c);
                }
            }
        }
        if order.len() == n {
            return Some(order);
        }
        // Every stage left has a parent left: walking parents from any of them must loop.
        let left: BTreeSet<usize> = (0..n).filter(|i| !order.contains(i)).collect();
        let mut reported = BTreeSet::new();
        for &start in &left {
            let mut path = vec![start];
            let mut cur = start;
            while let Some(&next) = self.parents[cur].iter().find(|j| left.contains(j)) {
                if let Some(pos) = path.iter().position(|&x| x == next) {
                    let cycle = &path[pos..];
                    if !cycle.iter().any(|c| reported.contains(c)) {
                        reported.extend(cycle.iter().copied());
                        report_cycle(p, spec, cycle);
                    }
                    break;
                }
                path.push(next);
                cur = next;
            }
        }
        None
    }

    /// How each stage runs (once, or per segment of a fan-out), reporting joins with
    /// nothing to join, nested fan-outs and stages that mix the two.
    fn shapes(
        &self,
        p: &mut Problems,
        spec: &VideoWorkflowSpec,
        order: &[usize],
    ) -> Vec<StageShape> {
        let n = spec.stages.len();
        let mut shape_in = vec![StageShape::Once; n];
        let shape_out = |i: usize, shape_in: &[StageShape]| {
            if spec.stages[i].fan_out {
                StageShape::PerSegment(i)
            } else if spec.stages[i].join {
                StageShape::Once
            } else {
                shape_in[i]
            }
        };
        for &i in order {
            let stage = &spec.stages[i];
            let inputs: BTreeSet<(String, usize)> = self.parents[i]
                .iter()
                .map(|&j| match shape_out(j, &shape_in) {
                    StageShape::Once => ("once".to_string(), usize::MAX),
                    StageShape::PerSegment(f) => (spec.stages[f].name.clone(), f),
                })
                .collect();
            let fanouts: Vec<&(String, usize)> =
                inputs.iter().filter(|(_, f)| *f != usize::MAX).collect();
            if stage.join {
                if self.unresolved[i] {
                } else if fanouts.is_empty() {
                    p.add(
                        format!("spec.stages[{i}].join"),
                        "nothing to join: no stage before this one fans out into segments",
                    );
                } else if inputs.len() > 1 {
                    p.add(
                        format!("spec.stages[{i}].after"),
                        "a join takes the segments of exactly one fan-out, and only them",
                    );
                }
                shape_in[i] = StageShape::Once;
            } else if inputs.len() > 1 {
                let what: Vec<String> = inputs
                    .iter()
                    .map(|(name, f)| {
                        if *f == usize::MAX {
                            "whole-run inputs".to_string()
                        } else {
                            format!("segments of {name:?}")
                        }
                    })
                    .collect();
                p.add(
                    format!("spec.stages[{i}].after"),
                    format!(
                        "mixes {}; a stage runs either once per segment of one fan-out or once per run (add join: true to gather segments)",
                        what.join(" and ")
                    ),
                );
            } else if let Some((_, f)) = fanouts.first() {
                shape_in[i] = StageShape::PerSegment(*f);
            }
            if stage.fan_out
                && let StageShape::PerSegment(f) = shape_in[i]
            {
                p.add(
                    format!("spec.stages[{i}].fanOut"),
                    format!(
                        "already runs once per segment of {:?}; fan-outs cannot be nested (join first)",
                        spec.stages[f].name
                    ),
                );
            }
        }
        shape_in
    }

    fn is_ancestor(&self, ancestor: usize, of: usize) -> bool {
        let mut stack = self.parents[of].clone();
        let mut seen = BTreeSet::new();
        while let Some(j) = stack.pop() {
            if j == ancestor {
                return true;
            }
            if seen.insert(j) {
                stack.extend(self.parents[j].iter().copied());
            }
        }
        false
    }
}

/// `cycle` lists stages parent by parent; name them in run order from the first in the manifest.
fn report_cycle(p: &mut Problems, spec: &VideoWorkflowSpec, cycle: &[usize]) {
    let mut in_order: Vec<usize> = cycle.iter().rev().copied().collect();
    let first = in_order.iter().copied().min().unwrap_or_default();
    let at = in_order
        .iter()
        .position(|&i| i == first)
        .unwrap_or_default();
    in_order.rotate_left(at);
    in_order.push(first);
    let names: Vec<&str> = in_order
        .iter()
        .map(|&i| spec.stages[i].name.as_str())
        .collect();
    p.add(
        format!("spec.stages[{first}].after"),
        format!("the stages form a cycle: {}", names.join(" -> ")),
    );
}

fn check_conditions(
    p: &mut Problems,
    spec: &VideoWorkflowSpec,
    graph: &Graph,
    shapes: &[StageShape],
    profiles: &ProfileSet,
) {
    let names = || spec.stages.iter().map(|s| s.name.as_str());
    for (i, stage) in spec.stages.iter().enumerate() {
        let Some(when) = &stage.when else { continue };
        let at = format!("spec.stages[{i}].when");
        if !(0.0..=1.0).contains(&when.probability) {
            p.add(
                format!("{at}.probability"),
                format!("{} is not a probability between 0 and 1", when.probability),
            );
        }
        let cond = match StageCondition::parse(&when.condition) {
            Ok(c) => c,
            Err(e) => {
                p.add(format!("{at}.condition"), e.to_string());
                continue;
            }
        };
        if stage.after.is_empty() {
            p.add(
                format!("{at}.condition"),
                "a stage with no \"after\" has no earlier stage whose metadata it could test",
            );
            continue;
        }
        let Some(j) = spec.stages.iter().position(|s| s.name == cond.stage) else {
            p.add(
                format!("{at}.condition"),
                format!(
                    "no stage named {:?}{}",
                    cond.stage,
                    did_you_mean(&cond.stage, names())
                ),
            );
            continue;
        };
        if !graph.is_ancestor(j, i) {
            p.add(
                format!("{at}.condition"),
                format!(
                    "{:?} does not run before {:?}, so its metadata is not there to test; list it (or a stage after it) in \"after\"",
                    cond.stage, stage.name
                ),
            );
            continue;
        }
        if let StageShape::PerSegment(f) = shapes[j]
            && shapes[i] != StageShape::PerSegment(f)
        {
            p.add(
                format!("{at}.condition"),
                format!(
                    "{:?} runs once per segment, {:?} does not: which segment's value would decide?",
                    cond.stage, stage.name
                ),
            );
            continue;
        }
        if let Lookup::Found(profile) = profiles.lookup(&spec.stages[j].function) {
            let fields = profile
                .produces
                .as_ref()
                .map(|pr| pr.metadata.as_slice())
                .unwrap_or_default();
            match fields.iter().find(|f| f.name == cond.key) {
                None => p.add(
                    format!("{at}.condition"),
                    format!(
                        "function {:?} of stage {:?} writes no metadata {:?}{}",
                        spec.stages[j].function,
                        cond.stage,
                        cond.key,
                        if fields.is_empty() {
                            " (it declares none under produces.metadata)".to_string()
                        } else {
                            did_you_mean(&cond.key, fields.iter().map(|f| f.name.as_str()))
                        }
                    ),
                ),
                Some(field) if !cond.literal_fits(field.type_) => p.add(
                    format!("{at}.condition"),
                    format!(
                        "{}.{} is {}, but the condition compares it with {}",
                        cond.stage,
                        cond.key,
                        params::type_phrase(field.type_),
                        cond.literal_kind()
                    ),
                ),
                Some(_) => {}
            }
        }
    }
}

fn check_stage_function(
    p: &mut Problems,
    spec: &VideoWorkflowSpec,
    i: usize,
    profiles: &ProfileSet,
) {
    let stage = &spec.stages[i];
    let at = format!("spec.stages[{i}]");
    match profiles.lookup(&stage.function) {
        Lookup::Missing => p.add(
            format!("{at}.function"),
            format!(
                "no FunctionProfile named {:?}{}",
                stage.function,
                did_you_mean(&stage.function, profiles.names())
            ),
        ),
        Lookup::Unknown => {
            params::check_into(p, &format!("{at}.params"), &stage.params, None, false)
        }
        Lookup::Found(profile) => {
            params::check_into(
                p,
                &format!("{at}.params"),
                &stage.params,
                Some(&profile.params),
                true,
            );
            let splits = profile.produces.as_ref().is_some_and(|pr| pr.segments);
            if stage.fan_out && !splits {
                p.add(
                    format!("{at}.fanOut"),
                    format!(
                        "function {:?} does not produce segments (its profile lacks produces.segments: true)",
                        stage.function
                    ),
                );
            } else if !stage.fan_out && splits {
                p.add(
                    format!("{at}.fanOut"),
                    format!(
                        "function {:?} splits its input into segments; set fanOut: true so the stages after it run once per segment",
                        stage.function
                    ),
                );
            }
        }
    }
}

pub(crate) fn positive_quantity(p: &mut Problems, at: &str, q: Option<&Quantity>) {
    if let Some(q) = q {
        match q.value() {
            Ok(v) if v > 0.0 => {}
            Ok(_) => p.add(at, "must be more than zero"),
            Err(e) => p.add(at, e.to_string()),
        }
    }
}

pub(crate) fn check_gpu(p: &mut Problems, at: &str, gpu: f64) {
    if !(gpu > 0.0 && gpu <= 8.0) {
        p.add(
            at,
            format!("{gpu} is not a GPU share: use more than 0 and at most 8"),
        );
    } else if gpu > 1.0 && gpu.fract() != 0.0 {
        p.add(
            at,
            format!(
                "{gpu} GPUs: above 1, use whole GPUs (a share is only possible within one GPU)"
            ),
        );
    }
}
