//! Hostile inputs, as a table: addresses the outbound policy refuses in every URL field
//! (push URLs, background webhooks, subscription callbacks), in every spelling that
//! reaches them, and path traversal in every path parameter. Each is answered 4xx with
//! the error envelope, and nothing is stored.

use serde_json::{json, Value};

use crate::openapi::{fetch_document, operations};
use crate::{spawn_app_with, Resp, TestApp};

/// Targets the policy refuses, each written the way an attacker would try it.
const REFUSED_TARGETS: &[&str] = &[
    "http://127.0.0.1/h",
    "http://localhost/h",
    "http://127.1/h",
    "http://2130706433/h",
    "http://0x7f000001/h",
    "http://0.0.0.0/h",
    "http://10.1.2.3/h",
    "http://192.168.0.1/h",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/h",
    "http://[::ffff:127.0.0.1]/h",
    "http://[::ffff:169.254.169.254]/h",
    "http://[::7f00:1]/h",
    "http://[64:ff9b::a9fe:a9fe]/h",
    "http://[2002:7f00:1::]/h",
    "http://[fe80::1]/h",
    "http://[fec0::1]/h",
    "http://[fd00::1]/h",
];

/// The answer must be a 4xx with the envelope.
fn refused(r: &Resp, what: &str) {
    assert!(
        (400..500).contains(&r.status),
        "{what}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let v: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {:?}", r.body));
    assert_eq!(v["success"], false, "{what}: {v}");
    assert!(v["error"]["code"].is_string(), "{what}: {v}");
    assert!(v["error"]["message"].is_string(), "{what}: {v}");
}

/// What the store holds that any of these calls could have added to.
fn stored(app: &TestApp, acme: &str) -> Value {
    let partners = app.admin("GET", "/admin/api/partners", None).data(200);
    let globex = app
        .admin("GET", "/admin/api/partners/GLOBEX", None)
        .data(200);
    let subs = app.partner_get(acme, "/api/v1/subscriptions").data(200);
    let jobs = app.admin("GET", "/admin/api/jobs", None).data(200);
    let messages = app.admin("GET", "/admin/api/messages", None).data(200);
    json!({
        "partners": partners,
        "pushUrl": [globex["pushUrl"].clone(), globex["testPushUrl"].clone()],
        "subscriptions": subs,
        "jobs": jobs,
        "messages": messages,
    })
}

#[test]
fn refused_addresses_in_every_url_field_get_4xx_and_store_nothing() {
    // The policy with its defaults: nothing private or loopback is allowed.
    let app = spawn_app_with(|c| c.outbound.allow = vec![]);
    let acme = app.partner("ACME");
    app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "*");
    let before = stored(&app, &acme);

    for target in REFUSED_TARGETS {
        let r = app.admin(
            "POST",
            "/admin/api/partners",
            Some(json!({"code": "EVIL", "name": "Evil", "pushUrl": target})),
        );
        refused(&r, &format!("a new partner's pushUrl {target}"));
        for field in ["pushUrl", "testPushUrl"] {
            let r = app.admin(
                "PATCH",
                "/admin/api/partners/GLOBEX",
                Some(json!({ field: target })),
            );
            refused(&r, &format!("{field} {target}"));
        }
        let r = app.call(
            "POST",
            "/api/v1/documents/order",
            &[
                ("X-Api-Key", &acme),
                ("Content-Type", "application/json"),
                ("Waybill-Background", target),
            ],
            Some(b"{}"),
        );
        refused(&r, &format!("a background webhook {target}"));
        let callback = format!("{target}?ids={{ids}}");
        let r = app.partner_json(
            &acme,
            "POST",
            "/api/v1/subscriptions",
            &json!({"systemName": "erp", "url": callback}),
        );
        refused(&r, &format!("a subscription url {callback}"));
    }
    assert_eq!(stored(&app, &acme), before, "nothing was stored");
}

