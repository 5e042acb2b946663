//! Load generator for the Waybill server.
//!
//! Usage: `cargo bench --bench load -- [options]`
//!
//! It starts `waybill serve` on a fresh data directory (or talks to an already
//! running server given with `--server`), provisions two partners and a route,
//! and then measures:
//!
//! * `inbound`: intake throughput and latency of 1 KiB messages,
//! * `pollack`: how fast a receiver can drain its queue with poll + ack,
//! * `memory`:  resident memory after storing many messages, and the time a
//!   restart on that data needs until the server is ready again,
//! * `push`:    push delivery (only when named): the server POSTs every
//!   transmission to a receiver inside this process; how many deliveries per
//!   second it reaches, and the intake-to-receiver latency at a fixed rate.
//! * `tracking`: (only when named) tracking searches over a store filled with
//!   `--messages` messages of 10 partners received over 30 days.
//! * `admin`: (only when named) the admin API's message listing and stats over a
//!   store filled as for `tracking`.
//! * `background`: (only when named) background calls: jobs accepted per
//!   second, submit-to-completion latency next to the synchronous call, and
//!   the cost of Idempotency-Key on intake.
//! * `subscriptions`: (only when named) event subscriptions: 10,000 status
//!   changes/s over 100 subscriptions (calls per subscription per window, ids
//!   lost), and intake with 100 subscriptions watching against without.
//!
//! The HTTP client is deliberately minimal (keep-alive HTTP/1.1, requests with
//! Content-Length, responses with Content-Length or chunked bodies) because the
//! generator shares a small machine with the server: every cycle it spends is
//! a cycle the server does not get, so requests are pre-built and buffers are
//! reused instead of pulling in a general-purpose client.
//!
//! With `--tls` the same client speaks HTTPS (tokio-rustls, HTTP/1.1 over
//! ALPN) to a server started with a self-signed certificate; the handshake
//! happens once per keep-alive connection. `--phase compare` measures intake
//! once plain and once over TLS, each against a fresh server.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

mod scenarios;

use scenarios::{
    admin, background, backup, poll_leased, push_slow, retention, subscriptions, tracking,
};

const USAGE: &str = "\
usage: cargo bench --bench load -- [options]

  --duration SECS       measured time per phase (default 10)
  --connections N       connections for the inbound phase and the background
                        and subscriptions intake runs (default 64)
  --phase LIST          comma-separated: inbound, pollack, memory, push,
                        push-slow, poll-leased, background, subscriptions, all
                        (default inbound,pollack; all adds memory, not push,
                        push-slow, poll-leased, background or subscriptions),
                        or compare: inbound plain, then inbound over TLS, each
                        on a fresh server, and the TLS/plain throughput ratio,
                        or tracking: searches over a filled store (alone),
                        or admin: the admin message listing and stats over
                        a filled store (alone), or retention: a month of
                        traffic pruned (data dir before, after, after compact;
                        intake latency with and without pruning; alone),
                        or backup: an online backup of a filled store (MB/s,
                        the writer's pause, intake latency beside it; alone)
  --messages N          messages to store in the memory, tracking and admin phases
                        (default 1000000), in the retention and backup phases (default
                        200000), to push in the push phase (default
                        50000) or to lease in the poll-leased phase (default
                        100000)
  --rate N              messages per second in the push latency run, which
                        lasts --duration (default 1000)
  --tls                 start the server with a self-signed certificate and
                        talk HTTPS (HTTP/1.1 over TLS) to it
  --server URL          use a running server (http://host:port or
                        https://host:port) instead of starting one
  --tls-ca FILE         PEM certificate(s) to trust for an https:// --server
  --admin-token TOKEN   admin token for --server (or WAYBILL_ADMIN_TOKEN)
  --threads N           client runtime threads (default 2)
  --validate            register a 30-property JSON Schema for the intake's
                        doctype first, so every message is validated (run
                        once with and once without to compare)

The push phase starts an HTTP receiver on 127.0.0.1 and sets GLOBEX's pushUrl
to it (the background phase one for its completion webhooks, the subscriptions
phase one for its callbacks); a server we start gets WAYBILL_OUTBOUND__ALLOW=127.0.0.0/8, an external
one must allow loopback targets itself and run on this host.

The server binary is the one cargo built for this package; WAYBILL_BIN overrides it.";

const SENDER: &str = "ACME";
const RECEIVER: &str = "GLOBEX";
const INBOUND_PATH: &str = "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order&version=1";
const POLL_PATH: &str = "/api/v1/transmissions?limit=100&lease=60";
const ACK_PATH: &str = "/api/v1/transmissions/status/";
const ACK_BODY: &[u8] = br#"{"status":"processed"}"#;
const BODY_SIZE: usize = 1024;
const SEQ_DIGITS: usize = 16;

/// Long enough that a server stalled by a compaction or fsync is reported as
/// slow rather than failing, short enough that a hung server ends the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// A restart over a million stored messages may rebuild indexes; give it room.
const RESTART_TIMEOUT: Duration = Duration::from_secs(300);
const WARMUP: Duration = Duration::from_secs(1);
/// Backfills (pollack top-up and the memory phase) are about volume, not about
/// the connection count being measured, so they use a fixed width.
const FILL_CONNECTIONS: usize = 64;
const POLLERS: usize = 8;
const ACK_LANES: usize = 8;
const BACKLOG_PER_SECOND: u64 = 20_000;
const BACKLOG_CAP: u64 = 400_000;
const PROGRESS_EVERY: u64 = 100_000;
const TLS_CERT_ENV: &str = "WAYBILL_SERVER__TLS_CERT";
const TLS_KEY_ENV: &str = "WAYBILL_SERVER__TLS_KEY";
const OUTBOUND_ALLOW_ENV: &str = "WAYBILL_OUTBOUND__ALLOW";
/// Intake width of the push throughput run.
const PUSH_CONNECTIONS: usize = 64;
const PUSH_MESSAGES: u64 = 50_000;
/// How long to wait for deliveries after the last message was sent.
const PUSH_WAIT: Duration = Duration::from_secs(120);
const PUSH_PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Paced senders in the latency run: one per this many messages per second.
const PACED_PER_CONNECTION: u64 = 125;
/// What the receiver expects after `/hook`: the server adds these parameters.
const HOOK_QUERY: &[u8] = b"?sender=ACME&receiver=GLOBEX&doctype=order&version=1";
const HOOK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

// ---------------------------------------------------------------------------
// Options

struct Options {
    duration: Duration,
    connections: usize,
    inbound: bool,
    pollack: bool,
    memory: bool,
    push: bool,
    /// A healthy receiver's push latency next to a slow one.
    push_slow: bool,
    /// A poll's latency beside many leased items.
    poll_leased: bool,
    /// Background jobs and Idempotency-Key.
    background: bool,
    /// Event subscriptions: batching under status changes, and intake beside them.
    subscriptions: bool,
    /// `--messages`; each phase that uses it has its own default.
    messages: Option<u64>,
    /// Messages per second in the push latency run.
    rate: u64,
    /// Inbound plain, then inbound over TLS (`--phase compare`).
    compare: bool,
    /// Searches over a filled store (`--phase tracking`), alone.
    tracking: bool,
    /// The admin listing and stats over a filled store (`--phase admin`), alone.
    admin: bool,
    /// A month of traffic pruned (`--phase retention`), alone.
    retention: bool,
    /// An online backup beside intake (`--phase backup`), alone.
    backup: bool,
    /// Serve (and talk) HTTPS when starting our own server.
    tls: bool,
    tls_ca: Option<PathBuf>,
    server: Option<String>,
    admin_token: Option<String>,
    threads: usize,
    /// Register a schema for the intake's doctype before the phases.
    validate: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        duration: Duration::from_secs(10),
        connections: 64,
        inbound: true,
        pollack: true,
        memory: false,
        push: false,
        push_slow: false,
        poll_leased: false,
        background: false,
        subscriptions: false,
        messages: None,
        rate: 1000,
        compare: false,
        tracking: false,
        admin: false,
        retention: false,
        backup: false,
        tls: false,
        tls_ca: None,
        server: None,
        admin_token: None,
        threads: 2,
        validate: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        // Accept both `--opt value` and `--opt=value`.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args.next().ok_or_else(|| format!("{what} needs a value")),
            }
        };
        match name.as_str() {
            // cargo passes --bench to every harness = false bench binary.
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--duration" => {
                let v = value("--duration")?;
                let secs: f64 = v.parse().map_err(|_| format!("bad --duration {v:?}"))?;
                if !(secs > 0.0 && secs.is_finite()) {
                    return Err(format!("bad --duration {v:?}"));
                }
                o.duration = Duration::from_secs_f64(secs);
            }
            "--connections" => {
                o.connections = parse_count(&value("--connections")?, "--connections")?
            }
            "--messages" => {
                o.messages = Some(parse_count(&value("--messages")?, "--messages")? as u64)
            }
            "--rate" => o.rate = parse_count(&value("--rate")?, "--rate")? as u64,
            "--threads" => o.threads = parse_count(&value("--threads")?, "--threads")?,
            "--tls" => {
                if inline.is_some() {
                    return Err("--tls takes no value".into());
                }
                o.tls = true;
            }
            "--validate" => {
                if inline.is_some() {
                    return Err("--validate takes no value".into());
                }
                o.validate = true;
            }
            "--tls-ca" => o.tls_ca = Some(PathBuf::from(value("--tls-ca")?)),
            "--server" => o.server = Some(value("--server")?),
            "--admin-token" => o.admin_token = Some(value("--admin-token")?),
            "--phase" => {
                let v = value("--phase")?;
                o.inbound = false;
                o.pollack = false;
                o.memory = false;
                o.push = false;
                o.push_slow = false;
                o.poll_leased = false;
                o.background = false;
                o.subscriptions = false;
                o.compare = false;
                o.tracking = false;
                o.admin = false;
                o.retention = false;
                o.backup = false;
                for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    match p {
                        "compare" => o.compare = true,
                        "tracking" => o.tracking = true,
                        "admin" => o.admin = true,
                        "retention" => o.retention = true,
                        "backup" => o.backup = true,
                        "inbound" => o.inbound = true,
                        "pollack" => o.pollack = true,
                        "memory" => o.memory = true,
                        "push" => o.push = true,
                        "push-slow" => o.push_slow = true,
                        "poll-leased" => o.poll_leased = true,
                        "background" => o.background = true,
                        "subscriptions" => o.subscriptions = true,
                        "all" => {
                            o.inbound = true;
                            o.pollack = true;
                            o.memory = true;
                        }
                        _ => return Err(format!("unknown phase {p:?}")),
                    }
                }
                let others = o.inbound || o.pollack || o.memory || o.push || o.push_slow;
                let others = others || o.poll_leased || o.background || o.subscriptions;
                if o.tracking && (others || o.compare) {
                    return Err(
                        "--phase tracking starts its own server; name no other phase".into(),
                    );
                }
                if o.admin && (others || o.compare || o.tracking) {
                    return Err("--phase admin starts its own server; name no other phase".into());
                }
                if o.retention && (others || o.compare || o.tracking || o.admin) {
                    return Err(
                        "--phase retention fills a store of its own; name no other phase".into(),
                    );
                }
                let alone = o.compare || o.tracking || o.admin || o.retention;
                if o.backup && (others || alone) {
                    return Err(
                        "--phase backup fills a store of its own; name no other phase".into(),
                    );
                }
                if !(others || alone || o.backup) {
                    return Err("--phase names no phase".into());
                }
                if o.compare && others {
                    return Err("--phase compare runs inbound itself; name no other phase".into());
                }
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    if o.compare {
        // Both runs measure intake; each session below starts its own server.
        o.inbound = true;
        if o.server.is_some() {
            return Err("--phase compare starts its own servers; drop --server".into());
        }
    }
    if o.server.is_some() && o.tls {
        return Err("--tls starts a server with its own certificate; \
                    for --server give an https:// URL (and --tls-ca)"
            .into());
    }
    let https_server = o
        .server
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"));
    if o.tls_ca.is_some() && !https_server {
        return Err("--tls-ca is only for --server https://...".into());
    }
    if https_server && o.tls_ca.is_none() {
        return Err(
            "--server https://... needs --tls-ca FILE (the CA or certificate to trust)".into(),
        );
    }
    Ok(o)
}

