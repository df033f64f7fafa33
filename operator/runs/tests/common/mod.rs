//! Fixtures: a fan-out workflow over three small test functions (a shell script, so the
//! tests need no ffmpeg), and helpers shared by the test files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::json;
use vflow_api::{FunctionProfile, VideoWorkflow};

/// `split` writes `count` segments, `copy` copies its inputs, `join` concatenates them.
pub const SCRIPT: &str = r#"#!/bin/sh
op=$1; shift
out=; meta=; inputs=; count=3
while [ $# -gt 0 ]; do
  case $1 in
    --output-dir) out=$2; shift 2;;
    --metadata) meta=$2; shift 2;;
    --input) inputs="$inputs $2"; shift 2;;
    --count=*) count=${1#--count=}; shift;;
    --sleep=*) sleep "${1#--sleep=}"; shift;;
    *) shift;;
  esac
done
case $op in
  split)
    i=0
    while [ $i -lt "$count" ]; do
      for f in $inputs; do cat "$f"; done > "$out/seg-$i.bin"
      echo "segment $i" >> "$out/seg-$i.bin"
      i=$((i+1))
    done
    echo "{\"segments\": $count}" > "$meta";;
  copy) for f in $inputs; do cat "$f"; done > "$out/copy.bin";;
  join) for f in $inputs; do cat "$f"; done > "$out/joined.bin";;
  *) echo "unknown op $op" >&2; exit 2;;
esac
"#;

pub fn write_script(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("testfn.sh");
    std::fs::write(&path, SCRIPT).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

pub fn profiles(namespace: &str, script: &str) -> Vec<FunctionProfile> {
    let profile = |name: &str, op: &str, segments: bool| -> FunctionProfile {
        serde_json::from_value(json!({
            "apiVersion": "vflow.io/v1alpha1",
            "kind": "FunctionProfile",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "image": "example.com/testfn:1",
                "command": [script, op],
                "params": [
                    {"name": "count", "type": "Integer", "default": 3, "minimum": 1, "maximum": 100},
                    {"name": "sleep", "type": "Number", "default": 0, "minimum": 0, "maximum": 60}
                ],
                "resources": {"cpu": "500m", "memory": "256Mi"},
                "coldStartPrior": "2s",
                "execTimePrior": "1s",
                "produces": {"segments": segments}
            }
        }))
        .expect("profile")
    };
    vec![
        profile("tsplit", "split", true),
        profile("tcopy", "copy", false),
        profile("tjoin", "join", false),
    ]
}

/// split (fan-out) -> copy (per segment) -> join.
pub fn workflow(
    name: &str,
    namespace: &str,
    endpoint: &str,
    extra: serde_json::Value,
) -> VideoWorkflow {
    let mut spec = json!({
        "storage": {
            "endpoint": endpoint,
            "bucket": "videos",
            "secretRef": {"name": "s3-creds"}
        },
        "provisioning": "Ephemeral",
        "prewarm": "None",
        "scaleToZeroAfter": "30s",
        "stages": [
            {"name": "split", "function": "tsplit", "fanOut": true},
            {"name": "copy", "function": "tcopy", "after": ["split"]},
            {"name": "join", "function": "tjoin", "after": ["copy"], "join": true}
        ]
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({
        "apiVersion": "vflow.io/v1alpha1",
        "kind": "VideoWorkflow",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec
    }))
    .expect("workflow")
}
