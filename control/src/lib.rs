//! The Satellite control plane: the end of every relay's uplinks. It authenticates relays by
//! their client certificates, pushes them the service map, accepts each data stream, dials the
//! one backend configured for the stream's service and splices the bytes. HTTP streams go
//! through a pool of keep-alive connections per backend. With `[dns]` it also serves geo DNS
//! from the relay map it publishes, as relays do from the map pushed to them.
//!
//! - [`admin`]: the admin API's types and client (`sat admin`).
//! - [`config`]: `control.toml`, validated before anything binds.
//! - [`pki`]: the control plane's CA.
//! - [`store`]: the durable state in `<data_dir>/sat.db` (SQLite), with its migrations.
//! - [`run`] and [`Sockets`] (in `server`): binding, and the service entry point that starts
//!   every task below and drains them.
//! - `state`: what every task shares (`Shared`), a leaf that imports none of them.
//! - `uplink`: one task per uplink connection: enrolment or `authorize`, the control channel,
//!   and each data stream, answered through `answer`.
//! - `channel`: the control channel of each uplink (Hello, ConfigPush, Heartbeat, Drain).
//! - `enrol`: redeeming enrolment tokens and renewing relay certificates.
//! - `tunnel` and `http`: what happens to a TCP and an HTTP stream once accepted; `pool`: the
//!   keep-alive connections to HTTP backends.
//! - `snapshot` and `publish`: the config relays run, and the task that republishes it.
//! - `registry` and `routing`: the live half of each relay, and measured round trips.
//! - `services`, `secrets`, `certs`: the service table, signing keys and the admin token, the
//!   control plane's own uplink certificate.
//! - `dns`: geo DNS from the relay map this control plane publishes.
//! - `status`: how the control plane describes its fleet: relay states, the admin API's views,
//!   and the status page's whole view.

pub mod admin;
mod answer;
mod authorize;
mod certs;
mod channel;
pub mod config;
mod dns;
mod enrol;
mod error;
mod http;
mod metrics;
pub mod pki;
mod pool;
mod publish;
mod registry;
mod routing;
mod secrets;
mod server;
mod services;
mod snapshot;
mod state;
mod status;
pub mod store;
mod tunnel;
mod uplink;

pub use config::ControlConfig;
pub use error::ControlError;
pub use server::{run, Sockets};
