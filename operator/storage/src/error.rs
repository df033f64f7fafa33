use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(
        "{uri}: not a storage URI (expected s3://bucket/key, file:///path or an absolute path)"
    )]
    BadUri { uri: String },
    #[error("{uri}: S3 is not configured (no endpoint or credentials were given)")]
    NoS3 { uri: String },
    #[error("{uri}: no such object")]
    NotFound { uri: String },
    /// A write on the condition that nothing was there found something.
    #[error("{uri}: already exists")]
    Exists { uri: String },
    #[error("{uri}: {operation} failed: {message}")]
    S3 {
        uri: String,
        operation: &'static str,
        message: String,
        /// Worth trying again (throttling, 5xx, a dropped connection).
        transient: bool,
    },
    #[error("{uri}: downloaded {got} bytes, the object has {expected}")]
    SizeMismatch {
        uri: String,
        expected: u64,
        got: u64,
    },
    #[error("{uri}: SHA-256 {got} does not match the {expected} recorded at upload")]
    ChecksumMismatch {
        uri: String,
        expected: String,
        got: String,
    },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: the disk is full ({message})")]
    DiskFull { path: PathBuf, message: String },
}

impl StorageError {
    pub(crate) fn io(path: impl Into<PathBuf>, err: &std::io::Error) -> Self {
        let path = path.into();
        // ENOSPC and EDQUOT: name the cause, a user can act on it.
        if matches!(err.raw_os_error(), Some(28) | Some(122)) {
            StorageError::DiskFull {
                path,
                message: err.to_string(),
            }
        } else {
            StorageError::Io {
                path,
                message: err.to_string(),
            }
        }
    }

    /// Whether the caller may retry the whole operation.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StorageError::S3 {
                transient: true,
                ..
            }
        ) || matches!(self, StorageError::SizeMismatch { .. })
    }
}
