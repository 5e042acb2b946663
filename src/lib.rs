//! Waybill: a single-binary B2B integration appliance.
//!
//! Module map:
//! - [`config`]: layered settings (defaults → TOML file → environment → flags).
//! - [`model`]: domain types and input parsing (environments, partner codes, statuses).
//! - [`store`]: sled trees, record codecs, group commit. The only module that names sled.
//! - [`api`]: the HTTP routes (warp filters), one module per resource.
//! - [`worker`]: background loops owned by [`run`]: the delivery engine, the disk space watch.
//! - [`clock`]: the time the retention pruner reads.
//! - [`cli`]: the admin subcommands, which call a running server with the admin token.
//! - [`server`]: the accept loop that serves the routes over HTTP or HTTPS.
//! - [`tls`]: certificates (PEM files, reload on SIGHUP, self-signed for trying out).
//! - [`outbound`]: the HTTP client for calls to partners: signing and the address policy.
//! - [`validation`]: doctype schemas, compiled and cached, and the checks of a payload.
//! - [`net`]: address ranges.
//! - [`secrets`]: API keys, tokens and signing secrets, from the OS random source.
//! - [`ui`]: the admin web UI's embedded files, served under `/ui/`.
//!
//! [`run`] takes a bound listener and a shutdown future, so tests start the real server on
//! `127.0.0.1:0` exactly as `waybill serve` does.

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod metrics;
pub mod model;
pub mod net;
pub mod notify;
pub mod outbound;
pub mod secrets;
pub mod server;
pub mod store;
pub mod tls;
pub mod ui;
pub mod validation;
pub mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::model::Env;
use crate::store::{MessageRec, Store};

/// The notifiers long polls wait on, per environment, receiver and doctype filter (`None`:
/// polls that take every doctype).
type Wakeups = HashMap<WakeKey, Arc<Notify>>;
type WakeKey = (Env, String, Option<String>);

/// Everything a handler or worker needs, passed explicitly (no globals). One `Arc`: the
/// route filters clone it for every request, so a clone is one reference count, not one
/// per shared part. Its parts are reached through `Deref`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub store: Arc<Store>,
    pub config: Arc<Config>,
    pub admin_token_hash: Arc<[u8; 32]>,
    pub limiter: Arc<api::RateLimiter>,
    /// Failed authentications per source address: the brute-force guard.
    pub auth_failures: Arc<api::AuthFailures>,
    /// Failed admin logins, per username and source address.
    pub logins: Arc<api::admin_auth::LoginLimiter>,
    /// Mints and checks partner tokens (JWT).
    pub tokens: Arc<api::TokenKeys>,
    /// Idempotency keys whose first call is still running.
    pub in_flight: Arc<api::idempotency::InFlight>,
    /// The background workers' run slots; wakes them when a job is queued.
    pub jobs: Arc<worker::background::JobSlots>,
    /// Calls whose caller waits for the outcome, handed to the delivery engine.
    pub direct_calls: Arc<worker::delivery::DirectCalls>,
    /// The doctype schemas, compiled.
    pub schemas: Arc<validation::Schemas>,
    /// Long polls waiting per (environment, receiver).
    wakeups: Arc<Mutex<Wakeups>>,
    disk_low: Arc<AtomicBool>,
    workers_running: Arc<AtomicBool>,
    /// The background loops, for readiness.
    pub liveness: worker::Liveness,
    /// The main listener's connections.
    pub connections: Arc<server::ConnStats>,
    /// Turns true when the server begins shutting down; long polls answer at once then.
    pub shutdown: watch::Receiver<bool>,
    /// What `/metrics` shows.
    pub metrics: Arc<metrics::Metrics>,
    /// When this process began serving, for the uptime.
    pub started: std::time::Instant,
    /// The time retention is judged by (the system clock unless moved on purpose).
    pub clock: clock::Clock,
}

impl AppState {
    /// What a long poll of `receiver` (taking only `doctype`, if given) waits on. The
    /// notifier is dropped from the map with the last poll that holds it.
    pub fn wakeup(&self, env: Env, receiver: &str, doctype: Option<&str>) -> Wakeup {
        let key = (env, receiver.to_owned(), doctype.map(str::to_owned));
        let mut map = self.wakeups.lock().unwrap_or_else(|p| p.into_inner());
        let notify = Arc::clone(map.entry(key.clone()).or_default());
        Wakeup {
            notify,
            key,
            map: Arc::clone(&self.wakeups),
        }
    }

    /// After an intake stored `messages`: counts them and wakes the polls waiting for them.
    pub fn accepted(&self, env: Env, messages: &[MessageRec]) {
        let invalid = messages
            .iter()
            .filter(|m| m.status == model::Status::Invalid)
            .count() as u64;
        self.metrics
            .accepted(messages.len() as u64 - invalid, invalid);
        self.wake_receivers(env, messages);
    }

