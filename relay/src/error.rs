use std::path::PathBuf;

use thiserror::Error;

/// Failures of the relay as a whole. Per-connection failures never surface here: they become
/// an HTTP status or a refused tunnel for that one user.
#[derive(Debug, Error)]
pub enum RelayError {
    /// The operator's config is wrong; the message names the file and key.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A listen address could not be bound: in use, or not an address of this machine.
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// Certificates or keys could not be loaded. Check the `[https]` files and the data dir.
    #[error(transparent)]
    Transport(#[from] sat_transport::TransportError),
    /// Enrolment or renewal failed. `retry` says whether trying again as is can help (the
    /// control plane was unreachable) or not (the token was refused: get a new one).
    #[error("{message}")]
    Enrol { message: String, retry: bool },
    /// The GeoIP database for geo DNS could not be used; the message names the file.
    #[error(transparent)]
    Geo(#[from] sat_geo::GeoError),
    #[error("QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
}
