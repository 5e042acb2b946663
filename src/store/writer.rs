//! The store's single writer: every multi-tree change is a job run on one thread, and one
//! flush makes a whole group of jobs durable before any of them is answered.
//!
//! Why one thread: in sled 0.34 the first transaction switches on a global read/write
//! lock; a transaction takes its write side and `flush` holds its read side for the whole
//! disk write. Transactions issued from the async workers therefore stall behind every
//! flush, and so does all HTTP work on those threads. Here the async side only queues a
//! job and awaits its answer; the writer thread alternates between applying every queued
//! job (each its own sled transaction) and one flush round:
//!
//! 1. sync the payload segments written since the last round (so no durable record points
//!    at bytes that are not),
//! 2. `flush` sled, which writes its log and waits with `sync_file_range`,
//! 3. `fdatasync` sled's `db` file, because `sync_file_range` does not empty the disk's
//!    write cache.
//!
//! Jobs that arrive during a round are applied and flushed together in the next one, so
//! the flush rate stays near the disk's fsync rate while throughput grows with load.
//! (Flushing per request instead makes sled's concurrent flushes collapse to a handful a
//! second.) sled would keep values over 128 KiB as separate, unsynced blob files; no record
//! comes near that size (payloads live in the payload log).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::payload_log::PayloadLog;
use super::{StoreError, Trees};

/// Payloads at least this large are copied on a blocking thread, not an async worker.
pub const LARGE_WRITE_BYTES: usize = 64 * 1024;

/// Most jobs applied before a flush, so a flood cannot delay answers without bound.
const MAX_GROUP: usize = 2048;

/// Called after the flush that covers the job, with that flush's outcome.
type Completion = Box<dyn FnOnce(bool) + Send>;
type Job = Box<dyn FnOnce(&Trees) -> Completion + Send>;

/// Handle to the writer thread.
pub struct Writer {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    failed: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer for `trees`, whose sled files live in `dir`.
    pub fn start(
        trees: Arc<Trees>,
        payloads: Arc<PayloadLog>,
        dir: &Path,
    ) -> Result<Writer, StoreError> {
        let db_file = File::open(dir.join("db"))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&failed);
        let thread = std::thread::Builder::new()
            .name("waybill-writer".into())
            .spawn(move || write_loop(&rx, &trees, &db_file, &payloads, &flag))?;
        Ok(Writer {
            queue: Mutex::new(Some(tx)),
            failed,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Runs `job` on the writer thread and answers once its effects are on disk. A job
    /// that returns an error wrote nothing (its transaction aborted) and still answers
    /// only after the round's flush, which keeps the ordering simple.
    pub async fn write<R, F>(&self, job: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Trees) -> Result<R, StoreError> + Send + 'static,
    {
        if self.failed() {
            return Err(StoreError::FlushFailed);
        }
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |trees| {
            let result = job(trees);
            Box::new(move |flushed| {
                let _ = tx.send(if flushed {
                    result
                } else {
                    Err(StoreError::FlushFailed)
                });
            })
        });
        {
            let queue = self.queue.lock().map_err(|_| StoreError::Closed)?;
            queue
                .as_ref()
                .ok_or(StoreError::Closed)?
                .send(job)
                .map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Whether a flush has failed (the store then refuses writes).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Applies and flushes what is queued, then stops the thread. Later writes fail.
    pub fn shutdown(&self) {
        if let Ok(mut q) = self.queue.lock() {
            q.take();
        }
        let handle = self.thread.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn write_loop(
    rx: &mpsc::Receiver<Job>,
    trees: &Trees,
    db_file: &File,
    payloads: &PayloadLog,
    failed: &AtomicBool,
) {
    let (mut rounds, mut jobs, mut busy) = (0u64, 0u64, std::time::Duration::ZERO);
    // `recv` fails once every sender is gone: at shutdown, after the queue is drained.
    while let Ok(first) = rx.recv() {
        let mut done = vec![first(trees)];
        while done.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => done.push(job(trees)),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let flushed = match flush_once(trees, db_file, payloads) {
            Ok(()) => true,
            Err(e) => {
                // Nothing after a failed flush can be promised durable; refuse from now on
                // rather than acknowledge writes that may be lost.
                tracing::error!(error = %e, "store flush failed; writes are refused from now on");
                failed.store(true, Ordering::SeqCst);
                false
            }
        };
        busy += started.elapsed();
        rounds += 1;
        jobs += done.len() as u64;
        for complete in done {
            complete(flushed);
        }
    }
    // Writes that never waited (none today) and the admin changes made outside jobs.
    if let Err(e) = flush_once(trees, db_file, payloads) {
        tracing::error!(error = %e, "final store flush failed");
    }
    tracing::info!(
        rounds,
        jobs,
        avg_flush_us = busy.as_micros() as u64 / rounds.max(1),
        "store writer stopped"
    );
}

fn flush_once(trees: &Trees, db_file: &File, payloads: &PayloadLog) -> std::io::Result<()> {
    payloads.sync()?;
    trees.db.flush().map_err(std::io::Error::other)?;
    db_file.sync_data()
}
