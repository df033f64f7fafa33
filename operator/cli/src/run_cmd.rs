//! `vflow run`: one workflow on one input, on this machine (the embedded local mode).
//!
//! Stage instances are `vflow runtime serve` processes on loopback, storage is a local
//! directory or any S3 endpoint, and the engine and planner are the ones the operator
//! uses. What the run measured is folded into the FunctionProfiles and written back as
//! YAML, so the next run is planned from it.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vflow_api::validate::{ProfileSet, validate_profile, validate_workflow};
use vflow_api::{FunctionProfile, VideoWorkflow};
use vflow_engine::backend::Backend;
use vflow_engine::local::{LocalBackend, LocalConfig};
use vflow_engine::record::{RunRecord, UnitStatus};
use vflow_engine::{Engine, RunGraph, RunOptions, RunPhase};
use vflow_planner::{PlannerConfig, plan::Room, plan_workflow};
use vflow_storage::{Location, S3Settings, Store};

use crate::manifests::{Object, load_file};

pub struct RunArgs {
    pub workflow: PathBuf,
    pub input: String,
    pub profiles: Vec<PathBuf>,
    pub store: Option<String>,
    pub run_id: Option<String>,
    pub report_dir: Option<PathBuf>,
    pub max_instances: Option<u32>,
    pub quiet: bool,
    /// Pre-warm on the start-of-run schedule only (a baseline for benchmarks).
    pub no_replan: bool,
}

/// Exit codes: 0 succeeded, 1 the run failed, 2 bad input, 130 cancelled.
pub struct RunError {
    pub code: u8,
    pub message: String,
}

fn bad(message: impl Into<String>) -> RunError {
    RunError {
        code: 2,
        message: message.into(),
    }
}

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, RunError> {
    crate::manifests::yaml_files(path).map_err(|e| bad(e.to_string()))
}

/// The input's duration by ffprobe, from which the planner estimates the run's
/// segments; None where ffprobe is missing or cannot tell (the plan then assumes
/// `expectedSegments`, and the functions report the input's problem).
fn probe_duration(path: &Path) -> Option<f64> {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-protocol_whitelist", "file"])
        .args(["-show_entries", "format=duration", "-of", "csv=p=0"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|d| d.is_finite() && *d > 0.0)
}

/// Where learned profiles are kept: `<dir>/learned/` when `--profiles` is one directory,
/// else under the store's directory.
fn learned_dir(args: &RunArgs, state_dir: &Path) -> PathBuf {
    learned_dir_for(&args.profiles, state_dir)
}

/// Where the local mode keeps its state (store, reports, learned profiles):
/// `VFLOW_STATE_DIR`, else `.vflow` in the working directory.
pub fn state_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::var_os("VFLOW_STATE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".vflow"));
    std::path::absolute(dir)
}

/// [`learned_dir`] for these `--profiles` paths (`vflow plan` reads the same).
pub fn learned_dir_for(profiles: &[PathBuf], state_dir: &Path) -> PathBuf {
    match profiles {
        [one] if one.is_dir() => one.join("learned"),
        _ => state_dir.join("learned-profiles"),
    }
}

/// What earlier local runs learned, into `profiles`: the status only, the spec stays
/// the user's. The names of the profiles that got one.
pub fn apply_learned(
    profiles: &mut BTreeMap<String, FunctionProfile>,
    learned: &Path,
) -> Result<Vec<String>, String> {
    let mut applied = Vec::new();
    if !learned.is_dir() {
        return Ok(applied);
    }
    for file in crate::manifests::yaml_files(learned).map_err(|e| e.to_string())? {
        for doc in load_file(&file).map_err(|e| e.to_string())? {
            if let Some(Object::Profile(p)) = doc.object
                && let Some(name) = &p.metadata.name
                && let Some(current) = profiles.get_mut(name)
            {
                current.status = p.status.clone();
                applied.push(name.clone());
            }
        }
    }
    Ok(applied)
}

/// What earlier local runs of `workflow` said about its conditional stages.
fn branches_path(learned: &Path, workflow: &str) -> PathBuf {
    learned.join(format!("{workflow}.branches.json"))
}

fn read_branches(path: &Path) -> Vec<vflow_planner::branch::BranchObservation> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        eprintln!(
            "warning: {}: {e}; starting the branch counts over",
            path.display()
        );
        Vec::new()
    })
}

struct Loaded {
    workflow: VideoWorkflow,
    profiles: BTreeMap<String, FunctionProfile>,
}

