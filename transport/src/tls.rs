//! TLS material and configs. One crypto provider (ring), TLS 1.3 only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use sha2::{Digest, Sha256};

use crate::identity::{load_roots, provider, Identity};
use crate::pin::CertSlot;
use crate::TransportError;

/// A TLS server config. With `client_roots`, peers must present a certificate from that CA.
pub fn server_config(
    identity: &Identity,
    client_roots: Option<RootCertStore>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TransportError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_roots {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TransportError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Whether a server asks its peers for a certificate.
pub enum ClientAuth {
    /// Every peer must present a certificate from these roots.
    Required(RootCertStore),
    /// A peer may present one (and it is then verified against these roots) or none; the
    /// application decides, per ALPN, what an anonymous peer may do.
    Optional(RootCertStore),
}

/// A TLS server config presenting whatever `certs` holds at each handshake.
pub fn server_config_with(
    certs: Arc<CertSlot>,
    auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TransportError> {
    let (roots, optional) = match auth {
        ClientAuth::Required(r) => (r, false),
        ClientAuth::Optional(r) => (r, true),
    };
    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| TransportError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A TLS client config trusting `roots` and presenting whatever `certs` holds at each
/// handshake.
pub fn client_config_with(
    roots: RootCertStore,
    certs: Arc<CertSlot>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TransportError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_cert_resolver(certs);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A TLS client config trusting `roots`, presenting `identity` if given.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<&Identity>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TransportError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The largest datagram path MTU discovery may settle on; see `QuicLimits::transport`.
pub const MAX_DATAGRAM: u16 = 6500;

/// An endpoint config that accepts datagrams as large as path MTU discovery may find.
///
/// With `reset_secret`, stateless resets are keyed from it rather than from a random key
/// made at start. A server that keeps the secret across restarts can then reset its peers'
/// old connections at once (they accept the reset), instead of leaving them to time out.
pub fn endpoint_config(reset_secret: Option<&[u8]>) -> quinn::EndpointConfig {
    let mut config = match reset_secret {
        Some(secret) => {
            let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                secret,
            )));
            // Connection IDs must stay recognisable too: a packet whose ID fails the
            // generator's check is dropped without a reset.
            let mut cid_key = [0u8; 8];
            cid_key.copy_from_slice(&Sha256::digest(secret)[..8]);
            let cid_key = u64::from_le_bytes(cid_key);
            config.cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            });
            config
        }
        None => quinn::EndpointConfig::default(),
    };
    // Cannot fail: the value is within the range the setter checks.
    let _ = config.max_udp_payload_size(MAX_DATAGRAM);
    config
}

/// The stateless-reset secret kept in `dir` (`quic-reset.key`, owner-only), made on first use.
pub fn reset_secret(dir: &Path) -> std::io::Result<Vec<u8>> {
    let path = dir.join("quic-reset.key");
    if let Ok(secret) = std::fs::read(&path) {
        if secret.len() >= 32 {
            return Ok(secret);
        }
    }
    let mut secret = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| std::io::Error::other("no randomness from the OS"))?;
    crate::files::write_atomic(&path, &secret, 0o600)?;
    Ok(secret)
}

