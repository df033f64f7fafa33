//! `vflow run` end to end: real processes, real ffmpeg, the functions from
//! function-images/, a local store (and S3 in one test). Each test runs in its own
//! directory, so `.vflow/` state does not leak between them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn videos() -> PathBuf {
    let dir = std::env::var("VFLOW_TEST_VIDEOS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("../shared/data/videos"));
    assert!(
        dir.is_dir(),
        "{} is missing (set VFLOW_TEST_VIDEOS)",
        dir.display()
    );
    dir
}

fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed (apt-get install ffmpeg): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test pattern with a tone: `seconds` long, a keyframe every second.
fn pattern(dir: &Path, seconds: u32) -> PathBuf {
    let path = dir.join(format!("pattern-{seconds}s.mp4"));
    let d = seconds.to_string();
    tool(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size=320x240:rate=25:duration={d}"),
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency=440:duration={d}"),
            "-c:v",
            "libx264",
            "-g",
            "25",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
            "-shortest",
            &path.to_string_lossy(),
        ],
    );
    path
}

struct VideoFacts {
    frames: u64,
    width: u64,
    height: u64,
    duration: f64,
}

fn facts(path: &Path) -> VideoFacts {
    let text = tool(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=width,height,nb_read_frames,duration",
            "-of",
            "json",
            &path.to_string_lossy(),
        ],
    );
    let v: Value = serde_json::from_str(&text).expect("ffprobe json");
    let s = &v["streams"][0];
    VideoFacts {
        frames: s["nb_read_frames"]
            .as_str()
            .and_then(|x| x.parse().ok())
            .unwrap_or(0),
        width: s["width"].as_u64().unwrap_or(0),
        height: s["height"].as_u64().unwrap_or(0),
        duration: s["duration"]
            .as_str()
            .and_then(|x| x.parse().ok())
            .unwrap_or(0.0),
    }
}

/// Profiles for the tests: function-images' own, with the command optionally wrapped.
fn write_profiles(dir: &Path, wrapper: Option<&Path>) -> PathBuf {
    let mut text = String::new();
    for f in [
        "segment",
        "scale",
        "stitch",
        "thumbnail",
        "sprite",
        "watermark",
        "detect",
        "blur",
        "probe",
    ] {
        let path = repo().join(format!("function-images/{f}/profile.yaml"));
        let mut doc = std::fs::read_to_string(&path).expect("profile");
        if let Some(w) = wrapper {
            doc = doc.replace(
                &format!(r#"command: ["/usr/local/bin/vflow-fn", "{f}"]"#),
                &format!(r#"command: ["{}", "{f}"]"#, w.display()),
            );
        }
        text.push_str("---\n");
        text.push_str(&doc);
    }
    let out = dir.join("profiles.yaml");
    std::fs::write(&out, text).expect("write profiles");
    out
}

fn vflow(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vflow"));
    c.current_dir(dir)
        .args(args)
        .env("VFLOW_FN", repo().join("function-images/vflow-fn"));
    c
}

fn run_ok(dir: &Path, args: &[&str]) -> (Output, Value) {
    let out = vflow(dir, args).output().expect("run vflow");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "vflow {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = report_of(&stdout);
    (out, report)
}

/// `vflow run WORKFLOW --input INPUT --profiles PROFILES --quiet`, which must succeed;
/// its report.
fn run_quiet(dir: &Path, workflow: &Path, input: &Path, profiles: &Path) -> Value {
    run_ok(
        dir,
        &[
            "run",
            &workflow.to_string_lossy(),
            "--input",
            &input.to_string_lossy(),
            "--profiles",
            &profiles.to_string_lossy(),
            "--quiet",
        ],
    )
    .1
}

/// The run record of a run whose first output is `<run>/stitch/all/output.mp4`.
fn run_record(report: &Value) -> Value {
    let output = output_path(report, 0);
    let run_dir = output
        .ancestors()
        .nth(3)
        .expect("<run>/stitch/all/output.mp4");
    serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("_vflow-run.json")).expect("run record"),
    )
    .expect("json")
}

fn report_of(stdout: &str) -> Value {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .expect("a report line");
    serde_json::from_str(&std::fs::read_to_string(line.trim()).expect("report"))
        .expect("report json")
}

fn stage<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["stage"] == name))
        .unwrap_or_else(|| panic!("no stage {name} in {report}"))
}

fn output_path(report: &Value, index: usize) -> PathBuf {
    let uri = report["outputs"][index].as_str().expect("an output");
    PathBuf::from(uri.strip_prefix("file://").expect("a local output"))
}

