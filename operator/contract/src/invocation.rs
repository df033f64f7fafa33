//! The wire format of `POST /invoke`, shared with the run engine that calls it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::exit::Exit;

/// One invocation of a stage's function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InvokeRequest {
    pub run: String,
    pub stage: String,
    /// The segment index for per-segment stages; absent for once-per-run stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<u32>,
    /// `s3://bucket/key`, `file:///path` or absolute paths, in the order the function
    /// receives them.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Every file the function writes lands under this prefix, with its relative name.
    pub output_prefix: String,
    /// Parameter name -> scalar value; passed as `--name=value`.
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Overrides the function's configured timeout for this invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
    /// Stages fused after this one, in order: this instance hands its outputs to the
    /// next runtime of the same pod (`--next`) through the local scratch volume
    /// instead of uploading them, and the last step uploads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub then: Vec<FusedStep>,
}

/// One stage of a fused chain after the first: it reads the previous step's outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FusedStep {
    pub stage: String,
    pub output_prefix: String,
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
}

impl InvokeRequest {
    /// The fused steps' stages and params: what they do, without where they write.
    fn steps(&self) -> Vec<(&str, &BTreeMap<String, serde_json::Value>)> {
        self.then
            .iter()
            .map(|t| (t.stage.as_str(), &t.params))
            .collect()
    }

    /// Whether `other` does the same work: the same inputs, params and fused steps.
    /// (Its outputs' place is the caller's to compare: a completion record is found
    /// under it.) A completed attempt of the same work is reused, not run again.
    pub fn same_work_as(&self, other: &InvokeRequest) -> bool {
        self.inputs == other.inputs && self.params == other.params && self.steps() == other.steps()
    }

    /// The same work, with its outputs' place, as a key: two requests with equal keys
    /// would write the same objects from the same inputs.
    pub fn work_key(&self) -> String {
        serde_json::to_string(&(
            &self.output_prefix,
            &self.inputs,
            &self.params,
            self.steps(),
        ))
        .unwrap_or_default()
    }

