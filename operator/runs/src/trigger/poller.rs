//! S3 prefix polling for workflows whose trigger is S3.
//!
//! Each poll lists the trigger's prefix, creates a run for every object the cursor has
//! not seen and then writes the cursor back to the bucket
//! (`.vflow/triggers/<namespace>/<workflow>.json`). A crash between the two creates
//! the same runs again at the next poll, which the API server refuses (409: same name),
//! so no object runs twice, also across restarts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::ResourceExt;
use vflow_api::{TriggerType, VideoWorkflow};
use vflow_storage::{S3Settings, S3Store};

use super::cursor::{Cursor, Listed};
use super::{INTERNAL_PREFIX, NewObject, RunSink, Workflows, matches};
use crate::storage::Storage;

#[derive(Debug, Clone)]
pub struct PollerConfig {
    pub interval: Duration,
    /// Whether objects already there when a workflow is first polled get runs (false:
    /// only objects that arrive later do, like a bucket notification).
    pub run_existing: bool,
}

impl Default for PollerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            run_existing: false,
        }
    }
}

/// What one poll of one workflow did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollOutcome {
    pub created: usize,
    /// Runs that existed already (a poll after a crash, or the webhook was first).
    pub existed: usize,
    pub failed: usize,
    /// The first poll recorded what was there without running it.
    pub baseline: bool,
}

pub fn cursor_key(wf: &VideoWorkflow) -> String {
    format!(
        "{INTERNAL_PREFIX}triggers/{}/{}.json",
        wf.namespace().unwrap_or_default(),
        wf.name_any()
    )
}

pub struct Poller<W, S, St> {
    pub workflows: W,
    pub sink: S,
    pub storage: St,
    pub config: PollerConfig,
    clients: Mutex<HashMap<String, (S3Settings, S3Store)>>,
}

/// The ETag; servers that list none (s3s-fs) get size and modification time instead,
/// so an overwritten object still counts as new.
fn version_of(object: &aws_sdk_s3::types::Object) -> String {
    match object.e_tag().map(|e| e.trim_matches('"')) {
        Some(etag) if !etag.is_empty() => etag.to_string(),
        _ => format!(
            "size={};modified={}",
            object.size().unwrap_or(0),
            object
                .last_modified()
                .map(|t| format!("{}.{:09}", t.secs(), t.subsec_nanos()))
                .unwrap_or_default()
        ),
    }
}

async fn list(s3: &S3Store, wf: &VideoWorkflow) -> Result<Vec<Listed>, String> {
    let bucket = &wf.spec.storage.bucket;
    let prefix = wf.spec.trigger.prefix.clone().unwrap_or_default();
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = s3
            .client()
            .list_objects_v2()
            .bucket(bucket)
            .prefix(&prefix)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|e| {
                format!(
                    "listing s3://{bucket}/{prefix}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            })?;
        for object in page.contents() {
            let Some(key) = object.key() else { continue };
            if matches(wf, bucket, key) {
                out.push(Listed {
                    key: key.to_string(),
                    etag: version_of(object),
                });
            }
        }
        match page.next_continuation_token() {
            Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
            _ => return Ok(out),
        }
    }
}

impl<W: Workflows, S: RunSink, St: Storage> Poller<W, S, St> {
    pub fn new(workflows: W, sink: S, storage: St, config: PollerConfig) -> Self {
        Self {
            workflows,
            sink,
            storage,
            config,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, wf: &VideoWorkflow, settings: S3Settings) -> S3Store {
        let key = format!("{}/{}", wf.namespace().unwrap_or_default(), wf.name_any());
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        match clients.get(&key) {
            Some((s, store)) if *s == settings => store.clone(),
            _ => {
                let store = S3Store::new(&settings);
                clients.insert(key, (settings, store.clone()));
                store
            }
        }
    }

    /// One poll of one workflow.
    pub async fn poll_workflow(&self, wf: &VideoWorkflow) -> Result<PollOutcome, String> {
        let settings = self.storage.settings(wf).await?;
        let s3 = self.client(wf, settings);
        let bucket = wf.spec.storage.bucket.clone();
        let listed = list(&s3, wf).await?;
        let key = cursor_key(wf);
        let stored = s3
            .get_bytes(&bucket, &key)
            .await
            .map_err(|e| format!("reading the trigger cursor: {e}"))?;
        let mut outcome = PollOutcome::default();
        let mut cursor = match stored {
            Some(bytes) => serde_json::from_slice::<Cursor>(&bytes).map_err(|e| {
                format!("s3://{bucket}/{key}: not a trigger cursor ({e}); delete it to start over")
            })?,
            None if self.config.run_existing => Cursor::default(),
            None => {
                outcome.baseline = true;
                Cursor::baseline(&listed)
            }
        };
        let mut created = Vec::new();
        for object in cursor.new_objects(&listed) {
            let new = NewObject {
                bucket: bucket.clone(),
                key: object.key.clone(),
                etag: object.etag.clone(),
            };
            match super::create_run(&self.sink, wf, &new, "s3-poll").await {
                Ok((c, _)) => {
                    match c {
                        super::Created::New => outcome.created += 1,
                        super::Created::Existed | super::Created::Collision => outcome.existed += 1,
                    }
                    created.push(object.clone());
                }
                Err(e) => {
                    outcome.failed += 1;
                    tracing::warn!(workflow = %wf.name_any(), key = %object.key, error = %e, "could not create a run; trying again at the next poll");
                }
            }
        }
        cursor.advance(&listed, &created);
        let bytes = serde_json::to_vec(&cursor).map_err(|e| e.to_string())?;
        s3.put_bytes(&bucket, &key, bytes)
            .await
            .map_err(|e| format!("writing the trigger cursor: {e}"))?;
        Ok(outcome)
    }

    /// Polls every S3-triggered workflow now.
    pub async fn poll_all(&self) -> usize {
        let mut created = 0;
        for wf in self.workflows.workflows() {
            if wf.spec.trigger.type_ != TriggerType::S3 || wf.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            match self.poll_workflow(&wf).await {
                Ok(o) => created += o.created,
                Err(e) => {
                    tracing::warn!(workflow = %wf.name_any(), error = %e, "S3 trigger poll failed")
                }
            }
        }
        created
    }

    /// Polls every `interval` until `shutdown`.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            self.poll_all().await;
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }
}
