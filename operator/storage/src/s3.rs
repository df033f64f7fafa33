//! S3-compatible servers through aws-sdk-s3.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, ResponseChecksumValidation, retry::RetryConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{ChecksumMode, CompletedMultipartUpload, CompletedPart};
use futures_util::{StreamExt, TryStreamExt, stream};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{Expected, Location, ObjectInfo, S3Settings, StorageError, Transfer, sha256_file};

/// Object metadata key under which vflow records a file's SHA-256 at upload.
const SHA256_METADATA: &str = "vflow-sha256";

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    settings: S3Settings,
}

fn uri(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

/// A key as CopyObject's `x-amz-copy-source` wants it: percent-encoded, '/' kept.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Turns an SDK error into ours, deciding whether a retry may help.
fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    uri: String,
    operation: &'static str,
) -> StorageError {
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    if status == Some(404) || matches!(code.as_deref(), Some("NoSuchKey" | "NotFound")) {
        return StorageError::NotFound { uri };
    }
    if status == Some(412) || code.as_deref() == Some("PreconditionFailed") {
        return StorageError::Exists { uri };
    }
    let transient = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        _ => {
            matches!(status, Some(429) | Some(500..=599))
                || matches!(
                    code.as_deref(),
                    // 409 ConditionalRequestConflict: two conditional writes at once.
                    Some(
                        "SlowDown"
                            | "Throttling"
                            | "ThrottlingException"
                            | "RequestTimeout"
                            | "ConditionalRequestConflict"
                    )
                )
        }
    };
    let message = match (code, err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => format!("{}", aws_sdk_s3::error::DisplayErrorContext(&err)),
    };
    StorageError::S3 {
        uri,
        operation,
        message,
        transient,
    }
}

