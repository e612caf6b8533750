//! Geo routing for Satellite: where a client is, how long a path should take, which relays
//! serve a client best, and when a client should move to another. It is the decision half of
//! routing, with no sockets, no DNS and no probes: the geo DNS server, the control plane's
//! routing table and the clients measure, and feed what they measured in. Apart from reading
//! the GeoIP file at open, everything here is a pure function or a state machine on an explicit
//! `now`, so the rules are tested on virtual time.
//!
//! - [`geoip`]: GeoIP City lookups (maxminddb): a location, and the database network's prefix
//!   length, which is the ECS scope of a DNS answer.
//! - [`latency`]: great-circle distance and the round trip it suggests, for relays nothing has
//!   been measured to yet; where the constants come from.
//! - [`rank`]: the ranking, a pure function from a client and the relays (health, load, round
//!   trips) to the relays in order of estimated end-to-end round trip.
//! - [`hysteresis`]: the choice of one relay over time, which moves only for a clear gain (the
//!   Tailscale rule), and at once when the relay in use goes.
//!
//! Errors: [`GeoError`], from opening a GeoIP database; nothing else here fails.

mod error;
pub mod geoip;
pub mod hysteresis;
pub mod latency;
pub mod rank;

pub use error::GeoError;
