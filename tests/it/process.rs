//! The real binary: crash safety (SIGKILL), clean shutdown (SIGTERM), the admin CLI and
//! configuration checks.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{agent, send, wait_for_token};

const BIN: &str = env!("CARGO_BIN_EXE_waybill");

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
    listen: String,
    token: String,
    /// Where the process's log goes when the caller did not choose; its tail is printed
    /// when a test fails, so a failure says what the server saw.
    log: Option<tempfile::NamedTempFile>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: &Path) -> Server {
    start_with(dir, &[])
}

/// Starts the binary on `dir` with extra environment settings and waits until it is ready.
pub(crate) fn start_with(dir: &Path, env: &[(&str, &str)]) -> Server {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let to = log
        .reopen()
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    let mut server = start_logging(dir, env, to);
    server.log = Some(log);
    server
}

/// [`start_with`], its log (standard error) going to `log`.
fn start_logging(dir: &Path, env: &[(&str, &str)], log: Stdio) -> Server {
    let listen = format!("127.0.0.1:{}", free_port());
    let child = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", &listen])
        .env("WAYBILL_OUTBOUND__ALLOW", "127.0.0.0/8")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn waybill");
    let base = format!("http://{listen}");
    let token = wait_for_token(dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    let a = agent();
    loop {
        if a.get(&format!("{base}/readyz"))
            .call()
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(Instant::now() < deadline, "server did not become ready");
        std::thread::sleep(Duration::from_millis(25));
    }
    Server {
        child,
        base,
        listen,
        token,
        log: None,
    }
}

impl Server {
    /// Partners ACME and GLOBEX (with `globex` merged into its definition), a key for each
    /// and a route ACME → GLOBEX for every doctype. Returns (ACME's key, GLOBEX's key).
    pub(crate) fn acme_to_globex(&self, globex: Value) -> (String, String) {
        let mut def = json!({"code": "GLOBEX", "name": "Globex"});
        if let (Some(d), Some(extra)) = (def.as_object_mut(), globex.as_object()) {
            d.extend(extra.clone());
        }
        self.admin(
            "POST",
            "/admin/api/partners",
            json!({"code": "ACME", "name": "Acme"}),
        );
        self.admin("POST", "/admin/api/partners", def);
        self.admin(
            "POST",
            "/admin/api/routes",
            json!({"sender": "ACME", "receiver": "GLOBEX", "doctype": "*"}),
        );
        let key = |code: &str| {
            self.admin(
                "POST",
                &format!("/admin/api/partners/{code}/keys"),
                json!({}),
            )["data"]["key"]
                .as_str()
                .expect("key")
                .to_owned()
        };
        (key("ACME"), key("GLOBEX"))
    }

    /// ACME sends `body` to the receivers its routes name; returns the intake answer's data.
    pub(crate) fn send_doc(&self, key: &str, body: &[u8]) -> Value {
        send(
            &agent(),
            "POST",
            &format!("{}/api/v1/inbound?sender=ACME&doctype=order", self.base),
            &[("X-Api-Key", key), ("Content-Type", "application/json")],
            Some(body),
        )
        .data(202)
    }

    /// A transmission as `key`'s partner sees it.
    fn transmission(&self, key: &str, uuid: &str) -> Value {
        send(
            &agent(),
            "GET",
            &format!("{}/api/v1/transmissions/{uuid}", self.base),
            &[("X-Api-Key", key)],
            None,
        )
        .data(200)
    }

    /// The status of a poll made with `key`: 200 while the key works, 401 once it does not.
    fn poll_status(&self, key: &str) -> u16 {
        let url = format!("{}/api/v1/transmissions", self.base);
        send(&agent(), "GET", &url, &[("X-Api-Key", key)], None).status
    }

    pub(crate) fn admin(&self, method: &str, path: &str, body: Value) -> Value {
        let auth = format!("Bearer {}", self.token);
        let bytes = serde_json::to_vec(&body).unwrap();
        send(
            &agent(),
            method,
            &format!("{}{}", self.base, path),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(&bytes),
        )
        .json()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let exited = self.child.try_wait().ok().flatten();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            return;
        }
        let text = self
            .log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l.path()).ok())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(30)..];
        eprintln!(
            "server {} (exited by itself: {exited:?}), last lines of its log:\n{}",
            self.base,
            tail.join("\n")
        );
    }
}