    /// Tells waiting long polls about new transmissions: per transmission, one poll that
    /// takes every doctype and one that takes its doctype are woken. Not every poll of the
    /// receiver: the rest would only find the items taken and go back to sleep.
    pub fn wake_receivers(&self, env: Env, messages: &[MessageRec]) {
        let map = self.wakeups.lock().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return;
        }
        // An invalid message is in no queue: nothing to wake a poll for.
        for m in messages
            .iter()
            .filter(|m| m.status != model::Status::Invalid)
        {
            for t in &m.transmissions {
                let mut key = (env, t.receiver.clone(), None);
                if let Some(n) = map.get(&key) {
                    n.notify_one();
                }
                key.2 = Some(m.doctype.clone());
                if let Some(n) = map.get(&key) {
                    n.notify_one();
                }
            }
        }
    }

    /// Whether free disk space is below `store.min_free_mb`.
    pub fn disk_low(&self) -> bool {
        self.disk_low.load(Ordering::Relaxed)
    }

    /// Store open and healthy, workers running, not shutting down.
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_empty()
    }

    /// What keeps the appliance from being ready, in words; empty when it is ready.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if !self.store.writer_alive() {
            why.push("the store writer has stopped".to_owned());
        } else if !self.store.healthy() {
            why.push("the store refuses writes after a failed write".to_owned());
        }
        if !self.workers_running.load(Ordering::Relaxed) {
            why.push("the workers are not running".to_owned());
        }
        for name in self.liveness.stopped() {
            why.push(format!("worker {name} has stopped"));
        }
        if *self.shutdown.borrow() {
            why.push("shutting down".to_owned());
        }
        why
    }
}

/// A long poll's notifier; removes it from the map when the last poll using it ends.
pub struct Wakeup {
    pub notify: Arc<Notify>,
    key: WakeKey,
    map: Arc<Mutex<Wakeups>>,
}

impl Drop for Wakeup {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // Clones are only made under this lock: two means the map's and this one.
        if map
            .get(&self.key)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify) && Arc::strong_count(n) == 2)
        {
            map.remove(&self.key);
        }
    }
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open the store in {dir}: {source}")]
    Store {
        dir: String,
        source: store::StoreError,
    },
    #[error("admin token file {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(tls::TlsError),
    #[error("{0}")]
    Other(String),
}

/// Reads `<data dir>/admin.token`, creating it (mode 0600) with a random token on first start.
/// Returns the token and whether it was created now.
pub fn ensure_admin_token(data_dir: &Path) -> Result<(String, bool), std::io::Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_owned(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = format!("wba_{}", secrets::random_token(32)?);
    let tmp = data_dir.join("admin.token.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok((token, true))
}

/// Runs the appliance on `listener` until `shutdown` completes: opens the store, starts
/// the workers, serves HTTP; then lets in-flight requests finish, stops the workers and
/// flushes the store.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    run_with_clock(config, listener, shutdown, clock::Clock::system()).await
}

