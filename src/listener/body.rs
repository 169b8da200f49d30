//! Body wrappers that count relayed bytes and finish an exchange when the body ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::Exchange;
use crate::telemetry::Telemetry;

/// Counts the data bytes that pass through into `count`. A watched body
/// (a client's request body on its way upstream) also notes in `broken`
/// when it failed (framing the HTTP parser refused, such as a bad chunk size
/// or extension, or a client gone mid-body), so that the exchange is put
/// down to the client, not to the upstream.
pub(crate) struct Counting<B> {
    inner: B,
    count: Arc<AtomicU64>,
    broken: Option<Arc<AtomicBool>>,
}

impl<B> Counting<B> {
    pub(crate) fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Counting {
            inner,
            count,
            broken: None,
        }
    }

    pub(crate) fn watched(inner: B, count: Arc<AtomicU64>, broken: Arc<AtomicBool>) -> Self {
        Counting {
            inner,
            count,
            broken: Some(broken),
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counting<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(broken) = &self.broken {
                    broken.store(true, Ordering::Relaxed);
                }
            }
            _ => {}
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

/// A relayed response body: counts ingress bytes, and when it is dropped
/// (fully sent, or the client went away) writes the exchange's audit record.
pub(crate) struct Finishing<B> {
    inner: Counting<B>,
    ingress: Arc<AtomicU64>,
    egress: Arc<AtomicU64>,
    exchange: Option<(Exchange, Telemetry)>,
}

impl<B> Finishing<B> {
    pub(crate) fn new(
        inner: B,
        egress: Arc<AtomicU64>,
        exchange: Exchange,
        telemetry: Telemetry,
    ) -> Self {
        let ingress = Arc::new(AtomicU64::new(0));
        Finishing {
            inner: Counting::new(inner, ingress.clone()),
            ingress,
            egress,
            exchange: Some((exchange, telemetry)),
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Finishing<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Finishing<B> {
    fn drop(&mut self) {
        if let Some((mut ex, telemetry)) = self.exchange.take() {
            ex.relayed(
                self.egress.load(Ordering::Relaxed),
                self.ingress.load(Ordering::Relaxed),
            );
            ex.finish(&telemetry);
        }
    }
}
