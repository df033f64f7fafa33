//! VideoWorkflowRuns in a cluster (see docs/runs.md).
//!
//! - [`backend`]: the run engine's Kubernetes backend: invokes a stage through its
//!   Service, tells the operator's autoscaler (in this process) of its invocations in
//!   flight and pre-warm requests ([`demand`]) and holds invocations while a stage
//!   scales from zero ([`capacity`]);
//! - [`controller`]: drives the engine for each run, writes its status ([`status`]:
//!   progress, per-stage progress, outputs, timings, estimated cost), resumes runs after
//!   a restart and deletes finished runs after their TTL;
//! - [`trigger`]: runs from S3 prefix polling and MinIO bucket notifications.
//!
//! The operator starts everything with [`run_controller`].

pub mod backend;
pub mod capacity;
pub mod config;
pub mod controller;
pub mod demand;
pub mod fence;
pub mod learn;
pub mod metrics;
pub mod oom_raise;
pub mod status;
pub mod storage;
pub mod trigger;

use std::future::Future;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use vflow_api::{VideoWorkflow, VideoWorkflowRun};

pub use config::RunsConfig;

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

pub use vflow_storage::install_crypto_provider;

/// Serves the MinIO notification webhook (when configured) until `shutdown`
/// completes. Every replica serves it, leader or not: it only creates
/// VideoWorkflowRuns, under names fixed by the object (a second call finds the run
/// there), and the Service in front of the operator sends to any replica.
pub async fn serve_webhook(
    client: Client,
    config: RunsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let Some(addr) = config.webhook_addr else {
        shutdown.await;
        return Ok(());
    };
    let (workflows, writer) = reflector::store::<VideoWorkflow>();
    let watch = reflector::reflector(
        writer,
        watcher(
            api::<VideoWorkflow>(&client, config.namespace.as_deref()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .applied_objects()
    .for_each(|_| futures::future::ready(()));
    tokio::pin!(watch);
    // Listen once the workflows are known: an event answered before would match none
    // and be lost.
    tokio::select! {
        _ = &mut watch => return Err("the webhook's workflow watch stopped".to_string()),
        r = workflows.wait_until_ready() => r.map_err(|e| format!("webhook's workflow watch: {e}"))?,
    }
    let state = Arc::new(trigger::webhook::WebhookState {
        workflows,
        sink: trigger::KubeRunSink(client),
        token: config.webhook_token.clone(),
    });
    let listener = trigger::webhook::bind(addr)
        .await
        .map_err(|e| format!("webhook on {addr}: {e}"))?;
    tracing::info!(%addr, "MinIO notification webhook listening");
    tokio::select! {
        _ = watch => Err("the webhook's workflow watch stopped".to_string()),
        r = trigger::webhook::serve(listener, state, shutdown) => {
            r.map_err(|e| format!("webhook: {e}"))
        }
    }
}

/// Runs the VideoWorkflowRun controller and the S3 poller (as configured) until
/// `shutdown` completes. Call it on the leader only: two of these would run each run
/// twice. The webhook is separate (`serve_webhook`).
pub async fn run_controller(
    client: Client,
    config: RunsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    install_crypto_provider();
    let shutdown = shutdown.boxed().shared();
    let ns = config.namespace.clone();
    let ctx = controller::Ctx::new(client.clone(), config.clone());
    // However this function ends or is dropped (the leader lost its Lease), no run's
    // engine goes on.
    let _fence = fence::Fence(ctx.tasks.clone());

    // The triggers read workflows from one cache.
    let (wf_store, wf_writer) = reflector::store::<VideoWorkflow>();
    let wf_watch = reflector::reflector(
        wf_writer,
        watcher(
            api::<VideoWorkflow>(&client, ns.as_deref()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .applied_objects()
    .for_each(|_| futures::future::ready(()));

    let poller = {
        let store = wf_store.clone();
        let client = client.clone();
        let cfg = config.poller.clone();
        let shutdown = shutdown.clone();
        async move {
            let Some(cfg) = cfg else {
                return futures::future::pending::<()>().await;
            };
            let _ = store.wait_until_ready().await;
            let poller = trigger::poller::Poller::new(
                store,
                trigger::KubeRunSink(client.clone()),
                storage::KubeStorage(client),
                cfg,
            );
            poller.run(shutdown).await;
        }
    };

    let runs = Controller::new(
        api::<VideoWorkflowRun>(&client, ns.as_deref()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown.clone())
    .run(controller::reconcile, controller::error_policy, ctx.clone())
    .for_each(|_| futures::future::ready(()));

    let result = tokio::select! {
        _ = runs => Ok(()),
        _ = wf_watch => Err("the workflow watch stopped".to_string()),
        _ = poller => Ok(()),
        _ = shutdown.clone() => Ok(()),
    };
    // What is in flight finishes and is recorded before this process goes, so the
    // next leader resumes without running it twice; then stop asking for instances.
    ctx.drain(config.drain_timeout).await;
    ctx.config.demand.clear_in_flight();
    result
}
