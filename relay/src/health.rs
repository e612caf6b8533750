//! `/healthz`, `/readyz` and `/metrics` over plain HTTP/1.1, for load balancers,
//! orchestrators and Prometheus.
//!
//! `/healthz` answers 200 while the process runs; `/readyz` answers 200 only while the relay
//! should get new users, else 503 with the reason (see [`Relay::readiness`]). These endpoints
//! say nothing about services and take no token; bind them where only the operator's probes
//! reach.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sat_proto::clock;
use sat_transport::http::{text, Body};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::relay::Relay;

/// A probe sends a few bytes at once; anything slower is not a probe. Also bounds how long an
/// idle keep-alive connection stays open.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may take to finish its answer once `stop` is cancelled.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves probes until `stop`, then closes every connection and returns.
pub(crate) async fn serve(listener: TcpListener, relay: Arc<Relay>, stop: CancellationToken) {
    let conns = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    debug!("accept on health port failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let (relay, stop) = (relay.clone(), stop.clone());
        conns.spawn(async move {
            let service = service_fn(move |req| {
                let resp = answer(&req, &relay);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        debug!(%peer, "health connection ended: {e}");
                    }
                }
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
                }
            }
        });
    }
    conns.close();
    conns.wait().await;
}

fn answer<B>(req: &Request<B>, relay: &Relay) -> Response<Body> {
    let path = req.uri().path();
    if !["/healthz", "/readyz", "/metrics"].contains(&path) {
        return text(
            StatusCode::NOT_FOUND,
            format!("no such path {path}; try /healthz, /readyz or /metrics"),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} answers GET only"),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    if path == "/healthz" {
        return text(StatusCode::OK, "ok".into());
    }
    if path == "/metrics" {
        return metrics(relay);
    }
    match relay.readiness() {
        Ok(()) => text(StatusCode::OK, "ready".into()),
        Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

/// `/metrics`: the gauges that mirror state brought up to date, then every family.
fn metrics(relay: &Relay) -> Response<Body> {
    let m = &relay.metrics;
    relay.uplinks.fold_quic(&m.quic);
    let generation = relay.routes().map_or(0, |r| r.generation);
    m.refresh(&relay.uplinks.rtts(), generation, clock::unix_seconds());
    sat_transport::metrics::render(&m.registry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn get(relay: &Relay, method: Method, path: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        let resp = answer(&req, relay);
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn paths_and_answers() {
        let relay = Relay::new("r1".into(), "eu".into(), "control".into(), 1);
        assert_eq!(
            get(&relay, Method::GET, "/healthz").await,
            (StatusCode::OK, "ok\n".into())
        );
        // No config and no uplink yet.
        let (status, body) = get(&relay, Method::GET, "/readyz?verbose=1").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("no config"), "{body}");
        relay.draining.cancel();
        let (status, body) = get(&relay, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("draining"), "{body}");
        // Draining does not make the process unhealthy.
        assert_eq!(get(&relay, Method::GET, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(&relay, Method::GET, "/").await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            get(&relay, Method::POST, "/healthz").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn serves_over_tcp_and_stops() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let relay = Arc::new(Relay::new("r1".into(), "eu".into(), "control".into(), 1));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, relay, stop.clone()));

        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        tcp.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.ends_with("\r\n\r\nok\n"), "{resp}");

        // An idle keep-alive connection does not hold the shutdown up.
        let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("health server stopped")
            .unwrap();
    }
}
