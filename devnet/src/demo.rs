//! Demo web app for `sat up`: the page users open to see a request cross a relay.
//!
//! It reports what the relay told it about the request (the relay sets `Sat-Relay-Name`,
//! `Sat-Relay-Region`, `X-Forwarded-*` and `Forwarded` on the way in) and offers endpoints
//! that exercise the data path: a WebSocket echo, a streamed download and a streamed upload
//! counter. Routes:
//!
//! | Route             | Answer                                                          |
//! |-------------------|-----------------------------------------------------------------|
//! | `GET /`           | HTML page: relay, region, client address, headers, WS echo box  |
//! | `GET /api/whoami` | JSON `{relay, region, client, proto, host}`                     |
//! | `GET /ws`         | WebSocket echo (text and binary)                                |
//! | `GET /bytes/<n>`  | `n` bytes (at most 16 GiB) where byte `i` is `i % 251`          |
//! | `POST /count`     | the number of request-body bytes received, as text              |
//!
//! It speaks HTTP/1.1 only, since WebSocket over HTTP/2 (RFC 8441) is not worth it here.
//! It is a demo, not a hardened server: there is no connection limit or rate limiting.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Request header naming the relay that served the request.
const RELAY_NAME: HeaderName = HeaderName::from_static("sat-relay-name");
/// Request header naming that relay's region.
const RELAY_REGION: HeaderName = HeaderName::from_static("sat-relay-region");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// Largest `/bytes/<n>`: big enough for any throughput test, small enough that a typo
/// cannot start a download that never ends.
const MAX_DOWNLOAD: u64 = 16 << 30;
/// How long an in-flight request may run after shutdown before its connection is dropped.
/// `run` has a single token, so this bounds how long a cancelled `run` can take.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Slowloris guard: a client must finish sending request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a WebSocket client gets to answer our close frame at shutdown.
const WS_CLOSE_GRACE: Duration = Duration::from_secs(2);
/// The echo box sends short lines; tungstenite's 64 MiB default would let one client make
/// us buffer a lot of memory for nothing.
const WS_MAX_MESSAGE: usize = 1 << 20;

type ResponseBody = BoxBody<Bytes, Infallible>;

/// Serves the demo app on `listener` until `shutdown` is cancelled.
///
/// On cancellation it stops accepting, lets in-flight requests finish for up to
/// five seconds (`DRAIN_GRACE`), sends WebSocket clients a "going away" close, and returns once every
/// connection task has ended. Only reading the listener's address can fail.
pub async fn run(listener: TcpListener, shutdown: CancellationToken) -> io::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(service = "demo", "listening on http {local}");

    let tracker = TaskTracker::new();
    let mut conn: u64 = 0;
    while let Some((stream, peer)) = crate::echo::accept(&listener, &shutdown).await {
        conn += 1;
        let span = tracing::info_span!("conn", service = "demo", conn, peer = %peer);
        let app = App {
            peer,
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
        };
        tracker.spawn(serve_connection(stream, app).instrument(span));
    }

    drop(listener);
    // Connection tasks may still spawn WebSocket tasks after this; the tracker keeps
    // counting them, so `wait` covers those too.
    tracker.close();
    tracker.wait().await;
    tracing::debug!(service = "demo", "stopped");
    Ok(())
}

/// What each request handler needs. Cheap to clone: the tracker and token are `Arc`s.
#[derive(Clone)]
struct App {
    peer: SocketAddr,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

async fn serve_connection(stream: TcpStream, app: App) {
    let shutdown = app.shutdown.clone();
    let service = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.handle(req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);

    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            // Finishes the request in flight (if any), then closes instead of keeping alive.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(DRAIN_GRACE, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::debug!("drain grace elapsed; dropping connection");
                    return;
                }
            }
        }
    };
    if let Err(err) = result {
        // Usually a client that went away mid-request; nothing to do about it here.
        tracing::debug!(error = %err, "http connection ended with an error");
    }
}

