//! Geo routing for Satellite: where a client is, how long a path should take, which relays
//! serve a client best, and when a client should move to another; and the geo DNS server that
//! hands those relays out. The decision half has no sockets and no probes: the control plane's
//! routing table and the clients measure, and feed what they measured in. Apart from reading
//! the GeoIP file at open, it is pure functions and state machines on an explicit `now`, so the
//! rules are tested on virtual time. The DNS server is the one part with sockets, and it is
//! only a thin hickory-server shell around a function of the same kind.
//!
//! - [`geoip`]: GeoIP City lookups (maxminddb): a location, and the database network's prefix
//!   length, which is the ECS scope of a DNS answer.
//! - [`latency`]: great-circle distance and the round trip it suggests, for relays nothing has
//!   been measured to yet; where the constants come from.
//! - [`rank`]: the ranking, a pure function from a client and the relays (health, load, round
//!   trips, and the relays' round trips to each other, which place the relays a client has not
//!   measured) to the relays in order of estimated end-to-end round trip.
//! - [`hysteresis`]: the choice of one relay over time, which moves only for a clear gain (the
//!   Tailscale rule), and at once when the relay in use goes.
//! - [`dns`]: the geo DNS server (hickory-server): authoritative for one zone, A/AAAA answers
//!   with the best relays for the client's EDNS Client Subnet or address (by GeoIP, and by the
//!   round trips that clients of its /24 or /48 reported), over UDP and TCP.
//!
//! Inputs are geo's own types, not the wire protocol's: [`Location`], the relays as
//! [`rank::Relay`], their round trips to each other as [`rank::PeerRtts`], and client networks
//! as [`dns::Network`]. `sat-routing` converts what the control plane pushes into them, the
//! one place where the wire protocol meets these types.
//!
//! Errors: [`GeoError`], from opening a GeoIP database, from the DNS server's config and
//! sockets, and from parsing a [`dns::Network`]; lookups and rankings do not fail.

pub mod dns;
mod error;
pub mod geoip;
pub mod hysteresis;
pub mod latency;
mod location;
pub mod rank;

pub use error::GeoError;
pub use location::Location;
