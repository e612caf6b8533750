use thiserror::Error;

/// Why a peer's bytes could not be decoded. Every variant is the sender's fault; retrying the
/// same bytes cannot help.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("unsupported protocol version {0} (this build speaks version {ver})", ver = crate::VERSION)]
    Version(u8),
    #[error("{what} is {len} bytes, above the limit of {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("invalid service name: {0}")]
    ServiceName(String),
    #[error("control frame body: {0}")]
    Body(String),
}
