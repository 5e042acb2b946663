//! The crash suite's clients and their ledger: writers that send singles (some under an
//! `Idempotency-Key`, sent again after a kill), batches, pushes and background calls;
//! pollers that lease and acknowledge; peekers that poll without a lease (`lease=0`)
//! and only look. All over one pooled async HTTP/1.1 client (so every request in flight
//! has its own connection). Every answer is written down as it arrives; only a 2xx
//! counts as a promise.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// A small seeded generator (splitmix64): the same seed gives the same choices.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// How a message was sent, which decides where it must turn up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// One intake call to the polling receiver.
    Single,
    /// A member of a batch to the polling receiver.
    Batch,
    /// One intake call to the push receiver.
    Push,
    /// An intake call to the polling receiver run as a background job.
    Job,
    /// One intake call to the polling receiver under an `Idempotency-Key`.
    Keyed,
}

/// One message the clients tried to send.
pub struct Sent {
    pub kind: Kind,
    pub payload: Vec<u8>,
    /// Answered 2xx (for a job: the job was accepted with its 202).
    pub ok: bool,
    /// The transmission, when the intake answer named it.
    pub uuid: Option<String>,
}

pub struct Batch {
    pub reference: String,
    pub refs: Vec<String>,
    pub ok: bool,
}

pub struct Job {
    pub reference: String,
    /// Set once the submission was answered 202.
    pub id: Option<String>,
    /// Submitted with the webhook URL (else with `Waybill-Background: none`).
    pub reported: bool,
}

/// A message sent under an `Idempotency-Key`, and what its answers said.
pub struct Keyed {
    /// The message's external reference (one key, one reference).
    pub reference: String,
    /// The request, sent again byte for byte when the key is resent.
    pub path: String,
    /// The message id of the first 2xx under the key.
    pub id: Option<String>,
    /// Sends made under the key (the first and every resend).
    pub sends: u32,
    /// Which send was the first answered 2xx (1 for the first send).
    pub answered_by: Option<u32>,
    /// Resends answered 2xx with `Idempotent-Replayed: true`.
    pub replays: u32,
}

/// A key to send again once the server has been killed since `life`.
pub struct Resend {
    pub key: String,
    pub life: usize,
}

/// One transmission as polls handed it out.
pub struct Handout {
    pub reference: String,
    pub message_id: String,
    /// The server lives (rounds) it was handed out in, in order.
    pub lives: Vec<usize>,
}

/// Everything the clients sent and saw, across all rounds.
#[derive(Default)]
pub struct Ledger {
    /// The current server life (0 for the first start).
    pub life: usize,
    /// By external reference, which is unique per message and starts its payload.
    pub messages: HashMap<String, Sent>,
    pub batches: Vec<Batch>,
    pub jobs: Vec<Job>,
    /// By transmission uuid.
    pub handouts: HashMap<String, Handout>,
    /// Acknowledgements answered 2xx, by uuid, with when the answer arrived.
    pub acks: HashMap<String, Instant>,
    /// By idempotency key.
    pub keyed: HashMap<String, Keyed>,
    /// Keys waiting to be sent again after the next kill.
    pub resends: Vec<Resend>,
    /// Transmissions lease=0 polls handed out, by uuid: the reference and how often.
    pub peeked: HashMap<String, (String, u64)>,
    /// Promises found broken, each described.
    pub broken: Vec<String>,
    /// Answers that were neither 2xx nor a failed connection: the requests were wrong.
    pub refused: Vec<String>,
    pub duplicated: u64,
    pub recovered: u64,
}

