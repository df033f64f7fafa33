//! The NetworkPolicy over a workflow's stage pods (docs/operations.md, security model).
//!
//! In: the runtime port (8080, /invoke from the run engine) and the metrics port
//! (9091, the observer) only from the operator's pods; the metrics port also from
//! `metrics_from` (e.g. Prometheus). A fused pod's later runtimes are reached over
//! loopback, which no policy filters. Out: DNS and the storage endpoint's port only.
//! One policy per workflow: every stage has the same rules, and it goes with the
//! workflow (owner reference).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use vflow_api::VideoWorkflow;

use super::build::{
    ANNOTATION_SPEC_HASH, HTTP_PORT, LABEL_MANAGED_BY, LABEL_WORKFLOW, MANAGED_BY, METRICS_PORT,
    owner_reference, spec_hash,
};
use crate::error::{Error, Result};

/// Who may call a workflow's stage pods.
#[derive(Debug, Clone, PartialEq)]
pub struct StageIngress {
    pub operator_namespace: String,
    /// The operator pods' labels.
    pub operator_labels: BTreeMap<String, String>,
    /// Who else may scrape the metrics port.
    pub metrics_from: Vec<NetworkPolicyPeer>,
}

/// The policy's name: one per workflow.
pub fn policy_name(workflow: &str) -> String {
    format!("{workflow}-vflow-stages")
}

/// The TCP port of an S3 endpoint URL: its own, else the scheme's; AWS (none): 443.
pub fn endpoint_port(endpoint: Option<&str>) -> Result<u16> {
    let Some(endpoint) = endpoint else {
        return Ok(443);
    };
    let bad = || {
        Error::Config(format!(
            "storage endpoint {endpoint:?}: expected http(s)://host[:port]"
        ))
    };
    let (scheme, rest) = endpoint.split_once("://").ok_or_else(bad)?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    // The port follows the last ':' unless that is inside an IPv6 literal ([::1]).
    let port = match authority.rfind(':') {
        Some(at) if !authority[at..].contains(']') => {
            Some(authority[at + 1..].parse::<u16>().map_err(|_| bad())?)
        }
        _ => None,
    };
    match (port, scheme) {
        (Some(p), _) => Ok(p),
        (None, "https") => Ok(443),
        (None, "http") => Ok(80),
        _ => Err(bad()),
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    }
}

/// The workflow's stage NetworkPolicy.
pub fn network_policy(
    wf: &VideoWorkflow,
    from: &StageIngress,
    default_endpoint: Option<&str>,
) -> Result<NetworkPolicy> {
    let name = wf.name_any();
    let endpoint = wf.spec.storage.endpoint.as_deref().or(default_endpoint);
    let storage_port = endpoint_port(endpoint)?;
    let labels = BTreeMap::from([
        (LABEL_WORKFLOW.to_string(), name.clone()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ]);
    let operator = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                from.operator_namespace.clone(),
            )])),
            ..LabelSelector::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(from.operator_labels.clone()),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(vec![operator]),
        ports: Some(vec![tcp(HTTP_PORT), tcp(METRICS_PORT)]),
    }];
    if !from.metrics_from.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(from.metrics_from.clone()),
            ports: Some(vec![tcp(METRICS_PORT)]),
        });
    }
    let dns = |protocol: &str| NetworkPolicyPort {
        port: Some(IntOrString::Int(53)),
        protocol: Some(protocol.into()),
        ..NetworkPolicyPort::default()
    };
    let egress = vec![
        NetworkPolicyEgressRule {
            ports: Some(vec![dns("UDP"), dns("TCP")]),
            to: None,
        },
        NetworkPolicyEgressRule {
            ports: Some(vec![tcp(i32::from(storage_port))]),
            to: None,
        },
    ];
    let mut policy = NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(policy_name(&name)),
            namespace: wf.namespace(),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner_reference(wf)?]),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    };
    let hash = spec_hash(&policy)?;
    policy
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_SPEC_HASH.into(), hash);
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_port_comes_from_the_endpoint() {
        assert_eq!(endpoint_port(None).ok(), Some(443));
        assert_eq!(
            endpoint_port(Some("http://minio.storage:9000")).ok(),
            Some(9000)
        );
        assert_eq!(
            endpoint_port(Some("https://s3.example.com/")).ok(),
            Some(443)
        );
        assert_eq!(endpoint_port(Some("http://10.0.0.1")).ok(), Some(80));
        assert_eq!(endpoint_port(Some("http://[::1]:9001/x")).ok(), Some(9001));
        assert_eq!(endpoint_port(Some("http://[::1]/x")).ok(), Some(80));
        assert!(endpoint_port(Some("minio:9000")).is_err());
        assert!(endpoint_port(Some("http://minio:port")).is_err());
    }
}
