//! The whole Satellite network on one machine, for `sat up`: a development CA and the
//! certificates it signs, one control plane, relays on 127.0.0.2, .3, .4 as simulated regions
//! at simulated distances, and two backends to reach through them (a demo web app and a TCP
//! echo). Everything runs in one process, from configs written to the data directory so that an
//! operator can read them and run the same pieces with `sat control` and `sat relay`.
//!
//! - [`up`]: lay out the data directory, start everything, stop it in order.
//! - [`regions`]: where each region's relay stands, and how far it is from the primary and
//!   from this machine.
//! - [`demo`]: the demo web app (which relay served you, WebSocket echo).
//! - [`echo`]: a TCP echo service that honours half-close.
//! - [`delay`]: the delay proxy that puts distance between the regions.

pub mod delay;
pub mod demo;
pub mod echo;
mod error;
pub mod regions;
pub mod up;

pub use error::DevnetError;
pub use up::{default_data_dir, run, serves_relay_at, web_ca, UpOptions};
