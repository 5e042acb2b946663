//! The crash suite: the real binary under load from 64 writers, 8 pollers and 2 peekers,
//! every request in flight on its own connection, killed with SIGKILL at a random moment,
//! round after round on the same data directory. Writers send singles, singles under an
//! `Idempotency-Key`, atomic batches, messages to a receiver with a push URL and
//! background calls (half report to a webhook); pollers lease and acknowledge; peekers
//! poll with `lease=0` and only look; the polling receiver subscribes to its changes.
//! After every restart the writers first send again the keys whose answers the kill cut
//! off, and half of those answered 2xx: a key answered once must be answered with the
//! same message, marked `Idempotent-Replayed`, and never make a second one. After every
//! restart the checker compares what the server holds with what it promised (every 2xx),
//! and a final life drains everything and checks it all arrived: see `check.rs`.
//!
//! The choices (kill moments, message kinds, payload bytes) come from one seed, printed
//! first; `WAYBILL_CRASH_SEED` repeats them (the timing of a real machine does not
//! repeat, so a run is reproduced in kind, not to the byte).
//!
//! `rounds_lose_nothing` is the whole suite on a given data directory with a hook at
//! each kill; the power-cut suite (`powercut.rs`) runs it on a filesystem that loses
//! everything unsynced there.

pub(crate) mod check;
pub(crate) mod load;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::process::{start_with, Server};
use crate::receiver::Receiver;
use crate::{agent, send};
use check::Receivers;
use load::{Cast, Http, Kind, Rng, Shared};

/// Kills, each followed by a restart.
const ROUNDS: usize = 6;
/// Tasks sending, each one request at a time on its own connection.
const WRITERS: usize = 64;
/// Tasks polling and acknowledging.
const POLLERS: usize = 8;
/// Tasks polling with `lease=0`, which only look.
const PEEKERS: usize = 2;
/// How long the final life may take to deliver and hand out everything.
const DRAIN: Duration = Duration::from_secs(120);

/// Retries a second apart and short attempts, so a delivery cut off by a kill is made
/// again soon after the restart; a short subscription window.
const SETTINGS: [(&str, &str); 3] = [
    (
        "WAYBILL_DELIVERY__RETRY_SCHEDULE",
        "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    ),
    ("WAYBILL_DELIVERY__TIMEOUT_SECONDS", "2"),
    ("WAYBILL_SUBSCRIPTIONS__BATCH_WINDOW_MS", "200"),
];

fn seed() -> u64 {
    std::env::var("WAYBILL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            now.as_nanos() as u64
        })
}

/// ACME sends orders to GLOBEX, which polls and subscribes to its changes, and invoices
/// to INITECH, which is pushed to.
fn setup(server: &Server, receivers: &Receivers) -> Cast {
    let (acme, globex) = server.acme_to_globex(json!({}));
    let push_url = format!("{}/push", receivers.push.url);
    let initech = json!({"code": "INITECH", "name": "Initech", "pushUrl": push_url});
    let route = json!({"sender": "ACME", "receiver": "INITECH", "doctype": "invoice"});
    for (path, body) in [("partners", initech), ("routes", route)] {
        let r = server.admin("POST", &format!("/admin/api/{path}"), body);
        assert_eq!(r["success"], true, "{r}");
    }
    let subscription = json!({
        "systemName": "crash-suite",
        "url": format!("{}/changed?ids={{ids}}", receivers.callbacks.url),
        "events": ["message.status", "transmission.created"],
    });
    send(
        &agent(),
        "POST",
        &format!("{}/api/v1/subscriptions", server.base),
        &[("X-Api-Key", &globex), ("Content-Type", "application/json")],
        Some(subscription.to_string().as_bytes()),
    )
    .data(201);
    Cast {
        acme,
        globex,
        job_hook: format!("{}/done", receivers.jobs.url),
    }
}

/// Runs the writers and pollers against `server`, kills it with SIGKILL after `delay`,
/// and waits for every client to finish. Returns the requests in flight at the kill.
fn load_then_kill(
    rt: &tokio::runtime::Runtime,
    server: &mut Server,
    cast: &Arc<Cast>,
    ledger: &Shared,
    rng: &mut Rng,
    delay: Duration,
) -> usize {
    let http = Arc::new(Http::new(&server.base));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task in 0..WRITERS {
        let rng = Rng::new(rng.next());
        let (http, ledger, cast, stop) = (http.clone(), ledger.clone(), cast.clone(), stop.clone());
        tasks.push(rt.spawn(load::writer(http, ledger, cast, stop, rng, task)));
    }
    for _ in 0..POLLERS {
        let (http, ledger, cast, stop) = (http.clone(), ledger.clone(), cast.clone(), stop.clone());
        tasks.push(rt.spawn(load::poller(http, ledger, cast, stop)));
    }
    for _ in 0..PEEKERS {
        let (http, ledger, cast, stop) = (http.clone(), ledger.clone(), cast.clone(), stop.clone());
        tasks.push(rt.spawn(load::peeker(http, ledger, cast, stop)));
    }
    std::thread::sleep(delay);
    let in_flight = http.in_flight.load(Ordering::SeqCst);
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("wait");
    stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for t in tasks {
            t.await.expect("client task");
        }
    });
    in_flight
}

