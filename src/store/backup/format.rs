//! The backup file format, written and read as a stream.
//!
//! ```text
//! preamble  "WBBACKUP" ‖ format version (u16 BE) ‖ 0 (u16)
//! frame*    kind (u8) ‖ body length (u32 BE) ‖ body ‖ CRC-32 of kind, length and body (u32 BE)
//! ```
//!
//! Frames, in the order a backup writes them:
//! - `Header`: JSON `{format, waybillVersion, createdAt, trees, estimatedBytes}`;
//! - `Tree`: the name of the tree the following `Records` belong to;
//! - `Records`: records, each `op (0 put, 1 delete) ‖ key length (u32 BE) ‖ key` and, for a
//!   put, `value length (u32 BE) ‖ value`. Applied in order, so a later record of a key
//!   wins: the copy comes first, then the keys read again after it changed;
//! - `Segment`: a payload segment's number (u32 BE) and length (u64 BE), followed by
//!   `Chunk` frames holding exactly that many bytes;
//! - `Trailer`: JSON with the counts and the SHA-256 of every byte before this frame.
//!   Nothing may follow it.
//!
//! A reader that meets a bad CRC, an unknown frame, a frame out of place, a short file or
//! bytes after the trailer refuses the whole file.

use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"WBBACKUP";
/// The format this build writes, and the newest it reads.
pub const FORMAT_VERSION: u16 = 1;
/// The largest frame body a reader accepts: a corrupt length cannot make it allocate more.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// A `Records` frame is closed once its body passes this size.
pub const RECORDS_FRAME: usize = 256 * 1024;
/// Bytes of a segment per `Chunk` frame.
pub const CHUNK: usize = 1024 * 1024;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Header = 1,
    Tree = 2,
    Records = 3,
    Segment = 4,
    Chunk = 5,
    Trailer = 0x7F,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Header,
            2 => Kind::Tree,
            3 => Kind::Records,
            4 => Kind::Segment,
            5 => Kind::Chunk,
            0x7F => Kind::Trailer,
            _ => return None,
        })
    }
}

/// The `Header` frame's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub format: u16,
    pub waybill_version: String,
    pub created_at: String,
    /// The trees the backup holds, in the order they come.
    pub trees: Vec<String>,
    /// The store's size on disk when the backup began: a rough total for progress.
    pub estimated_bytes: u64,
}

/// The `Trailer` frame's body: what the reader must have seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trailer {
    /// Frames before the trailer.
    pub frames: u64,
    /// Put records, in the copy and in the catch-up after it.
    pub puts: u64,
    /// Delete records (keys removed while the copy ran).
    pub deletes: u64,
    pub segments: u64,
    pub segment_bytes: u64,
    /// How long the writer was held for the last catch-up, in microseconds.
    pub pause_micros: u64,
    /// Keys read again after the copy, in every pass together.
    pub reread_keys: u64,
    /// SHA-256 (hex) of every byte before the trailer frame.
    pub sha256: String,
}

/// One record of a `Records` frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Put(&'a [u8], &'a [u8]),
    Delete(&'a [u8]),
}

/// Builds frames and keeps the counts and the running checksum for the trailer.
pub struct Encoder {
    hash: Sha256,
    pub counts: Trailer,
    records: Vec<u8>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder {
            hash: Sha256::new(),
            counts: Trailer::default(),
            records: Vec::new(),
        }
    }

    /// The preamble.
    pub fn preamble(&mut self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        self.hash.update(&out);
        out
    }

    /// One frame, counted and hashed.
    pub fn frame(&mut self, kind: Kind, body: &[u8]) -> Vec<u8> {
        let out = frame_bytes(kind, body);
        self.hash.update(&out);
        self.counts.frames += 1;
        out
    }

    /// Adds a record to the pending `Records` frame; returns the frame once it is full.
    pub fn record(&mut self, op: Op<'_>) -> Option<Vec<u8>> {
        match op {
            Op::Put(k, v) => {
                self.records.push(0);
                push_bytes(&mut self.records, k);
                push_bytes(&mut self.records, v);
                self.counts.puts += 1;
            }
            Op::Delete(k) => {
                self.records.push(1);
                push_bytes(&mut self.records, k);
                self.counts.deletes += 1;
            }
        }
        (self.records.len() >= RECORDS_FRAME).then(|| self.flush_records())
    }

    /// The pending `Records` frame, if it holds any record.
    pub fn finish_records(&mut self) -> Option<Vec<u8>> {
        (!self.records.is_empty()).then(|| self.flush_records())
    }

    fn flush_records(&mut self) -> Vec<u8> {
        let body = std::mem::take(&mut self.records);
        self.frame(Kind::Records, &body)
    }

    /// The trailer frame, closing the file.
    pub fn trailer(&mut self) -> Vec<u8> {
        let mut t = self.counts.clone();
        t.sha256 = hex(&self.hash.clone().finalize());
        let body = serde_json::to_vec(&t).unwrap_or_default();
        frame_bytes(Kind::Trailer, &body)
    }
}