fn example(name: &str) -> String {
    repo()
        .join("manifests/examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn thumbnails_example_on_generated_video_and_on_a_clip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let profiles = example("profiles.yaml");
    for input in [
        pattern(dir.path(), 12),
        videos().join("bbb_0-30s_720p_vp8.webm"),
    ] {
        let (_, report) = run_ok(
            dir.path(),
            &[
                "run",
                &example("thumbnails.yaml"),
                "--input",
                &input.to_string_lossy(),
                "--profiles",
                &profiles,
                "--quiet",
            ],
        );
        assert_eq!(report["phase"], "Succeeded");
        let sprite = output_path(&report, 0);
        assert!(
            sprite.ends_with("sprite/all/sprite.jpg"),
            "{}",
            sprite.display()
        );
        let codec = tool(
            "ffprobe",
            &[
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name,width",
                "-of",
                "csv=p=0",
                &sprite.to_string_lossy(),
            ],
        );
        assert!(codec.starts_with("mjpeg,"), "{codec}");
        // 10 s segments: 2 for the pattern, 3 for the 30 s clip; a thumbnail run each.
        let segments = stage(&report, "thumbnail")["units"].as_u64().unwrap_or(0);
        assert!(segments >= 2, "{report}");
    }
}

/// The ladder ends in one adaptive stream: HLS and DASH entry points beside the CMAF
/// segments; each rendition, read through its media playlist, has every source frame,
/// and all renditions are cut into segments of the same lengths.
#[test]
fn transcode_ladder_example_packages_every_frame_of_each_rendition_as_one_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = pattern(dir.path(), 9);
    let (_, report) = run_ok(
        dir.path(),
        &[
            "run",
            &example("transcode-ladder.yaml"),
            "--input",
            &input.to_string_lossy(),
            "--profiles",
            &example("profiles.yaml"),
            "--quiet",
        ],
    );
    let source = facts(&input);
    let paths: Vec<PathBuf> = report["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| PathBuf::from(o.as_str().unwrap_or("").trim_start_matches("file://")))
        .collect();
    let named = |name: &str| paths.iter().find(|p| p.ends_with(name)).cloned();
    assert!(
        named("master.m3u8").is_some() && named("manifest.mpd").is_some(),
        "{report}"
    );
    let mut heights = Vec::new();
    let mut lengths = Vec::new();
    for playlist in paths.iter().filter(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("media_"))
    }) {
        let f = facts(playlist);
        if f.height == 0 {
            continue; // the audio rendition
        }
        assert_eq!(f.frames, source.frames, "{}", playlist.display());
        heights.push(f.height);
        let text = std::fs::read_to_string(playlist).expect("media playlist");
        lengths.push(
            text.lines()
                .filter_map(|l| l.strip_prefix("#EXTINF:"))
                .map(|l| l.trim_end_matches(',').to_string())
                .collect::<Vec<_>>(),
        );
    }
    heights.sort();
    assert_eq!(heights, [480, 720, 1080], "{report}");
    assert!(lengths.iter().all(|l| *l == lengths[0]), "{lengths:?}");
    let total: f64 = lengths[0]
        .iter()
        .filter_map(|d| d.parse::<f64>().ok())
        .sum();
    assert!(
        (total - source.duration).abs() <= 0.04 + 1e-6,
        "{total} vs {}",
        source.duration
    );
    assert_eq!(lengths[0].len(), 3, "9 s in 4 s segments: {lengths:?}");
}

