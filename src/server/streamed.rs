//! Response bodies made while they are sent (a backup, an export): the handler answers
//! with [`response`], whose chunks come from a channel a blocking thread fills, and the
//! service wrapper swaps that in as the body. warp 0.4 has no public way to build a
//! streaming body, so the swap happens here, next to hyper.
//!
//! While such a body is being sent its request counts as in flight, so the connection's
//! idle timeout and eviction leave it alone; a client that stops reading is still cut off
//! by the write-stall limit, and the producer then finds the channel closed.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Either;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;
use warp::reply::Response;

/// A chunk of a streamed body, or the error that ends it (the client then sees the
/// connection close before the body's end, never a short body that looks whole).
pub type Chunk = Result<Bytes, std::io::Error>;

/// The channel a streamed body is read from, carried in the response's extensions (which
/// must be `Clone`; the one receiver is taken out once).
#[derive(Clone)]
struct Pending(Arc<Mutex<Option<mpsc::Receiver<Chunk>>>>);

/// A `200` response of `content_type` whose body is what `rx` yields, in order, until it
/// is closed. Its length is not known ahead, so HTTP/1.1 sends it chunked.
pub fn response(content_type: &'static str, rx: mpsc::Receiver<Chunk>) -> Response {
    let mut res = Response::new(Bytes::new().into());
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    res.extensions_mut()
        .insert(Pending(Arc::new(Mutex::new(Some(rx)))));
    res
}

/// A body read from a channel, holding `guard` (the request's in-flight mark) until it ends.
pub struct Streamed {
    rx: mpsc::Receiver<Chunk>,
    _guard: Box<dyn Send + Sync>,
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| c.map(Frame::data)))
    }
}

/// The response with its streamed body swapped in, if it has one; `guard` is kept until
/// that body ends, or dropped now.
pub(super) fn attach<R>(
    mut res: http::Response<R>,
    guard: Box<dyn Send + Sync>,
) -> http::Response<Either<R, Streamed>> {
    let rx = res
        .extensions_mut()
        .remove::<Pending>()
        .and_then(|p| p.0.lock().ok().and_then(|mut rx| rx.take()));
    match rx {
        Some(rx) => res.map(|_| Either::Right(Streamed { rx, _guard: guard })),
        None => res.map(Either::Left),
    }
}
