//! The TCP transport under every outbound call. ureq's own writes a request's head and its
//! body with two `send`s, so each push reached its receiver as two packets and woke it
//! twice, and it reset the socket's timeouts and blocking mode around every read, write
//! and liveness check. This one keeps the socket non-blocking: what a call writes is held
//! until the call waits for its answer and then leaves in one `send`, waits are `poll(2)`
//! up to the call's deadline, and the liveness check of a pooled connection is one peek.
//! TLS, when the URL asks for it, is layered on top by ureq's rustls connector as before.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, ShutdownHandle, Transport,
};
use ureq::{Error, Timeout};

/// Connects plain TCP sockets to the addresses the (policy-checked) resolver gave.
#[derive(Debug, Default)]
pub struct Direct;

impl Connector<()> for Direct {
    type Out = Socket;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<Socket>, Error> {
        let started = Instant::now();
        let budget = details.timeout.not_zero().map(|d| *d);
        let addrs: Vec<SocketAddr> = details.addrs.iter().copied().collect();
        let mut last = None;
        for (i, addr) in addrs.iter().enumerate() {
            // What is left of the budget, shared by the addresses not yet tried.
            let per_addr = match budget {
                Some(b) => {
                    let left = b.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        return Err(Error::Timeout(Timeout::Connect));
                    }
                    let share = left / (addrs.len() - i) as u32;
                    Some(share.max(Duration::from_millis(10)).min(left))
                }
                None => None,
            };
            let tried = match per_addr {
                Some(t) => TcpStream::connect_timeout(addr, t),
                None => TcpStream::connect(addr),
            };
            match tried {
                Ok(stream) => {
                    return Socket::new(stream, details).map(Some);
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    last = Some(Error::Timeout(Timeout::Connect));
                }
                Err(e) => last = Some(Error::Io(e)),
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::Io(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "no address to connect to",
            ))
        }))
    }
}

/// ureq's buffers with a count of output bytes written but not sent yet: ureq sees only
/// the room after them.
#[derive(Debug)]
struct Held {
    inner: LazyBuffers,
    held: usize,
}

impl Buffers for Held {
    fn output(&mut self) -> &mut [u8] {
        let held = self.held;
        &mut self.inner.output()[held..]
    }

    fn input(&self) -> &[u8] {
        self.inner.input()
    }

    fn input_append_buf(&mut self) -> &mut [u8] {
        self.inner.input_append_buf()
    }

    fn input_appended(&mut self, amount: usize) {
        self.inner.input_appended(amount)
    }

    fn input_consume(&mut self, amount: usize) {
        self.inner.input_consume(amount)
    }

    fn tmp_and_output(&mut self) -> (&mut [u8], &mut [u8]) {
        let held = self.held;
        let (tmp, output) = self.inner.tmp_and_output();
        (tmp, &mut output[held..])
    }

    fn can_use_input(&self) -> bool {
        self.inner.can_use_input()
    }
}

/// One non-blocking connection (see the module's comment).
pub struct Socket {
    stream: Arc<TcpStream>,
    buffers: Held,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("peer", &self.stream.peer_addr().ok())
            .field("held", &self.buffers.held)
            .finish()
    }
}

impl Socket {
    fn new(stream: TcpStream, details: &ConnectionDetails) -> Result<Socket, Error> {
        let config = details.config;
        let socket = Socket::over(
            stream,
            config.input_buffer_size(),
            config.output_buffer_size(),
        )?;
        if config.no_delay() {
            socket.stream.set_nodelay(true)?;
        }
        let handle: Weak<dyn ShutdownHandle> = Arc::downgrade(&socket.stream) as _;
        (details.register_shutdown)(handle)?;
        Ok(socket)
    }

    fn over(stream: TcpStream, input: usize, output: usize) -> io::Result<Socket> {
        stream.set_nonblocking(true)?;
        Ok(Socket {
            stream: Arc::new(stream),
            buffers: Held {
                inner: LazyBuffers::new(input, output),
                held: 0,
            },
        })
    }

    /// Sends every held byte, waiting for room up to `timeout`.
    fn send_held(&mut self, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = timeout.for_write();
        let started = Instant::now();
        let held = self.buffers.held;
        let mut sent = 0;
        while sent < held {
            let out = &self.buffers.inner.output()[sent..held];
            match (&*self.stream).write(out) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(&self.stream, libc::POLLOUT, timeout, started)?
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.buffers.held = 0;
        Ok(())
    }
}

/// Waits until the socket is ready for `events`, or fails with the timeout's reason once
/// what is left of it since `started` has run out.
fn wait(
    stream: &TcpStream,
    events: libc::c_short,
    timeout: NextTimeout,
    started: Instant,
) -> Result<(), Error> {
    loop {
        let ms = match timeout.not_zero() {
            None => -1,
            Some(limit) => {
                let left = limit.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(Error::Timeout(timeout.reason));
                }
                // Rounded up: a wait never ends before its deadline.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            }
        };
        let mut fd = libc::pollfd {
            fd: stream.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: `fd` is one valid `pollfd` that lives across the call, and the count is 1.
        let rc = unsafe { libc::poll(&mut fd, 1, ms) };
        if rc > 0 {
            // Ready, or an error or hang-up the next read or write reports.
            return Ok(());
        }
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
        // Timed out or interrupted: the loop checks what is left.
    }
}

impl Transport for Socket {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = timeout.for_write();
        if timeout.after.is_zero() {
            return Err(Error::Timeout(timeout.reason));
        }
        self.buffers.held += amount;
        // Held until the call waits for its answer, unless the room left gets small.
        let size = self.buffers.inner.output().len();
        if size - self.buffers.held <= size / 4 {
            self.send_held(timeout)?;
        }
        Ok(())
    }

    fn maybe_await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.send_held(timeout)?;
        if self.buffers.can_use_input() {
            return Ok(true);
        }
        self.await_input(timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.send_held(timeout)?;
        let timeout = timeout.for_read();
        if timeout.after.is_zero() {
            return Err(Error::Timeout(timeout.reason));
        }
        let started = Instant::now();
        loop {
            // Waiting first: a request just sent has no answer yet, so a read would only
            // find the socket empty.
            wait(&self.stream, libc::POLLIN, timeout, started)?;
            let buf = self.buffers.inner.input_append_buf();
            match (&*self.stream).read(buf) {
                Ok(n) => {
                    self.buffers.inner.input_appended(n);
                    return Ok(n > 0);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn is_open(&mut self) -> bool {
        if self.buffers.held > 0 {
            return false;
        }
        // Open and idle: nothing to read yet. Bytes the server sent unasked, or its close,
        // make the connection unfit for another call.
        let mut byte = [0u8; 1];
        matches!(self.stream.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

#[cfg(test)]
mod tests;
