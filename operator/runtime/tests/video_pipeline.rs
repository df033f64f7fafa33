//! Real video through the real runtime: split -> scale -> stitch with Debian's ffmpeg,
//! the functions from function-images/, and an S3 server on loopback. One runtime
//! process per function, as in a cluster (one Deployment per stage).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Runtime, invoke};
use serde_json::{Value, json};
use vflow_storage::test_server::TestS3;
use vflow_storage::{Location, Store};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn vflow_fn(function: &str) -> String {
    let path = repo().join("function-images/vflow-fn");
    serde_json::to_string(&[path.to_string_lossy().as_ref(), function]).expect("json")
}

fn run_tool(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is needed for this test (apt-get install ffmpeg): {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Probe {
    video_start: f64,
    video_duration: f64,
    audio_duration: Option<f64>,
    frames: u64,
    width: u64,
    height: u64,
    codec: String,
}

fn number(v: &Value) -> Option<f64> {
    v.as_str().and_then(|d| d.parse().ok())
}

fn probe(path: &Path) -> Probe {
    let path = path.to_string_lossy();
    let stream = |selector: &str, entries: &str| -> Value {
        let text = run_tool(
            "ffprobe",
            &[
                "-v",
                "error",
                "-select_streams",
                selector,
                "-count_frames",
                "-show_entries",
                entries,
                "-of",
                "json",
                &path,
            ],
        );
        let v: Value = serde_json::from_str(&text).expect("ffprobe json");
        v["streams"][0].clone()
    };
    let s = stream(
        "v:0",
        "stream=codec_name,width,height,nb_read_frames,start_time,duration",
    );
    let audio = stream("a:0", "stream=duration");
    Probe {
        video_start: number(&s["start_time"]).unwrap_or(0.0),
        video_duration: number(&s["duration"]).unwrap_or(0.0),
        audio_duration: number(&audio["duration"]),
        frames: s["nb_read_frames"]
            .as_str()
            .and_then(|f| f.parse().ok())
            .unwrap_or(0),
        width: s["width"].as_u64().unwrap_or(0),
        height: s["height"].as_u64().unwrap_or(0),
        codec: s["codec_name"].as_str().unwrap_or("").to_string(),
    }
}

fn start_function(dir: &Path, s3: &TestS3, function: &str) -> Runtime {
    let scratch = dir
        .join(format!("scratch-{function}"))
        .to_string_lossy()
        .into_owned();
    let mut env = s3.env();
    env.push(("VFLOW_COMMAND".into(), vflow_fn(function)));
    Runtime::start(
        dir,
        &[
            "--scratch-dir",
            &scratch,
            "--function",
            function,
            "--concurrency",
            "2",
        ],
        &env,
    )
}

async fn ok(client: &reqwest::Client, rt: &Runtime, body: Value) -> Value {
    let (status, _, answer) = invoke(client, &rt.url, body.clone()).await;
    assert_eq!(status, 200, "{body}\n-> {answer}\n{}", rt.logs());
    answer
}

fn uris(answer: &Value) -> Vec<String> {
    answer["outputs"]
        .as_array()
        .map(|o| {
            o.iter()
                .filter_map(|x| x["uri"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Splits, scales every segment (two at a time) and stitches; returns the result.
async fn split_scale_stitch(dir: &Path, input: &Path, seconds: f64, height: u32) -> (Probe, u64) {
    let s3 =
        TestS3::start(&dir.join("s3"), &["videos"]).unwrap_or_else(|e| panic!("S3 server: {e}"));
    let store = Store::with_s3(&s3.settings());
    let name = input
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("input.mp4");
    let source = format!("s3://videos/in/{name}");
    store
        .upload(input, &Location::parse(&source).expect("uri"))
        .await
        .expect("upload the input");
    let client = reqwest::Client::new();
    let segment = start_function(dir, &s3, "segment");
    let scale = start_function(dir, &s3, "scale");
    let stitch = start_function(dir, &s3, "stitch");
    for rt in [&segment, &scale, &stitch] {
        rt.wait_ready(&client).await;
    }

    let split = ok(
        &client,
        &segment,
        json!({"run": "r1", "stage": "split", "inputs": [source],
               "outputPrefix": "s3://videos/out/r1/split/", "params": {"seconds": seconds}}),
    )
    .await;
    let segments: Vec<String> = uris(&split);
    let count = split["metadata"]["segments"]
        .as_u64()
        .expect("segments in metadata");
    assert_eq!(segments.len() as u64, count, "{split}");
    assert!(count >= 2, "expected several segments: {split}");

    let mut scaled = Vec::new();
    for pair in segments.chunks(2).enumerate() {
        let (chunk, uris_in_chunk) = pair;
        let calls = uris_in_chunk.iter().enumerate().map(|(j, uri)| {
            let index = chunk * 2 + j;
            ok(
                &client,
                &scale,
                json!({"run": "r1", "stage": "scale", "segment": index, "inputs": [uri],
                       "outputPrefix": format!("s3://videos/out/r1/scale/{index:05}/"),
                       "params": {"height": height, "preset": "ultrafast"}}),
            )
        });
        for answer in futures_util::future::join_all(calls).await {
            let outs = uris(&answer);
            assert_eq!(outs.len(), 1, "{answer}");
            scaled.push(outs[0].clone());
        }
    }

    let joined = ok(
        &client,
        &stitch,
        json!({"run": "r1", "stage": "stitch", "inputs": scaled,
               "outputPrefix": "s3://videos/out/r1/stitch/"}),
    )
    .await;
    let result = uris(&joined);
    assert_eq!(result.len(), 1, "{joined}");
    let local = dir.join("result.mp4");
    store
        .download(&Location::parse(&result[0]).expect("uri"), &local)
        .await
        .expect("download the result");
    (probe(&local), count)
}

/// Same frames, video within a frame, audio within a packet: nothing drifts per join.
fn same_timeline(original: &Probe, result: &Probe, frame: f64, audio_packet: f64) {
    assert_eq!(result.frames, original.frames, "frames lost or duplicated");
    let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol + 1e-6;
    assert!(
        close(result.video_start, original.video_start, frame),
        "video starts at {} instead of {}",
        result.video_start,
        original.video_start
    );
    assert!(
        close(result.video_duration, original.video_duration, frame),
        "video lasts {} instead of {}",
        result.video_duration,
        original.video_duration
    );
    if let (Some(a), Some(b)) = (result.audio_duration, original.audio_duration) {
        assert!(close(a, b, audio_packet), "audio lasts {a} instead of {b}");
    }
    assert_eq!(
        result.audio_duration.is_some(),
        original.audio_duration.is_some(),
        "audio lost"
    );
}

#[tokio::test]
async fn split_scale_stitch_keeps_duration_and_frames_on_generated_video() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("pattern.mp4");
    run_tool(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25:duration=6",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=6",
            "-c:v",
            "libx264",
            "-g",
            "25",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
            "-shortest",
            &input.to_string_lossy(),
        ],
    );
    let original = probe(&input);
    let (result, segments) = split_scale_stitch(dir.path(), &input, 2.0, 120).await;
    assert_eq!(segments, 3);
    same_timeline(&original, &result, 1.0 / 25.0, 1024.0 / 44100.0);
    assert_eq!((result.width, result.height), (160, 120));
    assert_eq!(result.codec, "h264");
}

#[tokio::test]
async fn split_scale_stitch_on_a_real_clip() {
    let videos = std::env::var("VFLOW_TEST_VIDEOS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("../shared/data/videos"));
    let clip = videos.join("intel_car-detection.mp4");
    assert!(
        clip.is_file(),
        "{} is missing (set VFLOW_TEST_VIDEOS)",
        clip.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let original = probe(&clip);
    let (result, segments) = split_scale_stitch(dir.path(), &clip, 10.0, 144).await;
    assert!(segments >= 3, "{segments} segments");
    // 12.5 fps; AAC packets of 1024 samples at 48 kHz or less.
    same_timeline(&original, &result, 1.0 / 12.5, 1024.0 / 44100.0);
    assert_eq!(result.height, 144);
}