fn parse_count(v: &str, what: &str) -> Result<usize, String> {
    let v = v.replace('_', "");
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("bad {what} {v:?}")),
    }
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("load: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(run(opts));
    // Drop the runtime before exiting so no task outlives the server handle.
    drop(rt);
    if let Err(e) = result {
        eprintln!("load: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// Orchestration

/// Everything the workers need; shared read-only.
struct Ctx {
    target: Target,
    sender_key: String,
    receiver_key: String,
}

/// Where and how to connect: the socket address, the Host header, and the
/// TLS client setup when the server speaks HTTPS.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    host: String,
    tls: Option<TlsClient>,
}

impl Target {
    /// Inserted into the phase lines so plain and TLS runs are told apart.
    fn label(&self) -> &'static str {
        if self.tls.is_some() {
            "https "
        } else {
            ""
        }
    }
}

#[derive(Clone)]
struct TlsClient {
    connector: TlsConnector,
    /// SNI and the name the certificate is checked against.
    name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts exactly the certificates in `ca_pem` and offers only HTTP/1.1.
    fn new(ca_pem: &Path, name: &str) -> Result<TlsClient, String> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca_pem)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", ca_pem.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate found", ca_pem.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca_pem.display()))?;
        }
        // No process-wide provider is installed, so name one explicitly.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| format!("TLS server name {name:?}: {e}"))?;
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

async fn run(opts: Options) -> Result<(), String> {
    if opts.tracking {
        if opts.server.is_some() || opts.tls {
            return Err(
                "--phase tracking fills a store of its own; drop --server and --tls".into(),
            );
        }
        return tracking::run(opts.messages.unwrap_or(1_000_000)).await;
    }
    if opts.admin {
        if opts.server.is_some() || opts.tls {
            return Err("--phase admin fills a store of its own; drop --server and --tls".into());
        }
        return admin::run(opts.messages.unwrap_or(1_000_000)).await;
    }
    if opts.retention {
        if opts.server.is_some() || opts.tls {
            return Err(
                "--phase retention fills a store of its own; drop --server and --tls".into(),
            );
        }
        return retention::run(opts.messages.unwrap_or(200_000)).await;
    }
    if opts.backup {
        if opts.server.is_some() || opts.tls {
            return Err("--phase backup fills a store of its own; drop --server and --tls".into());
        }
        return backup::run(opts.messages.unwrap_or(200_000)).await;
    }
    if !opts.compare {
        session(&opts, opts.tls).await?;
        return Ok(());
    }
    let plain = session(&opts, false).await?;
    let tls = session(&opts, true).await?;
    println!("inbound  {}", plain.line);
    println!("inbound  {}", tls.line);
    if plain.rate > 0.0 {
        println!("tls/plain ratio: {:.0} %", 100.0 * tls.rate / plain.rate);
    } else {
        println!("tls/plain ratio: n/a (no plain requests succeeded)");
    }
    Ok(())
}

/// What the inbound phase measured, for `--phase compare`.
#[derive(Default)]
struct InboundResult {
    line: String,
    rate: f64,
}

/// One server (ours or external) and the selected phases against it. `tls`
/// chooses HTTPS for a server we start; an external one goes by its URL.
async fn session(opts: &Options, tls: bool) -> Result<InboundResult, String> {
    // `server` lives until the end of this function so that any early return
    // still shuts the child down (see Drop for Server).
    let mut server: Option<Server> = None;
    let (target, admin_token) = match &opts.server {
        Some(url) => {
            let target = resolve(url, opts.tls_ca.as_deref()).await?;
            let token = opts
                .admin_token
                .clone()
                .or_else(|| std::env::var("WAYBILL_ADMIN_TOKEN").ok())
                .ok_or("--server needs --admin-token (or WAYBILL_ADMIN_TOKEN)")?;
            wait_for_ok(&target, "/healthz", Instant::now() + STARTUP_TIMEOUT, None).await?;
            println!("server   {url} (external)");
            (target, token)
        }
        None => {
            // Only pushes, job webhooks and subscription calls need loopback targets; other
            // runs keep the server's default policy.
            let pushes = opts.push || opts.push_slow || opts.background || opts.subscriptions;
            let s = server.insert(Server::start(server_binary(), tls, pushes)?);
            let deadline = Instant::now() + STARTUP_TIMEOUT;
            let target = s.target();
            wait_for_ok(&target, "/healthz", deadline, Some(&mut *s)).await?;
            let token = s.admin_token(deadline).await?;
            // /healthz only says the listener is up; provisioning is more
            // reliable once the server also reports ready.
            wait_for_ok(&target, "/readyz", deadline, Some(&mut *s)).await?;
            println!(
                "server   {}{} pid {} data {}",
                if tls { "https://" } else { "" },
                s.addr,
                s.pid().unwrap_or(0),
                s.data_dir.display()
            );
            (target, token)
        }
    };
    if target.tls.is_some() {
        println!("tls      {}", tls_summary(&target).await?);
    }

    let ctx = Arc::new(provision(target, &admin_token).await?);
    if opts.validate {
        register_schema(&ctx.target, &admin_token).await?;
    }
    let label = ctx.target.label();
    let mut result = InboundResult::default();
    // Messages stored for the receiver and not yet acknowledged by us.
    let mut backlog: u64 = 0;

    if opts.inbound {
        let t = run_inbound_timed(&ctx, opts.connections, opts.duration).await;
        backlog += t.created;
        let secs = opts.duration.as_secs_f64();
        result.rate = t.ok as f64 / secs;
        result.line = format!(
            "{label}{} conns {:.1}s: {} ok, {} err, {:.0} req/s, {}",
            opts.connections,
            secs,
            t.ok,
            t.err,
            result.rate,
            latency_summary(
                t.lat,
                &[
                    ("p50", 0.50),
                    ("p90", 0.90),
                    ("p99", 0.99),
                    ("p99.9", 0.999)
                ],
                true
            )
        );
        println!("inbound  {}", result.line);
        print_first_error(&t.first_err);
        check_alive(&mut server, "inbound")?;
    }

    if opts.pollack {
        let target =
            ((opts.duration.as_secs_f64() * BACKLOG_PER_SECOND as f64) as u64).min(BACKLOG_CAP);
        if backlog < target {
            let need = target - backlog;
            let started = Instant::now();
            let t = run_inbound_count(&ctx, FILL_CONNECTIONS, need, None).await;
            backlog += t.created;
            println!(
                "pollack  backlog top-up: {} sent in {:.1}s, {} err (backlog {})",
                t.created,
                started.elapsed().as_secs_f64(),
                t.err,
                backlog
            );
            print_first_error(&t.first_err);
            check_alive(&mut server, "the backlog top-up")?;
        }
        let r = run_pollack(&ctx, opts.duration).await;
        let secs = r.elapsed.as_secs_f64().max(1e-9);
        println!(
            "pollack  {label}{} pollers x {} ack conns {:.1}s{}: {} acked, {:.0} tx/s, {} polls, poll {}, ack {}, {} err",
            POLLERS,
            ACK_LANES,
            secs,
            if r.drained { " (backlog drained)" } else { "" },
            r.acked,
            r.acked as f64 / secs,
            r.polls.ok + r.polls.err,
            latency_summary(r.polls.lat, &[("p50", 0.50), ("p99", 0.99)], false),
            latency_summary(r.acks.lat, &[("p50", 0.50), ("p99", 0.99)], false),
            r.polls.err + r.acks.err
        );
        print_first_error(&r.polls.first_err);
        print_first_error(&r.acks.first_err);
        check_alive(&mut server, "pollack")?;
    }

    // Before memory: its restart moves the server to a new port, and the
    // million stored messages would not be what push is about.
    if opts.push {
        run_push(&ctx, &admin_token, &mut server, opts).await?;
        check_alive(&mut server, "push")?;
    }
    if opts.push_slow {
        push_slow::run(&ctx, &admin_token, opts.duration).await?;
        check_alive(&mut server, "push-slow")?;
    }
    if opts.poll_leased {
        let n = opts.messages.unwrap_or(100_000);
        poll_leased::run(&ctx, &admin_token, n).await?;
        check_alive(&mut server, "poll-leased")?;
    }
    if opts.background {
        background::run(&ctx, &admin_token, opts.connections, opts.duration).await?;
        check_alive(&mut server, "background")?;
    }
    if opts.subscriptions {
        let pid = server.as_ref().and_then(Server::pid);
        subscriptions::run(&ctx, &admin_token, opts.connections, opts.duration, pid).await?;
        check_alive(&mut server, "subscriptions")?;
    }

    if opts.memory {
        run_memory(&ctx, server.as_mut(), opts.messages.unwrap_or(1_000_000)).await?;
    }

    if let Some(s) = server.as_mut() {
        let status = s.stop().await?;
        println!("server   stopped: {status}");
    }
    Ok(result)
}