fn push_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Keys and values are sled's, far below 4 GiB (records are capped at 100 KiB).
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn frame_bytes(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 9);
    out.push(kind as u8);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a backup file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read the backup: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a Waybill backup file")]
    NotABackup,
    #[error(
        "backup format {0} is newer than this build reads ({FORMAT_VERSION}); use a newer Waybill"
    )]
    TooNew(u16),
    #[error("the backup is truncated: it ends before its trailer")]
    Truncated,
    #[error("the backup is corrupt: {0}")]
    Corrupt(String),
}

fn corrupt(why: impl Into<String>) -> FormatError {
    FormatError::Corrupt(why.into())
}

/// Reads frames from a backup file, checking each CRC, and the trailer at the end.
pub struct Decoder<R> {
    inner: R,
    hash: Sha256,
    pub seen: Trailer,
    done: bool,
}

impl<R: Read> Decoder<R> {
    /// Reads and checks the preamble.
    pub fn new(mut inner: R) -> Result<Decoder<R>, FormatError> {
        let mut pre = [0u8; 12];
        read_exact(&mut inner, &mut pre).map_err(|e| match e {
            FormatError::Truncated => FormatError::NotABackup,
            e => e,
        })?;
        if &pre[..8] != MAGIC {
            return Err(FormatError::NotABackup);
        }
        let version = u16::from_be_bytes([pre[8], pre[9]]);
        if version > FORMAT_VERSION {
            return Err(FormatError::TooNew(version));
        }
        if version == 0 {
            return Err(corrupt("format version 0"));
        }
        let mut hash = Sha256::new();
        hash.update(pre);
        Ok(Decoder {
            inner,
            hash,
            seen: Trailer::default(),
            done: false,
        })
    }

    /// The next frame before the trailer; `None` once the trailer was read and checked
    /// and nothing follows it.
    pub fn next_frame(&mut self) -> Result<Option<(Kind, Vec<u8>)>, FormatError> {
        if self.done {
            return Ok(None);
        }
        let mut head = [0u8; 5];
        read_exact(&mut self.inner, &mut head)?;
        let kind = Kind::from_byte(head[0])
            .ok_or_else(|| corrupt(format!("unknown frame kind {}", head[0])))?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            return Err(corrupt(format!("a frame claims {len} bytes")));
        }
        let mut body = vec![0u8; len];
        read_exact(&mut self.inner, &mut body)?;
        let mut crc = [0u8; 4];
        read_exact(&mut self.inner, &mut crc)?;
        let mut check = crc32fast::Hasher::new();
        check.update(&head);
        check.update(&body);
        if check.finalize() != u32::from_be_bytes(crc) {
            return Err(corrupt(format!(
                "frame {} fails its checksum",
                self.seen.frames + 1
            )));
        }
        if kind == Kind::Trailer {
            self.check_trailer(&body)?;
            self.done = true;
            return Ok(None);
        }
        self.hash.update(head);
        self.hash.update(&body);
        self.hash.update(crc);
        self.seen.frames += 1;
        Ok(Some((kind, body)))
    }

    /// Counts what a caller found in a `Records` frame, for the trailer's check.
    pub fn count_records(&mut self, puts: u64, deletes: u64) {
        self.seen.puts += puts;
        self.seen.deletes += deletes;
    }

    /// Counts a segment and its bytes, for the trailer's check.
    pub fn count_segment(&mut self, bytes: u64) {
        self.seen.segments += 1;
        self.seen.segment_bytes += bytes;
    }

    fn check_trailer(&mut self, body: &[u8]) -> Result<(), FormatError> {
        let t: Trailer =
            serde_json::from_slice(body).map_err(|_| corrupt("the trailer is unreadable"))?;
        let sha = hex(&self.hash.clone().finalize());
        if t.sha256 != sha {
            return Err(corrupt("the file's checksum does not match its trailer"));
        }
        let mine = (
            self.seen.frames,
            self.seen.puts,
            self.seen.deletes,
            self.seen.segments,
            self.seen.segment_bytes,
        );
        let theirs = (t.frames, t.puts, t.deletes, t.segments, t.segment_bytes);
        if mine != theirs {
            return Err(corrupt("the counts in the trailer do not match the file"));
        }
        let mut extra = [0u8; 1];
        if self.inner.read(&mut extra)? != 0 {
            return Err(corrupt("bytes follow the trailer"));
        }
        self.seen.pause_micros = t.pause_micros;
        self.seen.reread_keys = t.reread_keys;
        self.seen.sha256 = t.sha256;
        Ok(())
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), FormatError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FormatError::Truncated,
        _ => FormatError::Io(e),
    })
}

