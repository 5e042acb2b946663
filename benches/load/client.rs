//! The load generator's HTTP/1.1 client: keep-alive connections over plain TCP or TLS,
//! pre-built requests, and response heads parsed with no more than the bench needs.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::stats::{fmt_ms, micros};
use crate::REQUEST_TIMEOUT;

/// Where and how to connect: the socket address, the Host header, and the
/// TLS client setup when the server speaks HTTPS.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub tls: Option<TlsClient>,
}

impl Target {
    /// Inserted into the phase lines so plain and TLS runs are told apart.
    pub fn label(&self) -> &'static str {
        if self.tls.is_some() {
            "https "
        } else {
            ""
        }
    }
}

#[derive(Clone)]
pub struct TlsClient {
    pub connector: TlsConnector,
    /// SNI and the name the certificate is checked against.
    pub name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts exactly the certificates in `ca_pem` and offers only HTTP/1.1.
    pub fn new(ca_pem: &Path, name: &str) -> Result<TlsClient, String> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca_pem)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", ca_pem.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate found", ca_pem.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca_pem.display()))?;
        }
        // No process-wide provider is installed, so name one explicitly.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| format!("TLS server name {name:?}: {e}"))?;
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

/// Protocol, cipher suite and ALPN of one handshake, and how long handshakes
/// take (median of a few, TCP connect included): the cost TLS adds once per
/// keep-alive connection.
pub async fn tls_summary(target: &Target) -> Result<String, String> {
    let mut times = Vec::new();
    let mut info = String::new();
    for _ in 0..9 {
        let started = Instant::now();
        let c = timeout(REQUEST_TIMEOUT, Conn::connect(target))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
        times.push(micros(started.elapsed()));
        if let Stream::Tls(s) = &c.stream {
            let (_, session) = s.get_ref();
            let version = session.protocol_version();
            let suite = session.negotiated_cipher_suite().map(|cs| cs.suite());
            info = format!(
                "{} {}, ALPN {}",
                version.map_or("?".into(), |v| format!("{v:?}")),
                suite.map_or("?".into(), |c| format!("{c:?}")),
                session
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_else(|| "none".into())
            );
        }
    }
    times.sort_unstable();
    Ok(format!(
        "{info}, handshake {} (median of {})",
        fmt_ms(times[times.len() / 2]),
        times.len()
    ))
}

/// The target for `--server URL`; https:// URLs trust only `tls_ca`.
pub async fn resolve(url: &str, tls_ca: Option<&Path>) -> Result<Target, String> {
    let (rest, https) = match url.split_once("://") {
        Some(("http", rest)) => (rest, false),
        Some(("https", rest)) => (rest, true),
        Some((scheme, _)) => return Err(format!("--server: unsupported scheme {scheme:?}")),
        None => (url, false),
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("--server: no host in {url:?}"));
    }
    // "[::1]" ends in "1]", which is not a port, so IPv6 literals work too.
    let (name, with_port) = match authority
        .rsplit_once(':')
        .filter(|(_, p)| p.parse::<u16>().is_ok())
    {
        Some((name, _)) => (name, authority.to_string()),
        None => (
            authority,
            format!("{authority}:{}", if https { 443 } else { 80 }),
        ),
    };
    let mut addrs = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| format!("--server: cannot resolve {with_port}: {e}"))?;
    let addr = addrs
        .next()
        .ok_or_else(|| format!("--server: {with_port} resolves to nothing"))?;
    let tls = match (https, tls_ca) {
        (false, _) => None,
        (true, Some(ca)) => {
            let name = name.trim_start_matches('[').trim_end_matches(']');
            Some(TlsClient::new(ca, name)?)
        }
        (true, None) => return Err("--server https://... needs --tls-ca FILE".into()),
    };
    Ok(Target {
        addr,
        host: authority.to_string(),
        tls,
    })
}

pub fn is_tls_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

/// Sends one request on a fresh connection; for control traffic, not load.
pub async fn one_shot(target: &Target, req: &[u8], limit: Duration) -> io::Result<(u16, Vec<u8>)> {
    let fut = async {
        let mut c = Conn::connect(target).await?;
        let status = c.request(req).await?;
        Ok((status, std::mem::take(&mut c.body)))
    };
    match timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "request timed out")),
    }
}

// ---------------------------------------------------------------------------
// Minimal HTTP/1.1 client

pub fn build_request(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = Vec::with_capacity(256 + body.len());
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(path.as_bytes());
    if method == "GET" && body.is_empty() {
        req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        req.extend_from_slice(host.as_bytes());
        req.extend_from_slice(b"\r\n");
        for (k, v) in headers {
            req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
    } else {
        req.extend_from_slice(&build_request_tail(host, headers, body));
    }
    req
}

/// Everything after the request target, so requests that differ only in the
/// path (acks) are a prefix, the target and this shared suffix.
pub fn build_request_tail(host: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(256 + body.len());
    t.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    t.extend_from_slice(host.as_bytes());
    t.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        t.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    t.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    t.extend_from_slice(body);
    t
}

pub struct Head {
    pub status: u16,
    pub content_length: Option<usize>,
    pub chunked: bool,
    pub close: bool,
}

pub fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn parse_head(head: &[u8]) -> io::Result<Head> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or(b"");
    if status_line.len() < 12 || !status_line.starts_with(b"HTTP/1.") {
        return Err(bad(format!(
            "bad status line {:?}",
            String::from_utf8_lossy(status_line)
        )));
    }
    let status = std::str::from_utf8(&status_line[9..12])
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status code"))?;
    let mut h = Head {
        status,
        content_length: None,
        chunked: false,
        // HTTP/1.0 closes unless it says otherwise.
        close: status_line[7] == b'0',
    };
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or_else(|| bad("bad content-length"))?;
            h.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            h.chunked = contains_token(value, b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            if contains_token(value, b"close") {
                h.close = true;
            } else if contains_token(value, b"keep-alive") {
                h.close = false;
            }
        }
    }
    Ok(h)
}

