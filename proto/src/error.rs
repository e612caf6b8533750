use thiserror::Error;

/// Why bytes or text could not be decoded: a peer's frame or header, or a token an operator
/// pasted. Every variant is the fault of whoever produced the input; retrying the same input
/// cannot help.
///
/// Access tokens are the exception: [`crate::access::verify`] answers with its own
/// [`crate::access::AccessError`], because its answer is a verdict shown to the user (missing,
/// expired, revoked, ...) rather than a decoding failure.
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
    /// A relay enrolment token (`satr1.…`) that does not parse; the text says which part.
    #[error("invalid relay enrolment token: {0}; pass the whole satr1.… text the control plane printed when it created the token")]
    EnrolToken(String),
}
