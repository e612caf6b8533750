//! Timing relays over HTTP: a request to a relay's latency check (`/api/latency`), answered at
//! once, on a kept-alive connection. The connection's set-up (TCP and TLS handshakes) is not
//! counted, only request-to-answer round trips, and the fastest of a few is taken as the least
//! disturbed by scheduling. Clients (`sat relays`, `sat connect`) and relays (probing each
//! other) time the same way, so their figures compare.
//!
//! This is a deliberately small HTTP/1.1 client: GET and POST with a Content-Length body, no
//! redirects, no chunked answers. The relay endpoints it talks to are ours.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// Answers larger than this are refused rather than read.
const MAX_BODY: usize = 16 << 20;

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
        let mut conn = connect(tls, scheme, authority).await?;
        let mut best = Duration::MAX;
        for _ in 0..samples.max(1) {
            let sent = Instant::now();
            request(&mut conn, "GET", authority, path, None).await?;
            best = best.min(sent.elapsed());
        }
        Ok(best)
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
    once(tls, "https", authority, "GET", path, None, timeout).await
}

/// `POST url` with a JSON body on a connection of its own; returns the answer's body.
pub async fn post_json(
    tls: &TlsConnector,
    url: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<String, String> {
    let (scheme, authority, path) = split_url(url)?;
    once(tls, scheme, authority, "POST", path, Some(body), timeout).await
}

/// One request on a connection of its own, all within `timeout`.
async fn once(
    tls: &TlsConnector,
    scheme: &str,
    authority: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<String, String> {
    within(timeout, async {
        let mut conn = connect(tls, scheme, authority).await?;
        request(&mut conn, method, authority, path, body).await
    })
    .await
}

async fn within<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, String>>,
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
) -> Result<BufReader<Box<dyn Conn>>, String> {
    let tcp = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Conn> = match scheme {
        "https" => {
            let host = authority
                .rsplit_once(':')
                .map_or(authority, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
            Box::new(
                tls.connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?,
            )
        }
        "http" => Box::new(tcp),
        other => return Err(format!("unknown scheme {other}")),
    };
    Ok(BufReader::new(stream))
}

/// One request on a kept-alive connection; returns the body of a 2xx answer.
async fn request(
    conn: &mut BufReader<Box<dyn Conn>>,
    method: &str,
    authority: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<String, String> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: sat\r\n");
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let w = conn.get_mut();
    w.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    if let Some(body) = body {
        w.write_all(body).await.map_err(|e| e.to_string())?;
    }
    let mut status = String::new();
    conn.read_line(&mut status)
        .await
        .map_err(|e| e.to_string())?;
    if !status.starts_with("HTTP/1.1 2") {
        return Err(format!("answered {}", status.trim()));
    }
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).await.map_err(|e| e.to_string())?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|_| "bad content-length")?;
            }
        }
    }
    if length > MAX_BODY {
        return Err(format!("answer of {length} bytes is too big"));
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    String::from_utf8(body).map_err(|e| e.to_string())
}
