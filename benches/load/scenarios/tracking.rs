//! `--phase tracking`: searches over a store of many messages.
//!
//! Received times cannot be chosen over HTTP, so the store is filled through the
//! library's own intake (`Store::accept`, the call the HTTP intake makes, with the same
//! writer, indexes and group commit) with received times spread over 30 days; then the
//! server is started on that data directory and searched over HTTP:
//!
//! * a one-day search of one partner with 10 results per page (page 1 twice: once on a
//!   cache the restart left cold, once warm; then page 50),
//! * a search by request id, and by external reference,
//! * the default search (today), for scale.
//!
//! Each search is sent one at a time on one keep-alive connection, so the latencies are
//! the server's, not a queue's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::client::{build_request, Conn, Target};
use crate::report::{self, Row};
use crate::server::{dir_size, Server};
use crate::setup::{admin_post, wait_for_ok};
use crate::stats::{latency_summary, micros};
use crate::{RESTART_TIMEOUT, STARTUP_TIMEOUT};
use waybill::model::Env;
use waybill::store::{NewMessage, Store};

const PARTNERS: usize = 10;
const DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;
/// Concurrent intake calls while filling: enough to fill the writer's groups.
const FILL_TASKS: u64 = 128;
/// Searches measured per kind.
const SAMPLES: usize = 400;

fn partner(i: u64) -> String {
    format!("P{}", i % PARTNERS as u64)
}

/// Request `n` of the fill: every fourth is a batch of four messages with a batch
/// reference, the others a single message; each message has an external reference.
fn request_shape(n: u64) -> (Option<String>, usize) {
    if n % 4 == 0 {
        (Some(format!("BATCH-{n}")), 4)
    } else {
        (None, 1)
    }
}

/// Fills `data_dir` with about `messages` messages; returns a sample of
/// `(partner, request id, external reference)` to search for.
pub async fn fill(
    data_dir: &std::path::Path,
    messages: u64,
) -> Result<Vec<(String, String, String)>, String> {
    let store = Arc::new(
        Store::open(data_dir, 64).map_err(|e| format!("open {}: {e}", data_dir.display()))?,
    );
    // Requests of 1.75 messages on average.
    let requests = messages * 4 / 7;
    let now = waybill::store::now_ms();
    let start = now - DAYS * DAY_MS;
    let step = (DAYS * DAY_MS) as f64 / requests.max(1) as f64;
    let next = Arc::new(AtomicU64::new(0));
    let stored = Arc::new(AtomicU64::new(0));
    let payload = Bytes::from_static(br#"{"order":"PO-1","lines":[{"sku":"A1","qty":2}]}"#);
    let begun = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..FILL_TASKS {
        let (store, next, stored, payload) = (
            Arc::clone(&store),
            Arc::clone(&next),
            Arc::clone(&stored),
            payload.clone(),
        );
        tasks.spawn(async move {
            let mut sample = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    return Ok::<_, String>(sample);
                }
                let (batch_reference, count) = request_shape(n);
                let new: Vec<NewMessage> = (0..count)
                    .map(|i| NewMessage {
                        doctype: ["order", "invoice", "despatch"][(n as usize + i) % 3].into(),
                        version: Some("1".into()),
                        external_reference: Some(format!("REF-{n}-{i}")),
                        content_type: "application/json".into(),
                        payload: payload.clone(),
                        receivers: vec!["GLOBEX".into()],
                        validation_errors: Vec::new(),
                    })
                    .collect();
                let at = start + (n as f64 * step) as i64;
                let (request, _) = store
                    .accept(Env::Live, &partner(n), batch_reference, new, at)
                    .await
                    .map_err(|e| format!("intake: {e}"))?;
                if n % 997 == 0 {
                    sample.push((partner(n), request.id.to_string(), format!("REF-{n}-0")));
                }
                let total = stored.fetch_add(count as u64, Ordering::Relaxed) + count as u64;
                if total % 100_000 < count as u64 {
                    println!(
                        "tracking fill: {total} messages in {:.0}s",
                        begun.elapsed().as_secs_f64()
                    );
                }
            }
        });
    }
    let mut sample = Vec::new();
    while let Some(r) = tasks.join_next().await {
        sample.extend(r.map_err(|e| format!("fill task: {e}"))??);
    }
    let secs = begun.elapsed().as_secs_f64();
    let total = stored.load(Ordering::Relaxed);
    println!(
        "tracking fill: {total} messages in {requests} requests, {PARTNERS} partners, {DAYS} days: {secs:.0}s ({:.0} messages/s)",
        total as f64 / secs
    );
    let s = Arc::clone(&store);
    tokio::task::spawn_blocking(move || s.close())
        .await
        .map_err(|e| format!("close: {e}"))?;
    Ok(sample)
}

