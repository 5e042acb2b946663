//! The push target: a bare HTTP/1.1 server in this process that records every delivery.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::sleep;

use crate::client::{contains_token, find, read_more};
use crate::scenarios::push::sender::{parse_push_body, SEQ_RUN};
use crate::stats::{now_micros, snippet};

/// What the receiver expects after `/hook`: the server adds these parameters.
pub const HOOK_QUERY: &[u8] = b"?sender=ACME&receiver=GLOBEX&doctype=order&version=1";
pub const HOOK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

// --- Receiver

/// One delivery as the receiver saw it.
#[derive(Clone, Copy)]
pub struct Arrival {
    pub at_us: u64,
    pub sent_us: u64,
    pub seq: u64,
    /// Its webhook-id had been seen before.
    pub dup_id: bool,
}

#[derive(Default)]
pub struct HookLogInner {
    pub arrivals: Vec<Arrival>,
    pub ids: std::collections::HashSet<u128>,
    pub seqs: std::collections::HashSet<u64>,
    /// Requests that were not a well-formed push (wrong target, a missing
    /// webhook header, a body we did not send); answered 200 all the same.
    pub anomalies: u64,
    pub first_anomaly: Option<String>,
}

/// What the receiver recorded; shared by its connection tasks.
#[derive(Default)]
pub struct HookLog {
    pub inner: std::sync::Mutex<HookLogInner>,
    /// Distinct sequence numbers seen, per run (index = run digit), so the
    /// waiting side can watch progress without taking the lock.
    pub distinct: [AtomicU64; 3],
    pub requests: AtomicU64,
    pub connections: AtomicU64,
}

impl HookLog {
    pub fn anomaly(&self, what: impl FnOnce() -> String) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.anomalies += 1;
        if g.first_anomaly.is_none() {
            g.first_anomaly = Some(what());
        }
    }

    pub fn record(&self, id: u128, at_us: u64, body: &[u8]) {
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

    pub fn distinct(&self, run: u64) -> u64 {
        self.distinct[run as usize].load(Ordering::Relaxed)
    }

    /// The arrivals of one run, in arrival order.
    pub fn arrivals(&self, run: u64) -> Vec<Arrival> {
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
pub struct HookServer {
    pub addr: SocketAddr,
    pub log: Arc<HookLog>,
    pub accept: tokio::task::JoinHandle<()>,
}

impl HookServer {
    pub async fn start() -> Result<HookServer, String> {
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

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        // Open connections end with the runtime; new ones are refused from here.
        self.accept.abort();
    }
}

pub async fn accept_hooks(listener: tokio::net::TcpListener, log: Arc<HookLog>) {
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
pub struct HookHead {
    pub content_length: usize,
    pub close: bool,
    pub webhook_id: Option<u128>,
    /// Why the request is not the push we expect, if it is not.
    pub problem: Option<String>,
}

/// A webhook-id as a number: `msg_` and 32 hex digits as they are, anything
/// else hashed (distinct ids then collide only by accident).
pub fn webhook_key(v: &[u8]) -> u128 {
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

pub fn parse_hook_head(head: &[u8]) -> Result<HookHead, String> {
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
pub async fn serve_hooks(mut stream: TcpStream, log: Arc<HookLog>) {
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