impl Ledger {
    /// Checks what any poll sent at `sent_at` hands out (`how` names the poll): nothing
    /// acknowledged before it, nothing never sent, every payload as sent. Returns the
    /// uuid and reference.
    fn check_item(&mut self, item: &Value, sent_at: Instant, how: &str) -> (String, String) {
        let uuid = item["uuid"].as_str().unwrap_or_default().to_owned();
        let reference = item["externalReference"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if self.acks.get(&uuid).is_some_and(|at| *at < sent_at) {
            self.broken.push(format!(
                "{reference} ({uuid}) was handed out again by a {how} after its acknowledgement"
            ));
        }
        let payload = item["payload"]
            .as_str()
            .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok());
        match self.messages.get(&reference) {
            None => self
                .broken
                .push(format!("{uuid} was never sent (reference {reference:?})")),
            Some(sent) if payload.as_deref() != Some(&sent.payload[..]) => self.broken.push(
                format!("{reference} was handed out by a {how} with another payload"),
            ),
            Some(_) => {}
        }
        (uuid, reference)
    }

    /// A lease=0 poll sent at `sent_at` handed out `item`.
    fn peeked(&mut self, item: &Value, sent_at: Instant) {
        let (uuid, reference) = self.check_item(item, sent_at, "lease=0 poll");
        self.peeked.entry(uuid).or_insert((reference, 0)).1 += 1;
    }

    /// A leased poll sent at `sent_at` handed out `item`.
    fn handed_out(&mut self, item: &Value, sent_at: Instant) {
        let (uuid, reference) = self.check_item(item, sent_at, "leased poll");
        let life = self.life;
        let acked = self.acks.contains_key(&uuid);
        match self.handouts.get_mut(&uuid) {
            Some(h) => {
                self.duplicated += 1;
                if h.lives.last().is_some_and(|l| *l < life) {
                    if !acked {
                        self.recovered += 1;
                    }
                    h.lives.push(life);
                }
            }
            None => {
                let message_id = item["messageId"].as_str().unwrap_or_default().to_owned();
                self.handouts.insert(
                    uuid,
                    Handout {
                        reference,
                        message_id,
                        lives: vec![life],
                    },
                );
            }
        }
    }
}

pub type Shared = Arc<Mutex<Ledger>>;

/// An answer: its status and body.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// It carried `Idempotent-Replayed: true`.
    pub replayed: bool,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn data(&self) -> Value {
        serde_json::from_slice::<Value>(&self.body).unwrap_or_default()["data"].clone()
    }
}

/// A pooled HTTP/1.1 client for one server life.
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    /// Requests sent and not yet answered.
    pub in_flight: AtomicUsize,
}

