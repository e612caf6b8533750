use std::path::PathBuf;

use thiserror::Error;

/// Failures while setting up TLS or QUIC. These are configuration faults: retrying with the
/// same files cannot help, so each message names the file and what to fix.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no {what} in PEM form; expected a '-----BEGIN {what}-----' block")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("PEM text holds no certificate chain and private key")]
    BadPem,
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("QUIC needs TLS 1.3 with an initial cipher suite: {0}")]
    Quic(String),
}
