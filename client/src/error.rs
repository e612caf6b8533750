use sat_proto::stream::RejectCode;
use thiserror::Error;

/// Why a tunnel could not be opened or ended badly. The messages are shown to users as-is.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error(
        "--relay {0:?} is not host:port (for example 127.0.0.2:8443 or relay.example.com:443)"
    )]
    RelayAddr(String),
    /// The relay map could not be fetched or read.
    #[error("{0}")]
    Probe(String),
    #[error("cannot resolve relay {relay}: {source}")]
    Resolve {
        relay: String,
        source: std::io::Error,
    },
    /// The system's root store is empty or unreadable, and no `--ca` was given.
    #[error(
        "no trusted root certificates on this system ({problems}): install the ca-certificates \
         package, point SSL_CERT_FILE at a CA bundle, or pass --ca FILE (or set SAT_CA) with the \
         CA that signed the relays' certificates"
    )]
    NoSystemRoots { problems: String },
    /// The relay's certificate did not verify against what the client trusts.
    #[error(
        "relay {relay}: its certificate is not trusted ({reason}); it was checked against \
         {trust}. If the relays' certificates come from a private CA, pass --ca FILE (or set \
         SAT_CA) with that CA"
    )]
    Untrusted {
        relay: String,
        reason: String,
        /// What it was checked against ([`crate::Trust::describe`]).
        trust: String,
    },
    #[error(transparent)]
    Transport(#[from] sat_transport::TransportError),
    /// Neither QUIC nor the TLS fallback reached the relay. Retrying later may help.
    #[error("cannot reach relay {relay}: QUIC: {quic}; TLS over TCP: {tls}")]
    Unreachable {
        relay: String,
        quic: String,
        tls: String,
    },
    /// The relay or the control plane refused the tunnel; the reason comes from them.
    #[error("service \"{service}\" refused: {message}")]
    Refused {
        service: String,
        /// Lets the caller tell a refused access token (`Unauthorized`) from the rest.
        code: RejectCode,
        message: String,
    },
    #[error("tunnel to \"{service}\" failed: {source}")]
    Io {
        service: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

impl ClientError {
    /// [`ClientError::Io`] for a tunnel to `service`.
    pub(crate) fn io(service: &str, source: std::io::Error) -> Self {
        Self::Io {
            service: service.into(),
            source,
        }
    }

    /// The far side (the service, through the control plane and the relay) reset the tunnel.
    pub(crate) fn is_reset(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::ConnectionReset)
    }
}
