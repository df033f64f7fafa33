//! vflow's operator: VideoWorkflows become one Deployment and one Service per stage,
//! sized from FunctionProfiles by the planner and scaled by a Knative-like autoscaler;
//! FunctionProfiles get a sizing recommendation in their status.
//!
//! Layout: [`workflow`] (the reconcile, in phase files), [`profile`], the pure
//! [`autoscaler`] and [`signals`] (the runs' demand and the annotations), [`leader`]
//! (Lease), [`metrics`] and [`http`], and [`run`], which wires them up.

pub mod autoscaler;
pub mod config;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod observer;
pub mod profile;
pub mod signals;
pub mod workflow;

use std::{future::Future, sync::Arc, time::Duration};

use futures::{StreamExt, future};
use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{PodTemplateSpec, Service},
};
use kube::{
    Api, Client, ResourceExt,
    client::ClientBuilder,
    runtime::{
        Controller, WatchStreamExt,
        controller::Config as ControllerConfig,
        events::Reporter,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use tracing::{info, warn};
use vflow_api::{FunctionProfile, VideoWorkflow};
use vflow_runs::demand::DemandBoard;

use crate::{
    config::{Args, LogFormat, Settings},
    error::{Error, Result},
    http::Health,
    metrics::Metrics,
    workflow::build::{LABEL_MANAGED_BY, MANAGED_BY},
};

pub fn init_tracing(args: &Args) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A client whose every request is counted in `vflow_operator_api_requests_total`.
pub fn counting_client(config: kube::Config, metrics: Metrics) -> Result<Client> {
    let builder = ClientBuilder::try_from(config)?;
    let layer =
        tower::util::MapRequestLayer::new(move |req: ::http::Request<kube::client::Body>| {
            metrics.count_request(req.method(), req.uri().path());
            req
        });
    Ok(builder.with_layer(&layer).build())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs the operator until SIGTERM/SIGINT (Ok) or until it loses the Lease or cannot
/// serve (Err).
/// Chooses ring as the process's TLS provider before the first client (defined once,
/// in vflow-storage, which brings the AWS SDK in beside kube).
pub use vflow_runs::install_crypto_provider;

/// The run controller's settings (None: it is off): its `VFLOW_RUNS_*` variables read
/// through `var`, the namespace the operator watches, and the operator's own planner
/// settings, so that runs and the workflow controller plan a workflow alike.
pub fn runs_config(
    args: &Args,
    settings: &Settings,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<vflow_runs::RunsConfig>> {
    if !args.run_controller {
        return Ok(None);
    }
    let mut cfg = vflow_runs::RunsConfig::from_vars(var).map_err(Error::Config)?;
    if let Some(ns) = &args.watch_namespace {
        cfg.namespace = Some(ns.clone());
    }
    cfg.planner = settings.planner.clone();
    // One price list: the run controller's (VFLOW_RUNS_PRICE_*) is the planner's too.
    cfg.planner.prices = cfg.prices.clone();
    Ok(Some(cfg))
}

pub async fn run(args: Args) -> Result<()> {
    install_crypto_provider();
    init_tracing(&args);
    let settings = args.settings()?;
    // Read before anything starts, so a bad VFLOW_RUNS_* value stops the operator at once.
    let runs = runs_config(&args, &settings, |k| std::env::var(k).ok())?;
    let config = kube::Config::infer()
        .await
        .map_err(|e| Error::Config(format!("no Kubernetes configuration: {e}")))?;
    let demand = Arc::new(DemandBoard::default());
    run_with(args, config, demand, runs, shutdown_signal()).await
}

/// Runs the operator against `config` until `shutdown` completes (Ok) or until it loses
/// the Lease or cannot serve (Err). `runs`: the run controller's settings (None: off).
/// The workflow controller scales from the demand on `demand`, which the run
/// controller (and anything else in this process, such as a test) posts to.
pub async fn run_with(
    args: Args,
    config: kube::Config,
    demand: Arc<DemandBoard>,
    runs: Option<vflow_runs::RunsConfig>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    install_crypto_provider();
    let mut settings = args.settings()?;
    if let Some(cfg) = &runs {
        // The workflow controller plans with the run controller's prices too.
        settings.planner.prices = cfg.prices.clone();
    }
    let metrics = Metrics::new();
    let runs = match runs {
        Some(mut cfg) => {
            cfg.metrics = Some(
                vflow_runs::metrics::RunMetrics::register(&metrics.registry)
                    .map_err(|e| Error::Config(format!("run metrics: {e}")))?,
            );
            cfg.demand = demand.clone();
            Some(cfg)
        }
        None => None,
    };
    let client = counting_client(config, metrics.clone())?;
    let health = Health::default();
    let mut http = tokio::spawn(http::serve(args.http_addr, metrics.clone(), health.clone()));
    client.apiserver_version().await?;
    health.set_ready(true);

    // The webhook on every replica, standby ones too (it only creates runs; the
    // Service sends to any replica).
    let mut webhook = tokio::spawn(match &runs {
        Some(cfg) => futures::FutureExt::boxed(vflow_runs::serve_webhook(
            client.clone(),
            cfg.clone(),
            future::pending(),
        )),
        None => futures::FutureExt::boxed(future::pending()),
    });
    let webhook_failed = |r: std::result::Result<std::result::Result<(), String>, _>| {
        Error::Config(match r {
            Ok(Ok(())) => "the webhook stopped".to_string(),
            Ok(Err(e)) => e,
            Err(e) => format!("the webhook failed: {e}"),
        })
    };

    let identity = args.identity();
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), &args.lease_namespace());
    let lease = leader::LeaseConfig {
        name: args.lease_name.clone(),
        identity: identity.clone(),
        lease_duration: Duration::from_secs(u64::from(args.lease_seconds.max(2))),
        renew: Duration::from_secs(u64::from(
            args.renew_seconds.clamp(1, args.lease_seconds.max(2) - 1),
        )),
    };
    tokio::pin!(shutdown);
    if args.leader_elect {
        tokio::select! {
            _ = leader::acquire(&lease_api, &lease) => {},
            _ = &mut shutdown => { info!("shutting down"); webhook.abort(); return Ok(()); }
            r = &mut http => return Err(Error::Config(format!("HTTP server stopped: {r:?}"))),
            r = &mut webhook => return Err(webhook_failed(r)),
        }
        metrics.leader.set(1);
    }
    let controllers = controllers(
        client.clone(),
        &args,
        settings,
        metrics.clone(),
        health.clone(),
        identity,
        demand,
    );
    // The leader folds what function pods measured into their FunctionProfiles.
    let observe = async {
        if args.observe_seconds > 0 {
            let observer =
                observer::Observer::new(client.clone(), std::sync::Arc::new(observer::pod_ip))
                    .in_namespace(args.watch_namespace.clone());
            observer
                .run(Duration::from_secs(args.observe_seconds))
                .await;
        }
        future::pending::<()>().await
    };
    // On a task of its own: the renewal keeps its schedule however busy the
    // controllers are, and its deadline holds even if a call hangs.
    let keeper = args.leader_elect.then(|| {
        let (api, lease) = (lease_api.clone(), lease.clone());
        AbortOnDrop(tokio::spawn(
            async move { leader::keep(&api, &lease).await },
        ))
    });
    let keep = async {
        match keeper {
            Some(mut task) => (&mut task.0)
                .await
                .unwrap_or_else(|e| Error::LostLease(format!("the Lease's task failed: {e}"))),
            None => future::pending::<Error>().await,
        }
    };
    // Runs are driven by the leader only: two engines on one run would run it twice.
    // A new leader resumes every unfinished run from its record.
    // The run controller stops when told to (on SIGTERM): it first drains, letting the
    // invocations in flight finish and be recorded.
    let (stop_runs, runs_stopped) = tokio::sync::oneshot::channel::<()>();
    // The drain's own limit (VFLOW_RUNS_DRAIN_SECONDS) and a little more; None: no runs.
    let drain_limit = runs
        .as_ref()
        .map(|cfg| cfg.drain_timeout + Duration::from_secs(5));
    let runs = async {
        match runs {
            Some(cfg) => {
                info!("run controller on");
                let stopped = async {
                    let _ = runs_stopped.await;
                };
                let r = vflow_runs::run_controller(client.clone(), cfg, stopped);
                Err(Error::Watch(match r.await {
                    Ok(()) => "the run controller stopped".into(),
                    Err(e) => format!("the run controller stopped: {e}"),
                }))
            }
            None => future::pending::<Result<()>>().await,
        }
    };
    tokio::pin!(runs, keep);
    let mut lost = false;
    let result = tokio::select! {
        r = controllers => r,
        r = &mut runs => r,
        _ = observe => Ok(()),
        e = &mut keep => {
            // Leaving this select drops every controller, and with the run controller
            // its runs' engines (vflow_runs::fence): nothing writes after this.
            lost = true;
            Err(e)
        }
        r = &mut webhook => Err(webhook_failed(r)),
        _ = &mut shutdown => {
            info!("shutting down: letting the runs' invocations in flight finish");
            let _ = stop_runs.send(());
            if let Some(limit) = drain_limit {
                // The Lease is kept while they drain: no other leader resumes them
                // meanwhile.
                tokio::select! {
                    _ = &mut runs => {}
                    e = &mut keep => {
                        lost = true;
                        warn!(error = %e, "lost the Lease while draining");
                    }
                    _ = tokio::time::sleep(limit) => warn!("the runs did not drain in time"),
                }
            }
            Ok(())
        }
    };
    metrics.leader.set(0);
    webhook.abort();
    if args.leader_elect && !lost {
        leader::release(&lease_api, &lease).await;
    }
    result
}

/// A spawned task that is aborted when this is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Drops what the workflow controller never reads from cached Deployments (the pod
/// template is compared through the spec-hash annotation), to keep memory small.
fn slim_deployment(d: &mut Deployment) {
    d.metadata.managed_fields = None;
    d.spec.template = PodTemplateSpec::default();
}

fn slim_service(s: &mut Service) {
    s.metadata.managed_fields = None;
}

fn slim_profile(p: &mut FunctionProfile) {
    p.metadata.managed_fields = None;
}

async fn controllers(
    client: Client,
    args: &Args,
    settings: Settings,
    metrics: Metrics,
    health: Health,
    identity: String,
    demand: Arc<DemandBoard>,
) -> Result<()> {
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
    let ns = args.watch_namespace.as_deref();
    let children = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));

    let (profile_store, profile_writer) = reflector::store();
    let profile_stream = reflector::reflector(
        profile_writer,
        watcher(
            api::<FunctionProfile>(&client, ns),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(slim_profile),
    )
    .applied_objects();
    let (deploy_store, deploy_writer) = reflector::store();
    let deploy_stream = reflector::reflector(
        deploy_writer,
        watcher(api::<Deployment>(&client, ns), children.clone())
            .default_backoff()
            .modify(slim_deployment),
    )
    .applied_objects();
    let (svc_store, svc_writer) = reflector::store();
    let svc_stream = reflector::reflector(
        svc_writer,
        watcher(api::<Service>(&client, ns), children)
            .default_backoff()
            .modify(slim_service),
    )
    .applied_objects();

    let reporter = Reporter {
        controller: "vflow-operator".into(),
        instance: Some(identity),
    };
    let mut ctx = workflow::Context::new(
        client.clone(),
        settings.clone(),
        metrics.clone(),
        profile_store.clone(),
        deploy_store.clone(),
        svc_store.clone(),
        reporter,
    );
    // A change of the runs' demand reconciles its workflow at once.
    let pokes = futures::stream::unfold(demand.subscribe(), |mut rx| async move {
        rx.recv()
            .await
            .map(|(ns, name)| (ObjectRef::<VideoWorkflow>::new(&name).within(&ns), rx))
    });
    ctx.demand = demand;
    let ctx = Arc::new(ctx);
    let wf_ctx = ctx.clone();
    let cfg = ControllerConfig::default().concurrency(args.concurrency);
    let wf_controller = Controller::new(
        api::<VideoWorkflow>(&client, ns),
        watcher::Config::default(),
    );
    let wf_store = wf_controller.store();
    let workflows = wf_controller
        .with_config(cfg.clone())
        .owns_stream(deploy_stream)
        .owns_stream(svc_stream)
        .reconcile_on(pokes)
        .watches_stream(profile_stream, move |p| {
            workflow::workflows_using(&wf_store, &p)
        })
        .run(workflow::reconcile, workflow::error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                match e {
                    kube::runtime::controller::Error::ReconcilerFailed(_, _) => {}
                    other => warn!(error = %other, "workflow controller"),
                }
            }
            future::ready(())
        });

    let profile_ctx = Arc::new(profile::ProfileContext {
        client: client.clone(),
        sizing: settings.planner.sizing.clone(),
        metrics: metrics.clone(),
        clock: k8s_openapi::jiff::Timestamp::now,
    });
    let profiles = Controller::new(
        api::<FunctionProfile>(&client, ns),
        watcher::Config::default(),
    )
    .with_config(cfg)
    .run(profile::reconcile, profile::error_policy, profile_ctx)
    .for_each(|_| future::ready(()));

    // Not ready until the caches are: a reconcile before then would see no children
    // and write them all again.
    health.set_ready(false);
    let ready = async {
        let _ = profile_store.wait_until_ready().await;
        let _ = deploy_store.wait_until_ready().await;
        let _ = svc_store.wait_until_ready().await;
        info!(
            profiles = profile_store.len(),
            deployments = deploy_store.len(),
            services = svc_store.len(),
            "caches in sync"
        );
        wf_ctx
            .caches_ready
            .store(true, std::sync::atomic::Ordering::SeqCst);
        health.set_ready(true);
        future::pending::<()>().await
    };
    tokio::select! {
        _ = workflows => Err(Error::Watch("workflow controller stopped".into())),
        _ = profiles => Err(Error::Watch("profile controller stopped".into())),
        _ = ready => Ok(()),
    }
}

/// Name of an object for logs.
pub fn display_name<K: ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}
