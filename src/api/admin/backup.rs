//! `GET /admin/api/backup`: a consistent backup of the whole store, streamed as it is
//! made (see `store::backup`); and `GET /admin/api/export`: messages received in a time
//! range as JSON lines. Both are produced on a blocking thread into a small channel the
//! response body reads, so memory stays bounded and a client that stops reading stops
//! the work (its connection is cut by the write-stall limit, and the channel closes).

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::super::tracking::parse_time;
use super::super::{auth, ctx, finish, is_json_media, rfc3339, with_state, Ctx};
use super::env_filter;
use crate::error::ApiError;
use crate::model::Env;
use crate::server::streamed::{self, Chunk};
use crate::store::backup::BackupError;
use crate::store::records::transmission_uuid;
use crate::store::{MessageRec, StoreError};
use crate::AppState;

/// Chunks waiting between the producer and the connection: a few MiB at most.
const CHANNEL: usize = 8;
/// Export lines gathered into one chunk before it is sent.
const EXPORT_CHUNK: usize = 64 * 1024;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let s = move || with_state(state.clone());
    let backup = warp::path!("admin" / "api" / "backup")
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(backup)
        .map(finish);
    let export = warp::path!("admin" / "api" / "export")
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(export)
        .map(finish);
    backup.or(export).unify().boxed()
}

/// `GET /admin/api/backup`: admins only (not viewers: a backup holds every stored hash
/// and the token signing key). `409 backup_running` while another backup runs.
async fn backup(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    let actor = auth::admin(&state, &ctx)?;
    if actor.role() != crate::store::admins::Role::Admin {
        return Err(ApiError::forbidden(
            "a backup holds every credential hash; only an admin may take one",
        ));
    }
    let estimate = state.store.size_on_disk().unwrap_or(0);
    let (tx, rx) = mpsc::channel::<Chunk>(CHANNEL);
    let (started_tx, started) = oneshot::channel::<Result<(), BackupError>>();
    let store = std::sync::Arc::clone(&state.store);
    let who = actor.name();
    tokio::task::spawn_blocking(move || {
        let began = std::time::Instant::now();
        let mut started_tx = Some(started_tx);
        let result = store.backup(&mut |bytes| {
            if let Some(s) = started_tx.take() {
                let _ = s.send(Ok(()));
            }
            tx.blocking_send(Ok(Bytes::from(bytes)))
                .map_err(|_| std::io::Error::other("the client went away"))
        });
        match result {
            Ok(t) => {
                let took = began.elapsed();
                let bytes = t.segment_bytes;
                tracing::info!(
                    by = %who,
                    records = t.puts,
                    segments = t.segments,
                    segment_bytes = bytes,
                    reread_keys = t.reread_keys,
                    pause_us = t.pause_micros,
                    seconds = took.as_secs_f64(),
                    "backup taken"
                );
            }
            Err(e) => match started_tx.take() {
                Some(s) => {
                    let _ = s.send(Err(e));
                }
                None => {
                    tracing::warn!(by = %who, error = %e, "backup stopped");
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                }
            },
        }
    });
    match started.await {
        Ok(Ok(())) => {}
        Ok(Err(BackupError::Running)) => {
            let mut e = ApiError::conflict("another backup is running; try when it is done");
            e.code = "backup_running";
            return Err(e);
        }
        Ok(Err(BackupError::Store(e))) => return Err(e.into()),
        Ok(Err(e)) => return Err(ApiError::unavailable(e.to_string())),
        Err(_) => return Err(ApiError::unavailable("the backup did not start")),
    }
    let mut res = streamed::response("application/octet-stream", rx);
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_DISPOSITION,
        http::HeaderValue::from_static("attachment; filename=\"waybill.wbk\""),
    );
    h.insert(
        "x-waybill-estimated-bytes",
        http::HeaderValue::from(estimate),
    );
    Ok(res)
}

/// The export's range and what to put in it.
struct ExportQuery {
    envs: Vec<Env>,
    since: i64,
    until: i64,
    payloads: bool,
}

fn export_query(ctx: &Ctx) -> Result<ExportQuery, ApiError> {
    match ctx.param("format").filter(|f| !f.is_empty()) {
        None | Some("jsonl") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format {other:?} is not offered; the one format is jsonl"
            ))
            .field("format"))
        }
    }
    let time = |name: &str, default: i64| -> Result<i64, ApiError> {
        match ctx.param(name).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(raw) => parse_time(raw, name).map(|(t, _)| t),
        }
    };
    let since = time("since", 0)?;
    let until = time("until", i64::MAX / 2)?;
    if until <= since {
        return Err(ApiError::bad_request("until must come after since").field("until"));
    }
    let payloads = match ctx.param("payloads").filter(|v| !v.is_empty()) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("payloads is true or false").field("payloads")),
    };
    let envs = match env_filter(ctx)? {
        Some(e) => vec![e],
        None => vec![Env::Live, Env::Test],
    };
    Ok(ExportQuery {
        envs,
        since,
        until,
        payloads,
    })
}

