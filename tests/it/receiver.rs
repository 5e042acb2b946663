//! A small real HTTP receiver for push tests: it records every request and answers from a
//! script (status, headers, delay), then with 200 once the script is used up.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The query parameters of the request target.
    pub fn query(&self) -> Vec<(String, String)> {
        let q = self.target.split_once('?').map(|(_, q)| q).unwrap_or("");
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }
}

/// An answer the receiver gives.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
    /// The answer once the script is used up.
    default: Arc<Answer>,
}

impl Receiver {
    pub fn start(script: Vec<Answer>) -> Receiver {
        Self::serve_on(
            TcpListener::bind("127.0.0.1:0").expect("bind receiver"),
            script,
            Answer::status(200),
        )
    }

    /// A receiver that gives `answer` to every request.
    pub fn always(answer: Answer) -> Receiver {
        Self::serve_on(
            TcpListener::bind("127.0.0.1:0").expect("bind receiver"),
            vec![],
            answer,
        )
    }

    /// How many distinct `webhook-id`s arrived, and how many requests in all.
    pub fn unique_ids(&self) -> (usize, usize) {
        let got = self.received();
        let mut ids: Vec<&str> = got.iter().filter_map(|r| r.header("webhook-id")).collect();
        ids.sort_unstable();
        ids.dedup();
        (ids.len(), got.len())
    }

    /// A receiver on a given port, answering 200 to everything.
    pub fn start_on(port: u16) -> Receiver {
        Self::serve_on(
            TcpListener::bind(("127.0.0.1", port)).expect("bind receiver port"),
            vec![],
            Answer::status(200),
        )
    }

    fn serve_on(listener: TcpListener, script: Vec<Answer>, default: Answer) -> Receiver {
        let url = format!(
            "http://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        );
        let r = Receiver {
            url,
            got: Arc::default(),
            script: Arc::new(Mutex::new(script.into())),
            default: Arc::new(default),
        };
        let shared = r.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || shared.serve(conn));
            }
        });
        r
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived (or panics after `secs`).
    pub fn wait_for(&self, n: usize, secs: u64) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "receiver got {} of {n} requests",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn serve(&self, conn: std::net::TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        let mut writer = conn;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_owned();
            let target = parts.next().unwrap_or_default().to_owned();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.push((k.trim().to_owned(), v.trim().to_owned()));
                }
            }
            let len = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            self.got.lock().unwrap().push(Received {
                method,
                target,
                headers,
                body,
                at: Instant::now(),
            });
            let answer = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| (*self.default).clone());
            std::thread::sleep(answer.delay);
            let mut out = format!("HTTP/1.1 {} X\r\ncontent-length: 2\r\n", answer.status);
            for (k, v) in &answer.headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\nok");
            if writer.write_all(out.as_bytes()).is_err() {
                return;
            }
        }
    }
}
