//! Timing relays over HTTP: a request to a relay's latency check (`/api/latency`), answered at
//! once, on a kept-alive connection. The connection's set-up (TCP and TLS handshakes) is not
//! counted, only request-to-answer round trips, and the fastest of a few is taken as the least
//! disturbed by scheduling. Clients (`sat relays`, `sat connect`) and relays (probing each
//! other) time the same way, so their figures compare.
//!
//! The same client fetches the relay map (`GET /api/relays`) and sends round-trip reports
//! (`POST /api/rtt-report`). It is hyper's HTTP/1.1 client on one connection, driven by the
//! caller's task (nothing is spawned): no redirects, no pool. hyper bounds the answer's head;
//! the body is read up to [`MAX_BODY`] and refused past it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// Answers larger than this are refused rather than read. The relay map is the largest
/// answer, a few hundred bytes per relay.
pub const MAX_BODY: usize = 16 << 20;

/// The fastest of `samples` round trips to `url` (`https://host:port/path` or `http://...`)
/// on one connection, all within `timeout`.
pub async fn time(
    tls: &TlsConnector,
    url: &str,
    samples: usize,
    timeout: Duration,
) -> Result<Duration, String> {
    let (scheme, authority, path) = split_url(url)?;
    within(timeout, async {
        let io = connect(tls, scheme, authority).await?;
        on_connection(io, |mut sender| async move {
            let mut best = Duration::MAX;
            for _ in 0..samples.max(1) {
                // The connection is idle again before the clock starts: only the round trip
                // counts.
                sender.ready().await.map_err(|e| error_text(&e))?;
                let sent = Instant::now();
                request(&mut sender, Method::GET, authority, path, None).await?;
                best = best.min(sent.elapsed());
            }
            Ok(best)
        })
        .await
    })
    .await
}

/// `GET https://authority/path` on a connection of its own; returns the body.
pub async fn get(
    tls: &TlsConnector,
    authority: &str,
    path: &str,
    timeout: Duration,
) -> Result<String, String> {
    once(tls, "https", authority, Method::GET, path, None, timeout).await
}

/// `POST url` with a JSON body on a connection of its own; returns the answer's body.
pub async fn post_json(
    tls: &TlsConnector,
    url: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<String, String> {
    let (scheme, authority, path) = split_url(url)?;
    let body = Bytes::copy_from_slice(body);
    once(
        tls,
        scheme,
        authority,
        Method::POST,
        path,
        Some(body),
        timeout,
    )
    .await
}

/// One request on a connection of its own, all within `timeout`.
async fn once(
    tls: &TlsConnector,
    scheme: &str,
    authority: &str,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    timeout: Duration,
) -> Result<String, String> {
    within(timeout, async {
        let io = connect(tls, scheme, authority).await?;
        on_connection(io, |mut sender| async move {
            request(&mut sender, method, authority, path, body).await
        })
        .await
    })
    .await
}

async fn within<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// A TLS client config for timing only: it checks that the peer signs the handshake with the
/// key in its certificate, but not who issued the certificate. Relays probe each other with
/// it, since a relay's HTTPS certificate may come from any CA and the probe reads nothing but
/// a time. An on-path attacker can skew that time with or without TLS, by delaying packets.
pub fn timing_only_client_config() -> rustls::ClientConfig {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| rustls::ClientConfig::builder())
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TimingOnly(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

#[derive(Debug)]
struct TimingOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for TimingOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn split_url(url: &str) -> Result<(&str, &str, &str), String> {
    let (scheme, rest) = url.split_once("://").ok_or("not a URL")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    Ok((scheme, authority, path))
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

async fn connect(
    tls: &TlsConnector,
    scheme: &str,
    authority: &str,
) -> Result<Box<dyn Conn>, String> {
    let tcp = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match scheme {
        "https" => {
            let host = authority
                .rsplit_once(':')
                .map_or(authority, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            Ok(Box::new(stream))
        }
        "http" => Ok(Box::new(tcp)),
        other => Err(format!("unknown scheme {other}")),
    }
}

/// Runs `work` with an HTTP/1.1 connection over `io`, driving the connection in this task
/// while it runs.
async fn on_connection<T, F>(
    io: Box<dyn Conn>,
    work: impl FnOnce(SendRequest<Full<Bytes>>) -> F,
) -> Result<T, String>
where
    F: Future<Output = Result<T, String>>,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| error_text(&e))?;
    let work = work(sender);
    tokio::pin!(work, conn);
    tokio::select! {
        biased;
        result = &mut work => result,
        // The connection ended (the peer closed it, or it failed): whatever the work was
        // waiting for has arrived or failed with it, and the work says which.
        _ = &mut conn => work.await,
    }
}

/// One request on a kept-alive connection; returns the body of a 2xx answer.
async fn request(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    authority: &str,
    path: &str,
    body: Option<Bytes>,
) -> Result<String, String> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, authority)
        .header(USER_AGENT, "sat");
    if body.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| error_text(&e))?;
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!("answer larger than {MAX_BODY} bytes")
            } else {
                error_text(e.as_ref())
            }
        })?
        .to_bytes();
    String::from_utf8(body.into()).map_err(|e| e.to_string())
}

/// An error and its causes: hyper's own text says only which stage failed ("connection
/// error"), its source says why.
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{Response, StatusCode};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    fn connector() -> TlsConnector {
        TlsConnector::from(Arc::new(timing_only_client_config()))
    }

    /// A plain-HTTP server answering every request on a connection with `answer`; returns its
    /// address and how many connections it took.
    async fn serve(answer: fn() -> Response<Full<Bytes>>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                let service =
                    hyper::service::service_fn(
                        move |_req| async move { Ok::<_, Infallible>(answer()) },
                    );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        (addr, conns)
    }

    #[tokio::test]
    async fn times_on_one_kept_alive_connection() {
        let (addr, conns) = serve(|| Response::new(Full::new(Bytes::from_static(b"{}")))).await;
        let url = format!("http://{addr}/api/latency");
        let rtt = time(&connector(), &url, 4, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(rtt < Duration::from_secs(1));
        assert_eq!(conns.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_refusal_is_an_error_with_its_status() {
        let (addr, _) = serve(|| {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            resp
        })
        .await;
        let url = format!("http://{addr}/api/rtt-report");
        let err = post_json(&connector(), &url, b"{}", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err, "answered 503 Service Unavailable");
    }

    #[tokio::test]
    async fn an_answer_past_the_limit_is_not_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                MAX_BODY + 1
            );
            let _ = tcp.write_all(head.as_bytes()).await;
            let chunk = vec![b'x'; 64 << 10];
            while tcp.write_all(&chunk).await.is_ok() {}
        });
        let url = format!("http://{addr}/api/relays");
        let err = post_json(&connector(), &url, b"{}", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }
}
