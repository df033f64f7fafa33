//! A workflow's bucket: its endpoint and settings from the spec, credentials from the
//! Secret it names (else the operator's own environment).

use std::future::Future;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use vflow_api::VideoWorkflow;
use vflow_storage::S3Settings;

/// How the operator reaches a workflow's bucket.
pub trait Storage: Send + Sync + 'static {
    fn settings(
        &self,
        wf: &VideoWorkflow,
    ) -> impl Future<Output = Result<S3Settings, String>> + Send;
}

/// Reads `spec.storage.secretRef` (keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).
#[derive(Clone)]
pub struct KubeStorage(pub Client);

/// The spec's endpoint, region and addressing on top of `base` credentials. A spec
/// without an endpoint gets the operator's default (`VFLOW_S3_ENDPOINT`), as its stage
/// pods do; with neither it is AWS S3.
pub fn apply_spec(
    wf: &VideoWorkflow,
    mut settings: S3Settings,
    default_endpoint: Option<String>,
) -> S3Settings {
    let storage = &wf.spec.storage;
    settings.endpoint = storage
        .endpoint
        .clone()
        .or(settings.endpoint)
        .or(default_endpoint);
    if let Some(region) = &storage.region {
        settings.region = region.clone();
    }
    settings.path_style = storage.path_style;
    settings
}

/// The operator's own credentials for a workflow that names no Secret: only with the
/// operator's own endpoint. A spec's endpoint with them would let whoever writes a
/// workflow send the operator's credentials (signed requests) to any server.
pub fn with_operator_credentials(
    wf: &VideoWorkflow,
    env: S3Settings,
) -> Result<S3Settings, String> {
    let own = env.endpoint.clone();
    if let Some(asked) = &wf.spec.storage.endpoint
        && own.as_deref().map(|e| e.trim_end_matches('/')) != Some(asked.trim_end_matches('/'))
    {
        return Err(format!(
            "VideoWorkflow {}/{}: storage.endpoint {asked} needs storage.secretRef: the operator's own \
             credentials are used only with its own endpoint ({})",
            wf.namespace().unwrap_or_default(),
            wf.name_any(),
            own.as_deref().unwrap_or("AWS S3")
        ));
    }
    Ok(apply_spec(wf, env, None))
}

/// The operator's `VFLOW_S3_ENDPOINT`, the endpoint of workflows that name none.
fn default_endpoint() -> Option<String> {
    std::env::var("VFLOW_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
}

impl Storage for KubeStorage {
    async fn settings(&self, wf: &VideoWorkflow) -> Result<S3Settings, String> {
        let ns = wf.namespace().unwrap_or_default();
        let Some(secret_ref) = &wf.spec.storage.secret_ref else {
            let env = S3Settings::from_env()?.ok_or_else(|| {
                format!(
                    "VideoWorkflow {ns}/{}: no storage.secretRef and no S3 credentials in the operator's environment",
                    wf.name_any()
                )
            })?;
            return with_operator_credentials(wf, env);
        };
        let api: Api<Secret> = Api::namespaced(self.0.clone(), &ns);
        let secret = api.get(&secret_ref.name).await.map_err(|e| {
            format!(
                "Secret {ns}/{}: {}",
                secret_ref.name,
                crate::controller::kube_message(&e)
            )
        })?;
        let data = secret.data.unwrap_or_default();
        let field = |k: &str| {
            data.get(k)
                .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("Secret {ns}/{}: no key {k}", secret_ref.name))
        };
        let base = S3Settings::new(
            None,
            field("AWS_ACCESS_KEY_ID")?,
            field("AWS_SECRET_ACCESS_KEY")?,
        );
        Ok(apply_spec(wf, base, default_endpoint()))
    }
}

/// The same settings for every workflow (tests, or a single shared bucket).
#[derive(Clone, Debug)]
pub struct FixedStorage(pub S3Settings);

impl Storage for FixedStorage {
    async fn settings(&self, _wf: &VideoWorkflow) -> Result<S3Settings, String> {
        Ok(self.0.clone())
    }
}
