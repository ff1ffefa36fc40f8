//! Request and response bodies as the proxy relays them: counted, and for
//! requests without trailers.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::Counters;

/// Streams `inner` and adds its data bytes to one of the connection's
/// counters; moving data is progress for the idle timeout. Size hint and end of stream pass through, so framing
/// (`content-length` or chunked) is chosen exactly as for `inner`.
pub(super) struct Counted<B> {
    inner: B,
    counters: Arc<Counters>,
    counter: fn(&Counters) -> &AtomicU64,
}

impl<B> Counted<B> {
    pub(super) fn new(
        inner: B,
        counters: Arc<Counters>,
        counter: fn(&Counters) -> &AtomicU64,
    ) -> Self {
        Self {
            inner,
            counters,
            counter,
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                // Empty DATA frames move nothing.
                if !data.is_empty() {
                    self.counters.activity.touch();
                }
                let counter = (self.counter)(&self.counters);
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
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

/// Passes `inner`'s data frames and drops its trailers. Request trailers
/// arrive after the request was judged, so no header policy ever sees
/// them: forwarding them would hand the pod headers nobody authorised
/// (`x-debug: 1` as a trailer past a DENY on `x-debug`). Trailers are the
/// last frame, so the body simply ends there.
pub(super) struct NoTrailers<B>(pub(super) B);

impl<B> Body for NoTrailers<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        loop {
            match Pin::new(&mut self.0).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => continue,
                polled => return polled,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}
