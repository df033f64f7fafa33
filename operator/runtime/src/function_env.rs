//! The environment a function runs with: a clean one, not the runtime's.
//!
//! The runtime's own environment holds what a function must not see: S3 credentials
//! (`AWS_*`, the `VFLOW_S3_*` settings), the invocation token's location and every
//! other runtime setting. A function gets the basics a program expects, what GPU
//! sharing and numeric libraries read (`CUDA_*`, `NVIDIA_*`, `OMP_*` ...), the
//! `VFLOW_*` variables that are not the runtime's own (function settings such as
//! `VFLOW_FFMPEG_THREADS`), and what the runtime sets for the invocation.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use clap::CommandFactory;

const EXACT: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TERM",
    "LD_LIBRARY_PATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

const PREFIXES: &[&str] = &[
    "LC_",
    "CUDA_",
    "NVIDIA_",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "PYTHON",
    "TORCH_",
];

/// `VFLOW_*` names the runtime reads itself (its flags' variables, the S3 and logging
/// settings): never passed on.
fn runtime_own() -> &'static BTreeSet<String> {
    static OWN: OnceLock<BTreeSet<String>> = OnceLock::new();
    OWN.get_or_init(|| {
        let mut own: BTreeSet<String> = crate::cli::Cli::command()
            .get_subcommands()
            .flat_map(|sub| sub.get_arguments().cloned().collect::<Vec<_>>())
            .filter_map(|arg| arg.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect();
        own.extend(
            ["VFLOW_LOG", "VFLOW_EXIT_WITH_PARENT"]
                .iter()
                .map(|s| s.to_string()),
        );
        own
    })
}

/// Whether the variable `name` reaches the function.
pub fn passes(name: &str) -> bool {
    if name.starts_with("VFLOW_") {
        return !name.starts_with("VFLOW_S3_") && !runtime_own().contains(name);
    }
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The function's environment: the passing part of this process's, then `extra`.
pub fn for_function(extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| passes(k))
        .collect();
    env.extend(extra.iter().cloned());
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_runtime_settings_stay_with_the_runtime() {
        for hidden in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "VFLOW_S3_ENDPOINT",
            "VFLOW_S3_CREDENTIALS_DIR",
            "VFLOW_INVOKE_TOKEN_FILE",
            "VFLOW_COMMAND",
            "VFLOW_BUCKET",
            "VFLOW_SCRATCH_LIMIT",
            "VFLOW_LOG",
            "KUBERNETES_SERVICE_HOST",
            "SOME_PASSWORD",
        ] {
            assert!(!passes(hidden), "{hidden} reached the function");
        }
        for shown in [
            "PATH",
            "HOME",
            "LC_ALL",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
            "NVIDIA_VISIBLE_DEVICES",
            "OMP_NUM_THREADS",
            "PYTHONUNBUFFERED",
            "VFLOW_FFMPEG_THREADS",
            "VFLOW_DETECT_BACKEND",
        ] {
            assert!(passes(shown), "{shown} did not reach the function");
        }
    }
}
