//! The partner leg's write timeout for streamed responses: a relayed body
//! the partner stops reading is abandoned after `[server] write_timeout`
//! without progress, which drops the upstream body (the upstream connection
//! is closed and released, never pinned) and records the exchange as
//! `incomplete`. Works for HTTP/1.1 (a full socket buffer) and HTTP/2 (a
//! flow-control window the partner never reopens) alike, because it times
//! what the partner does — ask for the next frame — not socket writes.
//!
//! Waiting on a slow *upstream* is not counted: the clock runs only between
//! a frame handed to the partner's connection and its next request for one.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::gateway::relay::BoxError;

struct Slot<B> {
    body: Mutex<Option<B>>,
    start: Instant,
    /// Milliseconds after `start` (+1) when the last frame was handed over
    /// and the partner's next poll has not come yet; 0 while not waiting on
    /// the partner.
    waiting_since: AtomicU64,
}

impl<B> Slot<B> {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }
}

/// A response body abandoned when the partner stops reading it.
pub struct WriteGuard<B> {
    slot: Arc<Slot<B>>,
    timer: tokio::task::JoinHandle<()>,
}

impl<B> WriteGuard<B>
where
    B: Send + 'static,
{
    /// Guards `body`; call from within the runtime.
    pub fn new(body: B, timeout: Duration, request_id: String) -> Self {
        let slot = Arc::new(Slot {
            body: Mutex::new(Some(body)),
            start: Instant::now(),
            // The head is on its way: the partner's first read is awaited.
            waiting_since: AtomicU64::new(1),
        });
        let watched = slot.clone();
        let timer = tokio::spawn(async move {
            let timeout_ms = timeout.as_millis() as u64;
            let mut next = timeout;
            loop {
                tokio::time::sleep(next).await;
                let since = watched.waiting_since.load(Ordering::Acquire);
                let now = watched.now_ms();
                if since == 0 {
                    next = timeout;
                    continue;
                }
                let waited = now.saturating_sub(since);
                if waited >= timeout_ms {
                    let body = watched
                        .body
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take();
                    tracing::info!(
                        request_id = %request_id,
                        "the partner stopped reading the response for {timeout:?}: abandoned, upstream connection released"
                    );
                    drop(body);
                    return;
                }
                next = Duration::from_millis(timeout_ms - waited);
            }
        });
        WriteGuard { slot, timer }
    }
}

impl<B> Body for WriteGuard<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let slot = &this.slot;
        let mut guard = slot.body.lock().unwrap_or_else(|p| p.into_inner());
        let Some(body) = guard.as_mut() else {
            return Poll::Ready(Some(Err(
                "the partner stopped reading: response abandoned after write_timeout".into(),
            )));
        };
        let polled = Pin::new(body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => slot.waiting_since.store(slot.now_ms(), Ordering::Release),
            Poll::Pending => slot.waiting_since.store(0, Ordering::Release),
            Poll::Ready(_) => {
                slot.waiting_since.store(0, Ordering::Release);
                this.timer.abort();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.slot
            .body
            .lock()
            .map(|b| b.as_ref().is_some_and(|b| b.is_end_stream()))
            .unwrap_or(false)
    }

    fn size_hint(&self) -> SizeHint {
        self.slot
            .body
            .lock()
            .ok()
            .and_then(|b| b.as_ref().map(|b| b.size_hint()))
            .unwrap_or_default()
    }
}

impl<B> Drop for WriteGuard<B> {
    fn drop(&mut self) {
        self.timer.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A body of `n` one-byte frames that notes when it is dropped.
    struct Frames {
        left: usize,
        dropped: Arc<AtomicBool>,
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            self.left -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }

    impl Drop for Frames {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    type Polled<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

    fn poll_once<B: Body + Unpin>(b: &mut B) -> Polled<B> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        Pin::new(b).poll_frame(&mut cx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_nobody_reads_is_dropped_after_the_timeout() {
        let dropped = Arc::new(AtomicBool::new(false));
        let mut g = WriteGuard::new(
            Frames {
                left: 10,
                dropped: dropped.clone(),
            },
            Duration::from_secs(5),
            "r".into(),
        );
        assert!(matches!(poll_once(&mut g), Poll::Ready(Some(Ok(_)))));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!dropped.load(Ordering::SeqCst), "dropped too early");
        // A read in time restarts the clock.
        assert!(matches!(poll_once(&mut g), Poll::Ready(Some(Ok(_)))));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!dropped.load(Ordering::SeqCst), "the clock did not restart");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            dropped.load(Ordering::SeqCst),
            "not dropped after the timeout"
        );
        assert!(matches!(poll_once(&mut g), Poll::Ready(Some(Err(_)))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_read_to_the_end_is_never_cut() {
        let dropped = Arc::new(AtomicBool::new(false));
        let mut g = WriteGuard::new(
            Frames {
                left: 2,
                dropped: dropped.clone(),
            },
            Duration::from_secs(1),
            "r".into(),
        );
        for _ in 0..2 {
            assert!(matches!(poll_once(&mut g), Poll::Ready(Some(Ok(_)))));
        }
        assert!(matches!(poll_once(&mut g), Poll::Ready(None)));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!dropped.load(Ordering::SeqCst));
        drop(g);
        assert!(dropped.load(Ordering::SeqCst));
    }
}
