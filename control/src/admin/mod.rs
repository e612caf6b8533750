//! The admin API: HTTP/1.1 with JSON bodies on `[admin] listen` (127.0.0.1:4434 by default),
//! through which operators enrol and drain relays, manage services and issue access tokens.
//! Every `/v1` path needs `Authorization: Bearer <admin token>`.
//!
//! - [`api`]: the request and response bodies, shared by the server and the client.
//! - [`client`]: an async client, one method per endpoint (what `sat admin` uses).
//! - `server`: the listener and its handlers, run by the control plane.
//! - `status_page`: the fleet status page, HTML rendered from the view `/api/status` answers.
//! - [`table`]: plain-text tables and time formats for showing the answers to people.

pub mod api;
pub mod client;
pub(crate) mod server;
mod status_page;
pub mod table;
