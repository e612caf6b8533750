//! The Satellite control plane: the end of every relay's uplinks. It authenticates relays by
//! their client certificates, pushes them the service map, accepts each data stream, dials the
//! one backend configured for the stream's service and splices the bytes. HTTP streams go
//! through a pool of keep-alive connections per backend.
//!
//! - [`config`]: `control.toml`, validated before anything binds.
//! - [`pki`]: the control plane's CA.
//! - [`run`]: the service entry point (in `server`), one task per uplink connection.
//! - `channel`: the control channel of each uplink (Hello, ConfigPush, Heartbeat, Drain).
//! - `tunnel` and `http`: what happens to a TCP and an HTTP stream once accepted.

mod channel;
pub mod config;
mod error;
mod http;
pub mod pki;
mod server;
mod services;
mod tunnel;

pub use config::ControlConfig;
pub use error::ControlError;
pub use server::run;
