//! The store: sled trees, the writer that group-commits, and every read and write of records.
//! This module is the only place that names sled or bincode; the rest of the crate sees
//! records and domain errors.
//!
//! Trees (named after what they map):
//!
//! | tree | key | value |
//! |---|---|---|
//! | `partners` | code | [`PartnerRec`] |
//! | `api_keys` | key id | [`ApiKeyRec`] |
//! | `api_key_hash` | SHA-256 of the secret | key id |
//! | `routes` | route id | [`RouteRec`] |
//! | `messages` | env ‖ message id | [`MessageRec`] with its transmissions |
//! | `receiver_pending` | env ‖ receiver ‖ 0xFF ‖ transmission uuid | 0 (u64) ‖ doctype |
//! | `receiver_leased` | env ‖ receiver ‖ 0xFF ‖ lease expiry (u64 BE ms) ‖ transmission uuid | doctype |
//! | `requests` | env ‖ sender ‖ 0xFF ‖ request id | [`RequestRec`] |
//! | `outbox` | endpoint ‖ 0xFF ‖ due (u64 BE ms) ‖ delivery id | [`DeliveryRec`] |
//! | `attempts` | env ‖ delivery id ‖ attempt (u32 BE) | [`AttemptRec`] |
//! | `endpoint_health` | endpoint | [`EndpointHealthRec`] |
//! | `tracking` | env ‖ sender ‖ 0xFF ‖ request id ‖ message id | status ‖ processed at ‖ doctype |
//! | `tracking_refs` | env ‖ sender ‖ 0xFF ‖ reference ‖ 0xFF ‖ request id ‖ message id | (empty) |
//! | `meta` | name | the token signing key ([`TokenKeyRec`]), one-time migration markers |
//! | `jobs` | env ‖ job id | [`JobRec`]: a background request and its state |
//! | `jobs_queued` | job id | env: jobs waiting for a worker, oldest first |
//! | `jobs_running` | lease expiry (u64 BE ms) ‖ job id | env: jobs under way |
//! | `job_content` | env ‖ job id | [`StoredResponse`]: what the job's call answered |
//! | `bulk_ops` | operation id | [`bulk::BulkRec`]: a bulk cancel or redelivery and its progress |
//! | `counters` | `m` ‖ env ‖ status, `q` ‖ queue, `r` ‖ kind ‖ minute | i64 (BE): see [`counters`] |
//! | `schemas` | schema id | [`SchemaRec`]: the validator of one doctype and version |
//! | `unique_refs` | env ‖ sender ‖ 0xFF ‖ doctype ‖ 0xFF ‖ reference | message id ‖ received at (u64 BE ms) |
//! | `subscriptions` | env ‖ subscription id | [`SubscriptionRec`]: an event subscription |
//! | `sub_pending` | subscription id ‖ event (1 byte) ‖ object id | changed at (u64 BE ms): ids waiting for a batch |
//! | `idempotency_batches` | stamp (u64 BE: the newest answer's ms × 4096, growing) | a batch of stored answers ([`IdempotencyRec`] by env ‖ partner ‖ 0xFF ‖ key), see [`idempotency`] |
//! | `idempotency_hourly`, `idempotency`, `idempotency_expiry` | (older builds' stored answers, moved into `idempotency_batches` at open) | |
//! | `deliveries` | (older builds' push queue, moved into `outbox` at open) | |
//!
//! Payload bytes live outside sled, in the append-only [`payload_log`].

pub mod admins;
pub mod background;
pub mod backup;
pub mod bulk;
mod codec;
pub mod compact;
pub mod compact_segments;
pub mod counters;
mod deliveries;
pub mod directory;
mod export;
pub mod idempotency;
mod key_use;
pub mod listing;
mod messages;
pub mod payload_log;
#[cfg(test)]
mod props;
pub mod records;
mod requeue;
pub mod retention;
mod schemas;
pub mod subscriptions;
pub mod tracking;
pub mod transitions;
mod writer;

use std::path::Path;
use std::sync::{Arc, RwLock};

