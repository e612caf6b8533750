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
//! - [`run`]: the service entry point (in `server`), one task per uplink connection.
//! - `channel`: the control channel of each uplink (Hello, ConfigPush, Heartbeat, Drain).
//! - `tunnel` and `http`: what happens to a TCP and an HTTP stream once accepted.

pub mod admin;
mod channel;
pub mod config;
mod enrol;
mod error;
mod http;
pub mod pki;
mod publish;
mod registry;
mod routing;
mod secrets;
mod server;
mod services;
pub mod store;
mod tunnel;

pub use config::ControlConfig;
pub use error::ControlError;
pub use server::{run, Sockets};
