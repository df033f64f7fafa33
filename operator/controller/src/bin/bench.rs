//! `make bench-operator`: N workflows of 4 stages against e2e/testenv with the release
//! operator as a child process. Measures the time until every workflow is Ready, API
//! writes per workflow (the operator's own count of every non-GET request), writes in a
//! steady state (after all are Ready, and again after a restart), the operator's peak
//! RSS (VmHWM) and CPU seconds (utime + stime). Writes results.json into --out.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use clap::Parser;
use futures::{StreamExt, stream};
use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;
use vflow_api::{FunctionProfile, VideoWorkflow};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 500)]
    workflows: usize,
    #[arg(long, default_value = "/tmp/vflow-testenv/kubeconfig")]
    kubeconfig: PathBuf,
    #[arg(long, default_value = "target/release/vflow-operator")]
    operator: PathBuf,
    #[arg(long, default_value = "bench/operator")]
    out: PathBuf,
    /// Seconds of steady state to count writes over (after Ready, and after a restart).
    #[arg(long, default_value_t = 30)]
    settle: u64,
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Proc {
    child: Child,
    port: u16,
}

impl Proc {
    fn start(args: &Args, ns: &str, log: &str) -> Res<Proc> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let file = std::fs::File::create(std::env::temp_dir().join(format!("vflow-bench-{log}")))?;
        let child = Command::new(&args.operator)
            .env("KUBECONFIG", &args.kubeconfig)
            .env("RUST_LOG", "warn")
            .args(["--watch-namespace", ns, "--lease-namespace", ns])
            .args(["--identity", log])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()?;
        Ok(Proc { child, port })
    }

    fn get(&self, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{}{path}", self.port)])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// (writes without the Lease, Lease writes).
    fn writes(&self) -> (u64, u64) {
        let text = self.get("/metrics").unwrap_or_default();
        let mut w = (0u64, 0u64);
        for l in text
            .lines()
            .filter(|l| l.starts_with("vflow_operator_api_requests_total{"))
        {
            if l.contains("method=\"GET\"") {
                continue;
            }
            let n = l
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
            if l.contains("resource=\"leases\"") {
                w.1 += n;
            } else {
                w.0 += n;
            }
        }
        w
    }

    fn metric_sum(&self, prefix: &str) -> f64 {
        self.get("/metrics")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// (peak RSS bytes, CPU seconds) from /proc.
    fn usage(&self) -> (u64, f64) {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or_default();
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 of stat; after ")" field 3 is index 0.
        (hwm, (ticks(11) + ticks(12)) / 100.0)
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn workflow(i: usize) -> Res<VideoWorkflow> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "vflow.io/v1alpha1", "kind": "VideoWorkflow",
        "metadata": {"name": format!("wf-{i:04}")},
        "spec": {
            "storage": {"endpoint": "http://minio:9000", "bucket": "videos", "secretRef": {"name": "s3"}},
            "stages": [
                {"name": "split", "function": "segment", "fanOut": true},
                {"name": "scale", "function": "scale", "after": ["split"], "params": {"height": 480}},
                {"name": "thumbnail", "function": "thumbnail", "after": ["scale"]},
                {"name": "sprite", "function": "sprite", "after": ["thumbnail"], "join": true}
            ]
        }
    }))?)
}

