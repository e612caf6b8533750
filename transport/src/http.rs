//! What both ends of an HTTP stream share: one body type, short plain-text answers, and
//! gathering small bodies so that a response leaves in one write.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};

pub type Body = BoxBody<Bytes, hyper::Error>;

/// Bodies up to this size, when their size is known, are gathered before the response goes
/// on: the head and the body then leave in one write (one syscall, one QUIC packet) instead of
/// two. Larger bodies, and those of unknown size, stream.
const GATHER_LIMIT: u64 = 16 * 1024;

/// A short plain-text answer naming the cause.
pub fn text(status: StatusCode, msg: String) -> Response<Body> {
    let body = Full::new(Bytes::from(msg + "\n"))
        .map_err(|never: Infallible| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Passes a response on, its body gathered first when small and of known size.
pub async fn gather_small(resp: Response<Incoming>) -> Result<Response<Body>, hyper::Error> {
    let small = resp
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n <= GATHER_LIMIT);
    if !small {
        return Ok(resp.map(BodyExt::boxed));
    }
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    let body = Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed();
    Ok(Response::from_parts(parts, body))
}

/// Joins two upgraded connections (a WebSocket, say) once both sides have switched protocols.
pub async fn splice_upgraded(a: hyper::upgrade::OnUpgrade, b: hyper::upgrade::OnUpgrade) {
    let (a, b) = match tokio::try_join!(a, b) {
        Ok(pair) => pair,
        Err(e) => return tracing::debug!("upgrade failed: {e}"),
    };
    let mut a = hyper_util::rt::TokioIo::new(a);
    let mut b = hyper_util::rt::TokioIo::new(b);
    match tokio::io::copy_bidirectional(&mut a, &mut b).await {
        Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
        Err(e) => tracing::debug!("upgraded connection aborted: {e}"),
    }
}
