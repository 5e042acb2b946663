use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ureq::unversioned::transport::time::Duration as Budget;
use ureq::unversioned::transport::{NextTimeout, Transport};
use ureq::{Error, Timeout};

use super::Socket;

fn pair() -> (Socket, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ours = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (theirs, _) = listener.accept().expect("accept");
    (Socket::over(ours, 4096, 4096).expect("socket"), theirs)
}

fn within(ms: u64) -> NextTimeout {
    NextTimeout {
        after: Budget::from_millis(ms),
        reason: Timeout::Global,
        per_read: None,
        per_write: None,
    }
}

fn write(socket: &mut Socket, bytes: &[u8]) {
    socket.buffers().output()[..bytes.len()].copy_from_slice(bytes);
    socket
        .transmit_output(bytes.len(), within(5_000))
        .expect("transmit");
}

#[test]
fn what_a_call_writes_leaves_in_one_send_once_it_waits_for_the_answer() {
    let (mut socket, mut peer) = pair();
    write(&mut socket, b"POST /hook HTTP/1.1\r\n\r\n");
    write(&mut socket, b"{\"n\":1}");
    // Nothing has left yet: the receiver sees no half request.
    peer.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 256];
    let early = peer.read(&mut buf);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{early:?}"
    );
    peer.set_nonblocking(false).expect("blocking");
    let answering = std::thread::spawn(move || {
        let mut got = Vec::new();
        while got.len() < 30 {
            let n = peer.read(&mut buf).expect("read");
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        peer.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .expect("answer");
        got
    });
    assert!(socket.await_input(within(5_000)).expect("answer"));
    let got = answering.join().expect("peer");
    assert_eq!(got, b"POST /hook HTTP/1.1\r\n\r\n{\"n\":1}");
    assert!(socket.buffers().input().starts_with(b"HTTP/1.1 204"));
}

#[test]
fn a_large_body_is_sent_in_parts_as_the_buffer_fills() {
    let (mut socket, mut peer) = pair();
    // 4 KiB of output: three 1 KiB writes leave only a quarter free, so they leave.
    for _ in 0..3 {
        write(&mut socket, &[b'x'; 1024]);
    }
    peer.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = vec![0u8; 3 * 1024];
    peer.read_exact(&mut got)
        .expect("sent without waiting for an answer");
    assert!(got.iter().all(|b| *b == b'x'));
    assert_eq!(socket.buffers().output().len(), 4096);
}

#[test]
fn a_silent_receiver_times_out_at_the_deadline_not_before() {
    let (mut socket, _peer) = pair();
    write(&mut socket, b"GET / HTTP/1.1\r\n\r\n");
    let started = Instant::now();
    let r = socket.await_input(within(150));
    assert!(matches!(r, Err(Error::Timeout(Timeout::Global))), "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[test]
fn a_pooled_connection_is_reused_only_while_open_and_quiet() {
    let (mut idle, _keep) = pair();
    assert!(idle.is_open());

    let (mut chatty, mut peer) = pair();
    peer.write_all(b"unasked").expect("write");
    std::thread::sleep(Duration::from_millis(50));
    assert!(!chatty.is_open());

    let (mut closed, peer) = pair();
    drop(peer);
    std::thread::sleep(Duration::from_millis(50));
    assert!(!closed.is_open());
}

#[test]
fn https_runs_over_it_unchanged() {
    use std::sync::Arc;
    use ureq::tls::{Certificate, RootCerts, TlsConfig};

    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) =
        crate::tls::write_self_signed(dir.path(), &["localhost".into()]).expect("cert");
    let store = Arc::new(crate::tls::CertStore::open(&cert, &key).expect("store"));
    let server = store.server_config().expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let serving = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().expect("accept");
        let conn = rustls::ServerConnection::new(server).expect("tls");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"{\"n\":1}") {
            let n = tls.read(&mut buf).expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .expect("answer");
        tls.flush().expect("flush");
        got
    });
    let pem = std::fs::read(&cert).expect("read cert");
    let root = Certificate::from_pem(&pem).expect("parse").to_owned();
    let config = ureq::Agent::config_builder()
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::Specific(Arc::new(vec![root])))
                .build(),
        )
        .timeout_global(Some(Duration::from_secs(10)))
        .build();
    let agent = ureq::Agent::with_parts(
        config,
        super::super::connector(),
        ureq::unversioned::resolver::DefaultResolver::default(),
    );
    let mut res = agent
        .post(&format!("https://localhost:{port}/hook"))
        .send(&b"{\"n\":1}"[..])
        .expect("call");
    assert_eq!(res.status(), 200);
    assert_eq!(res.body_mut().read_to_string().expect("body"), "ok");
    let got = serving.join().expect("server");
    assert!(got.starts_with(b"POST /hook HTTP/1.1\r\n"), "{got:?}");
}
