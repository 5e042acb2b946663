//! The server under test: started from the release binary on a fresh data directory,
//! watched while the scenarios run, and stopped with SIGTERM.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::time::sleep;

use crate::client::{Target, TlsClient};

pub const TLS_CERT_ENV: &str = "WAYBILL_SERVER__TLS_CERT";
pub const TLS_KEY_ENV: &str = "WAYBILL_SERVER__TLS_KEY";
pub const OUTBOUND_ALLOW_ENV: &str = "WAYBILL_OUTBOUND__ALLOW";

/// A crashed server makes every later number meaningless (all errors), so
/// stop there and show why it died.
pub fn check_alive(server: &mut Option<Server>, phase: &str) -> Result<(), String> {
    match server.as_mut() {
        Some(s) => match s.exited() {
            Some(status) => Err(format!(
                "server exited during {phase} ({status})\n{}",
                s.log_tail()
            )),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

pub fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WAYBILL_BIN") {
        return PathBuf::from(p);
    }
    // Cargo sets this when building benches; the fallback lets the file be
    // compiled as a plain binary too.
    PathBuf::from(option_env!("CARGO_BIN_EXE_waybill").unwrap_or("target/release/waybill"))
}

// ---------------------------------------------------------------------------
// Server process

pub struct Server {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub addr: SocketAddr,
    /// Self-signed certificate and key the server is started with, and the
    /// client side that trusts just that certificate; `None` for plain HTTP.
    pub tls: Option<(PathBuf, PathBuf, TlsClient)>,
    /// Started with WAYBILL_OUTBOUND__ALLOW=127.0.0.0/8 so it may push to
    /// the receiver in this process.
    pub allow_loopback: bool,
    pub child: Option<Child>,
    // Declared last: fields drop in order, and the directory must outlive
    // the child that Drop stops first.
    pub _root: tempfile::TempDir,
}

impl Server {
    pub fn start(bin: PathBuf, tls: bool, allow_loopback: bool) -> Result<Server, String> {
        if !bin.exists() {
            return Err(format!(
                "server binary {} not found (build it, or set WAYBILL_BIN)",
                bin.display()
            ));
        }
        let root = tempfile::Builder::new()
            .prefix("waybill-load-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        // The log sits beside, not inside, the data directory so the server
        // never sees a file it did not create.
        let data_dir = root.path().join("data");
        fs::create_dir(&data_dir).map_err(|e| format!("create {}: {e}", data_dir.display()))?;
        let tls = if tls {
            let hosts = ["localhost".to_string(), "127.0.0.1".to_string()];
            let (cert, key) = waybill::tls::write_self_signed(&root.path().join("tls"), &hosts)
                .map_err(|e| format!("self-signed certificate: {e}"))?;
            let client = TlsClient::new(&cert, "localhost")?;
            Some((cert, key, client))
        } else {
            None
        };
        let mut s = Server {
            bin,
            log_path: root.path().join("server.log"),
            data_dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls,
            allow_loopback,
            child: None,
            _root: root,
        };
        s.spawn()?;
        Ok(s)
    }

    pub fn spawn(&mut self) -> Result<(), String> {
        // A fresh port per spawn: the previous one may linger in TIME_WAIT.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port: {e}"))?
            .port();
        self.addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("open {}: {e}", self.log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("log: {e}"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.addr.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // Per-request logging would turn the benchmark into a logging
        // benchmark; an explicit RUST_LOG from the caller still wins.
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        // Set or cleared explicitly, so a certificate in the caller's
        // environment cannot turn a plain run into a TLS one.
        match &self.tls {
            Some((cert, key, _)) => {
                cmd.env(TLS_CERT_ENV, cert).env(TLS_KEY_ENV, key);
            }
            None => {
                cmd.env_remove(TLS_CERT_ENV).env_remove(TLS_KEY_ENV);
            }
        }
        if self.allow_loopback {
            cmd.env(OUTBOUND_ALLOW_ENV, "127.0.0.0/8");
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// How to reach the current process; the port changes on every spawn.
    pub fn target(&self) -> Target {
        match &self.tls {
            // The name the certificate and SNI use, on the address we bound.
            Some((_, _, client)) => Target {
                addr: self.addr,
                host: format!("localhost:{}", self.addr.port()),
                tls: Some(client.clone()),
            },
            None => Target {
                addr: self.addr,
                host: self.addr.to_string(),
                tls: None,
            },
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub async fn admin_token(&mut self, deadline: Instant) -> Result<String, String> {
        let path = self.data_dir.join("admin.token");
        loop {
            // The file may be observed half-written; an empty read just retries.
            if let Ok(t) = fs::read_to_string(&path) {
                let t = t.trim();
                if !t.is_empty() {
                    return Ok(t.to_string());
                }
            }
            if let Some(status) = self.exited() {
                return Err(format!("server exited ({status})\n{}", self.log_tail()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not appear\n{}",
                    path.display(),
                    self.log_tail()
                ));
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, so the server takes its graceful path (flush, close the store)
    /// exactly as it would under a service manager.
    pub async fn stop(&mut self) -> Result<ExitStatus, String> {
        let Some(mut child) = self.child.take() else {
            return Err("server is not running".into());
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        send_sigterm(child.id());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(20)).await,
                _ => {
                    let _ = child.kill();
                    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
                    return Err(format!(
                        "server ignored SIGTERM for 60 s; killed ({status})"
                    ));
                }
            }
        }
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(20);
        if lines.is_empty() {
            return "(server log is empty)".into();
        }
        format!(
            "--- last lines of {} ---\n{}",
            self.log_path.display(),
            lines[from..].join("\n")
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Reached on error paths; never leave a server running behind us.
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                send_sigterm(child.id());
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub fn send_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Resident memory of process `pid` now.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// The most resident memory process `pid` has had so far.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM:")
}

/// A `kB` line of `/proc/PID/status`, in bytes.
fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status =
        fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Lines the server logged (at warn and above) since `from` bytes.
pub fn new_log_lines(server: &Option<Server>, from: u64) -> Vec<String> {
    let Some(s) = server else {
        return Vec::new();
    };
    let Ok(text) = fs::read(&s.log_path) else {
        return Vec::new();
    };
    let from = (from as usize).min(text.len());
    String::from_utf8_lossy(&text[from..])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// The CPU time (user and system) the process `pid` has used, in microseconds.
pub fn cpu_us(pid: Option<u32>) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // After the command name (in parentheses, which may hold spaces): the state is field 3,
    // utime field 14 and stime field 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * 1_000_000 / hz)
}

/// The bytes of every file under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
