//! `max_in_flight` and its queue: at most that many requests from this
//! node reach the upstream at once (a permit is held until the response
//! body ends); the next ones wait in a bounded FIFO line for at most the
//! queue's timeout. Full or timed out: 503 `upstream_saturated` with
//! `Retry-After`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::UpstreamError;
use crate::config::QueueSettings;

/// The cap and queue of one upstream.
#[derive(Debug)]
pub struct Admission {
    /// `None`: no cap.
    permits: Option<Arc<Semaphore>>,
    max_in_flight: u32,
    waiting: AtomicU32,
    queue: QueueSettings,
}

/// Counts one waiter while it waits (also when its request is abandoned).
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    pub fn new(max_in_flight: Option<u32>, queue: &QueueSettings) -> Admission {
        Admission {
            permits: max_in_flight.map(|n| Arc::new(Semaphore::new(n as usize))),
            max_in_flight: max_in_flight.unwrap_or(0),
            waiting: AtomicU32::new(0),
            queue: queue.clone(),
        }
    }

    /// Whether this admission enforces the same cap and queue.
    pub fn same_as(&self, max_in_flight: Option<u32>, queue: &QueueSettings) -> bool {
        self.permits.is_some() == max_in_flight.is_some()
            && self.max_in_flight == max_in_flight.unwrap_or(0)
            && &self.queue == queue
    }

    /// Requests waiting now.
    pub fn queue_depth(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Requests holding a permit now (0 without a cap).
    #[cfg(test)]
    pub fn in_flight(&self) -> u32 {
        match &self.permits {
            Some(s) => self.max_in_flight - s.available_permits() as u32,
            None => 0,
        }
    }

    fn retry_after(&self) -> u64 {
        self.queue.timeout.as_secs().max(1)
    }

    /// A permit to send, at once or after waiting in line.
    pub async fn admit(&self) -> Result<Option<OwnedSemaphorePermit>, UpstreamError> {
        let Some(permits) = &self.permits else {
            return Ok(None);
        };
        if let Ok(p) = permits.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue.size {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(UpstreamError::Saturated {
                detail: format!(
                    "{} requests in flight and {} waiting (queue full)",
                    self.max_in_flight, self.queue.size
                ),
                retry_after_secs: self.retry_after(),
            });
        }
        let _waiting = Waiting(&self.waiting);
        match tokio::time::timeout(self.queue.timeout, permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(UpstreamError::Saturated {
                detail: format!(
                    "waited {} in the queue for one of {} places",
                    crate::timefmt::format_duration(self.queue.timeout),
                    self.max_in_flight
                ),
                retry_after_secs: self.retry_after(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_cap_holds_and_the_queue_is_bounded() {
        let a = Arc::new(Admission::new(
            Some(2),
            &QueueSettings {
                size: 1,
                timeout: Duration::from_millis(200),
            },
        ));
        let p1 = a.admit().await.expect("first");
        let _p2 = a.admit().await.expect("second");
        assert_eq!(a.in_flight(), 2);
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.admit().await }
        });
        // Bounded wait until the waiter is in line.
        for _ in 0..100 {
            if a.queue_depth() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(a.queue_depth(), 1);
        let overflow = a.admit().await;
        assert!(matches!(overflow, Err(UpstreamError::Saturated { .. })));
        drop(p1);
        let p3 = waiter
            .await
            .expect("joins")
            .expect("admitted from the queue");
        assert!(p3.is_some());
        // Now full again with nobody leaving: the wait times out.
        let timed_out = a.admit().await;
        assert!(matches!(timed_out, Err(UpstreamError::Saturated { .. })));
        assert_eq!(a.queue_depth(), 0);
    }
}
