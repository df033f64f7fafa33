use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::StorageError;

/// Hex SHA-256 of a file, read in 1 MiB chunks on a blocking thread: hashing is CPU
/// work (about 0.5 s for 700 MB here), so several files hash on several cores at once
/// instead of taking turns on the async thread that awaits them.
pub async fn sha256_file(path: &Path) -> Result<(u64, String), StorageError> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&owned).map_err(|e| StorageError::io(&owned, &e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| StorageError::io(&owned, &e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        Ok((total, hex::encode(hasher.finalize())))
    })
    .await
    .map_err(|e| StorageError::Io {
        path: path.to_path_buf(),
        message: format!("hashing stopped: {e}"),
    })?
}