fn load(args: &RunArgs, learned: &Path) -> Result<Loaded, RunError> {
    let mut problems = Vec::new();
    let mut workflows = Vec::new();
    let mut profiles = BTreeMap::new();
    let mut files = vec![args.workflow.clone()];
    for p in &args.profiles {
        files.extend(yaml_files(p)?);
    }
    for file in &files {
        let docs = load_file(file).map_err(|e| bad(e.to_string()))?;
        for doc in docs {
            let at = format!(
                "{} (document {}, {})",
                doc.file.display(),
                doc.index,
                doc.label
            );
            problems.extend(doc.problems.iter().map(|p| format!("{at}: {p}")));
            match doc.object {
                Some(Object::Profile(p)) => {
                    problems.extend(validate_profile(&p).iter().map(|x| format!("{at}: {x}")));
                    profiles.insert(p.metadata.name.clone().unwrap_or_default(), *p);
                }
                Some(Object::Workflow(w)) if *file == args.workflow => workflows.push(*w),
                _ => {}
            }
        }
    }
    apply_learned(&mut profiles, learned).map_err(bad)?;
    let workflow = match workflows.len() {
        1 => workflows.remove(0),
        n => {
            problems.push(format!(
                "{}: expected exactly one VideoWorkflow, found {n}",
                args.workflow.display()
            ));
            return Err(RunError {
                code: 1,
                message: problems.join("\n"),
            });
        }
    };
    let set = ProfileSet::complete(
        profiles
            .iter()
            .map(|(k, v)| (k.clone(), v.spec.clone()))
            .collect(),
    );
    let name = workflow.metadata.name.clone().unwrap_or_default();
    problems.extend(
        validate_workflow(&workflow, &set)
            .iter()
            .map(|p| format!("{} (VideoWorkflow/{name}): {p}", args.workflow.display())),
    );
    if !problems.is_empty() {
        return Err(RunError {
            code: 1,
            message: problems.join("\n"),
        });
    }
    Ok(Loaded { workflow, profiles })
}

/// The local checkout's `function-images/vflow-fn`, for profiles whose command is the
/// image path `/usr/local/bin/vflow-fn`.
fn find_vflow_fn(workflow: &Path) -> Option<PathBuf> {
    if let Ok(path) = std::env::var("VFLOW_FN") {
        return Some(PathBuf::from(path));
    }
    let mut starts: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    if let Ok(abs) = std::path::absolute(workflow) {
        starts.push(abs);
    }
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    starts
        .iter()
        .flat_map(|s| s.ancestors())
        .map(|dir| dir.join("function-images/vflow-fn"))
        .find(|candidate| candidate.is_file())
}

fn localize_commands(
    profiles: &mut BTreeMap<String, FunctionProfile>,
    workflow: &Path,
) -> Result<(), RunError> {
    let local_fn = find_vflow_fn(workflow);
    for (name, profile) in profiles.iter_mut() {
        for command in [&mut profile.spec.command, &mut profile.spec.warmup_command] {
            let Some(program) = command.first().cloned() else {
                continue;
            };
            if Path::new(&program).is_file() {
                continue;
            }
            if Path::new(&program)
                .file_name()
                .is_some_and(|n| n == "vflow-fn")
            {
                let local = local_fn.clone().ok_or_else(|| {
                    bad(format!(
                        "FunctionProfile {name}: {program} is an image path and function-images/vflow-fn \
                         was not found from here; run from the vflow checkout or set VFLOW_FN"
                    ))
                })?;
                command[0] = local.to_string_lossy().into_owned();
            }
        }
    }
    Ok(())
}

fn new_run_id(workflow: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{workflow}-{:x}{:04x}",
        now.as_secs(),
        (now.subsec_nanos() ^ std::process::id()) & 0xffff
    )
}

/// One line per change: `split 1/1  scale 3/8  stitch 0/1`.
fn progress_line(graph: &RunGraph, record: &RunRecord) -> String {
    graph
        .order
        .iter()
        .map(|&i| {
            let name = &graph.stages[i].name;
            let units: Vec<_> = record.units.iter().filter(|u| &u.stage == name).collect();
            let settled = units
                .iter()
                .filter(|u| matches!(u.status, UnitStatus::Done | UnitStatus::Skipped))
                .count();
            let total = if units.is_empty() {
                "?".to_string()
            } else {
                units.len().to_string()
            };
            let bar = if units.is_empty() {
                "          ".to_string()
            } else {
                let filled = settled * 10 / units.len();
                format!("{}{}", "#".repeat(filled), ".".repeat(10 - filled))
            };
            format!("{name} [{bar}] {settled}/{total}")
        })
        .collect::<Vec<_>>()
        .join("  ")
}

