use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::StorageError;

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    S3 { bucket: String, key: String },
    Local(PathBuf),
}

impl Location {
    pub fn parse(uri: &str) -> Result<Self, StorageError> {
        let bad = || StorageError::BadUri {
            uri: uri.to_string(),
        };
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || !valid_bucket(bucket) || key.contains("//") {
                return Err(bad());
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
            });
        }
        let path = uri.strip_prefix("file://").unwrap_or(uri);
        if path.starts_with('/') && !path.split('/').any(|part| part == "..") {
            // Keep a trailing slash: it marks a prefix.
            return Ok(Location::Local(PathBuf::from(path)));
        }
        Err(bad())
    }

    /// The object `name` under this prefix: `s3://b/out/` + `a.mp4` = `s3://b/out/a.mp4`.
    pub fn join(&self, name: &str) -> Location {
        let name = name.trim_start_matches('/');
        match self {
            Location::S3 { bucket, key } => {
                let key = if key.is_empty() || key.ends_with('/') {
                    format!("{key}{name}")
                } else {
                    format!("{key}/{name}")
                };
                Location::S3 {
                    bucket: bucket.clone(),
                    key,
                }
            }
            Location::Local(path) => Location::Local(path.join(name)),
        }
    }

    /// This object's name under `prefix` (what `prefix.join` would take to make it),
    /// or `None` when it is not under it.
    pub fn relative_to(&self, prefix: &Location) -> Option<String> {
        match (self, prefix) {
            (
                Location::S3 { bucket, key },
                Location::S3 {
                    bucket: prefix_bucket,
                    key: prefix_key,
                },
            ) if bucket == prefix_bucket => {
                let dir = if prefix_key.is_empty() || prefix_key.ends_with('/') {
                    prefix_key.clone()
                } else {
                    format!("{prefix_key}/")
                };
                key.strip_prefix(&dir)
                    .filter(|rest| !rest.is_empty())
                    .map(str::to_string)
            }
            (Location::Local(path), Location::Local(dir)) => path
                .strip_prefix(dir)
                .ok()
                .and_then(|rest| rest.to_str())
                .filter(|rest| !rest.is_empty())
                .map(str::to_string),
            _ => None,
        }
    }

    /// The last part of the name, for naming the local copy.
    pub fn file_name(&self) -> &str {
        match self {
            Location::S3 { key, .. } => key.rsplit('/').next().unwrap_or(key),
            Location::Local(path) => path.file_name().and_then(|n| n.to_str()).unwrap_or(""),
        }
    }

    pub fn local_path(&self) -> Option<&Path> {
        match self {
            Location::Local(path) => Some(path),
            Location::S3 { .. } => None,
        }
    }
}

fn valid_bucket(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

impl FromStr for Location {
    type Err = StorageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Location::parse(s)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Location::Local(path) => write!(f, "file://{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_and_local() {
        assert_eq!(
            Location::parse("s3://videos/in/a.mp4").ok(),
            Some(Location::S3 {
                bucket: "videos".into(),
                key: "in/a.mp4".into()
            })
        );
        assert_eq!(
            Location::parse("file:///tmp/a.mp4").ok(),
            Some(Location::Local("/tmp/a.mp4".into()))
        );
        assert_eq!(
            Location::parse("/tmp/a.mp4").ok(),
            Some(Location::Local("/tmp/a.mp4".into()))
        );
    }

    #[test]
    fn refuses_what_is_not_a_location() {
        for bad in [
            "relative/a.mp4",
            "s3://",
            "s3://UPPER/key",
            "http://x/y",
            "/tmp/../etc/passwd",
            "s3://bucket/a//b",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn join_adds_one_separator() {
        let prefix = Location::parse("s3://videos/out").ok();
        let joined = prefix.map(|p| p.join("/x.mp4").to_string());
        assert_eq!(joined.as_deref(), Some("s3://videos/out/x.mp4"));
        let prefix = Location::parse("s3://videos/out/").ok();
        let joined = prefix.map(|p| p.join("x.mp4").to_string());
        assert_eq!(joined.as_deref(), Some("s3://videos/out/x.mp4"));
        let local = Location::parse("/data/out/").ok();
        assert_eq!(
            local.map(|l| l.join("x.mp4")),
            Some(Location::Local("/data/out/x.mp4".into()))
        );
    }
}
