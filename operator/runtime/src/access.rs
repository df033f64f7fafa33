//! Who may call this runtime and what it may be made to read and write. In a pod the
//! operator gives it the workflow's token, bucket and output prefix, so that another
//! pod of the cluster can neither drive it nor point it at other objects or at the
//! pod's own files; the local backend lets it read and write local paths.

use std::path::{Path, PathBuf};

use vflow_storage::Location;

#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Local paths anywhere (the local backend). Otherwise only under `scratch`: the
    /// files a fused runtime before this one hands on, in the pod's shared scratch.
    pub local_paths: bool,
    pub scratch: PathBuf,
    /// Inputs and outputs only in this bucket.
    pub bucket: Option<String>,
    /// Outputs only under this key prefix of the bucket.
    pub output_prefix: Option<String>,
    /// Required as `Authorization: Bearer` on /invoke and /release.
    pub token: Option<String>,
}

impl Access {
    pub fn check_input(&self, location: &Location) -> Result<(), String> {
        match location {
            Location::Local(path) => self.check_local(path, "input"),
            Location::S3 { bucket, .. } => self.check_bucket(bucket, location),
        }
    }

    pub fn check_output_prefix(&self, location: &Location) -> Result<(), String> {
        match location {
            Location::Local(path) => self.check_local(path, "outputPrefix"),
            Location::S3 { bucket, key } => {
                self.check_bucket(bucket, location)?;
                match &self.output_prefix {
                    Some(prefix) if !key.starts_with(prefix.as_str()) => Err(format!(
                        "outputPrefix {location}: this instance writes only under s3://{bucket}/{prefix}"
                    )),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Whether a request with this Authorization header may call.
    pub fn authorized(&self, header: Option<&str>) -> bool {
        self.token
            .as_deref()
            .is_none_or(|token| vflow_contract::auth::authorized(header, token))
    }

    fn check_local(&self, path: &Path, what: &str) -> Result<(), String> {
        // Location::parse refuses `..`, so a prefix of components is containment.
        if self.local_paths || path.starts_with(&self.scratch) {
            return Ok(());
        }
        Err(format!(
            "{what} {}: a local path; this instance reads and writes objects only (it was not started for the local backend)",
            path.display()
        ))
    }

    fn check_bucket(&self, bucket: &str, location: &Location) -> Result<(), String> {
        match &self.bucket {
            Some(own) if own != bucket => Err(format!(
                "{location}: this instance reads and writes only bucket {own}"
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Access {
        Access {
            local_paths: false,
            scratch: "/scratch".into(),
            bucket: Some("videos".into()),
            output_prefix: Some("outputs/wf/".into()),
            token: Some("t".into()),
        }
    }

    fn loc(uri: &str) -> Location {
        Location::parse(uri).expect("uri")
    }

    #[test]
    fn a_pods_runtime_touches_its_workflows_objects_only() {
        let a = pod();
        assert!(a.check_input(&loc("s3://videos/in/a.mp4")).is_ok());
        assert!(
            a.check_input(&loc("/scratch/7/out/seg.mp4")).is_ok(),
            "a hand-off"
        );
        for bad in ["/etc/passwd", "/scratchy/x", "s3://other/in/a.mp4"] {
            let e = a.check_input(&loc(bad)).expect_err(bad);
            assert!(e.contains(bad.trim_start_matches("s3://other")), "{e}");
        }
        assert!(
            a.check_output_prefix(&loc("s3://videos/outputs/wf/r1/scale/"))
                .is_ok()
        );
        assert!(
            a.check_output_prefix(&loc("s3://videos/outputs/other/r1/"))
                .is_err()
        );
        assert!(
            a.check_output_prefix(&loc("s3://other/outputs/wf/"))
                .is_err()
        );
        assert!(a.check_output_prefix(&loc("/tmp/out/")).is_err());
        assert!(a.authorized(Some("Bearer t")));
        assert!(!a.authorized(None));
        let local = Access {
            local_paths: true,
            ..Access::default()
        };
        assert!(local.check_input(&loc("/home/me/clip.mp4")).is_ok());
        assert!(local.check_output_prefix(&loc("/home/me/out/")).is_ok());
        assert!(local.authorized(None), "no token: no check");
    }
}
