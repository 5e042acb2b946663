//! What a slow disk must not allow, against the real binary: a debug build waits 1.5 s
//! before each flush while the file named by `WAYBILL_SLOW_FLUSH_FILE` exists.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::process::start_with;
use crate::{agent, send};

#[test]
fn a_keyed_call_whose_client_gave_up_holds_its_key_until_its_answer_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("slow-flush");
    let flag_env = flag.to_str().unwrap().to_owned();
    let server = start_with(dir.path(), &[("WAYBILL_SLOW_FLUSH_FILE", &flag_env)]);
    let (acme, globex) = server.acme_to_globex(json!({}));
    let url = format!("{}/api/v1/documents/order", server.base);
    let headers = [
        ("X-Api-Key", acme.as_str()),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "client-gave-up"),
    ];
    let body = br#"{"lines":[{"sku":"A-1","qty":2}]}"#;

    // The disk turns slow; a client gives up after 300 ms and closes its connection,
    // while its write waits for the flush.
    std::fs::write(&flag, b"").unwrap();
    let impatient: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(300)))
        .build()
        .into();
    let mut req = http::Request::builder().method("POST").uri(&url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let first = impatient.run(req.body(body.to_vec()).unwrap());
    assert!(first.is_err(), "the first call should have timed out");

    // It sends the same call again at once: the first one's write is still queued, so
    // the key is still held, whatever happened to the first call's connection.
    let again = send(&agent(), "POST", &url, &headers, Some(body));
    let err = again.error(409, "idempotency_key_in_use");
    assert_eq!(err["field"], "Idempotency-Key", "{err}");
    assert_eq!(
        again
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );

    // The disk recovers; once the first write is durable its answer is what a repeat
    // gets, and there is one document.
    std::fs::remove_file(&flag).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let replayed = loop {
        let r = send(&agent(), "POST", &url, &headers, Some(body));
        if r.status != 409 {
            break r;
        }
        assert!(Instant::now() < deadline, "the key was never released");
        std::thread::sleep(Duration::from_millis(100));
    };
    let doc = replayed.data(201);
    assert_eq!(
        replayed
            .headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true"),
        "{doc}"
    );
    let polled = send(
        &agent(),
        "GET",
        &format!("{}/api/v1/transmissions?limit=100", server.base),
        &[("X-Api-Key", &globex)],
        None,
    )
    .data(200);
    let items = polled.as_array().expect("array");
    assert_eq!(items.len(), 1, "one document, not two: {polled}");
}