    /// The request the next runtime of a fused chain gets: the first of `then`, reading
    /// `inputs` (this step's outputs on the shared scratch volume).
    pub fn next_step(&self, inputs: Vec<String>) -> Option<InvokeRequest> {
        let (first, rest) = self.then.split_first()?;
        Some(InvokeRequest {
            run: self.run.clone(),
            stage: first.stage.clone(),
            segment: self.segment,
            inputs,
            output_prefix: first.output_prefix.clone(),
            params: first.params.clone(),
            timeout_seconds: first.timeout_seconds,
            then: rest.to_vec(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputObject {
    pub uri: String,
    pub bytes: u64,
    /// The object's SHA-256 where its bytes were sent (S3); absent for a file moved
    /// within a local store (see `vflow_storage::Transfer::sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// What a successful invocation produced and used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvokeResponse {
    pub outputs: Vec<OutputObject>,
    /// The function's metadata file (e.g. `{"objects": 3}`), for `when` conditions.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// From request received to response ready.
    pub wall_seconds: f64,
    pub download_seconds: f64,
    /// The function process alone, spawn to exit.
    pub function_seconds: f64,
    pub upload_seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
    /// The first invocation this instance served.
    pub cold: bool,
    /// Process start to ready, reported on the cold invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_seconds: Option<f64>,
    pub exit: Exit,
    pub instance: String,
    /// The function's CPU and memory over its run, in equal slices of its time (at
    /// most [`USAGE_SLICES`]): where its use changes is where it could be split.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<UsageSlice>,
    /// Functions running on this instance at once, on average over this one's run
    /// (itself included): the packing degree this run saw. 0: not measured.
    #[serde(default)]
    pub concurrency: f64,
    /// The fused steps after this one (`InvokeRequest::then`), in order; this
    /// response's own fields are the first step's, which uploaded nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chained: Vec<InvokeResponse>,
}

/// Slices of a function's run in [`InvokeResponse::usage`].
pub const USAGE_SLICES: usize = 10;

/// One slice of a function's run: the cores its processes used on average and the
/// most resident memory they held.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageSlice {
    pub cpu_cores: f64,
    pub rss_bytes: u64,
}

/// Which step an invocation failed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    Request,
    Download,
    Function,
    Upload,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvokeFailure {
    pub phase: Phase,
    pub message: String,
    /// The input that could not be read, when that is what failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
    /// The last lines the function wrote to stderr (ffmpeg's complaint, usually).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
    /// Trying again (here or on another instance) may succeed.
    pub retryable: bool,
    /// Killed at its memory limit: the function, or a process it started (an ffmpeg
    /// under a wrapper), by the OOM killer or the runtime's `--memory-limit`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
}

impl InvokeFailure {
    /// A failure in `phase` with nothing more to say than `message`.
    pub fn new(phase: Phase, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            phase,
            message: message.into(),
            input: None,
            exit: None,
            stderr_tail: String::new(),
            retryable,
            oom_killed: false,
        }
    }

    /// Killed for memory: said so, or the function itself ended by SIGKILL (what a
    /// runtime that predates `oom_killed` reports).
    pub fn killed_for_memory(&self) -> bool {
        self.oom_killed || self.exit == Some(crate::exit::Exit::Signal { signal: 9 })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: InvokeFailure,
}

/// Written under the output prefix once, by the attempt that got there first (a
/// conditional write): its presence means the invocation is complete, so a resumed run
/// need not redo it, and `attempt` names whose outputs are the real ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletionRecord {
    pub request: InvokeRequest,
    pub response: InvokeResponse,
    /// The chosen attempt (empty in records written before attempts were kept apart).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub attempt: String,
}

/// Name of the completion record under an output prefix.
pub const COMPLETION_RECORD: &str = "_vflow-complete.json";

/// Parameter names become `--name=value`; refuse what could be read as another
/// option of the contract.
pub fn check_param_name(name: &str) -> Result<(), String> {
    const RESERVED: [&str; 4] = ["input", "output-dir", "metadata", "warmup"];
    let mut chars = name.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !well_formed {
        return Err(format!(
            "parameter name {name:?}: use letters, digits, '-' and '_', starting with a letter"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!(
            "parameter name {name:?} is reserved by the runtime"
        ));
    }
    Ok(())
}

/// Renders a scalar parameter; objects and arrays are refused.
pub fn render_param(name: &str, value: &serde_json::Value) -> Result<String, String> {
    check_param_name(name)?;
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Null => return Err(format!("parameter {name} is null")),
        _ => {
            return Err(format!(
                "parameter {name} must be a string, number or boolean"
            ));
        }
    };
    if text.contains('\0') {
        return Err(format!("parameter {name} holds a NUL byte"));
    }
    Ok(format!("--{name}={text}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_render_as_one_argument_each() {
        assert_eq!(
            render_param("height", &json!(480)).as_deref(),
            Ok("--height=480")
        );
        assert_eq!(
            render_param("crf", &json!(22.5)).as_deref(),
            Ok("--crf=22.5")
        );
        assert_eq!(
            render_param("scene", &json!(true)).as_deref(),
            Ok("--scene=true")
        );
        // A value that looks like an option stays the value of its own parameter.
        assert_eq!(
            render_param("text", &json!("-rf /")).as_deref(),
            Ok("--text=-rf /")
        );
    }

    #[test]
    fn refuses_names_that_could_be_options() {
        assert!(render_param("output-dir", &json!("/etc")).is_err());
        assert!(render_param("-x", &json!(1)).is_err());
        assert!(render_param("a b", &json!(1)).is_err());
        assert!(render_param("list", &json!([1])).is_err());
    }

    #[test]
    fn unknown_request_fields_are_refused() {
        let bad = r#"{"run":"r","stage":"s","outputPrefix":"/tmp/x/","inptus":[]}"#;
        assert!(serde_json::from_str::<InvokeRequest>(bad).is_err());
    }
}
