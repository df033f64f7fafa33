//! A real S3-compatible server (s3s-fs) on loopback, for tests and benchmarks.
//!
//! `make s3-server` installs it (`cargo install s3s-fs --version 0.14.1`); the binary
//! is found through `VFLOW_S3S_FS`, then `~/.cache/vflow-s3s/bin/s3s-fs`, then PATH.
//! A missing binary is an error that says how to install it, never a skipped test.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::S3Settings;

pub const ACCESS_KEY: &str = "vflow-test";
pub const SECRET_KEY: &str = "vflow-test-secret";

pub struct TestS3 {
    child: Child,
    pub root: PathBuf,
    pub endpoint: String,
    pub port: u16,
}

pub fn s3s_fs_binary() -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("VFLOW_S3S_FS") {
        return Ok(PathBuf::from(path));
    }
    if let Ok(home) = std::env::var("HOME") {
        let cached = Path::new(&home).join(".cache/vflow-s3s/bin/s3s-fs");
        if cached.is_file() {
            return Ok(cached);
        }
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("s3s-fs"))
            .find(|candidate| candidate.is_file())
    });
    on_path.ok_or_else(|| {
        "s3s-fs not found: run `make s3-server` (cargo install s3s-fs --version 0.14.1 \
         --features binary --root ~/.cache/vflow-s3s) or set VFLOW_S3S_FS"
            .to_string()
    })
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

impl TestS3 {
    /// Starts s3s-fs over `root` with the given buckets (directories) and waits until
    /// it accepts connections.
    pub fn start(root: &Path, buckets: &[&str]) -> Result<Self, String> {
        let binary = s3s_fs_binary()?;
        for bucket in buckets {
            std::fs::create_dir_all(root.join(bucket)).map_err(|e| e.to_string())?;
        }
        let mut last_error = String::new();
        // A port found free can be taken before the server binds it: try a few.
        for _ in 0..5 {
            let port = free_port()?;
            let mut child = Command::new(&binary)
                .arg("--host")
                .arg("127.0.0.1")
                .arg("--port")
                .arg(port.to_string())
                .arg("--access-key")
                .arg(ACCESS_KEY)
                .arg("--secret-key")
                .arg(SECRET_KEY)
                .arg(root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("{}: {e}", binary.display()))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!("s3s-fs exited with {status}");
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Self {
                        child,
                        root: root.to_path_buf(),
                        endpoint: format!("http://127.0.0.1:{port}"),
                        port,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            if last_error.is_empty() {
                last_error = "s3s-fs did not accept connections within 10 s".into();
            }
        }
        Err(last_error)
    }

    pub fn settings(&self) -> S3Settings {
        S3Settings::new(
            Some(self.endpoint.clone()),
            ACCESS_KEY.to_string(),
            SECRET_KEY.to_string(),
        )
    }

    /// The variables `S3Settings::from_env` reads, for child processes.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("VFLOW_S3_ENDPOINT".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("VFLOW_S3_REGION".into(), "us-east-1".into()),
        ]
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
