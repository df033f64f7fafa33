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
    copy_unhashed(from, to).await?;
    let (bytes, sha256) = sha256_file(to).await?;
    Ok(Transfer {
        bytes,
        sha256: Some(sha256),
    })
}

/// [`copy_file`] without the digest: the bytes copied.
pub async fn copy_unhashed(from: &Path, to: &Path) -> Result<u64, StorageError> {
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
    let bytes = match tokio::fs::copy(from, &partial).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(StorageError::io(to, &e));
        }
    };
    tokio::fs::rename(&partial, to)
        .await
        .map_err(|e| StorageError::io(to, &e))?;
    Ok(bytes)
}

/// Moves a file the caller gives up into place: a rename, atomic as a copy's last step,
/// without the copy (a function's output into the local store, an attempt's object to
/// its name). Across file systems it copies, then removes `from`. `NotFound` when
/// `from` is not there.
pub async fn move_file(from: &Path, to: &Path) -> Result<(), StorageError> {
    ensure_parent(to).await?;
    match tokio::fs::rename(from, to).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StorageError::NotFound {
            uri: Location::Local(from.to_path_buf()).to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            copy_file(from, to).await?;
            tokio::fs::remove_file(from)
                .await
                .map_err(|e| StorageError::io(from, &e))
        }
        Err(e) => Err(StorageError::io(to, &e)),
    }
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

#[cfg(test)]
mod tests {
    use crate::{Location, StorageError, Store};

    // An output given up to a local store is moved there, not copied: the source is gone,
    // the object has its bytes, and no digest was made (nothing was read). An object relocated within the store too,
    // and relocating one that is gone says NotFound (what promote reads as done before).
    #[tokio::test]
    async fn owned_uploads_and_relocations_in_a_local_store_move_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::local_only();
        let src = dir.path().join("out/output.mp4");
        std::fs::create_dir_all(src.parent().expect("parent")).expect("mkdir");
        std::fs::write(&src, b"frames").expect("write");
        let staged = Location::Local(dir.path().join("store/_vflow-attempt-a/output.mp4"));
        let t = store.upload_owned(&src, &staged).await.expect("upload");
        assert!(!src.exists());
        assert_eq!(t.bytes, 6);
        assert_eq!(t.sha256, None);
        assert_eq!(
            std::fs::read(dir.path().join("store/_vflow-attempt-a/output.mp4")).expect("read"),
            b"frames"
        );
        let final_ = Location::Local(dir.path().join("store/output.mp4"));
        store.relocate(&staged, &final_).await.expect("relocate");
        assert_eq!(
            std::fs::read(dir.path().join("store/output.mp4")).expect("read"),
            b"frames"
        );
        assert!(matches!(
            store.relocate(&staged, &final_).await,
            Err(StorageError::NotFound { .. })
        ));
    }

    // A function's input from a local store: a copy (the store's file stays as it is),
    // its size, no partial name left; a missing one says NotFound naming it; a
    // directory is refused. A download still gives the digest.
    #[tokio::test]
    async fn a_local_input_is_copied_whole_and_a_missing_one_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::local_only();
        let object = dir.path().join("store/segment-00000.mp4");
        std::fs::create_dir_all(object.parent().expect("parent")).expect("mkdir");
        std::fs::write(&object, b"0123456789").expect("write");
        let staged = dir.path().join("scratch/in/0-segment-00000.mp4");
        let bytes = store
            .fetch_input(&Location::Local(object.clone()), &staged)
            .await
            .expect("fetch");
        assert_eq!(bytes, 10);
        assert_eq!(std::fs::read(&staged).expect("read"), b"0123456789");
        assert_eq!(std::fs::read(&object).expect("read"), b"0123456789");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("scratch/in"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("0-segment-00000.mp4")]);
        let missing = dir.path().join("store/absent.mp4");
        match store
            .fetch_input(&Location::Local(missing.clone()), &staged)
            .await
        {
            Err(StorageError::NotFound { uri }) => assert!(uri.contains("absent.mp4"), "{uri}"),
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert!(
            store
                .fetch_input(&Location::Local(dir.path().join("store")), &staged)
                .await
                .is_err()
        );
        let t = store
            .download(&Location::Local(object), &dir.path().join("copy"))
            .await
            .expect("download");
        assert_eq!(
            t.sha256.as_deref(),
            Some("84d89877f0d4041efb6bf91a16f0248f2fd573e6af05c19f96bedb9f882f7882")
        );
    }
}
