//! Integration tests: the real server on 127.0.0.1:0 with a temporary data directory,
//! spoken to over real HTTP. One test binary; one module per area.

mod admin;
mod admin_api;
mod admin_users;
mod background;
mod backup;
mod browser;
mod closing;
mod crash;
mod delivery;
mod edge;
mod environments;
mod errors;
mod faults;
mod hostile;
mod https;
mod intake;
mod isolation;
mod metrics;
mod monitoring;
mod openapi;
mod packaging;
mod powercut;
mod process;
mod push;
mod receiver;
mod retention;
mod schemathesis;
mod slow_disk;
mod subscriptions;
mod tracking;
mod transmissions;
mod ui;
mod validation;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use waybill::config::{Config, Overrides};

/// A running server and its data directory; dropping it shuts the server down cleanly.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub token: String,
    pub dir: tempfile::TempDir,
    /// The clock retention is judged by; moving it forward ages what is stored.
    pub clock: waybill::clock::Clock,
    agent: ureq::Agent,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), waybill::RunError>>>,
}

/// An HTTP answer: status, headers and body.
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The envelope's `data`, after checking that the call succeeded with `status`.
    pub fn data(&self, status: u16) -> Value {
        let v = self.json();
        assert_eq!(self.status, status, "unexpected status; body: {v}");
        assert_eq!(v["success"], true, "{v}");
        assert!(v["error"].is_null(), "{v}");
        v["data"].clone()
    }

    /// The envelope's error, after checking status and code.
    pub fn error(&self, status: u16, code: &str) -> Value {
        let v = self.json();
        assert_eq!(self.status, status, "unexpected status; body: {v}");
        assert_eq!(v["success"], false, "{v}");
        assert!(v["data"].is_null(), "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        v["error"].clone()
    }
}

pub fn spawn_app() -> TestApp {
    spawn_app_with(|_| {})
}

/// Starts the server with the test defaults (loopback allowed outbound), adjusted by `tweak`.
pub fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on("http", agent(), tweak)
}

/// Starts the server as [`spawn_app_with`] does, spoken to as `scheme://localhost` with `agent`.
pub fn spawn_app_on(scheme: &str, agent: ureq::Agent, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_in(tempfile::tempdir().expect("tempdir"), scheme, agent, tweak)
}

/// Starts the server on the data directory `dir`, which may hold an earlier server's data.
pub fn spawn_app_in(
    dir: tempfile::TempDir,
    scheme: &str,
    agent: ureq::Agent,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let overrides = Overrides {
        data_dir: Some(dir.path().to_owned()),
        listen: Some("127.0.0.1:0".into()),
    };
    let mut config = Config::load(None, std::iter::empty(), &overrides).expect("config");
    config.outbound.allow = vec!["127.0.0.0/8".into()];
    tweak(&mut config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let clock = waybill::clock::Clock::system();
    let server = runtime.spawn(waybill::run_with_clock(
        config,
        listener,
        async move {
            let _ = stopped.await;
        },
        clock.clone(),
    ));
    let mut app = TestApp {
        addr,
        base: format!("{scheme}://localhost:{}", addr.port()),
        token: String::new(),
        agent,
        dir,
        clock,
        runtime: Some(runtime),
        stop: Some(stop),
        server: Some(server),
    };
    app.token = wait_for_token(app.dir.path());
    app.wait_ready();
    app
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

pub fn wait_for_token(dir: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(t) = std::fs::read_to_string(dir.join("admin.token")) {
            if !t.trim().is_empty() {
                return t.trim().to_owned();
            }
        }
        assert!(Instant::now() < deadline, "no admin token appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one request with `agent` to `url`.
pub fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let result = match body {
        Some(b) => agent.run(req.body(b.to_vec()).expect("request")),
        None => agent.run(req.body(()).expect("request")),
    };
    let mut res = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .expect("body");
    Resp {
        status,
        headers,
        body,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Any request.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        send(&self.agent, method, &self.url(path), headers, body)
    }

    /// A request as a partner holding `key`, with a JSON body.
    pub fn partner_json(&self, key: &str, method: &str, path: &str, body: &Value) -> Resp {
        let bytes = serde_json::to_vec(body).expect("json");
        self.call(
            method,
            path,
            &[("X-Api-Key", key), ("Content-Type", "application/json")],
            Some(&bytes),
        )
    }

    /// A GET as a partner.
    pub fn partner_get(&self, key: &str, path: &str) -> Resp {
        self.call("GET", path, &[("X-Api-Key", key)], None)
    }

    /// An admin API call with the admin token.
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let auth = format!("Bearer {}", self.token);
        let bytes = body.map(|b| serde_json::to_vec(&b).expect("json"));
        self.call(
            method,
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            bytes.as_deref(),
        )
    }

    /// Creates a partner and a live key for it; returns the key.
    pub fn partner(&self, code: &str) -> String {
        self.admin(
            "POST",
            "/admin/api/partners",
            Some(json!({"code": code, "name": code})),
        )
        .data(201);
        self.key(code, "live")
    }

    /// Creates another key for a partner.
    pub fn key(&self, code: &str, env: &str) -> String {
        let k = self
            .admin(
                "POST",
                &format!("/admin/api/partners/{code}/keys"),
                Some(json!({"env": env})),
            )
            .data(201);
        k["key"].as_str().expect("key").to_owned()
    }

    pub fn route(&self, sender: &str, receiver: &str, doctype: &str) {
        self.admin(
            "POST",
            "/admin/api/routes",
            Some(json!({"sender": sender, "receiver": receiver, "doctype": doctype})),
        )
        .data(201);
    }

    /// Sends a document through `/api/v1/inbound`; returns the answer.
    pub fn send_doc(
        &self,
        key: &str,
        sender: &str,
        receiver: Option<&str>,
        doctype: &str,
        body: &[u8],
    ) -> Resp {
        let mut path = format!("/api/v1/inbound?sender={sender}&doctype={doctype}&version=1");
        if let Some(r) = receiver {
            path.push_str(&format!("&receiver={r}"));
        }
        self.call(
            "POST",
            &path,
            &[("X-Api-Key", key), ("Content-Type", "application/json")],
            Some(body),
        )
    }

    /// Polls and returns the items.
    pub fn poll(&self, key: &str, query: &str) -> Vec<Value> {
        let d = self
            .partner_get(key, &format!("/api/v1/transmissions?{query}"))
            .data(200);
        d.as_array().expect("array").clone()
    }

    pub fn ack(&self, key: &str, uuid: &str, status: &str) -> Resp {
        self.partner_json(
            key,
            "PUT",
            &format!("/api/v1/transmissions/status/{uuid}"),
            &json!({"status": status}),
        )
    }

    /// Shuts the server down cleanly and hands over its data directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        drop(self);
        dir
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.call("GET", "/readyz", &[], None).status != 200 {
            assert!(Instant::now() < deadline, "server never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let (Some(rt), Some(server)) = (self.runtime.take(), self.server.take()) {
            let result =
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), server).await });
            rt.shutdown_timeout(Duration::from_secs(5));
            if !std::thread::panicking() {
                match result {
                    Ok(Ok(Ok(()))) => {}
                    other => panic!("server did not stop cleanly: {other:?}"),
                }
            }
        }
    }
}

/// The common cast: ACME sends orders to GLOBEX. Returns (app, acme key, globex key).
pub fn acme_to_globex() -> (TestApp, String, String) {
    let app = spawn_app();
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "order");
    (app, acme, globex)
}
