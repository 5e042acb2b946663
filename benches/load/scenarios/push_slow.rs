//! `--phase push-slow`: a healthy receiver's push latency next to a receiver that takes
//! three seconds per call. SLOW is given a backlog larger than every outbound slot; then
//! messages to FAST are sent at a steady rate, and the time from each intake to its arrival
//! at FAST is measured. With a fair engine FAST's latency stays near the unloaded figure.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client::{build_request, one_shot};
use crate::report::{self, Row};
use crate::setup::{admin_call, admin_post};
use crate::stats::{is_success, latency_summary, now_micros};
use crate::{Ctx, REQUEST_TIMEOUT, SENDER};

/// How long SLOW takes to answer each call.
const SLOW_CALL: Duration = Duration::from_secs(3);
/// Messages queued for SLOW before the measurement: more than all outbound slots.
const SLOW_BACKLOG: usize = 400;
/// Messages per second sent to FAST while SLOW is saturated.
const FAST_RATE: u64 = 50;

/// A receiver that answers 200 after `delay` and records, per arrival, the send time
/// carried in the body (`{"sentAtMicros":N}`) and the arrival time.
struct Receiver {
    url: String,
    arrivals: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl Receiver {
    async fn start(delay: Duration) -> Result<Receiver, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("receiver: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&arrivals);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, delay, Arc::clone(&log)));
            }
        });
        Ok(Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            arrivals,
        })
    }

    fn count(&self) -> usize {
        self.arrivals.lock().map_or(0, |a| a.len())
    }
}

async fn serve(mut stream: TcpStream, delay: Duration, log: Arc<Mutex<Vec<(u64, u64)>>>) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        // Headers, then a Content-Length body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let at = now_micros();
        let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
        let sent = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["sentAtMicros"].as_u64())
            .unwrap_or(at);
        if let Ok(mut l) = log.lock() {
            l.push((sent, at));
        }
        tokio::time::sleep(delay).await;
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Creates a receiving partner with a push URL and a route from ACME to it.
async fn partner(ctx: &Ctx, token: &str, code: &str, url: &str) -> Result<(), String> {
    let (status, v) = admin_post(
        &ctx.target,
        token,
        "/admin/api/partners",
        &json!({"code": code, "name": code, "pushUrl": url}),
    )
    .await?;
    if !is_success(status) {
        return Err(format!("creating {code}: {status} {v}"));
    }
    let (status, v) = admin_post(
        &ctx.target,
        token,
        "/admin/api/routes",
        &json!({"sender": SENDER, "receiver": code, "doctype": "*"}),
    )
    .await?;
    if !is_success(status) {
        return Err(format!("routing to {code}: {status} {v}"));
    }
    Ok(())
}

/// Sends one message from ACME to `receiver`, carrying its send time.
async fn send(ctx: &Ctx, receiver: &str) -> Result<(), String> {
    let body = format!(r#"{{"sentAtMicros":{}}}"#, now_micros());
    let path = format!("/api/v1/inbound?sender={SENDER}&receiver={receiver}&doctype=order");
    let auth = format!("Bearer {}", ctx.sender_key);
    let req = build_request(
        "POST",
        &path,
        &ctx.target.host,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    );
    let (status, resp) = one_shot(&ctx.target, &req, REQUEST_TIMEOUT)
        .await
        .map_err(|e| format!("send to {receiver}: {e}"))?;
    if !is_success(status) {
        return Err(format!(
            "send to {receiver}: {status} {}",
            String::from_utf8_lossy(&resp)
        ));
    }
    Ok(())
}

/// The phase.
pub async fn run(ctx: &Ctx, token: &str, duration: Duration) -> Result<(), String> {
    let slow = Receiver::start(SLOW_CALL).await?;
    let fast = Receiver::start(Duration::ZERO).await?;
    partner(ctx, token, "SLOW", &slow.url).await?;
    partner(ctx, token, "FAST", &fast.url).await?;
    for _ in 0..SLOW_BACKLOG {
        send(ctx, "SLOW").await?;
    }
    // Let SLOW's calls take their slots.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mark = report::mark();
    let started = Instant::now();
    let mut sent = 0u64;
    let gap = Duration::from_micros(1_000_000 / FAST_RATE);
    while started.elapsed() < duration {
        send(ctx, "FAST").await?;
        sent += 1;
        let next = started + gap * sent as u32;
        tokio::time::sleep_until(next.into()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (fast.count() as u64) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let latency: Vec<u32> = fast
        .arrivals
        .lock()
        .map_err(|_| "receiver log poisoned")?
        .iter()
        .map(|(sent, at)| at.saturating_sub(*sent).min(u64::from(u32::MAX)) as u32)
        .collect();
    let arrived = latency.len();
    let row = Row::new(format!(
        "push beside a receiver taking {} s per call",
        SLOW_CALL.as_secs()
    ))
    .rate(FAST_RATE as f64, "deliveries/s, paced")
    .latency(&latency)
    .messages(arrived as u64)
    .note(format!(
        "the healthy receiver's intake to delivery; {arrived} of {sent} delivered"
    ));
    let quantiles = [("p50", 0.50), ("p99", 0.99)];
    println!(
        "push-slow healthy receiver next to one taking {} s per call ({SLOW_BACKLOG} queued): \
         {arrived} of {sent} delivered at {FAST_RATE}/s, intake to receiver {}; \
         the slow one got {} calls meanwhile",
        SLOW_CALL.as_secs(),
        latency_summary(latency, &quantiles, true),
        slow.count(),
    );
    report::record(row, mark);
    // Stop pushing to the slow receiver so the server can stop promptly.
    for code in ["SLOW", "FAST"] {
        let path = format!("/admin/api/partners/{code}");
        let body = json!({"pushPaused": true});
        admin_call(&ctx.target, token, "PATCH", &path, Some(&body)).await?;
    }
    Ok(())
}
