//! Push delivery: sends every queued push to its receiver's URL, signed, and retries on the
//! configured schedule.
//!
//! The loop reads the deliveries that are due, leases them (a crash during an attempt
//! makes them due again when the lease ends: retried, never lost), and runs each attempt
//! on a blocking thread, at most [`CONCURRENCY`] at a time, since the HTTP client blocks.
//! It sleeps until the next delivery falls due or intake queues a new one.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::model::Env;
use crate::outbound::{self, sign};
use crate::store::records::{transmission_uuid, AttemptRec, MessageRec, PartnerRec};
use crate::store::{now_ms, Leased, Next};
use crate::AppState;

/// Attempts under way at once.
pub const CONCURRENCY: usize = 64;
/// How long a held (paused or disabled) push waits before it is looked at again.
const HOLD_MS: i64 = 5_000;

/// Runs until aborted at shutdown. Attempts still under way then are retried after their
/// lease, on the next start.
pub async fn run(state: AppState) {
    let agent = outbound::agent(
        Duration::from_secs(state.config.delivery.timeout_seconds),
        state.config.outbound_allow(),
    );
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    // The client gives up after the timeout; the margin covers the bookkeeping after it.
    let lease_ms = (state.config.delivery.timeout_seconds as i64 + 5) * 1000;
    let health = Arc::new(Health::default());
    loop {
        let now = now_ms();
        let wake = state.store.deliveries_ready.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let (due, next) = match state.store.due_deliveries(now, CONCURRENCY * 4) {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the push queue");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if due.is_empty() {
            let idle = next.map_or(Duration::from_secs(60), |at| {
                Duration::from_millis((at - now).clamp(1, 60_000) as u64)
            });
            tokio::select! {
                _ = &mut wake => {}
                _ = tokio::time::sleep(idle) => {}
            }
            continue;
        }
        let leased = match state.store.lease_deliveries(due, now + lease_ms, now).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot lease pushes");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for lease in leased {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let (state, agent, health) = (state.clone(), agent.clone(), Arc::clone(&health));
            tokio::spawn(async move {
                // The span is attached to the future, not entered on a thread: an entered
                // span held across an await corrupts the per-thread span stack.
                let d = &lease.delivery;
                let span = tracing::info_span!("push", delivery = %d.id, attempt = d.attempt + 1);
                deliver(&state, &agent, &health, lease)
                    .instrument(span)
                    .await;
                drop(permit);
            });
        }
    }
}

/// One attempt and its bookkeeping.
async fn deliver(state: &AppState, agent: &ureq::Agent, health: &Health, lease: Leased) {
    let d = lease.delivery.clone();
    let now = now_ms();
    let message = match state.store.message(d.env, d.message_id) {
        Ok(Some(m)) => m,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the message to push");
            return;
        }
    };
    let Some(receiver) = message
        .transmissions
        .get(usize::from(d.index))
        .map(|t| t.receiver.clone())
    else {
        return;
    };
    let partner = state.store.directory().partner(&receiver).cloned();
    let (attempt, next) = match partner
        .as_ref()
        .and_then(|p| p.push_url_for(d.env).map(|u| (p, u.to_owned())))
    {
        None => (None, Next::ToPolling),
        Some((p, _)) if p.push_held(d.env).is_some() => (None, Next::HoldUntil(now + HOLD_MS)),
        Some((p, url)) => {
            let payload = match state.store.payload(&message) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the payload to push");
                    return;
                }
            };
            let request = Request::new(p, &message, d.index, d.env, d.id, &url, payload);
            let agent = agent.clone();
            let result = tokio::task::spawn_blocking(move || request.send(&agent)).await;
            let Ok(outcome) = result else { return };
            let next = decide(state, health, p, d.env, d.attempt, &outcome).await;
            (Some(outcome.record), next)
        }
    };
    if let Err(e) = state
        .store
        .finish_delivery(lease, attempt, next, now_ms())
        .await
    {
        tracing::error!(error = %e, "cannot record a push attempt");
    }
}

/// What an attempt's outcome means for the delivery.
async fn decide(
    state: &AppState,
    health: &Health,
    partner: &PartnerRec,
    env: Env,
    before: u32,
    outcome: &Outcome,
) -> Next {
    let status = outcome.record.status;
    let endpoint = (partner.code.clone(), env);
    if status.is_some_and(|s| (200..300).contains(&s)) {
        health.succeeded(&endpoint);
        return Next::Delivered;
    }
    let limit_ms = state
        .config
        .delivery
        .disable_after_hours
        .saturating_mul(3_600_000) as i64;
    // The receiver says the endpoint is gone (410), or it has failed for too long: stop
    // pushing there until an admin turns it back on; its transmissions wait.
    let disable = if status == Some(410) {
        Some("the endpoint answered 410 Gone".to_owned())
    } else if health.failing_for(endpoint, now_ms()) >= limit_ms {
        let hours = state.config.delivery.disable_after_hours;
        Some(format!("no successful push for {hours} hours"))
    } else {
        None
    };
    if let Some(reason) = disable {
        if let Err(e) = state
            .store
            .disable_endpoint(&partner.code, env, reason)
            .await
        {
            tracing::error!(error = ?e, "cannot disable the endpoint");
        }
        return Next::HoldUntil(now_ms() + HOLD_MS);
    }
    let schedule = &state.config.delivery.retry_schedule;
    match schedule.get(before as usize) {
        None => Next::Failed(outcome.describe()),
        Some(&secs) => {
            let planned = (secs as f64 * 1000.0 * jitter()) as i64;
            let asked = outcome
                .retry_after_secs
                .map_or(0, |s| s.saturating_mul(1000) as i64);
            Next::RetryAt(now_ms() + planned.max(asked))
        }
    }
}

