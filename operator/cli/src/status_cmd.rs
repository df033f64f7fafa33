//! `vflow status [RUN]`: the runs of a namespace, or one run's stages, timings, cost
//! and outputs.

use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use vflow_api::{RunPhase, VideoWorkflowRun};

fn table(rows: Vec<Vec<String>>) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn age(run: &VideoWorkflowRun, now: Timestamp) -> String {
    let Some(created) = &run.metadata.creation_timestamp else {
        return "-".into();
    };
    let secs = now.duration_since(created.0).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn phase(run: &VideoWorkflowRun) -> RunPhase {
    run.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// One line per run.
pub fn list_table(runs: &[VideoWorkflowRun], now: Timestamp) -> String {
    let mut rows = vec![
        ["NAME", "WORKFLOW", "PHASE", "PROGRESS", "DURATION", "AGE"]
            .map(String::from)
            .to_vec(),
    ];
    for run in runs {
        let status = run.status.clone().unwrap_or_default();
        rows.push(vec![
            run.name_any(),
            run.spec.workflow_ref.name.clone(),
            format!("{:?}", phase(run)),
            status.progress.unwrap_or_else(|| "-".into()),
            status
                .timings
                .map(|t| format!("{:.1}s", t.total_seconds))
                .unwrap_or_else(|| "-".into()),
            age(run, now),
        ]);
    }
    table(rows)
}

/// One run: what it is, where it stands, its stages and what it produced.
pub fn detail(run: &VideoWorkflowRun) -> String {
    let status = run.status.clone().unwrap_or_default();
    let mut out = format!(
        "Run:       {}/{}\nWorkflow:  {}\nInput:     {}\nPhase:     {:?}\nProgress:  {}\n",
        run.namespace().unwrap_or_default(),
        run.name_any(),
        run.spec.workflow_ref.name,
        run.spec.input,
        status.phase,
        status.progress.as_deref().unwrap_or("-"),
    );
    if let Some(m) = &status.message {
        out.push_str(&format!("Message:   {m}\n"));
    }
    if let Some(t) = &status.timings {
        out.push_str(&format!(
            "Timings:   {:.2}s total, {:.2}s critical-path execution, {:.2}s overhead, {:.2}s cold start\n",
            t.total_seconds, t.critical_path_exec_seconds, t.overhead_seconds, t.cold_start_seconds
        ));
    }
    if let Some(c) = &status.estimated_cost {
        out.push_str(&format!(
            "Cost:      {:.6} {} ({:.1} core-s, {:.1} GiB-s, {:.1} GPU-s)\n",
            c.total, c.currency, c.cpu_core_seconds, c.memory_gib_seconds, c.gpu_seconds
        ));
    }
    if !status.stages.is_empty() {
        out.push('\n');
        let mut rows = vec![
            ["STAGE", "DONE", "FAILED", "SKIPPED", "COLD", "EXEC"]
                .map(String::from)
                .to_vec(),
        ];
        for s in &status.stages {
            rows.push(vec![
                s.name.clone(),
                format!("{}/{}", s.done, s.total),
                s.failed.to_string(),
                s.skipped.to_string(),
                s.cold_starts.to_string(),
                format!("{:.2}s", s.exec_seconds),
            ]);
        }
        out.push_str(&table(rows));
    }
    if !status.quality.is_empty() {
        out.push_str("\nQuality:\n");
        for q in &status.quality {
            out.push_str(&format!(
                "  {} ({} frames): {}\n",
                q.stage,
                q.frames,
                vflow_engine::report::quality_line(q)
            ));
        }
    }
    if !status.outputs.is_empty() {
        out.push_str("\nOutputs:\n");
        for o in &status.outputs {
            out.push_str(&format!("  {}  {} bytes  ({})\n", o.uri, o.bytes, o.stage));
        }
    }
    out
}

pub async fn status(
    client: Client,
    run: Option<&str>,
    namespace: Option<&str>,
) -> Result<String, String> {
    let ns = namespace
        .map(str::to_string)
        .unwrap_or_else(|| client.default_namespace().to_string());
    let api: Api<VideoWorkflowRun> = Api::namespaced(client, &ns);
    match run {
        Some(name) => {
            let run = api
                .get_opt(name)
                .await
                .map_err(|e| format!("reading VideoWorkflowRun {ns}/{name}: {e}"))?
                .ok_or_else(|| format!("no VideoWorkflowRun {ns}/{name}"))?;
            Ok(detail(&run))
        }
        None => {
            let mut runs = api
                .list(&ListParams::default())
                .await
                .map_err(|e| format!("listing VideoWorkflowRuns in {ns}: {e}"))?
                .items;
            if runs.is_empty() {
                return Ok(format!("no VideoWorkflowRuns in {ns}\n"));
            }
            runs.sort_by_key(|r| std::cmp::Reverse(r.metadata.creation_timestamp.clone()));
            Ok(list_table(&runs, Timestamp::now()))
        }
    }
}

/// Runs one cluster command: a client from KUBECONFIG (or in-cluster), its output on
/// stdout, errors on stderr; exit 0 or 1.
pub fn with_client<F>(command: impl FnOnce(Client) -> F) -> u8
where
    F: std::future::Future<Output = Result<String, String>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vflow: cannot start the async runtime: {e}");
            return 2;
        }
    };
    vflow_storage::install_crypto_provider();
    let result = runtime.block_on(async {
        let client = Client::try_default()
            .await
            .map_err(|e| format!("no cluster: {e} (set KUBECONFIG)"))?;
        command(client).await
    });
    match result {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("vflow: {e}");
            1
        }
    }
}
