//! HTTP from users: route by Host, one QUIC stream per request, bodies streamed both ways.
//!
//! Each request is carried to the control plane as an HTTP/1.1 exchange on its own stream;
//! the relay's side of it is a hyper client connection over that stream. The request goes out
//! at once, without waiting for the control plane to accept the stream: a refusal comes back
//! in place of the response and becomes an error status here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use sat_proto::stream::{StreamHeader, StreamKind};
use sat_transport::http::{gather_small, splice_upgraded, text, Body};
use sat_transport::io::{rejection, QuicIo};
use tracing::{debug, info};

use crate::relay::Relay;

/// What the relay knows about the connection a request came on.
#[derive(Clone, Copy)]
pub struct Origin {
    pub peer: SocketAddr,
    pub tls: bool,
}

static SAT_RELAY: HeaderName = HeaderName::from_static("sat-relay");
static SAT_REGION: HeaderName = HeaderName::from_static("sat-region");
static SAT_RELAY_NAME: HeaderName = HeaderName::from_static("sat-relay-name");
static SAT_RELAY_REGION: HeaderName = HeaderName::from_static("sat-relay-region");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

pub async fn handle(
    req: Request<Incoming>,
    relay: Arc<Relay>,
    origin: Origin,
) -> Result<Response<Body>, Infallible> {
    let mut resp = match route(req, &relay, origin).await {
        Ok(resp) => resp,
        Err((status, msg)) => text(status, msg),
    };
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&relay.name) {
        headers.insert(SAT_RELAY.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&relay.region) {
        headers.insert(SAT_REGION.clone(), v);
    }
    Ok(resp)
}

type Refusal = (StatusCode, String);

async fn route(
    mut req: Request<Incoming>,
    relay: &Arc<Relay>,
    origin: Origin,
) -> Result<Response<Body>, Refusal> {
    if req.method() == Method::CONNECT {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported: this relay forwards only to its services".into(),
        ));
    }
    let host =
        request_host(&req).ok_or((StatusCode::BAD_REQUEST, "request has no Host".to_string()))?;
    let routes = relay.routes().ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "relay has no configuration from the control plane yet; retry shortly".to_string(),
    ))?;
    let service = routes
        .by_host(&host)
        .ok_or((
            StatusCode::NOT_FOUND,
            format!("no service for host \"{host}\""),
        ))?
        .to_owned();
    let header = StreamHeader {
        kind: StreamKind::Http,
        service: service.clone(),
        user_addr: origin.peer,
        identity: String::new(),
    };
    let _guard = relay.stream_guard();
    let user_upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    prepare_request(&mut req, &host, relay, origin);
    // A request without a body can go out again if its uplink dies before the answer.
    let replayable = req.body().is_end_stream();
    let (parts, body) = req.into_parts();
    let mut body = Some(body.boxed());
    let mut tried = 0u64;
    let mut resp = loop {
        let (i, conn, send, recv) = relay
            .uplinks
            .open(&header, &Bytes::new(), &mut tried)
            .await
            .ok_or((
                StatusCode::SERVICE_UNAVAILABLE,
                "relay has no uplink to the control plane; retry shortly".to_string(),
            ))?;
        let io = TokioIo::new(QuicIo::awaiting_answer(send, recv));
        let (mut sender, conn_task) = hyper::client::conn::http1::handshake::<_, Body>(io)
            .await
            .map_err(|e| bad_gateway(&service, &e))?;
        relay.users.spawn(async move {
            if let Err(e) = conn_task.with_upgrades().await {
                debug!("uplink side of HTTP stream ended: {e}");
            }
        });
        let body = body.take().unwrap_or_else(empty);
        let sent = sender.send_request(Request::from_parts(parts.clone(), body));
        tokio::select! {
            resp = sent => break resp.map_err(|e| bad_gateway(&service, &e))?,
            () = relay.uplinks.gone_quiet(i, &conn), if replayable => {
                info!(uplink = i, "uplink {i} went silent before answering; sending the request again");
            }
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(user_upgrade) = user_upgrade {
            let uplink_upgrade = hyper::upgrade::on(&mut resp);
            relay
                .users
                .spawn(splice_upgraded(user_upgrade, uplink_upgrade));
        }
        return Ok(resp.map(BodyExt::boxed));
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    gather_small(resp)
        .await
        .map_err(|e| bad_gateway(&service, &e))
}

fn empty() -> Body {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// The host a request is for: the URI's authority (HTTP/2, absolute-form) or the Host header.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_owned());
    }
    let h = req.headers().get(header::HOST)?.to_str().ok()?;
    (!h.is_empty()).then(|| h.to_owned())
}

/// Rewrites a user's request for the hop to the control plane: origin-form target, HTTP/1.1,
/// no hop-by-hop headers, and forwarding headers set from what the relay saw (whatever the
/// user sent under those names is dropped first).
fn prepare_request<B>(req: &mut Request<B>, host: &str, relay: &Relay, origin: Origin) {
    let upgrade = is_upgrade(req.headers());
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(uri) = path.parse::<Uri>() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    strip_forwarding(headers);
    let proto = if origin.tls { "https" } else { "http" };
    let ip = origin.peer.ip().to_string();
    let for_value = match origin.peer {
        SocketAddr::V4(_) => ip.clone(),
        SocketAddr::V6(_) => format!("\"[{ip}]\""),
    };
    let forwarded = format!(
        "for={for_value};proto={proto};host=\"{}\";by=\"{}\"",
        host.replace('"', ""),
        relay.name.replace('"', "")
    );
    let mut set = |name: &HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name.clone(), v);
        }
    };
    set(&header::HOST, host);
    set(&X_FORWARDED_FOR, &ip);
    set(&X_FORWARDED_PROTO, proto);
    set(&X_FORWARDED_HOST, host);
    set(&header::FORWARDED, &forwarded);
    set(&SAT_RELAY_NAME, &relay.name);
    set(&SAT_RELAY_REGION, &relay.region);
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes headers that belong to one connection (RFC 9110 §7.6.1), keeping what an upgrade
/// needs when `keep_upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Drops every forwarding header a user could use to pose as someone else.
fn strip_forwarding(headers: &mut HeaderMap) {
    let spoofable: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k.starts_with("x-forwarded-") || k.starts_with("sat-") || k == "x-real-ip"
        })
        .cloned()
        .collect();
    for name in spoofable {
        headers.remove(name);
    }
    headers.remove(header::FORWARDED);
}

fn bad_gateway(service: &str, e: &hyper::Error) -> Refusal {
    use std::error::Error;
    if let Some(r) = rejection(e) {
        let status = StatusCode::from_u16(r.code.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
        return (status, r.message.clone());
    }
    let cause = e.source().map_or_else(|| e.to_string(), |s| s.to_string());
    debug!(service, "stream to control plane failed: {cause}");
    (
        StatusCode::BAD_GATEWAY,
        format!("service \"{service}\": the stream to the control plane failed ({cause})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn spoofed_forwarding_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("X-Forwarded-Port", HeaderValue::from_static("1"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        h.insert("sat-relay-region", HeaderValue::from_static("fake"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_forwarding(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
    }
}
