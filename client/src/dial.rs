//! Reaching a relay: QUIC first; if it has not connected within [`FALLBACK_AFTER`] (UDP
//! blocked, typically), TLS over TCP to the same port joins the race, and the first to connect
//! wins. A QUIC connection is kept and shared by the tunnels that follow.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use rustls::pki_types::ServerName;
use sat_proto::stream::ClientHeader;
use sat_transport::tls::{self, QuicLimits};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::ClientError;

/// How long QUIC gets alone before TLS over TCP is tried beside it (as in Happy Eyeballs).
const FALLBACK_AFTER: Duration = Duration::from_millis(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An open tunnel, its header already sent; the relay's answer is the first thing to read.
pub enum Transport {
    Quic(SendStream, RecvStream),
    Tls(Box<TlsStream<TcpStream>>),
}

pub struct Dialer {
    relay: String,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    endpoint: Endpoint,
    tls: TlsConnector,
    /// The QUIC connection, once one works; later tunnels open streams on it.
    quic: Mutex<Option<Connection>>,
    /// The service access token sent in every tunnel's header; empty for none.
    token: String,
}

impl Dialer {
    /// Prepares to dial `relay` (host:port), trusting the CA bundle in `ca`.
    pub async fn new(relay: &str, ca: &std::path::Path) -> Result<Self, ClientError> {
        let (host, _) = relay
            .rsplit_once(':')
            .ok_or_else(|| ClientError::RelayAddr(relay.into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|_| ClientError::RelayAddr(relay.into()))?;
        let addr = tokio::net::lookup_host(relay)
            .await
            .map_err(|source| ClientError::Resolve {
                relay: relay.into(),
                source,
            })?
            .next()
            .ok_or_else(|| ClientError::RelayAddr(relay.into()))?;

        let roots = tls::load_roots(ca)?;
        let quic_tls = tls::client_config(roots.clone(), None, &[sat_proto::ALPN_CLIENT])?;
        let bind: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = tls::client_endpoint(bind).map_err(|source| ClientError::Io {
            service: String::new(),
            source,
        })?;
        endpoint.set_default_client_config(tls::quic_client_config(quic_tls, QuicLimits::CLIENT)?);
        let tcp_tls = tls::client_config(roots, None, &[sat_proto::ALPN_CLIENT])?;
        Ok(Self {
            relay: relay.into(),
            addr,
            server_name,
            endpoint,
            tls: TlsConnector::from(Arc::new(tcp_tls)),
            quic: Mutex::new(None),
            token: String::new(),
        })
    }

    /// Sends `token` (from `sat admin token create`) with every tunnel, for services that
    /// require one. Services that do not ignore it.
    pub fn with_token(mut self, token: String) -> Self {
        self.token = token;
        self
    }

    /// Opens a tunnel to `service` and sends its header (and nothing else).
    pub async fn open(&self, service: &str) -> Result<Transport, ClientError> {
        let header = ClientHeader {
            service: service.into(),
            token: self.token.clone(),
        };
        let mut buf = BytesMut::new();
        header.encode(&mut buf);
        let io_err = |source| ClientError::Io {
            service: service.into(),
            source,
        };

        let cached = self.quic.lock().ok().and_then(|c| c.clone());
        if let Some(conn) = cached.filter(|c| c.close_reason().is_none()) {
            if let Ok((mut send, recv)) = conn.open_bi().await {
                send.write_all(&buf).await.map_err(|e| io_err(e.into()))?;
                return Ok(Transport::Quic(send, recv));
            }
        }
        match self.connect().await? {
            Connected::Quic(conn) => {
                let (mut send, recv) = conn.open_bi().await.map_err(|e| io_err(e.into()))?;
                send.write_all(&buf).await.map_err(|e| io_err(e.into()))?;
                if let Ok(mut slot) = self.quic.lock() {
                    *slot = Some(conn);
                }
                Ok(Transport::Quic(send, recv))
            }
            Connected::Tls(mut stream) => {
                stream.write_all(&buf).await.map_err(io_err)?;
                Ok(Transport::Tls(stream))
            }
        }
    }

    async fn connect(&self) -> Result<Connected, ClientError> {
        let quic = self.connect_quic();
        tokio::pin!(quic);
        tokio::select! {
            r = &mut quic => match r {
                Ok(conn) => return Ok(Connected::Quic(conn)),
                Err(e) => {
                    debug!(relay = %self.relay, "QUIC failed ({e}); falling back to TLS over TCP");
                    return self.connect_tls().await.map(Connected::Tls).map_err(|tls| self.unreachable(e, tls));
                }
            },
            () = tokio::time::sleep(FALLBACK_AFTER) => {}
        }
        debug!(relay = %self.relay, "no QUIC answer within {FALLBACK_AFTER:?} (UDP blocked?); trying TLS over TCP too");
        let tls = self.connect_tls();
        tokio::pin!(tls);
        tokio::select! {
            q = &mut quic => match q {
                Ok(conn) => Ok(Connected::Quic(conn)),
                Err(qe) => tls.await.map(Connected::Tls).map_err(|te| self.unreachable(qe, te)),
            },
            t = &mut tls => match t {
                Ok(stream) => {
                    debug!(relay = %self.relay, "using TLS over TCP");
                    Ok(Connected::Tls(stream))
                }
                Err(te) => quic.await.map(Connected::Quic).map_err(|qe| self.unreachable(qe, te)),
            },
        }
    }

    fn unreachable(&self, quic: String, tls: String) -> ClientError {
        ClientError::Unreachable {
            relay: self.relay.clone(),
            quic,
            tls,
        }
    }

    async fn connect_quic(&self) -> Result<Connection, String> {
        let host = server_name_str(&self.server_name);
        let connecting = self
            .endpoint
            .connect(self.addr, &host)
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
        }
    }

    async fn connect_tls(&self) -> Result<Box<TlsStream<TcpStream>>, String> {
        let attempt = async {
            let tcp = TcpStream::connect(self.addr)
                .await
                .map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            let stream = self
                .tls
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| e.to_string())?;
            if stream.get_ref().1.alpn_protocol() != Some(sat_proto::ALPN_CLIENT) {
                return Err("the relay's TLS port does not speak sat-client/1".to_string());
            }
            Ok(Box::new(stream))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {CONNECT_TIMEOUT:?}")))
    }
}

enum Connected {
    Quic(Connection),
    Tls(Box<TlsStream<TcpStream>>),
}

fn server_name_str(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => String::new(),
    }
}