#[test]
fn path_traversal_in_every_path_parameter_gets_4xx() {
    let app = spawn_app_with(|_| {});
    let acme = app.partner("ACME");
    app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "*");
    let before = stored(&app, &acme);
    let auth = format!("Bearer {}", app.token);
    let hostile = [
        "..",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..%5C..%5Cwindows",
        "%00",
        "%ff%fe",
    ];
    let doc = fetch_document(&app);
    let mut calls = 0;
    for (method, template, _) in operations(&doc) {
        if !template.contains('{') {
            continue;
        }
        let upper = method.to_ascii_uppercase();
        for bad in hostile {
            // One parameter hostile at a time, the others plausible.
            let params: Vec<&str> = template.split('/').filter(|s| s.starts_with('{')).collect();
            for (i, _) in params.iter().enumerate() {
                let mut n = 0;
                let path = template
                    .split('/')
                    .map(|seg| {
                        if !seg.starts_with('{') {
                            return seg.to_owned();
                        }
                        n += 1;
                        if n - 1 == i {
                            bad.to_owned()
                        } else if seg == "{doctype}" {
                            "order".to_owned()
                        } else if seg == "{code}" {
                            "ACME".to_owned()
                        } else {
                            uuid::Uuid::nil().to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                let key_header = if template.starts_with("/admin/") {
                    ("Authorization", auth.as_str())
                } else {
                    ("X-Api-Key", acme.as_str())
                };
                let body = matches!(method.as_str(), "post" | "put" | "patch").then_some(b"{}");
                let r = app.call(
                    &upper,
                    &path,
                    &[key_header, ("Content-Type", "application/json")],
                    body.map(|b| &b[..]),
                );
                refused(&r, &format!("{upper} {path}"));
                calls += 1;
            }
        }
    }
    assert!(calls > 100, "only {calls} calls");
    assert_eq!(stored(&app, &acme), before, "nothing was stored");
}

/// How a hostile request must be answered.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// A 4xx with the error envelope, from Waybill.
    Envelope,
    /// A bare 4xx from the HTTP layer, which could not parse the request far enough to
    /// hand it on (bytes outside the grammar in the request line, a head larger than its
    /// buffer): there is no request to answer with the envelope.
    Bare,
}

/// A request as bytes, with the API key, `Connection: close` and a Content-Length.
fn request(method: &str, target: &[u8], key: &str, extra: &[u8], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} ").into_bytes();
    r.extend_from_slice(target);
    r.extend_from_slice(b" HTTP/1.1\r\nHost: waybill\r\nConnection: close\r\nX-Api-Key: ");
    r.extend_from_slice(key.as_bytes());
    r.extend_from_slice(b"\r\nContent-Type: application/json\r\n");
    r.extend_from_slice(extra);
    r.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    r.extend_from_slice(body);
    r
}

/// A JSON array of `n` copies of `item`.
fn array_of(item: &str, n: usize) -> String {
    format!("[{}]", vec![item; n].join(","))
}