#[test]
fn a_message_acknowledged_with_202_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let (acme, globex) = server.acme_to_globex(json!({}));

    let mut ids = Vec::new();
    for i in 0..20 {
        let r = send(
            &agent(),
            "POST",
            &format!(
                "{}/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order",
                server.base
            ),
            &[("X-Api-Key", &acme), ("Content-Type", "application/json")],
            Some(format!("{{\"n\":{i}}}").as_bytes()),
        );
        ids.push(r.data(202)["id"].as_str().unwrap().to_owned());
    }
    // Lease the first message: the lease is a stored promise and must outlive the process.
    let leased = send(
        &agent(),
        "GET",
        &format!("{}/api/v1/transmissions?limit=1&lease=600", server.base),
        &[("X-Api-Key", &globex)],
        None,
    )
    .data(200);
    assert_eq!(leased[0]["messageId"], ids[0].as_str());
    // SIGKILL: no shutdown code runs; only what was flushed before each answer remains.
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let server = start(dir.path());
    let r = send(
        &agent(),
        "GET",
        &format!("{}/api/v1/transmissions?limit=100", server.base),
        &[("X-Api-Key", &globex)],
        None,
    );
    let items = r.data(200);
    let got: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        ids[1..].iter().map(String::as_str).collect::<Vec<_>>(),
        "every acknowledged message is back, in order, and the leased one is still held back"
    );
}

#[test]
fn sigterm_shuts_down_cleanly_and_the_token_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let mode = std::fs::metadata(dir.path().join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    server.admin(
        "POST",
        "/admin/api/partners",
        json!({"code": "ACME", "name": "Acme"}),
    );
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(25));
    };
    assert!(exit.success(), "clean exit: {exit:?}");
    // Same token and data on the next start.
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let server = start(dir.path());
    assert_eq!(server.token, token.trim());
    let list = server.admin("GET", "/admin/api/partners", Value::Null);
    assert_eq!(list["data"][0]["code"], "ACME");
}

