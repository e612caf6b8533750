//! The IO half of the Satellite protocol, shared by every process that speaks it: TLS and QUIC
//! configuration (one rustls provider, TLS 1.3 only, mutual authentication on uplinks), and the
//! splice that copies bytes between a QUIC stream and a socket while carrying half-close (FIN)
//! and abort (RST) across. `sat-proto` stays free of IO; this crate is where tokio and quinn
//! meet it, as quinn is to quinn-proto.
//!
//! - [`identity`]: certificate chains, keys and CA bundles from PEM; the one crypto provider.
//! - [`tls`]: rustls and quinn configs for uplinks and user tunnels.
//! - [`pin`]: a certificate replaceable at run time, and trust pinned by a CA fingerprint.
//! - [`splice`]: QUIC stream ⇄ TCP or any byte stream, with FIN/RST propagation.
//! - [`io`]: a QUIC stream pair as one `AsyncRead + AsyncWrite`, for hyper.
//! - [`http`]: what both ends of an HTTP stream share: the body type, plain-text answers.
//! - [`files`]: keys and certificates written whole, with their mode from the start.
//! - [`header`]: reading a stream header or answer off a QUIC stream, bounded and timed.
//! - [`ahead`]: the bytes a stream sends ahead of its answer, kept to send again elsewhere.
//! - [`listen`]: TCP listeners with an accept queue for bursts.
//! - [`metrics`]: `/metrics` pages: fixed-label families, the text format, QUIC counters.

pub mod ahead;
mod error;
pub mod files;
pub mod header;
pub mod http;
pub mod identity;
pub mod io;
pub mod listen;
pub mod metrics;
pub mod pin;
pub mod splice;
pub mod tls;

pub use error::TransportError;
