//! `--phase memory`: resident memory after storing many messages, and the time a restart
//! on that data needs until the server is ready again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::sleep;

use crate::report::{self, Row};
use crate::scenarios::inbound::run_inbound_count;
use crate::server::{rss_bytes, Server};
use crate::setup::wait_for_ok;
use crate::stats::{fmt_mb, print_first_error};
use crate::{Ctx, FILL_CONNECTIONS, RESTART_TIMEOUT};

pub async fn run(ctx: &Arc<Ctx>, server: Option<&mut Server>, messages: u64) -> Result<(), String> {
    let started = Instant::now();
    let mark = report::mark();
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
    let row = report::measured(
        Row::new(format!("store {} messages, then restart", t.created))
            .rate(t.created as f64 / secs, "msg/s")
            .latency(&t.lat)
            .messages(t.created),
        mark,
    );

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
    report::watch(Some(&*server));
    report::add(row.note(format!(
        "RSS {} after 5 s idle; restart to ready {:.2} s, RSS after restart {}",
        fmt_mb(rss),
        ready.as_secs_f64(),
        fmt_mb(rss_after)
    )));
    println!(
        "memory   {label}{} messages stored, RSS {}, restart to ready {:.2} s, RSS after restart {}",
        t.created,
        fmt_mb(rss),
        ready.as_secs_f64(),
        fmt_mb(rss_after)
    );
    Ok(())
}
