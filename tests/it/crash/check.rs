//! The crash suite's checker, in the manner of a total-queue checker: from the ledger of
//! what was promised (2xx answers) and what was seen (polls, pushes, callbacks), and from
//! what the restarted server now says, it lists every promise broken.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{json, Value};

use super::load::{Http, Kind, Ledger, Shared};
use crate::process::Server;
use crate::receiver::Receiver;
use crate::{agent, send};

/// The local receivers the server calls.
pub struct Receivers {
    /// The push receiver's endpoint: every transmission to INITECH.
    pub push: Receiver,
    /// The polling receiver's subscription callbacks.
    pub callbacks: Receiver,
    /// Finished background jobs.
    pub jobs: Receiver,
}

/// A GET as a partner; `None` unless it answered 200.
fn get(server: &Server, key: &str, path: &str) -> Option<Value> {
    let url = format!("{}{path}", server.base);
    let r = send(&agent(), "GET", &url, &[("X-Api-Key", key)], None);
    (r.status == 200).then(|| r.json()["data"].clone())
}

/// Every stored message the sender's tracking finds for `refs`: by reference, the
/// messages (id → status) that carry it.
pub(crate) fn stored(
    server: &Server,
    acme: &str,
    refs: &[&String],
) -> HashMap<String, HashMap<String, String>> {
    let mut found: HashMap<String, HashMap<String, String>> = HashMap::new();
    for chunk in refs.chunks(1000) {
        let body = json!({"search": [{"by": "externalReference", "value": chunk}]});
        let r = send(
            &agent(),
            "POST",
            &format!("{}/api/v1/tracking", server.base),
            &[("X-Api-Key", acme), ("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        );
        for request in r.data(200)["requests"].as_array().into_iter().flatten() {
            for m in request["payload"].as_array().into_iter().flatten() {
                let (Some(reference), Some(id)) =
                    (m["externalReference"].as_str(), m["id"].as_str())
                else {
                    continue;
                };
                let status = m["messageStatus"].as_str().unwrap_or_default();
                found
                    .entry(reference.to_owned())
                    .or_default()
                    .insert(id.to_owned(), status.to_owned());
            }
        }
    }
    found
}

/// The transmission uuid of each reference handed out by a poll.
fn uuids_by_reference(l: &Ledger) -> HashMap<&str, &str> {
    l.handouts
        .iter()
        .map(|(uuid, h)| (h.reference.as_str(), uuid.as_str()))
        .collect()
}

/// The store as the sender sees it: every 2xx message there once, nothing stored twice,
/// batches whole or absent, acknowledged ones complete, each idempotency key answered
/// 2xx behind exactly the one message it answered with. With `final_state`, also every
/// accepted job's message and every push delivered. Returns what is wrong.
pub fn store_agrees(
    server: &Server,
    acme: &str,
    ledger: &Shared,
    final_state: bool,
) -> Vec<String> {
    let l = ledger.lock().unwrap();
    let refs: Vec<&String> = l.messages.keys().collect();
    let found = stored(server, acme, &refs);
    let uuids = uuids_by_reference(&l);
    let accepted_jobs: HashSet<&str> = l
        .jobs
        .iter()
        .filter(|j| j.id.is_some())
        .map(|j| j.reference.as_str())
        .collect();
    let mut wrong = Vec::new();
    for (reference, sent) in &l.messages {
        let copies = found.get(reference);
        let n = copies.map_or(0, HashMap::len);
        if n > 1 {
            wrong.push(format!("{reference} is stored {n} times"));
        }
        let promised = match sent.kind {
            Kind::Job => final_state && accepted_jobs.contains(reference.as_str()),
            _ => sent.ok,
        };
        if promised && n == 0 {
            wrong.push(format!("{reference} was answered 2xx and is not stored"));
        }
        let status = copies.and_then(|c| c.values().next()).map(String::as_str);
        let acked = uuids
            .get(reference.as_str())
            .is_some_and(|u| l.acks.contains_key(*u));
        if acked && status != Some("complete") {
            wrong.push(format!("{reference} was acknowledged and is {status:?}"));
        }
        if final_state && sent.kind == Kind::Push && sent.ok && status != Some("processed") {
            wrong.push(format!("{reference} was pushed and is {status:?}"));
        }
    }
    for (key, k) in &l.keyed {
        let Some(id) = &k.id else { continue };
        let copies = found.get(&k.reference);
        if copies.is_some_and(|c| !c.contains_key(id)) {
            wrong.push(format!(
                "key {key} was answered with message {id}, and {} holds {:?}",
                k.reference,
                copies.map(|c| c.keys().collect::<Vec<_>>())
            ));
        }
    }
    for batch in &l.batches {
        let here = batch.refs.iter().filter(|r| found.contains_key(*r)).count();
        if (batch.ok && here != batch.refs.len()) || (here != 0 && here != batch.refs.len()) {
            wrong.push(format!(
                "batch {} ({}) has {here} of its {} messages",
                batch.reference,
                if batch.ok {
                    "answered 2xx"
                } else {
                    "unanswered"
                },
                batch.refs.len()
            ));
        }
    }
    wrong
}

/// Every id the callbacks for `event` named, with how many calls named it.
fn called_ids(callbacks: &Receiver, event: &str) -> HashMap<String, usize> {
    let mut ids: HashMap<String, usize> = HashMap::new();
    for call in callbacks.received() {
        let body: Value = serde_json::from_slice(&call.body).unwrap_or_default();
        if body["event"] != event {
            continue;
        }
        for id in body["ids"].as_array().into_iter().flatten() {
            *ids.entry(id.as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    ids
}

/// Job ids the job webhook was told of, with how many calls told it.
pub fn job_calls(jobs: &Receiver) -> HashMap<String, usize> {
    let mut ids: HashMap<String, usize> = HashMap::new();
    for call in jobs.received() {
        let body: Value = serde_json::from_slice(&call.body).unwrap_or_default();
        if let Some(id) = body["id"].as_str() {
            *ids.entry(id.to_owned()).or_default() += 1;
        }
    }
    ids
}

/// Pushed messages by reference (the payload's first word), with how often each arrived.
pub fn pushed(push: &Receiver) -> HashMap<String, usize> {
    let mut refs: HashMap<String, usize> = HashMap::new();
    for call in push.received() {
        let end = call.body.iter().position(|b| *b == b' ').unwrap_or(0);
        let reference = String::from_utf8_lossy(&call.body[..end]).into_owned();
        *refs.entry(reference).or_default() += 1;
    }
    refs
}

/// What has not yet happened that must happen eventually: each polled message handed out
/// and acknowledged, each push delivered, each job finished and reported, each change
/// called back. `settled` remembers what a status lookup already confirmed.
pub fn outstanding(
    server: &Server,
    acme: &str,
    ledger: &Shared,
    receivers: &Receivers,
    settled: &mut HashSet<String>,
) -> Vec<String> {
    let l = ledger.lock().unwrap();
    let uuids = uuids_by_reference(&l);
    let mut open = Vec::new();
    for (reference, sent) in &l.messages {
        let promised = match sent.kind {
            Kind::Job => l
                .jobs
                .iter()
                .any(|j| &j.reference == reference && j.id.is_some()),
            Kind::Push => false,
            _ => sent.ok,
        };
        if promised && !uuids.contains_key(reference.as_str()) {
            open.push(format!("{reference} was never handed out"));
        }
    }
    // A lease=0 poll only looks: what it was handed stays pending, so it must still reach
    // a leased poll (the pollers acknowledge only what they lease).
    for (uuid, (reference, _)) in &l.peeked {
        if !l.handouts.contains_key(uuid) {
            open.push(format!(
                "{reference} ({uuid}) was handed out by a lease=0 poll and never leased"
            ));
        }
    }
    // Everything handed out must end acknowledged; an acknowledgement cut off by the kill
    // may have been stored, and then the transmission says so.
    for (uuid, h) in &l.handouts {
        if l.acks.contains_key(uuid) || settled.contains(uuid) {
            continue;
        }
        let t = get(server, acme, &format!("/api/v1/transmissions/{uuid}"));
        if t.as_ref().is_some_and(|t| t["status"] == "complete") {
            settled.insert(uuid.clone());
        } else {
            open.push(format!("{} ({uuid}) is not acknowledged", h.reference));
        }
    }
    let arrived = pushed(&receivers.push);
    for (reference, sent) in &l.messages {
        if sent.kind == Kind::Push && sent.ok && !arrived.contains_key(reference) {
            open.push(format!("{reference} was never pushed"));
        }
    }
    let reported = job_calls(&receivers.jobs);
    for job in &l.jobs {
        let Some(id) = &job.id else { continue };
        if !settled.contains(id) {
            match get(server, acme, &format!("/api/v1/background/{id}")) {
                Some(j) if j["state"] == "completed" && j["responseStatus"] == 202 => {
                    settled.insert(id.clone());
                }
                Some(j) if j["state"] == "queued" || j["state"] == "running" => {
                    open.push(format!("job {id} ({}) is {}", job.reference, j["state"]));
                }
                other => open.push(format!("job {id} ({}) ended as {other:?}", job.reference)),
            }
        }
        if job.reported && !reported.contains_key(id) {
            open.push(format!("job {id} ({}) was never reported", job.reference));
        }
    }
    let created = called_ids(&receivers.callbacks, "transmission.created");
    let changed = called_ids(&receivers.callbacks, "message.status");
    let known = l.handouts.keys().chain(
        l.messages
            .values()
            .filter(|s| matches!(s.kind, Kind::Single | Kind::Keyed))
            .filter_map(|s| s.uuid.as_ref()),
    );
    for uuid in known {
        if !created.contains_key(uuid) {
            open.push(format!("no callback named the creation of {uuid}"));
        }
    }
    for (uuid, h) in &l.handouts {
        if l.acks.contains_key(uuid) && !changed.contains_key(&h.message_id) {
            open.push(format!("no callback named the change of {}", h.message_id));
        }
    }
    open
}

/// Fetches every accepted message's stored payload and compares it byte for byte;
/// returns the ones that differ or cannot be read.
pub async fn payloads_intact(http: Arc<Http>, acme: String, ledger: Shared) -> Vec<String> {
    let wanted: Vec<(String, Vec<u8>)> = {
        let l = ledger.lock().unwrap();
        let uuids = uuids_by_reference(&l);
        l.messages
            .iter()
            .filter_map(|(reference, sent)| {
                let uuid = sent
                    .uuid
                    .as_deref()
                    .or_else(|| uuids.get(reference.as_str()).copied())?;
                Some((uuid.to_owned(), sent.payload.clone()))
            })
            .collect()
    };
    let queue = Arc::new(std::sync::Mutex::new(wanted));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (queue, http, acme) = (queue.clone(), http.clone(), acme.clone());
        tasks.spawn(async move {
            let mut wrong = Vec::new();
            loop {
                let Some((uuid, expected)) = queue.lock().unwrap().pop() else {
                    return wrong;
                };
                let path = format!("/api/v1/transmissions/{uuid}/payload");
                let reply = http
                    .call("GET", &path, &[("X-Api-Key", &acme)], Vec::new())
                    .await;
                match reply {
                    Some(r) if r.status == 200 && r.body == expected => {}
                    Some(r) => wrong.push(format!("{uuid}: payload answered {}", r.status)),
                    None => wrong.push(format!("{uuid}: payload not answered")),
                }
            }
        });
    }
    let mut wrong = Vec::new();
    while let Some(done) = tasks.join_next().await {
        wrong.extend(done.expect("payload task"));
    }
    wrong
}

/// Pushes and job reports beyond the first (at-least-once allows them), and pushes that
/// carried what was never sent or sent otherwise.
pub fn deliveries(ledger: &Shared, receivers: &Receivers) -> (u64, Vec<String>) {
    let l = ledger.lock().unwrap();
    let mut extra = 0;
    let mut wrong = Vec::new();
    for call in receivers.push.received() {
        let end = call.body.iter().position(|b| *b == b' ').unwrap_or(0);
        let reference = String::from_utf8_lossy(&call.body[..end]).into_owned();
        match l.messages.get(&reference) {
            Some(sent) if sent.kind == Kind::Push && sent.payload == call.body => {}
            Some(_) => wrong.push(format!("{reference} was pushed with another payload")),
            None => wrong.push(format!("a push of something never sent: {reference:?}")),
        }
    }
    for n in pushed(&receivers.push).values() {
        extra += *n as u64 - 1;
    }
    // A report of a job whose 202 was cut off is fine: its id was never learnt.
    for n in job_calls(&receivers.jobs).values() {
        extra += *n as u64 - 1;
    }
    (extra, wrong)
}
