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

/// A name of its own per write: two writers of one path in a process must not share it.
fn temp_name(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".vflow-partial-{}-{n}", std::process::id()));
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

/// Writes `data` at `path` only if nothing is there, atomically (a hard link fails on
/// an existing name); `Ok(false)` when something was.
pub async fn write_if_absent(path: &Path, data: &[u8]) -> Result<bool, StorageError> {
    ensure_parent(path).await?;
    let partial = temp_name(path);
    if let Err(e) = tokio::fs::write(&partial, data).await {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(StorageError::io(path, &e));
    }
    let linked = tokio::fs::hard_link(&partial, path).await;
    let _ = tokio::fs::remove_file(&partial).await;
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(StorageError::io(path, &e)),
    }
}

/// A local file's tag: the SHA-256 of its content.
pub fn tag_of(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Writes `data` if the file's tag is `expected`: the new tag, or `None`. Checked, then
/// written: atomic against other processes only for `Expected::Absent` (the local
/// mode has one engine per run).
pub async fn write_if(
    path: &Path,
    data: &[u8],
    expected: &crate::Expected,
) -> Result<Option<String>, StorageError> {
    match expected {
        crate::Expected::Absent => Ok(write_if_absent(path, data).await?.then(|| tag_of(data))),
        crate::Expected::Tag(tag) => match read_if_exists(path).await? {
            Some(current) if tag_of(&current) == *tag => {
                write_atomic(path, data).await?;
                Ok(Some(tag_of(data)))
            }
            _ => Ok(None),
        },
    }
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
