//! Binding the relay's sockets (done by the caller, before `run`) and the accept loops of the
//! HTTPS and plain HTTP listeners.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, Instrument};

use sat_geo::dns::{DnsSection, DnsSockets};

use crate::config::{HttpSection, RelayConfig};
use crate::http::{self, Origin};
use crate::relay::Relay;
use crate::RelayError;

/// The relay's sockets, bound before `run` so that config errors and port clashes surface
/// first, and so that tests can bind port 0 and read the real ports back.
pub struct Sockets {
    pub https: Option<std::net::TcpListener>,
    /// UDP for client QUIC, on the same port number as `https`.
    pub quic: Option<std::net::UdpSocket>,
    pub http: Option<std::net::TcpListener>,
    pub tcp: Vec<(String, std::net::TcpListener)>,
    /// `/healthz` and `/readyz`.
    pub health: Option<std::net::TcpListener>,
    /// Geo DNS, UDP and TCP on the same port.
    pub dns: Option<DnsSockets>,
}

impl Sockets {
    /// Binds every socket the config asks for, announcing each with `listening on`.
    pub fn bind(config: &RelayConfig) -> Result<Self, RelayError> {
        let (https, quic) = match &config.https {
            Some(h) => {
                let (tcp, udp) = bind_tcp_and_udp(h.listen, h.quic)?;
                (Some(tcp), udp)
            }
            None => (None, None),
        };
        let http = config
            .http
            .listen
            .map(|a| bind_tcp("http", a))
            .transpose()?;
        let tcp = config
            .tcp
            .iter()
            .map(|t| Ok((t.service.clone(), bind_tcp("tcp", t.listen)?)))
            .collect::<Result<Vec<_>, RelayError>>()?;
        let health = config
            .relay
            .health_listen
            .map(|a| bind_tcp("health", a))
            .transpose()?;
        let dns = config.dns.as_ref().map(DnsSection::bind).transpose()?;
        for (name, l) in [("https", &https), ("http", &http), ("health", &health)] {
            if let Some(addr) = l.as_ref().and_then(|l| l.local_addr().ok()) {
                info!("listening on {name} {addr}");
            }
        }
        if let Some(addr) = quic.as_ref().and_then(|s| s.local_addr().ok()) {
            info!("listening on quic {addr}");
        }
        for (service, l) in &tcp {
            if let Ok(addr) = l.local_addr() {
                info!("listening on tcp {addr} service={service}");
            }
        }
        Ok(Self {
            https,
            quic,
            http,
            tcp,
            health,
            dns,
        })
    }
}

fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, RelayError> {
    sat_transport::listen::tcp(addr).map_err(|source| RelayError::Bind { what, addr, source })
}

/// HTTPS over TCP and QUIC over UDP share one port number, so that a client given one address
/// can try both. With port 0 the kernel picks the TCP port, and we retry until UDP gets it too.
fn bind_tcp_and_udp(
    addr: SocketAddr,
    quic: bool,
) -> Result<(std::net::TcpListener, Option<std::net::UdpSocket>), RelayError> {
    let mut last = None;
    for _ in 0..16 {
        let tcp = bind_tcp("https", addr)?;
        if !quic {
            return Ok((tcp, None));
        }
        let port = tcp.local_addr().map_or(addr.port(), |a| a.port());
        let udp_addr = SocketAddr::new(addr.ip(), port);
        match std::net::UdpSocket::bind(udp_addr) {
            Ok(udp) => return Ok((tcp, Some(udp))),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(source) => {
                return Err(RelayError::Bind {
                    what: "quic",
                    addr: udp_addr,
                    source,
                })
            }
        }
    }
    Err(RelayError::Bind {
        what: "quic",
        addr,
        source: last.unwrap_or_else(|| std::io::Error::other("no free port pair")),
    })
}

/// Accepts HTTPS (and TLS-fallback tunnels) until `stop`.
pub async fn serve_https(
    listener: TcpListener,
    tls: TlsAcceptor,
    limits: HttpSection,
    relay: Arc<Relay>,
    stop: CancellationToken,
) {
    while let Some((tcp, peer)) = accept(&listener, &stop).await {
        let (tls, limits, relay2, stop) =
            (tls.clone(), limits.clone(), relay.clone(), stop.clone());
        let span = info_span!("conn", %peer, via = "https");
        relay.users.spawn(
            async move {
                let handshake = tokio::time::timeout(limits.header_timeout, tls.accept(tcp));
                let stream = match handshake.await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return debug!("TLS handshake failed: {e}"),
                    Err(_) => {
                        return debug!("TLS handshake not done within {:?}", limits.header_timeout)
                    }
                };
                let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                if alpn.as_deref() == Some(sat_proto::ALPN_CLIENT) {
                    crate::client::serve_tls(stream, peer, relay2).await;
                } else {
                    serve_http(
                        TokioIo::new(stream),
                        Origin { peer, tls: true },
                        &limits,
                        relay2,
                        stop,
                    )
                    .await;
                }
            }
            .instrument(span),
        );
    }
}

/// Accepts plain HTTP until `stop`.
pub async fn serve_plain(
    listener: TcpListener,
    limits: HttpSection,
    relay: Arc<Relay>,
    stop: CancellationToken,
) {
    while let Some((tcp, peer)) = accept(&listener, &stop).await {
        let span = info_span!("conn", %peer, via = "http");
        let fut = serve_http(
            TokioIo::new(tcp),
            Origin { peer, tls: false },
            &limits,
            relay.clone(),
            stop.clone(),
        );
        relay.users.spawn(fut.instrument(span));
    }
}

async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    return Some((tcp, peer));
                }
                Err(e) => {
                    info!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = stop.cancelled() => return None,
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 on one connection. On drain, keep-alive connections are closed
/// after the request in flight.
fn serve_http<I>(
    io: I,
    origin: Origin,
    limits: &HttpSection,
    relay: Arc<Relay>,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_size);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_size as u32);
    async move {
        let service = service_fn(move |req| http::handle(req, relay.clone(), origin));
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!("connection ended: {e}");
                }
            }
            () = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}
