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
//! * `idempotency`: (only when named) that cost alone: intake without a key,
//!   with keys that grow and with random keys, alternated.
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
//!
//! `--report` runs every scenario, each against a fresh server, then the shared
//! yardstick, and writes `BENCHMARKS.md` (see `report.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

mod client;
mod options;
mod report;
mod scenarios;
mod server;
mod setup;
mod stats;

use client::{resolve, tls_summary, Target};
use options::{parse_args, Options, USAGE};
use scenarios::inbound::{self, InboundResult};
use scenarios::{admin, background, backup, memory, poll_leased, pollack, push, push_slow};
use scenarios::{retention, subscriptions, tracking};
use server::{check_alive, server_binary, Server};
use setup::{provision, register_schema, wait_for_ok};

const SENDER: &str = "ACME";
const RECEIVER: &str = "GLOBEX";
const INBOUND_PATH: &str = "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order&version=1";
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
    let result = if opts.report {
        rt.block_on(report::run(opts))
    } else {
        rt.block_on(run(opts))
    };
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
            report::watch(Some(&*s));
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
    let mut result = InboundResult::default();
    // Messages stored for the receiver and not yet acknowledged by us.
    let mut backlog: u64 = 0;

    if opts.inbound {
        let (r, created) = inbound::phase(&ctx, opts, &mut server).await?;
        result = r;
        backlog += created;
    }
    if opts.pollack {
        pollack::phase(&ctx, opts.duration, backlog, &mut server).await?;
    }

    // Before memory: its restart moves the server to a new port, and the
    // million stored messages would not be what push is about.
    if opts.push {
        push::run(&ctx, &admin_token, &mut server, opts).await?;
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
    if opts.idempotency && !opts.background {
        background::key_cost(&ctx, opts.connections, opts.duration).await;
        check_alive(&mut server, "idempotency")?;
    }
    if opts.subscriptions {
        let pid = server.as_ref().and_then(Server::pid);
        subscriptions::run(&ctx, &admin_token, opts.connections, opts.duration, pid).await?;
        check_alive(&mut server, "subscriptions")?;
    }

    if opts.memory {
        memory::run(&ctx, server.as_mut(), opts.messages.unwrap_or(1_000_000)).await?;
    }

    if let Some(s) = server.as_mut() {
        let status = s.stop().await?;
        println!("server   stopped: {status}");
    }
    Ok(result)
}
