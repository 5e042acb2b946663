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
//! | `receiver_pending` | env ‖ receiver ‖ 0xFF ‖ transmission uuid | lease expiry ‖ doctype |
//! | `requests` | env ‖ sender ‖ 0xFF ‖ request id | [`RequestRec`] |
//! | `deliveries` | due (u64 BE ms) ‖ delivery id | [`DeliveryRec`] |
//! | `attempts` | env ‖ transmission uuid ‖ attempt (u32 BE) | [`AttemptRec`] |
//!
//! Payload bytes live outside sled, in the append-only [`payload_log`].

mod codec;
mod deliveries;
pub mod directory;
mod messages;
pub mod payload_log;
pub mod records;
mod writer;

use std::path::Path;
use std::sync::{Arc, RwLock};

pub use deliveries::{Due, Leased, Next};
pub use directory::{Directory, NewPartner, PartnerPatch, Principal};
pub use messages::{AckOutcome, Claimed, NewMessage, PollFilter};
pub use records::*;

use payload_log::PayloadLog;
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
    #[error("a flush failed; the store refuses writes")]
    FlushFailed,
    #[error("the store is shutting down")]
    Closed,
}

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
    /// Woken when a push is queued, so the delivery worker need not poll.
    pub deliveries_ready: tokio::sync::Notify,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` with a page cache of `cache_mb` MiB.
    pub fn open(dir: &Path, cache_mb: u64) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_mb.max(8) * 1024 * 1024)
            // The writer flushes after every group of jobs; sled's own timer would only
            // add flushes nobody waits for.
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()?;
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
            db,
        });
        let payload_log = Arc::new(PayloadLog::open(&dir.join("payloads"))?);
        let writer = Writer::start(Arc::clone(&t), Arc::clone(&payload_log), dir)?;
        let store = Store {
            t,
            payload_log,
            writer,
            directory: RwLock::new(Arc::new(Directory::default())),
            admin_lock: tokio::sync::Mutex::new(()),
            deliveries_ready: tokio::sync::Notify::new(),
        };
        store.reload_directory()?;
        Ok(store)
    }

    /// Whether the store can take writes.
    pub fn healthy(&self) -> bool {
        !self.writer.failed()
    }

    /// The current partners, keys and routes.
    pub fn directory(&self) -> Arc<Directory> {
        match self.directory.read() {
            Ok(d) => Arc::clone(&d),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Makes everything durable and stops the writer. Called once at shutdown.
    pub fn close(&self) {
        self.writer.shutdown();
    }
}

/// Current time in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
