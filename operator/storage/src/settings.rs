use std::path::Path;

/// How to reach an S3-compatible server.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// e.g. `http://minio.vflow-system.svc:9000`; `None` means AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    /// Bucket in the path rather than the host name (MinIO and most servers).
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Objects at or above this size are uploaded in parts.
    pub multipart_threshold: u64,
    pub part_size: u64,
    /// Parts in flight at once for one upload.
    pub part_concurrency: usize,
    pub max_attempts: u32,
}

impl std::fmt::Debug for S3Settings {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    pub fn new(endpoint: Option<String>, access_key_id: String, secret_access_key: String) -> Self {
        Self {
            endpoint,
            region: "us-east-1".into(),
            path_style: true,
            access_key_id,
            secret_access_key,
            // Parts pay off for large objects on real servers; below this one PUT avoids
            // the server reassembling parts (a full extra copy on file-backed servers).
            multipart_threshold: 128 << 20,
            part_size: 16 << 20,
            part_concurrency: 4,
            max_attempts: 5,
        }
    }

    /// From the environment: `VFLOW_S3_ENDPOINT`, `VFLOW_S3_REGION`,
    /// `VFLOW_S3_PATH_STYLE`, and credentials from the files `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` in `VFLOW_S3_CREDENTIALS_DIR` (a mounted Secret) or else
    /// the variables of those names. `Ok(None)` when no credentials are given at all.
    pub fn from_env() -> Result<Option<Self>, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (key, secret) = match var("VFLOW_S3_CREDENTIALS_DIR") {
            Some(dir) => {
                let read = |name: &str| -> Result<String, String> {
                    let path = Path::new(&dir).join(name);
                    std::fs::read_to_string(&path)
                        .map(|s| s.trim().to_string())
                        .map_err(|e| format!("{}: {e}", path.display()))
                };
                (read("AWS_ACCESS_KEY_ID")?, read("AWS_SECRET_ACCESS_KEY")?)
            }
            None => match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
                (Some(key), Some(secret)) => (key, secret),
                (None, None) => return Ok(None),
                _ => {
                    return Err(
                        "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither".into(),
                    );
                }
            },
        };
        let mut settings = Self::new(var("VFLOW_S3_ENDPOINT"), key, secret);
        if let Some(region) = var("VFLOW_S3_REGION").or_else(|| var("AWS_REGION")) {
            settings.region = region;
        }
        let bytes = |name: &str| -> Result<Option<u64>, String> {
            var(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("{name}={v}: expected a number of bytes"))
                })
                .transpose()
        };
        if let Some(threshold) = bytes("VFLOW_S3_MULTIPART_THRESHOLD")? {
            settings.multipart_threshold = threshold;
        }
        if let Some(part) = bytes("VFLOW_S3_PART_SIZE")? {
            settings.part_size = part.max(5 << 20);
        }
        if let Some(path_style) = var("VFLOW_S3_PATH_STYLE") {
            settings.path_style = match path_style.as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                other => {
                    return Err(format!(
                        "VFLOW_S3_PATH_STYLE={other}: expected true or false"
                    ));
                }
            };
        }
        Ok(Some(settings))
    }
}
