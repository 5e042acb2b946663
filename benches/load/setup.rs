//! Control traffic: waiting for the server, admin API calls, and the partners, keys, route
//! and schema every scenario starts from.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::time::sleep;

use crate::client::{build_request, is_tls_error, one_shot, Target};
use crate::server::Server;
use crate::stats::{is_success, snippet};
use crate::{Ctx, RECEIVER, REQUEST_TIMEOUT, SENDER};

/// Polls `path` until it answers 200. With a server handle it also notices a
/// child that died, which otherwise would look like a slow start.
pub async fn wait_for_ok(
    target: &Target,
    path: &str,
    deadline: Instant,
    mut server: Option<&mut Server>,
) -> Result<(), String> {
    let req = build_request("GET", path, &target.host, &[], b"");
    let mut last: String;
    loop {
        if let Some(s) = server.as_deref_mut() {
            if let Some(status) = s.exited() {
                return Err(format!(
                    "server exited during startup ({status})\n{}",
                    s.log_tail()
                ));
            }
        }
        match one_shot(target, &req, Duration::from_secs(2)).await {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => last = format!("{path} answered {status}: {}", snippet(&body)),
            // An untrusted certificate or a wrong name will not go away by
            // waiting for the server.
            Err(e) if is_tls_error(&e) => return Err(format!("{path}: TLS: {e}")),
            Err(e) => last = format!("{path}: {e}"),
        }
        if Instant::now() >= deadline {
            let log = server.map(|s| s.log_tail()).unwrap_or_default();
            return Err(format!("server not up in time: {last}\n{log}"));
        }
        sleep(Duration::from_millis(10)).await;
    }
}

pub async fn admin_post(
    target: &Target,
    token: &str,
    path: &str,
    body: &Value,
) -> Result<(u16, Value), String> {
    admin_call(target, token, "POST", path, Some(body)).await
}

/// One admin API call; a JSON body when given, the answer parsed as JSON
/// (or kept as a string when it is not).
pub async fn admin_call(
    target: &Target,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let auth = format!("Bearer {token}");
    let req = match body {
        Some(body) => build_request(
            method,
            path,
            &target.host,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        ),
        None => build_request(method, path, &target.host, &[("Authorization", &auth)], b""),
    };
    let (status, resp) = one_shot(target, &req, REQUEST_TIMEOUT)
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let v = serde_json::from_slice(&resp).unwrap_or_else(|_| Value::String(snippet(&resp)));
    Ok((status, v))
}

pub async fn provision(target: Target, token: &str) -> Result<Ctx, String> {
    // Against an external server these may already exist from an earlier run;
    // that is fine as long as the keys can be issued afterwards.
    for (code, name) in [(SENDER, "Acme"), (RECEIVER, "Globex")] {
        let (status, v) = admin_post(
            &target,
            token,
            "/admin/api/partners",
            &json!({"code": code, "name": name}),
        )
        .await?;
        if status == 409 {
            println!("setup    partner {code} already exists");
        } else if !is_success(status) {
            // Not fatal yet: issuing the key below is the real test.
            eprintln!("setup    partner {code}: {status} {v}");
        }
    }
    let mut keys = Vec::new();
    for code in [SENDER, RECEIVER] {
        let path = format!("/admin/api/partners/{code}/keys");
        let (status, v) = admin_post(&target, token, &path, &json!({})).await?;
        let key = v
            .get("data")
            .and_then(|d| d.get("key"))
            .and_then(Value::as_str)
            .filter(|_| is_success(status));
        match key {
            Some(k) => keys.push(k.to_string()),
            None => return Err(format!("issuing a key for {code} failed: {status} {v}")),
        }
    }
    let (status, v) = admin_post(
        &target,
        token,
        "/admin/api/routes",
        &json!({"sender": SENDER, "receiver": RECEIVER, "doctype": "*"}),
    )
    .await?;
    if status == 409 {
        println!("setup    route {SENDER}->{RECEIVER} already exists");
    } else if !is_success(status) {
        // A route left over from an earlier run may be reported differently
        // than 409; a missing one shows up as inbound errors anyway.
        eprintln!("setup    route {SENDER}->{RECEIVER}: {status} {v}");
    }
    let receiver_key = keys.pop().unwrap_or_default();
    let sender_key = keys.pop().unwrap_or_default();
    Ok(Ctx {
        target,
        sender_key,
        receiver_key,
    })
}

/// Registers a JSON Schema of 30 properties for the intake's doctype (`order`, every
/// version) that the intake body passes: its four fields with a constant, a pattern and
/// lengths, and 26 optional ones, with no others allowed.
pub async fn register_schema(target: &Target, token: &str) -> Result<(), String> {
    let mut props = serde_json::Map::new();
    props.insert("type".into(), json!({"const": "order"}));
    props.insert(
        "source".into(),
        json!({"type": "string", "minLength": 1, "maxLength": 64}),
    );
    props.insert(
        "seq".into(),
        json!({"type": "string", "pattern": "^[0-9]{16}$"}),
    );
    props.insert("pad".into(), json!({"type": "string", "maxLength": 1024}));
    for i in 0..26 {
        props.insert(
            format!("field{i:02}"),
            json!({"type": "string", "maxLength": 64}),
        );
    }
    let schema = json!({
        "doctype": "order",
        "version": "*",
        "jsonSchema": {
            "type": "object",
            "required": ["type", "source", "seq"],
            "properties": props,
            "additionalProperties": false
        }
    });
    let (status, v) = admin_post(target, token, "/admin/api/schemas", &schema).await?;
    if !is_success(status) {
        return Err(format!("registering the schema failed: {status} {v}"));
    }
    println!("setup    a 30-property JSON Schema for order: every intake is validated");
    Ok(())
}
