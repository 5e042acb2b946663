//! Lingering close. A socket closed while the client's bytes wait unread in its receive
//! buffer is reset by the kernel, not closed, and the reset makes the client's kernel
//! drop whatever part of the answer its program has not read yet. That happens whenever
//! a handler answers without reading the whole request body: a GET that carries a body,
//! an upload refused by its credentials, a body past its limit.
//!
//! So a closing connection first sends its FIN, then reads and discards what the client
//! still sends until the client closes too, it stays quiet for [`QUIET`], or [`MAX`] has
//! passed. It waits like that when its last request's body was not read to the end
//! ([`Tracked`] tells); otherwise (the usual case, and every idle or evicted connection)
//! it only discards what has already arrived and closes at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::Conn;

/// How long a closing connection waits for more of the client's bytes before it closes.
pub(super) const QUIET: Duration = Duration::from_millis(1000);
/// The longest a closing connection lingers, however steadily the client sends.
pub(super) const MAX: Duration = Duration::from_secs(5);

/// The state of one connection's lingering close, begun once its FIN is sent.
pub(super) struct Linger {
    /// Whether to wait for bytes that have not arrived yet.
    patient: bool,
    /// Bytes read and discarded so far.
    drained: u64,
    until: Instant,
    quiet: Pin<Box<Sleep>>,
}

impl Linger {
    pub(super) fn new(patient: bool) -> Linger {
        let now = Instant::now();
        Linger {
            patient,
            drained: 0,
            until: now + MAX,
            quiet: Box::pin(tokio::time::sleep_until(now + QUIET)),
        }
    }

    /// Reads and discards what the client sends; ready once the connection may close
    /// without a reset, or has waited long enough.
    pub(super) fn poll_drain<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let mut scratch = [0u8; 8192];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    self.drained += buf.filled().len() as u64;
                    let now = Instant::now();
                    if now >= self.until {
                        return Poll::Ready(());
                    }
                    self.quiet.as_mut().reset((now + QUIET).min(self.until));
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                // Nothing was waiting, and nothing is expected: closing resets nothing.
                Poll::Pending if !self.patient && self.drained == 0 => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        self.quiet.as_mut().poll(cx)
    }
}

/// A request body that tells its connection once it has been read to the end.
pub(super) struct Tracked<B> {
    inner: B,
    conn: Arc<Conn>,
}

impl<B> Tracked<B> {
    pub(super) fn new(inner: B, conn: Arc<Conn>) -> Tracked<B> {
        Tracked { inner, conn }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.conn.unread.store(false, Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