/// A client-only QUIC endpoint on `bind`, with [`endpoint_config`].
pub fn client_endpoint(bind: std::net::SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(bind)?;
    size_udp_buffers(&socket);
    quinn::Endpoint::new(
        endpoint_config(None),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// A server QUIC endpoint on an already bound socket, with [`endpoint_config`].
pub fn server_endpoint(
    socket: std::net::UdpSocket,
    server: quinn::ServerConfig,
    reset_secret: Option<&[u8]>,
) -> std::io::Result<quinn::Endpoint> {
    size_udp_buffers(&socket);
    quinn::Endpoint::new(
        endpoint_config(reset_secret),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Socket buffer we ask the kernel for, each way. A burst of large QUIC datagrams overflows
/// Linux's default (about 208 KiB), and every drop is taken as congestion.
const UDP_BUFFER: usize = 4 * 1024 * 1024;

fn size_udp_buffers(socket: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(UDP_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_BUFFER);
    // Linux reports twice what it grants; anything under the request means rmem_max capped it.
    let got = sock.recv_buffer_size().unwrap_or(0) / 2;
    if got < UDP_BUFFER {
        tracing::warn!(
            wanted = UDP_BUFFER,
            got,
            "UDP receive buffer capped by the kernel; raise net.core.rmem_max and \
             net.core.wmem_max to at least {UDP_BUFFER} for full QUIC throughput"
        );
    }
}

/// Transport limits for one role. Uplinks carry thousands of streams and must notice a dead
/// peer within seconds; user tunnels idle for hours behind NATs.
#[derive(Debug, Clone, Copy)]
pub struct QuicLimits {
    pub max_streams: u32,
    /// Bytes written but not yet acknowledged, across all streams of a connection.
    pub send_window: u64,
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
}

impl QuicLimits {
    pub const UPLINK: Self = Self {
        max_streams: 32_768,
        // Each stream is already bounded by its peer's flow-control window; this shared bound
        // is what a few users who stop reading can fill, and once full it stalls every stream
        // of the uplink, heartbeats included. quinn's 10 MiB default is eight such users.
        send_window: 256 * 1024 * 1024,
        idle_timeout: Duration::from_secs(5),
        // Frequent enough that a relay notices a silent uplink within a second (see
        // `Uplinks` in the relay); a PING and its ACK are some 60 bytes.
        keep_alive: Duration::from_millis(300),
    };
    pub const CLIENT: Self = Self {
        max_streams: 256,
        send_window: 16 * 1024 * 1024,
        idle_timeout: Duration::from_secs(60),
        keep_alive: Duration::from_secs(15),
    };

    fn transport(&self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        // Let path MTU discovery search above Ethernet's 1452: on an Internet path it settles
        // there after a few lost probes; on jumbo-frame links and loopback bigger datagrams
        // cut per-packet crypto and syscall cost several-fold. The bound is what quinn can
        // send: it batches up to 10 segments per GSO send, and the kernel refuses a batch over
        // 64 KiB with EMSGSIZE, which quinn-udp drops silently (it expects that only of MTU
        // probes), so every burst would be lost. 10 x 6500 stays under 65507.
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(MAX_DATAGRAM)
            // A burst of losses shrinks the MTU to 1200 as a suspected black hole; on a path
            // that is merely busy, probe up again soon rather than after quinn's 10 minutes.
            .black_hole_cooldown(Duration::from_secs(10))
            .interval(Duration::from_secs(30));
        t.mtu_discovery_config(Some(mtu));
        // Sub-millisecond RTTs (a relay next to its control plane, loopback) make quinn's
        // default 9/8-RTT reordering window shorter than a scheduling hiccup on a busy host;
        // a spurious loss halves the window. 1.5 RTT costs a real loss a fraction of an RTT.
        t.time_threshold(1.5);
        t.send_window(self.send_window);
        t.max_concurrent_bidi_streams(self.max_streams.into())
            .max_concurrent_uni_streams(0u32.into())
            .keep_alive_interval(Some(self.keep_alive));
        if let Ok(idle) = quinn::IdleTimeout::try_from(self.idle_timeout) {
            t.max_idle_timeout(Some(idle));
        }
        Arc::new(t)
    }
}

pub fn quic_server_config(
    tls: rustls::ServerConfig,
    limits: QuicLimits,
) -> Result<quinn::ServerConfig, TransportError> {
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(limits.transport());
    Ok(config)
}

pub fn quic_client_config(
    tls: rustls::ClientConfig,
    limits: QuicLimits,
) -> Result<quinn::ClientConfig, TransportError> {
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(limits.transport());
    Ok(config)
}

/// The leaf certificate a peer authenticated with, if it presented one.
pub fn peer_leaf(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    certs.first().cloned()
}

/// The ALPN protocol a connection agreed on.
pub fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Serial number (lower-case hex) and expiry (unix seconds) of a DER certificate.
pub fn serial_and_expiry(cert: &CertificateDer<'_>) -> Option<(String, i64)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let serial = crate::pin::hex(cert.raw_serial());
    Some((serial, cert.validity().not_after.timestamp()))
}

/// The first DNS name (or, failing that, the common name) of a peer's leaf certificate: the
/// identity a relay or client authenticated as.
pub fn peer_name(conn: &quinn::Connection) -> Option<String> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    leaf_name(certs.first()?)
}

/// The subject's first DNS name from a verified DER certificate, falling back to its CN.
pub fn leaf_name(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                return Some((*dns).to_owned());
            }
        }
    }
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The `[tls]` table of relay and control configs: a CA to trust and an identity to present.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA bundle that signed the peer's certificate.
    pub ca: std::path::PathBuf,
    /// This process's certificate chain (PEM).
    pub cert: std::path::PathBuf,
    /// This process's private key (PEM).
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// Makes relative paths relative to `base` (the config file's directory).
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    pub fn load(&self) -> Result<(RootCertStore, Identity), TransportError> {
        Ok((
            load_roots(&self.ca)?,
            Identity::load(&self.cert, &self.key)?,
        ))
    }
}
