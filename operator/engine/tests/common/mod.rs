//! Workflows for the engine's tests, written as the manifests would be.

use vflow_api::VideoWorkflow;

/// A workflow named `wf` with these stages (the `stages` list of a manifest).
pub fn workflow(stages: serde_json::Value) -> VideoWorkflow {
    let spec = serde_json::from_value(serde_json::json!({
        "storage": {"bucket": "videos"},
        "stages": stages,
    }))
    .unwrap_or_else(|e| panic!("workflow spec: {e}"));
    VideoWorkflow::new("wf", spec)
}

/// split (fan-out) -> scale (per segment) -> stitch (join).
pub fn split_scale_stitch() -> VideoWorkflow {
    workflow(serde_json::json!([
        {"name": "split", "function": "segment", "fanOut": true},
        {"name": "scale", "function": "scale", "after": ["split"], "params": {"height": 480}},
        {"name": "stitch", "function": "stitch", "after": ["scale"], "join": true},
    ]))
}

/// split -> detect -> blur (only where `detect.objects > 0`) -> stitch.
pub fn conditional_blur() -> VideoWorkflow {
    workflow(serde_json::json!([
        {"name": "split", "function": "segment", "fanOut": true},
        {"name": "detect", "function": "detect", "after": ["split"]},
        {"name": "blur", "function": "blur", "after": ["detect"],
         "when": {"condition": "detect.objects > 0"}},
        {"name": "stitch", "function": "stitch", "after": ["blur"], "join": true},
    ]))
}
