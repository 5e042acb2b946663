//! HTTPS: a round trip with a generated certificate, clients that do not trust it, the
//! redirect from plain HTTP, certificate reload on SIGHUP and `waybill init --self-signed`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

use crate::{send, spawn_app_on, wait_for_token};

const BIN: &str = env!("CARGO_BIN_EXE_waybill");

/// A client that trusts exactly the certificate in `pem_file`.
fn trusting(pem_file: &Path) -> ureq::Agent {
    let pem = std::fs::read(pem_file).expect("read cert");
    let cert = Certificate::from_pem(&pem).expect("parse cert").to_owned();
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(vec![cert])))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    waybill::tls::write_self_signed(dir, &["localhost".into(), "127.0.0.1".into()])
        .expect("write cert")
}

#[test]
fn the_whole_flow_works_over_https_with_a_generated_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let (c, k) = (cert.clone(), key.clone());
    let app = spawn_app_on("https", trusting(&cert), move |config| {
        config.server.tls_cert = Some(c);
        config.server.tls_key = Some(k);
    });
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "order");
    let sent = app
        .send_doc(&acme, "ACME", Some("GLOBEX"), "order", br#"{"tls":true}"#)
        .data(202);
    let items = app.poll(&globex, "lease=30");
    assert_eq!(items[0]["payload"], json!({"tls": true}));
    app.ack(
        &globex,
        sent["transmissions"][0]["uuid"].as_str().unwrap(),
        "processed",
    )
    .data(200);

    // A client with only the public roots does not trust a self-signed certificate.
    let public = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    assert!(
        public.get(&app.url("/healthz")).call().is_err(),
        "an untrusted certificate must be refused"
    );
    // Nor does one that trusts a different certificate.
    let other = tempfile::tempdir().unwrap();
    let (other_cert, _) = self_signed(other.path());
    assert!(trusting(&other_cert)
        .get(&app.url("/healthz"))
        .call()
        .is_err());
    // Plain HTTP on the HTTPS port gets nowhere.
    let plain = crate::agent();
    assert!(plain
        .get(&format!("http://127.0.0.1:{}/healthz", app.addr.port()))
        .call()
        .map(|r| r.status() != 200)
        .unwrap_or(true));
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_https(data: &Path, cert: &Path, key: &Path, redirect: Option<u16>) -> Server {
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(data)
    .env("WAYBILL_SERVER__TLS_CERT", cert)
    .env("WAYBILL_SERVER__TLS_KEY", key)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(r) = redirect {
        cmd.env("WAYBILL_SERVER__REDIRECT_HTTP", format!("127.0.0.1:{r}"));
    }
    let child = cmd.spawn().expect("spawn");
    wait_for_token(data);
    let agent = trusting(cert);
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent
        .get(&format!("https://localhost:{port}/readyz"))
        .call()
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "HTTPS server did not become ready"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    Server { child, port }
}

#[test]
fn sighup_reloads_the_certificate_without_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let old = tempfile::tempdir().unwrap();
    std::fs::copy(&cert, old.path().join("cert.pem")).unwrap();
    let server = start_https(data.path(), &cert, &key, None);
    let url = format!("https://localhost:{}/healthz", server.port);
    assert_eq!(
        trusting(&old.path().join("cert.pem"))
            .get(&url)
            .call()
            .unwrap()
            .status(),
        200
    );

    // New pair in place, then SIGHUP.
    self_signed(certs.path());
    let hup = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while trusting(&cert).get(&url).call().is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        trusting(&old.path().join("cert.pem"))
            .get(&url)
            .call()
            .is_err(),
        "the old certificate is gone"
    );

    // A broken pair on the next SIGHUP is refused and the current one stays in use.
    let current = old.path().join("current.pem");
    std::fs::copy(&cert, &current).unwrap();
    std::fs::write(&cert, "garbage").unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(trusting(&current).get(&url).call().unwrap().status(), 200);
}

#[test]
fn plain_http_is_redirected_to_https_when_asked() {
    let data = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let redirect = free_port();
    let server = start_https(data.path(), &cert, &key, Some(redirect));
    let r = send(
        &ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .new_agent(),
        "GET",
        &format!("http://localhost:{redirect}/api/v1/transmissions?limit=5"),
        &[],
        None,
    );
    assert_eq!(r.status, 308);
    assert_eq!(
        r.headers["location"],
        format!(
            "https://localhost:{}/api/v1/transmissions?limit=5",
            server.port
        )
    );
}

#[test]
fn init_writes_a_self_signed_pair_that_serve_accepts() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["init", "--self-signed", "--host", "localhost", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = data.path().join("tls/cert.pem");
    let key = data.path().join("tls/key.pem");
    assert!(String::from_utf8_lossy(&out.stdout).contains("tls_cert"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let server = start_https(data.path(), &cert, &key, None);
    let r = trusting(&cert)
        .get(&format!("https://localhost:{}/healthz", server.port))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
}