/// Runs the phase with a server of its own.
pub async fn run(messages: u64) -> Result<(), String> {
    let mut server = Server::start(crate::server_binary(), false, false)?;
    // The first start makes the data directory and the admin token; stop it to fill.
    let target = server.target();
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    wait_for_ok(&target, "/readyz", deadline, Some(&mut server)).await?;
    let token = server.admin_token(deadline).await?;
    server.stop().await?;

    let sample = fill(&server.data_dir, messages).await?;
    let size = dir_size(&server.data_dir);
    println!("tracking store: {:.0} MB on disk", size as f64 / 1e6);

    server.spawn()?;
    let target = server.target();
    let started = Instant::now();
    wait_for_ok(
        &target,
        "/readyz",
        Instant::now() + RESTART_TIMEOUT,
        Some(&mut server),
    )
    .await?;
    let ready = started.elapsed().as_secs_f64();
    println!("tracking restart: ready in {ready:.2}s");
    report::watch(Some(&server));
    report::add(
        Row::new(format!(
            "tracking: a store of {messages} messages, {PARTNERS} partners, {DAYS} days"
        ))
        .disk(size)
        .note(format!("restart to ready {ready:.2} s")),
    );
    let mut keys = Vec::new();
    for p in 0..PARTNERS as u64 {
        let code = partner(p);
        admin_post(
            &target,
            &token,
            "/admin/api/partners",
            &json!({"code": code, "name": code}),
        )
        .await?;
        let (status, v) = admin_post(
            &target,
            &token,
            &format!("/admin/api/partners/{code}/keys"),
            &json!({}),
        )
        .await?;
        let key = v["data"]["key"]
            .as_str()
            .ok_or_else(|| format!("key for {code}: {status} {v}"))?;
        keys.push(key.to_owned());
    }

    let now = waybill::store::now_ms();
    let day = |i: usize| {
        let ms = now - ((i % DAYS as usize) as i64 + 1) * DAY_MS;
        waybill::api::rfc3339(ms)[..10].to_owned()
    };
    let mut conn = Conn::connect(&target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let pick = |i: usize| (i * 7919) % sample.len().max(1);
    let one_day: Vec<(usize, Value)> = (0..SAMPLES)
        .map(|i| {
            (
                i % PARTNERS,
                json!({"search": [{"by": "receivedDate", "value": day(i * 13)}],
                       "paging": {"number": 1, "size": 10}}),
            )
        })
        .collect();
    // The first pass finds most of the store's pages on disk, not in its cache.
    let first = one_day.clone();
    measure(
        "one day, page 1 of 10, first pass",
        first,
        &keys,
        &target,
        &mut conn,
    )
    .await?;
    measure("one day, page 1 of 10", one_day, &keys, &target, &mut conn).await?;
    let deep: Vec<(usize, Value)> = (0..SAMPLES)
        .map(|i| {
            (
                i % PARTNERS,
                json!({"search": [{"by": "receivedDate", "value": day(i * 13)}],
                       "paging": {"number": 50, "size": 10}, "sorts": [{"by": "receivedDate", "order": "asc"}]}),
            )
        })
        .collect();
    measure(
        "one day, page 50 of 10, asc",
        deep,
        &keys,
        &target,
        &mut conn,
    )
    .await?;
    let code_index = |code: &str| code[1..].parse::<usize>().unwrap_or(0);
    let by_id: Vec<(usize, Value)> = (0..SAMPLES)
        .map(|i| {
            let (code, id, _) = &sample[pick(i)];
            (
                code_index(code),
                json!({"search": [{"by": "id", "value": [id]}]}),
            )
        })
        .collect();
    measure("by request id", by_id, &keys, &target, &mut conn).await?;
    let by_ref: Vec<(usize, Value)> = (0..SAMPLES)
        .map(|i| {
            let (code, _, r) = &sample[pick(i)];
            (
                code_index(code),
                json!({"search": [{"by": "externalReference", "value": r}]}),
            )
        })
        .collect();
    measure("by external reference", by_ref, &keys, &target, &mut conn).await?;
    let typed: Vec<(usize, Value)> = (0..SAMPLES / 4)
        .map(|i| {
            (
                i % PARTNERS,
                json!({"search": [{"by": "receivedDate", "value": day(i * 13)},
                                  {"by": "messageType", "value": "invoice"},
                                  {"by": "messageStatus", "value": ["queued", "failed"]}],
                       "paging": {"number": 1, "size": 10}}),
            )
        })
        .collect();
    measure(
        "one day + type + status, page 1 of 10",
        typed,
        &keys,
        &target,
        &mut conn,
    )
    .await?;
    let status = server.stop().await?;
    println!("server   stopped: {status}");
    Ok(())
}

/// Sends each search in turn on `conn` and prints what they found and how long they took.
async fn measure(
    name: &str,
    bodies: Vec<(usize, Value)>,
    keys: &[String],
    target: &Target,
    conn: &mut Conn,
) -> Result<(), String> {
    let mark = report::mark();
    let mut lat = Vec::with_capacity(bodies.len());
    let (mut rows, mut total) = (0u64, 0u64);
    for (p, body) in bodies {
        let req = build_request(
            "POST",
            "/api/v1/tracking",
            &target.host,
            &[
                ("X-Api-Key", &keys[p]),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        );
        let t = Instant::now();
        let status = conn
            .request(&req)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        lat.push(micros(t.elapsed()));
        let v: Value = serde_json::from_slice(&conn.body).unwrap_or(Value::Null);
        if status != 200 {
            return Err(format!("{name}: {status} {v}"));
        }
        rows += v["data"]["requests"]
            .as_array()
            .map_or(0, |r| r.len() as u64);
        total += v["data"]["paging"]["totalRequests"].as_u64().unwrap_or(0);
    }
    let n = lat.len().max(1) as f64;
    report::record(
        Row::new(format!("tracking search: {name}"))
            .latency(&lat)
            .messages(lat.len() as u64)
            .note(format!(
                "{} searches, one at a time; CPU per search",
                lat.len()
            )),
        mark,
    );
    println!(
        "tracking {name}: {} searches, {:.1} rows and {:.0} matches each, {}",
        lat.len(),
        rows as f64 / n,
        total as f64 / n,
        latency_summary(lat, &[("p50", 0.50), ("p99", 0.99)], true)
    );
    Ok(())
}
