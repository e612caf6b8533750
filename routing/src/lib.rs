//! What geo routing takes from the network, for relays, the control plane and clients alike:
//! the relay map the control plane pushes, in `sat-geo`'s types, and round trips timed against
//! relays' latency checks. `sat-geo` never sees the wire protocol and `sat-transport` does no
//! HTTP and no geo, so the one place where the pushed map meets geo's types, and the one way
//! relays are timed, live here.
//!
//! - [`map`]: the pushed relay map as the ranking and geo DNS take it ([`map::geo_relay`],
//!   [`map::dns_table`]).
//! - [`latency`]: timing a relay's latency check on a kept-alive connection; fetching the
//!   relay map and sending round-trip reports (hyper's HTTP/1.1 client).

pub mod latency;
pub mod map;