pub fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

pub fn parse_hex(s: &[u8]) -> Option<usize> {
    let s = s.trim_ascii();
    if s.is_empty() || s.len() > 15 {
        return None;
    }
    let mut n = 0usize;
    for &b in s {
        let d = (b as char).to_digit(16)?;
        n = n * 16 + d as usize;
    }
    Some(n)
}

/// Plain TCP or TLS over TCP. An enum rather than a trait object so the plain
/// path costs one predictable branch, not a virtual call per read and write;
/// the TLS state is boxed to keep the plain variant small.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(s) => {
                s.write_all(buf).await?;
                // A TLS write may return with records still buffered inside
                // rustls when the socket is full; push them out before waiting
                // for the response.
                s.flush().await
            }
        }
    }

    pub async fn read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
        }
    }
}

/// A keep-alive connection with a reusable read buffer. The decoded body of
/// the last response is left in `body`.
pub struct Conn {
    pub stream: Stream,
    pub buf: Vec<u8>,
    /// Start of unread bytes in `buf`. Normally the whole buffer is consumed
    /// per response; anything beyond it is kept rather than silently lost.
    pub pos: usize,
    pub body: Vec<u8>,
    pub keep_alive: bool,
}

impl Conn {
    /// Connects and, for TLS, completes the handshake; every request on the
    /// connection then reuses that session.
    pub async fn connect(target: &Target) -> io::Result<Conn> {
        let tcp = TcpStream::connect(target.addr).await?;
        // Requests are single writes; Nagle would only add delay to them.
        tcp.set_nodelay(true)?;
        let stream = match &target.tls {
            None => Stream::Plain(tcp),
            Some(tls) => {
                let handshake = tls.connector.connect(tls.name.clone(), tcp);
                // A server that accepts but never answers must not hang a worker.
                match timeout(REQUEST_TIMEOUT, handshake).await {
                    Ok(s) => Stream::Tls(Box::new(s?)),
                    Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "TLS handshake timed out",
                        ))
                    }
                }
            }
        };
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            body: Vec::with_capacity(1024),
            keep_alive: true,
        })
    }

    /// Sends a complete pre-built request and reads the final response.
    pub async fn request(&mut self, req: &[u8]) -> io::Result<u16> {
        self.stream.write_all(req).await?;
        loop {
            let status = self.read_response().await?;
            // Interim responses (100 Continue and the like) precede the real one.
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            return Ok(status);
        }
    }

    pub async fn fill(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            let grow = self.buf.capacity().max(16 * 1024);
            self.buf.reserve(grow);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by server",
            ));
        }
        Ok(())
    }

    /// Waits until `buf` holds a CRLF at or after `from`; returns its index.
    pub async fn line_end(&mut self, from: usize) -> io::Result<usize> {
        loop {
            if let Some(i) = find(&self.buf[from..], b"\r\n") {
                return Ok(from + i);
            }
            if self.buf.len() - from > 8 * 1024 {
                return Err(bad("chunk line too long"));
            }
            self.fill().await?;
        }
    }

    pub async fn read_response(&mut self) -> io::Result<u16> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(bad("response head too large"));
            }
            self.fill().await?;
        };
        let head = parse_head(&self.buf[..head_end])?;
        self.keep_alive = !head.close;
        self.body.clear();
        let mut pos = head_end;
        if head.status < 200 || head.status == 204 || head.status == 304 {
            // No body by definition.
        } else if head.chunked {
            pos = self.read_chunked(pos).await?;
        } else if let Some(len) = head.content_length {
            while self.buf.len() < pos + len {
                self.fill().await?;
            }
            self.body.extend_from_slice(&self.buf[pos..pos + len]);
            pos += len;
        } else {
            // Neither length nor chunked: the body runs to end of stream.
            loop {
                match self.fill().await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            self.body.extend_from_slice(&self.buf[pos..]);
            pos = self.buf.len();
            self.keep_alive = false;
        }
        self.pos = pos;
        Ok(head.status)
    }

    pub async fn read_chunked(&mut self, mut pos: usize) -> io::Result<usize> {
        loop {
            let eol = self.line_end(pos).await?;
            let line = &self.buf[pos..eol];
            let size_part = line.split(|&b| b == b';').next().unwrap_or(b"");
            let size = parse_hex(size_part).ok_or_else(|| bad("bad chunk size"))?;
            pos = eol + 2;
            if size == 0 {
                // Trailer section: header lines up to an empty line.
                loop {
                    let eol = self.line_end(pos).await?;
                    let empty = eol == pos;
                    pos = eol + 2;
                    if empty {
                        return Ok(pos);
                    }
                }
            }
            while self.buf.len() < pos + size + 2 {
                self.fill().await?;
            }
            self.body.extend_from_slice(&self.buf[pos..pos + size]);
            if &self.buf[pos + size..pos + size + 2] != b"\r\n" {
                return Err(bad("chunk not followed by CRLF"));
            }
            pos += size + 2;
        }
    }
}

pub async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(4096);
    }
    matches!(stream.read_buf(buf).await, Ok(n) if n > 0)
}
