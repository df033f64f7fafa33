//! Outputs of one attempt at an invocation, kept apart until one attempt is chosen.
//!
//! Two attempts at the same work can overlap (a caller that gave up and sent it again,
//! to the same instance or another). Each writes its outputs under a directory of its
//! own beneath the output prefix; the attempt that writes the completion record first
//! (a conditional write) is chosen, and only its objects are copied to the outputs'
//! real names. A losing or failing attempt removes only its own directory, so it can
//! never remove or mix into what the chosen one committed. A chosen attempt that died
//! between the record and the copies is finished by whoever next reads the record
//! ([`promote`] is idempotent: the copies are taken from the chosen attempt's objects,
//! which go only after every copy is done).

use crate::{Location, StorageError, Store};

/// The directory of attempt `attempt` under an output prefix.
pub fn attempt_dir(prefix: &Location, attempt: &str) -> Location {
    prefix.join(&format!("_vflow-attempt-{attempt}/"))
}

/// Where attempt `attempt` keeps the output that will be `output` (under `prefix`);
/// `None` when `output` is not under `prefix`.
pub fn staged(prefix: &Location, attempt: &str, output: &Location) -> Option<Location> {
    let name = output.relative_to(prefix)?;
    Some(attempt_dir(prefix, attempt).join(&name))
}

/// Puts the chosen attempt's objects at the outputs' names, then removes them. Where an
/// attempt's object is gone, that output was already copied (they go only after every
/// copy), so running this again, or after an interrupted run of it, is safe.
pub async fn promote(
    store: &Store,
    prefix: &Location,
    attempt: &str,
    outputs: &[Location],
) -> Result<(), StorageError> {
    // A record from before attempts were kept apart names none: its outputs are there.
    if attempt.is_empty() {
        return Ok(());
    }
    let mut moved = Vec::new();
    for output in outputs {
        let Some(from) = staged(prefix, attempt, output) else {
            continue;
        };
        // One request per output: a staged object already gone was copied before
        // (in a local store it is moved, so it is gone exactly when it is in place).
        match store.relocate(&from, output).await {
            Ok(()) | Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        moved.push(from);
    }
    discard(store, prefix, attempt, &moved).await;
    Ok(())
}

/// Best effort: removes an attempt's own objects (never anything at the outputs'
/// names), and in a local directory the attempt's directory with them.
pub async fn discard(store: &Store, prefix: &Location, attempt: &str, staged: &[Location]) {
    for location in staged {
        if let Err(e) = store.delete(location).await {
            tracing::warn!(error = %e, uri = %location, "could not remove an attempt's object");
        }
    }
    if let Location::Local(dir) = attempt_dir(prefix, attempt)
        && let Err(e) = tokio::fs::remove_dir_all(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, dir = %dir.display(), "could not remove an attempt's directory");
    }
}

/// A new attempt's name: random enough that two attempts never share one.
pub fn new_attempt_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_objects_sit_in_the_attempts_directory_under_the_prefix() {
        let prefix = Location::parse("s3://videos/out/r1/scale/3/").expect("ok");
        let output = prefix.join("renditions/720p.mp4");
        let at = staged(&prefix, "ab12", &output).expect("ok");
        assert_eq!(
            at.to_string(),
            "s3://videos/out/r1/scale/3/_vflow-attempt-ab12/renditions/720p.mp4"
        );
        let elsewhere = Location::parse("s3://videos/out/r1/other/x.mp4").expect("ok");
        assert_eq!(staged(&prefix, "ab12", &elsewhere), None);
        let local = Location::parse("/tmp/out/").expect("ok");
        assert_eq!(
            staged(&local, "ab12", &local.join("a.bin")).expect("ok"),
            Location::Local("/tmp/out/_vflow-attempt-ab12/a.bin".into())
        );
    }

    #[test]
    fn attempt_ids_differ() {
        let ids: std::collections::BTreeSet<String> = (0..100).map(|_| new_attempt_id()).collect();
        assert_eq!(ids.len(), 100);
    }

    #[tokio::test]
    async fn promote_copies_the_chosen_attempts_objects_and_can_run_again() {
        let dir = tempfile::tempdir().expect("ok");
        let store = Store::local_only();
        let prefix = Location::Local(dir.path().join("out/"));
        let outputs = [prefix.join("a.bin"), prefix.join("sub/b.bin")];
        for (output, body) in outputs.iter().zip(["A", "B"]) {
            let from = staged(&prefix, "win", output).expect("ok");
            store
                .put_bytes(&from, body.as_bytes().to_vec())
                .await
                .expect("ok");
        }
        // What a losing attempt wrote is not copied.
        let lost = staged(&prefix, "lost", &outputs[0]).expect("ok");
        store.put_bytes(&lost, b"X".to_vec()).await.expect("ok");
        promote(&store, &prefix, "win", &outputs).await.expect("ok");
        promote(&store, &prefix, "win", &outputs).await.expect("ok");
        assert_eq!(
            store
                .get_bytes(&outputs[0])
                .await
                .expect("read")
                .expect("there"),
            b"A"
        );
        assert_eq!(
            store
                .get_bytes(&outputs[1])
                .await
                .expect("read")
                .expect("there"),
            b"B"
        );
        let win_dir = attempt_dir(&prefix, "win");
        assert!(
            store.list(&win_dir).await.expect("ok").is_empty(),
            "staged objects removed"
        );
        assert!(
            !dir.path().join("out/_vflow-attempt-win").exists(),
            "and the attempt's directory"
        );
        assert_eq!(
            store.get_bytes(&lost).await.expect("read").expect("there"),
            b"X"
        );
    }

    #[tokio::test]
    async fn only_the_first_conditional_write_wins() {
        let dir = tempfile::tempdir().expect("ok");
        let store = Store::local_only();
        let at = Location::Local(dir.path().join("rec.json"));
        assert!(
            store
                .put_bytes_if_absent(&at, b"1".to_vec())
                .await
                .expect("ok")
        );
        assert!(
            !store
                .put_bytes_if_absent(&at, b"2".to_vec())
                .await
                .expect("ok")
        );
        assert_eq!(
            store.get_bytes(&at).await.expect("read").expect("there"),
            b"1"
        );
    }
}
