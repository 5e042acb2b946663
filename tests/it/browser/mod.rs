//! The admin UI in a real browser: headless Chromium driven over WebDriver (chromedriver,
//! started here on a free port and stopped after). Debian's `chromium` and
//! `chromium-driver` packages; `./.ci/test` installs them when missing.

mod flow;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

/// A chromedriver process and a browser session on it; the process is killed on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where the screenshots go: `target/ui-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

fn need(cmd: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(cmd))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{cmd}` is not installed: the browser tests need Debian's chromium and \
             chromium-driver packages. Run ./.ci/test (the README's test command), which \
             installs them, or apt-get install chromium chromium-driver"
        )
    })
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium at 1280×900 that keeps its console log.
    pub async fn start() -> Browser {
        let chromium = need("chromium");
        let chromedriver = need("chromedriver");
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--window-size=1280,900", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-extensions"],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            // chromedriver listens on loopback, in plain HTTP: no TLS stack needed.
            let mut builder = ClientBuilder::new(HttpConnector::new());
            builder.capabilities(caps.clone());
            match builder.connect(&url).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "chromedriver did not start: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Browser { client, driver }
    }

    /// The browser's console entries since the last call (Chrome logs failed requests
    /// there too, as `SEVERE`), as "LEVEL message" lines.
    pub async fn log(&self) -> Vec<String> {
        let v = self.client.issue_cmd(Cdp::Log).await.expect("browser log");
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| format!("{} {}", e["level"].as_str().unwrap_or("?"), e["message"]))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The entries of the console log at `SEVERE` (errors, failed requests) since the last call.
    pub async fn errors(&self) -> Vec<String> {
        self.log()
            .await
            .into_iter()
            .filter(|l| l.starts_with("SEVERE"))
            .collect()
    }

    /// Requests of this page answered 4xx/5xx (resource timing) since the last call.
    pub async fn failed_requests(&self) -> Vec<String> {
        let v = self
            .client
            .execute(
                "performance.setResourceTimingBufferSize(100000);
                 const bad = performance.getEntriesByType('resource')
                   .filter(e => e.responseStatus >= 400)
                   .map(e => e.responseStatus + ' ' + e.name);
                 performance.clearResourceTimings();
                 return bad;",
                vec![],
            )
            .await
            .expect("resource timing");
        serde_json::from_value(v).unwrap_or_default()
    }

    /// Emulates the system's dark (or light) colour scheme.
    pub async fn color_scheme(&self, dark: bool) {
        self.client
            .issue_cmd(Cdp::Media(if dark { "dark" } else { "light" }))
            .await
            .expect("emulate colour scheme");
    }

    /// Waits until the view `name` has drawn its data (the router sets body[data-ready]).
    pub async fn ready(&self, name: &str) {
        let css = format!("body[data-ready='{name}']");
        self.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(&css))
            .await
            .unwrap_or_else(|e| panic!("view {name} never became ready: {e}"));
    }

    /// Waits for an element and returns it.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// Waits until the page's text contains `text`.
    pub async fn wait_text(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let body = self.text("body").await;
            if body.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {text:?}; it shows:\n{body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap_or_default()
    }

    /// Saves a PNG of the window as `target/ui-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(screenshot_dir().join(format!("{name}.png")), png).expect("save screenshot");
    }

    /// Runs a script and returns its value.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }
}

/// chromedriver's own endpoints that WebDriver lacks: the console log, and DevTools
/// commands (media emulation).
#[derive(Debug)]
enum Cdp {
    Log,
    Media(&'static str),
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        let sid = session_id.unwrap_or_default();
        match self {
            Cdp::Log => base_url.join(&format!("session/{sid}/se/log")),
            Cdp::Media(_) => base_url.join(&format!("session/{sid}/goog/cdp/execute")),
        }
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = match self {
            Cdp::Log => json!({"type": "browser"}),
            Cdp::Media(scheme) => json!({
                "cmd": "Emulation.setEmulatedMedia",
                "params": {"features": [{"name": "prefers-color-scheme", "value": scheme}]},
            }),
        };
        (http::Method::POST, Some(body.to_string()))
    }
}
