//! Fixtures shared by the tests: the example profiles and small workflows.
#![allow(dead_code)]

use std::collections::BTreeMap;

use vflow_api::{FunctionProfile, VideoWorkflow};

pub const PROFILES: &str = include_str!("../../../../manifests/examples/profiles.yaml");

pub fn profiles(namespace: &str) -> BTreeMap<String, FunctionProfile> {
    let list: Vec<FunctionProfile> =
        serde_saphyr::from_str_multiple(PROFILES).expect("example profiles parse");
    list.into_iter()
        .map(|mut p| {
            p.metadata.namespace = Some(namespace.into());
            p.metadata.resource_version = Some("1".into());
            (p.metadata.name.clone().expect("named"), p)
        })
        .collect()
}

/// A four-stage workflow (split -> scale -> thumbnail -> stitch-like join) over the
/// example profiles, with a uid so children get owner references.
pub fn workflow(name: &str, namespace: &str, extra_spec: &str) -> VideoWorkflow {
    let yaml = format!(
        r#"
apiVersion: vflow.io/v1alpha1
kind: VideoWorkflow
metadata:
  name: {name}
  namespace: {namespace}
  uid: 00000000-0000-0000-0000-000000000001
  generation: 1
spec:
  storage:
    endpoint: http://minio.storage:9000
    bucket: videos
    region: eu-west-1
    secretRef: {{name: s3-creds}}
  scaleToZeroAfter: 30s
{extra_spec}
  stages:
    - name: split
      function: segment
      fanOut: true
    - name: scale
      function: scale
      after: [split]
      params: {{height: 480}}
    - name: detect
      function: detect
      after: [scale]
      overrides: {{gpu: 0.25}}
    - name: stitch
      function: stitch
      after: [detect]
      join: true
"#
    );
    serde_saphyr::from_str(&yaml).expect("workflow parses")
}
