//! The store's single writer: every change is a job run on one thread, a whole group of
//! jobs is applied as one sled transaction, and one flush makes the group durable before
//! any of its jobs is answered.
//!
//! Why one thread: in sled 0.34 the first transaction switches on a global read/write
//! lock; a transaction takes its write side and `flush` holds its read side for the whole
//! disk write. Transactions issued from the async workers therefore stalled behind every
//! flush, and so did all HTTP work on those threads. Here the async side only queues a job
//! and awaits its answer.
//!
//! Why one transaction per group: sled's per-transaction cost dominates small changes
//! (measured: ~29 µs for one intake alone, ~16 µs each when 32 share a transaction), and
//! a group commits or fails as a unit anyway, because it is flushed as a unit.
//!
//! A round:
//! 1. take every queued job (up to [`MAX_GROUP`]) and run them all inside one transaction;
//! 2. sync the payload segments written since the last round (so no durable record points
//!    at bytes that are not);
//! 3. `flush` sled, which writes its log and waits with `sync_file_range`;
//! 4. `fdatasync` sled's `db` file, because `sync_file_range` does not empty the disk's
//!    write cache;
//! 5. answer every job of the group.
//!
//! Jobs that arrive during a round make up the next one, so the flush rate stays near the
//! disk's fsync rate while throughput grows with load. (Flushing per request instead makes
//! sled's concurrent flushes collapse to a handful a second.) sled would keep values over
//! 128 KiB as separate, unsynced blob files; no record comes near that size (payloads live
//! in the payload log).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::counters::Deltas;

use super::idempotency::{self, AnswerIndex, Stored};
use super::payload_log::PayloadLog;
use super::subscriptions::SubIndex;
use super::{OutboxSignal, Queued, StoreError, Trees};

/// Payloads at least this large are copied on a blocking thread, not an async worker.
pub const LARGE_WRITE_BYTES: usize = 64 * 1024;

/// Most jobs in one round, so a flood cannot delay answers without bound.
const MAX_GROUP: usize = 1024;

/// The trees a job may change, by name. The order is that of [`Trees::all`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Partners,
    ApiKeys,
    ApiKeyHash,
    Routes,
    Messages,
    ReceiverPending,
    Requests,
    /// Pushes queued by an older build; emptied into `Outbox` at open.
    Deliveries,
    Attempts,
    Outbox,
    EndpointHealth,
    ReceiverLeased,
    Tracking,
    TrackingRefs,
    Meta,
    AdminUsers,
    AdminSessions,
    Audit,
    Jobs,
    JobsQueued,
    JobsRunning,
    JobContent,
    /// Stored answers of the oldest builds; moved into `Idempotency` at open.
    LegacyIdempotency,
    /// The expiry index of older builds; emptied at open.
    LegacyIdempotencyExpiry,
    Counters,
    BulkOps,
    Schemas,
    UniqueRefs,
    Subscriptions,
    SubPending,
    /// Stored answers under idempotency keys, in batches (see [`super::idempotency`]).
    Idempotency,
    /// Stored answers of older builds, one per hour bucket and key; moved into
    /// `Idempotency` at open.
    LegacyIdempotencyHourly,
}

/// A key of one tree, as the journal notes it.
pub type TableKey = (Table, Box<[u8]>);

