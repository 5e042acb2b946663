//! Offline compaction of the sled files (`waybill compact`).
//!
//! sled 0.34 reuses the space of removed records but never gives its file back to the
//! file system, so what retention prunes shrinks the data directory only by the payload
//! files it deletes. Compaction copies every tree into a fresh database beside the old
//! one, flushes and syncs it, and only then swaps the files: the old ones are moved
//! aside into `compact.old/`, the new ones moved in, the directory synced, and the old
//! ones deleted. It needs the store closed: sled's lock on its `db` file refuses a
//! second opener, so it cannot run on the directory of a running server.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::StoreError;

/// Keys copied per sled batch.
const BATCH_KEYS: usize = 4096;

/// Why compaction did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error("the data directory {0} is in use (stop the server first)")]
    InUse(String),
    #[error("{0} holds an earlier compaction that was interrupted: look at it, then remove it")]
    Leftover(String),
    #[error("no store in {0}")]
    NoStore(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The bytes of sled's files before and after.
#[derive(Debug, Clone, Copy)]
pub struct Compacted {
    pub before: u64,
    pub after: u64,
}

/// Whether `name` is one of sled's own entries in the data directory.
fn is_sled_entry(name: &str) -> bool {
    matches!(name, "conf" | "db" | "blobs") || name.starts_with("snap.")
}

fn sled_entries(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(is_sled_entry) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

/// The bytes of sled's own files in the data directory `dir`.
pub fn sled_bytes(dir: &Path) -> Result<u64, StoreError> {
    Ok(sled_entries(dir)?.iter().map(|p| size_of(p)).sum())
}

/// The bytes of the payload segment files in the data directory `dir`.
pub fn payload_bytes(dir: &Path) -> u64 {
    size_of(&dir.join("payloads"))
}

/// Rewrites the sled database in `dir` into a fresh one and swaps it in.
pub fn compact(dir: &Path) -> Result<Compacted, CompactError> {
    let shown = dir.display().to_string();
    if !dir.join("db").is_file() {
        return Err(CompactError::NoStore(shown));
    }
    let (fresh, aside) = (dir.join("compact.new"), dir.join("compact.old"));
    if aside.exists() {
        return Err(CompactError::Leftover(aside.display().to_string()));
    }
    let before = sled_bytes(dir)?;
    let old = match super::open_sled(&sled::Config::new().path(dir)) {
        Ok(db) => db,
        Err(e) if super::sled_locked(&e) => return Err(CompactError::InUse(shown)),
        Err(e) => return Err(StoreError::from(e).into()),
    };
    if fresh.exists() {
        // A copy an earlier run did not finish: the old files were never touched.
        std::fs::remove_dir_all(&fresh).map_err(StoreError::from)?;
    }
    let new = sled::Config::new()
        .path(&fresh)
        .open()
        .map_err(StoreError::from)?;
    for name in old.tree_names() {
        let from = old.open_tree(&name).map_err(StoreError::from)?;
        let to = new.open_tree(&name).map_err(StoreError::from)?;
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in from.iter() {
            let (k, v) = item.map_err(StoreError::from)?;
            batch.insert(k, v);
            n += 1;
            if n == BATCH_KEYS {
                to.apply_batch(std::mem::take(&mut batch))
                    .map_err(StoreError::from)?;
                n = 0;
            }
        }
        to.apply_batch(batch).map_err(StoreError::from)?;
    }
    new.flush().map_err(StoreError::from)?;
    drop(new);
    // sled's flush ends in `sync_file_range`; make the copy durable before it replaces
    // anything.
    File::open(fresh.join("db"))
        .and_then(|f| f.sync_all())
        .map_err(StoreError::from)?;
    File::open(&fresh)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::from)?;
    // The old database stays open (and locked) until its files are aside.
    std::fs::create_dir(&aside).map_err(StoreError::from)?;
    for path in sled_entries(dir)? {
        if let Some(name) = path.file_name() {
            std::fs::rename(&path, aside.join(name)).map_err(StoreError::from)?;
        }
    }
    for path in sled_entries(&fresh)? {
        if let Some(name) = path.file_name() {
            std::fs::rename(&path, dir.join(name)).map_err(StoreError::from)?;
        }
    }
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::from)?;
    drop(old);
    std::fs::remove_dir_all(&aside).map_err(StoreError::from)?;
    std::fs::remove_dir_all(&fresh).map_err(StoreError::from)?;
    Ok(Compacted {
        before,
        after: sled_bytes(dir)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;

    #[tokio::test]
    async fn a_compacted_store_reads_the_same_and_an_open_one_is_refused() {
        use super::super::writer::Table;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8).unwrap();
        for i in 0u32..3000 {
            store
                .writer
                .write(move |t| t.insert(Table::Meta, i.to_be_bytes(), vec![7u8; 200]))
                .await
                .unwrap();
        }
        store
            .writer
            .write(|t| {
                for i in 0u32..2990 {
                    t.remove(Table::Meta, i.to_be_bytes())?;
                }
                Ok(())
            })
            .await
            .unwrap();
        assert!(matches!(compact(dir.path()), Err(CompactError::InUse(_))));
        store.close();
        drop(store);

        let done = compact(dir.path()).unwrap();
        assert!(done.after < done.before, "{done:?}");
        assert!(!dir.path().join("compact.old").exists());
        assert!(!dir.path().join("compact.new").exists());
        let store = Store::open(dir.path(), 8).unwrap();
        assert_eq!(
            store.t.meta.get(2995u32.to_be_bytes()).unwrap().as_deref(),
            Some(&[7u8; 200][..])
        );
        assert!(store.t.meta.get(5u32.to_be_bytes()).unwrap().is_none());
    }
}
