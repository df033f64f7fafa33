//! The shipped examples: they round-trip through the types, pass the generated CRD
//! schema (structure and CEL rules) and validate() without a problem.

mod common;

use common::{example_documents, example_profiles};
use serde_json::Value;
use vflow_api::{
    Duration, FunctionProfile, VideoWorkflow, VideoWorkflowRun,
    schema_check::SchemaCheck,
    validate::{validate_profile, validate_run, validate_workflow},
};

/// Every field the user wrote is still there with the same value (durations compared
/// as durations: "90s" may come back as "1m30s").
fn assert_subset(written: &Value, got: &Value, path: &str) {
    match (written, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                let child = g
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} was lost in the round trip"));
                assert_subset(v, child, &format!("{path}.{k}"));
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            assert_eq!(w.len(), g.len(), "{path}: list length changed");
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                assert_subset(a, b, &format!("{path}[{i}]"));
            }
        }
        (Value::String(a), Value::String(b)) if a != b => {
            let (da, db) = (a.parse::<Duration>(), b.parse::<Duration>());
            assert!(da.is_ok() && da == db, "{path}: {a:?} came back as {b:?}");
        }
        (Value::Number(a), Value::Number(b)) => assert_eq!(a.as_f64(), b.as_f64(), "{path}"),
        (Value::Number(a), Value::String(b)) => assert_eq!(a.to_string(), *b, "{path}"),
        (a, b) => assert_eq!(a, b, "{path}"),
    }
}

fn round_trip<T>(value: &Value, file: &str)
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let typed: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let yaml = serde_saphyr::to_string(&typed).expect("serializes");
    let again: T =
        serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{file}: re-read: {e}\n{yaml}"));
    assert_eq!(
        typed, again,
        "{file}: YAML -> types -> YAML -> types changed the object"
    );
    let back: Value = serde_saphyr::from_str(&yaml).expect("YAML back to a value");
    assert_subset(value, &back, file);
}

#[test]
fn every_example_round_trips() {
    let docs = example_documents();
    for (file, doc) in &docs {
        match doc["kind"].as_str() {
            Some("FunctionProfile") => round_trip::<FunctionProfile>(doc, file),
            Some("VideoWorkflow") => round_trip::<VideoWorkflow>(doc, file),
            Some("VideoWorkflowRun") => round_trip::<VideoWorkflowRun>(doc, file),
            other => panic!("{file}: unexpected kind {other:?}"),
        }
    }
    let kinds: std::collections::BTreeSet<_> = docs
        .iter()
        .filter_map(|(_, d)| d["kind"].as_str())
        .collect();
    assert_eq!(kinds.len(), 3, "examples cover every kind: {kinds:?}");
}

#[test]
fn every_example_passes_the_generated_crd_schema() {
    for (file, doc) in example_documents() {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let check = SchemaCheck::for_kind(kind).unwrap_or_else(|| panic!("no schema for {kind}"));
        let problems = check.check(&doc);
        assert!(problems.is_empty(), "{file} {kind}: {problems:?}");
    }
}

#[test]
fn every_example_passes_the_crd_cel_rules() {
    let validator = kube::core::cel::Validator::new();
    for (file, doc) in example_documents() {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let schema = openapi_schema(kind);
        if let Err(errors) = validator.validate(&schema, &doc, None) {
            panic!("{file} {kind}: CEL rules refused it: {errors:?}");
        }
    }
}

#[test]
fn every_example_passes_validate() {
    let profiles = example_profiles();
    let docs = example_documents();
    let workflows: Vec<VideoWorkflow> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "VideoWorkflow")
        .map(|(_, d)| serde_json::from_value(d.clone()).expect("workflow"))
        .collect();
    assert_eq!(workflows.len(), 5, "five example workflows");
    for (file, doc) in &docs {
        let problems = match doc["kind"].as_str() {
            Some("FunctionProfile") => {
                validate_profile(&serde_json::from_value(doc.clone()).expect("profile"))
            }
            Some("VideoWorkflow") => {
                validate_workflow(&serde_json::from_value(doc.clone()).expect("wf"), &profiles)
            }
            _ => {
                let run: VideoWorkflowRun = serde_json::from_value(doc.clone()).expect("run");
                let wf = workflows
                    .iter()
                    .find(|w| w.metadata.name.as_ref() == Some(&run.spec.workflow_ref.name));
                assert!(
                    wf.is_some(),
                    "{file}: the run's workflow is among the examples"
                );
                validate_run(&run, wf, &profiles)
            }
        };
        assert!(problems.is_empty(), "{file}: {problems:?}");
    }
}

