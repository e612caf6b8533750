//! An HTTP stream: one HTTP/1.1 request from the relay, forwarded to the service's backend over
//! a pooled keep-alive connection, and its response (and upgraded connection, if any) back.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use quinn::{RecvStream, SendStream};
use sat_transport::http::{gather_small, splice_upgraded, text, Body};
use sat_transport::io::QuicIo;
use tracing::{debug, info};

use crate::config::BackendSection;
use crate::server::{accept, Shared};
use crate::services::Service;

/// Keep-alive connections to HTTP backends, keyed by backend address.
#[derive(Clone)]
pub(crate) struct Pool {
    client: Client<HttpConnector, Incoming>,
    response_timeout: Duration,
    connect_timeout: Duration,
}

impl Pool {
    pub fn new(config: &BackendSection) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            client,
            response_timeout: config.response_timeout,
            connect_timeout: config.connect_timeout,
        }
    }
}

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
    let method = req.method().clone();
    let pool = &shared.http;
    let result = tokio::time::timeout(pool.response_timeout, pool.client.request(req)).await;
    let mut resp = match result {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return Ok(backend_error(&service, &e, pool.connect_timeout)),
        Err(_) => {
            info!(backend = %service.backend, "backend did not answer in time");
            let msg = format!(
                "backend of service \"{}\" did not answer within {:?}",
                service.name, pool.response_timeout
            );
            return Ok(text(StatusCode::GATEWAY_TIMEOUT, msg));
        }
    };
    debug!(%method, status = resp.status().as_u16(), "forwarded");
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(user_upgrade) = user_upgrade {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            shared
                .streams
                .spawn(splice_upgraded(user_upgrade, backend_upgrade));
        }
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(resp.map(BodyExt::boxed));
    }
    Ok(gather_small(resp).await.unwrap_or_else(|e| {
        info!(backend = %service.backend, "backend response body failed: {e}");
        text(
            StatusCode::BAD_GATEWAY,
            format!(
                "backend of service \"{}\" failed mid-response",
                service.name
            ),
        )
    }))
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