/// A factor in [0.8, 1.2): spreads retries so a recovering receiver is not hit by all of
/// them at once.
fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let r = getrandom::fill(&mut b)
        .map(|_| u16::from_le_bytes(b))
        .unwrap_or(32768);
    0.8 + 0.4 * f64::from(r) / 65536.0
}

/// Everything one attempt needs, owned, so it can run on a blocking thread.
struct Request {
    url: String,
    headers: Vec<(String, String)>,
    content_type: String,
    body: bytes::Bytes,
    signing_secrets: Vec<String>,
    webhook_id: String,
}

struct Outcome {
    record: AttemptRec,
    retry_after_secs: Option<u64>,
}

impl Outcome {
    fn describe(&self) -> String {
        match (&self.record.error, self.record.status) {
            (Some(e), _) => e.clone(),
            (None, Some(s)) => format!("HTTP {s} after the last attempt"),
            (None, None) => "no answer".into(),
        }
    }
}

impl Request {
    fn new(
        p: &PartnerRec,
        m: &MessageRec,
        index: u8,
        env: Env,
        id: uuid::Uuid,
        base: &str,
        body: bytes::Bytes,
    ) -> Request {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("sender", &m.sender);
        query.append_pair("receiver", &p.code);
        query.append_pair("doctype", &m.doctype);
        if let Some(v) = &m.version {
            query.append_pair("version", v);
        }
        for (k, v) in &p.push_params {
            query.append_pair(k, v);
        }
        let sep = if base.contains('?') { '&' } else { '?' };
        let now = now_ms();
        Request {
            url: format!("{base}{sep}{}", query.finish()),
            headers: p.push_headers.clone(),
            content_type: m.content_type.clone(),
            body,
            signing_secrets: p
                .signing_for(env)
                .active(now)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            webhook_id: format!("msg_{}", id.simple()),
        }
        .with_transmission(transmission_uuid(m.id, usize::from(index)))
    }

    fn with_transmission(mut self, uuid: uuid::Uuid) -> Request {
        self.headers
            .push(("waybill-transmission".into(), uuid.to_string()));
        self
    }

    fn send(self, agent: &ureq::Agent) -> Outcome {
        let at = now_ms();
        let timestamp = at / 1000;
        let secrets: Vec<&str> = self.signing_secrets.iter().map(String::as_str).collect();
        let record = |status, latency_ms, response, error| AttemptRec {
            at,
            url: self.url.clone(),
            status,
            latency_ms,
            response,
            error,
        };
        let signature = match sign::header(&secrets, &self.webhook_id, timestamp, &self.body) {
            Ok(s) => s,
            Err(e) => {
                return Outcome {
                    record: record(None, 0, String::new(), Some(e.to_string())),
                    retry_after_secs: None,
                }
            }
        };
        let mut req = agent
            .post(&self.url)
            .header("content-type", &self.content_type)
            .header("webhook-id", &self.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature);
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let started = Instant::now();
        match req.send(&self.body[..]) {
            Ok(mut res) => {
                let status = res.status().as_u16();
                let retry_after_secs = res
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .filter(|_| status == 429 || status == 503);
                let mut head = Vec::with_capacity(1024);
                let _ = res.body_mut().as_reader().take(1024).read_to_end(&mut head);
                let latency = started.elapsed().as_millis() as u64;
                let response = String::from_utf8_lossy(&head).into_owned();
                let error = (300..400)
                    .contains(&status)
                    .then(|| format!("HTTP {status}: redirects are not followed"));
                Outcome {
                    record: record(Some(status), latency, response, error),
                    retry_after_secs,
                }
            }
            Err(e) => {
                let latency = started.elapsed().as_millis() as u64;
                let error = match e {
                    ureq::Error::Timeout(_) => "timed out".to_owned(),
                    other => other.to_string(),
                };
                Outcome {
                    record: record(None, latency, String::new(), Some(error)),
                    retry_after_secs: None,
                }
            }
        }
    }
}

/// Since when each push endpoint has been failing without a single success, for
/// `delivery.disable_after_hours`. Kept in memory: after a restart the clock starts again,
/// which can only delay a disable, never cause a wrong one.
#[derive(Default)]
struct Health {
    failing_since: std::sync::Mutex<std::collections::HashMap<(String, Env), i64>>,
}

impl Health {
    fn succeeded(&self, endpoint: &(String, Env)) {
        if let Ok(mut m) = self.failing_since.lock() {
            m.remove(endpoint);
        }
    }

    /// Records a failure and returns how long (ms) the endpoint has been failing.
    fn failing_for(&self, endpoint: (String, Env), now: i64) -> i64 {
        match self.failing_since.lock() {
            Ok(mut m) => now - *m.entry(endpoint).or_insert(now),
            Err(_) => 0,
        }
    }
}