#[test]
fn hostile_requests_get_4xx_and_store_nothing() {
    use crate::edge::{raw, status_of};
    use std::time::Duration;

    let app = spawn_app_with(|_| {});
    let acme = app.partner("ACME");
    app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "*");
    let before = stored(&app, &acme);
    let inbound: &[u8] = b"/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order";
    let with = |query: &str| [inbound, query.as_bytes()].concat();
    let many_headers: Vec<u8> = (0..150)
        .flat_map(|i| format!("X-Filler-{i}: v\r\n").into_bytes())
        .collect();
    let big_header = [b"X-Big: ".as_slice(), &vec![b'a'; 64 * 1024], b"\r\n"].concat();
    let huge_header = [b"X-Huge: ".as_slice(), &vec![b'a'; 1 << 20], b"\r\n"].concat();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let batch_item = r#"{"messageType":"order","receiver":"GLOBEX","payload":1}"#;
    let rows: Vec<(&str, Vec<u8>, Answer)> = vec![
        (
            "a 64 KiB header",
            request("POST", inbound, &acme, &big_header, b"{}"),
            Answer::Envelope,
        ),
        (
            "150 headers",
            request("POST", inbound, &acme, &many_headers, b"{}"),
            Answer::Envelope,
        ),
        (
            "a 1 MiB header",
            request("POST", inbound, &acme, &huge_header, b"{}"),
            Answer::Bare,
        ),
        (
            "a raw byte 0xff in the path",
            request("POST", b"/api/v1/documents/ord\xffer", &acme, b"", b"{}"),
            Answer::Bare,
        ),
        (
            "a raw byte 0xff in the query",
            request("POST", &[inbound, b"&version=\xff"].concat(), &acme, b"", b"{}"),
            Answer::Bare,
        ),
        (
            "a query value that decodes to invalid UTF-8",
            request("POST", &with("&version=%ff%fe"), &acme, b"", b"{}"),
            Answer::Envelope,
        ),
        (
            "a query name that decodes to invalid UTF-8",
            request("POST", &with("&%ff=1"), &acme, b"", b"{}"),
            Answer::Envelope,
        ),
        (
            "invalid UTF-8 in a JSON payload's string",
            request("POST", inbound, &acme, b"", b"{\"a\":\"\xff\xfe\"}"),
            Answer::Envelope,
        ),
        (
            "invalid UTF-8 in a JSON payload's name",
            request("POST", inbound, &acme, b"", b"{\"\xc3\":1}"),
            Answer::Envelope,
        ),
        (
            "invalid UTF-8 in a document",
            request("POST", b"/api/v1/documents/order", &acme, b"", b"{\"a\":\"\xff\"}"),
            Answer::Envelope,
        ),
        (
            "invalid UTF-8 in a batch",
            request(
                "POST",
                b"/api/v1/requests",
                &acme,
                b"",
                b"{\"messages\":[{\"messageType\":\"order\",\"payload\":\"\xff\"}]}",
            ),
            Answer::Envelope,
        ),
        (
            "JSON nested 100,000 deep as a payload",
            request("POST", inbound, &acme, b"", deep.as_bytes()),
            Answer::Envelope,
        ),
        (
            "JSON nested 100,000 deep as a document",
            request("POST", b"/api/v1/documents/order", &acme, b"", deep.as_bytes()),
            Answer::Envelope,
        ),
        (
            "JSON nested 100,000 deep as a subscription",
            request("POST", b"/api/v1/subscriptions", &acme, b"", deep.as_bytes()),
            Answer::Envelope,
        ),
        (
            "a batch of 100,000 messages",
            request(
                "POST",
                b"/api/v1/requests",
                &acme,
                b"",
                format!(r#"{{"messages":{}}}"#, array_of(batch_item, 100_000)).as_bytes(),
            ),
            Answer::Envelope,
        ),
        (
            "a search value of 100,000 ids",
            request(
                "POST",
                b"/api/v1/tracking",
                &acme,
                b"",
                format!(r#"{{"search":[{{"by":"id","value":{}}}]}}"#, array_of("1", 100_000))
                    .as_bytes(),
            ),
            Answer::Envelope,
        ),
        (
            "100,000 search criteria",
            request(
                "POST",
                b"/api/v1/tracking",
                &acme,
                b"",
                format!(
                    r#"{{"search":{}}}"#,
                    array_of(r#"{"by":"messageType","value":"order"}"#, 100_000)
                )
                .as_bytes(),
            ),
            Answer::Envelope,
        ),
        (
            "100,000 sorts",
            request(
                "POST",
                b"/api/v1/tracking",
                &acme,
                b"",
                format!(r#"{{"sorts":{}}}"#, array_of("{}", 100_000)).as_bytes(),
            ),
            Answer::Envelope,
        ),
        (
            "a subscription with 100,000 events",
            request(
                "POST",
                b"/api/v1/subscriptions",
                &acme,
                b"",
                format!(
                    r#"{{"systemName":"erp","url":"https://erp.example/?ids={{ids}}","events":{}}}"#,
                    array_of(r#""message.status""#, 100_000)
                )
                .as_bytes(),
            ),
            Answer::Envelope,
        ),
    ];
    for (what, bytes, answer) in rows {
        let (text, _) = raw(app.addr, &bytes, Duration::from_secs(20));
        let status = status_of(&text).unwrap_or_else(|| panic!("{what}: no answer: {text:?}"));
        assert!((400..500).contains(&status), "{what}: {status} {text}");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        match answer {
            Answer::Envelope => {
                let v: Value = serde_json::from_str(body)
                    .unwrap_or_else(|e| panic!("{what}: not the envelope ({e}): {text}"));
                assert_eq!(v["success"], false, "{what}: {v}");
                assert!(v["error"]["code"].is_string(), "{what}: {v}");
                assert!(v["error"]["message"].is_string(), "{what}: {v}");
            }
            Answer::Bare => assert!(
                text.to_ascii_lowercase().contains("connection: close"),
                "{what}: {text}"
            ),
        }
    }
    assert_eq!(stored(&app, &acme), before, "nothing was stored");
}