/// The quality-loop example on a clip built to have segments under its target: 2 s of
/// flat colour, 2 s of noise, twice. CRF 36 keeps the flat segments far above 36 dB and
/// the noisy ones far below, so exactly segments 1 and 3 are encoded again; the report
/// has every segment's PSNR and SSIM before and after, the whole output's, and the
/// output every frame.
#[test]
fn quality_loop_example_reencodes_exactly_the_segments_under_its_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("easy-hard.mp4");
    let part = |i: usize| {
        if i.is_multiple_of(2) {
            format!("color=c=0x3060a0:size=320x240:rate=25:duration=2[v{i}]")
        } else {
            format!("testsrc2=size=320x240:rate=25:duration=2,noise=alls=60:allf=t[v{i}]")
        }
    };
    let graph = format!(
        "{};{};{};{};[v0][v1][v2][v3]concat=n=4:v=1:a=0[v]",
        part(0),
        part(1),
        part(2),
        part(3)
    );
    tool(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-filter_complex",
            &graph,
            "-map",
            "[v]",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-qp",
            "0",
            "-g",
            "50",
            "-pix_fmt",
            "yuv420p",
            &input.to_string_lossy(),
        ],
    );
    let (out, report) = run_ok(
        dir.path(),
        &[
            "run",
            &example("quality-loop.yaml"),
            "--input",
            &input.to_string_lossy(),
            "--profiles",
            &example("profiles.yaml"),
        ],
    );
    let reencode = stage(&report, "reencode");
    assert_eq!(
        (reencode["units"].as_u64(), reencode["skipped"].as_u64()),
        (Some(4), Some(2)),
        "{report}"
    );
    assert_eq!(reencode["executions"], 2, "{report}");
    let record = run_record(&report);
    let ran: Vec<u64> = record["units"]
        .as_array()
        .expect("units")
        .iter()
        .filter(|u| u["stage"] == "reencode" && u["status"] == "Done")
        .filter_map(|u| u["segment"].as_u64())
        .collect();
    assert_eq!(ran, [1, 3], "{record}");
    let quality = report["quality"].as_array().expect("quality in the report");
    let figures = |stage: &str| -> Vec<(u64, f64)> {
        quality
            .iter()
            .filter(|q| q["stage"] == stage)
            .map(|q| {
                assert!(
                    q["ssim"].as_f64().is_some_and(|s| s > 0.0 && s <= 1.0),
                    "{q}"
                );
                (
                    q["segment"].as_u64().unwrap_or(99),
                    q["psnr"].as_f64().unwrap_or(0.0),
                )
            })
            .collect()
    };
    let first = figures("measure");
    assert_eq!(first.len(), 4, "{report}");
    for (segment, db) in &first {
        assert_eq!(
            *db < 36.0,
            !segment.is_multiple_of(2),
            "segment {segment}: {db} dB"
        );
    }
    // What went into stitch: the first encode where it was kept, better where encoded
    // again (noise at CRF 20 is still under 36 dB: one pass of the loop, not a search).
    let kept = figures("measure-output");
    assert_eq!(kept.len(), 4, "{report}");
    for ((segment, before), (_, after)) in first.iter().zip(&kept) {
        if segment.is_multiple_of(2) {
            assert_eq!(before, after, "segment {segment}: {first:?} {kept:?}");
        } else {
            assert!(
                *after > before + 3.0,
                "segment {segment}: {first:?} {kept:?}"
            );
        }
    }
    // Per stage, the whole: 200 frames; its PSNR lies between its segments' extremes.
    let whole = report["qualityByStage"]
        .as_array()
        .and_then(|w| w.iter().find(|q| q["stage"] == "measure-output"))
        .unwrap_or_else(|| panic!("no whole-output figure: {report}"));
    assert_eq!(whole["frames"], 200, "{whole}");
    let db = whole["psnr"].as_f64().unwrap_or(0.0);
    let lowest = kept.iter().map(|k| k.1).fold(f64::MAX, f64::min);
    let highest = kept.iter().map(|k| k.1).fold(0.0, f64::max);
    assert!(
        lowest <= db && db <= highest,
        "{db} not within {lowest}..{highest}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("quality measure segment 1: PSNR "),
        "{stdout}"
    );
    assert!(
        stdout.contains("quality measure-output (all 200 frames): PSNR "),
        "{stdout}"
    );
    let video = report["outputs"]
        .as_array()
        .and_then(|o| {
            o.iter()
                .find_map(|x| x.as_str().filter(|x| x.ends_with(".mp4")))
        })
        .expect("the stitched output");
    assert_eq!(
        facts(Path::new(video.trim_start_matches("file://"))).frames,
        200
    );
}

#[test]
fn detect_example_runs_on_cpu_and_skips_the_blur_when_nothing_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = pattern(dir.path(), 6);
    let (_, report) = run_ok(
        dir.path(),
        &[
            "run",
            &example("detect.yaml"),
            "--input",
            &input.to_string_lossy(),
            "--profiles",
            &example("profiles.yaml"),
            "--quiet",
        ],
    );
    let blur = stage(&report, "blur");
    assert_eq!(blur["skipped"], blur["units"], "{report}");
    assert_eq!(blur["executions"], 0);
    // The skipped blur passed the scaled segments through to stitch.
    let out = facts(&output_path(&report, 0));
    assert_eq!(out.frames, facts(&input).frames);
    assert_eq!(out.height, 480);
}

