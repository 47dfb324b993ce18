//! A response body that tells a watcher how it ended. The frames stream
//! through untouched; the watcher sees each data frame as it passes, then,
//! once, whether the body was read to its end (`complete`) or failed or was
//! dropped early. The upstream pool's lease (a connection goes back only
//! after a whole body) and the mirror's capture tap are such watchers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// What a [`WatchedBody`] tells as it streams.
pub trait BodyWatcher {
    /// A data frame on its way through.
    fn data(&mut self, _data: &Bytes) {}
    /// The body is over: `complete` when its end was read (or it was
    /// dropped at its end), false when it failed or was dropped early.
    fn ended(self, complete: bool);
}

impl<W: BodyWatcher> BodyWatcher for Box<W> {
    fn data(&mut self, data: &Bytes) {
        (**self).data(data);
    }
    fn ended(self, complete: bool) {
        (*self).ended(complete);
    }
}

/// `inner`, streamed as it is, with an optional watcher (see the module doc).
pub struct WatchedBody<B: Body, W: BodyWatcher> {
    inner: B,
    watcher: Option<W>,
}

impl<B: Body, W: BodyWatcher> WatchedBody<B, W> {
    pub fn new(inner: B, watcher: Option<W>) -> Self {
        WatchedBody { inner, watcher }
    }
}

impl<B, W> Body for WatchedBody<B, W>
where
    B: Body<Data = Bytes> + Unpin,
    W: BodyWatcher + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(w), Some(d)) = (this.watcher.as_mut(), frame.data_ref()) {
                    w.data(d);
                }
            }
            Poll::Ready(None) => {
                if let Some(w) = this.watcher.take() {
                    w.ended(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(w) = this.watcher.take() {
                    w.ended(false);
                }
            }
            Poll::Pending => {}
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

impl<B: Body, W: BodyWatcher> Drop for WatchedBody<B, W> {
    fn drop(&mut self) {
        // A body read to its length (or empty) may be dropped without its
        // end being polled: that is a complete body too.
        if let Some(w) = self.watcher.take() {
            w.ended(self.inner.is_end_stream());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::sync::{Arc, Mutex};

    /// Records what it was told.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<(Vec<u8>, Vec<bool>)>>);

    impl BodyWatcher for Seen {
        fn data(&mut self, data: &Bytes) {
            self.0.lock().unwrap().0.extend_from_slice(data);
        }
        fn ended(self, complete: bool) {
            self.0.lock().unwrap().1.push(complete);
        }
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_is_complete_once() {
        let seen = Seen::default();
        let body = WatchedBody::new(Full::new(Bytes::from_static(b"hello")), Some(seen.clone()));
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"hello");
        assert_eq!(*seen.0.lock().unwrap(), (b"hello".to_vec(), vec![true]));
    }

    #[tokio::test]
    async fn a_failed_body_is_not_complete() {
        let seen = Seen::default();
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"part"))),
            Err(std::io::Error::other("cut")),
        ];
        let body = WatchedBody::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            Some(seen.clone()),
        );
        assert!(body.collect().await.is_err());
        assert_eq!(*seen.0.lock().unwrap(), (b"part".to_vec(), vec![false]));
    }

    #[test]
    fn dropped_early_is_not_complete_and_dropped_at_the_end_is() {
        let seen = Seen::default();
        drop(WatchedBody::new(
            Full::new(Bytes::from_static(b"x")),
            Some(seen.clone()),
        ));
        drop(WatchedBody::new(
            Full::new(Bytes::new()),
            Some(seen.clone()),
        ));
        assert_eq!(seen.0.lock().unwrap().1, vec![false, true]);
    }
}
