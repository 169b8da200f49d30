//! Body wrappers that count relayed bytes and finish an exchange when the body ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio_util::sync::CancellationToken;

use super::Exchange;
use super::forward::chain;
use crate::telemetry::{Ending, Telemetry};

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
/// (fully sent, failed, or the client went away) writes the exchange's
/// audit record with how it ended.
pub(crate) struct Finishing<B> {
    inner: Counting<B>,
    ingress: Arc<AtomicU64>,
    egress: Arc<AtomicU64>,
    exchange: Option<(Exchange, Telemetry)>,
    /// The drain's abort: a body dropped unfinished after it was cut by the drain.
    abort: CancellationToken,
    /// How the body ended, once it did: relayed whole, or the upstream failed.
    outcome: Option<(Ending, Option<String>)>,
    /// `is_end_stream` said the last frame was read: hyper may stop polling
    /// there, so that is a whole body too.
    at_end: std::cell::Cell<bool>,
}

impl<B> Finishing<B> {
    pub(crate) fn new(
        inner: B,
        egress: Arc<AtomicU64>,
        exchange: Exchange,
        telemetry: Telemetry,
        abort: CancellationToken,
    ) -> Self {
        let ingress = Arc::new(AtomicU64::new(0));
        Finishing {
            inner: Counting::new(inner, ingress.clone()),
            ingress,
            egress,
            exchange: Some((exchange, telemetry)),
            abort,
            outcome: None,
            at_end: std::cell::Cell::new(false),
        }
    }
}

impl<B> Body for Finishing<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.outcome = Some((Ending::UpstreamClosed, None)),
            Poll::Ready(Some(Err(e))) if self.outcome.is_none() => {
                let error = format!("upstream failed mid-response: {}", chain(e));
                self.outcome = Some((Ending::Error, Some(error)));
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.at_end.set(true);
        }
        end
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
            let (end, error) = match self.outcome.take() {
                Some(outcome) => outcome,
                None if self.at_end.get() => (Ending::UpstreamClosed, None),
                None if self.abort.is_cancelled() => (Ending::Drain, None),
                None => (Ending::ClientClosed, None),
            };
            ex.ended(end, error);
            ex.finish(&telemetry);
        }
    }
}
