//! HTTP from users: route by Host, one QUIC stream per request, bodies streamed both ways.
//!
//! Each request is carried to the control plane as an HTTP/1.1 exchange on its own stream;
//! the relay's side of it is a hyper client connection over that stream. The request goes out
//! at once, without waiting for the control plane to accept the stream: a refusal comes back
//! in place of the response and becomes an error status here.
//!
//! A service whose access is by token is checked here first (the token from `Authorization:
//! Bearer` or the `sat_token` cookie): a refusal is a 401 that never reaches the control plane,
//! and an accepted token is removed before the request goes on, so no backend ever sees one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use sat_proto::access::{self, AccessError};
use sat_proto::clock;
use sat_proto::stream::{RejectCode, StreamHeader, StreamKind};
use sat_transport::http::{gather_small, splice_upgraded, text, Body};
use sat_transport::io::{rejection, QuicIo};
use sat_transport::metrics::StreamClass;
use tokio::time::Instant;
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
/// The cookie a browser keeps a service access token in.
const TOKEN_COOKIE: &[u8] = b"sat_token";

pub async fn handle(
    req: Request<Incoming>,
    relay: Arc<Relay>,
    origin: Origin,
) -> Result<Response<Body>, Infallible> {
    let arrived = Instant::now();
    let mut resp = match route(req, &relay, origin).await {
        Ok(resp) => resp,
        Err((status, msg)) => text(status, msg),
    };
    relay.metrics.request_took(arrived);
    relay.metrics.http_responses.count(resp.status());
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

/// `POST /api/rtt-report`: a client's round trips to relays; see [`crate::measure`].
async fn rtt_report(
    req: Request<Incoming>,
    relay: &Arc<Relay>,
    routes: &crate::routes::Routes,
    origin: Origin,
) -> Result<Response<Body>, Refusal> {
    use crate::measure::MAX_REPORT_BYTES;
    if req.method() != Method::POST {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "send reports with POST".into(),
        ));
    }
    if req.body().size_hint().lower() > MAX_REPORT_BYTES as u64 {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a report is at most {MAX_REPORT_BYTES} bytes"),
        ));
    }
    let body = http_body_util::Limited::new(req.into_body(), MAX_REPORT_BYTES)
        .collect()
        .await
        .map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("cannot read the report: {e}"),
            )
        })?
        .to_bytes();
    let known: Vec<&str> = routes.relays().iter().map(|r| r.name.as_str()).collect();
    match relay.measurements.report(origin.peer.ip(), &body, &known) {
        Ok(n) => {
            debug!(client = %origin.peer, figures = n, "round trips reported");
            let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            Ok(resp)
        }
        Err(crate::measure::ReportError::Malformed(e)) => Err((StatusCode::BAD_REQUEST, e)),
        Err(crate::measure::ReportError::Full) => Err((
            StatusCode::TOO_MANY_REQUESTS,
            "too many reports right now; try again in a second".into(),
        )),
    }
}

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
    let Some(routes) = relay.routes() else {
        relay.metrics.refusals.count(RejectCode::NoUplink);
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "relay has no configuration from the control plane yet; retry shortly".to_string(),
        ));
    };
    let Some(service) = routes.by_host(&host).map(str::to_owned) else {
        // A Host that is no service's: the relay's own address, and its own endpoints.
        if req.uri().path() == crate::measure::REPORT_PATH {
            return rtt_report(req, relay, &routes, origin).await;
        }
        return crate::public::answer(&req, &routes).ok_or_else(|| {
            relay.metrics.refusals.count(RejectCode::UnknownService);
            (
                StatusCode::NOT_FOUND,
                format!("no service for host \"{host}\""),
            )
        });
    };
    if let Err(e) = routes.authorize(
        &service,
        access_token(req.headers()).as_deref(),
        clock::unix_seconds(),
    ) {
        relay.metrics.refusals.count(RejectCode::Unauthorized);
        debug!(service, reason = %e, "request refused: access token");
        return Ok(unauthorized(&service, &e));
    }
    let header = StreamHeader {
        kind: StreamKind::Http,
        service: service.clone(),
        user_addr: origin.peer,
        identity: String::new(),
    };
    let _guard = relay.stream_guard(StreamClass::Http);
    let user_upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    prepare_request(&mut req, &host, relay, origin);
    // A request without a body can go out again if its uplink dies before the answer; one that
    // is not idempotent (a POST, say) only if the service cannot have seen it (below).
    let bodyless = req.body().is_end_stream();
    let idempotent = req.method().is_idempotent();
    let (parts, body) = req.into_parts();
    let mut body = Some(body.boxed());
    let mut tried = 0u64;
    let mut resp = loop {
        let Some((i, conn, send, recv)) = relay.uplinks.open(&header, &[], &mut tried).await else {
            relay.metrics.refusals.count(RejectCode::NoUplink);
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "relay has no uplink to the control plane; retry shortly".to_string(),
            ));
        };
        let heard = conn.stats().udp_rx.datagrams;
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
            () = relay.uplinks.gone_quiet(i, &conn), if bodyless => {
                // Nothing came back after the request went out: the control plane had not
                // received it (it acknowledges within its ack delay), so it reached no service.
                if !idempotent && conn.stats().udp_rx.datagrams != heard {
                    relay.metrics.not_resent.inc();
                    info!(uplink = i, method = %parts.method, "uplink {i} went silent before answering, after it had the request");
                    return Err((
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "service \"{service}\": the relay lost its uplink to the control plane \
                             after sending the request; a {} may have taken effect, so it was not \
                             sent again",
                            parts.method
                        ),
                    ));
                }
                relay.metrics.resent.inc();
                info!(uplink = i, "uplink {i} went silent before answering; sending the request again");
            }
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(user_upgrade) = user_upgrade {
            let uplink_upgrade = hyper::upgrade::on(&mut resp);
            let open = relay.stream_guard(StreamClass::Upgrade);
            relay.users.spawn(async move {
                splice_upgraded(user_upgrade, uplink_upgrade).await;
                drop(open);
            });
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
    strip_access_token(headers);
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

/// The access token a request shows: an `Authorization: Bearer sat_at1.…` value, else the
/// `sat_token` cookie. A Bearer credential of another kind is the backend's business and is
/// not looked at (nor removed), so a service can keep its own bearer auth behind a token that
/// travels in the cookie.
fn access_token(headers: &HeaderMap) -> Option<String> {
    let from_header = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(bearer)
        .find(|t| t.starts_with(access::PREFIX));
    if let Some(token) = from_header {
        return Some(token.to_owned());
    }
    cookie_pairs(headers)
        .find(|c| c.name == TOKEN_COOKIE)
        .map(|c| String::from_utf8_lossy(unquote(c.value)).into_owned())
}

/// The credentials of an `Authorization` value of scheme Bearer (RFC 6750 §2.1; the scheme's
/// case does not matter).
fn bearer(value: &HeaderValue) -> Option<&str> {
    let (scheme, credentials) = value.to_str().ok()?.trim().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

fn is_access_bearer(value: &HeaderValue) -> bool {
    bearer(value).is_some_and(|t| t.starts_with(access::PREFIX))
}

/// One `name=value` pair of a Cookie header.
struct CookiePair<'a> {
    /// The whole pair as sent, to pass on unchanged.
    pair: &'a [u8],
    name: &'a [u8],
    value: &'a [u8],
}

/// The pairs of every Cookie header (RFC 6265 §4.2.1), read leniently as browsers write them:
/// stray spaces and empty pairs are skipped, and HTTP/2 may spread the pairs over several
/// headers (RFC 9113 §8.2.3). Bytes, not text: a cookie need not be UTF-8.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = CookiePair<'_>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (pair[..i].trim_ascii(), pair[i + 1..].trim_ascii()),
                None => (&pair[..0], pair),
            };
            CookiePair { pair, name, value }
        })
}