/// Sends again the keys still waiting for it, then lets the last life run with pollers
/// and peekers until nothing is outstanding (or `DRAIN` passes); returns what is still
/// outstanding then.
fn drain(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    cast: &Arc<Cast>,
    ledger: &Shared,
    receivers: &Receivers,
) -> Vec<String> {
    let http = Arc::new(Http::new(&server.base));
    rt.block_on(load::resend_all(http.clone(), ledger.clone(), cast.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let pollers: Vec<_> = (0..POLLERS + PEEKERS)
        .map(|i| {
            let (http, ledger, cast, stop) =
                (http.clone(), ledger.clone(), cast.clone(), stop.clone());
            if i < POLLERS {
                rt.spawn(load::poller(http, ledger, cast, stop))
            } else {
                rt.spawn(load::peeker(http, ledger, cast, stop))
            }
        })
        .collect();
    let deadline = Instant::now() + DRAIN;
    let mut settled = HashSet::new();
    let open = loop {
        let open = check::outstanding(server, &cast.acme, ledger, receivers, &mut settled);
        if open.is_empty() || Instant::now() > deadline {
            break open;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for p in pollers {
            p.await.expect("poller");
        }
    });
    open
}

#[test]
fn sigkill_rounds_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    rounds_lose_nothing("crash suite", ROUNDS, dir.path(), |_| {});
}

/// The suite on the data directory `dir`: `rounds` times load, SIGKILL, `at_kill(round)`
/// (what else happens to the machine while the server is down) and a restart with the
/// checker; then the drain and the final checks. Panics on any broken promise. `name`
/// starts what it prints.
pub(crate) fn rounds_lose_nothing(
    name: &str,
    rounds: usize,
    dir: &Path,
    mut at_kill: impl FnMut(usize),
) {
    let started = Instant::now();
    let seed = seed();
    println!("{name}: seed {seed} (WAYBILL_CRASH_SEED={seed} makes the same choices)");
    let mut rng = Rng::new(seed);
    let receivers = Receivers {
        push: Receiver::start(vec![]),
        callbacks: Receiver::start(vec![]),
        jobs: Receiver::start(vec![]),
    };
    let mut server = start_with(dir, &SETTINGS);
    let cast = Arc::new(setup(&server, &receivers));
    let ledger: Shared = Arc::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut lost = Vec::new();
    for round in 1..=rounds {
        let delay = Duration::from_millis(1000 + rng.below(3000));
        let in_flight = load_then_kill(&rt, &mut server, &cast, &ledger, &mut rng, delay);
        at_kill(round);
        ledger.lock().unwrap().life = round;
        server = start_with(dir, &SETTINGS);
        let wrong = check::store_agrees(&server, &cast.acme, &ledger, false);
        let l = ledger.lock().unwrap();
        let ok = l.messages.values().filter(|s| s.ok).count();
        println!(
            "round {round}: killed after {delay:?} with {in_flight} requests in flight; \
             {ok} of {} messages and jobs answered 2xx so far, {} acknowledgements, {} keys \
             to send again; {} wrong after restart",
            l.messages.len(),
            l.acks.len(),
            l.resends.len(),
            wrong.len()
        );
        lost.extend(wrong);
    }
    let draining = Instant::now();
    let open = drain(&rt, &server, &cast, &ledger, &receivers);
    println!(
        "drain: {} outstanding after {:.1} s",
        open.len(),
        draining.elapsed().as_secs_f64()
    );
    lost.extend(open);
    lost.extend(check::store_agrees(&server, &cast.acme, &ledger, true));
    let http = Arc::new(Http::new(&server.base));
    lost.extend(rt.block_on(check::payloads_intact(
        http,
        cast.acme.clone(),
        ledger.clone(),
    )));
    let (extra, wrong) = check::deliveries(&ledger, &receivers);
    lost.extend(wrong);

    let l = ledger.lock().unwrap();
    lost.extend(l.broken.iter().cloned());
    let messages = l
        .messages
        .values()
        .filter(|s| s.ok && s.kind != Kind::Job)
        .count();
    let jobs = l.jobs.iter().filter(|j| j.id.is_some()).count();
    let acknowledged = messages + jobs + l.acks.len();
    let keys = l.keyed.values().filter(|k| k.id.is_some()).count();
    let resent = l.keyed.values().map(|k| k.sends as u64 - 1).sum::<u64>();
    // Keys whose first send the kill cut off and a resend got an answer for; a replay
    // among those is a first send the server had stored with its answer.
    let late: Vec<&load::Keyed> = l
        .keyed
        .values()
        .filter(|k| k.answered_by.is_some_and(|n| n > 1))
        .collect();
    let late_replayed = late.iter().filter(|k| k.replays > 0).count();
    let replayed = l.keyed.values().map(|k| k.replays as u64).sum::<u64>();
    let peeked = l.peeked.values().map(|(_, n)| n).sum::<u64>();
    println!(
        "{name}: rounds {rounds}, acknowledged {acknowledged}, lost {}, duplicated {}, \
         recovered {}, replayed {replayed}, peeked {peeked} ({messages} messages, {jobs} jobs \
         and {} acknowledgements answered 2xx; {keys} idempotency keys answered 2xx, {resent} \
         resends after a kill, {} keys answered only by a resend, {late_replayed} of them as a \
         replay; {} transmissions handed out by lease=0 polls; {:.1} s)",
        lost.len(),
        l.duplicated + extra,
        l.recovered,
        l.acks.len(),
        late.len(),
        l.peeked.len(),
        started.elapsed().as_secs_f64()
    );
    for what in lost.iter().take(40) {
        println!("  lost: {what}");
    }
    for what in l.refused.iter().take(10) {
        println!("  refused: {what}");
    }
    assert!(
        lost.is_empty(),
        "{} promises broken (seed {seed})",
        lost.len()
    );
    assert!(l.refused.is_empty(), "{} requests refused", l.refused.len());
    // Otherwise the run proved nothing about keys sent again or lease=0 polls.
    assert!(
        replayed > 0,
        "no key was answered as a replay (seed {seed})"
    );
    assert!(
        peeked > 0,
        "no lease=0 poll was handed anything (seed {seed})"
    );
}