pub async fn run(args: RunArgs) -> Result<i32, RunError> {
    let state_dir = state_dir().map_err(|e| bad(e.to_string()))?;
    let learned = learned_dir(&args, &state_dir);
    let Loaded {
        workflow,
        mut profiles,
    } = load(&args, &learned)?;
    localize_commands(&mut profiles, &args.workflow)?;
    let wf_name = workflow.metadata.name.clone().unwrap_or_default();

    // Storage: a local directory (default .vflow/store) or S3 from the environment.
    let store_uri = match &args.store {
        Some(s) if s.starts_with("s3://") => s.clone(),
        Some(dir) => std::path::absolute(dir)
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .into_owned(),
        None => state_dir.join("store").to_string_lossy().into_owned(),
    };
    let store_root = Location::parse(&format!("{}/", store_uri.trim_end_matches('/')))
        .map_err(|e| bad(format!("--store: {e}")))?;
    let (store, s3_env) = match &store_root {
        Location::S3 { .. } => {
            let settings = S3Settings::from_env()
                .map_err(bad)?
                .ok_or_else(|| bad("--store s3://...: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and VFLOW_S3_ENDPOINT)"))?;
            let env: Vec<(String, String)> = std::env::vars()
                .filter(|(k, _)| k.starts_with("VFLOW_S3_") || k.starts_with("AWS_"))
                .collect();
            (Store::with_s3(&settings), env)
        }
        Location::Local(_) => (Store::local_only(), Vec::new()),
    };

    let run_id = args.run_id.clone().unwrap_or_else(|| new_run_id(&wf_name));
    let prefix = store_root.join(&format!(
        "{}{run_id}/",
        workflow.spec.output_prefix.trim_start_matches('/')
    ));

    // The input: used where it is when the instances can read it, else uploaded.
    let mut input_seconds = None;
    let input = if args.input.starts_with("s3://") {
        args.input.clone()
    } else {
        let path = std::fs::canonicalize(&args.input)
            .map_err(|e| bad(format!("--input {}: {e}", args.input)))?;
        if !path.is_file() {
            return Err(bad(format!("--input {}: not a file", path.display())));
        }
        input_seconds = probe_duration(&path);
        match &store_root {
            Location::Local(_) => path.to_string_lossy().into_owned(),
            Location::S3 { .. } => {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("input");
                let target = store_root.join(&format!("inputs/{run_id}/{name}"));
                if store.size(&target).await.ok().flatten().is_none() {
                    store
                        .upload(&path, &target)
                        .await
                        .map_err(|e| bad(format!("uploading the input: {e}")))?;
                }
                target.to_string()
            }
        }
    };

    // Plan from what this run really moves: the input's size, and a local store's
    // disk speed instead of an object store's.
    let mut cfg = PlannerConfig::default();
    let branches_file = branches_path(&learned, &wf_name);
    cfg.branch_observations = read_branches(&branches_file);
    if let Ok(loc) = Location::parse(&input)
        && let Ok(Some(bytes)) = store.size(&loc).await
    {
        cfg.input_bytes = bytes as f64;
    }
    cfg.input_seconds = input_seconds;
    cfg.now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64);
    if matches!(store_root, Location::Local(_)) {
        cfg.transfer.put_bytes_per_second = 1e9;
        cfg.transfer.get_bytes_per_second = 1e9;
        cfg.transfer.request_seconds = 0.001;
    }
    // Every instance runs on this machine: packing is planned for its cores, so that
    // P invocations per instance are never counted on cores that are not there.
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(2);
    let default_max = args.max_instances.unwrap_or(cores);
    cfg.room = Some(Room {
        cores: f64::from(cores),
        max_instances: Some(default_max),
    });
    let plan =
        plan_workflow(&workflow, &profiles, &cfg).map_err(|e| bad(format!("planning: {e}")))?;
    let prewarm = vflow_engine::engine::prewarm_schedule(&plan);
    let exe = std::env::current_exe()
        .map_err(|e| bad(format!("cannot find the vflow executable: {e}")))?;
    let work_dir = state_dir.join("instances").join(&run_id);
    let backend = LocalBackend::new(LocalConfig {
        runtime_program: exe,
        runtime_args: vec!["runtime".into()],
        work_dir: work_dir.clone(),
        env: s3_env,
        keep_alive: workflow.spec.scale_to_zero_after.as_std(),
        start_timeout: Duration::from_secs(120),
    });
    let mut engine = Engine::new(&workflow, profiles.clone(), backend.clone(), store)
        .map_err(|e| bad(e.to_string()))?;
    let graph = engine.graph.clone();
    let interactive = std::io::stderr().is_terminal() && !args.quiet;
    let last_line = Arc::new(Mutex::new(String::new()));
    if !args.quiet {
        let graph = graph.clone();
        let last_line = last_line.clone();
        engine.on_progress(move |record| {
            let line = progress_line(&graph, record);
            let Ok(mut last) = last_line.lock() else {
                return;
            };
            if *last == line {
                return;
            }
            let mut err = std::io::stderr();
            if interactive {
                let _ = write!(err, "\r\x1b[2K{line}");
            } else {
                let _ = writeln!(err, "{line}");
            }
            *last = line;
        });
    }
    eprintln!("run {run_id}: {} on {input}", wf_name);

    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = cancel_tx.send(true);
        }
    });
    let opts = RunOptions {
        run: run_id.clone(),
        input,
        prefix,
        params: BTreeMap::new(),
        prewarm,
        default_max_instances: default_max,
        plan: Some(plan),
        fixed_prewarm: args.no_replan,
    };
    let outcome = engine.run(&opts, cancel_rx).await;
    backend.shutdown().await;
    if interactive {
        eprintln!();
    }
    if let Some(e) = outcome.unreadable {
        return Err(bad(e));
    }
    if let Some(e) = outcome.fenced {
        // Another `vflow run` with the same run id wrote the record meanwhile.
        return Err(bad(e));
    }
    let record = outcome.record;

    // Report: a table here, JSON and a timeline beside the run's state.
    let mut report = vflow_engine::report::summarize(&graph, &record);
    report.idle_before_use_seconds = Some(backend.idle_before_use_seconds());
    let report_dir = args
        .report_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("runs").join(&run_id));
    std::fs::create_dir_all(&report_dir)
        .map_err(|e| bad(format!("{}: {e}", report_dir.display())))?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| bad(e.to_string()))?;
    std::fs::write(report_dir.join("report.json"), json + "\n").map_err(|e| bad(e.to_string()))?;
    std::fs::write(
        report_dir.join("timeline.svg"),
        vflow_engine::timeline::svg(&graph, &record),
    )
    .map_err(|e| bad(e.to_string()))?;
    print!("{}", vflow_engine::report::table(&report));
    print!("{}", vflow_engine::report::quality_table(&report));
    println!(
        "\n{:?} in {:.2} s ({:.2} s of execution, {} cold starts)",
        record.phase, report.total_seconds, report.exec_seconds, report.cold_starts
    );
    for output in &report.outputs {
        println!("output: {output}");
    }
    println!("report: {}", report_dir.join("report.json").display());
    println!("timeline: {}", report_dir.join("timeline.svg").display());

    // Learned profiles and branch outcomes, for the next plan. Outcomes only from a
    // finished run, so a run resumed after a failure counts each unit once.
    if record.phase == RunPhase::Succeeded {
        let mut branches = read_branches(&branches_file);
        vflow_engine::learn::add_branch_outcomes(
            &mut branches,
            &vflow_engine::learn::branch_outcomes(&graph, &record),
        );
        let written = serde_json::to_vec_pretty(&branches)
            .map_err(|e| e.to_string())
            .and_then(|json| {
                std::fs::create_dir_all(&learned).map_err(|e| e.to_string())?;
                std::fs::write(&branches_file, json).map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            eprintln!("warning: could not write {}: {e}", branches_file.display());
        }
    }
    vflow_engine::learn::fold_run(&graph, &record, &mut profiles);
    if let Err(e) = write_learned(&learned, &profiles, &graph) {
        eprintln!("warning: could not write the learned profiles: {e}");
    } else {
        println!("learned profiles: {}", learned.display());
    }
    let _ = std::fs::remove_dir_all(&work_dir);

    match record.phase {
        RunPhase::Succeeded => Ok(0),
        RunPhase::Cancelled => {
            eprintln!("cancelled; resume with --run-id {run_id}");
            Ok(130)
        }
        _ => {
            eprintln!(
                "error: {}\nresume with --run-id {run_id}",
                record.message.as_deref().unwrap_or("the run failed")
            );
            Ok(1)
        }
    }
}

fn write_learned(
    dir: &Path,
    profiles: &BTreeMap<String, FunctionProfile>,
    graph: &RunGraph,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for stage in &graph.stages {
        let Some(profile) = profiles.get(&stage.function) else {
            continue;
        };
        let yaml = serde_saphyr::to_string(profile).map_err(|e| e.to_string())?;
        let path = dir.join(format!("{}.yaml", stage.function));
        let text =
            format!("# Learned by `vflow run`: the status holds what local runs measured.\n{yaml}");
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_duration_comes_from_ffprobe_and_none_where_it_cannot_tell() {
        let dir = std::env::temp_dir().join(format!("vflow-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let clip = dir.join("clip.mp4");
        let made = std::process::Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=64x64:rate=10:duration=3",
            ])
            .arg(&clip)
            .status()
            .expect("ffmpeg runs");
        assert!(made.success());
        let d = probe_duration(&clip).expect("a duration");
        assert!((d - 3.0).abs() < 0.2, "{d}");
        let text = dir.join("notes.txt");
        std::fs::write(&text, "not a video").expect("write");
        assert_eq!(probe_duration(&text), None);
        assert_eq!(probe_duration(&dir.join("missing.mp4")), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