/// A cookie value without the double quotes it may be wrapped in (RFC 6265 §4.1.1).
fn unquote(value: &[u8]) -> &[u8] {
    match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    }
}

/// Removes every access token from a request before it goes on to the backend: the
/// `Authorization` values that carry one, and the `sat_token` cookie, keeping any other
/// credentials and cookies. Done for public services too: a cookie set for a parent domain
/// reaches every service under it, and none of their backends should see it.
fn strip_access_token(headers: &mut HeaderMap) {
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(is_access_bearer)
    {
        let kept: Vec<HeaderValue> = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter(|v| !is_access_bearer(v))
            .cloned()
            .collect();
        headers.remove(header::AUTHORIZATION);
        for v in kept {
            headers.append(header::AUTHORIZATION, v);
        }
    }
    if cookie_pairs(headers).any(|c| c.name == TOKEN_COOKIE) {
        let kept = cookie_pairs(headers)
            .filter(|c| c.name != TOKEN_COOKIE)
            .map(|c| c.pair)
            .collect::<Vec<_>>()
            .join(&b"; "[..]);
        // Several Cookie headers become one, as HTTP/1.1 to the control plane wants.
        headers.remove(header::COOKIE);
        if let Ok(v) = HeaderValue::from_bytes(&kept) {
            if !kept.is_empty() {
                headers.insert(header::COOKIE, v);
            }
        }
    }
}