/// Protocol, cipher suite and ALPN of one handshake, and how long handshakes
/// take (median of a few, TCP connect included): the cost TLS adds once per
/// keep-alive connection.
async fn tls_summary(target: &Target) -> Result<String, String> {
    let mut times = Vec::new();
    let mut info = String::new();
    for _ in 0..9 {
        let started = Instant::now();
        let c = timeout(REQUEST_TIMEOUT, Conn::connect(target))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
        times.push(micros(started.elapsed()));
        if let Stream::Tls(s) = &c.stream {
            let (_, session) = s.get_ref();
            let version = session.protocol_version();
            let suite = session.negotiated_cipher_suite().map(|cs| cs.suite());
            info = format!(
                "{} {}, ALPN {}",
                version.map_or("?".into(), |v| format!("{v:?}")),
                suite.map_or("?".into(), |c| format!("{c:?}")),
                session
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_else(|| "none".into())
            );
        }
    }
    times.sort_unstable();
    Ok(format!(
        "{info}, handshake {} (median of {})",
        fmt_ms(times[times.len() / 2]),
        times.len()
    ))
}

/// A crashed server makes every later number meaningless (all errors), so
/// stop there and show why it died.
fn check_alive(server: &mut Option<Server>, phase: &str) -> Result<(), String> {
    match server.as_mut() {
        Some(s) => match s.exited() {
            Some(status) => Err(format!(
                "server exited during {phase} ({status})\n{}",
                s.log_tail()
            )),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WAYBILL_BIN") {
        return PathBuf::from(p);
    }
    // Cargo sets this when building benches; the fallback lets the file be
    // compiled as a plain binary too.
    PathBuf::from(option_env!("CARGO_BIN_EXE_waybill").unwrap_or("target/release/waybill"))
}

/// The target for `--server URL`; https:// URLs trust only `tls_ca`.
async fn resolve(url: &str, tls_ca: Option<&Path>) -> Result<Target, String> {
    let (rest, https) = match url.split_once("://") {
        Some(("http", rest)) => (rest, false),
        Some(("https", rest)) => (rest, true),
        Some((scheme, _)) => return Err(format!("--server: unsupported scheme {scheme:?}")),
        None => (url, false),
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("--server: no host in {url:?}"));
    }
    // "[::1]" ends in "1]", which is not a port, so IPv6 literals work too.
    let (name, with_port) = match authority
        .rsplit_once(':')
        .filter(|(_, p)| p.parse::<u16>().is_ok())
    {
        Some((name, _)) => (name, authority.to_string()),
        None => (
            authority,
            format!("{authority}:{}", if https { 443 } else { 80 }),
        ),
    };
    let mut addrs = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| format!("--server: cannot resolve {with_port}: {e}"))?;
    let addr = addrs
        .next()
        .ok_or_else(|| format!("--server: {with_port} resolves to nothing"))?;
    let tls = match (https, tls_ca) {
        (false, _) => None,
        (true, Some(ca)) => {
            let name = name.trim_start_matches('[').trim_end_matches(']');
            Some(TlsClient::new(ca, name)?)
        }
        (true, None) => return Err("--server https://... needs --tls-ca FILE".into()),
    };
    Ok(Target {
        addr,
        host: authority.to_string(),
        tls,
    })
}

/// Polls `path` until it answers 200. With a server handle it also notices a
/// child that died, which otherwise would look like a slow start.
async fn wait_for_ok(
    target: &Target,
    path: &str,
    deadline: Instant,
    mut server: Option<&mut Server>,
) -> Result<(), String> {
    let req = build_request("GET", path, &target.host, &[], b"");
    let mut last: String;
    loop {
        if let Some(s) = server.as_deref_mut() {
            if let Some(status) = s.exited() {
                return Err(format!(
                    "server exited during startup ({status})\n{}",
                    s.log_tail()
                ));
            }
        }
        match one_shot(target, &req, Duration::from_secs(2)).await {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => last = format!("{path} answered {status}: {}", snippet(&body)),
            // An untrusted certificate or a wrong name will not go away by
            // waiting for the server.
            Err(e) if is_tls_error(&e) => return Err(format!("{path}: TLS: {e}")),
            Err(e) => last = format!("{path}: {e}"),
        }
        if Instant::now() >= deadline {
            let log = server.map(|s| s.log_tail()).unwrap_or_default();
            return Err(format!("server not up in time: {last}\n{log}"));
        }
        sleep(Duration::from_millis(10)).await;
    }
}

fn is_tls_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

/// Sends one request on a fresh connection; for control traffic, not load.
async fn one_shot(target: &Target, req: &[u8], limit: Duration) -> io::Result<(u16, Vec<u8>)> {
    let fut = async {
        let mut c = Conn::connect(target).await?;
        let status = c.request(req).await?;
        Ok((status, std::mem::take(&mut c.body)))
    };
    match timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "request timed out")),
    }
}

async fn admin_post(
    target: &Target,
    token: &str,
    path: &str,
    body: &Value,
) -> Result<(u16, Value), String> {
    admin_call(target, token, "POST", path, Some(body)).await
}

/// One admin API call; a JSON body when given, the answer parsed as JSON
/// (or kept as a string when it is not).
async fn admin_call(
    target: &Target,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let auth = format!("Bearer {token}");
    let req = match body {
        Some(body) => build_request(
            method,
            path,
            &target.host,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        ),
        None => build_request(method, path, &target.host, &[("Authorization", &auth)], b""),
    };
    let (status, resp) = one_shot(target, &req, REQUEST_TIMEOUT)
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let v = serde_json::from_slice(&resp).unwrap_or_else(|_| Value::String(snippet(&resp)));
    Ok((status, v))
}

async fn provision(target: Target, token: &str) -> Result<Ctx, String> {
    // Against an external server these may already exist from an earlier run;
    // that is fine as long as the keys can be issued afterwards.
    for (code, name) in [(SENDER, "Acme"), (RECEIVER, "Globex")] {
        let (status, v) = admin_post(
            &target,
            token,
            "/admin/api/partners",
            &json!({"code": code, "name": name}),
        )
        .await?;
        if status == 409 {
            println!("setup    partner {code} already exists");
        } else if !is_success(status) {
            // Not fatal yet: issuing the key below is the real test.
            eprintln!("setup    partner {code}: {status} {v}");
        }
    }
    let mut keys = Vec::new();
    for code in [SENDER, RECEIVER] {
        let path = format!("/admin/api/partners/{code}/keys");
        let (status, v) = admin_post(&target, token, &path, &json!({})).await?;
        let key = v
            .get("data")
            .and_then(|d| d.get("key"))
            .and_then(Value::as_str)
            .filter(|_| is_success(status));
        match key {
            Some(k) => keys.push(k.to_string()),
            None => return Err(format!("issuing a key for {code} failed: {status} {v}")),
        }
    }
    let (status, v) = admin_post(
        &target,
        token,
        "/admin/api/routes",
        &json!({"sender": SENDER, "receiver": RECEIVER, "doctype": "*"}),
    )
    .await?;
    if status == 409 {
        println!("setup    route {SENDER}->{RECEIVER} already exists");
    } else if !is_success(status) {
        // A route left over from an earlier run may be reported differently
        // than 409; a missing one shows up as inbound errors anyway.
        eprintln!("setup    route {SENDER}->{RECEIVER}: {status} {v}");
    }
    let receiver_key = keys.pop().unwrap_or_default();
    let sender_key = keys.pop().unwrap_or_default();
    Ok(Ctx {
        target,
        sender_key,
        receiver_key,
    })
}

/// Registers a JSON Schema of 30 properties for the intake's doctype (`order`, every
/// version) that the intake body passes: its four fields with a constant, a pattern and
/// lengths, and 26 optional ones, with no others allowed.
async fn register_schema(target: &Target, token: &str) -> Result<(), String> {
    let mut props = serde_json::Map::new();
    props.insert("type".into(), json!({"const": "order"}));
    props.insert(
        "source".into(),
        json!({"type": "string", "minLength": 1, "maxLength": 64}),
    );
    props.insert(
        "seq".into(),
        json!({"type": "string", "pattern": "^[0-9]{16}$"}),
    );
    props.insert("pad".into(), json!({"type": "string", "maxLength": 1024}));
    for i in 0..26 {
        props.insert(
            format!("field{i:02}"),
            json!({"type": "string", "maxLength": 64}),
        );
    }
    let schema = json!({
        "doctype": "order",
        "version": "*",
        "jsonSchema": {
            "type": "object",
            "required": ["type", "source", "seq"],
            "properties": props,
            "additionalProperties": false
        }
    });
    let (status, v) = admin_post(target, token, "/admin/api/schemas", &schema).await?;
    if !is_success(status) {
        return Err(format!("registering the schema failed: {status} {v}"));
    }
    println!("setup    a 30-property JSON Schema for order: every intake is validated");
    Ok(())
}

// ---------------------------------------------------------------------------
// Server process

struct Server {
    bin: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    addr: SocketAddr,
    /// Self-signed certificate and key the server is started with, and the
    /// client side that trusts just that certificate; `None` for plain HTTP.
    tls: Option<(PathBuf, PathBuf, TlsClient)>,
    /// Started with WAYBILL_OUTBOUND__ALLOW=127.0.0.0/8 so it may push to
    /// the receiver in this process.
    allow_loopback: bool,
    child: Option<Child>,
    // Declared last: fields drop in order, and the directory must outlive
    // the child that Drop stops first.
    _root: tempfile::TempDir,
}

