//! Hostile receivers: raw-TCP HTTP/1.1 servers, one per endpoint, each misbehaving in
//! one way (see [`Fault`]). Every request is read by hand so a receiver can stop halfway,
//! hang or vanish. Each writes down, per delivery id (`webhook-id`), the bodies it
//! answered 2xx in time, the answers it gave too late, and what it injected.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::crash::load::Rng;

/// How one endpoint misbehaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fault {
    /// 30 % of calls, picked from the seed, answer 500.
    Flaky,
    /// 30 % of calls hang past the delivery timeout, then answer 200 to nobody.
    Hang,
    /// The first call of every delivery id answers 301, 302, 307 or 308 to the trap.
    Redirect,
    /// The first call of every delivery id answers 429 with `Retry-After`.
    Limit,
    /// 30 % of calls read half the body, then reset the connection.
    Reset,
    /// Connection refused while the test holds it down; else 200.
    Down,
    /// The very first call answers 410 Gone; every later one 200.
    Gone,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Flaky => "500 at random",
            Fault::Hang => "hang",
            Fault::Redirect => "3xx",
            Fault::Limit => "429 Retry-After",
            Fault::Reset => "reset mid-body",
            Fault::Down => "down and back",
            Fault::Gone => "410",
        }
    }
}

/// What a receiver saw and did.
#[derive(Default)]
pub struct Log {
    /// Calls received (complete or not).
    pub calls: usize,
    /// Faults injected: error answers, hangs, redirects, resets, calls refused while down.
    pub injected: usize,
    /// By delivery id: the bodies answered 2xx while the caller was still waiting.
    pub ok: HashMap<String, Vec<Vec<u8>>>,
    /// Delivery ids answered 200 only after the hang, when the caller had given up.
    pub late: Vec<String>,
    /// Delivery ids seen at least once (for faults on first calls).
    seen: HashSet<String>,
    /// Calls arriving on a connection while down (cut without an answer).
    pub cut_while_down: usize,
}

struct Inner {
    fault: Fault,
    rng: Mutex<Rng>,
    log: Mutex<Log>,
    up: AtomicBool,
    hang: Duration,
    trap: String,
}

/// A hostile receiver; clones share it.
#[derive(Clone)]
pub struct Hostile {
    pub url: String,
    port: u16,
    inner: Arc<Inner>,
}

impl Hostile {
    /// Starts a receiver with `fault`; a hang lasts `hang`, redirects point at `trap`.
    pub fn start(fault: Fault, seed: u64, hang: Duration, trap: &str) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind hostile receiver");
        let port = listener.local_addr().expect("addr").port();
        let h = Hostile {
            url: format!("http://127.0.0.1:{port}"),
            port,
            inner: Arc::new(Inner {
                fault,
                rng: Mutex::new(Rng::new(seed)),
                log: Mutex::default(),
                up: AtomicBool::new(true),
                hang,
                trap: trap.to_owned(),
            }),
        };
        h.listen(listener);
        h
    }

    pub fn fault(&self) -> Fault {
        self.inner.fault
    }

    /// Closes the listener: new connections are refused, requests on open ones are cut.
    pub fn go_down(&self) {
        self.inner.up.store(false, Ordering::SeqCst);
        // The accept loop notices within its poll interval and drops the listener.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(std::time::Instant::now() < deadline, "listener still open");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Listens again on the same port.
    pub fn come_back(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("rebind same port");
        self.inner.up.store(true, Ordering::SeqCst);
        self.listen(listener);
    }

    /// Runs `f` on the log.
    pub fn with_log<R>(&self, f: impl FnOnce(&Log) -> R) -> R {
        f(&self.inner.log.lock().unwrap())
    }

    fn listen(&self, listener: TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        let inner = Arc::clone(&self.inner);
        std::thread::spawn(move || loop {
            if !inner.up.load(Ordering::SeqCst) {
                return; // drops the listener: connection refused from now on
            }
            match listener.accept() {
                Ok((conn, _)) => {
                    let inner = Arc::clone(&inner);
                    std::thread::spawn(move || serve(&inner, conn));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        });
    }
}

/// One request's head and the length of its body.
struct Head {
    id: String,
    len: usize,
}

fn read_head(reader: &mut BufReader<TcpStream>) -> Option<Head> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let (mut id, mut len) = (String::new(), 0);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let Some((k, v)) = h.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("content-length") {
            len = v.trim().parse().ok()?;
        } else if k.eq_ignore_ascii_case("webhook-id") {
            v.trim().clone_into(&mut id);
        }
    }
    Some(Head { id, len })
}

/// Closes `conn` with a reset (SO_LINGER 0) instead of an orderly FIN.
fn reset(conn: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a properly sized option value.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(conn);
}

fn answer(conn: &mut TcpStream, status: u16, extra: &str) -> bool {
    let text = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n{extra}\r\nok");
    conn.write_all(text.as_bytes())
        .and_then(|()| conn.flush())
        .is_ok()
}

fn serve(inner: &Inner, conn: TcpStream) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut conn = conn;
    loop {
        let Some(head) = read_head(&mut reader) else {
            return;
        };
        let (roll, first_of_id, first_call) = {
            let mut log = inner.log.lock().unwrap();
            log.calls += 1;
            let first_call = log.calls == 1;
            let first_of_id = log.seen.insert(head.id.clone());
            let roll = inner.rng.lock().unwrap().below(100);
            (roll, first_of_id, first_call)
        };
        let note = |f: &dyn Fn(&mut Log)| f(&mut inner.log.lock().unwrap());
        if inner.fault == Fault::Down && !inner.up.load(Ordering::SeqCst) {
            note(&|l| {
                l.injected += 1;
                l.cut_while_down += 1;
            });
            return reset(conn);
        }
        if inner.fault == Fault::Reset && roll < 30 {
            let mut half = vec![0u8; head.len / 2];
            let _ = reader.read_exact(&mut half);
            note(&|l| l.injected += 1);
            return reset(conn);
        }
        let mut body = vec![0u8; head.len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let refusal = match inner.fault {
            Fault::Flaky if roll < 30 => Some((500, String::new())),
            Fault::Redirect if first_of_id => {
                let status = [301, 302, 307, 308][roll as usize % 4];
                Some((status, format!("location: {}/stolen\r\n", inner.trap)))
            }
            Fault::Limit if first_of_id => Some((429, "retry-after: 2\r\n".to_owned())),
            Fault::Gone if first_call => Some((410, String::new())),
            _ => None,
        };
        if let Some((status, extra)) = refusal {
            note(&|l| l.injected += 1);
            if !answer(&mut conn, status, &extra) {
                return;
            }
            continue;
        }
        if inner.fault == Fault::Hang && roll < 30 {
            note(&|l| l.injected += 1);
            std::thread::sleep(inner.hang);
            // The caller gave up long ago: this 200 reaches nobody, yet the receiver did
            // its work.
            let _ = answer(&mut conn, 200, "");
            let id = head.id.clone();
            note(&|l| l.late.push(id.clone()));
            return;
        }
        let id = head.id.clone();
        let body_kept = body.clone();
        // Written down before answering: once the caller reads the 200 it may be checked.
        {
            let mut log = inner.log.lock().unwrap();
            log.ok.entry(id).or_default().push(body_kept);
        }
        if !answer(&mut conn, 200, "") {
            return;
        }
    }
}