/// `GET /admin/api/export?since=&until=&env=&payloads=&format=jsonl`: one JSON object
/// per line, oldest first. `since` is inclusive, `until` exclusive; a date is its
/// midnight (UTC).
async fn export(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let q = export_query(&ctx)?;
    let (tx, rx) = mpsc::channel::<Chunk>(CHANNEL);
    let store = std::sync::Arc::clone(&state.store);
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(EXPORT_CHUNK * 2);
        let gone = || StoreError::Closed;
        let result = store.export_messages(&q.envs, q.since, q.until, |m| {
            let payload = q.payloads.then(|| store.export_payload(&m));
            let line = export_line(&m, payload);
            if serde_json::to_writer(&mut buf, &line).is_err() {
                return Err(StoreError::Codec("an export line".into()));
            }
            buf.push(b'\n');
            if buf.len() >= EXPORT_CHUNK {
                let chunk = Bytes::from(std::mem::take(&mut buf));
                tx.blocking_send(Ok(chunk)).map_err(|_| gone())?;
            }
            Ok(true)
        });
        match result {
            Ok(()) if !buf.is_empty() => {
                let _ = tx.blocking_send(Ok(Bytes::from(buf)));
            }
            Ok(()) | Err(StoreError::Closed) => {}
            Err(e) => {
                tracing::warn!(error = %e, "export stopped");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    Ok(streamed::response("application/x-ndjson", rx))
}

/// One line of the export.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportLine {
    id: uuid::Uuid,
    request_id: uuid::Uuid,
    env: Env,
    sender: String,
    message_type: String,
    version: Option<String>,
    external_reference: Option<String>,
    content_type: String,
    payload_bytes: u32,
    message_status: crate::model::Status,
    received_at: String,
    processed_time: Option<String>,
    transmissions: Vec<Value>,
    /// A JSON payload, as it is (whitespace between tokens removed, so the line stays one line).
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Box<RawValue>>,
    /// Any other payload, base64 (standard alphabet, padded).
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    /// Why the payload was asked for but could not be read (damaged on disk).
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_error: Option<String>,
}

fn export_line(m: &MessageRec, payload: Option<Result<Bytes, StoreError>>) -> ExportLine {
    let mut line = ExportLine {
        id: m.id,
        request_id: m.request_id,
        env: m.env,
        sender: m.sender.clone(),
        message_type: m.doctype.clone(),
        version: m.version.clone(),
        external_reference: m.external_reference.clone(),
        content_type: m.content_type.clone(),
        payload_bytes: m.payload.len,
        message_status: m.status,
        received_at: rfc3339(m.received_at),
        processed_time: m.processed_at.map(rfc3339),
        transmissions: m
            .transmissions
            .iter()
            .enumerate()
            .map(|(i, t)| {
                json!({
                    "uuid": transmission_uuid(m.id, i),
                    "receiver": t.receiver,
                    "status": t.status,
                    "attempts": t.attempts,
                    "deliveredAt": t.delivered_at.map(rfc3339),
                    "acknowledgedAt": t.acknowledged_at.map(rfc3339),
                    "lastError": t.last_error,
                })
            })
            .collect(),
        payload: None,
        payload_base64: None,
        payload_error: None,
    };
    match payload {
        None => {}
        Some(Err(e)) => line.payload_error = Some(e.to_string()),
        Some(Ok(bytes)) => {
            let json = is_json_media(&crate::model::media_essence(&m.content_type))
                .then(|| compact_json(&bytes))
                .flatten();
            match json {
                Some(raw) => line.payload = Some(raw),
                None => {
                    use base64::Engine;
                    line.payload_base64 =
                        Some(base64::engine::general_purpose::STANDARD.encode(&bytes));
                }
            }
        }
    }
    line
}

/// `bytes` as JSON without the whitespace between tokens (strings untouched), or `None`
/// when they are not JSON.
fn compact_json(bytes: &[u8]) -> Option<Box<RawValue>> {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).ok()?;
    let mut out = Vec::with_capacity(bytes.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
    RawValue::from_string(String::from_utf8(out).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::compact_json;

    #[test]
    fn json_payloads_lose_only_the_whitespace_between_tokens() {
        let raw = b"{\n  \"a\" : [1, 2.50, 1e40],\n  \"b\": \"x  y \\\" z\\n\"\n}\n";
        let c = compact_json(raw).unwrap();
        assert_eq!(c.get(), r#"{"a":[1,2.50,1e40],"b":"x  y \" z\n"}"#);
        assert!(compact_json(b"{not json").is_none());
    }
}
