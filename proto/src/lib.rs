//! The Satellite wire protocol: what relays, the control plane and clients say to each other,
//! as bytes. This crate does no IO and knows nothing of tokio or sockets; callers feed it bytes
//! and get frames back (and the other way round), so tests and fuzzers can drive it directly.
//!
//! - [`stream`]: the header that opens every data stream (relay → control, client → relay) and
//!   the accept/reject answer that comes back.
//! - [`control`]: frames of the control channel, the first stream of each uplink, and of the
//!   enrolment exchange, which uses the same codec.
//! - [`liveness`]: heartbeat timing, as a state machine over an explicit `now`.
//! - [`clock`]: the wall clock, the one place the system's time of day is read, for callers
//!   to pass in as `now`.
//! - [`enrol`]: the one-time token that enrols a relay (`satr1.…`).
//! - [`access`]: service access tokens (`sat_at1.…`): signing, and verifying with an explicit
//!   `now`.
//!
//! Errors: [`DecodeError`] for anything that does not decode; [`access::AccessError`] for the
//! verdict on an access token, which is shown to users.
//!
//! The format is documented in `docs/protocol.md`, with the rule for bumping its version.

pub mod access;
pub mod clock;
pub mod control;
pub mod enrol;
mod error;
pub mod liveness;
pub mod stream;

pub use error::DecodeError;

/// ALPN of uplinks (relay → control plane). The digit is the major protocol version.
pub const ALPN_UPLINK: &[u8] = b"sat/1";
/// ALPN of enrolment (a new relay → control plane, no client certificate yet); see
/// [`control`].
pub const ALPN_ENROL: &[u8] = b"sat-enrol/1";
/// ALPN of user tunnels (`sat connect` → relay), over QUIC or over the TLS fallback.
pub const ALPN_CLIENT: &[u8] = b"sat-client/1";
/// QUIC application close codes of uplinks and enrolment connections.
pub mod close {
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// Refused for good: a revoked relay, an unknown certificate, a relay using another's name.
    /// Retrying as is cannot help; the relay must enrol again.
    pub const REFUSED: u32 = 2;
    /// Refused for now (the control plane cannot check the relay's identity); retry later.
    pub const TRY_AGAIN: u32 = 3;
}

/// Version byte carried in every stream header; see `docs/protocol.md` for when it changes.
pub const VERSION: u8 = 1;
