//! Tells the service manager how the server is doing, the way systemd's `Type=notify`
//! units expect: one datagram of `KEY=value` lines to the Unix socket named in
//! `NOTIFY_SOCKET` (a path, or an abstract name written with a leading `@`). Without that
//! variable (not under systemd, or a unit of another type) nothing is sent.

use std::os::unix::net::UnixDatagram;

/// The server is serving: its store is open, its workers run and its port is bound.
pub fn ready(status: &str) {
    send(&format!(
        "READY=1\nSTATUS={status}\nMAINPID={}\n",
        std::process::id()
    ));
}

/// The server begins shutting down.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=shutting down: finishing in-flight requests\n");
}

fn send(message: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Some(target) = target.to_str().filter(|t| !t.is_empty()) else {
        tracing::warn!(
            "NOTIFY_SOCKET is not a usable socket name; the service manager is not told"
        );
        return;
    };
    if let Err(e) = send_to(target, message) {
        tracing::warn!(error = %e, socket = target, "cannot notify the service manager");
    }
}

fn send_to(target: &str, message: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            socket.send_to_addr(message.as_bytes(), &addr)?;
        }
        None => {
            socket.send_to(message.as_bytes(), target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reaches_a_socket_named_by_path_or_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let by_path = UnixDatagram::bind(&path).unwrap();
        send_to(path.to_str().unwrap(), "READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = by_path.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("waybill-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_socket = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(&format!("@{name}"), "STOPPING=1\n").unwrap();
        let n = abstract_socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\n");

        // Nobody listening: an error to log, not a panic.
        assert!(send_to(dir.path().join("none").to_str().unwrap(), "READY=1\n").is_err());
    }
}
