//! Reaching a relay: QUIC first; if it has not connected within [`FALLBACK_AFTER`] (UDP
//! blocked, typically), TLS over TCP to the same port joins the race, and the first to connect
//! wins. A QUIC connection is kept and shared by the tunnels that follow.
//!
//! A kept connection is watched, so that a relay that dies is noticed before a tunnel is sent
//! into it. Two things tell: a tunnel sent into it hears nothing back within [`ack_limit`]
//! (a live relay acknowledges within its ack delay and a round trip), after which the
//! connection is doubted and new tunnels go elsewhere until it is heard from again; and an idle
//! connection, pinged every [`PING_EVERY`], that has heard nothing for [`silence_limit`], is
//! given up. The first is what lets [`crate::Route`] move new tunnels to the standby relay
//! within half a second of a relay's death, however long the connection was idle; the second
//! keeps NAT bindings and catches idle deaths without waking a laptop's radio five times a
//! second.

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
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use crate::trust::is_certificate_error;
use crate::{ClientError, Trust};

/// How long QUIC gets alone before TLS over TCP is tried beside it (as in Happy Eyeballs).
const FALLBACK_AFTER: Duration = Duration::from_millis(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a kept QUIC connection is pinged when nothing else is sent: well inside NAT
/// binding lifetimes (30 s and more) and the relay's idle timeout. New tunnels do not depend on
/// it: each watches for its own acknowledgement ([`ack_limit`]).
pub const PING_EVERY: Duration = Duration::from_secs(2);
/// How often the watcher looks at a connection's receive counter.
const WATCH_EVERY: Duration = Duration::from_millis(25);
/// The least time without an acknowledgement that counts as death: the peer's ack delay
/// (25 ms in QUIC) and an allowance for scheduling on a busy machine.
const MIN_ACK_WAIT: Duration = Duration::from_millis(400);

/// An open tunnel, its header already sent; the relay's answer is the first thing to read.
pub enum Transport {
    /// A stream on `conn`, which tells whether the relay has been heard from since.
    Quic {
        send: SendStream,
        recv: RecvStream,
        conn: Connection,
    },
    Tls(Box<TlsStream<TcpStream>>),
}

pub struct Dialer {
    relay: String,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    endpoint: Endpoint,
    tls: TlsConnector,
    /// The QUIC connection, once one works; later tunnels open streams on it.
    quic: Mutex<Option<Kept>>,
    /// The service access token sent in every tunnel's header; empty for none.
    token: String,
    /// What the relay's certificate is checked against, for the error when it fails.
    trust: String,
}

impl Dialer {
    /// Prepares to dial `relay` (host:port), checking its certificate against `trust`.
    pub async fn new(relay: &str, trust: &Trust) -> Result<Self, ClientError> {
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

        let roots = trust.roots()?;
        let quic_tls = tls::client_config(roots.clone(), None, &[sat_proto::ALPN_CLIENT])?;
        let bind: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint =
            tls::client_endpoint(bind).map_err(|source| ClientError::io("", source))?;
        let limits = QuicLimits {
            keep_alive: PING_EVERY,
            ..QuicLimits::CLIENT
        };
        endpoint.set_default_client_config(tls::quic_client_config(quic_tls, limits)?);
        let tcp_tls = tls::client_config(roots, None, &[sat_proto::ALPN_CLIENT])?;
        Ok(Self {
            relay: relay.into(),
            addr,
            server_name,
            endpoint,
            tls: TlsConnector::from(Arc::new(tcp_tls)),
            quic: Mutex::new(None),
            token: String::new(),
            trust: trust.describe(),
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
        let io_err = |source| ClientError::io(service, source);

        if let Some(conn) = self.live_connection() {
            if let Ok((mut send, recv)) = conn.open_bi().await {
                send.write_all(&buf).await.map_err(|e| io_err(e.into()))?;
                return Ok(Transport::Quic { send, recv, conn });
            }
        }
        match self.connect().await? {
            Connected::Quic(conn) => {
                let (mut send, recv) = conn.open_bi().await.map_err(|e| io_err(e.into()))?;
                send.write_all(&buf).await.map_err(|e| io_err(e.into()))?;
                self.keep(conn.clone());
                Ok(Transport::Quic { send, recv, conn })
            }
            Connected::Tls(mut stream) => {
                stream.write_all(&buf).await.map_err(io_err)?;
                Ok(Transport::Tls(stream))
            }
        }
    }

    /// The relay's address, as given.
    pub fn relay(&self) -> &str {
        &self.relay
    }

    /// Connects over QUIC ahead of need, so that the first tunnel finds a connection ready (the
    /// warm standby). Does nothing if a live connection is kept already.
    pub async fn warm(&self) -> Result<(), ClientError> {
        if self.live_connection().is_some() {
            return Ok(());
        }
        let conn = self
            .connect_quic()
            .await
            .map_err(|quic| self.unreachable(quic, "not tried (warming up)".into()))?;
        self.keep(conn);
        Ok(())
    }

    /// Whether the relay is known to be gone: a kept connection went silent, closed, or is
    /// doubted (see [`Dialer::doubt`]). A dialer that has no connection yet is not known to be
    /// gone.
    pub fn is_gone(&self) -> bool {
        let Ok(slot) = self.quic.lock() else {
            return false;
        };
        slot.as_ref().is_some_and(|k| k.state() != Liveness::Live)
    }

    /// A tunnel on `conn` heard nothing back: while the connection's receive counter stays at
    /// `heard`, new tunnels go elsewhere. The connection is kept for the tunnels already on it,
    /// in case it was a pause and not a death.
    pub fn doubt(&self, conn: &Connection, heard: u64) {
        let Ok(slot) = self.quic.lock() else {
            return;
        };
        if let Some(kept) = slot
            .as_ref()
            .filter(|k| k.conn.stable_id() == conn.stable_id())
        {
            if let Ok(mut doubt) = kept.doubted_at.lock() {
                *doubt = Some(heard);
            }
        }
    }

    /// The kept connection if it is live. One that went silent is closed here, so that its
    /// streams end rather than wait for QUIC's idle timeout.
    fn live_connection(&self) -> Option<Connection> {
        let mut slot = self.quic.lock().ok()?;
        let kept = slot.as_ref()?;
        match kept.state() {
            Liveness::Live => return Some(kept.conn.clone()),
            Liveness::Doubted => return None,
            Liveness::Silent => {}
        }
        if kept.conn.close_reason().is_none() {
            warn!(relay = %self.relay, "the relay went silent; giving its connection up");
            kept.conn.close(0u32.into(), b"silent");
        }
        *slot = None;
        None
    }

    /// Keeps `conn` for later tunnels, watched by a task of its own.
    fn keep(&self, conn: Connection) {
        let kept = Kept::watch(conn);
        if let Ok(mut slot) = self.quic.lock() {
            *slot = Some(kept);
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

    /// Neither way worked: the relay's certificate did not verify (which no retry mends), or
    /// the relay could not be reached.
    fn unreachable(&self, quic: String, tls: String) -> ClientError {
        if let Some(reason) = [&quic, &tls].into_iter().find(|e| is_certificate_error(e)) {
            return ClientError::Untrusted {
                relay: self.relay.clone(),
                reason: reason.clone(),
                trust: self.trust.clone(),
            };
        }
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

/// A kept QUIC connection and when it was last heard from.
struct Kept {
    conn: Connection,
    last_heard: Arc<Mutex<Instant>>,
    /// The receive counter when a tunnel on it last heard nothing back (see [`Dialer::doubt`]).
    doubted_at: Mutex<Option<u64>>,
}

/// What a kept connection is good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    Live,
    /// A tunnel heard nothing back, and nothing has been heard since: no new tunnels.
    Doubted,
    /// Closed, or nothing heard for [`silence_limit`]: give it up.
    Silent,
}

impl Kept {
    /// Starts a task that notes each time the connection's receive counter moves. It ends
    /// with the connection.
    fn watch(conn: Connection) -> Self {
        let last_heard = Arc::new(Mutex::new(Instant::now()));
        let (watched, heard) = (conn.clone(), last_heard.clone());
        tokio::spawn(async move {
            let mut seen = watched.stats().udp_rx.datagrams;
            let mut tick = tokio::time::interval(WATCH_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = watched.closed() => return,
                }
                let now = watched.stats().udp_rx.datagrams;
                if now != seen {
                    seen = now;
                    if let Ok(mut at) = heard.lock() {
                        *at = Instant::now();
                    }
                }
            }
        });
        Self {
            conn,
            last_heard,
            doubted_at: Mutex::new(None),
        }
    }

    fn state(&self) -> Liveness {
        if self.conn.close_reason().is_some() {
            return Liveness::Silent;
        }
        let heard = self
            .last_heard
            .lock()
            .map_or_else(|_| Instant::now(), |at| *at);
        if heard.elapsed() >= silence_limit(self.conn.rtt()) {
            return Liveness::Silent;
        }
        let Ok(mut doubt) = self.doubted_at.lock() else {
            return Liveness::Live;
        };
        match *doubt {
            Some(at) if self.conn.stats().udp_rx.datagrams == at => Liveness::Doubted,
            Some(_) => {
                // Heard from since: it was a pause, not a death.
                *doubt = None;
                Liveness::Live
            }
            None => Liveness::Live,
        }
    }
}

/// How long a connection may stay silent before it counts as dead: a ping interval and three
/// round trips (a slow path is not a dead one).
pub fn silence_limit(rtt: Duration) -> Duration {
    PING_EVERY + rtt * 3
}

/// How long a tunnel sent into a connection waits to hear anything back before the relay
/// counts as dead: three round trips (a lost packet's retransmission takes about two), and
/// never less than [`MIN_ACK_WAIT`].
pub fn ack_limit(rtt: Duration) -> Duration {
    (rtt * 3).max(MIN_ACK_WAIT)
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
