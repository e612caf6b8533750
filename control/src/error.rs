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
    /// Certificates or keys could not be loaded or made. Check the `[tls]` files.
    #[error(transparent)]
    Transport(#[from] sat_transport::TransportError),
    #[error("certificate authority: {0}")]
    Pki(String),
    /// The UDP socket could not be turned into a QUIC endpoint.
    #[error("QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
}
