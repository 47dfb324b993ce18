//! The live response body as the partner receives it, with, for a
//! mirrored and compared request, a tap that keeps a copy of its first
//! `CAPTURE_MAX` bytes for the comparison. The body streams to the partner
//! exactly as without the tap (nothing waits for the mirror); the copy is
//! handed over when the body ends, or given up when it fails or is dropped
//! early.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use tokio::sync::oneshot;

use crate::upstream::UpstreamBody;
use crate::watched_body::{BodyWatcher, WatchedBody};

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
    tx: oneshot::Sender<Captured>,
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
            tx,
            status,
            headers,
            buf: BytesMut::new(),
            over: !keep_body,
        }
    }
}

impl BodyWatcher for Tap {
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

    /// Hands the capture over when the body is whole; a failed or
    /// abandoned body is no answer to compare, and the capture goes.
    fn ended(self, complete: bool) {
        if complete {
            let _ = self.tx.send(Captured {
                status: self.status,
                headers: self.headers,
                body: self.buf.freeze(),
                body_whole: !self.over,
            });
        }
    }
}

/// The upstream's response body on its way to the partner (see the module
/// doc). The tap is boxed: most responses have none, and they pass by value.
pub type LiveBody = WatchedBody<UpstreamBody, Box<Tap>>;

impl WatchedBody<UpstreamBody, Box<Tap>> {
    /// The body without a tap.
    pub fn plain(inner: UpstreamBody) -> LiveBody {
        WatchedBody::new(inner, None)
    }

    /// The body with `tap` keeping a copy.
    pub fn tapped(inner: UpstreamBody, tap: Tap) -> LiveBody {
        WatchedBody::new(inner, Some(Box::new(tap)))
    }
}
