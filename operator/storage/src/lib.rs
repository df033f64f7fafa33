//! One storage API for the runtime, the run engine and the local mode.
//!
//! Objects are named by URI: `s3://bucket/key` for an S3-compatible server, and
//! `file:///abs/path` (or a plain absolute path) for a local directory. Downloads are
//! streamed to disk and verified (size, and the SHA-256 that vflow records at upload);
//! large uploads go in parts; transient S3 errors are retried with backoff.

pub mod attempts;
mod checksum;
mod error;
mod local;
mod location;
mod s3;
mod settings;
pub mod test_server;

pub use checksum::sha256_file;
pub use error::StorageError;
pub use location::Location;
pub use s3::S3Store;
pub use settings::S3Settings;

/// Chooses ring as the process's TLS provider. kube is built with ring and the AWS SDK
/// (this crate) with aws-lc-rs; with both, rustls refuses to guess. Every binary that
/// has both calls this before its first client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

use std::path::Path;

/// What a transfer moved, for the invocation's measurements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub bytes: u64,
    /// Hex SHA-256 of the bytes moved where they were read and written (an S3 transfer,
    /// a copy); None where a file was only renamed within a local store: no byte went
    /// anywhere, so a digest would check nothing (it cost a pass over the file, 0.4 s
    /// for a 540 MB output, while the rest of the run waited).
    pub sha256: Option<String>,
}

/// An object found by [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub location: Location,
    pub bytes: u64,
}

/// What a conditional write expects to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// Nothing.
    Absent,
    /// The version with this tag (an S3 ETag; a local file's SHA-256).
    Tag(String),
}

/// Local paths always work; `s3://` needs S3 settings.
#[derive(Clone, Default)]
pub struct Store {
    s3: Option<S3Store>,
}

impl Store {
    /// A store for local paths only.
    pub fn local_only() -> Self {
        Self { s3: None }
    }

    pub fn with_s3(settings: &S3Settings) -> Self {
        Self {
            s3: Some(S3Store::new(settings)),
        }
    }

    fn s3(&self, location: &Location) -> Result<&S3Store, StorageError> {
        self.s3.as_ref().ok_or_else(|| StorageError::NoS3 {
            uri: location.to_string(),
        })
    }

    /// Streams the object to `dest` (created or truncated) and verifies it.
    pub async fn download(&self, from: &Location, dest: &Path) -> Result<Transfer, StorageError> {
        match from {
            Location::Local(path) => local::copy_file(path, dest).await,
            Location::S3 { bucket, key } => self.s3(from)?.download(bucket, key, dest).await,
        }
    }

    /// A function's input into `dest`, its size in bytes: an S3 object verified as
    /// [`Store::download`] does; a local file copied without hashing it (a digest of the
    /// copy just made would check nothing, and it cost a second pass over the file:
    /// about 0.5 s for a 700 MB video).
    pub async fn fetch_input(&self, from: &Location, dest: &Path) -> Result<u64, StorageError> {
        match from {
            Location::Local(path) => local::copy_unhashed(path, dest).await,
            Location::S3 { .. } => Ok(self.download(from, dest).await?.bytes),
        }
    }

    /// Uploads a file; the object carries its SHA-256 so downloads can verify it.
    pub async fn upload(&self, src: &Path, to: &Location) -> Result<Transfer, StorageError> {
        match to {
            Location::Local(path) => local::copy_file(src, path).await,
            Location::S3 { bucket, key } => self.s3(to)?.upload(src, bucket, key).await,
        }
    }

    /// Uploads a file the caller gives up (it is gone afterwards): in a local store it is
    /// moved into place rather than copied, and not hashed (see [`Transfer::sha256`]).
    pub async fn upload_owned(&self, src: &Path, to: &Location) -> Result<Transfer, StorageError> {
        match to {
            Location::Local(path) => {
                local::move_file(src, path).await?;
                let bytes = local::size(path)
                    .await?
                    .ok_or_else(|| StorageError::NotFound {
                        uri: to.to_string(),
                    })?;
                Ok(Transfer {
                    bytes,
                    sha256: None,
                })
            }
            Location::S3 { .. } => {
                let transfer = self.upload(src, to).await?;
                let _ = tokio::fs::remove_file(src).await;
                Ok(transfer)
            }
        }
    }