/// split -> scale -> watermark (only when there are at least 3 segments) -> stitch.
fn conditional_workflow(dir: &Path) -> PathBuf {
    let path = dir.join("conditional.yaml");
    std::fs::write(
        &path,
        r#"apiVersion: vflow.io/v1alpha1
kind: VideoWorkflow
metadata: {name: conditional}
spec:
  storage: {endpoint: "http://minio.vflow-system.svc:9000", bucket: videos, secretRef: {name: vflow-s3}}
  prewarm: None
  stages:
    - {name: split, function: segment, params: {seconds: 2}, fanOut: true}
    - {name: scale, function: scale, after: [split], params: {height: 120, preset: ultrafast}}
    - name: mark
      function: watermark
      after: [scale]
      params: {text: vflow, preset: ultrafast, fontSize: 12}
      when: {condition: "split.segments >= 3", probability: 0.5}
    - {name: stitch, function: stitch, after: [mark], join: true}
"#,
    )
    .expect("write workflow");
    path
}

#[test]
fn a_conditional_stage_runs_when_true_and_passes_through_when_false() {
    let dir = tempfile::tempdir().expect("tempdir");
    let profiles = write_profiles(dir.path(), None);
    let workflow = conditional_workflow(dir.path());
    for (seconds, taken) in [(8, true), (4, false)] {
        let input = pattern(dir.path(), seconds);
        let report = run_quiet(dir.path(), &workflow, &input, &profiles);
        let mark = stage(&report, "mark");
        if taken {
            assert_eq!(mark["executions"], mark["units"], "{report}");
            assert_eq!(mark["skipped"], 0);
        } else {
            assert_eq!(mark["executions"], 0, "{report}");
            assert_eq!(mark["skipped"], mark["units"]);
        }
        let out = facts(&output_path(&report, 0));
        assert_eq!(out.frames, facts(&input).frames, "{seconds} s input");
        assert_eq!(out.height, 120);
    }
    // Both runs' outcomes are kept for the next plan: 4 segments marked, then 2 not.
    let learned = dir
        .path()
        .join(".vflow/learned-profiles/conditional.branches.json");
    let branches: Value =
        serde_json::from_slice(&std::fs::read(&learned).expect("branch outcomes")).expect("json");
    assert_eq!(
        branches,
        serde_json::json!([{"stage": "mark", "taken": 4, "seen": 6}]),
        "{branches}"
    );
}

/// A wrapper that logs every execution ("stage segment") and can misbehave.
fn counting_wrapper(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("wrapper.sh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$VFLOW_STAGE ${{VFLOW_SEGMENT:--}}\" >> {log}\n{body}\nexec {vflow_fn} \"$@\"\n",
            log = dir.join("executions.log").display(),
            vflow_fn = repo().join("function-images/vflow-fn").display(),
        ),
    )
    .expect("write wrapper");
    Command::new("chmod")
        .arg("+x")
        .arg(&path)
        .status()
        .expect("chmod");
    path
}

