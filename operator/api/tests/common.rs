//! Helpers shared by the API tests: the shipped examples and manifest snippets.

#![allow(dead_code)]

use std::{collections::BTreeMap, path::PathBuf};

use serde_json::Value;
use vflow_api::{FunctionProfile, FunctionProfileSpec, VideoWorkflow, validate::ProfileSet};

pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests/examples")
}

/// Every document of every example file, as (file name, value).
pub fn example_documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("manifests/examples exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "expected the example files, found {files:?}"
    );
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable");
        let values: Vec<Value> = serde_saphyr::from_multiple(&text).expect("valid YAML");
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        docs.extend(
            values
                .into_iter()
                .filter(|v| !v.is_null())
                .map(|v| (name.clone(), v)),
        );
    }
    docs
}

/// The example FunctionProfiles, as a complete set.
pub fn example_profiles() -> ProfileSet {
    let map: BTreeMap<String, FunctionProfileSpec> = example_documents()
        .into_iter()
        .filter(|(_, v)| v["kind"] == "FunctionProfile")
        .map(|(_, v)| {
            let p: FunctionProfile = serde_json::from_value(v).expect("example profile parses");
            (p.metadata.name.clone().unwrap_or_default(), p.spec)
        })
        .collect();
    ProfileSet::complete(map)
}

/// A workflow named `wf` with the given `spec` YAML.
pub fn workflow(spec_yaml: &str) -> VideoWorkflow {
    let indented: String = spec_yaml.lines().map(|l| format!("  {l}\n")).collect();
    let text = format!(
        "apiVersion: vflow.io/v1alpha1\nkind: VideoWorkflow\nmetadata:\n  name: wf\nspec:\n  storage: {{bucket: videos}}\n{indented}"
    );
    serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("test workflow does not parse: {e}\n{text}"))
}

pub fn profile(spec_yaml: &str) -> FunctionProfile {
    let indented: String = spec_yaml.lines().map(|l| format!("  {l}\n")).collect();
    let text = format!(
        "apiVersion: vflow.io/v1alpha1\nkind: FunctionProfile\nmetadata:\n  name: fn\nspec:\n  image: example/fn:1\n  command: [fn]\n{indented}"
    );
    serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("test profile does not parse: {e}\n{text}"))
}