    /// Writes a small object from memory (manifests, progress records).
    pub async fn put_bytes(&self, to: &Location, data: Vec<u8>) -> Result<(), StorageError> {
        match to {
            Location::Local(path) => local::write_atomic(path, &data).await,
            Location::S3 { bucket, key } => self.s3(to)?.put_bytes(bucket, key, data).await,
        }
    }

    /// Writes a small object only if none is there (S3's `If-None-Match: *`, a hard
    /// link locally), so of two writers exactly one wins; `Ok(false)` when one was.
    pub async fn put_bytes_if_absent(
        &self,
        to: &Location,
        data: Vec<u8>,
    ) -> Result<bool, StorageError> {
        Ok(self
            .put_bytes_if(to, data, &Expected::Absent)
            .await?
            .is_some())
    }

    /// Writes a small object only if what is there is what the writer expects (nothing,
    /// or the version it read or wrote last): its new tag, or `None` when someone else
    /// wrote in between.
    pub async fn put_bytes_if(
        &self,
        to: &Location,
        data: Vec<u8>,
        expected: &Expected,
    ) -> Result<Option<String>, StorageError> {
        match to {
            Location::Local(path) => local::write_if(path, &data, expected).await,
            Location::S3 { bucket, key } => {
                self.s3(to)?.put_bytes_if(bucket, key, data, expected).await
            }
        }
    }

    /// Reads a small object and its tag (for `put_bytes_if`); `Ok(None)` when it does
    /// not exist.
    pub async fn get_tagged(
        &self,
        from: &Location,
    ) -> Result<Option<(Vec<u8>, String)>, StorageError> {
        match from {
            Location::Local(path) => Ok(local::read_if_exists(path).await?.map(|data| {
                let tag = local::tag_of(&data);
                (data, tag)
            })),
            Location::S3 { bucket, key } => self.s3(from)?.get_tagged(bucket, key).await,
        }
    }

    /// Copies an object to another place in the same store (server-side on S3), its
    /// recorded SHA-256 with it.
    pub async fn copy(&self, from: &Location, to: &Location) -> Result<(), StorageError> {
        match (from, to) {
            (Location::Local(src), Location::Local(dest)) => {
                local::copy_file(src, dest).await.map(|_| ())
            }
            (
                Location::S3 {
                    bucket: from_bucket,
                    key: from_key,
                },
                Location::S3 { bucket, key },
            ) => self.s3(to)?.copy(from_bucket, from_key, bucket, key).await,
            _ => Err(StorageError::BadUri {
                uri: format!("{from} -> {to}: a copy stays within one store"),
            }),
        }
    }

    /// Puts an object at another name in the same store, where it no longer needs to be
    /// at its old one: a rename in a local store, a server-side copy on S3 (the old
    /// object stays there for the caller to delete).
    pub async fn relocate(&self, from: &Location, to: &Location) -> Result<(), StorageError> {
        match (from, to) {
            (Location::Local(src), Location::Local(dest)) => local::move_file(src, dest).await,
            _ => self.copy(from, to).await,
        }
    }

    /// Reads a small object into memory; `Ok(None)` when it does not exist.
    pub async fn get_bytes(&self, from: &Location) -> Result<Option<Vec<u8>>, StorageError> {
        match from {
            Location::Local(path) => local::read_if_exists(path).await,
            Location::S3 { bucket, key } => self.s3(from)?.get_bytes(bucket, key).await,
        }
    }

    /// Size of the object, or `None` when it does not exist.
    pub async fn size(&self, of: &Location) -> Result<Option<u64>, StorageError> {
        match of {
            Location::Local(path) => local::size(path).await,
            Location::S3 { bucket, key } => self.s3(of)?.size(bucket, key).await,
        }
    }

    /// Every object under a prefix, sorted by name.
    pub async fn list(&self, prefix: &Location) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut found = match prefix {
            Location::Local(path) => local::list(path).await?,
            Location::S3 { bucket, key } => self.s3(prefix)?.list(bucket, key).await?,
        };
        found.sort_by_cached_key(|o| o.location.to_string());
        Ok(found)
    }

    /// Deletes one object; deleting what is not there is not an error.
    pub async fn delete(&self, what: &Location) -> Result<(), StorageError> {
        match what {
            Location::Local(path) => local::delete(path).await,
            Location::S3 { bucket, key } => self.s3(what)?.delete(bucket, key).await,
        }
    }
}