fn cli(server: &Server, dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", &server.listen])
        .output()
        .expect("run cli");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_manages_partners_keys_and_routes_on_the_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let d = dir.path();
    assert!(
        cli(
            &server,
            d,
            &["partner", "add", "ACME", "--name", "Acme Corp"]
        )
        .0
    );
    assert!(cli(&server, d, &["partner", "add", "GLOBEX"]).0);
    let (ok, out, _) = cli(&server, d, &["partner", "list"]);
    assert!(
        ok && out.contains("ACME") && out.contains("Acme Corp") && out.contains("GLOBEX"),
        "{out}"
    );
    let (ok, err_out, err) = cli(&server, d, &["partner", "add", "ACME"]);
    assert!(!ok && err.contains("already exists"), "{err_out}{err}");

    let (ok, out, _) = cli(
        &server,
        d,
        &["key", "create", "ACME", "--env", "test", "--label", "erp"],
    );
    assert!(ok, "{out}");
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap()
        .trim()
        .to_owned();
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("key id:"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(key.starts_with("wb_test_"));
    assert_eq!(server.poll_status(&key), 200);

    assert!(cli(&server, d, &["route", "add", "ACME", "GLOBEX", "order"]).0);
    let (_, out, _) = cli(&server, d, &["route", "list"]);
    let route_id = out
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(out.contains("GLOBEX") && out.contains("order"), "{out}");
    assert!(cli(&server, d, &["route", "remove", &route_id]).0);
    let (_, out, _) = cli(&server, d, &["route", "list"]);
    assert_eq!(out.lines().count(), 1, "only the header is left: {out}");

    assert!(cli(&server, d, &["key", "revoke", "ACME", &id]).0);
    assert_eq!(server.poll_status(&key), 401);
    assert!(cli(&server, d, &["partner", "remove", "GLOBEX"]).0);
    let (_, out, _) = cli(&server, d, &["partner", "list"]);
    assert!(!out.contains("GLOBEX"), "{out}");
}

#[test]
fn the_cli_manages_schemas_read_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let d = dir.path();
    let file = d.join("order.schema.json");
    std::fs::write(&file, r#"{"type": "object", "required": ["id"]}"#).unwrap();
    let file = file.to_str().unwrap();
    let (ok, out, err) = cli(
        &server,
        d,
        &[
            "schema",
            "add",
            "order",
            "--json-schema",
            file,
            "--max-bytes",
            "4096",
        ],
    );
    assert!(ok, "{out}{err}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("created schema "))
        .unwrap()
        .trim()
        .to_owned();
    let (ok, out, _) = cli(
        &server,
        d,
        &[
            "schema",
            "add",
            "invoice",
            "--version",
            "2",
            "--xml-root",
            "Invoice",
        ],
    );
    assert!(ok, "{out}");
    let (_, out, _) = cli(&server, d, &["schema", "list"]);
    assert!(
        out.contains(&id) && out.contains("json-schema max-bytes=4096"),
        "{out}"
    );
    assert!(
        out.contains("invoice") && out.contains("xml-root=Invoice"),
        "{out}"
    );

    // A schema that does not compile, and one that is not JSON, change nothing.
    std::fs::write(d.join("bad.json"), r#"{"type": 5}"#).unwrap();
    let bad = d.join("bad.json");
    let (ok, _, err) = cli(
        &server,
        d,
        &["schema", "add", "x", "--json-schema", bad.to_str().unwrap()],
    );
    assert!(!ok && err.contains("400"), "{err}");
    std::fs::write(&bad, "not json").unwrap();
    let (ok, _, err) = cli(
        &server,
        d,
        &["schema", "add", "x", "--json-schema", bad.to_str().unwrap()],
    );
    assert!(!ok && err.contains("not JSON"), "{err}");

    assert!(cli(&server, d, &["schema", "remove", &id]).0);
    let (_, out, _) = cli(&server, d, &["schema", "list"]);
    assert_eq!(out.lines().count(), 2, "the header and invoice: {out}");
}

/// Runs the CLI with `input` on its standard input.
fn cli_with_input(server: &Server, dir: &Path, args: &[&str], input: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", &server.listen])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cli");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_cli_manages_admin_users_who_then_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let d = dir.path();
    let add = ["user", "add", "alice", "--password-stdin"];
    let (ok, out) = cli_with_input(&server, d, &add, "too short\n");
    assert!(!ok && out.contains("12"), "{out}");
    let (ok, out) = cli_with_input(&server, d, &add, "a long enough secret\n");
    assert!(ok && out.contains("created admin user alice"), "{out}");
    let (ok, out) = cli_with_input(
        &server,
        d,
        &[
            "user",
            "add",
            "vera",
            "--role",
            "viewer",
            "--password-stdin",
        ],
        "another long secret\n",
    );
    assert!(ok, "{out}");
    let (ok, out, _) = cli(&server, d, &["user", "list"]);
    assert!(
        ok && out.contains("alice") && out.contains("viewer"),
        "{out}"
    );
    let login = |user: &str, password: &str| {
        send(
            &agent(),
            "POST",
            &format!("{}/admin/api/login", server.base),
            &[("Content-Type", "application/json")],
            Some(
                json!({"username": user, "password": password})
                    .to_string()
                    .as_bytes(),
            ),
        )
        .status
    };
    assert_eq!(login("alice", "a long enough secret"), 200);
    let (ok, out) = cli_with_input(
        &server,
        d,
        &["user", "passwd", "alice", "--password-stdin"],
        "a brand new secret\n",
    );
    assert!(ok, "{out}");
    assert_eq!(login("alice", "a long enough secret"), 401);
    assert_eq!(login("alice", "a brand new secret"), 200);
    assert!(cli(&server, d, &["user", "remove", "vera"]).0);
    assert_eq!(login("vera", "another long secret"), 401);
}

#[test]
fn check_config_shows_the_effective_settings_and_refuses_bad_ones() {
    let out = Command::new(BIN)
        .args(["check-config", "--listen", "127.0.0.1:9999"])
        .env("WAYBILL_LIMITS__PARTNER_RPS", "12")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = \"127.0.0.1:9999\""), "{text}");
    assert!(text.contains("partner_rps = 12"), "{text}");

    let out = Command::new(BIN)
        .args(["check-config"])
        .env("WAYBILL_LIMITS__PARTNER_RPS", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WAYBILL_LIMITS__PARTNER_RPS"));

    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_push_queued_before_sigkill_is_delivered_after_restart() {
    use crate::receiver::Receiver;
    let dir = tempfile::tempdir().unwrap();
    // The receiver's port is chosen now but nothing listens there until after the crash.
    let port = free_port();
    // Retry every second, and a short attempt timeout so a lease ends soon.
    let settings = [
        (
            "WAYBILL_DELIVERY__RETRY_SCHEDULE",
            "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
        ),
        ("WAYBILL_DELIVERY__TIMEOUT_SECONDS", "1"),
    ];
    let start_fast = |dir: &Path| start_with(dir, &settings);
    let mut server = start_fast(dir.path());
    let (acme, _) =
        server.acme_to_globex(json!({"pushUrl": format!("http://127.0.0.1:{port}/hook")}));
    let sent = server.send_doc(&acme, br#"{"survives":"kill -9"}"#);
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let receiver = Receiver::start_on(port);
    let server = start_fast(dir.path());
    let got = receiver.wait_for(1, 30);
    assert_eq!(got[0].body, br#"{"survives":"kill -9"}"#);
    let uuid = sent["transmissions"][0]["uuid"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = server.transmission(&acme, uuid);
        if t["status"] == "processed" {
            break;
        }
        assert!(Instant::now() < deadline, "never marked processed: {t}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn proxies_from_the_environment_cannot_route_around_the_address_policy() {
    use crate::receiver::Receiver;
    // A "proxy" on loopback (which outbound.allow permits) that would answer 200 to anything.
    let proxy = Receiver::start(vec![]);
    let dir = tempfile::tempdir().unwrap();
    let settings = [
        ("HTTP_PROXY", proxy.url.as_str()),
        ("http_proxy", proxy.url.as_str()),
        ("ALL_PROXY", proxy.url.as_str()),
        ("HTTPS_PROXY", proxy.url.as_str()),
    ];
    // The push URL is set while outbound.allow includes it (a URL the policy refuses is
    // refused when it is set); then the server runs with its usual policy and the proxies.
    let setup = start_with(
        dir.path(),
        &[("WAYBILL_OUTBOUND__ALLOW", "127.0.0.0/8,169.254.0.0/16")],
    );
    let (acme, _) =
        setup.acme_to_globex(json!({"pushUrl": "http://169.254.169.254/latest/meta-data/"}));
    drop(setup);
    let server = start_with(dir.path(), &settings);
    let sent = server.send_doc(&acme, b"{}");
    let uuid = sent["transmissions"][0]["uuid"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let t = loop {
        let t = server.transmission(&acme, uuid);
        if t["lastError"].is_string() || t["status"] == "processed" {
            break t;
        }
        assert!(Instant::now() < deadline, "no attempt: {t}");
        std::thread::sleep(Duration::from_millis(25));
    };
    assert_ne!(t["status"], "processed", "{t}");
    let error = t["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("link-local"), "{t}");
    assert!(
        proxy.received().is_empty(),
        "nothing went through the proxy"
    );
}

#[test]
fn endpoint_health_survives_a_restart() {
    use crate::receiver::{Answer, Receiver};
    let receiver = Receiver::always(Answer::status(500));
    let dir = tempfile::tempdir().unwrap();
    let settings = [("WAYBILL_DELIVERY__RETRY_SCHEDULE", "3600")];
    let mut server = start_with(dir.path(), &settings);
    let (acme, _) = server.acme_to_globex(json!({"pushUrl": format!("{}/hook", receiver.url)}));
    server.send_doc(&acme, b"{}");
    receiver.wait_for(1, 20);
    let health = |server: &Server| {
        let auth = format!("Bearer {}", server.token);
        send(
            &agent(),
            "GET",
            &format!("{}/admin/api/partners/GLOBEX", server.base),
            &[("Authorization", &auth)],
            None,
        )
        .data(200)["endpointHealth"]["live"]
            .clone()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        let h = health(&server);
        if h["failingSince"].is_string() {
            break h;
        }
        assert!(Instant::now() < deadline, "no failure recorded: {h}");
        std::thread::sleep(Duration::from_millis(25));
    };
    assert!(before["lastFailureAt"].is_string(), "{before}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let server = start_with(dir.path(), &settings);
    let after = health(&server);
    assert_eq!(after["failingSince"], before["failingSince"], "{after}");
}

#[test]
fn background_jobs_queued_or_running_at_sigkill_each_have_one_effect_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let one_at_a_time = [("WAYBILL_BACKGROUND__CONCURRENCY", "1")];
    let mut server = start_with(dir.path(), &one_at_a_time);
    let (acme, globex) = server.acme_to_globex(json!({}));
    let submit = |server: &Server, key: &str, method: &str, path: &str, body: Option<&[u8]>| {
        send(
            &agent(),
            method,
            &format!("{}{path}", server.base),
            &[
                ("X-Api-Key", key),
                ("Content-Type", "application/json"),
                ("Waybill-Background", "none"),
            ],
            body,
        )
        .data(202)["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // A long poll holds the only slot: it is mid-run at the kill, the creations queued.
    let running = submit(
        &server,
        &globex,
        "GET",
        "/api/v1/transmissions?wait=3",
        None,
    );
    let creations: Vec<(String, String)> = (0..5)
        .map(|i| {
            let reference = format!("kill-{i}");
            let path = format!("/api/v1/documents/order?externalReference={reference}");
            (
                submit(&server, &acme, "POST", &path, Some(b"{}")),
                reference,
            )
        })
        .collect();
    let state = |server: &Server, key: &str, id: &str| {
        send(
            &agent(),
            "GET",
            &format!("{}/api/v1/background/{id}", server.base),
            &[("X-Api-Key", key)],
            None,
        )
        .data(200)
    };
    let until = Instant::now() + Duration::from_secs(10);
    while state(&server, &globex, &running)["state"] != "running" {
        assert!(Instant::now() < until, "the long poll never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let server = start_with(dir.path(), &one_at_a_time);
    let deadline = Instant::now() + Duration::from_secs(60);
    for (id, key) in
        std::iter::once((&running, &globex)).chain(creations.iter().map(|(id, _)| (id, &acme)))
    {
        loop {
            let s = state(&server, key, id);
            if s["state"] == "completed" {
                break;
            }
            assert!(Instant::now() < deadline, "job never completed: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Each creation made exactly one message.
    for (_, reference) in &creations {
        let found = send(
            &agent(),
            "POST",
            &format!("{}/api/v1/tracking", server.base),
            &[("X-Api-Key", &acme), ("Content-Type", "application/json")],
            Some(
                json!({"search": [{"by": "externalReference", "value": reference}]})
                    .to_string()
                    .as_bytes(),
            ),
        )
        .data(200);
        assert_eq!(found["paging"]["totalRequests"], 1, "{reference}: {found}");
    }
}

#[test]
fn a_job_killed_right_after_its_call_has_one_effect_and_stays_done() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_with(dir.path(), &[("WAYBILL_CRASH_AFTER_JOB_EFFECT", "1")]);
    let (acme, _) = server.acme_to_globex(json!({}));
    let reference = "crash-after-effect";
    let submitted = send(
        &agent(),
        "POST",
        &format!(
            "{}/api/v1/documents/order?externalReference={reference}",
            server.base
        ),
        &[
            ("X-Api-Key", &acme),
            ("Content-Type", "application/json"),
            ("Waybill-Background", "none"),
        ],
        Some(b"{}"),
    )
    .data(202);
    let id = submitted["id"].as_str().unwrap().to_owned();
    // The run makes its change, then the process dies before the worker could record
    // anything more.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not stop at the crash point"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "{status:?}");

    let server = start_with(dir.path(), &[]);
    let job = |server: &Server| {
        send(
            &agent(),
            "GET",
            &format!("{}/api/v1/background/{id}", server.base),
            &[("X-Api-Key", &acme)],
            None,
        )
        .data(200)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let j = job(&server);
        if j["state"] == "completed" {
            break j;
        }
        assert!(Instant::now() < deadline, "job never completed: {j}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The write that made the change also stored the answer and ended the job: it did
    // not run again after the restart.
    assert_eq!(done["runs"], 1, "{done}");
    assert_eq!(done["responseStatus"], 201, "{done}");
    let content = send(
        &agent(),
        "GET",
        &format!("{}/api/v1/background/{id}/content", server.base),
        &[("X-Api-Key", &acme)],
        None,
    );
    assert_eq!(content.status, 201);
    let created = content.json()["data"].clone();
    let found = send(
        &agent(),
        "POST",
        &format!("{}/api/v1/tracking", server.base),
        &[("X-Api-Key", &acme), ("Content-Type", "application/json")],
        Some(
            json!({"search": [{"by": "externalReference", "value": reference}]})
                .to_string()
                .as_bytes(),
        ),
    )
    .data(200);
    assert_eq!(found["paging"]["totalRequests"], 1, "{found}");
    let listed = found.to_string();
    let request = created["requestId"]
        .as_str()
        .unwrap_or_else(|| panic!("no request id in {created}"));
    assert!(listed.contains(request), "{request} not in {listed}");
}

#[test]
fn no_secret_or_payload_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let data = dir.path().join("data");
    // Everything Waybill logs, down to debug, including the libraries under it.
    let mut server = start_logging(&data, &[("WAYBILL_LOG", "debug")], Stdio::from(log));
    let closed = format!("http://127.0.0.1:{}/hook", free_port());
    let push_secret = "push-header-secret-8d1f";
    let (acme, globex) = server.acme_to_globex(json!({
        "pushUrl": closed,
        "pushHeaders": {"Authorization": format!("Bearer {push_secret}")},
    }));
    let signing = server.admin(
        "POST",
        "/admin/api/partners/GLOBEX/signing-secret",
        json!({"overlapHours": 1}),
    )["data"]["signingSecret"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = send(
        &agent(),
        "POST",
        &format!("{}/api/v1/auth/token", server.base),
        &[("X-Api-Key", &acme)],
        None,
    )
    .data(200)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let marker = "payload-marker-5be2a7";
    server.send_doc(&acme, format!(r#"{{"note":"{marker}"}}"#).as_bytes());
    let with_token = send(
        &agent(),
        "GET",
        &format!("{}/api/v1/transmissions", server.base),
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    );
    assert_eq!(with_token.status, 200);
    // Failed attempts are logged too: a wrong key, a wrong admin token.
    let wrong_key = "wb_live_wrong-key-3c9e";
    assert_eq!(server.poll_status(wrong_key), 401);
    let password = "correct horse battery staple 77";
    server.admin(
        "POST",
        "/admin/api/users",
        json!({"username": "alice", "password": password}),
    );
    let login = send(
        &agent(),
        "POST",
        &format!("{}/admin/api/login", server.base),
        &[("Content-Type", "application/json")],
        Some(
            json!({"username": "alice", "password": password})
                .to_string()
                .as_bytes(),
        ),
    );
    let cookie = login.headers["set-cookie"].to_str().unwrap().to_owned();
    let session_id = cookie
        .split(';')
        .next()
        .and_then(|c| c.split_once('='))
        .map(|(_, v)| v.to_owned())
        .unwrap();
    let csrf = login.data(200)["csrfToken"].as_str().unwrap().to_owned();
    let bad_login = send(
        &agent(),
        "POST",
        &format!("{}/admin/api/login", server.base),
        &[("Content-Type", "application/json")],
        Some(
            json!({"username": "alice", "password": "wrong-password-41"})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(bad_login.status, 401);
    // Let the push to the closed port fail and be logged.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status();
    let _ = server.child.wait();

    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.contains("waybill serving"),
        "the log was captured: {text}"
    );
    let secrets = [
        ("partner key", acme.as_str()),
        ("receiver key", globex.as_str()),
        ("wrong key", wrong_key),
        ("token", token.as_str()),
        ("admin token", server.token.as_str()),
        ("password", password),
        ("wrong password", "wrong-password-41"),
        ("session id", session_id.as_str()),
        ("CSRF token", csrf.as_str()),
        ("signing secret", signing.as_str()),
        ("push header", push_secret),
        ("payload", marker),
    ];
    for (what, secret) in secrets {
        assert!(secret.len() >= 12, "{what} is too short to search for");
        if let Some(line) = text.lines().find(|l| l.contains(secret)) {
            panic!("the {what} is in the log: {line}");
        }
    }
}

/// The next notification on `socket`, as text (panics after 20 s).
fn notification(socket: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification from the server: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn systemd_is_told_when_the_server_is_ready_and_when_it_stops() {
    // As under a unit with Type=notify: the service manager's socket is in NOTIFY_SOCKET.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let data = dir.path().join("data");
    let mut server = start_with(&data, &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let ready = notification(&socket);
    let lines: Vec<&str> = ready.lines().collect();
    assert!(lines.contains(&"READY=1"), "{ready}");
    let pid = format!("MAINPID={}", server.child.id());
    assert!(lines.contains(&pid.as_str()), "{ready}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("STATUS=") && l.contains(&server.listen)),
        "{ready}"
    );
    // Ready means serving: the port answers.
    assert_eq!(
        agent()
            .get(&format!("{}/readyz", server.base))
            .call()
            .unwrap()
            .status(),
        200
    );

    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stopping = notification(&socket);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(25));
    }
}
