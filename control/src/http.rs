//! An HTTP stream: one HTTP/1.1 request from the relay, forwarded to the service's backend over
//! a pooled keep-alive connection, and its response (and upgraded connection, if any) back.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use quinn::{RecvStream, SendStream};
use sat_transport::http::{gather_small, splice_upgraded, text, Body};
use sat_transport::io::QuicIo;
use sat_transport::metrics::StreamClass;
use tracing::{debug, info};

use crate::answer::accept;
use crate::services::Service;
use crate::state::Shared;

pub(crate) async fn serve(
    service: Arc<Service>,
    first: Bytes,
    mut send: SendStream,
    recv: RecvStream,
    shared: &Arc<Shared>,
) {
    if accept(&mut send).await.is_err() {
        return;
    }
    let io = TokioIo::new(QuicIo::new(send, recv, first));
    let shared = shared.clone();
    let handler =
        hyper::service::service_fn(move |req| forward(req, service.clone(), shared.clone()));
    // One request per stream: closing our side right after the response lets the FIN ride
    // with it, instead of waiting for the relay's FIN and answering it in a packet of its own.
    // (hyper's `connection: close` is hop-by-hop; the relay drops it.)
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(false)
        .serve_connection(io, handler)
        .with_upgrades();
    if let Err(e) = conn.await {
        debug!("relay side of HTTP stream ended: {e}");
    }
}

async fn forward(
    mut req: Request<Incoming>,
    service: Arc<Service>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, Infallible> {
    let user_upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    // The request goes to the configured backend, whatever the request line named.
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri = match Uri::builder()
        .scheme("http")
        .authority(service.backend.as_str())
        .path_and_query(path)
        .build()
    {
        Ok(uri) => uri,
        Err(e) => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                format!("bad request target: {e}"),
            ))
        }
    };
    *req.uri_mut() = uri;
    let asked = Instant::now();
    let resp = respond(&service, &shared, req, user_upgrade).await;
    shared.metrics.request_took(asked);
    shared.metrics.http_responses.count(resp.status());
    Ok(resp)
}

/// The backend's response to `req`, or ours saying why there is none.
async fn respond(
    service: &Service,
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    user_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    let pool = &shared.http;
    let method = req.method().clone();
    let result = tokio::time::timeout(pool.response_timeout, pool.client.request(req)).await;
    let mut resp = match result {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return backend_error(service, &e, pool.connect_timeout),
        Err(_) => {
            info!(backend = %service.backend, "backend did not answer in time");
            let msg = format!(
                "backend of service \"{}\" did not answer within {:?}",
                service.name, pool.response_timeout
            );
            return text(StatusCode::GATEWAY_TIMEOUT, msg);
        }
    };
    debug!(%method, status = resp.status().as_u16(), "forwarded");
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(user_upgrade) = user_upgrade {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            let open = shared.metrics.streams.open(StreamClass::Upgrade);
            shared.streams.spawn(async move {
                splice_upgraded(user_upgrade, backend_upgrade).await;
                drop(open);
            });
        }
        return resp.map(BodyExt::boxed);
    }
    gather_small(resp).await.unwrap_or_else(|e| {
        info!(backend = %service.backend, "backend response body failed: {e}");
        text(
            StatusCode::BAD_GATEWAY,
            format!(
                "backend of service \"{}\" failed mid-response",
                service.name
            ),
        )
    })
}

fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
}

fn backend_error(
    service: &Service,
    e: &hyper_util::client::legacy::Error,
    connect_timeout: Duration,
) -> Response<Body> {
    info!(backend = %service.backend, "backend request failed: {e:?}");
    let name = &service.name;
    let io_kind = io_error_kind(e);
    let (status, msg) = match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => (
            StatusCode::BAD_GATEWAY,
            format!("backend of service \"{name}\" refused the connection"),
        ),
        Some(std::io::ErrorKind::TimedOut) => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("backend of service \"{name}\" did not accept a connection within {connect_timeout:?}"),
        ),
        _ if e.is_connect() => (
            StatusCode::BAD_GATEWAY,
            format!("backend of service \"{name}\" is unreachable"),
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            format!("backend of service \"{name}\" failed mid-request"),
        ),
    };
    text(status, msg)
}

fn io_error_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = err.source();
    }
    None
}
