//! Payload bytes, kept outside sled in append-only segment files.
//!
//! sled 0.34 copies a whole leaf node on every insert and rewrites it on splits; with
//! kilobyte-sized values in the leaves that is most of the cost of an intake (and most of
//! the bytes written). So payloads go to `payloads/NNNNNNNN.seg` files instead, and the
//! message record holds a [`PayloadRef`] (segment, offset, length, CRC-32).
//!
//! Durability: the writer's flush round syncs every segment written since its last round
//! *before* it flushes sled, so a durable record never points at bytes that are not. Each
//! process start opens a fresh segment, so bytes reserved by writes that were in flight at
//! a crash are never overwritten or reused.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Where one payload lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadRef {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
}

struct Active {
    segment: u32,
    file: Arc<File>,
    len: u64,
}

/// Files written since the last [`PayloadLog::sync`], and whether the directory changed.
#[derive(Default)]
struct Dirty {
    files: HashMap<u32, Arc<File>>,
    new_segment: bool,
}

/// The append-only payload store.
pub struct PayloadLog {
    dir: PathBuf,
    active: Mutex<Active>,
    dirty: Mutex<Dirty>,
    /// Read handles of segments, opened on first use.
    readers: RwLock<HashMap<u32, Arc<File>>>,
    /// The first segment this process wrote. Every segment before it was closed by an
    /// earlier process, so no append to it can still be waiting for its record.
    first_of_run: u32,
    /// Segments this process closed (rolled over), with when (unix ms).
    closed: Mutex<HashMap<u32, i64>>,
    /// How many [`SegmentPin`]s live: while any does, no segment file is deleted. A
    /// deletion holds this lock throughout, so a new pin waits until it is over.
    pins: Arc<Mutex<usize>>,
}

/// Holds every segment file in place while it lives (a backup reading them); deletions
/// wait for the next pass after the last pin is dropped. See [`PayloadLog::pin_segments`].
pub struct SegmentPin(Arc<Mutex<usize>>);

impl Drop for SegmentPin {
    fn drop(&mut self) {
        let mut n = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
    }
}

/// How long after this process closed a segment it may be deleted. An append's record
/// is written by the request that appended it, within the request's own time limits
/// (body, background call and writer queue, each bounded well under this), so a
/// segment closed this long ago has no append still waiting for its record.
pub const CLOSED_GRACE_MS: i64 = 60 * 60 * 1000;

impl PayloadLog {
    /// The size of every segment file together.
    pub fn bytes_on_disk(&self) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }
}

impl PayloadLog {
    /// Keeps every segment file in place until the returned pin is dropped: for a reader
    /// of the files themselves (a backup). Cheap; deletions simply wait.
    pub fn pin_segments(&self) -> SegmentPin {
        *self.pins.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        SegmentPin(Arc::clone(&self.pins))
    }

    /// The segment files on disk with their sizes, in number order.
    pub fn segments(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            out.push((n, entry.metadata()?.len()));
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Whether `segment` is closed for good at `now`: not the one being written, and
    /// either closed by an earlier process or closed by this one over
    /// [`CLOSED_GRACE_MS`] ago. Only such a segment may be deleted.
    pub fn settled(&self, segment: u32, now: i64) -> bool {
        let active = match self.active.lock() {
            Ok(a) => a.segment,
            Err(_) => return false,
        };
        if segment >= active {
            return false;
        }
        if segment < self.first_of_run {
            return true;
        }
        self.closed
            .lock()
            .ok()
            .and_then(|c| c.get(&segment).copied())
            .is_some_and(|at| now - at > CLOSED_GRACE_MS)
    }

    /// Deletes segment files that hold no live payload, unless a [`SegmentPin`] lives.
    /// The caller has made sure (after the flush that made it so) that no durable record
    /// points into them, and that each is [`PayloadLog::settled`]. Returns the bytes
    /// freed, or `None` when pinned.
    pub fn delete_segments(&self, dead: &[u32]) -> Result<Option<u64>, StoreError> {
        if dead.is_empty() {
            return Ok(Some(0));
        }
        let pins = self.pins.lock().map_err(|_| StoreError::Closed)?;
        if *pins > 0 {
            return Ok(None);
        }
        let mut freed = 0;
        for &segment in dead {
            let path = segment_path(&self.dir, segment);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            match std::fs::remove_file(&path) {
                Ok(()) => freed += len,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            if let Ok(mut readers) = self.readers.write() {
                readers.remove(&segment);
            }
        }
        // The deletions are durable once the directory is.
        File::open(&self.dir)?.sync_all()?;
        drop(pins);
        Ok(Some(freed))
    }
}

fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:08}.seg"))
}

fn create_segment(dir: &Path, segment: u32) -> Result<File, StoreError> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(segment_path(dir, segment))?)
}

