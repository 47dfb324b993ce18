//! One exchange's record-keeping: the `Event` being filled in as the request
//! moves along the data path, and `RecordedBody`, the response body wrapper
//! that makes the durability guarantee hold: with strict durability the
//! partner never receives the end of a response (the last body frame, or
//! the end of stream) before its record is flushed. A response the partner
//! abandons is still recorded (on drop), as `incomplete`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::gateway::mirror::LiveBody;

use crate::config::Risk;
use crate::event::{Event, ExpectedRecord, RecordAck, RecordError};
use crate::gateway::relay::BoxError;
use crate::guard::EventSink;
use crate::reason::Reason;

/// Something held for the exchange's lifetime and released when its record
/// is handed over (a limits admission, the connection's in-flight count).
pub type Hold = Box<dyn std::any::Any + Send + Sync>;

/// An exchange whose record is still to be written.
pub struct PendingRecord {
    pub event: Event,
    pub started: Instant,
    events: Arc<EventSink>,
    /// The granted route's risk (for the metrics), once a route is granted.
    pub risk: Option<Risk>,
    /// The announcement of this record to the journal, released on submit.
    expected: Option<Arc<ExpectedRecord>>,
    holds: Vec<Hold>,
}

impl PendingRecord {
    pub fn new(
        event: Event,
        started: Instant,
        events: Arc<EventSink>,
        expected: Option<Arc<ExpectedRecord>>,
    ) -> PendingRecord {
        PendingRecord {
            event,
            started,
            events,
            risk: None,
            expected,
            holds: Vec::new(),
        }
    }

    /// Keeps `hold` until the record is handed over.
    pub fn hold(&mut self, hold: Hold) {
        self.holds.push(hold);
    }

    /// Finalizes the event (duration), releases what the exchange held and
    /// hands the record to the event sink.
    pub fn submit(mut self) -> RecordAck {
        self.event.duration_us = self.started.elapsed().as_micros() as u64;
        self.holds.clear();
        let ack = self.events.record(self.event, self.risk);
        if let Some(x) = &self.expected {
            x.release();
        }
        ack
    }
}

enum State {
    Streaming,
    /// Waiting for the record's flush before releasing the held last frame.
    Flushing(RecordAck, Option<Frame<Bytes>>),
    Done,
}

/// The relayed response body, recorded before its end reaches the partner.
pub struct RecordedBody {
    inner: LiveBody,
    state: State,
    /// Bytes still expected per Content-Length, when known.
    remaining: Option<u64>,
    pending: Option<PendingRecord>,
}

impl RecordedBody {
    pub fn new(inner: LiveBody, content_length: Option<u64>, pending: PendingRecord) -> Self {
        RecordedBody {
            inner,
            state: State::Streaming,
            remaining: content_length,
            pending: Some(pending),
        }
    }

    fn start_flush(&mut self, held: Option<Frame<Bytes>>) {
        match self.pending.take() {
            Some(p) => self.state = State::Flushing(p.submit(), held),
            None => self.state = State::Flushing(Box::pin(async { Ok(()) }), held),
        }
    }
}

impl Body for RecordedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Streaming => {
                    match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                        Some(Ok(frame)) => {
                            if let Some(data) = frame.data_ref() {
                                let n = data.len() as u64;
                                if let Some(p) = this.pending.as_mut() {
                                    p.event.response_bytes += n;
                                }
                                if let Some(r) = this.remaining.as_mut() {
                                    *r = r.saturating_sub(n);
                                    if *r == 0 {
                                        // The last bytes: hold them until recorded.
                                        this.start_flush(Some(frame));
                                        continue;
                                    }
                                }
                                return Poll::Ready(Some(Ok(frame)));
                            }
                            // Trailers end the stream.
                            this.start_flush(Some(frame));
                        }
                        Some(Err(e)) => {
                            if let Some(mut p) = this.pending.take() {
                                p.event.reason = Some(Reason::UpstreamBodyError.code().into());
                                drop(p.submit());
                            }
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(Box::new(e))));
                        }
                        None => this.start_flush(None),
                    }
                }
                State::Flushing(ack, held) => {
                    let res = ready!(ack.as_mut().poll(cx));
                    let held = held.take();
                    this.state = State::Done;
                    return match res {
                        Ok(()) => Poll::Ready(held.map(Ok)),
                        Err(RecordError(e)) => Poll::Ready(Some(Err(format!(
                            "journal unavailable, response withheld: {e}"
                        )
                        .into()))),
                    };
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RecordedBody {
    fn drop(&mut self) {
        if let Some(mut p) = self.pending.take() {
            p.event.reason = Some(Reason::Incomplete.code().into());
            drop(p.submit());
        }
    }
}