impl Http {
    pub fn new(base: &str) -> Http {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build_http();
        Http {
            client,
            base: base.to_owned(),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// One request; `None` when no answer came (refused, cut off by the kill, too slow).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Option<Reply> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("request");
        let exchange = async {
            let res = self.client.request(req).await.ok()?;
            let status = res.status().as_u16();
            let replayed = res
                .headers()
                .get("idempotent-replayed")
                .is_some_and(|v| v.as_bytes() == b"true");
            let body = res.into_body().collect().await.ok()?.to_bytes().to_vec();
            Some(Reply {
                status,
                body,
                replayed,
            })
        };
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let reply = tokio::time::timeout(Duration::from_secs(60), exchange)
            .await
            .ok()
            .flatten();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        reply
    }
}

/// What the clients need to reach the server as the partners.
pub struct Cast {
    pub acme: String,
    pub globex: String,
    /// Where finished background jobs report.
    pub job_hook: String,
}

/// A message's payload: its reference, a space, then random bytes (any byte value).
fn payload(reference: &str, rng: &mut Rng) -> Vec<u8> {
    let mut p = format!("{reference} ").into_bytes();
    let n = 16 + rng.below(200) as usize;
    p.extend((0..n).map(|_| rng.next() as u8));
    p
}

/// Records an answer that is neither 2xx nor missing.
fn note_refused(ledger: &Shared, what: &str, reply: &Option<Reply>) {
    if let Some(r) = reply.as_ref().filter(|r| !r.ok()) {
        let text = String::from_utf8_lossy(&r.body).into_owned();
        ledger
            .lock()
            .unwrap()
            .refused
            .push(format!("{what}: {} {text}", r.status));
    }
}

/// Sends a message under a fresh idempotency key. A key whose answer was cut off, and
/// every other key answered 2xx, waits to be sent again after the next kill.
async fn send_keyed(http: &Http, ledger: &Shared, cast: &Cast, rng: &mut Rng, name: &str) {
    let key = format!("k{name}");
    let reference = format!("i{name}");
    let path = format!(
        "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order&version=1\
         &externalReference={reference}"
    );
    let p = payload(&reference, rng);
    {
        let mut l = ledger.lock().unwrap();
        let sent = Sent {
            kind: Kind::Keyed,
            payload: p.clone(),
            ok: false,
            uuid: None,
        };
        l.messages.insert(reference.clone(), sent);
        let keyed = Keyed {
            reference,
            path: path.clone(),
            id: None,
            sends: 1,
            answered_by: None,
            replays: 0,
        };
        l.keyed.insert(key.clone(), keyed);
    }
    let reply = keyed_call(http, cast, &path, &key, p).await;
    keyed_answer(ledger, &key, reply, false, rng.below(2) == 0);
}

/// Sends the request of `key` again, byte for byte.
async fn resend_keyed(http: &Http, ledger: &Shared, cast: &Cast, key: &str) {
    let (path, p) = {
        let mut l = ledger.lock().unwrap();
        let Some(k) = l.keyed.get_mut(key) else {
            return;
        };
        k.sends += 1;
        let (path, reference) = (k.path.clone(), k.reference.clone());
        (path, l.messages[&reference].payload.clone())
    };
    let reply = keyed_call(http, cast, &path, key, p).await;
    keyed_answer(ledger, key, reply, true, false);
}

/// Sends every key still waiting to be sent again, one after another; for the last
/// life, which no kill follows.
pub async fn resend_all(http: Arc<Http>, ledger: Shared, cast: Arc<Cast>) {
    let keys: Vec<String> = std::mem::take(&mut ledger.lock().unwrap().resends)
        .into_iter()
        .map(|r| r.key)
        .collect();
    for key in keys {
        resend_keyed(&http, &ledger, &cast, &key).await;
    }
}

async fn keyed_call(
    http: &Http,
    cast: &Cast,
    path: &str,
    key: &str,
    payload: Vec<u8>,
) -> Option<Reply> {
    let headers = [
        ("X-Api-Key", cast.acme.as_str()),
        ("Content-Type", "application/octet-stream"),
        ("Idempotency-Key", key),
    ];
    http.call("POST", path, &headers, payload).await
}

/// Writes down an answer under `key`. Once a key has been answered 2xx, every later
/// answer must be that one again (the same message id) marked `Idempotent-Replayed`.
/// A send cut off is sent again after the next kill, as a client would; so is one
/// answered 2xx when `again`.
fn keyed_answer(ledger: &Shared, key: &str, reply: Option<Reply>, resend: bool, again: bool) {
    let mut l = ledger.lock().unwrap();
    let life = l.life;
    let key = key.to_owned();
    let r = match reply {
        None => {
            l.resends.push(Resend { key, life });
            return;
        }
        Some(r) if !r.ok() => {
            let text = String::from_utf8_lossy(&r.body).into_owned();
            l.refused.push(format!("key {key}: {} {text}", r.status));
            return;
        }
        Some(r) => r,
    };
    let data = r.data();
    let id = data["id"].as_str().map(str::to_owned);
    let uuid = data["transmissions"][0]["uuid"].as_str().map(str::to_owned);
    let ledger = &mut *l;
    let k = ledger.keyed.get_mut(&key).expect("a key sent");
    if resend && r.replayed {
        k.replays += 1;
    }
    match (&k.id, &id) {
        (Some(first), Some(now)) if first != now => ledger.broken.push(format!(
            "key {key} was answered with message {first}, then with {now}"
        )),
        (Some(first), _) if !r.replayed => ledger.broken.push(format!(
            "key {key} (message {first}) was answered again without Idempotent-Replayed"
        )),
        (None, Some(_)) => {
            k.id = id;
            k.answered_by = Some(k.sends);
        }
        (None, None) => ledger
            .broken
            .push(format!("key {key} was answered 2xx without a message id")),
        _ => {}
    }
    if let Some(sent) = ledger.messages.get_mut(&k.reference) {
        sent.ok = true;
        sent.uuid = sent.uuid.take().or(uuid);
    }
    if again {
        ledger.resends.push(Resend { key, life });
    }
}

/// Sends singles, batches, pushes and background calls until `stop`.
pub async fn writer(
    http: Arc<Http>,
    ledger: Shared,
    cast: Arc<Cast>,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
    task: usize,
) {
    let octets = "application/octet-stream";
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        // A key waiting since before the last kill goes first, as a client's retry would.
        let (life, due) = {
            let mut l = ledger.lock().unwrap();
            let life = l.life;
            let due = l.resends.iter().position(|r| r.life < life);
            (life, due.map(|i| l.resends.swap_remove(i).key))
        };
        if let Some(key) = due {
            resend_keyed(&http, &ledger, &cast, &key).await;
            continue;
        }
        let pick = rng.below(20);
        if (9..12).contains(&pick) {
            send_keyed(
                &http,
                &ledger,
                &cast,
                &mut rng,
                &format!("{life}.{task}.{n}"),
            )
            .await;
        } else if (12..15).contains(&pick) {
            let reference = format!("b{life}.{task}.{n}");
            let size = 2 + rng.below(5);
            let refs: Vec<String> = (0..size).map(|i| format!("{reference}.{i}")).collect();
            let mut messages = Vec::new();
            {
                let mut l = ledger.lock().unwrap();
                for r in &refs {
                    let p = payload(r, &mut rng);
                    messages.push(json!({
                        "messageType": "order", "receiver": "GLOBEX", "externalReference": r,
                        "contentType": octets,
                        "payload": base64::engine::general_purpose::STANDARD.encode(&p),
                    }));
                    let sent = Sent {
                        kind: Kind::Batch,
                        payload: p,
                        ok: false,
                        uuid: None,
                    };
                    l.messages.insert(r.clone(), sent);
                }
                l.batches.push(Batch {
                    reference: reference.clone(),
                    refs: refs.clone(),
                    ok: false,
                });
            }
            let body = json!({"batchReference": reference, "messages": messages});
            let headers = [
                ("X-Api-Key", cast.acme.as_str()),
                ("Content-Type", "application/json"),
            ];
            let reply = http
                .call(
                    "POST",
                    "/api/v1/requests",
                    &headers,
                    body.to_string().into_bytes(),
                )
                .await;
            note_refused(&ledger, &reference, &reply);
            if reply.is_some_and(|r| r.ok()) {
                let mut l = ledger.lock().unwrap();
                for r in &refs {
                    if let Some(s) = l.messages.get_mut(r) {
                        s.ok = true;
                    }
                }
                if let Some(b) = l
                    .batches
                    .iter_mut()
                    .rev()
                    .find(|b| b.reference == reference)
                {
                    b.ok = true;
                }
            }
        } else {
            let (kind, receiver, doctype, prefix) = match pick {
                0..9 => (Kind::Single, "GLOBEX", "order", "s"),
                15..18 => (Kind::Push, "INITECH", "invoice", "p"),
                _ => (Kind::Job, "GLOBEX", "order", "j"),
            };
            let reference = format!("{prefix}{life}.{task}.{n}");
            let p = payload(&reference, &mut rng);
            {
                let mut l = ledger.lock().unwrap();
                let sent = Sent {
                    kind,
                    payload: p.clone(),
                    ok: false,
                    uuid: None,
                };
                l.messages.insert(reference.clone(), sent);
                if kind == Kind::Job {
                    l.jobs.push(Job {
                        reference: reference.clone(),
                        id: None,
                        reported: n % 2 == 0,
                    });
                }
            }
            let path = format!(
                "/api/v1/inbound?sender=ACME&receiver={receiver}&doctype={doctype}&version=1\
                 &externalReference={reference}"
            );
            let mut headers = vec![("X-Api-Key", cast.acme.as_str()), ("Content-Type", octets)];
            if kind == Kind::Job {
                let hook = if n % 2 == 0 { &cast.job_hook } else { "none" };
                headers.push(("Waybill-Background", hook));
            }
            let reply = http.call("POST", &path, &headers, p).await;
            note_refused(&ledger, &reference, &reply);
            if let Some(r) = reply.filter(Reply::ok) {
                let data = r.data();
                let mut l = ledger.lock().unwrap();
                if kind == Kind::Job {
                    if let Some(j) = l.jobs.iter_mut().rev().find(|j| j.reference == reference) {
                        j.id = data["id"].as_str().map(str::to_owned);
                    }
                }
                if let Some(s) = l.messages.get_mut(&reference) {
                    s.ok = true;
                    s.uuid = data["transmissions"][0]["uuid"].as_str().map(str::to_owned);
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
}

/// One poll of the polling receiver's transmissions with a lease of `lease` seconds (0:
/// only look), and when it was sent.
async fn poll(http: &Http, cast: &Cast, lease: u32) -> (Instant, Option<Reply>) {
    let key = [("X-Api-Key", cast.globex.as_str())];
    let path = format!("/api/v1/transmissions?limit=20&lease={lease}");
    let sent_at = Instant::now();
    (sent_at, http.call("GET", &path, &key, Vec::new()).await)
}

/// Leases the polling receiver's transmissions and acknowledges each, until `stop`.
pub async fn poller(http: Arc<Http>, ledger: Shared, cast: Arc<Cast>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let (sent_at, reply) = poll(&http, &cast, 5).await;
        let items = match reply {
            Some(r) if r.ok() => r.data().as_array().cloned().unwrap_or_default(),
            other => {
                note_refused(&ledger, "poll", &other);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if items.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        {
            let mut l = ledger.lock().unwrap();
            for item in &items {
                l.handed_out(item, sent_at);
            }
        }
        // The acknowledgements of one poll go out together, each on its own connection.
        let mut acks = tokio::task::JoinSet::new();
        for item in &items {
            let uuid = item["uuid"].as_str().unwrap_or_default().to_owned();
            acks.spawn(ack(http.clone(), ledger.clone(), cast.clone(), uuid));
        }
        while acks.join_next().await.is_some() {}
    }
}

/// Polls without a lease (`lease=0`) until `stop`, only looking: what it is handed
/// stays pending, for the pollers to lease and acknowledge.
pub async fn peeker(http: Arc<Http>, ledger: Shared, cast: Arc<Cast>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let (sent_at, reply) = poll(&http, &cast, 0).await;
        match reply {
            Some(r) if r.ok() => {
                let items = r.data().as_array().cloned().unwrap_or_default();
                let mut l = ledger.lock().unwrap();
                for item in &items {
                    l.peeked(item, sent_at);
                }
            }
            other => note_refused(&ledger, "lease=0 poll", &other),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Acknowledges one transmission as processed and records a 2xx.
async fn ack(http: Arc<Http>, ledger: Shared, cast: Arc<Cast>, uuid: String) {
    let headers = [
        ("X-Api-Key", cast.globex.as_str()),
        ("Content-Type", "application/json"),
    ];
    let path = format!("/api/v1/transmissions/status/{uuid}");
    let body = br#"{"status":"processed"}"#.to_vec();
    let reply = http.call("PUT", &path, &headers, body).await;
    note_refused(&ledger, "ack", &reply);
    if reply.is_some_and(|r| r.ok()) {
        let mut l = ledger.lock().unwrap();
        l.acks.entry(uuid).or_insert_with(Instant::now);
    }
}