pub fn openapi_schema(kind: &str) -> Value {
    let crd = vflow_api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    serde_json::to_value(schema).expect("schema to JSON")
}

/// Kubernetes' structural schema rule: every node says its type, or is an
/// int-or-string, or keeps unknown fields.
#[test]
fn generated_schemas_are_structural() {
    fn walk(node: &Value, path: &str, bad: &mut Vec<String>) {
        let Some(obj) = node.as_object() else { return };
        let typed = obj.contains_key("type")
            || obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
            || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        if !typed {
            bad.push(path.to_string());
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            if obj.contains_key(key) {
                bad.push(format!("{path} has {key}"));
            }
        }
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                walk(v, &format!("{path}.{k}"), bad);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(v) = obj.get(key).filter(|v| v.is_object()) {
                walk(v, &format!("{path}.{key}"), bad);
            }
        }
    }
    for kind in ["FunctionProfile", "VideoWorkflow", "VideoWorkflowRun"] {
        let mut bad = Vec::new();
        walk(&openapi_schema(kind), kind, &mut bad);
        assert!(bad.is_empty(), "not structural: {bad:#?}");
    }
}

/// The CEL rules in the CRDs refuse what they are written to refuse.
#[test]
fn crd_cel_rules_refuse_broken_objects() {
    let validator = kube::core::cel::Validator::new();
    let wf = |name: &str, spec: Value| {
        serde_json::json!({"apiVersion": "vflow.io/v1alpha1", "kind": "VideoWorkflow",
            "metadata": {"name": name}, "spec": spec})
    };
    let base = serde_json::json!({"storage": {"bucket": "videos"}, "stages": [
        {"name": "split", "function": "segment", "fanOut": true},
        {"name": "stitch", "function": "stitch", "after": ["split"], "join": true}]});
    let schema = openapi_schema("VideoWorkflow");
    let messages = |obj: &Value, old: Option<&Value>, schema: &Value| -> Vec<String> {
        match validator.validate(schema, obj, old) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.into_iter().map(|e| e.message).collect(),
        }
    };
    assert_eq!(
        messages(&wf("ok", base.clone()), None, &schema),
        Vec::<String>::new()
    );

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "fanOut and join",
            serde_json::json!({"name": "stitch", "function": "stitch", "after": ["split"], "join": true, "fanOut": true}),
            "a stage cannot both fan out and join",
        ),
        (
            "after itself",
            serde_json::json!({"name": "stitch", "function": "stitch", "after": ["stitch"]}),
            "a stage cannot run after itself",
        ),
        (
            "min above max",
            serde_json::json!({"name": "stitch", "function": "stitch", "after": ["split"], "join": true, "overrides": {"minScale": 3, "maxScale": 1}}),
            "minScale must not exceed maxScale",
        ),
    ];
    for (what, stage, expected) in cases {
        let mut spec = base.clone();
        spec["stages"][1] = stage;
        let got = messages(&wf("wf", spec), None, &schema);
        assert_eq!(got, vec![expected.to_string()], "{what}");
    }
    let mut manual = base.clone();
    manual["trigger"] = serde_json::json!({"type": "Manual", "prefix": "in/"});
    assert_eq!(
        messages(&wf("wf", manual), None, &schema),
        vec!["prefix and suffix only apply to the S3 trigger"]
    );
    assert_eq!(
        messages(&wf(&"w".repeat(60), base.clone()), None, &schema),
        vec![
            "workflow name plus '-' plus stage name must fit in 63 characters (they name the stage's Deployment and Service)"
        ]
    );

    let run_schema = openapi_schema("VideoWorkflowRun");
    let run = |input: &str| {
        serde_json::json!({"apiVersion": "vflow.io/v1alpha1", "kind": "VideoWorkflowRun",
            "metadata": {"name": "r"}, "spec": {"workflowRef": {"name": "wf"}, "input": input}})
    };
    assert_eq!(
        messages(&run("a.mp4"), Some(&run("a.mp4")), &run_schema),
        Vec::<String>::new()
    );
    assert_eq!(
        messages(&run("b.mp4"), Some(&run("a.mp4")), &run_schema),
        vec!["a run's spec cannot change once created; create a new VideoWorkflowRun"]
    );
}
