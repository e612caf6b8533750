use std::path::PathBuf;

use thiserror::Error;

/// Failures of the control plane as a whole. Per-stream failures never surface here: they
/// become a rejection or an HTTP status for that one stream.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The operator's config is wrong; the message names the file and key. Fix and restart.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Certificates or keys could not be loaded or made. Check the `[ca]` files and the data dir.
    #[error(transparent)]
    Transport(#[from] sat_transport::TransportError),
    #[error("certificate authority: {0}")]
    Pki(String),
    /// A listener could not be bound: another process has the port, or the address is not
    /// this host's.
    #[error("cannot listen on {addr} for the {what}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// Geo DNS could not start: its port is taken (the message names the address and the
    /// fix), or its GeoIP database cannot be read (the message names the file).
    #[error(transparent)]
    Geo(#[from] sat_geo::GeoError),
    /// The UDP socket could not be turned into a QUIC endpoint.
    #[error("QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    /// The store failed; its message names the file or the row and what to do.
    #[error("store failed: {0}")]
    Store(#[from] crate::store::StoreError),
    /// An admin API call failed. `status` is the HTTP status of the server's refusal (4xx: the
    /// request was wrong, do not retry as is), or None when no answer came (the control plane is
    /// down or elsewhere: a retry may help). The message is the server's, or names what to check.
    #[error("{message}")]
    Admin {
        status: Option<u16>,
        message: String,
    },
}
