//! The edge, tried as an attacker or a careless partner would: hostile JSON, content types
//! and encodings, credentials checked before bodies are read, percent-encoded paths,
//! connections that send nothing, and a full writer queue. Each case also checks that
//! nothing was stored.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{acme_to_globex, spawn_app_with, TestApp};

const INBOUND: &str = "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order";

/// Sends raw bytes on a new connection and reads what comes back until the server closes
/// the connection or `wait` passes. Returns the text read and whether the server closed.
pub(crate) fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(bytes).expect("write");
    read_until_closed(&mut s, wait)
}

fn read_until_closed(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (String::from_utf8_lossy(&out).into_owned(), false);
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return (String::from_utf8_lossy(&out).into_owned(), false)
            }
            // A reset after the answer still counts as closed.
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), true),
        }
    }
}

/// The status code of the first response in `text`.
pub(crate) fn status_of(text: &str) -> Option<u16> {
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// How many transmissions GLOBEX can see (polled without a lease, so they stay).
fn pending(app: &TestApp, globex: &str) -> usize {
    app.poll(globex, "limit=100").len()
}

#[test]
fn json_payloads_must_parse_within_the_nesting_limit() {
    let (app, acme, globex) = acme_to_globex();
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes();

    for (ct, body) in [
        ("application/json", deep(100_000)),
        ("application/vnd.acme.order+json", deep(129)),
        ("application/json; charset=utf-8", b"{\"a\":".to_vec()),
        ("application/json", b"not json".to_vec()),
        ("application/json", Vec::new()),
    ] {
        let e = app
            .call(
                "POST",
                INBOUND,
                &[("X-Api-Key", &acme), ("Content-Type", ct)],
                Some(&body),
            )
            .error(400, "invalid_json");
        assert!(e["message"].as_str().unwrap().contains("JSON"), "{ct}: {e}");
    }
    assert_eq!(pending(&app, &globex), 0, "nothing refused was stored");

    // 128 levels are fine. Inlined, they are as JSON as long as the whole answer stays
    // within 128 levels for a common parser (this test's own), else as base64.
    for depth in [124, 128] {
        app.call(
            "POST",
            INBOUND,
            &[("X-Api-Key", &acme), ("Content-Type", "application/json")],
            Some(&deep(depth)),
        )
        .data(202);
    }
    // Not JSON by its content type: any bytes, inlined as base64.
    app.call(
        "POST",
        INBOUND,
        &[("X-Api-Key", &acme), ("Content-Type", "text/plain")],
        Some(&deep(1000)),
    )
    .data(202);
    let items = app.poll(&globex, "limit=10");
    let encodings: Vec<_> = items.iter().map(|i| i["payloadEncoding"].clone()).collect();
    assert_eq!(encodings, vec!["json", "base64", "base64"]);
    let inlined = serde_json::to_vec(&items[0]["payload"]).unwrap();
    assert_eq!(inlined, deep(124));
}

#[test]
fn content_types_are_parsed_as_media_types() {
    let (app, acme, globex) = acme_to_globex();
    let long = format!("text/{}", "x".repeat(200_000));
    for bad in [
        "text/plain\r\nX-Injected: yes",
        long.as_str(),
        "tëxt/plain",
        "text",
        "text/",
        "/plain",
        "text/plain; charset",
        "text/plain; charset=\"utf-8",
        "text plain/x",
    ] {
        let batch = json!({"messages": [
            {"messageType": "order", "receiver": "GLOBEX", "contentType": "text/plain", "payload": "eA=="},
            {"messageType": "order", "receiver": "GLOBEX", "contentType": bad, "payload": "eA=="},
        ]});
        let e = app
            .partner_json(&acme, "POST", "/api/v1/requests", &batch)
            .json();
        assert!(
            matches!(e["error"]["code"].as_str(), Some("validation_failed")),
            "{bad:?}: {e}"
        );
        assert_eq!(
            e["error"]["field"], "messages[1].contentType",
            "{bad:?}: {e}"
        );
    }
    // The Content-Type header of a single intake, as far as an HTTP client lets it through.
    let long_header = format!("application/{}", "x".repeat(300));
    for bad in [
        "text",
        "text/plain; charset=\"utf-8",
        long_header.as_str(),
        "text/plain; charset",
    ] {
        let e = app
            .call(
                "POST",
                INBOUND,
                &[("X-Api-Key", &acme), ("Content-Type", bad)],
                Some(b"x"),
            )
            .error(415, "unsupported_media_type");
        assert_eq!(e["field"], "Content-Type", "{bad:?}: {e}");
    }
    assert_eq!(pending(&app, &globex), 0);

    // Parameters, quoted strings and any letter case are fine, and stored as sent.
    for good in [
        "text/plain; charset=utf-8",
        "Application/EDI-X12",
        "multipart/mixed; boundary=\"a b;c\"",
    ] {
        let batch = json!({"messages": [
            {"messageType": "order", "receiver": "GLOBEX", "contentType": good, "payload": "eA=="},
        ]});
        app.partner_json(&acme, "POST", "/api/v1/requests", &batch)
            .data(202);
    }
    let items = app.poll(&globex, "limit=10");
    assert_eq!(
        items[2]["contentType"],
        "multipart/mixed; boundary=\"a b;c\""
    );
}

#[test]
fn the_apikey_form_field_never_reaches_the_receiver() {
    let (app, acme, globex) = acme_to_globex();
    let form = [
        ("X-Api-Key", acme.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let body = format!("a=1&apikey={acme}&b=2");
    app.call("POST", INBOUND, &form, Some(body.as_bytes()))
        .data(202);
    // Even a field that is not the header's key is taken out.
    app.call("POST", INBOUND, &form, Some(b"apikey=somebody-else&c=3"))
        .data(202);
    let items = app.poll(&globex, "limit=10");
    let bodies: Vec<String> = items
        .iter()
        .map(|i| {
            let b = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                i["payload"].as_str().unwrap(),
            )
            .unwrap();
            String::from_utf8(b).unwrap()
        })
        .collect();
    assert_eq!(bodies, vec!["a=1&b=2".to_owned(), "c=3".to_owned()]);
}

#[test]
fn credentials_are_checked_before_large_bodies_are_read() {
    let (app, acme, globex) = acme_to_globex();
    let wait = Duration::from_secs(10);

    // An anonymous 10 MB form intake: answered 401 after at most 64 KiB, with the rest
    // never sent.
    let head = format!(
        "POST {INBOUND} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 10000000\r\n\r\n"
    );
    let mut req = head.into_bytes();
    req.extend(std::iter::repeat_n(b'a', 100 * 1024));
    let (text, _) = raw(app.addr, &req, wait);
    assert_eq!(status_of(&text), Some(401), "{text}");

    // Admin endpoints check the token before reading anything.
    let head = "POST /admin/api/partners HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wba_wrong\r\nContent-Type: application/json\r\nContent-Length: 200000\r\n\r\n";
    let (text, closed) = raw(app.addr, head.as_bytes(), wait);
    assert_eq!(status_of(&text), Some(401), "{text}");
    // The body was never read, so the connection is not reused: the answer says so.
    assert!(
        text.to_ascii_lowercase().contains("connection: close") && closed,
        "{text}"
    );

    // A key in the form, early in a large body, is still accepted, and stripped.
    let mut body = format!("apikey={acme}&data=").into_bytes();
    body.extend(std::iter::repeat_n(b'z', 300 * 1024));
    app.call(
        "POST",
        INBOUND,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(&body),
    )
    .data(202);
    // A key that only comes after 64 KiB is not looked for.
    let mut late = b"data=".to_vec();
    late.extend(std::iter::repeat_n(b'z', 70 * 1024));
    late.extend(format!("&apikey={acme}").into_bytes());
    app.call(
        "POST",
        INBOUND,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(&late),
    )
    .error(401, "unauthorized");
    assert_eq!(pending(&app, &globex), 1);
}

#[test]
fn path_segments_are_percent_decoded_and_checked_like_query_values() {
    let (app, acme, globex) = acme_to_globex();
    let create = |path: &str| app.partner_json(&acme, "POST", path, &json!({"n": 1}));
    // `a b` is refused the same way in the path as in the query.
    let in_path = create("/api/v1/documents/a%20b").error(422, "validation_failed");
    let in_query = app
        .send_doc(&acme, "ACME", Some("GLOBEX"), "a%20b", b"{}")
        .error(422, "validation_failed");
    assert_eq!(in_path["field"], "doctype");
    assert_eq!(in_query["field"], "doctype");
    create("/api/v1/documents/%FF").error(422, "validation_failed");
    // An encoded letter is that letter.
    let doc = create("/api/v1/documents/ord%65r").data(201);
    assert_eq!(doc["doctype"], "order");
    let id = doc["id"].as_str().unwrap();
    app.partner_get(&globex, &format!("/api/v1/documents/%6Frder/{id}"))
        .data(200);
    // Admin paths too: a partner code spelt with escapes.
    app.admin("GET", "/admin/api/partners/%41CME", None)
        .data(200);
    assert_eq!(pending(&app, &globex), 1);
}

#[test]
fn json_arrays_are_not_read_as_objects() {
    let (app, acme, globex) = acme_to_globex();
    let sent = app
        .send_doc(&acme, "ACME", Some("GLOBEX"), "order", b"{}")
        .data(202);
    let uuid = sent["transmissions"][0]["uuid"].as_str().unwrap();
    let put = |body: &serde_json::Value| {
        app.partner_json(
            &globex,
            "PUT",
            &format!("/api/v1/transmissions/status/{uuid}"),
            body,
        )
    };
    put(&json!(["processed", null])).error(400, "bad_request");
    put(&json!("processed")).error(400, "bad_request");
    assert_eq!(pending(&app, &globex), 1, "still pending");

    app.partner_json(
        &acme,
        "POST",
        "/api/v1/requests",
        &json!({"messages": [["order", "GLOBEX", null, null, "application/json", {}]]}),
    )
    .error(400, "bad_request");
    app.partner_json(&acme, "POST", "/api/v1/requests", &json!([null, []]))
        .error(400, "bad_request");
    app.admin(
        "POST",
        "/admin/api/partners",
        Some(json!(["INITECH", "Initech"])),
    )
    .error(400, "bad_request");
    app.admin(
        "POST",
        "/admin/api/routes",
        Some(json!(["ACME", "GLOBEX", "*"])),
    )
    .error(400, "bad_request");
    app.admin("GET", "/admin/api/partners/INITECH", None)
        .error(404, "not_found");
    assert_eq!(pending(&app, &globex), 1);
}

#[test]
fn unknown_encodings_are_refused_not_stored() {
    let (app, acme, globex) = acme_to_globex();
    let wait = Duration::from_secs(10);
    let chunked = |te: &str| {
        format!(
            "POST {INBOUND} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {acme}\r\nContent-Type: text/plain\r\nTransfer-Encoding: {te}\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
    };
    let (text, _) = raw(app.addr, chunked("gzip, chunked").as_bytes(), wait);
    assert_eq!(status_of(&text), Some(501), "{text}");
    assert!(text.contains("unsupported_transfer_encoding"), "{text}");
    let (text, _) = raw(app.addr, chunked("chunked").as_bytes(), wait);
    assert_eq!(status_of(&text), Some(202), "{text}");

    for ce in ["gzip", "br", "identity, gzip"] {
        let e = app
            .call(
                "POST",
                INBOUND,
                &[
                    ("X-Api-Key", &acme),
                    ("Content-Type", "text/plain"),
                    ("Content-Encoding", ce),
                ],
                Some(b"hello"),
            )
            .error(415, "unsupported_content_encoding");
        assert_eq!(e["field"], "Content-Encoding");
    }
    app.call(
        "POST",
        INBOUND,
        &[
            ("X-Api-Key", &acme),
            ("Content-Type", "text/plain"),
            ("Content-Encoding", "identity"),
        ],
        Some(b"hello"),
    )
    .data(202);
    assert_eq!(pending(&app, &globex), 2);
}

#[test]
fn a_full_writer_queue_answers_503_and_stores_nothing_it_refused() {
    let app = spawn_app_with(|c| c.store.writer_queue = 1);
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "order");
    let results: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    (0..20)
                        .map(|_| {
                            let r = app.send_doc(&acme, "ACME", Some("GLOBEX"), "order", b"{}");
                            let retry = r
                                .headers
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            if r.status == 503 {
                                r.error(503, "store_busy");
                            }
                            (r.status, retry)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let accepted = results.iter().filter(|(s, _)| *s == 202).count();
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(accepted + refused.len(), results.len(), "{results:?}");
    assert!(!refused.is_empty(), "a queue of one job must overflow");
    assert!(refused.iter().all(|(_, r)| r.as_deref() == Some("1")));
    // Exactly the accepted ones are there.
    let mut seen = 0;
    loop {
        let items = app.poll(&globex, "limit=100&lease=600");
        if items.is_empty() {
            break;
        }
        seen += items.len();
    }
    assert_eq!(seen, accepted);
    let ready = app.call("GET", "/readyz", &[], None);
    assert_eq!(ready.status, 200, "a busy writer is not a dead one");
}

#[test]
fn connections_that_send_nothing_are_closed() {
    let app = spawn_app_with(|c| {
        c.server.header_timeout_seconds = 1;
        c.server.idle_timeout_seconds = 2;
        c.server.body_timeout_seconds = 1;
    });
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "order");
    let half_body = format!(
        "POST {INBOUND} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {acme}\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789"
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("nothing", Vec::new()),
        (
            "half a header",
            b"POST /api/v1/inbound HTTP/1.1\r\nHost: x\r\n".to_vec(),
        ),
        ("half a body", half_body.into_bytes()),
        (
            "a request, then nothing",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
    ];
    let wait = Duration::from_secs(15);
    let results: Vec<(&str, String, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(name, bytes)| {
                let addr = app.addr;
                s.spawn(move || {
                    let (text, closed) = raw(addr, bytes, wait);
                    (*name, text, closed)
                })
            })
            .collect();
        // Meanwhile a long poll that outlasts the idle timeout is not cut short.
        let started = Instant::now();
        let items = app.poll(&globex, "wait=4");
        assert!(items.is_empty());
        assert!(started.elapsed() >= Duration::from_secs(4), "it waited");
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (name, text, closed) in results {
        assert!(
            closed,
            "{name}: the server closed the connection ({text:?})"
        );
        match name {
            "half a body" => assert_eq!(status_of(&text), Some(408), "{name}: {text}"),
            "a request, then nothing" => assert_eq!(status_of(&text), Some(200), "{text}"),
            _ => assert!(
                text.is_empty() || status_of(&text).is_some(),
                "{name}: {text}"
            ),
        }
    }
    assert_eq!(pending(&app, &globex), 0, "the cut-off body stored nothing");
}

/// One GET on a kept-alive connection; the body of the answer.
fn get_on(s: &mut TcpStream, path: &str) -> serde_json::Value {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if body.len() >= len {
                return serde_json::from_str(&body[..len]).expect("json");
            }
        }
    }
}

#[test]
fn at_the_connection_cap_idle_connections_make_room_and_busy_ones_are_not_cut() {
    let app = spawn_app_with(|c| c.server.max_connections = 9);
    let globex = app.partner("GLOBEX");
    // Nine connections that send nothing fill the cap...
    let mut idle: Vec<TcpStream> = (0..9)
        .map(|_| TcpStream::connect(app.addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    // ...yet a new client is served: the longest-idle connection gives way.
    let fresh = crate::send(&crate::agent(), "GET", &app.url("/healthz"), &[], None);
    assert_eq!(fresh.status, 200);
    let closed = idle
        .iter_mut()
        .filter(|s| {
            read_until_closed(&mut (**s).try_clone().unwrap(), Duration::from_millis(500)).1
        })
        .count();
    assert!(closed >= 1, "an idle connection was closed to make room");
    drop(idle);

    // Eight long polls under way and one client that is never idle long fill the cap:
    // nothing may be closed to make room, so a newcomer is told 503 and closed.
    let mut observer = TcpStream::connect(app.addr).expect("connect");
    let all_busy = std::sync::atomic::AtomicBool::new(false);
    let done = std::sync::atomic::AtomicBool::new(false);
    let last = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            // Asks /readyz every 20 ms, so this connection is never idle for long.
            let mut last = serde_json::Value::Null;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                last = get_on(&mut observer, "/readyz");
                // Its own request is under way too.
                if last["data"]["connections"]["busy"] == 9 {
                    all_busy.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            last
        });
        let polls: Vec<_> = (0..8)
            .map(|_| {
                let url = app.url("/api/v1/transmissions?wait=10");
                let key = globex.clone();
                s.spawn(move || {
                    crate::send(&crate::agent(), "GET", &url, &[("X-Api-Key", &key)], None)
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !all_busy.load(std::sync::atomic::Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "the polls never all started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (text, closed) = raw(
            app.addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(10),
        );
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(status_of(&text), Some(503), "{text}");
        assert!(text.contains("too_many_connections") && closed, "{text}");
        for p in polls {
            assert_eq!(p.join().unwrap().status, 200, "the long polls finished");
        }
        watcher.join().unwrap()
    });
    assert_eq!(last["data"]["connections"]["max"], 9, "{last}");
    let last = get_on(&mut observer, "/readyz");
    assert!(
        last["data"]["connections"]["refused"].as_u64() >= Some(1),
        "{last}"
    );
    assert!(
        last["data"]["connections"]["evicted"].as_u64() >= Some(1),
        "{last}"
    );
}

/// The binary under a low open-file limit, with far more idle connections than it has
/// descriptors for: it stays reachable and says so at most once.
#[test]
fn a_low_open_file_limit_neither_hangs_health_checks_nor_floods_the_log() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_waybill"));
    cmd.args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen", &listen.to_string()])
        .env("WAYBILL_DELIVERY__CONCURRENCY", "4")
        .env("WAYBILL_DELIVERY__ENDPOINT_CONCURRENCY", "4")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 128,
                rlim_max: 128,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn waybill");
    let base = format!("http://{listen}");
    let a = crate::agent();
    let health = || {
        a.get(&format!("{base}/healthz"))
            .call()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while health() != 200 {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(25));
    }
    let crowd: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(listen).ok())
        .collect();
    assert!(
        crowd.len() > 128,
        "more connections than the server has descriptors"
    );
    std::thread::sleep(Duration::from_millis(500));
    let statuses: Vec<u16> = (0..5).map(|_| health()).collect();
    drop(crowd);
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(statuses, vec![200; 5], "health checks are served: {text}");
    assert!(text.contains("server.max_connections lowered"), "{text}");
    let fd_lines = text
        .lines()
        .filter(|l| l.contains("file descriptors") || l.contains("accept failed"))
        .count();
    assert!(fd_lines <= 1, "logged at most once:\n{text}");
}