impl App {
    async fn handle(self, req: Request<Incoming>) -> Response<ResponseBody> {
        let method = req.method().clone();
        let get = method == Method::GET || method == Method::HEAD;
        let path = req.uri().path().to_owned();
        tracing::debug!(%method, %path, "request");

        if let Some(n) = path.strip_prefix("/bytes/") {
            return if get {
                download(n)
            } else {
                method_not_allowed("GET, HEAD")
            };
        }
        match path.as_str() {
            "/" if get => index_page(&req, self.peer),
            "/api/whoami" if get => whoami(&req, self.peer),
            "/ws" if method == Method::GET => self.websocket(req),
            "/count" if method == Method::POST => count(req.into_body()).await,
            "/" | "/api/whoami" => method_not_allowed("GET, HEAD"),
            "/ws" => method_not_allowed("GET"),
            "/count" => method_not_allowed("POST"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try / for the demo page\n",
            ),
        }
    }

    /// Answers the RFC 6455 handshake and hands the upgraded connection to a tracked task.
    fn websocket(&self, mut req: Request<Incoming>) -> Response<ResponseBody> {
        let headers = req.headers();
        if !has_token(headers, &header::CONNECTION, "upgrade")
            || !has_token(headers, &header::UPGRADE, "websocket")
        {
            return text(
                StatusCode::BAD_REQUEST,
                "/ws expects a WebSocket upgrade: GET with `Connection: Upgrade`, \
                 `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key`\n",
            );
        }
        if headers
            .get(SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            // RFC 6455 section 4.4: say which version we do speak.
            let mut response = text(
                StatusCode::UPGRADE_REQUIRED,
                "/ws speaks WebSocket version 13 (RFC 6455) only\n",
            );
            response
                .headers_mut()
                .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return response;
        }
        // The key is base64 of 16 random bytes, hence always 24 characters.
        let Some(key) = headers.get(SEC_WEBSOCKET_KEY).filter(|k| k.len() == 24) else {
            return text(
                StatusCode::BAD_REQUEST,
                "/ws needs a `Sec-WebSocket-Key` header: base64 of 16 random bytes\n",
            );
        };
        let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
            // Unreachable in practice: the accept key is base64, always a valid header.
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not derive accept key\n",
            );
        };

        let on_upgrade = hyper::upgrade::on(&mut req);
        self.tracker
            .spawn(websocket_echo(on_upgrade, self.shutdown.clone()).in_current_span());

        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(SEC_WEBSOCKET_ACCEPT, accept);
        response
    }
}

/// What the relay told us about the request, with fallbacks for a direct connection.
#[derive(Debug, PartialEq)]
struct RelayView {
    relay: Option<String>,
    region: Option<String>,
    /// The client's address as the relay saw it, or our TCP peer without a relay.
    client: String,
    proto: String,
    host: Option<String>,
}

impl RelayView {
    fn from_headers(headers: &HeaderMap, peer: SocketAddr) -> Self {
        let single = |name: &HeaderName| {
            headers
                .get(name)
                .map(|v| lossy(v).trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        // For list-valued headers the relay's own entry is the last one: anything before
        // it came from the client (or proxies before the relay) and can be made up.
        let relay_said = |xf: &HeaderName, forwarded_key: &str| {
            last_list_item(headers, xf).or_else(|| forwarded_param(headers, forwarded_key))
        };
        RelayView {
            relay: single(&RELAY_NAME),
            region: single(&RELAY_REGION),
            client: relay_said(&X_FORWARDED_FOR, "for").unwrap_or_else(|| peer.to_string()),
            // Without a relay, the client reached this plain-HTTP listener directly.
            proto: relay_said(&X_FORWARDED_PROTO, "proto").unwrap_or_else(|| "http".into()),
            host: relay_said(&X_FORWARDED_HOST, "host").or_else(|| single(&header::HOST)),
        }
    }
}

/// Header values may hold any byte but `to_str` refuses non-ASCII; show it rather than hide it.
fn lossy(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// The last item of a comma-separated header, across all of its occurrences.
fn last_list_item(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers.get_all(name).iter().rev().find_map(|v| {
        lossy(v)
            .rsplit(',')
            .map(str::trim)
            .find(|item| !item.is_empty())
            .map(str::to_owned)
    })
}

/// `key` from the last element of the RFC 7239 `Forwarded` header, unquoted.
fn forwarded_param(headers: &HeaderMap, key: &str) -> Option<String> {
    let joined = headers
        .get_all(header::FORWARDED)
        .iter()
        .map(lossy)
        .collect::<Vec<_>>()
        .join(",");
    let element = split_unquoted(&joined, ',')
        .into_iter()
        .map(str::trim)
        .rfind(|e| !e.is_empty())?;
    split_unquoted(element, ';').into_iter().find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| unquote(v.trim()))
            .filter(|v| !v.is_empty())
    })
}