async fn ready_count(api: &Api<VideoWorkflow>) -> usize {
    let Ok(list) = api.list(&ListParams::default()).await else {
        return 0;
    };
    list.items
        .iter()
        .filter(|w| {
            w.status.as_ref().is_some_and(|s| {
                s.observed_generation == w.metadata.generation
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .count()
}

async fn wait_leading(op: &Proc, within: Duration) -> Res<()> {
    let t = Instant::now();
    while op.get("/readyz").is_none()
        || !op
            .get("/metrics")
            .unwrap_or_default()
            .contains("vflow_operator_leader 1")
    {
        if t.elapsed() > within {
            return Err(format!("operator not leading within {within:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    vflow_operator::install_crypto_provider();
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let kc = Kubeconfig::read_from(&args.kubeconfig)?;
    let client = Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?,
    )?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in vflow_api::crds() {
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&crd),
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ns = format!("bench-{}", std::process::id());
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let profiles: Vec<FunctionProfile> = serde_saphyr::from_str_multiple(include_str!(
        "../../../../manifests/examples/profiles.yaml"
    ))?;
    let papi: Api<FunctionProfile> = Api::namespaced(client.clone(), &ns);
    for p in profiles {
        papi.patch(
            &p.name_any(),
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&p),
        )
        .await?;
    }

    let mut op = Proc::start(&args, &ns, "operator-1.log")?;
    wait_leading(&op, Duration::from_secs(30)).await?;
    let wapi: Api<VideoWorkflow> = Api::namespaced(client.clone(), &ns);
    eprintln!("creating {} workflows in {ns}", args.workflows);
    let t0 = Instant::now();
    let created: Vec<Res<()>> = stream::iter(0..args.workflows)
        .map(|i| {
            let wapi = wapi.clone();
            async move {
                let wf = workflow(i)?;
                wapi.patch(
                    &wf.name_any(),
                    &PatchParams::apply("bench").force(),
                    &Patch::Apply(&wf),
                )
                .await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    if let Some(Err(e)) = created.into_iter().find(|r| r.is_err()) {
        return Err(e);
    }
    let created_s = t0.elapsed().as_secs_f64();
    eprintln!("created in {created_s:.1}s; waiting for Ready");
    let mut last = 0;
    loop {
        let n = ready_count(&wapi).await;
        if n != last {
            eprintln!("  {:>6.1}s  {n} Ready", t0.elapsed().as_secs_f64());
            last = n;
        }
        if n == args.workflows {
            break;
        }
        if t0.elapsed() > Duration::from_secs(args.timeout) {
            return Err(format!(
                "only {n} of {} Ready after {}s",
                args.workflows, args.timeout
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let ready_s = t0.elapsed().as_secs_f64();
    let (writes_ready, lease_ready) = op.writes();
    let (rss_ready, cpu_ready) = op.usage();
    eprintln!(
        "all Ready in {ready_s:.1}s; {writes_ready} writes; settling {}s",
        args.settle
    );
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let (writes_settled, lease_settled) = op.writes();
    let (rss_peak_1, cpu_1) = op.usage();
    let p99 = op
        .metric_sum("vflow_operator_reconcile_duration_seconds_sum{controller=\"videoworkflow\"")
        / op.metric_sum(
            "vflow_operator_reconcile_duration_seconds_count{controller=\"videoworkflow\"",
        )
        .max(1.0);
    op.stop();

    eprintln!("restarting the operator");
    let op2 = Proc::start(&args, &ns, "operator-2.log")?;
    wait_leading(&op2, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let (writes_restart, lease_restart) = op2.writes();
    let (rss_peak_2, cpu_2) = op2.usage();
    let reconciles_2 =
        op2.metric_sum("vflow_operator_reconciliations_total{controller=\"videoworkflow\"");

    let n = args.workflows as f64;
    let result = json!({
        "workflows": args.workflows,
        "stagesPerWorkflow": 4,
        "createSeconds": created_s,
        "allReadySeconds": ready_s,
        "writesUntilReady": writes_ready,
        "writesPerWorkflow": writes_ready as f64 / n,
        "writesInSettleWindow": writes_settled - writes_ready,
        "leaseWritesInSettleWindow": lease_settled - lease_ready,
        "meanReconcileSeconds": p99,
        "settleSeconds": args.settle,
        "operator": {
            "peakRssBytesAtReady": rss_ready,
            "cpuSecondsAtReady": cpu_ready,
            "peakRssBytes": rss_peak_1,
            "cpuSeconds": cpu_1,
        },
        "restart": {
            "reconciles": reconciles_2,
            "writes": writes_restart,
            "leaseWrites": lease_restart,
            "peakRssBytes": rss_peak_2,
            "cpuSeconds": cpu_2,
        },
        "namespace": ns,
    });
    let text = serde_json::to_string_pretty(&result)? + "\n";
    std::fs::write(args.out.join("results.json"), &text)?;
    print!("{text}");
    Ok(())
}
