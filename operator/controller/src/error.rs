//! The operator's one error type. Each error has a small static category, used as the
//! `category` label of `vflow_operator_reconcile_errors_total` (never the error's text,
//! which would make label values unbounded).

use std::time::Duration;

/// What can go wrong in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server answered with an error status, or could not be reached.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object the reconcile needs lacks a field the API server always sets.
    #[error("{kind} has no {field}")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },
    /// Serializing a built object failed (a bug, not a condition of the cluster).
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The leader election Lease could not be held.
    #[error("lost the leader election Lease {0}")]
    LostLease(String),
    /// A watch stream or store stopped.
    #[error("watch: {0}")]
    Watch(String),
    /// The configuration given on the command line is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A bounded label value for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) => match status.code {
                400 | 422 => "invalid",
                401 | 403 => "forbidden",
                404 => "not_found",
                409 => "conflict",
                429 => "throttled",
                500..=599 => "server",
                _ => "api",
            },
            Error::Kube(_) => "transport",
            Error::MissingField { .. } => "missing_field",
            Error::Serialize { .. } => "serialize",
            Error::LostLease(_) => "lease",
            Error::Watch(_) => "watch",
            Error::Config(_) => "config",
        }
    }

    /// The HTTP status of an API error, if this is one.
    pub fn api_code(&self) -> Option<u16> {
        match self {
            Error::Kube(kube::Error::Api(status)) => Some(status.code),
            _ => None,
        }
    }

    /// Errors no retry will fix until something changes. They are still retried, but
    /// slowly: a Role may be fixed by a person, a serializer bug by an upgrade.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.category(),
            "forbidden" | "invalid" | "serialize" | "missing_field"
        )
    }
}

/// Exponential backoff for a reconcile that failed `failures` times in a row:
/// 1 s, 2 s, 4 s, ... up to 5 minutes; permanent errors start at 1 minute.
pub fn backoff(failures: u32, permanent: bool) -> Duration {
    let base = if permanent { 60 } else { 1 };
    let secs = base * 2u64.saturating_pow(failures.saturating_sub(1).min(16));
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Error {
        Error::Kube(kube::Error::Api(Box::new(
            kube::core::Status::failure("x", "Reason").with_code(code),
        )))
    }

    #[test]
    fn categories_are_bounded_and_follow_the_status_code() {
        assert_eq!(api(409).category(), "conflict");
        assert_eq!(api(403).category(), "forbidden");
        assert_eq!(api(404).category(), "not_found");
        assert_eq!(api(500).category(), "server");
        assert_eq!(api(503).category(), "server");
        assert!(api(403).is_permanent());
        assert!(!api(500).is_permanent());
        assert!(!api(409).is_permanent());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1, false), Duration::from_secs(1));
        assert_eq!(backoff(2, false), Duration::from_secs(2));
        assert_eq!(backoff(4, false), Duration::from_secs(8));
        assert_eq!(backoff(30, false), Duration::from_secs(300));
        assert_eq!(backoff(1, true), Duration::from_secs(60));
        assert_eq!(backoff(5, true), Duration::from_secs(300));
    }
}