pub use background::{JobFilter, JobRec, JobState, StoredBody, StoredResponse, INLINE_BODY_BYTES};
pub use deliveries::{due_at, Finish, Next, OutboxEndpoint, Prefetched, Queued};
pub use directory::{Directory, NewPartner, PartnerPatch, Principal};
pub use idempotency::{AnswerIndex, IdemPut, IdemSlot, Remember};
pub use messages::{AcceptError, AckOutcome, Claimed, NewMessage, PollFilter};
pub use records::*;
pub use subscriptions::{
    AttemptNote, ChangedBy, EventKind, Flushed, SubChange, SubIndex, SubscriptionPatch,
    SubscriptionRec,
};
pub use tracking::{
    CancelOutcome, StatusSummary, TrackedRequest, TrackingPage, TrackingQuery, TrackingSort,
};

use payload_log::PayloadLog;
pub use writer::RoundObserver;
use writer::Writer;

/// A storage fault. The API answers 503 for all of them and logs the detail.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("record encoding: {0}")]
    Codec(String),
    /// Stored bytes fail their checksum: the data is damaged, not the store.
    #[error("corrupt: {0}")]
    Corrupt(String),
    #[error("a flush failed; the store refuses writes")]
    FlushFailed,
    #[error("the store is shutting down")]
    Closed,
    /// The writer's queue is full; nothing was done. Try again shortly.
    #[error("the store's write queue is full")]
    Busy,
}

/// Writes that may wait for the writer when no setting says otherwise.
pub const DEFAULT_WRITER_QUEUE: usize = 8192;

/// The sled trees; the writer thread holds them too.
pub struct Trees {
    db: sled::Db,
    partners: sled::Tree,
    api_keys: sled::Tree,
    api_key_hash: sled::Tree,
    routes: sled::Tree,
    messages: sled::Tree,
    receiver_pending: sled::Tree,
    requests: sled::Tree,
    deliveries: sled::Tree,
    attempts: sled::Tree,
    outbox: sled::Tree,
    endpoint_health: sled::Tree,
    receiver_leased: sled::Tree,
    tracking: sled::Tree,
    tracking_refs: sled::Tree,
    meta: sled::Tree,
    admin_users: sled::Tree,
    admin_sessions: sled::Tree,
    audit: sled::Tree,
    jobs: sled::Tree,
    jobs_queued: sled::Tree,
    jobs_running: sled::Tree,
    job_content: sled::Tree,
    legacy_idempotency: sled::Tree,
    legacy_idempotency_expiry: sled::Tree,
    counters: sled::Tree,
    bulk_ops: sled::Tree,
    schemas: sled::Tree,
    unique_refs: sled::Tree,
    subscriptions: sled::Tree,
    sub_pending: sled::Tree,
    idempotency: sled::Tree,
    legacy_idempotency_hourly: sled::Tree,
}

impl Trees {
    /// Every tree, in the order of [`writer::Table`].
    fn all(&self) -> Vec<&sled::Tree> {
        vec![
            &self.partners,
            &self.api_keys,
            &self.api_key_hash,
            &self.routes,
            &self.messages,
            &self.receiver_pending,
            &self.requests,
            &self.deliveries,
            &self.attempts,
            &self.outbox,
            &self.endpoint_health,
            &self.receiver_leased,
            &self.tracking,
            &self.tracking_refs,
            &self.meta,
            &self.admin_users,
            &self.admin_sessions,
            &self.audit,
            &self.jobs,
            &self.jobs_queued,
            &self.jobs_running,
            &self.job_content,
            &self.legacy_idempotency,
            &self.legacy_idempotency_expiry,
            &self.counters,
            &self.bulk_ops,
            &self.schemas,
            &self.unique_refs,
            &self.subscriptions,
            &self.sub_pending,
            &self.idempotency,
            &self.legacy_idempotency_hourly,
        ]
    }
}

/// How the store tells the delivery engine about new outbox entries: new pushes go over a
/// bounded channel (the engine starts them without reading them back); when that is full,
/// or when entries appear another way (redelivery, a released endpoint), a rescan is asked
/// for and the engine reads the outbox itself.
pub struct OutboxSignal {
    tx: tokio::sync::mpsc::Sender<Queued>,
    rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Queued>>>,
    rescan: tokio::sync::Notify,
    /// Keys of the entries handed over with their message (`Queued::prefetched`) that no
    /// job has removed since: put here by the intake job that inserts the entry, taken out
    /// by the job that removes it (an acknowledgement, a cancellation, the attempt's own
    /// outcome) or when the engine does not keep the entry. Lets an attempt check that
    /// its entry is still queued without a tree read, which would wait for the writer's
    /// open transaction.
    handed: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
}

