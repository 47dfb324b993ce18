//! The live response body as the partner receives it, with, for a
//! mirrored and compared request, a tap that keeps a copy of its first
//! `CAPTURE_MAX` bytes for the comparison. The body streams to the partner
//! exactly as without the tap (nothing waits for the mirror); the copy is
//! handed over when the body ends, or given up when it fails or is dropped
//! early.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::upstream::UpstreamBody;

/// Bytes of a body kept for the comparison (live and candidate alike);
/// past it the bodies are not compared (status and headers still are).
pub const CAPTURE_MAX: usize = 256 * 1024;

/// The live answer, as the comparison receives it.
#[derive(Debug)]
pub struct Captured {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// False when the body was longer than `CAPTURE_MAX`.
    pub body_whole: bool,
}

/// Where the live answer goes when its body has ended.
pub struct Tap {
    tx: Option<oneshot::Sender<Captured>>,
    status: u16,
    headers: HeaderMap,
    buf: BytesMut,
    over: bool,
}

impl Tap {
    /// A tap for a response with `status` and `headers`, handing the
    /// capture to `tx`; without `keep_body` only the head is kept.
    pub fn new(
        status: u16,
        headers: HeaderMap,
        tx: oneshot::Sender<Captured>,
        keep_body: bool,
    ) -> Tap {
        Tap {
            tx: Some(tx),
            status,
            headers,
            buf: BytesMut::new(),
            over: !keep_body,
        }
    }

    fn data(&mut self, data: &Bytes) {
        if self.over {
            return;
        }
        if self.buf.len() + data.len() > CAPTURE_MAX {
            self.over = true;
            self.buf = BytesMut::new();
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    fn done(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Captured {
                status: self.status,
                headers: std::mem::take(&mut self.headers),
                body: std::mem::take(&mut self.buf).freeze(),
                body_whole: !self.over,
            });
        }
    }
}

/// The upstream's response body on its way to the partner (see the module doc).
pub struct LiveBody {
    inner: UpstreamBody,
    /// Boxed: most responses have none, and they pass by value.
    tap: Option<Box<Tap>>,
}

impl LiveBody {
    /// The body without a tap.
    pub fn plain(inner: UpstreamBody) -> LiveBody {
        LiveBody { inner, tap: None }
    }

    /// The body with `tap` keeping a copy.
    pub fn tapped(inner: UpstreamBody, tap: Tap) -> LiveBody {
        LiveBody {
            inner,
            tap: Some(Box::new(tap)),
        }
    }
}

impl Body for LiveBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(tap) = self.tap.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        tap.data(d);
                    }
                }
                Poll::Ready(None) => tap.done(),
                // A failed body is no answer to compare: the tap goes.
                Poll::Ready(Some(Err(_))) => self.tap = None,
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LiveBody {
    fn drop(&mut self) {
        // A body read to its length (or empty) may be dropped without its
        // end being polled; one dropped early gives its capture up.
        if let Some(tap) = self.tap.as_mut()
            && self.inner.is_end_stream()
        {
            tap.done();
        }
    }
}
