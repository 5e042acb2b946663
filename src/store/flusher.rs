//! Group commit: one thread makes everything written so far durable, for all waiting
//! writers at once.
//!
//! A writer applies its sled write, takes a ticket (a sequence number) and waits until the
//! flusher publishes a covered sequence at least as high. The flusher takes the newest
//! ticket, calls sled's `flush` (which covers every write made before it), then forces the
//! data to the disk: sled 0.34 ends its flush with `sync_file_range`, which does not empty
//! the disk's write cache, so we `fdatasync` the `db` file; when a write was large enough to
//! be stored as a separate blob file, we `syncfs` the data directory instead, which covers
//! the blob files sled wrote without syncing them. One flush serves every writer that
//! arrived while the previous one ran, so the flush rate stays near the disk's fsync rate
//! while throughput grows with concurrency. (Flushing per request instead makes sled's
//! concurrent flushes collapse to a handful per second.)

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::watch;

use super::StoreError;

/// Values at least this large may become sled blob files, which need a directory sync.
/// sled puts items larger than a quarter of its 512 KiB segment into blobs; we stay well
/// under that so a page holding a large value is covered too.
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
    large_write: AtomicBool,
    flushed: watch::Sender<Flushed>,
}

/// The handle writers wait on. Dropping it does not stop the thread: call [`GroupCommit::shutdown`].
pub struct GroupCommit {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    /// Starts the flusher thread for `db`, whose files live in `dir`.
    pub fn start(db: sled::Db, dir: &Path) -> Result<GroupCommit, StoreError> {
        let db_file = File::open(dir.join("db"))?;
        let dir_file = File::open(dir)?;
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
            large_write: AtomicBool::new(false),
            flushed: tx,
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("waybill-flusher".into())
            .spawn(move || flush_loop(&worker, &db, &db_file, &dir_file))?;
        Ok(GroupCommit {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Waits until every write this task made before calling is on disk.
    /// `large` says whether one of those writes was at least [`LARGE_WRITE_BYTES`].
    pub async fn durable(&self, large: bool) -> Result<(), StoreError> {
        if large {
            self.shared.large_write.store(true, Ordering::SeqCst);
        }
        let ticket = {
            let mut t = self.shared.tickets.lock().map_err(|_| StoreError::Closed)?;
            if t.stop {
                return Err(StoreError::Closed);
            }
            t.issued += 1;
            t.issued
        };
        self.shared.wake.notify_one();
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

fn flush_loop(shared: &Shared, db: &sled::Db, db_file: &File, dir_file: &File) {
    let mut covered = 0u64;
    loop {
        let target = {
            let Ok(mut t) = shared.tickets.lock() else {
                return;
            };
            while t.issued == covered && !t.stop {
                t = match shared.wake.wait(t) {
                    Ok(t) => t,
                    Err(_) => return,
                };
            }
            if t.issued == covered && t.stop {
                break;
            }
            t.issued
        };
        let large = shared.large_write.swap(false, Ordering::SeqCst);
        match flush_once(db, db_file, dir_file, large) {
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
    // A last flush at shutdown covers writes that never asked to wait (lease updates).
    if let Err(e) = flush_once(db, db_file, dir_file, true) {
        tracing::error!(error = %e, "final store flush failed");
    }
}

fn flush_once(db: &sled::Db, db_file: &File, dir_file: &File, large: bool) -> std::io::Result<()> {
    db.flush().map_err(std::io::Error::other)?;
    if large {
        syncfs(dir_file)
    } else {
        db_file.sync_data()
    }
}

fn syncfs(dir: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `dir` is an open file descriptor for the whole call; syncfs only reads it.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
