//! Reading a backup back: [`verify`] checks a whole file, [`restore`] checks it and then
//! writes it into a new, empty data directory (no server may be using it).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::path::Path;

use super::format::{records, Decoder, FormatError, Header, Kind, Op};
use super::{segment_path, tree_index, TREE_NAMES};

/// Why a restore did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{0} is not empty; restore only into a new or empty directory (a running server's directory is never empty)")]
    NotEmpty(String),
    #[error("cannot write the store in {dir}: {why}")]
    Write { dir: String, why: String },
}

/// What a backup file holds.
#[derive(Debug, Clone)]
pub struct RestoreSummary {
    pub header: Header,
    /// Keys per tree once every record is applied (after a [`restore`]; after a
    /// [`verify`], the records the file carries for it).
    pub trees: Vec<(String, u64)>,
    pub segments: u64,
    pub segment_bytes: u64,
    /// How long the writer was held while the backup was taken, in microseconds.
    pub pause_micros: u64,
    /// The whole file's SHA-256 (hex), from its trailer.
    pub sha256: String,
}

/// What is done with each piece of a file as it is read.
trait Apply {
    fn records(&mut self, tree: usize, ops: &[Op<'_>]) -> Result<(), RestoreError>;
    fn segment(&mut self, segment: u32) -> Result<(), RestoreError>;
    fn chunk(&mut self, bytes: &[u8]) -> Result<(), RestoreError>;
}

/// Reads and checks a whole backup file, handing its contents to `apply`.
fn read(path: &Path, apply: &mut dyn Apply) -> Result<RestoreSummary, RestoreError> {
    let file = File::open(path).map_err(FormatError::Io)?;
    let mut d = Decoder::new(BufReader::with_capacity(1 << 20, file))?;
    let bad = |why: &str| RestoreError::Format(FormatError::Corrupt(why.to_owned()));
    let header: Header = match d.next_frame()? {
        Some((Kind::Header, body)) => {
            serde_json::from_slice(&body).map_err(|_| bad("the header is unreadable"))?
        }
        _ => return Err(bad("the file does not start with its header")),
    };
    let mut counts = vec![0u64; TREE_NAMES.len()];
    let mut tree = None;
    // The segment being read: bytes still to come.
    let mut left: Option<u64> = None;
    while let Some((kind, body)) = d.next_frame()? {
        if kind != Kind::Chunk && left.is_some_and(|n| n > 0) {
            return Err(bad("a payload segment is cut short"));
        }
        match kind {
            Kind::Header => return Err(bad("a second header")),
            Kind::Tree => {
                let name = std::str::from_utf8(&body).map_err(|_| bad("a tree name"))?;
                tree = Some(tree_index(name).ok_or_else(|| {
                    bad(&format!(
                        "tree {name:?} is unknown to this build; restore with the Waybill that made the backup or a newer one"
                    ))
                })?);
            }
            Kind::Records => {
                let t = tree.ok_or_else(|| bad("records before any tree"))?;
                let ops = records(&body)?;
                let puts = ops.iter().filter(|o| matches!(o, Op::Put(..))).count() as u64;
                d.count_records(puts, ops.len() as u64 - puts);
                counts[t] += puts;
                apply.records(t, &ops)?;
            }
            Kind::Segment => {
                let (n, len) = match body[..] {
                    [a, b, c, e, ref rest @ ..] if rest.len() == 8 => {
                        let mut l = [0u8; 8];
                        l.copy_from_slice(rest);
                        (u32::from_be_bytes([a, b, c, e]), u64::from_be_bytes(l))
                    }
                    _ => return Err(bad("a segment frame")),
                };
                d.count_segment(len);
                left = Some(len);
                apply.segment(n)?;
            }
            Kind::Chunk => {
                let n = left
                    .filter(|n| *n >= body.len() as u64)
                    .ok_or_else(|| bad("segment bytes beyond the segment"))?;
                left = Some(n - body.len() as u64);
                apply.chunk(&body)?;
            }
            // The decoder checks the trailer itself and never hands it out.
            Kind::Trailer => return Err(bad("a misplaced trailer")),
        }
    }
    if left.is_some_and(|n| n > 0) {
        return Err(bad("a payload segment is cut short"));
    }
    Ok(RestoreSummary {
        header,
        trees: TREE_NAMES
            .iter()
            .zip(counts)
            .map(|(n, c)| ((*n).to_owned(), c))
            .collect(),
        segments: d.seen.segments,
        segment_bytes: d.seen.segment_bytes,
        pause_micros: d.seen.pause_micros,
        sha256: d.seen.sha256.clone(),
    })
}

/// Reads nothing into anything: a check only.
struct Check;

impl Apply for Check {
    fn records(&mut self, _: usize, _: &[Op<'_>]) -> Result<(), RestoreError> {
        Ok(())
    }
    fn segment(&mut self, _: u32) -> Result<(), RestoreError> {
        Ok(())
    }
    fn chunk(&mut self, _: &[u8]) -> Result<(), RestoreError> {
        Ok(())
    }
}

/// Checks every frame, the counts and the whole file's checksum of the backup at `path`.
pub fn verify(path: &Path) -> Result<RestoreSummary, RestoreError> {
    read(path, &mut Check)
}

/// Writes into a new sled database and payload directory.
struct Writer {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    payloads: std::path::PathBuf,
    segment: Option<File>,
    segments: Vec<File>,
}

impl Writer {
    fn fail(&self, why: impl std::fmt::Display) -> RestoreError {
        RestoreError::Write {
            dir: self.payloads.display().to_string(),
            why: why.to_string(),
        }
    }
}

impl Apply for Writer {
    fn records(&mut self, tree: usize, ops: &[Op<'_>]) -> Result<(), RestoreError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(*k, *v),
                Op::Delete(k) => batch.remove(*k),
            }
        }
        self.trees[tree]
            .apply_batch(batch)
            .map_err(|e| self.fail(e))
    }

    fn segment(&mut self, segment: u32) -> Result<(), RestoreError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(segment_path(&self.payloads, segment))
            .map_err(|e| self.fail(format!("segment {segment}: {e}")))?;
        if let Some(done) = self.segment.replace(file) {
            self.segments.push(done);
        }
        Ok(())
    }

    fn chunk(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        let result = match &mut self.segment {
            Some(f) => f.write_all(bytes),
            None => return Err(self.fail("segment bytes before a segment")),
        };
        result.map_err(|e| self.fail(e))
    }
}

/// Checks the backup at `path`, then writes it into `dir`, which must be empty or not
/// exist: the sled trees, then the payload segments. Everything is flushed and synced
/// before it returns. On failure `dir` is left as empty as it was found.
pub fn restore(path: &Path, dir: &Path) -> Result<RestoreSummary, RestoreError> {
    let existed = dir.exists();
    if existed {
        let mut entries = std::fs::read_dir(dir).map_err(|e| RestoreError::Write {
            dir: dir.display().to_string(),
            why: e.to_string(),
        })?;
        if entries.next().is_some() {
            return Err(RestoreError::NotEmpty(dir.display().to_string()));
        }
    }
    // Whole file first: nothing is written from a file that would be refused halfway.
    verify(path)?;
    let result = write_into(path, dir);
    if result.is_err() {
        remove_contents(dir, existed);
    }
    result
}

fn write_into(path: &Path, dir: &Path) -> Result<RestoreSummary, RestoreError> {
    let fail = |why: String| RestoreError::Write {
        dir: dir.display().to_string(),
        why,
    };
    let payloads = dir.join("payloads");
    std::fs::create_dir_all(&payloads).map_err(|e| fail(e.to_string()))?;
    let db = crate::store::open_sled(
        &sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput),
    )
    .map_err(|e| fail(e.to_string()))?;
    let trees = TREE_NAMES
        .iter()
        .map(|n| db.open_tree(n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    let mut w = Writer {
        db,
        trees,
        payloads: payloads.clone(),
        segment: None,
        segments: Vec::new(),
    };
    let mut summary = read(path, &mut w)?;
    if let Some(last) = w.segment.take() {
        w.segments.push(last);
    }
    for f in &w.segments {
        f.sync_all().map_err(|e| fail(e.to_string()))?;
    }
    w.db.flush().map_err(|e| fail(e.to_string()))?;
    // sled's flush ends in sync_file_range, which leaves the disk's cache unflushed.
    File::open(dir.join("db"))
        .and_then(|f| f.sync_all())
        .map_err(|e| fail(e.to_string()))?;
    for d in [&payloads, dir] {
        File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| fail(e.to_string()))?;
    }
    summary.trees = TREE_NAMES
        .iter()
        .zip(&w.trees)
        .map(|(n, t)| ((*n).to_owned(), t.len() as u64))
        .collect();
    Ok(summary)
}

/// Undoes a failed restore: `dir` was empty (or absent) before it began.
fn remove_contents(dir: &Path, keep_dir: bool) {
    if !keep_dir {
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}