/// The 401 for a refused access token: a challenge per RFC 6750 §3 (no error code when there
/// was no token at all) and a body that says what to do.
fn unauthorized(service: &str, e: &AccessError) -> Response<Body> {
    let mut resp = text(
        StatusCode::UNAUTHORIZED,
        format!(
            "access to service \"{service}\" refused: {e}\n\
             Over HTTP, send the token as the header \"Authorization: Bearer <token>\" \
             or as the cookie \"sat_token=<token>\"."
        ),
    );
    let challenge = match e {
        AccessError::Missing => "Bearer realm=\"sat\"".to_owned(),
        e => format!(
            "Bearer realm=\"sat\", error=\"invalid_token\", error_description=\"{}\"",
            description(&e.to_string())
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// `text` as an `error_description` may carry it: RFC 6750 §3 allows printable ASCII except
/// `"` and `\`.
fn description(text: &str) -> String {
    text.replace('…', "...")
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
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

    const TOKEN: &str = "sat_at1.eyJwYXlsb2FkIjoxfQ.c2ln";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    fn all(h: &HeaderMap, name: header::HeaderName) -> Vec<&str> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn token_comes_from_bearer_or_cookie() {
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(
            access_token(&headers(&[("authorization", &bearer)])).as_deref(),
            Some(TOKEN)
        );
        let lower = format!("bearer   {TOKEN} ");
        assert_eq!(
            access_token(&headers(&[("authorization", &lower)])).as_deref(),
            Some(TOKEN)
        );
        let cookies = format!("a=1;  sat_token={TOKEN} ;b=2");
        assert_eq!(
            access_token(&headers(&[("cookie", &cookies)])).as_deref(),
            Some(TOKEN)
        );
        // HTTP/2 may split cookies over several headers; the value may be quoted.
        let quoted = format!("sat_token=\"{TOKEN}\"");
        assert_eq!(
            access_token(&headers(&[("cookie", "a=1"), ("cookie", &quoted)])).as_deref(),
            Some(TOKEN)
        );
        // The header wins over the cookie.
        assert_eq!(
            access_token(&headers(&[
                ("cookie", "sat_token=other"),
                ("authorization", &bearer)
            ]))
            .as_deref(),
            Some(TOKEN)
        );
        // A backend's own bearer token is not ours; the cookie still counts.
        assert_eq!(
            access_token(&headers(&[
                ("authorization", "Bearer backend-secret"),
                ("cookie", &cookies)
            ]))
            .as_deref(),
            Some(TOKEN)
        );
        for none in [
            headers(&[]),
            headers(&[("authorization", "Bearer backend-secret")]),
            headers(&[("authorization", &format!("Basic {TOKEN}"))]),
            headers(&[("cookie", &format!("xsat_token={TOKEN}; sat_tokens=1"))]),
        ] {
            assert_eq!(access_token(&none), None, "{none:?}");
        }
        assert_eq!(
            access_token(&headers(&[("cookie", "sat_token=")])).as_deref(),
            Some("")
        );
    }

    #[test]
    fn token_is_stripped_and_the_rest_kept() {
        let mut h = headers(&[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("cookie", &format!("a=1; sat_token={TOKEN};  b=2")),
            ("cookie", "c=3"),
        ]);
        strip_access_token(&mut h);
        assert_eq!(h.get(header::AUTHORIZATION), None);
        assert_eq!(all(&h, header::COOKIE), ["a=1; b=2; c=3"]);

        // Only the token's cookie and header go.
        let mut h = headers(&[
            ("authorization", "Bearer backend-secret"),
            ("cookie", &format!("sat_token={TOKEN}")),
        ]);
        strip_access_token(&mut h);
        assert_eq!(all(&h, header::AUTHORIZATION), ["Bearer backend-secret"]);
        assert_eq!(h.get(header::COOKIE), None);

        // Without a token nothing changes, not even the split cookie headers.
        let mut h = headers(&[
            ("authorization", "Basic dTpw"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
        ]);
        let before = h.clone();
        strip_access_token(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn refusal_is_a_bearer_challenge() {
        let resp = unauthorized("db", &AccessError::Missing);
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"sat\""
        );
        let resp = unauthorized(
            "db",
            &AccessError::WrongService {
                service: "db".into(),
            },
        );
        let challenge = resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert_eq!(
            challenge,
            "Bearer realm=\"sat\", error=\"invalid_token\", error_description=\"access token \
             does not grant service 'db'; ask for a token that includes it\""
        );
        let resp = unauthorized("db", &AccessError::Malformed("x\\y\u{1}é".into()));
        let challenge = resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(
            challenge.contains("x/y??; pass the whole sat_at1.... text"),
            "{challenge}"
        );
    }
}
