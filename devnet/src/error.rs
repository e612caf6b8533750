use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DevnetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A fixed `sat up` port is taken, most likely by another `sat up`.
    #[error("cannot listen on {addr} ({what}): {source}. Is another `sat up` running? Stop it, or free the port")]
    Bind {
        what: String,
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Control(#[from] sat_control::ControlError),
    #[error(transparent)]
    Relay(#[from] sat_relay::RelayError),
    #[error("relays did not become ready within {0:?}; run with SAT_LOG=debug to see why")]
    NotReady(std::time::Duration),
}
