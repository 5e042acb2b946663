//! [`Guarded`]: the socket under each connection, which enforces the idle, header and
//! write-stall limits from the connection's state, and closes gently (see [`linger`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::{linger, Conn, Limits};

/// A socket that fails its reads when the client is idle or slow past the limits, and its
/// writes when the client stops reading. hyper then closes the connection.
pub(super) struct Guarded<S> {
    inner: S,
    conn: Arc<Conn>,
    limits: Limits,
    /// When the first byte of the next request arrived (ms since `opened`), if it has.
    header_started: Option<u64>,
    /// The connection's `epoch` when `header_started` was set: a new idle period resets it.
    header_epoch: u64,
    read_timer: Option<(Instant, Pin<Box<Sleep>>)>,
    write_timer: Option<Pin<Box<Sleep>>>,
    /// Set once the FIN is sent on close: see [`linger`].
    linger: Option<linger::Linger>,
}

impl<S> Guarded<S> {
    pub(super) fn new(inner: S, conn: Arc<Conn>, limits: Limits) -> Self {
        Guarded {
            inner,
            conn,
            limits,
            header_started: None,
            header_epoch: 0,
            read_timer: None,
            write_timer: None,
            linger: None,
        }
    }

    /// The moment an idle connection's wait ends: the idle timeout, or the header
    /// timeout once the request has begun to arrive.
    fn read_deadline(&mut self) -> Instant {
        let idle_since = self.conn.idle_since.load(Ordering::Acquire);
        if self.header_epoch != self.conn.epoch.load(Ordering::Acquire) {
            self.header_started = None;
        }
        let at = match self.header_started {
            Some(started) => Duration::from_millis(started) + self.limits.header_timeout,
            None => Duration::from_millis(idle_since) + self.limits.idle_timeout,
        };
        self.conn.opened + at
    }
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_owned())
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let idle = this.conn.idle();
        if idle && this.conn.evict.load(Ordering::Acquire) {
            return Poll::Ready(Err(timed_out("closed to make room for a new connection")));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if idle && buf.filled().len() > before {
                    let epoch = this.conn.epoch.load(Ordering::Acquire);
                    if this.header_started.is_none() || this.header_epoch != epoch {
                        this.header_started = Some(this.conn.now());
                        this.header_epoch = epoch;
                    }
                }
                this.read_timer = None;
                return Poll::Ready(result);
            }
            Poll::Pending => {}
        }
        this.conn.reader.register(cx.waker());
        if !this.conn.idle() {
            // A request is being handled: the handler's own limits apply.
            this.read_timer = None;
            return Poll::Pending;
        }
        if this.conn.evict.load(Ordering::Acquire) {
            return Poll::Ready(Err(timed_out("closed to make room for a new connection")));
        }
        let deadline = this.read_deadline();
        let timer = match &mut this.read_timer {
            Some((at, timer)) if *at == deadline => timer,
            slot => {
                let sleep = Box::pin(tokio::time::sleep_until(deadline.into()));
                &mut slot.insert((deadline, sleep)).1
            }
        };
        if timer.as_mut().poll(cx).is_ready() {
            let what = if this.header_started.is_some() {
                "request header not received in time"
            } else {
                "idle connection closed"
            };
            return Poll::Ready(Err(timed_out(what)));
        }
        Poll::Pending
    }
}

impl<S: AsyncWrite + Unpin> Guarded<S> {
    /// Runs a write-side poll, failing it once the client has not taken bytes for
    /// `body_timeout`.
    fn guard_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match poll(Pin::new(&mut self.inner), cx) {
            Poll::Ready(r) => {
                self.write_timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.limits.body_timeout;
                let timer = self
                    .write_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(timed_out("the client stopped reading")));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.guard_write(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.guard_write(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.guard_write(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.linger.is_none() {
            match this.guard_write(cx, |s, cx| s.poll_shutdown(cx)) {
                Poll::Ready(Ok(())) => {
                    let patient = this.conn.unread.load(Ordering::Acquire);
                    this.linger = Some(linger::Linger::new(patient));
                }
                other => return other,
            }
        }
        match &mut this.linger {
            Some(l) => l.poll_drain(&mut this.inner, cx).map(Ok),
            None => Poll::Ready(Ok(())),
        }
    }
}