impl Server {
    fn start(bin: PathBuf, tls: bool, allow_loopback: bool) -> Result<Server, String> {
        if !bin.exists() {
            return Err(format!(
                "server binary {} not found (build it, or set WAYBILL_BIN)",
                bin.display()
            ));
        }
        let root = tempfile::Builder::new()
            .prefix("waybill-load-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        // The log sits beside, not inside, the data directory so the server
        // never sees a file it did not create.
        let data_dir = root.path().join("data");
        fs::create_dir(&data_dir).map_err(|e| format!("create {}: {e}", data_dir.display()))?;
        let tls = if tls {
            let hosts = ["localhost".to_string(), "127.0.0.1".to_string()];
            let (cert, key) = waybill::tls::write_self_signed(&root.path().join("tls"), &hosts)
                .map_err(|e| format!("self-signed certificate: {e}"))?;
            let client = TlsClient::new(&cert, "localhost")?;
            Some((cert, key, client))
        } else {
            None
        };
        let mut s = Server {
            bin,
            log_path: root.path().join("server.log"),
            data_dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls,
            allow_loopback,
            child: None,
            _root: root,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<(), String> {
        // A fresh port per spawn: the previous one may linger in TIME_WAIT.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port: {e}"))?
            .port();
        self.addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("open {}: {e}", self.log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("log: {e}"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.addr.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // Per-request logging would turn the benchmark into a logging
        // benchmark; an explicit RUST_LOG from the caller still wins.
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        // Set or cleared explicitly, so a certificate in the caller's
        // environment cannot turn a plain run into a TLS one.
        match &self.tls {
            Some((cert, key, _)) => {
                cmd.env(TLS_CERT_ENV, cert).env(TLS_KEY_ENV, key);
            }
            None => {
                cmd.env_remove(TLS_CERT_ENV).env_remove(TLS_KEY_ENV);
            }
        }
        if self.allow_loopback {
            cmd.env(OUTBOUND_ALLOW_ENV, "127.0.0.0/8");
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// How to reach the current process; the port changes on every spawn.
    fn target(&self) -> Target {
        match &self.tls {
            // The name the certificate and SNI use, on the address we bound.
            Some((_, _, client)) => Target {
                addr: self.addr,
                host: format!("localhost:{}", self.addr.port()),
                tls: Some(client.clone()),
            },
            None => Target {
                addr: self.addr,
                host: self.addr.to_string(),
                tls: None,
            },
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    async fn admin_token(&mut self, deadline: Instant) -> Result<String, String> {
        let path = self.data_dir.join("admin.token");
        loop {
            // The file may be observed half-written; an empty read just retries.
            if let Ok(t) = fs::read_to_string(&path) {
                let t = t.trim();
                if !t.is_empty() {
                    return Ok(t.to_string());
                }
            }
            if let Some(status) = self.exited() {
                return Err(format!("server exited ({status})\n{}", self.log_tail()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not appear\n{}",
                    path.display(),
                    self.log_tail()
                ));
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, so the server takes its graceful path (flush, close the store)
    /// exactly as it would under a service manager.
    async fn stop(&mut self) -> Result<ExitStatus, String> {
        let Some(mut child) = self.child.take() else {
            return Err("server is not running".into());
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        send_sigterm(child.id());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(20)).await,
                _ => {
                    let _ = child.kill();
                    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
                    return Err(format!(
                        "server ignored SIGTERM for 60 s; killed ({status})"
                    ));
                }
            }
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(20);
        if lines.is_empty() {
            return "(server log is empty)".into();
        }
        format!(
            "--- last lines of {} ---\n{}",
            self.log_path.display(),
            lines[from..].join("\n")
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Reached on error paths; never leave a server running behind us.
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                send_sigterm(child.id());
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn send_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status =
        fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn fmt_mb(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) => format!("{:.1} MB", b as f64 / (1024.0 * 1024.0)),
        None => "n/a".into(),
    }
}

// ---------------------------------------------------------------------------
// Statistics

#[derive(Default)]
struct Tally {
    ok: u64,
    err: u64,
    /// Every message the server accepted, including warm-up; the pollack phase
    /// needs to know how much backlog exists, not just what was measured.
    created: u64,
    lat: Vec<u32>,
    first_err: Option<String>,
}

impl Tally {
    fn with_capacity(n: usize) -> Tally {
        Tally {
            lat: Vec::with_capacity(n),
            ..Tally::default()
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.err += other.err;
        self.created += other.created;
        self.lat.extend_from_slice(&other.lat);
        if self.first_err.is_none() {
            self.first_err = other.first_err;
        }
    }

    fn note_error(&mut self, counted: bool, what: impl FnOnce() -> String) {
        if counted {
            self.err += 1;
        }
        if self.first_err.is_none() {
            self.first_err = Some(what());
        }
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

fn latency_summary(mut lat: Vec<u32>, quantiles: &[(&str, f64)], with_max: bool) -> String {
    if lat.is_empty() {
        return "latency n/a".into();
    }
    lat.sort_unstable();
    let mut parts: Vec<String> = quantiles
        .iter()
        .map(|(name, q)| {
            let rank = ((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len());
            format!("{name} {}", fmt_ms(lat[rank - 1]))
        })
        .collect();
    if with_max {
        parts.push(format!("max {}", fmt_ms(lat[lat.len() - 1])));
    }
    parts.join(", ")
}

fn fmt_ms(us: u32) -> String {
    let ms = us as f64 / 1000.0;
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn print_first_error(e: &Option<String>) {
    if let Some(e) = e {
        println!("         first error: {e}");
    }
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

fn snippet(body: &[u8]) -> String {
    let cut = &body[..body.len().min(400)];
    let mut s = String::from_utf8_lossy(cut).replace('\n', " ");
    if body.len() > cut.len() {
        s.push_str("...");
    }
    s
}

// ---------------------------------------------------------------------------
// Inbound load

/// How an inbound worker decides when to stop.
enum Budget {
    /// Run until `end`; only requests started at or after `record_from` count,
    /// so connection setup and cold caches stay out of the numbers.
    Timed { record_from: Instant, end: Instant },
    /// Send until `total` messages are stored. Tickets are handed out with an
    /// atomic counter and returned on failure so the total is exact.
    Count {
        issued: AtomicU64,
        total: u64,
        stored: AtomicU64,
        errors: AtomicU64,
        abort: AtomicBool,
        progress: Option<Instant>,
    },
}

impl Budget {
    fn take(&self) -> bool {
        match self {
            Budget::Timed { end, .. } => Instant::now() < *end,
            Budget::Count {
                issued,
                total,
                abort,
                ..
            } => !abort.load(Ordering::Relaxed) && issued.fetch_add(1, Ordering::Relaxed) < *total,
        }
    }

    fn give_back(&self) {
        if let Budget::Count {
            issued,
            total,
            errors,
            abort,
            ..
        } = self
        {
            issued.fetch_sub(1, Ordering::Relaxed);
            // A dead server must not turn a fixed-count run into an endless one.
            if errors.fetch_add(1, Ordering::Relaxed) + 1 > 1000 + total / 100 {
                abort.store(true, Ordering::Relaxed);
            }
        }
    }

    fn stored(&self) {
        if let Budget::Count {
            stored,
            progress: Some(started),
            ..
        } = self
        {
            let n = stored.fetch_add(1, Ordering::Relaxed) + 1;
            if n % PROGRESS_EVERY == 0 {
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "memory   {n} stored, {secs:.1}s, {:.0} msg/s",
                    n as f64 / secs
                );
            }
        }
    }

    fn counts(&self, start: Instant) -> bool {
        match self {
            Budget::Timed { record_from, .. } => start >= *record_from,
            Budget::Count { .. } => true,
        }
    }
}

/// A 1 KiB JSON object with a fixed-width sequence field, so each request can
/// be made unique by overwriting digits in place rather than re-encoding.
fn inbound_body() -> (Vec<u8>, usize) {
    let pre = br#"{"type":"order","source":"waybill-load","seq":""#;
    let mid = br#"","pad":""#;
    let end = br#""}"#;
    let pad = BODY_SIZE - pre.len() - SEQ_DIGITS - mid.len() - end.len();
    let mut body = Vec::with_capacity(BODY_SIZE);
    body.extend_from_slice(pre);
    body.resize(body.len() + SEQ_DIGITS, b'0');
    body.extend_from_slice(mid);
    body.resize(body.len() + pad, b'x');
    body.extend_from_slice(end);
    debug_assert_eq!(body.len(), BODY_SIZE);
    (body, pre.len())
}

fn put_digits(dst: &mut [u8], mut v: u64) {
    for b in dst.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

async fn run_inbound_timed(ctx: &Arc<Ctx>, conns: usize, duration: Duration) -> Tally {
    let record_from = Instant::now() + WARMUP;
    let budget = Budget::Timed {
        record_from,
        end: record_from + duration,
    };
    run_inbound(ctx, conns, budget).await
}

async fn run_inbound_count(
    ctx: &Arc<Ctx>,
    conns: usize,
    total: u64,
    progress: Option<Instant>,
) -> Tally {
    let budget = Budget::Count {
        issued: AtomicU64::new(0),
        total,
        stored: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        abort: AtomicBool::new(false),
        progress,
    };
    run_inbound(ctx, conns, budget).await
}

async fn run_inbound(ctx: &Arc<Ctx>, conns: usize, budget: Budget) -> Tally {
    let budget = Arc::new(budget);
    let mut set = JoinSet::new();
    for id in 0..conns {
        set.spawn(inbound_worker(ctx.clone(), id as u64, budget.clone()));
    }
    let mut total = Tally::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(t) => total.merge(t),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    total
}

async fn inbound_worker(ctx: Arc<Ctx>, id: u64, budget: Arc<Budget>) -> Tally {
    let (body, seq_in_body) = inbound_body();
    let mut req = build_request(
        "POST",
        INBOUND_PATH,
        &ctx.target.host,
        &[
            ("X-Api-Key", &ctx.sender_key),
            ("Content-Type", "application/json"),
        ],
        &body,
    );
    let seq_at = req.len() - BODY_SIZE + seq_in_body;
    let mut t = Tally::with_capacity(16 * 1024);
    let mut conn: Option<Conn> = None;
    let mut n: u64 = 0;
    while budget.take() {
        n += 1;
        put_digits(
            &mut req[seq_at..seq_at + SEQ_DIGITS],
            id * 10_000_000_000 + n,
        );
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(&ctx.target).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    t.note_error(budget.counts(Instant::now()), || format!("connect: {e}"));
                    budget.give_back();
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let start = Instant::now();
        let res = timeout(REQUEST_TIMEOUT, c.request(&req)).await;
        let lat = micros(start.elapsed());
        let counted = budget.counts(start);
        match res {
            Ok(Ok(status)) => {
                if counted {
                    t.lat.push(lat);
                }
                if is_success(status) {
                    t.created += 1;
                    if counted {
                        t.ok += 1;
                    }
                    budget.stored();
                } else {
                    t.note_error(counted, || {
                        format!("inbound {status}: {}", snippet(&c.body))
                    });
                    budget.give_back();
                }
                if !c.keep_alive {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                t.note_error(counted, || format!("inbound: {e}"));
                budget.give_back();
                conn = None;
            }
            Err(_) => {
                t.note_error(counted, || "inbound: timed out".into());
                budget.give_back();
                conn = None;
            }
        }
    }
    t
}

// ---------------------------------------------------------------------------
// Poll + acknowledge

struct PollAck {
    acked: u64,
    polls: Tally,
    acks: Tally,
    elapsed: Duration,
    drained: bool,
}

async fn run_pollack(ctx: &Arc<Ctx>, duration: Duration) -> PollAck {
    let start = Instant::now();
    let end = start + duration;
    let mut set = JoinSet::new();
    for _ in 0..POLLERS {
        set.spawn(poller(ctx.clone(), end));
    }
    let mut out = PollAck {
        acked: 0,
        polls: Tally::default(),
        acks: Tally::default(),
        elapsed: Duration::ZERO,
        drained: false,
    };
    let mut last_stop = start;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(p) => {
                out.acked += p.acks.ok;
                out.polls.merge(p.polls);
                out.acks.merge(p.acks);
                out.drained |= p.drained;
                last_stop = last_stop.max(p.stopped);
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    // The rate is over the time actually spent, which is shorter than the
    // requested duration when the backlog ran out.
    out.elapsed = last_stop - start;
    out
}

struct PollerOut {
    polls: Tally,
    acks: Tally,
    stopped: Instant,
    drained: bool,
}

async fn poller(ctx: Arc<Ctx>, end: Instant) -> PollerOut {
    let poll_req = build_request(
        "GET",
        POLL_PATH,
        &ctx.target.host,
        &[("X-Api-Key", &ctx.receiver_key)],
        b"",
    );
    let ack_tail = Arc::new(build_request_tail(
        &ctx.target.host,
        &[
            ("X-Api-Key", &ctx.receiver_key),
            ("Content-Type", "application/json"),
        ],
        ACK_BODY,
    ));
    let mut lanes: Vec<AckLane> = (0..ACK_LANES)
        .map(|_| AckLane::new(ctx.clone(), ack_tail.clone()))
        .collect();
    let mut polls = Tally::with_capacity(1024);
    let mut conn: Option<Conn> = None;
    let mut empty_in_a_row = 0;
    let mut drained = false;
    while Instant::now() < end {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(&ctx.target).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    polls.note_error(true, || format!("poll connect: {e}"));
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let start = Instant::now();
        let res = timeout(REQUEST_TIMEOUT, c.request(&poll_req)).await;
        let lat = micros(start.elapsed());
        let uuids = match res {
            Ok(Ok(status)) => {
                polls.lat.push(lat);
                let parsed = if is_success(status) {
                    transmission_uuids(&c.body)
                } else {
                    Err(format!("poll {status}: {}", snippet(&c.body)))
                };
                if !c.keep_alive {
                    conn = None;
                }
                parsed
            }
            Ok(Err(e)) => {
                conn = None;
                Err(format!("poll: {e}"))
            }
            Err(_) => {
                conn = None;
                Err("poll: timed out".into())
            }
        };
        let uuids = match uuids {
            Ok(u) => {
                polls.ok += 1;
                u
            }
            Err(e) => {
                polls.note_error(true, || e);
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if uuids.is_empty() {
            // Leased items are invisible to other pollers, so one empty answer
            // can be a race with a neighbour; two in a row mean it is drained.
            empty_in_a_row += 1;
            if empty_in_a_row >= 2 {
                drained = true;
                break;
            }
            sleep(Duration::from_millis(20)).await;
            continue;
        }
        empty_in_a_row = 0;
        for (i, u) in uuids.into_iter().enumerate() {
            lanes[i % ACK_LANES].todo.push(u);
        }
        let mut set = JoinSet::new();
        let mut idle = Vec::new();
        for lane in lanes.drain(..) {
            if lane.todo.is_empty() {
                idle.push(lane);
            } else {
                set.spawn(lane.run());
            }
        }
        lanes = idle;
        while let Some(r) = set.join_next().await {
            match r {
                Ok(lane) => lanes.push(lane),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
    }
    let stopped = Instant::now();
    let mut acks = Tally::default();
    for lane in lanes {
        acks.merge(lane.tally);
    }
    PollerOut {
        polls,
        acks,
        stopped,
        drained,
    }
}

fn transmission_uuids(body: &[u8]) -> Result<Vec<String>, String> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("poll: bad JSON ({e}): {}", snippet(body)))?;
    if v.get("success") == Some(&Value::Bool(false)) {
        return Err(format!("poll: success=false: {}", snippet(body)));
    }
    let Value::Array(items) = v["data"].take() else {
        return Err(format!("poll: data is not an array: {}", snippet(body)));
    };
    items
        .iter()
        .map(|item| {
            item.get("uuid")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    format!(
                        "poll: item without uuid: {}",
                        snippet(item.to_string().as_bytes())
                    )
                })
        })
        .collect()
}

/// One acknowledgement connection; moved into a task per batch and handed
/// back, so its connection and buffers survive across batches.
struct AckLane {
    ctx: Arc<Ctx>,
    conn: Option<Conn>,
    tail: Arc<Vec<u8>>,
    req: Vec<u8>,
    todo: Vec<String>,
    tally: Tally,
}

impl AckLane {
    fn new(ctx: Arc<Ctx>, tail: Arc<Vec<u8>>) -> AckLane {
        AckLane {
            ctx,
            conn: None,
            tail,
            req: Vec::with_capacity(512),
            todo: Vec::with_capacity(16),
            tally: Tally::with_capacity(16 * 1024),
        }
    }

    async fn run(mut self) -> AckLane {
        let todo = std::mem::take(&mut self.todo);
        for uuid in &todo {
            self.req.clear();
            self.req.extend_from_slice(b"PUT ");
            self.req.extend_from_slice(ACK_PATH.as_bytes());
            self.req.extend_from_slice(uuid.as_bytes());
            self.req.extend_from_slice(&self.tail);
            let c = match self.conn.as_mut() {
                Some(c) => c,
                None => match Conn::connect(&self.ctx.target).await {
                    Ok(c) => self.conn.insert(c),
                    Err(e) => {
                        // The transmission stays leased and is simply not
                        // counted; retrying would distort the ack latency.
                        self.tally.note_error(true, || format!("ack connect: {e}"));
                        continue;
                    }
                },
            };
            let start = Instant::now();
            let res = timeout(REQUEST_TIMEOUT, c.request(&self.req)).await;
            let lat = micros(start.elapsed());
            match res {
                Ok(Ok(status)) => {
                    self.tally.lat.push(lat);
                    if is_success(status) {
                        self.tally.ok += 1;
                    } else {
                        self.tally
                            .note_error(true, || format!("ack {status}: {}", snippet(&c.body)));
                    }
                    if !c.keep_alive {
                        self.conn = None;
                    }
                }
                Ok(Err(e)) => {
                    self.tally.note_error(true, || format!("ack: {e}"));
                    self.conn = None;
                }
                Err(_) => {
                    self.tally.note_error(true, || "ack: timed out".into());
                    self.conn = None;
                }
            }
        }
        // Keep the allocation for the next batch.
        self.todo = todo;
        self.todo.clear();
        self
    }
}

// ---------------------------------------------------------------------------
// Memory and restart

async fn run_memory(
    ctx: &Arc<Ctx>,
    server: Option<&mut Server>,
    messages: u64,
) -> Result<(), String> {
    let started = Instant::now();
    let t = run_inbound_count(ctx, FILL_CONNECTIONS, messages, Some(started)).await;
    let secs = started.elapsed().as_secs_f64();
    let label = ctx.target.label();
    println!(
        "memory   {label}{} stored in {:.1}s ({:.0} msg/s), {} err",
        t.created,
        secs,
        t.created as f64 / secs,
        t.err
    );
    print_first_error(&t.first_err);
    let Some(server) = server else {
        println!(
            "memory   {label}{} messages stored, RSS n/a (external server, no restart)",
            t.created
        );
        return Ok(());
    };
    // Let background work (flushes, compaction) settle so the figure is the
    // steady state rather than a transient peak.
    sleep(Duration::from_secs(5)).await;
    let rss = server.pid().and_then(rss_bytes);
    println!("memory   RSS after 5 s idle: {}", fmt_mb(rss));

    let status = server.stop().await?;
    println!("memory   server stopped: {status}");
    let spawned = Instant::now();
    server.spawn()?;
    wait_for_ok(
        &server.target(),
        "/readyz",
        spawned + RESTART_TIMEOUT,
        Some(&mut *server),
    )
    .await?;
    let ready = spawned.elapsed();
    let rss_after = server.pid().and_then(rss_bytes);
    println!(
        "memory   {label}{} messages stored, RSS {}, restart to ready {:.2} s, RSS after restart {}",
        t.created,
        fmt_mb(rss),
        ready.as_secs_f64(),
        fmt_mb(rss_after)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Push delivery

/// Microseconds since the UNIX epoch: the one clock both the sender (stamped
/// into the body) and the receiver (arrival) read, as both run in this process.
fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Sequence numbers carry the run in their leading digit (1 throughput,
/// 2 latency), then the sender and its counter, so the receiver can tell the
/// runs apart without any state shared with the senders.
const SEQ_RUN: u64 = 1_000_000_000_000_000;
const SEQ_SENDER: u64 = 10_000_000_000;
const RUN_THROUGHPUT: u64 = 1;
const RUN_LATENCY: u64 = 2;

fn push_seq(run: u64, sender: u64, n: u64) -> u64 {
    run * SEQ_RUN + sender * SEQ_SENDER + n
}

const SENT_AT_PREFIX: &[u8] = br#"{"sentAtMicros":"#;
const SEQ_PREFIX: &[u8] = br#","seq":""#;

/// A 1 KiB JSON object that starts with the send time (a 16-digit number,
/// enough until the year 2286) and a fixed-width sequence string, both
/// overwritten in place per request and found by the receiver at fixed offsets.
fn push_body() -> Vec<u8> {
    let end = br#"","source":"waybill-load","pad":""#;
    let close = br#""}"#;
    let mut body = Vec::with_capacity(BODY_SIZE);
    body.extend_from_slice(SENT_AT_PREFIX);
    body.resize(body.len() + SEQ_DIGITS, b'1');
    body.extend_from_slice(SEQ_PREFIX);
    body.resize(body.len() + SEQ_DIGITS, b'0');
    body.extend_from_slice(end);
    body.resize(BODY_SIZE - close.len(), b'x');
    body.extend_from_slice(close);
    debug_assert_eq!(body.len(), BODY_SIZE);
    body
}

/// Send time and sequence number of a body made by [`push_body`].
fn parse_push_body(body: &[u8]) -> Option<(u64, u64)> {
    let sent_at = SENT_AT_PREFIX.len();
    let seq_at = sent_at + SEQ_DIGITS + SEQ_PREFIX.len();
    if body.len() < seq_at + SEQ_DIGITS
        || !body.starts_with(SENT_AT_PREFIX)
        || &body[sent_at + SEQ_DIGITS..seq_at] != SEQ_PREFIX
    {
        return None;
    }
    Some((
        parse_digits(&body[sent_at..sent_at + SEQ_DIGITS])?,
        parse_digits(&body[seq_at..seq_at + SEQ_DIGITS])?,
    ))
}

fn parse_digits(s: &[u8]) -> Option<u64> {
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.wrapping_mul(10).wrapping_add(u64::from(b - b'0')))
    })
}

// --- Receiver

/// One delivery as the receiver saw it.
#[derive(Clone, Copy)]
struct Arrival {
    at_us: u64,
    sent_us: u64,
    seq: u64,
    /// Its webhook-id had been seen before.
    dup_id: bool,
}

#[derive(Default)]
struct HookLogInner {
    arrivals: Vec<Arrival>,
    ids: std::collections::HashSet<u128>,
    seqs: std::collections::HashSet<u64>,
    /// Requests that were not a well-formed push (wrong target, a missing
    /// webhook header, a body we did not send); answered 200 all the same.
    anomalies: u64,
    first_anomaly: Option<String>,
}

/// What the receiver recorded; shared by its connection tasks.
#[derive(Default)]
struct HookLog {
    inner: std::sync::Mutex<HookLogInner>,
    /// Distinct sequence numbers seen, per run (index = run digit), so the
    /// waiting side can watch progress without taking the lock.
    distinct: [AtomicU64; 3],
    requests: AtomicU64,
    connections: AtomicU64,
}

impl HookLog {
    fn anomaly(&self, what: impl FnOnce() -> String) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.anomalies += 1;
        if g.first_anomaly.is_none() {
            g.first_anomaly = Some(what());
        }
    }

    fn record(&self, id: u128, at_us: u64, body: &[u8]) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let parsed = parse_push_body(body);
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let dup_id = !g.ids.insert(id);
        match parsed {
            Some((sent_us, seq)) => {
                if g.seqs.insert(seq) {
                    if let Some(c) = self.distinct.get((seq / SEQ_RUN) as usize) {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
                g.arrivals.push(Arrival {
                    at_us,
                    sent_us,
                    seq,
                    dup_id,
                });
            }
            None => {
                g.anomalies += 1;
                if g.first_anomaly.is_none() {
                    g.first_anomaly = Some(format!("unknown body: {}", snippet(body)));
                }
            }
        }
    }

    fn distinct(&self, run: u64) -> u64 {
        self.distinct[run as usize].load(Ordering::Relaxed)
    }

    /// The arrivals of one run, in arrival order.
    fn arrivals(&self, run: u64) -> Vec<Arrival> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Arrival> = g
            .arrivals
            .iter()
            .filter(|a| a.seq / SEQ_RUN == run)
            .copied()
            .collect();
        drop(g);
        v.sort_unstable_by_key(|a| a.at_us);
        v
    }
}

/// The push target: a bare keep-alive HTTP/1.1 server that answers every
/// request `200` with an empty body and notes what arrived. It runs on the
/// client runtime, which shares the machine with the server, so it parses
/// only what it needs and takes one short lock per request.
struct HookServer {
    addr: SocketAddr,
    log: Arc<HookLog>,
    accept: tokio::task::JoinHandle<()>,
}

impl HookServer {
    async fn start() -> Result<HookServer, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("push receiver: bind: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("push receiver: {e}"))?;
        let log = Arc::new(HookLog::default());
        let accept = tokio::spawn(accept_hooks(listener, log.clone()));
        Ok(HookServer { addr, log, accept })
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        // Open connections end with the runtime; new ones are refused from here.
        self.accept.abort();
    }
}

async fn accept_hooks(listener: tokio::net::TcpListener, log: Arc<HookLog>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                log.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve_hooks(stream, log.clone()));
            }
            Err(e) => {
                // Out of descriptors and the like: let it pass, but say so.
                log.anomaly(|| format!("accept: {e}"));
                sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// What the receiver needs from a request head.
struct HookHead {
    content_length: usize,
    close: bool,
    webhook_id: Option<u128>,
    /// Why the request is not the push we expect, if it is not.
    problem: Option<String>,
}

/// A webhook-id as a number: `msg_` and 32 hex digits as they are, anything
/// else hashed (distinct ids then collide only by accident).
fn webhook_key(v: &[u8]) -> u128 {
    let hex = v.strip_prefix(b"msg_").unwrap_or(v);
    if hex.len() == 32 {
        if let Some(n) = std::str::from_utf8(hex)
            .ok()
            .and_then(|s| u128::from_str_radix(s, 16).ok())
        {
            return n;
        }
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    (1u128 << 127) | u128::from(h.finish())
}

fn parse_hook_head(head: &[u8]) -> Result<HookHead, String> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or(b"");
    let mut parts = request_line.split(|&b| b == b' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let Some(version) = version.filter(|v| v.starts_with(b"HTTP/1.")) else {
        return Err(format!(
            "bad request line {:?}",
            String::from_utf8_lossy(request_line)
        ));
    };
    let mut h = HookHead {
        content_length: 0,
        close: version == b"HTTP/1.0",
        webhook_id: None,
        problem: None,
    };
    let target = target.unwrap_or(b"");
    if method != Some(b"POST") || target.strip_prefix(b"/hook") != Some(HOOK_QUERY) {
        h.problem = Some(format!(
            "unexpected request {:?}",
            String::from_utf8_lossy(request_line)
        ));
    }
    let (mut timestamp, mut signature, mut json) = (false, false, false);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            h.content_length = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("bad content-length")?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Pushes are sent with a length; anything else is not worth
            // decoding here.
            return Err("transfer-encoding is not supported by the receiver".into());
        } else if name.eq_ignore_ascii_case(b"connection") {
            if contains_token(value, b"close") {
                h.close = true;
            } else if contains_token(value, b"keep-alive") {
                h.close = false;
            }
        } else if name.eq_ignore_ascii_case(b"webhook-id") {
            h.webhook_id = Some(webhook_key(value));
        } else if name.eq_ignore_ascii_case(b"webhook-timestamp") {
            timestamp = !value.is_empty();
        } else if name.eq_ignore_ascii_case(b"webhook-signature") {
            signature = !value.is_empty();
        } else if name.eq_ignore_ascii_case(b"content-type") {
            json = value.eq_ignore_ascii_case(b"application/json");
        }
    }
    if h.problem.is_none() {
        let missing: Vec<&str> = [
            (h.webhook_id.is_none(), "webhook-id"),
            (!timestamp, "webhook-timestamp"),
            (!signature, "webhook-signature"),
            (!json, "content-type application/json"),
        ]
        .into_iter()
        .filter_map(|(m, what)| m.then_some(what))
        .collect();
        if !missing.is_empty() {
            h.problem = Some(format!("push without {}", missing.join(", ")));
        }
    }
    Ok(h)
}

/// One keep-alive connection from the server: requests one after the other,
/// each answered before the next is read.
async fn serve_hooks(mut stream: TcpStream, log: Arc<HookLog>) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 {
                log.anomaly(|| "request head too large".into());
                return;
            }
            if !read_more(&mut stream, &mut buf).await {
                // The server closing an idle connection is normal; closing in
                // the middle of a request is not.
                if !buf.is_empty() {
                    log.anomaly(|| "connection closed inside a request head".into());
                }
                return;
            }
        };
        let head = match parse_hook_head(&buf[..head_end]) {
            Ok(h) => h,
            Err(e) => {
                log.anomaly(|| e);
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                return;
            }
        };
        let end = head_end + head.content_length;
        while buf.len() < end {
            if !read_more(&mut stream, &mut buf).await {
                log.anomaly(|| "connection closed inside a request body".into());
                return;
            }
        }
        let at_us = now_micros();
        if let Some(problem) = head.problem {
            log.anomaly(|| problem);
        }
        log.record(
            head.webhook_id.unwrap_or(u128::MAX),
            at_us,
            &buf[head_end..end],
        );
        // Normally the whole buffer; a pipelined next request stays.
        buf.drain(..end);
        if stream.write_all(HOOK_RESPONSE).await.is_err() || head.close {
            return;
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(4096);
    }
    matches!(stream.read_buf(buf).await, Ok(n) if n > 0)
}

// --- Senders

/// One intake connection sending push bodies: each request gets its send
/// time and sequence number written in place just before it goes out.
struct PushSender {
    target: Target,
    req: Vec<u8>,
    sent_at: usize,
    seq_at: usize,
    conn: Option<Conn>,
    tally: Tally,
    /// Accepted sequence numbers and the transmission each became.
    accepted: Vec<(u64, Option<Box<str>>)>,
    /// When the last accepted request was answered (micros since epoch).
    last_accept_us: u64,
}

impl PushSender {
    fn new(ctx: &Ctx) -> PushSender {
        let body = push_body();
        let req = build_request(
            "POST",
            INBOUND_PATH,
            &ctx.target.host,
            &[
                ("X-Api-Key", &ctx.sender_key),
                ("Content-Type", "application/json"),
            ],
            &body,
        );
        let sent_at = req.len() - BODY_SIZE + SENT_AT_PREFIX.len();
        PushSender {
            target: ctx.target.clone(),
            req,
            sent_at,
            seq_at: sent_at + SEQ_DIGITS + SEQ_PREFIX.len(),
            conn: None,
            tally: Tally::with_capacity(1024),
            accepted: Vec::with_capacity(1024),
            last_accept_us: 0,
        }
    }

    /// Sends one message; true when the server accepted it.
    async fn send(&mut self, seq: u64) -> bool {
        put_digits(&mut self.req[self.seq_at..self.seq_at + SEQ_DIGITS], seq);
        let c = match self.conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(&self.target).await {
                Ok(c) => self.conn.insert(c),
                Err(e) => {
                    self.tally.note_error(true, || format!("connect: {e}"));
                    sleep(Duration::from_millis(50)).await;
                    return false;
                }
            },
        };
        let sent_at = self.sent_at;
        put_digits(&mut self.req[sent_at..sent_at + SEQ_DIGITS], now_micros());
        let start = Instant::now();
        let res = timeout(REQUEST_TIMEOUT, c.request(&self.req)).await;
        self.tally.lat.push(micros(start.elapsed()));
        match res {
            Ok(Ok(status)) => {
                let ok = is_success(status);
                if ok {
                    self.tally.ok += 1;
                    self.last_accept_us = now_micros();
                    self.accepted.push((seq, transmission_of(&c.body)));
                } else {
                    self.tally
                        .note_error(true, || format!("inbound {status}: {}", snippet(&c.body)));
                }
                if !c.keep_alive {
                    self.conn = None;
                }
                ok
            }
            Ok(Err(e)) => {
                self.tally.note_error(true, || format!("inbound: {e}"));
                self.conn = None;
                false
            }
            Err(_) => {
                self.tally.note_error(true, || "inbound: timed out".into());
                self.conn = None;
                false
            }
        }
    }
}

/// The transmission uuid in an intake answer: the only `"uuid"` key in it.
/// Kept so a delivery that never arrives can be looked up afterwards.
fn transmission_of(body: &[u8]) -> Option<Box<str>> {
    const KEY: &[u8] = br#""uuid":""#;
    let at = find(body, KEY)? + KEY.len();
    let uuid = body.get(at..at + 36)?;
    std::str::from_utf8(uuid).ok().map(Box::from)
}

/// What one run of intake produced, merged over its senders.
struct Sent {
    tally: Tally,
    accepted: Vec<(u64, Option<Box<str>>)>,
    started_us: u64,
    finished_us: u64,
    last_accept_us: u64,
}

impl Sent {
    fn new(started_us: u64) -> Sent {
        Sent {
            tally: Tally::default(),
            accepted: Vec::new(),
            started_us,
            finished_us: started_us,
            last_accept_us: 0,
        }
    }

    fn add(&mut self, s: PushSender) {
        self.tally.merge(s.tally);
        self.accepted.extend(s.accepted);
        self.last_accept_us = self.last_accept_us.max(s.last_accept_us);
    }
}

async fn join_senders(mut set: JoinSet<PushSender>, started_us: u64) -> Sent {
    let mut sent = Sent::new(started_us);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(s) => sent.add(s),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    sent.finished_us = now_micros();
    sent
}

/// As fast as the intake allows until `budget` messages are stored.
async fn push_count_worker(ctx: Arc<Ctx>, id: u64, budget: Arc<Budget>) -> PushSender {
    let mut s = PushSender::new(&ctx);
    let mut n = 0;
    while budget.take() {
        n += 1;
        if !s.send(push_seq(RUN_THROUGHPUT, id, n)).await {
            budget.give_back();
        }
    }
    s
}

/// Sender `id` of `senders` takes every `senders`-th slot of a schedule at
/// `rate` per second, so together they send evenly spaced messages. A sender
/// that falls behind sends its late slots at once rather than dropping them.
async fn push_paced_worker(
    ctx: Arc<Ctx>,
    id: u64,
    senders: u64,
    rate: u64,
    start: tokio::time::Instant,
    duration: Duration,
) -> PushSender {
    let mut s = PushSender::new(&ctx);
    let mut k = 0u64;
    loop {
        let offset = Duration::from_secs_f64((id + k * senders) as f64 / rate as f64);
        if offset >= duration {
            break;
        }
        tokio::time::sleep_until(start + offset).await;
        k += 1;
        s.send(push_seq(RUN_LATENCY, id, k)).await;
    }
    s
}

// --- The phase

/// How a run's deliveries compare with what was sent.
struct Delivered {
    /// Accepted messages that arrived (each counted once).
    delivered: u64,
    /// Arrivals whose webhook-id had been seen before.
    dup_ids: u64,
    /// Arrivals of a message that had already arrived, under any id.
    repeats: u64,
    /// Accepted messages that never arrived.
    missing: Vec<u64>,
    /// Arrivals of messages whose intake did not answer 2xx (timed out, say).
    unexpected: u64,
    first_us: u64,
    last_us: u64,
    /// Send to first arrival, per delivered message.
    latency: Vec<u32>,
    /// Longest time without any arrival between the first and the last.
    max_gap_us: u64,
    /// The delivered message that took longest, and how long (micros).
    slowest: Option<(u64, u32)>,
}

fn compare_deliveries(sent: &Sent, arrivals: &[Arrival]) -> Delivered {
    let mut pending: std::collections::HashSet<u64> =
        sent.accepted.iter().map(|(seq, _)| *seq).collect();
    let mut seen = std::collections::HashSet::with_capacity(arrivals.len());
    let mut d = Delivered {
        delivered: 0,
        dup_ids: 0,
        repeats: 0,
        missing: Vec::new(),
        unexpected: 0,
        first_us: arrivals.first().map_or(0, |a| a.at_us),
        last_us: arrivals.last().map_or(0, |a| a.at_us),
        latency: Vec::with_capacity(arrivals.len()),
        max_gap_us: 0,
        slowest: None,
    };
    let mut prev = d.first_us;
    for a in arrivals {
        d.max_gap_us = d.max_gap_us.max(a.at_us - prev);
        prev = a.at_us;
        if a.dup_id {
            d.dup_ids += 1;
        }
        if !seen.insert(a.seq) {
            d.repeats += 1;
            continue;
        }
        if pending.remove(&a.seq) {
            d.delivered += 1;
            let lat = a.at_us.saturating_sub(a.sent_us).min(u32::MAX as u64) as u32;
            d.latency.push(lat);
            if d.slowest.is_none_or(|(_, l)| lat > l) {
                d.slowest = Some((a.seq, lat));
            }
        } else {
            d.unexpected += 1;
        }
    }
    d.missing = pending.into_iter().collect();
    d.missing.sort_unstable();
    d
}

/// Waits until every accepted message of `run` arrived, the server died, or
/// `PUSH_WAIT` passed since the last send. Returns whether all arrived.
async fn wait_for_deliveries(
    log: &HookLog,
    run: u64,
    expected: u64,
    server: &mut Option<Server>,
    what: &str,
) -> Result<bool, String> {
    let started = Instant::now();
    let mut next_note = started + PUSH_PROGRESS_EVERY;
    loop {
        let got = log.distinct(run);
        if got >= expected {
            return Ok(true);
        }
        check_alive(server, what)?;
        let now = Instant::now();
        if now >= started + PUSH_WAIT {
            println!(
                "push     {what}: gave up waiting after {} s: {got} of {expected} delivered",
                PUSH_WAIT.as_secs()
            );
            return Ok(false);
        }
        if now >= next_note {
            println!(
                "push     {what}: {got} of {expected} delivered, waited {:.0} s",
                (now - started).as_secs_f64()
            );
            next_note += PUSH_PROGRESS_EVERY;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

fn secs_between(from_us: u64, to_us: u64) -> f64 {
    to_us.saturating_sub(from_us) as f64 / 1e6
}

/// Duplicates, missing and stray deliveries, and the longest silence.
fn delivery_checks(d: &Delivered) -> String {
    let mut s = format!(
        "{} duplicate webhook-ids, {} missing, longest gap between deliveries {}",
        d.dup_ids,
        d.missing.len(),
        fmt_ms(d.max_gap_us.min(u32::MAX as u64) as u32)
    );
    if d.repeats > d.dup_ids {
        s.push_str(&format!(
            ", {} messages delivered again under a new webhook-id",
            d.repeats - d.dup_ids
        ));
    }
    if d.unexpected > 0 {
        s.push_str(&format!(
            ", {} deliveries of messages whose intake failed",
            d.unexpected
        ));
    }
    s
}

/// Deliveries this much later than their send are looked up in the server's
/// attempt log: at 1 ms typical, a second is a stall, not a queue.
const SLOW_DELIVERY_US: u32 = 1_000_000;

/// Missing deliveries, and with `stalls` (a run well under capacity, where
/// nothing should queue) the slowest one when it took a second or more.
async fn explain_deliveries(ctx: &Ctx, token: &str, sent: &Sent, d: &Delivered, stalls: bool) {
    if !d.missing.is_empty() {
        explain(ctx, token, sent, &d.missing, "missing").await;
    }
    let slow = d
        .slowest
        .filter(|&(_, lat)| stalls && lat >= SLOW_DELIVERY_US);
    if let Some((seq, lat)) = slow {
        explain(
            ctx,
            token,
            sent,
            &[seq],
            &format!("slowest ({})", fmt_ms(lat)),
        )
        .await;
    }
}

/// For a few deliveries, what the server's attempt log says.
async fn explain(ctx: &Ctx, token: &str, sent: &Sent, seqs: &[u64], what: &str) {
    let want: std::collections::HashSet<u64> = seqs.iter().take(3).copied().collect();
    for (seq, uuid) in sent.accepted.iter().filter(|(s, _)| want.contains(s)) {
        let Some(uuid) = uuid else {
            println!("         {what} seq {seq}: no transmission uuid in its intake answer");
            continue;
        };
        let path = format!("/admin/api/transmissions/{uuid}/attempts");
        let line = match admin_call(&ctx.target, token, "GET", &path, None).await {
            Ok((status, v)) if is_success(status) => {
                let list = v.get("data").unwrap_or(&v);
                match list.as_array() {
                    Some(a) if a.is_empty() => "no attempt yet".to_string(),
                    Some(a) => format!(
                        "{} attempts: {}",
                        a.len(),
                        a.iter()
                            .map(|x| snippet(x.to_string().as_bytes()))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                    None => snippet(v.to_string().as_bytes()),
                }
            }
            Ok((status, v)) => format!("{status} {}", snippet(v.to_string().as_bytes())),
            Err(e) => e,
        };
        println!("         {what} transmission {uuid}: {line}");
    }
}

/// Lines the server logged (at warn and above) since `from` bytes.
fn new_log_lines(server: &Option<Server>, from: u64) -> Vec<String> {
    let Some(s) = server else {
        return Vec::new();
    };
    let Ok(text) = fs::read(&s.log_path) else {
        return Vec::new();
    };
    let from = (from as usize).min(text.len());
    String::from_utf8_lossy(&text[from..])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

async fn set_push_url(ctx: &Ctx, token: &str, url: Option<&str>) -> Result<(), String> {
    let path = format!("/admin/api/partners/{RECEIVER}");
    let body = json!({ "pushUrl": url });
    let (status, v) = admin_call(&ctx.target, token, "PATCH", &path, Some(&body)).await?;
    if !is_success(status) {
        return Err(format!("setting {RECEIVER}'s pushUrl failed: {status} {v}"));
    }
    Ok(())
}

async fn run_push(
    ctx: &Arc<Ctx>,
    token: &str,
    server: &mut Option<Server>,
    opts: &Options,
) -> Result<(), String> {
    let hook = HookServer::start().await?;
    let log_from = server
        .as_ref()
        .and_then(|s| fs::metadata(&s.log_path).ok())
        .map_or(0, |m| m.len());
    set_push_url(ctx, token, Some(&hook.url())).await?;
    if server.is_none() {
        println!(
            "push     note: the external server must allow 127.0.0.0/8 ({OUTBOUND_ALLOW_ENV}) \
             and run on this host"
        );
    }
    println!("push     receiver {}, {RECEIVER} pushUrl set", hook.url());
    let result = push_runs(ctx, token, server, opts, &hook).await;
    // Leave no push URL to a port that is about to close: later phases (and
    // an external server) would retry into it.
    let reset = set_push_url(ctx, token, None).await;
    let log = &hook.log;
    let (anomalies, first_anomaly) = {
        let g = log.inner.lock().unwrap_or_else(|e| e.into_inner());
        (g.anomalies, g.first_anomaly.clone())
    };
    println!(
        "push     receiver: {} requests on {} connections, {} malformed",
        log.requests.load(Ordering::Relaxed),
        log.connections.load(Ordering::Relaxed),
        anomalies
    );
    print_first_error(&first_anomaly);
    let lines = new_log_lines(server, log_from);
    if !lines.is_empty() {
        // A panicking push task leaves its delivery leased, so it arrives
        // only after the lease: worth counting when stalls show up.
        let panics = lines.iter().filter(|l| l.contains("panicked at")).count();
        println!(
            "push     server logged {} lines ({panics} panics), the first:",
            lines.len()
        );
        for l in lines.iter().take(3) {
            println!("         {}", snippet(l.as_bytes()));
        }
    }
    result?;
    reset
}

async fn push_runs(
    ctx: &Arc<Ctx>,
    token: &str,
    server: &mut Option<Server>,
    opts: &Options,
    hook: &HookServer,
) -> Result<(), String> {
    let log = &hook.log;

    // Throughput: a burst of N, then however long the deliveries take.
    let total = opts.messages.unwrap_or(PUSH_MESSAGES);
    let budget = Arc::new(Budget::Count {
        issued: AtomicU64::new(0),
        total,
        stored: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        abort: AtomicBool::new(false),
        progress: None,
    });
    let started_us = now_micros();
    let mut set = JoinSet::new();
    for id in 0..PUSH_CONNECTIONS {
        set.spawn(push_count_worker(ctx.clone(), id as u64, budget.clone()));
    }
    let sent = join_senders(set, started_us).await;
    let accepted = sent.accepted.len() as u64;
    wait_for_deliveries(log, RUN_THROUGHPUT, accepted, server, "throughput").await?;
    let d = compare_deliveries(&sent, &log.arrivals(RUN_THROUGHPUT));
    let intake_secs = secs_between(sent.started_us, sent.finished_us).max(1e-9);
    let window = secs_between(d.first_us, d.last_us);
    println!(
        "push     throughput: {accepted} sent in {intake_secs:.1}s ({:.0}/s), {} delivered in {window:.1}s ({}), last delivery {}",
        accepted as f64 / intake_secs,
        d.delivered,
        if window > 0.0 {
            format!("{:.0} deliveries/s", d.delivered as f64 / window)
        } else {
            "n/a deliveries/s".into()
        },
        if d.last_us > 0 {
            format!(
                "{:.1} s after the last send",
                d.last_us as f64 / 1e6 - sent.last_accept_us as f64 / 1e6
            )
        } else {
            "n/a".into()
        }
    );
    println!(
        "push     throughput: {} intake err, {}, send to delivery {}",
        sent.tally.err,
        delivery_checks(&d),
        latency_summary(d.latency.clone(), &[("p50", 0.50), ("p99", 0.99)], true)
    );
    print_first_error(&sent.tally.first_err);
    explain_deliveries(ctx, token, &sent, &d, false).await;
    check_alive(server, "push throughput")?;

    // Latency: a steady rate well under the capacity just measured.
    let rate = opts.rate;
    let senders = rate.div_ceil(PACED_PER_CONNECTION).clamp(1, 64);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let started_us = now_micros() + 50_000;
    let mut set = JoinSet::new();
    for id in 0..senders {
        set.spawn(push_paced_worker(
            ctx.clone(),
            id,
            senders,
            rate,
            start,
            opts.duration,
        ));
    }
    let sent = join_senders(set, started_us).await;
    let accepted = sent.accepted.len() as u64;
    wait_for_deliveries(log, RUN_LATENCY, accepted, server, "latency").await?;
    let d = compare_deliveries(&sent, &log.arrivals(RUN_LATENCY));
    let secs = opts.duration.as_secs_f64();
    println!(
        "push     latency at {rate} msg/s for {secs:.0}s: {} delivered, {}",
        d.delivered,
        latency_summary(
            d.latency.clone(),
            &[("p50", 0.50), ("p90", 0.90), ("p99", 0.99)],
            true
        )
    );
    let sent_secs = secs_between(sent.started_us, sent.finished_us).max(1e-9);
    println!(
        "push     latency: {accepted} sent over {senders} conns ({:.0}/s), {} intake err, intake {}, {}",
        accepted as f64 / sent_secs,
        sent.tally.err,
        latency_summary(sent.tally.lat.clone(), &[("p50", 0.50), ("p99", 0.99)], false),
        delivery_checks(&d)
    );
    print_first_error(&sent.tally.first_err);
    explain_deliveries(ctx, token, &sent, &d, true).await;
    Ok(())
}

// ---------------------------------------------------------------------------
// Minimal HTTP/1.1 client

fn build_request(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = Vec::with_capacity(256 + body.len());
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(path.as_bytes());
    if method == "GET" && body.is_empty() {
        req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        req.extend_from_slice(host.as_bytes());
        req.extend_from_slice(b"\r\n");
        for (k, v) in headers {
            req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
    } else {
        req.extend_from_slice(&build_request_tail(host, headers, body));
    }
    req
}

/// Everything after the request target, so requests that differ only in the
/// path (acks) are a prefix, the target and this shared suffix.
fn build_request_tail(host: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(256 + body.len());
    t.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    t.extend_from_slice(host.as_bytes());
    t.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        t.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    t.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    t.extend_from_slice(body);
    t
}

struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> io::Result<Head> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or(b"");
    if status_line.len() < 12 || !status_line.starts_with(b"HTTP/1.") {
        return Err(bad(format!(
            "bad status line {:?}",
            String::from_utf8_lossy(status_line)
        )));
    }
    let status = std::str::from_utf8(&status_line[9..12])
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status code"))?;
    let mut h = Head {
        status,
        content_length: None,
        chunked: false,
        // HTTP/1.0 closes unless it says otherwise.
        close: status_line[7] == b'0',
    };
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or_else(|| bad("bad content-length"))?;
            h.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            h.chunked = contains_token(value, b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            if contains_token(value, b"close") {
                h.close = true;
            } else if contains_token(value, b"keep-alive") {
                h.close = false;
            }
        }
    }
    Ok(h)
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

fn parse_hex(s: &[u8]) -> Option<usize> {
    let s = s.trim_ascii();
    if s.is_empty() || s.len() > 15 {
        return None;
    }
    let mut n = 0usize;
    for &b in s {
        let d = (b as char).to_digit(16)?;
        n = n * 16 + d as usize;
    }
    Some(n)
}

/// Plain TCP or TLS over TCP. An enum rather than a trait object so the plain
/// path costs one predictable branch, not a virtual call per read and write;
/// the TLS state is boxed to keep the plain variant small.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(s) => {
                s.write_all(buf).await?;
                // A TLS write may return with records still buffered inside
                // rustls when the socket is full; push them out before waiting
                // for the response.
                s.flush().await
            }
        }
    }

    async fn read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
        }
    }
}

/// A keep-alive connection with a reusable read buffer. The decoded body of
/// the last response is left in `body`.
struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    /// Start of unread bytes in `buf`. Normally the whole buffer is consumed
    /// per response; anything beyond it is kept rather than silently lost.
    pos: usize,
    body: Vec<u8>,
    keep_alive: bool,
}

impl Conn {
    /// Connects and, for TLS, completes the handshake; every request on the
    /// connection then reuses that session.
    async fn connect(target: &Target) -> io::Result<Conn> {
        let tcp = TcpStream::connect(target.addr).await?;
        // Requests are single writes; Nagle would only add delay to them.
        tcp.set_nodelay(true)?;
        let stream = match &target.tls {
            None => Stream::Plain(tcp),
            Some(tls) => {
                let handshake = tls.connector.connect(tls.name.clone(), tcp);
                // A server that accepts but never answers must not hang a worker.
                match timeout(REQUEST_TIMEOUT, handshake).await {
                    Ok(s) => Stream::Tls(Box::new(s?)),
                    Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "TLS handshake timed out",
                        ))
                    }
                }
            }
        };
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            body: Vec::with_capacity(1024),
            keep_alive: true,
        })
    }

    /// Sends a complete pre-built request and reads the final response.
    async fn request(&mut self, req: &[u8]) -> io::Result<u16> {
        self.stream.write_all(req).await?;
        loop {
            let status = self.read_response().await?;
            // Interim responses (100 Continue and the like) precede the real one.
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            return Ok(status);
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            let grow = self.buf.capacity().max(16 * 1024);
            self.buf.reserve(grow);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by server",
            ));
        }
        Ok(())
    }

    /// Waits until `buf` holds a CRLF at or after `from`; returns its index.
    async fn line_end(&mut self, from: usize) -> io::Result<usize> {
        loop {
            if let Some(i) = find(&self.buf[from..], b"\r\n") {
                return Ok(from + i);
            }
            if self.buf.len() - from > 8 * 1024 {
                return Err(bad("chunk line too long"));
            }
            self.fill().await?;
        }
    }

    async fn read_response(&mut self) -> io::Result<u16> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(bad("response head too large"));
            }
            self.fill().await?;
        };
        let head = parse_head(&self.buf[..head_end])?;
        self.keep_alive = !head.close;
        self.body.clear();
        let mut pos = head_end;
        if head.status < 200 || head.status == 204 || head.status == 304 {
            // No body by definition.
        } else if head.chunked {
            pos = self.read_chunked(pos).await?;
        } else if let Some(len) = head.content_length {
            while self.buf.len() < pos + len {
                self.fill().await?;
            }
            self.body.extend_from_slice(&self.buf[pos..pos + len]);
            pos += len;
        } else {
            // Neither length nor chunked: the body runs to end of stream.
            loop {
                match self.fill().await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            self.body.extend_from_slice(&self.buf[pos..]);
            pos = self.buf.len();
            self.keep_alive = false;
        }
        self.pos = pos;
        Ok(head.status)
    }

    async fn read_chunked(&mut self, mut pos: usize) -> io::Result<usize> {
        loop {
            let eol = self.line_end(pos).await?;
            let line = &self.buf[pos..eol];
            let size_part = line.split(|&b| b == b';').next().unwrap_or(b"");
            let size = parse_hex(size_part).ok_or_else(|| bad("bad chunk size"))?;
            pos = eol + 2;
            if size == 0 {
                // Trailer section: header lines up to an empty line.
                loop {
                    let eol = self.line_end(pos).await?;
                    let empty = eol == pos;
                    pos = eol + 2;
                    if empty {
                        return Ok(pos);
                    }
                }
            }
            while self.buf.len() < pos + size + 2 {
                self.fill().await?;
            }
            self.body.extend_from_slice(&self.buf[pos..pos + size]);
            if &self.buf[pos + size..pos + size + 2] != b"\r\n" {
                return Err(bad("chunk not followed by CRLF"));
            }
            pos += size + 2;
        }
    }
}