/// [`run`] with the clock that retention is judged by. An embedding process (the tests)
/// keeps a clone and may move it forward to age what is stored.
pub async fn run_with_clock(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    clock: clock::Clock,
) -> Result<(), RunError> {
    let certs = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            tls::CertStore::open(cert, key).map_err(RunError::Tls)?,
        )),
        _ => None,
    };
    let tls_config = certs
        .as_ref()
        .map(tls::CertStore::server_config)
        .transpose()
        .map_err(RunError::Tls)?;
    let data_dir = config.server.data_dir.clone();
    let (token, created) = ensure_admin_token(&data_dir).map_err(|source| RunError::Token {
        path: data_dir.join("admin.token").display().to_string(),
        source,
    })?;
    if created {
        tracing::info!(path = %data_dir.join("admin.token").display(), "wrote a new admin token");
    } else {
        tracing::info!(path = %data_dir.join("admin.token").display(), "admin token");
    }
    let (cache_mb, writer_queue) = (config.store.cache_mb, config.store.writer_queue);
    let dir = data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open_with(&dir, cache_mb, writer_queue))
        .await
        .map_err(|e| RunError::Other(format!("store open task failed: {e}")))?
        .map_err(|source| RunError::Store {
            dir: data_dir.display().to_string(),
            source,
        })?;
    store.set_reference_window_ms(
        i64::try_from(config.retention.days)
            .unwrap_or(i64::MAX)
            .saturating_mul(86_400_000),
    );
    let schemas = validation::Schemas::load(&store).map_err(|source| RunError::Store {
        dir: data_dir.display().to_string(),
        source,
    })?;
    let store = Arc::new(store);

    let (stop_tx, stop_rx) = watch::channel(false);
    let jobs_concurrency = config.background.concurrency;
    let direct_per_endpoint = config.delivery.endpoint_concurrency.saturating_mul(2);
    let state = AppState(Arc::new(Shared {
        store: Arc::clone(&store),
        limiter: Arc::new(api::RateLimiter::new(config.limits.partner_rps)),
        auth_failures: Arc::new(api::AuthFailures::new(
            config.limits.auth_failures_per_minute,
        )),
        logins: Arc::default(),
        tokens: Arc::new(api::TokenKeys::new(
            &store.token_key().secret,
            &config.auth.token_issuer,
            config.auth.token_ttl_seconds,
        )),
        config: Arc::new(config),
        admin_token_hash: Arc::new(api::hash_admin_token(&token)),
        in_flight: Arc::default(),
        jobs: Arc::new(worker::background::JobSlots::new(jobs_concurrency)),
        direct_calls: Arc::new(worker::delivery::DirectCalls::new(direct_per_endpoint)),
        schemas: Arc::new(schemas),
        wakeups: Arc::default(),
        disk_low: Arc::default(),
        workers_running: Arc::default(),
        liveness: worker::Liveness::default(),
        connections: Arc::default(),
        shutdown: stop_rx,
        metrics: Arc::default(),
        started: std::time::Instant::now(),
        clock,
    }));
    let filling = Arc::clone(&store);
    tokio::task::spawn_blocking(move || match filling.load_answers() {
        Ok(n) => tracing::debug!(answers = n, "stored idempotency answers indexed"),
        // Left unfilled, calls with an Idempotency-Key are refused with 503: taking "not
        // found" for an answer could run a call twice.
        Err(e) => tracing::error!(error = %e, "cannot read the stored idempotency answers"),
    });
    let m = Arc::clone(&state.metrics);
    store.observe_writer(Box::new(move |group, flush| m.writer_round(group, flush)));

    let worker::Workers {
        delivery,
        others: mut workers,
    } = worker::spawn_all(state.clone(), Arc::clone(&state.disk_low));
    if let Some(certs) = &certs {
        workers.push(tokio::spawn(reload_on_sighup(Arc::clone(certs))));
    }
    let addr = listener
        .local_addr()
        .map_err(|e| RunError::Other(format!("listener: {e}")))?;
    let mut limits = server::Limits::from_config(&state.config.server);
    if let Some(room) = server::connection_room(state.config.delivery.concurrency) {
        if room < limits.max_connections {
            tracing::info!(
                configured = limits.max_connections,
                allowed = room,
                "server.max_connections lowered to what the open-file limit leaves room for"
            );
            limits.max_connections = room;
        }
    }
    if let Some(redirect) = state.config.server.redirect_http {
        let plain = tokio::net::TcpListener::bind(redirect).await.map_err(|e| {
            RunError::Other(format!("cannot listen on {redirect} for redirects: {e}"))
        })?;
        let mut stopping = state.shutdown.clone();
        let until_stopped = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        let routes = api::redirect_to_https(addr.port());
        workers.push(tokio::spawn(server::serve(
            routes,
            plain,
            None,
            limits,
            Arc::default(),
            None,
            until_stopped,
        )));
        tracing::info!(%redirect, "redirecting plain HTTP to HTTPS");
    }
    state.workers_running.store(true, Ordering::Relaxed);

    let scheme = if tls_config.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(%addr, scheme, data_dir = %state.config.server.data_dir.display(), "waybill serving");
    let routes = api::routes(state.clone());
    // The listener is bound, so connections made from now on are served.
    notify::ready(&format!("serving {scheme} on {addr}"));
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        notify::stopping();
        let _ = stop_tx.send(true);
    };
    let connections = Arc::clone(&state.connections);
    let metrics = Some(Arc::clone(&state.metrics));
    server::serve(
        routes,
        listener,
        tls_config,
        limits,
        connections,
        metrics,
        signal,
    )
    .await;

    state.workers_running.store(false, Ordering::Relaxed);
    // The engine stops on the shutdown signal and lets its calls under way end (bounded by
    // the attempt timeout); the margin covers recording them.
    let grace = std::time::Duration::from_secs(state.config.delivery.timeout_seconds + 5);
    let abort = delivery.abort_handle();
    if tokio::time::timeout(grace, delivery).await.is_err() {
        abort.abort();
    }
    for w in workers {
        w.abort();
        let _ = w.await;
    }
    tokio::task::spawn_blocking(move || store.close())
        .await
        .map_err(|e| RunError::Other(format!("store close task failed: {e}")))?;
    tracing::info!("store flushed; stopped");
    Ok(())
}

/// Re-reads the certificate files on every SIGHUP; a bad pair is logged and the old one kept.
async fn reload_on_sighup(certs: Arc<tls::CertStore>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; certificates will not be reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        match certs.reload() {
            Ok(()) => tracing::info!("TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload failed; keeping the old one")
            }
        }
    }
}
