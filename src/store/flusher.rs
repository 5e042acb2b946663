//! Group commit: one thread makes everything written so far durable, for all waiting
//! writers at once.
//!
//! A writer applies its writes, takes a ticket (a sequence number) and waits until the
//! flusher publishes a covered sequence at least as high. The flusher takes the newest
//! ticket and then, in this order: syncs the payload segments written since its last round
//! (so no durable record can point at bytes that are not), calls sled's `flush` (which
//! covers every write made before it), and `fdatasync`s sled's `db` file, because sled 0.34
//! ends its flush with `sync_file_range`, which does not empty the disk's write cache.
//! One round serves every writer that arrived while the previous one ran, so the flush rate
//! stays near the disk's fsync rate while throughput grows with concurrency. (Flushing per
//! request instead makes sled's concurrent flushes collapse to a handful per second.)
//!
//! sled would store values over 128 KiB as separate, unsynced blob files; no record comes
//! near that size (payloads live in the payload log), so the `db` file is all there is to sync.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::watch;

use super::payload_log::PayloadLog;
use super::StoreError;

/// Payloads at least this large are copied on a blocking thread, not an async worker.
pub const LARGE_WRITE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
struct Flushed {
    /// Every ticket up to this one is durable.
    seq: u64,
    /// A flush failed; the store no longer acknowledges writes.
    failed: bool,
}

struct Tickets {
    issued: u64,
    stop: bool,
}

struct Shared {
    tickets: Mutex<Tickets>,
    wake: Condvar,
    /// Whether the flusher is asleep on `wake` (writers skip the wake-up syscall otherwise).
    sleeping: AtomicBool,
    flushed: watch::Sender<Flushed>,
}

/// The handle writers wait on. Dropping it does not stop the thread: call [`GroupCommit::shutdown`].
pub struct GroupCommit {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    /// Starts the flusher thread for `db`, whose files live in `dir`.
    pub fn start(
        db: sled::Db,
        payloads: Arc<PayloadLog>,
        dir: &Path,
    ) -> Result<GroupCommit, StoreError> {
        let db_file = File::open(dir.join("db"))?;
        let (tx, _) = watch::channel(Flushed {
            seq: 0,
            failed: false,
        });
        let shared = Arc::new(Shared {
            tickets: Mutex::new(Tickets {
                issued: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            sleeping: AtomicBool::new(false),
            flushed: tx,
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("waybill-flusher".into())
            .spawn(move || flush_loop(&worker, &db, &db_file, &payloads))?;
        Ok(GroupCommit {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Waits until every write this task made before calling is on disk.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let ticket = {
            let mut t = self.shared.tickets.lock().map_err(|_| StoreError::Closed)?;
            if t.stop {
                return Err(StoreError::Closed);
            }
            t.issued += 1;
            t.issued
        };
        if self.shared.sleeping.load(Ordering::SeqCst) {
            self.shared.wake.notify_one();
        }
        let mut rx = self.shared.flushed.subscribe();
        let state = rx
            .wait_for(|f| f.seq >= ticket || f.failed)
            .await
            .map_err(|_| StoreError::Closed)?;
        if state.failed {
            return Err(StoreError::FlushFailed);
        }
        Ok(())
    }

    /// Whether a flush has failed (the store then refuses to acknowledge writes).
    pub fn failed(&self) -> bool {
        self.shared.flushed.borrow().failed
    }

    /// Flushes what is pending, then stops the thread. Later `durable` calls fail.
    pub fn shutdown(&self) {
        if let Ok(mut t) = self.shared.tickets.lock() {
            t.stop = true;
        }
        self.shared.wake.notify_one();
        let handle = self.thread.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn flush_loop(shared: &Shared, db: &sled::Db, db_file: &File, payloads: &PayloadLog) {
    let mut covered = 0u64;
    let (mut flushes, mut busy) = (0u64, std::time::Duration::ZERO);
    loop {
        let target = {
            let Ok(mut t) = shared.tickets.lock() else {
                return;
            };
            while t.issued == covered && !t.stop {
                // Set under the lock a writer takes to issue its ticket, so a writer either
                // sees `sleeping` and wakes us, or issued its ticket before we looked.
                shared.sleeping.store(true, Ordering::SeqCst);
                t = match shared.wake.wait(t) {
                    Ok(t) => t,
                    Err(_) => return,
                };
                shared.sleeping.store(false, Ordering::SeqCst);
            }
            if t.issued == covered && t.stop {
                break;
            }
            t.issued
        };
        let started = std::time::Instant::now();
        let result = flush_once(db, db_file, payloads);
        flushes += 1;
        busy += started.elapsed();
        match result {
            Ok(()) => {
                covered = target;
                shared.flushed.send_replace(Flushed {
                    seq: covered,
                    failed: false,
                });
            }
            Err(e) => {
                // Nothing after a failed flush can be promised durable; refuse from now on
                // rather than acknowledge writes that may be lost.
                tracing::error!(error = %e, "store flush failed; writes are refused from now on");
                shared.flushed.send_replace(Flushed {
                    seq: covered,
                    failed: true,
                });
                if let Ok(mut t) = shared.tickets.lock() {
                    t.stop = true;
                }
                return;
            }
        }
    }
    tracing::info!(
        flushes,
        writes = covered,
        avg_flush_us = busy.as_micros() as u64 / flushes.max(1),
        "group commit statistics"
    );
    // A last flush at shutdown covers writes that never asked to wait (lease updates).
    if let Err(e) = flush_once(db, db_file, payloads) {
        tracing::error!(error = %e, "final store flush failed");
    }
}

fn flush_once(db: &sled::Db, db_file: &File, payloads: &PayloadLog) -> std::io::Result<()> {
    payloads.sync()?;
    db.flush().map_err(std::io::Error::other)?;
    db_file.sync_data()
}