impl PayloadLog {
    /// Opens the log in `dir`, starting a new segment after the highest existing one.
    pub fn open(dir: &Path) -> Result<PayloadLog, StoreError> {
        std::fs::create_dir_all(dir)?;
        let mut highest = 0u32;
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u32>().ok())
            {
                highest = highest.max(n);
            }
        }
        let segment = highest + 1;
        let file = Arc::new(create_segment(dir, segment)?);
        let mut dirty = Dirty {
            new_segment: true,
            ..Dirty::default()
        };
        dirty.files.insert(segment, Arc::clone(&file));
        Ok(PayloadLog {
            dir: dir.to_owned(),
            active: Mutex::new(Active {
                segment,
                file,
                len: 0,
            }),
            dirty: Mutex::new(dirty),
            readers: RwLock::new(HashMap::new()),
            first_of_run: segment,
            closed: Mutex::new(HashMap::new()),
            pins: Arc::new(Mutex::new(0)),
        })
    }

    /// Writes `bytes` and returns where they are. Not yet durable: the writer's next flush round syncs it.
    pub fn append(&self, bytes: &[u8]) -> Result<PayloadRef, StoreError> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| StoreError::Codec("payload over 4 GiB".into()))?;
        // Reserve a range under the lock; write outside it, so writers do not queue behind
        // each other's copies.
        let (segment, file, offset) = {
            let mut a = self.active.lock().map_err(|_| StoreError::Closed)?;
            if a.len > 0 && a.len + u64::from(len) > SEGMENT_BYTES {
                let next = a.segment + 1;
                let file = Arc::new(create_segment(&self.dir, next)?);
                if let Ok(mut closed) = self.closed.lock() {
                    closed.insert(a.segment, super::now_ms());
                }
                *a = Active {
                    segment: next,
                    file,
                    len: 0,
                };
                self.dirty
                    .lock()
                    .map_err(|_| StoreError::Closed)?
                    .new_segment = true;
            }
            let offset = a.len;
            a.len += u64::from(len);
            (a.segment, Arc::clone(&a.file), offset)
        };
        file.write_all_at(bytes, offset)?;
        self.dirty
            .lock()
            .map_err(|_| StoreError::Closed)?
            .files
            .entry(segment)
            .or_insert(file);
        Ok(PayloadRef {
            segment,
            offset,
            len,
            crc: crc32(bytes),
        })
    }

    /// Makes every append made before the call durable.
    pub fn sync(&self) -> std::io::Result<()> {
        let dirty = match self.dirty.lock() {
            Ok(mut d) => std::mem::take(&mut *d),
            Err(_) => return Err(std::io::Error::other("payload log lock poisoned")),
        };
        for file in dirty.files.values() {
            file.sync_data()?;
        }
        if dirty.new_segment {
            // A new file's name is durable only once its directory is.
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Whether `segment` has appends the next [`PayloadLog::sync`] has yet to make durable.
    #[cfg(test)]
    pub(super) fn unsynced(&self, segment: u32) -> bool {
        self.dirty
            .lock()
            .map(|d| d.files.contains_key(&segment))
            .unwrap_or(true)
    }

    /// Reads a payload back, checking its CRC.
    pub fn read(&self, r: &PayloadRef) -> Result<Bytes, StoreError> {
        let file = self.reader(r.segment)?;
        // A damaged reference must not make us allocate what the segment cannot hold.
        let size = file.metadata()?.len();
        if r.offset
            .checked_add(u64::from(r.len))
            .is_none_or(|end| end > size)
        {
            return Err(StoreError::Corrupt(format!(
                "payload in segment {} at {} runs past the segment's end",
                r.segment, r.offset
            )));
        }
        let mut buf = vec![0u8; r.len as usize];
        file.read_exact_at(&mut buf, r.offset)?;
        if crc32(&buf) != r.crc {
            return Err(StoreError::Corrupt(format!(
                "payload in segment {} at {} fails its checksum",
                r.segment, r.offset
            )));
        }
        Ok(Bytes::from(buf))
    }

    fn reader(&self, segment: u32) -> Result<Arc<File>, StoreError> {
        if let Some(f) = self
            .readers
            .read()
            .map_err(|_| StoreError::Closed)?
            .get(&segment)
        {
            return Ok(Arc::clone(f));
        }
        let file = Arc::new(File::open(segment_path(&self.dir, segment))?);
        self.readers
            .write()
            .map_err(|_| StoreError::Closed)?
            .insert(segment, Arc::clone(&file));
        Ok(file)
    }
}

/// CRC-32 (IEEE), to notice a payload torn by a power loss before it was acknowledged.
fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in bytes {
        c = table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn appends_read_back_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let log = PayloadLog::open(dir.path()).unwrap();
        let a = log.append(b"hello").unwrap();
        let b = log.append(&[7u8; 3000]).unwrap();
        let empty = log.append(b"").unwrap();
        log.sync().unwrap();
        assert_eq!(&log.read(&a).unwrap()[..], b"hello");
        assert_eq!(log.read(&b).unwrap().len(), 3000);
        assert!(log.read(&empty).unwrap().is_empty());
        drop(log);

        let log = PayloadLog::open(dir.path()).unwrap();
        assert_eq!(&log.read(&a).unwrap()[..], b"hello");
        let c = log.append(b"next").unwrap();
        assert!(
            c.segment > a.segment,
            "a reopened log writes to a fresh segment"
        );
    }

    #[test]
    fn a_damaged_payload_is_an_error_not_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let log = PayloadLog::open(dir.path()).unwrap();
        let r = log.append(b"precious").unwrap();
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), r.segment))
            .unwrap();
        file.write_all_at(b"X", r.offset).unwrap();
        assert!(log.read(&r).is_err());
        let beyond = PayloadRef {
            offset: 1 << 20,
            ..r
        };
        assert!(log.read(&beyond).is_err());
    }
}