impl S3Store {
    pub fn new(settings: &S3Settings) -> Self {
        let credentials = Credentials::new(
            settings.access_key_id.clone(),
            settings.secret_access_key.clone(),
            None,
            None,
            "vflow",
        );
        let retry = RetryConfig::standard()
            .with_max_attempts(settings.max_attempts.max(1))
            .with_initial_backoff(Duration::from_millis(100))
            .with_max_backoff(Duration::from_secs(5));
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(settings.path_style)
            // Downloads ask for the server's checksum (and verify their SHA-256);
            // small objects read whole are checked by their readers. A server that
            // stores the checksum after the content (s3s-fs) can keep a stale one
            // when a writer dies between the two, and checking it on every read
            // made such an object unreadable for good.
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(retry);
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Self {
            client: Client::from_conf(config.build()),
            settings: settings.clone(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Retries the whole download (a body can break mid-stream, where the SDK's own
    /// retries do not reach) with exponential backoff.
    pub async fn download(
        &self,
        bucket: &str,
        key: &str,
        dest: &Path,
    ) -> Result<Transfer, StorageError> {
        let mut attempt = 1;
        loop {
            match self.download_once(bucket, key, dest).await {
                Ok(transfer) => return Ok(transfer),
                Err(err) if err.is_transient() && attempt < self.settings.max_attempts => {
                    let delay = Duration::from_millis(100 << attempt.min(6));
                    tracing::warn!(error = %err, attempt, ?delay, "download failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(err) => {
                    let _ = tokio::fs::remove_file(dest).await;
                    return Err(err);
                }
            }
        }
    }

    async fn download_once(
        &self,
        bucket: &str,
        key: &str,
        dest: &Path,
    ) -> Result<Transfer, StorageError> {
        let uri = uri(bucket, key);
        let response = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| classify(e, uri.clone(), "GetObject"))?;
        let expected_size = response
            .content_length()
            .and_then(|n| u64::try_from(n).ok());
        let expected_sha = response
            .metadata()
            .and_then(|m| m.get(SHA256_METADATA))
            .cloned();
        let file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| StorageError::io(dest, &e))?;
        let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        let mut body = response.body;
        while let Some(chunk) = body.next().await {
            // A broken connection or a checksum that does not match: fetching again
            // may help (corruption at rest fails every attempt and is reported).
            let chunk = chunk.map_err(|e| StorageError::S3 {
                uri: uri.clone(),
                operation: "GetObject body",
                message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
                transient: true,
            })?;
            hasher.update(&chunk);
            got += chunk.len() as u64;
            writer
                .write_all(&chunk)
                .await
                .map_err(|e| StorageError::io(dest, &e))?;
        }
        writer
            .flush()
            .await
            .map_err(|e| StorageError::io(dest, &e))?;
        if let Some(expected) = expected_size
            && expected != got
        {
            return Err(StorageError::SizeMismatch { uri, expected, got });
        }
        let sha256 = hex::encode(hasher.finalize());
        if let Some(expected) = expected_sha
            && expected != sha256
        {
            return Err(StorageError::ChecksumMismatch {
                uri,
                expected,
                got: sha256,
            });
        }
        Ok(Transfer {
            bytes: got,
            sha256: Some(sha256),
        })
    }

    pub async fn upload(
        &self,
        src: &Path,
        bucket: &str,
        key: &str,
    ) -> Result<Transfer, StorageError> {
        let (bytes, sha256) = sha256_file(src).await?;
        if bytes >= self.settings.multipart_threshold {
            self.upload_parts(src, bucket, key, bytes, &sha256).await?;
        } else {
            let body = ByteStream::from_path(src)
                .await
                .map_err(|e| StorageError::Io {
                    path: src.to_path_buf(),
                    message: e.to_string(),
                })?;
            self.client
                .put_object()
                .bucket(bucket)
                .key(key)
                .metadata(SHA256_METADATA, &sha256)
                .body(body)
                .send()
                .await
                .map_err(|e| classify(e, uri(bucket, key), "PutObject"))?;
        }
        Ok(Transfer {
            bytes,
            sha256: Some(sha256),
        })
    }

    async fn upload_parts(
        &self,
        src: &Path,
        bucket: &str,
        key: &str,
        size: u64,
        sha256: &str,
    ) -> Result<(), StorageError> {
        let target = uri(bucket, key);
        let metadata =
            std::collections::HashMap::from([(SHA256_METADATA.to_string(), sha256.to_string())]);
        let (upload_id, mut pending) = self
            .start_upload(bucket, key, Some(metadata), &target)
            .await?;
        let part_size = self.settings.part_size.max(5 << 20);
        let part_count = size.div_ceil(part_size);
        let uploads = stream::iter(0..part_count)
            .map(|index| {
                let upload_id = upload_id.clone();
                let target = target.clone();
                async move {
                    let offset = index * part_size;
                    let length = part_size.min(size - offset);
                    let body = ByteStream::read_from()
                        .path(src)
                        .offset(offset)
                        .length(Length::Exact(length))
                        .build()
                        .await
                        .map_err(|e| StorageError::Io {
                            path: src.to_path_buf(),
                            message: e.to_string(),
                        })?;
                    let part_number = i32::try_from(index + 1).unwrap_or(i32::MAX);
                    let done = self
                        .client
                        .upload_part()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(&upload_id)
                        .part_number(part_number)
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| classify(e, target, "UploadPart"))?;
                    Ok::<_, StorageError>(
                        CompletedPart::builder()
                            .part_number(part_number)
                            .set_e_tag(done.e_tag().map(str::to_string))
                            .set_checksum_crc32(done.checksum_crc32().map(str::to_string))
                            .set_checksum_crc32_c(done.checksum_crc32_c().map(str::to_string))
                            .set_checksum_crc64_nvme(done.checksum_crc64_nvme().map(str::to_string))
                            .build(),
                    )
                }
            })
            .buffer_unordered(self.settings.part_concurrency.max(1));
        let outcome = async {
            let mut parts: Vec<CompletedPart> = uploads.try_collect().await?;
            parts.sort_by_key(|p| p.part_number());
            self.complete_upload(bucket, key, &upload_id, parts, &target)
                .await
        }
        .await;
        match outcome {
            Ok(()) => {
                pending.done = true;
                Ok(())
            }
            Err(err) => {
                pending.done = true;
                pending.abort().await;
                Err(err)
            }
        }
    }

    /// CreateMultipartUpload with the object's metadata. Whatever ends the upload short
    /// of completion (a part or the completion failing, the caller going away) aborts
    /// it through the returned guard: orphaned parts cost storage and stay invisible.
    async fn start_upload(
        &self,
        bucket: &str,
        key: &str,
        metadata: Option<std::collections::HashMap<String, String>>,
        target: &str,
    ) -> Result<(String, PendingUpload), StorageError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .set_metadata(metadata)
            .send()
            .await
            .map_err(|e| classify(e, target.to_string(), "CreateMultipartUpload"))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let pending = PendingUpload {
            client: self.client.clone(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            upload_id: upload_id.clone(),
            done: false,
        };
        Ok((upload_id, pending))
    }

    /// CompleteMultipartUpload with the parts in order.
    async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        target: &str,
    ) -> Result<(), StorageError> {
        self.client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify(e, target.to_string(), "CompleteMultipartUpload"))?;
        Ok(())
    }

