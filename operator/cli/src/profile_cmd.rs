//! `vflow profile FUNCTION --input FILE`: one function on one input on this machine,
//! end to end (input staged, the function run by its runtime, outputs stored), with
//! its CPU and memory over time, wall time and bytes in and out; the measurement is
//! folded into the function's learned FunctionProfile as `vflow run` folds a run, so
//! `vflow plan` and `vflow run` plan from it.
//!
//! It is `vflow run` of a one-stage workflow, so the measurement goes through the code
//! that every run uses.

use std::path::PathBuf;

use vflow_engine::record::RunRecord;
use vflow_storage::Location;

use crate::run_cmd::{RunArgs, RunError, run};

pub struct ProfileArgs {
    pub function: String,
    pub input: String,
    pub profiles: Vec<PathBuf>,
    /// `name=value` params of the function.
    pub params: Vec<String>,
    pub store: Option<String>,
}

fn bad(message: impl Into<String>) -> RunError {
    RunError {
        code: 2,
        message: message.into(),
    }
}

/// A param's value as YAML reads it (numbers and booleans typed, the rest strings).
fn param_value(text: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .filter(|v| v.is_number() || v.is_boolean())
        .unwrap_or_else(|| serde_json::Value::String(text.to_string()))
}

fn workflow_yaml(args: &ProfileArgs) -> Result<String, RunError> {
    let mut params = serde_json::Map::new();
    for p in &args.params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| bad(format!("--param {p:?}: expected name=value")))?;
        params.insert(k.to_string(), param_value(v));
    }
    let workflow = serde_json::json!({
        "apiVersion": "vflow.io/v1alpha1",
        "kind": "VideoWorkflow",
        "metadata": {"name": format!("profile-{}", args.function)},
        "spec": {
            "description": format!("vflow profile {}", args.function),
            "storage": {"bucket": "local"},
            "outputPrefix": "profile/",
            "prewarm": "None",
            "provisioning": "Ephemeral",
            "fusion": "Disabled",
            "stages": [{"name": args.function, "function": args.function, "params": params}]
        }
    });
    // JSON is YAML: the workflow loader reads it as any manifest.
    serde_json::to_string_pretty(&workflow).map_err(|e| bad(e.to_string()))
}

pub async fn profile(args: ProfileArgs) -> Result<i32, RunError> {
    let state_dir = crate::run_cmd::state_dir().map_err(|e| bad(e.to_string()))?;
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| bad(format!("{}: {e}", state_dir.display())))?;
    let workflow = state_dir.join(format!("profile-{}.yaml", args.function));
    std::fs::write(&workflow, workflow_yaml(&args)?)
        .map_err(|e| bad(format!("{}: {e}", workflow.display())))?;
    let run_id = format!(
        "profile-{}-{}",
        args.function,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    );
    let store = args
        .store
        .clone()
        .unwrap_or_else(|| state_dir.join("store").to_string_lossy().into_owned());
    let code = run(RunArgs {
        workflow,
        input: args.input.clone(),
        profiles: args.profiles.clone(),
        store: Some(store.clone()),
        run_id: Some(run_id.clone()),
        report_dir: None,
        max_instances: Some(1),
        quiet: true,
        no_replan: false,
    })
    .await?;
    if code != 0 {
        return Ok(code);
    }
    let root = if store.starts_with("s3://") {
        store.clone()
    } else {
        std::path::absolute(&store)
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .into_owned()
    };
    let record_at = Location::parse(&format!(
        "{}/profile/{run_id}/{}",
        root.trim_end_matches('/'),
        vflow_engine::engine::RUN_RECORD
    ))
    .map_err(|e| bad(e.to_string()))?;
    let Location::Local(path) = &record_at else {
        println!("(the measurement is in {record_at})");
        return Ok(0);
    };
    let record: RunRecord = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    print!("{}", measurement(&args.function, &record));
    Ok(0)
}

/// What one profiling run measured, for people.
pub fn measurement(function: &str, record: &RunRecord) -> String {
    let Some(attempt) = record
        .units
        .iter()
        .flat_map(|u| &u.attempts)
        .rfind(|a| a.error.is_none())
    else {
        return format!("{function}: no successful invocation to report\n");
    };
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let mut out = format!(
        "\n{function} on {}\n  wall {:.2} s (download {:.2} s, function {:.2} s, upload {:.2} s)\n  \
         CPU {:.2} s ({:.2} cores on average), peak memory {:.0} MiB\n  bytes in {}, bytes out {}\n",
        record.input,
        attempt.download_seconds + attempt.function_seconds + attempt.upload_seconds,
        attempt.download_seconds,
        attempt.function_seconds,
        attempt.upload_seconds,
        attempt.cpu_seconds,
        if attempt.function_seconds > 0.0 {
            attempt.cpu_seconds / attempt.function_seconds
        } else {
            0.0
        },
        mib(attempt.peak_rss_bytes as f64),
        attempt.bytes_in,
        attempt.bytes_out,
    );
    if !attempt.usage.is_empty() {
        let slice = attempt.function_seconds / attempt.usage.len() as f64;
        out.push_str("  over time (equal slices of the run):\n    from s   cores   MiB\n");
        for (i, s) in attempt.usage.iter().enumerate() {
            out.push_str(&format!(
                "    {:>6.2}  {:>6.2}  {:>5.0}\n",
                i as f64 * slice,
                s.cpu_cores,
                mib(s.rss_bytes as f64)
            ));
        }
        let profile = vflow_api::UsageProfile {
            invocations: 1,
            seconds: attempt.function_seconds,
            cpu_cores: attempt.usage.iter().map(|s| s.cpu_cores).collect(),
            memory_bytes: attempt.usage.iter().map(|s| s.rss_bytes as f64).collect(),
        };
        let cores = attempt
            .usage
            .iter()
            .map(|s| s.cpu_cores)
            .fold(0.0, f64::max);
        out.push_str(&format!(
            "  split: {}\n",
            vflow_planner::split::read_usage(
                &profile,
                cores.max(1.0),
                attempt.peak_rss_bytes as f64
            )
            .describe()
        ));
    }
    out
}