/// Splits on `sep` outside RFC 7230 quoted strings, which may contain the separator
/// (`for="[2001:db8::1]:4711"` has colons, a quoted value may have commas).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return v.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    out
}

/// Whether a comma-separated header such as `Connection` lists `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

fn whoami(req: &Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
    let view = RelayView::from_headers(req.headers(), peer);
    let body = format!(
        "{{\"relay\":{},\"region\":{},\"client\":{},\"proto\":{},\"host\":{}}}\n",
        json_string(view.relay.as_deref()),
        json_string(view.region.as_deref()),
        json_string(Some(&view.client)),
        json_string(Some(&view.proto)),
        json_string(view.host.as_deref()),
    );
    let mut response = Response::new(full(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // The answer depends on who asks and through which relay; never serve it from a cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A JSON string literal for `s`, or `null`. Hand-written because this crate has no
/// serde_json, and this is the only JSON it writes.
fn json_string(s: Option<&str>) -> String {
    let Some(s) = s else {
        return "null".to_owned();
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn push_html(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// Headers the relay adds, highlighted on the page so users can see its work.
fn set_by_relay(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("sat-") || name.starts_with("x-forwarded-") || name == "forwarded"
}

fn index_page(req: &Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
    let view = RelayView::from_headers(req.headers(), peer);
    let mut page = String::with_capacity(16 * 1024);
    page.push_str(PAGE_HEAD);

    page.push_str("<header>\n<span class=\"badge\">Satellite &middot; demo app</span>\n<h1>");
    match &view.relay {
        Some(relay) => {
            page.push_str("Served by relay <b>");
            push_html(&mut page, relay);
            page.push_str("</b> in region <b>");
            push_html(&mut page, view.region.as_deref().unwrap_or("unknown"));
            page.push_str("</b>");
        }
        None => page.push_str("Served directly, without a Satellite relay"),
    }
    page.push_str(
        "</h1>\n<p class=\"sub\">This is the demo backend that <code>sat up</code> starts. \
         Everything below is what reached it with your request.</p>\n</header>\n",
    );

    page.push_str("<div class=\"grid\">\n");
    let version = format!("{:?}", req.version());
    let request_line = format!("{} {} {}", req.method(), req.uri().path(), version);
    let cards = [
        ("Your address, as the relay saw it", view.client.as_str()),
        ("Protocol", view.proto.as_str()),
        ("Host", view.host.as_deref().unwrap_or("(none)")),
        ("Request", request_line.as_str()),
    ];
    for (label, value) in cards {
        page.push_str("<div class=\"card\"><div class=\"label\">");
        page.push_str(label);
        page.push_str("</div><div class=\"value\">");
        push_html(&mut page, value);
        page.push_str("</div></div>\n");
    }
    page.push_str("</div>\n");

    page.push_str(PAGE_WEBSOCKET);

    page.push_str(
        "<section class=\"card\">\n<h2>Request headers</h2>\n\
         <p class=\"hint\">Highlighted rows were added by the relay.</p>\n<table>\n",
    );
    for (name, value) in req.headers() {
        page.push_str(if set_by_relay(name) {
            "<tr class=\"relay\"><td>"
        } else {
            "<tr><td>"
        });
        push_html(&mut page, name.as_str());
        page.push_str("</td><td>");
        push_html(&mut page, &lossy(value));
        page.push_str("</td></tr>\n");
    }
    page.push_str("</table>\n</section>\n");
    page.push_str(PAGE_TAIL);

    let mut response = Response::new(full(page));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Defence in depth behind the escaping: nothing may load from elsewhere, and the only
    // connection the page may open is its own origin's WebSocket.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn download(n: &str) -> Response<ResponseBody> {
    let Some(len) = n.parse::<u64>().ok().filter(|&len| len <= MAX_DOWNLOAD) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("expected /bytes/<n> with n a whole number of bytes from 0 to {MAX_DOWNLOAD} (16 GiB)\n"),
        );
    };
    let mut response = Response::new(PatternBody::new(len).boxed());
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    // Hyper would derive this from the exact size hint; stating it keeps HEAD honest too.
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

/// Period of the `/bytes` pattern. A prime is coprime with every power-of-two buffer or
/// frame size on the path, so a lost, repeated or misplaced buffer shifts the pattern and
/// a checker that expects byte `i` to be `i % 251` notices.
const PATTERN_PERIOD: usize = 251;
/// About 64 KiB and a whole number of periods, so every chunk is the same bytes.
const PATTERN_CHUNK_LEN: usize = PATTERN_PERIOD * 261;

static PATTERN_CHUNK: LazyLock<Bytes> = LazyLock::new(|| {
    (0..PATTERN_CHUNK_LEN)
        .map(|i| (i % PATTERN_PERIOD) as u8)
        .collect::<Vec<u8>>()
        .into()
});

/// A response body of `remaining` pattern bytes, produced chunk by chunk as hyper asks, so
/// a 16 GiB download holds one shared 64 KiB buffer.
struct PatternBody {
    remaining: u64,
}

impl PatternBody {
    fn new(len: u64) -> Self {
        PatternBody { remaining: len }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let len =
            usize::try_from(self.remaining).map_or(PATTERN_CHUNK_LEN, |r| r.min(PATTERN_CHUNK_LEN));
        self.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(PATTERN_CHUNK.slice(..len)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Counts the request body as it streams in; nothing is kept.
async fn count(mut body: Incoming) -> Response<ResponseBody> {
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    total += data.len() as u64;
                }
            }
            Err(err) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("request body failed after {total} bytes: {err}\n"),
                );
            }
        }
    }
    text(StatusCode::OK, format!("{total}\n"))
}

async fn websocket_echo(on_upgrade: OnUpgrade, shutdown: CancellationToken) {
    // Resolves once hyper has written the 101 and handed over the connection.
    let upgraded = tokio::select! {
        upgraded = on_upgrade => match upgraded {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(error = %err, "websocket upgrade failed");
                return;
            }
        },
        () = shutdown.cancelled() => return,
    };
    let config = WebSocketConfig {
        max_message_size: Some(WS_MAX_MESSAGE),
        max_frame_size: Some(WS_MAX_MESSAGE),
        ..WebSocketConfig::default()
    };
    let mut ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    tracing::debug!("websocket open");
    match echo_messages(&mut ws, &shutdown).await {
        Ok(()) => tracing::debug!("websocket closed"),
        Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
            tracing::debug!("websocket closed");
        }
        Err(err) => tracing::debug!(error = %err, "websocket failed"),
    }
}

