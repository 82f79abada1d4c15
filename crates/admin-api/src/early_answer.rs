//! A request answered before its body was read (401, 403, 503 from the extractors, 404,
//! 405) has the rest of its body read and dropped before the answer goes out.
//!
//! Why: over HTTP/2, hyper ends such a stream with RST_STREAM(NO_ERROR) as soon as the
//! answer is sent. RFC 9113 §8.1 allows that, but curl, still sending the body, then
//! fails with "(92) Stream error in the HTTP/2 framing layer" and the operator never sees
//! the problem+json that says why (curl/curl#22984). Reading the rest first makes the
//! exchange an ordinary one. Nothing is buffered: the bytes are dropped as they come.
//!
//! Limits: at most [`DRAIN_BYTES`] and [`DRAIN_TIME`] per request; a body that declares
//! more, or that is slower, is not waited for (the stream is reset as before). An
//! unauthenticated client gains nothing from this: the same bytes were already sent.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt as _;
use hyper::body::Frame;

use crate::extract::PEM_BODY_LIMIT;

/// Most bytes read and dropped after an early answer: the largest body any route takes.
pub(crate) const DRAIN_BYTES: usize = PEM_BODY_LIMIT;

/// Longest wait for the rest of a body after an early answer.
pub(crate) const DRAIN_TIME: Duration = Duration::from_secs(2);

/// The middleware: the handler reads the body through a shared slot; what it left is
/// drained before its answer is returned.
pub(crate) async fn drain_unread_body(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let slot = Arc::new(Mutex::new(Some(body)));
    let response = next
        .run(Request::from_parts(
            parts,
            Body::new(Shared(Arc::clone(&slot))),
        ))
        .await;
    let rest = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(rest) = rest {
        let _ = tokio::time::timeout(DRAIN_TIME, drain(rest)).await;
    }
    response
}

/// Reads and drops `body` to its end, or up to [`DRAIN_BYTES`].
async fn drain(mut body: Body) {
    if body.is_end_stream() || body.size_hint().lower() > DRAIN_BYTES as u64 {
        return;
    }
    let mut read = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            read = read.saturating_add(data.len());
            if read > DRAIN_BYTES {
                return;
            }
        }
    }
}

/// The request body as the handler sees it: read through the shared slot, so that what
/// the handler did not read is still there when it returns.
struct Shared(Arc<Mutex<Option<Body>>>);

impl HttpBody for Shared {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().map(HttpBody::size_hint).unwrap_or_default()
    }
}

/// A request body for tests that says whether it was read to its end.
#[cfg(test)]
pub(crate) mod watched {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll};

    use axum::body::{Body, Bytes, HttpBody};
    use hyper::body::Frame;

    /// `text` in two chunks of unknown total length (as a streamed upload), and the flag
    /// that is set once its end was read.
    pub(crate) fn body(text: &'static str) -> (Body, Arc<AtomicBool>) {
        let ended = Arc::new(AtomicBool::new(false));
        let (a, b) = text.split_at(text.len() / 2);
        let chunks = [a, b]
            .into_iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        let body = Watched {
            chunks,
            ended: Arc::clone(&ended),
        };
        (Body::new(body), ended)
    }

    struct Watched {
        chunks: VecDeque<Bytes>,
        ended: Arc<AtomicBool>,
    }

    impl HttpBody for Watched {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            let next = self.chunks.pop_front();
            if next.is_none() {
                self.ended.store(true, Ordering::SeqCst);
            }
            Poll::Ready(next.map(|b| Ok(Frame::data(b))))
        }
    }

    /// Whether the body was read to its end.
    pub(crate) fn ended(flag: &AtomicBool) -> bool {
        flag.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{Request, StatusCode};
    use axum::routing::post;
    use tower::ServiceExt as _;

    use super::watched;

    /// A handler that answers without reading the body, as a refused credential does.
    async fn refuse() -> StatusCode {
        StatusCode::UNAUTHORIZED
    }

    async fn ended_after(router: axum::Router) -> bool {
        let (body, ended) = watched::body(r#"{"name":"x"}"#);
        let request = Request::post("/").body(body).expect("a request");
        let response = router.oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        watched::ended(&ended)
    }

    #[tokio::test]
    async fn an_early_answer_waits_for_the_rest_of_the_body() {
        let plain = axum::Router::new().route("/", post(refuse));
        // Without the middleware the body is left unread (what made curl fail over
        // HTTP/2): the check below would fail without it.
        assert!(!ended_after(plain.clone()).await);
        let drained = plain.layer(axum::middleware::from_fn(super::drain_unread_body));
        assert!(ended_after(drained).await);
    }

    /// A body that never sends anything more.
    struct Endless;

    impl axum::body::HttpBody for Endless {
        type Data = axum::body::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
            std::task::Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_body_that_never_ends_holds_the_answer_no_longer_than_the_limit() {
        let router = axum::Router::new()
            .route("/", post(refuse))
            .layer(axum::middleware::from_fn(super::drain_unread_body));
        let request = Request::post("/")
            .body(axum::body::Body::new(Endless))
            .expect("a request");
        let answer = tokio::time::timeout(super::DRAIN_TIME * 5, router.oneshot(request))
            .await
            .expect("answered after DRAIN_TIME")
            .expect("infallible");
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
}