/// New entries handed to the engine directly; more than this wait for a rescan.
const OUTBOX_CHANNEL: usize = 8192;

impl OutboxSignal {
    fn new() -> OutboxSignal {
        let (tx, rx) = tokio::sync::mpsc::channel(OUTBOX_CHANNEL);
        OutboxSignal {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            rescan: tokio::sync::Notify::new(),
            handed: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Hands new entries to the engine.
    fn offer(&self, items: Vec<Queued>) {
        let mut items = items.into_iter();
        while let Some(q) = items.next() {
            if let Err(e) = self.tx.try_send(q) {
                // The engine reads the rest from the outbox, as entries it was not handed.
                let q = match e {
                    tokio::sync::mpsc::error::TrySendError::Full(q)
                    | tokio::sync::mpsc::error::TrySendError::Closed(q) => q,
                };
                for q in std::iter::once(q).chain(items) {
                    self.forget(&q.key);
                }
                self.rescan();
                return;
            }
        }
    }

    /// Notes an entry handed over with its message (inside the writer job inserting it).
    fn hand(&self, key: &[u8]) {
        self.handed_set().insert(key.to_vec());
    }

    /// The set of handed-over keys. Its operations cannot panic halfway, so a poisoned
    /// lock still guards a whole set; refusing it would drop pushes that are queued.
    fn handed_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Vec<u8>>> {
        self.handed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an entry handed over with its message is still in the outbox: no job has
    /// removed it since the intake job that inserted it. Only for `Queued::prefetched`
    /// entries; the engine reads the others' state from the store.
    pub fn still_queued(&self, key: &[u8]) -> bool {
        self.handed_set().contains(key)
    }

    /// Stops tracking the entry under `key`: a job removed it (called inside that job), or
    /// the engine does not keep it (and reads it from the outbox instead, if it is still
    /// there when its turn comes).
    pub fn forget(&self, key: &[u8]) {
        self.handed_set().remove(key);
    }

    /// Asks the engine to read the outbox again.
    pub fn rescan(&self) {
        self.rescan.notify_one();
    }

    /// Waits until a rescan is asked for.
    pub async fn rescan_asked(&self) {
        self.rescan.notified().await
    }

    /// The receiving end of new entries; the one engine takes it once.
    pub fn take_receiver(&self) -> Option<tokio::sync::mpsc::Receiver<Queued>> {
        self.rx.lock().ok()?.take()
    }
}

/// The open store. Cheap to share behind an `Arc`.
pub struct Store {
    t: Arc<Trees>,
    payload_log: Arc<PayloadLog>,
    writer: Writer,
    /// Partners, keys and routes, kept in memory because every request consults them and
    /// they change rarely. Rebuilt from the trees after each change, under `admin_lock`.
    directory: RwLock<Arc<Directory>>,
    admin_lock: tokio::sync::Mutex<()>,
    /// Tells the delivery engine about new outbox entries, so it need not poll.
    pub outbox: Arc<OutboxSignal>,
    /// Where each stored idempotency answer is (see [`idempotency`]).
    answers: Arc<AnswerIndex>,
    /// The key that signs and checks partner tokens (JWT, HS256), made at first start.
    token_key: TokenKeyRec,
    /// When each API key was last used, noted in memory and saved now and then.
    key_use: key_use::KeyUse,
    /// Wakes the bulk worker when an operation is created.
    pub bulk_created: tokio::sync::Notify,
    /// The data directory, for the size on disk.
    dir: std::path::PathBuf,
    opened: std::time::Instant,
    /// How long an `externalReference` stays taken (ms), for senders that keep them unique.
    reference_window_ms: std::sync::atomic::AtomicI64,
    /// Event subscriptions in memory: what the writer feeds changes by, and which have ids
    /// waiting for their batch.
    subs: Arc<SubIndex>,
}

/// Syncs what sled and the payload log create at opening without syncing it: sled's
/// `conf` (written, never synced) and the data directory that names `db`, `conf`,
/// `blobs/` and `payloads/`. Until the directory is synced, a power cut after the first
/// start could take the whole store with it, whatever the writer synced since; the
/// writer only syncs the files and the payload directory.
fn make_names_durable(dir: &Path) -> std::io::Result<()> {
    match std::fs::File::open(dir.join("conf")) {
        Ok(conf) => conf.sync_all()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Deletes the snapshot files sled left unfinished in `dir` (`snap.<lsn>.generating`).
///
/// sled 0.34.7 writes a snapshot at every open to `snap.<lsn>.generating`, then renames it
/// to `snap.<lsn>`; but when it looks for the newest snapshot it skips only names ending
/// in `.in___motion`, so it takes an unfinished `.generating` file for a snapshot. When
/// a start finds the disk full, the write stops short, the file stays, and every later
/// open fails its checksum ("Read corrupted data") although nothing else is damaged.
/// Such a file is never the only copy of anything: the previous snapshot and the log
/// are removed only after the rename. Returns how many were removed.
fn remove_unfinished_snapshots(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %name, "removing an unfinished store snapshot");
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

impl Store {
    /// Opens (creating if needed) the store in `dir` with a page cache of `cache_mb` MiB.
    pub fn open(dir: &Path, cache_mb: u64) -> Result<Store, StoreError> {
        Self::open_with(dir, cache_mb, DEFAULT_WRITER_QUEUE)
    }

    /// [`Store::open`] with at most `writer_queue` writes waiting at once.
    pub fn open_with(dir: &Path, cache_mb: u64, writer_queue: usize) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        let open = || {
            open_sled(
                &sled::Config::new()
                    .path(dir)
                    .cache_capacity(cache_mb.max(8) * 1024 * 1024)
                    // The writer flushes after every group of jobs; sled's own timer would
                    // only add flushes nobody waits for.
                    .flush_every_ms(None)
                    .mode(sled::Mode::HighThroughput),
            )
        };
        let db = match open() {
            // Only once sled has refused the store (and holds no lock on it any more): a
            // snapshot being written by a process still running is left alone.
            Err(sled::Error::Corruption { .. }) if remove_unfinished_snapshots(dir)? > 0 => open()?,
            other => other?,
        };
        let tree = |name: &str| db.open_tree(name);
        let t = Arc::new(Trees {
            partners: tree("partners")?,
            api_keys: tree("api_keys")?,
            api_key_hash: tree("api_key_hash")?,
            routes: tree("routes")?,
            messages: tree("messages")?,
            receiver_pending: tree("receiver_pending")?,
            requests: tree("requests")?,
            deliveries: tree("deliveries")?,
            attempts: tree("attempts")?,
            outbox: tree("outbox")?,
            endpoint_health: tree("endpoint_health")?,
            receiver_leased: tree("receiver_leased")?,
            tracking: tree("tracking")?,
            tracking_refs: tree("tracking_refs")?,
            meta: tree("meta")?,
            admin_users: tree("admin_users")?,
            admin_sessions: tree("admin_sessions")?,
            audit: tree("audit")?,
            jobs: tree("jobs")?,
            jobs_queued: tree("jobs_queued")?,
            jobs_running: tree("jobs_running")?,
            job_content: tree("job_content")?,
            legacy_idempotency: tree("idempotency")?,
            legacy_idempotency_expiry: tree("idempotency_expiry")?,
            counters: tree("counters")?,
            bulk_ops: tree("bulk_ops")?,
            schemas: tree("schemas")?,
            unique_refs: tree("unique_refs")?,
            subscriptions: tree("subscriptions")?,
            sub_pending: tree("sub_pending")?,
            idempotency: tree("idempotency_batches")?,
            legacy_idempotency_hourly: tree("idempotency_hourly")?,
            db,
        });
        let payload_log = Arc::new(PayloadLog::open(&dir.join("payloads"))?);
        make_names_durable(dir)?;
        let subs = Arc::new(SubIndex::default());
        Store::load_subscriptions(&t, &subs)?;
        let outbox = Arc::new(OutboxSignal::new());
        let answers = Arc::new(AnswerIndex::default());
        if let Some(last) = t.idempotency.last()? {
            if let Ok(stamp) = <[u8; 8]>::try_from(&last.0[..]) {
                answers.start_after(u64::from_be_bytes(stamp));
            }
        }
        let writer = Writer::start(
            Arc::clone(&t),
            Arc::clone(&payload_log),
            Arc::clone(&subs),
            Arc::clone(&outbox),
            Arc::clone(&answers),
            dir,
            writer_queue,
        )?;
        let token_key = directory::ensure_token_key(&t, &writer)?;
        let store = Store {
            t,
            payload_log,
            writer,
            directory: RwLock::new(Arc::new(Directory::default())),
            admin_lock: tokio::sync::Mutex::new(()),
            outbox,
            answers,
            token_key,
            key_use: key_use::KeyUse::default(),
            bulk_created: tokio::sync::Notify::new(),
            dir: dir.to_owned(),
            opened: std::time::Instant::now(),
            reference_window_ms: std::sync::atomic::AtomicI64::new(
                schemas::DEFAULT_REFERENCE_WINDOW_MS,
            ),
            subs,
        };
        store.reload_directory()?;
        let indexed = store.build_tracking_index()?;
        if indexed > 0 {
            tracing::info!(
                indexed,
                "built the tracking index of messages stored earlier"
            );
        }
        let moved = store.migrate_legacy_deliveries()?;
        if moved > 0 {
            tracing::info!(moved, "moved queued pushes into the outbox");
        }
        let moved = store.migrate_leased_entries()?;
        if moved > 0 {
            tracing::info!(moved, "moved leased transmissions out of the poll queues");
        }
        let moved = store.migrate_legacy_idempotency(now_ms())?;
        if moved > 0 {
            tracing::info!(moved, "moved stored idempotency answers into batches");
        }
        if store.build_counters()? {
            tracing::info!("counted the stored messages and queues for the stats");
        }
        Ok(store)
    }

    /// Whether the store can take writes.
    pub fn healthy(&self) -> bool {
        !self.writer.failed() && self.writer.alive()
    }

    /// Whether the writer thread is running.
    pub fn writer_alive(&self) -> bool {
        self.writer.alive()
    }

    /// Writes waiting for the writer (queued or in its current round).
    pub fn writes_queued(&self) -> usize {
        self.writer.queued()
    }

    /// Sets what is told of every writer round (its size and flush time).
    pub fn observe_writer(&self, f: writer::RoundObserver) {
        self.writer.observe(f);
    }

    /// Bytes on disk: (payload segment files, sled's own files).
    pub fn disk_usage(&self) -> (u64, u64) {
        let sled = self.t.db.size_on_disk().unwrap_or(0);
        (self.payload_log.bytes_on_disk(), sled)
    }

    /// The current partners, keys and routes.
    pub fn directory(&self) -> Arc<Directory> {
        match self.directory.read() {
            Ok(d) => Arc::clone(&d),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The key partner tokens are signed with, and its id.
    pub fn token_key(&self) -> &TokenKeyRec {
        &self.token_key
    }

    /// Seconds since the store was opened (at process start).
    pub fn uptime_seconds(&self) -> u64 {
        self.opened.elapsed().as_secs()
    }

    /// Bytes the data directory takes: sled's files and the payload segments.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                for inner in std::fs::read_dir(entry.path())? {
                    total += inner?.metadata()?.len();
                }
            } else {
                total += meta.len();
            }
        }
        Ok(total)
    }

    /// Makes everything durable and stops the writer. Called once at shutdown.
    pub fn close(&self) {
        self.writer.shutdown();
    }
}

/// How long opening a store waits for a lock that is about to be released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether sled refused to open a store because another handle holds its lock.
pub(crate) fn sled_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io)
        if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock"))
}

/// Opens sled's store, waiting up to [`LOCK_WAIT`] for its lock. A store just closed in
/// this process may still be locked for a moment: sled's last writes finish on its own
/// threads after the handle is dropped. Another process holding the lock is still an
/// error, only later.
pub(crate) fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(e) if sled_locked(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Current time in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unfinished_snapshot_does_not_keep_the_store_from_opening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8).unwrap();
        let meta = |s: &Store| -> Vec<(sled::IVec, sled::IVec)> {
            s.t.meta.iter().map(|e| e.unwrap()).collect()
        };
        let before = meta(&store);
        assert!(!before.is_empty(), "a first start stores its token key");
        store.writer.shutdown();
        drop(store);
        // What a start on a full disk leaves: a partial snapshot, newer than any other.
        let partial = dir.path().join("snap.FFFFFFFFFFFFFFFF.generating");
        std::fs::write(&partial, b"cut short").unwrap();
        let store = Store::open(dir.path(), 8).unwrap();
        assert!(store.healthy());
        assert!(!partial.exists());
        assert_eq!(meta(&store), before);
    }
}
