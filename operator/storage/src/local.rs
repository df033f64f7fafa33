//! Local directories: the local mode's store and a test double users can look into.

use std::path::{Path, PathBuf};

use crate::{Location, ObjectInfo, StorageError, Transfer, sha256_file};

async fn ensure_parent(path: &Path) -> Result<(), StorageError> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| StorageError::io(parent, &e))?;
    }
    Ok(())
}

fn temp_name(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".vflow-partial-{}", std::process::id()));
    path.with_file_name(name)
}

/// Copies through a temporary name and renames, so a reader never sees half a file.
pub async fn copy_file(from: &Path, to: &Path) -> Result<Transfer, StorageError> {
    match tokio::fs::metadata(from).await {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            return Err(StorageError::Io {
                path: from.to_path_buf(),
                message: "not a regular file".into(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StorageError::NotFound {
                uri: Location::Local(from.to_path_buf()).to_string(),
            });
        }
        Err(e) => return Err(StorageError::io(from, &e)),
    }
    ensure_parent(to).await?;
    let partial = temp_name(to);
    if let Err(e) = tokio::fs::copy(from, &partial).await {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(StorageError::io(to, &e));
    }
    tokio::fs::rename(&partial, to)
        .await
        .map_err(|e| StorageError::io(to, &e))?;
    let (bytes, sha256) = sha256_file(to).await?;
    Ok(Transfer { bytes, sha256 })
}

pub async fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StorageError> {
    ensure_parent(path).await?;
    let partial = temp_name(path);
    if let Err(e) = tokio::fs::write(&partial, data).await {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(StorageError::io(path, &e));
    }
    tokio::fs::rename(&partial, path)
        .await
        .map_err(|e| StorageError::io(path, &e))
}

pub async fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match tokio::fs::read(path).await {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io(path, &e)),
    }
}

pub async fn size(path: &Path) -> Result<Option<u64>, StorageError> {
    match tokio::fs::metadata(path).await {
        Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io(path, &e)),
    }
}

/// Files under a directory prefix, recursively; a missing directory is empty.
pub async fn list(prefix: &Path) -> Result<Vec<ObjectInfo>, StorageError> {
    let mut found = Vec::new();
    let mut pending = vec![prefix.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StorageError::io(&dir, &e)),
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| StorageError::io(&dir, &e))?
        {
            let meta = entry
                .metadata()
                .await
                .map_err(|e| StorageError::io(entry.path(), &e))?;
            let name = entry.file_name();
            if name.to_string_lossy().contains(".vflow-partial-") {
                continue;
            }
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                found.push(ObjectInfo {
                    location: Location::Local(entry.path()),
                    bytes: meta.len(),
                });
            }
        }
    }
    Ok(found)
}

pub async fn delete(path: &Path) -> Result<(), StorageError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io(path, &e)),
    }
}