    pub async fn put_bytes(
        &self,
        bucket: &str,
        key: &str,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        let sha256 = hex::encode(Sha256::digest(&data));
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .metadata(SHA256_METADATA, sha256)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| classify(e, uri(bucket, key), "PutObject"))?;
        Ok(())
    }

    /// PutObject on a condition (`If-None-Match: *` or `If-Match: <etag>`): the new
    /// ETag, or `None` when the condition did not hold.
    pub async fn put_bytes_if(
        &self,
        bucket: &str,
        key: &str,
        data: Vec<u8>,
        expected: &Expected,
    ) -> Result<Option<String>, StorageError> {
        let sha256 = hex::encode(Sha256::digest(&data));
        let mut put = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .metadata(SHA256_METADATA, sha256)
            .body(ByteStream::from(data));
        put = match expected {
            Expected::Absent => put.if_none_match("*"),
            Expected::Tag(tag) => put.if_match(tag),
        };
        match put.send().await {
            Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_string())),
            Err(e) => match classify(e, uri(bucket, key), "PutObject (conditional)") {
                StorageError::Exists { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// A small object and its ETag; `Ok(None)` when it does not exist.
    pub async fn get_tagged(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, String)>, StorageError> {
        let target = uri(bucket, key);
        let response = match self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(response) => response,
            Err(err) => {
                return match classify(err, target, "GetObject") {
                    StorageError::NotFound { .. } => Ok(None),
                    other => Err(other),
                };
            }
        };
        let tag = response.e_tag().unwrap_or_default().to_string();
        let data = response
            .body
            .collect()
            .await
            .map_err(|e| StorageError::S3 {
                uri: target,
                operation: "GetObject body",
                message: e.to_string(),
                transient: true,
            })?;
        Ok(Some((data.into_bytes().to_vec(), tag)))
    }

    /// A server-side copy within the store, metadata (the SHA-256) included; objects
    /// from the multipart threshold up go part by part (CopyObject stops at 5 GiB).
    pub async fn copy(
        &self,
        from_bucket: &str,
        from_key: &str,
        bucket: &str,
        key: &str,
    ) -> Result<(), StorageError> {
        let single_max = self.settings.multipart_threshold.min(5 << 30);
        let source = format!("{from_bucket}/{}", encode_key(from_key));
        let size =
            self.size(from_bucket, from_key)
                .await?
                .ok_or_else(|| StorageError::NotFound {
                    uri: uri(from_bucket, from_key),
                })?;
        if size < single_max {
            self.client
                .copy_object()
                .bucket(bucket)
                .key(key)
                .copy_source(source)
                .send()
                .await
                .map_err(|e| classify(e, uri(bucket, key), "CopyObject"))?;
            return Ok(());
        }
        self.copy_parts(&source, from_bucket, from_key, bucket, key, size)
            .await
    }

    async fn copy_parts(
        &self,
        source: &str,
        from_bucket: &str,
        from_key: &str,
        bucket: &str,
        key: &str,
        size: u64,
    ) -> Result<(), StorageError> {
        let part_size = self.settings.part_size.max(5 << 20);
        let target = uri(bucket, key);
        let head = self
            .client
            .head_object()
            .bucket(from_bucket)
            .key(from_key)
            .send()
            .await
            .map_err(|e| classify(e, uri(from_bucket, from_key), "HeadObject"))?;
        let (upload_id, mut pending) = self
            .start_upload(bucket, key, head.metadata().cloned(), &target)
            .await?;
        let outcome = async {
            let mut parts = Vec::new();
            let mut start = 0u64;
            let mut number = 1i32;
            while start < size {
                let end = (start + part_size).min(size) - 1;
                let part = self
                    .client
                    .upload_part_copy()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .copy_source(source)
                    .copy_source_range(format!("bytes={start}-{end}"))
                    .send()
                    .await
                    .map_err(|e| classify(e, target.clone(), "UploadPartCopy"))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(
                            part.copy_part_result()
                                .and_then(|r| r.e_tag())
                                .map(str::to_string),
                        )
                        .build(),
                );
                start = end + 1;
                number += 1;
            }
            self.complete_upload(bucket, key, &upload_id, parts, &target)
                .await
        }
        .await;
        pending.done = true;
        if outcome.is_err() {
            pending.abort().await;
        }
        outcome
    }

    pub async fn get_bytes(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.get_tagged(bucket, key).await?.map(|(data, _)| data))
    }

    pub async fn size(&self, bucket: &str, key: &str) -> Result<Option<u64>, StorageError> {
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(head.content_length().and_then(|n| u64::try_from(n).ok())),
            Err(err) => match classify(err, uri(bucket, key), "HeadObject") {
                StorageError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| classify(e, uri(bucket, prefix), "ListObjectsV2"))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    found.push(ObjectInfo {
                        location: Location::S3 {
                            bucket: bucket.to_string(),
                            key: key.to_string(),
                        },
                        bytes: object
                            .size()
                            .and_then(|n| u64::try_from(n).ok())
                            .unwrap_or(0),
                    });
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => return Ok(found),
            }
        }
    }

    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), StorageError> {
        match self
            .client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) => match classify(err, uri(bucket, key), "DeleteObject") {
                StorageError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }
}

/// A multipart upload not completed yet: aborted when dropped unless `done`.
struct PendingUpload {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    done: bool,
}

impl PendingUpload {
    async fn abort(&self) {
        if let Err(e) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await
        {
            tracing::warn!(error = %e, bucket = %self.bucket, key = %self.key, "could not abort a multipart upload");
        }
    }
}

impl Drop for PendingUpload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Cancelled mid-upload: abort in the background (nothing to await in a drop).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pending = PendingUpload {
                client: self.client.clone(),
                bucket: std::mem::take(&mut self.bucket),
                key: std::mem::take(&mut self.key),
                upload_id: std::mem::take(&mut self.upload_id),
                done: true,
            };
            runtime.spawn(async move { pending.abort().await });
        }
    }
}
