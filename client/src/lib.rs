//! The user's end of a Satellite tunnel: `sat connect` (stdin/stdout, for OpenSSH's
//! `ProxyCommand`) and `sat forward` (a local TCP listener). Each tunnel is one QUIC stream to
//! a relay (ALPN `sat-client/1`); where UDP is blocked, one TLS connection over TCP to the same
//! port instead, chosen automatically.
//!
//! Which relay to use is the caller's choice, given as an address: choosing the nearest one is
//! a separate concern that plugs in in front of [`Dialer::new`].
//!
//! - [`Dialer`] (in `dial`): connects to a relay and opens tunnels, QUIC first, TLS as fallback.
//! - [`probe_relays`] (in `probe`): the relay map, each relay's measured round trip, ranked
//!   by the estimated end-to-end path (`sat relays`).
//! - [`connect`] and [`forward`] (in `tunnel`): the two ways to use a tunnel; `stdio` holds
//!   stdin and stdout as a tunnel's end (stdout closes when the service's side ends).
//! - [`Trust`] (in `trust`): what relays' certificates are checked against, the system's root
//!   store by default or a private CA.

mod answer;
mod choose;
mod dial;
mod error;
mod probe;
mod route;
mod stdio;
mod trust;
mod tunnel;

pub use choose::{cache_path, cached_relays, is_address, Chooser, Options};
pub use dial::{Dialer, Transport};
pub use error::ClientError;
pub use probe::{dial_address, probe_relays, Probed, Prober};
pub use route::{Hop, Route};
pub use trust::Trust;
pub use tunnel::{connect, forward};