fn executions(dir: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(dir.join("executions.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn a_run_killed_mid_way_resumes_without_redoing_finished_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Scale is slowed down so the kill lands while segments are in progress.
    let wrapper = counting_wrapper(dir.path(), r#"[ "$VFLOW_STAGE" = scale ] && sleep 1"#);
    let profiles = write_profiles(dir.path(), Some(&wrapper))
        .to_string_lossy()
        .into_owned();
    let workflow = conditional_workflow(dir.path())
        .to_string_lossy()
        .into_owned();
    let input = pattern(dir.path(), 8).to_string_lossy().into_owned();
    let args = [
        "run",
        workflow.as_str(),
        "--input",
        input.as_str(),
        "--profiles",
        profiles.as_str(),
        "--quiet",
        "--run-id",
        "resume-me",
        "--max-instances",
        "2",
    ];
    let mut child = vflow(dir.path(), &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Wait until some but not all scale units are done, then SIGKILL.
    let record = dir
        .path()
        .join(".vflow/store/outputs/resume-me/_vflow-run.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = std::fs::read_to_string(&record)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .map(|r| {
                r["units"]
                    .as_array()
                    .map(|u| {
                        u.iter()
                            .filter(|x| x["stage"] == "scale" && x["status"] == "Done")
                            .count()
                    })
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        if done >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the run made no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    // The instances notice their parent is gone and finish what they were doing.
    std::thread::sleep(Duration::from_secs(7));
    let before = executions(dir.path());

    let (out, report) = run_ok(dir.path(), &args);
    assert_eq!(
        report["phase"],
        "Succeeded",
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let after = executions(dir.path());
    // Every unit ran exactly once over both processes.
    let mut unique = after.clone();
    unique.dedup();
    assert_eq!(unique, after, "a unit ran twice: {after:?}");
    assert_eq!(after.len(), 1 + 4 + 4 + 1, "{after:?}");
    assert!(
        before.len() >= 2 && before.len() < after.len(),
        "before {before:?}"
    );
    let reused: u64 = report["stages"]
        .as_array()
        .map(|s| s.iter().map(|x| x["reused"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0);
    assert!(reused >= 1, "{report}");

    // Identical outputs: the same workflow run in one go gives the same bytes.
    let resumed = std::fs::read(output_path(&report, 0)).expect("resumed output");
    let (_, clean) = run_ok(
        dir.path(),
        &[
            "run",
            workflow.as_str(),
            "--input",
            input.as_str(),
            "--profiles",
            profiles.as_str(),
            "--quiet",
            "--run-id",
            "in-one-go",
        ],
    );
    let fresh = std::fs::read(output_path(&clean, 0)).expect("clean output");
    assert!(
        resumed == fresh,
        "the resumed run's output differs from an uninterrupted run's"
    );
}

#[test]
fn a_flaky_invocation_is_retried_and_one_that_fails_on_its_input_fails_the_run_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Segment 1 of scale fails twice with a transient error (75, EX_TEMPFAIL), then
    // works.
    let flaky = counting_wrapper(
        dir.path(),
        &format!(
            r#"if [ "$VFLOW_STAGE" = scale ] && [ "$VFLOW_SEGMENT" = 1 ]; then n=$(cat {c} 2>/dev/null || echo 0); echo $((n+1)) > {c}; [ "$n" -lt 2 ] && {{ echo "transient trouble" >&2; exit 75; }}; fi"#,
            c = dir.path().join("count").display()
        ),
    );
    let profiles = write_profiles(dir.path(), Some(&flaky))
        .to_string_lossy()
        .into_owned();
    let workflow = conditional_workflow(dir.path())
        .to_string_lossy()
        .into_owned();
    let input = pattern(dir.path(), 4).to_string_lossy().into_owned();
    let (_, report) = run_ok(
        dir.path(),
        &[
            "run",
            &workflow,
            "--input",
            &input,
            "--profiles",
            &profiles,
            "--quiet",
        ],
    );
    assert_eq!(stage(&report, "scale")["retries"], 2, "{report}");
    assert_eq!(report["phase"], "Succeeded");

    // Segment 1 of scale always fails on its input (exit 1): once, not retried.
    let broken = counting_wrapper(
        dir.path(),
        r#"if [ "$VFLOW_STAGE" = scale ] && [ "$VFLOW_SEGMENT" = 1 ]; then echo "scale: the encoder fell over" >&2; exit 1; fi"#,
    );
    let profiles = write_profiles(dir.path(), Some(&broken))
        .to_string_lossy()
        .into_owned();
    let out = vflow(
        dir.path(),
        &[
            "run",
            &workflow,
            "--input",
            &input,
            "--profiles",
            &profiles,
            "--quiet",
        ],
    )
    .output()
    .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("stage scale segment 1 failed after 1 attempt(s)"),
        "{stderr}"
    );
    assert!(stderr.contains("the encoder fell over"), "{stderr}");
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

#[test]
fn cancelling_stops_every_worker_and_leaves_no_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wrapper = counting_wrapper(dir.path(), r#"[ "$VFLOW_STAGE" = scale ] && sleep 30"#);
    let profiles = write_profiles(dir.path(), Some(&wrapper))
        .to_string_lossy()
        .into_owned();
    let workflow = conditional_workflow(dir.path())
        .to_string_lossy()
        .into_owned();
    let input = pattern(dir.path(), 4).to_string_lossy().into_owned();
    let mut child = vflow(
        dir.path(),
        &[
            "run",
            &workflow,
            "--input",
            &input,
            "--profiles",
            &profiles,
            "--quiet",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !executions(dir.path())
        .iter()
        .any(|l| l.starts_with("scale"))
    {
        assert!(Instant::now() < deadline, "scale never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "cancelling took {:?}",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    let left = processes_mentioning(&dir.path().to_string_lossy());
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// Two runs of the same input on one backend: the second finds warm instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_finds_warm_instances() {
    use std::collections::BTreeMap;
    use vflow_engine::backend::Backend;
    use vflow_engine::local::{LocalBackend, LocalConfig};
    use vflow_engine::{Engine, RunOptions};
    use vflow_storage::{Location, Store};

    let dir = tempfile::tempdir().expect("tempdir");
    let profiles_path = write_profiles(dir.path(), None);
    let docs = vflow_cli::manifests::load_file(&profiles_path).expect("profiles");
    let mut profiles = BTreeMap::new();
    for doc in docs {
        if let Some(vflow_cli::manifests::Object::Profile(mut p)) = doc.object {
            p.spec.command[0] = repo()
                .join("function-images/vflow-fn")
                .to_string_lossy()
                .into_owned();
            profiles.insert(p.metadata.name.clone().unwrap_or_default(), *p);
        }
    }
    let wf_docs =
        vflow_cli::manifests::load_file(&conditional_workflow(dir.path())).expect("workflow");
    let workflow = wf_docs
        .into_iter()
        .find_map(|d| match d.object {
            Some(vflow_cli::manifests::Object::Workflow(w)) => Some(*w),
            _ => None,
        })
        .expect("a workflow");
    let backend = LocalBackend::new(LocalConfig {
        runtime_program: PathBuf::from(env!("CARGO_BIN_EXE_vflow")),
        runtime_args: vec!["runtime".into()],
        work_dir: dir.path().join("instances"),
        env: Vec::new(),
        keep_alive: Duration::from_secs(120),
        start_timeout: Duration::from_secs(60),
    });
    let engine =
        Engine::new(&workflow, profiles, backend.clone(), Store::local_only()).expect("engine");
    let input = pattern(dir.path(), 4);
    let mut seconds = Vec::new();
    let mut cold = Vec::new();
    let mut waited = Vec::new();
    for run in ["first", "second"] {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let opts = RunOptions {
            run: run.into(),
            input: input.to_string_lossy().into_owned(),
            prefix: Location::Local(dir.path().join(format!("store/{run}/"))),
            params: BTreeMap::new(),
            prewarm: Vec::new(),
            default_max_instances: 2,
            plan: None,
            fixed_prewarm: false,
        };
        let started = Instant::now();
        let before = backend.cold_starts();
        let outcome = engine.run(&opts, rx).await;
        assert_eq!(
            outcome.record.phase,
            vflow_engine::RunPhase::Succeeded,
            "{:?}",
            outcome.record.message
        );
        seconds.push(started.elapsed().as_secs_f64());
        cold.push(backend.cold_starts() - before);
        waited.push(
            outcome
                .record
                .units
                .iter()
                .flat_map(|u| &u.attempts)
                .filter_map(|a| a.cold_start_seconds)
                .fold(0.0, |a, b| a + b),
        );
    }
    backend.shutdown().await;
    eprintln!(
        "first run {:.2} s with {} cold starts ({:.3} s waited); second {:.2} s with {} ({:.3} s)",
        seconds[0], cold[0], waited[0], seconds[1], cold[1], waited[1]
    );
    assert!(
        cold[0] >= 4,
        "every stage starts cold the first time: {cold:?}"
    );
    assert_eq!(cold[1], 0, "the second run found warm instances");
    // Wall times on a shared machine are noise at this scale (a local cold start is
    // tens of milliseconds); what the second run saves is the waiting for instances.
    assert!(
        waited[0] > 0.0,
        "the first run waited for cold starts: {waited:?}"
    );
    assert_eq!(waited[1], 0.0, "the second run waited for no instance");
}

/// The vertical example's crop -> scale chain is fused: one instance runs both stages
/// per segment (two runtime processes, one invocation), the cropped segments never
/// reach the store, and the output is the same as with `fusion: Disabled`.
#[test]
fn vertical_example_runs_crop_and_scale_fused_in_one_instance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = videos().join("bbb_0-30s_720p_vp8.webm");
    let source = facts(&input);
    let mut runs = Vec::new();
    for fusion in ["Auto", "Disabled"] {
        let text = std::fs::read_to_string(example("vertical.yaml")).expect("example");
        let workflow = dir.path().join(format!("vertical-{fusion}.yaml"));
        std::fs::write(
            &workflow,
            text.replace("fusion: Auto", &format!("fusion: {fusion}")),
        )
        .expect("write workflow");
        let (_, report) = run_ok(
            dir.path(),
            &[
                "run",
                &workflow.to_string_lossy(),
                "--input",
                &input.to_string_lossy(),
                "--profiles",
                &example("profiles.yaml"),
                "--store",
                &dir.path().join(format!("store-{fusion}")).to_string_lossy(),
                "--quiet",
            ],
        );
        assert_eq!(report["phase"], "Succeeded", "{report}");
        let output = output_path(&report, 0);
        let f = facts(&output);
        assert_eq!((f.width, f.height), (360, 640), "{}", output.display());
        assert_eq!(f.frames, source.frames, "every frame kept");
        let run_dir = output
            .ancestors()
            .nth(3)
            .expect("<run>/stitch/all/output.mp4")
            .to_path_buf();
        let record: Value = serde_json::from_str(
            &std::fs::read_to_string(run_dir.join("_vflow-run.json")).expect("run record"),
        )
        .expect("json");
        runs.push((run_dir, record));
    }
    let units = |record: &Value, stage: &str| -> Vec<Value> {
        record["units"]
            .as_array()
            .expect("units")
            .iter()
            .filter(|u| u["stage"] == stage)
            .cloned()
            .collect()
    };
    let media_under = |dir: &Path| -> usize {
        std::fs::read_dir(dir)
            .map(|segments| {
                segments
                    .flatten()
                    .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten())
                    .filter(|f| f.file_name() != "_vflow-complete.json")
                    .count()
            })
            .unwrap_or(0)
    };

    let (fused_dir, fused) = &runs[0];
    let crops = units(fused, "crop");
    let scales = units(fused, "scale");
    assert!(crops.len() >= 6, "30 s in 5 s segments: {fused}");
    assert_eq!(crops.len(), scales.len());
    for (crop, scale) in crops.iter().zip(&scales) {
        assert_eq!(crop["status"], "Done");
        assert_eq!(scale["status"], "Done");
        assert_eq!(
            crop["outputs"],
            serde_json::json!([]),
            "handed on, not stored"
        );
        let head = crop["attempts"][0]["instance"].as_str().unwrap_or("");
        let member = scale["attempts"][0]["instance"].as_str().unwrap_or("");
        assert!(head.starts_with("crop-"), "{crop}");
        assert_eq!(
            member,
            format!("{head}-fused-1"),
            "scale ran in crop's instance"
        );
    }
    assert_eq!(
        media_under(&fused_dir.join("crop")),
        0,
        "no cropped segment stored"
    );
    assert_eq!(media_under(&fused_dir.join("scale")), crops.len());

    let (unfused_dir, unfused) = &runs[1];
    for scale in units(unfused, "scale") {
        let instance = scale["attempts"][0]["instance"].as_str().unwrap_or("");
        assert!(instance.starts_with("scale-"), "{scale}");
    }
    assert_eq!(media_under(&unfused_dir.join("crop")), crops.len());
}

/// `vflow profile`: one function end to end on this machine, its use over time printed
/// and learned into its profile, which `vflow plan` then reads (the split reasoning).
#[test]
fn profiling_a_function_prints_its_use_over_time_and_the_plan_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = pattern(dir.path(), 6);
    let profiles = example("profiles.yaml");
    let out = vflow(
        dir.path(),
        &[
            "profile",
            "scale",
            "--input",
            &input.to_string_lossy(),
            "--profiles",
            &profiles,
            "--param",
            "height=240",
        ],
    )
    .output()
    .expect("run vflow profile");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "wall ",
        "CPU ",
        "peak memory",
        "bytes in ",
        "over time",
        "split: ",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }
    let rows = stdout
        .lines()
        .skip_while(|l| !l.contains("from s   cores"))
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with("split:"))
        .count();
    assert_eq!(rows, 10, "ten slices of the run:\n{stdout}");

    let learned = dir.path().join(".vflow/learned-profiles/scale.yaml");
    let text = std::fs::read_to_string(&learned).expect("the learned profile");
    let profile: vflow_api::FunctionProfile = serde_saphyr::from_str(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
            .as_str(),
    )
    .expect("learned profile parses");
    let status = profile.status.expect("status");
    let usage = status.usage_profile.expect("usage profile");
    assert_eq!(usage.invocations, 1);
    assert_eq!(usage.cpu_cores.len(), 10);
    assert!(usage.memory_bytes.iter().all(|m| *m > 1e6), "{usage:?}");
    assert!(
        status
            .split
            .as_deref()
            .is_some_and(|s| s.contains("of the run")),
        "{:?}",
        status.split
    );

    let plan = vflow(
        dir.path(),
        &[
            "plan",
            &example("transcode-ladder.yaml"),
            "--profiles",
            &profiles,
        ],
    )
    .output()
    .expect("vflow plan");
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(plan.starts_with("(observed: scale from "), "{plan}");
    assert!(
        plan.contains("(from 1 invocations' usage profile)"),
        "{plan}"
    );
}

// Issue 17 item 4: a function killed at its memory limit is tried once more with the
// memory the planner would give the stage after an OOM kill (x1.5), and succeeds: the
// local runtime enforces the limit, and the retry runs in an instance of its own with
// the raised one. Segment 1 of scale holds ~370 MiB against a planned 300 MiB.
#[test]
fn a_function_killed_at_its_memory_limit_succeeds_once_more_with_the_raised_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hog = counting_wrapper(
        dir.path(),
        r#"if [ "$VFLOW_STAGE" = scale ] && [ "$VFLOW_SEGMENT" = 1 ]; then python3 -c 'import time; b = b"x" * (360 << 20); time.sleep(1.5)'; fi"#,
    );
    let profiles = write_profiles(dir.path(), Some(&hog));
    let text = std::fs::read_to_string(&profiles).expect("profiles");
    let scale_doc = text
        .split("---\n")
        .find(|d| d.contains("name: scale\n"))
        .expect("the scale profile")
        .to_string();
    assert!(scale_doc.contains("memory: 1Gi"), "{scale_doc}");
    std::fs::write(
        &profiles,
        text.replace(
            &scale_doc,
            &scale_doc.replace("memory: 1Gi", "memory: 300Mi"),
        ),
    )
    .expect("write profiles");
    let workflow = dir.path().join("oom.yaml");
    std::fs::write(
        &workflow,
        r#"apiVersion: vflow.io/v1alpha1
kind: VideoWorkflow
metadata: {name: oom}
spec:
  storage: {endpoint: "http://minio.vflow-system.svc:9000", bucket: videos, secretRef: {name: vflow-s3}}
  prewarm: None
  stages:
    - {name: split, function: segment, params: {seconds: 2}, fanOut: true}
    - {name: scale, function: scale, after: [split], params: {height: 120, preset: ultrafast}, overrides: {retries: 0}}
    - {name: stitch, function: stitch, after: [scale], join: true}
"#,
    )
    .expect("write workflow");
    let input = pattern(dir.path(), 4).to_string_lossy().into_owned();
    let (_, report) = run_ok(
        dir.path(),
        &[
            "run",
            &workflow.to_string_lossy(),
            "--input",
            &input,
            "--profiles",
            &profiles.to_string_lossy(),
            "--quiet",
        ],
    );
    assert_eq!(report["phase"], "Succeeded", "{report}");
    let runs = executions(dir.path())
        .into_iter()
        .filter(|e| e == "scale 1")
        .count();
    assert_eq!(runs, 2, "killed once, then run with more memory");
    let record = run_record(&report);
    let unit = record["units"]
        .as_array()
        .expect("units")
        .iter()
        .find(|u| u["stage"] == "scale" && u["segment"] == 1)
        .cloned()
        .expect("scale segment 1");
    let oom: Vec<bool> = unit["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["oomKilled"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(oom, [true, false], "{unit}");
}

// Issue 18: a warm instance holds its model. detect's profile says `worker: Resident`,
// so each local instance starts one worker that loads the detector in its warm-up, and
// every invocation reports that it spent no time loading it.
#[test]
fn the_detect_example_runs_on_resident_workers_that_load_the_detector_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let profiles = write_profiles(dir.path(), None);
    let workflow = repo().join("manifests/examples/detect.yaml");
    let input = videos().join("intel_car-detection.mp4");
    let report = run_quiet(dir.path(), &workflow, &input, &profiles);
    assert_eq!(report["phase"], "Succeeded", "{report}");
    let record = run_record(&report);
    let detect: Vec<&Value> = record["units"]
        .as_array()
        .expect("units")
        .iter()
        .filter(|u| u["stage"] == "detect")
        .collect();
    assert!(detect.len() >= 2, "{record}");
    for unit in &detect {
        assert_eq!(unit["metadata"]["loadSeconds"], 0.0, "{unit}");
        assert!(
            unit["metadata"]["frames"].as_u64().unwrap_or(0) > 0,
            "{unit}"
        );
    }
    // The parking lot has cars in some segments and none in others: the CPU detector
    // finds them, so the blur runs where it found some and is skipped elsewhere, and
    // both happen.
    let blur_status = |segment: &Value| {
        record["units"]
            .as_array()
            .expect("units")
            .iter()
            .find(|u| u["stage"] == "blur" && &u["segment"] == segment)
            .map(|u| u["status"].clone())
    };
    let mut branches = std::collections::BTreeSet::new();
    for unit in &detect {
        let found = unit["metadata"]["objects"].as_u64().expect("objects");
        let want = if found > 0 { "Done" } else { "Skipped" };
        assert_eq!(
            blur_status(&unit["segment"]),
            Some(Value::from(want)),
            "{unit}"
        );
        branches.insert(want);
    }
    assert_eq!(
        branches.len(),
        2,
        "want segments with and without cars: {record}"
    );
}