/// Called after the flush that covers the job, with whether it succeeded.
type Completion = Box<dyn FnOnce(bool) + Send>;
type Job = Box<dyn FnOnce(&Tx<'_>) -> Completion + Send>;
/// Told of each round: how many jobs it applied and how long its flush took.
pub type RoundObserver = Box<dyn Fn(usize, std::time::Duration) + Send + Sync>;

/// Handle to the writer thread.
pub struct Writer {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    /// One permit per job that may wait for the writer: queued, or in the round being
    /// applied and flushed. A permit is given back when its job is answered.
    room: Arc<Semaphore>,
    capacity: usize,
    failed: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    observer: Arc<std::sync::OnceLock<RoundObserver>>,
    journal: Arc<Journal>,
}

/// The keys changed while a backup copies the trees, per table. Switched on for the copy
/// only; while it is off a round pays one atomic load for it.
#[derive(Default)]
pub struct Journal {
    on: AtomicBool,
    keys: Mutex<HashSet<TableKey>>,
}

impl Journal {
    /// Takes the keys noted so far, leaving an empty set that goes on filling.
    pub fn take(&self) -> HashSet<TableKey> {
        match self.keys.lock() {
            Ok(mut k) => std::mem::take(&mut *k),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        }
    }

    /// How many keys are noted now.
    pub fn len(&self) -> usize {
        self.keys.lock().map(|k| k.len()).unwrap_or(0)
    }

    /// Stops noting and forgets what was noted.
    pub fn stop(&self) {
        self.on.store(false, Ordering::SeqCst);
        drop(self.take());
    }

    fn add(&self, touched: Vec<TableKey>) {
        if touched.is_empty() {
            return;
        }
        let mut keys = match self.keys.lock() {
            Ok(k) => k,
            Err(p) => p.into_inner(),
        };
        keys.extend(touched);
    }
}

impl Writer {
    /// Starts the writer for `trees`, whose sled files live in `dir`, feeding changes to
    /// the subscriptions of `subs` and new outbox entries a job offers to `outbox`. At
    /// most `queue` jobs wait at once (see [`Writer::write`]).
    pub fn start(
        trees: Arc<Trees>,
        payloads: Arc<PayloadLog>,
        subs: Arc<SubIndex>,
        outbox: Arc<OutboxSignal>,
        answers: Arc<AnswerIndex>,
        dir: &Path,
        queue: usize,
    ) -> Result<Writer, StoreError> {
        let db_file = File::open(dir.join("db"))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let capacity = queue.clamp(1, Semaphore::MAX_PERMITS);
        let failed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&failed);
        let observer = Arc::new(std::sync::OnceLock::new());
        let watch = Arc::clone(&observer);
        let journal = Arc::new(Journal::default());
        let noted = Arc::clone(&journal);
        let thread = std::thread::Builder::new()
            .name("waybill-writer".into())
            .spawn(move || {
                let parts = Parts {
                    trees: &trees,
                    db_file: &db_file,
                    payloads: &payloads,
                    subs: &subs,
                    outbox: &outbox,
                    answers: &answers,
                    failed: &flag,
                    observer: &watch,
                    journal: &noted,
                };
                write_loop(&rx, &parts)
            })?;
        Ok(Writer {
            queue: Mutex::new(Some(tx)),
            room: Arc::new(Semaphore::new(capacity)),
            capacity,
            failed,
            thread: Mutex::new(Some(thread)),
            observer,
            journal,
        })
    }

    /// The journal of changed keys a backup switches on.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Switches the journal on and returns once every round from now on notes the keys
    /// it changes: the rounds that started without it have committed by then, so a copy
    /// begun after this misses no change. Refused while it is on (a backup is running).
    /// Blocks: for a thread that is not running async code.
    pub fn start_journal(&self) -> Result<(), StoreError> {
        if self.journal.on.swap(true, Ordering::SeqCst) {
            return Err(StoreError::Busy);
        }
        drop(self.journal.take());
        // A round reads the switch after taking its jobs, so the round that takes this
        // one, and every later round, sees it on.
        if let Err(e) = self.write_blocking(|_| Ok(())) {
            self.journal.stop();
            return Err(e);
        }
        Ok(())
    }

    /// Sets what is told of every round from now on (the metrics). Only the first call
    /// counts.
    pub fn observe(&self, f: RoundObserver) {
        let _ = self.observer.set(f);
    }

    /// Runs `job` on the writer thread and answers once its effects are on disk.
    /// When `store.writer_queue` jobs are already waiting it refuses at once with
    /// [`StoreError::Busy`], so a request is answered 503 instead of waiting without bound;
    /// nothing of the job was done then.
    ///
    /// A job must check everything it can before its first write: an error it returns
    /// after writing does not undo those writes (the round's other jobs commit). Storage
    /// errors are different: they abort the whole round, and every job in it fails.
    pub async fn write<R, F>(&self, job: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let permit = Arc::clone(&self.room)
            .try_acquire_owned()
            .map_err(|_| StoreError::Busy)?;
        self.write_with(permit, job).await
    }

    /// [`Writer::write`] for work that must not be dropped (the delivery engine recording
    /// an outcome): waits for room in the queue instead of refusing.
    pub async fn write_waiting<R, F>(&self, job: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let permit = Arc::clone(&self.room)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        self.write_with(permit, job).await
    }

    async fn write_with<R, F>(&self, permit: OwnedSemaphorePermit, job: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.enqueue(job, move |r| {
            drop(permit);
            let _ = tx.send(r);
        })?;
        // A dropped answer means the round failed before its flush.
        rx.await.map_err(|_| StoreError::FlushFailed)?
    }

    /// [`Writer::write_waiting`] for a blocking thread of the runtime that does not wait
    /// for the answer: `answer` is called on the writer thread once the round is flushed
    /// (or dropped uncalled if the round fails, which a caller can note with a guard).
    /// Waits only for room in the queue, and only when it is full.
    pub fn write_then<R, F>(
        &self,
        job: F,
        answer: impl FnOnce(Result<R, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let permit = match Arc::clone(&self.room).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => tokio::runtime::Handle::try_current()
                .map_err(|_| StoreError::Closed)?
                .block_on(Arc::clone(&self.room).acquire_owned())
                .map_err(|_| StoreError::Closed)?,
        };
        self.enqueue(job, move |r| {
            drop(permit);
            answer(r);
        })
    }

    /// [`Writer::write`] for a thread that is not running async code (opening the store).
    pub fn write_blocking<R, F>(&self, job: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.enqueue(job, move |r| {
            let _ = tx.send(r);
        })?;
        rx.recv().map_err(|_| StoreError::FlushFailed)?
    }

    /// Runs `f` on the writer thread between two rounds: after the round that takes this
    /// call has committed and flushed (and its changed keys are in the journal), before
    /// the next begins. No write happens while `f` runs, and no transaction is open, so
    /// `f` may read the trees directly. Blocks until `f` is done.
    pub fn between_rounds<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce() -> Result<R, StoreError> + Send + 'static,
    {
        if self.failed() {
            return Err(StoreError::FlushFailed);
        }
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |_| {
            Box::new(move |flushed| {
                let _ = tx.send(if flushed {
                    f()
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
        rx.recv().map_err(|_| StoreError::FlushFailed)?
    }

    /// Queues `job`; `answer` gets its result once the round covering it is flushed.
    fn enqueue<R, F>(
        &self,
        job: F,
        answer: impl FnOnce(Result<R, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        if self.failed() {
            return Err(StoreError::FlushFailed);
        }
        let job: Job = Box::new(move |t| {
            let result = job(t);
            Box::new(move |flushed| {
                answer(if flushed {
                    result
                } else {
                    Err(StoreError::FlushFailed)
                })
            })
        });
        let queue = self.queue.lock().map_err(|_| StoreError::Closed)?;
        queue
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(job)
            .map_err(|_| StoreError::Closed)
    }

    /// Whether a write has failed (the store then refuses writes).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Whether the writer thread is running. It is not after [`Writer::shutdown`], nor
    /// if it died (a panic in a job): writes then fail, and readiness says so.
    pub fn alive(&self) -> bool {
        self.thread
            .lock()
            .map(|h| h.as_ref().is_some_and(|h| !h.is_finished()))
            .unwrap_or(false)
    }

    /// Jobs waiting for the writer or in its current round.
    pub fn queued(&self) -> usize {
        self.capacity - self.room.available_permits()
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

/// What the writer thread works with.
struct Parts<'a> {
    trees: &'a Trees,
    db_file: &'a File,
    payloads: &'a PayloadLog,
    subs: &'a SubIndex,
    outbox: &'a OutboxSignal,
    answers: &'a AnswerIndex,
    failed: &'a AtomicBool,
    observer: &'a std::sync::OnceLock<RoundObserver>,
    journal: &'a Journal,
}

fn write_loop(rx: &mpsc::Receiver<Job>, p: &Parts<'_>) {
    let Parts {
        trees,
        db_file,
        payloads,
        subs,
        outbox,
        answers,
        failed,
        observer,
        journal,
    } = *p;
    let (mut rounds, mut jobs, mut busy) = (0u64, 0u64, std::time::Duration::ZERO);
    // `recv` fails once every sender is gone: at shutdown, after the queue is drained.
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let count = group.len() as u64;
        let (done, offers, stored) = match apply(trees, subs, outbox, answers, journal, group) {
            Some(Round {
                done,
                offers,
                stored,
            }) => (Some(done), offers, stored),
            None => (None, Vec::new(), Stored::default()),
        };
        #[cfg(debug_assertions)]
        slow_flush_for_tests();
        let started = std::time::Instant::now();
        let flushed = done.is_some()
            && match flush_once(trees, db_file, payloads) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "store flush failed");
                    false
                }
            };
        if !flushed {
            // Nothing after a failed write or flush can be promised durable; refuse from
            // now on rather than acknowledge writes that may be lost.
            tracing::error!("the store refuses writes from now on");
            failed.store(true, Ordering::SeqCst);
        }
        let took = started.elapsed();
        if let Some(observe) = observer.get() {
            observe(count as usize, took);
        }
        busy += took;
        rounds += 1;
        jobs += count;
        if flushed && !offers.is_empty() {
            outbox.offer(offers);
        }
        // Before the jobs are answered: a repeat of a call sent once its answer is out
        // finds the answer stored under its key.
        if flushed {
            for (hash, stamp) in stored.indexed {
                answers.add(hash, stamp);
            }
        }
        // Before the jobs are answered too: a client answered at once may repeat its call
        // at once, and must find the key free and its answer stored.
        drop(stored.holds);
        // Dropping the completions of an aborted round answers their jobs with an error.
        for complete in done.into_iter().flatten() {
            complete(flushed);
        }
    }
    // Anything still buffered.
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

/// What a committed round leaves to do once it is flushed.
struct Round {
    done: Vec<Completion>,
    /// Outbox entries to offer to the delivery engine.
    offers: Vec<Queued>,
    /// The idempotency answers it stored.
    stored: Stored,
}

/// Runs a group of jobs in one transaction; `None` if it was aborted by a storage error.
/// Once it commits, the subscriptions it fed are marked for the flusher (which then finds
/// their entries in the tree).
fn apply(
    trees: &Trees,
    subs: &SubIndex,
    outbox: &OutboxSignal,
    answers: &AnswerIndex,
    journal: &Journal,
    group: Vec<Job>,
) -> Option<Round> {
    // sled may call a transaction closure again after a conflict; with a single writer
    // there are none, and jobs run once: a second call finds no jobs and aborts.
    let pending = RefCell::new(Some(group));
    let all = trees.all();
    // Read once the jobs are taken: see `Writer::start_journal`.
    let noting = journal.on.load(Ordering::SeqCst);
    let touched = RefCell::new(Vec::new());
    let result = all[..].transaction(|views| {
        let Some(group) = pending.borrow_mut().take() else {
            return Err(ConflictableTransactionError::Abort(()));
        };
        let tx = Tx {
            views: &views[..],
            poisoned: Cell::new(false),
            deltas: RefCell::new(Deltas::default()),
            subs,
            fed: RefCell::new(Vec::new()),
            offers: RefCell::new(Vec::new()),
            answers: RefCell::new(Vec::new()),
            outbox,
            touched: noting.then(|| RefCell::new(Vec::new())),
        };
        let done: Vec<Completion> = group.into_iter().map(|job| job(&tx)).collect();
        let kept = tx.answers.take();
        let stored = if kept.is_empty() {
            Ok(Stored::default())
        } else {
            idempotency::write_answers(&tx, answers, kept)
        };
        let deltas = tx.deltas.take();
        let written = deltas.write(&tx);
        if let Some(t) = &tx.touched {
            touched.replace(t.take());
        }
        let Ok(stored) = stored else {
            return Err(ConflictableTransactionError::Abort(()));
        };
        if written.is_err() || tx.poisoned.get() {
            return Err(ConflictableTransactionError::Abort(()));
        }
        Ok((done, tx.fed.take(), tx.offers.take(), stored))
    });
    // Noted whether the round committed or not: reading a key again that did not change
    // costs a read, missing one would make the backup wrong.
    journal.add(touched.into_inner());
    match result {
        Ok((done, fed, offers, stored)) => {
            subs.mark_pending(&fed, super::now_ms());
            Some(Round {
                done,
                offers,
                stored,
            })
        }
        Err(e) => {
            tracing::error!(error = ?e, "a store transaction failed");
            None
        }
    }
}

/// Debug builds only, for tests of what a slow disk allows: while the file named by
/// `WAYBILL_SLOW_FLUSH_FILE` exists, every flush waits 1.5 s first.
#[cfg(debug_assertions)]
fn slow_flush_for_tests() {
    static FLAG: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let flag = FLAG.get_or_init(|| std::env::var_os("WAYBILL_SLOW_FLUSH_FILE").map(Into::into));
    if flag.as_ref().is_some_and(|f| f.exists()) {
        std::thread::sleep(std::time::Duration::from_millis(1500));
    }
}

fn flush_once(trees: &Trees, db_file: &File, payloads: &PayloadLog) -> std::io::Result<()> {
    payloads.sync()?;
    trees.db.flush().map_err(std::io::Error::other)?;
    db_file.sync_data()
}

mod tx;
pub use tx::Tx;

#[cfg(test)]
mod tests;