/// The next length-prefixed field of a record.
fn take<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], FormatError> {
    let bad = || corrupt("a record runs past its frame");
    if rest.len() < 4 {
        return Err(bad());
    }
    let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let tail = &rest[4..];
    if tail.len() < n {
        return Err(bad());
    }
    let (b, after) = tail.split_at(n);
    *rest = after;
    Ok(b)
}

/// The records of a `Records` frame body, in order.
pub fn records(body: &[u8]) -> Result<Vec<Op<'_>>, FormatError> {
    let mut out = Vec::new();
    let mut rest = body;
    let bad = || corrupt("a record runs past its frame");
    while let Some((&op, after)) = rest.split_first() {
        rest = after;
        match op {
            0 => {
                let k = take(&mut rest)?;
                let v = take(&mut rest)?;
                out.push(Op::Put(k, v));
            }
            1 => out.push(Op::Delete(take(&mut rest)?)),
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut e = Encoder::new();
        let mut out = e.preamble();
        out.extend(e.frame(Kind::Tree, b"routes"));
        assert!(e.record(Op::Put(b"k1", b"v1")).is_none());
        assert!(e.record(Op::Delete(b"k0")).is_none());
        out.extend(e.finish_records().unwrap());
        out.extend(e.trailer());
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Trailer, FormatError> {
        let mut d = Decoder::new(bytes)?;
        while let Some((kind, body)) = d.next_frame()? {
            if kind == Kind::Records {
                let ops = records(&body)?;
                let puts = ops.iter().filter(|o| matches!(o, Op::Put(..))).count() as u64;
                d.count_records(puts, ops.len() as u64 - puts);
            }
        }
        Ok(d.seen)
    }

    #[test]
    fn a_file_reads_back_with_its_counts() {
        let t = read_all(&sample()).unwrap();
        assert_eq!((t.frames, t.puts, t.deletes), (2, 1, 1));
        let ops = {
            let bytes = sample();
            let mut d = Decoder::new(&bytes[..]).unwrap();
            d.next_frame().unwrap();
            let (_, body) = d.next_frame().unwrap().unwrap();
            records(&body).unwrap().len()
        };
        assert_eq!(ops, 2);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let good = sample();
        for cut in 0..good.len() {
            assert!(read_all(&good[..cut]).is_err(), "cut at {cut} was accepted");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(read_all(&bad).is_err(), "a flip at {i} was accepted");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(read_all(&longer), Err(FormatError::Corrupt(_))));
    }

    #[test]
    fn a_newer_format_and_a_stranger_are_named() {
        let mut newer = sample();
        newer[9] = 9;
        assert!(matches!(read_all(&newer), Err(FormatError::TooNew(9))));
        assert!(matches!(
            read_all(b"{\"not\": \"a backup\"}"),
            Err(FormatError::NotABackup)
        ));
        assert!(matches!(read_all(b""), Err(FormatError::NotABackup)));
    }

    #[test]
    fn a_record_longer_than_its_frame_is_corrupt_not_a_panic() {
        assert!(records(&[0, 0, 0, 0, 9, 1]).is_err());
        assert!(records(&[7]).is_err());
        assert!(records(&[1, 0, 0]).is_err());
    }
}