async fn echo_messages(
    ws: &mut WebSocketStream<TokioIo<Upgraded>>,
    shutdown: &CancellationToken,
) -> Result<(), tungstenite::Error> {
    loop {
        let message = tokio::select! {
            message = ws.next() => message,
            () = shutdown.cancelled() => {
                ws.close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "server is shutting down".into(),
                }))
                .await?;
                // Read until the client's close reply so both sides see a clean close; a
                // client that never answers costs at most the grace period.
                let drained = async { while let Some(Ok(_)) = ws.next().await {} };
                if tokio::time::timeout(WS_CLOSE_GRACE, drained).await.is_err() {
                    tracing::debug!("websocket client did not answer close in time");
                }
                return Ok(());
            }
        };
        match message {
            // The stream ends after the close handshake completes.
            None => return Ok(()),
            Some(Err(err)) => return Err(err),
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                ws.send(message).await?;
            }
            // Tungstenite queues the pong for a ping and the reply to a close itself, and
            // writes them on the next read, which is the next turn of this loop.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => {}
            Some(Ok(Message::Frame(_))) => {}
        }
    }
}

fn full(body: impl Into<Bytes>) -> ResponseBody {
    Full::new(body.into()).boxed()
}

fn empty() -> ResponseBody {
    full(Bytes::new())
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<ResponseBody> {
    let mut response = Response::new(full(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; this route accepts {allow}\n"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

const PAGE_HEAD: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Satellite demo</title>
<style>
:root {
  color-scheme: light dark;
  --bg: #0b1020; --card: #131a2e; --fg: #e6ebf5; --muted: #8f9bb8;
  --accent: #7ea6ff; --ok: #3ecf8e; --bad: #ff6b6b; --line: #242c47; --hl: rgba(126, 166, 255, .10);
}
@media (prefers-color-scheme: light) {
  :root {
    --bg: #f4f6fb; --card: #ffffff; --fg: #17203a; --muted: #5a6685;
    --accent: #3056d3; --ok: #13995f; --bad: #d43c3c; --line: #e0e5ef; --hl: rgba(48, 86, 211, .07);
  }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 980px; margin: 0 auto; padding: 48px 20px 64px; }
code, .mono, table, #log, .value { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.badge { display: inline-block; padding: 3px 12px; border-radius: 999px; font-size: 12px;
  letter-spacing: .04em; color: var(--accent); background: var(--hl); border: 1px solid var(--line); }
h1 { font-size: clamp(24px, 4vw, 34px); line-height: 1.2; margin: 14px 0 8px; font-weight: 650; }
h1 b { color: var(--accent); word-break: break-all; }
h2 { font-size: 15px; margin: 0 0 12px; }
.sub, .hint { color: var(--muted); margin: 0; }
.hint { font-size: 13px; margin-bottom: 10px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(210px, 1fr)); gap: 12px; margin: 28px 0 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 14px; padding: 16px 18px; }
section.card { margin-top: 12px; padding: 20px 22px; }
.label { font-size: 11px; text-transform: uppercase; letter-spacing: .08em; color: var(--muted); margin-bottom: 4px; }
.value { font-size: 16px; font-weight: 600; word-break: break-all; }
table { width: 100%; border-collapse: collapse; font-size: 13px; }
td { padding: 6px 10px; border-top: 1px solid var(--line); vertical-align: top; word-break: break-all; }
td:first-child { color: var(--muted); white-space: nowrap; width: 1%; }
tr.relay td { background: var(--hl); }
tr.relay td:first-child { color: var(--accent); }
form { display: flex; gap: 8px; }
input { flex: 1; min-width: 0; padding: 10px 12px; border-radius: 10px; border: 1px solid var(--line);
  background: var(--bg); color: var(--fg); font: inherit; }
input:focus { outline: 2px solid var(--accent); outline-offset: -1px; }
button { padding: 10px 18px; border: 0; border-radius: 10px; background: var(--accent); color: #fff;
  font: 600 14px system-ui, sans-serif; cursor: pointer; }
#ws-status { font-size: 13px; color: var(--muted); margin: 0 0 12px; }
#ws-status::before { content: "\25CF  "; color: var(--muted); }
#ws-status.ok::before { color: var(--ok); }
#ws-status.bad::before { color: var(--bad); }
#log { list-style: none; margin: 12px 0 0; padding: 0; font-size: 13px; max-height: 260px; overflow: auto; }
#log li { padding: 5px 2px; border-top: 1px dashed var(--line); word-break: break-all; }
#log li.out::before { content: "\2192  "; color: var(--muted); }
#log li.in::before { content: "\2190  "; color: var(--ok); }
#log .rtt { float: right; color: var(--muted); }
footer { margin-top: 28px; color: var(--muted); font-size: 13px; }
a { color: var(--accent); }
</style>
</head>
<body>
<main>
"##;

/// The echo box. Echoed text goes in with `textContent`, never as HTML.
const PAGE_WEBSOCKET: &str = r##"<section class="card">
<h2>WebSocket echo</h2>
<p id="ws-status">JavaScript is needed for the echo box.</p>
<form id="ws-form">
<input id="ws-input" autocomplete="off" placeholder="Type a message; it goes through the relay and back">
<button type="submit">Send</button>
</form>
<ul id="log"></ul>
</section>
<script>
(() => {
  const status = document.getElementById("ws-status");
  const log = document.getElementById("log");
  const input = document.getElementById("ws-input");
  const url = (location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host + "/ws";
  const sentAt = [];
  let ws = null;

  function show(text, cls) {
    status.textContent = text;
    status.className = cls;
  }
  function line(cls, text, rtt) {
    const li = document.createElement("li");
    li.className = cls;
    li.textContent = text;
    if (rtt !== undefined) {
      const span = document.createElement("span");
      span.className = "rtt";
      span.textContent = rtt.toFixed(1) + " ms";
      li.appendChild(span);
    }
    log.prepend(li);
    while (log.children.length > 50) log.lastChild.remove();
  }
  function connect() {
    show("connecting to " + url + " \u2026", "");
    sentAt.length = 0;
    ws = new WebSocket(url);
    ws.onopen = () => show("connected to " + url, "ok");
    ws.onmessage = (e) => {
      const t0 = sentAt.shift();
      const text = typeof e.data === "string" ? e.data : "[binary message]";
      line("in", text, t0 === undefined ? undefined : performance.now() - t0);
    };
    ws.onclose = (e) => show("closed (code " + e.code + "); send again to reconnect", "bad");
  }
  document.getElementById("ws-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!ws || ws.readyState > WebSocket.OPEN) { connect(); return; }
    if (ws.readyState !== WebSocket.OPEN || input.value === "") return;
    sentAt.push(performance.now());
    ws.send(input.value);
    line("out", input.value);
    input.value = "";
  });
  connect();
})();
</script>
"##;

const PAGE_TAIL: &str = r##"<footer>
Also here: <a href="/api/whoami">/api/whoami</a> (the same facts as JSON) &middot;
<a href="/bytes/104857600">/bytes/104857600</a> (a 100 MiB download; byte <i>i</i> is <i>i</i> mod 251) &middot;
<code>POST /count</code> (answers with the number of body bytes received).
</footer>
</main>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use tokio::task::JoinHandle;

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    const TIMEOUT: Duration = Duration::from_secs(10);

    struct Server {
        addr: SocketAddr,
        shutdown: CancellationToken,
        task: JoinHandle<io::Result<()>>,
    }

    impl Server {
        async fn start() -> io::Result<Server> {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(run(listener, shutdown.clone()));
            Ok(Server {
                addr,
                shutdown,
                task,
            })
        }

        async fn stop(self) -> TestResult {
            self.shutdown.cancel();
            tokio::time::timeout(TIMEOUT, self.task).await???;
            Ok(())
        }

        /// Sends one request on a fresh connection and collects the whole response.
        async fn send<B>(&self, request: Request<B>) -> Result<Response<Bytes>, BoxError>
        where
            B: hyper::body::Body<Data = Bytes> + Send + 'static,
            B::Error: Into<BoxError>,
        {
            let stream = TcpStream::connect(self.addr).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let driver = tokio::spawn(conn);
            let response = tokio::time::timeout(TIMEOUT, sender.send_request(request)).await??;
            let (parts, body) = response.into_parts();
            let body = tokio::time::timeout(TIMEOUT, body.collect())
                .await??
                .to_bytes();
            driver.abort();
            Ok(Response::from_parts(parts, body))
        }

        async fn get(
            &self,
            path: &str,
            headers: &[(&str, &str)],
        ) -> Result<Response<Bytes>, BoxError> {
            let mut request = Request::get(path).header(header::HOST, self.addr.to_string());
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            self.send(request.body(Full::new(Bytes::new()))?).await
        }
    }

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    fn body_text(response: &Response<Bytes>) -> String {
        String::from_utf8_lossy(response.body()).into_owned()
    }

    #[tokio::test]
    async fn index_names_the_relay_and_escapes_request_data() -> TestResult {
        let server = Server::start().await?;
        let response = server
            .get(
                "/",
                &[
                    ("sat-relay-name", "relay-fra-1"),
                    ("sat-relay-region", "eu-central"),
                    ("x-forwarded-for", "203.0.113.7"),
                    ("x-forwarded-proto", "https"),
                    ("x-sneaky", "<script>alert(1)</script>"),
                ],
            )
            .await?;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("text/html; charset=utf-8"))
        );
        let page = body_text(&response);
        assert!(page.contains("Served by relay <b>relay-fra-1</b> in region <b>eu-central</b>"));
        assert!(page.contains("203.0.113.7"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("x-sneaky"));
        server.stop().await
    }

    #[tokio::test]
    async fn index_without_relay_says_so() -> TestResult {
        let server = Server::start().await?;
        let page = body_text(&server.get("/", &[]).await?);
        assert!(page.contains("Served directly, without a Satellite relay"));
        // The client card falls back to the TCP peer.
        assert!(page.contains("127.0.0.1:"));
        server.stop().await
    }

    #[tokio::test]
    async fn whoami_reports_the_relay_view_as_json() -> TestResult {
        let server = Server::start().await?;
        let response = server
            .get(
                "/api/whoami",
                &[
                    ("sat-relay-name", "fra\"1"),
                    ("sat-relay-region", "eu-central"),
                    // The first entry is the client's own claim; the relay's is last.
                    ("x-forwarded-for", "10.0.0.1, 198.51.100.4"),
                    ("x-forwarded-proto", "https"),
                    ("x-forwarded-host", "demo.example"),
                ],
            )
            .await?;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/json"))
        );
        assert_eq!(
            body_text(&response),
            "{\"relay\":\"fra\\\"1\",\"region\":\"eu-central\",\"client\":\"198.51.100.4\",\
             \"proto\":\"https\",\"host\":\"demo.example\"}\n"
        );
        server.stop().await
    }

    #[tokio::test]
    async fn whoami_falls_back_to_forwarded_then_to_the_connection() -> TestResult {
        let server = Server::start().await?;
        let response = server
            .get(
                "/api/whoami",
                &[(
                    "forwarded",
                    "for=10.0.0.1;proto=http, for=\"[2001:db8::7]:4711\";proto=https;host=a.example",
                )],
            )
            .await?;
        assert_eq!(
            body_text(&response),
            "{\"relay\":null,\"region\":null,\"client\":\"[2001:db8::7]:4711\",\
             \"proto\":\"https\",\"host\":\"a.example\"}\n"
        );

        let direct = body_text(&server.get("/api/whoami", &[]).await?);
        assert!(direct.contains("\"client\":\"127.0.0.1:"), "{direct}");
        assert!(direct.contains("\"proto\":\"http\""), "{direct}");
        assert!(
            direct.contains(&format!("\"host\":\"{}\"", server.addr)),
            "{direct}"
        );
        server.stop().await
    }

    #[tokio::test]
    async fn websocket_echoes_text_binary_and_ping() -> TestResult {
        let server = Server::start().await?;
        let stream = TcpStream::connect(server.addr).await?;
        let (mut ws, response) =
            tokio_tungstenite::client_async(format!("ws://{}/ws", server.addr), stream).await?;
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);

        for sent in [
            Message::Text("hello through the relay".into()),
            Message::Binary(vec![0, 1, 2, 255]),
            Message::Ping(b"are you there".to_vec()),
        ] {
            ws.send(sent.clone()).await?;
            let got = tokio::time::timeout(TIMEOUT, ws.next())
                .await?
                .ok_or("websocket ended early")??;
            let expected = match sent {
                Message::Ping(payload) => Message::Pong(payload),
                other => other,
            };
            assert_eq!(got, expected);
        }

        ws.close(None).await?;
        let mut saw_close = false;
        while let Some(message) = tokio::time::timeout(TIMEOUT, ws.next()).await? {
            saw_close |= matches!(message?, Message::Close(_));
        }
        assert!(saw_close, "server did not answer the close frame");
        server.stop().await
    }

    #[tokio::test]
    async fn websocket_clients_hear_going_away_on_shutdown() -> TestResult {
        let server = Server::start().await?;
        let stream = TcpStream::connect(server.addr).await?;
        let (mut ws, _) =
            tokio_tungstenite::client_async(format!("ws://{}/ws", server.addr), stream).await?;
        ws.send(Message::Text("hi".into())).await?;
        tokio::time::timeout(TIMEOUT, ws.next()).await?;

        server.shutdown.cancel();
        let message = tokio::time::timeout(TIMEOUT, ws.next())
            .await?
            .ok_or("websocket ended without a close frame")??;
        let Message::Close(Some(frame)) = message else {
            return Err(format!("expected a close frame, got {message:?}").into());
        };
        assert_eq!(frame.code, CloseCode::Away);
        // Answering the close lets the server's task, and so `run`, finish promptly.
        while let Some(Ok(_)) = tokio::time::timeout(TIMEOUT, ws.next()).await? {}
        tokio::time::timeout(TIMEOUT, server.task).await???;
        Ok(())
    }

    #[tokio::test]
    async fn ws_without_upgrade_is_a_400_that_says_why() -> TestResult {
        let server = Server::start().await?;
        let response = server.get("/ws", &[]).await?;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(body_text(&response).contains("expects a WebSocket upgrade"));

        let response = server
            .get(
                "/ws",
                &[
                    ("connection", "Upgrade"),
                    ("upgrade", "websocket"),
                    ("sec-websocket-version", "8"),
                    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ],
            )
            .await?;
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(
            response.headers().get(SEC_WEBSOCKET_VERSION),
            Some(&HeaderValue::from_static("13"))
        );
        server.stop().await
    }

    #[tokio::test]
    async fn bytes_streams_the_pattern() -> TestResult {
        let server = Server::start().await?;
        let response = server.get("/bytes/1000000", &[]).await?;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers().get(header::CONTENT_LENGTH),
            Some(&HeaderValue::from_static("1000000"))
        );
        let body = response.body();
        assert_eq!(body.len(), 1_000_000);
        let first_wrong = body
            .iter()
            .enumerate()
            .position(|(i, &b)| b != (i % PATTERN_PERIOD) as u8);
        assert_eq!(first_wrong, None);

        assert_eq!(server.get("/bytes/0", &[]).await?.body().len(), 0);
        for bad in ["/bytes/-1", "/bytes/lots", "/bytes/17179869185"] {
            let response = server.get(bad, &[]).await?;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        server.stop().await
    }

    #[test]
    fn pattern_body_is_lazy_and_exact_at_the_limit() {
        let body = PatternBody::new(MAX_DOWNLOAD);
        assert_eq!(body.size_hint().exact(), Some(MAX_DOWNLOAD));
        assert!(!body.is_end_stream());
        assert!(PatternBody::new(0).is_end_stream());
    }

    #[tokio::test]
    async fn count_streams_the_request_body() -> TestResult {
        let server = Server::start().await?;
        // No length up front: the body goes out chunked, as an upload of unknown size would.
        let chunks =
            (0..200).map(|i| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![i as u8; 40_000]))));
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let request = Request::post("/count")
            .header(header::HOST, server.addr.to_string())
            .body(body)?;
        let response = server.send(request).await?;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body_text(&response), "8000000\n");
        server.stop().await
    }

    #[tokio::test]
    async fn unknown_paths_are_404_and_wrong_methods_405() -> TestResult {
        let server = Server::start().await?;
        let response = server.get("/nope", &[]).await?;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("text/plain; charset=utf-8"))
        );

        let response = server.get("/count", &[]).await?;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            response.headers().get(header::ALLOW),
            Some(&HeaderValue::from_static("POST"))
        );
        server.stop().await
    }

    #[tokio::test]
    async fn shutdown_closes_idle_keep_alive_connections() -> TestResult {
        let server = Server::start().await?;
        let stream = TcpStream::connect(server.addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(conn);
        let request = Request::get("/api/whoami").body(Full::new(Bytes::new()))?;
        let response = sender.send_request(request).await?;
        response.into_body().collect().await?;

        // The connection is now idle but kept alive; shutdown must not wait for it.
        server.stop().await?;
        tokio::time::timeout(TIMEOUT, driver).await???;
        Ok(())
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string(None), "null");
        assert_eq!(json_string(Some("plain")), "\"plain\"");
        assert_eq!(
            json_string(Some("q\"b\\n\nr\rt\t\u{1}\u{1f}é")),
            "\"q\\\"b\\\\n\\nr\\rt\\t\\u0001\\u001fé\""
        );
    }

    #[test]
    fn html_is_escaped() {
        let mut out = String::new();
        push_html(&mut out, "<a href=\"x\" onclick='y'>&</a>");
        assert_eq!(
            out,
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn forwarded_header_parsing() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::FORWARDED,
            HeaderValue::from_static("for=192.0.2.60;proto=http;by=203.0.113.43"),
        );
        headers.append(
            header::FORWARDED,
            HeaderValue::from_static(
                "For=\"[2001:db8:cafe::17]:4711\";host=\"a,b.example\";proto=https",
            ),
        );
        assert_eq!(
            forwarded_param(&headers, "for").as_deref(),
            Some("[2001:db8:cafe::17]:4711")
        );
        assert_eq!(
            forwarded_param(&headers, "host").as_deref(),
            Some("a,b.example")
        );
        assert_eq!(forwarded_param(&headers, "proto").as_deref(), Some("https"));
        assert_eq!(forwarded_param(&headers, "by"), None);
        assert_eq!(unquote(r#""a\"b""#), "a\"b");
        assert_eq!(forwarded_param(&HeaderMap::new(), "for"), None);
    }

    #[test]
    fn x_forwarded_for_uses_the_relays_entry() {
        let mut headers = HeaderMap::new();
        headers.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
        );
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("3.3.3.3 ,"));
        assert_eq!(
            last_list_item(&headers, &X_FORWARDED_FOR).as_deref(),
            Some("3.3.3.3")
        );
    }
}
